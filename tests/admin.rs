//! The admin API through real sockets (memory backend): who may use it and on which
//! listener, the life of a key created through it (created, used, listed, shown with its
//! usage and spend, limited, revoked), teams, and the errors. The created key is shown once
//! and never reaches the logs.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use common::{Logs, TEST_KEY, TestGateway};
use serde_json::{Value, json};
use switchyard::auth::{hash_key, hex};

const ADMIN_KEY: &str = "sk-sy-admin-0123456789abcdef0123";

fn config(on_public_listener: bool) -> String {
    format!(
        r#"
providers:
  mock: {{kind: mock}}
models:
  small: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}
  big: {{targets: [{{provider: mock, model: gpt-4o}}]}}
admin:
  key_sha256: {}
  listen: 127.0.0.1:0
  on_public_listener: {on_public_listener}
{}"#,
        hex(&hash_key(ADMIN_KEY)),
        common::auth_section("  teams:\n    search: {models: [small]}\n"),
    )
}

struct Admin<'a> {
    url: String,
    key: &'a str,
}

impl Admin<'_> {
    fn of(gateway: &TestGateway) -> Admin<'static> {
        Admin {
            url: format!(
                "http://{}",
                gateway.gateway.admin_addr.expect("an admin listener")
            ),
            key: ADMIN_KEY,
        }
    }

    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = common::client()
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

async fn chat(gateway: &TestGateway, key: &str, model: &str) -> u16 {
    common::client()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .bearer_auth(key)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

#[tokio::test]
async fn the_admin_api_needs_the_admin_key_and_stays_off_the_public_listener() {
    let gateway = TestGateway::start(&config(false)).await;
    let admin = Admin::of(&gateway);
    assert_eq!(admin.send("GET", "/admin/keys", None).await.0, 200);

    // The public listener does not serve it, whatever the key.
    let public = Admin {
        url: gateway.url.clone(),
        key: ADMIN_KEY,
    };
    let (status, body) = public.send("GET", "/admin/keys", None).await;
    assert_eq!(status, 404);
    assert_error(&body, "unknown_url");

    // No key, a virtual key, a wrong key: 401.
    let response = common::client()
        .get(format!("{}/admin/keys", admin.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    for key in [TEST_KEY, "sk-sy-admin-wrong"] {
        let (status, body) = Admin {
            url: admin.url.clone(),
            key,
        }
        .send("GET", "/admin/keys", None)
        .await;
        assert_eq!(status, 401);
        assert_error(&body, "invalid_admin_key");
    }
    // The admin listener serves nothing else.
    let (status, _) = admin
        .send("POST", "/v1/chat/completions", Some(json!({})))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn on_the_public_listener_when_configured() {
    let gateway = TestGateway::start(&config(true)).await;
    let public = Admin {
        url: gateway.url.clone(),
        key: ADMIN_KEY,
    };
    assert_eq!(public.send("GET", "/admin/teams", None).await.0, 200);
}

#[tokio::test]
async fn a_created_key_works_is_shown_with_its_spend_limited_and_revoked() {
    let (logs, _guard) = Logs::capture();
    let gateway = TestGateway::start(&config(false)).await;
    let admin = Admin::of(&gateway);

    let (status, created) = admin
        .send(
            "POST",
            "/admin/keys",
            Some(json!({"name": "ci-bot", "team": "search", "metadata": {"owner": "ci"}})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sk-sy-") && key.len() >= 38, "{key}");
    assert_eq!(created["sha256"], hex(&hash_key(&key)));
    assert_eq!(created["source"], "admin");

    // It works at once, within its team's models.
    assert_eq!(chat(&gateway, &key, "small").await, 200);
    assert_eq!(chat(&gateway, &key, "small").await, 200);
    assert_eq!(chat(&gateway, &key, "big").await, 403);

    // Listed (config and admin keys), never with the key itself.
    let (status, list) = admin.send("GET", "/admin/keys", None).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["test", "ci-bot"]);
    assert!(!list.to_string().contains(&key));

    // Shown with what it used: two requests, tokens, and a cost from the price list.
    let (status, shown) = admin.send("GET", "/admin/keys/ci-bot", None).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["metadata"]["owner"], "ci");
    for period in ["today", "this_month", "total"] {
        let usage = &shown["usage"][period];
        assert_eq!(usage["requests"], 2, "{shown}");
        assert!(usage["tokens"].as_u64().unwrap() > 0);
        assert!(usage["cost_usd"].as_f64().unwrap() > 0.0);
    }
    let (_, team) = admin.send("GET", "/admin/teams/search", None).await;
    assert_eq!(team["keys"], json!(["ci-bot"]));
    assert_eq!(team["usage"]["total"]["requests"], 2);

    // Limits change at once.
    let (status, updated) = admin
        .send(
            "PATCH",
            "/admin/keys/ci-bot",
            Some(json!({"limits": {"rpm": 1}})),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["limits"]["rpm"], 1);
    assert_eq!(
        updated["metadata"]["owner"], "ci",
        "a merge patch keeps the rest"
    );
    assert_eq!(chat(&gateway, &key, "small").await, 200);
    assert_eq!(chat(&gateway, &key, "small").await, 429);

    // Revoked: refused at once, gone from the list.
    let (status, revoked) = admin.send("DELETE", "/admin/keys/ci-bot", None).await;
    assert_eq!(status, 200);
    assert_eq!(revoked["revoked"], true);
    let response = common::client()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .bearer_auth(&key)
        .json(&json!({"model": "small", "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(admin.send("GET", "/admin/keys/ci-bot", None).await.0, 404);

    assert!(
        !logs.text().contains(&key),
        "the key never reaches the logs"
    );
    assert!(logs.text().contains("admin: key revoked"));
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let gateway = TestGateway::start(&config(false)).await;
    let admin = Admin::of(&gateway);
    let create = |body: Value| admin.send("POST", "/admin/keys", Some(body));

    let (status, body) = create(json!({"team": "nope"})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "team");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown team \"nope\"")
    );

    let (status, body) = create(json!({"models": ["small", "huge"]})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "models[1]");

    let (status, body) = create(json!({"limits": {"rpm": 0}})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "limits.rpm");

    let (status, body) = create(json!({"colour": "red"})).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("colour"),
        "{body}"
    );

    let (status, body) = create(json!({"sha256": "00"})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "sha256");

    let (status, body) = create(json!({"name": "bad name!"})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "name");

    // Names are unique, config keys included; config keys change only in the file.
    let (status, generated) = create(json!({})).await;
    assert_eq!(status, 201);
    assert!(generated["name"].as_str().unwrap().starts_with("key-"));
    let (status, body) = create(json!({"name": generated["name"]})).await;
    assert_eq!(status, 409);
    assert_error(&body, "conflict");
    assert_eq!(create(json!({"name": "test"})).await.0, 409);
    let patch = Some(json!({"enabled": false}));
    assert_eq!(
        admin
            .send("PATCH", "/admin/keys/test", patch.clone())
            .await
            .0,
        409
    );
    assert_eq!(admin.send("DELETE", "/admin/keys/test", None).await.0, 409);

    let (status, body) = admin.send("PATCH", "/admin/keys/nobody", patch).await;
    assert_eq!(status, 404);
    assert_error(&body, "not_found");
    let (status, body) = admin
        .send(
            "PATCH",
            &format!("/admin/keys/{}", generated["name"].as_str().unwrap()),
            Some(json!({"limits": {"tpm": "lots"}})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(admin.send("GET", "/admin/teams/nobody", None).await.0, 404);

    let response = common::client()
        .post(format!("{}/admin/keys", admin.url))
        .bearer_auth(ADMIN_KEY)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}
