//! The one driver of every upstream event stream: it reads SSE events from the provider's
//! body and hands each to the adapter's [`Translator`], which keeps the per-stream state
//! and turns events into chunks. The end-of-stream rules live here, once:
//!
//! - a stream is complete when its translator has seen the provider's terminal event;
//!   nothing after it is read;
//! - a body that ends without the terminal event is complete too if it ends at an event
//!   boundary after every choice got its finish reason (the translator says, and adds the
//!   closing chunks the terminal event would have brought, such as the usage); a body
//!   that ends in the middle of an event, or before a finish reason, ends the stream with
//!   an error, so a cut answer never passes for a complete one;
//! - a transport failure, or an event the translator rejects, ends the stream with an
//!   error, and nothing is read after it;
//! - an event whose data is not valid JSON is dropped and counted ([`SkippedEvents`]), or
//!   ends the stream, as the provider's `on_malformed_event` says; it never reaches the
//!   client;
//! - events without data (comments, keep-alives) are skipped.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

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

    /// The body ended at an event boundary before the terminal event: whether every
    /// choice got its finish reason, so the answer is complete. If so, the translator adds
    /// to `out` the closing chunks the terminal event would have brought.
    fn finished_without_terminal(&mut self, out: &mut VecDeque<Chunk>) -> bool;

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
    events: sse::Decoder<Tracked>,
    /// Where the body's data ends, for telling a clean end from a cut one.
    tail: Arc<Tail>,
    translator: T,
    malformed: Malformed,
    pending: VecDeque<Chunk>,
    done: bool,
}

impl<T: Translator> UpstreamStream<T> {
    pub fn new(body: Incoming, translator: T, malformed: Malformed) -> Self {
        let tail = Arc::new(Tail::default());
        Self {
            events: sse::Decoder::new(Tracked {
                inner: body,
                tail: tail.clone(),
            }),
            tail,
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

    /// The body ended before the terminal event: a complete answer, or a cut one.
    fn end(&mut self) -> Result<(), GatewayError> {
        if !self.tail.at_boundary() {
            return Err(self
                .translator
                .protocol("the stream was cut in the middle of an event".into()));
        }
        if self.translator.finished_without_terminal(&mut self.pending) {
            return Ok(());
        }
        let terminal = self.translator.terminal_event();
        Err(self
            .translator
            .protocol(format!("the stream ended before {terminal}")))
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
                    this.end()
                }
            };
            if let Err(error) = result {
                return this.fail(error);
            }
        }
    }
}

/// The last bytes of a body's data so far (up to four, enough for the longest event
/// terminator, `\r\n\r\n`; the newest in the lowest byte) and how many there are.
#[derive(Default)]
struct Tail {
    last: AtomicU32,
    len: AtomicU32,
}

impl Tail {
    fn push(&self, data: &[u8]) {
        let bytes = &data[data.len().saturating_sub(4)..];
        let mut last = self.last.load(Ordering::Relaxed);
        for byte in bytes {
            last = (last << 8) | u32::from(*byte);
        }
        self.last.store(last, Ordering::Relaxed);
        let len = self.len.load(Ordering::Relaxed);
        let len = len
            .saturating_add(u32::try_from(bytes.len()).unwrap_or(4))
            .min(4);
        self.len.store(len, Ordering::Relaxed);
    }

    /// Whether the data ends with a blank line (or there was none): no event is half-sent.
    fn at_boundary(&self) -> bool {
        let (last, len) = (
            self.last.load(Ordering::Relaxed),
            self.len.load(Ordering::Relaxed),
        );
        let ends = |terminator: &[u8]| {
            let n = terminator.len();
            n as u32 <= len
                && terminator
                    .iter()
                    .enumerate()
                    .all(|(i, b)| (last >> (8 * (n - 1 - i))) & 0xff == u32::from(*b))
        };
        len == 0 || ends(b"\n\n") || ends(b"\r\r") || ends(b"\r\n\r\n")
    }
}

pin_project! {
    /// An upstream body that notes where its data ends (the SSE decoder drops a half-sent
    /// event at the end of the body without saying so).
    struct Tracked {
        #[pin]
        inner: Incoming,
        tail: Arc<Tail>,
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(data) = frame
            .as_ref()
            .and_then(|f| f.as_ref().ok())
            .and_then(|f| f.data_ref())
        {
            this.tail.push(data);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A protocol error of `provider`, for translators.
pub fn protocol(provider: &Arc<str>, detail: String) -> GatewayError {
    GatewayError::UpstreamProtocol {
        provider: provider.to_string(),
        detail,
    }
}
