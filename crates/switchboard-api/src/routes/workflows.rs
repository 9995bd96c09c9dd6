//! `/api/v1/workflows`: DAGs of stages, each run as a task.

use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use switchboard_core::{FieldError, FieldErrors};
use switchboard_tasks::{Tasks, WorkflowFilter, WorkflowStatus};
use switchboard_wire::{CreateWorkflowRequest, Problem, Workflow, WorkflowList};

use super::created;
use super::tasks::{idempotency_key, page_param};
use crate::convert::tasks as convert;
use crate::error::ApiError;
use crate::extract::AppJson;

/// Create and start a workflow. Stages whose dependencies are met start at
/// once (one at a time without `parallel_execution`). Dependencies on
/// unknown stages are 422 and a cycle is 400 `WORKFLOW_CYCLE`, naming the
/// stages along it.
#[utoipa::path(
    post,
    path = "/api/v1/workflows",
    security(("bearer" = ["workflows:write"])),
    tag = "workflows",
    request_body = CreateWorkflowRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried create safe")),
    responses(
        (status = 201, description = "Created and started", body = Workflow,
         headers(("Location" = String, description = "The workflow's URL"))),
        (status = 200, description = "Created before by the same request", body = Workflow),
        (status = 400, description = "The stages form a cycle (WORKFLOW_CYCLE)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The id or idempotency key is taken by other content", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each named", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn create_workflow(
    State(tasks): State<Tasks>,
    headers: HeaderMap,
    AppJson(body): AppJson<CreateWorkflowRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let key = idempotency_key(&headers)?;
    let mut errs = FieldErrors::new();
    let new = convert::new_workflow(body, key, &mut errs);
    errs.finish().map_err(ApiError::validation)?;
    let (w, is_new) = tasks.create_workflow(new).await?;
    Ok(created(
        format!("/api/v1/workflows/{}", w.id),
        is_new,
        convert::workflow(w),
    ))
}

/// One workflow, with each stage's status, task and output.
#[utoipa::path(
    get,
    path = "/api/v1/workflows/{id}",
    security(("bearer" = ["workflows:read"])),
    tag = "workflows",
    params(("id" = String, Path, description = "Workflow id")),
    responses(
        (status = 200, description = "The workflow", body = Workflow),
        (status = 404, description = "No such workflow", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_workflow(
    State(tasks): State<Tasks>,
    Path(id): Path<String>,
) -> Result<AppJson<Workflow>, ApiError> {
    Ok(AppJson(convert::workflow(tasks.get_workflow(&id).await?)))
}

/// Cancel a workflow: its running stages' tasks are cancelled and nothing
/// more starts.
#[utoipa::path(
    post,
    path = "/api/v1/workflows/{id}/cancel",
    security(("bearer" = ["workflows:write"])),
    tag = "workflows",
    params(("id" = String, Path, description = "Workflow id")),
    responses(
        (status = 200, description = "Cancelled", body = Workflow),
        (status = 404, description = "No such workflow", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The workflow already ended", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn cancel_workflow(
    State(tasks): State<Tasks>,
    Path(id): Path<String>,
) -> Result<AppJson<Workflow>, ApiError> {
    Ok(AppJson(convert::workflow(
        tasks.cancel_workflow(&id).await?,
    )))
}

/// List workflows in creation order.
#[utoipa::path(
    get,
    path = "/api/v1/workflows",
    security(("bearer" = ["workflows:read"])),
    tag = "workflows",
    params(
        ("status" = Option<String>, Query, description = "Only these statuses (comma-separated or repeated)"),
        ("project_id" = Option<String>, Query, description = "Only this project's"),
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 1000 (default 50)"),
        ("cursor" = Option<String>, Query, description = "The next_cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of workflows", body = WorkflowList),
        (status = 400, description = "Invalid query parameters, each named", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list_workflows(
    State(tasks): State<Tasks>,
    RawQuery(query): RawQuery,
) -> Result<AppJson<WorkflowList>, ApiError> {
    let mut f = WorkflowFilter::default();
    let (mut after, mut limit) = (None, 50);
    let mut errs = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        if page_param(&key, &value, &mut limit, &mut after, &mut errs) {
            continue;
        }
        match key.as_ref() {
            "status" => {
                for v in value.split(',').map(str::trim).filter(|v| !v.is_empty()) {
                    match WorkflowStatus::parse(v) {
                        Some(s) => f.statuses.push(s),
                        None => errs.push(FieldError::new(
                            "status",
                            format!(
                                "{v:?} is not a workflow status; use running, compensating, completed, failed, compensated or cancelled"
                            ),
                        )),
                    }
                }
            }
            "project_id" => f.project_id = Some(value.into_owned()),
            other => errs.push(FieldError::new(
                other,
                "is not a known parameter; use status, project_id, limit or cursor",
            )),
        }
    }
    if !errs.is_empty() {
        return Err(ApiError::invalid_query(errs));
    }
    let page = tasks.list_workflows(&f, after, limit).await?;
    Ok(AppJson(WorkflowList {
        workflows: page.items.into_iter().map(convert::workflow).collect(),
        total: page.total,
        next_cursor: page.next_after.map(|s| s.to_string()),
    }))
}
