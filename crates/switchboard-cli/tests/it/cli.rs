//! The CLI against a running hub.

use std::process::Output;

use serde_json::Value;
use switchboard_test::HubProcess;

use crate::bin;

async fn cli(hub: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(bin())
        .arg("--hub")
        .arg(hub)
        .env("SWITCHBOARD_TOKEN", switchboard_test::ADMIN_TOKEN)
        .args(args)
        .output()
        .await
        .expect("run cli")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn register_list_get_heartbeat_remove() {
    let dir = tempfile::tempdir().expect("tmp");
    let hub = HubProcess::spawn(bin(), dir.path(), &[])
        .await
        .expect("spawn");
    let url = hub.url("");

    let o = cli(
        &url,
        &[
            "agents",
            "register",
            "--id",
            "cli-1",
            "--type",
            "codegen",
            "--capability",
            "rust,python",
            "--max-concurrent-tasks",
            "4",
        ],
    )
    .await;
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    assert!(out.starts_with("registered agent cli-1\n"), "{out}");
    assert!(
        out.contains("client_secret: sbs_"),
        "new credentials are shown: {out}"
    );

    let file = dir.path().join("agent.json");
    std::fs::write(
        &file,
        crate::agent("cli-2", "tester", &["rust"]).to_string(),
    )
    .expect("write");
    let o = cli(
        &url,
        &["agents", "register", "-f", file.to_str().expect("utf-8")],
    )
    .await;
    assert!(o.status.success(), "{o:?}");

    let o = cli(&url, &["agents", "list", "--capability", "rust"]).await;
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("STATUS"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("cli-1") && lines[1].contains("codegen") && lines[1].contains("0/4"),
        "{out}"
    );
    assert!(lines[2].starts_with("cli-2"), "{out}");

    let o = cli(&url, &["--json", "agents", "list", "--type", "codegen"]).await;
    let agents: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(agents.as_array().expect("array").len(), 1);
    assert_eq!(
        agents[0]["capabilities"],
        serde_json::json!(["python", "rust"])
    );

    let o = cli(
        &url,
        &[
            "agents",
            "heartbeat",
            "cli-1",
            "--status",
            "busy",
            "--current-tasks",
            "2",
        ],
    )
    .await;
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout(&o).trim(), "agent cli-1 is busy");

    let o = cli(&url, &["--json", "agents", "get", "cli-1"]).await;
    let a: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(a["current_tasks"], 2);

    let o = cli(&url, &["agents", "remove", "cli-1"]).await;
    assert!(o.status.success(), "{o:?}");
    let o = cli(&url, &["agents", "get", "cli-1"]).await;
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("AGENT_NOT_FOUND"), "{err}");
}

#[tokio::test]
async fn bad_input_is_reported_with_the_field() {
    let dir = tempfile::tempdir().expect("tmp");
    let hub = HubProcess::spawn(bin(), dir.path(), &[])
        .await
        .expect("spawn");
    let o = cli(
        &hub.url(""),
        &["agents", "register", "--id", "bad id", "--type", "t"],
    )
    .await;
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("VALIDATION_FAILED") && err.contains("id:"),
        "{err}"
    );
}

#[tokio::test]
async fn unreachable_hub_is_a_clear_error() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let o = cli(&format!("http://127.0.0.1:{port}"), &["agents", "list"]).await;
    assert_eq!(o.status.code(), Some(69));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot reach the hub"), "{err}");
}

#[tokio::test]
async fn bad_config_exits_64() {
    let dir = tempfile::tempdir().expect("tmp");
    let conf = dir.path().join("hub.toml");
    std::fs::write(&conf, "listen = \"nowhere\"\n").expect("write");
    let o = tokio::process::Command::new(bin())
        .args(["serve", "--config"])
        .arg(&conf)
        .output()
        .await
        .expect("run");
    assert_eq!(o.status.code(), Some(64));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("listen"), "{err}");
}

#[tokio::test]
async fn groups_and_dead_letters_from_the_shell() {
    let dir = tempfile::tempdir().expect("tmp");
    let hub = HubProcess::spawn(bin(), dir.path(), &[])
        .await
        .expect("spawn");
    let url = hub.url("");
    let o = cli(
        &url,
        &[
            "groups",
            "create",
            "payments",
            "--topic",
            "pay.>",
            "--max-deliveries",
            "1",
        ],
    )
    .await;
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout(&o).trim(), "created: group payments on pay.>");

    // Two events fail their one delivery and are dead-lettered.
    let client = hub.client().expect("client");
    for n in 0..2 {
        let o = cli(
            &url,
            &[
                "publish",
                "pay.charge",
                "--data",
                &format!("{{\"n\": {n}}}"),
            ],
        )
        .await;
        assert!(o.status.success(), "{o:?}");
    }
    let mut failed = Vec::new();
    while failed.len() < 2 {
        let got = client
            .pull("payments", 2, std::time::Duration::from_secs(5))
            .await
            .expect("pull");
        assert!(!got.deliveries.is_empty(), "deliveries expected");
        let offsets: Vec<u64> = got.deliveries.iter().map(|d| d.offset).collect();
        client
            .nack("payments", &offsets, Some("card declined"), None)
            .await
            .expect("nack");
        failed.extend(offsets);
    }
    switchboard_test::eventually(
        std::time::Duration::from_secs(5),
        "dead-lettered",
        || async {
            let g = client.get_group("payments").await.ok()?;
            (g.dead_letters == 2).then_some(())
        },
    )
    .await
    .expect("two dead letters");

    let o = cli(&url, &["dlq", "list", "payments"]).await;
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("OFFSET"), "{out}");
    assert!(
        lines[1].contains("pay.charge") && lines[1].ends_with("card declined"),
        "{out}"
    );

    let o = cli(
        &url,
        &[
            "dlq",
            "replay",
            "payments",
            "--offset",
            &failed[0].to_string(),
        ],
    )
    .await;
    assert_eq!(
        stdout(&o).trim(),
        "replayed 1 dead letter(s) into payments",
        "{o:?}"
    );
    let again = client
        .pull("payments", 1, std::time::Duration::from_secs(5))
        .await
        .expect("pull");
    assert_eq!(again.deliveries[0].offset, failed[0]);
    assert_eq!(again.deliveries[0].attempt, 1);

    let o = cli(&url, &["--json", "dlq", "purge", "payments"]).await;
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["count"], 1, "{o:?}");
    let o = cli(&url, &["--json", "dlq", "list", "payments"]).await;
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["dead_letters"], serde_json::json!([]));

    let o = cli(&url, &["dlq", "list", "nope"]).await;
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("GROUP_NOT_FOUND"),
        "{o:?}"
    );
}

#[tokio::test]
async fn send_and_request_from_the_shell() {
    let dir = tempfile::tempdir().expect("tmp");
    let hub = HubProcess::spawn(bin(), dir.path(), &[])
        .await
        .expect("spawn");
    let url = hub.url("");
    let o = cli(
        &url,
        &["agents", "register", "--id", "echo-1", "--type", "echo"],
    )
    .await;
    assert!(o.status.success(), "{o:?}");
    let o = cli(
        &url,
        &["send", "--to-type", "echo", "--data", "{\"hi\": 1}"],
    )
    .await;
    assert!(o.status.success(), "{o:?}");
    assert!(
        stdout(&o).contains("to echo-1 (inbox.echo-1 at offset"),
        "{o:?}"
    );
    let o = cli(&url, &["--json", "events", "read", "inbox.echo-1"]).await;
    assert!(stdout(&o).contains("\"hi\": 1"), "{o:?}");

    let o = cli(&url, &["request", "--to", "echo-1", "--timeout-ms", "200"]).await;
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("TASK_TIMEOUT"),
        "{o:?}"
    );
}

/// The task and workflow commands, as a new user would run them: an agent
/// taking and reporting work from the shell, and `workflows create --watch`
/// following a run to its end.
#[tokio::test]
async fn tasks_and_a_watched_workflow_from_the_shell() {
    let dir = tempfile::tempdir().expect("tmp");
    let hub = HubProcess::spawn(bin(), dir.path(), &[])
        .await
        .expect("spawn");
    let url = hub.url("");
    for (id, t) in [("gen-1", "codegen"), ("rev-1", "review")] {
        let o = cli(&url, &["agents", "register", "--id", id, "--type", t]).await;
        assert!(o.status.success(), "{o:?}");
    }

    let o = cli(
        &url,
        &[
            "tasks",
            "create",
            "--type",
            "codegen",
            "--id",
            "t-1",
            "--priority",
            "high",
            "--input",
            r#"{"lines": 200}"#,
            "--timeout",
            "60",
        ],
    )
    .await;
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout(&o).trim(), "created: task t-1 (assigned)");
    let o = cli(
        &url,
        &[
            "tasks",
            "create",
            "--type",
            "codegen",
            "--priority",
            "urgent",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--priority"),
        "{o:?}"
    );

    let o = cli(
        &url,
        &[
            "--json",
            "tasks",
            "claim",
            "--agent",
            "gen-1",
            "--wait-ms",
            "2000",
        ],
    )
    .await;
    let claimed: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(claimed[0]["id"], "t-1", "{claimed}");
    assert_eq!(claimed[0]["input_data"]["lines"], 200);
    let o = cli(
        &url,
        &[
            "tasks",
            "report",
            "t-1",
            "--status",
            "completed",
            "--output",
            r#"{"files": 3}"#,
            "--agent",
            "gen-1",
        ],
    )
    .await;
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout(&o).trim(), "task t-1: completed");
    let o = cli(&url, &["tasks", "list", "--status", "completed"]).await;
    let out = stdout(&o);
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("t-1") && l.contains("gen-1")),
        "{out}"
    );
    let o = cli(&url, &["tasks", "cancel", "t-1"]).await;
    assert_eq!(
        o.status.code(),
        Some(1),
        "cancelling a completed task: {o:?}"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("completed"),
        "{o:?}"
    );

    let file = dir.path().join("workflow.json");
    std::fs::write(
        &file,
        serde_json::json!({
            "id": "wf-cli",
            "name": "Build and review",
            "stages": [
                {"name": "build", "agent_type": "codegen", "dependencies": []},
                {"name": "review", "agent_type": "review", "dependencies": ["build"]}
            ],
            "configuration": {"parallel_execution": false}
        })
        .to_string(),
    )
    .expect("write");
    let watch = tokio::process::Command::new(bin())
        .env("SWITCHBOARD_TOKEN", switchboard_test::ADMIN_TOKEN)
        .args(["--hub", &url, "workflows", "create", "-f"])
        .arg(&file)
        .arg("--watch")
        .output();
    let agents = async {
        for (agent, task) in [("gen-1", "wf-cli:build"), ("rev-1", "wf-cli:review")] {
            let o = cli(
                &url,
                &[
                    "--json",
                    "tasks",
                    "claim",
                    "--agent",
                    agent,
                    "--wait-ms",
                    "10000",
                ],
            )
            .await;
            let got: Value = serde_json::from_slice(&o.stdout).expect("json");
            assert_eq!(got[0]["id"], task, "{got}");
            let o = cli(
                &url,
                &[
                    "tasks",
                    "report",
                    task,
                    "--status",
                    "completed",
                    "--agent",
                    agent,
                ],
            )
            .await;
            assert!(o.status.success(), "{o:?}");
        }
    };
    let (o, ()) = tokio::join!(watch, agents);
    let o = o.expect("run watch");
    let out = stdout(&o);
    assert!(o.status.success(), "{o:?}");
    for line in [
        "task.assigned build on gen-1",
        "workflow.stage_completed build",
        "task.assigned review on rev-1",
        "workflow.completed",
        "workflow wf-cli ended: completed",
    ] {
        assert!(out.contains(line), "{line:?} missing from:\n{out}");
    }
    let o = cli(&url, &["workflows", "list"]).await;
    let out = stdout(&o);
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("wf-cli") && l.contains("2/2")),
        "{out}"
    );
}

#[tokio::test]
async fn the_gateway_webhooks_and_hooks_from_the_shell() {
    let dir = tempfile::tempdir().expect("tmp");
    let hub = HubProcess::spawn(bin(), dir.path(), &[])
        .await
        .expect("spawn");
    let url = hub.url("");
    let ups = [
        crate::upstream::Upstream::start("sh-0").await,
        crate::upstream::Upstream::start("sh-1").await,
    ];
    for up in &ups {
        let o = cli(
            &url,
            &[
                "agents",
                "register",
                "--id",
                &up.id,
                "--type",
                "shell",
                "--endpoint",
                &up.url(),
            ],
        )
        .await;
        assert!(o.status.success(), "{o:?}");
    }
    let o = cli(
        &url,
        &[
            "gateway",
            "services",
            "set",
            "shell",
            "--balancing",
            "weighted",
        ],
    )
    .await;
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains("service shell configured (weighted)"));
    let o = cli(
        &url,
        &[
            "gateway",
            "routes",
            "set",
            "sh",
            "--service",
            "shell",
            "--prefix",
            "/sh/",
            "--strip-prefix",
        ],
    )
    .await;
    assert!(o.status.success(), "{o:?}");
    // Through the route, as a client would call it.
    let http = switchboard_test::http_client(switchboard_test::ADMIN_TOKEN).expect("client");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        let v: Value = http
            .get(hub.url("/sh/echo/x"))
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        seen.insert(v["instance"].as_str().unwrap_or("").to_owned());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    let o = cli(&url, &["--json", "gateway", "topology"]).await;
    let t: Value = serde_json::from_str(&stdout(&o)).expect("json");
    let service = t["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "shell"))
        .expect("shell");
    assert_eq!(service["instances"].as_array().map(Vec::len), Some(2));
    let o = cli(&url, &["gateway", "routes", "list"]).await;
    assert!(stdout(&o).contains("/sh/"), "{o:?}");
    let o = cli(
        &url,
        &[
            "webhooks",
            "set",
            "audit-feed",
            "--url",
            "http://127.0.0.1:9/hook",
            "--topic",
            "agent.>",
        ],
    )
    .await;
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains("signing secret (shown once): whsec_"));
    let o = cli(&url, &["webhooks", "list"]).await;
    assert!(stdout(&o).contains("audit-feed"), "{o:?}");
    let o = cli(&url, &["hooks", "set", "gh", "--topic", "hooks.gh"]).await;
    assert!(stdout(&o).contains("hook gh at /api/v1/hooks/gh"), "{o:?}");
    let o = cli(&url, &["gateway", "routes", "delete", "sh"]).await;
    assert!(o.status.success());
    let r = http.get(hub.url("/sh/echo/x")).send().await.expect("send");
    assert_eq!(r.status(), 404);
}

/// Runs the CLI as an agent (its token) with more control over input.
async fn cli_as(hub: &str, token: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(bin())
        .arg("--hub")
        .arg(hub)
        .env("SWITCHBOARD_TOKEN", token)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run cli");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).await.expect("write stdin");
    }
    drop(input);
    child.wait_with_output().await.expect("cli output")
}

/// Two agents make keys, register them and talk sealed end to end from
/// the shell; secrets go into the vault and out only to the agent they
/// are granted to.
#[tokio::test]
async fn keys_sealed_messages_and_secrets_from_the_shell() {
    let dir = tempfile::tempdir().expect("tmp");
    let key_file = dir.path().join("master.keys");
    let o = cli("http://127.0.0.1:9", &["vault", "keygen"]).await;
    assert!(o.status.success(), "{o:?}");
    let line = stdout(&o);
    assert_eq!(line.trim().len(), 44, "a base64 256-bit key: {line}");
    std::fs::write(&key_file, &line).expect("write");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let data = dir.path().join("data");
    let key_arg = key_file.to_str().expect("utf-8");
    let hub = HubProcess::spawn(bin(), &data, &["--master-key-file", key_arg])
        .await
        .expect("spawn");
    let url = hub.url("");
    let mut tokens = Vec::new();
    for id in ["alice", "bob"] {
        let o = cli(
            &url,
            &[
                "--json", "agents", "register", "--id", id, "--type", "worker",
            ],
        )
        .await;
        assert!(o.status.success(), "{o:?}");
        let body: Value = serde_json::from_slice(&o.stdout).expect("json");
        let secret = body["credentials"]["client_secret"]
            .as_str()
            .expect("secret");
        let o = cli(
            &url,
            &[
                "auth",
                "token",
                "--client-id",
                id,
                "--client-secret",
                secret,
            ],
        )
        .await;
        assert!(o.status.success(), "{o:?}");
        tokens.push(stdout(&o).trim().to_owned());
    }
    let (alice, bob) = (tokens[0].as_str(), tokens[1].as_str());
    let path = |n: &str| dir.path().join(n).to_str().expect("utf-8").to_owned();
    for (id, token) in [("alice", alice), ("bob", bob)] {
        let file = path(&format!("{id}.key"));
        let o = cli_as(
            &url,
            token,
            &["keys", "generate", "--agent", id, "-o", &file],
            None,
        )
        .await;
        assert!(o.status.success(), "{o:?}");
        assert!(stdout(&o).contains("fingerprint SHA256:"), "{o:?}");
        let o = cli_as(&url, token, &["keys", "register", "-k", &file], None).await;
        assert!(o.status.success(), "{o:?}");
        assert!(stdout(&o).contains("current"), "{o:?}");
    }
    // Generating over a key file needs --force.
    let o = cli_as(
        &url,
        alice,
        &[
            "keys",
            "generate",
            "--agent",
            "alice",
            "-o",
            &path("alice.key"),
        ],
        None,
    )
    .await;
    assert!(!o.status.success());

    // Bob answers one sealed request with a shell command, reading his
    // inbox from its start: the request cannot slip past before his
    // subscription opens.
    let bob_key = path("bob.key");
    let responder = {
        let (url, bob, bob_key) = (url.clone(), bob.to_owned(), bob_key.clone());
        tokio::spawn(async move {
            cli_as(
                &url,
                &bob,
                &[
                    "subscribe",
                    "--decrypt",
                    "-k",
                    &bob_key,
                    "--reply-with",
                    "tr a-z A-Z",
                    "--after",
                    "0",
                    "--count",
                    "1",
                ],
                None,
            )
            .await
        })
    };
    let o = cli_as(
        &url,
        alice,
        &[
            "request",
            "--encrypt",
            "-k",
            &path("alice.key"),
            "--to",
            "bob",
            "--data",
            "sealed hello",
            "--timeout-ms",
            "20000",
        ],
        None,
    )
    .await;
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout(&o).trim(), "SEALED HELLO");
    let b = tokio::time::timeout(std::time::Duration::from_secs(20), responder)
        .await
        .expect("bob finished")
        .expect("join");
    assert!(b.status.success(), "{b:?}");
    assert!(
        stdout(&b).contains("request from alice (verified): sealed hello"),
        "{b:?}"
    );

    // Alice rotates her keys; the directory shows the history.
    let o = cli_as(
        &url,
        alice,
        &["keys", "rotate", "-k", &path("alice.key")],
        None,
    )
    .await;
    assert!(o.status.success(), "{o:?}");
    let o = cli_as(&url, bob, &["keys", "list", "alice"], None).await;
    let out = stdout(&o);
    assert!(out.contains("rotated") && out.contains("current"), "{out}");

    // A secret from standard input, for Alice only.
    let o = cli_as(
        &url,
        switchboard_test::ADMIN_TOKEN,
        &["secrets", "put", "api-token", "--agent", "alice"],
        Some("tok-123\n"),
    )
    .await;
    assert!(o.status.success(), "{o:?}");
    let o = cli_as(&url, alice, &["secrets", "get", "api-token"], None).await;
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout(&o), "tok-123\n");
    let o = cli_as(&url, bob, &["secrets", "get", "api-token"], None).await;
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("403"), "{o:?}");
    let o = cli(&url, &["vault", "status"]).await;
    assert!(stdout(&o).contains("state: ready"), "{o:?}");
}

/// Output piped into a reader that has gone (`switchboard … | head`) ends
/// the command quietly with the shell's code for a closed pipe, not with a
/// panic report.
#[test]
fn closed_stdout_ends_quietly() {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let o = std::process::Command::new(bin())
        .args(["vault", "keygen"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run cli");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(141), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

#[tokio::test]
async fn transient_publish_prints_how_many_subscribers_it_reached() {
    let dir = tempfile::tempdir().expect("tmp");
    let hub = HubProcess::spawn(bin(), dir.path(), &[])
        .await
        .expect("spawn");
    let url = hub.url("");
    let o = cli(
        &url,
        &["publish", "metrics.cpu", "--transient", "--data", "1"],
    )
    .await;
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    assert!(
        out.starts_with("delivered ")
            && out
                .trim_end()
                .ends_with("on metrics.cpu to 0 live subscriptions (transient, not logged)"),
        "{out}"
    );
    let subscriber = {
        let url = url.clone();
        tokio::spawn(async move { cli(&url, &["subscribe", "metrics.>", "--count", "2"]).await })
    };
    // Once the subscription is open, a transient event reaches it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let o = cli(
            &url,
            &["publish", "metrics.cpu", "--transient", "--data", "2"],
        )
        .await;
        assert!(o.status.success(), "{o:?}");
        if stdout(&o).contains("to 1 live subscription (transient") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the subscription never opened"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let o = cli(&url, &["publish", "metrics.cpu", "--data", "3"]).await;
    assert!(o.status.success(), "{o:?}");
    let printed = stdout(&o);
    let offset = printed
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|o| o.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("an offset in {printed:?}"));
    let s = tokio::time::timeout(std::time::Duration::from_secs(20), subscriber)
        .await
        .expect("the subscriber got its 2 events")
        .expect("join");
    assert!(s.status.success(), "{s:?}");
    let lines: Vec<Vec<String>> = stdout(&s)
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    // Offset column: none for the transient event, the offset for the
    // logged one; the data last.
    assert_eq!(
        (lines[0][0].as_str(), lines[0][4].as_str()),
        ("-", "2"),
        "{lines:?}"
    );
    assert_eq!(
        (lines[1][0].clone(), lines[1][4].as_str()),
        (offset.to_string(), "3"),
        "{lines:?}"
    );
}
