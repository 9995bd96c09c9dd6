//! What the gateway keeps, and the trait storage backends implement.

use async_trait::async_trait;
use switchboard_core::{StorageError, UnixMillis};

/// One outbound webhook delivery attempt, for the delivery log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// The webhook.
    pub webhook: String,
    /// The event's offset in the log.
    pub offset: u64,
    /// The event's id.
    pub event_id: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// When it was made.
    pub at: UnixMillis,
    /// The receiver's HTTP status, if it answered.
    pub status: Option<u16>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
}

/// Where the gateway's configuration and delivery log live.
#[async_trait]
pub trait GatewayStore: Send + Sync + 'static {
    /// Every stored object: (kind, name, JSON document).
    async fn load_gateway(&self) -> Result<Vec<(String, String, String)>, StorageError>;

    /// Creates or replaces an object.
    async fn put_gateway(&self, kind: &str, name: &str, doc: &str) -> Result<(), StorageError>;

    /// Removes an object; whether it existed.
    async fn delete_gateway(&self, kind: &str, name: &str) -> Result<bool, StorageError>;

    /// Appends delivery attempts, keeping the newest `keep` per webhook.
    async fn log_deliveries(
        &self,
        records: &[DeliveryRecord],
        keep: u32,
    ) -> Result<(), StorageError>;

    /// A webhook's delivery attempts, newest first.
    async fn deliveries(
        &self,
        webhook: &str,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StorageError>;
}
