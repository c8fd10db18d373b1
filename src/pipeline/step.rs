//! A layer that takes one decision about a request on its way in and either passes it on
//! or refuses it, without waiting on anything: `access.rs` and `route.rs` are such steps.
//! The decision is a plain function; this is the tower plumbing they share.

use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

use super::GatewayRequest;
use crate::api::reply::Reply;
use crate::error::GatewayError;

/// Reads and writes the request's context, or says why the request stops here.
pub type Decide = fn(&mut GatewayRequest) -> Result<(), GatewayError>;

#[derive(Clone, Copy)]
pub struct StepLayer {
    decide: Decide,
}

impl StepLayer {
    pub fn new(decide: Decide) -> Self {
        Self { decide }
    }
}

impl<S> Layer<S> for StepLayer {
    type Service = Step<S>;

    fn layer(&self, inner: S) -> Step<S> {
        Step {
            inner,
            decide: self.decide,
        }
    }
}

#[derive(Clone)]
pub struct Step<S> {
    inner: S,
    decide: Decide,
}

impl<S> Service<GatewayRequest> for Step<S>
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
        match (self.decide)(&mut request) {
            Ok(()) => Either::Right(self.inner.call(request)),
            Err(error) => Either::Left(ready(Err(error))),
        }
    }
}
