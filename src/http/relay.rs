//! The client side of a streamed answer: chunks become SSE frames as they arrive, nothing
//! waits for more.
//!
//! The usage chunk the gateway asked for on the client's behalf is dropped when the client
//! did not ask for it. A clean end sends `data: [DONE]`; a failure after the stream began
//! sends one OpenAI-shaped error event and no `[DONE]`, so a cut answer can never pass
//! for a complete one.
//!
//! Chunks that are already available travel together: an upstream often delivers many
//! events in one read, but its HTTP client hands them over one at a time, each taking two
//! scheduler rounds (our read wakes the client's connection task, which decodes and sends
//! the next event), and relaying each on its own costs a write syscall per chunk. So when
//! the upstream has nothing ready but a frame is waiting, the relay yields to the scheduler
//! and looks again, for as long as chunks keep coming, and sends everything in one write
//! once [`IDLE_ROUNDS`] rounds in a row brought nothing. It never waits on a timer: the
//! delay it adds is a few scheduler rounds, microseconds.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};

use crate::api::chunk::Chunk;
use crate::api::reply::ChunkStream;
use crate::error::GatewayError;
use crate::record::RequestRecord;
use crate::sse;

/// A frame this large is sent without trying to add more.
const MAX_BATCH: usize = 64 * 1024;
/// Scheduler rounds without a new chunk after which a waiting frame is sent.
const IDLE_ROUNDS: u8 = 2;

pub struct SseRelay {
    chunks: ChunkStream,
    record: Arc<RequestRecord>,
    hide_usage: bool,
    batch: BytesMut,
    idle_rounds: u8,
    finished: bool,
}

impl SseRelay {
    pub fn new(chunks: ChunkStream, record: Arc<RequestRecord>, hide_usage: bool) -> Self {
        Self {
            chunks,
            record,
            hide_usage,
            batch: BytesMut::new(),
            idle_rounds: 0,
            finished: false,
        }
    }

    fn push(&mut self, mut chunk: Chunk) {
        if chunk.usage().is_some() && !self.hide_usage {
            self.add_cost(&mut chunk);
        }
        if !(self.hide_usage && chunk.is_usage_only()) {
            if self.batch.capacity() == 0 {
                // Room for a typical burst of chunks without growing.
                self.batch.reserve(8 * 1024);
            }
            if chunk.is_comment() {
                sse::write_comment(&mut self.batch, chunk.json());
            } else {
                sse::write_data_frame(&mut self.batch, chunk.json());
            }
        }
    }

    /// The usage the client asked for says what the answer cost (`usage.switchyard`:
    /// `cost_usd`, null without a price, and `cost_source`), as the cost headers of a
    /// non-streamed answer do.
    fn add_cost(&self, chunk: &mut Chunk) {
        let cost = match self.record.cost() {
            Some(cost) => json!({"cost_usd": cost.usd, "cost_source": cost.source.as_str()}),
            None => json!({"cost_usd": null, "cost_source": "unpriced"}),
        };
        let added = chunk.rewrite(|value| {
            if let Some(usage) = value.get_mut("usage").and_then(Value::as_object_mut) {
                usage.insert("switchyard".to_owned(), cost);
            }
        });
        if let Err(error) = added {
            tracing::warn!(request_id = &*self.record.request_id, %error, "the usage chunk keeps no cost");
        }
    }

    fn fail(&mut self, error: &GatewayError) {
        self.record.end_stream(Some(error));
        tracing::warn!(
            request_id = &*self.record.request_id,
            error = %error,
            "stream ended with an error"
        );
        let event = error.body(&self.record.request_id);
        sse::write_data_frame(&mut self.batch, &event);
    }

    fn take_batch(&mut self) -> Poll<Option<Result<Bytes, Infallible>>> {
        Poll::Ready(Some(Ok(self.batch.split().freeze())))
    }
}

impl Stream for SseRelay {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        while !self.finished && self.batch.len() < MAX_BATCH {
            match self.chunks.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    self.idle_rounds = 0;
                    self.push(chunk);
                }
                Poll::Ready(Some(Err(error))) => {
                    self.finished = true;
                    self.fail(&error);
                }
                Poll::Ready(None) => {
                    self.finished = true;
                    self.record.end_stream(None);
                    self.batch.extend_from_slice(&sse::DONE);
                }
                Poll::Pending if self.batch.is_empty() || self.idle_rounds >= IDLE_ROUNDS => {
                    break;
                }
                Poll::Pending => {
                    // A turn for the upstream to hand over what it already has. tokio's
                    // yield puts this task behind the ones already woken (a plain self-wake
                    // could run it again first, before the upstream's connection task).
                    self.idle_rounds += 1;
                    let _ = std::pin::pin!(tokio::task::yield_now()).poll(cx);
                    return Poll::Pending;
                }
            }
        }
        self.idle_rounds = 0;
        if self.batch.is_empty() {
            return if self.finished {
                Poll::Ready(None)
            } else {
                Poll::Pending
            };
        }
        self.take_batch()
    }
}
