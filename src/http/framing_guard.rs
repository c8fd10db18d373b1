//! Rejects HTTP/1 requests that carry both `Transfer-Encoding` and `Content-Length`.
//!
//! Such a request is the classic request-smuggling shape (RFC 9112 §6.3 allows a server to
//! reject it). hyper resolves the conflict on its own, letting Transfer-Encoding win and
//! dropping Content-Length before the request reaches any service, so the conflict is only
//! visible in the bytes. This wrapper sits between the socket and hyper and follows
//! HTTP/1 message framing: a request head is held back until it is complete and checked;
//! bodies (fixed-length or chunked) pass straight through. On a conflicting head it stops
//! feeding hyper, which then closes the idle connection, and answers 400 itself before
//! the socket shuts down.
//!
//! It only watches; hyper still parses everything. Anything it cannot follow (HTTP/2,
//! upgrades, malformed framing that hyper will reject anyway) makes it step aside.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::GatewayError;

/// Longer heads than this are hyper's to reject (its own buffer limit is smaller).
const MAX_HEAD: usize = 512 * 1024;
/// Chunk-size and trailer lines longer than this are not something we follow.
const MAX_LINE: usize = 8 * 1024;
const MAX_HEADERS: usize = 128;

pin_project! {
    pub struct FramingGuard<T> {
        #[pin]
        inner: T,
        incoming: BytesMut,
        framing: Framing,
        rejection: Option<Bytes>,
    }
}

impl<T> FramingGuard<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            incoming: BytesMut::new(),
            framing: Framing::default(),
            rejection: None,
        }
    }
}

impl<T: AsyncRead> AsyncRead for FramingGuard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        loop {
            if this.framing.releasable > 0 {
                let n = this.framing.releasable.min(out.remaining());
                out.put_slice(&this.incoming[..n]);
                this.incoming.advance(n);
                this.framing.released(n);
                return Poll::Ready(Ok(()));
            }
            if let State::Rejected { request_id } = &this.framing.state {
                // Looks like a clean end of input to hyper: it closes the idle connection,
                // and `poll_shutdown` sends the rejection first.
                this.rejection
                    .get_or_insert_with(|| rejection_response(request_id.as_deref()));
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [MaybeUninit::<u8>::uninit(); 8192];
            let mut buf = ReadBuf::uninit(&mut chunk);
            ready!(this.inner.as_mut().poll_read(cx, &mut buf))?;
            if buf.filled().is_empty() {
                // The client is done: hand over whatever is left and let hyper judge it.
                this.framing.releasable = this.incoming.len();
                if this.incoming.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.incoming.extend_from_slice(buf.filled());
            this.framing.scan(this.incoming);
        }
    }
}

impl<T: AsyncWrite> AsyncWrite for FramingGuard<T> {
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
        let mut this = self.project();
        while let Some(response) = this.rejection.as_mut().filter(|r| !r.is_empty()) {
            let written = ready!(this.inner.as_mut().poll_write(cx, response))?;
            if written == 0 {
                break;
            }
            response.advance(written);
        }
        ready!(this.inner.as_mut().poll_flush(cx))?;
        this.inner.poll_shutdown(cx)
    }
}

fn rejection_response(request_id: Option<&str>) -> Bytes {
    let generated;
    let id = match request_id {
        Some(id) => id,
        None => {
            generated = format!("req_{:016x}{:08x}", fastrand::u64(..), fastrand::u32(..));
            &generated
        }
    };
    let body = GatewayError::AmbiguousLength.body(id);
    let head = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {id}\r\nx-should-retry: false\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let mut response = BytesMut::from(head.as_bytes());
    response.extend_from_slice(&body);
    response.freeze()
}

/// Where the byte stream is in HTTP/1 message framing. Offsets are into the guard's
/// `incoming` buffer.
#[derive(Debug, Default)]
struct Framing {
    state: State,
    /// Bytes from the front of the buffer that have been checked and may go to hyper.
    releasable: usize,
}

#[derive(Debug, PartialEq)]
enum State {
    /// Waiting for a request head that starts at this offset.
    Head {
        start: usize,
    },
    Body {
        remaining: u64,
    },
    ChunkSize {
        line: usize,
    },
    ChunkData {
        remaining: u64,
    },
    ChunkEnd {
        line: usize,
    },
    Trailers {
        line: usize,
    },
    Rejected {
        request_id: Option<String>,
    },
    /// Not HTTP/1 framing we follow: everything passes.
    Off,
}

impl Default for State {
    fn default() -> Self {
        Self::Head { start: 0 }
    }
}

impl Framing {
    /// `n` bytes went to hyper: shift every offset.
    fn released(&mut self, n: usize) {
        self.releasable -= n;
        match &mut self.state {
            State::Head { start } => *start -= n,
            State::ChunkSize { line } | State::ChunkEnd { line } | State::Trailers { line } => {
                *line -= n
            }
            _ => {}
        }
    }

    /// Advances through newly arrived bytes (everything past `releasable` is unscanned or
    /// a held-back line or head).
    fn scan(&mut self, buf: &[u8]) {
        loop {
            let progressed = match &mut self.state {
                State::Off => {
                    self.releasable = buf.len();
                    false
                }
                State::Rejected { .. } => false,
                State::Body { remaining } | State::ChunkData { remaining } => {
                    let take = (*remaining).min((buf.len() - self.releasable) as u64);
                    *remaining -= take;
                    self.releasable += take as usize;
                    if *remaining > 0 {
                        false
                    } else {
                        self.state = match self.state {
                            State::Body { .. } => State::Head {
                                start: self.releasable,
                            },
                            _ => State::ChunkEnd {
                                line: self.releasable,
                            },
                        };
                        true
                    }
                }
                State::Head { start } => {
                    let start = *start;
                    self.scan_head(buf, start)
                }
                State::ChunkSize { line } | State::ChunkEnd { line } | State::Trailers { line } => {
                    let line = *line;
                    self.scan_line(buf, line)
                }
            };
            if !progressed {
                return;
            }
        }
    }

    fn scan_head(&mut self, buf: &[u8], mut start: usize) -> bool {
        // Empty lines before a request line are allowed and ignored (RFC 9112 §2.2).
        while matches!(buf.get(start), Some(b'\r' | b'\n')) {
            start += 1;
        }
        self.releasable = start;
        self.state = State::Head { start };
        let Some(end) = head_end(&buf[start..]) else {
            if buf.len() - start > MAX_HEAD {
                self.state = State::Off;
                return true;
            }
            return false;
        };
        self.state = check_head(&buf[start..start + end]).unwrap_or(State::Off);
        if !matches!(self.state, State::Rejected { .. }) {
            self.releasable = start + end;
            self.shift_new_state(start + end);
        }
        true
    }

    /// States that hold offsets were built relative to the head; make them absolute.
    fn shift_new_state(&mut self, at: usize) {
        match &mut self.state {
            State::Head { start } => *start = at,
            State::ChunkSize { line } => *line = at,
            _ => {}
        }
    }

    fn scan_line(&mut self, buf: &[u8], line: usize) -> bool {
        let Some(newline) = buf[line..].iter().position(|b| *b == b'\n') else {
            if buf.len() - line > MAX_LINE {
                self.state = State::Off;
                return true;
            }
            self.releasable = line;
            return false;
        };
        let text = &buf[line..=line + newline];
        let next = line + newline + 1;
        self.releasable = next;
        self.state = match self.state {
            State::ChunkSize { .. } => match httparse::parse_chunk_size(text) {
                Ok(httparse::Status::Complete((_, 0))) => State::Trailers { line: next },
                Ok(httparse::Status::Complete((_, size))) => State::ChunkData { remaining: size },
                _ => State::Off,
            },
            State::ChunkEnd { .. } => State::ChunkSize { line: next },
            _ if text == b"\r\n" || text == b"\n" => State::Head { start: next },
            _ => State::Trailers { line: next },
        };
        true
    }
}

/// The length of a request head including its closing empty line, if it is complete.
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

/// The framing that follows a complete head, or `Rejected` for a conflicting one. `None`
/// when it is nothing we follow (hyper will decide).
fn check_head(head: &[u8]) -> Option<State> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    if !request.parse(head).ok()?.is_complete() {
        return None;
    }
    let headers = &*request.headers;
    let find = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
    };
    let transfer_encoding = find("transfer-encoding").last();
    let content_length = find("content-length").next();
    if transfer_encoding.is_some() && content_length.is_some() {
        let request_id = find("x-request-id")
            .next()
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::to_owned);
        return Some(State::Rejected { request_id });
    }
    let upgrade = request.method == Some("CONNECT") || find("upgrade").next().is_some();
    if upgrade {
        return None;
    }
    if let Some(te) = transfer_encoding {
        let chunked_last = std::str::from_utf8(te.value)
            .ok()?
            .rsplit(',')
            .next()
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        return chunked_last.then_some(State::ChunkSize { line: 0 });
    }
    Some(match content_length {
        Some(cl) => {
            let length: u64 = std::str::from_utf8(cl.value).ok()?.trim().parse().ok()?;
            if length == 0 {
                State::Head { start: 0 }
            } else {
                State::Body { remaining: length }
            }
        }
        None => State::Head { start: 0 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns what would reach hyper and the
    /// final state.
    fn run(input: &[u8], step: usize) -> (Vec<u8>, State) {
        let mut framing = Framing::default();
        let mut incoming = BytesMut::new();
        let mut delivered = Vec::new();
        for piece in input.chunks(step) {
            incoming.extend_from_slice(piece);
            framing.scan(&incoming);
            let n = framing.releasable;
            delivered.extend_from_slice(&incoming[..n]);
            incoming.advance(n);
            framing.released(n);
        }
        (delivered, framing.state)
    }

    const CL: &[u8] =
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    const CHUNKED: &[u8] = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n";
    const BOTH: &[u8] = b"POST /a HTTP/1.1\r\nX-Request-Id: abc\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    #[test]
    fn passes_well_framed_pipelines_in_any_split() {
        let pipeline = [CL, CHUNKED, b"\r\nGET /v1/models HTTP/1.1\r\n\n"].concat();
        for step in [1, 2, 3, 7, 64, 4096] {
            let (delivered, state) = run(&pipeline, step);
            assert_eq!(delivered, pipeline, "step {step}");
            assert_eq!(state, State::Head { start: 0 }, "step {step}");
        }
    }

    #[test]
    fn holds_back_and_rejects_a_conflicting_head_after_valid_requests() {
        let pipeline = [CL, CHUNKED, BOTH].concat();
        for step in [1, 5, 4096] {
            let (delivered, state) = run(&pipeline, step);
            assert_eq!(delivered, [CL, CHUNKED].concat(), "step {step}");
            assert_eq!(
                state,
                State::Rejected {
                    request_id: Some("abc".into())
                }
            );
        }
    }

    #[test]
    fn steps_aside_for_what_it_does_not_follow() {
        let (delivered, state) = run(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nbinary", 4096);
        assert_eq!(state, State::Off);
        assert_eq!(delivered.len(), 30);
    }
}
