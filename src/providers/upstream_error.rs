//! Turning an upstream's error answer (status, headers, body) into our error type.

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use crate::error::{GatewayError, UpstreamStatus};
use crate::stream::UpstreamErrorObject;

#[derive(Deserialize)]
struct Envelope {
    error: UpstreamErrorObject,
}

/// An error status from `provider`: its own message, type, code and param when the body is
/// OpenAI-shaped, a plain description otherwise. A 401 means the provider rejected the
/// gateway's own credentials, and its message may quote part of that key, so the message
/// is replaced.
pub fn from_status(
    provider: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> GatewayError {
    let parsed = serde_json::from_slice::<Envelope>(body)
        .ok()
        .map(|e| e.error);
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
        retry_after: retry_after(headers),
    }))
}

/// `retry-after-ms` (OpenAI's, milliseconds) or `retry-after` (seconds).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &str| -> Option<f64> {
        let value = headers
            .get(name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()?;
        (value.is_finite() && value >= 0.0).then_some(value)
    };
    number("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .or_else(|| number("retry-after").map(Duration::from_secs_f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shaped_errors_keep_their_fields() {
        let body = br#"{"error":{"message":"This model's maximum context length is 8192 tokens","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        let err = from_status("openai", StatusCode::BAD_REQUEST, &HeaderMap::new(), body);
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
        let err = from_status("openai", StatusCode::UNAUTHORIZED, &HeaderMap::new(), body);
        assert!(!err.to_string().contains("sk-abc"));
    }

    #[test]
    fn retry_after_headers_are_read() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "2".parse().unwrap());
        let err = from_status("p", StatusCode::TOO_MANY_REQUESTS, &headers, b"not json");
        assert_eq!(err.retry_after(), Some(Duration::from_secs(2)));
        headers.insert("retry-after-ms", "1500".parse().unwrap());
        let err = from_status("p", StatusCode::TOO_MANY_REQUESTS, &headers, b"");
        assert_eq!(err.retry_after(), Some(Duration::from_millis(1500)));
    }
}
