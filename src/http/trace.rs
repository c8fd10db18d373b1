//! The edge of tracing: each request on the /v1 routes gets its SERVER span here, before
//! authentication (a refused request is traced too), continuing the client's
//! `traceparent`. The span goes into the request's extensions, where the door's `auth`
//! step and the handler find it; the response carries the trace id in
//! `x-switchyard-trace-id`. A request the pipeline handles is ended by its record, with
//! its report (a stream, when it ends); any other (a 401, `/v1/models`) is ended here with
//! its status.
//!
//! With traces off this layer is one branch per request.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use futures_util::future::{BoxFuture, Either};
use http::HeaderValue;
use tower::{Layer, Service};

use super::request_id;
use crate::headers::TRACE_ID;
use crate::reload::ConfigStore;

#[derive(Clone)]
pub struct TraceLayer {
    store: Arc<ConfigStore>,
}

impl TraceLayer {
    pub fn new(store: Arc<ConfigStore>) -> Self {
        Self { store }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Traced<S> {
        Traced {
            inner,
            store: self.store.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Traced<S> {
    inner: S,
    store: Arc<ConfigStore>,
}

impl<S> Service<Request> for Traced<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let traces = &self.store.shared().traces;
        if !traces.is_on() {
            return Either::Left(self.inner.call(request));
        }
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or_else(|| request.uri().path(), MatchedPath::as_str);
        let trace = traces.server(
            request.method(),
            route,
            request.headers(),
            request_id::of(&request),
        );
        request.extensions_mut().insert(trace.clone());
        let answer = self.inner.call(request);
        Either::Right(Box::pin(async move {
            let mut response = answer.await?;
            let id = trace
                .trace_id()
                .and_then(|id| HeaderValue::from_str(id).ok());
            if let Some(id) = id {
                response.headers_mut().insert(TRACE_ID, id);
            }
            if !trace.is_claimed() {
                trace.finish_http(response.status().as_u16());
            }
            Ok(response)
        }))
    }
}
