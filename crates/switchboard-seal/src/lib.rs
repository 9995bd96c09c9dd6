//! End-to-end sealed messages between agents.
//!
//! Each agent holds two key pairs that never leave it: an Ed25519 key that
//! signs what it sends and an X25519 key that messages to it are encrypted
//! to ([`AgentKeys`]). The hub publishes only the public halves
//! ([`PublicKeys`], named by their [`fingerprint`](PublicKeys::fingerprint)).
//!
//! A [`SealedMessage`] is the payload encrypted to the recipient with HPKE
//! (RFC 9180, base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
//! ChaCha20-Poly1305), its routing metadata bound in as associated data,
//! and the sender's Ed25519 signature over the metadata, the encapsulated
//! key and the ciphertext. The hub can route and store it, and check who
//! sent it, but cannot read it; nobody can change it, send it on to
//! another recipient, or pass it off as another sender's. The recipient's
//! [`ReplayGuard`] refuses a message seen before or sent outside its
//! window.
//!
//! The byte layouts signed and bound are documented in
//! `docs/sealed-messages.md`, so that other implementations can
//! interoperate; they use [`lp`] (a 4-byte big-endian length, then the
//! bytes) for every field.
//!
//! No IO here: the hub and the client each fetch keys their own way.

mod envelope;
mod keys;
mod proof;
mod replay;

pub use envelope::{Kind, Metadata, SealedMessage};
pub use keys::{AgentKeys, KeyFile, PublicKeys};
pub use proof::{Challenge, open_challenge, registration_statement, seal_challenge};
pub use replay::ReplayGuard;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The envelope version this crate writes and reads.
pub const VERSION: u32 = 1;
/// The HPKE suite of every sealed message: KEM 0x0020, KDF 0x0001,
/// AEAD 0x0003.
pub const SUITE: &str = "DHKEM(X25519,HKDF-SHA256)/HKDF-SHA256/ChaCha20Poly1305";
/// The `datacontenttype` of an event whose data is a sealed message.
pub const CONTENT_TYPE: &str = "application/vnd.switchboard.sealed+json";

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::ChaCha20Poly1305;

/// Why a message, a key or a proof was refused. Each has a stable
/// [`code`](SealError::code) the API and the CLI report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// A field is missing, malformed or of the wrong size.
    #[error("{field}: {reason}")]
    Malformed {
        /// The field, as named in the envelope.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An envelope version or suite this crate does not speak.
    #[error("unsupported {what}: {given}")]
    Unsupported {
        /// `version` or `suite`.
        what: &'static str,
        /// What the envelope said.
        given: String,
    },
    /// Sent by another agent than the one it names as its sender.
    #[error("{0}")]
    SenderMismatch(String),
    /// Addressed to another agent, or to another key of this agent.
    #[error("{0}")]
    WrongRecipient(String),
    /// The signature does not verify: the message was altered, or was not
    /// signed by the key it names.
    #[error("the sender's signature does not verify: the message was altered or not signed by {0}")]
    BadSignature(String),
    /// Signed with a key that was revoked.
    #[error("signed with key {0}, which has been revoked")]
    KeyRevoked(String),
    /// Signed with a key that was replaced by a newer one.
    #[error("signed with key {0}, which has been rotated out")]
    KeyRotated(String),
    /// Signed with a key the directory does not know for the sender.
    #[error("signed with key {0}, which is not one of the sender's keys")]
    UnknownKey(String),
    /// Sent too long ago, or too far in the future.
    #[error(
        "sent at {sent_at_ms} ms, outside the window of {window_ms} ms around now ({now_ms} ms)"
    )]
    OutsideWindow {
        /// The message's `sent_at`.
        sent_at_ms: i64,
        /// Now, at the recipient.
        now_ms: i64,
        /// How far either way is accepted.
        window_ms: i64,
    },
    /// This message (sender and id) was accepted before.
    #[error("message {id} from {from} was already received")]
    Replayed {
        /// The sender.
        from: String,
        /// The message id.
        id: String,
    },
    /// The ciphertext does not decrypt with the recipient's key.
    #[error("the message does not decrypt with this key")]
    DecryptFailed,
    /// A proof of possession is missing or does not verify.
    #[error("{0}")]
    BadProof(String),
    /// The operating system gave no randomness.
    #[error("no randomness from the operating system: {0}")]
    Randomness(String),
}

impl SealError {
    /// A stable code for the error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed { .. } => "SEALED_MALFORMED",
            Self::Unsupported { .. } => "SEALED_UNSUPPORTED",
            Self::SenderMismatch(_) => "SENDER_MISMATCH",
            Self::WrongRecipient(_) => "WRONG_RECIPIENT",
            Self::BadSignature(_) => "SIGNATURE_INVALID",
            Self::KeyRevoked(_) => "KEY_REVOKED",
            Self::KeyRotated(_) => "KEY_ROTATED",
            Self::UnknownKey(_) => "KEY_UNKNOWN",
            Self::OutsideWindow { .. } => "MESSAGE_EXPIRED",
            Self::Replayed { .. } => "MESSAGE_REPLAYED",
            Self::DecryptFailed => "DECRYPT_FAILED",
            Self::BadProof(_) => "PROOF_INVALID",
            Self::Randomness(_) => "NO_RANDOMNESS",
        }
    }
}

/// Appends `bytes` to `out` as a 4-byte big-endian length, then the bytes.
pub fn lp(out: &mut Vec<u8>, bytes: &[u8]) {
    // Fields are ids, keys and ciphertexts far below 4 GiB; a longer one
    // is cut off at the length's limit rather than wrapped.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&bytes[..len as usize]);
}

/// Unpadded base64url, the encoding of every binary field.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes an unpadded base64url field.
pub fn unb64(field: &'static str, s: &str) -> Result<Vec<u8>, SealError> {
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| SealError::Malformed {
            field,
            reason: format!("not base64url: {e}"),
        })
}

/// Decodes an unpadded base64url field of exactly `N` bytes.
pub fn unb64_array<const N: usize>(field: &'static str, s: &str) -> Result<[u8; N], SealError> {
    let v = unb64(field, s)?;
    let n = v.len();
    v.try_into().map_err(|_| SealError::Malformed {
        field,
        reason: format!("{n} bytes where {N} are expected"),
    })
}

/// A fresh message id: 128 random bits, hex.
pub fn new_message_id() -> Result<String, SealError> {
    Ok(base16ct::lower::encode_string(&random::<16>()?))
}

fn random<const N: usize>() -> Result<[u8; N], SealError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| SealError::Randomness(e.to_string()))?;
    Ok(buf)
}

#[cfg(test)]
mod tests;
