//! Turning an upstream's error answer (status, headers, body) into our error type.

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use crate::error::{GatewayError, UpstreamStatus};
use crate::stream::UpstreamErrorObject;

/// What a provider's error body says, read by the adapter's own parser.
#[derive(Debug, Default)]
pub struct ErrorParts {
    pub message: Option<String>,
    pub kind: Option<String>,
    pub code: Option<String>,
    pub param: Option<String>,
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

/// OpenAI's error body: `{"error": {"message", "type", "code", "param"}}`.
pub fn openai_error(body: &[u8]) -> Option<ErrorParts> {
    let error = serde_json::from_slice::<Envelope>(body).ok()?.error;
    Some(ErrorParts {
        message: error.message,
        kind: error.kind,
        code: error.code,
        param: error.param,
        retry_after: None,
    })
}

/// The OpenAI error `type` for an HTTP status, when the provider gives none we can use.
pub fn kind_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        _ => "api_error",
    }
}

/// An error status from `provider`: its own message, type, code and param when `parse`
/// understands the body, a plain description otherwise; the retry delay from the headers,
/// else from the body. A 401 means the provider rejected
/// the gateway's own credentials, and its message may quote part of that key, so the
/// message is replaced.
pub fn from_status(
    provider: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    parse: ErrorParser,
) -> GatewayError {
    let parsed = parse(body);
    let body_retry_after = parsed.as_ref().and_then(|error| error.retry_after);
    let (message, kind, code, param) = match parsed {
        Some(error) if status != StatusCode::UNAUTHORIZED => {
            let message = error
                .message
                .unwrap_or_else(|| format!("the upstream provider returned HTTP {status}"));
            (message, error.kind, error.code, error.param)
        }
        _ if status == StatusCode::UNAUTHORIZED => (
            format!("the upstream provider '{provider}' rejected the gateway's credentials"),
            Some("upstream_authentication_error".to_owned()),
            None,
            None,
        ),
        _ => (
            format!(
                "the upstream provider '{provider}' returned HTTP {}",
                status.as_u16()
            ),
            None,
            None,
            None,
        ),
    };
    GatewayError::Upstream(Box::new(UpstreamStatus {
        provider: provider.to_owned(),
        status,
        message,
        kind,
        code,
        param,
        retry_after: retry_after(headers).or(body_retry_after),
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
