//! Managing credentials: API keys, agents' client secrets and ACLs,
//! issuing tokens, signing key rotation and revocation.
//!
//! Every change follows one shape: take the write lock, build the new
//! records, store them (one transaction), then swap them into memory. A
//! failed store write changes nothing.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use switchboard_core::{FieldError, UnixMillis};

use crate::jwt::{Claims, KeyAlgorithm, KeyPair};
use crate::store::{AgentCredential, ApiKeyRecord, AuthWrite, ClientSecret, RevokedToken};
use crate::{
    API_KEY_PREFIX, AclTemplate, Auth, AuthError, CLIENT_SECRET_PREFIX, Cred, Role, Scopes, secret,
};

/// What an API key is made with.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// A name for people.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Narrower scopes than the role's, if given.
    pub scopes: Option<Scopes>,
    /// When it stops working.
    pub expires_at: Option<UnixMillis>,
}

/// A new API key: the record, and the key itself (shown once).
#[derive(Debug, Clone)]
pub struct ApiKeyCreated {
    /// The stored record.
    pub record: ApiKeyRecord,
    /// The key. Not stored anywhere.
    pub key: String,
}

/// A token issued to a client.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The JWT.
    pub access_token: String,
    /// Seconds it lives.
    pub expires_in: u64,
    /// The scopes it grants.
    pub scope: Scopes,
    /// Its id.
    pub jti: String,
}

/// A signing key, public parts only.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    /// Its id.
    pub kid: String,
    /// Its algorithm.
    pub alg: KeyAlgorithm,
    /// When it was made.
    pub created_at: UnixMillis,
    /// When it stopped signing.
    pub retired_at: Option<UnixMillis>,
    /// Whether new tokens are signed with it.
    pub current: bool,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Auth {
    pub(crate) async fn commit(&self, writes: Vec<AuthWrite>) -> Result<(), AuthError> {
        self.0.store.write_auth(writes).await.map_err(Into::into)
    }

    // === API keys ===

    /// Makes an API key. The key is in the answer and nowhere else.
    pub async fn create_api_key(&self, new: NewApiKey) -> Result<ApiKeyCreated, AuthError> {
        let mut errs = Vec::new();
        if new.name.trim().is_empty() || new.name.len() > 200 {
            errs.push(FieldError::new("name", "must be 1 to 200 characters"));
        }
        if new.role == Role::Agent {
            errs.push(FieldError::new(
                "role",
                "agents authenticate with client credentials, not API keys; use admin, operator or observer",
            ));
        }
        let scopes = match new.scopes {
            Some(s) if !s.is_subset(new.role.scopes()) => {
                errs.push(FieldError::new(
                    "scopes",
                    format!(
                        "{} is more than the {} role grants ({})",
                        s,
                        new.role,
                        new.role.scopes()
                    ),
                ));
                s
            }
            Some(s) => s,
            None => new.role.scopes(),
        };
        if new.expires_at.is_some_and(|e| e <= self.now()) {
            errs.push(FieldError::new("expires_at", "must be in the future"));
        }
        if !errs.is_empty() {
            return Err(AuthError::Invalid(errs));
        }
        let _w = self.0.writes.lock().await;
        let id = loop {
            let id = secret::random_id().map_err(AuthError::Internal)?;
            if !self.read().api_keys.contains_key(&id) {
                break id;
            }
        };
        let secret_part = secret::random_token("").map_err(AuthError::Internal)?;
        let record = ApiKeyRecord {
            id: id.clone(),
            name: new.name,
            role: new.role.to_string(),
            scopes: scopes.to_string(),
            hash: secret::sha256_hex(&secret_part),
            created_at: self.now(),
            expires_at: new.expires_at,
            revoked_at: None,
        };
        self.commit(vec![AuthWrite::ApiKey(record.clone())]).await?;
        self.write().api_keys.insert(id.clone(), record.clone());
        Ok(ApiKeyCreated {
            record,
            key: format!("{API_KEY_PREFIX}{id}_{secret_part}"),
        })
    }

    /// Every API key, newest first, revoked ones included.
    pub fn list_api_keys(&self) -> Vec<ApiKeyRecord> {
        let mut keys: Vec<_> = self.read().api_keys.values().cloned().collect();
        keys.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        keys
    }

    /// Revokes an API key at once.
    pub async fn revoke_api_key(&self, id: &str) -> Result<ApiKeyRecord, AuthError> {
        let _w = self.0.writes.lock().await;
        let Some(mut rec) = self.read().api_keys.get(id).cloned() else {
            return Err(AuthError::NotFound {
                code: "API_KEY_NOT_FOUND",
                what: format!("API key {id}"),
            });
        };
        if rec.revoked_at.is_none() {
            rec.revoked_at = Some(self.now());
            self.commit(vec![AuthWrite::ApiKey(rec.clone())]).await?;
            self.write().api_keys.insert(rec.id.clone(), rec.clone());
        }
        Ok(rec)
    }

    // === Agents' credentials ===

    fn cred(&self, record: AgentCredential) -> Arc<Cred> {
        let acl = Arc::new(
            record
                .acl
                .as_ref()
                .unwrap_or(&self.0.config.agent_acl)
                .for_agent(&record.agent_id),
        );
        Arc::new(Cred { record, acl })
    }

    async fn store_cred(&self, record: AgentCredential) -> Result<(), AuthError> {
        self.commit(vec![AuthWrite::Credential(record.clone())])
            .await?;
        let id = record.agent_id.clone();
        let cred = self.cred(record);
        self.write().credentials.insert(id, cred);
        Ok(())
    }

    async fn new_secret(&self) -> Result<(String, ClientSecret), AuthError> {
        let plain = secret::random_token(CLIENT_SECRET_PREFIX).map_err(AuthError::Internal)?;
        let hash = {
            let _slot = self
                .0
                .hashing
                .acquire()
                .await
                .map_err(|e| AuthError::Internal(e.to_string()))?;
            let p = plain.clone();
            tokio::task::spawn_blocking(move || secret::argon2_hash(&p))
                .await
                .map_err(|e| AuthError::Internal(e.to_string()))?
                .map_err(AuthError::Internal)?
        };
        Ok((
            plain,
            ClientSecret {
                hash,
                created_at: self.now(),
                expires_at: None,
            },
        ))
    }

    /// Whether the agent has a client secret that still works.
    pub fn has_credentials(&self, agent_id: &str) -> bool {
        let now = self.now();
        self.read().credentials.get(agent_id).is_some_and(|c| {
            c.record
                .secrets
                .iter()
                .any(|s| s.expires_at.is_none_or(|e| e > now))
        })
    }

    /// Gives the agent a client secret if it has none that works; the
    /// secret, when one was made.
    pub async fn ensure_credentials(&self, agent_id: &str) -> Result<Option<String>, AuthError> {
        if self.has_credentials(agent_id) {
            return Ok(None);
        }
        let (plain, secret) = self.new_secret().await?;
        let _w = self.0.writes.lock().await;
        if self.has_credentials(agent_id) {
            return Ok(None);
        }
        let mut record = self.credential_record(agent_id);
        record
            .secrets
            .retain(|s| s.expires_at.is_none_or(|e| e > self.now()));
        record.secrets.push(secret);
        self.store_cred(record).await?;
        Ok(Some(plain))
    }

    fn credential_record(&self, agent_id: &str) -> AgentCredential {
        self.read()
            .credentials
            .get(agent_id)
            .map(|c| c.record.clone())
            .unwrap_or_else(|| AgentCredential {
                agent_id: agent_id.to_owned(),
                secrets: Vec::new(),
                tokens_valid_after: 0,
                acl: None,
            })
    }

    /// Makes a new client secret; the ones before keep working for
    /// `grace` (the configured grace when `None`), then stop.
    pub async fn rotate_secret(
        &self,
        agent_id: &str,
        grace: Option<Duration>,
    ) -> Result<(String, UnixMillis), AuthError> {
        let (plain, secret) = self.new_secret().await?;
        let _w = self.0.writes.lock().await;
        let now = self.now();
        let until = now + ms(grace.unwrap_or(self.0.config.secret_grace));
        let mut record = self.credential_record(agent_id);
        record
            .secrets
            .retain(|s| s.expires_at.is_none_or(|e| e > now));
        for s in &mut record.secrets {
            s.expires_at = Some(s.expires_at.map_or(until, |e| e.min(until)));
        }
        record.secrets.push(secret);
        self.store_cred(record).await?;
        Ok((plain, until))
    }

    /// Revokes every client secret of the agent and every token issued to
    /// it so far.
    pub async fn revoke_credentials(&self, agent_id: &str) -> Result<(), AuthError> {
        let _w = self.0.writes.lock().await;
        if !self.read().credentials.contains_key(agent_id) {
            return Err(AuthError::NotFound {
                code: "CREDENTIALS_NOT_FOUND",
                what: format!("credentials of agent {agent_id}"),
            });
        }
        let mut record = self.credential_record(agent_id);
        record.secrets.clear();
        // Tokens carry whole seconds: refuse every one issued up to now.
        record.tokens_valid_after = (self.now() / 1000 + 1) * 1000;
        self.store_cred(record).await
    }

    /// Forgets the agent's credentials and public keys (the agent was
    /// removed): its secrets and tokens stop working at once, and nothing
    /// its keys signed is accepted.
    pub async fn remove_credentials(&self, agent_id: &str) -> Result<(), AuthError> {
        let _w = self.0.writes.lock().await;
        let (cred, keys) = {
            let s = self.read();
            (
                s.credentials.contains_key(agent_id),
                s.identities.contains_key(agent_id),
            )
        };
        let mut writes = Vec::new();
        if cred {
            writes.push(AuthWrite::DeleteCredential(agent_id.to_owned()));
        }
        if keys {
            writes.push(AuthWrite::DeleteIdentity(agent_id.to_owned()));
        }
        if writes.is_empty() {
            return Ok(());
        }
        self.commit(writes).await?;
        let mut s = self.write();
        s.credentials.remove(agent_id);
        s.identities.remove(agent_id);
        Ok(())
    }

    /// Sets the agent's topic ACL (`None`: the hub's default).
    pub async fn set_acl(
        &self,
        agent_id: &str,
        acl: Option<AclTemplate>,
    ) -> Result<AclTemplate, AuthError> {
        if let Some(a) = &acl {
            a.check("acl").map_err(AuthError::Invalid)?;
        }
        let _w = self.0.writes.lock().await;
        let mut record = self.credential_record(agent_id);
        record.acl = acl;
        let effective = record
            .acl
            .clone()
            .unwrap_or_else(|| self.0.config.agent_acl.clone());
        self.store_cred(record).await?;
        Ok(effective)
    }

    /// The agent's topic ACL as written (the default when none is set).
    pub fn acl(&self, agent_id: &str) -> AclTemplate {
        self.read()
            .credentials
            .get(agent_id)
            .and_then(|c| c.record.acl.clone())
            .unwrap_or_else(|| self.0.config.agent_acl.clone())
    }

    /// OAuth2 client credentials: checks the agent's secret and issues a
    /// token with `scope` (all of the agent role's when `None`).
    pub async fn issue_token(
        &self,
        client_id: &str,
        client_secret: &str,
        scope: Option<&str>,
    ) -> Result<IssuedToken, AuthError> {
        let now = self.now();
        let hashes: Vec<String> = self
            .read()
            .credentials
            .get(client_id)
            .map(|c| {
                c.record
                    .secrets
                    .iter()
                    .filter(|s| s.expires_at.is_none_or(|e| e > now))
                    .map(|s| s.hash.clone())
                    .collect()
            })
            .unwrap_or_default();
        let granted = Role::Agent.scopes();
        let scopes = match scope {
            Some(s) => {
                let asked = Scopes::parse(s).map_err(AuthError::InvalidScope)?;
                if !asked.is_subset(granted) {
                    return Err(AuthError::InvalidScope(format!(
                        "an agent may ask only for {granted}"
                    )));
                }
                asked
            }
            None => granted,
        };
        if !client_secret.starts_with(CLIENT_SECRET_PREFIX) || hashes.is_empty() {
            return Err(AuthError::InvalidClient);
        }
        let ok = {
            let _slot = self
                .0
                .hashing
                .acquire()
                .await
                .map_err(|e| AuthError::Internal(e.to_string()))?;
            let given = client_secret.to_owned();
            tokio::task::spawn_blocking(move || {
                hashes.iter().any(|h| secret::argon2_matches(&given, h))
            })
            .await
            .map_err(|e| AuthError::Internal(e.to_string()))?
        };
        if !ok {
            return Err(AuthError::InvalidClient);
        }
        self.sign_for(client_id, Role::Agent, scopes)
    }

    fn sign_for(&self, sub: &str, role: Role, scopes: Scopes) -> Result<IssuedToken, AuthError> {
        let key = self
            .read()
            .current_key()
            .cloned()
            .ok_or_else(|| AuthError::Internal("no signing key".into()))?;
        let iat = self.now() / 1000;
        let ttl = self.0.config.token_ttl.as_secs();
        let jti = uuid::Uuid::now_v7().to_string();
        let claims = Claims {
            iss: self.0.config.issuer.clone(),
            aud: self.0.config.audience.clone(),
            sub: sub.to_owned(),
            exp: iat + i64::try_from(ttl).unwrap_or(i64::MAX / 2),
            nbf: iat,
            iat,
            jti: jti.clone(),
            scope: scopes.to_string(),
            role: role.to_string(),
        };
        Ok(IssuedToken {
            access_token: key.sign(&claims).map_err(AuthError::Internal)?,
            expires_in: ttl,
            scope: scopes,
            jti,
        })
    }

    // === Revocation ===

    /// Revokes the token with id `jti` that expires at `expires_at`.
    pub async fn revoke_jti(&self, jti: &str, expires_at: UnixMillis) -> Result<(), AuthError> {
        let _w = self.0.writes.lock().await;
        if self.read().revoked.contains_key(jti) {
            return Ok(());
        }
        self.commit(vec![AuthWrite::Revoke(RevokedToken {
            jti: jti.to_owned(),
            expires_at,
        })])
        .await?;
        self.write().revoked.insert(jti.to_owned(), expires_at);
        Ok(())
    }

    /// Whether the token with id `jti` is revoked.
    pub fn is_revoked(&self, jti: &str) -> bool {
        self.read().revoked.contains_key(jti)
    }

    // === Signing keys ===

    /// Makes a new signing key and signs with it from now on; the previous
    /// one keeps verifying the tokens it signed until they expire, unless
    /// `drop_previous` (a compromised key): then every other key goes at
    /// once, and every token they signed is refused.
    pub async fn rotate_signing_key(
        &self,
        alg: KeyAlgorithm,
        drop_previous: bool,
    ) -> Result<KeyInfo, AuthError> {
        let now = self.now();
        let pair = tokio::task::spawn_blocking(move || KeyPair::generate(alg, now))
            .await
            .map_err(|e| AuthError::Internal(e.to_string()))?
            .map_err(AuthError::Internal)?;
        let _w = self.0.writes.lock().await;
        let mut writes = Vec::new();
        let mut retired = Vec::new();
        let mut dropped = Vec::new();
        for k in &self.read().keys {
            if drop_previous {
                writes.push(AuthWrite::DeleteSigningKey(k.record.kid.clone()));
                dropped.push(k.record.kid.clone());
            } else if k.record.retired_at.is_none() {
                let mut r = k.record.clone();
                r.retired_at = Some(now);
                writes.push(AuthWrite::SigningKey(r.clone()));
                retired.push(r);
            }
        }
        writes.push(AuthWrite::SigningKey(pair.record.clone()));
        self.commit(writes).await?;
        let info = KeyInfo {
            kid: pair.record.kid.clone(),
            alg,
            created_at: now,
            retired_at: None,
            current: true,
        };
        let mut state = self.write();
        state.keys.retain(|k| !dropped.contains(&k.record.kid));
        for r in retired {
            if let Some(k) = state.keys.iter_mut().find(|k| k.record.kid == r.kid) {
                let rebuilt = KeyPair::from_record(&r).map_err(AuthError::Internal)?;
                *k = Arc::new(rebuilt);
            }
        }
        state.keys.push(Arc::new(pair));
        drop(state);
        if drop_previous {
            // Tokens remembered as verified were signed by dropped keys.
            self.0
                .cache
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
        }
        Ok(info)
    }

    /// Every signing key the hub holds, oldest first.
    pub fn signing_keys(&self) -> Vec<KeyInfo> {
        let state = self.read();
        let current = state.current_key().map(|k| k.record.kid.clone());
        state
            .keys
            .iter()
            .map(|k| KeyInfo {
                kid: k.record.kid.clone(),
                alg: k.record.alg,
                created_at: k.record.created_at,
                retired_at: k.record.retired_at,
                current: current.as_deref() == Some(&k.record.kid),
            })
            .collect()
    }

    /// The JSON Web Key Set of every key that verifies tokens.
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = self.read().keys.iter().map(|k| k.jwk.clone()).collect();
        json!({ "keys": keys })
    }

    /// Drops revocations of expired tokens and retired keys whose tokens
    /// have all expired.
    pub(crate) async fn prune(&self, now: UnixMillis) -> Result<(), AuthError> {
        let lifetime = ms(self.0.config.token_ttl) + ms(self.0.config.leeway);
        let (expired_keys, any_revoked_expired) = {
            let s = self.read();
            let keys: Vec<String> = s
                .keys
                .iter()
                .filter(|k| k.record.retired_at.is_some_and(|r| r + lifetime < now))
                .map(|k| k.record.kid.clone())
                .collect();
            (
                keys,
                s.revoked
                    .values()
                    .any(|e| *e + ms(self.0.config.leeway) < now),
            )
        };
        if expired_keys.is_empty() && !any_revoked_expired {
            return Ok(());
        }
        let _w = self.0.writes.lock().await;
        let mut writes: Vec<AuthWrite> = expired_keys
            .iter()
            .cloned()
            .map(AuthWrite::DeleteSigningKey)
            .collect();
        let before = now - ms(self.0.config.leeway);
        writes.push(AuthWrite::PruneRevoked(before));
        self.commit(writes).await?;
        let mut s = self.write();
        s.keys.retain(|k| !expired_keys.contains(&k.record.kid));
        s.revoked.retain(|_, e| *e >= before);
        Ok(())
    }
}
