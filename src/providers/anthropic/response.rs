//! Anthropic Messages answer → OpenAI chat completion (docs/providers.md, "anthropic").

use serde::Deserialize;
use serde_json::Value;

use super::{JSON_TOOL, NativeUsage, finish_reason};
use crate::api::chat::{AssistantMessage, ChatCompletion, Choice, ToolCall};
use crate::providers::translate::compact;

#[derive(Deserialize)]
pub struct Message {
    pub id: String,
    pub model: String,
    #[serde(default)]
    pub content: Vec<Block>,
    #[serde(default)]
    pub stop_reason: Option<String>,
    #[serde(default)]
    pub usage: NativeUsage,
}

/// A content block of an answer. Blocks of other types carry nothing a chat completion can
/// hold and are skipped.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    Thinking {
        thinking: String,
    },
    #[serde(other)]
    Other,
}

pub fn completion(message: Message, json_mode: bool) -> ChatCompletion {
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    for block in message.content {
        match block {
            Block::Text { text: t } => text.push_str(&t),
            Block::Thinking { thinking } => reasoning.push_str(&thinking),
            Block::ToolUse { name, input, .. } if json_mode && name == JSON_TOOL => {
                text.push_str(&compact(&input));
            }
            Block::ToolUse { id, name, input } => {
                tool_calls.push(ToolCall::function(id, name, compact(&input)));
            }
            Block::Other => {}
        }
    }
    let reason = finish_reason(message.stop_reason.as_deref(), json_mode);
    ChatCompletion {
        id: message.id,
        object: "chat.completion",
        created: crate::clock::unix_seconds(),
        model: message.model,
        choices: vec![Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: (!text.is_empty()).then_some(text),
                tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
            },
            finish_reason: Some(reason),
            logprobs: None,
        }],
        usage: message.usage.to_usage(),
    }
}
