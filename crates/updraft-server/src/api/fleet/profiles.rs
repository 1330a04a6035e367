//! Projects and device profiles (with their protocol settings and signing certificate).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use updraft_core::{Name, Role};
use updraft_store::ProfileSettings;

use crate::api::wire::*;
use crate::kernel::auth::Caller;
use crate::kernel::error::{ApiError, ApiResult, ErrorBody};
use crate::kernel::extract::{ApiJson, ApiPath};
use crate::kernel::state::AppState;

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
        &state,
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
    if settings != profile.settings {
        // Every assignment that can reach the profile's devices must still suit their protocols.
        let mut marked = profile.clone();
        marked.settings = settings;
        for assignment in state.store.list_assignments(tenant).await? {
            let Some(artifact) = state.store.artifact(tenant, assignment.artifact).await? else {
                continue;
            };
            state
                .adapters
                .check_assignment(&state, tenant, assignment.scope, &artifact, Some(&marked))
                .await
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::CONFLICT,
                        e.code,
                        format!("cannot change the profile's settings: {}", e.message),
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
            let cert = signing_cert(&state, pem, name)?;
            state
                .store
                .set_profile_signing_cert(tenant, profile.key, cert.as_ref())
                .await?;
            profile.signing_cert = cert;
        }
    }
    Ok(Json(ProfileOut::from(&profile)))
}

pub(super) fn lwm2m_delivery(
    text: Option<&str>,
) -> ApiResult<Option<updraft_store::Lwm2mDelivery>> {
    text.map(|t| {
        t.parse()
            .map_err(|e: String| ApiError::bad_request("invalid_request", e))
    })
    .transpose()
}

/// A code-signing certificate from a request: a PEM certificate with a P-256 key, or 422.
pub(super) fn signing_cert(
    state: &AppState,
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
    let name = name
        .or(state.adapters.signing_cert_name())
        .unwrap_or("code-sign.crt");
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
