//! Agents that stop heartbeating go stale, then offline; a heartbeat brings
//! them back.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_test::{DataDir, TestHub, eventually};

use crate::agent;

const FAST: &str = "[registry]\nheartbeat_interval = \"100ms\"\nstale_after_missed = 5\noffline_after_missed = 10\nsweep_interval = \"20ms\"\n";

async fn status(hub: &TestHub, id: &str) -> String {
    let a: Value = hub.get_json(&format!("/api/v1/agents/{id}")).await;
    a["status"].as_str().expect("status").to_owned()
}

#[tokio::test]
async fn silent_agent_goes_stale_then_offline_and_comes_back() {
    let hub = TestHub::start_with(DataDir::temp().expect("tmp"), FAST)
        .await
        .expect("hub");
    for id in ["quiet", "chatty"] {
        hub.http
            .post(hub.url("/api/v1/agents/register"))
            .json(&agent(id, "worker", &[]))
            .send()
            .await
            .expect("send");
    }
    // "chatty" heartbeats every 20 ms for the whole test; "quiet" never does.
    let beat = {
        let http = hub.http.clone();
        let url = hub.url("/api/v1/agents/chatty/heartbeat");
        tokio::spawn(async move {
            loop {
                let _ = http
                    .post(&url)
                    .json(&json!({"status": "busy"}))
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let deadline = Duration::from_secs(10);
    eventually(deadline, "quiet goes stale", || async {
        (status(&hub, "quiet").await == "stale").then_some(())
    })
    .await
    .expect("stale");
    eventually(deadline, "quiet goes offline", || async {
        (status(&hub, "quiet").await == "offline").then_some(())
    })
    .await
    .expect("offline");
    assert_eq!(
        status(&hub, "chatty").await,
        "busy",
        "a heartbeating agent stays live"
    );

    // The list filters in the store, which the sweep writes just after
    // it marks the agent: it may lag the agent's own page by that write.
    eventually(
        deadline,
        "the list of offline agents holds quiet",
        || async {
            let offline: Value = hub.get_json("/api/v1/agents?status=offline").await;
            (offline["total"] == 1 && offline["agents"][0]["id"] == "quiet").then_some(())
        },
    )
    .await
    .expect("listed offline");

    let back: Value = hub
        .http
        .post(hub.url("/api/v1/agents/quiet/heartbeat"))
        .json(&json!({"status": "idle"}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(
        back["status"], "idle",
        "a heartbeat brings an offline agent back"
    );
    beat.abort();
}

#[tokio::test]
async fn re_registration_revives_a_stale_agent() {
    let hub = TestHub::start_with(DataDir::temp().expect("tmp"), FAST)
        .await
        .expect("hub");
    let body = agent("phoenix", "worker", &[]);
    hub.http
        .post(hub.url("/api/v1/agents/register"))
        .json(&body)
        .send()
        .await
        .expect("send");
    eventually(Duration::from_secs(10), "phoenix goes stale", || async {
        (status(&hub, "phoenix").await != "active").then_some(())
    })
    .await
    .expect("stale");
    let resp = hub
        .http
        .post(hub.url("/api/v1/agents/register"))
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let a: Value = resp.json().await.expect("json");
    assert_eq!(a["status"], "active");
}
