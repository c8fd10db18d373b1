//! Sending one request to a provider over HTTP: the part every adapter shares. Builds the
//! request from a pre-built URI and header map, maps transport failures to 502, turns an
//! error status into our error type with the adapter's own error-body parser, and reads
//! bodies (error bodies bounded: they are only read for their message).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::http_client::HttpClient;
use super::upstream_error::{self, ErrorParser};
use crate::config::provider::HttpSettings;
use crate::error::GatewayError;
use crate::headers::REQUEST_ID;

/// Error bodies are read for their message only; a larger one is cut here.
const MAX_ERROR_BODY: usize = 64 * 1024;

pub struct Transport {
    pub name: Arc<str>,
    client: HttpClient,
    /// Credentials and configured extra headers, built once.
    headers: HeaderMap,
    parse_error: ErrorParser,
}

impl Transport {
    pub fn new(
        name: Arc<str>,
        client: HttpClient,
        headers: HeaderMap,
        parse_error: ErrorParser,
    ) -> Self {
        Self {
            name,
            client,
            headers,
            parse_error,
        }
    }

    /// POSTs a JSON body with the request's id and the attempt's trace context; a success
    /// status returns the response, anything else an error.
    pub async fn post(
        &self,
        uri: Uri,
        body: Vec<u8>,
        request_id: &str,
        trace: &HeaderMap,
    ) -> Result<Response<Incoming>, GatewayError> {
        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        *request.headers_mut() = self.headers.clone();
        if let Ok(id) = HeaderValue::from_str(request_id) {
            request.headers_mut().insert(REQUEST_ID, id);
        }
        for (name, value) in trace {
            request.headers_mut().insert(name, value.clone());
        }
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| self.unreachable(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let (parts, body) = response.into_parts();
        let body = read_bounded(body, MAX_ERROR_BODY).await;
        Err(upstream_error::from_status(
            &self.name,
            parts.status,
            &parts.headers,
            &body,
            self.parse_error,
        ))
    }

    /// The whole body of a successful, non-streamed answer.
    pub async fn read_body(&self, response: Response<Incoming>) -> Result<Bytes, GatewayError> {
        let collected = response.into_body().collect().await;
        collected
            .map(|c| c.to_bytes())
            .map_err(|e| self.unreachable(&e))
    }

    fn unreachable(&self, error: &(dyn std::error::Error + 'static)) -> GatewayError {
        GatewayError::UpstreamUnreachable {
            provider: self.name.to_string(),
            detail: error_chain(error),
        }
    }

    /// An answer that is not what the provider's API promises.
    pub fn protocol(&self, detail: impl Into<String>) -> GatewayError {
        GatewayError::UpstreamProtocol {
            provider: self.name.to_string(),
            detail: detail.into(),
        }
    }
}

/// Reads at most `limit` bytes of a body.
async fn read_bounded(mut body: Incoming, limit: usize) -> Vec<u8> {
    let mut read = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        let room = limit - read.len();
        read.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if read.len() >= limit {
            break;
        }
    }
    read
}

/// The error and its causes on one line, for logs (never for clients).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The headers of every request to a provider, built once: `content-type:
/// application/json`, the credential `credential` writes for the provider's key (marked
/// sensitive, so it never shows in debug output; none for an empty key) and the configured
/// extra headers.
pub fn headers(
    http: &HttpSettings,
    credential: impl FnOnce(&str) -> (HeaderName, String),
) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let key = http.api_key.as_ref().filter(|key| !key.is_empty());
    if let Some((name, value)) = key.map(|key| credential(key.expose())) {
        let mut value = HeaderValue::from_str(&value)
            .map_err(|_| "api_key contains characters not allowed in a header".to_owned())?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    for (name, value) in &http.headers {
        // Validation has checked both.
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
        let value = HeaderValue::from_str(value).map_err(|e| e.to_string())?;
        headers.insert(name, value);
    }
    Ok(headers)
}

/// `base` + `/` + `path` as a URI, at config time.
pub fn join(base: &str, path: &str) -> Result<Uri, String> {
    let base = base.trim_end_matches('/');
    format!("{base}/{path}")
        .parse::<Uri>()
        .map_err(|e| format!("invalid base_url {base:?}: {e}"))
}
