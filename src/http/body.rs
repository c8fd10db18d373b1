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
    read_at_most(body, headers, server.max_body_size.as_u64(), server).await
}

/// [`read`], for a route whose bodies are small: `limit` bytes, or the server's limit if
/// lower.
pub async fn read_at_most(
    body: Body,
    headers: &HeaderMap,
    limit: u64,
    server: &ServerConfig,
) -> Result<Bytes, GatewayError> {
    let limit = limit.min(server.max_body_size.as_u64());
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use futures_util::StreamExt;

    use super::*;
    use crate::clock;

    /// A body that sends `pieces`, each after `gap`, then stalls.
    fn stalling(pieces: &'static [&'static str], gap: Duration) -> Body {
        let sent = futures_util::stream::iter(pieces).then(move |piece| async move {
            tokio::time::sleep(gap).await;
            Ok::<_, Infallible>(Bytes::from_static(piece.as_bytes()))
        });
        Body::from_stream(sent.chain(futures_util::stream::pending()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_times_out_after_the_idle_limit_not_before() {
        let idle = Duration::from_millis(500);
        let started = clock::now();
        let body = stalling(&["{\"a\":", "1"], Duration::from_millis(400));
        let error = collect(body, 1024, idle).await.err();
        assert!(
            matches!(error, Some(GatewayError::BodyTimeout(_))),
            "{error:?}"
        );
        // Two pieces 400 ms apart (never 500 ms of silence), then the limit.
        assert_eq!(clock::now() - started, Duration::from_millis(1300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_chunked_body_over_the_limit_is_refused_as_it_arrives() {
        let body = stalling(&["0123456789", "0123456789"], Duration::ZERO);
        let error = collect(body, 15, Duration::from_secs(1)).await.err();
        assert!(
            matches!(error, Some(GatewayError::BodyTooLarge { limit: 15 })),
            "{error:?}"
        );
    }
}
