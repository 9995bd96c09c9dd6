//! Proof that an agent holds the private halves of the keys it registers.
//!
//! The hub answers a registration attempt with a challenge: a random nonce
//! encrypted to the offered X25519 key (only its holder can read it). The
//! agent opens it and signs the [`registration_statement`] — its id, the
//! challenge id, the nonce and both public keys — with the offered Ed25519
//! key. When the agent already has keys, its current signing key signs the
//! same statement too, so a stolen credential alone cannot replace them.

use hpke::{Deserializable, OpModeR, OpModeS, Serializable};

use crate::{Aead, AgentKeys, Kdf, Kem, PublicKeys, SealError, b64, lp, unb64};

const INFO: &[u8] = b"switchboard key challenge v1";
const LABEL: &[u8] = b"switchboard key registration v1";

/// A challenge's nonce, encrypted to the offered encryption key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The HPKE encapsulated key, base64url.
    pub enc: String,
    /// The encrypted nonce, base64url.
    pub ciphertext: String,
}

fn challenge_aad(agent_id: &str, challenge_id: &str) -> Vec<u8> {
    let mut aad = Vec::new();
    lp(&mut aad, agent_id.as_bytes());
    lp(&mut aad, challenge_id.as_bytes());
    aad
}

/// Encrypts `nonce` to `keys`' encryption key (the hub's side).
pub fn seal_challenge(
    keys: &PublicKeys,
    agent_id: &str,
    challenge_id: &str,
    nonce: &[u8],
) -> Result<Challenge, SealError> {
    let (enc, ct) = hpke::single_shot_seal::<Aead, Kdf, Kem>(
        &OpModeS::Base,
        &keys.encryption,
        INFO,
        nonce,
        &challenge_aad(agent_id, challenge_id),
    )
    .map_err(|e| SealError::Malformed {
        field: "encryption_key",
        reason: format!("cannot encrypt to it: {e}"),
    })?;
    Ok(Challenge {
        enc: b64(&enc.to_bytes()),
        ciphertext: b64(&ct),
    })
}

/// Decrypts a challenge's nonce with the agent's encryption key (the
/// agent's side).
pub fn open_challenge(
    me: &AgentKeys,
    challenge_id: &str,
    challenge: &Challenge,
) -> Result<Vec<u8>, SealError> {
    let enc = unb64("enc", &challenge.enc)?;
    let ct = unb64("ciphertext", &challenge.ciphertext)?;
    let enc =
        <Kem as hpke::Kem>::EncappedKey::from_bytes(&enc).map_err(|_| SealError::DecryptFailed)?;
    hpke::single_shot_open::<Aead, Kdf, Kem>(
        &OpModeR::Base,
        me.encryption_key(),
        &enc,
        INFO,
        &ct,
        &challenge_aad(me.agent_id(), challenge_id),
    )
    .map_err(|_| SealError::DecryptFailed)
}

/// What a registration's signatures cover.
pub fn registration_statement(
    agent_id: &str,
    challenge_id: &str,
    nonce: &[u8],
    keys: &PublicKeys,
) -> Vec<u8> {
    let mut out = LABEL.to_vec();
    lp(&mut out, agent_id.as_bytes());
    lp(&mut out, challenge_id.as_bytes());
    lp(&mut out, nonce);
    lp(&mut out, keys.signing.as_bytes());
    lp(&mut out, &keys.encryption.to_bytes());
    out
}

impl PublicKeys {
    /// Checks a base64url Ed25519 signature of `msg` by these keys;
    /// `what` names the signature in the error.
    pub fn check_signature(&self, what: &str, msg: &[u8], sig: &str) -> Result<(), SealError> {
        let sig = crate::unb64_array::<64>("signature", sig)?;
        if self.verify(msg, &sig) {
            Ok(())
        } else {
            Err(SealError::BadProof(format!(
                "{what} does not verify with key {}",
                self.fingerprint()
            )))
        }
    }
}
