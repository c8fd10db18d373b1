//! Resilience scenarios: one emulated OpenAI upstream plays every provider, a gateway is
//! configured with some targets, fallbacks and resilience settings in front of it, and the
//! test reads back what the client got and what each target received.
//!
//! The upstream's script answers by the upstream model name the gateway sends (`a` is the
//! primary's target, `b` the fallback's, and so on), so a test can count what each target
//! received ([`Scenario::hits`]). Every wait is bounded by the hang guard
//! ([`super::HANG`]); nothing here measures how long anything took.
//!
//! ```ignore
//! let s = Scenario::answering(failing_first(1, unavailable)).models(PRIMARY_WITH_BACKUP).start().await;
//! let reply = s.chat(&ask("primary")).await;
//! assert_eq!((reply.status, reply.attempts(), reply.target()), (200, 2, Some("up/a")));
//! assert_eq!(s.hits("a"), 2);
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use http::HeaderMap;
use serde_json::{Value, json};
use switchyard::auth::{hash_key, hex};

use super::upstream::{self, Behavior, Received, Upstream};
use super::{CaptureGuard, Logs, TEST_KEY, TestGateway, UPSTREAM_KEY, eventually, hang_guard};

/// The admin key of every scenario's gateway (the admin API is on the public listener).
pub const ADMIN_KEY: &str = "sk-sy-admin-resilience-0123456789";

/// Provider timeouts short enough for tests, loose enough for a debug build.
pub const TIMEOUTS: &str = "connect: 1s, first_byte: 1s, stream_idle: 1s";
/// Quick retries: tests observe behaviour, not patience.
pub const QUICK: &str = "max_attempts: 3\n  backoff: {base: 10ms, max: 50ms}";

/// `primary` served by `up/a` alone, without fallbacks.
pub const ONLY_A: &str = "  primary: {targets: [{provider: up, model: a}]}\n";

/// `primary` served by `up/a` with `fallbacks: [backup]`, `backup` by `up/b`.
pub const PRIMARY_WITH_BACKUP: &str = "  primary: {targets: [{provider: up, model: a}], fallbacks: [backup]}\n  backup: {targets: [{provider: up, model: b}]}\n";

/// `primary` with targets `up/a` and `up/b` under `strategy`.
pub fn two_targets(strategy: &str) -> String {
    format!(
        "  primary: {{strategy: {strategy}, targets: [{{provider: up, model: a}}, {{provider: up, model: b}}]}}\n"
    )
}

// ---- the upstream's answers

type Script = dyn Fn(&Received) -> Behavior + Send + Sync;

/// The upstream model a request names.
pub fn model_of(request: &Received) -> String {
    request.body["model"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

pub fn streaming(request: &Received) -> bool {
    request.body["stream"] == json!(true)
}

/// SSE: each event's data, 2 ms apart, then `[DONE]` if `done`.
pub fn sse(data: Vec<String>, done: bool) -> Behavior {
    Behavior::Events {
        data,
        interval: Duration::from_millis(2),
        done,
    }
}

/// A good answer from the model the request names, JSON or SSE as asked; the content
/// names the upstream model ("answer from a"), so the client can tell who answered.
pub fn ok(request: &Received) -> Behavior {
    let model = model_of(request);
    if streaming(request) {
        let usage = upstream::wants_usage(request);
        sse(
            upstream::chunks(&model, &["answer ", "from ", &model], usage),
            true,
        )
    } else {
        Behavior::Json(upstream::completion(
            &model,
            &format!("answer from {model}"),
        ))
    }
}

/// An OpenAI-shaped error whose message is "upstream says {code}".
pub fn error(
    status: u16,
    headers: Vec<(&'static str, String)>,
    kind: &str,
    code: &str,
) -> Behavior {
    Behavior::Error {
        status,
        headers,
        body: json!({"error": {
            "message": format!("upstream says {code}"),
            "type": kind, "param": null, "code": code
        }})
        .to_string(),
    }
}

pub fn unavailable() -> Behavior {
    error(503, vec![], "server_error", "service_unavailable")
}

pub fn rate_limited(headers: Vec<(&'static str, String)>) -> Behavior {
    error(429, headers, "requests", "rate_limit_exceeded")
}

/// A 429 with `Retry-After: seconds`.
pub fn retry_after(seconds: u64) -> Behavior {
    rate_limited(vec![("retry-after", seconds.to_string())])
}

const CONTEXT_LENGTH_BODY: &str = r#"{"error":{"message":"This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens. Please reduce the length of the messages.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;

pub fn context_length_exceeded() -> Behavior {
    Behavior::Error {
        status: 400,
        headers: vec![],
        body: CONTEXT_LENGTH_BODY.to_owned(),
    }
}

/// A stream from `model` with the role chunk and `pieces` of content, then the connection
/// cut (no finish chunk, no `[DONE]`).
pub fn cut_after(model: &str, pieces: &[&str]) -> Behavior {
    Behavior::Cut {
        data: upstream::chunks(model, pieces, false)[..=pieces.len()].to_vec(),
        interval: Duration::from_millis(5),
    }
}

/// A stream from `model` whose first content comes after `delay`.
pub fn slow_stream(model: &str, delay: Duration) -> Behavior {
    let data = upstream::chunks(model, &["answer ", "from ", model], false);
    Behavior::Timed {
        events: data
            .into_iter()
            .enumerate()
            .map(|(i, event)| (if i == 1 { delay } else { Duration::ZERO }, event))
            .collect(),
        done: true,
    }
}

/// A script: model `a` answers as `primary` says, every other model well.
pub fn primary(
    primary: impl Fn(&Received) -> Behavior + Send + Sync + 'static,
) -> impl Fn(&Received) -> Behavior + Send + Sync + 'static {
    move |r: &Received| {
        if model_of(r) == "a" {
            primary(r)
        } else {
            ok(r)
        }
    }
}

/// A script: the first `n` requests fail with `failure()`, then every answer is good.
pub fn failing_first(
    n: usize,
    failure: impl Fn() -> Behavior + Send + Sync + 'static,
) -> impl Fn(&Received) -> Behavior + Send + Sync + 'static {
    let seen = AtomicUsize::new(0);
    move |request| {
        if seen.fetch_add(1, Ordering::SeqCst) < n {
            failure()
        } else {
            ok(request)
        }
    }
}

/// A flag a test flips while its upstream runs (a target down, then back).
#[derive(Clone, Default)]
pub struct Switch(Arc<AtomicBool>);

impl Switch {
    pub fn on() -> Self {
        let switch = Self::default();
        switch.set(true);
        switch
    }

    pub fn set(&self, on: bool) {
        self.0.store(on, Ordering::SeqCst);
    }

    pub fn is_on(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A script: model `a` is unavailable (503) while `down` is on; everything else answers.
pub fn a_down_while(down: &Switch) -> impl Fn(&Received) -> Behavior + Send + Sync + 'static {
    let down = down.clone();
    move |r: &Received| {
        if model_of(r) == "a" && down.is_on() {
            unavailable()
        } else {
            ok(r)
        }
    }
}

// ---- the gateway's config

/// A scenario to start: the upstream's script and the gateway's config.
pub struct ScenarioBuilder {
    script: Box<Script>,
    models: String,
    resilience: String,
    timeouts: String,
    provider_extra: String,
    providers_extra: String,
    top_level: String,
}

/// A running scenario: the upstream, the gateway in front of it, and the gateway's logs.
pub struct Scenario {
    pub upstream: Upstream,
    pub gateway: TestGateway,
    pub logs: Logs,
    caller: Caller,
    _capture: CaptureGuard,
}

impl Scenario {
    /// A scenario whose upstream answers with `script`; by default the gateway serves
    /// [`ONLY_A`] with [`QUICK`] retries and the [`TIMEOUTS`].
    pub fn answering(
        script: impl Fn(&Received) -> Behavior + Send + Sync + 'static,
    ) -> ScenarioBuilder {
        ScenarioBuilder {
            script: Box::new(script),
            models: ONLY_A.to_owned(),
            resilience: QUICK.to_owned(),
            timeouts: TIMEOUTS.to_owned(),
            provider_extra: String::new(),
            providers_extra: String::new(),
            top_level: String::new(),
        }
    }
}

impl ScenarioBuilder {
    /// The YAML lines under `models:`.
    pub fn models(mut self, models: &str) -> Self {
        self.models = models.to_owned();
        self
    }

    /// The YAML lines under `resilience:` (the first line unindented).
    pub fn resilience(mut self, resilience: &str) -> Self {
        self.resilience = resilience.to_owned();
        self
    }

    /// The provider `up`'s timeouts (a YAML flow map's contents).
    pub fn timeouts(mut self, timeouts: &str) -> Self {
        self.timeouts = timeouts.to_owned();
        self
    }

    /// More settings of the provider `up` (YAML lines indented by four).
    pub fn up_settings(mut self, lines: &str) -> Self {
        self.provider_extra.push_str(lines);
        self
    }

    /// Another provider (YAML lines under `providers:`); `{base_url}` is the upstream's.
    pub fn provider(mut self, lines: &str) -> Self {
        self.providers_extra.push_str(lines);
        self
    }

    /// More top-level YAML (a `pricing:` section, say).
    pub fn top_level(mut self, yaml: &str) -> Self {
        self.top_level.push_str(yaml);
        self
    }

    /// Starts the scenario and sends it one request: the scenario and its answer.
    pub async fn run(self, body: &Value) -> (Scenario, Reply) {
        let s = self.start().await;
        let reply = s.chat(body).await;
        (s, reply)
    }

    pub async fn start(self) -> Scenario {
        let (logs, capture) = Logs::capture();
        let upstream = Upstream::start(self.script).await;
        let base_url = &upstream.base_url;
        let config = format!(
            "providers:\n  up:\n    kind: openai\n    base_url: {base_url}\n    api_key: {UPSTREAM_KEY}\n    timeouts: {{{timeouts}}}\n{extra}{providers}models:\n{models}\nresilience:\n  {resilience}\nadmin:\n  key_sha256: {admin}\n  on_public_listener: true\n{top_level}",
            timeouts = self.timeouts,
            extra = self.provider_extra,
            providers = self.providers_extra.replace("{base_url}", base_url),
            models = self.models,
            resilience = self.resilience,
            admin = hex(&hash_key(ADMIN_KEY)),
            top_level = self.top_level,
        );
        let gateway = TestGateway::start(&config).await;
        let caller = Caller {
            client: super::client(),
            url: format!("{}/v1/chat/completions", gateway.url),
        };
        Scenario {
            upstream,
            gateway,
            logs,
            caller,
            _capture: capture,
        }
    }
}

// ---- the client's side

pub fn ask(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello"}]})
}

pub fn ask_stream(model: &str) -> Value {
    json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hello"}]})
}

/// Sends chat requests to a scenario's gateway; cheap to clone into spawned tasks.
#[derive(Clone)]
pub struct Caller {
    client: reqwest::Client,
    url: String,
}

impl Caller {
    /// Sends `body` with the test key and reads the whole answer (a stream to its end).
    pub async fn chat(&self, body: &Value) -> Reply {
        hang_guard(format!("the answer to {body}"), async {
            let response = self
                .client
                .post(&self.url)
                .bearer_auth(TEST_KEY)
                .json(body)
                .send()
                .await
                .unwrap();
            Reply {
                status: response.status().as_u16(),
                headers: response.headers().clone(),
                body: response.text().await.expect("the whole body"),
            }
        })
        .await
    }
}

/// A whole answer, as the client got it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// `x-switchyard-attempts`, which every answer carries.
    pub fn attempts(&self) -> usize {
        self.header("x-switchyard-attempts")
            .unwrap_or_else(|| panic!("no x-switchyard-attempts in {:?}", self.headers))
            .parse()
            .unwrap()
    }

    /// `x-switchyard-target`: who answered (`provider/upstream model`).
    pub fn target(&self) -> Option<&str> {
        self.header("x-switchyard-target")
    }

    /// A 200 from `target` (`provider/upstream model`).
    pub fn assert_served_by(&self, target: &str) {
        assert_eq!(
            (self.status, self.target()),
            (200, Some(target)),
            "served by {target}: {self:?}"
        );
    }

    /// `x-should-retry`, which errors after the gateway's own retries carry.
    pub fn should_retry(&self) -> Option<&str> {
        self.header("x-should-retry")
    }

    pub fn request_id(&self) -> &str {
        self.header("x-request-id").expect("an x-request-id")
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: not JSON: {}", self.body))
    }

    /// The message content of a chat completion.
    pub fn content(&self) -> String {
        let body = self.json();
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_else(|| panic!("no message content: {body}"))
            .to_owned()
    }

    /// The error object of an OpenAI-shaped error answer.
    pub fn error(&self) -> Value {
        let body = self.json();
        assert!(body["error"]["message"].is_string(), "{body}");
        body["error"].clone()
    }

    /// The data of each SSE event of a streamed answer.
    pub fn events(&self) -> Vec<String> {
        let frames = self
            .body
            .strip_suffix("\n\n")
            .unwrap_or_else(|| panic!("a partial frame at the end: {:?}", self.body));
        frames
            .split("\n\n")
            .filter(|frame| !frame.starts_with(':'))
            .map(|frame| {
                frame
                    .strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("not a data frame: {frame:?}"))
                    .to_owned()
            })
            .collect()
    }

    /// The SSE comment lines of a stream (which SDKs ignore), without their `: `.
    pub fn comments(&self) -> Vec<String> {
        self.body
            .split("\n\n")
            .filter_map(|frame| frame.strip_prefix(": "))
            .map(str::to_owned)
            .collect()
    }
}

/// A stream that ends without `[DONE]`, its last event an OpenAI-shaped error; returns
/// that error.
pub fn assert_ends_with_error(events: &[String]) -> Value {
    assert!(
        !events.iter().any(|e| e == "[DONE]"),
        "no [DONE] after a failure: {events:?}"
    );
    let last: Value = serde_json::from_str(events.last().expect("some events"))
        .unwrap_or_else(|e| panic!("{e}: last event is not JSON: {events:?}"));
    assert!(
        last["error"]["message"].is_string(),
        "the last event is an error event: {events:?}"
    );
    last["error"].clone()
}

/// A clean stream: chunks only (no error event), then `[DONE]`.
pub fn assert_clean(events: &[String]) {
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    for event in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(event)
            .unwrap_or_else(|e| panic!("{e}: not a JSON chunk: {events:?}"));
        assert!(chunk.get("error").is_none(), "{events:?}");
        assert_eq!(chunk["object"], "chat.completion.chunk", "{events:?}");
    }
}

impl Scenario {
    /// A handle that sends chat requests to the gateway, for spawned tasks.
    pub fn caller(&self) -> Caller {
        self.caller.clone()
    }

    /// Sends `body` and reads the whole answer.
    pub async fn chat(&self, body: &Value) -> Reply {
        self.caller.chat(body).await
    }

    /// The gateway's `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.gateway.metrics().await
    }

    /// Sends `body` `n` times, `concurrency` at a time; the answers in the order they came.
    pub async fn chat_many(&self, body: &Value, n: usize, concurrency: usize) -> Vec<Reply> {
        futures_util::stream::iter(0..n)
            .map(|_| self.chat(body))
            .buffer_unordered(concurrency)
            .collect()
            .await
    }

    /// How many requests the upstream received for one upstream model.
    pub fn hits(&self, model: &str) -> usize {
        self.upstream
            .received()
            .iter()
            .filter(|r| model_of(r) == model)
            .count()
    }

    /// How many requests the upstream received in all.
    pub fn total_hits(&self) -> usize {
        self.upstream.received().len()
    }

    /// The access log line of a request, once it is over: after it, nothing more is
    /// sent upstream for that request.
    pub async fn finished(&self, request_id: &str) -> Value {
        self.logs.wait_access(request_id).await
    }

    /// Waits for the log line `message` of a request (a WARN "upstream attempt failed",
    /// say); returns its fields.
    pub async fn until_logged(&self, request_id: &str, message: &str) -> Value {
        eventually(format!("{message:?} logged for {request_id}"), async || {
            let text = self.logs.text();
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .map(|v| v["fields"].clone())
                .find(|f| f["message"] == message && f["request_id"] == request_id)
        })
        .await
    }

    /// `GET path` on the admin API, which must answer 200.
    pub async fn admin_get(&self, path: &str) -> Value {
        let response = super::client()
            .get(format!("{}{path}", self.gateway.url))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    /// One target's entry in `GET /admin/breakers`.
    pub async fn breaker(&self, target: &str) -> Value {
        let list = self.admin_get("/admin/breakers").await;
        list["breakers"]
            .as_array()
            .unwrap_or_else(|| panic!("no breakers list: {list}"))
            .iter()
            .find(|b| b["target"] == target)
            .unwrap_or_else(|| panic!("no breaker for {target}: {list}"))
            .clone()
    }

    /// Polls `/admin/breakers` until `target`'s breaker is in `state`; returns its entry.
    pub async fn until_breaker(&self, target: &str, state: &str) -> Value {
        eventually(format!("the breaker of {target} {state}"), async || {
            Some(self.breaker(target).await).filter(|entry| entry["state"] == state)
        })
        .await
    }
}
