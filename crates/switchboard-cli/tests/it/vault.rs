//! The vault over real HTTP: values unreadable in the database file,
//! readable only by those their policy grants (refusals audited and
//! counted), versions, master key rotation and restarts, and a hub started
//! with the wrong master key refusing to serve secrets.

use std::path::{Path, PathBuf};

use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard_test::{ADMIN_TOKEN, DataDir, TestHub, http_client};

/// Writes a key file (mode 600) outside `data` holding `keys` (current
/// first).
fn key_file(dir: &Path, name: &str, keys: &[String]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("# vault keys\n{}\n", keys.join("\n"))).expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    path
}

fn new_key() -> String {
    switchboard_vault::MasterKey::generate_line().expect("key")
}

fn config(file: &Path) -> String {
    format!(
        "[vault]\nmaster_key_file = {:?}\n",
        file.display().to_string()
    )
}

async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = client.request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("send");
    let s = resp.status();
    (s, resp.json().await.unwrap_or(Value::Null))
}

fn file_contains(dir: &Path, needle: &str) -> bool {
    std::fs::read_dir(dir).expect("dir").any(|e| {
        let bytes = std::fs::read(e.expect("entry").path()).expect("read");
        bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
    })
}

#[tokio::test]
async fn secrets_are_sealed_at_rest_and_read_only_as_granted() {
    let keys_dir = tempfile::tempdir().expect("tmp");
    let file = key_file(keys_dir.path(), "master.keys", &[new_key()]);
    let hub = TestHub::start_with(DataDir::temp().expect("data"), &config(&file))
        .await
        .expect("hub");
    let admin = http_client(ADMIN_TOKEN).expect("client");
    let url = |p: &str| hub.url(p);
    let billing = crate::access::agent(&hub, "billing").await;
    let search = crate::access::agent(&hub, "search").await;
    let operator = http_client(&crate::access::api_key(&hub, "operator").await).expect("op");
    let observer = http_client(&crate::access::api_key(&hub, "observer").await).expect("obs");

    let marker = "pg-password-MARKER-8812";
    let (s, body) = call(
        &admin,
        reqwest::Method::PUT,
        url("/api/v1/secrets/db-password"),
        Some(json!({"value": marker, "policy": {"agents": ["billing"]}})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(body["latest_version"], 1);
    assert!(!body.to_string().contains(marker), "no value in the answer");

    // Granted: the agent it names, and admins.
    let (s, v) = call(
        &billing.http,
        reqwest::Method::GET,
        url("/api/v1/secrets/db-password"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["value"], marker);
    assert_eq!(v["version"], 1);
    let (s, _) = call(
        &admin,
        reqwest::Method::GET,
        url("/api/v1/secrets/db-password"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // Not granted: another agent, an operator (not named), an observer
    // (no scope). Refusals say nothing of the value or the policy.
    let before = hub.get_json("/api/v1/metrics").await;
    for (who, client) in [("search", &search.http), ("operator", &operator)] {
        let (s, body) = call(
            client,
            reqwest::Method::GET,
            url("/api/v1/secrets/db-password"),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{who}: {body}");
        assert!(!body.to_string().contains(marker));
        assert!(!body.to_string().contains("billing"), "{who}: {body}");
    }
    let (s, _) = call(
        &observer,
        reqwest::Method::GET,
        url("/api/v1/secrets/db-password"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Agents cannot write secrets.
    let (s, _) = call(
        &billing.http,
        reqwest::Method::PUT,
        url("/api/v1/secrets/db-password"),
        Some(json!({"value": "mine now"})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let prom = hub
        .http
        .get(url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let denied: f64 = prom
        .lines()
        .find(|l| l.starts_with("switchboard_access_denied_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .expect("the denial counter");
    assert!(denied >= 4.0, "denials counted: {denied} ({before})");

    // A role grant; versions; an old version on request.
    let (s, body) = call(
        &operator,
        reqwest::Method::PUT,
        url("/api/v1/secrets/db-password"),
        Some(json!({"value": "second-MARKER-5521", "policy": {"agents": ["billing"], "roles": ["operator"]}})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(body["latest_version"], 2);
    let (_, v) = call(
        &operator,
        reqwest::Method::GET,
        url("/api/v1/secrets/db-password"),
        None,
    )
    .await;
    assert_eq!(
        (v["value"].clone(), v["version"].clone()),
        (json!("second-MARKER-5521"), json!(2))
    );
    let (_, v) = call(
        &billing.http,
        reqwest::Method::GET,
        url("/api/v1/secrets/db-password?version=1"),
        None,
    )
    .await;
    assert_eq!(v["value"], marker);
    let (s, _) = call(
        &billing.http,
        reqwest::Method::GET,
        url("/api/v1/secrets/db-password?version=9"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, body) = call(
        &billing.http,
        reqwest::Method::GET,
        url("/api/v1/secrets/db-password?version=x"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(body["errors"][0]["field"], "version");
    let (_, d) = call(
        &operator,
        reqwest::Method::GET,
        url("/api/v1/secrets/db-password/versions"),
        None,
    )
    .await;
    assert_eq!(d["versions"].as_array().expect("versions").len(), 2);
    assert!(!d.to_string().contains(marker));
    // Listing: agents see only what is granted to them.
    call(
        &admin,
        reqwest::Method::PUT,
        url("/api/v1/secrets/search-token"),
        Some(json!({"value": "s", "policy": {"agents": ["search"]}})),
    )
    .await;
    let (_, l) = call(
        &billing.http,
        reqwest::Method::GET,
        url("/api/v1/secrets"),
        None,
    )
    .await;
    let names: Vec<&str> = l["secrets"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["db-password"]);
    let (_, l) = call(&admin, reqwest::Method::GET, url("/api/v1/secrets"), None).await;
    assert_eq!(l["secrets"].as_array().expect("list").len(), 2);

    // Bad input is named, and nothing is written.
    for (body, field) in [
        (json!({"value": ""}), "value"),
        (
            json!({"value": "x", "policy": {"roles": ["wizard"]}}),
            "policy.roles[0]",
        ),
        (
            json!({"value": "x", "policy": {"agents": [""]}}),
            "policy.agents[0]",
        ),
    ] {
        let (s, e) = call(
            &admin,
            reqwest::Method::PUT,
            url("/api/v1/secrets/bad-one"),
            Some(body),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
        assert_eq!(e["errors"][0]["field"], field, "{e}");
    }
    let (s, e) = call(
        &admin,
        reqwest::Method::PUT,
        url("/api/v1/secrets/bad%20name"),
        Some(json!({"value": "x"})),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["errors"][0]["field"], "name");
    let (s, _) = call(
        &admin,
        reqwest::Method::GET,
        url("/api/v1/secrets/bad-one"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Every read is audited, granted or not.
    let (_, audit) = call(
        &admin,
        reqwest::Method::GET,
        url("/api/v1/audit?limit=1000"),
        None,
    )
    .await;
    let reads: Vec<(String, u64)> = audit["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["action"] == "GET /api/v1/secrets/{name}")
        .map(|r| {
            (
                r["principal"].as_str().unwrap_or_default().to_owned(),
                r["outcome"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert!(reads.contains(&("billing".into(), 200)), "{reads:?}");
    assert!(reads.contains(&("search".into(), 403)), "{reads:?}");
    assert!(!audit.to_string().contains(marker));

    // Deleted: gone, every version.
    let (s, _) = call(
        &admin,
        reqwest::Method::DELETE,
        url("/api/v1/secrets/search-token"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(
        &admin,
        reqwest::Method::GET,
        url("/api/v1/secrets/search-token"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // At rest: not in the database file (nor its WAL).
    let data = hub.stop().await.expect("stop");
    assert!(
        !file_contains(data.path(), marker),
        "the value is in the data directory"
    );
    assert!(!file_contains(data.path(), "second-MARKER-5521"));
}

#[tokio::test]
async fn the_master_key_rotates_without_downtime_and_a_wrong_one_locks_the_vault() {
    let keys_dir = tempfile::tempdir().expect("tmp");
    let (k1, k2) = (new_key(), new_key());
    let file = key_file(keys_dir.path(), "master.keys", std::slice::from_ref(&k1));
    let hub = TestHub::start_with(DataDir::temp().expect("data"), &config(&file))
        .await
        .expect("hub");
    let admin = http_client(ADMIN_TOKEN).expect("client");
    for i in 0..300 {
        let (s, b) = call(
            &admin,
            reqwest::Method::PUT,
            hub.url(&format!("/api/v1/secrets/s{i:03}")),
            Some(json!({"value": format!("value-{i}")})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    let (_, st) = call(&admin, reqwest::Method::GET, hub.url("/api/v1/vault"), None).await;
    assert_eq!(st["state"], "ready");
    let first_id = st["current_key_id"].as_str().expect("id").to_owned();
    assert_eq!(
        st["wrapped"],
        json!([{"master_key_id": first_id, "versions": 300}])
    );

    // A rotation that would lose a key in use is refused, nothing changed.
    key_file(keys_dir.path(), "master.keys", std::slice::from_ref(&k2));
    let (s, body) = call(
        &admin,
        reqwest::Method::POST,
        hub.url("/api/v1/vault/rotate"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "ROTATION_REFUSED");
    let (_, v) = call(
        &admin,
        reqwest::Method::GET,
        hub.url("/api/v1/secrets/s007"),
        None,
    )
    .await;
    assert_eq!(v["value"], "value-7");

    // New key first, old key kept: rotate while another client reads.
    key_file(keys_dir.path(), "master.keys", &[k2.clone(), k1.clone()]);
    let reader = {
        let url = hub.url("/api/v1/secrets/s123");
        let admin = admin.clone();
        tokio::spawn(async move {
            let mut reads = 0;
            let until = std::time::Instant::now() + std::time::Duration::from_millis(1500);
            while std::time::Instant::now() < until {
                let (s, v) = call(&admin, reqwest::Method::GET, url.clone(), None).await;
                assert_eq!(s, StatusCode::OK, "a read failed during the rotation: {v}");
                assert_eq!(v["value"], "value-123");
                reads += 1;
            }
            reads
        })
    };
    let (s, r) = call(
        &admin,
        reqwest::Method::POST,
        hub.url("/api/v1/vault/rotate"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["rewrapped"], 300);
    let second_id = r["current_key_id"].as_str().expect("id").to_owned();
    assert_ne!(second_id, first_id);
    assert!(reader.await.expect("reader") > 0);
    let (_, st) = call(&admin, reqwest::Method::GET, hub.url("/api/v1/vault"), None).await;
    assert_eq!(
        st["wrapped"],
        json!([{"master_key_id": second_id, "versions": 300}])
    );

    // The old key can go: restarted with only the new one, all readable.
    key_file(keys_dir.path(), "master.keys", std::slice::from_ref(&k2));
    let data = hub.stop().await.expect("stop");
    let hub = TestHub::start_with(data, &config(&file))
        .await
        .expect("restart");
    for i in [0, 150, 299] {
        let (s, v) = call(
            &admin,
            reqwest::Method::GET,
            hub.url(&format!("/api/v1/secrets/s{i:03}")),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["value"], format!("value-{i}"));
    }

    // Started with a key it never used: locked, with the reason; nothing
    // is served, not even garbage.
    let data = hub.stop().await.expect("stop");
    let wrong = key_file(keys_dir.path(), "wrong.keys", &[new_key()]);
    let hub = TestHub::start_with(data, &config(&wrong))
        .await
        .expect("restart");
    let (_, st) = call(&admin, reqwest::Method::GET, hub.url("/api/v1/vault"), None).await;
    assert_eq!(st["state"], "locked", "{st}");
    assert!(
        st["reason"]
            .as_str()
            .expect("reason")
            .contains("wrong master key")
    );
    let (s, e) = call(
        &admin,
        reqwest::Method::GET,
        hub.url("/api/v1/secrets/s001"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(e["code"], "VAULT_LOCKED");
    assert!(
        e["detail"].as_str().expect("detail").contains(&second_id),
        "{e}"
    );
    let (s, e) = call(
        &admin,
        reqwest::Method::PUT,
        hub.url("/api/v1/secrets/new"),
        Some(json!({"value": "v"})),
    )
    .await;
    assert_eq!(
        (s, e["code"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!("VAULT_LOCKED"))
    );

    // Restarted with the old key first and the new after: the hub rewraps
    // by itself, in the background.
    let data = hub.stop().await.expect("stop");
    let both = key_file(keys_dir.path(), "both.keys", &[k1, k2]);
    let hub = TestHub::start_with(data, &config(&both))
        .await
        .expect("restart");
    let st =
        switchboard_test::eventually(std::time::Duration::from_secs(10), "rewrapped", || async {
            let (_, st) = call(&admin, reqwest::Method::GET, hub.url("/api/v1/vault"), None).await;
            (st["wrapped"] == json!([{"master_key_id": first_id, "versions": 300}])).then_some(st)
        })
        .await
        .expect("rewrapped under the current key");
    assert_eq!(st["current_key_id"], first_id);
}

#[tokio::test]
async fn without_a_master_key_the_vault_says_how_to_get_one() {
    let hub = TestHub::start().await.expect("hub");
    let admin = http_client(ADMIN_TOKEN).expect("client");
    let (s, e) = call(
        &admin,
        reqwest::Method::PUT,
        hub.url("/api/v1/secrets/x"),
        Some(json!({"value": "v"})),
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(e["code"], "VAULT_UNAVAILABLE");
    assert!(
        e["detail"]
            .as_str()
            .expect("detail")
            .contains("SWITCHBOARD_MASTER_KEY_FILE")
    );
    let (_, st) = call(&admin, reqwest::Method::GET, hub.url("/api/v1/vault"), None).await;
    assert_eq!(st["state"], "unavailable");

    // A key file inside the data directory, readable by others, or not a
    // key: the hub refuses to start, naming the setting.
    let data = DataDir::temp().expect("data");
    let inside = key_file(data.path(), "master.keys", &[new_key()]);
    let err = TestHub::start_with(data, &config(&inside))
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("inside the data directory"),
        "{err}"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let open = key_file(dir.path(), "open.keys", &[new_key()]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = TestHub::start_with(DataDir::temp().expect("data"), &config(&open))
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
    let bad = key_file(dir.path(), "bad.keys", &["not-a-key".into()]);
    let err = TestHub::start_with(DataDir::temp().expect("data"), &config(&bad))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("vault.master_key_file"), "{err}");
}
