//! The agent registry: agents register what they are and can do, prove they
//! are alive with heartbeats, and are found by type, status and capability.
//!
//! Layout:
//! - [`agent`]: the [`Agent`] and the inputs that change it
//!   ([`Registration`], [`Heartbeat`]), with their validation.
//! - [`store`]: the [`AgentStore`] trait that storage backends implement.
//! - [`sweeper`]: the [`Sweeper`] worker that marks silent agents stale,
//!   then offline.
//!
//! [`Registry`] is the handle the rest of the hub uses; it is cheap to clone.

use std::sync::Arc;
use std::time::Duration;

use switchboard_core::{Clock, UnixMillis, ident};

pub mod agent;
mod error;
pub mod store;
mod sweeper;

pub use agent::{Agent, AgentStatus, Heartbeat, Registration, StatusChange, ValidRegistration};
pub use error::RegistryError;
pub use store::{AgentFilter, AgentPage, AgentStore, HeartbeatOutcome};
pub use sweeper::Sweeper;

/// The largest page a listing returns.
pub const MAX_PAGE: u32 = 1000;

/// Liveness settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// How often agents are expected to heartbeat.
    pub heartbeat_interval: Duration,
    /// Missed heartbeats before an agent is stale.
    pub stale_after_missed: u32,
    /// Missed heartbeats before an agent is offline.
    pub offline_after_missed: u32,
    /// How often the sweeper looks; half the heartbeat interval when unset.
    pub sweep_interval: Option<Duration>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(30),
            stale_after_missed: 3,
            offline_after_missed: 10,
            sweep_interval: None,
        }
    }
}

impl RegistryConfig {
    /// Silence after which a live agent becomes stale.
    pub fn stale_after(&self) -> Duration {
        self.heartbeat_interval * self.stale_after_missed
    }

    /// Silence after which an agent becomes offline.
    pub fn offline_after(&self) -> Duration {
        self.heartbeat_interval * self.offline_after_missed
    }

    /// How often the sweeper runs.
    pub fn sweep_interval(&self) -> Duration {
        self.sweep_interval
            .unwrap_or(self.heartbeat_interval / 2)
            .max(Duration::from_millis(10))
    }

    /// Checks the settings; each error names the setting.
    pub fn validate(&self) -> Result<(), Vec<switchboard_core::FieldError>> {
        let mut errs = switchboard_core::FieldErrors::new();
        if self.heartbeat_interval < Duration::from_millis(10) {
            errs.push("registry.heartbeat_interval", "must be at least 10ms");
        }
        if self.stale_after_missed == 0 {
            errs.push("registry.stale_after_missed", "must be at least 1");
        }
        if self.offline_after_missed <= self.stale_after_missed {
            errs.push(
                "registry.offline_after_missed",
                "must be greater than stale_after_missed",
            );
        }
        errs.finish()
    }
}

/// A listing request: a filter, a page size and where to continue.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentQuery {
    /// Which agents.
    pub filter: AgentFilter,
    /// Page size, 1 to [`MAX_PAGE`].
    pub limit: u32,
    /// Continue after this id (the `next_after` of the previous page).
    pub after: Option<String>,
}

/// The registry handle.
#[derive(Clone)]
pub struct Registry {
    shared: Arc<Shared>,
}

struct Shared {
    store: Arc<dyn AgentStore>,
    config: RegistryConfig,
    clock: Clock,
    /// When this hub started; silence before it is not held against agents.
    started_at: UnixMillis,
}

impl Registry {
    /// Builds a registry over `store`.
    pub fn new(store: Arc<dyn AgentStore>, config: RegistryConfig, clock: Clock) -> Self {
        let started_at = clock.now_ms();
        Self {
            shared: Arc::new(Shared {
                store,
                config,
                clock,
                started_at,
            }),
        }
    }

    /// The liveness settings.
    pub fn config(&self) -> &RegistryConfig {
        &self.shared.config
    }

    fn store(&self) -> &dyn AgentStore {
        self.shared.store.as_ref()
    }

    fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    fn started_at(&self) -> UnixMillis {
        self.shared.started_at
    }

    /// The worker that applies the liveness rules; run it once per hub.
    pub fn sweeper(&self) -> Sweeper {
        Sweeper {
            registry: self.clone(),
        }
    }

    /// Registers an agent, or updates it if the id is known. Returns the
    /// agent and whether it is new.
    pub async fn register(&self, reg: Registration) -> Result<(Agent, bool), RegistryError> {
        let valid = reg.validate().map_err(RegistryError::Invalid)?;
        let now = self.clock().now_ms();
        let (agent, created) = self.store().upsert_agent(&valid, now).await?;
        if created {
            tracing::info!(agent_id = %agent.id, agent_type = %agent.agent_type, "agent registered");
        } else {
            tracing::debug!(agent_id = %agent.id, "agent registration updated");
        }
        Ok((agent, created))
    }

    /// Records a heartbeat; a stale or offline agent comes back to the
    /// status it reports.
    pub async fn heartbeat(&self, id: &str, hb: Heartbeat) -> Result<Agent, RegistryError> {
        check_id(id)?;
        hb.validate().map_err(RegistryError::Invalid)?;
        let now = self.clock().now_ms();
        let outcome = self
            .store()
            .record_heartbeat(id, &hb, now)
            .await?
            .ok_or_else(|| RegistryError::NotFound(id.to_owned()))?;
        if let Some(c) = &outcome.change {
            tracing::info!(agent_id = %c.agent_id, from = c.from.as_str(), to = c.to.as_str(), "agent status changed");
        }
        Ok(outcome.agent)
    }

    /// One agent.
    pub async fn get(&self, id: &str) -> Result<Agent, RegistryError> {
        check_id(id)?;
        self.store()
            .get_agent(id)
            .await?
            .ok_or_else(|| RegistryError::NotFound(id.to_owned()))
    }

    /// A page of agents matching the query.
    pub async fn list(&self, q: &AgentQuery) -> Result<AgentPage, RegistryError> {
        let limit = q.limit.clamp(1, MAX_PAGE);
        Ok(self
            .store()
            .list_agents(&q.filter, q.after.as_deref(), limit)
            .await?)
    }

    /// Removes an agent.
    pub async fn remove(&self, id: &str) -> Result<(), RegistryError> {
        check_id(id)?;
        if self.store().delete_agent(id).await? {
            tracing::info!(agent_id = %id, "agent removed");
            Ok(())
        } else {
            Err(RegistryError::NotFound(id.to_owned()))
        }
    }

    /// How many agents are in each status; every status is present.
    pub async fn count_by_status(&self) -> Result<Vec<(AgentStatus, u64)>, RegistryError> {
        let counts = self.store().count_by_status().await?;
        Ok(AgentStatus::ALL
            .into_iter()
            .map(|st| {
                let n = counts.iter().find(|(s, _)| *s == st).map_or(0, |(_, n)| *n);
                (st, n)
            })
            .collect())
    }
}

fn check_id(id: &str) -> Result<(), RegistryError> {
    ident::check(id)
        .map_err(|r| RegistryError::Invalid(vec![switchboard_core::FieldError::new("id", r)]))
}
