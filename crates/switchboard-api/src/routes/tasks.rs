//! `/api/v1/tasks`: create, read, agent reports, claims, cancel.

use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use switchboard_core::{FieldError, FieldErrors};
use switchboard_tasks::{Claim, MAX_PAGE, TaskFilter, TaskStatus, Tasks};
use switchboard_wire::{
    CancelRequest, ClaimRequest, ClaimResponse, CreateTaskRequest, Problem, Task, TaskList,
    UpdateTaskRequest,
};

use super::created;
use crate::access::Caller;
use crate::convert::tasks as convert;
use crate::error::ApiError;
use crate::extract::AppJson;

/// The page size when `limit` is absent.
const DEFAULT_PAGE: u32 = 50;

/// The `Idempotency-Key` header, if any.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => v.to_str().map(|s| Some(s.to_owned())).map_err(|_| {
            ApiError::validation(vec![FieldError::new(
                "Idempotency-Key",
                "must be visible ASCII",
            )])
        }),
    }
}

/// Create a task. It is queued at once (or `pending` until its
/// dependencies complete) and given to the least loaded live agent that
/// can do it. A repeat with the same `id` or idempotency key and the same
/// content answers the task it created (200).
#[utoipa::path(
    post,
    path = "/api/v1/tasks",
    security(("bearer" = ["tasks:write"])),
    tag = "tasks",
    request_body = CreateTaskRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried create safe")),
    responses(
        (status = 201, description = "Created", body = Task,
         headers(("Location" = String, description = "The task's URL"))),
        (status = 200, description = "Created before by the same request", body = Task),
        (status = 409, description = "The id or idempotency key is taken by other content", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "A dependency already failed (DEPENDENCY_NOT_MET)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each named", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn create_task(
    State(tasks): State<Tasks>,
    headers: HeaderMap,
    AppJson(body): AppJson<CreateTaskRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let key = idempotency_key(&headers)?;
    let mut errs = FieldErrors::new();
    let new = convert::new_task(body, key, &mut errs);
    errs.finish().map_err(ApiError::validation)?;
    let (task, is_new) = tasks.create(new).await?;
    Ok(created(
        format!("/api/v1/tasks/{}", task.id),
        is_new,
        convert::task(task),
    ))
}

/// One task.
#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}",
    security(("bearer" = ["tasks:read"])),
    tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "The task", body = Task),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_task(
    State(tasks): State<Tasks>,
    Path(id): Path<String>,
) -> Result<AppJson<Task>, ApiError> {
    Ok(AppJson(convert::task(tasks.get(&id).await?)))
}

/// An agent's report on a task it holds: `in_progress` (or progress
/// alone), `completed` with its output, or `failed` (retried per the
/// task's policy). Each report renews the lease. Give `agent_id` and
/// `attempt` so that a report from an attempt the hub gave up on is
/// refused. Repeating the report that ended a task answers it unchanged.
#[utoipa::path(
    patch,
    path = "/api/v1/tasks/{id}",
    security(("bearer" = ["tasks:write"])),
    tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    request_body = UpdateTaskRequest,
    responses(
        (status = 200, description = "The task after the report", body = Task),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not allowed from the task's status (INVALID_TRANSITION, with the status), or the reporter does not hold it (LEASE_LOST)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each named", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn update_task(
    State(tasks): State<Tasks>,
    caller: Caller,
    Path(id): Path<String>,
    AppJson(body): AppJson<UpdateTaskRequest>,
) -> Result<AppJson<Task>, ApiError> {
    let mut update = convert::update(body);
    let Some(me) = caller.agent_id() else {
        return Ok(AppJson(convert::task(tasks.update(&id, update).await?)));
    };
    // An agent reports only as itself, and only on tasks it holds.
    if let Some(given) = update.agent_id.as_deref().filter(|a| *a != me) {
        return Err(ApiError::forbidden(format!(
            "agent {me} may not report as agent {given}"
        )));
    }
    update.agent_id = Some(me.to_owned());
    match tasks.update(&id, update).await {
        Ok(t) => Ok(AppJson(convert::task(t))),
        Err(switchboard_tasks::TaskError::NotHolder { holder, .. }) if holder != me => {
            Err(ApiError::forbidden(format!(
                "task {id} is not assigned to agent {me}; an agent updates only the tasks it holds"
            ))
            .with_details(serde_json::json!({ "task_id": id })))
        }
        Err(e) => Err(e.into()),
    }
}

/// Cancel a task that has not ended; its holder is told with a
/// `task.cancelled` event. Cancelling a cancelled task changes nothing.
#[utoipa::path(
    post,
    path = "/api/v1/tasks/{id}/cancel",
    security(("bearer" = ["tasks:write"])),
    tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    request_body(content = CancelRequest, description = "Optional"),
    responses(
        (status = 200, description = "Cancelled", body = Task),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The task already ended", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn cancel_task(
    State(tasks): State<Tasks>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<AppJson<Task>, ApiError> {
    if let Some(me) = caller.agent_id() {
        let t = tasks.get(&id).await?;
        if t.agent_id.as_deref() != Some(me) {
            return Err(ApiError::forbidden(format!(
                "task {id} is not assigned to agent {me}; an agent cancels only the tasks it holds"
            )));
        }
    }
    // The body is optional: empty, or a JSON object.
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        crate::extract::parse::<CancelRequest>(&body)?.reason
    };
    Ok(AppJson(convert::task(tasks.cancel(&id, reason).await?)))
}

/// An agent asks for work: the tasks given to it (at most `max_tasks`),
/// waiting up to `wait_ms` for some (a long poll). Each task comes
/// `assigned`, with a lease the agent keeps by reporting progress,
/// claiming again or heartbeating.
#[utoipa::path(
    post,
    path = "/api/v1/tasks/claim",
    security(("bearer" = ["tasks:write"])),
    tag = "tasks",
    request_body = ClaimRequest,
    responses(
        (status = 200, description = "The tasks given (maybe none)", body = ClaimResponse),
        (status = 404, description = "The agent is not registered", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each named", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The agent is stale or offline (AGENT_UNAVAILABLE)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn claim_tasks(
    State(tasks): State<Tasks>,
    caller: Caller,
    AppJson(body): AppJson<ClaimRequest>,
) -> Result<AppJson<ClaimResponse>, ApiError> {
    caller.require_self_or_staff(&body.agent_id, "claim tasks for")?;
    let claim = Claim {
        agent_id: body.agent_id,
        max: body.max_tasks.unwrap_or(1),
        wait: std::time::Duration::from_millis(body.wait_ms.unwrap_or(0)),
    };
    let given = tasks.claim(claim).await?;
    Ok(AppJson(ClaimResponse {
        tasks: given.into_iter().map(convert::task).collect(),
    }))
}

/// List tasks in creation order. Filters combine with AND.
#[utoipa::path(
    get,
    path = "/api/v1/tasks",
    security(("bearer" = ["tasks:read"])),
    tag = "tasks",
    params(
        ("status" = Option<String>, Query, description = "Only these statuses (comma-separated or repeated)"),
        ("type" = Option<String>, Query, description = "Only this type"),
        ("agent_id" = Option<String>, Query, description = "Only tasks held (or last held) by this agent"),
        ("workflow_id" = Option<String>, Query, description = "Only this workflow's stage tasks"),
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 1000 (default 50)"),
        ("cursor" = Option<String>, Query, description = "The next_cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of tasks", body = TaskList),
        (status = 400, description = "Invalid query parameters, each named", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list_tasks(
    State(tasks): State<Tasks>,
    RawQuery(query): RawQuery,
) -> Result<AppJson<TaskList>, ApiError> {
    let (filter, after, limit) = parse_query(query.as_deref().unwrap_or(""))?;
    let page = tasks.list(&filter, after, limit).await?;
    Ok(AppJson(TaskList {
        tasks: page.items.into_iter().map(convert::task).collect(),
        total: page.total,
        next_cursor: page.next_after.map(|s| s.to_string()),
    }))
}

/// Parses `limit` and `cursor`, the parameters every listing shares.
pub(crate) fn page_param(
    key: &str,
    value: &str,
    limit: &mut u32,
    after: &mut Option<u64>,
    errs: &mut Vec<FieldError>,
) -> bool {
    match key {
        "limit" => match value.parse::<u32>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => *limit = n,
            _ => errs.push(FieldError::new(
                "limit",
                format!("must be a whole number from 1 to {MAX_PAGE}"),
            )),
        },
        "cursor" => match value.parse::<u64>() {
            Ok(n) => *after = Some(n),
            Err(_) => errs.push(FieldError::new(
                "cursor",
                "must be the next_cursor of a previous page",
            )),
        },
        _ => return false,
    }
    true
}

fn parse_query(raw: &str) -> Result<(TaskFilter, Option<u64>, u32), ApiError> {
    let mut f = TaskFilter::default();
    let (mut after, mut limit) = (None, DEFAULT_PAGE);
    let mut errs = Vec::new();
    for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
        if page_param(&key, &value, &mut limit, &mut after, &mut errs) {
            continue;
        }
        match key.as_ref() {
            "status" => {
                for v in value.split(',').map(str::trim).filter(|v| !v.is_empty()) {
                    match TaskStatus::parse(v) {
                        Some(s) => f.statuses.push(s),
                        None => errs.push(FieldError::new(
                            "status",
                            format!(
                                "{v:?} is not a task status; use pending, queued, assigned, in_progress, completed, failed, timed_out or cancelled"
                            ),
                        )),
                    }
                }
            }
            "type" => f.task_type = Some(value.into_owned()),
            "agent_id" | "agent" => f.agent_id = Some(value.into_owned()),
            "workflow_id" | "parent_workflow_id" => f.workflow_id = Some(value.into_owned()),
            other => errs.push(FieldError::new(
                other,
                "is not a known parameter; use status, type, agent_id, workflow_id, limit or cursor",
            )),
        }
    }
    if errs.is_empty() {
        Ok((f, after, limit))
    } else {
        Err(ApiError::invalid_query(errs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_filters_and_names_bad_ones() {
        let (f, after, limit) =
            parse_query("status=queued,assigned&type=t&agent=a&limit=5&cursor=9").expect("valid");
        assert_eq!(f.statuses, [TaskStatus::Queued, TaskStatus::Assigned]);
        assert_eq!(
            (f.task_type.as_deref(), f.agent_id.as_deref(), after, limit),
            (Some("t"), Some("a"), Some(9), 5)
        );
        let e = parse_query("status=done&cursor=x&limit=0&colour=red").expect_err("invalid");
        let fields: Vec<&str> = e.fields().iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["status", "cursor", "limit", "colour"]);
    }
}
