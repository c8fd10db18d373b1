//! Load-balancing strategies through real sockets: which of a model's targets a request
//! goes to under `priority`, `lowest_latency` and `least_in_flight`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use common::scenario::{
    Scenario, Switch, a_down_while, ask, ask_stream, assert_clean, model_of, ok, slow_stream,
    streaming, two_targets,
};
use common::upstream::Received;

#[tokio::test]
async fn priority_sends_everything_to_the_first_target_until_it_fails() {
    let failing = Switch::default();
    let s = Scenario::answering(a_down_while(&failing))
        .models("  primary: {strategy: priority, targets: [{provider: up, model: b, priority: 2}, {provider: up, model: a, priority: 1}]}\n")
        .start()
        .await;
    for _ in 0..10 {
        let reply = s.chat(&ask("primary")).await;
        assert_eq!(reply.target(), Some("up/a"), "priority 1 first");
    }
    failing.set(true);
    let reply = s.chat(&ask("primary")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.target(), Some("up/b"), "then the next one");
    assert_eq!(reply.attempts(), 2);
}

#[tokio::test]
async fn lowest_latency_prefers_the_target_that_answers_first() {
    let s = Scenario::answering(|r: &Received| {
        let model = model_of(r);
        let delay = if model == "a" { 300 } else { 5 };
        slow_stream(&model, Duration::from_millis(delay))
    })
    .models(&two_targets("lowest_latency"))
    .start()
    .await;
    let mut served = Vec::new();
    for _ in 0..12 {
        let reply = s.chat(&ask_stream("primary")).await;
        served.push(reply.target().unwrap_or_default().to_owned());
        assert_clean(&reply.events());
    }
    // Each target is tried while it has no measurement; after that, the fast one.
    assert!(served[2..].iter().all(|t| t == "up/b"), "{served:?}");
}

#[tokio::test]
async fn least_in_flight_avoids_the_target_that_is_busy() {
    // Streams take 700 ms to start (the first-byte timeout is 1 s); plain answers are
    // immediate.
    let s = Scenario::answering(|r: &Received| {
        if streaming(r) {
            slow_stream(&model_of(r), Duration::from_millis(700))
        } else {
            ok(r)
        }
    })
    .models(&two_targets("least_in_flight"))
    .start()
    .await;
    let caller = s.caller();
    let busy = tokio::spawn(async move { caller.chat(&ask_stream("primary")).await.status });
    let busy_target = common::eventually("the slow stream reached the upstream", async || {
        s.upstream.received().first().map(model_of)
    })
    .await;
    let busy_target = format!("up/{busy_target}");
    for _ in 0..10 {
        let reply = s.chat(&ask("primary")).await;
        assert_ne!(
            reply.target().unwrap(),
            busy_target,
            "the other one is idle"
        );
    }
    assert_eq!(busy.await.unwrap(), 200);
}
