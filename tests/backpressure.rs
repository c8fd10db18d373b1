//! A client that stops reading a stream holds the gateway back: what the gateway keeps for
//! it is bounded, whatever the answer's length. Checked on the gateway binary's resident
//! memory, with the built-in mock as the provider (the embedded default).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use common::process::GatewayProcess;
use common::{TEST_KEY, auth_section};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENTS: usize = 50;
/// Each prompt is echoed back by the mock, a word a chunk.
const PROMPT_BYTES: usize = 300 * 1024;
/// What the gateway may grow by for all of them: before the mock honoured backpressure,
/// it made every chunk up front and grew by about 670 MB.
const GROWTH_LIMIT_KB: u64 = 100 * 1024;

fn resident_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Sends a streamed chat request whose prompt the mock echoes, reads the response head
/// (the stream has started), and then reads nothing more.
async fn stalled_reader(addr: &str) -> TcpStream {
    let body = serde_json::json!({
        "model": "mock", "stream": true, "max_tokens": PROMPT_BYTES,
        "messages": [{"role": "user", "content": "echo ".repeat(PROMPT_BYTES / 5)}],
    })
    .to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TEST_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut start = [0u8; 12];
    common::hang_guard("the stream starts", stream.read_exact(&mut start))
        .await
        .unwrap();
    assert_eq!(&start, b"HTTP/1.1 200");
    stream
}

#[tokio::test]
async fn clients_that_stop_reading_cost_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    let yaml = format!(
        "providers:\n  mock: {{kind: mock}}\nmodels:\n  mock: {{targets: [{{provider: mock}}]}}\n{}",
        auth_section("")
    );
    std::fs::write(&config, yaml).unwrap();
    let gateway = GatewayProcess::start(&config);
    let addr = gateway.url.trim_start_matches("http://").to_owned();
    let pid = gateway.child.id();
    // One request first, so the baseline includes what any request warms up.
    drop(stalled_reader(&addr).await);
    let baseline = resident_kb(pid);
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(stalled_reader(&addr).await);
    }
    // Give the gateway every chance to produce what nobody reads.
    let mut peak = 0;
    for _ in 0..20 {
        peak = peak.max(resident_kb(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < GROWTH_LIMIT_KB,
        "{CLIENTS} stalled streams grew the gateway by {growth} KB (baseline {baseline} KB)"
    );
    drop(clients);
}
