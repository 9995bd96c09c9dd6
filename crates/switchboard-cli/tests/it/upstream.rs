//! A real HTTP server standing for an agent behind the gateway.
//!
//! Routes: `/echo/*` answers what it received (method, path, query,
//! headers, body length and checksum) and which instance it is;
//! `/status/{code}`; `/slow/{ms}` (headers after a delay); `/stall` (headers
//! at once, the body never ends); `/big/{bytes}` (a streamed body);
//! `/health` (200, or 503 once told to fail); `/ws` (a WebSocket echo).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::json;
use sha2::{Digest, Sha256};

/// One upstream instance.
pub(crate) struct Upstream {
    pub(crate) id: String,
    pub(crate) addr: SocketAddr,
    shared: Arc<Shared>,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<()>,
}

struct Shared {
    id: String,
    hits: AtomicU64,
    healthy: AtomicBool,
    /// When set, every /echo answers 500.
    failing: AtomicBool,
}

impl Upstream {
    /// Starts an instance on a free port.
    pub(crate) async fn start(id: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Self::serve(id, listener).await
    }

    /// Starts an instance on `listener`.
    pub(crate) async fn serve(id: &str, listener: tokio::net::TcpListener) -> Self {
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            id: id.to_owned(),
            hits: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            failing: AtomicBool::new(false),
        });
        let app = Router::new()
            .route("/echo", any(echo))
            .route("/echo/{*rest}", any(echo))
            .route("/status/{code}", any(status))
            .route("/slow/{ms}", any(slow))
            .route("/stall", get(stall))
            .route("/big/{bytes}", get(big))
            .route("/health", get(health))
            .route("/ws", get(ws))
            .with_state(shared.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            id: id.to_owned(),
            addr,
            shared,
            stop,
            served,
        }
    }

    /// Its endpoint.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests it has answered on `/echo` and `/status`.
    pub(crate) fn hits(&self) -> u64 {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// Makes `/health` answer 503 (or 200 again).
    pub(crate) fn set_healthy(&self, healthy: bool) {
        self.shared.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Makes `/echo` answer 500 (or normally again).
    pub(crate) fn set_failing(&self, failing: bool) {
        self.shared.failing.store(failing, Ordering::SeqCst);
    }

    /// Stops it; its port refuses connections from then on.
    pub(crate) async fn stop(self) -> SocketAddr {
        let _ = self.stop.send(());
        // Stopped once its connections are closed (idle ones at once).
        tokio::time::timeout(std::time::Duration::from_secs(10), self.served)
            .await
            .expect("the upstream stopped within 10 s")
            .expect("the upstream's server task");
        self.addr
    }
}

async fn echo(State(s): State<Arc<Shared>>, req: Request) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    if s.failing.load(Ordering::SeqCst) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{} is failing", s.id),
        )
            .into_response();
    }
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").into()))
        .collect();
    let sum: String = Sha256::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    axum::Json(json!({
        "instance": s.id,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_len": body.len(),
        "body_sha256": sum,
        "version": format!("{:?}", parts.version),
    }))
    .into_response()
}

async fn status(State(s): State<Arc<Shared>>, Path(code): Path<u16>) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    (code, [("x-instance", s.id.clone())], s.id.clone()).into_response()
}

async fn slow(State(s): State<Arc<Shared>>, Path(ms): Path<u64>) -> Response {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    (StatusCode::OK, s.id.clone()).into_response()
}

async fn stall() -> Response {
    let stream = futures_util::stream::unfold(0u32, |n| async move {
        if n > 0 {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Some((
            Ok::<_, std::io::Error>(Bytes::from_static(b"first part ")),
            n + 1,
        ))
    });
    Response::new(Body::from_stream(stream))
}

async fn big(Path(bytes): Path<usize>) -> Response {
    let chunk = 64 * 1024;
    let stream = futures_util::stream::unfold(0usize, move |sent| async move {
        if sent >= bytes {
            return None;
        }
        let n = chunk.min(bytes - sent);
        let data: Vec<u8> = (0..n).map(|i| ((sent + i) % 251) as u8).collect();
        Some((Ok::<_, std::io::Error>(Bytes::from(data)), sent + n))
    });
    Response::new(Body::from_stream(stream))
}

async fn health(State(s): State<Arc<Shared>>) -> StatusCode {
    if s.healthy.load(Ordering::SeqCst) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn ws(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let _ = headers;
    let id = s.id.clone();
    upgrade.on_upgrade(move |mut socket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            if let Message::Text(t) = msg {
                let reply = format!("{id}: {}", t.as_str());
                if socket.send(Message::Text(reply.into())).await.is_err() {
                    break;
                }
            }
        }
    })
}
