//! Loading the config: read → interpolate `${VAR}` → parse strictly → validate (no I/O).
//! Building the runtime snapshot from it is `snapshot.rs`'s job; startup and hot reload
//! both go through [`load`], so a config that starts is exactly a config that reloads.

mod interpolate;
pub mod provider;
pub mod schema;
pub mod secret;
pub mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use schema::RawConfig;

/// The config shipped inside the binary, used when no file is given and
/// `config/switchyard.yaml` does not exist in the working directory.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/switchyard.yaml");
/// Where `switchyard serve` looks when neither `--config` nor `SWITCHYARD_CONFIG` is set.
pub const DEFAULT_PATH: &str = "config/switchyard.yaml";

/// Where a config comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    Embedded,
}

impl ConfigSource {
    /// `--config`/`SWITCHYARD_CONFIG` if given, else the default file if it exists, else the
    /// embedded default.
    pub fn resolve(explicit: Option<PathBuf>) -> Self {
        match explicit {
            Some(path) => Self::File(path),
            None if Path::new(DEFAULT_PATH).is_file() => Self::File(DEFAULT_PATH.into()),
            None => Self::Embedded,
        }
    }

    pub fn file(&self) -> Option<&Path> {
        match self {
            Self::File(path) => Some(path),
            Self::Embedded => None,
        }
    }
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Embedded => f.write_str("<embedded default config>"),
        }
    }
}

/// One problem in a config: the key path it concerns (empty for syntax problems), the
/// line and column when the parser knows them, and what was expected.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub path: String,
    pub location: Option<(u64, u64)>,
    pub message: String,
}

/// Every problem found in one config, with the file they are in.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    /// The file (or "embedded default") the errors are in.
    pub origin: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.errors.len();
        write!(
            f,
            "{}: {count} error{}",
            self.origin,
            if count == 1 { "" } else { "s" }
        )?;
        for error in &self.errors {
            write!(f, "\n  {}", self.origin)?;
            if let Some((line, column)) = error.location {
                write!(f, ":{line}:{column}")?;
            }
            if !error.path.is_empty() {
                write!(f, ": {}", error.path)?;
            }
            write!(f, ": {}", error.message)?;
        }
        Ok(())
    }
}

/// Reads, interpolates, parses and validates the config from `source`.
pub fn load(source: &ConfigSource) -> Result<RawConfig, ConfigErrors> {
    let fail = |errors| ConfigErrors {
        origin: source.to_string(),
        errors,
    };
    let text = match source {
        ConfigSource::File(path) => std::fs::read_to_string(path).map_err(|e| {
            fail(vec![ConfigError {
                path: String::new(),
                location: None,
                message: format!("cannot read the file: {e}"),
            }])
        })?,
        ConfigSource::Embedded => EMBEDDED_DEFAULT.to_owned(),
    };
    parse(&text, |name| std::env::var(name).ok()).map_err(fail)
}

/// Interpolates, parses and validates config text.
pub fn parse(
    text: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<RawConfig, Vec<ConfigError>> {
    let text = interpolate::interpolate(text, env)?;
    let config = deserialize(&text)?;
    let errors = validate::validate(&config);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors)
    }
}

/// Strict YAML → [`RawConfig`], keeping both the key path (from serde_path_to_error) and the
/// line/column (from the YAML parser) of the first problem.
fn deserialize(text: &str) -> Result<RawConfig, Vec<ConfigError>> {
    let mut path = String::new();
    let parsed = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    });
    parsed.map_err(|error| {
        let location = error.location().map(|l| (l.line(), l.column()));
        let message = error.without_snippet().to_string();
        // The parser appends " at line L, column C"; the location is reported separately.
        let message = match message.rfind(" at line ") {
            Some(cut) if location.is_some() => message[..cut].to_owned(),
            _ => message,
        };
        let path = if path == "." { String::new() } else { path };
        vec![ConfigError {
            path,
            location,
            message,
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn embedded_default_is_valid() {
        let config = parse(EMBEDDED_DEFAULT, no_env).expect("embedded default config");
        assert!(config.models.contains_key("mock"));
        // Without OPENAI_API_KEY the key is present but empty: the provider is unusable.
        assert_eq!(config.providers["openai"].api_key, Some(Default::default()));
    }

    #[test]
    fn shipped_configs_are_valid() {
        for path in ["config/example.yaml", "deploy/switchyard.yaml"] {
            let text = std::fs::read_to_string(path).unwrap();
            if let Err(errors) = parse(&text, |_| Some("sk-test".into())) {
                panic!("{path}: {errors:?}");
            }
        }
    }

    #[test]
    fn unknown_keys_are_rejected_with_path_and_line() {
        let errors = parse("server:\n  listen: 127.0.0.1:1\n  lisen: x\n", no_env).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "server.lisen");
        assert_eq!(errors[0].location, Some((3, 3)));
        assert!(
            errors[0].message.contains("unknown field `lisen`"),
            "{errors:?}"
        );
    }

    #[test]
    fn semantic_errors_are_all_reported() {
        let text = "providers:\n  p: {kind: openai, base_url: 'ftp://x'}\nmodels:\n  m:\n    targets: [{provider: nope}]\n  n: {targets: []}\n";
        let errors = parse(text, no_env).unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "providers.p.base_url",
                "models.m.targets[0].provider",
                "models.n.targets"
            ]
        );
    }

    #[test]
    fn trace_settings_are_checked_with_their_paths() {
        let text = "telemetry:\n  traces:\n    exporter: otlp\n    protocol: grpc\n    endpoint: https://collector:4317\n    sampling_ratio: 1.5\n    headers: {'bad name': x}\n    batch: {max_queue_size: 0}\n";
        let errors = parse(text, no_env).unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "telemetry.traces.endpoint",
                "telemetry.traces.headers.bad name",
                "telemetry.traces.sampling_ratio",
                "telemetry.traces.batch"
            ]
        );
    }
}
