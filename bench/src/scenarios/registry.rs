//! `registry`: heartbeats and reads against the agent registry.
//!
//! Phases, each `--seconds` long, on a hub with `AGENTS` registered agents:
//! 1. heartbeats at a fixed 5,000/s (the issue's target: p99 under 5 ms);
//! 2. heartbeats at full speed;
//! 3. single-agent reads at full speed;
//! 4. discovery by capability (a page of 50) at full speed.
//!
//! No peer is named for this scenario: the figures stand alone.

use std::sync::Arc;

use bytes::Bytes;
use hyper::Method;

use crate::Settings;
use crate::hub::Hub;
use crate::load::{self, MakeRequest, Mode};
use crate::report::{Figures, Section};

const PHASES: [&str; 4] = [
    "heartbeat at a fixed rate (5,000/s; smoke: 200/s)",
    "heartbeat, full speed",
    "GET one agent, full speed",
    "discover by capability (page of 50), full speed",
];

pub(crate) async fn run(s: &Settings) -> anyhow::Result<Section> {
    let mut runs: Vec<Vec<Figures>> = Vec::new();
    let mut rss = Vec::new();
    let mut registered = 0;
    for _ in 0..s.repeat {
        let (figures, agents, kib) = once(s).await?;
        runs.push(figures);
        registered = agents;
        rss.extend(kib);
    }
    let (rate, conns) = if s.smoke { (200, 4) } else { (5000, 32) };
    let medians: Vec<Figures> = (0..PHASES.len())
        .map(|i| Figures::median(&runs.iter().map(|r| r[i].clone()).collect::<Vec<_>>()))
        .collect();
    let mut body = format!(
        "{registered} agents registered; {conns} keep-alive HTTP/1.1 connections; open loop at a fixed rate \
         (latency from the scheduled send when the hub is behind) or closed loop at full speed; \
         the load generator runs on the same 2 cores as the hub.\n\n\
         | phase | requests/s | p50 ms | p99 ms | p99.9 ms | errors |\n|---|---:|---:|---:|---:|---:|\n"
    );
    for (name, f) in PHASES.iter().zip(&medians) {
        body.push_str(&format!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {} |\n",
            f.rate, f.p50_ms, f.p99_ms, f.p999_ms, f.errors
        ));
    }
    rss.sort_unstable();
    if let Some(kib) = rss.get(rss.len() / 2) {
        body.push_str(&format!(
            "\nHub RSS after a run: {:.1} MiB.\n",
            *kib as f64 / 1024.0
        ));
    }
    let target = &medians[0];
    body.push_str(&format!(
        "\nTarget (p99 under 5 ms at 5,000 heartbeats/s): {}.\n",
        if s.smoke {
            "not judged in smoke mode".to_owned()
        } else if target.p99_ms < 5.0 && target.errors == 0 && target.rate >= 0.95 * rate as f64 {
            format!("met (p99 {:.2} ms at {:.0}/s)", target.p99_ms, target.rate)
        } else {
            format!(
                "NOT met (p99 {:.2} ms at {:.0}/s, {} errors)",
                target.p99_ms, target.rate, target.errors
            )
        }
    ));
    for (name, f) in PHASES.iter().zip(&medians) {
        anyhow::ensure!(f.rate > 0.0, "phase {name:?} completed no request");
        anyhow::ensure!(f.errors == 0, "phase {name:?} had {} errors", f.errors);
    }
    Ok(Section {
        title: "registry".into(),
        body,
    })
}

/// One run on a fresh hub: the figures of each phase, the number of
/// agents, and the hub's RSS at the end.
async fn once(s: &Settings) -> anyhow::Result<(Vec<Figures>, u64, Option<u64>)> {
    let (agents, rate, conns) = if s.smoke {
        (20u64, 200, 4)
    } else {
        (1000, 5000, 32)
    };
    let hub = Hub::start(&s.hub_bin, &[]).await?;
    // Register the agents (not measured).
    let caps = ["python", "rust", "react", "go"];
    let registered = load::send_all(
        hub.addr,
        (0..agents).map(|n| {
            let body = serde_json::json!({
                "id": format!("agent-{n:05}"),
                "type": "worker",
                "capabilities": [caps[(n % 4) as usize], caps[((n + 1) % 4) as usize]],
                "configuration": {"max_concurrent_tasks": 8}
            });
            (
                Method::POST,
                "/api/v1/agents/register".to_owned(),
                Some(Bytes::from(body.to_string())),
            )
        }),
    )
    .await?;

    let heartbeat: MakeRequest = Arc::new(move |w, i| {
        let n = (i * 64 + w as u64) % registered;
        let body = format!(
            r#"{{"status":"active","current_tasks":{},"performance_metrics":{{"cpu_usage":{}.5}}}}"#,
            i % 8,
            i % 100
        );
        (
            Method::POST,
            format!("/api/v1/agents/agent-{n:05}/heartbeat"),
            Some(Bytes::from(body)),
        )
    });
    let read: MakeRequest = Arc::new(move |w, i| {
        let n = (i * 64 + w as u64) % registered;
        (Method::GET, format!("/api/v1/agents/agent-{n:05}"), None)
    });
    let discover: MakeRequest = Arc::new(move |_, i| {
        (
            Method::GET,
            format!(
                "/api/v1/agents?capability={}&limit=50",
                caps[(i % 4) as usize]
            ),
            None,
        )
    });

    let phases = [
        (Mode::Rate(rate), heartbeat.clone()),
        (Mode::Max, heartbeat),
        (Mode::Max, read),
        (Mode::Max, discover),
    ];
    let mut figures = Vec::new();
    for (mode, make) in phases {
        let o = load::run(hub.addr, conns, mode, s.phase, make).await?;
        figures.push(Figures::of(&o));
    }
    Ok((figures, registered, hub.rss_kib()))
}
