//! A real HTTP server on 127.0.0.1:0 that emulates an OpenAI-compatible provider, as the
//! public API reference describes it: chat completions (JSON and SSE), embeddings, and
//! OpenAI-shaped error bodies. Each test scripts its behaviour and reads back what the
//! upstream received.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt;
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// What the emulator received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

/// How the emulator answers one request.
pub enum Behavior {
    Json(Value),
    /// SSE: each event's data, sent `interval` apart, then `data: [DONE]` if `done`.
    Events {
        data: Vec<String>,
        interval: Duration,
        done: bool,
    },
    Error {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    /// A `text/event-stream` body sent exactly as given, then a clean end of the body.
    RawSse(String),
    /// Accepts the request and never answers.
    Hang,
    /// Accepts the request (reads it whole), then closes the connection without sending
    /// any response: the gateway sees a connection error.
    Reset,
    /// SSE: each event's data, sent `interval` apart, then the connection is closed
    /// abruptly (the chunked body is never terminated: no `[DONE]`, no clean end).
    Cut {
        data: Vec<String>,
        interval: Duration,
    },
    /// SSE: each event's data, sent `interval` apart, then silence forever with the
    /// connection open.
    Stall {
        data: Vec<String>,
        interval: Duration,
    },
    /// SSE: each event's data after its own delay (counted from the previous event, or
    /// from the response head for the first), then `data: [DONE]` if `done`.
    Timed {
        events: Vec<(Duration, String)>,
        done: bool,
    },
}

/// The data of an SSE event that is not valid JSON.
pub const MALFORMED_EVENT: &str = "{\"choices\": [";

type Script = dyn Fn(&Received) -> Behavior + Send + Sync;

#[derive(Clone)]
struct Shared {
    script: Arc<Script>,
    received: Arc<Mutex<Vec<Received>>>,
    /// Reports how each streamed response ended: `true` if it was sent whole, `false` if
    /// the other side went away first.
    stream_ends: mpsc::UnboundedSender<bool>,
}

pub struct Upstream {
    pub base_url: String,
    received: Arc<Mutex<Vec<Received>>>,
    pub stream_ends: mpsc::UnboundedReceiver<bool>,
}

impl Upstream {
    pub async fn start(script: impl Fn(&Received) -> Behavior + Send + Sync + 'static) -> Self {
        super::init_logging();
        let (stream_ends, ends) = mpsc::unbounded_channel();
        let received = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared {
            script: Arc::new(script),
            received: received.clone(),
            stream_ends,
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(handle))
            .route("/v1/embeddings", post(handle))
            .with_state(shared);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            base_url: format!("http://{addr}/v1"),
            received,
            stream_ends: ends,
        }
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn last(&self) -> Received {
        self.received()
            .pop()
            .expect("the upstream received a request")
    }
}

async fn handle(State(shared): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let received = Received {
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    };
    let behavior = (shared.script)(&received);
    shared.received.lock().unwrap().push(received);
    match behavior {
        Behavior::Json(value) => {
            ([("content-type", "application/json")], value.to_string()).into_response()
        }
        Behavior::Error {
            status,
            headers,
            body,
        } => {
            let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
            for (name, value) in headers {
                response.headers_mut().insert(name, value.parse().unwrap());
            }
            response
        }
        Behavior::Events {
            data,
            interval,
            done,
        } => sse_response(data, interval, done, shared.stream_ends),
        Behavior::RawSse(body) => ([("content-type", "text/event-stream")], body).into_response(),
        Behavior::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Behavior::Reset => {
            // Unwinds the connection's task: hyper never writes a response and the socket
            // is closed. `resume_unwind` skips the panic hook, so nothing is printed.
            std::panic::resume_unwind(Box::new("reset"))
        }
        Behavior::Cut { data, interval } => {
            timed_sse_response(spaced(data, interval), StreamEnd::Cut, shared.stream_ends)
        }
        Behavior::Stall { data, interval } => {
            timed_sse_response(spaced(data, interval), StreamEnd::Stall, shared.stream_ends)
        }
        Behavior::Timed { events, done } => {
            let end = if done {
                StreamEnd::Done
            } else {
                StreamEnd::Clean
            };
            timed_sse_response(events, end, shared.stream_ends)
        }
    }
}

/// Events `interval` apart, the first at once.
fn spaced(data: Vec<String>, interval: Duration) -> Vec<(Duration, String)> {
    data.into_iter()
        .enumerate()
        .map(|(i, d)| (if i == 0 { Duration::ZERO } else { interval }, d))
        .collect()
}

/// How a timed event stream ends after its events.
#[derive(Clone, Copy, PartialEq)]
enum StreamEnd {
    /// `data: [DONE]`, then a clean end of the body.
    Done,
    /// A clean end of the body, without `[DONE]`.
    Clean,
    /// The body fails: hyper closes the connection without terminating the chunked body.
    Cut,
    /// Nothing more, ever; the connection stays open.
    Stall,
}

fn timed_sse_response(
    events: Vec<(Duration, String)>,
    end: StreamEnd,
    ends: mpsc::UnboundedSender<bool>,
) -> Response {
    let mut frames: Vec<(Duration, String)> = events
        .into_iter()
        .map(|(delay, d)| (delay, format!("data: {d}\n\n")))
        .collect();
    if end == StreamEnd::Done {
        frames.push((Duration::ZERO, "data: [DONE]\n\n".to_owned()));
    }
    let guard = Arc::new(Mutex::new(EndGuard {
        complete: false,
        ends,
    }));
    let sent = futures_util::stream::iter(frames).then(|(delay, frame)| async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok::<_, std::io::Error>(Bytes::from(frame))
    });
    let tail = futures_util::stream::once(async move {
        match end {
            StreamEnd::Done | StreamEnd::Clean => {
                guard.lock().unwrap().complete = true;
                None
            }
            StreamEnd::Cut => {
                // Long enough for hyper to flush the last event before the cut.
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(guard);
                Some(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "cut by the test upstream",
                )))
            }
            StreamEnd::Stall => {
                let _guard = guard;
                std::future::pending::<()>().await;
                unreachable!()
            }
        }
    })
    .filter_map(std::future::ready);
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(sent.chain(tail)),
    )
        .into_response()
}

/// Reports how a response stream ended when it is dropped.
struct EndGuard {
    complete: bool,
    ends: mpsc::UnboundedSender<bool>,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        let _ = self.ends.send(self.complete);
    }
}

fn sse_response(
    data: Vec<String>,
    interval: Duration,
    done: bool,
    ends: mpsc::UnboundedSender<bool>,
) -> Response {
    let mut frames: Vec<String> = data.into_iter().map(|d| format!("data: {d}\n\n")).collect();
    if done {
        frames.push("data: [DONE]\n\n".to_owned());
    }
    let total = frames.len();
    let guard = Arc::new(Mutex::new(EndGuard {
        complete: false,
        ends,
    }));
    let stream =
        futures_util::stream::iter(frames.into_iter().enumerate()).then(move |(i, frame)| {
            let guard = guard.clone();
            async move {
                if i > 0 {
                    tokio::time::sleep(interval).await;
                }
                if i + 1 == total {
                    guard.lock().unwrap().complete = true;
                }
                Ok::<_, Infallible>(Bytes::from(frame))
            }
        });
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

// ---- OpenAI-shaped payloads, as the API reference shows them

pub fn completion(model: &str, content: &str) -> Value {
    json!({
        "id": "chatcmpl-upstream-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "system_fingerprint": "fp_upstream",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": null},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0}
        },
        "service_tier": "default"
    })
}

/// The data of each event of a streamed answer: a role chunk, one chunk per piece, the
/// finish chunk and, when `usage`, the usage chunk with empty choices.
pub fn chunks(model: &str, pieces: &[&str], usage: bool) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": "chatcmpl-upstream-2", "object": "chat.completion.chunk",
            "created": 1_700_000_000, "model": model, "system_fingerprint": "fp_upstream",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            "usage": null
        })
        .to_string()
    };
    let mut data = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    data.extend(
        pieces
            .iter()
            .map(|p| chunk(json!({"content": p}), Value::Null)),
    );
    data.push(chunk(json!({}), json!("stop")));
    if usage {
        data.push(
            json!({
                "id": "chatcmpl-upstream-2", "object": "chat.completion.chunk",
                "created": 1_700_000_000, "model": model, "choices": [],
                "usage": {"prompt_tokens": 9, "completion_tokens": pieces.len(), "total_tokens": 9 + pieces.len()}
            })
            .to_string(),
        );
    }
    data
}

/// Whether the request asked for the usage chunk.
pub fn wants_usage(request: &Received) -> bool {
    request.body["stream_options"]["include_usage"] == json!(true)
}

pub fn embedding(model: &str, inputs: usize) -> Value {
    let data: Vec<Value> = (0..inputs)
        .map(|i| json!({"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}))
        .collect();
    json!({"object": "list", "data": data, "model": model,
           "usage": {"prompt_tokens": 5, "total_tokens": 5}})
}
