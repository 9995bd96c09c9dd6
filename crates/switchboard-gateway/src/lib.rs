//! The gateway: a reverse proxy to registered agents, with service
//! discovery, load balancing, health checks, outlier ejection, circuit
//! breakers, retries, timeouts and trace propagation; response
//! aggregation; signed webhooks out and verified webhooks in.
//!
//! Layout:
//! - [`service`]: services and routes as configured ([`ServiceSpec`],
//!   [`RouteSpec`]).
//! - [`instances`]: a service's instances and what is learnt of each.
//! - [`balance`]: the balancing algorithms.
//! - [`breaker`]: per-instance circuit breakers.
//! - [`retry`]: when to retry, and the retry budget.
//! - `proxy`: forwarding one request (headers, bodies, upgrades, retries,
//!   timeouts).
//! - `h1`: plain HTTP/1.1 upstream connections driven by the request's
//!   own task.
//! - `aggregate`: fanning one request out to several instances.
//! - `discovery`: keeping instance lists in step with the registry, and
//!   the active health checker.
//! - [`webhooks`]: Standard Webhooks signing and verification, outbound
//!   delivery and inbound hooks.
//! - [`store`]: [`GatewayStore`], what backends implement.
//!
//! [`Gateway`] is the handle. Configuration lives in memory (loaded at
//! start, written through on every change), so a change takes effect on
//! the next request without a restart.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use switchboard_bus::groups::Groups;
use switchboard_bus::{Bus, Event};
use switchboard_core::{FieldError, FieldErrors, StorageError};
use switchboard_registry::Registry;
use switchboard_telemetry::Metrics;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod aggregate;
pub mod balance;
pub mod breaker;
mod discovery;
mod h1;
pub mod instances;
mod proxy;
pub mod retry;
pub mod service;
pub mod store;
pub mod webhooks;

pub use aggregate::{Aggregated, InstanceAnswer};
pub use balance::Algorithm;
pub use breaker::{BreakerConfig, BreakerState};
pub use instances::{Instance, InstanceReport};
pub use proxy::CallContext;
pub use retry::RetryPolicy;
pub use service::{
    HealthSpec, OutlierSpec, Protocol, RouteKind, RouteSpec, ServiceSpec, Split, Timeouts,
};
pub use store::GatewayStore;

use balance::Balancer;
use retry::RetryBudget;

/// The body of proxied requests and responses.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;
/// The error of a [`ProxyBody`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What goes wrong proxying or configuring.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Input is wrong; every bad field is listed.
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    /// No such service: no configured one, and no agent of that type.
    #[error("no service {0}")]
    NoService(String),
    /// No such route or webhook.
    #[error("{kind} {name} not found")]
    NotFound {
        /// `route`, `service`, `webhook` or `hook`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The service has no instance that may take a request now.
    #[error("no healthy instance of service {service}: {why}")]
    Unavailable {
        /// The service.
        service: String,
        /// What stood in the way.
        why: String,
    },
    /// A timeout ran out (`connect`, `first_byte` or `total`).
    #[error(
        "the upstream did not answer in time ({kind} timeout of {limit:?}, instance {instance})"
    )]
    Timeout {
        /// Which timeout.
        kind: &'static str,
        /// Its length.
        limit: Duration,
        /// The instance tried last.
        instance: String,
    },
    /// The upstream could not be reached, or broke the exchange.
    #[error("upstream {instance} failed: {why}")]
    Upstream {
        /// The instance tried last.
        instance: String,
        /// What happened.
        why: String,
    },
    /// The request cannot be proxied as given.
    #[error("{0}")]
    BadRequest(String),
    /// An inbound webhook's signature, timestamp or id is refused.
    #[error("{0}")]
    Unverified(String),
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Gateway settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// How long an idle upstream connection is kept for reuse.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per upstream (per serving thread for plain
    /// HTTP/1.1 upstreams).
    pub pool_max_idle_per_host: usize,
    /// Request bodies up to this size are kept, so they can be retried
    /// (and sent to several instances by an aggregation); larger ones
    /// stream and are not retried.
    pub replay_limit: usize,
    /// How often instance lists are rebuilt from the registry, besides
    /// every agent event.
    pub resync_interval: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
            replay_limit: 64 * 1024,
            resync_interval: Duration::from_secs(5),
        }
    }
}

/// A service's live state.
pub(crate) struct ServiceState {
    pub(crate) spec: ServiceSpec,
    /// Set by configuration, not inferred from an agent type.
    pub(crate) configured: bool,
    /// A `std` lock: swapped whole by discovery, cloned (an `Arc`) by each
    /// request.
    pub(crate) instances: RwLock<Arc<Vec<Arc<Instance>>>>,
    pub(crate) balancer: Balancer,
    pub(crate) budget: RetryBudget,
    pub(crate) client: proxy::Upstream,
    /// Its request counters, resolved once.
    pub(crate) counters: switchboard_telemetry::GatewayCounters,
}

impl ServiceState {
    fn new(spec: ServiceSpec, configured: bool, config: &GatewayConfig, metrics: &Metrics) -> Self {
        let client = proxy::Upstream::new(&spec, config);
        Self {
            counters: metrics.gateway_service(&spec.name),
            spec,
            configured,
            instances: RwLock::new(Arc::new(Vec::new())),
            balancer: Balancer::default(),
            budget: RetryBudget::default(),
            client,
        }
    }

    pub(crate) fn instances(&self) -> Arc<Vec<Arc<Instance>>> {
        self.instances
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Renders an event as the JSON a webhook receives (the API's CloudEvents
/// form, which the gateway does not own).
pub type RenderEvent = Arc<dyn Fn(&Event) -> Arc<str> + Send + Sync>;

/// What the gateway is built on.
pub struct Deps {
    /// Where instances come from.
    pub registry: Registry,
    /// Where agent events and hook events go.
    pub bus: Bus,
    /// Consumer groups, one per outbound webhook.
    pub groups: Groups,
    /// Where configuration is kept.
    pub store: Arc<dyn GatewayStore>,
    /// Where figures go.
    pub metrics: Metrics,
    /// How an event is written for a webhook.
    pub render: RenderEvent,
}

pub(crate) struct Inner {
    pub(crate) config: GatewayConfig,
    pub(crate) registry: Registry,
    pub(crate) bus: Bus,
    pub(crate) groups: Groups,
    pub(crate) store: Arc<dyn GatewayStore>,
    pub(crate) metrics: Metrics,
    pub(crate) render: RenderEvent,
    /// Cancelled at shutdown; webhook workers watch children of it.
    pub(crate) stop: CancellationToken,
    /// The webhook workers, waited for at shutdown.
    pub(crate) tasks: TaskTracker,
    /// The runtime the gateway was opened on, where its workers run
    /// (not the serving thread of the request that made one).
    pub(crate) runtime: tokio::runtime::Handle,
    /// Posts webhooks.
    pub(crate) hook_client: proxy::HookClient,
    /// Services by name. A `std` lock: looked up per request, changed by
    /// configuration and discovery.
    pub(crate) services: RwLock<HashMap<String, Arc<ServiceState>>>,
    pub(crate) routes: RwLock<Arc<Vec<RouteSpec>>>,
    /// Serializes configuration changes, so store and memory agree.
    pub(crate) writes: tokio::sync::Mutex<()>,
    pub(crate) webhooks: webhooks::Webhooks,
}

/// The gateway's handle. Cheap to clone.
#[derive(Clone)]
pub struct Gateway(pub(crate) Arc<Inner>);

const SERVICE: &str = "service";
const ROUTE: &str = "route";

impl Gateway {
    /// Loads the configured services, routes and webhooks, and the
    /// instances the registry knows.
    pub async fn open(
        config: GatewayConfig,
        deps: Deps,
        stop: CancellationToken,
    ) -> Result<Self, GatewayError> {
        let Deps {
            registry,
            bus,
            groups,
            store,
            metrics,
            render,
        } = deps;
        let mut services = HashMap::new();
        let mut routes = Vec::new();
        let mut hooks = Vec::new();
        for (kind, name, doc) in store.load_gateway().await? {
            let bad = |e: serde_json::Error| {
                GatewayError::Storage(StorageError::new(
                    switchboard_core::StorageErrorKind::Corrupt,
                    format!("gateway {kind} {name}: {e}"),
                ))
            };
            match kind.as_str() {
                SERVICE => {
                    let spec: ServiceSpec = serde_json::from_str(&doc).map_err(bad)?;
                    services.insert(
                        spec.name.clone(),
                        Arc::new(ServiceState::new(spec, true, &config, &metrics)),
                    );
                }
                ROUTE => routes.push(serde_json::from_str::<RouteSpec>(&doc).map_err(bad)?),
                webhooks::OUTBOUND | webhooks::INBOUND => hooks.push((kind, doc)),
                other => tracing::warn!(kind = other, %name, "unknown gateway object ignored"),
            }
        }
        routes.sort_by(route_order);
        let gateway = Gateway(Arc::new(Inner {
            webhooks: webhooks::Webhooks::load(hooks)?,
            hook_client: proxy::hook_client(),
            config,
            registry,
            bus,
            groups,
            store,
            metrics,
            render,
            stop,
            tasks: TaskTracker::new(),
            runtime: tokio::runtime::Handle::current(),
            services: RwLock::new(services),
            routes: RwLock::new(Arc::new(routes)),
            writes: tokio::sync::Mutex::new(()),
        }));
        gateway.resync().await;
        Ok(gateway)
    }

    pub(crate) fn service_state(&self, name: &str) -> Option<Arc<ServiceState>> {
        self.0
            .services
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    pub(crate) fn all_services(&self) -> Vec<Arc<ServiceState>> {
        let mut v: Vec<_> = self
            .0
            .services
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        v
    }

    /// The configured routes, most specific first.
    pub fn routes(&self) -> Arc<Vec<RouteSpec>> {
        self.0
            .routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The route a request for `host` and `path` takes, if any.
    pub fn match_route(&self, host: Option<&str>, path: &str) -> Option<RouteSpec> {
        self.routes()
            .iter()
            .find(|r| r.matches(host, path))
            .cloned()
    }

    /// Every service: configured ones, and agent types with agents.
    pub fn services(&self) -> Vec<(ServiceSpec, bool)> {
        self.all_services()
            .iter()
            .map(|s| (s.spec.clone(), s.configured))
            .collect()
    }

    /// One service's settings (the defaults for an agent type not
    /// configured).
    pub fn service(&self, name: &str) -> Option<(ServiceSpec, bool)> {
        self.service_state(name)
            .map(|s| (s.spec.clone(), s.configured))
    }

    /// Creates or replaces a service's settings; its instances keep their
    /// state when the spec leaves them unchanged.
    pub async fn put_service(&self, spec: ServiceSpec) -> Result<ServiceSpec, GatewayError> {
        let mut errs = FieldErrors::new();
        spec.check(&mut errs);
        errs.finish().map_err(GatewayError::Invalid)?;
        let _w = self.0.writes.lock().await;
        let doc =
            serde_json::to_string(&spec).map_err(|e| GatewayError::BadRequest(e.to_string()))?;
        self.0.store.put_gateway(SERVICE, &spec.name, &doc).await?;
        let state = Arc::new(ServiceState::new(
            spec.clone(),
            true,
            &self.0.config,
            &self.0.metrics,
        ));
        self.0
            .services
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(spec.name.clone(), state);
        drop(_w);
        self.resync().await;
        Ok(spec)
    }

    /// Removes a service's settings; its agents (if any) serve it again
    /// with the defaults.
    pub async fn delete_service(&self, name: &str) -> Result<(), GatewayError> {
        let _w = self.0.writes.lock().await;
        let configured = self.service_state(name).is_some_and(|s| s.configured);
        if !configured {
            return Err(GatewayError::NotFound {
                kind: "service",
                name: name.to_owned(),
            });
        }
        self.0.store.delete_gateway(SERVICE, name).await?;
        self.0
            .services
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
        drop(_w);
        self.resync().await;
        Ok(())
    }

    /// Creates or replaces a route.
    pub async fn put_route(&self, route: RouteSpec) -> Result<RouteSpec, GatewayError> {
        let mut errs = FieldErrors::new();
        route.check(&mut errs);
        errs.finish().map_err(GatewayError::Invalid)?;
        let _w = self.0.writes.lock().await;
        let doc =
            serde_json::to_string(&route).map_err(|e| GatewayError::BadRequest(e.to_string()))?;
        self.0.store.put_gateway(ROUTE, &route.name, &doc).await?;
        let mut routes: Vec<RouteSpec> = self
            .routes()
            .iter()
            .filter(|r| r.name != route.name)
            .cloned()
            .collect();
        routes.push(route.clone());
        routes.sort_by(route_order);
        *self
            .0
            .routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(routes);
        Ok(route)
    }

    /// Removes a route.
    pub async fn delete_route(&self, name: &str) -> Result<(), GatewayError> {
        let _w = self.0.writes.lock().await;
        if !self.routes().iter().any(|r| r.name == name) {
            return Err(GatewayError::NotFound {
                kind: "route",
                name: name.to_owned(),
            });
        }
        self.0.store.delete_gateway(ROUTE, name).await?;
        let routes: Vec<RouteSpec> = self
            .routes()
            .iter()
            .filter(|r| r.name != name)
            .cloned()
            .collect();
        *self
            .0
            .routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(routes);
        Ok(())
    }

    /// Services, their instances and routes, as they stand.
    pub fn topology(&self) -> Topology {
        let now = std::time::Instant::now();
        let services = self
            .all_services()
            .iter()
            .map(|s| ServiceTopology {
                spec: s.spec.clone(),
                configured: s.configured,
                instances: s
                    .instances()
                    .iter()
                    .map(|i| InstanceTopology {
                        agent_id: i.agent_id.to_string(),
                        endpoint: format!(
                            "{}://{}{}",
                            i.endpoint.scheme, i.endpoint.authority, i.endpoint.base_path
                        ),
                        version: i.version.clone(),
                        weight: i.weight,
                        status: self
                            .0
                            .registry
                            .presence(&i.agent_id)
                            .map(|p| p.status.as_str().to_owned())
                            .unwrap_or_else(|| "unknown".into()),
                        report: i.report(now),
                    })
                    .collect(),
            })
            .collect();
        Topology {
            services,
            routes: self.routes().to_vec(),
        }
    }

    /// The webhooks.
    pub fn webhooks(&self) -> &webhooks::Webhooks {
        &self.0.webhooks
    }

    /// Resolves once the webhook workers have stopped (after shutdown).
    pub async fn closed(&self) {
        self.0.tasks.close();
        self.0.tasks.wait().await;
    }
}

/// Longest prefix first; a route with a host before one without.
fn route_order(a: &RouteSpec, b: &RouteSpec) -> std::cmp::Ordering {
    b.host
        .is_some()
        .cmp(&a.host.is_some())
        .then(b.path_prefix.len().cmp(&a.path_prefix.len()))
        .then(a.name.cmp(&b.name))
}

/// What `GET /api/v1/gateway/topology` shows.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Every service.
    pub services: Vec<ServiceTopology>,
    /// Every configured route.
    pub routes: Vec<RouteSpec>,
}

/// One service in the topology.
#[derive(Debug, Clone)]
pub struct ServiceTopology {
    /// Its settings.
    pub spec: ServiceSpec,
    /// Whether they were configured (else the defaults).
    pub configured: bool,
    /// Its instances.
    pub instances: Vec<InstanceTopology>,
}

/// One instance in the topology.
#[derive(Debug, Clone)]
pub struct InstanceTopology {
    /// The agent.
    pub agent_id: String,
    /// Where it is reached.
    pub endpoint: String,
    /// Its version.
    pub version: Option<String>,
    /// Its weight.
    pub weight: u32,
    /// The agent's registry status.
    pub status: String,
    /// Health, ejection, breaker, requests in flight.
    pub report: InstanceReport,
}

thread_local! {
    static SERVING_THREAD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the calling thread as the hub's serving thread `index` (from 0):
/// the connections to instances it makes are kept for it alone, as they
/// are driven by its runtime.
pub fn set_serving_thread(index: usize) {
    SERVING_THREAD.set(index + 1);
}

/// The calling thread's pool list: 0 for any thread but a serving one.
pub(crate) fn serving_thread() -> usize {
    SERVING_THREAD.get()
}

static SERVING_THREADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Makes the connection pools made from now on keep a list for each of
/// `threads` serving threads (they keep one per core at least). Threads
/// beyond a pool's lists share them: still correct, as a connection is
/// driven by the runtime that made it wherever it is used, but slower.
pub fn expect_serving_threads(threads: usize) {
    SERVING_THREADS.fetch_max(threads, std::sync::atomic::Ordering::Relaxed);
}

/// How many serving threads pools keep lists for.
pub(crate) fn serving_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    cores.max(SERVING_THREADS.load(std::sync::atomic::Ordering::Relaxed))
}
