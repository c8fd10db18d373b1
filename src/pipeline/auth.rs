//! The auth layer: who is calling, and may they use the model they asked for.
//!
//! Reads: the request headers, the keys of the snapshot and of the admin API, the call's
//! model. Writes:
//! `ctx.key`, and the key's name and team on the request record. Fails with 401 for a
//! missing, unknown, revoked or expired key, 403 for a model the key or its team may not
//! use.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

use super::GatewayRequest;
use crate::error::GatewayError;
use crate::key_store::KeyStore;
use crate::stream::Reply;

#[derive(Clone)]
pub struct AuthLayer {
    keys: Arc<KeyStore>,
}

impl AuthLayer {
    pub fn new(keys: Arc<KeyStore>) -> Self {
        Self { keys }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            keys: self.keys.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    keys: Arc<KeyStore>,
}

impl<S> Service<GatewayRequest> for Auth<S>
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
        let ctx = &mut request.ctx;
        let key = match self.keys.authenticate(&ctx.snapshot, &ctx.headers) {
            Ok(key) => key,
            Err(error) => return Either::Left(ready(Err(error))),
        };
        ctx.record.set_caller(&key);
        let model = request.call.model();
        if !key.allows(model) {
            let model = model.to_owned();
            return Either::Left(ready(Err(GatewayError::ModelNotAllowed { model })));
        }
        request.ctx.key = Some(key);
        Either::Right(self.inner.call(request))
    }
}
