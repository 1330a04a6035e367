//! The developer side: push a binary for a node or a profile, promote a node's binary to its
//! project and profile.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use futures_util::stream;
use serde::Deserialize;
use updraft_core::{ArtifactKind, DeviceId, Name, Role, Scope};
use updraft_store::NewDevice;

use super::{ensure_profile, ensure_project, own_org};
use crate::kernel::auth::Caller;
use crate::kernel::error::{ApiError, ApiResult};
use crate::kernel::extract::{ApiJson, ApiQuery};
use crate::kernel::ingest::{UploadQuery, check, receive, store_artifact};
use crate::kernel::state::AppState;
use crate::kernel::views::{ArtifactOut, AssignmentOut};

/// Where a developer's push goes.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct PushQuery {
    /// The org (tenant); must be the key's own.
    pub org: String,
    pub project: Option<String>,
    /// Push for this node only…
    pub node: Option<String>,
    /// …or for every node with this OTA key (in `project`, or org-wide without one).
    pub ota_key: Option<String>,
    /// The binary's version; `md5-<first 12 hex digits>` when absent.
    pub version: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct PushOut {
    pub artifact: ArtifactOut,
    pub assignment: AssignmentOut,
}

/// ESP flash is at most 16 MiB.
const MAX_FRUGAL_BINARY: usize = 16 * 1024 * 1024;

#[utoipa::path(post, path = "/api/v1/frugal/push", tag = "frugal", params(PushQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the firmware binary"),
    responses((status = 201, body = PushOut), (status = 404, body = crate::kernel::error::ErrorBody)))]
pub(super) async fn push(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PushQuery>,
    request: Request,
) -> ApiResult<(StatusCode, Json<PushOut>)> {
    caller.require(Role::Maintainer)?;
    let tenant = own_org(&caller, &query.org)?;
    let project = match &query.project {
        Some(name) => Some(Name::parse(name)?),
        None => None,
    };
    let (title, scope_target) = match (&query.node, &query.ota_key) {
        (Some(node), None) => (node.clone(), PushTarget::Node(DeviceId::parse(node)?)),
        (None, Some(key)) => (key.clone(), PushTarget::OtaKey(Name::parse(key)?)),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "give exactly one of node and ota_key",
            ));
        }
    };
    let bytes = axum::body::to_bytes(request.into_body(), MAX_FRUGAL_BINARY)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "an ESP binary is at most 16 MiB",
            )
        })?;
    let mut hasher = updraft_core::MultiHasher::new();
    hasher.update(&bytes);
    let md5 = hasher.finish().md5;
    let version = query
        .version
        .clone()
        .unwrap_or_else(|| format!("md5-{}", &md5[..12]));
    let artifact = match state
        .store
        .artifact_by_release(tenant, &title, &version)
        .await?
    {
        Some(existing) if existing.checksums.md5 == md5 => {
            ArtifactOut::new(&existing, &state.config.public_url)
        }
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "artifact_exists",
                format!("{title}@{version} exists with other bytes: push with another --version"),
            ));
        }
        None => {
            let meta = UploadQuery {
                title: Some(title.clone()),
                version: Some(version.clone()),
                kind: Some("firmware".into()),
                filename: Some(format!("{title}-{version}.bin")),
                checksum_algorithm: Some("MD5".into()),
                checksum: Some(md5.clone()),
                ..UploadQuery::default()
            };
            let checked = check(&state, tenant, &meta).await?;
            let received = receive(&state, stream::iter([Ok::<_, std::io::Error>(bytes)])).await?;
            let stored = store_artifact(&state, &caller, checked, received).await?;
            ArtifactOut::new(&stored, &state.config.public_url)
        }
    };
    let project_key = match &project {
        Some(name) => Some(ensure_project(&state, tenant, name).await?),
        None => None,
    };
    let scope = match scope_target {
        PushTarget::Node(node) => {
            let device = match state.store.device(tenant, &node).await? {
                Some(device) => device,
                None => {
                    let new = NewDevice {
                        id: node,
                        project: project_key,
                        profile: None,
                        tags: vec!["frugal-iot".to_owned()],
                        attributes: BTreeMap::new(),
                    };
                    let device = state.store.create_device(tenant, &new, &[]).await?;
                    // A Frugal node from birth, with no key yet: the first check-in with a key
                    // of its project claims it.
                    state.store.set_frugal_node_key(device.key, None).await?;
                    device
                }
            };
            Scope::Device(device.key)
        }
        PushTarget::OtaKey(key) => {
            let profile = ensure_profile(&state, tenant, &key).await?;
            match project_key {
                Some(project) => Scope::ProjectProfile(project, profile),
                None => Scope::Profile(profile),
            }
        }
    };
    let assignment = state
        .store
        .assign(
            tenant,
            scope,
            updraft_core::ArtifactKey(artifact.id),
            &caller.source(),
        )
        .await?;
    state.announce(crate::kernel::cluster::News::Queued);
    Ok((
        StatusCode::CREATED,
        Json(PushOut {
            artifact,
            assignment: AssignmentOut::from(&assignment),
        }),
    ))
}

enum PushTarget {
    Node(DeviceId),
    OtaKey(Name),
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct PromoteIn {
    pub org: String,
    pub project: String,
    pub node: String,
    pub ota_key: String,
}

#[utoipa::path(post, path = "/api/v1/frugal/promote", tag = "frugal", request_body = PromoteIn,
    responses((status = 201, body = AssignmentOut), (status = 404, body = crate::kernel::error::ErrorBody)))]
pub(super) async fn promote(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<PromoteIn>,
) -> ApiResult<(StatusCode, Json<AssignmentOut>)> {
    caller.require(Role::Maintainer)?;
    let tenant = own_org(&caller, &body.org)?;
    let node = DeviceId::parse(&body.node)?;
    let device = state
        .store
        .device(tenant, &node)
        .await?
        .ok_or_else(|| ApiError::not_found("device_not_found", format!("no node {node:?}")))?;
    let assignments = state.store.list_assignments(tenant).await?;
    let node_binary = assignments
        .iter()
        .find(|a| a.scope == Scope::Device(device.key) && a.kind == ArtifactKind::Firmware)
        .ok_or_else(|| {
            ApiError::not_found(
                "assignment_not_found",
                format!("node {node} has no binary of its own to promote"),
            )
        })?;
    let project = ensure_project(&state, tenant, &Name::parse(&body.project)?).await?;
    let profile = ensure_profile(&state, tenant, &Name::parse(&body.ota_key)?).await?;
    let source = caller.source();
    let promoted = state
        .store
        .assign(
            tenant,
            Scope::ProjectProfile(project, profile),
            node_binary.artifact,
            &source,
        )
        .await?;
    state.announce(crate::kernel::cluster::News::Queued);
    state
        .store
        .unassign(
            tenant,
            Scope::Device(device.key),
            ArtifactKind::Firmware,
            &source,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(AssignmentOut::from(&promoted))))
}
