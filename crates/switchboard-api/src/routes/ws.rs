//! `GET /ws`: the WebSocket protocol. One JSON object per text frame.
//!
//! Client to hub (`op`):
//! - `subscribe`: `{"op": "subscribe", "id": "s1", "topics": ["task.>"],
//!   "filter": {...}, "after": 41 | "from_time": "2026-…Z"}`; answered
//!   `{"op": "subscribed", "id": "s1"}`, then `{"op": "event", "sub": "s1",
//!   "event": {CloudEvent}}` for each match, in offset order. With `after`
//!   or `from_time` the log is replayed first, so a client that reconnects
//!   resumes after the last offset it processed, with nothing missed.
//! - `unsubscribe`: `{"op": "unsubscribe", "id": "s1"}` → `unsubscribed`.
//! - `publish`: `{"op": "publish", "ref": "r1", "event": {…}}` or
//!   `"events": [...]` → `{"op": "published", "ref": "r1", "events":
//!   [{"id", "topic", "offset"}]}` once durable. With `"transient": true`
//!   the events are not logged: they are handed at once to the live
//!   subscriptions that match (no offset, no replay, no consumer group, at
//!   most once) and answered `[{"id", "topic", "delivered_to"}]`; with
//!   `"quiet": true` as well, they are not answered unless refused (an
//!   error frame), as a NATS core publish is not: a `ping` answered
//!   `pong` then tells that every frame before it was handled.
//! - `consume`: `{"op": "consume", "id": "c1", "group": "billing",
//!   "max_in_flight": 16, "priority": 0}` attaches this connection to a
//!   consumer group (`PUT /api/v1/groups/{name}`) → `{"op": "consuming",
//!   "id": "c1"}`, then `{"op": "delivery", "sub": "c1", "group": "billing",
//!   "offset": 42, "attempt": 1, "deadline": "…Z", "event": {CloudEvent}}`,
//!   never more than `max_in_flight` unacknowledged. Consumers with a higher
//!   `priority` are served first. `unsubscribe` detaches; what the consumer
//!   held unacknowledged then counts as a failed delivery.
//! - `ack`: `{"op": "ack", "group": "billing", "offset": 42}` (or
//!   `"offsets": [..]`); silent when done. `nack` takes the same plus
//!   `"error"` and `"delay_ms"`: the event is delivered again after the
//!   group's backoff (or the delay), or dead-lettered after
//!   `max_deliveries`. `in_progress` restarts the ack deadline. An offset
//!   that is not pending is answered with an error frame `NOT_PENDING`.
//! - `ping` → `pong`.
//!
//! Anything wrong with a frame (not JSON, unknown `op`, bad fields) is
//! answered `{"op": "error", "ref": …, "code": …, "message": …, "errors":
//! [{"field", "reason"}]}` and the connection stays open. The hub sends a
//! WebSocket ping every `ws.heartbeat_interval` (30 s) and closes a
//! connection that has sent nothing for two intervals (close code 1001).
//! A frame over `http.max_body_bytes` closes the connection (1009). On
//! shutdown the hub closes every connection with 1001.
//!
//! The upgrade request authenticates (`Authorization: Bearer`, or
//! `?access_token=` for browsers) and needs `events:subscribe`; publishing
//! needs `events:publish`. An agent's subscriptions, publishes and groups
//! are checked against its topic ACL; a refusal is an error frame
//! (`FORBIDDEN`) and the connection stays. When the caller's token expires
//! the hub closes the connection (1008); reconnect with a fresh token and
//! resume with `after`.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use futures_util::stream::{FuturesOrdered, FuturesUnordered, SplitSink};
use futures_util::{FutureExt, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value, json};
use switchboard_bus::groups::{ConsumerSpec, Groups, Outcome};
use switchboard_bus::{Bus, BusError, Filter, Pattern, Start, SubscriptionSpec};
use switchboard_core::FieldErrors;
use switchboard_wire::PublishEvent;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::access::Caller;
use crate::convert;
use crate::error::ApiError;
use crate::state::{ApiConfig, AppState};

/// Frames written to the socket at once before a flush: a subscriber
/// that is behind gets its events in few writes, not one each. A
/// subscription whose events cannot be written (the client reads too
/// slowly) fills its own buffer in the bus and is then caught up from the
/// log.
const WRITE_BATCH: usize = 64;
/// Bytes of frames the WebSocket gathers before writing them to the
/// socket; every batch is flushed, so this bounds a write, not a delay.
const WRITE_BUFFER: usize = 16 * 1024;
/// Frames read ahead of their answers (publishes waiting for a commit):
/// a client may pipeline this many before the hub stops reading.
const PIPELINE: usize = 256;

/// An answer to a frame, possibly still being worked out.
type Pending = Pin<Box<dyn Future<Output = Message> + Send>>;

/// An answer already known (or none).
fn now(msg: Option<Message>) -> Option<Pending> {
    msg.map(now_answer)
}

/// An answer already known.
fn now_answer(msg: Message) -> Pending {
    Box::pin(std::future::ready(msg))
}

/// The answer to a transient publish: each event with the number of
/// subscriptions it was handed to.
fn published_transient(
    reference: Option<&str>,
    delivered: impl Iterator<Item = (Arc<switchboard_bus::Event>, u32)>,
) -> Message {
    Message::Text(Utf8Bytes::from(convert::published_answer(
        reference,
        delivered.map(convert::delivered).collect(),
    )))
}

/// The refusal of a quiet publish that is not transient: a logged publish
/// is answered once durable, which is what its publisher waits for.
fn quiet_refused(reference: Option<&str>) -> Message {
    error_frame(
        reference,
        "VALIDATION_FAILED",
        "the events were refused; none was published",
        json!([{"field": "quiet", "reason": "needs \"transient\": true; a logged publish is answered once durable"}]),
    )
}

/// Subscriptions one connection may hold.
const MAX_SUBSCRIPTIONS: usize = 64;

/// Open a WebSocket; the protocol is described in this module's docs and in
/// the README.
#[utoipa::path(
    get,
    path = "/ws",
    security(("bearer" = ["events:subscribe"])),
    tag = "events",
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket upgrade request"),
    )
)]
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    caller: Caller,
    extensions: axum::http::Extensions,
    ws: WebSocketUpgrade,
) -> Response {
    let cfg = state.config.clone();
    let origin = Origin {
        source: extensions
            .get::<axum::extract::ConnectInfo<crate::access::ClientAddr>>()
            .map_or_else(String::new, |c| c.0.addr.ip().to_string()),
        correlation: crate::context::current()
            .map_or_else(String::new, |c| c.correlation_id.to_string()),
    };
    // Small buffers: a hub holds many idle connections, and tungstenite's
    // defaults (128 KiB each way) would dominate its memory.
    ws.read_buffer_size(1024)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + cfg.max_body_bytes * 2)
        .max_message_size(cfg.max_body_bytes)
        .max_frame_size(cfg.max_body_bytes)
        .on_upgrade(move |socket| {
            connection(
                socket,
                state.bus.clone(),
                state.groups.clone(),
                cfg,
                state.shutdown.clone(),
                caller,
                Guard {
                    auth: state.auth.clone(),
                    metrics: state.metrics.clone(),
                    origin,
                },
            )
        })
}

/// A `publish` frame, as `Request::Publish` reads it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishFrame {
    /// Only `publish`: any other op does not read as this frame.
    #[serde(rename = "op")]
    _op: PublishOp,
    #[serde(default, rename = "ref")]
    reference: Option<String>,
    #[serde(default)]
    event: Option<PublishEvent>,
    #[serde(default)]
    events: Option<Vec<PublishEvent>>,
    #[serde(default)]
    transient: bool,
    #[serde(default)]
    quiet: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum PublishOp {
    Publish,
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    Subscribe {
        id: String,
        #[serde(default)]
        topics: Vec<String>,
        #[serde(default)]
        filter: Option<Map<String, Value>>,
        #[serde(default)]
        after: Option<u64>,
        #[serde(default)]
        from_time: Option<chrono::DateTime<chrono::Utc>>,
    },
    Unsubscribe {
        id: String,
    },
    /// Read as a [`PublishFrame`] first; this reads only that the frame
    /// is one (an event's `data` cannot be read from serde's buffer).
    Publish {
        #[serde(default, rename = "ref")]
        _reference: IgnoredAny,
        #[serde(default, rename = "event")]
        _event: IgnoredAny,
        #[serde(default, rename = "events")]
        _events: IgnoredAny,
        #[serde(default, rename = "transient")]
        _transient: IgnoredAny,
        #[serde(default, rename = "quiet")]
        _quiet: IgnoredAny,
    },
    Consume {
        id: String,
        group: String,
        #[serde(default)]
        max_in_flight: Option<u32>,
        #[serde(default)]
        priority: Option<i32>,
    },
    Ack {
        group: String,
        #[serde(default)]
        offset: Option<u64>,
        #[serde(default)]
        offsets: Option<Vec<u64>>,
    },
    Nack {
        group: String,
        #[serde(default)]
        offset: Option<u64>,
        #[serde(default)]
        offsets: Option<Vec<u64>>,
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        delay_ms: Option<u64>,
    },
    InProgress {
        group: String,
        offset: u64,
    },
    Ping,
}

struct Conn {
    bus: Bus,
    /// Resolves when the last publish read from this connection has been
    /// queued: the next one queues after it.
    publish_order: Option<oneshot::Receiver<()>>,
    groups: Groups,
    /// Subscriptions and consumers, polled by the connection's own task.
    feeds: Feeds,
    /// Answers that come later, in no particular order (a refused
    /// acknowledgement).
    notices: FuturesUnordered<Pin<Box<dyn Future<Output = Option<Message>> + Send>>>,
    caller: Caller,
    /// Checks sealed messages; counts and audits refusals.
    guard: Guard,
    /// Groups this connection's caller was found allowed to use.
    allowed_groups: HashSet<String>,
    /// Transient publishes read and not yet handed over: the events of
    /// every frame read in one go are handed to subscriptions together,
    /// so a subscriber is woken once for them, not once per event.
    transient: Transient,
}

/// Transient publishes waiting to be handed over, in frame order.
#[derive(Default)]
struct Transient {
    events: Vec<Arc<switchboard_bus::Event>>,
    frames: Vec<Held>,
}

/// A transient publish frame held.
struct Held {
    reference: Option<String>,
    /// How many of [`Transient::events`] it holds.
    events: usize,
    /// Answered only if refused.
    quiet: bool,
}

/// Frames one subscription or consumer has for the client.
type FrameStream = Pin<Box<dyn Stream<Item = Message> + Send>>;

/// A connection's subscriptions and consumers by id, each a stream of
/// frames. They run on the connection's task (no task of their own), so
/// a subscriber costs one allocation and its frames no hand-over between
/// tasks; polled in turn, so a busy one does not starve the others.
///
/// A feed stays shut until the answer to the frame that made it
/// (`subscribed`, `consuming`) is written, so its first event never
/// overtakes that answer, even behind pipelined publishes still waiting
/// for their commit.
#[derive(Default)]
struct Feeds {
    entries: Vec<Feed>,
    /// Where the next poll starts.
    turn: usize,
    /// Answers handed to the writer so far, and answers written.
    answers_queued: usize,
    answers_written: usize,
}

struct Feed {
    id: String,
    /// Opens once this many answers are written: its own is the last.
    opens_at: usize,
    /// `None` once the stream has ended (the hub is shutting down); the id
    /// stays taken until the client unsubscribes.
    frames: Option<FrameStream>,
}

impl Feeds {
    fn contains(&self, id: &str) -> bool {
        self.entries.iter().any(|f| f.id == id)
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Adds a feed that opens once the answer to the frame being handled
    /// (the next answer queued) is written.
    fn insert(&mut self, id: String, frames: FrameStream) {
        self.entries.push(Feed {
            id,
            opens_at: self.answers_queued + 1,
            frames: Some(frames),
        });
    }

    /// Ends the subscription or consumer `id`; false when there is none.
    fn remove(&mut self, id: &str) -> bool {
        let Some(i) = self.entries.iter().position(|f| f.id == id) else {
            return false;
        };
        self.entries.swap_remove(i);
        true
    }

    /// An answer was handed to the writer.
    fn answer_queued(&mut self) {
        self.answers_queued += 1;
    }

    /// `n` answers were written: the feeds they answered open.
    fn answers_written(&mut self, n: usize) {
        self.answers_written += n;
    }
}

impl Stream for Feeds {
    type Item = Message;

    /// The next frame of any open feed; pending (never ended) when none
    /// has one.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        let n = self.entries.len();
        let written = self.answers_written;
        for k in 0..n {
            let i = (self.turn + k) % n;
            let feed = &mut self.entries[i];
            if feed.opens_at > written {
                continue;
            }
            let Some(frames) = feed.frames.as_mut() else {
                continue;
            };
            match frames.as_mut().poll_next(cx) {
                Poll::Ready(Some(m)) => {
                    self.turn = i + 1;
                    return Poll::Ready(Some(m));
                }
                Poll::Ready(None) => feed.frames = None,
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }
}

type Sink = SplitSink<WebSocket, Message>;

/// Writes `first` and whatever else `more` has ready (up to
/// [`WRITE_BATCH`] frames), then flushes once; how many frames it wrote.
async fn write_batch<S>(sink: &mut Sink, first: Message, more: &mut S) -> Result<usize, axum::Error>
where
    S: Stream<Item = Message> + Unpin,
{
    sink.feed(first).await?;
    let mut written = 1;
    while written < WRITE_BATCH {
        let Some(Some(m)) = more.next().now_or_never() else {
            break;
        };
        sink.feed(m).await?;
        written += 1;
    }
    sink.flush().await?;
    Ok(written)
}

fn text(v: &Value) -> Message {
    // Straight to bytes: `Value`'s `Display` goes through `fmt`, a
    // character at a time.
    Message::Text(Utf8Bytes::from(
        serde_json::to_string(v).unwrap_or_else(|_| "{}".to_owned()),
    ))
}

fn field_errors(errors: &[switchboard_core::FieldError]) -> Value {
    errors
        .iter()
        .map(|e| json!({"field": e.field, "reason": e.reason}))
        .collect()
}

fn error_frame(reference: Option<&str>, code: &str, message: &str, errors: Value) -> Message {
    text(&json!({
        "op": "error",
        "ref": reference,
        "code": code,
        "message": message,
        "errors": errors,
    }))
}

/// Where a connection came from, for the audit log.
struct Origin {
    source: String,
    correlation: String,
}

/// What a connection needs to check sealed messages and to count and
/// audit the operations it refuses, as the access layer does for routes.
struct Guard {
    auth: switchboard_auth::Auth,
    metrics: switchboard_telemetry::Metrics,
    origin: Origin,
}

impl Conn {
    /// The error frame for a refused operation; a refusal of permission
    /// (403) is counted and audited, as on any route.
    fn refused(&self, reference: Option<&str>, op: &str, e: &ApiError) -> Message {
        if e.status() == axum::http::StatusCode::FORBIDDEN {
            self.guard.metrics.access_denied();
            let p = self.caller.principal();
            let entry = switchboard_auth::AuditEntry {
                at: chrono::Utc::now().timestamp_millis(),
                principal: p.map_or_else(|| "anonymous".to_owned(), |p| p.id.to_string()),
                principal_kind: p.map_or("anonymous", |p| p.kind.as_str()).to_owned(),
                action: format!("WS {op}"),
                resource: "/ws".to_owned(),
                outcome: 403,
                reason: e.code().to_owned(),
                source: self.guard.origin.source.clone(),
                correlation_id: self.guard.origin.correlation.clone(),
            };
            let (auth, metrics) = (self.guard.auth.clone(), self.guard.metrics.clone());
            tokio::spawn(async move {
                if let Err(error) = auth.audit().record(entry).await {
                    metrics.audit_failure();
                    tracing::error!(%error, "an audit record was lost");
                }
            });
        }
        error_frame(reference, e.code(), e.detail(), Value::Null)
    }
}

async fn connection(
    socket: WebSocket,
    bus: Bus,
    groups: Groups,
    cfg: ApiConfig,
    shutdown: CancellationToken,
    caller: Caller,
    guard: Guard,
) {
    let (mut sink, mut stream) = socket.split();
    let expiry = caller.expiry();
    tokio::pin!(expiry);
    let mut conn = Conn {
        bus,
        publish_order: None,
        groups,
        feeds: Feeds::default(),
        notices: FuturesUnordered::new(),
        caller,
        guard,
        allowed_groups: HashSet::new(),
        transient: Transient::default(),
    };
    let beat = cfg.ws_heartbeat_interval;
    let mut ping = tokio::time::interval_at(Instant::now() + beat, beat);
    let mut last_heard = Instant::now();
    let mut replies: FuturesOrdered<Pending> = FuturesOrdered::new();
    'conn: loop {
        tokio::select! {
            // Answers go out in the order the frames came in.
            Some(reply) = replies.next(), if !replies.is_empty() => {
                // Answers already known go out in the same write.
                match write_batch(&mut sink, reply, &mut replies).await {
                    Ok(n) => conn.feeds.answers_written(n),
                    Err(_) => break,
                }
            }
            // Reading stops while too many answers are outstanding.
            frame = stream.next(), if replies.len() < PIPELINE => {
                last_heard = Instant::now();
                match frame {
                    Some(Ok(Message::Text(t))) => {
                        conn.handle(t.as_str(), &mut replies).await;
                        // After a transient publish, frames already read
                        // are handled now, so that the transient events
                        // among them go out together; any other frame
                        // hands them over and ends the run.
                        while !conn.transient.frames.is_empty()
                            && replies.len() + conn.transient.frames.len() < PIPELINE
                        {
                            match stream.next().now_or_never() {
                                Some(Some(Ok(Message::Text(t)))) => {
                                    conn.handle(t.as_str(), &mut replies).await;
                                }
                                Some(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                                Some(other) => {
                                    conn.flush_transient(&mut replies);
                                    if !end_of_burst(other, &mut sink).await {
                                        break 'conn;
                                    }
                                    break;
                                }
                                None => break,
                            }
                        }
                        conn.flush_transient(&mut replies);
                    }
                    other => {
                        if !end_of_burst(other, &mut sink).await {
                            break;
                        }
                    }
                }
            }
            Some(frame) = conn.feeds.next() => {
                if write_batch(&mut sink, frame, &mut conn.feeds).await.is_err() {
                    break;
                }
            }
            Some(notice) = conn.notices.next(), if !conn.notices.is_empty() => {
                if let Some(frame) = notice
                    && sink.send(frame).await.is_err()
                {
                    break;
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > beat * 2 {
                    let _ = sink.send(close(close_code::AWAY, "no frame from the client for two heartbeat intervals")).await;
                    break;
                }
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
            _ = shutdown.cancelled() => {
                let _ = sink.send(close(close_code::AWAY, "the hub is shutting down")).await;
                break;
            }
            () = &mut expiry => {
                let _ = sink.send(close(close_code::POLICY, "the token expired; reconnect with a fresh token")).await;
                break;
            }
        }
    }
}

/// A close frame.
fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

/// Deals with a read that is not a text frame; false when the connection
/// ends.
async fn end_of_burst(read: Option<Result<Message, axum::Error>>, sink: &mut Sink) -> bool {
    match read {
        Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => true,
        Some(Ok(Message::Binary(_))) => {
            let reply = error_frame(
                None,
                "UNSUPPORTED_FRAME",
                "send JSON in text frames",
                Value::Null,
            );
            sink.send(reply).await.is_ok()
        }
        Some(Ok(Message::Close(_))) | None => false,
        Some(Err(error)) => {
            // Oversized frames and protocol violations end here.
            tracing::debug!(%error, "websocket read failed");
            let _ = sink
                .send(close(close_code::SIZE, "frame too large or malformed"))
                .await;
            false
        }
    }
}

impl Conn {
    /// Handles one frame and queues its answer, if any, in `replies`. A
    /// transient publish is held in `self.transient` until
    /// [`Conn::flush_transient`]; every other frame first flushes those
    /// held, so answers and effects keep the frames' order.
    async fn handle(&mut self, frame: &str, replies: &mut FuturesOrdered<Pending>) {
        // Most frames of a busy publisher are publishes: read as one first,
        // without the buffer of the tagged `Request` (serde copies a whole
        // internally tagged object before reading it). Anything else is
        // read as a `Request`, whose errors name the problem; a bad
        // publish is told what kept it from reading as one.
        let not_publish = match serde_json::from_str::<PublishFrame>(frame) {
            Ok(publish) => {
                self.take_publish(publish, replies);
                return;
            }
            Err(e) => e,
        };
        self.flush_transient(replies);
        if let Some(reply) = self.answer(frame, not_publish).await {
            self.queue(replies, reply);
        }
    }

    /// Takes a publish: a logged one is queued, answered once durable; a
    /// transient one is checked now and held, to be handed over with the
    /// others read in one go (a refusal is answered in its place).
    fn take_publish(&mut self, p: PublishFrame, replies: &mut FuturesOrdered<Pending>) {
        if !p.transient {
            self.flush_transient(replies);
            let reply = match p.quiet {
                true => now_answer(quiet_refused(p.reference.as_deref())),
                false => self.publish(p.reference, p.event, p.events),
            };
            self.queue(replies, reply);
            return;
        }
        match self.check_transient(p.reference.as_deref(), p.event, p.events) {
            Ok(events) => {
                self.transient.frames.push(Held {
                    reference: p.reference,
                    events: events.len(),
                    quiet: p.quiet,
                });
                self.transient.events.extend(events);
            }
            Err(refused) => {
                self.flush_transient(replies);
                self.queue(replies, now_answer(refused));
            }
        }
    }

    fn queue(&mut self, replies: &mut FuturesOrdered<Pending>, reply: Pending) {
        replies.push_back(reply);
        self.feeds.answer_queued();
    }

    /// Hands the transient publishes held to subscriptions, and queues
    /// the answers of those not quiet.
    fn flush_transient(&mut self, replies: &mut FuturesOrdered<Pending>) {
        if self.transient.frames.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.transient.events);
        let counts = self.bus.deliver_transient(&events);
        let mut delivered = events.into_iter().zip(counts);
        for held in std::mem::take(&mut self.transient.frames) {
            let mine = delivered.by_ref().take(held.events);
            if held.quiet {
                mine.for_each(drop);
                continue;
            }
            let answer = published_transient(held.reference.as_deref(), mine);
            self.queue(replies, now_answer(answer));
        }
    }

    /// Checks a transient publish: the frame's events, the caller's
    /// rights, then the bus's checks.
    fn check_transient(
        &self,
        r: Option<&str>,
        event: Option<PublishEvent>,
        events: Option<Vec<PublishEvent>>,
    ) -> Result<Vec<Arc<switchboard_bus::Event>>, Message> {
        let events = self.prepare_publish(r, event, events)?;
        self.bus.check_transient(events).map_err(|e| match e {
            BusError::Invalid(errors) => error_frame(
                r,
                "VALIDATION_FAILED",
                "the events were refused; none was published",
                field_errors(&errors),
            ),
            other => {
                tracing::warn!(error = %other, "transient publish over websocket failed");
                error_frame(
                    r,
                    "PUBLISH_FAILED",
                    "the events could not be published",
                    Value::Null,
                )
            }
        })
    }

    /// Answers a frame that did not read as a publish (`not_publish`
    /// says why), as a `Request`: `None` when there is nothing to say,
    /// otherwise the answer.
    async fn answer(&mut self, frame: &str, not_publish: serde_json::Error) -> Option<Pending> {
        let req: Request = match serde_json::from_str(frame) {
            Ok(r) => r,
            Err(e) => {
                let code = if e.is_data() {
                    "INVALID_FRAME"
                } else {
                    "MALFORMED_JSON"
                };
                return now(Some(error_frame(None, code, &format!("{e}"), Value::Null)));
            }
        };
        if let Request::Ack { group, .. }
        | Request::Nack { group, .. }
        | Request::InProgress { group, .. } = &req
            && let Err(e) = self.allow_group(group).await
        {
            return now(Some(self.refused(None, "settle", &e)));
        }
        let reply = match req {
            Request::Ping => text(&json!({"op": "pong"})),
            Request::Subscribe {
                id,
                topics,
                filter,
                after,
                from_time,
            } => self.subscribe(id, topics, filter, after, from_time),
            Request::Unsubscribe { id } => match self.feeds.remove(&id) {
                true => text(&json!({"op": "unsubscribed", "id": id})),
                false => error_frame(
                    Some(&id),
                    "UNKNOWN_SUBSCRIPTION",
                    "no subscription with this id on this connection",
                    Value::Null,
                ),
            },
            // It did not read as a `PublishFrame`: that error says why.
            Request::Publish { .. } => error_frame(
                None,
                "INVALID_FRAME",
                &format!("{not_publish}"),
                Value::Null,
            ),
            Request::Consume {
                id,
                group,
                max_in_flight,
                priority,
            } => self.consume(id, group, max_in_flight, priority).await,
            Request::Ack {
                group,
                offset,
                offsets,
            } => return now(self.settle(group, offset, offsets, Outcome::Ack)),
            Request::Nack {
                group,
                offset,
                offsets,
                error,
                delay_ms,
            } => {
                let error = error.unwrap_or_else(|| "refused by the consumer".to_owned());
                let delay = delay_ms.map(std::time::Duration::from_millis);
                return now(self.settle(group, offset, offsets, Outcome::Nack { error, delay }));
            }
            Request::InProgress { group, offset } => {
                return now(self.settle(group, Some(offset), None, Outcome::InProgress));
            }
        };
        now(Some(reply))
    }

    /// Refuses the caller a group its ACL does not cover; remembers groups
    /// found allowed, so acknowledgements are not checked one by one.
    async fn allow_group(&mut self, group: &str) -> Result<(), ApiError> {
        if self.caller.agent_id().is_none() || self.allowed_groups.contains(group) {
            return Ok(());
        }
        self.caller.may_use_group(&self.groups, group).await?;
        self.allowed_groups.insert(group.to_owned());
        Ok(())
    }

    /// A new subscription's (or consumer's) id must be usable and free.
    fn check_sub_id(&self, id: &str, errs: &mut FieldErrors) {
        if id.is_empty() || id.len() > 128 {
            errs.push("id", "must be 1 to 128 characters");
        } else if self.feeds.contains(id) {
            errs.push("id", "is already a subscription on this connection");
        }
        if self.feeds.len() >= MAX_SUBSCRIPTIONS {
            errs.push(
                "id",
                format!("at most {MAX_SUBSCRIPTIONS} subscriptions per connection"),
            );
        }
    }

    async fn consume(
        &mut self,
        id: String,
        group: String,
        max_in_flight: Option<u32>,
        priority: Option<i32>,
    ) -> Message {
        let mut errs = FieldErrors::new();
        self.check_sub_id(&id, &mut errs);
        if let Err(errors) = errs.finish() {
            return error_frame(
                Some(&id),
                "VALIDATION_FAILED",
                "the consumer was refused",
                field_errors(&errors),
            );
        }
        if let Err(e) = self.allow_group(&group).await {
            return self.refused(Some(&id), "consume", &e);
        }
        let defaults = ConsumerSpec::default();
        let spec = ConsumerSpec {
            priority: priority.unwrap_or(defaults.priority),
            max_in_flight: max_in_flight.unwrap_or(defaults.max_in_flight),
        };
        let consumer = match self.groups.consume(&group, spec).await {
            Ok(c) => c,
            Err(BusError::Invalid(errors)) => {
                return error_frame(
                    Some(&id),
                    "VALIDATION_FAILED",
                    "the consumer was refused",
                    field_errors(&errors),
                );
            }
            Err(BusError::NotFound { code, message }) => {
                return error_frame(Some(&id), code, &message, Value::Null);
            }
            Err(_) => {
                return error_frame(
                    Some(&id),
                    "UNAVAILABLE",
                    "the group cannot take consumers now; try again",
                    Value::Null,
                );
            }
        };
        let state = (consumer, id.clone());
        let frames = futures_util::stream::unfold(state, |(mut consumer, sub_id)| async move {
            let d = consumer.next().await?;
            let frame = convert::delivery_frame(&sub_id, &d);
            Some((Message::Text(Utf8Bytes::from(frame)), (consumer, sub_id)))
        });
        self.feeds.insert(id.clone(), Box::pin(frames));
        text(&json!({"op": "consuming", "id": id, "group": group}))
    }

    /// Settles each offset without holding up the connection; silent
    /// unless something was refused, which is reported in an error frame
    /// once known.
    fn settle(
        &mut self,
        group: String,
        offset: Option<u64>,
        offsets: Option<Vec<u64>>,
        outcome: Outcome,
    ) -> Option<Message> {
        let list = match (offset, offsets) {
            (Some(o), None) => vec![o],
            (None, Some(l)) if !l.is_empty() && l.len() <= 1000 => l,
            _ => {
                return Some(error_frame(
                    None,
                    "VALIDATION_FAILED",
                    "give offset or offsets (1 to 1000)",
                    json!([{"field": "offset", "reason": "give offset or offsets (1 to 1000), not both or neither"}]),
                ));
            }
        };
        let groups = self.groups.clone();
        self.notices.push(Box::pin(async move {
            let frame = match groups.settle_many(&group, list.clone(), outcome).await {
                Ok(results) => {
                    let refused: Vec<u64> = list
                        .into_iter()
                        .zip(results)
                        .filter(|(_, r)| r.is_err())
                        .map(|(o, _)| o)
                        .collect();
                    if refused.is_empty() {
                        return None;
                    }
                    text(&json!({
                        "op": "error",
                        "ref": null,
                        "code": "NOT_PENDING",
                        "message": "these offsets are not pending in the group (acknowledged, dead-lettered, past their deadline, or never delivered)",
                        "group": group,
                        "offsets": refused,
                    }))
                }
                Err(BusError::NotFound { code, message }) => {
                    error_frame(None, code, &message, Value::Null)
                }
                Err(_) => error_frame(
                    None,
                    "UNAVAILABLE",
                    "the group cannot settle now; try again",
                    Value::Null,
                ),
            };
            Some(frame)
        }));
        None
    }

    fn subscribe(
        &mut self,
        id: String,
        topics: Vec<String>,
        filter: Option<Map<String, Value>>,
        after: Option<u64>,
        from_time: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Message {
        let mut errs = FieldErrors::new();
        self.check_sub_id(&id, &mut errs);
        let mut patterns = Vec::new();
        for (i, t) in topics.iter().enumerate() {
            match Pattern::parse(t) {
                Ok(p) => patterns.push(p),
                Err(r) => errs.push(format!("topics[{i}]"), r),
            }
        }
        let filter = match filter.as_ref().map(Filter::parse).transpose() {
            Ok(f) => f.unwrap_or_default(),
            Err(r) => {
                errs.push("filter", r);
                Filter::default()
            }
        };
        if after.is_some() && from_time.is_some() {
            errs.push("after", "give after or from_time, not both");
        }
        if errs.is_empty()
            && let Err(e) = self.caller.may_subscribe_all(&patterns)
        {
            return self.refused(Some(&id), "subscribe", &e);
        }
        if let Err(errors) = errs.finish() {
            return error_frame(
                Some(&id),
                "VALIDATION_FAILED",
                "the subscription was refused",
                json!(
                    errors
                        .iter()
                        .map(|e| json!({"field": e.field, "reason": e.reason}))
                        .collect::<Vec<_>>()
                ),
            );
        }
        let start = match (after, from_time) {
            (Some(o), _) => Start::After(o),
            (None, Some(t)) => Start::Time(t.timestamp_millis()),
            (None, None) => Start::Now,
        };
        let sub = self.bus.subscribe(SubscriptionSpec {
            patterns,
            filter,
            start,
        });
        // The event's JSON is rendered once and shared by every
        // subscriber; only the frame around it is made here.
        let head = format!(
            r#"{{"op":"event","sub":{},"event":"#,
            Value::String(id.clone())
        );
        let frames = futures_util::stream::unfold((sub, head), |(mut sub, head)| async move {
            let e = sub.next().await.ok()?;
            let body = convert::cloud_event_json(&e);
            let mut frame = String::with_capacity(head.len() + body.len() + 1);
            frame.push_str(&head);
            frame.push_str(&body);
            frame.push('}');
            Some((Message::Text(Utf8Bytes::from(frame)), (sub, head)))
        });
        self.feeds.insert(id.clone(), Box::pin(frames));
        text(&json!({"op": "subscribed", "id": id}))
    }

    /// Checks a publish now; the answer comes once the events are durable.
    fn publish(
        &mut self,
        reference: Option<String>,
        event: Option<PublishEvent>,
        events: Option<Vec<PublishEvent>>,
    ) -> Pending {
        match self.prepare_publish(reference.as_deref(), event, events) {
            Err(refused) => Box::pin(std::future::ready(refused)),
            Ok(converted) => {
                // Queued now, in frame order; answered when durable.
                let bus = self.bus.clone();
                let (queued, in_order) = oneshot::channel::<()>();
                let previous = self.publish_order.replace(in_order);
                Box::pin(async move {
                    let r = reference.as_deref();
                    if let Some(prev) = previous {
                        let _ = prev.await;
                    }
                    let submitted = bus.submit(converted).await;
                    drop(queued);
                    let published = match submitted {
                        Ok(publishing) => publishing.await,
                        Err(e) => Err(e),
                    };
                    match published {
                        Ok(stored) => {
                            Message::Text(Utf8Bytes::from(convert::published_frame(r, &stored)))
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "publish over websocket failed");
                            error_frame(
                                r,
                                "PUBLISH_FAILED",
                                "the events could not be stored; try again",
                                Value::Null,
                            )
                        }
                    }
                })
            }
        }
    }

    fn prepare_publish(
        &self,
        r: Option<&str>,
        event: Option<PublishEvent>,
        events: Option<Vec<PublishEvent>>,
    ) -> Result<Vec<switchboard_bus::NewEvent>, Message> {
        let given = match (event, events) {
            (Some(e), None) => vec![e],
            (None, Some(es)) => es,
            _ => {
                return Err(error_frame(
                    r,
                    "VALIDATION_FAILED",
                    "give event or events",
                    json!([{"field": "event", "reason": "give event or events, not both or neither"}]),
                ));
            }
        };
        if !self.caller.can(switchboard_auth::Scope::EventsPublish) {
            return Err(self.refused(
                r,
                "publish",
                &ApiError::forbidden("publishing needs the scope events:publish"),
            ));
        }
        let mut events = convert::publish_batch(given).map_err(|errors| {
            error_frame(
                r,
                "VALIDATION_FAILED",
                "the events were refused; none was published",
                field_errors(&errors),
            )
        })?;
        for e in &mut events {
            self.caller
                .stamp_publish(&self.guard.auth, e)
                .map_err(|e| self.refused(r, "publish", &e))?;
        }
        Ok(events)
    }
}
