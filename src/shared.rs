//! State that outlives config reloads: built once at start, handed to every snapshot
//! build: connection pools, rate-limit and budget state, the keys created through the admin
//! API, each target's health (circuit breakers, latency, retry budgets), the requests
//! remembered for feedback.

use std::sync::Arc;

use crate::access_log::AccessLog;
use crate::config::schema::{FeedbackSettings, LimitsSettings};
use crate::feedback::FeedbackIndex;
use crate::health::HealthTable;
use crate::key_store::KeyStore;
use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::providers::http_client::HttpClients;
use crate::report::Sinks;
use crate::telemetry::spans::Traces;

pub struct Shared {
    pub metrics: Arc<Metrics>,
    /// Where every finished request's report goes.
    pub sinks: Sinks,
    pub http: HttpClients,
    pub limiter: Arc<Limiter>,
    pub keys: Arc<KeyStore>,
    pub health: HealthTable,
    /// Recent requests, for `POST /v1/feedback`; also a sink.
    pub feedback: Arc<FeedbackIndex>,
    /// The tracer (off unless the first config or the environment turns export on).
    pub traces: Traces,
}

impl Default for Shared {
    fn default() -> Self {
        let metrics = Arc::new(Metrics::new());
        let feedback = Arc::new(FeedbackIndex::default());
        Self {
            sinks: sinks(&metrics, &feedback),
            metrics,
            http: HttpClients::default(),
            limiter: Arc::default(),
            keys: Arc::default(),
            health: HealthTable::default(),
            feedback,
            traces: Traces::default(),
        }
    }
}

/// The report sinks, in order: the access log line, the request counters, the feedback
/// index.
fn sinks(metrics: &Arc<Metrics>, feedback: &Arc<FeedbackIndex>) -> Sinks {
    Arc::new([Arc::new(AccessLog), metrics.clone(), feedback.clone()])
}

impl Shared {
    /// The state a gateway starts with: its limit and key stores are the ones `limits`
    /// asks for, its feedback index the one `feedback` does.
    pub fn new(limits: &LimitsSettings, feedback: &FeedbackSettings) -> Result<Self, String> {
        let metrics = Arc::new(Metrics::new());
        let limiter = Limiter::new(limits, metrics.clone())?;
        let feedback = Arc::new(FeedbackIndex::new(feedback, limits)?);
        Ok(Self {
            sinks: sinks(&metrics, &feedback),
            metrics,
            http: HttpClients::default(),
            limiter: Arc::new(limiter),
            keys: Arc::new(KeyStore::new(limits)?),
            health: HealthTable::default(),
            feedback,
            traces: Traces::default(),
        })
    }
}
