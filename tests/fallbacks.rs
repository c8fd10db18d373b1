//! Fallback models through real sockets: a primary that keeps failing (with errors, with a
//! Retry-After past the deadline, or silent past its first-byte timeout) hands over to its
//! fallbacks; a request's total deadline ends it when there is none; final errors (a
//! content filter, a fallback's own 400) are not sent on; context-length errors go only to
//! context fallbacks; a fallback without a usable provider is skipped; and only the attempt
//! that succeeded is billed.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use common::scenario::{
    PRIMARY_WITH_BACKUP, Reply, Scenario, ask, ask_stream, assert_clean, context_length_exceeded,
    error, model_of, ok, primary, retry_after, streaming, unavailable,
};
use common::upstream::{self, Behavior, Received};
use serde_json::{Value, json};

#[tokio::test]
async fn a_primary_that_keeps_failing_falls_back() {
    let (s, reply) = Scenario::answering(primary(|_| unavailable()))
        .models(PRIMARY_WITH_BACKUP)
        .run(&ask("primary"))
        .await;
    reply.assert_served_by("up/b");
    let tries = s.hits("a");
    assert!(
        (1..=3).contains(&tries),
        "the primary is tried at most max_attempts times: {tries}"
    );
    assert_eq!(s.hits("b"), 1);
    assert_eq!(reply.attempts(), tries + 1);
    assert_eq!(reply.content(), "answer from b");
}

#[tokio::test]
async fn a_retry_after_beyond_the_deadline_goes_to_the_fallback() {
    let (s, reply) = Scenario::answering(primary(|_| retry_after(30)))
        .models("  primary:\n    targets: [{provider: up, model: a}]\n    fallbacks: [backup]\n    timeouts: {total: 5s}\n  backup: {targets: [{provider: up, model: b}]}\n")
        .run(&ask("primary"))
        .await;
    reply.assert_served_by("up/b");
    assert_eq!(s.hits("a"), 1, "a wait past the deadline is not made");
    assert_eq!(reply.attempts(), 2);
}

#[tokio::test]
async fn a_silent_upstream_times_out_at_first_byte_and_falls_back_or_fails_at_the_total() {
    let (s, reply) = Scenario::answering(|r: &Received| {
        if model_of(r).starts_with("hang") {
            Behavior::Hang
        } else {
            ok(r)
        }
    })
    .timeouts("connect: 1s, first_byte: 500ms, stream_idle: 1s")
    .models("  primary: {targets: [{provider: up, model: hang}], fallbacks: [backup]}\n  backup: {targets: [{provider: up, model: b}]}\n  alone:\n    targets: [{provider: up, model: hang-alone}]\n    timeouts: {total: 1s}\n")
    .run(&ask("primary"))
    .await;
    reply.assert_served_by("up/b");
    // A silent target costs one timeout: the next attempt goes to the fallback.
    assert_eq!(s.hits("hang"), 1);
    assert_eq!(reply.attempts(), 2);

    // No fallback, 1 s in total: the model has nothing else, so its retries apply (two
    // 500 ms timeouts fill the second); a 504 then, never a hang.
    let reply = s.chat(&ask("alone")).await;
    assert_eq!(reply.status, 504);
    assert!(s.hits("hang-alone") >= 2, "{}", s.hits("hang-alone"));
    reply.error();
}

/// A 400 that is the answer after exactly one attempt; returns its error object.
fn final_after_one_attempt(reply: &Reply) -> Value {
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.attempts(), 1);
    assert_eq!(reply.should_retry(), Some("false"));
    reply.error()
}

#[tokio::test]
async fn a_context_length_400_is_final_unless_a_context_fallback_exists() {
    let (s, reply) = Scenario::answering(primary(|_| context_length_exceeded()))
        .models(&format!(
            "{PRIMARY_WITH_BACKUP}  roomy: {{targets: [{{provider: up, model: a}}], fallbacks: [backup], context_fallbacks: [long]}}\n  long: {{targets: [{{provider: up, model: long}}]}}\n"
        ))
        .run(&ask("primary"))
        .await;
    let error = final_after_one_attempt(&reply);
    assert_eq!(error["code"], "context_length_exceeded");
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["param"], "messages");
    let message = error["message"].as_str().unwrap();
    let upstreams = "This model's maximum context length is 8192 tokens.";
    assert!(message.starts_with(upstreams), "{error}");
    assert_eq!(s.hits("a"), 1, "exactly one attempt");
    assert_eq!(
        s.hits("b"),
        0,
        "a context error does not go to ordinary fallbacks"
    );

    let reply = s.chat(&ask("roomy")).await;
    reply.assert_served_by("up/long");
    assert_eq!(reply.attempts(), 2);
    assert_eq!(s.hits("a"), 2, "one attempt on the primary");
    assert_eq!(s.hits("long"), 1);
    assert_eq!(s.hits("b"), 0);
    assert_eq!(reply.content(), "answer from long");
}

#[tokio::test]
async fn a_content_filter_400_is_final_and_not_sent_to_fallbacks() {
    let (s, reply) = Scenario::answering(primary(|_| {
        error(400, vec![], "invalid_request_error", "content_filter")
    }))
    .models(PRIMARY_WITH_BACKUP)
    .run(&ask("primary"))
    .await;
    let error = final_after_one_attempt(&reply);
    assert_eq!(error["code"], "content_filter");
    assert_eq!(error["message"], "upstream says content_filter");
    assert_eq!(s.total_hits(), 1);
}

#[tokio::test]
async fn a_fallbacks_own_400_is_what_the_client_gets() {
    let (s, reply) = Scenario::answering(|r: &Received| {
        if model_of(r) == "a" {
            unavailable()
        } else {
            error(400, vec![], "invalid_request_error", "invalid_value")
        }
    })
    .models(PRIMARY_WITH_BACKUP)
    .run(&ask("primary"))
    .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.should_retry(), Some("false"));
    assert_eq!(reply.attempts(), s.total_hits());
    let error = reply.error();
    assert_eq!(error["code"], "invalid_value");
    assert_eq!(error["message"], "upstream says invalid_value");
    assert_eq!(s.hits("b"), 1, "the fallback's 400 is final");
}

#[tokio::test]
async fn a_fallback_without_a_usable_provider_is_skipped_for_the_next() {
    let (s, reply) = Scenario::answering(primary(|_| unavailable()))
        .provider("  keyless:\n    kind: openai\n    base_url: {base_url}\n    api_key: \"\"\n")
        .models("  primary: {targets: [{provider: up, model: a}], fallbacks: [unset, backup]}\n  unset: {targets: [{provider: keyless, model: x}]}\n  backup: {targets: [{provider: up, model: b}]}\n  orphan: {targets: [{provider: keyless, model: x}], fallbacks: [backup]}\n")
        .run(&ask("primary"))
        .await;
    reply.assert_served_by("up/b");
    // A model with no usable provider of its own goes to its fallbacks too.
    let reply = s.chat(&ask("orphan")).await;
    assert_eq!(reply.target(), Some("up/b"));
    assert_eq!(s.hits("x"), 0, "the keyless provider is never called");
}

#[tokio::test]
async fn only_the_attempt_that_succeeded_is_billed() {
    let (s, reply) = Scenario::answering(|r: &Received| {
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
    .models(PRIMARY_WITH_BACKUP)
    // USD per million tokens: the fallback costs 10 × 2 + 5 × 4 = 40 µUSD.
    .top_level(
        "pricing:\n  models:\n    a: {input: 1000, output: 1000}\n    b: {input: 2, output: 4}\n",
    )
    .run(&ask("primary"))
    .await;
    reply.assert_served_by("up/b");
    assert!(s.hits("a") >= 1);

    let line = s.finished(reply.request_id()).await;
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["provider"], "up", "{line}");
    assert_eq!(line["upstream_model"], "b", "{line}");
    assert_eq!(line["prompt_tokens"], 10, "{line}");
    assert_eq!(line["completion_tokens"], 5, "{line}");
    assert_cost(&line["cost_usd"], 40e-6, &line);
    assert_billed(&s, 1, 15, 40e-6).await;

    // A stream whose first attempt reported usage before it failed: only the fallback's
    // usage (9 + 3 tokens, 9 × 2 + 3 × 4 = 30 µUSD) is billed.
    let before = s.hits("a");
    let reply = s.chat(&ask_stream("primary")).await;
    reply.assert_served_by("up/b");
    assert_clean(&reply.events());
    assert!(s.hits("a") > before, "the primary was tried");
    let line = s.finished(reply.request_id()).await;
    assert_eq!(line["upstream_model"], "b", "{line}");
    assert_eq!(line["prompt_tokens"], 9, "{line}");
    assert_eq!(line["completion_tokens"], 3, "{line}");
    assert_eq!(line["usage_source"], "provider", "{line}");
    assert_cost(&line["cost_usd"], 30e-6, &line);
    assert_billed(&s, 2, 15 + 12, 70e-6).await;
}

fn assert_cost(cost: &Value, usd: f64, context: &Value) {
    let cost = cost
        .as_f64()
        .unwrap_or_else(|| panic!("no cost: {context}"));
    assert!((cost - usd).abs() < 1e-9, "{usd} USD expected: {context}");
}

/// The test key's total usage, as the admin API shows it.
async fn assert_billed(s: &Scenario, requests: u64, tokens: u64, usd: f64) {
    let shown = s.admin_get("/admin/keys/test").await;
    let total = &shown["usage"]["total"];
    assert_eq!(total["requests"], requests, "{shown}");
    assert_eq!(total["tokens"], tokens, "{shown}");
    assert_cost(&total["cost_usd"], usd, &shown);
}
