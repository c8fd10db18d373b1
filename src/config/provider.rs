//! A provider's settings typed by its kind: what `providers.<name>` means once validated.
//!
//! The file's shape ([`ProviderConfig`]) is flat, one struct for every kind, because that
//! is what lets serde name an unknown or mistyped key with its full path and line (an
//! internally tagged enum would buffer the map and report only `providers.<name>`). Here
//! each kind keeps only the keys it uses, so an adapter cannot read a key meant for
//! another kind, and a key written for another kind is reported by the one conversion
//! validation and the snapshot both go through.

use indexmap::IndexMap;

use super::schema::{
    MockConfig, OnMalformedEvent, ProviderConfig, ProviderKind, UnsupportedParams,
};
use super::secret::Secret;

/// What a provider of each kind is configured with.
#[derive(Debug, Clone)]
pub enum ProviderSettings {
    Openai(HttpSettings),
    Azure(AzureSettings),
    Anthropic(AnthropicSettings),
    Gemini(GeminiSettings),
    Mock(MockConfig),
}

/// Where and how an HTTP provider is called.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub base_url: Option<String>,
    /// `Some("")`: written but empty (an unset `${VAR:-}`), the provider is unusable.
    pub api_key: Option<Secret>,
    pub headers: IndexMap<String, String>,
    pub on_malformed_event: OnMalformedEvent,
}

#[derive(Debug, Clone)]
pub struct AzureSettings {
    pub http: HttpSettings,
    pub api_version: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AnthropicSettings {
    pub http: HttpSettings,
    pub version: Option<String>,
    pub default_max_tokens: Option<u64>,
    pub unsupported_params: UnsupportedParams,
}

#[derive(Debug, Clone)]
pub struct GeminiSettings {
    pub http: HttpSettings,
    pub unsupported_params: UnsupportedParams,
}

/// A key written for a kind of provider that does not use it.
#[derive(Debug, Clone, PartialEq)]
pub struct ForeignKey {
    pub key: &'static str,
    pub message: String,
}

impl ProviderSettings {
    /// The settings `config` gives its kind, or every key it has that its kind does not use.
    pub fn of(config: &ProviderConfig) -> Result<Self, Vec<ForeignKey>> {
        // Destructured whole: a key added to the file's shape must be given a kind here.
        let ProviderConfig {
            kind,
            base_url,
            api_key,
            headers,
            timeouts: _,
            health_check: _,
            mock,
            anthropic_version,
            default_max_tokens,
            api_version,
            unsupported_params,
            on_malformed_event,
        } = config;
        use ProviderKind::{Anthropic, Azure, Gemini, Mock, Openai};
        const HTTP: &[ProviderKind] = &[Openai, Azure, Anthropic, Gemini];
        let keys: [(&'static str, bool, &[ProviderKind]); 9] = [
            ("base_url", base_url.is_some(), HTTP),
            ("api_key", api_key.is_some(), HTTP),
            ("headers", !headers.is_empty(), HTTP),
            ("mock", mock.is_some(), &[Mock]),
            (
                "anthropic_version",
                anthropic_version.is_some(),
                &[Anthropic],
            ),
            (
                "default_max_tokens",
                default_max_tokens.is_some(),
                &[Anthropic],
            ),
            ("api_version", api_version.is_some(), &[Azure]),
            (
                "unsupported_params",
                unsupported_params.is_some(),
                &[Anthropic, Gemini],
            ),
            ("on_malformed_event", on_malformed_event.is_some(), HTTP),
        ];
        let foreign: Vec<ForeignKey> = keys
            .into_iter()
            .filter(|(_, present, kinds)| *present && !kinds.contains(kind))
            .map(|(key, _, kinds)| ForeignKey {
                key,
                message: foreign_message(*kind, kinds),
            })
            .collect();
        if !foreign.is_empty() {
            return Err(foreign);
        }
        let http = || HttpSettings {
            base_url: base_url.clone(),
            api_key: api_key.clone(),
            headers: headers.clone(),
            on_malformed_event: on_malformed_event.unwrap_or_default(),
        };
        let unsupported_params = unsupported_params.unwrap_or_default();
        Ok(match kind {
            Openai => Self::Openai(http()),
            Azure => Self::Azure(AzureSettings {
                http: http(),
                api_version: api_version.clone(),
            }),
            Anthropic => Self::Anthropic(AnthropicSettings {
                http: http(),
                version: anthropic_version.clone(),
                default_max_tokens: *default_max_tokens,
                unsupported_params,
            }),
            Gemini => Self::Gemini(GeminiSettings {
                http: http(),
                unsupported_params,
            }),
            Mock => Self::Mock(mock.clone().unwrap_or_default()),
        })
    }

    /// The HTTP settings, for every kind but the mock.
    pub fn http(&self) -> Option<&HttpSettings> {
        match self {
            Self::Openai(http) => Some(http),
            Self::Azure(azure) => Some(&azure.http),
            Self::Anthropic(anthropic) => Some(&anthropic.http),
            Self::Gemini(gemini) => Some(&gemini.http),
            Self::Mock(_) => None,
        }
    }
}

fn foreign_message(kind: ProviderKind, kinds: &[ProviderKind]) -> String {
    match (kind, kinds) {
        (ProviderKind::Mock, _) => "not used by providers of kind mock".to_owned(),
        (_, [ProviderKind::Mock]) => "only allowed for providers of kind mock".to_owned(),
        _ => {
            let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
            format!("only used by providers of kind {}", names.join(" or "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(yaml: &str) -> ProviderConfig {
        serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn each_kind_gets_only_its_keys() {
        let anthropic = provider("{kind: anthropic, api_key: k, anthropic_version: '2023-06-01'}");
        let Ok(ProviderSettings::Anthropic(settings)) = ProviderSettings::of(&anthropic) else {
            panic!("anthropic settings")
        };
        assert_eq!(settings.version.as_deref(), Some("2023-06-01"));
        assert_eq!(
            settings.http.api_key.as_ref().map(Secret::expose),
            Some("k")
        );

        let azure = provider("{kind: openai, api_version: x, mock: {latency: 1s}}");
        let foreign = ProviderSettings::of(&azure).unwrap_err();
        let keys: Vec<_> = foreign
            .iter()
            .map(|f| (f.key, f.message.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("mock", "only allowed for providers of kind mock"),
                ("api_version", "only used by providers of kind azure")
            ]
        );
        let mock = provider("{kind: mock, base_url: 'http://x'}");
        assert_eq!(
            ProviderSettings::of(&mock).unwrap_err()[0].message,
            "not used by providers of kind mock"
        );
    }
}
