//! The gateway: services, routes, topology, webhooks and hooks.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Active health checks of a service's instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// How often each instance's `health_check_url` is asked (0: never).
    pub interval_ms: u64,
    /// How long one check may take.
    pub timeout_ms: u64,
    /// Failed checks in a row that take an instance out.
    pub unhealthy_after: u32,
    /// Passed checks in a row that bring it back.
    pub healthy_after: u32,
}

/// Passive outlier detection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// 5xx answers or connection failures in a row that eject an instance
    /// (0: never).
    pub consecutive_failures: u32,
    /// The first ejection's length; each next one is as long again.
    pub base_ejection_ms: u64,
    /// The longest ejection.
    pub max_ejection_ms: u64,
}

/// Per-instance circuit breakers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerSettings {
    /// Failures in a row that open the breaker.
    pub failure_threshold: u32,
    /// How long it stays open before letting trial requests through.
    pub open_ms: u64,
    /// Trial requests at once while half-open.
    pub half_open_max: u32,
}

/// Retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included (1: no retry).
    pub attempts: u32,
    /// Upstream statuses retried (idempotent requests only).
    pub on_status: Vec<u16>,
    /// The first retry's wait; doubled for each next one.
    pub backoff_ms: u64,
    /// Retries allowed as a share of the last ten seconds' requests.
    pub budget_ratio: f64,
    /// Retries allowed per second whatever the traffic.
    pub budget_min_per_second: u32,
}

/// Timeouts, each answered 504.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeoutConfig {
    /// To connect.
    pub connect_ms: u64,
    /// To the response's headers.
    pub first_byte_ms: u64,
    /// For the whole exchange, retries included.
    pub total_ms: u64,
}

/// A traffic split by agent version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// A semver requirement (`^2`), a version, or `*`.
    pub version: String,
    /// Its share, relative to the others.
    pub weight: u32,
}

/// `PUT /api/v1/gateway/services/{name}`: every field may be left out for
/// its default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The type of the agents that serve it (the service's name by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_type: Option<String>,
    /// `round_robin` (default), `weighted`, `least_request` or
    /// `consistent_hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balancing: Option<String>,
    /// For `consistent_hash`: the header whose value picks the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_header: Option<String>,
    /// Traffic splits by agent version (a canary: 90/10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub splits: Option<Vec<SplitConfig>>,
    /// Active health checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
    /// Passive outlier detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier: Option<OutlierConfig>,
    /// Circuit breakers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerSettings>,
    /// Retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryConfig>,
    /// Timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutConfig>,
    /// `http1` (default) or `http2` (cleartext, prior knowledge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Pass the caller's `Authorization` header to the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_authorization: Option<bool>,
}

/// A service as the gateway treats it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Service {
    /// Its name.
    pub name: String,
    /// Whether it was configured (otherwise an agent type with the defaults).
    pub configured: bool,
    /// The type of its agents.
    pub agent_type: String,
    /// The balancing algorithm.
    pub balancing: String,
    /// For `consistent_hash`.
    pub hash_header: Option<String>,
    /// Traffic splits.
    pub splits: Vec<SplitConfig>,
    /// Active health checks.
    pub health_check: HealthCheckConfig,
    /// Outlier detection.
    pub outlier: OutlierConfig,
    /// Circuit breakers.
    pub breaker: BreakerSettings,
    /// Retries.
    pub retry: RetryConfig,
    /// Timeouts.
    pub timeouts: TimeoutConfig,
    /// `http1` or `http2`.
    pub protocol: String,
    /// Whether `Authorization` is passed on.
    pub forward_authorization: bool,
}

/// `GET /api/v1/gateway/services`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ServiceList {
    /// By name.
    pub services: Vec<Service>,
}

/// `PUT /api/v1/gateway/routes/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Only requests for this host (port ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Only paths that start with this (`/` for all).
    pub path_prefix: String,
    /// The service it sends to.
    pub service: String,
    /// Take the prefix off the path sent upstream.
    #[serde(default)]
    pub strip_prefix: bool,
    /// `proxy` (default) or `aggregate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// For `aggregate`: at most this many instances (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
    /// For `aggregate`: how long to wait for the slowest (default 5000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

/// A route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Route {
    /// Its name.
    pub name: String,
    /// Its settings.
    #[serde(flatten)]
    pub config: RouteConfig,
}

/// `GET /api/v1/gateway/routes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RouteList {
    /// Most specific first, as they are matched.
    pub routes: Vec<Route>,
}

/// One instance in the topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstanceState {
    /// The agent.
    pub agent_id: String,
    /// Where it is reached.
    pub endpoint: String,
    /// Its version.
    pub version: Option<String>,
    /// Its weight.
    pub weight: u32,
    /// Its registry status.
    pub status: String,
    /// Whether active health checks pass.
    pub healthy: bool,
    /// Why the last check failed.
    pub last_health_error: Option<String>,
    /// Milliseconds left of its ejection.
    pub ejected_for_ms: Option<u64>,
    /// Ejections so far.
    pub ejections: u32,
    /// `closed`, `open` or `half_open`.
    pub breaker: String,
    /// Requests in flight.
    pub outstanding: u64,
}

/// One service in the topology.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ServiceState {
    /// The service.
    #[serde(flatten)]
    pub service: Service,
    /// Its instances.
    pub instances: Vec<InstanceState>,
}

/// `GET /api/v1/gateway/topology`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Topology {
    /// Every service.
    pub services: Vec<ServiceState>,
    /// Every route.
    pub routes: Vec<Route>,
}

/// One instance's part of an aggregated answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AggregatedPart {
    /// The agent.
    pub instance: String,
    /// Its status, when it answered.
    pub status: Option<u16>,
    /// Its body: JSON when it answered JSON, else text.
    #[schema(value_type = Object)]
    pub body: serde_json::Value,
    /// Why it has no answer.
    pub error: Option<String>,
    /// How long it took, in milliseconds.
    pub elapsed_ms: u64,
}

/// An aggregation route's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AggregatedResponse {
    /// The service.
    pub service: String,
    /// Whether every instance asked answered in time.
    pub complete: bool,
    /// One per instance asked.
    pub responses: Vec<AggregatedPart>,
}

/// `PUT /api/v1/webhooks/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are posted.
    pub url: String,
    /// Topic patterns.
    pub topics: Vec<String>,
    /// A payload filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<serde_json::Map<String, serde_json::Value>>,
    /// The signing secret (`whsec_` and base64); made when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Deliveries of one event before it is dead-lettered (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// The first retry's delay (default 1000), growing exponentially.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// How long the receiver has to answer (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// An outbound webhook; its secret only in the answer that sets it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Webhook {
    /// Its name.
    pub name: String,
    /// Where events are posted.
    pub url: String,
    /// Topic patterns.
    pub topics: Vec<String>,
    /// The payload filter.
    #[schema(value_type = Object)]
    pub filter: serde_json::Map<String, serde_json::Value>,
    /// Deliveries before dead-lettering.
    pub max_attempts: u32,
    /// The first retry's delay.
    pub retry_after_ms: u64,
    /// The receiver's time to answer.
    pub timeout_ms: u64,
    /// Its consumer group (dead letters: `/api/v1/groups/{group}/dead-letters`).
    pub group: String,
    /// The signing secret: only in the answer to `PUT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// `GET /api/v1/webhooks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebhookList {
    /// By name.
    pub webhooks: Vec<Webhook>,
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebhookDelivery {
    /// The event's offset.
    pub offset: u64,
    /// The event's id.
    pub event_id: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// When.
    pub at: DateTime<Utc>,
    /// The receiver's status, if it answered.
    pub status: Option<u16>,
    /// Why it failed.
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: u64,
}

/// `GET /api/v1/webhooks/{name}/deliveries`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebhookDeliveryList {
    /// Newest first.
    pub deliveries: Vec<WebhookDelivery>,
}

/// `PUT /api/v1/hooks/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// The topic its requests are published on.
    pub topic: String,
    /// The secret senders sign with (`whsec_…`); made when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// How far a request's timestamp may be from now (default 300000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance_ms: Option<u64>,
}

/// An inbound hook; its secret only in the answer that sets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Hook {
    /// Its name.
    pub name: String,
    /// Where it is called: `POST /api/v1/hooks/{name}`.
    pub url: String,
    /// Its topic.
    pub topic: String,
    /// Timestamp tolerance.
    pub tolerance_ms: u64,
    /// The secret: only in the answer to `PUT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// `GET /api/v1/hooks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HookList {
    /// By name.
    pub hooks: Vec<Hook>,
}

/// The answer to an accepted inbound hook request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HookReceived {
    /// The event's id (the `webhook-id`).
    pub id: String,
    /// Its topic.
    pub topic: String,
    /// Its offset (a repeat answers the first one's).
    pub offset: u64,
}
