//! Request ids: the client's `x-request-id` is kept; otherwise the gateway makes one.

use std::sync::Arc;

use http::{HeaderValue, Request};
use tower_http::request_id::{MakeRequestId, RequestId};

/// `req_` and 24 random hex digits (96 bits): unique enough to find one request in logs,
/// cheap to make (no UUID formatting, no syscall, no allocation besides the header).
#[derive(Debug, Clone, Copy, Default)]
pub struct MakeId;

impl MakeRequestId for MakeId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        HeaderValue::from_bytes(&new_id()).ok().map(RequestId::new)
    }
}

/// The id `SetRequestIdLayer` guaranteed a request: the client's `x-request-id`, or a new
/// one.
pub fn of<B>(request: &Request<B>) -> Arc<str> {
    let id = request.extensions().get::<RequestId>();
    let text = id.map(|id| String::from_utf8_lossy(id.header_value().as_bytes()));
    Arc::from(text.as_deref().unwrap_or("unknown"))
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
    #[test]
    fn ids_are_prefixed_hex_and_differ() {
        let (a, b) = (super::new_id(), super::new_id());
        assert_ne!(a, b);
        let text = std::str::from_utf8(&a).unwrap();
        assert!(text.starts_with("req_"));
        assert!(text[4..].bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
