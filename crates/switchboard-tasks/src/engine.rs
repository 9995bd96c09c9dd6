//! The engine: one task that owns every unfinished task and workflow.
//!
//! It works in rounds. A round takes every command waiting (and any agent
//! events from the bus, and any timers due), looks up in the store what
//! those commands name that memory does not hold (finished tasks,
//! idempotency keys, agents), applies everything in memory, gives ready
//! tasks to agents, then writes every changed task and workflow with the
//! events describing the changes in one transaction. Answers go out only
//! after that commit, so nothing acknowledged is lost to a crash, and one
//! commit serves every command of the round.
//!
//! If a commit fails, memory is ahead of the store: the round's callers
//! get the error and the engine reloads its state from the store.
//!
//! Finished tasks and workflows leave memory once written; reads are
//! served by the store.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use switchboard_bus::{Bus, Filter, Pattern, Start, Subscription, SubscriptionSpec};
use switchboard_core::{Clock, StorageError, UnixMillis};
use switchboard_registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::store::{Changes, TaskStore};
use crate::task::{Priority, Task, TaskStatus};
use crate::workflow::Workflow;
use crate::{Command, Reply, TaskError, TasksConfig};

mod dispatch;
mod flow;
mod tasks;

use dispatch::{AgentInfo, Waiter};

/// The most commands taken into one round.
const MAX_ROUND: usize = 1024;

/// A place in a ready queue: higher priority first, then creation order.
type ReadyKey = (Reverse<Priority>, u64, String);

fn ready_key(t: &Task) -> ReadyKey {
    (Reverse(t.priority), t.seq, t.id.clone())
}

/// What the store held of the things a round's commands name, looked up
/// before the round so that applying them needs no IO.
#[derive(Default)]
struct Fetched {
    tasks: HashMap<String, Task>,
    by_key: HashMap<String, Task>,
    workflows: HashMap<String, Workflow>,
    wf_by_key: HashMap<String, Workflow>,
    /// Agents the engine had not seen; `None`: not registered.
    agents: HashMap<String, Option<AgentInfo>>,
}

/// A pending task's wait for its dependencies.
#[derive(Debug, Clone, Default)]
struct Waiting {
    /// Dependencies not yet ended.
    outstanding: usize,
    /// The first dependency that ended without completing.
    failed: Option<(String, TaskStatus)>,
}

/// What the round left in memory, for answers to show.
pub(crate) struct Now<'a> {
    tasks: &'a HashMap<String, Task>,
    workflows: &'a HashMap<String, Workflow>,
}

/// An answer that can be brought up to the end of the round.
pub(crate) trait Latest {
    /// `self` as the round left it.
    fn latest(self, now: &Now<'_>) -> Self;
}

impl Latest for Task {
    fn latest(self, now: &Now<'_>) -> Self {
        now.tasks.get(&self.id).cloned().unwrap_or(self)
    }
}

impl Latest for Workflow {
    fn latest(self, now: &Now<'_>) -> Self {
        now.workflows.get(&self.id).cloned().unwrap_or(self)
    }
}

impl<T: Latest> Latest for (T, bool) {
    fn latest(self, now: &Now<'_>) -> Self {
        (self.0.latest(now), self.1)
    }
}

type Answer = Box<dyn FnOnce(&Now<'_>, Option<&StorageError>) + Send>;

/// The engine. Run it once with [`Engine::run`].
pub struct Engine {
    store: Arc<dyn TaskStore>,
    registry: Registry,
    bus: Bus,
    config: TasksConfig,
    clock: Clock,
    rx: mpsc::Receiver<Command>,

    /// Unfinished tasks, and tasks finished this round (until written).
    tasks: HashMap<String, Task>,
    /// Idempotency key → task id, for the tasks in memory.
    keys: HashMap<String, String>,
    /// Unfinished workflows, and those finished this round.
    workflows: HashMap<String, Workflow>,
    /// Idempotency key → workflow id, for the workflows in memory.
    wf_keys: HashMap<String, String>,
    /// Pending tasks' waits.
    waiting: HashMap<String, Waiting>,
    /// Task id → pending tasks that depend on it.
    dependents: HashMap<String, Vec<String>>,
    /// Ready tasks that any capable agent may take, by task type.
    type_ready: HashMap<String, BTreeSet<ReadyKey>>,
    /// Ready tasks asked for one agent, by agent.
    agent_ready: HashMap<String, BTreeSet<ReadyKey>>,
    /// Agent → tasks it holds, in the order given.
    held: HashMap<String, HashSet<String>>,
    /// Agent → tasks to hand to its next claim, in the order given (an
    /// entry is checked when it is taken: the task may have moved on).
    offer: HashMap<String, VecDeque<String>>,
    /// What the engine knows of each agent (type, capabilities, capacity).
    agents: HashMap<String, AgentInfo>,
    /// Claims waiting for work.
    waiters: Vec<Waiter>,
    /// The registry's events, until `run` takes them.
    agent_events: Option<Subscription>,
    /// (when, task): the next time a task must be looked at.
    timers: BinaryHeap<Reverse<(UnixMillis, String)>>,
    /// The time each task's live timer is set for; other heap entries for
    /// it are stale and skipped.
    armed: HashMap<String, UnixMillis>,
    next_task_seq: u64,
    next_wf_seq: u64,
    /// Tasks claimed before this start, not started since (task → the
    /// attempt claimed): the claim's answer may have been lost in a crash,
    /// so the holder's next claim gets them again.
    unconfirmed: HashMap<String, u32>,
    /// Counts assignments, to spread ties between equally loaded agents.
    assignments: u64,
    /// Something changed that may let a ready task be given out.
    dispatch_needed: bool,
    /// The hub is shutting down: claims do not wait.
    draining: bool,

    // === this round ===
    dirty_tasks: HashSet<String>,
    dirty_workflows: HashSet<String>,
    events: Vec<switchboard_bus::NewEvent>,
    answers: Vec<Answer>,
    claims: Vec<(Reply<Vec<Task>>, Vec<Task>)>,
    /// Tasks that ended this round, whose dependents and workflow have
    /// not been told yet.
    ended: VecDeque<String>,
    /// Tasks that ended this round, to drop from memory once written.
    finished: Vec<String>,
    /// Workflows written this round, to drop from memory if they ended.
    dirty_wf_ended: HashSet<String>,
}

impl Engine {
    pub(crate) async fn open(
        store: Arc<dyn TaskStore>,
        registry: Registry,
        bus: Bus,
        config: TasksConfig,
        clock: Clock,
        rx: mpsc::Receiver<Command>,
    ) -> Result<Self, TaskError> {
        let mut engine = Self {
            store,
            registry,
            bus,
            config,
            clock,
            rx,
            tasks: HashMap::new(),
            keys: HashMap::new(),
            workflows: HashMap::new(),
            wf_keys: HashMap::new(),
            waiting: HashMap::new(),
            dependents: HashMap::new(),
            type_ready: HashMap::new(),
            agent_ready: HashMap::new(),
            held: HashMap::new(),
            offer: HashMap::new(),
            agents: HashMap::new(),
            waiters: Vec::new(),
            agent_events: None,
            timers: BinaryHeap::new(),
            armed: HashMap::new(),
            unconfirmed: HashMap::new(),
            next_task_seq: 0,
            next_wf_seq: 0,
            assignments: 0,
            dispatch_needed: true,
            draining: false,
            dirty_tasks: HashSet::new(),
            dirty_workflows: HashSet::new(),
            events: Vec::new(),
            answers: Vec::new(),
            claims: Vec::new(),
            ended: VecDeque::new(),
            finished: Vec::new(),
            dirty_wf_ended: HashSet::new(),
        };
        // Agent events move tasks off agents that go away and let work
        // reach agents that arrive. Subscribed before the agents are
        // loaded, so no registration falls between the two.
        engine.agent_events = Some(
            engine.bus.subscribe(SubscriptionSpec {
                patterns: ["agent.registered", "agent.status_changed", "agent.removed"]
                    .iter()
                    .filter_map(|p| Pattern::parse(p).ok())
                    .collect(),
                filter: Filter::default(),
                start: Start::Now,
            }),
        );
        engine.load_agents().await?;
        engine.load().await?;
        // A claim is stored before it is answered, so a crash in between
        // loses the answer: the holder never learns of the task, and its
        // claims and heartbeats would keep the lease alive for ever. So the
        // claimed tasks not yet started go to their holder's next claim
        // once more (a holder that did get one sees it twice).
        engine.unconfirmed = engine
            .tasks
            .values()
            .filter(|t| t.status == TaskStatus::Assigned && t.claimed)
            .map(|t| (t.id.clone(), t.attempt))
            .collect();
        Ok(engine)
    }

    fn lease_ms(&self) -> i64 {
        millis(self.config.lease)
    }

    /// Runs until `stop`. From `drain` on (the hub stops taking
    /// requests), claims are answered at once, with the tasks already
    /// given or none, so that no long poll holds up the shutdown; requests
    /// still in flight are served until `stop`.
    pub async fn run(mut self, drain: CancellationToken, stop: CancellationToken) {
        let mut agent_events = self.agent_events.take();
        // An agent's `agent.registered` event may arrive before the
        // registry records its presence, when dispatch passes it over as
        // not live: the registry says when it does.
        let mut arrivals = Some(self.registry.arrivals());
        // Whatever loading found to do (a dependency that ended as the hub
        // stopped) is written before the first command.
        self.round(Vec::new(), Vec::new()).await;
        let mut cmds = Vec::with_capacity(MAX_ROUND);
        let mut signals = Vec::new();
        loop {
            let wake = self.next_wake();
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = drain.cancelled(), if !self.draining => {
                    self.draining = true;
                    for w in &mut self.waiters {
                        w.deadline = 0;
                    }
                }
                n = self.rx.recv_many(&mut cmds, MAX_ROUND) => {
                    if n == 0 {
                        break;
                    }
                }
                ev = next_event(&mut agent_events) => match ev {
                    Ok(e) => signals.push(e),
                    Err(switchboard_bus::BusError::Closed) => agent_events = None,
                    Err(error) => {
                        tracing::warn!(%error, "reading agent events failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                changed = next_arrival(&mut arrivals) => match changed {
                    Ok(()) => self.dispatch_needed = true,
                    Err(_) => arrivals = None,
                },
                _ = sleep_until(&self.clock, wake) => {}
            }
            while cmds.len() < MAX_ROUND {
                match self.rx.try_recv() {
                    Ok(c) => cmds.push(c),
                    Err(_) => break,
                }
            }
            self.round(std::mem::take(&mut cmds), std::mem::take(&mut signals))
                .await;
        }
        for w in self.waiters.drain(..) {
            let _ = w.reply.send(Ok(Vec::new()));
        }
        tracing::debug!("task engine stopped");
    }

    fn next_wake(&self) -> Option<UnixMillis> {
        let timer = self.timers.peek().map(|Reverse((at, _))| *at);
        let waiter = self.waiters.iter().map(|w| w.deadline).min();
        match (timer, waiter) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// One round: look up, apply, dispatch, commit, answer.
    async fn round(&mut self, cmds: Vec<Command>, signals: Vec<Arc<switchboard_bus::Event>>) {
        let (cmds, fetched) = match self.prefetch(&cmds).await {
            Ok(f) => (cmds, f),
            Err(e) => {
                // The commands are refused; agent events and timers go on.
                tracing::warn!(error = %e, "looking up tasks failed");
                for c in cmds {
                    refuse(c, TaskError::Storage(e.clone()));
                }
                (Vec::new(), Fetched::default())
            }
        };
        let now = self.clock.now_ms();
        for s in &signals {
            self.on_agent_event(s, now);
        }
        for (id, info) in &fetched.agents {
            if let Some(info) = info {
                self.agents
                    .entry(id.clone())
                    .or_insert_with(|| info.clone());
            }
        }
        for c in cmds {
            self.apply(c, &fetched, now);
        }
        self.fire_timers(now);
        self.settle(now);
        self.dispatch(now);
        self.serve_waiters(now);
        self.commit().await;
    }

    fn apply(&mut self, cmd: Command, fetched: &Fetched, now: UnixMillis) {
        match cmd {
            Command::Create(new, reply) => {
                let r = self.create_task(*new, fetched, now);
                self.settle(now);
                self.answer(reply, r);
            }
            Command::Update(id, update, reply) => {
                let r = self.update_task(&id, &update, fetched, now);
                self.settle(now);
                self.answer(reply, r);
            }
            Command::Cancel(id, reason, reply) => {
                let r = self.cancel_task(&id, reason, fetched, now);
                self.settle(now);
                self.answer(reply, r);
            }
            Command::Claim(claim, reply) => {
                if let Err(e) = self.check_claimant(&claim, fetched) {
                    let _ = reply.send(Err(e));
                    return;
                }
                self.add_waiter(claim, reply, now);
            }
            Command::CreateWorkflow(new, reply) => {
                let r = self.create_workflow(*new, fetched, now);
                self.settle(now);
                self.answer(reply, r);
            }
            Command::CancelWorkflow(id, reply) => {
                let r = self.cancel_workflow(&id, fetched, now);
                self.settle(now);
                self.answer(reply, r);
            }
        }
    }

    /// Queues an answer until the round is written.
    /// The answer shows the task or workflow as the round left it (a task
    /// created is already assigned when an agent could take it).
    fn answer<T: Latest + Send + 'static>(
        &mut self,
        reply: Reply<T>,
        result: Result<T, TaskError>,
    ) {
        self.answers.push(Box::new(move |now, failed| {
            let result = match failed {
                Some(e) if result.is_ok() => Err(TaskError::Storage(e.clone())),
                _ => result.map(|v| v.latest(now)),
            };
            let _ = reply.send(result);
        }));
    }

    /// Looks up in the store what the commands name and memory lacks.
    async fn prefetch(&mut self, cmds: &[Command]) -> Result<Fetched, StorageError> {
        let mut ids: Vec<String> = Vec::new();
        let mut keys: Vec<String> = Vec::new();
        let mut wf_ids: Vec<String> = Vec::new();
        let mut wf_keys: Vec<String> = Vec::new();
        let mut agents: Vec<String> = Vec::new();
        let want_task = |id: &str, ids: &mut Vec<String>| {
            if !self.tasks.contains_key(id) {
                ids.push(id.to_owned());
            }
        };
        for c in cmds {
            match c {
                Command::Create(new, _) => {
                    if let Some(id) = &new.id {
                        want_task(id, &mut ids);
                    }
                    if let Some(k) = &new.idempotency_key
                        && !self.keys.contains_key(k)
                    {
                        keys.push(k.clone());
                    }
                    for d in &new.dependencies {
                        want_task(d, &mut ids);
                    }
                    if let Some(a) = &new.assigned_agent
                        && !self.agents.contains_key(a)
                    {
                        agents.push(a.clone());
                    }
                }
                Command::Update(id, _, _) | Command::Cancel(id, _, _) => want_task(id, &mut ids),
                Command::Claim(c, _) => {
                    if !self.agents.contains_key(&c.agent_id) {
                        agents.push(c.agent_id.clone());
                    }
                }
                Command::CreateWorkflow(new, _) => {
                    if let Some(id) = &new.id
                        && !self.workflows.contains_key(id)
                    {
                        wf_ids.push(id.clone());
                    }
                    if let Some(k) = &new.idempotency_key
                        && !self.wf_keys.contains_key(k)
                    {
                        wf_keys.push(k.clone());
                    }
                }
                Command::CancelWorkflow(id, _) => {
                    if !self.workflows.contains_key(id) {
                        wf_ids.push(id.clone());
                    }
                }
            }
        }
        let mut f = Fetched::default();
        if !ids.is_empty() {
            ids.sort_unstable();
            ids.dedup();
            for t in self.store.tasks(&ids).await? {
                f.tasks.insert(t.id.clone(), t);
            }
        }
        if !keys.is_empty() {
            for t in self.store.tasks_by_key(&keys).await? {
                if let Some(k) = t.idempotency_key.clone() {
                    f.by_key.insert(k, t);
                }
            }
        }
        if !wf_ids.is_empty() || !wf_keys.is_empty() {
            for w in self.store.workflows(&wf_ids, &wf_keys).await? {
                if let Some(k) = w.idempotency_key.clone() {
                    f.wf_by_key.insert(k, w.clone());
                }
                f.workflows.insert(w.id.clone(), w);
            }
        }
        for a in agents {
            if f.agents.contains_key(&a) {
                continue;
            }
            let info = match self.registry.get(&a).await {
                Ok(agent) => Some(AgentInfo::of(&agent)),
                Err(switchboard_registry::RegistryError::NotFound(_)) => None,
                Err(switchboard_registry::RegistryError::Storage(e)) => return Err(e),
                Err(_) => None,
            };
            f.agents.insert(a, info);
        }
        Ok(f)
    }

    /// Writes the round's changes, then answers; on failure reloads.
    async fn commit(&mut self) {
        let changes = Changes {
            tasks: self
                .dirty_tasks
                .drain()
                .filter_map(|id| self.tasks.get(&id).cloned())
                .collect(),
            workflows: self
                .dirty_workflows
                .drain()
                .filter_map(|id| {
                    let w = self.workflows.get(&id).cloned();
                    self.dirty_wf_ended.insert(id);
                    w
                })
                .collect(),
            events: std::mem::take(&mut self.events),
        };
        let result = if changes.is_empty() {
            Ok(())
        } else {
            self.store.apply(changes).await
        };
        let failed = result.err();
        let now = Now {
            tasks: &self.tasks,
            workflows: &self.workflows,
        };
        for a in std::mem::take(&mut self.answers) {
            a(&now, failed.as_ref());
        }
        let claims = std::mem::take(&mut self.claims);
        let mut undelivered = Vec::new();
        for (reply, tasks) in claims {
            match &failed {
                // The reload below forgets the claim anyway.
                Some(e) => {
                    let _ = reply.send(Err(TaskError::Storage(e.clone())));
                }
                None => {
                    if let Err(Ok(tasks)) = reply.send(Ok(tasks)) {
                        undelivered.extend(tasks.into_iter().map(|t| t.id));
                    }
                }
            }
        }
        if let Some(e) = failed {
            tracing::error!(error = %e, "writing tasks failed; reloading them from the store");
            if let Err(e) = self.reload().await {
                tracing::error!(error = %e, "reloading tasks failed");
            }
            return;
        }
        // A claim whose caller left (timed out, disconnected) gives its
        // tasks back for the next claim.
        for id in undelivered.into_iter().rev() {
            if let Some(t) = self.tasks.get_mut(&id)
                && t.status == TaskStatus::Assigned
            {
                t.claimed = false;
                if let Some(a) = &t.agent_id {
                    self.offer.entry(a.clone()).or_default().push_front(id);
                }
            }
        }
        self.evict();
    }

    /// Drops what has finished and is written.
    fn evict(&mut self) {
        for id in std::mem::take(&mut self.finished) {
            if let Some(t) = self.tasks.remove(&id) {
                if let Some(k) = &t.idempotency_key
                    && self.keys.get(k) == Some(&id)
                {
                    self.keys.remove(k);
                }
                self.armed.remove(&id);
                self.waiting.remove(&id);
                self.unconfirmed.remove(&id);
            }
        }
        let done: Vec<String> = self
            .dirty_wf_ended
            .drain()
            .filter(|id| self.workflows.get(id).is_some_and(|w| w.status.is_final()))
            .collect();
        for id in done {
            if let Some(w) = self.workflows.remove(&id)
                && let Some(k) = &w.idempotency_key
                && self.wf_keys.get(k) == Some(&id)
            {
                self.wf_keys.remove(k);
            }
        }
    }

    /// Forgets everything in memory and loads it again from the store.
    async fn reload(&mut self) -> Result<(), StorageError> {
        self.tasks.clear();
        self.keys.clear();
        self.workflows.clear();
        self.wf_keys.clear();
        self.waiting.clear();
        self.dependents.clear();
        self.type_ready.clear();
        self.agent_ready.clear();
        self.held.clear();
        self.offer.clear();
        self.timers.clear();
        self.armed.clear();
        self.ended.clear();
        self.finished.clear();
        self.dirty_wf_ended.clear();
        self.load().await
    }

    /// Loads every unfinished task and workflow and rebuilds the indexes
    /// and timers. Leases get at least one lease period from now, so
    /// agents can reach a hub that was down.
    async fn load(&mut self) -> Result<(), StorageError> {
        let active = self.store.load_active().await?;
        let now = self.clock.now_ms();
        self.next_task_seq = self.next_task_seq.max(active.task_seq);
        self.next_wf_seq = self.next_wf_seq.max(active.workflow_seq);
        let lease = self.lease_ms();
        let mut outside: Vec<String> = Vec::new();
        for mut t in active.tasks {
            if t.status.is_held() {
                t.lease_expires_at = Some(t.lease_expires_at.unwrap_or(0).max(now + lease));
            }
            for d in &t.dependencies {
                outside.push(d.clone());
            }
            if let Some(k) = &t.idempotency_key {
                self.keys.insert(k.clone(), t.id.clone());
            }
            self.tasks.insert(t.id.clone(), t);
        }
        outside.retain(|d| !self.tasks.contains_key(d));
        outside.sort_unstable();
        outside.dedup();
        let ended: HashMap<String, TaskStatus> = if outside.is_empty() {
            HashMap::new()
        } else {
            self.store
                .tasks(&outside)
                .await?
                .into_iter()
                .map(|t| (t.id, t.status))
                .collect()
        };
        let ids: Vec<String> = self.tasks.keys().cloned().collect();
        for id in ids {
            self.index_loaded(&id, &ended, now);
        }
        for w in active.workflows {
            if let Some(k) = &w.idempotency_key {
                self.wf_keys.insert(k.clone(), w.id.clone());
            }
            self.workflows.insert(w.id.clone(), w);
        }
        self.dispatch_needed = true;
        tracing::info!(
            tasks = self.tasks.len(),
            workflows = self.workflows.len(),
            "unfinished tasks and workflows loaded"
        );
        Ok(())
    }

    /// Puts a loaded task in the indexes its status calls for.
    fn index_loaded(&mut self, id: &str, ended: &HashMap<String, TaskStatus>, now: UnixMillis) {
        let Some(t) = self.tasks.get(id) else {
            return;
        };
        match t.status {
            TaskStatus::Pending => {
                let deps = t.dependencies.clone();
                let mut w = Waiting::default();
                for d in deps {
                    let status = match self.tasks.get(&d) {
                        Some(dt) if !dt.status.is_final() => None,
                        Some(dt) => Some(dt.status),
                        // A dependency the store no longer has counts as failed.
                        None => Some(ended.get(&d).copied().unwrap_or(TaskStatus::Failed)),
                    };
                    match status {
                        None => {
                            w.outstanding += 1;
                            self.dependents.entry(d).or_default().push(id.to_owned());
                        }
                        Some(s) if s != TaskStatus::Completed && w.failed.is_none() => {
                            w.failed = Some((d, s));
                        }
                        Some(_) => {}
                    }
                }
                self.waiting.insert(id.to_owned(), w);
                // Re-judged by `settle` at once if nothing is outstanding.
                self.recheck_pending(id, now);
            }
            TaskStatus::Queued => self.enqueue(id, now),
            TaskStatus::Assigned | TaskStatus::InProgress => {
                if let Some(a) = t.agent_id.clone() {
                    if t.status == TaskStatus::Assigned {
                        self.offer
                            .entry(a.clone())
                            .or_default()
                            .push_back(id.to_owned());
                    }
                    self.held.entry(a).or_default().insert(id.to_owned());
                }
                self.arm(id);
            }
            _ => {}
        }
    }

    /// Sets a task's timer for the earliest time it must be looked at.
    fn arm(&mut self, id: &str) {
        let Some(t) = self.tasks.get(id) else {
            return;
        };
        let at = match t.status {
            TaskStatus::Queued => t.available_at,
            TaskStatus::Assigned | TaskStatus::InProgress => {
                match (t.lease_expires_at, t.deadline_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            _ => None,
        };
        let Some(at) = at else {
            return;
        };
        // A later time than the one set is found when that one fires.
        if self.armed.get(id).is_some_and(|&set| set <= at) {
            return;
        }
        self.armed.insert(id.to_owned(), at);
        self.timers.push(Reverse((at, id.to_owned())));
    }

    fn fire_timers(&mut self, now: UnixMillis) {
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, id))) = self.timers.pop() else {
                break;
            };
            if self.armed.get(&id) != Some(&at) {
                continue;
            }
            self.armed.remove(&id);
            self.check_timers(&id, now);
        }
    }
}

async fn next_event(
    sub: &mut Option<Subscription>,
) -> Result<Arc<switchboard_bus::Event>, switchboard_bus::BusError> {
    match sub {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

async fn next_arrival(
    arrivals: &mut Option<watch::Receiver<u64>>,
) -> Result<(), watch::error::RecvError> {
    match arrivals {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(clock: &Clock, at: Option<UnixMillis>) {
    match at {
        Some(at) => {
            let ms = u64::try_from(at - clock.now_ms()).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        None => std::future::pending().await,
    }
}

fn refuse(cmd: Command, e: TaskError) {
    match cmd {
        Command::Create(_, r) => {
            let _ = r.send(Err(e));
        }
        Command::Update(_, _, r) | Command::Cancel(_, _, r) => {
            let _ = r.send(Err(e));
        }
        Command::Claim(_, r) => {
            let _ = r.send(Err(e));
        }
        Command::CreateWorkflow(_, r) => {
            let _ = r.send(Err(e));
        }
        Command::CancelWorkflow(_, r) => {
            let _ = r.send(Err(e));
        }
    }
}

pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

pub(crate) fn ms_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX / 4)
}
