//! The auth handle against an in-memory store.

use std::sync::Mutex as StdMutex;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::*;
use crate::store::{AuditQuery, AuthSnapshot, AuthWrite};

#[derive(Default)]
struct MemStore {
    state: StdMutex<AuthSnapshot>,
    audit: StdMutex<Vec<AuditRecord>>,
}

#[async_trait]
impl AuthStore for MemStore {
    async fn load_auth(&self) -> Result<AuthSnapshot, StorageError> {
        let s = self.state.lock().expect("lock");
        Ok(AuthSnapshot {
            signing_keys: s.signing_keys.clone(),
            api_keys: s.api_keys.clone(),
            credentials: s.credentials.clone(),
            revoked: s.revoked.clone(),
            identities: s.identities.clone(),
        })
    }

    async fn write_auth(&self, writes: Vec<AuthWrite>) -> Result<(), StorageError> {
        let mut s = self.state.lock().expect("lock");
        for w in writes {
            match w {
                AuthWrite::SigningKey(k) => {
                    s.signing_keys.retain(|x| x.kid != k.kid);
                    s.signing_keys.push(k);
                }
                AuthWrite::DeleteSigningKey(kid) => s.signing_keys.retain(|x| x.kid != kid),
                AuthWrite::ApiKey(k) => {
                    s.api_keys.retain(|x| x.id != k.id);
                    s.api_keys.push(k);
                }
                AuthWrite::Credential(c) => {
                    s.credentials.retain(|x| x.agent_id != c.agent_id);
                    s.credentials.push(c);
                }
                AuthWrite::DeleteCredential(id) => s.credentials.retain(|x| x.agent_id != id),
                AuthWrite::Identity(i) => {
                    s.identities.retain(|x| x.agent_id != i.agent_id);
                    s.identities.push(i);
                }
                AuthWrite::DeleteIdentity(id) => s.identities.retain(|x| x.agent_id != id),
                AuthWrite::Revoke(r) => s.revoked.push(r),
                AuthWrite::PruneRevoked(before) => s.revoked.retain(|r| r.expires_at >= before),
            }
        }
        Ok(())
    }

    async fn audit_tail(&self) -> Result<Option<AuditRecord>, StorageError> {
        Ok(self.audit.lock().expect("lock").last().cloned())
    }

    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StorageError> {
        self.audit.lock().expect("lock").extend_from_slice(records);
        Ok(())
    }

    async fn read_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StorageError> {
        Ok(self
            .audit
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.seq > q.after)
            .take(q.limit as usize)
            .cloned()
            .collect())
    }
}

async fn open(store: Arc<MemStore>, config: AuthConfig) -> Opened {
    Auth::open(store, config, Clock::system(), CancellationToken::new())
        .await
        .expect("open")
}

#[tokio::test]
async fn first_start_makes_an_admin_key_once() {
    let store = Arc::new(MemStore::default());
    let first = open(store.clone(), AuthConfig::default()).await;
    let key = first.first_admin_key.expect("an admin key on first start");
    let p = first.auth.authenticate(&key).expect("the key works");
    assert_eq!(p.role, Role::Admin);
    assert!(p.can(Scope::Admin));
    assert_eq!(first.auth.signing_keys().len(), 1);
    // The key is stored only as a hash.
    let stored = store.state.lock().expect("lock").api_keys.clone();
    assert_eq!(stored.len(), 1);
    assert!(!key.contains(&stored[0].hash));
    let second = open(store, AuthConfig::default()).await;
    assert!(second.first_admin_key.is_none());
    assert!(
        second.auth.authenticate(&key).is_ok(),
        "the key survives a restart"
    );
    assert_eq!(second.auth.signing_keys().len(), 1, "the key is reused");
}

#[tokio::test]
async fn configured_admin_token() {
    let config = AuthConfig {
        admin_token: Some("x".repeat(40)),
        ..Default::default()
    };
    let o = open(Arc::new(MemStore::default()), config).await;
    assert!(o.first_admin_key.is_none());
    assert_eq!(
        o.auth.authenticate(&"x".repeat(40)).expect("admin").role,
        Role::Admin
    );
    assert!(o.auth.authenticate(&"y".repeat(40)).is_err());
}

#[tokio::test]
async fn api_keys_scope_expire_and_revoke() {
    let o = open(Arc::new(MemStore::default()), AuthConfig::default()).await;
    let a = &o.auth;
    let obs = a
        .create_api_key(NewApiKey {
            name: "ci".into(),
            role: Role::Operator,
            scopes: Some(Scopes::parse("tasks:read").expect("scopes")),
            expires_at: None,
        })
        .await
        .expect("create");
    let p = a.authenticate(&obs.key).expect("valid");
    assert!(p.can(Scope::TasksRead));
    assert!(!p.can(Scope::TasksWrite));
    // A wrong secret with the right id fails.
    let mut forged = obs.key.clone();
    forged.pop();
    forged.push(if obs.key.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(
        a.authenticate(&forged).expect_err("forged").reason,
        "bad_api_key"
    );
    a.revoke_api_key(&obs.record.id).await.expect("revoke");
    assert_eq!(
        a.authenticate(&obs.key).expect_err("revoked").reason,
        "revoked"
    );
    // More than the role grants is refused, naming the field.
    let Err(AuthError::Invalid(errs)) = a
        .create_api_key(NewApiKey {
            name: "x".into(),
            role: Role::Observer,
            scopes: Some(Scopes::parse("tasks:write").expect("scopes")),
            expires_at: None,
        })
        .await
    else {
        panic!("expected a field error");
    };
    assert_eq!(errs[0].field, "scopes");
}

#[tokio::test]
async fn client_credentials_rotation_and_revocation() {
    let o = open(Arc::new(MemStore::default()), AuthConfig::default()).await;
    let a = &o.auth;
    let first = a
        .ensure_credentials("agent-1")
        .await
        .expect("ensure")
        .expect("a new secret");
    assert!(
        a.ensure_credentials("agent-1")
            .await
            .expect("again")
            .is_none()
    );
    let t = a.issue_token("agent-1", &first, None).await.expect("token");
    let p = a.authenticate(&t.access_token).expect("valid token");
    assert_eq!((&*p.id, p.kind), ("agent-1", PrincipalKind::Agent));
    assert!(p.acl.is_some());
    assert!(matches!(
        a.issue_token("agent-1", "sbs_wrong", None).await,
        Err(AuthError::InvalidClient)
    ));
    assert!(matches!(
        a.issue_token("agent-2", &first, None).await,
        Err(AuthError::InvalidClient)
    ));
    assert!(matches!(
        a.issue_token("agent-1", &first, Some("admin")).await,
        Err(AuthError::InvalidScope(_))
    ));
    let narrow = a
        .issue_token("agent-1", &first, Some("tasks:read"))
        .await
        .expect("narrow");
    let np = a.authenticate(&narrow.access_token).expect("valid");
    assert!(np.can(Scope::TasksRead) && !np.can(Scope::TasksWrite));

    // Rotation: the old secret works during the grace period only.
    let (second, _) = a
        .rotate_secret("agent-1", Some(Duration::from_secs(60)))
        .await
        .expect("rotate");
    assert!(a.issue_token("agent-1", &first, None).await.is_ok());
    assert!(a.issue_token("agent-1", &second, None).await.is_ok());
    let (third, _) = a
        .rotate_secret("agent-1", Some(Duration::ZERO))
        .await
        .expect("rotate");
    assert!(a.issue_token("agent-1", &second, None).await.is_err());
    assert!(a.issue_token("agent-1", &third, None).await.is_ok());

    // Revocation stops secrets and tokens already issued.
    a.revoke_credentials("agent-1").await.expect("revoke");
    assert_eq!(
        a.authenticate(&t.access_token).expect_err("revoked").reason,
        "revoked"
    );
    assert!(a.issue_token("agent-1", &third, None).await.is_err());
}

#[tokio::test]
async fn rotated_keys_verify_until_removed_and_jti_revocation() {
    let store = Arc::new(MemStore::default());
    let o = open(store.clone(), AuthConfig::default()).await;
    let a = &o.auth;
    let secret = a
        .ensure_credentials("ag")
        .await
        .expect("ok")
        .expect("secret");
    let old = a.issue_token("ag", &secret, None).await.expect("token");
    let info = a
        .rotate_signing_key(KeyAlgorithm::RS256, false)
        .await
        .expect("rotate");
    let new = a.issue_token("ag", &secret, None).await.expect("token");
    let (kid, alg) = jwt::header_kid(&new.access_token).expect("header");
    assert_eq!(
        (kid, alg),
        (info.kid.clone(), jsonwebtoken::Algorithm::RS256)
    );
    assert!(
        a.authenticate(&old.access_token).is_ok(),
        "old key still verifies"
    );
    assert!(a.authenticate(&new.access_token).is_ok());
    assert_eq!(a.jwks()["keys"].as_array().map(Vec::len), Some(2));
    // A hub restarted on the same store knows both keys.
    let again = open(store, AuthConfig::default()).await;
    assert!(again.auth.authenticate(&old.access_token).is_ok());
    // Revoking one token leaves the other.
    a.revoke_jti(&new.jti, i64::MAX).await.expect("revoke");
    assert_eq!(
        a.authenticate(&new.access_token)
            .expect_err("revoked")
            .reason,
        "revoked"
    );
    assert!(a.authenticate(&old.access_token).is_ok());
    // An emergency rotation drops every earlier key and its tokens.
    a.rotate_signing_key(KeyAlgorithm::EdDSA, true)
        .await
        .expect("rotate");
    assert_eq!(
        a.authenticate(&old.access_token)
            .expect_err("dropped")
            .reason,
        "unknown_key"
    );
    assert_eq!(a.jwks()["keys"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn forged_tokens_are_refused() {
    let o = open(Arc::new(MemStore::default()), AuthConfig::default()).await;
    let a = &o.auth;
    let secret = a
        .ensure_credentials("ag")
        .await
        .expect("ok")
        .expect("secret");
    let real = a.issue_token("ag", &secret, None).await.expect("token");
    let parts: Vec<&str> = real.access_token.split('.').collect();
    let kid = a.signing_keys()[0].kid.clone();
    let header = |alg: &str| {
        URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","kid":"{kid}","typ":"JWT"}}"#))
    };
    // alg none, no signature.
    let none = format!("{}.{}.", header("none"), parts[1]);
    assert!(a.authenticate(&none).is_err());
    // HS256 keyed with the public key.
    let public = a.jwks()["keys"][0]["x"].as_str().expect("x").to_owned();
    let hs = jsonwebtoken::encode(
        &{
            let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
            h.kid = Some(kid.clone());
            h
        },
        &jsonwebtoken::dangerous::insecure_decode_claims::<jwt::Claims>(&real.access_token)
            .expect("claims"),
        &jsonwebtoken::EncodingKey::from_secret(public.as_bytes()).expect("key"),
    )
    .expect("encode");
    assert_eq!(
        a.authenticate(&hs).expect_err("hs256").reason,
        "wrong_algorithm"
    );
    // The real header over altered claims.
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
    claims["sub"] = "someone-else".into();
    let altered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    assert_eq!(
        a.authenticate(&altered).expect_err("altered").reason,
        "bad_signature"
    );
}

#[tokio::test]
async fn failures_alert_once_per_window() {
    let config = AuthConfig {
        failure_threshold: 3,
        ..Default::default()
    };
    let o = open(Arc::new(MemStore::default()), config).await;
    let ip: IpAddr = "10.0.0.1".parse().expect("ip");
    let alerts: Vec<_> = (0..6).map(|_| o.auth.note_failure(ip)).collect();
    assert_eq!(alerts, [None, None, Some(3), None, None, None]);
}

#[tokio::test]
async fn audit_records_chain_across_restarts() {
    let store = Arc::new(MemStore::default());
    for round in 0..2 {
        let o = open(store.clone(), AuthConfig::default()).await;
        let writer = tokio::spawn(o.audit_writer.run());
        for i in 0..3 {
            let seq = o
                .auth
                .audit()
                .record(AuditEntry {
                    at: i,
                    principal: "p".into(),
                    principal_kind: "operator".into(),
                    action: "POST /x".into(),
                    resource: "/x".into(),
                    outcome: 200,
                    reason: String::new(),
                    source: "127.0.0.1".into(),
                    correlation_id: format!("{round}-{i}"),
                })
                .await
                .expect("record");
            assert_eq!(seq, round * 3 + u64::try_from(i).expect("small") + 1);
        }
        let v = o.auth.audit().verify().await.expect("verify");
        assert!(v.breaks.is_empty());
        assert_eq!(v.checked, (round + 1) * 3);
        drop(o.auth);
        writer.abort();
    }
}
