//! `/api/v1/audit`: the audit log and the check of its chain.

use axum::extract::{RawQuery, State};
use switchboard_auth::{AuditQuery, Auth};
use switchboard_core::FieldError;
use switchboard_wire::{AuditBreak, AuditPage, AuditRecord, AuditVerification, Problem};

use crate::convert::time;
use crate::error::ApiError;
use crate::extract::AppJson;

/// The largest page.
const MAX_PAGE: u32 = 1000;

/// Read the audit log, oldest first: every mutating call, every refused
/// credential and every refused permission, with who, what, when, from
/// where and how it ended.
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    security(("bearer" = ["admin"])),
    tag = "audit",
    params(
        ("after" = Option<u64>, Query, description = "Only records after this seq (the next_after of the previous page)"),
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 1000 (default 100)"),
        ("principal" = Option<String>, Query, description = "Only this principal's records"),
    ),
    responses(
        (status = 200, description = "A page", body = AuditPage),
        (status = 400, description = "Bad query", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list_audit(
    State(auth): State<Auth>,
    RawQuery(query): RawQuery,
) -> Result<AppJson<AuditPage>, ApiError> {
    let mut q = AuditQuery {
        after: 0,
        limit: 100,
        principal: None,
    };
    let mut errs = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "after" => match v.parse() {
                Ok(n) => q.after = n,
                Err(_) => errs.push(FieldError::new("after", "must be a whole number")),
            },
            "limit" => match v.parse::<u32>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => q.limit = n,
                _ => errs.push(FieldError::new("limit", format!("must be 1 to {MAX_PAGE}"))),
            },
            "principal" => q.principal = Some(v.into_owned()),
            other => errs.push(FieldError::new(other, "unknown parameter")),
        }
    }
    if !errs.is_empty() {
        return Err(ApiError::invalid_query(errs));
    }
    let records = auth.audit().read(&q).await?;
    let next_after = (records.len() == q.limit as usize)
        .then(|| records.last().map(|r| r.seq))
        .flatten();
    Ok(AppJson(AuditPage {
        records: records.into_iter().map(record).collect(),
        next_after,
    }))
}

fn record(r: switchboard_auth::AuditRecord) -> AuditRecord {
    let e = r.entry;
    AuditRecord {
        seq: r.seq,
        at: e.at,
        time: time(e.at),
        principal: e.principal,
        principal_kind: e.principal_kind,
        action: e.action,
        resource: e.resource,
        outcome: e.outcome,
        reason: e.reason,
        source: e.source,
        correlation_id: e.correlation_id,
        prev_hash: r.prev_hash,
        hash: r.hash,
    }
}

/// Check the whole chain as stored: an edited, removed or inserted record
/// is reported with its position. Keep `head_hash` to detect a truncated
/// tail later.
#[utoipa::path(
    get,
    path = "/api/v1/audit/verify",
    security(("bearer" = ["admin"])),
    tag = "audit",
    responses((status = 200, description = "The result", body = AuditVerification))
)]
pub(crate) async fn verify_audit(
    State(auth): State<Auth>,
) -> Result<AppJson<AuditVerification>, ApiError> {
    let v = auth.audit().verify().await?;
    Ok(AppJson(AuditVerification {
        intact: v.breaks.is_empty(),
        checked: v.checked,
        head_seq: v.head_seq,
        head_hash: v.head_hash,
        breaks: v
            .breaks
            .into_iter()
            .map(|b| AuditBreak {
                seq: b.seq,
                problem: b.problem,
            })
            .collect(),
    }))
}
