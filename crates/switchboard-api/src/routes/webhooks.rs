//! `/api/v1/webhooks` (outbound, signed) and `/api/v1/hooks` (inbound,
//! verified).

use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use switchboard_gateway::Gateway;
use switchboard_gateway::webhooks::{HookSpec, WebhookSpec, new_secret};
use switchboard_wire::{
    Hook, HookConfig, HookList, HookReceived, Problem, Webhook, WebhookConfig, WebhookDelivery,
    WebhookDeliveryList, WebhookList,
};

use crate::convert::time;
use crate::error::ApiError;
use crate::extract::{AppJson, RawBody};

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn webhook_wire(s: WebhookSpec, show_secret: bool) -> Webhook {
    Webhook {
        group: format!("webhook-{}", s.name),
        name: s.name,
        url: s.url,
        topics: s.topics,
        filter: s.filter,
        max_attempts: s.max_attempts,
        retry_after_ms: ms(s.retry_after),
        timeout_ms: ms(s.timeout),
        secret: show_secret.then_some(s.secret),
    }
}

/// Every outbound webhook (without secrets).
#[utoipa::path(
    get,
    path = "/api/v1/webhooks",
    security(("bearer" = ["gateway:read"])),
    tag = "webhooks",
    responses((status = 200, description = "By name", body = WebhookList))
)]
pub(crate) async fn list_webhooks(State(gateway): State<Gateway>) -> AppJson<WebhookList> {
    AppJson(WebhookList {
        webhooks: gateway
            .webhooks()
            .outbound()
            .into_iter()
            .map(|w| webhook_wire(w, false))
            .collect(),
    })
}

/// Create or replace an outbound webhook: events on its topics are posted
/// to its URL, signed per Standard Webhooks, retried with exponential
/// backoff and dead-lettered after `max_attempts` (in the consumer group
/// the answer names). The secret is in this answer only.
#[utoipa::path(
    put,
    path = "/api/v1/webhooks/{name}",
    security(("bearer" = ["gateway:manage"])),
    tag = "webhooks",
    params(("name" = String, Path, description = "Webhook name")),
    request_body = WebhookConfig,
    responses(
        (status = 200, description = "Set; with its secret", body = Webhook),
        (status = 422, description = "Invalid fields, each named", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn put_webhook(
    State(gateway): State<Gateway>,
    Path(name): Path<String>,
    AppJson(c): AppJson<WebhookConfig>,
) -> Result<AppJson<Webhook>, ApiError> {
    let spec = WebhookSpec {
        name,
        url: c.url,
        topics: c.topics,
        filter: c.filter.unwrap_or_default(),
        secret: c.secret.unwrap_or_else(new_secret),
        max_attempts: c.max_attempts.unwrap_or(8),
        retry_after: Duration::from_millis(c.retry_after_ms.unwrap_or(1000)),
        timeout: Duration::from_millis(c.timeout_ms.unwrap_or(10_000)),
    };
    Ok(AppJson(webhook_wire(
        gateway.put_webhook(spec).await?,
        true,
    )))
}

/// Remove an outbound webhook with what was waiting to be delivered.
#[utoipa::path(
    delete,
    path = "/api/v1/webhooks/{name}",
    security(("bearer" = ["gateway:manage"])),
    tag = "webhooks",
    params(("name" = String, Path, description = "Webhook name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such webhook", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete_webhook(
    State(gateway): State<Gateway>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    gateway.delete_webhook(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A webhook's delivery log: each attempt, newest first (`limit`, default
/// 100, at most 1000).
#[utoipa::path(
    get,
    path = "/api/v1/webhooks/{name}/deliveries",
    security(("bearer" = ["gateway:read"])),
    tag = "webhooks",
    params(
        ("name" = String, Path, description = "Webhook name"),
        ("limit" = Option<u32>, Query, description = "At most this many, 1 to 1000"),
    ),
    responses(
        (status = 200, description = "Newest first", body = WebhookDeliveryList),
        (status = 404, description = "No such webhook", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn deliveries(
    State(gateway): State<Gateway>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<AppJson<WebhookDeliveryList>, ApiError> {
    let mut limit = 100;
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match (&*k, v.parse::<u32>()) {
            ("limit", Ok(n)) if (1..=1000).contains(&n) => limit = n,
            ("limit", _) => {
                return Err(ApiError::invalid_query(vec![
                    switchboard_core::FieldError::new("limit", "must be 1 to 1000"),
                ]));
            }
            (other, _) => {
                return Err(ApiError::invalid_query(vec![
                    switchboard_core::FieldError::new(other, "unknown parameter; use limit"),
                ]));
            }
        }
    }
    let list = gateway.deliveries(&name, limit).await?;
    Ok(AppJson(WebhookDeliveryList {
        deliveries: list
            .into_iter()
            .map(|d| WebhookDelivery {
                offset: d.offset,
                event_id: d.event_id,
                attempt: d.attempt,
                at: time(d.at),
                status: d.status,
                error: d.error,
                duration_ms: d.duration_ms,
            })
            .collect(),
    }))
}

fn hook_wire(h: HookSpec, show_secret: bool) -> Hook {
    Hook {
        url: format!("/api/v1/hooks/{}", h.name),
        name: h.name,
        topic: h.topic,
        tolerance_ms: ms(h.tolerance),
        secret: show_secret.then_some(h.secret),
    }
}

/// Every inbound hook (without secrets).
#[utoipa::path(
    get,
    path = "/api/v1/hooks",
    security(("bearer" = ["gateway:read"])),
    tag = "webhooks",
    responses((status = 200, description = "By name", body = HookList))
)]
pub(crate) async fn list_hooks(State(gateway): State<Gateway>) -> AppJson<HookList> {
    AppJson(HookList {
        hooks: gateway
            .webhooks()
            .inbound()
            .into_iter()
            .map(|h| hook_wire(h, false))
            .collect(),
    })
}

/// Create or replace an inbound hook. The secret (given, or made) is in
/// this answer only.
#[utoipa::path(
    put,
    path = "/api/v1/hooks/{name}",
    security(("bearer" = ["gateway:manage"])),
    tag = "webhooks",
    params(("name" = String, Path, description = "Hook name")),
    request_body = HookConfig,
    responses(
        (status = 200, description = "Set; with its secret", body = Hook),
        (status = 422, description = "Invalid fields, each named", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn put_hook(
    State(gateway): State<Gateway>,
    Path(name): Path<String>,
    AppJson(c): AppJson<HookConfig>,
) -> Result<AppJson<Hook>, ApiError> {
    let spec = HookSpec {
        name,
        secret: c.secret.unwrap_or_else(new_secret),
        topic: c.topic,
        tolerance: Duration::from_millis(c.tolerance_ms.unwrap_or(300_000)),
    };
    Ok(AppJson(hook_wire(gateway.put_hook(spec).await?, true)))
}

/// Remove an inbound hook.
#[utoipa::path(
    delete,
    path = "/api/v1/hooks/{name}",
    security(("bearer" = ["gateway:manage"])),
    tag = "webhooks",
    params(("name" = String, Path, description = "Hook name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such hook", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete_hook(
    State(gateway): State<Gateway>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    gateway.delete_hook(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Receive a webhook (Standard Webhooks): accepted only with a valid
/// `webhook-signature` and a `webhook-timestamp` within the hook's
/// tolerance; published on the hook's topic with `webhook-id` as the
/// event's id, so a repeat is answered without being published twice.
#[utoipa::path(
    post,
    path = "/api/v1/hooks/{name}",
    security(()),
    tag = "webhooks",
    params(("name" = String, Path, description = "Hook name")),
    request_body(content = Object, description = "Any body; JSON is published as JSON"),
    responses(
        (status = 202, description = "Published (or a repeat of one)", body = HookReceived),
        (status = 401, description = "Bad signature, old timestamp or missing headers (HOOK_SIGNATURE_INVALID)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such hook", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn receive_hook(
    State(gateway): State<Gateway>,
    Path(name): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<(StatusCode, AppJson<HookReceived>), ApiError> {
    let r = gateway.receive_hook(&name, &headers, &body).await?;
    Ok((
        StatusCode::ACCEPTED,
        AppJson(HookReceived {
            id: r.id,
            topic: r.topic,
            offset: r.offset,
        }),
    ))
}
