//! Rate limits and budgets through real sockets, with the in-process (memory) backend:
//! requests per minute, tokens per minute reserved before the call and settled after it
//! (streams included), requests in flight, USD budgets, and the headers and errors.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use common::{Logs, SseReader, TestGateway};
use serde_json::{Value, json};
use switchyard::auth::{hash_key, hex};

const ALICE: &str = "sk-sy-alice-limits-0123456789ab";
const BOB: &str = "sk-sy-bob-limits-0123456789abcd";

/// The priced echo model answering after `latency` ([`common::echo_config`]), with `keys`
/// (YAML lines under `auth.keys`) and `teams`.
fn config(latency: &str, keys: &str, teams: &str) -> String {
    format!(
        "{}auth:\n  teams:\n{teams}\n  keys:\n{keys}\n",
        common::echo_config(latency, "5ms")
    )
}

fn key(name: &str, secret: &str, settings: &str) -> String {
    format!(
        "    {name}: {{sha256: {}, {settings}}}\n",
        hex(&hash_key(secret))
    )
}

async fn ask(gateway: &TestGateway, key: &str, body: Value) -> reqwest::Response {
    common::client()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn hello(max_tokens: u64) -> Value {
    json!({"model": "echo", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hello there"}]})
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn requests_per_minute_admit_a_burst_then_refuse_with_retry_after() {
    let keys = key("alice", ALICE, "limits: {rpm: 5}");
    let gateway = TestGateway::start(&config("0ms", &keys, "    {}")).await;
    let mut remaining = Vec::new();
    for _ in 0..5 {
        let response = ask(&gateway, ALICE, hello(5)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-ratelimit-limit-requests"), "5");
        remaining.push(header(&response, "x-ratelimit-remaining-requests"));
    }
    assert_eq!(remaining, ["4", "3", "2", "1", "0"]);
    let refused = ask(&gateway, ALICE, hello(5)).await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = header(&refused, "retry-after").parse().unwrap();
    assert!(
        (1..=12).contains(&retry_after),
        "one request every 12 s: {retry_after}"
    );
    assert_ne!(header(&refused, "x-should-retry"), "false");
    let metrics = gateway.get("/metrics").await.text().await.unwrap();
    let refusals = r#"switchyard_limit_refusals_total{limit="requests_per_minute"} 1"#;
    assert!(metrics.contains(refusals), "{metrics}");
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    assert_eq!(error["error"]["type"], "rate_limit_error");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("5 requests per minute for key 'alice'"),
        "{message}"
    );
}

#[tokio::test]
async fn tokens_are_reserved_before_the_call_and_unused_ones_refunded() {
    // Each request reserves its prompt (~7 tokens) plus max_tokens 400: two fit in 1000,
    // a third concurrent one does not, although none will use more than a few tokens.
    let keys = key("alice", ALICE, "limits: {tpm: 1000}");
    let gateway = TestGateway::start(&config("300ms", &keys, "    {}")).await;
    let (a, b, c) = tokio::join!(
        ask(&gateway, ALICE, hello(400)),
        ask(&gateway, ALICE, hello(400)),
        ask(&gateway, ALICE, hello(400))
    );
    let mut statuses = [
        a.status().as_u16(),
        b.status().as_u16(),
        c.status().as_u16(),
    ];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 429], "never over-admitted");
    let refused = [a, b, c].into_iter().find(|r| r.status() == 429).unwrap();
    let error: Value = refused.json().await.unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("tokens per minute"), "{message}");

    // Both answers used ~10 tokens each: the rest of their reservations came back.
    let response = ask(&gateway, ALICE, hello(400)).await;
    assert_eq!(response.status(), 200);
    let remaining: u64 = header(&response, "x-ratelimit-remaining-tokens")
        .parse()
        .unwrap();
    assert!(
        remaining >= 1000 - 2 * 20 - 410 - 5,
        "refunds arrived: {remaining}"
    );
    assert_eq!(header(&response, "x-ratelimit-limit-tokens"), "1000");
}

#[tokio::test]
async fn a_streamed_answer_is_charged_its_real_usage() {
    let (logs, _guard) = Logs::capture();
    let keys = key("alice", ALICE, "limits: {tpm: 10000}");
    let gateway = TestGateway::start(&config("0ms", &keys, "    {}")).await;
    let long = "word ".repeat(400);
    let stream = json!({"model": "echo", "stream": true, "max_tokens": 5000, "messages": [{"role": "user", "content": long}]});
    let response = ask(&gateway, ALICE, stream).await;
    let id = common::request_id(&response);
    let reserved_left: u64 = header(&response, "x-ratelimit-remaining-tokens")
        .parse()
        .unwrap();
    assert!(
        reserved_left < 10000 - 5000,
        "the stream reserved max_tokens: {reserved_left}"
    );
    let events = SseReader::new(response).all().await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    // The echo used ~500 completion and ~500 prompt tokens, not 5000: the rest came back
    // when the request was over (its record settles and writes the access line at once).
    logs.wait_access(&id).await;
    let after = ask(&gateway, ALICE, hello(1)).await;
    let left: u64 = header(&after, "x-ratelimit-remaining-tokens")
        .parse()
        .unwrap();
    assert!(
        (8500..9600).contains(&left),
        "charged ~1000 tokens, not 5500: {left}"
    );
}

#[tokio::test]
async fn requests_in_flight_are_capped() {
    let keys = key("alice", ALICE, "limits: {max_concurrent: 1}");
    let gateway = TestGateway::start(&config("300ms", &keys, "    {}")).await;
    let (first, second) = tokio::join!(ask(&gateway, ALICE, hello(5)), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        ask(&gateway, ALICE, hello(5)).await
    });
    assert_eq!(first.status(), 200);
    assert_eq!(second.status(), 429);
    let error: Value = second.json().await.unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("in flight"), "{message}");
    assert_eq!(
        ask(&gateway, ALICE, hello(5)).await.status(),
        200,
        "the slot was released"
    );
}

#[tokio::test]
async fn budgets_are_reserved_at_the_worst_case_and_refuse_when_spent() {
    // $1 per 1k prompt tokens, $2 per 1k completion tokens. A request with max_tokens 10
    // and a ~7-token prompt may cost up to ~$0.027 and really costs ~$0.013.
    let keys = key("alice", ALICE, "budget: {total_usd: 0.05}");
    let gateway = TestGateway::start(&config("0ms", &keys, "    {}")).await;
    let mut admitted = 0;
    for _ in 0..6 {
        let response = ask(&gateway, ALICE, hello(10)).await;
        if response.status() == 200 {
            admitted += 1;
            continue;
        }
        assert_eq!(response.status(), 429);
        assert_eq!(header(&response, "x-should-retry"), "false");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "insufficient_quota");
        assert_eq!(error["error"]["type"], "insufficient_quota");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains("total budget"), "{message}");
        break;
    }
    // Charged at real cost, not at the reservation: more requests fit than $0.05 / $0.027.
    assert!((2..=4).contains(&admitted), "{admitted}");
}

#[tokio::test]
async fn team_limits_are_shared_by_its_keys() {
    let keys = key("alice", ALICE, "team: search") + &key("bob", BOB, "team: search");
    let teams = "    search: {limits: {rpm: 3}}";
    let gateway = TestGateway::start(&config("0ms", &keys, teams)).await;
    let mut statuses = Vec::new();
    for secret in [ALICE, BOB, ALICE, BOB] {
        statuses.push(ask(&gateway, secret, hello(5)).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
}

#[tokio::test]
async fn keys_without_limits_get_no_rate_limit_headers() {
    let keys = key("alice", ALICE, "enabled: true");
    let gateway = TestGateway::start(&config("0ms", &keys, "    {}")).await;
    let response = ask(&gateway, ALICE, hello(5)).await;
    assert_eq!(response.status(), 200);
    assert!(
        response
            .headers()
            .get("x-ratelimit-limit-requests")
            .is_none()
    );
}
