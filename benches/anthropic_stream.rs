//! Throughput of the Anthropic stream translator: Anthropic events in, OpenAI chunks out
//! (JSON parse, state, chunk written), per event, as in a real text answer with a tool call.
//!
//! `cargo bench --bench anthropic_stream`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use switchyard::bench::StreamTranslator;

/// message_start, 100 text deltas, a tool call in 20 fragments, message_delta, message_stop.
fn transcript() -> Vec<String> {
    let mut events = vec![
        r#"{"type":"message_start","message":{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"usage":{"input_tokens":472,"cache_read_input_tokens":0,"cache_creation_input_tokens":0,"output_tokens":2}}}"#.to_owned(),
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#.to_owned(),
    ];
    for i in 0..100 {
        events.push(format!(r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"word{i} and "}}}}"#));
    }
    events.push(r#"{"type":"content_block_stop","index":0}"#.to_owned());
    events.push(r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01A09q90qw90lq917835lq9","name":"get_weather","input":{}}}"#.to_owned());
    for i in 0..20 {
        events.push(format!(r#"{{"type":"content_block_delta","index":1,"delta":{{"type":"input_json_delta","partial_json":"{{\"k{i}\": \"v\""}}}}"#));
    }
    events.push(r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":212}}"#.to_owned());
    events.push(r#"{"type":"message_stop"}"#.to_owned());
    events
}

fn anthropic_stream(c: &mut Criterion) {
    let events = transcript();
    let mut group = c.benchmark_group("anthropic_stream");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("translate_transcript", |b| {
        b.iter(|| {
            let mut translator = StreamTranslator::new(Arc::from("anthropic"), false);
            let mut bytes = 0;
            for event in &events {
                if let Ok(Some(chunk)) = translator.translate(black_box(event)) {
                    bytes += chunk.json().len();
                }
            }
            bytes
        })
    });
    group.finish();
}

criterion_group!(benches, anthropic_stream);
criterion_main!(benches);
