//! The one clock every time-dependent part of the gateway reads.
//!
//! Monotonic time is tokio's, so `tokio::time::pause()` controls it: breakers, latency
//! tracking, health-check intervals, retry pauses, timeouts, in-memory rate limits and
//! request timings are unit-tested under paused time instead of with real sleeps. Wall
//! time (calendar periods of budgets, key expiry, `created` fields) is the system's, read
//! here too so that `clippy.toml` can forbid the raw clocks everywhere else.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use tokio::time::Instant;

/// Now, on the monotonic clock.
#[expect(
    clippy::disallowed_methods,
    reason = "this module is the one place that reads the clock"
)]
pub fn now() -> Instant {
    Instant::now()
}

/// Milliseconds since an origin before this clock was first read, never 0 (so 0 can mean
/// "never" in an atomic). For state kept in atomics, such as a breaker's next probe.
///
/// The origin is set an hour before the first reading: a runtime whose time is paused
/// counts from when it started, which may be before the first reading (tests run many),
/// and its readings must still come after the origin.
pub fn millis() -> u64 {
    const BEFORE: Duration = Duration::from_secs(3600);
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = ORIGIN.get_or_init(|| {
        let first = now();
        first.checked_sub(BEFORE).unwrap_or(first)
    });
    as_millis(now().saturating_duration_since(*origin)) + 1
}

/// A duration in whole milliseconds, saturating.
pub fn as_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The wall-clock time.
#[expect(
    clippy::disallowed_methods,
    reason = "this module is the one place that reads the clock"
)]
pub fn wall() -> SystemTime {
    SystemTime::now()
}

/// Seconds since the Unix epoch, for `created` fields.
pub fn unix_seconds() -> u64 {
    wall().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The monotonic clock in the shape governor's rate limiters take, so its GCRA follows
/// paused time too.
#[derive(Debug, Clone, Copy, Default)]
pub struct GovernorClock;

impl governor::clock::Clock for GovernorClock {
    type Instant = std::time::Instant;

    fn now(&self) -> std::time::Instant {
        now().into_std()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_paused_time() {
        let (start, start_ms) = (now(), millis());
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(now() - start, Duration::from_secs(90));
        assert_eq!(millis() - start_ms, 90_000);
    }
}
