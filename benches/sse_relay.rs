//! The streaming relay's CPU work per chunk: read the upstream event's facts (content,
//! usage) without re-encoding it, meter it, and frame it for the client. Measured through
//! the real stream adapters (`Metered` and the edge's `SseRelay`) over the 20-chunk
//! stream of the load scenario.
//!
//! `cargo bench --bench sse_relay`.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::{FutureExt, StreamExt, stream};
use switchyard::auth::{Key, KeyTable};
use switchyard::bench::Chunk;
use switchyard::bench::ChunkStream;
use switchyard::bench::Metered;
use switchyard::bench::Metrics;
use switchyard::bench::RequestRecord;
use switchyard::bench::SseRelay;
use switchyard::bench::{Endpoint, Sinks};
use switchyard::config::parse;
use switchyard::config::schema::ProviderKind;

const CHUNKS: usize = 20;

fn upstream_events() -> Vec<Bytes> {
    (0..CHUNKS)
        .map(|i| {
            let delta = if i == 0 {
                serde_json::json!({"role": "assistant", "content": ""})
            } else {
                serde_json::json!({"content": format!("token{i} ")})
            };
            Bytes::from(
                serde_json::json!({
                    "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_700_000_000,
                    "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_bench",
                    "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}],
                    "usage": null
                })
                .to_string(),
            )
        })
        .collect()
}

/// The key a benchmark request is made with.
fn caller() -> Arc<Key> {
    let zeros = "0".repeat(64);
    let raw = parse(
        &format!("auth: {{keys: {{bench: {{sha256: {zeros}}}}}}}"),
        |_| None,
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let table = KeyTable::build(&raw.auth);
    table
        .by_name("bench")
        .cloned()
        .unwrap_or_else(|| panic!("the bench key"))
}

fn sse_relay(c: &mut Criterion) {
    let events = upstream_events();
    let metrics = Arc::new(Metrics::new());
    let sinks: Sinks = Arc::new([metrics.clone()]);
    let caller = caller();
    let mut group = c.benchmark_group("sse_relay");
    group.throughput(Throughput::Elements(CHUNKS as u64));
    group.bench_function("probe_chunk", |b| {
        b.iter(|| Chunk::from_openai(events[5].clone(), "openai"))
    });
    group.bench_function("relay_20_chunks", |b| {
        b.iter(|| {
            let record = Arc::new(RequestRecord::new(
                Arc::from("req_bench"),
                Endpoint::ChatCompletions,
                &caller,
                metrics.clone(),
                sinks.clone(),
            ));
            let chunks = events
                .iter()
                .map(|json| Chunk::from_openai(json.clone(), "openai"));
            let upstream: ChunkStream = Box::pin(stream::iter(chunks.collect::<Vec<_>>()));
            let metered: ChunkStream = Box::pin(Metered::new(
                upstream,
                record.clone(),
                100,
                (ProviderKind::Mock, "m".into()),
            ));
            let mut relay = SseRelay::new(metered, record, true);
            let mut bytes = 0;
            while let Some(Some(Ok(frame))) = relay.next().now_or_never() {
                bytes += frame.len();
            }
            bytes
        })
    });
    group.finish();
}

criterion_group!(benches, sse_relay);
criterion_main!(benches);
