//! `POST /v1/embeddings`: the request as parsed at the edge and the response shape the mock
//! (and non-OpenAI adapters) build.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Usage;

/// An embeddings request. `model` is rewritten per attempt, so it is not serialized with
/// the rest (see `providers::openai::OutboundEmbeddings`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct EmbeddingsRequest {
    #[serde(skip_serializing)]
    pub model: String,
    pub input: EmbeddingInput,
    /// `float` or `base64`; the OpenAI SDKs ask for base64 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<EncodingFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EncodingFormat {
    Float,
    Base64,
}

/// The four shapes OpenAI accepts for `input`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenBatches(Vec<Vec<u32>>),
}

impl EmbeddingInput {
    /// Bytes of text to embed (token arrays count a few bytes a token).
    pub fn text_len(&self) -> usize {
        match self {
            Self::Text(text) => text.len(),
            Self::Texts(texts) => texts.iter().map(String::len).sum(),
            Self::Tokens(tokens) => tokens.len() * 4,
            Self::TokenBatches(batches) => batches.iter().map(|b| b.len() * 4).sum(),
        }
    }

    /// Each input as text (token arrays are rendered as their numbers).
    pub fn texts(&self) -> Vec<String> {
        let tokens = |t: &[u32]| t.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
        match self {
            Self::Text(text) => vec![text.clone()],
            Self::Texts(texts) => texts.clone(),
            Self::Tokens(t) => vec![tokens(t)],
            Self::TokenBatches(batches) => batches.iter().map(|t| tokens(t)).collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct EmbeddingsResponse<'a> {
    pub object: &'static str,
    pub data: Vec<Embedding>,
    pub model: &'a str,
    pub usage: Usage,
}

#[derive(Debug, Serialize)]
pub struct Embedding {
    pub object: &'static str,
    pub index: usize,
    pub embedding: EmbeddingVector,
}

/// A vector as JSON floats, or as base64 of its little-endian f32 bytes.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}
