//! The access layer: may the caller use the model it asked for.
//!
//! Reads: `ctx.key` (authenticated at the edge) and its team, the call's model. Fails with
//! 403 `model_not_allowed` for a model the key or its team may not use.

use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

use super::GatewayRequest;
use crate::api::reply::Reply;
use crate::error::GatewayError;

#[derive(Debug, Clone, Copy, Default)]
pub struct AccessLayer;

impl<S> Layer<S> for AccessLayer {
    type Service = Access<S>;

    fn layer(&self, inner: S) -> Access<S> {
        Access { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Access<S> {
    inner: S,
}

impl<S> Service<GatewayRequest> for Access<S>
where
    S: Service<GatewayRequest, Response = Reply, Error = GatewayError>,
{
    type Response = Reply;
    type Error = GatewayError;
    type Future = Either<Ready<Result<Reply, GatewayError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: GatewayRequest) -> Self::Future {
        let model = request.call.model();
        if !request.ctx.key.allows(model) {
            let model = model.to_owned();
            return Either::Left(ready(Err(GatewayError::ModelNotAllowed { model })));
        }
        Either::Right(self.inner.call(request))
    }
}
