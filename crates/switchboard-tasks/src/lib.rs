//! Durable tasks and workflows.
//!
//! A client creates a task (a type of work, an input, a priority, a retry
//! policy, maybe dependencies); the hub gives it to the least loaded live
//! agent that can do it and tracks it until it completes, fails, times
//! out or is cancelled. A workflow is a DAG of stages, each run as a task.
//!
//! Layout:
//! - [`task`]: [`Task`], its statuses and the inputs that change it
//!   ([`NewTask`], [`TaskUpdate`]), with their validation.
//! - [`workflow`]: [`Workflow`], [`NewWorkflow`] and its checks (a DAG,
//!   refused with the names along a cycle).
//! - `engine`: the one task that owns every unfinished task and workflow.
//!   It works in rounds: it takes every command waiting, applies them in
//!   memory, gives ready tasks to agents, writes everything that changed
//!   and the events that describe it in one transaction (group commit),
//!   and only then answers. Its parts: `engine/tasks.rs` (the task state
//!   machine, dependencies, timers), `engine/dispatch.rs` (agents, least
//!   loaded assignment, claims), `engine/flow.rs` (workflow progression,
//!   failure strategies, compensation).
//! - [`store`]: the [`TaskStore`] trait storage backends implement.
//! - [`events`]: the `task.*` and `workflow.*` events.
//!
//! [`Tasks`] is the handle the rest of the hub uses; it is cheap to clone.
//! Reads go straight to the store, which holds every acknowledged change.

use std::sync::Arc;
use std::time::Duration;

use switchboard_bus::Bus;
use switchboard_core::{Clock, FieldError, FieldErrors};
use switchboard_registry::Registry;
use tokio::sync::{mpsc, oneshot};

mod engine;
mod error;
pub mod events;
pub mod store;
pub mod task;
pub mod workflow;

pub use engine::Engine;
pub use error::TaskError;
pub use store::{Active, Changes, Page, TaskFilter, TaskStore, WorkflowFilter};
pub use task::{
    BackoffStrategy, DependencyFailure, Failure, NewTask, Priority, RetryPolicy, Task, TaskStatus,
    TaskUpdate,
};
pub use workflow::{
    Compensation, FailureStrategy, NewWorkflow, Refusal, Stage, StageSpec, StageStatus, Workflow,
    WorkflowStatus,
};

/// The largest page a listing returns.
pub const MAX_PAGE: u32 = 1000;
/// The most tasks one claim returns.
pub const MAX_CLAIM: u32 = 100;
/// The longest a claim waits for work.
pub const MAX_CLAIM_WAIT: Duration = Duration::from_secs(20);

/// Settings of the task queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TasksConfig {
    /// How long an agent holds a task without a sign of life (progress, a
    /// claim, a heartbeat) before the attempt is given up.
    pub lease: Duration,
    /// Tasks an agent is given at once when its registration does not say
    /// (`configuration.max_concurrent_tasks`).
    pub default_agent_capacity: u32,
}

impl Default for TasksConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            default_agent_capacity: 1,
        }
    }
}

impl TasksConfig {
    /// Checks the settings; each error names the setting.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errs = FieldErrors::new();
        if self.lease < Duration::from_millis(100) {
            errs.push("tasks.lease", "must be at least 100ms");
        }
        if self.default_agent_capacity == 0 {
            errs.push("tasks.default_agent_capacity", "must be at least 1");
        }
        errs.finish()
    }
}

type Reply<T> = oneshot::Sender<Result<T, TaskError>>;

/// A request for work from an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The agent asking.
    pub agent_id: String,
    /// The most tasks to return.
    pub max: u32,
    /// How long to wait when there is nothing.
    pub wait: Duration,
}

/// What the engine is asked to do.
pub(crate) enum Command {
    Create(Box<NewTask>, Reply<(Task, bool)>),
    Update(String, Box<TaskUpdate>, Reply<Task>),
    Cancel(String, Option<String>, Reply<Task>),
    Claim(Claim, Reply<Vec<Task>>),
    CreateWorkflow(Box<NewWorkflow>, Reply<(Workflow, bool)>),
    CancelWorkflow(String, Reply<Workflow>),
}

/// The task queue and workflow handle. Cheap to clone.
#[derive(Clone)]
pub struct Tasks {
    tx: mpsc::Sender<Command>,
    store: Arc<dyn TaskStore>,
}

/// Commands waiting for the engine beyond this make callers wait.
const QUEUE: usize = 8192;

impl Tasks {
    /// Loads every unfinished task and workflow and returns the handle and
    /// the engine, which the caller runs (once) until shutdown.
    pub async fn open(
        store: Arc<dyn TaskStore>,
        registry: Registry,
        bus: Bus,
        config: TasksConfig,
        clock: Clock,
    ) -> Result<(Self, Engine), TaskError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let engine = Engine::open(store.clone(), registry, bus, config, clock, rx).await?;
        Ok((Self { tx, store }, engine))
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, TaskError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| TaskError::Closed)?;
        answer.await.map_err(|_| TaskError::Closed)?
    }

    /// Creates a task; answers once it is stored. A repeat of an earlier
    /// create (same id or idempotency key, same content) is answered with
    /// the task it created and `false`.
    pub async fn create(&self, new: NewTask) -> Result<(Task, bool), TaskError> {
        let mut errs = FieldErrors::new();
        new.check("", &mut errs);
        if let Some(id) = &new.id
            && id.contains(':')
        {
            errs.push("id", "must not contain ':' (reserved for workflow stages)");
        }
        errs.finish().map_err(TaskError::Invalid)?;
        self.ask(|r| Command::Create(Box::new(new), r)).await
    }

    /// Applies an agent's report on a task it holds.
    pub async fn update(&self, id: &str, update: TaskUpdate) -> Result<Task, TaskError> {
        check_id(id)?;
        let mut errs = FieldErrors::new();
        update.check(&mut errs);
        errs.finish().map_err(TaskError::Invalid)?;
        self.ask(|r| Command::Update(id.to_owned(), Box::new(update), r))
            .await
    }

    /// Cancels a task that has not ended.
    pub async fn cancel(&self, id: &str, reason: Option<String>) -> Result<Task, TaskError> {
        check_id(id)?;
        if reason.as_ref().is_some_and(|r| r.len() > 1024) {
            return Err(TaskError::Invalid(vec![FieldError::new(
                "reason",
                "must be at most 1024 characters",
            )]));
        }
        self.ask(|r| Command::Cancel(id.to_owned(), reason, r))
            .await
    }

    /// Tasks given to `claim.agent_id` (at most `max`), waiting up to
    /// `wait` when there are none. Each starts a lease the agent keeps with
    /// progress reports or heartbeats.
    pub async fn claim(&self, claim: Claim) -> Result<Vec<Task>, TaskError> {
        let mut errs = FieldErrors::new();
        if let Err(r) = switchboard_core::ident::check(&claim.agent_id) {
            errs.push("agent_id", r);
        }
        if !(1..=MAX_CLAIM).contains(&claim.max) {
            errs.push("max_tasks", format!("must be from 1 to {MAX_CLAIM}"));
        }
        if claim.wait > MAX_CLAIM_WAIT {
            errs.push(
                "wait_ms",
                format!("must be at most {}", MAX_CLAIM_WAIT.as_millis()),
            );
        }
        errs.finish().map_err(TaskError::Invalid)?;
        self.ask(|r| Command::Claim(claim, r)).await
    }

    /// One task.
    pub async fn get(&self, id: &str) -> Result<Task, TaskError> {
        check_id(id)?;
        self.store
            .tasks(&[id.to_owned()])
            .await?
            .pop()
            .ok_or_else(|| TaskError::TaskNotFound(id.to_owned()))
    }

    /// A page of tasks in creation order.
    pub async fn list(
        &self,
        filter: &TaskFilter,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Page<Task>, TaskError> {
        Ok(self
            .store
            .list_tasks(filter, after, limit.clamp(1, MAX_PAGE))
            .await?)
    }

    /// Creates and starts a workflow; answers once it and its first stages'
    /// tasks are stored.
    pub async fn create_workflow(&self, new: NewWorkflow) -> Result<(Workflow, bool), TaskError> {
        match new.check() {
            Ok(()) => {}
            Err(Refusal::Invalid(fields)) => return Err(TaskError::Invalid(fields)),
            Err(Refusal::Cycle(names)) => return Err(TaskError::Cycle(names)),
        }
        let mut errs = FieldErrors::new();
        if new.id.as_ref().is_some_and(|id| id.contains(':')) {
            errs.push("id", "must not contain ':'");
        }
        for (i, s) in new.stages.iter().enumerate() {
            if s.name.contains(':') {
                errs.push(format!("stages[{i}].name"), "must not contain ':'");
            }
        }
        errs.finish().map_err(TaskError::Invalid)?;
        self.ask(|r| Command::CreateWorkflow(Box::new(new), r))
            .await
    }

    /// Cancels a workflow: its running stages' tasks are cancelled.
    pub async fn cancel_workflow(&self, id: &str) -> Result<Workflow, TaskError> {
        check_id(id)?;
        self.ask(|r| Command::CancelWorkflow(id.to_owned(), r))
            .await
    }

    /// One workflow.
    pub async fn get_workflow(&self, id: &str) -> Result<Workflow, TaskError> {
        check_id(id)?;
        self.store
            .workflows(&[id.to_owned()], &[])
            .await?
            .pop()
            .ok_or_else(|| TaskError::WorkflowNotFound(id.to_owned()))
    }

    /// A page of workflows in creation order.
    pub async fn list_workflows(
        &self,
        filter: &WorkflowFilter,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Page<Workflow>, TaskError> {
        Ok(self
            .store
            .list_workflows(filter, after, limit.clamp(1, MAX_PAGE))
            .await?)
    }

    /// How many tasks are in each status; every status is present.
    pub async fn count_tasks(&self) -> Result<Vec<(TaskStatus, u64)>, TaskError> {
        Ok(every(TaskStatus::ALL, self.store.count_tasks().await?))
    }

    /// How many workflows are in each status; every status is present.
    pub async fn count_workflows(&self) -> Result<Vec<(WorkflowStatus, u64)>, TaskError> {
        Ok(every(
            WorkflowStatus::ALL,
            self.store.count_workflows().await?,
        ))
    }
}

/// A count for each of `all`, 0 where `counts` has none.
fn every<S: PartialEq + Copy, const N: usize>(all: [S; N], counts: Vec<(S, u64)>) -> Vec<(S, u64)> {
    all.into_iter()
        .map(|s| {
            (
                s,
                counts.iter().find(|(c, _)| *c == s).map_or(0, |(_, n)| *n),
            )
        })
        .collect()
}

fn check_id(id: &str) -> Result<(), TaskError> {
    switchboard_core::ident::check(id)
        .map_err(|r| TaskError::Invalid(vec![FieldError::new("id", r)]))
}
