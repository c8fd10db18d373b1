//! Keys created through the admin API, shared by replicas through one real `redis-server`:
//! a key created on one replica is honoured by the other, and one revoked on one is refused
//! by the other, within a second; usage booked on one is shown by the other.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::{Duration, Instant};

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

/// How long until `gateway` answers `key` with `status` (polling every 20 ms, up to 3 s).
async fn time_until(gateway: &GatewayProcess, key: &str, status: u16) -> Duration {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        if chat(gateway, key).await == status {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never answered {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_created_or_revoked_on_one_replica_is_honoured_by_the_other_within_a_second() {
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
    let took = time_until(&replicas.b, &key, 200).await;
    assert!(took < Duration::from_secs(1), "created: {took:?}");

    // Usage booked through A is shown by B.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, shown) = admin(
        &replicas.b,
        reqwest::Method::GET,
        "/admin/keys/worker",
        None,
    )
    .await;
    assert_eq!(status, 200, "{shown}");
    assert!(
        shown["usage"]["total"]["requests"].as_u64().unwrap() >= 2,
        "{shown}"
    );
    assert!(
        shown["usage"]["total"]["cost_usd"].as_f64().unwrap() > 0.0,
        "{shown}"
    );

    let (status, _) = admin(
        &replicas.a,
        reqwest::Method::DELETE,
        "/admin/keys/worker",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(chat(&replicas.a, &key).await, 401);
    let took = time_until(&replicas.b, &key, 401).await;
    assert!(took < Duration::from_secs(1), "revoked: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_keys_survive_a_restart_of_the_replicas() {
    let redis = RedisServer::start().await;
    let key = {
        let replicas = replicas(&redis);
        let (status, created) = admin(
            &replicas.a,
            reqwest::Method::POST,
            "/admin/keys",
            Some(json!({})),
        )
        .await;
        assert_eq!(status, 201);
        created["key"].as_str().unwrap().to_owned()
    };
    let replicas = replicas(&redis);
    let took = time_until(&replicas.b, &key, 200).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
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
    let started = Instant::now();
    while !replicas
        .a
        .logs()
        .contains("the shared key store (Redis) is unavailable")
    {
        assert!(started.elapsed() < Duration::from_secs(3), "a WARN says so");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
