//! The durable log, as a trait that storage backends implement.

use async_trait::async_trait;
use switchboard_core::{StorageError, UnixMillis};
use tokio::sync::watch;

use crate::event::{Event, NewEvent};

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// Events with an offset greater than this.
    After(u64),
    /// Events that happened at or after this time.
    Time(UnixMillis),
}

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
    ) -> Result<Vec<Event>, StorageError>;

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

    /// Up to `limit` events from `from`, in offset order.
    async fn read(&self, from: ReadFrom, limit: u32) -> Result<Vec<Event>, StorageError>;

    /// The offset of the last durable event (0 when the log is empty),
    /// updated after every commit that appends, whoever appended.
    fn head(&self) -> watch::Receiver<u64>;
}
