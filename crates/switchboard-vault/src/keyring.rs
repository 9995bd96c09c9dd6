//! Master keys: where they come from, and how they are named.
//!
//! A key ring is one or more 256-bit keys, written one per line in base64
//! (`#` comments and blank lines are skipped). The first key is current:
//! new data keys are wrapped by it. The others are previous keys, kept so
//! that data keys they wrapped can be unwrapped and wrapped again by the
//! current one (rotation). A key is named by its id, a hash of it, so the
//! store can say which key wrapped what without holding the key.

use std::path::{Path, PathBuf};

use base64::Engine;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// One master key.
pub struct MasterKey {
    id: String,
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let key = Zeroizing::new(bytes);
        let mut h = Sha256::new();
        h.update(b"switchboard vault master key id v1");
        h.update(*key);
        let digest = h.finalize();
        let id = base16ct::lower::encode_string(&digest[..8]);
        Self { id, key }
    }

    /// A fresh random key, base64 (a line for a key file).
    pub fn generate_line() -> Result<String, String> {
        let mut k = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut *k).map_err(|e| format!("no randomness from the OS: {e}"))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(*k))
    }

    /// The key's id: the first 8 bytes of a SHA-256 of it, hex.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.key
    }
}

/// Where the master keys are read from.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file, one key per line; read again on rotation.
    File(PathBuf),
    /// The text of the keys themselves (an environment variable): keys
    /// separated by newlines or commas.
    Inline(String),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => f.debug_tuple("File").field(p).finish(),
            Self::Inline(_) => f.write_str("Inline(..)"),
        }
    }
}

impl KeySource {
    /// Reads the key ring.
    pub fn load(&self) -> Result<Keyring, String> {
        match self {
            Self::File(path) => {
                let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    format!("cannot read the master key file {}: {e}", path.display())
                })?);
                check_permissions(path)?;
                Keyring::parse(&text)
                    .map_err(|e| format!("master key file {}: {e}", path.display()))
            }
            Self::Inline(text) => {
                Keyring::parse(&text.replace(',', "\n")).map_err(|e| format!("master key: {e}"))
            }
        }
    }

    /// Where it is, for messages (never the keys).
    pub fn describe(&self) -> String {
        match self {
            Self::File(p) => format!("file {}", p.display()),
            Self::Inline(_) => "the SWITCHBOARD_MASTER_KEY environment variable".into(),
        }
    }
}

#[cfg(unix)]
fn check_permissions(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "the master key file {} is readable by others (mode {:o}): chmod 600 it",
            path.display(),
            mode & 0o777
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_: &Path) -> Result<(), String> {
    Ok(())
}

/// The master keys: the current one first, then previous ones.
#[derive(Debug)]
pub struct Keyring {
    keys: Vec<MasterKey>,
}

impl Keyring {
    /// Parses keys, one per line, base64 (standard or URL alphabet).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys: Vec<MasterKey> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let raw = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(line)
                    .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(line))
                    .map_err(|_| format!("line {}: not base64", n + 1))?,
            );
            let bytes: [u8; 32] = raw.as_slice().try_into().map_err(|_| {
                format!(
                    "line {}: {} bytes where a key has 32 (make one with `switchboard vault keygen`)",
                    n + 1,
                    raw.len()
                )
            })?;
            let key = MasterKey::from_bytes(bytes);
            if keys.iter().all(|k| k.id != key.id) {
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Err("no key in it".into());
        }
        Ok(Self { keys })
    }

    /// A ring of one key (tests).
    pub fn single(key: MasterKey) -> Self {
        Self { keys: vec![key] }
    }

    /// The key new data keys are wrapped by.
    pub fn current(&self) -> &MasterKey {
        &self.keys[0]
    }

    /// The key with this id.
    pub fn get(&self, id: &str) -> Option<&MasterKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// Every key's id, current first.
    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.clone()).collect()
    }
}
