//! The gateway pipeline: a tower stack over typed requests. The edge (`http/`) parses the
//! HTTP request once into a [`GatewayRequest`]; each layer reads and writes the request
//! context; the innermost service calls a provider. `app.rs` assembles the stack and shows
//! its order.
//!
//! Invariant: layers never import each other; they meet through `RequestContext`,
//! `GatewayError` and the reply types.

pub mod access;
pub mod balance;
pub mod dispatch;
pub mod limits;
pub mod resilience;
pub mod route;
pub mod watchers;

use std::sync::Arc;

use tower::util::BoxCloneSyncService;

use crate::api::chat::ChatRequest;
use crate::api::embeddings::EmbeddingsRequest;
use crate::api::reply::Reply;
use crate::context::RequestContext;
use crate::error::GatewayError;

pub struct GatewayRequest {
    pub ctx: RequestContext,
    pub call: Call,
}

/// What the client asked for, parsed. Shared (`Arc`) so attempts and streams can hold it.
pub enum Call {
    Chat(Arc<ChatRequest>),
    Embeddings(Arc<EmbeddingsRequest>),
}

impl Call {
    /// The public model name the client sent.
    pub fn model(&self) -> &str {
        match self {
            Self::Chat(request) => &request.model,
            Self::Embeddings(request) => &request.model,
        }
    }

    /// The end user the client named in the request's `user` field.
    pub fn user(&self) -> Option<&str> {
        match self {
            Self::Chat(request) => request.user.as_deref(),
            Self::Embeddings(request) => request.user.as_deref(),
        }
    }
}

/// The assembled pipeline, as the edge holds it.
pub type Pipeline = BoxCloneSyncService<GatewayRequest, Reply, GatewayError>;
