//! Workflows over real HTTP: stages run as tasks by real (test) agents,
//! outputs flowing downstream, parallel and sequential runs, each failure
//! strategy, cancel, refused graphs, idempotent creates and a restart in
//! the middle of a run.

use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard_test::{TestHub, eventually};

use crate::tasks::{
    WAIT, call, claim, complete, events, fail, fields, ids, join, list, refused, report, task,
    try_report, wait_assigned,
};

/// Creates a workflow; it must be new (201).
async fn create_wf(hub: &TestHub, body: Value) -> Value {
    let (status, v) = call(hub, "POST", "/api/v1/workflows", Some(body.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "create {body}: {v}");
    v
}

async fn workflow(hub: &TestHub, id: &str) -> Value {
    let (status, v) = call(hub, "GET", &format!("/api/v1/workflows/{id}"), None).await;
    assert_eq!(status, StatusCode::OK, "GET workflow {id}: {v}");
    v
}

/// Each stage's status, in the order given.
fn statuses(w: &Value) -> Vec<String> {
    w["stages"]
        .as_array()
        .unwrap_or_else(|| panic!("no stages in {w}"))
        .iter()
        .map(|s| s["status"].as_str().expect("status").to_owned())
        .collect()
}

/// Waits until workflow `id` is in `status`; it then.
async fn wait_status(hub: &TestHub, id: &str, status: &str) -> Value {
    let found = eventually(WAIT, &format!("workflow {id} {status}"), || async move {
        let w = workflow(hub, id).await;
        (w["status"] == status).then_some(w)
    })
    .await;
    match found {
        Ok(w) => w,
        Err(e) => panic!("{e:#}; it is {}", workflow(hub, id).await),
    }
}

/// A stage run by agents of type `unit`.
fn unit(name: &str, deps: &[&str]) -> Value {
    json!({"name": name, "agent_type": "unit", "dependencies": deps})
}

/// A stage run by `unit` agents and undone by `undo` agents.
fn undoable(name: &str, deps: &[&str]) -> Value {
    json!({"name": name, "agent_type": "unit", "dependencies": deps,
           "compensation": {"agent_type": "undo", "input": {"drop": name}}})
}

/// `agent` is given stage task `id` and completes it with `output`.
async fn run(hub: &TestHub, id: &str, agent: &str, output: Value) -> Value {
    wait_assigned(hub, id, agent, 1).await;
    complete(hub, id, agent, 1, output).await
}

/// The types of the events on `workflow.>` about workflow `id`.
async fn workflow_events(hub: &TestHub, id: &str) -> Vec<String> {
    events(hub, "workflow.>")
        .await
        .iter()
        .filter(|e| e["data"]["workflow_id"] == id)
        .map(|e| {
            assert_eq!(e["correlationid"], id, "{e}");
            e["type"].as_str().expect("type").to_owned()
        })
        .collect()
}

fn seed() -> Value {
    json!({
        "id": "workflow-123",
        "project_id": "proj-456",
        "name": "Full Stack App Generation",
        "stages": [
            {"name": "requirement_analysis", "agent_type": "requirement_analysis",
             "dependencies": [], "timeout": 120},
            {"name": "architecture_planning", "agent_type": "architecture_planning",
             "dependencies": ["requirement_analysis"], "timeout": 180},
            {"name": "code_generation", "agent_type": "code_generation",
             "dependencies": ["architecture_planning"], "timeout": 600}
        ],
        "configuration": {"parallel_execution": false, "failure_strategy": "stop_on_error"}
    })
}

#[tokio::test]
async fn the_seed_workflow_runs_to_completion_with_outputs_flowing_downstream() {
    let hub = TestHub::start().await.expect("hub");
    let crew = [
        ("analyst", "requirement_analysis", 120.0),
        ("architect", "architecture_planning", 180.0),
        ("coder", "code_generation", 600.0),
    ];
    for (agent, agent_type, _) in crew {
        join(&hub, agent, agent_type, &[], 1).await;
    }
    let resp = hub
        .http
        .post(hub.url("/api/v1/workflows"))
        .json(&seed())
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(
        resp.headers()["location"].to_str().expect("ascii"),
        "/api/v1/workflows/workflow-123"
    );
    let w: Value = resp.json().await.expect("json");
    assert_eq!(
        (&w["status"], &w["name"], &w["project_id"]),
        (
            &json!("running"),
            &json!("Full Stack App Generation"),
            &json!("proj-456")
        )
    );
    assert_eq!(
        w["configuration"],
        json!({"parallel_execution": false, "failure_strategy": "stop_on_error"})
    );
    assert_eq!(statuses(&w), ["running", "pending", "pending"]);
    assert_eq!(
        w["stages"][0]["task_id"],
        "workflow-123:requirement_analysis"
    );
    assert_eq!(
        w["stages"][1]["dependencies"],
        json!(["requirement_analysis"])
    );

    // Each agent pulls its stage when its turn comes; what the stage before
    // produced arrives in `upstream`.
    let mut previous: Option<(&str, Value)> = None;
    for (agent, stage, timeout) in crew {
        let got = claim(&hub, agent, 1, 5000).await;
        assert_eq!(got.len(), 1, "{agent}: {got:?}");
        let t = &got[0];
        assert_eq!(t["id"], format!("workflow-123:{stage}"));
        assert_eq!(
            (&t["type"], &t["stage"], &t["parent_workflow_id"]),
            (&json!(stage), &json!(stage), &json!("workflow-123"))
        );
        assert_eq!(t["timeout"].as_f64(), Some(timeout), "{t}");
        assert_eq!(t["metadata"]["project_id"], "proj-456");
        let input = &t["input_data"];
        assert_eq!(input["stage"], stage);
        assert_eq!(input["workflow"]["id"], "workflow-123");
        assert_eq!(input["workflow"]["name"], "Full Stack App Generation");
        assert_eq!(input["workflow"]["project_id"], "proj-456");
        let upstream = match &previous {
            Some((name, output)) => json!({ *name: output }),
            None => json!({}),
        };
        assert_eq!(input["upstream"], upstream, "{stage}");
        let output = json!({"artifact": format!("{stage}.md"), "by": agent});
        report(
            &hub,
            t["id"].as_str().expect("id"),
            json!({"status": "in_progress", "agent_id": agent}),
        )
        .await;
        complete(
            &hub,
            t["id"].as_str().expect("id"),
            agent,
            1,
            output.clone(),
        )
        .await;
        previous = Some((stage, output));
    }

    let w = wait_status(&hub, "workflow-123", "completed").await;
    assert_eq!(statuses(&w), ["completed"; 3]);
    assert_eq!(
        w["stages"][2]["output"],
        json!({"artifact": "code_generation.md", "by": "coder"})
    );
    assert!(w["completed_at"].is_string(), "{w}");
    assert_eq!(
        workflow_events(&hub, "workflow-123").await,
        [
            "workflow.started",
            "workflow.stage_started",
            "workflow.stage_completed",
            "workflow.stage_started",
            "workflow.stage_completed",
            "workflow.stage_started",
            "workflow.stage_completed",
            "workflow.completed"
        ]
    );
    let stage_done: Vec<Value> = events(&hub, "workflow.stage_completed")
        .await
        .iter()
        .map(|e| e["data"]["stage"].clone())
        .collect();
    assert_eq!(
        stage_done,
        [
            "requirement_analysis",
            "architecture_planning",
            "code_generation"
        ]
    );

    assert_eq!(list(&hub, "workflow_id=workflow-123").await["total"], 3);
    // The stage tasks' events carry the workflow as their correlation id.
    let stage_events = events(&hub, "task.>").await;
    assert_eq!(
        stage_events.len(),
        12,
        "created, assigned, started, completed × 3"
    );
    assert!(
        stage_events
            .iter()
            .all(|e| e["correlationid"] == "workflow-123"
                && e["data"]["workflow_id"] == "workflow-123"),
        "{stage_events:?}"
    );
    let m = hub.get_json("/api/v1/metrics").await;
    assert_eq!(m["system_metrics"]["completed_workflows"], 1, "{m}");
    for (query, total) in [
        ("status=completed", 1),
        ("status=running,failed", 0),
        ("project_id=proj-456", 1),
        ("project_id=proj-0", 0),
    ] {
        let page = hub.get_json(&format!("/api/v1/workflows?{query}")).await;
        assert_eq!(page["total"], total, "{query}: {page}");
    }
    let answer = call(&hub, "GET", "/api/v1/workflows?state=done", None).await;
    refused(&answer, StatusCode::BAD_REQUEST, "INVALID_QUERY");
}

#[tokio::test]
async fn independent_stages_run_together_unless_execution_is_sequential() {
    let hub = TestHub::start().await.expect("hub");
    join(&hub, "worker", "unit", &[], 10).await;
    let stages = json!([unit("a", &[]), unit("b", &[]), unit("c", &["a", "b"])]);

    // Parallel (the default): a and b at once; c once both are done.
    let w = create_wf(&hub, json!({"id": "par", "stages": stages})).await;
    assert_eq!(w["configuration"]["parallel_execution"], true);
    assert_eq!(statuses(&w), ["running", "running", "pending"]);
    wait_assigned(&hub, "par:a", "worker", 1).await;
    run(&hub, "par:b", "worker", json!({"from": "b"})).await;
    assert_eq!(
        statuses(&workflow(&hub, "par").await),
        ["running", "completed", "pending"]
    );
    run(&hub, "par:a", "worker", json!({"from": "a"})).await;
    let c = wait_assigned(&hub, "par:c", "worker", 1).await;
    assert_eq!(
        c["input_data"]["upstream"],
        json!({"a": {"from": "a"}, "b": {"from": "b"}})
    );
    complete(&hub, "par:c", "worker", 1, json!({})).await;
    wait_status(&hub, "par", "completed").await;

    // Sequential: one stage at a time, in the order given.
    let w = create_wf(
        &hub,
        json!({"id": "seq", "stages": stages, "configuration": {"parallel_execution": false}}),
    )
    .await;
    assert_eq!(statuses(&w), ["running", "pending", "pending"]);
    assert_eq!(
        call(&hub, "GET", "/api/v1/tasks/seq:b", None).await.0,
        StatusCode::NOT_FOUND,
        "b has not started"
    );
    run(&hub, "seq:a", "worker", json!({"from": "a"})).await;
    assert_eq!(
        statuses(&workflow(&hub, "seq").await),
        ["completed", "running", "pending"]
    );
    run(&hub, "seq:b", "worker", json!({"from": "b"})).await;
    assert_eq!(
        statuses(&workflow(&hub, "seq").await),
        ["completed", "completed", "running"]
    );
    let c = run(&hub, "seq:c", "worker", json!({})).await;
    assert_eq!(c["status"], "completed");
    let w = wait_status(&hub, "seq", "completed").await;
    assert_eq!(statuses(&w), ["completed"; 3]);
}

#[tokio::test]
async fn stop_on_error_cancels_running_stages_and_skips_the_rest() {
    let hub = TestHub::start().await.expect("hub");
    join(&hub, "worker", "unit", &[], 10).await;
    let w = create_wf(
        &hub,
        json!({"id": "stop", "stages": [unit("a", &[]), unit("b", &[]), unit("c", &["a"]), unit("d", &["b"])]}),
    )
    .await;
    assert_eq!(w["configuration"]["failure_strategy"], "stop_on_error");
    wait_assigned(&hub, "stop:a", "worker", 1).await;
    wait_assigned(&hub, "stop:b", "worker", 1).await;
    report(&hub, "stop:b", json!({"status": "in_progress"})).await;

    fail(&hub, "stop:a", "worker", 1, "SPEC_MISSING").await;
    let w = wait_status(&hub, "stop", "failed").await;
    assert_eq!(statuses(&w), ["failed", "cancelled", "skipped", "skipped"]);
    assert_eq!(w["error"]["code"], "WORKFLOW_FAILED", "{w}");
    assert_eq!(w["stages"][0]["error"]["code"], "SPEC_MISSING");
    let b = task(&hub, "stop:b").await;
    assert_eq!(
        (&b["status"], &b["error"]["code"]),
        (&json!("cancelled"), &json!("CANCELLED"))
    );
    for id in ["stop:c", "stop:d"] {
        assert_eq!(
            call(&hub, "GET", &format!("/api/v1/tasks/{id}"), None)
                .await
                .0,
            StatusCode::NOT_FOUND
        );
    }
    // b's agent hears of it and cannot finish it.
    let told = events(&hub, "task.unit.cancelled").await;
    assert_eq!(told.len(), 1);
    assert_eq!(told[0]["targetagent"], "worker");
    let answer = try_report(&hub, "stop:b", json!({"status": "completed"})).await;
    refused(&answer, StatusCode::CONFLICT, "INVALID_TRANSITION");
    let kinds = workflow_events(&hub, "stop").await;
    assert!(
        kinds.contains(&"workflow.stage_failed".to_owned()),
        "{kinds:?}"
    );
    assert_eq!(kinds.last().map(String::as_str), Some("workflow.failed"));
    assert_eq!(
        hub.get_json("/api/v1/workflows?status=failed").await["total"],
        1
    );
}

#[tokio::test]
async fn continue_skips_only_what_depends_on_the_failed_stage() {
    let hub = TestHub::start().await.expect("hub");
    join(&hub, "worker", "unit", &[], 10).await;
    create_wf(
        &hub,
        json!({"id": "cont",
               "stages": [unit("a", &[]), unit("b", &[]), unit("c", &["a"]), unit("d", &["c"]), unit("e", &["b"])],
               "configuration": {"failure_strategy": "continue"}}),
    )
    .await;
    wait_assigned(&hub, "cont:a", "worker", 1).await;
    fail(&hub, "cont:a", "worker", 1, "BROKEN").await;
    let w = workflow(&hub, "cont").await;
    assert_eq!(w["status"], "running", "b still runs: {w}");
    assert_eq!(
        statuses(&w),
        ["failed", "running", "skipped", "skipped", "pending"]
    );

    run(&hub, "cont:b", "worker", json!({"b": 1})).await;
    let e = wait_assigned(&hub, "cont:e", "worker", 1).await;
    assert_eq!(e["input_data"]["upstream"], json!({"b": {"b": 1}}));
    assert_eq!(workflow(&hub, "cont").await["status"], "running");
    complete(&hub, "cont:e", "worker", 1, json!({})).await;
    // Nothing left: failed, since a stage failed.
    let w = wait_status(&hub, "cont", "failed").await;
    assert_eq!(
        statuses(&w),
        ["failed", "completed", "skipped", "skipped", "completed"]
    );
    let message = w["error"]["message"].as_str().expect("message");
    assert!(message.contains("stage a"), "{message}");
    for id in ["cont:c", "cont:d"] {
        assert_eq!(
            call(&hub, "GET", &format!("/api/v1/tasks/{id}"), None)
                .await
                .0,
            StatusCode::NOT_FOUND
        );
    }
}

#[tokio::test]
async fn compensate_undoes_completed_stages_latest_completed_first() {
    let hub = TestHub::start().await.expect("hub");
    join(&hub, "doer", "unit", &[], 10).await;
    join(&hub, "undoer", "undo", &[], 5).await;
    create_wf(
        &hub,
        json!({"id": "saga",
               "stages": [undoable("a", &[]), undoable("b", &[]), undoable("c", &["a", "b"])],
               "configuration": {"failure_strategy": "compensate"}}),
    )
    .await;
    // b completes before a: a is undone first.
    run(&hub, "saga:b", "doer", json!({"made": "b"})).await;
    run(&hub, "saga:a", "doer", json!({"made": "a"})).await;
    wait_assigned(&hub, "saga:c", "doer", 1).await;
    fail(&hub, "saga:c", "doer", 1, "DEPLOY_FAILED").await;

    let w = wait_status(&hub, "saga", "compensating").await;
    assert_eq!(statuses(&w), ["compensating", "completed", "failed"]);
    let got = claim(&hub, "undoer", 5, 5000).await;
    assert_eq!(got.len(), 1, "one compensation at a time: {got:?}");
    let undo_a = &got[0];
    assert_eq!(undo_a["id"], "saga:a:compensate");
    assert_eq!(
        (&undo_a["type"], &undo_a["compensation"], &undo_a["stage"]),
        (&json!("undo"), &json!(true), &json!("a"))
    );
    assert_eq!(undo_a["input_data"]["compensating"], true);
    assert_eq!(undo_a["input_data"]["input"], json!({"drop": "a"}));
    assert_eq!(undo_a["input_data"]["output"], json!({"made": "a"}));
    assert_eq!(
        call(&hub, "GET", "/api/v1/tasks/saga:b:compensate", None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    complete(&hub, "saga:a:compensate", "undoer", 1, json!({})).await;

    let got = claim(&hub, "undoer", 5, 5000).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["id"], "saga:b:compensate");
    assert_eq!(got[0]["input_data"]["output"], json!({"made": "b"}));
    complete(&hub, "saga:b:compensate", "undoer", 1, json!({})).await;

    let w = wait_status(&hub, "saga", "compensated").await;
    assert_eq!(statuses(&w), ["compensated", "compensated", "failed"]);
    assert_eq!(w["stages"][0]["compensation_task_id"], "saga:a:compensate");
    assert!(w["stages"][2].get("compensation_task_id").is_none(), "{w}");
    let kinds = workflow_events(&hub, "saga").await;
    let tail: Vec<&str> = kinds
        .iter()
        .map(String::as_str)
        .filter(|k| {
            matches!(
                *k,
                "workflow.compensating" | "workflow.compensated" | "workflow.failed"
            )
        })
        .collect();
    assert_eq!(tail, ["workflow.compensating", "workflow.compensated"]);
}

#[tokio::test]
async fn a_failed_compensation_fails_the_workflow_after_the_others_ran() {
    let hub = TestHub::start().await.expect("hub");
    join(&hub, "doer", "unit", &[], 10).await;
    join(&hub, "undoer", "undo", &[], 5).await;
    create_wf(
        &hub,
        json!({"id": "saga2",
               "stages": [undoable("a", &[]), undoable("b", &["a"]), undoable("c", &["b"])],
               "configuration": {"failure_strategy": "compensate"}}),
    )
    .await;
    run(&hub, "saga2:a", "doer", json!({})).await;
    run(&hub, "saga2:b", "doer", json!({})).await;
    wait_assigned(&hub, "saga2:c", "doer", 1).await;
    fail(&hub, "saga2:c", "doer", 1, "BOOM").await;

    wait_assigned(&hub, "saga2:b:compensate", "undoer", 1).await;
    fail(&hub, "saga2:b:compensate", "undoer", 1, "CANNOT_UNDO").await;
    run(&hub, "saga2:a:compensate", "undoer", json!({})).await;

    let w = wait_status(&hub, "saga2", "failed").await;
    assert_eq!(
        statuses(&w),
        ["compensated", "compensation_failed", "failed"]
    );
    assert_eq!(w["error"]["code"], "COMPENSATION_FAILED", "{w}");
    assert_eq!(w["stages"][1]["error"]["code"], "CANNOT_UNDO");
    let kinds = workflow_events(&hub, "saga2").await;
    assert_eq!(kinds.last().map(String::as_str), Some("workflow.failed"));
    assert!(
        !kinds.contains(&"workflow.compensated".to_owned()),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn cancelling_a_workflow_stops_its_running_stages() {
    let hub = TestHub::start().await.expect("hub");
    join(&hub, "worker", "unit", &[], 10).await;
    create_wf(
        &hub,
        json!({"id": "stopme", "stages": [unit("a", &[]), unit("b", &["a"])]}),
    )
    .await;
    wait_assigned(&hub, "stopme:a", "worker", 1).await;

    let (status, w) = call(&hub, "POST", "/api/v1/workflows/stopme/cancel", None).await;
    assert_eq!(status, StatusCode::OK, "{w}");
    assert_eq!(w["status"], "cancelled");
    assert_eq!(statuses(&w), ["cancelled", "skipped"]);
    assert_eq!(w["error"]["code"], "CANCELLED");
    assert!(w["completed_at"].is_string());
    assert_eq!(task(&hub, "stopme:a").await["status"], "cancelled");
    let told = events(&hub, "task.unit.cancelled").await;
    assert_eq!(told[0]["targetagent"], "worker");
    let answer = try_report(&hub, "stopme:a", json!({"status": "completed"})).await;
    refused(&answer, StatusCode::CONFLICT, "INVALID_TRANSITION");
    assert_eq!(
        workflow_events(&hub, "stopme")
            .await
            .last()
            .map(String::as_str),
        Some("workflow.cancelled")
    );
    // Again: the same answer.
    let (status, again) = call(&hub, "POST", "/api/v1/workflows/stopme/cancel", None).await;
    assert_eq!((status, &again), (StatusCode::OK, &w));

    // A workflow that ended cannot be cancelled; an unknown one is 404.
    create_wf(
        &hub,
        json!({"id": "finished", "stages": [unit("only", &[])]}),
    )
    .await;
    run(&hub, "finished:only", "worker", json!({})).await;
    wait_status(&hub, "finished", "completed").await;
    let answer = call(&hub, "POST", "/api/v1/workflows/finished/cancel", None).await;
    let details = refused(&answer, StatusCode::CONFLICT, "INVALID_TRANSITION");
    assert_eq!(details["status"], "completed");
    let answer = call(&hub, "POST", "/api/v1/workflows/ghost/cancel", None).await;
    refused(&answer, StatusCode::NOT_FOUND, "WORKFLOW_NOT_FOUND");
    let answer = call(&hub, "GET", "/api/v1/workflows/ghost", None).await;
    refused(&answer, StatusCode::NOT_FOUND, "WORKFLOW_NOT_FOUND");
}

#[tokio::test]
async fn cycles_and_bad_stages_are_refused_and_create_nothing() {
    let hub = TestHub::start().await.expect("hub");
    let answer = call(
        &hub,
        "POST",
        "/api/v1/workflows",
        Some(json!({"id": "loop", "stages": [
            unit("start", &[]), unit("a", &["start", "c"]), unit("b", &["a"]), unit("c", &["b"])
        ]})),
    )
    .await;
    let details = refused(&answer, StatusCode::BAD_REQUEST, "WORKFLOW_CYCLE");
    let cycle: Vec<&str> = details["cycle"]
        .as_array()
        .unwrap_or_else(|| panic!("{details}"))
        .iter()
        .map(|s| s.as_str().expect("name"))
        .collect();
    assert_eq!(cycle.len(), 4, "{cycle:?}");
    assert_eq!(cycle.first(), cycle.last(), "{cycle:?}");
    let mut names = cycle[..3].to_vec();
    names.sort_unstable();
    assert_eq!(names, ["a", "b", "c"]);
    // Written the way work would flow: each stage depends on the one before.
    let deps = |s: &str| match s {
        "a" => vec!["start", "c"],
        "b" => vec!["a"],
        _ => vec!["b"],
    };
    for pair in cycle.windows(2) {
        assert!(deps(pair[1]).contains(&pair[0]), "{cycle:?}");
    }

    let table = [
        (
            json!({"stages": [unit("a", &[]), unit("b", &["zzz"])]}),
            "stages[1].dependencies[0]",
        ),
        (
            json!({"stages": [unit("a", &["a"])]}),
            "stages[0].dependencies[0]",
        ),
        (json!({"stages": []}), "stages"),
        (
            json!({"stages": [unit("a", &[]), unit("a", &[])]}),
            "stages[1].name",
        ),
        (json!({"stages": [unit("a:b", &[])]}), "stages[0].name"),
        (json!({"id": "w:1", "stages": [unit("a", &[])]}), "id"),
        (
            json!({"stages": [{"name": "a", "agent_type": "unit", "timeout": -1}]}),
            "stages[0].timeout",
        ),
        (
            json!({"stages": [{"name": "a", "agent_type": "a b"}]}),
            "stages[0].agent_type",
        ),
        (
            json!({"stages": [{"name": "a", "agent_type": "unit", "retry_policy": {"max_attempts": 0}}]}),
            "stages[0].retry_policy.max_attempts",
        ),
        (
            json!({"stages": [{"name": "a", "agent_type": "unit",
                             "compensation": {"agent_type": "undo", "retry_policy": {"jitter": 2}}}]}),
            "stages[0].compensation.retry_policy.jitter",
        ),
        (
            json!({"stages": [unit("a", &[])], "configuration": {"failure_strategy": "panic"}}),
            "configuration.failure_strategy",
        ),
        (
            json!({"stages": [unit("a", &[])], "colour": "red"}),
            "colour",
        ),
        (json!({"name": "no stages"}), "stages"),
    ];
    for (body, field) in table {
        let answer = call(&hub, "POST", "/api/v1/workflows", Some(body.clone())).await;
        refused(
            &answer,
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_FAILED",
        );
        assert!(
            fields(&answer.1).contains(&field.to_owned()),
            "{body}: {}",
            answer.1
        );
    }
    assert_eq!(hub.get_json("/api/v1/workflows").await["total"], 0);
    assert_eq!(list(&hub, "").await["total"], 0);
    assert!(events(&hub, "workflow.>").await.is_empty());
}

#[tokio::test]
async fn a_repeated_workflow_create_answers_the_first_and_starts_nothing_new() {
    let hub = TestHub::start().await.expect("hub");
    let body = json!({"id": "once", "name": "Once", "input": {"repo": "x"},
                      "stages": [unit("a", &[]), unit("b", &["a"])]});
    let first = create_wf(&hub, body.clone()).await;
    let (status, again) = call(&hub, "POST", "/api/v1/workflows", Some(body.clone())).await;
    assert_eq!(
        (status, &again["created_at"]),
        (StatusCode::OK, &first["created_at"])
    );
    assert_eq!(
        list(&hub, "workflow_id=once").await["total"],
        1,
        "a started once"
    );
    let mut changed = body.clone();
    changed["input"]["repo"] = json!("y");
    let answer = call(&hub, "POST", "/api/v1/workflows", Some(changed)).await;
    let details = refused(&answer, StatusCode::CONFLICT, "WORKFLOW_EXISTS");
    assert_eq!(details["id"], "once");

    let by_key = |stage: &'static str| {
        let hub = &hub;
        async move {
            let resp = hub
                .http
                .post(hub.url("/api/v1/workflows"))
                .header("Idempotency-Key", "wf-key-1")
                .json(&json!({"stages": [unit(stage, &[])]}))
                .send()
                .await
                .expect("send");
            let status = resp.status();
            (status, resp.json::<Value>().await.expect("json"))
        }
    };
    let (status, k1) = by_key("x").await;
    assert_eq!(status, StatusCode::CREATED, "{k1}");
    assert_eq!(k1["idempotency_key"], "wf-key-1");
    let (status, k2) = by_key("x").await;
    assert_eq!((status, &k2["id"]), (StatusCode::OK, &k1["id"]));
    let answer = by_key("y").await;
    refused(&answer, StatusCode::CONFLICT, "IDEMPOTENCY_CONFLICT");
    assert_eq!(hub.get_json("/api/v1/workflows").await["total"], 2);
    assert_eq!(list(&hub, "").await["total"], 2);
}

#[tokio::test]
async fn a_workflow_continues_after_a_restart_without_rerunning_completed_stages() {
    let hub = TestHub::start().await.expect("hub");
    join(&hub, "builder", "unit", &[], 2).await;
    create_wf(
        &hub,
        json!({"id": "durable", "stages": [unit("plan", &[]), unit("build", &["plan"]), unit("ship", &["build"])]}),
    )
    .await;
    let plan = run(&hub, "durable:plan", "builder", json!({"plan": "v1"})).await;
    wait_assigned(&hub, "durable:build", "builder", 1).await;
    assert_eq!(ids(&claim(&hub, "builder", 2, 0).await), ["durable:build"]);
    report(
        &hub,
        "durable:build",
        json!({"status": "in_progress", "progress": 30}),
    )
    .await;

    let data = hub.stop().await.expect("stop");
    let hub = TestHub::start_with(data, "").await.expect("restart");

    let w = workflow(&hub, "durable").await;
    assert_eq!(w["status"], "running");
    assert_eq!(statuses(&w), ["completed", "running", "pending"]);
    assert_eq!(
        task(&hub, "durable:plan").await,
        plan,
        "plan is not run again"
    );
    let build = task(&hub, "durable:build").await;
    assert_eq!(
        (
            &build["status"],
            &build["agent_id"],
            &build["attempt"],
            &build["progress"]
        ),
        (
            &json!("in_progress"),
            &json!("builder"),
            &json!(1),
            &json!(30)
        )
    );

    // The agent finishes what it was doing; the rest follows.
    complete(
        &hub,
        "durable:build",
        "builder",
        1,
        json!({"binary": "app"}),
    )
    .await;
    let got = claim(&hub, "builder", 2, 5000).await;
    assert_eq!(ids(&got), ["durable:ship"]);
    assert_eq!(
        got[0]["input_data"]["upstream"],
        json!({"build": {"binary": "app"}})
    );
    complete(&hub, "durable:ship", "builder", 1, json!({})).await;
    let w = wait_status(&hub, "durable", "completed").await;
    assert_eq!(w["stages"][0]["output"], json!({"plan": "v1"}));
    assert_eq!(list(&hub, "workflow_id=durable").await["total"], 3);
    let started: Vec<Value> = events(&hub, "workflow.stage_started")
        .await
        .iter()
        .map(|e| e["data"]["stage"].clone())
        .collect();
    assert_eq!(
        started,
        ["plan", "build", "ship"],
        "each stage started once"
    );
}
