//! The agent registry: agents register what they are and can do, prove they
//! are alive with heartbeats, and are found by type, status and capability.
//!
//! Layout:
//! - [`agent`]: the [`Agent`] and the inputs that change it
//!   ([`Registration`], [`Heartbeat`]), with their validation.
//! - [`store`]: the [`AgentStore`] trait that storage backends implement.
//! - `live`: the in-memory liveness table that heartbeats write to.
//! - [`sweeper`]: the [`Sweeper`] worker that marks silent agents stale,
//!   then offline, and writes heartbeats behind to the store.
//!
//! [`Registry`] is the handle the rest of the hub uses; it is cheap to clone.
//!
//! Durability: a registration, a removal and every change of status are
//! written to the store before they are acknowledged. A heartbeat that
//! changes nothing but the time and figures is acknowledged from memory and
//! written behind within `flush_interval`, all dirty agents in one write:
//! heartbeats are soft state, and writing each one would cost the store far
//! more than it is worth. A crash loses at most `flush_interval` of such
//! heartbeats, which the liveness rules absorb.

use std::sync::Arc;
use std::time::Duration;

use switchboard_core::{Clock, UnixMillis, ident};

pub mod agent;
mod error;
mod live;
pub mod store;
mod sweeper;

pub use agent::{
    Agent, AgentStatus, Heartbeat, HeartbeatAck, Liveness, Registration, StatusChange,
    ValidRegistration,
};
pub use error::RegistryError;
pub use store::{AgentFilter, AgentPage, AgentStore, RegisteredEvents};

pub mod events;

use live::LiveTable;
pub use sweeper::Sweeper;

/// The largest page a listing returns.
pub const MAX_PAGE: u32 = 1000;

/// What the rest of the hub may ask of an agent's liveness at any moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presence {
    /// Current status.
    pub status: AgentStatus,
    /// Tasks in hand, as last reported.
    pub current_tasks: u32,
    /// Last sign of life.
    pub last_heartbeat_at: UnixMillis,
}

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
    /// How often heartbeats are written behind to the store.
    pub flush_interval: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(30),
            stale_after_missed: 3,
            offline_after_missed: 10,
            sweep_interval: None,
            flush_interval: Duration::from_secs(1),
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
        if self.flush_interval < Duration::from_millis(10) {
            errs.push("registry.flush_interval", "must be at least 10ms");
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
    live: LiveTable,
    config: RegistryConfig,
    clock: Clock,
    /// When this hub started; silence before it is not held against agents.
    started_at: UnixMillis,
}

impl Registry {
    /// Opens the registry over `store`, loading every agent's liveness.
    pub async fn open(
        store: Arc<dyn AgentStore>,
        config: RegistryConfig,
        clock: Clock,
    ) -> Result<Self, RegistryError> {
        let live = LiveTable::new(store.load_liveness().await?);
        let started_at = clock.now_ms();
        Ok(Self {
            shared: Arc::new(Shared {
                store,
                live,
                config,
                clock,
                started_at,
            }),
        })
    }

    /// The liveness settings.
    pub fn config(&self) -> &RegistryConfig {
        &self.shared.config
    }

    fn store(&self) -> &dyn AgentStore {
        self.shared.store.as_ref()
    }

    fn live(&self) -> &LiveTable {
        &self.shared.live
    }

    fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    fn started_at(&self) -> UnixMillis {
        self.shared.started_at
    }

    /// The worker that applies the liveness rules and writes heartbeats
    /// behind; run it once per hub.
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
        let min_version = self
            .live()
            .get(&valid.registration().id)
            .map_or(0, |l| l.status_version + 1);
        let (agent, created) = self
            .store()
            .upsert_agent(&valid, min_version, now, &events::registered)
            .await?;
        self.live().put(&agent.id, agent.liveness());
        if created {
            tracing::info!(agent_id = %agent.id, agent_type = %agent.agent_type, "agent registered");
        } else {
            tracing::debug!(agent_id = %agent.id, "agent registration updated");
        }
        Ok((agent, created))
    }

    /// Records a heartbeat; a stale or offline agent comes back to the
    /// status it reports. A change of status is stored before this returns.
    pub async fn heartbeat(&self, id: &str, hb: Heartbeat) -> Result<HeartbeatAck, RegistryError> {
        check_id(id)?;
        hb.validate().map_err(RegistryError::Invalid)?;
        let now = self.clock().now_ms();
        let beat = self
            .live()
            .beat(id, &hb, now)
            .ok_or_else(|| RegistryError::NotFound(id.to_owned()))?;
        if let Some((live, change)) = beat.change {
            let batch = [(id.to_owned(), live)];
            let event = events::status_changed(&change);
            if let Err(e) = self.store().save_liveness(&batch, vec![event]).await {
                // Memory is ahead of the store; the next flush retries.
                self.live().mark_dirty([&batch[0].0]);
                return Err(e.into());
            }
            tracing::info!(agent_id = %change.agent_id, from = change.from.as_str(), to = change.to.as_str(), "agent status changed");
        }
        Ok(HeartbeatAck {
            agent_id: id.to_owned(),
            status: beat.status,
            recorded_at: now,
            interval_ms: u64::try_from(self.config().heartbeat_interval.as_millis())
                .unwrap_or(u64::MAX),
        })
    }

    /// Changes each time a registration records an agent's presence.
    /// A registration is stored, and so its `agent.registered` event
    /// published, just before its presence is recorded: whoever acts on
    /// that event and finds no presence yet is told here when it is.
    pub fn arrivals(&self) -> tokio::sync::watch::Receiver<u64> {
        self.live().arrivals()
    }

    /// An agent's presence as the hub knows it now (from memory, no IO):
    /// status, reported load and last heartbeat. Cheap enough for every
    /// assignment decision.
    pub fn presence(&self, id: &str) -> Option<Presence> {
        self.live().presence(id)
    }

    /// The agent with its latest liveness.
    fn with_live(&self, mut agent: Agent) -> Agent {
        if let Some(live) = self.live().get(&agent.id) {
            agent.set_liveness(live);
        }
        agent
    }

    /// One agent.
    pub async fn get(&self, id: &str) -> Result<Agent, RegistryError> {
        check_id(id)?;
        let agent = self
            .store()
            .get_agent(id)
            .await?
            .ok_or_else(|| RegistryError::NotFound(id.to_owned()))?;
        Ok(self.with_live(agent))
    }

    /// A page of agents matching the query.
    pub async fn list(&self, q: &AgentQuery) -> Result<AgentPage, RegistryError> {
        let limit = q.limit.clamp(1, MAX_PAGE);
        let mut page = self
            .store()
            .list_agents(&q.filter, q.after.as_deref(), limit)
            .await?;
        page.agents = page.agents.into_iter().map(|a| self.with_live(a)).collect();
        Ok(page)
    }

    /// Removes an agent.
    pub async fn remove(&self, id: &str) -> Result<(), RegistryError> {
        check_id(id)?;
        let now = self.clock().now_ms();
        if self
            .store()
            .delete_agent(id, events::removed(id, now))
            .await?
        {
            self.live().remove(id);
            tracing::info!(agent_id = %id, "agent removed");
            Ok(())
        } else {
            Err(RegistryError::NotFound(id.to_owned()))
        }
    }

    /// How many agents are in each status; every status is present.
    pub fn count_by_status(&self) -> Vec<(AgentStatus, u64)> {
        let counts = self.live().counts();
        AgentStatus::ALL
            .into_iter()
            .map(|st| (st, counts.get(&st).copied().unwrap_or(0)))
            .collect()
    }

    /// Writes every heartbeat not yet stored.
    pub async fn flush(&self) -> Result<usize, RegistryError> {
        let dirty = self.live().take_dirty();
        if dirty.is_empty() {
            return Ok(0);
        }
        if let Err(e) = self.store().save_liveness(&dirty, Vec::new()).await {
            self.live().mark_dirty(dirty.iter().map(|(id, _)| id));
            return Err(e.into());
        }
        Ok(dirty.len())
    }
}

fn check_id(id: &str) -> Result<(), RegistryError> {
    ident::check(id)
        .map_err(|r| RegistryError::Invalid(vec![switchboard_core::FieldError::new("id", r)]))
}
