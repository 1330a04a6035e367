//! Assignments (what should run where) and the fleet's status.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use updraft_core::{ArtifactKey, ArtifactKind, DeviceId, Role, Scope, TenantKey};

use crate::api::wire::*;
use crate::kernel::auth::Caller;
use crate::kernel::cluster::News;
use crate::kernel::error::{ApiError, ApiResult, ErrorBody};
use crate::kernel::extract::{ApiJson, ApiQuery};
use crate::kernel::ingest::{profile_key, project_key};
use crate::kernel::state::AppState;

/// Turns the request's scope fields into a [`Scope`] of the caller's tenant.
pub(super) async fn scope_of(
    state: &AppState,
    tenant: TenantKey,
    scope: &ScopeIn,
) -> ApiResult<Scope> {
    let say_where = || {
        ApiError::bad_request(
            "invalid_request",
            "say where to assign: device; project and/or profile; or tenant_default: true (one of them)",
        )
    };
    match (
        &scope.device,
        &scope.project,
        &scope.profile,
        scope.tenant_default,
    ) {
        (Some(id), None, None, false) => {
            let device_id = DeviceId::parse(id)?;
            let device = state
                .store
                .device(tenant, &device_id)
                .await?
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "unknown_device",
                        format!("no device {id:?} in this tenant"),
                    )
                })?;
            Ok(Scope::Device(device.key))
        }
        (None, Some(project), Some(profile), false) => Ok(Scope::ProjectProfile(
            project_key(state, tenant, project).await?,
            profile_key(state, tenant, profile).await?,
        )),
        (None, Some(project), None, false) => {
            Ok(Scope::Project(project_key(state, tenant, project).await?))
        }
        (None, None, Some(profile), false) => {
            Ok(Scope::Profile(profile_key(state, tenant, profile).await?))
        }
        (None, None, None, true) => Ok(Scope::Tenant),
        _ => Err(say_where()),
    }
}

/// Finds the artifact a request names as `TITLE@VERSION` or by id.
pub async fn artifact_named(
    state: &AppState,
    tenant: TenantKey,
    release: Option<&str>,
    id: Option<i64>,
) -> ApiResult<updraft_store::Artifact> {
    let unknown =
        |what: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_artifact", what);
    match (release, id) {
        (Some(release), None) => {
            let (title, version) = release.rsplit_once('@').ok_or_else(|| {
                ApiError::bad_request("invalid_request", "name the artifact as TITLE@VERSION")
            })?;
            state
                .store
                .artifact_by_release(tenant, title, version)
                .await?
                .ok_or_else(|| {
                    unknown(format!(
                        "no artifact {release} in this tenant: upload it first"
                    ))
                })
        }
        (None, Some(id)) => state
            .store
            .artifact(tenant, ArtifactKey(id))
            .await?
            .ok_or_else(|| unknown(format!("no artifact {id} in this tenant"))),
        _ => Err(ApiError::bad_request(
            "invalid_request",
            "give either artifact (TITLE@VERSION) or artifact_id",
        )),
    }
}

#[utoipa::path(get, path = "/api/v1/assignments", tag = "assignments", responses((status = 200, body = Vec<AssignmentOut>)))]
pub async fn list_assignments(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<AssignmentOut>>> {
    let assignments = state.store.list_assignments(caller.tenant()).await?;
    Ok(Json(assignments.iter().map(AssignmentOut::from).collect()))
}

#[utoipa::path(post, path = "/api/v1/assignments", tag = "assignments", request_body = AssignmentIn,
    responses((status = 201, body = AssignmentOut), (status = 422, body = ErrorBody)))]
pub async fn assign(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<AssignmentIn>,
) -> ApiResult<(StatusCode, Json<AssignmentOut>)> {
    caller.require(Role::Maintainer)?;
    let tenant = caller.tenant();
    let artifact =
        artifact_named(&state, tenant, body.artifact.as_deref(), body.artifact_id).await?;
    let scope = scope_of(&state, tenant, &body.scope).await?;
    state
        .adapters
        .check_assignment(&state, tenant, scope, &artifact, None)
        .await?;
    let assignment = state
        .store
        .assign(tenant, scope, artifact.key, &caller.source())
        .await?;
    state.announce(News::Queued);
    Ok((StatusCode::CREATED, Json(AssignmentOut::from(&assignment))))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
pub struct UnassignQuery {
    pub device: Option<String>,
    pub project: Option<String>,
    pub profile: Option<String>,
    #[serde(default)]
    pub tenant_default: bool,
    /// firmware (default) or software.
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

#[utoipa::path(delete, path = "/api/v1/assignments", tag = "assignments", params(UnassignQuery),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn unassign(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<UnassignQuery>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Maintainer)?;
    let tenant = caller.tenant();
    let kind = match &query.kind {
        Some(kind) => kind
            .parse::<ArtifactKind>()
            .map_err(|e| ApiError::bad_request("invalid_request", e))?,
        None => ArtifactKind::Firmware,
    };
    let scope_in = ScopeIn {
        device: query.device.clone(),
        project: query.project.clone(),
        profile: query.profile.clone(),
        tenant_default: query.tenant_default,
    };
    let scope = scope_of(&state, tenant, &scope_in).await?;
    if state
        .store
        .unassign(tenant, scope, kind, &caller.source())
        .await?
    {
        // Devices that were given a package learn that it is withdrawn.
        state.announce(News::Withdrawn(tenant));
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(
            "assignment_not_found",
            "nothing of that type is assigned there",
        ))
    }
}

#[utoipa::path(get, path = "/api/v1/status", tag = "status", responses((status = 200, body = StatusOut)))]
pub async fn status(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<StatusOut>> {
    let summary = state.store.fleet_summary(caller.tenant()).await?;
    Ok(Json(StatusOut {
        tenant: caller.key.tenant_name.to_string(),
        devices: summary.devices,
        artifacts: summary.artifacts,
        actions: summary.latest_action_states,
    }))
}
