//! The shared limit store: the same checks as the memory store, kept in Redis so every
//! replica sees the same counts. Reserving is one Lua script (`reserve.lua`: every check,
//! then every write, atomically), and so is settling (`settle.lua`), so two replicas can
//! never both admit past a limit. Time is Redis's clock, the same for every replica.
//!
//! Holds that are never settled (a replica that died mid-request) expire on their own:
//! requests in flight and budget reservations carry an expiry.
//!
//! Keys (under the configured prefix): `rpm:<scope>:<limit>` (GCRA time), `tpm:<scope>:
//! <limit>` (bucket), `inflight:<scope>` (sorted set of holds), `usage:<scope>:<period>`
//! (a hash of requests, tokens, cost and the budget holds `r:<id>`; day and month tallies
//! expire 40 days after they were created), `done:<id>` (a settled request: settling is
//! idempotent, so it is retried, and a reservation Redis runs only after its request was
//! given up takes nothing).

use std::time::{Duration, SystemTime};

use redis::aio::ConnectionManager;
use redis::{RedisError, Script, Value};

use super::{Check, LimitStatus, Period, Plan, Rejection, Usage, Used, Window};

/// A hold lasts at most this long (the longest request a limit waits for).
const HOLD: Duration = Duration::from_secs(15 * 60);
/// Day and month tallies are kept a while after their period for the admin API.
const TALLY_TTL: Duration = Duration::from_secs(40 * 24 * 3600);

pub struct RedisLimits {
    connection: ConnectionManager,
    prefix: String,
    reserve: Script,
    settle: Script,
}

/// What a request holds in Redis until it settles. Chosen before the reservation is sent,
/// so that a reservation whose answer never came can still be released.
pub struct Held {
    id: String,
    /// Per check: key, kind, limit, amount.
    items: Vec<(String, &'static str, String, String)>,
    /// The tallies (key, ttl in ms) the settlement books the request's usage on.
    accounts: Vec<(String, u64)>,
    /// The key that marks the request as settled (see settle.lua).
    done: String,
}

impl Held {
    /// What a reservation whose answer never came may hold: its in-flight slots and budget
    /// holds, given back by a settlement of nothing. Tokens are left alone (they may never
    /// have been taken; the bucket refills within a minute) and nothing is booked.
    pub fn unanswered(&self) -> Self {
        Self {
            id: self.id.clone(),
            items: self
                .items
                .iter()
                .filter(|item| matches!(item.1, "c" | "b"))
                .cloned()
                .collect(),
            accounts: Vec::new(),
            done: self.done.clone(),
        }
    }
}

impl RedisLimits {
    /// Connects lazily: the gateway starts (and fails open) even while Redis is down.
    pub fn new(url: &str, timeout: Duration, prefix: &str) -> Result<Self, String> {
        Ok(Self {
            connection: crate::shared_store::connect(url, timeout)?,
            prefix: prefix.to_owned(),
            reserve: Script::new(include_str!("reserve.lua")),
            settle: Script::new(include_str!("settle.lua")),
        })
    }

    fn key(&self, check: &Check, now: SystemTime) -> String {
        let prefix = &self.prefix;
        match check {
            Check::Requests { scope, per_minute } => format!("{prefix}rpm:{scope}:{per_minute}"),
            Check::Tokens {
                scope, per_minute, ..
            } => format!("{prefix}tpm:{scope}:{per_minute}"),
            Check::Concurrency { scope, .. } => format!("{prefix}inflight:{scope}"),
            Check::Budget { scope, period, .. } => tally_key(prefix, scope, *period, now),
        }
    }

    /// What `plan` holds once reserved: a new request id, the state of each check, and
    /// the tallies its usage is booked on.
    pub fn hold(&self, plan: &Plan) -> Held {
        let now = crate::clock::wall();
        let items = plan
            .checks
            .iter()
            .map(|check| {
                let (kind, limit, amount) = encode(check);
                (self.key(check, now), kind, limit, amount)
            })
            .collect();
        let accounts = plan
            .accounts
            .iter()
            .flat_map(|scope| {
                Period::ALL.map(|period| (tally_key(&self.prefix, scope, period, now), ttl(period)))
            })
            .collect();
        let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        Held {
            done: format!("{}done:{id}", self.prefix),
            id,
            items,
            accounts,
        }
    }

    /// Reserves every check of `held` in one round trip. The outer error is Redis failing;
    /// the inner one a limit refusing (`plan` names it).
    pub async fn reserve(
        &self,
        plan: &Plan,
        held: &Held,
    ) -> Result<Result<LimitStatus, Rejection>, RedisError> {
        let mut invocation = self.reserve.prepare_invoke();
        invocation
            .arg(&held.id)
            .arg(HOLD.as_millis() as u64)
            .arg(&held.done);
        for (key, kind, limit, amount) in &held.items {
            invocation.key(key).arg(*kind).arg(limit).arg(amount);
        }
        let mut connection = self.connection.clone();
        let reply: Vec<Value> = invocation.invoke_async(&mut connection).await?;
        Ok(decode(&reply, plan))
    }

    /// Gives back what the request did not use and books what it used.
    pub async fn settle(&self, held: &Held, used: Used) -> Result<(), RedisError> {
        let mut invocation = self.settle.prepare_invoke();
        // Requests per minute have nothing to give back.
        let holds: Vec<_> = held.items.iter().filter(|item| item.1 != "r").collect();
        invocation
            .arg(&held.id)
            .arg(used.tokens)
            .arg(nano_usd(used.cost_usd))
            .arg(holds.len())
            .arg(&held.done);
        for (key, kind, limit, amount) in holds {
            invocation.key(key).arg(*kind).arg(limit).arg(amount);
        }
        for (key, ttl) in &held.accounts {
            invocation.key(key).arg(*ttl);
        }
        let mut connection = self.connection.clone();
        invocation
            .invoke_async::<i64>(&mut connection)
            .await
            .map(drop)
    }

    /// Usage of a scope in the current day, month and in total, in one round trip.
    pub async fn usage(&self, scope: &str) -> Result<[Usage; 3], RedisError> {
        let now = crate::clock::wall();
        let mut pipe = redis::pipe();
        for period in Period::ALL {
            pipe.cmd("HMGET")
                .arg(tally_key(&self.prefix, scope, period, now))
                .arg(&["requests", "tokens", "cost"][..]);
        }
        let mut connection = self.connection.clone();
        let replies: Vec<(Option<u64>, Option<u64>, Option<i64>)> =
            pipe.query_async(&mut connection).await?;
        let mut usage = [Usage::default(); 3];
        for (slot, (requests, tokens, cost)) in usage.iter_mut().zip(replies) {
            *slot = Usage {
                requests: requests.unwrap_or(0),
                tokens: tokens.unwrap_or(0),
                cost_usd: cost.unwrap_or(0) as f64 / NANO,
            };
        }
        Ok(usage)
    }
}

/// Nano-USD per USD. Costs are kept as integers of nano-USD in Redis (exact sums, and
/// HINCRBY is cheaper than HINCRBYFLOAT): up to $9.2 billion per tally.
const NANO: f64 = 1e9;

fn nano_usd(usd: f64) -> i64 {
    (usd * NANO).round() as i64
}

fn tally_key(prefix: &str, scope: &str, period: Period, now: SystemTime) -> String {
    format!("{prefix}usage:{scope}:{}", period.id(now))
}

/// How long a period's tally is kept after its last write, in ms (0: for ever).
fn ttl(period: Period) -> u64 {
    match period {
        Period::Total => 0,
        Period::Day | Period::Month => TALLY_TTL.as_millis() as u64,
    }
}

/// A check as the scripts read it: kind, limit, amount.
fn encode(check: &Check) -> (&'static str, String, String) {
    match check {
        Check::Requests { per_minute, .. } => ("r", per_minute.to_string(), "1".into()),
        Check::Tokens {
            per_minute, amount, ..
        } => ("t", per_minute.to_string(), amount.to_string()),
        Check::Concurrency { max, .. } => ("c", max.to_string(), "1".into()),
        Check::Budget {
            limit_usd,
            amount_usd,
            ..
        } => (
            "b",
            nano_usd(*limit_usd).to_string(),
            nano_usd(*amount_usd).to_string(),
        ),
    }
}

fn int(value: &Value) -> i64 {
    match value {
        Value::Int(n) => *n,
        Value::BulkString(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

/// The script's answer: the tightest windows, or which check refused.
fn decode(reply: &[Value], plan: &Plan) -> Result<LimitStatus, Rejection> {
    if reply.first().map(int) == Some(0) {
        let index = usize::try_from(int(reply.get(1).unwrap_or(&Value::Nil))).unwrap_or(1);
        let retry_ms = int(reply.get(2).unwrap_or(&Value::Nil));
        let check = plan.checks.get(index.saturating_sub(1));
        return Err(match check {
            Some(Check::Budget {
                scope,
                period,
                limit_usd,
                ..
            }) => Rejection::OverBudget {
                budget: format!("the {} budget of ${limit_usd} for {scope}", period.name()),
                kind: check.map_or("budget", Check::kind),
            },
            _ => Rejection::RateLimited {
                limit: check.map_or_else(|| "a rate limit".to_owned(), describe),
                retry_after: Duration::from_millis(u64::try_from(retry_ms).unwrap_or(1000)),
                kind: check.map_or("unknown", Check::kind),
            },
        });
    }
    let mut status = LimitStatus::default();
    for entry in reply[1..].chunks_exact(4) {
        let kind = match &entry[0] {
            Value::BulkString(bytes) => bytes.as_slice(),
            _ => b"",
        };
        let window = Window {
            limit: u64::try_from(int(&entry[1])).unwrap_or(0),
            remaining: u64::try_from(int(&entry[2])).unwrap_or(0),
            reset: Duration::from_millis(u64::try_from(int(&entry[3])).unwrap_or(0)),
        };
        let slot = if kind == b"r" {
            &mut status.requests
        } else {
            &mut status.tokens
        };
        LimitStatus::tighten(slot, window);
    }
    Ok(status)
}

fn describe(check: &Check) -> String {
    match check {
        Check::Requests { scope, per_minute } => {
            format!("{per_minute} requests per minute for {scope}")
        }
        Check::Tokens {
            scope,
            per_minute,
            amount,
        } => {
            format!("{per_minute} tokens per minute for {scope} (this request needs {amount})")
        }
        Check::Concurrency { scope, max } => format!("{max} requests in flight for {scope}"),
        Check::Budget { scope, .. } => format!("the budget of {scope}"),
    }
}
