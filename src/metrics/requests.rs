//! The instruments every finished request's report feeds: Switchyard's own (requests,
//! durations, gateway overhead, tokens and cost by team) and the GenAI client instruments
//! of the OpenTelemetry conventions, with their Prometheus names and bucket boundaries.
//!
//! The GenAI instruments describe the gateway's call to a provider, so they are recorded
//! only for requests that made one: `gen_ai_request_model` is the model the gateway asked
//! the provider for (the target's upstream model), `gen_ai_response_model` the one the
//! provider says answered, as on the attempt's span.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::clock::{self, Instant};
use crate::config::schema::ProviderKind;
use crate::report::{Endpoint, Report};

/// The conventions' boundaries for operation durations and chunk times (seconds).
const GEN_AI_SECONDS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// The conventions' boundaries for token counts.
const GEN_AI_TOKENS: [f64; 14] = [
    1.0,
    4.0,
    16.0,
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];
/// Whole requests and upstream calls: a cache hit's milliseconds to a long agent turn.
const LATENCY_SECONDS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];
/// The gateway's own time: microseconds, where its budget is.
const OVERHEAD_SECONDS: [f64; 14] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25,
];

/// The exemplar of a latency observation: the request's trace.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceExemplar {
    trace_id: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    /// The public model (`unknown` when the request named none the gateway serves).
    model: Arc<str>,
    /// The target that served it (or last tried to); empty when no call was made.
    target: Option<Arc<str>>,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    endpoint: &'static str,
    model: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SideLabels {
    /// `request`: from receipt to the first upstream call; `response`: from the end of
    /// the upstream answer to the end of the client's.
    side: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CostLabels {
    model: Arc<str>,
    target: Arc<str>,
    team: Option<Arc<str>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    team: Option<Arc<str>>,
    r#type: &'static str,
}

/// The GenAI conventions' attributes, as labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GenAiLabels {
    gen_ai_operation_name: &'static str,
    gen_ai_provider_name: &'static str,
    gen_ai_request_model: Arc<str>,
    gen_ai_response_model: Option<Arc<str>>,
    error_type: Option<&'static str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GenAiTokenLabels {
    gen_ai_operation_name: &'static str,
    gen_ai_provider_name: &'static str,
    gen_ai_request_model: Arc<str>,
    gen_ai_response_model: Option<Arc<str>>,
    gen_ai_token_type: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;
type ExemplarHistograms<L> =
    Family<L, HistogramWithExemplars<TraceExemplar>, fn() -> HistogramWithExemplars<TraceExemplar>>;
type UsdCounter = Counter<f64, std::sync::atomic::AtomicU64>;

pub struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: ExemplarHistograms<DurationLabels>,
    upstream_duration: Histograms<TargetLabels>,
    overhead: ExemplarHistograms<SideLabels>,
    cost: Family<CostLabels, UsdCounter>,
    tokens: Family<TokenLabels, Counter>,
    operation_duration: ExemplarHistograms<GenAiLabels>,
    token_usage: Histograms<GenAiTokenLabels>,
    time_to_first_chunk: ExemplarHistograms<GenAiLabels>,
    time_per_output_chunk: Histograms<GenAiLabels>,
}

impl RequestMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| exemplars(&LATENCY_SECONDS)),
            upstream_duration: Family::new_with_constructor(|| Histogram::new(LATENCY_SECONDS)),
            overhead: Family::new_with_constructor(|| exemplars(&OVERHEAD_SECONDS)),
            cost: Family::default(),
            tokens: Family::default(),
            operation_duration: Family::new_with_constructor(|| exemplars(&GEN_AI_SECONDS)),
            token_usage: Family::new_with_constructor(|| Histogram::new(GEN_AI_TOKENS)),
            time_to_first_chunk: Family::new_with_constructor(|| exemplars(&GEN_AI_SECONDS)),
            time_per_output_chunk: Family::new_with_constructor(|| Histogram::new(GEN_AI_SECONDS)),
        };
        registry.register(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration: the whole request, streams to their end",
            metrics.operation_duration.clone(),
        );
        registry.register(
            "gen_ai_client_token_usage",
            "Input and output tokens per GenAI operation (the provider's count, else the gateway's estimate)",
            metrics.token_usage.clone(),
        );
        registry.register(
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            "Time from the request to the first chunk of a streamed answer",
            metrics.time_to_first_chunk.clone(),
        );
        registry.register(
            "gen_ai_client_operation_time_per_output_chunk_seconds",
            "Time between consecutive chunks of a streamed answer, after the first",
            metrics.time_per_output_chunk.clone(),
        );
        let ours = registry.sub_registry_with_prefix("switchyard");
        ours.register(
            "requests",
            "Requests answered, by endpoint, public model, target and HTTP status (499: client went away)",
            metrics.requests.clone(),
        );
        ours.register(
            "request_duration_seconds",
            "Whole requests, from receipt to the end of the answer (streams included)",
            metrics.duration.clone(),
        );
        ours.register(
            "upstream_duration_seconds",
            "Upstream calls, retries and fallbacks included, from the call to the end of its answer",
            metrics.upstream_duration.clone(),
        );
        ours.register(
            "gateway_overhead_seconds",
            "Time spent in the gateway itself: request side (receipt to the first upstream call) and response side (end of the upstream answer to the end of the client's)",
            metrics.overhead.clone(),
        );
        ours.register(
            "cost_usd",
            "What answered requests cost in USD at the configured prices, by public model, target and team",
            metrics.cost.clone(),
        );
        ours.register(
            "tokens",
            "Tokens used, by team and type (input, output)",
            metrics.tokens.clone(),
        );
        metrics
    }

    pub fn record(&self, report: &Report) {
        // Only a recorded trace is linked: an unsampled one is nowhere to be found.
        let trace = report
            .trace_id
            .clone()
            .filter(|_| report.trace_recorded)
            .map(|trace_id| TraceExemplar { trace_id });
        let model = report.model.clone().unwrap_or_else(|| Arc::from("unknown"));
        let target = report.served_by.as_ref().map(|s| s.target.clone());
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: report.endpoint.as_str(),
                model: model.clone(),
                target: target.clone(),
                status: report.status,
            })
            .inc();
        let labels = DurationLabels {
            endpoint: report.endpoint.as_str(),
            model: model.clone(),
        };
        self.duration
            .get_or_create(&labels)
            .observe(seconds(report.total), trace.clone(), None);
        self.record_overhead(report, trace.as_ref());
        if let (Some(usage), Some(target)) = (report.usage, target) {
            let team = report.team.clone();
            for (r#type, tokens) in [
                ("input", usage.prompt_tokens),
                ("output", usage.completion_tokens),
            ] {
                let labels = TokenLabels {
                    team: team.clone(),
                    r#type,
                };
                self.tokens.get_or_create(&labels).inc_by(tokens);
            }
            if let Some(cost) = report.cost {
                let labels = CostLabels {
                    model,
                    target,
                    team,
                };
                self.cost.get_or_create(&labels).inc_by(cost.usd);
            }
        }
        self.record_gen_ai(report, trace);
    }

    fn record_overhead(&self, report: &Report, trace: Option<&TraceExemplar>) {
        let timings = &report.timings;
        if let Some(request_side) = timings.upstream_start {
            let labels = SideLabels { side: "request" };
            let histogram = self.overhead.get_or_create(&labels);
            histogram.observe(seconds(request_side), trace.cloned(), None);
        }
        if let Some(response_side) = report.response_overhead() {
            let labels = SideLabels { side: "response" };
            let histogram = self.overhead.get_or_create(&labels);
            histogram.observe(seconds(response_side), trace.cloned(), None);
        }
    }

    fn record_gen_ai(&self, report: &Report, trace: Option<TraceExemplar>) {
        let Some(served_by) = &report.served_by else {
            return;
        };
        let operation = operation_name(report.endpoint);
        let provider = served_by.provider_kind.gen_ai_provider_name();
        let response_model =
            response_model_label(&served_by.upstream_model, report.response_model.as_deref());
        let labels = GenAiLabels {
            gen_ai_operation_name: operation,
            gen_ai_provider_name: provider,
            gen_ai_request_model: served_by.upstream_model.clone(),
            gen_ai_response_model: response_model.clone(),
            error_type: report.error,
        };
        self.operation_duration.get_or_create(&labels).observe(
            seconds(report.total),
            trace.clone(),
            None,
        );
        if let (true, Some(first)) = (report.stream, report.timings.first_byte) {
            self.time_to_first_chunk
                .get_or_create(&labels)
                .observe(seconds(first), trace, None);
        }
        let Some(usage) = report.usage else {
            return;
        };
        let tokens = [
            ("input", usage.prompt_tokens),
            ("output", usage.completion_tokens),
        ];
        for (token_type, count) in tokens {
            let labels = GenAiTokenLabels {
                gen_ai_operation_name: operation,
                gen_ai_provider_name: provider,
                gen_ai_request_model: served_by.upstream_model.clone(),
                gen_ai_response_model: response_model.clone(),
                gen_ai_token_type: token_type,
            };
            self.token_usage
                .get_or_create(&labels)
                .observe(count as f64);
        }
    }

    /// An upstream call to `target` took `took`.
    pub fn observe_upstream(&self, target: &Arc<str>, took: Duration) {
        let labels = TargetLabels {
            target: target.clone(),
        };
        self.upstream_duration
            .get_or_create(&labels)
            .observe(seconds(took));
    }

    /// The timer of one chat stream's chunks: `provider_kind`'s `request_model`, which
    /// says `response_model` answered.
    pub fn output_chunks(
        &self,
        provider_kind: ProviderKind,
        request_model: Arc<str>,
        response_model: Option<&str>,
    ) -> OutputChunks {
        let labels = GenAiLabels {
            gen_ai_operation_name: operation_name(Endpoint::ChatCompletions),
            gen_ai_provider_name: provider_kind.gen_ai_provider_name(),
            gen_ai_response_model: response_model_label(&request_model, response_model),
            gen_ai_request_model: request_model,
            error_type: None,
        };
        OutputChunks {
            histogram: self.time_per_output_chunk.get_or_create_owned(&labels),
            last: clock::now(),
        }
    }
}

/// Observes the time between a stream's chunks (from the one it was made at on).
pub struct OutputChunks {
    histogram: Histogram,
    last: Instant,
}

impl OutputChunks {
    /// Another chunk arrived.
    pub fn chunk(&mut self) {
        let now = clock::now();
        self.histogram
            .observe(seconds(now.saturating_duration_since(self.last)));
        self.last = now;
    }
}

fn exemplars(buckets: &[f64]) -> HistogramWithExemplars<TraceExemplar> {
    HistogramWithExemplars::new(buckets.iter().copied())
}

/// The GenAI conventions' operation name: one per endpoint, never one for both.
fn operation_name(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::ChatCompletions => "chat",
        Endpoint::Embeddings => "embeddings",
    }
}

/// The response model as a label: the request model's own string when they are the same
/// (most answers), so that labelling it allocates nothing.
fn response_model_label(
    request_model: &Arc<str>,
    response_model: Option<&str>,
) -> Option<Arc<str>> {
    response_model.map(|model| {
        if **request_model == *model {
            request_model.clone()
        } else {
            Arc::from(model)
        }
    })
}

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}
