//! Accepting connections and shutting down gracefully.
//!
//! Each accepted socket gets TCP_NODELAY (a response written in several small pieces must
//! not wait for delayed ACKs) and the byte-level connection guard (first-byte deadline,
//! ambiguous-length rejection), and is served over HTTP/1.1 or HTTP/2 (prior knowledge),
//! with a deadline for reading each request head (which also closes keep-alive
//! connections that stay idle that long). HTTP/2 connections are pinged so dead peers are
//! noticed. On shutdown the listener closes at once,
//! idle keep-alive connections are closed, and in-flight requests (streams included) may
//! finish until the grace period ends.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::http::connection_guard::{self, ConnectionGuard, LengthConflict};

pub struct ServerOptions {
    pub header_read_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains for at most the
/// duration `grace` returns at that moment (read late so a reload can change it).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
    grace: impl FnOnce() -> Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(connection) => connection,
            Err(error) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, %peer, "could not set TCP_NODELAY");
        }
        let conflict = Arc::new(LengthConflict::default());
        let guard = ConnectionGuard::new(stream, options.header_read_timeout, conflict.clone());
        let io = TokioIo::new(guard);
        let service = connection_service(router.clone(), conflict);
        let connection = builder.serve_connection(io, service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, error = %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let grace = grace();
    tracing::info!(grace = %humantime::format_duration(grace), "shutting down: draining connections");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!("grace period over: closing the remaining connections"),
    }
}

/// One connection's service: requests go to the router, except those with
/// Transfer-Encoding once the connection guard has seen both length headers in one head
/// (or in what could be one), which are answered with a 400 that closes the connection.
fn connection_service(
    router: Router,
    conflict: Arc<LengthConflict>,
) -> impl hyper::service::Service<
    http::Request<Incoming>,
    Response = axum::response::Response,
    Error = Infallible,
    Future = impl Future<Output = Result<axum::response::Response, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |request: http::Request<Incoming>| {
        let rejected = conflict.rejects(&request);
        let router = router.clone();
        async move {
            if rejected {
                return Ok(connection_guard::rejection(&request));
            }
            router.oneshot(request).await
        }
    })
}
