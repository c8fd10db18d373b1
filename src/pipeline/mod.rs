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
pub mod resume;
pub mod route;
pub mod step;
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
#[derive(Clone)]
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

    /// Bytes of text in the prompt (or the inputs to embed).
    pub fn text_len(&self) -> usize {
        match self {
            Self::Chat(request) => request
                .messages
                .iter()
                .filter_map(|m| m.content.as_ref())
                .map(|c| c.text_len())
                .sum(),
            Self::Embeddings(request) => request.input.text_len(),
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

/// The pipeline run in process, for unit tests that need the real layers under paused
/// time (no sockets, no wall clock).
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use tower::ServiceExt;

    use super::{Call, GatewayRequest};
    use crate::api::reply::Reply;
    use crate::context::RequestContext;
    use crate::error::GatewayError;
    use crate::record::RequestRecord;
    use crate::report::Endpoint;
    use crate::shared::Shared;
    use crate::snapshot::Snapshot;

    /// Runs one chat request for `model` (`"stream": true` when `stream`) through the
    /// pipeline of the config `yaml`, called by a key the config does not need to define.
    pub async fn chat(yaml: &str, model: &str, stream: bool) -> Result<Reply, GatewayError> {
        let text = format!(
            "{yaml}\nauth:\n  keys:\n    test: {{sha256: {}}}\n",
            "0".repeat(64)
        );
        let raw = crate::config::parse(&text, |_| None).unwrap_or_else(|e| panic!("{e:?}"));
        let shared = Shared::default();
        let snapshot = Arc::new(Snapshot::build(raw, &shared).unwrap_or_else(|e| panic!("{e:?}")));
        let key = snapshot
            .keys
            .by_name("test")
            .cloned()
            .unwrap_or_else(|| panic!("key"));
        let body = serde_json::json!({
            "model": model, "stream": stream,
            "messages": [{"role": "user", "content": "hello there"}],
        });
        let call: crate::api::chat::ChatRequest =
            serde_json::from_value(body).unwrap_or_else(|e| panic!("{e}"));
        let record = RequestRecord::new(
            Arc::from("req_test"),
            Endpoint::ChatCompletions,
            &key,
            shared.metrics.clone(),
            shared.sinks.clone(),
        );
        let ctx = RequestContext {
            record: Arc::new(record),
            snapshot,
            headers: http::HeaderMap::new(),
            key,
            route: None,
        };
        let request = GatewayRequest {
            ctx,
            call: Call::Chat(Arc::new(call)),
        };
        crate::app::pipeline(&shared).oneshot(request).await
    }
}
