//! Secrets shown once: API keys and device tokens. Only their SHA-256 is stored; they carry
//! enough randomness (128 bits or more) that an unsalted hash can be looked up directly.

use sha2::{Digest, Sha256};

/// A new random secret: `prefix` followed by `bytes` random bytes in hex.
pub fn generate(prefix: &str, bytes: usize) -> anyhow::Result<String> {
    let mut raw = vec![0u8; bytes];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(format!("{prefix}{}", hex::encode(raw)))
}

/// What the store keeps of a secret.
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether two stored hashes are equal, in time that depends on their length only.
pub fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}
