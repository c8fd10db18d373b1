//! The OpenAI-compatible API surface: request and response types, parsed once at the edge.

pub mod chat;
pub mod embeddings;
pub mod models;

pub use crate::usage::Usage;
