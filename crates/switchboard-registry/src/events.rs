//! The events the registry publishes, each written in the same transaction
//! as the change it describes.
//!
//! | topic (= type) | when | data |
//! |---|---|---|
//! | `agent.registered` | a registration, new or repeated | the agent's identity and capacity, `new` |
//! | `agent.status_changed` | any change of status | `agent_id`, `from`, `to` |
//! | `agent.removed` | a removal | `agent_id` |
//!
//! The subject is the agent id; the source is [`SOURCE`].

use serde_json::json;
use switchboard_bus::NewEvent;
use switchboard_core::UnixMillis;

use crate::{Agent, StatusChange};

/// The source of the registry's events.
pub const SOURCE: &str = "/switchboard/registry";

pub(crate) fn registered(agent: &Agent, new: bool) -> Vec<NewEvent> {
    vec![NewEvent::hub(
        "agent.registered",
        SOURCE,
        &agent.id,
        agent.updated_at,
        json!({
            "agent_id": agent.id,
            "type": agent.agent_type,
            "name": agent.name,
            "version": agent.version,
            "capabilities": agent.capabilities,
            "max_concurrent_tasks": agent.max_concurrent_tasks,
            "endpoint": agent.endpoint,
            "status": agent.status.as_str(),
            "new": new,
        }),
    )]
}

pub(crate) fn status_changed(c: &StatusChange) -> NewEvent {
    NewEvent::hub(
        "agent.status_changed",
        SOURCE,
        &c.agent_id,
        c.at,
        json!({"agent_id": c.agent_id, "from": c.from.as_str(), "to": c.to.as_str()}),
    )
}

pub(crate) fn removed(id: &str, at: UnixMillis) -> NewEvent {
    NewEvent::hub("agent.removed", SOURCE, id, at, json!({"agent_id": id}))
}
