//! The translating providers end to end: the stock OpenAI SDK through the Anthropic and
//! Gemini emulators (and its pydantic-built tool and response schemas through Gemini's),
//! streams relayed without buffering, one public model served by targets on different
//! providers, and a provider's own retry delay reaching the resilience layer.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::native::{self, Gate};
use common::upstream::{self, Behavior, Upstream};
use common::{SseReader, TestGateway};
use http::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpListener;

fn config(anthropic: &str, gemini: &str) -> String {
    format!(
        r#"
providers:
  claude: {{kind: anthropic, base_url: "{anthropic}", api_key: sk-ant-test}}
  google: {{kind: gemini, base_url: "{gemini}", api_key: goog-test}}
  mock: {{kind: mock}}
models:
  claude-test: {{targets: [{{provider: claude, model: claude-upstream}}]}}
  gemini-test: {{targets: [{{provider: google, model: gemini-upstream}}]}}
  gemini-embed: {{targets: [{{provider: google, model: text-embedding-004}}]}}
  mock: {{targets: [{{provider: mock}}]}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_works_through_anthropic_and_gemini() {
    let gateway = TestGateway::start(&config(
        &native::anthropic(Gate::default()).await,
        &native::gemini().await,
    ))
    .await;
    common::sdk::openai_sdk_check(&gateway, "claude-test", "mock").await;
    common::sdk::openai_sdk_check(&gateway, "gemini-test", "gemini-embed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdks_pydantic_tools_and_response_formats_work_through_gemini() {
    // The emulator refuses, as Gemini does, any schema key outside Gemini's subset.
    let gateway = TestGateway::start(&config("http://127.0.0.1:9", &native::gemini().await)).await;
    common::sdk::openai_sdk_schemas_check(&gateway, "gemini-test").await;
}

#[tokio::test]
async fn a_translated_chunk_reaches_the_client_before_the_provider_sends_the_next() {
    let gate = Gate::closed();
    let gateway = TestGateway::start(&config(
        &native::anthropic(gate.clone()).await,
        "http://127.0.0.1:9",
    ))
    .await;
    let request = json!({"model": "claude-test", "stream": true, "messages": [{"role": "user", "content": "first then the rest"}]});
    let mut reader = SseReader::new(gateway.chat(&request).await);
    // The emulator holds everything after the first text delta until the gate opens: the
    // client must see that delta first, or the gateway is buffering.
    let relayed = "the first content chunk, relayed while the provider waits";
    let first_content = common::hang_guard(relayed, async {
        loop {
            let event: Value = serde_json::from_str(&reader.next().await.unwrap()).unwrap();
            if let Some(text) = event["choices"][0]["delta"]["content"]
                .as_str()
                .filter(|t| !t.is_empty())
            {
                return text.to_owned();
            }
        }
    })
    .await;
    assert_eq!(first_content, "first ");
    gate.open();
    let rest = reader.all().await;
    assert_eq!(rest.last().unwrap(), "[DONE]");
    assert_eq!(common::content_of(&rest), "then the rest");
}

#[tokio::test]
async fn one_public_model_can_be_served_by_different_providers() {
    let anthropic = native::anthropic(Gate::default()).await;
    let openai =
        Upstream::start(|_| Behavior::Json(upstream::completion("gpt-upstream", "from openai")))
            .await;
    let config = format!(
        "providers:\n  claude: {{kind: anthropic, base_url: \"{anthropic}\", api_key: k}}\n  oai: {{kind: openai, base_url: \"{}\", api_key: k}}\nmodels:\n  smart:\n    targets:\n      - {{provider: claude, model: claude-upstream, weight: 1}}\n      - {{provider: oai, model: gpt-upstream, weight: 1}}\n",
        openai.base_url
    );
    let gateway = TestGateway::start(&config).await;
    let models: Value = gateway.get("/v1/models").await.json().await.unwrap();
    assert_eq!(models["data"][0]["id"], "smart");
    let mut served = std::collections::HashSet::new();
    for _ in 0..40 {
        let body: Value = gateway
            .chat(&json!({"model": "smart", "messages": [{"role": "user", "content": "who answers"}]}))
            .await
            .json()
            .await
            .unwrap();
        served.insert(body["model"].as_str().unwrap().to_owned());
    }
    // Weighted 1:1, 40 requests: both answer (the chance of one never being picked is 2^-39).
    assert_eq!(served.len(), 2, "{served:?}");
}

#[tokio::test]
async fn parameters_a_provider_cannot_express_are_rejected_or_dropped_by_policy() {
    let anthropic = native::anthropic(Gate::default()).await;
    let config = format!(
        "providers:\n  strict: {{kind: anthropic, base_url: \"{anthropic}\", api_key: k}}\n  lenient: {{kind: anthropic, base_url: \"{anthropic}\", api_key: k, unsupported_params: drop}}\nmodels:\n  strict: {{targets: [{{provider: strict}}]}}\n  lenient: {{targets: [{{provider: lenient}}]}}\n"
    );
    let gateway = TestGateway::start(&config).await;
    let ask = |model: &str, extra: Value| {
        let mut body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let response = gateway
        .chat(&ask("strict", json!({"logit_bias": {"50256": -100}})))
        .await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["param"], "logit_bias");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("'strict' (anthropic)"), "{message}");

    let response = gateway
        .chat(&ask(
            "lenient",
            json!({"logit_bias": {"50256": -100}, "seed": 7}),
        ))
        .await;
    assert_eq!(response.status(), 200);

    // Out of Anthropic's range: never silently clamped.
    let response = gateway
        .chat(&ask("lenient", json!({"temperature": 1.5})))
        .await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["param"], "temperature");
}

/// Requests received per upstream model.
type Counts = Arc<Mutex<HashMap<String, usize>>>;

/// A Gemini upstream whose model `busy` answers its first request with a 429 whose only
/// delay is `RetryInfo.retryDelay: "31s"` in the body (no `retry-after` header), and every
/// other request with a text answer naming the model; returns its base URL (`…/v1beta`).
async fn gemini_busy_once(counts: Counts) -> String {
    async fn call(State(counts): State<Counts>, Path(call): Path<String>) -> Response {
        let model = call.split(':').next().unwrap_or_default().to_owned();
        let seen = {
            let mut counts = counts.lock().unwrap();
            let count = counts.entry(model.clone()).or_default();
            *count += 1;
            *count
        };
        if model == "busy" && seen == 1 {
            let body = json!({"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED", "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "31s"}]}});
            let headers = [("content-type", "application/json")];
            return (StatusCode::TOO_MANY_REQUESTS, headers, body.to_string()).into_response();
        }
        let answer = json!({
            "candidates": [{"content": {"parts": [{"text": format!("from {model}")}], "role": "model"}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5},
            "modelVersion": model, "responseId": "resp-busy-once"
        });
        ([("content-type", "application/json")], answer.to_string()).into_response()
    }
    let app = Router::new()
        .route("/v1beta/models/{call}", post(call))
        .with_state(counts);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1beta")
}

#[tokio::test]
async fn a_gemini_retry_delay_longer_than_the_longest_backoff_sends_the_request_to_the_fallback() {
    let counts = Counts::default();
    let base_url = gemini_busy_once(counts.clone()).await;
    // The resilience layer skips a Retry-After longer than backoff.max when a fallback can
    // answer at once. Without the body's delay the 429 would be retried on `busy` after a
    // backoff of at most 1s, and `busy` would answer the retry.
    let config = format!(
        "providers:\n  google: {{kind: gemini, base_url: \"{base_url}\", api_key: k}}\nmodels:\n  primary: {{targets: [{{provider: google, model: busy}}], fallbacks: [backup]}}\n  backup: {{targets: [{{provider: google, model: spare}}]}}\nresilience:\n  max_attempts: 3\n  backoff: {{base: 10ms, max: 1s}}\n"
    );
    let gateway = TestGateway::start(&config).await;
    let response = gateway
        .chat(&json!({"model": "primary", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(response.status(), 200);
    let target = response.headers()["x-switchyard-target"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(target, "google/spare");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "from spare");
    let counts = counts.lock().unwrap().clone();
    assert_eq!(
        counts.get("busy"),
        Some(&1),
        "busy is not retried: {counts:?}"
    );
}
