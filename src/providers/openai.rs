//! The `openai` and `azure` adapters: OpenAI itself or any server that speaks its API
//! (vLLM, Ollama, Groq, DeepSeek, Together, LM Studio...), and Azure OpenAI, which speaks
//! it at per-deployment URLs with an `api-key` header.
//!
//! The request goes out as the client sent it, unknown fields included, with three
//! changes: `model` is the target's upstream name, a stream always asks for usage, and the
//! credentials are the provider's from config, never the client's.

use std::borrow::Cow;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderName, Uri, header};
use serde::Serialize;

use super::http_client::HttpClient;
use super::stream::{self, EventError, Translator, UpstreamStream};
use super::transport::{self, Transport};
use super::upstream_error::openai_error;
use super::{ChatCall, EmbeddingsCall, Provider};
use crate::api::chat::{ChatRequest, StreamOptions};
use crate::api::chunk::{Chunk, NotAChunk};
use crate::api::embeddings::EmbeddingsRequest;
use crate::api::reply::{JsonReply, Reply};
use crate::config::provider::{AzureSettings, HttpSettings};
use crate::config::schema::OnMalformedEvent;
use crate::error::GatewayError;

const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
const DEFAULT_AZURE_API_VERSION: &str = "2024-10-21";

pub fn base_url(http: &HttpSettings) -> &str {
    http.base_url
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
    on_malformed_event: OnMalformedEvent,
}

impl OpenAi {
    /// OpenAI, or any server that speaks its API: `Authorization: Bearer <key>`.
    pub fn compatible(
        name: Arc<str>,
        http: &HttpSettings,
        client: HttpClient,
    ) -> Result<Self, String> {
        let base = base_url(http);
        let endpoints = Endpoints::Fixed {
            chat: transport::join(base, "chat/completions")?,
            embeddings: transport::join(base, "embeddings")?,
        };
        let headers =
            transport::headers(http, |key| (header::AUTHORIZATION, format!("Bearer {key}")))?;
        Ok(Self::with(name, endpoints, headers, client, http))
    }

    /// Azure OpenAI: URLs per deployment, the key in `api-key`.
    pub fn azure(
        name: Arc<str>,
        azure: &AzureSettings,
        client: HttpClient,
    ) -> Result<Self, String> {
        let endpoints = Endpoints::Azure {
            base: base_url(&azure.http).to_owned(),
            api_version: azure
                .api_version
                .clone()
                .unwrap_or_else(|| DEFAULT_AZURE_API_VERSION.to_owned()),
        };
        let headers = transport::headers(&azure.http, |key| {
            (HeaderName::from_static("api-key"), key.to_owned())
        })?;
        Ok(Self::with(name, endpoints, headers, client, &azure.http))
    }

    fn with(
        name: Arc<str>,
        endpoints: Endpoints,
        headers: HeaderMap,
        client: HttpClient,
        http: &HttpSettings,
    ) -> Self {
        Self {
            transport: Transport::new(name, client, headers, openai_error),
            endpoints,
            on_malformed_event: http.on_malformed_event,
        }
    }

    async fn chat_call(&self, call: ChatCall<'_>) -> Result<Reply, GatewayError> {
        let body = chat_body(&call)?;
        let uri = self.endpoints.chat(call.model)?;
        let response = self
            .transport
            .post(uri, body, call.request_id, call.trace)
            .await?;
        if call.request.is_stream() {
            let translator = OpenAiTranslator {
                provider: self.transport.name.clone(),
                done: false,
                choices: BTreeSet::new(),
                finished: BTreeSet::new(),
            };
            let malformed = call.malformed(self.on_malformed_event);
            let chunks = UpstreamStream::boxed(response.into_body(), translator, malformed);
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
        let response = self
            .transport
            .post(uri, body, call.request_id, call.trace)
            .await?;
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
    /// The choices seen, and those that got their finish reason.
    choices: BTreeSet<u32>,
    finished: BTreeSet<u32>,
}

impl Translator for OpenAiTranslator {
    fn event(&mut self, data: String, out: &mut VecDeque<Chunk>) -> Result<(), EventError> {
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        match Chunk::read_openai(Bytes::from(data), &self.provider) {
            Ok(chunk) => {
                if let Some(choice) = chunk.choice() {
                    self.choices.insert(choice);
                    if chunk.finish_reason().is_some() {
                        self.finished.insert(choice);
                    }
                }
                out.push_back(chunk);
            }
            Err(NotAChunk::Malformed(detail)) => return Err(EventError::Malformed(detail)),
            Err(NotAChunk::Error(error)) => return Err(error.into()),
        }
        Ok(())
    }

    fn complete(&self) -> bool {
        self.done
    }

    fn finished_without_terminal(&mut self, _: &mut VecDeque<Chunk>) -> bool {
        !self.choices.is_empty() && self.choices.is_subset(&self.finished)
    }

    fn terminal_event(&self) -> &'static str {
        "data: [DONE]"
    }

    fn protocol(&self, detail: String) -> GatewayError {
        stream::protocol(&self.provider, detail)
    }
}
