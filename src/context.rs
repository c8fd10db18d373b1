//! The typed per-request context every layer shares, and the request's record.
//!
//! [`RequestContext`] travels down the pipeline by value: the edge creates it once, each
//! layer reads what earlier layers wrote and adds its own decision. [`RequestRecord`] is the
//! part that must outlive the pipeline call, because a streamed answer keeps producing
//! facts (first token, usage, how it ended) after the layers have returned: it is shared
//! by the context, the stream and the edge, and writes the access log line and the request
//! metric when the last of them lets go of it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::HeaderMap;

use crate::auth::Key;
use crate::error::GatewayError;
use crate::limits::{LimitStatus, Used};
use crate::metrics::{Metrics, RequestLabels};
use crate::pricing::{Cost, Price};
use crate::snapshot::{ModelRoute, Snapshot, Target};
use crate::usage::Usage;

/// Status logged for a request whose client went away before the answer was complete.
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

pub struct RequestContext {
    pub record: Arc<RequestRecord>,
    /// The config this request runs on from start to end, even if a reload happens.
    pub snapshot: Arc<Snapshot>,
    /// The client's request headers, hop-by-hop headers removed.
    pub headers: HeaderMap,
    /// The calling key (and through it, its team), set by the auth layer.
    pub key: Option<Arc<Key>>,
    /// The public model and its targets, set by the route layer.
    pub route: Option<Arc<ModelRoute>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Embeddings,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat_completions",
            Self::Embeddings => "embeddings",
        }
    }
}

/// Moments in a request's life, measured from when the edge received it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// The first upstream attempt started (retries and fallbacks come after it).
    pub upstream_start: Option<Duration>,
    /// The answer started (the attempt that served it): a stream's first chunk with
    /// content (the chunks before it are held until then), the whole body otherwise.
    pub first_byte: Option<Duration>,
    /// The first chunk carrying content (text, tool call, refusal) arrived.
    pub first_content: Option<Duration>,
    /// The answer was complete.
    pub end: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
pub enum Mark {
    UpstreamStart,
    FirstByte,
    FirstContent,
    End,
}

/// Gives a request's limit reservations back with what it really used; runs once, when
/// the request is over.
pub type Settlement = Box<dyn FnOnce(Used) + Send>;

pub struct RequestRecord {
    pub request_id: Arc<str>,
    pub endpoint: Endpoint,
    received: Instant,
    metrics: Arc<Metrics>,
    state: Mutex<RecordState>,
    settlement: Mutex<Option<Settlement>>,
}

#[derive(Default)]
struct RecordState {
    key: Option<Arc<str>>,
    team: Option<Arc<str>>,
    model: Option<Arc<str>>,
    /// The target of the last attempt.
    target: Option<Arc<Target>>,
    /// Calls made to upstream targets (retries and fallbacks included).
    attempts: u32,
    stream: bool,
    timings: Timings,
    usage: Option<Usage>,
    /// The price of the target that served the request (the last attempt's).
    price: Option<Price>,
    limit_status: Option<LimitStatus>,
    status: Option<u16>,
    error: Option<&'static str>,
    /// The client received the whole answer (or the whole error).
    delivered: bool,
}

impl RequestRecord {
    pub fn new(request_id: Arc<str>, endpoint: Endpoint, metrics: Arc<Metrics>) -> Self {
        Self {
            request_id,
            endpoint,
            received: Instant::now(),
            metrics,
            state: Mutex::default(),
            settlement: Mutex::default(),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn state(&self) -> MutexGuard<'_, RecordState> {
        // A panic while holding this lock cannot leave the record inconsistent in a way
        // that matters for logging, so a poisoned lock is still used.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_stream(&self, stream: bool) {
        self.state().stream = stream;
    }

    /// The calling key's name and team (never the key itself).
    pub fn set_caller(&self, key: &Key) {
        let mut state = self.state();
        state.key = Some(key.name.clone());
        state.team = key.team.as_ref().map(|t| t.name.clone());
    }

    pub fn set_model(&self, model: Arc<str>) {
        self.state().model = Some(model);
    }

    /// An attempt goes to `target`: the last one is the one that served the request.
    pub fn start_attempt(&self, target: &Arc<Target>, price: Option<Price>) {
        let mut state = self.state();
        state.target = Some(target.clone());
        state.price = price;
        state.attempts += 1;
    }

    /// The target of the last attempt (`provider/upstream model`) and the attempts made.
    pub fn attempts(&self) -> (Option<Arc<str>>, u32) {
        let state = self.state();
        let target = state.target.as_ref().map(|t| t.health.name.clone());
        (target, state.attempts)
    }

    /// Records a moment; only the first occurrence of each counts.
    pub fn mark(&self, mark: Mark) {
        let elapsed = self.received.elapsed();
        let mut state = self.state();
        let slot = match mark {
            Mark::UpstreamStart => &mut state.timings.upstream_start,
            Mark::FirstByte => &mut state.timings.first_byte,
            Mark::FirstContent => &mut state.timings.first_content,
            Mark::End => &mut state.timings.end,
        };
        slot.get_or_insert(elapsed);
    }

    pub fn set_usage(&self, usage: Usage) {
        self.state().usage = Some(usage);
    }

    /// The limits the request was admitted under, for the `x-ratelimit-*` headers.
    pub fn set_limit_status(&self, status: LimitStatus) {
        self.state().limit_status = Some(status);
    }

    pub fn limit_status(&self) -> Option<LimitStatus> {
        self.state().limit_status
    }

    /// Runs `settlement` with the request's real usage and cost when it is over.
    pub fn on_settle(&self, settlement: Settlement) {
        *self.settlement.lock().unwrap_or_else(|p| p.into_inner()) = Some(settlement);
    }

    /// The response head went out with this status. A complete (non-streamed) body counts
    /// as delivered at once; a stream is delivered when it ends.
    pub fn respond(&self, status: u16, streaming: bool) {
        let mut state = self.state();
        state.status = Some(status);
        state.delivered = !streaming;
    }

    /// The request failed before any answer started.
    pub fn fail(&self, error: &GatewayError) {
        let mut state = self.state();
        state.status = Some(error.status().as_u16());
        state.error = Some(error.label());
        state.delivered = true;
    }

    /// A stream ended: completely, or with an error event sent in place of `[DONE]`.
    pub fn end_stream(&self, error: Option<&GatewayError>) {
        self.mark(Mark::End);
        let mut state = self.state();
        state.error = error.map(GatewayError::label);
        state.delivered = true;
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let total = self.received.elapsed();
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        let status = match state.status {
            Some(status) if state.delivered => status,
            _ => CLIENT_CLOSED_REQUEST,
        };
        let cost = state
            .price
            .zip(state.usage)
            .map(|(price, usage)| price.cost(&usage));
        let settlement = self
            .settlement
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(settle) = settlement {
            // A failed request used nothing: everything it reserved comes back.
            settle(Used {
                tokens: state.usage.map_or(0, |u| u.total_tokens),
                cost_usd: cost.map_or(0.0, |c| c.usd),
            });
        }
        let model = state.model.clone().unwrap_or_else(|| Arc::from("unknown"));
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                endpoint: self.endpoint.as_str(),
                model,
                status,
            })
            .inc();
        log_access(&self.request_id, self.endpoint, status, total, cost, state);
    }
}

/// Whole microseconds: integers format several times faster than floats, and this runs
/// once per request.
fn micros(duration: Option<Duration>) -> Option<u64> {
    duration.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn log_access(
    request_id: &str,
    endpoint: Endpoint,
    status: u16,
    total: Duration,
    cost: Option<Cost>,
    state: &RecordState,
) {
    let usage = state.usage.as_ref();
    tracing::info!(
        target: "switchyard::access",
        request_id,
        endpoint = endpoint.as_str(),
        status,
        key = state.key.as_deref(),
        team = state.team.as_deref(),
        model = state.model.as_deref(),
        provider = state.target.as_ref().map(|t| &*t.provider.name),
        upstream_model = state.target.as_ref().map(|t| &*t.upstream_model),
        attempts = state.attempts,
        stream = state.stream,
        prompt_tokens = usage.map(|u| u.prompt_tokens),
        completion_tokens = usage.map(|u| u.completion_tokens),
        usage_source = usage.map(|u| u.source.as_str()),
        cost_usd = cost.map(|c| c.usd),
        upstream_start_us = micros(state.timings.upstream_start),
        first_byte_us = micros(state.timings.first_byte),
        first_content_us = micros(state.timings.first_content),
        total_us = micros(Some(total)),
        error = state.error,
        "request"
    );
}
