//! Signatures made by OpenSSL verify; anything else is refused with a reason.
#![allow(clippy::unwrap_used)]

use sha2::{Digest, Sha256};
use updraft_core::signing::{certificate_key, verify_digest};

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(
            &std::env::var("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()),
        )
        .join("tests/vectors")
        .join(name),
    )
    .unwrap()
}

fn text(name: &str) -> String {
    String::from_utf8(vector(name)).unwrap()
}

#[test]
fn an_openssl_signature_verifies_with_its_certificate_only() {
    let digest: [u8; 32] = Sha256::digest(vector("signed.bin")).into();
    let signature = vector("signed.bin.sig");
    let key = certificate_key(&text("code-sign.pem")).unwrap();
    assert_eq!(verify_digest(&key, &digest, &signature), Ok(()));

    let other = certificate_key(&text("other.pem")).unwrap();
    assert!(verify_digest(&other, &digest, &signature).is_err());
    let mut changed = digest;
    changed[0] ^= 1;
    assert!(verify_digest(&key, &changed, &signature).is_err());
    let mut flipped = signature.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(verify_digest(&key, &digest, &flipped).is_err());
    assert!(verify_digest(&key, &digest, b"not der").is_err());
}

#[test]
fn certificates_that_are_not_p256_are_refused() {
    let rsa = certificate_key(&text("rsa.pem")).unwrap_err();
    assert!(rsa.0.contains("P-256"), "{rsa}");
    assert!(certificate_key("not a certificate").is_err());
    assert!(
        certificate_key("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err()
    );
}
