//! Metrics of the hub.
//!
//! [`Metrics`] owns a Prometheus registry and the families every component
//! records into; `GET /metrics` renders it with [`Metrics::encode`]. It also
//! keeps running totals that the JSON metrics (`GET /api/v1/metrics`) report
//! without walking the histograms.
//!
//! Label values are always bounded sets (route templates, not paths; status
//! codes; agent statuses), so no request can grow the registry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The media type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The request method.
    pub method: String,
    /// The matched route template (`/api/v1/agents/{id}`), or `unmatched`.
    pub route: String,
    /// The response status code.
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceStatus {
    service: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabel {
    service: String,
    instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    service: String,
    instance: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabel {
    webhook: String,
    outcome: &'static str,
}

/// The status classes gateway counters are kept by.
const STATUS_CLASSES: [&str; 7] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error", "timeout"];

/// What a gateway exchange ended with, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP status.
    Status(u16),
    /// No answer: the exchange failed.
    Error,
    /// No answer in time.
    Timeout,
}

/// Counters by status class (and, for services, a latency histogram),
/// resolved once.
#[derive(Clone, Debug)]
pub struct GatewayCounters {
    counters: [Counter; 7],
    duration: Option<Histogram>,
}

impl GatewayCounters {
    /// Counts one exchange (and its duration, for a service).
    pub fn count(&self, outcome: Outcome, elapsed: Duration) {
        let i = match outcome {
            Outcome::Status(s) => usize::from((s / 100).clamp(1, 5)) - 1,
            Outcome::Error => 5,
            Outcome::Timeout => 6,
        };
        self.counters[i].inc();
        if let Some(h) = &self.duration {
            h.observe(elapsed.as_secs_f64());
        }
    }
}

/// The gateway's families.
struct Gateway {
    requests: Family<ServiceStatus, Counter>,
    duration: Family<ServiceLabel, Histogram, fn() -> Histogram>,
    upstream: Family<UpstreamLabel, Counter>,
    retries: Family<ServiceLabel, Counter>,
    breaker: Family<InstanceLabel, Gauge>,
    ejections: Family<InstanceLabel, Counter>,
    healthy: Family<InstanceLabel, Gauge>,
    webhooks: Family<WebhookLabel, Counter>,
}

/// The hub's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<HttpLabels, Histogram, fn() -> Histogram>,
    agents: Family<StatusLabel, Gauge>,
    auth_failures: Family<ReasonLabel, Counter>,
    access_denied: Counter,
    rate_limited: Counter,
    audit_failures: Counter,
    gateway: Gateway,
    started: Instant,
    requests_total: AtomicU64,
    server_errors_total: AtomicU64,
    latency_micros_total: AtomicU64,
}

fn latency_histogram() -> Histogram {
    // 100 µs to about 13 s, doubling.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 18,
    ))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every family registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("switchboard");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route and status",
            http_requests.clone(),
        );
        let http_duration =
            Family::<HttpLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests, by method, route and status",
            http_duration.clone(),
        );
        let agents = Family::<StatusLabel, Gauge>::default();
        registry.register("agents", "Registered agents by status", agents.clone());
        let auth_failures = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "auth_failures",
            "Requests refused because their credential was missing or invalid, by reason",
            auth_failures.clone(),
        );
        let access_denied = Counter::default();
        registry.register(
            "access_denied",
            "Requests refused with 401 or 403 after authentication (scope, resource, ACL)",
            access_denied.clone(),
        );
        let rate_limited = Counter::default();
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit",
            rate_limited.clone(),
        );
        let audit_failures = Counter::default();
        registry.register(
            "audit_failures",
            "Audit records that could not be stored",
            audit_failures.clone(),
        );
        let gateway = Gateway {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            upstream: Family::default(),
            retries: Family::default(),
            breaker: Family::default(),
            ejections: Family::default(),
            healthy: Family::default(),
            webhooks: Family::default(),
        };
        registry.register(
            "gateway_requests",
            "Requests through the gateway, by service and the class of the status answered (error, timeout: none)",
            gateway.requests.clone(),
        );
        registry.register(
            "gateway_request_duration_seconds",
            "Time to answer requests through the gateway, retries included, by service",
            gateway.duration.clone(),
        );
        registry.register(
            "gateway_upstream_requests",
            "Attempts sent to instances, by service, instance and upstream status class (or error, timeout)",
            gateway.upstream.clone(),
        );
        registry.register(
            "gateway_retries",
            "Attempts made again, by service",
            gateway.retries.clone(),
        );
        registry.register(
            "gateway_breaker_state",
            "Circuit breaker state by instance: 0 closed, 1 half-open, 2 open",
            gateway.breaker.clone(),
        );
        registry.register(
            "gateway_ejections",
            "Instances ejected by outlier detection",
            gateway.ejections.clone(),
        );
        registry.register(
            "gateway_instance_healthy",
            "Whether active health checks pass, by instance (1 or 0)",
            gateway.healthy.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Outbound webhook delivery attempts, by webhook and outcome",
            gateway.webhooks.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                gateway,
                registry,
                http_requests,
                http_duration,
                agents,
                auth_failures,
                access_denied,
                rate_limited,
                audit_failures,
                started: Instant::now(),
                requests_total: AtomicU64::new(0),
                server_errors_total: AtomicU64::new(0),
                latency_micros_total: AtomicU64::new(0),
            }),
        }
    }

    /// Records one answered HTTP request.
    pub fn observe_http(&self, labels: HttpLabels, elapsed: Duration) {
        let i = &self.inner;
        if labels.status >= 500 {
            i.server_errors_total.fetch_add(1, Ordering::Relaxed);
        }
        i.requests_total.fetch_add(1, Ordering::Relaxed);
        i.latency_micros_total.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        i.http_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        i.http_requests.get_or_create(&labels).inc();
    }

    /// Sets the number of agents in a status.
    pub fn set_agents(&self, status: &str, count: u64) {
        self.inner
            .agents
            .get_or_create(&StatusLabel {
                status: status.to_owned(),
            })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Counts a refused credential; `reason` comes from a fixed set
    /// (`missing`, `expired`, `revoked`, …).
    pub fn auth_failure(&self, reason: &'static str) {
        self.inner
            .auth_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts a request refused for lack of permission.
    pub fn access_denied(&self) {
        self.inner.access_denied.inc();
    }

    /// Counts a request refused by a rate limit.
    pub fn rate_limited(&self) {
        self.inner.rate_limited.inc();
    }

    /// Counts an audit record that could not be stored.
    pub fn audit_failure(&self) {
        self.inner.audit_failures.inc();
    }

    /// The request counters and latency histogram of a gateway service,
    /// to keep and use without a lookup per request.
    pub fn gateway_service(&self, service: &str) -> GatewayCounters {
        let g = &self.inner.gateway;
        let counters = STATUS_CLASSES.map(|class| {
            g.requests
                .get_or_create(&ServiceStatus {
                    service: service.to_owned(),
                    status: class.to_owned(),
                })
                .clone()
        });
        GatewayCounters {
            counters,
            duration: Some(
                g.duration
                    .get_or_create(&ServiceLabel {
                        service: service.to_owned(),
                    })
                    .clone(),
            ),
        }
    }

    /// The counters of attempts sent to one instance, by upstream status
    /// class, to keep and use without a lookup per request.
    pub fn gateway_instance(&self, service: &str, instance: &str) -> GatewayCounters {
        let g = &self.inner.gateway;
        GatewayCounters {
            counters: STATUS_CLASSES.map(|class| {
                g.upstream
                    .get_or_create(&UpstreamLabel {
                        service: service.to_owned(),
                        instance: instance.to_owned(),
                        status: class.to_owned(),
                    })
                    .clone()
            }),
            duration: None,
        }
    }

    /// Counts a retry.
    pub fn gateway_retry(&self, service: &str) {
        self.inner
            .gateway
            .retries
            .get_or_create(&ServiceLabel {
                service: service.to_owned(),
            })
            .inc();
    }

    /// Sets an instance's breaker state (`closed`, `half_open`, `open`).
    pub fn gateway_breaker(&self, service: &str, instance: &str, state: &str) {
        let v = match state {
            "open" => 2,
            "half_open" => 1,
            _ => 0,
        };
        self.inner
            .gateway
            .breaker
            .get_or_create(&InstanceLabel {
                service: service.to_owned(),
                instance: instance.to_owned(),
            })
            .set(v);
    }

    /// Counts an ejection.
    pub fn gateway_ejection(&self, service: &str, instance: &str) {
        self.inner
            .gateway
            .ejections
            .get_or_create(&InstanceLabel {
                service: service.to_owned(),
                instance: instance.to_owned(),
            })
            .inc();
    }

    /// Sets whether an instance passes its health checks.
    pub fn gateway_health(&self, service: &str, instance: &str, healthy: bool) {
        self.inner
            .gateway
            .healthy
            .get_or_create(&InstanceLabel {
                service: service.to_owned(),
                instance: instance.to_owned(),
            })
            .set(i64::from(healthy));
    }

    /// Counts a webhook delivery attempt.
    pub fn webhook_delivery(&self, webhook: &str, ok: bool) {
        self.inner
            .gateway
            .webhooks
            .get_or_create(&WebhookLabel {
                webhook: webhook.to_owned(),
                outcome: if ok { "delivered" } else { "failed" },
            })
            .inc();
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }

    /// HTTP totals since start.
    pub fn http_totals(&self) -> HttpTotals {
        let i = &self.inner;
        let requests = i.requests_total.load(Ordering::Relaxed);
        let errors = i.server_errors_total.load(Ordering::Relaxed);
        let micros = i.latency_micros_total.load(Ordering::Relaxed);
        HttpTotals {
            requests,
            server_errors: errors,
            mean_latency_ms: if requests == 0 {
                0.0
            } else {
                micros as f64 / requests as f64 / 1000.0
            },
        }
    }

    /// Time since these metrics were created (the hub's start).
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }
}

/// Running HTTP totals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HttpTotals {
    /// Requests answered.
    pub requests: u64,
    /// Of which 5xx.
    pub server_errors: u64,
    /// Mean time to answer, in milliseconds.
    pub mean_latency_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_encodes() {
        let m = Metrics::new();
        let labels = |status| HttpLabels {
            method: "GET".into(),
            route: "/healthz".into(),
            status,
        };
        m.observe_http(labels(200), Duration::from_millis(2));
        m.observe_http(labels(503), Duration::from_millis(4));
        m.set_agents("active", 3);
        let text = m.encode();
        assert!(text.contains(
            r#"switchboard_http_requests_total{method="GET",route="/healthz",status="200"} 1"#
        ));
        assert!(text.contains(r#"switchboard_agents{status="active"} 3"#));
        let t = m.http_totals();
        assert_eq!((t.requests, t.server_errors), (2, 1));
        assert!((t.mean_latency_ms - 3.0).abs() < 0.01);
    }
}
