//! Limits shared by replicas: two gateway processes and one real `redis-server`, started
//! by each test on free ports. Counts are exact across replicas, tokens and budgets are
//! reserved before the call and settled after it, and when Redis dies the gateway fails
//! open to per-replica limits, without hanging or failing a request, until it comes back.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use common::process::{GatewayProcess, Replicas};
use common::redis::RedisServer;
use common::{SseReader, eventually, hang_guard};
use serde_json::{Value, json};
use switchyard::auth::{hash_key, hex};

const KEY: &str = "sk-sy-shared-limits-0123456789ab";
/// Another key, limited only so that its requests go to Redis: it shows whether a replica
/// reaches Redis without touching `KEY`'s counts.
const PROBE_KEY: &str = "sk-sy-shared-limits-probe-012345";
const ADMIN_KEY: &str = "sk-sy-shared-limits-admin-012345";

/// Two gateways on `redis`, one key with `settings` (YAML flow map contents).
fn replicas(redis: &RedisServer, latency: &str, settings: &str) -> Replicas {
    let config = format!(
        r#"{}
limits:
  backend: redis
  redis: {{url: "{}", timeout: 200ms}}
auth:
  keys:
    shared: {{sha256: {}, {settings}}}
    probe: {{sha256: {}, limits: {{rpm: 1000000}}}}
admin:
  key_sha256: {}
  listen: 127.0.0.1:0
"#,
        common::echo_config(latency, "2ms"),
        redis.url(),
        hex(&hash_key(KEY)),
        hex(&hash_key(PROBE_KEY)),
        hex(&hash_key(ADMIN_KEY)),
    );
    Replicas::start(&config)
}

async fn ask(gateway: &GatewayProcess, body: &Value) -> reqwest::Response {
    ask_as(gateway, KEY, body).await
}

/// Sends `body` with `key`; every request is bounded by the hang guard, Redis down or not.
async fn ask_as(gateway: &GatewayProcess, key: &str, body: &Value) -> reqwest::Response {
    let request = common::client()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .bearer_auth(key)
        .json(body)
        .send();
    hang_guard("an answer", request).await.unwrap()
}

/// Waits until `gateway` reaches Redis again: a probe (a request of `PROBE_KEY`) went
/// there, and the store is not degraded.
async fn until_using_redis(gateway: &GatewayProcess) {
    eventually("the replica uses Redis again", async || {
        assert_eq!(ask_as(gateway, PROBE_KEY, &hello(5)).await.status(), 200);
        (degraded(gateway).await == Some(0.0)).then_some(())
    })
    .await;
}

/// Waits until `requests` of `KEY`'s requests are settled in Redis (settlement books the
/// usage with the refunds, in one script, after the answer), as `gateway`'s admin API shows.
async fn until_settled(gateway: &GatewayProcess, requests: u64) {
    let url = format!("{}/admin/keys/shared", gateway.admin_url.as_ref().unwrap());
    eventually(format!("{requests} requests settled"), async || {
        let response = common::client()
            .get(&url)
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .ok()?;
        let shown: Value = response.json().await.ok()?;
        let settled = shown["usage"]["total"]["requests"].as_u64()?;
        (settled >= requests).then_some(())
    })
    .await;
}

/// How many of `statuses` are 200s.
fn admitted(statuses: &[u16]) -> usize {
    statuses.iter().filter(|s| **s == 200).count()
}

/// `switchyard_limits_store_degraded`: 1 while Redis is away and the replica fails open.
async fn degraded(gateway: &GatewayProcess) -> Option<f64> {
    gateway.metric("switchyard_limits_store_degraded").await
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
    assert_eq!(admitted(&statuses), 2, "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        4,
        "{statuses:?}"
    );
    // The two used ~10 tokens each; their reservations came back when they ended.
    until_settled(&replicas.a, 2).await;
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
    until_settled(&replicas.b, 1).await;
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
            // Settlement is asynchronous: it lands before the next reservation.
            until_settled(gateway, admitted).await;
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

    // Without Redis every request is answered (none hangs) and never with a 5xx; replica A
    // applies its own 5 requests per minute.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(ask(&replicas.a, &hello(5)).await.status().as_u16());
    }
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    assert_eq!(admitted(&statuses), 5, "local limit: {statuses:?}");
    assert_eq!(degraded(&replicas.a).await, Some(1.0));
    assert!(
        replicas.a.logs().contains("failing open"),
        "a WARN says so:\n{}",
        replicas.a.logs()
    );

    // Redis back (empty): once each replica's probe (a request of another key) has
    // reached it, the shared limit applies again.
    redis.restart().await;
    until_using_redis(&replicas.a).await;
    until_using_redis(&replicas.b).await;
    let mut statuses = Vec::new();
    for i in 0..7 {
        let gateway = if i % 2 == 0 { &replicas.a } else { &replicas.b };
        statuses.push(ask(gateway, &hello(5)).await.status().as_u16());
    }
    assert_eq!(admitted(&statuses), 5, "shared again: {statuses:?}");
    assert_eq!(degraded(&replicas.a).await, Some(0.0));
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
    until_settled(&replicas.a, 1).await;
    // Redis stalls for longer than the gateway waits (200 ms): the reservation is made
    // once it wakes up, but its answer comes too late, and the request fails open.
    let port = redis.port;
    let stall =
        tokio::spawn(async move { RedisServer::command(port, &["DEBUG", "SLEEP", "0.6"]).await });
    // Lets the DEBUG SLEEP reach Redis first: a sleeping Redis cannot be asked whether it
    // sleeps (a poll would wait behind it), so this one pause stays.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(ask(&replicas.a, &hello(5)).await.status(), 200);
    assert!(stall.await.unwrap().starts_with("+OK"));
    // A failed open while Redis stalled; it comes back to Redis after its next probe.
    until_using_redis(&replicas.a).await;
    // The in-flight slot the late reservation took is released (the release is retried
    // while Redis is away): one request at a time gets through again, on either replica.
    let mut settled = 1;
    eventually("the late reservation's slot released", async || {
        let status = ask(&replicas.b, &hello(5)).await.status();
        assert!(status == 200 || status == 429, "{status}");
        (status == 200).then_some(())
    })
    .await;
    for gateway in [&replicas.b, &replicas.a, &replicas.b] {
        // A slot is given back just after the response, in the background.
        settled += 1;
        until_settled(gateway, settled).await;
        assert_eq!(ask(gateway, &hello(5)).await.status(), 200);
    }
}
