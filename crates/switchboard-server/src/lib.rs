//! The hub: wires the store, the components and the API together, and runs
//! them until shutdown.
//!
//! Layout:
//! - [`config`]: [`Config`], loaded from TOML, environment and flags.
//! - [`Hub`]: an opened hub (store open, components built), ready to serve
//!   on a listener; [`run`] opens and serves in one call.
//!
//! Shutdown has two halves: a [`CancellationToken`] tells every worker and
//! the HTTP server to stop taking work, then the hub waits for in-flight
//! requests and workers, bounded by `shutdown_grace`, and closes the store.

use std::future::Future;
use std::sync::Arc;

use switchboard_api::{AppState, Checks};
use switchboard_auth::{AuditWriter, Auth};
use switchboard_bus::Bus;
use switchboard_bus::groups::Groups;
use switchboard_core::{Clock, FieldError, StorageError};
use switchboard_registry::Registry;
use switchboard_store::SqliteStore;
use switchboard_tasks::{Engine, Tasks};
use switchboard_telemetry::Metrics;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod config;
mod serving;
pub mod tls;

pub use config::{Config, Overrides};
pub use tls::{TlsConfig, TlsMode};

/// What stops a hub from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is wrong; every bad setting is listed.
    #[error("invalid configuration: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Config(Vec<FieldError>),
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] StorageError),
    /// The registry could not be loaded.
    #[error("registry: {0}")]
    Registry(String),
    /// Credentials or keys could not be loaded.
    #[error("auth: {0}")]
    Auth(String),
    /// Listening or serving failed.
    #[error("serve: {0}")]
    Io(#[from] std::io::Error),
}

/// An opened hub.
pub struct Hub {
    config: Config,
    store: SqliteStore,
    state: AppState,
    engine: Engine,
    audit_writer: AuditWriter,
    audit_stop: CancellationToken,
    first_admin_key: Option<String>,
    /// Data keys wrapped by a previous master key wait to be rewrapped.
    vault_rewrap: bool,
    /// The TLS configuration, read (and a self-signed certificate made)
    /// before the hub answers anything.
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Hub {
    /// Opens the store and builds every component.
    pub async fn open(config: Config) -> Result<Self, ServerError> {
        let tls = if config.tls.enabled() {
            Some(tls::server_config(&config.tls, &config.data_dir)?)
        } else {
            None
        };
        let store = SqliteStore::open(&config.store()).await?;
        let registry = Registry::open(
            Arc::new(store.clone()),
            config.registry.clone(),
            Clock::system(),
        )
        .await
        .map_err(|e| ServerError::Registry(e.to_string()))?;
        let bus = Bus::new(Arc::new(store.clone()), config.bus.clone(), Clock::system());
        let shutdown = CancellationToken::new();
        let groups = Groups::open(
            bus.clone(),
            Arc::new(store.clone()),
            Clock::system(),
            shutdown.child_token(),
        )
        .await
        .map_err(|e| ServerError::Registry(format!("consumer groups: {e}")))?;
        let (tasks, engine) = Tasks::open(
            Arc::new(store.clone()),
            registry.clone(),
            bus.clone(),
            config.tasks.clone(),
            Clock::system(),
        )
        .await
        .map_err(|e| ServerError::Registry(format!("tasks: {e}")))?;
        // The audit writer outlives the server's drain, so requests that
        // finish during it are still recorded.
        let audit_stop = CancellationToken::new();
        let opened = Auth::open(
            Arc::new(store.clone()),
            config.auth.clone(),
            Clock::system(),
            audit_stop.clone(),
        )
        .await
        .map_err(|e| ServerError::Auth(e.to_string()))?;
        let metrics = Metrics::new();
        // Its connection pools keep a list per serving thread.
        switchboard_gateway::expect_serving_threads(config.http_threads);
        let gateway = switchboard_gateway::Gateway::open(
            switchboard_gateway::GatewayConfig::default(),
            switchboard_gateway::Deps {
                registry: registry.clone(),
                bus: bus.clone(),
                groups: groups.clone(),
                store: Arc::new(store.clone()),
                metrics: metrics.clone(),
                render: Arc::new(switchboard_api::render_event),
            },
            shutdown.child_token(),
        )
        .await
        .map_err(|e| ServerError::Registry(format!("gateway: {e}")))?;
        let (vault, vault_rewrap) = switchboard_vault::Vault::open(
            Arc::new(store.clone()),
            config.vault.clone(),
            Clock::system(),
        )
        .await
        .map_err(|e| match e {
            switchboard_vault::VaultError::Unavailable(why) => {
                ServerError::Config(vec![FieldError::new("vault.master_key_file", why)])
            }
            other => ServerError::Auth(format!("vault: {other}")),
        })?;
        if !config.auth.enabled {
            tracing::warn!(
                "authentication is OFF: every request runs as an admin (auth.enabled = false)"
            );
        }
        let state = AppState::new(switchboard_api::Handles {
            auth: opened.auth,
            gateway,
            vault,
            tasks,
            shutdown,
            registry,
            bus,
            groups,
            metrics,
            checks: Checks::new(vec![Arc::new(store.clone())]),
            config: config.http.clone(),
        });
        Ok(Self {
            config,
            store,
            state,
            engine,
            audit_writer: opened.audit_writer,
            audit_stop,
            tls,
            first_admin_key: opened.first_admin_key,
            vault_rewrap,
        })
    }

    /// The admin API key made on this first start, to show once.
    pub fn first_admin_key(&self) -> Option<&str> {
        self.first_admin_key.as_deref()
    }

    /// The registry handle.
    pub fn registry(&self) -> &Registry {
        &self.state.registry
    }

    /// Serves on `listener` until `shutdown` resolves, then drains.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let token = self.state.shutdown.clone();
        let tracker = TaskTracker::new();
        let grace = self.config.shutdown_grace;

        tracker.spawn(self.state.registry.sweeper().run(token.child_token()));
        tracker.spawn(self.state.bus.dispatcher().run(token.child_token()));
        tracker.spawn(self.state.bus.scheduler().run(token.child_token()));
        tracker.spawn(self.state.bus.retainer().run(token.child_token()));
        tracker.spawn(
            self.state
                .auth
                .clone()
                .run_housekeeping(token.child_token()),
        );
        tracker.spawn(
            self.state
                .gateway
                .clone()
                .run_discovery(token.child_token()),
        );
        tracker.spawn(
            self.state
                .gateway
                .clone()
                .run_health_checks(token.child_token()),
        );
        self.state.gateway.start_webhooks();
        if self.vault_rewrap {
            // A previous master key still wraps data keys: rewrap them
            // under the current one while the hub serves.
            let vault = self.state.vault.clone();
            tracker.spawn(async move {
                match vault.rewrap_all().await {
                    Ok(n) => tracing::info!(
                        rewrapped = n,
                        "vault data keys rewrapped under the current master key"
                    ),
                    Err(error) => tracing::error!(%error, "could not rewrap the vault's data keys"),
                }
            });
        }
        // The audit writer drains what is queued after the server stops,
        // so it ends with the other workers.
        let _audit_guard = self.audit_stop.clone().drop_guard();
        let audit = switchboard_store::spawn_writer("audit-writer", self.audit_writer.run())?;
        // The task engine serves requests until the server has drained
        // (so none in flight is refused), then stops; also if this
        // function returns early.
        let engine_stop = CancellationToken::new();
        let _engine_guard = engine_stop.clone().drop_guard();
        // Both hold the store's write connection: each on a thread of its
        // own (`spawn_writer`).
        let engine_done = switchboard_store::spawn_writer(
            "task-engine",
            self.engine.run(token.child_token(), engine_stop.clone()),
        )?;
        tracker.spawn(async move {
            let _ = engine_done.await;
        });
        {
            let token = token.clone();
            tokio::spawn(async move {
                shutdown.await;
                tracing::info!("shutdown requested; finishing in-flight requests");
                token.cancel();
            });
        }

        let app = switchboard_api::front(self.state.clone());
        let mut serving = match serving::Serving::start(
            listener,
            self.config.http_threads,
            &app,
            self.tls.as_ref(),
            &token,
        ) {
            Ok(s) => s,
            Err(e) => {
                token.cancel();
                return Err(ServerError::Io(e));
            }
        };
        let served = tokio::select! {
            r = serving.finished() => r,
            _ = async { token.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(?grace, "in-flight requests still running after the grace period; closing them");
                serving.abort();
                serving.finished().await
            }
        };
        token.cancel();
        engine_stop.cancel();
        self.audit_stop.cancel();
        tracker.close();
        {
            let groups = self.state.groups.clone();
            tracker.spawn(async move { groups.closed().await });
            let gateway = self.state.gateway.clone();
            tracker.spawn(async move { gateway.closed().await });
        }
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(
                ?grace,
                "background workers still running after the grace period"
            );
        }
        if tokio::time::timeout(grace, audit).await.is_err() {
            tracing::warn!(?grace, "the audit writer did not finish in time");
        }
        self.store.close().await;
        tracing::info!("hub stopped");
        // The serving threads end last: what was made on their runtimes
        // is driven until the store has closed.
        drop(serving);
        served.map_err(ServerError::Io)
    }
}

/// Opens a hub with `config` and serves on `listener` until `shutdown`.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    Hub::open(config).await?.serve(listener, shutdown).await
}
