//! The `anthropic` adapter: OpenAI chat completions over Anthropic's Messages API.
//! The rules are in docs/providers.md; `request.rs` translates the request, `response.rs`
//! the answer, `stream.rs` the streaming events.

mod request;
mod response;
pub mod stream;

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::{HeaderName, Uri, header::HeaderValue};
use serde::Deserialize;

use super::http_client::HttpClient;
use super::stream::UpstreamStream;
use super::translate::ParamPolicy;
use super::transport::{self, Transport};
use super::upstream_error::{self, ErrorParts};
use super::{ChatCall, EmbeddingsCall, Provider};
use crate::api::chat::FinishReason;
use crate::api::reply::{JsonReply, Reply};
use crate::config::provider::{AnthropicSettings, HttpSettings};
use crate::config::schema::{OnMalformedEvent, ProviderKind};
use crate::error::{GatewayError, UpstreamKind};
use crate::usage::{PromptTokensDetails, Usage, UsageSource};
use stream::StreamTranslator;

const DEFAULT_BASE_URL: &str = "https://api.anthropic.com/v1";
const DEFAULT_VERSION: &str = "2023-06-01";
const DEFAULT_MAX_TOKENS: u64 = 4096;
/// The forced tool that carries a `response_format` answer.
const JSON_TOOL: &str = "json_response";

pub fn base_url(http: &HttpSettings) -> &str {
    http.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL)
}

pub struct Anthropic {
    transport: Transport,
    messages_uri: Uri,
    policy: ParamPolicy,
    on_malformed_event: OnMalformedEvent,
    default_max_tokens: u64,
}

impl Anthropic {
    pub fn new(
        name: Arc<str>,
        settings: &AnthropicSettings,
        client: HttpClient,
    ) -> Result<Self, String> {
        let version = settings.version.as_deref().unwrap_or(DEFAULT_VERSION);
        let mut headers = transport::headers(&settings.http, |key| {
            (HeaderName::from_static("x-api-key"), key.to_owned())
        })?;
        let version = HeaderValue::from_str(version)
            .map_err(|_| "anthropic_version is not a valid header value".to_owned())?;
        headers.insert(HeaderName::from_static("anthropic-version"), version);
        Ok(Self {
            messages_uri: transport::join(base_url(&settings.http), "messages")?,
            policy: ParamPolicy {
                provider: name.clone(),
                kind: ProviderKind::Anthropic,
                unsupported: settings.unsupported_params,
            },
            transport: Transport::new(name, client, headers, error_body),
            on_malformed_event: settings.http.on_malformed_event,
            default_max_tokens: settings.default_max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        })
    }

    async fn chat_call(&self, call: ChatCall<'_>) -> Result<Reply, GatewayError> {
        let translated = request::translate(&call, &self.policy, self.default_max_tokens)?;
        let body = serde_json::to_vec(&translated.body)
            .map_err(|e| GatewayError::Internal(format!("encoding the request: {e}")))?;
        let response = self
            .transport
            .post(self.messages_uri.clone(), body, call.request_id, call.trace)
            .await?;
        if call.request.is_stream() {
            let translator =
                StreamTranslator::new(self.transport.name.clone(), translated.json_mode);
            let malformed = call.malformed(self.on_malformed_event);
            let chunks = UpstreamStream::boxed(response.into_body(), translator, malformed);
            return Ok(Reply::Stream(chunks));
        }
        let body = self.transport.read_body(response).await?;
        let message: response::Message = serde_json::from_slice(&body)
            .map_err(|e| self.transport.protocol(format!("malformed JSON body: {e}")))?;
        let completion = response::completion(message, translated.json_mode);
        Ok(Reply::Json(JsonReply::completion(&completion)))
    }
}

impl Provider for Anthropic {
    fn chat<'a>(&'a self, call: ChatCall<'a>) -> BoxFuture<'a, Result<Reply, GatewayError>> {
        self.chat_call(call).boxed()
    }

    fn embeddings<'a>(
        &'a self,
        _: EmbeddingsCall<'a>,
    ) -> BoxFuture<'a, Result<JsonReply, GatewayError>> {
        let error = GatewayError::InvalidParam {
            param: "model".into(),
            message: format!(
                "provider '{}' (anthropic) has no embeddings API",
                self.transport.name
            ),
        };
        std::future::ready(Err(error)).boxed()
    }
}

/// Anthropic's usage block. Every count is optional: `message_delta` repeats only some.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
struct NativeUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl NativeUsage {
    /// Later counts replace earlier ones (`message_delta` has the final output count).
    fn merge(&mut self, later: NativeUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
    }

    fn to_usage(self) -> Usage {
        let cache_read = self.cache_read_input_tokens.unwrap_or(0);
        let cache_write = self.cache_creation_input_tokens.unwrap_or(0);
        let prompt = self.input_tokens.unwrap_or(0) + cache_read + cache_write;
        let mut usage = Usage::new(
            prompt,
            self.output_tokens.unwrap_or(0),
            UsageSource::Provider,
        );
        usage.prompt_tokens_details = Some(PromptTokensDetails {
            cached_tokens: cache_read,
            cache_creation_tokens: (cache_write > 0).then_some(cache_write),
        });
        usage
    }
}

/// `stop_reason` → `finish_reason`. The forced JSON tool ends with `tool_use`, which for
/// the client is an ordinary stop.
fn finish_reason(stop_reason: Option<&str>, json_mode: bool) -> FinishReason {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => FinishReason::Length,
        Some("tool_use") if !json_mode => FinishReason::ToolCalls,
        Some("refusal") => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

/// `{"type": "error", "error": {"type", "message"}}`: the same object as a body and as an
/// `error` event in a stream.
#[derive(Deserialize)]
struct NativeError {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

impl NativeError {
    fn into_parts(self) -> ErrorParts {
        ErrorParts {
            kind: self
                .kind
                .as_deref()
                .and_then(|kind| error_kind(kind, self.message.as_deref())),
            message: self.message,
            error_type: self.kind,
            ..ErrorParts::default()
        }
    }
}

/// What Anthropic's error types (and, for the context window, its wording) mean.
fn error_kind(error_type: &str, message: Option<&str>) -> Option<UpstreamKind> {
    let too_long = message.is_some_and(|m| m.to_ascii_lowercase().contains("prompt is too long"));
    Some(match error_type {
        "invalid_request_error" if too_long => UpstreamKind::ContextWindowExceeded,
        "invalid_request_error" | "request_too_large" => UpstreamKind::BadRequest,
        "authentication_error" | "permission_error" => UpstreamKind::Auth,
        "not_found_error" => UpstreamKind::NotFound,
        "rate_limit_error" => UpstreamKind::RateLimited,
        "billing_error" => UpstreamKind::QuotaExceeded,
        "overloaded_error" => UpstreamKind::Overloaded,
        "api_error" => UpstreamKind::Server,
        _ => return None,
    })
}

fn error_body(body: &[u8]) -> Option<ErrorParts> {
    #[derive(Deserialize)]
    struct Envelope {
        error: NativeError,
    }
    Some(
        serde_json::from_slice::<Envelope>(body)
            .ok()?
            .error
            .into_parts(),
    )
}

/// An `error` event inside a stream, with the status its type would have had.
fn stream_error(provider: &str, error: NativeError) -> GatewayError {
    let status = match error.kind.as_deref().unwrap_or_default() {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "api_error" => 500,
        "overloaded_error" => 529,
        _ => 502,
    };
    let status = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    let parts = error.into_parts();
    upstream_error::stream_event(provider, status, parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_cache_reads_and_writes_as_prompt() {
        let native = NativeUsage {
            input_tokens: Some(10),
            output_tokens: Some(5),
            cache_creation_input_tokens: Some(100),
            cache_read_input_tokens: Some(1000),
        };
        let usage = native.to_usage();
        assert_eq!(usage.prompt_tokens, 1110);
        assert_eq!(usage.total_tokens, 1115);
        let details = usage.prompt_tokens_details.unwrap();
        assert_eq!(
            (details.cached_tokens, details.cache_creation_tokens),
            (1000, Some(100))
        );
    }

    #[test]
    fn error_bodies_are_read_and_classified() {
        let body =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let parts = error_body(body).unwrap();
        assert_eq!(parts.error_type.as_deref(), Some("overloaded_error"));
        assert_eq!(parts.kind, Some(UpstreamKind::Overloaded));
        let body = br#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#;
        assert_eq!(
            error_body(body).unwrap().kind,
            Some(UpstreamKind::ContextWindowExceeded)
        );
    }
}
