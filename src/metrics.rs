//! Prometheus metrics, served on `GET /metrics`. The registry outlives config reloads.
//!
//! Two kinds of instruments: what layers count as it happens (attempts, retries,
//! fallbacks, refusals, breaker states, reloads: the methods below), and what every
//! finished request's [`Report`] says (the `Sink`: request counts and durations, gateway
//! overhead, tokens, cost and the GenAI client instruments, in `metrics/requests.rs`).
//!
//! Label values are bounded: endpoints, outcomes and reasons are fixed sets, models and
//! targets come from the config, teams from the config's or the admin API's teams; no
//! request id, user or key is ever a label (keys are not labels at all). Latency
//! histograms carry the request's trace id as an exemplar when it has one, so a slow
//! bucket links to its trace; exemplars are only in the OpenMetrics format, which a
//! scraper gets when it asks for it.

mod requests;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use self::requests::OutputChunks;
use self::requests::RequestMetrics;
use crate::config::schema::ProviderKind;
use crate::report::{Endpoint, Report, Sink};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    /// `provider/upstream model`, both from the config.
    target: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    target: Arc<str>,
    /// `success`, or the error's label (`upstream_status`, `upstream_timeout`, ...).
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    /// The error's label that made the gateway move on.
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    /// The kind of limit: `requests_per_minute`, `tokens_per_minute`, `in_flight`,
    /// `budget_daily`, `budget_monthly`, `store_unavailable`.
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeedbackLabels {
    model: String,
    target: String,
    /// `positive` (score > 0), `negative` (< 0) or `neutral` (0).
    rating: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: RequestMetrics,
    in_flight: Family<EndpointLabels, Gauge>,
    config_reloads: Family<ReloadLabels, Counter>,
    limits_degraded: Gauge,
    limits_errors: Counter,
    limit_refusals: Family<LimitLabels, Counter>,
    breaker_state: Family<TargetLabels, Gauge>,
    breaker_trips: Family<TargetLabels, Counter>,
    attempts: Family<AttemptLabels, Counter>,
    retries: Family<ReasonLabels, Counter>,
    fallbacks: Family<ReasonLabels, Counter>,
    malformed_events: Family<TargetLabels, Counter>,
    resumptions: Family<AttemptLabels, Counter>,
    feedback: Family<FeedbackLabels, Counter>,
    spans_dropped: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = RequestMetrics::register(&mut registry);
        let ours = registry.sub_registry_with_prefix("switchyard");
        let in_flight = Family::default();
        ours.register(
            "requests_in_flight",
            "Requests being served (streams until they end), by endpoint",
            in_flight.clone(),
        );
        let config_reloads = Family::default();
        ours.register(
            "config_reloads",
            "Config reload attempts by result (failure: the previous config kept serving)",
            config_reloads.clone(),
        );
        let limits_degraded = Gauge::default();
        ours.register(
            "limits_store_degraded",
            "1 while the shared rate-limit store (Redis) is unavailable and its failure policy applies",
            limits_degraded.clone(),
        );
        let limits_errors = Counter::default();
        ours.register(
            "limits_store_errors",
            "Calls to the shared rate-limit store that failed or timed out",
            limits_errors.clone(),
        );
        let limit_refusals = Family::default();
        ours.register(
            "limit_refusals",
            "Requests refused by a rate limit or budget, by kind of limit",
            limit_refusals.clone(),
        );
        let breaker_state = Family::default();
        ours.register(
            "breaker_state",
            "Circuit breaker of each target: 0 closed, 1 half-open, 2 open",
            breaker_state.clone(),
        );
        let breaker_trips = Family::default();
        ours.register(
            "breaker_trips",
            "Times a target's circuit breaker opened",
            breaker_trips.clone(),
        );
        let attempts = Family::default();
        ours.register(
            "upstream_attempts",
            "Calls to upstream targets (retries and fallbacks included), by outcome",
            attempts.clone(),
        );
        let retries = Family::default();
        ours.register(
            "retries",
            "Attempts made again within a model after a failure, by the failure",
            retries.clone(),
        );
        let fallbacks = Family::default();
        ours.register(
            "fallbacks",
            "Requests handed to a fallback model, by the failure that made them",
            fallbacks.clone(),
        );
        let malformed_events = Family::default();
        ours.register(
            "upstream_malformed_events",
            "Upstream stream events dropped for not being valid JSON (on_malformed_event: skip)",
            malformed_events.clone(),
        );
        let resumptions = Family::default();
        ours.register(
            "stream_resumptions",
            "Broken streams the gateway tried to continue on another target, by that target and outcome (resumed, failed, diverged)",
            resumptions.clone(),
        );
        let feedback = Family::<FeedbackLabels, Counter>::default();
        ours.register(
            "feedback",
            "Feedback given on served requests (POST /v1/feedback), replacements included, by public model, target and rating",
            feedback.clone(),
        );
        let spans_dropped = Counter::default();
        ours.register(
            "telemetry_spans_dropped",
            "Trace spans lost on the way to the collector (export failed or the queue was full)",
            spans_dropped.clone(),
        );
        Self {
            feedback,
            spans_dropped,
            registry,
            requests,
            in_flight,
            config_reloads,
            limits_degraded,
            limits_errors,
            limit_refusals,
            breaker_state,
            breaker_trips,
            attempts,
            retries,
            fallbacks,
            malformed_events,
            resumptions,
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

    /// An attempt is made again on the same model after a failure labelled `reason`.
    pub fn count_retry(&self, reason: &'static str) {
        self.retries.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// A request moves on to a fallback model after a failure labelled `reason`.
    pub fn count_fallback(&self, reason: &'static str) {
        self.fallbacks.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn count_limit_refusal(&self, limit: &'static str) {
        self.limit_refusals
            .get_or_create(&LimitLabels { limit })
            .inc();
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

    /// One more request of `endpoint` in flight, until [`Metrics::leave`].
    pub fn enter(&self, endpoint: Endpoint) {
        let labels = EndpointLabels {
            endpoint: endpoint.as_str(),
        };
        self.in_flight.get_or_create(&labels).inc();
    }

    pub fn leave(&self, endpoint: Endpoint) {
        let labels = EndpointLabels {
            endpoint: endpoint.as_str(),
        };
        self.in_flight.get_or_create(&labels).dec();
    }

    /// See [`RequestMetrics::output_chunks`].
    pub fn output_chunks(
        &self,
        provider_kind: ProviderKind,
        request_model: Arc<str>,
        response_model: Option<&str>,
    ) -> OutputChunks {
        self.requests
            .output_chunks(provider_kind, request_model, response_model)
    }

    /// An upstream call to `target` took `took` (to the end of its answer).
    pub fn observe_upstream(&self, target: &Arc<str>, took: Duration) {
        self.requests.observe_upstream(target, took);
    }

    /// The exposition: OpenMetrics (with exemplars) when `openmetrics`, else the
    /// Prometheus text format 0.0.4 (the same samples without exemplars).
    pub fn render(&self, openmetrics: bool) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        if openmetrics {
            out
        } else {
            prometheus_text(&out)
        }
    }

    /// A feedback of `score` (-1 to 1) on a request of `model` served by `target`.
    pub fn count_feedback(&self, model: &str, target: &str, score: f64) {
        let rating = match score {
            s if s > 0.0 => "positive",
            s if s < 0.0 => "negative",
            _ => "neutral",
        };
        let labels = FeedbackLabels {
            model: model.to_owned(),
            target: target.to_owned(),
            rating,
        };
        self.feedback.get_or_create(&labels).inc();
    }

    pub fn count_spans_dropped(&self, n: u64) {
        self.spans_dropped.inc_by(n);
    }
}

/// The Prometheus text format 0.0.4 of an OpenMetrics exposition: the same samples,
/// without their exemplars and the `# EOF` line.
fn prometheus_text(openmetrics: &str) -> String {
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines().filter(|line| *line != "# EOF") {
        // An exemplar follows its sample after ` # {`; a comment line starts with `#`.
        let sample = match line.find(" # {") {
            Some(at) if !line.starts_with('#') => &line[..at],
            _ => line,
        };
        text.push_str(sample);
        text.push('\n');
    }
    text
}

/// Every finished request's counters and histograms.
impl Sink for Metrics {
    fn record(&self, report: &Report) {
        self.requests.record(report);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prometheus_text_format_has_no_exemplars_and_no_eof() {
        let openmetrics = "# TYPE x histogram\nx_bucket{le=\"1.0\"} 1 # {trace_id=\"abc\"} 0.5\nx_count 1\n# EOF\n";
        assert_eq!(
            prometheus_text(openmetrics),
            "# TYPE x histogram\nx_bucket{le=\"1.0\"} 1\nx_count 1\n"
        );
        let metrics = Metrics::new();
        metrics.count_reload(true);
        assert!(metrics.render(true).ends_with("# EOF\n"));
        let text = metrics.render(false);
        assert!(text.contains("switchyard_config_reloads_total{result=\"success\"} 1\n"));
        assert!(!text.contains("# EOF"));
    }
}
