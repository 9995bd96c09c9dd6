//! A service's instances: the agents that serve it, with what the gateway
//! learns of each (health checks, outliers, breaker, requests in flight).
//!
//! The list is rebuilt from the registry when agents change; an instance
//! that stays (same agent, same endpoint) keeps its state. Whether an
//! agent is live is read from the registry at every pick (in memory), so a
//! stale, offline or draining agent is never chosen, whatever the list
//! says.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Uri};
use switchboard_registry::{Agent, AgentStatus};

use crate::balance::Candidate;
use crate::breaker::{Breaker, BreakerConfig, BreakerState};
use crate::service::OutlierSpec;

/// Where an instance is reached: its endpoint, split for building URIs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Host and port.
    pub authority: Authority,
    /// The endpoint's path, without a trailing slash (`` for the root).
    pub base_path: String,
    /// The `Host` header its requests carry.
    pub host: HeaderValue,
}

impl Endpoint {
    /// Parses an agent's endpoint; `None` when it is not an absolute http
    /// or https URL.
    pub fn parse(url: &str) -> Option<Self> {
        let uri: Uri = url.parse().ok()?;
        let scheme = uri.scheme()?.clone();
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return None;
        }
        let authority = uri.authority()?.clone();
        Some(Self {
            scheme,
            host: HeaderValue::from_str(authority.as_str()).ok()?,
            authority,
            base_path: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// The origin-form URI (path and query only) for `path_and_query`
    /// (which starts with `/`): the endpoint's path, then it.
    pub fn origin_form(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        let path = if self.base_path.is_empty() {
            http::uri::PathAndQuery::try_from(path_and_query)?
        } else {
            http::uri::PathAndQuery::try_from(format!("{}{path_and_query}", self.base_path))?
        };
        Ok(Uri::from(path))
    }

    /// The absolute URI of `origin` (an origin-form URI) on this endpoint.
    pub fn absolute(&self, origin: &Uri) -> Result<Uri, http::Error> {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(self.scheme.clone());
        uri.authority = Some(self.authority.clone());
        uri.path_and_query = origin.path_and_query().cloned();
        Ok(Uri::from_parts(uri)?)
    }
}

#[derive(Debug)]
struct Health {
    healthy: bool,
    successes: u32,
    failures: u32,
    next_check: Instant,
    last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Outlier {
    consecutive: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

/// One instance of a service.
#[derive(Debug)]
pub struct Instance {
    /// The agent.
    pub agent_id: Arc<str>,
    /// Its endpoint.
    pub endpoint: Endpoint,
    /// Where its health is checked.
    pub health_url: Option<Uri>,
    /// Its weight (agent `configuration.weight`, else 1).
    pub weight: u32,
    /// Its version.
    pub version: Option<String>,
    outstanding: AtomicU64,
    breaker: Breaker,
    health: Mutex<Health>,
    outlier: Mutex<Outlier>,
    /// Its attempt counters, resolved on first use.
    pub(crate) counters: std::sync::OnceLock<switchboard_telemetry::GatewayCounters>,
    /// Its idle plain HTTP/1.1 connections.
    pub(crate) conns: crate::h1::ConnPool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Instance {
    /// The instance an agent makes, if it has a usable endpoint.
    pub fn from_agent(agent: &Agent, breaker: BreakerConfig) -> Option<Self> {
        let endpoint = Endpoint::parse(agent.endpoint.as_deref()?)?;
        let weight = agent
            .configuration
            .get("weight")
            .or_else(|| agent.metadata.get("weight"))
            .and_then(serde_json::Value::as_u64)
            .and_then(|w| u32::try_from(w).ok())
            .unwrap_or(1)
            .clamp(1, 1000);
        let health_url = agent
            .health_check_url
            .as_deref()
            .and_then(|u| u.parse::<Uri>().ok())
            .filter(|u| u.scheme().is_some());
        Some(Self::new(
            &agent.id,
            endpoint,
            health_url,
            weight,
            agent.version.clone(),
            breaker,
        ))
    }

    /// An instance with fresh state.
    pub fn new(
        agent_id: &str,
        endpoint: Endpoint,
        health_url: Option<Uri>,
        weight: u32,
        version: Option<String>,
        breaker: BreakerConfig,
    ) -> Self {
        Self {
            agent_id: agent_id.into(),
            health_url,
            endpoint,
            weight,
            version,
            outstanding: AtomicU64::new(0),
            breaker: Breaker::new(breaker),
            health: Mutex::new(Health {
                healthy: true,
                successes: 0,
                failures: 0,
                next_check: Instant::now(),
                last_error: None,
            }),
            outlier: Mutex::new(Outlier::default()),
            counters: std::sync::OnceLock::new(),
            conns: crate::h1::ConnPool::default(),
        }
    }

    /// Whether another instance is the same upstream (state carries over).
    pub fn same_as(&self, other: &Instance) -> bool {
        self.agent_id == other.agent_id
            && self.endpoint == other.endpoint
            && self.weight == other.weight
            && self.version == other.version
            && self.health_url == other.health_url
    }

    /// Whether it may be sent a request now (apart from the agent's
    /// registry status).
    pub fn usable(&self, now: Instant) -> bool {
        lock(&self.health).healthy
            && lock(&self.outlier).ejected_until.is_none_or(|t| now >= t)
            && self.breaker.available(now)
    }

    /// The breaker.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// What passive detection learns from one exchange; returns the
    /// ejection's end when this one ejected the instance.
    pub fn observe(&self, failed: bool, spec: &OutlierSpec, now: Instant) -> Option<Instant> {
        if spec.consecutive_failures == 0 {
            return None;
        }
        let mut o = lock(&self.outlier);
        if !failed {
            o.consecutive = 0;
            return None;
        }
        o.consecutive += 1;
        if o.consecutive < spec.consecutive_failures || o.ejected_until.is_some_and(|t| now < t) {
            return None;
        }
        o.ejections += 1;
        o.consecutive = 0;
        let factor = u32::min(o.ejections, 1 << 16);
        let length = (spec.base_ejection * factor).min(spec.max_ejection);
        let until = now + length;
        o.ejected_until = Some(until);
        Some(until)
    }

    /// Whether a health check is due; if so, schedules the next one.
    pub fn check_due(&self, interval: Duration, now: Instant) -> bool {
        let mut h = lock(&self.health);
        if now < h.next_check {
            return false;
        }
        h.next_check = now + interval;
        true
    }

    /// Applies a health check's result; returns the new health when it
    /// changed.
    pub fn health_result(
        &self,
        error: Option<String>,
        unhealthy_after: u32,
        healthy_after: u32,
    ) -> Option<bool> {
        let mut h = lock(&self.health);
        let before = h.healthy;
        match error {
            None => {
                h.failures = 0;
                h.successes += 1;
                if !h.healthy && h.successes >= healthy_after {
                    h.healthy = true;
                }
                h.last_error = None;
            }
            Some(e) => {
                h.successes = 0;
                h.failures += 1;
                if h.healthy && h.failures >= unhealthy_after {
                    h.healthy = false;
                }
                h.last_error = Some(e);
            }
        }
        (h.healthy != before).then_some(h.healthy)
    }

    /// What the topology shows of it.
    pub fn report(&self, now: Instant) -> InstanceReport {
        let h = lock(&self.health);
        let o = lock(&self.outlier);
        InstanceReport {
            healthy: h.healthy,
            last_health_error: h.last_error.clone(),
            ejected_for: o
                .ejected_until
                .and_then(|t| t.checked_duration_since(now))
                .filter(|d| !d.is_zero()),
            ejections: o.ejections,
            breaker: self.breaker.state(now),
            outstanding: self.outstanding.load(Ordering::Relaxed),
        }
    }
}

/// An instance's state, as the topology reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceReport {
    /// Passes active health checks.
    pub healthy: bool,
    /// Why the last check failed.
    pub last_health_error: Option<String>,
    /// How much longer it is ejected.
    pub ejected_for: Option<Duration>,
    /// Ejections so far.
    pub ejections: u32,
    /// Its breaker.
    pub breaker: BreakerState,
    /// Requests in flight.
    pub outstanding: u64,
}

/// A request in flight to an instance.
#[derive(Debug)]
pub struct InFlight(Arc<Instance>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Candidate for Arc<Instance> {
    fn id(&self) -> &str {
        &self.agent_id
    }

    fn weight(&self) -> u32 {
        self.weight
    }

    fn outstanding(&self) -> u64 {
        self.outstanding.load(Ordering::Relaxed)
    }
}

/// Whether an agent in `status` may be sent requests.
pub fn serves(status: AgentStatus) -> bool {
    matches!(
        status,
        AgentStatus::Active | AgentStatus::Idle | AgentStatus::Busy
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_join_paths() {
        let uri = |e: &Endpoint, p: &str| {
            let origin = e.origin_form(p).expect("origin form");
            e.absolute(&origin).expect("uri").to_string()
        };
        let e = Endpoint::parse("http://127.0.0.1:8081/base/").expect("endpoint");
        assert_eq!(uri(&e, "/x?y=1"), "http://127.0.0.1:8081/base/x?y=1");
        let e = Endpoint::parse("https://svc.example").expect("endpoint");
        assert_eq!(uri(&e, "/"), "https://svc.example/");
        assert!(Endpoint::parse("ftp://x").is_none());
        assert!(Endpoint::parse("/relative").is_none());
    }

    fn instance() -> Instance {
        Instance::new(
            "a1",
            Endpoint::parse("http://127.0.0.1:9").expect("endpoint"),
            None,
            1,
            None,
            BreakerConfig::default(),
        )
    }

    #[test]
    fn outliers_are_ejected_for_growing_periods() {
        let i = instance();
        let spec = OutlierSpec {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
        };
        let t = Instant::now();
        assert_eq!(i.observe(true, &spec, t), None);
        assert_eq!(
            i.observe(false, &spec, t),
            None,
            "a success resets the count"
        );
        assert_eq!(i.observe(true, &spec, t), None);
        assert_eq!(i.observe(true, &spec, t), None);
        assert_eq!(i.observe(true, &spec, t), Some(t + Duration::from_secs(10)));
        assert!(!i.usable(t + Duration::from_secs(9)));
        assert!(i.usable(t + Duration::from_secs(10)));
        let t2 = t + Duration::from_secs(10);
        for _ in 0..2 {
            assert_eq!(i.observe(true, &spec, t2), None);
        }
        assert_eq!(
            i.observe(true, &spec, t2),
            Some(t2 + Duration::from_secs(20))
        );
        let t3 = t2 + Duration::from_secs(20);
        for _ in 0..2 {
            i.observe(true, &spec, t3);
        }
        assert_eq!(
            i.observe(true, &spec, t3),
            Some(t3 + Duration::from_secs(25)),
            "capped"
        );
    }

    #[test]
    fn health_needs_thresholds_both_ways() {
        let i = instance();
        let fail = || Some("refused".to_owned());
        assert_eq!(i.health_result(fail(), 2, 3), None);
        assert_eq!(i.health_result(fail(), 2, 3), Some(false));
        assert!(!i.usable(Instant::now()));
        assert_eq!(i.health_result(None, 2, 3), None);
        assert_eq!(i.health_result(None, 2, 3), None);
        assert_eq!(i.health_result(None, 2, 3), Some(true));
        assert!(i.usable(Instant::now()));
    }
}
