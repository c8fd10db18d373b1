//! A stream that breaks after the client received content is continued on another target
//! when one can take over: with a prefill where the target continues a final assistant
//! message, by a regenerated answer that repeats the delivered text exactly otherwise, and
//! never by text that does not fit. The client sees one stream: same id, one role chunk,
//! no repeated text; or, when no continuation fits, the error of the original failure.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use common::content_of;
use common::scenario::{
    Reply, Scenario, ask_stream, assert_clean, assert_ends_with_error, cut_after, model_of, sse,
};
use std::time::Duration;

use common::upstream::{self, Behavior, Received};
use serde_json::{Value, json};

/// `primary` (`up/a`, which breaks) with the fallback `backup` (`up/b`); `prefill` says
/// whether `up/b` continues a final assistant message.
fn models(prefill: bool) -> String {
    format!(
        "  primary: {{targets: [{{provider: up, model: a}}], fallbacks: [backup]}}\n  backup: {{targets: [{{provider: up, model: b, prefill: {prefill}}}]}}\n"
    )
}

/// What `up/a` sends before its connection breaks: the canonical answer starts with it.
const DELIVERED: &[&str] = &["The sky", " is "];

/// `up/b`'s stream of `pieces`, with usage, under its own id and creation time.
fn continuation(pieces: &[&str]) -> Behavior {
    let data = upstream::chunks("b", pieces, true)
        .into_iter()
        .map(|c| {
            c.replace("chatcmpl-upstream-2", "chatcmpl-other")
                .replace("1700000000", "1700000999")
        })
        .collect();
    sse(data, true)
}

/// `up/a` breaks after [`DELIVERED`]; `up/b` answers with `backup`.
async fn broken_then(
    prefill: bool,
    backup: impl Fn(&Received) -> Behavior + Send + Sync + 'static,
) -> (Scenario, Reply) {
    Scenario::answering(move |r: &Received| match model_of(r).as_str() {
        "a" => cut_after("a", DELIVERED),
        _ => backup(r),
    })
    .models(&models(prefill))
    .run(&ask_stream("primary"))
    .await
}

/// Parsed chunks of a stream, `[DONE]` and a final error left out.
fn chunks(events: &[String]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter(|v| v.get("error").is_none())
        .collect()
}

/// The one stream the client saw: its own id and time throughout, one role chunk.
fn assert_one_stream(events: &[String]) {
    let chunks = chunks(events);
    for chunk in &chunks {
        assert_eq!(chunk["id"], "chatcmpl-upstream-2", "{chunk}");
        assert_eq!(chunk["created"], 1_700_000_000, "{chunk}");
    }
    let roles = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"].get("role").is_some())
        .count();
    assert_eq!(roles, 1, "{events:?}");
}

/// The last message `up/b` received.
fn last_message(s: &Scenario) -> Value {
    let received = s.upstream.received();
    let to_b = received
        .iter()
        .rfind(|r| model_of(r) == "b")
        .expect("b was asked");
    to_b.body["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn a_broken_stream_is_continued_with_a_prefill() {
    let (s, reply) = broken_then(true, |_| continuation(&[" blue", "."])).await;
    let events = reply.events();
    assert_clean(&events);
    assert_eq!(
        content_of(&events),
        "The sky is blue.",
        "no text lost or repeated"
    );
    assert_one_stream(&events);
    let finish = chunks(&events)
        .iter()
        .rev()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str().map(str::to_owned));
    assert_eq!(finish.as_deref(), Some("stop"), "the continuation's");
    // The delivered text, as the final assistant message (without its trailing space,
    // which providers refuse there; the continuation's leading space is not repeated).
    assert_eq!(
        last_message(&s),
        json!({"role": "assistant", "content": "The sky is"})
    );
    assert_eq!(
        reply.comments(),
        ["switchyard: resumed on up/b after the first attempt broke; usage is both attempts'"]
    );
    let line = s.finished(reply.request_id()).await;
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["resumed_on"], "up/b", "{line}");
    // Both attempts: the broken one's estimate and up/b's report (9 prompt tokens).
    assert!(line["prompt_tokens"].as_u64().unwrap() > 9, "{line}");
    assert_eq!(line["usage_source"], "estimated", "{line}");
    assert_eq!(line["attempts"], 2, "{line}");
    assert!(line["error"].is_null(), "{line}");
    let metrics = s.metrics().await;
    let resumed = r#"switchyard_stream_resumptions_total{target="up/b",outcome="resumed"} 1"#;
    assert!(metrics.contains(resumed), "{metrics}");
}

#[tokio::test]
async fn a_stall_or_an_error_event_after_content_is_resumed_too() {
    fn delivered() -> Vec<String> {
        upstream::chunks("a", DELIVERED, false)[..=DELIVERED.len()].to_vec()
    }
    fn stall() -> Behavior {
        Behavior::Stall {
            data: delivered(),
            interval: Duration::from_millis(5),
        }
    }
    fn error_event() -> Behavior {
        let error = r#"{"error": {"message": "The server had an error.", "type": "server_error", "code": null}}"#;
        Behavior::Events {
            data: [delivered(), vec![error.to_owned()]].concat(),
            interval: Duration::from_millis(5),
            done: false,
        }
    }
    let stall: fn() -> Behavior = stall;
    for (how, broken) in [("stall", stall), ("error event", error_event)] {
        let (_, reply) = Scenario::answering(move |r: &Received| match model_of(r).as_str() {
            "a" => broken(),
            _ => continuation(&[" blue", "."]),
        })
        .timeouts("connect: 1s, first_byte: 1s, stream_idle: 300ms")
        .models(&models(true))
        .run(&ask_stream("primary"))
        .await;
        let events = reply.events();
        assert_clean(&events);
        assert_eq!(content_of(&events), "The sky is blue.", "{how}");
        assert_one_stream(&events);
        assert_eq!(reply.comments().len(), 1, "{how}: {events:?}");
    }
}

#[tokio::test]
async fn a_regenerated_answer_that_repeats_the_delivered_text_continues_it() {
    let (s, reply) = broken_then(false, |_| continuation(&["The sk", "y is bl", "ue."])).await;
    let events = reply.events();
    assert_clean(&events);
    assert_eq!(content_of(&events), "The sky is blue.");
    assert_one_stream(&events);
    let asked = last_message(&s);
    assert_eq!(
        asked["role"], "user",
        "no prefill for a target without it: {asked}"
    );
}

#[tokio::test]
async fn a_regenerated_answer_that_diverges_ends_with_the_original_failure() {
    let (s, reply) = broken_then(false, |_| continuation(&["Grass is green."])).await;
    let events = reply.events();
    let error = assert_ends_with_error(&events);
    assert_eq!(
        content_of(&events),
        "The sky is ",
        "nothing of the other answer"
    );
    assert_eq!(
        error["code"], "upstream_invalid_response",
        "the cut: {error}"
    );
    assert_eq!(last_message(&s)["role"], "user");
    let metrics = s.metrics().await;
    let diverged = r#"switchyard_stream_resumptions_total{target="up/b",outcome="diverged"} 1"#;
    assert!(metrics.contains(diverged), "{metrics}");
}

#[tokio::test]
async fn a_continuation_that_fails_never_masks_the_original_failure() {
    let (_, reply) = broken_then(true, |_| Behavior::Error {
        status: 400,
        headers: vec![],
        body: r#"{"error": {"message": "prefill is not supported", "type": "invalid_request_error", "code": "unsupported"}}"#.to_owned(),
    })
    .await;
    let events = reply.events();
    let error = assert_ends_with_error(&events);
    assert_eq!(content_of(&events), "The sky is ");
    assert_eq!(
        error["code"], "upstream_invalid_response",
        "the cut, not the 400: {error}"
    );
}

#[tokio::test]
async fn the_openai_sdk_reads_a_resumed_stream() {
    // The mock breaks after four chunks; the fallback mock regenerates the same echo.
    let gateway = common::TestGateway::start(
        "providers:\n  cutting: {kind: mock, mock: {faults: [{cut_after: 4}]}}\n  steady: {kind: mock}\nmodels:\n  flaky: {targets: [{provider: cutting}], fallbacks: [steady]}\n  steady: {targets: [{provider: steady}]}\n",
    )
    .await;
    common::sdk::openai_sdk_resumed_stream_check(&gateway, "flaky").await;
}
