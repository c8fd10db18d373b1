//! The OpenAI wire types: requests as parsed once at the edge, the answers and chunks
//! providers produce, and the facts read from them.
//!
//! Invariant: this module sits below everything else of the gateway: it imports only the
//! error type and usage, never the pipeline, providers or request bookkeeping. Providers
//! depend on it; it depends on none of them.

pub mod chat;
pub mod chunk;
pub mod embeddings;
pub mod error_object;
pub mod models;
pub mod reply;

pub use crate::usage::Usage;
