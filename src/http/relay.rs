//! The client side of a streamed answer: chunks become SSE frames as they arrive, one
//! frame per chunk, nothing buffered.
//!
//! The usage chunk the gateway asked for on the client's behalf is dropped when the client
//! did not ask for it. A clean end sends `data: [DONE]`; a failure after the stream began
//! sends one OpenAI-shaped error event and no `[DONE]`, so a cut answer can never pass
//! for a complete one.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::context::RequestRecord;
use crate::sse;
use crate::stream::ChunkStream;

pub struct SseRelay {
    chunks: ChunkStream,
    record: Arc<RequestRecord>,
    hide_usage: bool,
    finished: bool,
}

impl SseRelay {
    pub fn new(chunks: ChunkStream, record: Arc<RequestRecord>, hide_usage: bool) -> Self {
        Self {
            chunks,
            record,
            hide_usage,
            finished: false,
        }
    }
}

impl Stream for SseRelay {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.finished {
                return Poll::Ready(None);
            }
            let frame = match ready!(self.chunks.poll_next_unpin(cx)) {
                Some(Ok(chunk)) if self.hide_usage && chunk.usage_only => continue,
                Some(Ok(chunk)) => sse::data_frame(&chunk.json),
                Some(Err(error)) => {
                    self.finished = true;
                    self.record.end_stream(Some(&error));
                    tracing::warn!(
                        request_id = &*self.record.request_id,
                        error = %error,
                        "stream ended with an error"
                    );
                    sse::data_frame(&error.body(&self.record.request_id))
                }
                None => {
                    self.finished = true;
                    self.record.end_stream(None);
                    sse::DONE
                }
            };
            return Poll::Ready(Some(Ok(frame)));
        }
    }
}
