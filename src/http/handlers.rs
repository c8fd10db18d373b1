//! Route handlers. The two API handlers are the edge of the pipeline: the caller is
//! already authenticated (`auth.rs`); they read and parse the body once, create the
//! request context, run the pipeline and turn its reply (or error) into HTTP. Everything
//! else here is small and read-only.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use tower::ServiceExt;

use super::auth::Caller;
use super::relay::SseRelay;
use super::{App, body, parse, request_id};
use crate::api::models::{ModelList, ModelObject};
use crate::api::reply::Reply;
use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::headers::{ATTEMPTS, COST_SOURCE, COST_USD, SHOULD_RETRY, TARGET};
use crate::limits::{LimitStatus, format_reset};
use crate::pipeline::{Call, GatewayRequest};
use crate::pricing::Cost;
use crate::record::RequestRecord;
use crate::report::Endpoint;
use crate::snapshot::ModelRoute;
use crate::telemetry::spans::RequestTrace;

pub async fn chat_completions(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    request: Request,
) -> Response {
    serve(app, caller, request, Endpoint::ChatCompletions, parse::chat).await
}

pub async fn embeddings(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    request: Request,
) -> Response {
    serve(
        app,
        caller,
        request,
        Endpoint::Embeddings,
        parse::embeddings,
    )
    .await
}

type Parser = fn(&[u8]) -> Result<Call, GatewayError>;

async fn serve(
    app: App,
    caller: Caller,
    request: Request,
    endpoint: Endpoint,
    parse: Parser,
) -> Response {
    let request_id = request_id::of(&request);
    let record = RequestRecord::new(
        request_id.clone(),
        endpoint,
        &caller.key,
        app.metrics.clone(),
        app.sinks.clone(),
    );
    let record = record
        .with_correlation_id(request_id::correlation_of(&request))
        .with_trace(RequestTrace::of(request.extensions()));
    let record = Arc::new(record);
    let result = run(&app, caller, request, &record, parse).await;
    let (target, attempts) = record.attempts();
    let mut response = match result {
        Ok(mut response) => {
            if let Some(value) = target.and_then(|t| HeaderValue::from_str(&t).ok()) {
                response.headers_mut().insert(TARGET, value);
            }
            response
        }
        Err(error) => {
            record.fail(&error);
            let mut response = error.into_http(&request_id);
            if attempts > 0 {
                // The gateway already retried as its policy allows: a client that
                // retried too would multiply the load on a failing provider.
                let headers = response.headers_mut();
                headers.insert(SHOULD_RETRY, HeaderValue::from_static("false"));
            }
            response
        }
    };
    response
        .headers_mut()
        .insert(ATTEMPTS, HeaderValue::from(attempts));
    if let Some(status) = record.limit_status() {
        rate_limit_headers(response.headers_mut(), &status);
    }
    response
}

/// OpenAI's `x-ratelimit-*` headers, for the tightest request and token limits.
fn rate_limit_headers(headers: &mut http::HeaderMap, status: &LimitStatus) {
    let windows = [("requests", status.requests), ("tokens", status.tokens)];
    for (kind, window) in windows {
        let Some(window) = window else { continue };
        let values = [
            ("limit", window.limit.to_string()),
            ("remaining", window.remaining.to_string()),
            ("reset", format_reset(window.reset)),
        ];
        for (field, value) in values {
            let name = http::HeaderName::try_from(format!("x-ratelimit-{field}-{kind}"));
            if let (Ok(name), Ok(value)) = (name, HeaderValue::try_from(value)) {
                headers.insert(name, value);
            }
        }
    }
}

async fn run(
    app: &App,
    caller: Caller,
    request: Request,
    record: &Arc<RequestRecord>,
    parse: Parser,
) -> Result<Response, GatewayError> {
    let Caller { key, snapshot } = caller;
    let (parts, body) = request.into_parts();
    let bytes = body::read(body, &parts.headers, &snapshot.server).await?;
    let call = parse(&bytes)?;
    let hide_usage = match &call {
        Call::Chat(chat) => {
            record.set_stream(chat.is_stream());
            !chat.wants_stream_usage()
        }
        Call::Embeddings(_) => false,
    };
    let ctx = RequestContext {
        record: record.clone(),
        snapshot,
        headers: parts.headers,
        key,
        route: None,
    };
    let reply = app
        .pipeline
        .clone()
        .oneshot(GatewayRequest { ctx, call })
        .await?;
    Ok(respond(reply, record, hide_usage))
}

fn respond(reply: Reply, record: &Arc<RequestRecord>, hide_usage: bool) -> Response {
    match reply {
        Reply::Json(json) => {
            record.respond(200, false);
            let mut response = json_response(StatusCode::OK, json.into_body());
            let (usd, source) = Cost::describe(record.cost());
            let headers = response.headers_mut();
            if let Ok(usd) = HeaderValue::try_from(usd) {
                headers.insert(COST_USD, usd);
            }
            headers.insert(COST_SOURCE, HeaderValue::from_static(source));
            response
        }
        Reply::Stream(chunks) => {
            record.respond(200, true);
            let relay = SseRelay::new(chunks, record.clone(), hide_usage);
            let mut response = Body::from_stream(relay).into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
    }
}

pub(crate) fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response {
    let mut response = (status, body.into()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The models the calling key may use and that can be served.
pub async fn list_models(Extension(caller): Extension<Caller>) -> Response {
    let data = caller
        .snapshot
        .models
        .values()
        .filter(|m| visible(&caller, m))
        .map(|m| ModelObject::new(&m.name, owner(m)))
        .collect();
    let list = ModelList {
        object: "list",
        data,
    };
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&list).unwrap_or_default(),
    )
}

/// One model, if the calling key may use it and it can be served; otherwise the same 404
/// as for a model that does not exist, so a key cannot learn what it may not use.
pub async fn retrieve_model(
    Extension(caller): Extension<Caller>,
    Path(model): Path<String>,
    request: Request,
) -> Response {
    let route = caller.snapshot.models.get(model.as_str());
    match route.filter(|m| visible(&caller, m)) {
        Some(route) => {
            let object = ModelObject::new(&route.name, owner(route));
            json_response(
                StatusCode::OK,
                serde_json::to_vec(&object).unwrap_or_default(),
            )
        }
        None => GatewayError::ModelNotFound { model }.into_http(&request_id::of(&request)),
    }
}

/// Whether `caller` sees `model`: it can be served, and the key and its team may use it.
fn visible(caller: &Caller, model: &ModelRoute) -> bool {
    model.unusable_reason().is_none() && caller.key.allows(&model.name)
}

/// `owned_by`: the provider of the model's first target.
fn owner(route: &ModelRoute) -> &str {
    route
        .targets
        .first()
        .map_or("switchyard", |t| &t.provider.name)
}

pub async fn healthz() -> Response {
    json_response(StatusCode::OK, r#"{"status":"ok"}"#)
}

/// Ready when a config is loaded and at least one provider can take requests.
pub async fn readyz(State(app): State<App>) -> Response {
    if app.store.current().is_ready() {
        json_response(StatusCode::OK, r#"{"status":"ready"}"#)
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"status":"not ready","reason":"no usable provider"}"#,
        )
    }
}

/// OpenMetrics (with exemplars) for a scraper that asks for it, as Prometheus does when
/// exemplar storage is on; the Prometheus text format otherwise.
pub async fn metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|accept| accept.to_str().ok())
        .any(|accept| accept.contains("application/openmetrics-text"));
    let content_type = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    let mut response = app.metrics.render(openmetrics).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Unknown paths get the OpenAI error shape too.
pub async fn unknown_route(request: Request) -> Response {
    let error = GatewayError::UnknownRoute {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
    };
    error.into_http(&request_id::of(&request))
}

pub async fn method_not_allowed(request: Request) -> Response {
    let error = GatewayError::MethodNotAllowed {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
    };
    error.into_http(&request_id::of(&request))
}
