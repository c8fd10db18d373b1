//! The per-process limit store: GCRA from governor for requests per minute, a token bucket
//! with refunds for tokens per minute, counters for requests in flight, and a tally of
//! usage and spend per scope and period (which budgets are checked against). Entries nobody
//! used for a while are evicted (moka), so keys that stop calling cost no memory. Tallies
//! kept here are per process and lost at restart; the Redis backend shares and keeps them.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use moka::sync::Cache;

use crate::clock::{self, GovernorClock, Instant};

use super::{Check, LimitStatus, Period, Plan, Rejection, Usage, Used, Window};

type Gcra = RateLimiter<NotKeyed, InMemoryState, GovernorClock, StateInformationMiddleware>;

/// A scope and a period id.
type TallyId = (Arc<str>, Arc<str>);

/// Rate-limit state idle this long is forgotten.
const IDLE: Duration = Duration::from_secs(15 * 60);
/// Tallies are kept at least as long as the longest period they count.
const TALLY_IDLE: Duration = Duration::from_secs(40 * 24 * 3600);

pub struct MemoryLimits {
    // Keyed by the limit's value too: a reload that changes a limit starts afresh.
    gcra: Cache<(Arc<str>, u32), Arc<Gcra>>,
    buckets: Cache<(Arc<str>, u64), Arc<Mutex<Bucket>>>,
    in_flight: Cache<Arc<str>, Arc<AtomicU32>>,
    tallies: Cache<TallyId, Arc<Mutex<Tally>>>,
}

/// What an admitted request holds until it settles.
pub enum Held {
    Tokens {
        bucket: Arc<Mutex<Bucket>>,
        amount: u64,
    },
    Slot(Arc<AtomicU32>),
    Budget {
        tally: Arc<Mutex<Tally>>,
        amount: f64,
    },
    /// A period's tally that books the request's usage when it settles.
    Account(Arc<Mutex<Tally>>),
}

impl MemoryLimits {
    pub fn new() -> Self {
        Self {
            gcra: Cache::builder().time_to_idle(IDLE).build(),
            buckets: Cache::builder().time_to_idle(IDLE).build(),
            in_flight: Cache::builder().time_to_idle(IDLE).build(),
            tallies: Cache::builder().time_to_idle(TALLY_IDLE).build(),
        }
    }

    /// Reserves every check of `plan`, or gives back what it took and refuses. Requests
    /// per minute are checked last: a GCRA admission cannot be taken back. An admitted
    /// request also holds the tallies of its accounts, which its settlement books.
    pub fn reserve(&self, plan: &Plan, now: SystemTime) -> Result<super::Admission, Rejection> {
        let mut held = Vec::new();
        let mut status = LimitStatus::default();
        for check in &plan.checks {
            if let Err(rejection) = self.hold(check, now, &mut held, &mut status) {
                release(held);
                return Err(rejection);
            }
        }
        for check in &plan.checks {
            if let Check::Requests { scope, per_minute } = check
                && let Err(rejection) = self.admit_request(scope, *per_minute, &mut status)
            {
                release(held);
                return Err(rejection);
            }
        }
        for scope in &plan.accounts {
            for period in Period::ALL {
                held.push(Held::Account(self.tally(scope, period, now)));
            }
        }
        Ok(super::Admission {
            status,
            held: super::Held::Memory(held),
        })
    }

    /// Usage of a scope today, this month and in total (this process only).
    pub fn usage(&self, scope: &str) -> [Usage; 3] {
        let now = clock::wall();
        let scope: Arc<str> = Arc::from(scope);
        Period::ALL.map(|period| {
            self.tallies
                .get(&(scope.clone(), period.id(now)))
                .map_or_else(Usage::default, |tally| lock(&tally).used)
        })
    }

    fn tally(&self, scope: &Arc<str>, period: Period, now: SystemTime) -> Arc<Mutex<Tally>> {
        self.tallies
            .get_with((scope.clone(), period.id(now)), Arc::default)
    }

    fn hold(
        &self,
        check: &Check,
        now: SystemTime,
        held: &mut Vec<Held>,
        status: &mut LimitStatus,
    ) -> Result<(), Rejection> {
        match check {
            Check::Requests { .. } => {}
            Check::Tokens {
                scope,
                per_minute,
                amount,
            } => {
                let bucket = self.buckets.get_with((scope.clone(), *per_minute), || {
                    Arc::new(Mutex::new(Bucket::new(*per_minute)))
                });
                let window = lock(&bucket).reserve(*amount).map_err(|retry_after| Rejection::RateLimited {
                    limit: format!("{per_minute} tokens per minute for {scope} (this request needs {amount})"),
                    retry_after,
                    kind: check.kind(),
                })?;
                LimitStatus::tighten(&mut status.tokens, window);
                held.push(Held::Tokens {
                    bucket,
                    amount: *amount,
                });
            }
            Check::Concurrency { scope, max } => {
                let count = self.in_flight.get_with(scope.clone(), Arc::default);
                if count.fetch_add(1, Ordering::AcqRel) >= *max {
                    count.fetch_sub(1, Ordering::AcqRel);
                    return Err(Rejection::RateLimited {
                        limit: format!("{max} requests in flight for {scope}"),
                        retry_after: Duration::from_secs(1),
                        kind: check.kind(),
                    });
                }
                held.push(Held::Slot(count));
            }
            Check::Budget {
                scope,
                period,
                limit_usd,
                amount_usd,
            } => {
                let tally = self.tally(scope, *period, now);
                {
                    let mut tally = lock(&tally);
                    if tally.used.cost_usd + tally.reserved_usd + amount_usd > *limit_usd {
                        return Err(Rejection::OverBudget {
                            budget: format!(
                                "the {} budget of ${limit_usd} for {scope}",
                                period.name()
                            ),
                            kind: check.kind(),
                        });
                    }
                    tally.reserved_usd += amount_usd;
                }
                held.push(Held::Budget {
                    tally,
                    amount: *amount_usd,
                });
            }
        }
        Ok(())
    }

    fn admit_request(
        &self,
        scope: &Arc<str>,
        per_minute: u32,
        status: &mut LimitStatus,
    ) -> Result<(), Rejection> {
        let limiter = self.gcra.get_with((scope.clone(), per_minute), || {
            let rate = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
            Arc::new(
                RateLimiter::direct_with_clock(Quota::per_minute(rate), GovernorClock)
                    .with_middleware::<StateInformationMiddleware>(),
            )
        });
        match limiter.check() {
            Ok(state) => {
                let remaining = u64::from(state.remaining_burst_capacity());
                let limit = u64::from(per_minute);
                let reset =
                    Duration::from_secs(60).mul_f64((limit - remaining) as f64 / limit as f64);
                LimitStatus::tighten(
                    &mut status.requests,
                    Window {
                        limit,
                        remaining,
                        reset,
                    },
                );
                Ok(())
            }
            Err(not_until) => Err(Rejection::RateLimited {
                limit: format!("{per_minute} requests per minute for {scope}"),
                retry_after: not_until.wait_time_from(GovernorClock.now()),
                kind: "requests_per_minute",
            }),
        }
    }
}

impl Default for MemoryLimits {
    fn default() -> Self {
        Self::new()
    }
}

/// Returns unused tokens (or charges the overrun), frees slots, releases budget
/// reservations and books the request's usage on its accounts. Every bucket of the plan is
/// charged the request's whole usage.
pub fn settle(held: Vec<Held>, used: Used) {
    for item in held {
        match item {
            Held::Tokens { bucket, amount } => lock(&bucket).settle(amount, used.tokens),
            Held::Slot(count) => {
                count.fetch_sub(1, Ordering::AcqRel);
            }
            Held::Budget { tally, amount } => {
                let mut tally = lock(&tally);
                tally.reserved_usd = (tally.reserved_usd - amount).max(0.0);
            }
            Held::Account(tally) => lock(&tally).used.add(used),
        }
    }
}

/// Gives back everything a refused request took.
fn release(held: Vec<Held>) {
    settle(held, Used::default());
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Tokens per minute: a bucket of `capacity` refilled continuously, from which requests
/// reserve their worst case and to which they return what they did not use.
pub struct Bucket {
    capacity: f64,
    tokens: f64,
    per_second: f64,
    updated: Instant,
}

impl Bucket {
    fn new(per_minute: u64) -> Self {
        Self {
            capacity: per_minute as f64,
            tokens: per_minute as f64,
            per_second: per_minute as f64 / 60.0,
            updated: clock::now(),
        }
    }

    fn refill(&mut self) {
        let now = clock::now();
        let elapsed = now.duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.updated = now;
    }

    fn window(&self) -> Window {
        let remaining = self.tokens.max(0.0);
        Window {
            limit: self.capacity as u64,
            remaining: remaining as u64,
            reset: Duration::from_secs_f64((self.capacity - remaining) / self.per_second),
        }
    }

    /// Takes `amount`, or says how long until it could.
    fn reserve(&mut self, amount: u64) -> Result<Window, Duration> {
        self.refill();
        let amount = amount as f64;
        if amount > self.capacity {
            // Never fits: retrying cannot help within a minute.
            return Err(Duration::from_secs(60));
        }
        if self.tokens < amount {
            return Err(Duration::from_secs_f64(
                (amount - self.tokens) / self.per_second,
            ));
        }
        self.tokens -= amount;
        Ok(self.window())
    }

    /// The request reserved `reserved` and used `used`: give back the difference (or take
    /// the overrun, which later requests then wait for).
    fn settle(&mut self, reserved: u64, used: u64) {
        self.refill();
        self.tokens = (self.tokens + reserved as f64 - used as f64).min(self.capacity);
    }
}

/// What a scope used in one period, and what admitted requests reserved of its budget.
#[derive(Default)]
pub struct Tally {
    used: Usage,
    reserved_usd: f64,
}

#[cfg(test)]
mod tests {
    use super::super::Period;
    use super::*;

    fn scope(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    fn plan(checks: Vec<Check>) -> Plan {
        Plan {
            checks,
            accounts: vec![],
        }
    }

    fn held(admission: super::super::Admission) -> Vec<Held> {
        match admission.held {
            super::super::Held::Memory(held) => held,
            super::super::Held::Shared(_) => unreachable!("the memory store holds in memory"),
        }
    }

    #[test]
    fn tokens_are_reserved_then_refunded() {
        let limits = MemoryLimits::new();
        let plan = plan(vec![Check::Tokens {
            scope: scope("key:a"),
            per_minute: 1000,
            amount: 600,
        }]);
        let first = limits.reserve(&plan, clock::wall()).unwrap();
        assert_eq!(first.status.tokens.unwrap().remaining, 400);
        assert!(
            limits.reserve(&plan, clock::wall()).is_err(),
            "600 more do not fit"
        );
        // The first request used only 100 of its 600: 500 come back.
        settle(
            held(first),
            Used {
                tokens: 100,
                cost_usd: 0.0,
            },
        );
        assert!(limits.reserve(&plan, clock::wall()).is_ok());
    }

    #[test]
    fn a_refusal_keeps_nothing() {
        let limits = MemoryLimits::new();
        let slot = Check::Concurrency {
            scope: scope("key:a"),
            max: 1,
        };
        let budget = |amount| Check::Budget {
            scope: scope("team:t"),
            period: Period::Day,
            limit_usd: 1.0,
            amount_usd: amount,
        };
        let over = plan(vec![slot.clone(), budget(2.0)]);
        assert!(matches!(
            limits.reserve(&over, clock::wall()),
            Err(Rejection::OverBudget { .. })
        ));
        // The slot taken before the budget refused was given back.
        // The team's spend is booked on its account.
        let fits = Plan {
            checks: vec![slot.clone(), budget(0.5)],
            accounts: vec![scope("team:t")],
        };
        let held_budget = limits.reserve(&fits, clock::wall()).unwrap();
        assert!(
            limits.reserve(&plan(vec![slot]), clock::wall()).is_err(),
            "one in flight"
        );
        settle(
            held(held_budget),
            Used {
                tokens: 0,
                cost_usd: 0.25,
            },
        );
        // 0.25 spent: 0.75 left.
        assert!(
            limits
                .reserve(&plan(vec![budget(0.8)]), clock::wall())
                .is_err()
        );
        assert!(
            limits
                .reserve(&plan(vec![budget(0.7)]), clock::wall())
                .is_ok()
        );
    }

    /// The wait a refused request is told, or a panic if it was admitted.
    fn refused(limits: &MemoryLimits, plan: &Plan) -> Duration {
        match limits.reserve(plan, clock::wall()) {
            Err(Rejection::RateLimited { retry_after, .. }) => retry_after,
            Err(other) => panic!("refused for another reason: {other:?}"),
            Ok(_) => panic!("admitted"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_per_minute_allow_a_burst_then_one_per_interval() {
        let limits = MemoryLimits::new();
        let plan = plan(vec![Check::Requests {
            scope: scope("key:a"),
            per_minute: 3,
        }]);
        for remaining in [2, 1, 0] {
            let admitted = limits.reserve(&plan, clock::wall()).unwrap();
            assert_eq!(admitted.status.requests.unwrap().remaining, remaining);
        }
        // GCRA: one request every 20 s once the burst is spent.
        assert_eq!(refused(&limits, &plan), Duration::from_secs(20));
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(refused(&limits, &plan), Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(limits.reserve(&plan, clock::wall()).is_ok());
        assert_eq!(refused(&limits, &plan), Duration::from_secs(20));
        // A minute of quiet refills the whole burst.
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..3 {
            assert!(limits.reserve(&plan, clock::wall()).is_ok());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_bucket_refills_continuously_and_says_when_a_request_fits() {
        let limits = MemoryLimits::new();
        let tokens = |amount| {
            plan(vec![Check::Tokens {
                scope: scope("key:a"),
                per_minute: 600,
                amount,
            }])
        };
        let all = limits.reserve(&tokens(600), clock::wall()).unwrap();
        let window = all.status.tokens.unwrap();
        assert_eq!(
            (window.remaining, window.reset),
            (0, Duration::from_secs(60))
        );
        // 10 tokens a second come back: 100 fit after 10 s, not before.
        assert_eq!(refused(&limits, &tokens(100)), Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(refused(&limits, &tokens(100)), Duration::from_secs(6));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(limits.reserve(&tokens(100), clock::wall()).is_ok());
        // More than the whole bucket never fits: come back in a minute (the most a
        // refill can take).
        assert_eq!(refused(&limits, &tokens(601)), Duration::from_secs(60));
        // An overrun is charged: the bucket goes below zero and later requests wait.
        settle(
            held(all),
            Used {
                tokens: 900,
                cost_usd: 0.0,
            },
        );
        assert_eq!(refused(&limits, &tokens(1)), Duration::from_secs_f64(30.1));
    }
}
