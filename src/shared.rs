//! State that outlives config reloads: built once at start, handed to every snapshot
//! build: connection pools, rate-limit and budget state, the keys created through the admin
//! API, each target's health (circuit breakers, latency, retry budgets).

use std::sync::Arc;

use crate::access_log::AccessLog;
use crate::config::schema::LimitsSettings;
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
    /// The tracer (off unless the first config or the environment turns export on).
    pub traces: Traces,
}

impl Default for Shared {
    fn default() -> Self {
        let metrics = Arc::new(Metrics::new());
        Self {
            sinks: sinks(&metrics),
            metrics,
            http: HttpClients::default(),
            limiter: Arc::default(),
            keys: Arc::default(),
            health: HealthTable::default(),
            traces: Traces::default(),
        }
    }
}

/// The report sinks, in order: the access log line, then the request counters.
fn sinks(metrics: &Arc<Metrics>) -> Sinks {
    Arc::new([Arc::new(AccessLog), metrics.clone()])
}

impl Shared {
    /// The state a gateway starts with: its limit and key stores are the ones `limits`
    /// asks for.
    pub fn new(limits: &LimitsSettings) -> Result<Self, String> {
        let metrics = Arc::new(Metrics::new());
        let limiter = Limiter::new(limits, metrics.clone())?;
        Ok(Self {
            sinks: sinks(&metrics),
            metrics,
            http: HttpClients::default(),
            limiter: Arc::new(limiter),
            keys: Arc::new(KeyStore::new(limits)?),
            health: HealthTable::default(),
            traces: Traces::default(),
        })
    }
}
