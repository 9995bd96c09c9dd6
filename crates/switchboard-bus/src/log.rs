//! The durable log, as a trait that storage backends implement.

use std::sync::Arc;

use async_trait::async_trait;
use switchboard_core::{StorageError, UnixMillis};
use tokio::sync::watch;

use crate::event::{Event, NewEvent};
use crate::topic::Pattern;

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// Events with an offset greater than this.
    After(u64),
    /// Events that happened at or after this time.
    Time(UnixMillis),
}

/// What a trim removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// Events older than the age limit.
    pub expired: u64,
    /// Events removed to bring the log under its size limit.
    pub over_size: u64,
    /// Events superseded by a later one with the same key.
    pub compacted: u64,
}

impl Trimmed {
    /// Events removed in all.
    pub fn removed(&self) -> u64 {
        self.expired + self.over_size + self.compacted
    }
}

/// An append queued and not yet durable. The events it resolves to are
/// shared with the log's window of fresh events (and so with live
/// delivery): one copy of each in memory.
pub type Appending = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Vec<Arc<Event>>, StorageError>> + Send>,
>;

/// Says whether anyone follows any of a commit's events live (see
/// [`EventLog::follow`]).
pub type Wanted = Arc<dyn Fn(&[Arc<Event>]) -> bool + Send + Sync>;

/// An event held for later delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheduled {
    /// The event's id.
    pub id: String,
    /// Its source.
    pub source: String,
    /// Its topic.
    pub topic: String,
    /// When it will be appended to the log.
    pub due_at: UnixMillis,
}

/// An append-only log of events, one sequence of offsets across topics.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends events in order; resolves once they are durable, with their
    /// offsets. Every event's `time` is set. An event whose (source, id)
    /// was appended within the last `dedup_window_ms` (or earlier in the
    /// same call) is not appended again: its place in the answer holds the
    /// event first stored.
    async fn append(
        &self,
        events: Vec<NewEvent>,
        dedup_window_ms: i64,
    ) -> Result<Vec<Arc<Event>>, StorageError> {
        self.enqueue(events, dedup_window_ms).await?.await
    }

    /// [`EventLog::append`] in two steps: resolves once the events are
    /// queued, in order with every append queued before; the future it
    /// gives resolves once they are durable.
    async fn enqueue(
        &self,
        events: Vec<NewEvent>,
        dedup_window_ms: i64,
    ) -> Result<Appending, StorageError>;

    /// Holds events until their due times (`due[i]` for `events[i]`);
    /// resolves once they are durable. An event whose (source, id) is
    /// already held is not held twice: its answer is the one held.
    async fn schedule(
        &self,
        events: Vec<NewEvent>,
        due: Vec<UnixMillis>,
    ) -> Result<Vec<Scheduled>, StorageError>;

    /// Appends up to `limit` held events due at or before `now` to the log
    /// (in due order) and stops holding them, atomically; answers how many
    /// moved and when the next held event is due.
    async fn release_due(
        &self,
        now: UnixMillis,
        limit: u32,
    ) -> Result<(u32, Option<UnixMillis>), StorageError>;

    /// Removes events appended before `appended_before`, then the oldest
    /// while the log holds more than `max_bytes`, then, on topics matching
    /// `compact`, every event with a partition key that a later event on
    /// the same topic repeats.
    async fn trim(
        &self,
        appended_before: Option<UnixMillis>,
        max_bytes: Option<u64>,
        compact: &[Pattern],
    ) -> Result<Trimmed, StorageError>;

    /// Up to `limit` events from `from`, in offset order.
    async fn read(&self, from: ReadFrom, limit: u32) -> Result<Vec<Event>, StorageError>;

    /// The events right after `after` (at most `limit`, in order, without
    /// a gap), if the log still holds them in memory; `None` sends the
    /// caller to [`EventLog::read`].
    fn recent(&self, _after: u64, _limit: usize) -> Option<Vec<Arc<Event>>> {
        None
    }

    /// The offset of the last durable event (0 when the log is empty),
    /// updated after every commit that appends, whoever appended.
    fn head(&self) -> watch::Receiver<u64>;

    /// The head as live delivery follows it: the same offset, but a
    /// commit whose events `wanted` (see [`EventLog::follow`]) rejected
    /// may move it without waking its receivers, so that events no one
    /// follows live cost no wake-up. Receivers are still woken at least
    /// once every few thousand offsets, so a reader that catches up then
    /// finds them in [`EventLog::recent`].
    fn news(&self) -> watch::Receiver<u64> {
        self.head()
    }

    /// Has the log ask `wanted` about the events of each later commit, once
    /// the head has moved past them. A live subscription must start from
    /// the head as read under the lock `wanted` takes: then the events of a
    /// commit let pass quietly are either before its start or seen by
    /// `wanted` along with it.
    fn follow(&self, _wanted: Wanted) {}
}
