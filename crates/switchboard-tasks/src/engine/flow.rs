//! Workflow progression: stages start when what they depend on has
//! completed, failures follow the workflow's strategy, and compensations
//! undo completed stages latest first.
//!
//! A stage's task id is `{workflow id}:{stage}` and its compensation's
//! `{workflow id}:{stage}:compensate`; client task ids may not contain
//! `:`, so these never collide. A stage's task is created once: a
//! completed stage is never run again, even across crashes, because the
//! stage's status is written in the same transaction as its task's end.

use serde_json::{Map, Value, json};
use switchboard_core::UnixMillis;

use super::{Engine, Fetched, Waiting};
use crate::TaskError;
use crate::events;
use crate::task::{Failure, NewTask, TaskStatus};
use crate::workflow::{FailureStrategy, NewWorkflow, Stage, StageStatus, Workflow, WorkflowStatus};

impl Engine {
    /// Creates and starts a workflow, or answers a repeated create.
    pub(super) fn create_workflow(
        &mut self,
        new: NewWorkflow,
        fetched: &Fetched,
        now: UnixMillis,
    ) -> Result<(Workflow, bool), TaskError> {
        if let Some(k) = &new.idempotency_key {
            let earlier = match self.wf_keys.get(k) {
                Some(id) => self.workflows.get(id),
                None => fetched.wf_by_key.get(k),
            };
            if let Some(w) = earlier {
                return if w.same_request(&new) {
                    Ok((w.clone(), false))
                } else {
                    Err(TaskError::KeyReused {
                        kind: "workflow",
                        key: k.clone(),
                        id: w.id.clone(),
                    })
                };
            }
        }
        if let Some(id) = &new.id
            && let Some(w) = self.workflows.get(id).or_else(|| fetched.workflows.get(id))
        {
            return if w.same_request(&new) && w.idempotency_key == new.idempotency_key {
                Ok((w.clone(), false))
            } else {
                Err(TaskError::Exists {
                    kind: "workflow",
                    id: id.clone(),
                })
            };
        }
        self.next_wf_seq += 1;
        let id = new
            .id
            .unwrap_or_else(|| format!("wf-{}", uuid::Uuid::now_v7()));
        let w = Workflow {
            name: new.name.unwrap_or_else(|| id.clone()),
            id: id.clone(),
            seq: self.next_wf_seq,
            project_id: new.project_id,
            input: new.input,
            status: WorkflowStatus::Running,
            stages: new
                .stages
                .into_iter()
                .map(|spec| Stage {
                    spec,
                    status: StageStatus::Pending,
                    task_id: None,
                    output: None,
                    error: None,
                    started_at: None,
                    completed_at: None,
                    completed_seq: None,
                    compensation_task_id: None,
                })
                .collect(),
            parallel_execution: new.parallel_execution,
            failure_strategy: new.failure_strategy,
            idempotency_key: new.idempotency_key,
            metadata: new.metadata,
            error: None,
            created_at: now,
            updated_at: now,
            completed_at: None,
            completions: 0,
        };
        if let Some(k) = &w.idempotency_key {
            self.wf_keys.insert(k.clone(), id.clone());
        }
        self.events.push(events::workflow("started", &w, None, now));
        self.workflows.insert(id.clone(), w);
        self.dirty_workflows.insert(id.clone());
        self.advance(&id, now);
        self.workflows
            .get(&id)
            .cloned()
            .map(|w| (w, true))
            .ok_or(TaskError::WorkflowNotFound(id))
    }

    /// Cancels a workflow that has not ended.
    pub(super) fn cancel_workflow(
        &mut self,
        id: &str,
        fetched: &Fetched,
        now: UnixMillis,
    ) -> Result<Workflow, TaskError> {
        let status = match self.workflows.get(id).or_else(|| fetched.workflows.get(id)) {
            Some(w) => w.status,
            None => return Err(TaskError::WorkflowNotFound(id.to_owned())),
        };
        if status == WorkflowStatus::Cancelled {
            return fetched
                .workflows
                .get(id)
                .or_else(|| self.workflows.get(id))
                .cloned()
                .ok_or_else(|| TaskError::WorkflowNotFound(id.to_owned()));
        }
        if status.is_final() {
            return Err(TaskError::WorkflowEnded {
                id: id.to_owned(),
                status,
            });
        }
        let running = self.stop(id, now);
        if let Some(w) = self.workflows.get_mut(id) {
            // Compensations in flight stop too.
            for s in &mut w.stages {
                if s.status == StageStatus::Compensating {
                    s.status = StageStatus::CompensationFailed;
                }
            }
            w.status = WorkflowStatus::Cancelled;
            w.error = Some(Failure::new("CANCELLED", "cancelled by a client"));
            w.completed_at = Some(now);
            w.updated_at = now;
            self.events
                .push(events::workflow("cancelled", w, None, now));
        }
        self.cancel_tasks(id, running, now);
        self.dirty_workflows.insert(id.to_owned());
        self.workflows
            .get(id)
            .cloned()
            .ok_or_else(|| TaskError::WorkflowNotFound(id.to_owned()))
    }

    /// A stage's task (or its compensation's) ended.
    pub(super) fn on_stage_task(
        &mut self,
        wf: &str,
        stage: &str,
        compensation: bool,
        task_id: &str,
        now: UnixMillis,
    ) {
        let Some(t) = self.tasks.get(task_id) else {
            return;
        };
        let (status, output, error) = (t.status, t.output_data.clone(), t.error.clone());
        let Some(w) = self.workflows.get_mut(wf) else {
            return;
        };
        let Some(i) = w.stages.iter().position(|s| s.spec.name == stage) else {
            return;
        };
        w.updated_at = now;
        self.dirty_workflows.insert(wf.to_owned());
        if compensation {
            let s = &mut w.stages[i];
            if s.status != StageStatus::Compensating
                || s.compensation_task_id.as_deref() != Some(task_id)
            {
                return;
            }
            s.status = if status == TaskStatus::Completed {
                StageStatus::Compensated
            } else {
                s.error = error;
                StageStatus::CompensationFailed
            };
            self.advance(wf, now);
            return;
        }
        let s = &mut w.stages[i];
        if s.status != StageStatus::Running || s.task_id.as_deref() != Some(task_id) {
            return;
        }
        s.completed_at = Some(now);
        if status == TaskStatus::Completed {
            w.completions += 1;
            let s = &mut w.stages[i];
            s.status = StageStatus::Completed;
            s.output = output;
            s.completed_seq = Some(w.completions);
            let s = &w.stages[i];
            self.events
                .push(events::workflow("stage_completed", w, Some(s), now));
            self.advance(wf, now);
            return;
        }
        s.status = StageStatus::Failed;
        s.error = error;
        let s = &w.stages[i];
        self.events
            .push(events::workflow("stage_failed", w, Some(s), now));
        if w.status != WorkflowStatus::Running {
            return;
        }
        let why = Failure::new(
            "WORKFLOW_FAILED",
            format!(
                "stage {stage} {}",
                match status {
                    TaskStatus::TimedOut => "timed out",
                    TaskStatus::Cancelled => "was cancelled",
                    _ => "failed",
                }
            ),
        );
        match w.failure_strategy {
            FailureStrategy::Continue => {
                if w.error.is_none() {
                    w.error = Some(why);
                }
                self.advance(wf, now);
            }
            FailureStrategy::StopOnError => {
                let running = self.stop(wf, now);
                if let Some(w) = self.workflows.get_mut(wf) {
                    w.error = Some(why);
                }
                self.end_workflow(wf, WorkflowStatus::Failed, now);
                self.cancel_tasks(wf, running, now);
            }
            FailureStrategy::Compensate => {
                let running = self.stop(wf, now);
                if let Some(w) = self.workflows.get_mut(wf) {
                    w.error = Some(why);
                    w.status = WorkflowStatus::Compensating;
                    self.events
                        .push(events::workflow("compensating", w, None, now));
                }
                self.cancel_tasks(wf, running, now);
                self.advance(wf, now);
            }
        }
    }

    /// Stops a workflow's stages: running ones are marked cancelled (their
    /// tasks' ids are returned, to cancel once the workflow is settled) and
    /// pending ones skipped.
    fn stop(&mut self, wf: &str, now: UnixMillis) -> Vec<String> {
        let Some(w) = self.workflows.get_mut(wf) else {
            return Vec::new();
        };
        let mut running = Vec::new();
        for s in &mut w.stages {
            match s.status {
                StageStatus::Running => {
                    s.status = StageStatus::Cancelled;
                    s.completed_at = Some(now);
                    running.extend(s.task_id.clone());
                }
                StageStatus::Compensating => {
                    running.extend(s.compensation_task_id.clone());
                }
                StageStatus::Pending => s.status = StageStatus::Skipped,
                _ => {}
            }
        }
        w.updated_at = now;
        self.dirty_workflows.insert(wf.to_owned());
        running
    }

    fn cancel_tasks(&mut self, wf: &str, ids: Vec<String>, now: UnixMillis) {
        for id in ids {
            self.end_cancelled(&id, &format!("workflow {wf} stopped"), now);
        }
    }

    fn end_workflow(&mut self, wf: &str, status: WorkflowStatus, now: UnixMillis) {
        let Some(w) = self.workflows.get_mut(wf) else {
            return;
        };
        w.status = status;
        w.completed_at = Some(now);
        w.updated_at = now;
        let kind = match status {
            WorkflowStatus::Completed => "completed",
            WorkflowStatus::Compensated => "compensated",
            WorkflowStatus::Cancelled => "cancelled",
            _ => "failed",
        };
        self.events.push(events::workflow(kind, w, None, now));
        self.dirty_workflows.insert(wf.to_owned());
    }

    /// Starts what can start and ends the workflow when nothing is left.
    fn advance(&mut self, wf: &str, now: UnixMillis) {
        let Some(w) = self.workflows.get(wf) else {
            return;
        };
        match w.status {
            WorkflowStatus::Running => self.advance_running(wf, now),
            WorkflowStatus::Compensating => self.advance_compensation(wf, now),
            _ => {}
        }
    }

    fn advance_running(&mut self, wf: &str, now: UnixMillis) {
        let Some(w) = self.workflows.get_mut(wf) else {
            return;
        };
        // Skip what can never run: a dependency failed or was skipped. Repeat
        // until nothing changes, so skips run down the graph.
        loop {
            let mut changed = false;
            for i in 0..w.stages.len() {
                if w.stages[i].status != StageStatus::Pending {
                    continue;
                }
                let blocked = w.stages[i].spec.dependencies.iter().any(|d| {
                    w.stage(d).is_some_and(|s| {
                        matches!(
                            s.status,
                            StageStatus::Failed | StageStatus::Skipped | StageStatus::Cancelled
                        )
                    })
                });
                if blocked {
                    w.stages[i].status = StageStatus::Skipped;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        let running = w
            .stages
            .iter()
            .filter(|s| s.status == StageStatus::Running)
            .count();
        let mut start: Vec<usize> = w
            .stages
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.status == StageStatus::Pending
                    && s.spec.dependencies.iter().all(|d| {
                        w.stage(d)
                            .is_some_and(|ds| ds.status == StageStatus::Completed)
                    })
            })
            .map(|(i, _)| i)
            .collect();
        if !w.parallel_execution {
            start.truncate(usize::from(running == 0));
        }
        if start.is_empty() && running == 0 {
            let all_done = w.stages.iter().all(|s| s.status == StageStatus::Completed);
            let status = if all_done {
                WorkflowStatus::Completed
            } else {
                WorkflowStatus::Failed
            };
            self.end_workflow(wf, status, now);
            return;
        }
        for i in start {
            self.start_stage(wf, i, now);
        }
    }

    fn start_stage(&mut self, wf: &str, i: usize, now: UnixMillis) {
        let Some(w) = self.workflows.get(wf) else {
            return;
        };
        let s = &w.stages[i];
        let upstream: Map<String, Value> = s
            .spec
            .dependencies
            .iter()
            .filter_map(|d| {
                w.stage(d).map(|ds| {
                    (
                        d.clone(),
                        Value::Object(ds.output.clone().unwrap_or_default()),
                    )
                })
            })
            .collect();
        let input = json!({
            "workflow": workflow_ref(w),
            "stage": s.spec.name,
            "input": Value::Object(s.spec.input.clone()),
            "upstream": upstream,
        });
        let task_id = format!("{wf}:{}", s.spec.name);
        let new = NewTask {
            id: Some(task_id.clone()),
            task_type: s.spec.agent_type.clone(),
            priority: s.spec.priority,
            input_data: object(input),
            assigned_agent: None,
            capabilities: s.spec.capabilities.clone(),
            dependencies: Vec::new(),
            dependency_failure: Default::default(),
            timeout_ms: s.spec.timeout_ms,
            retry_policy: s.spec.retry_policy,
            workflow_id: Some(wf.to_owned()),
            idempotency_key: None,
            metadata: project_metadata(w),
        };
        let name = s.spec.name.clone();
        self.insert_task(new, Some((name, false)), Waiting::default(), now);
        if let Some(w) = self.workflows.get_mut(wf) {
            let s = &mut w.stages[i];
            s.status = StageStatus::Running;
            s.task_id = Some(task_id);
            s.started_at = Some(now);
            let s = &w.stages[i];
            self.events
                .push(events::workflow("stage_started", w, Some(s), now));
        }
        self.dirty_workflows.insert(wf.to_owned());
    }

    /// Runs the next compensation (of the latest completed stage not yet
    /// compensated), or ends the workflow when none is left.
    fn advance_compensation(&mut self, wf: &str, now: UnixMillis) {
        let Some(w) = self.workflows.get(wf) else {
            return;
        };
        if w.stages
            .iter()
            .any(|s| s.status == StageStatus::Compensating)
        {
            return;
        }
        let next = w
            .stages
            .iter()
            .enumerate()
            .filter(|(_, s)| s.status == StageStatus::Completed && s.spec.compensation.is_some())
            .max_by_key(|(_, s)| s.completed_seq)
            .map(|(i, _)| i);
        let Some(i) = next else {
            let failed = w
                .stages
                .iter()
                .any(|s| s.status == StageStatus::CompensationFailed);
            if failed {
                if let Some(w) = self.workflows.get_mut(wf) {
                    w.error = Some(Failure::new(
                        "COMPENSATION_FAILED",
                        "a stage failed and at least one compensation failed too",
                    ));
                }
                self.end_workflow(wf, WorkflowStatus::Failed, now);
            } else {
                self.end_workflow(wf, WorkflowStatus::Compensated, now);
            }
            return;
        };
        let s = &w.stages[i];
        let Some(c) = s.spec.compensation.clone() else {
            return;
        };
        let input = json!({
            "workflow": workflow_ref(w),
            "stage": s.spec.name,
            "compensating": true,
            "input": Value::Object(c.input.clone()),
            "output": Value::Object(s.output.clone().unwrap_or_default()),
        });
        let task_id = format!("{wf}:{}:compensate", s.spec.name);
        let new = NewTask {
            id: Some(task_id.clone()),
            task_type: c.agent_type,
            priority: s.spec.priority,
            input_data: object(input),
            assigned_agent: None,
            capabilities: Vec::new(),
            dependencies: Vec::new(),
            dependency_failure: Default::default(),
            timeout_ms: c.timeout_ms,
            retry_policy: c.retry_policy,
            workflow_id: Some(wf.to_owned()),
            idempotency_key: None,
            metadata: project_metadata(w),
        };
        let name = s.spec.name.clone();
        self.insert_task(new, Some((name, true)), Waiting::default(), now);
        if let Some(w) = self.workflows.get_mut(wf) {
            let s = &mut w.stages[i];
            s.status = StageStatus::Compensating;
            s.compensation_task_id = Some(task_id);
        }
        self.dirty_workflows.insert(wf.to_owned());
    }
}

fn workflow_ref(w: &Workflow) -> Value {
    json!({
        "id": w.id,
        "name": w.name,
        "project_id": w.project_id,
        "input": Value::Object(w.input.clone()),
    })
}

fn project_metadata(w: &Workflow) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(p) = &w.project_id {
        m.insert("project_id".into(), p.as_str().into());
    }
    m
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}
