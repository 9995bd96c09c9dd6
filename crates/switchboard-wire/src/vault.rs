//! The vault: secrets, their versions and policies, and master key
//! rotation.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Who may read a secret besides admins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretPolicy {
    /// Agents (by id) that may read it.
    #[serde(default)]
    pub agents: Vec<String>,
    /// Roles (`operator`, `agent`, `observer`) whose members may read it.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// `PUT /api/v1/secrets/{name}`: a new version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutSecretRequest {
    /// The value (UTF-8 text; encode binary values yourself).
    pub value: String,
    /// Replaces the secret's read policy; kept when absent (none on a new
    /// secret: only admins read it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<SecretPolicy>,
}

/// One version of a secret (no value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretVersion {
    /// 1, 2, …
    pub version: u64,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// Who wrote it.
    pub created_by: String,
}

/// A secret, without its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Secret {
    /// Its name.
    pub name: String,
    /// Who may read it.
    pub policy: SecretPolicy,
    /// Its newest version.
    pub latest_version: u64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When a version or its policy last changed.
    pub updated_at: DateTime<Utc>,
    /// Its versions, oldest first (absent in listings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<SecretVersion>,
}

/// A secret's value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretValue {
    /// The secret.
    pub name: String,
    /// The version read.
    pub version: u64,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// The value.
    pub value: String,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValue")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// A page of secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretList {
    /// The secrets, by name.
    pub secrets: Vec<Secret>,
    /// Pass as `after` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// Versions wrapped by one master key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WrappedCount {
    /// The master key's id.
    pub master_key_id: String,
    /// Versions whose data key it wraps.
    pub versions: u64,
}

/// `GET /api/v1/vault`: the vault's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VaultStatus {
    /// `ready`, `locked` (the master key does not match what is stored)
    /// or `unavailable` (no master key).
    pub state: String,
    /// Why it is not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The current master key's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_key_id: Option<String>,
    /// Every configured master key's id, current first.
    pub key_ids: Vec<String>,
    /// How many versions each master key wraps.
    pub wrapped: Vec<WrappedCount>,
}

/// `POST /api/v1/vault/rotate`: what the rotation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VaultRotation {
    /// The master key now current.
    pub current_key_id: String,
    /// Versions whose data key was rewrapped by it.
    pub rewrapped: u64,
}
