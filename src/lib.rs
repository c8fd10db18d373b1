//! Switchyard: an OpenAI-compatible LLM gateway. See `ARCHITECTURE.md` for the map.

pub mod access_log;
pub mod admin;
pub mod api;
pub mod app;
pub mod auth;
pub mod clock;
pub mod config;
pub mod context;
pub mod error;
pub mod gateway;
pub mod headers;
pub mod health;
pub mod health_checks;
pub mod http;
pub mod key_store;
pub mod limits;
pub mod metrics;
pub mod pipeline;
pub mod pricing;
pub mod providers;
pub mod record;
pub mod reload;
pub mod report;
pub mod server;
pub mod shared;
pub mod shared_store;
pub mod snapshot;
pub mod sse;
pub mod telemetry;
pub mod usage;

pub use gateway::{Gateway, GatewayOptions, StartError};
