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

/// A request for the model list, which is answered with `"object":"list"` if it is
/// served: the observable that tells whether a hidden request got through.
fn models(extra_headers: &str) -> String {
    format!(
        "GET /v1/models HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TEST_KEY}\r\n{extra_headers}\r\n"
    )
}

/// A chat request with a chunked body written out as `body`.
fn chunked_chat(body: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TEST_KEY}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
    )
}

/// Where a shape's bytes are split into separate writes, with a pause between them.
const PAUSE: &str = "\0pause\0";

/// `hidden` as the next request after each carrier that took the framing scanner the
/// guard once had out of step with hyper (the scanner skipped `hidden` or stopped
/// looking, while hyper parses it as the next request), plus `hidden` alone.
fn bypasses(hidden: &str) -> Vec<(&'static str, String)> {
    let size = CHAT.len();
    // A request that hyper swallows as trailers while the scanner took it for a request
    // whose body is `hidden`.
    let decoy = format!(
        "GET /decoy HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\n\r\n{hidden}",
        hidden.len()
    );
    let shapes = [
        ("plain", hidden.to_owned()),
        (
            "upgrade",
            format!(
                "GET /v1/models/mock HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TEST_KEY}\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n{hidden}"
            ),
        ),
        (
            "CONNECT answered non-2xx",
            format!("CONNECT gw:443 HTTP/1.1\r\nHost: gw:443\r\n\r\n{hidden}"),
        ),
        (
            "chunk size with leading zeros",
            chunked_chat(&format!(
                "{}{size:x}\r\n{CHAT}\r\n0\r\n\r\n{hidden}",
                "0".repeat(20)
            )),
        ),
        // The scanner gave up on a chunk-size line once more than 8 KiB of it had come in
        // without its end. Whatever the reads, 100,000 spaces span one that ends inside
        // them (hyper takes any number).
        (
            "chunk size padded with spaces",
            chunked_chat(&format!(
                "{size:x}{}\r\n{CHAT}\r\n0\r\n\r\n{hidden}",
                " ".repeat(100_000)
            )),
        ),
        // hyper takes at most 16 KiB of extensions per body, so here the read that ends
        // inside the line is brought about by a pause 10,000 bytes into it.
        (
            "long chunk extension",
            chunked_chat(&format!(
                "{size:x};ext={}{PAUSE}{}\r\n{CHAT}\r\n0\r\n\r\n{hidden}",
                "x".repeat(10_000),
                "x".repeat(5_000)
            )),
        ),
        (
            "bare LF after the last chunk, then a decoy",
            chunked_chat(&format!("{size:x}\r\n{CHAT}\r\n0\r\n\n{decoy}")),
        ),
        (
            "trailer ending in a bare LF, then a decoy",
            chunked_chat(&format!(
                "{size:x}\r\n{CHAT}\r\n0\r\nX-Trailer: 1\n\r\n{decoy}"
            )),
        ),
    ];
    shapes.into()
}

/// Writes `bytes` (pausing at each [`PAUSE`]) and returns all the server sent until it
/// closed or reset the connection.
async fn send_all_read_all(gateway: &TestGateway, bytes: &str) -> String {
    let mut stream = TcpStream::connect(gateway.gateway.addr).await.unwrap();
    for (i, piece) in bytes.split(PAUSE).enumerate() {
        if i > 0 {
            // Long enough for the server to read what came before on its own. Only a
            // way to split its reads: no outcome depends on it.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        // The server may close the connection before taking everything (it answered an
        // earlier request with a 400 and `Connection: close`): what it sent is what
        // counts.
        if stream.write_all(piece.as_bytes()).await.is_err() {
            break;
        }
    }
    let mut received = Vec::new();
    let closed = stream.read_to_end(&mut received);
    // A reset (unread bytes left on the server's side) ends the connection too.
    let _ = hang_guard("the server closes the connection", closed).await;
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn each_bypass_shape_gets_a_hidden_request_to_hyper() {
    // Without a length conflict the hidden request is served: each carrier really makes
    // hyper parse it as the next request, so the test below is not vacuous.
    let gateway = gateway().await;
    for (shape, bytes) in bypasses(&models("Connection: close\r\n")) {
        let response = send_all_read_all(&gateway, &bytes).await;
        assert!(
            response.contains(r#""object":"list""#),
            "{shape}: the hidden request is not served:\n{response}"
        );
    }
}

#[tokio::test]
async fn a_smuggled_request_is_never_served_whatever_precedes_it() {
    let gateway = gateway().await;
    let smuggled = models("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n") + "0\r\n\r\n";
    let mut served = Vec::new();
    for (shape, bytes) in bypasses(&smuggled) {
        let response = send_all_read_all(&gateway, &bytes).await;
        // The 400 is for the smuggled request or for an earlier chunked one; either way
        // it is the last answer on the connection, and the model list is never sent.
        let rejected = response.rfind("HTTP/1.1 400 Bad Request\r\n");
        let last = response.rfind("HTTP/1.1 ");
        let refused = rejected.is_some()
            && rejected == last
            && response.contains("Transfer-Encoding and Content-Length")
            && !response.contains(r#""object":"list""#);
        if !refused {
            served.push(format!("{shape}:\n{response}"));
        }
    }
    assert!(
        served.is_empty(),
        "smuggled past the guard:\n{}",
        served.join("\n\n")
    );
}
