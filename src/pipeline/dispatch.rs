//! The innermost service: sends the call to one target of the route and meters the answer.
//!
//! Reads: `ctx.route`. Writes on the record: the target, the upstream timings, the usage
//! (the provider's, or an estimate marked as such). Applies the provider's timeouts: the
//! request timeout until the provider answers (the whole body when not streaming), then
//! the idle timeout between stream chunks.

use std::future::Future;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tower::Service;

use super::{Call, GatewayRequest, balance};
use crate::context::{Mark, RequestRecord};
use crate::error::GatewayError;
use crate::providers::{ChatCall, EmbeddingsCall};
use crate::snapshot::Target;
use crate::stream::{IdleTimeout, JsonReply, Metered, Reply};
use crate::usage::{Usage, UsageSource, estimate_prompt_tokens, estimate_tokens};

#[derive(Debug, Clone, Copy, Default)]
pub struct Dispatch;

impl Service<GatewayRequest> for Dispatch {
    type Response = Reply;
    type Error = GatewayError;
    type Future = BoxFuture<'static, Result<Reply, GatewayError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: GatewayRequest) -> Self::Future {
        Box::pin(dispatch(request))
    }
}

async fn dispatch(request: GatewayRequest) -> Result<Reply, GatewayError> {
    let GatewayRequest { ctx, call } = request;
    let route = ctx
        .route
        .as_ref()
        .ok_or_else(|| GatewayError::Internal("dispatch reached without a route".into()))?;
    let target = balance::pick(route).ok_or_else(|| GatewayError::NoUsableTarget {
        model: route.name.to_string(),
        reason: "no target has a weight above zero".into(),
    })?;
    let record = &ctx.record;
    record.set_target(target.provider.name.clone(), target.upstream_model.clone());
    record.set_price(ctx.snapshot.prices.price(&target.upstream_model));
    record.mark(Mark::UpstreamStart);
    let reply = attempt(target, &call, &record.request_id)
        .await
        .inspect_err(|error| log_failure(record, target, error))?;
    record.mark(Mark::FirstByte);
    Ok(match reply {
        Reply::Json(json) => {
            record.set_usage(json.usage.unwrap_or_else(|| estimate(&call, &json)));
            record.mark(Mark::End);
            Reply::Json(json)
        }
        Reply::Stream(stream) => {
            let prompt_estimate = match &call {
                Call::Chat(chat) => estimate_prompt_tokens(chat),
                Call::Embeddings(_) => 0,
            };
            let idle = target.provider.timeouts.stream_idle;
            let stream = IdleTimeout::new(stream, idle, target.provider.name.clone());
            let metered = Metered::new(Box::pin(stream), record.clone(), prompt_estimate);
            Reply::Stream(Box::pin(metered))
        }
    })
}

/// One call to one target, bounded by the provider's request timeout.
async fn attempt(target: &Target, call: &Call, request_id: &str) -> Result<Reply, GatewayError> {
    let provider = &target.provider;
    let model = &target.upstream_model;
    let timeout = provider.timeouts.request;
    match call {
        Call::Chat(request) => {
            let call = ChatCall {
                request,
                model,
                request_id,
                max_tokens: target.max_tokens,
            };
            within(timeout, &provider.name, provider.adapter.chat(call)).await
        }
        Call::Embeddings(request) => {
            let call = EmbeddingsCall {
                request,
                model,
                request_id,
            };
            within(timeout, &provider.name, provider.adapter.embeddings(call))
                .await
                .map(Reply::Json)
        }
    }
}

async fn within<T>(
    limit: Duration,
    provider: &str,
    future: impl Future<Output = Result<T, GatewayError>>,
) -> Result<T, GatewayError> {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| {
            Err(GatewayError::UpstreamTimeout {
                provider: provider.to_owned(),
                phase: "response",
                after: limit,
            })
        })
}

/// Usage for a complete answer whose provider reported none.
fn estimate(call: &Call, reply: &JsonReply) -> Usage {
    let prompt = match call {
        Call::Chat(chat) => estimate_prompt_tokens(chat),
        Call::Embeddings(request) => request
            .input
            .texts()
            .iter()
            .map(|t| estimate_tokens(t.len()))
            .sum(),
    };
    Usage::new(
        prompt,
        estimate_tokens(reply.content_len),
        UsageSource::Estimated,
    )
}

fn log_failure(record: &RequestRecord, target: &Target, error: &GatewayError) {
    tracing::warn!(
        request_id = &*record.request_id,
        provider = &*target.provider.name,
        upstream_model = &*target.upstream_model,
        error = %error,
        "upstream call failed"
    );
}
