//! The runtime form of one config: providers built, models resolved to their targets.
//! A snapshot is immutable; a reload builds a whole new one and swaps it in atomically
//! (see `reload.rs`), so a request sees exactly one config from start to end.

use std::fmt::Write as _;
use std::sync::Arc;

use indexmap::IndexMap;

use crate::auth::KeyTable;
use crate::config::provider::ProviderSettings;
use crate::config::schema::{
    AdminConfig, AuthConfig, HealthCheckConfig, LimitsSettings, ModelTimeouts, OnTimeout,
    ProviderConfig, ProviderKind, ProviderTimeouts, ResilienceSettings, ServerConfig, Strategy,
    TelemetryConfig,
};
use crate::config::{ConfigError, RawConfig};
use crate::health::TargetHealth;
use crate::limits::tokens::Tokenizer;
use crate::pricing::PriceTable;
use crate::providers::{self, Provider};
use crate::shared::Shared;

pub struct Snapshot {
    pub server: ServerConfig,
    pub providers: IndexMap<Arc<str>, Arc<ProviderEntry>>,
    pub models: IndexMap<Arc<str>, Arc<ModelRoute>>,
    /// The virtual keys the config defines.
    pub keys: KeyTable,
    /// The same keys and their teams as written (for the admin API).
    pub auth: AuthConfig,
    pub admin: Option<AdminConfig>,
    pub prices: PriceTable,
    pub limits: LimitsSettings,
    pub resilience: ResilienceSettings,
    /// As written: its changes need a restart (a reload says so).
    pub telemetry: TelemetryConfig,
}

pub struct ProviderEntry {
    pub name: Arc<str>,
    pub kind: ProviderKind,
    pub adapter: Arc<dyn Provider>,
    pub timeouts: ProviderTimeouts,
    pub health_check: Option<HealthCheckConfig>,
    /// Why this provider cannot serve requests (for example, its key is not set).
    pub unusable: Option<String>,
    /// For `check-config`: where it sends requests.
    pub base_url: Option<String>,
    /// The host and port of `base_url`, for spans.
    pub address: Option<(Arc<str>, u16)>,
}

/// A public model and the targets that can serve it.
pub struct ModelRoute {
    pub name: Arc<str>,
    pub targets: Vec<Arc<Target>>,
    pub strategy: Strategy,
    /// Public models tried, in order, when every attempt on this one failed (their own
    /// fallbacks are not followed).
    pub fallbacks: Vec<Arc<str>>,
    /// Public models tried instead when the prompt does not fit this one's context window.
    pub context_fallbacks: Vec<Arc<str>>,
    pub timeouts: ModelTimeouts,
    pub on_timeout: OnTimeout,
    pub resume_streams: bool,
}

pub struct Target {
    pub provider: Arc<ProviderEntry>,
    pub upstream_model: Arc<str>,
    pub weight: u32,
    pub priority: u32,
    pub max_tokens: Option<u64>,
    /// The upstream model's tokenizer, built with the snapshot.
    pub tokenizer: Tokenizer,
    /// Continues a final assistant message (prefill), for resuming broken streams.
    pub prefill: bool,
    pub health: Arc<TargetHealth>,
}

impl Target {
    pub fn is_usable(&self) -> bool {
        self.weight > 0 && self.provider.unusable.is_none()
    }

    /// This target's timeouts: its provider's, tightened by its model's.
    pub fn timeouts(&self, model: &ModelTimeouts) -> ProviderTimeouts {
        let own = self.provider.timeouts;
        let tighter = |own: std::time::Duration, model: Option<std::time::Duration>| {
            model.map_or(own, |model| own.min(model))
        };
        ProviderTimeouts {
            connect: own.connect,
            first_byte: tighter(own.first_byte, model.first_byte),
            stream_idle: tighter(own.stream_idle, model.stream_idle),
        }
    }
}

impl ModelRoute {
    pub fn usable_targets(&self) -> impl Iterator<Item = &Arc<Target>> {
        self.targets.iter().filter(|t| t.is_usable())
    }

    /// Why no target can serve this model, when that is the case.
    pub fn unusable_reason(&self) -> Option<String> {
        if self.usable_targets().next().is_some() {
            return None;
        }
        let reasons: Vec<String> = self
            .targets
            .iter()
            .filter_map(|t| {
                let reason = t.provider.unusable.as_deref()?;
                Some(format!("provider '{}' {reason}", t.provider.name))
            })
            .collect();
        Some(reasons.join("; "))
    }
}

impl Snapshot {
    pub fn build(raw: RawConfig, shared: &Shared) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut providers = IndexMap::new();
        for (name, config) in &raw.providers {
            match build_provider(name, config, shared) {
                Ok(entry) => {
                    providers.insert(entry.name.clone(), Arc::new(entry));
                }
                Err(message) => errors.push(ConfigError {
                    path: format!("providers.{name}"),
                    location: None,
                    message,
                }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let models = raw
            .models
            .iter()
            .map(|(name, model)| {
                let name: Arc<str> = Arc::from(name.as_str());
                let targets = model
                    .targets
                    .iter()
                    .map(|t| {
                        let upstream_model = t.model.as_deref().unwrap_or(&name);
                        let budget = &raw.resilience.retry_budget;
                        Arc::new(Target {
                            // Validation guarantees the provider exists.
                            provider: providers[t.provider.as_str()].clone(),
                            upstream_model: Arc::from(upstream_model),
                            weight: t.weight,
                            priority: t.priority,
                            max_tokens: t.max_tokens,
                            tokenizer: Tokenizer::for_model(upstream_model),
                            prefill: t
                                .prefill
                                .unwrap_or(providers[t.provider.as_str()].kind.prefills()),
                            health: shared.health.get(&t.provider, upstream_model, budget),
                        })
                    })
                    .collect();
                let names =
                    |models: &[String]| models.iter().map(|m| Arc::from(m.as_str())).collect();
                let route = ModelRoute {
                    name: name.clone(),
                    targets,
                    strategy: model.strategy,
                    fallbacks: names(&model.fallbacks),
                    context_fallbacks: names(&model.context_fallbacks),
                    timeouts: model.timeouts,
                    on_timeout: model.on_timeout,
                    resume_streams: model.resume_streams,
                };
                (name, Arc::new(route))
            })
            .collect();
        let prices = PriceTable::build(&raw.pricing.models).map_err(|message| {
            vec![ConfigError {
                path: "pricing".into(),
                location: None,
                message,
            }]
        })?;
        Ok(Self {
            keys: KeyTable::build(&raw.auth),
            auth: raw.auth,
            admin: raw.admin,
            prices,
            limits: raw.limits,
            resilience: raw.resilience,
            telemetry: raw.telemetry,
            server: raw.server,
            providers,
            models,
        })
    }

    /// Ready to serve: at least one provider can take requests.
    pub fn is_ready(&self) -> bool {
        self.providers.values().any(|p| p.unusable.is_none())
    }

    /// A short human summary for `check-config`.
    pub fn summary(&self) -> String {
        let mut out = format!("providers ({}):\n", self.providers.len());
        for p in self.providers.values() {
            let _ = write!(out, "  {:<16} {:<7}", p.name, p.kind.as_str());
            if let Some(url) = &p.base_url {
                let _ = write!(out, " {url}");
            }
            if let Some(reason) = &p.unusable {
                let _ = write!(out, "  (unusable: {reason})");
            }
            out.push('\n');
        }
        let _ = writeln!(out, "models ({}):", self.models.len());
        for m in self.models.values() {
            let targets: Vec<String> = m
                .targets
                .iter()
                .map(|t| {
                    format!(
                        "{}/{} (weight {})",
                        t.provider.name, t.upstream_model, t.weight
                    )
                })
                .collect();
            let _ = writeln!(out, "  {:<24} -> {}", m.name, targets.join(", "));
        }
        out
    }
}

fn build_provider(
    name: &str,
    config: &ProviderConfig,
    shared: &Shared,
) -> Result<ProviderEntry, String> {
    let name: Arc<str> = Arc::from(name);
    let settings = ProviderSettings::of(config).map_err(|foreign| {
        let keys: Vec<String> = foreign
            .iter()
            .map(|f| format!("{}: {}", f.key, f.message))
            .collect();
        keys.join("; ")
    })?;
    let adapter = providers::build(&name, &settings, config.timeouts.connect, &shared.http)?;
    let base_url = providers::base_url(&settings);
    let api_key = settings.http().and_then(|http| http.api_key.as_ref());
    let unusable = api_key
        .filter(|key| key.is_empty())
        .map(|_| "has an empty api_key".to_owned());
    Ok(ProviderEntry {
        name,
        kind: config.kind,
        adapter,
        timeouts: config.timeouts,
        health_check: config.health_check,
        unusable,
        address: base_url.as_deref().and_then(address),
        base_url,
    })
}

/// The host and port a base URL names (the scheme's port when it names none).
fn address(base_url: &str) -> Option<(Arc<str>, u16)> {
    let uri = base_url.parse::<http::Uri>().ok()?;
    let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    Some((Arc::from(uri.host()?), port))
}
