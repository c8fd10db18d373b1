//! `${VAR}` and `${VAR:-default}` substitution in the config text, before YAML parsing.
//!
//! `$$` writes a literal `$`. Whole-line comments are left alone, so a documented example
//! such as `# api_key: ${SOME_KEY}` never requires `SOME_KEY` to be set.

use super::ConfigError;

/// Substitutes every placeholder in `text`, looking variables up with `lookup`.
/// Returns all problems found (unset variables, unterminated placeholders), each with
/// its line and column.
pub fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<ConfigError>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    for (index, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        substitute_line(line, index + 1, &lookup, &mut out, &mut errors);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn substitute_line(
    line: &str,
    line_no: usize,
    lookup: &impl Fn(&str) -> Option<String>,
    out: &mut String,
    errors: &mut Vec<ConfigError>,
) {
    let mut rest = line;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let column = line.len() - rest.len() + dollar + 1;
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(close) = body.find('}') else {
                errors.push(placeholder_error(
                    line_no,
                    column,
                    "unterminated '${'".into(),
                ));
                out.push_str(&rest[dollar..]);
                return;
            };
            match resolve(&body[..close], lookup) {
                Ok(value) => out.push_str(&value),
                Err(message) => errors.push(placeholder_error(line_no, column, message)),
            }
            rest = &body[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
}

fn resolve(placeholder: &str, lookup: &impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let (name, default) = match placeholder.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (placeholder, None),
    };
    let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "'${{{placeholder}}}' is not a valid placeholder (expected ${{NAME}} or ${{NAME:-default}})"
        ));
    }
    match (lookup(name), default) {
        (Some(value), _) => Ok(value),
        (None, Some(default)) => Ok(default.to_owned()),
        (None, None) => Err(format!(
            "environment variable {name} is not set (use ${{{name}:-default}} to make it optional)"
        )),
    }
}

fn placeholder_error(line: usize, column: usize, message: String) -> ConfigError {
    ConfigError {
        path: String::new(),
        location: Some((line as u64, column as u64)),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("sk-123".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_values_and_defaults() {
        let text = "a: ${KEY}\nb: ${MISSING:-fallback}\nc: ${EMPTY:-x}\nd: $$5 $x\n";
        assert_eq!(
            interpolate(text, env).unwrap(),
            "a: sk-123\nb: fallback\nc: \nd: $5 $x\n"
        );
    }

    #[test]
    fn comments_are_not_interpolated() {
        let text = "  # api_key: ${NOT_SET}\nx: 1\n";
        assert_eq!(interpolate(text, env).unwrap(), text);
    }

    #[test]
    fn reports_every_problem_with_its_position() {
        let errors =
            interpolate("a: ${NOPE}\nb: ok\nc: x ${BAD NAME}\nd: ${OPEN\n", env).unwrap_err();
        let found: Vec<_> = errors.iter().map(|e| e.location.unwrap()).collect();
        assert_eq!(found, vec![(1, 4), (3, 6), (4, 4)]);
        assert!(errors[0].message.contains("NOPE is not set"));
    }
}
