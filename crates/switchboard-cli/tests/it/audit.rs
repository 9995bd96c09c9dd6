//! The audit log over real HTTP and the CLI: what is recorded, that
//! tampering is found, and that secrets stay out of logs and records.

use std::process::Output;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard_test::{ADMIN_TOKEN, HubProcess, Spawn, http_client};

use crate::bin;

async fn cli(hub: &HubProcess, args: &[&str]) -> Output {
    tokio::process::Command::new(bin())
        .arg("--hub")
        .arg(hub.url(""))
        .env("SWITCHBOARD_TOKEN", ADMIN_TOKEN)
        .args(args)
        .output()
        .await
        .expect("run cli")
}

async fn db(dir: &std::path::Path) -> sqlx::SqlitePool {
    let url = format!("sqlite://{}", dir.join("switchboard.db").display());
    sqlx::SqlitePool::connect(&url).await.expect("open db")
}

async fn records(hub: &HubProcess) -> Vec<Value> {
    let page: Value = http_client(ADMIN_TOKEN)
        .expect("client")
        .get(hub.url("/api/v1/audit?limit=1000"))
        .send()
        .await
        .expect("audit")
        .json()
        .await
        .expect("json");
    page["records"].as_array().expect("records").clone()
}

#[tokio::test]
async fn calls_are_recorded_and_tampering_is_found() {
    let dir = tempfile::tempdir().expect("tmp");
    let hub = HubProcess::spawn(bin(), dir.path(), &[])
        .await
        .expect("spawn");
    let admin = http_client(ADMIN_TOKEN).expect("client");
    // A mutating call, with our correlation id.
    let r = admin
        .post(hub.url("/api/v1/agents/register"))
        .header("x-correlation-id", "corr-register-1")
        .json(&crate::agent("audited", "worker", &[]))
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), StatusCode::CREATED);
    // A refused credential and a refused permission.
    let r = reqwest::Client::new()
        .delete(hub.url("/api/v1/agents/audited"))
        .bearer_auth("not-a-token")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let key: Value = admin
        .post(hub.url("/api/v1/auth/api-keys"))
        .json(&json!({"name": "watcher", "role": "observer"}))
        .send()
        .await
        .expect("key")
        .json()
        .await
        .expect("json");
    let observer = http_client(key["key"].as_str().expect("key")).expect("client");
    let r = observer
        .delete(hub.url("/api/v1/agents/audited"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Reads are not recorded.
    let r = observer
        .get(hub.url("/api/v1/agents"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);

    let recs = records(&hub).await;
    let find = |action: &str, outcome: u64| {
        recs.iter()
            .find(|r| r["action"] == action && r["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no record of {action} {outcome} in {recs:#?}"))
            .clone()
    };
    let reg = find("POST /api/v1/agents/register", 201);
    assert_eq!(reg["principal"], "admin-token");
    assert_eq!(reg["principal_kind"], "operator");
    assert_eq!(reg["resource"], "/api/v1/agents/register");
    assert_eq!(reg["correlation_id"], "corr-register-1");
    assert_eq!(reg["source"], "127.0.0.1");
    let bad = find("DELETE /api/v1/agents/{id}", 401);
    assert_eq!(bad["principal"], "anonymous");
    assert_eq!(bad["reason"], "INVALID_TOKEN");
    assert_eq!(bad["resource"], "/api/v1/agents/audited");
    let denied = find("DELETE /api/v1/agents/{id}", 403);
    assert!(
        denied["principal"]
            .as_str()
            .expect("id")
            .starts_with("key:")
    );
    assert_eq!(denied["reason"], "FORBIDDEN");
    assert!(!recs.iter().any(|r| r["action"] == "GET /api/v1/agents"));
    let seqs: Vec<u64> = recs
        .iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());

    // Intact: the CLI (checking here) and the hub agree.
    let o = cli(&hub, &["audit", "verify"]).await;
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("audit log intact"), "{out}");
    let head = out.split("head ").nth(1).expect("head").trim().to_owned();
    let v: Value = admin
        .get(hub.url("/api/v1/audit/verify"))
        .send()
        .await
        .expect("verify")
        .json()
        .await
        .expect("json");
    assert_eq!(v["intact"], true);
    assert_eq!(
        format!(
            "{}:{}",
            v["head_seq"],
            v["head_hash"].as_str().expect("hash")
        ),
        head
    );

    // Edit a record behind the hub's back.
    let pool = db(dir.path()).await;
    sqlx::query("UPDATE audit_log SET outcome = 200 WHERE seq = 2")
        .execute(&pool)
        .await
        .expect("tamper");
    let o = cli(&hub, &["audit", "verify"]).await;
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("record 2: its content does not match its hash"),
        "{out}"
    );
    let v: Value = admin
        .get(hub.url("/api/v1/audit/verify"))
        .send()
        .await
        .expect("verify")
        .json()
        .await
        .expect("json");
    assert_eq!(v["intact"], false);
    assert_eq!(v["breaks"][0]["seq"], 2);
    sqlx::query("UPDATE audit_log SET outcome = 401 WHERE seq = 2")
        .execute(&pool)
        .await
        .expect("restore");
    assert!(cli(&hub, &["audit", "verify"]).await.status.success());

    // Delete one.
    sqlx::query("DELETE FROM audit_log WHERE seq = 3")
        .execute(&pool)
        .await
        .expect("delete");
    let o = cli(&hub, &["audit", "verify"]).await;
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("records 3 to 3 are missing"), "{out}");

    // Truncate the tail: the chain left is valid, but the head kept
    // earlier says what is gone.
    let total = seqs.len() as i64;
    sqlx::query("DELETE FROM audit_log WHERE seq >= ?1")
        .bind(total)
        .execute(&pool)
        .await
        .expect("truncate");
    let o = cli(&hub, &["audit", "verify", "--expect", &head]).await;
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains(&format!("record {total} is gone")), "{out}");
}

#[tokio::test]
async fn secrets_never_reach_logs_records_or_error_bodies() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("hub.log");
    let data = dir.path().join("data");
    let opts = Spawn {
        log_level: Some("debug".into()),
        stderr_to: Some(log.clone()),
        ..Default::default()
    };
    let mut hub = HubProcess::spawn_with(bin(), &data, &[], &opts)
        .await
        .expect("spawn");
    let admin = http_client(ADMIN_TOKEN).expect("client");
    let mut secrets = vec![ADMIN_TOKEN.to_owned()];

    let reg: Value = admin
        .post(hub.url("/api/v1/agents/register"))
        .json(&crate::agent("secretive", "worker", &[]))
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("json");
    let secret = reg["credentials"]["client_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    secrets.push(secret.clone());
    let t: Value = reqwest::Client::new()
        .post(hub.url("/api/v1/auth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "secretive"),
            ("client_secret", &secret),
        ])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    let token = t["access_token"].as_str().expect("token").to_owned();
    secrets.push(token.clone());
    let key: Value = admin
        .post(hub.url("/api/v1/auth/api-keys"))
        .json(&json!({"name": "ci", "role": "operator"}))
        .send()
        .await
        .expect("key")
        .json()
        .await
        .expect("json");
    let key = key["key"].as_str().expect("key").to_owned();
    secrets.push(key.clone());
    // Use them, well and badly: the wrong secret, a near-miss key, a token
    // in the query string of a stream.
    let wrong = format!("{secret}x");
    let bad: Value = reqwest::Client::new()
        .post(hub.url("/api/v1/auth/token"))
        .basic_auth("secretive", Some(&wrong))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    assert_eq!(bad["error"], "invalid_client");
    assert!(!bad.to_string().contains(&wrong));
    let near = format!("{key}0");
    let r = reqwest::Client::new()
        .get(hub.url("/api/v1/agents"))
        .bearer_auth(&near)
        .send()
        .await
        .expect("send");
    let body = r.text().await.expect("text");
    assert!(!body.contains(&near) && !body.contains(&key), "{body}");
    let r = reqwest::Client::new()
        .get(hub.url(&format!(
            "/api/v1/events/stream?topic=task.%3E&access_token={token}"
        )))
        .send()
        .await
        .expect("sse");
    assert_eq!(r.status(), StatusCode::OK);
    drop(r);
    for s in [&token, &key] {
        let r = http_client(s)
            .expect("client")
            .post(hub.url("/api/v1/agents/secretive/heartbeat"))
            .json(&json!({}))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::OK);
    }
    let recs = records(&hub).await;
    hub.signal("-TERM").await.expect("term");
    hub.wait(Duration::from_secs(30)).await.expect("exit");

    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.lines().count() > 10, "debug logging was on: {text}");
    let records = serde_json::to_string(&recs).expect("json");
    for s in &secrets {
        assert!(!text.contains(s.as_str()), "a secret is in the log");
        assert!(
            !records.contains(s.as_str()),
            "a secret is in the audit log"
        );
    }
    // Nor in the database, except as hashes.
    let pool = db(&data).await;
    let dump: Vec<String> = sqlx::query_scalar("SELECT doc FROM auth_objects")
        .fetch_all(&pool)
        .await
        .expect("dump");
    let dump = dump.join("\n");
    for s in &secrets {
        assert!(
            !dump.contains(s.as_str()),
            "a secret is stored in the clear"
        );
    }
    assert!(
        dump.contains("$argon2id$"),
        "client secrets are stored as argon2id hashes"
    );
}

#[tokio::test]
async fn tokens_verify_with_pyjwt_against_the_jwks() {
    let dir = tempfile::tempdir().expect("tmp");
    let hub = HubProcess::spawn(bin(), dir.path(), &[])
        .await
        .expect("spawn");
    let admin = http_client(ADMIN_TOKEN).expect("client");
    let reg: Value = admin
        .post(hub.url("/api/v1/agents/register"))
        .json(&crate::agent("py-agent", "worker", &[]))
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("json");
    let secret = reg["credentials"]["client_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let client = hub.client().expect("client");
    let ed = client
        .issue_token("py-agent", &secret, None)
        .await
        .expect("token");
    client
        .rotate_signing_key(Some("RS256"), false)
        .await
        .expect("rotate");
    let rs = client
        .issue_token("py-agent", &secret, None)
        .await
        .expect("token");

    // PyJWT fetches the JWKS over HTTP and checks signature, issuer,
    // audience and expiry on its own.
    let script = r#"
import json, sys, jwt
jwks_url, tokens = sys.argv[1], sys.argv[2:]
client = jwt.PyJWKClient(jwks_url)
out = []
for t in tokens:
    key = client.get_signing_key_from_jwt(t)
    header = jwt.get_unverified_header(t)
    claims = jwt.decode(t, key.key, algorithms=[header["alg"]], audience="switchboard",
                        issuer="switchboard", options={"require": ["exp", "iat", "nbf", "sub", "jti"]})
    out.append({"alg": header["alg"], "sub": claims["sub"], "scope": claims["scope"]})
try:
    bad = tokens[0][:-4] + ("AAAA" if not tokens[0].endswith("AAAA") else "BBBB")
    jwt.decode(bad, client.get_signing_key_from_jwt(tokens[0]).key, algorithms=["EdDSA"], audience="switchboard")
    out.append("tampered token accepted")
except jwt.InvalidSignatureError:
    out.append("tampered token refused")
print(json.dumps(out))
"#;
    let o = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(hub.url("/.well-known/jwks.json"))
        .arg(&ed.access_token)
        .arg(&rs.access_token)
        .output()
        .await
        .expect("python3 (with PyJWT and cryptography, installed by .ci/run)");
    assert!(
        o.status.success(),
        "PyJWT refused the hub's tokens:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let out: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(out[0]["alg"], "EdDSA");
    assert_eq!(out[1]["alg"], "RS256");
    assert_eq!(out[0]["sub"], "py-agent");
    assert_eq!(out[2], "tampered token refused");
}
