//! Health, readiness and JSON metrics.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::AgentStatus;

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` (alive) or `ready`.
    pub status: String,
    /// Each dependency checked, with `ok` or the reason it failed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, String>,
}

/// `GET /api/v1/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MetricsReport {
    /// Hub-wide figures.
    pub system_metrics: SystemMetrics,
    /// Per live agent (at most 1,000, by id).
    pub agent_metrics: BTreeMap<String, AgentMetrics>,
}

/// Hub-wide figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SystemMetrics {
    /// Agents whose status is active, idle, busy or draining.
    pub active_agents: u64,
    /// Agents in each status.
    pub agents_by_status: BTreeMap<String, u64>,
    /// Mean API response time since start, in milliseconds.
    pub average_response_time: f64,
    /// Share of API responses since start that were server errors (5xx).
    pub error_rate: f64,
    /// API requests answered since start.
    pub requests_total: u64,
    /// Seconds since the hub started.
    pub uptime_seconds: u64,
    /// Tasks not yet given to an agent (pending or queued).
    pub pending_tasks: u64,
    /// Tasks held by agents (assigned or in progress).
    pub running_tasks: u64,
    /// Tasks in each status.
    pub tasks_by_status: BTreeMap<String, u64>,
    /// Workflows that completed.
    pub completed_workflows: u64,
    /// Workflows in each status.
    pub workflows_by_status: BTreeMap<String, u64>,
}

/// Figures of one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AgentMetrics {
    /// Current status.
    pub status: AgentStatus,
    /// Tasks in hand.
    pub current_tasks: u32,
    /// Capacity, if known.
    pub max_concurrent_tasks: Option<u32>,
    /// `current_tasks / max_concurrent_tasks`, if the capacity is known.
    pub load: Option<f64>,
    /// Numbers from the last heartbeat.
    #[schema(value_type = Object)]
    pub performance_metrics: Map<String, Value>,
    /// Last sign of life.
    pub last_heartbeat_at: DateTime<Utc>,
}
