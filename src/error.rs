//! The one error type every layer and provider returns, and the one place it becomes an
//! HTTP response.
//!
//! Variants are grouped by who is at fault (the client, the upstream provider, the gateway).
//! Each knows its status, its OpenAI `type` and `code`, a bounded label for logs and
//! metrics, and whether a retry could help. Clients only ever see the OpenAI error shape
//! `{"error": {"message", "type", "param", "code", "request_id"}}`; a 5xx message never
//! contains internal error text (that goes to the log under the same request id).

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

use crate::headers::{GATEWAY_REQUEST_ID, SHOULD_RETRY};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    // ---- the client's request is wrong
    #[error("{message}")]
    InvalidJson { message: String },
    #[error("you must provide a '{field}' parameter")]
    MissingField { field: &'static str },
    #[error("{message}")]
    InvalidParam { param: String, message: String },
    #[error("request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("the request body stalled for longer than {0:?}")]
    BodyTimeout(Duration),
    #[error("could not read the request body")]
    BodyRead,
    #[error("request carries both Transfer-Encoding and Content-Length")]
    AmbiguousLength,
    #[error("unknown request URL: {method} {path}")]
    UnknownRoute { method: String, path: String },
    #[error("method {method} is not allowed for {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("the model '{model}' does not exist or you do not have access to it")]
    ModelNotFound { model: String },
    /// Feedback for a request id that is unknown, expired, or another team's (or another
    /// key's): the client is not told which.
    #[error(
        "no request with this id can be given feedback: it is unknown, has expired, or was not made by this key's team"
    )]
    RequestNotFound,

    // ---- who is calling, and what they may use
    #[error("you didn't provide an API key: send it as 'Authorization: Bearer sk-sy-...'")]
    MissingKey,
    /// Unknown, revoked, disabled or expired: the client is not told which.
    #[error("incorrect API key provided, or the key has been revoked")]
    InvalidKey,
    #[error("this key is not allowed to use the model '{model}'")]
    ModelNotAllowed { model: String },
    /// A rate limit refused the request; retrying after `retry_after` can succeed.
    #[error("rate limit reached: {limit}")]
    RateLimited {
        limit: String,
        retry_after: Duration,
    },
    /// A budget is spent: retrying does not help before its period ends.
    #[error("budget exhausted: {budget}")]
    OverBudget { budget: String },
    /// The shared rate-limit store is down and the deployment fails closed.
    #[error("the rate-limit store is unavailable")]
    LimitsUnavailable,
    /// The key may have been created through the admin API, but the shared key store has
    /// not been reachable since this replica started.
    #[error("the key store is unavailable; retry shortly")]
    KeyStoreUnavailable,
    /// The shared store of recent requests (Redis) did not answer.
    #[error("the feedback store is unavailable; retry shortly")]
    FeedbackUnavailable,

    // ---- the admin API
    #[error("this route needs the admin key: send it as 'Authorization: Bearer <admin key>'")]
    AdminKeyRequired,
    #[error("no {kind} named '{name}'")]
    NotFound { kind: &'static str, name: String },
    #[error("{0}")]
    Conflict(String),

    // ---- the gateway cannot serve this model right now (configuration)
    #[error("the model '{model}' has no usable provider: {reason}")]
    NoUsableTarget { model: String, reason: String },
    /// Every target of the model failed recently; none is tried until its breaker lets a
    /// probe through.
    #[error(
        "the model '{model}' is unavailable: every target's circuit breaker is open after repeated failures (next probe in {})",
        humantime::format_duration(*retry_in)
    )]
    CircuitOpen { model: String, retry_in: Duration },

    // ---- the upstream provider failed
    /// The provider answered with an error status (boxed: it is the largest variant and
    /// every `Result` in the pipeline carries this type).
    #[error("provider '{}' returned {}: {}", .0.provider, .0.status, .0.message)]
    Upstream(Box<UpstreamStatus>),
    #[error("provider '{provider}' could not be reached: {detail}")]
    UpstreamUnreachable { provider: String, detail: String },
    #[error("provider '{provider}' did not answer within {after:?} ({phase})")]
    UpstreamTimeout {
        provider: String,
        phase: &'static str,
        after: Duration,
    },
    /// The request's own deadline passed (the model's `timeouts.total` or
    /// `resilience.deadline`): not the target's fault, and not worth retrying.
    #[error("the request did not complete within its deadline of {}", humantime::format_duration(*after))]
    DeadlineExceeded { after: Duration },
    /// The provider answered something we cannot read: malformed JSON, a stream that
    /// ended before its terminal event, an unexpected content type.
    #[error("provider '{provider}' sent an invalid response: {detail}")]
    UpstreamProtocol { provider: String, detail: String },

    // ---- our own fault
    #[error("internal error: {0}")]
    Internal(String),
}

/// An upstream's error answer. `message`, `error_type`, `code` and `param` come from its
/// body when the adapter could read it; `kind` is what the adapter made of it.
#[derive(Debug)]
pub struct UpstreamStatus {
    pub provider: String,
    pub status: StatusCode,
    pub kind: UpstreamKind,
    pub message: String,
    pub error_type: Option<String>,
    pub code: Option<String>,
    pub param: Option<String>,
    pub retry_after: Option<Duration>,
}

/// What an upstream's error answer means, decided by the adapter that read it (each
/// provider words its errors its own way). Retries, fallbacks, context fallbacks and the
/// breaker read only this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKind {
    /// Throttled: the same request can succeed later, or elsewhere.
    RateLimited,
    /// The account's quota or credit is spent: retrying this provider does not help.
    QuotaExceeded,
    /// Temporarily overloaded or unavailable (503, 529).
    Overloaded,
    /// Any other failure on the provider's side (500, 502, 504, 408...).
    Server,
    /// The prompt does not fit the model's context window.
    ContextWindowExceeded,
    /// The provider refused the content.
    ContentFiltered,
    /// Anything else the provider found wrong with the request.
    BadRequest,
    /// The provider rejected the gateway's own credentials (401, 403): a configuration
    /// fault of the gateway, never the client's.
    Auth,
    /// The provider does not know the model or deployment the target names (404): a
    /// configuration fault of the gateway.
    NotFound,
}

impl UpstreamKind {
    /// The kind an error status means when the body says nothing more precise.
    pub fn from_status(status: StatusCode) -> Self {
        match status.as_u16() {
            401 | 403 => Self::Auth,
            404 => Self::NotFound,
            408 => Self::Server,
            429 => Self::RateLimited,
            503 | 529 => Self::Overloaded,
            500..=599 => Self::Server,
            _ => Self::BadRequest,
        }
    }

    /// Whether the gateway's own configuration is at fault (its key or its target), so the
    /// client gets a 502 and never the upstream's words.
    fn is_gateway_fault(self) -> bool {
        matches!(self, Self::Auth | Self::NotFound)
    }
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidJson { .. }
            | Self::MissingField { .. }
            | Self::InvalidParam { .. }
            | Self::BodyRead
            | Self::AmbiguousLength => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::UnknownRoute { .. } | Self::ModelNotFound { .. } | Self::RequestNotFound => {
                StatusCode::NOT_FOUND
            }
            Self::MissingKey | Self::InvalidKey | Self::AdminKeyRequired => {
                StatusCode::UNAUTHORIZED
            }
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::ModelNotAllowed { .. } => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } | Self::OverBudget { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::NoUsableTarget { .. }
            | Self::CircuitOpen { .. }
            | Self::LimitsUnavailable
            | Self::KeyStoreUnavailable
            | Self::FeedbackUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Upstream(upstream) if upstream.kind.is_gateway_fault() => StatusCode::BAD_GATEWAY,
            Self::Upstream(upstream) => upstream.status,
            Self::UpstreamUnreachable { .. } | Self::UpstreamProtocol { .. } => {
                StatusCode::BAD_GATEWAY
            }
            Self::UpstreamTimeout { .. } | Self::DeadlineExceeded { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A bounded, stable label for logs and metrics (never user input).
    pub fn label(&self) -> &'static str {
        match self {
            Self::InvalidJson { .. } => "invalid_json",
            Self::MissingField { .. } => "missing_field",
            Self::InvalidParam { .. } => "invalid_param",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::BodyTimeout(_) => "body_timeout",
            Self::BodyRead => "body_read",
            Self::AmbiguousLength => "ambiguous_length",
            Self::UnknownRoute { .. } => "unknown_route",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::ModelNotFound { .. } => "model_not_found",
            Self::RequestNotFound => "request_not_found",
            Self::MissingKey => "missing_key",
            Self::InvalidKey => "invalid_key",
            Self::ModelNotAllowed { .. } => "model_not_allowed",
            Self::RateLimited { .. } => "rate_limited",
            Self::OverBudget { .. } => "over_budget",
            Self::LimitsUnavailable => "limits_unavailable",
            Self::KeyStoreUnavailable => "key_store_unavailable",
            Self::FeedbackUnavailable => "feedback_unavailable",
            Self::AdminKeyRequired => "admin_key_required",
            Self::NotFound { .. } => "not_found",
            Self::Conflict(_) => "conflict",
            Self::NoUsableTarget { .. } => "no_usable_target",
            Self::CircuitOpen { .. } => "circuit_open",
            Self::Upstream(_) => "upstream_status",
            Self::UpstreamUnreachable { .. } => "upstream_unreachable",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::DeadlineExceeded { .. } => "deadline_exceeded",
            Self::UpstreamProtocol { .. } => "upstream_protocol",
            Self::Internal(_) => "internal",
        }
    }

    /// What the upstream's error answer meant, when this is one.
    pub fn upstream_kind(&self) -> Option<UpstreamKind> {
        match self {
            Self::Upstream(upstream) => Some(upstream.kind),
            _ => None,
        }
    }

    /// Whether the provider refused this prompt for not fitting the model's context window.
    pub fn is_context_window(&self) -> bool {
        self.upstream_kind() == Some(UpstreamKind::ContextWindowExceeded)
    }

    /// Whether the same request could succeed if sent again, to this target or another.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Upstream(upstream) => matches!(
                upstream.kind,
                UpstreamKind::RateLimited | UpstreamKind::Overloaded | UpstreamKind::Server
            ),
            // A malformed answer is most often a transient glitch between us and the
            // provider; before the first content it is retried invisibly.
            Self::UpstreamUnreachable { .. }
            | Self::UpstreamTimeout { .. }
            | Self::UpstreamProtocol { .. } => true,
            Self::RateLimited { .. }
            | Self::LimitsUnavailable
            | Self::KeyStoreUnavailable
            | Self::FeedbackUnavailable => true,
            _ => false,
        }
    }

    /// Whether the target did not answer in time (no answer, or no first content, within
    /// its first-byte timeout).
    pub fn is_silence(&self) -> bool {
        matches!(self, Self::UpstreamTimeout { .. })
    }

    /// Whether another target can take the request after this failure: a retryable one,
    /// or a target the gateway misconfigured (its credentials or model), which another
    /// target does not share. Such a failure also says the target is unhealthy, so its
    /// breaker counts it (a client's bad request or the request's own deadline do not).
    pub fn fails_over(&self) -> bool {
        self.is_retryable()
            || self
                .upstream_kind()
                .is_some_and(UpstreamKind::is_gateway_fault)
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Upstream(upstream) => upstream.retry_after,
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            Self::CircuitOpen { retry_in, .. } => Some(*retry_in),
            _ => None,
        }
    }

    /// The OpenAI error `type`.
    fn kind(&self) -> &str {
        match self {
            Self::Upstream(upstream) if upstream.kind.is_gateway_fault() => "api_error",
            Self::Upstream(upstream) if upstream.error_type.is_some() => {
                upstream.error_type.as_deref().unwrap_or_default()
            }
            Self::OverBudget { .. } => "insufficient_quota",
            _ => match self.status().as_u16() {
                401 => "authentication_error",
                403 => "permission_error",
                404 => "invalid_request_error",
                429 => "rate_limit_error",
                400..=499 => "invalid_request_error",
                _ => "api_error",
            },
        }
    }

    fn code(&self) -> Option<&str> {
        match self {
            Self::InvalidJson { .. } => Some("invalid_json"),
            Self::MissingField { .. } => Some("missing_required_parameter"),
            Self::InvalidParam { .. } => Some("invalid_value"),
            Self::BodyTooLarge { .. } => Some("request_too_large"),
            Self::BodyTimeout(_) => Some("request_timeout"),
            Self::BodyRead => Some("invalid_body"),
            Self::AmbiguousLength => Some("invalid_request"),
            Self::UnknownRoute { .. } => Some("unknown_url"),
            Self::MethodNotAllowed { .. } => Some("method_not_allowed"),
            Self::ModelNotFound { .. } => Some("model_not_found"),
            Self::RequestNotFound => Some("request_not_found"),
            Self::MissingKey => Some("missing_api_key"),
            Self::InvalidKey => Some("invalid_api_key"),
            Self::ModelNotAllowed { .. } => Some("model_not_allowed"),
            Self::RateLimited { .. } => Some("rate_limit_exceeded"),
            Self::OverBudget { .. } => Some("insufficient_quota"),
            Self::LimitsUnavailable => Some("limits_unavailable"),
            Self::KeyStoreUnavailable => Some("key_store_unavailable"),
            Self::FeedbackUnavailable => Some("feedback_unavailable"),
            Self::AdminKeyRequired => Some("invalid_admin_key"),
            Self::NotFound { .. } => Some("not_found"),
            Self::Conflict(_) => Some("conflict"),
            Self::NoUsableTarget { .. } => Some("model_unavailable"),
            Self::CircuitOpen { .. } => Some("circuit_open"),
            Self::Upstream(upstream) => match upstream.kind {
                UpstreamKind::Auth => Some("upstream_credentials_rejected"),
                UpstreamKind::NotFound => Some("upstream_not_found"),
                _ => upstream.code.as_deref(),
            },
            Self::UpstreamUnreachable { .. } => Some("upstream_unreachable"),
            Self::UpstreamTimeout { .. } => Some("upstream_timeout"),
            Self::DeadlineExceeded { .. } => Some("deadline_exceeded"),
            Self::UpstreamProtocol { .. } => Some("upstream_invalid_response"),
            Self::Internal(_) => Some("internal_error"),
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            Self::MissingField { field } => Some(field),
            Self::InvalidParam { param, .. } => Some(param),
            Self::RequestNotFound => Some("request_id"),
            Self::ModelNotFound { .. }
            | Self::NoUsableTarget { .. }
            | Self::CircuitOpen { .. }
            | Self::ModelNotAllowed { .. } => Some("model"),
            Self::Upstream(upstream) if !upstream.kind.is_gateway_fault() => {
                upstream.param.as_deref()
            }
            _ => None,
        }
    }

    /// The message a client may see. Upstream messages are the provider's own words;
    /// everything else that is a 5xx gets a generic sentence, because the detail
    /// (addresses, socket errors) belongs in our log, not in a response.
    fn public_message(&self) -> String {
        match self {
            Self::Upstream(upstream) => match upstream.kind {
                // The upstream's words could quote the gateway's key or name its
                // deployments: the client gets ours.
                UpstreamKind::Auth => format!(
                    "the upstream provider '{}' rejected the gateway's credentials (HTTP {}): the gateway's provider configuration must be fixed",
                    upstream.provider,
                    upstream.status.as_u16()
                ),
                UpstreamKind::NotFound => format!(
                    "the upstream provider '{}' does not know the model or deployment this gateway's target names (HTTP 404): the gateway's configuration must be fixed",
                    upstream.provider
                ),
                _ => upstream.message.clone(),
            },
            Self::UpstreamUnreachable { provider, .. } => {
                format!("the upstream provider '{provider}' could not be reached")
            }
            Self::UpstreamTimeout {
                provider, after, ..
            } => format!(
                "the upstream provider '{provider}' did not answer within {}",
                humantime::format_duration(*after)
            ),
            Self::UpstreamProtocol { provider, .. } => {
                format!(
                    "the upstream provider '{provider}' sent a response the gateway could not read"
                )
            }
            Self::Internal(_) => "the gateway failed to process the request".to_owned(),
            Self::LimitsUnavailable => {
                "the gateway cannot check rate limits right now; retry shortly".to_owned()
            }
            other => other.to_string(),
        }
    }

    /// The OpenAI-shaped JSON error body.
    pub fn body(&self, request_id: &str) -> Bytes {
        let message = self.public_message();
        let body = ErrorBody {
            error: ErrorObject {
                message: &message,
                kind: self.kind(),
                param: self.param(),
                code: self.code(),
                request_id,
            },
        };
        // Serializing a struct of strings cannot fail.
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }

    /// The single place an error becomes an HTTP response. `request_id` is the gateway's
    /// (empty when unknown: the edge's request-id layer then adds it).
    pub fn into_http(self, request_id: &str) -> Response {
        let mut response = (self.status(), self.body(request_id)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(id) = HeaderValue::from_str(request_id)
            && !request_id.is_empty()
        {
            headers.insert(GATEWAY_REQUEST_ID, id);
        }
        if let Some(after) = self.retry_after() {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(after.as_secs().max(1)),
            );
        }
        if !self.is_retryable() {
            headers.insert(SHOULD_RETRY, HeaderValue::from_static("false"));
        }
        response
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    request_id: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_text_never_reaches_the_body() {
        let err = GatewayError::UpstreamUnreachable {
            provider: "openai".into(),
            detail: "tcp connect error: 10.0.0.7:443 refused".into(),
        };
        let body = String::from_utf8(err.body("req_1").to_vec()).unwrap();
        assert!(!body.contains("10.0.0.7"), "{body}");
        assert!(body.contains("req_1"));
        let internal = GatewayError::Internal("mutex poisoned at src/x.rs".into());
        let body = String::from_utf8(internal.body("req_2").to_vec()).unwrap();
        assert!(!body.contains("mutex"), "{body}");
    }

    fn upstream(status: u16, kind: UpstreamKind) -> GatewayError {
        GatewayError::Upstream(Box::new(UpstreamStatus {
            provider: "p".into(),
            status: StatusCode::from_u16(status).unwrap(),
            kind,
            message: "Incorrect API key provided: sk-abc***wxyz".into(),
            error_type: Some("invalid_request_error".into()),
            code: Some("invalid_api_key".into()),
            param: Some("key".into()),
            retry_after: None,
        }))
    }

    #[test]
    fn decisions_read_the_kind() {
        assert!(upstream(429, UpstreamKind::RateLimited).is_retryable());
        assert!(!upstream(429, UpstreamKind::QuotaExceeded).is_retryable());
        assert!(!upstream(429, UpstreamKind::QuotaExceeded).fails_over());
        assert!(upstream(400, UpstreamKind::ContextWindowExceeded).is_context_window());
        let auth = upstream(401, UpstreamKind::Auth);
        assert!(!auth.is_retryable() && auth.fails_over());
        assert!(!upstream(400, UpstreamKind::BadRequest).fails_over());
    }

    #[test]
    fn rejected_credentials_are_the_gateways_fault_and_never_quoted() {
        for (status, kind) in [
            (401, UpstreamKind::Auth),
            (403, UpstreamKind::Auth),
            (404, UpstreamKind::NotFound),
        ] {
            let err = upstream(status, kind);
            assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
            let body = String::from_utf8(err.body("req").to_vec()).unwrap();
            assert!(!body.contains("sk-abc"), "{body}");
            assert!(body.contains("'p'"), "names the provider: {body}");
            assert!(body.contains("\"type\":\"api_error\""), "{body}");
        }
    }
}
