//! Workflow bodies: a DAG of stages, each run as a task.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::{RetryPolicyRequest, TaskFailure, TaskPriority};

/// What a workflow does when a stage fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureStrategy {
    /// Cancel the rest; the workflow fails (default).
    #[default]
    StopOnError,
    /// Skip what depends on the failed stage; run the rest.
    Continue,
    /// Stop, then run the completed stages' compensations, latest first.
    Compensate,
}

/// Where a workflow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowStatus {
    /// Stages are running or waiting.
    Running,
    /// A stage failed; compensations are running.
    Compensating,
    /// Every stage completed.
    Completed,
    /// A stage (or a compensation) failed.
    Failed,
    /// A stage failed and every completed stage was compensated.
    Compensated,
    /// Cancelled.
    Cancelled,
}

/// Where a stage is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    /// Waiting for its dependencies or its turn.
    Pending,
    /// Its task has not ended.
    Running,
    /// Its task completed.
    Completed,
    /// Its task failed, timed out or was cancelled.
    Failed,
    /// Not run.
    Skipped,
    /// Stopped while running.
    Cancelled,
    /// Its compensation is running.
    Compensating,
    /// Its compensation completed.
    Compensated,
    /// Its compensation failed.
    CompensationFailed,
}

/// The work that undoes a stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompensationSpec {
    /// The type of agent that runs it.
    pub agent_type: String,
    /// Its input (the stage's output is added as `output`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub input: Option<Map<String, Value>>,
    /// Seconds one attempt may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// Retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicyRequest>,
}

/// One stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// Unique within the workflow (no `:`).
    #[schema(example = "requirement_analysis")]
    pub name: String,
    /// The type of agent that runs it.
    #[schema(example = "requirement_analysis")]
    pub agent_type: String,
    /// Capabilities that agent must also have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Stages that must complete first.
    #[serde(default)]
    pub dependencies: Vec<String>,
    /// Seconds one attempt may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = 120)]
    pub timeout: Option<f64>,
    /// The stage's own input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub input: Option<Map<String, Value>>,
    /// Urgency of its task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<TaskPriority>,
    /// Retries of its task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicyRequest>,
    /// What undoes it, with `failure_strategy: compensate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<CompensationSpec>,
}

/// How a workflow runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowConfiguration {
    /// Independent stages run at the same time (default true); false runs
    /// one stage at a time, in the order given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_execution: Option<bool>,
    /// Default `stop_on_error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_strategy: Option<FailureStrategy>,
}

/// `POST /api/v1/workflows`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkflowRequest {
    /// Unique id (no `:`); generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "workflow-123")]
    pub id: Option<String>,
    /// The project it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// A name for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Input every stage receives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub input: Option<Map<String, Value>>,
    /// The stages: a DAG through `dependencies`.
    pub stages: Vec<StageSpec>,
    /// How it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration: Option<WorkflowConfiguration>,
    /// A key that makes a retried create safe (also the `Idempotency-Key`
    /// header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Anything else, stored as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

/// One stage's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkflowStage {
    /// Its name.
    pub name: String,
    /// The type of agent that runs it.
    pub agent_type: String,
    /// Stages it depends on.
    pub dependencies: Vec<String>,
    /// Where it is.
    pub status: StageStatus,
    /// Its task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// Its task's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub output: Option<Map<String, Value>>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskFailure>,
    /// Its task was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// It ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    /// Whether it has a compensation.
    pub compensable: bool,
    /// Its compensation's task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation_task_id: Option<String>,
}

/// A workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Workflow {
    /// Unique id.
    pub id: String,
    /// A name for people.
    pub name: String,
    /// The project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// Where it is.
    pub status: WorkflowStatus,
    /// Input every stage receives.
    #[schema(value_type = Object)]
    pub input: Map<String, Value>,
    /// The stages, in the order given.
    pub stages: Vec<WorkflowStage>,
    /// How it runs.
    pub configuration: WorkflowConfigurationApplied,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskFailure>,
    /// The create's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// As given.
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// It ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
}

/// How a workflow runs, as applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkflowConfigurationApplied {
    /// Independent stages run at the same time.
    pub parallel_execution: bool,
    /// What a failed stage does.
    pub failure_strategy: FailureStrategy,
}

/// A page of workflows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkflowList {
    /// In creation order.
    pub workflows: Vec<Workflow>,
    /// How many match in all.
    pub total: u64,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}
