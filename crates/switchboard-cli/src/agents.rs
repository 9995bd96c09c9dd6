//! `switchboard agents ...`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use switchboard_client::{AgentListQuery, Client};
use switchboard_wire::{
    Agent, AgentCredentials, HeartbeatRequest, RegisterAgentRequest, ReportedStatus, TopicAcl,
};

use crate::output;

#[derive(Subcommand)]
pub(crate) enum AgentsCommand {
    /// List agents, filtered.
    List {
        /// Only this type.
        #[arg(long = "type")]
        agent_type: Option<String>,
        /// Only these statuses (repeat or comma-separate).
        #[arg(long, value_delimiter = ',')]
        status: Vec<String>,
        /// Only agents with all these capabilities (repeat or comma-separate).
        #[arg(long, value_delimiter = ',')]
        capability: Vec<String>,
        /// At most this many (all when absent).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Show one agent.
    Get {
        /// Agent id.
        id: String,
    },
    /// Register an agent, or update its registration.
    Register {
        /// A JSON file with the registration body (the flags below are then ignored).
        #[arg(long, short = 'f', conflicts_with_all = ["id", "agent_type"])]
        file: Option<PathBuf>,
        /// Agent id.
        #[arg(long, required_unless_present = "file")]
        id: Option<String>,
        /// Agent type.
        #[arg(long = "type", required_unless_present = "file")]
        agent_type: Option<String>,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Semantic version.
        #[arg(long)]
        version: Option<String>,
        /// Capabilities (repeat or comma-separate).
        #[arg(long, value_delimiter = ',')]
        capability: Vec<String>,
        /// Where the agent serves requests.
        #[arg(long)]
        endpoint: Option<String>,
        /// Where its health can be checked.
        #[arg(long)]
        health_check_url: Option<String>,
        /// How many tasks it takes at once.
        #[arg(long)]
        max_concurrent_tasks: Option<u32>,
    },
    /// Send one heartbeat for an agent.
    Heartbeat {
        /// Agent id.
        id: String,
        /// Reported status: active, idle, busy or draining.
        #[arg(long)]
        status: Option<String>,
        /// Tasks in hand.
        #[arg(long)]
        current_tasks: Option<u32>,
    },
    /// Remove an agent (its credentials stop working at once).
    Remove {
        /// Agent id.
        id: String,
    },
    /// Rotate or revoke an agent's client credentials.
    #[command(subcommand)]
    Credentials(CredentialsCommand),
    /// Show or set the topics an agent may publish and subscribe to.
    #[command(subcommand)]
    Acl(AclCommand),
}

#[derive(Subcommand)]
pub(crate) enum CredentialsCommand {
    /// Issue a new client secret (printed once); the old ones keep working
    /// for the grace period.
    Rotate {
        /// Agent id.
        id: String,
        /// How long the old secrets keep working, in seconds (the hub's
        /// auth.secret_grace when absent).
        #[arg(long)]
        grace_seconds: Option<u64>,
    },
    /// Revoke every client secret and token of the agent.
    Revoke {
        /// Agent id.
        id: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum AclCommand {
    /// Print the agent's ACL.
    Get {
        /// Agent id.
        id: String,
    },
    /// Replace the agent's ACL (topic patterns; `{agent_id}` stands for its id).
    Set {
        /// Agent id.
        id: String,
        /// Patterns it may publish on (repeat or comma-separate).
        #[arg(long, value_delimiter = ',')]
        publish: Vec<String>,
        /// Patterns it may subscribe to (repeat or comma-separate).
        #[arg(long, value_delimiter = ',')]
        subscribe: Vec<String>,
    },
}

/// Prints new client credentials, which the hub shows only once.
fn print_credentials(c: &AgentCredentials) {
    println!("client credentials (shown once; keep the secret safe):");
    println!("  client_id:     {}", c.client_id);
    println!("  client_secret: {}", c.client_secret);
    println!(
        "  get a token:   switchboard auth token --client-id {} --client-secret <secret>",
        c.client_id
    );
    if let Some(t) = c.previous_valid_until {
        println!("  the previous secret works until {}", t.to_rfc3339());
    }
}

pub(crate) async fn run(client: Client, json: bool, cmd: AgentsCommand) -> anyhow::Result<()> {
    match cmd {
        AgentsCommand::List {
            agent_type,
            status,
            capability,
            limit,
        } => {
            let q = AgentListQuery {
                agent_type,
                statuses: status,
                capabilities: capability,
                limit,
                cursor: None,
            };
            let agents = if limit.is_some() {
                client.list_agents(&q).await?.agents
            } else {
                client.list_all_agents(&q).await?
            };
            if json {
                output::json(&agents)
            } else {
                print_agents(&agents);
                Ok(())
            }
        }
        AgentsCommand::Get { id } => {
            let agent = client.get_agent(&id).await?;
            if json {
                output::json(&agent)
            } else {
                print_agent(&agent);
                Ok(())
            }
        }
        AgentsCommand::Register {
            file,
            id,
            agent_type,
            name,
            version,
            capability,
            endpoint,
            health_check_url,
            max_concurrent_tasks,
        } => {
            let req = match file {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    serde_json::from_str::<RegisterAgentRequest>(&text)
                        .with_context(|| format!("{} is not a registration", path.display()))?
                }
                None => RegisterAgentRequest {
                    id: id.unwrap_or_default(),
                    agent_type: agent_type.unwrap_or_default(),
                    name,
                    version,
                    capabilities: capability,
                    endpoint,
                    health_check_url,
                    configuration: max_concurrent_tasks.map(|n| {
                        let mut m = serde_json::Map::new();
                        m.insert("max_concurrent_tasks".into(), n.into());
                        m
                    }),
                    metadata: None,
                },
            };
            let (agent, created) = client.register_agent(&req).await?;
            if json {
                output::json(&agent)
            } else {
                let verb = if created { "registered" } else { "updated" };
                println!("{verb} agent {}", agent.id);
                if let Some(c) = &agent.credentials {
                    print_credentials(c);
                }
                Ok(())
            }
        }
        AgentsCommand::Heartbeat {
            id,
            status,
            current_tasks,
        } => {
            let status = match status.as_deref() {
                None => None,
                Some("active") => Some(ReportedStatus::Active),
                Some("idle") => Some(ReportedStatus::Idle),
                Some("busy") => Some(ReportedStatus::Busy),
                Some("draining") => Some(ReportedStatus::Draining),
                Some(other) => {
                    anyhow::bail!("--status {other:?} is not one of active, idle, busy, draining")
                }
            };
            let ack = client
                .heartbeat(
                    &id,
                    &HeartbeatRequest {
                        status,
                        current_tasks,
                        performance_metrics: None,
                    },
                )
                .await?;
            if json {
                output::json(&ack)
            } else {
                let status = serde_json::to_value(ack.status)?;
                println!(
                    "agent {} is {}",
                    ack.agent_id,
                    status.as_str().unwrap_or_default()
                );
                Ok(())
            }
        }
        AgentsCommand::Credentials(CredentialsCommand::Rotate { id, grace_seconds }) => {
            let c = client.rotate_credentials(&id, grace_seconds).await?;
            if json {
                output::json(&c)
            } else {
                print_credentials(&c);
                Ok(())
            }
        }
        AgentsCommand::Credentials(CredentialsCommand::Revoke { id }) => {
            client.revoke_credentials(&id).await?;
            if !json {
                println!("revoked every secret and token of agent {id}");
            }
            Ok(())
        }
        AgentsCommand::Acl(AclCommand::Get { id }) => {
            let acl = client.get_acl(&id).await?;
            print_acl(json, &acl)
        }
        AgentsCommand::Acl(AclCommand::Set {
            id,
            publish,
            subscribe,
        }) => {
            let acl = client
                .set_acl(&id, &TopicAcl { publish, subscribe })
                .await?;
            print_acl(json, &acl)
        }
        AgentsCommand::Remove { id } => {
            client.remove_agent(&id).await?;
            if json {
                output::json(&serde_json::json!({ "removed": id }))
            } else {
                println!("removed agent {id}");
                Ok(())
            }
        }
    }
}

fn status_name(a: &Agent) -> String {
    serde_json::to_value(a.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn print_agents(agents: &[Agent]) {
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            vec![
                a.id.clone(),
                a.agent_type.clone(),
                status_name(a),
                match a.max_concurrent_tasks {
                    Some(m) => format!("{}/{m}", a.current_tasks),
                    None => a.current_tasks.to_string(),
                },
                a.last_heartbeat_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                a.capabilities.join(","),
            ]
        })
        .collect();
    output::table(
        &[
            "ID",
            "TYPE",
            "STATUS",
            "TASKS",
            "LAST HEARTBEAT (UTC)",
            "CAPABILITIES",
        ],
        &rows,
    );
}

fn print_agent(a: &Agent) {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let rows = vec![
        vec!["id".into(), a.id.clone()],
        vec!["type".into(), a.agent_type.clone()],
        vec!["name".into(), a.name.clone()],
        vec!["version".into(), opt(&a.version)],
        vec!["status".into(), status_name(a)],
        vec!["capabilities".into(), a.capabilities.join(", ")],
        vec!["endpoint".into(), opt(&a.endpoint)],
        vec!["health_check_url".into(), opt(&a.health_check_url)],
        vec![
            "tasks".into(),
            match a.max_concurrent_tasks {
                Some(m) => format!("{}/{m}", a.current_tasks),
                None => a.current_tasks.to_string(),
            },
        ],
        vec!["registered_at".into(), a.registered_at.to_rfc3339()],
        vec!["last_heartbeat_at".into(), a.last_heartbeat_at.to_rfc3339()],
    ];
    output::table(&["FIELD", "VALUE"], &rows);
}

fn print_acl(json: bool, acl: &TopicAcl) -> anyhow::Result<()> {
    if json {
        return output::json(acl);
    }
    println!("publish:   {}", acl.publish.join(", "));
    println!("subscribe: {}", acl.subscribe.join(", "));
    Ok(())
}
