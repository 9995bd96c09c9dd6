//! The HTTP load generator.
//!
//! Each worker owns one keep-alive HTTP/1.1 connection and sends one
//! request at a time. Two modes:
//! - open loop ([`Mode::Rate`]): requests are scheduled at a fixed total
//!   rate and latency is measured from the *scheduled* time, so a stalled
//!   server is charged for the requests it delayed (no coordinated
//!   omission);
//! - closed loop ([`Mode::Max`]): each worker sends the next request as
//!   soon as the last is answered, to find the peak rate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

/// How requests are paced.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Mode {
    /// This many requests per second in total, spread over the workers.
    Rate(u64),
    /// As fast as answers come back.
    Max,
}

/// Builds the `i`-th request of worker `w`: method, path and JSON body.
pub(crate) type MakeRequest =
    Arc<dyn Fn(usize, u64) -> (hyper::Method, String, Option<Bytes>) + Send + Sync>;

/// What a phase measured.
pub(crate) struct Outcome {
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    /// The first failed answer: its status and the start of its body.
    pub(crate) first_error: Option<String>,
    pub(crate) elapsed: Duration,
    pub(crate) latency_us: Histogram<u64>,
}

impl Outcome {
    pub(crate) fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub(crate) fn ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Runs `workers` connections against `addr` for `duration`, as the
/// benchmark's admin.
pub(crate) async fn run(
    addr: SocketAddr,
    workers: usize,
    mode: Mode,
    duration: Duration,
    make: MakeRequest,
) -> anyhow::Result<Outcome> {
    run_as(
        addr,
        workers,
        mode,
        duration,
        make,
        Some(crate::hub::bearer().into()),
    )
    .await
}

/// [`run`] with another `Authorization` header (or none).
pub(crate) async fn run_as(
    addr: SocketAddr,
    workers: usize,
    mode: Mode,
    duration: Duration,
    make: MakeRequest,
    authorization: Option<Arc<str>>,
) -> anyhow::Result<Outcome> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(workers);
    for w in 0..workers {
        let job = Job {
            addr,
            workers,
            period: match mode {
                Mode::Rate(r) => Some(Duration::from_secs_f64(workers as f64 / r.max(1) as f64)),
                Mode::Max => None,
            },
            start,
            deadline,
            make: make.clone(),
            authorization: authorization.clone(),
        };
        tasks.push(tokio::spawn(async move { worker(w, job).await }));
    }
    let mut total = Outcome {
        requests: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
    };
    for t in tasks {
        let o = t.await??;
        total.requests += o.requests;
        total.errors += o.errors;
        if total.first_error.is_none() {
            total.first_error = o.first_error;
        }
        total.latency_us.add(&o.latency_us)?;
    }
    total.elapsed = start.elapsed();
    Ok(total)
}

/// What each worker of a phase is given.
struct Job {
    addr: SocketAddr,
    workers: usize,
    period: Option<Duration>,
    start: Instant,
    deadline: Instant,
    make: MakeRequest,
    authorization: Option<Arc<str>>,
}

async fn worker(w: usize, job: Job) -> anyhow::Result<Outcome> {
    let Job {
        addr,
        workers,
        period,
        start,
        deadline,
        make,
        authorization,
    } = job;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .context("connect")?;
    tcp.set_nodelay(true)?;
    let (mut send, conn) = http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut requests, mut errors) = (0u64, 0u64);
    let mut first_error = None;
    // Spread the workers' schedules evenly across one period.
    let offset = period.map_or(Duration::ZERO, |p| p.mul_f64(w as f64 / workers as f64));
    let mut i = 0u64;
    loop {
        let scheduled = match period {
            Some(p) => start + offset + p.mul_f64(i as f64),
            None => Instant::now(),
        };
        if scheduled >= deadline {
            break;
        }
        // Latency counts from the scheduled time when the server made us
        // late (the previous answer came after this request was due: no
        // coordinated omission), and from the actual send when the
        // connection was idle, so the timer's own lateness (tokio timers
        // have millisecond resolution) is not charged to the server.
        let due = Instant::now();
        let measure_from = if scheduled > due {
            tokio::time::sleep_until(scheduled.into()).await;
            Instant::now()
        } else {
            scheduled
        };
        let (method, path, body) = make(w, i);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string());
        if let Some(a) = &authorization {
            req = req.header("authorization", &**a);
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(body.unwrap_or_default()))?;
        send.ready().await?;
        let resp = send.send_request(req).await?;
        let status = resp.status();
        let ok = status.is_success();
        let body = resp.into_body().collect().await?.to_bytes();
        if !ok && first_error.is_none() {
            first_error = Some(format!(
                "{status} {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(300)
                    .collect::<String>()
            ));
        }
        let took = measure_from.elapsed();
        hist.record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1))?;
        requests += 1;
        if !ok {
            errors += 1;
        }
        i += 1;
    }
    Ok(Outcome {
        requests,
        errors,
        first_error,
        elapsed: Duration::ZERO,
        latency_us: hist,
    })
}

/// Sends `requests` one after another on one connection; fails on the
/// first error status. For setup, not measured.
pub(crate) async fn send_all(
    addr: SocketAddr,
    requests: impl IntoIterator<Item = (hyper::Method, String, Option<Bytes>)>,
) -> anyhow::Result<u64> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .context("connect")?;
    let (mut send, conn) = http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut n = 0;
    for (method, path, body) in requests {
        let req = Request::builder()
            .method(method)
            .uri(&path)
            .header("host", addr.to_string())
            .header("authorization", crate::hub::bearer())
            .header("content-type", "application/json")
            .body(Full::new(body.unwrap_or_default()))?;
        send.ready().await?;
        let resp = send.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::ensure!(
            status.is_success(),
            "{path}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        n += 1;
    }
    Ok(n)
}
