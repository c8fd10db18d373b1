//! Token usage: what a request consumed, and where the numbers came from.
//!
//! `Usage` is both OpenAI's wire shape (so it can be read from and written to responses)
//! and the gateway's accounting record; `source` never goes on the wire.

use serde::{Deserialize, Serialize};

use crate::api::chat::ChatRequest;

/// Where a usage figure comes from: the provider's own report, or the gateway's estimate
/// when the provider reported nothing (cost and limits must know the difference).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UsageSource {
    #[default]
    Provider,
    Estimated,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provider => "provider",
            Self::Estimated => "estimated",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
    #[serde(skip)]
    pub source: UsageSource,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    #[serde(default)]
    pub cached_tokens: u64,
    /// Prompt tokens written to the provider's cache (Anthropic bills them apart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_tokens: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionTokensDetails {
    #[serde(default)]
    pub reasoning_tokens: u64,
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64, source: UsageSource) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            source,
            ..Self::default()
        }
    }
}

/// A rough token count for text, for when no tokenizer applies: about four bytes of
/// English per token, and never zero for non-empty text.
pub fn estimate_tokens(text_bytes: usize) -> u64 {
    (text_bytes as u64).div_ceil(4)
}

/// Estimated prompt tokens of a chat request: the text of every message plus OpenAI's
/// per-message framing overhead (about 4 tokens a message, 3 to prime the reply).
pub fn estimate_prompt_tokens(request: &ChatRequest) -> u64 {
    let text: u64 = request
        .messages
        .iter()
        .map(|m| estimate_tokens(m.content.as_ref().map_or(0, |c| c.text_len())) + 4)
        .sum();
    text + 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_are_never_zero_for_text() {
        assert_eq!(estimate_tokens(0), 0);
        assert_eq!(estimate_tokens(1), 1);
        assert_eq!(estimate_tokens(8), 2);
    }

    #[test]
    fn provider_usage_parses_with_details() {
        let usage: Usage = serde_json::from_str(
            r#"{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,
                "prompt_tokens_details":{"cached_tokens":4,"audio_tokens":0}}"#,
        )
        .unwrap();
        assert_eq!(usage.prompt_tokens_details.unwrap().cached_tokens, 4);
        assert_eq!(usage.source, UsageSource::Provider);
    }
}
