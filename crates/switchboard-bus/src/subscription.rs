//! One subscriber's stream of events: replayed from the log, then live.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use switchboard_core::UnixMillis;
use tokio::sync::mpsc;

use crate::{Bus, BusError, Event, Filter, Pattern, ReadFrom, matches};

/// How many events a catch-up reads from the log at a time.
const REPLAY_CHUNK: u32 = 256;

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// With the next event published.
    Now,
    /// After this offset (replaying what follows it).
    After(u64),
    /// At this time (replaying what happened since).
    Time(UnixMillis),
}

/// What to subscribe to.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionSpec {
    /// Topic patterns; an event matching any of them is delivered.
    pub patterns: Vec<Pattern>,
    /// Payload filter.
    pub filter: Filter,
    /// Where to start.
    pub start: Start,
}

/// A stream of the events matching a spec: logged events in offset order,
/// each once; transient events as they come, while the subscription is
/// live. Dropping it ends the subscription.
pub struct Subscription {
    bus: Bus,
    id: u64,
    rx: mpsc::Receiver<Arc<Event>>,
    lagging: Arc<AtomicBool>,
    patterns: Vec<Pattern>,
    filter: Filter,
    /// The highest offset examined: everything up to it was delivered or
    /// did not match.
    cursor: u64,
    /// Set while catching up from the log.
    replay: Option<ReadFrom>,
    pending: VecDeque<Event>,
}

impl Bus {
    /// Opens a subscription.
    pub fn subscribe(&self, spec: SubscriptionSpec) -> Subscription {
        let (id, rx, lagging, head) = self.register(spec.patterns.clone(), spec.filter.clone());
        let (cursor, replay) = match spec.start {
            Start::Now => (head, None),
            Start::After(o) => (o, Some(ReadFrom::After(o))),
            Start::Time(t) => (0, Some(ReadFrom::Time(t))),
        };
        Subscription {
            bus: self.clone(),
            id,
            rx,
            lagging,
            patterns: spec.patterns,
            filter: spec.filter,
            cursor,
            replay,
            pending: VecDeque::new(),
        }
    }
}

impl Subscription {
    /// The offset of the last event examined.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The next event; waits for one. Fails when the hub shuts down or the
    /// log cannot be read.
    pub async fn next(&mut self) -> Result<Arc<Event>, BusError> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(Arc::new(e));
            }
            if let Some(from) = self.replay {
                self.replay_chunk(from).await?;
                continue;
            }
            // The dispatcher marks us lagging only when our buffer is full,
            // so when it is empty and we are lagging, nothing more will
            // come through it until we catch up from the log.
            if self.lagging.load(Ordering::Acquire) && self.rx.is_empty() {
                // Clear first: what the dispatcher sends from now on is
                // buffered, what it skipped is in the log, and offsets
                // already seen are dropped below.
                self.lagging.store(false, Ordering::Release);
                self.replay = Some(ReadFrom::After(self.cursor));
                continue;
            }
            let Some(e) = self.rx.recv().await else {
                return Err(BusError::Closed);
            };
            // Transient: not in the log, delivered as it came.
            if !e.is_logged() {
                return Ok(e);
            }
            if e.offset <= self.cursor {
                continue;
            }
            self.cursor = e.offset;
            return Ok(e);
        }
    }

    async fn replay_chunk(&mut self, from: ReadFrom) -> Result<(), BusError> {
        let chunk = self.bus.log().read(from, REPLAY_CHUNK).await?;
        let done = chunk.len() < REPLAY_CHUNK as usize;
        for e in chunk {
            if e.offset <= self.cursor && !matches!(from, ReadFrom::Time(_)) {
                continue;
            }
            self.cursor = self.cursor.max(e.offset);
            if matches(&self.patterns, &self.filter, &e) {
                self.pending.push_back(e);
            }
        }
        self.replay = if done {
            None
        } else {
            Some(ReadFrom::After(self.cursor))
        };
        Ok(())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.bus.unregister(self.id);
    }
}
