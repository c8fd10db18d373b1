//! The typed per-request context every layer shares.
//!
//! [`RequestContext`] travels down the pipeline by value: the edge creates it once, after
//! authentication, and each layer reads what earlier layers wrote and adds its own
//! decision. What must outlive the pipeline call (facts a stream keeps producing) is in
//! the request's [`RequestRecord`].

use std::sync::Arc;

use http::HeaderMap;

use crate::auth::Key;
use crate::record::RequestRecord;
use crate::snapshot::{ModelRoute, Snapshot};

pub struct RequestContext {
    pub record: Arc<RequestRecord>,
    /// The config this request runs on from start to end, even if a reload happens: the
    /// one the edge authenticated the caller with.
    pub snapshot: Arc<Snapshot>,
    /// The client's request headers, hop-by-hop headers removed.
    pub headers: HeaderMap,
    /// The calling key (and through it, its team), authenticated at the edge.
    pub key: Arc<Key>,
    /// The public model and its targets, set by the route layer.
    pub route: Option<Arc<ModelRoute>>,
}
