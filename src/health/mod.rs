//! What this replica knows about each target's health: its circuit breaker, its requests
//! in flight, its recent latency and its retry budget. Kept per target (provider and
//! upstream model) across config reloads; a snapshot holds each of its targets' entry, so
//! the request path never looks one up.

pub mod breaker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};

use crate::config::schema::RetryBudgetSettings;
use breaker::Breaker;

/// How long a retry budget remembers requests.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

pub struct TargetHealth {
    /// `provider/upstream model`.
    pub name: Arc<str>,
    pub breaker: Breaker,
    in_flight: AtomicU32,
    /// Exponentially weighted latency in µs (0: never measured).
    latency_us: AtomicU64,
    retries: TpsBudget,
}

impl TargetHealth {
    fn new(name: Arc<str>, budget: &RetryBudgetSettings) -> Self {
        Self {
            breaker: Breaker::new(name.clone()),
            name,
            in_flight: AtomicU32::new(0),
            latency_us: AtomicU64::new(0),
            retries: TpsBudget::new(BUDGET_WINDOW, budget.min_per_second, budget.ratio),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the returned guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Recent latency (0: never measured, so worth trying).
    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_us.load(Ordering::Relaxed))
    }

    /// Folds in one measurement (weight 0.3: about the last five requests count).
    pub fn observe_latency(&self, latency: Duration) {
        let sample = latency.as_micros() as u64;
        let _ = self
            .latency_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    sample.max(1)
                } else {
                    (old * 7 + sample * 3) / 10
                })
            });
    }

    /// A first attempt: earns the target retries.
    pub fn deposit(&self) {
        self.retries.deposit();
    }

    /// Whether the budget allows one more retry on this target (takes it if so).
    pub fn withdraw_retry(&self) -> bool {
        self.retries.withdraw()
    }
}

/// A request in flight to a target.
pub struct InFlight(Arc<TargetHealth>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every target's health entry, by name.
#[derive(Default)]
pub struct HealthTable(Mutex<HashMap<Arc<str>, Arc<TargetHealth>>>);

impl HealthTable {
    /// The entry of `provider/model`, made on first use. A target keeps its entry (and its
    /// retry budget's settings) across reloads.
    pub fn get(
        &self,
        provider: &str,
        model: &str,
        budget: &RetryBudgetSettings,
    ) -> Arc<TargetHealth> {
        let name: Arc<str> = Arc::from(format!("{provider}/{model}"));
        let mut table = self.0.lock().unwrap_or_else(|p| p.into_inner());
        table
            .entry(name.clone())
            .or_insert_with(|| Arc::new(TargetHealth::new(name, budget)))
            .clone()
    }
}
