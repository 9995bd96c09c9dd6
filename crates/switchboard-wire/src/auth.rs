//! Credentials, tokens, keys and the audit log.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An agent's client credentials, in the answer that makes them: the
/// secret is shown this once and never again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentCredentials {
    /// The OAuth2 client id: the agent's id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: String,
    /// Where to exchange them for a token.
    pub token_endpoint: String,
    /// Until when the secrets before this one keep working (rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_valid_until: Option<DateTime<Utc>>,
}

/// `POST /api/v1/agents/{id}/credentials`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateCredentialsRequest {
    /// How long the secrets before the new one keep working, in seconds
    /// (the hub's `auth.secret_grace` when absent; 0 stops them at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_seconds: Option<u64>,
}

/// An OAuth2 token answer (RFC 6749 §5.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// The JWT.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds it lives.
    pub expires_in: u64,
    /// The scopes it grants, space-separated.
    pub scope: String,
}

/// `POST /api/v1/auth/revoke`: revoke a token (RFC 7009's `token`), or,
/// for admins, a token id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// The token to revoke.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A token id (`jti`) to revoke (admin only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// The caller as the hub sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Whoami {
    /// The principal's id.
    pub id: String,
    /// `operator`, `agent` or `service`.
    pub kind: String,
    /// Its role.
    pub role: String,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// When its credential expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The token id, for a JWT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// For agents: the topics it may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl: Option<TopicAcl>,
}

/// The topics an agent may publish and subscribe to. `{agent_id}` stands
/// for the agent's id; another agent's inbox is never readable whatever
/// the ACL says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicAcl {
    /// Topic patterns it may publish on.
    pub publish: Vec<String>,
    /// Topic patterns it may subscribe to (a subscription must lie within
    /// one of them).
    pub subscribe: Vec<String>,
}

/// `POST /api/v1/auth/api-keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    /// A name for people (`ci-deploy`).
    pub name: String,
    /// `admin`, `operator` or `observer`.
    pub role: String,
    /// Narrower scopes than the role grants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// When it stops working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// An API key, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: String,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it stops working.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A new API key: the key itself is shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyCreated {
    /// The key as stored.
    #[serde(flatten)]
    pub api_key: ApiKey,
    /// The key, to send as `Authorization: Bearer <key>`.
    pub key: String,
}

/// `GET /api/v1/auth/api-keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyList {
    /// Newest first, revoked ones included.
    pub keys: Vec<ApiKey>,
}

/// One of the hub's signing keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SigningKey {
    /// Its id (`kid`).
    pub kid: String,
    /// `EdDSA` or `RS256`.
    pub alg: String,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it stopped signing (it verifies until its tokens expire).
    pub retired_at: Option<DateTime<Utc>>,
    /// Whether new tokens are signed with it.
    pub current: bool,
}

/// `GET /api/v1/auth/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SigningKeyList {
    /// Oldest first.
    pub keys: Vec<SigningKey>,
}

/// `POST /api/v1/auth/keys/rotate`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKeyRequest {
    /// `EdDSA` (default) or `RS256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// Drop every earlier key at once, refusing every token they signed
    /// (for a key that may have leaked). By default they verify their
    /// tokens until those expire.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drop_previous: bool,
}

/// One record of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditRecord {
    /// Position in the log, from 1.
    pub seq: u64,
    /// When, in milliseconds since the epoch (hashed as is).
    pub at: i64,
    /// The same moment, for people.
    pub time: DateTime<Utc>,
    /// Who: a principal id, or `anonymous`.
    pub principal: String,
    /// `agent`, `operator`, `service` or `anonymous`.
    pub principal_kind: String,
    /// What: method and route.
    pub action: String,
    /// On what: the request path.
    pub resource: String,
    /// The HTTP status answered.
    pub outcome: u16,
    /// The error code, for refusals and failures.
    pub reason: String,
    /// The client's address.
    pub source: String,
    /// The request's correlation id.
    pub correlation_id: String,
    /// The previous record's hash.
    pub prev_hash: String,
    /// This record's hash.
    pub hash: String,
}

/// `GET /api/v1/audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    /// Oldest first.
    pub records: Vec<AuditRecord>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<u64>,
}

/// A break in the audit chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditBreak {
    /// Where.
    pub seq: u64,
    /// What is wrong.
    pub problem: String,
}

/// `GET /api/v1/audit/verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditVerification {
    /// Whether no break was found.
    pub intact: bool,
    /// Records checked.
    pub checked: u64,
    /// The last record's position.
    pub head_seq: u64,
    /// The last record's hash: keep it to detect a truncated tail later.
    pub head_hash: String,
    /// Every break found.
    pub breaks: Vec<AuditBreak>,
}
