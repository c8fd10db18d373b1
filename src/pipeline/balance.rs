//! Choosing one target of a model for one attempt, by the model's strategy, among the
//! targets that are usable, not excluded (they already failed this request) and whose
//! circuit breaker lets the request through.

use std::sync::Arc;

use crate::config::schema::{BreakerSettings, Strategy};
use crate::metrics::Metrics;
use crate::snapshot::{ModelRoute, Target};

/// A target whose breaker let the request through, or `None` when no candidate is left.
pub fn pick(
    route: &ModelRoute,
    exclude: &[Arc<Target>],
    breaker: &BreakerSettings,
    metrics: &Metrics,
) -> Option<Arc<Target>> {
    let mut candidates: Vec<&Arc<Target>> = route
        .usable_targets()
        .filter(|t| !exclude.iter().any(|e| Arc::ptr_eq(e, t)))
        .filter(|t| t.health.breaker.is_available())
        .collect();
    // A breaker can refuse between the check above and taking its pass (another request
    // took the last probe): drop that candidate and choose again.
    while let Some(index) = choose(route.strategy, &candidates) {
        let target = candidates.swap_remove(index);
        if target.health.breaker.pass(breaker, metrics).is_some() {
            return Some(target.clone());
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
