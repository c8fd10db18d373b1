//! Streams and failover through real sockets: before its first content chunk a stream is
//! retried or handed to a fallback without the client seeing any of the failed attempt (a
//! slow first token, malformed JSON with `on_malformed_event: fail`); from its first
//! content on it is the client's and is never retried: when nothing may continue it
//! (`tests/stream_resume.rs` continues it), a cut, a stall past the idle timeout, malformed
//! JSON with `fail`, an end before the finish reason or the model's total deadline ends it
//! with an error event and no `[DONE]`. A malformed event is skipped by default, and a body
//! that ends cleanly after every finish reason is complete without `[DONE]`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::content_of;
use common::scenario::{
    PRIMARY_WITH_BACKUP, Scenario, ScenarioBuilder, ask_stream, assert_clean,
    assert_ends_with_error, cut_after, model_of, ok, primary, sse,
};
use common::upstream::{self, Behavior, Received};
use serde_json::Value;

/// `primary` (`up/a`) with the fallback `backup` (`up/b`), streams not resumed: what a
/// broken stream does when nothing may continue it (`tests/stream_resume.rs` resumes).
const NO_RESUME: &str = "  primary: {targets: [{provider: up, model: a}], fallbacks: [backup], resume_streams: false}\n  backup: {targets: [{provider: up, model: b}]}\n";

/// Runs a scenario whose stream from `up/a` fails after its first content: the client
/// gets the content so far, then an error event and no `[DONE]`; when the request is over,
/// the upstream got that one request and nothing more (no retry after the commit, though
/// retries and a fallback were available). Returns the content and the error event's error.
async fn committed(scenario: ScenarioBuilder) -> (Scenario, String, Value) {
    let (s, reply) = scenario.run(&ask_stream("primary")).await;
    reply.assert_served_by("up/a");
    assert_eq!(reply.attempts(), 1);
    let events = reply.events();
    let error = assert_ends_with_error(&events);
    let line = s.finished(reply.request_id()).await;
    assert_eq!(line["attempts"], 1, "{line}");
    assert_eq!(s.total_hits(), 1, "no retry after the commit");
    (s, content_of(&events), error)
}

#[tokio::test]
async fn a_slow_first_token_falls_back_before_anything_reaches_the_client() {
    let (s, reply) = Scenario::answering(primary(|_| {
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
    }))
    .timeouts("connect: 1s, first_byte: 500ms, stream_idle: 5s")
    .models(PRIMARY_WITH_BACKUP)
    .run(&ask_stream("primary"))
    .await;
    reply.assert_served_by("up/b");
    let events = reply.events();
    assert_clean(&events);
    assert_eq!(content_of(&events), "answer from b");
    assert!(
        !events.iter().any(|e| e.contains("\"model\":\"a\"")),
        "nothing of the abandoned attempt reaches the client: {events:?}"
    );
    assert_eq!(s.hits("a"), 1, "one timeout, then the fallback");
}

#[tokio::test]
async fn a_stream_cut_after_content_ends_with_an_error_event_and_is_not_retried() {
    let cut = Scenario::answering(primary(|_| cut_after("a", &["Hello ", "wor"])));
    let (_, content, _) = committed(cut.models(NO_RESUME)).await;
    assert_eq!(content, "Hello wor");
}

#[tokio::test]
async fn a_stream_that_stalls_after_content_ends_at_the_idle_timeout() {
    let (_, content, error) = committed(
        Scenario::answering(primary(|_| Behavior::Stall {
            data: upstream::chunks("a", &["Hello ", "wor"], false)[..3].to_vec(),
            interval: Duration::from_millis(5),
        }))
        .timeouts("connect: 1s, first_byte: 1s, stream_idle: 500ms")
        .models(NO_RESUME),
    )
    .await;
    assert_eq!(content, "Hello wor");
    assert_eq!(
        error["code"], "upstream_timeout",
        "the idle timeout: {error}"
    );
}

/// The provider setting that makes a malformed event end its stream.
const FAIL_ON_MALFORMED: &str = "    on_malformed_event: fail\n";

#[tokio::test]
async fn a_malformed_event_is_dropped_and_the_stream_goes_on() {
    // The default (on_malformed_event: skip): the event never reaches the client, is
    // counted and logged, and the answer completes from the same target.
    let (s, reply) = Scenario::answering(primary(|_| {
        let data = upstream::chunks("a", &["Hi", " there"], false);
        let mut events = data.clone();
        events.insert(2, upstream::MALFORMED_EVENT.to_owned());
        sse(events, true)
    }))
    .models(PRIMARY_WITH_BACKUP)
    .run(&ask_stream("primary"))
    .await;
    reply.assert_served_by("up/a");
    assert_eq!(reply.attempts(), 1);
    let events = reply.events();
    assert_clean(&events);
    assert_eq!(content_of(&events), "Hi there");
    let id = reply.request_id();
    s.until_logged(
        id,
        "dropped a stream event that is not valid JSON; the stream goes on",
    )
    .await;
    let metrics = s.metrics().await;
    assert!(
        metrics.contains(r#"switchyard_upstream_malformed_events_total{target="up/a"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn with_fail_on_malformed_a_malformed_event_before_content_is_retried_invisibly() {
    // The first attempt's first event is not JSON.
    let seen = AtomicUsize::new(0);
    let (s, reply) = Scenario::answering(move |r: &Received| {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            let mut data = vec![upstream::MALFORMED_EVENT.to_owned()];
            data.extend(upstream::chunks("a", &["never seen"], false));
            sse(data, true)
        } else {
            ok(r)
        }
    })
    .models(PRIMARY_WITH_BACKUP)
    .up_settings(FAIL_ON_MALFORMED)
    .run(&ask_stream("primary"))
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.attempts(), 2);
    let events = reply.events();
    assert_clean(&events);
    assert!(
        content_of(&events).starts_with("answer from "),
        "{events:?}"
    );
    assert_eq!(s.total_hits(), 2);
}

#[tokio::test]
async fn with_fail_on_malformed_a_malformed_event_after_content_ends_the_stream() {
    // After content: the stream is the client's, it ends with an error event.
    let malformed = Scenario::answering(primary(|_| {
        let data = upstream::chunks("a", &["Hi"], false);
        let malformed = upstream::MALFORMED_EVENT.to_owned();
        sse(
            vec![data[0].clone(), data[1].clone(), malformed, data[2].clone()],
            true,
        )
    }));
    let malformed = malformed.models(NO_RESUME).up_settings(FAIL_ON_MALFORMED);
    let (_, content, _) = committed(malformed).await;
    assert_eq!(content, "Hi");
}

#[tokio::test]
async fn a_stream_missing_done_after_content_is_not_retried_even_with_fallbacks() {
    // tests/errors.rs checks the error event without resilience configured; here a
    // fallback and retries are available and must not be used after the commit.
    let unfinished = Scenario::answering(primary(|_| {
        let data = upstream::chunks("a", &["partial ", "answer"], false);
        // Role and content, no finish chunk, no [DONE], a clean end of the body.
        sse(data[..3].to_vec(), false)
    }));
    let (s, content, _) = committed(unfinished.models(NO_RESUME)).await;
    assert_eq!(content, "partial answer");
    assert_eq!(s.hits("a"), 1);
    assert_eq!(s.hits("b"), 0);
}

#[tokio::test]
async fn the_total_deadline_bounds_a_stream_too() {
    // Content every 100 ms for 3 s: never idle, first token at once, but the request
    // outlives the model's `timeouts.total: 1s`.
    let long = Scenario::answering(|r: &Received| {
        let pieces: Vec<String> = (0..30).map(|i| format!("{i} ")).collect();
        let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
        Behavior::Events {
            data: upstream::chunks(&model_of(r), &pieces, false),
            interval: Duration::from_millis(100),
            done: true,
        }
    })
    .models("  primary: {targets: [{provider: up, model: a}], fallbacks: [backup], timeouts: {total: 1s}}\n  backup: {targets: [{provider: up, model: b}]}\n");
    let (_, content, error) = committed(long).await;
    assert!(content.starts_with("0 1 "), "{content}");
    assert!(!content.contains("29 "), "cut before the end: {content}");
    assert_eq!(error["code"], "deadline_exceeded", "{error}");
}

/// `data` as SSE frames, without `data: [DONE]`, followed by `tail` as it is.
fn frames_then(data: &[String], tail: &str) -> String {
    let frames: String = data.iter().map(|d| format!("data: {d}\n\n")).collect();
    format!("{frames}{tail}")
}

#[tokio::test]
async fn a_stream_that_ends_cleanly_after_its_finish_reason_is_complete_without_done() {
    let (s, reply) = Scenario::answering(primary(|_| {
        Behavior::RawSse(frames_then(
            &upstream::chunks("a", &["Hi", " there"], true),
            "",
        ))
    }))
    .run(&ask_stream("primary"))
    .await;
    let events = reply.events();
    assert_clean(&events);
    assert_eq!(content_of(&events), "Hi there");
    let line = s.finished(reply.request_id()).await;
    assert_eq!(line["status"], 200, "{line}");
    assert!(line.get("error").is_none_or(Value::is_null), "{line}");
    assert_eq!(
        line["usage_source"], "provider",
        "the usage chunk was read: {line}"
    );
}

#[tokio::test]
async fn a_stream_cut_in_the_middle_of_an_event_is_cut_even_after_its_finish_reason() {
    let (_, reply) = Scenario::answering(primary(|_| {
        let data = upstream::chunks("a", &["Hi"], false);
        Behavior::RawSse(frames_then(
            &data,
            "data: {\"id\": \"chatcmpl-upstream-2\", \"choi",
        ))
    }))
    .run(&ask_stream("primary"))
    .await;
    let events = reply.events();
    let error = assert_ends_with_error(&events);
    assert_eq!(content_of(&events), "Hi");
    assert_eq!(error["code"], "upstream_invalid_response", "{error}");
}
