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
use crate::load::{self, MakeRequest, Mode, Outcome};
use crate::report::Section;

pub(crate) async fn run(s: &Settings) -> anyhow::Result<Section> {
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

    let mut rows = Vec::new();
    let fixed = load::run(
        hub.addr,
        conns,
        Mode::Rate(rate),
        s.phase,
        heartbeat.clone(),
    )
    .await?;
    rows.push((format!("heartbeat at {rate}/s"), fixed));
    let max = load::run(hub.addr, conns, Mode::Max, s.phase, heartbeat).await?;
    rows.push(("heartbeat, full speed".to_owned(), max));
    let reads = load::run(hub.addr, conns, Mode::Max, s.phase, read).await?;
    rows.push(("GET one agent, full speed".to_owned(), reads));
    let disc = load::run(hub.addr, conns, Mode::Max, s.phase, discover).await?;
    rows.push((
        "discover by capability (page of 50), full speed".to_owned(),
        disc,
    ));
    let rss = hub.rss_kib();

    let mut body = format!(
        "{registered} agents registered; {conns} keep-alive connections; the load generator runs on the same 2 cores as the hub.\n\n\
         | phase | requests/s | p50 ms | p99 ms | p99.9 ms | errors |\n|---|---:|---:|---:|---:|---:|\n"
    );
    for (name, o) in &rows {
        body.push_str(&row(name, o));
    }
    if let Some(kib) = rss {
        body.push_str(&format!(
            "\nHub RSS after the run: {:.1} MiB.\n",
            kib as f64 / 1024.0
        ));
    }
    let target = &rows[0].1;
    body.push_str(&format!(
        "\nTarget (p99 under 5 ms at 5,000 heartbeats/s): {}.\n",
        if s.smoke {
            "not judged in smoke mode".to_owned()
        } else if target.ms(0.99) < 5.0 && target.errors == 0 && target.rate() >= 0.95 * rate as f64
        {
            format!(
                "met (p99 {:.2} ms at {:.0}/s)",
                target.ms(0.99),
                target.rate()
            )
        } else {
            format!(
                "NOT met (p99 {:.2} ms at {:.0}/s, {} errors)",
                target.ms(0.99),
                target.rate(),
                target.errors
            )
        }
    ));
    for (name, o) in &rows {
        anyhow::ensure!(o.requests > 0, "phase {name:?} completed no request");
        anyhow::ensure!(o.errors == 0, "phase {name:?} had {} errors", o.errors);
    }
    Ok(Section {
        title: "registry".into(),
        body,
    })
}

fn row(name: &str, o: &Outcome) -> String {
    format!(
        "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {} |\n",
        o.rate(),
        o.ms(0.50),
        o.ms(0.99),
        o.ms(0.999),
        o.errors
    )
}
