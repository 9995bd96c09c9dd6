//! `switchboard serve`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use switchboard_server::{Config, Overrides};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// Flags of `serve`; each also reads its environment variable, and both
/// override the config file.
#[derive(Args)]
pub(crate) struct ServeArgs {
    /// A TOML config file.
    #[arg(long, short = 'c', env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port [default: 127.0.0.1:7878].
    #[arg(long, env = "SWITCHBOARD_LISTEN")]
    listen: Option<String>,
    /// Where the store keeps its files [default: ./switchboard-data].
    #[arg(long, env = "SWITCHBOARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// How often agents are expected to heartbeat (e.g. 30s, 500ms).
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT_INTERVAL")]
    heartbeat_interval: Option<String>,
    /// The largest request body accepted, in bytes.
    #[arg(long, env = "SWITCHBOARD_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// An admin credential to accept (at least 32 characters), for
    /// automation; without it the hub makes an admin API key on first
    /// start and prints it once.
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Serve plain HTTP on a non-loopback address (credentials then cross
    /// the network in clear).
    #[arg(long)]
    insecure_plain_http: bool,
    /// Serve HTTPS with this certificate chain (PEM).
    #[arg(long, env = "SWITCHBOARD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "SWITCHBOARD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve HTTPS with a self-signed certificate for localhost, made once
    /// under the data directory (development only).
    #[arg(long, conflicts_with = "tls_cert")]
    tls_self_signed: bool,
    /// Accept client certificates signed by these CAs (PEM): an agent is
    /// then known by its certificate's common name (mTLS).
    #[arg(long, env = "SWITCHBOARD_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// The vault's master key file (mode 600, outside the data directory):
    /// one key per line, made by `switchboard vault keygen`, the current
    /// key first. SWITCHBOARD_MASTER_KEY may hold the keys instead.
    #[arg(long, env = "SWITCHBOARD_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
}

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_env("SWITCHBOARD_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let overrides = Overrides {
        listen: args.listen,
        data_dir: args.data_dir,
        heartbeat_interval: args.heartbeat_interval,
        max_body_bytes: args.max_body_bytes,
        admin_token: args.admin_token,
        allow_plain_http: args.insecure_plain_http,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        tls_self_signed: args.tls_self_signed,
        tls_client_ca: args.tls_client_ca,
        master_key: match (
            args.master_key_file,
            std::env::var("SWITCHBOARD_MASTER_KEY"),
        ) {
            (Some(file), _) => Some(switchboard_vault::KeySource::File(file)),
            (None, Ok(keys)) if !keys.trim().is_empty() => {
                Some(switchboard_vault::KeySource::Inline(keys))
            }
            (None, _) => None,
        },
    };
    let config = Config::load(args.config.as_deref(), &overrides)?;
    // Every connection is a file descriptor: take all the system allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open file limit"),
        Err(error) => tracing::warn!(%error, "could not raise the open file limit"),
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if config.tls.enabled() {
        "https"
    } else {
        "http"
    };
    if let switchboard_server::TlsMode::SelfSigned = config.tls.mode {
        let (cert, _) = switchboard_server::tls::self_signed_paths(&config.data_dir);
        tracing::info!(cert = %cert.display(), "TLS with a self-signed certificate: clients trust it with --ca-cert");
    }
    if !config.listen.ip().is_loopback() && !config.tls.enabled() {
        tracing::warn!(
            listen = %config.listen,
            "serving plain HTTP on a non-loopback address: tokens and secrets cross the network in clear"
        );
    }
    let hub = switchboard_server::Hub::open(config).await?;
    if let Some(key) = hub.first_admin_key() {
        // Shown once, on stderr (stdout carries only the address line).
        eprintln!(
            "\nswitchboard: this is a new hub; its admin API key is printed this once:\n\n    {key}\n\n\
             use it with `switchboard login --token {key}` or SWITCHBOARD_TOKEN,\n\
             or as `Authorization: Bearer {key}`; the hub keeps only its hash.\n"
        );
    }
    // The one line on stdout: scripts and tests read the bound address here.
    println!("switchboard listening on {scheme}://{addr}");
    std::io::stdout().flush()?;
    tracing::info!(%addr, "listening");
    hub.serve(listener, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
