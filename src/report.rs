//! What is known about a request once it is over, and the sinks that receive it.
//!
//! When a request ends (answered, failed, streamed to the end, or abandoned by its client)
//! its record builds one immutable [`Report`] and hands it to every [`Sink`]: the access
//! log line, the Prometheus counters and the feedback index today; traces and the request
//! log as they land. Sinks read only the report, never the record or the pipeline, so
//! adding one touches no layer.

use std::sync::Arc;
use std::time::Duration;

use crate::api::chat::FinishReason;
use crate::config::schema::ProviderKind;
use crate::pricing::Cost;
use crate::usage::Usage;

/// Status reported for a request whose client went away before the answer was complete.
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// Receives the report of every finished request. Called once per request, on the task
/// that dropped the request's last handle: a sink must not block (queue and write
/// elsewhere if it does I/O).
pub trait Sink: Send + Sync {
    fn record(&self, report: &Report);
}

/// The sinks a gateway reports to, in order.
pub type Sinks = Arc<[Arc<dyn Sink>]>;

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
    /// The upstream answer that served the request was complete (a body read, a stream
    /// ended).
    pub upstream_end: Option<Duration>,
    /// The answer was complete.
    pub end: Option<Duration>,
}

/// The target whose attempt served (or last tried to serve) the request.
#[derive(Debug, Clone)]
pub struct ServedBy {
    /// `provider/upstream model`.
    pub target: Arc<str>,
    pub provider: Arc<str>,
    pub provider_kind: ProviderKind,
    pub upstream_model: Arc<str>,
}

/// Everything known about one finished request.
#[derive(Debug, Clone)]
pub struct Report {
    /// The gateway's id for the request (the feedback handle).
    pub request_id: Arc<str>,
    /// The client's own `x-request-id`, when it sent one.
    pub correlation_id: Option<Arc<str>>,
    pub endpoint: Endpoint,
    /// The HTTP status the client got ([`CLIENT_CLOSED_REQUEST`] if it left early).
    pub status: u16,
    /// The error's bounded label, when the request (or its stream) failed.
    pub error: Option<&'static str>,
    /// The calling key's name (never the key) and its team.
    pub key: Arc<str>,
    pub team: Option<Arc<str>>,
    /// The public model the request was routed as.
    pub model: Option<Arc<str>>,
    pub served_by: Option<ServedBy>,
    /// Calls made to upstream targets, retries and fallbacks included.
    pub attempts: u32,
    pub stream: bool,
    pub timings: Timings,
    pub total: Duration,
    /// The provider's usage, or an estimate (see `Usage::source`).
    pub usage: Option<Usage>,
    pub cost: Option<Cost>,
    /// One per choice that finished, in the order they did.
    pub finish_reasons: Vec<FinishReason>,
    /// The answer's own id and model, as the upstream named them.
    pub response_id: Option<String>,
    pub response_model: Option<String>,
    /// The target (`provider/model`) a broken stream was resumed on; its usage is then the
    /// sum of both attempts'.
    pub resumed_on: Option<Arc<str>>,
    /// The request's trace id (32 hex digits) and its server span's id (16), when traces
    /// are on.
    pub trace_id: Option<Arc<str>>,
    pub span_id: Option<Arc<str>>,
    /// Whether the trace's spans were recorded: sampled, and not while export was paused.
    /// Only a recorded trace is worth linking to (exemplars).
    pub trace_recorded: bool,
}

impl Report {
    /// From the first upstream call to the end of the answer that served the request
    /// (retries and fallbacks included).
    pub fn upstream_time(&self) -> Option<Duration> {
        let Timings {
            upstream_start,
            upstream_end,
            ..
        } = self.timings;
        Some(upstream_end?.saturating_sub(upstream_start?))
    }

    /// The gateway's time on the way back: from the end of the upstream answer to the end
    /// of the client's.
    pub fn response_overhead(&self) -> Option<Duration> {
        let Timings {
            upstream_end, end, ..
        } = self.timings;
        Some(end?.saturating_sub(upstream_end?))
    }
}
