//! Traces through the real HTTP surface: an OTLP/HTTP receiver on loopback collects what
//! the gateway exports (decoded with the `opentelemetry-proto` types), and each test
//! checks the span tree of its requests (server → steps and attempts, parents right), the
//! attributes, the trace context sent upstream and the trace id the client gets. Every
//! test also checks that no key, the client's or the provider's, is in any attribute.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use common::scenario::{
    self, PRIMARY_WITH_BACKUP, Scenario, ask, ask_stream, primary, unavailable,
};
use common::upstream::{self, Behavior, Received, Upstream};
use common::{Logs, TEST_KEY, TestGateway, UPSTREAM_KEY, client, eventually};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const INTERNAL: i32 = 1;
const STATUS_ERROR: i32 = 2;

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Exported {
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent: String,
    status: i32,
    end: u64,
    attributes: BTreeMap<String, Value>,
    resource: BTreeMap<String, Value>,
    /// The spans it links to: (trace id, span id).
    links: Vec<(String, String)>,
}

impl Exported {
    fn attr(&self, key: &str) -> &Value {
        self.attributes.get(key).unwrap_or(&Value::Null)
    }
}

fn value(any: Option<&Any>) -> Value {
    match any {
        Some(Any::StringValue(s)) => json!(s),
        Some(Any::BoolValue(b)) => json!(b),
        Some(Any::IntValue(i)) => json!(i),
        Some(Any::DoubleValue(d)) => json!(d),
        Some(Any::ArrayValue(array)) => array
            .values
            .iter()
            .map(|v| value(v.value.as_ref()))
            .collect(),
        _ => Value::Null,
    }
}

fn attributes(
    list: &[opentelemetry_proto::tonic::common::v1::KeyValue],
) -> BTreeMap<String, Value> {
    list.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                value(kv.value.as_ref().and_then(|v| v.value.as_ref())),
            )
        })
        .collect()
}

/// An OTLP/HTTP protobuf collector on 127.0.0.1:0.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Exported>>>,
    url: String,
}

async fn receive(State(spans): State<Arc<Mutex<Vec<Exported>>>>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
    let mut spans = spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let resource = attributes(&resource_spans.resource.unwrap_or_default().attributes);
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            spans.push(Exported {
                name: span.name,
                kind: span.kind,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent: hex(&span.parent_span_id),
                status: span.status.map_or(0, |s| s.code),
                end: span.end_time_unix_nano,
                attributes: attributes(&span.attributes),
                resource: resource.clone(),
                links: span
                    .links
                    .iter()
                    .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                    .collect(),
            });
        }
    }
    Vec::new() // an empty ExportTraceServiceResponse: all accepted
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Collector {
    async fn start() -> Self {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    fn start_on(listener: TcpListener) -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(spans.clone());
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { spans, url }
    }

    /// The gateway's `telemetry` section for this collector.
    fn config(&self) -> String {
        telemetry(&self.url, "")
    }

    /// The spans of `trace_id` once its server span (the last to end) has arrived.
    async fn trace(&self, trace_id: &str) -> Vec<Exported> {
        eventually(format!("the server span of trace {trace_id}"), async || {
            let spans = self.spans.lock().unwrap();
            let of_trace: Vec<Exported> = spans
                .iter()
                .filter(|s| s.trace_id == trace_id)
                .cloned()
                .collect();
            of_trace
                .iter()
                .any(|s| s.kind == SERVER)
                .then_some(of_trace)
        })
        .await
    }

    fn all(&self) -> Vec<Exported> {
        self.spans.lock().unwrap().clone()
    }
}

/// A `telemetry` section exporting to `url` quickly (batches every 50 ms).
fn telemetry(url: &str, extra: &str) -> String {
    format!(
        "\ntelemetry:\n  traces:\n    exporter: otlp\n    endpoint: {url}\n    service_name: switchyard-test\n    batch: {{scheduled_delay: 50ms}}\n{extra}"
    )
}

/// The one span named `name`.
fn one<'a>(spans: &'a [Exported], name: &str) -> &'a Exported {
    let found: Vec<&Exported> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one span {name:?} in {spans:#?}");
    found[0]
}

fn server(spans: &[Exported]) -> &Exported {
    let found: Vec<&Exported> = spans.iter().filter(|s| s.kind == SERVER).collect();
    assert_eq!(found.len(), 1, "one server span in {spans:#?}");
    found[0]
}

/// The attempt spans, in attempt order.
fn attempts(spans: &[Exported]) -> Vec<&Exported> {
    let mut found: Vec<&Exported> = spans.iter().filter(|s| s.kind == CLIENT).collect();
    found.sort_by_key(|s| s.attr("switchyard.attempt.number").as_i64());
    found
}

/// The steps, each a child of the server span.
fn assert_steps(spans: &[Exported], names: &[&str]) {
    let root = server(spans);
    for name in names {
        let step = one(spans, name);
        assert_eq!(
            (step.kind, step.parent.as_str()),
            (INTERNAL, root.span_id.as_str())
        );
    }
}

/// No key, the client's or the provider's, and no Authorization value in any attribute.
fn assert_no_secrets(spans: &[Exported]) {
    for span in spans {
        let text = serde_json::to_string(&(&span.attributes, &span.resource)).unwrap();
        for secret in [TEST_KEY, UPSTREAM_KEY, "Bearer"] {
            assert!(!text.contains(secret), "{secret} in {span:#?}");
        }
    }
}

fn trace_id_of(headers: &http::HeaderMap) -> String {
    headers
        .get("x-switchyard-trace-id")
        .expect("x-switchyard-trace-id")
        .to_str()
        .unwrap()
        .to_owned()
}

/// A gateway (`config_for` an OpenAI upstream answering with `script`) exporting to a
/// fresh collector.
async fn traced(
    script: impl Fn(&Received) -> Behavior + Send + Sync + 'static,
) -> (Collector, Upstream, TestGateway) {
    let collector = Collector::start().await;
    let upstream = Upstream::start(script).await;
    let config = common::config_for(&upstream.base_url) + &collector.config();
    let gateway = TestGateway::start(&config).await;
    (collector, upstream, gateway)
}

#[tokio::test]
async fn a_chat_request_is_a_server_span_with_its_steps_and_one_client_span() {
    let (collector, upstream, gateway) = traced(scenario::ok).await;
    let body = json!({
        "model": "gpt-test", "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 50, "temperature": 0.5, "top_p": 0.9, "seed": 7, "stop": ["\n\n"]
    });
    let response = gateway.chat(&body).await;
    assert_eq!(response.status(), 200);
    let trace_id = trace_id_of(response.headers());
    assert_eq!(trace_id.len(), 32);
    let spans = collector.trace(&trace_id).await;

    let root = server(&spans);
    assert_eq!(root.name, "POST /v1/chat/completions");
    assert_eq!(root.parent, "", "a trace of its own");
    assert_eq!(root.attr("http.response.status_code"), 200);
    assert_eq!(root.attr("switchyard.key.name"), "test");
    assert_eq!(root.attr("switchyard.model"), "gpt-test");
    assert_eq!(root.attr("switchyard.usage.input_tokens"), 11);
    assert_eq!(root.attr("switchyard.usage.source"), "provider");
    assert_eq!(root.attr("switchyard.finish_reasons"), &json!(["stop"]));
    assert_eq!(root.resource["service.name"], "switchyard-test");
    assert_steps(&spans, &["auth", "access", "route", "limits"]);
    assert_eq!(
        one(&spans, "limits").attr("switchyard.limit.decision"),
        "admitted"
    );

    let [attempt] = attempts(&spans)[..] else {
        panic!("one attempt: {spans:#?}")
    };
    assert_eq!(attempt.name, "chat upstream-model");
    assert_eq!(attempt.parent, root.span_id);
    let expected = [
        ("gen_ai.operation.name", json!("chat")),
        ("gen_ai.provider.name", json!("openai")),
        ("gen_ai.request.model", json!("upstream-model")),
        ("gen_ai.request.max_tokens", json!(50)),
        ("gen_ai.request.temperature", json!(0.5)),
        ("gen_ai.request.top_p", json!(0.9)),
        ("gen_ai.request.seed", json!(7)),
        ("gen_ai.request.stop_sequences", json!(["\n\n"])),
        ("gen_ai.response.model", json!("upstream-model")),
        ("gen_ai.response.id", json!("chatcmpl-upstream-1")),
        ("gen_ai.response.finish_reasons", json!(["stop"])),
        ("gen_ai.usage.input_tokens", json!(11)),
        ("gen_ai.usage.output_tokens", json!(7)),
        ("server.address", json!("127.0.0.1")),
        ("switchyard.target", json!("up/upstream-model")),
        ("switchyard.attempt.number", json!(1)),
        ("switchyard.attempt.outcome", json!("success")),
        ("switchyard.breaker.state", json!("closed")),
    ];
    for (key, value) in expected {
        assert_eq!(attempt.attr(key), &value, "{key}");
    }
    assert!(attempt.attr("server.port").as_i64().is_some());
    assert_eq!(
        attempt.attr("gen_ai.input.messages"),
        &Value::Null,
        "content is opt-in"
    );

    // The upstream request carried the attempt span's context.
    let traceparent = upstream.last().headers["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(traceparent, format!("00-{trace_id}-{}-01", attempt.span_id));
    assert_no_secrets(&collector.all());
}

#[tokio::test]
async fn a_stream_span_ends_with_the_stream_and_has_its_time_to_first_chunk() {
    let (collector, _upstream, gateway) = traced(scenario::ok).await;
    let response = gateway
        .chat(&json!({"model": "gpt-test", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    let trace_id = trace_id_of(response.headers());
    let events = common::SseReader::new(response).all().await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let spans = collector.trace(&trace_id).await;
    let root = server(&spans);
    let [attempt] = attempts(&spans)[..] else {
        panic!("one attempt: {spans:#?}")
    };
    let ttfc = attempt.attr("gen_ai.response.time_to_first_chunk");
    assert!(ttfc.as_f64().is_some_and(|s| s > 0.0), "{ttfc}");
    // The facts of the stream's end are on both spans: they ended after it.
    assert_eq!(
        attempt.attr("gen_ai.response.finish_reasons"),
        &json!(["stop"])
    );
    assert_eq!(attempt.attr("gen_ai.usage.output_tokens"), 3);
    assert_eq!(root.attr("switchyard.stream"), true);
    assert_eq!(root.attr("switchyard.usage.output_tokens"), 3);
    assert!(root.end >= attempt.end);
    assert_no_secrets(&collector.all());
}

#[tokio::test]
async fn retries_and_a_fallback_are_one_client_span_each() {
    let collector = Collector::start().await;
    let s = Scenario::answering(primary(|_| unavailable()))
        .models(PRIMARY_WITH_BACKUP)
        .resilience("max_attempts: 2\n  backoff: {base: 1ms, max: 5ms}")
        .top_level(&collector.config())
        .start()
        .await;
    let reply = s.chat(&ask("primary")).await;
    reply.assert_served_by("up/b");
    let trace_id = reply.header("x-switchyard-trace-id").unwrap().to_owned();
    let spans = collector.trace(&trace_id).await;
    let root = server(&spans);
    let tried = attempts(&spans);
    let summary: Vec<(&str, &Value, &Value, &Value, &Value)> = tried
        .iter()
        .map(|a| {
            (
                a.name.as_str(),
                a.attr("switchyard.attempt.number"),
                a.attr("switchyard.attempt.outcome"),
                a.attr("switchyard.retry.reason"),
                a.attr("switchyard.fallback.reason"),
            )
        })
        .collect();
    let (status, none) = (json!("upstream_status"), Value::Null);
    assert_eq!(
        summary,
        [
            ("chat a", &json!(1), &status, &none, &none),
            ("chat a", &json!(2), &status, &status, &none),
            ("chat b", &json!(3), &json!("success"), &none, &status),
        ]
    );
    for attempt in &tried {
        assert_eq!(attempt.parent, root.span_id);
    }
    assert_eq!((tried[0].status, tried[2].status), (STATUS_ERROR, 0));
    assert_eq!(tried[0].attr("error.type"), "upstream_status");
    assert_eq!(root.attr("switchyard.attempts"), 3);
    assert_eq!(root.status, 0, "the request succeeded");
    // The access log line names the same trace.
    let line = s.finished(reply.request_id()).await;
    assert_eq!(line["trace_id"], trace_id.as_str());
    assert_eq!(line["span_id"], root.span_id.as_str());
    assert_no_secrets(&collector.all());
}

#[tokio::test]
async fn a_resumed_stream_has_a_span_for_its_continuation() {
    let collector = Collector::start().await;
    let s = Scenario::answering(|r: &Received| match scenario::model_of(r).as_str() {
        "a" => scenario::cut_after("a", &["The sky", " is "]),
        _ => scenario::sse(upstream::chunks("b", &[" blue", "."], true), true),
    })
    .models("  primary: {targets: [{provider: up, model: a}], fallbacks: [backup]}\n  backup: {targets: [{provider: up, model: b, prefill: true}]}\n")
    .top_level(&collector.config())
    .start()
    .await;
    let reply = s.chat(&ask_stream("primary")).await;
    assert_eq!(reply.status, 200);
    let spans = collector
        .trace(reply.header("x-switchyard-trace-id").unwrap())
        .await;
    let root = server(&spans);
    assert_eq!(root.attr("switchyard.resumed_on"), "up/b");
    let [broken, continued] = attempts(&spans)[..] else {
        panic!("two attempts: {spans:#?}")
    };
    assert_eq!(
        (broken.name.as_str(), broken.status),
        ("chat a", STATUS_ERROR)
    );
    assert_ne!(broken.attr("switchyard.attempt.outcome"), "success");
    assert_eq!(continued.name, "chat b");
    assert_eq!(continued.attr("switchyard.resumption"), true);
    assert_eq!(continued.attr("switchyard.attempt.outcome"), "success");
    assert_eq!(continued.parent, root.span_id);
    assert_no_secrets(&collector.all());
}

#[tokio::test]
async fn a_refused_request_is_a_failed_server_span_without_a_client_span() {
    let (collector, _upstream, gateway) = traced(scenario::ok).await;
    // 401: refused at the door.
    let response = client()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .bearer_auth("sk-sy-not-a-key")
        .json(&ask("gpt-test"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let spans = collector.trace(&trace_id_of(response.headers())).await;
    let root = server(&spans);
    assert_eq!(
        (root.status, root.attr("error.type")),
        (STATUS_ERROR, &json!("401"))
    );
    let auth = one(&spans, "auth");
    assert_eq!(
        (auth.status, auth.attr("error.type")),
        (STATUS_ERROR, &json!("invalid_key"))
    );
    assert!(attempts(&spans).is_empty());
    assert_no_secrets(&collector.all());
}

#[tokio::test]
async fn a_rate_limited_request_is_a_failed_server_span_and_limits_step() {
    let collector = Collector::start().await;
    let upstream = Upstream::start(scenario::ok).await;
    let hash = switchyard::auth::hex(&switchyard::auth::hash_key(TEST_KEY));
    let config = format!(
        "{}{}\nauth:\n  keys:\n    test: {{sha256: {hash}, limits: {{rpm: 1}}}}\n",
        common::config_for(&upstream.base_url),
        collector.config()
    );
    let gateway = TestGateway::start(&config).await;
    assert_eq!(gateway.chat(&ask("gpt-test")).await.status(), 200);
    let response = gateway.chat(&ask("gpt-test")).await;
    assert_eq!(response.status(), 429);
    let spans = collector.trace(&trace_id_of(response.headers())).await;
    let root = server(&spans);
    assert_eq!(
        (root.status, root.attr("error.type")),
        (STATUS_ERROR, &json!("rate_limited"))
    );
    assert_eq!(root.attr("http.response.status_code"), 429);
    let limits = one(&spans, "limits");
    assert_eq!(limits.attr("switchyard.limit.decision"), "rate_limited");
    assert_eq!(limits.status, STATUS_ERROR);
    assert!(attempts(&spans).is_empty());
    assert_no_secrets(&collector.all());
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_ends_both_spans_saying_so() {
    let slow = |r: &Received| {
        let pieces: Vec<String> = (0..200).map(|i| format!("piece {i} ")).collect();
        let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
        Behavior::Events {
            data: upstream::chunks(&scenario::model_of(r), &pieces, true),
            interval: Duration::from_millis(20),
            done: true,
        }
    };
    let (collector, _upstream, gateway) = traced(slow).await;
    let response = gateway.chat(&ask_stream("gpt-test")).await;
    let trace_id = trace_id_of(response.headers());
    let mut events = common::SseReader::new(response);
    assert!(events.next().await.is_some());
    drop(events);
    let spans = collector.trace(&trace_id).await;
    let root = server(&spans);
    assert_eq!(root.attr("switchyard.client_left"), true);
    assert_eq!(root.attr("http.response.status_code"), 499);
    let [attempt] = attempts(&spans)[..] else {
        panic!("one attempt: {spans:#?}")
    };
    assert_eq!(attempt.attr("switchyard.attempt.outcome"), "client_left");
    assert_eq!(attempt.attr("switchyard.client_left"), true);
    assert_no_secrets(&collector.all());
}

#[tokio::test]
async fn a_clients_traceparent_is_continued_and_passed_upstream() {
    let (collector, upstream, gateway) = traced(scenario::ok).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let response = client()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .bearer_auth(TEST_KEY)
        .header("traceparent", format!("00-{trace_id}-{parent}-01"))
        .header("tracestate", "vendor=opaque")
        .json(&ask("gpt-test"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(trace_id_of(response.headers()), trace_id);
    let spans = collector.trace(trace_id).await;
    let root = server(&spans);
    assert_eq!(root.parent, parent);
    let [attempt] = attempts(&spans)[..] else {
        panic!("one attempt: {spans:#?}")
    };
    let received = upstream.last();
    assert_eq!(
        received.headers["traceparent"].to_str().unwrap(),
        format!("00-{trace_id}-{}-01", attempt.span_id)
    );
    assert_eq!(
        received.headers["tracestate"].to_str().unwrap(),
        "vendor=opaque"
    );
    // An unsampled parent is followed: no spans, but the trace id is still the client's.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let response = client()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .bearer_auth(TEST_KEY)
        .header("traceparent", format!("00-{unsampled}-{parent}-00"))
        .json(&ask("gpt-test"))
        .send()
        .await
        .unwrap();
    assert_eq!(trace_id_of(response.headers()), unsampled);
    let upstream_traceparent = upstream.last().headers["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(upstream_traceparent.starts_with(&format!("00-{unsampled}-")));
    assert!(upstream_traceparent.ends_with("-00"));
    assert_no_secrets(&collector.all());
}

/// A gateway whose collector (speaking `protocol`) is a port nothing listens on.
async fn unreachable_collector(protocol: &str) -> TestGateway {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let upstream = Upstream::start(scenario::ok).await;
    let extra = format!("    timeout: 500ms\n    protocol: {protocol}\n");
    let config = common::config_for(&upstream.base_url) + &telemetry(&url, &extra);
    TestGateway::start(&config).await
}

/// `switchyard_telemetry_spans_dropped_total`, once it is above 0.
async fn dropped_spans(gateway: &TestGateway) -> f64 {
    eventually("spans counted as dropped", async || {
        let metrics = gateway.get("/metrics").await.text().await.unwrap();
        let line = metrics
            .lines()
            .find(|l| l.starts_with("switchyard_telemetry_spans_dropped_total"))?
            .to_owned();
        let count: f64 = line.rsplit(' ').next()?.parse().ok()?;
        (count > 0.0).then_some(count)
    })
    .await
}

#[tokio::test]
async fn an_unreachable_collector_drops_spans_and_nothing_else() {
    let (logs, _capture) = Logs::capture();
    let gateway = unreachable_collector("http/protobuf").await;
    for _ in 0..3 {
        let response = gateway.chat(&ask("gpt-test")).await;
        assert_eq!(response.status(), 200);
        assert!(response.headers().contains_key("x-switchyard-trace-id"));
    }
    assert!(dropped_spans(&gateway).await > 0.0);
    let warnings = logs.text().matches("trace export is failing").count();
    assert_eq!(warnings, 1, "one WARN for the transition: {}", logs.text());
}

#[tokio::test]
async fn export_resumes_when_the_collector_comes_back() {
    let (logs, _capture) = Logs::capture();
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = closed.local_addr().unwrap();
    drop(closed);
    let upstream = Upstream::start(scenario::ok).await;
    let url = format!("http://{address}");
    let config = common::config_for(&upstream.base_url) + &telemetry(&url, "    timeout: 500ms\n");
    let gateway = TestGateway::start(&config).await;
    let response = gateway.chat(&ask("gpt-test")).await;
    assert_eq!(response.status(), 200);
    assert!(dropped_spans(&gateway).await > 0.0);
    // The collector starts where the gateway exports: after its pause, the gateway
    // records and sends spans again.
    let collector = Collector::start_on(TcpListener::bind(address).await.unwrap());
    let trace_id = eventually("a request traced after the outage", async || {
        let response = gateway.chat(&ask("gpt-test")).await;
        let trace_id = trace_id_of(response.headers());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let arrived = collector.all().iter().any(|s| s.trace_id == trace_id);
        arrived.then_some(trace_id)
    })
    .await;
    let spans = collector.trace(&trace_id).await;
    assert_steps(&spans, &["auth", "access", "route", "limits"]);
    let recovered = logs.text().matches("trace export recovered").count();
    assert_eq!(recovered, 1, "one WARN for the transition: {}", logs.text());
}

#[tokio::test]
async fn the_grpc_exporter_runs_and_counts_what_it_cannot_send() {
    let gateway = unreachable_collector("grpc").await;
    let response = gateway.chat(&ask("gpt-test")).await;
    assert_eq!(response.status(), 200);
    assert!(dropped_spans(&gateway).await > 0.0);
}

#[tokio::test]
async fn prompts_and_completions_are_captured_only_when_asked_and_cut() {
    let collector = Collector::start().await;
    let upstream = Upstream::start(scenario::ok).await;
    let config = common::config_for(&upstream.base_url)
        + &telemetry(
            &collector.url,
            "    capture_content: true\n    content_max_bytes: 40B\n",
        );
    let gateway = TestGateway::start(&config).await;
    let response = gateway.chat(&ask("gpt-test")).await;
    let spans = collector.trace(&trace_id_of(response.headers())).await;
    let [attempt] = attempts(&spans)[..] else {
        panic!("one attempt: {spans:#?}")
    };
    let input = attempt.attr("gen_ai.input.messages").as_str().unwrap();
    assert!(
        input.starts_with(r#"[{"role":"user","content":"hello""#),
        "{input}"
    );
    assert!(input.len() <= 40);
    let output = attempt.attr("gen_ai.output.messages").as_str().unwrap();
    assert!(
        output.contains("answer from upstream-model") || output.len() == 40,
        "{output}"
    );
    assert_no_secrets(&collector.all());
}

#[tokio::test]
async fn an_embeddings_request_is_an_embeddings_span() {
    let answer = |r: &Received| Behavior::Json(upstream::embedding(&scenario::model_of(r), 1));
    let (collector, _upstream, gateway) = traced(answer).await;
    let response = gateway
        .post(
            "/v1/embeddings",
            &json!({"model": "embed-test", "input": "hello"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let spans = collector.trace(&trace_id_of(response.headers())).await;
    assert_eq!(server(&spans).name, "POST /v1/embeddings");
    let [attempt] = attempts(&spans)[..] else {
        panic!("one attempt: {spans:#?}")
    };
    assert_eq!(attempt.name, "embeddings upstream-embed");
    assert_eq!(attempt.attr("gen_ai.operation.name"), "embeddings");
    assert_eq!(attempt.attr("gen_ai.usage.input_tokens"), 5);
    assert_eq!(attempt.attr("gen_ai.request.temperature"), &Value::Null);
    assert_no_secrets(&collector.all());
}

#[tokio::test]
async fn traces_off_add_no_header() {
    let upstream = Upstream::start(scenario::ok).await;
    let gateway = TestGateway::start(&common::config_for(&upstream.base_url)).await;
    let response = gateway.chat(&ask("gpt-test")).await;
    assert_eq!(response.status(), 200);
    assert!(!response.headers().contains_key("x-switchyard-trace-id"));
    assert!(!upstream.last().headers.contains_key("traceparent"));
}

#[tokio::test]
async fn a_feedback_is_a_span_linked_to_the_request_it_scores() {
    let (collector, _upstream, gateway) = traced(scenario::ok).await;
    let response = gateway
        .chat(&json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    let scored_trace = trace_id_of(response.headers());
    let handle = response.headers()["x-switchyard-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let scored = server(&collector.trace(&scored_trace).await)
        .span_id
        .clone();
    let given = eventually("the feedback accepted", async || {
        let body = json!({"request_id": handle, "score": -0.5});
        let response = gateway.post("/v1/feedback", &body).await;
        (response.status() == 200).then(|| trace_id_of(response.headers()))
    })
    .await;
    let spans = collector.trace(&given).await;
    let feedback = one(&spans, "feedback");
    assert_eq!(feedback.links, [(scored_trace, scored)], "{feedback:#?}");
    assert_eq!(feedback.attr("switchyard.feedback.score"), -0.5);
    assert_eq!(feedback.parent, server(&spans).span_id);
}
