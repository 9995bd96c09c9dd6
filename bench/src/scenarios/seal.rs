//! `seal`: what end-to-end sealing costs.
//!
//! - Per message, in this process: sealing (HPKE to the recipient, then the
//!   sender's Ed25519 signature) and opening (strict signature check, then
//!   HPKE open) of a 1 KiB payload; each operation timed on its own.
//! - End to end, through one hub: request-response between two agents, the
//!   requester keeping `IN_FLIGHT` requests outstanding and the responder
//!   answering each from its inbox stream; once in plain text (JSON data,
//!   reply published as-is) and once sealed (the request sealed to the
//!   responder, opened, the reply sealed back and opened), the same payload.
//!   The two alternate within each round; figures are medians over rounds.
//!
//! No peer system is named for this scenario: the comparison is the same
//! path in plain text.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use switchboard_client::sealed::Channel;
use switchboard_client::{Client, EventQuery, From};
use switchboard_seal::{AgentKeys, Kind, Metadata, SealedMessage};
use switchboard_wire::{PublishEvent, RegisterAgentRequest, SendMessageRequest};

use crate::Settings;
use crate::hub::Hub;
use crate::report::{Section, median_of};

const PAYLOAD: usize = 1024;
const IN_FLIGHT: usize = 16;

/// Rate limits far above the load, so they are not what is measured.
const CONFIG: &str = r#"
[rate_limit.roles]
agent = { per_second = 1000000000, burst = 1000000000 }
"#;

fn micros(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Seal and open `n` messages; (seal, open) histograms in nanoseconds.
fn per_message(n: usize) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    let alice = AgentKeys::generate("alice")?;
    let bob = AgentKeys::generate("bob")?;
    let payload = vec![b'x'; PAYLOAD];
    let mut seal = Histogram::<u64>::new(3)?;
    let mut open = Histogram::<u64>::new(3)?;
    let mut sealed = Vec::with_capacity(n);
    for i in 0..n {
        let meta = Metadata {
            id: format!("m-{i}"),
            from: "alice".into(),
            to: "bob".into(),
            kind: Kind::Message,
            correlation_id: format!("c-{i}"),
            sent_at_ms: 1,
        };
        let t = Instant::now();
        let m = SealedMessage::seal(&alice, bob.public(), meta, &payload)?;
        seal.record(t.elapsed().as_nanos() as u64)?;
        sealed.push(m);
    }
    for m in &sealed {
        let t = Instant::now();
        let p = m.open(&bob, alice.public())?;
        open.record(t.elapsed().as_nanos() as u64)?;
        anyhow::ensure!(p.len() == PAYLOAD, "opened {} bytes", p.len());
    }
    Ok((seal, open))
}

struct Agents {
    alice: Client,
    bob: Client,
    alice_ch: Arc<Channel>,
    bob_ch: Arc<Channel>,
}

async fn agents(base: &str) -> anyhow::Result<Agents> {
    let admin = Client::new(base)?.with_token(crate::hub::TOKEN);
    let mut clients = Vec::new();
    for id in ["alice", "bob"] {
        let (agent, _) = admin
            .register_agent(&RegisterAgentRequest {
                id: id.into(),
                agent_type: "worker".into(),
                name: None,
                version: None,
                capabilities: vec![],
                endpoint: None,
                health_check_url: None,
                configuration: None,
                metadata: None,
            })
            .await?;
        let secret = agent
            .credentials
            .map(|c| c.client_secret)
            .ok_or_else(|| anyhow::anyhow!("no credentials for {id}"))?;
        let token = admin.issue_token(id, &secret, None).await?.access_token;
        let client = Client::new(base)?.with_token(&token);
        let keys = AgentKeys::generate(id)?;
        client.register_keys(&keys, None).await?;
        clients.push((client.clone(), Arc::new(Channel::new(client, keys))));
    }
    let (bob, bob_ch) = clients.pop().ok_or_else(|| anyhow::anyhow!("bob"))?;
    let (alice, alice_ch) = clients.pop().ok_or_else(|| anyhow::anyhow!("alice"))?;
    Ok(Agents {
        alice,
        bob,
        alice_ch,
        bob_ch,
    })
}

/// Bob: answers every request in his inbox, plain or sealed, each on its
/// own task.
fn responder(a: &Agents) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let (client, ch) = (a.bob.clone(), a.bob_ch.clone());
    tokio::spawn(async move {
        let q = EventQuery {
            topics: vec!["inbox.bob".into()],
            filter: None,
            from: From::After(0),
            limit: None,
        };
        let mut stream = client.stream_events(&q, None).await?;
        while let Some(e) = stream.next().await? {
            let (client, ch) = (client.clone(), ch.clone());
            tokio::spawn(async move {
                let done = if e.datacontenttype == switchboard_seal::CONTENT_TYPE {
                    match ch.open(&e).await {
                        Ok(req) => ch
                            .reply(&req, &req.plaintext)
                            .await
                            .map_err(|e| e.to_string()),
                        Err(err) => Err(err.to_string()),
                    }
                } else {
                    let mut ext = serde_json::Map::new();
                    if let Some(c) = e.extensions.get("correlationid") {
                        ext.insert("correlationid".into(), c.clone());
                    }
                    let topic = e.extensions.get("replyto").and_then(|v| v.as_str());
                    match topic {
                        Some(t) => client
                            .publish(&[PublishEvent {
                                topic: Some(t.to_owned()),
                                event_type: Some("reply".into()),
                                data: e.data.as_ref().map(switchboard_wire::Payload::from),
                                extensions: ext,
                                ..Default::default()
                            }])
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                        None => Err("a request without replyto".into()),
                    }
                };
                if let Err(why) = done {
                    eprintln!("seal bench responder: {why}");
                }
            });
        }
        Ok(())
    })
}

struct Phase {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// Alice's requests for `length`, `IN_FLIGHT` at a time.
async fn requests(a: &Agents, sealed: bool, length: Duration) -> anyhow::Result<Phase> {
    let text = "y".repeat(PAYLOAD);
    let until = Instant::now() + length;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (client, ch, text) = (a.alice.clone(), a.alice_ch.clone(), text.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            let mut errors = 0u64;
            while Instant::now() < until {
                let t = Instant::now();
                let ok = if sealed {
                    ch.request("bob", text.as_bytes(), 10_000)
                        .await
                        .map(|r| r.plaintext.len() == PAYLOAD)
                        .unwrap_or(false)
                } else {
                    client
                        .request(&SendMessageRequest {
                            to: Some("bob".into()),
                            data: Some(serde_json::json!({ "text": text })),
                            timeout_ms: Some(10_000),
                            ..Default::default()
                        })
                        .await
                        .is_ok()
                };
                if ok {
                    h.record(t.elapsed().as_micros() as u64)?;
                } else {
                    errors += 1;
                }
            }
            anyhow::Ok((h, errors))
        }));
    }
    let mut all = Histogram::<u64>::new(3)?;
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await??;
        all.add(&h)?;
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(Phase {
        rate: all.len() as f64 / secs,
        p50_ms: all.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: all.value_at_quantile(0.99) as f64 / 1000.0,
        errors,
    })
}

pub(crate) async fn run(s: &Settings) -> anyhow::Result<Section> {
    let n = if s.smoke { 200 } else { 20_000 };
    let (seal, open) = tokio::task::spawn_blocking(move || per_message(n)).await??;

    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("seal.toml");
    std::fs::write(&cfg, CONFIG)?;
    let hub = Hub::start(&s.hub_bin, &["--config", &cfg.display().to_string()]).await?;
    let a = agents(&format!("http://{}", hub.addr)).await?;
    let bob = responder(&a);
    let mut plain = Vec::new();
    let mut sealed = Vec::new();
    for _ in 0..s.repeat {
        plain.push(requests(&a, false, s.phase).await?);
        sealed.push(requests(&a, true, s.phase).await?);
    }
    bob.abort();
    for (name, phases) in [("plain", &plain), ("sealed", &sealed)] {
        let errors: u64 = phases.iter().map(|p| p.errors).sum();
        anyhow::ensure!(errors == 0, "{name}: {errors} requests failed");
    }
    let med = |v: &[Phase], f: fn(&Phase) -> f64| median_of(v, f);
    let (pr, sr) = (med(&plain, |p| p.rate), med(&sealed, |p| p.rate));
    let mut body = format!(
        "Per message ({n} messages of {PAYLOAD} bytes, one thread, each operation timed alone): \
         seal = HPKE (X25519, HKDF-SHA256, ChaCha20-Poly1305) to the recipient + the sender's \
         Ed25519 signature; open = strict signature check + HPKE open.\n\n\
         | operation | p50 µs | p99 µs |\n|---|---:|---:|\n\
         | seal + sign | {:.1} | {:.1} |\n| verify + open | {:.1} | {:.1} |\n\n\
         End to end through one hub: request-response between two agents ({IN_FLIGHT} requests \
         in flight, the responder answering each from its inbox stream), {PAYLOAD}-byte payload, \
         plain and sealed alternating in each of {} rounds of {:?}; medians over rounds. The \
         load generators and the responder share the 2 cores with the hub.\n\n\
         | path | requests/s | p50 ms | p99 ms | vs plain |\n|---|---:|---:|---:|---:|\n",
        micros(&seal, 0.50),
        micros(&seal, 0.99),
        micros(&open, 0.50),
        micros(&open, 0.99),
        s.repeat,
        s.phase,
    );
    for (name, v, r) in [("plain text", &plain, pr), ("sealed", &sealed, sr)] {
        body.push_str(&format!(
            "| {name} | {r:.0} | {:.2} | {:.2} | {:.2}× |\n",
            med(v, |p| p.p50_ms),
            med(v, |p| p.p99_ms),
            r / pr.max(1.0)
        ));
    }
    Ok(Section {
        title: "seal".into(),
        body,
    })
}
