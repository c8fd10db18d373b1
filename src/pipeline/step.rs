//! A layer that takes one decision about a request on its way in and either passes it on
//! or refuses it, without waiting on anything: `access.rs` and `route.rs` are such steps.
//! The decision is a plain function; this is the tower plumbing they share, and the
//! step's span (named after the step, marked failed when it refuses).

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
    name: &'static str,
    decide: Decide,
}

impl StepLayer {
    /// The step `name` (its span's name), deciding with `decide`.
    pub fn new(name: &'static str, decide: Decide) -> Self {
        Self { name, decide }
    }
}

impl<S> Layer<S> for StepLayer {
    type Service = Step<S>;

    fn layer(&self, inner: S) -> Step<S> {
        Step {
            inner,
            name: self.name,
            decide: self.decide,
        }
    }
}

#[derive(Clone)]
pub struct Step<S> {
    inner: S,
    name: &'static str,
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
        let step = request.ctx.record.trace().step(self.name);
        match (self.decide)(&mut request) {
            Ok(()) => {
                drop(step);
                Either::Right(self.inner.call(request))
            }
            Err(error) => {
                step.fail(&error);
                Either::Left(ready(Err(error)))
            }
        }
    }
}
