//! Every error a client can meet, through real sockets: always the OpenAI error shape,
//! the right status, and the request id.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use common::upstream::{self, Behavior, Upstream};
use common::{SseReader, TestGateway, config_for, gateway_for};
use serde_json::{Value, json};

/// Checks the OpenAI error shape and the request id; returns the error object.
async fn error_of(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/json");
    let id = common::request_id(&response);
    let body: Value = response.json().await.unwrap();
    let error = body["error"].clone();
    for key in ["message", "type", "param", "code"] {
        assert!(error.get(key).is_some(), "missing {key} in {body}");
    }
    assert_eq!(error["request_id"], id.as_str());
    error
}

fn hello(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello"}]})
}

async fn raw_post(gateway: &TestGateway, body: &'static str) -> reqwest::Response {
    common::client()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .bearer_auth(common::TEST_KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn malformed_json_is_a_400_with_the_parse_position() {
    let gateway = TestGateway::start(&config_for("http://127.0.0.1:9/v1")).await;
    let error = error_of(
        raw_post(&gateway, "{\"model\": \"mock\",\n \"messages\": [}").await,
        400,
    )
    .await;
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["code"], "invalid_json");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("line 2 column 15"),
        "{error}"
    );
}

#[tokio::test]
async fn missing_and_invalid_fields_are_named() {
    let gateway = TestGateway::start(&config_for("http://127.0.0.1:9/v1")).await;
    let error = error_of(raw_post(&gateway, r#"{"messages": []}"#).await, 400).await;
    assert_eq!(error["param"], "model");
    assert!(error["message"].as_str().unwrap().contains("'model'"));
    let error = error_of(raw_post(&gateway, r#"{"model": "mock"}"#).await, 400).await;
    assert_eq!(error["param"], "messages");
    let error = error_of(
        raw_post(
            &gateway,
            r#"{"model": "mock", "messages": [{"role": "user", "content": 5}]}"#,
        )
        .await,
        400,
    )
    .await;
    assert_eq!(error["param"], "messages[0].content");
    let response = gateway
        .post("/v1/embeddings", &json!({"model": "mock"}))
        .await;
    assert_eq!(error_of(response, 400).await["param"], "input");
}

#[tokio::test]
async fn unknown_model_is_a_404_model_not_found() {
    let gateway = TestGateway::start(&config_for("http://127.0.0.1:9/v1")).await;
    let response = gateway.chat(&hello("gpt-9000")).await;
    assert_eq!(response.headers()["x-should-retry"], "false");
    let error = error_of(response, 404).await;
    assert_eq!(error["code"], "model_not_found");
    assert_eq!(error["param"], "model");
}

#[tokio::test]
async fn unknown_routes_and_methods_are_openai_shaped() {
    let gateway = TestGateway::start(&config_for("http://127.0.0.1:9/v1")).await;
    let error = error_of(gateway.get("/v1/nothing-here").await, 404).await;
    assert_eq!(error["code"], "unknown_url");
    let error = error_of(gateway.get("/v1/chat/completions").await, 405).await;
    assert_eq!(error["code"], "method_not_allowed");
}

#[tokio::test]
async fn bodies_over_the_limit_are_a_413_declared_or_chunked() {
    let gateway = TestGateway::start(&config_for("http://127.0.0.1:9/v1")).await;
    let big = format!(
        r#"{{"model": "mock", "messages": [{{"role": "user", "content": "{}"}}]}}"#,
        "x".repeat(70 * 1024)
    );
    let response = common::client()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .bearer_auth(common::TEST_KEY)
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response, 413).await["code"], "request_too_large");

    // Chunked, no Content-Length: the limit still applies while reading.
    let pieces: Vec<Result<String, std::io::Error>> = big
        .as_bytes()
        .chunks(8 * 1024)
        .map(|c| Ok(String::from_utf8(c.to_vec()).unwrap()))
        .collect();
    let response = common::client()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .bearer_auth(common::TEST_KEY)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response, 413).await["code"], "request_too_large");
}

#[tokio::test]
async fn upstream_errors_keep_their_status_and_openai_message() {
    let body = r#"{"error": {"message": "This model's maximum context length is 8192 tokens.", "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}"#;
    let (_upstream, gateway) = gateway_for(move |_| Behavior::Error {
        status: 400,
        headers: vec![],
        body: body.to_owned(),
    })
    .await;
    let error = error_of(gateway.chat(&hello("gpt-test")).await, 400).await;
    assert_eq!(
        error["message"],
        "This model's maximum context length is 8192 tokens."
    );
    assert_eq!(error["code"], "context_length_exceeded");
    assert_eq!(error["param"], "messages");

    let (_upstream, gateway) = gateway_for(|_| Behavior::Error {
        status: 429,
        headers: vec![("retry-after", "3".to_owned())],
        body: r#"{"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}"#.to_owned(),
    })
    .await;
    let response = gateway.chat(&hello("gpt-test")).await;
    assert_eq!(response.headers()["retry-after"], "3");
    let error = error_of(response, 429).await;
    assert_eq!(error["message"], "Rate limit reached");

    // Not OpenAI-shaped: the status stays, the message is ours, the HTML is not passed on.
    let (_upstream, gateway) = gateway_for(|_| Behavior::Error {
        status: 503,
        headers: vec![],
        body: "<html>nginx internal trace id 42</html>".to_owned(),
    })
    .await;
    let error = error_of(gateway.chat(&hello("gpt-test")).await, 503).await;
    assert_eq!(
        error["message"],
        "the upstream provider 'up' returned HTTP 503"
    );
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_without_internal_detail() {
    // Nothing listens on port 9 of loopback.
    let gateway = TestGateway::start(&config_for("http://127.0.0.1:9/v1")).await;
    let error = error_of(gateway.chat(&hello("gpt-test")).await, 502).await;
    assert_eq!(error["code"], "upstream_unreachable");
    let message = error["message"].as_str().unwrap();
    assert!(
        !message.contains("127.0.0.1") && !message.contains("refused"),
        "{message}"
    );
}

#[tokio::test]
async fn a_silent_upstream_is_a_504_at_the_request_timeout() {
    let upstream = Upstream::start(|_| Behavior::Hang).await;
    // One attempt (the default three would take three request timeouts, close to the hang
    // guard): the configured request timeout (2 s) answers it, not never.
    let config = format!(
        "{}resilience: {{max_attempts: 1}}\n",
        config_for(&upstream.base_url)
    );
    let gateway = TestGateway::start(&config).await;
    let response = common::hang_guard("the 504", gateway.chat(&hello("gpt-test"))).await;
    let error = error_of(response, 504).await;
    assert_eq!(error["code"], "upstream_timeout");
    assert_eq!(upstream.received().len(), 1);
}

#[tokio::test]
async fn a_stream_that_breaks_ends_with_an_error_event_and_no_done() {
    // Cut before [DONE].
    let (_upstream, gateway) = gateway_for(|_| Behavior::Events {
        data: upstream::chunks("m", &["partial ", "answer"], false)[..2].to_vec(),
        interval: Duration::ZERO,
        done: false,
    })
    .await;
    let response = gateway.chat(&json!({"model": "gpt-test", "stream": true, "messages": [{"role": "user", "content": "x"}]})).await;
    let id = common::request_id(&response);
    let events = SseReader::new(response).all().await;
    assert!(!events.contains(&"[DONE]".to_owned()), "{events:?}");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_invalid_response");
    assert_eq!(last["error"]["request_id"], id.as_str());

    // A malformed event is skipped by default, or ends the stream with
    // `on_malformed_event: fail`: tests/stream_failover.rs.

    // The mock's cut fault behaves like a real cut.
    let config = "providers:\n  m: {kind: mock, mock: {faults: [{cut_after: 2}]}}\nmodels:\n  cut: {targets: [{provider: m}]}\n";
    let gateway = TestGateway::start(config).await;
    let response = gateway.chat(&json!({"model": "cut", "stream": true, "messages": [{"role": "user", "content": "a b c d"}]})).await;
    let events = SseReader::new(response).all().await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(events[2].contains("\"error\""));
}

#[tokio::test]
async fn a_stalled_stream_ends_at_the_idle_timeout() {
    // The first content comes within the first-byte timeout (2 s), the next event later
    // than the idle timeout (1 s) allows.
    let (_upstream, gateway) = gateway_for(|_| Behavior::Events {
        data: upstream::chunks("m", &["slow"], false),
        interval: Duration::from_millis(1500),
        done: true,
    })
    .await;
    let response = gateway.chat(&json!({"model": "gpt-test", "stream": true, "messages": [{"role": "user", "content": "x"}]})).await;
    let events = SseReader::new(response).all().await;
    assert_eq!(events.len(), 3, "{events:?}");
    let last: Value = serde_json::from_str(&events[2]).unwrap();
    assert_eq!(last["error"]["code"], "upstream_timeout");
}

#[tokio::test]
async fn mock_status_faults_look_like_upstream_errors() {
    let config = "providers:\n  m: {kind: mock, mock: {faults: [{status: 529}]}}\nmodels:\n  flaky: {targets: [{provider: m}]}\n";
    let gateway = TestGateway::start(config).await;
    let error = error_of(gateway.chat(&hello("flaky")).await, 529).await;
    assert_eq!(error["message"], "mock fault: injected HTTP 529");
}
