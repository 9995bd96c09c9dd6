//! The task state machine: create, agent reports, cancel, attempts that
//! fail and retry, dependencies, timers.

use serde_json::Map;
use switchboard_core::{FieldError, UnixMillis};

use super::{Engine, Fetched, Waiting, ms_i64, ready_key};
use crate::TaskError;
use crate::events;
use crate::task::{DependencyFailure, Failure, NewTask, Task, TaskStatus, TaskUpdate};

impl Engine {
    /// Creates a task, or answers a repeated create with the first one.
    pub(super) fn create_task(
        &mut self,
        new: NewTask,
        fetched: &Fetched,
        now: UnixMillis,
    ) -> Result<(Task, bool), TaskError> {
        if let Some(k) = &new.idempotency_key {
            let earlier = match self.keys.get(k) {
                Some(id) => self.tasks.get(id),
                None => fetched.by_key.get(k),
            };
            if let Some(t) = earlier {
                return if t.same_request(&new) {
                    Ok((t.clone(), false))
                } else {
                    Err(TaskError::KeyReused {
                        kind: "task",
                        key: k.clone(),
                        id: t.id.clone(),
                    })
                };
            }
        }
        if let Some(id) = &new.id
            && let Some(t) = self.tasks.get(id).or_else(|| fetched.tasks.get(id))
        {
            return if t.same_request(&new) && t.idempotency_key == new.idempotency_key {
                Ok((t.clone(), false))
            } else {
                Err(TaskError::Exists {
                    kind: "task",
                    id: id.clone(),
                })
            };
        }
        if let Some(a) = &new.assigned_agent
            && !self.agents.contains_key(a)
            && !fetched.agents.get(a).is_some_and(Option::is_some)
        {
            return Err(TaskError::Invalid(vec![FieldError::new(
                "assigned_agent",
                format!("agent {a} is not registered"),
            )]));
        }
        let mut waiting = Waiting::default();
        let mut missing = Vec::new();
        for (i, d) in new.dependencies.iter().enumerate() {
            let status = match self.tasks.get(d).or_else(|| fetched.tasks.get(d)) {
                Some(t) => t.status,
                None => {
                    missing.push(FieldError::new(
                        format!("dependencies[{i}]"),
                        format!("task {d} does not exist"),
                    ));
                    continue;
                }
            };
            if !status.is_final() {
                waiting.outstanding += 1;
            } else if status != TaskStatus::Completed
                && new.dependency_failure == DependencyFailure::Fail
            {
                return Err(TaskError::DependencyNotMet {
                    dependency: d.clone(),
                    status,
                });
            }
        }
        if !missing.is_empty() {
            return Err(TaskError::Invalid(missing));
        }
        let t = self.insert_task(new, None, waiting, now);
        Ok((t, true))
    }

    /// Adds a new task (checked) to memory; it is queued at once when no
    /// dependency is outstanding. `stage` ties it to a workflow stage.
    pub(super) fn insert_task(
        &mut self,
        new: NewTask,
        stage: Option<(String, bool)>,
        waiting: Waiting,
        now: UnixMillis,
    ) -> Task {
        self.next_task_seq += 1;
        let id = new.id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let (stage, compensation) = match stage {
            Some((s, c)) => (Some(s), c),
            None => (None, false),
        };
        let status = if waiting.outstanding > 0 {
            TaskStatus::Pending
        } else {
            TaskStatus::Queued
        };
        let t = Task {
            id: id.clone(),
            seq: self.next_task_seq,
            task_type: new.task_type,
            priority: new.priority,
            status,
            input_data: new.input_data,
            output_data: None,
            progress: 0,
            error: None,
            assigned_agent: new.assigned_agent,
            capabilities: new.capabilities,
            agent_id: None,
            dependencies: new.dependencies,
            dependency_failure: new.dependency_failure,
            timeout_ms: new.timeout_ms,
            retry_policy: new.retry_policy,
            attempt: 0,
            claimed: false,
            workflow_id: new.workflow_id,
            stage,
            compensation,
            idempotency_key: new.idempotency_key,
            metadata: new.metadata,
            estimated_completion: None,
            created_at: now,
            updated_at: now,
            assigned_at: None,
            started_at: None,
            completed_at: None,
            available_at: None,
            lease_expires_at: None,
            deadline_at: None,
            lease_written: None,
        };
        if status == TaskStatus::Pending {
            for d in &t.dependencies {
                if self.tasks.get(d).is_some_and(|dt| !dt.status.is_final()) {
                    self.dependents
                        .entry(d.clone())
                        .or_default()
                        .push(id.clone());
                }
            }
            self.waiting.insert(id.clone(), waiting);
        }
        if let Some(k) = &t.idempotency_key {
            self.keys.insert(k.clone(), id.clone());
        }
        self.events.push(events::task("created", &t, now));
        self.tasks.insert(id.clone(), t.clone());
        self.dirty_tasks.insert(id.clone());
        if status == TaskStatus::Queued {
            self.enqueue(&id, now);
        }
        t
    }

    /// Puts a queued task where agents can get it: in a ready queue if it
    /// is available now, or on a timer until its retry delay passes.
    pub(super) fn enqueue(&mut self, id: &str, now: UnixMillis) {
        let Some(t) = self.tasks.get(id) else {
            return;
        };
        if t.available_at.is_some_and(|a| a > now) {
            self.arm(id);
            return;
        }
        let key = ready_key(t);
        match &t.assigned_agent {
            Some(a) => self.agent_ready.entry(a.clone()).or_default().insert(key),
            None => self
                .type_ready
                .entry(t.task_type.clone())
                .or_default()
                .insert(key),
        };
        self.dispatch_needed = true;
    }

    /// Takes a task out of its ready queue, if it is in one.
    pub(super) fn unqueue(&mut self, id: &str) {
        let Some(t) = self.tasks.get(id) else {
            return;
        };
        let key = ready_key(t);
        let queue = match &t.assigned_agent {
            Some(a) => self.agent_ready.get_mut(a),
            None => self.type_ready.get_mut(&t.task_type),
        };
        if let Some(q) = queue {
            q.remove(&key);
        }
    }

    /// Takes a task off its holder's list.
    pub(super) fn release(&mut self, id: &str) {
        let Some(agent) = self.tasks.get(id).and_then(|t| t.agent_id.clone()) else {
            return;
        };
        if let Some(set) = self.held.get_mut(&agent) {
            set.remove(id);
            if set.is_empty() {
                self.held.remove(&agent);
                self.offer.remove(&agent);
            }
        }
        self.dispatch_needed = true;
    }

    /// An agent's report on a task it holds.
    pub(super) fn update_task(
        &mut self,
        id: &str,
        u: &TaskUpdate,
        fetched: &Fetched,
        now: UnixMillis,
    ) -> Result<Task, TaskError> {
        let Some(t) = self.tasks.get(id) else {
            return match fetched.tasks.get(id) {
                Some(t) => repeat_or_refuse(t, u),
                None => Err(TaskError::TaskNotFound(id.to_owned())),
            };
        };
        if t.status.is_final() {
            return repeat_or_refuse(t, u);
        }
        let attempted = u.status.unwrap_or(TaskStatus::InProgress);
        if !t.status.is_held() {
            return Err(TaskError::InvalidTransition {
                id: id.to_owned(),
                status: t.status,
                attempted: attempted.as_str().to_owned(),
            });
        }
        let holder_mismatch = u
            .agent_id
            .as_ref()
            .is_some_and(|a| t.agent_id.as_ref() != Some(a))
            || u.attempt.is_some_and(|n| n != t.attempt);
        if holder_mismatch {
            return Err(TaskError::NotHolder {
                id: id.to_owned(),
                holder: t.agent_id.clone().unwrap_or_else(|| "nobody".into()),
                attempt: t.attempt,
            });
        }
        let lease = self.lease_ms();
        let Some(t) = self.tasks.get_mut(id) else {
            return Err(TaskError::TaskNotFound(id.to_owned()));
        };
        t.updated_at = now;
        t.lease_expires_at = Some(now + lease);
        if let Some(p) = u.progress {
            t.progress = p;
        }
        if let Some(o) = &u.output_data {
            t.output_data = Some(o.clone());
        }
        if let Some(e) = u.estimated_completion {
            t.estimated_completion = Some(e);
        }
        self.dirty_tasks.insert(id.to_owned());
        match attempted {
            TaskStatus::Completed => {
                t.status = TaskStatus::Completed;
                t.progress = 100;
                t.output_data.get_or_insert_with(Map::new);
                t.error = None;
                t.completed_at = Some(now);
                if t.started_at.is_none() {
                    t.started_at = Some(now);
                }
                self.events.push(events::task("completed", t, now));
                // The agent's room is free again for the next task.
                self.release(id);
                self.finish(id);
            }
            TaskStatus::Failed => {
                let failure = u.error.clone().unwrap_or_else(|| {
                    Failure::new("TASK_FAILED", "the agent reported that the task failed")
                });
                self.fail_attempt(id, failure, false, u.retry != Some(false), now);
            }
            _ => {
                if t.status == TaskStatus::Assigned {
                    t.status = TaskStatus::InProgress;
                    t.started_at = Some(now);
                    self.events.push(events::task("started", t, now));
                } else {
                    self.events.push(events::task("progress", t, now));
                }
                self.arm(id);
            }
        }
        self.tasks
            .get(id)
            .cloned()
            .ok_or_else(|| TaskError::TaskNotFound(id.to_owned()))
    }

    /// Cancels a task that has not ended; cancelling a cancelled task again
    /// changes nothing.
    pub(super) fn cancel_task(
        &mut self,
        id: &str,
        reason: Option<String>,
        fetched: &Fetched,
        now: UnixMillis,
    ) -> Result<Task, TaskError> {
        let t = match self.tasks.get(id).or_else(|| fetched.tasks.get(id)) {
            Some(t) => t,
            None => return Err(TaskError::TaskNotFound(id.to_owned())),
        };
        if t.status == TaskStatus::Cancelled {
            return Ok(t.clone());
        }
        if t.status.is_final() {
            return Err(TaskError::InvalidTransition {
                id: id.to_owned(),
                status: t.status,
                attempted: "cancelled".into(),
            });
        }
        let message = reason.unwrap_or_else(|| "cancelled by a client".into());
        self.end_cancelled(id, &message, now);
        self.tasks
            .get(id)
            .cloned()
            .ok_or_else(|| TaskError::TaskNotFound(id.to_owned()))
    }

    /// Moves an unfinished task to `cancelled`.
    pub(super) fn end_cancelled(&mut self, id: &str, message: &str, now: UnixMillis) {
        if self.tasks.get(id).is_none_or(|t| t.status.is_final()) {
            return;
        }
        self.unqueue(id);
        self.release(id);
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        t.status = TaskStatus::Cancelled;
        t.error = Some(Failure::new("CANCELLED", message));
        t.completed_at = Some(now);
        t.updated_at = now;
        t.lease_expires_at = None;
        t.deadline_at = None;
        self.events.push(events::task("cancelled", t, now));
        self.dirty_tasks.insert(id.to_owned());
        self.finish(id);
    }

    /// The current attempt failed: queue the task again after its backoff
    /// if attempts are left (and `retry`), otherwise end it.
    pub(super) fn fail_attempt(
        &mut self,
        id: &str,
        failure: Failure,
        timed_out: bool,
        retry: bool,
        now: UnixMillis,
    ) {
        self.release(id);
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        t.updated_at = now;
        t.lease_expires_at = None;
        t.deadline_at = None;
        t.claimed = false;
        t.error = Some(failure);
        self.dirty_tasks.insert(id.to_owned());
        if retry && t.attempts_left() > 0 {
            let delay = t.retry_policy.delay_ms(t.attempt);
            t.status = TaskStatus::Queued;
            t.available_at = Some(now + ms_i64(delay));
            t.progress = 0;
            t.started_at = None;
            self.events.push(events::task("retrying", t, now));
            self.enqueue(id, now);
        } else {
            t.status = if timed_out {
                TaskStatus::TimedOut
            } else {
                TaskStatus::Failed
            };
            t.completed_at = Some(now);
            let kind = if timed_out { "timed_out" } else { "failed" };
            self.events.push(events::task(kind, t, now));
            self.finish(id);
        }
    }

    /// The holder lost a task it had not begun (it never claimed it nor
    /// reported on it): queued again at once, and the attempt is not
    /// counted.
    pub(super) fn requeue_unstarted(&mut self, id: &str, failure: Failure, now: UnixMillis) {
        self.release(id);
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        t.attempt = t.attempt.saturating_sub(1);
        t.status = TaskStatus::Queued;
        t.updated_at = now;
        t.lease_expires_at = None;
        t.deadline_at = None;
        t.available_at = None;
        t.error = Some(failure);
        self.events.push(events::task("retrying", t, now));
        self.dirty_tasks.insert(id.to_owned());
        self.enqueue(id, now);
    }

    /// The holder of `id` is gone (offline, removed) or silent past its
    /// lease: the attempt is lost.
    pub(super) fn lose_attempt(&mut self, id: &str, failure: Failure, now: UnixMillis) {
        let Some(t) = self.tasks.get(id) else {
            return;
        };
        let begun = t.claimed || t.status == TaskStatus::InProgress;
        if begun {
            self.fail_attempt(id, failure, false, true, now);
        } else {
            self.requeue_unstarted(id, failure, now);
        }
    }

    /// A task reached a final status: its dependents and its workflow are
    /// told in `settle`.
    pub(super) fn finish(&mut self, id: &str) {
        self.armed.remove(id);
        self.ended.push_back(id.to_owned());
        self.finished.push(id.to_owned());
    }

    /// Tells dependents and workflows about every task that ended, until
    /// nothing more follows.
    pub(super) fn settle(&mut self, now: UnixMillis) {
        while let Some(id) = self.ended.pop_front() {
            let Some(t) = self.tasks.get(&id) else {
                continue;
            };
            let status = t.status;
            let stage = t
                .workflow_id
                .clone()
                .zip(t.stage.clone())
                .map(|(w, s)| (w, s, t.compensation));
            for d in self.dependents.remove(&id).unwrap_or_default() {
                if let Some(w) = self.waiting.get_mut(&d) {
                    w.outstanding = w.outstanding.saturating_sub(1);
                    if status != TaskStatus::Completed && w.failed.is_none() {
                        w.failed = Some((id.clone(), status));
                    }
                }
                self.recheck_pending(&d, now);
            }
            if let Some((workflow, stage, compensation)) = stage {
                self.on_stage_task(&workflow, &stage, compensation, &id, now);
            }
        }
    }

    /// Queues a pending task whose dependencies are done, or fails it when
    /// one failed and it may not run then.
    pub(super) fn recheck_pending(&mut self, id: &str, now: UnixMillis) {
        let Some(t) = self.tasks.get(id) else {
            return;
        };
        if t.status != TaskStatus::Pending {
            return;
        }
        let Some(w) = self.waiting.get(id) else {
            return;
        };
        let fail_now = t.dependency_failure == DependencyFailure::Fail && w.failed.is_some();
        if let (true, Some((dep, st))) = (fail_now, w.failed.clone()) {
            self.waiting.remove(id);
            let Some(t) = self.tasks.get_mut(id) else {
                return;
            };
            t.status = TaskStatus::Failed;
            t.error = Some(Failure::new(
                "DEPENDENCY_NOT_MET",
                format!("dependency {dep} is {}", st.as_str()),
            ));
            t.completed_at = Some(now);
            t.updated_at = now;
            self.events.push(events::task("failed", t, now));
            self.dirty_tasks.insert(id.to_owned());
            self.finish(id);
        } else if w.outstanding == 0 {
            self.waiting.remove(id);
            let Some(t) = self.tasks.get_mut(id) else {
                return;
            };
            t.status = TaskStatus::Queued;
            t.updated_at = now;
            self.dirty_tasks.insert(id.to_owned());
            self.enqueue(id, now);
        }
    }

    /// Looks at a task whose timer fired: a retry delay passed, a lease
    /// ran out, or an attempt's time is up.
    pub(super) fn check_timers(&mut self, id: &str, now: UnixMillis) {
        let Some(t) = self.tasks.get(id) else {
            return;
        };
        let (status, attempt, timeout_ms) = (t.status, t.attempt, t.timeout_ms);
        let (available_at, deadline_at, lease_at) =
            (t.available_at, t.deadline_at, t.lease_expires_at);
        let agent = t.agent_id.clone().unwrap_or_default();
        match status {
            TaskStatus::Queued => {
                if available_at.is_some_and(|a| a <= now) {
                    self.enqueue(id, now);
                } else {
                    self.arm(id);
                }
            }
            TaskStatus::Assigned | TaskStatus::InProgress => {
                if deadline_at.is_some_and(|d| d <= now) {
                    let secs = timeout_ms.unwrap_or(0) as f64 / 1000.0;
                    let failure = Failure::new(
                        "TASK_TIMEOUT",
                        format!("attempt {attempt} took longer than {secs} s"),
                    );
                    self.fail_attempt(id, failure, true, true, now);
                    return;
                }
                if let Some(lease_at) = lease_at.filter(|l| *l <= now) {
                    // Heartbeats keep only work the agent said it began: a
                    // task it was given but never reported on (its claim's
                    // answer may have been lost) is not held for ever.
                    let kept = (status == TaskStatus::InProgress)
                        .then(|| self.lease_kept_by_heartbeat(&agent, lease_at, now))
                        .flatten();
                    if let Some(until) = kept {
                        if let Some(t) = self.tasks.get_mut(id) {
                            t.lease_expires_at = Some(until);
                            // Written, so that readers see the lease as kept.
                            self.dirty_tasks.insert(id.to_owned());
                        }
                        self.arm(id);
                        return;
                    }
                    let failure = Failure::new(
                        "LEASE_EXPIRED",
                        format!("agent {agent} showed no sign of life within the lease"),
                    );
                    self.lose_attempt(id, failure, now);
                    return;
                }
                self.arm(id);
            }
            _ => {}
        }
    }

    /// A lease is kept by the holder's heartbeats: when the holder is live
    /// and beat since the lease was last renewed, the new end of the lease.
    fn lease_kept_by_heartbeat(
        &self,
        agent: &str,
        lease_at: UnixMillis,
        now: UnixMillis,
    ) -> Option<UnixMillis> {
        let live = self.registry.presence(agent)?;
        let lease = self.lease_ms();
        let renewed_at = lease_at - lease;
        let until = live.last_heartbeat_at + lease;
        (live.status.is_live() && live.last_heartbeat_at > renewed_at && until > now)
            .then_some(until)
    }
}

/// A report on a finished task: a repeat of the report that finished it
/// (same outcome, same holder) is answered with the task unchanged, so an
/// agent may retry a report whose answer it lost; anything else is a 409.
fn repeat_or_refuse(t: &Task, u: &TaskUpdate) -> Result<Task, TaskError> {
    let same_outcome = matches!(
        (t.status, u.status),
        (TaskStatus::Completed, Some(TaskStatus::Completed))
            | (TaskStatus::Failed, Some(TaskStatus::Failed))
    );
    let same_holder = u
        .agent_id
        .as_ref()
        .is_none_or(|a| t.agent_id.as_ref() == Some(a))
        && u.attempt.is_none_or(|n| n == t.attempt);
    if same_outcome && same_holder {
        return Ok(t.clone());
    }
    Err(TaskError::InvalidTransition {
        id: t.id.clone(),
        status: t.status,
        attempted: u
            .status
            .unwrap_or(TaskStatus::InProgress)
            .as_str()
            .to_owned(),
    })
}
