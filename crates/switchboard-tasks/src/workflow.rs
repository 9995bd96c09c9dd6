//! Workflows: a DAG of stages, each run as a task by an agent of the
//! stage's type, with a failure strategy and, for sagas, compensations.
//!
//! A stage starts when every stage it depends on has completed; its task's
//! input carries the workflow's input, the stage's own input and the
//! outputs of the stages it depends on. Without `parallel_execution`,
//! one stage runs at a time, in the order the stages were given.
//!
//! When a stage fails (its task failed, timed out or was cancelled, after
//! its retries):
//! - `stop_on_error`: running stages are cancelled, the rest skipped, and
//!   the workflow fails;
//! - `continue`: the stages that depend on it, directly or not, are
//!   skipped; the others run; the workflow fails once nothing is left;
//! - `compensate`: as `stop_on_error`, then each completed stage's
//!   compensation runs, one at a time, latest completed first (a saga);
//!   the workflow ends `compensated`, or `failed` if a compensation fails.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use switchboard_core::{FieldErrors, UnixMillis, ident};

use crate::task::{Priority, RetryPolicy, timeout_ms};

/// The most stages in one workflow.
pub const MAX_STAGES: usize = 200;

/// What the workflow does when a stage fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureStrategy {
    /// Cancel the rest; the workflow fails.
    #[default]
    StopOnError,
    /// Skip what depends on the failed stage; run the rest.
    Continue,
    /// Stop, then undo the completed stages in reverse order.
    Compensate,
}

impl FailureStrategy {
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StopOnError => "stop_on_error",
            Self::Continue => "continue",
            Self::Compensate => "compensate",
        }
    }

    /// The strategy named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::StopOnError, Self::Continue, Self::Compensate]
            .into_iter()
            .find(|f| f.as_str() == s)
    }
}

/// Where a workflow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowStatus {
    /// Stages are running or waiting.
    Running,
    /// A stage failed; compensations are running.
    Compensating,
    /// Every stage completed.
    Completed,
    /// A stage failed (or a compensation did).
    Failed,
    /// A stage failed and every completed stage was compensated.
    Compensated,
    /// Cancelled by a client.
    Cancelled,
}

impl WorkflowStatus {
    /// Every status.
    pub const ALL: [Self; 6] = [
        Self::Running,
        Self::Compensating,
        Self::Completed,
        Self::Failed,
        Self::Compensated,
        Self::Cancelled,
    ];

    /// The name used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Compensating => "compensating",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Compensated => "compensated",
            Self::Cancelled => "cancelled",
        }
    }

    /// The status named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether nothing more can happen.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Running | Self::Compensating)
    }
}

/// Where a stage is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    /// Waiting for the stages it depends on (or its turn).
    Pending,
    /// Its task exists and has not ended.
    Running,
    /// Its task completed.
    Completed,
    /// Its task failed, timed out or was cancelled.
    Failed,
    /// Not run: something it depends on failed, or the workflow stopped.
    Skipped,
    /// Stopped while running, because the workflow stopped.
    Cancelled,
    /// Its compensation is running.
    Compensating,
    /// Its compensation completed.
    Compensated,
    /// Its compensation failed.
    CompensationFailed,
}

impl StageStatus {
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
            Self::Compensating => "compensating",
            Self::Compensated => "compensated",
            Self::CompensationFailed => "compensation_failed",
        }
    }
}

/// The work that undoes a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compensation {
    /// The type of agent that runs it.
    pub agent_type: String,
    /// Its own input (the stage's output is added).
    pub input: Map<String, Value>,
    /// How long one attempt may take.
    pub timeout_ms: Option<u64>,
    /// Retries.
    pub retry_policy: RetryPolicy,
}

/// One stage as given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageSpec {
    /// Unique within the workflow.
    pub name: String,
    /// The type of agent that runs it.
    pub agent_type: String,
    /// Capabilities that agent must also have.
    pub capabilities: Vec<String>,
    /// Stages that must complete first.
    pub dependencies: Vec<String>,
    /// How long one attempt may take.
    pub timeout_ms: Option<u64>,
    /// Its own input.
    pub input: Map<String, Value>,
    /// Urgency of its task.
    pub priority: Priority,
    /// Retries of its task.
    pub retry_policy: RetryPolicy,
    /// What undoes it (with `compensate`).
    pub compensation: Option<Compensation>,
}

/// A workflow to create.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NewWorkflow {
    /// The client's id; generated when absent.
    pub id: Option<String>,
    /// A name for people.
    pub name: Option<String>,
    /// The project it belongs to.
    pub project_id: Option<String>,
    /// Input every stage receives.
    pub input: Map<String, Value>,
    /// The stages.
    pub stages: Vec<StageSpec>,
    /// Independent stages run at the same time.
    pub parallel_execution: bool,
    /// What a failed stage does.
    pub failure_strategy: FailureStrategy,
    /// Safe retries of the create.
    pub idempotency_key: Option<String>,
    /// Anything else.
    pub metadata: Map<String, Value>,
}

/// Why a workflow was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Bad fields.
    Invalid(Vec<switchboard_core::FieldError>),
    /// The stages depend on each other in a circle: the names along it,
    /// the first repeated at the end.
    Cycle(Vec<String>),
}

/// A timeout given in seconds for a stage or compensation, checked.
pub fn stage_timeout(secs: Option<f64>, field: &str, errs: &mut FieldErrors) -> Option<u64> {
    secs.and_then(|s| timeout_ms(s, field, errs))
}

impl NewWorkflow {
    /// Checks every field, then that the stages form a DAG.
    pub fn check(&self) -> Result<(), Refusal> {
        let mut errs = FieldErrors::new();
        if let Some(id) = &self.id
            && let Err(r) = ident::check(id)
        {
            errs.push("id", r);
        }
        if self.name.as_ref().is_some_and(|n| n.len() > 256) {
            errs.push("name", "must be at most 256 characters");
        }
        if self.project_id.as_ref().is_some_and(|p| p.len() > 256) {
            errs.push("project_id", "must be at most 256 characters");
        }
        if self.stages.is_empty() {
            errs.push("stages", "must hold at least one stage");
        }
        if self.stages.len() > MAX_STAGES {
            errs.push("stages", format!("must hold at most {MAX_STAGES} stages"));
        }
        let id_len = self.id.as_ref().map_or(40, String::len);
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, s) in self.stages.iter().enumerate() {
            let p = format!("stages[{i}].");
            if let Err(r) = ident::check(&s.name) {
                errs.push(format!("{p}name"), r);
            } else if seen.insert(&s.name, i).is_some() {
                errs.push(format!("{p}name"), format!("{:?} names two stages", s.name));
            } else if id_len + s.name.len() + ".compensate".len() + 1 > ident::MAX_LEN {
                errs.push(
                    format!("{p}name"),
                    "is too long together with the workflow id (their task ids must fit in 128 characters)",
                );
            }
            if let Err(r) = ident::check(&s.agent_type) {
                errs.push(format!("{p}agent_type"), r);
            }
            for (j, c) in s.capabilities.iter().enumerate() {
                if let Err(r) = ident::check(c) {
                    errs.push(format!("{p}capabilities[{j}]"), r);
                }
            }
            s.retry_policy
                .check(&format!("{p}retry_policy."), &mut errs);
            if let Some(c) = &s.compensation {
                if let Err(r) = ident::check(&c.agent_type) {
                    errs.push(format!("{p}compensation.agent_type"), r);
                }
                c.retry_policy
                    .check(&format!("{p}compensation.retry_policy."), &mut errs);
            }
        }
        for (i, s) in self.stages.iter().enumerate() {
            for (j, d) in s.dependencies.iter().enumerate() {
                let field = format!("stages[{i}].dependencies[{j}]");
                if d == &s.name {
                    errs.push(field, "a stage cannot depend on itself");
                } else if !seen.contains_key(d.as_str()) {
                    errs.push(field, format!("no stage is named {d:?}"));
                } else if s.dependencies[..j].contains(d) {
                    errs.push(field, "is listed twice");
                }
            }
        }
        if let Some(k) = &self.idempotency_key
            && (k.is_empty() || k.len() > 255 || k.chars().any(char::is_control))
        {
            errs.push(
                "idempotency_key",
                "must be 1 to 255 characters without control characters",
            );
        }
        errs.finish().map_err(Refusal::Invalid)?;
        match find_cycle(&self.stages) {
            Some(cycle) => Err(Refusal::Cycle(cycle)),
            None => Ok(()),
        }
    }
}

/// A circle of dependencies among `stages`, if there is one: the stage
/// names along it, the first repeated at the end.
fn find_cycle(stages: &[StageSpec]) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let index: HashMap<&str, usize> = stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut marks = vec![Mark::New; stages.len()];
    for root in 0..stages.len() {
        if marks[root] != Mark::New {
            continue;
        }
        // Depth-first, without recursion: (stage, next dependency to look at).
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        marks[root] = Mark::OnPath;
        while let Some(&mut (node, ref mut next)) = path.last_mut() {
            let deps = &stages[node].dependencies;
            if *next == deps.len() {
                marks[node] = Mark::Done;
                path.pop();
                continue;
            }
            let Some(&dep) = index.get(deps[*next].as_str()) else {
                *next += 1;
                continue;
            };
            *next += 1;
            match marks[dep] {
                Mark::Done => {}
                Mark::New => {
                    marks[dep] = Mark::OnPath;
                    path.push((dep, 0));
                }
                Mark::OnPath => {
                    // The circle runs from `dep`'s place on the path to here;
                    // it is written in the order work would flow.
                    let start = path.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                    let mut names: Vec<String> = path[start..]
                        .iter()
                        .map(|(n, _)| stages[*n].name.clone())
                        .collect();
                    names.reverse();
                    // Start from the stage where the search entered it.
                    names.rotate_right(1);
                    names.push(names[0].clone());
                    return Some(names);
                }
            }
        }
    }
    None
}

/// One stage's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    /// As given.
    pub spec: StageSpec,
    /// Where it is.
    pub status: StageStatus,
    /// Its task's id, once started.
    pub task_id: Option<String>,
    /// Its task's output, once completed.
    pub output: Option<Map<String, Value>>,
    /// Why it failed.
    pub error: Option<crate::task::Failure>,
    /// When its task was created.
    pub started_at: Option<UnixMillis>,
    /// When it ended (its compensation excluded).
    pub completed_at: Option<UnixMillis>,
    /// Completion order, for compensating latest first.
    pub completed_seq: Option<u32>,
    /// Its compensation's task id, once started.
    pub compensation_task_id: Option<String>,
}

/// A workflow as the hub keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    /// Unique id.
    pub id: String,
    /// Creation order, for listings.
    pub seq: u64,
    /// A name for people.
    pub name: String,
    /// The project it belongs to.
    pub project_id: Option<String>,
    /// Input every stage receives.
    pub input: Map<String, Value>,
    /// Where it is.
    pub status: WorkflowStatus,
    /// The stages, in the order given.
    pub stages: Vec<Stage>,
    /// Independent stages run at the same time.
    pub parallel_execution: bool,
    /// What a failed stage does.
    pub failure_strategy: FailureStrategy,
    /// The create's key.
    pub idempotency_key: Option<String>,
    /// Anything else.
    pub metadata: Map<String, Value>,
    /// Why it failed.
    pub error: Option<crate::task::Failure>,
    /// Times, Unix milliseconds.
    pub created_at: UnixMillis,
    /// Last change.
    pub updated_at: UnixMillis,
    /// When it reached a final status.
    pub completed_at: Option<UnixMillis>,
    /// Stages completed so far (numbers `Stage::completed_seq`).
    pub completions: u32,
}

impl Workflow {
    /// Whether this create asks for the same workflow as `self`.
    pub fn same_request(&self, new: &NewWorkflow) -> bool {
        self.input == new.input
            && self.parallel_execution == new.parallel_execution
            && self.failure_strategy == new.failure_strategy
            && self.project_id == new.project_id
            && self.metadata == new.metadata
            && self.stages.len() == new.stages.len()
            && self
                .stages
                .iter()
                .zip(&new.stages)
                .all(|(s, n)| &s.spec == n)
    }

    /// The stage named `name`.
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.spec.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(name: &str, deps: &[&str]) -> StageSpec {
        StageSpec {
            name: name.into(),
            agent_type: "worker".into(),
            capabilities: vec![],
            dependencies: deps.iter().map(|d| (*d).to_owned()).collect(),
            timeout_ms: None,
            input: Map::new(),
            priority: Priority::Normal,
            retry_policy: RetryPolicy::default(),
            compensation: None,
        }
    }

    fn workflow(stages: Vec<StageSpec>) -> NewWorkflow {
        NewWorkflow {
            stages,
            ..NewWorkflow::default()
        }
    }

    #[test]
    fn accepts_a_dag() {
        let w = workflow(vec![
            stage("a", &[]),
            stage("b", &["a"]),
            stage("c", &["a"]),
            stage("d", &["b", "c"]),
        ]);
        assert_eq!(w.check(), Ok(()));
    }

    #[test]
    fn names_the_cycle() {
        let w = workflow(vec![
            stage("a", &[]),
            stage("b", &["a", "d"]),
            stage("c", &["b"]),
            stage("d", &["c"]),
        ]);
        assert_eq!(
            w.check(),
            Err(Refusal::Cycle(vec![
                "b".into(),
                "c".into(),
                "d".into(),
                "b".into()
            ]))
        );
        let two = workflow(vec![stage("x", &["y"]), stage("y", &["x"])]);
        let Err(Refusal::Cycle(c)) = two.check() else {
            panic!("a cycle of two must be refused");
        };
        assert_eq!(c.len(), 3);
        assert_eq!(c.first(), c.last());
    }

    #[test]
    fn names_unknown_and_repeated_stages() {
        let w = workflow(vec![
            stage("a", &["zz"]),
            stage("a", &[]),
            stage("b", &["b"]),
        ]);
        let Err(Refusal::Invalid(errs)) = w.check() else {
            panic!("must be invalid");
        };
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "stages[1].name",
                "stages[0].dependencies[0]",
                "stages[2].dependencies[0]"
            ]
        );
    }
}
