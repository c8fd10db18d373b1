//! The resilience layer, the innermost service: which target each attempt goes to, when a
//! failed attempt is retried, and when the request moves on to a fallback model.
//!
//! Reads: `ctx.route`, the snapshot's `resilience` settings and models (for fallbacks), each
//! target's health. A request runs its model, then its fallbacks in order (or its context
//! fallbacks, when the prompt did not fit the context window), each for up to
//! `max_attempts` attempts, all inside one deadline:
//! - only retryable failures are retried (connection errors, timeouts before the answer
//!   started, malformed answers, and upstream errors the adapter classified as rate
//!   limited, overloaded or a server failure: 408, 429 except quota errors, 5xx); a
//!   target the gateway misconfigured (the provider rejected its credentials, or does not
//!   know its model) is not tried again, but another target or a fallback is; any other
//!   error is the answer, after exactly one attempt;
//! - a target that timed out (no answer, or no first content, within `first_byte`) is not
//!   tried again in the request when another target or a fallback can answer (the
//!   model's `on_timeout: retry` says otherwise): a silent upstream costs one timeout;
//! - a retry goes to a target that has not failed this request when there is one, at once;
//!   otherwise to one that has, after its own Retry-After (when it fits the deadline) or an
//!   exponential backoff with full jitter; either way only if the retry budget of the
//!   target it goes to allows it;
//! - targets whose circuit breaker is open are skipped; a model with none left fails fast
//!   (or, like a model without a usable provider, hands over to its fallbacks).
//!
//! Streams are retried only until their first content chunk (see `dispatch.rs`); after it,
//! the answer is the client's and is never replayed: a stream that breaks then is resumed
//! on another target where that is possible (`resume.rs`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::clock::{self, Instant};
use futures_util::future::BoxFuture;
use tower::Service;

use super::dispatch::{self, Deadline};
use super::resume::{self, Resumable};
use super::{Call, GatewayRequest, balance};
use crate::api::reply::Reply;
use crate::config::schema::{OnTimeout, ResilienceSettings};
use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::snapshot::{ModelRoute, Target};
use crate::telemetry::spans::Cause;

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
    // Shared with a stream that may need to resume on another target after this returns.
    let ctx = Arc::new(ctx);
    let route = ctx
        .route
        .clone()
        .ok_or_else(|| GatewayError::Internal("resilience reached without a route".into()))?;
    let settings = &ctx.snapshot.resilience;
    let now = clock::now();
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
    let mut cause = Cause::First;
    loop {
        let has_fallback = !chain.is_empty();
        let error = match run_model(&ctx, &call, &model, deadline, has_fallback, cause).await {
            Ok(Reply::Stream(stream)) => {
                let later = chain
                    .iter()
                    .filter_map(|name| ctx.snapshot.models.get(name).cloned());
                let plan = Resumable {
                    models: std::iter::once(model).chain(later).collect(),
                    ctx,
                    call,
                    deadline,
                };
                return Ok(Reply::Stream(resume::resumable(stream, plan)));
            }
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
        } else if !error.fails_over()
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
        let Some(next) = next.filter(|_| clock::now() < deadline.attempts) else {
            return Err(error);
        };
        tracing::info!(
            request_id = &*ctx.record.request_id,
            from = &*model.name,
            to = &*next.name,
            error = error.label(),
            "falling back to another model"
        );
        ctx.record.metrics().count_fallback(error.label());
        cause = Cause::Fallback(error.label());
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
    first: Cause,
) -> Result<Reply, GatewayError> {
    let settings = &ctx.snapshot.resilience;
    let mut failures = Failures::default();
    // A silent target costs one timeout, not one per retry, when something else can answer.
    let retry_silence = model.on_timeout == OnTimeout::Retry
        || (model.usable_targets().count() < 2 && !has_fallback);
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
        // A target that has not failed this request, at once; else one that has and may
        // be tried again, after its pause. Every retry is paid from the budget of the
        // target it goes to.
        let mut pause = Duration::ZERO;
        let chosen = balance::pick(ctx, call, model, |t| {
            failures.of(t).is_none() && (retry == 0 || retry_allowed(t))
        })
        .or_else(|| {
            balance::pick(ctx, call, model, |t| {
                let Some(Retry::After(retry_after)) = failures.of(t) else {
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
        } else if let Some(error) = &last_error {
            ctx.record.metrics().count_retry(error.label());
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        let timeouts = target.timeouts(&model.timeouts);
        let cause = match &last_error {
            Some(error) => Cause::Retry(GatewayError::label(error)),
            None => first,
        };
        match dispatch::attempt(ctx, call, &target, pass, timeouts, deadline, cause).await {
            Ok(reply) => return Ok(reply),
            Err(error) => {
                if !error.fails_over() || clock::now() >= deadline.attempts {
                    return Err(error);
                }
                failures.add(target, &error, retry_silence);
                last_error = Some(error);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| unavailable(model)))
}

/// The targets that failed this request, and whether each may be tried again.
#[derive(Default)]
struct Failures(Vec<(Arc<Target>, Retry)>);

#[derive(Clone, Copy)]
enum Retry {
    /// After its Retry-After, if it gave one (else a backoff).
    After(Option<Duration>),
    /// Not this request: the target itself is misconfigured (its credentials, its model),
    /// or it stayed silent and something else can answer, so only another target can help.
    Never,
}

impl Failures {
    /// `target` failed with `error`; a silent target is tried again only if
    /// `retry_silence`.
    fn add(&mut self, target: Arc<Target>, error: &GatewayError, retry_silence: bool) {
        let retry = if error.is_retryable() && (retry_silence || !error.is_silence()) {
            Retry::After(error.retry_after())
        } else {
            Retry::Never
        };
        self.0.push((target, retry));
    }

    /// How `target` failed this request, if it did.
    fn of(&self, target: &Target) -> Option<Retry> {
        self.0
            .iter()
            .find(|(failed, _)| std::ptr::eq(&**failed, target))
            .map(|(_, retry)| *retry)
    }
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
    (clock::now() + pause < deadline).then_some(pause)
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

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::pipeline::testing;

    fn settings() -> ResilienceSettings {
        let mut settings = ResilienceSettings::default();
        settings.backoff.base = Duration::from_millis(100);
        settings.backoff.max = Duration::from_secs(1);
        settings
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_waits_for_its_retry_after_when_it_fits() {
        let settings = settings();
        let in_10s = clock::now() + Duration::from_secs(10);
        let two = Some(Duration::from_secs(2));
        assert_eq!(wait(&settings, 1, two, in_10s, false), two);
        let in_1s = clock::now() + Duration::from_secs(1);
        assert_eq!(
            wait(&settings, 1, two, in_1s, false),
            None,
            "past the deadline"
        );
        assert_eq!(
            wait(&settings, 1, two, in_10s, true),
            None,
            "longer than the longest backoff while a fallback could answer now"
        );
    }

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_ceiling() {
        let settings = settings();
        fastrand::seed(7);
        for (retry, ceiling_ms) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (9, 1000)] {
            let pauses: Vec<Duration> = (0..200).map(|_| backoff(&settings, retry)).collect();
            let ceiling = Duration::from_millis(ceiling_ms);
            assert!(pauses.iter().all(|p| *p <= ceiling), "retry {retry}");
            let longest = pauses.iter().max().copied().unwrap_or_default();
            assert!(
                longest > ceiling.mul_f64(0.9),
                "jitter spans the range: retry {retry}"
            );
        }
    }

    const HANGING_PRIMARY: &str = r#"
providers:
  silent: {kind: mock, mock: {faults: [{hang: true}]}, timeouts: {first_byte: 500ms}}
  spare: {kind: mock}
models:
  primary: {targets: [{provider: silent}], fallbacks: [backup]}
  alone: {targets: [{provider: silent}], timeouts: {total: 1200ms}}
  backup: {targets: [{provider: spare}]}
resilience: {max_attempts: 1}
"#;

    #[tokio::test(start_paused = true)]
    async fn a_silent_target_costs_its_first_byte_timeout_then_the_fallback_answers() {
        let started = clock::now();
        let reply = testing::chat(HANGING_PRIMARY, "primary", false).await;
        assert!(matches!(reply, Ok(Reply::Json(_))));
        assert_eq!(clock::now() - started, Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_target_is_not_retried_while_a_fallback_can_answer() {
        let retries = HANGING_PRIMARY.replace(
            "max_attempts: 1",
            "max_attempts: 3, backoff: {base: 1ms, max: 1ms}",
        );
        let started = clock::now();
        let reply = testing::chat(&retries, "primary", false).await;
        assert!(matches!(reply, Ok(Reply::Json(_))));
        assert_eq!(
            clock::now() - started,
            Duration::from_millis(500),
            "one timeout"
        );
        // With `on_timeout: retry`, the model's three attempts each wait their timeout.
        let retry = retries.replace(
            "fallbacks: [backup]}",
            "fallbacks: [backup], on_timeout: retry}",
        );
        let started = clock::now();
        let reply = testing::chat(&retry, "primary", false).await;
        assert!(matches!(reply, Ok(Reply::Json(_))));
        // Paused time: three 500 ms timeouts, and between them two jittered backoffs of at
        // most 1 ms each (`backoff: {max: 1ms}`).
        let backoffs = (clock::now() - started)
            .checked_sub(Duration::from_millis(1500))
            .expect("three timeouts");
        assert!(backoffs <= Duration::from_millis(2), "{backoffs:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_models_total_ends_the_attempts_at_the_deadline() {
        let config = HANGING_PRIMARY.replace(
            "max_attempts: 1",
            "max_attempts: 5, backoff: {base: 1ms, max: 1ms}",
        );
        let started = clock::now();
        let Err(error) = testing::chat(&config, "alone", false).await else {
            panic!("a silent target cannot answer")
        };
        assert!(
            matches!(error, GatewayError::DeadlineExceeded { .. }),
            "{error:?}"
        );
        // Attempts of 500 ms (and pauses of at most 1 ms) until the 1.2 s deadline cuts
        // the third short.
        assert_eq!(clock::now() - started, Duration::from_millis(1200));
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_is_retried_after_its_retry_after() {
        let config = r#"
providers:
  busy: {kind: mock, mock: {faults: [{status: 429, retry_after: 2s}]}}
models:
  m: {targets: [{provider: busy}]}
resilience: {max_attempts: 3}
"#;
        let started = clock::now();
        let error = testing::chat(config, "m", false).await.err();
        assert_eq!(
            error.and_then(|e| e.retry_after()),
            Some(Duration::from_secs(2))
        );
        // Three attempts, two pauses of exactly the Retry-After.
        assert_eq!(clock::now() - started, Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_first_token_is_abandoned_at_the_first_byte_timeout() {
        let config = r#"
providers:
  slow: {kind: mock, mock: {time_to_first_token: 2s}, timeouts: {first_byte: 300ms}}
  spare: {kind: mock, mock: {time_to_first_token: 100ms, chunk_interval: 50ms}}
models:
  m: {targets: [{provider: slow}], fallbacks: [backup]}
  backup: {targets: [{provider: spare}]}
resilience: {max_attempts: 1}
"#;
        let started = clock::now();
        let Ok(Reply::Stream(mut chunks)) = testing::chat(config, "m", true).await else {
            panic!("a stream")
        };
        // The fallback's stream has started: its first content is held until here.
        assert_eq!(
            clock::now() - started,
            Duration::from_millis(300 + 100 + 50)
        );
        let mut count = 0;
        while let Some(chunk) = chunks.next().await {
            assert!(chunk.is_ok());
            count += 1;
        }
        assert!(count > 2, "the whole answer follows");
    }
}
