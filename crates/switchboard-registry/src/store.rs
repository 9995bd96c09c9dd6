//! The storage the registry needs, as a trait that each backend implements.

use async_trait::async_trait;
use switchboard_core::{StorageError, UnixMillis};

use crate::agent::{Agent, AgentStatus, Heartbeat, StatusChange, ValidRegistration};

/// Which agents a listing returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentFilter {
    /// Only agents of this type.
    pub agent_type: Option<String>,
    /// Only agents in one of these statuses (any, when empty).
    pub statuses: Vec<AgentStatus>,
    /// Only agents that have every one of these capabilities.
    pub capabilities: Vec<String>,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentPage {
    /// The agents, ordered by id.
    pub agents: Vec<Agent>,
    /// How many agents match the filter in all.
    pub total: u64,
    /// The id to continue after, when there are more.
    pub next_after: Option<String>,
}

/// The result of storing a heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatOutcome {
    /// The agent after the heartbeat.
    pub agent: Agent,
    /// The change of status, when the heartbeat made one.
    pub change: Option<StatusChange>,
}

/// Storage for agents. Implementations must make every method atomic.
#[async_trait]
pub trait AgentStore: Send + Sync + 'static {
    /// Inserts or replaces the registration of `reg.id`, keeping its first
    /// registration time; a registration counts as a heartbeat. Returns the
    /// stored agent and whether it was new.
    async fn upsert_agent(
        &self,
        reg: &ValidRegistration,
        now: UnixMillis,
    ) -> Result<(Agent, bool), StorageError>;

    /// Records a heartbeat; `None` when no such agent exists.
    async fn record_heartbeat(
        &self,
        id: &str,
        hb: &Heartbeat,
        now: UnixMillis,
    ) -> Result<Option<HeartbeatOutcome>, StorageError>;

    /// One agent by id.
    async fn get_agent(&self, id: &str) -> Result<Option<Agent>, StorageError>;

    /// Agents matching `filter` with ids after `after`, at most `limit`.
    async fn list_agents(
        &self,
        filter: &AgentFilter,
        after: Option<&str>,
        limit: u32,
    ) -> Result<AgentPage, StorageError>;

    /// Removes an agent; whether it existed.
    async fn delete_agent(&self, id: &str) -> Result<bool, StorageError>;

    /// How many agents are in each status (statuses with none are absent).
    async fn count_by_status(&self) -> Result<Vec<(AgentStatus, u64)>, StorageError>;

    /// Moves every agent whose last sign of life is before `seen_before`
    /// (and whose status is one of `from`) to `to`; returns the changes.
    async fn mark_lapsed(
        &self,
        from: &[AgentStatus],
        to: AgentStatus,
        seen_before: UnixMillis,
        now: UnixMillis,
    ) -> Result<Vec<StatusChange>, StorageError>;
}
