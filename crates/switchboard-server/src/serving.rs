//! The threads that serve connections.
//!
//! One accept loop, on the hub's main runtime, hands each new connection
//! to the serving thread with the fewest open (ties to the lowest index).
//! Each serving thread runs a runtime of its own (tokio's current-thread
//! runtime) and owns every connection handed to it: the TLS handshake,
//! the connection's requests, the tasks they spawn and the connections to
//! gateway instances they make all run on that thread, as nginx's and
//! Envoy's workers do. Nothing moves between threads mid-request, so a
//! request pays for no hand-off, no work stealing and no memory freed on
//! another core than the one that allocated it. The background workers
//! (liveness sweeps, dispatch, consumer groups, webhooks) stay on the main
//! runtime.
//!
//! A serving thread outlives its connections: its runtime keeps driving
//! what was made on it (a timer, a socket some other thread holds) until
//! [`Serving`] is dropped, after the store has closed.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use axum::serve::Listener;
use switchboard_api::ClientAddr;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::tls;

type App = switchboard_api::Front;

/// A connection on its way to a serving thread.
type Handoff = (std::net::TcpStream, SocketAddr);

/// The serving threads of a hub.
pub(crate) struct Serving {
    /// Each thread's end, until it is seen.
    served: Vec<Option<oneshot::Receiver<io::Result<()>>>>,
    /// The first error a thread ended with.
    error: Option<io::Error>,
    /// Each thread's open connections.
    open: Vec<Arc<AtomicUsize>>,
    abort: CancellationToken,
    release: CancellationToken,
}

impl Serving {
    /// Starts `threads` serving threads and the accept loop on `listener`;
    /// when `stop` is cancelled, accepting stops and each thread ends
    /// once its connections have finished.
    pub(crate) fn start(
        listener: TcpListener,
        threads: usize,
        app: &App,
        tls: Option<&Arc<rustls::ServerConfig>>,
        stop: &CancellationToken,
    ) -> io::Result<Self> {
        let mut serving = Self {
            served: Vec::with_capacity(threads),
            error: None,
            open: Vec::with_capacity(threads),
            abort: CancellationToken::new(),
            release: CancellationToken::new(),
        };
        let local = listener.local_addr()?;
        let mut handoffs = Vec::with_capacity(threads);
        for index in 0..threads.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            let open = Arc::new(AtomicUsize::new(0));
            let thread = Thread {
                index,
                handed: Handed {
                    rx,
                    open: open.clone(),
                    local,
                },
                app: app.clone(),
                tls: tls.cloned(),
                stop: stop.clone(),
                abort: serving.abort.clone(),
                release: serving.release.clone(),
            };
            serving.served.push(Some(thread.spawn()?));
            serving.open.push(open.clone());
            handoffs.push((tx, open));
        }
        tokio::spawn(accept(listener, handoffs, stop.clone()));
        Ok(serving)
    }

    /// Waits until every thread has stopped serving; the first error any
    /// of them met. Cancel-safe: waiting again goes on where it stopped.
    pub(crate) async fn finished(&mut self) -> io::Result<()> {
        for slot in &mut self.served {
            if let Some(rx) = slot {
                let r = rx
                    .await
                    .unwrap_or_else(|_| Err(io::Error::other("a serving thread ended early")));
                *slot = None;
                if let (Err(e), None) = (r, &self.error) {
                    self.error = Some(e);
                }
            }
        }
        self.error.take().map_or(Ok(()), Err)
    }

    /// Stops waiting for the connections still open: they are closed
    /// when the serving threads end, as [`Serving`] is dropped.
    pub(crate) fn abort(&self) {
        self.abort.cancel();
    }

    /// How many connections each thread has open.
    #[cfg(test)]
    fn open_connections(&self) -> Vec<usize> {
        self.open
            .iter()
            .map(|o| o.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.abort.cancel();
        self.release.cancel();
    }
}

/// Accepts until `stop`, handing each connection to the thread with the
/// fewest open. A thread that has stopped taking connections (it cannot
/// have, short of a bug) is left out, and the others go on.
async fn accept(
    listener: TcpListener,
    mut threads: Vec<(mpsc::UnboundedSender<Handoff>, Arc<AtomicUsize>)>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (tcp, addr) = match accepted {
            Ok(a) => a,
            Err(error) => {
                tls::accept_failed(error).await;
                continue;
            }
        };
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        // Off this runtime's reactor, onto the chosen thread's.
        let mut handoff = match tcp.into_std() {
            Ok(t) => (t, addr),
            Err(error) => {
                tracing::warn!(%error, %addr, "could not hand a connection over; closed");
                continue;
            }
        };
        loop {
            let Some(i) = (0..threads.len()).min_by_key(|&i| threads[i].1.load(Ordering::Relaxed))
            else {
                tracing::error!("no serving thread is left; the hub no longer accepts connections");
                return;
            };
            let (tx, open) = &threads[i];
            open.fetch_add(1, Ordering::Relaxed);
            match tx.send(handoff) {
                Ok(()) => break,
                Err(mpsc::error::SendError(back)) => {
                    open.fetch_sub(1, Ordering::Relaxed);
                    tracing::error!("a serving thread stopped taking connections; left out");
                    threads.swap_remove(i);
                    handoff = back;
                }
            }
        }
    }
}

struct Thread {
    index: usize,
    handed: Handed,
    app: App,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: CancellationToken,
    abort: CancellationToken,
    release: CancellationToken,
}

impl Thread {
    fn spawn(self) -> io::Result<oneshot::Receiver<io::Result<()>>> {
        let (tx, rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("http-{}", self.index))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                switchboard_gateway::set_serving_thread(self.index);
                runtime.block_on(async move {
                    // Answers from the store's threads wake this thread's
                    // tasks through it, once per batch.
                    tokio::spawn(switchboard_core::wake::relay());
                    let release = self.release.clone();
                    let _ = tx.send(self.serve().await);
                    release.cancelled().await;
                });
            })?;
        Ok(rx)
    }

    async fn serve(self) -> io::Result<()> {
        let stop = self.stop.clone().cancelled_owned();
        let serve = async {
            match self.tls {
                Some(tls) => {
                    let listener =
                        tls::TlsListener::start(self.handed, tls, self.stop.child_token());
                    axum::serve(listener, self.app)
                        .with_graceful_shutdown(stop)
                        .await
                }
                None => {
                    axum::serve(self.handed, self.app)
                        .with_graceful_shutdown(stop)
                        .await
                }
            }
        };
        tokio::select! {
            r = serve => r,
            () = self.abort.cancelled() => Ok(()),
        }
    }
}

/// The connections handed to one serving thread.
pub(crate) struct Handed {
    rx: mpsc::UnboundedReceiver<Handoff>,
    open: Arc<AtomicUsize>,
    local: SocketAddr,
}

impl Listener for Handed {
    type Io = Held;
    type Addr = ClientAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Some((tcp, addr)) = self.rx.recv().await else {
                // The accept loop stopped (shutdown): wait for the server
                // to stop asking.
                return std::future::pending().await;
            };
            match TcpStream::from_std(tcp) {
                Ok(tcp) => {
                    let held = Held {
                        open: self.open.clone(),
                        tcp,
                    };
                    return (held, ClientAddr::plain(addr));
                }
                Err(error) => {
                    self.open.fetch_sub(1, Ordering::Relaxed);
                    tracing::warn!(%error, %addr, "could not take a connection over; closed");
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(ClientAddr::plain(self.local))
    }
}

/// A served connection, counted against its thread's load while open.
pub(crate) struct Held {
    open: Arc<AtomicUsize>,
    tcp: TcpStream,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for Held {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Held {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Asks for `/` on `conn` and returns the body: the name of the
    /// thread that answered.
    async fn answered_by(conn: &mut TcpStream) -> String {
        conn.write_all(b"GET / HTTP/1.1\r\nhost: hub\r\n\r\n")
            .await
            .expect("write");
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 1024];
            let n = conn.read(&mut chunk).await.expect("read");
            assert!(n > 0, "the connection closed");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                continue;
            };
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|n| n.trim().parse().ok())
                .expect("a content-length");
            if body.len() >= length {
                return body.to_owned();
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_are_spread_over_the_threads_and_stay_on_theirs() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().route(
            "/",
            get(|| async { std::thread::current().name().unwrap_or("?").to_owned() }),
        );
        let app = switchboard_api::Front::from_router(app);
        let stop = CancellationToken::new();
        let mut serving = Serving::start(listener, 2, &app, None, &stop).expect("start");

        // Four connections opened one after the other: each goes to the
        // thread with the fewest, and every request on it is served there.
        let mut conns = Vec::new();
        for _ in 0..4 {
            conns.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let mut per_thread = BTreeMap::new();
        for conn in &mut conns {
            let first = answered_by(conn).await;
            for _ in 0..5 {
                assert_eq!(answered_by(conn).await, first);
            }
            *per_thread.entry(first).or_insert(0) += 1;
        }
        assert_eq!(
            per_thread,
            BTreeMap::from([("http-0".to_owned(), 2), ("http-1".to_owned(), 2)])
        );

        assert_eq!(serving.open_connections(), [2, 2]);

        // Connections that close are counted off their thread, and the
        // next ones go where fewer are open: close both of one thread's.
        let first = answered_by(&mut conns[0]).await;
        let (mut mine, mut others) = (Vec::new(), Vec::new());
        for mut c in conns {
            if answered_by(&mut c).await == first {
                mine.push(c);
            } else {
                others.push(c);
            }
        }
        assert_eq!((mine.len(), others.len()), (2, 2));
        drop(others);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while serving.open_connections().iter().sum::<usize>() != 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "closed connections still counted: {:?}",
                serving.open_connections()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut next = Vec::new();
        for _ in 0..2 {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            assert_ne!(
                answered_by(&mut c).await,
                first,
                "went to the fuller thread"
            );
            next.push(c);
        }
        assert_eq!(serving.open_connections(), [2, 2]);

        stop.cancel();
        drop((mine, next));
        tokio::time::timeout(Duration::from_secs(10), serving.finished())
            .await
            .expect("the threads finished after the stop")
            .expect("served without error");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_the_grace_period_the_wait_for_slow_requests_ends() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (started, mut slow_started) = mpsc::unbounded_channel();
        let app = axum::Router::new()
            .route("/", get(|| async { "fast" }))
            .route(
                "/slow",
                get(move || async move {
                    let _ = started.send(());
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    "slow"
                }),
            );
        let app = switchboard_api::Front::from_router(app);
        let stop = CancellationToken::new();
        let mut serving = Serving::start(listener, 2, &app, None, &stop).expect("start");

        // One connection per thread; the second thread's is kept busy.
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        let mut busy = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(answered_by(&mut idle).await, "fast");
        busy.write_all(b"GET /slow HTTP/1.1\r\nhost: hub\r\n\r\n")
            .await
            .expect("write");
        tokio::time::timeout(Duration::from_secs(10), slow_started.recv())
            .await
            .expect("the slow request started")
            .expect("its handler");
        assert_eq!(serving.open_connections(), [1, 1]);

        // Stopping drains the first thread; the second waits on its
        // request, so the wait outlasts a grace period.
        stop.cancel();
        let waited = tokio::time::timeout(Duration::from_millis(300), serving.finished()).await;
        assert!(waited.is_err(), "finished with a request in flight");
        // The grace period is over: waiting again ends once told not to
        // wait for the slow request.
        serving.abort();
        tokio::time::timeout(Duration::from_secs(10), serving.finished())
            .await
            .expect("finished after the abort")
            .expect("served without error");
        drop((idle, busy));
    }
}
