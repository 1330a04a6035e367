//! Who is calling: for the management API the API key in `Authorization: Bearer <key>`, its tenant
//! and its role; for device protocols the device credential checked ([`Login`]).

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use updraft_core::{DeviceId, Role, TenantKey};
use updraft_store::{ApiKey, CredentialKind, Device};

use crate::kernel::error::ApiError;
use crate::kernel::state::AppState;
use crate::kernel::{secret, sessions};

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key: ApiKey,
}

impl Caller {
    pub fn tenant(&self) -> TenantKey {
        self.key.tenant
    }

    /// Refuses unless the key's role is at least `needed`.
    pub fn require(&self, needed: Role) -> Result<(), ApiError> {
        if self.key.role.allows(needed) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this needs the {} role; the key {:?} is {}",
                needed.as_str(),
                self.key.name,
                self.key.role.as_str()
            )))
        }
    }

    pub fn require_server_admin(&self) -> Result<(), ApiError> {
        if self.key.server_admin {
            Ok(())
        } else {
            Err(ApiError::forbidden("this needs the server admin key"))
        }
    }

    /// How history records this caller.
    pub fn source(&self) -> String {
        format!("user:{}", self.key.name)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(header) = parts.headers.get(AUTHORIZATION) else {
            // The dashboard's own calls: its session cookie, and for a change its CSRF token.
            let (caller, session) = session_caller(state, &parts.headers)
                .await?
                .ok_or_else(ApiError::unauthorized)?;
            if !parts.method.is_safe() {
                let given = parts
                    .headers
                    .get(sessions::CSRF_HEADER)
                    .and_then(|v| v.to_str().ok());
                if !sessions::csrf_ok(&session, given) {
                    return Err(csrf_refused());
                }
            }
            return Ok(caller);
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(ApiError::unauthorized)?;
        let key = state
            .store
            .api_key_by_hash(&secret::hash(token))
            .await?
            .ok_or_else(ApiError::unauthorized)?;
        Ok(Caller { key })
    }
}

/// A change without the session's CSRF token.
pub fn csrf_refused() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::FORBIDDEN,
        "csrf_token_invalid",
        "this change needs the page's CSRF token: reload the page and try again",
    )
}

/// The caller a dashboard session cookie stands for (its key looked up again, so a deleted key
/// signs its sessions out), with the session; `None` without a live session.
pub async fn session_caller(
    state: &AppState,
    headers: &axum::http::HeaderMap,
) -> Result<Option<(Caller, sessions::Session)>, ApiError> {
    let Some(id) = sessions::cookie_of(headers) else {
        return Ok(None);
    };
    let Some(session) = state.sessions.get(&id) else {
        return Ok(None);
    };
    let Some(mut key) = state.store.api_key_by_hash(&session.key_hash).await? else {
        state.sessions.close(&id);
        return Ok(None);
    };
    // A server admin may look at another tenant.
    if key.server_admin
        && let Some(tenant) = session.tenant
        && tenant != key.tenant
        && let Some(found) = state.store.tenant_by_key(tenant).await?
    {
        key.tenant = found.key;
        key.tenant_name = found.name;
    }
    Ok(Some((Caller { key }, session)))
}

/// How a device proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginKind {
    /// Its access token alone (ThingsBoard's user name, a bearer-like token).
    Token,
    /// A user name `{device}@{tenant}` (or `{device}` in the default tenant) and its token as the
    /// password.
    UserPassword,
    /// A registered client certificate on a TLS listener.
    Certificate,
}

/// A device's credential, checked.
#[derive(Debug, Clone)]
pub struct Login {
    pub device: Device,
    pub kind: LoginKind,
    /// The credential is a gateway's: it may speak for the other devices of its tenant.
    pub gateway: bool,
}

fn device_unauthorized(message: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::UNAUTHORIZED,
        "unauthorized",
        message.to_owned(),
    )
}

/// The device an access token alone names (ThingsBoard's token logins): a token held by devices of
/// several tenants names none of them.
pub async fn device_by_token(state: &AppState, token: &str) -> Result<Device, ApiError> {
    let device = state
        .store
        .device_by_credential(CredentialKind::AccessToken, &secret::hash(token))
        .await?;
    device.ok_or_else(|| device_unauthorized("unknown device access token"))
}

/// The device `{device}@{tenant}` (or `{device}` in the `default` tenant) whose token is `token`.
pub async fn device_by_login(
    state: &AppState,
    user: &str,
    token: &str,
) -> Result<Device, ApiError> {
    let unauthorized = || {
        device_unauthorized("send Authorization: Basic with {device}@{tenant} and the device token")
    };
    let (id, tenant) = user
        .split_once('@')
        .unwrap_or((user, crate::kernel::DEFAULT_TENANT));
    let owner = state
        .store
        .tenant_by_name(tenant)
        .await?
        .ok_or_else(unauthorized)?;
    let by_token = state
        .store
        .device_by_credential_in(owner.key, CredentialKind::AccessToken, &secret::hash(token))
        .await?
        .ok_or_else(unauthorized)?;
    let id = DeviceId::parse(id).map_err(|_| unauthorized())?;
    if by_token.id != id {
        return Err(unauthorized());
    }
    Ok(by_token)
}

/// Whether `token` is the gateway credential of `device`.
pub async fn is_gateway(state: &AppState, device: &Device, token: &str) -> Result<bool, ApiError> {
    Ok(state
        .store
        .gateway_by_credential(
            device.tenant,
            CredentialKind::AccessToken,
            &secret::hash(token),
        )
        .await?
        .is_some_and(|g| g.key == device.key))
}
