//! The `openai` and `azure` adapters: OpenAI itself or any server that speaks its API
//! (vLLM, Ollama, Groq, DeepSeek, Together, LM Studio...), and Azure OpenAI, which speaks
//! it at per-deployment URLs with an `api-key` header.
//!
//! The request goes out as the client sent it, unknown fields included, with three
//! changes: `model` is the target's upstream name, a stream always asks for usage, and the
//! credentials are the provider's from config, never the client's.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue, Uri, header};
use serde::Serialize;

use super::http_client::HttpClient;
use super::stream::{self, Translator, UpstreamStream};
use super::transport::{self, Transport};
use super::upstream_error::openai_error;
use super::{ChatCall, EmbeddingsCall, Provider};
use crate::api::chat::{ChatRequest, StreamOptions};
use crate::api::chunk::Chunk;
use crate::api::embeddings::EmbeddingsRequest;
use crate::api::reply::{JsonReply, Reply};
use crate::config::schema::{ProviderConfig, ProviderKind};
use crate::error::GatewayError;

const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
const DEFAULT_AZURE_API_VERSION: &str = "2024-10-21";

pub fn base_url(config: &ProviderConfig) -> &str {
    config
        .base_url
        .as_deref()
        .unwrap_or(DEFAULT_BASE_URL)
        .trim_end_matches('/')
}

/// Where requests go: fixed URLs, or Azure's URLs per deployment (the upstream model).
enum Endpoints {
    Fixed { chat: Uri, embeddings: Uri },
    Azure { base: String, api_version: String },
}

impl Endpoints {
    fn chat(&self, model: &str) -> Result<Uri, GatewayError> {
        match self {
            Self::Fixed { chat, .. } => Ok(chat.clone()),
            Self::Azure { .. } => self.azure(model, "chat/completions"),
        }
    }

    fn embeddings(&self, model: &str) -> Result<Uri, GatewayError> {
        match self {
            Self::Fixed { embeddings, .. } => Ok(embeddings.clone()),
            Self::Azure { .. } => self.azure(model, "embeddings"),
        }
    }

    fn azure(&self, deployment: &str, operation: &str) -> Result<Uri, GatewayError> {
        let Self::Azure { base, api_version } = self else {
            return Err(GatewayError::Internal("not an Azure endpoint".into()));
        };
        let uri =
            format!("{base}/openai/deployments/{deployment}/{operation}?api-version={api_version}");
        uri.parse().map_err(|_| GatewayError::InvalidParam {
            param: "model".into(),
            message: format!("'{deployment}' is not a valid Azure deployment name"),
        })
    }
}

pub struct OpenAi {
    transport: Transport,
    endpoints: Endpoints,
}

impl OpenAi {
    pub fn new(
        name: Arc<str>,
        config: &ProviderConfig,
        client: HttpClient,
    ) -> Result<Self, String> {
        let base = base_url(config);
        let endpoints = match config.kind {
            ProviderKind::Azure => Endpoints::Azure {
                base: base.to_owned(),
                api_version: config
                    .api_version
                    .clone()
                    .unwrap_or_else(|| DEFAULT_AZURE_API_VERSION.to_owned()),
            },
            _ => Endpoints::Fixed {
                chat: transport::join(base, "chat/completions")?,
                embeddings: transport::join(base, "embeddings")?,
            },
        };
        let headers = outbound_headers(config)?;
        Ok(Self {
            transport: Transport::new(name, client, headers, openai_error),
            endpoints,
        })
    }

    async fn chat_call(&self, call: ChatCall<'_>) -> Result<Reply, GatewayError> {
        let body = chat_body(&call)?;
        let uri = self.endpoints.chat(call.model)?;
        let response = self.transport.post(uri, body, call.request_id).await?;
        if call.request.is_stream() {
            let translator = OpenAiTranslator {
                provider: self.transport.name.clone(),
                done: false,
            };
            let chunks = UpstreamStream::boxed(response.into_body(), translator);
            return Ok(Reply::Stream(chunks));
        }
        let body = self.transport.read_body(response).await?;
        JsonReply::from_openai(body, &self.transport.name).map(Reply::Json)
    }

    async fn embeddings_call(&self, call: EmbeddingsCall<'_>) -> Result<JsonReply, GatewayError> {
        let outbound = OutboundEmbeddings {
            model: call.model,
            request: call.request,
        };
        let body = serde_json::to_vec(&outbound)
            .map_err(|e| GatewayError::Internal(format!("encoding the request: {e}")))?;
        let uri = self.endpoints.embeddings(call.model)?;
        let response = self.transport.post(uri, body, call.request_id).await?;
        let body = self.transport.read_body(response).await?;
        JsonReply::from_openai(body, &self.transport.name)
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

/// Credentials (`Authorization: Bearer`, or Azure's `api-key`) and configured headers.
fn outbound_headers(config: &ProviderConfig) -> Result<HeaderMap, String> {
    let key = config.api_key.as_deref().filter(|k| !k.is_empty());
    let credential = key.map(|key| match config.kind {
        ProviderKind::Azure => (HeaderName::from_static("api-key"), key.to_owned()),
        _ => (header::AUTHORIZATION, format!("Bearer {key}")),
    });
    json_headers(credential, &config.headers)
}

/// `content-type: application/json`, the credential header (marked sensitive, so it never
/// shows in debug output) and the configured extra headers.
pub fn json_headers(
    credential: Option<(HeaderName, String)>,
    extra: &indexmap::IndexMap<String, String>,
) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some((name, value)) = credential {
        let mut value = HeaderValue::from_str(&value)
            .map_err(|_| "api_key contains characters not allowed in a header".to_owned())?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    for (name, value) in extra {
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

/// OpenAI's stream: every event is a chunk already; `data: [DONE]` ends it.
struct OpenAiTranslator {
    provider: Arc<str>,
    done: bool,
}

impl Translator for OpenAiTranslator {
    fn event(&mut self, data: String, out: &mut VecDeque<Chunk>) -> Result<(), GatewayError> {
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        out.push_back(Chunk::from_openai(Bytes::from(data), &self.provider)?);
        Ok(())
    }

    fn complete(&self) -> bool {
        self.done
    }

    fn terminal_event(&self) -> &'static str {
        "data: [DONE]"
    }

    fn protocol(&self, detail: String) -> GatewayError {
        stream::protocol(&self.provider, detail)
    }
}
