//! What the task queue and the workflow engine need from a storage backend.

use async_trait::async_trait;
use switchboard_bus::NewEvent;
use switchboard_core::StorageError;

use crate::task::{Task, TaskStatus};
use crate::workflow::{Workflow, WorkflowStatus};

/// Everything that changed in one round of the engine, written in one
/// transaction: the tasks and workflows as they are now, and the events
/// that describe the changes (the outbox).
#[derive(Debug, Default)]
pub struct Changes {
    /// Tasks to insert or replace.
    pub tasks: Vec<Task>,
    /// Workflows to insert or replace.
    pub workflows: Vec<Workflow>,
    /// Events to append to the log.
    pub events: Vec<NewEvent>,
}

impl Changes {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.workflows.is_empty() && self.events.is_empty()
    }
}

/// Which tasks a listing wants.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskFilter {
    /// Any of these statuses (all when empty).
    pub statuses: Vec<TaskStatus>,
    /// Of this type.
    pub task_type: Option<String>,
    /// Held (or last held) by this agent.
    pub agent_id: Option<String>,
    /// Stages and compensations of this workflow.
    pub workflow_id: Option<String>,
}

/// Which workflows a listing wants.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkflowFilter {
    /// Any of these statuses (all when empty).
    pub statuses: Vec<WorkflowStatus>,
    /// Of this project.
    pub project_id: Option<String>,
}

/// A page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items, in creation order.
    pub items: Vec<T>,
    /// How many match in all.
    pub total: u64,
    /// The `seq` to continue after, when there is more.
    pub next_after: Option<u64>,
}

/// Storage of tasks and workflows.
#[async_trait]
pub trait TaskStore: Send + Sync + 'static {
    /// Writes one round's changes in one transaction.
    async fn apply(&self, changes: Changes) -> Result<(), StorageError>;

    /// Every task and workflow not in a final status, and the highest
    /// `seq` of each ever used.
    async fn load_active(&self) -> Result<Active, StorageError>;

    /// The tasks with these ids (those that exist).
    async fn tasks(&self, ids: &[String]) -> Result<Vec<Task>, StorageError>;

    /// The tasks created with these idempotency keys.
    async fn tasks_by_key(&self, keys: &[String]) -> Result<Vec<Task>, StorageError>;

    /// The workflows with these ids, or created with these keys.
    async fn workflows(
        &self,
        ids: &[String],
        keys: &[String],
    ) -> Result<Vec<Workflow>, StorageError>;

    /// A page of tasks, in creation order, after `after`.
    async fn list_tasks(
        &self,
        filter: &TaskFilter,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Page<Task>, StorageError>;

    /// A page of workflows, in creation order, after `after`.
    async fn list_workflows(
        &self,
        filter: &WorkflowFilter,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Page<Workflow>, StorageError>;

    /// How many tasks are in each status.
    async fn count_tasks(&self) -> Result<Vec<(TaskStatus, u64)>, StorageError>;

    /// How many workflows are in each status.
    async fn count_workflows(&self) -> Result<Vec<(WorkflowStatus, u64)>, StorageError>;
}

/// What the engine loads at start.
#[derive(Debug, Default)]
pub struct Active {
    /// Tasks not final.
    pub tasks: Vec<Task>,
    /// Workflows not final.
    pub workflows: Vec<Workflow>,
    /// The highest task `seq` used.
    pub task_seq: u64,
    /// The highest workflow `seq` used.
    pub workflow_seq: u64,
}
