//! `/api/v1/messages` and `/api/v1/requests`: direct messages to an agent
//! (by id, or any live agent of a type) and request-response.
//!
//! A message is an event on the recipient's inbox topic `inbox.{agent id}`
//! with `targetagent`, `sourceagent` and `correlationid` set; the agent
//! reads it by subscribing to its inbox (live, or replaying after an
//! offset). A request also carries `replyto` (`reply.{correlation id}`):
//! the agent answers by publishing an event on that topic, and the hub
//! hands it to the waiting requester. No reply in time is 408
//! `TASK_TIMEOUT`.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Map, Value, json};
use switchboard_bus::event::ext;
use switchboard_bus::{Accepted, Data, NewEvent, Pattern, Start, SubscriptionSpec};
use switchboard_core::{FieldErrors, ident};
use switchboard_registry::{AgentFilter, AgentQuery, AgentStatus, MAX_PAGE};
use switchboard_wire::{MessageSent, Problem, RequestReply, SendMessageRequest};

use crate::access::Caller;
use crate::convert;
use crate::error::ApiError;
use crate::extract::AppJson;
use crate::state::AppState;

/// The source of messages sent through these routes.
const SOURCE: &str = "/switchboard/messages";
/// How long a request waits for its reply when not told.
const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// The extension naming the topic a reply goes to.
pub(crate) const REPLY_TO: &str = "replyto";

/// Send a direct message to an agent's inbox (`inbox.{agent id}`).
#[utoipa::path(
    post,
    path = "/api/v1/messages",
    security(("bearer" = ["events:publish"])),
    tag = "messages",
    request_body = SendMessageRequest,
    responses(
        (status = 202, description = "Stored in the recipient's inbox", body = MessageSent),
        (status = 404, description = "No such agent", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each named", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No live agent of that type", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn send(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(body): AppJson<SendMessageRequest>,
) -> Result<(StatusCode, AppJson<MessageSent>), ApiError> {
    let mut msg = prepare(&state, body, false).await?;
    caller.stamp_publish(&state.auth, &mut msg.event)?;
    let (to, corr) = (msg.to.clone(), msg.correlation_id.clone());
    let accepted = state.bus.publish(vec![msg.event]).await?;
    let Some(Accepted::Stored(e)) = accepted.into_iter().next() else {
        return Err(ApiError::internal("a direct message was not stored"));
    };
    Ok((
        StatusCode::ACCEPTED,
        AppJson(MessageSent {
            id: e.id.clone(),
            to,
            topic: e.topic.clone(),
            offset: e.offset,
            correlation_id: corr,
        }),
    ))
}

/// Send a request to an agent and wait for its reply: the agent publishes
/// an event on the request's `replyto` topic. No reply within
/// `timeout_ms` is 408 `TASK_TIMEOUT`.
#[utoipa::path(
    post,
    path = "/api/v1/requests",
    security(("bearer" = ["events:publish"])),
    tag = "messages",
    request_body = SendMessageRequest,
    responses(
        (status = 200, description = "The reply", body = RequestReply),
        (status = 404, description = "No such agent", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "No reply in time (TASK_TIMEOUT)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each named", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The agent is not live", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn request(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(body): AppJson<SendMessageRequest>,
) -> Result<AppJson<RequestReply>, ApiError> {
    let mut msg = prepare(&state, body, true).await?;
    caller.stamp_publish(&state.auth, &mut msg.event)?;
    let reply_topic = format!("reply.{}", msg.correlation_id);
    let pattern = Pattern::parse(&reply_topic)
        .map_err(|r| ApiError::internal(format!("reply topic: {r}")))?;
    // Listening before the request is stored: the reply cannot be missed.
    let mut replies = state.bus.subscribe(SubscriptionSpec {
        patterns: vec![pattern],
        filter: Default::default(),
        start: Start::Now,
    });
    let started = tokio::time::Instant::now();
    state.bus.publish(vec![msg.event]).await?;
    let timeout = msg.timeout;
    match tokio::time::timeout(timeout, replies.next()).await {
        Ok(Ok(reply)) => Ok(AppJson(RequestReply {
            to: msg.to,
            correlation_id: msg.correlation_id,
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            reply: convert::cloud_event((*reply).clone()),
        })),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "TASK_TIMEOUT",
            format!(
                "agent {} did not reply within {} ms",
                msg.to,
                timeout.as_millis()
            ),
        )
        .with_details(json!({
            "agent_id": msg.to,
            "correlation_id": msg.correlation_id,
            "timeout_ms": u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        }))),
    }
}

struct Prepared {
    to: String,
    correlation_id: String,
    timeout: Duration,
    event: NewEvent,
}

/// Checks the body, finds the recipient, and builds the inbox event.
async fn prepare(
    state: &AppState,
    mut body: SendMessageRequest,
    is_request: bool,
) -> Result<Prepared, ApiError> {
    let mut errs = FieldErrors::new();
    let sealed = body.sealed.take();
    if let Some(s) = &sealed {
        sealed_fields(&mut body, s, is_request, &mut errs);
    }
    match (&body.to, &body.to_type) {
        (Some(_), Some(_)) | (None, None) => errs.push("to", "give to or to_type, not both"),
        (Some(id), None) => {
            if let Err(r) = ident::check(id) {
                errs.push("to", r);
            }
        }
        (None, Some(t)) => {
            if let Err(r) = ident::check(t) {
                errs.push("to_type", r);
            }
        }
    }
    if let Some(from) = &body.from
        && let Err(r) = ident::check(from)
    {
        errs.push("from", r);
    }
    if let Some(c) = &body.correlation_id
        && (c.is_empty()
            || c.len() > 128
            || !c
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | ':')))
    {
        errs.push(
            "correlation_id",
            "must be 1 to 128 letters, digits, '_', '-' or ':'",
        );
    }
    // A request must be answered within the HTTP request timeout.
    let ceiling = state
        .config
        .request_timeout
        .saturating_sub(Duration::from_millis(500));
    let timeout = Duration::from_millis(body.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS));
    if !is_request && body.timeout_ms.is_some() {
        errs.push("timeout_ms", "is for requests (POST /api/v1/requests)");
    } else if is_request && (timeout.is_zero() || timeout > ceiling) {
        errs.push(
            "timeout_ms",
            format!("must be from 1 to {} ms", ceiling.as_millis()),
        );
    }
    errs.finish().map_err(ApiError::validation)?;

    let to = match (body.to, body.to_type) {
        (Some(id), _) => {
            let agent = state.registry.get(&id).await?;
            if is_request && !live(agent.status) {
                return Err(unavailable(format!(
                    "agent {id} is {} and cannot answer a request",
                    agent.status.as_str()
                )));
            }
            id
        }
        (None, Some(t)) => least_loaded(state, &t).await?,
        (None, None) => return Err(ApiError::internal("recipient lost")),
    };
    let correlation_id = body
        .correlation_id
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let mut extensions = Map::new();
    extensions.insert(ext::TARGET_AGENT.into(), Value::String(to.clone()));
    extensions.insert(
        ext::CORRELATION_ID.into(),
        Value::String(correlation_id.clone()),
    );
    if let Some(from) = body.from {
        extensions.insert(ext::SOURCE_AGENT.into(), Value::String(from));
    }
    if is_request {
        extensions.insert(
            REPLY_TO.into(),
            Value::String(format!("reply.{correlation_id}")),
        );
    }
    let default_type = if is_request { "request" } else { "message" };
    let (datacontenttype, data) = match sealed {
        Some(s) => (
            switchboard_seal::CONTENT_TYPE.to_owned(),
            Some(Data::from(serde_json::to_value(&s).map_err(|e| {
                ApiError::internal(format!("a sealed message as JSON: {e}"))
            })?)),
        ),
        None => ("application/json".to_owned(), body.data.map(Data::from)),
    };
    let event = NewEvent {
        id: uuid::Uuid::now_v7().to_string(),
        source: SOURCE.to_owned(),
        event_type: body.message_type.unwrap_or_else(|| default_type.to_owned()),
        topic: format!("inbox.{to}"),
        subject: body.subject,
        time: None,
        datacontenttype,
        data,
        extensions,
    };
    Ok(Prepared {
        to,
        correlation_id,
        timeout,
        event,
    })
}

/// A sealed message names its recipient, sender and correlation id
/// itself: the body may repeat them, not contradict them.
fn sealed_fields(
    body: &mut SendMessageRequest,
    s: &switchboard_seal::SealedMessage,
    is_request: bool,
    errs: &mut FieldErrors,
) {
    if body.data.is_some() {
        errs.push("data", "give data or sealed, not both");
    }
    if body.to_type.take().is_some() {
        errs.push(
            "to_type",
            "a sealed message is sealed to one agent, named in sealed.to",
        );
    }
    for (field, given, sealed) in [
        ("to", &body.to, &s.to),
        ("from", &body.from, &s.from),
        ("correlation_id", &body.correlation_id, &s.correlation_id),
    ] {
        if given.as_ref().is_some_and(|g| g != sealed) {
            errs.push(field, format!("differs from sealed.{field}"));
        }
    }
    let kind = if is_request {
        switchboard_seal::Kind::Request
    } else {
        switchboard_seal::Kind::Message
    };
    if s.kind != kind {
        errs.push(
            "sealed.kind",
            format!("must be {} on this route", kind.as_str()),
        );
    }
    body.to = Some(s.to.clone());
    body.from = Some(s.from.clone());
    body.correlation_id = Some(s.correlation_id.clone());
}

fn live(s: AgentStatus) -> bool {
    matches!(
        s,
        AgentStatus::Active | AgentStatus::Idle | AgentStatus::Busy
    )
}

fn unavailable(detail: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "AGENT_UNAVAILABLE", detail).with_retry_after(5)
}

/// The live agent of `agent_type` with the most room (fewest tasks for
/// its capacity); ties go to a random one.
async fn least_loaded(state: &AppState, agent_type: &str) -> Result<String, ApiError> {
    let page = state
        .registry
        .list(&AgentQuery {
            filter: AgentFilter {
                agent_type: Some(agent_type.to_owned()),
                statuses: vec![AgentStatus::Active, AgentStatus::Idle, AgentStatus::Busy],
                capabilities: Vec::new(),
            },
            limit: MAX_PAGE,
            after: None,
        })
        .await?;
    let load = |a: &switchboard_registry::Agent| {
        f64::from(a.current_tasks) / f64::from(a.max_concurrent_tasks.unwrap_or(1).max(1))
    };
    let least = page.agents.iter().map(load).fold(f64::INFINITY, f64::min);
    let ties: Vec<&switchboard_registry::Agent> =
        page.agents.iter().filter(|a| load(a) <= least).collect();
    if ties.is_empty() {
        return Err(unavailable(format!(
            "no live agent of type {agent_type} is registered"
        )));
    }
    Ok(ties[fastrand::usize(..ties.len())].id.clone())
}
