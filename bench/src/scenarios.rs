//! One module per scenario; each returns its report section.

pub(crate) mod auth_overhead;
pub(crate) mod durable;
pub(crate) mod proxy;
pub(crate) mod pubsub;
pub(crate) mod registry;
pub(crate) mod seal;
pub(crate) mod tasks;
pub(crate) mod ws_connections;
