//! The credential vault: secrets encrypted at rest.
//!
//! Layout:
//! - [`keyring`]: master keys, from a key file or the environment, never
//!   stored with the data.
//! - `crypt`: envelope encryption (a data key per version, wrapped by the
//!   master key) and the master key check.
//! - [`store`]: [`VaultStore`], what backends implement; it holds only
//!   ciphertext.
//!
//! [`Vault`] is the handle. It is in one of three states: ready (a master
//! key that matches what is stored), locked (a master key is configured
//! but does not match: every secret call is refused with the reason, never
//! answered with garbage), or unavailable (no master key configured).
//!
//! Rotation: put the new key first in the key file, keep the old one after
//! it, and call [`Vault::rotate`]: the key file is read again, every data
//! key is rewrapped by the new key in batches while reads go on, and the
//! old key can then be removed from the file. A hub that starts with a
//! previous key still in its ring rewraps what that key wraps the same way.

use std::sync::{Arc, RwLock};

use switchboard_core::{Clock, FieldError, FieldErrors, StorageError, UnixMillis, ident};
use zeroize::Zeroizing;

mod crypt;
pub mod keyring;
pub mod store;

pub use keyring::{KeySource, Keyring, MasterKey};
pub use store::{Ciphertext, KeyCheck, ReadPolicy, SecretMeta, StoredVersion, VaultStore};

/// Versions rewrapped per transaction.
const REWRAP_BATCH: u32 = 256;
/// The most secrets one listing returns.
pub const MAX_PAGE: u32 = 500;

/// Settings of the vault.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// Where the master keys come from; none: the vault is unavailable.
    pub source: Option<KeySource>,
    /// The largest value accepted, in bytes.
    pub max_value_bytes: usize,
}

impl Default for VaultConfig {
    fn default() -> Self {
        Self {
            source: None,
            max_value_bytes: 64 * 1024,
        }
    }
}

/// What the vault reports as wrong.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// Input is wrong; every bad field is listed.
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    /// No such secret or version.
    #[error("{0}")]
    NotFound(String),
    /// The reader is not allowed by the secret's policy.
    #[error("{0}")]
    Forbidden(String),
    /// No master key is configured.
    #[error("{0}")]
    Unavailable(String),
    /// The configured master key does not match what is stored.
    #[error("{0}")]
    Locked(String),
    /// A rotation cannot go ahead (the new key ring lacks a key in use).
    #[error("{0}")]
    Conflict(String),
    /// A stored row does not decrypt: it was changed outside the hub.
    #[error("{0}")]
    Corrupt(String),
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Something that should not fail did.
    #[error("{0}")]
    Internal(String),
}

/// The vault's state, as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultStatus {
    /// `ready`, `locked` or `unavailable`.
    pub state: &'static str,
    /// Why it is not ready.
    pub reason: Option<String>,
    /// The current master key's id.
    pub current_key_id: Option<String>,
    /// Every configured master key's id, current first.
    pub key_ids: Vec<String>,
    /// How many versions each master key wraps.
    pub wrapped: Vec<(String, u64)>,
}

/// A secret's description (never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    /// The metadata.
    pub meta: SecretMeta,
    /// Its versions: (version, written at, written by), oldest first.
    pub versions: Vec<(u64, UnixMillis, String)>,
}

/// A secret's value, as read.
pub struct Revealed {
    /// The secret.
    pub name: String,
    /// The version read.
    pub version: u64,
    /// When it was written.
    pub created_at: UnixMillis,
    /// The value (wiped from memory when dropped).
    pub value: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Revealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revealed")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Who reads a secret.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    /// The principal's id (an agent's id for agents).
    pub id: &'a str,
    /// Its role (`admin`, `operator`, `agent`, `observer`).
    pub role: &'a str,
    /// Whether it is an agent.
    pub agent: bool,
}

impl ReadPolicy {
    /// Whether `r` may read. Admins always may.
    pub fn allows(&self, r: Reader<'_>) -> bool {
        r.role == "admin"
            || (r.agent && self.agents.iter().any(|a| a == r.id))
            || self.roles.iter().any(|x| x == r.role)
    }

    fn check(&self, errs: &mut FieldErrors) {
        for (i, a) in self.agents.iter().enumerate() {
            if let Err(why) = ident::check(a) {
                errs.push(format!("policy.agents[{i}]"), why);
            }
        }
        for (i, r) in self.roles.iter().enumerate() {
            if !matches!(r.as_str(), "admin" | "operator" | "agent" | "observer") {
                errs.push(
                    format!("policy.roles[{i}]"),
                    "must be one of admin, operator, agent, observer",
                );
            }
        }
    }
}

enum State {
    Ready(Arc<Keyring>),
    Locked(String),
    Unavailable(String),
}

struct Inner {
    store: Arc<dyn VaultStore>,
    config: VaultConfig,
    clock: Clock,
    state: RwLock<State>,
    /// Serializes writes and rotations.
    writes: tokio::sync::Mutex<()>,
}

/// The vault's handle. Cheap to clone.
#[derive(Clone)]
pub struct Vault(Arc<Inner>);

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The key now current.
    pub current_key_id: String,
    /// Versions whose data key was rewrapped.
    pub rewrapped: u64,
}

const NO_KEY: &str = "the vault has no master key: start the hub with SWITCHBOARD_MASTER_KEY_FILE \
                      naming a file (mode 600, outside the data directory) that holds a key made by \
                      `switchboard vault keygen`, or with SWITCHBOARD_MASTER_KEY";

impl Vault {
    /// Opens the vault: reads the master keys and checks them against
    /// what is stored. A key that cannot be read is an error; a key that
    /// does not match leaves the vault locked. Answers whether data keys
    /// wrapped by a previous key are waiting to be rewrapped
    /// ([`Vault::rewrap_all`]).
    pub async fn open(
        store: Arc<dyn VaultStore>,
        config: VaultConfig,
        clock: Clock,
    ) -> Result<(Self, bool), VaultError> {
        let (state, pending) = match &config.source {
            None => (State::Unavailable(NO_KEY.into()), false),
            Some(source) => {
                let ring = source.load().map_err(VaultError::Unavailable)?;
                match check_ring(store.as_ref(), &ring, &clock, source).await? {
                    Ok(pending) => (State::Ready(Arc::new(ring)), pending),
                    Err(why) => (State::Locked(why), false),
                }
            }
        };
        if let State::Locked(why) = &state {
            tracing::error!(reason = %why, "the vault is locked: secrets will not be served");
        }
        Ok((
            Self(Arc::new(Inner {
                store,
                config,
                clock,
                state: RwLock::new(state),
                writes: tokio::sync::Mutex::new(()),
            })),
            pending,
        ))
    }

    fn ring(&self) -> Result<Arc<Keyring>, VaultError> {
        match &*self
            .0
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            State::Ready(r) => Ok(r.clone()),
            State::Locked(why) => Err(VaultError::Locked(why.clone())),
            State::Unavailable(why) => Err(VaultError::Unavailable(why.clone())),
        }
    }

    /// The vault's state and what each master key wraps.
    pub async fn status(&self) -> Result<VaultStatus, VaultError> {
        let (state, reason, ring) = match &*self
            .0
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            State::Ready(r) => ("ready", None, Some(r.clone())),
            State::Locked(why) => ("locked", Some(why.clone()), None),
            State::Unavailable(why) => ("unavailable", Some(why.clone()), None),
        };
        let wrapped = self.0.store.wrapped_counts().await?;
        Ok(VaultStatus {
            state,
            reason,
            current_key_id: ring.as_ref().map(|r| r.current().id().to_owned()),
            key_ids: ring.map(|r| r.ids()).unwrap_or_default(),
            wrapped,
        })
    }

    /// Writes a new version of `name` (creating the secret); `policy`
    /// replaces the secret's policy when given.
    pub async fn put(
        &self,
        name: &str,
        value: &[u8],
        policy: Option<ReadPolicy>,
        by: &str,
    ) -> Result<SecretInfo, VaultError> {
        let mut errs = FieldErrors::new();
        if let Err(why) = ident::check(name) {
            errs.push("name", why);
        }
        if value.is_empty() {
            errs.push("value", "must not be empty");
        }
        if value.len() > self.0.config.max_value_bytes {
            errs.push(
                "value",
                format!("must be at most {} bytes", self.0.config.max_value_bytes),
            );
        }
        if let Some(p) = &policy {
            p.check(&mut errs);
        }
        errs.finish().map_err(VaultError::Invalid)?;
        let ring = self.ring()?;
        let _w = self.0.writes.lock().await;
        let now = self.0.clock.now_ms();
        let old = self.0.store.secret(name).await?;
        let version = old.as_ref().map_or(1, |m| m.latest_version + 1);
        let meta = SecretMeta {
            name: name.to_owned(),
            policy: policy
                .or_else(|| old.as_ref().map(|m| m.policy.clone()))
                .unwrap_or_default(),
            created_at: old.as_ref().map_or(now, |m| m.created_at),
            updated_at: now,
            latest_version: version,
        };
        // The ring may have been replaced by a rotation since it was
        // read: seal under the one current now.
        let ring = self.ring().unwrap_or(ring);
        let stored = StoredVersion {
            name: name.to_owned(),
            version,
            created_at: now,
            created_by: by.to_owned(),
            ciphertext: crypt::seal(ring.current(), name, version, value)?,
        };
        self.0.store.put_version(&meta, &stored).await?;
        drop(_w);
        self.describe(name).await
    }

    /// Reads a version (the latest when `None`) for `reader`, if the
    /// secret's policy allows.
    pub async fn get(
        &self,
        name: &str,
        version: Option<u64>,
        reader: Reader<'_>,
    ) -> Result<Revealed, VaultError> {
        let ring = self.ring()?;
        let meta = self.meta(name).await?;
        if !meta.policy.allows(reader) {
            return Err(VaultError::Forbidden(format!(
                "{} ({}) may not read secret {name}: its policy does not grant it",
                reader.id, reader.role
            )));
        }
        let v = version.unwrap_or(meta.latest_version);
        let stored = self
            .0
            .store
            .version(name, v)
            .await?
            .ok_or_else(|| VaultError::NotFound(format!("version {v} of secret {name}")))?;
        let value = crypt::open(&ring, name, v, &stored.ciphertext)?;
        Ok(Revealed {
            name: name.to_owned(),
            version: v,
            created_at: stored.created_at,
            value,
        })
    }

    async fn meta(&self, name: &str) -> Result<SecretMeta, VaultError> {
        self.0
            .store
            .secret(name)
            .await?
            .ok_or_else(|| VaultError::NotFound(format!("secret {name}")))
    }

    /// A secret's metadata and versions (no values).
    pub async fn describe(&self, name: &str) -> Result<SecretInfo, VaultError> {
        self.ring()?;
        let meta = self.meta(name).await?;
        let versions = self
            .0
            .store
            .versions(name)
            .await?
            .into_iter()
            .map(|v| (v.version, v.created_at, v.created_by))
            .collect();
        Ok(SecretInfo { meta, versions })
    }

    /// Secrets by name after `after`.
    pub async fn list(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SecretMeta>, VaultError> {
        self.ring()?;
        Ok(self
            .0
            .store
            .list_secrets(after, limit.clamp(1, MAX_PAGE))
            .await?)
    }

    /// Replaces a secret's read policy.
    pub async fn set_policy(
        &self,
        name: &str,
        policy: ReadPolicy,
    ) -> Result<SecretInfo, VaultError> {
        let mut errs = FieldErrors::new();
        policy.check(&mut errs);
        errs.finish().map_err(VaultError::Invalid)?;
        self.ring()?;
        let _w = self.0.writes.lock().await;
        if !self
            .0
            .store
            .set_policy(name, &policy, self.0.clock.now_ms())
            .await?
        {
            return Err(VaultError::NotFound(format!("secret {name}")));
        }
        drop(_w);
        self.describe(name).await
    }

    /// Removes a secret and every version.
    pub async fn delete(&self, name: &str) -> Result<(), VaultError> {
        self.ring()?;
        let _w = self.0.writes.lock().await;
        if self.0.store.delete_secret(name).await? {
            Ok(())
        } else {
            Err(VaultError::NotFound(format!("secret {name}")))
        }
    }

    /// Reads the master keys from their source again, makes the first one
    /// current, and rewraps every data key under it. Refused (and nothing
    /// changes) when the new ring lacks a key that wraps stored data.
    pub async fn rotate(&self) -> Result<Rotation, VaultError> {
        let Some(source) = &self.0.config.source else {
            return Err(VaultError::Unavailable(NO_KEY.into()));
        };
        let _w = self.0.writes.lock().await;
        let ring = source.load().map_err(VaultError::Conflict)?;
        match check_ring(self.0.store.as_ref(), &ring, &self.0.clock, source).await? {
            Ok(_) => {}
            Err(why) => return Err(VaultError::Conflict(format!("rotation refused: {why}"))),
        }
        let current = ring.current().id().to_owned();
        *self
            .0
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = State::Ready(Arc::new(ring));
        drop(_w);
        let rewrapped = self.rewrap_all().await?;
        tracing::info!(current_key = %current, rewrapped, "vault master key rotated");
        Ok(Rotation {
            current_key_id: current,
            rewrapped,
        })
    }

    /// Rewraps, in batches, every data key not wrapped by the current
    /// master key; reads and writes go on meanwhile. How many it did.
    pub async fn rewrap_all(&self) -> Result<u64, VaultError> {
        let mut done = 0u64;
        loop {
            let _w = self.0.writes.lock().await;
            let ring = self.ring()?;
            let current = ring.current().id().to_owned();
            let rows = self
                .0
                .store
                .wrapped_by_others(&current, REWRAP_BATCH)
                .await?;
            if rows.is_empty() {
                return Ok(done);
            }
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let ciphertext = crypt::rewrap(&ring, &r.name, r.version, &r.ciphertext)?;
                out.push(StoredVersion { ciphertext, ..r });
            }
            self.0.store.rewrap(&out).await?;
            done += out.len() as u64;
        }
    }
}

/// Checks a key ring against the store: every key with a stored check
/// must decrypt it, and every key that wraps stored data must be in the
/// ring. `Ok(Ok(pending))`: usable, and whether a previous key still wraps
/// data; `Ok(Err(why))`: the ring does not match. Records the current
/// key's check when it has none.
async fn check_ring(
    store: &dyn VaultStore,
    ring: &Keyring,
    clock: &Clock,
    source: &KeySource,
) -> Result<Result<bool, String>, VaultError> {
    let checks = store.key_checks().await?;
    for c in &checks {
        if let Some(k) = ring.get(&c.master_key_id)
            && !crypt::check_matches(k, &c.blob, &c.nonce)
        {
            return Ok(Err(format!(
                "master key {} from {} does not decrypt the check stored for it",
                c.master_key_id,
                source.describe()
            )));
        }
    }
    let wrapped = store.wrapped_counts().await?;
    let missing: Vec<String> = wrapped
        .iter()
        .filter(|(id, n)| *n > 0 && ring.get(id).is_none())
        .map(|(id, n)| format!("{id} ({n} versions)"))
        .collect();
    if !missing.is_empty() {
        return Ok(Err(format!(
            "stored secrets are wrapped by master key {} but {} holds key {}: the hub was started \
             with the wrong master key. Start it with the key it used before (keep it after a new \
             key in the key file to rotate)",
            missing.join(", "),
            source.describe(),
            ring.ids().join(", ")
        )));
    }
    let current = ring.current();
    if !checks.iter().any(|c| c.master_key_id == current.id()) {
        let (blob, nonce) = crypt::key_check(current)?;
        store
            .put_key_check(&KeyCheck {
                master_key_id: current.id().to_owned(),
                blob,
                nonce,
                created_at: clock.now_ms(),
            })
            .await?;
    }
    Ok(Ok(wrapped
        .iter()
        .any(|(id, n)| *n > 0 && id != current.id())))
}

#[cfg(test)]
mod tests;
