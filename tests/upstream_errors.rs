//! When a provider rejects the gateway itself (its credentials: 401/403; its target's
//! model or deployment: 404): the client is not at fault, so it gets a 502 naming the
//! provider and never the upstream's words; another target can still answer; the breaker
//! counts the failure; the rejection is logged at ERROR once, not per request.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use common::upstream::{self, Behavior, Upstream};
use common::{Logs, TestGateway, UPSTREAM_KEY};
use serde_json::{Value, json};

/// An upstream that answers every request with `status` and a body quoting the key.
async fn rejecting(status: u16) -> Upstream {
    Upstream::start(move |_| Behavior::Error {
        status,
        headers: vec![],
        body: format!(
            r#"{{"error": {{"message": "Incorrect API key provided: {UPSTREAM_KEY} (deployment gpt-internal-7)", "type": "invalid_request_error", "code": "invalid_api_key"}}}}"#
        ),
    })
    .await
}

/// Model `m`: the provider `bad` first, then `good` when given, by priority.
fn config(bad: &str, good: Option<&str>) -> String {
    let good_provider = good.map_or(String::new(), |url| {
        format!("  good: {{kind: openai, base_url: {url}, api_key: {UPSTREAM_KEY}}}\n")
    });
    let good_target = good.map_or("", |_| ", {provider: good, model: up, priority: 2}");
    format!(
        r#"
providers:
  bad: {{kind: openai, base_url: {bad}, api_key: {UPSTREAM_KEY}}}
{good_provider}models:
  m:
    strategy: priority
    targets: [{{provider: bad, model: up, priority: 1}}{good_target}]
resilience:
  breaker: {{consecutive_failures: 2, cooldown: 60s}}
"#
    )
}

async fn chat(gateway: &TestGateway) -> (u16, String, Value) {
    let response = gateway
        .chat(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    let attempts = response.headers()["x-switchyard-attempts"]
        .to_str()
        .unwrap()
        .to_owned();
    (
        response.status().as_u16(),
        attempts,
        response.json().await.unwrap(),
    )
}

#[tokio::test]
async fn rejected_credentials_are_a_502_naming_the_provider() {
    for status in [401, 403] {
        let bad = rejecting(status).await;
        let gateway = TestGateway::start(&config(&bad.base_url, None)).await;
        let (client_status, attempts, body) = chat(&gateway).await;
        assert_eq!(client_status, 502, "{body}");
        assert_eq!(attempts, "1", "the same target is not tried again");
        let error = &body["error"];
        assert_eq!(error["type"], "api_error");
        assert_eq!(error["code"], "upstream_credentials_rejected");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("'bad' rejected the gateway's credentials"),
            "{message}"
        );
        let text = body.to_string();
        assert!(
            !text.contains(UPSTREAM_KEY) && !text.contains("gpt-internal-7"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn an_unknown_upstream_model_is_a_502() {
    let bad = rejecting(404).await;
    let gateway = TestGateway::start(&config(&bad.base_url, None)).await;
    let (status, _, body) = chat(&gateway).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "upstream_not_found");
    assert!(!body.to_string().contains("gpt-internal-7"), "{body}");
}

#[tokio::test]
async fn another_target_answers_and_the_breaker_counts_the_rejection() {
    let (logs, _guard) = Logs::capture();
    let bad = rejecting(401).await;
    let good = Upstream::start(|_| Behavior::Json(upstream::completion("up", "fine"))).await;
    let gateway = TestGateway::start(&config(&bad.base_url, Some(&good.base_url))).await;
    let mut attempts = Vec::new();
    for _ in 0..5 {
        let (status, tried, body) = chat(&gateway).await;
        assert_eq!(status, 200, "{body}");
        attempts.push(tried);
    }
    // Two rejections open the breaker; then requests go straight to the good target.
    assert_eq!(attempts, ["2", "2", "1", "1", "1"]);
    assert_eq!(bad.received().len(), 2);
    let metrics = gateway.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"switchyard_breaker_state{target="bad/up"} 2"#),
        "{metrics}"
    );
    let text = logs.text();
    let errors = text
        .lines()
        .filter(|l| l.contains(r#""level":"ERROR""#) && l.contains("credentials"))
        .count();
    assert_eq!(errors, 1, "logged once, not per request:\n{text}");
    assert!(!text.contains(UPSTREAM_KEY), "{text}");
}
