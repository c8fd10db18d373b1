//! What providers answer with, and the streams of chunks that flow from a provider to the
//! client.
//!
//! A chunk is kept as the exact JSON the client will receive plus a few facts read from it
//! (does it carry content, does it carry usage), so a stream is relayed without being
//! re-encoded. The resilience layer can hold a stream back until its first chunk with
//! content ([`Chunk::has_content`]) and retry anything that fails before it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use pin_project_lite::pin_project;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use tokio::time::{Instant, Sleep};

use crate::api::chat::{ChatCompletionChunk, ChunkChoice, Delta};
use crate::context::{Mark, RequestRecord};
use crate::error::GatewayError;
use crate::usage::{Usage, UsageSource, estimate_tokens};

/// A provider's answer: a complete JSON body or a stream of chunks.
pub enum Reply {
    Json(JsonReply),
    Stream(ChunkStream),
}

/// A complete OpenAI-shaped JSON body and the usage read from it.
pub struct JsonReply {
    pub body: Bytes,
    pub usage: Option<Usage>,
    /// Bytes of generated text, for estimating usage when the provider reported none.
    pub content_len: usize,
}

pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk, GatewayError>> + Send>>;

/// One `chat.completion.chunk`, as the JSON the client will receive.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub json: Bytes,
    /// Bytes of generated text (content, refusal, reasoning, tool names and arguments).
    pub content_len: usize,
    pub usage: Option<Usage>,
    /// A chunk with no choices that only reports usage (`stream_options.include_usage`).
    pub usage_only: bool,
}

impl Chunk {
    /// Reads an OpenAI chunk without re-encoding it. An `{"error": ...}` object in place
    /// of a chunk is returned as the upstream's error.
    pub fn from_openai(json: Bytes, provider: &str) -> Result<Self, GatewayError> {
        let probe: ChunkProbe =
            serde_json::from_slice(&json).map_err(|e| GatewayError::UpstreamProtocol {
                provider: provider.to_owned(),
                detail: format!("malformed JSON in a stream event: {e}"),
            })?;
        if let Some(error) = probe.error {
            return Err(error.into_gateway_error(provider));
        }
        let content_len = probe.choices.iter().map(|c| c.delta.text_len()).sum();
        Ok(Self {
            usage_only: probe.choices.is_empty() && probe.usage.is_some(),
            json,
            content_len,
            usage: probe.usage,
        })
    }

    pub fn has_content(&self) -> bool {
        self.content_len > 0
    }
}

/// Writes the chunks of a stream an adapter translates: the same id, model and creation
/// time on every chunk, as OpenAI's own streams have.
pub struct ChunkWriter {
    id: String,
    model: String,
    created: u64,
}

impl ChunkWriter {
    pub fn new(id: String, model: String) -> Self {
        Self {
            id,
            model,
            created: crate::api::unix_time(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn created(&self) -> u64 {
        self.created
    }

    /// A chunk with one choice's delta and, at the end of that choice, its finish reason.
    pub fn delta(&self, index: u32, delta: Delta<'_>, finish_reason: Option<&str>) -> Chunk {
        let content_len = delta.text_len();
        let json = self.write(
            vec![ChunkChoice {
                index,
                delta,
                finish_reason,
            }],
            None,
        );
        Chunk {
            json,
            content_len,
            usage: None,
            usage_only: false,
        }
    }

    /// The usage chunk that ends a stream: no choices, only usage.
    pub fn usage(&self, usage: Usage) -> Chunk {
        Chunk {
            json: self.write(Vec::new(), Some(usage)),
            content_len: 0,
            usage: Some(usage),
            usage_only: true,
        }
    }

    fn write(&self, choices: Vec<ChunkChoice<'_>>, usage: Option<Usage>) -> Bytes {
        to_json(&ChatCompletionChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices,
            usage,
        })
    }
}

/// JSON of a response struct made only of strings, numbers and maps (cannot fail).
pub fn to_json(value: &impl serde::Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// The error object OpenAI-compatible servers send, in bodies and in streams.
#[derive(Debug, Deserialize)]
pub struct UpstreamErrorObject {
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default, deserialize_with = "string_or_number")]
    pub code: Option<String>,
    #[serde(default)]
    pub param: Option<String>,
}

impl UpstreamErrorObject {
    /// An error event inside a 200 stream: the provider failed mid-answer.
    fn into_gateway_error(self, provider: &str) -> GatewayError {
        GatewayError::UpstreamProtocol {
            provider: provider.to_owned(),
            detail: format!(
                "error event in stream: {}",
                self.message.as_deref().unwrap_or("no message")
            ),
        }
    }
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

#[derive(Deserialize)]
struct ChunkProbe {
    #[serde(default)]
    choices: Vec<ChoiceProbe>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<UpstreamErrorObject>,
}

#[derive(Deserialize)]
struct ChoiceProbe {
    #[serde(default)]
    delta: DeltaProbe,
}

/// The parts of a delta (or a message) that carry generated text, measured, not copied.
#[derive(Default, Deserialize)]
struct DeltaProbe {
    #[serde(default)]
    content: TextLen,
    #[serde(default)]
    refusal: TextLen,
    #[serde(default)]
    reasoning_content: TextLen,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallProbe>>,
}

impl DeltaProbe {
    fn text_len(&self) -> usize {
        let tools: usize = self
            .tool_calls
            .iter()
            .flatten()
            .map(ToolCallProbe::len)
            .sum();
        self.content.0 + self.refusal.0 + self.reasoning_content.0 + tools
    }
}

#[derive(Deserialize)]
struct ToolCallProbe {
    #[serde(default)]
    function: Option<FunctionProbe>,
}

impl ToolCallProbe {
    fn len(&self) -> usize {
        // A tool call's first delta may carry only its id; it still starts the answer.
        self.function
            .as_ref()
            .map_or(1, |f| (f.name.0 + f.arguments.0).max(1))
    }
}

#[derive(Deserialize)]
struct FunctionProbe {
    #[serde(default)]
    name: TextLen,
    #[serde(default)]
    arguments: TextLen,
}

/// The length of a JSON string (0 for null), read without allocating.
#[derive(Default)]
struct TextLen(usize);

impl<'de> Deserialize<'de> for TextLen {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LenVisitor;
        impl Visitor<'_> for LenVisitor {
            type Value = TextLen;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or null")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TextLen, E> {
                Ok(TextLen(v.len()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<TextLen, E> {
                Ok(TextLen(0))
            }
            fn visit_none<E: de::Error>(self) -> Result<TextLen, E> {
                Ok(TextLen(0))
            }
        }
        deserializer.deserialize_any(LenVisitor)
    }
}

/// Reads usage and the amount of generated text from a complete chat completion body.
pub fn probe_completion(
    body: &[u8],
    provider: &str,
) -> Result<(Option<Usage>, usize), GatewayError> {
    #[derive(Deserialize)]
    struct CompletionProbe {
        #[serde(default)]
        choices: Vec<MessageChoiceProbe>,
        #[serde(default)]
        usage: Option<Usage>,
    }
    #[derive(Deserialize)]
    struct MessageChoiceProbe {
        #[serde(default)]
        message: DeltaProbe,
    }
    let probe: CompletionProbe =
        serde_json::from_slice(body).map_err(|e| GatewayError::UpstreamProtocol {
            provider: provider.to_owned(),
            detail: format!("malformed JSON body: {e}"),
        })?;
    let content_len = probe.choices.iter().map(|c| c.message.text_len()).sum();
    Ok((probe.usage, content_len))
}

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
    pub fn new(inner: ChunkStream, record: Arc<RequestRecord>, prompt_estimate: u64) -> Self {
        Self {
            inner,
            record,
            prompt_estimate,
            content_len: 0,
            provider_usage: false,
        }
    }
}

impl Stream for Metered {
    type Item = Result<Chunk, GatewayError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        let item = ready!(this.inner.poll_next(cx));
        if let Some(Ok(chunk)) = &item {
            if chunk.has_content() && *this.content_len == 0 {
                this.record.mark(Mark::FirstContent);
            }
            *this.content_len += chunk.content_len;
            if let Some(usage) = chunk.usage {
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
        let now = Instant::now();
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
            self.last_item = Instant::now();
            return Poll::Ready(item);
        }
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            let now = Instant::now();
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
    use super::*;

    #[test]
    fn probes_content_and_usage_without_reencoding() {
        let json = Bytes::from_static(
            br#"{"id":"c","choices":[{"index":0,"delta":{"content":"he\"llo"},"finish_reason":null}],"usage":null}"#,
        );
        let chunk = Chunk::from_openai(json.clone(), "p").unwrap();
        assert_eq!(chunk.json, json);
        assert_eq!(chunk.content_len, 6);
        assert!(!chunk.usage_only);

        let role_only = br#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
        assert!(
            !Chunk::from_openai(Bytes::from_static(role_only), "p")
                .unwrap()
                .has_content()
        );

        let usage =
            br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
        let chunk = Chunk::from_openai(Bytes::from_static(usage), "p").unwrap();
        assert!(chunk.usage_only);
        assert_eq!(chunk.usage.unwrap().total_tokens, 5);
    }

    #[test]
    fn a_tool_call_start_counts_as_content() {
        let json = br#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get","arguments":""}}]}}]}"#;
        assert!(
            Chunk::from_openai(Bytes::from_static(json), "p")
                .unwrap()
                .has_content()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_times_out_only_after_the_idle_limit() {
        use futures_util::StreamExt;
        let chunk = || Chunk::from_openai(Bytes::from_static(br#"{"choices":[]}"#), "p");
        // Chunks every 600 ms, then silence: a 1 s limit is never hit between them.
        let paced = futures_util::stream::iter(0..3).then(move |_| async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            chunk()
        });
        let silent = paced.chain(futures_util::stream::pending());
        let mut stream =
            IdleTimeout::new(Box::pin(silent), Duration::from_secs(1), None, "p".into());
        let started = Instant::now();
        for _ in 0..3 {
            assert!(stream.next().await.unwrap().is_ok());
        }
        let timed_out = stream.next().await.unwrap();
        assert!(matches!(
            timed_out,
            Err(GatewayError::UpstreamTimeout { .. })
        ));
        assert_eq!(started.elapsed(), Duration::from_millis(2800));
    }

    #[test]
    fn error_events_and_bad_json_are_errors() {
        let err = Chunk::from_openai(
            Bytes::from_static(br#"{"error":{"message":"overloaded"}}"#),
            "p",
        );
        assert!(matches!(err, Err(GatewayError::UpstreamProtocol { .. })));
        let bad = Chunk::from_openai(Bytes::from_static(b"{not json"), "p");
        assert!(matches!(bad, Err(GatewayError::UpstreamProtocol { .. })));
    }
}
