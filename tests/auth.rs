//! Virtual keys through real sockets: who may call, which models they see and use, and
//! what the errors look like. Keys never reach the logs.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use common::{Logs, TestGateway};
use serde_json::{Value, json};
use switchyard::auth::{DEV_KEY, hash_key, hex};

const ALICE: &str = "sk-sy-alice-4f1b2c3d4e5f60718293a4b5";
const BOB: &str = "sk-sy-bob-0a1b2c3d4e5f60718293a4b5c6";
const OFF: &str = "sk-sy-off-0a1b2c3d4e5f60718293a4b5c6";
const OLD: &str = "sk-sy-old-0a1b2c3d4e5f60718293a4b5c6";

fn config() -> String {
    config_with_keys("")
}

/// The config, with `extra` added to `auth.keys`.
fn config_with_keys(extra: &str) -> String {
    format!(
        r#"
providers:
  mock: {{kind: mock}}
models:
  small: {{targets: [{{provider: mock}}]}}
  big: {{targets: [{{provider: mock}}]}}
  secret: {{targets: [{{provider: mock}}]}}
auth:
  teams:
    search: {{models: [small, big]}}
  keys:
    alice: {{sha256: {}, team: search}}
    bob: {{sha256: {}, team: search, models: [small]}}
    off: {{sha256: {}, enabled: false}}
    old: {{sha256: {}, expires_at: "2020-01-01T00:00:00Z"}}
{extra}"#,
        hex(&hash_key(ALICE)),
        hex(&hash_key(BOB)),
        hex(&hash_key(OFF)),
        hex(&hash_key(OLD)),
    )
}

async fn call(gateway: &TestGateway, key: Option<&str>, model: &str) -> reqwest::Response {
    let mut request = common::client()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

async fn error(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    let id = common::request_id(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["request_id"], id.as_str());
    body["error"].clone()
}

#[tokio::test]
async fn keys_are_required_known_enabled_and_unexpired() {
    let gateway = TestGateway::start(&config()).await;
    assert_eq!(call(&gateway, Some(ALICE), "small").await.status(), 200);

    let missing = error(call(&gateway, None, "small").await, 401).await;
    assert_eq!(missing["type"], "authentication_error");
    assert_eq!(missing["code"], "missing_api_key");
    for key in ["sk-sy-nobody", OFF, OLD] {
        let invalid = error(call(&gateway, Some(key), "small").await, 401).await;
        assert_eq!(invalid["code"], "invalid_api_key");
        assert!(
            !invalid["message"].as_str().unwrap().contains(key),
            "never echo the key"
        );
    }
    // Clients written for Anthropic or Azure send the key in their own header.
    let response = common::client()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .header("x-api-key", ALICE)
        .json(&json!({"model": "small", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn keys_and_teams_restrict_models() {
    let gateway = TestGateway::start(&config()).await;
    assert_eq!(call(&gateway, Some(ALICE), "big").await.status(), 200);
    let denied = error(call(&gateway, Some(ALICE), "secret").await, 403).await;
    assert_eq!(denied["type"], "permission_error");
    assert_eq!(denied["code"], "model_not_allowed");
    assert_eq!(denied["param"], "model");
    // Bob's own list is narrower than his team's.
    assert_eq!(
        error(call(&gateway, Some(BOB), "big").await, 403).await["code"],
        "model_not_allowed"
    );

    let list = |key: &'static str| {
        let url = format!("{}/v1/models", gateway.url);
        async move {
            let body: Value = common::client()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(ALICE).await, ["small", "big"]);
    assert_eq!(list(BOB).await, ["small"]);
    let unauthenticated = common::client()
        .get(format!("{}/v1/models", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
}

#[tokio::test]
async fn health_readiness_and_metrics_need_no_key() {
    let gateway = TestGateway::start(&config()).await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = common::client()
            .get(format!("{}{path}", gateway.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn keys_never_reach_the_logs_and_the_dev_key_is_announced() {
    let (logs, _guard) = Logs::capture();
    let dev = format!("    dev: {{sha256: {}}}\n", hex(&hash_key(DEV_KEY)));
    let gateway = TestGateway::start(&config_with_keys(&dev)).await;
    for key in [Some(ALICE), Some("sk-sy-wrong-key-123456"), Some(DEV_KEY)] {
        call(&gateway, key, "small").await;
    }
    let text = logs.text();
    assert!(
        text.contains("\"key\":\"alice\""),
        "the key's name is logged:\n{text}"
    );
    assert!(
        text.contains("development key"),
        "a WARN announces the development key:\n{text}"
    );
    for secret in [ALICE, "sk-sy-wrong-key-123456", &hex(&hash_key(ALICE))] {
        assert!(!text.contains(secret), "{secret} leaked into the logs");
    }
}

/// `GET` with an optional key; the status and the JSON body.
async fn get(gateway: &TestGateway, key: Option<&str>, path: &str) -> (u16, Value) {
    let mut request = common::client().get(format!("{}{path}", gateway.url));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn a_model_is_shown_only_to_keys_that_may_use_it() {
    let gateway = TestGateway::start(&config()).await;
    let (status, body) = get(&gateway, None, "/v1/models/small").await;
    assert_eq!(status, 401, "no anonymous probing: {body}");
    assert_eq!(body["error"]["code"], "missing_api_key");
    assert_eq!(
        get(&gateway, Some("sk-sy-nobody"), "/v1/models/small")
            .await
            .0,
        401
    );

    let (status, body) = get(&gateway, Some(BOB), "/v1/models/small").await;
    assert_eq!((status, &body["id"]), (200, &json!("small")));
    // Allowed to the team but not to Bob, allowed to nobody, unknown: the same 404.
    for model in ["big", "secret", "no-such-model"] {
        let (status, body) = get(&gateway, Some(BOB), &format!("/v1/models/{model}")).await;
        assert_eq!(status, 404, "{model}: {body}");
        assert_eq!(body["error"]["code"], "model_not_found");
        let expected =
            format!("the model '{model}' does not exist or you do not have access to it");
        assert_eq!(body["error"]["message"], expected.as_str());
    }
    assert_eq!(get(&gateway, Some(ALICE), "/v1/models/big").await.0, 200);
    assert_eq!(get(&gateway, Some(ALICE), "/v1/models/secret").await.0, 404);
}

/// Sends a request head announcing a body of `length` bytes and none of it; the answer.
async fn head_only(
    addr: std::net::SocketAddr,
    request_line: &str,
    auth: &str,
    length: u64,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{request_line} HTTP/1.1\r\nHost: gw\r\n{auth}Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    // Only a hang guard: the body never comes, so only an answer that did not wait for
    // it arrives at all.
    let read = tokio::time::timeout(common::HANG, stream.read(&mut answer))
        .await
        .expect("answered without waiting for the body")
        .unwrap();
    String::from_utf8_lossy(&answer[..read]).into_owned()
}

#[tokio::test]
async fn a_request_without_a_valid_key_is_refused_before_its_body_is_read() {
    let admin_key = "sk-sy-admin-0a1b2c3d4e5f60718293a4b5c6";
    let admin = format!(
        "admin: {{key_sha256: {}, on_public_listener: true}}\n",
        hex(&hash_key(admin_key))
    );
    let gateway = TestGateway::start(&format!("{}{admin}", config())).await;
    let addr = gateway.gateway.addr;
    for (line, auth) in [
        ("POST /v1/chat/completions", ""),
        (
            "POST /v1/chat/completions",
            "Authorization: Bearer sk-sy-nobody\r\n",
        ),
        (
            "POST /v1/chat/completions",
            &format!("Authorization: Bearer {OFF}\r\n"),
        ),
        ("POST /v1/embeddings", ""),
        ("POST /admin/keys", ""),
        (
            "POST /admin/keys",
            &format!("Authorization: Bearer {ALICE}\r\n"),
        ),
    ] {
        // 1 GiB (over the body limit), and 1 KB (under it: the body would be waited for
        // until the body idle timeout, 30 s by default).
        for length in [1 << 30, 1024] {
            let answer = head_only(addr, line, auth, length).await;
            assert!(
                answer.starts_with("HTTP/1.1 401"),
                "{line} {auth:?}: {answer}"
            );
        }
    }
}
