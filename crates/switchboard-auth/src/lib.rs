//! Identity and access: who is calling, what they may do, how often, and
//! the record of it.
//!
//! Layout:
//! - [`scope`]: [`Scope`]s and the [`Role`]s that group them.
//! - [`principal`]: the authenticated caller ([`Principal`]) and agents'
//!   topic rules ([`TopicAcl`]).
//! - `secret`: random tokens, SHA-256 for API keys, argon2id for client
//!   secrets.
//! - [`jwt`]: the hub's signing keys and the tokens it issues.
//! - `manage`: credentials: API keys, agents' client secrets, key
//!   rotation, revocation.
//! - [`ratelimit`]: GCRA behind the [`RateLimiter`] trait.
//! - [`audit`]: the hash-chained audit log and its writer.
//! - [`store`]: [`AuthStore`], what backends implement.
//!
//! [`Auth`] is the handle. Credentials live in memory (loaded at start,
//! written through on every change), so authenticating a request never
//! touches the store. A verified JWT is remembered until it expires, so
//! its signature is checked once, not on every request; revocations and
//! credential changes are still checked on every use.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use switchboard_core::{Clock, FieldError, StorageError, UnixMillis};
use tokio_util::sync::CancellationToken;

pub mod audit;
pub mod identity;
pub mod jwt;
mod manage;
pub mod principal;
pub mod ratelimit;
pub mod scope;
mod secret;
pub mod store;

pub use audit::{AuditEntry, AuditLog, AuditRecord, AuditWriter, Verification};
pub use identity::{AgentIdentity, AgentKeyRecord, KeyChallenge, KeyRegistration, KeyStatus};
pub use jwt::{KeyAlgorithm, TokenError};
pub use manage::{ApiKeyCreated, IssuedToken, KeyInfo, NewApiKey};
pub use principal::{AclTemplate, Principal, PrincipalKind, TopicAcl};
pub use ratelimit::{Decision, LocalLimiter, Quota, RateLimiter};
pub use scope::{Role, Scope, Scopes};
pub use store::{AgentCredential, ApiKeyRecord, AuditQuery, AuthStore};

use jwt::{KeyPair, Rules};

/// The prefix of every API key.
pub const API_KEY_PREFIX: &str = "sbk_";
/// The prefix of every client secret.
pub const CLIENT_SECRET_PREFIX: &str = "sbs_";
/// The length of an API key's id.
const KEY_ID_LEN: usize = 12;

/// Settings of the auth component.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// When false, every request is let through as an admin. Only for
    /// measuring what authentication costs; the server refuses it on a
    /// non-loopback address.
    pub enabled: bool,
    /// The `iss` of issued tokens, checked on every token.
    pub issuer: String,
    /// The `aud` of issued tokens, checked on every token.
    pub audience: String,
    /// How long an issued token lives.
    pub token_ttl: Duration,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// The algorithm of new signing keys.
    pub signing_algorithm: KeyAlgorithm,
    /// An admin token given by configuration (`SWITCHBOARD_ADMIN_TOKEN`);
    /// accepted as an admin and never stored.
    pub admin_token: Option<String>,
    /// How long a rotated-out client secret keeps working by default.
    pub secret_grace: Duration,
    /// Agents' topic ACL unless one is set for the agent.
    pub agent_acl: AclTemplate,
    /// Authentication failures from one address within `failure_window`
    /// that raise an alert.
    pub failure_threshold: u32,
    /// The window failures are counted in.
    pub failure_window: Duration,
    /// Rate limits.
    pub rate_limits: RateLimits,
    /// How far a sealed message's `sent_at` may be from now when the hub
    /// routes it.
    pub seal_window: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            issuer: "switchboard".into(),
            audience: "switchboard".into(),
            token_ttl: Duration::from_secs(15 * 60),
            leeway: Duration::from_secs(10),
            signing_algorithm: KeyAlgorithm::EdDSA,
            admin_token: None,
            secret_grace: Duration::from_secs(3600),
            agent_acl: AclTemplate::default(),
            failure_threshold: 20,
            failure_window: Duration::from_secs(60),
            rate_limits: RateLimits::default(),
            seal_window: Duration::from_secs(300),
        }
    }
}

impl AuthConfig {
    /// Checks the settings; every bad one is named.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errs = switchboard_core::FieldErrors::new();
        if self.token_ttl < Duration::from_secs(1) {
            errs.push("auth.token_ttl", "must be at least 1s");
        }
        if self.leeway > Duration::from_secs(300) {
            errs.push("auth.leeway", "must be at most 5m");
        }
        if let Some(t) = &self.admin_token {
            if t.len() < 32 {
                errs.push(
                    "auth.admin_token",
                    "must be at least 32 characters (SWITCHBOARD_ADMIN_TOKEN)",
                );
            }
            if t.contains(char::is_whitespace) {
                errs.push("auth.admin_token", "must not contain whitespace");
            }
        }
        if self.seal_window < Duration::from_secs(1) {
            errs.push("auth.seal_window", "must be at least 1s");
        }
        if self.failure_threshold == 0 {
            errs.push("auth.failure_threshold", "must be at least 1");
        }
        let mut out = errs.finish().err().unwrap_or_default();
        if let Err(mut e) = self.agent_acl.check("auth.agent_acl") {
            out.append(&mut e);
        }
        if out.is_empty() { Ok(()) } else { Err(out) }
    }
}

/// Rate limits by role and by principal; `None` means unlimited.
#[derive(Debug, Clone)]
pub struct RateLimits {
    /// Whether requests are limited at all.
    pub enabled: bool,
    /// The limit of each role, per principal and route.
    pub roles: HashMap<Role, Option<Quota>>,
    /// Limits of single principals, overriding their role's.
    pub principals: HashMap<String, Option<Quota>>,
    /// The limit of unauthenticated requests, per address and route.
    pub anonymous: Option<Quota>,
}

impl Default for RateLimits {
    fn default() -> Self {
        let q = |per_second, burst| Some(Quota { per_second, burst });
        Self {
            enabled: true,
            roles: HashMap::from([
                (Role::Admin, None),
                (Role::Operator, q(2000.0, 4000)),
                (Role::Agent, q(2000.0, 4000)),
                (Role::Observer, q(200.0, 400)),
            ]),
            principals: HashMap::new(),
            anonymous: q(100.0, 200),
        }
    }
}

impl RateLimits {
    /// The quota for a principal (or `None` for an anonymous caller).
    pub fn quota(&self, principal: Option<&Principal>) -> Option<Quota> {
        if !self.enabled {
            return None;
        }
        match principal {
            None => self.anonymous,
            Some(p) => match self.principals.get(&*p.id) {
                Some(q) => *q,
                None => self.roles.get(&p.role).copied().flatten(),
            },
        }
    }
}

/// What the auth component reports as wrong.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Input is wrong; every bad field is listed.
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    /// Client authentication failed (OAuth2 `invalid_client`).
    #[error("client authentication failed")]
    InvalidClient,
    /// A requested scope is not granted (OAuth2 `invalid_scope`).
    #[error("{0}")]
    InvalidScope(String),
    /// The named thing does not exist; `code` names its kind
    /// (`API_KEY_NOT_FOUND`).
    #[error("{what} not found")]
    NotFound {
        /// A stable code.
        code: &'static str,
        /// What was looked for.
        what: String,
    },
    /// A sealed message, a key or a proof was refused.
    #[error(transparent)]
    Seal(#[from] switchboard_seal::SealError),
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Something that should not fail did.
    #[error("{0}")]
    Internal(String),
}

/// Why a credential was refused; safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AuthFailure {
    /// A stable name for metrics and the audit log (`expired`, `revoked`).
    pub reason: &'static str,
    /// What to tell the caller.
    pub message: String,
}

impl AuthFailure {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

impl From<TokenError> for AuthFailure {
    fn from(e: TokenError) -> Self {
        Self::new(e.reason(), e.to_string())
    }
}

/// An agent's credentials in memory.
#[derive(Debug)]
struct Cred {
    record: AgentCredential,
    acl: Arc<TopicAcl>,
}

/// Every credential the hub accepts.
#[derive(Default)]
struct State {
    /// Signing keys; the last one not retired signs.
    keys: Vec<Arc<KeyPair>>,
    api_keys: HashMap<String, ApiKeyRecord>,
    credentials: HashMap<String, Arc<Cred>>,
    /// Revoked `jti`s and when their tokens expire.
    revoked: HashMap<String, UnixMillis>,
    /// Agents' public keys.
    identities: HashMap<String, Arc<AgentIdentity>>,
}

impl State {
    fn key(&self, kid: &str) -> Option<&Arc<KeyPair>> {
        self.keys.iter().find(|k| k.record.kid == kid)
    }

    fn current_key(&self) -> Option<&Arc<KeyPair>> {
        self.keys
            .iter()
            .rev()
            .find(|k| k.record.retired_at.is_none())
    }
}

/// A verified token, remembered until it expires.
struct Cached {
    principal: Principal,
    /// When it was issued, in milliseconds.
    issued_at: UnixMillis,
}

/// The most verified tokens remembered; past it, expired ones are dropped,
/// then all.
const TOKEN_CACHE_MAX: usize = 65_536;

struct Inner {
    config: AuthConfig,
    store: Arc<dyn AuthStore>,
    clock: Clock,
    rules: Rules,
    /// A `std` lock: readers hold it for a lookup, writers to swap in what
    /// the store has just committed; never across an await.
    state: RwLock<State>,
    cache: RwLock<HashMap<Box<str>, Cached>>,
    /// Serializes changes, so what is stored and what is in memory are
    /// changed in the same order.
    writes: tokio::sync::Mutex<()>,
    /// Argon2 is slow and memory-hungry by design: at most two at once.
    hashing: tokio::sync::Semaphore,
    limiter: Arc<dyn RateLimiter>,
    local_limiter: Option<Arc<LocalLimiter>>,
    audit: AuditLog,
    failures: Mutex<HashMap<IpAddr, FailureWindow>>,
    /// The admin token's SHA-256 (hex) and the principal it stands for,
    /// made once.
    admin_token: Option<(String, Arc<Principal>)>,
    identity: Mutex<identity::IdentityState>,
}

struct FailureWindow {
    started: UnixMillis,
    count: u32,
    alerted: bool,
}

/// The auth component's handle. Cheap to clone.
#[derive(Clone)]
pub struct Auth(Arc<Inner>);

/// What [`Auth::open`] hands back besides the handle.
pub struct Opened {
    /// The handle.
    pub auth: Auth,
    /// The audit writer, to run until shutdown.
    pub audit_writer: AuditWriter,
    /// The admin API key made on first start (no key stored and none
    /// configured): to be shown once, never again.
    pub first_admin_key: Option<String>,
}

impl Auth {
    /// Loads credentials and keys from `store`; makes a signing key if none
    /// signs, and an admin key on first start.
    pub async fn open(
        store: Arc<dyn AuthStore>,
        config: AuthConfig,
        clock: Clock,
        shutdown: CancellationToken,
    ) -> Result<Opened, AuthError> {
        let snapshot = store.load_auth().await?;
        let mut state = State::default();
        for rec in &snapshot.signing_keys {
            let pair = KeyPair::from_record(rec).map_err(AuthError::Internal)?;
            state.keys.push(Arc::new(pair));
        }
        state.keys.sort_by_key(|k| k.record.created_at);
        let no_keys_yet = snapshot.api_keys.is_empty();
        for k in snapshot.api_keys {
            state.api_keys.insert(k.id.clone(), k);
        }
        for c in snapshot.credentials {
            let acl = Arc::new(
                c.acl
                    .as_ref()
                    .unwrap_or(&config.agent_acl)
                    .for_agent(&c.agent_id),
            );
            state
                .credentials
                .insert(c.agent_id.clone(), Arc::new(Cred { record: c, acl }));
        }
        for r in snapshot.revoked {
            state.revoked.insert(r.jti, r.expires_at);
        }
        for i in snapshot.identities {
            state.identities.insert(i.agent_id.clone(), Arc::new(i));
        }
        let (audit, audit_writer) = AuditLog::open(store.clone(), shutdown).await?;
        let local = Arc::new(LocalLimiter::default());
        let rules = Rules {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway_s: config.leeway.as_secs(),
        };
        let admin_token = config.admin_token.as_deref().map(|token| {
            let admin = Arc::new(Principal::admin("admin-token"));
            (secret::sha256_hex(token), admin)
        });
        let auth = Auth(Arc::new(Inner {
            rules,
            store,
            clock,
            state: RwLock::new(state),
            cache: RwLock::new(HashMap::new()),
            writes: tokio::sync::Mutex::new(()),
            hashing: tokio::sync::Semaphore::new(2),
            limiter: local.clone(),
            local_limiter: Some(local),
            audit,
            failures: Mutex::new(HashMap::new()),
            admin_token,
            identity: Mutex::new(identity::IdentityState::default()),
            config,
        }));
        if auth.read().current_key().is_none() {
            auth.rotate_signing_key(auth.0.config.signing_algorithm, false)
                .await?;
        }
        let first_admin_key = if no_keys_yet && auth.0.config.admin_token.is_none() {
            let created = auth
                .create_api_key(NewApiKey {
                    name: "admin (made on first start)".into(),
                    role: Role::Admin,
                    scopes: None,
                    expires_at: None,
                })
                .await?;
            Some(created.key)
        } else {
            None
        };
        Ok(Opened {
            auth,
            audit_writer,
            first_admin_key,
        })
    }

    /// The settings.
    pub fn config(&self) -> &AuthConfig {
        &self.0.config
    }

    /// Whether requests must authenticate.
    pub fn enabled(&self) -> bool {
        self.0.config.enabled
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.0.audit
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.0
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.0
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now(&self) -> UnixMillis {
        self.0.clock.now_ms()
    }

    /// The principal a bearer credential stands for: an API key
    /// (`sbk_…`), a hub-issued JWT, or the configured admin token.
    pub fn authenticate(&self, credential: &str) -> Result<Arc<Principal>, AuthFailure> {
        if let Some(rest) = credential.strip_prefix(API_KEY_PREFIX) {
            return self.authenticate_api_key(rest).map(Arc::new);
        }
        if credential.bytes().filter(|b| *b == b'.').count() == 2 {
            return self.authenticate_jwt(credential).map(Arc::new);
        }
        if let Some((hash, admin)) = &self.0.admin_token
            && secret::sha256_matches(credential, hash)
        {
            return Ok(admin.clone());
        }
        Err(AuthFailure::new(
            "unknown_credential",
            "the credential is neither an API key nor a token this hub issued",
        ))
    }

    /// The agent a verified client certificate names (mTLS): known, with
    /// credentials that were not revoked.
    pub fn authenticate_certificate(&self, agent_id: &str) -> Result<Principal, AuthFailure> {
        let state = self.read();
        let Some(cred) = state.credentials.get(agent_id) else {
            return Err(AuthFailure::new(
                "unknown_certificate",
                format!("the client certificate names agent {agent_id}, which is not registered"),
            ));
        };
        if cred.record.secrets.is_empty() && cred.record.tokens_valid_after > 0 {
            return Err(AuthFailure::new(
                "revoked",
                format!("the credentials of agent {agent_id} have been revoked"),
            ));
        }
        Ok(Principal {
            id: agent_id.into(),
            kind: PrincipalKind::Agent,
            role: Role::Agent,
            scopes: Role::Agent.scopes(),
            acl: Some(cred.acl.clone()),
            token_id: None,
            expires_at: None,
        })
    }

    fn authenticate_api_key(&self, rest: &str) -> Result<Principal, AuthFailure> {
        let bad = || AuthFailure::new("bad_api_key", "the API key is not valid");
        let (id, secret) = (rest.get(..KEY_ID_LEN), rest.get(KEY_ID_LEN + 1..));
        let (Some(id), Some(secret)) = (id, secret) else {
            return Err(bad());
        };
        if rest.as_bytes().get(KEY_ID_LEN) != Some(&b'_') {
            return Err(bad());
        }
        let state = self.read();
        let Some(k) = state.api_keys.get(id) else {
            return Err(bad());
        };
        if !secret::sha256_matches(secret, &k.hash) {
            return Err(bad());
        }
        if k.revoked_at.is_some() {
            return Err(AuthFailure::new("revoked", "the API key has been revoked"));
        }
        if k.expires_at.is_some_and(|e| e <= self.now()) {
            return Err(AuthFailure::new("expired", "the API key has expired"));
        }
        let role: Role = k.role.parse().map_err(|_| bad())?;
        let scopes = Scopes::parse(&k.scopes).map_err(|_| bad())?;
        Ok(Principal {
            id: format!("key:{}", k.id).into(),
            kind: match role {
                Role::Admin | Role::Operator => PrincipalKind::Operator,
                Role::Agent | Role::Observer => PrincipalKind::Service,
            },
            role,
            scopes: scopes.intersect(role.scopes()),
            acl: None,
            token_id: None,
            expires_at: k.expires_at,
        })
    }

    fn authenticate_jwt(&self, token: &str) -> Result<Principal, AuthFailure> {
        let now = self.now();
        let leeway = i64::try_from(self.0.config.leeway.as_millis()).unwrap_or(0);
        let cached = {
            let cache = self
                .0
                .cache
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            cache.get(token).map(|c| (c.principal.clone(), c.issued_at))
        };
        let (mut principal, issued_at) = match cached {
            Some(hit) => hit,
            None => {
                let (p, iat) = self.verify_jwt(token)?;
                let mut cache = self
                    .0
                    .cache
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if cache.len() >= TOKEN_CACHE_MAX {
                    cache.retain(|_, c| c.principal.expires_at.is_some_and(|e| e + leeway > now));
                    if cache.len() >= TOKEN_CACHE_MAX {
                        cache.clear();
                    }
                }
                cache.insert(
                    token.into(),
                    Cached {
                        principal: p.clone(),
                        issued_at: iat,
                    },
                );
                (p, iat)
            }
        };
        if principal.expires_at.is_some_and(|e| e + leeway <= now) {
            return Err(TokenError::Expired.into());
        }
        let state = self.read();
        if let Some(jti) = &principal.token_id
            && state.revoked.contains_key(&**jti)
        {
            return Err(TokenError::Revoked.into());
        }
        if principal.kind == PrincipalKind::Agent {
            let Some(cred) = state.credentials.get(&*principal.id) else {
                return Err(AuthFailure::new(
                    "revoked",
                    "the agent's credentials have been removed",
                ));
            };
            if issued_at < cred.record.tokens_valid_after {
                return Err(AuthFailure::new(
                    "revoked",
                    "the agent's credentials were revoked after this token was issued",
                ));
            }
            principal.acl = Some(cred.acl.clone());
        }
        Ok(principal)
    }

    fn verify_jwt(&self, token: &str) -> Result<(Principal, UnixMillis), AuthFailure> {
        let (kid, alg) = jwt::header_kid(token)?;
        let key = {
            let state = self.read();
            state.key(&kid).cloned().ok_or(TokenError::UnknownKey)?
        };
        if !key.signs_with(alg) {
            return Err(TokenError::WrongAlgorithm.into());
        }
        let claims = key.verify(token, &self.0.rules)?;
        let role: Role = claims
            .role
            .parse()
            .map_err(|_| TokenError::Invalid("unknown role"))?;
        let scopes = Scopes::parse(&claims.scope)
            .map_err(|_| TokenError::Invalid("unknown scope"))?
            .intersect(role.scopes());
        let principal = Principal {
            id: claims.sub.into(),
            kind: PrincipalKind::Agent,
            role,
            scopes,
            acl: None,
            token_id: Some(claims.jti.into()),
            expires_at: Some(claims.exp.saturating_mul(1000)),
        };
        Ok((principal, claims.iat.saturating_mul(1000)))
    }

    /// Counts one request of `key` (a principal and route, or an address
    /// and route) against `quota`.
    pub async fn check_rate(&self, key: &str, quota: Quota) -> Decision {
        self.0.limiter.check(key, quota).await
    }

    /// Counts an authentication failure from `source`; returns the count
    /// when it first reaches the alert threshold within the window.
    pub fn note_failure(&self, source: IpAddr) -> Option<u32> {
        let now = self.now();
        let window = i64::try_from(self.0.config.failure_window.as_millis()).unwrap_or(i64::MAX);
        let mut map = self
            .0
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() > 100_000 {
            map.retain(|_, w| now - w.started < window);
        }
        let w = map.entry(source).or_insert(FailureWindow {
            started: now,
            count: 0,
            alerted: false,
        });
        if now - w.started >= window {
            *w = FailureWindow {
                started: now,
                count: 0,
                alerted: false,
            };
        }
        w.count += 1;
        if w.count >= self.0.config.failure_threshold && !w.alerted {
            w.alerted = true;
            return Some(w.count);
        }
        None
    }

    /// The housekeeping worker: forgets full rate-limit buckets, expired
    /// cached tokens, revocations of expired tokens and retired keys whose
    /// tokens have all expired.
    pub async fn run_housekeeping(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Some(l) = &self.0.local_limiter {
                l.sweep();
            }
            let now = self.now();
            {
                let mut cache = self
                    .0
                    .cache
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                cache.retain(|_, c| c.principal.expires_at.is_some_and(|e| e > now));
            }
            if let Err(error) = self.prune(now).await {
                tracing::warn!(%error, "auth housekeeping failed");
            }
        }
    }
}

#[cfg(test)]
mod tests;
