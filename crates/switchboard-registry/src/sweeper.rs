//! The liveness sweeper: marks agents stale, then offline, when their
//! heartbeats stop, and writes heartbeats behind to the store.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{Registry, StatusChange};

/// The background worker of the registry.
pub struct Sweeper {
    pub(crate) registry: Registry,
}

impl Sweeper {
    /// Sweeps every `sweep_interval` and flushes every `flush_interval`
    /// until `shutdown` is cancelled, then flushes once more. A failed
    /// round is logged and tried again at the next tick.
    pub async fn run(self, shutdown: CancellationToken) {
        let cfg = self.registry.config();
        let mut sweep = tokio::time::interval(cfg.sweep_interval());
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flush = tokio::time::interval(cfg.flush_interval);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = sweep.tick() => {
                    if let Err(error) = self.registry.sweep().await {
                        tracing::warn!(%error, "liveness sweep failed");
                    }
                }
                _ = flush.tick() => {
                    if let Err(error) = self.registry.flush().await {
                        tracing::warn!(%error, "writing heartbeats failed");
                    }
                }
            }
        }
        match self.registry.flush().await {
            Ok(n) => tracing::debug!(agents = n, "heartbeats written at shutdown"),
            Err(error) => tracing::error!(%error, "writing heartbeats at shutdown failed"),
        }
    }
}

impl Registry {
    /// Applies the liveness rules once: live agents silent for
    /// `stale_after` become stale, and any agent silent for `offline_after`
    /// becomes offline; the changes are stored before this returns. Agents
    /// are never judged on time the hub itself was down: nothing lapses
    /// until the hub has run for the threshold.
    pub async fn sweep(&self) -> Result<Vec<StatusChange>, crate::RegistryError> {
        let cfg = self.config();
        let now = self.clock().now_ms();
        let since_start = now - self.started_at();
        let cutoff = |after: Duration| {
            let after = i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
            (since_start >= after).then(|| now - after)
        };
        let lapsed = self
            .live()
            .lapse(cutoff(cfg.stale_after()), cutoff(cfg.offline_after()), now);
        if lapsed.is_empty() {
            return Ok(Vec::new());
        }
        let batch: Vec<_> = lapsed
            .iter()
            .map(|(id, live, _)| (id.clone(), live.clone()))
            .collect();
        let events = lapsed
            .iter()
            .map(|(_, _, c)| crate::events::status_changed(c))
            .collect();
        if let Err(e) = self.store().save_liveness(&batch, events).await {
            self.live().mark_dirty(batch.iter().map(|(id, _)| id));
            return Err(e.into());
        }
        let changes: Vec<StatusChange> = lapsed.into_iter().map(|(_, _, c)| c).collect();
        for c in &changes {
            tracing::info!(agent_id = %c.agent_id, from = c.from.as_str(), to = c.to.as_str(), "agent status changed");
        }
        Ok(changes)
    }
}
