//! Tasks and workflows survive `kill -9` under load.
//!
//! The real hub runs with short leases. Worker agents (tokio tasks here)
//! claim and complete tasks while creators add plain tasks and workflows
//! (small DAGs), and the hub is killed with SIGKILL three times, each time
//! restarted on the same data directory (on a new port the workers learn
//! from the shared client). Workers and creators treat a hub that is down
//! as a pause and retry; creates are retried with the same `id`. Some
//! first attempts fail on purpose, and one agent hangs now and then past
//! its lease and reports late, so attempts are retried and stale reports
//! refused while the hub comes and goes.
//!
//! At the end every acknowledged task is present once and completed, every
//! workflow completed with every stage completed, each task's
//! `task.*.completed` event is in the log exactly once, the hub accepted
//! exactly one completion report (one attempt) per task, and the output
//! recorded is the one that report carried.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use switchboard_client::{Client, ClientError, EventQuery, From, TaskListQuery, WorkflowListQuery};
use switchboard_test::{HubProcess, eventually};
use switchboard_wire::{
    BackoffStrategy, ClaimRequest, CreateTaskRequest, CreateWorkflowRequest, HeartbeatRequest,
    RegisterAgentRequest, ReportedTaskStatus, RetryPolicyRequest, StageSpec, StageStatus, Task,
    TaskFailure, TaskStatus, UpdateTaskRequest, WorkflowStatus,
};
use tokio::task::JoinSet;

use crate::bin;

/// Plain tasks created (the issue's scale: 1,000 tasks and 50 workflows).
const TASKS: usize = 1000;
/// Workflows created, spread among the tasks.
const WORKFLOWS: usize = 50;
/// The task types; each has `AGENTS_PER_TYPE` agents of that type.
const TYPES: [&str; 3] = ["crash_parse", "crash_build", "crash_check"];
const AGENTS_PER_TYPE: usize = 2;
/// Each agent's `max_concurrent_tasks`.
const CAPACITY: u32 = 20;
/// Tasks one claim asks for.
const CLAIM_MAX: u32 = 5;
/// The shortest time a task's work takes (up to 150 ms more).
const WORK_MIN: Duration = Duration::from_millis(50);
/// One task in this many fails its first attempt (and is retried).
const FAIL_ONE_IN: usize = 7;
/// The hanging agent's `max_concurrent_tasks`; it takes any type.
const HANG_CAPACITY: u32 = 3;
/// How long the hanging agent is silent: longer than the lease and than
/// `stale_after_missed` heartbeats, shorter than `offline_after_missed`.
const HANG: Duration = Duration::from_millis(1800);
/// Creates sent at the same time.
const CREATORS: usize = 4;
/// Attempts every task and stage may make (kills cost attempts).
const MAX_ATTEMPTS: u32 = 50;
/// The pause of a worker (or the creator) after an error, before retrying.
const PAUSE: Duration = Duration::from_millis(25);
/// How long one request is retried while the hub is down or restarting.
const RETRY_FOR: Duration = Duration::from_secs(60);
/// How long the whole run may take to finish after the last kill.
const DEADLINE: Duration = Duration::from_secs(120);

const CONFIG: &str = r#"
[tasks]
lease = "1s"

[registry]
heartbeat_interval = "500ms"
"#;

/// When the hub is killed.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    /// Once this many creates were acknowledged.
    Created(usize),
    /// Once this many completion reports were accepted.
    Completed(usize),
}

/// What the test's workers, creator and checker share.
struct Shared {
    /// A client for the hub that runs now; replaced at each restart.
    hub: RwLock<Client>,
    stop: AtomicBool,
    /// Creates (tasks and workflows) answered 2xx.
    created: AtomicUsize,
    /// Creates answered 200: a repeat, its first answer lost to a kill.
    repeats: AtomicUsize,
    /// Completion reports answered 200.
    completed: AtomicUsize,
    /// Reports refused with 409 (the lease was lost).
    lost: AtomicUsize,
    /// First attempts reported failed.
    failed: AtomicUsize,
    /// Late completion reports of the hanging agent, and those refused.
    late: AtomicUsize,
    late_refused: AtomicUsize,
    /// (task, attempt) of every task a claim gave.
    delivered: Mutex<HashSet<(String, u32)>>,
    /// Tasks a claim gave again (after a restart lost the first answer).
    redelivered: AtomicUsize,
    /// Requests that failed because the hub was down or restarting.
    transient: AtomicUsize,
    /// Task id → every output a worker sent for it.
    sent: Mutex<HashMap<String, Vec<Map<String, Value>>>>,
    /// Task id → (agent, attempt) of each completion report answered 200.
    accepted: Mutex<HashMap<String, Vec<(String, u32)>>>,
    /// Errors taken as "the hub is down", by text, for a failure's report.
    transient_kinds: Mutex<BTreeMap<String, usize>>,
    /// What a worker saw that should never happen.
    anomalies: Mutex<Vec<String>>,
}

// These locks guard plain maps for a few instructions and are never held
// across an `.await`, so `std::sync` locks are enough.
impl Shared {
    fn new(client: Client) -> Self {
        Self {
            hub: RwLock::new(client),
            stop: AtomicBool::new(false),
            created: AtomicUsize::new(0),
            repeats: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
            lost: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            late: AtomicUsize::new(0),
            late_refused: AtomicUsize::new(0),
            delivered: Mutex::new(HashSet::new()),
            redelivered: AtomicUsize::new(0),
            transient: AtomicUsize::new(0),
            sent: Mutex::new(HashMap::new()),
            accepted: Mutex::new(HashMap::new()),
            transient_kinds: Mutex::new(BTreeMap::new()),
            anomalies: Mutex::new(Vec::new()),
        }
    }

    fn client(&self) -> Client {
        self.hub.read().expect("client lock").clone()
    }

    fn transient(&self, e: &ClientError) {
        self.transient.fetch_add(1, Ordering::SeqCst);
        // One line per kind of failure, without the URL (ports, ids).
        let kind: String = match e {
            ClientError::Unreachable { source, .. } => {
                let mut s: &dyn std::error::Error = source;
                while let Some(inner) = s.source() {
                    s = inner;
                }
                format!("unreachable: {s}")
            }
            other => other.to_string(),
        };
        *self
            .transient_kinds
            .lock()
            .expect("transient lock")
            .entry(kind)
            .or_default() += 1;
    }

    /// Notes the tasks a claim gave.
    fn delivered(&self, tasks: &[Task]) {
        let mut seen = self.delivered.lock().expect("delivered lock");
        for t in tasks {
            if !seen.insert((t.id.clone(), t.attempt)) {
                self.redelivered.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn anomaly(&self, what: String) {
        eprintln!("anomaly: {what}");
        self.anomalies.lock().expect("anomalies lock").push(what);
    }
}

#[tokio::test]
async fn acknowledged_tasks_and_workflows_complete_once_across_kill_9() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("crash.toml");
    std::fs::write(&config, CONFIG).expect("write config");
    let config = config.to_str().expect("utf-8 path").to_owned();
    let args = ["--config", config.as_str()];
    let mut hub = HubProcess::spawn(bin(), dir.path(), &args)
        .await
        .expect("spawn");
    let shared = Arc::new(Shared::new(hub.client().expect("client")));
    let workers = start_agents(&shared).await;
    let creator = tokio::spawn(create_all(shared.clone()));

    // Kill the hub while tasks are created, then twice while they run.
    let stages_total: usize = (0..WORKFLOWS).map(|i| workflow(i).stages.len()).sum();
    let work_total = TASKS + stages_total;
    let triggers = [
        Trigger::Created(TASKS / 3),
        Trigger::Completed(work_total * 2 / 5),
        Trigger::Completed(work_total * 3 / 4),
    ];
    let mut downtimes = Vec::new();
    for (i, trigger) in triggers.into_iter().enumerate() {
        let reached = eventually(Duration::from_secs(60), &format!("{trigger:?}"), || {
            let reached = match trigger {
                Trigger::Created(n) => shared.created.load(Ordering::SeqCst) >= n,
                Trigger::Completed(n) => shared.completed.load(Ordering::SeqCst) >= n,
            };
            async move { reached.then_some(()) }
        })
        .await;
        if let Err(e) = reached {
            dump_unfinished(&shared, &shared.client()).await;
            panic!("kill trigger: {e:#}");
        }
        let down = Instant::now();
        hub.signal("-KILL").await.expect("kill -9");
        let status = hub.wait(Duration::from_secs(10)).await.expect("exit");
        assert!(!status.success(), "killed, not exited: {status}");
        eprintln!(
            "kill {} at {:?} ({trigger:?}): created {}, completed {}",
            i + 1,
            started.elapsed(),
            shared.created.load(Ordering::SeqCst),
            shared.completed.load(Ordering::SeqCst),
        );
        hub = HubProcess::spawn(bin(), dir.path(), &args)
            .await
            .expect("respawn");
        *shared.hub.write().expect("client lock") = hub.client().expect("client");
        downtimes.push(down.elapsed());
    }

    let (tasks_acked, workflows_acked) = creator.await.expect("creator").expect("creates");
    assert_eq!(
        (tasks_acked.len(), workflows_acked.len()),
        (TASKS, WORKFLOWS)
    );
    let client = shared.client();
    let ended = eventually(DEADLINE, "every task and workflow ended", || {
        let client = client.clone();
        async move {
            let tasks = client
                .list_tasks(&TaskListQuery {
                    status: ["pending", "queued", "assigned", "in_progress"]
                        .map(String::from)
                        .to_vec(),
                    limit: Some(1),
                    ..Default::default()
                })
                .await
                .ok()?;
            let workflows = client
                .list_workflows(&WorkflowListQuery {
                    status: vec!["running".into(), "compensating".into()],
                    limit: Some(1),
                    ..Default::default()
                })
                .await
                .ok()?;
            (tasks.total == 0 && workflows.total == 0).then_some(())
        }
    })
    .await;
    if let Err(e) = ended {
        dump_unfinished(&shared, &client).await;
        panic!("{e:#}");
    }
    let finished_at = started.elapsed();
    shared.stop.store(true, Ordering::SeqCst);
    for w in workers {
        tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("a worker did not stop")
            .expect("worker");
    }

    let mut expected: Vec<String> = tasks_acked.clone();
    for (wf, stages) in &workflows_acked {
        expected.extend(stages.iter().map(|s| format!("{wf}:{s}")));
    }
    let tasks = all_tasks(&client).await;
    let mut failures = check_tasks(&shared, &client, &tasks, &expected).await;
    failures.extend(check_workflows(&client, &tasks, &workflows_acked).await);
    failures.extend(
        shared
            .anomalies
            .lock()
            .expect("anomalies lock")
            .iter()
            .cloned(),
    );

    eprintln!(
        "{} tasks ({} plain, {} workflows) done in {finished_at:?} across {} kills \
         (restarts took {downtimes:?}); {} tasks took more than one attempt \
         ({} first attempts failed on purpose); the hanging agent reported \
         {} tasks late, {} refused; {} reports refused in all; {} claims \
         given again after a restart; {} creates answered as repeats; {} \
         requests failed while the hub was down; checked in {:?}",
        expected.len(),
        tasks_acked.len(),
        workflows_acked.len(),
        triggers.len(),
        tasks.iter().filter(|t| t.attempt > 1).count(),
        shared.failed.load(Ordering::SeqCst),
        shared.late.load(Ordering::SeqCst),
        shared.late_refused.load(Ordering::SeqCst),
        shared.lost.load(Ordering::SeqCst),
        shared.redelivered.load(Ordering::SeqCst),
        shared.repeats.load(Ordering::SeqCst),
        shared.transient.load(Ordering::SeqCst),
        started.elapsed(),
    );
    assert!(
        failures.is_empty(),
        "{} failures, the first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(20)]
    );
}

/// Registers the agents and starts their workers and heartbeats.
async fn start_agents(shared: &Arc<Shared>) -> Vec<tokio::task::JoinHandle<()>> {
    let register = |id: &str, agent_type: &str, capabilities: Vec<String>, capacity: u32| {
        let mut configuration = Map::new();
        configuration.insert("max_concurrent_tasks".into(), capacity.into());
        RegisterAgentRequest {
            id: id.to_owned(),
            agent_type: agent_type.to_owned(),
            capabilities,
            version: Some("1.0.0".into()),
            configuration: Some(configuration),
            ..Default::default()
        }
    };
    let client = shared.client();
    let mut workers = Vec::new();
    for t in TYPES {
        for n in 1..=AGENTS_PER_TYPE {
            let id = format!("{}-{n}", t.replace('_', "-"));
            client
                .register_agent(&register(&id, t, Vec::new(), CAPACITY))
                .await
                .expect("register");
            workers.push(tokio::spawn(work(shared.clone(), id.clone())));
            workers.push(tokio::spawn(beat(shared.clone(), id)));
        }
    }
    let id = "crash-hangs";
    let any = TYPES.map(String::from).to_vec();
    client
        .register_agent(&register(id, "crash_any", any, HANG_CAPACITY))
        .await
        .expect("register");
    workers.push(tokio::spawn(hang(shared.clone(), id.to_owned())));
    workers
}

/// A claim is written before it is answered, so `kill -9` in between loses
/// the answer; from the hub's side that is the same as an agent that got
/// the answer and forgot it, which is what this test does. After the
/// restart the task goes to its holder's next claim once more (the same
/// attempt), instead of staying with an agent that never heard of it while
/// its claims and heartbeats keep the lease. Creates repeated after the
/// restart are answered with what they created.
#[tokio::test]
async fn a_claim_answer_lost_to_kill_9_is_given_again() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("crash.toml");
    std::fs::write(&config, CONFIG).expect("write config");
    let config = config.to_str().expect("utf-8 path").to_owned();
    let args = ["--config", config.as_str()];
    let mut hub = HubProcess::spawn(bin(), dir.path(), &args)
        .await
        .expect("spawn");
    let client = hub.client().expect("client");
    let mut configuration = Map::new();
    configuration.insert("max_concurrent_tasks".into(), 5.into());
    let agent = RegisterAgentRequest {
        id: "lost-1".into(),
        agent_type: "crash_lost".into(),
        configuration: Some(configuration),
        ..Default::default()
    };
    client.register_agent(&agent).await.expect("register");
    let task = CreateTaskRequest {
        id: Some("lost-t".into()),
        task_type: "crash_lost".into(),
        retry_policy: Some(retry_policy()),
        ..Default::default()
    };
    let (_, created) = client.create_task(&task).await.expect("create");
    assert!(created);
    let flow = workflow(0);
    let (_, created) = client
        .create_workflow(&flow)
        .await
        .expect("create workflow");
    assert!(created);
    let claim = ClaimRequest {
        agent_id: "lost-1".into(),
        max_tasks: Some(5),
        wait_ms: Some(2000),
    };
    let given = client.claim_tasks(&claim).await.expect("claim");
    let ids: Vec<(&str, u32)> = given.iter().map(|t| (t.id.as_str(), t.attempt)).collect();
    assert_eq!(ids, [("lost-t", 1)]);

    hub.signal("-KILL").await.expect("kill -9");
    hub.wait(Duration::from_secs(10)).await.expect("exit");
    let hub = HubProcess::spawn(bin(), dir.path(), &args)
        .await
        .expect("respawn");
    let client = hub.client().expect("client");
    client
        .heartbeat("lost-1", &HeartbeatRequest::default())
        .await
        .expect("heartbeat");
    // A wait within the lease, so that the hub does not give the attempt
    // up meanwhile: the agent is live and has shown it.
    let claim = ClaimRequest {
        wait_ms: Some(500),
        ..claim
    };
    let given = client.claim_tasks(&claim).await.expect("claim");
    let ids: Vec<(&str, u32)> = given.iter().map(|t| (t.id.as_str(), t.attempt)).collect();
    assert_eq!(
        ids,
        [("lost-t", 1)],
        "the task is given again, same attempt"
    );
    let again = client
        .claim_tasks(&ClaimRequest {
            wait_ms: Some(0),
            ..claim.clone()
        })
        .await
        .expect("claim");
    assert!(again.is_empty(), "given once more, not at every claim");
    let done = client
        .update_task(
            "lost-t",
            &UpdateTaskRequest {
                status: Some(ReportedTaskStatus::Completed),
                agent_id: Some("lost-1".into()),
                attempt: Some(1),
                ..Default::default()
            },
        )
        .await
        .expect("complete");
    assert_eq!((done.status, done.attempt), (TaskStatus::Completed, 1));

    // Creates repeated after the crash find what they created.
    let (t, created) = client.create_task(&task).await.expect("repeat create");
    assert_eq!((t.id.as_str(), created), ("lost-t", false));
    let (w, created) = client.create_workflow(&flow).await.expect("repeat create");
    assert_eq!(
        (w.id, created),
        (flow.id.clone().unwrap_or_default(), false)
    );
}

// === checks ===

/// Every acknowledged task (`expected`: plain and stage tasks) is stored
/// once and completed, by exactly one accepted completion report whose
/// output it holds, with exactly one `task.*.completed` event. What is
/// wrong, one line each.
async fn check_tasks(
    shared: &Shared,
    client: &Client,
    tasks: &[Task],
    expected: &[String],
) -> Vec<String> {
    let mut failures = Vec::new();
    let mut by_id: HashMap<&str, &Task> = HashMap::new();
    for t in tasks {
        if by_id.insert(t.id.as_str(), t).is_some() {
            failures.push(format!("task {} is listed twice", t.id));
        }
    }
    if tasks.len() != expected.len() {
        failures.push(format!(
            "{} tasks stored, {} acknowledged",
            tasks.len(),
            expected.len()
        ));
    }
    let completed_events = completion_events(client).await;
    let sent = shared.sent.lock().expect("sent lock").clone();
    let accepted = shared.accepted.lock().expect("accepted lock").clone();
    for id in expected {
        let Some(t) = by_id.get(id.as_str()) else {
            failures.push(format!("acknowledged task {id} is missing"));
            continue;
        };
        if t.status != TaskStatus::Completed {
            failures.push(format!("task {id} is {:?}, not completed", t.status));
            continue;
        }
        // The output recorded is one a worker sent, from the attempt that
        // completed the task.
        let output = t.output_data.clone().unwrap_or_default();
        if !sent.get(id).is_some_and(|s| s.contains(&output)) {
            failures.push(format!("task {id}: output {output:?} was never sent"));
        }
        if output.get("attempt") != Some(&json!(t.attempt))
            || output.get("agent").and_then(Value::as_str) != t.agent_id.as_deref()
        {
            failures.push(format!(
                "task {id}: output {output:?} is not from attempt {} of {:?}",
                t.attempt, t.agent_id
            ));
        }
        // Exactly one completion report was accepted (repeats of it, after
        // a lost answer or a claim given twice, count once).
        let mut reports = accepted.get(id).cloned().unwrap_or_default();
        reports.sort();
        reports.dedup();
        if reports.len() != 1 || reports[0].1 != t.attempt {
            failures.push(format!(
                "task {id}: completion reports accepted {reports:?}, completed by attempt {}",
                t.attempt
            ));
        }
        // The output is recorded once: one `task.*.completed` event.
        match completed_events.get(id).map(Vec::as_slice) {
            Some([e]) => {
                let data = e.as_object().cloned().unwrap_or_default();
                if data.get("attempt") != Some(&json!(t.attempt))
                    || data.get("output_data") != Some(&Value::Object(output.clone()))
                {
                    failures.push(format!("task {id}: completed event {data:?} differs"));
                }
            }
            other => failures.push(format!(
                "task {id}: {} task.*.completed events",
                other.map_or(0, <[Value]>::len)
            )),
        }
    }
    for id in completed_events.keys() {
        if !expected.contains(id) {
            failures.push(format!("a completed event for unknown task {id}"));
        }
    }
    failures
}

/// Every acknowledged workflow completed, each stage once, by its one task,
/// with that task's output. What is wrong, one line each.
async fn check_workflows(
    client: &Client,
    tasks: &[Task],
    workflows: &[(String, Vec<String>)],
) -> Vec<String> {
    let mut failures = Vec::new();
    let stage_events = stage_completed_events(client).await;
    for (wf, stages) in workflows {
        let w = match client.get_workflow(wf).await {
            Ok(w) => w,
            Err(e) => {
                failures.push(format!("acknowledged workflow {wf}: {e}"));
                continue;
            }
        };
        if w.status != WorkflowStatus::Completed {
            failures.push(format!("workflow {wf} is {:?}", w.status));
        }
        let names: Vec<&str> = w.stages.iter().map(|s| s.name.as_str()).collect();
        if names != stages.iter().map(String::as_str).collect::<Vec<_>>() {
            failures.push(format!("workflow {wf} has stages {names:?}"));
        }
        let own = tasks
            .iter()
            .filter(|t| t.parent_workflow_id.as_deref() == Some(wf))
            .count();
        if own != stages.len() {
            failures.push(format!("workflow {wf} has {own} tasks"));
        }
        for s in &w.stages {
            let task_id = format!("{wf}:{}", s.name);
            if s.status != StageStatus::Completed {
                failures.push(format!("stage {task_id} is {:?}", s.status));
            }
            if s.task_id.as_deref() != Some(task_id.as_str()) {
                failures.push(format!("stage {task_id} ran as task {:?}", s.task_id));
            }
            let task_output = tasks
                .iter()
                .find(|t| t.id == task_id)
                .and_then(|t| t.output_data.clone());
            if s.output != task_output {
                failures.push(format!(
                    "stage {task_id}: output {:?}, its task's {task_output:?}",
                    s.output
                ));
            }
            let n = stage_events.get(&(wf.clone(), s.name.clone())).copied();
            if n != Some(1) {
                failures.push(format!(
                    "stage {task_id}: {} workflow.stage_completed events",
                    n.unwrap_or(0)
                ));
            }
        }
    }
    failures
}

// === workers ===

/// An agent's work loop: claim what there is room for, work on each task
/// claimed (at the same time), repeat.
async fn work(shared: Arc<Shared>, agent: String) {
    let mut running = JoinSet::new();
    while !shared.stop.load(Ordering::SeqCst) {
        while let Some(done) = running.try_join_next() {
            done.expect("a task's work");
        }
        let room = CAPACITY as usize - running.len();
        if room == 0 {
            if let Some(done) = running.join_next().await {
                done.expect("a task's work");
            }
            continue;
        }
        let claim = ClaimRequest {
            agent_id: agent.clone(),
            max_tasks: Some(CLAIM_MAX.min(room as u32)),
            wait_ms: Some(200),
        };
        match shared.client().claim_tasks(&claim).await {
            Ok(tasks) => {
                shared.delivered(&tasks);
                for t in tasks {
                    running.spawn(run_task(shared.clone(), agent.clone(), t));
                }
            }
            Err(e) if transient(&e) => {
                shared.transient(&e);
                tokio::time::sleep(PAUSE).await;
            }
            // The agent is stale (silent too long for a hub that is
            // busy restarting); its heartbeats bring it back.
            Err(e) if status(&e) == Some(503) => tokio::time::sleep(PAUSE).await,
            Err(e) => {
                shared.anomaly(format!("{agent}: claim refused: {e}"));
                tokio::time::sleep(PAUSE).await;
            }
        }
    }
    while let Some(done) = running.join_next().await {
        done.expect("a task's work");
    }
}

/// Works on `t`: half the tasks report that they started, the work takes
/// a while, then the task is reported completed with an output unique to
/// this attempt (or, for one task in `FAIL_ONE_IN`, the first attempt
/// reports a failure, to be retried).
async fn run_task(shared: Arc<Shared>, agent: String, t: Task) {
    let spread: usize = t.id.bytes().map(usize::from).sum::<usize>() + t.attempt as usize;
    if spread.is_multiple_of(2) {
        let started = UpdateTaskRequest {
            status: Some(ReportedTaskStatus::InProgress),
            progress: Some(50),
            agent_id: Some(agent.clone()),
            attempt: Some(t.attempt),
            ..Default::default()
        };
        if !report(&shared, &agent, &t, &started).await {
            return;
        }
    }
    tokio::time::sleep(WORK_MIN + Duration::from_millis((spread % 16) as u64 * 10)).await;
    if t.attempt == 1 && spread.is_multiple_of(FAIL_ONE_IN) {
        let failed = UpdateTaskRequest {
            status: Some(ReportedTaskStatus::Failed),
            error: Some(TaskFailure {
                code: "FLAKY".into(),
                message: "the first attempt fails".into(),
            }),
            agent_id: Some(agent.clone()),
            attempt: Some(t.attempt),
            ..Default::default()
        };
        if report(&shared, &agent, &t, &failed).await {
            shared.failed.fetch_add(1, Ordering::SeqCst);
        }
        return;
    }
    send_completion(&shared, &agent, &t).await;
}

/// Reports `t` completed with an output unique to this attempt, and notes
/// what was sent and whether the hub accepted it (returned too).
async fn send_completion(shared: &Shared, agent: &str, t: &Task) -> bool {
    let mut output = Map::new();
    output.insert(
        "marker".into(),
        format!("{}/{agent}/{}", t.id, t.attempt).into(),
    );
    output.insert("agent".into(), agent.into());
    output.insert("attempt".into(), t.attempt.into());
    shared
        .sent
        .lock()
        .expect("sent lock")
        .entry(t.id.clone())
        .or_default()
        .push(output.clone());
    let completed = UpdateTaskRequest {
        status: Some(ReportedTaskStatus::Completed),
        output_data: Some(output),
        agent_id: Some(agent.to_owned()),
        attempt: Some(t.attempt),
        ..Default::default()
    };
    let accepted = report(shared, agent, t, &completed).await;
    if accepted {
        shared
            .accepted
            .lock()
            .expect("accepted lock")
            .entry(t.id.clone())
            .or_default()
            .push((agent.to_owned(), t.attempt));
        shared.completed.fetch_add(1, Ordering::SeqCst);
    }
    accepted
}

/// An agent that hangs: it claims a few tasks, then is silent (no
/// heartbeat, no claim) for longer than the lease, so the hub gives its
/// attempts up and retries them elsewhere; then it reports them completed
/// all the same. Those late reports must be refused (409), or, when the
/// lease was kept after all (a restart renews leases), be the only one.
async fn hang(shared: Arc<Shared>, agent: String) {
    let claim = ClaimRequest {
        agent_id: agent.clone(),
        max_tasks: Some(HANG_CAPACITY),
        wait_ms: Some(200),
    };
    while !shared.stop.load(Ordering::SeqCst) {
        if let Err(e) = shared
            .client()
            .heartbeat(&agent, &HeartbeatRequest::default())
            .await
            && !transient(&e)
        {
            shared.anomaly(format!("{agent}: heartbeat refused: {e}"));
        }
        let tasks = match shared.client().claim_tasks(&claim).await {
            Ok(tasks) => tasks,
            Err(e) => {
                if transient(&e) {
                    shared.transient(&e);
                } else if status(&e) != Some(503) {
                    shared.anomaly(format!("{agent}: claim refused: {e}"));
                }
                tokio::time::sleep(PAUSE).await;
                continue;
            }
        };
        if tasks.is_empty() {
            continue;
        }
        shared.delivered(&tasks);
        // The hang: what it simulates is the agent's own silence, not a
        // wait for something to happen in the hub.
        tokio::time::sleep(HANG).await;
        for t in &tasks {
            shared.late.fetch_add(1, Ordering::SeqCst);
            if !send_completion(&shared, &agent, t).await {
                shared.late_refused.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

/// Sends a report until the hub answers; whether it was accepted (a 409
/// says the lease was lost: another attempt has the task).
async fn report(shared: &Shared, agent: &str, t: &Task, req: &UpdateTaskRequest) -> bool {
    let until = Instant::now() + RETRY_FOR;
    while Instant::now() < until {
        match shared.client().update_task(&t.id, req).await {
            Ok(_) => return true,
            Err(e) if status(&e) == Some(409) => {
                shared.lost.fetch_add(1, Ordering::SeqCst);
                return false;
            }
            Err(e) if transient(&e) => {
                shared.transient(&e);
                tokio::time::sleep(PAUSE).await;
            }
            Err(e) => {
                shared.anomaly(format!(
                    "{agent}: report {:?} on {} (attempt {}) refused: {e}",
                    req.status, t.id, t.attempt
                ));
                return false;
            }
        }
    }
    shared.anomaly(format!(
        "{agent}: could not report on {} within {RETRY_FOR:?}",
        t.id
    ));
    false
}

/// An agent's heartbeats, which keep it live and its leases kept.
async fn beat(shared: Arc<Shared>, agent: String) {
    while !shared.stop.load(Ordering::SeqCst) {
        if let Err(e) = shared
            .client()
            .heartbeat(&agent, &HeartbeatRequest::default())
            .await
            && !transient(&e)
        {
            shared.anomaly(format!("{agent}: heartbeat refused: {e}"));
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// The hub is down or restarting, or said so.
fn transient(e: &ClientError) -> bool {
    match e {
        ClientError::Unreachable { .. } => true,
        ClientError::Unexpected { status, .. } => *status >= 500,
        ClientError::Api(p) => p.status >= 500 && p.code != "AGENT_UNAVAILABLE",
        ClientError::BadUrl { .. } => false,
    }
}

fn status(e: &ClientError) -> Option<u16> {
    e.problem().map(|p| p.status)
}

// === the creator ===

/// Creates every task and workflow (`CREATORS` at a time), each retried
/// with its id until the hub acknowledges it; the ids acknowledged
/// (workflows with their stages).
async fn create_all(
    shared: Arc<Shared>,
) -> anyhow::Result<(Vec<String>, Vec<(String, Vec<String>)>)> {
    let mut lanes = JoinSet::new();
    for lane in 0..CREATORS {
        lanes.spawn(create_lane(shared.clone(), lane));
    }
    let (mut tasks, mut workflows) = (Vec::new(), Vec::new());
    while let Some(done) = lanes.join_next().await {
        let (t, w) = done??;
        tasks.extend(t);
        workflows.extend(w);
    }
    tasks.sort();
    workflows.sort();
    Ok((tasks, workflows))
}

/// One creator: tasks and workflows `lane`, `lane + CREATORS`, …, the
/// workflows spread evenly among the tasks.
async fn create_lane(
    shared: Arc<Shared>,
    lane: usize,
) -> anyhow::Result<(Vec<String>, Vec<(String, Vec<String>)>)> {
    let mut tasks = Vec::new();
    let mut workflows = Vec::new();
    let mine: Vec<usize> = (lane..WORKFLOWS).step_by(CREATORS).collect();
    let own: Vec<usize> = (lane..TASKS).step_by(CREATORS).collect();
    let spacing = (own.len() / mine.len().max(1)).max(1);
    for (k, i) in own.into_iter().enumerate() {
        if let Some(&n) = mine.get(k / spacing)
            && k.is_multiple_of(spacing)
        {
            let req = workflow(n);
            let id = req.id.clone().unwrap_or_default();
            let stages = req.stages.iter().map(|s| s.name.clone()).collect();
            let req = &req;
            until_acked(&shared, &id, move |c| async move {
                c.create_workflow(req).await
            })
            .await?;
            workflows.push((id, stages));
        }
        let id = format!("crash-t-{i:04}");
        let mut input = Map::new();
        input.insert("n".into(), i.into());
        let req = CreateTaskRequest {
            id: Some(id.clone()),
            task_type: TYPES[i % TYPES.len()].to_owned(),
            input_data: Some(input),
            retry_policy: Some(retry_policy()),
            ..Default::default()
        };
        let req = &req;
        until_acked(
            &shared,
            &id,
            move |c| async move { c.create_task(req).await },
        )
        .await?;
        tasks.push(id);
    }
    Ok((tasks, workflows))
}

/// Retries a create while the hub is down; an error answer fails the test.
async fn until_acked<T, F, Fut>(shared: &Shared, id: &str, mut call: F) -> anyhow::Result<()>
where
    F: FnMut(Client) -> Fut,
    Fut: Future<Output = Result<(T, bool), ClientError>>,
{
    let until = Instant::now() + RETRY_FOR;
    let mut tries = 0;
    while Instant::now() < until {
        tries += 1;
        match call(shared.client()).await {
            Ok((_, is_new)) => {
                shared.created.fetch_add(1, Ordering::SeqCst);
                if !is_new {
                    shared.repeats.fetch_add(1, Ordering::SeqCst);
                    if tries == 1 {
                        anyhow::bail!("the first create of {id} was answered as a repeat");
                    }
                }
                return Ok(());
            }
            Err(e) if transient(&e) => {
                shared.transient(&e);
                tokio::time::sleep(PAUSE).await;
            }
            Err(e) => anyhow::bail!("create {id} (try {tries}): {e}"),
        }
    }
    anyhow::bail!("create {id} not acknowledged within {RETRY_FOR:?}")
}

fn retry_policy() -> RetryPolicyRequest {
    RetryPolicyRequest {
        max_attempts: Some(MAX_ATTEMPTS),
        backoff_strategy: Some(BackoffStrategy::Fixed),
        initial_delay_ms: Some(50),
        max_delay_ms: Some(50),
        jitter: Some(0.0),
    }
}

/// Workflow `n`: a diamond of four stages (even `n`) or a chain of three.
fn workflow(n: usize) -> CreateWorkflowRequest {
    let stage = |name: &str, agent_type: &str, deps: &[&str]| StageSpec {
        name: name.to_owned(),
        agent_type: agent_type.to_owned(),
        dependencies: deps.iter().map(|d| (*d).to_owned()).collect(),
        retry_policy: Some(retry_policy()),
        ..Default::default()
    };
    let [a, b, c] = TYPES;
    let stages = if n.is_multiple_of(2) {
        vec![
            stage("fetch", a, &[]),
            stage("left", b, &["fetch"]),
            stage("right", c, &["fetch"]),
            stage("join", a, &["left", "right"]),
        ]
    } else {
        vec![
            stage("first", b, &[]),
            stage("second", c, &["first"]),
            stage("third", a, &["second"]),
        ]
    };
    let mut input = Map::new();
    input.insert("n".into(), n.into());
    CreateWorkflowRequest {
        id: Some(format!("crash-w-{n:02}")),
        input: Some(input),
        stages,
        ..Default::default()
    }
}

// === reading back ===

/// Every task, in creation order.
async fn all_tasks(client: &Client) -> Vec<Task> {
    let mut out = Vec::new();
    let mut cursor = None;
    for _ in 0..1000 {
        let page = client
            .list_tasks(&TaskListQuery {
                limit: Some(1000),
                cursor: cursor.clone(),
                ..Default::default()
            })
            .await
            .expect("list tasks");
        out.extend(page.tasks);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
    panic!("listing tasks did not end");
}

/// Every event on `topic` in the log.
async fn read_all(client: &Client, topic: &str) -> Vec<switchboard_wire::CloudEvent> {
    let mut out = Vec::new();
    let mut after = 0;
    for _ in 0..10_000 {
        let page = client
            .read_events(&EventQuery {
                topics: vec![topic.to_owned()],
                filter: None,
                from: From::After(after),
                limit: Some(1000),
            })
            .await
            .expect("read events");
        let done = page.events.is_empty() && page.next_after <= after;
        out.extend(page.events);
        if done {
            return out;
        }
        after = page.next_after;
    }
    panic!("reading {topic} did not end");
}

/// Task id → the data of each of its `task.*.completed` events.
async fn completion_events(client: &Client) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in read_all(client, "task.*.completed").await {
        let data = e.data.unwrap_or_default();
        let id = data["task_id"].as_str().unwrap_or_default().to_owned();
        out.entry(id).or_default().push(data);
    }
    out
}

/// (workflow, stage) → how many `workflow.stage_completed` events name it.
async fn stage_completed_events(client: &Client) -> HashMap<(String, String), usize> {
    let mut out = HashMap::new();
    for e in read_all(client, "workflow.stage_completed").await {
        let data = e.data.unwrap_or_default();
        let key = (
            data["workflow_id"].as_str().unwrap_or_default().to_owned(),
            data["stage"].as_str().unwrap_or_default().to_owned(),
        );
        *out.entry(key).or_default() += 1;
    }
    out
}

/// Prints (some of) the tasks that have not ended, for a failure.
async fn dump_unfinished(shared: &Shared, client: &Client) {
    for (kind, n) in shared
        .transient_kinds
        .lock()
        .expect("transient lock")
        .iter()
    {
        eprintln!("{n} × {kind}");
    }
    let tasks = all_tasks(client).await;
    let unfinished: Vec<&Task> = tasks.iter().filter(|t| !is_final(t.status)).collect();
    eprintln!("{} of {} tasks unfinished", unfinished.len(), tasks.len());
    let mut by_state: BTreeMap<(String, Option<String>), usize> = BTreeMap::new();
    for t in &unfinished {
        *by_state
            .entry((format!("{:?}", t.status), t.agent_id.clone()))
            .or_default() += 1;
    }
    eprintln!("unfinished by status and agent: {by_state:?}");
    if let Ok(agents) = client.list_agents(&Default::default()).await {
        for a in agents.agents {
            let probe = Instant::now();
            let claim = client
                .claim_tasks(&ClaimRequest {
                    agent_id: a.id.clone(),
                    max_tasks: Some(1),
                    wait_ms: Some(0),
                })
                .await
                .map(|t| t.len());
            eprintln!(
                "agent {} {:?} current_tasks {} max {:?}; a claim now: {claim:?} in {:?}",
                a.id,
                a.status,
                a.current_tasks,
                a.max_concurrent_tasks,
                probe.elapsed()
            );
        }
    }
    for t in unfinished.iter().take(20) {
        eprintln!(
            "unfinished: {} {:?} agent {:?} attempt {} lease {:?} error {:?}",
            t.id, t.status, t.agent_id, t.attempt, t.lease_expires_at, t.error
        );
    }
}

fn is_final(s: TaskStatus) -> bool {
    matches!(
        s,
        TaskStatus::Completed | TaskStatus::Failed | TaskStatus::TimedOut | TaskStatus::Cancelled
    )
}
