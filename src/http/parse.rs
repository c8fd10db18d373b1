//! Parsing request bodies into typed requests, once, with errors that name the problem:
//! the position of a JSON syntax error, the missing required field, or the path of the
//! parameter with the wrong type.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::error::Category;

use crate::api::chat::ChatRequest;
use crate::api::embeddings::EmbeddingsRequest;
use crate::error::GatewayError;
use crate::pipeline::Call;

pub fn chat(body: &[u8]) -> Result<Call, GatewayError> {
    let request: ChatRequest = typed(body, &["model", "messages"])?;
    if request.messages.is_empty() {
        return Err(GatewayError::InvalidParam {
            param: "messages".into(),
            message: "'messages' must contain at least one message".into(),
        });
    }
    Ok(Call::Chat(Arc::new(request)))
}

pub fn embeddings(body: &[u8]) -> Result<Call, GatewayError> {
    let request: EmbeddingsRequest = typed(body, &["model", "input"])?;
    Ok(Call::Embeddings(Arc::new(request)))
}

fn typed<T: DeserializeOwned>(body: &[u8], required: &[&'static str]) -> Result<T, GatewayError> {
    serde_json::from_slice(body).map_err(|error| match error.classify() {
        Category::Data => describe_data_error::<T>(body, required),
        Category::Syntax | Category::Eof | Category::Io => GatewayError::InvalidJson {
            message: format!("We could not parse the JSON body of your request: {error}"),
        },
    })
}

/// Parses again with path tracking to say which parameter is wrong. Only failed requests
/// pay for this second pass.
fn describe_data_error<T: DeserializeOwned>(
    body: &[u8],
    required: &[&'static str],
) -> GatewayError {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let Err(error) = serde_path_to_error::deserialize::<_, T>(&mut deserializer) else {
        return GatewayError::Internal("a request failed to parse only once".into());
    };
    let path = error.path().to_string();
    let message = error.into_inner().to_string();
    if path == "." {
        let missing = required
            .iter()
            .find(|field| message.starts_with(&format!("missing field `{field}`")));
        return match missing {
            Some(field) => GatewayError::MissingField { field },
            None => GatewayError::InvalidJson {
                message: format!("the request body must be a JSON object: {message}"),
            },
        };
    }
    GatewayError::InvalidParam {
        message: format!("invalid value for '{path}': {message}"),
        param: path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(body: &str) -> GatewayError {
        chat(body.as_bytes()).err().expect("an error")
    }

    #[test]
    fn names_the_problem() {
        assert!(matches!(
            error("{\"model\": "),
            GatewayError::InvalidJson { .. }
        ));
        assert!(matches!(
            error(r#"{"messages":[]}"#),
            GatewayError::MissingField { field: "model" }
        ));
        assert!(matches!(
            error(r#"{"model":"m"}"#),
            GatewayError::MissingField { field: "messages" }
        ));
        let GatewayError::InvalidParam { param, .. } = error(
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
        ) else {
            panic!()
        };
        assert_eq!(param, "temperature");
        let GatewayError::InvalidParam { param, .. } =
            error(r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#)
        else {
            panic!()
        };
        assert_eq!(param, "messages[0].role");
    }

    #[test]
    fn syntax_errors_carry_the_position() {
        let GatewayError::InvalidJson { message } = error("{\"model\": \"m\",\n  oops}") else {
            panic!()
        };
        assert!(message.contains("line 2 column 3"), "{message}");
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi","cache_control":{"type":"ephemeral"}},{"type":"input_audio","input_audio":{"data":"AAA","format":"wav"}}],"x_note":1}],"logit_bias":{"50256":-100},"seed":7}"#;
        let Call::Chat(request) = chat(body.as_bytes()).unwrap() else {
            panic!()
        };
        let out = serde_json::to_value(&*request).unwrap();
        assert_eq!(out["logit_bias"]["50256"], -100);
        assert_eq!(out["seed"], 7);
        assert_eq!(out["messages"][0]["x_note"], 1);
        assert_eq!(
            out["messages"][0]["content"][0]["cache_control"]["type"],
            "ephemeral"
        );
        assert_eq!(
            out["messages"][0]["content"][1]["input_audio"]["format"],
            "wav"
        );
        assert!(out.get("model").is_none(), "model is written per attempt");
    }
}
