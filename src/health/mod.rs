//! What this replica knows about each target's health: its circuit breaker, its requests
//! in flight, its recent latency and its retry budget. Kept per target (provider and
//! upstream model) across config reloads; a snapshot holds each of its targets' entry, so
//! the request path never looks one up.

pub mod breaker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};

use crate::clock::{self, as_millis};
use crate::config::schema::RetryBudgetSettings;
use breaker::Breaker;

/// The latency a failed attempt counts as, at least.
const FAILURE_LATENCY: Duration = Duration::from_secs(5);

/// A latency not measured for this long is measured again.
const LATENCY_STALE: Duration = Duration::from_secs(10);

/// How long a retry budget remembers requests.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

pub struct TargetHealth {
    /// `provider/upstream model`.
    pub name: Arc<str>,
    pub breaker: Breaker,
    in_flight: AtomicU32,
    /// Exponentially weighted latency in µs (0: never measured).
    latency_us: AtomicU64,
    /// When it was last measured (ms on [`clock::millis`]).
    latency_at: AtomicU64,
    retries: TpsBudget,
    /// When the next active health check is due (ms on [`clock::millis`]).
    next_check: AtomicU64,
    /// The provider's last answer for this target rejected the gateway's credentials.
    credentials_rejected: AtomicBool,
}

impl TargetHealth {
    fn new(name: Arc<str>, budget: &RetryBudgetSettings) -> Self {
        Self {
            breaker: Breaker::new(name.clone()),
            name,
            in_flight: AtomicU32::new(0),
            latency_us: AtomicU64::new(0),
            latency_at: AtomicU64::new(0),
            retries: TpsBudget::new(BUDGET_WINDOW, budget.min_per_second, budget.ratio),
            next_check: AtomicU64::new(0),
            credentials_rejected: AtomicBool::new(false),
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

    /// Recent latency; zero (worth trying) when never measured or not for a while, so a
    /// target that was slow once is measured again instead of avoided for ever.
    pub fn latency(&self) -> Duration {
        let measured_at = self.latency_at.load(Ordering::Relaxed);
        if clock::millis().saturating_sub(measured_at) > as_millis(LATENCY_STALE) {
            return Duration::ZERO;
        }
        Duration::from_micros(self.latency_us.load(Ordering::Relaxed))
    }

    /// Folds in one measurement (weight 0.3: about the last five requests count).
    pub fn observe_latency(&self, latency: Duration) {
        self.latency_at.store(clock::millis(), Ordering::Relaxed);
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

    /// Whether a health check is due; if so, the next one is booked `interval` later (so
    /// a target shared by several models is checked once).
    pub fn claim_check(&self, interval: Duration) -> bool {
        let now = clock::millis();
        let due = self.next_check.load(Ordering::Relaxed);
        now >= due
            && self
                .next_check
                .compare_exchange(
                    due,
                    now + as_millis(interval),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// A failed attempt counts as slow (at least [`FAILURE_LATENCY`]): a target that fails
    /// fast must not look fast to the lowest-latency strategy.
    pub fn observe_failure(&self, took: Duration) {
        self.observe_latency(took.max(FAILURE_LATENCY));
    }

    /// Whether the provider accepted the gateway's credentials at its last answer for this
    /// target. A rejection is a configuration fault someone must fix: it is logged at ERROR
    /// when it starts (once, not per request), and at INFO when it ends.
    pub fn observe_credentials(&self, rejected: bool) {
        if self.credentials_rejected.swap(rejected, Ordering::Relaxed) == rejected {
            return;
        }
        if rejected {
            tracing::error!(
                target_name = &*self.name,
                "the provider rejected the gateway's credentials for this target: check the provider's api_key"
            );
        } else {
            tracing::info!(
                target_name = &*self.name,
                "the provider accepts the gateway's credentials again"
            );
        }
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

impl InFlight {
    pub fn health(&self) -> &TargetHealth {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every target's health entry, by name. Entries of targets a reload removed stay (a few
/// hundred bytes each), so a target that comes back keeps its history.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Arc<TargetHealth> {
        Arc::new(TargetHealth::new(
            "p/m".into(),
            &RetryBudgetSettings::default(),
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_is_due_once_per_interval() {
        let health = health();
        let interval = Duration::from_secs(30);
        assert!(health.claim_check(interval), "due at once");
        assert!(
            !health.claim_check(interval),
            "booked: a second model sharing the target waits"
        );
        tokio::time::advance(Duration::from_millis(29_999)).await;
        assert!(!health.claim_check(interval));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(health.claim_check(interval));
        assert!(!health.claim_check(interval));
    }

    #[tokio::test(start_paused = true)]
    async fn latency_is_averaged_failures_look_slow_and_stale_latency_is_forgotten() {
        let health = health();
        assert_eq!(
            health.latency(),
            Duration::ZERO,
            "never measured: worth trying"
        );
        health.observe_latency(Duration::from_millis(100));
        health.observe_latency(Duration::from_millis(200));
        // 0.7 × 100 ms + 0.3 × 200 ms.
        assert_eq!(health.latency(), Duration::from_millis(130));
        health.observe_failure(Duration::from_millis(10));
        assert!(
            health.latency() > Duration::from_secs(1),
            "a fast failure is not fast"
        );
        tokio::time::advance(LATENCY_STALE).await;
        assert!(
            health.latency() > Duration::ZERO,
            "still fresh at the limit"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(health.latency(), Duration::ZERO, "stale: measured again");
    }
}
