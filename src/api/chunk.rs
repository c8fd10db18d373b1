//! One `chat.completion.chunk` of a streamed answer, as the exact JSON the client will get
//! plus a few facts read from it once (how much generated text it carries, its usage, its
//! finish reason), so a stream is relayed without being re-encoded.
//!
//! A layer that must change generated text (the PII layer restores placeholders in content
//! and tool-call arguments) does it through [`Chunk::edit_text`], which re-encodes only a
//! chunk whose text it changed and keeps the facts true.

use std::fmt;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_json::Value;

use super::chat::{ChatCompletionChunk, ChunkChoice, Delta, FinishReason};
use super::error_object::UpstreamErrorObject;
use crate::error::GatewayError;
use crate::usage::Usage;

#[derive(Debug, Clone)]
pub struct Chunk {
    json: Bytes,
    /// Bytes of generated text (content, refusal, reasoning, tool names and arguments).
    content_len: usize,
    usage: Option<Usage>,
    /// A chunk with no choices that only reports usage (`stream_options.include_usage`).
    usage_only: bool,
    finish_reason: Option<FinishReason>,
    /// The index of the (last) choice the chunk carries.
    choice: Option<u32>,
    /// An SSE comment for the client's raw stream (`json` holds its text), not a chunk:
    /// SDKs ignore comments.
    comment: bool,
}

impl Chunk {
    /// Reads an OpenAI chunk without re-encoding it. An `{"error": ...}` object in place
    /// of a chunk is returned as the upstream's error.
    pub fn from_openai(json: Bytes, provider: &str) -> Result<Self, GatewayError> {
        Self::read_openai(json, provider).map_err(|not| match not {
            NotAChunk::Malformed(detail) => GatewayError::UpstreamProtocol {
                provider: provider.to_owned(),
                detail: format!("malformed JSON in a stream event: {detail}"),
            },
            NotAChunk::Error(error) => error,
        })
    }

    /// Like [`Chunk::from_openai`], telling a malformed event from an error event.
    pub fn read_openai(json: Bytes, provider: &str) -> Result<Self, NotAChunk> {
        let probe: ChunkProbe =
            serde_json::from_slice(&json).map_err(|e| NotAChunk::Malformed(e.to_string()))?;
        if let Some(error) = probe.error {
            return Err(NotAChunk::Error(error.into_stream_error(provider)));
        }
        Ok(Self::with_facts(json, probe))
    }

    fn with_facts(json: Bytes, probe: ChunkProbe) -> Self {
        Self {
            usage_only: probe.choices.is_empty() && probe.usage.is_some(),
            content_len: probe.choices.iter().map(|c| c.delta.text_len()).sum(),
            finish_reason: probe.choices.iter().rev().find_map(|c| c.finish_reason),
            choice: probe.choices.last().map(|c| c.index),
            usage: probe.usage,
            json,
            comment: false,
        }
    }

    /// An SSE comment line for the client (`: text`), such as a trailer the gateway adds
    /// to a stream; `text` is one line.
    pub fn comment(text: String) -> Self {
        Self {
            json: Bytes::from(text),
            content_len: 0,
            usage: None,
            usage_only: false,
            finish_reason: None,
            choice: None,
            comment: true,
        }
    }

    pub fn is_comment(&self) -> bool {
        self.comment
    }

    /// The JSON the client gets (a comment's text, for a comment).
    pub fn json(&self) -> &Bytes {
        &self.json
    }

    pub fn content_len(&self) -> usize {
        self.content_len
    }

    pub fn has_content(&self) -> bool {
        self.content_len > 0
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    pub fn is_usage_only(&self) -> bool {
        self.usage_only
    }

    /// The finish reason this chunk ends a choice with (the last one, if several do).
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish_reason
    }

    /// The index of the choice this chunk carries (the last, if several), if any.
    pub fn choice(&self) -> Option<u32> {
        self.choice
    }

    /// The chunk's `id` and `model` (read when asked: once a stream, not once a chunk).
    pub fn identity(&self) -> (Option<String>, Option<String>) {
        #[derive(Deserialize)]
        struct Identity {
            #[serde(default)]
            id: Option<String>,
            #[serde(default)]
            model: Option<String>,
        }
        serde_json::from_slice::<Identity>(&self.json).map_or((None, None), |i| (i.id, i.model))
    }

    /// Every text field of the chunk's deltas, read (not edited).
    pub fn texts(&self) -> Vec<(TextField, String)> {
        let mut texts = Vec::new();
        let _ = edit_choices(&self.json, "delta", |field, text| {
            texts.push((field, text.to_owned()));
            None
        });
        texts
    }

    /// Rewrites the chunk's JSON with `rewrite` (re-encoded once, key order and unknown
    /// fields kept) and reads its facts again.
    pub fn rewrite(&mut self, rewrite: impl FnOnce(&mut Value)) -> Result<(), GatewayError> {
        let mut value: Value = serde_json::from_slice(&self.json)
            .map_err(|e| GatewayError::Internal(format!("rewriting a chunk: {e}")))?;
        rewrite(&mut value);
        let json = serde_json::to_vec(&value)
            .map_err(|e| GatewayError::Internal(format!("re-encoding a chunk: {e}")))?;
        let probe: ChunkProbe = serde_json::from_slice(&json)
            .map_err(|e| GatewayError::Internal(format!("a rewritten chunk: {e}")))?;
        *self = Self::with_facts(Bytes::from(json), probe);
        Ok(())
    }

    /// Rewrites the generated text of each choice's delta: `edit` is shown every text
    /// field (content, refusal, reasoning, tool-call arguments) and returns its
    /// replacement, or `None` to keep it. Only a chunk whose text changed is re-encoded;
    /// its other fields, unknown ones included, keep their values and order, and its
    /// facts are read again from the new JSON. Returns whether anything changed.
    pub fn edit_text(
        &mut self,
        edit: impl FnMut(TextField, &str) -> Option<String>,
    ) -> Result<bool, GatewayError> {
        let Some(json) = edit_choices(&self.json, "delta", edit)? else {
            return Ok(false);
        };
        let probe: ChunkProbe = serde_json::from_slice(&json)
            .map_err(|e| GatewayError::Internal(format!("an edited chunk: {e}")))?;
        *self = Self::with_facts(json, probe);
        Ok(true)
    }
}

/// Why an upstream event is not a chunk.
#[derive(Debug)]
pub enum NotAChunk {
    /// Its data is not the JSON of a chunk (the parser's words).
    Malformed(String),
    /// The provider sent an error in place of a chunk.
    Error(GatewayError),
}

/// Where a piece of generated text sits in a choice's delta (or message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextField {
    Content { choice: u64 },
    Refusal { choice: u64 },
    Reasoning { choice: u64 },
    ToolArguments { choice: u64, tool_call: u64 },
}

/// Applies `edit` to the text fields of `choices[*].<part>` ("delta" in chunks, "message"
/// in complete answers) and returns the re-encoded JSON, or `None` when nothing changed.
pub(super) fn edit_choices(
    json: &[u8],
    part: &str,
    mut edit: impl FnMut(TextField, &str) -> Option<String>,
) -> Result<Option<Bytes>, GatewayError> {
    let mut value: Value = serde_json::from_slice(json)
        .map_err(|e| GatewayError::Internal(format!("editing an answer that is not JSON: {e}")))?;
    let mut changed = false;
    let choices = value.get_mut("choices").and_then(Value::as_array_mut);
    for (position, choice) in choices.into_iter().flatten().enumerate() {
        let index = choice
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(position as u64);
        let Some(part) = choice.get_mut(part) else {
            continue;
        };
        let fields = [
            ("content", TextField::Content { choice: index }),
            ("refusal", TextField::Refusal { choice: index }),
            ("reasoning_content", TextField::Reasoning { choice: index }),
        ];
        for (name, field) in fields {
            changed |= edit_string(part.get_mut(name), field, &mut edit);
        }
        let calls = part.get_mut("tool_calls").and_then(Value::as_array_mut);
        for (position, call) in calls.into_iter().flatten().enumerate() {
            let tool_call = call
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(position as u64);
            let field = TextField::ToolArguments {
                choice: index,
                tool_call,
            };
            let arguments = call
                .get_mut("function")
                .and_then(|f| f.get_mut("arguments"));
            changed |= edit_string(arguments, field, &mut edit);
        }
    }
    if !changed {
        return Ok(None);
    }
    let json = serde_json::to_vec(&value)
        .map_err(|e| GatewayError::Internal(format!("re-encoding an edited answer: {e}")))?;
    Ok(Some(Bytes::from(json)))
}

fn edit_string(
    slot: Option<&mut Value>,
    field: TextField,
    edit: &mut impl FnMut(TextField, &str) -> Option<String>,
) -> bool {
    let Some(Value::String(text)) = slot else {
        return false;
    };
    match edit(field, text) {
        Some(new) if new != *text => {
            *text = new;
            true
        }
        _ => false,
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
            created: crate::clock::unix_seconds(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// A chunk with one choice's delta and, at the end of that choice, its finish reason.
    pub fn delta(
        &self,
        index: u32,
        delta: Delta<'_>,
        finish_reason: Option<FinishReason>,
    ) -> Chunk {
        let content_len = delta.text_len();
        let choice = ChunkChoice {
            index,
            delta,
            finish_reason,
        };
        Chunk {
            json: self.write(vec![choice], None),
            content_len,
            usage: None,
            usage_only: false,
            finish_reason,
            choice: Some(index),
            comment: false,
        }
    }

    /// The usage chunk that ends a stream: no choices, only usage.
    pub fn usage(&self, usage: Usage) -> Chunk {
        Chunk {
            json: self.write(Vec::new(), Some(usage)),
            content_len: 0,
            usage: Some(usage),
            usage_only: true,
            finish_reason: None,
            choice: None,
            comment: false,
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
    index: u32,
    #[serde(default)]
    delta: TextProbe,
    #[serde(default)]
    finish_reason: Option<FinishReason>,
}

/// The parts of a delta (or a message) that carry generated text, measured, not copied.
#[derive(Default, Deserialize)]
pub(super) struct TextProbe {
    #[serde(default)]
    content: TextLen,
    #[serde(default)]
    refusal: TextLen,
    #[serde(default)]
    reasoning_content: TextLen,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallProbe>>,
}

impl TextProbe {
    pub(super) fn text_len(&self) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(json: &'static str) -> Chunk {
        Chunk::from_openai(Bytes::from_static(json.as_bytes()), "p").unwrap()
    }

    #[test]
    fn probes_content_usage_and_finish_without_reencoding() {
        let json = r#"{"id":"c","choices":[{"index":0,"delta":{"content":"he\"llo"},"finish_reason":null}],"usage":null}"#;
        let read = chunk(json);
        assert_eq!(read.json(), json.as_bytes());
        assert_eq!(read.content_len(), 6);
        assert!(!read.is_usage_only());
        assert_eq!(read.finish_reason(), None);

        let role_only = r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
        assert!(!chunk(role_only).has_content());

        let usage =
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
        let read = chunk(usage);
        assert!(read.is_usage_only());
        assert_eq!(read.usage().unwrap().total_tokens, 5);

        let end = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#;
        assert_eq!(chunk(end).finish_reason(), Some(FinishReason::ToolCalls));
        let odd = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"eos_token"}]}"#;
        assert_eq!(chunk(odd).finish_reason(), Some(FinishReason::Other));
    }

    #[test]
    fn a_tool_call_start_counts_as_content() {
        let json = r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get","arguments":""}}]}}]}"#;
        assert!(chunk(json).has_content());
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

    #[test]
    fn reads_its_identity() {
        let json =
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","model":"gpt-x","choices":[]}"#;
        let (id, model) = chunk(json).identity();
        assert_eq!(
            (id.as_deref(), model.as_deref()),
            (Some("chatcmpl-1"), Some("gpt-x"))
        );
    }

    #[test]
    fn an_untouched_chunk_keeps_its_bytes() {
        let json = r#"{"id":"c", "choices":[{"index":0,"delta":{"content":"hello"}}]}"#;
        let mut read = chunk(json);
        let mut seen = Vec::new();
        let changed = read
            .edit_text(|field, text| {
                seen.push((field, text.to_owned()));
                None
            })
            .unwrap();
        assert!(!changed);
        assert_eq!(read.json(), json.as_bytes(), "not re-encoded");
        assert_eq!(
            seen,
            [(TextField::Content { choice: 0 }, "hello".to_owned())]
        );
    }

    #[test]
    fn an_edited_chunk_is_reencoded_with_true_facts() {
        let json = r#"{"id":"c","x_vendor":{"a":1},"choices":[{"index":0,"delta":{"content":"Hi <EMAIL_1>","tool_calls":[{"index":2,"function":{"arguments":"{\"to\":\"<EMAIL_1>\"}"}}]},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
        let mut read = chunk(json);
        let before = read.content_len();
        let changed = read
            .edit_text(|field, text| {
                assert!(matches!(
                    field,
                    TextField::Content { choice: 0 }
                        | TextField::ToolArguments {
                            choice: 0,
                            tool_call: 2
                        }
                ));
                Some(text.replace("<EMAIL_1>", "ann@example.com"))
            })
            .unwrap();
        assert!(changed);
        let value: Value = serde_json::from_slice(read.json()).unwrap();
        assert_eq!(
            value["choices"][0]["delta"]["content"],
            "Hi ann@example.com"
        );
        assert_eq!(
            value["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
            r#"{"to":"ann@example.com"}"#
        );
        assert_eq!(value["x_vendor"]["a"], 1, "unknown fields survive");
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["id", "x_vendor", "choices", "usage"], "order kept");
        assert_eq!(
            read.content_len(),
            before + 2 * ("ann@example.com".len() - 9)
        );
        assert_eq!(read.usage().unwrap().total_tokens, 3);
        assert_eq!(read.finish_reason(), Some(FinishReason::Stop));
    }
}
