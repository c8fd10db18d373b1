//! The stock OpenAI Python SDK against the gateway: chat (streamed and not), models,
//! embeddings and errors, through both the built-in mock and an OpenAI-compatible upstream.
//!
//! Needs a Python with the `openai` package (tests/sdk/requirements.txt): the one named by
//! `SWITCHYARD_TEST_PYTHON`, else `python3`. `.ci/run` installs it.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::process::Command;

use common::upstream::{self, Behavior, Upstream};
use common::{TestGateway, config_for};

fn python() -> String {
    std::env::var("SWITCHYARD_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

async fn run_sdk(gateway: &TestGateway, chat_model: &str, embedding_model: &str) {
    let base_url = format!("{}/v1", gateway.url);
    let (chat_model, embedding_model) = (chat_model.to_owned(), embedding_model.to_owned());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg("tests/sdk/openai_sdk_check.py")
            .args([&base_url, &chat_model, &embedding_model])
            .output()
    })
    .await
    .unwrap()
    .expect("python runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named 'openai'"),
        "the OpenAI SDK is missing: pip install -r tests/sdk/requirements.txt (or set SWITCHYARD_TEST_PYTHON)"
    );
    assert!(output.status.success(), "SDK check failed:\n{stderr}");
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_works_unchanged_against_the_mock() {
    let gateway = TestGateway::start(&config_for("http://127.0.0.1:9/v1")).await;
    run_sdk(&gateway, "mock", "mock").await;
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
    run_sdk(&gateway, "gpt-test", "embed-test").await;
}
