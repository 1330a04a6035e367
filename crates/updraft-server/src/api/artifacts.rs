//! Artifact endpoints: streaming upload (raw body or multipart) with every checksum computed on
//! the way and the uploader's checksum verified before anything becomes visible; list, show,
//! download (ranges) and delete.

use std::pin::pin;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use base64::Engine;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use updraft_core::{
    ArtifactKey, ArtifactKind, ChecksumAlgorithm, Filename, MultiHasher, ProfileKey, Role,
    TenantKey, Title, Version,
};
use updraft_store::{ArtifactFilter, BlobWriter, NewArtifact};

use super::fleet::profile_key;
use super::wire::{ArtifactOut, ArtifactPage};
use super::{ApiPath, ApiQuery};
use crate::auth::Caller;
use crate::download::{BlobResponse, serve_blob};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

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
    fn set(&mut self, field: &str, value: String) {
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
pub(crate) struct Checked {
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

pub(crate) async fn check(
    state: &AppState,
    tenant: TenantKey,
    meta: &UploadQuery,
) -> ApiResult<Checked> {
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
pub(crate) struct Received {
    writer: Box<dyn BlobWriter>,
    hasher: MultiHasher,
}

pub(crate) async fn receive<S, E>(state: &AppState, stream: S) -> ApiResult<Received>
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

fn too_large(max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("artifacts may be at most {max} bytes (--max-upload-bytes)"),
    )
}

/// Verifies, commits the blob and writes the artifact row.
pub(crate) async fn store_artifact(
    state: &AppState,
    caller: &Caller,
    checked: Checked,
    received: Received,
) -> ApiResult<ArtifactOut> {
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
            Ok(ArtifactOut::new(&artifact, &state.config.public_url))
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

#[utoipa::path(post, path = "/api/v1/artifacts", tag = "artifacts", params(UploadQuery),
    request_body(content = Vec<u8>, description = "the artifact's bytes (application/octet-stream), or multipart/form-data with the metadata fields and a last `file` part", content_type = "application/octet-stream"),
    responses((status = 201, body = ArtifactOut), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(mut meta): ApiQuery<UploadQuery>,
    request: Request,
) -> ApiResult<(StatusCode, HeaderMap, Json<ArtifactOut>)> {
    caller.require(Role::Maintainer)?;
    let tenant = caller.tenant();
    let max = state.config.max_upload_bytes;
    let headers = request.headers();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    // Multipart framing adds a little; anything beyond that is refused before it is read.
    let slack = if multipart { 64 * 1024 } else { 0 };
    if declared.is_some_and(|len| len > max.saturating_add(slack)) {
        state
            .metrics
            .uploads_refused
            .fetch_add(1, Ordering::Relaxed);
        return Err(too_large(max));
    }
    let result = if multipart {
        upload_multipart(&state, &caller, tenant, &mut meta, request).await
    } else {
        let checked = check(&state, tenant, &meta).await?;
        let stream = request.into_body().into_data_stream();
        match receive(&state, stream).await {
            Ok(received) => store_artifact(&state, &caller, checked, received).await,
            Err(err) => Err(err),
        }
    };
    let artifact = result.inspect_err(|_| {
        state
            .metrics
            .uploads_refused
            .fetch_add(1, Ordering::Relaxed);
    })?;
    let mut out_headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/artifacts/{}", artifact.id)) {
        out_headers.insert(header::LOCATION, location);
    }
    Ok((StatusCode::CREATED, out_headers, Json(artifact)))
}

async fn upload_multipart(
    state: &AppState,
    caller: &Caller,
    tenant: TenantKey,
    meta: &mut UploadQuery,
    request: Request,
) -> ApiResult<ArtifactOut> {
    let mut multipart = Multipart::from_request(request, state)
        .await
        .map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    loop {
        let field = multipart
            .next_field()
            .await
            .map_err(|e| ApiError::bad_request("upload_incomplete", e.body_text()))?
            .ok_or_else(|| {
                ApiError::bad_request("invalid_request", "the form has no `file` part")
            })?;
        let name = field.name().unwrap_or_default().to_owned();
        if name == "file" {
            if meta.filename.is_none() {
                meta.filename = field.file_name().map(str::to_owned);
            }
            let checked = check(state, tenant, meta).await?;
            let received = receive(state, field).await?;
            return store_artifact(state, caller, checked, received).await;
        }
        let value = field
            .text()
            .await
            .map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
        meta.set(&name, value);
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    pub title: Option<String>,
    pub version: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub offset: Option<u64>,
    pub limit: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/artifacts", tag = "artifacts", params(ListQuery), responses((status = 200, body = ArtifactPage)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<ArtifactPage>> {
    let kind = match &query.kind {
        Some(kind) => Some(
            kind.parse::<ArtifactKind>()
                .map_err(|e| ApiError::bad_request("invalid_request", e))?,
        ),
        None => None,
    };
    let filter = ArtifactFilter {
        title: query.title.clone(),
        version: query.version.clone(),
        kind,
    };
    let page = super::wire::PageQuery {
        offset: query.offset,
        limit: query.limit,
    }
    .page();
    let found = state
        .store
        .list_artifacts(caller.tenant(), &filter, page)
        .await?;
    Ok(Json(ArtifactPage {
        items: found
            .items
            .iter()
            .map(|a| ArtifactOut::new(a, &state.config.public_url))
            .collect(),
        total: found.total,
        offset: page.offset,
        limit: page.limit,
    }))
}

fn artifact_not_found(id: i64) -> ApiError {
    ApiError::not_found(
        "artifact_not_found",
        format!("no artifact {id} in this tenant"),
    )
}

async fn find(state: &AppState, caller: &Caller, id: i64) -> ApiResult<updraft_store::Artifact> {
    state
        .store
        .artifact(caller.tenant(), ArtifactKey(id))
        .await?
        .ok_or_else(|| artifact_not_found(id))
}

#[utoipa::path(get, path = "/api/v1/artifacts/{id}", tag = "artifacts", params(("id" = i64, Path)),
    responses((status = 200, body = ArtifactOut), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<ArtifactOut>> {
    let artifact = find(&state, &caller, id).await?;
    Ok(Json(ArtifactOut::new(&artifact, &state.config.public_url)))
}

#[utoipa::path(get, path = "/api/v1/artifacts/{id}/download", tag = "artifacts", params(("id" = i64, Path)),
    responses((status = 200, description = "the bytes"), (status = 206, description = "the requested range"),
        (status = 404, body = ErrorBody), (status = 416, description = "no requested range overlaps the artifact")))]
pub async fn download(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    headers: HeaderMap,
) -> ApiResult<axum::response::Response> {
    let artifact = find(&state, &caller, id).await?;
    let blob = BlobResponse {
        sha256: &artifact.checksums.sha256,
        size: artifact.size,
        filename: &artifact.filename,
        content_type: "application/octet-stream",
        modified_at: artifact.created_at,
    };
    serve_blob(&state, blob, &headers).await
}

#[utoipa::path(delete, path = "/api/v1/artifacts/{id}", tag = "artifacts", params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Maintainer)?;
    let _guard = state.blob_lock.lock().await;
    let deleted = state
        .store
        .delete_artifact(caller.tenant(), ArtifactKey(id))
        .await
        .map_err(|err| match err {
            updraft_store::StoreError::NotFound { .. } => artifact_not_found(id),
            other => other.into(),
        })?;
    if deleted.blob_unreferenced {
        state
            .blobs
            .delete(&deleted.sha256)
            .await
            .map_err(ApiError::internal)?;
    }
    Ok(StatusCode::NO_CONTENT)
}
