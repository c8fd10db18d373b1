//! `/metrics` and cost through real sockets: after a known workload the counts, token
//! totals and cost on `/metrics` are exact, every answer says what it cost (a header, or
//! the usage chunk of a stream), and the exposition format follows what the scraper asks.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use common::eventually;
use common::scenario::{PRIMARY_WITH_BACKUP, Scenario, Switch, a_down_while, ask, ask_stream, ok};
use serde_json::{Value, json};

/// The value of the sample whose name and labels are exactly `series`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

fn assert_usd(actual: f64, expected: f64) {
    assert!(
        (actual - expected).abs() < 1e-12,
        "{actual} USD, not {expected}"
    );
}

/// `m` is priced (2 and 4 USD per million input and output tokens), `free` is not.
async fn priced() -> Scenario {
    Scenario::answering(ok)
        .models("  m: {targets: [{provider: up, model: a}]}\n  unpriced: {targets: [{provider: up, model: b}]}\n")
        .top_level("pricing:\n  models:\n    a: {input: 2, output: 4}\n")
        .start()
        .await
}

#[tokio::test]
async fn a_known_workload_is_counted_exactly() {
    let s = priced().await;
    // Two answers of 11 input and 7 output tokens: 11 × 2 + 7 × 4 = 50 µUSD each.
    for _ in 0..2 {
        let reply = s.chat(&ask("m")).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-switchyard-cost-usd"), Some("0.00005"));
        assert_eq!(reply.header("x-switchyard-cost-source"), Some("provider"));
    }
    // A stream of 9 input and 3 output tokens (30 µUSD), its usage asked for: the usage
    // chunk says the cost.
    let mut stream = ask_stream("m");
    stream["stream_options"] = json!({"include_usage": true});
    let reply = s.chat(&stream).await;
    let usage: Value = reply
        .events()
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .find(|c| c["usage"].is_object())
        .map(|c| c["usage"].clone())
        .unwrap();
    assert_usd(usage["switchyard"]["cost_usd"].as_f64().unwrap(), 30e-6);
    assert_eq!(usage["switchyard"]["cost_source"], "provider");
    // A model without a price says so; an unknown model is a 404 counted as `unknown`.
    let reply = s.chat(&ask("unpriced")).await;
    assert_eq!(reply.header("x-switchyard-cost-usd"), Some("unknown"));
    assert_eq!(reply.header("x-switchyard-cost-source"), Some("unpriced"));
    assert_eq!(s.chat(&ask("nope")).await.status, 404);

    // Reports are made when each request's last handle goes: wait for the last one.
    let text = eventually("every request reported", async || {
        let text = s.metrics().await;
        text.contains(r#"switchyard_requests_total{endpoint="chat_completions",model="unknown",target="",status="404"} 1"#)
            .then_some(text)
    })
    .await;
    let requests = r#"switchyard_requests_total{endpoint="chat_completions",model="m",target="up/a",status="200"}"#;
    assert_eq!(sample(&text, requests), 3.0);
    assert_eq!(
        sample(&text, r#"switchyard_tokens_total{team="",type="input"}"#),
        42.0
    );
    assert_eq!(
        sample(&text, r#"switchyard_tokens_total{team="",type="output"}"#),
        24.0
    );
    let cost = r#"switchyard_cost_usd_total{model="m",target="up/a",team=""}"#;
    assert_usd(sample(&text, cost), 130e-6);
    assert!(
        !text.contains(r#"switchyard_cost_usd_total{model="unpriced""#),
        "{text}"
    );

    let gen_ai = r#"gen_ai_operation_name="chat",gen_ai_provider_name="openai",gen_ai_request_model="a",gen_ai_response_model="a""#;
    let count =
        format!("gen_ai_client_operation_duration_seconds_count{{{gen_ai},error_type=\"\"}}");
    assert_eq!(sample(&text, &count), 3.0);
    let input = format!("gen_ai_client_token_usage_sum{{{gen_ai},gen_ai_token_type=\"input\"}}");
    assert_eq!(sample(&text, &input), 31.0, "11 + 11 + 9");
    let first = format!(
        "gen_ai_client_operation_time_to_first_chunk_seconds_count{{{gen_ai},error_type=\"\"}}"
    );
    assert_eq!(sample(&text, &first), 1.0);
    // Six chunks (role, three pieces, finish, usage): five gaps.
    let gaps = format!(
        "gen_ai_client_operation_time_per_output_chunk_seconds_count{{{gen_ai},error_type=\"\"}}"
    );
    assert_eq!(sample(&text, &gaps), 5.0);

    for side in ["request", "response"] {
        let overhead = format!("switchyard_gateway_overhead_seconds_count{{side=\"{side}\"}}");
        assert_eq!(sample(&text, &overhead), 4.0, "{side}");
    }
    let upstream = r#"switchyard_upstream_duration_seconds_count{target="up/a"}"#;
    assert_eq!(sample(&text, upstream), 3.0);
    let in_flight = r#"switchyard_requests_in_flight{endpoint="chat_completions"}"#;
    assert_eq!(sample(&text, in_flight), 0.0);
    // The Prometheus text format unless OpenMetrics is asked for.
    assert!(!text.contains("# EOF"), "{text}");
}

#[tokio::test]
async fn openmetrics_is_served_to_a_scraper_that_asks_for_it() {
    let s = priced().await;
    s.chat(&ask("m")).await;
    let response = common::client()
        .get(format!("{}/metrics", s.gateway.url))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )
        .send()
        .await
        .unwrap();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(response.text().await.unwrap().ends_with("# EOF\n"));
}

#[tokio::test]
async fn retries_and_fallbacks_are_counted_by_reason() {
    let down = Switch::on();
    let s = Scenario::answering(a_down_while(&down))
        .models(PRIMARY_WITH_BACKUP)
        .resilience("max_attempts: 2\n  backoff: {base: 1ms, max: 2ms}")
        .start()
        .await;
    let reply = s.chat(&ask("primary")).await;
    reply.assert_served_by("up/b");
    let text = s.metrics().await;
    assert_eq!(
        sample(
            &text,
            r#"switchyard_retries_total{reason="upstream_status"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"switchyard_fallbacks_total{reason="upstream_status"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn metrics_can_have_a_listener_of_their_own() {
    let gateway = common::TestGateway::start(
        "server:\n  metrics_listen: 127.0.0.1:0\nproviders:\n  m: {kind: mock}\nmodels:\n  mock: {targets: [{provider: m}]}\n",
    )
    .await;
    assert_eq!(
        gateway.get("/metrics").await.status(),
        404,
        "not on the public listener"
    );
    let addr = gateway.gateway.metrics_addr.expect("the metrics listener");
    let response = common::client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(
        text.contains("switchyard_limits_store_degraded 0"),
        "{text}"
    );
}

#[tokio::test]
async fn latency_buckets_link_to_the_requests_trace() {
    // Traces on, to a collector that is not there: the trace ids exist all the same.
    let s = Scenario::answering(ok)
        .models("  m: {targets: [{provider: up, model: a}]}\n")
        .top_level("telemetry:\n  traces: {exporter: otlp, endpoint: \"http://127.0.0.1:9\"}\n")
        .start()
        .await;
    let reply = s.chat(&ask("m")).await;
    let trace_id = reply.header("x-switchyard-trace-id").unwrap().to_owned();
    let exemplar = format!("# {{trace_id=\"{trace_id}\"}}");
    // A request whose trace is not sampled records no span: it is no exemplar.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let response = common::client()
        .post(format!("{}/v1/chat/completions", s.gateway.url))
        .bearer_auth(common::TEST_KEY)
        .header("traceparent", format!("00-{unsampled}-b7ad6b7169203331-00"))
        .json(&ask("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = eventually("both requests reported", async || {
        let response = common::client()
            .get(format!("{}/metrics", s.gateway.url))
            .header("accept", "application/openmetrics-text")
            .send()
            .await
            .unwrap();
        let text = response.text().await.unwrap();
        text.lines()
            .any(|l| {
                l.starts_with("switchyard_request_duration_seconds_count") && l.ends_with(" 2")
            })
            .then_some(text)
    })
    .await;
    assert!(
        !text.contains(unsampled),
        "an unsampled trace linked:\n{text}"
    );
    for family in [
        "switchyard_request_duration_seconds_bucket",
        "switchyard_gateway_overhead_seconds_bucket",
        "gen_ai_client_operation_duration_seconds_bucket",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(family) && l.contains(&exemplar)),
            "{family} has no exemplar {exemplar}:\n{text}"
        );
    }
    // The Prometheus text format never carries them.
    assert!(!s.metrics().await.contains("trace_id"));
}
