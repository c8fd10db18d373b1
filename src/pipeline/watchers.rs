//! What the pipeline wraps around a stream once it has started: [`IdleTimeout`] ends a
//! stream that stays silent too long (or outlives the request's deadline), [`Metered`]
//! writes what the chunks say on the request record (first content, usage or an estimate
//! of it, finish reasons, the answer's id and model) and times the gaps between chunks.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::Stream;
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use crate::api::chunk::Chunk;
use crate::api::reply::ChunkStream;
use crate::clock::{self, Instant};
use crate::config::schema::ProviderKind;
use crate::error::GatewayError;
use crate::metrics::OutputChunks;
use crate::record::{Mark, RequestRecord};
use crate::usage::{Usage, UsageSource, estimate_tokens};

pin_project! {
    /// Watches a chunk stream on its way to the client: marks the first content token,
    /// keeps the provider's usage, and when the provider reported none, records an
    /// estimate instead, also when the stream stops early (client gone, upstream failed).
    pub struct Metered {
        #[pin]
        inner: ChunkStream,
        record: Arc<RequestRecord>,
        prompt_estimate: u64,
        content_len: usize,
        provider_usage: bool,
        first: bool,
        // Who answers, for the time between chunks, timed from the first chunk on.
        upstream: (ProviderKind, Arc<str>),
        chunks: Option<OutputChunks>,
    }

    impl PinnedDrop for Metered {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !*this.provider_usage {
                let completion = estimate_tokens(*this.content_len);
                this.record.set_usage(Usage::new(*this.prompt_estimate, completion, UsageSource::Estimated));
            }
        }
    }
}

impl Metered {
    /// `upstream`: the provider kind and upstream model of the attempt.
    pub fn new(
        inner: ChunkStream,
        record: Arc<RequestRecord>,
        prompt_estimate: u64,
        upstream: (ProviderKind, Arc<str>),
    ) -> Self {
        Self {
            inner,
            record,
            prompt_estimate,
            content_len: 0,
            provider_usage: false,
            first: true,
            upstream,
            chunks: None,
        }
    }
}

impl Stream for Metered {
    type Item = Result<Chunk, GatewayError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        let item = ready!(this.inner.poll_next(cx));
        if let Some(Ok(chunk)) = &item {
            if std::mem::take(this.first) {
                let (id, model) = chunk.identity();
                let (kind, upstream_model) = this.upstream.clone();
                let metrics = this.record.metrics();
                *this.chunks = Some(metrics.output_chunks(kind, upstream_model, model.as_deref()));
                this.record.set_identity(id, model);
            } else if let Some(chunks) = this.chunks {
                chunks.chunk();
            }
            if chunk.has_content() && *this.content_len == 0 {
                this.record.mark(Mark::FirstContent);
            }
            *this.content_len += chunk.content_len();
            if let Some(reason) = chunk.finish_reason() {
                this.record.add_finish_reason(reason);
            }
            if let Some(usage) = chunk.usage() {
                *this.provider_usage = true;
                this.record.set_usage(usage);
            }
        }
        Poll::Ready(item)
    }
}

/// Ends a stream with a timeout error when it stays silent for `limit`, or when it is
/// still running at `end_by` (the request's deadline, when it has one).
///
/// The timer is not re-armed for every chunk (that is a timer-wheel update per chunk):
/// each chunk only notes the time, and when the timer fires early because chunks came in
/// meanwhile, it is re-armed once for the last chunk's deadline.
pub struct IdleTimeout {
    inner: ChunkStream,
    sleep: Pin<Box<Sleep>>,
    limit: Duration,
    last_item: Instant,
    started: Instant,
    end_by: Option<Instant>,
    provider: Arc<str>,
}

impl IdleTimeout {
    pub fn new(
        inner: ChunkStream,
        limit: Duration,
        end_by: Option<Instant>,
        provider: Arc<str>,
    ) -> Self {
        let now = clock::now();
        let first = end_by.map_or(now + limit, |end| end.min(now + limit));
        Self {
            inner,
            sleep: Box::pin(tokio::time::sleep_until(first)),
            limit,
            last_item: now,
            started: now,
            end_by,
            provider,
        }
    }
}

impl Stream for IdleTimeout {
    type Item = Result<Chunk, GatewayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Poll::Ready(item) = self.inner.as_mut().poll_next(cx) {
            self.last_item = clock::now();
            return Poll::Ready(item);
        }
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            let now = clock::now();
            if let Some(end) = self.end_by.filter(|end| *end <= now) {
                let after = end.saturating_duration_since(self.started);
                return Poll::Ready(Some(Err(GatewayError::DeadlineExceeded { after })));
            }
            let deadline = self.last_item + self.limit;
            if deadline <= now {
                return Poll::Ready(Some(Err(GatewayError::UpstreamTimeout {
                    provider: self.provider.to_string(),
                    phase: "stream idle",
                    after: self.limit,
                })));
            }
            let next = self.end_by.map_or(deadline, |end| end.min(deadline));
            self.sleep.as_mut().reset(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures_util::StreamExt;

    use super::*;

    fn chunk() -> Result<Chunk, GatewayError> {
        Chunk::from_openai(Bytes::from_static(br#"{"choices":[]}"#), "p")
    }

    /// Chunks every `gap`, `count` times, then silence.
    fn paced(gap: Duration, count: usize) -> ChunkStream {
        let paced = futures_util::stream::iter(0..count).then(move |_| async move {
            tokio::time::sleep(gap).await;
            chunk()
        });
        Box::pin(paced.chain(futures_util::stream::pending()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_times_out_only_after_the_idle_limit() {
        let inner = paced(Duration::from_millis(600), 3);
        let mut stream = IdleTimeout::new(inner, Duration::from_secs(1), None, "p".into());
        let started = clock::now();
        for _ in 0..3 {
            assert!(stream.next().await.unwrap().is_ok());
        }
        let timed_out = stream.next().await.unwrap();
        assert!(matches!(
            timed_out,
            Err(GatewayError::UpstreamTimeout { .. })
        ));
        // 3 × 600 ms of chunks, then the 1 s limit from the last one.
        assert_eq!(clock::now() - started, Duration::from_millis(2800));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_outlives_its_deadline_ends_at_the_deadline() {
        let inner = paced(Duration::from_millis(300), usize::MAX);
        let started = clock::now();
        let end_by = Some(started + Duration::from_secs(2));
        let mut stream = IdleTimeout::new(inner, Duration::from_secs(1), end_by, "p".into());
        let mut chunks = 0;
        let error = loop {
            match stream.next().await.unwrap() {
                Ok(_) => chunks += 1,
                Err(error) => break error,
            }
        };
        assert!(matches!(error, GatewayError::DeadlineExceeded { .. }));
        assert_eq!(chunks, 6, "a chunk every 300 ms until 2 s");
        assert_eq!(clock::now() - started, Duration::from_secs(2));
    }
}
