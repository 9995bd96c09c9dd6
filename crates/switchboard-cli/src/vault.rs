//! `switchboard secrets` and `switchboard vault`: the credential vault.

use std::io::Read;

use anyhow::Context;
use clap::Subcommand;
use switchboard_client::Client;
use switchboard_wire::{Secret, SecretPolicy};

use crate::output;

#[derive(Subcommand)]
pub(crate) enum SecretsCommand {
    /// Write a new version of a secret. The value is read from standard
    /// input unless --value is given (a value on the command line shows in
    /// the process list).
    Put {
        /// The secret's name.
        name: String,
        /// The value.
        #[arg(long)]
        value: Option<String>,
        /// An agent that may read it (repeat for more); replaces the policy.
        #[arg(long = "agent")]
        agents: Vec<String>,
        /// A role whose members may read it (repeat for more); replaces the
        /// policy.
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Print a secret's value (the latest version unless --version).
    Get {
        /// The secret's name.
        name: String,
        /// A version.
        #[arg(long)]
        version: Option<u64>,
    },
    /// List secrets (names and versions, never values).
    List {
        /// Names after this one.
        #[arg(long)]
        after: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Show a secret's policy and versions.
    Describe {
        /// The secret's name.
        name: String,
    },
    /// Replace who may read a secret.
    Policy {
        /// The secret's name.
        name: String,
        /// An agent that may read it (repeat for more).
        #[arg(long = "agent")]
        agents: Vec<String>,
        /// A role whose members may read it (repeat for more).
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Delete a secret and every version.
    Delete {
        /// The secret's name.
        name: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum VaultCommand {
    /// The vault's state: ready, locked or unavailable, and what each
    /// master key wraps.
    Status,
    /// Rotate the master key: put a new key first in the key file (keep
    /// the old one after it), then run this; the hub rewraps every data
    /// key. Then the old key can go.
    Rotate,
    /// Print a new random master key (a line for the key file).
    Keygen,
}

fn print_secret(s: &Secret) {
    println!(
        "{}  version {}  readers: agents [{}] roles [{}]",
        s.name,
        s.latest_version,
        s.policy.agents.join(", "),
        s.policy.roles.join(", ")
    );
    if !s.versions.is_empty() {
        let rows: Vec<Vec<String>> = s
            .versions
            .iter()
            .map(|v| {
                vec![
                    v.version.to_string(),
                    v.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    v.created_by.clone(),
                ]
            })
            .collect();
        output::table(&["VERSION", "WRITTEN", "BY"], &rows);
    }
}

pub(crate) async fn secrets(client: Client, json: bool, cmd: SecretsCommand) -> anyhow::Result<()> {
    match cmd {
        SecretsCommand::Put {
            name,
            value,
            agents,
            roles,
        } => {
            let value = match value {
                Some(v) => v,
                None => {
                    let mut v = String::new();
                    std::io::stdin()
                        .read_to_string(&mut v)
                        .context("cannot read the value from standard input")?;
                    v.strip_suffix('\n').map(str::to_owned).unwrap_or(v)
                }
            };
            let policy =
                (!agents.is_empty() || !roles.is_empty()).then_some(SecretPolicy { agents, roles });
            let s = client.put_secret(&name, &value, policy).await?;
            if json {
                return output::json(&s);
            }
            print_secret(&s);
            Ok(())
        }
        SecretsCommand::Get { name, version } => {
            let v = client.get_secret(&name, version).await?;
            if json {
                return output::json(&v);
            }
            println!("{}", v.value);
            Ok(())
        }
        SecretsCommand::List { after, limit } => {
            let page = client.list_secrets(after.as_deref(), limit).await?;
            if json {
                return output::json(&page);
            }
            let rows: Vec<Vec<String>> = page
                .secrets
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        s.latest_version.to_string(),
                        s.updated_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    ]
                })
                .collect();
            output::table(&["NAME", "VERSION", "UPDATED"], &rows);
            if let Some(next) = page.next_after {
                eprintln!("more: --after {next}");
            }
            Ok(())
        }
        SecretsCommand::Describe { name } => {
            let s = client.describe_secret(&name).await?;
            if json {
                return output::json(&s);
            }
            print_secret(&s);
            Ok(())
        }
        SecretsCommand::Policy {
            name,
            agents,
            roles,
        } => {
            let s = client
                .set_secret_policy(&name, &SecretPolicy { agents, roles })
                .await?;
            if json {
                return output::json(&s);
            }
            print_secret(&s);
            Ok(())
        }
        SecretsCommand::Delete { name } => {
            client.delete_secret(&name).await?;
            if !json {
                println!("deleted {name}");
            }
            Ok(())
        }
    }
}

pub(crate) async fn vault(client: Client, json: bool, cmd: VaultCommand) -> anyhow::Result<()> {
    match cmd {
        VaultCommand::Keygen => {
            println!(
                "{}",
                switchboard_vault::MasterKey::generate_line().map_err(anyhow::Error::msg)?
            );
            Ok(())
        }
        VaultCommand::Status => {
            let s = client.vault_status().await?;
            if json {
                return output::json(&s);
            }
            println!("state: {}", s.state);
            if let Some(r) = &s.reason {
                println!("reason: {r}");
            }
            if let Some(k) = &s.current_key_id {
                println!("current master key: {k}");
            }
            let rows: Vec<Vec<String>> = s
                .wrapped
                .iter()
                .map(|w| vec![w.master_key_id.clone(), w.versions.to_string()])
                .collect();
            output::table(&["MASTER KEY", "VERSIONS"], &rows);
            Ok(())
        }
        VaultCommand::Rotate => {
            let r = client.rotate_vault().await?;
            if json {
                return output::json(&r);
            }
            println!(
                "master key {} is current; {} data keys rewrapped",
                r.current_key_id, r.rewrapped
            );
            Ok(())
        }
    }
}
