//! The JSON bodies of the HTTP API: what clients send and what the hub
//! answers. The server (`switchboard-api`) and the client
//! (`switchboard-client`) both use these types, so they cannot drift apart.
//!
//! Layout:
//! - [`agents`]: registration, heartbeat and listing bodies.
//! - [`auth`]: credentials, tokens, API keys, signing keys, the audit log.
//! - [`events`]: CloudEvents as published and as read from the log.
//! - [`gateway`]: services, routes, topology, webhooks and hooks.
//! - [`groups`]: consumer groups, deliveries, acknowledgements, dead letters.
//! - [`keys`]: agents' public keys (proof of possession, rotation).
//! - [`messages`]: direct messages and request-response.
//! - [`problem`]: the `application/problem+json` error body.
//! - [`system`]: health, readiness and the JSON metrics.
//! - [`tasks`]: tasks, agent reports and claims.
//! - [`vault`]: secrets, versions, policies, master key rotation.
//! - [`workflows`]: workflows and their stages.
//!
//! Request types refuse unknown fields; response types ignore them, so an
//! older client keeps working against a newer hub.

pub mod agents;
pub mod auth;
pub mod events;
pub mod gateway;
pub mod groups;
pub mod keys;
pub mod messages;
pub mod problem;
pub mod system;
pub mod tasks;
pub mod vault;
pub mod workflows;

pub use agents::*;
pub use auth::*;
pub use events::*;
pub use gateway::*;
pub use groups::*;
pub use keys::*;
pub use messages::*;
pub use problem::*;
pub use system::*;
pub use tasks::*;
pub use vault::*;
pub use workflows::*;
