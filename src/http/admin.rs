//! The admin API over HTTP: routes and JSON bodies. Served on the admin listener
//! (`admin.listen`) and on the public listener only when `admin.on_public_listener` is set;
//! elsewhere the routes answer 404 like any unknown URL. Every route is behind the admin
//! door of the edge's auth layer (`auth.rs`: the admin key, whose SHA-256 is
//! `admin.key_sha256`, compared in constant time). What each route does is `admin.rs`.
//!
//! ```text
//! POST   /admin/keys           create (the key is in the answer, once)
//! GET    /admin/keys           list (config and admin-created keys)
//! GET    /admin/keys/{name}    show, with usage and spend today, this month and in total
//! PATCH  /admin/keys/{name}    change settings (JSON merge patch)
//! DELETE /admin/keys/{name}    revoke
//! GET    /admin/teams          list
//! GET    /admin/teams/{name}   show, with its keys, usage and spend
//! GET    /admin/breakers       every target's circuit breaker (this replica's)
//! ```

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, http::StatusCode};
use bytes::Bytes;
use serde_json::Value;

use super::auth::AdminCaller;
use super::handlers::json_response;
use super::{App, body, request_id};
use crate::admin::Admin;
use crate::error::GatewayError;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/admin/keys", get(list_keys).post(create_key))
        .route(
            "/admin/keys/{name}",
            get(show_key).patch(update_key).delete(revoke_key),
        )
        .route("/admin/teams", get(list_teams))
        .route("/admin/teams/{name}", get(show_team))
        .route("/admin/breakers", get(list_breakers))
}

async fn list_breakers(
    State(app): State<App>,
    caller: Extension<AdminCaller>,
    request: Request,
) -> Response {
    handle(app, caller, request, async |admin, _| {
        Ok(ok(admin.list_breakers()))
    })
    .await
}

async fn list_keys(
    State(app): State<App>,
    caller: Extension<AdminCaller>,
    request: Request,
) -> Response {
    handle(app, caller, request, async |admin, _| {
        admin.list_keys().map(ok)
    })
    .await
}

async fn show_key(
    State(app): State<App>,
    caller: Extension<AdminCaller>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    handle(app, caller, request, async |admin, _| {
        admin.show_key(&name).await.map(ok)
    })
    .await
}

async fn create_key(
    State(app): State<App>,
    caller: Extension<AdminCaller>,
    request: Request,
) -> Response {
    handle(app, caller, request, async |admin, body| {
        let key = admin.create_key(parse(&body)?).await?;
        Ok((StatusCode::CREATED, key))
    })
    .await
}

async fn update_key(
    State(app): State<App>,
    caller: Extension<AdminCaller>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    handle(app, caller, request, async |admin, body| {
        let patch: Value = parse(&body)?;
        admin.update_key(&name, &patch).await.map(ok)
    })
    .await
}

async fn revoke_key(
    State(app): State<App>,
    caller: Extension<AdminCaller>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    handle(app, caller, request, async |admin, _| {
        admin.revoke_key(&name).await.map(ok)
    })
    .await
}

async fn list_teams(
    State(app): State<App>,
    caller: Extension<AdminCaller>,
    request: Request,
) -> Response {
    handle(app, caller, request, async |admin, _| {
        Ok(ok(admin.list_teams()))
    })
    .await
}

async fn show_team(
    State(app): State<App>,
    caller: Extension<AdminCaller>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    handle(app, caller, request, async |admin, _| {
        admin.show_team(&name).await.map(ok)
    })
    .await
}

fn ok(value: Value) -> (StatusCode, Value) {
    (StatusCode::OK, value)
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, GatewayError> {
    serde_json::from_slice(body).map_err(|e| GatewayError::InvalidJson {
        message: format!("invalid request body: {e}"),
    })
}

/// Reads the body, runs `op`, writes its answer.
async fn handle(
    app: App,
    Extension(AdminCaller { snapshot }): Extension<AdminCaller>,
    request: Request,
    op: impl AsyncFnOnce(Admin<'_>, Bytes) -> Result<(StatusCode, Value), GatewayError>,
) -> Response {
    let id = request_id::of(&request);
    let shared = app.store.shared();
    let result = async {
        let (parts, body) = request.into_parts();
        let body = body::read(body, &parts.headers, &snapshot.server).await?;
        let admin = Admin {
            snapshot: &snapshot,
            keys: &shared.keys,
            limiter: &shared.limiter,
        };
        op(admin, body).await
    }
    .await;
    match result {
        Ok((status, value)) => {
            json_response(status, serde_json::to_vec(&value).unwrap_or_default())
        }
        Err(error) => error.into_http(&id),
    }
}
