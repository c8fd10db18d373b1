//! HTTP hygiene at the edge: hop-by-hop headers, and every header the `Connection` header
//! names, are removed from requests before the pipeline sees them and from responses
//! before they leave (RFC 9110 §7.6.1). Upstream requests are built from scratch and
//! carry none of the client's headers, so nothing hop-by-hop can cross the gateway.

use http::{HeaderMap, HeaderName, Request, Response, header};

use crate::headers::HOP_BY_HOP;

pub fn strip_request<B>(mut request: Request<B>) -> Request<B> {
    strip(request.headers_mut());
    request
}

pub fn strip_response<B>(mut response: Response<B>) -> Response<B> {
    strip(response.headers_mut());
    response
}

fn strip(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_hop_by_hop_and_connection_named_headers() {
        let request = Request::builder()
            .header("connection", "keep-alive, x-secret-hop")
            .header("x-secret-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("x-request-id", "abc")
            .body(())
            .unwrap();
        let request = strip_request(request);
        let names: Vec<&str> = request.headers().keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-request-id"]);
    }
}
