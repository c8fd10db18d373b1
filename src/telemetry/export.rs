//! Getting finished spans to the collector without ever making a request wait.
//!
//! [`Batcher`] is the span processor: a span that ends is put on a bounded queue with
//! `try_send` (a full queue drops it) and one task on the gateway's runtime sends the
//! queue in batches over OTLP (HTTP/protobuf through the gateway's own pooled HTTP
//! client, or gRPC), each export bounded by the timeout. A span lost either way (queue
//! full, export failed) is counted in `switchyard_telemetry_spans_dropped_total`, and
//! the exporter's health is logged at WARN once per change (failing, then recovered).
//!
//! While the collector fails, spans that cannot be delivered are not made: after a failed
//! export, export pauses for a time that doubles with each further failure
//! ([`FIRST_PAUSE`] to [`LONGEST_PAUSE`]), and during the pause the sampler
//! ([`Batcher::sampler`]) records no span (each one it declines is counted as dropped:
//! a request's server span, as an unsampled request starts no other; trace ids are still
//! made and propagated, unsampled) and the task drops what was
//! already queued without encoding it. Then it tries again. An unreachable collector
//! therefore costs one failed export per pause, not the building and encoding of every
//! span.
//!
//! The SDK's own batch processor is not used: it runs on a thread of its own, where an
//! async HTTP client finds no runtime, and it does not say how many spans it dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry::Context;
use opentelemetry::KeyValue;
use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId};
use opentelemetry_otlp::tonic_types::metadata::MetadataMap;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    Sampler, SamplingDecision, SamplingResult, ShouldSample, Span, SpanData, SpanExporter,
    SpanProcessor,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::settings::TraceSettings;
use crate::clock;
use crate::config::schema::OtlpProtocol;
use crate::metrics::Metrics;
use crate::providers::http_client::HttpClient;

/// How long export pauses after a first failure, and at most after several.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const LONGEST_PAUSE: Duration = Duration::from_secs(30);

/// The OTLP exporter the settings ask for, speaking for `resource`.
pub fn exporter(
    settings: &TraceSettings,
    http: HttpClient,
    resource: &Resource,
) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let built = match settings.protocol {
        OtlpProtocol::HttpProtobuf => {
            let headers = settings
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_owned()))
                .collect();
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(settings.endpoint.clone())
                .with_timeout(settings.timeout)
                .with_headers(headers)
                .with_http_client(OtlpHttp {
                    client: http,
                    timeout: settings.timeout,
                })
                .build()
        }
        OtlpProtocol::Grpc => {
            if !settings.endpoint.starts_with("http://") {
                return Err(format!(
                    "the grpc exporter speaks plaintext only (an http:// endpoint, such as a collector next to the gateway); use http/protobuf for {}",
                    settings.endpoint
                ));
            }
            let mut headers = http::HeaderMap::new();
            for (key, value) in &settings.headers {
                let name = http::HeaderName::from_bytes(key.as_bytes())
                    .map_err(|_| format!("header {key:?} is not a valid gRPC metadata name"))?;
                let value = http::HeaderValue::from_str(value.expose())
                    .map_err(|_| format!("header {key:?}'s value is not valid gRPC metadata"))?;
                headers.insert(name, value);
            }
            let metadata = MetadataMap::from_headers(headers);
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(settings.endpoint.clone())
                .with_timeout(settings.timeout)
                .with_metadata(metadata)
                .build()
        }
    };
    let mut exporter = built.map_err(|e| e.to_string())?;
    exporter.set_resource(resource);
    Ok(exporter)
}

/// OTLP/HTTP over the gateway's pooled hyper client (TLS, keep-alive, TCP_NODELAY), each
/// export bounded by `timeout`.
struct OtlpHttp {
    client: HttpClient,
    timeout: Duration,
}

impl std::fmt::Debug for OtlpHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OtlpHttp")
    }
}

type HttpResult = Result<http::Response<Bytes>, opentelemetry_http::HttpError>;

impl opentelemetry_http::HttpClient for OtlpHttp {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: http::Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = HttpResult> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move {
            let send = async {
                let response = self.client.request(request.map(Full::new)).await?;
                let (parts, body) = response.into_parts();
                let body = body.collect().await?.to_bytes();
                Ok(http::Response::from_parts(parts, body))
            };
            match tokio::time::timeout(self.timeout, send).await {
                Ok(result) => result,
                Err(_) => Err("the collector did not answer in time".into()),
            }
        })
    }
}

/// The span processor: a bounded queue, read by one export task.
pub struct Batcher {
    queue: mpsc::Sender<SpanData>,
    health: Arc<Health>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Batcher")
    }
}

/// What the export task needs besides the exporter.
pub struct BatchTask {
    pub handle: JoinHandle<()>,
    /// Set to stop: the task sends what is queued, then ends.
    pub stop: watch::Sender<bool>,
}

impl Batcher {
    /// Starts the export task on the current runtime.
    pub fn start<E: SpanExporter + 'static>(
        exporter: E,
        settings: &TraceSettings,
        metrics: Arc<Metrics>,
    ) -> (Self, BatchTask) {
        let batch = settings.batch;
        let (queue, spans) = mpsc::channel(batch.max_queue_size.max(1));
        let (stop, stopped) = watch::channel(false);
        let health = Arc::new(Health {
            failing: AtomicBool::new(false),
            paused_until: AtomicU64::new(0),
            endpoint: settings.endpoint.clone(),
            metrics,
        });
        let run = Run {
            exporter,
            spans,
            stopped,
            health: health.clone(),
            delay: batch.scheduled_delay,
            max_batch: batch.max_export_batch_size.max(1),
            pause: FIRST_PAUSE,
        };
        let handle = tokio::spawn(run.run());
        (Self { queue, health }, BatchTask { handle, stop })
    }

    /// `sampler`, except that while export is paused it records nothing.
    pub fn sampler(&self, sampler: Sampler) -> WhileExporting {
        WhileExporting {
            sampler,
            health: self.health.clone(),
        }
    }
}

/// The configured sampler while the collector takes spans; no span while it does not.
#[derive(Clone)]
pub struct WhileExporting {
    sampler: Sampler,
    health: Arc<Health>,
}

impl std::fmt::Debug for WhileExporting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("WhileExporting")
            .field(&self.sampler)
            .finish()
    }
}

impl ShouldSample for WhileExporting {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        if self.health.is_paused() {
            self.health.dropped(1, "export is paused after a failure");
            return SamplingResult {
                decision: SamplingDecision::Drop,
                attributes: Vec::new(),
                trace_state: parent
                    .map(|cx| cx.span().span_context().trace_state().clone())
                    .unwrap_or_default(),
            };
        }
        self.sampler
            .should_sample(parent, trace_id, name, kind, attributes, links)
    }
}

impl SpanProcessor for Batcher {
    fn on_start(&self, _: &mut Span, _: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.queue.try_send(span).is_err() {
            self.health.dropped(1, "the span queue is full");
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        // The gateway stops the export task itself (`Traces::shutdown`), awaiting it.
        Ok(())
    }
}

/// Whether export works, and the count of what it lost.
struct Health {
    failing: AtomicBool,
    /// After a failed export: until when (`clock::millis`) nothing is recorded or sent;
    /// 0 when export is not paused.
    paused_until: AtomicU64,
    endpoint: String,
    metrics: Arc<Metrics>,
}

impl Health {
    fn dropped(&self, spans: usize, why: &str) {
        self.metrics.count_spans_dropped(spans as u64);
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                endpoint = %self.endpoint,
                reason = why,
                "trace export is failing: spans are dropped (requests are not affected)"
            );
        }
    }

    fn is_paused(&self) -> bool {
        let until = self.paused_until.load(Ordering::Relaxed);
        until != 0 && clock::millis() < until
    }

    fn pause(&self, pause: Duration) {
        let until = clock::millis() + clock::as_millis(pause);
        self.paused_until.store(until, Ordering::Relaxed);
    }

    fn exported(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::warn!(endpoint = %self.endpoint, "trace export recovered");
        }
    }
}

struct Run<E> {
    exporter: E,
    spans: mpsc::Receiver<SpanData>,
    stopped: watch::Receiver<bool>,
    health: Arc<Health>,
    delay: Duration,
    max_batch: usize,
    /// The next pause's length.
    pause: Duration,
}

impl<E: SpanExporter> Run<E> {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.max_batch);
        loop {
            // Wait for a first span, then up to `delay` for the batch to fill.
            tokio::select! {
                received = self.spans.recv_many(&mut batch, self.max_batch) => {
                    if received == 0 {
                        break;
                    }
                }
                _ = self.stopped.wait_for(|stop| *stop) => break,
            }
            let until = clock::now() + self.delay;
            while batch.len() < self.max_batch {
                let room = self.max_batch - batch.len();
                tokio::select! {
                    received = self.spans.recv_many(&mut batch, room) => {
                        if received == 0 {
                            break;
                        }
                    }
                    () = tokio::time::sleep_until(until) => break,
                    _ = self.stopped.wait_for(|stop| *stop) => break,
                }
            }
            if self.health.is_paused() {
                self.health
                    .dropped(batch.len(), "export is paused after a failure");
                batch.clear();
                continue;
            }
            self.export(&mut batch).await;
        }
        // Stopping: what is still queued goes out too.
        while let Ok(span) = self.spans.try_recv() {
            batch.push(span);
            if batch.len() >= self.max_batch {
                self.export(&mut batch).await;
            }
        }
        self.export(&mut batch).await;
    }

    async fn export(&mut self, batch: &mut Vec<SpanData>) {
        if batch.is_empty() {
            return;
        }
        let spans = batch.len();
        let sending = std::mem::replace(batch, Vec::with_capacity(self.max_batch));
        match self.exporter.export(sending).await {
            Ok(()) => {
                self.health.exported();
                self.pause = FIRST_PAUSE;
            }
            Err(error) => {
                self.health.dropped(spans, &error.to_string());
                self.health.pause(self.pause);
                self.pause = (self.pause * 2).min(LONGEST_PAUSE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::error::OTelSdkError;
    use opentelemetry_sdk::trace::SdkTracerProvider;

    use super::*;
    use crate::config::schema::TraceBatchConfig;

    /// A collector that is never there: counts the exports tried.
    #[derive(Debug, Default)]
    struct Unreachable(Arc<AtomicUsize>);

    impl SpanExporter for Unreachable {
        async fn export(&self, _: Vec<SpanData>) -> OTelSdkResult {
            self.0.fetch_add(1, Ordering::Relaxed);
            Err(OTelSdkError::InternalFailure("connection refused".into()))
        }
    }

    fn settings() -> TraceSettings {
        TraceSettings {
            endpoint: "http://127.0.0.1:9".into(),
            protocol: OtlpProtocol::HttpProtobuf,
            headers: Vec::new(),
            sampling_ratio: 1.0,
            service_name: "test".into(),
            resource_attributes: Vec::new(),
            content_max_bytes: None,
            timeout: Duration::from_secs(1),
            batch: TraceBatchConfig {
                scheduled_delay: Duration::from_millis(10),
                max_queue_size: 100,
                max_export_batch_size: 10,
            },
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_collector_is_tried_once_per_pause_and_every_span_is_counted() {
        let exporter = Unreachable::default();
        let tried = exporter.0.clone();
        let metrics = Arc::new(Metrics::new());
        let (batcher, task) = Batcher::start(exporter, &settings(), metrics.clone());
        let sampler = batcher.sampler(Sampler::AlwaysOn);
        let provider = SdkTracerProvider::builder()
            .with_sampler(sampler)
            .with_span_processor(batcher)
            .build();
        let tracer = provider.tracer("test");
        // A span every 100 ms for 8 s: exports fail at 0 s, then after pauses of 1, 2
        // and 4 s (at about 1, 3 and 7 s); during the pauses no span is recorded.
        let mut recorded = 0;
        for _ in 0..80 {
            let mut span = tracer.start("request");
            recorded += usize::from(span.is_recording());
            span.end();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(tried.load(Ordering::Relaxed), 4);
        assert_eq!(recorded, 4, "one span before each export");
        let _ = task.stop.send(true);
        let _ = task.handle.await;
        let dropped = metrics
            .render(false)
            .lines()
            .find_map(|l| l.strip_prefix("switchyard_telemetry_spans_dropped_total "))
            .map(str::to_owned);
        assert_eq!(dropped.as_deref(), Some("80"));
    }
}
