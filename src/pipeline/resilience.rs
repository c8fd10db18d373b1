//! The resilience layer, the innermost service: which target each attempt goes to, when a
//! failed attempt is retried, and when the request moves on to a fallback model.
//!
//! Reads: `ctx.route`, the snapshot's `resilience` settings and models (for fallbacks), each
//! target's health. A request runs its model, then its fallbacks in order (or its context
//! fallbacks, when the prompt did not fit the context window), each for up to
//! `max_attempts` attempts, all inside one deadline:
//! - only retryable failures are retried (connection errors, timeouts before the answer
//!   started, 408/429/5xx except quota errors, malformed answers); any other error is the
//!   answer, after exactly one attempt;
//! - a retry goes to a target that has not failed this request when there is one, at once;
//!   otherwise to the same target after the upstream's Retry-After (when it fits the
//!   deadline) or an exponential backoff with full jitter, and only if that target's retry
//!   budget allows it;
//! - targets whose circuit breaker is open are skipped; a model with none left fails fast.
//!
//! Streams are retried only until their first content chunk (see `dispatch.rs`); after it,
//! the answer is the client's and is never replayed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;
use tower::Service;

use super::{Call, GatewayRequest, balance, dispatch};
use crate::config::schema::ResilienceSettings;
use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::snapshot::{ModelRoute, Target};
use crate::stream::Reply;

#[derive(Debug, Clone, Copy, Default)]
pub struct Resilience;

impl Service<GatewayRequest> for Resilience {
    type Response = Reply;
    type Error = GatewayError;
    type Future = BoxFuture<'static, Result<Reply, GatewayError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: GatewayRequest) -> Self::Future {
        Box::pin(serve(request))
    }
}

async fn serve(request: GatewayRequest) -> Result<Reply, GatewayError> {
    let GatewayRequest { ctx, call } = request;
    let route = ctx
        .route
        .clone()
        .ok_or_else(|| GatewayError::Internal("resilience reached without a route".into()))?;
    let settings = &ctx.snapshot.resilience;
    let total = route
        .timeouts
        .total
        .map_or(settings.deadline, |total| total.min(settings.deadline));
    let deadline = Instant::now() + total;
    let mut chain: VecDeque<Arc<str>> = route.fallbacks.iter().cloned().collect();
    let mut context_fallbacks = Some(&route.context_fallbacks);
    let mut model = route.clone();
    loop {
        let error = match run_model(&ctx, &call, &model, deadline, !chain.is_empty()).await {
            Ok(reply) => return Ok(reply),
            Err(error) => error,
        };
        if error.is_context_window() {
            // Only the context fallbacks can help; asked once, as their own chain.
            match context_fallbacks.take() {
                Some(fallbacks) if !fallbacks.is_empty() => {
                    chain = fallbacks.iter().cloned().collect();
                }
                _ => return Err(error),
            }
        } else if !error.is_retryable() && !matches!(error, GatewayError::CircuitOpen { .. }) {
            return Err(error);
        }
        let next = chain
            .pop_front()
            .and_then(|name| ctx.snapshot.models.get(&name).cloned());
        let Some(next) = next.filter(|_| Instant::now() < deadline) else {
            return Err(error);
        };
        tracing::info!(
            request_id = &*ctx.record.request_id,
            from = &*model.name,
            to = &*next.name,
            error = error.label(),
            "falling back to another model"
        );
        model = next;
    }
}

/// Up to `max_attempts` attempts on one model's targets.
async fn run_model(
    ctx: &RequestContext,
    call: &Call,
    model: &ModelRoute,
    deadline: Instant,
    has_fallback: bool,
) -> Result<Reply, GatewayError> {
    let settings = &ctx.snapshot.resilience;
    let metrics = ctx.record.metrics();
    let mut failed: Vec<Arc<Target>> = Vec::new();
    let mut last_error = None;
    for retry in 0..settings.max_attempts {
        let target = match balance::pick(model, &failed, &settings.breaker, metrics) {
            Some(fresh) => fresh,
            None => {
                let Some(error) = last_error else {
                    return Err(unavailable(model));
                };
                // Every target failed this request already: one of them again, if it
                // may be retried, after a pause.
                let Some(again) = balance::pick(model, &[], &settings.breaker, metrics) else {
                    return Err(error);
                };
                let Some(pause) = pause(settings, retry, &error, deadline, has_fallback) else {
                    return Err(error);
                };
                if !again.health.withdraw_retry() {
                    tracing::warn!(
                        request_id = &*ctx.record.request_id,
                        target_name = &*again.health.name,
                        "retry budget spent: not retrying"
                    );
                    return Err(error);
                }
                tokio::time::sleep(pause).await;
                again
            }
        };
        if !failed.iter().any(|f| Arc::ptr_eq(f, &target)) {
            target.health.deposit();
        }
        let timeouts = target.timeouts(&model.timeouts);
        match dispatch::attempt(ctx, call, &target, timeouts, deadline).await {
            Ok(reply) => return Ok(reply),
            Err(error) => {
                if !error.is_retryable() {
                    return Err(error);
                }
                if Instant::now() >= deadline {
                    return Err(error);
                }
                failed.push(target);
                last_error = Some(error);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| unavailable(model)))
}

/// How long to wait before retrying a target that failed, or `None` when it should not
/// be retried now: its Retry-After does not fit the deadline, or is longer than the
/// longest backoff while a fallback could answer at once.
fn pause(
    settings: &ResilienceSettings,
    retry: u32,
    error: &GatewayError,
    deadline: Instant,
    has_fallback: bool,
) -> Option<Duration> {
    let pause = match error.retry_after() {
        Some(after) if has_fallback && after > settings.backoff.max => return None,
        Some(after) => after,
        None => backoff(settings, retry),
    };
    (Instant::now() + pause < deadline).then_some(pause)
}

/// Exponential backoff with full jitter: a random pause up to `base * 2^(retry - 1)`,
/// capped at `max`.
fn backoff(settings: &ResilienceSettings, retry: u32) -> Duration {
    let ceiling = settings
        .backoff
        .base
        .saturating_mul(1 << retry.saturating_sub(1).min(16))
        .min(settings.backoff.max);
    ceiling.mul_f64(fastrand::f64())
}

/// No target of `model` can take the request: none is usable, or every breaker is open.
fn unavailable(model: &ModelRoute) -> GatewayError {
    if let Some(reason) = model.unusable_reason() {
        return GatewayError::NoUsableTarget {
            model: model.name.to_string(),
            reason,
        };
    }
    let retry_in = model
        .usable_targets()
        .map(|t| t.health.breaker.next_probe_in())
        .min()
        .unwrap_or_default();
    GatewayError::CircuitOpen {
        model: model.name.to_string(),
        retry_in,
    }
}
