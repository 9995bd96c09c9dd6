//! The routes, one module per resource.

pub(crate) mod agents;
pub(crate) mod events;
pub(crate) mod groups;
pub(crate) mod messages;
pub(crate) mod system;
pub(crate) mod tasks;
pub(crate) mod workflows;
pub(crate) mod ws;
