//! `switchboard gateway ...`, `switchboard webhooks ...` and
//! `switchboard hooks ...`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use switchboard_client::Client;
use switchboard_wire::{HookConfig, RouteConfig, ServiceConfig, WebhookConfig};

use crate::output;

#[derive(Subcommand)]
pub(crate) enum GatewayCommand {
    /// Services: list, show, configure (from a JSON file), forget.
    #[command(subcommand)]
    Services(ServicesCommand),
    /// Routes: list, set, remove.
    #[command(subcommand)]
    Routes(RoutesCommand),
    /// Services, their instances (health, ejection, breaker) and routes.
    Topology,
}

#[derive(Subcommand)]
pub(crate) enum ServicesCommand {
    /// Every service.
    List,
    /// One service's settings.
    Get {
        /// Service name.
        name: String,
    },
    /// Configure a service from a JSON file (the body of
    /// `PUT /api/v1/gateway/services/{name}`), or set its balancing.
    Set {
        /// Service name.
        name: String,
        /// A JSON file with the settings.
        #[arg(long, short = 'f')]
        file: Option<PathBuf>,
        /// round_robin, weighted, least_request or consistent_hash.
        #[arg(long)]
        balancing: Option<String>,
        /// For consistent_hash: the header to hash.
        #[arg(long)]
        hash_header: Option<String>,
    },
    /// Forget a service's settings (its agents serve it with the defaults).
    Delete {
        /// Service name.
        name: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum RoutesCommand {
    /// Every route, in matching order.
    List,
    /// Create or replace a route.
    Set {
        /// Route name.
        name: String,
        /// The service it sends to.
        #[arg(long)]
        service: String,
        /// Paths that start with this.
        #[arg(long, default_value = "/")]
        prefix: String,
        /// Only this host.
        #[arg(long)]
        host: Option<String>,
        /// Take the prefix off the path sent upstream.
        #[arg(long)]
        strip_prefix: bool,
        /// Fan each request out to every instance and combine the answers.
        #[arg(long)]
        aggregate: bool,
        /// For --aggregate: at most this many instances.
        #[arg(long, requires = "aggregate")]
        max_instances: Option<u32>,
        /// For --aggregate: how long to wait for the slowest (ms).
        #[arg(long, requires = "aggregate")]
        deadline_ms: Option<u64>,
    },
    /// Remove a route.
    Delete {
        /// Route name.
        name: String,
    },
}

pub(crate) async fn run(client: Client, json: bool, cmd: GatewayCommand) -> anyhow::Result<()> {
    match cmd {
        GatewayCommand::Services(ServicesCommand::List) => {
            let list = client.list_services().await?.services;
            if json {
                return output::json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        s.agent_type.clone(),
                        s.balancing.clone(),
                        if s.configured {
                            "configured"
                        } else {
                            "defaults"
                        }
                        .into(),
                        s.protocol.clone(),
                    ]
                })
                .collect();
            output::table(
                &["NAME", "AGENT TYPE", "BALANCING", "SETTINGS", "PROTOCOL"],
                &rows,
            );
            Ok(())
        }
        GatewayCommand::Services(ServicesCommand::Get { name }) => {
            output::json(&client.get_service(&name).await?)
        }
        GatewayCommand::Services(ServicesCommand::Set {
            name,
            file,
            balancing,
            hash_header,
        }) => {
            let mut config = match file {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    serde_json::from_str::<ServiceConfig>(&text)
                        .with_context(|| format!("{} is not service settings", path.display()))?
                }
                None => ServiceConfig::default(),
            };
            if balancing.is_some() {
                config.balancing = balancing;
            }
            if hash_header.is_some() {
                config.hash_header = hash_header;
            }
            let s = client.put_service(&name, &config).await?;
            if json {
                output::json(&s)
            } else {
                println!("service {} configured ({})", s.name, s.balancing);
                Ok(())
            }
        }
        GatewayCommand::Services(ServicesCommand::Delete { name }) => {
            client.delete_service(&name).await?;
            if !json {
                println!("service {name}: settings forgotten");
            }
            Ok(())
        }
        GatewayCommand::Routes(RoutesCommand::List) => {
            let list = client.list_routes().await?.routes;
            if json {
                return output::json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|r| {
                    vec![
                        r.name.clone(),
                        r.config.host.clone().unwrap_or_else(|| "*".into()),
                        r.config.path_prefix.clone(),
                        r.config.service.clone(),
                        r.config.kind.clone().unwrap_or_else(|| "proxy".into()),
                    ]
                })
                .collect();
            output::table(&["NAME", "HOST", "PREFIX", "SERVICE", "KIND"], &rows);
            Ok(())
        }
        GatewayCommand::Routes(RoutesCommand::Set {
            name,
            service,
            prefix,
            host,
            strip_prefix,
            aggregate,
            max_instances,
            deadline_ms,
        }) => {
            let r = client
                .put_route(
                    &name,
                    &RouteConfig {
                        host,
                        path_prefix: prefix,
                        service,
                        strip_prefix,
                        kind: Some(if aggregate { "aggregate" } else { "proxy" }.into()),
                        max_instances,
                        deadline_ms,
                    },
                )
                .await?;
            if json {
                output::json(&r)
            } else {
                println!("route {} → {}", r.name, r.config.service);
                Ok(())
            }
        }
        GatewayCommand::Routes(RoutesCommand::Delete { name }) => {
            client.delete_route(&name).await?;
            if !json {
                println!("route {name} removed");
            }
            Ok(())
        }
        GatewayCommand::Topology => {
            let t = client.topology().await?;
            if json {
                return output::json(&t);
            }
            let mut rows = Vec::new();
            for s in &t.services {
                for i in &s.instances {
                    rows.push(vec![
                        s.service.name.clone(),
                        i.agent_id.clone(),
                        i.endpoint.clone(),
                        i.status.clone(),
                        if i.healthy { "healthy" } else { "unhealthy" }.into(),
                        i.ejected_for_ms
                            .map_or_else(|| "-".into(), |ms| format!("{ms} ms")),
                        i.breaker.clone(),
                        i.outstanding.to_string(),
                    ]);
                }
            }
            output::table(
                &[
                    "SERVICE",
                    "INSTANCE",
                    "ENDPOINT",
                    "STATUS",
                    "HEALTH",
                    "EJECTED",
                    "BREAKER",
                    "IN FLIGHT",
                ],
                &rows,
            );
            Ok(())
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum WebhooksCommand {
    /// Every outbound webhook.
    List,
    /// Create or replace a webhook; prints its signing secret once.
    Set {
        /// Webhook name.
        name: String,
        /// Where events are posted.
        #[arg(long)]
        url: String,
        /// Topic patterns (repeat or comma-separate).
        #[arg(long = "topic", value_delimiter = ',', required = true)]
        topics: Vec<String>,
        /// The signing secret (whsec_…); made when absent.
        #[arg(long, env = "SWITCHBOARD_WEBHOOK_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Deliveries of one event before it is dead-lettered.
        #[arg(long)]
        max_attempts: Option<u32>,
    },
    /// Remove a webhook.
    Delete {
        /// Webhook name.
        name: String,
    },
    /// A webhook's delivery attempts, newest first.
    Deliveries {
        /// Webhook name.
        name: String,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

pub(crate) async fn webhooks(
    client: Client,
    json: bool,
    cmd: WebhooksCommand,
) -> anyhow::Result<()> {
    match cmd {
        WebhooksCommand::List => {
            let list = client.list_webhooks().await?.webhooks;
            if json {
                return output::json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|w| {
                    vec![
                        w.name.clone(),
                        w.url.clone(),
                        w.topics.join(","),
                        w.max_attempts.to_string(),
                    ]
                })
                .collect();
            output::table(&["NAME", "URL", "TOPICS", "MAX ATTEMPTS"], &rows);
            Ok(())
        }
        WebhooksCommand::Set {
            name,
            url,
            topics,
            secret,
            max_attempts,
        } => {
            let w = client
                .put_webhook(
                    &name,
                    &WebhookConfig {
                        url,
                        topics,
                        filter: None,
                        secret,
                        max_attempts,
                        retry_after_ms: None,
                        timeout_ms: None,
                    },
                )
                .await?;
            if json {
                return output::json(&w);
            }
            println!(
                "webhook {} → {} (dead letters: group {})",
                w.name, w.url, w.group
            );
            if let Some(s) = &w.secret {
                println!("signing secret (shown once): {s}");
            }
            Ok(())
        }
        WebhooksCommand::Delete { name } => {
            client.delete_webhook(&name).await?;
            if !json {
                println!("webhook {name} removed");
            }
            Ok(())
        }
        WebhooksCommand::Deliveries { name, limit } => {
            let list = client.webhook_deliveries(&name, limit).await?.deliveries;
            if json {
                return output::json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|d| {
                    vec![
                        d.at.to_rfc3339(),
                        d.offset.to_string(),
                        d.attempt.to_string(),
                        d.status.map_or_else(|| "-".into(), |s| s.to_string()),
                        d.duration_ms.to_string(),
                        d.error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            output::table(&["AT", "OFFSET", "ATTEMPT", "STATUS", "MS", "ERROR"], &rows);
            Ok(())
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum HooksCommand {
    /// Every inbound hook.
    List,
    /// Create or replace a hook; prints its secret once.
    Set {
        /// Hook name (`POST /api/v1/hooks/{name}`).
        name: String,
        /// The topic its requests are published on.
        #[arg(long)]
        topic: String,
        /// The secret senders sign with (whsec_…); made when absent.
        #[arg(long, env = "SWITCHBOARD_HOOK_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// How far a request's timestamp may be from now (ms).
        #[arg(long)]
        tolerance_ms: Option<u64>,
    },
    /// Remove a hook.
    Delete {
        /// Hook name.
        name: String,
    },
}

pub(crate) async fn hooks(client: Client, json: bool, cmd: HooksCommand) -> anyhow::Result<()> {
    match cmd {
        HooksCommand::List => {
            let list = client.list_hooks().await?.hooks;
            if json {
                return output::json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|h| {
                    vec![
                        h.name.clone(),
                        h.url.clone(),
                        h.topic.clone(),
                        h.tolerance_ms.to_string(),
                    ]
                })
                .collect();
            output::table(&["NAME", "URL", "TOPIC", "TOLERANCE MS"], &rows);
            Ok(())
        }
        HooksCommand::Set {
            name,
            topic,
            secret,
            tolerance_ms,
        } => {
            let h = client
                .put_hook(
                    &name,
                    &HookConfig {
                        topic,
                        secret,
                        tolerance_ms,
                    },
                )
                .await?;
            if json {
                return output::json(&h);
            }
            println!("hook {} at {} → topic {}", h.name, h.url, h.topic);
            if let Some(s) = &h.secret {
                println!("secret (shown once): {s}");
            }
            Ok(())
        }
        HooksCommand::Delete { name } => {
            client.delete_hook(&name).await?;
            if !json {
                println!("hook {name} removed");
            }
            Ok(())
        }
    }
}
