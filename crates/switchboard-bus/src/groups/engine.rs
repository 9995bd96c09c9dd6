//! One group's engine: a task that owns the group's state, takes events
//! from the log, hands them to consumers, and records every change.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use switchboard_core::{Clock, UnixMillis};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::store::{DeadLetter, GroupOp, GroupRecord, GroupStore, PendingItem};
use super::{ConsumerSpec, Delivery, GroupSpec, MAX_DEAD_LETTER_PAGE, Outcome};
use crate::event::ext;
use crate::{Bus, BusError, Event, Filter, MAX_READ, NewEvent, ReadFrom, matches};

/// Where the outcome of settling each offset goes.
pub(super) type SettleReply = oneshot::Sender<Vec<Result<(), BusError>>>;

/// Requests to an engine.
pub(super) enum Cmd {
    Attach {
        spec: ConsumerSpec,
        tx: mpsc::Sender<Delivery>,
        reply: oneshot::Sender<u64>,
    },
    Detach {
        id: u64,
        fail_in_flight: bool,
        /// Answered once detached: nothing more is sent to it.
        done: Option<oneshot::Sender<()>>,
    },
    Settle {
        offsets: Vec<u64>,
        outcome: Outcome,
        reply: SettleReply,
    },
    Replay {
        offsets: Option<Vec<u64>>,
        reply: oneshot::Sender<Result<u64, BusError>>,
    },
    Stats {
        reply: oneshot::Sender<Stats>,
    },
    Stop {
        reply: oneshot::Sender<()>,
    },
}

pub(super) struct Stats {
    pub(super) cursor: u64,
    pub(super) pending: u64,
    pub(super) in_flight: u64,
    pub(super) consumers: u64,
}

struct Item {
    key: Option<String>,
    /// Deliveries made, counting the one in flight.
    attempts: u32,
    due_at: UnixMillis,
    last_error: Option<String>,
    event: Option<Arc<Event>>,
    /// (consumer, deadline) while delivered and unacknowledged.
    in_flight: Option<(u64, UnixMillis)>,
}

struct ConsumerSlot {
    spec: ConsumerSpec,
    tx: mpsc::Sender<Delivery>,
    in_flight: u32,
    delivered: u64,
}

pub(super) struct Engine {
    name: Arc<str>,
    spec: GroupSpec,
    filter: Filter,
    bus: Bus,
    store: Arc<dyn GroupStore>,
    clock: Clock,
    cursor: u64,
    pending: BTreeMap<u64, Item>,
    consumers: HashMap<u64, ConsumerSlot>,
    next_consumer: u64,
    /// Changes not yet written.
    ops: Vec<GroupOp>,
    /// Settlements to answer once `ops` are written.
    settled: Vec<(SettleReply, Vec<Result<(), BusError>>)>,
    /// Set after a failed read or write, to retry without spinning.
    backoff_until: Option<UnixMillis>,
}

/// Where the hub announces dead letters (with the other system alerts).
pub(crate) const ALERT_TOPIC: &str = "system.alert";
/// The source of those alerts.
const ALERT_SOURCE: &str = "/switchboard/bus";

/// Pause after a failed store call.
const RETRY_MS: i64 = 200;

impl Engine {
    pub(super) fn new(
        rec: GroupRecord,
        pending: Vec<PendingItem>,
        bus: Bus,
        store: Arc<dyn GroupStore>,
        clock: Clock,
    ) -> Self {
        // Checked when created; a stored filter that no longer parses
        // matches everything rather than stopping the hub.
        let filter = Filter::parse(&rec.spec.filter).unwrap_or_default();
        let mut ops = Vec::new();
        let pending = pending
            .into_iter()
            .filter_map(|p| {
                if p.event.is_none() {
                    tracing::warn!(group = %rec.spec.name, offset = p.offset,
                        "a pending event was removed from the log by retention; dropping it");
                    ops.push(GroupOp::Acked(p.offset));
                    return None;
                }
                Some((
                    p.offset,
                    Item {
                        key: p.key,
                        attempts: p.attempts,
                        due_at: p.due_at,
                        last_error: p.last_error,
                        event: p.event.map(Arc::new),
                        in_flight: None,
                    },
                ))
            })
            .collect();
        Self {
            name: Arc::from(rec.spec.name.as_str()),
            spec: rec.spec,
            filter,
            bus,
            store,
            clock,
            cursor: rec.cursor,
            pending,
            consumers: HashMap::new(),
            next_consumer: 0,
            ops,
            settled: Vec::new(),
            backoff_until: None,
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Cmd>, shutdown: CancellationToken) {
        let mut head = self.bus.log().head();
        loop {
            let now = self.clock.now_ms();
            self.expire(now);
            let retrying = self.backoff_until.is_some_and(|t| t > now);
            let mut more = false;
            if !retrying {
                self.backoff_until = None;
                let top = *head.borrow_and_update();
                if self.can_fetch() && self.cursor < top {
                    more = self.fetch(top, now).await;
                }
                self.flush().await;
            }
            self.deliver(self.clock.now_ms());

            let wake = if more {
                Some(Duration::ZERO)
            } else {
                self.next_wake().map(|t| {
                    Duration::from_millis(u64::try_from(t - self.clock.now_ms()).unwrap_or(0))
                })
            };
            let fetching = self.can_fetch();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    if self.handle(cmd).await {
                        return;
                    }
                    // Take every command waiting: one write serves them all.
                    while let Ok(cmd) = rx.try_recv() {
                        if self.handle(cmd).await {
                            return;
                        }
                    }
                }
                changed = head.changed(), if fetching && !more => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = tokio::time::sleep(wake.unwrap_or_default()), if wake.is_some() => {}
            }
        }
        self.flush().await;
        tracing::debug!(group = %self.name, "consumer group stopped");
    }

    /// Handles one command; true when the engine must stop now.
    async fn handle(&mut self, cmd: Cmd) -> bool {
        match cmd {
            Cmd::Attach { spec, tx, reply } => {
                self.next_consumer += 1;
                let id = self.next_consumer;
                self.consumers.insert(
                    id,
                    ConsumerSlot {
                        spec,
                        tx,
                        in_flight: 0,
                        delivered: 0,
                    },
                );
                let _ = reply.send(id);
            }
            Cmd::Detach {
                id,
                fail_in_flight,
                done,
            } => {
                self.detach(id, fail_in_flight);
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
            Cmd::Settle {
                offsets,
                outcome,
                reply,
            } => {
                let results: Vec<Result<(), BusError>> = offsets
                    .into_iter()
                    .map(|o| self.settle(o, outcome.clone()))
                    .collect();
                // Answered once the changes are durable (after the next
                // write), so an acknowledged event is never redelivered
                // after a crash.
                if self.ops.is_empty() {
                    let _ = reply.send(results);
                } else {
                    self.settled.push((reply, results));
                }
            }
            Cmd::Replay { offsets, reply } => {
                let r = self.replay(offsets).await;
                let _ = reply.send(r);
            }
            Cmd::Stats { reply } => {
                let _ = reply.send(Stats {
                    cursor: self.cursor,
                    pending: self.pending.len() as u64,
                    in_flight: self
                        .pending
                        .values()
                        .filter(|i| i.in_flight.is_some())
                        .count() as u64,
                    consumers: self.consumers.len() as u64,
                });
            }
            Cmd::Stop { reply } => {
                self.flush().await;
                self.consumers.clear();
                let _ = reply.send(());
                return true;
            }
        }
        false
    }

    fn can_fetch(&self) -> bool {
        !self.consumers.is_empty() && self.pending.len() < self.spec.max_pending as usize
    }

    /// Takes the next stretch of the log into the pending set; true when
    /// there is more to read right away.
    async fn fetch(&mut self, top: u64, now: UnixMillis) -> bool {
        let room = self.spec.max_pending as usize - self.pending.len();
        let events = match self
            .bus
            .log()
            .read(ReadFrom::After(self.cursor), MAX_READ)
            .await
        {
            Ok(e) => e,
            Err(error) => {
                tracing::warn!(group = %self.name, %error, "reading the log failed; retrying");
                self.backoff_until = Some(now + RETRY_MS);
                return false;
            }
        };
        let mut items = Vec::new();
        let mut cursor = self.cursor;
        for e in events {
            if items.len() == room {
                break;
            }
            cursor = e.offset;
            if !matches(&self.spec.patterns, &self.filter, &e) {
                continue;
            }
            let key = partition_key(&e);
            items.push((e.offset, key.clone()));
            self.pending.insert(
                e.offset,
                Item {
                    key,
                    attempts: 0,
                    due_at: now,
                    last_error: None,
                    event: Some(Arc::new(e)),
                    in_flight: None,
                },
            );
        }
        if cursor == self.cursor {
            // The log was read to its end before `top` was seen.
            return false;
        }
        self.cursor = cursor;
        self.ops.push(GroupOp::Fetched { items, cursor, now });
        self.cursor < top && self.can_fetch()
    }

    /// Writes the changes held, keeping them to retry if the store fails.
    async fn flush(&mut self) {
        if !self.ops.is_empty() {
            let ops = std::mem::take(&mut self.ops);
            if let Err(error) = self.store.apply(&self.name, ops.clone()).await {
                tracing::warn!(group = %self.name, %error, "writing the group's state failed; retrying");
                let mut ops = ops;
                ops.append(&mut self.ops);
                self.ops = ops;
                self.backoff_until = Some(self.clock.now_ms() + RETRY_MS);
                return;
            }
        }
        for (reply, results) in self.settled.drain(..) {
            let _ = reply.send(results);
        }
    }

    /// Fails every delivery whose deadline passed.
    fn expire(&mut self, now: UnixMillis) {
        let late: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, i)| i.in_flight.is_some_and(|(_, d)| d <= now))
            .map(|(o, _)| *o)
            .collect();
        for offset in late {
            self.release(offset);
            self.fail(offset, "the ack deadline passed".to_owned(), None, now);
        }
    }

    /// Frees the consumer slot an in-flight event holds.
    fn release(&mut self, offset: u64) {
        if let Some(item) = self.pending.get_mut(&offset)
            && let Some((c, _)) = item.in_flight.take()
            && let Some(slot) = self.consumers.get_mut(&c)
        {
            slot.in_flight = slot.in_flight.saturating_sub(1);
        }
    }

    /// Records a failed delivery: schedule the next, or dead-letter.
    fn fail(&mut self, offset: u64, error: String, delay: Option<Duration>, now: UnixMillis) {
        let Some(item) = self.pending.get_mut(&offset) else {
            return;
        };
        item.in_flight = None;
        item.last_error = Some(error.clone());
        if item.attempts >= self.spec.max_deliveries {
            let Some(item) = self.pending.remove(&offset) else {
                return;
            };
            let Some(event) = item.event else {
                self.ops.push(GroupOp::Acked(offset));
                return;
            };
            tracing::info!(group = %self.name, offset, attempts = item.attempts, %error, "event dead-lettered");
            let alert = NewEvent::hub(
                ALERT_TOPIC,
                ALERT_SOURCE,
                &self.name,
                now,
                serde_json::json!({
                    "severity": "warning",
                    "kind": "dead_letter",
                    "message": format!(
                        "consumer group {} gave up on offset {offset} after {} deliveries",
                        self.name, item.attempts
                    ),
                    "group": &*self.name,
                    "offset": offset,
                    "topic": event.topic,
                    "attempts": item.attempts,
                    "last_error": error,
                }),
            );
            self.ops.push(GroupOp::Dead {
                letter: Box::new(DeadLetter {
                    group: self.name.to_string(),
                    offset,
                    event: (*event).clone(),
                    attempts: item.attempts,
                    last_error: Some(error),
                    dead_at: now,
                }),
                alert: Box::new(alert),
            });
            return;
        }
        let delay = delay.unwrap_or_else(|| self.spec.backoff.delay(item.attempts));
        item.due_at = now + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
        self.ops.push(GroupOp::Failed {
            offset,
            attempts: item.attempts,
            due_at: item.due_at,
            error,
        });
    }

    fn detach(&mut self, id: u64, fail_in_flight: bool) {
        if self.consumers.remove(&id).is_none() {
            return;
        }
        if !fail_in_flight {
            return;
        }
        let now = self.clock.now_ms();
        let held: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, i)| i.in_flight.is_some_and(|(c, _)| c == id))
            .map(|(o, _)| *o)
            .collect();
        for offset in held {
            self.fail(
                offset,
                "the consumer went away without acknowledging".to_owned(),
                None,
                now,
            );
        }
    }

    fn settle(&mut self, offset: u64, outcome: Outcome) -> Result<(), BusError> {
        let not_pending = || {
            BusError::NotPending(format!(
                "offset {offset} is not pending in this group (acknowledged, dead-lettered, or never delivered)"
            ))
        };
        let not_in_flight = || {
            BusError::NotPending(format!(
                "offset {offset} is not in flight (its deadline passed or it was never delivered)"
            ))
        };
        let now = self.clock.now_ms();
        let Some(item) = self.pending.get_mut(&offset) else {
            return Err(not_pending());
        };
        match outcome {
            Outcome::Ack => {
                // A late acknowledgement still counts: the work was done.
                self.release(offset);
                self.pending.remove(&offset);
                self.ops.push(GroupOp::Acked(offset));
            }
            Outcome::InProgress => match &mut item.in_flight {
                Some((_, deadline)) => *deadline = now + ms(self.spec.ack_wait),
                None => return Err(not_in_flight()),
            },
            Outcome::Nack { error, delay } => {
                if item.in_flight.is_none() {
                    return Err(not_in_flight());
                }
                self.release(offset);
                self.fail(offset, error, delay, now);
            }
        }
        Ok(())
    }

    async fn replay(&mut self, offsets: Option<Vec<u64>>) -> Result<u64, BusError> {
        let now = self.clock.now_ms();
        let mut moved = 0u64;
        let letters: Vec<DeadLetter> = match offsets {
            Some(list) => {
                let mut found = Vec::new();
                for o in list {
                    if let Some(d) = self.store.dead_letter(&self.name, o).await? {
                        found.push(d);
                    }
                }
                found
            }
            None => {
                let mut all = Vec::new();
                let mut after = 0;
                loop {
                    let page = self
                        .store
                        .dead_letters(&self.name, after, MAX_DEAD_LETTER_PAGE)
                        .await?;
                    let done = page.len() < MAX_DEAD_LETTER_PAGE as usize;
                    after = page.last().map_or(after, |d| d.offset);
                    all.extend(page);
                    if done {
                        break;
                    }
                }
                all
            }
        };
        for d in letters {
            if self.pending.contains_key(&d.offset) {
                continue;
            }
            let key = partition_key(&d.event);
            self.ops.push(GroupOp::Revived {
                offset: d.offset,
                event: Box::new(d.event.clone()),
                key: key.clone(),
                now,
            });
            self.pending.insert(
                d.offset,
                Item {
                    key,
                    attempts: 0,
                    due_at: now,
                    last_error: d.last_error,
                    event: Some(Arc::new(d.event)),
                    in_flight: None,
                },
            );
            moved += 1;
        }
        // Durable before the caller hears it moved.
        self.flush().await;
        if self.backoff_until.is_some() {
            return Err(BusError::Closed);
        }
        Ok(moved)
    }

    /// Hands ready events to consumers with room.
    fn deliver(&mut self, now: UnixMillis) {
        let room: u64 = self
            .consumers
            .values()
            .map(|c| u64::from(c.spec.max_in_flight.saturating_sub(c.in_flight)))
            .sum();
        if room == 0 {
            return;
        }
        // In offset order; the first pending event of each partition key
        // holds back the later ones until it is acknowledged.
        let mut held_keys: HashSet<&str> = HashSet::new();
        let mut ready = Vec::new();
        for (offset, item) in &self.pending {
            if ready.len() as u64 >= room {
                break;
            }
            if let Some(k) = item.key.as_deref()
                && !held_keys.insert(k)
            {
                continue;
            }
            if item.in_flight.is_none() && item.due_at <= now {
                ready.push(*offset);
            }
        }
        let deadline = now + ms(self.spec.ack_wait);
        for offset in ready {
            if !self.hand_out(offset, deadline) {
                break;
            }
        }
    }

    /// Gives one event to the best consumer with room; false when none
    /// has room.
    fn hand_out(&mut self, offset: u64, deadline: UnixMillis) -> bool {
        loop {
            let Some(cid) = self
                .consumers
                .iter()
                .filter(|(_, c)| c.in_flight < c.spec.max_in_flight)
                .max_by_key(|(id, c)| {
                    (
                        c.spec.priority,
                        std::cmp::Reverse(c.in_flight),
                        std::cmp::Reverse(c.delivered),
                        std::cmp::Reverse(**id),
                    )
                })
                .map(|(id, _)| *id)
            else {
                return false;
            };
            let Some(item) = self.pending.get_mut(&offset) else {
                return true;
            };
            let Some(event) = item.event.clone() else {
                self.pending.remove(&offset);
                self.ops.push(GroupOp::Acked(offset));
                return true;
            };
            let delivery = Delivery {
                group: self.name.clone(),
                offset,
                attempt: item.attempts + 1,
                deadline,
                event,
            };
            let Some(slot) = self.consumers.get_mut(&cid) else {
                return false;
            };
            match slot.tx.try_send(delivery) {
                Ok(()) => {
                    slot.in_flight += 1;
                    slot.delivered += 1;
                    item.attempts += 1;
                    item.in_flight = Some((cid, deadline));
                    return true;
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // Its stream holds as many as it may have in flight:
                    // count it full.
                    slot.in_flight = slot.spec.max_in_flight;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.detach(cid, true);
                }
            }
        }
    }

    /// When something next needs doing without a command: a deadline, or
    /// a waiting event becoming due while a consumer has room.
    fn next_wake(&self) -> Option<UnixMillis> {
        let has_room = self
            .consumers
            .values()
            .any(|c| c.in_flight < c.spec.max_in_flight);
        let mut wake = self.backoff_until;
        let mut earliest = |t: UnixMillis| {
            wake = Some(wake.map_or(t, |w: UnixMillis| w.min(t)));
        };
        for item in self.pending.values() {
            match item.in_flight {
                Some((_, deadline)) => earliest(deadline),
                None if has_room => earliest(item.due_at),
                None => {}
            }
        }
        wake
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

/// The key that orders an event within a group.
fn partition_key(e: &Event) -> Option<String> {
    e.extensions.get(ext::PARTITION_KEY).map(|v| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}
