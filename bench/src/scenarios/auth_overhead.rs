//! `auth-overhead`: what authentication and authorization add to a request.
//!
//! Two hubs from the same binary run side by side: one as shipped
//! (authentication on), one with `auth.enabled = false`. The same route
//! (`GET /api/v1/agents/{id}`) is read on each, with:
//! - an agent's JWT from client credentials (the common case: the hub
//!   verifies the signature once, then recognizes the token; every request
//!   still checks revocation, the agent's credentials, the route's scope and
//!   the rate limit);
//! - an operator's API key (a SHA-256 of the key on every request);
//! - no credential, on the hub with authentication off.
//!
//! Phases alternate between the hubs within each round, so both see the
//! same machine state; each figure is the median over rounds. The rate
//! limit stays on but is set far above the load, so its bookkeeping is
//! measured without refusing anything.

use std::sync::Arc;

use hyper::Method;

use crate::Settings;
use crate::hub::Hub;
use crate::load::{self, MakeRequest, Mode};
use crate::report::{Figures, Section, median_of};

const AGENT: &str = "bench-agent";

/// The settings of the hub with authentication on: the shipped defaults,
/// with rate limits too high to refuse this load.
const ON: &str = r#"
[rate_limit.roles]
agent = { per_second = 1000000000, burst = 1000000000 }
operator = { per_second = 1000000000, burst = 1000000000 }
"#;
const OFF: &str = "[auth]\nenabled = false\n";

struct Round {
    /// Sequential requests on one connection: the latency of one request.
    single: [Figures; 3],
    /// Many connections at full speed: the hub's throughput.
    full: [Figures; 3],
}

const CASES: [&str; 3] = [
    "auth off (no credential)",
    "agent JWT (client credentials)",
    "operator API key",
];

pub(crate) async fn run(s: &Settings) -> anyhow::Result<Section> {
    let dir = tempfile::tempdir()?;
    let on_cfg = dir.path().join("on.toml");
    let off_cfg = dir.path().join("off.toml");
    std::fs::write(&on_cfg, ON)?;
    std::fs::write(&off_cfg, OFF)?;
    let on = Hub::start(&s.hub_bin, &["--config", &on_cfg.display().to_string()]).await?;
    let off = Hub::start(&s.hub_bin, &["--config", &off_cfg.display().to_string()]).await?;

    // The agent, its token, and an operator key (not measured).
    let admin = switchboard_client::Client::new(&format!("http://{}", on.addr))?
        .with_token(crate::hub::TOKEN);
    let reg = switchboard_wire::RegisterAgentRequest {
        id: AGENT.into(),
        agent_type: "worker".into(),
        name: None,
        version: None,
        capabilities: vec!["rust".into()],
        endpoint: None,
        health_check_url: None,
        configuration: None,
        metadata: None,
    };
    let (agent, _) = admin.register_agent(&reg).await?;
    let secret = agent
        .credentials
        .map(|c| c.client_secret)
        .ok_or_else(|| anyhow::anyhow!("the registration carried no credentials"))?;
    let jwt = admin.issue_token(AGENT, &secret, None).await?.access_token;
    let key = admin
        .create_api_key(&switchboard_wire::CreateApiKeyRequest {
            name: "bench operator".into(),
            role: "operator".into(),
            scopes: None,
            expires_at: None,
        })
        .await?
        .key;
    let off_admin = switchboard_client::Client::new(&format!("http://{}", off.addr))?;
    off_admin.register_agent(&reg).await?;

    let get: MakeRequest = Arc::new(|_, _| (Method::GET, format!("/api/v1/agents/{AGENT}"), None));
    let conns = if s.smoke { 4 } else { 16 };
    let mut rounds = Vec::new();
    for _ in 0..s.repeat.max(if s.smoke { 1 } else { 5 }) {
        let cases = [
            (off.addr, None),
            (on.addr, Some(Arc::<str>::from(format!("Bearer {jwt}")))),
            (on.addr, Some(Arc::<str>::from(format!("Bearer {key}")))),
        ];
        let mut single = Vec::new();
        for (addr, auth) in &cases {
            let o = load::run_as(*addr, 1, Mode::Max, s.phase, get.clone(), auth.clone()).await?;
            single.push(Figures::of(&o));
        }
        let mut full = Vec::new();
        for (addr, auth) in &cases {
            let o =
                load::run_as(*addr, conns, Mode::Max, s.phase, get.clone(), auth.clone()).await?;
            full.push(Figures::of(&o));
        }
        rounds.push(Round {
            single: [single[0].clone(), single[1].clone(), single[2].clone()],
            full: [full[0].clone(), full[1].clone(), full[2].clone()],
        });
    }
    let med = |f: fn(&Round) -> &Figures| {
        Figures::median(&rounds.iter().map(|r| f(r).clone()).collect::<Vec<_>>())
    };
    let single = [
        med(|r| &r.single[0]),
        med(|r| &r.single[1]),
        med(|r| &r.single[2]),
    ];
    let full = [
        med(|r| &r.full[0]),
        med(|r| &r.full[1]),
        med(|r| &r.full[2]),
    ];
    for (name, f) in CASES.iter().zip(single.iter().chain(&full)) {
        anyhow::ensure!(f.errors == 0, "{name}: {} errors", f.errors);
        anyhow::ensure!(f.rate > 0.0, "{name}: no request completed");
    }
    // The added latency per round, then its median: both hubs measured
    // back to back in each round.
    let added = |case: usize, q: fn(&Figures) -> f64| {
        median_of(&rounds, |r| (q(&r.single[case]) - q(&r.single[0])) * 1000.0)
    };
    let mut body = format!(
        "`GET /api/v1/agents/{{id}}` on two hubs of the same binary, one with authentication on \
         (rate limits on but far above the load) and one with `auth.enabled = false`; phases \
         alternate between them in each of {} rounds; figures are medians over rounds. One \
         connection sending requests one after another measures the latency of one request; {conns} \
         connections at full speed measure throughput. The load generator shares the 2 cores.\n\n\
         | credential | 1 connection: requests/s | p50 µs | p99 µs | added p50 µs | added p99 µs | {conns} connections: requests/s | vs off |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
        rounds.len()
    );
    for (i, name) in CASES.iter().enumerate() {
        let (a50, a99) = if i == 0 {
            ("—".to_owned(), "—".to_owned())
        } else {
            (
                format!("{:.1}", added(i, |f| f.p50_ms)),
                format!("{:.1}", added(i, |f| f.p99_ms)),
            )
        };
        body.push_str(&format!(
            "| {name} | {:.0} | {:.0} | {:.0} | {a50} | {a99} | {:.0} | {:.2}× |\n",
            single[i].rate,
            single[i].p50_ms * 1000.0,
            single[i].p99_ms * 1000.0,
            full[i].rate,
            full[i].rate / full[0].rate.max(1.0),
        ));
    }
    let worst = added(1, |f| f.p99_ms).max(added(2, |f| f.p99_ms));
    body.push_str(&format!(
        "\nGoal (token verification and authorization add under 50 µs p99): {}.\n",
        if s.smoke {
            "not judged in smoke mode".to_owned()
        } else if worst < 50.0 {
            format!("met (at most {worst:.1} µs added at p99)")
        } else {
            format!("NOT met ({worst:.1} µs added at p99)")
        }
    ));
    Ok(Section {
        title: "auth-overhead".into(),
        body,
    })
}
