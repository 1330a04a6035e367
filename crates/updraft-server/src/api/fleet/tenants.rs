//! Tenants, their settings and gateway token, and API keys.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use updraft_core::{Name, Role, TenantKey};
use updraft_store::NewApiKey;

use crate::api::wire::*;
use crate::kernel::auth::Caller;
use crate::kernel::error::{ApiError, ApiResult, ErrorBody};
use crate::kernel::extract::{ApiJson, ApiPath};
use crate::kernel::secret;
use crate::kernel::state::AppState;

#[utoipa::path(get, path = "/api/v1/tenants", tag = "tenants",
    responses((status = 200, body = Vec<TenantOut>), (status = 403, body = ErrorBody)))]
pub async fn list_tenants(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<TenantOut>>> {
    caller.require_server_admin()?;
    let tenants = state.store.list_tenants().await?;
    Ok(Json(tenants.iter().map(TenantOut::from).collect()))
}

#[utoipa::path(post, path = "/api/v1/tenants", tag = "tenants", request_body = NameIn,
    responses((status = 201, body = TenantOut), (status = 409, body = ErrorBody)))]
pub async fn create_tenant(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<NameIn>,
) -> ApiResult<(StatusCode, Json<TenantOut>)> {
    caller.require_server_admin()?;
    let tenant = state.store.create_tenant(&Name::parse(&body.name)?).await?;
    Ok((StatusCode::CREATED, Json(TenantOut::from(&tenant))))
}

pub(super) fn parse_role(role: &str) -> ApiResult<Role> {
    role.parse()
        .map_err(|e: String| ApiError::bad_request("invalid_request", e))
}

pub(super) async fn new_key(
    state: &AppState,
    tenant: TenantKey,
    body: &ApiKeyIn,
) -> ApiResult<ApiKeyCreated> {
    let role = parse_role(&body.role)?;
    if body.name.trim().is_empty() || body.name.len() > 64 {
        return Err(ApiError::bad_request(
            "invalid_request",
            "give the key a name of 1 to 64 characters",
        ));
    }
    let token = secret::generate("updraft_", 24).map_err(ApiError::internal)?;
    let new = NewApiKey {
        name: body.name.clone(),
        role,
        server_admin: false,
        secret_hash: secret::hash(&token),
    };
    let key = state.store.create_api_key(tenant, &new).await?;
    Ok(ApiKeyCreated {
        key: ApiKeyOut::from(&key),
        token,
    })
}

#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/api-keys", tag = "tenants", request_body = ApiKeyIn,
    params(("tenant" = String, Path, description = "tenant name")),
    responses((status = 201, body = ApiKeyCreated), (status = 404, body = ErrorBody)))]
pub async fn create_tenant_api_key(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(tenant): ApiPath<String>,
    ApiJson(body): ApiJson<ApiKeyIn>,
) -> ApiResult<(StatusCode, Json<ApiKeyCreated>)> {
    caller.require_server_admin()?;
    let tenant =
        state.store.tenant_by_name(&tenant).await?.ok_or_else(|| {
            ApiError::not_found("tenant_not_found", format!("no tenant {tenant:?}"))
        })?;
    Ok((
        StatusCode::CREATED,
        Json(new_key(&state, tenant.key, &body).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/api-keys", tag = "api-keys", responses((status = 200, body = Vec<ApiKeyOut>)))]
pub async fn list_api_keys(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<ApiKeyOut>>> {
    caller.require(Role::Admin)?;
    let keys = state.store.list_api_keys(caller.tenant()).await?;
    Ok(Json(keys.iter().map(ApiKeyOut::from).collect()))
}

#[utoipa::path(post, path = "/api/v1/api-keys", tag = "api-keys", request_body = ApiKeyIn,
    responses((status = 201, body = ApiKeyCreated), (status = 403, body = ErrorBody)))]
pub async fn create_api_key(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<ApiKeyIn>,
) -> ApiResult<(StatusCode, Json<ApiKeyCreated>)> {
    caller.require(Role::Admin)?;
    Ok((
        StatusCode::CREATED,
        Json(new_key(&state, caller.tenant(), &body).await?),
    ))
}

#[utoipa::path(delete, path = "/api/v1/api-keys/{id}", tag = "api-keys",
    params(("id" = i64, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_api_key(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Admin)?;
    let keys = state.store.list_api_keys(caller.tenant()).await?;
    if keys.iter().any(|k| k.id == id && k.server_admin) {
        return Err(ApiError::forbidden(
            "the server admin key cannot be deleted",
        ));
    }
    if state.store.delete_api_key(caller.tenant(), id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(
            "api_key_not_found",
            format!("no API key {id} in this tenant"),
        ))
    }
}

pub(super) async fn own_tenant(
    state: &AppState,
    caller: &Caller,
) -> ApiResult<updraft_store::Tenant> {
    state
        .store
        .tenant_by_name(caller.key.tenant_name.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found("tenant_not_found", "the key's tenant is gone"))
}

pub(super) fn settings_out(tenant: &updraft_store::Tenant) -> TenantSettingsOut {
    TenantSettingsOut {
        name: tenant.name.to_string(),
        poll_interval_secs: tenant.settings.poll_interval_secs,
        auto_register: tenant.settings.auto_register,
        frugal_auto_register: tenant.settings.frugal_auto_register,
    }
}

#[utoipa::path(get, path = "/api/v1/tenant", tag = "tenants", responses((status = 200, body = TenantSettingsOut)))]
pub async fn show_tenant(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<TenantSettingsOut>> {
    Ok(Json(settings_out(&own_tenant(&state, &caller).await?)))
}

#[utoipa::path(put, path = "/api/v1/tenant/settings", tag = "tenants", request_body = TenantSettingsIn,
    responses((status = 200, body = TenantSettingsOut), (status = 403, body = ErrorBody)))]
pub async fn update_tenant(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<TenantSettingsIn>,
) -> ApiResult<Json<TenantSettingsOut>> {
    caller.require(Role::Admin)?;
    let mut tenant = own_tenant(&state, &caller).await?;
    if let Some(secs) = body.poll_interval_secs {
        if !(1..=86_400).contains(&secs) {
            return Err(ApiError::bad_request(
                "invalid_request",
                "poll_interval_secs must be 1 to 86400",
            ));
        }
        tenant.settings.poll_interval_secs = secs;
    }
    if let Some(auto_register) = body.auto_register {
        tenant.settings.auto_register = auto_register;
    }
    if let Some(frugal) = body.frugal_auto_register {
        tenant.settings.frugal_auto_register = frugal;
    }
    state
        .store
        .update_tenant_settings(tenant.key, tenant.settings)
        .await?;
    Ok(Json(settings_out(&tenant)))
}

#[utoipa::path(post, path = "/api/v1/tenant/gateway-token", tag = "tenants",
    responses((status = 201, body = GatewayTokenOut), (status = 403, body = ErrorBody)))]
pub async fn rotate_gateway_token(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<(StatusCode, Json<GatewayTokenOut>)> {
    caller.require(Role::Admin)?;
    let token = secret::generate("gw_", 24).map_err(ApiError::internal)?;
    state
        .store
        .set_gateway_token(caller.tenant(), Some(&secret::hash(&token)))
        .await?;
    Ok((StatusCode::CREATED, Json(GatewayTokenOut { token })))
}

#[utoipa::path(delete, path = "/api/v1/tenant/gateway-token", tag = "tenants", responses((status = 204), (status = 403, body = ErrorBody)))]
pub async fn revoke_gateway_token(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<StatusCode> {
    caller.require(Role::Admin)?;
    state.store.set_gateway_token(caller.tenant(), None).await?;
    Ok(StatusCode::NO_CONTENT)
}
