//! What the vault keeps, and the trait storage backends implement. The
//! store sees only ciphertext, wrapped data keys and master key ids.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use switchboard_core::{StorageError, UnixMillis};

/// An encrypted value and its wrapped data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ciphertext {
    /// The value, encrypted with the data key (tag appended).
    pub value: Vec<u8>,
    /// Its nonce (24 bytes).
    pub value_nonce: Vec<u8>,
    /// The data key, encrypted with the master key (tag appended).
    pub wrapped_key: Vec<u8>,
    /// Its nonce (24 bytes).
    pub wrap_nonce: Vec<u8>,
    /// The id of the master key that wrapped the data key.
    pub master_key_id: String,
}

/// Who may read a secret besides admins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadPolicy {
    /// Agents (by id) that may read it.
    #[serde(default)]
    pub agents: Vec<String>,
    /// Roles (`operator`, `agent`, `observer`) whose members may read it.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// A secret, without its values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMeta {
    /// Its name.
    pub name: String,
    /// Who may read it.
    pub policy: ReadPolicy,
    /// When its first version was written.
    pub created_at: UnixMillis,
    /// When a version or its policy last changed.
    pub updated_at: UnixMillis,
    /// Its newest version.
    pub latest_version: u64,
}

/// One version as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVersion {
    /// The secret.
    pub name: String,
    /// 1, 2, …
    pub version: u64,
    /// When it was written.
    pub created_at: UnixMillis,
    /// Who wrote it.
    pub created_by: String,
    /// The encrypted value.
    pub ciphertext: Ciphertext,
}

/// A blob that only the master key with this id decrypts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCheck {
    /// The master key's id.
    pub master_key_id: String,
    /// The encrypted check.
    pub blob: Vec<u8>,
    /// Its nonce.
    pub nonce: Vec<u8>,
    /// When the key was first used.
    pub created_at: UnixMillis,
}

/// Where the vault lives.
#[async_trait]
pub trait VaultStore: Send + Sync + 'static {
    /// Every master key check.
    async fn key_checks(&self) -> Result<Vec<KeyCheck>, StorageError>;

    /// Records a master key check (kept if one exists for the id).
    async fn put_key_check(&self, check: &KeyCheck) -> Result<(), StorageError>;

    /// How many versions each master key wraps: (key id, count).
    async fn wrapped_counts(&self) -> Result<Vec<(String, u64)>, StorageError>;

    /// A secret's metadata.
    async fn secret(&self, name: &str) -> Result<Option<SecretMeta>, StorageError>;

    /// Secrets by name after `after`, at most `limit`.
    async fn list_secrets(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SecretMeta>, StorageError>;

    /// Writes a secret's metadata and a new version, in one transaction.
    async fn put_version(
        &self,
        meta: &SecretMeta,
        version: &StoredVersion,
    ) -> Result<(), StorageError>;

    /// Replaces a secret's policy; whether it exists.
    async fn set_policy(
        &self,
        name: &str,
        policy: &ReadPolicy,
        at: UnixMillis,
    ) -> Result<bool, StorageError>;

    /// One version.
    async fn version(
        &self,
        name: &str,
        version: u64,
    ) -> Result<Option<StoredVersion>, StorageError>;

    /// Every version of a secret, oldest first.
    async fn versions(&self, name: &str) -> Result<Vec<StoredVersion>, StorageError>;

    /// Removes a secret and all its versions; whether it existed.
    async fn delete_secret(&self, name: &str) -> Result<bool, StorageError>;

    /// Up to `limit` versions whose data key another master key than
    /// `current` wraps.
    async fn wrapped_by_others(
        &self,
        current: &str,
        limit: u32,
    ) -> Result<Vec<StoredVersion>, StorageError>;

    /// Replaces the wrapped data keys (and master key ids) of versions, in
    /// one transaction; values are not touched.
    async fn rewrap(&self, versions: &[StoredVersion]) -> Result<(), StorageError>;
}
