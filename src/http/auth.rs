//! Authentication at the front door: one layer, on the request head, for every route that
//! needs a key. A request with no key, an unknown, revoked, disabled or expired key gets
//! its 401 before anything reads its body (or waits for it), so a stranger cannot make the
//! gateway hold a connection open for a body it will never use.
//!
//! Two doors share the mechanism (the key from `Authorization: Bearer`, `x-api-key` or
//! `api-key`, hashed and compared in constant time):
//! - [`Door::Clients`]: virtual keys (the config's, then the admin API's). The layer puts
//!   the caller and the config snapshot it was authenticated with into the request's
//!   extensions as [`Caller`]: the handler runs the request on that same snapshot.
//! - [`Door::Admin`]: the admin key, on the listeners the config serves the admin API on
//!   (elsewhere its routes answer 404 like any unknown URL). It adds [`AdminCaller`].
//!
//! Routes added later inherit a door by being added to the router it guards (`app.rs`).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

use super::request_id;
use crate::auth::{self, Key};
use crate::error::GatewayError;
use crate::reload::ConfigStore;
use crate::snapshot::Snapshot;
use crate::telemetry::spans::RequestTrace;

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Public,
    Admin,
}

/// Who may pass.
#[derive(Debug, Clone, Copy)]
pub enum Door {
    /// Clients with a virtual key.
    Clients,
    /// The holder of the admin key, on this listener.
    Admin(Listener),
}

/// An authenticated client, and the config snapshot its request runs on.
#[derive(Clone)]
pub struct Caller {
    pub key: Arc<Key>,
    pub snapshot: Arc<Snapshot>,
}

/// The admin, and the config snapshot its request runs on.
#[derive(Clone)]
pub struct AdminCaller {
    pub snapshot: Arc<Snapshot>,
}

#[derive(Clone)]
pub struct AuthLayer {
    store: Arc<ConfigStore>,
    door: Door,
}

impl AuthLayer {
    pub fn new(store: Arc<ConfigStore>, door: Door) -> Self {
        Self { store, door }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            store: self.store.clone(),
            door: self.door,
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    store: Arc<ConfigStore>,
    door: Door,
}

impl<S> Service<Request> for Auth<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let step = RequestTrace::of(request.extensions()).step("auth");
        let snapshot = self.store.current();
        let admitted = match self.door {
            Door::Clients => self
                .store
                .shared()
                .keys
                .authenticate(&snapshot.keys, request.headers())
                .map(|key| {
                    request.extensions_mut().insert(Caller { key, snapshot });
                }),
            Door::Admin(listener) => admit_admin(&request, &snapshot, listener).map(|()| {
                request.extensions_mut().insert(AdminCaller { snapshot });
            }),
        };
        match admitted {
            Ok(()) => Either::Right(self.inner.call(request)),
            Err(error) => {
                step.fail(&error);
                Either::Left(ready(Ok(error.into_http(&request_id::of(&request)))))
            }
        }
    }
}

/// The admin API exists on this listener and the request presents its key.
fn admit_admin(
    request: &Request,
    snapshot: &Snapshot,
    listener: Listener,
) -> Result<(), GatewayError> {
    let admin = snapshot
        .admin
        .as_ref()
        .filter(|admin| listener == Listener::Admin || admin.on_public_listener)
        .ok_or_else(|| GatewayError::UnknownRoute {
            method: request.method().to_string(),
            path: request.uri().path().to_owned(),
        })?;
    if !auth::presents(request.headers(), admin.key_sha256.expose()) {
        return Err(GatewayError::AdminKeyRequired);
    }
    Ok(())
}
