//! The registry endpoints, one behaviour at a time.

use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard_test::TestHub;

use crate::agent;

async fn register(hub: &TestHub, body: &Value) -> (StatusCode, Value) {
    let resp = hub
        .http
        .post(hub.url("/api/v1/agents/register"))
        .json(body)
        .send()
        .await
        .expect("send");
    let status = resp.status();
    (status, resp.json().await.expect("json"))
}

async fn list(hub: &TestHub, query: &str) -> Value {
    let resp = hub
        .http
        .get(hub.url(&format!("/api/v1/agents?{query}")))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK, "GET /api/v1/agents?{query}");
    resp.json().await.expect("json")
}

fn ids(page: &Value) -> Vec<String> {
    page["agents"]
        .as_array()
        .expect("agents array")
        .iter()
        .map(|a| a["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn register_then_get_returns_every_field() {
    let hub = TestHub::start().await.expect("hub");
    let resp = hub
        .http
        .post(hub.url("/api/v1/agents/register"))
        .json(&agent(
            "agent-001",
            "code_generation",
            &["react", "javascript", "python", "react"],
        ))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(
        resp.headers()["location"].to_str().expect("ascii"),
        "/api/v1/agents/agent-001"
    );
    let got: Value = hub.get_json("/api/v1/agents/agent-001").await;
    assert_eq!(got["type"], "code_generation");
    assert_eq!(got["name"], "Agent agent-001");
    assert_eq!(got["version"], "1.0.0");
    assert_eq!(
        got["capabilities"],
        json!(["javascript", "python", "react"])
    );
    assert_eq!(got["endpoint"], "http://127.0.0.1:9/agent-001");
    assert_eq!(
        got["health_check_url"],
        "http://127.0.0.1:9/agent-001/health"
    );
    assert_eq!(
        got["configuration"]["supported_frameworks"],
        json!(["express"])
    );
    assert_eq!(got["max_concurrent_tasks"], 5);
    assert_eq!(got["metadata"]["team"], "core");
    assert_eq!(got["status"], "active");
    assert_eq!(got["current_tasks"], 0);
    assert_eq!(got["load"], 0.0);
    assert!(got["registered_at"].as_str().expect("time").ends_with('Z'));
}

#[tokio::test]
async fn re_registering_updates_in_place() {
    let hub = TestHub::start().await.expect("hub");
    let (s, first) = register(&hub, &agent("a1", "worker", &["x"])).await;
    assert_eq!(s, StatusCode::CREATED);
    let mut again = agent("a1", "worker", &["y", "z"]);
    again["version"] = json!("1.10.0");
    let (s, second) = register(&hub, &again).await;
    assert_eq!(
        s,
        StatusCode::OK,
        "re-registration is an update, not a new agent"
    );
    assert_eq!(second["capabilities"], json!(["y", "z"]));
    assert_eq!(second["version"], "1.10.0");
    assert_eq!(second["registered_at"], first["registered_at"]);
    let page = list(&hub, "").await;
    assert_eq!(page["total"], 1);
    // The old capability no longer finds it; the new ones do.
    assert_eq!(list(&hub, "capability=x").await["total"], 0);
    assert_eq!(ids(&list(&hub, "capability=y").await), ["a1"]);
}

async fn get(hub: &TestHub, id: &str) -> Value {
    hub.get_json(&format!("/api/v1/agents/{id}")).await
}

#[tokio::test]
async fn heartbeat_records_what_the_agent_reports() {
    let hub = TestHub::start().await.expect("hub");
    register(&hub, &agent("hb-1", "worker", &[])).await;
    let resp = hub
        .http
        .post(hub.url("/api/v1/agents/hb-1/heartbeat"))
        .json(&json!({
            "status": "busy",
            "current_tasks": 3,
            "performance_metrics": {"cpu_usage": 45.2, "memory_usage": 67.8, "task_queue_size": 12}
        }))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    let ack: Value = resp.json().await.expect("json");
    assert_eq!(ack["agent_id"], "hb-1");
    assert_eq!(ack["status"], "busy");
    assert_eq!(ack["heartbeat_interval_ms"], 30_000);
    let a = get(&hub, "hb-1").await;
    assert_eq!(a["status"], "busy");
    assert_eq!(a["current_tasks"], 3);
    assert_eq!(a["load"], 0.6);
    assert_eq!(a["performance_metrics"]["cpu_usage"], 45.2);
    assert_eq!(a["last_heartbeat_at"], ack["recorded_at"]);
    // A bare heartbeat keeps what was reported.
    let ack: Value = hub
        .http
        .post(hub.url("/api/v1/agents/hb-1/heartbeat"))
        .json(&json!({}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(ack["status"], "busy");
    let a = get(&hub, "hb-1").await;
    assert_eq!(a["current_tasks"], 3);
    assert_eq!(a["performance_metrics"]["task_queue_size"], 12.0);
    // Listings show the latest heartbeat too.
    let page = list(&hub, "status=busy").await;
    assert_eq!(page["agents"][0]["current_tasks"], 3);
}

#[tokio::test]
async fn heartbeat_for_unknown_agent_is_404() {
    let hub = TestHub::start().await.expect("hub");
    let resp = hub
        .http
        .post(hub.url("/api/v1/agents/ghost/heartbeat"))
        .json(&json!({"status": "active"}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let p: Value = resp.json().await.expect("json");
    assert_eq!(p["code"], "AGENT_NOT_FOUND");
    assert_eq!(p["error"]["details"]["agent_id"], "ghost");
}

#[tokio::test]
async fn filters_by_type_status_and_every_capability() {
    let hub = TestHub::start().await.expect("hub");
    register(&hub, &agent("c1", "codegen", &["python", "rust"])).await;
    register(&hub, &agent("c2", "codegen", &["python"])).await;
    register(&hub, &agent("t1", "tester", &["python", "rust", "jest"])).await;
    hub.http
        .post(hub.url("/api/v1/agents/c2/heartbeat"))
        .json(&json!({"status": "draining"}))
        .send()
        .await
        .expect("send");

    let cases: &[(&str, &[&str])] = &[
        ("", &["c1", "c2", "t1"]),
        ("type=codegen", &["c1", "c2"]),
        ("type=tester", &["t1"]),
        ("type=nobody", &[]),
        ("status=active", &["c1", "t1"]),
        ("status=draining", &["c2"]),
        ("status=active,draining", &["c1", "c2", "t1"]),
        ("status=active&status=draining", &["c1", "c2", "t1"]),
        ("status=offline", &[]),
        ("capability=python", &["c1", "c2", "t1"]),
        ("capability=rust", &["c1", "t1"]),
        ("capability=python&capability=rust", &["c1", "t1"]),
        ("capability=python,rust,jest", &["t1"]),
        ("capability=rust&capability=haskell", &[]),
        ("type=codegen&capability=rust", &["c1"]),
        ("type=codegen&status=active&capability=python", &["c1"]),
    ];
    for (query, want) in cases {
        let page = list(&hub, query).await;
        assert_eq!(ids(&page), *want, "query {query:?}");
        assert_eq!(page["total"], want.len(), "total for {query:?}");
    }
}

#[tokio::test]
async fn pages_through_every_agent_once() {
    let hub = TestHub::start().await.expect("hub");
    for i in 0..23 {
        register(&hub, &agent(&format!("p{i:02}"), "worker", &["x"])).await;
    }
    let mut seen = Vec::new();
    let mut query = "limit=5&capability=x".to_owned();
    let mut pages = 0;
    loop {
        let page = list(&hub, &query).await;
        pages += 1;
        assert_eq!(page["total"], 23);
        let got = ids(&page);
        assert!(got.len() <= 5);
        seen.extend(got);
        match page["next_cursor"].as_str() {
            Some(c) => query = format!("limit=5&capability=x&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(pages, 5);
    let want: Vec<String> = (0..23).map(|i| format!("p{i:02}")).collect();
    assert_eq!(seen, want);
}

#[tokio::test]
async fn delete_removes_the_agent() {
    let hub = TestHub::start().await.expect("hub");
    register(&hub, &agent("gone", "worker", &["x"])).await;
    let resp = hub
        .http
        .delete(hub.url("/api/v1/agents/gone"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = hub
        .http
        .get(hub.url("/api/v1/agents/gone"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(list(&hub, "capability=x").await["total"], 0);
    let resp = hub
        .http
        .delete(hub.url("/api/v1/agents/gone"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn typed_client_round_trip() {
    let hub = TestHub::start().await.expect("hub");
    let req: switchboard_wire::RegisterAgentRequest =
        serde_json::from_value(agent("typed", "worker", &["a", "b"])).expect("request");
    let (a, created) = hub.api.register_agent(&req).await.expect("register");
    assert!(created);
    assert_eq!(a.capabilities, ["a", "b"]);
    let all = hub
        .api
        .list_all_agents(&switchboard_client::AgentListQuery {
            capabilities: vec!["b".into()],
            limit: Some(1),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(all.len(), 1);
    let err = hub.api.get_agent("nope").await.expect_err("404");
    assert_eq!(err.problem().expect("problem").code, "AGENT_NOT_FOUND");
}
