//! Event bus bodies: CloudEvents in JSON structured mode.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// A CloudEvents 1.0 event as published (JSON structured mode).
///
/// Publishing is lenient where a default is obvious: `specversion` defaults
/// to `1.0`, `id` to a new UUID, `source` to `/switchboard/api`, `type` to
/// the topic and `topic` to the type (one of the two is needed),
/// `datacontenttype` to `application/json`, `time` to the hub's clock.
/// Any other attribute is a CloudEvents extension (lower-case letters and
/// digits, scalar value): `correlationid`, `causationid`, `sourceagent`,
/// `targetagent` and `partitionkey` have a meaning to the hub.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PublishEvent {
    /// `1.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specversion: Option<String>,
    /// Unique with `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Who produced the event (a URI reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// What happened (`task.completed`).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// Where to publish: dot-separated tokens, no wildcards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "task.code_generation.completed")]
    pub topic: Option<String>,
    /// What the event is about, within the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// When it happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<DateTime<Utc>>,
    /// The media type of `data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    /// The payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
    /// Extension attributes.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extensions: Map<String, Value>,
}

/// A CloudEvents 1.0 event from the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CloudEvent {
    /// `1.0`.
    pub specversion: String,
    /// Unique with `source`.
    pub id: String,
    /// Who produced it.
    pub source: String,
    /// What happened.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The topic it was published on.
    pub topic: String,
    /// Its place in the log (one sequence across topics); resume after it.
    pub offset: u64,
    /// What it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// The media type of `data`.
    pub datacontenttype: String,
    /// The payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
    /// Extension attributes.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extensions: Map<String, Value>,
}

/// What `POST /api/v1/events` answers: each event's place in the log, in
/// the order published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PublishAck {
    /// One entry per event.
    pub events: Vec<Published>,
}

/// One published event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Published {
    /// Its id (as given or made).
    pub id: String,
    /// Its topic.
    pub topic: String,
    /// Its place in the log; absent while the event is held for later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// When a delayed or scheduled event will be appended to the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<DateTime<Utc>>,
}

/// `GET /api/v1/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    /// Matching events, in offset order.
    pub events: Vec<CloudEvent>,
    /// Pass as `after` to continue: the last offset examined.
    pub next_after: u64,
}
