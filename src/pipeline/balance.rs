//! Choosing one target of a model. Weighted random for now; the resilience work adds
//! least-in-flight, lowest-latency and ordered priority next to it.

use crate::snapshot::{ModelRoute, Target};

/// A usable target, chosen with probability proportional to its weight.
pub fn pick(route: &ModelRoute) -> Option<&Target> {
    let total: u64 = route.usable_targets().map(|t| u64::from(t.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut roll = fastrand::u64(0..total);
    route.usable_targets().find(|t| {
        let weight = u64::from(t.weight);
        if roll < weight {
            true
        } else {
            roll -= weight;
            false
        }
    })
}
