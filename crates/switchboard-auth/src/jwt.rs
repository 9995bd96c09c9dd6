//! The hub's signing keys and the JWTs it issues with them.
//!
//! Signing and checking are done by the `jsonwebtoken` crate (with its
//! RustCrypto backend); this module only chooses keys and rules:
//! - each key has a `kid` (its RFC 7638 thumbprint) and one algorithm
//!   (EdDSA by default, or RS256); a token is checked only with the key its
//!   `kid` names and only if its header names that key's algorithm, so
//!   `alg: none` and HS256-with-the-public-key tokens fail;
//! - `exp`, `nbf`, `iat`, `iss`, `aud`, `sub` and `jti` are required;
//!   times get a small leeway for clock skew.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::traits::PublicKeyParts;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use switchboard_core::UnixMillis;

use crate::secret::random_bytes;

/// The algorithm of a signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyAlgorithm {
    /// Ed25519 signatures (the default): small and fast.
    EdDSA,
    /// RSASSA-PKCS1-v1_5 with SHA-256, for verifiers that only know RSA.
    RS256,
}

impl KeyAlgorithm {
    fn jwt(self) -> Algorithm {
        match self {
            KeyAlgorithm::EdDSA => Algorithm::EdDSA,
            KeyAlgorithm::RS256 => Algorithm::RS256,
        }
    }

    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::EdDSA => "EdDSA",
            KeyAlgorithm::RS256 => "RS256",
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "EdDSA" => Ok(KeyAlgorithm::EdDSA),
            "RS256" => Ok(KeyAlgorithm::RS256),
            other => Err(format!(
                "unsupported signing algorithm {other:?}; use EdDSA or RS256"
            )),
        }
    }
}

/// A signing key as stored.
#[derive(Clone, Serialize, Deserialize)]
pub struct SigningKeyRecord {
    /// The key id: its JWK thumbprint.
    pub kid: String,
    /// Its algorithm.
    pub alg: KeyAlgorithm,
    /// The private key: PKCS#8 DER (Ed25519) or PKCS#1 DER (RSA), base64.
    pub private_der: String,
    /// When it was made.
    pub created_at: UnixMillis,
    /// When a newer key replaced it for signing; it still verifies the
    /// tokens it signed until they expire.
    pub retired_at: Option<UnixMillis>,
}

impl fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyRecord")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

/// A usable signing key: the record plus its parsed keys and public JWK.
pub(crate) struct KeyPair {
    pub(crate) record: SigningKeyRecord,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The public key as a JWK (with `kid`, `alg`, `use`).
    pub(crate) jwk: Value,
}

impl KeyPair {
    /// Makes a new key. RSA key generation takes a while: call it off the
    /// async threads.
    pub(crate) fn generate(alg: KeyAlgorithm, now: UnixMillis) -> Result<Self, String> {
        let der = match alg {
            KeyAlgorithm::EdDSA => {
                let seed = random_bytes::<32>()?;
                let key = ed25519_dalek::SigningKey::from_bytes(&seed);
                key.to_pkcs8_der()
                    .map_err(|e| format!("encode the Ed25519 key: {e}"))?
                    .as_bytes()
                    .to_vec()
            }
            KeyAlgorithm::RS256 => {
                use rsa::Generate;
                let key = rsa::PrivateKey::try_generate()
                    .map_err(|e| format!("generate the RSA key: {e}"))?;
                key.to_pkcs1_der()
                    .map_err(|e| format!("encode the RSA key: {e}"))?
                    .as_bytes()
                    .to_vec()
            }
        };
        Self::from_der(alg, &der, now, None)
    }

    /// Rebuilds a stored key.
    pub(crate) fn from_record(record: &SigningKeyRecord) -> Result<Self, String> {
        let der = URL_SAFE_NO_PAD
            .decode(&record.private_der)
            .map_err(|e| format!("key {}: not base64: {e}", record.kid))?;
        let pair = Self::from_der(record.alg, &der, record.created_at, record.retired_at)?;
        if pair.record.kid != record.kid {
            return Err(format!(
                "key {}: the stored key does not match its id",
                record.kid
            ));
        }
        Ok(pair)
    }

    fn from_der(
        alg: KeyAlgorithm,
        der: &[u8],
        created_at: UnixMillis,
        retired_at: Option<UnixMillis>,
    ) -> Result<Self, String> {
        let (encoding, decoding, mut jwk) = match alg {
            KeyAlgorithm::EdDSA => {
                use ed25519_dalek::pkcs8::DecodePrivateKey;
                let key = ed25519_dalek::SigningKey::from_pkcs8_der(der)
                    .map_err(|e| format!("decode the Ed25519 key: {e}"))?;
                let public = key.verifying_key().to_bytes();
                let x = URL_SAFE_NO_PAD.encode(public);
                (
                    EncodingKey::from_ed_der(der),
                    DecodingKey::from_ed_der(&public),
                    json!({"crv": "Ed25519", "kty": "OKP", "x": x}),
                )
            }
            KeyAlgorithm::RS256 => {
                let key = rsa::PrivateKey::from_pkcs1_der(der)
                    .map_err(|e| format!("decode the RSA key: {e}"))?;
                let (n, e) = (key.n_bytes(), key.e_bytes());
                (
                    EncodingKey::from_rsa_der(der),
                    DecodingKey::from_rsa_raw_components(&n, &e),
                    json!({"e": URL_SAFE_NO_PAD.encode(e), "kty": "RSA", "n": URL_SAFE_NO_PAD.encode(n)}),
                )
            }
        };
        // RFC 7638: the thumbprint hashes the required members, sorted,
        // without spaces; serde_json writes this object's keys in the
        // order given, which is already sorted.
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.to_string().as_bytes()));
        if let Value::Object(m) = &mut jwk {
            m.insert("kid".into(), Value::String(kid.clone()));
            m.insert("alg".into(), Value::String(alg.as_str().into()));
            m.insert("use".into(), Value::String("sig".into()));
        }
        Ok(Self {
            record: SigningKeyRecord {
                kid,
                alg,
                private_der: URL_SAFE_NO_PAD.encode(der),
                created_at,
                retired_at,
            },
            encoding,
            decoding,
            jwk,
        })
    }

    /// Signs `claims`.
    pub(crate) fn sign(&self, claims: &Claims) -> Result<String, String> {
        let mut header = Header::new(self.record.alg.jwt());
        header.kid = Some(self.record.kid.clone());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|e| e.to_string())
    }

    /// Checks `token`'s signature and claims with this key.
    pub(crate) fn verify(&self, token: &str, rules: &Rules) -> Result<Claims, TokenError> {
        let mut v = Validation::new(self.record.alg.jwt());
        v.leeway = rules.leeway_s;
        v.validate_nbf = true;
        v.set_issuer(&[&rules.issuer]);
        v.set_audience(&[&rules.audience]);
        v.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .map_err(|e| TokenError::from_jwt(e.kind()))?;
        let now = i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap_or(i64::MAX);
        if data.claims.iat > now + i64::try_from(rules.leeway_s).unwrap_or(0) {
            return Err(TokenError::Invalid("the token was issued in the future"));
        }
        Ok(data.claims)
    }
}

/// What a token must say to be accepted.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub(crate) issuer: String,
    pub(crate) audience: String,
    pub(crate) leeway_s: u64,
}

/// The claims of a hub token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The hub that issued it.
    pub iss: String,
    /// Who it is for.
    pub aud: String,
    /// The principal: an agent id.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Not valid before, seconds since the epoch.
    pub nbf: i64,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// The token's id, for revocation.
    pub jti: String,
    /// Space-separated scopes.
    pub scope: String,
    /// The principal's role.
    pub role: String,
}

/// Why a token was refused; the message is safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token has expired.
    #[error("the token has expired")]
    Expired,
    /// The token is not valid yet.
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    /// The signature does not verify.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// The `kid` names no key the hub holds (unknown, or rotated out).
    #[error("the token was signed by a key this hub does not accept (unknown or retired kid)")]
    UnknownKey,
    /// The header's algorithm is not the key's.
    #[error("the token's algorithm is not the one its key signs with")]
    WrongAlgorithm,
    /// The token was revoked.
    #[error("the token has been revoked")]
    Revoked,
    /// Anything else: malformed, wrong issuer or audience, missing claims.
    #[error("the token is invalid: {0}")]
    Invalid(&'static str),
}

impl TokenError {
    fn from_jwt(kind: &jsonwebtoken::errors::ErrorKind) -> Self {
        use jsonwebtoken::errors::ErrorKind as K;
        match kind {
            K::ExpiredSignature => TokenError::Expired,
            K::ImmatureSignature => TokenError::NotYetValid,
            K::InvalidSignature => TokenError::BadSignature,
            K::InvalidAlgorithm | K::InvalidAlgorithmName | K::UnsupportedAlgorithm => {
                TokenError::WrongAlgorithm
            }
            K::InvalidIssuer => TokenError::Invalid("wrong issuer"),
            K::InvalidAudience => TokenError::Invalid("wrong audience"),
            K::MissingRequiredClaim(_) => TokenError::Invalid("a required claim is missing"),
            _ => TokenError::Invalid("malformed"),
        }
    }

    /// A short stable name, for metrics and the audit log.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::BadSignature => "bad_signature",
            TokenError::UnknownKey => "unknown_key",
            TokenError::WrongAlgorithm => "wrong_algorithm",
            TokenError::Revoked => "revoked",
            TokenError::Invalid(_) => "invalid",
        }
    }
}

/// The header of `token`: its `kid` and algorithm name. Refuses headers
/// whose algorithm is not one the hub signs with (`none`, HS256, …).
pub(crate) fn header_kid(token: &str) -> Result<(String, Algorithm), TokenError> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::InvalidAlgorithmName => TokenError::WrongAlgorithm,
        _ => TokenError::Invalid("malformed header"),
    })?;
    let kid = header
        .kid
        .ok_or(TokenError::Invalid("the header has no kid"))?;
    Ok((kid, header.alg))
}

impl KeyPair {
    /// Whether the header's algorithm is this key's.
    pub(crate) fn signs_with(&self, alg: Algorithm) -> bool {
        self.record.alg.jwt() == alg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            issuer: "switchboard".into(),
            audience: "switchboard".into(),
            leeway_s: 5,
        }
    }

    fn claims(offset_s: i64) -> Claims {
        let now = i64::try_from(jsonwebtoken::get_current_timestamp()).expect("time");
        Claims {
            iss: "switchboard".into(),
            aud: "switchboard".into(),
            sub: "agent-1".into(),
            exp: now + offset_s + 60,
            nbf: now + offset_s,
            iat: now + offset_s,
            jti: "j1".into(),
            scope: "tasks:read".into(),
            role: "agent".into(),
        }
    }

    #[test]
    fn ed25519_round_trip_and_rebuild() {
        let k = KeyPair::generate(KeyAlgorithm::EdDSA, 1).expect("key");
        let t = k.sign(&claims(0)).expect("sign");
        assert_eq!(k.verify(&t, &rules()).expect("valid"), claims(0));
        let (kid, alg) = header_kid(&t).expect("header");
        assert_eq!(
            (kid.as_str(), alg),
            (k.record.kid.as_str(), Algorithm::EdDSA)
        );
        let again = KeyPair::from_record(&k.record).expect("rebuild");
        assert_eq!(again.record.kid, k.record.kid);
        assert!(again.verify(&t, &rules()).is_ok());
        assert_eq!(k.jwk["kty"], "OKP");
        assert_eq!(k.jwk["kid"], k.record.kid.as_str());
    }

    #[test]
    fn refuses_bad_times_and_other_keys() {
        let k = KeyPair::generate(KeyAlgorithm::EdDSA, 1).expect("key");
        let other = KeyPair::generate(KeyAlgorithm::EdDSA, 1).expect("key");
        let expired = k.sign(&claims(-3600)).expect("sign");
        assert_eq!(k.verify(&expired, &rules()), Err(TokenError::Expired));
        let early = k.sign(&claims(600)).expect("sign");
        assert_eq!(k.verify(&early, &rules()), Err(TokenError::NotYetValid));
        let t = k.sign(&claims(0)).expect("sign");
        assert_eq!(other.verify(&t, &rules()), Err(TokenError::BadSignature));
        let mut wrong_aud = rules();
        wrong_aud.audience = "elsewhere".into();
        assert_eq!(
            k.verify(&t, &wrong_aud),
            Err(TokenError::Invalid("wrong audience"))
        );
    }
}
