//! The `openai` adapter: OpenAI itself or any server that speaks its API (vLLM, Ollama,
//! Groq, DeepSeek, Together, LM Studio...).
//!
//! The request goes out as the client sent it, unknown fields included, with three
//! changes: `model` is the target's upstream name, a stream always asks for usage, and the
//! credentials are the provider's from config, never the client's.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, Stream, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde::Serialize;

use super::http_client::HttpClient;
use super::{ChatCall, EmbeddingsCall, Provider};
use crate::api::chat::{ChatRequest, StreamOptions};
use crate::api::embeddings::EmbeddingsRequest;
use crate::config::schema::ProviderConfig;
use crate::error::GatewayError;
use crate::headers::REQUEST_ID;
use crate::sse;
use crate::stream::{Chunk, JsonReply, Reply, probe_completion};

const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
/// Error bodies are read for their message only; a larger one is cut here.
const MAX_ERROR_BODY: usize = 64 * 1024;

pub fn base_url(config: &ProviderConfig) -> &str {
    config
        .base_url
        .as_deref()
        .unwrap_or(DEFAULT_BASE_URL)
        .trim_end_matches('/')
}

pub struct OpenAi {
    name: Arc<str>,
    chat_uri: Uri,
    embeddings_uri: Uri,
    /// Credentials and configured extra headers, built once.
    headers: HeaderMap,
    client: HttpClient,
}

impl OpenAi {
    pub fn new(
        name: Arc<str>,
        config: &ProviderConfig,
        client: HttpClient,
    ) -> Result<Self, String> {
        let base = base_url(config);
        let uri = |path: &str| {
            format!("{base}/{path}")
                .parse::<Uri>()
                .map_err(|e| format!("invalid base_url {base:?}: {e}"))
        };
        Ok(Self {
            name,
            chat_uri: uri("chat/completions")?,
            embeddings_uri: uri("embeddings")?,
            headers: outbound_headers(config)?,
            client,
        })
    }

    async fn post(
        &self,
        uri: &Uri,
        body: Vec<u8>,
        request_id: &str,
    ) -> Result<http::Response<Incoming>, GatewayError> {
        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri.clone();
        *request.headers_mut() = self.headers.clone();
        if let Ok(id) = HeaderValue::from_str(request_id) {
            request.headers_mut().insert(REQUEST_ID, id);
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
        Err(super::upstream_error(
            &self.name,
            parts.status,
            &parts.headers,
            &body,
        ))
    }

    fn unreachable(&self, error: &(dyn std::error::Error + 'static)) -> GatewayError {
        GatewayError::UpstreamUnreachable {
            provider: self.name.to_string(),
            detail: error_chain(error),
        }
    }

    /// The whole body of a successful, non-streamed answer.
    async fn read_body(&self, response: http::Response<Incoming>) -> Result<Bytes, GatewayError> {
        let collected = response.into_body().collect().await;
        collected
            .map(|c| c.to_bytes())
            .map_err(|e| self.unreachable(&e))
    }

    async fn chat_call(&self, call: ChatCall<'_>) -> Result<Reply, GatewayError> {
        let body = chat_body(&call)?;
        let response = self.post(&self.chat_uri, body, call.request_id).await?;
        if call.request.is_stream() {
            return Ok(Reply::Stream(Box::pin(OpenAiStream::new(
                self.name.clone(),
                response.into_body(),
            ))));
        }
        let body = self.read_body(response).await?;
        let (usage, content_len) = probe_completion(&body, &self.name)?;
        Ok(Reply::Json(JsonReply {
            body,
            usage,
            content_len,
        }))
    }

    async fn embeddings_call(&self, call: EmbeddingsCall<'_>) -> Result<JsonReply, GatewayError> {
        let outbound = OutboundEmbeddings {
            model: call.model,
            request: call.request,
        };
        let body = serde_json::to_vec(&outbound)
            .map_err(|e| GatewayError::Internal(format!("encoding the request: {e}")))?;
        let response = self
            .post(&self.embeddings_uri, body, call.request_id)
            .await?;
        let body = self.read_body(response).await?;
        let (usage, _) = probe_completion(&body, &self.name)?;
        Ok(JsonReply {
            body,
            usage,
            content_len: 0,
        })
    }
}

impl Provider for OpenAi {
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

fn outbound_headers(config: &ProviderConfig) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(key) = config.api_key.as_deref().filter(|k| !k.is_empty()) {
        let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
            .map_err(|_| "api_key contains characters not allowed in a header".to_owned())?;
        value.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, value);
    }
    for (name, value) in &config.headers {
        // Validation has checked both.
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
        let value = HeaderValue::from_str(value).map_err(|e| e.to_string())?;
        headers.insert(name, value);
    }
    Ok(headers)
}

/// The JSON body sent upstream for a chat call.
pub fn chat_body(call: &ChatCall<'_>) -> Result<Vec<u8>, GatewayError> {
    serde_json::to_vec(&OutboundChat::new(call))
        .map_err(|e| GatewayError::Internal(format!("encoding the request: {e}")))
}

/// The chat request as sent upstream: the client's body with the routing fields set.
#[derive(Serialize)]
struct OutboundChat<'a> {
    model: &'a str,
    #[serde(flatten)]
    request: &'a ChatRequest,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<Cow<'a, StreamOptions>>,
}

impl<'a> OutboundChat<'a> {
    fn new(call: &ChatCall<'a>) -> Self {
        let request = call.request;
        let stream_options = if request.is_stream() {
            // The gateway always needs usage; the edge hides it if the client did not ask.
            let extra = request.stream_options.as_ref().map(|o| o.extra.clone());
            Some(Cow::Owned(StreamOptions {
                include_usage: Some(true),
                extra: extra.unwrap_or_default(),
            }))
        } else {
            request.stream_options.as_ref().map(Cow::Borrowed)
        };
        Self {
            model: call.model,
            request,
            stream: request.stream,
            stream_options,
        }
    }
}

#[derive(Serialize)]
struct OutboundEmbeddings<'a> {
    model: &'a str,
    #[serde(flatten)]
    request: &'a EmbeddingsRequest,
}

/// Reads at most `limit` bytes of a body; used for error bodies, which are only read for
/// their message.
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
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Decodes an OpenAI SSE stream into chunks. It ends cleanly only on `data: [DONE]`; a
/// stream that stops before it ends with an error, so a cut answer is never mistaken for a
/// complete one.
struct OpenAiStream {
    provider: Arc<str>,
    events: sse::Decoder<Incoming>,
    finished: bool,
}

impl OpenAiStream {
    fn new(provider: Arc<str>, body: Incoming) -> Self {
        Self {
            provider,
            events: sse::Decoder::new(body),
            finished: false,
        }
    }

    fn protocol(&mut self, detail: String) -> Option<Result<Chunk, GatewayError>> {
        self.finished = true;
        Some(Err(GatewayError::UpstreamProtocol {
            provider: self.provider.to_string(),
            detail,
        }))
    }
}

impl Stream for OpenAiStream {
    type Item = Result<Chunk, GatewayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.finished {
                return Poll::Ready(None);
            }
            let item = match ready!(self.events.poll_next_unpin(cx)) {
                Some(Ok(sse::Event {
                    data: Some(data), ..
                })) if data == "[DONE]" => {
                    self.finished = true;
                    None
                }
                Some(Ok(sse::Event { data: None, .. })) => continue,
                Some(Ok(sse::Event {
                    data: Some(data), ..
                })) if data.is_empty() => continue,
                Some(Ok(sse::Event {
                    data: Some(data), ..
                })) => {
                    let chunk = Chunk::from_openai(Bytes::from(data), &self.provider);
                    self.finished = chunk.is_err();
                    Some(chunk)
                }
                Some(Err(e)) => self.protocol(format!("the stream broke: {}", error_chain(&e))),
                None => self.protocol("the stream ended before data: [DONE]".to_owned()),
            };
            return Poll::Ready(item);
        }
    }
}
