//! Gemini answers → OpenAI chat completions (docs/providers.md, "gemini"). The same native
//! shape arrives whole (`generateContent`) or piece by piece (each stream event).

use serde::Deserialize;
use serde_json::Value;

use super::extra_content;
use crate::api::chat::{AssistantMessage, ChatCompletion, Choice, FinishReason, ToolCall};
use crate::providers::translate::{compact, fnv1a};
use crate::usage::{CompletionTokensDetails, PromptTokensDetails, Usage, UsageSource};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    #[serde(default)]
    pub candidates: Vec<Candidate>,
    #[serde(default)]
    pub usage_metadata: Option<UsageMetadata>,
    #[serde(default)]
    pub model_version: Option<String>,
    #[serde(default)]
    pub response_id: Option<String>,
    #[serde(default)]
    pub prompt_feedback: Option<PromptFeedback>,
    /// An error sent in place of an answer, inside a stream.
    #[serde(default)]
    pub error: Option<NativeError>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Gemini leaves out the default 0.
    #[serde(default)]
    pub index: u32,
}

#[derive(Debug, Default, Deserialize)]
pub struct Content {
    #[serde(default)]
    pub parts: Vec<Part>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Part {
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub thought: bool,
    #[serde(default)]
    pub function_call: Option<FunctionCall>,
    /// Encrypted thinking context the next request must send back on the same part.
    #[serde(default)]
    pub thought_signature: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    #[serde(default)]
    pub args: Value,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    total_token_count: Option<u64>,
    #[serde(default)]
    thoughts_token_count: Option<u64>,
    #[serde(default)]
    cached_content_token_count: u64,
}

impl UsageMetadata {
    pub fn to_usage(self) -> Usage {
        let thoughts = self.thoughts_token_count.unwrap_or(0);
        let mut usage = Usage::new(
            self.prompt_token_count,
            self.candidates_token_count + thoughts,
            UsageSource::Provider,
        );
        usage.total_tokens = self.total_token_count.unwrap_or(usage.total_tokens);
        usage.prompt_tokens_details = Some(PromptTokensDetails {
            cached_tokens: self.cached_content_token_count,
            cache_creation_tokens: None,
        });
        usage.completion_tokens_details = self
            .thoughts_token_count
            .map(|reasoning_tokens| CompletionTokensDetails { reasoning_tokens });
        usage
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PromptFeedback {
    #[serde(default)]
    pub block_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct NativeError {
    #[serde(default)]
    pub code: Option<u16>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    /// `google.rpc` detail messages, each tagged by its `@type`.
    #[serde(default)]
    pub details: Vec<Value>,
}

/// A stable id for the function call at `part` of `candidate`: the same answer always
/// gets the same ids, and different answers different ones.
pub fn tool_call_id(response_id: &str, candidate: u32, part: usize) -> String {
    format!(
        "call_{:016x}",
        fnv1a(&format!("{response_id}:{candidate}:{part}"))
    )
}

/// `finishReason` → `finish_reason`.
pub fn finish_reason(reason: &str, has_tool_calls: bool) -> FinishReason {
    match reason {
        "STOP" if has_tool_calls => FinishReason::ToolCalls,
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            FinishReason::ContentFilter
        }
        _ => FinishReason::Stop,
    }
}

pub fn completion(answer: Answer, upstream_model: &str) -> ChatCompletion {
    let id = answer.response_id.unwrap_or_default();
    let mut choices: Vec<Choice> = answer
        .candidates
        .into_iter()
        .map(|candidate| choice(candidate, &id))
        .collect();
    let blocked = answer
        .prompt_feedback
        .is_some_and(|f| f.block_reason.is_some());
    if choices.is_empty() && blocked {
        choices.push(Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                ..AssistantMessage::default()
            },
            finish_reason: Some(FinishReason::ContentFilter),
            logprobs: None,
        });
    }
    choices.sort_by_key(|c| c.index);
    ChatCompletion {
        id,
        object: "chat.completion",
        created: crate::clock::unix_seconds(),
        model: answer
            .model_version
            .unwrap_or_else(|| upstream_model.to_owned()),
        choices,
        usage: answer.usage_metadata.unwrap_or_default().to_usage(),
    }
}

fn choice(candidate: Candidate, response_id: &str) -> Choice {
    let (mut text, mut reasoning, mut tool_calls) = (String::new(), String::new(), Vec::new());
    let parts = candidate.content.map(|c| c.parts).unwrap_or_default();
    for (index, part) in parts.into_iter().enumerate() {
        if let Some(call) = part.function_call {
            let id = tool_call_id(response_id, candidate.index, index);
            let mut tool_call = ToolCall::function(id, call.name, compact(&call.args));
            if let Some(signature) = &part.thought_signature {
                let extra = extra_content(signature);
                tool_call.extra.insert("extra_content".into(), extra);
            }
            tool_calls.push(tool_call);
        } else if let Some(part_text) = part.text {
            if part.thought {
                &mut reasoning
            } else {
                &mut text
            }
            .push_str(&part_text);
        }
    }
    let reason = candidate
        .finish_reason
        .as_deref()
        .map(|r| finish_reason(r, !tool_calls.is_empty()));
    Choice {
        index: candidate.index,
        message: AssistantMessage {
            role: "assistant",
            content: (!text.is_empty()).then_some(text),
            tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
            reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
        },
        finish_reason: reason,
        logprobs: None,
    }
}
