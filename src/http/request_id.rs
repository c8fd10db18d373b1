//! Request ids. The gateway mints every request's id and never takes one from the client:
//! it names the request in the access log, in error bodies, upstream and as the handle for
//! feedback (`POST /v1/feedback`), so a client cannot choose (or guess) another's. Every
//! response carries it in `x-switchyard-request-id`.
//!
//! A client's own `x-request-id` is kept as a correlation id: echoed back unchanged and
//! written in the access log as `correlation_id`. A client that sends none gets the
//! gateway's id in `x-request-id` too.
//!
//! In `app.rs` the edge runs, outermost first: [`distrust`], tower-http's
//! `SetRequestIdLayer` (mints the id, with [`MakeId`]) and `PropagateRequestIdLayer` for
//! `x-switchyard-request-id`, then [`correlate`] and `PropagateRequestIdLayer` for
//! `x-request-id`.

use std::sync::Arc;

use http::{HeaderValue, Request};
use tower_http::request_id::{MakeRequestId, RequestId};

use crate::headers::{GATEWAY_REQUEST_ID, REQUEST_ID};

/// Longest correlation id kept for the log (a client's header could be kilobytes).
const MAX_CORRELATION_ID: usize = 128;

/// `req_` and 24 random hex digits (96 bits): unique enough to find one request in logs,
/// and not guessable, since it is also the feedback handle; cheap to make (no UUID
/// formatting, no syscall, no allocation besides the header).
#[derive(Debug, Clone, Copy, Default)]
pub struct MakeId;

impl MakeRequestId for MakeId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        HeaderValue::from_bytes(&new_id()).ok().map(RequestId::new)
    }
}

/// The client's `x-request-id`, when it sent one.
#[derive(Debug, Clone)]
pub struct Correlation(pub Arc<str>);

/// Removes a client's `x-switchyard-request-id`, so that the gateway mints the id.
pub fn distrust<B>(mut request: Request<B>) -> Request<B> {
    request.headers_mut().remove(GATEWAY_REQUEST_ID);
    request
}

/// Keeps the client's `x-request-id` as the request's [`Correlation`], or sets it to the
/// gateway's id, which is then what the client gets back in `x-request-id`.
pub fn correlate<B>(mut request: Request<B>) -> Request<B> {
    let client = request.headers().get(REQUEST_ID).map(|value| {
        let text = String::from_utf8_lossy(value.as_bytes());
        let mut end = text.len().min(MAX_CORRELATION_ID);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Correlation(Arc::from(&text[..end]))
    });
    match client {
        Some(correlation) => {
            request.extensions_mut().insert(correlation);
        }
        None => {
            let id = request.extensions().get::<RequestId>();
            if let Some(value) = id.map(|id| id.header_value().clone()) {
                request.headers_mut().insert(REQUEST_ID, value);
            }
        }
    }
    request
}

/// The id the gateway minted for `request`.
pub fn of<B>(request: &Request<B>) -> Arc<str> {
    let id = request.extensions().get::<RequestId>();
    let text = id.map(|id| String::from_utf8_lossy(id.header_value().as_bytes()));
    Arc::from(text.as_deref().unwrap_or("unknown"))
}

/// The client's `x-request-id`, if it sent one (at most 128 bytes of it).
pub fn correlation_of<B>(request: &Request<B>) -> Option<Arc<str>> {
    let correlation = request.extensions().get::<Correlation>();
    correlation.map(|c| c.0.clone())
}

/// A new request id, as ASCII bytes.
pub fn new_id() -> [u8; 28] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = *b"req_000000000000000000000000";
    let random = (u128::from(fastrand::u64(..)) << 32) | u128::from(fastrand::u32(..));
    for (i, digit) in id[4..].iter_mut().enumerate() {
        *digit = HEX[((random >> (92 - 4 * i)) & 0xf) as usize];
    }
    id
}

#[cfg(test)]
mod tests {
    use http::Request;
    use tower_http::request_id::{MakeRequestId, RequestId};

    use super::*;

    #[test]
    fn ids_are_prefixed_hex_and_differ() {
        let (a, b) = (super::new_id(), super::new_id());
        assert_ne!(a, b);
        let text = std::str::from_utf8(&a).unwrap();
        assert!(text.starts_with("req_"));
        assert!(text[4..].bytes().all(|c| c.is_ascii_hexdigit()));
    }

    /// What the edge does before the routes, without the response side.
    fn edge(request: Request<()>) -> Request<()> {
        let mut request = distrust(request);
        let id = MakeId.make_request_id(&request).unwrap();
        request.extensions_mut().insert::<RequestId>(id);
        correlate(request)
    }

    #[test]
    fn a_clients_ids_are_a_correlation_never_the_request_id() {
        let request = Request::builder()
            .header("x-request-id", "client-1")
            .header("x-switchyard-request-id", "req_chosen")
            .body(())
            .unwrap();
        let request = edge(request);
        assert!(of(&request).starts_with("req_"));
        assert_ne!(&*of(&request), "req_chosen");
        assert_eq!(correlation_of(&request).as_deref(), Some("client-1"));
        assert!(request.headers().get("x-switchyard-request-id").is_none());
    }

    #[test]
    fn without_a_client_id_x_request_id_is_the_gateways() {
        let request = edge(Request::builder().body(()).unwrap());
        assert_eq!(correlation_of(&request), None);
        assert_eq!(request.headers()["x-request-id"], &*of(&request));
    }

    #[test]
    fn a_long_correlation_id_is_cut_on_a_character_boundary() {
        let long = "é".repeat(100);
        let request = Request::builder()
            .header(
                "x-request-id",
                HeaderValue::from_bytes(long.as_bytes()).unwrap(),
            )
            .body(())
            .unwrap();
        let kept = correlation_of(&edge(request)).unwrap();
        assert_eq!(kept.len(), 128);
    }
}
