//! Circuit breakers through real sockets: an outage opens a target's breaker, traffic goes
//! to the fallback and comes back after recovery; streams cut after their first content
//! count as failures, a request's own deadline does not; health checks open and close a
//! breaker without client traffic; an open breaker answers `circuit_open` with Retry-After
//! and never calls its target; `/admin/breakers` and the metrics show it all.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use common::eventually;
use common::scenario::{
    ONLY_A, PRIMARY_WITH_BACKUP, Scenario, Switch, a_down_while, ask, ask_stream, assert_clean,
    assert_ends_with_error, cut_after, primary, unavailable,
};
use common::upstream::{Behavior, Received};
use serde_json::Value;

fn trips(breaker: &Value) -> u64 {
    breaker["trips"]
        .as_u64()
        .unwrap_or_else(|| panic!("no trips: {breaker}"))
}

/// Asks for `primary` `n` times, one after the other; each answer is a `status` error with
/// `code`.
async fn fails(s: &Scenario, n: usize, status: u16, code: &str) {
    for _ in 0..n {
        let reply = s.chat(&ask("primary")).await;
        assert_eq!(reply.status, status, "{reply:?}");
        assert_eq!(reply.error()["code"], code);
    }
}

#[tokio::test]
async fn an_outage_trips_the_breaker_traffic_falls_back_and_returns_after_recovery() {
    let down = Switch::on();
    let s = Scenario::answering(a_down_while(&down))
        .models(PRIMARY_WITH_BACKUP)
        // max_cooldown = cooldown: one probe per cooldown, however many trips in a row.
        .resilience("max_attempts: 3\n  backoff: {base: 10ms, max: 50ms}\n  breaker: {consecutive_failures: 3, cooldown: 500ms, max_cooldown: 500ms}")
        .start()
        .await;

    // The outage: requests, one after the other, until the breaker has opened and a probe
    // has found the primary still down (it opened again).
    let mut replies = Vec::new();
    eventually("the breaker reopened after a failed probe", async || {
        replies.push(s.chat(&ask("primary")).await);
        (trips(&s.breaker("up/a").await) >= 2).then_some(())
    })
    .await;
    for reply in &replies {
        assert_eq!(reply.status, 200, "every request is served: {reply:?}");
        assert_eq!(reply.target(), Some("up/b"), "by the fallback");
    }
    // The primary got the failures that opened its circuit, then only probes: one per
    // reopening, none while it was open.
    let reopenings = trips(&s.breaker("up/a").await) - 1;
    assert_eq!(
        s.hits("a") as u64,
        3 + reopenings,
        "{} requests",
        replies.len()
    );

    // The primary recovers: the next probe closes the circuit and traffic comes back.
    down.set(false);
    let mut replies = Vec::new();
    eventually("traffic back on the primary", async || {
        let reply = s.chat(&ask("primary")).await;
        let back = reply.target() == Some("up/a");
        replies.push(reply);
        back.then_some(())
    })
    .await;
    for _ in 0..5 {
        let reply = s.chat(&ask("primary")).await;
        assert_eq!(reply.target(), Some("up/a"), "served by the primary again");
        assert_eq!(reply.attempts(), 1);
        replies.push(reply);
    }
    let failed: Vec<_> = replies.iter().filter(|r| r.status != 200).collect();
    assert!(failed.is_empty(), "every request is served: {failed:?}");

    let state = s.breaker("up/a").await;
    assert!(trips(&state) >= 1, "{state}");
    assert_eq!(state["state"], "closed", "{state}");
}

/// The flapping provider at a hundredth of the time: the default breaker settings (cooldown
/// 5 s, at most 10 s) become 50 ms and 100 ms, the one-minute outage 600 ms, one request
/// every 4 s one every 40 ms. Counted in requests, not time: a slow machine only spaces the
/// requests further, which makes the probe due sooner in requests. (The defaults
/// themselves, minute by minute: `health::breaker`'s paused-time test.)
#[tokio::test]
async fn a_flapping_primary_serves_again_within_four_requests_of_recovering() {
    let down = Switch::on();
    let s = Scenario::answering(a_down_while(&down))
        .models(PRIMARY_WITH_BACKUP)
        .resilience("breaker: {cooldown: 50ms, max_cooldown: 100ms}")
        .start()
        .await;
    let every = std::time::Duration::from_millis(40);
    for _ in 0..15 {
        let reply = s.chat(&ask("primary")).await;
        assert_eq!(reply.status, 200, "every request is served: {reply:?}");
        assert_eq!(reply.target(), Some("up/b"), "by the fallback");
        tokio::time::sleep(every).await;
    }
    assert!(
        trips(&s.breaker("up/a").await) >= 2,
        "probes failed during the outage"
    );

    // The fourth request after the recovery comes at least 120 ms after it: past any
    // cooldown, so it is a probe if the circuit is still open, and the probe succeeds.
    down.set(false);
    let mut served_by = Vec::new();
    for _ in 0..4 {
        let reply = s.chat(&ask("primary")).await;
        assert_eq!(reply.status, 200, "every request is served: {reply:?}");
        served_by.push(reply.target().unwrap().to_owned());
        tokio::time::sleep(every).await;
    }
    assert_eq!(served_by.last().unwrap(), "up/a", "{served_by:?}");
}

#[tokio::test]
async fn streams_cut_after_their_first_content_count_against_the_target() {
    let s = Scenario::answering(primary(|_| cut_after("a", &["Hello ", "wor"])))
        .models(PRIMARY_WITH_BACKUP)
        .resilience("max_attempts: 3\n  breaker: {consecutive_failures: 3, cooldown: 10s}")
        .start()
        .await;
    for _ in 0..3 {
        let reply = s.chat(&ask_stream("primary")).await;
        assert_eq!(reply.target(), Some("up/a"));
        assert_ends_with_error(&reply.events());
    }
    assert_eq!(s.breaker("up/a").await["state"], "open");
    let reply = s.chat(&ask_stream("primary")).await;
    assert_eq!(reply.target(), Some("up/b"));
    assert_clean(&reply.events());
}

#[tokio::test]
async fn the_requests_own_deadline_does_not_count_against_the_target() {
    let s = Scenario::answering(primary(|_| Behavior::Hang))
        .models("  primary: {targets: [{provider: up, model: a}], timeouts: {total: 200ms}}\n")
        .resilience("max_attempts: 3\n  breaker: {consecutive_failures: 2}")
        .start()
        .await;
    fails(&s, 4, 504, "deadline_exceeded").await;
    // The first-byte timeout (1 s) never fired: the target was never seen failing.
    assert_eq!(s.breaker("up/a").await["state"], "closed");
}

#[tokio::test]
async fn health_checks_open_and_close_the_breaker_without_client_traffic() {
    let down = Switch::on();
    let s = Scenario::answering(a_down_while(&down))
        .up_settings("    health_check: {interval: 100ms, timeout: 500ms}\n")
        .models(ONLY_A)
        .resilience("breaker: {consecutive_failures: 3, cooldown: 300ms, max_cooldown: 300ms}")
        .start()
        .await;
    // Three failed checks in a row open the circuit: no client has sent anything.
    let opened = s.until_breaker("up/a", "open").await;
    let checks = s.upstream.received();
    assert!(checks.len() >= 3, "{}", checks.len());
    assert_eq!(checks[0].body["max_tokens"], 1, "a one-token check");
    assert_eq!(checks[0].body["model"], "a");
    // While open, checks wait for the probe: every check is a probe, and each failed
    // probe opens the circuit again. (At most one more may be on its way.)
    let reopened = eventually("two failed probes", async || {
        Some(s.breaker("up/a").await).filter(|b| trips(b) >= trips(&opened) + 2)
    })
    .await;
    let probes = trips(&reopened) - trips(&opened);
    let while_open = (s.total_hits() - checks.len()) as u64;
    assert!(
        while_open <= probes + 1,
        "{while_open} checks while open, {probes} probes: one check per probe, not per interval"
    );
    // The target recovers: the next probe (a check) closes the circuit, and clients get it.
    down.set(false);
    s.until_breaker("up/a", "closed").await;
    let reply = s.chat(&ask("primary")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.attempts(), 1);
}

#[tokio::test]
async fn an_open_breaker_answers_circuit_open_without_calling_the_target() {
    let s = Scenario::answering(|_: &Received| unavailable())
        .models(ONLY_A)
        .resilience("max_attempts: 1\n  breaker: {consecutive_failures: 3, cooldown: 10s, max_cooldown: 10s}")
        .start()
        .await;
    fails(&s, 3, 503, "service_unavailable").await;
    assert_eq!(s.total_hits(), 3);

    let reply = s.chat(&ask("primary")).await;
    assert_eq!(reply.status, 503);
    // Retry-After says when the next probe is due (the 10 s cooldown).
    let retry_after: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!((8..=10).contains(&retry_after), "retry-after {retry_after}");
    assert_eq!(reply.error()["code"], "circuit_open");
    assert_eq!(s.total_hits(), 3, "the open target gets nothing");

    let state = s.breaker("up/a").await;
    assert_eq!(state["state"], "open", "{state}");
    assert!(trips(&state) >= 1, "{state}");
    assert!(
        state["consecutive_failures"].as_u64().unwrap() >= 3,
        "{state}"
    );
    assert!(state["next_probe_in_ms"].as_u64().unwrap() > 0, "{state}");

    let metrics = s.gateway.get("/metrics").await.text().await.unwrap();
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
    // Every answer carries the header, this one too (checked last, so the checks above
    // report first).
    assert!(
        reply.header("x-switchyard-attempts").is_some(),
        "x-switchyard-attempts on a circuit_open answer"
    );
}
