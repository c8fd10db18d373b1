//! The spans of a request, and the small API the edge and the layers call to make them.
//!
//! ```text
//! POST /v1/chat/completions   SERVER    the edge (http/trace.rs): from the request head to
//!  │                                    the end of the answer (a stream's last byte, or
//!  │                                    the client leaving); ended with the request's
//!  │                                    Report when its record is dropped
//!  ├─ auth                    INTERNAL  one per step that decides something (auth, access,
//!  ├─ access                            route, limits): `RequestTrace::step`
//!  ├─ route
//!  ├─ limits
//!  ├─ chat {model}            CLIENT    one per upstream attempt (retries, fallbacks and a
//!  └─ chat {model}                      resumption each have their own): GenAI attributes,
//!                                       its context sent upstream as `traceparent`
//! ```
//!
//! When traces are off, every handle here is `None` inside: no span is built, nothing is
//! allocated, each call is one branch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::borrow::Cow;

use http::header::{HeaderName, HeaderValue};
use http::{Extensions, HeaderMap, Method};
use opentelemetry::propagation::Injector;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, Span};

use super::attributes as attr;
use super::export::{BatchTask, Batcher, exporter};
use super::settings::TraceSettings;
use crate::api::chat::{ChatRequest, FinishReason, Stop};
use crate::api::reply::AnswerFacts;
use crate::config::schema::ProviderKind;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::providers::http_client::HttpClients;
use crate::report::{CLIENT_CLOSED_REQUEST, Report};

/// The gateway's tracer, or nothing when traces are off. Lives as long as the gateway
/// (its settings change with a restart only).
#[derive(Default)]
pub struct Traces(Option<Arc<Tracing>>);

struct Tracing {
    tracer: SdkTracer,
    /// Kept for its lifetime: the tracer stops recording once its provider is gone.
    _provider: SdkTracerProvider,
    propagator: TraceContextPropagator,
    /// Most bytes of content on a span, when content is captured.
    content_max_bytes: Option<usize>,
    task: Mutex<Option<BatchTask>>,
}

impl Traces {
    /// Starts exporting as `settings` say (nothing when `None`), on the current runtime.
    pub fn start(
        settings: Option<TraceSettings>,
        http: &HttpClients,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, String> {
        let Some(settings) = settings else {
            return Ok(Self(None));
        };
        let mut resource = Resource::builder_empty()
            .with_service_name(settings.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
        for (key, value) in &settings.resource_attributes {
            resource = resource.with_attribute(KeyValue::new(key.clone(), value.clone()));
        }
        let resource = resource.build();
        let client = http.get(settings.timeout)?;
        let exporter = exporter(&settings, client, &resource)?;
        let (batcher, task) = Batcher::start(exporter, &settings, metrics.clone());
        let ratio = Sampler::TraceIdRatioBased(settings.sampling_ratio);
        let sampler = batcher.sampler(Sampler::ParentBased(Box::new(ratio)));
        let provider = SdkTracerProvider::builder()
            .with_sampler(sampler)
            .with_span_processor(batcher)
            .with_resource(resource)
            .build();
        tracing::info!(
            endpoint = %settings.endpoint,
            protocol = ?settings.protocol,
            sampling_ratio = settings.sampling_ratio,
            "exporting traces"
        );
        Ok(Self(Some(Arc::new(Tracing {
            tracer: provider.tracer("switchyard"),
            _provider: provider,
            propagator: TraceContextPropagator::new(),
            content_max_bytes: settings.content_max_bytes,
            task: Mutex::new(Some(task)),
        }))))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Starts the SERVER span of a request (`{method} {route}`), continuing the trace of
    /// the client's `traceparent` when it sent one.
    pub fn server(
        &self,
        method: &Method,
        route: &str,
        headers: &HeaderMap,
        request_id: Arc<str>,
    ) -> RequestTrace {
        let Some(tracing) = &self.0 else {
            return RequestTrace(None);
        };
        // Most requests carry no trace context: they start a trace without reading the
        // propagator (or the thread's current context).
        let parent = if headers.contains_key(TRACEPARENT) {
            tracing.propagator.extract(&HeaderExtractor(headers))
        } else {
            Context::new()
        };
        let (name, route) = server_span_name(method, route);
        let span = tracing
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new(attr::HTTP_REQUEST_METHOD, method_name(method)),
                KeyValue::new(attr::HTTP_ROUTE, route),
                KeyValue::new(attr::REQUEST_ID, request_id),
            ])
            .start_with_context(&tracing.tracer, &parent);
        let context = span.span_context().clone();
        RequestTrace(Some(Arc::new(Server {
            recording: span.is_recording(),
            trace_id: Arc::from(context.trace_id().to_string()),
            span_id: Arc::from(context.span_id().to_string()),
            cx: parent.with_span(span),
            tracing: tracing.clone(),
            claimed: AtomicBool::new(false),
        })))
    }

    /// Sends what is queued (within `grace`) and stops exporting.
    pub async fn shutdown(&self, grace: Duration) {
        let Some(tracing) = &self.0 else { return };
        let task = tracing
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.stop.send(true);
            let _ = tokio::time::timeout(grace, task.handle).await;
        }
    }
}

/// The SERVER span of one request, shared by the edge, the layers and the request's
/// record. Cheap to clone; `None` inside when traces are off.
#[derive(Clone, Default)]
pub struct RequestTrace(Option<Arc<Server>>);

struct Server {
    cx: Context,
    /// Whether the server span records (the trace is sampled): an unsampled request makes
    /// no child spans, it only passes its context on.
    recording: bool,
    trace_id: Arc<str>,
    span_id: Arc<str>,
    tracing: Arc<Tracing>,
    /// The request's record ends the span (with its report); otherwise the edge does.
    claimed: AtomicBool,
}

impl RequestTrace {
    /// The trace the edge put into a request's extensions (none when off).
    pub fn of(extensions: &Extensions) -> Self {
        extensions.get::<Self>().cloned().unwrap_or_default()
    }

    /// The trace id, 32 hex digits.
    pub fn trace_id(&self) -> Option<&Arc<str>> {
        self.0.as_ref().map(|s| &s.trace_id)
    }

    /// The server span's id, 16 hex digits.
    pub fn span_id(&self) -> Option<&Arc<str>> {
        self.0.as_ref().map(|s| &s.span_id)
    }

    /// The request's record takes over ending the span (`finish`).
    pub fn claim(&self) {
        if let Some(server) = &self.0 {
            server.claimed.store(true, Ordering::Relaxed);
        }
    }

    /// Whether this request's spans are recorded (the trace is sampled).
    pub fn is_recording(&self) -> bool {
        self.0.as_ref().is_some_and(|s| s.recording)
    }

    pub fn is_claimed(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|s| s.claimed.load(Ordering::Relaxed))
    }

    /// A child span for one step of the pipeline, ended when dropped. Adding a step's
    /// span is one line: `let step = ctx.record.trace().step("cache");`.
    pub fn step(&self, name: &'static str) -> StepSpan {
        let recording = self.0.as_ref().filter(|server| server.recording);
        StepSpan(recording.map(|server| {
            let tracer = &server.tracing.tracer;
            tracer
                .span_builder(name)
                .with_kind(SpanKind::Internal)
                .start_with_context(tracer, &server.cx)
        }))
    }

    /// The span of a feedback (`POST /v1/feedback`) on an earlier request, linked to that
    /// request's server span when it was traced (`trace_id`, `span_id`: hex).
    pub fn feedback(&self, trace_id: Option<&str>, span_id: Option<&str>, score: f64) {
        let Some(server) = &self.0 else { return };
        let linked = trace_id
            .and_then(|t| TraceId::from_hex(t).ok())
            .zip(span_id.and_then(|s| SpanId::from_hex(s).ok()))
            .map(|(trace, span)| {
                let context = SpanContext::new(
                    trace,
                    span,
                    TraceFlags::SAMPLED,
                    true,
                    TraceState::default(),
                );
                Link::with_context(context)
            });
        let tracer = &server.tracing.tracer;
        let mut span = tracer
            .span_builder("feedback")
            .with_kind(SpanKind::Internal)
            .with_attributes([KeyValue::new(attr::FEEDBACK_SCORE, score)])
            .with_links(linked.into_iter().collect())
            .start_with_context(tracer, &server.cx);
        span.end();
    }

    /// The CLIENT span of one upstream attempt, named per the GenAI conventions.
    pub fn attempt(&self, start: &AttemptStart<'_>) -> AttemptSpan {
        let Some(server) = &self.0 else {
            return AttemptSpan::default();
        };
        let tracer = &server.tracing.tracer;
        let operation = match start.chat {
            Some(_) => attr::OPERATION_CHAT,
            None => attr::OPERATION_EMBEDDINGS,
        };
        if !server.recording {
            // Not sampled: no span; the request's context goes upstream (sampled flag off).
            return AttemptSpan::unrecorded(server);
        }
        let mut attributes = Vec::with_capacity(16);
        attributes.extend([
            KeyValue::new(attr::GEN_AI_OPERATION_NAME, operation),
            KeyValue::new(attr::GEN_AI_PROVIDER_NAME, provider_name(start.provider)),
            KeyValue::new(attr::GEN_AI_REQUEST_MODEL, start.upstream_model.clone()),
            KeyValue::new(attr::TARGET, start.target.clone()),
            KeyValue::new(attr::ATTEMPT_NUMBER, i64::from(start.number)),
            KeyValue::new(attr::BREAKER_STATE, start.breaker),
        ]);
        if let Some((host, port)) = start.address {
            attributes.push(KeyValue::new(attr::SERVER_ADDRESS, host.clone()));
            attributes.push(KeyValue::new(attr::SERVER_PORT, i64::from(port)));
        }
        match start.cause {
            Cause::First => {}
            Cause::Retry(why) => attributes.push(KeyValue::new(attr::RETRY_REASON, why)),
            Cause::Fallback(why) => attributes.push(KeyValue::new(attr::FALLBACK_REASON, why)),
            Cause::Resume => attributes.push(KeyValue::new(attr::RESUMPTION, true)),
        }
        if let Some(chat) = start.chat {
            request_attributes(chat, &mut attributes);
            if let Some(max) = server.tracing.content_max_bytes {
                let messages = serde_json::to_string(&chat.messages).unwrap_or_default();
                let text = cut(messages, max);
                attributes.push(KeyValue::new(attr::GEN_AI_INPUT_MESSAGES, text));
            }
        }
        let span = tracer
            .span_builder(format!("{operation} {}", start.upstream_model))
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(tracer, &server.cx);
        AttemptSpan::started(server, server.cx.with_span(span))
    }

    /// Ends the span with what the request's report says (the record calls this once,
    /// when the request is over).
    pub fn finish(&self, report: &Report) {
        let Some(server) = &self.0 else { return };
        let span = server.cx.span();
        if !span.is_recording() {
            return span.end();
        }
        let mut attributes = Vec::with_capacity(16);
        attributes.extend([
            KeyValue::new(attr::HTTP_RESPONSE_STATUS_CODE, i64::from(report.status)),
            KeyValue::new(attr::KEY_NAME, report.key.clone()),
            KeyValue::new(attr::ATTEMPTS, i64::from(report.attempts)),
            KeyValue::new(attr::STREAM, report.stream),
        ]);
        let optional = [
            (attr::TEAM_NAME, report.team.clone()),
            (attr::MODEL, report.model.clone()),
            (
                attr::TARGET,
                report.served_by.as_ref().map(|s| s.target.clone()),
            ),
            (attr::RESUMED_ON, report.resumed_on.clone()),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                attributes.push(KeyValue::new(key, value));
            }
        }
        if let Some(usage) = report.usage {
            attributes.extend([
                KeyValue::new(attr::USAGE_INPUT_TOKENS, as_i64(usage.prompt_tokens)),
                KeyValue::new(attr::USAGE_OUTPUT_TOKENS, as_i64(usage.completion_tokens)),
                KeyValue::new(attr::USAGE_SOURCE, usage.source.as_str()),
            ]);
        }
        if let Some(cost) = report.cost {
            attributes.push(KeyValue::new(attr::COST_USD, cost.usd));
            attributes.push(KeyValue::new(attr::COST_SOURCE, cost.source.as_str()));
        }
        if !report.finish_reasons.is_empty() {
            let reasons = finish_reasons(&report.finish_reasons);
            attributes.push(KeyValue::new(attr::FINISH_REASONS, reasons));
        }
        span.set_attributes(attributes);
        if report.status == CLIENT_CLOSED_REQUEST {
            span.set_attribute(KeyValue::new(attr::CLIENT_LEFT, true));
        } else if let Some(error) = report.error {
            span.set_attribute(KeyValue::new(attr::ERROR_TYPE, error));
            span.set_status(Status::error(error));
        }
        span.end();
    }

    /// Ends the span of a request no record took over (refused at the door, or a route
    /// outside the pipeline) with the status it was answered with.
    pub fn finish_http(&self, status: u16) {
        let Some(server) = &self.0 else { return };
        let span = server.cx.span();
        span.set_attribute(KeyValue::new(
            attr::HTTP_RESPONSE_STATUS_CODE,
            i64::from(status),
        ));
        if status >= 400 {
            let kind = status.to_string();
            span.set_attribute(KeyValue::new(attr::ERROR_TYPE, kind.clone()));
            span.set_status(Status::error(kind));
        }
        span.end();
    }
}

/// A step's span; ends when dropped.
pub struct StepSpan(Option<Span>);

impl StepSpan {
    /// A decision worth keeping on the span, such as the limits' verdict.
    pub fn note(&mut self, key: &'static str, value: &'static str) {
        if let Some(span) = &mut self.0 {
            span.set_attribute(KeyValue::new(key, value));
        }
    }

    /// The step refused the request.
    pub fn fail(mut self, error: &GatewayError) {
        if let Some(span) = &mut self.0 {
            span.set_attribute(KeyValue::new(attr::ERROR_TYPE, error.label()));
            span.set_status(Status::error(error.label()));
        }
    }
}

/// Why an attempt is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    First,
    /// After a failed attempt on the same model, with that failure's label.
    Retry(&'static str),
    /// The first attempt on a fallback model, with the label of the failure that led there.
    Fallback(&'static str),
    /// Continues a stream that broke after its first content.
    Resume,
}

/// What an attempt's span says from its start.
pub struct AttemptStart<'a> {
    pub provider: ProviderKind,
    pub upstream_model: &'a Arc<str>,
    /// `provider/upstream model`.
    pub target: &'a Arc<str>,
    pub address: Option<(&'a Arc<str>, u16)>,
    /// The chat request; `None` for embeddings.
    pub chat: Option<&'a ChatRequest>,
    /// 1 for the request's first attempt, counting retries, fallbacks and resumptions.
    pub number: u32,
    pub cause: Cause,
    pub breaker: &'static str,
}

/// An attempt's CLIENT span and the headers that carry its context upstream. Ended by
/// [`AttemptSpan::finish`]; dropped unfinished, it ends saying the client left.
#[derive(Default)]
pub struct AttemptSpan {
    cx: Option<Context>,
    headers: HeaderMap,
    content_max_bytes: Option<usize>,
    output: String,
}

impl AttemptSpan {
    fn unrecorded(server: &Server) -> Self {
        let mut unrecorded = Self::default();
        unrecorded.headers = context_headers(server, &server.cx);
        unrecorded
    }

    fn started(server: &Server, cx: Context) -> Self {
        Self {
            headers: context_headers(server, &cx),
            cx: Some(cx),
            content_max_bytes: server.tracing.content_max_bytes,
            output: String::new(),
        }
    }

    /// `traceparent` (and `tracestate`) for the upstream request; empty when off.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    pub fn is_recording(&self) -> bool {
        self.cx.as_ref().is_some_and(|cx| cx.span().is_recording())
    }

    pub fn first_chunk(&self, after: Duration) {
        if let Some(cx) = &self.cx {
            let seconds = after.as_secs_f64();
            let kv = KeyValue::new(attr::GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK, seconds);
            cx.span().set_attribute(kv);
        }
    }

    /// Text a stream delivered, kept for the span when content is captured.
    pub fn wants_output(&self) -> bool {
        self.content_max_bytes
            .is_some_and(|max| self.output.len() < max && self.is_recording())
    }

    pub fn add_output(&mut self, text: &str) {
        if let Some(max) = self.content_max_bytes {
            let room = max.saturating_sub(self.output.len());
            self.output.push_str(prefix(text, room));
        }
    }

    /// The answer's facts: its id, model, finish reasons and usage; `body` is a complete
    /// answer's JSON, for content capture.
    pub fn answer(&mut self, facts: &AnswerFacts, body: Option<&[u8]>) {
        let Some(cx) = &self.cx else { return };
        let span = cx.span();
        let mut attributes = Vec::with_capacity(6);
        if let Some(id) = &facts.id {
            attributes.push(KeyValue::new(attr::GEN_AI_RESPONSE_ID, id.clone()));
        }
        if let Some(model) = &facts.model {
            attributes.push(KeyValue::new(attr::GEN_AI_RESPONSE_MODEL, model.clone()));
        }
        if !facts.finish_reasons.is_empty() {
            let reasons = finish_reasons(&facts.finish_reasons);
            attributes.push(KeyValue::new(attr::GEN_AI_RESPONSE_FINISH_REASONS, reasons));
        }
        if let Some(usage) = facts.usage {
            attributes.extend([
                KeyValue::new(attr::GEN_AI_USAGE_INPUT_TOKENS, as_i64(usage.prompt_tokens)),
                KeyValue::new(
                    attr::GEN_AI_USAGE_OUTPUT_TOKENS,
                    as_i64(usage.completion_tokens),
                ),
            ]);
        }
        if let (Some(max), Some(body)) = (self.content_max_bytes, body) {
            let choices = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .map(|v| v["choices"].to_string())
                .unwrap_or_default();
            self.output = cut(choices, max);
        }
        span.set_attributes(attributes);
    }

    /// The attempt is over: `error` is how it failed, if it did.
    pub fn finish(&mut self, error: Option<&GatewayError>) {
        let Some(cx) = self.cx.take() else { return };
        let span = cx.span();
        if !self.output.is_empty() {
            let output = std::mem::take(&mut self.output);
            span.set_attribute(KeyValue::new(attr::GEN_AI_OUTPUT_MESSAGES, output));
        }
        match error {
            None => span.set_attribute(KeyValue::new(attr::ATTEMPT_OUTCOME, "success")),
            Some(error) => {
                span.set_attributes([
                    KeyValue::new(attr::ATTEMPT_OUTCOME, error.label()),
                    KeyValue::new(attr::ERROR_TYPE, error.label()),
                ]);
                span.set_status(Status::error(error.label()));
            }
        }
        span.end();
    }
}

impl Drop for AttemptSpan {
    fn drop(&mut self) {
        if let Some(cx) = self.cx.take() {
            let span = cx.span();
            span.set_attributes([
                KeyValue::new(attr::ATTEMPT_OUTCOME, "client_left"),
                KeyValue::new(attr::CLIENT_LEFT, true),
            ]);
            span.end();
        }
    }
}

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The SERVER span's name (`{method} {route}`) and route: static for the routes every
/// request takes, so that naming the span allocates nothing.
fn server_span_name(method: &Method, route: &str) -> (Cow<'static, str>, Cow<'static, str>) {
    const KNOWN: [(&str, &str); 3] = [
        ("/v1/chat/completions", "POST /v1/chat/completions"),
        ("/v1/embeddings", "POST /v1/embeddings"),
        ("/v1/feedback", "POST /v1/feedback"),
    ];
    let known = KNOWN.iter().find(|(known, _)| *known == route);
    match known {
        Some((route, name)) if method == Method::POST => (Cow::from(*name), Cow::from(*route)),
        _ => (
            Cow::from(format!("{method} {route}")),
            Cow::from(route.to_owned()),
        ),
    }
}

/// The headers that carry `cx` upstream.
fn context_headers(server: &Server, cx: &Context) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let propagator = &server.tracing.propagator;
    propagator.inject_context(cx, &mut ContextHeaders(&mut headers));
    headers
}

/// Writes the W3C trace context into upstream headers, naming the two headers it uses
/// without parsing their names again for every request.
struct ContextHeaders<'a>(&'a mut HeaderMap);

impl Injector for ContextHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        let name = match key {
            "traceparent" => TRACEPARENT,
            "tracestate" => TRACESTATE,
            other => match HeaderName::from_bytes(other.as_bytes()) {
                Ok(name) => name,
                Err(_) => return,
            },
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            self.0.insert(name, value);
        }
    }
}

/// The method as a static string for the usual ones (no allocation per request).
fn method_name(method: &Method) -> Value {
    match *method {
        Method::POST => Value::from("POST"),
        Method::GET => Value::from("GET"),
        _ => Value::from(method.as_str().to_owned()),
    }
}

/// `gen_ai.provider.name`: the conventions' well-known names; the mock is ours.
fn provider_name(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Openai => "openai",
        ProviderKind::Azure => "azure.ai.openai",
        ProviderKind::Anthropic => "anthropic",
        ProviderKind::Gemini => "gcp.gemini",
        ProviderKind::Mock => "switchyard.mock",
    }
}

/// The request parameters the conventions name, only those the client set.
fn request_attributes(chat: &ChatRequest, attributes: &mut Vec<KeyValue>) {
    if let Some(max) = chat.max_output_tokens() {
        attributes.push(KeyValue::new(attr::GEN_AI_REQUEST_MAX_TOKENS, as_i64(max)));
    }
    if let Some(temperature) = chat.temperature {
        attributes.push(KeyValue::new(attr::GEN_AI_REQUEST_TEMPERATURE, temperature));
    }
    if let Some(top_p) = chat.top_p {
        attributes.push(KeyValue::new(attr::GEN_AI_REQUEST_TOP_P, top_p));
    }
    if let Some(seed) = chat.extra.get("seed").and_then(serde_json::Value::as_i64) {
        attributes.push(KeyValue::new(attr::GEN_AI_REQUEST_SEED, seed));
    }
    let stops: Vec<StringValue> = match &chat.stop {
        Some(Stop::One(stop)) => vec![stop.clone().into()],
        Some(Stop::Many(stops)) => stops.iter().map(|s| s.clone().into()).collect(),
        None => Vec::new(),
    };
    if !stops.is_empty() {
        let value = Value::Array(Array::String(stops));
        attributes.push(KeyValue::new(attr::GEN_AI_REQUEST_STOP_SEQUENCES, value));
    }
}

fn finish_reasons(reasons: &[FinishReason]) -> Value {
    let reasons = reasons
        .iter()
        .map(|r| StringValue::from(r.as_str()))
        .collect();
    Value::Array(Array::String(reasons))
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn cut(mut text: String, max: usize) -> String {
    let keep = prefix(&text, max).len();
    text.truncate(keep);
    text
}

fn prefix(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_cut_on_a_character_boundary() {
        assert_eq!(cut("héllo".to_owned(), 2), "h");
        assert_eq!(cut("héllo".to_owned(), 3), "hé");
        assert_eq!(cut("hi".to_owned(), 10), "hi");
    }

    #[test]
    fn off_builds_nothing() {
        let traces = Traces::default();
        let trace = traces.server(&Method::POST, "/v1/x", &HeaderMap::new(), "r".into());
        assert!(trace.trace_id().is_none());
        let mut step = trace.step("auth");
        step.note(attr::LIMIT_DECISION, "admitted");
        let attempt = trace.attempt(&AttemptStart {
            provider: ProviderKind::Mock,
            upstream_model: &Arc::from("m"),
            target: &Arc::from("mock/m"),
            address: None,
            chat: None,
            number: 1,
            cause: Cause::First,
            breaker: "closed",
        });
        assert!(attempt.headers().is_empty());
        assert!(!attempt.is_recording());
    }
}
