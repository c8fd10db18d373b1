//! JSON Schema as OpenAI clients send it → the OpenAPI 3.0 subset of Gemini's `Schema`
//! object, for `functionDeclarations[].parameters` and `generationConfig.responseSchema`
//! (docs/providers.md, "gemini", "Schemas").
//!
//! Gemini reads these fields as a typed message, so one key outside the subset anywhere in
//! a schema is a 400 for the whole request. What the SDKs generate from pydantic models is
//! full of such keys: `$defs` and `$ref`, `anyOf` with a `{"type": "null"}` branch for an
//! optional field, `const`, `additionalProperties: false`. Each is translated into the
//! subset when it can be and dropped when Gemini has nothing to say it with; a schema the
//! subset cannot express at all (a recursive `$ref`, a non-string enum) is refused here
//! with a 400 that names the tool and the path, rather than by Gemini with a proto error.

use serde_json::{Map, Value, json};

use crate::error::GatewayError;

/// The fields of Gemini's `Schema` (v1beta). Other keys are translated or dropped.
const KEYS: &[&str] = &[
    "anyOf",
    "default",
    "description",
    "enum",
    "example",
    "format",
    "items",
    "maxItems",
    "maxLength",
    "maxProperties",
    "maximum",
    "minItems",
    "minLength",
    "minProperties",
    "minimum",
    "nullable",
    "pattern",
    "properties",
    "propertyOrdering",
    "required",
    "title",
    "type",
];

/// Inlining `$ref`s can multiply a schema's size (a definition used twice by a definition
/// used twice...); a schema that would grow past this many nodes is refused, not built.
const MAX_NODES: usize = 10_000;

/// `schema`, found at `param` of the request, in Gemini's subset; `subject` names what the
/// schema belongs to in error messages (`tool 'get_weather'`).
pub fn convert(schema: &Value, param: &str, subject: &str) -> Result<Value, GatewayError> {
    let mut converter = Converter {
        root: schema,
        subject,
        expanding: Vec::new(),
        budget: MAX_NODES,
    };
    converter.schema(schema, param).map(Value::Object)
}

struct Converter<'a> {
    root: &'a Value,
    subject: &'a str,
    /// The references being inlined, outermost first: meeting one again is a cycle.
    expanding: Vec<&'a str>,
    budget: usize,
}

impl<'a> Converter<'a> {
    /// One schema node. A `$ref`, `anyOf`/`oneOf` or `allOf` gives the base; the node's own
    /// keywords are laid over it, so a field's `description` beside a `$ref` is kept.
    fn schema(
        &mut self,
        schema: &'a Value,
        path: &str,
    ) -> Result<Map<String, Value>, GatewayError> {
        self.budget = self
            .budget
            .checked_sub(1)
            .ok_or_else(|| self.invalid(path, "is too large once its $refs are inlined"))?;
        let object = match schema {
            Value::Object(object) => object,
            // `true` accepts any value, as an empty schema does.
            Value::Bool(true) => return Ok(Map::new()),
            _ => return Err(self.invalid(path, "is not a schema object")),
        };
        let mut out = if let Some(reference) = object.get("$ref") {
            self.reference(reference, path)?
        } else if let Some((key, branches)) = ["anyOf", "oneOf"]
            .into_iter()
            .find_map(|key| Some((key, object.get(key)?)))
        {
            self.any_of(branches, &format!("{path}.{key}"))?
        } else if let Some(branches) = object.get("allOf") {
            self.all_of(branches, &format!("{path}.allOf"))?
        } else {
            Map::new()
        };
        for (key, value) in object {
            self.keyword(key, value, path, &mut out)?;
        }
        // Gemini enumerates strings only, and wants the type said.
        if out.contains_key("enum") && !out.contains_key("type") {
            out.insert("type".into(), json!("string"));
        }
        Ok(out)
    }

    fn keyword(
        &mut self,
        key: &str,
        value: &'a Value,
        path: &str,
        out: &mut Map<String, Value>,
    ) -> Result<(), GatewayError> {
        match key {
            "properties" => {
                let properties = self.properties(value, &format!("{path}.properties"))?;
                out.insert(key.into(), Value::Object(properties));
            }
            "items" => {
                let items = self.schema(value, &format!("{path}.items"))?;
                out.insert(key.into(), Value::Object(items));
            }
            "type" => kind(value, out),
            "enum" => self.enumeration(value, &format!("{path}.enum"), out)?,
            "const" => {
                let values = Value::Array(vec![value.clone()]);
                self.enumeration(&values, &format!("{path}.const"), out)?;
            }
            // Already the base of this node.
            "$ref" | "anyOf" | "oneOf" | "allOf" => {}
            _ if KEYS.contains(&key) => {
                out.insert(key.into(), value.clone());
            }
            // Gemini has no field for it (`additionalProperties`, `$defs`, `$schema`,
            // `strict`, `exclusiveMinimum`...): sent, it would fail the request.
            _ => {}
        }
        Ok(())
    }

    fn properties(
        &mut self,
        properties: &'a Value,
        path: &str,
    ) -> Result<Map<String, Value>, GatewayError> {
        let Value::Object(properties) = properties else {
            return Err(self.invalid(path, "is not an object"));
        };
        properties
            .iter()
            .map(|(name, schema)| {
                let schema = self.schema(schema, &format!("{path}.{name}"))?;
                Ok((name.clone(), Value::Object(schema)))
            })
            .collect()
    }

    /// The schema `reference` points to, inlined: Gemini's subset has no references.
    fn reference(
        &mut self,
        reference: &'a Value,
        path: &str,
    ) -> Result<Map<String, Value>, GatewayError> {
        let ref_path = format!("{path}.$ref");
        let pointer = reference
            .as_str()
            .and_then(|r| r.strip_prefix('#'))
            .ok_or_else(|| {
                self.invalid(&ref_path, "is not a reference inside the schema (#/...)")
            })?;
        if self.expanding.contains(&pointer) {
            let problem = format!(
                "refers to '#{pointer}', which contains it: a recursive schema cannot be inlined, and Gemini's schemas have no references"
            );
            return Err(self.invalid(&ref_path, &problem));
        }
        let target = self.root.pointer(pointer).ok_or_else(|| {
            self.invalid(&ref_path, &format!("'#{pointer}' is not in the schema"))
        })?;
        self.expanding.push(pointer);
        let inlined = self.schema(target, path);
        self.expanding.pop();
        inlined
    }

    /// `anyOf` (or `oneOf`, which Gemini cannot tell apart): a `{"type": "null"}` branch
    /// becomes `nullable`, and a single branch left is the schema itself.
    fn any_of(
        &mut self,
        branches: &'a Value,
        path: &str,
    ) -> Result<Map<String, Value>, GatewayError> {
        let Value::Array(branches) = branches else {
            return Err(self.invalid(path, "is not a list"));
        };
        let mut nullable = false;
        let mut converted = Vec::new();
        for (i, branch) in branches.iter().enumerate() {
            if branch.get("type").and_then(Value::as_str) == Some("null") {
                nullable = true;
            } else {
                converted.push(self.schema(branch, &format!("{path}[{i}]"))?);
            }
        }
        let mut out = match converted.len() {
            0 => Map::new(),
            1 => converted.swap_remove(0),
            _ => {
                let branches = converted.into_iter().map(Value::Object).collect();
                Map::from_iter([("anyOf".to_owned(), Value::Array(branches))])
            }
        };
        if nullable {
            out.insert("nullable".into(), json!(true));
        }
        Ok(out)
    }

    /// `allOf` of one schema (older pydantic wraps a described `$ref` so) is that schema;
    /// an intersection of several cannot be said in Gemini's subset.
    fn all_of(
        &mut self,
        branches: &'a Value,
        path: &str,
    ) -> Result<Map<String, Value>, GatewayError> {
        match branches {
            Value::Array(branches) if branches.len() == 1 => {
                self.schema(&branches[0], &format!("{path}[0]"))
            }
            _ => Err(self.invalid(
                path,
                "is not a single schema, and Gemini's schemas cannot express an intersection",
            )),
        }
    }

    /// `enum` (or `const`, a one-value enum): strings, and `null` for `nullable`.
    fn enumeration(
        &self,
        values: &Value,
        path: &str,
        out: &mut Map<String, Value>,
    ) -> Result<(), GatewayError> {
        let Value::Array(values) = values else {
            return Err(self.invalid(path, "is not a list"));
        };
        let mut strings = Vec::new();
        for value in values {
            match value {
                Value::String(_) => strings.push(value.clone()),
                Value::Null => {
                    out.insert("nullable".into(), json!(true));
                }
                _ => {
                    return Err(self.invalid(
                        path,
                        &format!(
                            "has the value {value}, but Gemini's schemas enumerate strings only"
                        ),
                    ));
                }
            }
        }
        out.insert("enum".into(), Value::Array(strings));
        Ok(())
    }

    fn invalid(&self, path: &str, problem: &str) -> GatewayError {
        GatewayError::InvalidParam {
            param: path.to_owned(),
            message: format!("{}: {path} {problem}", self.subject),
        }
    }
}

/// `type`: a list naming `"null"` becomes `nullable`, and several types become `anyOf`,
/// since Gemini's `type` is a single name.
fn kind(value: &Value, out: &mut Map<String, Value>) {
    let types = match value {
        Value::Array(types) => types.as_slice(),
        single => std::slice::from_ref(single),
    };
    let named: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
    if named.len() < types.len() {
        out.insert("nullable".into(), json!(true));
    }
    match named.as_slice() {
        [] => {}
        [single] => {
            out.insert("type".into(), (*single).clone());
        }
        several => {
            let branches: Vec<Value> = several.iter().map(|t| json!({"type": t})).collect();
            out.insert("anyOf".into(), Value::Array(branches));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(schema: Value) -> Value {
        convert(&schema, "tools[0].function.parameters", "tool 't'").unwrap()
    }

    fn refused(schema: Value) -> (String, String) {
        match convert(&schema, "tools[0].function.parameters", "tool 't'") {
            Err(GatewayError::InvalidParam { param, message }) => (param, message),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// What `openai.pydantic_function_tool` sends for a model with a nested model, an
    /// optional nested model with a description, an optional string and a `Literal`.
    #[test]
    fn a_pydantic_strict_schema_becomes_gemini_subset() {
        let schema = json!({
            "$defs": {"Address": {
                "properties": {
                    "city": {"description": "City name", "title": "City", "type": "string"},
                    "country": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Country"}
                },
                "required": ["city", "country"], "title": "Address", "type": "object",
                "additionalProperties": false
            }},
            "description": "Book a table.",
            "properties": {
                "address": {"$ref": "#/$defs/Address"},
                "billing": {"anyOf": [{"$ref": "#/$defs/Address"}, {"type": "null"}], "description": "Where to bill"},
                "kind": {"const": "dinner", "default": "dinner", "title": "Kind", "type": "string"}
            },
            "required": ["address", "billing", "kind"], "title": "Booking", "type": "object",
            "additionalProperties": false
        });
        let address = json!({
            "properties": {
                "city": {"description": "City name", "title": "City", "type": "string"},
                "country": {"type": "string", "nullable": true, "title": "Country"}
            },
            "required": ["city", "country"], "title": "Address", "type": "object"
        });
        let mut billing = address.clone();
        billing["nullable"] = json!(true);
        billing["description"] = json!("Where to bill");
        assert_eq!(
            ok(schema),
            json!({
                "description": "Book a table.",
                "properties": {
                    "address": address,
                    "billing": billing,
                    "kind": {"enum": ["dinner"], "default": "dinner", "title": "Kind", "type": "string"}
                },
                "required": ["address", "billing", "kind"], "title": "Booking", "type": "object"
            })
        );
    }

    #[test]
    fn type_lists_one_of_and_single_all_of_are_expressed() {
        let schema = json!({"type": "object", "properties": {
            "a": {"type": ["string", "null"]},
            "b": {"type": ["string", "integer"]},
            "c": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
            "d": {"allOf": [{"$ref": "#/definitions/D"}], "description": "a d"},
            "e": {"enum": ["x", null]},
            "f": true
        }, "definitions": {"D": {"type": "integer", "exclusiveMinimum": 0}}});
        assert_eq!(
            ok(schema)["properties"],
            json!({
                "a": {"nullable": true, "type": "string"},
                "b": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "c": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "d": {"type": "integer", "description": "a d"},
                "e": {"nullable": true, "enum": ["x"], "type": "string"},
                "f": {}
            })
        );
    }

    #[test]
    fn a_recursive_reference_is_refused_with_its_path() {
        let schema = json!({
            "$defs": {"Node": {"type": "object", "properties": {
                "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}
            }}},
            "type": "object",
            "properties": {"root": {"$ref": "#/$defs/Node"}}
        });
        let (param, message) = refused(schema);
        assert_eq!(
            param,
            "tools[0].function.parameters.properties.root.properties.children.items.$ref"
        );
        assert!(message.starts_with("tool 't': "), "{message}");
        assert!(message.contains("recursive"), "{message}");
    }

    #[test]
    fn what_the_subset_cannot_say_is_refused() {
        let (param, _) = refused(json!({"type": "object", "properties": {"n": {"const": 3}}}));
        assert_eq!(param, "tools[0].function.parameters.properties.n.const");
        let (param, _) = refused(json!({"allOf": [{"type": "object"}, {"required": ["a"]}]}));
        assert_eq!(param, "tools[0].function.parameters.allOf");
        let (param, _) = refused(json!({"$ref": "https://example.com/schema"}));
        assert_eq!(param, "tools[0].function.parameters.$ref");
        let (param, _) = refused(json!({"$ref": "#/$defs/Missing"}));
        assert_eq!(param, "tools[0].function.parameters.$ref");
    }

    #[test]
    fn references_that_multiply_past_the_limit_are_refused() {
        // Each definition uses the next twice: 2^20 nodes once inlined.
        let mut defs = Map::new();
        for i in 0..20 {
            let next = json!({"$ref": format!("#/$defs/D{}", i + 1)});
            defs.insert(
                format!("D{i}"),
                json!({"type": "object", "properties": {"a": next, "b": next}}),
            );
        }
        defs.insert("D20".into(), json!({"type": "string"}));
        let (_, message) = refused(json!({"$defs": defs, "$ref": "#/$defs/D0"}));
        assert!(message.contains("too large"), "{message}");
    }
}
