//! Integration tests: the real hub on an ephemeral port, spoken to over HTTP.
//!
//! One binary for the whole suite (link time matters on small machines).

mod access;
mod audit;
mod cli;
mod errors;
mod events;
mod gateway;
mod groups;
mod liveness;
mod messages;
mod openapi;
mod persistence;
mod registry;
mod sealed;
mod system;
mod tasks;
mod tasks_crash;
mod tls;
mod upstream;
mod vault;
mod webhooks;
mod workflows;
mod ws;

use serde_json::{Value, json};

/// The `switchboard` binary built for these tests.
pub(crate) fn bin() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_switchboard"))
}

/// A registration body.
pub(crate) fn agent(id: &str, agent_type: &str, caps: &[&str]) -> Value {
    json!({
        "id": id,
        "type": agent_type,
        "name": format!("Agent {id}"),
        "version": "1.0.0",
        "capabilities": caps,
        "endpoint": format!("http://127.0.0.1:9/{id}"),
        "health_check_url": format!("http://127.0.0.1:9/{id}/health"),
        "configuration": {"max_concurrent_tasks": 5, "supported_frameworks": ["express"]},
        "metadata": {"team": "core"}
    })
}

/// The offset of each event listed in an answer to a publish.
pub(crate) fn offsets(answer: &Value) -> Vec<u64> {
    answer["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["offset"].as_u64().expect("offset"))
        .collect()
}
