//! Keeping instance lists in step with the registry, and checking
//! instances' health.
//!
//! The discovery worker follows `agent.*` events and rebuilds the lists
//! shortly after each burst of them, and every `resync_interval` besides
//! (a missed event costs at most that long). The health worker asks each
//! instance's health URL every `health.interval` of its service.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use switchboard_bus::{Pattern, Start, SubscriptionSpec};
use switchboard_registry::{Agent, AgentQuery, MAX_PAGE};
use tokio_util::sync::CancellationToken;

use crate::instances::Instance;
use crate::service::ServiceSpec;
use crate::{Gateway, ServiceState};

/// Events close together are applied in one rebuild.
const SETTLE: Duration = Duration::from_millis(20);

impl Gateway {
    /// Rebuilds every service's instance list from the registry.
    pub async fn resync(&self) {
        let mut agents: Vec<Agent> = Vec::new();
        let mut after = None;
        loop {
            let q = AgentQuery {
                filter: Default::default(),
                limit: MAX_PAGE,
                after: after.clone(),
            };
            match self.0.registry.list(&q).await {
                Ok(page) => {
                    agents.extend(page.agents);
                    match page.next_after {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "gateway: cannot list agents; instance lists unchanged");
                    return;
                }
            }
        }
        tracing::debug!(agents = agents.len(), "gateway: rebuilding instance lists");
        let mut by_type: HashMap<&str, Vec<&Agent>> = HashMap::new();
        for a in &agents {
            by_type.entry(a.agent_type.as_str()).or_default().push(a);
        }
        let mut services = self
            .0
            .services
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Agent types become services with the default policy.
        for t in by_type.keys() {
            if !services.contains_key(*t) {
                services.insert(
                    (*t).to_owned(),
                    Arc::new(ServiceState::new(
                        ServiceSpec::implicit(t),
                        false,
                        &self.0.config,
                        &self.0.metrics,
                    )),
                );
            }
        }
        services.retain(|name, s| s.configured || by_type.contains_key(name.as_str()));
        for s in services.values() {
            let old = s.instances();
            let fresh: Vec<Arc<Instance>> = by_type
                .get(s.spec.agent_type.as_str())
                .into_iter()
                .flatten()
                .filter_map(|a| Instance::from_agent(a, s.spec.breaker))
                .map(|i| {
                    // Same upstream: keep what was learnt of it.
                    old.iter()
                        .find(|o| o.same_as(&i))
                        .cloned()
                        .unwrap_or_else(|| Arc::new(i))
                })
                .collect();
            for i in &fresh {
                i.conns.prune(self.0.config.pool_idle_timeout);
            }
            *s.instances
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(fresh);
        }
    }

    /// Follows agent events until shutdown.
    pub async fn run_discovery(self, shutdown: CancellationToken) {
        let patterns = ["agent.>"]
            .iter()
            .filter_map(|p| Pattern::parse(p).ok())
            .collect();
        let mut events = self.0.bus.subscribe(SubscriptionSpec {
            patterns,
            filter: Default::default(),
            start: Start::Now,
        });
        let mut tick = tokio::time::interval(self.0.config.resync_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => self.resync().await,
                e = events.next() => {
                    if e.is_err() {
                        break;
                    }
                    // Let a burst of changes arrive, then rebuild once.
                    let settle = tokio::time::sleep(SETTLE);
                    tokio::pin!(settle);
                    loop {
                        tokio::select! {
                            () = &mut settle => break,
                            e = events.next() => if e.is_err() { break },
                        }
                    }
                    self.resync().await;
                }
            }
        }
    }

    /// Checks instances' health until shutdown.
    pub async fn run_health_checks(self, shutdown: CancellationToken) {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(2)));
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(Arc::new(rustls::crypto::ring::default_provider()));
        let connector = match tls {
            Ok(b) => b.https_or_http().enable_http1().wrap_connector(http),
            Err(error) => {
                tracing::warn!(%error, "no system CA certificates; health checks of https instances will fail");
                hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(
                        rustls::ClientConfig::builder()
                            .with_root_certificates(rustls::RootCertStore::empty())
                            .with_no_client_auth(),
                    )
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(http)
            }
        };
        let client: Client<_, http_body_util::Empty<bytes::Bytes>> =
            Client::builder(TokioExecutor::new()).build(connector);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            for s in self.all_services() {
                let h = s.spec.health;
                if h.interval.is_zero() {
                    continue;
                }
                for inst in s.instances().iter() {
                    let Some(url) = inst.health_url.clone() else {
                        continue;
                    };
                    if !inst.check_due(h.interval, now) {
                        continue;
                    }
                    let (client, inst, gateway, service) = (
                        client.clone(),
                        inst.clone(),
                        self.clone(),
                        s.spec.name.clone(),
                    );
                    tokio::spawn(async move {
                        let req = Request::get(url).body(http_body_util::Empty::new());
                        let error = match req {
                            Err(e) => Some(e.to_string()),
                            Ok(req) => {
                                match tokio::time::timeout(h.timeout, client.request(req)).await {
                                    Err(_) => Some(format!("no answer within {:?}", h.timeout)),
                                    Ok(Err(e)) => Some(e.to_string()),
                                    Ok(Ok(resp)) => {
                                        let status = resp.status();
                                        let _ = resp.into_body().collect().await;
                                        (!status.is_success()).then(|| format!("answered {status}"))
                                    }
                                }
                            }
                        };
                        if let Some(healthy) =
                            inst.health_result(error.clone(), h.unhealthy_after, h.healthy_after)
                        {
                            tracing::info!(%service, instance = %inst.agent_id, healthy, error = ?error, "health changed");
                            gateway
                                .0
                                .metrics
                                .gateway_health(&service, &inst.agent_id, healthy);
                        }
                    });
                }
            }
        }
    }
}
