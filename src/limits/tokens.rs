//! Counting a request's prompt tokens for reservations: with the model's real tokenizer
//! where it is known (OpenAI's o200k and cl100k encodings, from tiktoken-rs, which ships
//! them), an estimate of four bytes a token otherwise. Only requests subject to a token
//! limit or a budget pay for this.

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

use crate::api::chat::ChatRequest;
use crate::usage::{estimate_prompt_tokens, estimate_tokens};

fn o200k() -> Option<&'static CoreBPE> {
    static ENCODING: OnceLock<Option<CoreBPE>> = OnceLock::new();
    ENCODING
        .get_or_init(|| tiktoken_rs::o200k_base().ok())
        .as_ref()
}

fn cl100k() -> Option<&'static CoreBPE> {
    static ENCODING: OnceLock<Option<CoreBPE>> = OnceLock::new();
    ENCODING
        .get_or_init(|| tiktoken_rs::cl100k_base().ok())
        .as_ref()
}

/// The tokenizer of an upstream model, when Switchyard knows it.
fn encoding(model: &str) -> Option<&'static CoreBPE> {
    const O200K: &[&str] = &[
        "gpt-4o",
        "gpt-4.1",
        "gpt-4.5",
        "gpt-5",
        "o1",
        "o3",
        "o4",
        "chatgpt-4o",
    ];
    const CL100K: &[&str] = &["gpt-4", "gpt-3.5", "text-embedding-3", "text-embedding-ada"];
    if O200K.iter().any(|p| model.starts_with(p)) {
        o200k()
    } else if CL100K.iter().any(|p| model.starts_with(p)) {
        cl100k()
    } else {
        None
    }
}

fn count(text: &str, encoding: Option<&CoreBPE>) -> u64 {
    match encoding {
        Some(bpe) => bpe.encode_ordinary(text).len() as u64,
        None => estimate_tokens(text.len()),
    }
}

/// Prompt tokens of a chat request for `model`: each message's text plus OpenAI's framing
/// (about four tokens a message, three to prime the answer).
pub fn chat_prompt(request: &ChatRequest, model: &str) -> u64 {
    let Some(bpe) = encoding(model) else {
        return estimate_prompt_tokens(request);
    };
    let text: u64 = request
        .messages
        .iter()
        .map(|m| {
            m.content
                .as_ref()
                .map_or(0, |c| count(&c.text(), Some(bpe)))
                + 4
        })
        .sum();
    text + 3
}

/// Tokens of embedding inputs for `model`.
pub fn texts(texts: &[String], model: &str) -> u64 {
    let bpe = encoding(model);
    texts.iter().map(|t| count(t, bpe)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_models_use_their_tokenizer() {
        // "hello world" is two tokens in both encodings; the estimate would say 3.
        assert_eq!(texts(&["hello world".to_owned()], "gpt-4o-mini"), 2);
        assert_eq!(texts(&["hello world".to_owned()], "gpt-4"), 2);
        assert_eq!(texts(&["hello world".to_owned()], "claude-sonnet-4-5"), 3);
    }
}
