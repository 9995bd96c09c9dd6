//! `switchboard login`, `switchboard auth ...` and `switchboard audit ...`,
//! and where the CLI finds its credential.
//!
//! The credential comes from `--token` / `SWITCHBOARD_TOKEN`, else from the
//! credentials file that `switchboard login` writes
//! (`$SWITCHBOARD_CREDENTIALS`, or `~/.config/switchboard/credentials.toml`),
//! one token per hub URL, readable by its owner only.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use switchboard_auth::audit::Verifier;
use switchboard_auth::{AuditEntry, AuditRecord};
use switchboard_client::Client;
use switchboard_wire::{CreateApiKeyRequest, RevokeRequest};

use crate::output;

/// Where `switchboard login` keeps tokens.
fn credentials_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SWITCHBOARD_CREDENTIALS") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("switchboard").join("credentials.toml"))
}

fn read_credentials() -> BTreeMap<String, String> {
    credentials_path()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| toml::from_str::<BTreeMap<String, String>>(&t).ok())
        .unwrap_or_default()
}

fn key(hub: &str) -> String {
    hub.trim_end_matches('/').to_owned()
}

/// The token stored for `hub` by `switchboard login`.
pub(crate) fn stored_token(hub: &str) -> Option<String> {
    read_credentials().remove(&key(hub))
}

fn store_token(hub: &str, token: &str) -> anyhow::Result<PathBuf> {
    let path =
        credentials_path().context("no HOME or SWITCHBOARD_CREDENTIALS to keep the token in")?;
    let mut all = read_credentials();
    all.insert(key(hub), token.to_owned());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = toml::to_string(&all)?;
    write_private(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

#[cfg(unix)]
pub(crate) fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())
}

#[cfg(not(unix))]
pub(crate) fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// `switchboard login`.
#[derive(Args)]
pub(crate) struct LoginArgs {
    /// The token or API key; read from standard input when absent.
    #[arg(long)]
    token: Option<String>,
}

/// Checks the token against the hub, then stores it for this hub URL.
pub(crate) async fn login(hub: &str, client: Client, args: LoginArgs) -> anyhow::Result<()> {
    let token = match args.token {
        Some(t) => t,
        None => {
            eprintln!("paste the token or API key for {hub}, then press Enter:");
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line
        }
    };
    let token = token.trim();
    if token.is_empty() {
        bail!("no token given");
    }
    let me = client.with_token(token).whoami().await?;
    let path = store_token(hub, token)?;
    println!(
        "logged in to {hub} as {} ({}, {}); token kept in {}",
        me.id,
        me.kind,
        me.role,
        path.display()
    );
    Ok(())
}

#[derive(Subcommand)]
pub(crate) enum AuthCommand {
    /// Exchange an agent's client credentials for a token; prints the token.
    Token {
        /// The client id (the agent's id).
        #[arg(long)]
        client_id: String,
        /// The client secret.
        #[arg(long, env = "SWITCHBOARD_CLIENT_SECRET", hide_env_values = true)]
        client_secret: String,
        /// Narrower scopes (space- or comma-separated).
        #[arg(long)]
        scope: Option<String>,
    },
    /// Show who the hub takes this CLI's credential to be.
    Whoami,
    /// Revoke a token: your own (--token-to-revoke), or any by id (--jti, admin).
    Revoke {
        /// The token to revoke.
        #[arg(long = "token-to-revoke", conflicts_with = "jti")]
        token_to_revoke: Option<String>,
        /// The id of the token to revoke.
        #[arg(long)]
        jti: Option<String>,
    },
    /// Make, list and revoke API keys.
    #[command(subcommand, name = "api-keys")]
    ApiKeys(ApiKeysCommand),
    /// List and rotate the hub's signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand)]
pub(crate) enum ApiKeysCommand {
    /// Make an API key; it is printed once.
    Create {
        /// A name for people.
        #[arg(long)]
        name: String,
        /// admin, operator or observer.
        #[arg(long)]
        role: String,
        /// Narrower scopes than the role's (repeat or comma-separate).
        #[arg(long, value_delimiter = ',')]
        scope: Vec<String>,
        /// When it stops working (RFC 3339).
        #[arg(long)]
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// List API keys.
    List,
    /// Revoke an API key.
    Revoke {
        /// The key's id.
        id: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum KeysCommand {
    /// List signing keys.
    List,
    /// Make a new signing key; tokens signed before stay valid until they expire.
    Rotate {
        /// EdDSA or RS256.
        #[arg(long)]
        alg: Option<String>,
        /// Drop the earlier keys at once, refusing their tokens (a leaked key).
        #[arg(long)]
        drop_previous: bool,
    },
}

pub(crate) async fn run(client: Client, json: bool, cmd: AuthCommand) -> anyhow::Result<()> {
    match cmd {
        AuthCommand::Token {
            client_id,
            client_secret,
            scope,
        } => {
            let t = client
                .issue_token(&client_id, &client_secret, scope.as_deref())
                .await?;
            if json {
                output::json(&t)
            } else {
                println!("{}", t.access_token);
                Ok(())
            }
        }
        AuthCommand::Whoami => {
            let me = client.whoami().await?;
            if json {
                return output::json(&me);
            }
            println!("{} ({}, role {})", me.id, me.kind, me.role);
            println!("scopes: {}", me.scopes.join(" "));
            if let Some(t) = me.expires_at {
                println!("expires: {}", t.to_rfc3339());
            }
            if let Some(acl) = me.acl {
                println!("publish: {}", acl.publish.join(", "));
                println!("subscribe: {}", acl.subscribe.join(", "));
            }
            Ok(())
        }
        AuthCommand::Revoke {
            token_to_revoke,
            jti,
        } => {
            if token_to_revoke.is_none() && jti.is_none() {
                bail!("give --token-to-revoke or --jti");
            }
            client
                .revoke_token(&RevokeRequest {
                    token: token_to_revoke,
                    jti,
                })
                .await?;
            if !json {
                println!("revoked");
            }
            Ok(())
        }
        AuthCommand::ApiKeys(ApiKeysCommand::Create {
            name,
            role,
            scope,
            expires_at,
        }) => {
            let created = client
                .create_api_key(&CreateApiKeyRequest {
                    name,
                    role,
                    scopes: (!scope.is_empty()).then_some(scope),
                    expires_at,
                })
                .await?;
            if json {
                return output::json(&created);
            }
            println!(
                "API key {} ({}), shown once:",
                created.api_key.id, created.api_key.role
            );
            println!("{}", created.key);
            Ok(())
        }
        AuthCommand::ApiKeys(ApiKeysCommand::List) => {
            let keys = client.list_api_keys().await?.keys;
            if json {
                return output::json(&keys);
            }
            let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map_or_else(|| "-".to_owned(), |t| t.to_rfc3339())
            };
            let rows: Vec<Vec<String>> = keys
                .iter()
                .map(|k| {
                    vec![
                        k.id.clone(),
                        k.name.clone(),
                        k.role.clone(),
                        k.scopes.join(" "),
                        when(k.expires_at),
                        when(k.revoked_at),
                    ]
                })
                .collect();
            output::table(
                &["ID", "NAME", "ROLE", "SCOPES", "EXPIRES", "REVOKED"],
                &rows,
            );
            Ok(())
        }
        AuthCommand::ApiKeys(ApiKeysCommand::Revoke { id }) => {
            let k = client.revoke_api_key(&id).await?;
            if json {
                output::json(&k)
            } else {
                println!("revoked API key {}", k.id);
                Ok(())
            }
        }
        AuthCommand::Keys(KeysCommand::List) => {
            let keys = client.list_signing_keys().await?.keys;
            if json {
                return output::json(&keys);
            }
            let rows: Vec<Vec<String>> = keys
                .iter()
                .map(|k| {
                    vec![
                        k.kid.clone(),
                        k.alg.clone(),
                        k.created_at.to_rfc3339(),
                        k.retired_at.map_or_else(|| "-".into(), |t| t.to_rfc3339()),
                        if k.current {
                            "yes".into()
                        } else {
                            String::new()
                        },
                    ]
                })
                .collect();
            output::table(&["KID", "ALG", "CREATED", "RETIRED", "CURRENT"], &rows);
            Ok(())
        }
        AuthCommand::Keys(KeysCommand::Rotate { alg, drop_previous }) => {
            let k = client
                .rotate_signing_key(alg.as_deref(), drop_previous)
                .await?;
            if json {
                output::json(&k)
            } else {
                println!("signing with {} ({}) from now on", k.kid, k.alg);
                Ok(())
            }
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Print audit records, oldest first.
    List {
        /// Only records after this position.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Only this principal's records.
        #[arg(long)]
        principal: Option<String>,
    },
    /// Fetch the whole log and check its hash chain here; exit 1 on a break.
    Verify {
        /// A head recorded earlier (SEQ:HASH), to detect a truncated log.
        #[arg(long)]
        expect: Option<String>,
    },
}

pub(crate) async fn audit(client: Client, json: bool, cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::List {
            after,
            limit,
            principal,
        } => {
            let page = client
                .audit_page(after, limit, principal.as_deref())
                .await?;
            if json {
                return output::json(&page);
            }
            let rows: Vec<Vec<String>> = page
                .records
                .iter()
                .map(|r| {
                    vec![
                        r.seq.to_string(),
                        r.time.to_rfc3339(),
                        r.principal.clone(),
                        r.action.clone(),
                        r.resource.clone(),
                        r.outcome.to_string(),
                        r.reason.clone(),
                        r.source.clone(),
                    ]
                })
                .collect();
            output::table(
                &[
                    "SEQ",
                    "TIME",
                    "PRINCIPAL",
                    "ACTION",
                    "RESOURCE",
                    "OUTCOME",
                    "REASON",
                    "SOURCE",
                ],
                &rows,
            );
            Ok(())
        }
        AuditCommand::Verify { expect } => {
            let expected = match expect.as_deref() {
                Some(e) => {
                    let (seq, hash) = e.split_once(':').context("--expect takes SEQ:HASH")?;
                    Some((
                        seq.parse::<u64>().context("--expect: SEQ is a number")?,
                        hash.to_owned(),
                    ))
                }
                None => None,
            };
            let mut v = Verifier::default();
            let mut after = 0;
            let mut seen_expected = None;
            loop {
                let page = client.audit_page(after, 1000, None).await?;
                let records: Vec<AuditRecord> = page.records.into_iter().map(record).collect();
                if let Some((seq, _)) = &expected
                    && let Some(r) = records.iter().find(|r| r.seq == *seq)
                {
                    seen_expected = Some(r.hash.clone());
                }
                v.feed(&records);
                match page.next_after {
                    Some(n) => after = n,
                    None => break,
                }
            }
            let result = v.finish();
            let mut problems: Vec<String> = result
                .breaks
                .iter()
                .map(|b| format!("record {}: {}", b.seq, b.problem))
                .collect();
            if let Some((seq, hash)) = &expected {
                match &seen_expected {
                    None => problems.push(format!(
                        "record {seq} is gone: the log ends at {} (truncated?)",
                        result.head_seq
                    )),
                    Some(h) if h != hash => problems.push(format!(
                        "record {seq} has hash {h}, not the expected {hash}"
                    )),
                    Some(_) => {}
                }
            }
            if json {
                output::json(&serde_json::json!({
                    "intact": problems.is_empty(),
                    "checked": result.checked,
                    "head_seq": result.head_seq,
                    "head_hash": result.head_hash,
                    "problems": problems,
                }))?;
            } else if problems.is_empty() {
                println!(
                    "audit log intact: {} records; head {}:{}",
                    result.checked, result.head_seq, result.head_hash
                );
            } else {
                println!("audit log BROKEN ({} records checked):", result.checked);
                for p in &problems {
                    println!("  {p}");
                }
            }
            if problems.is_empty() {
                Ok(())
            } else {
                bail!("the audit log's hash chain is broken")
            }
        }
    }
}

fn record(r: switchboard_wire::AuditRecord) -> AuditRecord {
    AuditRecord {
        seq: r.seq,
        entry: AuditEntry {
            at: r.at,
            principal: r.principal,
            principal_kind: r.principal_kind,
            action: r.action,
            resource: r.resource,
            outcome: r.outcome,
            reason: r.reason,
            source: r.source,
            correlation_id: r.correlation_id,
        },
        prev_hash: r.prev_hash,
        hash: r.hash,
    }
}
