//! Names of the HTTP headers Switchyard reads or writes, in one place.

use http::HeaderName;

/// The client's correlation id, echoed on every response; the gateway's request id when
/// the client sent none.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// On every response: the id the gateway minted for the request (never the client's), as
/// in the access log, error bodies and upstream `x-request-id`; the handle for feedback.
pub const GATEWAY_REQUEST_ID: HeaderName = HeaderName::from_static("x-switchyard-request-id");
/// Tells the OpenAI SDKs whether retrying could help; `false` on terminal errors so
/// they do not multiply the gateway's own retries.
pub const SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");
/// On answers: the target that served the request, `provider/upstream model`.
pub const TARGET: HeaderName = HeaderName::from_static("x-switchyard-target");
/// On every chat and embeddings response: how many upstream calls were made (0 when the
/// request was refused before any, or every target's circuit was open).
pub const ATTEMPTS: HeaderName = HeaderName::from_static("x-switchyard-attempts");
/// On every non-streamed answer: what it cost in USD at the configured prices (`0` for a
/// free model, `unknown` for a model without a price).
pub const COST_USD: HeaderName = HeaderName::from_static("x-switchyard-cost-usd");
/// Where that cost comes from: `provider` (the provider's usage), `estimated` (the
/// gateway's count) or `unpriced`.
pub const COST_SOURCE: HeaderName = HeaderName::from_static("x-switchyard-cost-source");

/// On every response of the /v1 routes while traces are on: the request's trace id (32
/// hex digits), to find its trace.
pub const TRACE_ID: HeaderName = HeaderName::from_static("x-switchyard-trace-id");

/// Hop-by-hop headers (RFC 9110 §7.6.1): meaningful for one connection only, never
/// forwarded in either direction.
pub const HOP_BY_HOP: [HeaderName; 8] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
];
