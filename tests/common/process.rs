//! The gateway binary as a separate process on a free port, its JSON log lines kept for
//! the test to read, stopped when dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::Value;

pub struct GatewayProcess {
    pub child: Child,
    pub url: String,
    /// The admin listener, when the config has one.
    pub admin_url: Option<String>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl GatewayProcess {
    pub fn start(config: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env("SWITCHYARD_LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let mut admin_url = None;
        let addr = loop {
            let line = lines.next().expect("the gateway logs its address").unwrap();
            logs.lock().unwrap().push(line.clone());
            let entry: Value = serde_json::from_str(&line).unwrap_or_default();
            let fields = &entry["fields"];
            match (fields["message"].as_str(), fields["addr"].as_str()) {
                (Some("admin API listening"), Some(addr)) => {
                    admin_url = Some(format!("http://{addr}"))
                }
                (Some("switchyard listening"), Some(addr)) => break addr.to_owned(),
                _ => {}
            }
        };
        // Keep reading so the process never blocks on a full pipe.
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            url: format!("http://{addr}"),
            admin_url,
            logs,
        }
    }

    /// Every log line so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The value of a metric line (its name with labels) on `/metrics`.
    pub async fn metric(&self, line_start: &str) -> Option<f64> {
        let text = super::client()
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }
}

/// Two gateway processes on one config file.
pub struct Replicas {
    pub a: GatewayProcess,
    pub b: GatewayProcess,
    _dir: tempfile::TempDir,
}

impl Replicas {
    pub fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, config).unwrap();
        Self {
            a: GatewayProcess::start(&path),
            b: GatewayProcess::start(&path),
            _dir: dir,
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
