//! `pubsub`: live delivery from one publisher to 1 or 100 subscribers of
//! one topic — Switchboard (WebSocket), NATS core and Redis pub/sub, one
//! after the other in the same run, each on a fresh server for every
//! pattern, with the same client pattern.
//!
//! Every message carries a 128-byte payload holding its send time (see
//! [`crate::payload`]); each subscriber is its own connection and records
//! publish-to-receive latency. Two phases per pattern, each with fresh
//! connections:
//! - full speed: the publisher keeps at most [`WINDOW`] messages that have
//!   not yet reached every subscriber (credit-based flow control, the same
//!   for every system, so no system is measured by how much it can buffer
//!   or drop); reported: deliveries per second (summed over subscribers)
//!   and latency, which at saturation is mostly time spent in that window;
//! - fixed rate: messages scheduled at a rate every system sustains;
//!   latency counts from the scheduled send when a send that blocked made
//!   the publisher late (no coordinated omission), from the actual send
//!   when only the publisher's timer was late.
//!
//! Each publisher publishes the way its users would: Switchboard a
//! `publish` frame per event (and, as more rows, frames of up to
//! [`HUB_BATCH`] events, stored all or nothing; transient frames, not
//! logged; transient and quiet frames, not answered either), NATS `PUB`
//! through `async-nats`, Redis `PUBLISH` pipelined through the `redis`
//! crate. A Switchboard publish is durable before it is delivered (it goes
//! through the log) unless transient; NATS core and Redis pub/sub keep
//! nothing.
//!
//! Smoke mode: 0.3 s phases, 1 and 10 subscribers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::Settings;
use crate::hub::Hub;
use crate::hubws::{self, Ws};
use crate::payload;
use crate::peers::{self, Peer};
use crate::report::Section;

const TOPIC: &str = "bench.pubsub";
const SOURCE: &str = "/bench/pubsub";
/// Messages published and not yet delivered to every subscriber, at most,
/// in the full-speed phase.
pub(crate) const WINDOW: u64 = 256;
/// The publisher waits for room for this many messages before it sends
/// again, so it sends in bursts rather than one message per delivery.
const REFILL: u64 = WINDOW / 8;
/// Events per `publish` frame in the batched Switchboard row.
pub(crate) const HUB_BATCH: usize = 100;
/// Messages sent in one go at most.
const MAX_BURST: u64 = 1000;
/// How long after the last publish every delivery may still take.
const DRAIN: Duration = Duration::from_secs(30);
const SMOKE_PHASE: Duration = Duration::from_millis(300);

/// Fixed publish rates (messages/s) by fan-out, full and smoke.
fn fixed_rate(fanout: u64, smoke: bool) -> u64 {
    match (fanout, smoke) {
        (1, false) => 1_000,
        (_, false) => 100,
        (1, true) => 200,
        (_, true) => 20,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum System {
    Hub(HubMode),
    Nats,
    Redis,
}

/// How the Switchboard publisher publishes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HubMode {
    /// One event per frame, logged before delivery.
    Single,
    /// Frames of [`HUB_BATCH`] events, logged before delivery.
    Batched,
    /// One event per frame, transient: delivered live, not logged.
    Transient,
    /// As `Transient`, and quiet: answered only if refused, as a NATS core
    /// publish is not answered.
    Quiet,
}

impl HubMode {
    fn publish(self) -> hubws::Publish {
        match self {
            Self::Single | Self::Batched => hubws::Publish::Logged,
            Self::Transient => hubws::Publish::Transient,
            Self::Quiet => hubws::Publish::Quiet,
        }
    }
}

impl System {
    fn name(self) -> &'static str {
        match self {
            Self::Hub(HubMode::Single) => "Switchboard",
            Self::Hub(HubMode::Batched) => "Switchboard, batched publish",
            Self::Hub(HubMode::Transient) => "Switchboard, transient publish",
            Self::Hub(HubMode::Quiet) => "Switchboard, transient quiet publish",
            Self::Nats => "NATS core",
            Self::Redis => "Redis pub/sub",
        }
    }
}

#[derive(Clone, Copy)]
enum Pace {
    /// As fast as the window allows.
    Full,
    /// This many messages per second.
    Rate(u64),
}

/// A running server of one system, killed when dropped.
struct Server {
    _hub: Option<Hub>,
    _peer: Option<Peer>,
}

/// What one phase measured.
#[derive(Clone, Debug)]
struct Row {
    /// Deliveries per second, over subscribers.
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Deliveries expected and not seen before the drain deadline.
    missing: u64,
    /// Publishes the system refused.
    errors: u64,
}

impl Row {
    fn median(runs: &[Row]) -> Row {
        let med = |f: fn(&Row) -> f64| crate::report::median_of(runs, f);
        Row {
            rate: med(|r| r.rate),
            p50_ms: med(|r| r.p50_ms),
            p99_ms: med(|r| r.p99_ms),
            missing: runs.iter().map(|r| r.missing).sum(),
            errors: runs.iter().map(|r| r.errors).sum(),
        }
    }
}

/// The results of one system at one fan-out, over runs.
struct Results {
    system: System,
    fanout: u64,
    full: Vec<Row>,
    fixed: Vec<Row>,
}

pub(crate) async fn run(s: &Settings) -> anyhow::Result<Section> {
    let phase = if s.smoke { SMOKE_PHASE } else { s.phase };
    let fanouts: [u64; 2] = if s.smoke { [1, 10] } else { [1, 100] };
    let mut systems = vec![
        System::Hub(HubMode::Single),
        System::Hub(HubMode::Batched),
        System::Hub(HubMode::Transient),
        System::Hub(HubMode::Quiet),
    ];
    let mut missing_peers = Vec::new();
    if peers::installed("nats-server") {
        systems.push(System::Nats);
    } else {
        missing_peers.push("NATS core (nats-server is not installed)");
    }
    if peers::installed("redis-server") {
        systems.push(System::Redis);
    } else {
        missing_peers.push("Redis pub/sub (redis-server is not installed)");
    }
    let mut results: Vec<Results> = systems
        .iter()
        .flat_map(|&system| {
            fanouts.iter().map(move |&fanout| Results {
                system,
                fanout,
                full: Vec::new(),
                fixed: Vec::new(),
            })
        })
        .collect();
    for _ in 0..s.repeat {
        for r in &mut results {
            let (server, target) = start(r.system, s, r.fanout).await?;
            let full = measure(target, r.system, r.fanout, Pace::Full, phase)
                .await
                .with_context(|| format!("{} 1→{} full speed", r.system.name(), r.fanout))?;
            let rate = fixed_rate(r.fanout, s.smoke);
            let fixed = measure(target, r.system, r.fanout, Pace::Rate(rate), phase)
                .await
                .with_context(|| format!("{} 1→{} at {rate}/s", r.system.name(), r.fanout))?;
            drop(server);
            r.full.push(full);
            r.fixed.push(fixed);
        }
    }

    let mut body = format!(
        "One publisher, 1 or {big} subscribers of one topic, each subscriber its own connection; \
         {size}-byte payloads carrying their send time; {phase:?} phases, fresh server per pattern, \
         medians of {repeat} run(s). Full speed: at most {WINDOW} messages not yet delivered to every \
         subscriber (the same flow control for every system); delivered/s counts every subscriber's \
         copy. Fixed rate: latency from the scheduled send when the system held the publisher back, \
         from the actual send when only the publisher's timer was late. Switchboard publishes over its WebSocket \
         (`publish` frames, durable before delivery), batched: up to {HUB_BATCH} events per frame; \
         transient: `publish` frames with `\"transient\": true`, handed to live subscriptions without \
         being logged (the same guarantee as NATS core); quiet: transient with `\"quiet\": true`, \
         not answered unless refused (as NATS core answers no publish; the publisher ends with a \
         `ping` whose `pong` follows every frame before it); NATS core and Redis pub/sub keep nothing.\n\n",
        big = fanouts[1],
        size = payload::SIZE,
        repeat = s.repeat,
    );
    for &fanout in &fanouts {
        let rate = fixed_rate(fanout, s.smoke);
        body.push_str(&format!(
            "1→{fanout}:\n\n| system | delivered/s, full speed | p50 ms | p99 ms | p50 ms at {rate} msg/s | p99 ms at {rate} msg/s | not delivered | refused |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
        ));
        for r in results.iter().filter(|r| r.fanout == fanout) {
            let (full, fixed) = (Row::median(&r.full), Row::median(&r.fixed));
            body.push_str(&format!(
                "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |\n",
                r.system.name(),
                full.rate,
                full.p50_ms,
                full.p99_ms,
                fixed.p50_ms,
                fixed.p99_ms,
                full.missing + fixed.missing,
                full.errors + fixed.errors,
            ));
        }
        body.push('\n');
    }
    let rate_of = |system: System, fanout: u64| {
        results
            .iter()
            .find(|r| r.system == system && r.fanout == fanout)
            .map(|r| Row::median(&r.full).rate)
    };
    for peer in [System::Nats, System::Redis] {
        for &fanout in &fanouts {
            let Some(theirs) = rate_of(peer, fanout) else {
                continue;
            };
            let ours = rate_of(System::Hub(HubMode::Single), fanout).unwrap_or(0.0);
            let batched = rate_of(System::Hub(HubMode::Batched), fanout).unwrap_or(0.0);
            let transient = rate_of(System::Hub(HubMode::Transient), fanout).unwrap_or(0.0);
            let quiet = rate_of(System::Hub(HubMode::Quiet), fanout).unwrap_or(0.0);
            body.push_str(&format!(
                "Switchboard vs {} at 1→{fanout}: delivered/s {:.3}× theirs (batched publish: {:.3}×, transient publish: {:.3}×, transient quiet publish: {:.3}×).\n",
                peer.name(),
                ours / theirs.max(0.001),
                batched / theirs.max(0.001),
                transient / theirs.max(0.001),
                quiet / theirs.max(0.001),
            ));
        }
    }
    if rate_of(System::Nats, fanouts[0]).is_some() {
        for (mode, what) in [
            (HubMode::Single, "logged before delivery"),
            (HubMode::Transient, "transient, not logged like NATS core"),
            (
                HubMode::Quiet,
                "transient and quiet, neither logged nor answered like NATS core",
            ),
        ] {
            let verdicts: Vec<String> = fanouts
                .iter()
                .filter_map(|&f| {
                    let ratio = rate_of(System::Hub(mode), f)? / rate_of(System::Nats, f)?;
                    Some(format!(
                        "1→{f}: {ratio:.3}× ({})",
                        if ratio >= 0.5 { "met" } else { "NOT met" }
                    ))
                })
                .collect();
            body.push_str(&format!(
                "\nGoal (live delivery at least half of NATS core's rate, one event per publish, {what}): {}.\n",
                if s.smoke {
                    "not judged in smoke mode".to_owned()
                } else {
                    verdicts.join("; ")
                }
            ));
        }
    }
    for m in &missing_peers {
        body.push_str(&format!("\nMissing peer: {m}.\n"));
    }
    for r in &results {
        let name = r.system.name();
        for row in r.full.iter().chain(&r.fixed) {
            anyhow::ensure!(row.rate > 0.0, "{name} 1→{}: nothing delivered", r.fanout);
            if matches!(r.system, System::Hub(_)) {
                anyhow::ensure!(row.errors == 0, "{name}: {} publishes refused", row.errors);
            }
        }
    }
    Ok(Section {
        title: "pubsub".into(),
        body,
    })
}

/// Where a system listens.
#[derive(Clone, Copy)]
enum Target {
    Hub(SocketAddr),
    Nats(SocketAddr),
    Redis(SocketAddr),
}

async fn start(system: System, s: &Settings, fanout: u64) -> anyhow::Result<(Server, Target)> {
    Ok(match system {
        System::Hub(_) => {
            let hub = Hub::start(&s.hub_bin, &[]).await?;
            let addr = hub.addr;
            let server = Server {
                _hub: Some(hub),
                _peer: None,
            };
            (server, Target::Hub(addr))
        }
        System::Nats => {
            let (peer, client, _ws) = peers::nats().await?;
            let server = Server {
                _hub: None,
                _peer: Some(peer),
            };
            (server, Target::Nats(client))
        }
        System::Redis => {
            let clients = usize::try_from(fanout).unwrap_or(usize::MAX);
            let (peer, addr) = peers::redis(clients + 10).await?;
            let server = Server {
                _hub: None,
                _peer: Some(peer),
            };
            (server, Target::Redis(addr))
        }
    })
}

/// Deliveries so far, shared by the subscribers and the publisher.
struct Tally {
    delivered: AtomicU64,
    /// When the latest delivery arrived (ns since the payload base).
    last_ns: AtomicU64,
    /// The count at which a waiting publisher wants to be woken.
    wake_at: AtomicU64,
    wake: Notify,
}

impl Tally {
    fn new() -> Self {
        Self {
            delivered: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            wake_at: AtomicU64::new(u64::MAX),
            wake: Notify::new(),
        }
    }

    fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::SeqCst)
    }

    fn one(&self, now_ns: u64) {
        let d = self.delivered.fetch_add(1, Ordering::SeqCst) + 1;
        self.last_ns.fetch_max(now_ns, Ordering::Relaxed);
        if d >= self.wake_at.load(Ordering::SeqCst) {
            self.wake_at.store(u64::MAX, Ordering::SeqCst);
            self.wake.notify_one();
        }
    }

    /// Waits until `target` deliveries have arrived or `until`; whether
    /// they have.
    async fn wait_for(&self, target: u64, until: Instant) -> bool {
        loop {
            if self.delivered() >= target {
                return true;
            }
            self.wake_at.store(target, Ordering::SeqCst);
            // A delivery between the first check and the store above did
            // not see the new mark: check again before sleeping.
            if self.delivered() >= target {
                return true;
            }
            let woken = tokio::time::timeout_at(until.into(), self.wake.notified()).await;
            if woken.is_err() {
                return self.delivered() >= target;
            }
        }
    }
}

/// One phase on fresh connections: subscribe, publish for `duration`, wait
/// for every delivery (up to [`DRAIN`]).
async fn measure(
    target: Target,
    system: System,
    fanout: u64,
    pace: Pace,
    duration: Duration,
) -> anyhow::Result<Row> {
    let tally = Arc::new(Tally::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut subs = Vec::new();
    for _ in 0..fanout {
        subs.push(subscriber(target, tally.clone(), stop_rx.clone()).await?);
    }
    let mut publisher = Publisher::open(target, system).await?;
    let start_ns = payload::now_ns();
    let published = publish(&mut publisher, pace, fanout, &tally, duration).await?;
    let errors = publisher.finish().await?;
    let expected = published * fanout;
    tally.wait_for(expected, Instant::now() + DRAIN).await;
    let delivered = tally.delivered();
    let last_ns = tally.last_ns.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let mut latency = payload::histogram()?;
    for s in subs {
        let h = tokio::time::timeout(Duration::from_secs(10), s)
            .await
            .context("a subscriber did not stop in 10s")???;
        latency.add(&h)?;
    }
    let elapsed = Duration::from_nanos(last_ns.saturating_sub(start_ns));
    Ok(Row {
        rate: if elapsed.is_zero() {
            0.0
        } else {
            delivered as f64 / elapsed.as_secs_f64()
        },
        p50_ms: latency.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: latency.value_at_quantile(0.99) as f64 / 1000.0,
        missing: expected.saturating_sub(delivered),
        errors,
    })
}

/// Publishes for `duration`; the number of messages published.
async fn publish(
    p: &mut Publisher,
    pace: Pace,
    fanout: u64,
    tally: &Tally,
    duration: Duration,
) -> anyhow::Result<u64> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut seq = 0u64;
    let mut due: Vec<(u64, u64)> = Vec::new();
    // When the last send returned: a message due before then was held up
    // by the system (a send that blocked), one due after it only by the
    // publisher's timer (tokio's have millisecond resolution).
    let mut last_send_done = start;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        due.clear();
        match pace {
            Pace::Full => {
                let outstanding = (seq * fanout).saturating_sub(tally.delivered());
                let room = WINDOW.saturating_sub(outstanding.div_ceil(fanout));
                if room < REFILL {
                    let target = (seq * fanout).saturating_sub((WINDOW - REFILL) * fanout);
                    tally.wait_for(target, deadline).await;
                    continue;
                }
                let sent = payload::now_ns();
                due.extend((seq..seq + room.min(MAX_BURST)).map(|s| (s, sent)));
            }
            Pace::Rate(rate) => {
                let at = |s: u64| start + Duration::from_secs_f64(s as f64 / rate as f64);
                let next = at(seq);
                if next > now {
                    tokio::time::sleep_until(next.min(deadline).into()).await;
                    continue;
                }
                // Timed from the schedule when the system held the
                // publisher past it (no coordinated omission), from the
                // actual send when only the timer was late.
                let now_ns = payload::now_ns();
                let mut s = seq;
                while s < seq + MAX_BURST && at(s) <= now {
                    let sent = if at(s) < last_send_done {
                        payload::ns_at(at(s))
                    } else {
                        now_ns
                    };
                    due.push((s, sent));
                    s += 1;
                }
            }
        }
        p.send(&due).await?;
        last_send_done = Instant::now();
        seq += due.len() as u64;
    }
    Ok(seq)
}

/// Answers to the hub publisher's frames, read by its reader task.
struct Answers {
    /// Frames answered (published or refused).
    answered: watch::Sender<u64>,
    /// `pong`s received.
    pongs: watch::Sender<u64>,
    refused: AtomicU64,
    first_refusal: Mutex<Option<String>>,
}

/// The publishing side of one system.
enum Publisher {
    Hub {
        sink: SplitSink<Ws, Message>,
        batch: usize,
        /// How its frames publish.
        how: hubws::Publish,
        frames: u64,
        /// Prefix of this publisher's event ids: the hub deduplicates on
        /// (source, id), and phases on one hub must not repeat ids.
        run: u64,
        answers: Arc<Answers>,
        reader: JoinHandle<anyhow::Result<()>>,
    },
    Nats(async_nats::Client),
    Redis(redis::aio::MultiplexedConnection),
}

impl Publisher {
    async fn open(target: Target, system: System) -> anyhow::Result<Self> {
        Ok(match target {
            Target::Hub(addr) => {
                let (sink, mut stream) = hubws::connect(addr).await?.split();
                let answers = Arc::new(Answers {
                    answered: watch::Sender::new(0),
                    pongs: watch::Sender::new(0),
                    refused: AtomicU64::new(0),
                    first_refusal: Mutex::new(None),
                });
                let a = answers.clone();
                let reader = tokio::spawn(async move {
                    while let Some(frame) = stream.next().await {
                        let Message::Text(t) = frame? else { continue };
                        let f: hubws::Frame<'_> = serde_json::from_str(t.as_str())
                            .with_context(|| format!("unexpected frame {t}"))?;
                        match f.op {
                            "published" => {}
                            "pong" => {
                                a.pongs.send_modify(|n| *n += 1);
                                continue;
                            }
                            "error" => {
                                a.refused.fetch_add(1, Ordering::Relaxed);
                                if let Ok(mut first) = a.first_refusal.lock() {
                                    first.get_or_insert_with(|| t.as_str().to_owned());
                                }
                            }
                            _ => continue,
                        }
                        a.answered.send_modify(|n| *n += 1);
                    }
                    Ok(())
                });
                Self::Hub {
                    sink,
                    how: match system {
                        System::Hub(mode) => mode.publish(),
                        _ => hubws::Publish::Logged,
                    },
                    batch: if system == System::Hub(HubMode::Batched) {
                        HUB_BATCH
                    } else {
                        1
                    },
                    frames: 0,
                    run: payload::now_ns(),
                    answers,
                    reader,
                }
            }
            Target::Nats(addr) => Self::Nats(
                async_nats::connect(format!("nats://{addr}"))
                    .await
                    .context("connect to NATS")?,
            ),
            Target::Redis(addr) => {
                let client = redis::Client::open(format!("redis://{addr}/"))?;
                let cfg = redis::AsyncConnectionConfig::new()
                    .set_response_timeout(Some(DRAIN))
                    .set_connection_timeout(Some(Duration::from_secs(10)));
                Self::Redis(
                    client
                        .get_multiplexed_async_connection_with_config(&cfg)
                        .await
                        .context("connect to Redis")?,
                )
            }
        })
    }

    /// Sends messages `(seq, sent_ns)`.
    async fn send(&mut self, due: &[(u64, u64)]) -> anyhow::Result<()> {
        match self {
            Self::Hub {
                sink,
                batch,
                how,
                frames,
                run,
                ..
            } => {
                let events: Vec<String> = due
                    .iter()
                    .map(|&(seq, sent)| {
                        let id = format!("{run}-{seq}");
                        hubws::event(&id, SOURCE, TOPIC, &payload::make(sent, seq))
                    })
                    .collect();
                for chunk in events.chunks(*batch) {
                    sink.feed(hubws::publish(*frames, chunk, *how)).await?;
                    *frames += 1;
                }
                sink.flush().await?;
            }
            Self::Nats(client) => {
                for &(seq, sent) in due {
                    client
                        .publish(TOPIC, Bytes::from(payload::make(sent, seq)))
                        .await?;
                }
            }
            Self::Redis(con) => {
                let mut pipe = redis::pipe();
                for &(seq, sent) in due {
                    pipe.cmd("PUBLISH")
                        .arg(TOPIC)
                        .arg(payload::make(sent, seq).as_bytes())
                        .ignore();
                }
                pipe.query_async::<()>(con).await?;
            }
        }
        Ok(())
    }

    /// Waits until everything sent is answered (or flushed); the number of
    /// publishes refused.
    async fn finish(self) -> anyhow::Result<u64> {
        match self {
            Self::Hub {
                mut sink,
                frames,
                how,
                answers,
                reader,
                ..
            } => {
                // Every frame is answered (a quiet publish only if
                // refused) before the pong to a ping sent after them.
                sink.send(hubws::ping()).await?;
                let mut pongs = answers.pongs.subscribe();
                // Ends early (an error) if the reader stops.
                let _ = tokio::time::timeout(DRAIN, pongs.wait_for(|n| *n >= 1)).await;
                if reader.is_finished() {
                    reader.await??;
                } else {
                    reader.abort();
                }
                anyhow::ensure!(
                    *pongs.borrow() >= 1,
                    "the hub did not answer a ping sent after {frames} publish frames within {DRAIN:?}"
                );
                let n = *answers.answered.borrow();
                anyhow::ensure!(
                    how == hubws::Publish::Quiet || n >= frames,
                    "the hub answered {n} of {frames} publish frames"
                );
                let _ = sink.close().await;
                let refused = answers.refused.load(Ordering::Relaxed);
                if let Ok(first) = answers.first_refusal.lock()
                    && let Some(f) = first.as_ref()
                {
                    eprintln!("pubsub: the hub refused {refused} publish frames; first: {f}");
                }
                Ok(refused)
            }
            Self::Nats(client) => {
                tokio::time::timeout(DRAIN, client.flush())
                    .await
                    .context("NATS flush")??;
                Ok(0)
            }
            Self::Redis(_) => Ok(0),
        }
    }
}

/// Opens one subscriber, subscribed once this returns; its task counts
/// deliveries into `tally` and returns its latency histogram when `stop`
/// changes.
async fn subscriber(
    target: Target,
    tally: Arc<Tally>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<anyhow::Result<Histogram<u64>>>> {
    let mut h = payload::histogram()?;
    let record = move |h: &mut Histogram<u64>, payload: &[u8]| -> anyhow::Result<()> {
        let sent = payload::sent_ns(payload).context("a message without a bench payload")?;
        let now = payload::now_ns();
        payload::record_since(h, sent);
        tally.one(now);
        Ok(())
    };
    Ok(match target {
        Target::Hub(addr) => {
            let mut ws = hubws::subscriber(addr, TOPIC).await?;
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        frame = ws.next() => match frame {
                            Some(Ok(Message::Text(t))) => {
                                let f: hubws::Frame<'_> = serde_json::from_str(t.as_str())
                                    .with_context(|| format!("unexpected frame {t}"))?;
                                if f.op == "event" {
                                    let data = f.event.and_then(|e| e.data).unwrap_or_default();
                                    record(&mut h, data.as_bytes())?;
                                }
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => return Err(e.into()),
                            None => bail!("the hub closed a subscriber"),
                        },
                        _ = stop.changed() => {
                            let _ = tokio_tungstenite::WebSocketStream::close(&mut ws, None).await;
                            return Ok(h);
                        }
                    }
                }
            })
        }
        Target::Nats(addr) => {
            let client = async_nats::connect(format!("nats://{addr}"))
                .await
                .context("connect to NATS")?;
            let mut sub = client.subscribe(TOPIC).await?;
            // Once the server answers the flush, it has the subscription.
            client.flush().await?;
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        m = sub.next() => match m {
                            Some(m) => record(&mut h, &m.payload)?,
                            None => bail!("NATS ended a subscription"),
                        },
                        _ = stop.changed() => {
                            drop(client);
                            return Ok(h);
                        }
                    }
                }
            })
        }
        Target::Redis(addr) => {
            let client = redis::Client::open(format!("redis://{addr}/"))?;
            let mut ps = client
                .get_async_pubsub()
                .await
                .context("connect to Redis")?;
            // Answered once Redis has the subscription.
            ps.subscribe(TOPIC).await?;
            let mut messages = ps.into_on_message();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        m = messages.next() => match m {
                            Some(m) => record(&mut h, m.get_payload_bytes())?,
                            None => bail!("Redis ended a subscription"),
                        },
                        _ = stop.changed() => return Ok(h),
                    }
                }
            })
        }
    })
}
