//! Frugal-IoT / Arduino `httpUpdate` OTA: `GET /ota_update/{org}/{project}/{node}/{ota_key}`
//! answered with `304 Not Modified` or the binary. The org is the tenant, the OTA key the device
//! profile, and the choice of binary is the shared resolution rule (node, then project and OTA
//! key, then org and OTA key), so there is no second lookup engine. Nodes carry no token: they
//! register themselves on first check-in unless the tenant turns that off.
//!
//! Also the developer side (Frugal-IoT's wish for authenticated per-organization uploads):
//! `POST /api/v1/frugal/push` and `POST /api/v1/frugal/promote`.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::stream;
use serde::Deserialize;
use updraft_core::{
    ArtifactKind, DeviceId, Failure, FailureCode, Name, ProfileKey, Progress, ProjectKey, Report,
    Role, Scope, TenantKey, UpdateState, compare_versions,
};
use updraft_store::{AttributeMode, Device, NewDevice, StoreError};

use crate::kernel::auth::Caller;
use crate::kernel::download::{BlobResponse, serve_blob};
use crate::kernel::error::{ApiError, ApiResult};
use crate::kernel::extract::{ApiJson, ApiPath, ApiQuery};
use crate::kernel::ingest::{UploadQuery, check, receive, store_artifact};
use crate::kernel::state::AppState;
use crate::kernel::views::{ArtifactOut, AssignmentOut};

/// The device-facing route.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/ota_update/{org}/{project}/{node}/{ota_key}",
            get(check_in),
        )
        .route("/api/v1/frugal/push", axum::routing::post(push))
        .route("/api/v1/frugal/promote", axum::routing::post(promote))
}

/// The Frugal-IoT adapter: the check-in route and the developer endpoints.
pub struct Frugal;

#[derive(utoipa::OpenApi)]
#[openapi(paths(push, promote), components(schemas(PushOut, PromoteIn)))]
struct FrugalDoc;

#[async_trait::async_trait]
impl crate::kernel::channel::Adapter for Frugal {
    fn name(&self) -> &'static str {
        "frugal"
    }

    fn routes(&self) -> Router<AppState> {
        routes()
    }

    fn openapi(&self) -> Option<utoipa::openapi::OpenApi> {
        Some(<FrugalDoc as utoipa::OpenApi>::openapi())
    }
}

/// What an ESP8266/ESP32 `httpUpdate` client says about itself in its `x-ESP…` headers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EspReport {
    pub sketch_md5: Option<String>,
    pub free_space: Option<u64>,
    pub version: Option<String>,
    /// Every `x-ESP8266-*` / `x-ESP32-*` header, by its name without the prefix.
    pub headers: BTreeMap<String, String>,
}

impl EspReport {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut report = EspReport::default();
        for (name, value) in headers {
            let name = name.as_str();
            let Some(key) = name
                .strip_prefix("x-esp8266-")
                .or_else(|| name.strip_prefix("x-esp32-"))
            else {
                continue;
            };
            let Ok(value) = value.to_str() else { continue };
            let value = value.trim().to_owned();
            match key {
                "sketch-md5" => report.sketch_md5 = Some(value.to_ascii_lowercase()),
                "free-space" => report.free_space = value.parse().ok(),
                "version" => report.version = Some(value.clone()),
                _ => {}
            }
            report.headers.insert(key.to_owned(), value);
        }
        report
    }
}

#[derive(Deserialize, Default)]
struct CheckInQuery {
    md5: Option<String>,
}

fn not_modified() -> Response {
    StatusCode::NOT_MODIFIED.into_response()
}

fn segment<T>(parsed: Result<T, updraft_core::NameError>, what: &str) -> ApiResult<T> {
    parsed.map_err(|e| {
        ApiError::bad_request("invalid_request", format!("bad {what} in the URL: {e}"))
    })
}

async fn ensure_project(state: &AppState, tenant: TenantKey, name: &Name) -> ApiResult<ProjectKey> {
    if let Some(project) = state.store.project_by_name(tenant, name).await? {
        return Ok(project.key);
    }
    match state.store.create_project(tenant, name).await {
        Ok(project) => Ok(project.key),
        // Another check-in created it meanwhile.
        Err(StoreError::Conflict { .. }) => state
            .store
            .project_by_name(tenant, name)
            .await?
            .map(|p| p.key)
            .ok_or_else(|| ApiError::internal("project vanished")),
        Err(err) => Err(err.into()),
    }
}

async fn ensure_profile(state: &AppState, tenant: TenantKey, name: &Name) -> ApiResult<ProfileKey> {
    if let Some(profile) = state.store.profile_by_name(tenant, name).await? {
        return Ok(profile.key);
    }
    match state
        .store
        .create_profile(tenant, name, "Frugal-IoT OTA key")
        .await
    {
        Ok(profile) => Ok(profile.key),
        Err(StoreError::Conflict { .. }) => state
            .store
            .profile_by_name(tenant, name)
            .await?
            .map(|p| p.key)
            .ok_or_else(|| ApiError::internal("profile vanished")),
        Err(err) => Err(err.into()),
    }
}

/// The node as the URL places it: registered if new, moved if its project or OTA key changed.
async fn place_node(
    state: &AppState,
    tenant: &updraft_store::Tenant,
    node: &DeviceId,
    project: &Name,
    ota_key: &Name,
    report: &EspReport,
) -> ApiResult<Device> {
    let existing = state.store.device(tenant.key, node).await?;
    let in_place = |d: &Device| {
        d.project.as_ref().is_some_and(|(_, n)| n == project)
            && d.profile.as_ref().is_some_and(|(_, n)| n == ota_key)
    };
    match existing {
        Some(device) if in_place(&device) => Ok(device),
        Some(device) => {
            let project = ensure_project(state, tenant.key, project).await?;
            let profile = ensure_profile(state, tenant.key, ota_key).await?;
            state
                .store
                .place_device(tenant.key, device.key, Some(project), Some(profile))
                .await?;
            state
                .store
                .device(tenant.key, node)
                .await?
                .ok_or_else(|| ApiError::internal("device vanished"))
        }
        None if tenant.settings.frugal_auto_register => {
            let project = ensure_project(state, tenant.key, project).await?;
            let profile = ensure_profile(state, tenant.key, ota_key).await?;
            let new = NewDevice {
                id: node.clone(),
                project: Some(project),
                profile: Some(profile),
                tags: vec!["frugal-iot".to_owned()],
                attributes: report.headers.clone(),
            };
            match state.store.create_device(tenant.key, &new, &[]).await {
                Ok(device) => Ok(device),
                Err(StoreError::Conflict { .. }) => state
                    .store
                    .device(tenant.key, node)
                    .await?
                    .ok_or_else(|| ApiError::internal("device vanished")),
                Err(err) => Err(err.into()),
            }
        }
        None => Err(ApiError::not_found(
            "device_not_found",
            format!("no node {node:?}: create it, or let the org's nodes register themselves"),
        )),
    }
}

async fn check_in(
    State(state): State<AppState>,
    ApiPath((org, project, node, ota_key)): ApiPath<(String, String, String, String)>,
    ApiQuery(query): ApiQuery<CheckInQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let org = segment(Name::parse(&org), "org")?;
    let project = segment(Name::parse(&project), "project")?;
    let node = segment(DeviceId::parse(&node), "node")?;
    let ota_key = segment(Name::parse(&ota_key), "OTA key")?;
    let mut report = EspReport::from_headers(&headers);
    if report.sketch_md5.is_none() {
        report.sketch_md5 = query.md5.map(|m| m.trim().to_ascii_lowercase());
    }
    let tenant = state
        .store
        .tenant_by_name(org.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found("tenant_not_found", format!("no org {org:?}")))?;
    let device = place_node(&state, &tenant, &node, &project, &ota_key, &report).await?;

    let now = crate::kernel::clock::now_millis();
    if device.last_seen.is_none_or(|seen| now - seen > 30_000) {
        state.store.touch_device(device.key).await?;
    }
    let changed = report
        .headers
        .iter()
        .any(|(k, v)| device.attributes.get(k) != Some(v));
    if changed {
        state
            .store
            .update_attributes(device.key, AttributeMode::Merge, &report.headers)
            .await?;
    }

    let Some(status) = state.store.device_status(tenant.key, &device.id).await? else {
        return Ok(not_modified());
    };
    let Some(desired) = status.desired_firmware else {
        return Ok(not_modified());
    };
    let Some(artifact) = state.store.artifact(tenant.key, desired.artifact).await? else {
        return Ok(not_modified());
    };
    let active = status.active.filter(|a| a.artifact == Some(artifact.key));
    let runs_it = report.sketch_md5.as_deref() == Some(artifact.checksums.md5.as_str());
    if runs_it {
        if let Some(action) = active {
            state
                .store
                .report(tenant.key, action.key, &Report::Succeeded, "frugal")
                .await?;
        }
        return Ok(not_modified());
    }
    // Nothing to hand out unless an update is under way (a failed one waits for a new assignment).
    let Some(action) = active else {
        return Ok(not_modified());
    };
    // Never downgrade a node that says its version, unless the node itself was assigned this.
    let older = match &report.version {
        Some(running) => compare_versions(&artifact.version, running) == Some(Ordering::Less),
        None => false,
    };
    if older && !matches!(desired.scope, Scope::Device(_)) {
        return Ok(not_modified());
    }
    if let Some(free) = report.free_space
        && free < artifact.size
    {
        let reason = format!(
            "the binary needs {} bytes; the node has {free} free",
            artifact.size
        );
        let failure = Report::Failed(Failure {
            code: FailureCode::NotEnoughStorage,
            reason: reason.clone(),
        });
        state
            .store
            .report(tenant.key, action.key, &failure, "frugal")
            .await?;
        return Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "not_enough_space",
            reason,
        ));
    }
    if action.state < UpdateState::Downloading {
        let downloading = Report::Reached {
            state: UpdateState::Downloading,
            progress: Some(Progress {
                done: 0,
                total: artifact.size,
            }),
        };
        state
            .store
            .report(tenant.key, action.key, &downloading, "frugal")
            .await?;
    }
    let blob = BlobResponse {
        sha256: &artifact.checksums.sha256,
        size: artifact.size,
        filename: &artifact.filename,
        content_type: "application/octet-stream",
        modified_at: artifact.created_at,
    };
    // The Arduino clients never ask for ranges; send the whole binary whatever they say.
    let mut response = serve_blob(&state, blob, &HeaderMap::new()).await?;
    if let Ok(md5) = HeaderValue::from_str(&artifact.checksums.md5) {
        response.headers_mut().insert("x-MD5", md5);
    }
    Ok(response)
}

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

/// The caller's tenant, which must be the org the request names (404 otherwise: nothing leaks).
fn own_org(caller: &Caller, org: &str) -> ApiResult<TenantKey> {
    if caller.key.tenant_name.as_str().eq_ignore_ascii_case(org) {
        Ok(caller.tenant())
    } else {
        Err(ApiError::not_found(
            "tenant_not_found",
            format!("no org {org:?} for this key"),
        ))
    }
}

/// ESP flash is at most 16 MiB.
const MAX_FRUGAL_BINARY: usize = 16 * 1024 * 1024;

#[utoipa::path(post, path = "/api/v1/frugal/push", tag = "frugal", params(PushQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the firmware binary"),
    responses((status = 201, body = PushOut), (status = 404, body = crate::kernel::error::ErrorBody)))]
pub async fn push(
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
                    state.store.create_device(tenant, &new, &[]).await?
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
    state.wake.notify_one();
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
pub async fn promote(
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
    state.wake.notify_one();
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
