//! Agents' public keys: registration with proof of possession, rotation
//! signed by the previous key, revocation, and the hub's check of sealed
//! messages (who sent them, to which key, when, and only once).
//!
//! The hub holds public keys only. A registration starts with a
//! challenge ([`Auth::key_challenge`]): a nonce encrypted to the offered
//! encryption key, remembered for [`CHALLENGE_TTL_MS`]. The agent answers
//! ([`Auth::register_keys`]) with the offered signing key's signature over
//! the statement that names the nonce (and, when it has keys already, the
//! current key's signature over the same statement). Each agent has one
//! current key pair; older ones stay in its history as rotated or revoked,
//! and never come back.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use switchboard_core::{FieldError, UnixMillis};
use switchboard_seal::{PublicKeys, SealError, SealedMessage};

use crate::store::AuthWrite;
use crate::{Auth, AuthError, secret};

/// How long a key challenge can be answered.
pub const CHALLENGE_TTL_MS: i64 = 5 * 60 * 1000;
/// Challenges open at once per agent; a new one beyond this replaces the
/// oldest.
const CHALLENGES_PER_AGENT: usize = 8;
/// Sealed message ids the hub remembers (about 150 bytes each); under a
/// load that fills it within the window, messages older than the oldest
/// remembered one are refused as expired.
const ROUTED_IDS: usize = 200_000;

/// Where a key pair is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// The agent's keys now: messages are sealed to and signed by it.
    Current,
    /// Replaced by a newer pair.
    Rotated,
    /// Revoked: nothing it signed is accepted.
    Revoked,
}

impl KeyStatus {
    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Current => "current",
            Self::Rotated => "rotated",
            Self::Revoked => "revoked",
        }
    }
}

/// One of an agent's key pairs (public halves only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentKeyRecord {
    /// The pair's fingerprint.
    pub fingerprint: String,
    /// Ed25519 public key, base64url.
    pub signing_key: String,
    /// X25519 public key, base64url.
    pub encryption_key: String,
    /// Where it is in its life.
    pub status: KeyStatus,
    /// When it was registered.
    pub created_at: UnixMillis,
    /// When a newer pair replaced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<UnixMillis>,
    /// When it was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<UnixMillis>,
    /// Why it was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_reason: Option<String>,
    /// The fingerprint of the pair that signed this one in (a rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
}

/// An agent's key history, oldest first; at most one is current.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentIdentity {
    /// The agent.
    pub agent_id: String,
    /// Its key pairs, oldest first.
    pub keys: Vec<AgentKeyRecord>,
}

impl AgentIdentity {
    /// The current pair, if any.
    pub fn current(&self) -> Option<&AgentKeyRecord> {
        self.keys.iter().find(|k| k.status == KeyStatus::Current)
    }

    fn find(&self, fingerprint: &str) -> Option<&AgentKeyRecord> {
        self.keys.iter().find(|k| k.fingerprint == fingerprint)
    }
}

/// A challenge handed out, waiting for its answer.
#[derive(Debug, Clone)]
struct Pending {
    agent_id: String,
    fingerprint: String,
    nonce: [u8; 32],
    expires_at: UnixMillis,
}

/// What [`Auth::key_challenge`] answers.
#[derive(Debug, Clone)]
pub struct KeyChallenge {
    /// Names the challenge in the answer.
    pub challenge_id: String,
    /// The nonce, encrypted to the offered encryption key.
    pub sealed_nonce: switchboard_seal::Challenge,
    /// When it can no longer be answered.
    pub expires_at: UnixMillis,
}

/// A registration: the offered keys and the proofs.
#[derive(Debug, Clone)]
pub struct KeyRegistration {
    /// The challenge answered.
    pub challenge_id: String,
    /// Ed25519 public key, base64url.
    pub signing_key: String,
    /// X25519 public key, base64url.
    pub encryption_key: String,
    /// The offered signing key's signature over the statement.
    pub signature: String,
    /// The current signing key's signature over the same statement, when
    /// the agent has a current pair.
    pub rotation_signature: Option<String>,
}

/// The challenges waiting for answers, and the sealed messages the hub
/// has routed recently (its own replay guard).
#[derive(Default)]
pub(crate) struct IdentityState {
    pending: HashMap<String, Pending>,
    routed: Option<switchboard_seal::ReplayGuard>,
}

fn parse_keys(signing: &str, encryption: &str) -> Result<PublicKeys, AuthError> {
    PublicKeys::from_b64(signing, encryption).map_err(|e| match e {
        SealError::Malformed { field, reason } => {
            AuthError::Invalid(vec![FieldError::new(field, reason)])
        }
        other => AuthError::Seal(other),
    })
}

fn public_of(rec: &AgentKeyRecord) -> Result<PublicKeys, AuthError> {
    PublicKeys::from_b64(&rec.signing_key, &rec.encryption_key)
        .map_err(|e| AuthError::Internal(format!("stored key {}: {e}", rec.fingerprint)))
}

impl Auth {
    /// Starts a key registration for `agent_id`: checks the offered keys
    /// and encrypts a fresh nonce to the encryption key.
    pub fn key_challenge(
        &self,
        agent_id: &str,
        signing_key: &str,
        encryption_key: &str,
    ) -> Result<KeyChallenge, AuthError> {
        let keys = parse_keys(signing_key, encryption_key)?;
        let nonce = secret::random_bytes::<32>().map_err(AuthError::Internal)?;
        let challenge_id = secret::random_id().map_err(AuthError::Internal)?;
        let sealed_nonce =
            switchboard_seal::seal_challenge(&keys, agent_id, &challenge_id, &nonce)?;
        let now = self.now();
        let expires_at = now + CHALLENGE_TTL_MS;
        let mut ids = self.identities();
        ids.pending.retain(|_, p| p.expires_at > now);
        let mut mine: Vec<(UnixMillis, String)> = ids
            .pending
            .iter()
            .filter(|(_, p)| p.agent_id == agent_id)
            .map(|(id, p)| (p.expires_at, id.clone()))
            .collect();
        if mine.len() >= CHALLENGES_PER_AGENT {
            mine.sort();
            for (_, id) in mine.iter().take(mine.len() + 1 - CHALLENGES_PER_AGENT) {
                ids.pending.remove(id);
            }
        }
        ids.pending.insert(
            challenge_id.clone(),
            Pending {
                agent_id: agent_id.to_owned(),
                fingerprint: keys.fingerprint(),
                nonce,
                expires_at,
            },
        );
        Ok(KeyChallenge {
            challenge_id,
            sealed_nonce,
            expires_at,
        })
    }

    /// Registers the keys a challenge was made for, given proof that the
    /// agent holds both private keys (and, when it has a current pair, the
    /// current signing key's consent). The current pair, if any, becomes
    /// rotated.
    pub async fn register_keys(
        &self,
        agent_id: &str,
        reg: KeyRegistration,
    ) -> Result<AgentKeyRecord, AuthError> {
        let keys = parse_keys(&reg.signing_key, &reg.encryption_key)?;
        let fingerprint = keys.fingerprint();
        let now = self.now();
        // A challenge is answered once, right or wrong.
        let pending = self.identities().pending.remove(&reg.challenge_id);
        let pending = match pending {
            Some(p) if p.expires_at > now && p.agent_id == agent_id => p,
            _ => {
                return Err(AuthError::Seal(SealError::BadProof(format!(
                    "challenge {} is unknown, expired, already answered or not for agent {agent_id}: ask for a new one",
                    reg.challenge_id
                ))));
            }
        };
        if pending.fingerprint != fingerprint {
            return Err(AuthError::Seal(SealError::BadProof(
                "the keys differ from those the challenge was made for".into(),
            )));
        }
        let statement = switchboard_seal::registration_statement(
            agent_id,
            &reg.challenge_id,
            &pending.nonce,
            &keys,
        );
        keys.check_signature("the proof of possession", &statement, &reg.signature)?;

        let _w = self.0.writes.lock().await;
        let mut identity = self.identity(agent_id).unwrap_or_else(|| AgentIdentity {
            agent_id: agent_id.to_owned(),
            keys: Vec::new(),
        });
        if identity.find(&fingerprint).is_some() {
            return Err(AuthError::Seal(SealError::BadProof(format!(
                "keys {fingerprint} were registered before; a rotated or revoked pair never comes back"
            ))));
        }
        let mut signed_by = None;
        if let Some(current) = identity.current() {
            let Some(sig) = &reg.rotation_signature else {
                return Err(AuthError::Seal(SealError::BadProof(format!(
                    "agent {agent_id} has current keys {}: a rotation needs rotation_signature, the statement signed by them too (or revoke them first)",
                    current.fingerprint
                ))));
            };
            public_of(current)?.check_signature("rotation_signature", &statement, sig)?;
            signed_by = Some(current.fingerprint.clone());
        }
        for k in &mut identity.keys {
            if k.status == KeyStatus::Current {
                k.status = KeyStatus::Rotated;
                k.rotated_at = Some(now);
            }
        }
        let record = AgentKeyRecord {
            fingerprint,
            signing_key: keys.signing_b64(),
            encryption_key: keys.encryption_b64(),
            status: KeyStatus::Current,
            created_at: now,
            rotated_at: None,
            revoked_at: None,
            revoked_reason: None,
            signed_by,
        };
        identity.keys.push(record.clone());
        self.store_identity(identity).await?;
        Ok(record)
    }

    /// Revokes one of the agent's key pairs: nothing it signed is accepted
    /// from now on. Revoking the current pair leaves the agent without
    /// keys until it registers new ones.
    pub async fn revoke_keys(
        &self,
        agent_id: &str,
        fingerprint: &str,
        reason: Option<String>,
    ) -> Result<AgentKeyRecord, AuthError> {
        let _w = self.0.writes.lock().await;
        let not_found = || AuthError::NotFound {
            code: "KEY_NOT_FOUND",
            what: format!("key {fingerprint} of agent {agent_id}"),
        };
        let mut identity = self.identity(agent_id).ok_or_else(not_found)?;
        let now = self.now();
        let rec = identity
            .keys
            .iter_mut()
            .find(|k| k.fingerprint == fingerprint)
            .ok_or_else(not_found)?;
        if rec.status != KeyStatus::Revoked {
            rec.status = KeyStatus::Revoked;
            rec.revoked_at = Some(now);
            rec.revoked_reason = reason;
        }
        let rec = rec.clone();
        self.store_identity(identity).await?;
        Ok(rec)
    }

    /// The agent's key history, if it ever registered keys.
    pub fn identity(&self, agent_id: &str) -> Option<AgentIdentity> {
        self.read().identities.get(agent_id).map(|i| (**i).clone())
    }

    /// The agent's current public keys.
    pub fn current_keys(&self, agent_id: &str) -> Option<(String, PublicKeys)> {
        let state = self.read();
        let current = state.identities.get(agent_id)?.current()?.clone();
        drop(state);
        let keys = public_of(&current).ok()?;
        Some((current.fingerprint, keys))
    }

    /// The hub's check of a sealed message before it routes it: well
    /// formed; from the agent that sends it, signed by that agent's current
    /// keys; sealed to the recipient's current keys; sent within the
    /// window; and not routed before.
    pub fn check_sealed(&self, msg: &SealedMessage, sender: &str) -> Result<(), SealError> {
        msg.check_form()?;
        if msg.from != sender {
            return Err(SealError::SenderMismatch(format!(
                "the message names {} as its sender, but {sender} sends it",
                msg.from
            )));
        }
        let Some(identity) = self.read().identities.get(&msg.from).cloned() else {
            return Err(SealError::UnknownKey(format!(
                "{} (agent {} has no registered keys)",
                msg.sender_key, msg.from
            )));
        };
        let Some(rec) = identity.find(&msg.sender_key) else {
            return Err(SealError::UnknownKey(msg.sender_key.clone()));
        };
        match rec.status {
            KeyStatus::Revoked => return Err(SealError::KeyRevoked(rec.fingerprint.clone())),
            KeyStatus::Rotated => return Err(SealError::KeyRotated(rec.fingerprint.clone())),
            KeyStatus::Current => {}
        }
        let keys = public_of(rec).map_err(|e| SealError::UnknownKey(e.to_string()))?;
        msg.verify(&keys)?;
        match self.current_keys(&msg.to) {
            None => {
                return Err(SealError::WrongRecipient(format!(
                    "agent {} has no registered keys to seal to",
                    msg.to
                )));
            }
            Some((fp, _)) if fp != msg.recipient_key => {
                return Err(SealError::WrongRecipient(format!(
                    "the message is sealed to key {}, but the current key of agent {} is {fp}",
                    msg.recipient_key, msg.to
                )));
            }
            Some(_) => {}
        }
        let window = i64::try_from(self.0.config.seal_window.as_millis()).unwrap_or(i64::MAX);
        let now = self.now();
        self.identities()
            .routed
            .get_or_insert_with(|| switchboard_seal::ReplayGuard::with_capacity(window, ROUTED_IDS))
            .check(&msg.from, &msg.id, msg.sent_at, now)
    }

    async fn store_identity(&self, identity: AgentIdentity) -> Result<(), AuthError> {
        self.commit(vec![AuthWrite::Identity(identity.clone())])
            .await?;
        self.write()
            .identities
            .insert(identity.agent_id.clone(), Arc::new(identity));
        Ok(())
    }

    fn identities(&self) -> std::sync::MutexGuard<'_, IdentityState> {
        self.0
            .identity
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
