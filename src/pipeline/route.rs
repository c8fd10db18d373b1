//! The route layer: resolves the public model the client named to its configured targets.
//!
//! Reads: the call's `model`, the snapshot's model table. Writes: `ctx.route`, and the model
//! on the request record. Fails with 404 `model_not_found` for a model that is not
//! configured, 503 when none of its providers is usable (for example, a missing key) and
//! it has no fallbacks.

use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

use super::GatewayRequest;
use crate::api::reply::Reply;
use crate::error::GatewayError;

#[derive(Debug, Clone, Copy, Default)]
pub struct RouteLayer;

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;

    fn layer(&self, inner: S) -> Route<S> {
        Route { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Route<S> {
    inner: S,
}

impl<S> Service<GatewayRequest> for Route<S>
where
    S: Service<GatewayRequest, Response = Reply, Error = GatewayError>,
{
    type Response = Reply;
    type Error = GatewayError;
    type Future = Either<Ready<Result<Reply, GatewayError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: GatewayRequest) -> Self::Future {
        let model = request.call.model();
        let Some(route) = request.ctx.snapshot.models.get(model).cloned() else {
            let model = model.to_owned();
            return Either::Left(ready(Err(GatewayError::ModelNotFound { model })));
        };
        request.ctx.record.set_model(route.name.clone());
        // A model with fallbacks goes on to them (the resilience layer's job).
        if let Some(reason) = route
            .unusable_reason()
            .filter(|_| route.fallbacks.is_empty())
        {
            let model = route.name.to_string();
            return Either::Left(ready(Err(GatewayError::NoUsableTarget { model, reason })));
        }
        request.ctx.route = Some(route);
        Either::Right(self.inner.call(request))
    }
}
