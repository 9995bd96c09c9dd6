//! Health, readiness, metrics and the OpenAPI document.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use switchboard_registry::{AgentFilter, AgentQuery, AgentStatus, MAX_PAGE, Registry};
use switchboard_tasks::{TaskStatus, WorkflowStatus};
use switchboard_telemetry::Metrics;
use switchboard_wire::{AgentMetrics, Health, MetricsReport, Problem, SystemMetrics};

use crate::convert;
use crate::error::ApiError;
use crate::extract::AppJson;
use crate::state::{AppState, Checks};

/// How long a readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Alive: the process answers HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    security(()),
    tag = "system",
    responses((status = 200, description = "Alive", body = Health))
)]
pub(crate) async fn healthz() -> AppJson<Health> {
    AppJson(Health {
        status: "ok".into(),
        checks: BTreeMap::new(),
    })
}

/// Ready: every dependency (the store) answers.
#[utoipa::path(
    get,
    path = "/readyz",
    security(()),
    tag = "system",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "A dependency does not answer", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn readyz(State(checks): State<Checks>) -> Result<AppJson<Health>, ApiError> {
    let mut results = BTreeMap::new();
    let mut ok = true;
    for c in checks.iter() {
        let outcome = match tokio::time::timeout(CHECK_TIMEOUT, c.check()).await {
            Ok(Ok(())) => "ok".to_owned(),
            Ok(Err(e)) => {
                tracing::warn!(check = c.name(), error = %e, "readiness check failed");
                format!("failed: {e}")
            }
            Err(_) => format!("no answer within {CHECK_TIMEOUT:?}"),
        };
        ok &= outcome == "ok";
        results.insert(c.name().to_owned(), outcome);
    }
    if ok {
        Ok(AppJson(Health {
            status: "ready".into(),
            checks: results,
        }))
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NOT_READY",
            "a dependency of the hub does not answer",
        )
        .with_details(json!({ "checks": results }))
        .with_retry_after(1))
    }
}

fn refresh_gauges(registry: &Registry, metrics: &Metrics) -> Vec<(AgentStatus, u64)> {
    let counts = registry.count_by_status();
    for (status, n) in &counts {
        metrics.set_agents(status.as_str(), *n);
    }
    counts
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(
    get,
    path = "/metrics",
    security(("bearer" = ["metrics:read"])),
    tag = "system",
    responses((status = 200, description = "Metrics in the OpenMetrics text format", body = String,
               content_type = "application/openmetrics-text"))
)]
pub(crate) async fn prometheus(State(state): State<AppState>) -> Result<Response, ApiError> {
    refresh_gauges(&state.registry, &state.metrics);
    let mut resp = state.metrics.encode().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(switchboard_telemetry::CONTENT_TYPE),
    );
    Ok(resp)
}

/// Hub and agent figures as JSON.
#[utoipa::path(
    get,
    path = "/api/v1/metrics",
    security(("bearer" = ["metrics:read"])),
    tag = "system",
    responses((status = 200, description = "Figures", body = MetricsReport))
)]
pub(crate) async fn report(
    State(state): State<AppState>,
) -> Result<AppJson<MetricsReport>, ApiError> {
    let counts = refresh_gauges(&state.registry, &state.metrics);
    let live = state
        .registry
        .list(&AgentQuery {
            filter: AgentFilter {
                statuses: AgentStatus::ALL
                    .into_iter()
                    .filter(|s| s.is_live())
                    .collect(),
                ..Default::default()
            },
            limit: MAX_PAGE,
            after: None,
        })
        .await?;
    let totals = state.metrics.http_totals();
    let tasks = state.tasks.count_tasks().await?;
    let workflows = state.tasks.count_workflows().await?;
    let tasks_in = |wanted: &[TaskStatus]| -> u64 {
        tasks
            .iter()
            .filter(|(s, _)| wanted.contains(s))
            .map(|(_, n)| n)
            .sum()
    };
    let system = SystemMetrics {
        pending_tasks: tasks_in(&[TaskStatus::Pending, TaskStatus::Queued]),
        running_tasks: tasks_in(&[TaskStatus::Assigned, TaskStatus::InProgress]),
        tasks_by_status: tasks
            .iter()
            .map(|(s, n)| (s.as_str().to_owned(), *n))
            .collect(),
        completed_workflows: workflows
            .iter()
            .filter(|(s, _)| *s == WorkflowStatus::Completed)
            .map(|(_, n)| *n)
            .sum(),
        workflows_by_status: workflows
            .iter()
            .map(|(s, n)| (s.as_str().to_owned(), *n))
            .collect(),
        active_agents: counts
            .iter()
            .filter(|(s, _)| s.is_live())
            .map(|(_, n)| n)
            .sum(),
        agents_by_status: counts
            .iter()
            .map(|(s, n)| (s.as_str().to_owned(), *n))
            .collect(),
        average_response_time: totals.mean_latency_ms,
        error_rate: if totals.requests == 0 {
            0.0
        } else {
            totals.server_errors as f64 / totals.requests as f64
        },
        requests_total: totals.requests,
        uptime_seconds: state.metrics.uptime().as_secs(),
    };
    let agent_metrics = live
        .agents
        .into_iter()
        .map(|a| {
            let load = a.load();
            (
                a.id,
                AgentMetrics {
                    status: convert::status(a.status),
                    current_tasks: a.current_tasks,
                    max_concurrent_tasks: a.max_concurrent_tasks,
                    load,
                    performance_metrics: a.performance_metrics,
                    last_heartbeat_at: convert::time(a.last_heartbeat_at),
                },
            )
        })
        .collect();
    Ok(AppJson(MetricsReport {
        system_metrics: system,
        agent_metrics,
    }))
}
