//! Management endpoints for the fleet: tenants, API keys, projects, profiles, devices,
//! assignments and the fleet summary.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use updraft_core::{
    ArtifactKey, ArtifactKind, DeviceId, Name, ProfileKey, ProjectKey, Role, Scope, TenantKey,
};
use updraft_store::{CredentialKind, NewApiKey, NewCredential, NewDevice, ProfileSettings};

use super::wire::*;
use super::{ApiJson, ApiPath, ApiQuery};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::secret;
use crate::state::AppState;

/// The profile named `name` in the tenant, or 422 `unknown_profile`.
pub async fn profile_key(state: &AppState, tenant: TenantKey, name: &str) -> ApiResult<ProfileKey> {
    let parsed = Name::parse(name)?;
    match state.store.profile_by_name(tenant, &parsed).await? {
        Some(profile) => Ok(profile.key),
        None => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_profile",
            format!("no profile named {name:?}: create it first (updraft profile create {name})"),
        )),
    }
}

/// The project named `name` in the tenant, or 422 `unknown_project`.
pub async fn project_key(state: &AppState, tenant: TenantKey, name: &str) -> ApiResult<ProjectKey> {
    let parsed = Name::parse(name)?;
    match state.store.project_by_name(tenant, &parsed).await? {
        Some(project) => Ok(project.key),
        None => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_project",
            format!("no project named {name:?}: create it first"),
        )),
    }
}

fn device_not_found(id: &str) -> ApiError {
    ApiError::not_found(
        "device_not_found",
        format!("no device {id:?} in this tenant"),
    )
}

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

fn parse_role(role: &str) -> ApiResult<Role> {
    role.parse()
        .map_err(|e: String| ApiError::bad_request("invalid_request", e))
}

async fn new_key(state: &AppState, tenant: TenantKey, body: &ApiKeyIn) -> ApiResult<ApiKeyCreated> {
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
    if state.store.delete_api_key(caller.tenant(), id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(
            "api_key_not_found",
            format!("no API key {id} in this tenant"),
        ))
    }
}

#[utoipa::path(get, path = "/api/v1/projects", tag = "projects", responses((status = 200, body = Vec<ProjectOut>)))]
pub async fn list_projects(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<ProjectOut>>> {
    let projects = state.store.list_projects(caller.tenant()).await?;
    Ok(Json(projects.iter().map(ProjectOut::from).collect()))
}

#[utoipa::path(post, path = "/api/v1/projects", tag = "projects", request_body = NameIn,
    responses((status = 201, body = ProjectOut), (status = 409, body = ErrorBody)))]
pub async fn create_project(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<NameIn>,
) -> ApiResult<(StatusCode, Json<ProjectOut>)> {
    caller.require(Role::Maintainer)?;
    let project = state
        .store
        .create_project(caller.tenant(), &Name::parse(&body.name)?)
        .await?;
    Ok((StatusCode::CREATED, Json(ProjectOut::from(&project))))
}

#[utoipa::path(get, path = "/api/v1/profiles", tag = "profiles", responses((status = 200, body = Vec<ProfileOut>)))]
pub async fn list_profiles(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<ProfileOut>>> {
    let profiles = state.store.list_profiles(caller.tenant()).await?;
    Ok(Json(profiles.iter().map(ProfileOut::from).collect()))
}

#[utoipa::path(post, path = "/api/v1/profiles", tag = "profiles", request_body = ProfileIn,
    responses((status = 201, body = ProfileOut), (status = 409, body = ErrorBody)))]
pub async fn create_profile(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<ProfileIn>,
) -> ApiResult<(StatusCode, Json<ProfileOut>)> {
    caller.require(Role::Maintainer)?;
    let cert = signing_cert(
        body.signing_cert.as_deref(),
        body.signing_cert_name.as_deref(),
    )?;
    let mut profile = state
        .store
        .create_profile(
            caller.tenant(),
            &Name::parse(&body.name)?,
            &body.description,
        )
        .await?;
    let settings = ProfileSettings {
        drogue_dfu: body.drogue_dfu,
        aws_http_delivery: body.aws_http_delivery,
        lwm2m_delivery: lwm2m_delivery(body.lwm2m_delivery.as_deref())?.unwrap_or_default(),
        lwm2m_path_only: body.lwm2m_path_only,
    };
    if settings != profile.settings {
        state
            .store
            .set_profile_settings(caller.tenant(), profile.key, settings)
            .await?;
        profile.settings = settings;
    }
    if cert.is_some() {
        state
            .store
            .set_profile_signing_cert(caller.tenant(), profile.key, cert.as_ref())
            .await?;
        profile.signing_cert = cert;
    }
    Ok((StatusCode::CREATED, Json(ProfileOut::from(&profile))))
}

#[utoipa::path(put, path = "/api/v1/profiles/{name}", tag = "profiles", params(("name" = String, Path)),
    request_body = ProfileSettingsIn,
    responses((status = 200, body = ProfileOut), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_profile(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<ProfileSettingsIn>,
) -> ApiResult<Json<ProfileOut>> {
    caller.require(Role::Maintainer)?;
    let tenant = caller.tenant();
    let not_found = || {
        ApiError::not_found(
            "profile_not_found",
            format!("no profile named {name:?} in this tenant"),
        )
    };
    let parsed = Name::parse(&name).map_err(|_| not_found())?;
    let mut profile = state
        .store
        .profile_by_name(tenant, &parsed)
        .await?
        .ok_or_else(not_found)?;
    let settings = ProfileSettings {
        drogue_dfu: body.drogue_dfu.unwrap_or(profile.settings.drogue_dfu),
        aws_http_delivery: body
            .aws_http_delivery
            .unwrap_or(profile.settings.aws_http_delivery),
        lwm2m_delivery: lwm2m_delivery(body.lwm2m_delivery.as_deref())?
            .unwrap_or(profile.settings.lwm2m_delivery),
        lwm2m_path_only: body
            .lwm2m_path_only
            .unwrap_or(profile.settings.lwm2m_path_only),
    };
    if settings.drogue_dfu && !profile.settings.drogue_dfu {
        // Every assignment that can reach the profile's devices must fit the protocol.
        let mut marked = profile.clone();
        marked.settings = settings;
        for assignment in state.store.list_assignments(tenant).await? {
            let Some(artifact) = state.store.artifact(tenant, assignment.artifact).await? else {
                continue;
            };
            check_versions(&state, tenant, assignment.scope, &artifact, Some(&marked))
                .await
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::CONFLICT,
                        "version_too_long",
                        format!("cannot mark the profile as Drogue DFU: {}", e.message),
                    )
                })?;
        }
    }
    state
        .store
        .set_profile_settings(tenant, profile.key, settings)
        .await?;
    profile.settings = settings;
    match (
        body.signing_cert.as_deref(),
        body.signing_cert_name.as_deref(),
    ) {
        (Some(""), _) => {
            state
                .store
                .set_profile_signing_cert(tenant, profile.key, None)
                .await?;
            profile.signing_cert = None;
        }
        (None, None) => {}
        (pem, name) => {
            let pem = pem.or(profile.signing_cert.as_ref().map(|c| c.pem.as_str()));
            let cert = signing_cert(pem, name)?;
            state
                .store
                .set_profile_signing_cert(tenant, profile.key, cert.as_ref())
                .await?;
            profile.signing_cert = cert;
        }
    }
    Ok(Json(ProfileOut::from(&profile)))
}

#[utoipa::path(get, path = "/api/v1/devices", tag = "devices", params(PageQuery),
    responses((status = 200, body = DevicePage)))]
pub async fn list_devices(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Json<DevicePage>> {
    let page = query.page();
    let devices = state.store.list_devices(caller.tenant(), page).await?;
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
    let psk = match (
        body.lwm2m_psk_identity.as_deref(),
        body.lwm2m_psk_key.as_deref(),
    ) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "lwm2m_psk_key needs an lwm2m_psk_identity",
            ));
        }
        (Some(identity), key) => {
            if identity.is_empty() || identity.len() > 128 {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    "lwm2m_psk_identity is 1 to 128 bytes",
                ));
            }
            let key = match key {
                Some(key) => {
                    let ok = hex::decode(key).is_ok_and(|k| (16..=64).contains(&k.len()));
                    if !ok {
                        return Err(ApiError::bad_request(
                            "invalid_request",
                            "lwm2m_psk_key is 16 to 64 bytes in hex",
                        ));
                    }
                    key.to_ascii_lowercase()
                }
                None => {
                    let mut bytes = [0u8; 16];
                    getrandom::fill(&mut bytes).map_err(ApiError::internal)?;
                    hex::encode(bytes)
                }
            };
            let taken = state
                .lwm2m
                .psks
                .read()
                .map(|t| t.contains_key(identity.as_bytes()))
                .unwrap_or(false);
            if taken {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "psk_identity_exists",
                    format!("PSK identity {identity:?} belongs to another device"),
                ));
            }
            Some((identity.to_owned(), key))
        }
    };
    let mut credentials = vec![NewCredential {
        kind: CredentialKind::AccessToken,
        secret_hash: secret::hash(&token),
        gateway: body.gateway,
    }];
    if let Some(endpoint) = body.lwm2m_endpoint.as_deref() {
        if endpoint.is_empty() || endpoint.len() > 255 {
            return Err(ApiError::bad_request(
                "invalid_request",
                "lwm2m_endpoint is 1 to 255 bytes",
            ));
        }
        credentials.push(NewCredential {
            kind: CredentialKind::Lwm2mEndpoint,
            secret_hash: endpoint.to_owned(),
            gateway: false,
        });
    }
    if let Some(pem) = body.certificate.as_deref().filter(|p| !p.trim().is_empty()) {
        let fingerprint = crate::tls::pem_fingerprint(pem).map_err(|e| {
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
    let psk_key = match psk {
        Some((identity, key)) => {
            state
                .store
                .set_lwm2m_psk(device.key, Some((&identity, &key)))
                .await?;
            if let Ok(bytes) = hex::decode(&key) {
                state
                    .lwm2m
                    .set_psk(device.key, Some((identity.into_bytes(), bytes)));
            }
            Some(key)
        }
        None => None,
    };
    Ok((
        StatusCode::CREATED,
        Json(DeviceCreated {
            device: DeviceOut::from(&device),
            token,
            lwm2m_psk_key: psk_key,
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
    Ok(Json(DeviceDetail::from(&status)))
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

#[utoipa::path(post, path = "/api/v1/devices/{id}/lwm2m", tag = "devices", params(("id" = String, Path)),
    request_body = Lwm2mOperationIn,
    responses((status = 200, body = Lwm2mOperationOut), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 504, body = ErrorBody)))]
pub async fn lwm2m_operation(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Lwm2mOperationIn>,
) -> ApiResult<Json<Lwm2mOperationOut>> {
    use crate::lwm2m::Operation;
    use base64::Engine;
    caller.require(Role::Maintainer)?;
    let device_id = DeviceId::parse(&id).map_err(|_| device_not_found(&id))?;
    let device = state
        .store
        .device(caller.tenant(), &device_id)
        .await?
        .ok_or_else(|| device_not_found(&id))?;
    let levels: Vec<&str> = body.path.split('/').skip(1).collect();
    let path_ok = body.path.starts_with('/')
        && (1..=4).contains(&levels.len())
        && levels
            .iter()
            .all(|l| !l.is_empty() && l.len() <= 5 && l.chars().all(|c| c.is_ascii_digit()));
    if !path_ok {
        return Err(ApiError::bad_request(
            "invalid_request",
            "path is /object[/instance[/resource[/resource instance]]] in numbers",
        ));
    }
    let operation = match body.operation.as_str() {
        "read" => Operation::Read,
        "write" => Operation::Write(body.value.unwrap_or_default()),
        "execute" => Operation::Execute(body.value.unwrap_or_default()),
        "discover" => Operation::Discover,
        "write-attributes" => Operation::WriteAttributes(body.attributes.unwrap_or_default()),
        "observe" => Operation::Observe,
        "cancel-observe" => Operation::CancelObserve,
        other => {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!(
                    "operation {other:?} is not read, write, execute, discover, write-attributes, observe or cancel-observe"
                ),
            ));
        }
    };
    let answer = state
        .lwm2m
        .operate(device.key, &body.path, operation)
        .await
        .map_err(|e| ApiError::new(StatusCode::GATEWAY_TIMEOUT, "device_timeout", e))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "not_registered",
                format!("{id} is not registered with the LwM2M server"),
            )
        })?;
    let texty = matches!(
        answer.content_format,
        None | Some(0) | Some(40) | Some(50) | Some(110) | Some(1541) | Some(11543)
    );
    Ok(Json(Lwm2mOperationOut {
        code: answer.code,
        content_format: answer.content_format,
        text: texty
            .then(|| String::from_utf8(answer.payload.clone()).ok())
            .flatten(),
        payload: base64::engine::general_purpose::STANDARD.encode(&answer.payload),
    }))
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

/// Turns the request's scope fields into a [`Scope`] of the caller's tenant.
async fn scope_of(state: &AppState, tenant: TenantKey, scope: &ScopeIn) -> ApiResult<Scope> {
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

fn lwm2m_delivery(text: Option<&str>) -> ApiResult<Option<updraft_store::Lwm2mDelivery>> {
    text.map(|t| {
        t.parse()
            .map_err(|e: String| ApiError::bad_request("invalid_request", e))
    })
    .transpose()
}

/// A code-signing certificate from a request: a PEM certificate with a P-256 key, or 422.
fn signing_cert(
    pem: Option<&str>,
    name: Option<&str>,
) -> ApiResult<Option<updraft_store::SigningCert>> {
    let Some(pem) = pem.filter(|p| !p.trim().is_empty()) else {
        if name.is_some() {
            return Err(ApiError::bad_request(
                "invalid_request",
                "signing_cert_name needs a signing_cert",
            ));
        }
        return Ok(None);
    };
    updraft_core::signing::certificate_key(pem).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_certificate",
            format!("signing_cert: {e}"),
        )
    })?;
    let name = name.unwrap_or(crate::aws::DEFAULT_CERTFILE);
    let name_ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    if !name_ok {
        return Err(ApiError::bad_request(
            "invalid_request",
            "signing_cert_name is 1 to 64 characters of letters, digits, '.', '_', '-' and '/'",
        ));
    }
    Ok(Some(updraft_store::SigningCert {
        name: name.to_owned(),
        pem: pem.trim().to_owned() + "\n",
    }))
}

/// Refuses to assign `artifact` where it can reach devices of a profile whose protocol cannot
/// carry its version (Drogue DFU: 16 bytes). `extra` stands for a profile about to be marked.
async fn check_versions(
    state: &AppState,
    tenant: TenantKey,
    scope: Scope,
    artifact: &updraft_store::Artifact,
    extra: Option<&updraft_store::Profile>,
) -> ApiResult<()> {
    if artifact.version.len() <= crate::dfu::MAX_VERSION_BYTES {
        return Ok(());
    }
    let mut profiles = state.store.list_profiles(tenant).await?;
    if let Some(extra) = extra {
        profiles.retain(|p| p.key != extra.key);
        profiles.push(extra.clone());
    }
    let compatible = |p: &updraft_store::Profile| {
        artifact.profiles.is_empty() || artifact.profiles.iter().any(|(key, _)| *key == p.key)
    };
    let reached: Vec<&updraft_store::Profile> = profiles
        .iter()
        .filter(|p| p.settings.drogue_dfu && compatible(p))
        .filter(|p| match scope {
            Scope::Device(_) | Scope::Project(_) | Scope::Tenant => true,
            Scope::ProjectProfile(_, f) | Scope::Profile(f) => p.key == f,
        })
        .collect();
    let offending = match scope {
        Scope::Device(device) => {
            let devices = state.store.device_by_key(device).await?;
            reached.into_iter().find(|p| {
                devices
                    .as_ref()
                    .and_then(|d| d.profile.as_ref())
                    .is_some_and(|(k, _)| *k == p.key)
            })
        }
        _ => reached.into_iter().next(),
    };
    match offending {
        Some(profile) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "version_too_long",
            format!(
                "version {:?} has {} bytes; devices of profile {} speak Drogue DFU, which carries at most {}",
                artifact.version,
                artifact.version.len(),
                profile.name,
                crate::dfu::MAX_VERSION_BYTES
            ),
        )),
        None => Ok(()),
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
    check_versions(&state, tenant, scope, &artifact, None).await?;
    let assignment = state
        .store
        .assign(tenant, scope, artifact.key, &caller.source())
        .await?;
    state.wake.notify_one();
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
        // LwM2M devices that were given a package learn that it is withdrawn.
        state.lwm2m.kick_tenant(&state, tenant);
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

async fn own_tenant(state: &AppState, caller: &Caller) -> ApiResult<updraft_store::Tenant> {
    state
        .store
        .tenant_by_name(caller.key.tenant_name.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found("tenant_not_found", "the key's tenant is gone"))
}

fn settings_out(tenant: &updraft_store::Tenant) -> TenantSettingsOut {
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
