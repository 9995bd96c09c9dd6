//! The liveness sweeper: marks agents stale, then offline, when their
//! heartbeats stop.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{AgentStatus, Registry, StatusChange};

/// The background worker that applies the liveness rules on an interval.
pub struct Sweeper {
    pub(crate) registry: Registry,
}

impl Sweeper {
    /// Sweeps every `sweep_interval` until `shutdown` is cancelled. A failed
    /// sweep is logged and tried again at the next tick.
    pub async fn run(self, shutdown: CancellationToken) {
        let every = self.registry.config().sweep_interval();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(error) = self.registry.sweep().await {
                        tracing::warn!(%error, "liveness sweep failed");
                    }
                }
            }
        }
        tracing::debug!("liveness sweeper stopped");
    }
}

impl Registry {
    /// Applies the liveness rules once: live agents silent for
    /// `stale_after` become stale, and any agent silent for `offline_after`
    /// becomes offline. Agents are never judged on time the hub itself was
    /// down: silence is counted from the later of the last heartbeat and
    /// the hub's start.
    pub async fn sweep(&self) -> Result<Vec<StatusChange>, crate::RegistryError> {
        let cfg = self.config();
        let now = self.clock().now_ms();
        let since_start = now - self.started_at();
        let mut changes = Vec::new();
        let offline_after = millis(cfg.offline_after());
        if since_start >= offline_after {
            changes.extend(
                self.store()
                    .mark_lapsed(
                        &[
                            AgentStatus::Active,
                            AgentStatus::Idle,
                            AgentStatus::Busy,
                            AgentStatus::Draining,
                            AgentStatus::Stale,
                        ],
                        AgentStatus::Offline,
                        now - offline_after,
                        now,
                    )
                    .await?,
            );
        }
        let stale_after = millis(cfg.stale_after());
        if since_start >= stale_after {
            changes.extend(
                self.store()
                    .mark_lapsed(
                        &[
                            AgentStatus::Active,
                            AgentStatus::Idle,
                            AgentStatus::Busy,
                            AgentStatus::Draining,
                        ],
                        AgentStatus::Stale,
                        now - stale_after,
                        now,
                    )
                    .await?,
            );
        }
        for c in &changes {
            tracing::info!(agent_id = %c.agent_id, from = c.from.as_str(), to = c.to.as_str(), "agent status changed");
        }
        Ok(changes)
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
