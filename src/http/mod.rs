//! The HTTP edge: authentication on the request head, routes, body reading and parsing,
//! hygiene, the SSE relay to clients, and the byte-level guard on incoming connections.

pub mod admin;
pub mod auth;
pub mod body;
pub mod connection_guard;
pub mod feedback;
pub mod handlers;
pub mod hygiene;
pub mod parse;
pub mod relay;
pub mod request_id;
pub mod trace;

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::reload::ConfigStore;
use crate::report::Sinks;

/// What every handler needs, cheap to clone.
#[derive(Clone)]
pub struct App {
    pub store: Arc<ConfigStore>,
    pub pipeline: Pipeline,
    pub metrics: Arc<Metrics>,
    pub sinks: Sinks,
}
