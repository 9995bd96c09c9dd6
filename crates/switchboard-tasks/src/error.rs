//! `TaskError`: what the task queue and the workflow engine refuse, and why.

use switchboard_core::{FieldError, StorageError};

use crate::task::TaskStatus;
use crate::workflow::WorkflowStatus;

/// An error of the task queue or the workflow engine.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TaskError {
    /// Bad input; every bad field is named.
    #[error("invalid: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    /// No such task.
    #[error("task {0} does not exist")]
    TaskNotFound(String),
    /// No such workflow.
    #[error("workflow {0} does not exist")]
    WorkflowNotFound(String),
    /// No such agent.
    #[error("agent {0} is not registered")]
    AgentNotFound(String),
    /// The agent is registered but not live (stale, offline or draining).
    #[error("agent {id} is {status}")]
    AgentUnavailable {
        /// The agent.
        id: String,
        /// Its status.
        status: String,
    },
    /// The change is not allowed from the task's current status.
    #[error("task {id} is {}; it cannot become {attempted}", .status.as_str())]
    InvalidTransition {
        /// The task.
        id: String,
        /// Its status now.
        status: TaskStatus,
        /// What was asked.
        attempted: String,
    },
    /// The workflow has ended.
    #[error("workflow {id} is {}", .status.as_str())]
    WorkflowEnded {
        /// The workflow.
        id: String,
        /// Its final status.
        status: WorkflowStatus,
    },
    /// The reporting agent does not hold the task (any more).
    #[error("task {id} is held by {holder} (attempt {attempt}), not by the reporter")]
    NotHolder {
        /// The task.
        id: String,
        /// Who holds it, or `nobody`.
        holder: String,
        /// The current attempt.
        attempt: u32,
    },
    /// An id is taken by something else.
    #[error("{kind} {id} already exists with other content")]
    Exists {
        /// `task` or `workflow`.
        kind: &'static str,
        /// The id.
        id: String,
    },
    /// An idempotency key was used for something else.
    #[error("idempotency key {key:?} was used for {kind} {id}, with other content")]
    KeyReused {
        /// `task` or `workflow`.
        kind: &'static str,
        /// The key.
        key: String,
        /// What it created.
        id: String,
    },
    /// A dependency ended without completing.
    #[error("dependency {dependency} is {}", .status.as_str())]
    DependencyNotMet {
        /// The dependency.
        dependency: String,
        /// How it ended.
        status: TaskStatus,
    },
    /// The workflow's stages depend on each other in a circle.
    #[error("the stages form a cycle: {}", .0.join(" → "))]
    Cycle(Vec<String>),
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The hub is shutting down.
    #[error("the task engine has stopped")]
    Closed,
}
