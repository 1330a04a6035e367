//! Frugal-IoT / Arduino `httpUpdate` OTA: `GET /ota_update/{org}/{project}/{node}/{ota_key}`
//! answered with `304 Not Modified` or the binary. The org is the tenant; the OTA key is a secret
//! (Frugal-IoT's `SYSTEM_OTA_KEY`): the node's own key, or a project key that enrolls nodes into
//! one project and profile. The choice of binary is the shared resolution rule (node, then project
//! and profile, then org and profile), so there is no second lookup engine. A check-in only ever
//! touches a device that speaks Frugal (one with a key of its own or enrolled by a project key).
//!
//! Also the developer side (Frugal-IoT's wish for authenticated per-organization uploads):
//! `POST /api/v1/frugal/push` and `POST /api/v1/frugal/promote`, and the keys:
//! `/api/v1/frugal/keys` and `POST /api/v1/devices/{id}/frugal-key`.

mod check_in;
mod developer;
mod keys;

use std::collections::BTreeMap;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::{delete, get, post};
use updraft_core::{Name, ProfileKey, ProjectKey, TenantKey};
use updraft_store::StoreError;

use crate::kernel::auth::Caller;
use crate::kernel::error::{ApiError, ApiResult};
use crate::kernel::state::AppState;

pub use developer::{PromoteIn, PushOut, PushQuery};
pub use keys::{FrugalKeyIn, FrugalKeyOut, NodeKeyOut};

/// The device-facing route and the developer and key endpoints.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/ota_update/{org}/{project}/{node}/{ota_key}",
            get(check_in::check_in),
        )
        .route("/api/v1/frugal/push", post(developer::push))
        .route("/api/v1/frugal/promote", post(developer::promote))
        .route(
            "/api/v1/frugal/keys",
            post(keys::create_key).get(keys::list_keys),
        )
        .route("/api/v1/frugal/keys/{id}", delete(keys::delete_key))
        .route("/api/v1/devices/{id}/frugal-key", post(keys::node_key))
}

/// The Frugal-IoT adapter: the check-in route and the developer endpoints.
pub struct Frugal;

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        developer::push,
        developer::promote,
        keys::create_key,
        keys::list_keys,
        keys::delete_key,
        keys::node_key
    ),
    components(schemas(PushOut, PromoteIn, FrugalKeyIn, FrugalKeyOut, NodeKeyOut))
)]
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
