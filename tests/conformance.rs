//! The translation conformance suite: every case in `tests/fixtures/<provider>/` run
//! through a real gateway against a replay server standing in for the provider. The format
//! and matching rules are in `tests/fixtures/README.md`; the translation rules in
//! `docs/providers.md`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use common::{SseReader, TestGateway};
use serde_json::Value;
use tokio::net::TcpListener;

/// Every case of the README's table; the mock only has the ones it can express.
const ALL_CASES: &[&str] = &[
    "plain_text",
    "plain_text_stream",
    "multi_turn_system",
    "image_input",
    "tool_call",
    "tool_call_stream",
    "parallel_tool_calls",
    "parallel_tool_calls_stream",
    "tool_result_round_trip",
    "json_schema",
    "strict_tool_schema",
    "stop_sequence",
    "length_cutoff",
    "content_filter",
    "cached_tokens_usage",
    "reasoning",
    "reasoning_stream",
    "mid_stream_error",
    "stream_without_terminal_event",
    "malformed_event",
    "rate_limited",
    "server_error",
];
/// Cases only Gemini has, for what only its wire carries.
const GEMINI_CASES: &[&str] = &[
    "rate_limited_retry_info",
    "strict_json_schema",
    "recursive_tool_schema",
    "thought_signature",
    "thought_signature_stream",
    "thought_signature_round_trip",
];
const MOCK_CASES: &[&str] = &[
    "plain_text",
    "plain_text_stream",
    "multi_turn_system",
    "length_cutoff",
];

#[tokio::test]
async fn openai() {
    suite("openai", "openai", "/v1", ALL_CASES).await;
}

#[tokio::test]
async fn azure() {
    suite("azure", "azure", "", ALL_CASES).await;
}

#[tokio::test]
async fn anthropic() {
    suite("anthropic", "anthropic", "/v1", ALL_CASES).await;
}

#[tokio::test]
async fn gemini() {
    suite(
        "gemini",
        "gemini",
        "/v1beta",
        &[ALL_CASES, GEMINI_CASES].concat(),
    )
    .await;
}

#[tokio::test]
async fn mock() {
    suite("mock", "mock", "", MOCK_CASES).await;
}

/// What the replay server must answer, and what it received.
#[derive(Default)]
struct Replay {
    case: Option<(Value, PathBuf)>,
    received: Option<Received>,
}

struct Received {
    method: String,
    path: String,
    headers: http::HeaderMap,
    body: Value,
}

type Shared = Arc<Mutex<Replay>>;

async fn suite(dir: &str, kind: &str, base_path: &str, cases: &[&str]) {
    let replay: Shared = Arc::default();
    let addr = start_replay(replay.clone()).await;
    let provider = if kind == "mock" {
        "    kind: mock\n".to_owned()
    } else {
        format!(
            "    kind: {kind}\n    base_url: http://{addr}{base_path}\n    api_key: test-key\n    timeouts: {{connect: 1s, request: 5s, stream_idle: 2s}}\n"
        )
    };
    // One attempt, and a breaker that never opens: the cases check how each answer (errors
    // included) is translated, not how the gateway survives them (tests/retries.rs,
    // tests/fallbacks.rs, ...), and a run of error cases must not open the circuit on the
    // cases after them.
    let config = format!(
        "providers:\n  under-test:\n{provider}models:\n  test-model:\n    targets: [{{provider: under-test, model: upstream-model}}]\nresilience: {{max_attempts: 1, breaker: {{consecutive_failures: 1000, min_requests: 1000}}}}\n"
    );
    let gateway = TestGateway::start(&config).await;
    let fixtures = Path::new("tests/fixtures").join(dir);
    let mut failures = Vec::new();
    for case in cases {
        let path = fixtures.join(format!("{case}.json"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            failures.push(format!("{case}: missing fixture {}", path.display()));
            continue;
        };
        let fixture: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        *replay.lock().unwrap() = Replay {
            case: Some((fixture.clone(), fixtures.clone())),
            received: None,
        };
        let mut diffs = Vec::new();
        run_case(&gateway, &fixture, &replay, &mut diffs).await;
        failures.extend(diffs.into_iter().map(|d| format!("{case}: {d}")));
    }
    assert!(
        failures.is_empty(),
        "{} conformance failures for {dir}:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

async fn run_case(
    gateway: &TestGateway,
    fixture: &Value,
    replay: &Shared,
    diffs: &mut Vec<String>,
) {
    let response = gateway.chat(&fixture["request"]).await;
    let expect = &fixture["expect"];
    let status = response.status().as_u16();
    if Some(u64::from(status)) != expect["status"].as_u64() {
        diffs.push(format!("status {status}, expected {}", expect["status"]));
    }
    if let Some(headers) = expect["headers"].as_object() {
        for (name, value) in headers {
            let actual = response.headers().get(name).and_then(|v| v.to_str().ok());
            if actual != value.as_str() {
                diffs.push(format!("header {name}: {actual:?}, expected {value}"));
            }
        }
    }
    let streamed = expect.get("chunks").is_some();
    if status >= 400 {
        let body: Value = response.json().await.unwrap_or_default();
        subset(&expect["error"], &body["error"], "error", diffs);
    } else if streamed {
        check_stream(SseReader::new(response).all().await, expect, diffs);
    } else {
        let body: Value = response.json().await.unwrap_or_default();
        matches(&expect["body"], &body, "body", diffs);
    }
    let received = replay.lock().unwrap().received.take();
    match fixture.get("upstream") {
        Some(upstream) => check_upstream(upstream, received, diffs),
        None if received.is_some() => diffs.push("the provider received a request".into()),
        None => {}
    }
}

fn check_stream(events: Vec<String>, expect: &Value, diffs: &mut Vec<String>) {
    let done = events.last().is_some_and(|e| e == "[DONE]");
    let parsed: Vec<Value> = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap_or(Value::String(e.clone())))
        .collect();
    let ends_with_error = expect["end"] == "error";
    let (body, last) = match (ends_with_error, parsed.split_last()) {
        (true, Some((last, body))) => (body, Some(last)),
        _ => (&parsed[..], None),
    };
    if done == ends_with_error {
        diffs.push(format!(
            "stream end: [DONE] {}, expected end {}",
            if done { "sent" } else { "missing" },
            expect["end"]
        ));
    }
    let expected = expect["chunks"].as_array().cloned().unwrap_or_default();
    if body.len() != expected.len() {
        diffs.push(format!(
            "{} chunks, expected {}:\n    got {}",
            body.len(),
            expected.len(),
            serde_json::to_string(body).unwrap()
        ));
        return;
    }
    for (i, (want, got)) in expected.iter().zip(body).enumerate() {
        // The cost the gateway adds to the usage it was asked for is the gateway's, not the
        // adapter's (tests/metrics.rs).
        let mut got = got.clone();
        if let Some(usage) = got.get_mut("usage").and_then(Value::as_object_mut) {
            usage.remove("switchyard");
        }
        matches(want, &got, &format!("chunks[{i}]"), diffs);
    }
    if let Some(last) = last {
        subset(&expect["error"], &last["error"], "error event", diffs);
    }
}

fn check_upstream(upstream: &Value, received: Option<Received>, diffs: &mut Vec<String>) {
    let Some(received) = received else {
        diffs.push("the provider received no request".into());
        return;
    };
    if upstream["method"].as_str() != Some(received.method.as_str()) {
        diffs.push(format!(
            "upstream method {}, expected {}",
            received.method, upstream["method"]
        ));
    }
    if upstream["path"].as_str() != Some(received.path.as_str()) {
        diffs.push(format!(
            "upstream path {}, expected {}",
            received.path, upstream["path"]
        ));
    }
    for (name, value) in upstream["headers"].as_object().into_iter().flatten() {
        let actual = received.headers.get(name).and_then(|v| v.to_str().ok());
        if actual != value.as_str() {
            diffs.push(format!(
                "upstream header {name}: {actual:?}, expected {value}"
            ));
        }
    }
    for name in upstream["absent_headers"].as_array().into_iter().flatten() {
        if received
            .headers
            .contains_key(name.as_str().unwrap_or_default())
        {
            diffs.push(format!("upstream header {name} must be absent"));
        }
    }
    matches(&upstream["body"], &received.body, "upstream body", diffs);
}

/// Exact JSON equality, with "$any" matching anything and numbers compared by value.
fn matches(expected: &Value, actual: &Value, path: &str, diffs: &mut Vec<String>) {
    match (expected, actual) {
        (Value::String(any), _) if any == "$any" => {}
        (Value::Object(want), Value::Object(got)) => {
            for (key, value) in want {
                match got.get(key) {
                    Some(actual) => matches(value, actual, &format!("{path}.{key}"), diffs),
                    None => diffs.push(format!("{path}.{key} missing (expected {value})")),
                }
            }
            for key in got.keys().filter(|k| !want.contains_key(*k)) {
                diffs.push(format!("{path}.{key} unexpected ({})", got[key]));
            }
        }
        (Value::Array(want), Value::Array(got)) if want.len() == got.len() => {
            for (i, (w, g)) in want.iter().zip(got).enumerate() {
                matches(w, g, &format!("{path}[{i}]"), diffs);
            }
        }
        (Value::Number(want), Value::Number(got)) if want.as_f64() == got.as_f64() => {}
        _ if expected == actual => {}
        _ => diffs.push(format!("{path}: {actual}, expected {expected}")),
    }
}

/// Every key of `expected` matches in `actual`; other keys are not checked.
fn subset(expected: &Value, actual: &Value, path: &str, diffs: &mut Vec<String>) {
    for (key, value) in expected.as_object().into_iter().flatten() {
        matches(value, &actual[key], &format!("{path}.{key}"), diffs);
    }
}

async fn start_replay(replay: Shared) -> std::net::SocketAddr {
    let app = Router::new().fallback(answer).with_state(replay);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn answer(State(replay): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let mut replay = replay.lock().unwrap();
    replay.received = Some(Received {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(ToString::to_string)
            .unwrap_or_default(),
        headers: parts.headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    });
    let (fixture, dir) = replay.case.clone().expect("a case is loaded");
    let upstream = &fixture["upstream"];
    let mut response =
        Response::builder().status(upstream["status"].as_u64().unwrap_or(200) as u16);
    for (name, value) in upstream["response_headers"]
        .as_object()
        .into_iter()
        .flatten()
    {
        response = response.header(name, value.as_str().unwrap_or_default());
    }
    let body = match upstream["response_sse"].as_str() {
        Some(file) => std::fs::read(dir.join(file)).unwrap(),
        None => serde_json::to_vec(&upstream["response_body"]).unwrap(),
    };
    response.body(Body::from(body)).unwrap()
}
