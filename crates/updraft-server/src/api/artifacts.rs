//! Artifact endpoints: streaming upload (raw body or multipart) with every checksum computed on
//! the way and the uploader's checksum verified before anything becomes visible; list, show,
//! download (ranges) and delete.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use updraft_core::{ArtifactKey, ArtifactKind, Role, TenantKey};
use updraft_store::ArtifactFilter;

use super::wire::{ArtifactOut, ArtifactPage};
use crate::kernel::auth::Caller;
use crate::kernel::download::{BlobResponse, serve_blob};
use crate::kernel::error::{ApiError, ApiResult, ErrorBody};
use crate::kernel::extract::{ApiPath, ApiQuery};
use crate::kernel::ingest::{UploadQuery, check, receive, store_artifact, too_large};
use crate::kernel::state::AppState;

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
    let artifact = ArtifactOut::new(&artifact, &state.config.public_url);
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
) -> ApiResult<updraft_store::Artifact> {
    let mut multipart = Multipart::from_request(request, state)
        .await
        .map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    for _ in 0..MAX_FORM_FIELDS {
        let mut field = multipart
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
        // A metadata field is read in pieces, and only up to its bound.
        let mut value = Vec::new();
        while let Some(chunk) = field
            .chunk()
            .await
            .map_err(|e| ApiError::bad_request("upload_incomplete", e.body_text()))?
        {
            if value.len() + chunk.len() > MAX_FORM_FIELD {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "field_too_large",
                    format!("the form field {name:?} is over {MAX_FORM_FIELD} bytes"),
                ));
            }
            value.extend_from_slice(&chunk);
        }
        let value = String::from_utf8(value).map_err(|_| {
            ApiError::bad_request(
                "invalid_request",
                format!("the form field {name:?} is not UTF-8"),
            )
        })?;
        meta.set(&name, value);
    }
    Err(ApiError::bad_request(
        "invalid_request",
        format!("more than {MAX_FORM_FIELDS} form fields before the `file` part"),
    ))
}

/// Form fields before the `file` part, and the bytes of each.
const MAX_FORM_FIELDS: usize = 32;
const MAX_FORM_FIELD: usize = 64 * 1024;

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
