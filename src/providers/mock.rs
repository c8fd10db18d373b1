//! The built-in `mock` provider: deterministic answers with no network, for the
//! quickstart, demos and tests.
//!
//! Chat echoes the last user message, cut at `max_tokens` (or at [`MAX_ANSWER_TOKENS`] when
//! the request sets none), then `finish_reason: length`; streams send it a word per chunk,
//! each made only when the client's side asks for it, so a client that stops reading holds
//! the mock back exactly as it would hold back a real upstream. Embeddings are unit
//! vectors seeded by the input text, so the same text always embeds the same way. Usage
//! counts are estimates of the same kind OpenAI's would be (four bytes a token). Config
//! knobs add latency and failures (see `MockConfig`).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, stream};
use http::{HeaderMap, HeaderValue, StatusCode};

use super::{ChatCall, EmbeddingsCall, Provider, embeddings, upstream_error};
use crate::api::chat::{AssistantMessage, ChatCompletion, Choice, Delta, FinishReason};
use crate::api::chunk::{Chunk, ChunkWriter};
use crate::api::reply::{ChunkStream, JsonReply, Reply};
use crate::config::schema::{MockConfig, MockFault};
use crate::error::GatewayError;
use crate::usage::{Usage, UsageSource, estimate_prompt_tokens, estimate_tokens};

/// Dimensions of a mock embedding when the request does not choose.
const DEFAULT_DIMENSIONS: u32 = 1536;
const MAX_DIMENSIONS: u32 = 8192;
const EMPTY_ANSWER: &str = "Hello from the Switchyard mock.";
/// The longest answer, in (estimated) tokens, for a request that sets no `max_tokens`.
pub const MAX_ANSWER_TOKENS: u64 = 4096;

pub struct Mock {
    name: Arc<str>,
    config: MockConfig,
}

/// A fault chosen for one call.
enum Fault {
    Status(u16, Option<String>, Option<Duration>),
    Hang,
    Cut(u32),
}

impl Mock {
    pub fn new(name: Arc<str>, config: MockConfig) -> Self {
        Self { name, config }
    }

    /// Rolls the dice for each configured fault in order; the first hit applies.
    fn roll_fault(&self) -> Option<Fault> {
        self.config
            .faults
            .iter()
            .find(|f| fastrand::f64() < f.probability)
            .map(|f: &MockFault| match (f.status, f.hang, f.cut_after) {
                (Some(status), _, _) => Fault::Status(status, f.body.clone(), f.retry_after),
                (None, true, _) => Fault::Hang,
                (None, false, after) => Fault::Cut(after.unwrap_or(0)),
            })
    }

    /// Applies status and hang faults; returns how many chunks a stream may send before
    /// being cut, if it is to be cut.
    async fn fault_before_answer(&self) -> Result<Option<u32>, GatewayError> {
        match self.roll_fault() {
            None => Ok(None),
            Some(Fault::Cut(after)) => Ok(Some(after)),
            Some(Fault::Hang) => std::future::pending().await,
            Some(Fault::Status(status, body, retry_after)) => {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let body = body.unwrap_or_else(|| default_error_body(status));
                let mut headers = HeaderMap::new();
                if let Some(after) = retry_after {
                    headers.insert(
                        "retry-after-ms",
                        HeaderValue::from(after.as_millis() as u64),
                    );
                }
                // Read the way an OpenAI-compatible upstream's answer is.
                let error = upstream_error::from_status(
                    &self.name,
                    status,
                    &headers,
                    body.as_bytes(),
                    upstream_error::openai_error,
                );
                Err(error)
            }
        }
    }

    async fn chat_call(&self, call: ChatCall<'_>) -> Result<Reply, GatewayError> {
        let cut_after = self.fault_before_answer().await?;
        let answer = Answer::new(&call);
        if call.request.is_stream() {
            return Ok(Reply::Stream(self.stream(answer, cut_after)));
        }
        tokio::time::sleep(self.config.latency).await;
        Ok(Reply::Json(JsonReply::completion(&answer.completion())))
    }

    /// Role chunk, a chunk per word, the finish chunk and the usage chunk, each made when
    /// the reader asks for it and paced by the configured delays; cut without a terminal
    /// event after `cut_after` chunks when a cut fault applies.
    fn stream(&self, answer: Answer, cut_after: Option<u32>) -> ChunkStream {
        let (first, interval) = (self.config.time_to_first_token, self.config.chunk_interval);
        let provider = self.name.clone();
        let chunks = AnswerChunks::new(answer);
        let sent = 0_u32;
        Box::pin(stream::unfold(Some((chunks, sent)), move |state| {
            let provider = provider.clone();
            async move {
                let (mut chunks, sent) = state?;
                if cut_after.is_some_and(|limit| sent >= limit) {
                    let cut = GatewayError::UpstreamProtocol {
                        provider: provider.to_string(),
                        detail: "the stream ended before its terminal event (mock cut fault)"
                            .into(),
                    };
                    return Some((Err(cut), None));
                }
                let chunk = chunks.next()?;
                tokio::time::sleep(if sent == 0 { first } else { interval }).await;
                Some((Ok(chunk), Some((chunks, sent + 1))))
            }
        }))
    }

    async fn embeddings_call(&self, call: EmbeddingsCall<'_>) -> Result<JsonReply, GatewayError> {
        self.fault_before_answer().await?;
        let dimensions = call.request.dimensions.unwrap_or(DEFAULT_DIMENSIONS);
        if dimensions == 0 || dimensions > MAX_DIMENSIONS {
            return Err(GatewayError::InvalidParam {
                param: "dimensions".into(),
                message: format!("dimensions must be between 1 and {MAX_DIMENSIONS}"),
            });
        }
        tokio::time::sleep(self.config.latency).await;
        let texts = call.request.input.texts();
        let vectors = texts.iter().map(|text| embed(text, dimensions)).collect();
        // The mock's count is what it bills: usage from the provider.
        let source = UsageSource::Provider;
        Ok(embeddings::reply(
            call.request,
            call.model,
            &texts,
            vectors,
            source,
        ))
    }
}

impl Provider for Mock {
    fn chat<'a>(&'a self, call: ChatCall<'a>) -> BoxFuture<'a, Result<Reply, GatewayError>> {
        self.chat_call(call).boxed()
    }

    fn embeddings<'a>(
        &'a self,
        call: EmbeddingsCall<'a>,
    ) -> BoxFuture<'a, Result<JsonReply, GatewayError>> {
        self.embeddings_call(call).boxed()
    }
}

/// The mock's answer to one chat request.
struct Answer {
    id: String,
    model: String,
    text: String,
    finish_reason: FinishReason,
    usage: Usage,
}

impl Answer {
    fn new(call: &ChatCall<'_>) -> Self {
        let echo = call.request.last_user_text().filter(|t| !t.is_empty());
        let mut text = echo.unwrap_or_else(|| EMPTY_ANSWER.to_owned());
        let mut finish_reason = FinishReason::Stop;
        let max = call
            .request
            .max_output_tokens()
            .unwrap_or(MAX_ANSWER_TOKENS);
        // Tokens are estimated at four bytes each, so cut at 4 * max bytes.
        let limit = usize::try_from(max.saturating_mul(4)).unwrap_or(usize::MAX);
        if text.len() > limit {
            let cut = (0..=limit)
                .rev()
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(0);
            text.truncate(cut);
            finish_reason = FinishReason::Length;
        }
        let usage = Usage::new(
            estimate_prompt_tokens(call.request),
            estimate_tokens(text.len()),
            UsageSource::Provider,
        );
        Self {
            id: format!("chatcmpl-mock-{}", call.request_id),
            model: call.model.to_owned(),
            text,
            finish_reason,
            usage,
        }
    }

    fn completion(self) -> ChatCompletion {
        ChatCompletion {
            id: self.id,
            object: "chat.completion",
            created: crate::clock::unix_seconds(),
            model: self.model,
            choices: vec![Choice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant",
                    content: Some(self.text),
                    ..AssistantMessage::default()
                },
                finish_reason: Some(self.finish_reason),
                logprobs: None,
            }],
            usage: self.usage,
        }
    }
}

/// An answer's chunks, written one at a time: the role chunk, a chunk per word, the
/// finish chunk and the usage chunk.
struct AnswerChunks {
    writer: ChunkWriter,
    answer: Answer,
    /// Bytes of the text already sent; `None` before the role chunk.
    sent: Option<usize>,
    finished: bool,
    done: bool,
}

impl AnswerChunks {
    fn new(answer: Answer) -> Self {
        Self {
            writer: ChunkWriter::new(answer.id.clone(), answer.model.clone()),
            answer,
            sent: None,
            finished: false,
            done: false,
        }
    }

    fn next(&mut self) -> Option<Chunk> {
        let text = &self.answer.text;
        let Some(sent) = self.sent else {
            self.sent = Some(0);
            let role = Delta {
                role: Some("assistant"),
                content: Some(""),
                ..Delta::default()
            };
            return Some(self.writer.delta(0, role, None));
        };
        if sent < text.len() {
            let word_end = text[sent..].find(' ').map_or(text.len(), |i| sent + i + 1);
            self.sent = Some(word_end);
            let delta = Delta {
                content: Some(&text[sent..word_end]),
                ..Delta::default()
            };
            return Some(self.writer.delta(0, delta, None));
        }
        if !std::mem::replace(&mut self.finished, true) {
            let reason = Some(self.answer.finish_reason);
            return Some(self.writer.delta(0, Delta::default(), reason));
        }
        if !std::mem::replace(&mut self.done, true) {
            return Some(self.writer.usage(self.answer.usage));
        }
        None
    }
}

fn default_error_body(status: StatusCode) -> String {
    let kind = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    serde_json::json!({"error": {
        "message": format!("mock fault: injected HTTP {}", status.as_u16()),
        "type": kind,
        "param": null,
        "code": null,
    }})
    .to_string()
}

/// A deterministic unit vector for `text`: a PRNG seeded by the text's FNV-1a hash.
fn embed(text: &str, dimensions: u32) -> Vec<f32> {
    let seed = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = fastrand::Rng::with_seed(seed);
    let raw: Vec<f32> = (0..dimensions).map(|_| rng.f32() * 2.0 - 1.0).collect();
    let norm = raw
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    raw.into_iter().map(|x| x / norm).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embed("hello", 64);
        assert_eq!(a, embed("hello", 64));
        assert_ne!(a, embed("hullo", 64));
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
    }
}
