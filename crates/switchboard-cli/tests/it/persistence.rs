//! The registry survives a restart and a `kill -9`.

use std::time::Duration;

use serde_json::Value;
use switchboard_test::{HubProcess, TestHub};

use crate::{agent, bin};

#[tokio::test]
async fn registry_survives_a_graceful_restart() {
    let hub = TestHub::start().await.expect("hub");
    for (id, caps) in [("r1", vec!["a"]), ("r2", vec!["a", "b"]), ("r3", vec!["c"])] {
        hub.http
            .post(hub.url("/api/v1/agents/register"))
            .json(&agent(id, "worker", &caps))
            .send()
            .await
            .expect("send");
    }
    let before: Value = hub.get_json("/api/v1/agents").await;
    let data = hub.stop().await.expect("stop");

    let hub = TestHub::start_with(data, "").await.expect("restart");
    let after: Value = hub.get_json("/api/v1/agents").await;
    assert_eq!(after, before);
    let by_cap: Value = hub.get_json("/api/v1/agents?capability=a").await;
    assert_eq!(by_cap["total"], 2);
}

#[tokio::test]
async fn heartbeat_figures_are_written_at_shutdown() {
    let hub = TestHub::start().await.expect("hub");
    hub.http
        .post(hub.url("/api/v1/agents/register"))
        .json(&agent("beater", "worker", &[]))
        .send()
        .await
        .expect("send");
    let ack: Value = hub
        .http
        .post(hub.url("/api/v1/agents/beater/heartbeat"))
        .json(&serde_json::json!({"current_tasks": 4, "performance_metrics": {"cpu": 9.5}}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let data = hub.stop().await.expect("stop");
    let hub = TestHub::start_with(data, "").await.expect("restart");
    let a: Value = hub.get_json("/api/v1/agents/beater").await;
    assert_eq!(a["current_tasks"], 4);
    assert_eq!(a["performance_metrics"]["cpu"], 9.5);
    assert_eq!(a["last_heartbeat_at"], ack["recorded_at"]);
}

#[tokio::test]
async fn acknowledged_registrations_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut hub = HubProcess::spawn(bin(), dir.path(), &[])
        .await
        .expect("spawn");
    let http = switchboard_test::http_client(switchboard_test::ADMIN_TOKEN).expect("http client");
    // Every registration that got a 201 must be there after the crash.
    let mut acked = Vec::new();
    for i in 0..200 {
        let id = format!("k{i:03}");
        let resp = http
            .post(hub.url("/api/v1/agents/register"))
            .json(&agent(&id, "worker", &["crash"]))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 201);
        acked.push(id);
    }
    // A change of status is stored before it is acknowledged.
    let resp = http
        .post(hub.url("/api/v1/agents/k007/heartbeat"))
        .json(&serde_json::json!({"status": "draining"}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    hub.signal("-KILL").await.expect("kill -9");
    let status = hub.wait(Duration::from_secs(10)).await.expect("exit");
    assert!(!status.success(), "killed, not exited: {status}");

    let hub = HubProcess::spawn(bin(), dir.path(), &[])
        .await
        .expect("respawn");
    let page: Value = http
        .get(hub.url("/api/v1/agents?capability=crash&limit=1000"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let ids: Vec<&str> = page["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .map(|a| a["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, acked);
    assert_eq!(page["agents"][7]["status"], "draining");
}
