//! `/api/v1/agents`: registration, heartbeats, discovery.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use switchboard_core::FieldError;
use switchboard_registry::{AgentFilter, AgentQuery, AgentStatus, MAX_PAGE, Registry};
use switchboard_wire::{
    Agent, AgentList, HeartbeatAck, HeartbeatRequest, Problem, RegisterAgentRequest,
};

use crate::convert;
use crate::error::ApiError;
use crate::extract::AppJson;

/// The page size when `limit` is absent.
const DEFAULT_PAGE: u32 = 50;

/// Register an agent, or update its registration (idempotent by id).
#[utoipa::path(
    post,
    path = "/api/v1/agents/register",
    tag = "agents",
    request_body = RegisterAgentRequest,
    responses(
        (status = 201, description = "Registered", body = Agent,
         headers(("Location" = String, description = "The agent's URL"))),
        (status = 200, description = "Registration updated", body = Agent),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each named", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn register(
    State(registry): State<Registry>,
    AppJson(body): AppJson<RegisterAgentRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let (agent, is_new) = registry.register(convert::registration(body)).await?;
    Ok(super::created(
        format!("/api/v1/agents/{}", agent.id),
        is_new,
        convert::agent(agent),
    ))
}

/// Record a heartbeat; brings a stale or offline agent back. A change of
/// status is stored before the answer; the time and figures of a heartbeat
/// are written behind within `registry.flush_interval`.
#[utoipa::path(
    post,
    path = "/api/v1/agents/{id}/heartbeat",
    tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    request_body = HeartbeatRequest,
    responses(
        (status = 200, description = "Recorded", body = HeartbeatAck),
        (status = 404, description = "No such agent", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each named", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn heartbeat(
    State(registry): State<Registry>,
    Path(id): Path<String>,
    AppJson(body): AppJson<HeartbeatRequest>,
) -> Result<Json<HeartbeatAck>, ApiError> {
    let ack = registry.heartbeat(&id, convert::heartbeat(body)).await?;
    Ok(Json(convert::ack(ack)))
}

/// One agent.
#[utoipa::path(
    get,
    path = "/api/v1/agents/{id}",
    tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    responses(
        (status = 200, description = "The agent", body = Agent),
        (status = 404, description = "No such agent", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get(
    State(registry): State<Registry>,
    Path(id): Path<String>,
) -> Result<Json<Agent>, ApiError> {
    Ok(Json(convert::agent(registry.get(&id).await?)))
}

/// Remove an agent.
#[utoipa::path(
    delete,
    path = "/api/v1/agents/{id}",
    tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such agent", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn remove(
    State(registry): State<Registry>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    registry.remove(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Find agents. Filters combine with AND; `capability` may repeat (or be
/// comma-separated) and every capability given must match.
#[utoipa::path(
    get,
    path = "/api/v1/agents",
    tag = "agents",
    params(
        ("type" = Option<String>, Query, description = "Only agents of this type"),
        ("status" = Option<String>, Query, description = "Only agents in these statuses (comma-separated or repeated)"),
        ("capability" = Option<Vec<String>>, Query, description = "Only agents with all these capabilities (comma-separated or repeated)"),
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 1000 (default 50)"),
        ("cursor" = Option<String>, Query, description = "The next_cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of agents, ordered by id", body = AgentList),
        (status = 400, description = "Invalid query parameters, each named", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list(
    State(registry): State<Registry>,
    RawQuery(query): RawQuery,
) -> Result<Json<AgentList>, ApiError> {
    let q = parse_query(query.as_deref().unwrap_or(""))?;
    let page = registry.list(&q).await?;
    Ok(Json(AgentList {
        agents: page.agents.into_iter().map(convert::agent).collect(),
        total: page.total,
        next_cursor: page.next_after,
    }))
}

fn parse_query(raw: &str) -> Result<AgentQuery, ApiError> {
    let mut q = AgentQuery {
        filter: AgentFilter::default(),
        limit: DEFAULT_PAGE,
        after: None,
    };
    let mut errs = Vec::new();
    for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
        let values = || value.split(',').map(str::trim).filter(|v| !v.is_empty());
        match key.as_ref() {
            "type" => q.filter.agent_type = Some(value.to_string()),
            "status" => {
                for v in values() {
                    match AgentStatus::parse(v) {
                        Some(s) => q.filter.statuses.push(s),
                        None => errs.push(FieldError::new(
                            "status",
                            format!(
                                "{v:?} is not a status; use active, idle, busy, draining, stale or offline"
                            ),
                        )),
                    }
                }
            }
            "capability" | "capabilities" => {
                q.filter.capabilities.extend(values().map(str::to_owned));
            }
            "limit" => match value.parse::<u32>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => q.limit = n,
                _ => errs.push(FieldError::new(
                    "limit",
                    format!("must be a whole number from 1 to {MAX_PAGE}"),
                )),
            },
            "cursor" => q.after = Some(value.to_string()),
            other => errs.push(FieldError::new(
                other,
                "is not a known parameter; use type, status, capability, limit or cursor",
            )),
        }
    }
    if errs.is_empty() {
        Ok(q)
    } else {
        Err(ApiError::invalid_query(errs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_filters() {
        let q =
            parse_query("type=t&status=active,idle&capability=a&capability=b,c&limit=2&cursor=x")
                .expect("valid");
        assert_eq!(q.filter.agent_type.as_deref(), Some("t"));
        assert_eq!(q.filter.statuses, [AgentStatus::Active, AgentStatus::Idle]);
        assert_eq!(q.filter.capabilities, ["a", "b", "c"]);
        assert_eq!((q.limit, q.after.as_deref()), (2, Some("x")));
    }

    #[test]
    fn names_bad_parameters() {
        let e = parse_query("status=zombie&limit=0&colour=red").expect_err("invalid");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }
}
