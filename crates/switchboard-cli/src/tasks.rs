//! `switchboard tasks ...`: create, list, inspect, cancel tasks, and the
//! agent's side (claim, report).

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Map, Value};
use switchboard_client::{Client, TaskListQuery};
use switchboard_wire::{
    ClaimRequest, CreateTaskRequest, ReportedTaskStatus, RetryPolicyRequest, Task, TaskFailure,
    UpdateTaskRequest,
};

use crate::output;

#[derive(Subcommand)]
pub(crate) enum TasksCommand {
    /// Create a task.
    Create {
        /// The kind of work (agents of this type or capability take it).
        #[arg(long = "type")]
        task_type: String,
        /// Its id; generated when absent.
        #[arg(long)]
        id: Option<String>,
        /// low, normal, high or critical.
        #[arg(long)]
        priority: Option<String>,
        /// The input, a JSON object.
        #[arg(long)]
        input: Option<String>,
        /// Run it on this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Capabilities the agent must also have (repeat or comma-separate).
        #[arg(long = "capability", value_delimiter = ',')]
        capabilities: Vec<String>,
        /// Tasks that must complete first (repeat or comma-separate).
        #[arg(long = "depends-on", value_delimiter = ',')]
        dependencies: Vec<String>,
        /// Seconds one attempt may take.
        #[arg(long)]
        timeout: Option<f64>,
        /// Attempts in all (1: no retry).
        #[arg(long)]
        max_attempts: Option<u32>,
        /// fixed, linear, exponential or fibonacci.
        #[arg(long)]
        backoff: Option<String>,
        /// Makes a retried create safe.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// List tasks.
    List {
        /// Statuses (repeat or comma-separate).
        #[arg(long, value_delimiter = ',')]
        status: Vec<String>,
        /// Only this type.
        #[arg(long = "type")]
        task_type: Option<String>,
        /// Only tasks held by this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Only this workflow's tasks.
        #[arg(long)]
        workflow: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show one task.
    Get {
        /// Task id.
        id: String,
    },
    /// Cancel a task.
    Cancel {
        /// Task id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// As an agent: take the tasks given to it (waiting up to --wait-ms).
    Claim {
        /// The agent.
        #[arg(long)]
        agent: String,
        /// At most this many.
        #[arg(long, default_value_t = 1)]
        max: u32,
        /// Wait this long for work, in milliseconds (up to 20000).
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
    },
    /// As an agent: report on a task it holds.
    Report {
        /// Task id.
        id: String,
        /// in_progress, completed or failed.
        #[arg(long)]
        status: Option<String>,
        /// 0 to 100.
        #[arg(long)]
        progress: Option<u8>,
        /// The output, a JSON object.
        #[arg(long)]
        output: Option<String>,
        /// With failed: why.
        #[arg(long)]
        error: Option<String>,
        /// With failed: do not retry.
        #[arg(long)]
        no_retry: bool,
        /// The reporting agent (refused unless it holds the task).
        #[arg(long)]
        agent: Option<String>,
    },
}

/// A JSON object given on the command line.
pub(crate) fn object(flag: &str, text: &str) -> anyhow::Result<Map<String, Value>> {
    match serde_json::from_str(text).with_context(|| format!("{flag} is not JSON"))? {
        Value::Object(m) => Ok(m),
        _ => anyhow::bail!("{flag} must be a JSON object"),
    }
}

/// Parses a name the API takes as a JSON string enum.
fn named<T: serde::de::DeserializeOwned>(flag: &str, value: &str) -> anyhow::Result<T> {
    serde_json::from_value(Value::String(value.to_owned()))
        .with_context(|| format!("{flag} {value:?} is not one of the accepted names"))
}

pub(crate) async fn run(client: Client, json: bool, cmd: TasksCommand) -> anyhow::Result<()> {
    match cmd {
        TasksCommand::Create {
            task_type,
            id,
            priority,
            input,
            agent,
            capabilities,
            dependencies,
            timeout,
            max_attempts,
            backoff,
            idempotency_key,
        } => {
            let retry_policy = (max_attempts.is_some() || backoff.is_some())
                .then(|| -> anyhow::Result<RetryPolicyRequest> {
                    Ok(RetryPolicyRequest {
                        max_attempts,
                        backoff_strategy: backoff.map(|b| named("--backoff", &b)).transpose()?,
                        ..Default::default()
                    })
                })
                .transpose()?;
            let req = CreateTaskRequest {
                id,
                task_type,
                priority: priority.map(|p| named("--priority", &p)).transpose()?,
                assigned_agent: agent,
                capabilities,
                input_data: input.map(|i| object("--input", &i)).transpose()?,
                dependencies,
                timeout,
                retry_policy,
                idempotency_key,
                ..Default::default()
            };
            let (task, created) = client.create_task(&req).await?;
            if json {
                return output::json(&task);
            }
            let verb = if created { "created" } else { "exists" };
            println!("{verb}: task {} ({})", task.id, status(&task));
        }
        TasksCommand::List {
            status: statuses,
            task_type,
            agent,
            workflow,
            limit,
        } => {
            let list = client
                .list_tasks(&TaskListQuery {
                    status: statuses,
                    task_type,
                    agent_id: agent,
                    workflow_id: workflow,
                    limit: Some(limit),
                    cursor: None,
                })
                .await?;
            if json {
                return output::json(&list);
            }
            let rows: Vec<Vec<String>> = list.tasks.iter().map(row).collect();
            output::table(
                &[
                    "ID", "TYPE", "PRIORITY", "STATUS", "AGENT", "ATTEMPT", "PROGRESS",
                ],
                &rows,
            );
            if list.total > list.tasks.len() as u64 {
                println!("({} of {} shown)", list.tasks.len(), list.total);
            }
        }
        TasksCommand::Get { id } => {
            let task = client.get_task(&id).await?;
            output::json(&task)?;
        }
        TasksCommand::Cancel { id, reason } => {
            let task = client.cancel_task(&id, reason.as_deref()).await?;
            if json {
                return output::json(&task);
            }
            println!("cancelled: task {}", task.id);
        }
        TasksCommand::Claim {
            agent,
            max,
            wait_ms,
        } => {
            let tasks = client
                .claim_tasks(&ClaimRequest {
                    agent_id: agent,
                    max_tasks: Some(max),
                    wait_ms: Some(wait_ms),
                })
                .await?;
            if json {
                return output::json(&tasks);
            }
            let rows: Vec<Vec<String>> = tasks.iter().map(row).collect();
            output::table(
                &[
                    "ID", "TYPE", "PRIORITY", "STATUS", "AGENT", "ATTEMPT", "PROGRESS",
                ],
                &rows,
            );
        }
        TasksCommand::Report {
            id,
            status: st,
            progress,
            output: out,
            error,
            no_retry,
            agent,
        } => {
            let status: Option<ReportedTaskStatus> =
                st.map(|s| named("--status", &s)).transpose()?;
            let req = UpdateTaskRequest {
                status,
                progress,
                output_data: out.map(|o| object("--output", &o)).transpose()?,
                error: error.map(|message| TaskFailure {
                    code: "TASK_FAILED".into(),
                    message,
                }),
                retry: no_retry.then_some(false),
                agent_id: agent,
                ..Default::default()
            };
            let task = client.update_task(&id, &req).await?;
            if json {
                return output::json(&task);
            }
            println!("task {}: {}", task.id, status_line(&task));
        }
    }
    Ok(())
}

fn status(t: &Task) -> String {
    output::name(&t.status)
}

fn status_line(t: &Task) -> String {
    let mut s = status(t);
    if let Some(e) = &t.error {
        s.push_str(&format!(" ({}: {})", e.code, e.message));
    }
    s
}

fn row(t: &Task) -> Vec<String> {
    vec![
        t.id.clone(),
        t.task_type.clone(),
        output::name(&t.priority),
        status(t),
        t.agent_id.clone().unwrap_or_else(|| "-".into()),
        format!("{}/{}", t.attempt, t.retry_policy.max_attempts),
        format!("{}%", t.progress),
    ]
}
