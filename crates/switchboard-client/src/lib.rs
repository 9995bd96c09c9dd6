//! A typed client for Switchboard's HTTP API, used by the CLI, the tests and
//! the benchmarks, and by agents written in Rust.
//!
//! ```no_run
//! # async fn demo() -> Result<(), switchboard_client::ClientError> {
//! let hub = switchboard_client::Client::new("http://127.0.0.1:7878")?;
//! let page = hub.list_agents(&Default::default()).await?;
//! println!("{} agents", page.total);
//! # Ok(()) }
//! ```

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use switchboard_wire::{
    Agent, AgentList, CloudEvent, CreateGroupRequest, DeadLetter, DeadLetterCount, DeadLetterPage,
    EventPage, Group, GroupList, Health, HeartbeatAck, HeartbeatRequest, MessageSent,
    MetricsReport, Problem, PublishAck, PublishEvent, PullRequest, PullResponse,
    RegisterAgentRequest, ReplayRequest, RequestReply, SendMessageRequest, SettleRequest,
    SettleResponse,
};
use url::Url;

mod auth;
mod gateway;
pub mod sealed;
mod tasks;
mod vault;

pub use tasks::{TaskListQuery, WorkflowListQuery};

/// What can go wrong talking to a hub.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The hub URL is not usable.
    #[error("invalid hub URL {url:?}: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// No connection could be made, or it broke.
    #[error("cannot reach the hub at {url}")]
    Unreachable {
        /// The hub's base URL.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// The hub answered with an error.
    #[error("{} {}: {}", .0.status, .0.code, .0.detail)]
    Api(Box<Problem>),
    /// The hub answered something this client does not understand.
    #[error("unexpected answer from the hub ({status}): {detail}")]
    Unexpected {
        /// The HTTP status.
        status: u16,
        /// What was wrong with it.
        detail: String,
    },
}

impl ClientError {
    /// The problem body, when the hub answered with one.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Self::Api(p) => Some(p),
            _ => None,
        }
    }

    /// Whether the hub could not be reached at all.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }
}

/// Filters for [`Client::list_agents`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentListQuery {
    /// Only this type.
    pub agent_type: Option<String>,
    /// Only these statuses.
    pub statuses: Vec<String>,
    /// Only agents with all these capabilities.
    pub capabilities: Vec<String>,
    /// Page size.
    pub limit: Option<u32>,
    /// Continue from a `next_cursor`.
    pub cursor: Option<String>,
}

impl AgentListQuery {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if let Some(t) = &self.agent_type {
            p.push(("type", t.clone()));
        }
        for s in &self.statuses {
            p.push(("status", s.clone()));
        }
        for c in &self.capabilities {
            p.push(("capability", c.clone()));
        }
        if let Some(l) = self.limit {
            p.push(("limit", l.to_string()));
        }
        if let Some(c) = &self.cursor {
            p.push(("cursor", c.clone()));
        }
        p
    }
}

/// TLS settings of a [`Client`].
#[derive(Debug, Clone, Default)]
pub struct Tls {
    /// CA certificates (PEM) to trust besides the system's web roots.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate chain and its private key, in one PEM.
    pub identity_pem: Option<Vec<u8>>,
}

/// A connection to one hub. Cheap to clone; connections are pooled.
#[derive(Debug, Clone)]
pub struct Client {
    base: Url,
    http: reqwest::Client,
    /// Without an overall timeout: streams are endless.
    stream_http: reqwest::Client,
    /// Sent as `Authorization: Bearer` on every request.
    token: Option<std::sync::Arc<str>>,
}

impl Client {
    /// A client for the hub at `base` (`http://127.0.0.1:7878`).
    pub fn new(base: &str) -> Result<Self, ClientError> {
        let bad = |reason: String| ClientError::BadUrl {
            url: base.to_owned(),
            reason,
        };
        let mut url = Url::parse(base).map_err(|e| bad(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("must be http or https".into()));
        }
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        let (http, stream_http) = Self::http_clients(&Tls::default()).map_err(bad)?;
        Ok(Self {
            base: url,
            http,
            stream_http,
            token: None,
        })
    }

    fn http_clients(tls: &Tls) -> Result<(reqwest::Client, reqwest::Client), String> {
        let build = |timeout: Option<Duration>| {
            let mut b = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true);
            if let Some(t) = timeout {
                b = b.timeout(t);
            }
            if let Some(ca) = &tls.ca_pem {
                for cert in reqwest::Certificate::from_pem_bundle(ca)
                    .map_err(|e| format!("the CA certificate file is not PEM certificates: {e}"))?
                {
                    b = b.add_root_certificate(cert);
                }
            }
            if let Some(id) = &tls.identity_pem {
                let identity = reqwest::Identity::from_pem(id).map_err(|e| {
                    format!("the client certificate and key are not usable PEM: {e}")
                })?;
                b = b.identity(identity);
            }
            b.build().map_err(|e| e.to_string())
        };
        Ok((build(Some(Duration::from_secs(60)))?, build(None)?))
    }

    /// The same client, trusting `tls.ca_pem` (for a hub with a private or
    /// self-signed certificate) and presenting `tls.identity_pem` as its
    /// client certificate (mTLS).
    pub fn with_tls(mut self, tls: &Tls) -> Result<Self, ClientError> {
        let (http, stream_http) =
            Self::http_clients(tls).map_err(|reason| ClientError::BadUrl {
                url: self.base.to_string(),
                reason,
            })?;
        self.http = http;
        self.stream_http = stream_http;
        Ok(self)
    }

    /// The same client, sending `token` (an API key or a JWT) as its
    /// credential.
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.trim().into());
        self
    }

    /// The credential this client sends, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// The hub's base URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    fn url(&self, path: &str) -> Result<Url, ClientError> {
        self.base
            .join(path.trim_start_matches('/'))
            .map_err(|e| ClientError::BadUrl {
                url: path.to_owned(),
                reason: e.to_string(),
            })
    }

    pub(crate) async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<(StatusCode, T), ClientError> {
        let mut req = self.authorize(self.http.request(method, self.url(path)?).query(query));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<Problem>(&bytes) {
                Ok(p) => ClientError::Api(Box::new(p)),
                Err(_) => ClientError::Unexpected {
                    status: status.as_u16(),
                    detail: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                },
            });
        }
        let body = if bytes.is_empty() {
            b"null".as_slice()
        } else {
            &bytes
        };
        serde_json::from_slice(body)
            .map(|v| (status, v))
            .map_err(|e| ClientError::Unexpected {
                status: status.as_u16(),
                detail: e.to_string(),
            })
    }

    fn unreachable(&self, source: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            url: self.base.to_string(),
            source,
        }
    }

    /// Registers (or updates) an agent; `true` when it is new.
    pub async fn register_agent(
        &self,
        req: &RegisterAgentRequest,
    ) -> Result<(Agent, bool), ClientError> {
        let (status, agent) = self
            .send(Method::POST, "api/v1/agents/register", &[], Some(req))
            .await?;
        Ok((agent, status == StatusCode::CREATED))
    }

    /// Sends a heartbeat.
    pub async fn heartbeat(
        &self,
        id: &str,
        hb: &HeartbeatRequest,
    ) -> Result<HeartbeatAck, ClientError> {
        let path = format!("api/v1/agents/{}/heartbeat", encode(id));
        Ok(self.send(Method::POST, &path, &[], Some(hb)).await?.1)
    }

    /// One agent.
    pub async fn get_agent(&self, id: &str) -> Result<Agent, ClientError> {
        let path = format!("api/v1/agents/{}", encode(id));
        Ok(self.send::<(), _>(Method::GET, &path, &[], None).await?.1)
    }

    /// A page of agents.
    pub async fn list_agents(&self, q: &AgentListQuery) -> Result<AgentList, ClientError> {
        Ok(self
            .send::<(), _>(Method::GET, "api/v1/agents", &q.pairs(), None)
            .await?
            .1)
    }

    /// Every agent matching `q`, following cursors.
    pub async fn list_all_agents(&self, q: &AgentListQuery) -> Result<Vec<Agent>, ClientError> {
        let mut q = q.clone();
        let mut all = Vec::new();
        loop {
            let page = self.list_agents(&q).await?;
            all.extend(page.agents);
            match page.next_cursor {
                Some(c) => q.cursor = Some(c),
                None => return Ok(all),
            }
        }
    }

    /// Removes an agent.
    pub async fn remove_agent(&self, id: &str) -> Result<(), ClientError> {
        let path = format!("api/v1/agents/{}", encode(id));
        self.send::<(), serde_json::Value>(Method::DELETE, &path, &[], None)
            .await?;
        Ok(())
    }

    /// Creates a consumer group (or finds it with the same settings);
    /// `true` when it is new.
    pub async fn create_group(
        &self,
        name: &str,
        req: &CreateGroupRequest,
    ) -> Result<(Group, bool), ClientError> {
        let path = format!("api/v1/groups/{}", encode(name));
        let (status, group) = self.send(Method::PUT, &path, &[], Some(req)).await?;
        Ok((group, status == StatusCode::CREATED))
    }

    /// Every consumer group.
    pub async fn list_groups(&self) -> Result<GroupList, ClientError> {
        Ok(self
            .send::<(), _>(Method::GET, "api/v1/groups", &[], None)
            .await?
            .1)
    }

    /// One consumer group.
    pub async fn get_group(&self, name: &str) -> Result<Group, ClientError> {
        let path = format!("api/v1/groups/{}", encode(name));
        Ok(self.send::<(), _>(Method::GET, &path, &[], None).await?.1)
    }

    /// Deletes a consumer group.
    pub async fn delete_group(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("api/v1/groups/{}", encode(name));
        self.send::<(), serde_json::Value>(Method::DELETE, &path, &[], None)
            .await?;
        Ok(())
    }

    /// Takes up to `max` deliveries, waiting up to `wait` for the first.
    pub async fn pull(
        &self,
        group: &str,
        max: u32,
        wait: Duration,
    ) -> Result<PullResponse, ClientError> {
        let path = format!("api/v1/groups/{}/pull", encode(group));
        let body = PullRequest {
            max: Some(max),
            wait_ms: Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
        };
        Ok(self.send(Method::POST, &path, &[], Some(&body)).await?.1)
    }

    /// Acknowledges deliveries by offset.
    pub async fn ack(&self, group: &str, offsets: &[u64]) -> Result<SettleResponse, ClientError> {
        let path = format!("api/v1/groups/{}/ack", encode(group));
        let body = SettleRequest {
            offsets: offsets.to_vec(),
            ..Default::default()
        };
        Ok(self.send(Method::POST, &path, &[], Some(&body)).await?.1)
    }

    /// Refuses deliveries: they are delivered again after the backoff or
    /// `delay`, or dead-lettered.
    pub async fn nack(
        &self,
        group: &str,
        offsets: &[u64],
        error: Option<&str>,
        delay: Option<Duration>,
    ) -> Result<SettleResponse, ClientError> {
        let path = format!("api/v1/groups/{}/nack", encode(group));
        let body = SettleRequest {
            offsets: offsets.to_vec(),
            error: error.map(str::to_owned),
            delay_ms: delay.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        };
        Ok(self.send(Method::POST, &path, &[], Some(&body)).await?.1)
    }

    /// A page of a group's dead letters after `after`.
    pub async fn dead_letters(
        &self,
        group: &str,
        after: u64,
        limit: u32,
    ) -> Result<DeadLetterPage, ClientError> {
        let path = format!("api/v1/groups/{}/dead-letters", encode(group));
        let q = [("after", after.to_string()), ("limit", limit.to_string())];
        Ok(self.send::<(), _>(Method::GET, &path, &q, None).await?.1)
    }

    /// One dead letter.
    pub async fn dead_letter(&self, group: &str, offset: u64) -> Result<DeadLetter, ClientError> {
        let path = format!("api/v1/groups/{}/dead-letters/{offset}", encode(group));
        Ok(self.send::<(), _>(Method::GET, &path, &[], None).await?.1)
    }

    /// Replays dead letters (those at `offsets`, or all) into the group;
    /// how many.
    pub async fn replay_dead_letters(
        &self,
        group: &str,
        offsets: Option<Vec<u64>>,
    ) -> Result<u64, ClientError> {
        let path = format!("api/v1/groups/{}/dead-letters/replay", encode(group));
        let (_, n): (_, DeadLetterCount) = self
            .send(Method::POST, &path, &[], Some(&ReplayRequest { offsets }))
            .await?;
        Ok(n.count)
    }

    /// Purges dead letters (those at `offsets`, or all); how many.
    pub async fn purge_dead_letters(
        &self,
        group: &str,
        offsets: Option<Vec<u64>>,
    ) -> Result<u64, ClientError> {
        let path = format!("api/v1/groups/{}/dead-letters/purge", encode(group));
        let (_, n): (_, DeadLetterCount) = self
            .send(Method::POST, &path, &[], Some(&ReplayRequest { offsets }))
            .await?;
        Ok(n.count)
    }

    /// Sends a direct message to an agent's inbox.
    pub async fn send_message(&self, req: &SendMessageRequest) -> Result<MessageSent, ClientError> {
        Ok(self
            .send(Method::POST, "api/v1/messages", &[], Some(req))
            .await?
            .1)
    }

    /// Sends a request and waits for the reply (`TASK_TIMEOUT` when none
    /// comes within `timeout_ms`).
    pub async fn request(&self, req: &SendMessageRequest) -> Result<RequestReply, ClientError> {
        Ok(self
            .send(Method::POST, "api/v1/requests", &[], Some(req))
            .await?
            .1)
    }

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        Ok(self
            .send::<(), _>(Method::GET, "healthz", &[], None)
            .await?
            .1)
    }

    /// `GET /readyz`.
    pub async fn ready(&self) -> Result<Health, ClientError> {
        Ok(self
            .send::<(), _>(Method::GET, "readyz", &[], None)
            .await?
            .1)
    }

    /// `GET /api/v1/metrics`.
    pub async fn metrics(&self) -> Result<MetricsReport, ClientError> {
        Ok(self
            .send::<(), _>(Method::GET, "api/v1/metrics", &[], None)
            .await?
            .1)
    }
}

/// Where an event stream or read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum From {
    /// With the next event.
    #[default]
    Now,
    /// After this offset.
    After(u64),
    /// At this time (Unix milliseconds).
    Time(i64),
}

/// What to read or stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventQuery {
    /// Topic patterns (all topics when empty).
    pub topics: Vec<String>,
    /// Payload filter, as the JSON object the API takes.
    pub filter: Option<serde_json::Map<String, serde_json::Value>>,
    /// Where to start.
    pub from: From,
    /// At most this many (reads only).
    pub limit: Option<u32>,
}

impl EventQuery {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        for t in &self.topics {
            p.push(("topic", t.clone()));
        }
        if let Some(f) = &self.filter {
            p.push(("filter", serde_json::Value::Object(f.clone()).to_string()));
        }
        match self.from {
            From::Now => {}
            From::After(o) => p.push(("after", o.to_string())),
            From::Time(ms) => {
                if let Some(t) = chrono::DateTime::from_timestamp_millis(ms) {
                    p.push(("from_time", t.to_rfc3339()));
                }
            }
        }
        if let Some(l) = self.limit {
            p.push(("limit", l.to_string()));
        }
        p
    }
}

/// A live stream of events (Server-Sent Events).
pub struct EventStream {
    resp: reqwest::Response,
    buf: Vec<u8>,
    url: String,
}

impl EventStream {
    /// The next event; `None` when the hub closed the stream.
    pub async fn next(&mut self) -> Result<Option<CloudEvent>, ClientError> {
        loop {
            if let Some(end) = frame_end(&self.buf) {
                let frame: Vec<u8> = self.buf.drain(..end.0).collect();
                self.buf.drain(..end.1);
                if let Some(e) = parse_frame(&frame)? {
                    return Ok(Some(e));
                }
                continue;
            }
            match self.resp.chunk().await {
                Ok(Some(bytes)) => self.buf.extend_from_slice(&bytes),
                Ok(None) => return Ok(None),
                Err(source) => {
                    return Err(ClientError::Unreachable {
                        url: self.url.clone(),
                        source,
                    });
                }
            }
        }
    }
}

/// The end of the first complete SSE frame: (frame length, separator length).
fn frame_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The event in one SSE frame; `None` for comments and keep-alives.
fn parse_frame(frame: &[u8]) -> Result<Option<CloudEvent>, ClientError> {
    let text = String::from_utf8_lossy(frame);
    let mut data = String::new();
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(d.strip_prefix(' ').unwrap_or(d));
        }
    }
    if data.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&data)
        .map(Some)
        .map_err(|e| ClientError::Unexpected {
            status: 200,
            detail: format!("an event that is not a CloudEvent: {e}"),
        })
}

impl Client {
    /// Publishes events (one or a batch); resolves once they are durable.
    pub async fn publish(&self, events: &[PublishEvent]) -> Result<PublishAck, ClientError> {
        self.publish_with(events, &[]).await
    }

    /// Publishes transient events: handed at once to the live
    /// subscriptions that match, never logged (no offset, no replay, at
    /// most once). Each answer says how many subscriptions it reached.
    pub async fn publish_transient(
        &self,
        events: &[PublishEvent],
    ) -> Result<PublishAck, ClientError> {
        self.publish_with(events, &[("transient", "true".to_owned())])
            .await
    }

    async fn publish_with(
        &self,
        events: &[PublishEvent],
        query: &[(&str, String)],
    ) -> Result<PublishAck, ClientError> {
        let (_, ack) = if let [one] = events {
            self.send(Method::POST, "api/v1/events", query, Some(one))
                .await?
        } else {
            self.send(Method::POST, "api/v1/events", query, Some(&events))
                .await?
        };
        Ok(ack)
    }

    /// Reads the log.
    pub async fn read_events(&self, q: &EventQuery) -> Result<EventPage, ClientError> {
        Ok(self
            .send::<(), _>(Method::GET, "api/v1/events", &q.pairs(), None)
            .await?
            .1)
    }

    /// Opens a live stream; `last_event_id` resumes after that offset.
    pub async fn stream_events(
        &self,
        q: &EventQuery,
        last_event_id: Option<u64>,
    ) -> Result<EventStream, ClientError> {
        let url = self.url("api/v1/events/stream")?;
        let mut req = self.authorize(
            self.stream_http
                .get(url)
                .query(&q.pairs())
                .header("accept", "text/event-stream"),
        );
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
            return Err(match serde_json::from_slice::<Problem>(&bytes) {
                Ok(p) => ClientError::Api(Box::new(p)),
                Err(_) => ClientError::Unexpected {
                    status: status.as_u16(),
                    detail: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                },
            });
        }
        Ok(EventStream {
            resp,
            buf: Vec::new(),
            url: self.base.to_string(),
        })
    }
}

/// Percent-encodes one path segment.
pub(crate) fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
