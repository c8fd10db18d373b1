//! Providers: one trait, one adapter per wire format, one registry keyed by configured name
//! (the snapshot's provider map).
//!
//! Invariant: an adapter translates between the OpenAI shape and its provider's native
//! shape and nothing else. It does not retry, log, time out or pick targets; those are the
//! pipeline's jobs. Providers never import pipeline layers.

pub mod anthropic;
mod embeddings;
pub mod gemini;
pub mod http_client;
mod mock;
pub mod openai;
mod stream;
mod translate;
mod transport;
mod upstream_error;

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::api::chat::ChatRequest;
use crate::api::embeddings::EmbeddingsRequest;
use crate::api::reply::{JsonReply, Reply};
use crate::config::schema::{ProviderConfig, ProviderKind};
use crate::error::GatewayError;
use http_client::HttpClients;

/// An error status from the built-in mock, read as OpenAI's error body.
pub fn mock_error(provider: &str, status: http::StatusCode, body: &[u8]) -> GatewayError {
    upstream_error::from_status(
        provider,
        status,
        &http::HeaderMap::new(),
        body,
        upstream_error::openai_error,
    )
}

/// One chat completion attempt against one target.
pub struct ChatCall<'a> {
    pub request: &'a ChatRequest,
    /// The target's upstream model name (replaces the public name the client sent).
    pub model: &'a str,
    pub request_id: &'a str,
    /// The target's completion budget for requests that set none (providers that require
    /// one use it before their own default).
    pub max_tokens: Option<u64>,
}

/// One embeddings attempt against one target.
pub struct EmbeddingsCall<'a> {
    pub request: &'a EmbeddingsRequest,
    pub model: &'a str,
    pub request_id: &'a str,
}

/// An upstream that can serve OpenAI-shaped calls. Object-safe: the registry holds
/// `Arc<dyn Provider>`.
pub trait Provider: Send + Sync {
    /// A chat completion. When `call.request` streams, the reply is a stream whose usage
    /// chunk is always present when the provider can report usage (the edge hides it from
    /// clients that did not ask), and which ends with an error, never silently, when the
    /// provider stops before its terminal event.
    fn chat<'a>(&'a self, call: ChatCall<'a>) -> BoxFuture<'a, Result<Reply, GatewayError>>;

    fn embeddings<'a>(
        &'a self,
        call: EmbeddingsCall<'a>,
    ) -> BoxFuture<'a, Result<JsonReply, GatewayError>>;
}

/// Builds the adapter for one configured provider.
pub fn build(
    name: &Arc<str>,
    config: &ProviderConfig,
    clients: &HttpClients,
) -> Result<Arc<dyn Provider>, String> {
    if config.kind == ProviderKind::Mock {
        let mock = config.mock.clone().unwrap_or_default();
        return Ok(Arc::new(mock::Mock::new(name.clone(), mock)));
    }
    let client = clients.get(config.timeouts.connect)?;
    let name = name.clone();
    Ok(match config.kind {
        ProviderKind::Openai | ProviderKind::Azure => {
            Arc::new(openai::OpenAi::new(name, config, client)?)
        }
        ProviderKind::Anthropic => Arc::new(anthropic::Anthropic::new(name, config, client)?),
        ProviderKind::Gemini => Arc::new(gemini::Gemini::new(name, config, client)?),
        ProviderKind::Mock => unreachable!(),
    })
}

/// Where a provider sends requests, for humans (`check-config`).
pub fn base_url(config: &ProviderConfig) -> Option<String> {
    match config.kind {
        ProviderKind::Openai | ProviderKind::Azure => Some(openai::base_url(config).to_owned()),
        ProviderKind::Anthropic => Some(anthropic::base_url(config).to_owned()),
        ProviderKind::Gemini => Some(gemini::base_url(config).to_owned()),
        ProviderKind::Mock => None,
    }
}
