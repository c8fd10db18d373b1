//! A target's circuit breaker: closed (traffic flows), open (no traffic until a probe is
//! due), half-open (a few probes test the target; their success closes it, a failure opens
//! it again with a longer cooldown).
//!
//! The request path reads one atomic while the circuit is closed; outcomes take a short
//! lock to update the counts. State is per replica: every replica learns on its own,
//! from its own traffic, within `consecutive_failures` requests.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::clock::{self, as_millis};
use crate::config::schema::BreakerSettings;
use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::HalfOpen => "half_open",
            Self::Open => "open",
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Closed,
            1 => Self::HalfOpen,
            _ => Self::Open,
        }
    }
}

/// The rolling window is kept as this many buckets.
const BUCKETS: usize = 10;

pub struct Breaker {
    target: Arc<str>,
    state: AtomicU8,
    /// Open: when the first probe may go (ms on [`clock::millis`]). Half-open: when another probe
    /// may go if the last one never reported (its request was cancelled).
    probe_at: AtomicU64,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    consecutive_failures: u32,
    /// (bucket start in ms, successes, failures)
    window: [(u64, u32, u32); BUCKETS],
    /// Trips with less than a window of closed circuit between them: each one doubles
    /// the cooldown.
    trips_in_a_row: u32,
    /// When the circuit last closed after a trip.
    closed_at: u64,
    trips: u64,
    probes_left: u32,
}

/// What the breaker thinks of one request going to its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    Closed,
    Probe,
}

/// A breaker's state for the admin API.
#[derive(Debug, Serialize)]
pub struct View {
    pub state: State,
    pub consecutive_failures: u32,
    pub window_requests: u32,
    pub window_failures: u32,
    pub trips: u64,
    pub next_probe_in_ms: Option<u64>,
}

impl Breaker {
    pub fn new(target: Arc<str>) -> Self {
        Self {
            target,
            state: AtomicU8::new(State::Closed as u8),
            probe_at: AtomicU64::new(0),
            counts: Mutex::new(Counts::default()),
        }
    }

    /// Whether a request could go now, without taking a probe.
    pub fn is_available(&self) -> bool {
        match self.state() {
            State::Closed => true,
            State::Open => clock::millis() >= self.probe_at.load(Ordering::Relaxed),
            State::HalfOpen => {
                self.lock().probes_left > 0
                    || clock::millis() >= self.probe_at.load(Ordering::Relaxed)
            }
        }
    }

    /// Lets a request through, taking a probe when the circuit is not closed.
    pub fn pass(&self, settings: &BreakerSettings, metrics: &Metrics) -> Option<Pass> {
        if self.state() == State::Closed {
            return Some(Pass::Closed);
        }
        let now = clock::millis();
        let mut counts = self.lock();
        match self.state() {
            State::Closed => Some(Pass::Closed),
            State::Open if now >= self.probe_at.load(Ordering::Relaxed) => {
                counts.probes_left = settings.half_open_probes;
                self.set_state(State::HalfOpen, metrics, false);
                tracing::info!(target_name = &*self.target, "circuit half-open: probing");
                self.take_probe(&mut counts, settings, now)
            }
            State::Open => None,
            State::HalfOpen => self.take_probe(&mut counts, settings, now),
        }
    }

    fn take_probe(
        &self,
        counts: &mut Counts,
        settings: &BreakerSettings,
        now: u64,
    ) -> Option<Pass> {
        if counts.probes_left == 0 && now < self.probe_at.load(Ordering::Relaxed) {
            return None;
        }
        counts.probes_left = counts.probes_left.saturating_sub(1);
        self.probe_at
            .store(now + as_millis(settings.cooldown), Ordering::Relaxed);
        Some(Pass::Probe)
    }

    /// Records how a request that went to the target ended, with the pass it went with.
    /// `failed` counts only failures that say something about the target (not a client's
    /// bad request).
    pub fn record(&self, pass: Pass, failed: bool, settings: &BreakerSettings, metrics: &Metrics) {
        let now = clock::millis();
        let mut counts = self.lock();
        count_in_window(&mut counts, settings.window, now, failed);
        if failed {
            counts.consecutive_failures += 1;
        } else {
            counts.consecutive_failures = 0;
        }
        match (self.state(), pass) {
            (State::Closed, _) => {
                let (requests, failures) = window_totals(&counts, settings.window, now);
                let trip = counts.consecutive_failures >= settings.consecutive_failures
                    || (requests >= settings.min_requests
                        && f64::from(failures) >= settings.failure_ratio * f64::from(requests));
                if failed && trip {
                    // A circuit that stayed closed for a whole window starts again from
                    // the base cooldown.
                    if now.saturating_sub(counts.closed_at) > as_millis(settings.window) {
                        counts.trips_in_a_row = 0;
                    }
                    self.trip(&mut counts, settings, metrics, now);
                }
            }
            // Only a probe moves a circuit that is not closed: a request that started
            // before the trip says nothing about the target now.
            (_, Pass::Probe) if failed => self.trip(&mut counts, settings, metrics, now),
            (_, Pass::Probe) => self.close(&mut counts, metrics, now),
            (_, Pass::Closed) => {}
        }
    }

    fn trip(&self, counts: &mut Counts, settings: &BreakerSettings, metrics: &Metrics, now: u64) {
        let cooldown = settings
            .cooldown
            .saturating_mul(1 << counts.trips_in_a_row.min(16))
            .min(settings.cooldown_cap());
        counts.trips_in_a_row += 1;
        counts.trips += 1;
        counts.probes_left = 0;
        self.probe_at
            .store(now + as_millis(cooldown), Ordering::Relaxed);
        self.set_state(State::Open, metrics, true);
        tracing::info!(
            target_name = &*self.target,
            cooldown = %humantime::format_duration(cooldown),
            consecutive_failures = counts.consecutive_failures,
            "circuit open: the target is skipped until a probe is due"
        );
    }

    /// A probe succeeded. The failures that opened the circuit are forgotten, so one
    /// failure after recovery does not open it again.
    fn close(&self, counts: &mut Counts, metrics: &Metrics, now: u64) {
        counts.window = Default::default();
        counts.closed_at = now;
        self.set_state(State::Closed, metrics, false);
        tracing::info!(
            target_name = &*self.target,
            "circuit closed: a probe succeeded"
        );
    }

    /// How long until a probe may go (zero when one may go now).
    pub fn next_probe_in(&self) -> Duration {
        Duration::from_millis(
            self.probe_at
                .load(Ordering::Relaxed)
                .saturating_sub(clock::millis()),
        )
    }

    pub fn view(&self, settings: &BreakerSettings) -> View {
        let counts = self.lock();
        let (window_requests, window_failures) =
            window_totals(&counts, settings.window, clock::millis());
        let state = self.state();
        View {
            state,
            consecutive_failures: counts.consecutive_failures,
            window_requests,
            window_failures,
            trips: counts.trips,
            next_probe_in_ms: (state != State::Closed)
                .then(|| self.next_probe_in().as_millis() as u64),
        }
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    fn set_state(&self, state: State, metrics: &Metrics, tripped: bool) {
        self.state.store(state as u8, Ordering::Release);
        metrics.set_breaker_state(&self.target, state as i64, tripped);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn count_in_window(counts: &mut Counts, window: Duration, now: u64, failed: bool) {
    let width = (as_millis(window) / BUCKETS as u64).max(1);
    let start = now - now % width;
    let bucket = &mut counts.window[(now / width) as usize % BUCKETS];
    if bucket.0 != start {
        *bucket = (start, 0, 0);
    }
    if failed {
        bucket.2 += 1;
    } else {
        bucket.1 += 1;
    }
}

/// (requests, failures) in the buckets that are still inside the window.
fn window_totals(counts: &Counts, window: Duration, now: u64) -> (u32, u32) {
    counts
        .window
        .iter()
        .filter(|(start, ..)| start + as_millis(window) > now)
        .fold((0, 0), |(requests, failures), (_, ok, failed)| {
            (requests + ok + failed, failures + failed)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            consecutive_failures: 3,
            failure_ratio: 0.5,
            window: Duration::from_secs(10),
            min_requests: 10,
            cooldown: Duration::from_millis(30),
            max_cooldown: Some(Duration::from_millis(100)),
            half_open_probes: 1,
        }
    }

    /// Advances paused time by `ms`.
    async fn wait_ms(ms: u64) {
        tokio::time::advance(Duration::from_millis(ms)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_consecutive_failures_probes_after_the_cooldown_and_closes() {
        let (breaker, settings, metrics) = (Breaker::new("p/m".into()), settings(), Metrics::new());
        for _ in 0..3 {
            assert_eq!(breaker.pass(&settings, &metrics), Some(Pass::Closed));
            breaker.record(Pass::Closed, true, &settings, &metrics);
        }
        assert_eq!(breaker.state(), State::Open);
        assert_eq!(breaker.next_probe_in(), Duration::from_millis(30));
        wait_ms(29).await;
        assert_eq!(
            breaker.pass(&settings, &metrics),
            None,
            "not before the cooldown"
        );
        wait_ms(1).await;
        assert_eq!(breaker.pass(&settings, &metrics), Some(Pass::Probe));
        assert_eq!(
            breaker.pass(&settings, &metrics),
            None,
            "one probe at a time"
        );
        // A request sent before the trip fails late: it says nothing about the target now.
        breaker.record(Pass::Closed, true, &settings, &metrics);
        assert_eq!(breaker.state(), State::HalfOpen);
        // The probe fails: open again, for twice as long.
        breaker.record(Pass::Probe, true, &settings, &metrics);
        assert_eq!(breaker.state(), State::Open);
        assert_eq!(breaker.next_probe_in(), Duration::from_millis(60));
        wait_ms(60).await;
        // A late success of an old request does not close it either; the probe's does.
        breaker.record(Pass::Closed, false, &settings, &metrics);
        assert_eq!(breaker.state(), State::Open);
        assert_eq!(breaker.pass(&settings, &metrics), Some(Pass::Probe));
        breaker.record(Pass::Probe, false, &settings, &metrics);
        assert_eq!(breaker.state(), State::Closed);
        assert_eq!(breaker.view(&settings).trips, 2);
        // The failures before are forgotten: one more does not open it again.
        breaker.record(Pass::Closed, true, &settings, &metrics);
        assert_eq!(breaker.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cooldown_doubles_per_trip_in_a_row_up_to_its_cap_and_resets_after_a_window() {
        let (breaker, settings, metrics) = (Breaker::new("p/m".into()), settings(), Metrics::new());
        let trip = |pass| {
            for _ in 0..3 {
                breaker.record(pass, true, &settings, &metrics);
            }
        };
        trip(Pass::Closed);
        let mut cooldowns = vec![breaker.next_probe_in()];
        for _ in 0..3 {
            tokio::time::advance(breaker.next_probe_in()).await;
            assert_eq!(breaker.pass(&settings, &metrics), Some(Pass::Probe));
            breaker.record(Pass::Probe, true, &settings, &metrics);
            cooldowns.push(breaker.next_probe_in());
        }
        let ms = |ms| Duration::from_millis(ms);
        assert_eq!(
            cooldowns,
            [ms(30), ms(60), ms(100), ms(100)],
            "capped at max_cooldown"
        );
        tokio::time::advance(breaker.next_probe_in()).await;
        assert_eq!(breaker.pass(&settings, &metrics), Some(Pass::Probe));
        breaker.record(Pass::Probe, false, &settings, &metrics);
        // Closed for longer than a window: the next trip starts from the base cooldown.
        wait_ms(10_001).await;
        trip(Pass::Closed);
        assert_eq!(breaker.next_probe_in(), ms(30));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_leave_the_window_when_they_are_older_than_it() {
        let (breaker, settings, metrics) = (Breaker::new("p/m".into()), settings(), Metrics::new());
        // 9 requests, 5 failed (never 3 in a row): not enough requests to judge.
        for i in 0..9 {
            breaker.record(Pass::Closed, i % 2 == 0, &settings, &metrics);
        }
        assert_eq!(breaker.view(&settings).window_requests, 9);
        // A window later, they no longer count: the tenth request does not trip it.
        wait_ms(10_000).await;
        breaker.record(Pass::Closed, true, &settings, &metrics);
        assert_eq!(breaker.state(), State::Closed);
        assert_eq!(breaker.view(&settings).window_requests, 1);
    }

    /// A target down for a minute, then healthy, with one request every 4 s (each one the
    /// probe when one is due) and the default settings: how long after the recovery the
    /// target serves again.
    #[tokio::test(start_paused = true)]
    async fn with_the_defaults_a_recovered_target_serves_again_within_15_s() {
        let (settings, metrics) = (BreakerSettings::default(), Metrics::new());
        for outage_s in [20, 60, 61, 63, 600] {
            let breaker = Breaker::new("p/m".into());
            let start = clock::now();
            let recovered_at = start + Duration::from_secs(outage_s);
            let back = loop {
                let now = clock::now();
                if let Some(pass) = breaker.pass(&settings, &metrics) {
                    let failed = now < recovered_at;
                    breaker.record(pass, failed, &settings, &metrics);
                    if !failed {
                        break now;
                    }
                }
                tokio::time::advance(Duration::from_secs(4)).await;
            };
            let after = back - recovered_at;
            assert!(
                after <= Duration::from_secs(15),
                "outage {outage_s}s: back {after:?} after recovery"
            );
        }
    }

    #[test]
    fn opens_on_a_failure_ratio_with_enough_requests() {
        let (breaker, settings, metrics) = (Breaker::new("p/m".into()), settings(), Metrics::new());
        for i in 0..10 {
            breaker.record(Pass::Closed, i % 2 == 1, &settings, &metrics);
            assert_eq!(breaker.state() == State::Open, i == 9, "request {i}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_never_reports_is_replaced_after_the_cooldown() {
        let (breaker, settings, metrics) = (Breaker::new("p/m".into()), settings(), Metrics::new());
        for _ in 0..3 {
            breaker.record(Pass::Closed, true, &settings, &metrics);
        }
        wait_ms(30).await;
        assert_eq!(breaker.pass(&settings, &metrics), Some(Pass::Probe));
        assert!(!breaker.is_available());
        wait_ms(29).await;
        assert!(!breaker.is_available());
        wait_ms(1).await;
        assert!(breaker.is_available());
        assert_eq!(breaker.pass(&settings, &metrics), Some(Pass::Probe));
    }
}
