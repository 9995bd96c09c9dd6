//! Tasks over real HTTP: the state machine, least loaded assignment,
//! claims, leases, retries, timeouts, dependencies, priorities, cancel,
//! idempotent creates, listings, bad input, events and metrics.
//!
//! The helpers at the top are shared with `workflows.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard_test::{DataDir, TestHub, eventually};

/// How long any one condition may take to come true.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// Registry settings under which a silent agent is stale after 300 ms and
/// offline after 600 ms.
const FAST_REGISTRY: &str = "[registry]\nheartbeat_interval = \"100ms\"\nstale_after_missed = 3\noffline_after_missed = 6\nsweep_interval = \"20ms\"\n";

/// Any request; the answer's status and JSON body (`Null` when empty).
pub(crate) async fn call(
    hub: &TestHub,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = hub.http.request(m, hub.url(path));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status();
    let text = resp.text().await.expect("body");
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    };
    (status, value)
}

/// Registers an agent that takes `capacity` tasks at once.
pub(crate) async fn register(
    hub: &TestHub,
    id: &str,
    agent_type: &str,
    caps: &[&str],
    capacity: u32,
) {
    let mut body = crate::agent(id, agent_type, caps);
    body["configuration"]["max_concurrent_tasks"] = json!(capacity);
    let (status, v) = call(hub, "POST", "/api/v1/agents/register", Some(body)).await;
    assert!(status.is_success(), "register {id}: {v}");
}

/// Registers an agent, then has it ask for work once (there is none yet),
/// as a starting agent does: from then on the hub gives it tasks.
pub(crate) async fn join(hub: &TestHub, id: &str, agent_type: &str, caps: &[&str], capacity: u32) {
    register(hub, id, agent_type, caps, capacity).await;
    let got = claim(hub, id, 1, 0).await;
    assert!(got.is_empty(), "{id} joined to find work: {got:?}");
}

/// A heartbeat loop for one agent, stopped when dropped.
pub(crate) struct Beat(tokio::task::JoinHandle<()>);

impl Drop for Beat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Heartbeats `id` every 30 ms until the guard is dropped.
pub(crate) fn beat(hub: &TestHub, id: &str) -> Beat {
    let http = hub.http.clone();
    let url = hub.url(&format!("/api/v1/agents/{id}/heartbeat"));
    Beat(tokio::spawn(async move {
        loop {
            let _ = http.post(&url).json(&json!({})).send().await;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }))
}

/// Creates a task; it must be new (201).
pub(crate) async fn create(hub: &TestHub, body: Value) -> Value {
    let (status, v) = call(hub, "POST", "/api/v1/tasks", Some(body.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "create {body}: {v}");
    v
}

/// One task as the hub shows it.
pub(crate) async fn task(hub: &TestHub, id: &str) -> Value {
    let (status, v) = call(hub, "GET", &format!("/api/v1/tasks/{id}"), None).await;
    assert_eq!(status, StatusCode::OK, "GET task {id}: {v}");
    v
}

/// Waits until task `id` satisfies `ok`; its state then.
pub(crate) async fn wait_task(
    hub: &TestHub,
    id: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let ok = &ok;
    let found = eventually(WAIT, &format!("task {id} {what}"), || async move {
        let t = task(hub, id).await;
        ok(&t).then_some(t)
    })
    .await;
    match found {
        Ok(t) => t,
        Err(e) => panic!("{e:#}; it is {}", task(hub, id).await),
    }
}

/// Waits until task `id` is assigned to `agent` in attempt `attempt`.
pub(crate) async fn wait_assigned(hub: &TestHub, id: &str, agent: &str, attempt: u64) -> Value {
    wait_task(
        hub,
        id,
        &format!("assigned to {agent} (attempt {attempt})"),
        |t| t["status"] == "assigned" && t["agent_id"] == agent && t["attempt"] == attempt,
    )
    .await
}

/// An agent's claim; the tasks given.
pub(crate) async fn claim(hub: &TestHub, agent: &str, max: u32, wait_ms: u64) -> Vec<Value> {
    let (status, v) = call(
        hub,
        "POST",
        "/api/v1/tasks/claim",
        Some(json!({"agent_id": agent, "max_tasks": max, "wait_ms": wait_ms})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "claim by {agent}: {v}");
    v["tasks"].as_array().expect("tasks").clone()
}

/// The ids of some tasks.
pub(crate) fn ids(tasks: &[Value]) -> Vec<String> {
    tasks
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_owned())
        .collect()
}

/// An agent's report on a task; any answer.
pub(crate) async fn try_report(hub: &TestHub, id: &str, body: Value) -> (StatusCode, Value) {
    call(hub, "PATCH", &format!("/api/v1/tasks/{id}"), Some(body)).await
}

/// An agent's report on a task; it must be accepted.
pub(crate) async fn report(hub: &TestHub, id: &str, body: Value) -> Value {
    let (status, v) = try_report(hub, id, body.clone()).await;
    assert_eq!(status, StatusCode::OK, "report {body} on {id}: {v}");
    v
}

/// `agent` completes its attempt `attempt` of `id` with `output`.
pub(crate) async fn complete(
    hub: &TestHub,
    id: &str,
    agent: &str,
    attempt: u64,
    output: Value,
) -> Value {
    report(
        hub,
        id,
        json!({"status": "completed", "agent_id": agent, "attempt": attempt, "output_data": output}),
    )
    .await
}

/// `agent` reports its attempt `attempt` of `id` failed for good.
pub(crate) async fn fail(hub: &TestHub, id: &str, agent: &str, attempt: u64, code: &str) -> Value {
    report(
        hub,
        id,
        json!({"status": "failed", "agent_id": agent, "attempt": attempt, "retry": false,
               "error": {"code": code, "message": format!("{id} went wrong")}}),
    )
    .await
}

/// Asserts a problem answer; its `error.details`.
#[track_caller]
pub(crate) fn refused(answer: &(StatusCode, Value), status: StatusCode, code: &str) -> Value {
    let (got, v) = answer;
    assert_eq!((*got, v["code"].as_str()), (status, Some(code)), "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    v["error"]["details"].clone()
}

/// The fields a 422 (or 400) names.
pub(crate) fn fields(v: &Value) -> Vec<String> {
    v["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors in {v}"))
        .iter()
        .map(|e| e["field"].as_str().expect("field").to_owned())
        .collect()
}

/// Every event on topics matching `pattern`, oldest first.
pub(crate) async fn events(hub: &TestHub, pattern: &str) -> Vec<Value> {
    let page = hub
        .get_json(&format!(
            "/api/v1/events?topic={pattern}&after=0&limit=1000"
        ))
        .await;
    page["events"]
        .as_array()
        .unwrap_or_else(|| panic!("events: {page}"))
        .clone()
}

/// Unix milliseconds of an RFC 3339 time in a body.
pub(crate) fn ms(v: &Value) -> i64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .timestamp_millis()
}

/// A page of tasks for `query`.
pub(crate) async fn list(hub: &TestHub, query: &str) -> Value {
    let (status, v) = call(hub, "GET", &format!("/api/v1/tasks?{query}"), None).await;
    assert_eq!(status, StatusCode::OK, "GET /api/v1/tasks?{query}: {v}");
    v
}

/// A long-polling claim sent in the background; its answer's JSON.
fn spawn_claim(
    hub: &TestHub,
    agent: &str,
    max: u32,
    wait_ms: u64,
) -> tokio::task::JoinHandle<Value> {
    let http = hub.http.clone();
    let url = hub.url("/api/v1/tasks/claim");
    let body = json!({"agent_id": agent, "max_tasks": max, "wait_ms": wait_ms});
    tokio::spawn(async move {
        http.post(url)
            .json(&body)
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json")
    })
}

/// How many tasks `agent` holds (assigned or in progress).
async fn held(hub: &TestHub, agent: &str) -> u64 {
    list(
        hub,
        &format!("agent_id={agent}&status=assigned,in_progress"),
    )
    .await["total"]
        .as_u64()
        .expect("total")
}

async fn cancel(hub: &TestHub, id: &str, body: Option<Value>) -> (StatusCode, Value) {
    call(hub, "POST", &format!("/api/v1/tasks/{id}/cancel"), body).await
}

#[tokio::test]
async fn every_legal_transition_is_accepted_and_recorded() {
    let hub = TestHub::start().await.expect("hub");
    join(&hub, "w1", "work", &[], 20).await;

    // queued → assigned → in_progress → in_progress (progress) → completed.
    let a = create(
        &hub,
        json!({"id": "a", "type": "work", "input_data": {"n": 1}}),
    )
    .await;
    assert_eq!(a["input_data"], json!({"n": 1}));
    let a = wait_assigned(&hub, "a", "w1", 1).await;
    assert!(
        a["assigned_at"].is_string() && a["lease_expires_at"].is_string(),
        "{a}"
    );
    assert_eq!(ids(&claim(&hub, "w1", 10, 0).await), ["a"]);
    let a = report(
        &hub,
        "a",
        json!({"status": "in_progress", "agent_id": "w1", "attempt": 1}),
    )
    .await;
    assert_eq!(a["status"], "in_progress");
    assert!(a["started_at"].is_string(), "{a}");
    let a = report(
        &hub,
        "a",
        json!({"progress": 45, "output_data": {"files_generated": 12},
               "estimated_completion": "2030-01-15T14:30:00Z"}),
    )
    .await;
    assert_eq!(
        (
            &a["status"],
            &a["progress"],
            &a["output_data"]["files_generated"]
        ),
        (&json!("in_progress"), &json!(45), &json!(12))
    );
    assert_eq!(
        ms(&a["estimated_completion"]),
        ms(&json!("2030-01-15T14:30:00Z"))
    );
    let a = complete(&hub, "a", "w1", 1, json!({"files_generated": 30})).await;
    assert_eq!(
        (&a["status"], &a["progress"], &a["output_data"]),
        (
            &json!("completed"),
            &json!(100),
            &json!({"files_generated": 30})
        )
    );
    assert!(a["completed_at"].is_string(), "{a}");
    assert_eq!(
        task(&hub, "a").await,
        a,
        "what the report answered is stored"
    );

    // assigned → completed, without reporting a start.
    create(&hub, json!({"id": "b", "type": "work"})).await;
    wait_assigned(&hub, "b", "w1", 1).await;
    let b = complete(&hub, "b", "w1", 1, json!({})).await;
    assert_eq!(b["status"], "completed");
    assert!(b["started_at"].is_string(), "{b}");

    // assigned → failed, for good.
    create(&hub, json!({"id": "c", "type": "work"})).await;
    wait_assigned(&hub, "c", "w1", 1).await;
    let c = fail(&hub, "c", "w1", 1, "BAD_TEMPLATE").await;
    assert_eq!(
        (&c["status"], &c["error"]["code"], &c["attempt"]),
        (&json!("failed"), &json!("BAD_TEMPLATE"), &json!(1))
    );

    // in_progress → queued (a retry) → assigned again → in_progress → failed
    // (no attempt left).
    create(
        &hub,
        json!({"id": "d", "type": "work",
               "retry_policy": {"max_attempts": 2, "initial_delay_ms": 200, "jitter": 0}}),
    )
    .await;
    wait_assigned(&hub, "d", "w1", 1).await;
    report(&hub, "d", json!({"status": "in_progress"})).await;
    let d = report(
        &hub,
        "d",
        json!({"status": "failed", "error": {"code": "OOM", "message": "out of memory"}}),
    )
    .await;
    assert_eq!(
        (&d["status"], &d["attempt"], &d["error"]["code"]),
        (&json!("queued"), &json!(1), &json!("OOM"))
    );
    wait_assigned(&hub, "d", "w1", 2).await;
    report(&hub, "d", json!({"status": "in_progress", "attempt": 2})).await;
    let d = report(&hub, "d", json!({"status": "failed", "attempt": 2})).await;
    assert_eq!(
        (&d["status"], &d["attempt"], &d["error"]["code"]),
        (&json!("failed"), &json!(2), &json!("TASK_FAILED"))
    );

    // queued → cancelled (nobody does "paint").
    create(&hub, json!({"id": "e", "type": "paint"})).await;
    assert_eq!(task(&hub, "e").await["status"], "queued");
    let (status, e) = cancel(&hub, "e", Some(json!({"reason": "not needed"}))).await;
    assert_eq!(status, StatusCode::OK, "{e}");
    assert_eq!(
        (&e["status"], &e["error"]["code"], &e["error"]["message"]),
        (
            &json!("cancelled"),
            &json!("CANCELLED"),
            &json!("not needed")
        )
    );

    // assigned → cancelled, and in_progress → cancelled.
    create(&hub, json!({"id": "f", "type": "work"})).await;
    wait_assigned(&hub, "f", "w1", 1).await;
    let (status, f) = cancel(&hub, "f", None).await;
    assert_eq!(
        (status, &f["status"]),
        (StatusCode::OK, &json!("cancelled"))
    );
    create(&hub, json!({"id": "g", "type": "work"})).await;
    wait_assigned(&hub, "g", "w1", 1).await;
    report(&hub, "g", json!({"status": "in_progress"})).await;
    let (status, g) = cancel(&hub, "g", None).await;
    assert_eq!(
        (status, &g["status"]),
        (StatusCode::OK, &json!("cancelled"))
    );

    // pending → queued, pending → failed, pending → cancelled.
    for id in ["p1", "p2", "p3"] {
        create(&hub, json!({"id": id, "type": "work"})).await;
    }
    for (id, dep) in [("q1", "p1"), ("q2", "p2"), ("q3", "p3")] {
        let q = create(
            &hub,
            json!({"id": id, "type": "work", "dependencies": [dep]}),
        )
        .await;
        assert_eq!(q["status"], "pending", "{q}");
    }
    let (status, q3) = cancel(&hub, "q3", None).await;
    assert_eq!(
        (status, &q3["status"]),
        (StatusCode::OK, &json!("cancelled"))
    );
    wait_assigned(&hub, "p1", "w1", 1).await;
    complete(&hub, "p1", "w1", 1, json!({})).await;
    wait_assigned(&hub, "q1", "w1", 1).await;
    wait_assigned(&hub, "p2", "w1", 1).await;
    fail(&hub, "p2", "w1", 1, "BROKEN").await;
    let q2 = task(&hub, "q2").await;
    assert_eq!(
        (&q2["status"], &q2["error"]["code"]),
        (&json!("failed"), &json!("DEPENDENCY_NOT_MET"))
    );
}

#[tokio::test]
async fn illegal_transitions_are_refused_with_the_current_status() {
    let hub = TestHub::start().await.expect("hub");
    join(&hub, "w1", "work", &[], 20).await;

    // One task in each status.
    create(&hub, json!({"id": "queued", "type": "paint"})).await;
    create(
        &hub,
        json!({"id": "pending", "type": "work", "dependencies": ["queued"]}),
    )
    .await;
    create(&hub, json!({"id": "completed", "type": "work"})).await;
    wait_assigned(&hub, "completed", "w1", 1).await;
    complete(&hub, "completed", "w1", 1, json!({"ok": true})).await;
    create(&hub, json!({"id": "failed", "type": "work"})).await;
    wait_assigned(&hub, "failed", "w1", 1).await;
    fail(&hub, "failed", "w1", 1, "NOPE").await;
    create(&hub, json!({"id": "cancelled", "type": "paint"})).await;
    assert_eq!(cancel(&hub, "cancelled", None).await.0, StatusCode::OK);
    create(
        &hub,
        json!({"id": "timed_out", "type": "work", "timeout": 0.2,
               "retry_policy": {"max_attempts": 1}}),
    )
    .await;
    wait_task(&hub, "timed_out", "timed out", |t| {
        t["status"] == "timed_out"
    })
    .await;
    create(&hub, json!({"id": "running", "type": "work"})).await;
    wait_assigned(&hub, "running", "w1", 1).await;
    report(&hub, "running", json!({"status": "in_progress"})).await;

    let reports = [
        json!({"status": "in_progress"}),
        json!({"status": "completed"}),
        json!({"status": "failed"}),
        json!({"progress": 10}),
    ];
    let table: &[(&str, &[usize])] = &[
        ("pending", &[0, 1, 2, 3]),
        ("queued", &[0, 1, 2, 3]),
        ("completed", &[0, 2, 3]),
        ("failed", &[0, 1, 3]),
        ("cancelled", &[0, 1, 2, 3]),
        ("timed_out", &[0, 1, 2, 3]),
    ];
    for (id, which) in table {
        let before = task(&hub, id).await;
        for &i in *which {
            let answer = try_report(&hub, id, reports[i].clone()).await;
            let details = refused(&answer, StatusCode::CONFLICT, "INVALID_TRANSITION");
            assert_eq!(details["status"], *id, "{} on {id}: {details}", reports[i]);
            assert_eq!(details["task_id"], *id);
        }
        assert_eq!(
            task(&hub, id).await,
            before,
            "a refused report changed {id}"
        );
    }
    // A final status cannot be cancelled either; a cancelled task can, again.
    for id in ["completed", "failed", "timed_out"] {
        let details = refused(
            &cancel(&hub, id, None).await,
            StatusCode::CONFLICT,
            "INVALID_TRANSITION",
        );
        assert_eq!(details["status"], id);
    }
    let before = task(&hub, "cancelled").await;
    let (status, again) = cancel(&hub, "cancelled", Some(json!({"reason": "again"}))).await;
    assert_eq!((status, &again), (StatusCode::OK, &before));

    // Repeating the report that ended a task (an agent retrying a report
    // whose answer it lost) is answered with the task, unchanged.
    for (id, body) in [
        (
            "completed",
            json!({"status": "completed", "agent_id": "w1", "attempt": 1, "output_data": {"ok": true}}),
        ),
        (
            "failed",
            json!({"status": "failed", "agent_id": "w1", "attempt": 1}),
        ),
    ] {
        let before = task(&hub, id).await;
        assert_eq!(report(&hub, id, body).await, before);
        assert_eq!(task(&hub, id).await, before);
    }
    // ... but not from another agent.
    let answer = try_report(
        &hub,
        "completed",
        json!({"status": "completed", "agent_id": "w2"}),
    )
    .await;
    refused(&answer, StatusCode::CONFLICT, "INVALID_TRANSITION");

    // A report from an agent or attempt that does not hold the task.
    let before = task(&hub, "running").await;
    let answer = try_report(
        &hub,
        "running",
        json!({"status": "completed", "agent_id": "w2"}),
    )
    .await;
    let details = refused(&answer, StatusCode::CONFLICT, "LEASE_LOST");
    assert_eq!(
        (&details["agent_id"], &details["attempt"]),
        (&json!("w1"), &json!(1))
    );
    let answer = try_report(
        &hub,
        "running",
        json!({"status": "completed", "agent_id": "w1", "attempt": 2}),
    )
    .await;
    refused(&answer, StatusCode::CONFLICT, "LEASE_LOST");
    assert_eq!(task(&hub, "running").await, before);

    // Statuses only the hub sets cannot be reported, and unknown tasks are 404.
    for status in ["cancelled", "queued", "timed_out", "done"] {
        let answer = try_report(&hub, "running", json!({"status": status})).await;
        refused(
            &answer,
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_FAILED",
        );
        assert_eq!(fields(&answer.1), ["status"], "{status}");
    }
    let answer = try_report(&hub, "running", json!({"progress": 101})).await;
    assert_eq!(fields(&answer.1), ["progress"]);
    let answer = try_report(&hub, "ghost", json!({"status": "completed"})).await;
    let details = refused(&answer, StatusCode::NOT_FOUND, "TASK_NOT_FOUND");
    assert_eq!(details["task_id"], "ghost");
    refused(
        &cancel(&hub, "ghost", None).await,
        StatusCode::NOT_FOUND,
        "TASK_NOT_FOUND",
    );
    assert_eq!(task(&hub, "running").await, before);
}

#[tokio::test]
async fn the_least_loaded_live_agent_gets_each_task_up_to_its_capacity() {
    let hub = TestHub::start().await.expect("hub");
    join(&hub, "big", "build", &[], 4).await;
    join(&hub, "small", "build", &[], 2).await;
    join(&hub, "drainer", "build", &[], 10).await;
    join(&hub, "painter", "paint", &[], 10).await;
    let (status, v) = call(
        &hub,
        "POST",
        "/api/v1/agents/drainer/heartbeat",
        Some(json!({"status": "draining"})),
    )
    .await;
    assert_eq!((status, &v["status"]), (StatusCode::OK, &json!("draining")));

    let loads = || async {
        let mut m = BTreeMap::new();
        for a in ["big", "small", "drainer", "painter"] {
            m.insert(a, held(&hub, a).await);
        }
        m
    };
    let expect = |big: u64, small: u64| {
        BTreeMap::from([
            ("big", big),
            ("drainer", 0),
            ("painter", 0),
            ("small", small),
        ])
    };
    // Load is counted against capacity: 1 of 4 is less than 1 of 2.
    for i in 1..=2 {
        create(&hub, json!({"id": format!("t{i}"), "type": "build"})).await;
    }
    assert_eq!(loads().await, expect(1, 1), "one each");
    create(&hub, json!({"id": "t3", "type": "build"})).await;
    assert_eq!(loads().await, expect(2, 1));
    for i in 4..=6 {
        create(&hub, json!({"id": format!("t{i}"), "type": "build"})).await;
    }
    assert_eq!(loads().await, expect(4, 2), "both full");
    create(&hub, json!({"id": "t7", "type": "build"})).await;
    let t7 = task(&hub, "t7").await;
    assert_eq!(t7["status"], "queued", "no agent has room: {t7}");
    assert!(t7.get("agent_id").is_none(), "{t7}");
    assert_eq!(loads().await, expect(4, 2));

    // Room on one agent: the waiting task goes there.
    let mine = claim(&hub, "small", 10, 0).await;
    assert_eq!(mine.len(), 2, "{mine:?}");
    let first = mine[0]["id"].as_str().expect("id");
    complete(&hub, first, "small", 1, json!({})).await;
    wait_assigned(&hub, "t7", "small", 1).await;
    assert_eq!(loads().await, expect(4, 2));

    // A draining agent that is active again gets work again.
    let (status, _) = call(
        &hub,
        "POST",
        "/api/v1/agents/drainer/heartbeat",
        Some(json!({"status": "active"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    create(&hub, json!({"id": "t8", "type": "build"})).await;
    wait_assigned(&hub, "t8", "drainer", 1).await;
}

#[tokio::test]
async fn an_agent_whose_claim_waits_gets_a_task_before_a_less_loaded_one() {
    let hub = TestHub::start().await.expect("hub");
    join(&hub, "eager", "build", &[], 4).await;
    join(&hub, "idle", "build", &[], 4).await;
    // `eager` holds one task; `idle` none.
    create(
        &hub,
        json!({"id": "held", "type": "build", "assigned_agent": "eager"}),
    )
    .await;
    assert_eq!(ids(&claim(&hub, "eager", 1, 0).await), ["held"]);

    // While no claim of `eager` waits, work goes to the less loaded `idle`.
    create(&hub, json!({"id": "first", "type": "build"})).await;
    wait_assigned(&hub, "first", "idle", 1).await;
    let (status, _) = cancel(&hub, "first", None).await;
    assert_eq!(status, StatusCode::OK);

    // Once `eager` waits on a claim, the next task goes to it, answered at
    // once, though `idle` holds less. Until the claim is parked, tasks
    // still go to `idle`; each is cancelled so that `idle` stays empty.
    let waiting = spawn_claim(&hub, "eager", 4, 15000);
    let mut n = 0;
    let taken = eventually(WAIT, "a task given to the waiting claim", || {
        n += 1;
        let id = format!("next-{n}");
        let hub = &hub;
        async move {
            create(hub, json!({"id": id, "type": "build"})).await;
            let t = wait_task(hub, &id, "assigned", |t| t["status"] == "assigned").await;
            if t["agent_id"] == "eager" {
                return Some(id);
            }
            assert_eq!(cancel(hub, &id, None).await.0, StatusCode::OK);
            None
        }
    })
    .await
    .expect("the waiting claim gets work");
    let v = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the claim came back")
        .expect("task");
    assert_eq!(ids(v["tasks"].as_array().expect("tasks")), [taken], "{v}");
    assert_eq!(held(&hub, "idle").await, 0);
    assert_eq!(held(&hub, "eager").await, 2);
}

#[tokio::test]
async fn a_task_for_a_named_agent_goes_only_to_that_agent() {
    let hub = TestHub::start().await.expect("hub");
    join(&hub, "idle-coder", "code", &[], 5).await;
    join(&hub, "chosen", "review", &[], 1).await;

    create(
        &hub,
        json!({"id": "mine", "type": "code", "assigned_agent": "chosen"}),
    )
    .await;
    let t = wait_assigned(&hub, "mine", "chosen", 1).await;
    assert_eq!(t["assigned_agent"], "chosen");
    // The chosen agent is full: the next one waits for it, though another
    // agent of the type is idle.
    create(
        &hub,
        json!({"id": "mine-too", "type": "code", "assigned_agent": "chosen"}),
    )
    .await;
    create(&hub, json!({"id": "anyone", "type": "code"})).await;
    wait_assigned(&hub, "anyone", "idle-coder", 1).await;
    let waiting = task(&hub, "mine-too").await;
    assert_eq!(waiting["status"], "queued", "{waiting}");
    assert_eq!(held(&hub, "idle-coder").await, 1);

    complete(&hub, "mine", "chosen", 1, json!({})).await;
    wait_assigned(&hub, "mine-too", "chosen", 1).await;

    let answer = call(
        &hub,
        "POST",
        "/api/v1/tasks",
        Some(json!({"type": "code", "assigned_agent": "ghost"})),
    )
    .await;
    refused(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "VALIDATION_FAILED",
    );
    assert_eq!(fields(&answer.1), ["assigned_agent"]);
}

#[tokio::test]
async fn a_task_goes_only_to_an_agent_with_every_capability_it_needs() {
    let hub = TestHub::start().await.expect("hub");
    join(&hub, "js", "code", &["javascript"], 5).await;
    // Not of the type, but it lists the type among its capabilities.
    join(&hub, "py", "generalist", &["code", "python"], 5).await;
    join(&hub, "other", "generalist", &["python"], 5).await;

    create(
        &hub,
        json!({"id": "needs-py", "type": "code", "capabilities": ["python"]}),
    )
    .await;
    let t = wait_assigned(&hub, "needs-py", "py", 1).await;
    assert_eq!(t["capabilities"], json!(["python"]));
    create(&hub, json!({"id": "plain", "type": "code"})).await;
    wait_assigned(&hub, "plain", "js", 1).await;

    // Nobody has both, or has rust: they wait.
    create(
        &hub,
        json!({"id": "needs-both", "type": "code", "capabilities": ["python", "javascript"]}),
    )
    .await;
    create(
        &hub,
        json!({"id": "needs-rust", "type": "code", "capabilities": ["rust"]}),
    )
    .await;
    for id in ["needs-both", "needs-rust"] {
        let t = task(&hub, id).await;
        assert_eq!(t["status"], "queued", "{t}");
    }
    // A rust coder arrives: its task goes to it, the other still waits.
    register(&hub, "rusty", "code", &["rust"], 1).await;
    wait_assigned(&hub, "needs-rust", "rusty", 1).await;
    assert_eq!(task(&hub, "needs-both").await["status"], "queued");
    assert_eq!(held(&hub, "other").await, 0);
}

#[tokio::test]
async fn a_claim_waits_for_work_and_returns_as_soon_as_some_arrives() {
    let hub = TestHub::start().await.expect("hub");
    join(&hub, "poller", "poll", &[], 3).await;

    // Nothing to do: an empty answer after wait_ms, not before.
    let started = tokio::time::Instant::now();
    assert!(claim(&hub, "poller", 1, 400).await.is_empty());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "{took:?}"
    );

    // A long poll gets a task created while it waits, at once.
    let started = tokio::time::Instant::now();
    let waiting = spawn_claim(&hub, "poller", 2, 15000);
    create(&hub, json!({"id": "arrives", "type": "poll"})).await;
    let v = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the claim came back")
        .expect("task");
    let took = started.elapsed();
    assert_eq!(
        ids(v["tasks"].as_array().expect("tasks")),
        ["arrives"],
        "{v}"
    );
    assert_eq!(v["tasks"][0]["status"], "assigned");
    assert_eq!(v["tasks"][0]["agent_id"], "poller");
    assert!(took < Duration::from_secs(10), "waited {took:?} of 15 s");

    // At most max_tasks, and a task is handed out by one claim only.
    for i in 1..=2 {
        create(&hub, json!({"id": format!("more-{i}"), "type": "poll"})).await;
    }
    wait_assigned(&hub, "more-2", "poller", 1).await;
    assert_eq!(ids(&claim(&hub, "poller", 1, 0).await), ["more-1"]);
    assert_eq!(ids(&claim(&hub, "poller", 5, 0).await), ["more-2"]);
    assert!(claim(&hub, "poller", 5, 0).await.is_empty());

    // Bad claims.
    let bad = |body: Value| {
        let hub = &hub;
        async move { call(hub, "POST", "/api/v1/tasks/claim", Some(body)).await }
    };
    let answer = bad(json!({"agent_id": "nobody"})).await;
    refused(&answer, StatusCode::NOT_FOUND, "AGENT_NOT_FOUND");
    for (body, field) in [
        (json!({"agent_id": "poller", "wait_ms": 20001}), "wait_ms"),
        (json!({"agent_id": "poller", "max_tasks": 0}), "max_tasks"),
        (json!({"agent_id": "poller", "max_tasks": 101}), "max_tasks"),
        (json!({"agent_id": "a b"}), "agent_id"),
        (json!({"agent_id": "poller", "wait": 5}), "wait"),
    ] {
        let answer = bad(body.clone()).await;
        refused(
            &answer,
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_FAILED",
        );
        assert_eq!(fields(&answer.1), [field], "{body}");
    }
}

#[tokio::test]
async fn an_offline_agent_loses_its_tasks_to_a_live_one() {
    let hub = TestHub::start_with(DataDir::temp().expect("tmp"), FAST_REGISTRY)
        .await
        .expect("hub");
    register(&hub, "flaky", "job", &[], 1).await;
    let flaky_beat = beat(&hub, "flaky");
    create(
        &hub,
        json!({"id": "j1", "type": "job", "input_data": {"step": 1},
               "retry_policy": {"initial_delay_ms": 0, "jitter": 0}}),
    )
    .await;
    wait_assigned(&hub, "j1", "flaky", 1).await;
    assert_eq!(ids(&claim(&hub, "flaky", 1, 0).await), ["j1"]);
    report(
        &hub,
        "j1",
        json!({"status": "in_progress", "agent_id": "flaky"}),
    )
    .await;

    register(&hub, "steady", "job", &[], 2).await;
    let _steady_beat = beat(&hub, "steady");
    assert!(claim(&hub, "steady", 1, 0).await.is_empty());

    // flaky stops heartbeating: once offline, its task goes to steady as
    // the next attempt.
    drop(flaky_beat);
    let j1 = wait_assigned(&hub, "j1", "steady", 2).await;
    assert_eq!(j1["error"]["code"], "AGENT_OFFLINE", "{j1}");
    assert_eq!(j1["input_data"], json!({"step": 1}));
    let flaky = hub.get_json("/api/v1/agents/flaky").await;
    assert_eq!(flaky["status"], "offline");
    let answer = call(
        &hub,
        "POST",
        "/api/v1/tasks/claim",
        Some(json!({"agent_id": "flaky"})),
    )
    .await;
    let details = refused(
        &answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "AGENT_UNAVAILABLE",
    );
    assert_eq!(details["status"], "offline");
    let retried = events(&hub, "task.job.retrying").await;
    assert_eq!(retried.len(), 1, "{retried:?}");
    assert_eq!(retried[0]["data"]["error"]["code"], "AGENT_OFFLINE");
    assert_eq!(retried[0]["data"]["agent_id"], "flaky");

    // Its late report is refused; an offline agent gets no new work.
    let answer = try_report(
        &hub,
        "j1",
        json!({"status": "completed", "agent_id": "flaky", "attempt": 1}),
    )
    .await;
    refused(&answer, StatusCode::CONFLICT, "LEASE_LOST");
    create(&hub, json!({"id": "j2", "type": "job"})).await;
    wait_assigned(&hub, "j2", "steady", 1).await;
    create(&hub, json!({"id": "j3", "type": "job"})).await;
    assert_eq!(task(&hub, "j3").await["status"], "queued");

    // Back online, it gets work again.
    let _flaky_beat = beat(&hub, "flaky");
    wait_assigned(&hub, "j3", "flaky", 1).await;
    complete(&hub, "j1", "steady", 2, json!({"done": true})).await;
}

#[tokio::test]
async fn a_removed_agent_s_tasks_go_to_another_agent() {
    let hub = TestHub::start().await.expect("hub");
    join(&hub, "leaver", "job", &[], 2).await;
    create(
        &hub,
        json!({"id": "started", "type": "job",
               "retry_policy": {"initial_delay_ms": 0, "jitter": 0}}),
    )
    .await;
    assert_eq!(ids(&claim(&hub, "leaver", 1, 5000).await), ["started"]);
    report(&hub, "started", json!({"status": "in_progress"})).await;
    create(&hub, json!({"id": "unstarted", "type": "job"})).await;
    wait_assigned(&hub, "unstarted", "leaver", 1).await;
    join(&hub, "stayer", "job", &[], 2).await;

    let (status, _) = call(&hub, "DELETE", "/api/v1/agents/leaver", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // Begun: a new attempt. Not begun: the same attempt, given again.
    let t = wait_assigned(&hub, "started", "stayer", 2).await;
    assert_eq!(t["error"]["code"], "AGENT_REMOVED", "{t}");
    let t = wait_assigned(&hub, "unstarted", "stayer", 1).await;
    assert_eq!(t["error"]["code"], "AGENT_REMOVED", "{t}");
    assert_eq!(
        ids(&claim(&hub, "stayer", 5, 0).await),
        ["started", "unstarted"]
    );
    let answer = call(
        &hub,
        "POST",
        "/api/v1/tasks/claim",
        Some(json!({"agent_id": "leaver"})),
    )
    .await;
    refused(&answer, StatusCode::NOT_FOUND, "AGENT_NOT_FOUND");
}

#[tokio::test]
async fn an_unstarted_assignment_whose_lease_runs_out_moves_without_using_an_attempt() {
    let hub = TestHub::start_with(
        DataDir::temp().expect("tmp"),
        "[tasks]\nlease = \"300ms\"\n",
    )
    .await
    .expect("hub");
    // sleepy never claims, reports or heartbeats.
    join(&hub, "sleepy", "nap", &[], 1).await;
    create(
        &hub,
        json!({"id": "n1", "type": "nap", "retry_policy": {"max_attempts": 1}}),
    )
    .await;
    wait_assigned(&hub, "n1", "sleepy", 1).await;

    join(&hub, "awake", "nap", &[], 1).await;
    let _awake_beat = beat(&hub, "awake");
    let n1 = wait_assigned(&hub, "n1", "awake", 1).await;
    assert_eq!(n1["error"]["code"], "LEASE_EXPIRED", "{n1}");
    let retried = events(&hub, "task.nap.retrying").await;
    assert!(!retried.is_empty());
    assert!(
        retried
            .iter()
            .all(|e| e["data"]["error"]["code"] == "LEASE_EXPIRED" && e["data"]["attempt"] == 0),
        "a lost unstarted assignment is not an attempt: {retried:?}"
    );

    // awake takes it and keeps its lease by heartbeating, well past the
    // lease; max_attempts 1 means a lost lease would fail the task.
    assert_eq!(ids(&claim(&hub, "awake", 1, 5000).await), ["n1"]);
    report(
        &hub,
        "n1",
        json!({"status": "in_progress", "agent_id": "awake", "attempt": 1}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let n1 = task(&hub, "n1").await;
    assert_eq!(
        (&n1["status"], &n1["agent_id"], &n1["attempt"]),
        (&json!("in_progress"), &json!("awake"), &json!(1)),
        "{n1}"
    );
    // The lease shown is the one kept, not the one the last report set
    // (within one lease, for the time the hub takes to write it).
    let now = chrono::Utc::now().timestamp_millis();
    assert!(
        ms(&n1["lease_expires_at"]) > now - 300,
        "lease shown as run out at {} (now {now})",
        n1["lease_expires_at"]
    );
    let answer = try_report(
        &hub,
        "n1",
        json!({"status": "completed", "agent_id": "sleepy"}),
    )
    .await;
    refused(&answer, StatusCode::CONFLICT, "LEASE_LOST");
    let n1 = complete(&hub, "n1", "awake", 1, json!({"slept": false})).await;
    assert_eq!(n1["status"], "completed");
}

#[tokio::test]
async fn a_claimed_task_whose_holder_goes_silent_is_retried_as_a_new_attempt() {
    let hub = TestHub::start_with(
        DataDir::temp().expect("tmp"),
        "[tasks]\nlease = \"300ms\"\n",
    )
    .await
    .expect("hub");
    join(&hub, "ghosting", "job", &[], 1).await;
    create(
        &hub,
        json!({"id": "g1", "type": "job",
               "retry_policy": {"max_attempts": 2, "initial_delay_ms": 0, "jitter": 0}}),
    )
    .await;
    wait_assigned(&hub, "g1", "ghosting", 1).await;
    assert_eq!(ids(&claim(&hub, "ghosting", 1, 0).await), ["g1"]);
    // Claimed, then silence: the attempt counts, and the next one is given.
    let g1 = wait_assigned(&hub, "g1", "ghosting", 2).await;
    assert_eq!(g1["error"]["code"], "LEASE_EXPIRED", "{g1}");
    assert_eq!(ids(&claim(&hub, "ghosting", 1, 0).await), ["g1"]);
    let g1 = wait_task(&hub, "g1", "failed", |t| t["status"] == "failed").await;
    assert_eq!(
        (&g1["attempt"], &g1["error"]["code"]),
        (&json!(2), &json!("LEASE_EXPIRED"))
    );
}

#[tokio::test]
async fn failed_attempts_are_retried_with_backoff_until_max_attempts() {
    let hub = TestHub::start().await.expect("hub");
    join(&hub, "retrier", "flaky_job", &[], 1).await;
    create(
        &hub,
        json!({"id": "r1", "type": "flaky_job",
               "retry_policy": {"max_attempts": 3, "backoff_strategy": "exponential",
                                "initial_delay_ms": 200, "max_delay_ms": 5000, "jitter": 0}}),
    )
    .await;
    let mut retry_at: Option<i64> = None;
    for attempt in 1..=3u64 {
        let t = wait_assigned(&hub, "r1", "retrier", attempt).await;
        if let Some(at) = retry_at {
            assert!(
                ms(&t["assigned_at"]) >= at,
                "attempt {attempt} assigned before its retry time: {t}"
            );
        }
        assert!(t.get("retry_at").is_none(), "{t}");
        if attempt == 2 {
            // The first attempt's holder reports late: refused.
            let answer = try_report(
                &hub,
                "r1",
                json!({"status": "completed", "agent_id": "retrier", "attempt": 1}),
            )
            .await;
            let details = refused(&answer, StatusCode::CONFLICT, "LEASE_LOST");
            assert_eq!(details["attempt"], 2);
        }
        report(
            &hub,
            "r1",
            json!({"status": "in_progress", "attempt": attempt}),
        )
        .await;
        let t = report(
            &hub,
            "r1",
            json!({"status": "failed", "attempt": attempt,
                   "error": {"code": "FLAKY", "message": format!("try {attempt}")}}),
        )
        .await;
        assert_eq!(t["attempt"], attempt);
        assert_eq!(t["error"]["message"], format!("try {attempt}"));
        if attempt < 3 {
            assert_eq!(t["status"], "queued", "{t}");
            let delay = ms(&t["retry_at"]) - ms(&t["updated_at"]);
            assert_eq!(delay, 200 << (attempt - 1), "exponential: {t}");
            retry_at = Some(ms(&t["retry_at"]));
        } else {
            assert_eq!(t["status"], "failed", "{t}");
            assert!(
                t.get("retry_at").is_none() && t["completed_at"].is_string(),
                "{t}"
            );
        }
    }
    let kinds: Vec<String> = events(&hub, "task.flaky_job.>")
        .await
        .iter()
        .map(|e| e["type"].as_str().expect("type").to_owned())
        .filter(|t| t != "task.started")
        .collect();
    assert_eq!(
        kinds,
        [
            "task.created",
            "task.assigned",
            "task.retrying",
            "task.assigned",
            "task.retrying",
            "task.assigned",
            "task.failed"
        ]
    );

    // retry: false ends the task now, attempts left or not.
    create(
        &hub,
        json!({"id": "r2", "type": "flaky_job", "retry_policy": {"max_attempts": 5}}),
    )
    .await;
    wait_assigned(&hub, "r2", "retrier", 1).await;
    let t = fail(&hub, "r2", "retrier", 1, "UNRECOVERABLE").await;
    assert_eq!(
        (&t["status"], &t["attempt"], &t["error"]["code"]),
        (&json!("failed"), &json!(1), &json!("UNRECOVERABLE"))
    );
    let answer = try_report(&hub, "r2", json!({"progress": 5, "retry": false})).await;
    refused(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "VALIDATION_FAILED",
    );
    assert_eq!(fields(&answer.1), ["retry"]);
}

#[tokio::test]
async fn an_attempt_past_its_timeout_is_retried_then_the_task_times_out() {
    let hub = TestHub::start().await.expect("hub");
    join(&hub, "slowpoke", "slow_job", &[], 1).await;
    let t = create(
        &hub,
        json!({"id": "s1", "type": "slow_job", "timeout": 0.3,
               "retry_policy": {"max_attempts": 2, "initial_delay_ms": 0, "jitter": 0}}),
    )
    .await;
    assert_eq!(t["timeout"], 0.3);
    let t = wait_assigned(&hub, "s1", "slowpoke", 1).await;
    assert_eq!(ms(&t["deadline_at"]) - ms(&t["assigned_at"]), 300);
    report(&hub, "s1", json!({"status": "in_progress", "attempt": 1})).await;

    let t = wait_assigned(&hub, "s1", "slowpoke", 2).await;
    assert_eq!(t["error"]["code"], "TASK_TIMEOUT", "{t}");
    let assigned = ms(&t["assigned_at"]);
    report(&hub, "s1", json!({"status": "in_progress", "attempt": 2})).await;
    let t = wait_task(&hub, "s1", "timed out", |t| t["status"] == "timed_out").await;
    assert_eq!(
        (&t["attempt"], &t["error"]["code"]),
        (&json!(2), &json!("TASK_TIMEOUT"))
    );
    assert!(ms(&t["completed_at"]) - assigned >= 300, "{t}");
    let answer = try_report(
        &hub,
        "s1",
        json!({"status": "completed", "agent_id": "slowpoke", "attempt": 2}),
    )
    .await;
    let details = refused(&answer, StatusCode::CONFLICT, "INVALID_TRANSITION");
    assert_eq!(details["status"], "timed_out");
    let timed_out = events(&hub, "task.slow_job.timed_out").await;
    assert_eq!(timed_out.len(), 1);
    assert_eq!(timed_out[0]["data"]["task_id"], "s1");

    // Done in time: not timed out.
    create(&hub, json!({"id": "s2", "type": "slow_job", "timeout": 30})).await;
    wait_assigned(&hub, "s2", "slowpoke", 1).await;
    assert_eq!(
        complete(&hub, "s2", "slowpoke", 1, json!({})).await["status"],
        "completed"
    );
}

#[tokio::test]
async fn dependencies_hold_a_task_until_they_complete_and_fail_it_when_they_fail() {
    let hub = TestHub::start().await.expect("hub");
    join(&hub, "stepper", "step", &[], 10).await;

    // Success: b waits for both of its dependencies.
    create(&hub, json!({"id": "a1", "type": "step"})).await;
    create(&hub, json!({"id": "a2", "type": "step"})).await;
    let b = create(
        &hub,
        json!({"id": "b", "type": "step", "dependencies": ["a1", "a2"]}),
    )
    .await;
    assert_eq!(b["status"], "pending");
    assert_eq!(b["dependencies"], json!(["a1", "a2"]));
    wait_assigned(&hub, "a1", "stepper", 1).await;
    complete(&hub, "a1", "stepper", 1, json!({})).await;
    assert_eq!(task(&hub, "b").await["status"], "pending", "a2 is not done");
    wait_assigned(&hub, "a2", "stepper", 1).await;
    complete(&hub, "a2", "stepper", 1, json!({})).await;
    wait_assigned(&hub, "b", "stepper", 1).await;
    // A dependency that already completed holds nothing up.
    create(
        &hub,
        json!({"id": "after-a1", "type": "step", "dependencies": ["a1"]}),
    )
    .await;
    wait_assigned(&hub, "after-a1", "stepper", 1).await;

    // Failure runs down the chain: c ← d ← e; f runs however c ends.
    create(&hub, json!({"id": "c", "type": "step"})).await;
    create(
        &hub,
        json!({"id": "d", "type": "step", "dependencies": ["c"]}),
    )
    .await;
    create(
        &hub,
        json!({"id": "e", "type": "step", "dependencies": ["d"]}),
    )
    .await;
    create(
        &hub,
        json!({"id": "f", "type": "step", "dependencies": ["c"], "dependency_failure": "run"}),
    )
    .await;
    wait_assigned(&hub, "c", "stepper", 1).await;
    fail(&hub, "c", "stepper", 1, "BROKE").await;
    for (id, dep) in [("d", "c"), ("e", "d")] {
        let t = task(&hub, id).await;
        assert_eq!(
            (&t["status"], &t["error"]["code"]),
            (&json!("failed"), &json!("DEPENDENCY_NOT_MET")),
            "{t}"
        );
        let message = t["error"]["message"].as_str().expect("message");
        assert!(message.contains(dep), "{message}");
    }
    wait_assigned(&hub, "f", "stepper", 1).await;
    let failed = events(&hub, "task.step.failed").await;
    let failed: Vec<&str> = failed
        .iter()
        .map(|e| e["data"]["task_id"].as_str().expect("task_id"))
        .collect();
    assert_eq!(failed, ["c", "d", "e"]);

    // Creating a task on a failed dependency, or an unknown one.
    let answer = call(
        &hub,
        "POST",
        "/api/v1/tasks",
        Some(json!({"id": "g", "type": "step", "dependencies": ["a1", "c"]})),
    )
    .await;
    let details = refused(
        &answer,
        StatusCode::PRECONDITION_FAILED,
        "DEPENDENCY_NOT_MET",
    );
    assert_eq!(
        (&details["dependency"], &details["status"]),
        (&json!("c"), &json!("failed"))
    );
    let answer = call(
        &hub,
        "POST",
        "/api/v1/tasks",
        Some(json!({"id": "g", "type": "step", "dependencies": ["a1", "nowhere"]})),
    )
    .await;
    refused(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "VALIDATION_FAILED",
    );
    assert_eq!(fields(&answer.1), ["dependencies[1]"]);
    let answer = call(
        &hub,
        "POST",
        "/api/v1/tasks",
        Some(json!({"id": "g", "type": "step", "dependencies": ["g"]})),
    )
    .await;
    assert_eq!(fields(&answer.1), ["dependencies[0]"]);
    assert_eq!(
        call(&hub, "GET", "/api/v1/tasks/g", None).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn higher_priority_tasks_of_a_type_go_first() {
    let hub = TestHub::start().await.expect("hub");
    for (id, priority) in [
        ("low-1", Some("low")),
        ("normal", None),
        ("high", Some("high")),
        ("critical", Some("critical")),
        ("low-2", Some("low")),
    ] {
        let mut body = json!({"id": id, "type": "prio"});
        if let Some(p) = priority {
            body["priority"] = json!(p);
        }
        let t = create(&hub, body).await;
        assert_eq!(t["priority"], priority.unwrap_or("normal"));
    }
    // One agent, one task at a time.
    register(&hub, "solo", "prio", &[], 1).await;
    let mut order = Vec::new();
    for _ in 0..5 {
        let got = claim(&hub, "solo", 5, 5000).await;
        assert_eq!(got.len(), 1, "{got:?}");
        let id = got[0]["id"].as_str().expect("id").to_owned();
        complete(&hub, &id, "solo", 1, json!({})).await;
        order.push(id);
    }
    assert_eq!(order, ["critical", "high", "normal", "low-1", "low-2"]);
}

#[tokio::test]
async fn cancelling_frees_the_agent_and_tells_it() {
    let hub = TestHub::start().await.expect("hub");
    join(&hub, "only", "job", &[], 1).await;
    create(&hub, json!({"id": "first", "type": "job"})).await;
    create(&hub, json!({"id": "second", "type": "job"})).await;
    wait_assigned(&hub, "first", "only", 1).await;
    assert_eq!(task(&hub, "second").await["status"], "queued");
    report(&hub, "first", json!({"status": "in_progress"})).await;

    let (status, t) = cancel(&hub, "first", Some(json!({"reason": "changed my mind"}))).await;
    assert_eq!(status, StatusCode::OK, "{t}");
    assert_eq!(
        (&t["status"], &t["error"]["code"], &t["error"]["message"]),
        (
            &json!("cancelled"),
            &json!("CANCELLED"),
            &json!("changed my mind")
        )
    );
    assert!(t["completed_at"].is_string());
    // The holder is told, and its room goes to the next task.
    let told = events(&hub, "task.job.cancelled").await;
    assert_eq!(told.len(), 1);
    assert_eq!(told[0]["targetagent"], "only");
    assert_eq!(told[0]["data"]["task_id"], "first");
    wait_assigned(&hub, "second", "only", 1).await;
    let answer = try_report(
        &hub,
        "first",
        json!({"status": "completed", "agent_id": "only"}),
    )
    .await;
    let details = refused(&answer, StatusCode::CONFLICT, "INVALID_TRANSITION");
    assert_eq!(details["status"], "cancelled");

    // Again: unchanged. Once ended otherwise: 409.
    let (status, again) = cancel(&hub, "first", None).await;
    assert_eq!((status, &again), (StatusCode::OK, &t));
    complete(&hub, "second", "only", 1, json!({})).await;
    let details = refused(
        &cancel(&hub, "second", None).await,
        StatusCode::CONFLICT,
        "INVALID_TRANSITION",
    );
    assert_eq!(details["status"], "completed");
    let answer = cancel(&hub, "second", Some(json!({"reason": "x".repeat(1025)}))).await;
    refused(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "VALIDATION_FAILED",
    );
    assert_eq!(fields(&answer.1), ["reason"]);
}

#[tokio::test]
async fn a_repeated_create_answers_the_first_task_and_a_changed_one_conflicts() {
    let hub = TestHub::start().await.expect("hub");
    let body = json!({"id": "idem-1", "type": "report", "priority": "high",
                      "input_data": {"month": "2025-01"}});

    // By id.
    let resp = hub
        .http
        .post(hub.url("/api/v1/tasks"))
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(
        resp.headers()["location"].to_str().expect("ascii"),
        "/api/v1/tasks/idem-1"
    );
    let first: Value = resp.json().await.expect("json");
    let (status, again) = call(&hub, "POST", "/api/v1/tasks", Some(body.clone())).await;
    assert_eq!(
        (status, &again["created_at"]),
        (StatusCode::OK, &first["created_at"])
    );
    let mut changed = body.clone();
    changed["input_data"]["month"] = json!("2025-02");
    let answer = call(&hub, "POST", "/api/v1/tasks", Some(changed)).await;
    let details = refused(&answer, StatusCode::CONFLICT, "TASK_EXISTS");
    assert_eq!(details["id"], "idem-1");

    // By key in the body: the id is the hub's.
    let keyed = json!({"type": "report", "idempotency_key": "k-1", "input_data": {"n": 1}});
    let first_keyed = create(&hub, keyed.clone()).await;
    let generated = first_keyed["id"].as_str().expect("id");
    assert!(!generated.is_empty());
    let (status, again) = call(&hub, "POST", "/api/v1/tasks", Some(keyed.clone())).await;
    assert_eq!((status, &again["id"]), (StatusCode::OK, &json!(generated)));
    let answer = call(
        &hub,
        "POST",
        "/api/v1/tasks",
        Some(json!({"type": "report", "idempotency_key": "k-1", "input_data": {"n": 2}})),
    )
    .await;
    let details = refused(&answer, StatusCode::CONFLICT, "IDEMPOTENCY_CONFLICT");
    assert_eq!(details["id"], generated);

    // By header.
    let by_header = |input: Value| {
        let hub = &hub;
        async move {
            let resp = hub
                .http
                .post(hub.url("/api/v1/tasks"))
                .header("Idempotency-Key", "hdr-1")
                .json(&json!({"type": "report", "input_data": input}))
                .send()
                .await
                .expect("send");
            let status = resp.status();
            (status, resp.json::<Value>().await.expect("json"))
        }
    };
    let (status, h1) = by_header(json!({"x": 1})).await;
    assert_eq!(status, StatusCode::CREATED, "{h1}");
    assert_eq!(h1["idempotency_key"], "hdr-1");
    let (status, h2) = by_header(json!({"x": 1})).await;
    assert_eq!((status, &h2["id"]), (StatusCode::OK, &h1["id"]));
    let answer = by_header(json!({"x": 2})).await;
    refused(&answer, StatusCode::CONFLICT, "IDEMPOTENCY_CONFLICT");

    // A burst of retries of one create at the same time: one task.
    let burst: Vec<_> = (0..6)
        .map(|_| {
            let http = hub.http.clone();
            let url = hub.url("/api/v1/tasks");
            tokio::spawn(async move {
                let resp = http
                    .post(url)
                    .header("Idempotency-Key", "burst-1")
                    .json(&json!({"type": "report", "input_data": {"burst": true}}))
                    .send()
                    .await
                    .expect("send");
                let status = resp.status();
                let v: Value = resp.json().await.expect("json");
                (status, v["id"].as_str().expect("id").to_owned())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for b in burst {
        answers.push(b.await.expect("task"));
    }
    let created = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1, "{answers:?}");
    assert!(
        answers.iter().all(
            |(s, id)| matches!(*s, StatusCode::CREATED | StatusCode::OK) && *id == answers[0].1
        ),
        "{answers:?}"
    );

    // Still so once the tasks have ended.
    for id in ["idem-1", generated, h1["id"].as_str().expect("id")] {
        assert_eq!(cancel(&hub, id, None).await.0, StatusCode::OK);
    }
    let (status, again) = call(&hub, "POST", "/api/v1/tasks", Some(body)).await;
    assert_eq!(
        (status, &again["status"]),
        (StatusCode::OK, &json!("cancelled"))
    );
    let (status, again) = call(&hub, "POST", "/api/v1/tasks", Some(keyed)).await;
    assert_eq!((status, &again["id"]), (StatusCode::OK, &json!(generated)));
    let (status, _) = by_header(json!({"x": 1})).await;
    assert_eq!(status, StatusCode::OK);

    assert_eq!(list(&hub, "").await["total"], 4, "one task per request");
}

#[tokio::test]
async fn tasks_are_listed_with_filters_and_cursor_paging() {
    let hub = TestHub::start().await.expect("hub");
    join(&hub, "lister", "alpha", &[], 2).await;
    for i in 1..=3 {
        create(&hub, json!({"id": format!("alpha-{i}"), "type": "alpha"})).await;
    }
    for i in 1..=4 {
        create(&hub, json!({"id": format!("beta-{i}"), "type": "beta"})).await;
    }
    assert_eq!(cancel(&hub, "beta-2", None).await.0, StatusCode::OK);

    let page_ids = |v: &Value| ids(v["tasks"].as_array().expect("tasks"));
    for (query, want) in [
        ("type=beta", vec!["beta-1", "beta-2", "beta-3", "beta-4"]),
        (
            "status=queued",
            vec!["alpha-3", "beta-1", "beta-3", "beta-4"],
        ),
        (
            "status=assigned,cancelled",
            vec!["alpha-1", "alpha-2", "beta-2"],
        ),
        (
            "status=assigned&status=cancelled",
            vec!["alpha-1", "alpha-2", "beta-2"],
        ),
        ("agent_id=lister", vec!["alpha-1", "alpha-2"]),
        ("type=alpha&status=queued", vec!["alpha-3"]),
        ("type=gamma", vec![]),
    ] {
        let v = list(&hub, query).await;
        assert_eq!(page_ids(&v), want, "{query}");
        assert_eq!(v["total"], want.len(), "{query}");
        assert!(v.get("next_cursor").is_none(), "{query}: {v}");
    }

    // Pages of 3, in creation order, each with the total.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &cursor {
            Some(c) => format!("limit=3&cursor={c}"),
            None => "limit=3".to_owned(),
        };
        let v = list(&hub, &query).await;
        assert_eq!(v["total"], 7);
        seen.extend(page_ids(&v));
        pages += 1;
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        [
            "alpha-1", "alpha-2", "alpha-3", "beta-1", "beta-2", "beta-3", "beta-4"
        ]
    );

    for (query, field) in [
        ("status=done", "status"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("cursor=x", "cursor"),
        ("colour=red", "colour"),
    ] {
        let answer = call(&hub, "GET", &format!("/api/v1/tasks?{query}"), None).await;
        refused(&answer, StatusCode::BAD_REQUEST, "INVALID_QUERY");
        assert_eq!(fields(&answer.1), [field], "{query}");
    }
}

#[tokio::test]
async fn bad_input_names_the_field_and_creates_nothing() {
    let hub = TestHub::start().await.expect("hub");
    let table = [
        (json!({"type": "x", "priority": "urgent"}), "priority"),
        (
            json!({"type": "x", "retry_policy": {"max_attempts": 0}}),
            "retry_policy.max_attempts",
        ),
        (
            json!({"type": "x", "retry_policy": {"max_attempts": 101}}),
            "retry_policy.max_attempts",
        ),
        (
            json!({"type": "x", "retry_policy": {"jitter": 1.5}}),
            "retry_policy.jitter",
        ),
        (
            json!({"type": "x", "retry_policy": {"initial_delay_ms": 5000, "max_delay_ms": 100}}),
            "retry_policy.max_delay_ms",
        ),
        (
            json!({"type": "x", "retry_policy": {"backoff_strategy": "random"}}),
            "retry_policy.backoff_strategy",
        ),
        (
            json!({"type": "x", "retry_policy": {"tries": 3}}),
            "retry_policy.tries",
        ),
        (json!({"type": "x", "timeout": -1}), "timeout"),
        (json!({"type": "x", "timeout": 0}), "timeout"),
        (json!({"type": "x", "timeout": 604_801}), "timeout"),
        (json!({"id": "a:b", "type": "x"}), "id"),
        (json!({"id": "a b", "type": "x"}), "id"),
        (json!({"type": "x", "colour": "red"}), "colour"),
        (json!({"type": ""}), "type"),
        (json!({"priority": "high"}), "type"),
        (json!({"type": "x", "input_data": [1, 2]}), "input_data"),
        (
            json!({"type": "x", "capabilities": ["a b"]}),
            "capabilities[0]",
        ),
        (
            json!({"type": "x", "dependencies": ["d", "d"]}),
            "dependencies[1]",
        ),
        (
            json!({"type": "x", "dependency_failure": "ignore"}),
            "dependency_failure",
        ),
        (
            json!({"type": "x", "idempotency_key": ""}),
            "idempotency_key",
        ),
        (
            json!({"type": "x", "parent_workflow_id": "w/1"}),
            "parent_workflow_id",
        ),
    ];
    for (body, field) in table {
        let answer = call(&hub, "POST", "/api/v1/tasks", Some(body.clone())).await;
        refused(
            &answer,
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_FAILED",
        );
        assert_eq!(fields(&answer.1), [field], "{body}");
    }
    // Not JSON, or not an object.
    for raw in ["{\"type\": ", "[1]", ""] {
        let resp = hub
            .http
            .post(hub.url("/api/v1/tasks"))
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .expect("send");
        assert!(
            matches!(
                resp.status(),
                StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY
            ),
            "{raw:?}: {}",
            resp.status()
        );
    }
    let page = list(&hub, "").await;
    assert_eq!(page["total"], 0, "{page}");
    assert!(events(&hub, "task.>").await.is_empty());
}

#[tokio::test]
async fn each_step_of_a_task_is_an_event_on_the_bus() {
    let hub = TestHub::start().await.expect("hub");
    join(&hub, "reporter", "report.gen", &[], 1).await;
    create(
        &hub,
        json!({"id": "ev-1", "type": "report.gen", "priority": "high", "input_data": {"q": 4}}),
    )
    .await;
    wait_assigned(&hub, "ev-1", "reporter", 1).await;
    report(&hub, "ev-1", json!({"status": "in_progress"})).await;
    report(
        &hub,
        "ev-1",
        json!({"progress": 50, "output_data": {"pages": 2}}),
    )
    .await;
    complete(&hub, "ev-1", "reporter", 1, json!({"pages": 4})).await;

    let all = events(&hub, "task.>").await;
    let seen: Vec<(&str, &str)> = all
        .iter()
        .map(|e| {
            (
                e["topic"].as_str().expect("topic"),
                e["type"].as_str().expect("type"),
            )
        })
        .collect();
    // The type's '.' becomes '_' so that it stays one topic token.
    assert_eq!(
        seen,
        [
            ("task.report_gen.created", "task.created"),
            ("task.report_gen.assigned", "task.assigned"),
            ("task.report_gen.started", "task.started"),
            ("task.report_gen.progress", "task.progress"),
            ("task.report_gen.completed", "task.completed"),
        ]
    );
    for e in &all {
        assert_eq!(e["data"]["task_id"], "ev-1", "{e}");
        assert_eq!(e["data"]["priority"], "high", "{e}");
    }
    let assigned = &all[1];
    assert_eq!(assigned["targetagent"], "reporter");
    assert_eq!(assigned["data"]["agent_id"], "reporter");
    assert_eq!(assigned["data"]["input_data"], json!({"q": 4}));
    assert_eq!(assigned["data"]["attempt"], 1);
    assert_eq!(all[3]["data"]["progress"], 50);
    assert_eq!(all[4]["data"]["output_data"], json!({"pages": 4}));
    assert_eq!(all[4]["data"]["status"], "completed");
    let completed = events(&hub, "task.*.completed").await;
    assert_eq!(completed.len(), 1);
}

#[tokio::test]
async fn metrics_count_tasks_by_status() {
    let hub = TestHub::start().await.expect("hub");
    let system = || async { hub.get_json("/api/v1/metrics").await["system_metrics"].clone() };
    let m = system().await;
    assert_eq!(
        (&m["pending_tasks"], &m["running_tasks"]),
        (&json!(0), &json!(0))
    );

    create(&hub, json!({"id": "m1", "type": "count"})).await;
    create(&hub, json!({"id": "m2", "type": "count"})).await;
    create(
        &hub,
        json!({"id": "m3", "type": "count", "dependencies": ["m1"]}),
    )
    .await;
    let m = system().await;
    assert_eq!(m["pending_tasks"], 3, "{m}");
    assert_eq!(m["tasks_by_status"]["queued"], 2, "{m}");
    assert_eq!(m["tasks_by_status"]["pending"], 1, "{m}");

    register(&hub, "counter", "count", &[], 1).await;
    wait_task(&hub, "m1", "assigned", |t| t["status"] == "assigned").await;
    let m = system().await;
    assert_eq!(
        (&m["pending_tasks"], &m["running_tasks"]),
        (&json!(2), &json!(1)),
        "{m}"
    );
    complete(&hub, "m1", "counter", 1, json!({})).await;
    wait_assigned(&hub, "m2", "counter", 1).await;
    let m = system().await;
    assert_eq!(
        (
            &m["pending_tasks"],
            &m["running_tasks"],
            &m["tasks_by_status"]["completed"]
        ),
        (&json!(1), &json!(1), &json!(1)),
        "{m}"
    );
}
