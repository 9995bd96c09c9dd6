//! `switchboard groups ...` and `switchboard dlq ...`: consumer groups and
//! their dead letters.

use anyhow::Context;
use clap::Subcommand;
use switchboard_client::Client;
use switchboard_wire::{BackoffPolicy, CreateGroupRequest, GroupStart, StartName};

use crate::output;

#[derive(Subcommand)]
pub(crate) enum GroupsCommand {
    /// Create a consumer group (a durable named subscription).
    Create {
        /// Group name.
        name: String,
        /// Topic patterns (repeat or comma-separate).
        #[arg(long = "topic", value_delimiter = ',', required = true)]
        topics: Vec<String>,
        /// Where to start: now, earliest, or an offset to start after.
        #[arg(long, default_value = "now")]
        start: String,
        /// Milliseconds a consumer has to acknowledge a delivery.
        #[arg(long)]
        ack_wait_ms: Option<u64>,
        /// Deliveries of one event before it is dead-lettered.
        #[arg(long)]
        max_deliveries: Option<u32>,
        /// Backoff kind: fixed, linear, exponential or fibonacci.
        #[arg(long)]
        backoff: Option<String>,
        /// The first redelivery delay, in milliseconds.
        #[arg(long)]
        backoff_initial_ms: Option<u64>,
        /// The longest redelivery delay, in milliseconds.
        #[arg(long)]
        backoff_max_ms: Option<u64>,
    },
    /// List consumer groups.
    List,
    /// Show one consumer group.
    Get {
        /// Group name.
        name: String,
    },
    /// Delete a consumer group, its pending events and dead letters.
    Delete {
        /// Group name.
        name: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum DlqCommand {
    /// List a group's dead letters.
    List {
        /// Group name.
        group: String,
        /// Only offsets after this.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show one dead letter with its event.
    Show {
        /// Group name.
        group: String,
        /// The event's offset.
        offset: u64,
    },
    /// Replay dead letters into the group (all, or those given).
    Replay {
        /// Group name.
        group: String,
        /// Offsets (repeat or comma-separate); all when absent.
        #[arg(long = "offset", value_delimiter = ',')]
        offsets: Vec<u64>,
    },
    /// Delete dead letters for good (all, or those given).
    Purge {
        /// Group name.
        group: String,
        /// Offsets (repeat or comma-separate); all when absent.
        #[arg(long = "offset", value_delimiter = ',')]
        offsets: Vec<u64>,
    },
}

fn parse_start(s: &str) -> anyhow::Result<GroupStart> {
    Ok(match s {
        "now" => GroupStart::Named(StartName::Now),
        "earliest" => GroupStart::Named(StartName::Earliest),
        other => GroupStart::After(
            other
                .parse()
                .context("--start must be now, earliest or an offset")?,
        ),
    })
}

pub(crate) async fn run(client: Client, json: bool, cmd: GroupsCommand) -> anyhow::Result<()> {
    match cmd {
        GroupsCommand::Create {
            name,
            topics,
            start,
            ack_wait_ms,
            max_deliveries,
            backoff,
            backoff_initial_ms,
            backoff_max_ms,
        } => {
            let policy =
                (backoff.is_some() || backoff_initial_ms.is_some() || backoff_max_ms.is_some())
                    .then(|| {
                        let d = BackoffPolicy::default();
                        BackoffPolicy {
                            kind: backoff.unwrap_or(d.kind),
                            initial_ms: backoff_initial_ms.unwrap_or(d.initial_ms),
                            max_ms: backoff_max_ms.unwrap_or(d.max_ms),
                            jitter: d.jitter,
                        }
                    });
            let req = CreateGroupRequest {
                topics,
                start: Some(parse_start(&start)?),
                ack_wait_ms,
                max_deliveries,
                backoff: policy,
                ..Default::default()
            };
            let (group, created) = client.create_group(&name, &req).await?;
            if json {
                return output::json(&group);
            }
            let verb = if created { "created" } else { "exists" };
            println!(
                "{verb}: group {} on {}",
                group.name,
                group.topics.join(", ")
            );
        }
        GroupsCommand::List => {
            let list = client.list_groups().await?;
            if json {
                return output::json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .groups
                .iter()
                .map(|g| {
                    vec![
                        g.name.clone(),
                        g.topics.join(","),
                        g.pending.to_string(),
                        g.in_flight.to_string(),
                        g.consumers.to_string(),
                        g.dead_letters.to_string(),
                    ]
                })
                .collect();
            output::table(
                &[
                    "NAME",
                    "TOPICS",
                    "PENDING",
                    "IN FLIGHT",
                    "CONSUMERS",
                    "DEAD",
                ],
                &rows,
            );
        }
        GroupsCommand::Get { name } => output::json(&client.get_group(&name).await?)?,
        GroupsCommand::Delete { name } => {
            client.delete_group(&name).await?;
            if !json {
                println!("deleted group {name}");
            }
        }
    }
    Ok(())
}

pub(crate) async fn dlq(client: Client, json: bool, cmd: DlqCommand) -> anyhow::Result<()> {
    let some = |v: Vec<u64>| (!v.is_empty()).then_some(v);
    match cmd {
        DlqCommand::List {
            group,
            after,
            limit,
        } => {
            let page = client.dead_letters(&group, after, limit).await?;
            if json {
                return output::json(&page);
            }
            let rows: Vec<Vec<String>> = page
                .dead_letters
                .iter()
                .map(|d| {
                    vec![
                        d.offset.to_string(),
                        d.event.topic.clone(),
                        d.attempts.to_string(),
                        d.dead_at.to_rfc3339(),
                        d.last_error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            output::table(
                &["OFFSET", "TOPIC", "ATTEMPTS", "DEAD AT", "LAST ERROR"],
                &rows,
            );
            if let Some(next) = page.next_after {
                println!("more: --after {next}");
            }
        }
        DlqCommand::Show { group, offset } => {
            output::json(&client.dead_letter(&group, offset).await?)?;
        }
        DlqCommand::Replay { group, offsets } => {
            let n = client.replay_dead_letters(&group, some(offsets)).await?;
            if json {
                return output::json(&serde_json::json!({"count": n}));
            }
            println!("replayed {n} dead letter(s) into {group}");
        }
        DlqCommand::Purge { group, offsets } => {
            let n = client.purge_dead_letters(&group, some(offsets)).await?;
            if json {
                return output::json(&serde_json::json!({"count": n}));
            }
            println!("purged {n} dead letter(s) from {group}");
        }
    }
    Ok(())
}
