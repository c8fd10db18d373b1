//! The `gemini` adapter: OpenAI chat completions and embeddings over Google's Generative
//! Language API. The rules are in docs/providers.md; `request.rs` translates requests,
//! `response.rs` answers, `stream.rs` streams; this module calls the API, reads its error
//! bodies, and owns the OpenAI-side shape of a thought signature, which all three share.
//! The key travels in `x-goog-api-key`, never in the URL, so it cannot reach a log line.

mod request;
mod response;
mod schema;
pub mod stream;

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::{HeaderName, StatusCode, Uri};
use serde::Deserialize;
use serde_json::{Value, json};

use super::http_client::HttpClient;
use super::stream::UpstreamStream;
use super::translate::ParamPolicy;
use super::transport::{self, Transport};
use super::upstream_error::{self, ErrorParts, error_type_for_status, seconds};
use super::{ChatCall, EmbeddingsCall, Provider, embeddings};
use crate::api::chat::ToolCall;
use crate::api::embeddings::EmbeddingInput;
use crate::api::reply::{JsonReply, Reply};
use crate::config::provider::{GeminiSettings, HttpSettings};
use crate::config::schema::{OnMalformedEvent, ProviderKind};
use crate::error::{GatewayError, UpstreamKind};
use crate::usage::UsageSource;
use response::NativeError;
use stream::StreamTranslator;

const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com/v1beta";

pub fn base_url(http: &HttpSettings) -> &str {
    http.base_url
        .as_deref()
        .unwrap_or(DEFAULT_BASE_URL)
        .trim_end_matches('/')
}

pub struct Gemini {
    transport: Transport,
    base_url: String,
    policy: ParamPolicy,
    on_malformed_event: OnMalformedEvent,
}

impl Gemini {
    pub fn new(
        name: Arc<str>,
        settings: &GeminiSettings,
        client: HttpClient,
    ) -> Result<Self, String> {
        let headers = transport::headers(&settings.http, |key| {
            (HeaderName::from_static("x-goog-api-key"), key.to_owned())
        })?;
        Ok(Self {
            base_url: base_url(&settings.http).to_owned(),
            policy: ParamPolicy {
                provider: name.clone(),
                kind: ProviderKind::Gemini,
                unsupported: settings.unsupported_params,
            },
            transport: Transport::new(name, client, headers, error_body),
            on_malformed_event: settings.http.on_malformed_event,
        })
    }

    /// `{base}/models/{model}:{method}`; the model is the target's, so it is checked here.
    fn uri(&self, model: &str, method: &str) -> Result<Uri, GatewayError> {
        format!("{}/models/{model}:{method}", self.base_url)
            .parse()
            .map_err(|_| GatewayError::InvalidParam {
                param: "model".into(),
                message: format!("'{model}' is not a valid Gemini model name"),
            })
    }

    async fn post(
        &self,
        uri: Uri,
        body: &Value,
        request_id: &str,
        trace: &http::HeaderMap,
    ) -> Result<http::Response<hyper::body::Incoming>, GatewayError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| GatewayError::Internal(format!("encoding the request: {e}")))?;
        self.transport.post(uri, body, request_id, trace).await
    }

    async fn chat_call(&self, call: ChatCall<'_>) -> Result<Reply, GatewayError> {
        let body = request::translate(call.request, &self.policy)?;
        if call.request.is_stream() {
            let uri = self.uri(call.model, "streamGenerateContent?alt=sse")?;
            let response = self.post(uri, &body, call.request_id, call.trace).await?;
            let translator =
                StreamTranslator::new(self.transport.name.clone(), call.model.to_owned());
            let malformed = call.malformed(self.on_malformed_event);
            let chunks = UpstreamStream::boxed(response.into_body(), translator, malformed);
            return Ok(Reply::Stream(chunks));
        }
        let uri = self.uri(call.model, "generateContent")?;
        let response = self.post(uri, &body, call.request_id, call.trace).await?;
        let bytes = self.transport.read_body(response).await?;
        let answer: response::Answer = serde_json::from_slice(&bytes)
            .map_err(|e| self.transport.protocol(format!("malformed JSON body: {e}")))?;
        let completion = response::completion(answer, call.model);
        Ok(Reply::Json(JsonReply::completion(&completion)))
    }

    async fn embeddings_call(&self, call: EmbeddingsCall<'_>) -> Result<JsonReply, GatewayError> {
        let texts = match &call.request.input {
            EmbeddingInput::Text(text) => vec![text.clone()],
            EmbeddingInput::Texts(texts) => texts.clone(),
            _ => {
                return Err(GatewayError::InvalidParam {
                    param: "input".into(),
                    message: format!(
                        "provider '{}' (gemini) takes text input, not token ids",
                        self.transport.name
                    ),
                });
            }
        };
        let content = |text: &str| json!({"parts": [{"text": text}]});
        let with_dimensions = |mut request: Value| {
            if let Some(dimensions) = call.request.dimensions {
                request["outputDimensionality"] = json!(dimensions);
            }
            request
        };
        let vectors = if let [text] = texts.as_slice() {
            let uri = self.uri(call.model, "embedContent")?;
            let body = with_dimensions(json!({"content": content(text)}));
            let answer: SingleEmbedding =
                self.embed(uri, &body, call.request_id, call.trace).await?;
            vec![answer.embedding.values]
        } else {
            let uri = self.uri(call.model, "batchEmbedContents")?;
            let requests: Vec<Value> = texts
                .iter()
                .map(|t| {
                    with_dimensions(
                        json!({"model": format!("models/{}", call.model), "content": content(t)}),
                    )
                })
                .collect();
            let answer: BatchEmbeddings = self
                .embed(
                    uri,
                    &json!({"requests": requests}),
                    call.request_id,
                    call.trace,
                )
                .await?;
            answer.embeddings.into_iter().map(|e| e.values).collect()
        };
        // Gemini reports no usage for embeddings: estimate, and say so.
        let source = UsageSource::Estimated;
        Ok(embeddings::reply(
            call.request,
            call.model,
            &texts,
            vectors,
            source,
        ))
    }

    async fn embed<T: for<'de> Deserialize<'de>>(
        &self,
        uri: Uri,
        body: &Value,
        request_id: &str,
        trace: &http::HeaderMap,
    ) -> Result<T, GatewayError> {
        let response = self.post(uri, body, request_id, trace).await?;
        let bytes = self.transport.read_body(response).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| self.transport.protocol(format!("malformed JSON body: {e}")))
    }
}

impl Provider for Gemini {
    fn chat<'a>(&'a self, call: ChatCall<'a>) -> BoxFuture<'a, Result<Reply, GatewayError>> {
        self.chat_call(call).boxed()
    }

    fn embeddings<'a>(
        &'a self,
        call: EmbeddingsCall<'a>,
    ) -> BoxFuture<'a, Result<JsonReply, GatewayError>> {
        self.embeddings_call(call).boxed()
    }
}

#[derive(Deserialize)]
struct Values {
    values: Vec<f32>,
}

#[derive(Deserialize)]
struct SingleEmbedding {
    embedding: Values,
}

#[derive(Deserialize)]
struct BatchEmbeddings {
    embeddings: Vec<Values>,
}

/// `{"error": {"code", "message", "status", "details"}}`: the type from the HTTP status, the
/// code is Gemini's status name, the retry delay its `RetryInfo` detail's.
fn error_body(body: &[u8]) -> Option<ErrorParts> {
    #[derive(Deserialize)]
    struct Envelope {
        error: NativeError,
    }
    let error = serde_json::from_slice::<Envelope>(body).ok()?.error;
    let status = error.code.and_then(|c| StatusCode::from_u16(c).ok());
    Some(error.into_parts(status))
}

impl NativeError {
    fn into_parts(self, status: Option<StatusCode>) -> ErrorParts {
        ErrorParts {
            kind: error_kind(self.message.as_deref()),
            message: self.message,
            error_type: status.map(|s| error_type_for_status(s).to_owned()),
            code: self.status,
            param: None,
            retry_after: retry_delay(&self.details),
        }
    }
}

/// What Gemini's wording says beyond its status: the context window.
fn error_kind(message: Option<&str>) -> Option<UpstreamKind> {
    let message = message?.to_ascii_lowercase();
    message
        .contains("exceeds the maximum number of tokens")
        .then_some(UpstreamKind::ContextWindowExceeded)
}

/// A part's `thoughtSignature` as the client sees it on the tool call, where Google's own
/// OpenAI-compatible endpoint puts it: `"extra_content": {"google": {"thought_signature"}}`.
fn extra_content(signature: &str) -> Value {
    json!({"google": {"thought_signature": signature}})
}

/// The thought signature a tool call the client sends back carries (see `extra_content`).
fn thought_signature(call: &ToolCall) -> Option<&str> {
    call.extra
        .get("extra_content")?
        .get("google")?
        .get("thought_signature")?
        .as_str()
}

const RETRY_INFO: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// The `retryDelay` of a `RetryInfo` detail: a protobuf `Duration` in its JSON form, seconds
/// with up to nine decimals and an `s` (`"31s"`, `"1.5s"`, `"0.750s"`).
fn retry_delay(details: &[Value]) -> Option<Duration> {
    details
        .iter()
        .filter(|detail| detail["@type"] == RETRY_INFO)
        .find_map(|detail| {
            let delay = detail["retryDelay"].as_str()?.strip_suffix('s')?;
            seconds(delay.parse().ok()?)
        })
}

/// An error event inside a stream, with the status its code gives.
fn stream_error(provider: &str, error: NativeError) -> GatewayError {
    let status = error
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    let parts = error.into_parts(Some(status));
    upstream_error::stream_event(provider, status, parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate_limited(delay: &str) -> Vec<u8> {
        format!(
            r#"{{"error":{{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED","details":[{{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[]}},{{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"{delay}"}}]}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn retry_info_gives_the_retry_delay() {
        for (delay, expected) in [("31s", 31_000), ("1.5s", 1_500), ("0.750s", 750)] {
            let parts = error_body(&rate_limited(delay)).unwrap();
            assert_eq!(
                parts.retry_after,
                Some(Duration::from_millis(expected)),
                "{delay}"
            );
            assert_eq!(parts.code.as_deref(), Some("RESOURCE_EXHAUSTED"));
            assert_eq!(parts.error_type.as_deref(), Some("rate_limit_error"));
        }
    }

    #[test]
    fn a_missing_or_unreadable_retry_delay_gives_none() {
        for delay in ["31", "soon", "-1s", "1e300s"] {
            let parts = error_body(&rate_limited(delay)).unwrap();
            assert_eq!(parts.retry_after, None, "{delay}");
        }
        let body =
            br#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}"#;
        assert_eq!(error_body(body).unwrap().retry_after, None);
    }
}
