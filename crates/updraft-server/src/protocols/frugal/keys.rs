//! Frugal-IoT OTA keys: project keys that enroll nodes into one project and profile, and a node's
//! own key. Secrets are generated here, shown once and stored as hashes.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use updraft_core::{DeviceId, Name, Role};
use updraft_store::FrugalKey;

use super::{ensure_profile, ensure_project};
use crate::kernel::auth::Caller;
use crate::kernel::error::{ApiError, ApiResult, ErrorBody};
use crate::kernel::extract::{ApiJson, ApiPath};
use crate::kernel::secret;
use crate::kernel::state::AppState;

/// Nodes a project key enrolls unless told otherwise.
const DEFAULT_MAX_NODES: u64 = 10_000;

#[derive(Deserialize, utoipa::ToSchema)]
pub struct FrugalKeyIn {
    /// The project enrolled nodes join (created if new).
    pub project: String,
    /// The profile (Frugal-IoT's firmware type) they get (created if new).
    pub profile: String,
    /// At most this many nodes enroll with the key (default 10000).
    pub max_nodes: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct FrugalKeyOut {
    pub id: i64,
    pub project: String,
    pub profile: String,
    pub max_nodes: u64,
    pub created_at: i64,
    /// The OTA key to configure on the nodes (`SYSTEM_OTA_KEY`). Shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl FrugalKeyOut {
    fn new(key: &FrugalKey, secret: Option<String>) -> Self {
        Self {
            id: key.id,
            project: key.project.1.to_string(),
            profile: key.profile.1.to_string(),
            max_nodes: key.max_nodes,
            created_at: key.created_at,
            secret,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct NodeKeyOut {
    pub device: String,
    /// The node's own OTA key (`SYSTEM_OTA_KEY`). Shown once; a new one replaces the old.
    pub secret: String,
}

fn new_secret() -> ApiResult<String> {
    secret::generate("fk_", 20).map_err(ApiError::internal)
}

#[utoipa::path(post, path = "/api/v1/frugal/keys", tag = "frugal", request_body = FrugalKeyIn,
    responses((status = 201, body = FrugalKeyOut), (status = 403, body = ErrorBody)))]
pub async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<FrugalKeyIn>,
) -> ApiResult<(StatusCode, Json<FrugalKeyOut>)> {
    caller.require(Role::Admin)?;
    let tenant = caller.tenant();
    let project = ensure_project(&state, tenant, &Name::parse(&body.project)?).await?;
    let profile = ensure_profile(&state, tenant, &Name::parse(&body.profile)?).await?;
    let secret = new_secret()?;
    let key = state
        .store
        .create_frugal_key(
            tenant,
            project,
            profile,
            &secret::hash(&secret),
            body.max_nodes.unwrap_or(DEFAULT_MAX_NODES),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(FrugalKeyOut::new(&key, Some(secret))),
    ))
}

#[utoipa::path(get, path = "/api/v1/frugal/keys", tag = "frugal",
    responses((status = 200, body = Vec<FrugalKeyOut>)))]
pub async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<FrugalKeyOut>>> {
    let keys = state.store.list_frugal_keys(caller.tenant()).await?;
    Ok(Json(
        keys.iter().map(|k| FrugalKeyOut::new(k, None)).collect(),
    ))
}

#[utoipa::path(delete, path = "/api/v1/frugal/keys/{id}", tag = "frugal", params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_key(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Admin)?;
    if state.store.delete_frugal_key(caller.tenant(), id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(
            "key_not_found",
            format!("no Frugal key {id}"),
        ))
    }
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/frugal-key", tag = "frugal", params(("id" = String, Path)),
    responses((status = 201, body = NodeKeyOut), (status = 404, body = ErrorBody)))]
pub async fn node_key(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<(StatusCode, Json<NodeKeyOut>)> {
    caller.require(Role::Admin)?;
    let not_found = || ApiError::not_found("device_not_found", format!("no device {id:?}"));
    let device_id = DeviceId::parse(&id).map_err(|_| not_found())?;
    let device = state
        .store
        .device(caller.tenant(), &device_id)
        .await?
        .ok_or_else(not_found)?;
    let secret = new_secret()?;
    state
        .store
        .set_frugal_node_key(device.key, Some(&secret::hash(&secret)))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(NodeKeyOut {
            device: device.id.to_string(),
            secret,
        }),
    ))
}
