//! Getting finished spans to the collector without ever making a request wait.
//!
//! [`Batcher`] is the span processor: a span that ends is put on a bounded queue with
//! `try_send` (a full queue drops it) and one task on the gateway's runtime sends the
//! queue in batches over OTLP (HTTP/protobuf through the gateway's own pooled HTTP
//! client, or gRPC), each export bounded by the timeout. A span lost either way (queue
//! full, export failed) is counted in `switchyard_telemetry_spans_dropped_total`, and
//! the exporter's health is logged at WARN once per change (failing, then recovered).
//!
//! The SDK's own batch processor is not used: it runs on a thread of its own, where an
//! async HTTP client finds no runtime, and it does not say how many spans it dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry::Context;
use opentelemetry_otlp::tonic_types::metadata::MetadataMap;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::settings::TraceSettings;
use crate::config::schema::OtlpProtocol;
use crate::metrics::Metrics;
use crate::providers::http_client::HttpClient;

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
    pub fn start(
        exporter: opentelemetry_otlp::SpanExporter,
        settings: &TraceSettings,
        metrics: Arc<Metrics>,
    ) -> (Self, BatchTask) {
        let batch = settings.batch;
        let (queue, spans) = mpsc::channel(batch.max_queue_size.max(1));
        let (stop, stopped) = watch::channel(false);
        let health = Arc::new(Health {
            failing: AtomicBool::new(false),
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
        };
        let handle = tokio::spawn(run.run());
        (Self { queue, health }, BatchTask { handle, stop })
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

    fn exported(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::warn!(endpoint = %self.endpoint, "trace export recovered");
        }
    }
}

struct Run {
    exporter: opentelemetry_otlp::SpanExporter,
    spans: mpsc::Receiver<SpanData>,
    stopped: watch::Receiver<bool>,
    health: Arc<Health>,
    delay: Duration,
    max_batch: usize,
}

impl Run {
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
            let until = crate::clock::now() + self.delay;
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

    async fn export(&self, batch: &mut Vec<SpanData>) {
        if batch.is_empty() {
            return;
        }
        let spans = batch.len();
        match self.exporter.export(std::mem::take(batch)).await {
            Ok(()) => self.health.exported(),
            Err(error) => self.health.dropped(spans, &error.to_string()),
        }
    }
}
