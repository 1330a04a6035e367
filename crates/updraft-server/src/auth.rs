//! Who is calling the management API: the API key in `Authorization: Bearer <key>`, its tenant
//! and its role.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use updraft_core::{Role, TenantKey};
use updraft_store::ApiKey;

use crate::error::ApiError;
use crate::secret;
use crate::state::AppState;

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
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(ApiError::unauthorized)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
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
