//! Reading a request body: bounded in size (chunked bodies included, not only those that
//! announce a Content-Length) and in time (the longest pause between two pieces).
//! Both limits come from the request's config snapshot, so they follow reloads.

use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, header};
use http_body_util::BodyExt;

use crate::config::schema::ServerConfig;
use crate::error::GatewayError;

pub async fn read(
    body: Body,
    headers: &HeaderMap,
    server: &ServerConfig,
) -> Result<Bytes, GatewayError> {
    let limit = server.max_body_size.as_u64();
    if declared_length(headers).is_some_and(|len| len > limit) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    collect(body, limit, server.body_idle_timeout).await
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

async fn collect(mut body: Body, limit: u64, idle: Duration) -> Result<Bytes, GatewayError> {
    // Most bodies arrive in one frame: keep it as is, copy only when a second one comes.
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut total = 0u64;
    loop {
        let frame = tokio::time::timeout(idle, body.frame())
            .await
            .map_err(|_| GatewayError::BodyTimeout(idle))?;
        let Some(frame) = frame else { break };
        let Ok(data) = frame.map_err(|_| GatewayError::BodyRead)?.into_data() else {
            continue; // trailers carry nothing we use
        };
        total += data.len() as u64;
        if total > limit {
            return Err(GatewayError::BodyTooLarge { limit });
        }
        match (&mut joined, first.take()) {
            (Some(buffer), _) => buffer.extend_from_slice(&data),
            (None, None) => first = Some(data),
            (None, Some(previous)) => {
                let mut buffer = BytesMut::from(previous);
                buffer.extend_from_slice(&data);
                joined = Some(buffer);
            }
        }
    }
    Ok(joined.map(BytesMut::freeze).or(first).unwrap_or_default())
}
