//! The access log: one line per finished request (target `switchyard::access`), written
//! from its report. Names the key, never the key itself.

use std::time::Duration;

use crate::report::{Report, Sink};

pub struct AccessLog;

impl Sink for AccessLog {
    fn record(&self, report: &Report) {
        let served_by = report.served_by.as_ref();
        let usage = report.usage.as_ref();
        tracing::info!(
            target: "switchyard::access",
            request_id = &*report.request_id,
            correlation_id = report.correlation_id.as_deref(),
            endpoint = report.endpoint.as_str(),
            status = report.status,
            key = &*report.key,
            team = report.team.as_deref(),
            model = report.model.as_deref(),
            provider = served_by.map(|s| &*s.provider),
            upstream_model = served_by.map(|s| &*s.upstream_model),
            attempts = report.attempts,
            stream = report.stream,
            prompt_tokens = usage.map(|u| u.prompt_tokens),
            completion_tokens = usage.map(|u| u.completion_tokens),
            usage_source = usage.map(|u| u.source.as_str()),
            cost_usd = report.cost.map(|c| c.usd),
            cost_source = report.cost.map_or("unpriced", |c| c.source.as_str()),
            upstream_start_us = micros(report.timings.upstream_start),
            first_byte_us = micros(report.timings.first_byte),
            first_content_us = micros(report.timings.first_content),
            upstream_us = micros(report.upstream_time()),
            total_us = micros(Some(report.total)),
            overhead_request_us = micros(report.timings.upstream_start),
            overhead_response_us = micros(report.response_overhead()),
            finish_reason = report.finish_reasons.first().map(|r| r.as_str()),
            error = report.error,
            resumed_on = report.resumed_on.as_deref(),
            trace_id = report.trace_id.as_deref(),
            span_id = report.span_id.as_deref(),
            "request"
        );
    }
}

/// Whole microseconds: integers format several times faster than floats, and this runs
/// once per request.
fn micros(duration: Option<Duration>) -> Option<u64> {
    duration.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
