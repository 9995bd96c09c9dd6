//! Domain types to wire types and back, by hand.

use chrono::{DateTime, Utc};
use switchboard_core::UnixMillis;
use switchboard_registry as reg;
use switchboard_wire as wire;

pub(crate) fn time(ms: UnixMillis) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

pub(crate) fn status(s: reg::AgentStatus) -> wire::AgentStatus {
    match s {
        reg::AgentStatus::Active => wire::AgentStatus::Active,
        reg::AgentStatus::Idle => wire::AgentStatus::Idle,
        reg::AgentStatus::Busy => wire::AgentStatus::Busy,
        reg::AgentStatus::Draining => wire::AgentStatus::Draining,
        reg::AgentStatus::Stale => wire::AgentStatus::Stale,
        reg::AgentStatus::Offline => wire::AgentStatus::Offline,
    }
}

pub(crate) fn reported(s: wire::ReportedStatus) -> reg::AgentStatus {
    match s {
        wire::ReportedStatus::Active => reg::AgentStatus::Active,
        wire::ReportedStatus::Idle => reg::AgentStatus::Idle,
        wire::ReportedStatus::Busy => reg::AgentStatus::Busy,
        wire::ReportedStatus::Draining => reg::AgentStatus::Draining,
    }
}

pub(crate) fn agent(a: reg::Agent) -> wire::Agent {
    let load = a.load();
    wire::Agent {
        id: a.id,
        agent_type: a.agent_type,
        name: a.name,
        version: a.version,
        capabilities: a.capabilities,
        endpoint: a.endpoint,
        health_check_url: a.health_check_url,
        configuration: a.configuration,
        metadata: a.metadata,
        status: status(a.status),
        reported_status: status(a.reported_status),
        current_tasks: a.current_tasks,
        max_concurrent_tasks: a.max_concurrent_tasks,
        load,
        performance_metrics: a.performance_metrics,
        registered_at: time(a.registered_at),
        updated_at: time(a.updated_at),
        last_heartbeat_at: time(a.last_heartbeat_at),
        status_changed_at: time(a.status_changed_at),
    }
}

pub(crate) fn ack(a: reg::HeartbeatAck) -> wire::HeartbeatAck {
    wire::HeartbeatAck {
        agent_id: a.agent_id,
        status: status(a.status),
        recorded_at: time(a.recorded_at),
        heartbeat_interval_ms: a.interval_ms,
    }
}

pub(crate) fn registration(r: wire::RegisterAgentRequest) -> reg::Registration {
    reg::Registration {
        id: r.id,
        agent_type: r.agent_type,
        name: r.name,
        version: r.version,
        capabilities: r.capabilities,
        endpoint: r.endpoint,
        health_check_url: r.health_check_url,
        configuration: r.configuration.unwrap_or_default(),
        metadata: r.metadata.unwrap_or_default(),
    }
}

pub(crate) fn heartbeat(h: wire::HeartbeatRequest) -> reg::Heartbeat {
    reg::Heartbeat {
        status: h.status.map(reported),
        current_tasks: h.current_tasks,
        performance_metrics: h.performance_metrics.map(|m| {
            m.into_iter()
                .map(|(k, v)| {
                    let n = serde_json::Number::from_f64(v)
                        .map_or(serde_json::Value::Null, serde_json::Value::Number);
                    (k, n)
                })
                .collect()
        }),
    }
}
