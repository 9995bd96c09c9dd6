//! Health, readiness, metrics and shutdown.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_test::{HubProcess, TestHub, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{agent, bin};

#[tokio::test]
async fn health_and_readiness() {
    let hub = TestHub::start().await.expect("hub");
    let h = hub.api.health().await.expect("healthz");
    assert_eq!(h.status, "ok");
    let r = hub.api.ready().await.expect("readyz");
    assert_eq!(r.status, "ready");
    assert_eq!(r.checks["sqlite"], "ok");
}

#[tokio::test]
async fn prometheus_metrics_count_requests_and_agents() {
    let hub = TestHub::start().await.expect("hub");
    for id in ["m1", "m2"] {
        hub.http
            .post(hub.url("/api/v1/agents/register"))
            .json(&agent(id, "worker", &[]))
            .send()
            .await
            .expect("send");
    }
    hub.http
        .get(hub.url("/api/v1/agents/missing"))
        .send()
        .await
        .expect("send");
    // A method the route does not take, a path no route has, and a
    // caller without a credential: each counted under its own labels.
    let anonymous = reqwest::Client::new();
    for (client, method, path, status) in [
        (&hub.http, reqwest::Method::PUT, "/healthz", 405),
        (&hub.http, reqwest::Method::GET, "/api/v1/nothing-here", 404),
        (&anonymous, reqwest::Method::GET, "/api/v1/agents", 401),
    ] {
        let resp = client
            .request(method, hub.url(path))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), status, "{path}");
    }
    let resp = hub
        .http
        .get(hub.url("/metrics"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("application/openmetrics-text")
    );
    let text = resp.text().await.expect("text");
    assert!(text.contains(
        r#"switchboard_http_requests_total{method="POST",route="/api/v1/agents/register",status="201"} 2"#
    ), "{text}");
    assert!(text.contains(
        r#"switchboard_http_requests_total{method="GET",route="/api/v1/agents/{id}",status="404"} 1"#
    ), "{text}");
    assert!(text.contains(
        r#"switchboard_http_request_duration_seconds_count{method="POST",route="/api/v1/agents/register",status="201"} 2"#
    ), "{text}");
    for line in [
        r#"switchboard_http_requests_total{method="PUT",route="/healthz",status="405"} 1"#,
        r#"switchboard_http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
        r#"switchboard_http_requests_total{method="GET",route="/api/v1/agents",status="401"} 1"#,
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
    assert!(
        text.contains(r#"switchboard_agents{status="active"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"switchboard_agents{status="offline"} 0"#),
        "{text}"
    );
}

#[tokio::test]
async fn json_metrics_have_the_seed_shape() {
    let hub = TestHub::start().await.expect("hub");
    hub.http
        .post(hub.url("/api/v1/agents/register"))
        .json(&agent("code-gen-001", "codegen", &[]))
        .send()
        .await
        .expect("send");
    hub.http
        .post(hub.url("/api/v1/agents/code-gen-001/heartbeat"))
        .json(&json!({"current_tasks": 2, "performance_metrics": {"cpu_usage": 12.5}}))
        .send()
        .await
        .expect("send");
    let m: Value = hub.get_json("/api/v1/metrics").await;
    assert_eq!(m["system_metrics"]["active_agents"], 1);
    assert_eq!(m["system_metrics"]["agents_by_status"]["active"], 1);
    assert!(m["system_metrics"]["requests_total"].as_u64().expect("n") >= 2);
    assert!(
        m["system_metrics"]["average_response_time"]
            .as_f64()
            .expect("ms")
            > 0.0
    );
    assert_eq!(m["system_metrics"]["error_rate"], 0.0);
    let a = &m["agent_metrics"]["code-gen-001"];
    assert_eq!(a["current_tasks"], 2);
    assert_eq!(a["load"], 0.4);
    assert_eq!(a["performance_metrics"]["cpu_usage"], 12.5);
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_then_exits() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut hub = HubProcess::spawn(bin(), dir.path(), &[])
        .await
        .expect("spawn");
    let body = agent("in-flight", "worker", &[]).to_string();

    // Start a request and wait until the hub is handling it: it asks for
    // the body (`100 Continue`) once its handler reads it. A connection
    // merely accepted, its request not yet read, is not in flight.
    let mut conn = tokio::net::TcpStream::connect(hub.addr)
        .await
        .expect("connect");
    conn.write_all(
        format!(
            "POST /api/v1/agents/register HTTP/1.1\r\nhost: hub\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nexpect: 100-continue\r\nconnection: close\r\n\r\n",
            switchboard_test::ADMIN_TOKEN,
            body.len()
        )
        .as_bytes(),
    )
    .await
    .expect("write head");
    let mut interim = Vec::new();
    while !interim.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut byte))
            .await
            .expect("100 Continue in time")
            .expect("read");
        assert_eq!(n, 1, "connection closed before 100 Continue: {interim:?}");
        interim.push(byte[0]);
    }
    assert!(
        interim.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&interim)
    );

    hub.signal("-TERM").await.expect("SIGTERM");
    // The hub stops accepting new connections...
    eventually(Duration::from_secs(10), "listener closed", || async {
        tokio::net::TcpStream::connect(hub.addr)
            .await
            .err()
            .map(|_| ())
    })
    .await
    .expect("closed");
    // ...but the request already under way completes.
    conn.write_all(body.as_bytes()).await.expect("write body");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let status = hub.wait(Duration::from_secs(30)).await.expect("exit");
    assert!(status.success(), "clean exit after SIGTERM: {status}");

    // And it was stored.
    let hub = HubProcess::spawn(bin(), dir.path(), &[])
        .await
        .expect("respawn");
    let a: Value = switchboard_test::http_client(switchboard_test::ADMIN_TOKEN)
        .expect("client")
        .get(hub.url("/api/v1/agents/in-flight"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(a["id"], "in-flight");
}
