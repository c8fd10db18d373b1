//! State that outlives config reloads: built once at start, handed to every snapshot
//! build. Connection pools live here now; rate-limit buckets, breaker state and Redis
//! pools join them as their layers arrive, each in a registry keyed by name.

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::providers::http_client::HttpClients;

#[derive(Default)]
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub http: HttpClients,
}
