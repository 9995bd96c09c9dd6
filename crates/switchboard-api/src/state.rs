//! The state handlers draw from.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use switchboard_auth::Auth;
use switchboard_bus::Bus;
use switchboard_bus::groups::Groups;
use switchboard_core::Readiness;
use switchboard_gateway::Gateway;
use switchboard_registry::Registry;
use switchboard_tasks::Tasks;
use switchboard_telemetry::Metrics;
use switchboard_vault::Vault;
use tokio_util::sync::CancellationToken;

/// Settings of the HTTP layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How long a request may take before it is answered 503.
    pub request_timeout: Duration,
    /// How often the hub pings each WebSocket.
    pub ws_heartbeat_interval: Duration,
    /// Whether high-volume data-plane calls (heartbeats, publishes, acks,
    /// claims, task reports, messages) are audited too; their refusals
    /// always are.
    pub audit_data_plane: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            ws_heartbeat_interval: Duration::from_secs(30),
            audit_data_plane: false,
        }
    }
}

/// The dependencies `GET /readyz` checks.
#[derive(Clone, Default)]
pub struct Checks(Arc<[Arc<dyn Readiness>]>);

impl Checks {
    /// Checks of these dependencies.
    pub fn new(checks: Vec<Arc<dyn Readiness>>) -> Self {
        Self(checks.into())
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<dyn Readiness>> {
        self.0.iter()
    }
}

/// Everything the routes need; each handler extracts only its part.
///
/// A request takes a copy of the state, so it is one `Arc`: one reference
/// count per request instead of one per handle (the cancellation token's
/// takes a lock).
#[derive(Clone)]
pub struct AppState(Arc<Handles>);

/// The handles in an [`AppState`].
pub struct Handles {
    /// The agent registry.
    pub registry: Registry,
    /// The event bus.
    pub bus: Bus,
    /// The consumer groups.
    pub groups: Groups,
    /// The task queue and workflows.
    pub tasks: Tasks,
    /// Identity, access and audit.
    pub auth: Auth,
    /// The reverse proxy and webhooks.
    pub gateway: Gateway,
    /// The credential vault.
    pub vault: Vault,
    /// The metrics.
    pub metrics: Metrics,
    /// Readiness checks.
    pub checks: Checks,
    /// HTTP settings.
    pub config: ApiConfig,
    /// Cancelled when the hub shuts down; long-lived connections watch it.
    pub shutdown: CancellationToken,
}

impl AppState {
    /// The state made of these handles.
    pub fn new(handles: Handles) -> Self {
        Self(Arc::new(handles))
    }
}

impl std::ops::Deref for AppState {
    type Target = Handles;

    fn deref(&self) -> &Handles {
        &self.0
    }
}

macro_rules! from_state {
    ($($field:ident: $ty:ty),* $(,)?) => {
        $(impl FromRef<AppState> for $ty {
            fn from_ref(s: &AppState) -> Self {
                s.0.$field.clone()
            }
        })*
    };
}

from_state!(
    registry: Registry,
    bus: Bus,
    groups: Groups,
    tasks: Tasks,
    auth: Auth,
    gateway: Gateway,
    vault: Vault,
    metrics: Metrics,
    checks: Checks,
);
