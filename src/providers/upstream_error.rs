//! Turning an upstream's error answer (status, headers, body) into our error type. Each
//! adapter reads its provider's error bodies with its own parser and says what the error
//! means ([`UpstreamKind`]); the pipeline decides from the kind alone.

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use crate::api::error_object::UpstreamErrorObject;
use crate::error::{GatewayError, UpstreamKind, UpstreamStatus};

/// What a provider's error body says, read by the adapter's own parser.
#[derive(Debug, Default)]
pub struct ErrorParts {
    pub message: Option<String>,
    /// The OpenAI error `type` the client sees.
    pub error_type: Option<String>,
    pub code: Option<String>,
    pub param: Option<String>,
    /// What the error means, when the body says more than the status.
    pub kind: Option<UpstreamKind>,
    /// How long the body asks the client to wait before retrying (Gemini's `RetryInfo`);
    /// a `retry-after` or `retry-after-ms` header, when there is one, wins over it.
    pub retry_after: Option<Duration>,
}

/// An adapter's reader of its provider's error bodies.
pub type ErrorParser = fn(&[u8]) -> Option<ErrorParts>;

#[derive(Deserialize)]
struct Envelope {
    error: UpstreamErrorObject,
}

/// OpenAI's error body: `{"error": {"message", "type", "code", "param"}}`, as OpenAI and
/// the servers that copy its API (vLLM, Ollama, Azure...) write it.
pub fn openai_error(body: &[u8]) -> Option<ErrorParts> {
    let error = serde_json::from_slice::<Envelope>(body).ok()?.error;
    let kind = openai_kind(error.code.as_deref(), error.message.as_deref());
    Some(ErrorParts {
        message: error.message,
        error_type: error.kind,
        code: error.code,
        param: error.param,
        kind,
        retry_after: None,
    })
}

/// OpenAI's codes, and the wording of servers that send none.
fn openai_kind(code: Option<&str>, message: Option<&str>) -> Option<UpstreamKind> {
    match code {
        Some("context_length_exceeded") => Some(UpstreamKind::ContextWindowExceeded),
        Some("insufficient_quota") => Some(UpstreamKind::QuotaExceeded),
        Some("content_filter" | "content_policy_violation") => Some(UpstreamKind::ContentFiltered),
        _ => message
            .is_some_and(|m| m.to_ascii_lowercase().contains("maximum context length"))
            .then_some(UpstreamKind::ContextWindowExceeded),
    }
}

/// The OpenAI error `type` for an HTTP status, when the provider gives none we can use.
pub fn error_type_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        _ => "api_error",
    }
}

/// An error status from `provider`: what `parse` reads in the body (its message, type,
/// code, param and kind), the status's plain meaning otherwise. A rejection of the
/// gateway's credentials keeps none of the body: its message may quote part of the key.
pub fn from_status(
    provider: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    parse: ErrorParser,
) -> GatewayError {
    let mut parts = parse(body).unwrap_or_default();
    let kind = parts.kind.unwrap_or(UpstreamKind::from_status(status));
    if kind == UpstreamKind::Auth {
        parts = ErrorParts::default();
    }
    parts.retry_after = retry_after(headers).or(parts.retry_after);
    let plain = format!(
        "the upstream provider '{provider}' returned HTTP {}",
        status.as_u16()
    );
    upstream(provider, status, kind, parts, plain)
}

/// An error event inside a stream, read as `parts`, with the status its type or code
/// stands for.
pub fn stream_event(provider: &str, status: StatusCode, parts: ErrorParts) -> GatewayError {
    let kind = parts.kind.unwrap_or(UpstreamKind::from_status(status));
    upstream(
        provider,
        status,
        kind,
        parts,
        "the provider failed mid-stream".into(),
    )
}

/// The error an upstream reported, in a body or as an event in a stream: `fallback` is
/// the message when `parts` has none.
pub fn upstream(
    provider: &str,
    status: StatusCode,
    kind: UpstreamKind,
    parts: ErrorParts,
    fallback: String,
) -> GatewayError {
    GatewayError::Upstream(Box::new(UpstreamStatus {
        provider: provider.to_owned(),
        status,
        kind,
        message: parts.message.unwrap_or(fallback),
        error_type: parts.error_type,
        code: parts.code,
        param: parts.param,
        retry_after: parts.retry_after,
    }))
}

/// `retry-after-ms` (OpenAI's, milliseconds) or `retry-after` (seconds).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &str| -> Option<f64> {
        headers.get(name)?.to_str().ok()?.trim().parse::<f64>().ok()
    };
    number("retry-after-ms")
        .and_then(|ms| seconds(ms / 1000.0))
        .or_else(|| number("retry-after").and_then(seconds))
}

/// `value` seconds as a duration, or `None` when no duration can hold it (negative, not
/// finite, or beyond `Duration::MAX`, where `Duration::from_secs_f64` would panic).
pub fn seconds(value: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shaped_errors_keep_their_fields() {
        let body = br#"{"error":{"message":"This model's maximum context length is 8192 tokens","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        let err = from_status(
            "openai",
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            body,
            openai_error,
        );
        let GatewayError::Upstream(upstream) = &err else {
            panic!("{err:?}")
        };
        assert!(upstream.message.starts_with("This model's maximum"));
        assert_eq!(upstream.kind, UpstreamKind::ContextWindowExceeded);
        assert_eq!(upstream.code.as_deref(), Some("context_length_exceeded"));
        assert_eq!(upstream.param.as_deref(), Some("messages"));
    }

    #[test]
    fn credentials_rejections_never_echo_the_upstream_message() {
        let body = br#"{"error":{"message":"Incorrect API key provided: sk-abc***wxyz","type":"invalid_request_error","code":"invalid_api_key"}}"#;
        let err = from_status(
            "openai",
            StatusCode::UNAUTHORIZED,
            &HeaderMap::new(),
            body,
            openai_error,
        );
        assert!(!err.to_string().contains("sk-abc"));
        assert_eq!(err.upstream_kind(), Some(UpstreamKind::Auth));
    }

    #[test]
    fn the_kind_comes_from_the_body_before_the_status() {
        let kind = |status: StatusCode, body: &[u8]| {
            from_status("p", status, &HeaderMap::new(), body, openai_error).upstream_kind()
        };
        let quota = br#"{"error":{"message":"You exceeded your current quota","code":"insufficient_quota"}}"#;
        assert_eq!(
            kind(StatusCode::TOO_MANY_REQUESTS, quota),
            Some(UpstreamKind::QuotaExceeded)
        );
        let vllm = br#"{"object":"error","error":{"message":"This model's maximum context length is 4096 tokens"}}"#;
        assert_eq!(
            kind(StatusCode::BAD_REQUEST, vllm),
            Some(UpstreamKind::ContextWindowExceeded)
        );
        assert_eq!(
            kind(StatusCode::SERVICE_UNAVAILABLE, b"busy"),
            Some(UpstreamKind::Overloaded)
        );
        assert_eq!(
            kind(StatusCode::NOT_FOUND, b""),
            Some(UpstreamKind::NotFound)
        );
        assert_eq!(kind(StatusCode::FORBIDDEN, b""), Some(UpstreamKind::Auth));
    }

    #[test]
    fn retry_after_headers_are_read() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "2".parse().unwrap());
        let err = from_status(
            "p",
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            b"not json",
            openai_error,
        );
        assert_eq!(err.retry_after(), Some(Duration::from_secs(2)));
        headers.insert("retry-after-ms", "1500".parse().unwrap());
        let err = from_status(
            "p",
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            b"",
            openai_error,
        );
        assert_eq!(err.retry_after(), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn retry_after_headers_no_duration_can_hold_are_ignored() {
        for value in ["1e20", "-1", "NaN", "inf"] {
            let mut headers = HeaderMap::new();
            headers.insert("retry-after", value.parse().unwrap());
            let err = from_status(
                "p",
                StatusCode::TOO_MANY_REQUESTS,
                &headers,
                b"",
                openai_error,
            );
            assert_eq!(err.retry_after(), None, "retry-after: {value}");
        }
    }

    #[test]
    fn a_retry_delay_in_the_body_is_used_when_no_header_gives_one() {
        fn delay_in_body(_: &[u8]) -> Option<ErrorParts> {
            Some(ErrorParts {
                retry_after: Some(Duration::from_secs(31)),
                ..ErrorParts::default()
            })
        }
        let status = StatusCode::TOO_MANY_REQUESTS;
        let err = from_status("p", status, &HeaderMap::new(), b"", delay_in_body);
        assert_eq!(err.retry_after(), Some(Duration::from_secs(31)));
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "2".parse().unwrap());
        let err = from_status("p", status, &headers, b"", delay_in_body);
        assert_eq!(
            err.retry_after(),
            Some(Duration::from_secs(2)),
            "the header wins"
        );
    }
}
