//! Active health checks: for providers with `health_check`, a one-token chat completion to
//! each of their targets every `interval`, whose outcome is recorded on the target's
//! circuit breaker like a client request's. A check goes through the breaker too: while
//! the circuit is open it waits for the probe to be due and then is that probe, so a dead
//! target is retested without a client request paying for it.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::api::chat::ChatRequest;
use crate::config::schema::HealthCheckConfig;
use crate::metrics::Metrics;
use crate::providers::ChatCall;
use crate::reload::ConfigStore;
use crate::snapshot::{Snapshot, Target};

/// How often the targets are looked at (each is checked at its own interval).
const TICK: Duration = Duration::from_millis(100);

/// The check itself: as small as a chat completion gets.
static PING: LazyLock<Option<Arc<ChatRequest>>> = LazyLock::new(|| {
    let body = br#"{"model": "health-check", "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}"#;
    serde_json::from_slice(body).ok().map(Arc::new)
});

/// Runs the checks of the current config until aborted (at shutdown).
pub fn start(store: Arc<ConfigStore>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let metrics = store.shared().metrics.clone();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let snapshot = store.current();
            for (target, config) in due(&snapshot) {
                tokio::spawn(check(snapshot.clone(), target, config, metrics.clone()));
            }
        }
    })
}

/// The usable targets whose provider is checked and whose check is due.
fn due(snapshot: &Snapshot) -> Vec<(Arc<Target>, HealthCheckConfig)> {
    snapshot
        .models
        .values()
        .flat_map(|model| &model.targets)
        .filter(|target| target.is_usable())
        .filter_map(|target| Some((target.clone(), target.provider.health_check?)))
        .filter(|(target, config)| target.health.claim_check(config.interval))
        .collect()
}

async fn check(
    snapshot: Arc<Snapshot>,
    target: Arc<Target>,
    config: HealthCheckConfig,
    metrics: Arc<Metrics>,
) {
    let settings = &snapshot.resilience.breaker;
    let breaker = &target.health.breaker;
    let Some(ping) = PING.as_ref() else {
        return;
    };
    let Some(pass) = breaker.pass(settings, &metrics) else {
        return;
    };
    let call = ChatCall {
        request: ping,
        model: &target.upstream_model,
        request_id: "health-check",
        max_tokens: target.max_tokens,
        skipped: &Arc::default(),
        trace: &http::HeaderMap::new(),
    };
    let answer = tokio::time::timeout(config.timeout, target.provider.adapter.chat(call)).await;
    // An error that says the request was wrong (a 400) still says the target answers.
    let failure = match answer {
        Ok(Ok(_)) => None,
        Ok(Err(error)) => error.is_retryable().then(|| error.to_string()),
        Err(_) => Some(format!("no answer within {:?}", config.timeout)),
    };
    breaker.record(pass, failure.is_some(), settings, &metrics);
    if let Some(error) = failure {
        tracing::warn!(target_name = &*target.health.name, %error, "health check failed");
    }
}
