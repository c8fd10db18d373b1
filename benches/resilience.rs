//! What the resilience layer adds to a request that does not fail: choosing a target by
//! each strategy (the breakers are read on the way) and recording the attempt's outcome on
//! the target's breaker and latency.
//!
//! `cargo bench --bench resilience`. The model has three targets, as a failover setup would.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;
use switchyard::bench::Endpoint;
use switchyard::bench::Pass;
use switchyard::bench::RequestContext;
use switchyard::bench::RequestRecord;
use switchyard::bench::Shared;
use switchyard::bench::Snapshot;
use switchyard::bench::balance;
use switchyard::bench::parse as parse_body;
use switchyard::config::parse;

const CONFIG: &str = r#"
providers:
  one: {kind: mock}
  two: {kind: mock}
  three: {kind: mock}
models:
  weighted: {targets: [{provider: one}, {provider: two}, {provider: three}]}
  least_in_flight: {strategy: least_in_flight, targets: [{provider: one}, {provider: two}, {provider: three}]}
  lowest_latency: {strategy: lowest_latency, targets: [{provider: one}, {provider: two}, {provider: three}]}
  priority: {strategy: priority, targets: [{provider: one}, {provider: two}, {provider: three}]}
auth:
  keys:
    bench: {sha256: 0000000000000000000000000000000000000000000000000000000000000000}
"#;

fn resilience(c: &mut Criterion) {
    let shared = Shared::default();
    let raw = parse(CONFIG, |_| None).unwrap_or_else(|e| panic!("{e:?}"));
    let snapshot = Arc::new(Snapshot::build(raw, &shared).unwrap_or_else(|e| panic!("{e:?}")));
    let key = snapshot
        .keys
        .by_name("bench")
        .cloned()
        .unwrap_or_else(|| panic!("bench key"));
    let record = RequestRecord::new(
        Arc::from("req_bench"),
        Endpoint::ChatCompletions,
        &key,
        shared.metrics.clone(),
        shared.sinks.clone(),
    );
    let ctx = RequestContext {
        record: Arc::new(record),
        snapshot: snapshot.clone(),
        headers: http::HeaderMap::new(),
        key,
        route: None,
    };
    let body = br#"{"model": "weighted", "messages": [{"role": "user", "content": "hi"}]}"#;
    let call = parse_body::chat(body).unwrap_or_else(|e| panic!("{e}"));
    let settings = &snapshot.resilience.breaker;
    let mut group = c.benchmark_group("resilience");
    for (name, route) in &snapshot.models {
        group.bench_function(format!("pick_{name}"), |b| {
            b.iter(|| balance::pick(&ctx, &call, black_box(route), |_| true))
        });
    }
    let target = &snapshot.models["weighted"].targets[0];
    group.bench_function("record_success", |b| {
        b.iter(|| {
            let health = black_box(&target.health);
            health
                .breaker
                .record(Pass::Closed, false, settings, &shared.metrics);
            health.observe_latency(Duration::from_millis(80));
            shared.metrics.count_attempt(&health.name, "success");
        })
    });
    group.finish();
}

criterion_group!(benches, resilience);
criterion_main!(benches);
