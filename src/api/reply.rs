//! What a provider answers with: a complete JSON body or a stream of chunks, each with the
//! facts the gateway reads from it once (usage, amount of generated text, finish reasons,
//! the answer's own id and model).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::Stream;
use serde::Deserialize;

use super::chat::{ChatCompletion, FinishReason};
use super::chunk::{Chunk, TextField, TextProbe, edit_choices, to_json};
use crate::error::GatewayError;
use crate::usage::Usage;

/// A provider's answer: a complete JSON body or a stream of chunks.
pub enum Reply {
    Json(JsonReply),
    Stream(ChunkStream),
}

pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk, GatewayError>> + Send>>;

/// Events of an upstream stream that were dropped for not being valid JSON (a provider's
/// `on_malformed_event: skip`): counted by the stream, read by the pipeline, which reports
/// them (adapters do not log).
#[derive(Debug, Default)]
pub struct SkippedEvents(AtomicU64);

impl SkippedEvents {
    pub fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A complete OpenAI-shaped JSON body and the facts read from it.
pub struct JsonReply {
    body: Bytes,
    facts: AnswerFacts,
}

/// What the gateway knows about a complete answer without reading it again.
#[derive(Debug, Clone, Default)]
pub struct AnswerFacts {
    pub usage: Option<Usage>,
    /// Bytes of generated text, for estimating usage when the provider reported none.
    pub content_len: usize,
    /// One per choice, in order.
    pub finish_reasons: Vec<FinishReason>,
    /// The answer's own `id` and `model` (the upstream's names).
    pub id: Option<String>,
    pub model: Option<String>,
}

impl JsonReply {
    pub fn new(body: Bytes, facts: AnswerFacts) -> Self {
        Self { body, facts }
    }

    /// Reads a chat completion (or an embeddings list) an upstream sent, without
    /// re-encoding it.
    pub fn from_openai(body: Bytes, provider: &str) -> Result<Self, GatewayError> {
        let probe: CompletionProbe =
            serde_json::from_slice(&body).map_err(|e| GatewayError::UpstreamProtocol {
                provider: provider.to_owned(),
                detail: format!("malformed JSON body: {e}"),
            })?;
        let facts = probe.facts();
        Ok(Self { body, facts })
    }

    /// Encodes a chat completion an adapter built from a native answer.
    pub fn completion(completion: &ChatCompletion) -> Self {
        let facts = AnswerFacts {
            usage: Some(completion.usage),
            content_len: completion
                .choices
                .iter()
                .map(|c| c.message.text_len())
                .sum(),
            finish_reasons: completion
                .choices
                .iter()
                .filter_map(|c| c.finish_reason)
                .collect(),
            id: Some(completion.id.clone()),
            model: Some(completion.model.clone()),
        };
        Self {
            body: to_json(completion),
            facts,
        }
    }

    pub fn body(&self) -> &Bytes {
        &self.body
    }

    pub fn facts(&self) -> &AnswerFacts {
        &self.facts
    }

    pub fn into_body(self) -> Bytes {
        self.body
    }

    /// Rewrites the generated text of each choice's message, like [`Chunk::edit_text`].
    pub fn edit_text(
        &mut self,
        edit: impl FnMut(TextField, &str) -> Option<String>,
    ) -> Result<bool, GatewayError> {
        let Some(body) = edit_choices(&self.body, "message", edit)? else {
            return Ok(false);
        };
        let probe: CompletionProbe = serde_json::from_slice(&body)
            .map_err(|e| GatewayError::Internal(format!("an edited answer: {e}")))?;
        self.facts = probe.facts();
        self.body = body;
        Ok(true)
    }
}

#[derive(Deserialize)]
struct CompletionProbe {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<MessageChoiceProbe>,
    #[serde(default)]
    usage: Option<Usage>,
}

impl CompletionProbe {
    fn facts(self) -> AnswerFacts {
        AnswerFacts {
            usage: self.usage,
            content_len: self.choices.iter().map(|c| c.message.text_len()).sum(),
            finish_reasons: self
                .choices
                .iter()
                .filter_map(|c| c.finish_reason)
                .collect(),
            id: self.id,
            model: self.model,
        }
    }
}

#[derive(Deserialize)]
struct MessageChoiceProbe {
    #[serde(default)]
    message: TextProbe,
    #[serde(default)]
    finish_reason: Option<FinishReason>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_facts_of_a_completion() {
        let body = br#"{"id":"chatcmpl-9","model":"gpt-x-0613","choices":[{"index":0,"message":{"role":"assistant","content":"four","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}"#;
        let reply = JsonReply::from_openai(Bytes::from_static(body), "p").unwrap();
        let facts = reply.facts();
        assert_eq!(facts.content_len, 4 + 3);
        assert_eq!(facts.finish_reasons, [FinishReason::ToolCalls]);
        assert_eq!(facts.id.as_deref(), Some("chatcmpl-9"));
        assert_eq!(facts.model.as_deref(), Some("gpt-x-0613"));
        assert_eq!(facts.usage.unwrap().total_tokens, 8);
        assert_eq!(reply.body().as_ref(), body, "relayed as sent");
    }

    #[test]
    fn an_edited_answer_gets_new_facts() {
        let body = br#"{"id":"c","choices":[{"index":0,"message":{"role":"assistant","content":"<NAME_1>"},"finish_reason":"stop"}]}"#;
        let mut reply = JsonReply::from_openai(Bytes::from_static(body), "p").unwrap();
        assert!(!reply.edit_text(|_, _| None).unwrap());
        assert!(
            reply
                .edit_text(|_, t| Some(t.replace("<NAME_1>", "Ann")))
                .unwrap()
        );
        assert_eq!(reply.facts().content_len, 3);
        let value: serde_json::Value = serde_json::from_slice(reply.body()).unwrap();
        assert_eq!(value["choices"][0]["message"]["content"], "Ann");
    }
}
