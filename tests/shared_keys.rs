//! Keys created through the admin API, shared by replicas through one real `redis-server`:
//! a key created on one replica is honoured by the other, and one revoked on one is refused
//! by the other; usage booked on one is shown by the other.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use common::eventually;
use common::process::{GatewayProcess, Replicas};
use common::redis::RedisServer;
use serde_json::{Value, json};
use switchyard::auth::{hash_key, hex};

const ADMIN_KEY: &str = "sk-sy-admin-shared-0123456789abcdef";

fn replicas(redis: &RedisServer) -> Replicas {
    Replicas::start(&format!(
        r#"
providers:
  mock: {{kind: mock}}
models:
  echo: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}
limits:
  backend: redis
  redis: {{url: "{}", timeout: 200ms}}
admin:
  key_sha256: {}
  listen: 127.0.0.1:0
"#,
        redis.url(),
        hex(&hash_key(ADMIN_KEY)),
    ))
}

async fn admin(
    gateway: &GatewayProcess,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = gateway.admin_url.as_ref().expect("an admin listener");
    let mut request = common::client()
        .request(method, format!("{url}{path}"))
        .bearer_auth(ADMIN_KEY);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

/// `method` on the key `worker` through `gateway`'s admin API.
async fn worker(gateway: &GatewayProcess, method: reqwest::Method) -> (u16, Value) {
    admin(gateway, method, "/admin/keys/worker", None).await
}

/// Creates a key with no settings through `gateway`'s admin API; returns its secret.
async fn create_key(gateway: &GatewayProcess) -> String {
    let (status, created) = admin(
        gateway,
        reqwest::Method::POST,
        "/admin/keys",
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    created["key"].as_str().unwrap().to_owned()
}

async fn chat(gateway: &GatewayProcess, key: &str) -> u16 {
    common::client()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .bearer_auth(key)
        .json(&json!({"model": "echo", "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Waits until `gateway` answers `key` with `status`: a change made through another
/// replica, or in Redis, has reached it.
async fn until_answers(gateway: &GatewayProcess, key: &str, status: u16) {
    eventually(format!("{} answers {status}", gateway.url), async || {
        (chat(gateway, key).await == status).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_created_or_revoked_on_one_replica_is_honoured_by_the_other() {
    let redis = RedisServer::start().await;
    let replicas = replicas(&redis);

    let (status, created) = admin(
        &replicas.a,
        reqwest::Method::POST,
        "/admin/keys",
        Some(json!({"name": "worker"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    assert_eq!(
        chat(&replicas.a, &key).await,
        200,
        "at once on the replica that created it"
    );
    until_answers(&replicas.b, &key, 200).await;

    // Usage booked through A is shown by B (once the requests are settled).
    let shown = eventually("both requests booked", async || {
        let (status, shown) = worker(&replicas.b, reqwest::Method::GET).await;
        assert_eq!(status, 200, "{shown}");
        let requests = shown["usage"]["total"]["requests"].as_u64().unwrap();
        (requests >= 2).then_some(shown)
    })
    .await;
    assert!(
        shown["usage"]["total"]["cost_usd"].as_f64().unwrap() > 0.0,
        "{shown}"
    );

    let (status, _) = worker(&replicas.a, reqwest::Method::DELETE).await;
    assert_eq!(status, 200);
    assert_eq!(chat(&replicas.a, &key).await, 401);
    until_answers(&replicas.b, &key, 401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_keys_survive_a_restart_of_the_replicas() {
    let redis = RedisServer::start().await;
    let key = create_key(&replicas(&redis).a).await;
    let replicas = replicas(&redis);
    until_answers(&replicas.b, &key, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_the_shared_keys_were_read_an_unknown_key_is_unavailable_not_invalid() {
    let mut redis = RedisServer::start().await;
    redis.kill();
    let replicas = replicas(&redis);
    let response = common::client()
        .post(format!("{}/v1/chat/completions", replicas.a.url))
        .bearer_auth("sk-sy-maybe-created-elsewhere-0123")
        .json(&json!({"model": "echo", "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "key_store_unavailable");
    let (status, _) = admin(&replicas.a, reqwest::Method::GET, "/admin/keys", None).await;
    assert_eq!(status, 503);
    eventually("a WARN says so", async || {
        let logs = replicas.a.logs();
        logs.contains("the shared key store (Redis) is unavailable")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_data_is_believed() {
    let mut redis = RedisServer::start().await;
    let replicas = replicas(&redis);
    let key = create_key(&replicas.a).await;
    assert_eq!(chat(&replicas.a, &key).await, 200);
    // Restarted without persistence: the keys and their version counter are gone.
    redis.kill();
    redis.restart().await;
    for gateway in [&replicas.a, &replicas.b] {
        until_answers(gateway, &key, 401).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_computed_from_a_stale_read_is_refused() {
    use switchyard::config::schema::{KeyConfig, LimitsBackend, LimitsSettings, RedisSettings};
    use switchyard::key_store::{ChangeError, KeyStore, StoredKey};

    let redis = RedisServer::start().await;
    let settings = LimitsSettings {
        backend: LimitsBackend::Redis,
        redis: Some(RedisSettings {
            url: redis.url(),
            timeout: Duration::from_millis(200),
            on_failure: Default::default(),
            key_prefix: "test:".into(),
        }),
        ..LimitsSettings::default()
    };
    let store = KeyStore::new(&settings).unwrap();
    let version = |rpm: u32| StoredKey {
        created_at: "2026-11-21T00:00:00Z".into(),
        key: serde_json::from_value::<KeyConfig>(
            json!({"sha256": "ab".repeat(32), "limits": {"rpm": rpm}}),
        )
        .unwrap(),
    };
    store.create("k", &version(1)).await.unwrap();
    store.update("k", &version(1), &version(2)).await.unwrap();
    // Computed from the first version, which another writer has since replaced.
    let stale = store.update("k", &version(1), &version(3)).await;
    assert!(matches!(stale, Err(ChangeError::Changed(_))), "{stale:?}");
    assert_eq!(store.records().unwrap()["k"], version(2));
    store.revoke("k").await.unwrap();
    let gone = store.update("k", &version(2), &version(3)).await;
    assert!(matches!(gone, Err(ChangeError::NotFound(_))), "{gone:?}");
}
