//! Task bodies: create, agent reports, claims, and the task as answered.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// How urgent a task is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskPriority {
    /// After everything else.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Before normal.
    High,
    /// First.
    Critical,
}

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Waiting for its dependencies.
    Pending,
    /// Ready, waiting for an agent (or its retry delay).
    Queued,
    /// Given to an agent that has not started it.
    Assigned,
    /// The agent is working on it.
    InProgress,
    /// Done.
    Completed,
    /// Failed for good.
    Failed,
    /// Its last attempt ran out of time.
    TimedOut,
    /// Cancelled.
    Cancelled,
}

/// What a failed dependency does to a task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DependencyFailure {
    /// The task fails with DEPENDENCY_NOT_MET (default).
    #[default]
    Fail,
    /// The task runs once every dependency ended, however.
    Run,
}

/// How the delay between attempts grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackoffStrategy {
    /// Always the initial delay.
    Fixed,
    /// initial × n.
    Linear,
    /// initial × 2^(n-1) (default).
    Exponential,
    /// initial × fib(n).
    Fibonacci,
}

/// Retries of a task. Every field has a default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicyRequest {
    /// Attempts in all, 1–100 (default 3; 1 means no retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Default `exponential`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_strategy: Option<BackoffStrategy>,
    /// The delay after the first failed attempt (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_ms: Option<u64>,
    /// The longest delay (default 60000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay_ms: Option<u64>,
    /// Random spread, a fraction 0–1 of each delay (default 0.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<f64>,
}

/// Retries of a task, as applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RetryPolicy {
    /// Attempts in all.
    pub max_attempts: u32,
    /// How the delay grows.
    pub backoff_strategy: BackoffStrategy,
    /// The delay after the first failed attempt.
    pub initial_delay_ms: u64,
    /// The longest delay.
    pub max_delay_ms: u64,
    /// Random spread.
    pub jitter: f64,
}

/// `POST /api/v1/tasks`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTaskRequest {
    /// Unique id (no `:`); generated when absent. Creating again with the
    /// same id and content answers the first task (200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "task-001")]
    pub id: Option<String>,
    /// The kind of work: agents of this type, or with this capability,
    /// can take it.
    #[serde(rename = "type")]
    #[schema(example = "code_generation")]
    pub task_type: String,
    /// Default `normal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<TaskPriority>,
    /// The agent to run it; any capable live agent when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_agent: Option<String>,
    /// Capabilities the agent must also have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// The workflow this task belongs to (a reference kept with the task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_workflow_id: Option<String>,
    /// The work's input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub input_data: Option<Map<String, Value>>,
    /// Tasks that must complete first (at most 100).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<String>,
    /// What a failed dependency does (default `fail`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependency_failure: Option<DependencyFailure>,
    /// Seconds one attempt may take from its assignment (up to 7 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = 300)]
    pub timeout: Option<f64>,
    /// Retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicyRequest>,
    /// A key that makes a retried create safe (also the `Idempotency-Key`
    /// header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Anything else, stored as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

/// Why a task, or its last attempt, failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskFailure {
    /// A stable code (`TASK_TIMEOUT`, `LEASE_EXPIRED`, `AGENT_OFFLINE`,
    /// `DEPENDENCY_NOT_MET`, `CANCELLED`, or the agent's own).
    #[serde(default = "agent_failure_code")]
    pub code: String,
    /// What happened.
    pub message: String,
}

fn agent_failure_code() -> String {
    "TASK_FAILED".to_owned()
}

/// A task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Task {
    /// Unique id.
    pub id: String,
    /// The kind of work.
    #[serde(rename = "type")]
    pub task_type: String,
    /// Urgency.
    pub priority: TaskPriority,
    /// Where it is.
    pub status: TaskStatus,
    /// The work's input.
    #[schema(value_type = Object)]
    pub input_data: Map<String, Value>,
    /// What the agent produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub output_data: Option<Map<String, Value>>,
    /// 0–100.
    pub progress: u8,
    /// The last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskFailure>,
    /// The agent asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_agent: Option<String>,
    /// Capabilities required.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// The agent holding it now (or last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Tasks that must complete first.
    #[serde(default)]
    pub dependencies: Vec<String>,
    /// What a failed dependency does.
    pub dependency_failure: DependencyFailure,
    /// Seconds one attempt may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// Retries.
    pub retry_policy: RetryPolicy,
    /// Attempts made so far (the current one included).
    pub attempt: u32,
    /// The workflow it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_workflow_id: Option<String>,
    /// The workflow stage it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Whether it undoes a stage.
    #[serde(default)]
    pub compensation: bool,
    /// The create's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// As given.
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// When the agent expects to finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_completion: Option<DateTime<Utc>>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// The current attempt was given to its agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_at: Option<DateTime<Utc>>,
    /// The agent started the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// It ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    /// A queued retry waits until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
    /// The holder must show a sign of life (progress, a claim, a heartbeat)
    /// before then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The current attempt times out then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_at: Option<DateTime<Utc>>,
}

/// A page of tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskList {
    /// In creation order.
    pub tasks: Vec<Task>,
    /// How many match in all.
    pub total: u64,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// What an agent can report of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReportedTaskStatus {
    /// Working on it.
    InProgress,
    /// Done.
    Completed,
    /// Failed; retried per its policy unless `retry` is false.
    Failed,
}

/// `PATCH /api/v1/tasks/{id}`: an agent's report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTaskRequest {
    /// The new status; absent: progress only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ReportedTaskStatus>,
    /// 0–100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<u8>,
    /// Output so far, or the result (replaces what was reported before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub output_data: Option<Map<String, Value>>,
    /// Why it failed (with `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskFailure>,
    /// When the agent expects to finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_completion: Option<DateTime<Utc>>,
    /// The reporting agent; when given, it must hold the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The attempt reported on; when given, it must be the current one, so
    /// a report from an attempt the hub gave up on is refused (409).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// With `failed`: `false` ends the task now, whatever its policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<bool>,
}

/// `POST /api/v1/tasks/{id}/cancel`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    /// Why; recorded as the task's error message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /api/v1/tasks/claim`: an agent asks for work.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// The agent asking (registered and live).
    pub agent_id: String,
    /// At most this many tasks, 1–100 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tasks: Option<u32>,
    /// Wait up to this long when there is nothing, 0–20000 (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// The tasks given to a claiming agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClaimResponse {
    /// Each is `assigned` to the agent, with a lease; empty when there was
    /// nothing within `wait_ms`.
    pub tasks: Vec<Task>,
}
