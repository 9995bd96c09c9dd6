//! Task and workflow wire types to domain types and back, by hand.

use chrono::{DateTime, Utc};
use switchboard_core::{FieldErrors, UnixMillis};
use switchboard_tasks as dom;
use switchboard_wire as wire;

use super::time;

fn opt_time(ms: Option<UnixMillis>) -> Option<DateTime<Utc>> {
    ms.map(time)
}

fn secs(ms: Option<u64>) -> Option<f64> {
    ms.map(|m| m as f64 / 1000.0)
}

pub(crate) fn priority(p: dom::Priority) -> wire::TaskPriority {
    match p {
        dom::Priority::Low => wire::TaskPriority::Low,
        dom::Priority::Normal => wire::TaskPriority::Normal,
        dom::Priority::High => wire::TaskPriority::High,
        dom::Priority::Critical => wire::TaskPriority::Critical,
    }
}

fn priority_in(p: wire::TaskPriority) -> dom::Priority {
    match p {
        wire::TaskPriority::Low => dom::Priority::Low,
        wire::TaskPriority::Normal => dom::Priority::Normal,
        wire::TaskPriority::High => dom::Priority::High,
        wire::TaskPriority::Critical => dom::Priority::Critical,
    }
}

pub(crate) fn task_status(s: dom::TaskStatus) -> wire::TaskStatus {
    match s {
        dom::TaskStatus::Pending => wire::TaskStatus::Pending,
        dom::TaskStatus::Queued => wire::TaskStatus::Queued,
        dom::TaskStatus::Assigned => wire::TaskStatus::Assigned,
        dom::TaskStatus::InProgress => wire::TaskStatus::InProgress,
        dom::TaskStatus::Completed => wire::TaskStatus::Completed,
        dom::TaskStatus::Failed => wire::TaskStatus::Failed,
        dom::TaskStatus::TimedOut => wire::TaskStatus::TimedOut,
        dom::TaskStatus::Cancelled => wire::TaskStatus::Cancelled,
    }
}

fn dependency_failure(d: dom::DependencyFailure) -> wire::DependencyFailure {
    match d {
        dom::DependencyFailure::Fail => wire::DependencyFailure::Fail,
        dom::DependencyFailure::Run => wire::DependencyFailure::Run,
    }
}

fn dependency_failure_in(d: wire::DependencyFailure) -> dom::DependencyFailure {
    match d {
        wire::DependencyFailure::Fail => dom::DependencyFailure::Fail,
        wire::DependencyFailure::Run => dom::DependencyFailure::Run,
    }
}

fn strategy(s: dom::BackoffStrategy) -> wire::BackoffStrategy {
    match s {
        dom::BackoffStrategy::Fixed => wire::BackoffStrategy::Fixed,
        dom::BackoffStrategy::Linear => wire::BackoffStrategy::Linear,
        dom::BackoffStrategy::Exponential => wire::BackoffStrategy::Exponential,
        dom::BackoffStrategy::Fibonacci => wire::BackoffStrategy::Fibonacci,
    }
}

fn strategy_in(s: wire::BackoffStrategy) -> dom::BackoffStrategy {
    match s {
        wire::BackoffStrategy::Fixed => dom::BackoffStrategy::Fixed,
        wire::BackoffStrategy::Linear => dom::BackoffStrategy::Linear,
        wire::BackoffStrategy::Exponential => dom::BackoffStrategy::Exponential,
        wire::BackoffStrategy::Fibonacci => dom::BackoffStrategy::Fibonacci,
    }
}

fn retry_in(r: Option<wire::RetryPolicyRequest>) -> dom::RetryPolicy {
    let d = dom::RetryPolicy::default();
    let Some(r) = r else {
        return d;
    };
    dom::RetryPolicy {
        max_attempts: r.max_attempts.unwrap_or(d.max_attempts),
        backoff_strategy: r.backoff_strategy.map_or(d.backoff_strategy, strategy_in),
        initial_delay_ms: r.initial_delay_ms.unwrap_or(d.initial_delay_ms),
        max_delay_ms: r
            .max_delay_ms
            .unwrap_or_else(|| d.max_delay_ms.max(r.initial_delay_ms.unwrap_or(0))),
        jitter: r.jitter.unwrap_or(d.jitter),
    }
}

fn retry(r: &dom::RetryPolicy) -> wire::RetryPolicy {
    wire::RetryPolicy {
        max_attempts: r.max_attempts,
        backoff_strategy: strategy(r.backoff_strategy),
        initial_delay_ms: r.initial_delay_ms,
        max_delay_ms: r.max_delay_ms,
        jitter: r.jitter,
    }
}

fn failure(f: dom::Failure) -> wire::TaskFailure {
    wire::TaskFailure {
        code: f.code,
        message: f.message,
    }
}

/// A create request; bad timeouts are named in `errs`.
pub(crate) fn new_task(
    r: wire::CreateTaskRequest,
    key_header: Option<String>,
    errs: &mut FieldErrors,
) -> dom::NewTask {
    dom::NewTask {
        id: r.id,
        task_type: r.task_type,
        priority: r.priority.map_or_else(Default::default, priority_in),
        input_data: r.input_data.unwrap_or_default(),
        assigned_agent: r.assigned_agent,
        capabilities: r.capabilities,
        dependencies: r.dependencies,
        dependency_failure: r
            .dependency_failure
            .map_or_else(Default::default, dependency_failure_in),
        timeout_ms: r
            .timeout
            .and_then(|s| dom::task::timeout_ms(s, "timeout", errs)),
        retry_policy: retry_in(r.retry_policy),
        workflow_id: r.parent_workflow_id,
        idempotency_key: r.idempotency_key.or(key_header),
        metadata: r.metadata.unwrap_or_default(),
    }
}

pub(crate) fn task(t: dom::Task) -> wire::Task {
    wire::Task {
        id: t.id,
        task_type: t.task_type,
        priority: priority(t.priority),
        status: task_status(t.status),
        input_data: t.input_data,
        output_data: t.output_data,
        progress: t.progress,
        error: t.error.map(failure),
        assigned_agent: t.assigned_agent,
        capabilities: t.capabilities,
        agent_id: t.agent_id,
        dependencies: t.dependencies,
        dependency_failure: dependency_failure(t.dependency_failure),
        timeout: secs(t.timeout_ms),
        retry_policy: retry(&t.retry_policy),
        attempt: t.attempt,
        parent_workflow_id: t.workflow_id,
        stage: t.stage,
        compensation: t.compensation,
        idempotency_key: t.idempotency_key,
        metadata: t.metadata,
        estimated_completion: opt_time(t.estimated_completion),
        created_at: time(t.created_at),
        updated_at: time(t.updated_at),
        assigned_at: opt_time(t.assigned_at),
        started_at: opt_time(t.started_at),
        completed_at: opt_time(t.completed_at),
        retry_at: opt_time(t.available_at).filter(|_| t.status == dom::TaskStatus::Queued),
        lease_expires_at: opt_time(t.lease_expires_at),
        deadline_at: opt_time(t.deadline_at),
    }
}

pub(crate) fn update(u: wire::UpdateTaskRequest) -> dom::TaskUpdate {
    dom::TaskUpdate {
        status: u.status.map(|s| match s {
            wire::ReportedTaskStatus::InProgress => dom::TaskStatus::InProgress,
            wire::ReportedTaskStatus::Completed => dom::TaskStatus::Completed,
            wire::ReportedTaskStatus::Failed => dom::TaskStatus::Failed,
        }),
        progress: u.progress,
        output_data: u.output_data,
        error: u.error.map(|e| dom::Failure::new(e.code, e.message)),
        estimated_completion: u.estimated_completion.map(|t| t.timestamp_millis()),
        agent_id: u.agent_id,
        attempt: u.attempt,
        retry: u.retry,
    }
}

fn failure_strategy(f: dom::FailureStrategy) -> wire::FailureStrategy {
    match f {
        dom::FailureStrategy::StopOnError => wire::FailureStrategy::StopOnError,
        dom::FailureStrategy::Continue => wire::FailureStrategy::Continue,
        dom::FailureStrategy::Compensate => wire::FailureStrategy::Compensate,
    }
}

fn failure_strategy_in(f: wire::FailureStrategy) -> dom::FailureStrategy {
    match f {
        wire::FailureStrategy::StopOnError => dom::FailureStrategy::StopOnError,
        wire::FailureStrategy::Continue => dom::FailureStrategy::Continue,
        wire::FailureStrategy::Compensate => dom::FailureStrategy::Compensate,
    }
}

pub(crate) fn workflow_status(s: dom::WorkflowStatus) -> wire::WorkflowStatus {
    match s {
        dom::WorkflowStatus::Running => wire::WorkflowStatus::Running,
        dom::WorkflowStatus::Compensating => wire::WorkflowStatus::Compensating,
        dom::WorkflowStatus::Completed => wire::WorkflowStatus::Completed,
        dom::WorkflowStatus::Failed => wire::WorkflowStatus::Failed,
        dom::WorkflowStatus::Compensated => wire::WorkflowStatus::Compensated,
        dom::WorkflowStatus::Cancelled => wire::WorkflowStatus::Cancelled,
    }
}

fn stage_status(s: dom::StageStatus) -> wire::StageStatus {
    match s {
        dom::StageStatus::Pending => wire::StageStatus::Pending,
        dom::StageStatus::Running => wire::StageStatus::Running,
        dom::StageStatus::Completed => wire::StageStatus::Completed,
        dom::StageStatus::Failed => wire::StageStatus::Failed,
        dom::StageStatus::Skipped => wire::StageStatus::Skipped,
        dom::StageStatus::Cancelled => wire::StageStatus::Cancelled,
        dom::StageStatus::Compensating => wire::StageStatus::Compensating,
        dom::StageStatus::Compensated => wire::StageStatus::Compensated,
        dom::StageStatus::CompensationFailed => wire::StageStatus::CompensationFailed,
    }
}

/// A create request; bad timeouts are named in `errs`.
pub(crate) fn new_workflow(
    r: wire::CreateWorkflowRequest,
    key_header: Option<String>,
    errs: &mut FieldErrors,
) -> dom::NewWorkflow {
    let config = r.configuration.unwrap_or_default();
    let stages = r
        .stages
        .into_iter()
        .enumerate()
        .map(|(i, s)| dom::StageSpec {
            timeout_ms: dom::workflow::stage_timeout(
                s.timeout,
                &format!("stages[{i}].timeout"),
                errs,
            ),
            compensation: s.compensation.map(|c| dom::Compensation {
                agent_type: c.agent_type,
                input: c.input.unwrap_or_default(),
                timeout_ms: dom::workflow::stage_timeout(
                    c.timeout,
                    &format!("stages[{i}].compensation.timeout"),
                    errs,
                ),
                retry_policy: retry_in(c.retry_policy),
            }),
            name: s.name,
            agent_type: s.agent_type,
            capabilities: s.capabilities,
            dependencies: s.dependencies,
            input: s.input.unwrap_or_default(),
            priority: s.priority.map_or_else(Default::default, priority_in),
            retry_policy: retry_in(s.retry_policy),
        })
        .collect();
    dom::NewWorkflow {
        id: r.id,
        name: r.name,
        project_id: r.project_id,
        input: r.input.unwrap_or_default(),
        stages,
        parallel_execution: config.parallel_execution.unwrap_or(true),
        failure_strategy: config
            .failure_strategy
            .map_or_else(Default::default, failure_strategy_in),
        idempotency_key: r.idempotency_key.or(key_header),
        metadata: r.metadata.unwrap_or_default(),
    }
}

pub(crate) fn workflow(w: dom::Workflow) -> wire::Workflow {
    wire::Workflow {
        id: w.id,
        name: w.name,
        project_id: w.project_id,
        status: workflow_status(w.status),
        input: w.input,
        stages: w
            .stages
            .into_iter()
            .map(|s| wire::WorkflowStage {
                compensable: s.spec.compensation.is_some(),
                name: s.spec.name,
                agent_type: s.spec.agent_type,
                dependencies: s.spec.dependencies,
                status: stage_status(s.status),
                task_id: s.task_id,
                output: s.output,
                error: s.error.map(failure),
                started_at: opt_time(s.started_at),
                completed_at: opt_time(s.completed_at),
                compensation_task_id: s.compensation_task_id,
            })
            .collect(),
        configuration: wire::WorkflowConfigurationApplied {
            parallel_execution: w.parallel_execution,
            failure_strategy: failure_strategy(w.failure_strategy),
        },
        error: w.error.map(failure),
        idempotency_key: w.idempotency_key,
        metadata: w.metadata,
        created_at: time(w.created_at),
        updated_at: time(w.updated_at),
        completed_at: opt_time(w.completed_at),
    }
}
