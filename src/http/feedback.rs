//! `POST /v1/feedback`: a client scores a request the gateway served.
//!
//! ```json
//! {"request_id": "req_…", "score": "up", "comment": "…", "metadata": {…}}
//! ```
//!
//! `request_id` is the gateway's id of the request (its `x-switchyard-request-id`, never
//! the client's own `x-request-id`); `score` a number from -1 to 1, or `"up"` (1) or
//! `"down"` (-1); `comment` at most 4096 characters; `metadata` an object of at most
//! 16 KB. The body is at most 16 KB (413 beyond); anything else wrong is a 400 naming the
//! parameter.
//!
//! A key may score the requests of its team (a key without a team, its own): any other id,
//! unknown or expired, is the same 404 `request_not_found`. A second feedback on a request
//! replaces the first (`"replaced": true`). Each feedback is recorded as a log event
//! (target `switchyard::feedback`; the comment and metadata cut at 1 KB each) and counted
//! in `switchyard_feedback_total{model, target, rating}`.

use axum::Extension;
use axum::extract::{Request, State};
use axum::response::Response;
use http::StatusCode;
use serde::Serialize;
use serde_json::{Map, Value};

use super::auth::Caller;
use super::handlers::json_response;
use super::{App, body, request_id};
use crate::clock;
use crate::error::GatewayError;
use crate::feedback::{Feedback, Served};
use crate::telemetry::spans::RequestTrace;

/// Largest feedback body.
const MAX_BODY: u64 = 16 * 1024;
const MAX_COMMENT_CHARS: usize = 4096;
/// Largest metadata, as compact JSON.
const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Longest request id (the gateway's are 28 characters).
const MAX_REQUEST_ID: usize = 128;
/// The most of a comment (and of the metadata) the log event carries.
const LOGGED_BYTES: usize = 1024;

/// A feedback as asked.
#[derive(Debug, PartialEq)]
struct Asked {
    request_id: String,
    score: f64,
    comment: Option<String>,
    metadata: Option<Map<String, Value>>,
}

#[derive(Serialize)]
struct Answer<'a> {
    object: &'static str,
    request_id: &'a str,
    score: f64,
    replaced: bool,
}

pub async fn give(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    request: Request,
) -> Response {
    let id = request_id::of(&request);
    match score(&app, &caller, request).await {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(error) => error.into_http(&id),
    }
}

async fn score(app: &App, caller: &Caller, request: Request) -> Result<Vec<u8>, GatewayError> {
    let (parts, body) = request.into_parts();
    let trace = RequestTrace::of(&parts.extensions);
    let server = &caller.snapshot.server;
    let bytes = body::read_at_most(body, &parts.headers, MAX_BODY, server).await?;
    let asked = parse(&bytes)?;
    let index = &app.store.shared().feedback;
    let served = index
        .find(&asked.request_id)
        .await?
        .filter(|served| served.scorable_by(&caller.key))
        .ok_or(GatewayError::RequestNotFound)?;
    let feedback = Feedback {
        score: asked.score,
        comment: asked.comment,
        metadata: asked.metadata,
        at: clock::unix_seconds(),
    };
    let replaced = index
        .give(&asked.request_id, &feedback)
        .await?
        .ok_or(GatewayError::RequestNotFound)?;
    log(&asked.request_id, &served, &feedback, caller, replaced);
    trace.feedback(
        served.trace_id.as_deref(),
        served.span_id.as_deref(),
        feedback.score,
    );
    let model = served.model.as_deref().unwrap_or("unknown");
    app.metrics
        .count_feedback(model, &served.target, feedback.score);
    let answer = Answer {
        object: "feedback",
        request_id: &asked.request_id,
        score: feedback.score,
        replaced,
    };
    Ok(serde_json::to_vec(&answer).unwrap_or_default())
}

fn log(request_id: &str, served: &Served, feedback: &Feedback, caller: &Caller, replaced: bool) {
    let comment = feedback.comment.as_deref();
    let metadata = feedback
        .metadata
        .as_ref()
        .map(|m| Value::Object(m.clone()).to_string());
    tracing::info!(
        target: "switchyard::feedback",
        request_id,
        key = &*served.key,
        team = served.team.as_deref(),
        model = served.model.as_deref(),
        target = &*served.target,
        prompt_version = served.prompt_version.as_deref(),
        variant = served.variant.as_deref(),
        trace_id = served.trace_id.as_deref(),
        given_by = &*caller.key.name,
        score = feedback.score,
        replaced,
        comment_chars = comment.map(|c| c.chars().count()),
        comment = comment.map(cut),
        metadata = metadata.as_deref().map(cut),
        "feedback"
    );
}

/// At most [`LOGGED_BYTES`] of `text`, on a character boundary.
fn cut(text: &str) -> &str {
    let mut end = text.len().min(LOGGED_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn parse(bytes: &[u8]) -> Result<Asked, GatewayError> {
    let invalid_json = |message: String| GatewayError::InvalidJson { message };
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| invalid_json(format!("invalid request body: {e}")))?;
    let Value::Object(mut fields) = value else {
        return Err(invalid_json("expected a JSON object".to_owned()));
    };
    let asked = Asked {
        request_id: request_id_of(fields.remove("request_id"))?,
        score: score_of(fields.remove("score"))?,
        comment: comment_of(fields.remove("comment"))?,
        metadata: metadata_of(fields.remove("metadata"))?,
    };
    if let Some(name) = fields.keys().next() {
        return Err(invalid(name, format!("unknown parameter '{name}'")));
    }
    Ok(asked)
}

fn invalid(param: &str, message: impl Into<String>) -> GatewayError {
    GatewayError::InvalidParam {
        param: param.to_owned(),
        message: message.into(),
    }
}

fn request_id_of(value: Option<Value>) -> Result<String, GatewayError> {
    match value {
        None | Some(Value::Null) => Err(GatewayError::MissingField {
            field: "request_id",
        }),
        Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_REQUEST_ID => Ok(id),
        Some(_) => Err(invalid(
            "request_id",
            "expected the id the gateway gave the request (its x-switchyard-request-id header)",
        )),
    }
}

fn score_of(value: Option<Value>) -> Result<f64, GatewayError> {
    let score = match &value {
        None | Some(Value::Null) => return Err(GatewayError::MissingField { field: "score" }),
        Some(Value::String(word)) if word == "up" => Some(1.0),
        Some(Value::String(word)) if word == "down" => Some(-1.0),
        Some(Value::Number(number)) => number.as_f64().filter(|s| (-1.0..=1.0).contains(s)),
        Some(_) => None,
    };
    score.ok_or_else(|| {
        invalid(
            "score",
            "expected a number from -1 to 1, or \"up\" or \"down\"",
        )
    })
}

fn comment_of(value: Option<Value>) -> Result<Option<String>, GatewayError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.chars().count() <= MAX_COMMENT_CHARS => Ok(Some(text)),
        Some(Value::String(_)) => Err(invalid(
            "comment",
            format!("expected at most {MAX_COMMENT_CHARS} characters"),
        )),
        Some(_) => Err(invalid("comment", "expected a string")),
    }
}

fn metadata_of(value: Option<Value>) -> Result<Option<Map<String, Value>>, GatewayError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => {
            let size = serde_json::to_vec(&map).map_or(usize::MAX, |json| json.len());
            if size > MAX_METADATA_BYTES {
                return Err(invalid(
                    "metadata",
                    format!("expected at most {MAX_METADATA_BYTES} bytes of JSON"),
                ));
            }
            Ok(Some(map))
        }
        Some(_) => Err(invalid("metadata", "expected an object")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn param_of(body: Value) -> Option<String> {
        let bytes = serde_json::to_vec(&body).unwrap();
        let error = parse(&bytes).err()?;
        let answer: Value = serde_json::from_slice(&error.body("req")).unwrap();
        Some(answer["error"]["param"].as_str().unwrap_or("-").to_owned())
    }

    #[test]
    fn scores_are_numbers_from_minus_one_to_one_or_up_or_down() {
        let score = |score: Value| {
            let body = json!({"request_id": "req_1", "score": score});
            parse(&serde_json::to_vec(&body).unwrap())
                .map(|a| a.score)
                .ok()
        };
        assert_eq!(score(json!("up")), Some(1.0));
        assert_eq!(score(json!("down")), Some(-1.0));
        assert_eq!(score(json!(0)), Some(0.0));
        assert_eq!(score(json!(-0.25)), Some(-0.25));
        for bad in [
            json!(2),
            json!(-1.01),
            json!("meh"),
            json!(true),
            json!([1]),
        ] {
            assert_eq!(score(bad.clone()), None, "{bad}");
        }
    }

    #[test]
    fn every_wrong_parameter_is_named() {
        let big = "x".repeat(MAX_METADATA_BYTES);
        let cases = [
            (json!({"score": 1}), "request_id"),
            (json!({"request_id": 7, "score": 1}), "request_id"),
            (json!({"request_id": "req_1"}), "score"),
            (
                json!({"request_id": "req_1", "score": 1, "comment": "é".repeat(4097)}),
                "comment",
            ),
            (
                json!({"request_id": "req_1", "score": 1, "metadata": [1]}),
                "metadata",
            ),
            (
                json!({"request_id": "req_1", "score": 1, "metadata": {"a": big}}),
                "metadata",
            ),
            (
                json!({"request_id": "req_1", "score": 1, "rating": 1}),
                "rating",
            ),
        ];
        for (body, param) in cases {
            assert_eq!(param_of(body.clone()).as_deref(), Some(param), "{body}");
        }
        let fine = json!({"request_id": "req_1", "score": 1, "comment": "é".repeat(4096), "metadata": {"a": 1}});
        assert_eq!(param_of(fine), None);
    }

    #[test]
    fn the_log_keeps_at_most_a_kilobyte_of_text() {
        assert_eq!(cut(&"é".repeat(600)).len(), 1024);
        assert_eq!(cut("short"), "short");
    }
}
