//! The OpenAI-compatible API surface: request and response types, parsed once at the edge.

pub mod chat;
pub mod embeddings;
pub mod models;

pub use crate::usage::Usage;

/// Seconds since the Unix epoch, for `created` fields.
pub fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
