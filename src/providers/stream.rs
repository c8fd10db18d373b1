//! The one driver of every upstream event stream: it reads SSE events from the provider's
//! body and hands each to the adapter's [`Translator`], which keeps the per-stream state
//! and turns events into chunks. The end-of-stream rules live here, once:
//!
//! - a stream is complete when its translator has seen the provider's terminal event;
//!   nothing after it is read;
//! - a body that ends before that ends the stream with an error (the translator may say
//!   otherwise for providers without a terminal event, such as Gemini), so a cut answer
//!   never passes for a complete one;
//! - a transport failure, or an event the translator rejects, ends the stream with an
//!   error, and nothing is read after it;
//! - an event whose data is not valid JSON is dropped and counted ([`SkippedEvents`]), or
//!   ends the stream, as the provider's `on_malformed_event` says; it never reaches the
//!   client;
//! - events without data (comments, keep-alives) are skipped.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures_util::{Stream, StreamExt};
use hyper::body::Incoming;

use super::transport::error_chain;
use crate::api::chunk::Chunk;
use crate::api::reply::{ChunkStream, SkippedEvents};
use crate::config::schema::OnMalformedEvent;
use crate::error::GatewayError;
use crate::sse;

/// Why an event yields no chunks.
#[derive(Debug)]
pub enum EventError {
    /// The event's data is not valid JSON (the parser's words): the stream's policy decides.
    Malformed(String),
    /// The event says the answer failed, or breaks the provider's protocol: the stream ends.
    Failed(GatewayError),
}

impl From<GatewayError> for EventError {
    fn from(error: GatewayError) -> Self {
        Self::Failed(error)
    }
}

impl From<serde_json::Error> for EventError {
    fn from(error: serde_json::Error) -> Self {
        Self::Malformed(error.to_string())
    }
}

/// An adapter's per-stream state: native events in, OpenAI chunks out.
pub trait Translator: Send + Unpin + 'static {
    /// Translates one event's data (never empty) into the chunks it yields, appended to
    /// `out`. (The data is handed over, so an adapter that relays it as it is does not
    /// copy it.)
    fn event(&mut self, data: String, out: &mut VecDeque<Chunk>) -> Result<(), EventError>;

    /// Whether the provider's terminal event has been seen: the answer is complete.
    fn complete(&self) -> bool;

    /// The body ended before the terminal event. By default that is a cut stream;
    /// a provider without a terminal event decides here, and may add closing chunks.
    fn end(&mut self, _out: &mut VecDeque<Chunk>) -> Result<(), GatewayError> {
        Err(self.protocol(format!("the stream ended before {}", self.terminal_event())))
    }

    /// How the provider's terminal event is named in messages.
    fn terminal_event(&self) -> &'static str;

    /// An answer that is not what the provider's API promises.
    fn protocol(&self, detail: String) -> GatewayError;
}

/// What a stream does with its malformed events, and where it counts the skipped ones.
pub struct Malformed {
    pub policy: OnMalformedEvent,
    pub skipped: Arc<SkippedEvents>,
}

/// A provider's SSE body, as chunks.
pub struct UpstreamStream<T> {
    events: sse::Decoder<Incoming>,
    translator: T,
    malformed: Malformed,
    pending: VecDeque<Chunk>,
    done: bool,
}

impl<T: Translator> UpstreamStream<T> {
    pub fn new(body: Incoming, translator: T, malformed: Malformed) -> Self {
        Self {
            events: sse::Decoder::new(body),
            translator,
            malformed,
            pending: VecDeque::new(),
            done: false,
        }
    }

    /// The stream of `body` with `translator`, boxed as the pipeline takes it.
    pub fn boxed(body: Incoming, translator: T, malformed: Malformed) -> ChunkStream {
        Box::pin(Self::new(body, translator, malformed))
    }

    /// What an event that yields no chunks does to the stream.
    fn judge(&self, error: EventError) -> Result<(), GatewayError> {
        match (error, self.malformed.policy) {
            (EventError::Malformed(_), OnMalformedEvent::Skip) => {
                self.malformed.skipped.add();
                Ok(())
            }
            (EventError::Malformed(detail), OnMalformedEvent::Fail) => Err(self
                .translator
                .protocol(format!("malformed JSON in a stream event: {detail}"))),
            (EventError::Failed(error), _) => Err(error),
        }
    }

    fn fail(&mut self, error: GatewayError) -> Poll<Option<Result<Chunk, GatewayError>>> {
        self.done = true;
        self.pending.clear();
        Poll::Ready(Some(Err(error)))
    }
}

impl<T: Translator> Stream for UpstreamStream<T> {
    type Item = Result<Chunk, GatewayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(chunk) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(chunk)));
            }
            if this.done || this.translator.complete() {
                this.done = true;
                return Poll::Ready(None);
            }
            let result = match ready!(this.events.poll_next_unpin(cx)) {
                Some(Ok(sse::Event {
                    data: Some(data), ..
                })) if !data.is_empty() => match this.translator.event(data, &mut this.pending) {
                    Ok(()) => Ok(()),
                    Err(error) => this.judge(error),
                },
                Some(Ok(_)) => Ok(()),
                Some(Err(error)) => Err(this
                    .translator
                    .protocol(format!("the stream broke: {}", error_chain(&error)))),
                None => {
                    this.done = true;
                    this.translator.end(&mut this.pending)
                }
            };
            if let Err(error) = result {
                return this.fail(error);
            }
        }
    }
}

/// A protocol error of `provider`, for translators.
pub fn protocol(provider: &Arc<str>, detail: String) -> GatewayError {
    GatewayError::UpstreamProtocol {
        provider: provider.to_string(),
        detail,
    }
}
