//! Tasks: what a client asks for ([`NewTask`]), what an agent reports
//! ([`TaskUpdate`]), and the task itself ([`Task`]) with its state machine.
//!
//! ```text
//!            deps met              assigned            agent starts
//! pending ───────────▶ queued ───────────────▶ assigned ───────────▶ in_progress
//!    │                  ▲  │                     │  │                   │
//!    │ dep failed       │  │ cancel     lease lost│  │ completed/failed  │ completed
//!    ▼                  │  ▼          (not begun)│  ▼                   ▼
//!  failed          retry (backoff) ◀─────────────┴── attempt failed ◀── failed / timed out / agent offline
//!                                   no attempts left: failed or timed_out
//! ```
//!
//! `completed`, `failed`, `timed_out` and `cancelled` are final.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use switchboard_bus::groups::{Backoff, BackoffKind};
use switchboard_core::{FieldErrors, UnixMillis, ident};

/// The largest `max_attempts`.
pub const MAX_ATTEMPTS: u32 = 100;
/// The most dependencies of one task.
pub const MAX_DEPENDENCIES: usize = 100;
/// The longest task timeout: 7 days, in seconds.
pub const MAX_TIMEOUT_SECS: f64 = 7.0 * 24.0 * 3600.0;
/// The longest retry delay: 24 hours.
const MAX_DELAY_MS: u64 = 24 * 3600 * 1000;

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Waiting for its dependencies to complete.
    Pending,
    /// Ready, waiting for an agent (or for its retry delay to pass).
    Queued,
    /// Given to an agent, which has not reported it started.
    Assigned,
    /// The agent is working on it.
    InProgress,
    /// Done; its output is recorded.
    Completed,
    /// Failed for good.
    Failed,
    /// Ran out of time on its last attempt.
    TimedOut,
    /// Cancelled.
    Cancelled,
}

impl TaskStatus {
    /// Every status.
    pub const ALL: [Self; 8] = [
        Self::Pending,
        Self::Queued,
        Self::Assigned,
        Self::InProgress,
        Self::Completed,
        Self::Failed,
        Self::TimedOut,
        Self::Cancelled,
    ];

    /// The name used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Queued => "queued",
            Self::Assigned => "assigned",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
        }
    }

    /// The status named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether nothing more can happen to the task.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::TimedOut | Self::Cancelled
        )
    }

    /// Whether an agent holds the task.
    pub fn is_held(self) -> bool {
        matches!(self, Self::Assigned | Self::InProgress)
    }
}

/// How urgent a task is; higher goes first.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
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

impl Priority {
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }

    /// The priority named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Low, Self::Normal, Self::High, Self::Critical]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

/// What happens to a task when one of its dependencies does not complete.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DependencyFailure {
    /// The task fails with `DEPENDENCY_NOT_MET`.
    #[default]
    Fail,
    /// The task runs once every dependency has ended, however it ended.
    Run,
}

/// How the delay between attempts grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackoffStrategy {
    /// Always the initial delay.
    Fixed,
    /// initial × n.
    Linear,
    /// initial × 2^(n-1).
    Exponential,
    /// initial × fib(n).
    Fibonacci,
}

impl BackoffStrategy {
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        self.kind().as_str()
    }

    /// The strategy named `s`.
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s.parse::<BackoffKind>()? {
            BackoffKind::Fixed => Self::Fixed,
            BackoffKind::Linear => Self::Linear,
            BackoffKind::Exponential => Self::Exponential,
            BackoffKind::Fibonacci => Self::Fibonacci,
        })
    }

    fn kind(self) -> BackoffKind {
        match self {
            Self::Fixed => BackoffKind::Fixed,
            Self::Linear => BackoffKind::Linear,
            Self::Exponential => BackoffKind::Exponential,
            Self::Fibonacci => BackoffKind::Fibonacci,
        }
    }
}

/// How often a task is tried and how long to wait between tries.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1: no retry).
    pub max_attempts: u32,
    /// How the delay grows.
    pub backoff_strategy: BackoffStrategy,
    /// The delay after the first failed attempt.
    pub initial_delay_ms: u64,
    /// No delay is longer.
    pub max_delay_ms: u64,
    /// Random spread, as a fraction of each delay (0 to 1).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff_strategy: BackoffStrategy::Exponential,
            initial_delay_ms: 1000,
            max_delay_ms: 60_000,
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// The delay before the next attempt after `failures` failed ones.
    pub fn delay_ms(&self, failures: u32) -> u64 {
        let b = Backoff {
            kind: self.backoff_strategy.kind(),
            initial: std::time::Duration::from_millis(self.initial_delay_ms),
            max: std::time::Duration::from_millis(self.max_delay_ms),
            jitter: self.jitter,
        };
        u64::try_from(b.delay(failures).as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn check(&self, prefix: &str, errs: &mut FieldErrors) {
        if !(1..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            errs.push(
                format!("{prefix}max_attempts"),
                format!("must be from 1 to {MAX_ATTEMPTS}"),
            );
        }
        if self.initial_delay_ms > MAX_DELAY_MS {
            errs.push(
                format!("{prefix}initial_delay_ms"),
                "must be at most 24 hours",
            );
        }
        if self.max_delay_ms > MAX_DELAY_MS {
            errs.push(format!("{prefix}max_delay_ms"), "must be at most 24 hours");
        } else if self.max_delay_ms < self.initial_delay_ms {
            errs.push(
                format!("{prefix}max_delay_ms"),
                "must not be less than initial_delay_ms",
            );
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            errs.push(format!("{prefix}jitter"), "must be from 0 to 1");
        }
    }
}

/// Why a task (or one attempt of it) failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// A stable code: the agent's own, or the hub's (`TASK_TIMEOUT`,
    /// `LEASE_EXPIRED`, `AGENT_OFFLINE`, `DEPENDENCY_NOT_MET`, `CANCELLED`).
    pub code: String,
    /// What happened.
    pub message: String,
}

impl Failure {
    /// A failure with a code and a message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// A task as the hub keeps it. Stored as JSON; absent optional fields are
/// left out, which keeps the stored record (rewritten at every change)
/// small.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Unique id (the client's, or generated).
    pub id: String,
    /// Creation order, for listings.
    pub seq: u64,
    /// What kind of work; an agent of this type, or with this capability,
    /// can take it.
    pub task_type: String,
    /// Urgency.
    pub priority: Priority,
    /// Where it is.
    pub status: TaskStatus,
    /// The work's input.
    pub input_data: Map<String, Value>,
    /// What the agent produced (or reported so far).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_data: Option<Map<String, Value>>,
    /// 0 to 100, as reported.
    pub progress: u8,
    /// The last failure (of an attempt or of the task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
    /// The agent the client asked for; `None`: any capable agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_agent: Option<String>,
    /// Capabilities the agent must have, beyond matching the type.
    pub capabilities: Vec<String>,
    /// The agent holding it now (or that held it last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Tasks that must complete first.
    pub dependencies: Vec<String>,
    /// What a failed dependency does to this task.
    pub dependency_failure: DependencyFailure,
    /// How long one attempt may take, from its assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Retries.
    pub retry_policy: RetryPolicy,
    /// Attempts made (assignments that counted).
    pub attempt: u32,
    /// Whether the holder took it through a claim (pull) since it was
    /// assigned.
    pub claimed: bool,
    /// The workflow this task is a stage of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    /// The stage, within `workflow_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Whether this is a stage's compensation.
    #[serde(default)]
    pub compensation: bool,
    /// The client's key for safe retries of the create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Anything else the client attached.
    pub metadata: Map<String, Value>,
    /// When the agent expects to finish, as reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_completion: Option<UnixMillis>,
    /// Times, Unix milliseconds.
    pub created_at: UnixMillis,
    /// Last change.
    pub updated_at: UnixMillis,
    /// When the current attempt was assigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_at: Option<UnixMillis>,
    /// When the agent started the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<UnixMillis>,
    /// When it reached a final status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<UnixMillis>,
    /// A queued retry is not assigned before this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_at: Option<UnixMillis>,
    /// The holder must show signs of life (progress, a claim, a heartbeat)
    /// before this, or the attempt is lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<UnixMillis>,
    /// The current attempt times out at this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_at: Option<UnixMillis>,
    /// The lease as last marked for writing; a renewal is written only once
    /// the written one has run half its course. Not stored.
    #[serde(skip)]
    pub lease_written: Option<UnixMillis>,
}

impl Task {
    /// Whether this create asks for the same task as `self` (a retried
    /// create that may be answered with `self`).
    pub fn same_request(&self, new: &NewTask) -> bool {
        self.task_type == new.task_type
            && self.priority == new.priority
            && self.input_data == new.input_data
            && self.assigned_agent == new.assigned_agent
            && self.capabilities == new.capabilities
            && self.dependencies == new.dependencies
            && self.dependency_failure == new.dependency_failure
            && self.timeout_ms == new.timeout_ms
            && self.retry_policy == new.retry_policy
            && self.metadata == new.metadata
            && (new.workflow_id.is_none() || self.workflow_id == new.workflow_id)
    }

    /// Attempts left after the current one.
    pub fn attempts_left(&self) -> u32 {
        self.retry_policy.max_attempts.saturating_sub(self.attempt)
    }
}

/// A task to create.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewTask {
    /// The client's id; generated when absent.
    pub id: Option<String>,
    /// What kind of work.
    pub task_type: String,
    /// Urgency.
    pub priority: Priority,
    /// The work's input.
    pub input_data: Map<String, Value>,
    /// A specific agent, or any capable one.
    pub assigned_agent: Option<String>,
    /// Capabilities the agent must also have.
    pub capabilities: Vec<String>,
    /// Tasks that must complete first.
    pub dependencies: Vec<String>,
    /// What a failed dependency does.
    pub dependency_failure: DependencyFailure,
    /// How long one attempt may take.
    pub timeout_ms: Option<u64>,
    /// Retries.
    pub retry_policy: RetryPolicy,
    /// The workflow the task belongs to (the client's reference; the hub
    /// sets it for stages).
    pub workflow_id: Option<String>,
    /// Safe retries of the create.
    pub idempotency_key: Option<String>,
    /// Anything else.
    pub metadata: Map<String, Value>,
}

/// The longest idempotency key.
const MAX_KEY_LEN: usize = 255;

/// Converts a timeout in seconds (the seed's unit) to milliseconds,
/// naming `field` when it is out of range.
pub fn timeout_ms(secs: f64, field: &str, errs: &mut FieldErrors) -> Option<u64> {
    if !secs.is_finite() || secs <= 0.0 || secs > MAX_TIMEOUT_SECS {
        errs.push(
            field,
            "must be more than 0 and at most 604800 seconds (7 days)",
        );
        return None;
    }
    // In range, so the cast cannot overflow.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some((secs * 1000.0).ceil() as u64)
}

impl NewTask {
    /// Checks every field; each error names the field as the client wrote
    /// it, behind `prefix`.
    pub fn check(&self, prefix: &str, errs: &mut FieldErrors) {
        if let Some(id) = &self.id
            && let Err(r) = ident::check(id)
        {
            errs.push(format!("{prefix}id"), r);
        }
        if let Err(r) = ident::check(&self.task_type) {
            errs.push(format!("{prefix}type"), r);
        }
        if let Some(a) = &self.assigned_agent
            && let Err(r) = ident::check(a)
        {
            errs.push(format!("{prefix}assigned_agent"), r);
        }
        for (i, c) in self.capabilities.iter().enumerate() {
            if let Err(r) = ident::check(c) {
                errs.push(format!("{prefix}capabilities[{i}]"), r);
            }
        }
        if self.dependencies.len() > MAX_DEPENDENCIES {
            errs.push(
                format!("{prefix}dependencies"),
                format!("must list at most {MAX_DEPENDENCIES} tasks"),
            );
        }
        for (i, d) in self.dependencies.iter().enumerate() {
            if let Err(r) = ident::check(d) {
                errs.push(format!("{prefix}dependencies[{i}]"), r);
            } else if self.id.as_deref() == Some(d.as_str()) {
                errs.push(
                    format!("{prefix}dependencies[{i}]"),
                    "a task cannot depend on itself",
                );
            } else if self.dependencies[..i].contains(d) {
                errs.push(format!("{prefix}dependencies[{i}]"), "is listed twice");
            }
        }
        if let Some(w) = &self.workflow_id
            && let Err(r) = ident::check(w)
        {
            errs.push(format!("{prefix}parent_workflow_id"), r);
        }
        if let Some(k) = &self.idempotency_key
            && (k.is_empty() || k.len() > MAX_KEY_LEN || k.chars().any(char::is_control))
        {
            errs.push(
                format!("{prefix}idempotency_key"),
                format!("must be 1 to {MAX_KEY_LEN} characters without control characters"),
            );
        }
        self.retry_policy
            .check(&format!("{prefix}retry_policy."), errs);
    }
}

/// What an agent reports about a task it holds (`PATCH`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskUpdate {
    /// `in_progress`, `completed` or `failed`; `None`: progress only.
    pub status: Option<TaskStatus>,
    /// 0 to 100.
    pub progress: Option<u8>,
    /// Output so far, or the result.
    pub output_data: Option<Map<String, Value>>,
    /// Why it failed.
    pub error: Option<Failure>,
    /// When the agent expects to finish.
    pub estimated_completion: Option<UnixMillis>,
    /// The agent reporting; when given it must be the holder.
    pub agent_id: Option<String>,
    /// The attempt reported on; when given it must be the current one.
    pub attempt: Option<u32>,
    /// `false` with `failed`: do not retry, whatever the policy.
    pub retry: Option<bool>,
}

impl TaskUpdate {
    /// Checks the fields.
    pub fn check(&self, errs: &mut FieldErrors) {
        if let Some(s) = self.status
            && !matches!(
                s,
                TaskStatus::InProgress | TaskStatus::Completed | TaskStatus::Failed
            )
        {
            errs.push(
                "status",
                format!(
                    "an agent reports in_progress, completed or failed, not {}; cancel with POST /api/v1/tasks/{{id}}/cancel",
                    s.as_str()
                ),
            );
        }
        if self.progress.is_some_and(|p| p > 100) {
            errs.push("progress", "must be from 0 to 100");
        }
        if let Some(a) = &self.agent_id
            && let Err(r) = ident::check(a)
        {
            errs.push("agent_id", r);
        }
        if self.retry.is_some() && self.status != Some(TaskStatus::Failed) {
            errs.push("retry", "goes only with status failed");
        }
        if self.error.is_some() && self.status != Some(TaskStatus::Failed) {
            errs.push("error", "goes only with status failed");
        }
        if self.status.is_none()
            && self.progress.is_none()
            && self.output_data.is_none()
            && self.estimated_completion.is_none()
        {
            errs.push(
                "status",
                "an update needs a status, progress, output_data or estimated_completion",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_classify() {
        for s in TaskStatus::ALL {
            assert_eq!(TaskStatus::parse(s.as_str()), Some(s));
        }
        let finals: Vec<_> = TaskStatus::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .collect();
        assert_eq!(
            finals,
            [
                TaskStatus::Completed,
                TaskStatus::Failed,
                TaskStatus::TimedOut,
                TaskStatus::Cancelled
            ]
        );
    }

    #[test]
    fn priorities_order() {
        assert!(Priority::Critical > Priority::High);
        assert!(Priority::High > Priority::Normal);
        assert!(Priority::Normal > Priority::Low);
    }

    #[test]
    fn names_every_bad_field() {
        let t = NewTask {
            id: Some("a b".into()),
            task_type: String::new(),
            dependencies: vec!["x".into(), "x".into()],
            retry_policy: RetryPolicy {
                max_attempts: 0,
                jitter: 2.0,
                ..RetryPolicy::default()
            },
            ..NewTask::default()
        };
        let mut errs = FieldErrors::new();
        t.check("", &mut errs);
        let fields: Vec<String> = errs
            .finish()
            .expect_err("invalid")
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "id",
                "type",
                "dependencies[1]",
                "retry_policy.max_attempts",
                "retry_policy.jitter"
            ]
        );
    }

    #[test]
    fn retry_delays_grow_and_cap() {
        let p = RetryPolicy {
            jitter: 0.0,
            initial_delay_ms: 100,
            max_delay_ms: 350,
            ..RetryPolicy::default()
        };
        assert_eq!(
            (1..=4).map(|n| p.delay_ms(n)).collect::<Vec<_>>(),
            [100, 200, 350, 350]
        );
    }
}
