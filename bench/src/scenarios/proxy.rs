//! `proxy`: Switchboard's gateway against nginx and HAProxy as plain
//! reverse proxies, side by side, to the same upstream, with the same load
//! generator.
//!
//! The upstream is this binary's `upstream` subcommand (a 128-byte answer
//! on keep-alive HTTP/1.1). Each proxy runs as shipped for the job: nginx
//! with two workers and keep-alive upstream connections, HAProxy with two
//! threads and connection reuse, Switchboard with the upstream registered
//! as an agent (`/gw/bench/...`) and authentication on (the load sends the
//! hub's admin token as its bearer credential) — and once more with
//! authentication off, to show what the proxying alone costs.
//!
//! Two measures, each the median of `--repeat` rounds that go through
//! every target in turn:
//! - peak: `wrk` (keep-alive, 1 thread, 32 connections) for `--seconds`;
//! - added latency: the bench's own open-loop generator at half of
//!   Switchboard's peak, through each proxy and straight to the upstream;
//!   the added p99 is the proxy's p99 less the upstream's.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;

use hyper::Method;

use crate::Settings;
use crate::hub::Hub;
use crate::load::{self, MakeRequest, Mode};
use crate::peers;
use crate::report::{Section, median_of};

const CONNECTIONS: usize = 32;

struct Target {
    name: &'static str,
    addr: SocketAddr,
    path: &'static str,
    auth: Option<Arc<str>>,
    /// The proxy's process (its CPU time and its children's is read);
    /// `None` for the upstream itself.
    pid: Option<u32>,
}

#[derive(Clone, Default)]
struct Peak {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// The proxy's CPU time per request over the run, in µs.
    cpu_us: Option<f64>,
}

/// Runs wrk against a target; its requests/s and latency percentiles.
async fn wrk(t: &Target, seconds: u64) -> anyhow::Result<Peak> {
    let mut cmd = tokio::process::Command::new("wrk");
    cmd.args([
        "-t1",
        &format!("-c{CONNECTIONS}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    if let Some(a) = &t.auth {
        cmd.arg("-H").arg(format!("Authorization: {a}"));
    }
    let cpu = || t.pid.and_then(crate::hub::tree_cpu_time);
    let before = cpu();
    let out = cmd
        .arg(format!("http://{}{}", t.addr, t.path))
        .stdin(Stdio::null())
        .output()
        .await?;
    let after = cpu();
    anyhow::ensure!(
        out.status.success(),
        "wrk failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut peak = parse_wrk(&String::from_utf8_lossy(&out.stdout))?;
    if let (Some(b), Some(a)) = (before, after) {
        let requests = peak.rps * seconds as f64;
        if requests > 0.0 {
            peak.cpu_us = Some((a - b).as_secs_f64() * 1e6 / requests);
        }
    }
    Ok(peak)
}

fn duration_ms(s: &str) -> Option<f64> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        _ => return None,
    })
}

fn parse_wrk(text: &str) -> anyhow::Result<Peak> {
    let mut p = Peak::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => p.p50_ms = duration_ms(v).unwrap_or(0.0),
            ["99%", v] => p.p99_ms = duration_ms(v).unwrap_or(0.0),
            ["Requests/sec:", v] => p.rps = v.parse().unwrap_or(0.0),
            ["Non-2xx", "or", "3xx", "responses:", n] => p.errors += n.parse::<u64>().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                p.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    anyhow::ensure!(p.rps > 0.0, "no requests/s in wrk's output:\n{text}");
    Ok(p)
}

pub(crate) async fn run(s: &Settings) -> anyhow::Result<Section> {
    if !peers::installed("wrk") {
        return Ok(Section {
            title: "proxy".into(),
            body: "wrk, the load generator, is missing: install the Debian package `wrk` \
                   (with `nginx-light` and `haproxy` for the peers). Not measured.\n"
                .into(),
        });
    }
    let (_up_peer, up) = peers::upstream().await?;
    let hub = Hub::start(&s.hub_bin, &[]).await?;
    let dir = tempfile::tempdir()?;
    let off_cfg = dir.path().join("off.toml");
    std::fs::write(&off_cfg, "[auth]\nenabled = false\n")?;
    let hub_off = Hub::start(&s.hub_bin, &["--config", &off_cfg.display().to_string()]).await?;
    for h in [&hub, &hub_off] {
        let body = serde_json::json!({"id": "upstream-1", "type": "bench", "endpoint": format!("http://{up}")});
        load::send_all(
            h.addr,
            [(
                Method::POST,
                "/api/v1/agents/register".to_owned(),
                Some(body.to_string().into()),
            )],
        )
        .await?;
        // The gateway learns of the agent within a moment.
        let mut ready = false;
        for _ in 0..100 {
            if load::send_all(h.addr, [(Method::GET, "/gw/bench/ready".to_owned(), None)])
                .await
                .is_ok()
            {
                ready = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        anyhow::ensure!(ready, "the gateway did not route to the upstream");
    }
    // The upstream's agent heartbeats, as a live agent does, so it never
    // goes stale during a long run.
    let beats = {
        let addrs = [hub.addr, hub_off.addr];
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                for a in addrs {
                    let hb = (
                        Method::POST,
                        "/api/v1/agents/upstream-1/heartbeat".to_owned(),
                        Some(r#"{"status":"active"}"#.into()),
                    );
                    if let Err(error) = load::send_all(a, [hb]).await {
                        eprintln!("heartbeat failed: {error:#}");
                    }
                }
            }
        })
    };
    let mut missing = Vec::new();
    let nginx = if peers::installed("nginx") {
        Some(peers::nginx(up).await?)
    } else {
        missing.push("nginx");
        None
    };
    let haproxy = if peers::installed("haproxy") {
        Some(peers::haproxy(up).await?)
    } else {
        missing.push("haproxy");
        None
    };
    let bearer: Arc<str> = crate::hub::bearer().into();
    let mut targets = vec![
        Target {
            name: "upstream, direct (no proxy)",
            addr: up,
            path: "/x",
            auth: None,
            pid: None,
        },
        Target {
            name: "Switchboard (auth on)",
            addr: hub.addr,
            path: "/gw/bench/x",
            auth: Some(bearer.clone()),
            pid: hub.pid(),
        },
        Target {
            name: "Switchboard (auth off)",
            addr: hub_off.addr,
            path: "/gw/bench/x",
            auth: None,
            pid: hub_off.pid(),
        },
    ];
    if let Some((p, a)) = &nginx {
        targets.push(Target {
            name: "nginx",
            addr: *a,
            path: "/x",
            auth: None,
            pid: p.pid(),
        });
    }
    if let Some((p, a)) = &haproxy {
        targets.push(Target {
            name: "HAProxy",
            addr: *a,
            path: "/x",
            auth: None,
            pid: p.pid(),
        });
    }
    let secs = s.phase.as_secs().max(1);
    let rounds = s.repeat;
    let mut peaks: Vec<Vec<Peak>> = vec![Vec::new(); targets.len()];
    for _ in 0..rounds {
        for (i, t) in targets.iter().enumerate() {
            peaks[i].push(wrk(t, secs).await?);
        }
    }
    let peak = |i: usize| Peak {
        rps: median_of(&peaks[i], |p| p.rps),
        p50_ms: median_of(&peaks[i], |p| p.p50_ms),
        p99_ms: median_of(&peaks[i], |p| p.p99_ms),
        errors: peaks[i].iter().map(|p| p.errors).sum(),
        cpu_us: peaks[i]
            .iter()
            .all(|p| p.cpu_us.is_some())
            .then(|| median_of(&peaks[i], |p| p.cpu_us.unwrap_or(0.0))),
    };
    let medians: Vec<Peak> = (0..targets.len()).map(peak).collect();

    // Added latency at half of Switchboard's peak, the same rate for all.
    let half = ((medians[1].rps / 2.0) as u64).max(100);
    let mut p99s: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for _ in 0..rounds {
        for (i, t) in targets.iter().enumerate() {
            let path = t.path;
            let make: MakeRequest = Arc::new(move |_, _| (Method::GET, path.to_owned(), None));
            let o = load::run_as(
                t.addr,
                CONNECTIONS,
                Mode::Rate(half),
                s.phase,
                make,
                t.auth.clone(),
            )
            .await?;
            anyhow::ensure!(
                o.errors == 0,
                "{}: {} errors at {half}/s, the first: {}",
                t.name,
                o.errors,
                o.first_error.as_deref().unwrap_or("?")
            );
            p99s[i].push(o.ms(0.99));
        }
    }
    let p99_at_half: Vec<f64> = p99s.iter().map(|v| median_of(v, |x| *x)).collect();

    let mut body = format!(
        "Same upstream (this binary's `upstream`: 128-byte answers, keep-alive HTTP/1.1, its own process), \
         same load generators, every process on the same 2 cores. Peak: `wrk -t1 -c{CONNECTIONS} -d{secs}s --latency`. \
         Added p99: the bench's open-loop generator at {half} requests/s (half of Switchboard's peak) over {CONNECTIONS} \
         connections, less the upstream's own p99 at that rate. CPU per request: the proxy's CPU time \
         (all its processes, from `/proc`) over the peak run, divided by the requests it served. \
         Medians of {rounds} rounds, targets taken in turn.\n\n\
         | target | peak requests/s | vs nginx | CPU µs per request | p50 ms | p99 ms | p99 ms at {half}/s | added p99 ms | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    let nginx_rps = targets
        .iter()
        .position(|t| t.name == "nginx")
        .map(|i| medians[i].rps);
    for (i, t) in targets.iter().enumerate() {
        let m = &medians[i];
        let vs = nginx_rps.map_or_else(|| "—".to_owned(), |n| format!("{:.2}×", m.rps / n));
        let added = if i == 0 {
            "—".to_owned()
        } else {
            format!("{:.3}", p99_at_half[i] - p99_at_half[0])
        };
        let cpu = m
            .cpu_us
            .map_or_else(|| "—".to_owned(), |c| format!("{c:.1}"));
        body.push_str(&format!(
            "| {} | {:.0} | {vs} | {cpu} | {:.3} | {:.3} | {:.3} | {added} | {} |\n",
            t.name, m.rps, m.p50_ms, m.p99_ms, p99_at_half[i], m.errors
        ));
    }
    for m in &missing {
        body.push_str(&format!(
            "\n{m}: missing (install the Debian package); not measured.\n"
        ));
    }
    let sb = &medians[1];
    let added = p99_at_half[1] - p99_at_half[0];
    body.push_str(&format!(
        "\nGoals (throughput at least nginx's; added p99 under 1 ms at half of peak): {}.\n",
        if s.smoke {
            "not judged in smoke mode".to_owned()
        } else {
            let thr = match nginx_rps {
                Some(n) if sb.rps >= n => format!("throughput met ({:.2}× nginx)", sb.rps / n),
                Some(n) => format!("throughput NOT met ({:.2}× nginx)", sb.rps / n),
                None => "throughput not judged (nginx missing)".to_owned(),
            };
            let lat = if added < 1.0 {
                format!("added p99 met ({added:.3} ms)")
            } else {
                format!("added p99 NOT met ({added:.3} ms)")
            };
            format!("{thr}; {lat}")
        }
    ));
    beats.abort();
    for (t, m) in targets.iter().zip(&medians) {
        anyhow::ensure!(m.errors == 0, "{}: {} errors", t.name, m.errors);
    }
    Ok(Section {
        title: "proxy".into(),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 1s test @ http://127.0.0.1:1/x\n  1 threads and 32 connections\n\
                    \x20 Latency Distribution\n     50%  512.00us\n     75%    1.02ms\n     99%    3.10ms\n\
                    \x20 44000 requests in 1.00s, 9.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n\
                    Requests/sec:  43987.65\nTransfer/sec:      8.99MB\n";
        let p = parse_wrk(text).expect("parsed");
        assert!((p.p50_ms - 0.512).abs() < 1e-9);
        assert!((p.p99_ms - 3.1).abs() < 1e-9);
        assert!((p.rps - 43987.65).abs() < 1e-6);
        assert_eq!(p.errors, 3);
    }
}
