//! An agent's key pairs, their public halves and the key file.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use hpke::{Deserializable, Kem as _, Serializable};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::{Kem, SealError, b64, random, unb64_array};

/// The public halves of an agent's keys: what the hub publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeys {
    /// Ed25519: verifies what the agent signs.
    pub signing: VerifyingKey,
    /// X25519: what messages to the agent are encrypted to.
    pub encryption: <Kem as hpke::Kem>::PublicKey,
}

impl PublicKeys {
    /// Reads the two keys from their base64url encodings (32 bytes each).
    pub fn from_b64(signing: &str, encryption: &str) -> Result<Self, SealError> {
        let s: [u8; 32] = unb64_array("signing_key", signing)?;
        let e: [u8; 32] = unb64_array("encryption_key", encryption)?;
        let signing = VerifyingKey::from_bytes(&s).map_err(|_| SealError::Malformed {
            field: "signing_key",
            reason: "not an Ed25519 public key".into(),
        })?;
        if signing.is_weak() {
            return Err(SealError::Malformed {
                field: "signing_key",
                reason: "a weak (small order) Ed25519 key".into(),
            });
        }
        let encryption =
            <Kem as hpke::Kem>::PublicKey::from_bytes(&e).map_err(|_| SealError::Malformed {
                field: "encryption_key",
                reason: "not an X25519 public key".into(),
            })?;
        Ok(Self {
            signing,
            encryption,
        })
    }

    /// The signing key, base64url.
    pub fn signing_b64(&self) -> String {
        b64(self.signing.as_bytes())
    }

    /// The encryption key, base64url.
    pub fn encryption_b64(&self) -> String {
        b64(&self.encryption.to_bytes())
    }

    /// `SHA256:` and the base64url SHA-256 of a fixed label, the signing
    /// key and the encryption key: names this pair of keys everywhere.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"switchboard agent keys v1");
        h.update(self.signing.as_bytes());
        h.update(self.encryption.to_bytes());
        format!("SHA256:{}", b64(&h.finalize()))
    }

    /// Verifies an Ed25519 signature (strictly: no malleable encodings).
    pub(crate) fn verify(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(sig);
        self.signing.verify_strict(msg, &sig).is_ok()
    }
}

/// An agent's private keys. They stay with the agent (in its key file);
/// only [`AgentKeys::public`] is ever sent.
#[derive(Clone)]
pub struct AgentKeys {
    agent_id: String,
    signing: SigningKey,
    encryption: <Kem as hpke::Kem>::PrivateKey,
    public: PublicKeys,
}

impl std::fmt::Debug for AgentKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentKeys")
            .field("agent_id", &self.agent_id)
            .field("fingerprint", &self.public.fingerprint())
            .finish_non_exhaustive()
    }
}

impl AgentKeys {
    /// Fresh keys for `agent_id`, from the operating system's randomness.
    pub fn generate(agent_id: &str) -> Result<Self, SealError> {
        let seed = Zeroizing::new(random::<32>()?);
        let ikm = Zeroizing::new(random::<32>()?);
        let (encryption, _) = Kem::derive_keypair(&*ikm);
        Ok(Self::from_parts(
            agent_id,
            SigningKey::from_bytes(&seed),
            encryption,
        ))
    }

    fn from_parts(
        agent_id: &str,
        signing: SigningKey,
        encryption: <Kem as hpke::Kem>::PrivateKey,
    ) -> Self {
        let public = PublicKeys {
            signing: signing.verifying_key(),
            encryption: Kem::sk_to_pk(&encryption),
        };
        Self {
            agent_id: agent_id.to_owned(),
            signing,
            encryption,
            public,
        }
    }

    /// The agent these keys belong to.
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// The public halves.
    pub fn public(&self) -> &PublicKeys {
        &self.public
    }

    /// The fingerprint of the public halves.
    pub fn fingerprint(&self) -> String {
        self.public.fingerprint()
    }

    /// Signs `msg` with the Ed25519 key.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }

    pub(crate) fn encryption_key(&self) -> &<Kem as hpke::Kem>::PrivateKey {
        &self.encryption
    }

    /// The key file's contents (private keys included: keep it 0600).
    pub fn to_file(&self) -> KeyFile {
        KeyFile {
            agent_id: self.agent_id.clone(),
            fingerprint: self.fingerprint(),
            signing_key: b64(self.signing.as_bytes()),
            encryption_key: b64(&self.encryption.to_bytes()),
            public_signing_key: self.public.signing_b64(),
            public_encryption_key: self.public.encryption_b64(),
        }
    }

    /// Keys from a key file; the public halves and fingerprint in the file
    /// must match the private keys.
    pub fn from_file(file: &KeyFile) -> Result<Self, SealError> {
        let seed = Zeroizing::new(unb64_array::<32>("signing_key", &file.signing_key)?);
        let enc = Zeroizing::new(unb64_array::<32>("encryption_key", &file.encryption_key)?);
        let encryption = <Kem as hpke::Kem>::PrivateKey::from_bytes(&*enc).map_err(|_| {
            SealError::Malformed {
                field: "encryption_key",
                reason: "not an X25519 private key".into(),
            }
        })?;
        let keys = Self::from_parts(&file.agent_id, SigningKey::from_bytes(&seed), encryption);
        if keys.public.signing_b64() != file.public_signing_key
            || keys.public.encryption_b64() != file.public_encryption_key
            || keys.fingerprint() != file.fingerprint
        {
            return Err(SealError::Malformed {
                field: "fingerprint",
                reason:
                    "the public keys or fingerprint in the key file do not match its private keys"
                        .into(),
            });
        }
        Ok(keys)
    }
}

/// An agent's key file (JSON). The private keys are the 32-byte Ed25519
/// seed and the 32-byte X25519 private key (RFC 9180 serialization),
/// base64url.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// The agent.
    pub agent_id: String,
    /// The fingerprint of the public keys.
    pub fingerprint: String,
    /// Private: the Ed25519 seed.
    pub signing_key: String,
    /// Private: the X25519 key.
    pub encryption_key: String,
    /// The Ed25519 public key.
    pub public_signing_key: String,
    /// The X25519 public key.
    pub public_encryption_key: String,
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFile")
            .field("agent_id", &self.agent_id)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}
