//! Prometheus metrics, served on `GET /metrics`. The registry outlives config reloads.
//! Label values are bounded: endpoints and outcomes are fixed sets, models are the
//! configured public names (anything else is recorded as `unknown`).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::report::{Report, Sink};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: &'static str,
    pub model: Arc<str>,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    /// `provider/upstream model`, both from the config.
    pub target: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub target: Arc<str>,
    /// `success`, or the error's label (`upstream_status`, `upstream_timeout`, ...).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    config_reloads: Family<ReloadLabels, Counter>,
    limits_degraded: Gauge,
    limits_errors: Counter,
    breaker_state: Family<TargetLabels, Gauge>,
    breaker_trips: Family<TargetLabels, Counter>,
    attempts: Family<AttemptLabels, Counter>,
    malformed_events: Family<TargetLabels, Counter>,
    resumptions: Family<AttemptLabels, Counter>,
    spans_dropped: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("switchyard");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by endpoint, public model and HTTP status (499: client went away)",
            requests.clone(),
        );
        let config_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Config reload attempts by result (failure: the previous config kept serving)",
            config_reloads.clone(),
        );
        let limits_degraded = Gauge::default();
        registry.register(
            "limits_store_degraded",
            "1 while the shared rate-limit store (Redis) is unavailable and its failure policy applies",
            limits_degraded.clone(),
        );
        let limits_errors = Counter::default();
        registry.register(
            "limits_store_errors",
            "Calls to the shared rate-limit store that failed or timed out",
            limits_errors.clone(),
        );
        let breaker_state = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "breaker_state",
            "Circuit breaker of each target: 0 closed, 1 half-open, 2 open",
            breaker_state.clone(),
        );
        let breaker_trips = Family::<TargetLabels, Counter>::default();
        registry.register(
            "breaker_trips",
            "Times a target's circuit breaker opened",
            breaker_trips.clone(),
        );
        let attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "upstream_attempts",
            "Calls to upstream targets (retries and fallbacks included), by outcome",
            attempts.clone(),
        );
        let malformed_events = Family::<TargetLabels, Counter>::default();
        registry.register(
            "upstream_malformed_events",
            "Upstream stream events dropped for not being valid JSON (on_malformed_event: skip)",
            malformed_events.clone(),
        );
        let resumptions = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "stream_resumptions",
            "Broken streams the gateway tried to continue on another target, by that target and outcome (resumed, failed, diverged)",
            resumptions.clone(),
        );
        let spans_dropped = Counter::default();
        registry.register(
            "telemetry_spans_dropped",
            "Trace spans lost on the way to the collector (export failed or the queue was full)",
            spans_dropped.clone(),
        );
        Self {
            spans_dropped,
            resumptions,
            malformed_events,
            registry,
            requests,
            config_reloads,
            limits_degraded,
            limits_errors,
            breaker_state,
            breaker_trips,
            attempts,
        }
    }

    pub fn set_limits_degraded(&self, degraded: bool) {
        self.limits_degraded.set(i64::from(degraded));
    }

    /// A breaker's new state (0 closed, 1 half-open, 2 open); `tripped` when it opened.
    pub fn set_breaker_state(&self, target: &Arc<str>, state: i64, tripped: bool) {
        let labels = TargetLabels {
            target: target.clone(),
        };
        self.breaker_state.get_or_create(&labels).set(state);
        if tripped {
            self.breaker_trips.get_or_create(&labels).inc();
        }
    }

    pub fn count_attempt(&self, target: &Arc<str>, outcome: &'static str) {
        let labels = AttemptLabels {
            target: target.clone(),
            outcome,
        };
        self.attempts.get_or_create(&labels).inc();
    }

    pub fn count_resumption(&self, target: &Arc<str>, outcome: &'static str) {
        let labels = AttemptLabels {
            target: target.clone(),
            outcome,
        };
        self.resumptions.get_or_create(&labels).inc();
    }

    pub fn count_malformed_event(&self, target: &Arc<str>) {
        let labels = TargetLabels {
            target: target.clone(),
        };
        self.malformed_events.get_or_create(&labels).inc();
    }

    pub fn count_limits_error(&self) {
        self.limits_errors.inc();
    }

    pub fn count_reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.config_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn count_spans_dropped(&self, n: u64) {
        self.spans_dropped.inc_by(n);
    }
}

/// Counts every finished request by endpoint, public model and status.
impl Sink for Metrics {
    fn record(&self, report: &Report) {
        let labels = RequestLabels {
            endpoint: report.endpoint.as_str(),
            model: report.model.clone().unwrap_or_else(|| Arc::from("unknown")),
            status: report.status,
        };
        self.requests.get_or_create(&labels).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
