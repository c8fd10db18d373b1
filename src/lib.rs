//! Switchyard: an OpenAI-compatible LLM gateway. See `ARCHITECTURE.md` for the map.
//!
//! The library is what the binary, the tests and the benchmarks build the gateway from.
//! Modules are crate-private unless a test or the binary uses them, so the compiler
//! reports what nothing uses.

pub(crate) mod access_log;
pub(crate) mod admin;
pub(crate) mod api;
pub(crate) mod app;
pub mod auth;
pub(crate) mod clock;
pub mod config;
pub(crate) mod context;
pub(crate) mod error;
pub(crate) mod feedback;
pub(crate) mod gateway;
pub(crate) mod headers;
pub(crate) mod health;
pub(crate) mod health_checks;
pub(crate) mod http;
pub mod key_store;
pub(crate) mod limits;
pub(crate) mod metrics;
pub(crate) mod pipeline;
pub(crate) mod pricing;
pub(crate) mod providers;
pub(crate) mod record;
pub(crate) mod reload;
pub(crate) mod report;
pub(crate) mod server;
pub(crate) mod shared;
pub(crate) mod shared_store;
pub(crate) mod snapshot;
pub(crate) mod sse;
pub mod telemetry;
pub(crate) mod usage;

pub use gateway::{Gateway, GatewayOptions, StartError, check_config, shutdown_signal};

/// What the benchmarks in `benches/` measure, for them alone: not an API.
#[doc(hidden)]
pub mod bench {
    pub use crate::api::chunk::Chunk;
    pub use crate::api::reply::{ChunkStream, JsonReply};
    pub use crate::context::RequestContext;
    pub use crate::health::breaker::Pass;
    pub use crate::http::parse;
    pub use crate::http::relay::SseRelay;
    pub use crate::limits::tokens::Tokenizer;
    pub use crate::limits::{Check, Limiter, Period, Plan, Used};
    pub use crate::metrics::Metrics;
    pub use crate::pipeline::watchers::Metered;
    pub use crate::pipeline::{Call, balance};
    pub use crate::providers::ChatCall;
    pub use crate::providers::anthropic::stream::StreamTranslator;
    pub use crate::providers::openai::chat_body;
    pub use crate::record::RequestRecord;
    pub use crate::report::{Endpoint, Sinks};
    pub use crate::shared::Shared;
    pub use crate::snapshot::Snapshot;
}
