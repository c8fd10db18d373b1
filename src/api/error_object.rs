//! The error object OpenAI and the servers that copy its API send, in error bodies and as
//! an event in place of a chunk.

use serde::{Deserialize, Deserializer};

use crate::error::GatewayError;

/// The error object OpenAI-compatible servers send, in bodies and in streams.
#[derive(Debug, Deserialize)]
pub struct UpstreamErrorObject {
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default, deserialize_with = "string_or_number")]
    pub code: Option<String>,
    #[serde(default)]
    pub param: Option<String>,
}

impl UpstreamErrorObject {
    /// An error event inside a 200 stream: the provider failed mid-answer.
    pub fn into_stream_error(self, provider: &str) -> GatewayError {
        GatewayError::UpstreamProtocol {
            provider: provider.to_owned(),
            detail: format!(
                "error event in stream: {}",
                self.message.as_deref().unwrap_or("no message")
            ),
        }
    }
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}
