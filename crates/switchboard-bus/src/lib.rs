//! The event bus: agents publish CloudEvents on topics, the hub appends
//! them to a durable log, and subscribers get them live or replayed.
//!
//! Layout:
//! - [`event`]: [`NewEvent`] (to publish) and [`Event`] (in the log).
//! - [`topic`]: topics, wildcard [`Pattern`]s and the [`PatternIndex`]
//!   trie that finds the subscriptions matching a topic.
//! - [`filter`]: payload [`Filter`]s.
//! - [`log`]: the [`EventLog`] trait storage backends implement.
//! - `subscription`: [`Subscription`], one subscriber's stream of events.
//! - [`groups`]: consumer groups: durable named subscriptions with acks,
//!   redelivery, dead letters, competing consumers and ordering by key.
//!
//! The log is the source of truth. Publishing appends and answers once the
//! events are durable; the [`Dispatcher`] tails the log and pushes each
//! new event to the matching live subscriptions, found through the index.
//! It is woken through [`EventLog::news`], only by commits that hold an
//! event some live subscription takes (and now and then, to keep up).
//! Each subscription has a bounded buffer: one that fills is marked
//! lagging and catches up by reading the log itself, so a slow subscriber
//! costs the hub a bounded amount of memory and never slows the others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use switchboard_core::{Clock, FieldErrors};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod error;
pub mod event;
pub mod filter;
pub mod groups;
pub mod log;
mod subscription;
pub mod topic;

pub use error::BusError;
pub use event::{Data, Event, NewEvent};
pub use filter::Filter;
pub use log::{EventLog, ReadFrom, Scheduled, Trimmed, Wanted};
pub use subscription::{Start, Subscription, SubscriptionSpec};
pub use topic::{Pattern, PatternIndex};

/// The most events in one publish.
pub const MAX_PUBLISH_BATCH: usize = 1000;
/// The most events one read returns.
pub const MAX_READ: u32 = 1000;

/// Settings of the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusConfig {
    /// Events buffered per live subscription before it is switched to
    /// catching up from the log.
    pub subscriber_buffer: usize,
    /// A publish that repeats an event's (source, id) within this window
    /// is acknowledged with the first one's offset and not stored again.
    pub dedup_window: Duration,
    /// What the log keeps.
    pub retention: Retention,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            subscriber_buffer: 1024,
            dedup_window: Duration::from_secs(120),
            retention: Retention::default(),
        }
    }
}

/// What the log keeps; by default, everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Events appended longer ago than this are removed.
    pub max_age: Option<Duration>,
    /// The oldest events are removed while the log holds more than this
    /// many bytes of events (attributes and data as stored).
    pub max_bytes: Option<u64>,
    /// Topics kept compacted: of the events with one partition key on one
    /// such topic, only the latest stays.
    pub compact: Vec<Pattern>,
    /// How often the rules are applied.
    pub interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age: None,
            max_bytes: None,
            compact: Vec::new(),
            interval: Duration::from_secs(30),
        }
    }
}

impl Retention {
    /// Whether any rule removes anything.
    pub fn is_active(&self) -> bool {
        self.max_age.is_some() || self.max_bytes.is_some() || !self.compact.is_empty()
    }
}

/// The worker that applies the retention rules to the log.
pub struct Retainer {
    bus: Bus,
}

impl Retainer {
    /// Runs until `shutdown`, applying the rules every `interval`.
    pub async fn run(self, shutdown: CancellationToken) {
        let shared = &self.bus.shared;
        let rules = &shared.config.retention;
        if !rules.is_active() {
            return;
        }
        let mut tick = tokio::time::interval(rules.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let cutoff = rules.max_age.map(|age| {
                shared.clock.now_ms() - i64::try_from(age.as_millis()).unwrap_or(i64::MAX / 2)
            });
            match shared
                .log
                .trim(cutoff, rules.max_bytes, &rules.compact)
                .await
            {
                Ok(t) if t.removed() > 0 => tracing::info!(
                    expired = t.expired,
                    over_size = t.over_size,
                    compacted = t.compacted,
                    "log trimmed"
                ),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "applying the log's retention failed"),
            }
        }
    }
}

/// The bus handle. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    shared: Arc<Shared>,
}

struct Shared {
    log: Arc<dyn EventLog>,
    clock: Clock,
    config: BusConfig,
    subs: Mutex<Subs>,
    /// Woken when events are held for later, so the scheduler looks again.
    scheduled: tokio::sync::Notify,
}

#[derive(Default)]
struct Subs {
    index: PatternIndex<u64>,
    entries: HashMap<u64, Live>,
    next_id: u64,
}

/// The dispatcher's side of a subscription.
struct Live {
    patterns: Vec<Pattern>,
    filter: Filter,
    tx: mpsc::Sender<Arc<Event>>,
    /// Set by the dispatcher when the buffer is full; the subscription
    /// clears it when it starts catching up from the log.
    lagging: Arc<AtomicBool>,
}

impl Bus {
    /// A bus over `log`.
    pub fn new(log: Arc<dyn EventLog>, config: BusConfig, clock: Clock) -> Self {
        let shared = Arc::new(Shared {
            log,
            clock,
            config,
            subs: Mutex::new(Subs::default()),
            scheduled: tokio::sync::Notify::new(),
        });
        // The log holds this test, so it holds the bus weakly.
        let bus = Arc::downgrade(&shared);
        shared.log.follow(Arc::new(move |events: &[Arc<Event>]| {
            bus.upgrade()
                .is_some_and(|shared| Bus { shared }.wanted(events))
        }));
        Self { shared }
    }

    fn subs(&self) -> MutexGuard<'_, Subs> {
        // Short critical sections, no await inside: a std mutex. A panic
        // elsewhere leaves the table usable.
        self.shared
            .subs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn log(&self) -> &dyn EventLog {
        self.shared.log.as_ref()
    }

    /// The worker that pushes new events to live subscriptions; run it
    /// once per hub.
    pub fn dispatcher(&self) -> Dispatcher {
        Dispatcher { bus: self.clone() }
    }

    /// How many subscriptions are open.
    pub fn subscriptions(&self) -> usize {
        self.subs().entries.len()
    }

    /// Checks and appends events, in order; resolves once they are durable.
    /// A repeat of an event published within `dedup_window` (same source
    /// and id) is answered with the first one and not stored again. An
    /// event with a later `deliverat` (or a `delayms`) is held, durably,
    /// and appended when due; its answer says when.
    pub async fn publish(&self, events: Vec<NewEvent>) -> Result<Vec<Accepted>, BusError> {
        self.submit(events).await?.await
    }

    /// [`Bus::publish`] in two steps: resolves once the events are checked
    /// and queued (in order after every publish submitted before it, so a
    /// publisher that submits one batch after another sees them logged in
    /// that order); the future it gives resolves once they are durable.
    pub async fn submit(&self, mut events: Vec<NewEvent>) -> Result<Publishing, BusError> {
        let mut errs = self.check(&events);
        let batch = events.len() > 1;
        let now = self.shared.clock.now_ms();
        let mut due = Vec::with_capacity(events.len());
        for (i, e) in events.iter_mut().enumerate() {
            e.time.get_or_insert(now);
            let at = e.take_schedule(now);
            if at.is_some_and(|t| t - now > event::MAX_SCHEDULE_AHEAD_MS) {
                let prefix = field_prefix(batch, i);
                errs.push(
                    format!("{prefix}{}", event::ext::DELIVER_AT),
                    "must be at most 30 days ahead",
                );
            }
            due.push(at);
        }
        errs.finish().map_err(BusError::Invalid)?;
        let window = i64::try_from(self.shared.config.dedup_window.as_millis()).unwrap_or(i64::MAX);
        if due.iter().all(Option::is_none) {
            let appending = self.log().enqueue(events, window).await?;
            return Ok(Box::pin(async move {
                Ok(appending.await?.into_iter().map(Accepted::Stored).collect())
            }));
        }
        // Held and immediate events go to their places; answers keep the
        // order published.
        let (mut now_events, mut later, mut later_due) = (Vec::new(), Vec::new(), Vec::new());
        for (e, at) in events.into_iter().zip(&due) {
            match at {
                Some(t) => {
                    later.push(e);
                    later_due.push(*t);
                }
                None => now_events.push(e),
            }
        }
        let mut held = self.log().schedule(later, later_due).await?.into_iter();
        self.shared.scheduled.notify_one();
        let appending = self.log().enqueue(now_events, window).await?;
        Ok(Box::pin(async move {
            let mut stored = appending.await?.into_iter();
            Ok(due
                .iter()
                .filter_map(|at| match at {
                    Some(_) => held.next().map(Accepted::Scheduled),
                    None => stored.next().map(Accepted::Stored),
                })
                .collect())
        }))
    }

    /// Checks events and hands them at once to the live subscriptions that
    /// match, without logging them: NATS core's semantics, for events whose
    /// loss costs less than their storage (telemetry, progress, presence).
    /// A transient event has no offset (it is 0) and is never replayed,
    /// deduplicated or delivered to a consumer group; a subscription that
    /// is behind, or catching up from the log, misses it (at most once).
    /// One publisher's transient events reach a subscription in the order
    /// published, but not in order with its logged events. Each event comes
    /// back with the number of subscriptions it was handed to.
    pub fn publish_transient(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<Vec<(Arc<Event>, u32)>, BusError> {
        let events = self.check_transient(events)?;
        let counts = self.deliver_transient(&events);
        Ok(events.into_iter().zip(counts).collect())
    }

    /// [`Bus::publish_transient`] in two steps, so that a publisher can
    /// hand over the events of several publishes at once: checks events
    /// (a delay or a delivery time is refused: a transient event is
    /// delivered at once) and gives them their transient form.
    pub fn check_transient(&self, events: Vec<NewEvent>) -> Result<Vec<Arc<Event>>, BusError> {
        let mut errs = self.check(&events);
        let batch = events.len() > 1;
        for (i, e) in events.iter().enumerate() {
            for name in [event::ext::DELIVER_AT, event::ext::DELAY_MS] {
                if e.extensions.contains_key(name) {
                    let prefix = field_prefix(batch, i);
                    errs.push(
                        format!("{prefix}{name}"),
                        "a transient event is delivered at once; publish it durably to delay it",
                    );
                }
            }
        }
        errs.finish().map_err(BusError::Invalid)?;
        let now = self.shared.clock.now_ms();
        Ok(events
            .into_iter()
            .map(|e| Arc::new(Event::new(e, 0, now)))
            .collect())
    }

    /// Hands checked transient events (see [`Bus::check_transient`]) to
    /// the live subscriptions that match, in order; how many each reached.
    pub fn deliver_transient(&self, events: &[Arc<Event>]) -> Vec<u32> {
        let mut keys = Vec::new();
        self.fan_out(events.iter(), &mut keys)
    }

    /// The errors of a batch of events to publish, each named (with its
    /// place in the batch when there are several).
    fn check(&self, events: &[NewEvent]) -> FieldErrors {
        let mut errs = FieldErrors::new();
        if events.is_empty() {
            errs.push("events", "must hold at least one event");
        }
        if events.len() > MAX_PUBLISH_BATCH {
            errs.push(
                "events",
                format!("must hold at most {MAX_PUBLISH_BATCH} events"),
            );
        }
        let batch = events.len() > 1;
        for (i, e) in events.iter().enumerate() {
            let prefix = field_prefix(batch, i);
            e.check(&prefix, &mut errs);
        }
        errs
    }

    /// The worker that applies `BusConfig::retention`; run it once per hub.
    pub fn retainer(&self) -> Retainer {
        Retainer { bus: self.clone() }
    }

    /// The worker that appends held events when they are due; run it once
    /// per hub.
    pub fn scheduler(&self) -> Scheduler {
        Scheduler { bus: self.clone() }
    }

    /// Events matching any of `patterns` (all, when empty) and `filter`,
    /// from `from`, at most `limit`. Scans a bounded stretch of the log;
    /// the second value is the offset to continue after.
    pub async fn read(
        &self,
        patterns: &[Pattern],
        filter: &Filter,
        from: ReadFrom,
        limit: u32,
    ) -> Result<(Vec<Event>, u64), BusError> {
        let limit = limit.clamp(1, MAX_READ);
        let mut out = Vec::new();
        let mut from = from;
        let mut cursor = match from {
            ReadFrom::After(o) => o,
            ReadFrom::Time(_) => 0,
        };
        // At most ten chunks, so one request cannot scan the whole log.
        for _ in 0..10 {
            let chunk = self.log().read(from, MAX_READ).await?;
            let full = chunk.len() == MAX_READ as usize;
            for e in chunk {
                cursor = e.offset;
                if matches(patterns, filter, &e) {
                    out.push(e);
                    if out.len() == limit as usize {
                        return Ok((out, cursor));
                    }
                }
            }
            if !full {
                break;
            }
            from = ReadFrom::After(cursor);
        }
        Ok((out, cursor))
    }

    /// Adds a live subscription; its id, its stream, its lagging flag and
    /// the head when it was added: it is owed the events after that one.
    fn register(
        &self,
        patterns: Vec<Pattern>,
        filter: Filter,
    ) -> (u64, mpsc::Receiver<Arc<Event>>, Arc<AtomicBool>, u64) {
        let (tx, rx) = mpsc::channel(self.shared.config.subscriber_buffer.max(1));
        let lagging = Arc::new(AtomicBool::new(false));
        let mut subs = self.subs();
        // Read under the lock `wanted` takes (see `EventLog::follow`).
        let head = *self.log().head().borrow();
        subs.next_id += 1;
        let id = subs.next_id;
        for p in &patterns {
            subs.index.insert(p, id);
        }
        subs.entries.insert(
            id,
            Live {
                patterns,
                filter,
                tx,
                lagging: lagging.clone(),
            },
        );
        (id, rx, lagging, head)
    }

    /// Whether a live subscription takes any of `events`: the test the log
    /// applies before waking the dispatcher.
    fn wanted(&self, events: &[Arc<Event>]) -> bool {
        // The log's commit must not wait behind a fan-out: while the table
        // is busy, the answer is yes (a wake is never wrong, only spent).
        let Ok(subs) = self.shared.subs.try_lock() else {
            return true;
        };
        if subs.entries.is_empty() {
            return false;
        }
        let mut keys = Vec::new();
        // A commit's events mostly share a topic: one no pattern matches
        // is looked up once.
        let mut unfollowed: Option<&str> = None;
        events.iter().any(|event| {
            if unfollowed == Some(event.topic.as_str()) {
                return false;
            }
            keys.clear();
            subs.index.matches(&event.topic, &mut keys);
            if keys.is_empty() {
                unfollowed = Some(&event.topic);
                return false;
            }
            keys.iter().any(|id| {
                subs.entries
                    .get(id)
                    .is_some_and(|live| live.filter.matches(event.data.as_ref()))
            })
        })
    }

    fn unregister(&self, id: u64) {
        let mut subs = self.subs();
        if let Some(live) = subs.entries.remove(&id) {
            for p in &live.patterns {
                subs.index.remove(p, id);
            }
        }
    }

    /// Pushes each event to every matching live subscription, under one
    /// lock; how many subscriptions each was pushed to.
    fn fan_out<'a>(
        &self,
        events: impl Iterator<Item = &'a Arc<Event>>,
        keys: &mut Vec<u64>,
    ) -> Vec<u32> {
        let subs = self.subs();
        let mut closed = Vec::new();
        let counts = events
            .map(|event| {
                keys.clear();
                subs.index.matches(&event.topic, keys);
                keys.sort_unstable();
                keys.dedup();
                let mut delivered = 0;
                for id in keys.iter() {
                    let Some(live) = subs.entries.get(id) else {
                        continue;
                    };
                    if live.lagging.load(Ordering::Acquire)
                        || !live.filter.matches(event.data.as_ref())
                    {
                        continue;
                    }
                    match live.tx.try_send(event.clone()) {
                        Ok(()) => delivered += 1,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            live.lagging.store(true, Ordering::Release);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => closed.push(*id),
                    }
                }
                delivered
            })
            .collect();
        drop(subs);
        closed.sort_unstable();
        closed.dedup();
        for id in closed {
            self.unregister(id);
        }
        counts
    }

    /// Drops every live subscription's sender: their streams end.
    fn close_all(&self) {
        let mut subs = self.subs();
        subs.entries.clear();
        subs.index = PatternIndex::new();
    }
}

/// The prefix of the fields of event `i`: `events[i].` in a batch of
/// several, nothing for one event.
fn field_prefix(batch: bool, i: usize) -> String {
    if batch {
        format!("events[{i}].")
    } else {
        String::new()
    }
}

pub(crate) fn matches(patterns: &[Pattern], filter: &Filter, e: &Event) -> bool {
    (patterns.is_empty() || patterns.iter().any(|p| p.matches(&e.topic)))
        && filter.matches(e.data.as_ref())
}

/// A publish submitted and not yet durable.
pub type Publishing =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<Accepted>, BusError>> + Send>>;

/// What became of a published event.
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    /// In the log.
    Stored(Arc<Event>),
    /// Held until it is due.
    Scheduled(Scheduled),
}

/// Held events moved into the log per store call.
const RELEASE_BATCH: u32 = 500;

/// The worker that appends held (delayed or scheduled) events to the log
/// when they are due.
pub struct Scheduler {
    bus: Bus,
}

impl Scheduler {
    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let shared = &self.bus.shared;
        loop {
            let now = shared.clock.now_ms();
            let wait = match shared.log.release_due(now, RELEASE_BATCH).await {
                Ok((moved, _)) if moved == RELEASE_BATCH => Duration::ZERO,
                Ok((_, Some(next))) => {
                    Duration::from_millis(u64::try_from(next - now).unwrap_or(0))
                }
                // Nothing held: sleep until a publish holds something.
                Ok((_, None)) => Duration::from_secs(3600),
                Err(error) => {
                    tracing::warn!(%error, "releasing due events failed; retrying");
                    Duration::from_millis(200)
                }
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = shared.scheduled.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        tracing::debug!("scheduler stopped");
    }
}

/// The worker that tails the log and feeds live subscriptions.
pub struct Dispatcher {
    bus: Bus,
}

impl Dispatcher {
    /// Runs until `shutdown`; then ends every subscription's stream.
    pub async fn run(self, shutdown: CancellationToken) {
        let bus = self.bus;
        let mut head = bus.log().news();
        // Events already in the log when the hub starts are history, not
        // news: subscriptions replay them from the log if they ask.
        let mut cursor = *head.borrow_and_update();
        let mut keys = Vec::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = head.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
            let target = *head.borrow_and_update();
            while cursor < target {
                if bus.subscriptions() == 0 {
                    cursor = target;
                    break;
                }
                // Fresh appends are usually still in memory; anything else
                // (outbox events, a long stretch) is read from the log.
                if let Some(events) = bus.log().recent(cursor, MAX_READ as usize)
                    && !events.is_empty()
                {
                    if let Some(last) = events.last() {
                        cursor = last.offset;
                    }
                    bus.fan_out(events.iter(), &mut keys);
                    continue;
                }
                match bus.log().read(ReadFrom::After(cursor), MAX_READ).await {
                    Ok(events) if events.is_empty() => break,
                    Ok(events) => {
                        let events: Vec<Arc<Event>> = events.into_iter().map(Arc::new).collect();
                        if let Some(last) = events.last() {
                            cursor = last.offset;
                        }
                        bus.fan_out(events.iter(), &mut keys);
                    }
                    Err(error) => {
                        tracing::warn!(%error, cursor, "reading the log to dispatch failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        bus.close_all();
        tracing::debug!("dispatcher stopped");
    }
}
