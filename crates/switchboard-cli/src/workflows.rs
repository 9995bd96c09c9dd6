//! `switchboard workflows ...`: create from a file, list, inspect, cancel,
//! and watch one run.

use std::io::Read;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Map, Value, json};
use switchboard_client::{Client, EventQuery, EventStream, From, WorkflowListQuery};
use switchboard_wire::{CreateWorkflowRequest, Workflow, WorkflowStatus};

use crate::output::{self, name};

#[derive(Subcommand)]
pub(crate) enum WorkflowsCommand {
    /// Create and start a workflow from a JSON file (`-` for standard input).
    Create {
        /// The workflow, as `POST /api/v1/workflows` takes it.
        #[arg(short = 'f', long = "file")]
        file: String,
        /// Follow it until it ends, as `watch` does.
        #[arg(long)]
        watch: bool,
    },
    /// List workflows.
    List {
        /// Statuses (repeat or comma-separate).
        #[arg(long, value_delimiter = ',')]
        status: Vec<String>,
        /// Only this project's.
        #[arg(long)]
        project: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show one workflow and its stages.
    Get {
        /// Workflow id.
        id: String,
    },
    /// Cancel a workflow.
    Cancel {
        /// Workflow id.
        id: String,
    },
    /// Follow a workflow live: each stage's progress until it ends (exit 0
    /// when it completed, 1 otherwise).
    Watch {
        /// Workflow id.
        id: String,
    },
}

pub(crate) async fn run(client: Client, json: bool, cmd: WorkflowsCommand) -> anyhow::Result<()> {
    match cmd {
        WorkflowsCommand::Create {
            file,
            watch: follow,
        } => {
            let text = if file == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("read the workflow from standard input")?;
                s
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("read {file}"))?
            };
            let req: CreateWorkflowRequest =
                serde_json::from_str(&text).with_context(|| format!("{file} is not a workflow"))?;
            // With an id known before the create, the stream opens first and
            // shows the first stages being given out too.
            let early = match (&req.id, follow) {
                (Some(id), true) => Some(open_stream(&client, id).await?),
                _ => None,
            };
            let (w, created) = client.create_workflow(&req).await?;
            if follow {
                let stream = match early {
                    Some(s) => s,
                    None => open_stream(&client, &w.id).await?,
                };
                return watch(&client, stream, &w.id, json).await;
            }
            if json {
                return output::json(&w);
            }
            let verb = if created { "created" } else { "exists" };
            println!("{verb}: workflow {} ({})", w.id, name(&w.status));
            stages(&w);
        }
        WorkflowsCommand::List {
            status,
            project,
            limit,
        } => {
            let list = client
                .list_workflows(&WorkflowListQuery {
                    status,
                    project_id: project,
                    limit: Some(limit),
                    cursor: None,
                })
                .await?;
            if json {
                return output::json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .workflows
                .iter()
                .map(|w| {
                    let done = w
                        .stages
                        .iter()
                        .filter(|s| name(&s.status) == "completed")
                        .count();
                    vec![
                        w.id.clone(),
                        w.name.clone(),
                        name(&w.status),
                        format!("{done}/{}", w.stages.len()),
                    ]
                })
                .collect();
            output::table(&["ID", "NAME", "STATUS", "STAGES DONE"], &rows);
        }
        WorkflowsCommand::Get { id } => {
            let w = client.get_workflow(&id).await?;
            if json {
                return output::json(&w);
            }
            println!("workflow {} ({}): {}", w.id, w.name, name(&w.status));
            stages(&w);
        }
        WorkflowsCommand::Cancel { id } => {
            let w = client.cancel_workflow(&id).await?;
            if json {
                return output::json(&w);
            }
            println!("cancelled: workflow {}", w.id);
        }
        WorkflowsCommand::Watch { id } => {
            let stream = open_stream(&client, &id).await?;
            return watch(&client, stream, &id, json).await;
        }
    }
    Ok(())
}

/// The live events of workflow `id` and its tasks.
async fn open_stream(client: &Client, id: &str) -> anyhow::Result<EventStream> {
    let mut filter = Map::new();
    filter.insert("workflow_id".into(), json!(id));
    Ok(client
        .stream_events(
            &EventQuery {
                topics: vec!["workflow.>".into(), "task.>".into()],
                filter: Some(filter),
                from: From::Now,
                limit: None,
            },
            None,
        )
        .await?)
}

/// Prints the workflow's stages, then a line per change until it ends.
/// `stream` was opened before the first read, so no change falls between.
async fn watch(
    client: &Client,
    mut stream: EventStream,
    id: &str,
    json: bool,
) -> anyhow::Result<()> {
    let mut w = client.get_workflow(id).await?;
    if !json {
        println!("workflow {} ({}): {}", w.id, w.name, name(&w.status));
        stages(&w);
    }
    while !is_final(w.status) {
        let Some(event) = stream.next().await? else {
            anyhow::bail!("the hub closed the stream before workflow {id} ended");
        };
        let data = event.data.clone().unwrap_or(Value::Null);
        if json {
            println!("{}", serde_json::to_string(&event)?);
        } else {
            let field = |k: &str| data.get(k).and_then(Value::as_str).unwrap_or("");
            let undo = if data.get("compensation") == Some(&Value::Bool(true)) {
                " (compensation)"
            } else {
                ""
            };
            let what = match field("stage") {
                "" => String::new(),
                s => format!(" {s}{undo}"),
            };
            let agent = match field("agent_id") {
                "" => String::new(),
                a => format!(" on {a}"),
            };
            println!(
                "{}  {}{what}{agent}",
                event.time.format("%H:%M:%S%.3f"),
                event.event_type,
            );
        }
        // The run's last event ends the watch (the record may be final
        // before that event has been printed).
        if matches!(
            event.event_type.as_str(),
            "workflow.completed"
                | "workflow.failed"
                | "workflow.compensated"
                | "workflow.cancelled"
        ) {
            w = client.get_workflow(id).await?;
        }
    }
    if !json {
        println!("workflow {} ended: {}", w.id, name(&w.status));
        stages(&w);
    }
    if w.status == WorkflowStatus::Completed {
        Ok(())
    } else {
        anyhow::bail!("workflow {id} ended {}", name(&w.status))
    }
}

fn is_final(s: WorkflowStatus) -> bool {
    !matches!(s, WorkflowStatus::Running | WorkflowStatus::Compensating)
}

fn stages(w: &Workflow) {
    let rows: Vec<Vec<String>> = w
        .stages
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.agent_type.clone(),
                name(&s.status),
                s.task_id.clone().unwrap_or_else(|| "-".into()),
                s.error
                    .as_ref()
                    .map_or_else(String::new, |e| format!("{}: {}", e.code, e.message)),
            ]
        })
        .collect();
    output::table(&["STAGE", "AGENT TYPE", "STATUS", "TASK", "ERROR"], &rows);
}
