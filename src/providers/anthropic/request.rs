//! OpenAI chat request → Anthropic Messages request (docs/providers.md, "anthropic").

use serde_json::{Map, Value, json};

use super::JSON_TOOL;
use crate::api::chat::{ChatRequest, ContentPart, Message, MessageContent, Role};
use crate::error::GatewayError;
use crate::providers::ChatCall;
use crate::providers::translate::{self, ParamPolicy};

/// Anthropic's own request fields a client may send; they pass through.
const NATIVE: &[&str] = &["top_k", "thinking", "metadata", "service_tier"];
/// OpenAI fields with no effect on what the client observes: always dropped.
const DROPPED: &[&str] = &["store", "parallel_tool_calls"];

/// The native request body, and whether `response_format` became the forced JSON tool.
pub struct Translated {
    pub body: Value,
    pub json_mode: bool,
}

pub fn translate(
    call: &ChatCall<'_>,
    policy: &ParamPolicy,
    default_max_tokens: u64,
) -> Result<Translated, GatewayError> {
    let request = call.request;
    let mut body = policy.extra_fields(request, NATIVE, DROPPED)?;
    let (system, messages) = conversation(&request.messages)?;
    body.insert("model".into(), json!(call.model));
    if let Some(system) = system {
        body.insert("system".into(), system);
    }
    body.insert("messages".into(), Value::Array(messages));
    let max_tokens = request
        .max_output_tokens()
        .or(call.max_tokens)
        .unwrap_or(default_max_tokens);
    body.insert("max_tokens".into(), json!(max_tokens));
    sampling(request, &mut body)?;
    if request.is_stream() {
        body.insert("stream".into(), json!(true));
    }
    if let Some(user) = &request.user {
        let metadata = body.entry("metadata").or_insert_with(|| json!({}));
        if let Value::Object(metadata) = metadata {
            metadata.insert("user_id".into(), json!(user));
        }
    }
    let json_mode = tools(request, &mut body)?;
    Ok(Translated {
        body: Value::Object(body),
        json_mode,
    })
}

fn sampling(request: &ChatRequest, body: &mut Map<String, Value>) -> Result<(), GatewayError> {
    if let Some(temperature) = request.temperature {
        if temperature > 1.0 {
            return Err(GatewayError::InvalidParam {
                param: "temperature".into(),
                message: "temperature must be between 0 and 1 for anthropic providers".into(),
            });
        }
        body.insert("temperature".into(), json!(temperature));
    }
    if let Some(top_p) = request.top_p {
        body.insert("top_p".into(), json!(top_p));
    }
    if let Some(stop) = &request.stop {
        body.insert(
            "stop_sequences".into(),
            json!(translate::stop_sequences(stop)),
        );
    }
    Ok(())
}

/// `tools`, `tool_choice` and `response_format`; returns whether JSON mode is on.
fn tools(request: &ChatRequest, body: &mut Map<String, Value>) -> Result<bool, GatewayError> {
    let parallel = request
        .extra
        .get("parallel_tool_calls")
        .and_then(Value::as_bool);
    if let Some(schema) = json_schema(request)? {
        if request.tools.is_some() {
            return Err(GatewayError::InvalidParam {
                param: "response_format".into(),
                message: "response_format cannot be combined with tools for anthropic providers"
                    .into(),
            });
        }
        let tool = json!({"name": JSON_TOOL, "description": "Respond with the JSON", "input_schema": schema});
        body.insert("tools".into(), json!([tool]));
        body.insert(
            "tool_choice".into(),
            json!({"type": "tool", "name": JSON_TOOL}),
        );
        return Ok(true);
    }
    if let Some(tools) = &request.tools {
        let tools: Vec<Value> = tools
            .iter()
            .map(|tool| {
                let mut native = json!({"name": tool.function.name});
                if let Some(description) = &tool.function.description {
                    native["description"] = json!(description);
                }
                native["input_schema"] = tool
                    .function
                    .parameters
                    .clone()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
                native
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    let mut choice = match &request.tool_choice {
        None => None,
        Some(choice) => Some(tool_choice(choice)?),
    };
    if parallel == Some(false) {
        let choice = choice.get_or_insert_with(|| json!({"type": "auto"}));
        choice["disable_parallel_tool_use"] = json!(true);
    }
    if let Some(choice) = choice {
        body.insert("tool_choice".into(), choice);
    }
    Ok(false)
}

fn tool_choice(choice: &Value) -> Result<Value, GatewayError> {
    let native = match choice {
        Value::String(mode) if mode == "auto" => json!({"type": "auto"}),
        Value::String(mode) if mode == "none" => json!({"type": "none"}),
        Value::String(mode) if mode == "required" => json!({"type": "any"}),
        Value::Object(named) => match named.get("function").and_then(|f| f.get("name")) {
            Some(name) => json!({"type": "tool", "name": name}),
            None => return Err(invalid("tool_choice", "expected a function name")),
        },
        _ => {
            return Err(invalid(
                "tool_choice",
                "expected auto, none, required or a function",
            ));
        }
    };
    Ok(native)
}

/// The schema `response_format` asks for, if any.
fn json_schema(request: &ChatRequest) -> Result<Option<Value>, GatewayError> {
    let Some(format) = &request.response_format else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "object"}))),
        Some("json_schema") => format
            .get("json_schema")
            .and_then(|s| s.get("schema"))
            .cloned()
            .map(Some)
            .ok_or_else(|| invalid("response_format", "json_schema needs a schema")),
        _ => Err(invalid(
            "response_format",
            "expected text, json_object or json_schema",
        )),
    }
}

/// The system prompt and the alternating user/assistant turns.
fn conversation(messages: &[Message]) -> Result<(Option<Value>, Vec<Value>), GatewayError> {
    let mut system: Vec<Value> = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for (index, message) in messages.iter().enumerate() {
        let param = || format!("messages[{index}]");
        match message.role {
            Role::System | Role::Developer => system.extend(system_blocks(message, &param())?),
            Role::User => push(&mut turns, "user", user_content(message, &param())?),
            Role::Assistant => push(
                &mut turns,
                "assistant",
                assistant_content(message, &param())?,
            ),
            Role::Tool => push(&mut turns, "user", tool_result(message, &param())?),
            Role::Function => {
                return Err(invalid(
                    &param(),
                    "the deprecated function role is not supported",
                ));
            }
        }
    }
    let turns = turns.into_iter().map(Turn::into_json).collect();
    Ok((system_prompt(system), turns))
}

/// All system texts as one string, unless a part carries extra fields (such as
/// `cache_control`), which only blocks can hold.
fn system_prompt(blocks: Vec<Value>) -> Option<Value> {
    if blocks.is_empty() {
        return None;
    }
    let plain = blocks
        .iter()
        .all(|b| b.as_object().is_some_and(|o| o.len() == 2));
    if !plain {
        return Some(Value::Array(blocks));
    }
    let texts: Vec<&str> = blocks.iter().filter_map(|b| b["text"].as_str()).collect();
    Some(json!(texts.join("\n\n")))
}

fn system_blocks(message: &Message, param: &str) -> Result<Vec<Value>, GatewayError> {
    match &message.content {
        None | Some(MessageContent::Null) => Ok(Vec::new()),
        Some(MessageContent::Text(text)) => Ok(vec![json!({"type": "text", "text": text})]),
        Some(MessageContent::Parts(parts)) => parts
            .iter()
            .map(|part| match part {
                ContentPart::Text { text, extra } => Ok(text_block(text, extra)),
                _ => Err(invalid(param, "system messages may only contain text")),
            })
            .collect(),
    }
}

fn text_block(text: &str, extra: &Map<String, Value>) -> Value {
    let mut block = Map::new();
    block.insert("type".into(), json!("text"));
    block.insert("text".into(), json!(text));
    block.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    Value::Object(block)
}

/// A turn's content: a plain string, or blocks.
enum Content {
    Text(String),
    Blocks(Vec<Value>),
}

impl Content {
    fn into_blocks(self) -> Vec<Value> {
        match self {
            Self::Text(text) => vec![json!({"type": "text", "text": text})],
            Self::Blocks(blocks) => blocks,
        }
    }
}

struct Turn {
    role: &'static str,
    content: Content,
}

impl Turn {
    fn into_json(self) -> Value {
        let content = match self.content {
            Content::Text(text) => json!(text),
            Content::Blocks(blocks) => Value::Array(blocks),
        };
        json!({"role": self.role, "content": content})
    }
}

/// Appends a turn, merging it into the previous one when the role repeats (Anthropic
/// requires turns to alternate).
fn push(turns: &mut Vec<Turn>, role: &'static str, content: Content) {
    match turns.last_mut() {
        Some(last) if last.role == role => {
            let previous = std::mem::replace(&mut last.content, Content::Blocks(Vec::new()));
            let mut blocks = previous.into_blocks();
            blocks.extend(content.into_blocks());
            last.content = Content::Blocks(blocks);
        }
        _ => turns.push(Turn { role, content }),
    }
}

fn user_content(message: &Message, param: &str) -> Result<Content, GatewayError> {
    match &message.content {
        None | Some(MessageContent::Null) => Ok(Content::Text(String::new())),
        Some(MessageContent::Text(text)) => Ok(Content::Text(text.clone())),
        Some(MessageContent::Parts(parts)) => parts
            .iter()
            .enumerate()
            .map(|(i, part)| user_block(part, &format!("{param}.content[{i}]")))
            .collect::<Result<_, _>>()
            .map(Content::Blocks),
    }
}

fn user_block(part: &ContentPart, param: &str) -> Result<Value, GatewayError> {
    match part {
        ContentPart::Text { text, extra } => Ok(text_block(text, extra)),
        ContentPart::ImageUrl { image_url, .. } => {
            let source = match translate::data_url(&image_url.url) {
                Some((media_type, data)) => {
                    json!({"type": "base64", "media_type": media_type, "data": data})
                }
                None => json!({"type": "url", "url": image_url.url}),
            };
            Ok(json!({"type": "image", "source": source}))
        }
        ContentPart::Other(other) => {
            let kind = other
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("unknown");
            Err(invalid(
                param,
                &format!("content parts of type '{kind}' are not supported by anthropic providers"),
            ))
        }
    }
}

fn assistant_content(message: &Message, param: &str) -> Result<Content, GatewayError> {
    let calls = message.tool_calls.as_deref().unwrap_or_default();
    if let (Some(MessageContent::Text(text)), true) = (&message.content, calls.is_empty()) {
        return Ok(Content::Text(text.clone()));
    }
    let mut blocks = Vec::new();
    if let Some(content) = &message.content {
        let text = translate::text_only(content, param)?;
        if !text.is_empty() {
            blocks.push(json!({"type": "text", "text": text}));
        }
    }
    for (i, call) in calls.iter().enumerate() {
        let input = translate::arguments(&call.function.arguments, || {
            format!("{param}.tool_calls[{i}].function.arguments")
        })?;
        blocks.push(
            json!({"type": "tool_use", "id": call.id, "name": call.function.name, "input": input}),
        );
    }
    Ok(Content::Blocks(blocks))
}

fn tool_result(message: &Message, param: &str) -> Result<Content, GatewayError> {
    let id = message
        .tool_call_id
        .as_deref()
        .ok_or_else(|| invalid(param, "tool messages need a tool_call_id"))?;
    let text = match &message.content {
        Some(content) => translate::text_only(content, param)?,
        None => String::new(),
    };
    Ok(Content::Blocks(vec![
        json!({"type": "tool_result", "tool_use_id": id, "content": text}),
    ]))
}

fn invalid(param: &str, message: &str) -> GatewayError {
    GatewayError::InvalidParam {
        param: param.to_owned(),
        message: message.to_owned(),
    }
}
