//! Plain HTTP/1.1 connections to an instance, each driven by the task of
//! the request that uses it.
//!
//! hyper's pooled client gives every connection a task of its own: each
//! request is handed to that task over a channel and its answer comes back
//! over another, and a further task is spawned per request to put the
//! connection back in the pool once it is free — wake-ups across tasks,
//! often across threads, for every request. Here a connection is a plain
//! value: a request takes one from its instance's idle list (or makes
//! one), polls it beside its own future while the request is written and
//! the answer read, and its answer's body polls it until the body ends;
//! then the connection goes back to the list. A connection belongs to one
//! request or to the idle list, never to two at once, and one whose
//! exchange was cut short (an error, a timeout, a body dropped half read)
//! is closed, never reused.
//!
//! A connection the instance closed while it was idle shows when it is
//! next taken: hyper reads the end of stream and hands the request back
//! unsent, and it goes out on another connection. Connections idle for
//! longer than the pool's idle timeout, or closed by the instance, are
//! closed when next taken or when discovery prunes the pools (every
//! resync).
//!
//! Used for `http` instances spoken to in HTTP/1.1; HTTP/2, `https` and
//! protocol upgrades use hyper's pooled client (see `proxy`).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::ProxyBody;

type Io = TokioIo<TcpStream>;

/// One connection: the handle requests are sent on, and the connection's
/// future, polled by whoever holds it. `None` once that future has ended
/// (the connection is closed; it must not be polled again).
struct Conn {
    send: http1::SendRequest<ProxyBody>,
    conn: Option<http1::Connection<Io, ProxyBody>>,
}

impl Conn {
    /// Polls the connection: it writes what is queued and reads what has
    /// come. When it ends, it is dropped, which hands back any request it
    /// did not start to write.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(conn) = &mut self.conn
            && Pin::new(conn).poll(cx).is_ready()
        {
            self.conn = None;
        }
    }

    fn open(&self) -> bool {
        self.conn.is_some() && !self.send.is_closed()
    }
}

/// An idle connection. Connections are boxed: a connection's state is
/// large, and it moves from the idle list to a request, to its answer's
/// body and back for every request.
struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

/// An instance's idle connections, most recently used last, in one list
/// per serving thread (see [`crate::serving_thread`]) and one for every
/// other thread: a connection is driven by the reactor of the runtime
/// that made it, so it goes back to the list of the thread that took it.
#[derive(Clone)]
pub(crate) struct ConnPool(Arc<[Mutex<Vec<Idle>>]>);

impl Default for ConnPool {
    fn default() -> Self {
        Self(
            (0..=crate::serving_threads())
                .map(|_| Mutex::default())
                .collect(),
        )
    }
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle: usize = (0..self.0.len()).map(|i| self.shard(i).len()).sum();
        f.debug_struct("ConnPool").field("idle", &idle).finish()
    }
}

/// How a pool keeps and makes connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolLimits {
    pub(crate) connect_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_idle: usize,
}

/// Why a request got no answer.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be made; the request was not sent.
    Connect(String),
    /// Connecting took longer than the connect timeout; the request was
    /// not sent.
    ConnectTimeout,
    /// The exchange failed after the request was (maybe) sent.
    Broken(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(why) => write!(f, "cannot connect: {why}"),
            SendError::ConnectTimeout => f.write_str("the connect timeout ran out"),
            SendError::Broken(why) => f.write_str(why),
        }
    }
}

impl ConnPool {
    fn shard(&self, i: usize) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.0[i % self.0.len()]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.shard(crate::serving_thread())
    }

    /// The most recently used idle connection that is still fresh;
    /// connections past the idle timeout are closed on the way.
    fn take(&self, limits: &PoolLimits) -> Option<Box<Conn>> {
        let now = Instant::now();
        let mut stale = Vec::new();
        let found = {
            let mut idle = self.lock();
            loop {
                match idle.pop() {
                    Some(i) if now.duration_since(i.since) < limits.idle_timeout => {
                        break Some(i.conn);
                    }
                    Some(i) => stale.push(i),
                    None => break None,
                }
            }
        };
        drop(stale);
        found
    }

    /// Closes the connections idle for longer than `idle_timeout`, and
    /// those the instance has closed (each is polled once to find out).
    pub(crate) fn prune(&self, idle_timeout: Duration) {
        let now = Instant::now();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut gone = Vec::new();
        for shard in 0..self.0.len() {
            let mut idle = self.shard(shard);
            for mut i in std::mem::take(&mut *idle) {
                i.conn.drive(&mut cx);
                if i.conn.open() && now.duration_since(i.since) < idle_timeout {
                    idle.push(i);
                } else {
                    gone.push(i);
                }
            }
        }
        drop(gone);
    }

    fn give(&self, conn: Box<Conn>, limits: &PoolLimits) {
        if !conn.open() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < limits.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) to `authority` and waits
    /// for the answer's head. A request a reused connection hands back
    /// unsent goes out on another connection.
    pub(crate) async fn send(
        &self,
        authority: &Authority,
        mut req: Request<ProxyBody>,
        limits: &PoolLimits,
    ) -> Result<Response<Driven>, SendError> {
        loop {
            let (mut conn, reused) = match self.take(limits) {
                Some(c) => (c, true),
                // Boxed: the rare path's future is the largest part of
                // this one, which every request carries.
                None => (
                    Box::pin(connect(authority, limits.connect_timeout)).await?,
                    false,
                ),
            };
            // A reused connection first finishes reading what it was
            // reading, and says it is ready.
            let ready = std::future::poll_fn(|cx| {
                conn.drive(cx);
                if conn.conn.is_none() {
                    return Poll::Ready(false);
                }
                conn.send.poll_ready(cx).map(|r| r.is_ok())
            })
            .await;
            if !ready {
                if reused {
                    continue;
                }
                return Err(SendError::Connect(
                    "the new connection closed before the request was sent".into(),
                ));
            }
            // The connection is polled first: what it reads now is in the
            // answer polled after it.
            let mut answer = std::pin::pin!(conn.send.try_send_request(req));
            let answer = std::future::poll_fn(|cx| {
                conn.drive(cx);
                answer.as_mut().poll(cx)
            })
            .await;
            match answer {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let body = Driven {
                        body,
                        conn: Some(conn),
                        pool: self.clone(),
                        limits: *limits,
                    };
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    // Handed back unsent by a connection just made: the
                    // request never left, and may go elsewhere.
                    Some(_) => {
                        return Err(SendError::Connect(format!(
                            "the new connection failed before the request was sent: {}",
                            crate::proxy::error_chain(e.error())
                        )));
                    }
                    None => return Err(SendError::Broken(crate::proxy::error_chain(e.error()))),
                },
            }
        }
    }
}

async fn connect(authority: &Authority, timeout: Duration) -> Result<Box<Conn>, SendError> {
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = authority.port_u16().unwrap_or(80);
    let stream = match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
            return Err(SendError::ConnectTimeout);
        }
        Ok(Err(e)) => return Err(SendError::Connect(format!("{authority}: {e}"))),
        Err(_) => return Err(SendError::ConnectTimeout),
    };
    if let Err(e) = stream.set_nodelay(true) {
        return Err(SendError::Connect(format!("{authority}: {e}")));
    }
    let (send, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| SendError::Connect(format!("{authority}: {e}")))?;
    Ok(Box::new(Conn {
        send,
        conn: Some(conn),
    }))
}

/// An answer's body, read from a connection this body polls; the
/// connection goes back to its pool when the body has been read to its
/// end.
pub(crate) struct Driven {
    body: Incoming,
    conn: Option<Box<Conn>>,
    pool: ConnPool,
    limits: PoolLimits,
}

impl Driven {
    fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.give(conn, &self.limits);
        }
    }
}

impl Body for Driven {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(conn) = &mut this.conn {
            conn.drive(cx);
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.release();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        // A body with nothing to read (a `204`, `Content-Length: 0`) is
        // never polled; its connection is free all the same. Any other
        // body dropped before its end takes its connection with it.
        if self.body.is_end_stream() {
            self.release();
        }
    }
}
