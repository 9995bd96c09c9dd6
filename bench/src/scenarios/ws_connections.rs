//! `ws-connections`: open N WebSocket connections, each subscribed to one
//! topic, hold them, publish one event, and time its arrival at all N.
//!
//! Reported: connections held, connect rate (connect + subscribe), the
//! hub's RSS per connection (RSS after subscribing minus RSS before, over
//! N), the time for one event to reach every connection, and connections
//! dropped during the hold. Connections come from several loopback source
//! addresses (127.0.0.1, 127.0.0.2, …, 1,000 each) so client ports cannot
//! run out.
//!
//! The open-file limit bounds N: each connection is one descriptor in the
//! hub and one here. Both processes raise their soft limit to the hard
//! limit; N is capped below the lower of the two, and the report says so.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::Settings;
use crate::hub::Hub;
use crate::report::Section;

/// Connections per loopback source address. Binding before connecting
/// makes the kernel search for a free port per source address; keeping
/// each address lightly used keeps that search short.
const PER_SOURCE: usize = 1_000;
/// Connects in flight at once (the listen backlog is finite).
const CONNECTING: usize = 256;
/// Descriptors kept free in each process for everything else.
const SPARE_FDS: u64 = 200;

pub(crate) async fn run(s: &Settings) -> anyhow::Result<Section> {
    let limit = rlimit::increase_nofile_limit(u64::MAX).context("raise the open-file limit")?;
    let cap = usize::try_from(limit.saturating_sub(SPARE_FDS)).unwrap_or(usize::MAX);
    let n = s.connections.min(cap);
    let hub = Hub::start(&s.hub_bin, &[]).await?;
    let rss_before = hub.rss_kib().unwrap_or(0);

    let arrived = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(CONNECTING));
    let url = format!("ws://{}/ws", hub.addr);
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
        let (url, hub_addr) = (url.clone(), hub.addr);
        let (arrived, dropped, stop) = (arrived.clone(), dropped.clone(), stop_rx.clone());
        opening.push(tokio::spawn(async move {
            let ws = open(source, hub_addr, &url).await;
            drop(permit);
            tokio::spawn(hold(ws?, arrived, dropped, stop));
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
    let rss_after = hub.rss_kib().unwrap_or(0);

    // Hold, then broadcast one event to every subscriber.
    tokio::time::sleep(s.hold).await;
    let dropped_in_hold = dropped.load(Ordering::Relaxed);
    let publish_at = Instant::now();
    crate::load::send_all(
        hub.addr,
        [(
            hyper::Method::POST,
            "/api/v1/events".to_owned(),
            Some(bytes::Bytes::from_static(
                br#"{"topic": "bench.broadcast", "data": {"hello": "everyone"}}"#,
            )),
        )],
    )
    .await?;
    let deadline = Duration::from_secs(60);
    while arrived.load(Ordering::Relaxed) < held && publish_at.elapsed() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let reached = arrived.load(Ordering::Relaxed);
    let broadcast = publish_at.elapsed();
    let _ = stop_tx.send(true);

    let per_conn = if held > 0 {
        (rss_after.saturating_sub(rss_before)) as f64 / held as f64
    } else {
        0.0
    };
    let mut body = String::new();
    if n < s.connections {
        body.push_str(&format!(
            "Asked for {} connections; the open-file limit here is {limit} per process \
             (the hard limit cannot be raised on this machine), so {n} were opened.\n\n",
            s.connections
        ));
    }
    body.push_str(&format!(
        "| figure | Switchboard |\n|---|---:|\n\
         | connections held | {held} of {n} |\n\
         | connect + subscribe rate | {:.0}/s |\n\
         | hub RSS per connection | {per_conn:.1} KiB |\n\
         | hub RSS with all connections | {:.1} MiB |\n\
         | one event reaching all | {:.0} ms ({reached} of {held} reached) |\n\
         | dropped during a {:?} hold | {dropped_in_hold} |\n\n\
         Peers (NATS WebSocket, Redis SUBSCRIBE) are not measured in this scenario yet.\n",
        held as f64 / connect_time.as_secs_f64(),
        rss_after as f64 / 1024.0,
        broadcast.as_secs_f64() * 1000.0,
        s.hold,
    ));
    if let Some(e) = first_error {
        body.push_str(&format!("\nFirst connection error: {e}\n"));
    }
    anyhow::ensure!(held > 0, "no connection could be opened");
    anyhow::ensure!(
        reached == held,
        "the broadcast reached {reached} of {held} connections"
    );
    Ok(Section {
        title: "ws-connections".into(),
        body,
    })
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn open(source: Ipv4Addr, hub: SocketAddr, url: &str) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    // Ports still in TIME_WAIT from an earlier run may be bound again.
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from((source, 0)))?;
    let tcp = socket.connect(hub).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let mut cfg = WebSocketConfig::default();
    cfg.read_buffer_size = 4096;
    cfg.write_buffer_size = 0;
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(cfg))
        .await
        .context("websocket handshake")?;
    ws.send(Message::Text(
        r#"{"op":"subscribe","id":"s","topics":["bench.broadcast"]}"#.into(),
    ))
    .await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str().contains("\"subscribed\"") => return Ok(ws),
            Some(Ok(Message::Text(t))) => anyhow::bail!("unexpected answer: {t}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("closed before subscribing"),
        }
    }
}

/// Reads until the broadcast arrives (answering pings as it reads), then
/// waits to be told to stop.
async fn hold(
    mut ws: Ws,
    arrived: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(t))) if t.as_str().contains("\"op\":\"event\"") => {
                    arrived.fetch_add(1, Ordering::Relaxed);
                }
                Some(Ok(_)) => {}
                _ => {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
            _ = stop.changed() => {
                let _ = ws.close(None).await;
                return;
            }
        }
    }
}
