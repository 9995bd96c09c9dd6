//! Identity and access over real HTTP: who may call what, tokens that must
//! be refused, agents kept to their own resources, rate limits, and the
//! abuse alert.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use switchboard_test::{ADMIN_TOKEN, DataDir, TestHub, eventually, http_client};

/// An agent registered by the admin, with its token.
pub(crate) struct Agent {
    pub(crate) id: String,
    pub(crate) secret: String,
    pub(crate) token: String,
    pub(crate) http: reqwest::Client,
}

/// Registers `id` and exchanges its new client credentials for a token.
pub(crate) async fn agent(hub: &TestHub, id: &str) -> Agent {
    let resp = hub
        .http
        .post(hub.url("/api/v1/agents/register"))
        .json(&crate::agent(id, "worker", &["rust"]))
        .send()
        .await
        .expect("register");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body: Value = resp.json().await.expect("json");
    let creds = &body["credentials"];
    assert_eq!(creds["client_id"], id);
    assert_eq!(creds["token_endpoint"], "/api/v1/auth/token");
    let secret = creds["client_secret"].as_str().expect("secret").to_owned();
    let token = token(hub, id, &secret).await;
    Agent {
        id: id.to_owned(),
        http: http_client(&token).expect("client"),
        secret,
        token,
    }
}

/// OAuth2 client credentials with HTTP Basic.
pub(crate) async fn token(hub: &TestHub, id: &str, secret: &str) -> String {
    let resp = reqwest::Client::new()
        .post(hub.url("/api/v1/auth/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("token");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let t: Value = resp.json().await.expect("json");
    assert_eq!(t["token_type"], "Bearer");
    assert!(t["expires_in"].as_u64().expect("expires_in") > 0);
    t["access_token"].as_str().expect("token").to_owned()
}

/// An API key of `role`, made by the admin.
pub(crate) async fn api_key(hub: &TestHub, role: &str) -> String {
    let resp = hub
        .http
        .post(hub.url("/api/v1/auth/api-keys"))
        .json(&json!({"name": format!("{role} key"), "role": role}))
        .send()
        .await
        .expect("create key");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body: Value = resp.json().await.expect("json");
    body["key"].as_str().expect("key").to_owned()
}

async fn status(
    client: &reqwest::Client,
    method: Method,
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

#[tokio::test]
async fn anonymous_calls_are_refused_and_public_routes_stay_open() {
    let hub = TestHub::start().await.expect("hub");
    let anon = reqwest::Client::new();
    let resp = anon
        .get(hub.url("/api/v1/agents"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.headers()["www-authenticate"],
        r#"Bearer realm="switchboard""#
    );
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["code"], "UNAUTHENTICATED");
    for public in [
        "/healthz",
        "/readyz",
        "/api/v1/openapi.json",
        "/.well-known/jwks.json",
    ] {
        let r = anon.get(hub.url(public)).send().await.expect("send");
        assert_eq!(r.status(), StatusCode::OK, "{public}");
    }
    // A credential in the wrong scheme is no credential.
    let r = anon
        .get(hub.url("/api/v1/agents"))
        .header("authorization", format!("Basic {ADMIN_TOKEN}"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A garbage token is refused with invalid_token.
    let r = anon
        .get(hub.url("/api/v1/agents"))
        .bearer_auth("garbage")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{challenge}"
    );
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["code"], "INVALID_TOKEN");
}

#[tokio::test]
async fn a_new_hub_prints_its_admin_key_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("stderr.log");
    let data = dir.path().join("data");
    let opts = switchboard_test::Spawn {
        stderr_to: Some(log.clone()),
        no_admin_token: true,
        ..Default::default()
    };
    let mut hub = switchboard_test::HubProcess::spawn_with(crate::bin(), &data, &[], &opts)
        .await
        .expect("spawn");
    let text = std::fs::read_to_string(&log).expect("log");
    let key = text
        .split_whitespace()
        .find(|w| w.starts_with("sbk_"))
        .expect("an admin key is printed on first start")
        .to_owned();
    let anon = reqwest::Client::new();
    let r = anon
        .get(hub.url("/api/v1/agents"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = anon
        .get(hub.url("/api/v1/auth/whoami"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let me: Value = r.json().await.expect("json");
    assert_eq!(me["role"], "admin");
    hub.signal("-TERM").await.expect("term");
    hub.wait(Duration::from_secs(30)).await.expect("exit");

    // Restarted: nothing printed, the key still works.
    let log2 = dir.path().join("stderr2.log");
    let opts = switchboard_test::Spawn {
        stderr_to: Some(log2.clone()),
        no_admin_token: true,
        ..Default::default()
    };
    let hub = switchboard_test::HubProcess::spawn_with(crate::bin(), &data, &[], &opts)
        .await
        .expect("respawn");
    let r = anon
        .get(hub.url("/api/v1/agents"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let text = std::fs::read_to_string(&log2).expect("log");
    assert!(
        !text.contains("sbk_"),
        "the key is printed only once: {text}"
    );
}

/// Whether a caller may make a call, per the OpenAPI `security` rule of its
/// operation: public, or a credential holding every scope named.
fn allowed(credential: bool, scopes: &[String], rule: &Value) -> bool {
    let reqs = rule.as_array().expect("security is a list");
    if reqs
        .iter()
        .any(|r| r.as_object().is_some_and(|o| o.is_empty()))
    {
        return true;
    }
    let needed = reqs[0]["bearer"].as_array().expect("bearer scopes");
    credential
        && needed
            .iter()
            .all(|n| scopes.iter().any(|s| Some(s.as_str()) == n.as_str()))
}

#[tokio::test]
async fn each_role_against_each_route() {
    let hub = TestHub::start().await.expect("hub");
    let doc: Value = hub.get_json("/api/v1/openapi.json").await;
    let paths = doc["paths"].as_object().expect("paths");

    // Every operation declares its rule: none is left to chance.
    let mut operations = Vec::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("item") {
            let security = op
                .get("security")
                .unwrap_or_else(|| panic!("{method} {path} declares no security rule"));
            operations.push((method.to_ascii_uppercase(), path.clone(), security.clone()));
        }
    }
    assert!(operations.len() > 40, "{} operations", operations.len());

    let observer = api_key(&hub, "observer").await;
    let operator = api_key(&hub, "operator").await;
    let roles = ["agent", "observer", "operator", "admin", "anonymous"];
    let mut checked = 0;
    for role in roles {
        let me = agent(&hub, &format!("matrix-{role}")).await;
        let token_of = |a: &Agent| match role {
            "anonymous" => None,
            "agent" => Some(a.token.clone()),
            "observer" => Some(observer.clone()),
            "operator" => Some(operator.clone()),
            _ => Some(ADMIN_TOKEN.to_owned()),
        };
        let (token, scopes): (Option<String>, Vec<String>) = match token_of(&me) {
            None => (None, Vec::new()),
            Some(token) => {
                let who: Value = http_client(&token)
                    .expect("client")
                    .get(hub.url("/api/v1/auth/whoami"))
                    .send()
                    .await
                    .expect("whoami")
                    .json()
                    .await
                    .expect("json");
                let scopes = who["scopes"]
                    .as_array()
                    .expect("scopes")
                    .iter()
                    .map(|s| s.as_str().expect("scope").to_owned())
                    .collect();
                (Some(token), scopes)
            }
        };
        for (n, (method, path, rule)) in operations.iter().enumerate() {
            // A removal acts on an agent of its own (for the agent role:
            // itself), so it takes nothing away from the calls after it.
            let target = if method == "DELETE" {
                agent(&hub, &format!("matrix-{role}-{n}")).await
            } else {
                Agent {
                    id: me.id.clone(),
                    secret: me.secret.clone(),
                    token: me.token.clone(),
                    http: me.http.clone(),
                }
            };
            let client = match token_of(&target) {
                Some(t) => http_client(&t).expect("client"),
                None => reqwest::Client::new(),
            };
            let url = hub.url(
                &path
                    .replace("{id}", &target.id)
                    .replace("{name}", "matrix-group")
                    .replace("{offset}", "1"),
            );
            // Reads of the event log name their topics (an agent may not
            // read every topic: others' inboxes are private).
            let url = if path.starts_with("/api/v1/events") && method == "GET" {
                format!("{url}?topic=task.%3E")
            } else {
                url
            };
            let m = Method::from_bytes(method.as_bytes()).expect("method");
            let resp = tokio::time::timeout(
                Duration::from_secs(20),
                client
                    .request(m, &url)
                    .header("content-type", "application/json")
                    .body("{}")
                    .send(),
            )
            .await
            .expect("answered in time")
            .expect("send");
            let got = resp.status();
            // Streams stay open; their status is enough.
            drop(resp);
            let may = allowed(token.is_some(), &scopes, rule);
            // Resource rules that refuse an agent what its scopes allow.
            let resource_rule = role == "agent" && method == "PUT" && path.ends_with("/acl");
            if !may || resource_rule {
                let want = if token.is_none() {
                    StatusCode::UNAUTHORIZED
                } else {
                    StatusCode::FORBIDDEN
                };
                assert_eq!(got, want, "{role} {method} {path}");
            } else {
                assert!(
                    got != StatusCode::UNAUTHORIZED && got != StatusCode::FORBIDDEN,
                    "{role} {method} {path}: {got}"
                );
            }
            // Observers change nothing: beyond reading they may only
            // consume (a durable subscription, pulls and acknowledgements)
            // and revoke their own token.
            let consuming = path.starts_with("/api/v1/groups/{name}")
                && (method == "PUT"
                    || ["/pull", "/ack", "/nack"].iter().any(|e| path.ends_with(e)));
            if role == "observer"
                && method != "GET"
                && !consuming
                && !["/api/v1/auth/token", "/api/v1/auth/revoke"].contains(&path.as_str())
                // An inbound hook is public: its signature is its credential.
                && !(method == "POST" && path == "/api/v1/hooks/{name}")
            {
                assert_eq!(got, StatusCode::FORBIDDEN, "observer {method} {path}");
            }
            // Credentials, keys and the audit log are the admin's alone.
            if role != "admin"
                && (path.starts_with("/api/v1/auth/api-keys")
                    || path.starts_with("/api/v1/auth/keys")
                    || path.starts_with("/api/v1/audit"))
            {
                assert!(
                    got == StatusCode::FORBIDDEN || got == StatusCode::UNAUTHORIZED,
                    "{role} {method} {path}: {got}"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, operations.len() * roles.len());
}

/// The hub's current Ed25519 signing key, read from its database (as
/// someone with the data directory could), to forge tokens with.
async fn signing_key(data: &std::path::Path) -> (String, Vec<u8>) {
    use sqlx::Row;
    let url = format!("sqlite://{}?mode=ro", data.join("switchboard.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.expect("open db");
    let rows = sqlx::query("SELECT doc FROM auth_objects WHERE kind = 'signing_key'")
        .fetch_all(&pool)
        .await
        .expect("keys");
    let docs: Vec<Value> = rows
        .iter()
        .map(|r| serde_json::from_str(&r.get::<String, _>("doc")).expect("json"))
        .collect();
    let key = docs
        .iter()
        .find(|d| d["retired_at"].is_null())
        .expect("a current key");
    pool.close().await;
    (
        key["kid"].as_str().expect("kid").to_owned(),
        URL_SAFE_NO_PAD
            .decode(key["private_der"].as_str().expect("der"))
            .expect("b64"),
    )
}

fn forge(kid: &str, der: &[u8], claims: &Value) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    h.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&h, claims, &jsonwebtoken::EncodingKey::from_ed_der(der)).expect("sign")
}

#[tokio::test]
async fn tokens_that_must_not_work_do_not() {
    let hub = TestHub::start().await.expect("hub");
    let a = agent(&hub, "tok-agent").await;
    let whoami = |token: String| {
        let url = hub.url("/api/v1/auth/whoami");
        async move {
            let r = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("send");
            let s = r.status();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (s, me) = whoami(a.token.clone()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me["id"], "tok-agent");
    assert_eq!(me["kind"], "agent");

    let (kid, der) = signing_key(hub.data_dir()).await;
    let now = chrono::Utc::now().timestamp();
    let claims = |f: &dyn Fn(&mut Value)| {
        let mut c = json!({
            "iss": "switchboard", "aud": "switchboard", "sub": "tok-agent",
            "exp": now + 600, "nbf": now - 5, "iat": now - 5,
            "jti": uuid::Uuid::new_v4().to_string(), "scope": "agents:read", "role": "agent",
        });
        f(&mut c);
        c
    };
    // The forging itself is right: a well-formed token signed with the
    // real key works.
    assert_eq!(
        whoami(forge(&kid, &der, &claims(&|_| {}))).await.0,
        StatusCode::OK
    );

    let mut refused = vec![
        (
            "expired",
            forge(
                &kid,
                &der,
                &claims(&|c| {
                    c["exp"] = json!(now - 120);
                    c["iat"] = json!(now - 1000);
                    c["nbf"] = json!(now - 1000);
                }),
            ),
            "TOKEN_EXPIRED",
        ),
        (
            "not yet valid",
            forge(&kid, &der, &claims(&|c| c["nbf"] = json!(now + 600))),
            "INVALID_TOKEN",
        ),
        (
            "issued in the future",
            forge(
                &kid,
                &der,
                &claims(&|c| {
                    c["iat"] = json!(now + 600);
                }),
            ),
            "INVALID_TOKEN",
        ),
        (
            "wrong audience",
            forge(&kid, &der, &claims(&|c| c["aud"] = json!("elsewhere"))),
            "INVALID_TOKEN",
        ),
        (
            "wrong issuer",
            forge(&kid, &der, &claims(&|c| c["iss"] = json!("someone"))),
            "INVALID_TOKEN",
        ),
        (
            "no subject",
            forge(
                &kid,
                &der,
                &claims(&|c| {
                    c.as_object_mut().expect("obj").remove("sub");
                }),
            ),
            "INVALID_TOKEN",
        ),
        (
            "unknown agent",
            forge(&kid, &der, &claims(&|c| c["sub"] = json!("nobody"))),
            "TOKEN_REVOKED",
        ),
    ];
    // Signed with another key under the hub's kid.
    let other = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let other_der = {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        other.to_pkcs8_der().expect("der").as_bytes().to_vec()
    };
    refused.push((
        "wrongly signed",
        forge(&kid, &other_der, &claims(&|_| {})),
        "INVALID_TOKEN",
    ));
    // alg none.
    let parts: Vec<&str> = a.token.split('.').collect();
    let none_header =
        URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","kid":"{kid}","typ":"JWT"}}"#));
    refused.push((
        "alg none",
        format!("{none_header}.{}.", parts[1]),
        "INVALID_TOKEN",
    ));
    // HS256 keyed with the public key from the JWKS.
    let jwks: Value = hub.get_json("/.well-known/jwks.json").await;
    let x = jwks["keys"][0]["x"].as_str().expect("x").to_owned();
    let hs = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some(kid.clone());
        jsonwebtoken::encode(
            &h,
            &claims(&|_| {}),
            &jsonwebtoken::EncodingKey::from_secret(x.as_bytes()).expect("key"),
        )
        .expect("sign")
    };
    refused.push(("HS256 with the public key", hs, "INVALID_TOKEN"));
    for (what, token, code) in &refused {
        let (s, body) = whoami(token.clone()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(body["code"], *code, "{what}: {body}");
    }

    // Revoked: the holder revokes its own token.
    let r = a
        .http
        .post(hub.url("/api/v1/auth/revoke"))
        .json(&json!({"token": a.token}))
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (s, body) = whoami(a.token.clone()).await;
    assert_eq!(
        (s, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("TOKEN_REVOKED"))
    );

    // Rotated out: a key dropped at rotation takes its tokens with it,
    // while an ordinary rotation keeps them valid until they expire.
    let fresh = token(&hub, "tok-agent", &a.secret).await;
    let r = hub
        .http
        .post(hub.url("/api/v1/auth/keys/rotate"))
        .send()
        .await
        .expect("rotate");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        whoami(fresh.clone()).await.0,
        StatusCode::OK,
        "kept by a plain rotation"
    );
    let r = hub
        .http
        .post(hub.url("/api/v1/auth/keys/rotate"))
        .json(&json!({"alg": "RS256", "drop_previous": true}))
        .send()
        .await
        .expect("rotate");
    assert_eq!(r.status(), StatusCode::CREATED);
    let (s, body) = whoami(fresh).await;
    assert_eq!(
        (s, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("INVALID_TOKEN"))
    );
    let jwks: Value = hub.get_json("/.well-known/jwks.json").await;
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(1));
    assert_eq!(jwks["keys"][0]["kty"], "RSA");
    let rs = token(&hub, "tok-agent", &a.secret).await;
    assert_eq!(whoami(rs).await.0, StatusCode::OK);
}

/// A token request (form, HTTP Basic) and the refusal it must get.
type TokenCase<'a> = (
    Vec<(&'static str, String)>,
    Option<(&'a str, &'a str)>,
    StatusCode,
    &'static str,
);

#[tokio::test]
async fn the_token_endpoint_speaks_oauth2() {
    let hub = TestHub::start().await.expect("hub");
    let a = agent(&hub, "oauth-agent").await;
    let post = |form: Vec<(&'static str, String)>, basic: Option<(&str, &str)>| {
        let mut req = reqwest::Client::new().post(hub.url("/api/v1/auth/token"));
        if let Some((id, s)) = basic {
            req = req.basic_auth(id, Some(s));
        }
        async move {
            let r = req.form(&form).send().await.expect("send");
            let s = r.status();
            (s, r.json::<Value>().await.expect("json"))
        }
    };
    // Credentials in the body work as well as HTTP Basic.
    let (s, t) = post(
        vec![
            ("grant_type", "client_credentials".into()),
            ("client_id", a.id.clone()),
            ("client_secret", a.secret.clone()),
            ("scope", "tasks:read agents:read".into()),
        ],
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    assert_eq!(t["scope"], "agents:read tasks:read");
    // JSON bodies too.
    let r = reqwest::Client::new()
        .post(hub.url("/api/v1/auth/token"))
        .json(&json!({"grant_type": "client_credentials", "client_id": a.id, "client_secret": a.secret}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let cases: Vec<TokenCase> = vec![
        (
            vec![("grant_type", "client_credentials".into())],
            Some((&a.id, "sbs_wrong")),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            vec![("grant_type", "client_credentials".into())],
            Some(("nobody", &a.secret)),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            vec![("grant_type", "client_credentials".into())],
            None,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            vec![("grant_type", "password".into())],
            Some((&a.id, &a.secret)),
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (
            vec![],
            Some((&a.id, &a.secret)),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", "client_credentials".into()),
                ("scope", "admin".into()),
            ],
            Some((&a.id, &a.secret)),
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
        (
            vec![
                ("grant_type", "client_credentials".into()),
                ("scope", "fly:away".into()),
            ],
            Some((&a.id, &a.secret)),
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
    ];
    for (form, basic, want, error) in cases {
        let (s, body) = post(form.clone(), basic).await;
        assert_eq!(s, want, "{form:?}: {body}");
        assert_eq!(body["error"], error, "{form:?}");
        assert!(
            body["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty())
        );
        // The secret is never echoed back.
        assert!(!body.to_string().contains(&a.secret));
    }

    // Rotation with no grace: the old secret stops at once.
    let r = hub
        .http
        .post(hub.url(&format!("/api/v1/agents/{}/credentials", a.id)))
        .json(&json!({"grace_seconds": 0}))
        .send()
        .await
        .expect("rotate");
    assert_eq!(r.status(), StatusCode::CREATED);
    let rotated: Value = r.json().await.expect("json");
    let new_secret = rotated["client_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    assert_ne!(new_secret, a.secret);
    let (s, _) = post(
        vec![("grant_type", "client_credentials".into())],
        Some((&a.id, &a.secret)),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let fresh = token(&hub, &a.id, &new_secret).await;
    // Revoking the credentials stops secrets and tokens.
    let r = hub
        .http
        .delete(hub.url(&format!("/api/v1/agents/{}/credentials", a.id)))
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = http_client(&fresh)
        .expect("client")
        .get(hub.url("/api/v1/auth/whoami"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (s, _) = post(
        vec![("grant_type", "client_credentials".into())],
        Some((&a.id, &new_secret)),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

/// Claims as `agent` until the task `id` comes.
async fn claim_until(hub: &TestHub, agent: &Agent, id: &str) {
    eventually(Duration::from_secs(10), "claim", || async {
        let (_, v) = status(
            &agent.http,
            Method::POST,
            hub.url("/api/v1/tasks/claim"),
            Some(json!({"agent_id": agent.id, "wait_ms": 200})),
        )
        .await;
        v["tasks"]
            .as_array()
            .filter(|t| t.iter().any(|t| t["id"] == id))
            .map(|_| ())
    })
    .await
    .expect("claimed");
}

#[tokio::test]
async fn agents_stay_within_their_own_resources() {
    let hub = TestHub::start().await.expect("hub");
    let a = agent(&hub, "own-a").await;
    let b = agent(&hub, "own-b").await;
    let hb = json!({"status": "active"});
    let url = |p: &str| hub.url(p);

    // Heartbeats: its own, not another's.
    assert_eq!(
        status(
            &a.http,
            Method::POST,
            url("/api/v1/agents/own-a/heartbeat"),
            Some(hb.clone())
        )
        .await
        .0,
        StatusCode::OK
    );
    let (s, body) = status(
        &a.http,
        Method::POST,
        url("/api/v1/agents/own-b/heartbeat"),
        Some(hb.clone()),
    )
    .await;
    assert_eq!(
        (s, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("FORBIDDEN")),
        "{body}"
    );
    // Registration: it may update itself, not others.
    assert_eq!(
        status(
            &a.http,
            Method::POST,
            url("/api/v1/agents/register"),
            Some(crate::agent("own-b", "worker", &[]))
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(
            &a.http,
            Method::POST,
            url("/api/v1/agents/register"),
            Some(crate::agent("own-a", "worker", &["go"]))
        )
        .await
        .0,
        StatusCode::OK
    );
    // Claims: only as itself.
    assert_eq!(
        status(
            &a.http,
            Method::POST,
            url("/api/v1/tasks/claim"),
            Some(json!({"agent_id": "own-b"}))
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );

    // Tasks: B's task cannot be reported on by A; A's own can.
    let make = |id: &str, to: &str| json!({"id": id, "type": "work", "assigned_agent": to});
    for (id, to) in [("t-b", "own-b"), ("t-a", "own-a")] {
        assert_eq!(
            status(
                &hub.http,
                Method::POST,
                url("/api/v1/tasks"),
                Some(make(id, to))
            )
            .await
            .0,
            StatusCode::CREATED
        );
    }
    claim_until(&hub, &b, "t-b").await;
    claim_until(&hub, &a, "t-a").await;
    let done = json!({"status": "completed", "output_data": {"ok": true}});
    let (s, body) = status(
        &a.http,
        Method::PATCH,
        url("/api/v1/tasks/t-b"),
        Some(done.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let (s, body) = status(
        &a.http,
        Method::PATCH,
        url("/api/v1/tasks/t-a"),
        Some(json!({"status": "completed", "agent_id": "own-b"})),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "reporting as another agent: {body}"
    );
    assert_eq!(
        status(&a.http, Method::POST, url("/api/v1/tasks/t-b/cancel"), None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(
            &a.http,
            Method::PATCH,
            url("/api/v1/tasks/t-a"),
            Some(done.clone())
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        status(&b.http, Method::PATCH, url("/api/v1/tasks/t-b"), Some(done))
            .await
            .0,
        StatusCode::OK
    );

    // Topics: an ACL set by an operator binds the agent at once.
    let r = hub
        .http
        .put(url("/api/v1/agents/own-a/acl"))
        .json(
            &json!({"publish": ["jobs.{agent_id}.>"], "subscribe": ["jobs.>", "inbox.{agent_id}"]}),
        )
        .send()
        .await
        .expect("acl");
    assert_eq!(r.status(), StatusCode::OK);
    let ev = |topic: &str| json!({"specversion": "1.0", "id": uuid::Uuid::new_v4().to_string(), "source": "/t", "type": "t", "topic": topic, "data": {}});
    let (s, body) = status(
        &a.http,
        Method::POST,
        url("/api/v1/events"),
        Some(ev("jobs.own-a.done")),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let (s, body) = status(
        &a.http,
        Method::POST,
        url("/api/v1/events"),
        Some(ev("jobs.own-b.done")),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    // The event it published names it as its source agent; it may not
    // claim to be another.
    let page: Value = hub.get_json("/api/v1/events?topic=jobs.%3E").await;
    assert_eq!(page["events"][0]["sourceagent"], "own-a");
    let mut forged = ev("jobs.own-a.x");
    forged["sourceagent"] = json!("own-b");
    assert_eq!(
        status(&a.http, Method::POST, url("/api/v1/events"), Some(forged))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(
            &a.http,
            Method::PUT,
            url("/api/v1/agents/own-a/acl"),
            Some(json!({"publish": [">"], "subscribe": [">"]}))
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    // Reading: inside the ACL yes, another agent's inbox never.
    assert_eq!(
        status(
            &a.http,
            Method::GET,
            url("/api/v1/events?topic=jobs.%3E"),
            None
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        status(
            &a.http,
            Method::GET,
            url("/api/v1/events?topic=task.%3E"),
            None
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(
            &b.http,
            Method::GET,
            url("/api/v1/events?topic=inbox.own-a"),
            None
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(
            &b.http,
            Method::GET,
            url("/api/v1/events?topic=inbox.%2A"),
            None
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(&b.http, Method::GET, url("/api/v1/events"), None)
            .await
            .0,
        StatusCode::FORBIDDEN,
        "all topics include others' inboxes"
    );
    assert_eq!(
        status(
            &b.http,
            Method::GET,
            url("/api/v1/events?topic=inbox.own-b"),
            None
        )
        .await
        .0,
        StatusCode::OK
    );
    let sse = b
        .http
        .get(url("/api/v1/events/stream?topic=inbox.own-a"))
        .send()
        .await
        .expect("sse");
    assert_eq!(sse.status(), StatusCode::FORBIDDEN);

    // Over a WebSocket: refusals are error frames and the connection lives.
    let mut ws = crate::ws::connect_as(&hub, &a.token).await;
    crate::ws::send(
        &mut ws,
        json!({"op": "subscribe", "id": "s1", "topics": ["inbox.own-b"]}),
    )
    .await;
    let f = crate::ws::recv(&mut ws).await;
    assert_eq!(
        (f["op"].as_str(), f["code"].as_str()),
        (Some("error"), Some("FORBIDDEN")),
        "{f}"
    );
    crate::ws::send(
        &mut ws,
        json!({"op": "publish", "ref": "p0", "event": ev("x.y")}),
    )
    .await;
    let f = crate::ws::recv(&mut ws).await;
    assert_eq!(
        (f["op"].as_str(), f["code"].as_str()),
        (Some("error"), Some("FORBIDDEN")),
        "{f}"
    );
    // Those refusals are audited and counted like a route's.
    eventually(
        Duration::from_secs(5),
        "WebSocket refusals audited",
        || async {
            let page = hub
                .get_json("/api/v1/audit?principal=own-a&limit=1000")
                .await;
            let actions: Vec<String> = page["records"]
                .as_array()?
                .iter()
                .filter(|r| r["outcome"] == 403 && r["resource"] == "/ws")
                .filter_map(|r| r["action"].as_str().map(str::to_owned))
                .collect();
            (actions.contains(&"WS subscribe".to_owned())
                && actions.contains(&"WS publish".to_owned()))
            .then_some(())
        },
    )
    .await
    .expect("audited");
    crate::ws::send(
        &mut ws,
        json!({"op": "subscribe", "id": "s2", "topics": ["inbox.own-a"]}),
    )
    .await;
    assert_eq!(crate::ws::recv(&mut ws).await["op"], "subscribed");
    crate::ws::send(
        &mut ws,
        json!({"op": "publish", "ref": "p1", "event": ev("jobs.own-a.ws")}),
    )
    .await;
    assert_eq!(crate::ws::recv(&mut ws).await["op"], "published");
    // A direct message from B to A arrives, stamped with its sender.
    let (s, body) = status(
        &b.http,
        Method::POST,
        url("/api/v1/messages"),
        Some(json!({"to": "own-a", "type": "hello", "data": {"hi": 1}})),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let f = crate::ws::recv(&mut ws).await;
    assert_eq!(f["op"], "event", "{f}");
    assert_eq!(f["event"]["sourceagent"], "own-b");
    assert_eq!(f["event"]["topic"], "inbox.own-a");
    // A may not message B: its ACL does not grant inbox topics.
    assert_eq!(
        status(
            &a.http,
            Method::POST,
            url("/api/v1/messages"),
            Some(json!({"to": "own-b", "type": "hello"}))
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );

    // Credentials: its own, not another's.
    assert_eq!(
        status(
            &a.http,
            Method::POST,
            url("/api/v1/agents/own-b/credentials"),
            None
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(
            &a.http,
            Method::POST,
            url("/api/v1/agents/own-a/credentials"),
            None
        )
        .await
        .0,
        StatusCode::CREATED
    );
    // Removing another agent is refused.
    assert_eq!(
        status(&a.http, Method::DELETE, url("/api/v1/agents/own-b"), None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    // Removing an agent ends its credentials at once.
    assert_eq!(
        status(&hub.http, Method::DELETE, url("/api/v1/agents/own-b"), None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        status(&b.http, Method::GET, url("/api/v1/auth/whoami"), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn rate_limits_answer_429_with_headers_and_recover() {
    let toml = r#"
        [rate_limit.roles]
        operator = { per_second = 2, burst = 3 }
        [rate_limit.principals]
        "admin-token" = { per_second = 1, burst = 1 }
    "#;
    let hub = TestHub::start_with(DataDir::temp().expect("tmp"), toml)
        .await
        .expect("hub");
    let op = http_client(&api_key(&hub, "operator").await).expect("client");
    let get = || op.get(hub.url("/api/v1/agents")).send();
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = get().await.expect("send");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["x-ratelimit-limit"], "3");
        assert!(r.headers().contains_key("x-ratelimit-reset"));
        remaining.push(
            r.headers()["x-ratelimit-remaining"]
                .to_str()
                .expect("ascii")
                .to_owned(),
        );
    }
    assert_eq!(remaining, ["2", "1", "0"]);
    let r = get().await.expect("send");
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["code"], "RATE_LIMIT_EXCEEDED");
    // Another route has its own bucket.
    let r = op.get(hub.url("/api/v1/tasks")).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    // It recovers after Retry-After.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(get().await.expect("send").status(), StatusCode::OK);
    // A per-principal limit overrides the role's (here the unlimited admin).
    let first = hub
        .http
        .get(hub.url("/api/v1/agents"))
        .send()
        .await
        .expect("send");
    assert_eq!(first.status(), StatusCode::OK);
    let second = hub
        .http
        .get(hub.url("/api/v1/agents"))
        .send()
        .await
        .expect("send");
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn repeated_failures_raise_an_alert() {
    let hub = TestHub::start_with(
        DataDir::temp().expect("tmp"),
        "[auth]\nfailure_threshold = 5\nfailure_window = \"1m\"\n",
    )
    .await
    .expect("hub");
    let anon = reqwest::Client::new();
    for i in 0..6 {
        let r = anon
            .get(hub.url("/api/v1/agents"))
            .bearer_auth(format!("sbk_guessguessgu_{i}"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let alert = eventually(Duration::from_secs(10), "system.alert", || async {
        let page = hub.get_json("/api/v1/events?topic=system.alert").await;
        page["events"].as_array().and_then(|e| {
            e.iter()
                .find(|e| e["data"]["kind"] == "auth_failures")
                .cloned()
        })
    })
    .await
    .expect("alert");
    assert_eq!(alert["data"]["source_ip"], "127.0.0.1");
    assert_eq!(alert["data"]["failures"], 5);
    let page = hub.get_json("/api/v1/events?topic=system.alert").await;
    let alerts = page["events"].as_array().expect("events").len();
    assert_eq!(alerts, 1, "one alert per window");
    let metrics = hub
        .http
        .get(hub.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(r#"switchboard_auth_failures_total{reason="bad_api_key"} 6"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn tokens_expire_on_open_websockets() {
    let hub = TestHub::start_with(
        DataDir::temp().expect("tmp"),
        "[auth]\ntoken_ttl = \"2s\"\nleeway = \"0s\"\n",
    )
    .await
    .expect("hub");
    let a = agent(&hub, "short-lived").await;
    let mut ws = crate::ws::connect_as(&hub, &a.token).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        use futures_util::StreamExt;
        loop {
            match ws.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f)))) => {
                    return Some(f);
                }
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    })
    .await
    .expect("closed in time")
    .expect("a close frame");
    assert_eq!(u16::from(closed.code), 1008);
    assert!(closed.reason.contains("expired"), "{}", closed.reason);
    let r = a
        .http
        .get(hub.url("/api/v1/auth/whoami"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["code"], "TOKEN_EXPIRED");
}
