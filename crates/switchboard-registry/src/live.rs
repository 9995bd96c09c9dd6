//! The liveness table: every agent's volatile state, in memory.
//!
//! Heartbeats arrive many times a second across a fleet and change only
//! this state, so they are applied here and written to the store behind
//! (every `flush_interval`, all dirty agents in one write). A change of
//! status is different: it is written through before the heartbeat or
//! sweep that caused it is acknowledged. The table holds every registered
//! agent (loaded at start), so a heartbeat for an unknown agent is refused
//! without touching the store.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use switchboard_core::UnixMillis;
use tokio::sync::watch;

use crate::Presence;
use crate::agent::{AgentStatus, Heartbeat, Liveness, StatusChange};

struct Entry {
    live: Liveness,
    /// Changed since it was last written to the store.
    dirty: bool,
}

/// What a heartbeat did.
pub(crate) struct Beat {
    /// The status after the heartbeat.
    pub(crate) status: AgentStatus,
    /// The new liveness and the change, when the status changed.
    pub(crate) change: Option<(Liveness, StatusChange)>,
}

/// The table. A `std` mutex: every critical section is a few map
/// operations with no `.await` inside.
pub(crate) struct LiveTable {
    map: Mutex<HashMap<String, Entry>>,
    /// Counts the entries put: see [`crate::Registry::arrivals`].
    arrivals: watch::Sender<u64>,
}

impl LiveTable {
    pub(crate) fn new(rows: Vec<(String, Liveness)>) -> Self {
        let map = rows
            .into_iter()
            .map(|(id, live)| (id, Entry { live, dirty: false }))
            .collect();
        Self {
            map: Mutex::new(map),
            arrivals: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic elsewhere while holding the lock leaves the map usable.
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn get(&self, id: &str) -> Option<Liveness> {
        self.lock().get(id).map(|e| e.live.clone())
    }

    /// An agent's status, reported load and last heartbeat, without
    /// copying the rest of its liveness.
    pub(crate) fn presence(&self, id: &str) -> Option<Presence> {
        self.lock().get(id).map(|e| Presence {
            status: e.live.status,
            current_tasks: e.live.current_tasks,
            last_heartbeat_at: e.live.last_heartbeat_at,
        })
    }

    /// Records state that was just read from or written to the store.
    pub(crate) fn put(&self, id: &str, live: Liveness) {
        self.lock()
            .insert(id.to_owned(), Entry { live, dirty: false });
        self.arrivals.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn arrivals(&self) -> watch::Receiver<u64> {
        self.arrivals.subscribe()
    }

    pub(crate) fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Applies a heartbeat; `None` when the agent is unknown.
    pub(crate) fn beat(&self, id: &str, hb: &Heartbeat, now: UnixMillis) -> Option<Beat> {
        let mut map = self.lock();
        let e = map.get_mut(id)?;
        let live = &mut e.live;
        let to = hb.status.unwrap_or(live.reported_status);
        let from = live.status;
        live.reported_status = to;
        if let Some(n) = hb.current_tasks {
            live.current_tasks = n;
        }
        if let Some(m) = &hb.performance_metrics {
            live.performance_metrics = m.clone();
        }
        live.last_heartbeat_at = live.last_heartbeat_at.max(now);
        e.dirty = true;
        let change = (from != to).then(|| {
            live.status = to;
            live.status_changed_at = now;
            live.status_version += 1;
            (
                live.clone(),
                StatusChange {
                    agent_id: id.to_owned(),
                    from,
                    to,
                    at: now,
                },
            )
        });
        Some(Beat { status: to, change })
    }

    /// Moves agents silent since before `offline_before` to offline, and
    /// live agents silent since before `stale_before` to stale. The caller
    /// writes the changes through (and marks them dirty if that fails).
    pub(crate) fn lapse(
        &self,
        stale_before: Option<UnixMillis>,
        offline_before: Option<UnixMillis>,
        now: UnixMillis,
    ) -> Vec<(String, Liveness, StatusChange)> {
        let mut changes = Vec::new();
        for (id, e) in self.lock().iter_mut() {
            let live = &mut e.live;
            let silent_before =
                |cutoff: Option<UnixMillis>| cutoff.is_some_and(|c| live.last_heartbeat_at < c);
            let to = if live.status != AgentStatus::Offline && silent_before(offline_before) {
                AgentStatus::Offline
            } else if live.status.is_live() && silent_before(stale_before) {
                AgentStatus::Stale
            } else {
                continue;
            };
            let from = live.status;
            live.status = to;
            live.status_changed_at = now;
            live.status_version += 1;
            changes.push((
                id.clone(),
                live.clone(),
                StatusChange {
                    agent_id: id.clone(),
                    from,
                    to,
                    at: now,
                },
            ));
        }
        changes
    }

    /// Every dirty agent's liveness; they are clean afterwards.
    pub(crate) fn take_dirty(&self) -> Vec<(String, Liveness)> {
        let mut map = self.lock();
        map.iter_mut()
            .filter(|(_, e)| e.dirty)
            .map(|(id, e)| {
                e.dirty = false;
                (id.clone(), e.live.clone())
            })
            .collect()
    }

    /// Marks agents dirty again after a failed write.
    pub(crate) fn mark_dirty<'a>(&self, ids: impl IntoIterator<Item = &'a String>) {
        let mut map = self.lock();
        for id in ids {
            if let Some(e) = map.get_mut(id) {
                e.dirty = true;
            }
        }
    }

    /// How many agents are in each status.
    pub(crate) fn counts(&self) -> HashMap<AgentStatus, u64> {
        let mut counts = HashMap::new();
        for e in self.lock().values() {
            *counts.entry(e.live.status).or_insert(0) += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn live(status: AgentStatus, at: UnixMillis) -> Liveness {
        Liveness {
            status,
            reported_status: AgentStatus::Active,
            current_tasks: 0,
            performance_metrics: Map::new(),
            last_heartbeat_at: at,
            status_changed_at: at,
            status_version: 1,
        }
    }

    #[test]
    fn beat_changes_status_only_when_it_differs() {
        let t = LiveTable::new(vec![("a".into(), live(AgentStatus::Active, 0))]);
        let b = t.beat("a", &Heartbeat::default(), 10).expect("known");
        assert!(b.change.is_none());
        assert_eq!(t.take_dirty().len(), 1);
        assert!(t.take_dirty().is_empty());
        let hb = Heartbeat {
            status: Some(AgentStatus::Busy),
            ..Default::default()
        };
        let b = t.beat("a", &hb, 20).expect("known");
        let (l, c) = b.change.expect("changed");
        assert_eq!(
            (c.from, c.to, l.status_version),
            (AgentStatus::Active, AgentStatus::Busy, 2)
        );
        assert!(t.beat("nobody", &hb, 20).is_none());
    }

    #[test]
    fn lapse_goes_stale_then_offline() {
        let t = LiveTable::new(vec![
            ("old".into(), live(AgentStatus::Active, 0)),
            ("new".into(), live(AgentStatus::Busy, 100)),
        ]);
        let c = t.lapse(Some(50), Some(10), 200);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].2.to, AgentStatus::Offline);
        let c = t.lapse(Some(150), None, 300);
        assert_eq!((c[0].0.as_str(), c[0].2.to), ("new", AgentStatus::Stale));
        assert!(
            t.lapse(Some(150), None, 400).is_empty(),
            "stale stays stale"
        );
        let counts = t.counts();
        assert_eq!(counts[&AgentStatus::Offline], 1);
        assert_eq!(counts[&AgentStatus::Stale], 1);
    }
}
