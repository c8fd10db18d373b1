//! `POST /v1/feedback` through the real HTTP surface: the gateway's request id is the
//! handle (a client's own `x-request-id` is only a correlation id), scores and their
//! validation, replacement, scoping to the key's team, expiry, the log event and the
//! metric, and the Redis backend shared by two replicas.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use common::redis::RedisServer;
use common::{Logs, TEST_KEY, TestGateway, eventually};
use serde_json::{Value, json};
use switchyard::auth::{hash_key, hex};

/// Team a's second key; `TEST_KEY` is team a's first (`a1`).
const A2: &str = "sk-sy-feedback-team-a-two-000000";
const B1: &str = "sk-sy-feedback-team-b-one-000000";
const SOLO1: &str = "sk-sy-feedback-solo-one-00000000";
const SOLO2: &str = "sk-sy-feedback-solo-two-00000000";
const TARGET: &str = "mock/echo-upstream";

/// The echo model, keys in two teams and two without one, and `extra` sections.
fn config(extra: &str) -> String {
    let key = |k: &str| hex(&hash_key(k));
    format!(
        "{}\nauth:\n  teams: {{a: {{}}, b: {{}}}}\n  keys:\n    a1: {{sha256: {}, team: a}}\n    a2: {{sha256: {}, team: a}}\n    b1: {{sha256: {}, team: b}}\n    solo1: {{sha256: {}}}\n    solo2: {{sha256: {}}}\n{extra}",
        common::echo_config("0ms", "1ms"),
        key(TEST_KEY),
        key(A2),
        key(B1),
        key(SOLO1),
        key(SOLO2),
    )
}

/// A chat request as `key`, with `headers`; it must be answered.
async fn chat(gateway: &TestGateway, key: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = common::client()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .bearer_auth(key)
        .json(&json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response
}

/// The gateway's id of a response's request.
fn handle(response: &reqwest::Response) -> String {
    let value = &response.headers()["x-switchyard-request-id"];
    value.to_str().unwrap().to_owned()
}

/// A request served for `key`: its handle, once it is over.
async fn served(gateway: &TestGateway, logs: &Logs, key: &str) -> String {
    let id = handle(&chat(gateway, key, &[]).await);
    logs.wait_access(&id).await;
    id
}

/// `POST /v1/feedback` as `key`: the status and the JSON body.
async fn feedback(gateway: &TestGateway, key: &str, body: &Value) -> (u16, Value) {
    let response = common::client()
        .post(format!("{}/v1/feedback", gateway.url))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let id = handle(&response);
    let body: Value = response.json().await.unwrap();
    if status != 200 {
        assert_eq!(
            body["error"]["request_id"],
            id.as_str(),
            "errors name their id"
        );
    }
    (status, body)
}

/// The first feedback on a request just served: the index may learn of it a moment after
/// the client got the answer (with Redis, a write in the background), so 404 is retried.
async fn first_feedback(gateway: &TestGateway, key: &str, body: &Value) -> (u16, Value) {
    eventually("the request is remembered", async || {
        let answer = feedback(gateway, key, body).await;
        (answer.0 != 404).then_some(answer)
    })
    .await
}

/// The `switchyard::feedback` log events' fields.
fn events(logs: &Logs) -> Vec<Value> {
    logs.text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "switchyard::feedback")
        .map(|v| v["fields"].clone())
        .collect()
}

#[tokio::test]
async fn scores_up_down_and_numbers_replacing_the_previous_one() {
    let (logs, _guard) = Logs::capture();
    let gateway = TestGateway::start(&config("")).await;
    let id = served(&gateway, &logs, TEST_KEY).await;
    let up = json!({"request_id": id, "score": "up", "comment": "spot on", "metadata": {"ui": "thumbs"}});
    let (status, answer) = first_feedback(&gateway, TEST_KEY, &up).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        json!({"object": "feedback", "request_id": id, "score": 1.0, "replaced": false})
    );
    let (status, answer) = feedback(
        &gateway,
        TEST_KEY,
        &json!({"request_id": id, "score": "down"}),
    )
    .await;
    assert_eq!(
        (status, &answer["score"], &answer["replaced"]),
        (200, &json!(-1.0), &json!(true))
    );
    // Another key of the same team may score it too.
    let (status, answer) = feedback(&gateway, A2, &json!({"request_id": id, "score": 0})).await;
    assert_eq!(
        (status, &answer["score"], &answer["replaced"]),
        (200, &json!(0.0), &json!(true))
    );
    let (status, answer) =
        feedback(&gateway, TEST_KEY, &json!({"request_id": id, "score": 0.5})).await;
    assert_eq!((status, &answer["score"]), (200, &json!(0.5)));

    let text = gateway.metrics().await;
    for (rating, count) in [("positive", 2), ("negative", 1), ("neutral", 1)] {
        let line = format!(
            "switchyard_feedback_total{{model=\"echo\",target=\"{TARGET}\",rating=\"{rating}\"}} {count}"
        );
        assert!(text.contains(&line), "{line} in\n{text}");
    }

    let events = events(&logs);
    assert_eq!(events.len(), 4, "{events:?}");
    let first = &events[0];
    assert_eq!(first["request_id"], id.as_str());
    assert_eq!((&first["key"], &first["team"]), (&json!("a1"), &json!("a")));
    assert_eq!(
        (&first["model"], &first["target"]),
        (&json!("echo"), &json!(TARGET))
    );
    assert_eq!(
        (&first["score"], &first["replaced"]),
        (&json!(1.0), &json!(false))
    );
    assert_eq!(
        (&first["comment"], &first["comment_chars"]),
        (&json!("spot on"), &json!(7))
    );
    assert_eq!(first["metadata"], r#"{"ui":"thumbs"}"#);
    assert_eq!(events[2]["given_by"], "a2");
    let logged = logs.text();
    for secret in [TEST_KEY, A2] {
        assert!(
            !logged.contains(secret),
            "a key leaked into the logs:\n{logged}"
        );
    }
}

#[tokio::test]
async fn the_handle_is_the_gateways_id_never_the_clients() {
    let (logs, _guard) = Logs::capture();
    let gateway = TestGateway::start(&config("")).await;

    // No x-request-id: the one the client gets back is the handle.
    let response = chat(&gateway, TEST_KEY, &[]).await;
    let id = handle(&response);
    assert!(id.starts_with("req_") && id.len() == 28, "{id}");
    assert_eq!(common::request_id(&response), id);
    let line = logs.wait_access(&id).await;
    assert_eq!(line["correlation_id"], Value::Null);
    let (status, _) =
        first_feedback(&gateway, TEST_KEY, &json!({"request_id": id, "score": 1})).await;
    assert_eq!(status, 200);

    // The client's x-request-id is echoed and logged as the correlation id, but it is not
    // a handle; nor can a client choose the gateway's id.
    let headers = [
        ("x-request-id", "client-corr-1"),
        ("x-switchyard-request-id", "req_mine"),
    ];
    let response = chat(&gateway, TEST_KEY, &headers).await;
    assert_eq!(common::request_id(&response), "client-corr-1");
    let id = handle(&response);
    assert!(id.starts_with("req_") && id != "req_mine", "{id}");
    let line = logs.wait_access(&id).await;
    assert_eq!(line["correlation_id"], "client-corr-1");
    let (status, _) =
        first_feedback(&gateway, TEST_KEY, &json!({"request_id": id, "score": 1})).await;
    assert_eq!(status, 200);
    for chosen in ["client-corr-1", "req_mine"] {
        let (status, answer) = feedback(
            &gateway,
            TEST_KEY,
            &json!({"request_id": chosen, "score": 1}),
        )
        .await;
        assert_eq!(status, 404, "{answer}");
        assert_eq!(answer["error"]["code"], "request_not_found");
    }
}

#[tokio::test]
async fn another_teams_request_is_not_found_exactly_like_an_unknown_one() {
    let (logs, _guard) = Logs::capture();
    let gateway = TestGateway::start(&config("")).await;
    let without_id = |mut answer: Value| {
        answer["error"]["request_id"].take();
        answer
    };
    let (status, unknown) = feedback(
        &gateway,
        B1,
        &json!({"request_id": "req_000000000000000000000000", "score": 1}),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(unknown["error"]["code"], "request_not_found");
    assert_eq!(unknown["error"]["param"], "request_id");
    let unknown = without_id(unknown);

    let teams = served(&gateway, &logs, TEST_KEY).await;
    let solo = served(&gateway, &logs, SOLO1).await;
    // Each is scored by its own first, so the index surely knows them.
    for (key, id) in [(TEST_KEY, &teams), (SOLO1, &solo)] {
        let (status, _) =
            first_feedback(&gateway, key, &json!({"request_id": id, "score": 1})).await;
        assert_eq!(status, 200);
    }
    for (key, id) in [(B1, &teams), (SOLO1, &teams), (SOLO2, &solo), (A2, &solo)] {
        let (status, answer) =
            feedback(&gateway, key, &json!({"request_id": id, "score": -1})).await;
        assert_eq!((status, without_id(answer)), (404, unknown.clone()));
    }
    assert_eq!(events(&logs).len(), 2, "refused feedback is not recorded");
}

#[tokio::test]
async fn a_wrong_feedback_is_a_400_naming_its_parameter() {
    let (logs, _guard) = Logs::capture();
    let gateway = TestGateway::start(&config("")).await;
    let id = served(&gateway, &logs, TEST_KEY).await;
    let cases = [
        (json!({"request_id": id, "score": 2}), "score"),
        (json!({"request_id": id, "score": "meh"}), "score"),
        (json!({"request_id": id}), "score"),
        (json!({"score": 1}), "request_id"),
        (
            json!({"request_id": id, "score": 1, "comment": "x".repeat(4097)}),
            "comment",
        ),
        (
            json!({"request_id": id, "score": 1, "metadata": "x"}),
            "metadata",
        ),
    ];
    for (body, param) in cases {
        let (status, answer) = feedback(&gateway, TEST_KEY, &body).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["param"], param, "{answer}");
        assert_eq!(answer["error"]["type"], "invalid_request_error");
    }
    let huge = json!({"request_id": id, "score": 1, "comment": "x".repeat(17 * 1024)});
    let (status, answer) = feedback(&gateway, TEST_KEY, &huge).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (413, &json!("request_too_large"))
    );
    let response = common::client()
        .post(format!("{}/v1/feedback", gateway.url))
        .json(&json!({"request_id": id, "score": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        401,
        "feedback needs a key like any /v1 call"
    );
    assert!(events(&logs).is_empty());
}

#[tokio::test]
async fn a_request_is_forgotten_after_the_retention() {
    let (logs, _guard) = Logs::capture();
    let gateway = TestGateway::start(&config("feedback: {retention: 1s}\n")).await;
    let id = served(&gateway, &logs, TEST_KEY).await;
    let body = json!({"request_id": id, "score": "up"});
    let (status, _) = first_feedback(&gateway, TEST_KEY, &body).await;
    assert_eq!(status, 200);
    eventually("the request expires", async || {
        let (status, answer) = feedback(&gateway, TEST_KEY, &body).await;
        assert!(status == 200 || status == 404, "{answer}");
        (status == 404).then_some(())
    })
    .await;
}

/// `GET key` on `redis`, as text.
async fn redis_get(redis: &RedisServer, key: &str) -> Option<String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", redis.port))
        .await
        .unwrap();
    let request = format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len());
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header).await.unwrap();
    if header.starts_with("$-1") {
        return None;
    }
    let mut value = String::new();
    reader.read_line(&mut value).await.unwrap();
    Some(value.trim_end().to_owned())
}

#[tokio::test]
async fn with_redis_any_replica_takes_feedback_for_any_replicas_request() {
    let (logs, _guard) = Logs::capture();
    let redis = RedisServer::start().await;
    // The feedback backend follows limits.backend.
    let shared = format!(
        "limits:\n  backend: redis\n  redis: {{url: \"{}\", timeout: 500ms}}\n",
        redis.url()
    );
    let first = TestGateway::start(&config(&shared)).await;
    let second = TestGateway::start(&config(&shared)).await;

    let id = served(&first, &logs, TEST_KEY).await;
    let body = json!({"request_id": id, "score": "up", "comment": "good"});
    let (status, answer) = first_feedback(&second, TEST_KEY, &body).await;
    assert_eq!(
        (status, &answer["replaced"]),
        (200, &json!(false)),
        "{answer}"
    );
    let (status, answer) = feedback(&first, A2, &json!({"request_id": id, "score": -0.5})).await;
    assert_eq!(
        (status, &answer["replaced"]),
        (200, &json!(true)),
        "{answer}"
    );
    let (status, _) = feedback(&second, B1, &json!({"request_id": id, "score": 1})).await;
    assert_eq!(status, 404, "another team's, on any replica");

    let request = format!("switchyard:feedback:req:{id}");
    let stored: Value = serde_json::from_str(&redis_get(&redis, &request).await.unwrap()).unwrap();
    assert_eq!(
        stored,
        json!({"key": "a1", "team": "a", "model": "echo", "target": TARGET})
    );
    let kept = redis_get(&redis, &format!("{request}:feedback"))
        .await
        .unwrap();
    let kept: Value = serde_json::from_str(&kept).unwrap();
    assert_eq!(
        (&kept["score"], &kept["comment"]),
        (&json!(-0.5), &Value::Null),
        "replaced"
    );
    for key in [request.clone(), format!("{request}:feedback")] {
        let ttl = RedisServer::command(redis.port, &["PTTL", &key]).await;
        let ttl: i64 = ttl.trim().trim_start_matches(':').parse().unwrap();
        assert!(ttl > 0, "{key} expires: {ttl}");
    }
    let logged = logs.text();
    assert!(
        !logged.contains(TEST_KEY) && !logged.contains(A2),
        "{logged}"
    );
    let counted = |text: String| {
        text.contains(&format!(
            "switchyard_feedback_total{{model=\"echo\",target=\"{TARGET}\",rating=\"positive\"}} 1"
        ))
    };
    assert!(
        counted(second.metrics().await),
        "counted where it was given"
    );
}
