//! The artifact ingest pipeline, shared by the management API's upload and by adapters that take
//! artifacts (a Frugal-IoT developer's push): metadata checked before a byte is stored, bytes
//! streamed into the blob store with every checksum computed on the way, the uploader's checksum
//! and signature verified, then the blob committed and the row written — or nothing at all.

use std::pin::pin;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::http::StatusCode;
use base64::Engine;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use updraft_core::{
    ArtifactKind, ChecksumAlgorithm, Filename, MultiHasher, Name, ProfileKey, ProjectKey,
    TenantKey, Title, Version,
};
use updraft_store::{BlobWriter, NewArtifact};

use crate::kernel::auth::Caller;
use crate::kernel::error::{ApiError, ApiResult};
use crate::kernel::state::AppState;

/// Upload metadata, from the query string or from multipart text fields.
#[derive(Deserialize, Default, utoipa::IntoParams)]
pub struct UploadQuery {
    pub title: Option<String>,
    pub version: Option<String>,
    /// firmware (default) or software.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Compatible profiles, comma-separated; none means any.
    pub profiles: Option<String>,
    /// MD5, SHA1, SHA256, SHA384, SHA512, CRC32, MURMUR3_32 or MURMUR3_128 (SHA256 when only
    /// `checksum` is given).
    pub checksum_algorithm: Option<String>,
    /// Hex checksum the server must compute from the bytes, or the upload is refused (422).
    pub checksum: Option<String>,
    /// File name devices download it as; `TITLE-VERSION.bin` by default.
    pub filename: Option<String>,
    pub description: Option<String>,
    /// Detached signature as text, stored as given. With `signature_algorithm`
    /// `ecdsa-p256-sha256` (the default when a compatible profile has a signing certificate) it is
    /// the standard base64 of a DER ECDSA P-256 signature over the file's SHA-256, and must verify
    /// with every compatible profile's certificate or nothing is stored (422 `invalid_signature`).
    pub signature: Option<String>,
    pub signature_algorithm: Option<String>,
}

impl UploadQuery {
    /// Sets a metadata field by its name (a multipart text field); unknown names are ignored.
    pub fn set(&mut self, field: &str, value: String) {
        let slot = match field {
            "title" => &mut self.title,
            "version" => &mut self.version,
            "type" => &mut self.kind,
            "checksum_algorithm" => &mut self.checksum_algorithm,
            "checksum" => &mut self.checksum,
            "filename" => &mut self.filename,
            "description" => &mut self.description,
            "signature" => &mut self.signature,
            "signature_algorithm" => &mut self.signature_algorithm,
            "profiles" | "profile" => {
                let joined = match self.profiles.take() {
                    Some(existing) if !existing.is_empty() => format!("{existing},{value}"),
                    _ => value,
                };
                self.profiles = Some(joined);
                return;
            }
            _ => return,
        };
        *slot = Some(value);
    }
}

/// Metadata checked before a byte is stored.
pub struct Checked {
    title: Title,
    version: Version,
    kind: ArtifactKind,
    profiles: Vec<ProfileKey>,
    expected: Option<(ChecksumAlgorithm, String)>,
    filename: Filename,
    description: String,
    signature: Option<String>,
    /// The signature, decoded, and the certificates it must verify with.
    verify: Option<(Vec<u8>, Vec<ProfileCert>)>,
}

/// A profile's name and its signing certificate.
type ProfileCert = (String, updraft_store::SigningCert);

pub async fn check(state: &AppState, tenant: TenantKey, meta: &UploadQuery) -> ApiResult<Checked> {
    let required = |value: &Option<String>, what: &str| {
        value
            .clone()
            .ok_or_else(|| ApiError::bad_request("invalid_request", format!("{what} is required")))
    };
    let title = Title::parse(&required(&meta.title, "title")?)?;
    let version = Version::parse(&required(&meta.version, "version")?)?;
    let kind = match &meta.kind {
        Some(kind) => kind
            .parse()
            .map_err(|e: String| ApiError::bad_request("invalid_request", e))?,
        None => ArtifactKind::Firmware,
    };
    let mut profiles = Vec::new();
    for name in meta
        .profiles
        .iter()
        .flat_map(|p| p.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        profiles.push(profile_key(state, tenant, name).await?);
    }
    let expected = match (&meta.checksum_algorithm, &meta.checksum) {
        (algorithm, Some(value)) => {
            let algorithm = match algorithm {
                Some(name) => name
                    .parse()
                    .map_err(|e: String| ApiError::bad_request("unknown_checksum_algorithm", e))?,
                None => ChecksumAlgorithm::Sha256,
            };
            Some((algorithm, value.clone()))
        }
        (Some(_), None) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "checksum_algorithm needs a checksum to go with it",
            ));
        }
        (None, None) => None,
    };
    let signature = meta.signature.clone().filter(|s| !s.trim().is_empty());
    let certs: Vec<ProfileCert> = state
        .store
        .list_profiles(tenant)
        .await?
        .into_iter()
        .filter(|p| profiles.is_empty() || profiles.contains(&p.key))
        .filter_map(|p| p.signing_cert.map(|c| (p.name.to_string(), c)))
        .collect();
    let verify = match (&signature, meta.signature_algorithm.as_deref()) {
        (None, Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "signature_algorithm needs a signature to go with it",
            ));
        }
        (Some(text), Some(updraft_core::signing::ECDSA_P256_SHA256)) => {
            Some((decode_signature(text)?, certs))
        }
        (Some(_), Some(other)) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unsupported_signature_algorithm",
                format!(
                    "signature_algorithm {other:?} is not supported: use {}",
                    updraft_core::signing::ECDSA_P256_SHA256
                ),
            ));
        }
        (Some(text), None) if !certs.is_empty() => Some((decode_signature(text)?, certs)),
        // A profile that signs its firmware takes nothing unsigned: an artifact compatible with
        // it (named, or compatible with every profile) must carry a signature.
        (None, None) if !certs.is_empty() => {
            let names: Vec<&str> = certs.iter().map(|(name, _)| name.as_str()).collect();
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "signature_required",
                format!(
                    "profile {} has a signing certificate: upload with a signature, or name \
                     only profiles without one",
                    names.join(", ")
                ),
            ));
        }
        _ => None,
    };
    let filename_text = meta
        .filename
        .clone()
        .unwrap_or_else(|| format!("{title}-{version}.bin"));
    let filename = Filename::parse(&filename_text).map_err(|e| {
        ApiError::bad_request("invalid_filename", format!("{e}: {filename_text:?}"))
    })?;
    if state
        .store
        .artifact_by_release(tenant, title.as_str(), version.as_str())
        .await?
        .is_some()
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "artifact_exists",
            format!("artifact {title}@{version} exists already"),
        ));
    }
    Ok(Checked {
        title,
        version,
        kind,
        profiles,
        expected,
        filename,
        description: meta.description.clone().unwrap_or_default(),
        signature: signature.map(|s| s.trim().to_owned()),
        verify,
    })
}

fn decode_signature(text: &str) -> ApiResult<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_signature",
                "the signature is not standard base64 (of a DER ECDSA signature)",
            )
        })
}

/// Bytes received and staged, with their checksums.
pub struct Received {
    writer: Box<dyn BlobWriter>,
    hasher: MultiHasher,
}

pub async fn receive<S, E>(state: &AppState, stream: S) -> ApiResult<Received>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let max = state.config.max_upload_bytes;
    let mut stream = pin!(stream);
    let mut writer = state.blobs.stage().await.map_err(ApiError::internal)?;
    let mut hasher = MultiHasher::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(
                "upload_incomplete",
                format!("the upload broke off after {} bytes: {e}", hasher.len()),
            )
        })?;
        if hasher.len() + chunk.len() as u64 > max {
            return Err(too_large(max));
        }
        hasher.update(&chunk);
        writer.write(&chunk).await.map_err(ApiError::internal)?;
        state
            .metrics
            .upload_bytes
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    if hasher.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_request",
            "the upload is empty: send the artifact's bytes",
        ));
    }
    Ok(Received { writer, hasher })
}

pub fn too_large(max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("artifacts may be at most {max} bytes (--max-upload-bytes)"),
    )
}

/// Verifies, commits the blob and writes the artifact row.
pub async fn store_artifact(
    state: &AppState,
    caller: &Caller,
    checked: Checked,
    received: Received,
) -> ApiResult<updraft_store::Artifact> {
    let size = received.hasher.len();
    let checksums = received.hasher.finish();
    if let Some((algorithm, expected)) = &checked.expected
        && !checksums.matches(*algorithm, expected)
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "checksum_mismatch",
            format!(
                "the {algorithm} of the uploaded bytes is {}, not {}: nothing was stored",
                checksums.get(*algorithm),
                expected.trim()
            ),
        ));
    }
    if let Some((signature, certs)) = &checked.verify {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(&checksums.sha256, &mut digest).map_err(ApiError::internal)?;
        for (profile, cert) in certs {
            let verified = updraft_core::signing::certificate_key(&cert.pem)
                .and_then(|key| updraft_core::signing::verify_digest(&key, &digest, signature));
            if let Err(e) = verified {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_signature",
                    format!("{e} (profile {profile}, {}): nothing was stored", cert.name),
                ));
            }
        }
    }
    let new = NewArtifact {
        title: checked.title.to_string(),
        version: checked.version.to_string(),
        kind: checked.kind,
        profiles: checked.profiles,
        size,
        filename: checked.filename.to_string(),
        checksums: checksums.clone(),
        signature: checked.signature,
        description: checked.description,
        uploaded_by: caller.key.name.clone(),
    };
    let _guard = state.blob_lock.lock().await;
    received
        .writer
        .commit(&checksums.sha256)
        .await
        .map_err(ApiError::internal)?;
    match state.store.insert_artifact(caller.tenant(), &new).await {
        Ok(artifact) => {
            state
                .metrics
                .artifacts_uploaded
                .fetch_add(1, Ordering::Relaxed);
            Ok(artifact)
        }
        Err(err) => {
            // Do not leave a blob nothing refers to (another artifact may share it).
            if let Ok(referenced) = state.store.blob_references().await
                && !referenced.contains(&checksums.sha256)
            {
                let _ = state.blobs.delete(&checksums.sha256).await;
            }
            Err(err.into())
        }
    }
}

/// The profile named `name` in the tenant, or 422 `unknown_profile`.
pub async fn profile_key(state: &AppState, tenant: TenantKey, name: &str) -> ApiResult<ProfileKey> {
    let parsed = Name::parse(name)?;
    match state.store.profile_by_name(tenant, &parsed).await? {
        Some(profile) => Ok(profile.key),
        None => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_profile",
            format!("no profile named {name:?}: create it first (updraft profile create {name})"),
        )),
    }
}

/// The project named `name` in the tenant, or 422 `unknown_project`.
pub async fn project_key(state: &AppState, tenant: TenantKey, name: &str) -> ApiResult<ProjectKey> {
    let parsed = Name::parse(name)?;
    match state.store.project_by_name(tenant, &parsed).await? {
        Some(project) => Ok(project.key),
        None => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_project",
            format!("no project named {name:?}: create it first"),
        )),
    }
}
