//! `ws-connections`: open N subscriber connections, each subscribed to one
//! topic, hold them, publish one event, and time its arrival at all N —
//! against the hub (WebSocket), NATS (WebSocket) and Redis (SUBSCRIBE over
//! TCP), one after the other in the same run, with the same client pattern.
//!
//! Reported per system: connections held, connect rate (connect +
//! subscribe), the server's RSS per connection (RSS after subscribing minus
//! RSS before, over N), the time for one event to reach every connection,
//! and connections dropped during the hold. Connections come from several
//! loopback source addresses (127.0.0.1, 127.0.0.2, …, 1,000 each) so
//! client ports cannot run out.
//!
//! The open-file limit bounds N: each connection is one descriptor in the
//! server and one here. Every process raises its soft limit to the hard
//! limit; N is capped below it, and the report says so.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::Settings;
use crate::hub::Hub;
use crate::peers;
use crate::report::Section;

/// Connections per loopback source address. Binding before connecting
/// makes the kernel search for a free port per source address; keeping
/// each address lightly used keeps that search short.
const PER_SOURCE: usize = 1_000;
/// Connects in flight at once (the listen backlog is finite).
const CONNECTING: usize = 256;
/// Descriptors kept free in each process for everything else.
const SPARE_FDS: u64 = 200;
const TOPIC: &str = "bench.broadcast";

/// The system under test and how to reach it.
#[derive(Clone, Copy)]
enum Target {
    Switchboard { addr: SocketAddr },
    Nats { ws: SocketAddr, client: SocketAddr },
    Redis { addr: SocketAddr },
}

/// What one system did.
struct Figures {
    name: &'static str,
    held: usize,
    connect_rate: f64,
    kib_per_conn: f64,
    rss_mib: f64,
    broadcast_ms: f64,
    reached: usize,
    dropped: usize,
    first_error: Option<String>,
}

pub(crate) async fn run(s: &Settings) -> anyhow::Result<Section> {
    let limit = rlimit::increase_nofile_limit(u64::MAX).context("raise the open-file limit")?;
    let cap = usize::try_from(limit.saturating_sub(SPARE_FDS)).unwrap_or(usize::MAX);
    let n = s.connections.min(cap);
    let mut rows = Vec::new();
    let mut missing = Vec::new();

    let hub = Hub::start(&s.hub_bin, &[]).await?;
    let pid_rss = || hub.rss_kib();
    rows.push(
        measure(
            "Switchboard",
            Target::Switchboard { addr: hub.addr },
            n,
            s.hold,
            &pid_rss,
        )
        .await?,
    );
    drop(hub);

    if peers::installed("nats-server") {
        let (peer, client, ws) = peers::nats().await?;
        let rss = || peer.rss_kib();
        rows.push(measure(peer.name, Target::Nats { ws, client }, n, s.hold, &rss).await?);
    } else {
        missing.push("NATS (nats-server is not installed)");
    }
    if peers::installed("redis-server") {
        let (peer, addr) = peers::redis(n).await?;
        let rss = || peer.rss_kib();
        rows.push(measure(peer.name, Target::Redis { addr }, n, s.hold, &rss).await?);
    } else {
        missing.push("Redis (redis-server is not installed)");
    }

    let mut body = String::new();
    if n < s.connections {
        body.push_str(&format!(
            "Asked for {} connections; the open-file limit here is {limit} per process \
             (the hard limit cannot be raised on this machine), so {n} were opened.\n\n",
            s.connections
        ));
    }
    body.push_str("| figure |");
    for r in &rows {
        body.push_str(&format!(" {} |", r.name));
    }
    body.push_str("\n|---|");
    body.push_str(&"---:|".repeat(rows.len()));
    body.push('\n');
    let line = |label: &str, f: &dyn Fn(&Figures) -> String| {
        let mut l = format!("| {label} |");
        for r in &rows {
            l.push_str(&format!(" {} |", f(r)));
        }
        l.push('\n');
        l
    };
    body.push_str(&line("connections held", &|r| format!("{} of {n}", r.held)));
    body.push_str(&line("connect + subscribe rate", &|r| {
        format!("{:.0}/s", r.connect_rate)
    }));
    body.push_str(&line("server RSS per connection", &|r| {
        format!("{:.1} KiB", r.kib_per_conn)
    }));
    body.push_str(&line("server RSS with all connections", &|r| {
        format!("{:.1} MiB", r.rss_mib)
    }));
    body.push_str(&line("one event reaching all", &|r| {
        format!("{:.0} ms ({} reached)", r.broadcast_ms, r.reached)
    }));
    body.push_str(&line(
        &format!("dropped during a {:?} hold", s.hold),
        &|r| r.dropped.to_string(),
    ));
    if let (Some(sb), true) = (rows.first(), rows.len() > 1) {
        body.push('\n');
        for peer in &rows[1..] {
            body.push_str(&format!(
                "Switchboard vs {}: memory per connection {:.2}× theirs, broadcast time {:.2}× theirs.\n",
                peer.name,
                sb.kib_per_conn / peer.kib_per_conn.max(0.001),
                sb.broadcast_ms / peer.broadcast_ms.max(0.001),
            ));
        }
    }
    for m in &missing {
        body.push_str(&format!("\nMissing peer: {m}.\n"));
    }
    for r in &rows {
        if let Some(e) = &r.first_error {
            body.push_str(&format!("\n{}: first connection error: {e}\n", r.name));
        }
    }
    for r in &rows {
        anyhow::ensure!(r.held > 0, "{}: no connection could be opened", r.name);
        anyhow::ensure!(
            r.reached == r.held,
            "{}: the broadcast reached {} of {} connections",
            r.name,
            r.reached,
            r.held
        );
    }
    Ok(Section {
        title: "ws-connections".into(),
        body,
    })
}

async fn measure(
    name: &'static str,
    target: Target,
    n: usize,
    hold_for: Duration,
    rss: &dyn Fn() -> Option<u64>,
) -> anyhow::Result<Figures> {
    let rss_before = rss().unwrap_or(0);
    let arrived = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(CONNECTING));
    let start = Instant::now();
    let mut opening = Vec::with_capacity(n);
    for i in 0..n {
        let permit = gate.clone().acquire_owned().await?;
        let k = i / PER_SOURCE;
        let source = Ipv4Addr::new(
            127,
            0,
            u8::try_from(k / 250).unwrap_or(255),
            u8::try_from(1 + k % 250).unwrap_or(255),
        );
        let (arrived, dropped, stop) = (arrived.clone(), dropped.clone(), stop_rx.clone());
        opening.push(tokio::spawn(async move {
            let conn = Conn::open(target, source).await;
            drop(permit);
            tokio::spawn(conn?.hold(arrived, dropped, stop));
            anyhow::Ok(())
        }));
    }
    let mut failed = 0usize;
    let mut first_error = None;
    for t in opening {
        if let Err(e) = t.await? {
            failed += 1;
            first_error.get_or_insert(format!("{e:#}"));
        }
    }
    let connect_time = start.elapsed();
    let held = n - failed;
    let rss_after = rss().unwrap_or(0);

    tokio::time::sleep(hold_for).await;
    let dropped_in_hold = dropped.load(Ordering::Relaxed);
    let publish_at = Instant::now();
    broadcast(target).await?;
    let deadline = Duration::from_secs(60);
    while arrived.load(Ordering::Relaxed) < held && publish_at.elapsed() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let broadcast_ms = publish_at.elapsed().as_secs_f64() * 1000.0;
    let reached = arrived.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    // Let the clients close before the next system is measured.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(Figures {
        name,
        held,
        connect_rate: held as f64 / connect_time.as_secs_f64(),
        kib_per_conn: if held > 0 {
            rss_after.saturating_sub(rss_before) as f64 / held as f64
        } else {
            0.0
        },
        rss_mib: rss_after as f64 / 1024.0,
        broadcast_ms,
        reached,
        dropped: dropped_in_hold,
        first_error,
    })
}

/// Publishes one event on the target, the way its users would.
async fn broadcast(target: Target) -> anyhow::Result<()> {
    match target {
        Target::Switchboard { addr } => {
            crate::load::send_all(
                addr,
                [(
                    hyper::Method::POST,
                    "/api/v1/events".to_owned(),
                    Some(bytes::Bytes::from(format!(
                        r#"{{"topic": "{TOPIC}", "data": {{"hello": "everyone"}}}}"#
                    ))),
                )],
            )
            .await?;
        }
        Target::Nats { client, .. } => {
            let mut tcp = TcpStream::connect(client).await?;
            tcp.write_all(
                format!("CONNECT {{\"verbose\":false}}\r\nPUB {TOPIC} 5\r\nhello\r\nPING\r\n")
                    .as_bytes(),
            )
            .await?;
            read_until(&mut tcp, b"PONG").await?;
        }
        Target::Redis { addr } => {
            let mut tcp = TcpStream::connect(addr).await?;
            tcp.write_all(&resp(&["PUBLISH", TOPIC, "hello"])).await?;
            read_until(&mut tcp, b":").await?;
        }
    }
    Ok(())
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

async fn read_until(tcp: &mut TcpStream, needle: &[u8]) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while !buf.windows(needle.len()).any(|w| w == needle) {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk))
            .await
            .context("no answer in 10s")??;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

type Ws = WebSocketStream<TcpStream>;

/// One subscriber connection.
enum Conn {
    /// Switchboard or NATS (boxed: a WebSocket stream is large).
    Ws {
        ws: Box<Ws>,
        nats: bool,
    },
    Redis(TcpStream),
}

async fn tcp_from(source: Ipv4Addr, to: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    // Ports still in TIME_WAIT from an earlier run may be bound again.
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from((source, 0)))?;
    let tcp = socket.connect(to).await.context("connect")?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

async fn ws_from(source: Ipv4Addr, to: SocketAddr, path: &str) -> anyhow::Result<Ws> {
    let tcp = tcp_from(source, to).await?;
    let mut cfg = WebSocketConfig::default();
    cfg.read_buffer_size = 4096;
    cfg.write_buffer_size = 0;
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(format!("ws://{to}{path}"), tcp, Some(cfg))
            .await
            .context("websocket handshake")?;
    Ok(ws)
}

fn frame_text(m: &Message) -> Option<&[u8]> {
    match m {
        Message::Text(t) => Some(t.as_bytes()),
        Message::Binary(b) => Some(b),
        _ => None,
    }
}

impl Conn {
    async fn open(target: Target, source: Ipv4Addr) -> anyhow::Result<Self> {
        match target {
            Target::Switchboard { addr } => {
                let path = format!("/ws?access_token={}", crate::hub::TOKEN);
                let mut ws = ws_from(source, addr, &path).await?;
                ws.send(Message::Text(
                    format!(r#"{{"op":"subscribe","id":"s","topics":["{TOPIC}"]}}"#).into(),
                ))
                .await?;
                Self::wait_ws(&mut ws, b"\"subscribed\"").await?;
                Ok(Self::Ws {
                    ws: Box::new(ws),
                    nats: false,
                })
            }
            Target::Nats { ws: addr, .. } => {
                let mut ws = ws_from(source, addr, "/").await?;
                ws.send(Message::Binary(
                    format!(
                        "CONNECT {{\"verbose\":false,\"protocol\":1}}\r\nSUB {TOPIC} 1\r\nPING\r\n"
                    )
                    .into_bytes()
                    .into(),
                ))
                .await?;
                Self::wait_ws(&mut ws, b"PONG").await?;
                Ok(Self::Ws {
                    ws: Box::new(ws),
                    nats: true,
                })
            }
            Target::Redis { addr } => {
                let mut tcp = tcp_from(source, addr).await?;
                tcp.write_all(&resp(&["SUBSCRIBE", TOPIC])).await?;
                read_until(&mut tcp, b"subscribe").await?;
                Ok(Self::Redis(tcp))
            }
        }
    }

    async fn wait_ws(ws: &mut Ws, needle: &[u8]) -> anyhow::Result<()> {
        loop {
            match ws.next().await {
                Some(Ok(m)) => {
                    if frame_text(&m).is_some_and(|t| t.windows(needle.len()).any(|w| w == needle))
                    {
                        return Ok(());
                    }
                }
                Some(Err(e)) => return Err(e.into()),
                None => bail!("closed before subscribing"),
            }
        }
    }

    /// Reads until the broadcast arrives (answering pings), then waits to
    /// be told to stop.
    async fn hold(
        self,
        arrived: Arc<AtomicUsize>,
        dropped: Arc<AtomicUsize>,
        mut stop: watch::Receiver<bool>,
    ) {
        let event: &[u8] = match &self {
            Self::Ws { nats: false, .. } => b"\"op\":\"event\"",
            Self::Ws { nats: true, .. } => b"MSG ",
            Self::Redis(_) => b"message",
        };
        let seen = |buf: &[u8]| buf.windows(event.len()).any(|w| w == event);
        match self {
            Self::Ws { mut ws, nats } => loop {
                tokio::select! {
                    frame = ws.next() => match frame {
                        Some(Ok(m)) => {
                            let Some(t) = frame_text(&m) else { continue };
                            if seen(t) {
                                arrived.fetch_add(1, Ordering::Relaxed);
                            }
                            if nats && t.starts_with(b"PING") {
                                let _ = ws.send(Message::Binary(b"PONG\r\n".to_vec().into())).await;
                            }
                        }
                        _ => {
                            dropped.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    },
                    _ = stop.changed() => {
                        let _ = WebSocketStream::close(&mut ws, None).await;
                        return;
                    }
                }
            },
            Self::Redis(mut tcp) => {
                let mut buf = [0u8; 1024];
                loop {
                    tokio::select! {
                        n = tcp.read(&mut buf) => match n {
                            Ok(n) if n > 0 => {
                                if seen(&buf[..n]) {
                                    arrived.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            _ => {
                                dropped.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                        },
                        _ = stop.changed() => return,
                    }
                }
            }
        }
    }
}
