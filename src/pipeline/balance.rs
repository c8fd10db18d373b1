//! Choosing one target of a model for one attempt, by the model's strategy, among the
//! targets that are usable, that the caller admits (the resilience layer: not failed yet
//! this request, or allowed a retry) and whose circuit breaker lets the request through.
//!
//! The choice sees the whole request (its context: key, team, headers; and the call, with
//! its `user` field), so a strategy that keeps a caller on one target can be added here
//! without reshaping the pipeline.

use std::sync::Arc;

use super::Call;
use crate::config::schema::Strategy;
use crate::context::RequestContext;
use crate::health::breaker::Pass;
use crate::snapshot::{ModelRoute, Target};

/// A target of `route` for one attempt of the request (`ctx`, `call`) and the breaker's
/// pass for it, or `None` when no candidate is left. `admit` has the last word on the
/// chosen candidate before its breaker is asked (a retry's budget, for example); a refused
/// candidate is dropped and another chosen.
pub fn pick(
    ctx: &RequestContext,
    call: &Call,
    route: &ModelRoute,
    mut admit: impl FnMut(&Target) -> bool,
) -> Option<(Arc<Target>, Pass)> {
    let breaker = &ctx.snapshot.resilience.breaker;
    let metrics = ctx.record.metrics();
    let mut candidates: Vec<&Arc<Target>> = route
        .usable_targets()
        .filter(|t| t.health.breaker.is_available())
        .collect();
    while let Some(index) = choose(route.strategy, &candidates) {
        // `remove`, not `swap_remove`: priority ties keep their written order.
        let target = candidates.remove(index);
        if !admit(target) {
            continue;
        }
        // A breaker can refuse between the check above and now (another request took
        // the last probe).
        if let Some(pass) = target.health.breaker.pass(breaker, metrics) {
            tracing::debug!(
                request_id = &*ctx.record.request_id,
                key = &*ctx.key.name,
                user = call.user(),
                strategy = ?route.strategy,
                target_name = &*target.health.name,
                "target chosen"
            );
            return Some((target.clone(), pass));
        }
    }
    None
}

fn choose(strategy: Strategy, candidates: &[&Arc<Target>]) -> Option<usize> {
    if candidates.is_empty() {
        return None;
    }
    match strategy {
        Strategy::Weighted => weighted(candidates),
        // Ties are broken at random, so equal targets share the traffic.
        Strategy::LeastInFlight => lowest_by(candidates, |t| u64::from(t.health.in_flight())),
        Strategy::LowestLatency => lowest_by(candidates, |t| t.health.latency().as_micros() as u64),
        Strategy::Priority => (0..candidates.len()).min_by_key(|&i| candidates[i].priority),
    }
}

/// Random, with probability proportional to weight.
fn weighted(candidates: &[&Arc<Target>]) -> Option<usize> {
    let total: u64 = candidates.iter().map(|t| u64::from(t.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut roll = fastrand::u64(0..total);
    candidates.iter().position(|t| {
        let weight = u64::from(t.weight);
        if roll < weight {
            true
        } else {
            roll -= weight;
            false
        }
    })
}

fn lowest_by(candidates: &[&Arc<Target>], key: impl Fn(&Target) -> u64) -> Option<usize> {
    (0..candidates.len()).min_by_key(|&i| (key(candidates[i]), fastrand::u32(..)))
}
