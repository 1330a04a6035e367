//! The check-in: authenticate the node by its OTA key, record what it reports, answer `304` or
//! the binary.

use std::cmp::Ordering;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use updraft_core::{
    DeviceId, Failure, FailureCode, Name, Progress, Report, Scope, UpdateState, compare_versions,
};
use updraft_store::{AttributeMode, Device, Enrollment, FrugalKey, NewDevice, StoreError, Tenant};

use super::EspReport;
use crate::kernel::download::{BlobResponse, serve_blob};
use crate::kernel::error::{ApiError, ApiResult};
use crate::kernel::extract::{ApiPath, ApiQuery};
use crate::kernel::secret;
use crate::kernel::state::AppState;

#[derive(Deserialize, Default)]
pub(super) struct CheckInQuery {
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

/// The one answer for an unknown org, an unknown node, a device that does not speak Frugal and a
/// wrong key, so that none of them can be told apart.
fn refused() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "unknown node or OTA key: give the node its own key, or a project key to enroll with",
    )
}

/// The tenant's project key whose secret hashes to `hash`.
async fn project_key(state: &AppState, tenant: &Tenant, hash: &str) -> ApiResult<FrugalKey> {
    state
        .store
        .frugal_key_by_hash(tenant.key, hash)
        .await?
        .filter(|key| secret::same(&key.secret_hash, hash))
        .ok_or_else(refused)
}

/// The node the OTA key proves: a Frugal node whose own key or enrolling project key it is, or
/// a new node enrolled by a project key (where the tenant lets nodes enroll, within the key's
/// node limit and the tenant's registration rate). A check-in never moves a node: its project
/// and profile are the store's, whatever the URL says.
async fn authenticate(
    state: &AppState,
    tenant: &Tenant,
    node: &DeviceId,
    project: &Name,
    ota_key: &str,
    report: &EspReport,
) -> ApiResult<Device> {
    let hash = secret::hash(ota_key);
    if let Some(device) = state.store.device(tenant.key, node).await? {
        let member = state
            .store
            .frugal_node(device.key)
            .await?
            .ok_or_else(refused)?;
        // Its own key, or the project key that enrolled it (read with the membership).
        let proven = [&member.secret_hash, &member.key_hash]
            .into_iter()
            .flatten()
            .any(|known| secret::same(known, &hash));
        if proven {
            return Ok(device);
        }
        // Pushed for before it ever checked in: the first node of its project with a key of
        // that project claims it.
        if member.secret_hash.is_some() || member.key.is_some() {
            return Err(refused());
        }
        let key = project_key(state, tenant, &hash).await?;
        let same_project = device.project.as_ref().map(|p| p.0) == Some(key.project.0);
        if same_project && state.store.claim_frugal_node(device.key, key.id).await? {
            return Ok(device);
        }
        return Err(refused());
    }
    let key = project_key(state, tenant, &hash).await?;
    if &key.project.1 != project {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "wrong_project",
            format!(
                "this OTA key enrolls nodes of project {}, not {project}",
                key.project.1
            ),
        ));
    }
    if !tenant.settings.frugal_auto_register {
        return Err(ApiError::not_found(
            "device_not_found",
            format!("no node {node:?}: create it, or let the org's nodes enroll"),
        ));
    }
    if !state.registrations.allow(&tenant.key) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many nodes enrolling at once: try again at the next interval",
        ));
    }
    let new = NewDevice {
        id: node.clone(),
        project: None,
        profile: None,
        tags: vec!["frugal-iot".to_owned()],
        attributes: report.headers.clone(),
    };
    match state.store.enroll_frugal_node(&key, &new).await {
        Ok((Enrollment::Enrolled, Some(device))) => Ok(device),
        Ok(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "key_full",
            format!("this OTA key enrolled its {} nodes already", key.max_nodes),
        )),
        // Another check-in of the same node enrolled it meanwhile.
        Err(StoreError::Conflict { .. }) => {
            let device = state
                .store
                .device(tenant.key, node)
                .await?
                .ok_or_else(refused)?;
            let member = state.store.frugal_node(device.key).await?;
            if member.and_then(|m| m.key) == Some(key.id) {
                Ok(device)
            } else {
                Err(refused())
            }
        }
        Err(err) => Err(err.into()),
    }
}

pub(super) async fn check_in(
    State(state): State<AppState>,
    ApiPath((org, project, node, ota_key)): ApiPath<(String, String, String, String)>,
    ApiQuery(query): ApiQuery<CheckInQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let project = segment(Name::parse(&project), "project")?;
    let node = segment(DeviceId::parse(&node), "node")?;
    let mut report = EspReport::from_headers(&headers);
    if report.sketch_md5.is_none() {
        report.sketch_md5 = query.md5.map(|m| m.trim().to_ascii_lowercase());
    }
    let tenant = state
        .store
        .tenant_by_name(&org)
        .await?
        .ok_or_else(refused)?;
    let device = authenticate(&state, &tenant, &node, &project, &ota_key, &report).await?;

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
    // `httpUpdate` installs what it downloads: offered inside a maintenance window only.
    let status = crate::kernel::terms::held_back(&state, status).await?;
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
