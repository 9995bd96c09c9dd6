//! What the auth component keeps, and the trait storage backends implement.
//!
//! Credentials are few and read on every request, so they are all loaded
//! at start and kept in memory; the store is written through on every
//! change. The audit log is the exception: it is only appended to and
//! paged through.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use switchboard_core::{StorageError, UnixMillis};

use crate::audit::AuditRecord;
use crate::identity::AgentIdentity;
use crate::jwt::SigningKeyRecord;
use crate::principal::AclTemplate;

/// An API key as stored: never the key itself, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// The key's id (the part of the key between `sbk_` and the next `_`).
    pub id: String,
    /// A name for people.
    pub name: String,
    /// The role it grants.
    pub role: String,
    /// The scopes it grants, space-separated (within the role's).
    pub scopes: String,
    /// SHA-256 of the secret part, hex.
    pub hash: String,
    /// When it was made.
    pub created_at: UnixMillis,
    /// When it stops working, if ever.
    pub expires_at: Option<UnixMillis>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<UnixMillis>,
}

/// One client secret of an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSecret {
    /// The argon2id hash, PHC string.
    pub hash: String,
    /// When it was made.
    pub created_at: UnixMillis,
    /// When it stops working: set when a newer secret replaces it (after a
    /// grace period).
    pub expires_at: Option<UnixMillis>,
}

/// An agent's credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCredential {
    /// The agent (and OAuth2 client) id.
    pub agent_id: String,
    /// Its secrets, newest last.
    pub secrets: Vec<ClientSecret>,
    /// Tokens issued before this moment are refused (set by a revocation).
    pub tokens_valid_after: UnixMillis,
    /// Its topic ACL; the hub default when absent.
    pub acl: Option<AclTemplate>,
}

/// A revoked token, kept until it would have expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedToken {
    /// Its `jti`.
    pub jti: String,
    /// Its expiry; after this the entry can go.
    pub expires_at: UnixMillis,
}

/// Everything loaded at start.
#[derive(Debug, Default)]
pub struct AuthSnapshot {
    /// Signing keys, current and retired.
    pub signing_keys: Vec<SigningKeyRecord>,
    /// API keys, including revoked ones (for listing).
    pub api_keys: Vec<ApiKeyRecord>,
    /// Agents' credentials.
    pub credentials: Vec<AgentCredential>,
    /// Revoked tokens not yet expired.
    pub revoked: Vec<RevokedToken>,
    /// Agents' public keys.
    pub identities: Vec<AgentIdentity>,
}

/// One change to the auth state, written in one transaction with the
/// others of the same call.
#[derive(Debug, Clone)]
pub enum AuthWrite {
    /// Insert or replace a signing key.
    SigningKey(SigningKeyRecord),
    /// Remove a signing key.
    DeleteSigningKey(String),
    /// Insert or replace an API key.
    ApiKey(ApiKeyRecord),
    /// Insert or replace an agent's credentials.
    Credential(AgentCredential),
    /// Remove an agent's credentials.
    DeleteCredential(String),
    /// Insert or replace an agent's public keys.
    Identity(AgentIdentity),
    /// Remove an agent's public keys.
    DeleteIdentity(String),
    /// Record a revoked token.
    Revoke(RevokedToken),
    /// Forget revoked tokens that expired before this moment.
    PruneRevoked(UnixMillis),
}

/// One page of the audit log.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only entries after this sequence number.
    pub after: u64,
    /// At most this many.
    pub limit: u32,
    /// Only this principal's.
    pub principal: Option<String>,
}

/// Where auth state and the audit log live.
#[async_trait]
pub trait AuthStore: Send + Sync + 'static {
    /// Everything but the audit log.
    async fn load_auth(&self) -> Result<AuthSnapshot, StorageError>;

    /// Applies `writes` in one transaction.
    async fn write_auth(&self, writes: Vec<AuthWrite>) -> Result<(), StorageError>;

    /// The last audit record, to continue the chain from.
    async fn audit_tail(&self) -> Result<Option<AuditRecord>, StorageError>;

    /// Appends records (already chained) in one transaction.
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StorageError>;

    /// A page of the audit log, oldest first.
    async fn read_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StorageError>;
}
