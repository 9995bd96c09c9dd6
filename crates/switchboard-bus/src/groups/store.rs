//! What consumer groups need from a storage backend.

use async_trait::async_trait;
use switchboard_core::{StorageError, UnixMillis};

use super::GroupSpec;
use crate::{Event, NewEvent};

/// A group as stored.
#[derive(Debug, Clone)]
pub struct GroupRecord {
    /// Its settings.
    pub spec: GroupSpec,
    /// The offset up to which the log has been taken into the group.
    pub cursor: u64,
    /// When it was created.
    pub created_at: UnixMillis,
}

/// A pending event as stored.
#[derive(Debug, Clone)]
pub struct PendingItem {
    /// The event's offset.
    pub offset: u64,
    /// Its partition key, if any.
    pub key: Option<String>,
    /// Deliveries that failed so far.
    pub attempts: u32,
    /// Not delivered before this time.
    pub due_at: UnixMillis,
    /// The last failure's reason.
    pub last_error: Option<String>,
    /// The event: from the log, or the copy a replayed dead letter kept;
    /// `None` when retention removed it from the log.
    pub event: Option<Event>,
}

/// An event a group gave up on.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The group.
    pub group: String,
    /// The event's offset in the log.
    pub offset: u64,
    /// A copy of the event, kept even if the log drops it.
    pub event: Event,
    /// Deliveries made.
    pub attempts: u32,
    /// Why the last one failed.
    pub last_error: Option<String>,
    /// When it was dead-lettered.
    pub dead_at: UnixMillis,
}

/// One change to a group's durable state.
#[derive(Debug, Clone)]
pub enum GroupOp {
    /// Events taken from the log into the pending set, and the cursor
    /// moved past what was read.
    Fetched {
        /// (offset, partition key) of each event taken.
        items: Vec<(u64, Option<String>)>,
        /// The new cursor.
        cursor: u64,
        /// When they became due.
        now: UnixMillis,
    },
    /// Acknowledged: no longer pending.
    Acked(u64),
    /// A delivery failed; deliver again at `due_at`.
    Failed {
        /// The event's offset.
        offset: u64,
        /// Failed deliveries so far.
        attempts: u32,
        /// The next delivery's time.
        due_at: UnixMillis,
        /// Why.
        error: String,
    },
    /// Moved from pending to the dead letters, with the `system.alert`
    /// event that announces it, appended to the log in the same
    /// transaction.
    Dead {
        /// The dead letter.
        letter: Box<DeadLetter>,
        /// The alert.
        alert: Box<NewEvent>,
    },
    /// Moved from the dead letters back to pending.
    Revived {
        /// The event's offset.
        offset: u64,
        /// The copy the dead letter kept.
        event: Box<Event>,
        /// Its partition key.
        key: Option<String>,
        /// When it is due.
        now: UnixMillis,
    },
}

/// Consumer-group storage; every backend implements it.
#[async_trait]
pub trait GroupStore: Send + Sync + 'static {
    /// Stores a new group.
    async fn create_group(&self, group: &GroupRecord) -> Result<(), StorageError>;

    /// Every group.
    async fn load_groups(&self) -> Result<Vec<GroupRecord>, StorageError>;

    /// Deletes a group, its pending events and its dead letters.
    async fn delete_group(&self, name: &str) -> Result<(), StorageError>;

    /// A group's pending events in offset order, with their events.
    async fn load_pending(&self, group: &str) -> Result<Vec<PendingItem>, StorageError>;

    /// Applies changes to one group in order, atomically; resolves once
    /// durable.
    async fn apply(&self, group: &str, ops: Vec<GroupOp>) -> Result<(), StorageError>;

    /// Dead letters after `after`, in offset order.
    async fn dead_letters(
        &self,
        group: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StorageError>;

    /// One dead letter.
    async fn dead_letter(
        &self,
        group: &str,
        offset: u64,
    ) -> Result<Option<DeadLetter>, StorageError>;

    /// How many dead letters a group has.
    async fn count_dead(&self, group: &str) -> Result<u64, StorageError>;

    /// Deletes dead letters (at `offsets`, or all); how many went.
    async fn purge_dead(&self, group: &str, offsets: Option<Vec<u64>>)
    -> Result<u64, StorageError>;
}
