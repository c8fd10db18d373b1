//! The request record: the facts of one request as they become known, shared by the
//! pipeline, the stream on its way to the client and the edge. A streamed answer keeps
//! producing facts (first token, usage, finish reasons, how it ended) after the layers
//! have returned, so the record lives until the last of them lets go of it; then it
//! settles the request's limit reservation and hands its [`Report`] to every sink.
//!
//! Invariant: each request is reported exactly once, when its record is dropped.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::api::chat::FinishReason;
use crate::api::reply::AnswerFacts;
use crate::auth::Key;
use crate::clock::{self, Instant};
use crate::error::GatewayError;
use crate::limits::{LimitStatus, Used};
use crate::metrics::Metrics;
use crate::pricing::{Cost, Price};
use crate::report::{CLIENT_CLOSED_REQUEST, Endpoint, Report, ServedBy, Sinks, Timings};
use crate::snapshot::Target;
use crate::telemetry::spans::RequestTrace;
use crate::usage::Usage;

#[derive(Debug, Clone, Copy)]
pub enum Mark {
    UpstreamStart,
    FirstByte,
    FirstContent,
    UpstreamEnd,
    End,
}

/// Gives a request's limit reservations back with what it really used; runs once, when
/// the request is over.
pub type Settlement = Box<dyn FnOnce(Used) + Send>;

pub struct RequestRecord {
    pub request_id: Arc<str>,
    /// The client's own `x-request-id`, when it sent one.
    pub correlation_id: Option<Arc<str>>,
    pub endpoint: Endpoint,
    received: Instant,
    metrics: Arc<Metrics>,
    sinks: Sinks,
    state: Mutex<RecordState>,
    settlement: Mutex<Option<Settlement>>,
    /// The request's server span, ended with the report.
    trace: RequestTrace,
}

struct RecordState {
    key: Arc<str>,
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
    finish_reasons: Vec<FinishReason>,
    response_id: Option<String>,
    response_model: Option<String>,
    /// The target a broken stream was resumed on.
    resumed_on: Option<Arc<str>>,
}

impl RequestRecord {
    /// The record of a request `caller` made.
    pub fn new(
        request_id: Arc<str>,
        endpoint: Endpoint,
        caller: &Key,
        metrics: Arc<Metrics>,
        sinks: Sinks,
    ) -> Self {
        let state = RecordState {
            key: caller.name.clone(),
            team: caller.team.as_ref().map(|t| t.name.clone()),
            model: None,
            target: None,
            attempts: 0,
            stream: false,
            timings: Timings::default(),
            usage: None,
            price: None,
            limit_status: None,
            status: None,
            error: None,
            delivered: false,
            finish_reasons: Vec::new(),
            response_id: None,
            response_model: None,
            resumed_on: None,
        };
        metrics.enter(endpoint);
        Self {
            request_id,
            correlation_id: None,
            endpoint,
            received: clock::now(),
            metrics,
            sinks,
            state: Mutex::new(state),
            settlement: Mutex::default(),
            trace: RequestTrace::default(),
        }
    }

    /// The record, with the client's own request id.
    pub fn with_correlation_id(mut self, correlation_id: Option<Arc<str>>) -> Self {
        self.correlation_id = correlation_id;
        self
    }

    /// The record of a traced request: it ends the request's server span.
    pub fn with_trace(mut self, trace: RequestTrace) -> Self {
        trace.claim();
        self.trace = trace;
        self
    }

    /// The request's trace, for the layers' spans.
    pub fn trace(&self) -> &RequestTrace {
        &self.trace
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn state(&self) -> MutexGuard<'_, RecordState> {
        // A panic while holding this lock cannot leave the record inconsistent in a way
        // that matters for reporting, so a poisoned lock is still used.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_stream(&self, stream: bool) {
        self.state().stream = stream;
    }

    pub fn set_model(&self, model: Arc<str>) {
        self.state().model = Some(model);
    }

    /// An attempt goes to `target`: the last one is the one that served the request.
    /// Returns the attempt's number (1 for the first).
    pub fn start_attempt(&self, target: &Arc<Target>, price: Option<Price>) -> u32 {
        let mut state = self.state();
        state.target = Some(target.clone());
        state.price = price;
        state.attempts += 1;
        state.attempts
    }

    /// What the answer said so far (a stream's id, model, finish reasons and usage).
    pub fn answer_facts(&self) -> AnswerFacts {
        let state = self.state();
        AnswerFacts {
            usage: state.usage,
            content_len: 0,
            finish_reasons: state.finish_reasons.clone(),
            id: state.response_id.clone(),
            model: state.response_model.clone(),
        }
    }

    /// The target of the last attempt (`provider/upstream model`) and the attempts made.
    pub fn attempts(&self) -> (Option<Arc<str>>, u32) {
        let state = self.state();
        let target = state.target.as_ref().map(|t| t.health.name.clone());
        (target, state.attempts)
    }

    /// The target of the last attempt.
    pub fn last_target(&self) -> Option<Arc<Target>> {
        self.state().target.clone()
    }

    /// The usage recorded so far.
    pub fn usage(&self) -> Option<Usage> {
        self.state().usage
    }

    /// What the usage recorded so far cost at the serving target's price (`None` without
    /// a price or a usage).
    pub fn cost(&self) -> Option<Cost> {
        let state = self.state();
        state.price.zip(state.usage).map(|(p, u)| p.cost(&u))
    }

    /// A broken stream went on on `target` (its usage is both attempts').
    pub fn set_resumed(&self, target: Arc<str>) {
        self.state().resumed_on = Some(target);
    }

    /// Records a moment; only the first occurrence of each counts.
    pub fn mark(&self, mark: Mark) {
        let elapsed = clock::now().saturating_duration_since(self.received);
        let mut state = self.state();
        let slot = match mark {
            Mark::UpstreamStart => &mut state.timings.upstream_start,
            Mark::FirstByte => &mut state.timings.first_byte,
            Mark::FirstContent => &mut state.timings.first_content,
            Mark::UpstreamEnd => &mut state.timings.upstream_end,
            Mark::End => &mut state.timings.end,
        };
        slot.get_or_insert(elapsed);
    }

    pub fn set_usage(&self, usage: Usage) {
        self.state().usage = Some(usage);
    }

    /// The facts of a complete answer; `usage` is the provider's or an estimate.
    pub fn set_answer(&self, facts: &AnswerFacts, usage: Usage) {
        let mut state = self.state();
        state.usage = Some(usage);
        state.finish_reasons.clone_from(&facts.finish_reasons);
        state.response_id.clone_from(&facts.id);
        state.response_model.clone_from(&facts.model);
    }

    /// A streamed answer's own id and model, from its first chunk.
    pub fn set_identity(&self, id: Option<String>, model: Option<String>) {
        let mut state = self.state();
        state.response_id = id;
        state.response_model = model;
    }

    /// A choice of a streamed answer finished.
    pub fn add_finish_reason(&self, reason: FinishReason) {
        self.state().finish_reasons.push(reason);
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

    /// The report of the finished request, built once.
    fn report(&mut self) -> Report {
        let total = clock::now().saturating_duration_since(self.received);
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        let status = match state.status {
            Some(status) if state.delivered => status,
            _ => CLIENT_CLOSED_REQUEST,
        };
        let served_by = state.target.as_ref().map(|t| ServedBy {
            target: t.health.name.clone(),
            provider: t.provider.name.clone(),
            provider_kind: t.provider.kind,
            upstream_model: t.upstream_model.clone(),
        });
        Report {
            request_id: self.request_id.clone(),
            correlation_id: self.correlation_id.clone(),
            endpoint: self.endpoint,
            status,
            error: state.error,
            key: state.key.clone(),
            team: state.team.take(),
            model: state.model.take(),
            served_by,
            attempts: state.attempts,
            stream: state.stream,
            timings: state.timings,
            total,
            usage: state.usage,
            cost: state.price.zip(state.usage).map(|(p, u)| p.cost(&u)),
            finish_reasons: std::mem::take(&mut state.finish_reasons),
            response_id: state.response_id.take(),
            response_model: state.response_model.take(),
            resumed_on: state.resumed_on.take(),
            trace_id: self.trace.trace_id().cloned(),
            span_id: self.trace.span_id().cloned(),
            trace_recorded: self.trace.is_recording(),
        }
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let report = self.report();
        let settlement = self
            .settlement
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(settle) = settlement {
            // A failed request used nothing: everything it reserved comes back.
            settle(Used {
                tokens: report.usage.map_or(0, |u| u.total_tokens),
                cost_usd: report.cost.map_or(0.0, |c| c.usd),
            });
        }
        for sink in self.sinks.iter() {
            sink.record(&report);
        }
        self.metrics.leave(self.endpoint);
        self.trace.finish(&report);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::report::Sink;
    use crate::usage::UsageSource;

    /// Keeps every report it receives.
    #[derive(Default)]
    struct Kept(Mutex<Vec<Report>>);

    impl Sink for Kept {
        fn record(&self, report: &Report) {
            self.0.lock().unwrap().push(report.clone());
        }
    }

    fn record(kept: &Arc<Kept>) -> RequestRecord {
        let config = format!("auth: {{keys: {{alice: {{sha256: {}}}}}}}", "0".repeat(64));
        let raw = crate::config::parse(&config, |_| None).unwrap();
        let keys = crate::auth::KeyTable::build(&raw.auth);
        let sinks: Sinks = Arc::new([kept.clone() as Arc<dyn Sink>]);
        let key = keys.by_name("alice").unwrap();
        RequestRecord::new(
            "req_1".into(),
            Endpoint::ChatCompletions,
            key,
            Arc::default(),
            sinks,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_stream_is_reported_once_with_its_timings_and_facts() {
        let kept = Arc::new(Kept::default());
        let record = record(&kept);
        let step = || tokio::time::advance(Duration::from_millis(10));
        step().await;
        record.mark(Mark::UpstreamStart);
        step().await;
        record.mark(Mark::FirstByte);
        record.mark(Mark::FirstContent);
        record.respond(200, true);
        record.set_identity(Some("chatcmpl-1".into()), Some("gpt-x-0613".into()));
        record.add_finish_reason(FinishReason::Length);
        record.set_usage(Usage::new(3, 4, UsageSource::Provider));
        step().await;
        record.mark(Mark::FirstContent); // only the first occurrence counts
        record.end_stream(None);
        drop(record);
        let reports = kept.0.lock().unwrap();
        let [report] = reports.as_slice() else {
            panic!("one report: {reports:?}")
        };
        let ms = |ms| Some(Duration::from_millis(ms));
        assert_eq!(report.timings.upstream_start, ms(10));
        assert_eq!(
            (report.timings.first_byte, report.timings.first_content),
            (ms(20), ms(20))
        );
        assert_eq!((report.timings.end, Some(report.total)), (ms(30), ms(30)));
        assert_eq!((report.status, report.error), (200, None));
        assert_eq!(&*report.key, "alice");
        assert_eq!(report.finish_reasons, [FinishReason::Length]);
        assert_eq!(report.response_id.as_deref(), Some("chatcmpl-1"));
        assert_eq!(report.response_model.as_deref(), Some("gpt-x-0613"));
        assert_eq!(report.usage.map(|u| u.total_tokens), Some(7));
    }

    #[test]
    fn a_client_that_leaves_mid_stream_is_reported_as_499() {
        let kept = Arc::new(Kept::default());
        let record = record(&kept);
        record.respond(200, true);
        drop(record);
        assert_eq!(kept.0.lock().unwrap()[0].status, CLIENT_CLOSED_REQUEST);
    }
}
