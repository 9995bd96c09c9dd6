//! TLS and client certificates over real connections.

use std::path::Path;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard_test::{ADMIN_TOKEN, HubProcess};

use crate::bin;

/// A CA that signs server and client certificates for a test.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("ca");
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` with common name `cn`: (cert PEM, key PEM).
    fn issue(&self, cn: &str, names: &[&str]) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

fn https(ca_pem: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("ca"));
    if let Some((cert, key)) = identity {
        b = b.identity(
            reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).expect("identity"),
        );
    }
    b.build().expect("client")
}

#[tokio::test]
async fn self_signed_https_for_development() {
    let dir = tempfile::tempdir().expect("tmp");
    let hub = HubProcess::spawn(bin(), dir.path(), &["--tls-self-signed"])
        .await
        .expect("spawn");
    assert_eq!(hub.scheme, "https");
    let cert = std::fs::read_to_string(dir.path().join("tls/self-signed.crt")).expect("cert");
    let r = https(&cert, None)
        .get(hub.url("/healthz"))
        .send()
        .await
        .expect("https");
    assert_eq!(r.status(), StatusCode::OK);
    // A client that does not trust the certificate cannot connect.
    let untrusted = reqwest::Client::new().get(hub.url("/healthz")).send().await;
    assert!(
        untrusted.is_err(),
        "an untrusted certificate must fail the handshake"
    );
    // Plain HTTP to the TLS port gets nothing useful.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", hub.addr))
        .send()
        .await;
    assert!(plain.map(|r| r.status() != StatusCode::OK).unwrap_or(true));
    // The CLI talks to it when told to trust the certificate.
    let o = tokio::process::Command::new(bin())
        .args(["--hub", &hub.url(""), "--ca-cert"])
        .arg(dir.path().join("tls/self-signed.crt"))
        .args(["auth", "whoami"])
        .env("SWITCHBOARD_TOKEN", ADMIN_TOKEN)
        .output()
        .await
        .expect("cli");
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("admin-token (operator, role admin)"));
}

#[tokio::test]
async fn client_certificates_identify_agents() {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = Ca::new("switchboard test CA");
    let (server_cert, server_key) = ca.issue("hub", &["localhost", "127.0.0.1"]);
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let args = [
        "--tls-cert".to_owned(),
        write(dir.path(), "server.pem", &server_cert),
        "--tls-key".to_owned(),
        write(dir.path(), "server.key", &server_key),
        "--tls-client-ca".to_owned(),
        ca_file.clone(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let data = dir.path().join("data");
    let hub = HubProcess::spawn(bin(), &data, &args).await.expect("spawn");
    let url = |p: &str| hub.url(p);

    // Without a client certificate, bearer credentials work as usual.
    let admin = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).expect("ca"))
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {ADMIN_TOKEN}").parse().expect("header"),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .expect("client");
    for id in ["mtls-a", "mtls-b"] {
        let r = admin
            .post(url("/api/v1/agents/register"))
            .json(&crate::agent(id, "worker", &[]))
            .send()
            .await
            .expect("register");
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let anon = https(&ca.pem, None);
    assert_eq!(
        anon.get(url("/api/v1/agents"))
            .send()
            .await
            .expect("send")
            .status(),
        StatusCode::UNAUTHORIZED
    );

    // With a certificate naming agent mtls-a, the connection is mtls-a.
    let (cert, key) = ca.issue("mtls-a", &[]);
    let a = https(&ca.pem, Some((&cert, &key)));
    let me: Value = a
        .get(url("/api/v1/auth/whoami"))
        .send()
        .await
        .expect("whoami")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (me["id"].as_str(), me["kind"].as_str()),
        (Some("mtls-a"), Some("agent")),
        "{me}"
    );
    let hb = json!({"status": "active"});
    assert_eq!(
        a.post(url("/api/v1/agents/mtls-a/heartbeat"))
            .json(&hb)
            .send()
            .await
            .expect("send")
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        a.post(url("/api/v1/agents/mtls-b/heartbeat"))
            .json(&hb)
            .send()
            .await
            .expect("send")
            .status(),
        StatusCode::FORBIDDEN
    );
    // A token of another agent on that connection is refused: the
    // certificate binds the connection to its agent.
    let secret_b = admin
        .post(url("/api/v1/agents/mtls-b/credentials"))
        .send()
        .await
        .expect("rotate")
        .json::<Value>()
        .await
        .expect("json")["client_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let client = hub
        .client()
        .expect("client")
        .with_tls(&switchboard_client::Tls {
            ca_pem: Some(ca.pem.clone().into_bytes()),
            identity_pem: None,
        })
        .expect("tls");
    let token_b = client
        .issue_token("mtls-b", &secret_b, None)
        .await
        .expect("token")
        .access_token;
    let r = a
        .get(url("/api/v1/auth/whoami"))
        .bearer_auth(&token_b)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A certificate for an agent that is not registered authenticates
    // nobody.
    let (cert, key) = ca.issue("stranger", &[]);
    let r = https(&ca.pem, Some((&cert, &key)))
        .get(url("/api/v1/auth/whoami"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Revoking the agent's credentials stops its certificate too.
    let r = admin
        .delete(url("/api/v1/agents/mtls-a/credentials"))
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (cert, key) = ca.issue("mtls-a", &[]);
    let r = https(&ca.pem, Some((&cert, &key)))
        .get(url("/api/v1/auth/whoami"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A certificate from another CA is refused at the handshake.
    let rogue = Ca::new("rogue CA");
    let (cert, key) = rogue.issue("mtls-b", &[]);
    let r = https(&ca.pem, Some((&cert, &key)))
        .get(url("/api/v1/auth/whoami"))
        .send()
        .await;
    assert!(
        r.is_err(),
        "a certificate from an unknown CA must fail the handshake"
    );
}

#[tokio::test]
async fn plain_http_off_loopback_needs_a_flag() {
    let dir = tempfile::tempdir().expect("tmp");
    let o = tokio::process::Command::new(bin())
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .env("SWITCHBOARD_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .await
        .expect("run");
    assert_eq!(o.status.code(), Some(64));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is not a loopback address"), "{err}");
    assert!(err.contains("--insecure-plain-http"), "{err}");
    // With the flag it serves, and says what it risks.
    let o = tokio::process::Command::new(bin())
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--insecure-plain-http",
            "--data-dir",
        ])
        .arg(dir.path().join("other"))
        .env("SWITCHBOARD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SWITCHBOARD_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let out = tokio::time::timeout(Duration::from_secs(30), async {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(o.stderr.expect("stderr")).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains("plain HTTP on a non-loopback address") {
                return l;
            }
        }
        String::new()
    })
    .await
    .expect("warned in time");
    assert!(out.contains("in clear"), "{out}");
}
