//! `switchboard-bench`: runs benchmark scenarios against a real hub (and,
//! where a scenario names one, a peer started from the machine's packages)
//! and writes a Markdown report.
//!
//! Layout:
//! - `hub`: starts the `switchboard` binary as a child process.
//! - `load`: the HTTP load generator (open loop at a fixed rate, or closed
//!   loop at full speed) with latency histograms.
//! - `peers`: NATS and Redis servers from the machine's packages.
//! - `payload`: the timestamped payload of `pubsub` and `durable`.
//! - `hubws`: the hub's WebSocket protocol, client side.
//! - `scenarios/*`: one module per scenario.
//!
//! Load only ever targets 127.0.0.1, and every phase is bounded in time.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};

mod hub;
mod hubws;
mod load;
mod payload;
mod peers;
mod report;
mod scenarios;
mod upstream;

#[derive(Parser)]
#[command(
    name = "switchboard-bench",
    about = "Benchmarks Switchboard side by side with its peers"
)]
struct Args {
    /// The scenario to run.
    scenario: Scenario,
    /// Seconds-long runs with tiny sizes, to check the scenarios still work.
    #[arg(long)]
    smoke: bool,
    /// The hub binary to benchmark (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/switchboard")]
    hub_bin: PathBuf,
    /// Where to write the Markdown report (also printed).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seconds each measured phase runs (default: 10; smoke: 1, and 0.3
    /// for `pubsub` and `durable`).
    #[arg(long)]
    seconds: Option<u64>,
    /// Runs of each scenario, each on a fresh hub; figures are medians
    /// (default: 3, smoke: 1).
    #[arg(long)]
    repeat: Option<usize>,
    /// WebSocket connections for `ws-connections` (default 100,000, capped
    /// by the open-file limit; smoke: 200).
    #[arg(long)]
    connections: Option<usize>,
    /// Seconds `ws-connections` holds the connections open (default 60;
    /// smoke: 1).
    #[arg(long)]
    hold: Option<u64>,
    /// For `upstream`: the port to serve on.
    #[arg(long, hide = true)]
    port: Option<u16>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Scenario {
    /// Every scenario.
    All,
    /// Registry heartbeats and reads.
    Registry,
    /// Many WebSocket subscribers held open, then one broadcast.
    WsConnections,
    /// Live delivery, one publisher to 1 and 100 subscribers, against NATS
    /// core and Redis pub/sub.
    Pubsub,
    /// Durable acknowledged publishes, against NATS JetStream (file
    /// storage).
    Durable,
    /// Tasks end to end: create, claim, complete.
    Tasks,
    /// What authentication and authorization add to a request: the same
    /// route with auth on and off.
    AuthOverhead,
    /// The gateway against nginx and HAProxy as reverse proxies.
    Proxy,
    /// Sealed messages: seal and open per message, and request-response
    /// sealed against plain text.
    Seal,
    /// The `proxy` scenario's upstream server (started by the scenario).
    #[value(hide = true)]
    Upstream,
}

/// What every scenario is given.
pub(crate) struct Settings {
    pub(crate) smoke: bool,
    pub(crate) hub_bin: PathBuf,
    pub(crate) phase: Duration,
    pub(crate) repeat: usize,
    pub(crate) connections: usize,
    pub(crate) hold: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.scenario == Scenario::Upstream {
        return upstream::run(args.port.unwrap_or(8080));
    }
    let settings = Settings {
        smoke: args.smoke,
        hub_bin: args.hub_bin.clone(),
        phase: Duration::from_secs(args.seconds.unwrap_or(if args.smoke { 1 } else { 10 })),
        repeat: args.repeat.unwrap_or(if args.smoke { 1 } else { 3 }).max(1),
        connections: args
            .connections
            .unwrap_or(if args.smoke { 200 } else { 100_000 }),
        hold: Duration::from_secs(args.hold.unwrap_or(if args.smoke { 1 } else { 60 })),
    };
    anyhow::ensure!(
        settings.hub_bin.exists(),
        "no hub binary at {}; run `cargo build --release` first or pass --hub-bin",
        settings.hub_bin.display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start runtime")?;
    let mut sections = Vec::new();
    runtime.block_on(async {
        if matches!(args.scenario, Scenario::All | Scenario::Registry) {
            sections.push(scenarios::registry::run(&settings).await?);
        }
        if matches!(args.scenario, Scenario::All | Scenario::WsConnections) {
            sections.push(scenarios::ws_connections::run(&settings).await?);
        }
        if matches!(args.scenario, Scenario::All | Scenario::Pubsub) {
            sections.push(scenarios::pubsub::run(&settings).await?);
        }
        if matches!(args.scenario, Scenario::All | Scenario::Durable) {
            sections.push(scenarios::durable::run(&settings).await?);
        }
        if matches!(args.scenario, Scenario::All | Scenario::Tasks) {
            sections.push(scenarios::tasks::run(&settings).await?);
        }
        if matches!(args.scenario, Scenario::All | Scenario::AuthOverhead) {
            sections.push(scenarios::auth_overhead::run(&settings).await?);
        }
        if matches!(args.scenario, Scenario::All | Scenario::Proxy) {
            sections.push(scenarios::proxy::run(&settings).await?);
        }
        if matches!(args.scenario, Scenario::All | Scenario::Seal) {
            sections.push(scenarios::seal::run(&settings).await?);
        }
        anyhow::Ok(())
    })?;
    let text = report::render(&settings, &sections);
    println!("{text}");
    if let Some(out) = args.out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&out, &text).with_context(|| format!("write {}", out.display()))?;
    }
    Ok(())
}
