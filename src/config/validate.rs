//! Semantic checks on a parsed config, without I/O. Every problem is collected, each with
//! the key path it concerns, so one run of `check-config` shows them all.

use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::ConfigError;
use super::provider::ProviderSettings;
use super::schema::{
    AdminConfig, BudgetConfig, FeedbackBackend, KeyConfig, LimitConfig, LimitsBackend, MockFault,
    ModelConfig, OtlpProtocol, ProviderConfig, ProviderKind, RawConfig, ResilienceSettings,
    TracesConfig,
};
use crate::headers::HOP_BY_HOP;

pub fn validate(config: &RawConfig) -> Vec<ConfigError> {
    let mut errors = Errors::default();
    validate_server(config, &mut errors);
    for (name, provider) in &config.providers {
        validate_provider(&format!("providers.{name}"), name, provider, &mut errors);
    }
    for (name, model) in &config.models {
        validate_model(&format!("models.{name}"), name, model, config, &mut errors);
    }
    validate_auth(config, &mut errors);
    validate_limits_settings(config, &mut errors);
    validate_resilience(&config.resilience, &mut errors);
    validate_feedback(config, &mut errors);
    validate_traces(&config.telemetry.traces, &mut errors);
    errors.0
}

fn validate_feedback(config: &RawConfig, errors: &mut Errors) {
    let feedback = &config.feedback;
    if feedback.retention < Duration::from_secs(1) {
        errors.push("feedback.retention", "expected at least 1s");
    }
    if feedback.max_requests == 0 {
        errors.push("feedback.max_requests", "expected 1 or more");
    }
    let redis = feedback.backend(&config.limits) == FeedbackBackend::Redis;
    if redis && config.limits.redis.is_none() {
        errors.push(
            "feedback.backend",
            "expected limits.redis (the Redis replicas share) for backend redis",
        );
    }
}

fn validate_limits_settings(config: &RawConfig, errors: &mut Errors) {
    let settings = &config.limits;
    match (&settings.backend, &settings.redis) {
        (LimitsBackend::Redis, None) => errors.push(
            "limits.redis",
            "expected the Redis settings (url) for backend redis",
        ),
        (_, Some(redis)) => {
            if !(redis.url.starts_with("redis://") || redis.url.starts_with("rediss://")) {
                errors.push(
                    "limits.redis.url",
                    format!("expected redis://host:port, got {:?}", redis.url),
                );
            }
            errors.positive("limits.redis.timeout", redis.timeout);
        }
        _ => {}
    }
}

fn validate_auth(config: &RawConfig, errors: &mut Errors) {
    let names = Names {
        model: &|model| config.models.contains_key(model),
        team: &|team| config.auth.teams.contains_key(team),
    };
    for (name, team) in &config.auth.teams {
        let path = format!("auth.teams.{name}");
        validate_name(&path, name, errors);
        names.known_models(&format!("{path}.models"), &team.models, errors);
        validate_limits(
            &path,
            &team.limits,
            &team.model_limits,
            &team.budget,
            &names,
            errors,
        );
    }
    let mut hashes = std::collections::HashSet::new();
    for (name, key) in &config.auth.keys {
        let path = format!("auth.keys.{name}");
        validate_name(&path, name, errors);
        let hex = key.sha256.len() == 64 && key.sha256.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex {
            errors.push(
                format!("{path}.sha256"),
                "expected 64 hex digits (switchyard hash-key prints them)",
            );
        } else if !hashes.insert(key.sha256.to_ascii_lowercase()) {
            errors.push(format!("{path}.sha256"), "another key has the same hash");
        }
        validate_key_settings(&path, key, &names, errors);
    }
    if let Some(admin) = &config.admin {
        validate_admin(admin, errors);
    }
}

fn validate_admin(admin: &AdminConfig, errors: &mut Errors) {
    let hash = admin.key_sha256.expose();
    let hex = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex {
        errors.push(
            "admin.key_sha256",
            "expected 64 hex digits (switchyard hash-key prints them)",
        );
    }
    if admin.listen.is_none() && !admin.on_public_listener {
        errors.push(
            "admin",
            "expected `listen` (an address for the admin API) or `on_public_listener: true`",
        );
    }
}

/// The names a key may refer to.
pub struct Names<'a> {
    pub model: &'a dyn Fn(&str) -> bool,
    pub team: &'a dyn Fn(&str) -> bool,
}

impl Names<'_> {
    fn known_models(&self, path: &str, models: &Option<Vec<String>>, errors: &mut Errors) {
        for (i, model) in models.iter().flatten().enumerate() {
            if model != "*" && !(self.model)(model) {
                errors.push(format!("{path}[{i}]"), format!("unknown model {model:?}"));
            }
        }
    }
}

/// Problems with a key created or changed through the admin API (its hash is generated);
/// paths are relative to the key.
pub fn key_errors(name: &str, key: &KeyConfig, names: &Names<'_>) -> Vec<ConfigError> {
    let mut errors = Errors::default();
    validate_name("name", name, &mut errors);
    validate_key_settings("", key, names, &mut errors);
    for error in &mut errors.0 {
        error.path = error.path.trim_start_matches('.').to_owned();
    }
    errors.0
}

/// Everything about a key but its hash.
fn validate_key_settings(path: &str, key: &KeyConfig, names: &Names<'_>, errors: &mut Errors) {
    if let Some(team) = &key.team
        && !(names.team)(team)
    {
        errors.push(format!("{path}.team"), format!("unknown team {team:?}"));
    }
    names.known_models(&format!("{path}.models"), &key.models, errors);
    validate_limits(
        path,
        &key.limits,
        &key.model_limits,
        &key.budget,
        names,
        errors,
    );
    if let Some(at) = &key.expires_at
        && humantime::parse_rfc3339_weak(at).is_err()
    {
        errors.push(
            format!("{path}.expires_at"),
            format!("expected an RFC 3339 time such as 2027-01-01T00:00:00Z, got {at:?}"),
        );
    }
}

#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            location: None,
            message: message.into(),
        });
    }

    fn positive(&mut self, path: &str, value: Duration) {
        if value.is_zero() {
            self.push(path, "expected a duration greater than zero");
        }
    }
}

fn validate_server(config: &RawConfig, errors: &mut Errors) {
    let server = &config.server;
    if server.max_body_size.as_u64() == 0 {
        errors.push("server.max_body_size", "expected a size greater than zero");
    }
    errors.positive("server.header_read_timeout", server.header_read_timeout);
    errors.positive("server.body_idle_timeout", server.body_idle_timeout);
}

fn validate_limits(
    path: &str,
    limits: &LimitConfig,
    model_limits: &indexmap::IndexMap<String, LimitConfig>,
    budget: &BudgetConfig,
    names: &Names<'_>,
    errors: &mut Errors,
) {
    let check = |path: &str, limits: &LimitConfig, errors: &mut Errors| {
        let zero = [
            ("rpm", limits.rpm == Some(0)),
            ("tpm", limits.tpm == Some(0)),
            ("max_concurrent", limits.max_concurrent == Some(0)),
        ];
        for (key, is_zero) in zero {
            if is_zero {
                errors.push(
                    format!("{path}.{key}"),
                    "expected a number above zero (omit it for no limit)",
                );
            }
        }
    };
    check(&format!("{path}.limits"), limits, errors);
    for (model, limits) in model_limits {
        let model_path = format!("{path}.model_limits.{model}");
        if !(names.model)(model) {
            errors.push(&model_path, format!("unknown model {model:?}"));
        }
        check(&model_path, limits, errors);
    }
    let budgets = [
        ("daily_usd", budget.daily_usd),
        ("monthly_usd", budget.monthly_usd),
        ("total_usd", budget.total_usd),
    ];
    for (key, value) in budgets {
        if value.is_some_and(|v| !v.is_finite() || v < 0.0) {
            errors.push(
                format!("{path}.budget.{key}"),
                "expected an amount of zero or more",
            );
        }
    }
}

fn validate_name(path: &str, name: &str, errors: &mut Errors) {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c));
    if !ok {
        errors.push(
            path,
            format!("invalid name {name:?}: expected letters, digits and - _ . : /"),
        );
    }
}

fn validate_provider(path: &str, name: &str, provider: &ProviderConfig, errors: &mut Errors) {
    validate_name(path, name, errors);
    let timeouts = &provider.timeouts;
    errors.positive(&format!("{path}.timeouts.connect"), timeouts.connect);
    errors.positive(&format!("{path}.timeouts.first_byte"), timeouts.first_byte);
    if let Some(check) = &provider.health_check {
        if check.interval < Duration::from_millis(100) {
            errors.push(
                format!("{path}.health_check.interval"),
                "expected at least 100ms",
            );
        }
        errors.positive(&format!("{path}.health_check.timeout"), check.timeout);
    }
    errors.positive(
        &format!("{path}.timeouts.stream_idle"),
        timeouts.stream_idle,
    );
    if let Err(foreign) = ProviderSettings::of(provider) {
        for key in foreign {
            errors.push(format!("{path}.{}", key.key), key.message);
        }
    }
    if provider.kind == ProviderKind::Azure && provider.base_url.is_none() {
        errors.push(
            format!("{path}.base_url"),
            "expected the Azure resource endpoint, such as https://NAME.openai.azure.com",
        );
    }
    if provider.default_max_tokens == Some(0) {
        errors.push(
            format!("{path}.default_max_tokens"),
            "expected a number above zero",
        );
    }
    validate_http_keys(path, provider, errors);
    let faults = provider.mock.iter().flat_map(|m| m.faults.iter());
    for (index, fault) in faults.enumerate() {
        validate_fault(&format!("{path}.mock.faults[{index}]"), fault, errors);
    }
}

/// The base URL and the extra headers, when written.
fn validate_http_keys(path: &str, provider: &ProviderConfig, errors: &mut Errors) {
    if let Some(url) = &provider.base_url {
        match url.parse::<http::Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.authority().is_some()
                    && uri.query().is_none() => {}
            _ => errors.push(
                format!("{path}.base_url"),
                format!("expected an http(s) URL such as https://api.openai.com/v1, got {url:?}"),
            ),
        }
    }
    for (name, value) in &provider.headers {
        let key_path = format!("{path}.headers.{name}");
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(header) if HOP_BY_HOP.contains(&header) || header == http::header::HOST => {
                errors.push(key_path, "hop-by-hop and Host headers cannot be set")
            }
            Ok(header) if header == http::header::AUTHORIZATION && provider.api_key.is_some() => {
                errors.push(
                    key_path,
                    "conflicts with api_key (which sets Authorization)",
                )
            }
            Ok(_) if HeaderValue::from_str(value).is_err() => errors.push(
                key_path,
                "expected a header value of visible ASCII characters",
            ),
            Ok(_) => {}
            Err(_) => errors.push(key_path, "expected a valid HTTP header name"),
        }
    }
}

fn validate_fault(path: &str, fault: &MockFault, errors: &mut Errors) {
    if !(0.0..=1.0).contains(&fault.probability) {
        errors.push(
            format!("{path}.probability"),
            format!(
                "expected a number from 0.0 to 1.0, got {}",
                fault.probability
            ),
        );
    }
    let kinds = [
        fault.status.is_some(),
        fault.hang,
        fault.cut_after.is_some(),
    ];
    if kinds.iter().filter(|set| **set).count() != 1 {
        errors.push(path, "expected exactly one of status, hang or cut_after");
    }
    if let Some(status) = fault.status
        && !(400..=599).contains(&status)
    {
        errors.push(
            format!("{path}.status"),
            format!("expected an error status from 400 to 599, got {status}"),
        );
    }
    let with_status = [
        ("body", fault.body.is_some()),
        ("retry_after", fault.retry_after.is_some()),
    ];
    for (key, present) in with_status {
        if present && fault.status.is_none() {
            errors.push(format!("{path}.{key}"), "only allowed together with status");
        }
    }
}

fn validate_model(
    path: &str,
    name: &str,
    model: &ModelConfig,
    config: &RawConfig,
    errors: &mut Errors,
) {
    validate_name(path, name, errors);
    if model.targets.is_empty() {
        errors.push(format!("{path}.targets"), "expected at least one target");
    }
    if !model.targets.is_empty() && model.targets.iter().all(|t| t.weight == 0) {
        errors.push(
            format!("{path}.targets"),
            "expected at least one target with a weight above zero",
        );
    }
    for (index, target) in model.targets.iter().enumerate() {
        if !config.providers.contains_key(&target.provider) {
            let known: Vec<&str> = config.providers.keys().map(String::as_str).collect();
            errors.push(
                format!("{path}.targets[{index}].provider"),
                format!(
                    "unknown provider {:?} (expected one of: {})",
                    target.provider,
                    known.join(", ")
                ),
            );
        }
        if target.max_tokens == Some(0) {
            errors.push(
                format!("{path}.targets[{index}].max_tokens"),
                "expected a number above zero",
            );
        }
        if target.model.as_deref() == Some("") {
            errors.push(
                format!("{path}.targets[{index}].model"),
                "expected a non-empty model name",
            );
        }
    }
    for (key, chain) in [
        ("fallbacks", &model.fallbacks),
        ("context_fallbacks", &model.context_fallbacks),
    ] {
        for (index, fallback) in chain.iter().enumerate() {
            let path = format!("{path}.{key}[{index}]");
            if fallback == name {
                errors.push(path, "expected another model than this one");
            } else if !config.models.contains_key(fallback) {
                errors.push(path, format!("unknown model {fallback:?}"));
            }
        }
    }
    let timeouts = &model.timeouts;
    for (key, value) in [
        ("first_byte", timeouts.first_byte),
        ("stream_idle", timeouts.stream_idle),
        ("total", timeouts.total),
    ] {
        if let Some(value) = value {
            errors.positive(&format!("{path}.timeouts.{key}"), value);
        }
    }
}

fn validate_resilience(settings: &ResilienceSettings, errors: &mut Errors) {
    if settings.max_attempts == 0 {
        errors.push("resilience.max_attempts", "expected 1 or more");
    }
    errors.positive("resilience.deadline", settings.deadline);
    errors.positive("resilience.backoff.base", settings.backoff.base);
    if settings.backoff.max < settings.backoff.base {
        errors.push("resilience.backoff.max", "expected at least backoff.base");
    }
    let ratio = settings.retry_budget.ratio;
    if !(0.0..=10.0).contains(&ratio) {
        errors.push(
            "resilience.retry_budget.ratio",
            "expected a share of requests from 0.0 to 10.0",
        );
    }
    let breaker = &settings.breaker;
    if breaker.consecutive_failures == 0 {
        errors.push(
            "resilience.breaker.consecutive_failures",
            "expected 1 or more",
        );
    }
    if !(breaker.failure_ratio > 0.0 && breaker.failure_ratio <= 1.0) {
        errors.push(
            "resilience.breaker.failure_ratio",
            "expected a share above 0.0 and at most 1.0",
        );
    }
    if breaker.half_open_probes == 0 {
        errors.push("resilience.breaker.half_open_probes", "expected 1 or more");
    }
    if breaker.window < Duration::from_secs(1) {
        errors.push("resilience.breaker.window", "expected at least 1s");
    }
    errors.positive("resilience.breaker.cooldown", breaker.cooldown);
    if breaker
        .max_cooldown
        .is_some_and(|cap| cap < breaker.cooldown)
    {
        errors.push(
            "resilience.breaker.max_cooldown",
            "expected at least breaker.cooldown",
        );
    }
}

fn validate_traces(traces: &TracesConfig, errors: &mut Errors) {
    let path = "telemetry.traces";
    if let Some(endpoint) = &traces.endpoint {
        let uri = endpoint.parse::<http::Uri>().ok();
        let scheme = uri.as_ref().and_then(|u| u.scheme_str());
        let grpc = traces.protocol == Some(OtlpProtocol::Grpc);
        match scheme {
            Some("http") => {}
            Some("https") if !grpc => {}
            Some("https") => errors.push(
                format!("{path}.endpoint"),
                "the grpc exporter speaks plaintext only: an http:// endpoint (or use http/protobuf for https)",
            ),
            _ => errors.push(
                format!("{path}.endpoint"),
                format!("expected an http:// or https:// URL, got {endpoint:?}"),
            ),
        }
    }
    for name in traces.headers.keys() {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            errors.push(format!("{path}.headers.{name}"), "not a valid header name");
        }
    }
    for (name, value) in &traces.headers {
        if HeaderValue::from_str(value.expose()).is_err() {
            errors.push(
                format!("{path}.headers.{name}"),
                "the value has characters not allowed in a header",
            );
        }
    }
    if traces
        .sampling_ratio
        .is_some_and(|r| !(0.0..=1.0).contains(&r))
    {
        errors.push(
            format!("{path}.sampling_ratio"),
            "expected a share from 0.0 to 1.0",
        );
    }
    if traces.content_max_bytes.as_u64() == 0 {
        errors.push(format!("{path}.content_max_bytes"), "expected 1B or more");
    }
    if let Some(timeout) = traces.timeout {
        errors.positive(&format!("{path}.timeout"), timeout);
    }
    let batch = &traces.batch;
    errors.positive(
        &format!("{path}.batch.scheduled_delay"),
        batch.scheduled_delay,
    );
    if batch.max_queue_size == 0 || batch.max_export_batch_size == 0 {
        errors.push(
            format!("{path}.batch"),
            "expected queue and batch sizes of 1 or more",
        );
    }
}
