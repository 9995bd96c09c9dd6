//! `switchboard`: run the hub (`serve`) or drive a running one.
//!
//! This file only parses arguments and dispatches; `serve` calls
//! `switchboard_server::run`, and every other command calls the typed
//! client in `switchboard_client`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod agents;
mod auth;
mod events;
mod gateway;
mod groups;
mod keys;
mod messages;
mod output;
mod serve;
mod tasks;
mod vault;
mod workflows;

/// The allocator. The hub makes and drops many small objects per request
/// (JSON values, strings); glibc's allocator spent about a quarter of the
/// task path's CPU on them (`perf` under `switchboard-bench tasks`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a bad configuration or usage (EX_USAGE).
const EXIT_USAGE: u8 = 64;
/// Exit code when the hub cannot be reached (EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "The hub through which software agents find and talk to each other"
)]
struct Cli {
    /// The hub to talk to.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_URL",
        default_value = "http://127.0.0.1:7878"
    )]
    hub: String,
    /// The credential to send: an API key or a token (else the one
    /// `switchboard login` stored for this hub).
    #[arg(long, global = true, env = "SWITCHBOARD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Trust these CA certificates (PEM) for the hub's TLS certificate
    /// (a private CA, or the hub's self-signed one).
    #[arg(long, global = true, env = "SWITCHBOARD_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
    /// Present this client certificate and key (one PEM file) to the hub
    /// (mTLS; the certificate's common name is the agent's id).
    #[arg(long, global = true, env = "SWITCHBOARD_CLIENT_CERT")]
    client_cert: Option<std::path::PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub.
    Serve(serve::ServeArgs),
    /// Check a token or API key and keep it for this hub's URL.
    Login(auth::LoginArgs),
    /// Tokens, API keys and signing keys.
    #[command(subcommand)]
    Auth(auth::AuthCommand),
    /// Read the audit log and check its hash chain.
    #[command(subcommand)]
    Audit(auth::AuditCommand),
    /// The gateway's services, routes and topology.
    #[command(subcommand)]
    Gateway(gateway::GatewayCommand),
    /// Outbound webhooks (signed deliveries of events to URLs).
    #[command(subcommand)]
    Webhooks(gateway::WebhooksCommand),
    /// Inbound hooks (verified webhooks published as events).
    #[command(subcommand)]
    Hooks(gateway::HooksCommand),
    /// Register, find and remove agents.
    #[command(subcommand)]
    Agents(agents::AgentsCommand),
    /// Publish an event.
    Publish(events::PublishArgs),
    /// Print events as they are published (and replay the log with --after).
    Subscribe(events::SubscribeArgs),
    /// Read the event log.
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// Create, list and delete consumer groups (durable subscriptions).
    #[command(subcommand)]
    Groups(groups::GroupsCommand),
    /// An agent's key pairs for sealed (end-to-end encrypted) messages.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Send a direct message to an agent (by id, or any live agent of a
    /// type); --encrypt seals it end to end.
    Send(messages::MessageArgs),
    /// Send a request to an agent and print its reply (exit 1 on TASK_TIMEOUT).
    Request(messages::MessageArgs),
    /// Inspect, replay and purge a consumer group's dead letters.
    #[command(subcommand)]
    Dlq(groups::DlqCommand),
    /// Create, list, inspect and cancel tasks; claim and report as an agent.
    #[command(subcommand)]
    Tasks(tasks::TasksCommand),
    /// Create, list, inspect, cancel and watch workflows.
    #[command(subcommand)]
    Workflows(workflows::WorkflowsCommand),
    /// Secrets in the vault, encrypted at rest.
    #[command(subcommand)]
    Secrets(vault::SecretsCommand),
    /// The vault's master key: state, rotation, a new key.
    #[command(subcommand)]
    Vault(vault::VaultCommand),
}

/// Exit code when the reader of our output went away (`| head`), as a
/// process killed by SIGPIPE reports it in a shell (128 + 13).
const EXIT_PIPE_CLOSED: i32 = 141;

/// A command whose output is piped into a reader that stops early (`|
/// head`) ends quietly, as Unix tools do, instead of reporting the failed
/// write as a crash. Every other panic is reported as usual.
fn exit_quietly_on_closed_stdout() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(EXIT_PIPE_CLOSED);
        }
        report(info);
    }));
}

fn main() -> ExitCode {
    exit_quietly_on_closed_stdout();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchboard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let json = cli.json;
        let tls = || -> anyhow::Result<switchboard_client::Tls> {
            let read = |p: &Option<std::path::PathBuf>| -> anyhow::Result<Option<Vec<u8>>> {
                p.as_ref()
                    .map(|p| {
                        std::fs::read(p)
                            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
                    })
                    .transpose()
            };
            Ok(switchboard_client::Tls {
                ca_pem: read(&cli.ca_cert)?,
                identity_pem: read(&cli.client_cert)?,
            })
        };
        let connect = || -> anyhow::Result<switchboard_client::Client> {
            let client = switchboard_client::Client::new(&cli.hub)?.with_tls(&tls()?)?;
            let token = cli.token.clone().or_else(|| auth::stored_token(&cli.hub));
            Ok(match token {
                Some(t) => client.with_token(&t),
                None => client,
            })
        };
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Login(args) => {
                let client = switchboard_client::Client::new(&cli.hub)?.with_tls(&tls()?)?;
                auth::login(&cli.hub, client, args).await
            }
            Command::Auth(cmd) => auth::run(connect()?, json, cmd).await,
            Command::Audit(cmd) => auth::audit(connect()?, json, cmd).await,
            Command::Gateway(cmd) => gateway::run(connect()?, json, cmd).await,
            Command::Webhooks(cmd) => gateway::webhooks(connect()?, json, cmd).await,
            Command::Hooks(cmd) => gateway::hooks(connect()?, json, cmd).await,
            Command::Agents(cmd) => agents::run(connect()?, json, cmd).await,
            Command::Publish(args) => events::publish(connect()?, json, args).await,
            Command::Subscribe(args) => events::subscribe(connect()?, json, args).await,
            Command::Events(cmd) => events::run(connect()?, json, cmd).await,
            Command::Groups(cmd) => groups::run(connect()?, json, cmd).await,
            Command::Keys(cmd) => keys::run(connect()?, json, cmd).await,
            Command::Send(args) => messages::send(connect()?, json, args).await,
            Command::Request(args) => messages::request(connect()?, json, args).await,
            Command::Dlq(cmd) => groups::dlq(connect()?, json, cmd).await,
            Command::Tasks(cmd) => tasks::run(connect()?, json, cmd).await,
            Command::Workflows(cmd) => workflows::run(connect()?, json, cmd).await,
            Command::Secrets(cmd) => vault::secrets(connect()?, json, cmd).await,
            Command::Vault(vault::VaultCommand::Keygen) => {
                vault::vault(
                    switchboard_client::Client::new(&cli.hub)?,
                    json,
                    vault::VaultCommand::Keygen,
                )
                .await
            }
            Command::Vault(cmd) => vault::vault(connect()?, json, cmd).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard: {e:#}");
            let client_error = e.downcast_ref::<switchboard_client::ClientError>();
            if client_error
                .and_then(switchboard_client::ClientError::problem)
                .is_some_and(|p| p.status == 401)
            {
                eprintln!(
                    "the hub wants a credential: pass --token (or SWITCHBOARD_TOKEN), or run `switchboard login`"
                );
            }
            if client_error.is_some_and(switchboard_client::ClientError::is_unreachable) {
                eprintln!(
                    "is the hub running? start it with `switchboard serve`, or point --hub / SWITCHBOARD_URL at it"
                );
                return ExitCode::from(EXIT_UNAVAILABLE);
            }
            if let Some(switchboard_server::ServerError::Config(_)) =
                e.downcast_ref::<switchboard_server::ServerError>()
            {
                return ExitCode::from(EXIT_USAGE);
            }
            ExitCode::FAILURE
        }
    }
}
