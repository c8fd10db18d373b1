//! The monitoring shipped in `deploy/` against a running gateway: every metric the Grafana
//! dashboards and the Prometheus alert rules query is one the gateway exposes, and a real
//! Prometheus scraping the gateway counts exactly the requests it answered.
//!
//! prometheus-client leaves a family without samples off `/metrics` entirely (no `# TYPE`
//! line either), so the first test also causes what each labelled family counts: a retry,
//! a fallback, breaker trips, a broken stream, feedback, a budget refusal, a config reload.
//!
//! The Prometheus test runs the `prometheus` binary (Debian package `prometheus`; `.ci/run`
//! installs it) on a free port with its data in a temp dir.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::upstream::{self, Behavior, Upstream};
use common::{SseReader, TEST_KEY, TestGateway, UPSTREAM_KEY};
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard::config::EMBEDDED_DEFAULT;
use tempfile::TempDir;

/// The development key the embedded default config accepts.
const DEV_KEY: &str = "sk-sy-dev";
/// A key of the team `broke`, whose budget no request fits.
const BROKE_KEY: &str = "sk-sy-broke-key-0123456789abcdef";

/// How many requests [`run_workload`] sends.
const WORKLOAD_REQUESTS: f64 = 4.0;

/// How long to wait for Prometheus to start, scrape and answer. Longer than the common
/// hang guard: startup plus the first scrape and the next evaluation can take seconds on a
/// loaded machine. It bounds a wait; nothing asserts on it.
const PROMETHEUS_PATIENCE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn every_metric_the_dashboards_and_alerts_query_is_exposed() {
    let upstream = Upstream::start(|request| {
        if request.body["model"] == "cut" {
            Behavior::Cut {
                data: upstream::chunks("cut", &["Once upon"], false),
                interval: Duration::from_millis(5),
            }
        } else {
            Behavior::Error {
                status: 500,
                headers: Vec::new(),
                body: json!({"error": {"message": "down", "type": "server_error"}}).to_string(),
            }
        }
    })
    .await;
    let config = incidents_config(&upstream.base_url);
    let gateway = TestGateway::start(&config).await;
    run_workload(&gateway, TEST_KEY).await;
    run_incidents(&gateway, &config).await;
    let exposed = exposed_families(&gateway.metrics().await);

    let queried = queried_families();
    assert!(
        queried.contains_key("switchyard_requests"),
        "the dashboards and alerts query the request counter: {queried:?}"
    );
    let missing: Vec<String> = queried
        .iter()
        .filter(|(family, _)| !exposed.contains(*family))
        .map(|(family, sources)| format!("{family} (in {})", join(sources)))
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not on /metrics:\n  {}\nexposed: {}",
        missing.join("\n  "),
        join(&exposed)
    );
}

#[tokio::test]
async fn prometheus_scraping_the_gateway_counts_every_request() {
    let gateway = TestGateway::start(EMBEDDED_DEFAULT).await;
    run_workload(&gateway, DEV_KEY).await;
    let prometheus = Prometheus::start(gateway.gateway.addr);

    let counted = prometheus
        .wait_for("sum(switchyard_requests_total)", WORKLOAD_REQUESTS)
        .await;
    assert_eq!(counted, WORKLOAD_REQUESTS);
}

/// A chat completion, a streamed one and embeddings (all on the built-in mock), and a chat
/// for a model the config does not have.
async fn run_workload(gateway: &TestGateway, key: &str) {
    let response = post(gateway, key, "/v1/chat/completions", &chat("mock", false)).await;
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();

    let response = post(gateway, key, "/v1/chat/completions", &chat("mock", true)).await;
    assert_eq!(response.status(), 200);
    let events = SseReader::new(response).all().await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));

    let embeddings = json!({"model": "mock", "input": "Hello"});
    let response = post(gateway, key, "/v1/embeddings", &embeddings).await;
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();

    let response = post(
        gateway,
        key,
        "/v1/chat/completions",
        &chat("no-such-model", false),
    )
    .await;
    assert_eq!(response.status(), 404);
    response.bytes().await.unwrap();
}

/// Mock models, a priced one (`echo`), `flaky` (two upstream targets answering 500, then
/// the mock as fallback, breakers that open at the first failure) and `cut` (an upstream
/// stream that breaks after its first content, then the mock as fallback); the test key in
/// team `search`, [`BROKE_KEY`] in team `broke` with a budget no request fits.
fn incidents_config(upstream: &str) -> String {
    let hash = |key: &str| switchyard::auth::hex(&switchyard::auth::hash_key(key));
    let (test, broke) = (hash(TEST_KEY), hash(BROKE_KEY));
    format!(
        r#"
providers:
  up:
    kind: openai
    base_url: {upstream}
    api_key: {UPSTREAM_KEY}
    timeouts: {{connect: 1s, request: 2s, stream_idle: 1s}}
  mock: {{kind: mock, mock: {{chunk_interval: 5ms}}}}
models:
  mock: {{targets: [{{provider: mock}}]}}
  echo: {{targets: [{{provider: mock, model: echo-upstream}}]}}
  flaky:
    targets: [{{provider: up, model: a}}, {{provider: up, model: b}}]
    fallbacks: [mock]
  cut:
    targets: [{{provider: up, model: cut}}]
    fallbacks: [mock]
pricing:
  models:
    echo-upstream: {{input: 1000, output: 2000}}
resilience:
  backoff: {{base: 1ms, max: 1ms}}
  breaker: {{consecutive_failures: 1, cooldown: 60s}}
auth:
  teams:
    search: {{}}
    broke: {{budget: {{daily_usd: 0.000001}}}}
  keys:
    test: {{sha256: {test}, team: search}}
    broke: {{sha256: {broke}, team: broke}}
"#
    )
}

/// A sample for the labelled families a plain workload leaves empty (and so off
/// `/metrics`): a retry, a fallback and breaker trips (`flaky`), a broken stream resumed or
/// given up (`cut`), cost and tokens for a team (`echo`) and feedback on it, a budget
/// refusal, a config reload.
async fn run_incidents(gateway: &TestGateway, config: &str) {
    let chat_path = "/v1/chat/completions";
    let response = post(gateway, TEST_KEY, chat_path, &chat("flaky", false)).await;
    assert_eq!(response.status(), 200, "flaky is served by its fallback");
    response.bytes().await.unwrap();

    let response = post(gateway, TEST_KEY, chat_path, &chat("cut", true)).await;
    assert_eq!(response.status(), 200);
    // Resumed, or ended by an error event: both are counted.
    let _ = response.bytes().await;

    let response = post(gateway, TEST_KEY, chat_path, &chat("echo", false)).await;
    assert_eq!(response.status(), 200);
    let handle = response.headers()["x-switchyard-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    response.bytes().await.unwrap();
    // Feedback on it, once the request is remembered (when its report was made).
    common::eventually("feedback accepted", async || {
        let score = json!({"request_id": handle, "score": "up"});
        let response = post(gateway, TEST_KEY, "/v1/feedback", &score).await;
        (response.status() == 200).then_some(())
    })
    .await;

    let response = post(gateway, BROKE_KEY, chat_path, &chat("echo", false)).await;
    assert_eq!(response.status(), 429, "over the team's budget");
    response.bytes().await.unwrap();

    gateway.replace_config(&format!("{config}\n# reloaded\n"));
    common::eventually("a config reload on /metrics", async || {
        gateway
            .metrics()
            .await
            .contains("switchyard_config_reloads_total{")
            .then_some(())
    })
    .await;
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "Hello"}]})
}

async fn post(gateway: &TestGateway, key: &str, path: &str, body: &Value) -> reqwest::Response {
    common::client()
        .post(format!("{}{path}", gateway.url))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn join<'a>(names: impl IntoIterator<Item = &'a String>) -> String {
    names
        .into_iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

// ---- what the deploy files query

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Every metric family queried by a dashboard in `deploy/grafana/dashboards/` or an alert
/// rule in `deploy/prometheus/alerts.yml`, with the files that query it.
fn queried_families() -> BTreeMap<String, BTreeSet<String>> {
    let mut sources: Vec<(String, String)> = Vec::new();
    let dashboards = deploy_dir().join("grafana/dashboards");
    for entry in std::fs::read_dir(&dashboards).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let dashboard: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let mut queries = Vec::new();
            dashboard_queries(&dashboard, &mut queries);
            sources.extend(queries.into_iter().map(|q| (name.clone(), q)));
        }
    }
    let alerts = std::fs::read_to_string(deploy_dir().join("prometheus/alerts.yml")).unwrap();
    let rules: RuleFile = serde_saphyr::from_str(&alerts).unwrap();
    for rule in rules.groups.into_iter().flat_map(|g| g.rules) {
        sources.push(("alerts.yml".to_owned(), rule.expr));
    }

    let mut families: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (source, query) in sources {
        for family in queried_in(&query) {
            families.entry(family).or_default().insert(source.clone());
        }
    }
    families
}

#[derive(Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Deserialize)]
struct RuleGroup {
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
struct Rule {
    expr: String,
}

/// The PromQL of a Grafana dashboard: each panel target's `expr` and each template
/// variable's `definition` (`label_values(metric, label)`), wherever they are nested.
fn dashboard_queries(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            for (key, field) in fields {
                match (key.as_str(), field) {
                    ("expr" | "definition", Value::String(query)) => out.push(query.clone()),
                    _ => dashboard_queries(field, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| dashboard_queries(item, out)),
        _ => {}
    }
}

/// The metric families a PromQL expression reads: its `switchyard_*` and `gen_ai_*` metric
/// names without the `_bucket`/`_sum`/`_count` of a histogram or the `_total` of a counter.
/// Label names are not metric names, so what is inside `{...}` (matchers), `[...]` (ranges),
/// quotes, and the label lists of `by`, `without`, `on`, `ignoring`, `group_left` and
/// `group_right` is skipped.
fn queried_in(expr: &str) -> BTreeSet<String> {
    const LABEL_LISTS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let bytes = expr.as_bytes();
    let mut families = BTreeSet::new();
    let mut label_list_next = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' | b'\'' | b'`' => i = after_quoted(bytes, i),
            b'{' => i = after_group(bytes, i, b'{', b'}'),
            b'[' => i = after_group(bytes, i, b'[', b']'),
            b'(' if label_list_next => {
                i = after_group(bytes, i, b'(', b')');
                label_list_next = false;
            }
            b if b.is_ascii_alphabetic() || b == b'_' || b == b':' => {
                let start = i;
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || b"_:".contains(&bytes[i]))
                {
                    i += 1;
                }
                let word = &expr[start..i];
                label_list_next = LABEL_LISTS.contains(&word);
                if word.starts_with("switchyard_") || word.starts_with("gen_ai_") {
                    families.insert(family_of(word).to_owned());
                }
            }
            _ => i += 1,
        }
    }
    families
}

/// The index after the string literal that starts at `start` (backslash escapes honoured).
fn after_quoted(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() && bytes[i] != quote {
        i += if bytes[i] == b'\\' { 2 } else { 1 };
    }
    i + 1
}

/// The index after the `close` matching the `open` at `start`, skipping string literals.
fn after_group(bytes: &[u8], start: usize, open: u8, close: u8) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'"' | b'\'' | b'`' => {
                i = after_quoted(bytes, i);
                continue;
            }
            b if b == open => depth += 1,
            b if b == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// A sample or family name without the suffixes the exposition adds to a family's name.
fn family_of(name: &str) -> &str {
    let name = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name);
    name.strip_suffix("_total").unwrap_or(name)
}

/// The families on a `/metrics` page: one `# TYPE <name> <type>` line each, whether or not
/// it has samples yet (a family whose labels have not occurred has none).
fn exposed_families(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|name| family_of(name).to_owned())
        .collect()
}

// ---- a real Prometheus

/// `prometheus` on a free loopback port, scraping one gateway every second and loading the
/// shipped alert rules (it refuses to start on a rule file it cannot load). Killed when
/// dropped.
struct Prometheus {
    child: Child,
    url: String,
    dir: TempDir,
}

impl Prometheus {
    fn start(gateway: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let rules = deploy_dir().join("prometheus/alerts.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
                 rule_files: [{rules:?}]\n\
                 scrape_configs:\n  \
                 - job_name: switchyard\n    \
                   static_configs: [{{targets: [\"{gateway}\"]}}]\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `prometheus` ({e}): install Debian's `prometheus` package \
                     (apt-get install prometheus; .ci/run installs it)"
                )
            });
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    /// Polls the instant `query` until its single value reaches `expected` and returns that
    /// value; fails after [`PROMETHEUS_PATIENCE`] with the last answer and Prometheus's log.
    async fn wait_for(&self, query: &str, expected: f64) -> f64 {
        let mut last = String::from("no answer");
        let polling = async {
            loop {
                match self.query(query).await {
                    Ok(Some(value)) if value >= expected => return value,
                    Ok(value) => last = format!("{value:?}"),
                    Err(error) => last = error,
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        };
        match tokio::time::timeout(PROMETHEUS_PATIENCE, polling).await {
            Ok(value) => value,
            Err(_) => panic!(
                "hung: Prometheus never answered {expected} to `{query}` within \
                 {PROMETHEUS_PATIENCE:?} (last answer: {last}); its log:\n{}",
                self.log()
            ),
        }
    }

    /// The value of an instant query that yields at most one series (`None`: no series).
    async fn query(&self, query: &str) -> Result<Option<f64>, String> {
        let url = format!("{}/api/v1/query?query={}", self.url, url_encode(query));
        let response = common::client()
            .get(url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(body.to_string());
        }
        match body["data"]["result"].as_array().map(Vec::as_slice) {
            Some([]) => Ok(None),
            Some([series]) => series["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .map(Some)
                .ok_or_else(|| body.to_string()),
            _ => Err(body.to_string()),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes everything but unreserved characters, for a query-string value.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---- the parsing above, on its own

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

#[test]
fn histogram_series_and_counters_map_to_their_family() {
    assert_eq!(
        queried_in(
            "histogram_quantile(0.95, sum by (le, model) \
             (rate(switchyard_request_duration_seconds_bucket{model=~\"$model\"}[$__rate_interval])))"
        ),
        set(&["switchyard_request_duration_seconds"])
    );
    assert_eq!(
        queried_in(
            "sum(rate(switchyard_requests_total{status=~\"5..\"}[5m])) \
             / sum(rate(switchyard_requests_total[5m])) > 0.05"
        ),
        set(&["switchyard_requests"])
    );
    assert_eq!(
        queried_in(
            "rate(gen_ai_client_token_usage_sum[5m]) / rate(gen_ai_client_token_usage_count[5m])"
        ),
        set(&["gen_ai_client_token_usage"])
    );
}

#[test]
fn label_names_and_strings_are_not_metric_names() {
    assert_eq!(
        queried_in(
            "sum by (gen_ai_request_model, gen_ai_token_type) \
             (rate(gen_ai_client_token_usage_sum{gen_ai_operation_name=\"chat\"}[5m]))"
        ),
        set(&["gen_ai_client_token_usage"])
    );
    assert_eq!(
        queried_in(
            "sum without(gen_ai_response_model) (gen_ai_client_operation_duration_seconds_count) \
             * on (target) group_left(switchyard_label) max by(target)(switchyard_breaker_state)"
        ),
        set(&[
            "gen_ai_client_operation_duration_seconds",
            "switchyard_breaker_state"
        ])
    );
    assert_eq!(
        queried_in(
            r#"label_replace(switchyard_breaker_state{target=~"a{2}|switchyard_x"}, "switchyard_y", "$1", "target", "(.*)")"#
        ),
        set(&["switchyard_breaker_state"])
    );
    assert_eq!(
        queried_in("label_values(switchyard_tokens_total, team)"),
        set(&["switchyard_tokens"])
    );
}

#[test]
fn dashboard_queries_are_found_wherever_they_are_nested() {
    let dashboard = json!({
        "panels": [
            {"type": "row", "panels": [{"targets": [{"expr": "switchyard_retries_total"}]}]},
            {"targets": [{"expr": "switchyard_fallbacks_total", "legendFormat": "{{reason}}"}]}
        ],
        "templating": {"list": [{"definition": "label_values(switchyard_requests_total, model)"}]}
    });
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    queries.sort();
    assert_eq!(
        queries,
        [
            "label_values(switchyard_requests_total, model)",
            "switchyard_fallbacks_total",
            "switchyard_retries_total"
        ]
    );
}

#[test]
fn families_are_read_from_type_lines_even_without_samples() {
    let scrape = "# HELP switchyard_requests Requests answered.\n\
                  # TYPE switchyard_requests counter\n\
                  switchyard_requests_total{endpoint=\"chat\",model=\"mock\",status=\"200\"} 1\n\
                  # HELP switchyard_breaker_state Circuit breaker state.\n\
                  # TYPE switchyard_breaker_state gauge\n\
                  # TYPE gen_ai_client_token_usage histogram\n\
                  gen_ai_client_token_usage_bucket{le=\"+Inf\"} 2\n\
                  # EOF\n";
    assert_eq!(
        exposed_families(scrape),
        set(&[
            "gen_ai_client_token_usage",
            "switchyard_breaker_state",
            "switchyard_requests"
        ])
    );
}

#[test]
fn query_strings_are_percent_encoded() {
    assert_eq!(
        url_encode("sum(switchyard_requests_total{a=\"b c\"})"),
        "sum%28switchyard_requests_total%7Ba%3D%22b%20c%22%7D%29"
    );
}
