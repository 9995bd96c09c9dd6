//! Consumer group bodies: durable named subscriptions, deliveries,
//! acknowledgements and dead letters.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::CloudEvent;

/// Where a new group starts reading the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum GroupStart {
    /// `"now"` (the next event published) or `"earliest"` (the whole log).
    Named(StartName),
    /// After this offset.
    After(u64),
}

/// A named starting point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StartName {
    /// The next event published.
    Now,
    /// The oldest event in the log.
    Earliest,
}

/// Redelivery delays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackoffPolicy {
    /// `fixed`, `linear`, `exponential` (default) or `fibonacci`.
    #[serde(default = "default_kind")]
    pub kind: String,
    /// The delay after the first failure (default 1000).
    #[serde(default = "default_initial")]
    pub initial_ms: u64,
    /// The longest delay (default 60000).
    #[serde(default = "default_max")]
    pub max_ms: u64,
    /// Random spread as a fraction of each delay, 0 to 1 (default 0.2).
    #[serde(default = "default_jitter")]
    pub jitter: f64,
}

fn default_kind() -> String {
    "exponential".to_owned()
}
fn default_initial() -> u64 {
    1000
}
fn default_max() -> u64 {
    60_000
}
fn default_jitter() -> f64 {
    0.2
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            kind: default_kind(),
            initial_ms: default_initial(),
            max_ms: default_max(),
            jitter: default_jitter(),
        }
    }
}

/// `PUT /api/v1/groups/{name}`: create a consumer group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupRequest {
    /// Topic patterns (`*` one token, `>` the rest).
    pub topics: Vec<String>,
    /// Payload filter: field path → value or list of values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Map<String, Value>>,
    /// `"now"` (default), `"earliest"`, or an offset to start after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<GroupStart>,
    /// Time to acknowledge a delivery (default 30000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_wait_ms: Option<u64>,
    /// Deliveries of one event before it is dead-lettered (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deliveries: Option<u32>,
    /// Redelivery delays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffPolicy>,
    /// Events held pending at most (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<u32>,
}

/// A consumer group, its settings and state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Group {
    /// Its name.
    pub name: String,
    /// Topic patterns.
    pub topics: Vec<String>,
    /// Payload filter.
    #[schema(value_type = Object)]
    pub filter: Map<String, Value>,
    /// Time to acknowledge a delivery.
    pub ack_wait_ms: u64,
    /// Deliveries before dead-lettering.
    pub max_deliveries: u32,
    /// Redelivery delays.
    pub backoff: BackoffPolicy,
    /// Events held pending at most.
    pub max_pending: u32,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// The log has been taken in up to this offset.
    pub cursor: u64,
    /// Events pending (in flight or waiting for a delivery).
    pub pending: u64,
    /// Events delivered and not yet acknowledged.
    pub in_flight: u64,
    /// Consumers attached.
    pub consumers: u64,
    /// Events dead-lettered.
    pub dead_letters: u64,
}

/// `GET /api/v1/groups`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GroupList {
    /// Every group, by name.
    pub groups: Vec<Group>,
}

/// `POST /api/v1/groups/{name}/pull`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// Deliveries at most (default 1, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// How long to wait for the first one (default 0, at most 20000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// One event delivered to a consumer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    /// The group.
    pub group: String,
    /// The event's offset; acknowledge it by this.
    pub offset: u64,
    /// 1 on the first delivery, 2 on the first redelivery, …
    pub attempt: u32,
    /// Acknowledge before this or the event is delivered again.
    pub deadline: DateTime<Utc>,
    /// The event.
    pub event: CloudEvent,
}

/// `POST /api/v1/groups/{name}/pull`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PullResponse {
    /// Possibly none, when nothing came within `wait_ms`.
    pub deliveries: Vec<Delivery>,
}

/// `POST /api/v1/groups/{name}/ack` and `/nack`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettleRequest {
    /// The deliveries' offsets.
    pub offsets: Vec<u64>,
    /// For `nack`: why the delivery failed (kept with the event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For `nack`: deliver again after this long instead of the backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
}

/// What became of each offset settled.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SettleResponse {
    /// Offsets settled.
    pub settled: Vec<u64>,
    /// Offsets not pending in the group (already acknowledged,
    /// dead-lettered, never delivered), or for `nack` not in flight.
    pub not_pending: Vec<u64>,
}

/// An event a group gave up on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetter {
    /// The group.
    pub group: String,
    /// The event's offset in the log.
    pub offset: u64,
    /// Deliveries made.
    pub attempts: u32,
    /// Why the last one failed.
    pub last_error: Option<String>,
    /// When it was dead-lettered.
    pub dead_at: DateTime<Utc>,
    /// The event.
    pub event: CloudEvent,
}

/// `GET /api/v1/groups/{name}/dead-letters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterPage {
    /// Oldest first.
    pub dead_letters: Vec<DeadLetter>,
    /// Pass as `after` for the next page; absent on the last.
    pub next_after: Option<u64>,
}

/// `POST /api/v1/groups/{name}/dead-letters/replay`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Which dead letters; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offsets: Option<Vec<u64>>,
}

/// How many dead letters a replay or purge moved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterCount {
    /// Replayed into the group, or purged.
    pub count: u64,
}
