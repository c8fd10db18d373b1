//! The limits layer: rate limits and budgets of the calling key and its team, reserved
//! before the call and settled with its real usage and cost after it (streams included,
//! when they end or are dropped).
//!
//! Reads: `ctx.key` (and its team), `ctx.route` (the model, its targets' prices and
//! tokenizer), the request (prompt and completion budget). Writes on the record: the limit
//! status for the `x-ratelimit-*` headers and the settlement to run when the request is
//! over. Fails with 429: `rate_limit_exceeded` with `Retry-After`, or `insufficient_quota`
//! for a spent budget. Requests of keys with no limits and no budget are only booked (their
//! usage and cost, for the admin API): no token counting, no headers, no round trip before
//! the call.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tower::{Layer, Service};

use super::{Call, GatewayRequest};
use crate::api::reply::Reply;
use crate::config::schema::{BudgetConfig, LimitConfig};
use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::limits::tokens::Tokenizer;
use crate::limits::{Check, Limiter, Period, Plan, Rejection, key_scope, team_scope};
use crate::snapshot::ModelRoute;
use crate::telemetry::attributes::LIMIT_DECISION;
use crate::usage::estimate_tokens;

#[derive(Clone)]
pub struct LimitsLayer {
    limiter: Arc<Limiter>,
}

impl LimitsLayer {
    pub fn new(limiter: Arc<Limiter>) -> Self {
        Self { limiter }
    }
}

impl<S> Layer<S> for LimitsLayer {
    type Service = Limits<S>;

    fn layer(&self, inner: S) -> Limits<S> {
        Limits {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Limits<S> {
    inner: S,
    limiter: Arc<Limiter>,
}

impl<S> Service<GatewayRequest> for Limits<S>
where
    S: Service<GatewayRequest, Response = Reply, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Reply;
    type Error = GatewayError;
    type Future = BoxFuture<'static, Result<Reply, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: GatewayRequest) -> Self::Future {
        // The service that was made ready is the one that must be called.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let limiter = self.limiter.clone();
        Box::pin(async move {
            let mut step = request.ctx.record.trace().step("limits");
            let plan = plan(&request.ctx, &request.call).await;
            let record = &request.ctx.record;
            let admission = match limiter.reserve(&plan).await {
                Ok(admission) => admission,
                Err(rejection) => {
                    record.metrics().count_limit_refusal(rejection.kind());
                    let error = rejected(rejection);
                    step.note(LIMIT_DECISION, error.label());
                    step.fail(&error);
                    return Err(error);
                }
            };
            step.note(LIMIT_DECISION, "admitted");
            drop(step);
            record.set_limit_status(admission.status);
            let settling = limiter.clone();
            record.on_settle(Box::new(move |used| settling.settle(admission, used)));
            inner.call(request).await
        })
    }
}

fn rejected(rejection: Rejection) -> GatewayError {
    match rejection {
        Rejection::RateLimited {
            limit, retry_after, ..
        } => GatewayError::RateLimited { limit, retry_after },
        Rejection::OverBudget { budget, .. } => GatewayError::OverBudget { budget },
        Rejection::Unavailable => GatewayError::LimitsUnavailable,
    }
}

/// Every limit and budget that applies to this request, with what it would reserve.
async fn plan(ctx: &RequestContext, call: &Call) -> Plan {
    let (key, Some(route)) = (&ctx.key, &ctx.route) else {
        return Plan::default();
    };
    let model = &*route.name;
    let mut scopes: Vec<(String, &LimitConfig, Option<&LimitConfig>, &BudgetConfig)> = vec![(
        key_scope(&key.name),
        &key.limits,
        key.model_limits.get(model),
        &key.budget,
    )];
    if let Some(team) = &key.team {
        scopes.push((
            team_scope(&team.name),
            &team.limits,
            team.model_limits.get(model),
            &team.budget,
        ));
    }
    let counts_tokens = scopes.iter().any(|(_, limits, per_model, budget)| {
        limits.tpm.is_some() || per_model.is_some_and(|l| l.tpm.is_some()) || has_budget(budget)
    });
    let (tokens, cost) = if counts_tokens {
        worst_case(ctx, route, call).await
    } else {
        (0, 0.0)
    };
    let mut plan = Plan::default();
    for (scope, limits, per_model, budget) in scopes {
        plan.accounts.push(Arc::from(scope.as_str()));
        add_limits(&mut plan, &scope, limits, tokens);
        if let Some(per_model) = per_model {
            add_limits(
                &mut plan,
                &format!("{scope} on model '{model}'"),
                per_model,
                tokens,
            );
        }
        let budgets = [
            (Period::Day, budget.daily_usd),
            (Period::Month, budget.monthly_usd),
            (Period::Total, budget.total_usd),
        ];
        for (period, limit) in budgets {
            if let Some(limit_usd) = limit {
                let scope = Arc::from(scope.as_str());
                plan.checks.push(Check::Budget {
                    scope,
                    period,
                    limit_usd,
                    amount_usd: cost,
                });
            }
        }
    }
    plan
}

fn has_budget(budget: &BudgetConfig) -> bool {
    budget.daily_usd.is_some() || budget.monthly_usd.is_some() || budget.total_usd.is_some()
}

fn add_limits(plan: &mut Plan, scope: &str, limits: &LimitConfig, tokens: u64) {
    let scope: Arc<str> = Arc::from(scope);
    if let Some(per_minute) = limits.rpm {
        plan.checks.push(Check::Requests {
            scope: scope.clone(),
            per_minute,
        });
    }
    if let Some(per_minute) = limits.tpm {
        plan.checks.push(Check::Tokens {
            scope: scope.clone(),
            per_minute,
            amount: tokens,
        });
    }
    if let Some(max) = limits.max_concurrent {
        plan.checks.push(Check::Concurrency { scope, max });
    }
}

/// Prompts longer than this (bytes of text) are counted on the blocking pool: at about
/// 20 µs a kilobyte, counting them on an async worker would stall the requests behind it.
const COUNT_OFF_WORKER: usize = 32 * 1024;

/// The most tokens the request can use (its prompt, counted with the model's tokenizer
/// when known, plus its completion budget), and the most it can cost (at its most
/// expensive target).
async fn worst_case(ctx: &RequestContext, route: &ModelRoute, call: &Call) -> (u64, f64) {
    let snapshot = &ctx.snapshot;
    let tokenizer = route
        .usable_targets()
        .next()
        .map(|t| t.tokenizer)
        .unwrap_or_default();
    let prompt = prompt_tokens(tokenizer, call).await;
    let completion = match call {
        Call::Chat(request) => request
            .max_output_tokens()
            .unwrap_or(snapshot.limits.default_completion_tokens),
        Call::Embeddings(_) => 0,
    };
    let cost = route
        .usable_targets()
        .filter_map(|t| snapshot.prices.price(&t.upstream_model))
        .map(|price| price.ceiling(prompt, completion))
        .fold(0.0, f64::max);
    (prompt + completion, cost)
}

async fn prompt_tokens(tokenizer: Tokenizer, call: &Call) -> u64 {
    let count: Box<dyn FnOnce() -> u64 + Send> = match call {
        Call::Chat(request) => {
            let request = request.clone();
            Box::new(move || tokenizer.chat_prompt(&request))
        }
        Call::Embeddings(request) => {
            let request = request.clone();
            Box::new(move || tokenizer.texts(&request.input.texts()))
        }
    };
    let text_len = call.text_len();
    if text_len <= COUNT_OFF_WORKER {
        return count();
    }
    // Counting cannot panic; should the blocking pool fail anyway, estimate.
    tokio::task::spawn_blocking(count)
        .await
        .unwrap_or_else(|_| estimate_tokens(text_len))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::api::chat::ChatRequest;

    fn chat(text: &str) -> Call {
        let body =
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": text}]});
        let request: ChatRequest = serde_json::from_value(body).unwrap();
        Call::Chat(Arc::new(request))
    }

    #[tokio::test]
    async fn a_long_prompt_counted_on_the_blocking_pool_counts_like_any_other() {
        let tokenizer = Tokenizer::for_model("gpt-4o");
        let long = "hello world ".repeat(4 * 1024);
        let call = chat(&long);
        assert!(call.text_len() > COUNT_OFF_WORKER);
        let Call::Chat(request) = &call else {
            unreachable!()
        };
        assert_eq!(
            prompt_tokens(tokenizer, &call).await,
            tokenizer.chat_prompt(request)
        );
        // "hello world" is 2 tokens, plus the message's and the answer's framing.
        assert_eq!(
            prompt_tokens(tokenizer, &chat("hello world")).await,
            2 + 4 + 3
        );
    }
}
