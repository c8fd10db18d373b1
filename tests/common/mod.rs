//! Shared test support: a gateway started from a config file in a temp dir on
//! 127.0.0.1:0, an emulated upstream, an SSE reader and log capture.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of this module"
)]

pub mod upstream;

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use serde_json::Value;
use switchyard::config::ConfigSource;
use switchyard::{Gateway, GatewayOptions};
use tempfile::TempDir;
use tracing_subscriber::fmt::MakeWriter;

/// The key the upstream expects from the gateway; clients never send it.
pub const UPSTREAM_KEY: &str = "sk-upstream-secret-0123456789";

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

pub struct TestGateway {
    pub gateway: Gateway,
    pub url: String,
    pub config_path: PathBuf,
    _dir: TempDir,
}

impl TestGateway {
    pub async fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("switchyard.yaml");
        std::fs::write(&config_path, config).unwrap();
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
        file.write_all(text.as_bytes()).unwrap();
        file.sync_all().unwrap();
        std::fs::rename(&temp, &self.config_path).unwrap();
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        client()
            .post(format!("{}{path}", self.url))
            .header("authorization", "Bearer sk-client-key-must-not-travel")
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
            .send()
            .await
            .unwrap()
    }
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
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Self::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(logs.clone())
            .finish();
        (logs.clone(), tracing::subscriber::set_default(subscriber))
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

    /// Waits (up to 2 s) for a request's access line: streams log when they end.
    pub async fn wait_access(&self, request_id: &str) -> Value {
        for _ in 0..200 {
            if let Some(line) = self.access(request_id) {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no access log line for {request_id}:\n{}", self.text());
    }
}

impl<'a> MakeWriter<'a> for Logs {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter(self.0.clone())
    }
}

pub struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
