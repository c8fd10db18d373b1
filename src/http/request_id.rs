//! Request ids: the client's `x-request-id` is kept; otherwise the gateway makes one.

use http::{HeaderValue, Request};
use tower_http::request_id::{MakeRequestId, RequestId};

/// `req_` and 24 random hex digits (96 bits): unique enough to find one request in logs,
/// cheap to make (no UUID formatting, no syscall).
#[derive(Debug, Clone, Copy, Default)]
pub struct MakeId;

impl MakeRequestId for MakeId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let id = format!("req_{:016x}{:08x}", fastrand::u64(..), fastrand::u32(..));
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}
