//! Shared test support: a gateway started from a config file in a temp dir on
//! 127.0.0.1:0, an emulated upstream, an SSE reader, log capture, and the hang guard that
//! bounds every wait.
//!
//! Integration tests assert what happened, never how long it took: a timing is proven by
//! paused-time unit tests in `src/`. The only time limit here is [`HANG`], which catches a
//! test that would otherwise wait forever.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of this module"
)]

pub mod native;
pub mod process;
pub mod redis;
pub mod scenario;
pub mod sdk;
pub mod upstream;

use std::cell::RefCell;
use std::fmt::Display;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use serde_json::Value;
use switchyard::config::ConfigSource;
use switchyard::{Gateway, GatewayOptions};
use tempfile::TempDir;
use tracing::Level;
use tracing_subscriber::filter::dynamic_filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

/// The hang guard: how long a test waits for anything (an answer, a stream's end, an
/// eventual state) before it fails as hung. Generous on purpose: it says nothing about how
/// fast the gateway is, only that it does not wait forever.
pub const HANG: Duration = Duration::from_secs(10);

/// Awaits `future`, failing the test as hung (naming `what`) if it takes longer than
/// [`HANG`].
pub async fn hang_guard<T>(what: impl Display, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(HANG, future).await {
        Ok(value) => value,
        Err(_) => panic!("hung: {what} (nothing after {HANG:?})"),
    }
}

/// Polls `check` (every 20 ms) until it returns a value, for a state that comes about
/// eventually; fails the test as hung (naming `what`) after [`HANG`].
pub async fn eventually<T>(what: impl Display, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    hang_guard(&what, async {
        loop {
            if let Some(value) = check().await {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// The key the upstream expects from the gateway; clients never send it.
pub const UPSTREAM_KEY: &str = "sk-upstream-secret-0123456789";
/// The virtual key test clients send. `TestGateway` adds it to configs without an `auth`
/// section.
pub const TEST_KEY: &str = "sk-sy-test-key-0123456789abcdef";

/// The `auth` section that accepts `TEST_KEY` (and, with `extra`, more keys).
pub fn auth_section(extra: &str) -> String {
    let hash = switchyard::auth::hex(&switchyard::auth::hash_key(TEST_KEY));
    format!("auth:\n  keys:\n    test: {{sha256: {hash}}}\n{extra}")
}

/// A config with one OpenAI-compatible provider `up` at `base_url` serving the public
/// model `gpt-test` as `upstream-model`, plus the built-in mock.
pub fn config_for(base_url: &str) -> String {
    format!(
        r#"
server:
  max_body_size: 64KiB
  body_idle_timeout: 500ms
  shutdown_grace: 5s
providers:
  up:
    kind: openai
    base_url: {base_url}
    api_key: {UPSTREAM_KEY}
    timeouts: {{connect: 1s, request: 2s, stream_idle: 1s}}
  mock:
    kind: mock
    mock: {{chunk_interval: 20ms}}
models:
  gpt-test:
    targets: [{{provider: up, model: upstream-model}}]
  embed-test:
    targets: [{{provider: up, model: upstream-embed}}]
  mock:
    targets: [{{provider: mock}}]
"#
    )
}

/// An upstream answering with `script`, and a gateway on [`config_for`] it.
pub async fn gateway_for(
    script: impl Fn(&upstream::Received) -> upstream::Behavior + Send + Sync + 'static,
) -> (upstream::Upstream, TestGateway) {
    let upstream = upstream::Upstream::start(script).await;
    let gateway = TestGateway::start(&config_for(&upstream.base_url)).await;
    (upstream, gateway)
}

/// `providers`, `models` and `pricing` for the model `echo`: the mock echoing the prompt
/// (as `echo-upstream`) after `latency`, priced at $1 per 1k prompt tokens and $2 per 1k
/// completion tokens.
pub fn echo_config(latency: &str, chunk_interval: &str) -> String {
    format!(
        r#"
providers:
  mock: {{kind: mock, mock: {{latency: {latency}, chunk_interval: {chunk_interval}}}}}
models:
  echo: {{targets: [{{provider: mock, model: echo-upstream}}]}}
pricing:
  models:
    echo-upstream: {{input: 1000, output: 2000}}
"#
    )
}

pub struct TestGateway {
    pub gateway: Gateway,
    pub url: String,
    pub config_path: PathBuf,
    _dir: TempDir,
}

impl TestGateway {
    pub async fn start(config: &str) -> Self {
        init_logging();
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("switchyard.yaml");
        std::fs::write(&config_path, with_test_key(config)).unwrap();
        let gateway = Gateway::start(GatewayOptions {
            config: ConfigSource::File(config_path.clone()),
            listen: Some("127.0.0.1:0".parse().unwrap()),
        })
        .await
        .expect("gateway starts");
        Self {
            url: format!("http://{}", gateway.addr),
            gateway,
            config_path,
            _dir: dir,
        }
    }

    /// Replaces the config file the way an editor does: write elsewhere, then rename.
    pub fn replace_config(&self, text: &str) {
        let temp = self.config_path.with_extension("tmp");
        let mut file = std::fs::File::create(&temp).unwrap();
        file.write_all(with_test_key(text).as_bytes()).unwrap();
        file.sync_all().unwrap();
        std::fs::rename(&temp, &self.config_path).unwrap();
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        client()
            .post(format!("{}{path}", self.url))
            .bearer_auth(TEST_KEY)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn chat(&self, body: &Value) -> reqwest::Response {
        self.post("/v1/chat/completions", body).await
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        client()
            .get(format!("{}{path}", self.url))
            .bearer_auth(TEST_KEY)
            .send()
            .await
            .unwrap()
    }

    /// The gateway's `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.unwrap()
    }
}

/// The config with the test key's `auth` section appended, unless it has its own.
fn with_test_key(config: &str) -> String {
    let has_auth = config.starts_with("auth:") || config.contains("\nauth:");
    if has_auth {
        config.to_owned()
    } else {
        format!("{config}\n{}", auth_section(""))
    }
}

/// The `x-request-id` the gateway answered with.
pub fn request_id(response: &reqwest::Response) -> String {
    response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Reads SSE `data:` payloads from a response as they arrive.
pub struct SseReader {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: BytesMut,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            body: response.bytes_stream().boxed(),
            buffer: BytesMut::new(),
        }
    }

    /// The next event's data, or `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(end) = find(&self.buffer, b"\n\n") {
                let frame = self.buffer.split_to(end + 2);
                let text = std::str::from_utf8(&frame).unwrap().trim_end().to_owned();
                if text.starts_with(':') {
                    continue; // a comment, as SSE clients ignore it
                }
                let data = text.strip_prefix("data: ").expect("a data frame");
                return Some(data.to_owned());
            }
            match self.body.next().await {
                Some(Ok(bytes)) => self.buffer.extend_from_slice(&bytes),
                Some(Err(e)) => panic!("stream failed: {e}"),
                None => {
                    assert!(self.buffer.is_empty(), "partial frame at the end");
                    return None;
                }
            }
        }
    }

    pub async fn all(mut self) -> Vec<String> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The text content of a stream's chunks, concatenated.
pub fn content_of(events: &[String]) -> String {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// Captures this thread's log events as JSON lines. Use with a current-thread runtime
/// (the `#[tokio::test]` default) so the gateway's tasks log on this thread.
///
/// One global subscriber routes each event to the buffer of the thread that logged it.
/// (Thread-scoped subscribers would be simpler, but tracing caches each call site's
/// interest process-wide, and a call site first hit by a test without a subscriber can stay
/// silenced for the others.)
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

thread_local! {
    static CAPTURE: RefCell<Option<Logs>> = const { RefCell::new(None) };
}

/// Installs the routing subscriber; every test calls this before starting anything.
pub fn init_logging() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        // Dynamic: decided per event, never cached per call site.
        let capturing = dynamic_filter_fn(|meta, _| {
            *meta.level() <= Level::DEBUG && CAPTURE.with(|c| c.borrow().is_some())
        });
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .with_writer(ThreadWriter)
            .with_filter(capturing);
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer));
    });
}

/// Stops capturing when dropped.
pub struct CaptureGuard;

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        CAPTURE.with(|c| c.borrow_mut().take());
    }
}

impl Logs {
    pub fn capture() -> (Self, CaptureGuard) {
        init_logging();
        let logs = Self::default();
        CAPTURE.with(|c| *c.borrow_mut() = Some(logs.clone()));
        (logs, CaptureGuard)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The access log line of one request.
    pub fn access(&self, request_id: &str) -> Option<Value> {
        self.text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| {
                v["target"] == "switchyard::access" && v["fields"]["request_id"] == request_id
            })
            .map(|v| v["fields"].clone())
    }

    /// Waits for a request's access line: a request logs when it is over (a stream when
    /// it ends).
    pub async fn wait_access(&self, request_id: &str) -> Value {
        let what = format!("the access log line of {request_id}");
        eventually(what, async || self.access(request_id)).await
    }
}

struct ThreadWriter;

impl<'a> MakeWriter<'a> for ThreadWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter(CAPTURE.with(|c| c.borrow().as_ref().map(|logs| logs.0.clone())))
    }
}

pub struct LogWriter(Option<Arc<Mutex<Vec<u8>>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(buffer) = &self.0 {
            buffer.lock().unwrap().extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
