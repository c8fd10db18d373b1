//! The resilience layer, the innermost service: which target each attempt goes to, when a
//! failed attempt is retried, and when the request moves on to a fallback model.
//!
//! Reads: `ctx.route`, the snapshot's `resilience` settings and models (for fallbacks), each
//! target's health. A request runs its model, then its fallbacks in order (or its context
//! fallbacks, when the prompt did not fit the context window), each for up to
//! `max_attempts` attempts, all inside one deadline:
//! - only retryable failures are retried (connection errors, timeouts before the answer
//!   started, 408, 429 except quota errors, 500/502/503/504/529, malformed answers); any
//!   other error is the answer, after exactly one attempt;
//! - a retry goes to a target that has not failed this request when there is one, at once;
//!   otherwise to one that has, after its own Retry-After (when it fits the deadline) or an
//!   exponential backoff with full jitter; either way only if the retry budget of the
//!   target it goes to allows it;
//! - targets whose circuit breaker is open are skipped; a model with none left fails fast
//!   (or, like a model without a usable provider, hands over to its fallbacks).
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

/// When a request must be over.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    /// Every attempt, retry and fallback: `resilience.deadline`, or the model's
    /// `timeouts.total` when tighter.
    pub attempts: Instant,
    /// How long `attempts` allowed from the start.
    pub total: Duration,
    /// A stream that has started: only the model's `timeouts.total`, when set (a long
    /// generation is otherwise bounded by the idle timeout alone).
    pub stream: Option<Instant>,
}

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
    let now = Instant::now();
    let total = route
        .timeouts
        .total
        .unwrap_or(settings.deadline)
        .min(settings.deadline);
    let deadline = Deadline {
        attempts: now + total,
        total,
        stream: route.timeouts.total.map(|total| now + total),
    };
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
        } else if !error.is_retryable()
            && !matches!(
                error,
                GatewayError::CircuitOpen { .. } | GatewayError::NoUsableTarget { .. }
            )
        {
            return Err(error);
        }
        let next = chain
            .pop_front()
            .and_then(|name| ctx.snapshot.models.get(&name).cloned());
        let Some(next) = next.filter(|_| Instant::now() < deadline.attempts) else {
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
    deadline: Deadline,
    has_fallback: bool,
) -> Result<Reply, GatewayError> {
    let settings = &ctx.snapshot.resilience;
    let metrics = ctx.record.metrics();
    // The targets that failed this request, with the Retry-After each asked for.
    let mut failed: Vec<(Arc<Target>, Option<Duration>)> = Vec::new();
    // The Retry-After of `target`'s failure this request, if it failed.
    let failure = |failed: &[(Arc<Target>, Option<Duration>)], target: &Target| {
        failed
            .iter()
            .find(|(f, _)| std::ptr::eq(&**f, target))
            .map(|(_, retry_after)| *retry_after)
    };
    let retry_allowed = |target: &Target| {
        let allowed = target.health.withdraw_retry();
        if !allowed {
            tracing::warn!(
                request_id = &*ctx.record.request_id,
                target_name = &*target.health.name,
                "retry budget spent: not retrying on this target"
            );
        }
        allowed
    };
    let mut last_error = None;
    for retry in 0..settings.max_attempts {
        // A target that has not failed this request, at once; else one that has, after
        // its pause. Every retry is paid from the budget of the target it goes to.
        let mut pause = Duration::ZERO;
        let chosen = balance::pick(model, &settings.breaker, metrics, |t| {
            failure(&failed, t).is_none() && (retry == 0 || retry_allowed(t))
        })
        .or_else(|| {
            balance::pick(model, &settings.breaker, metrics, |t| {
                let Some(retry_after) = failure(&failed, t) else {
                    return false;
                };
                let wait = wait(
                    settings,
                    retry,
                    retry_after,
                    deadline.attempts,
                    has_fallback,
                );
                let allowed = wait.is_some() && retry_allowed(t);
                pause = wait.unwrap_or_default();
                allowed
            })
        });
        let Some((target, pass)) = chosen else {
            return Err(last_error.unwrap_or_else(|| unavailable(model)));
        };
        if retry == 0 {
            target.health.deposit();
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        let timeouts = target.timeouts(&model.timeouts);
        match dispatch::attempt(ctx, call, &target, pass, timeouts, deadline).await {
            Ok(reply) => return Ok(reply),
            Err(error) => {
                if !error.is_retryable() || Instant::now() >= deadline.attempts {
                    return Err(error);
                }
                failed.push((target, error.retry_after()));
                last_error = Some(error);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| unavailable(model)))
}

/// How long to wait before retrying a target that failed, or `None` when it should not
/// be retried now: its Retry-After does not fit the deadline, or is longer than the
/// longest backoff while a fallback could answer at once.
fn wait(
    settings: &ResilienceSettings,
    retry: u32,
    retry_after: Option<Duration>,
    deadline: Instant,
    has_fallback: bool,
) -> Option<Duration> {
    let pause = match retry_after {
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
