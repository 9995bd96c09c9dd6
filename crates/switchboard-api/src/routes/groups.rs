//! `/api/v1/groups`: consumer groups (durable named subscriptions), pull
//! consumers, acknowledgements and dead letters. Push consumers use the
//! WebSocket (`consume`).

use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use switchboard_bus::groups::{self as bus_groups, GroupSpec, Groups, Outcome};
use switchboard_bus::{BusError, Pattern};
use switchboard_core::{FieldError, FieldErrors};
use switchboard_wire::{
    CreateGroupRequest, DeadLetter, DeadLetterCount, DeadLetterPage, Group, GroupList, Problem,
    PullRequest, PullResponse, ReplayRequest, SettleRequest, SettleResponse,
};

use crate::access::Caller;
use crate::convert;
use crate::error::ApiError;
use crate::extract::AppJson;

/// The longest a pull may wait.
const MAX_PULL_WAIT_MS: u64 = 20_000;
/// The most deliveries one pull returns.
const MAX_PULL: u32 = 1000;
/// The most offsets settled in one call.
const MAX_SETTLE: usize = 1000;

/// Create a consumer group. Creating one again with the same settings
/// answers 200; with other settings, 409.
#[utoipa::path(
    put,
    path = "/api/v1/groups/{name}",
    security(("bearer" = ["events:subscribe"])),
    tag = "groups",
    params(("name" = String, Path, description = "Group name")),
    request_body = CreateGroupRequest,
    responses(
        (status = 201, description = "Created", body = Group),
        (status = 200, description = "Exists with these settings", body = Group),
        (status = 409, description = "Exists with other settings", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each named", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn create_group(
    State(groups): State<Groups>,
    caller: Caller,
    Path(name): Path<String>,
    AppJson(body): AppJson<CreateGroupRequest>,
) -> Result<(StatusCode, AppJson<Group>), ApiError> {
    let (spec, start) = spec_from(name, body)?;
    caller.may_subscribe_all(&spec.patterns)?;
    let (info, created) = groups.create(spec, start).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, AppJson(convert::group(info))))
}

/// Every consumer group.
#[utoipa::path(
    get,
    path = "/api/v1/groups",
    security(("bearer" = ["events:subscribe"])),
    tag = "groups",
    responses((status = 200, description = "Groups by name", body = GroupList))
)]
pub(crate) async fn list_groups(
    State(groups): State<Groups>,
    caller: Caller,
) -> Result<AppJson<GroupList>, ApiError> {
    let mut all = groups.list().await?;
    // An agent sees the groups its ACL lets it use.
    all.retain(|g| caller.may_subscribe_all(&g.spec.patterns).is_ok());
    Ok(AppJson(GroupList {
        groups: all.into_iter().map(convert::group).collect(),
    }))
}

/// One consumer group, with its counts.
#[utoipa::path(
    get,
    path = "/api/v1/groups/{name}",
    security(("bearer" = ["events:subscribe"])),
    tag = "groups",
    params(("name" = String, Path, description = "Group name")),
    responses(
        (status = 200, description = "The group", body = Group),
        (status = 404, description = "No such group", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_group(
    State(groups): State<Groups>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<AppJson<Group>, ApiError> {
    caller.may_use_group(&groups, &name).await?;
    Ok(AppJson(convert::group(groups.get(&name).await?)))
}

/// Delete a consumer group with its pending events and dead letters.
#[utoipa::path(
    delete,
    path = "/api/v1/groups/{name}",
    security(("bearer" = ["events:manage"])),
    tag = "groups",
    params(("name" = String, Path, description = "Group name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such group", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete_group(
    State(groups): State<Groups>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    groups.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Take deliveries: waits up to `wait_ms` for the first, answers with up
/// to `max`. Each must be acknowledged (`ack`) before its deadline or it
/// is delivered again.
#[utoipa::path(
    post,
    path = "/api/v1/groups/{name}/pull",
    security(("bearer" = ["events:subscribe"])),
    tag = "groups",
    params(("name" = String, Path, description = "Group name")),
    request_body = PullRequest,
    responses(
        (status = 200, description = "Deliveries, possibly none", body = PullResponse),
        (status = 404, description = "No such group", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each named", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn pull(
    State(groups): State<Groups>,
    caller: Caller,
    Path(name): Path<String>,
    AppJson(body): AppJson<PullRequest>,
) -> Result<AppJson<PullResponse>, ApiError> {
    caller.may_use_group(&groups, &name).await?;
    let mut errs = FieldErrors::new();
    let max = body.max.unwrap_or(1);
    if !(1..=MAX_PULL).contains(&max) {
        errs.push("max", format!("must be from 1 to {MAX_PULL}"));
    }
    let wait = body.wait_ms.unwrap_or(0);
    if wait > MAX_PULL_WAIT_MS {
        errs.push("wait_ms", format!("must be at most {MAX_PULL_WAIT_MS}"));
    }
    errs.finish().map_err(ApiError::validation)?;
    let got = groups.pull(&name, max, Duration::from_millis(wait)).await?;
    Ok(AppJson(PullResponse {
        deliveries: got.into_iter().map(convert::delivery).collect(),
    }))
}

async fn settle_all(
    groups: &Groups,
    name: &str,
    body: SettleRequest,
    nack: bool,
) -> Result<SettleResponse, ApiError> {
    let mut errs = FieldErrors::new();
    if body.offsets.is_empty() || body.offsets.len() > MAX_SETTLE {
        errs.push("offsets", format!("must hold 1 to {MAX_SETTLE} offsets"));
    }
    if !nack && (body.error.is_some() || body.delay_ms.is_some()) {
        errs.push("error", "error and delay_ms are for nack");
    }
    if body.delay_ms.is_some_and(|d| d > 86_400_000) {
        errs.push("delay_ms", "must be at most 24 hours");
    }
    if body.error.as_ref().is_some_and(|e| e.len() > 4096) {
        errs.push("error", "must be at most 4096 bytes");
    }
    errs.finish().map_err(ApiError::validation)?;
    let outcome = if nack {
        Outcome::Nack {
            error: body
                .error
                .clone()
                .unwrap_or_else(|| "refused by the consumer".to_owned()),
            delay: body.delay_ms.map(Duration::from_millis),
        }
    } else {
        Outcome::Ack
    };
    let results = groups
        .settle_many(name, body.offsets.clone(), outcome)
        .await?;
    let mut out = SettleResponse::default();
    for (offset, r) in body.offsets.into_iter().zip(results) {
        match r {
            Ok(()) => out.settled.push(offset),
            Err(BusError::NotPending(_)) => out.not_pending.push(offset),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// Acknowledge deliveries: they are never delivered again. Offsets not
/// pending are listed, not an error (an acknowledgement may be repeated).
#[utoipa::path(
    post,
    path = "/api/v1/groups/{name}/ack",
    security(("bearer" = ["events:subscribe"])),
    tag = "groups",
    params(("name" = String, Path, description = "Group name")),
    request_body = SettleRequest,
    responses(
        (status = 200, description = "What was settled", body = SettleResponse),
        (status = 404, description = "No such group", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each named", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn ack(
    State(groups): State<Groups>,
    caller: Caller,
    Path(name): Path<String>,
    AppJson(body): AppJson<SettleRequest>,
) -> Result<AppJson<SettleResponse>, ApiError> {
    caller.may_use_group(&groups, &name).await?;
    Ok(AppJson(settle_all(&groups, &name, body, false).await?))
}

/// Refuse deliveries: each is delivered again after the group's backoff
/// (or `delay_ms`), or dead-lettered once it has had `max_deliveries`.
#[utoipa::path(
    post,
    path = "/api/v1/groups/{name}/nack",
    security(("bearer" = ["events:subscribe"])),
    tag = "groups",
    params(("name" = String, Path, description = "Group name")),
    request_body = SettleRequest,
    responses(
        (status = 200, description = "What was settled", body = SettleResponse),
        (status = 404, description = "No such group", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each named", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn nack(
    State(groups): State<Groups>,
    caller: Caller,
    Path(name): Path<String>,
    AppJson(body): AppJson<SettleRequest>,
) -> Result<AppJson<SettleResponse>, ApiError> {
    caller.may_use_group(&groups, &name).await?;
    Ok(AppJson(settle_all(&groups, &name, body, true).await?))
}

/// A group's dead letters, oldest first: `after` (an offset) and `limit`
/// page through them.
#[utoipa::path(
    get,
    path = "/api/v1/groups/{name}/dead-letters",
    security(("bearer" = ["events:subscribe"])),
    tag = "groups",
    params(
        ("name" = String, Path, description = "Group name"),
        ("after" = Option<u64>, Query, description = "Only offsets after this"),
        ("limit" = Option<u32>, Query, description = "At most this many (1 to 1000, default 100)"),
    ),
    responses(
        (status = 200, description = "A page of dead letters", body = DeadLetterPage),
        (status = 400, description = "Bad query", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such group", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list_dead_letters(
    State(groups): State<Groups>,
    caller: Caller,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<AppJson<DeadLetterPage>, ApiError> {
    caller.may_use_group(&groups, &name).await?;
    let mut after = 0u64;
    let mut limit = 100u32;
    let mut errs = Vec::new();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "after" => match v.parse() {
                Ok(a) => after = a,
                Err(_) => errs.push(FieldError::new("after", "must be an offset")),
            },
            "limit" => match v.parse::<u32>() {
                Ok(n) if (1..=bus_groups::MAX_DEAD_LETTER_PAGE).contains(&n) => limit = n,
                _ => errs.push(FieldError::new("limit", "must be from 1 to 1000")),
            },
            other => errs.push(FieldError::new(other, "is not a parameter of this route")),
        }
    }
    if !errs.is_empty() {
        return Err(ApiError::invalid_query(errs));
    }
    let page = groups.dead_letters(&name, after, limit).await?;
    let next_after = (page.len() == limit as usize)
        .then(|| page.last().map(|d| d.offset))
        .flatten();
    Ok(AppJson(DeadLetterPage {
        dead_letters: page.into_iter().map(convert::dead_letter).collect(),
        next_after,
    }))
}

/// One dead letter, with its attempts and last error.
#[utoipa::path(
    get,
    path = "/api/v1/groups/{name}/dead-letters/{offset}",
    security(("bearer" = ["events:subscribe"])),
    tag = "groups",
    params(
        ("name" = String, Path, description = "Group name"),
        ("offset" = u64, Path, description = "The event's offset"),
    ),
    responses(
        (status = 200, description = "The dead letter", body = DeadLetter),
        (status = 404, description = "No such group or dead letter", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_dead_letter(
    State(groups): State<Groups>,
    caller: Caller,
    Path((name, offset)): Path<(String, String)>,
) -> Result<AppJson<DeadLetter>, ApiError> {
    caller.may_use_group(&groups, &name).await?;
    let offset: u64 = offset.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_PATH",
            "the offset in the path must be a whole number",
        )
        .with_fields(vec![FieldError::new("offset", "must be a whole number")])
    })?;
    Ok(AppJson(convert::dead_letter(
        groups.dead_letter(&name, offset).await?,
    )))
}

/// Replay dead letters (those listed, or all) into the group: each is
/// delivered again with a fresh count of deliveries.
#[utoipa::path(
    post,
    path = "/api/v1/groups/{name}/dead-letters/replay",
    security(("bearer" = ["events:manage"])),
    tag = "groups",
    params(("name" = String, Path, description = "Group name")),
    request_body = ReplayRequest,
    responses(
        (status = 200, description = "How many were replayed", body = DeadLetterCount),
        (status = 404, description = "No such group", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn replay_dead_letters(
    State(groups): State<Groups>,
    Path(name): Path<String>,
    AppJson(body): AppJson<ReplayRequest>,
) -> Result<AppJson<DeadLetterCount>, ApiError> {
    check_offsets(body.offsets.as_deref())?;
    let count = groups.replay(&name, body.offsets).await?;
    Ok(AppJson(DeadLetterCount { count }))
}

/// Purge dead letters (those listed, or all).
#[utoipa::path(
    post,
    path = "/api/v1/groups/{name}/dead-letters/purge",
    security(("bearer" = ["events:manage"])),
    tag = "groups",
    params(("name" = String, Path, description = "Group name")),
    request_body = ReplayRequest,
    responses(
        (status = 200, description = "How many were purged", body = DeadLetterCount),
        (status = 404, description = "No such group", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn purge_dead_letters(
    State(groups): State<Groups>,
    Path(name): Path<String>,
    AppJson(body): AppJson<ReplayRequest>,
) -> Result<AppJson<DeadLetterCount>, ApiError> {
    check_offsets(body.offsets.as_deref())?;
    let count = groups.purge(&name, body.offsets).await?;
    Ok(AppJson(DeadLetterCount { count }))
}

fn check_offsets(offsets: Option<&[u64]>) -> Result<(), ApiError> {
    if let Some(list) = offsets
        && (list.is_empty() || list.len() > MAX_SETTLE)
    {
        return Err(ApiError::validation(vec![FieldError::new(
            "offsets",
            format!("must hold 1 to {MAX_SETTLE} offsets, or be left out for all"),
        )]));
    }
    Ok(())
}

/// Parses a group's topic patterns, naming each bad one.
pub(crate) fn patterns(topics: &[String], errs: &mut FieldErrors) -> Vec<Pattern> {
    let mut out = Vec::new();
    for (i, t) in topics.iter().enumerate() {
        match Pattern::parse(t) {
            Ok(p) => out.push(p),
            Err(r) => errs.push(format!("topics[{i}]"), r),
        }
    }
    out
}

/// The spec a request asks for, with every bad field named.
pub(crate) fn spec_from(
    name: String,
    body: CreateGroupRequest,
) -> Result<(GroupSpec, bus_groups::GroupStart), ApiError> {
    let mut errs = FieldErrors::new();
    let pats = patterns(&body.topics, &mut errs);
    let mut spec = GroupSpec::new(name, pats);
    if let Some(f) = body.filter {
        spec.filter = f;
    }
    if let Some(ms) = body.ack_wait_ms {
        spec.ack_wait = Duration::from_millis(ms);
    }
    if let Some(n) = body.max_deliveries {
        spec.max_deliveries = n;
    }
    if let Some(n) = body.max_pending {
        spec.max_pending = n;
    }
    if let Some(b) = body.backoff {
        match b.kind.parse() {
            Ok(kind) => spec.backoff.kind = kind,
            Err(r) => errs.push("backoff.kind", r),
        }
        spec.backoff.initial = Duration::from_millis(b.initial_ms);
        spec.backoff.max = Duration::from_millis(b.max_ms);
        spec.backoff.jitter = b.jitter;
    }
    spec.check(&mut errs);
    errs.finish().map_err(ApiError::validation)?;
    use switchboard_wire::{GroupStart as W, StartName};
    let start = match body.start {
        None | Some(W::Named(StartName::Now)) => bus_groups::GroupStart::Now,
        Some(W::Named(StartName::Earliest)) => bus_groups::GroupStart::Earliest,
        Some(W::After(o)) => bus_groups::GroupStart::After(o),
    };
    Ok((spec, start))
}
