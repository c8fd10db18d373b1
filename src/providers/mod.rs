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
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::api::chat::ChatRequest;
use crate::api::embeddings::EmbeddingsRequest;
use crate::api::reply::{JsonReply, Reply, SkippedEvents};
use crate::config::provider::ProviderSettings;
use crate::config::schema::OnMalformedEvent;
use crate::error::GatewayError;
use http_client::HttpClients;

/// One chat completion attempt against one target.
pub struct ChatCall<'a> {
    pub request: &'a ChatRequest,
    /// The target's upstream model name (replaces the public name the client sent).
    pub model: &'a str,
    pub request_id: &'a str,
    /// The target's completion budget for requests that set none (providers that require
    /// one use it before their own default).
    pub max_tokens: Option<u64>,
    /// Where a stream counts the malformed events it skips.
    pub skipped: &'a Arc<SkippedEvents>,
    /// Headers carrying the attempt's trace context (`traceparent`); empty when off.
    pub trace: &'a http::HeaderMap,
}

impl ChatCall<'_> {
    /// What this call's stream does with malformed events under `policy`.
    fn malformed(&self, policy: OnMalformedEvent) -> stream::Malformed {
        stream::Malformed {
            policy,
            skipped: self.skipped.clone(),
        }
    }
}

/// One embeddings attempt against one target.
pub struct EmbeddingsCall<'a> {
    pub request: &'a EmbeddingsRequest,
    pub model: &'a str,
    pub request_id: &'a str,
    /// Headers carrying the attempt's trace context (`traceparent`); empty when off.
    pub trace: &'a http::HeaderMap,
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

/// Builds the adapter for one configured provider; its HTTP client connects within
/// `connect`.
pub fn build(
    name: &Arc<str>,
    settings: &ProviderSettings,
    connect: Duration,
    clients: &HttpClients,
) -> Result<Arc<dyn Provider>, String> {
    let name = name.clone();
    Ok(match settings {
        ProviderSettings::Mock(mock) => Arc::new(mock::Mock::new(name, mock.clone())),
        ProviderSettings::Openai(http) => Arc::new(openai::OpenAi::compatible(
            name,
            http,
            clients.get(connect)?,
        )?),
        ProviderSettings::Azure(azure) => {
            Arc::new(openai::OpenAi::azure(name, azure, clients.get(connect)?)?)
        }
        ProviderSettings::Anthropic(anthropic) => Arc::new(anthropic::Anthropic::new(
            name,
            anthropic,
            clients.get(connect)?,
        )?),
        ProviderSettings::Gemini(gemini) => {
            Arc::new(gemini::Gemini::new(name, gemini, clients.get(connect)?)?)
        }
    })
}

/// Where a provider sends requests, for humans (`check-config`).
pub fn base_url(settings: &ProviderSettings) -> Option<String> {
    let url = match settings {
        ProviderSettings::Openai(http) => openai::base_url(http),
        ProviderSettings::Azure(azure) => openai::base_url(&azure.http),
        ProviderSettings::Anthropic(anthropic) => anthropic::base_url(&anthropic.http),
        ProviderSettings::Gemini(gemini) => gemini::base_url(&gemini.http),
        ProviderSettings::Mock(_) => return None,
    };
    Some(url.to_owned())
}
