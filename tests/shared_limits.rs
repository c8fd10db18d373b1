//! Limits shared by replicas: two gateway processes and one real `redis-server`, started
//! by each test on free ports. Counts are exact across replicas, tokens and budgets are
//! reserved before the call and settled after it, and when Redis dies the gateway fails
//! open to per-replica limits, without hanging or failing a request, until it comes back.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::{Duration, Instant};

use common::SseReader;
use common::process::{GatewayProcess, Replicas};
use common::redis::RedisServer;
use serde_json::{Value, json};
use switchyard::auth::{hash_key, hex};

const KEY: &str = "sk-sy-shared-limits-0123456789ab";

/// Two gateways on `redis`, one key with `settings` (YAML flow map contents).
fn replicas(redis: &RedisServer, latency: &str, settings: &str) -> Replicas {
    let config = format!(
        r#"
providers:
  mock: {{kind: mock, mock: {{latency: {latency}, chunk_interval: 2ms}}}}
models:
  echo: {{targets: [{{provider: mock, model: echo-upstream}}]}}
pricing:
  models:
    echo-upstream: {{input: 1000, output: 2000}}
limits:
  backend: redis
  redis: {{url: "{}", timeout: 200ms}}
auth:
  keys:
    shared: {{sha256: {}, {settings}}}
"#,
        redis.url(),
        hex(&hash_key(KEY)),
    );
    Replicas::start(&config)
}

async fn ask(gateway: &GatewayProcess, body: &Value) -> reqwest::Response {
    common::client()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn hello(max_tokens: u64) -> Value {
    json!({"model": "echo", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hello there"}]})
}

fn header(response: &reqwest::Response, name: &str) -> Option<u64> {
    response.headers().get(name)?.to_str().ok()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_per_minute_limit_holds_across_replicas() {
    let redis = RedisServer::start().await;
    let replicas = replicas(&redis, "0ms", "limits: {rpm: 60}");
    let mut admitted = 0;
    let mut refused = 0;
    let body = hello(5);
    // 120 requests, 8 at a time, alternating replicas.
    for round in 0..15 {
        let calls = (0..8).map(|i| {
            let gateway = if (round + i) % 2 == 0 {
                &replicas.a
            } else {
                &replicas.b
            };
            ask(gateway, &body)
        });
        for response in futures_util::future::join_all(calls).await {
            match response.status().as_u16() {
                200 => admitted += 1,
                429 => refused += 1,
                other => panic!("unexpected status {other}"),
            }
        }
    }
    // GCRA: a burst of 60, plus the one cell that may come back during the run.
    assert!(
        (60..=61).contains(&admitted),
        "admitted {admitted}\n{}",
        replicas.a.logs()
    );
    assert_eq!(admitted + refused, 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_reserved_across_replicas_and_refunded_after() {
    let redis = RedisServer::start().await;
    // Each request reserves ~7 prompt + 400 completion tokens: two fit in 1000.
    let replicas = replicas(&redis, "300ms", "limits: {tpm: 1000}");
    let body = hello(400);
    let calls = [
        &replicas.a,
        &replicas.b,
        &replicas.a,
        &replicas.b,
        &replicas.a,
        &replicas.b,
    ]
    .map(|gateway| ask(gateway, &body));
    let statuses: Vec<u16> = futures_util::future::join_all(calls)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        4,
        "{statuses:?}"
    );
    // The two used ~10 tokens each; their reservations came back when they ended.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = ask(&replicas.b, &hello(400)).await;
    assert_eq!(response.status(), 200);
    let remaining = header(&response, "x-ratelimit-remaining-tokens").unwrap();
    assert!(remaining >= 1000 - 40 - 410 - 10, "refunded: {remaining}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_charged_its_real_usage_on_the_other_replica_too() {
    let redis = RedisServer::start().await;
    let replicas = replicas(&redis, "0ms", "limits: {tpm: 10000}");
    let long = "word ".repeat(400);
    let body = json!({"model": "echo", "stream": true, "max_tokens": 5000, "messages": [{"role": "user", "content": long}]});
    let response = ask(&replicas.a, &body).await;
    assert!(header(&response, "x-ratelimit-remaining-tokens").unwrap() < 5000);
    let events = SseReader::new(response).all().await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = ask(&replicas.b, &hello(1)).await;
    let left = header(&after, "x-ratelimit-remaining-tokens").unwrap();
    assert!(
        (8500..9700).contains(&left),
        "charged ~1000 tokens, not 5000: {left}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_is_shared_and_refuses_when_spent() {
    let redis = RedisServer::start().await;
    let replicas = replicas(&redis, "0ms", "budget: {total_usd: 0.05}");
    let mut admitted = 0;
    for i in 0..8 {
        let gateway = if i % 2 == 0 { &replicas.a } else { &replicas.b };
        let response = ask(gateway, &hello(10)).await;
        if response.status() == 200 {
            admitted += 1;
            // Settlement is asynchronous: let it land before the next reservation.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        assert_eq!(response.status(), 429);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "insufficient_quota");
        break;
    }
    assert!((2..=4).contains(&admitted), "{admitted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_redis_fails_open_to_per_replica_limits_then_shared_limits_resume() {
    let mut redis = RedisServer::start().await;
    let replicas = replicas(&redis, "0ms", "limits: {rpm: 5}");
    assert_eq!(
        ask(&replicas.a, &hello(5)).await.status(),
        200,
        "shared: 4 left"
    );
    redis.kill();

    // Without Redis every request is answered, quickly, and never with a 5xx; replica A
    // applies its own 5 requests per minute.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let started = Instant::now();
        let response = ask(&replicas.a, &hello(5)).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "no request hangs"
        );
        statuses.push(response.status().as_u16());
    }
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "local limit: {statuses:?}"
    );
    assert_eq!(
        replicas.a.metric("switchyard_limits_store_degraded").await,
        Some(1.0)
    );
    assert!(
        replicas.a.logs().contains("failing open"),
        "a WARN says so:\n{}",
        replicas.a.logs()
    );

    // Redis back (empty): after the next probe, the shared limit applies again.
    redis.restart().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut statuses = Vec::new();
    for i in 0..7 {
        let gateway = if i % 2 == 0 { &replicas.a } else { &replicas.b };
        statuses.push(ask(gateway, &hello(5)).await.status().as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "shared again: {statuses:?}"
    );
    assert_eq!(
        replicas.a.metric("switchyard_limits_store_degraded").await,
        Some(0.0)
    );
    assert!(replicas.a.logs().contains("is back"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_whose_answer_came_too_late_is_given_back() {
    let redis = RedisServer::start().await;
    let replicas = replicas(&redis, "0ms", "limits: {max_concurrent: 1}");
    // The scripts are loaded (a stalled EVALSHA of an unknown script would change nothing),
    // and this request's slot is given back before Redis stalls (else the late reservation
    // would find the slot taken and take nothing).
    assert_eq!(ask(&replicas.a, &hello(5)).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Redis stalls for longer than the gateway waits (200 ms): the reservation is made
    // once it wakes up, but its answer comes too late, and the request fails open.
    let port = redis.port;
    let stall =
        tokio::spawn(async move { RedisServer::command(port, &["DEBUG", "SLEEP", "0.6"]).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(ask(&replicas.a, &hello(5)).await.status(), 200);
    assert!(stall.await.unwrap().starts_with("+OK"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The in-flight slot the late reservation took was released (the release is retried
    // while Redis is away): one request at a time still gets through, on either replica.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for gateway in [&replicas.b, &replicas.a, &replicas.b] {
        assert_eq!(ask(gateway, &hello(5)).await.status(), 200);
        // A slot is given back just after the response, in the background.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
