//! The sealed message and how it is made, checked and opened.

use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};

use crate::{
    Aead, AgentKeys, Kdf, Kem, PublicKeys, SUITE, SealError, VERSION, b64, lp, unb64, unb64_array,
};

/// The HPKE `info` of every sealed message.
const INFO: &[u8] = b"switchboard sealed message v1";
/// What the sender's signature covers starts with this label.
const SIGNED_LABEL: &[u8] = b"switchboard sealed message signature v1";

/// What a sealed message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A one-way message.
    Message,
    /// A request that waits for a reply.
    Request,
    /// The reply to a request (same correlation id).
    Reply,
}

impl Kind {
    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Request => "request",
            Self::Reply => "reply",
        }
    }
}

/// A sealed message's routing metadata: in clear, so the hub can route
/// it, and bound to the ciphertext and signed, so nobody can change it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Unique per sender: the recipient refuses a second message with the
    /// same sender and id.
    pub id: String,
    /// The sending agent.
    pub from: String,
    /// The receiving agent.
    pub to: String,
    /// What it is for.
    pub kind: Kind,
    /// Ties a request to its reply.
    pub correlation_id: String,
    /// When it was sealed, in Unix milliseconds.
    pub sent_at_ms: i64,
}

/// A sealed message (JSON), as it travels and is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedMessage {
    /// The envelope version ([`VERSION`]).
    pub v: u32,
    /// The HPKE suite ([`SUITE`]).
    pub suite: String,
    /// The message id.
    pub id: String,
    /// The sender.
    pub from: String,
    /// The recipient.
    pub to: String,
    /// `message`, `request` or `reply`.
    pub kind: Kind,
    /// The correlation id.
    pub correlation_id: String,
    /// When it was sealed (Unix ms).
    pub sent_at: i64,
    /// The fingerprint of the sender's keys that signed it.
    pub sender_key: String,
    /// The fingerprint of the recipient's keys it is encrypted to.
    pub recipient_key: String,
    /// The HPKE encapsulated key, base64url.
    pub enc: String,
    /// The ciphertext with its tag, base64url.
    pub ciphertext: String,
    /// The sender's Ed25519 signature, base64url.
    pub signature: String,
}

fn aad(v: u32, suite: &str, m: &Metadata, sender_key: &str, recipient_key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    lp(&mut out, v.to_string().as_bytes());
    lp(&mut out, suite.as_bytes());
    lp(&mut out, m.id.as_bytes());
    lp(&mut out, m.from.as_bytes());
    lp(&mut out, m.to.as_bytes());
    lp(&mut out, m.kind.as_str().as_bytes());
    lp(&mut out, m.correlation_id.as_bytes());
    lp(&mut out, m.sent_at_ms.to_string().as_bytes());
    lp(&mut out, sender_key.as_bytes());
    lp(&mut out, recipient_key.as_bytes());
    out
}

fn signed_bytes(aad: &[u8], enc: &[u8], ciphertext: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIGNED_LABEL.len() + aad.len() + ciphertext.len() + 64);
    out.extend_from_slice(SIGNED_LABEL);
    lp(&mut out, aad);
    lp(&mut out, enc);
    lp(&mut out, ciphertext);
    out
}

impl SealedMessage {
    /// Encrypts `plaintext` to `recipient` and signs it with `sender`'s
    /// key. `meta.from` must be the sender's agent.
    pub fn seal(
        sender: &AgentKeys,
        recipient: &PublicKeys,
        meta: Metadata,
        plaintext: &[u8],
    ) -> Result<Self, SealError> {
        if meta.from != sender.agent_id() {
            return Err(SealError::Malformed {
                field: "from",
                reason: format!(
                    "these keys belong to {}, not to {}",
                    sender.agent_id(),
                    meta.from
                ),
            });
        }
        let sender_key = sender.fingerprint();
        let recipient_key = recipient.fingerprint();
        let aad = aad(VERSION, SUITE, &meta, &sender_key, &recipient_key);
        let (enc, ciphertext) = hpke::single_shot_seal::<Aead, Kdf, Kem>(
            &OpModeS::Base,
            &recipient.encryption,
            INFO,
            plaintext,
            &aad,
        )
        .map_err(|e| SealError::Malformed {
            field: "recipient_key",
            reason: format!("cannot encrypt to it: {e}"),
        })?;
        let enc = enc.to_bytes();
        let signature = sender.sign(&signed_bytes(&aad, &enc, &ciphertext));
        Ok(Self {
            v: VERSION,
            suite: SUITE.to_owned(),
            id: meta.id,
            from: meta.from,
            to: meta.to,
            kind: meta.kind,
            correlation_id: meta.correlation_id,
            sent_at: meta.sent_at_ms,
            sender_key,
            recipient_key,
            enc: b64(&enc),
            ciphertext: b64(&ciphertext),
            signature: b64(&signature),
        })
    }

    /// The routing metadata.
    pub fn metadata(&self) -> Metadata {
        Metadata {
            id: self.id.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            kind: self.kind,
            correlation_id: self.correlation_id.clone(),
            sent_at_ms: self.sent_at,
        }
    }

    /// Checks the version, the suite and every field's shape.
    pub fn check_form(&self) -> Result<(), SealError> {
        if self.v != VERSION {
            return Err(SealError::Unsupported {
                what: "version",
                given: self.v.to_string(),
            });
        }
        if self.suite != SUITE {
            return Err(SealError::Unsupported {
                what: "suite",
                given: self.suite.clone(),
            });
        }
        for (field, value) in [
            ("id", &self.id),
            ("from", &self.from),
            ("to", &self.to),
            ("correlation_id", &self.correlation_id),
            ("sender_key", &self.sender_key),
            ("recipient_key", &self.recipient_key),
        ] {
            if value.is_empty() || value.len() > 256 {
                return Err(SealError::Malformed {
                    field,
                    reason: "must be 1 to 256 characters".into(),
                });
            }
        }
        unb64_array::<32>("enc", &self.enc)?;
        unb64_array::<64>("signature", &self.signature)?;
        if unb64("ciphertext", &self.ciphertext)?.len() < 16 {
            return Err(SealError::Malformed {
                field: "ciphertext",
                reason: "shorter than its authentication tag".into(),
            });
        }
        Ok(())
    }

    fn aad(&self) -> Vec<u8> {
        aad(
            self.v,
            &self.suite,
            &self.metadata(),
            &self.sender_key,
            &self.recipient_key,
        )
    }

    /// Checks the form, then the signature with the sender's keys (which
    /// must be the ones the message names).
    pub fn verify(&self, sender: &PublicKeys) -> Result<(), SealError> {
        self.check_form()?;
        let fingerprint = sender.fingerprint();
        if fingerprint != self.sender_key {
            return Err(SealError::UnknownKey(self.sender_key.clone()));
        }
        let enc = unb64("enc", &self.enc)?;
        let ciphertext = unb64("ciphertext", &self.ciphertext)?;
        let sig = unb64_array::<64>("signature", &self.signature)?;
        if !sender.verify(&signed_bytes(&self.aad(), &enc, &ciphertext), &sig) {
            return Err(SealError::BadSignature(fingerprint));
        }
        Ok(())
    }

    /// Verifies the message from `sender` and decrypts it with `me`'s keys.
    /// Refuses a message addressed to another agent or another key.
    /// (Replays are the caller's to refuse: see [`crate::ReplayGuard`].)
    pub fn open(&self, me: &AgentKeys, sender: &PublicKeys) -> Result<Vec<u8>, SealError> {
        self.check_form()?;
        if self.to != me.agent_id() {
            return Err(SealError::WrongRecipient(format!(
                "the message is addressed to {}, not to {}",
                self.to,
                me.agent_id()
            )));
        }
        let mine = me.fingerprint();
        if self.recipient_key != mine {
            return Err(SealError::WrongRecipient(format!(
                "the message is sealed to key {}, not to this key {mine}",
                self.recipient_key
            )));
        }
        self.verify(sender)?;
        let enc = unb64("enc", &self.enc)?;
        let ciphertext = unb64("ciphertext", &self.ciphertext)?;
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&enc)
            .map_err(|_| SealError::DecryptFailed)?;
        hpke::single_shot_open::<Aead, Kdf, Kem>(
            &OpModeR::Base,
            me.encryption_key(),
            &enc,
            INFO,
            &ciphertext,
            &self.aad(),
        )
        .map_err(|_| SealError::DecryptFailed)
    }
}
