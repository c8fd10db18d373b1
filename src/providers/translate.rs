//! Helpers for adapters that translate OpenAI requests into another API (anthropic,
//! gemini): the unsupported-parameter policy and the small conversions they share.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::api::chat::{ChatRequest, MessageContent, Stop};
use crate::config::schema::{ProviderKind, UnsupportedParams};
use crate::error::GatewayError;

/// Decides what happens to OpenAI parameters a provider cannot express.
pub struct ParamPolicy {
    pub provider: Arc<str>,
    pub kind: ProviderKind,
    pub unsupported: UnsupportedParams,
}

impl ParamPolicy {
    /// `Ok` when the parameter may be dropped, the 400 naming it otherwise.
    pub fn unsupported(&self, param: &str) -> Result<(), GatewayError> {
        match self.unsupported {
            UnsupportedParams::Drop => Ok(()),
            UnsupportedParams::Reject => Err(GatewayError::InvalidParam {
                param: param.to_owned(),
                message: format!(
                    "parameter '{param}' is not supported by provider '{}' ({})",
                    self.provider,
                    self.kind.as_str()
                ),
            }),
        }
    }

    /// Sorts the request's fields Switchyard does not model: the provider's own `native`
    /// fields are returned to be passed through, `dropped` ones vanish, anything else is
    /// unsupported.
    pub fn extra_fields(
        &self,
        request: &ChatRequest,
        native: &[&str],
        dropped: &[&str],
    ) -> Result<Map<String, Value>, GatewayError> {
        let mut passthrough = Map::new();
        for (key, value) in &request.extra {
            if native.contains(&key.as_str()) {
                passthrough.insert(key.clone(), value.clone());
            } else if !dropped.contains(&key.as_str()) && !value.is_null() {
                self.unsupported(key)?;
            }
        }
        if request.n.is_some_and(|n| n > 1) {
            self.unsupported("n")?;
        }
        Ok(passthrough)
    }
}

/// `data:<media type>;base64,<data>` → (media type, data).
pub fn data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (media_type, data) = rest.split_once(";base64,")?;
    Some((media_type, data))
}

/// A tool call's `arguments` string as JSON (an empty string is an empty object).
pub fn arguments(arguments: &str, param: impl Fn() -> String) -> Result<Value, GatewayError> {
    if arguments.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_str(arguments).map_err(|e| GatewayError::InvalidParam {
        param: param(),
        message: format!("tool call arguments are not valid JSON: {e}"),
    })
}

/// JSON without spaces, keys in their original order.
pub fn compact(value: &Value) -> String {
    value.to_string()
}

pub fn stop_sequences(stop: &Stop) -> Vec<String> {
    match stop {
        Stop::One(one) => vec![one.clone()],
        Stop::Many(many) => many.clone(),
    }
}

/// The text of a message content; a part that is not text is a 400 for `param`.
pub fn text_only(content: &MessageContent, param: &str) -> Result<String, GatewayError> {
    if let MessageContent::Parts(parts) = content
        && parts
            .iter()
            .any(|p| !matches!(p, crate::api::chat::ContentPart::Text { .. }))
    {
        return Err(GatewayError::InvalidParam {
            param: param.to_owned(),
            message: "only text parts are allowed here".to_owned(),
        });
    }
    Ok(content.text())
}

/// FNV-1a 64: a small, stable hash for ids that must be the same for the same answer.
pub fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3)
    })
}
