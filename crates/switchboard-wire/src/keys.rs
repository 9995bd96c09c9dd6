//! Agents' public keys: registration with proof of possession, rotation,
//! revocation, and the key directory.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /api/v1/agents/{id}/keys/challenge`: the keys an agent offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyChallengeRequest {
    /// Ed25519 public key, 32 bytes, base64url without padding.
    pub signing_key: String,
    /// X25519 public key, 32 bytes, base64url without padding.
    pub encryption_key: String,
}

/// A challenge: a nonce only the holder of the offered encryption key can
/// read (HPKE, the sealed-message suite, `info` = `switchboard key
/// challenge v1`, associated data = the agent id and challenge id, each
/// length-prefixed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyChallenge {
    /// Names the challenge in the registration.
    pub challenge_id: String,
    /// The HPKE encapsulated key, base64url.
    pub enc: String,
    /// The encrypted nonce, base64url.
    pub ciphertext: String,
    /// After this the challenge cannot be answered.
    pub expires_at: DateTime<Utc>,
}

/// `POST /api/v1/agents/{id}/keys`: registers the offered keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterKeysRequest {
    /// The challenge answered.
    pub challenge_id: String,
    /// The offered Ed25519 public key (as in the challenge request).
    pub signing_key: String,
    /// The offered X25519 public key (as in the challenge request).
    pub encryption_key: String,
    /// The offered signing key's Ed25519 signature over the registration
    /// statement (see `docs/sealed-messages.md`), base64url.
    pub signature: String,
    /// When the agent has current keys: their signature over the same
    /// statement, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_signature: Option<String>,
}

/// One of an agent's key pairs (public halves).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentKey {
    /// `SHA256:` and the base64url SHA-256 of the pair.
    pub fingerprint: String,
    /// Ed25519 public key, base64url.
    pub signing_key: String,
    /// X25519 public key, base64url.
    pub encryption_key: String,
    /// `current`, `rotated` or `revoked`.
    pub status: String,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// When a newer pair replaced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
    /// Why it was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_reason: Option<String>,
    /// The fingerprint of the pair that signed this one in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
}

/// An agent's keys: the current pair and the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentKeys {
    /// The agent.
    pub agent_id: String,
    /// The pair messages are sealed to and signed by now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<AgentKey>,
    /// Every pair, oldest first.
    pub keys: Vec<AgentKey>,
}

/// `DELETE /api/v1/agents/{id}/keys/{fingerprint}`: why (optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeKeyRequest {
    /// Why the key is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
