//! One attempt at one target: sends the call, waits for the answer to start, and meters it.
//! The resilience layer decides which target and how many attempts; this module makes one.
//!
//! An attempt has started answering when a non-streamed answer is complete, or when a
//! stream has sent its first chunk with content: until then (within the first-byte
//! timeout) it can fail and be retried without the client seeing anything, so the chunks
//! before that one are held back. After it, the stream is the client's: it runs under the
//! idle timeout and the deadline, and a failure ends it with an error event.
//!
//! Writes on the record: the attempt's target and price, the upstream timings, the usage
//! (the provider's, or an estimate marked as such). Records the attempt's outcome on its
//! target's breaker: a stream's when it ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures_util::{Stream, StreamExt};
use http::HeaderMap;
use std::time::Duration;

use crate::clock::{self, Instant};

use super::Call;
use super::watchers::{IdleTimeout, Metered};
use crate::api::chunk::Chunk;
use crate::api::reply::{ChunkStream, JsonReply, Reply, SkippedEvents};
use crate::config::schema::{ProviderKind, ProviderTimeouts};
use crate::context::RequestContext;
use crate::error::{GatewayError, UpstreamKind};
use crate::health::InFlight;
use crate::health::breaker::Pass;
use crate::pricing::Price;
use crate::providers::{ChatCall, EmbeddingsCall};
use crate::record::{Mark, RequestRecord};
use crate::snapshot::{Snapshot, Target};
use crate::telemetry::spans::{AttemptSpan, AttemptStart, Cause};
use crate::usage::{Usage, UsageSource, estimate_prompt_tokens, estimate_tokens};

/// When a request must be over.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    /// Every attempt, retry and fallback: `resilience.deadline`, or the model's
    /// `timeouts.total` when tighter.
    pub attempts: Instant,
    /// How long `attempts` allowed from the start.
    pub total: Duration,
    /// A stream that has started: only the model's `timeouts.total`, when set (a long
    /// generation is otherwise bounded by the idle timeout alone).
    pub stream: Option<Instant>,
}

/// An answer that has started: a complete body, or a stream's chunks up to its first
/// content and the rest of it.
enum Started {
    Json(JsonReply),
    /// The chunks held, the rest of the stream, when its first chunk came.
    Stream(Vec<Chunk>, Option<ChunkStream>, Instant),
}

/// Sends `call` to `target` and returns once the answer has started, or fails. `cause`
/// says why the attempt is made, for its span.
pub async fn attempt(
    ctx: &RequestContext,
    call: &Call,
    target: &Arc<Target>,
    pass: Pass,
    timeouts: ProviderTimeouts,
    deadline: Deadline,
    cause: Cause,
) -> Result<Reply, GatewayError> {
    let record = &ctx.record;
    let price = ctx.snapshot.prices.price(&target.upstream_model).or(
        // The mock is free unless the price table says otherwise.
        (target.provider.kind == ProviderKind::Mock).then_some(Price::FREE),
    );
    let number = record.start_attempt(target, price);
    record.mark(Mark::UpstreamStart);
    let started = clock::now();
    let span = record.trace().attempt(&AttemptStart {
        provider: target.provider.kind,
        upstream_model: &target.upstream_model,
        target: &target.health.name,
        address: target.provider.address.as_ref().map(|(h, p)| (h, *p)),
        chat: match call {
            Call::Chat(chat) => Some(chat),
            Call::Embeddings(_) => None,
        },
        number,
        cause,
        breaker: target.health.breaker.state().as_str(),
    });
    let mut outcome = Outcome {
        span,
        in_flight: target.health.start(),
        started,
        pass,
        snapshot: ctx.snapshot.clone(),
        record: record.clone(),
        skipped: Arc::default(),
        reported: 0,
    };
    let skipped = outcome.skipped.clone();
    let remaining = deadline.attempts.saturating_duration_since(started);
    let upstream_headers = outcome.span.headers();
    let answer = tokio::time::timeout(timeouts.first_byte.min(remaining), async {
        match send(target, call, &record.request_id, &skipped, upstream_headers).await? {
            Reply::Json(json) => Ok(Started::Json(json)),
            Reply::Stream(stream) => first_content(stream).await,
        }
    })
    .await
    .unwrap_or_else(|_| {
        Err(if remaining < timeouts.first_byte {
            GatewayError::DeadlineExceeded {
                after: deadline.total,
            }
        } else {
            GatewayError::UpstreamTimeout {
                provider: target.provider.name.to_string(),
                phase: "first byte",
                after: timeouts.first_byte,
            }
        })
    });
    let answer = match answer {
        Ok(answer) => answer,
        Err(error) => {
            log_failure(record, target, &error);
            outcome.finish(Some(&error));
            return Err(error);
        }
    };
    target.health.observe_latency(started.elapsed());
    record.mark(Mark::FirstByte);
    Ok(match answer {
        Started::Json(json) => {
            outcome.span.answer(json.facts(), Some(json.body()));
            outcome.finish(None);
            let usage = json.facts().usage.unwrap_or_else(|| estimate(call, &json));
            record.set_answer(json.facts(), usage);
            record.mark(Mark::End);
            Reply::Json(json)
        }
        Started::Stream(held, rest, first_chunk) => {
            outcome
                .span
                .first_chunk(first_chunk.saturating_duration_since(started));
            let prompt_estimate = match call {
                Call::Chat(chat) => estimate_prompt_tokens(chat),
                Call::Embeddings(_) => 0,
            };
            let rest = rest.map(|rest| {
                let provider = target.provider.name.clone();
                IdleTimeout::new(rest, timeouts.stream_idle, deadline.stream, provider)
            });
            let stream = futures_util::stream::iter(held.into_iter().map(Ok))
                .chain(futures_util::stream::iter(rest).flatten());
            let watched = Watched {
                inner: Box::pin(stream),
                outcome: Some(outcome),
            };
            let upstream = (target.provider.kind, target.upstream_model.clone());
            let metered =
                Metered::new(Box::pin(watched), record.clone(), prompt_estimate, upstream);
            Reply::Stream(Box::pin(metered))
        }
    })
}

/// How an attempt ended, for its target: recorded once on the target's breaker (only a
/// failure that says something about the target counts against it, not a client's bad
/// request) and in the attempts metric. Holds the target's in-flight count meanwhile.
struct Outcome {
    /// The attempt's span: ended with the outcome, or (dropped) saying the client left.
    span: AttemptSpan,
    in_flight: InFlight,
    started: Instant,
    pass: Pass,
    snapshot: Arc<Snapshot>,
    record: Arc<RequestRecord>,
    /// Malformed events the stream dropped, and how many of them were reported.
    skipped: Arc<SkippedEvents>,
    reported: u64,
}

impl Outcome {
    /// Reports the malformed events dropped since the last call: a WARN each (with the
    /// request id) and the metric by target.
    fn report_skipped(&mut self) {
        let skipped = self.skipped.count();
        for _ in self.reported..skipped {
            let health = self.in_flight.health();
            tracing::warn!(
                request_id = &*self.record.request_id,
                target_name = &*health.name,
                "dropped a stream event that is not valid JSON; the stream goes on"
            );
            self.record.metrics().count_malformed_event(&health.name);
        }
        self.reported = skipped;
    }

    fn finish(mut self, error: Option<&GatewayError>) {
        self.span.finish(error);
        self.report_skipped();
        let health = self.in_flight.health();
        let metrics = self.record.metrics();
        // The request's own deadline says nothing about the target either way.
        if !matches!(error, Some(GatewayError::DeadlineExceeded { .. })) {
            let failed = error.is_some_and(GatewayError::fails_over);
            let settings = &self.snapshot.resilience.breaker;
            health.breaker.record(self.pass, failed, settings, metrics);
            if failed {
                health.observe_failure(self.started.elapsed());
            }
        }
        match error.map(GatewayError::upstream_kind) {
            None => health.observe_credentials(false),
            Some(Some(UpstreamKind::Auth)) => health.observe_credentials(true),
            Some(_) => {}
        }
        metrics.count_attempt(&health.name, error.map_or("success", GatewayError::label));
        metrics.observe_upstream(&health.name, self.started.elapsed());
        if error.is_none() {
            self.record.mark(Mark::UpstreamEnd);
        }
    }
}

/// A started stream on its way to the client: its attempt's outcome is recorded when it
/// ends, cleanly or with an error (a stream cut after its first content still counts
/// against the target).
struct Watched {
    inner: ChunkStream,
    outcome: Option<Outcome>,
}

impl Stream for Watched {
    type Item = Result<Chunk, GatewayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = ready!(self.inner.as_mut().poll_next(cx));
        let ended = match &item {
            None => Some(None),
            Some(Err(error)) => Some(Some(error)),
            Some(Ok(_)) => None,
        };
        if let Some(error) = ended
            && let Some(mut outcome) = self.outcome.take()
        {
            if outcome.span.is_recording() {
                // The stream's facts, as the record has them from its chunks so far.
                outcome.span.answer(&outcome.record.answer_facts(), None);
            }
            outcome.finish(error);
        } else if let Some(outcome) = &mut self.outcome {
            outcome.report_skipped();
            if let Some(Ok(chunk)) = &item
                && outcome.span.wants_output()
            {
                for (_, text) in chunk.texts() {
                    outcome.span.add_output(&text);
                }
            }
        }
        Poll::Ready(item)
    }
}

/// Reads a stream up to its first chunk with content (or its clean end). An error before
/// that fails the attempt.
async fn first_content(mut stream: ChunkStream) -> Result<Started, GatewayError> {
    let mut held = Vec::new();
    let mut first_chunk = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let first = *first_chunk.get_or_insert_with(clock::now);
        let has_content = chunk.has_content();
        held.push(chunk);
        if has_content {
            return Ok(Started::Stream(held, Some(stream), first));
        }
    }
    Ok(Started::Stream(
        held,
        None,
        first_chunk.unwrap_or_else(clock::now),
    ))
}

/// The provider call itself; a stream counts the malformed events it drops in `skipped`.
async fn send(
    target: &Target,
    call: &Call,
    request_id: &str,
    skipped: &Arc<SkippedEvents>,
    trace: &HeaderMap,
) -> Result<Reply, GatewayError> {
    let provider = &target.provider;
    let model = &target.upstream_model;
    match call {
        Call::Chat(request) => {
            let call = ChatCall {
                request,
                model,
                request_id,
                max_tokens: target.max_tokens,
                skipped,
                trace,
            };
            provider.adapter.chat(call).await
        }
        Call::Embeddings(request) => {
            let call = EmbeddingsCall {
                request,
                model,
                request_id,
                trace,
            };
            provider.adapter.embeddings(call).await.map(Reply::Json)
        }
    }
}

/// Usage for a complete answer whose provider reported none.
fn estimate(call: &Call, reply: &JsonReply) -> Usage {
    let prompt = match call {
        Call::Chat(chat) => estimate_prompt_tokens(chat),
        Call::Embeddings(request) => request
            .input
            .texts()
            .iter()
            .map(|t| estimate_tokens(t.len()))
            .sum(),
    };
    Usage::new(
        prompt,
        estimate_tokens(reply.facts().content_len),
        UsageSource::Estimated,
    )
}

fn log_failure(record: &RequestRecord, target: &Target, error: &GatewayError) {
    tracing::warn!(
        request_id = &*record.request_id,
        provider = &*target.provider.name,
        upstream_model = &*target.upstream_model,
        error = %error,
        "upstream attempt failed"
    );
}
