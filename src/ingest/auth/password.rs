//! Device passwords: owns argon2id hashing (`tidegate passwd`) and verification, and
//! keeps password checks off the runtime's worker threads and few at a time, so a storm
//! of CONNECTs cannot stall the connections already running.

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordError {
    #[error("{0}")]
    Hash(#[source] argon2::password_hash::Error),
}

/// Checks `password` against a PHC hash. CPU-heavy by design (argon2): call it off the
/// runtime's worker threads ([`verify_password_blocking`]).
pub fn verify_password(hash: &str, password: &[u8]) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(password, &parsed).is_ok(),
        Err(_) => false,
    }
}

/// [`verify_password`] on tokio's blocking pool, so a storm of CONNECTs does not stall the
/// connections already running; at most two at once (`VERIFY_PERMITS`).
pub async fn verify_password_blocking(hash: String, password: Vec<u8>) -> bool {
    static PERMITS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(VERIFY_PERMITS);
    let Ok(_permit) = PERMITS.acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || verify_password(&hash, &password))
        .await
        .unwrap_or(false)
}

/// Password checks running at once: each takes ~19 MiB and tens of ms of one core
/// (argon2id defaults), and a gateway has few cores.
const VERIFY_PERMITS: usize = 2;

/// A hash no password is expected to match, with the same parameters as real ones: what
/// an unknown device's password is checked against (see the listener's admission).
pub fn dummy_hash() -> String {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        hash_password(b"tidegate: no such device").unwrap_or_else(|_| {
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".to_owned()
        })
    })
    .clone()
}

/// An argon2id PHC string for `password` with a fresh random salt.
pub fn hash_password(password: &[u8]) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(PasswordError::Hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let h = hash_password(b"correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, b"correct horse"));
        assert!(!verify_password(&h, b"wrong"));
        assert!(!verify_password("garbage", b"correct horse"));
    }
}
