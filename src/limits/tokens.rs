//! Counting a request's prompt tokens for reservations: with the model's real tokenizer
//! where it is known (OpenAI's o200k and cl100k encodings, from tiktoken-rs, which ships
//! them), an estimate of four bytes a token otherwise. Only requests subject to a token
//! limit or a budget pay for this. Each target's [`Tokenizer`] is picked, and its encoding
//! built, when the config is loaded.

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

/// A target's tokenizer, chosen (and its encoding built) when the config is loaded, never
/// by a request: building an encoding takes tens of milliseconds.
#[derive(Clone, Copy, Default)]
pub struct Tokenizer(Option<&'static CoreBPE>);

impl Tokenizer {
    /// The tokenizer of the upstream model `model`: its real one when Switchyard knows it,
    /// an estimate of four bytes a token otherwise.
    pub fn for_model(model: &str) -> Self {
        Self(encoding(model))
    }

    fn count(self, text: &str) -> u64 {
        match self.0 {
            Some(bpe) => bpe.encode_ordinary(text).len() as u64,
            None => estimate_tokens(text.len()),
        }
    }

    /// Prompt tokens of a chat request: each message's text plus OpenAI's framing (about
    /// four tokens a message, three to prime the answer).
    pub fn chat_prompt(self, request: &ChatRequest) -> u64 {
        if self.0.is_none() {
            return estimate_prompt_tokens(request);
        }
        let text: u64 = request
            .messages
            .iter()
            .map(|m| m.content.as_ref().map_or(0, |c| self.count(&c.text())) + 4)
            .sum();
        text + 3
    }

    /// Tokens of embedding inputs.
    pub fn texts(self, texts: &[String]) -> u64 {
        texts.iter().map(|t| self.count(t)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_models_use_their_tokenizer() {
        // "hello world" is two tokens in both encodings; the estimate would say 3.
        let texts = |model| Tokenizer::for_model(model).texts(&["hello world".to_owned()]);
        assert_eq!(texts("gpt-4o-mini"), 2);
        assert_eq!(texts("gpt-4"), 2);
        assert_eq!(texts("claude-sonnet-4-5"), 3);
    }
}
