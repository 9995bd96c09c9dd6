//! The storage the registry needs, as a trait that each backend implements.

use async_trait::async_trait;
use switchboard_bus::NewEvent;
use switchboard_core::{StorageError, UnixMillis};

use crate::agent::{Agent, AgentStatus, Liveness, ValidRegistration};

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

/// Builds the events that record a registration, from the stored agent and
/// whether it is new.
pub type RegisteredEvents<'a> = &'a (dyn Fn(&Agent, bool) -> Vec<NewEvent> + Sync);

/// Storage for agents. Implementations must make every method atomic, and
/// append the events given to a method to the event log in the same
/// transaction as the change they describe (a transactional outbox), so
/// state and events never disagree.
#[async_trait]
pub trait AgentStore: Send + Sync + 'static {
    /// Inserts or replaces the registration of `reg.id`, keeping its first
    /// registration time; a registration counts as a heartbeat, restores
    /// the status the agent last reported and sets the status version to
    /// at least `min_status_version`. Returns the stored agent and whether
    /// it was new.
    async fn upsert_agent(
        &self,
        reg: &ValidRegistration,
        min_status_version: u64,
        now: UnixMillis,
        events: RegisteredEvents<'_>,
    ) -> Result<(Agent, bool), StorageError>;

    /// Writes the liveness of several agents. The status fields of an
    /// agent are written only when the given `status_version` is newer
    /// than the stored one; the last heartbeat time never moves back.
    /// Agents that no longer exist are skipped.
    async fn save_liveness(
        &self,
        batch: &[(String, Liveness)],
        events: Vec<NewEvent>,
    ) -> Result<(), StorageError>;

    /// The liveness of every agent, to start from.
    async fn load_liveness(&self) -> Result<Vec<(String, Liveness)>, StorageError>;

    /// One agent by id.
    async fn get_agent(&self, id: &str) -> Result<Option<Agent>, StorageError>;

    /// Agents matching `filter` with ids after `after`, at most `limit`.
    async fn list_agents(
        &self,
        filter: &AgentFilter,
        after: Option<&str>,
        limit: u32,
    ) -> Result<AgentPage, StorageError>;

    /// Removes an agent, appending `event` if it existed; whether it did.
    async fn delete_agent(&self, id: &str, event: NewEvent) -> Result<bool, StorageError>;
}
