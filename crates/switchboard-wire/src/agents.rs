//! Agent registry bodies.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// `POST /api/v1/agents/register`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterAgentRequest {
    /// Unique id: 1–128 of `A-Z a-z 0-9 . _ : -`, starting with a letter or digit.
    #[schema(example = "agent-001")]
    pub id: String,
    /// The kind of agent; same rule as the id.
    #[serde(rename = "type")]
    #[schema(example = "code_generation")]
    pub agent_type: String,
    /// Display name; the id when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Semantic version (`1.2.3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "1.0.0")]
    pub version: Option<String>,
    /// What the agent can do; same rule as the id, at most 256.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(example = json!(["javascript", "python"]))]
    pub capabilities: Vec<String>,
    /// Where the agent serves requests (http or https URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Where the agent's health can be checked (http or https URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_url: Option<String>,
    /// Free-form settings; `max_concurrent_tasks` (1–1,000,000) is used for
    /// load balancing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>, example = json!({"max_concurrent_tasks": 5}))]
    pub configuration: Option<Map<String, Value>>,
    /// Free-form metadata, stored as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

/// A status an agent may report of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReportedStatus {
    /// Up and accepting work.
    Active,
    /// Up, with nothing to do.
    Idle,
    /// Up, at capacity.
    Busy,
    /// Finishing its work, taking no more.
    Draining,
}

/// Any status of an agent: what it reported, or `stale`/`offline` when the
/// hub stopped hearing from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// Up and accepting work.
    Active,
    /// Up, with nothing to do.
    Idle,
    /// Up, at capacity.
    Busy,
    /// Finishing its work, taking no more.
    Draining,
    /// Missed `stale_after_missed` heartbeats.
    Stale,
    /// Missed `offline_after_missed` heartbeats.
    Offline,
}

/// `POST /api/v1/agents/{id}/heartbeat`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// The agent's own status; unchanged when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ReportedStatus>,
    /// Tasks in hand; unchanged when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_tasks: Option<u32>,
    /// Numbers to record (`cpu_usage`, …); unchanged when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performance_metrics: Option<BTreeMap<String, f64>>,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatAck {
    /// The agent.
    pub agent_id: String,
    /// Its status after the heartbeat.
    pub status: AgentStatus,
    /// When the hub recorded the heartbeat.
    pub recorded_at: DateTime<Utc>,
    /// Send the next heartbeat within this many milliseconds.
    pub heartbeat_interval_ms: u64,
}

/// An agent as the registry knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Agent {
    /// Unique id.
    pub id: String,
    /// The kind of agent.
    #[serde(rename = "type")]
    pub agent_type: String,
    /// Display name.
    pub name: String,
    /// Semantic version, if given.
    pub version: Option<String>,
    /// Capabilities, sorted, without duplicates.
    pub capabilities: Vec<String>,
    /// Where it serves requests.
    pub endpoint: Option<String>,
    /// Where its health can be checked.
    pub health_check_url: Option<String>,
    /// Settings as registered.
    #[schema(value_type = Object)]
    pub configuration: Map<String, Value>,
    /// Metadata as registered.
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// Current status.
    pub status: AgentStatus,
    /// The status the agent last reported of itself.
    pub reported_status: AgentStatus,
    /// Tasks in hand, as last reported.
    pub current_tasks: u32,
    /// From `configuration.max_concurrent_tasks`.
    pub max_concurrent_tasks: Option<u32>,
    /// `current_tasks / max_concurrent_tasks`, when the capacity is known.
    pub load: Option<f64>,
    /// Numbers reported with the last heartbeat.
    #[schema(value_type = Object)]
    pub performance_metrics: Map<String, Value>,
    /// First registration.
    pub registered_at: DateTime<Utc>,
    /// Last registration or heartbeat.
    pub updated_at: DateTime<Utc>,
    /// Last sign of life.
    pub last_heartbeat_at: DateTime<Utc>,
    /// When the status last changed.
    pub status_changed_at: DateTime<Utc>,
    /// The agent's client credentials: only in the answer to the
    /// registration that made them, never again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<crate::auth::AgentCredentials>,
}

/// `GET /api/v1/agents`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AgentList {
    /// This page, ordered by id.
    pub agents: Vec<Agent>,
    /// How many agents match the filters in all.
    pub total: u64,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}
