//! Resilience through real sockets: retries (Retry-After, backoff, the retry budget),
//! fallbacks (ordinary and for context length), timeouts (first byte / first token, stream
//! idle, the request total), streams that commit at their first content chunk, circuit
//! breakers (with `/admin/breakers` and the metric), and billing of the attempt that
//! succeeded only.
//!
//! One emulated OpenAI upstream usually plays every provider: its script answers by the
//! upstream model name the gateway sends (`a` is the primary's target, `b` the fallback's,
//! and so on), so a test can count what each target received.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::upstream::{self, Behavior, Received, Upstream};
use common::{Logs, SseReader, TEST_KEY, TestGateway, UPSTREAM_KEY, content_of};
use futures_util::StreamExt;
use serde_json::{Value, json};
use switchyard::auth::{hash_key, hex};

const ADMIN_KEY: &str = "sk-sy-admin-resilience-0123456789";

/// Provider timeouts short enough for tests, loose enough for a debug build.
const TIMEOUTS: &str = "connect: 1s, first_byte: 1s, stream_idle: 1s";
/// Quick retries: tests measure behaviour, not patience.
const QUICK: &str = "max_attempts: 3\n  backoff: {base: 10ms, max: 50ms}";

// ---- configs

/// An OpenAI-compatible provider `name` at `base_url`.
fn provider(name: &str, base_url: &str, timeouts: &str) -> String {
    format!(
        "  {name}:\n    kind: openai\n    base_url: {base_url}\n    api_key: {UPSTREAM_KEY}\n    timeouts: {{{timeouts}}}\n"
    )
}

/// `providers`, `models` (YAML lines under `models:`) and `resilience` (lines under
/// `resilience:`), plus the admin API on the public listener.
fn config(providers: &str, models: &str, resilience: &str) -> String {
    format!(
        "providers:\n{providers}models:\n{models}\nresilience:\n  {resilience}\nadmin:\n  key_sha256: {}\n  on_public_listener: true\n",
        hex(&hash_key(ADMIN_KEY))
    )
}

/// One provider `up` at `upstream` with the test timeouts.
fn config_up(upstream: &Upstream, models: &str, resilience: &str) -> String {
    config(
        &provider("up", &upstream.base_url, TIMEOUTS),
        models,
        resilience,
    )
}

/// Like [`config_up`], with `timeouts` for the provider.
fn config_timeouts(upstream: &Upstream, timeouts: &str, models: &str, resilience: &str) -> String {
    config(
        &provider("up", &upstream.base_url, timeouts),
        models,
        resilience,
    )
}

/// `primary` served by `up/a` alone, without fallbacks.
const ONLY_A: &str = "  primary: {targets: [{provider: up, model: a}]}\n";

/// `primary` served by `up/a` with `fallbacks: [backup]`, `backup` by `up/b`.
const PRIMARY_WITH_BACKUP: &str = "  primary: {targets: [{provider: up, model: a}], fallbacks: [backup]}\n  backup: {targets: [{provider: up, model: b}]}\n";

// ---- the upstream's answers

/// An upstream whose model `a` answers as `primary` says, every other model well.
async fn primary_fails(
    primary: impl Fn(&Received) -> Behavior + Send + Sync + 'static,
) -> Upstream {
    Upstream::start(move |r: &Received| {
        if model_of(r) == "a" {
            primary(r)
        } else {
            ok(r)
        }
    })
    .await
}

fn model_of(request: &Received) -> String {
    request.body["model"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn streaming(request: &Received) -> bool {
    request.body["stream"] == json!(true)
}

/// A good answer from the model the request names, JSON or SSE as asked; the content
/// names the upstream model, so the client can tell who answered.
fn ok(request: &Received) -> Behavior {
    let model = model_of(request);
    if streaming(request) {
        Behavior::Events {
            data: upstream::chunks(
                &model,
                &["answer ", "from ", &model],
                upstream::wants_usage(request),
            ),
            interval: Duration::from_millis(2),
            done: true,
        }
    } else {
        Behavior::Json(upstream::completion(
            &model,
            &format!("answer from {model}"),
        ))
    }
}

fn error(status: u16, headers: Vec<(&'static str, String)>, kind: &str, code: &str) -> Behavior {
    Behavior::Error {
        status,
        headers,
        body: json!({"error": {
            "message": format!("upstream says {code}"),
            "type": kind, "param": null, "code": code
        }})
        .to_string(),
    }
}

fn unavailable() -> Behavior {
    error(503, vec![], "server_error", "service_unavailable")
}

fn rate_limited(headers: Vec<(&'static str, String)>) -> Behavior {
    error(429, headers, "requests", "rate_limit_exceeded")
}

const CONTEXT_LENGTH_BODY: &str = r#"{"error":{"message":"This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens. Please reduce the length of the messages.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;

fn context_length_exceeded() -> Behavior {
    Behavior::Error {
        status: 400,
        headers: vec![],
        body: CONTEXT_LENGTH_BODY.to_owned(),
    }
}

/// Fails the first `n` requests with `failure()`, then answers well.
fn failing_first(
    n: usize,
    failure: impl Fn() -> Behavior + Send + Sync + 'static,
) -> impl Fn(&Received) -> Behavior + Send + Sync + 'static {
    let seen = AtomicUsize::new(0);
    move |request| {
        if seen.fetch_add(1, Ordering::SeqCst) < n {
            failure()
        } else {
            ok(request)
        }
    }
}

// ---- the client's side

fn ask(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello"}]})
}

fn ask_stream(model: &str) -> Value {
    json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hello"}]})
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// `x-switchyard-attempts`, which every response carries.
fn attempts(response: &reqwest::Response) -> usize {
    header(response, "x-switchyard-attempts")
        .unwrap_or_else(|| panic!("no x-switchyard-attempts in {:?}", response.headers()))
        .parse()
        .unwrap()
}

fn target(response: &reqwest::Response) -> Option<String> {
    header(response, "x-switchyard-target")
}

/// Requests the upstream received for one upstream model.
fn count(upstream: &Upstream, model: &str) -> usize {
    upstream
        .received()
        .iter()
        .filter(|r| model_of(r) == model)
        .count()
}

/// The error object of an OpenAI-shaped error response.
async fn error_body(response: reqwest::Response) -> Value {
    let text = response.text().await.unwrap();
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: not JSON: {text}"));
    assert!(body["error"]["message"].is_string(), "{body}");
    body["error"].clone()
}

/// The whole event stream, which must end within `within`.
async fn events_within(response: reqwest::Response, within: Duration) -> Vec<String> {
    tokio::time::timeout(within, SseReader::new(response).all())
        .await
        .unwrap_or_else(|_| panic!("the stream did not end within {within:?}"))
}

/// A stream that ends without `[DONE]`, its last event an OpenAI-shaped error; returns
/// that error.
fn assert_ends_with_error(events: &[String]) -> Value {
    assert!(
        !events.iter().any(|e| e == "[DONE]"),
        "no [DONE] after a failure: {events:?}"
    );
    let last: Value = serde_json::from_str(events.last().expect("some events"))
        .unwrap_or_else(|e| panic!("{e}: last event is not JSON: {events:?}"));
    assert!(
        last["error"]["message"].is_string(),
        "the last event is an error event: {events:?}"
    );
    last["error"].clone()
}

/// A clean stream: chunks only (no error event), then `[DONE]`.
fn assert_clean(events: &[String]) {
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    for event in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(event)
            .unwrap_or_else(|e| panic!("{e}: not a JSON chunk: {events:?}"));
        assert!(chunk.get("error").is_none(), "{events:?}");
        assert_eq!(chunk["object"], "chat.completion.chunk", "{events:?}");
    }
}

async fn admin_get(gateway: &TestGateway, path: &str) -> Value {
    let response = common::client()
        .get(format!("{}{path}", gateway.url))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.unwrap()
}

/// One target's entry in `GET /admin/breakers`.
async fn breaker(gateway: &TestGateway, target: &str) -> Value {
    let list = admin_get(gateway, "/admin/breakers").await;
    list["breakers"]
        .as_array()
        .unwrap_or_else(|| panic!("no breakers list: {list}"))
        .iter()
        .find(|b| b["target"] == target)
        .unwrap_or_else(|| panic!("no breaker for {target}: {list}"))
        .clone()
}

// ---- retries

#[tokio::test]
async fn a_429_with_retry_after_is_retried_after_the_delay() {
    let upstream = Upstream::start(failing_first(1, || {
        rate_limited(vec![("retry-after", "1".to_owned())])
    }))
    .await;
    let gateway = TestGateway::start(&config_up(&upstream, ONLY_A, QUICK)).await;
    let response = gateway.chat(&ask("primary")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(attempts(&response), 2);
    assert_eq!(target(&response).as_deref(), Some("up/a"));
    let at = upstream.received_at();
    assert_eq!(at.len(), 2);
    let gap = at[1] - at[0];
    assert!(
        gap >= Duration::from_millis(900),
        "Retry-After: 1 honoured, waited {gap:?}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "answer from a");
}

#[tokio::test]
async fn a_429_without_retry_after_is_retried_after_a_short_backoff() {
    let upstream = Upstream::start(failing_first(1, || rate_limited(vec![]))).await;
    let gateway = TestGateway::start(&config_up(
        &upstream,
        ONLY_A,
        "max_attempts: 3\n  backoff: {base: 50ms, max: 200ms}",
    ))
    .await;
    let response = gateway.chat(&ask("primary")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(attempts(&response), 2);
    let at = upstream.received_at();
    assert_eq!(at.len(), 2);
    assert!(
        at[1] - at[0] < Duration::from_secs(1),
        "{:?}",
        at[1] - at[0]
    );
}

#[tokio::test]
async fn a_retry_after_beyond_the_deadline_goes_to_the_fallback_at_once() {
    let upstream =
        primary_fails(|_: &Received| rate_limited(vec![("retry-after", "30".to_owned())])).await;
    let models = "  primary:\n    targets: [{provider: up, model: a}]\n    fallbacks: [backup]\n    timeouts: {total: 5s}\n  backup: {targets: [{provider: up, model: b}]}\n";
    let gateway = TestGateway::start(&config_up(&upstream, models, QUICK)).await;
    let started = Instant::now();
    let response = gateway.chat(&ask("primary")).await;
    assert!(started.elapsed() < Duration::from_secs(1), "at once");
    assert_eq!(response.status(), 200);
    assert_eq!(target(&response).as_deref(), Some("up/b"));
    assert_eq!(
        count(&upstream, "a"),
        1,
        "a wait past the deadline is not made"
    );
    assert_eq!(attempts(&response), 2);
}

#[tokio::test]
async fn an_insufficient_quota_429_is_not_retried() {
    let upstream = Upstream::start(|_: &Received| {
        error(429, vec![], "insufficient_quota", "insufficient_quota")
    })
    .await;
    let gateway = TestGateway::start(&config_up(&upstream, ONLY_A, QUICK)).await;
    let response = gateway.chat(&ask("primary")).await;
    assert_eq!(response.status(), 429);
    assert_eq!(attempts(&response), 1);
    assert_eq!(
        header(&response, "x-should-retry").as_deref(),
        Some("false")
    );
    assert_eq!(error_body(response).await["code"], "insufficient_quota");
    assert_eq!(upstream.received().len(), 1);
}

#[tokio::test]
async fn a_500_is_retried() {
    let upstream = Upstream::start(failing_first(1, || {
        error(500, vec![], "server_error", "internal_error")
    }))
    .await;
    let gateway = TestGateway::start(&config_up(&upstream, ONLY_A, QUICK)).await;
    let response = gateway.chat(&ask("primary")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(attempts(&response), 2);
    assert_eq!(upstream.received().len(), 2);
}

#[tokio::test]
async fn a_primary_that_keeps_failing_falls_back() {
    let upstream = primary_fails(|_: &Received| unavailable()).await;
    let gateway = TestGateway::start(&config_up(&upstream, PRIMARY_WITH_BACKUP, QUICK)).await;
    let response = gateway.chat(&ask("primary")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(target(&response).as_deref(), Some("up/b"));
    let primary = count(&upstream, "a");
    assert!(
        (1..=3).contains(&primary),
        "the primary is tried at most max_attempts times: {primary}"
    );
    assert_eq!(count(&upstream, "b"), 1);
    assert_eq!(attempts(&response), primary + 1);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "answer from b");
}

#[tokio::test]
async fn a_connection_reset_before_the_answer_is_retried() {
    let upstream = Upstream::start(failing_first(1, || Behavior::Reset)).await;
    let gateway = TestGateway::start(&config_up(&upstream, ONLY_A, QUICK)).await;
    let response = gateway.chat(&ask("primary")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(attempts(&response), 2);
    assert_eq!(upstream.received().len(), 2);
}

#[tokio::test]
async fn a_reset_is_a_connection_error_when_not_retried() {
    // Shows what `Behavior::Reset` looks like to the gateway: an unreachable upstream.
    let upstream = Upstream::start(|_: &Received| Behavior::Reset).await;
    let gateway = TestGateway::start(&config_up(&upstream, ONLY_A, "max_attempts: 1")).await;
    let response = gateway.chat(&ask("primary")).await;
    assert_eq!(response.status(), 502);
    assert_eq!(attempts(&response), 1);
    let error = error_body(response).await;
    assert_eq!(error["code"], "upstream_unreachable", "{error}");
    assert_eq!(upstream.received().len(), 1);
}

// ---- timeouts

#[tokio::test]
async fn a_silent_upstream_times_out_at_first_byte_and_falls_back_or_fails_at_the_total() {
    let upstream = Upstream::start(|r: &Received| {
        if model_of(r).starts_with("hang") {
            Behavior::Hang
        } else {
            ok(r)
        }
    })
    .await;
    let models = "  primary: {targets: [{provider: up, model: hang}], fallbacks: [backup]}\n  backup: {targets: [{provider: up, model: b}]}\n  alone:\n    targets: [{provider: up, model: hang-alone}]\n    timeouts: {total: 1s}\n";
    let gateway = TestGateway::start(&config_timeouts(
        &upstream,
        "connect: 1s, first_byte: 500ms, stream_idle: 1s",
        models,
        QUICK,
    ))
    .await;

    let started = Instant::now();
    let response = gateway.chat(&ask("primary")).await;
    let took = started.elapsed();
    assert_eq!(response.status(), 200);
    assert_eq!(target(&response).as_deref(), Some("up/b"));
    let tries = count(&upstream, "hang");
    assert!((1..=3).contains(&tries), "{tries}");
    assert!(
        took < Duration::from_millis(500) * 3 + Duration::from_secs(1),
        "first_byte 500ms × 3 attempts + 1 s, took {took:?}"
    );

    // No fallback, 1 s in total: a 504 then, never a hang.
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(5), gateway.chat(&ask("alone")))
        .await
        .expect("an answer, not a hang");
    let took = started.elapsed();
    assert_eq!(response.status(), 504);
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(attempts(&response) >= 1);
    error_body(response).await;
}

#[tokio::test]
async fn a_slow_first_token_falls_back_before_anything_reaches_the_client() {
    let upstream = primary_fails(|_: &Received| {
        // The role chunk at once, the first content only after 2 s.
        let data = upstream::chunks("a", &["too late"], false);
        Behavior::Timed {
            events: vec![
                (Duration::ZERO, data[0].clone()),
                (Duration::from_secs(2), data[1].clone()),
                (Duration::ZERO, data[2].clone()),
            ],
            done: true,
        }
    })
    .await;
    let gateway = TestGateway::start(&config_timeouts(
        &upstream,
        "connect: 1s, first_byte: 500ms, stream_idle: 5s",
        PRIMARY_WITH_BACKUP,
        QUICK,
    ))
    .await;
    let started = Instant::now();
    let response = gateway.chat(&ask_stream("primary")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(target(&response).as_deref(), Some("up/b"));
    let events = events_within(response, Duration::from_secs(5)).await;
    assert_clean(&events);
    assert_eq!(content_of(&events), "answer from b");
    assert!(
        !events.iter().any(|e| e.contains("\"model\":\"a\"")),
        "nothing of the abandoned attempt reaches the client: {events:?}"
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(500) * 3 + Duration::from_secs(1),
        "took {took:?}"
    );
}

// ---- streams after their first content: committed, never retried

#[tokio::test]
async fn a_stream_cut_after_content_ends_with_an_error_event_and_is_not_retried() {
    let upstream = primary_fails(|_: &Received| {
        let data = upstream::chunks("a", &["Hello ", "wor"], false);
        Behavior::Cut {
            data: data[..3].to_vec(),
            interval: Duration::from_millis(5),
        }
    })
    .await;
    let gateway = TestGateway::start(&config_up(&upstream, PRIMARY_WITH_BACKUP, QUICK)).await;
    let response = gateway.chat(&ask_stream("primary")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(target(&response).as_deref(), Some("up/a"));
    assert_eq!(attempts(&response), 1);
    let events = events_within(response, Duration::from_secs(5)).await;
    assert_eq!(content_of(&events), "Hello wor", "{events:?}");
    assert_ends_with_error(&events);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.received().len(), 1, "no retry after the commit");
}

#[tokio::test]
async fn a_stream_that_stalls_after_content_ends_at_the_idle_timeout() {
    let upstream = primary_fails(|_: &Received| {
        let data = upstream::chunks("a", &["Hello ", "wor"], false);
        Behavior::Stall {
            data: data[..3].to_vec(),
            interval: Duration::from_millis(5),
        }
    })
    .await;
    let gateway = TestGateway::start(&config_timeouts(
        &upstream,
        "connect: 1s, first_byte: 1s, stream_idle: 500ms",
        PRIMARY_WITH_BACKUP,
        QUICK,
    ))
    .await;
    let started = Instant::now();
    let response = gateway.chat(&ask_stream("primary")).await;
    assert_eq!(response.status(), 200);
    let events = events_within(response, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert_eq!(content_of(&events), "Hello wor", "{events:?}");
    assert_ends_with_error(&events);
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(upstream.received().len(), 1, "no retry after the commit");
}

#[tokio::test]
async fn malformed_json_before_content_is_retried_invisibly_and_after_content_ends_the_stream() {
    // Before content: the first attempt's first event is not JSON.
    let seen = AtomicUsize::new(0);
    let upstream = Upstream::start(move |r: &Received| {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            let mut data = vec![upstream::MALFORMED_EVENT.to_owned()];
            data.extend(upstream::chunks("a", &["never seen"], false));
            Behavior::Events {
                data,
                interval: Duration::from_millis(2),
                done: true,
            }
        } else {
            ok(r)
        }
    })
    .await;
    let gateway = TestGateway::start(&config_up(&upstream, PRIMARY_WITH_BACKUP, QUICK)).await;
    let response = gateway.chat(&ask_stream("primary")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(attempts(&response), 2);
    let events = events_within(response, Duration::from_secs(5)).await;
    assert_clean(&events);
    assert!(
        content_of(&events).starts_with("answer from "),
        "{events:?}"
    );
    assert_eq!(upstream.received().len(), 2);

    // After content: the stream is the client's, it ends with an error event.
    let upstream = primary_fails(|_: &Received| {
        let data = upstream::chunks("a", &["Hi"], false);
        Behavior::Events {
            data: vec![
                data[0].clone(),
                data[1].clone(),
                upstream::MALFORMED_EVENT.to_owned(),
                data[2].clone(),
            ],
            interval: Duration::from_millis(2),
            done: true,
        }
    })
    .await;
    let gateway = TestGateway::start(&config_up(&upstream, PRIMARY_WITH_BACKUP, QUICK)).await;
    let response = gateway.chat(&ask_stream("primary")).await;
    assert_eq!(response.status(), 200);
    let events = events_within(response, Duration::from_secs(5)).await;
    assert_eq!(content_of(&events), "Hi", "{events:?}");
    assert_ends_with_error(&events);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.received().len(), 1, "no retry after the commit");
}

#[tokio::test]
async fn a_stream_missing_done_after_content_is_not_retried_even_with_fallbacks() {
    // tests/errors.rs checks the error event without resilience configured; here a
    // fallback and retries are available and must not be used after the commit.
    let upstream = primary_fails(|_: &Received| {
        let data = upstream::chunks("a", &["partial ", "answer"], false);
        // Role and content, no finish chunk, no [DONE], a clean end of the body.
        Behavior::Events {
            data: data[..3].to_vec(),
            interval: Duration::from_millis(2),
            done: false,
        }
    })
    .await;
    let gateway = TestGateway::start(&config_up(&upstream, PRIMARY_WITH_BACKUP, QUICK)).await;
    let response = gateway.chat(&ask_stream("primary")).await;
    assert_eq!(response.status(), 200);
    let events = events_within(response, Duration::from_secs(5)).await;
    assert_eq!(content_of(&events), "partial answer", "{events:?}");
    assert_ends_with_error(&events);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(count(&upstream, "a"), 1);
    assert_eq!(count(&upstream, "b"), 0);
}

#[tokio::test]
async fn the_total_deadline_bounds_a_stream_too() {
    // Content every 100 ms for 3 s: never idle, first token at once, but the request
    // outlives the model's `timeouts.total: 1s`.
    let upstream = Upstream::start(|r: &Received| {
        let pieces: Vec<String> = (0..30).map(|i| format!("{i} ")).collect();
        let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
        Behavior::Events {
            data: upstream::chunks(&model_of(r), &pieces, false),
            interval: Duration::from_millis(100),
            done: true,
        }
    })
    .await;
    let models = "  primary: {targets: [{provider: up, model: a}], fallbacks: [backup], timeouts: {total: 1s}}\n  backup: {targets: [{provider: up, model: b}]}\n";
    let gateway = TestGateway::start(&config_up(&upstream, models, QUICK)).await;
    let started = Instant::now();
    let response = gateway.chat(&ask_stream("primary")).await;
    assert_eq!(response.status(), 200);
    let events = events_within(response, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(content_of(&events).starts_with("0 1 "), "{events:?}");
    assert_ends_with_error(&events);
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(upstream.received().len(), 1, "no retry after the commit");
}

// ---- errors that are not retried

#[tokio::test]
async fn a_context_length_400_is_final_unless_a_context_fallback_exists() {
    let upstream = primary_fails(|_: &Received| context_length_exceeded()).await;
    let models = format!(
        "{PRIMARY_WITH_BACKUP}  roomy: {{targets: [{{provider: up, model: a}}], fallbacks: [backup], context_fallbacks: [long]}}\n  long: {{targets: [{{provider: up, model: long}}]}}\n"
    );
    let gateway = TestGateway::start(&config_up(&upstream, &models, QUICK)).await;

    let started = Instant::now();
    let response = gateway.chat(&ask("primary")).await;
    assert_eq!(response.status(), 400);
    assert_eq!(attempts(&response), 1);
    assert_eq!(
        header(&response, "x-should-retry").as_deref(),
        Some("false")
    );
    let error = error_body(response).await;
    assert_eq!(error["code"], "context_length_exceeded");
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["param"], "messages");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("This model's maximum context length is 8192 tokens."),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(count(&upstream, "a"), 1, "exactly one attempt");
    assert_eq!(
        count(&upstream, "b"),
        0,
        "a context error does not go to ordinary fallbacks"
    );

    let response = gateway.chat(&ask("roomy")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(target(&response).as_deref(), Some("up/long"));
    assert_eq!(attempts(&response), 2);
    assert_eq!(count(&upstream, "a"), 2, "one attempt on the primary");
    assert_eq!(count(&upstream, "long"), 1);
    assert_eq!(count(&upstream, "b"), 0);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "answer from long");
}

#[tokio::test]
async fn a_content_filter_400_is_returned_at_once_and_not_sent_to_fallbacks() {
    let upstream =
        primary_fails(|_: &Received| error(400, vec![], "invalid_request_error", "content_filter"))
            .await;
    let gateway = TestGateway::start(&config_up(&upstream, PRIMARY_WITH_BACKUP, QUICK)).await;
    let response = gateway.chat(&ask("primary")).await;
    assert_eq!(response.status(), 400);
    assert_eq!(attempts(&response), 1);
    assert_eq!(
        header(&response, "x-should-retry").as_deref(),
        Some("false")
    );
    let error = error_body(response).await;
    assert_eq!(error["code"], "content_filter");
    assert_eq!(error["message"], "upstream says content_filter");
    assert_eq!(upstream.received().len(), 1);
}

#[tokio::test]
async fn a_fallbacks_own_400_is_what_the_client_gets() {
    let upstream = Upstream::start(|r: &Received| {
        if model_of(r) == "a" {
            unavailable()
        } else {
            error(400, vec![], "invalid_request_error", "invalid_value")
        }
    })
    .await;
    let gateway = TestGateway::start(&config_up(&upstream, PRIMARY_WITH_BACKUP, QUICK)).await;
    let started = Instant::now();
    let response = gateway.chat(&ask("primary")).await;
    assert!(started.elapsed() < Duration::from_secs(1), "promptly");
    assert_eq!(response.status(), 400);
    assert_eq!(
        header(&response, "x-should-retry").as_deref(),
        Some("false")
    );
    assert_eq!(attempts(&response), upstream.received().len());
    let error = error_body(response).await;
    assert_eq!(error["code"], "invalid_value");
    assert_eq!(error["message"], "upstream says invalid_value");
    assert_eq!(count(&upstream, "b"), 1, "the fallback's 400 is final");
}

// ---- circuit breakers

#[tokio::test]
async fn an_outage_trips_the_breaker_traffic_falls_back_and_returns_after_recovery() {
    const OUTAGE: Duration = Duration::from_secs(2);
    const COOLDOWN: Duration = Duration::from_millis(500);
    let outage_end: Arc<OnceLock<Instant>> = Arc::default();
    let end = outage_end.clone();
    let upstream = Upstream::start(move |r: &Received| {
        let down = end.get().is_none_or(|end| Instant::now() < *end);
        if model_of(r) == "a" && down {
            unavailable()
        } else {
            ok(r)
        }
    })
    .await;
    let gateway = TestGateway::start(&config_up(
        &upstream,
        PRIMARY_WITH_BACKUP,
        // max_cooldown = cooldown: one probe per cooldown, however many trips in a row.
        "max_attempts: 3\n  backoff: {base: 10ms, max: 50ms}\n  breaker: {consecutive_failures: 3, cooldown: 500ms, max_cooldown: 500ms}",
    ))
    .await;

    let client = common::client();
    let url = format!("{}/v1/chat/completions", gateway.url);
    let start = Instant::now();
    outage_end.set(start + OUTAGE).unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    // A slow moment delays the next request rather than firing a burst: one every 50 ms.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = Vec::new();
    while start.elapsed() < Duration::from_secs(4) {
        tick.tick().await;
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let response = client
                .post(url)
                .bearer_auth(TEST_KEY)
                .json(&ask("primary"))
                .send()
                .await
                .unwrap();
            (sent, response.status().as_u16(), target(&response))
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }

    let failed: Vec<_> = results.iter().filter(|r| r.1 != 200).collect();
    assert!(failed.is_empty(), "every request is served: {failed:?}");

    let received = upstream.received();
    let during_outage = received
        .iter()
        .zip(upstream.received_at())
        .filter(|(r, at)| model_of(r) == "a" && *at < start + OUTAGE)
        .count();
    let most = 3 + (OUTAGE.as_millis() / COOLDOWN.as_millis()) as usize;
    assert!(
        during_outage <= most,
        "the primary got {during_outage} requests during the outage, at most {most}"
    );

    let recovered_by = start + OUTAGE + COOLDOWN + Duration::from_secs(1);
    let late: Vec<_> = results.iter().filter(|r| r.0 >= recovered_by).collect();
    assert!(!late.is_empty());
    for (sent, _, target) in &late {
        assert_eq!(
            target.as_deref(),
            Some("up/a"),
            "sent {:?} after the outage ended, served by the primary again",
            *sent - (start + OUTAGE)
        );
    }

    let state = breaker(&gateway, "up/a").await;
    assert!(state["trips"].as_u64().unwrap() >= 1, "{state}");
    assert_eq!(state["state"], "closed", "{state}");
}

#[tokio::test]
async fn streams_cut_after_their_first_content_count_against_the_target() {
    let upstream = primary_fails(|_: &Received| {
        let data = upstream::chunks("a", &["Hello ", "wor"], false);
        Behavior::Cut {
            data: data[..3].to_vec(),
            interval: Duration::from_millis(5),
        }
    })
    .await;
    let gateway = TestGateway::start(&config_up(
        &upstream,
        PRIMARY_WITH_BACKUP,
        "max_attempts: 3\n  breaker: {consecutive_failures: 3, cooldown: 10s}",
    ))
    .await;
    for _ in 0..3 {
        let response = gateway.chat(&ask_stream("primary")).await;
        assert_eq!(target(&response).as_deref(), Some("up/a"));
        assert_ends_with_error(&events_within(response, Duration::from_secs(5)).await);
    }
    assert_eq!(breaker(&gateway, "up/a").await["state"], "open");
    let response = gateway.chat(&ask_stream("primary")).await;
    assert_eq!(target(&response).as_deref(), Some("up/b"));
    assert_clean(&events_within(response, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn the_requests_own_deadline_does_not_count_against_the_target() {
    let upstream = primary_fails(|_: &Received| Behavior::Hang).await;
    let models = "  primary: {targets: [{provider: up, model: a}], timeouts: {total: 200ms}}\n";
    let gateway = TestGateway::start(&config_up(
        &upstream,
        models,
        "max_attempts: 3\n  breaker: {consecutive_failures: 2}",
    ))
    .await;
    for _ in 0..4 {
        let response = gateway.chat(&ask("primary")).await;
        assert_eq!(response.status(), 504);
        assert_eq!(error_body(response).await["code"], "deadline_exceeded");
    }
    // The first-byte timeout (1 s) never fired: the target was never seen failing.
    assert_eq!(breaker(&gateway, "up/a").await["state"], "closed");
}

#[tokio::test]
async fn a_fallback_without_a_usable_provider_is_skipped_for_the_next() {
    let upstream = primary_fails(|_: &Received| unavailable()).await;
    let providers = format!(
        "{}  keyless:\n    kind: openai\n    base_url: {}\n    api_key: \"\"\n",
        provider("up", &upstream.base_url, TIMEOUTS),
        upstream.base_url
    );
    let models = "  primary: {targets: [{provider: up, model: a}], fallbacks: [unset, backup]}\n  unset: {targets: [{provider: keyless, model: x}]}\n  backup: {targets: [{provider: up, model: b}]}\n";
    let gateway = TestGateway::start(&config(&providers, models, QUICK)).await;
    let response = gateway.chat(&ask("primary")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(target(&response).as_deref(), Some("up/b"));
    // A model with no usable provider of its own goes to its fallbacks too.
    let models = "  primary: {targets: [{provider: keyless, model: x}], fallbacks: [backup]}\n  backup: {targets: [{provider: up, model: b}]}\n";
    let gateway = TestGateway::start(&config(&providers, models, QUICK)).await;
    let response = gateway.chat(&ask("primary")).await;
    assert_eq!(target(&response).as_deref(), Some("up/b"));
}

/// Polls `/admin/breakers` until `target` is in `state`; how long it took.
async fn until_breaker(
    gateway: &TestGateway,
    target: &str,
    state: &str,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let entry = breaker(gateway, target).await;
        if entry["state"] == state {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "not {state} within {within:?}: {entry}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn health_checks_open_and_close_the_breaker_without_client_traffic() {
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let is_down = down.clone();
    let upstream = Upstream::start(move |r: &Received| {
        if is_down.load(Ordering::SeqCst) {
            unavailable()
        } else {
            ok(r)
        }
    })
    .await;
    let gateway = TestGateway::start(&config(
        &format!(
            "{}    health_check: {{interval: 100ms, timeout: 500ms}}\n",
            provider("up", &upstream.base_url, TIMEOUTS)
        ),
        ONLY_A,
        "breaker: {consecutive_failures: 3, cooldown: 300ms, max_cooldown: 300ms}",
    ))
    .await;
    // Three failed checks in a row open the circuit: no client has sent anything.
    until_breaker(&gateway, "up/a", "open", Duration::from_secs(3)).await;
    let checks = upstream.received();
    assert!(checks.len() >= 3, "{}", checks.len());
    assert_eq!(checks[0].body["max_tokens"], 1, "a one-token check");
    assert_eq!(checks[0].body["model"], "a");
    // While open, checks wait for the probe: one per cooldown, not one per interval.
    tokio::time::sleep(Duration::from_millis(650)).await;
    let while_open = upstream.received().len() - checks.len();
    assert!(
        while_open <= 3,
        "{while_open} checks in 650 ms of a 300 ms cooldown"
    );
    // The target recovers: the next probe (a check) closes the circuit, and clients get it.
    down.store(false, Ordering::SeqCst);
    let took = until_breaker(&gateway, "up/a", "closed", Duration::from_secs(2)).await;
    assert!(
        took < Duration::from_millis(300 + 100 + 500),
        "closed after {took:?}"
    );
    let response = gateway.chat(&ask("primary")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(attempts(&response), 1);
}

#[tokio::test]
async fn an_open_breaker_fails_fast_with_circuit_open() {
    let upstream = Upstream::start(|_: &Received| unavailable()).await;
    let gateway = TestGateway::start(&config_up(
        &upstream,
        ONLY_A,
        "max_attempts: 1\n  breaker: {consecutive_failures: 3, cooldown: 10s, max_cooldown: 10s}",
    ))
    .await;
    for _ in 0..3 {
        let response = gateway.chat(&ask("primary")).await;
        assert_eq!(response.status(), 503);
        assert_eq!(error_body(response).await["code"], "service_unavailable");
    }
    assert_eq!(upstream.received().len(), 3);

    let started = Instant::now();
    let response = gateway.chat(&ask("primary")).await;
    let took = started.elapsed();
    assert_eq!(response.status(), 503);
    let attempts_header = header(&response, "x-switchyard-attempts");
    // Retry-After says when the next probe is due (the 10 s cooldown).
    let retry_after: u64 = header(&response, "retry-after").unwrap().parse().unwrap();
    assert!((8..=10).contains(&retry_after), "retry-after {retry_after}");
    assert_eq!(error_body(response).await["code"], "circuit_open");
    assert!(took < Duration::from_millis(100), "fails fast: {took:?}");
    assert_eq!(upstream.received().len(), 3, "the open target gets nothing");

    let state = breaker(&gateway, "up/a").await;
    assert_eq!(state["state"], "open", "{state}");
    assert!(state["trips"].as_u64().unwrap() >= 1, "{state}");
    assert!(
        state["consecutive_failures"].as_u64().unwrap() >= 3,
        "{state}"
    );
    assert!(state["next_probe_in_ms"].as_u64().unwrap() > 0, "{state}");

    let metrics = gateway.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("switchyard_breaker_state{")
                && l.contains("target=\"up/a\"")
                && l.ends_with(" 2")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("switchyard_upstream_attempts_total")),
        "{metrics}"
    );
    // Every response carries the header, this one too (checked last, so the checks above
    // report first).
    assert!(
        attempts_header.is_some(),
        "x-switchyard-attempts on a circuit_open answer"
    );
}

// ---- billing

#[tokio::test]
async fn only_the_attempt_that_succeeded_is_billed() {
    let (logs, _guard) = Logs::capture();
    let upstream = Upstream::start(|r: &Received| {
        if model_of(r) == "a" && streaming(r) {
            // A usage chunk, then a cut before any content: an attempt that failed, whose
            // usage must not be billed.
            let role = upstream::chunks("a", &[], false)[0].clone();
            let usage = json!({
                "id": "chatcmpl-upstream-2", "object": "chat.completion.chunk",
                "created": 1_700_000_000, "model": "a", "choices": [],
                "usage": {"prompt_tokens": 1000, "completion_tokens": 1000, "total_tokens": 2000}
            });
            Behavior::Cut {
                data: vec![role, usage.to_string()],
                interval: Duration::from_millis(2),
            }
        } else if model_of(r) == "a" {
            unavailable()
        } else if streaming(r) {
            // 9 prompt and 3 completion tokens.
            ok(r)
        } else {
            let mut body = upstream::completion("b", "from the fallback");
            body["usage"] =
                json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15});
            Behavior::Json(body)
        }
    })
    .await;
    // USD per million tokens: the fallback costs 10 × 2 + 5 × 4 = 40 µUSD.
    let models = format!(
        "{PRIMARY_WITH_BACKUP}pricing:\n  models:\n    a: {{input: 1000, output: 1000}}\n    b: {{input: 2, output: 4}}\n"
    );
    let gateway = TestGateway::start(&config_up(&upstream, &models, QUICK)).await;
    let response = gateway.chat(&ask("primary")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(target(&response).as_deref(), Some("up/b"));
    let id = common::request_id(&response);
    response.bytes().await.unwrap();
    assert!(count(&upstream, "a") >= 1);

    let line = logs.wait_access(&id).await;
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["provider"], "up", "{line}");
    assert_eq!(line["upstream_model"], "b", "{line}");
    assert_eq!(line["prompt_tokens"], 10, "{line}");
    assert_eq!(line["completion_tokens"], 5, "{line}");
    let cost = line["cost_usd"].as_f64().unwrap();
    assert!((cost - 40e-6).abs() < 1e-9, "{line}");

    let shown = admin_get(&gateway, "/admin/keys/test").await;
    let total = &shown["usage"]["total"];
    assert_eq!(total["requests"], 1, "{shown}");
    assert_eq!(total["tokens"], 15, "{shown}");
    assert!(
        (total["cost_usd"].as_f64().unwrap() - 40e-6).abs() < 1e-9,
        "{shown}"
    );

    // A stream whose first attempt reported usage before it failed: only the fallback's
    // usage (9 + 3 tokens, 9 × 2 + 3 × 4 = 30 µUSD) is billed.
    let before = count(&upstream, "a");
    let response = gateway.chat(&ask_stream("primary")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(target(&response).as_deref(), Some("up/b"));
    let id = common::request_id(&response);
    let events = events_within(response, Duration::from_secs(5)).await;
    assert_clean(&events);
    assert!(count(&upstream, "a") > before, "the primary was tried");
    let line = logs.wait_access(&id).await;
    assert_eq!(line["upstream_model"], "b", "{line}");
    assert_eq!(line["prompt_tokens"], 9, "{line}");
    assert_eq!(line["completion_tokens"], 3, "{line}");
    assert_eq!(line["usage_source"], "provider", "{line}");
    assert!(
        (line["cost_usd"].as_f64().unwrap() - 30e-6).abs() < 1e-9,
        "{line}"
    );
    let shown = admin_get(&gateway, "/admin/keys/test").await;
    let total = &shown["usage"]["total"];
    assert_eq!(total["requests"], 2, "{shown}");
    assert_eq!(total["tokens"], 15 + 12, "{shown}");
    assert!(
        (total["cost_usd"].as_f64().unwrap() - 70e-6).abs() < 1e-9,
        "{shown}"
    );
}

// ---- under load

#[tokio::test]
async fn random_failures_of_one_of_two_targets_never_reach_clients() {
    let failures = Arc::new(AtomicUsize::new(0));
    let failed = failures.clone();
    let upstream = Upstream::start(move |r: &Received| {
        if model_of(r) == "a" && fastrand::f64() < 0.3 {
            failed.fetch_add(1, Ordering::SeqCst);
            unavailable()
        } else {
            ok(r)
        }
    })
    .await;
    let gateway = TestGateway::start(&config_up(
        &upstream,
        "  pair:\n    targets: [{provider: up, model: a, weight: 1}, {provider: up, model: b, weight: 1}]\n",
        // The budget is not what this test is about: room for every retry 30% need.
        "max_attempts: 3\n  backoff: {base: 1ms, max: 10ms}\n  retry_budget: {ratio: 0.5, min_per_second: 100}",
    ))
    .await;
    let client = common::client();
    let url = format!("{}/v1/chat/completions", gateway.url);
    let statuses: Vec<(u16, String)> = futures_util::stream::iter(0..2000)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let response = client
                    .post(url)
                    .bearer_auth(TEST_KEY)
                    .json(&ask("pair"))
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                (status, response.text().await.unwrap())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let errors: Vec<_> = statuses.iter().filter(|s| s.0 != 200).collect();
    assert!(
        errors.is_empty(),
        "{} client errors, first: {:?}",
        errors.len(),
        errors.first()
    );
    // The failing target was in play (its breaker may open now and then, so how much
    // traffic it got varies) and failed calls that clients never saw.
    let (a, b) = (count(&upstream, "a"), count(&upstream, "b"));
    let failures = failures.load(Ordering::SeqCst);
    assert!(failures > 0 && b > 200, "a {a} ({failures} failed), b {b}");
}

#[tokio::test]
async fn the_retry_budget_caps_retries_in_a_full_outage() {
    let upstream = Upstream::start(|_: &Received| unavailable()).await;
    let gateway = TestGateway::start(&config_up(
        &upstream,
        ONLY_A,
        "max_attempts: 3\n  backoff: {base: 5ms, max: 20ms}\n  retry_budget: {ratio: 0.1, min_per_second: 1}\n  breaker: {consecutive_failures: 1000000, min_requests: 1000000}",
    ))
    .await;
    let client = common::client();
    let url = format!("{}/v1/chat/completions", gateway.url);
    let results: Vec<(u16, Duration)> = futures_util::stream::iter(0..200)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let started = Instant::now();
                let response = client
                    .post(url)
                    .bearer_auth(TEST_KEY)
                    .json(&ask("primary"))
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                response.bytes().await.unwrap();
                (status, started.elapsed())
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for (status, took) in &results {
        assert!((500..600).contains(status), "an error: {status}");
        assert!(*took < Duration::from_secs(1), "promptly: {took:?}");
    }
    let sent = upstream.received().len();
    assert!(sent >= 200, "{sent}");
    assert!(
        sent < 260,
        "retries capped by the budget: {sent} upstream requests for 200"
    );
}

#[tokio::test]
async fn a_client_that_leaves_during_the_retry_wait_cancels_the_retry() {
    let upstream =
        Upstream::start(|_: &Received| rate_limited(vec![("retry-after", "2".to_owned())])).await;
    let gateway = TestGateway::start(&config_up(&upstream, ONLY_A, QUICK)).await;
    let outcome = common::client()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .bearer_auth(TEST_KEY)
        .json(&ask("primary"))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(
        outcome.is_err(),
        "the gateway was waiting for Retry-After, not answering: {outcome:?}"
    );
    let first = upstream.received_at()[0];
    tokio::time::sleep_until((first + Duration::from_secs(3)).into()).await;
    assert_eq!(
        upstream.received().len(),
        1,
        "no retry for a client that went away"
    );
}

// ---- the emulator itself

#[tokio::test]
async fn the_emulators_reset_and_cut_are_transport_errors_unlike_a_clean_end() {
    let upstream = Upstream::start(|r: &Received| {
        let data = upstream::chunks("m", &["x"], false);
        match model_of(r).as_str() {
            "reset" => Behavior::Reset,
            "cut" => Behavior::Cut {
                data,
                interval: Duration::ZERO,
            },
            _ => Behavior::Events {
                data,
                interval: Duration::ZERO,
                done: false,
            },
        }
    })
    .await;
    let send = |model: &str| {
        common::client()
            .post(format!("{}/chat/completions", upstream.base_url))
            .json(&ask_stream(model))
            .send()
    };
    let reset = send("reset").await;
    assert!(reset.is_err(), "no response at all: {reset:?}");
    let cut = send("cut").await.unwrap();
    assert_eq!(cut.status(), 200);
    let body = cut.bytes().await;
    assert!(body.is_err(), "the body is cut: {body:?}");
    let clean = send("clean").await.unwrap().text().await.unwrap();
    assert!(
        clean.contains("\"x\"") && !clean.contains("[DONE]"),
        "{clean}"
    );
}

// ---- strategies

/// A stream from `model` whose first content comes after `delay`.
fn slow_stream(model: &str, delay: Duration) -> Behavior {
    let data = upstream::chunks(model, &["answer ", "from ", model], false);
    Behavior::Timed {
        events: data
            .into_iter()
            .enumerate()
            .map(|(i, event)| (if i == 1 { delay } else { Duration::ZERO }, event))
            .collect(),
        done: true,
    }
}

/// `primary` with targets `up/a` and `up/b` under `strategy`.
fn two_targets(strategy: &str) -> String {
    format!(
        "  primary: {{strategy: {strategy}, targets: [{{provider: up, model: a}}, {{provider: up, model: b}}]}}\n"
    )
}

#[tokio::test]
async fn priority_sends_everything_to_the_first_target_until_it_fails() {
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fail = failing.clone();
    let upstream = Upstream::start(move |r: &Received| {
        if model_of(r) == "a" && fail.load(Ordering::SeqCst) {
            unavailable()
        } else {
            ok(r)
        }
    })
    .await;
    let models = "  primary: {strategy: priority, targets: [{provider: up, model: b, priority: 2}, {provider: up, model: a, priority: 1}]}\n";
    let gateway = TestGateway::start(&config_up(&upstream, models, QUICK)).await;
    for _ in 0..10 {
        let response = gateway.chat(&ask("primary")).await;
        assert_eq!(
            target(&response).as_deref(),
            Some("up/a"),
            "priority 1 first"
        );
    }
    failing.store(true, Ordering::SeqCst);
    let response = gateway.chat(&ask("primary")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        target(&response).as_deref(),
        Some("up/b"),
        "then the next one"
    );
    assert_eq!(attempts(&response), 2);
}

#[tokio::test]
async fn lowest_latency_prefers_the_target_that_answers_first() {
    let upstream = Upstream::start(|r: &Received| {
        let model = model_of(r);
        let delay = if model == "a" { 300 } else { 5 };
        slow_stream(&model, Duration::from_millis(delay))
    })
    .await;
    let gateway =
        TestGateway::start(&config_up(&upstream, &two_targets("lowest_latency"), QUICK)).await;
    let mut served = Vec::new();
    for _ in 0..12 {
        let response = gateway.chat(&ask_stream("primary")).await;
        served.push(target(&response).unwrap_or_default());
        assert_clean(&events_within(response, Duration::from_secs(5)).await);
    }
    // Each target is tried while it has no measurement; after that, the fast one.
    assert!(served[2..].iter().all(|t| t == "up/b"), "{served:?}");
}

#[tokio::test]
async fn least_in_flight_avoids_the_target_that_is_busy() {
    // Streams take 700 ms to start (the first-byte timeout is 1 s); plain answers are
    // immediate.
    let upstream = Upstream::start(|r: &Received| {
        if streaming(r) {
            slow_stream(&model_of(r), Duration::from_millis(700))
        } else {
            ok(r)
        }
    })
    .await;
    let gateway = Arc::new(
        TestGateway::start(&config_up(
            &upstream,
            &two_targets("least_in_flight"),
            QUICK,
        ))
        .await,
    );
    let slow = gateway.clone();
    let busy = tokio::spawn(async move { slow.chat(&ask_stream("primary")).await.status() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let busy_target = format!("up/{}", model_of(&upstream.received()[0]));
    for _ in 0..10 {
        let response = gateway.chat(&ask("primary")).await;
        assert_ne!(
            target(&response).unwrap(),
            busy_target,
            "the other one is idle"
        );
    }
    assert_eq!(busy.await.unwrap(), 200);
}
