//! Devices: list, create (with the credentials the adapters add), show, delete, history.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use updraft_core::{DeviceId, Filter, Role, TenantKey};
use updraft_store::{CredentialKind, Device, NewCredential, NewDevice, Page, Paged};

use crate::api::wire::*;
use crate::kernel::auth::Caller;
use crate::kernel::error::{ApiError, ApiResult, ErrorBody};
use crate::kernel::extract::{ApiJson, ApiPath, ApiQuery};
use crate::kernel::ingest::{profile_key, project_key};
use crate::kernel::secret;
use crate::kernel::state::AppState;

/// Devices are scanned in batches of this many, in id order.
const SCAN_BATCH: u64 = 1000;

/// The page of a tenant's devices that match `filter`, and how many match in all: one pass over
/// the fleet in keyset batches, holding at most one batch and the page.
async fn matching_devices(
    state: &AppState,
    tenant: TenantKey,
    filter: &Filter,
    page: Page,
) -> ApiResult<Paged<Device>> {
    let now = crate::kernel::clock::now_millis();
    state
        .metrics
        .fleet_scans
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut after: Option<DeviceId> = None;
    let mut found = Paged {
        items: Vec::new(),
        total: 0,
    };
    loop {
        let batch = state
            .store
            .devices_after(tenant, after.as_ref(), SCAN_BATCH)
            .await?;
        for device in &batch {
            if !filter.matches(&device.facts(now)) {
                continue;
            }
            if found.total >= page.offset && (found.items.len() as u64) < page.limit {
                found.items.push(device.clone());
            }
            found.total += 1;
        }
        if (batch.len() as u64) < SCAN_BATCH {
            return Ok(found);
        }
        after = batch.last().map(|d| d.id.clone());
    }
}

pub(super) fn device_not_found(id: &str) -> ApiError {
    ApiError::not_found(
        "device_not_found",
        format!("no device {id:?} in this tenant"),
    )
}

#[utoipa::path(get, path = "/api/v1/devices", tag = "devices", params(DeviceQuery),
    responses((status = 200, body = DevicePage), (status = 400, body = ErrorBody)))]
pub async fn list_devices(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<DeviceQuery>,
) -> ApiResult<Json<DevicePage>> {
    let page = query.page();
    let devices = match &query.filter {
        Some(text) => {
            let filter = Filter::parse(text)
                .map_err(|e| ApiError::bad_request("bad_filter", e.to_string()))?;
            matching_devices(&state, caller.tenant(), &filter, page).await?
        }
        None => state.store.list_devices(caller.tenant(), page).await?,
    };
    Ok(Json(DevicePage {
        items: devices.items.iter().map(DeviceOut::from).collect(),
        total: devices.total,
        offset: page.offset,
        limit: page.limit,
    }))
}

#[utoipa::path(post, path = "/api/v1/devices", tag = "devices", request_body = DeviceIn,
    responses((status = 201, body = DeviceCreated), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_device(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<DeviceIn>,
) -> ApiResult<(StatusCode, Json<DeviceCreated>)> {
    caller.require(Role::Maintainer)?;
    let tenant = caller.tenant();
    let id = DeviceId::parse(&body.id)?;
    let profile = match &body.profile {
        Some(name) => Some(profile_key(&state, tenant, name).await?),
        None => None,
    };
    let project = match &body.project {
        Some(name) => Some(project_key(&state, tenant, name).await?),
        None => None,
    };
    let token = match body.token {
        Some(token)
            if token.len() >= 16
                && token.len() <= 256
                && token.chars().all(|c| c.is_ascii_graphic()) =>
        {
            token
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "a device token needs 16 to 256 printable ASCII characters without spaces",
            ));
        }
        None => secret::generate("", 16).map_err(ApiError::internal)?,
    };
    let new = NewDevice {
        id,
        project,
        profile,
        tags: body.tags,
        attributes: body.attributes,
    };
    let mut credentials = vec![NewCredential {
        kind: CredentialKind::AccessToken,
        secret_hash: secret::hash(&token),
        gateway: body.gateway,
    }];
    for adapter in state.adapters.all() {
        credentials.extend(adapter.device_credentials(&state, &body.protocol).await?);
    }
    if let Some(pem) = body.certificate.as_deref().filter(|p| !p.trim().is_empty()) {
        let fingerprint = crate::transport::tls::pem_fingerprint(pem).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_certificate",
                format!("certificate: {e}"),
            )
        })?;
        credentials.push(NewCredential {
            kind: CredentialKind::Certificate,
            secret_hash: fingerprint,
            gateway: false,
        });
    }
    let device = state
        .store
        .create_device(tenant, &new, &credentials)
        .await?;
    let mut protocol = serde_json::Map::new();
    for adapter in state.adapters.all() {
        protocol.extend(
            adapter
                .device_created(&state, &device, &body.protocol)
                .await?,
        );
    }
    Ok((
        StatusCode::CREATED,
        Json(DeviceCreated {
            device: DeviceOut::from(&device),
            token,
            protocol,
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/devices/{id}", tag = "devices", params(("id" = String, Path)),
    responses((status = 200, body = DeviceDetail), (status = 404, body = ErrorBody)))]
pub async fn show_device(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<DeviceDetail>> {
    let device_id = DeviceId::parse(&id).map_err(|_| device_not_found(&id))?;
    let status = state
        .store
        .device_status(caller.tenant(), &device_id)
        .await?
        .ok_or_else(|| device_not_found(&id))?;
    let latest = state
        .store
        .actions_for_device(caller.tenant(), &device_id)
        .await?
        .into_iter()
        .next();
    Ok(Json(DeviceDetail::new(&status, latest.as_ref())))
}

#[utoipa::path(delete, path = "/api/v1/devices/{id}", tag = "devices", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_device(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Admin)?;
    let device_id = DeviceId::parse(&id).map_err(|_| device_not_found(&id))?;
    if state
        .store
        .delete_device(caller.tenant(), &device_id)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(device_not_found(&id))
    }
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/history", tag = "devices", params(("id" = String, Path)),
    responses((status = 200, body = Vec<ActionHistory>), (status = 404, body = ErrorBody)))]
pub async fn device_history(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Vec<ActionHistory>>> {
    let device_id = DeviceId::parse(&id).map_err(|_| device_not_found(&id))?;
    let tenant = caller.tenant();
    if state.store.device(tenant, &device_id).await?.is_none() {
        return Err(device_not_found(&id));
    }
    let mut out = Vec::new();
    for action in state.store.actions_for_device(tenant, &device_id).await? {
        let history = state.store.action_history(tenant, action.key).await?;
        out.push(ActionHistory {
            action: ActionOut::from(&action),
            history: history.iter().map(EventOut::from).collect(),
        });
    }
    Ok(Json(out))
}
