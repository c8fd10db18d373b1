//! Live emulators of Anthropic's Messages API and Gemini's Generative Language API, from
//! their public references: they answer any request by echoing the last user text, as JSON
//! or as the provider's own event stream. (The conformance suite replays exact transcripts;
//! these serve tests that need a provider that just works, such as the OpenAI SDK check.)
//! Like Gemini, the Gemini emulator refuses a function declaration or response schema with
//! a key outside Gemini's OpenAPI subset.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Lets a test hold a stream after its first content event: the emulator waits for one
/// permit before sending anything after it.
#[derive(Clone, Default)]
pub struct Gate(Option<Arc<Semaphore>>);

impl Gate {
    pub fn closed() -> Self {
        Self(Some(Arc::new(Semaphore::new(0))))
    }

    pub fn open(&self) {
        if let Some(semaphore) = &self.0 {
            semaphore.add_permits(1);
        }
    }

    async fn wait(&self) {
        if let Some(semaphore) = &self.0 {
            let _ = semaphore.acquire().await.map(|p| p.forget());
        }
    }
}

async fn serve(app: Router) -> String {
    super::init_logging();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn words(text: &str) -> Vec<String> {
    text.split_inclusive(' ').map(str::to_owned).collect()
}

/// An SSE body from `(event name, data)` pairs; the gate is waited on after `gate_after`
/// events.
fn sse(events: Vec<(Option<&'static str>, Value)>, gate: Gate, gate_after: usize) -> Response {
    let frames = futures_util::stream::iter(events.into_iter().enumerate()).then(
        move |(i, (name, data))| {
            let gate = gate.clone();
            async move {
                if i == gate_after {
                    gate.wait().await;
                }
                let frame = match name {
                    Some(name) => format!("event: {name}\ndata: {data}\n\n"),
                    None => format!("data: {data}\r\n\r\n"),
                };
                Ok::<_, std::convert::Infallible>(frame)
            }
        },
    );
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(frames),
    )
        .into_response()
}

// ---- Anthropic

/// Starts an Anthropic emulator; returns its base URL (`…/v1`).
pub async fn anthropic(gate: Gate) -> String {
    let app = Router::new()
        .route("/v1/messages", post(anthropic_messages))
        .with_state(gate);
    format!("{}/v1", serve(app).await)
}

fn anthropic_last_user_text(body: &Value) -> String {
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"));
    match last.map(|m| &m["content"]) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

async fn anthropic_messages(State(gate): State<Gate>, request: Request) -> Response {
    if request.headers().get("x-api-key").is_none()
        || request.headers().get("anthropic-version").is_none()
    {
        let error = json!({"type": "error", "error": {"type": "authentication_error", "message": "missing key"}});
        return (http::StatusCode::UNAUTHORIZED, error.to_string()).into_response();
    }
    let bytes = axum::body::to_bytes(request.into_body(), usize::MAX)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    let text = anthropic_last_user_text(&body);
    let (id, model) = ("msg_emulated01", "claude-emulated-1");
    let output = words(&text).len();
    if body["stream"] != true {
        let message = json!({
            "id": id, "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": output}
        });
        return ([("content-type", "application/json")], message.to_string()).into_response();
    }
    let mut events = vec![
        (
            Some("message_start"),
            json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        ),
        (
            Some("content_block_start"),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        (Some("ping"), json!({"type": "ping"})),
    ];
    for word in words(&text) {
        events.push((Some("content_block_delta"), json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}})));
    }
    events.push((
        Some("content_block_stop"),
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push((Some("message_delta"), json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": output}})));
    events.push((Some("message_stop"), json!({"type": "message_stop"})));
    // Held after the first text delta.
    sse(events, gate, 4)
}

// ---- Gemini

/// Starts a Gemini emulator; returns its base URL (`…/v1beta`).
pub async fn gemini() -> String {
    let app = Router::new().route("/v1beta/models/{call}", post(gemini_call));
    format!("{}/v1beta", serve(app).await)
}

async fn gemini_call(Path(call): Path<String>, request: Request) -> Response {
    if request.headers().get("x-goog-api-key").is_none()
        || request.uri().query().is_some_and(|q| q.contains("key="))
    {
        let error = json!({"error": {"code": 403, "message": "missing key", "status": "PERMISSION_DENIED"}});
        return (http::StatusCode::FORBIDDEN, error.to_string()).into_response();
    }
    let bytes = axum::body::to_bytes(request.into_body(), usize::MAX)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    if let Some(message) = gemini_schema_errors(&body) {
        let error =
            json!({"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}});
        let headers = [("content-type", "application/json")];
        return (http::StatusCode::BAD_REQUEST, headers, error.to_string()).into_response();
    }
    let (_, method) = call.split_once(':').unwrap_or((&call, ""));
    match method {
        "generateContent" => json_response(gemini_answer(
            vec![json!({"text": gemini_last_user_text(&body)})],
            true,
        )),
        "streamGenerateContent" => {
            let pieces = words(&gemini_last_user_text(&body));
            let last = pieces.len().saturating_sub(1);
            let events = pieces
                .into_iter()
                .enumerate()
                .map(|(i, word)| (None, gemini_answer(vec![json!({"text": word})], i == last)))
                .collect();
            sse(events, Gate::default(), usize::MAX)
        }
        "embedContent" => json_response(json!({"embedding": {"values": embedding(&body)}})),
        "batchEmbedContents" => {
            let requests = body["requests"].as_array().cloned().unwrap_or_default();
            let embeddings: Vec<Value> = requests
                .iter()
                .map(|r| json!({"values": embedding(r)}))
                .collect();
            json_response(json!({"embeddings": embeddings}))
        }
        _ => (http::StatusCode::NOT_FOUND, "unknown method").into_response(),
    }
}

/// The fields of Gemini's `Schema` message (v1beta, "a select subset of an OpenAPI 3.0
/// schema object"). Gemini parses function `parameters` and `responseSchema` as that
/// message, so any other key fails the whole request.
const GEMINI_SCHEMA_FIELDS: &[&str] = &[
    "anyOf",
    "default",
    "description",
    "enum",
    "example",
    "format",
    "items",
    "maxItems",
    "maxLength",
    "maxProperties",
    "maximum",
    "minItems",
    "minLength",
    "minProperties",
    "minimum",
    "nullable",
    "pattern",
    "properties",
    "propertyOrdering",
    "required",
    "title",
    "type",
];

/// What Gemini says of the schemas in a request (one line per fault, worded and located
/// as Gemini words them), or `None` when it accepts them.
fn gemini_schema_errors(body: &Value) -> Option<String> {
    let mut errors = Vec::new();
    for (i, tool) in body["tools"].as_array().into_iter().flatten().enumerate() {
        let declarations = tool["functionDeclarations"]
            .as_array()
            .into_iter()
            .flatten();
        for (j, declaration) in declarations.enumerate() {
            if let Some(parameters) = declaration.get("parameters") {
                let at = format!("tools[{i}].function_declarations[{j}].parameters");
                check_gemini_schema(parameters, &at, &mut errors);
            }
        }
    }
    if let Some(schema) = body["generationConfig"].get("responseSchema") {
        check_gemini_schema(schema, "generation_config.response_schema", &mut errors);
    }
    (!errors.is_empty()).then(|| errors.join("\n"))
}

fn check_gemini_schema(schema: &Value, at: &str, errors: &mut Vec<String>) {
    let Some(object) = schema.as_object() else {
        errors.push(format!("Invalid value at '{at}' (type.googleapis.com/google.ai.generativelanguage.v1beta.Schema), {schema}"));
        return;
    };
    for (key, value) in object {
        match key.as_str() {
            "properties" => {
                for (n, (_, property)) in value.as_object().into_iter().flatten().enumerate() {
                    let at = format!("{at}.properties[{n}].value");
                    check_gemini_schema(property, &at, errors);
                }
            }
            "items" => check_gemini_schema(value, &format!("{at}.items"), errors),
            "anyOf" => {
                for (n, branch) in value.as_array().into_iter().flatten().enumerate() {
                    check_gemini_schema(branch, &format!("{at}.any_of[{n}]"), errors);
                }
            }
            "type" if !value.is_string() => errors.push(format!(
                "Invalid JSON payload received. Unknown name \"type\" at '{at}': Proto field is not repeating, cannot start list."
            )),
            "enum" if value.as_array().into_iter().flatten().any(|v| !v.is_string()) => {
                errors.push(format!("Invalid value at '{at}.enum' (TYPE_STRING), {value}"));
            }
            name if GEMINI_SCHEMA_FIELDS.contains(&name) => {}
            name => errors.push(format!(
                "Invalid JSON payload received. Unknown name \"{name}\" at '{at}': Cannot find field."
            )),
        }
    }
}

fn json_response(value: Value) -> Response {
    ([("content-type", "application/json")], value.to_string()).into_response()
}

fn gemini_last_user_text(body: &Value) -> String {
    let last = body["contents"]
        .as_array()
        .and_then(|c| c.iter().rev().find(|c| c["role"] == "user"));
    last.and_then(|c| c["parts"].as_array())
        .map(|parts| {
            parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

fn gemini_answer(parts: Vec<Value>, last: bool) -> Value {
    let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
    let mut answer = json!({"modelVersion": "gemini-emulated", "responseId": "resp-emulated-1"});
    if last {
        candidate["finishReason"] = json!("STOP");
        answer["usageMetadata"] =
            json!({"promptTokenCount": 9, "candidatesTokenCount": 4, "totalTokenCount": 13});
    }
    answer["candidates"] = json!([candidate]);
    answer
}

fn embedding(request: &Value) -> Vec<f32> {
    let dimensions = request["outputDimensionality"].as_u64().unwrap_or(4) as usize;
    (0..dimensions).map(|i| i as f32 / 10.0).collect()
}
