//! Agents and assignment: who can take what, the least loaded first, and
//! claims (agents pulling their work, with a long poll).
//!
//! A ready task goes to a live agent (not draining, stale or offline)
//! whose type is the task's type or whose capabilities include it, that
//! has every capability the task asks for and room for one more task; of
//! those, one whose claim is waiting (a long poll that asks for work now)
//! before one that would hold the task until its next claim, a claim being
//! filled up to what it asked for before the next, and then the least
//! loaded: tasks held against `max_concurrent_tasks` (the larger of what
//! the hub gave it and what it last reported), ties to the agent given
//! work least recently. The assignment is a
//! `task.assigned` event addressed to the agent (push); an agent that
//! pulls gets the tasks given to it from `claim`. Either way the
//! assignment starts a lease.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;
use switchboard_core::UnixMillis;
use switchboard_registry::{Agent, AgentStatus};

use super::{Engine, Fetched, ms_i64};
use crate::task::{Failure, TaskStatus};
use crate::{Claim, Reply, TaskError, events};

/// What the engine knows of an agent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AgentInfo {
    agent_type: String,
    /// Sorted.
    capabilities: Vec<String>,
    max_concurrent: Option<u32>,
    /// The assignment count when it was last given a task.
    last_assigned: u64,
}

impl AgentInfo {
    pub(crate) fn of(a: &Agent) -> Self {
        let mut capabilities = a.capabilities.clone();
        capabilities.sort_unstable();
        Self {
            agent_type: a.agent_type.clone(),
            capabilities,
            max_concurrent: a.max_concurrent_tasks,
            last_assigned: 0,
        }
    }

    fn can_do(&self, task_type: &str) -> bool {
        self.agent_type == task_type || self.has(task_type)
    }

    fn has(&self, capability: &str) -> bool {
        self.capabilities
            .binary_search_by(|c| c.as_str().cmp(capability))
            .is_ok()
    }
}

/// A claim waiting for work.
pub(crate) struct Waiter {
    pub(crate) agent_id: String,
    pub(crate) max: u32,
    pub(crate) deadline: UnixMillis,
    pub(crate) reply: Reply<Vec<crate::Task>>,
}

/// An agent that may be given work this dispatch.
struct Candidate {
    id: String,
    load: u32,
    capacity: u32,
    last_assigned: u64,
    /// Tasks its waiting claims still ask for.
    wants: u32,
    /// Tasks given to it in this dispatch.
    taken: u32,
}

impl Candidate {
    fn has_room(&self) -> bool {
        self.load < self.capacity
    }

    /// Takes one more task.
    fn take(&mut self) {
        self.load += 1;
        self.taken += 1;
        self.wants = self.wants.saturating_sub(1);
    }

    /// An agent whose claim is waiting first: it takes the task at once,
    /// where another would hold it until its next claim. Of those, the one
    /// already given work in this dispatch, until its claim has what it
    /// asked for: a claim answered leaves the next round one waiting claim
    /// fewer to answer at once, so a round's tasks fill one claim rather
    /// than take a task out of each. Then less loaded (held against
    /// capacity), then the one given work least recently.
    fn cmp_load(&self, other: &Self) -> Ordering {
        let a = u64::from(self.load) * u64::from(other.capacity);
        let b = u64::from(other.load) * u64::from(self.capacity);
        let filling = |c: &Self| c.wants > 0 && c.taken > 0;
        (other.wants > 0)
            .cmp(&(self.wants > 0))
            .then(filling(other).cmp(&filling(self)))
            .then(a.cmp(&b))
            .then(self.load.cmp(&other.load))
            .then(self.last_assigned.cmp(&other.last_assigned))
    }
}

/// Of the candidates at indexes `among`, the one with room that goes first
/// (see [`Candidate::cmp_load`]).
fn pick(cands: &[Candidate], among: impl Iterator<Item = usize>) -> Option<usize> {
    among
        .filter(|&i| cands[i].has_room())
        .min_by(|&a, &b| cands[a].cmp_load(&cands[b]))
}

/// Ready tasks looked at per task type per dispatch, so that a long queue
/// of tasks no agent can take does not stall the engine.
const SCAN_BUDGET: usize = 10_000;

impl Engine {
    /// Loads every registered agent.
    pub(super) async fn load_agents(&mut self) -> Result<(), TaskError> {
        let mut after = None;
        loop {
            let page = self
                .registry
                .list(&switchboard_registry::AgentQuery {
                    filter: switchboard_registry::AgentFilter::default(),
                    limit: switchboard_registry::MAX_PAGE,
                    after: after.clone(),
                })
                .await
                .map_err(|e| match e {
                    switchboard_registry::RegistryError::Storage(s) => TaskError::Storage(s),
                    other => TaskError::Storage(switchboard_core::StorageError::new(
                        switchboard_core::StorageErrorKind::Other,
                        other.to_string(),
                    )),
                })?;
            for a in &page.agents {
                self.agents.insert(a.id.clone(), AgentInfo::of(a));
            }
            match page.next_after {
                Some(next) => after = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// Follows the registry: new agents, agents that go away.
    pub(super) fn on_agent_event(&mut self, e: &Arc<switchboard_bus::Event>, now: UnixMillis) {
        let Some(data) = e.data.as_ref().map(switchboard_bus::Data::value) else {
            return;
        };
        let Some(id) = data.get("agent_id").and_then(Value::as_str) else {
            return;
        };
        self.dispatch_needed = true;
        match e.event_type.as_str() {
            "agent.registered" => {
                let text = |k: &str| data.get(k).and_then(Value::as_str).map(str::to_owned);
                let mut capabilities: Vec<String> = data
                    .get("capabilities")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                capabilities.sort_unstable();
                let max_concurrent = data
                    .get("max_concurrent_tasks")
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok());
                let last_assigned = self.agents.get(id).map_or(0, |a| a.last_assigned);
                self.agents.insert(
                    id.to_owned(),
                    AgentInfo {
                        agent_type: text("type").unwrap_or_default(),
                        capabilities,
                        max_concurrent,
                        last_assigned,
                    },
                );
            }
            "agent.status_changed"
                if data.get("to").and_then(Value::as_str)
                    == Some(AgentStatus::Offline.as_str()) =>
            {
                self.take_back(id, "AGENT_OFFLINE", "went offline", now);
            }
            "agent.removed" => {
                self.agents.remove(id);
                self.take_back(id, "AGENT_REMOVED", "was removed from the registry", now);
            }
            _ => {}
        }
    }

    /// Takes every task `agent` holds back: each is retried (or given back
    /// unstarted) per its policy.
    fn take_back(&mut self, agent: &str, code: &str, what: &str, now: UnixMillis) {
        let held: Vec<String> = self
            .held
            .get(agent)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default();
        if !held.is_empty() {
            tracing::info!(agent_id = %agent, tasks = held.len(), "agent {what}; its tasks are retried");
        }
        for id in held {
            self.lose_attempt(
                &id,
                Failure::new(code, format!("agent {agent} {what}")),
                now,
            );
        }
    }

    /// A claim must come from a registered, live agent.
    pub(super) fn check_claimant(&self, c: &Claim, fetched: &Fetched) -> Result<(), TaskError> {
        let known = self.agents.contains_key(&c.agent_id)
            || fetched.agents.get(&c.agent_id).is_some_and(Option::is_some);
        if !known {
            return Err(TaskError::AgentNotFound(c.agent_id.clone()));
        }
        match self.registry.presence(&c.agent_id) {
            Some(l) if l.status.is_live() => Ok(()),
            Some(l) => Err(TaskError::AgentUnavailable {
                id: c.agent_id.clone(),
                status: l.status.as_str().to_owned(),
            }),
            None => Err(TaskError::AgentNotFound(c.agent_id.clone())),
        }
    }

    /// Parks a claim until work is given to its agent or it times out. A
    /// claim is a sign of life: it renews the leases of the agent's tasks in
    /// progress.
    pub(super) fn add_waiter(&mut self, c: Claim, reply: Reply<Vec<crate::Task>>, now: UnixMillis) {
        let lease = self.lease_ms();
        let held: Vec<String> = self
            .held
            .get(&c.agent_id)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default();
        for id in held {
            // Only work the agent said it began (see `check_timers`).
            if let Some(t) = self
                .tasks
                .get_mut(&id)
                .filter(|t| t.status == TaskStatus::InProgress)
            {
                // Written when the stored lease has run half its course, so
                // readers see it kept without a write per claim.
                t.lease_expires_at = Some(now + lease);
                if t.lease_written.unwrap_or(0) - now < lease / 2 {
                    t.lease_written = t.lease_expires_at;
                    self.dirty_tasks.insert(id);
                }
            }
        }
        let wait = if self.draining {
            0
        } else {
            super::millis(c.wait)
        };
        self.waiters.push(Waiter {
            deadline: now + wait,
            agent_id: c.agent_id,
            max: c.max,
            reply,
        });
        self.dispatch_needed = true;
    }

    /// Gives ready tasks to agents.
    pub(super) fn dispatch(&mut self, now: UnixMillis) {
        if !self.dispatch_needed {
            return;
        }
        self.dispatch_needed = false;
        let default_capacity = self.config.default_agent_capacity.max(1);
        let mut wants: HashMap<&str, u32> = HashMap::new();
        for w in self.waiters.iter().filter(|w| !w.reply.is_closed()) {
            let n = wants.entry(w.agent_id.as_str()).or_default();
            *n = n.saturating_add(w.max);
        }
        let mut cands: Vec<Candidate> = self
            .agents
            .iter()
            .filter_map(|(id, info)| {
                let live = self.registry.presence(id)?;
                if !live.status.is_live() || live.status == AgentStatus::Draining {
                    return None;
                }
                let held =
                    u32::try_from(self.held.get(id).map_or(0, HashSet::len)).unwrap_or(u32::MAX);
                Some(Candidate {
                    id: id.clone(),
                    load: held.max(live.current_tasks),
                    capacity: info.max_concurrent.unwrap_or(default_capacity).max(1),
                    last_assigned: info.last_assigned,
                    wants: wants.get(id.as_str()).copied().unwrap_or(0),
                    taken: 0,
                })
            })
            .collect();
        if cands.is_empty() {
            return;
        }
        let mut assign: Vec<(String, usize)> = Vec::new();
        // Tasks asked for one agent.
        for (i, c) in cands.iter_mut().enumerate() {
            let Some(queue) = self.agent_ready.get(&c.id) else {
                continue;
            };
            for (_, _, id) in queue.iter() {
                if !c.has_room() {
                    break;
                }
                c.take();
                assign.push((id.clone(), i));
            }
        }
        // Tasks any capable agent may take.
        for (task_type, queue) in &self.type_ready {
            let able: Vec<usize> = cands
                .iter()
                .enumerate()
                .filter(|(_, c)| {
                    self.agents
                        .get(&c.id)
                        .is_some_and(|info| info.can_do(task_type))
                })
                .map(|(i, _)| i)
                .collect();
            if able.is_empty() {
                continue;
            }
            for (_, _, id) in queue.iter().take(SCAN_BUDGET) {
                let needs: &[String] = self
                    .tasks
                    .get(id)
                    .map_or(&[], |t| t.capabilities.as_slice());
                let best = pick(
                    &cands,
                    able.iter().copied().filter(|&i| {
                        needs.is_empty()
                            || self
                                .agents
                                .get(&cands[i].id)
                                .is_some_and(|info| needs.iter().all(|n| info.has(n)))
                    }),
                );
                match best {
                    Some(i) => {
                        cands[i].take();
                        assign.push((id.clone(), i));
                        // What `assign` will record, so ties later in this
                        // pass go to the others.
                        cands[i].last_assigned = self.assignments + assign.len() as u64;
                    }
                    None if needs.is_empty() => break,
                    None => {}
                }
            }
        }
        for (id, i) in assign {
            self.assign(&id, &cands[i].id, now);
        }
    }

    /// Gives a ready task to `agent`: a new attempt and a lease.
    fn assign(&mut self, id: &str, agent: &str, now: UnixMillis) {
        self.unqueue(id);
        self.assignments += 1;
        if let Some(info) = self.agents.get_mut(agent) {
            info.last_assigned = self.assignments;
        }
        let lease = self.lease_ms();
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        t.status = TaskStatus::Assigned;
        t.agent_id = Some(agent.to_owned());
        t.attempt += 1;
        t.claimed = false;
        t.progress = 0;
        t.assigned_at = Some(now);
        t.started_at = None;
        t.available_at = None;
        t.updated_at = now;
        t.lease_expires_at = Some(now + lease);
        t.deadline_at = t.timeout_ms.map(|ms| now + ms_i64(ms));
        self.events.push(events::task("assigned", t, now));
        self.dirty_tasks.insert(id.to_owned());
        self.held
            .entry(agent.to_owned())
            .or_default()
            .insert(id.to_owned());
        let offer = self.offer.entry(agent.to_owned()).or_default();
        offer.push_back(id.to_owned());
        // An agent that never claims (it takes its work from events) leaves
        // entries behind; past twice what it holds they are swept out.
        let holds = self.held.get(agent).map_or(0, HashSet::len);
        if offer.len() > 2 * holds + 64 {
            let (tasks, unconfirmed) = (&self.tasks, &self.unconfirmed);
            offer.retain(|id| {
                tasks.get(id).is_some_and(|t| {
                    t.status == TaskStatus::Assigned
                        && (!t.claimed || unconfirmed.get(id) == Some(&t.attempt))
                })
            });
        };
        self.arm(id);
    }

    /// Answers the claims whose agents have unclaimed tasks (or tasks whose
    /// claim's answer a crash may have lost), and those whose time is up.
    pub(super) fn serve_waiters(&mut self, now: UnixMillis) {
        if self.waiters.is_empty() {
            return;
        }
        let lease = self.lease_ms();
        let mut keep = Vec::with_capacity(self.waiters.len());
        for w in std::mem::take(&mut self.waiters) {
            if w.reply.is_closed() {
                continue;
            }
            let mut given = Vec::new();
            let offer = self.offer.entry(w.agent_id.clone()).or_default();
            while (given.len() as u32) < w.max {
                let Some(id) = offer.pop_front() else {
                    break;
                };
                if let Some(t) = self.tasks.get_mut(&id)
                    && t.status == TaskStatus::Assigned
                    && t.agent_id.as_ref() == Some(&w.agent_id)
                    && (!t.claimed || self.unconfirmed.get(&id) == Some(&t.attempt))
                {
                    self.unconfirmed.remove(&id);
                    t.claimed = true;
                    t.lease_expires_at = Some(now + lease);
                    t.updated_at = now;
                    given.push(t.clone());
                }
            }
            for t in &given {
                self.dirty_tasks.insert(t.id.clone());
            }
            if !given.is_empty() || w.deadline <= now {
                self.claims.push((w.reply, given));
            } else {
                keep.push(w);
            }
        }
        self.waiters = keep;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str, load: u32, capacity: u32, wants: u32) -> Candidate {
        Candidate {
            id: id.to_owned(),
            load,
            capacity,
            last_assigned: 0,
            wants,
            taken: 0,
        }
    }

    /// Who `dispatch` would pick for each of `n` tasks in one pass.
    fn picks(mut cands: Vec<Candidate>, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            let Some(best) = pick(&cands, 0..cands.len()) else {
                break;
            };
            cands[best].take();
            out.push(cands[best].id.clone());
        }
        out
    }

    #[test]
    fn a_waiting_claim_comes_first_and_is_filled_before_the_next() {
        // `busy` and `full-claim` wait on claims (for 2 and 1 tasks);
        // `idle` holds nothing but does not wait; `light` waits for 3.
        // Once `light` has one task more it is as loaded as `busy`, yet
        // its claim is filled first.
        let cands = vec![
            agent("idle", 0, 10, 0),
            agent("busy", 2, 10, 2),
            agent("light", 1, 10, 3),
            agent("full-claim", 9, 10, 1),
        ];
        assert_eq!(
            picks(cands, 8),
            [
                // The least loaded waiting claim, filled to what it asked.
                "light",
                "light",
                "light",
                // The next least loaded waiting claim, filled.
                "busy",
                "busy",
                // The last waiting claim.
                "full-claim",
                // No claim waits: least loaded by capacity.
                "idle",
                "idle",
            ]
        );
    }

    #[test]
    fn without_waiting_claims_load_is_counted_against_capacity() {
        let cands = vec![agent("big", 1, 4, 0), agent("small", 1, 2, 0)];
        // 1 of 4 is less than 1 of 2; then 2 of 4 ties 1 of 2 and the
        // agent holding fewer goes first.
        assert_eq!(picks(cands, 4), ["big", "small", "big", "big"]);
    }
}
