//! HTTP hygiene at the byte level, with raw TCP clients: ambiguous framing, slow clients,
//! pipelining.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use common::{TEST_KEY, TestGateway, config_for, hang_guard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CHAT: &str = r#"{"model":"mock","messages":[{"role":"user","content":"hi"}]}"#;

async fn gateway() -> TestGateway {
    let config = config_for("http://127.0.0.1:9/v1")
        .replace("server:\n", "server:\n  header_read_timeout: 1s\n");
    TestGateway::start(&config).await
}

/// Writes `request` and reads until the server closes the connection (bounded).
async fn exchange(gateway: &TestGateway, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(gateway.gateway.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let response = read_until_closed(stream).await.unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

/// Reads until the server closes the connection: what it sent, or the error (a reset)
/// that ended it.
async fn read_until_closed(mut stream: TcpStream) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let closed = stream.read_to_end(&mut bytes);
    hang_guard("the server closes the connection", closed).await?;
    Ok(bytes)
}

fn post(body: &str, extra_headers: &str, close: bool) -> String {
    let connection = if close { "Connection: close\r\n" } else { "" };
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TEST_KEY}\r\nContent-Type: application/json\r\n{extra_headers}{connection}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn transfer_encoding_with_content_length_is_rejected() {
    let gateway = gateway().await;
    let chunked = format!("{:x}\r\n{CHAT}\r\n0\r\n\r\n", CHAT.len());
    let smuggle = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nX-Request-Id: smuggle-1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}"
    );
    let response = exchange(&gateway, smuggle.as_bytes()).await;
    assert!(
        response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{response}"
    );
    assert!(response.contains("x-request-id: smuggle-1"), "{response}");
    assert!(
        response.contains(r#""code":"invalid_request""#),
        "{response}"
    );
    assert!(
        response.contains("Transfer-Encoding and Content-Length"),
        "{response}"
    );

    // The same after a good request on the same connection: the first is answered, the
    // second rejected, and nothing of it reaches the pipeline.
    let pipelined = [post(CHAT, "", false), smuggle].concat();
    let response = exchange(&gateway, pipelined.as_bytes()).await;
    let first = response
        .find("HTTP/1.1 200 OK")
        .expect("the good request is served");
    let second = response
        .find("HTTP/1.1 400 Bad Request")
        .expect("the ambiguous one is rejected");
    assert!(first < second, "{response}");
    assert_eq!(response.matches("HTTP/1.1").count(), 2, "{response}");
}

#[tokio::test]
async fn well_framed_pipelined_and_chunked_requests_are_served() {
    let gateway = gateway().await;
    let chunked = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TEST_KEY}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        &CHAT[..5],
        CHAT.len() - 5,
        &CHAT[5..]
    );
    let pipelined = [post(CHAT, "", false), chunked, post(CHAT, "", true)].concat();
    let response = exchange(&gateway, pipelined.as_bytes()).await;
    assert_eq!(response.matches("HTTP/1.1 200 OK").count(), 3, "{response}");
}

#[tokio::test]
async fn a_stalled_body_times_out_with_408() {
    let gateway = gateway().await;
    let mut stream = TcpStream::connect(gateway.gateway.addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TEST_KEY}\r\nContent-Length: 100\r\n\r\n{{\"model\":"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = vec![0u8; 4096];
    // body_idle_timeout is 500 ms in the test config.
    let n = hang_guard("the 408", stream.read(&mut response))
        .await
        .unwrap();
    let response = String::from_utf8_lossy(&response[..n]);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("request_timeout"), "{response}");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_head_is_disconnected() {
    let gateway = gateway().await;
    let mut stream = TcpStream::connect(gateway.gateway.addr).await.unwrap();
    stream
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n")
        .await
        .unwrap();
    // header_read_timeout is 1 s: the server gives up on this connection.
    read_until_closed(stream).await.ok();
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_disconnected() {
    let gateway = gateway().await;
    let stream = TcpStream::connect(gateway.gateway.addr).await.unwrap();
    // A silent connection is closed after the header read timeout.
    read_until_closed(stream).await.ok();
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let gateway = gateway().await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = client
        .post(format!("{}/v1/chat/completions", gateway.url))
        .bearer_auth(TEST_KEY)
        .header("content-type", "application/json")
        .body(CHAT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
}
