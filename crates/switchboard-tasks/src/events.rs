//! The events tasks and workflows publish, each written in the same
//! transaction as the change it describes.
//!
//! | topic | type | when |
//! |---|---|---|
//! | `task.{type}.created` | `task.created` | a task is created |
//! | `task.{type}.assigned` | `task.assigned` | given to an agent (`targetagent`; data has the input, the attempt and the lease) |
//! | `task.{type}.started` | `task.started` | the agent reports `in_progress` |
//! | `task.{type}.progress` | `task.progress` | the agent reports progress |
//! | `task.{type}.completed` | `task.completed` | completed, with its output |
//! | `task.{type}.retrying` | `task.retrying` | an attempt failed; the task is queued again |
//! | `task.{type}.failed` | `task.failed` | failed for good |
//! | `task.{type}.timed_out` | `task.timed_out` | its last attempt ran out of time |
//! | `task.{type}.cancelled` | `task.cancelled` | cancelled (`targetagent`: the holder) |
//! | `workflow.started` … | `workflow.{kind}` | `started`, `stage_started`, `stage_completed`, `stage_failed`, `compensating`, `completed`, `failed`, `compensated`, `cancelled` |
//!
//! `{type}` is the task's type with `.` and `:` turned into `_`, so it
//! stays one topic token (`task.*.completed` matches every type). Events
//! of a workflow's tasks carry the workflow id as `correlationid`.

use serde_json::{Value, json};
use switchboard_bus::NewEvent;
use switchboard_bus::event::ext;
use switchboard_core::UnixMillis;

use crate::task::Task;
use crate::workflow::{Stage, Workflow};

/// The source of task events.
pub const TASK_SOURCE: &str = "/switchboard/tasks";
/// The source of workflow events.
pub const WORKFLOW_SOURCE: &str = "/switchboard/workflows";

/// An RFC 3339 time.
pub(crate) fn rfc3339(ms: UnixMillis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn topic_token(s: &str) -> String {
    s.replace(['.', ':'], "_")
}

/// A task event of `kind` (`created`, `assigned`, …).
pub(crate) fn task(kind: &str, t: &Task, now: UnixMillis) -> NewEvent {
    let mut data = json!({
        "task_id": t.id,
        "type": t.task_type,
        "status": t.status.as_str(),
        "priority": t.priority.as_str(),
        "attempt": t.attempt,
        "max_attempts": t.retry_policy.max_attempts,
        "progress": t.progress,
    });
    let m = data.as_object_mut();
    if let Some(m) = m {
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_owned(), v);
        };
        if let Some(a) = &t.agent_id {
            put("agent_id", a.as_str().into());
        }
        if let Some(w) = &t.workflow_id {
            put("workflow_id", w.as_str().into());
        }
        if let Some(s) = &t.stage {
            put("stage", s.as_str().into());
        }
        if t.compensation {
            put("compensation", true.into());
        }
        if let Some(e) = &t.error {
            put("error", json!({"code": e.code, "message": e.message}));
        }
        if !t.metadata.is_empty() {
            put("metadata", Value::Object(t.metadata.clone()));
        }
        match kind {
            "assigned" => {
                put("input_data", Value::Object(t.input_data.clone()));
                if let Some(l) = t.lease_expires_at {
                    put("lease_expires_at", rfc3339(l).into());
                }
                if let Some(d) = t.deadline_at {
                    put("deadline_at", rfc3339(d).into());
                }
            }
            "completed" | "progress" => {
                if let Some(o) = &t.output_data {
                    put("output_data", Value::Object(o.clone()));
                }
            }
            "retrying" => {
                if let Some(a) = t.available_at {
                    put("retry_at", rfc3339(a).into());
                }
            }
            _ => {}
        }
    }
    let mut e = NewEvent::hub(
        &format!("task.{}.{kind}", topic_token(&t.task_type)),
        TASK_SOURCE,
        &t.id,
        now,
        data,
    );
    e.event_type = format!("task.{kind}");
    if let Some(w) = &t.workflow_id {
        e.extensions
            .insert(ext::CORRELATION_ID.into(), w.as_str().into());
    }
    if matches!(kind, "assigned" | "cancelled")
        && let Some(a) = &t.agent_id
    {
        e.extensions
            .insert(ext::TARGET_AGENT.into(), a.as_str().into());
    }
    e
}

/// A workflow event of `kind`, about `stage` when given.
pub(crate) fn workflow(
    kind: &str,
    w: &Workflow,
    stage: Option<&Stage>,
    now: UnixMillis,
) -> NewEvent {
    let mut data = json!({
        "workflow_id": w.id,
        "name": w.name,
        "status": w.status.as_str(),
        "failure_strategy": w.failure_strategy.as_str(),
    });
    if let Some(m) = data.as_object_mut() {
        if let Some(p) = &w.project_id {
            m.insert("project_id".into(), p.as_str().into());
        }
        if let Some(s) = stage {
            m.insert("stage".into(), s.spec.name.as_str().into());
            m.insert("stage_status".into(), s.status.as_str().into());
            if let Some(t) = &s.task_id {
                m.insert("task_id".into(), t.as_str().into());
            }
            if let Some(e) = &s.error {
                m.insert(
                    "error".into(),
                    json!({"code": e.code, "message": e.message}),
                );
            }
        }
        if let Some(e) = &w.error
            && stage.is_none()
        {
            m.insert(
                "error".into(),
                json!({"code": e.code, "message": e.message}),
            );
        }
        let done = w
            .stages
            .iter()
            .filter(|s| s.status == crate::workflow::StageStatus::Completed)
            .count();
        m.insert("stages_completed".into(), done.into());
        m.insert("stages_total".into(), w.stages.len().into());
    }
    let topic = format!("workflow.{kind}");
    let mut e = NewEvent::hub(&topic, WORKFLOW_SOURCE, &w.id, now, data);
    e.extensions
        .insert(ext::CORRELATION_ID.into(), w.id.as_str().into());
    e
}
