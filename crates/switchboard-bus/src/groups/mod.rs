//! Consumer groups: durable named subscriptions with at-least-once
//! delivery.
//!
//! A group has topic patterns, a payload filter and a cursor into the log.
//! While consumers are attached, the group moves matching events after its
//! cursor into its *pending* set (at most `max_pending`), and hands each
//! pending event to one consumer at a time. An event stays pending until a
//! consumer acknowledges it; a negative acknowledgement, a passed ack
//! deadline or a consumer that goes away counts as a failed delivery, and
//! the event is delivered again after the group's backoff. After
//! `max_deliveries` deliveries it moves to the group's dead letters, from
//! where it can be inspected, replayed into the group, or purged.
//!
//! Competing consumers share a group's work; a consumer with a higher
//! priority is given events first while it has room, lower ones take the
//! overflow. Events with the same partition key are delivered in log order,
//! one in flight at a time; different keys proceed in parallel.
//!
//! Each group is run by one task (its `engine`) that owns the group's state
//! and writes each round's changes in one store call. The cursor, the
//! pending set with failure counts and due times, and the dead letters are
//! durable; which consumer holds what is not, so after a restart events
//! that were in flight are delivered again (a delivery cut short by a crash
//! is not counted as failed).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use switchboard_core::{Clock, FieldErrors, UnixMillis, ident};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{Bus, BusError, Event, Filter, Pattern};

mod backoff;
mod engine;
mod store;

pub use backoff::{Backoff, BackoffKind};
pub use store::{DeadLetter, GroupOp, GroupRecord, GroupStore, PendingItem};

use engine::{Cmd, Engine};

/// The most patterns one group may have.
pub const MAX_GROUP_TOPICS: usize = 64;
/// The most dead letters one listing returns.
pub const MAX_DEAD_LETTER_PAGE: u32 = 1000;

/// What a group delivers and how.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSpec {
    /// The group's name: an identifier, unique in the hub.
    pub name: String,
    /// Topic patterns; an event matching any of them is delivered.
    pub patterns: Vec<Pattern>,
    /// Payload filter in its JSON form (see [`Filter`]).
    pub filter: Map<String, Value>,
    /// How long a consumer has to acknowledge a delivery.
    pub ack_wait: Duration,
    /// Deliveries of one event before it is dead-lettered.
    pub max_deliveries: u32,
    /// Delay before each redelivery.
    pub backoff: Backoff,
    /// Events a group holds pending (delivered or waiting) at most; the
    /// log is read further only as they are acknowledged.
    pub max_pending: u32,
}

impl GroupSpec {
    /// A spec with the default policy.
    pub fn new(name: impl Into<String>, patterns: Vec<Pattern>) -> Self {
        Self {
            name: name.into(),
            patterns,
            filter: Map::new(),
            ack_wait: Duration::from_secs(30),
            max_deliveries: 5,
            backoff: Backoff::default(),
            max_pending: 1000,
        }
    }

    /// Checks every setting; errors are named as in the API's JSON.
    pub fn check(&self, errs: &mut FieldErrors) {
        if let Err(r) = ident::check(&self.name) {
            errs.push("name", r);
        }
        if self.patterns.is_empty() {
            errs.push("topics", "must hold at least one topic pattern");
        }
        if self.patterns.len() > MAX_GROUP_TOPICS {
            errs.push(
                "topics",
                format!("must hold at most {MAX_GROUP_TOPICS} patterns"),
            );
        }
        if let Err(r) = Filter::parse(&self.filter) {
            errs.push("filter", r);
        }
        let ms = |d: Duration| d.as_millis();
        if !(10..=3_600_000).contains(&ms(self.ack_wait)) {
            errs.push("ack_wait_ms", "must be from 10 ms to 1 hour");
        }
        if !(1..=1000).contains(&self.max_deliveries) {
            errs.push("max_deliveries", "must be from 1 to 1000");
        }
        if !(1..=100_000).contains(&self.max_pending) {
            errs.push("max_pending", "must be from 1 to 100000");
        }
        let b = &self.backoff;
        if ms(b.initial) > 86_400_000 {
            errs.push("backoff.initial_ms", "must be at most 24 hours");
        }
        if ms(b.max) > 86_400_000 {
            errs.push("backoff.max_ms", "must be at most 24 hours");
        } else if b.max < b.initial {
            errs.push("backoff.max_ms", "must not be less than initial_ms");
        }
        if !(0.0..=1.0).contains(&b.jitter) {
            errs.push("backoff.jitter", "must be from 0 to 1");
        }
    }
}

/// Where a new group's cursor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupStart {
    /// With the next event published.
    Now,
    /// With the oldest event in the log.
    Earliest,
    /// After this offset.
    After(u64),
}

/// How a consumer is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerSpec {
    /// Higher is served first.
    pub priority: i32,
    /// Deliveries held unacknowledged at most.
    pub max_in_flight: u32,
}

impl Default for ConsumerSpec {
    fn default() -> Self {
        Self {
            priority: 0,
            max_in_flight: 16,
        }
    }
}

/// The most deliveries one consumer may hold.
pub const MAX_IN_FLIGHT: u32 = 10_000;

/// One event handed to one consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The group delivering.
    pub group: Arc<str>,
    /// The event's offset: what the consumer acknowledges.
    pub offset: u64,
    /// 1 for the first delivery, 2 for the first redelivery, …
    pub attempt: u32,
    /// Acknowledge before this (Unix ms) or the event is delivered again.
    pub deadline: UnixMillis,
    /// The event.
    pub event: Arc<Event>,
}

/// What a consumer says about a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done: never deliver it again.
    Ack,
    /// Failed: deliver again after the backoff (or `delay`), or dead-letter
    /// it when it has had its deliveries.
    Nack {
        /// Why, kept with the event and shown in the dead letters.
        error: String,
        /// Overrides the backoff for this redelivery.
        delay: Option<Duration>,
    },
    /// Still working: the ack deadline starts again.
    InProgress,
}

/// A group's settings and state.
#[derive(Debug, Clone)]
pub struct GroupInfo {
    /// The settings.
    pub spec: GroupSpec,
    /// When it was created.
    pub created_at: UnixMillis,
    /// Every event up to this offset is pending, acknowledged or did not
    /// match.
    pub cursor: u64,
    /// Events pending (in flight or waiting).
    pub pending: u64,
    /// Events delivered and not yet acknowledged.
    pub in_flight: u64,
    /// Consumers attached.
    pub consumers: u64,
    /// Dead letters.
    pub dead_letters: u64,
}

/// The consumer groups of a hub. Cheap to clone.
#[derive(Clone)]
pub struct Groups {
    inner: Arc<Inner>,
}

struct Inner {
    bus: Bus,
    store: Arc<dyn GroupStore>,
    clock: Clock,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// The runtime the groups were opened on, where every engine runs
    /// (not the serving thread of the request that created its group).
    runtime: tokio::runtime::Handle,
    groups: Mutex<HashMap<String, Handle>>,
}

#[derive(Clone)]
struct Handle {
    spec: GroupSpec,
    created_at: UnixMillis,
    tx: mpsc::Sender<Cmd>,
}

/// Commands a group's engine may have waiting; senders wait beyond.
const COMMANDS: usize = 4096;

impl Groups {
    /// Loads every group from `store` and starts its engine; engines stop
    /// when `shutdown` is cancelled, after writing what they hold.
    pub async fn open(
        bus: Bus,
        store: Arc<dyn GroupStore>,
        clock: Clock,
        shutdown: CancellationToken,
    ) -> Result<Self, BusError> {
        let groups = Self {
            inner: Arc::new(Inner {
                bus,
                store,
                clock,
                shutdown,
                tracker: TaskTracker::new(),
                runtime: tokio::runtime::Handle::current(),
                groups: Mutex::new(HashMap::new()),
            }),
        };
        let records = groups.inner.store.load_groups().await?;
        let mut map = groups.inner.groups.lock().await;
        for rec in records {
            let pending = groups.inner.store.load_pending(&rec.spec.name).await?;
            let handle = groups.start(rec, pending);
            map.insert(handle.spec.name.clone(), handle);
        }
        drop(map);
        Ok(groups)
    }

    fn start(&self, rec: GroupRecord, pending: Vec<PendingItem>) -> Handle {
        let (tx, rx) = mpsc::channel(COMMANDS);
        let handle = Handle {
            spec: rec.spec.clone(),
            created_at: rec.created_at,
            tx,
        };
        let engine = Engine::new(
            rec,
            pending,
            self.inner.bus.clone(),
            self.inner.store.clone(),
            self.inner.clock.clone(),
        );
        self.inner.tracker.spawn_on(
            engine.run(rx, self.inner.shutdown.child_token()),
            &self.inner.runtime,
        );
        handle
    }

    /// Waits for every engine to stop (after shutdown).
    pub async fn closed(&self) {
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }

    /// Creates a group. Creating one that exists with the same settings
    /// is not an error (the answer's `bool` is false); with other settings
    /// it is a conflict.
    pub async fn create(
        &self,
        spec: GroupSpec,
        start: GroupStart,
    ) -> Result<(GroupInfo, bool), BusError> {
        let mut errs = FieldErrors::new();
        spec.check(&mut errs);
        errs.finish().map_err(BusError::Invalid)?;
        let mut map = self.inner.groups.lock().await;
        if let Some(h) = map.get(&spec.name) {
            if h.spec != spec {
                return Err(BusError::Conflict(format!(
                    "group {:?} exists with other settings; delete it first to change them",
                    spec.name
                )));
            }
            let h = h.clone();
            drop(map);
            return Ok((self.info(&h).await?, false));
        }
        let head = *self.inner.bus.log().head().borrow();
        let cursor = match start {
            GroupStart::Now => head,
            GroupStart::Earliest => 0,
            GroupStart::After(o) => o,
        };
        let rec = GroupRecord {
            spec,
            cursor,
            created_at: self.inner.clock.now_ms(),
        };
        self.inner.store.create_group(&rec).await?;
        let handle = self.start(rec, Vec::new());
        map.insert(handle.spec.name.clone(), handle.clone());
        drop(map);
        Ok((self.info(&handle).await?, true))
    }

    async fn handle(&self, name: &str) -> Result<Handle, BusError> {
        self.inner
            .groups
            .lock()
            .await
            .get(name)
            .cloned()
            .ok_or_else(|| group_not_found(name))
    }

    async fn ask<T>(
        &self,
        h: &Handle,
        make: impl FnOnce(oneshot::Sender<T>) -> Cmd,
    ) -> Result<T, BusError> {
        let (reply, answer) = oneshot::channel();
        h.tx.send(make(reply)).await.map_err(|_| BusError::Closed)?;
        answer.await.map_err(|_| BusError::Closed)
    }

    async fn info(&self, h: &Handle) -> Result<GroupInfo, BusError> {
        let stats = self.ask(h, |reply| Cmd::Stats { reply }).await?;
        let dead = self.inner.store.count_dead(&h.spec.name).await?;
        Ok(GroupInfo {
            spec: h.spec.clone(),
            created_at: h.created_at,
            cursor: stats.cursor,
            pending: stats.pending,
            in_flight: stats.in_flight,
            consumers: stats.consumers,
            dead_letters: dead,
        })
    }

    /// One group's settings and state.
    pub async fn get(&self, name: &str) -> Result<GroupInfo, BusError> {
        let h = self.handle(name).await?;
        self.info(&h).await
    }

    /// One group's topic patterns, without asking its engine (for access
    /// checks on every call).
    pub async fn patterns(&self, name: &str) -> Result<Vec<Pattern>, BusError> {
        Ok(self.handle(name).await?.spec.patterns.clone())
    }

    /// Every group, by name.
    pub async fn list(&self) -> Result<Vec<GroupInfo>, BusError> {
        let mut handles: Vec<Handle> = self.inner.groups.lock().await.values().cloned().collect();
        handles.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        let mut out = Vec::with_capacity(handles.len());
        for h in &handles {
            out.push(self.info(h).await?);
        }
        Ok(out)
    }

    /// Deletes a group with its pending events and dead letters; its
    /// consumers' streams end.
    pub async fn delete(&self, name: &str) -> Result<(), BusError> {
        let mut map = self.inner.groups.lock().await;
        let Some(h) = map.get(name).cloned() else {
            return Err(group_not_found(name));
        };
        // The engine stops before the rows go, so it writes nothing after.
        self.ask(&h, |reply| Cmd::Stop { reply }).await?;
        map.remove(name);
        self.inner.store.delete_group(name).await?;
        Ok(())
    }

    /// Attaches a consumer; deliveries arrive on the returned stream.
    /// Dropping it detaches the consumer, and what it held unacknowledged
    /// counts as failed.
    pub async fn consume(&self, name: &str, spec: ConsumerSpec) -> Result<Consumer, BusError> {
        check_consumer(&spec)?;
        let h = self.handle(name).await?;
        let (tx, rx) = mpsc::channel(spec.max_in_flight as usize);
        let id = self
            .ask(&h, |reply| Cmd::Attach { spec, tx, reply })
            .await?;
        Ok(Consumer {
            id,
            rx,
            commands: h.tx,
        })
    }

    /// Waits up to `wait` for deliveries and returns up to `max` of them;
    /// each must be acknowledged before its deadline like any other.
    pub async fn pull(
        &self,
        name: &str,
        max: u32,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
        let mut consumer = self
            .consume(
                name,
                ConsumerSpec {
                    priority: i32::MIN,
                    max_in_flight: max,
                },
            )
            .await?;
        let mut out = Vec::new();
        if let Ok(Some(first)) = tokio::time::timeout(wait, consumer.rx.recv()).await {
            out.push(first);
        }
        // Once detached nothing more is sent, so what is in the stream now
        // is everything this pull was given (at most `max`).
        out.extend(consumer.release().await);
        Ok(out)
    }

    /// Acknowledges, refuses or extends a delivery by its offset; resolves
    /// once the change is durable. Fails with [`BusError::NotPending`] when
    /// the event is not pending in the group (already acknowledged,
    /// dead-lettered, never delivered).
    pub async fn settle(&self, name: &str, offset: u64, outcome: Outcome) -> Result<(), BusError> {
        self.settle_many(name, vec![offset], outcome)
            .await?
            .pop()
            .unwrap_or(Err(BusError::Closed))
    }

    /// [`Groups::settle`] for many offsets at once: one answer per offset,
    /// in order, once the changes are durable.
    pub async fn settle_many(
        &self,
        name: &str,
        offsets: Vec<u64>,
        outcome: Outcome,
    ) -> Result<Vec<Result<(), BusError>>, BusError> {
        let h = self.handle(name).await?;
        self.ask(&h, |reply| Cmd::Settle {
            offsets,
            outcome,
            reply,
        })
        .await
    }

    /// The group's dead letters after `after`, oldest first.
    pub async fn dead_letters(
        &self,
        name: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, BusError> {
        self.handle(name).await?;
        Ok(self
            .inner
            .store
            .dead_letters(name, after, limit.clamp(1, MAX_DEAD_LETTER_PAGE))
            .await?)
    }

    /// One dead letter.
    pub async fn dead_letter(&self, name: &str, offset: u64) -> Result<DeadLetter, BusError> {
        self.handle(name).await?;
        self.inner
            .store
            .dead_letter(name, offset)
            .await?
            .ok_or_else(|| BusError::NotFound {
                code: "DEAD_LETTER_NOT_FOUND",
                message: format!("no dead letter at offset {offset} in group {name:?}"),
            })
    }

    /// Moves dead letters (those at `offsets`, or all) back into the
    /// group, to be delivered again with a fresh count; how many moved.
    pub async fn replay(&self, name: &str, offsets: Option<Vec<u64>>) -> Result<u64, BusError> {
        let h = self.handle(name).await?;
        self.ask(&h, |reply| Cmd::Replay { offsets, reply }).await?
    }

    /// Deletes dead letters (those at `offsets`, or all); how many went.
    pub async fn purge(&self, name: &str, offsets: Option<Vec<u64>>) -> Result<u64, BusError> {
        self.handle(name).await?;
        Ok(self.inner.store.purge_dead(name, offsets).await?)
    }
}

fn group_not_found(name: &str) -> BusError {
    BusError::NotFound {
        code: "GROUP_NOT_FOUND",
        message: format!("no consumer group named {name:?}"),
    }
}

fn check_consumer(spec: &ConsumerSpec) -> Result<(), BusError> {
    let mut errs = FieldErrors::new();
    if !(1..=MAX_IN_FLIGHT).contains(&spec.max_in_flight) {
        errs.push(
            "max_in_flight",
            format!("must be from 1 to {MAX_IN_FLIGHT}"),
        );
    }
    errs.finish().map_err(BusError::Invalid)
}

/// A consumer attached to a group.
pub struct Consumer {
    id: u64,
    rx: mpsc::Receiver<Delivery>,
    commands: mpsc::Sender<Cmd>,
}

impl Consumer {
    /// The next delivery; `None` once the group is deleted or the hub
    /// stops.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }

    /// Detaches without failing what this consumer holds (those
    /// deliveries stay valid until their deadlines); returns what was
    /// delivered to it and not yet taken.
    async fn release(mut self) -> Vec<Delivery> {
        let id = std::mem::take(&mut self.id);
        let (done, detached) = oneshot::channel();
        let sent = self
            .commands
            .send(Cmd::Detach {
                id,
                fail_in_flight: false,
                done: Some(done),
            })
            .await;
        if sent.is_ok() {
            let _ = detached.await;
        }
        let mut rest = Vec::new();
        while let Ok(d) = self.rx.try_recv() {
            rest.push(d);
        }
        rest
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if self.id != 0 {
            // If the queue is full, the engine notices the closed stream
            // at its next delivery and fails what this consumer held then.
            let _ = self.commands.try_send(Cmd::Detach {
                id: self.id,
                fail_in_flight: true,
                done: None,
            });
        }
    }
}
