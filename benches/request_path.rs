//! The hot path's CPU work per non-streamed request, apart from the network: parse the
//! client's body once, write the upstream body, read usage from the upstream's answer.
//!
//! `cargo bench --bench request_path`. The request is the 1 KB body of the load scenario
//! (shared/bench/payload/chat.json); the response is a typical 1.1 KB chat.completion.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use switchyard::bench::Call;
use switchyard::bench::ChatCall;
use switchyard::bench::JsonReply;
use switchyard::bench::chat_body;
use switchyard::bench::parse;

const REQUEST: &[u8] = include_bytes!("chat-request.json");

fn response() -> Vec<u8> {
    let content = "A gateway adds latency in three places: ".repeat(20);
    serde_json::to_vec(&serde_json::json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": null},
                     "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 180, "completion_tokens": 200, "total_tokens": 380,
                  "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}
    }))
    .unwrap_or_default()
}

fn request_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_path");
    group.throughput(Throughput::Bytes(REQUEST.len() as u64));
    group.bench_function("parse_chat_request", |b| {
        b.iter(|| parse::chat(black_box(REQUEST)))
    });
    let Ok(Call::Chat(request)) = parse::chat(REQUEST) else {
        panic!("the bench payload parses")
    };
    let skipped = std::sync::Arc::default();
    let trace = http::HeaderMap::new();
    group.bench_function("write_upstream_body", |b| {
        b.iter(|| {
            let call = ChatCall {
                request: black_box(&request),
                model: "gpt-4o-mini-2024-07-18",
                request_id: "req_0123456789abcdef01234567",
                max_tokens: None,
                skipped: &skipped,
                trace: &trace,
            };
            chat_body(&call)
        })
    });
    let body = bytes::Bytes::from(response());
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("read_response_usage", |b| {
        b.iter(|| JsonReply::from_openai(black_box(body.clone()), "openai"))
    });
    group.finish();
}

criterion_group!(benches, request_path);
criterion_main!(benches);
