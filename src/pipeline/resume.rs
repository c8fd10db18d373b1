//! Resuming a stream that breaks after the client received content.
//!
//! Until its first content a stream can fail and be retried invisibly (`dispatch.rs`);
//! after it, what the client has is the client's. When such a stream breaks (cut, stalled,
//! an error event) and another target of the model or of its fallbacks can take over, the
//! answer goes on there, spliced into the same client stream:
//!
//! - a target that continues a final assistant message (`prefill`: Anthropic's kind, or
//!   configured per target) gets the conversation plus the text already delivered as that
//!   message, and continues it;
//! - any other target gets the original request again, and its answer is used only if it
//!   begins with exactly the text already delivered (that prefix is skipped); otherwise the
//!   stream ends with the original failure.
//!
//! The continuation's chunks carry the original stream's id and created time, no second
//! role chunk and no repeated text; its finish reason is the answer's; the usage is the sum
//! of both attempts (the broken one's estimated), and an SSE comment before `[DONE]` says
//! the stream was resumed (SDKs ignore comments). If the continuation fails in any way, the
//! client's stream ends with the error of the original failure, never the continuation's.
//! Tool-call streams and `n > 1` are not resumed; a model turns resumption off with
//! `resume_streams: false`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use super::Call;
use super::dispatch::{self, Deadline};
use crate::api::chat::{ChatRequest, Message, MessageContent, Role};
use crate::api::chunk::{Chunk, TextField};
use crate::api::reply::{ChunkStream, Reply};
use crate::clock;
use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::health::breaker::Pass;
use crate::snapshot::{ModelRoute, Target};
use crate::telemetry::spans::Cause;
use crate::usage::{Usage, UsageSource};

/// What a resumption needs of the request: its context, its call, the models that may
/// take over (the serving model first, then its fallbacks) and its deadline.
pub struct Resumable {
    pub ctx: Arc<RequestContext>,
    pub call: Call,
    pub models: Vec<Arc<ModelRoute>>,
    pub deadline: Deadline,
}

/// `stream` resumed on failure, when the request can be (a chat stream with one choice, on
/// a model that resumes streams); `stream` as it is otherwise.
pub fn resumable(stream: ChunkStream, plan: Resumable) -> ChunkStream {
    let Call::Chat(request) = &plan.call else {
        return stream;
    };
    let one_choice = request.n.is_none_or(|n| n <= 1);
    let enabled = plan.models.first().is_some_and(|m| m.resume_streams);
    if !(request.is_stream() && one_choice && enabled) {
        return stream;
    }
    Box::pin(Resuming {
        phase: Phase::Streaming(stream),
        delivered: Vec::new(),
        plan,
    })
}

enum Phase {
    /// The original stream: its content chunks are kept, in case it breaks.
    Streaming(ChunkStream),
    /// It broke: a continuation is being started.
    Starting {
        continuation: BoxFuture<'static, Result<Reply, GatewayError>>,
        splice: Box<Splice>,
    },
    /// The continuation, spliced in.
    Spliced {
        stream: ChunkStream,
        splice: Box<Splice>,
    },
    Done,
}

impl Phase {
    /// The splice of a continuation that is over, leaving `Done`.
    fn take_splice(&mut self) -> Box<Splice> {
        match std::mem::replace(self, Phase::Done) {
            Phase::Starting { splice, .. } | Phase::Spliced { splice, .. } => splice,
            Phase::Streaming(_) | Phase::Done => unreachable!("only a continuation has one"),
        }
    }
}

struct Resuming {
    phase: Phase,
    /// The chunks with content the client got from the original stream (shared, not
    /// copied).
    delivered: Vec<Chunk>,
    plan: Resumable,
}

/// How the continuation's chunks become the original stream's.
struct Splice {
    /// The original failure: what the client gets if the continuation fails.
    original: GatewayError,
    /// The original stream's id and created time.
    id: Value,
    created: Value,
    /// Text the continuation must begin with, skipped; `strict`: it must begin with it (a
    /// regenerated answer) or the stream ends with the original failure; otherwise (the
    /// whitespace a prefill leaves out) it is skipped if it comes.
    expect: String,
    strict: bool,
    /// The broken attempt's usage (estimated).
    before: Usage,
    target: Arc<str>,
}

/// What to do with one chunk of the continuation.
enum Spliced {
    Send(Chunk),
    Drop,
    /// A regenerated answer that does not begin with the delivered text.
    Diverged,
}

impl Stream for Resuming {
    type Item = Result<Chunk, GatewayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match &mut this.phase {
                Phase::Streaming(stream) => match std::task::ready!(stream.poll_next_unpin(cx)) {
                    Some(Ok(chunk)) => {
                        if chunk.has_content() {
                            this.delivered.push(chunk.clone());
                        }
                        return Poll::Ready(Some(Ok(chunk)));
                    }
                    Some(Err(error)) => {
                        // Dropped first: the broken attempt records its outcome and usage.
                        this.phase = Phase::Done;
                        match this.start(error) {
                            Ok(starting) => this.phase = starting,
                            Err(error) => return Poll::Ready(Some(Err(error))),
                        }
                    }
                    None => {
                        this.phase = Phase::Done;
                        return Poll::Ready(None);
                    }
                },
                Phase::Starting { continuation, .. } => {
                    let started = std::task::ready!(continuation.as_mut().poll(cx));
                    let splice = this.phase.take_splice();
                    match started {
                        Ok(Reply::Stream(stream)) => this.phase = Phase::Spliced { stream, splice },
                        Ok(Reply::Json(_)) | Err(_) => {
                            return Poll::Ready(Some(Err(this.give_up(*splice, "failed"))));
                        }
                    }
                }
                Phase::Spliced { stream, splice } => {
                    match std::task::ready!(stream.poll_next_unpin(cx)) {
                        Some(Ok(chunk)) => match splice.apply(chunk, &this.plan) {
                            Spliced::Send(chunk) => return Poll::Ready(Some(Ok(chunk))),
                            Spliced::Drop => {}
                            Spliced::Diverged => {
                                let splice = this.phase.take_splice();
                                return Poll::Ready(Some(Err(this.give_up(*splice, "diverged"))));
                            }
                        },
                        Some(Err(_)) => {
                            let splice = this.phase.take_splice();
                            return Poll::Ready(Some(Err(this.give_up(*splice, "failed"))));
                        }
                        None => {
                            let splice = this.phase.take_splice();
                            return Poll::Ready(Some(Ok(this.finish(&splice))));
                        }
                    }
                }
                Phase::Done => return Poll::Ready(None),
            }
        }
    }
}

impl Resuming {
    /// The continuation of a stream that broke with `error`, or `error` when there is none.
    fn start(&mut self, error: GatewayError) -> Result<Phase, GatewayError> {
        let plan = &self.plan;
        let Call::Chat(request) = &plan.call else {
            return Err(error);
        };
        let text = delivered_text(&self.delivered);
        let possible = error.fails_over() && clock::now() < plan.deadline.attempts;
        let (Some(text), true) = (text, possible) else {
            return Err(error);
        };
        let record = &plan.ctx.record;
        let failed = record.last_target();
        let Some((target, pass, model)) = self.choose(failed.as_deref()) else {
            return Err(error);
        };
        let (call, expect, strict) = if target.prefill {
            let kept = text.trim_end();
            let expect = text[kept.len()..].to_owned();
            (prefilled(request, kept), expect, false)
        } else {
            (plan.call.clone(), text, true)
        };
        let identity = self.delivered.first().map(identity).unwrap_or_default();
        tracing::info!(
            request_id = &*record.request_id,
            error = error.label(),
            target_name = &*target.health.name,
            prefill = target.prefill,
            "the stream broke after its first content: resuming it on another target"
        );
        let splice = Box::new(Splice {
            original: error,
            id: identity.0,
            created: identity.1,
            expect,
            strict,
            before: record.usage().unwrap_or_default(),
            target: target.health.name.clone(),
        });
        let ctx = plan.ctx.clone();
        let deadline = plan.deadline;
        let timeouts = target.timeouts(&model.timeouts);
        let continuation = Box::pin(async move {
            let resume = Cause::Resume;
            dispatch::attempt(&ctx, &call, &target, pass, timeouts, deadline, resume).await
        });
        Ok(Phase::Starting {
            continuation,
            splice,
        })
    }

    /// A target to continue on: of the serving model (not the one that broke) or of its
    /// fallbacks, whose breaker lets the request through; one that takes a prefill first.
    fn choose(&self, failed: Option<&Target>) -> Option<(Arc<Target>, Pass, Arc<ModelRoute>)> {
        let ctx = &self.plan.ctx;
        let settings = &ctx.snapshot.resilience.breaker;
        let candidates = || {
            self.plan.models.iter().flat_map(|model| {
                model
                    .usable_targets()
                    .filter(|t| failed.is_none_or(|f| !std::ptr::eq(&***t, f)))
                    .filter(|t| t.health.breaker.is_available())
                    .map(move |t| (t, model))
            })
        };
        let mut ordered: Vec<_> = candidates().filter(|(t, _)| t.prefill).collect();
        ordered.extend(candidates().filter(|(t, _)| !t.prefill));
        ordered.into_iter().find_map(|(target, model)| {
            let pass = target.health.breaker.pass(settings, ctx.record.metrics())?;
            Some((target.clone(), pass, model.clone()))
        })
    }

    /// The continuation failed (or `diverged`): the client gets the original failure.
    fn give_up(&self, splice: Splice, outcome: &'static str) -> GatewayError {
        let record = &self.plan.ctx.record;
        // What the client used is what the broken attempt sent.
        record.set_usage(splice.before);
        record.metrics().count_resumption(&splice.target, outcome);
        tracing::warn!(
            request_id = &*record.request_id,
            target_name = &*splice.target,
            outcome,
            "resuming the stream failed: it ends with the original failure"
        );
        splice.original
    }

    /// The continuation ended cleanly: the trailer comment, before the edge's `[DONE]`.
    fn finish(&self, splice: &Splice) -> Chunk {
        let record = &self.plan.ctx.record;
        record.metrics().count_resumption(&splice.target, "resumed");
        record.set_resumed(splice.target.clone());
        Chunk::comment(format!(
            "switchyard: resumed on {} after the first attempt broke; usage is both attempts'",
            splice.target
        ))
    }
}

impl Splice {
    fn apply(&mut self, mut chunk: Chunk, plan: &Resumable) -> Spliced {
        if let Some(usage) = chunk.usage() {
            let total = sum(self.before, usage);
            plan.ctx.record.set_usage(total);
            return self.rewrite(chunk, |value| {
                if let Ok(usage) = serde_json::to_value(total) {
                    value["usage"] = usage;
                }
            });
        }
        if !chunk.has_content() && chunk.finish_reason().is_none() {
            return Spliced::Drop;
        }
        let mut diverged = false;
        let skipped = chunk.edit_text(|field, text| match field {
            TextField::Content { choice: 0 } if !self.expect.is_empty() => {
                let (rest, ok) = skip(&mut self.expect, text, self.strict);
                diverged |= !ok;
                Some(rest)
            }
            _ => None,
        });
        if diverged || skipped.is_err() {
            return Spliced::Diverged;
        }
        if !chunk.has_content() && chunk.finish_reason().is_none() {
            return Spliced::Drop;
        }
        self.rewrite(chunk, |_| {})
    }

    /// The chunk with the original stream's id and created time.
    fn rewrite(&self, mut chunk: Chunk, also: impl FnOnce(&mut Value)) -> Spliced {
        let rewritten = chunk.rewrite(|value| {
            value["id"] = self.id.clone();
            value["created"] = self.created.clone();
            also(value);
        });
        match rewritten {
            Ok(()) => Spliced::Send(chunk),
            Err(_) => Spliced::Diverged,
        }
    }
}

/// Takes from the start of `text` what of `expect` it repeats; the rest of `text`, and
/// whether it agreed (strict: it must; otherwise a disagreement ends the skipping).
fn skip(expect: &mut String, text: &str, strict: bool) -> (String, bool) {
    let common = expect.len().min(text.len());
    if text.as_bytes()[..common] == expect.as_bytes()[..common] {
        expect.drain(..common);
        return (text[common..].to_owned(), true);
    }
    expect.clear();
    (text.to_owned(), !strict)
}

/// The content text the client got, or `None` when the stream cannot be resumed (a tool
/// call, or text of another choice, was delivered).
fn delivered_text(chunks: &[Chunk]) -> Option<String> {
    let mut text = String::new();
    for chunk in chunks {
        for (field, piece) in chunk.texts() {
            match field {
                TextField::Content { choice: 0 } => text.push_str(&piece),
                TextField::Reasoning { choice: 0 } => {}
                _ => return None,
            }
        }
    }
    (!text.is_empty()).then_some(text)
}

/// The request with `text` as a final assistant message to continue.
fn prefilled(request: &ChatRequest, text: &str) -> Call {
    let mut request = request.clone();
    request.messages.push(Message {
        role: Role::Assistant,
        content: Some(MessageContent::Text(text.to_owned())),
        name: None,
        tool_calls: None,
        tool_call_id: None,
        extra: serde_json::Map::new(),
    });
    Call::Chat(Arc::new(request))
}

/// A chunk's `id` and `created`.
fn identity(chunk: &Chunk) -> (Value, Value) {
    let value: Value = serde_json::from_slice(chunk.json()).unwrap_or_default();
    (value["id"].clone(), value["created"].clone())
}

/// Both attempts' usage; estimated if either was.
fn sum(before: Usage, after: Usage) -> Usage {
    let source = if before.source == UsageSource::Estimated {
        UsageSource::Estimated
    } else {
        after.source
    };
    Usage::new(
        before.prompt_tokens + after.prompt_tokens,
        before.completion_tokens + after.completion_tokens,
        source,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipping_takes_the_repeated_prefix_across_pieces() {
        let mut expect = "Hello wor".to_owned();
        assert_eq!(skip(&mut expect, "Hel", true), (String::new(), true));
        assert_eq!(skip(&mut expect, "lo world", true), ("ld".to_owned(), true));
        assert!(expect.is_empty());
        let mut expect = "Hello".to_owned();
        assert!(
            !skip(&mut expect, "Goodbye", true).1,
            "a regenerated answer diverged"
        );
        let mut expect = " ".to_owned();
        assert_eq!(skip(&mut expect, "blue", false), ("blue".to_owned(), true));
    }
}
