//! The error body: RFC 9457 problem details, with the seed's `error` object.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// The media type of every error response.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error response (`application/problem+json`, RFC 9457).
///
/// The standard members (`type`, `title`, `status`, `detail`, `instance`)
/// come first; `code`, `correlation_id`, `timestamp` and `errors` are
/// extension members, and `error` repeats them in the shape clients of the
/// agent communication API already parse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (`urn:switchboard:problem:<code>`).
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong this time.
    pub detail: String,
    /// The request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// A stable machine-readable code (`AGENT_NOT_FOUND`, `VALIDATION_FAILED`, …).
    pub code: String,
    /// The request's correlation id (also in the `X-Correlation-Id` header).
    pub correlation_id: String,
    /// When the error happened.
    pub timestamp: DateTime<Utc>,
    /// Every bad field, for validation errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldProblem>,
    /// The same error in the seed's `{"error": {...}}` shape.
    pub error: ErrorObject,
}

/// One bad field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldProblem {
    /// The field, as a path (`capabilities[2]`, `configuration.max_concurrent_tasks`).
    pub field: String,
    /// Why it was refused.
    pub reason: String,
}

/// The seed's error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorObject {
    /// Same as the problem's `code`.
    pub code: String,
    /// Same as the problem's `detail`.
    pub message: String,
    /// Context: the bad fields, the agent id, `retry_after`, …
    #[schema(value_type = Object)]
    pub details: Value,
    /// Same as the problem's `correlation_id`.
    pub correlation_id: String,
    /// Same as the problem's `timestamp`.
    pub timestamp: DateTime<Utc>,
}
