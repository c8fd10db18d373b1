//! Rate limits and budgets: what a request must reserve before it runs, and the settling
//! of that reservation with what it really used.
//!
//! A [`Plan`] lists the checks a request is subject to (per key, per team, optionally per
//! model): requests per minute (GCRA), tokens per minute (reserved at the prompt's token
//! count plus the completion budget, settled with the real usage, the rest refunded),
//! requests in flight, and USD budgets per day, month and in total (reserved at the
//! request's most expensive outcome, settled at its real cost). Either every check admits
//! the request or none keeps anything. The state outlives config reloads (it lives in
//! `Shared`).

mod memory;
mod redis;
pub mod tokens;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::clock;
use crate::config::schema::{LimitsBackend, LimitsSettings, OnFailure};
use crate::metrics::Metrics;
pub use memory::MemoryLimits;
use redis::RedisLimits;

/// One thing a request must reserve.
#[derive(Debug, Clone)]
pub enum Check {
    Requests {
        scope: Arc<str>,
        per_minute: u32,
    },
    Tokens {
        scope: Arc<str>,
        per_minute: u64,
        amount: u64,
    },
    Concurrency {
        scope: Arc<str>,
        max: u32,
    },
    Budget {
        scope: Arc<str>,
        period: Period,
        limit_usd: f64,
        amount_usd: f64,
    },
}

/// The scope a key's limits, budgets and usage are kept under.
pub fn key_scope(name: &str) -> String {
    format!("key '{name}'")
}

/// The scope a team's limits, budgets and usage are kept under.
pub fn team_scope(name: &str) -> String {
    format!("team '{name}'")
}

/// A budget's accounting period, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
    Total,
}

impl Period {
    pub const ALL: [Self; 3] = [Self::Day, Self::Month, Self::Total];

    /// The id of the period `now` falls in: `2026-11-21`, `2026-11` or `total`. Every
    /// limited request asks, so the ids of the current UTC day are made once.
    pub fn id(self, now: SystemTime) -> Arc<str> {
        static TODAY: Mutex<Option<(u64, [Arc<str>; 3])>> = Mutex::new(None);
        let day = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 86_400);
        let mut today = TODAY.lock().unwrap_or_else(|p| p.into_inner());
        let ids = match &*today {
            Some((cached, ids)) if *cached == day => ids,
            _ => {
                let date = humantime::format_rfc3339_seconds(now).to_string();
                let ids = [&date[..10], &date[..7], "total"].map(Arc::from);
                &today.insert((day, ids)).1
            }
        };
        // In declaration order: Day, Month, Total.
        ids[self as usize].clone()
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Day => "daily",
            Self::Month => "monthly",
            Self::Total => "total",
        }
    }
}

impl Check {
    /// A bounded name for the kind of limit, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Requests { .. } => "requests_per_minute",
            Self::Tokens { .. } => "tokens_per_minute",
            Self::Concurrency { .. } => "in_flight",
            Self::Budget { period, .. } => match period {
                Period::Day => "budget_daily",
                Period::Month => "budget_monthly",
                Period::Total => "budget_total",
            },
        }
    }
}

impl Rejection {
    /// A bounded name for what refused the request, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RateLimited { kind, .. } | Self::OverBudget { kind, .. } => kind,
            Self::Unavailable => "store_unavailable",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub checks: Vec<Check>,
    /// Scopes whose usage and spend the settlement books (the key and its team), per day,
    /// month and in total, whether or not they have a budget.
    pub accounts: Vec<Arc<str>>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.checks.is_empty() && self.accounts.is_empty()
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    /// A rate limit: worth retrying after `retry_after`.
    RateLimited {
        limit: String,
        retry_after: Duration,
        /// The kind of limit, for metrics ([`Check::kind`]).
        kind: &'static str,
    },
    /// A budget is spent: retrying does not help until the period ends.
    OverBudget { budget: String, kind: &'static str },
    /// The shared store is down and the deployment fails closed.
    Unavailable,
}

/// The state of one limit after a request was admitted, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub limit: u64,
    pub remaining: u64,
    /// Until the limit is fully replenished.
    pub reset: Duration,
}

/// The tightest request and token windows of an admitted request.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LimitStatus {
    pub requests: Option<Window>,
    pub tokens: Option<Window>,
}

impl LimitStatus {
    /// Keeps the window with the fewest remaining.
    fn tighten(slot: &mut Option<Window>, window: Window) {
        if slot.is_none_or(|current| window.remaining < current.remaining) {
            *slot = Some(window);
        }
    }
}

/// OpenAI's format for reset times: `1s`, `250ms`, `6m0s`.
pub fn format_reset(duration: Duration) -> String {
    let millis = duration.as_millis();
    match millis {
        0..=999 => format!("{millis}ms"),
        1_000..=59_999 => {
            let secs = duration.as_secs_f64();
            let text = format!("{secs:.3}");
            format!("{}s", text.trim_end_matches('0').trim_end_matches('.'))
        }
        _ => format!("{}m{}s", millis / 60_000, (millis % 60_000) / 1000),
    }
}

/// What a request holds between admission and settlement, in the store that admitted it.
pub struct Admission {
    pub status: LimitStatus,
    held: Held,
}

enum Held {
    Memory(Vec<memory::Held>),
    Shared(redis::Held),
}

/// What a finished request really used.
#[derive(Debug, Clone, Copy, Default)]
pub struct Used {
    pub tokens: u64,
    pub cost_usd: f64,
}

/// What a scope used in one period: requests, tokens (prompt and completion) and USD.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Usage {
    pub requests: u64,
    pub tokens: u64,
    pub cost_usd: f64,
}

impl Usage {
    fn add(&mut self, used: Used) {
        self.requests += 1;
        self.tokens += used.tokens;
        self.cost_usd += used.cost_usd;
    }
}

/// The shared store did not answer (the memory store always does).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the shared limit store (Redis) did not answer")]
pub struct StoreUnavailable;

/// The limit store the deployment uses: in process, or shared through Redis with the
/// in-process store as the fallback of a deployment that fails open.
#[derive(Default)]
pub struct Limiter {
    memory: MemoryLimits,
    shared: Option<Arc<SharedStore>>,
}

struct SharedStore {
    redis: RedisLimits,
    timeout: Duration,
    on_failure: OnFailure,
    metrics: Arc<Metrics>,
    degraded: AtomicBool,
    /// While degraded, Redis is tried again from this time on (ms on [`clock::millis`]): one
    /// probe a second instead of a timeout on every request.
    probe_at_ms: AtomicU64,
}

/// The pauses before each attempt at a shared settlement.
const SETTLE_RETRIES: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(250),
    Duration::from_secs(1),
    Duration::from_secs(4),
];

/// How long a degraded store is left alone before the next probe.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

impl Limiter {
    /// The store `settings` ask for. [restart]: a reload does not change it.
    pub fn new(settings: &LimitsSettings, metrics: Arc<Metrics>) -> Result<Self, String> {
        let shared = match (&settings.backend, &settings.redis) {
            (LimitsBackend::Redis, Some(config)) => Some(Arc::new(SharedStore {
                redis: RedisLimits::new(&config.url, config.timeout, &config.key_prefix)?,
                timeout: config.timeout,
                on_failure: config.on_failure,
                metrics,
                degraded: AtomicBool::new(false),
                probe_at_ms: AtomicU64::new(0),
            })),
            _ => None,
        };
        Ok(Self {
            memory: MemoryLimits::new(),
            shared,
        })
    }

    /// Reserves everything in `plan`, or nothing. A plan with nothing to check (a key with
    /// no limits) costs no round trip: its accounts are booked at settlement.
    pub async fn reserve(&self, plan: &Plan) -> Result<Admission, Rejection> {
        if let Some(shared) = &self.shared {
            if shared.worth_trying() {
                let held = shared.redis.hold(plan);
                if plan.checks.is_empty() {
                    return Ok(Admission {
                        status: LimitStatus::default(),
                        held: Held::Shared(held),
                    });
                }
                // Dropped without an answer (a timeout, an error, or the request went
                // away mid-call), the reservation may still have been made: release it.
                let mut unanswered = Unanswered(Some((shared.clone(), held.unanswered())));
                let answer =
                    tokio::time::timeout(shared.timeout, shared.redis.reserve(plan, &held)).await;
                match answer {
                    Ok(Ok(result)) => {
                        unanswered.0 = None;
                        shared.succeeded();
                        return result.map(|status| Admission {
                            status,
                            held: Held::Shared(held),
                        });
                    }
                    Ok(Err(error)) => shared.failed(&error.to_string()),
                    Err(_) => shared.failed("no answer within the timeout"),
                }
            }
            if shared.on_failure == OnFailure::FailClosed {
                return Err(Rejection::Unavailable);
            }
        }
        let held = self.memory.reserve(plan, clock::wall())?;
        Ok(held)
    }

    /// Gives back what the request did not use, and releases its concurrency slots. A
    /// shared settlement runs in the background, bounded by the store's timeout.
    pub fn settle(&self, admission: Admission, used: Used) {
        match admission.held {
            Held::Memory(held) => memory::settle(held, used),
            Held::Shared(held) => {
                if let Some(shared) = &self.shared {
                    shared.settle(held, used);
                }
            }
        }
    }

    /// Usage of a scope ([`key_scope`], [`team_scope`]) today, this month and in total.
    pub async fn usage(&self, scope: &str) -> Result<[Usage; 3], StoreUnavailable> {
        match &self.shared {
            Some(shared) => tokio::time::timeout(shared.timeout, shared.redis.usage(scope))
                .await
                .ok()
                .and_then(Result::ok)
                .ok_or(StoreUnavailable),
            None => Ok(self.memory.usage(scope)),
        }
    }
}

/// A shared reservation sent without an answer yet; see [`Limiter::reserve`].
struct Unanswered(Option<(Arc<SharedStore>, redis::Held)>);

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some((shared, held)) = self.0.take() {
            shared.settle(held, Used::default());
        }
    }
}

impl SharedStore {
    /// Settles in the background. Settling is idempotent, so a failed attempt is sent
    /// again, three times over about five seconds: a slot or a budget hold must not stay
    /// taken for the life of a hold because Redis stalled for a moment.
    fn settle(self: &Arc<Self>, held: redis::Held, used: Used) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let shared = self.clone();
        runtime.spawn(async move {
            for pause in SETTLE_RETRIES {
                tokio::time::sleep(pause).await;
                let settled =
                    tokio::time::timeout(shared.timeout, shared.redis.settle(&held, used)).await;
                if matches!(settled, Ok(Ok(()))) {
                    return;
                }
                shared.metrics.count_limits_error();
            }
            // Unsettled holds expire on their own; tokens come back as the bucket refills.
        });
    }

    fn worth_trying(&self) -> bool {
        !self.degraded.load(Ordering::Relaxed)
            || clock::millis() >= self.probe_at_ms.load(Ordering::Relaxed)
    }

    fn failed(&self, error: &str) {
        self.metrics.count_limits_error();
        self.probe_at_ms.store(
            clock::millis() + PROBE_INTERVAL.as_millis() as u64,
            Ordering::Relaxed,
        );
        if !self.degraded.swap(true, Ordering::Relaxed) {
            self.metrics.set_limits_degraded(true);
            let policy = match self.on_failure {
                OnFailure::FailOpen => "failing open: each replica applies its own limits",
                OnFailure::FailClosed => "failing closed: limited requests get 503",
            };
            tracing::warn!(%error, "the shared rate-limit store (Redis) is unavailable, {policy}");
        }
    }

    fn succeeded(&self) {
        if self.degraded.swap(false, Ordering::Relaxed) {
            self.metrics.set_limits_degraded(false);
            tracing::warn!(
                "the shared rate-limit store (Redis) is back: shared limits apply again"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_read_like_openais() {
        assert_eq!(format_reset(Duration::from_millis(250)), "250ms");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_reset(Duration::from_secs(1)), "1s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
    }

    #[test]
    fn periods_are_utc_dates() {
        let at = humantime::parse_rfc3339("2026-11-21T23:59:59Z").unwrap();
        assert_eq!(&*Period::Day.id(at), "2026-11-21");
        assert_eq!(&*Period::Month.id(at), "2026-11");
        assert_eq!(&*Period::Total.id(at), "total");
        let next = humantime::parse_rfc3339("2026-12-01T00:00:00Z").unwrap();
        assert_eq!(&*Period::Month.id(next), "2026-12");
    }
}
