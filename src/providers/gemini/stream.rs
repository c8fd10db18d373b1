//! Gemini's streamed answers (`streamGenerateContent?alt=sse`) → OpenAI chunks.
//!
//! Every event is a partial answer and may yield several chunks (a role chunk on a
//! candidate's first appearance, one per part, one for a finish reason). Gemini has no
//! terminal event: the usage chunk is sent when the body ends after a finish reason, and a
//! body that ends before any finish reason is a cut stream and ends with an error.

use std::collections::VecDeque;
use std::sync::Arc;

use super::response::{Answer, Part, UsageMetadata, finish_reason, tool_call_id};
use super::{extra_content, stream_error};
use crate::api::chat::{Delta, FinishReason, FunctionDelta, ToolCallDelta};
use crate::api::chunk::{Chunk, ChunkWriter};
use crate::error::GatewayError;
use crate::providers::stream::{self, EventError, Translator};
use crate::providers::translate::compact;

/// What the stream has seen of one candidate so far.
#[derive(Default, Clone, Copy)]
struct CandidateState {
    started: bool,
    /// Parts seen, across events: a function call's id hashes its position.
    parts: usize,
    tool_calls: u32,
}

pub struct StreamTranslator {
    provider: Arc<str>,
    upstream_model: String,
    writer: Option<ChunkWriter>,
    candidates: Vec<CandidateState>,
    usage: Option<UsageMetadata>,
    finished: bool,
}

impl StreamTranslator {
    pub fn new(provider: Arc<str>, upstream_model: String) -> Self {
        Self {
            provider,
            upstream_model,
            writer: None,
            candidates: Vec::new(),
            usage: None,
            finished: false,
        }
    }

    /// Translates one event into its chunks, appended to `out`.
    pub fn translate(&mut self, data: &str, out: &mut VecDeque<Chunk>) -> Result<(), EventError> {
        let answer: Answer = serde_json::from_str(data)?;
        if let Some(error) = answer.error {
            return Err(stream_error(&self.provider, error).into());
        }
        let writer = self.writer.get_or_insert_with(|| {
            let id = answer.response_id.clone().unwrap_or_default();
            let model = answer
                .model_version
                .clone()
                .unwrap_or_else(|| self.upstream_model.clone());
            ChunkWriter::new(id, model)
        });
        if answer.usage_metadata.is_some() {
            self.usage = answer.usage_metadata;
        }
        let blocked = answer
            .prompt_feedback
            .as_ref()
            .is_some_and(|f| f.block_reason.is_some());
        if answer.candidates.is_empty() && blocked {
            out.push_back(writer.delta(0, Delta::default(), Some(FinishReason::ContentFilter)));
            self.finished = true;
        }
        for candidate in answer.candidates {
            let index = candidate.index as usize;
            if self.candidates.len() <= index {
                self.candidates.resize(index + 1, CandidateState::default());
            }
            let state = &mut self.candidates[index];
            if !state.started {
                state.started = true;
                let role = Delta {
                    role: Some("assistant"),
                    content: Some(""),
                    ..Delta::default()
                };
                out.push_back(writer.delta(candidate.index, role, None));
            }
            for part in candidate.content.map(|c| c.parts).unwrap_or_default() {
                if let Some(chunk) = part_chunk(writer, candidate.index, state, &part) {
                    out.push_back(chunk);
                }
                state.parts += 1;
            }
            if let Some(reason) = candidate.finish_reason.as_deref() {
                let reason = finish_reason(reason, state.tool_calls > 0);
                out.push_back(writer.delta(candidate.index, Delta::default(), Some(reason)));
                self.finished = true;
            }
        }
        Ok(())
    }
}

/// Gemini has no terminal event: the body's end is the end, and the answer was complete
/// if a finish reason came before it.
impl Translator for StreamTranslator {
    fn event(&mut self, data: String, out: &mut VecDeque<Chunk>) -> Result<(), EventError> {
        self.translate(&data, out)
    }

    fn complete(&self) -> bool {
        false
    }

    /// The usage chunk if a finish reason came (the answer is complete).
    fn finished_without_terminal(&mut self, out: &mut VecDeque<Chunk>) -> bool {
        if !self.finished {
            return false;
        }
        let usage = self.usage.unwrap_or_default().to_usage();
        out.extend(self.writer.as_ref().map(|writer| writer.usage(usage)));
        true
    }

    fn terminal_event(&self) -> &'static str {
        "a finishReason"
    }

    fn protocol(&self, detail: String) -> GatewayError {
        stream::protocol(&self.provider, detail)
    }
}

/// The chunk one part yields: text, thought, or a complete function call.
fn part_chunk(
    writer: &ChunkWriter,
    choice: u32,
    state: &mut CandidateState,
    part: &Part,
) -> Option<Chunk> {
    if let Some(call) = &part.function_call {
        let id = tool_call_id(writer.id(), choice, state.parts);
        let arguments = compact(&call.args);
        let delta = Delta {
            tool_calls: Some(vec![ToolCallDelta {
                index: state.tool_calls,
                id: Some(&id),
                kind: Some("function"),
                function: FunctionDelta {
                    name: Some(&call.name),
                    arguments: Some(&arguments),
                },
                extra_content: part.thought_signature.as_deref().map(extra_content),
            }]),
            ..Delta::default()
        };
        state.tool_calls += 1;
        return Some(writer.delta(choice, delta, None));
    }
    let text = part.text.as_deref().filter(|t| !t.is_empty())?;
    let delta = if part.thought {
        Delta {
            reasoning_content: Some(text),
            ..Delta::default()
        }
    } else {
        Delta {
            content: Some(text),
            ..Delta::default()
        }
    };
    Some(writer.delta(choice, delta, None))
}
