//! The whole request path in one place.
//!
//! ```text
//!  client ──► HTTP edge (tower-http + axum, this file's `router`)
//!             1. request id        minted by the gateway (x-switchyard-request-id); the
//!                                  client's x-request-id kept as a correlation id;
//!                                  both on every response
//!             2. catch panic       a panicking handler answers 500, OpenAI-shaped
//!             3. hygiene           hop-by-hop headers stripped both ways
//!             4. trace             /v1 routes: the SERVER span (the client's traceparent
//!                                  continued), x-switchyard-trace-id on the response
//!             5. auth              on the request head, before any body is read: the
//!                                  /v1 routes need a virtual key (→ Caller: key and the
//!                                  config snapshot), /admin routes the admin key
//!             6. handler           body read (size + idle limits), parsed once into a
//!                                  typed request, RequestContext created, pipeline run,
//!                                  reply (JSON or SSE relay) or error written
//!
//!         ──► pipeline (tower, this file's `pipeline`), over typed requests
//!             access                    may the key and its team use the model  (403)
//!             [planned] experiments     A/B and canary: model, provider, prompt version
//!             [planned] prompt          versioned templates from prompts/
//!             [planned] redact          PII out on the way in, restored on the way back
//!             [planned] cache           exact, per tenant
//!             route                     public model → targets        (ctx.route)
//!             limits                    requests, tokens, in flight, USD budgets of the
//!                                       key and team: reserved here, settled with the
//!                                       real usage when the request is over
//!             resilience                which target, retries, fallbacks, breakers,
//!                                       the deadline; per attempt, dispatch: one
//!                                       provider call, held until its first content,
//!                                       timeouts, usage
//!
//!         ──► provider adapter (providers/): OpenAI shape ⇄ native wire format
//!
//!  when the request is over, its record builds one Report for every sink (report.rs):
//!  the access log, the metrics, the feedback index (POST /v1/feedback scores a request
//!  it remembers); and ends the request's span with it (telemetry/)
//! ```
//!
//! Layers read and write the typed `RequestContext`; none imports another.

use std::sync::Arc;

use axum::Router;
use axum::response::Response;
use axum::routing::{get, post};
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};

use crate::error::GatewayError;
use crate::headers::{GATEWAY_REQUEST_ID, REQUEST_ID};
use crate::http::auth::{AuthLayer, Door, Listener};
use crate::http::request_id::{self, MakeId};
use crate::http::trace::TraceLayer;
use crate::http::{App, admin, feedback, handlers, hygiene};
use crate::pipeline::limits::LimitsLayer;
use crate::pipeline::resilience::Resilience;
use crate::pipeline::{Pipeline, access, route};
use crate::reload::ConfigStore;
use crate::shared::Shared;

/// The application every listener serves, over the store's current config.
pub fn app(store: Arc<ConfigStore>) -> App {
    let shared = store.shared().clone();
    App {
        pipeline: pipeline(&shared),
        metrics: shared.metrics.clone(),
        sinks: shared.sinks.clone(),
        store,
    }
}

/// The pipeline, outermost layer first. Layers are built once; what they do per request
/// comes from the request's config snapshot, so a reload never rebuilds this stack.
pub fn pipeline(shared: &Shared) -> Pipeline {
    let stack = ServiceBuilder::new()
        .layer(access::layer())
        .layer(route::layer())
        .layer(LimitsLayer::new(shared.limiter.clone()))
        .service(Resilience);
    BoxCloneSyncService::new(stack)
}

/// The public listener's application: the OpenAI API (every route behind the clients'
/// door), probes, metrics (unless `server.metrics_listen` gives them their own listener),
/// and the admin API (which answers only if the config puts it on this listener).
pub fn router(app: App) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/embeddings", post(handlers::embeddings))
        .route("/v1/models", get(handlers::list_models))
        .route("/v1/models/{model}", get(handlers::retrieve_model))
        .route("/v1/feedback", post(feedback::give))
        .route_layer(AuthLayer::new(app.store.clone(), Door::Clients))
        .route_layer(TraceLayer::new(app.store.clone()));
    let mut routes = Router::new()
        .merge(api)
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .merge(admin_routes(&app, Listener::Public));
    if app.store.current().server.metrics_listen.is_none() {
        routes = routes.route("/metrics", get(handlers::metrics));
    }
    with_edge(routes, app)
}

/// The metrics listener's application (`server.metrics_listen`): metrics and probes.
pub fn metrics_router(app: App) -> Router {
    let routes = Router::new()
        .route("/metrics", get(handlers::metrics))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz));
    with_edge(routes, app)
}

/// The admin listener's application: the admin API only.
pub fn admin_router(app: App) -> Router {
    with_edge(admin_routes(&app, Listener::Admin), app)
}

/// The admin API behind the admin door of `listener`.
fn admin_routes(app: &App, listener: Listener) -> Router<App> {
    let door = AuthLayer::new(app.store.clone(), Door::Admin(listener));
    admin::routes().route_layer(door)
}

/// Routes, then the edge layers (outermost first).
fn with_edge(routes: Router<App>, app: App) -> Router {
    let edge = ServiceBuilder::new()
        .map_request(request_id::distrust)
        .layer(SetRequestIdLayer::new(GATEWAY_REQUEST_ID, MakeId))
        .layer(PropagateRequestIdLayer::new(GATEWAY_REQUEST_ID))
        .map_request(request_id::correlate)
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(CatchPanicLayer::custom(panic_response))
        .map_request(hygiene::strip_request)
        .map_response(hygiene::strip_response);
    routes
        .fallback(handlers::unknown_route)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(edge)
        .with_state(app)
}

fn panic_response(_: Box<dyn std::any::Any + Send>) -> Response {
    tracing::error!("a request handler panicked");
    // The panic hook has no request at hand; the request-id layer still puts the id in
    // the response headers.
    GatewayError::Internal("handler panicked".into()).into_http("")
}
