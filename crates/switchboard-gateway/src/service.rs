//! Services and routes as configured: what the gateway knows before any
//! instance is looked at.
//!
//! A service is the set of live agents of one type (its `agent_type`,
//! the service's name unless set); every agent type is a service with the
//! default policy until one is configured. A route sends requests whose
//! host and path prefix match to a service, as a proxy or as an
//! aggregation (the request fanned out to several instances).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard_core::{FieldErrors, ident};

use crate::balance::Algorithm;
use crate::breaker::BreakerConfig;
use crate::retry::RetryPolicy;

/// The protocol spoken to a service's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 with pooled keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2 over cleartext (prior knowledge), multiplexed.
    Http2,
}

/// A share of a service's traffic for agents of some versions (a canary).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// Which agent versions: a semver requirement (`^2`, `>=1.4, <2`), an
    /// exact version, or `*`.
    pub version: String,
    /// The share, relative to the other splits' weights.
    pub weight: u32,
}

impl Split {
    /// Whether an agent of `version` belongs to this split.
    pub fn matches(&self, version: Option<&str>) -> bool {
        if self.version == "*" {
            return true;
        }
        let Some(v) = version else { return false };
        if v == self.version {
            return true;
        }
        match (
            semver::VersionReq::parse(&self.version),
            semver::Version::parse(v),
        ) {
            (Ok(req), Ok(v)) => req.matches(&v),
            _ => false,
        }
    }
}

/// Active health checks: each instance's health URL is asked every
/// `interval`; `unhealthy_after` failures in a row take it out,
/// `healthy_after` successes in a row bring it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSpec {
    /// How often; zero turns active checks off.
    #[serde(with = "ms")]
    pub interval: Duration,
    /// How long one check may take.
    #[serde(with = "ms")]
    pub timeout: Duration,
    /// Failures in a row before an instance is unhealthy.
    pub unhealthy_after: u32,
    /// Successes in a row before it is healthy again.
    pub healthy_after: u32,
}

impl Default for HealthSpec {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            unhealthy_after: 2,
            healthy_after: 2,
        }
    }
}

/// Passive outlier detection: `consecutive_failures` 5xx answers or
/// connection failures in a row eject an instance for `base_ejection`
/// times the number of its ejections so far, at most `max_ejection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutlierSpec {
    /// Failures in a row that eject; zero turns detection off.
    pub consecutive_failures: u32,
    /// The first ejection's length.
    #[serde(with = "ms")]
    pub base_ejection: Duration,
    /// The longest ejection.
    #[serde(with = "ms")]
    pub max_ejection: Duration,
}

impl Default for OutlierSpec {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
        }
    }
}

/// Timeouts of one upstream request; each ends in 504.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    /// To open a connection.
    #[serde(with = "ms")]
    pub connect: Duration,
    /// From sending the request to the response's headers.
    #[serde(with = "ms")]
    pub first_byte: Duration,
    /// For the whole exchange, retries included, to the last body byte.
    #[serde(with = "ms")]
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            first_byte: Duration::from_secs(15),
            total: Duration::from_secs(30),
        }
    }
}

/// How the gateway treats one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// The service's name (in `/gw/{service}/...`).
    pub name: String,
    /// The type of the agents that serve it.
    pub agent_type: String,
    /// How requests are spread.
    #[serde(with = "algorithm")]
    pub balancing: Algorithm,
    /// Traffic splits by agent version; all instances when empty.
    #[serde(default)]
    pub splits: Vec<Split>,
    /// Active health checks.
    pub health: HealthSpec,
    /// Passive outlier detection.
    pub outlier: OutlierSpec,
    /// Circuit breakers, one per instance.
    #[serde(with = "breaker")]
    pub breaker: BreakerConfig,
    /// Retries.
    #[serde(with = "retry")]
    pub retry: RetryPolicy,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// HTTP/1.1 or HTTP/2 to the instances.
    #[serde(default)]
    pub protocol: Protocol,
    /// Pass the caller's `Authorization` header on (it is dropped by
    /// default: it is the hub's credential, not the agent's).
    #[serde(default)]
    pub forward_authorization: bool,
}

impl ServiceSpec {
    /// The default policy for the agents of type `name`.
    pub fn implicit(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            agent_type: name.to_owned(),
            balancing: Algorithm::RoundRobin,
            splits: Vec::new(),
            health: HealthSpec::default(),
            outlier: OutlierSpec::default(),
            breaker: BreakerConfig::default(),
            retry: RetryPolicy::default(),
            timeouts: Timeouts::default(),
            protocol: Protocol::Http1,
            forward_authorization: false,
        }
    }

    /// Checks every field; `prefix` leads each field's name.
    pub fn check(&self, errs: &mut FieldErrors) {
        if let Err(r) = ident::check(&self.name) {
            errs.push("name", r);
        }
        if let Err(r) = ident::check(&self.agent_type) {
            errs.push("agent_type", r);
        }
        if let Algorithm::ConsistentHash { header } = &self.balancing
            && http::HeaderName::from_bytes(header.as_bytes()).is_err()
        {
            errs.push("hash_header", "must be a header name");
        }
        for (i, s) in self.splits.iter().enumerate() {
            if s.version != "*"
                && semver::VersionReq::parse(&s.version).is_err()
                && semver::Version::parse(&s.version).is_err()
            {
                errs.push(
                    format!("splits[{i}].version"),
                    "must be a semver requirement (^2, >=1.4), a version, or *",
                );
            }
            if s.weight == 0 {
                errs.push(format!("splits[{i}].weight"), "must be at least 1");
            }
        }
        let h = &self.health;
        if !h.interval.is_zero() && h.interval < Duration::from_millis(50) {
            errs.push("health.interval_ms", "must be 0 (off) or at least 50");
        }
        if h.timeout.is_zero() {
            errs.push("health.timeout_ms", "must be at least 1");
        }
        if h.unhealthy_after == 0 || h.healthy_after == 0 {
            errs.push(
                "health",
                "unhealthy_after and healthy_after must be at least 1",
            );
        }
        if self.outlier.base_ejection > self.outlier.max_ejection {
            errs.push(
                "outlier.base_ejection_ms",
                "must not exceed max_ejection_ms",
            );
        }
        if self.breaker.failure_threshold == 0 {
            errs.push("breaker.failure_threshold", "must be at least 1");
        }
        if self.breaker.half_open_max == 0 {
            errs.push("breaker.half_open_max", "must be at least 1");
        }
        if self.retry.attempts == 0 || self.retry.attempts > 10 {
            errs.push("retry.attempts", "must be 1 to 10");
        }
        if !(0.0..=1.0).contains(&self.retry.budget_ratio) {
            errs.push("retry.budget_ratio", "must be from 0 to 1");
        }
        for (i, s) in self.retry.on_status.iter().enumerate() {
            if !(500..=599).contains(s) && *s != 429 && *s != 408 {
                errs.push(format!("retry.on_status[{i}]"), "must be a 5xx, 408 or 429");
            }
        }
        let t = &self.timeouts;
        for (name, d) in [
            ("connect_ms", t.connect),
            ("first_byte_ms", t.first_byte),
            ("total_ms", t.total),
        ] {
            if d.is_zero() {
                errs.push(format!("timeouts.{name}"), "must be at least 1");
            }
        }
    }
}

/// What a route does with the requests it matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RouteKind {
    /// Forward each request to one instance.
    Proxy,
    /// Send each request to every healthy instance (or `max_instances` of
    /// them) at once and answer with all their responses, within
    /// `deadline`.
    Aggregate {
        /// At most this many instances (all when absent).
        max_instances: Option<u32>,
        /// How long to wait for the slowest.
        #[serde(with = "ms")]
        deadline: Duration,
    },
}

/// A configured route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    /// Its name.
    pub name: String,
    /// Only requests for this host (the `Host` header, port ignored).
    pub host: Option<String>,
    /// Only requests whose path starts with this (`/` for all).
    pub path_prefix: String,
    /// The service it sends to.
    pub service: String,
    /// Take the prefix off the path sent upstream.
    pub strip_prefix: bool,
    /// Proxy or aggregate.
    pub kind: RouteKind,
}

/// Paths a configured route may not take: the hub's own.
pub const RESERVED_PREFIXES: [&str; 6] =
    ["/api/", "/gw/", "/ws", "/metrics", "/healthz", "/readyz"];

impl RouteSpec {
    /// Checks every field.
    pub fn check(&self, errs: &mut FieldErrors) {
        if let Err(r) = ident::check(&self.name) {
            errs.push("name", r);
        }
        if let Err(r) = ident::check(&self.service) {
            errs.push("service", r);
        }
        if !self.path_prefix.starts_with('/') {
            errs.push("path_prefix", "must start with /");
        } else if self.host.is_none()
            && RESERVED_PREFIXES
                .iter()
                .any(|r| self.path_prefix.starts_with(r) || r.starts_with(&self.path_prefix))
        {
            errs.push(
                "path_prefix",
                "overlaps the hub's own paths (/api/, /gw/, /ws, /metrics, /healthz, /readyz); give a host or another prefix",
            );
        }
        if let Some(h) = &self.host
            && (h.is_empty() || h.contains(['/', ' ', ':']))
        {
            errs.push("host", "must be a host name without port");
        }
        if let RouteKind::Aggregate {
            max_instances,
            deadline,
        } = &self.kind
        {
            if max_instances == &Some(0) {
                errs.push("max_instances", "must be at least 1");
            }
            if deadline.is_zero() {
                errs.push("deadline_ms", "must be at least 1");
            }
        }
    }

    /// Whether a request for `host` and `path` is this route's.
    pub fn matches(&self, host: Option<&str>, path: &str) -> bool {
        if let Some(want) = &self.host {
            let given = host.map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name));
            if given.is_none_or(|h| !h.eq_ignore_ascii_case(want)) {
                return false;
            }
        }
        path.starts_with(&self.path_prefix)
    }
}

/// Durations stored as whole milliseconds.
mod ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

mod algorithm {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::balance::Algorithm;

    #[derive(Serialize, Deserialize)]
    struct Repr {
        name: String,
        #[serde(default)]
        header: Option<String>,
    }

    pub(crate) fn serialize<S: Serializer>(a: &Algorithm, s: S) -> Result<S::Ok, S::Error> {
        let header = match a {
            Algorithm::ConsistentHash { header } => Some(header.clone()),
            _ => None,
        };
        Repr {
            name: a.name().to_owned(),
            header,
        }
        .serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Algorithm, D::Error> {
        let r = Repr::deserialize(d)?;
        let a: Algorithm = r.name.parse().map_err(serde::de::Error::custom)?;
        Ok(match a {
            Algorithm::ConsistentHash { .. } => Algorithm::ConsistentHash {
                header: r.header.unwrap_or_default(),
            },
            other => other,
        })
    }
}

mod breaker {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::breaker::BreakerConfig;

    #[derive(Serialize, Deserialize)]
    struct Repr {
        failure_threshold: u32,
        open_ms: u64,
        half_open_max: u32,
    }

    pub(crate) fn serialize<S: Serializer>(b: &BreakerConfig, s: S) -> Result<S::Ok, S::Error> {
        Repr {
            failure_threshold: b.failure_threshold,
            open_ms: u64::try_from(b.open_for.as_millis()).unwrap_or(u64::MAX),
            half_open_max: b.half_open_max,
        }
        .serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BreakerConfig, D::Error> {
        let r = Repr::deserialize(d)?;
        Ok(BreakerConfig {
            failure_threshold: r.failure_threshold,
            open_for: Duration::from_millis(r.open_ms),
            half_open_max: r.half_open_max,
        })
    }
}

mod retry {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::retry::RetryPolicy;

    #[derive(Serialize, Deserialize)]
    struct Repr {
        attempts: u32,
        on_status: Vec<u16>,
        backoff_ms: u64,
        budget_ratio: f64,
        budget_min_per_second: u32,
    }

    pub(crate) fn serialize<S: Serializer>(p: &RetryPolicy, s: S) -> Result<S::Ok, S::Error> {
        Repr {
            attempts: p.attempts,
            on_status: p.on_status.clone(),
            backoff_ms: u64::try_from(p.backoff.as_millis()).unwrap_or(u64::MAX),
            budget_ratio: p.budget_ratio,
            budget_min_per_second: p.budget_min_per_second,
        }
        .serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<RetryPolicy, D::Error> {
        let r = Repr::deserialize(d)?;
        Ok(RetryPolicy {
            attempts: r.attempts,
            on_status: r.on_status,
            backoff: Duration::from_millis(r.backoff_ms),
            budget_ratio: r.budget_ratio,
            budget_min_per_second: r.budget_min_per_second,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_match_versions() {
        let s = |v: &str| Split {
            version: v.into(),
            weight: 1,
        };
        assert!(s("^1").matches(Some("1.4.2")));
        assert!(!s("^1").matches(Some("2.0.0")));
        assert!(s("2.0.0-beta.1").matches(Some("2.0.0-beta.1")));
        assert!(s("*").matches(None));
        assert!(!s("^1").matches(None));
        assert!(!s("^1").matches(Some("not-semver")));
    }

    #[test]
    fn routes_match_host_and_prefix() {
        let r = RouteSpec {
            name: "r".into(),
            host: Some("billing.example".into()),
            path_prefix: "/v1/".into(),
            service: "billing".into(),
            strip_prefix: false,
            kind: RouteKind::Proxy,
        };
        assert!(r.matches(Some("billing.example:8080"), "/v1/invoices"));
        assert!(r.matches(Some("BILLING.example"), "/v1/"));
        assert!(!r.matches(Some("other.example"), "/v1/x"));
        assert!(!r.matches(None, "/v1/x"));
        assert!(!r.matches(Some("billing.example"), "/v2/x"));
    }

    #[test]
    fn specs_round_trip_and_check() {
        let mut s = ServiceSpec::implicit("echo");
        s.balancing = Algorithm::ConsistentHash {
            header: "x-user".into(),
        };
        let json = serde_json::to_string(&s).expect("json");
        let back: ServiceSpec = serde_json::from_str(&json).expect("back");
        assert_eq!(back, s);
        let mut errs = FieldErrors::new();
        s.check(&mut errs);
        assert!(errs.is_empty());
        s.retry.attempts = 0;
        s.splits.push(Split {
            version: "nope!".into(),
            weight: 0,
        });
        let mut errs = FieldErrors::new();
        s.check(&mut errs);
        let fields: Vec<String> = errs
            .finish()
            .expect_err("bad")
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            ["splits[0].version", "splits[0].weight", "retry.attempts"]
        );
    }
}
