//! The proxy core through real sockets: a client, the gateway on 127.0.0.1:0 and an
//! emulated OpenAI upstream.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use common::upstream::{self, Behavior};
use common::{Logs, SseReader, TestGateway, UPSTREAM_KEY, config_for, content_of, gateway_for};
use serde_json::{Value, json};

fn streamed(request: &upstream::Received, pieces: &[&str]) -> Behavior {
    Behavior::Events {
        data: upstream::chunks(
            "upstream-model-2024",
            pieces,
            upstream::wants_usage(request),
        ),
        interval: Duration::from_millis(5),
        done: true,
    }
}

#[tokio::test]
async fn non_stream_round_trip_rewrites_model_and_passes_everything_else() {
    let (upstream, gateway) =
        gateway_for(|_| Behavior::Json(upstream::completion("upstream-model-2024", "Hi there!")))
            .await;
    let request = json!({
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hello"}], "x_custom_message_field": true}
        ],
        "temperature": 0.2,
        "logit_bias": {"50256": -100},
        "metadata": {"team": "search"},
        "future_parameter": {"nested": [1, 2, 3]}
    });
    let response = gateway.post("/v1/chat/completions", &request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    // The upstream's body reaches the client as the upstream sent it.
    assert_eq!(
        body,
        upstream::completion("upstream-model-2024", "Hi there!")
    );

    let seen = upstream.last();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.body["model"], "upstream-model");
    let mut expected = request.clone();
    expected["model"] = json!("upstream-model");
    assert_eq!(seen.body, expected, "only model is rewritten");
}

#[tokio::test]
async fn upstream_sees_the_provider_key_and_request_id_never_the_clients_headers() {
    let (upstream, gateway) =
        gateway_for(|_| Behavior::Json(upstream::completion("m", "ok"))).await;
    let response = common::client()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .bearer_auth(common::TEST_KEY)
        .header("x-request-id", "trace-abc-123")
        .header("connection", "keep-alive, x-hop-secret")
        .header("x-hop-secret", "hop")
        .header("openai-organization", "org-client")
        .json(&json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "trace-abc-123");
    let id = response.headers()["x-switchyard-request-id"]
        .to_str()
        .unwrap();

    let headers = upstream.last().headers;
    assert_eq!(headers["authorization"], format!("Bearer {UPSTREAM_KEY}"));
    assert!(!format!("{headers:?}").contains(common::TEST_KEY));
    // The gateway's id, not the client's (which is only a correlation id).
    assert_eq!(headers["x-request-id"], id);
    assert!(id.starts_with("req_"), "{id}");
    for name in ["x-hop-secret", "openai-organization"] {
        assert!(
            headers.get(name).is_none(),
            "{name} must not reach the upstream"
        );
    }
}

#[tokio::test]
async fn a_request_id_is_generated_when_the_client_sends_none() {
    let (upstream, gateway) =
        gateway_for(|_| Behavior::Json(upstream::completion("m", "ok"))).await;
    let response = gateway
        .chat(&json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    let id = common::request_id(&response);
    assert!(id.starts_with("req_") && id.len() == 28, "{id}");
    assert_eq!(upstream.last().headers["x-request-id"], id.as_str());
}

#[tokio::test]
async fn stream_relays_chunks_in_order_and_hides_the_usage_chunk_it_asked_for() {
    let pieces = ["The ", "quick ", "brown ", "fox"];
    let (upstream, gateway) = gateway_for(move |r| streamed(r, &pieces)).await;
    let response = gateway
        .chat(&json!({"model": "gpt-test", "stream": true, "messages": [{"role": "user", "content": "go"}]}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = SseReader::new(response).all().await;

    // The gateway asked for usage although the client did not...
    let seen = upstream.last();
    assert_eq!(seen.body["stream"], true);
    assert_eq!(seen.body["stream_options"], json!({"include_usage": true}));
    // ...and the client gets exactly the upstream's chunks, minus that usage chunk.
    let expected = upstream::chunks("upstream-model-2024", &pieces, false);
    assert_eq!(events[..events.len() - 1], expected[..]);
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert_eq!(content_of(&events), "The quick brown fox");
}

#[tokio::test]
async fn stream_keeps_the_usage_chunk_when_the_client_asked_for_it() {
    let (upstream, gateway) = gateway_for(|r| streamed(r, &["a", "b"])).await;
    let response = gateway
        .chat(&json!({
            "model": "gpt-test", "stream": true,
            "stream_options": {"include_usage": true, "future_option": 1},
            "messages": [{"role": "user", "content": "go"}]
        }))
        .await;
    let events = SseReader::new(response).all().await;
    assert_eq!(
        upstream.last().body["stream_options"],
        json!({"include_usage": true, "future_option": 1})
    );
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["total_tokens"], 11);
    assert_eq!(events.last().unwrap(), "[DONE]");
}

#[tokio::test]
async fn usage_is_recorded_from_the_provider_or_estimated_when_it_sends_none() {
    let (logs, _guard) = Logs::capture();
    // This upstream never sends usage, whatever it is asked.
    let (_upstream, gateway) = gateway_for(|_| Behavior::Events {
        data: upstream::chunks("m", &["four bytes each ", "more text"], false),
        interval: Duration::ZERO,
        done: true,
    })
    .await;
    // The access line of a streamed request to `model`, once its stream was read.
    let streamed = async |model: &str| {
        let response = gateway
            .chat(&json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hello"}]}))
            .await;
        let id = common::request_id(&response);
        SseReader::new(response).all().await;
        logs.wait_access(&id).await
    };
    let line = streamed("gpt-test").await;
    assert_eq!(line["usage_source"], "estimated");
    assert_eq!(
        line["completion_tokens"], 7,
        "25 bytes of text, about 4 per token"
    );
    assert_eq!(line["status"], 200);

    let line = streamed("mock").await;
    assert_eq!(line["usage_source"], "provider");
    assert!(line["first_content_us"].as_u64().unwrap() >= line["first_byte_us"].as_u64().unwrap());
}

#[tokio::test]
async fn embeddings_pass_through_with_the_model_rewritten() {
    let (upstream, gateway) =
        gateway_for(|_| Behavior::Json(upstream::embedding("upstream-embed", 2))).await;
    let request = json!({"model": "embed-test", "input": ["a", "b"], "encoding_format": "float", "dimensions": 3});
    let response = gateway.post("/v1/embeddings", &request).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, upstream::embedding("upstream-embed", 2));
    let seen = upstream.last();
    assert_eq!(seen.path, "/v1/embeddings");
    assert_eq!(
        seen.body,
        json!({"model": "upstream-embed", "input": ["a", "b"], "encoding_format": "float", "dimensions": 3})
    );
}

#[tokio::test]
async fn models_lists_configured_public_models_in_openai_shape() {
    let gateway = TestGateway::start(&config_for("http://127.0.0.1:9/v1")).await;
    let body: Value = gateway.get("/v1/models").await.json().await.unwrap();
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gpt-test", "embed-test", "mock"]);
    assert_eq!(body["data"][0]["object"], "model");
    let one: Value = gateway.get("/v1/models/mock").await.json().await.unwrap();
    assert_eq!(one["id"], "mock");
    assert_eq!(gateway.get("/v1/models/nope").await.status(), 404);
}

#[tokio::test]
async fn the_mock_echoes_streams_and_embeds_deterministically() {
    let gateway = TestGateway::start(&config_for("http://127.0.0.1:9/v1")).await;
    let ask = |stream: bool| {
        json!({"model": "mock", "stream": stream, "messages": [
        {"role": "system", "content": "ignored"},
        {"role": "user", "content": "echo these five words please"}]})
    };
    let body: Value = gateway.chat(&ask(false)).await.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo these five words please"
    );
    assert_eq!(body["usage"]["completion_tokens"], 7);
    assert_eq!(
        body["usage"]["total_tokens"],
        body["usage"]["prompt_tokens"].as_u64().unwrap() + 7
    );

    let events = SseReader::new(gateway.chat(&ask(true)).await).all().await;
    assert_eq!(
        events.len(),
        1 + 5 + 1 + 1,
        "role, a chunk per word, finish, [DONE]"
    );
    assert_eq!(content_of(&events), "echo these five words please");

    let cut = json!({"model": "mock", "max_tokens": 2, "messages": [{"role": "user", "content": "a longer sentence than eight bytes"}]});
    let body: Value = gateway.chat(&cut).await.json().await.unwrap();
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["choices"][0]["message"]["content"], "a longer");

    let embed = json!({"model": "mock", "input": ["same", "same"], "dimensions": 8});
    let body: Value = gateway
        .post("/v1/embeddings", &embed)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["data"][0]["embedding"], body["data"][1]["embedding"]);
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 8);
}

#[tokio::test]
async fn health_and_readiness() {
    let gateway = TestGateway::start(&config_for("http://127.0.0.1:9/v1")).await;
    assert_eq!(gateway.get("/healthz").await.status(), 200);
    assert_eq!(gateway.get("/readyz").await.status(), 200);

    let no_key = "providers:\n  up: {kind: openai, api_key: ''}\nmodels:\n  m: {targets: [{provider: up}]}\n";
    let gateway = TestGateway::start(no_key).await;
    assert_eq!(gateway.get("/readyz").await.status(), 503);
    let body: Value = gateway.get("/v1/models").await.json().await.unwrap();
    assert_eq!(
        body["data"],
        json!([]),
        "models without a usable provider are hidden"
    );
    let response = gateway
        .chat(&json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("empty api_key"), "{message}");
}

#[tokio::test]
async fn secrets_never_reach_the_logs_or_the_metrics() {
    let (logs, _guard) = Logs::capture();
    let (_upstream, gateway) = gateway_for(|request| {
        if request.body["messages"][0]["content"] == "fail" {
            // An upstream that quotes the key it rejected, as OpenAI does.
            Behavior::Error {
                status: 401,
                headers: vec![],
                body: format!(r#"{{"error": {{"message": "Incorrect API key provided: {UPSTREAM_KEY}", "type": "invalid_request_error", "code": "invalid_api_key"}}}}"#),
            }
        } else {
            Behavior::Json(upstream::completion("m", "ok"))
        }
    })
    .await;
    let ok = gateway
        .chat(&json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(ok.status(), 200);
    let rejected = gateway
        .chat(&json!({"model": "gpt-test", "messages": [{"role": "user", "content": "fail"}]}))
        .await;
    // The provider refused the gateway's own credentials: not the client's fault.
    assert_eq!(rejected.status(), 502);
    let id = common::request_id(&rejected);
    let body = rejected.text().await.unwrap();
    assert!(!body.contains(UPSTREAM_KEY), "{body}");
    assert!(
        body.contains("'up' rejected the gateway's credentials"),
        "{body}"
    );
    logs.wait_access(&id).await;
    let text = logs.text();
    assert!(
        text.contains("switchyard::access"),
        "logs were captured: {text}"
    );
    let metrics = gateway.get("/metrics").await.text().await.unwrap();
    for secret in [UPSTREAM_KEY, common::TEST_KEY] {
        assert!(
            !text.contains(secret),
            "{secret} leaked into the logs:\n{text}"
        );
        assert!(
            !metrics.contains(secret),
            "{secret} leaked into the metrics:\n{metrics}"
        );
    }
}
