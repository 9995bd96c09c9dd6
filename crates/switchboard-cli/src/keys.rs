//! `switchboard keys`: an agent's key pairs for sealed messages; and the
//! sealed side of `send`, `request` and `subscribe`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use switchboard_client::Client;
use switchboard_client::sealed::{Channel, Opened};
use switchboard_seal::{AgentKeys, KeyFile};
use switchboard_wire::{AgentKey, CloudEvent};

use crate::output;

#[derive(Subcommand)]
pub(crate) enum KeysCommand {
    /// Make a new key pair for an agent and write it to a key file (0600).
    /// The private keys never leave the file.
    Generate {
        /// The agent the keys are for.
        #[arg(long)]
        agent: String,
        /// Where to write the key file.
        #[arg(long, short = 'o')]
        out: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Register a key file's public keys with the hub (proving possession
    /// of both private keys). An agent that has keys already must rotate.
    Register {
        /// The key file.
        #[arg(long, short = 'k')]
        key_file: PathBuf,
    },
    /// Replace an agent's keys: make a new pair, register it signed by the
    /// current one, and write it over the key file.
    Rotate {
        /// The key file holding the current keys; it receives the new ones.
        #[arg(long, short = 'k')]
        key_file: PathBuf,
    },
    /// An agent's public keys: the current pair and its history.
    List {
        /// The agent.
        agent: String,
    },
    /// Revoke one of an agent's key pairs: nothing it signs is accepted.
    Revoke {
        /// The agent.
        agent: String,
        /// The pair's fingerprint (`SHA256:…`).
        fingerprint: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
}

/// Reads a key file.
pub(crate) fn load(path: &Path) -> anyhow::Result<AgentKeys> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the key file {}", path.display()))?;
    let file: KeyFile = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a Switchboard key file", path.display()))?;
    AgentKeys::from_file(&file).with_context(|| format!("the key file {}", path.display()))
}

fn save(path: &Path, keys: &AgentKeys) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(&keys.to_file())?;
    // Written beside, then renamed: a crash leaves the old file or the
    // new one, never half of one.
    let tmp = path.with_extension("tmp");
    crate::auth::write_private(&tmp, &text)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn print_key(k: &AgentKey) {
    output::table(
        &["FINGERPRINT", "STATUS", "CREATED", "SIGNED BY"],
        &[row(k)],
    );
}

fn row(k: &AgentKey) -> Vec<String> {
    vec![
        k.fingerprint.clone(),
        k.status.clone(),
        k.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        k.signed_by.clone().unwrap_or_else(|| "-".into()),
    ]
}

pub(crate) async fn run(client: Client, json: bool, cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Generate { agent, out, force } => {
            if out.exists() && !force {
                anyhow::bail!(
                    "{} exists; pass --force to replace it (its keys would be lost)",
                    out.display()
                );
            }
            let keys = AgentKeys::generate(&agent)?;
            save(&out, &keys)?;
            if json {
                return output::json(&serde_json::json!({
                    "agent_id": agent,
                    "fingerprint": keys.fingerprint(),
                    "signing_key": keys.public().signing_b64(),
                    "encryption_key": keys.public().encryption_b64(),
                    "key_file": out,
                }));
            }
            println!(
                "wrote keys for {agent} to {} (keep it private)\nfingerprint {}",
                out.display(),
                keys.fingerprint()
            );
            Ok(())
        }
        KeysCommand::Register { key_file } => {
            let keys = load(&key_file)?;
            let k = client.register_keys(&keys, None).await?;
            if json {
                return output::json(&k);
            }
            println!("registered keys of {}", keys.agent_id());
            print_key(&k);
            Ok(())
        }
        KeysCommand::Rotate { key_file } => {
            let old = load(&key_file)?;
            let new = AgentKeys::generate(old.agent_id())?;
            let k = client.register_keys(&new, Some(&old)).await?;
            save(&key_file, &new)?;
            if json {
                return output::json(&k);
            }
            println!(
                "rotated keys of {}: {} replaces {}; {} holds the new keys",
                new.agent_id(),
                new.fingerprint(),
                old.fingerprint(),
                key_file.display()
            );
            Ok(())
        }
        KeysCommand::List { agent } => {
            let d = client.agent_keys(&agent).await?;
            if json {
                return output::json(&d);
            }
            let rows: Vec<Vec<String>> = d.keys.iter().map(row).collect();
            output::table(&["FINGERPRINT", "STATUS", "CREATED", "SIGNED BY"], &rows);
            Ok(())
        }
        KeysCommand::Revoke {
            agent,
            fingerprint,
            reason,
        } => {
            let k = client.revoke_keys(&agent, &fingerprint, reason).await?;
            if json {
                return output::json(&k);
            }
            print_key(&k);
            Ok(())
        }
    }
}

/// A channel for the agent whose key file this is.
pub(crate) fn channel(client: Client, key_file: &Path) -> anyhow::Result<Channel> {
    Ok(Channel::new(client, load(key_file)?))
}

/// Prints an opened message: its plaintext (JSON lines with `--json`).
pub(crate) fn print_opened(o: &Opened, offset: Option<u64>, json: bool) -> anyhow::Result<()> {
    let text = String::from_utf8_lossy(&o.plaintext);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "offset": offset,
                "from": o.from,
                "kind": o.kind.as_str(),
                "id": o.id,
                "correlation_id": o.correlation_id,
                "sent_at": o.sent_at_ms,
                "plaintext": text,
            })
        );
    } else {
        println!(
            "{:>8}  {} from {} (verified): {}",
            offset.map(|o| o.to_string()).unwrap_or_default(),
            o.kind.as_str(),
            o.from,
            text
        );
    }
    Ok(())
}

/// Opens one event for `subscribe --decrypt`; a refused message is
/// reported on stderr with its code, and the stream goes on. With
/// `reply_with`, a request is answered with that command's output (its
/// standard input is the request's plaintext).
pub(crate) async fn handle(
    ch: &Channel,
    e: &CloudEvent,
    json: bool,
    reply_with: Option<&str>,
) -> anyhow::Result<()> {
    let opened = match ch.open(e).await {
        Ok(o) => o,
        Err(err) => {
            eprintln!(
                "switchboard: refused message at offset {} ({}): {err}",
                crate::output::offset(e.offset),
                err.code()
            );
            return Ok(());
        }
    };
    print_opened(&opened, e.offset, json)?;
    if let (Some(cmd), Some(_)) = (reply_with, &opened.reply_to) {
        let answer = run_reply(cmd, &opened.plaintext).await?;
        ch.reply(&opened, &answer).await?;
    }
    Ok(())
}

async fn run_reply(cmd: &str, input: &[u8]) -> anyhow::Result<Vec<u8>> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).await?;
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        anyhow::bail!("{cmd:?} failed ({})", out.status);
    }
    Ok(out.stdout)
}
