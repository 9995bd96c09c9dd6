//! Direct messages and request-response over real HTTP and WebSockets.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard_test::TestHub;

use crate::ws::{connect, recv, send};

async fn post(hub: &TestHub, path: &str, body: Value) -> (StatusCode, Value) {
    let resp = hub
        .http
        .post(hub.url(path))
        .json(&body)
        .send()
        .await
        .expect("send");
    let status = resp.status();
    (status, resp.json().await.expect("json"))
}

async fn register(hub: &TestHub, id: &str, agent_type: &str) {
    let (status, v) = post(
        hub,
        "/api/v1/agents/register",
        crate::agent(id, agent_type, &["rust"]),
    )
    .await;
    assert!(status.is_success(), "{v}");
}

#[tokio::test]
async fn direct_messages_reach_the_inbox_by_id_or_by_type() {
    let hub = TestHub::start().await.expect("hub");
    register(&hub, "coder-1", "coder").await;
    let mut inbox = connect(&hub).await;
    send(
        &mut inbox,
        json!({"op": "subscribe", "id": "in", "topics": ["inbox.coder-1"]}),
    )
    .await;
    assert_eq!(recv(&mut inbox).await["op"], "subscribed");

    let (status, sent) = post(
        &hub,
        "/api/v1/messages",
        json!({"to": "coder-1", "from": "planner", "type": "plan.ready", "data": {"steps": 3}}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{sent}");
    assert_eq!(sent["topic"], "inbox.coder-1");
    let f = recv(&mut inbox).await;
    let e = &f["event"];
    assert_eq!(e["type"], "plan.ready");
    assert_eq!(e["data"]["steps"], 3);
    assert_eq!(e["targetagent"], "coder-1");
    assert_eq!(e["sourceagent"], "planner");
    assert_eq!(e["correlationid"], sent["correlation_id"]);
    assert_eq!(e["offset"], sent["offset"]);

    let (status, sent) = post(
        &hub,
        "/api/v1/messages",
        json!({"to_type": "coder", "data": {"n": 2}}),
    )
    .await;
    assert_eq!(
        (status, sent["to"].clone()),
        (StatusCode::ACCEPTED, json!("coder-1"))
    );
    assert_eq!(recv(&mut inbox).await["event"]["data"]["n"], 2);

    let (status, v) = post(&hub, "/api/v1/messages", json!({"to": "nobody"})).await;
    assert_eq!(
        (status, v["code"].clone()),
        (StatusCode::NOT_FOUND, json!("AGENT_NOT_FOUND"))
    );
    let (status, v) = post(&hub, "/api/v1/messages", json!({"to_type": "painter"})).await;
    assert_eq!(
        (status, v["code"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!("AGENT_UNAVAILABLE"))
    );
    let (status, v) = post(
        &hub,
        "/api/v1/messages",
        json!({"data": 1, "timeout_ms": 5, "correlation_id": "a b"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let fields: Vec<&str> = v["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["field"].as_str().expect("field"))
        .collect();
    assert_eq!(fields, ["to", "correlation_id", "timeout_ms"], "{v}");
}

#[tokio::test]
async fn a_request_gets_its_reply_or_times_out() {
    let hub = TestHub::start().await.expect("hub");
    register(&hub, "calc", "calculator").await;
    let mut agent = connect(&hub).await;
    send(
        &mut agent,
        json!({"op": "subscribe", "id": "in", "topics": ["inbox.calc"]}),
    )
    .await;
    recv(&mut agent).await;

    let http = hub.http.clone();
    let url = hub.url("/api/v1/requests");
    let asked = tokio::spawn(async move {
        let resp = http
            .post(url)
            .json(&json!({"to_type": "calculator", "type": "sum", "data": {"a": 2, "b": 3}, "timeout_ms": 10000}))
            .send()
            .await
            .expect("send");
        (resp.status(), resp.json::<Value>().await.expect("json"))
    });
    // The agent answers on the request's replyto topic.
    let req = recv(&mut agent).await["event"].clone();
    assert_eq!(req["type"], "sum");
    let sum = req["data"]["a"].as_i64().expect("a") + req["data"]["b"].as_i64().expect("b");
    send(
        &mut agent,
        json!({"op": "publish", "event": {"topic": req["replyto"], "type": "sum.result",
               "correlationid": req["correlationid"], "data": {"sum": sum}}}),
    )
    .await;
    assert_eq!(recv(&mut agent).await["op"], "published");
    let (status, reply) = tokio::time::timeout(Duration::from_secs(15), asked)
        .await
        .expect("answered")
        .expect("task");
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["to"], "calc");
    assert_eq!(reply["reply"]["data"]["sum"], 5);
    assert_eq!(reply["correlation_id"], req["correlationid"]);

    // Nobody answers: 408 TASK_TIMEOUT after the timeout, not before.
    let started = tokio::time::Instant::now();
    let (status, v) = post(
        &hub,
        "/api/v1/requests",
        json!({"to": "calc", "timeout_ms": 300}),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(
        (status, v["code"].clone()),
        (StatusCode::REQUEST_TIMEOUT, json!("TASK_TIMEOUT")),
        "{v}"
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(v["error"]["details"]["timeout_ms"], 300);
}
