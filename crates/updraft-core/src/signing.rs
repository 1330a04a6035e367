//! Code signatures: a detached DER ECDSA P-256 signature over the SHA-256 of a whole file (what
//! `openssl dgst -sha256 -sign` writes and AWS code signing makes), checked against the public
//! key of a profile's X.509 signing certificate. The digest comes from the upload's own hashing
//! pass, so a signature is checked without reading the file again.

use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::{Signature, VerifyingKey};
use x509_cert::Certificate;
use x509_cert::der::DecodePem;

/// The one signature scheme Updraft checks.
pub const ECDSA_P256_SHA256: &str = "ecdsa-p256-sha256";

/// Why a certificate or signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SigningError(pub String);

/// The OID of id-ecPublicKey and of the P-256 curve.
const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const PRIME256V1: &str = "1.2.840.10045.3.1.7";

/// The P-256 public key of a PEM X.509 certificate.
pub fn certificate_key(pem: &str) -> Result<VerifyingKey, SigningError> {
    let cert = Certificate::from_pem(pem.trim().as_bytes())
        .map_err(|e| SigningError(format!("not a PEM X.509 certificate: {e}")))?;
    let spki = &cert.tbs_certificate.subject_public_key_info;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<x509_cert::der::asn1::ObjectIdentifier>().ok());
    if spki.algorithm.oid.to_string() != EC_PUBLIC_KEY
        || curve.map(|c| c.to_string()).as_deref() != Some(PRIME256V1)
    {
        return Err(SigningError(
            "the certificate's key is not an ECDSA P-256 key (prime256v1)".into(),
        ));
    }
    let point = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| SigningError("the certificate's public key is not whole bytes".into()))?;
    VerifyingKey::from_sec1_bytes(point)
        .map_err(|_| SigningError("the certificate's public key is not a P-256 point".into()))
}

/// The DER of a PEM X.509 certificate, checked to parse as one.
pub fn certificate_der(pem: &str) -> Result<Vec<u8>, SigningError> {
    use x509_cert::der::Encode;
    let cert = Certificate::from_pem(pem.trim().as_bytes())
        .map_err(|e| SigningError(format!("not a PEM X.509 certificate: {e}")))?;
    cert.to_der()
        .map_err(|e| SigningError(format!("the certificate does not encode: {e}")))
}

/// Whether a DER X.509 certificate is valid at `now` (seconds since the Unix epoch): within its
/// notBefore..=notAfter. A certificate that does not parse is not valid.
pub fn certificate_valid_at(der: &[u8], now: u64) -> Result<(), SigningError> {
    use x509_cert::der::Decode;
    let cert = Certificate::from_der(der)
        .map_err(|e| SigningError(format!("not a DER X.509 certificate: {e}")))?;
    let validity = &cert.tbs_certificate.validity;
    let not_before = validity.not_before.to_unix_duration().as_secs();
    let not_after = validity.not_after.to_unix_duration().as_secs();
    if now < not_before {
        return Err(SigningError("the certificate is not valid yet".into()));
    }
    if now > not_after {
        return Err(SigningError("the certificate has expired".into()));
    }
    Ok(())
}

/// Checks a DER signature over the file whose SHA-256 is `digest`.
pub fn verify_digest(
    key: &VerifyingKey,
    digest: &[u8; 32],
    signature_der: &[u8],
) -> Result<(), SigningError> {
    let signature = Signature::from_der(signature_der)
        .map_err(|_| SigningError("the signature is not a DER ECDSA signature".into()))?;
    key.verify_prehash(digest, &signature).map_err(|_| {
        SigningError("the signature does not verify with the certificate's key".into())
    })
}
