//! OpenAI chat request → Gemini `generateContent` request (docs/providers.md, "gemini");
//! tool and response schemas go through `schema.rs`.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::{schema, thought_signature};
use crate::api::chat::{ChatRequest, ContentPart, Message, MessageContent, Role, Tool};
use crate::error::GatewayError;
use crate::providers::translate::{self, ParamPolicy};

/// Parameters read separately below (from the fields Switchyard does not model) or with no
/// effect on what the client observes.
const HANDLED: &[&str] = &[
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "store",
    "parallel_tool_calls",
];

pub fn translate(request: &ChatRequest, policy: &ParamPolicy) -> Result<Value, GatewayError> {
    policy.extra_fields(request, &[], HANDLED)?;
    let mut body = Map::new();
    let (system, contents) = conversation(&request.messages)?;
    body.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({"parts": system}));
    }
    let config = generation_config(request)?;
    if !config.is_empty() {
        body.insert("generationConfig".into(), Value::Object(config));
    }
    if let Some(tools) = &request.tools {
        let declarations = tools
            .iter()
            .enumerate()
            .map(|(i, tool)| declaration(i, tool))
            .collect::<Result<Vec<_>, _>>()?;
        body.insert(
            "tools".into(),
            json!([{"functionDeclarations": declarations}]),
        );
    }
    if let Some(choice) = &request.tool_choice {
        body.insert(
            "toolConfig".into(),
            json!({"functionCallingConfig": tool_choice(choice)?}),
        );
    }
    Ok(Value::Object(body))
}

/// A tool's `functionDeclarations` entry, its parameters in Gemini's schema subset.
fn declaration(index: usize, tool: &Tool) -> Result<Value, GatewayError> {
    let function = &tool.function;
    let mut declaration = json!({"name": function.name});
    if let Some(description) = &function.description {
        declaration["description"] = json!(description);
    }
    if let Some(parameters) = &function.parameters {
        let param = format!("tools[{index}].function.parameters");
        let subject = format!("tool '{}'", function.name);
        declaration["parameters"] = schema::convert(parameters, &param, &subject)?;
    }
    Ok(declaration)
}

fn generation_config(request: &ChatRequest) -> Result<Map<String, Value>, GatewayError> {
    let mut config = Map::new();
    let mut set = |key: &str, value: Option<Value>| {
        if let Some(value) = value.filter(|v| !v.is_null()) {
            config.insert(key.to_owned(), value);
        }
    };
    set("temperature", request.temperature.map(|v| json!(v)));
    set("topP", request.top_p.map(|v| json!(v)));
    set("candidateCount", request.n.map(|v| json!(v)));
    set(
        "maxOutputTokens",
        request.max_output_tokens().map(|v| json!(v)),
    );
    set(
        "stopSequences",
        request
            .stop
            .as_ref()
            .map(|s| json!(translate::stop_sequences(s))),
    );
    set("seed", request.extra.get("seed").cloned());
    set(
        "presencePenalty",
        request.extra.get("presence_penalty").cloned(),
    );
    set(
        "frequencyPenalty",
        request.extra.get("frequency_penalty").cloned(),
    );
    if let Some(format) = &request.response_format {
        match format.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => set("responseMimeType", Some(json!("application/json"))),
            Some("json_schema") => {
                set("responseMimeType", Some(json!("application/json")));
                set("responseSchema", Some(response_schema(format)?));
            }
            _ => {
                return Err(invalid(
                    "response_format",
                    "expected text, json_object or json_schema",
                ));
            }
        }
    }
    Ok(config)
}

/// `response_format.json_schema.schema` in Gemini's schema subset.
fn response_schema(format: &Value) -> Result<Value, GatewayError> {
    let json_schema = &format["json_schema"];
    let schema = json_schema
        .get("schema")
        .ok_or_else(|| invalid("response_format", "json_schema needs a schema"))?;
    let name = json_schema["name"].as_str().unwrap_or("json_schema");
    let subject = format!("response_format '{name}'");
    schema::convert(schema, "response_format.json_schema.schema", &subject)
}

fn tool_choice(choice: &Value) -> Result<Value, GatewayError> {
    Ok(match choice {
        Value::String(mode) if mode == "auto" => json!({"mode": "AUTO"}),
        Value::String(mode) if mode == "none" => json!({"mode": "NONE"}),
        Value::String(mode) if mode == "required" => json!({"mode": "ANY"}),
        Value::Object(named) => match named.get("function").and_then(|f| f.get("name")) {
            Some(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
            None => return Err(invalid("tool_choice", "expected a function name")),
        },
        _ => {
            return Err(invalid(
                "tool_choice",
                "expected auto, none, required or a function",
            ));
        }
    })
}

/// The system instruction's parts and the alternating user/model turns.
fn conversation(messages: &[Message]) -> Result<(Vec<Value>, Vec<Value>), GatewayError> {
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    // Gemini names a function response by the function, OpenAI by the call id.
    let mut call_names: HashMap<&str, &str> = HashMap::new();
    for (index, message) in messages.iter().enumerate() {
        let param = format!("messages[{index}]");
        let (role, parts) = match message.role {
            Role::System | Role::Developer => {
                if let Some(content) = &message.content {
                    system.push(json!({"text": translate::text_only(content, &param)?}));
                }
                continue;
            }
            Role::User => ("user", user_parts(message, &param)?),
            Role::Assistant => {
                for call in message.tool_calls.iter().flatten() {
                    call_names.insert(&call.id, &call.function.name);
                }
                ("model", model_parts(message, &param)?)
            }
            Role::Tool => (
                "user",
                vec![function_response(message, &call_names, &param)?],
            ),
            Role::Function => {
                return Err(invalid(
                    &param,
                    "the deprecated function role is not supported",
                ));
            }
        };
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(parts),
            _ => turns.push((role, parts)),
        }
    }
    let contents = turns
        .into_iter()
        .map(|(role, parts)| json!({"role": role, "parts": parts}))
        .collect();
    Ok((system, contents))
}

fn user_parts(message: &Message, param: &str) -> Result<Vec<Value>, GatewayError> {
    match &message.content {
        None | Some(MessageContent::Null) => Ok(Vec::new()),
        Some(MessageContent::Text(text)) => Ok(vec![json!({"text": text})]),
        Some(MessageContent::Parts(parts)) => parts
            .iter()
            .enumerate()
            .map(|(i, part)| user_part(part, &format!("{param}.content[{i}]")))
            .collect(),
    }
}

fn user_part(part: &ContentPart, param: &str) -> Result<Value, GatewayError> {
    match part {
        ContentPart::Text { text, .. } => Ok(json!({"text": text})),
        ContentPart::ImageUrl { image_url, .. } => Ok(match translate::data_url(&image_url.url) {
            Some((mime, data)) => json!({"inlineData": {"mimeType": mime, "data": data}}),
            None => {
                json!({"fileData": {"mimeType": image_type(&image_url.url), "fileUri": image_url.url}})
            }
        }),
        ContentPart::Other(other) => {
            let kind = other
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("unknown");
            Err(invalid(
                param,
                &format!("content parts of type '{kind}' are not supported by gemini providers"),
            ))
        }
    }
}

/// The image type a URL's extension names (Gemini requires one for file URIs).
fn image_type(url: &str) -> &'static str {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    match path.rsplit('.').next() {
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        _ => "image/jpeg",
    }
}

fn model_parts(message: &Message, param: &str) -> Result<Vec<Value>, GatewayError> {
    let mut parts = Vec::new();
    if let Some(content) = &message.content {
        let text = translate::text_only(content, param)?;
        if !text.is_empty() {
            parts.push(json!({"text": text}));
        }
    }
    for (i, call) in message.tool_calls.iter().flatten().enumerate() {
        let args = translate::arguments(&call.function.arguments, || {
            format!("{param}.tool_calls[{i}].function.arguments")
        })?;
        let mut part = json!({"functionCall": {"name": call.function.name, "args": args}});
        if let Some(signature) = thought_signature(call) {
            part["thoughtSignature"] = json!(signature);
        }
        parts.push(part);
    }
    Ok(parts)
}

fn function_response(
    message: &Message,
    call_names: &HashMap<&str, &str>,
    param: &str,
) -> Result<Value, GatewayError> {
    let id = message.tool_call_id.as_deref().unwrap_or_default();
    let name = call_names.get(id).ok_or_else(|| {
        invalid(
            &format!("{param}.tool_call_id"),
            "does not answer any earlier tool call",
        )
    })?;
    let text = match &message.content {
        Some(content) => translate::text_only(content, param)?,
        None => String::new(),
    };
    Ok(json!({"functionResponse": {"name": name, "response": {"content": text}}}))
}

fn invalid(param: &str, message: &str) -> GatewayError {
    GatewayError::InvalidParam {
        param: param.to_owned(),
        message: message.to_owned(),
    }
}
