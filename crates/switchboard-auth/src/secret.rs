//! Making and checking secrets.
//!
//! Two kinds of hash, chosen by what is hashed:
//! - API keys carry 256 random bits, so a fast hash (SHA-256) cannot be
//!   brute-forced and keeps their check in the request path cheap;
//! - agents' client secrets are checked only when a token is issued, so
//!   they get a slow, salted hash (argon2id) as well, which also protects a
//!   secret that a person chose badly.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, password_hash};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// `n` random bytes from the operating system.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], String> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| format!("no randomness from the OS: {e}"))?;
    Ok(buf)
}

/// 256 random bits as URL-safe base64, behind `prefix`.
pub(crate) fn random_token(prefix: &str) -> Result<String, String> {
    let bytes = random_bytes::<32>()?;
    Ok(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// A short random id (12 URL-safe characters).
pub(crate) fn random_id() -> Result<String, String> {
    let bytes = random_bytes::<9>()?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// SHA-256 of `secret`, hex.
pub(crate) fn sha256_hex(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    base16ct::lower::encode_string(bytes)
}

/// Whether `secret` hashes to `hash_hex`, compared in constant time.
/// The hex is written on the stack: this runs on every request that
/// carries an API key or the admin token.
pub(crate) fn sha256_matches(secret: &str, hash_hex: &str) -> bool {
    let mut buf = [0u8; 64];
    match base16ct::lower::encode(&Sha256::digest(secret.as_bytes()), &mut buf) {
        Ok(hex) => hex.ct_eq(hash_hex.as_bytes()).into(),
        Err(_) => false,
    }
}

/// The argon2id hash of `secret` in PHC string form (salt and parameters
/// included). Slow on purpose: run it off the async threads.
pub(crate) fn argon2_hash(secret: &str) -> Result<String, String> {
    let salt_bytes = random_bytes::<16>()?;
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `secret` matches an argon2 PHC string. Slow on purpose.
pub(crate) fn argon2_matches(secret: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => match Argon2::default().verify_password(secret.as_bytes(), &hash) {
            Ok(()) => true,
            Err(password_hash::Error::Password) => false,
            Err(error) => {
                tracing::warn!(%error, "a stored client secret hash could not be checked");
                false
            }
        },
        Err(error) => {
            tracing::warn!(%error, "a stored client secret hash is malformed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2_round_trip() {
        let h = argon2_hash("s3cret").expect("hash");
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(argon2_matches("s3cret", &h));
        assert!(!argon2_matches("s3cre", &h));
        assert!(!argon2_matches("s3cret", "not a hash"));
    }

    #[test]
    fn hex_is_lower_case_and_padded() {
        assert_eq!(hex(&[0x00, 0x0f, 0xf0, 0xff, 0x5a]), "000ff0ff5a");
        assert_eq!(hex(&[]), "");
        // FIPS 180-2, appendix B.1.
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn tokens_are_random_and_hash_stably() {
        let a = random_token("sbk_").expect("token");
        let b = random_token("sbk_").expect("token");
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 43);
        assert!(sha256_matches(&a, &sha256_hex(&a)));
        assert!(!sha256_matches(&b, &sha256_hex(&a)));
        // FIPS 180-2, appendix B.1; only the exact lower-case hex matches.
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert!(sha256_matches("abc", abc));
        assert!(!sha256_matches("abc", &abc.to_uppercase()));
        assert!(!sha256_matches("abc", &abc[..63]));
        assert!(!sha256_matches("abc", &format!("{abc}0")));
        assert!(!sha256_matches("abc", ""));
    }
}
