//! The stock OpenAI Python SDK against the gateway: chat (streamed and not), models,
//! embeddings and errors, through both the built-in mock and an OpenAI-compatible upstream.
//!
//! (The Anthropic and Gemini routes are checked the same way in `tests/providers.rs`; the
//! runner and its Python are in `tests/common/sdk.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use common::upstream::{self, Behavior, Upstream};
use common::{TestGateway, config_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_works_unchanged_against_the_mock() {
    let gateway = TestGateway::start(&config_for("http://127.0.0.1:9/v1")).await;
    common::sdk::openai_sdk_check(&gateway, "mock", "mock").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_works_unchanged_through_an_openai_upstream() {
    let upstream = Upstream::start(|request| match request.path.as_str() {
        "/v1/embeddings" => {
            let inputs = request.body["input"].as_array().map_or(1, Vec::len);
            Behavior::Json(upstream::embedding("upstream-embed", inputs))
        }
        _ if request.body["messages"].as_array().is_some_and(Vec::is_empty) => Behavior::Error {
            status: 400,
            headers: vec![],
            body: r#"{"error": {"message": "[] is too short - 'messages'", "type": "invalid_request_error", "param": "messages", "code": "empty_array"}}"#.to_owned(),
        },
        _ if request.body["stream"] == true => Behavior::Events {
            data: upstream::chunks("upstream-model", &["quick ", "brown"], upstream::wants_usage(request)),
            interval: std::time::Duration::ZERO,
            done: true,
        },
        _ => Behavior::Json(upstream::completion("upstream-model", "quick brown")),
    })
    .await;
    let gateway = TestGateway::start(&config_for(&upstream.base_url)).await;
    common::sdk::openai_sdk_check(&gateway, "gpt-test", "embed-test").await;
}
