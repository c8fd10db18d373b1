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
