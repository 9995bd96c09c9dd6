//! `/api/v1/agents`: registration, heartbeats, discovery.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use switchboard_auth::{AclTemplate, Auth};
use switchboard_core::FieldError;
use switchboard_registry::{AgentFilter, AgentQuery, AgentStatus, MAX_PAGE, Registry};
use switchboard_wire::{
    Agent, AgentCredentials, AgentList, HeartbeatAck, HeartbeatRequest, Problem,
    RegisterAgentRequest, RotateCredentialsRequest, TopicAcl,
};

use crate::access::Caller;
use crate::convert;
use crate::error::ApiError;
use crate::extract::{AppJson, RawBody};

/// Where agents exchange their credentials for a token.
const TOKEN_ENDPOINT: &str = "/api/v1/auth/token";

/// The page size when `limit` is absent.
const DEFAULT_PAGE: u32 = 50;

/// Register an agent, or update its registration (idempotent by id). The
/// answer that first registers an agent (or finds it without working
/// credentials) carries its client credentials, shown this once. An agent
/// may update only its own registration.
#[utoipa::path(
    post,
    path = "/api/v1/agents/register",
    security(("bearer" = ["agents:write"])),
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
    State(auth): State<Auth>,
    caller: Caller,
    AppJson(body): AppJson<RegisterAgentRequest>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_self_or_staff(&body.id, "register")?;
    let (agent, is_new) = registry.register(convert::registration(body)).await?;
    let secret = auth.ensure_credentials(&agent.id).await?;
    let mut wire = convert::agent(agent);
    wire.credentials = secret.map(|client_secret| AgentCredentials {
        client_id: wire.id.clone(),
        client_secret,
        token_endpoint: TOKEN_ENDPOINT.into(),
        previous_valid_until: None,
    });
    Ok(super::created(
        format!("/api/v1/agents/{}", wire.id),
        is_new,
        wire,
    ))
}

/// Record a heartbeat; brings a stale or offline agent back. A change of
/// status is stored before the answer; the time and figures of a heartbeat
/// are written behind within `registry.flush_interval`.
#[utoipa::path(
    post,
    path = "/api/v1/agents/{id}/heartbeat",
    security(("bearer" = ["agents:write"])),
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
    caller: Caller,
    Path(id): Path<String>,
    AppJson(body): AppJson<HeartbeatRequest>,
) -> Result<AppJson<HeartbeatAck>, ApiError> {
    caller.require_self_or_staff(&id, "heartbeat for")?;
    let ack = registry.heartbeat(&id, convert::heartbeat(body)).await?;
    Ok(AppJson(convert::ack(ack)))
}

/// One agent.
#[utoipa::path(
    get,
    path = "/api/v1/agents/{id}",
    security(("bearer" = ["agents:read"])),
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
) -> Result<AppJson<Agent>, ApiError> {
    Ok(AppJson(convert::agent(registry.get(&id).await?)))
}

/// Remove an agent.
#[utoipa::path(
    delete,
    path = "/api/v1/agents/{id}",
    security(("bearer" = ["agents:write"])),
    tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such agent", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn remove(
    State(registry): State<Registry>,
    State(auth): State<Auth>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_self_or_staff(&id, "remove")?;
    registry.remove(&id).await?;
    auth.remove_credentials(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Rotate the agent's client secret: the answer carries the new one
/// (shown once); the ones before keep working for `grace_seconds`
/// (`auth.secret_grace` by default), then stop.
#[utoipa::path(
    post,
    path = "/api/v1/agents/{id}/credentials",
    security(("bearer" = ["agents:write"])),
    tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    request_body(content = RotateCredentialsRequest, description = "Optional"),
    responses(
        (status = 201, description = "The new secret", body = AgentCredentials),
        (status = 403, description = "Another agent's credentials", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such agent", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn rotate_credentials(
    State(registry): State<Registry>,
    State(auth): State<Auth>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<(StatusCode, AppJson<AgentCredentials>), ApiError> {
    caller.require_self_or_staff(&id, "rotate the credentials of")?;
    let req: RotateCredentialsRequest = super::auth::optional_json(&headers, &body)?;
    registry.get(&id).await?;
    let grace = req.grace_seconds.map(std::time::Duration::from_secs);
    let (client_secret, until) = auth.rotate_secret(&id, grace).await?;
    Ok((
        StatusCode::CREATED,
        AppJson(AgentCredentials {
            client_id: id,
            client_secret,
            token_endpoint: TOKEN_ENDPOINT.into(),
            previous_valid_until: Some(convert::time(until)),
        }),
    ))
}

/// Revoke the agent's credentials: every client secret and every token
/// issued to it stops working at once. Rotate to issue new ones.
#[utoipa::path(
    delete,
    path = "/api/v1/agents/{id}/credentials",
    security(("bearer" = ["agents:write"])),
    tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, description = "Another agent's credentials", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The agent has no credentials", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn revoke_credentials(
    State(auth): State<Auth>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_self_or_staff(&id, "revoke the credentials of")?;
    auth.revoke_credentials(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The topics the agent may publish and subscribe to.
#[utoipa::path(
    get,
    path = "/api/v1/agents/{id}/acl",
    security(("bearer" = ["agents:read"])),
    tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    responses(
        (status = 200, description = "The ACL (the hub's default unless one was set)", body = TopicAcl),
        (status = 404, description = "No such agent", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_acl(
    State(registry): State<Registry>,
    State(auth): State<Auth>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<AppJson<TopicAcl>, ApiError> {
    caller.require_self_or_staff(&id, "read the ACL of")?;
    registry.get(&id).await?;
    let a = auth.acl(&id);
    Ok(AppJson(TopicAcl {
        publish: a.publish,
        subscribe: a.subscribe,
    }))
}

/// Set the topics the agent may publish and subscribe to (patterns;
/// `{agent_id}` stands for its id). Takes effect on its next request.
#[utoipa::path(
    put,
    path = "/api/v1/agents/{id}/acl",
    security(("bearer" = ["agents:write"])),
    tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    request_body = TopicAcl,
    responses(
        (status = 200, description = "Set", body = TopicAcl),
        (status = 403, description = "Agents may not change ACLs", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such agent", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid patterns, each named", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn set_acl(
    State(registry): State<Registry>,
    State(auth): State<Auth>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<AppJson<TopicAcl>, ApiError> {
    // Refused before the body is read: no body makes it allowed.
    caller.require_not_agent("change topic ACLs")?;
    let body: TopicAcl = crate::extract::json_body(&headers, &body)?;
    registry.get(&id).await?;
    let a = auth
        .set_acl(
            &id,
            Some(AclTemplate {
                publish: body.publish,
                subscribe: body.subscribe,
            }),
        )
        .await?;
    Ok(AppJson(TopicAcl {
        publish: a.publish,
        subscribe: a.subscribe,
    }))
}

/// Find agents. Filters combine with AND; `capability` may repeat (or be
/// comma-separated) and every capability given must match.
#[utoipa::path(
    get,
    path = "/api/v1/agents",
    security(("bearer" = ["agents:read"])),
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
) -> Result<AppJson<AgentList>, ApiError> {
    let q = parse_query(query.as_deref().unwrap_or(""))?;
    let page = registry.list(&q).await?;
    Ok(AppJson(AgentList {
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
