//! Byte-level guards on an accepted connection, in [`ConnectionGuard`]:
//!
//! - A connection must send its first byte within the header read timeout. (hyper's own
//!   header timeout takes over from there, but the HTTP/1-or-2 detection before it has no
//!   deadline, so a silent client would otherwise hold its socket forever.)
//! - HTTP/1 requests that carry both `Transfer-Encoding` and `Content-Length` are rejected.
//!
//! Such a request is the classic request-smuggling shape (RFC 9112 §6.3 lets a server
//! reject it). hyper resolves the conflict on its own, letting Transfer-Encoding win and
//! dropping Content-Length before the request reaches any service, so the conflict is only
//! visible in the bytes. The guard wraps the socket and watches the bytes on their way to
//! hyper (without holding or copying them, except a request head split across reads),
//! following HTTP/1 message framing to find every request head. When a head has both
//! headers it records which request of the connection it is; the connection's service
//! answers that request with a 400 instead of routing it ([`LengthConflicts`]), and hyper
//! closes the connection after it, as it always does for such a request.
//!
//! It only watches; hyper still parses everything. What it cannot follow (HTTP/2,
//! upgrades, framing hyper will reject anyway) makes it step aside.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::response::Response;
use http::{HeaderValue, Request, header};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tower_http::request_id::MakeRequestId;

use super::request_id::MakeId;
use crate::error::GatewayError;
use crate::headers::REQUEST_ID;

/// Longer heads than this are hyper's to reject (its own buffer limit is smaller).
const MAX_HEAD: usize = 512 * 1024;
/// Chunk-size and trailer lines longer than this are not something we follow.
const MAX_LINE: usize = 8 * 1024;
const MAX_HEADERS: usize = 128;
const NONE: u64 = u64::MAX;

/// Which request of a connection (counting from 0) had conflicting length headers.
/// Shared by the connection's guard, which finds it, and its service, which counts the
/// requests hyper hands it in order.
#[derive(Debug)]
pub struct LengthConflicts {
    conflict_at: AtomicU64,
    served: AtomicU64,
}

impl Default for LengthConflicts {
    fn default() -> Self {
        Self {
            conflict_at: AtomicU64::new(NONE),
            served: AtomicU64::new(0),
        }
    }
}

impl LengthConflicts {
    /// Called once per request, in order: whether this one must be rejected.
    pub fn next_request_conflicts(&self) -> bool {
        let index = self.served.fetch_add(1, Ordering::Relaxed);
        index == self.conflict_at.load(Ordering::Relaxed)
    }

    fn record(&self, index: u64) {
        // Only the first matters: hyper closes the connection after that request.
        let _ =
            self.conflict_at
                .compare_exchange(NONE, index, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// The answer to a request with conflicting length headers.
pub fn rejection<B>(request: &Request<B>) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID)
        .cloned()
        .or_else(|| {
            MakeId
                .make_request_id(request)
                .map(|id| id.into_header_value())
        })
        .unwrap_or(HeaderValue::from_static("unknown"));
    let id = String::from_utf8_lossy(id.as_bytes());
    let mut response = GatewayError::AmbiguousLength.into_http(&id);
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

pin_project! {
    pub struct ConnectionGuard<T> {
        #[pin]
        inner: T,
        // Until the first byte arrives.
        first_byte_deadline: Option<Pin<Box<Sleep>>>,
        scanner: Scanner,
        conflicts: Arc<LengthConflicts>,
    }
}

impl<T> ConnectionGuard<T> {
    pub fn new(inner: T, first_byte_within: Duration, conflicts: Arc<LengthConflicts>) -> Self {
        Self {
            inner,
            first_byte_deadline: Some(Box::pin(tokio::time::sleep(first_byte_within))),
            scanner: Scanner::default(),
            conflicts,
        }
    }
}

impl<T: AsyncRead> AsyncRead for ConnectionGuard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let Poll::Ready(read) = this.inner.poll_read(cx, buf) else {
            if let Some(deadline) = this.first_byte_deadline {
                ready!(deadline.as_mut().poll(cx));
                let silent = "no request within the header read timeout";
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, silent)));
            }
            return Poll::Pending;
        };
        read?;
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            *this.first_byte_deadline = None;
        }
        if let Some(index) = this.scanner.feed(new) {
            this.conflicts.record(index);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite> AsyncWrite for ConnectionGuard<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// Where the byte stream is in HTTP/1 message framing.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum State {
    #[default]
    Head,
    Body {
        remaining: u64,
    },
    ChunkSize,
    ChunkData {
        remaining: u64,
    },
    ChunkEnd,
    Trailers,
    /// Not HTTP/1 framing we follow: stop looking.
    Off,
}

/// Follows request framing across reads. `partial` holds a head or line that has started
/// but not ended yet.
#[derive(Debug, Default)]
struct Scanner {
    state: State,
    partial: Vec<u8>,
    heads: u64,
}

/// A head or a line, taken from the stream when complete.
enum Unit<R> {
    Complete(R),
    Incomplete,
    TooLong,
}

impl Scanner {
    /// Follows `data`; returns the index of a request whose head has conflicting length
    /// headers, if one ends in it.
    fn feed(&mut self, mut data: &[u8]) -> Option<u64> {
        while !data.is_empty() {
            match self.state {
                State::Off => return None,
                State::Body { remaining } | State::ChunkData { remaining } => {
                    let take = remaining.min(data.len() as u64);
                    data = &data[take as usize..];
                    self.state = match (self.state, remaining - take) {
                        (State::Body { .. }, 0) => State::Head,
                        (State::Body { .. }, left) => State::Body { remaining: left },
                        (_, 0) => State::ChunkEnd,
                        (_, left) => State::ChunkData { remaining: left },
                    };
                }
                State::Head => {
                    if self.partial.is_empty() {
                        // Empty lines before a request line are allowed and ignored.
                        let skip = data
                            .iter()
                            .take_while(|b| matches!(b, b'\r' | b'\n'))
                            .count();
                        data = &data[skip..];
                        if data.is_empty() {
                            break;
                        }
                    }
                    match self.take(&mut data, head_end, MAX_HEAD, check_head) {
                        Unit::Complete(Head::Conflict) => {
                            self.state = State::Off;
                            return Some(self.heads);
                        }
                        Unit::Complete(Head::Next(next)) => {
                            self.heads += 1;
                            self.state = next;
                        }
                        Unit::Complete(Head::Unknown) | Unit::TooLong => self.state = State::Off,
                        Unit::Incomplete => {}
                    }
                }
                current @ (State::ChunkSize | State::ChunkEnd | State::Trailers) => {
                    let next = |line: &[u8]| after_line(current, line);
                    match self.take(&mut data, line_end, MAX_LINE, next) {
                        Unit::Complete(next) => self.state = next,
                        Unit::TooLong => self.state = State::Off,
                        Unit::Incomplete => {}
                    }
                }
            }
        }
        None
    }

    /// Takes the next unit (a head or a line) from `data`, joining it with what an earlier
    /// read left in `partial`, and hands it to `eval` once complete.
    fn take<R>(
        &mut self,
        data: &mut &[u8],
        find_end: fn(&[u8]) -> Option<usize>,
        max: usize,
        eval: impl FnOnce(&[u8]) -> R,
    ) -> Unit<R> {
        if self.partial.is_empty() {
            if let Some(end) = find_end(data) {
                let result = eval(&data[..end]);
                *data = &data[end..];
                return Unit::Complete(result);
            }
        } else {
            let before = self.partial.len();
            self.partial.extend_from_slice(data);
            if let Some(end) = find_end(&self.partial) {
                let result = eval(&self.partial[..end]);
                *data = &data[end - before..];
                self.partial.clear();
                return Unit::Complete(result);
            }
            *data = &[];
            return if self.partial.len() > max {
                Unit::TooLong
            } else {
                Unit::Incomplete
            };
        }
        if data.len() > max {
            return Unit::TooLong;
        }
        self.partial.extend_from_slice(data);
        *data = &[];
        Unit::Incomplete
    }
}

/// The state after a complete chunk-size, chunk-end or trailer line.
fn after_line(current: State, line: &[u8]) -> State {
    match current {
        State::ChunkSize => match httparse::parse_chunk_size(line) {
            Ok(httparse::Status::Complete((_, 0))) => State::Trailers,
            Ok(httparse::Status::Complete((_, size))) => State::ChunkData { remaining: size },
            _ => State::Off,
        },
        State::ChunkEnd => State::ChunkSize,
        _ if line == b"\r\n" || line == b"\n" => State::Head,
        _ => State::Trailers,
    }
}

/// Length of a line including its `\n`.
fn line_end(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|b| *b == b'\n').map(|i| i + 1)
}

/// Length of a request head including its closing empty line.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut previous_newline: Option<usize> = None;
    for (i, byte) in buf.iter().enumerate() {
        if *byte != b'\n' {
            continue;
        }
        if let Some(p) = previous_newline {
            let between = &buf[p + 1..i];
            if between.is_empty() || between == b"\r" {
                return Some(i + 1);
            }
        }
        previous_newline = Some(i);
    }
    None
}

enum Head {
    Conflict,
    /// Valid: what follows it.
    Next(State),
    /// Something hyper will judge (malformed, HTTP/2 preface, an upgrade).
    Unknown,
}

fn check_head(head: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    if !matches!(request.parse(head), Ok(status) if status.is_complete()) {
        return Head::Unknown;
    }
    let headers = &*request.headers;
    let find = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
    };
    let transfer_encoding = find("transfer-encoding").next_back();
    let content_length = find("content-length").next();
    if transfer_encoding.is_some() && content_length.is_some() {
        return Head::Conflict;
    }
    if request.method == Some("CONNECT") || find("upgrade").next().is_some() {
        return Head::Unknown;
    }
    if let Some(te) = transfer_encoding {
        let chunked_last = header_text(te.value)
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        return if chunked_last {
            Head::Next(State::ChunkSize)
        } else {
            Head::Unknown
        };
    }
    match content_length.map(|cl| header_text(cl.value).and_then(|v| v.parse::<u64>().ok())) {
        None | Some(Some(0)) => Head::Next(State::Head),
        Some(Some(length)) => Head::Next(State::Body { remaining: length }),
        Some(None) => Head::Unknown,
    }
}

fn header_text(value: &[u8]) -> Option<&str> {
    std::str::from_utf8(value).ok().map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns the conflict found, if any, and
    /// the final state.
    fn run(input: &[u8], step: usize) -> (Option<u64>, State) {
        let mut scanner = Scanner::default();
        let conflict = input.chunks(step).find_map(|piece| scanner.feed(piece));
        (conflict, scanner.state)
    }

    const CL: &[u8] =
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    const CHUNKED: &[u8] = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n";
    const BOTH: &[u8] =
        b"POST /a HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    #[test]
    fn follows_well_framed_pipelines_in_any_split() {
        let pipeline = [CL, CHUNKED, b"\r\nGET /v1/models HTTP/1.1\r\n\n"].concat();
        for step in [1, 2, 3, 7, 64, 4096] {
            assert_eq!(run(&pipeline, step), (None, State::Head), "step {step}");
        }
    }

    #[test]
    fn finds_a_conflicting_head_after_valid_requests() {
        let pipeline = [CL, CHUNKED, BOTH].concat();
        for step in [1, 5, 4096] {
            assert_eq!(run(&pipeline, step), (Some(2), State::Off), "step {step}");
        }
    }

    #[test]
    fn steps_aside_for_what_it_does_not_follow() {
        assert_eq!(
            run(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nbinary", 4096),
            (None, State::Off)
        );
        let upgrade =
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x05hello";
        assert_eq!(run(upgrade, 3), (None, State::Off));
    }

    #[test]
    fn counts_requests_in_order() {
        let conflicts = LengthConflicts::default();
        conflicts.record(1);
        assert!(!conflicts.next_request_conflicts());
        assert!(conflicts.next_request_conflicts());
        assert!(!conflicts.next_request_conflicts());
    }
}
