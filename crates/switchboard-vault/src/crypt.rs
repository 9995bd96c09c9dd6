//! Envelope encryption.
//!
//! Each secret version has its own random 256-bit data key. The value is
//! encrypted with the data key, the data key with the master key (it is
//! "wrapped"), both with XChaCha20-Poly1305 and random 192-bit nonces.
//! The associated data binds the value to its secret name and version and
//! the wrapped key to those and the master key's id, so a ciphertext
//! moved to another row, or a wrapped key moved to another version, does
//! not decrypt. Rotating the master key rewraps data keys only; values are
//! not touched.

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::VaultError;
use crate::keyring::{Keyring, MasterKey};
use crate::store::Ciphertext;

const VALUE_LABEL: &[u8] = b"switchboard vault value v1";
const WRAP_LABEL: &[u8] = b"switchboard vault data key v1";
const CHECK_LABEL: &[u8] = b"switchboard vault key check v1";

fn lp(out: &mut Vec<u8>, b: &[u8]) {
    let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&b[..len as usize]);
}

fn aad(label: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    lp(&mut out, label);
    for p in parts {
        lp(&mut out, p);
    }
    out
}

fn random<const N: usize>() -> Result<[u8; N], VaultError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| VaultError::Internal(format!("no randomness: {e}")))?;
    Ok(b)
}

fn encrypt(key: &[u8; 32], aad: &[u8], msg: &[u8]) -> Result<(Vec<u8>, Vec<u8>), VaultError> {
    let nonce = random::<24>()?;
    let cipher = XChaCha20Poly1305::new(key.into());
    let ct = cipher
        .encrypt(&XNonce::from(nonce), Payload { msg, aad })
        .map_err(|_| VaultError::Internal("encryption failed".into()))?;
    Ok((ct, nonce.to_vec()))
}

fn decrypt(key: &[u8; 32], aad: &[u8], nonce: &[u8], ct: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let nonce: [u8; 24] = nonce.try_into().ok()?;
    let cipher = XChaCha20Poly1305::new(key.into());
    cipher
        .decrypt(&XNonce::from(nonce), Payload { msg: ct, aad })
        .ok()
        .map(Zeroizing::new)
}

fn version_bytes(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

/// Encrypts a value for (`name`, `version`) under a fresh data key wrapped
/// by `master`.
pub(crate) fn seal(
    master: &MasterKey,
    name: &str,
    version: u64,
    value: &[u8],
) -> Result<Ciphertext, VaultError> {
    let dek = Zeroizing::new(random::<32>()?);
    let v = version_bytes(version);
    let (value_ct, value_nonce) = encrypt(&dek, &aad(VALUE_LABEL, &[name.as_bytes(), &v]), value)?;
    let (wrapped_key, wrap_nonce) = encrypt(
        master.bytes(),
        &aad(WRAP_LABEL, &[name.as_bytes(), &v, master.id().as_bytes()]),
        &*dek,
    )?;
    Ok(Ciphertext {
        value: value_ct,
        value_nonce,
        wrapped_key,
        wrap_nonce,
        master_key_id: master.id().to_owned(),
    })
}

fn unwrap_key(
    ring: &Keyring,
    name: &str,
    version: u64,
    c: &Ciphertext,
) -> Result<Zeroizing<[u8; 32]>, VaultError> {
    let master = ring.get(&c.master_key_id).ok_or_else(|| {
        VaultError::Locked(format!(
            "version {version} of {name} is wrapped by master key {}, which is not configured",
            c.master_key_id
        ))
    })?;
    let v = version_bytes(version);
    let dek = decrypt(
        master.bytes(),
        &aad(WRAP_LABEL, &[name.as_bytes(), &v, master.id().as_bytes()]),
        &c.wrap_nonce,
        &c.wrapped_key,
    )
    .ok_or_else(|| {
        VaultError::Corrupt(format!(
            "the data key of version {version} of {name} does not decrypt: the stored row was changed"
        ))
    })?;
    let key: [u8; 32] = dek.as_slice().try_into().map_err(|_| {
        VaultError::Corrupt(format!(
            "the data key of version {version} of {name} has the wrong size"
        ))
    })?;
    Ok(Zeroizing::new(key))
}

/// Decrypts the value of (`name`, `version`).
pub(crate) fn open(
    ring: &Keyring,
    name: &str,
    version: u64,
    c: &Ciphertext,
) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    let dek = unwrap_key(ring, name, version, c)?;
    decrypt(
        &dek,
        &aad(VALUE_LABEL, &[name.as_bytes(), &version_bytes(version)]),
        &c.value_nonce,
        &c.value,
    )
    .ok_or_else(|| {
        VaultError::Corrupt(format!(
            "version {version} of {name} does not decrypt: the stored row was changed"
        ))
    })
}

/// The same data key, wrapped by the ring's current key instead.
pub(crate) fn rewrap(
    ring: &Keyring,
    name: &str,
    version: u64,
    c: &Ciphertext,
) -> Result<Ciphertext, VaultError> {
    let dek = unwrap_key(ring, name, version, c)?;
    let current = ring.current();
    let (wrapped_key, wrap_nonce) = encrypt(
        current.bytes(),
        &aad(
            WRAP_LABEL,
            &[
                name.as_bytes(),
                &version_bytes(version),
                current.id().as_bytes(),
            ],
        ),
        &*dek,
    )?;
    Ok(Ciphertext {
        value: c.value.clone(),
        value_nonce: c.value_nonce.clone(),
        wrapped_key,
        wrap_nonce,
        master_key_id: current.id().to_owned(),
    })
}

/// A blob only `master` decrypts: proves at start that a configured key
/// with this id is the key that was used before.
pub(crate) fn key_check(master: &MasterKey) -> Result<(Vec<u8>, Vec<u8>), VaultError> {
    encrypt(
        master.bytes(),
        &aad(CHECK_LABEL, &[master.id().as_bytes()]),
        CHECK_LABEL,
    )
}

/// Whether `master` decrypts a blob made by [`key_check`].
pub(crate) fn check_matches(master: &MasterKey, blob: &[u8], nonce: &[u8]) -> bool {
    decrypt(
        master.bytes(),
        &aad(CHECK_LABEL, &[master.id().as_bytes()]),
        nonce,
        blob,
    )
    .is_some_and(|p| p.as_slice() == CHECK_LABEL)
}
