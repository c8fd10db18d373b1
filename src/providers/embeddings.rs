//! The OpenAI embeddings answer for adapters that build it themselves (the mock, and
//! Gemini's translation): one vector per input text, floats or base64 as the client asked,
//! usage from the texts' estimated tokens.

use base64::Engine;

use crate::api::chunk::to_json;
use crate::api::embeddings::{
    Embedding, EmbeddingVector, EmbeddingsRequest, EmbeddingsResponse, EncodingFormat,
};
use crate::api::reply::{AnswerFacts, JsonReply};
use crate::usage::{Usage, UsageSource, estimate_tokens};

/// `vectors[i]` embeds `texts[i]` of `request`; `source` says whether the usage is what the
/// provider would bill (`Provider`) or a guess (`Estimated`).
pub fn reply(
    request: &EmbeddingsRequest,
    model: &str,
    texts: &[String],
    vectors: Vec<Vec<f32>>,
    source: UsageSource,
) -> JsonReply {
    let base64 = request.encoding_format == Some(EncodingFormat::Base64);
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| Embedding {
            object: "embedding",
            index,
            embedding: encode(vector, base64),
        })
        .collect();
    let prompt = texts.iter().map(|t| estimate_tokens(t.len())).sum();
    let usage = Usage::new(prompt, 0, source);
    let response = EmbeddingsResponse {
        object: "list",
        data,
        model,
        usage,
    };
    let facts = AnswerFacts {
        usage: Some(usage),
        model: Some(model.to_owned()),
        ..AnswerFacts::default()
    };
    JsonReply::new(to_json(&response), facts)
}

/// Floats, or OpenAI's base64: the little-endian bytes of the f32s.
fn encode(vector: Vec<f32>, base64: bool) -> EmbeddingVector {
    if !base64 {
        return EmbeddingVector::Float(vector);
    }
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
}
