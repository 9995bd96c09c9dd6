//! Forwarding one request to an instance of a service.
//!
//! In order: the request's headers are made fit to forward (hop-by-hop
//! headers out, `Forwarded`/`X-Forwarded-*` and trace headers in); its body
//! is kept when small enough to send again; then, until an answer can be
//! returned, an instance is chosen (live in the registry, healthy, not
//! ejected, breaker permitting), the request is sent within the timeouts,
//! and the outcome feeds the breaker, outlier detection and metrics. A
//! failure is retried only when safe (see [`crate::retry`]). The answer's
//! body streams back to the client, still bounded by the total timeout.
//!
//! A WebSocket (or any `Upgrade`) request is forwarded once; when the
//! instance switches protocols, the two upgraded connections are joined
//! and bytes copied both ways until either side closes.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Scheme;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::h1::{Driven, PoolLimits, SendError};
use crate::instances::{InFlight, Instance, serves};
use crate::retry::idempotent;
use crate::service::{Protocol, ServiceSpec};
use crate::{BoxError, Gateway, GatewayConfig, GatewayError, ProxyBody, ServiceState};
use switchboard_telemetry::Outcome;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// How one service's instances are reached: plain HTTP/1.1 instances
/// through connections of their own driven by each request's task
/// ([`crate::h1`]); the rest (HTTP/2, `https`) and every protocol upgrade
/// through hyper's pooled client.
pub(crate) struct Upstream {
    client: Client<Connector, ProxyBody>,
    /// Set when the service speaks HTTP/1.1.
    plain: Option<PoolLimits>,
}

/// An upstream answer's body. It lives in the boxed body handed to the
/// server, so the larger variant costs no extra allocation; boxing it would.
#[allow(clippy::large_enum_variant)]
pub(crate) enum UpBody {
    Driven(Driven),
    Pooled(hyper::body::Incoming),
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpBody::Driven(b) => Pin::new(b).poll_frame(cx),
            UpBody::Pooled(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Driven(b) => b.is_end_stream(),
            UpBody::Pooled(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Driven(b) => b.size_hint(),
            UpBody::Pooled(b) => b.size_hint(),
        }
    }
}

impl Upstream {
    pub(crate) fn new(spec: &ServiceSpec, config: &GatewayConfig) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(spec.timeouts.connect));
        http.set_nodelay(true);
        http.enforce_http(false);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider.clone())
        {
            Ok(b) => b,
            Err(error) => {
                tracing::warn!(%error, "no system CA certificates: https upstreams will not verify");
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map(|b| {
                        b.with_root_certificates(rustls::RootCertStore::empty())
                            .with_no_client_auth()
                    });
                match config {
                    Ok(c) => hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(c),
                    Err(_) => hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                        rustls::ClientConfig::builder()
                            .with_root_certificates(rustls::RootCertStore::empty())
                            .with_no_client_auth(),
                    ),
                }
            }
        }
        .https_or_http();
        let connector = match spec.protocol {
            Protocol::Http1 => tls.enable_http1().wrap_connector(http),
            Protocol::Http2 => tls.enable_http2().wrap_connector(http),
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .set_host(true);
        if spec.protocol == Protocol::Http2 {
            builder.http2_only(true);
        }
        Self {
            client: builder.build(connector),
            plain: (spec.protocol == Protocol::Http1).then_some(PoolLimits {
                connect_timeout: spec.timeouts.connect,
                idle_timeout: config.pool_idle_timeout,
                max_idle: config.pool_max_idle_per_host,
            }),
        }
    }

    /// Sends `req` (with an origin-form URI) to `inst`.
    pub(crate) async fn request(
        &self,
        inst: &Instance,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<UpBody>, SendError> {
        if let Some(limits) = &self.plain
            && inst.endpoint.scheme == Scheme::HTTP
        {
            req.headers_mut()
                .insert(header::HOST, inst.endpoint.host.clone());
            let resp = inst
                .conns
                .send(&inst.endpoint.authority, req, limits)
                .await?;
            return Ok(resp.map(UpBody::Driven));
        }
        // Boxed: hyper's client future is large, and rare here.
        Ok(Box::pin(self.pooled(inst, req)).await?.map(UpBody::Pooled))
    }

    /// Sends `req` (with an origin-form URI) to `inst` on hyper's pooled
    /// client.
    pub(crate) async fn pooled(
        &self,
        inst: &Instance,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<hyper::body::Incoming>, SendError> {
        *req.uri_mut() = inst
            .endpoint
            .absolute(req.uri())
            .map_err(|e| SendError::Connect(format!("cannot build the upstream URI: {e}")))?;
        self.client.request(req).await.map_err(|e| {
            if !e.is_connect() {
                SendError::Broken(error_chain(&e))
            } else if timed_out(&e) {
                SendError::ConnectTimeout
            } else {
                SendError::Connect(error_chain(&e))
            }
        })
    }
}

/// The client that posts webhooks.
pub(crate) type HookClient = Client<Connector, ProxyBody>;

pub(crate) fn hook_client() -> HookClient {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    http.set_nodelay(true);
    http.enforce_http(false);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls =
        match hyper_rustls::HttpsConnectorBuilder::new().with_provider_and_native_roots(provider) {
            Ok(b) => b,
            Err(_) => hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            ),
        };
    Client::builder(TokioExecutor::new())
        .build(tls.https_or_http().enable_http1().wrap_connector(http))
}

/// What the gateway knows of the call it forwards.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The client's address.
    pub client_ip: IpAddr,
    /// Whether the client came over TLS.
    pub inbound_https: bool,
    /// The `Host` the client asked for.
    pub host: Option<String>,
    /// The request's correlation id (sent as `X-Request-Id` when the client
    /// sent none).
    pub request_id: String,
    /// The path and query to ask the instance for (`/x?y=1`).
    pub path_and_query: String,
    /// The configured route, if one matched.
    pub route: Option<String>,
}

/// Headers that concern one connection only (RFC 9110 §7.6.1), never
/// forwarded.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, and those the `Connection` header names.
/// `Upgrade` is kept (with `Connection: upgrade`) when `upgrading`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    // Most messages have none: a look at each name costs less than a
    // removal (a hash and a probe) per hop-by-hop name.
    if !upgrading
        && !headers
            .keys()
            .any(|k| k == header::UPGRADE || HOP_BY_HOP.contains(k))
    {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for h in named.iter().chain(HOP_BY_HOP.iter()) {
        if upgrading && (h == header::UPGRADE || h == header::CONNECTION) {
            continue;
        }
        headers.remove(h);
    }
    if !upgrading {
        headers.remove(header::UPGRADE);
    } else {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const X_TRACE_ID: HeaderName = HeaderName::from_static("x-trace-id");
const X_SPAN_ID: HeaderName = HeaderName::from_static("x-span-id");

/// Random lower-case hex of `n` bytes (1 to 16), never all zeros (W3C
/// trace context).
fn random_hex(n: usize) -> String {
    debug_assert!((1..=16).contains(&n), "{n} bytes");
    let n = n.clamp(1, 16);
    let bits = loop {
        // One draw for all the bytes: the low `n` bytes are used.
        let bits = fastrand::u128(..) & (u128::MAX >> (128 - 8 * n));
        if bits != 0 {
            break bits;
        }
    };
    base16ct::lower::encode_string(&bits.to_be_bytes()[16 - n..])
}

/// The trace id and flags of a valid `traceparent`.
fn parse_traceparent(v: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = v.trim().split('-').collect();
    let [version, trace, parent, flags] = parts.as_slice() else {
        return None;
    };
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    if !hex(version, 2) || *version == "ff" || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2)
    {
        return None;
    }
    if trace.bytes().all(|b| b == b'0') || parent.bytes().all(|b| b == b'0') {
        return None;
    }
    Some(((*trace).to_owned(), (*flags).to_owned()))
}

/// Appends `ip` in its text form. IPv4, the common case on every proxied
/// request, is written digit by digit rather than through `fmt`.
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => {
            for (i, octet) in a.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(a) => {
            use std::fmt::Write;
            let _ = write!(out, "{a}");
        }
    }
}

/// `value` as a header value, without copying it; `None` when it is not
/// a valid one.
fn header_value(value: String) -> Option<HeaderValue> {
    HeaderValue::try_from(value).ok()
}

/// Adds the forwarding and tracing headers (`X-Trace-Id` and `X-Span-Id`
/// carry the trace and span ids sent upstream).
pub(crate) fn forwarding_headers(headers: &mut HeaderMap, ctx: &CallContext) {
    let proto = if ctx.inbound_https { "https" } else { "http" };
    let mut xff = String::with_capacity(64);
    if let Some(prior) = headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        xff.push_str(prior);
        xff.push_str(", ");
    }
    let ip_at = xff.len();
    push_ip(&mut xff, ctx.client_ip);
    let mut forwarded = String::with_capacity(128);
    if let Some(prior) = headers.get(&FORWARDED).and_then(|v| v.to_str().ok()) {
        forwarded.push_str(prior);
        forwarded.push_str(", ");
    }
    forwarded.push_str("for=");
    if ctx.client_ip.is_ipv6() {
        forwarded.push_str("\"[");
        forwarded.push_str(&xff[ip_at..]);
        forwarded.push_str("]\"");
    } else {
        forwarded.push_str(&xff[ip_at..]);
    }
    forwarded.push_str(";proto=");
    forwarded.push_str(proto);
    if let Some(v) = header_value(xff) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if let Some(host) = &ctx.host {
        if !headers.contains_key(&X_FORWARDED_HOST)
            && let Ok(v) = HeaderValue::from_str(host)
        {
            headers.insert(X_FORWARDED_HOST, v);
        }
        if host
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b';' && b != b',')
        {
            forwarded.push_str(";host=");
            forwarded.push_str(host);
        }
    }
    if let Some(v) = header_value(forwarded) {
        headers.insert(FORWARDED, v);
    }
    if !headers.contains_key(&X_REQUEST_ID)
        && let Ok(v) = HeaderValue::from_str(&ctx.request_id)
    {
        headers.insert(X_REQUEST_ID, v);
    }
    // W3C trace context: continue the caller's trace, or start one; this
    // hop is a new span.
    let (trace, flags) = headers
        .get(&TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent)
        .unwrap_or_else(|| (random_hex(16), "01".to_owned()));
    let span = random_hex(8);
    let traceparent = ["00-", &trace, "-", &span, "-", &flags].concat();
    for (name, value) in [
        (TRACEPARENT, traceparent),
        (X_TRACE_ID, trace),
        (X_SPAN_ID, span),
    ] {
        if let Some(v) = header_value(value) {
            headers.insert(name, v);
        }
    }
}

/// A request body: kept (so it can be sent again) or streaming.
enum Payload {
    Kept(Bytes),
    Streaming(Option<ProxyBody>),
}

impl Payload {
    fn take(&mut self) -> Option<ProxyBody> {
        match self {
            Payload::Kept(b) => Some(full(b.clone())),
            Payload::Streaming(body) => body.take(),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, Payload::Kept(_))
    }
}

pub(crate) fn full(b: Bytes) -> ProxyBody {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}

pub(crate) fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Reads the body when it is known to be small (or absent): it can then be
/// replayed.
pub(crate) async fn keep_small(
    body: ProxyBody,
    limit: usize,
) -> Result<Result<Bytes, ProxyBody>, GatewayError> {
    if body.is_end_stream() {
        return Ok(Ok(Bytes::new()));
    }
    let hint = body.size_hint();
    if hint.upper().is_some_and(|u| u <= limit as u64) {
        let collected = body.collect().await.map_err(|e| {
            GatewayError::BadRequest(format!("the request body could not be read: {e}"))
        })?;
        return Ok(Ok(collected.to_bytes()));
    }
    Ok(Err(body))
}

/// An upstream response body: counts the request in flight until it ends
/// and is cut at the total deadline.
struct Tracked {
    inner: UpBody,
    _in_flight: InFlight,
    deadline: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            let limit = self.limit;
            return Poll::Ready(Some(Err(format!(
                "the response body did not finish within the total timeout of {limit:?}"
            )
            .into())));
        }
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(|e| Box::new(e) as BoxError)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

use std::future::Future;

/// Why one attempt did not give an answer to return.
enum Failed {
    /// The connection could not be made: the request was never sent.
    Connect(String),
    /// A timeout ran out.
    Timeout(&'static str, Duration),
    /// The exchange broke after the request was (maybe) sent.
    Broken(String),
}

impl Gateway {
    /// Forwards `req` to an instance of `service`.
    pub async fn proxy(
        &self,
        service: &str,
        req: Request<ProxyBody>,
        ctx: &CallContext,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let state = self
            .service_state(service)
            .ok_or_else(|| GatewayError::NoService(service.to_owned()))?;
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        let upgrading = is_upgrade(&parts.headers);
        strip_hop_by_hop(&mut parts.headers, upgrading);
        parts.headers.remove(header::HOST);
        if !state.spec.forward_authorization {
            parts.headers.remove(header::AUTHORIZATION);
        }
        forwarding_headers(&mut parts.headers, ctx);
        // The upgrade's future is boxed: it is large, and rare.
        let result = if upgrading {
            Box::pin(self.upgrade(&state, parts, body, ctx)).await
        } else {
            self.forward(&state, parts, body, ctx).await
        };
        let outcome = match &result {
            Ok(r) => Outcome::Status(r.status().as_u16()),
            Err(GatewayError::Timeout { .. }) => Outcome::Timeout,
            Err(GatewayError::Unavailable { .. }) => Outcome::Status(503),
            Err(_) => Outcome::Error,
        };
        state.counters.count(outcome, started.elapsed());
        result
    }

    /// Instances that may take a request now, in the split chosen for this
    /// request; `avoid` are left out unless nothing else is left.
    pub(crate) fn candidates(
        &self,
        state: &ServiceState,
        avoid: &[Arc<str>],
    ) -> Result<Vec<Arc<Instance>>, String> {
        let now = Instant::now();
        let all = state.instances();
        if all.is_empty() {
            return Err("no agent of this service has a usable endpoint".into());
        }
        // One pass: live in the registry, then usable (healthy, not
        // ejected, breaker permitting); counted to say why when none is.
        let mut live = 0;
        let mut usable: Vec<Arc<Instance>> = Vec::with_capacity(all.len());
        for i in all.iter() {
            if !self
                .0
                .registry
                .presence(&i.agent_id)
                .is_some_and(|p| serves(p.status))
            {
                continue;
            }
            live += 1;
            if i.usable(now) {
                usable.push(i.clone());
            }
        }
        if live == 0 {
            return Err(format!(
                "none of its {} agents is live (stale, offline, draining or removed)",
                all.len()
            ));
        }
        if usable.is_empty() {
            return Err(format!(
                "all {live} live instances are unhealthy, ejected or have an open breaker"
            ));
        }
        let mut pool = usable;
        let splits = &state.spec.splits;
        if !splits.is_empty() {
            // A split is drawn by weight among those with an instance now.
            let open: Vec<(u32, Vec<Arc<Instance>>)> = splits
                .iter()
                .map(|s| {
                    let members: Vec<_> = pool
                        .iter()
                        .filter(|i| s.matches(i.version.as_deref()))
                        .cloned()
                        .collect();
                    (s.weight, members)
                })
                .filter(|(_, m)| !m.is_empty())
                .collect();
            let total: u32 = open.iter().map(|(w, _)| *w).sum();
            if total == 0 {
                return Err("no live instance has a version any split names".into());
            }
            let mut draw = fastrand::u32(..total);
            let mut chosen = Vec::new();
            for (w, members) in open {
                if draw < w {
                    chosen = members;
                    break;
                }
                draw -= w;
            }
            pool = chosen;
        }
        if !avoid.is_empty() {
            let fresh: Vec<_> = pool
                .iter()
                .filter(|i| !avoid.contains(&i.agent_id))
                .cloned()
                .collect();
            if !fresh.is_empty() {
                pool = fresh;
            }
        }
        Ok(pool)
    }

    fn hash_key(state: &ServiceState, headers: &HeaderMap) -> Option<String> {
        match &state.spec.balancing {
            crate::Algorithm::ConsistentHash { header } => headers
                .get(header.as_str())
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            _ => None,
        }
    }

    /// Picks an instance and takes a breaker permit on it.
    fn choose(
        &self,
        state: &ServiceState,
        headers: &HeaderMap,
        tried: &[Arc<str>],
    ) -> Result<(Arc<Instance>, crate::breaker::Permit), GatewayError> {
        let key = Self::hash_key(state, headers);
        let mut refused: Vec<Arc<str>> = tried.to_vec();
        // A breaker may refuse at the last moment (another request took the
        // last half-open slot): try the others.
        for _ in 0..8 {
            let pool =
                self.candidates(state, &refused)
                    .map_err(|why| GatewayError::Unavailable {
                        service: state.spec.name.clone(),
                        why,
                    })?;
            let Some(inst) = state
                .balancer
                .pick(&state.spec.balancing, &pool, key.as_deref())
            else {
                break;
            };
            if let Some(permit) = inst.breaker().try_acquire(Instant::now()) {
                return Ok((inst.clone(), permit));
            }
            refused.push(inst.agent_id.clone());
        }
        Err(GatewayError::Unavailable {
            service: state.spec.name.clone(),
            why: "every candidate's breaker refused the request".into(),
        })
    }

    async fn forward(
        &self,
        state: &Arc<ServiceState>,
        mut parts: http::request::Parts,
        body: ProxyBody,
        ctx: &CallContext,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let spec = &state.spec;
        let started = Instant::now();
        let deadline = started + spec.timeouts.total;
        let mut payload = match keep_small(body, self.0.config.replay_limit).await? {
            Ok(b) => Payload::Kept(b),
            Err(stream) => Payload::Streaming(Some(stream)),
        };
        let safe_method = idempotent(&parts.method);
        state.budget.request(started);
        let mut tried: Vec<Arc<str>> = Vec::new();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (inst, permit) = self.choose(state, &parts.headers, &tried)?;
            tried.push(inst.agent_id.clone());
            let Some(body) = payload.take() else {
                inst.breaker().release(permit);
                return Err(GatewayError::BadRequest(
                    "the request body was already sent and cannot be sent again".into(),
                ));
            };
            let uri = inst
                .endpoint
                .origin_form(&ctx.path_and_query)
                .map_err(|e| {
                    GatewayError::BadRequest(format!("cannot build the upstream URI: {e}"))
                })?;
            let mut up = Request::builder()
                .method(parts.method.clone())
                .uri(uri)
                .version(http::Version::HTTP_11)
                .body(body)
                .map_err(|e| GatewayError::BadRequest(e.to_string()))?;
            // The headers are needed again only if a retry may follow.
            *up.headers_mut() = if attempt < spec.retry.attempts && payload.replayable() {
                parts.headers.clone()
            } else {
                std::mem::take(&mut parts.headers)
            };
            let in_flight = inst.start();
            let now = Instant::now();
            let left = deadline.saturating_duration_since(now);
            let (limit, kind) = if spec.timeouts.first_byte < left {
                (spec.timeouts.first_byte, "first_byte")
            } else {
                (left, "total")
            };
            let outcome = match tokio::time::timeout(limit, state.client.request(&inst, up)).await {
                Ok(Ok(resp)) => Ok(resp),
                Ok(Err(SendError::ConnectTimeout)) => {
                    Err(Failed::Timeout("connect", spec.timeouts.connect))
                }
                Ok(Err(SendError::Connect(why))) => Err(Failed::Connect(why)),
                Ok(Err(SendError::Broken(why))) => Err(Failed::Broken(why)),
                Err(_) => Err(Failed::Timeout(kind, limit)),
            };
            let now = Instant::now();
            let replayable = payload.replayable();
            let retry_allowed = |never_sent: bool| {
                attempt < spec.retry.attempts
                    && replayable
                    && (safe_method || never_sent)
                    && now < deadline
            };
            match outcome {
                Ok(resp) => {
                    let status = resp.status();
                    let failed = status.is_server_error();
                    self.record(
                        state,
                        &inst,
                        permit,
                        failed,
                        Outcome::Status(status.as_u16()),
                        now,
                    );
                    if failed
                        && spec.retry.on_status.contains(&status.as_u16())
                        && retry_allowed(false)
                        && state.budget.try_retry(&spec.retry, now)
                    {
                        drop(resp);
                        drop(in_flight);
                        self.0.metrics.gateway_retry(&spec.name);
                        Box::pin(backoff(spec, attempt, deadline)).await;
                        continue;
                    }
                    return Ok(self.respond(resp, in_flight, deadline, spec.timeouts.total, &inst));
                }
                Err(f) => {
                    drop(in_flight);
                    let (never_sent, err) = match f {
                        Failed::Connect(why) => (
                            true,
                            GatewayError::Upstream {
                                instance: inst.agent_id.to_string(),
                                why: format!("cannot connect: {why}"),
                            },
                        ),
                        Failed::Timeout(kind, limit) => (
                            kind == "connect",
                            GatewayError::Timeout {
                                kind,
                                limit,
                                instance: inst.agent_id.to_string(),
                            },
                        ),
                        Failed::Broken(why) => (
                            false,
                            GatewayError::Upstream {
                                instance: inst.agent_id.to_string(),
                                why,
                            },
                        ),
                    };
                    let outcome = if matches!(err, GatewayError::Timeout { .. }) {
                        Outcome::Timeout
                    } else {
                        Outcome::Error
                    };
                    self.record(state, &inst, permit, true, outcome, now);
                    let total_ran_out = matches!(err, GatewayError::Timeout { kind: "total", .. });
                    if !total_ran_out
                        && retry_allowed(never_sent)
                        && state.budget.try_retry(&spec.retry, now)
                    {
                        self.0.metrics.gateway_retry(&spec.name);
                        Box::pin(backoff(spec, attempt, deadline)).await;
                        continue;
                    }
                    return Err(err);
                }
            }
        }
    }

    /// [`Gateway::record`] now.
    pub(crate) fn record_outcome(
        &self,
        state: &ServiceState,
        inst: &Instance,
        permit: crate::breaker::Permit,
        failed: bool,
        outcome: Outcome,
    ) {
        self.record(state, inst, permit, failed, outcome, Instant::now());
    }

    /// Feeds an attempt's outcome to the breaker, outlier detection and
    /// metrics.
    fn record(
        &self,
        state: &ServiceState,
        inst: &Instance,
        permit: crate::breaker::Permit,
        failed: bool,
        outcome: Outcome,
        now: Instant,
    ) {
        if let Some(s) = inst.breaker().record(permit, !failed, now) {
            tracing::info!(service = %state.spec.name, instance = %inst.agent_id, state = s.as_str(), "circuit breaker");
            self.0
                .metrics
                .gateway_breaker(&state.spec.name, &inst.agent_id, s.as_str());
        }
        if let Some(until) = inst.observe(failed, &state.spec.outlier, now) {
            tracing::warn!(service = %state.spec.name, instance = %inst.agent_id, for_ms = until.saturating_duration_since(now).as_millis() as u64, "instance ejected");
            self.0
                .metrics
                .gateway_ejection(&state.spec.name, &inst.agent_id);
        }
        inst.counters
            .get_or_init(|| {
                self.0
                    .metrics
                    .gateway_instance(&state.spec.name, &inst.agent_id)
            })
            .count(outcome, Duration::ZERO);
    }

    fn respond(
        &self,
        resp: Response<UpBody>,
        in_flight: InFlight,
        deadline: Instant,
        limit: Duration,
        _inst: &Instance,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        let body = Tracked {
            inner: body,
            _in_flight: in_flight,
            deadline: Box::pin(tokio::time::sleep_until(deadline.into())),
            limit,
        };
        Response::from_parts(parts, body.boxed_unsync())
    }

    /// Forwards an upgrade request once and, when the instance switches
    /// protocols, joins the two connections.
    async fn upgrade(
        &self,
        state: &Arc<ServiceState>,
        mut parts: http::request::Parts,
        body: ProxyBody,
        ctx: &CallContext,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let spec = &state.spec;
        let client_side = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or_else(|| GatewayError::BadRequest("this connection cannot be upgraded".into()))?;
        let (inst, permit) = self.choose(state, &parts.headers, &[])?;
        let uri = inst
            .endpoint
            .origin_form(&ctx.path_and_query)
            .map_err(|e| GatewayError::BadRequest(format!("cannot build the upstream URI: {e}")))?;
        let mut up = Request::builder()
            .method(parts.method.clone())
            .uri(uri)
            .version(http::Version::HTTP_11)
            .body(body)
            .map_err(|e| GatewayError::BadRequest(e.to_string()))?;
        *up.headers_mut() = parts.headers;
        let in_flight = inst.start();
        let sent =
            tokio::time::timeout(spec.timeouts.first_byte, state.client.pooled(&inst, up)).await;
        let mut resp = match sent {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                self.record(state, &inst, permit, true, Outcome::Error, Instant::now());
                return Err(GatewayError::Upstream {
                    instance: inst.agent_id.to_string(),
                    why: e.to_string(),
                });
            }
            Err(_) => {
                self.record(state, &inst, permit, true, Outcome::Timeout, Instant::now());
                return Err(GatewayError::Timeout {
                    kind: "first_byte",
                    limit: spec.timeouts.first_byte,
                    instance: inst.agent_id.to_string(),
                });
            }
        };
        let status = resp.status();
        self.record(
            state,
            &inst,
            permit,
            status.is_server_error(),
            Outcome::Status(status.as_u16()),
            Instant::now(),
        );
        if status != StatusCode::SWITCHING_PROTOCOLS {
            let deadline = Instant::now() + spec.timeouts.total;
            return Ok(self.respond(
                resp.map(UpBody::Pooled),
                in_flight,
                deadline,
                spec.timeouts.total,
                &inst,
            ));
        }
        let upstream_side = hyper::upgrade::on(&mut resp);
        let agent = inst.agent_id.clone();
        tokio::spawn(async move {
            let _in_flight = in_flight;
            match tokio::try_join!(client_side, upstream_side) {
                Ok((client, upstream)) => {
                    let mut client = TokioIo::new(client);
                    let mut upstream = TokioIo::new(upstream);
                    if let Err(error) =
                        tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                    {
                        tracing::debug!(%error, instance = %agent, "upgraded connection ended");
                    }
                }
                Err(error) => tracing::debug!(%error, instance = %agent, "upgrade failed"),
            }
        });
        let (mut parts, _) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, true);
        Ok(Response::from_parts(parts, empty()))
    }
}

async fn backoff(spec: &ServiceSpec, attempt: u32, deadline: Instant) {
    let wait = spec.retry.backoff * 2u32.saturating_pow(attempt.saturating_sub(1).min(10));
    let until = (Instant::now() + wait).min(deadline);
    tokio::time::sleep_until(until.into()).await;
}

/// Whether an error was caused by a timeout (the connector's connect
/// timeout is an I/O error of kind `TimedOut` down the chain).
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cur = c.source();
    }
    false
}

/// An error and its causes, one line.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h, false);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-keep"]);
        // Each one alone goes too; a message with none keeps all it has.
        for hop in HOP_BY_HOP.iter().chain([&header::UPGRADE]) {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
            h.insert(hop, HeaderValue::from_static("x"));
            strip_hop_by_hop(&mut h, false);
            let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
            assert_eq!(left, ["accept"], "{hop}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        h.append("x-keep", HeaderValue::from_static("too"));
        let before = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
    }

    #[test]
    fn upgrades_keep_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    fn ctx() -> CallContext {
        CallContext {
            client_ip: "10.1.2.3".parse().expect("ip"),
            inbound_https: false,
            host: Some("hub.example:7878".into()),
            request_id: "req-1".into(),
            path_and_query: "/".into(),
            route: None,
        }
    }

    #[test]
    fn random_ids_are_hex_of_their_width() {
        for n in [1, 8, 16] {
            let ids: Vec<String> = (0..64).map(|_| random_hex(n)).collect();
            for id in &ids {
                assert_eq!(id.len(), 2 * n, "{id}");
                assert!(
                    id.bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                );
                assert!(id.bytes().any(|b| b != b'0'), "{id}");
            }
            if n > 1 {
                let distinct: std::collections::HashSet<&String> = ids.iter().collect();
                assert!(distinct.len() > 60, "{n}: {distinct:?}");
            }
        }
        // Every nibble position takes more than one value.
        let ids: Vec<String> = (0..256).map(|_| random_hex(16)).collect();
        for i in 0..32 {
            let seen: std::collections::HashSet<u8> = ids.iter().map(|s| s.as_bytes()[i]).collect();
            assert!(seen.len() > 4, "position {i}: {seen:?}");
        }
    }

    #[test]
    fn forwarding_and_trace_headers() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("192.0.2.1"));
        forwarding_headers(&mut h, &ctx());
        let (trace, span) = (&h[&X_TRACE_ID], &h[&X_SPAN_ID]);
        assert_eq!(h[&X_FORWARDED_FOR], "192.0.2.1, 10.1.2.3");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "hub.example:7878");
        assert_eq!(
            h[&FORWARDED],
            "for=10.1.2.3;proto=http;host=hub.example:7878"
        );
        assert_eq!(h[&X_REQUEST_ID], "req-1");
        assert_eq!(trace.len(), 32);
        assert_eq!(span.len(), 16);
        let (trace, span) = (trace.to_str().expect("hex"), span.to_str().expect("hex"));
        assert_eq!(h[&TRACEPARENT], format!("00-{trace}-{span}-01").as_str());

        // A caller's trace is continued with a new span.
        let mut h = HeaderMap::new();
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        h.insert(TRACEPARENT, HeaderValue::from_static(parent));
        h.insert(X_REQUEST_ID, HeaderValue::from_static("theirs"));
        forwarding_headers(&mut h, &ctx());
        assert_eq!(h[&X_TRACE_ID], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(h[&X_SPAN_ID], "00f067aa0ba902b7");
        assert_eq!(
            h[&TRACEPARENT],
            format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
                h[&X_SPAN_ID].to_str().expect("hex")
            )
            .as_str()
        );
        assert_eq!(h[&X_REQUEST_ID], "theirs");
        // Addresses of every width, and IPv6 quoted in `Forwarded`.
        for (ip, text) in [
            ("0.0.0.0", "0.0.0.0"),
            ("9.10.99.100", "9.10.99.100"),
            ("255.200.101.7", "255.200.101.7"),
            ("2001:db8::1", "2001:db8::1"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(FORWARDED, HeaderValue::from_static("for=192.0.2.9"));
            let mut c = ctx();
            c.client_ip = ip.parse().expect("ip");
            c.host = None;
            forwarding_headers(&mut h, &c);
            assert_eq!(h[&X_FORWARDED_FOR], text);
            let node = if ip.contains(':') {
                format!("\"[{text}]\"")
            } else {
                text.to_owned()
            };
            assert_eq!(
                h[&FORWARDED],
                format!("for=192.0.2.9, for={node};proto=http").as_str()
            );
        }
        // Malformed ones start a new trace.
        for bad in [
            "junk",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }
}
