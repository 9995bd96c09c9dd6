//! Access control on every route: who is calling (authentication), how
//! often (rate limits), whether they may (authorization), and the audit
//! record of what they did.
//!
//! The rule of each route is its OpenAPI `security` requirement, declared
//! next to the handler in its `#[utoipa::path]`: `security(())` is public,
//! `security(("bearer" = []))` needs any principal, and
//! `security(("bearer" = ["tasks:write"]))` needs that scope. [`Policies`]
//! reads them from the generated document, so the document shows exactly
//! what is enforced. A route whose operation declares none is refused to
//! everyone (deny by default), and a test walks the router to fail on it.
//!
//! Resource rules (an agent heartbeats only itself, reports only the tasks
//! it holds, uses only the topics its ACL grants) are checked by the
//! handlers, which know the resource, through [`Caller`].

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use switchboard_auth::{AuditEntry, Auth, AuthFailure, Decision, Principal, Scope};
use switchboard_bus::{Bus, NewEvent};
use switchboard_core::FieldError;
use switchboard_telemetry::Metrics;
use tower::{Layer, Service};

use crate::context;
use crate::error::{ApiError, ErrorCode};
use crate::middleware::Around;

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rule {
    /// Anyone.
    Public,
    /// Any authenticated principal.
    Authenticated,
    /// A principal holding this scope.
    Scope(Scope),
}

/// The rule of every route, by method and route template.
#[derive(Debug, Default)]
pub(crate) struct Policies(HashMap<Method, HashMap<String, Rule>>);

const METHODS: [&str; 7] = ["get", "post", "put", "patch", "delete", "head", "options"];

impl Policies {
    /// Reads the rules from the OpenAPI document; also returns a line for
    /// every operation whose rule is missing or unreadable.
    pub(crate) fn from_openapi(doc: &utoipa::openapi::OpenApi) -> (Self, Vec<String>) {
        let mut rules = HashMap::new();
        let mut problems = Vec::new();
        let doc = serde_json::to_value(doc).unwrap_or(Value::Null);
        let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
            return (Self(rules), vec!["the document has no paths".into()]);
        };
        for (path, item) in paths {
            for m in METHODS {
                let Some(op) = item.get(m) else { continue };
                let Ok(method) = Method::from_str(&m.to_ascii_uppercase()) else {
                    continue;
                };
                match rule_of(op) {
                    Ok(rule) => {
                        rules
                            .entry(method)
                            .or_insert_with(HashMap::new)
                            .insert(path.clone(), rule);
                    }
                    Err(why) => problems.push(format!("{} {path}: {why}", m.to_ascii_uppercase())),
                }
            }
        }
        (Self(rules), problems)
    }

    pub(crate) fn get(&self, method: &Method, route: &str) -> Option<Rule> {
        self.0.get(method)?.get(route).copied()
    }
}

fn rule_of(op: &Value) -> Result<Rule, String> {
    let Some(reqs) = op.get("security").and_then(Value::as_array) else {
        return Err(
            "declares no security requirement (add security(...) to its #[utoipa::path])".into(),
        );
    };
    if reqs
        .iter()
        .any(|r| r.as_object().is_some_and(serde_json::Map::is_empty))
    {
        return Ok(Rule::Public);
    }
    let [req] = reqs.as_slice() else {
        return Err("must declare exactly one requirement".into());
    };
    let scopes = req
        .get("bearer")
        .and_then(Value::as_array)
        .ok_or("names a scheme other than bearer")?;
    match scopes.as_slice() {
        [] => Ok(Rule::Authenticated),
        [s] => s
            .as_str()
            .ok_or_else(|| "a scope is not a string".to_owned())?
            .parse()
            .map(Rule::Scope),
        _ => Err("must name at most one scope".into()),
    }
}

/// Routes whose calls are many and recorded elsewhere (the registry, the
/// log, the task record): audited only with `audit.data_plane`; their
/// refusals always are.
const DATA_PLANE: &[(&str, &str)] = &[
    ("POST", "/api/v1/agents/{id}/heartbeat"),
    ("POST", "/api/v1/events"),
    ("POST", "/api/v1/groups/{name}/pull"),
    ("POST", "/api/v1/groups/{name}/ack"),
    ("POST", "/api/v1/groups/{name}/nack"),
    ("POST", "/api/v1/tasks/claim"),
    ("PATCH", "/api/v1/tasks/{id}"),
    ("POST", "/api/v1/messages"),
    ("POST", "/api/v1/requests"),
];

/// Routes that take the credential from the `access_token` query parameter
/// too, because browsers cannot set headers on WebSockets and EventSource.
const QUERY_TOKEN_ROUTES: &[&str] = &["/ws", "/api/v1/events/stream"];

/// What the access layer needs.
#[derive(Clone)]
pub(crate) struct Access(Arc<AccessInner>);

impl std::ops::Deref for Access {
    type Target = AccessInner;

    fn deref(&self) -> &AccessInner {
        &self.0
    }
}

/// What [`Access`] holds; one `Arc`, as the middleware takes a copy per
/// request.
pub(crate) struct AccessInner {
    pub(crate) auth: Auth,
    pub(crate) bus: Bus,
    pub(crate) metrics: Metrics,
    pub(crate) policies: Arc<Policies>,
    pub(crate) audit_data_plane: bool,
    data_plane: Arc<HashSet<(Method, &'static str)>>,
    /// The principal every request runs as when authentication is off.
    anyone: Arc<Principal>,
}

impl Access {
    pub(crate) fn new(
        auth: Auth,
        bus: Bus,
        metrics: Metrics,
        policies: Policies,
        audit_data_plane: bool,
    ) -> Self {
        let data_plane = DATA_PLANE
            .iter()
            .filter_map(|(m, p)| Method::from_str(m).ok().map(|m| (m, *p)))
            .collect();
        Self(Arc::new(AccessInner {
            auth,
            bus,
            metrics,
            policies: Arc::new(policies),
            audit_data_plane,
            data_plane: Arc::new(data_plane),
            anyone: Arc::new(Principal::admin("auth-disabled")),
        }))
    }
}

/// The authenticated caller of a request (none on public routes).
#[derive(Clone, Default)]
pub(crate) struct Caller(pub(crate) Option<Arc<Principal>>);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or_default())
    }
}

impl Caller {
    /// The principal.
    pub(crate) fn principal(&self) -> Option<&Principal> {
        self.0.as_deref()
    }

    /// The agent's id, when the caller is an agent.
    pub(crate) fn agent_id(&self) -> Option<&str> {
        self.principal().and_then(Principal::agent_id)
    }

    /// Refuses an agent acting on another agent's `id`.
    pub(crate) fn require_self_or_staff(&self, id: &str, what: &str) -> Result<(), ApiError> {
        match self.agent_id() {
            Some(me) if me != id => Err(ApiError::forbidden(format!(
                "agent {me} may not {what} agent {id}; an agent acts only on itself"
            ))),
            _ => Ok(()),
        }
    }

    /// Refuses agents outright (`what` says what they tried).
    pub(crate) fn require_not_agent(&self, what: &str) -> Result<(), ApiError> {
        match self.agent_id() {
            Some(me) => Err(ApiError::forbidden(format!(
                "agent {me} may not {what}; this needs an operator or admin"
            ))),
            None => Ok(()),
        }
    }

    /// Refuses a publish on `topic` outside the caller's ACL.
    pub(crate) fn may_publish(&self, topic: &str) -> Result<(), ApiError> {
        match self.principal() {
            Some(p) => p.may_publish(topic).map_err(ApiError::forbidden),
            None => Ok(()),
        }
    }

    /// Refuses a subscription to `pattern` outside the caller's ACL.
    pub(crate) fn may_subscribe(&self, pattern: &switchboard_bus::Pattern) -> Result<(), ApiError> {
        match self.principal() {
            Some(p) => p.may_subscribe(pattern).map_err(ApiError::forbidden),
            None => Ok(()),
        }
    }

    /// Refuses a subscription to any of `patterns` (all topics when empty)
    /// outside the caller's ACL.
    pub(crate) fn may_subscribe_all(
        &self,
        patterns: &[switchboard_bus::Pattern],
    ) -> Result<(), ApiError> {
        if self.agent_id().is_none() {
            return Ok(());
        }
        if patterns.is_empty() {
            let all = switchboard_bus::Pattern::parse(">")
                .map_err(|e| ApiError::internal(format!("the pattern '>': {e}")))?;
            return self.may_subscribe(&all);
        }
        patterns.iter().try_for_each(|p| self.may_subscribe(p))
    }

    /// Refuses an agent the use of a consumer group whose topics its ACL
    /// does not cover.
    pub(crate) async fn may_use_group(
        &self,
        groups: &switchboard_bus::groups::Groups,
        name: &str,
    ) -> Result<(), ApiError> {
        if self.agent_id().is_none() {
            return Ok(());
        }
        let patterns = groups.patterns(name).await?;
        self.may_subscribe_all(&patterns)
    }

    /// Checks an event an agent publishes against its ACL, and stamps it
    /// with the agent as its `sourceagent` (which it may not claim to be
    /// another agent). A sealed message (its `datacontenttype` says so) is
    /// checked too: well formed, sent by the agent it names, signed by
    /// that agent's current keys, sealed to the recipient's current keys,
    /// within the window, and not seen before.
    pub(crate) fn stamp_publish(&self, auth: &Auth, event: &mut NewEvent) -> Result<(), ApiError> {
        self.may_publish(&event.topic)?;
        if let Some(me) = self.agent_id() {
            match event.extension("sourceagent") {
                Some(given) if given != me => {
                    return Err(ApiError::forbidden(format!(
                        "agent {me} may not publish as sourceagent {given:?}"
                    )));
                }
                Some(_) => {}
                None => {
                    event
                        .extensions
                        .insert("sourceagent".into(), Value::String(me.to_owned()));
                }
            }
        }
        if event.datacontenttype == switchboard_seal::CONTENT_TYPE {
            let sealed = sealed_data(event.data.as_ref().map(switchboard_bus::Data::value))?;
            self.check_sealed(auth, &sealed)?;
        }
        Ok(())
    }

    /// The hub's check of a sealed message this caller sends: only an
    /// agent sends one, as itself.
    pub(crate) fn check_sealed(
        &self,
        auth: &Auth,
        sealed: &switchboard_seal::SealedMessage,
    ) -> Result<(), ApiError> {
        let Some(me) = self.agent_id() else {
            let who = self.principal().map_or("an anonymous caller", |p| &*p.id);
            return Err(ApiError::forbidden(format!(
                "{who} is not an agent: sealed messages are sent by agents, signed with their own keys"
            )));
        };
        auth.check_sealed(sealed, me).map_err(ApiError::from)
    }

    /// Resolves when the caller's credential expires (never, for one that
    /// does not); long-lived streams end then.
    pub(crate) fn expiry(&self) -> impl std::future::Future<Output = ()> + Send + use<> {
        let at = self.principal().and_then(|p| p.expires_at);
        async move {
            match at {
                Some(ms) => {
                    let left = ms - chrono::Utc::now().timestamp_millis();
                    let left = std::time::Duration::from_millis(u64::try_from(left).unwrap_or(0));
                    tokio::time::sleep(left).await;
                }
                None => std::future::pending().await,
            }
        }
    }

    /// Whether the caller holds `scope`.
    pub(crate) fn can(&self, scope: Scope) -> bool {
        self.principal().is_some_and(|p| p.can(scope))
    }
}

/// The bearer credential of a request, if any.
fn credential<'r>(headers: &'r HeaderMap, query: Option<&'r str>, route: &str) -> Option<&'r str> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        return match v.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case("bearer ") => Some(v[7..].trim()),
            _ => Some(""),
        };
    }
    if QUERY_TOKEN_ROUTES.contains(&route) {
        return query?
            .split('&')
            .find_map(|kv| kv.strip_prefix("access_token="))
            .filter(|t| !t.is_empty());
    }
    None
}

/// The peer of a connection as the server's listener saw it: its address,
/// and the identity its verified client certificate names (mTLS). The
/// server's listeners report it as their address, and [`crate::Front`]
/// puts it on each request as `ConnectInfo<ClientAddr>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddr {
    /// The peer's address.
    pub addr: SocketAddr,
    /// The subject common name of its verified client certificate: the id
    /// of the agent it stands for.
    pub certificate: Option<Arc<str>>,
    /// Whether the connection is TLS.
    pub secure: bool,
}

impl ClientAddr {
    /// A peer at `addr` over plain TCP.
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            addr,
            certificate: None,
            secure: false,
        }
    }

    /// A peer at `addr` over TLS, with a verified certificate identity or
    /// none.
    pub fn tls(addr: SocketAddr, certificate: Option<Arc<str>>) -> Self {
        Self {
            addr,
            certificate,
            secure: true,
        }
    }
}

fn peer(req: &Request) -> (IpAddr, Option<Arc<str>>) {
    match req.extensions().get::<ConnectInfo<ClientAddr>>() {
        Some(c) => (c.0.addr.ip(), c.0.certificate.clone()),
        None => (IpAddr::V4(Ipv4Addr::UNSPECIFIED), None),
    }
}

const LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

fn rate_headers(resp: &mut Response, d: &Decision) {
    let h = resp.headers_mut();
    h.insert(LIMIT, HeaderValue::from(d.limit));
    h.insert(REMAINING, HeaderValue::from(d.remaining));
    h.insert(RESET, HeaderValue::from(d.reset_s));
}

/// The access layer, run on every matched route (a route layer), in
/// order: find the rule, authenticate, count against the rate limit,
/// authorize, run the handler under the body limit, add the rate limit
/// headers, audit. The answer carries the route's [`MatchedPath`], the
/// label of its metrics (`crate::middleware::Stack`).
#[derive(Clone)]
pub(crate) struct Guard {
    pub(crate) access: Access,
    /// Read by the extractors of the handler's body.
    pub(crate) body_limit: DefaultBodyLimit,
}

impl Around for Guard {
    fn around<S>(&self, inner: S, req: Request) -> impl Future<Output = Response> + Send + 'static
    where
        S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
        S::Future: Send + 'static,
    {
        let access = self.access.clone();
        let inner = self.body_limit.layer(inner);
        async move { guard(&access, inner, req).await }
    }
}

async fn guard<S>(access: &Access, inner: S, mut req: Request) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched
        .as_ref()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    let rule = access.policies.get(req.method(), &route);
    let mut resp = match admit(access, &Head::of(&req), route, rule).await {
        Ok(admitted) => {
            req.extensions_mut()
                .insert(Caller(admitted.principal.clone()));
            // A panic is answered here, as well as around the router, so
            // that its 500 is audited and counted under the route.
            let resp = crate::middleware::answered(inner, req).await;
            finish(access, admitted, resp).await
        }
        Err(resp) => resp,
    };
    if let Some(m) = matched {
        resp.extensions_mut().insert(m);
    }
    resp
}

/// A request let through: who it is, what the rate limit said, and what
/// the audit record needs.
pub(crate) struct Admitted {
    pub(crate) principal: Option<Arc<Principal>>,
    decision: Option<Decision>,
    rule: Rule,
    at: Where,
}

/// What access control reads of a request: borrowed from it, and never
/// the body (which may not be shared across threads).
pub(crate) struct Head<'r> {
    method: &'r Method,
    headers: &'r HeaderMap,
    query: Option<&'r str>,
    ip: IpAddr,
    certificate: Option<Arc<str>>,
    path: Arc<str>,
    correlation: Arc<str>,
}

impl<'r> Head<'r> {
    pub(crate) fn of(req: &'r Request) -> Self {
        let (ip, certificate) = peer(req);
        let (path, correlation) = match context::current() {
            Some(c) => (c.path, c.correlation_id),
            None => (Arc::from(req.uri().path()), Arc::from("")),
        };
        Self {
            method: req.method(),
            headers: req.headers(),
            query: req.uri().query(),
            ip,
            certificate,
            path,
            correlation,
        }
    }
}

/// Authenticates, rate-limits and authorizes a request to `route` under
/// `rule` (`None`: the route has no rule and is refused). A refusal is the
/// answer to send, already audited.
pub(crate) async fn admit(
    access: &Access,
    head: &Head<'_>,
    route: String,
    rule: Option<Rule>,
) -> Result<Admitted, Response> {
    let method = head.method.clone();
    let (ip, certificate) = (head.ip, head.certificate.clone());
    let (path, correlation) = (head.path.clone(), head.correlation.clone());
    let at = Where {
        ip,
        method: method.clone(),
        route,
        path,
        correlation,
    };
    let Some(rule) = rule else {
        tracing::error!(%method, route = %at.route, "a route without an authorization rule was called; refused");
        let resp =
            ApiError::forbidden("this route has no authorization rule, so nobody may call it")
                .into_response();
        return Err(audited(access, None, &at, resp).await);
    };

    let principal = if !access.auth.enabled() {
        Some(access.anyone.clone())
    } else if rule == Rule::Public {
        None
    } else {
        let given = credential(head.headers, head.query, &at.route);
        let refused = match (given, &certificate) {
            (None, None) => Err(AuthFailure {
                reason: "missing",
                message: String::new(),
            }),
            // A verified client certificate names its agent.
            (None, Some(agent)) => access.auth.authenticate_certificate(agent).map(Arc::new),
            (Some(c), cert) => access.auth.authenticate(c).and_then(|p| {
                match (p.agent_id(), cert) {
                    (Some(holder), Some(named)) if holder != &**named => Err(AuthFailure {
                        reason: "certificate_mismatch",
                        message: format!(
                            "a token of agent {holder} over a connection whose client certificate names agent {named}"
                        ),
                    }),
                    _ => Ok(p),
                }
            }),
        }
        .map_err(|f| {
            if f.reason == "missing" {
                access.metrics.auth_failure("missing");
                return ApiError::unauthorized(
                    "UNAUTHENTICATED",
                    "this route needs a credential: send Authorization: Bearer <token or API key>",
                );
            }
            note_failure(access, ip, &f);
            ApiError::unauthorized(failure_code(&f), f.message.clone())
        });
        match refused {
            Ok(p) => Some(p),
            Err(e) => {
                let resp = e.into_response();
                return Err(audited(access, None, &at, resp).await);
            }
        }
    };

    let quota = access.auth.config().rate_limits.quota(principal.as_deref());
    let decision = match quota {
        Some(q) => {
            let who = principal
                .as_ref()
                .map_or_else(|| ip.to_string(), |p| p.id.to_string());
            Some(
                access
                    .auth
                    .check_rate(&format!("{who} {method} {}", at.route), q)
                    .await,
            )
        }
        None => None,
    };
    if let Some(d) = decision.filter(|d| !d.allowed) {
        access.metrics.rate_limited();
        let mut resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMIT_EXCEEDED",
            format!(
                "too many requests to {method} {}: at most {} at once; try again in {} s",
                at.route, d.limit, d.retry_after_s
            ),
        )
        .with_retry_after(d.retry_after_s)
        .into_response();
        rate_headers(&mut resp, &d);
        return Err(resp);
    }

    if let (Rule::Scope(scope), Some(p)) = (rule, principal.as_deref())
        && !p.can(scope)
    {
        access.metrics.access_denied();
        let mut resp = ApiError::forbidden(format!(
            "{} ({} {}) lacks the scope {scope} that {method} {} needs",
            p.id,
            p.kind.as_str(),
            p.role,
            at.route
        ))
        .with_details(json!({ "required_scope": scope.as_str(), "scopes": p.scopes.to_string() }))
        .into_response();
        if let Some(d) = &decision {
            rate_headers(&mut resp, d);
        }
        return Err(audited(access, principal.as_deref(), &at, resp).await);
    }
    Ok(Admitted {
        principal,
        decision,
        rule,
        at,
    })
}

/// A sealed message from an event's data.
pub(crate) fn sealed_data(
    data: Option<&Value>,
) -> Result<switchboard_seal::SealedMessage, ApiError> {
    let data = data.ok_or_else(|| {
        ApiError::validation(vec![FieldError::new(
            "data",
            format!(
                "an event of type {} carries a sealed message",
                switchboard_seal::CONTENT_TYPE
            ),
        )])
    })?;
    serde_json::from_value(data.clone()).map_err(|e| {
        ApiError::validation(vec![FieldError::new(
            "data",
            format!("not a sealed message: {e}"),
        )])
    })
}

/// Routes every call of which is audited, reads included: they reveal
/// secrets.
const ALWAYS_AUDITED: &str = "/api/v1/secrets";

/// Adds the rate limit headers to an admitted request's answer and
/// audits it when it changed something or was refused.
pub(crate) async fn finish(access: &Access, admitted: Admitted, mut resp: Response) -> Response {
    let Admitted {
        principal,
        decision,
        rule,
        at,
    } = admitted;
    if let Some(d) = &decision {
        rate_headers(&mut resp, d);
    }
    let status = resp.status();
    let mutating = !matches!(at.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let data_plane = at.route.starts_with("/gw/")
        || at.route.starts_with("route:")
        || access
            .data_plane
            .contains(&(at.method.clone(), at.route.as_str()));
    let refused = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
        && !at.route.starts_with("/gw/")
        && !at.route.starts_with("route:");
    if refused {
        access.metrics.access_denied();
    }
    if status == StatusCode::UNAUTHORIZED && rule == Rule::Public {
        // A public route that authenticates by itself (the token
        // endpoint, an inbound hook) refused a client: count it like a
        // refused token.
        let reason = resp
            .extensions()
            .get::<ErrorCode>()
            .map_or("invalid", |c| c.0);
        note_failure(
            access,
            at.ip,
            &AuthFailure {
                reason: if reason == "INVALID_CLIENT" {
                    "invalid_client"
                } else {
                    "invalid"
                },
                message: String::new(),
            },
        );
    }
    let sensitive = at.route.starts_with(ALWAYS_AUDITED);
    if refused || sensitive || (mutating && (!data_plane || access.audit_data_plane)) {
        record(access, entry(principal.as_deref(), &at, &resp)).await;
    }
    resp
}

/// Where a request came from and what it asked for, for the audit log.
struct Where {
    ip: IpAddr,
    method: Method,
    route: String,
    path: Arc<str>,
    correlation: Arc<str>,
}

fn failure_code(f: &AuthFailure) -> &'static str {
    match f.reason {
        "expired" => "TOKEN_EXPIRED",
        "revoked" => "TOKEN_REVOKED",
        _ => "INVALID_TOKEN",
    }
}

fn note_failure(access: &Access, ip: IpAddr, f: &AuthFailure) {
    access.metrics.auth_failure(f.reason);
    if let Some(count) = access.auth.note_failure(ip) {
        let window = access.auth.config().failure_window;
        tracing::warn!(%ip, count, "repeated authentication failures");
        let bus = access.bus.clone();
        let data = json!({
            "kind": "auth_failures",
            "severity": "warning",
            "source_ip": ip.to_string(),
            "failures": count,
            "window_seconds": window.as_secs(),
            "message": format!("{count} failed authentications from {ip} within {window:?}"),
        });
        let subject = ip.to_string();
        tokio::spawn(async move {
            let now = chrono::Utc::now().timestamp_millis();
            let event = NewEvent::hub("system.alert", "/switchboard/auth", &subject, now, data);
            if let Err(error) = bus.publish(vec![event]).await {
                tracing::warn!(%error, "could not publish the authentication alert");
            }
        });
    }
}

fn entry(principal: Option<&Principal>, at: &Where, resp: &Response) -> AuditEntry {
    AuditEntry {
        at: chrono::Utc::now().timestamp_millis(),
        principal: principal.map_or_else(|| "anonymous".to_owned(), |p| p.id.to_string()),
        principal_kind: principal
            .map_or("anonymous", |p| p.kind.as_str())
            .to_owned(),
        action: format!("{} {}", at.method, at.route),
        resource: at.path.to_string(),
        outcome: resp.status().as_u16(),
        reason: resp
            .extensions()
            .get::<ErrorCode>()
            .map_or_else(String::new, |c| c.0.to_owned()),
        source: at.ip.to_string(),
        correlation_id: at.correlation.to_string(),
    }
}

/// Audits a refusal made before the handler ran.
async fn audited(
    access: &Access,
    principal: Option<&Principal>,
    at: &Where,
    resp: Response,
) -> Response {
    record(access, entry(principal, at, &resp)).await;
    resp
}

async fn record(access: &Access, entry: AuditEntry) {
    if let Err(error) = access.auth.audit().record(entry).await {
        access.metrics.audit_failure();
        tracing::error!(%error, "an audit record was lost");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_route_has_a_rule() {
        assert_eq!(crate::policy_problems(), Vec::<String>::new());
    }

    #[test]
    fn a_route_without_a_rule_is_reported_and_has_none() {
        let doc: utoipa::openapi::OpenApi = serde_json::from_value(json!({
            "openapi": "3.1.0",
            "info": {"title": "t", "version": "1"},
            "paths": {
                "/open": {"get": {"responses": {}, "security": [{}]}},
                "/scoped": {"post": {"responses": {}, "security": [{"bearer": ["tasks:write"]}]}},
                "/any": {"get": {"responses": {}, "security": [{"bearer": []}]}},
                "/forgotten": {"delete": {"responses": {}}},
                "/typo": {"get": {"responses": {}, "security": [{"bearer": ["task:write"]}]}},
            }
        }))
        .expect("doc");
        let (p, problems) = Policies::from_openapi(&doc);
        assert_eq!(p.get(&Method::GET, "/open"), Some(Rule::Public));
        assert_eq!(
            p.get(&Method::POST, "/scoped"),
            Some(Rule::Scope(Scope::TasksWrite))
        );
        assert_eq!(p.get(&Method::GET, "/any"), Some(Rule::Authenticated));
        assert_eq!(p.get(&Method::DELETE, "/forgotten"), None);
        assert_eq!(p.get(&Method::GET, "/typo"), None);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("/forgotten") || problems[1].contains("/forgotten"));
    }
}
