//! The hawkBit Direct Device Integration (DDI) API, wire-compatible with hawkBit as far as a
//! device can tell: poll, deploymentBase, feedback, cancelAction, configData, installedBase and
//! artifact downloads under `/{tenant}/controller/v1/{controllerId}`. Everything maps onto the
//! shared model: the resolution rule decides what a device gets, feedback becomes update reports.
//!
//! Where hawkBit has no word for one of our states, `proceeding` feedback whose first detail starts
//! with `Verified` means VERIFIED and `Installing`/`Updating` means UPDATING; failure details
//! mentioning integrity/checksum/hash/signature map to `integrity_check_failed` (and so on, see
//! `FailureCode::from_text`).

mod deployment;
pub mod feedback;

use self::deployment::{deployment_base, download, installed_base};
pub use self::feedback::report_of;
use self::feedback::{cancel_action, cancel_feedback, config_data, feedback};

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};
use updraft_core::{ArtifactKey, DeviceId, Failure, FailureCode, Progress, Report, UpdateState};
use updraft_store::{
    Action, Artifact, AttributeMode, CredentialKind, Device, NewDevice, ReportOutcome,
    TenantSettings,
};

use crate::kernel::download::{BlobResponse, serve_or_redirect};
use crate::kernel::error::{ApiError, ApiResult};
use crate::kernel::extract::{ApiPath, ApiQuery};
use crate::kernel::secret;
use crate::kernel::state::AppState;

const BASE: &str = "/{tenant}/controller/v1/{controller}";

/// The DDI routes, to be merged into the server's router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(BASE, get(poll))
        .route(
            &format!("{BASE}/deploymentBase/{{action}}"),
            get(deployment_base),
        )
        .route(
            &format!("{BASE}/deploymentBase/{{action}}/feedback"),
            post(feedback),
        )
        .route(
            &format!("{BASE}/cancelAction/{{action}}"),
            get(cancel_action),
        )
        .route(
            &format!("{BASE}/cancelAction/{{action}}/feedback"),
            post(cancel_feedback),
        )
        .route(&format!("{BASE}/configData"), put(config_data))
        .route(
            &format!("{BASE}/installedBase/{{action}}"),
            get(installed_base),
        )
        .route(
            &format!("{BASE}/softwaremodules/{{module}}/artifacts/{{filename}}"),
            get(download),
        )
}

/// The DDI adapter: its routes (devices poll; there is no channel).
pub struct Ddi;

#[async_trait::async_trait]
impl crate::kernel::channel::Adapter for Ddi {
    fn name(&self) -> &'static str {
        "ddi"
    }

    fn routes(&self) -> Router<AppState> {
        routes()
    }
}

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "send Authorization: TargetToken <device token> or GatewayToken <tenant gateway token>",
    )
}

/// The device a request speaks for: its TargetToken must belong to that controller of that
/// tenant, or a GatewayToken to that tenant (which may register an unknown controller when the
/// tenant allows it). Anything else is 401, with nothing said about what exists.
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    tenant: &str,
    controller: &str,
) -> ApiResult<Device> {
    Ok(
        authenticate_with_settings(state, headers, tenant, controller)
            .await?
            .0,
    )
}

/// [`authenticate`], with the tenant's device-API settings.
async fn authenticate_with_settings(
    state: &AppState,
    headers: &HeaderMap,
    tenant: &str,
    controller: &str,
) -> ApiResult<(Device, TenantSettings)> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(unauthorized)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(unauthorized)?;
    let token = token.trim();
    if scheme.eq_ignore_ascii_case("TargetToken") {
        // The tenant the URL names, then the token within it: a token of another tenant opens
        // nothing here.
        let owner = state
            .store
            .tenant_by_name(tenant)
            .await?
            .ok_or_else(unauthorized)?;
        let device = state
            .store
            .device_by_credential_in(owner.key, CredentialKind::AccessToken, &secret::hash(token))
            .await?
            .ok_or_else(unauthorized)?;
        if device.id.as_str() != controller {
            return Err(unauthorized());
        }
        return Ok((device, owner.settings));
    }
    if scheme.eq_ignore_ascii_case("GatewayToken") {
        let owner = state
            .store
            .tenant_by_gateway_token(&secret::hash(token))
            .await?
            .ok_or_else(unauthorized)?;
        if !owner.name.as_str().eq_ignore_ascii_case(tenant) {
            return Err(unauthorized());
        }
        let id = DeviceId::parse(controller)?;
        if let Some(device) = state.store.device(owner.key, &id).await? {
            return Ok((device, owner.settings));
        }
        if !owner.settings.auto_register {
            return Err(ApiError::not_found(
                "device_not_found",
                format!(
                    "no controller {controller:?}: create it, or allow auto-registration for the tenant"
                ),
            ));
        }
        if !state.registrations.allow(&owner.key) {
            return Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many controllers registering at once: poll again later",
            ));
        }
        let new = NewDevice {
            id,
            project: None,
            profile: None,
            tags: vec![],
            attributes: BTreeMap::new(),
        };
        let device = match state.store.create_device(owner.key, &new, &[]).await {
            Ok(device) => device,
            // Two first polls of the same controller: the other one registered it.
            Err(updraft_store::StoreError::Conflict { .. }) => state
                .store
                .device(owner.key, &new.id)
                .await?
                .ok_or_else(unauthorized)?,
            Err(err) => return Err(err.into()),
        };
        return Ok((device, owner.settings));
    }
    Err(unauthorized())
}

/// Absolute base URL for links, from the request as the device sent it (proxy headers first).
fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    let header_text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let host = header_text("x-forwarded-host").or_else(|| header_text("host"));
    match host {
        Some(host) if !host.is_empty() && !host.contains('/') => {
            let scheme = header_text("x-forwarded-proto")
                .filter(|p| *p == "https")
                .unwrap_or("http");
            format!("{scheme}://{host}")
        }
        _ => state.config.public_url.clone(),
    }
}

fn hal(body: Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/hal+json;charset=UTF-8")],
        axum::Json(body),
    )
        .into_response()
}

/// `HH:MM:SS`, as hawkBit writes the polling sleep.
pub fn sleep_text(secs: u32) -> String {
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// A value that changes when the action changes, for the `c` cache-busting parameter.
fn cache_key(action: &Action) -> String {
    let digest = secret::hash(&format!(
        "{}:{:?}:{}",
        action.key, action.artifact, action.artifact_version
    ));
    digest[..8].to_owned()
}

async fn poll(
    State(state): State<AppState>,
    ApiPath((tenant, controller)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (device, settings) =
        authenticate_with_settings(&state, &headers, &tenant, &controller).await?;
    // last_seen at most every 30 s, so that polling fleets do not turn into a stream of writes.
    let now = crate::kernel::clock::now_millis();
    if device.last_seen.is_none_or(|seen| now - seen > 30_000) {
        state.store.touch_device(device.key).await?;
    }
    let base = format!(
        "{}/{tenant}/controller/v1/{controller}",
        base_url(&state, &headers)
    );
    let mut links = serde_json::Map::new();
    let view = state.store.poll_view(device.key).await?;
    if let Some(cancel) = view.pending_cancel {
        links.insert(
            "cancelAction".into(),
            json!({"href": format!("{base}/cancelAction/{}", cancel.key)}),
        );
    } else if let Some(active) = view.active {
        crate::kernel::actions::told(&state, device.tenant, active.key, active.state, "ddi")
            .await?;
        links.insert(
            "deploymentBase".into(),
            json!({"href": format!("{base}/deploymentBase/{}?c={}", active.key, cache_key(&active))}),
        );
    } else if let Some(done) = view.last_updated {
        links.insert(
            "installedBase".into(),
            json!({"href": format!("{base}/installedBase/{}", done.key)}),
        );
    }
    if device.attributes.is_empty() {
        links.insert(
            "configData".into(),
            json!({"href": format!("{base}/configData")}),
        );
    }
    Ok(hal(json!({
        "config": {"polling": {"sleep": sleep_text(settings.poll_interval_secs)}},
        "_links": links,
    })))
}

fn action_not_found(action: i64) -> ApiError {
    ApiError::not_found(
        "action_not_found",
        format!("no action {action} for this controller"),
    )
}

/// The device's own action `action`.
async fn own_action(state: &AppState, device: &Device, action: i64) -> ApiResult<Action> {
    let found = state
        .store
        .action(device.tenant, updraft_core::ActionKey(action))
        .await?;
    found
        .filter(|a| a.device == device.key)
        .ok_or_else(|| action_not_found(action))
}

#[cfg(test)]
mod tests;
