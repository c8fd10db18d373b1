//! The config file's shape, exactly as written by users. Unknown keys are rejected
//! everywhere. `config/example.yaml` documents every key; a test parses it.
//!
//! Later sections (keys, limits, routing, prompts, redaction, cache, resilience,
//! telemetry) are added as new top-level fields of [`RawConfig`], each with its own
//! struct here and its own validation in `validate.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use bytesize::ByteSize;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::secret::Secret;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: ServerConfig,
    /// Upstream providers by name.
    #[serde(default)]
    pub providers: IndexMap<String, ProviderConfig>,
    /// Public model names (what clients send as `model`) and where they are served.
    #[serde(default)]
    pub models: IndexMap<String, ModelConfig>,
    /// Virtual keys and the teams they belong to.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Prices on top of the shipped list (config/pricing.yaml).
    #[serde(default)]
    pub pricing: PricingConfig,
    /// How rate limits and budgets are kept.
    #[serde(default)]
    pub limits: LimitsSettings,
    /// The admin API (keys, usage and spend). Off when absent.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Retries, the request deadline and circuit breakers.
    #[serde(default)]
    pub resilience: ResilienceSettings,
    /// How long served requests can be given feedback (`POST /v1/feedback`), and where
    /// they are remembered.
    #[serde(default)]
    pub feedback: FeedbackSettings,
    /// Traces exported over OTLP (off by default). [restart]
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    #[serde(default)]
    pub traces: TracesConfig,
}

/// Trace export. Every key left out falls back to its standard `OTEL_*` environment
/// variable, then to its default (`telemetry/settings.rs`). [restart]
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracesConfig {
    /// `none` (the default) or `otlp`.
    #[serde(default)]
    pub exporter: Option<TraceExporter>,
    /// The collector's base URL; `/v1/traces` is appended for http/protobuf.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub protocol: Option<OtlpProtocol>,
    /// Sent with every export (an API key: write it as `${VAR}`).
    #[serde(default)]
    pub headers: IndexMap<String, Secret>,
    /// Share of new traces recorded, 0 to 1; a client's sampled flag is followed.
    #[serde(default)]
    pub sampling_ratio: Option<f64>,
    #[serde(default)]
    pub service_name: Option<String>,
    #[serde(default)]
    pub resource_attributes: IndexMap<String, String>,
    /// Prompts and completions on the attempt spans (off: they may hold personal data).
    #[serde(default)]
    pub capture_content: bool,
    /// Longest prompt or completion text put on a span; longer ones are cut.
    #[serde(default = "content_max_bytes")]
    pub content_max_bytes: ByteSize,
    /// Longest wait for one export.
    #[serde(default, with = "duration::option")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub batch: TraceBatchConfig,
}

fn content_max_bytes() -> ByteSize {
    ByteSize::kib(8)
}

impl Default for TracesConfig {
    fn default() -> Self {
        Self {
            exporter: None,
            endpoint: None,
            protocol: None,
            headers: IndexMap::new(),
            sampling_ratio: None,
            service_name: None,
            resource_attributes: IndexMap::new(),
            capture_content: false,
            content_max_bytes: content_max_bytes(),
            timeout: None,
            batch: TraceBatchConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceExporter {
    None,
    Otlp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "grpc")]
    Grpc,
}

/// How finished spans are queued and sent.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraceBatchConfig {
    /// Longest a finished span waits before it is sent.
    #[serde(with = "duration")]
    pub scheduled_delay: Duration,
    /// Spans waiting to be sent; when full, new ones are dropped (and counted).
    pub max_queue_size: usize,
    /// Most spans in one export.
    pub max_export_batch_size: usize,
}

impl Default for TraceBatchConfig {
    fn default() -> Self {
        Self {
            scheduled_delay: Duration::from_secs(5),
            max_queue_size: 2048,
            max_export_batch_size: 512,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResilienceSettings {
    /// Attempts per model of a request's chain (the model, then its fallbacks), first
    /// attempt included.
    pub max_attempts: u32,
    pub backoff: BackoffSettings,
    pub retry_budget: RetryBudgetSettings,
    /// Longest the attempts of a request may take, all retries and fallbacks included (a
    /// model's `timeouts.total` can only shorten it).
    #[serde(with = "duration")]
    pub deadline: Duration,
    pub breaker: BreakerSettings,
}

impl Default for ResilienceSettings {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: BackoffSettings::default(),
            retry_budget: RetryBudgetSettings::default(),
            deadline: Duration::from_secs(600),
            breaker: BreakerSettings::default(),
        }
    }
}

/// Exponential backoff with full jitter: the n-th retry waits a random time up to
/// `min(max, base * 2^(n-1))`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffSettings {
    #[serde(with = "duration")]
    pub base: Duration,
    #[serde(with = "duration")]
    pub max: Duration,
}

impl Default for BackoffSettings {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

/// Retries a target may get: `ratio` of its recent requests, plus `min_per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudgetSettings {
    pub ratio: f32,
    pub min_per_second: u32,
}

impl Default for RetryBudgetSettings {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 5,
        }
    }
}

/// When a target's circuit opens: `consecutive_failures` in a row, or a `failure_ratio`
/// of at least `min_requests` requests in the last `window`. Open, the target gets no
/// traffic for `cooldown` (doubled on each trip in a row, up to `max_cooldown`, which is
/// 10 s or `cooldown` if that is longer when unset: at the defaults a dead target is probed
/// every 10 s, so one that recovers serves again within that and the gap to the next
/// request), then
/// up to `half_open_probes` requests test it; the first success closes it.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSettings {
    pub consecutive_failures: u32,
    pub failure_ratio: f64,
    #[serde(with = "duration")]
    pub window: Duration,
    pub min_requests: u32,
    #[serde(with = "duration")]
    pub cooldown: Duration,
    #[serde(with = "duration::option")]
    pub max_cooldown: Option<Duration>,
    pub half_open_probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            window: Duration::from_secs(30),
            min_requests: 20,
            cooldown: Duration::from_secs(5),
            max_cooldown: None,
            half_open_probes: 1,
        }
    }
}

impl BreakerSettings {
    /// The longest a target stays open: as configured, else 10 s (or `cooldown`, when a
    /// longer one is configured without a cap).
    pub fn cooldown_cap(&self) -> Duration {
        self.max_cooldown
            .unwrap_or_else(|| self.cooldown.max(Duration::from_secs(10)))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Lower-case hex SHA-256 of the admin key (`switchyard new-key`, then `hash-key`).
    pub key_sha256: Secret,
    /// Address of the admin listener, for example 127.0.0.1:8081. [restart]
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Also serve `/admin/...` on the public listener (off by default: keep the admin
    /// API off the network clients reach).
    #[serde(default)]
    pub on_public_listener: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSettings {
    /// Completion tokens reserved for a request that sets no max_tokens.
    pub default_completion_tokens: u64,
    /// Where counts and spend are kept. [restart]
    pub backend: LimitsBackend,
    /// The shared store, for `backend: redis`. [restart]
    pub redis: Option<RedisSettings>,
}

impl Default for LimitsSettings {
    fn default() -> Self {
        Self {
            default_completion_tokens: 1024,
            backend: LimitsBackend::Memory,
            redis: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitsBackend {
    /// Each replica counts on its own (one replica, or limits per replica).
    #[default]
    Memory,
    /// Every replica shares the counts through Redis.
    Redis,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://host:port/db` (or `rediss://` for TLS).
    pub url: String,
    /// Longest wait for one Redis call; past it, the failure policy applies.
    #[serde(default = "redis_timeout", with = "duration")]
    pub timeout: Duration,
    /// When Redis is slow or down: `fail_open` (each replica applies its own limits) or
    /// `fail_closed` (limited requests get 503).
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Prefix of every key Switchyard writes.
    #[serde(default = "key_prefix")]
    pub key_prefix: String,
}

fn redis_timeout() -> Duration {
    Duration::from_millis(50)
}

fn key_prefix() -> String {
    "switchyard:".to_owned()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    #[default]
    FailOpen,
    FailClosed,
}

/// The requests the gateway remembers so that clients can give feedback on them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedbackSettings {
    /// How long after it ended a request can be given feedback. [restart]
    #[serde(with = "duration")]
    pub retention: Duration,
    /// Where requests are remembered; unset, `limits.backend` decides (replicas that share
    /// limits share this too). [restart]
    pub backend: Option<FeedbackBackend>,
    /// Memory backend: the most requests remembered at once. [restart]
    pub max_requests: u64,
}

impl Default for FeedbackSettings {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(3600),
            backend: None,
            max_requests: 1_000_000,
        }
    }
}

impl FeedbackSettings {
    /// The backend as configured, else the one `limits` uses.
    pub fn backend(&self, limits: &LimitsSettings) -> FeedbackBackend {
        self.backend.unwrap_or(match limits.backend {
            LimitsBackend::Memory => FeedbackBackend::Memory,
            LimitsBackend::Redis => FeedbackBackend::Redis,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedbackBackend {
    /// In this replica: feedback must reach the replica that served the request.
    Memory,
    /// In the Redis of `limits.redis`: any replica takes feedback for any request.
    Redis,
}

/// Rate limits of a key, a team, or a key or team on one model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Requests per minute (GCRA: a burst of up to this many, then one every 60/rpm s).
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute, prompt and completion, reserved before the call and settled
    /// with the real usage after it.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Requests in flight at once (a stream counts until it ends).
    #[serde(default)]
    pub max_concurrent: Option<u32>,
}

/// Spending limits in USD, reserved before the call at the request's most expensive
/// outcome and settled with its real cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Per UTC day.
    #[serde(default)]
    pub daily_usd: Option<f64>,
    /// Per UTC calendar month.
    #[serde(default)]
    pub monthly_usd: Option<f64>,
    /// Over the key's or team's whole life.
    #[serde(default)]
    pub total_usd: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingConfig {
    /// Upstream model name → USD per million tokens.
    #[serde(default)]
    pub models: IndexMap<String, PriceConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    pub input: f64,
    #[serde(default)]
    pub cached_input: Option<f64>,
    #[serde(default)]
    pub cache_write: Option<f64>,
    pub output: f64,
    /// Other prices for a request whose prompt is longer than `above_tokens`.
    #[serde(default)]
    pub long_context: Option<LongContextConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongContextConfig {
    pub above_tokens: u64,
    pub input: f64,
    #[serde(default)]
    pub cached_input: Option<f64>,
    #[serde(default)]
    pub cache_write: Option<f64>,
    pub output: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Virtual keys by name, stored as the SHA-256 of the key (`switchyard hash-key`).
    #[serde(default)]
    pub keys: IndexMap<String, KeyConfig>,
    /// Teams (tenants) by name.
    #[serde(default)]
    pub teams: IndexMap<String, TeamConfig>,
}

/// A virtual key: in the config file, or created through the admin API (which stores the
/// same shape in Redis, or in memory with the memory backend).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Lower-case hex SHA-256 of the key: the key itself is never written down.
    #[serde(default)]
    pub sha256: String,
    /// The team this key belongs to.
    #[serde(default)]
    pub team: Option<String>,
    /// Public models this key may use (default: all; the team's list applies too).
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// RFC 3339 time after which the key is refused, such as 2027-01-01T00:00:00Z.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Free-form labels (owner, purpose); shown by the admin API, never used for decisions.
    #[serde(default)]
    pub metadata: IndexMap<String, String>,
    #[serde(default)]
    pub limits: LimitConfig,
    /// Limits that apply only to requests for one public model.
    #[serde(default)]
    pub model_limits: IndexMap<String, LimitConfig>,
    #[serde(default)]
    pub budget: BudgetConfig,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamConfig {
    /// Public models the team's keys may use (default: all).
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub metadata: IndexMap<String, String>,
    /// Shared by all the team's keys.
    #[serde(default)]
    pub limits: LimitConfig,
    #[serde(default)]
    pub model_limits: IndexMap<String, LimitConfig>,
    #[serde(default)]
    pub budget: BudgetConfig,
}

fn enabled() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the public listener. Read at start only.
    pub listen: SocketAddr,
    /// Largest request body accepted, chunked bodies included.
    pub max_body_size: ByteSize,
    /// How long a client may take to send the request head. Read at start only.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// Longest pause allowed between two pieces of a request body.
    #[serde(with = "duration")]
    pub body_idle_timeout: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests (streams included) may finish.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// A listener of its own for `/metrics` (and the probes), which then leaves the public
    /// one. Read at start only.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_size: ByteSize::mib(10),
            header_read_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            metrics_listen: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// OpenAI or any server that speaks its API (vLLM, Ollama, Groq, DeepSeek, Together...).
    Openai,
    /// Azure OpenAI: OpenAI's API at per-deployment URLs.
    Azure,
    /// Anthropic's Messages API.
    Anthropic,
    /// Google's Generative Language API (Gemini).
    Gemini,
    /// The built-in deterministic mock.
    Mock,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Azure => "azure",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
            Self::Mock => "mock",
        }
    }

    /// `gen_ai.provider.name` in the OpenTelemetry GenAI conventions (the mock, which is
    /// none of theirs, is `switchyard.mock`).
    pub fn gen_ai_provider_name(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Azure => "azure.ai.openai",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gcp.gemini",
            Self::Mock => "switchyard.mock",
        }
    }

    /// Whether the provider's API continues a final assistant message (prefill).
    pub fn prefills(self) -> bool {
        self == Self::Anthropic
    }
}

/// What a stream does with an upstream event that is not valid JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMalformedEvent {
    /// Drop it, count it (`switchyard_upstream_malformed_events_total`), log a WARN, go on.
    #[default]
    Skip,
    /// End the stream with an error, as for a cut stream.
    Fail,
}

/// What a translating adapter does with an OpenAI parameter its provider cannot express.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnsupportedParams {
    /// Answer 400, naming the parameter and the provider.
    #[default]
    Reject,
    /// Leave it out of the request.
    Drop,
}

/// A provider as written: one flat shape for every kind, so serde reports an unknown or
/// mistyped key with its full path and line. What it means for its kind, once validated,
/// is [`super::provider::ProviderSettings`]: adapters only ever see that.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// API root including the version segment, e.g. `https://api.openai.com/v1`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Sent as `Authorization: Bearer <key>`. Present but empty (or null, which is what an
    /// unset `${VAR:-}` leaves behind) means "not configured": the provider is then
    /// unusable until the key is set. Absent means the server needs no key.
    #[serde(default, deserialize_with = "present_secret")]
    pub api_key: Option<Secret>,
    /// Extra headers sent with every upstream request.
    #[serde(default)]
    pub headers: IndexMap<String, String>,
    #[serde(default)]
    pub timeouts: ProviderTimeouts,
    /// Active health checks of this provider's targets (off when absent).
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// Behaviour of a `mock` provider.
    #[serde(default)]
    pub mock: Option<MockConfig>,
    /// anthropic: the `anthropic-version` header (default 2023-06-01).
    #[serde(default)]
    pub anthropic_version: Option<String>,
    /// anthropic: `max_tokens` when neither the request nor the target sets one (default
    /// 4096; Anthropic requires it).
    #[serde(default)]
    pub default_max_tokens: Option<u64>,
    /// azure: the `api-version` query parameter (default 2024-10-21).
    #[serde(default)]
    pub api_version: Option<String>,
    /// anthropic, gemini: OpenAI parameters the provider cannot express are rejected (400)
    /// or dropped.
    #[serde(default)]
    pub unsupported_params: Option<UnsupportedParams>,
    /// What a stream does with an event whose data is not valid JSON: `skip` it (default;
    /// counted and logged) or `fail` the stream.
    #[serde(default)]
    pub on_malformed_event: Option<OnMalformedEvent>,
}

/// A one-token chat completion sent to each of the provider's targets every `interval`;
/// its outcome feeds the target's circuit breaker (and, while the circuit is open, it is
/// the probe, so client requests are not).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(with = "duration")]
    pub interval: Duration,
    #[serde(default = "health_check_timeout", with = "duration")]
    pub timeout: Duration,
}

fn health_check_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderTimeouts {
    /// TCP + TLS connection setup.
    #[serde(with = "duration")]
    pub connect: Duration,
    /// Until the answer starts: a whole non-streaming answer (providers send it when the
    /// generation is done), a stream's first chunk with content (time to first token).
    /// Past it, the attempt is abandoned and retried or failed over. `request` is the
    /// older name of this key.
    #[serde(with = "duration", alias = "request")]
    pub first_byte: Duration,
    /// Longest silence allowed between two pieces of a streamed response.
    #[serde(with = "duration")]
    pub stream_idle: Duration,
}

impl Default for ProviderTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(600),
            stream_idle: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MockConfig {
    /// Delay before a non-streaming answer.
    #[serde(with = "duration")]
    pub latency: Duration,
    /// Delay before the first chunk of a stream.
    #[serde(with = "duration")]
    pub time_to_first_token: Duration,
    /// Delay between two chunks of a stream.
    #[serde(with = "duration")]
    pub chunk_interval: Duration,
    /// Injected failures; the first whose dice roll hits applies.
    pub faults: Vec<MockFault>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MockFault {
    /// Share of requests this fault hits, 0.0 to 1.0.
    #[serde(default = "always")]
    pub probability: f64,
    /// Answer with this HTTP status...
    #[serde(default)]
    pub status: Option<u16>,
    /// ...and this body (default: an OpenAI-shaped error)...
    #[serde(default)]
    pub body: Option<String>,
    /// ...and this `Retry-After`.
    #[serde(default, with = "duration::option")]
    pub retry_after: Option<Duration>,
    /// Never answer.
    #[serde(default)]
    pub hang: bool,
    /// Streams only: cut the stream after this many chunks, without a terminal event.
    #[serde(default)]
    pub cut_after: Option<u32>,
}

/// A key that is present always yields `Some`, with `null` read as an empty string.
fn present_secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(Some(Option::<Secret>::deserialize(d)?.unwrap_or_default()))
}

fn always() -> f64 {
    1.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub targets: Vec<TargetConfig>,
    /// How a request picks among the targets.
    #[serde(default)]
    pub strategy: Strategy,
    /// Public models tried, in order, when every attempt on this one failed.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Public models tried instead when the prompt does not fit the context window.
    #[serde(default)]
    pub context_fallbacks: Vec<String>,
    /// Tighter timeouts than the providers' for this model.
    #[serde(default)]
    pub timeouts: ModelTimeouts,
    /// After a target times out (no answer, or no first content, within `first_byte`):
    /// `fail_over` (default) sends the next attempt to another target or the fallbacks and
    /// never to that target again in the request, unless the model has nothing else;
    /// `retry` lets it be retried like any retryable failure.
    #[serde(default)]
    pub on_timeout: OnTimeout,
    /// Continue a stream that breaks after the client got content on another target or a
    /// fallback (prefill, or a regenerated answer that repeats the delivered text exactly).
    #[serde(default = "yes")]
    pub resume_streams: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    #[default]
    FailOver,
    Retry,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Random, in proportion to the weights.
    #[default]
    Weighted,
    /// The target with the fewest requests in flight from this replica.
    LeastInFlight,
    /// The target with the lowest recent latency (time to first content for streams).
    LowestLatency,
    /// The first target by `priority` (lowest first) whose circuit is not open.
    Priority,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelTimeouts {
    #[serde(with = "duration::option")]
    pub first_byte: Option<Duration>,
    #[serde(with = "duration::option")]
    pub stream_idle: Option<Duration>,
    /// The whole request: all attempts and fallbacks, and a stream that has started.
    #[serde(with = "duration::option")]
    pub total: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub provider: String,
    /// The model name the provider knows (default: the public name).
    #[serde(default)]
    pub model: Option<String>,
    /// Relative share of traffic among this model's targets.
    #[serde(default = "one")]
    pub weight: u32,
    /// Order for `strategy: priority` (lowest first; ties in the order written).
    #[serde(default)]
    pub priority: u32,
    /// Completion budget when the request sets none, for providers that require one
    /// (anthropic); overrides the provider's `default_max_tokens`.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Whether this target continues a final assistant message (prefill), for resuming a
    /// broken stream; default: what the provider's kind does (anthropic does, the others
    /// are not assumed to).
    #[serde(default)]
    pub prefill: Option<bool>,
}

fn one() -> u32 {
    1
}

/// Durations written the human way: `250ms`, `30s`, `5m`.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(|e| {
            D::Error::custom(format!(
                "expected a duration such as 500ms, 30s or 5m, got {text:?} ({e})"
            ))
        })
    }
    /// An optional duration: absent, or written like any other.
    pub mod option {
        use std::time::Duration;

        use serde::Deserializer;

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Duration>, D::Error> {
            super::deserialize(deserializer).map(Some)
        }
    }
}
