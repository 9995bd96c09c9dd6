//! `ApiError`: every error the API answers, rendered as problem+json.
//!
//! Domain errors become `ApiError` in one `From` impl each; nothing else in
//! the hub knows status codes. Server errors (5xx) never show their cause to
//! the client: it is logged with the correlation id instead.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};
use switchboard_core::FieldError;
use switchboard_registry::RegistryError;
use switchboard_wire::{ErrorObject, FieldProblem, PROBLEM_JSON, Problem};

use crate::context;

/// An error answer. Boxed: it travels in every handler's `Result`.
#[derive(Debug)]
pub struct ApiError(Box<Repr>);

#[derive(Debug)]
struct Repr {
    status: StatusCode,
    code: &'static str,
    detail: String,
    fields: Vec<FieldError>,
    details: Value,
    retry_after: Option<u64>,
    /// `WWW-Authenticate`, for 401 answers.
    challenge: Option<String>,
    /// The cause of a server error; logged, never sent.
    internal: Option<String>,
}

impl ApiError {
    /// An error with a status, a stable code and a message for the client.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self(Box::new(Repr {
            status,
            code,
            detail: detail.into(),
            fields: Vec::new(),
            details: Value::Null,
            retry_after: None,
            challenge: None,
            internal: None,
        }))
    }

    /// 401: no credential, or one that is refused. `reason` goes into the
    /// `WWW-Authenticate` challenge (RFC 6750).
    pub fn unauthorized(code: &'static str, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        let mut e = Self::new(StatusCode::UNAUTHORIZED, code, detail.clone());
        e.0.challenge = Some(if code == "UNAUTHENTICATED" {
            r#"Bearer realm="switchboard""#.to_owned()
        } else {
            format!(
                r#"Bearer realm="switchboard", error="invalid_token", error_description="{}""#,
                detail.replace('"', "'")
            )
        });
        e
    }

    /// 403: the caller is known but may not do this.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "FORBIDDEN", detail)
    }

    /// 422: the body was JSON but some fields are wrong.
    pub fn validation(fields: Vec<FieldError>) -> Self {
        let detail = summarize("invalid request body", &fields);
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_FAILED",
            detail,
        )
        .with_fields(fields)
    }

    /// 400: query parameters are wrong.
    pub fn invalid_query(fields: Vec<FieldError>) -> Self {
        let detail = summarize("invalid query", &fields);
        Self::new(StatusCode::BAD_REQUEST, "INVALID_QUERY", detail).with_fields(fields)
    }

    /// 500, with the cause kept for the log.
    pub fn internal(cause: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "the hub failed to handle this request; quote the correlation id when reporting it",
        );
        e.0.internal = Some(cause.into());
        e
    }

    /// Adds the bad fields.
    pub fn with_fields(mut self, fields: Vec<FieldError>) -> Self {
        self.0.fields = fields;
        self
    }

    /// Adds context for the seed-style `error.details`.
    pub fn with_details(mut self, details: Value) -> Self {
        self.0.details = details;
        self
    }

    /// Asks the client to wait this many seconds (`Retry-After`).
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.0.retry_after = Some(seconds);
        self
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    /// The bad fields.
    #[cfg(test)]
    pub(crate) fn fields(&self) -> &[FieldError] {
        &self.0.fields
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.0.code
    }

    /// The message for the client.
    pub fn detail(&self) -> &str {
        &self.0.detail
    }
}

fn summarize(what: &str, fields: &[FieldError]) -> String {
    let list: Vec<String> = fields.iter().map(ToString::to_string).collect();
    format!("{what}: {}", list.join("; "))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = *self.0;
        let ctx = context::current();
        let correlation_id = ctx
            .as_ref()
            .map_or_else(String::new, |c| c.correlation_id.to_string());
        if let Some(cause) = &e.internal {
            tracing::error!(%correlation_id, code = e.code, %cause, "request failed");
        }
        let timestamp = Utc::now();
        let errors: Vec<FieldProblem> = e
            .fields
            .iter()
            .map(|f| FieldProblem {
                field: f.field.clone(),
                reason: f.reason.clone(),
            })
            .collect();
        let mut details = e.details;
        if !errors.is_empty() {
            details = json!({ "fields": errors });
        }
        if let Some(secs) = e.retry_after {
            match &mut details {
                Value::Object(m) => {
                    m.insert("retry_after".into(), secs.into());
                }
                _ => details = json!({ "retry_after": secs }),
            }
        }
        if details.is_null() {
            details = json!({});
        }
        let problem = Problem {
            problem_type: format!("urn:switchboard:problem:{}", e.code.to_ascii_lowercase()),
            title: e.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: e.status.as_u16(),
            detail: e.detail.clone(),
            instance: ctx.map(|c| c.path.to_string()),
            code: e.code.to_owned(),
            correlation_id: correlation_id.clone(),
            timestamp,
            errors,
            error: ErrorObject {
                code: e.code.to_owned(),
                message: e.detail,
                details,
                correlation_id,
                timestamp,
            },
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut resp = (e.status, body).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = e.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(v) = e.challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        resp.extensions_mut().insert(ErrorCode(e.code));
        resp
    }
}

/// The stable code of an error answer, left on the response for the
/// middleware that audits it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrorCode(pub(crate) &'static str);

impl From<switchboard_gateway::GatewayError> for ApiError {
    fn from(e: switchboard_gateway::GatewayError) -> Self {
        use switchboard_gateway::GatewayError as E;
        let message = e.to_string();
        match e {
            E::Invalid(fields) => Self::validation(fields),
            E::NoService(name) => Self::new(
                StatusCode::NOT_FOUND,
                "SERVICE_NOT_FOUND",
                format!("no service {name}: no agent of that type is registered and no service of that name is configured"),
            )
            .with_details(json!({ "service": name })),
            E::NotFound { kind, name } => {
                let code = match kind {
                    "route" => "ROUTE_NOT_FOUND",
                    "webhook" => "WEBHOOK_NOT_FOUND",
                    "hook" => "HOOK_NOT_FOUND",
                    _ => "SERVICE_NOT_FOUND",
                };
                Self::new(StatusCode::NOT_FOUND, code, message).with_details(json!({ kind: name }))
            }
            E::Unavailable { service, why } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "AGENT_UNAVAILABLE",
                message,
            )
            .with_details(json!({ "service": service, "reason": why }))
            .with_retry_after(1),
            E::Timeout {
                kind,
                limit,
                instance,
            } => Self::new(StatusCode::GATEWAY_TIMEOUT, "GATEWAY_TIMEOUT", message).with_details(
                json!({ "timeout": kind, "limit_ms": u64::try_from(limit.as_millis()).unwrap_or(u64::MAX), "instance": instance }),
            ),
            E::Upstream { instance, .. } => Self::new(StatusCode::BAD_GATEWAY, "BAD_GATEWAY", message)
                .with_details(json!({ "instance": instance })),
            E::BadRequest(why) => Self::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", why),
            E::Unverified(why) => Self::new(StatusCode::UNAUTHORIZED, "HOOK_SIGNATURE_INVALID", why),
            E::Storage(s) => s.into(),
        }
    }
}

impl From<switchboard_core::StorageError> for ApiError {
    fn from(e: switchboard_core::StorageError) -> Self {
        switchboard_auth::AuthError::Storage(e).into()
    }
}

impl From<switchboard_auth::AuthError> for ApiError {
    fn from(e: switchboard_auth::AuthError) -> Self {
        use switchboard_auth::AuthError as E;
        match e {
            E::Invalid(fields) => Self::validation(fields),
            E::InvalidClient => Self::unauthorized(
                "INVALID_CLIENT",
                "client authentication failed: unknown client, or a wrong or expired secret",
            ),
            E::InvalidScope(why) => Self::new(StatusCode::BAD_REQUEST, "INVALID_SCOPE", why),
            E::NotFound { code, what } => {
                Self::new(StatusCode::NOT_FOUND, code, format!("{what} not found"))
            }
            E::Seal(e) => e.into(),
            E::Storage(s) if s.is_retryable() => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "STORE_UNAVAILABLE",
                "the store is busy or unavailable; try again",
            )
            .with_retry_after(1),
            E::Storage(s) => Self::internal(s.to_string()),
            E::Internal(why) => Self::internal(why),
        }
    }
}

impl From<switchboard_seal::SealError> for ApiError {
    fn from(e: switchboard_seal::SealError) -> Self {
        use switchboard_seal::SealError as E;
        let status = match &e {
            E::Replayed { .. } => StatusCode::CONFLICT,
            E::SenderMismatch(_) => StatusCode::FORBIDDEN,
            E::Randomness(_) => return Self::internal(e.to_string()),
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let mut err = Self::new(status, e.code(), e.to_string());
        if let E::Malformed { field, reason } = &e {
            err = err.with_details(serde_json::json!({ "field": field, "reason": reason }));
        }
        err
    }
}

impl From<switchboard_vault::VaultError> for ApiError {
    fn from(e: switchboard_vault::VaultError) -> Self {
        use switchboard_vault::VaultError as E;
        match e {
            E::Invalid(fields) => Self::validation(fields),
            E::NotFound(what) => Self::new(
                StatusCode::NOT_FOUND,
                "SECRET_NOT_FOUND",
                format!("{what} not found"),
            ),
            E::Forbidden(why) => Self::forbidden(why),
            E::Unavailable(why) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "VAULT_UNAVAILABLE", why)
            }
            E::Locked(why) => Self::new(StatusCode::SERVICE_UNAVAILABLE, "VAULT_LOCKED", why),
            E::Conflict(why) => Self::new(StatusCode::CONFLICT, "ROTATION_REFUSED", why),
            E::Corrupt(why) => {
                tracing::error!(reason = %why, "a vault row does not decrypt");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "VAULT_CORRUPT", why)
            }
            E::Storage(s) => switchboard_auth::AuthError::Storage(s).into(),
            E::Internal(why) => Self::internal(why),
        }
    }
}

impl From<switchboard_bus::BusError> for ApiError {
    fn from(e: switchboard_bus::BusError) -> Self {
        use switchboard_bus::BusError;
        match e {
            BusError::Invalid(fields) => Self::validation(fields),
            BusError::Storage(s) if s.is_retryable() => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "STORE_UNAVAILABLE",
                "the event log is busy or unavailable; try again",
            )
            .with_retry_after(1),
            BusError::Storage(s) => Self::internal(s.to_string()),
            BusError::NotFound { code, message } => Self::new(StatusCode::NOT_FOUND, code, message),
            BusError::Conflict(why) => Self::new(StatusCode::CONFLICT, "CONFLICT", why),
            BusError::NotPending(why) => Self::new(StatusCode::CONFLICT, "NOT_PENDING", why),
            BusError::Closed => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "SHUTTING_DOWN",
                "the hub is shutting down",
            )
            .with_retry_after(1),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Invalid(fields) => Self::validation(fields),
            RegistryError::NotFound(id) => Self::new(
                StatusCode::NOT_FOUND,
                "AGENT_NOT_FOUND",
                format!("agent {id} is not registered"),
            )
            .with_details(json!({ "agent_id": id })),
            RegistryError::Storage(s) if s.is_retryable() => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "STORE_UNAVAILABLE",
                "the store is busy or unavailable; try again",
            )
            .with_retry_after(1),
            RegistryError::Storage(s) => Self::internal(s.to_string()),
        }
    }
}

impl From<switchboard_tasks::TaskError> for ApiError {
    fn from(e: switchboard_tasks::TaskError) -> Self {
        use switchboard_tasks::TaskError as E;
        let message = e.to_string();
        match e {
            E::Invalid(fields) => Self::validation(fields),
            E::TaskNotFound(id) => Self::new(StatusCode::NOT_FOUND, "TASK_NOT_FOUND", message)
                .with_details(json!({ "task_id": id })),
            E::WorkflowNotFound(id) => {
                Self::new(StatusCode::NOT_FOUND, "WORKFLOW_NOT_FOUND", message)
                    .with_details(json!({ "workflow_id": id }))
            }
            E::AgentNotFound(id) => Self::new(StatusCode::NOT_FOUND, "AGENT_NOT_FOUND", message)
                .with_details(json!({ "agent_id": id })),
            E::AgentUnavailable { id, status } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "AGENT_UNAVAILABLE",
                message,
            )
            .with_details(json!({ "agent_id": id, "status": status }))
            .with_retry_after(1),
            E::InvalidTransition {
                id,
                status,
                attempted,
            } => Self::new(StatusCode::CONFLICT, "INVALID_TRANSITION", message).with_details(
                json!({ "task_id": id, "status": status.as_str(), "attempted": attempted }),
            ),
            E::WorkflowEnded { id, status } => {
                Self::new(StatusCode::CONFLICT, "INVALID_TRANSITION", message)
                    .with_details(json!({ "workflow_id": id, "status": status.as_str() }))
            }
            E::NotHolder {
                id,
                holder,
                attempt,
            } => Self::new(StatusCode::CONFLICT, "LEASE_LOST", message)
                .with_details(json!({ "task_id": id, "agent_id": holder, "attempt": attempt })),
            E::Exists { kind, id } => {
                let code = if kind == "task" {
                    "TASK_EXISTS"
                } else {
                    "WORKFLOW_EXISTS"
                };
                Self::new(StatusCode::CONFLICT, code, message).with_details(json!({ "id": id }))
            }
            E::KeyReused { kind, key, id } => {
                Self::new(StatusCode::CONFLICT, "IDEMPOTENCY_CONFLICT", message)
                    .with_details(json!({ "idempotency_key": key, "kind": kind, "id": id }))
            }
            E::DependencyNotMet { dependency, status } => Self::new(
                StatusCode::PRECONDITION_FAILED,
                "DEPENDENCY_NOT_MET",
                message,
            )
            .with_details(json!({ "dependency": dependency, "status": status.as_str() })),
            E::Cycle(stages) => Self::new(StatusCode::BAD_REQUEST, "WORKFLOW_CYCLE", message)
                .with_details(json!({ "cycle": stages })),
            E::Storage(s) if s.is_retryable() => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "STORE_UNAVAILABLE",
                "the store is busy or unavailable; try again",
            )
            .with_retry_after(1),
            E::Storage(s) => Self::internal(s.to_string()),
            E::Closed => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "SHUTTING_DOWN",
                "the hub is shutting down",
            )
            .with_retry_after(1),
        }
    }
}
