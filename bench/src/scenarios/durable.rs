//! `durable`: acknowledged durable publishes — Switchboard (every publish
//! is appended to its SQLite log by group commit before it is answered)
//! against NATS JetStream with file storage, one after the other in the
//! same run, each pattern on a fresh server.
//!
//! Every message carries a 128-byte payload and a unique id (Switchboard
//! deduplicates on `(source, id)`; JetStream is given the same id as
//! `Nats-Msg-Id`, so both do the duplicate check). Patterns, each closed
//! loop for `--seconds`, then waiting for what is still in flight:
//! - one connection, [`WINDOW`] publishes in flight (pipelined), one
//!   message each; each client refills its window after settling every
//!   answer it has already read, and writes the refill at once (the hub's
//!   client with one flush, async-nats by queueing on its connection,
//!   which writes what is queued together);
//! - [`CONNECTIONS`] connections, one publish in flight each (Switchboard
//!   over WebSocket and over HTTP `POST /api/v1/events`);
//! - Switchboard only: one connection, [`BATCH_WINDOW`] `publish` frames of
//!   [`BATCH`] events in flight (a frame is stored all or nothing; the
//!   JetStream of Debian's nats-server 2.9 has no batch publish).
//!
//! Reported: acknowledged messages per second, publish-to-ack latency
//! (per publish; per frame for batches), and the server's CPU time (user
//! and system, from /proc) per acknowledged message.
//!
//! Smoke mode: 0.3 s phases, 4 connections, batches of 10.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use hyper::Method;
use tokio_tungstenite::tungstenite::Message;

use crate::Settings;
use crate::hub::Hub;
use crate::hubws;
use crate::load::{self, MakeRequest, Mode};
use crate::payload;
use crate::peers;
use crate::report::Section;

const TOPIC: &str = "bench.durable";
const SOURCE: &str = "/bench/durable";
const STREAM: &str = "BENCH";
/// Publishes in flight on the one connection of the pipelined pattern.
pub(crate) const WINDOW: usize = 64;
/// Connections of the many-connections pattern (smoke: 4).
pub(crate) const CONNECTIONS: usize = 64;
/// Events per frame, and frames in flight, of the batched pattern.
pub(crate) const BATCH: usize = 100;
pub(crate) const BATCH_WINDOW: usize = 4;
/// How long what is in flight at the end of a phase may take.
const DRAIN: Duration = Duration::from_secs(30);
const SMOKE_PHASE: Duration = Duration::from_millis(300);

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Case {
    HubWsPipelined,
    JsPipelined,
    HubWsConnections,
    HubHttpConnections,
    JsConnections,
    HubWsBatched,
}

impl Case {
    fn pattern(self, smoke: bool) -> String {
        let conns = if smoke { 4 } else { CONNECTIONS };
        let batch = if smoke { 10 } else { BATCH };
        match self {
            Self::HubWsPipelined | Self::JsPipelined => {
                format!("1 connection, {WINDOW} in flight")
            }
            Self::HubWsConnections | Self::HubHttpConnections | Self::JsConnections => {
                format!("{conns} connections, 1 in flight each")
            }
            Self::HubWsBatched => {
                format!("1 connection, {BATCH_WINDOW} frames of {batch} events in flight")
            }
        }
    }

    fn system(self) -> &'static str {
        match self {
            Self::HubWsPipelined | Self::HubWsConnections => "Switchboard (WebSocket publish)",
            Self::HubHttpConnections => "Switchboard (HTTP POST)",
            Self::HubWsBatched => "Switchboard (WebSocket publish, batch)",
            Self::JsPipelined | Self::JsConnections => "NATS JetStream (file storage)",
        }
    }

    fn jetstream(self) -> bool {
        matches!(self, Self::JsPipelined | Self::JsConnections)
    }
}

/// What one phase measured.
#[derive(Clone, Debug)]
struct Row {
    /// Acknowledged messages per second.
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// Publishes still unanswered when the drain ended.
    unanswered: u64,
    /// Acknowledged messages.
    messages: u64,
    /// The server's CPU time per acknowledged message, in µs.
    cpu_us: Option<f64>,
    /// The load generator's (this process's) CPU time per acknowledged
    /// message, in µs.
    client_us: Option<f64>,
}

impl Row {
    fn median(runs: &[Row]) -> Row {
        let med = |f: fn(&Row) -> f64| crate::report::median_of(runs, f);
        Row {
            rate: med(|r| r.rate),
            p50_ms: med(|r| r.p50_ms),
            p99_ms: med(|r| r.p99_ms),
            errors: runs.iter().map(|r| r.errors).sum(),
            unanswered: runs.iter().map(|r| r.unanswered).sum(),
            messages: runs.iter().map(|r| r.messages).sum(),
            cpu_us: runs
                .iter()
                .all(|r| r.cpu_us.is_some())
                .then(|| med(|r| r.cpu_us.unwrap_or(0.0))),
            client_us: runs
                .iter()
                .all(|r| r.client_us.is_some())
                .then(|| med(|r| r.client_us.unwrap_or(0.0))),
        }
    }

    /// With the server's CPU time per message, from its CPU time before
    /// and after the phase.
    fn with_cpu(mut self, before: Option<Duration>, after: Option<Duration>) -> Row {
        if let (Some(b), Some(a)) = (before, after)
            && self.messages > 0
        {
            self.cpu_us = Some(a.saturating_sub(b).as_secs_f64() * 1e6 / self.messages as f64);
        }
        self
    }

    /// With the load generator's CPU time per message, from this
    /// process's CPU time before and after the phase.
    fn with_client_cpu(mut self, before: Option<Duration>) -> Row {
        if let (Some(b), Some(a)) = (before, own_cpu())
            && self.messages > 0
        {
            self.client_us = Some(a.saturating_sub(b).as_secs_f64() * 1e6 / self.messages as f64);
        }
        self
    }
}

/// This process's CPU time: the load generator's.
fn own_cpu() -> Option<Duration> {
    crate::hub::cpu_time(std::process::id())
}

/// One connection's tally.
struct Tally {
    messages: u64,
    errors: u64,
    unanswered: u64,
    first_error: Option<String>,
    last_ack: Instant,
    latency: Histogram<u64>,
}

impl Tally {
    fn new(start: Instant) -> anyhow::Result<Self> {
        Ok(Self {
            messages: 0,
            errors: 0,
            unanswered: 0,
            first_error: None,
            last_ack: start,
            latency: payload::histogram()?,
        })
    }

    fn add(&mut self, other: Tally) -> anyhow::Result<()> {
        self.messages += other.messages;
        self.errors += other.errors;
        self.unanswered += other.unanswered;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.last_ack = self.last_ack.max(other.last_ack);
        self.latency.add(&other.latency)?;
        Ok(())
    }

    fn row(&self, start: Instant) -> Row {
        let elapsed = self.last_ack.saturating_duration_since(start);
        Row {
            rate: if elapsed.is_zero() {
                0.0
            } else {
                self.messages as f64 / elapsed.as_secs_f64()
            },
            p50_ms: self.latency.value_at_quantile(0.50) as f64 / 1000.0,
            p99_ms: self.latency.value_at_quantile(0.99) as f64 / 1000.0,
            errors: self.errors,
            unanswered: self.unanswered,
            messages: self.messages,
            cpu_us: None,
            client_us: None,
        }
    }
}

pub(crate) async fn run(s: &Settings) -> anyhow::Result<Section> {
    let phase = if s.smoke { SMOKE_PHASE } else { s.phase };
    let mut cases = vec![
        Case::HubWsPipelined,
        Case::JsPipelined,
        Case::HubWsConnections,
        Case::HubHttpConnections,
        Case::JsConnections,
        Case::HubWsBatched,
    ];
    let mut missing = None;
    if !peers::installed("nats-server") {
        cases.retain(|c| !c.jetstream());
        missing = Some("NATS JetStream (nats-server is not installed)");
    }
    let mut runs: HashMap<Case, Vec<Row>> = HashMap::new();
    for _ in 0..s.repeat {
        for &case in &cases {
            let row = once(case, s, phase)
                .await
                .with_context(|| format!("{} / {}", case.system(), case.pattern(s.smoke)))?;
            runs.entry(case).or_default().push(row);
        }
    }
    let med = |c: Case| runs.get(&c).map(|r| Row::median(r));

    let mut body = format!(
        "Durable acknowledged publishes of {size}-byte payloads, each with a unique id, closed loop for \
         {phase:?} per pattern, then waiting for what is in flight; fresh server per pattern; medians of \
         {repeat} run(s). Switchboard answers once the event is committed to its SQLite log \
         (WAL, `synchronous = normal`, group commit); JetStream once the message is written to its file \
         store (nats-server 2.9 defaults). Latency is publish to acknowledgement, per publish (per frame \
         for batches). Server CPU: the server process's CPU time over the phase (from /proc) per \
         acknowledged message; load generator CPU: this process's, the same way.\n\n\
         | pattern | system | acked messages/s | p50 ms | p99 ms | server CPU µs per message | load generator CPU µs per message | errors | unanswered |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|\n",
        size = payload::SIZE,
        repeat = s.repeat,
    );
    for &case in &cases {
        let Some(r) = med(case) else { continue };
        let cpu = r.cpu_us.map_or("n/a".to_owned(), |c| format!("{c:.1}"));
        let client = r.client_us.map_or("n/a".to_owned(), |c| format!("{c:.1}"));
        body.push_str(&format!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {cpu} | {client} | {} | {} |\n",
            case.pattern(s.smoke),
            case.system(),
            r.rate,
            r.p50_ms,
            r.p99_ms,
            r.errors,
            r.unanswered
        ));
    }
    body.push('\n');
    for (ours, theirs) in [
        (Case::HubWsPipelined, Case::JsPipelined),
        (Case::HubWsConnections, Case::JsConnections),
        (Case::HubHttpConnections, Case::JsConnections),
    ] {
        if let (Some(a), Some(b)) = (med(ours), med(theirs)) {
            body.push_str(&format!(
                "{} vs JetStream, {}: {:.2}× the messages/s, p99 {:.2}× theirs.\n",
                ours.system(),
                ours.pattern(s.smoke),
                a.rate / b.rate.max(0.001),
                a.p99_ms / b.p99_ms.max(0.001),
            ));
        }
    }
    if let Some(m) = missing {
        body.push_str(&format!("\nMissing peer: {m}.\n"));
    }
    for &case in &cases {
        let Some(r) = med(case) else { continue };
        anyhow::ensure!(r.rate > 0.0, "{}: no publish acknowledged", case.system());
        if !case.jetstream() {
            anyhow::ensure!(
                r.errors == 0,
                "{}: {} publishes refused",
                case.system(),
                r.errors
            );
        }
    }
    Ok(Section {
        title: "durable".into(),
        body,
    })
}

/// One phase of one case on a fresh server.
async fn once(case: Case, s: &Settings, phase: Duration) -> anyhow::Result<Row> {
    let client = own_cpu();
    Ok(measure(case, s, phase).await?.with_client_cpu(client))
}

async fn measure(case: Case, s: &Settings, phase: Duration) -> anyhow::Result<Row> {
    let conns = if s.smoke { 4 } else { CONNECTIONS };
    let batch = if s.smoke { 10 } else { BATCH };
    if case.jetstream() {
        let (peer, addr) = peers::jetstream().await?;
        create_stream(addr).await?;
        let cpu = || peer.pid().and_then(crate::hub::cpu_time);
        let before = cpu();
        let n = if case == Case::JsPipelined { 1 } else { conns };
        let window = if case == Case::JsPipelined { WINDOW } else { 1 };
        let start = Instant::now();
        let deadline = start + phase;
        let mut tasks = Vec::new();
        for c in 0..n {
            tasks.push(tokio::spawn(jetstream_conn(
                addr, c, window, start, deadline,
            )));
        }
        return Ok(total(tasks, start).await?.with_cpu(before, cpu()));
    }
    let hub = Hub::start(&s.hub_bin, &[]).await?;
    let addr = hub.addr;
    let before = hub.cpu_time();
    if case == Case::HubHttpConnections {
        let make: MakeRequest = Arc::new(|w, i| {
            let id = format!("h{w}-{i}");
            let body = hubws::event(&id, SOURCE, TOPIC, &payload::make(payload::now_ns(), i));
            (
                Method::POST,
                "/api/v1/events".to_owned(),
                Some(Bytes::from(body)),
            )
        });
        let o = load::run(addr, conns, Mode::Max, phase, make).await?;
        return Ok(Row {
            rate: o.rate(),
            p50_ms: o.ms(0.50),
            p99_ms: o.ms(0.99),
            errors: o.errors,
            unanswered: 0,
            messages: o.requests.saturating_sub(o.errors),
            cpu_us: None,
            client_us: None,
        }
        .with_cpu(before, hub.cpu_time()));
    }
    let (n, window, per_frame) = match case {
        Case::HubWsPipelined => (1, WINDOW, 1),
        Case::HubWsConnections => (conns, 1, 1),
        _ => (1, BATCH_WINDOW, batch),
    };
    let start = Instant::now();
    let deadline = start + phase;
    let mut tasks = Vec::new();
    for c in 0..n {
        tasks.push(tokio::spawn(hub_conn(
            addr, c, window, per_frame, start, deadline,
        )));
    }
    Ok(total(tasks, start).await?.with_cpu(before, hub.cpu_time()))
}

async fn total(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Tally>>>,
    start: Instant,
) -> anyhow::Result<Row> {
    let mut sum = Tally::new(start)?;
    for t in tasks {
        sum.add(t.await??)?;
    }
    if let Some(e) = &sum.first_error {
        eprintln!("durable: {} errors; first: {e}", sum.errors);
    }
    Ok(sum.row(start))
}

/// One hub WebSocket connection keeping `window` publish frames of
/// `per_frame` events in flight until `deadline`, then waiting for the
/// answers still due.
async fn hub_conn(
    addr: SocketAddr,
    conn: usize,
    window: usize,
    per_frame: usize,
    start: Instant,
    deadline: Instant,
) -> anyhow::Result<Tally> {
    let (mut sink, mut stream) = hubws::connect(addr).await?.split();
    let mut tally = Tally::new(start)?;
    let mut inflight: HashMap<u64, (Instant, u64)> = HashMap::new();
    let mut next = 0u64;
    let drain = deadline + DRAIN;
    loop {
        if Instant::now() < deadline && inflight.len() < window {
            while inflight.len() < window {
                let sent = payload::now_ns();
                let events: Vec<String> = (0..per_frame as u64)
                    .map(|k| {
                        let seq = next * per_frame as u64 + k;
                        let id = format!("c{conn}-{seq}");
                        hubws::event(&id, SOURCE, TOPIC, &payload::make(sent, seq))
                    })
                    .collect();
                sink.feed(hubws::publish(next, &events, hubws::Publish::Logged))
                    .await?;
                inflight.insert(next, (Instant::now(), per_frame as u64));
                next += 1;
            }
            sink.flush().await?;
        }
        if inflight.is_empty() {
            break;
        }
        let mut frame = match tokio::time::timeout_at(drain.into(), stream.next()).await {
            Ok(Some(frame)) => frame?,
            Ok(None) => bail!("the hub closed the connection"),
            Err(_) => {
                tally.unanswered += inflight.len() as u64;
                break;
            }
        };
        // Every answer already read is settled before the window is
        // refilled, so the frames that replace them go out in one write,
        // as async-nats writes what is queued on its connection together.
        loop {
            settle(&mut tally, &mut inflight, frame)?;
            match stream.next().now_or_never() {
                Some(Some(next)) => frame = next?,
                Some(None) => bail!("the hub closed the connection"),
                None => break,
            }
        }
    }
    let _ = sink.close().await;
    Ok(tally)
}

/// Counts the answer `frame` to one of the publishes `inflight`.
fn settle(
    tally: &mut Tally,
    inflight: &mut HashMap<u64, (Instant, u64)>,
    frame: Message,
) -> anyhow::Result<()> {
    let Message::Text(t) = frame else {
        return Ok(());
    };
    let f: hubws::Frame<'_> =
        serde_json::from_str(t.as_str()).with_context(|| format!("unexpected frame {t}"))?;
    let answered = f
        .reference
        .as_deref()
        .and_then(|r| r.parse::<u64>().ok())
        .and_then(|r| inflight.remove(&r));
    let Some((sent, events)) = answered else {
        bail!("an answer to no publish in flight: {t}");
    };
    let now = Instant::now();
    match f.op {
        "published" => {
            let stored = f.events.map_or(0, |e| e.len() as u64);
            anyhow::ensure!(
                stored == events,
                "{events} events published, {stored} acked"
            );
            tally.messages += stored;
            tally.last_ack = now;
            payload::record(&mut tally.latency, now - sent);
        }
        _ => {
            tally.errors += 1;
            tally
                .first_error
                .get_or_insert_with(|| t.as_str().to_owned());
        }
    }
    Ok(())
}

/// Creates the stream `bench.durable` is stored in, once JetStream is up
/// (it may still be starting when the port opens).
async fn create_stream(addr: SocketAddr) -> anyhow::Result<()> {
    let client = async_nats::connect(format!("nats://{addr}"))
        .await
        .context("connect to NATS")?;
    let js = async_nats::jetstream::new(client);
    let config = async_nats::jetstream::stream::Config {
        name: STREAM.to_owned(),
        subjects: vec![TOPIC.to_owned()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    };
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match js.create_stream(config.clone()).await {
            Ok(_) => return Ok(()),
            Err(_) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).context("create the JetStream stream"),
        }
    }
}

/// One NATS connection keeping `window` JetStream publishes in flight
/// until `deadline`, then waiting for the acks still due.
async fn jetstream_conn(
    addr: SocketAddr,
    conn: usize,
    window: usize,
    start: Instant,
    deadline: Instant,
) -> anyhow::Result<Tally> {
    let client = async_nats::connect(format!("nats://{addr}"))
        .await
        .context("connect to NATS")?;
    let js = async_nats::jetstream::ContextBuilder::new()
        .ack_timeout(DRAIN)
        .build(client);
    let mut tally = Tally::new(start)?;
    let mut inflight = FuturesUnordered::new();
    let mut seq = 0u64;
    let drain = deadline + DRAIN;
    loop {
        while Instant::now() < deadline && inflight.len() < window {
            let sent = Instant::now();
            let msg = async_nats::jetstream::message::PublishMessage::build()
                .payload(Bytes::from(payload::make(payload::ns_at(sent), seq)))
                .message_id(format!("c{conn}-{seq}"));
            let ack = js.send_publish(TOPIC, msg).await?;
            inflight.push(async move { (sent, ack.await) });
            seq += 1;
        }
        let (sent, ack) = match tokio::time::timeout_at(drain.into(), inflight.next()).await {
            Ok(Some(done)) => done,
            Ok(None) => break,
            Err(_) => {
                tally.unanswered += inflight.len() as u64;
                break;
            }
        };
        let now = Instant::now();
        match ack {
            Ok(_) => {
                tally.messages += 1;
                tally.last_ack = now;
                payload::record(&mut tally.latency, now - sent);
            }
            Err(e) => {
                tally.errors += 1;
                tally.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    Ok(tally)
}
