//! Retries through real sockets: which failures are retried (429 with and without
//! Retry-After, 500, a connection reset) and which are not (a quota 429), the retry budget
//! in a full outage, a client that leaves during the retry wait, and retries onto the other
//! target under load; plus what the emulator's transport faults look like.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::scenario::{
    Reply, Scenario, ScenarioBuilder, ask, ask_stream, error, failing_first, model_of, ok,
    rate_limited, retry_after, two_targets, unavailable,
};
use common::upstream::{self, Behavior, Received, Upstream};
use serde_json::Value;

/// Runs a scenario whose first attempt fails: the client gets the second attempt's answer,
/// from the same target.
async fn retried_once(scenario: ScenarioBuilder) -> Reply {
    let (s, reply) = scenario.run(&ask("primary")).await;
    reply.assert_served_by("up/a");
    assert_eq!(reply.attempts(), 2);
    assert_eq!(s.total_hits(), 2, "the failed attempt and its retry");
    reply
}

/// Runs a scenario whose first attempt fails with `status`: that is the answer, after one
/// attempt; returns its error object.
async fn not_retried(scenario: ScenarioBuilder, status: u16) -> Value {
    let (s, reply) = scenario.run(&ask("primary")).await;
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.attempts(), 1);
    assert_eq!(s.total_hits(), 1, "one attempt");
    if status < 500 {
        assert_eq!(reply.should_retry(), Some("false"));
    }
    reply.error()
}

#[tokio::test]
async fn a_429_with_retry_after_is_retried_on_the_same_target() {
    let reply = retried_once(Scenario::answering(failing_first(1, || retry_after(1)))).await;
    assert_eq!(reply.content(), "answer from a");
}

#[tokio::test]
async fn a_429_without_retry_after_is_retried() {
    retried_once(
        Scenario::answering(failing_first(1, || rate_limited(vec![])))
            .resilience("max_attempts: 3\n  backoff: {base: 50ms, max: 200ms}"),
    )
    .await;
}

#[tokio::test]
async fn an_insufficient_quota_429_is_not_retried() {
    let quota = || error(429, vec![], "insufficient_quota", "insufficient_quota");
    let error = not_retried(Scenario::answering(move |_: &Received| quota()), 429).await;
    assert_eq!(error["code"], "insufficient_quota");
}

#[tokio::test]
async fn a_500_is_retried() {
    let internal = || error(500, vec![], "server_error", "internal_error");
    retried_once(Scenario::answering(failing_first(1, internal))).await;
}

#[tokio::test]
async fn a_connection_reset_before_the_answer_is_retried() {
    retried_once(Scenario::answering(failing_first(1, || Behavior::Reset))).await;
}

#[tokio::test]
async fn a_reset_is_a_connection_error_when_not_retried() {
    // Shows what `Behavior::Reset` looks like to the gateway: an unreachable upstream.
    let reset = Scenario::answering(|_: &Received| Behavior::Reset).resilience("max_attempts: 1");
    let error = not_retried(reset, 502).await;
    assert_eq!(error["code"], "upstream_unreachable", "{error}");
}

#[tokio::test]
async fn random_failures_of_one_of_two_targets_never_reach_clients() {
    let failures = Arc::new(AtomicUsize::new(0));
    let failed = failures.clone();
    let s = Scenario::answering(move |r: &Received| {
        if model_of(r) == "a" && fastrand::f64() < 0.3 {
            failed.fetch_add(1, Ordering::SeqCst);
            unavailable()
        } else {
            ok(r)
        }
    })
    .models(&two_targets("weighted"))
    // The budget is not what this test is about: room for every retry 30% need.
    .resilience("max_attempts: 3\n  backoff: {base: 1ms, max: 10ms}\n  retry_budget: {ratio: 0.5, min_per_second: 100}")
    .start()
    .await;
    let replies = s.chat_many(&ask("primary"), 2000, 16).await;
    let errors: Vec<_> = replies.iter().filter(|r| r.status != 200).collect();
    assert!(
        errors.is_empty(),
        "{} client errors, first: {:?}",
        errors.len(),
        errors.first()
    );
    // The failing target was in play (its breaker may open now and then, so how much
    // traffic it got varies) and failed calls that clients never saw.
    let (a, b) = (s.hits("a"), s.hits("b"));
    let failures = failures.load(Ordering::SeqCst);
    assert!(failures > 0 && b > 200, "a {a} ({failures} failed), b {b}");
}

#[tokio::test]
async fn the_retry_budget_caps_retries_in_a_full_outage() {
    let s = Scenario::answering(|_: &Received| unavailable())
        .resilience("max_attempts: 3\n  backoff: {base: 5ms, max: 20ms}\n  retry_budget: {ratio: 0.1, min_per_second: 1}\n  breaker: {consecutive_failures: 1000000, min_requests: 1000000}")
        .start()
        .await;
    let replies = s.chat_many(&ask("primary"), 200, 8).await;
    for reply in &replies {
        assert!((500..600).contains(&reply.status), "an error: {reply:?}");
    }
    let sent = s.total_hits();
    assert!(sent >= 200, "{sent}");
    assert!(
        sent < 260,
        "retries capped by the budget: {sent} upstream requests for 200"
    );
}

#[tokio::test]
async fn a_client_that_leaves_during_the_retry_wait_cancels_the_retry() {
    const RETRY_AFTER: Duration = Duration::from_secs(2);
    let s = Scenario::answering(|_: &Received| retry_after(RETRY_AFTER.as_secs()))
        .start()
        .await;
    let caller = s.caller();
    let client = tokio::spawn(async move { caller.chat(&ask("primary")).await });
    let first = common::eventually("the first attempt", async || s.upstream.received().pop()).await;
    let id = first.headers["x-request-id"].to_str().unwrap();
    // The first attempt failed with its 429: the gateway waits for Retry-After. The client
    // leaves.
    s.until_logged(id, "upstream attempt failed").await;
    client.abort();
    assert!(client.await.unwrap_err().is_cancelled());

    let line = s.finished(id).await;
    assert_eq!(line["status"], 499, "the client went away: {line}");
    assert_eq!(line["attempts"], 1, "{line}");
    // Nothing can come after the request is over, but look past Retry-After all the same.
    tokio::time::sleep(RETRY_AFTER + Duration::from_secs(1)).await;
    assert_eq!(s.total_hits(), 1, "no retry for a client that went away");
}

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
