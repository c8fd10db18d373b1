//! Anthropic's streaming events → OpenAI chunks (docs/providers.md, "anthropic" / Stream).
//!
//! [`StreamTranslator`] carries the state a stream needs (which content block is which tool
//! call, the usage so far) and turns one event into at most one chunk; the shared driver
//! (`providers/stream.rs`) feeds it and ends the stream with an error when it stops before
//! `message_stop`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde::Deserialize;

use super::{JSON_TOOL, NativeError, NativeUsage, finish_reason, stream_error};
use crate::api::chat::{Delta, FunctionDelta, ToolCallDelta};
use crate::api::chunk::{Chunk, ChunkWriter};
use crate::error::GatewayError;
use crate::providers::stream::{self, EventError, Translator};

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: u64,
        content_block: StartBlock,
    },
    ContentBlockDelta {
        index: u64,
        delta: BlockDelta,
    },
    MessageDelta {
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: NativeUsage,
    },
    MessageStop,
    Error {
        error: NativeError,
    },
    /// `ping`, `content_block_stop` and event types added later carry nothing to relay.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct StartMessage {
    id: String,
    model: String,
    #[serde(default)]
    usage: NativeUsage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StartBlock {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    ThinkingDelta {
        thinking: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
}

/// What a content block of the stream turned out to be.
#[derive(Clone, Copy)]
enum BlockKind {
    Text,
    Thinking,
    /// A tool call, with its index among the answer's tool calls.
    Tool(u32),
    /// The forced tool that carries a `response_format` answer: its input is the content.
    JsonTool,
    Other,
}

/// The state of one translated stream.
pub struct StreamTranslator {
    provider: Arc<str>,
    json_mode: bool,
    writer: Option<ChunkWriter>,
    blocks: HashMap<u64, BlockKind>,
    tool_calls: u32,
    usage: NativeUsage,
    /// `message_delta` brought the stop reason: the answer is whole.
    stopped: bool,
    finished: bool,
}

impl StreamTranslator {
    pub fn new(provider: Arc<str>, json_mode: bool) -> Self {
        Self {
            provider,
            json_mode,
            writer: None,
            blocks: HashMap::new(),
            tool_calls: 0,
            usage: NativeUsage::default(),
            stopped: false,
            finished: false,
        }
    }

    /// Translates one event's data into the chunk it yields, if any.
    pub fn translate(&mut self, data: &str) -> Result<Option<Chunk>, EventError> {
        let event: Event = serde_json::from_str(data)?;
        if let Event::MessageStart { message } = event {
            self.usage = message.usage;
            let writer = ChunkWriter::new(message.id, message.model);
            let role = Delta {
                role: Some("assistant"),
                content: Some(""),
                ..Delta::default()
            };
            let chunk = writer.delta(0, role, None);
            self.writer = Some(writer);
            return Ok(Some(chunk));
        }
        if let Event::Error { error } = event {
            return Err(stream_error(&self.provider, error).into());
        }
        let Some(writer) = &self.writer else {
            return match event {
                Event::Other => Ok(None),
                _ => Err(self
                    .protocol("an event came before message_start".into())
                    .into()),
            };
        };
        let chunk = match event {
            Event::ContentBlockStart {
                index,
                content_block,
            } => {
                let (kind, delta) =
                    start_block(&content_block, self.json_mode, &mut self.tool_calls);
                self.blocks.insert(index, kind);
                delta.map(|delta| writer.delta(0, delta, None))
            }
            Event::ContentBlockDelta { index, delta } => {
                let kind = self.blocks.get(&index).copied().unwrap_or(BlockKind::Other);
                block_delta(kind, &delta).map(|delta| writer.delta(0, delta, None))
            }
            Event::MessageDelta { delta, usage } => {
                self.usage.merge(usage);
                self.stopped = true;
                let reason = finish_reason(delta.stop_reason.as_deref(), self.json_mode);
                Some(writer.delta(0, Delta::default(), Some(reason)))
            }
            Event::MessageStop => {
                self.finished = true;
                Some(writer.usage(self.usage.to_usage()))
            }
            Event::MessageStart { .. } | Event::Error { .. } | Event::Other => None,
        };
        Ok(chunk)
    }
}

impl Translator for StreamTranslator {
    fn event(&mut self, data: String, out: &mut VecDeque<Chunk>) -> Result<(), EventError> {
        out.extend(self.translate(&data)?);
        Ok(())
    }

    fn complete(&self) -> bool {
        self.finished
    }

    /// A stream that ends after `message_delta` lacks only `message_stop`, which brings
    /// nothing but the usage chunk.
    fn finished_without_terminal(&mut self, out: &mut VecDeque<Chunk>) -> bool {
        let Some(writer) = self.writer.as_ref().filter(|_| self.stopped) else {
            return false;
        };
        out.push_back(writer.usage(self.usage.to_usage()));
        self.finished = true;
        true
    }

    fn terminal_event(&self) -> &'static str {
        "message_stop"
    }

    fn protocol(&self, detail: String) -> GatewayError {
        stream::protocol(&self.provider, detail)
    }
}

/// What a starting block is, and the delta its start yields.
fn start_block<'a>(
    block: &'a StartBlock,
    json_mode: bool,
    tool_calls: &mut u32,
) -> (BlockKind, Option<Delta<'a>>) {
    match block {
        StartBlock::Text { text } if text.is_empty() => (BlockKind::Text, None),
        StartBlock::Text { text } => {
            let delta = Delta {
                content: Some(text),
                ..Delta::default()
            };
            (BlockKind::Text, Some(delta))
        }
        StartBlock::Thinking { thinking } if thinking.is_empty() => (BlockKind::Thinking, None),
        StartBlock::Thinking { thinking } => {
            let delta = Delta {
                reasoning_content: Some(thinking),
                ..Delta::default()
            };
            (BlockKind::Thinking, Some(delta))
        }
        StartBlock::ToolUse { name, .. } if json_mode && name == JSON_TOOL => {
            (BlockKind::JsonTool, None)
        }
        StartBlock::ToolUse { id, name } => {
            let index = *tool_calls;
            *tool_calls += 1;
            let delta = Delta {
                tool_calls: Some(vec![ToolCallDelta {
                    index,
                    id: Some(id),
                    kind: Some("function"),
                    function: FunctionDelta {
                        name: Some(name),
                        arguments: Some(""),
                    },
                    extra_content: None,
                }]),
                ..Delta::default()
            };
            (BlockKind::Tool(index), Some(delta))
        }
        StartBlock::Other => (BlockKind::Other, None),
    }
}

fn block_delta(kind: BlockKind, delta: &BlockDelta) -> Option<Delta<'_>> {
    match (kind, delta) {
        (BlockKind::Text, BlockDelta::TextDelta { text }) => Some(Delta {
            content: Some(text),
            ..Delta::default()
        }),
        (BlockKind::Thinking, BlockDelta::ThinkingDelta { thinking }) => Some(Delta {
            reasoning_content: Some(thinking),
            ..Delta::default()
        }),
        (BlockKind::JsonTool, BlockDelta::InputJsonDelta { partial_json }) => Some(Delta {
            content: Some(partial_json),
            ..Delta::default()
        }),
        (BlockKind::Tool(index), BlockDelta::InputJsonDelta { partial_json }) => Some(Delta {
            tool_calls: Some(vec![ToolCallDelta {
                index,
                id: None,
                kind: None,
                function: FunctionDelta {
                    name: None,
                    arguments: Some(partial_json),
                },
                extra_content: None,
            }]),
            ..Delta::default()
        }),
        _ => None,
    }
}
