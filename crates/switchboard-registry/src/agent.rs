//! The agent as the registry knows it, and the inputs that change it.

use serde_json::{Map, Value};
use switchboard_core::{FieldErrors, UnixMillis, ident};

/// Where an agent stands.
///
/// `Active`, `Idle`, `Busy` and `Draining` are what an agent reports of
/// itself; `Stale` and `Offline` are set by the hub when heartbeats stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AgentStatus {
    /// Up and accepting work.
    Active,
    /// Up, with nothing to do.
    Idle,
    /// Up, but at capacity.
    Busy,
    /// Finishing its work and taking no more.
    Draining,
    /// Missed enough heartbeats to be doubted.
    Stale,
    /// Missed so many heartbeats that it is taken for gone.
    Offline,
}

impl AgentStatus {
    /// Every status, in display order.
    pub const ALL: [AgentStatus; 6] = [
        Self::Active,
        Self::Idle,
        Self::Busy,
        Self::Draining,
        Self::Stale,
        Self::Offline,
    ];

    /// The lower-case name used in storage and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Idle => "idle",
            Self::Busy => "busy",
            Self::Draining => "draining",
            Self::Stale => "stale",
            Self::Offline => "offline",
        }
    }

    /// Parses the lower-case name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether an agent may report this status of itself in a heartbeat.
    pub fn is_reportable(self) -> bool {
        !matches!(self, Self::Stale | Self::Offline)
    }

    /// Whether the hub believes an agent in this status is alive.
    pub fn is_live(self) -> bool {
        self.is_reportable()
    }
}

/// A registered agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    /// Unique id chosen by the agent.
    pub id: String,
    /// The kind of agent (`code_generation`); tasks and services match on it.
    pub agent_type: String,
    /// Human-readable name; the id when none was given.
    pub name: String,
    /// Semantic version of the agent, if it told one.
    pub version: Option<String>,
    /// What it can do, sorted and without duplicates.
    pub capabilities: Vec<String>,
    /// Where it serves requests.
    pub endpoint: Option<String>,
    /// Where its health can be checked.
    pub health_check_url: Option<String>,
    /// Free-form configuration, as registered.
    pub configuration: Map<String, Value>,
    /// `configuration.max_concurrent_tasks`, lifted out for load balancing.
    pub max_concurrent_tasks: Option<u32>,
    /// Free-form metadata, as registered.
    pub metadata: Map<String, Value>,
    /// Current status.
    pub status: AgentStatus,
    /// The status the agent last reported; restored when a stale agent
    /// heartbeats again.
    pub reported_status: AgentStatus,
    /// Tasks in hand, as last reported.
    pub current_tasks: u32,
    /// Numbers the agent reported with its last heartbeat.
    pub performance_metrics: Map<String, Value>,
    /// First registration.
    pub registered_at: UnixMillis,
    /// Last registration or heartbeat.
    pub updated_at: UnixMillis,
    /// Last sign of life (registration or heartbeat).
    pub last_heartbeat_at: UnixMillis,
    /// When `status` last changed.
    pub status_changed_at: UnixMillis,
    /// Counts the changes of `status`; storage keeps the newest.
    pub status_version: u64,
}

impl Agent {
    /// The part of the agent that heartbeats and the sweeper change.
    pub fn liveness(&self) -> Liveness {
        Liveness {
            status: self.status,
            reported_status: self.reported_status,
            current_tasks: self.current_tasks,
            performance_metrics: self.performance_metrics.clone(),
            last_heartbeat_at: self.last_heartbeat_at,
            status_changed_at: self.status_changed_at,
            status_version: self.status_version,
        }
    }

    /// Replaces the agent's liveness with a newer one.
    pub fn set_liveness(&mut self, live: Liveness) {
        self.updated_at = self.updated_at.max(live.last_heartbeat_at);
        self.status = live.status;
        self.reported_status = live.reported_status;
        self.current_tasks = live.current_tasks;
        self.performance_metrics = live.performance_metrics;
        self.last_heartbeat_at = live.last_heartbeat_at;
        self.status_changed_at = live.status_changed_at;
        self.status_version = live.status_version;
    }

    /// Load as a fraction of capacity, when the capacity is known.
    pub fn load(&self) -> Option<f64> {
        self.max_concurrent_tasks
            .filter(|m| *m > 0)
            .map(|m| f64::from(self.current_tasks) / f64::from(m))
    }
}

/// What an agent gives when it registers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registration {
    /// See [`Agent::id`].
    pub id: String,
    /// See [`Agent::agent_type`].
    pub agent_type: String,
    /// See [`Agent::name`].
    pub name: Option<String>,
    /// See [`Agent::version`].
    pub version: Option<String>,
    /// See [`Agent::capabilities`]; normalized by [`Registration::validate`].
    pub capabilities: Vec<String>,
    /// See [`Agent::endpoint`].
    pub endpoint: Option<String>,
    /// See [`Agent::health_check_url`].
    pub health_check_url: Option<String>,
    /// See [`Agent::configuration`].
    pub configuration: Map<String, Value>,
    /// See [`Agent::metadata`].
    pub metadata: Map<String, Value>,
}

/// The most capabilities one agent may declare.
pub const MAX_CAPABILITIES: usize = 256;
/// The longest name accepted.
pub const MAX_NAME_LEN: usize = 256;
/// The longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;
/// The largest `max_concurrent_tasks` accepted.
pub const MAX_CONCURRENT_TASKS: u64 = 1_000_000;

/// A registration that passed validation, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRegistration {
    pub(crate) inner: Registration,
    pub(crate) max_concurrent_tasks: Option<u32>,
}

impl ValidRegistration {
    /// The checked registration, with capabilities sorted and deduplicated.
    pub fn registration(&self) -> &Registration {
        &self.inner
    }

    /// `configuration.max_concurrent_tasks`, checked.
    pub fn max_concurrent_tasks(&self) -> Option<u32> {
        self.max_concurrent_tasks
    }

    /// The display name: the given one, or the id.
    pub fn name(&self) -> &str {
        self.inner.name.as_deref().unwrap_or(&self.inner.id)
    }
}

impl Registration {
    /// Checks every field and reports every bad one; normalizes capabilities.
    pub fn validate(mut self) -> Result<ValidRegistration, Vec<switchboard_core::FieldError>> {
        let mut errs = FieldErrors::new();
        if let Err(r) = ident::check(&self.id) {
            errs.push("id", r);
        }
        if let Err(r) = ident::check(&self.agent_type) {
            errs.push("type", r);
        }
        if let Some(name) = &self.name {
            if name.trim().is_empty() {
                errs.push("name", "must not be blank");
            } else if name.len() > MAX_NAME_LEN {
                errs.push("name", format!("must be at most {MAX_NAME_LEN} bytes"));
            }
        }
        if let Some(Err(e)) = self.version.as_deref().map(semver::Version::parse) {
            errs.push(
                "version",
                format!("must be a semantic version like 1.2.3 ({e})"),
            );
        }
        if self.capabilities.len() > MAX_CAPABILITIES {
            errs.push(
                "capabilities",
                format!("must list at most {MAX_CAPABILITIES} capabilities"),
            );
        }
        for (i, cap) in self.capabilities.iter().enumerate() {
            if let Err(r) = ident::check(cap) {
                errs.push(format!("capabilities[{i}]"), r);
            }
        }
        check_url(&mut errs, "endpoint", self.endpoint.as_deref());
        check_url(
            &mut errs,
            "health_check_url",
            self.health_check_url.as_deref(),
        );
        let max_concurrent_tasks = match self.configuration.get("max_concurrent_tasks") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) if (1..=MAX_CONCURRENT_TASKS).contains(&n) => u32::try_from(n).ok(),
                _ => {
                    errs.push(
                        "configuration.max_concurrent_tasks",
                        format!("must be a whole number from 1 to {MAX_CONCURRENT_TASKS}"),
                    );
                    None
                }
            },
        };
        errs.finish()?;
        self.capabilities.sort();
        self.capabilities.dedup();
        Ok(ValidRegistration {
            inner: self,
            max_concurrent_tasks,
        })
    }
}

fn check_url(errs: &mut FieldErrors, field: &str, value: Option<&str>) {
    let Some(value) = value else { return };
    if value.len() > MAX_URL_LEN {
        errs.push(field, format!("must be at most {MAX_URL_LEN} bytes"));
        return;
    }
    match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        Ok(_) => errs.push(field, "must be an http or https URL with a host"),
        Err(e) => errs.push(field, format!("must be an absolute URL ({e})")),
    }
}

/// What an agent reports with a heartbeat.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Heartbeat {
    /// Its own status; `active` when not given.
    pub status: Option<AgentStatus>,
    /// Tasks in hand; unchanged when not given.
    pub current_tasks: Option<u32>,
    /// Numbers to record; unchanged when not given.
    pub performance_metrics: Option<Map<String, Value>>,
}

impl Heartbeat {
    /// Checks the heartbeat: only reportable statuses, only numeric metrics.
    pub fn validate(&self) -> Result<(), Vec<switchboard_core::FieldError>> {
        let mut errs = FieldErrors::new();
        if let Some(st) = self.status.filter(|s| !s.is_reportable()) {
            errs.push(
                "status",
                format!(
                    "{} is set by the hub; report one of active, idle, busy, draining",
                    st.as_str()
                ),
            );
        }
        if let Some(m) = &self.performance_metrics {
            for (k, v) in m {
                if !v.is_number() {
                    errs.push(format!("performance_metrics.{k}"), "must be a number");
                }
            }
        }
        errs.finish()
    }
}

/// The volatile part of an agent: what heartbeats and the liveness
/// sweeper change, many times a second across a fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct Liveness {
    /// Current status.
    pub status: AgentStatus,
    /// The status the agent last reported.
    pub reported_status: AgentStatus,
    /// Tasks in hand, as last reported.
    pub current_tasks: u32,
    /// Numbers reported with the last heartbeat.
    pub performance_metrics: Map<String, Value>,
    /// Last sign of life.
    pub last_heartbeat_at: UnixMillis,
    /// When `status` last changed.
    pub status_changed_at: UnixMillis,
    /// Counts the changes of `status`. Storage applies a status only when
    /// its version is newer than the stored one, so writes that arrive out
    /// of order cannot bring an old status back.
    pub status_version: u64,
}

/// What the hub answers a heartbeat with.
#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatAck {
    /// The agent.
    pub agent_id: String,
    /// Its status after the heartbeat.
    pub status: AgentStatus,
    /// When the hub recorded the heartbeat.
    pub recorded_at: UnixMillis,
    /// When to send the next one.
    pub interval_ms: u64,
}

/// A change of status the hub made or saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    /// The agent.
    pub agent_id: String,
    /// Status before.
    pub from: AgentStatus,
    /// Status after.
    pub to: AgentStatus,
    /// When.
    pub at: UnixMillis,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg() -> Registration {
        Registration {
            id: "agent-1".into(),
            agent_type: "code_generation".into(),
            capabilities: vec!["rust".into(), "python".into(), "rust".into()],
            ..Default::default()
        }
    }

    #[test]
    fn normalizes_capabilities() {
        let v = reg().validate().expect("valid");
        assert_eq!(v.registration().capabilities, ["python", "rust"]);
        assert_eq!(v.name(), "agent-1");
    }

    #[test]
    fn names_every_bad_field() {
        let mut r = reg();
        r.id = "bad id".into();
        r.version = Some("1.x".into());
        r.capabilities.push("no spaces".into());
        r.endpoint = Some("ftp://x".into());
        r.configuration
            .insert("max_concurrent_tasks".into(), Value::from(0));
        let errs = r.validate().expect_err("invalid");
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "id",
                "version",
                "capabilities[3]",
                "endpoint",
                "configuration.max_concurrent_tasks"
            ]
        );
    }

    #[test]
    fn heartbeat_refuses_hub_statuses() {
        let hb = Heartbeat {
            status: Some(AgentStatus::Offline),
            ..Default::default()
        };
        assert_eq!(hb.validate().expect_err("invalid")[0].field, "status");
    }
}
