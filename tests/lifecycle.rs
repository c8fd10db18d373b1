//! The gateway's life: client disconnects, graceful shutdown, hot reload (file changes
//! and SIGHUP), and the command line.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::process::Command;
use std::time::Duration;

use common::process::GatewayProcess;
use common::upstream::{self, Behavior, Upstream};
use common::{Logs, SseReader, TestGateway, config_for, content_of, eventually, hang_guard};
use serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_switchyard");

fn ask(model: &str, text: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]})
}

/// `count` words: a mock answer that streams one word per chunk.
fn words(count: usize) -> String {
    (0..count)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn a_client_disconnect_drops_the_upstream_stream_and_logs_499() {
    let (logs, _guard) = Logs::capture();
    // 100 chunks 50 ms apart: a gateway that kept reading would get the stream whole.
    let mut upstream = Upstream::start(|_| Behavior::Events {
        data: upstream::chunks("m", &["tick "; 100], true),
        interval: Duration::from_millis(50),
        done: true,
    })
    .await;
    let gateway = TestGateway::start(&config_for(&upstream.base_url)).await;
    let response = gateway.chat(&ask("gpt-test", "go", true)).await;
    let id = common::request_id(&response);
    let mut reader = SseReader::new(response);
    for _ in 0..3 {
        reader.next().await.unwrap();
    }
    drop(reader);
    let complete = hang_guard("the upstream stream ends", upstream.stream_ends.recv())
        .await
        .unwrap();
    assert!(
        !complete,
        "the upstream must not have sent the whole stream"
    );

    let line = logs.wait_access(&id).await;
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["usage_source"], "estimated");
    assert!(
        line["completion_tokens"].as_u64().unwrap() >= 1,
        "usage seen so far: {line}"
    );
}

#[tokio::test]
async fn graceful_shutdown_lets_an_in_flight_stream_finish() {
    let gateway = TestGateway::start(&config_for("http://127.0.0.1:9/v1")).await;
    let text = words(25); // 25 chunks, 20 ms apart: about half a second
    let response = gateway.chat(&ask("mock", &text, true)).await;
    let mut reader = SseReader::new(response);
    let first = reader.next().await.unwrap();

    let TestGateway { gateway, url, .. } = gateway;
    let addr = gateway.addr;
    let stopping = tokio::spawn(gateway.shutdown());
    eventually(
        format!("no new connections once shutdown began ({url})"),
        async || tokio::net::TcpStream::connect(addr).await.err(),
    )
    .await;

    let mut events = vec![first];
    while let Some(event) = reader.next().await {
        events.push(event);
    }
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert_eq!(content_of(&events), text);
    hang_guard("the shutdown", stopping).await.unwrap();
}

fn with_models(base: &str, extra_model: &str) -> String {
    format!("{base}  {extra_model}:\n    targets: [{{provider: mock}}]\n")
}

async fn metric(gateway: &TestGateway, line_start: &str) -> Option<f64> {
    let text = gateway.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn model_ids(gateway: &TestGateway) -> Vec<String> {
    let body: Value = gateway.get("/v1/models").await.json().await.unwrap();
    body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_broken_reload_keeps_the_old_config_and_a_good_one_takes_effect() {
    let base = config_for("http://127.0.0.1:9/v1");
    let gateway = TestGateway::start(&base).await;

    gateway.replace_config("models:\n  broken: {targets: [{provider: nowhere}]}\n");
    let failures = "switchyard_config_reloads_total{result=\"failure\"}";
    eventually("the failed reload", async || {
        (metric(&gateway, failures).await == Some(1.0)).then_some(())
    })
    .await;
    assert_eq!(
        model_ids(&gateway).await,
        ["gpt-test", "embed-test", "mock"]
    );
    assert_eq!(
        gateway
            .chat(&ask("mock", "still here", false))
            .await
            .status(),
        200
    );

    // A good config after a broken one: the new model appears.
    let in_flight = gateway.chat(&ask("mock", &words(20), true)).await;
    gateway.replace_config(&with_models(&base, "mock-two"));
    eventually("the new model", async || {
        let ids = model_ids(&gateway).await;
        ids.contains(&"mock-two".to_owned()).then_some(())
    })
    .await;
    assert_eq!(
        gateway.chat(&ask("mock-two", "new", false)).await.status(),
        200
    );
    // The stream that started before the reload finishes on its own config.
    let events = SseReader::new(in_flight).all().await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert_eq!(content_of(&events), words(20));
}

#[tokio::test]
async fn sighup_reloads_and_sigterm_drains_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    let base = format!(
        "server: {{shutdown_grace: 10s}}\nproviders:\n  mock: {{kind: mock, mock: {{chunk_interval: 20ms}}}}\nmodels:\n  mock:\n    targets: [{{provider: mock}}]\n{}",
        common::auth_section("")
    );
    std::fs::write(&config, base).unwrap();
    let mut process = GatewayProcess::start(&config);
    let client = common::client();

    process.signal("HUP");
    let reloads = "switchyard_config_reloads_total{result=\"success\"}";
    eventually("SIGHUP reloads the config", async || {
        (process.metric(reloads).await == Some(1.0)).then_some(())
    })
    .await;

    // SIGTERM with a stream in flight: it finishes, then the process exits cleanly.
    let text = words(25);
    let response = client
        .post(format!("{}/v1/chat/completions", process.url))
        .bearer_auth(common::TEST_KEY)
        .json(&ask("mock", &text, true))
        .send()
        .await
        .unwrap();
    let mut reader = SseReader::new(response);
    let mut events = vec![reader.next().await.unwrap()];
    process.signal("TERM");
    while let Some(event) = reader.next().await {
        events.push(event);
    }
    assert_eq!(content_of(&events), text);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let status = tokio::task::spawn_blocking(move || process.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn check_config_lists_every_error_with_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "providers:\n  p: {kind: openai, base_url: 'not a url'}\n  m: {kind: mock, mock: {faults: [{probability: 2, hang: true}]}}\nmodels:\n  x: {targets: [{provider: ghost}]}\n",
    )
    .unwrap();
    let output = Command::new(BINARY)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let errors = String::from_utf8(output.stderr).unwrap();
    assert!(errors.contains("bad.yaml: 3 errors"), "{errors}");
    for path in [
        "providers.p.base_url",
        "providers.m.mock.faults[0].probability",
        "models.x.targets[0].provider",
    ] {
        assert!(errors.contains(path), "{path} missing from:\n{errors}");
    }

    let syntax = dir.path().join("syntax.yaml");
    std::fs::write(&syntax, "server:\n  listen: 127.0.0.1:1\n  colour: blue\n").unwrap();
    let output = Command::new(BINARY)
        .args(["check-config", "--config"])
        .arg(&syntax)
        .output()
        .unwrap();
    let errors = String::from_utf8(output.stderr).unwrap();
    assert!(
        errors.contains("syntax.yaml:3:3: server.colour: unknown field `colour`"),
        "{errors}"
    );

    let output = Command::new(BINARY)
        .arg("check-config")
        .env("SWITCHYARD_CONFIG", "config/switchyard.yaml")
        .env_remove("OPENAI_API_KEY")
        .output()
        .unwrap();
    assert!(output.status.success());
    let summary = String::from_utf8(output.stdout).unwrap();
    assert!(
        summary.starts_with("config/switchyard.yaml: OK"),
        "{summary}"
    );
    assert!(
        summary.contains("(unusable: has an empty api_key)"),
        "{summary}"
    );
    assert!(summary.contains("mock/mock"), "{summary}");
}

#[test]
fn version_is_printed() {
    let output = Command::new(BINARY).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8(output.stdout).unwrap().trim(),
        format!("switchyard {}", env!("CARGO_PKG_VERSION"))
    );
}
