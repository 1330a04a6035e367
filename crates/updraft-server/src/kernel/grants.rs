//! One-time download URLs (`GET /dl/{token}`): a random token that opens one artifact's bytes
//! (with Range, If-Range and ETag) until it expires, for devices whose protocol hands them a URL
//! without credentials (AWS IoT OTA over HTTP). One grant per update action, reused while it
//! lives, so a device restarted mid-download resumes with the same URL. A grant dies with its
//! action: once the action is UPDATED, FAILED or CANCELED (or gone) the URL answers 404. Kept in
//! memory: after a restart a device gets a fresh URL the next time it reads its job.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use updraft_core::{ActionKey, TenantKey};
use updraft_store::Artifact;

use crate::kernel::error::{ApiError, ApiResult};
use crate::kernel::state::AppState;

/// How long a download URL works.
pub const TTL_MILLIS: i64 = 24 * 60 * 60 * 1000;

#[derive(Clone)]
struct Grant {
    tenant: TenantKey,
    action: ActionKey,
    sha256: String,
    size: u64,
    filename: String,
    modified_at: i64,
    expires_at: i64,
}

/// The live grants by token.
#[derive(Default)]
pub struct Grants {
    by_token: Mutex<HashMap<String, Grant>>,
}

impl Grants {
    /// The token of the action's live grant, or a new one.
    pub fn issue(&self, action: ActionKey, artifact: &Artifact) -> Result<String, ApiError> {
        let tenant = artifact.tenant;
        let now = crate::kernel::clock::now_millis();
        let mut grants = self
            .by_token
            .lock()
            .map_err(|_| ApiError::internal("download grants poisoned"))?;
        grants.retain(|_, g| g.expires_at > now);
        if let Some((token, _)) = grants
            .iter()
            .find(|(_, g)| g.action == action && g.sha256 == artifact.checksums.sha256)
        {
            return Ok(token.clone());
        }
        let token = crate::kernel::secret::generate("", 24).map_err(ApiError::internal)?;
        grants.insert(
            token.clone(),
            Grant {
                tenant,
                action,
                sha256: artifact.checksums.sha256.clone(),
                size: artifact.size,
                filename: artifact.filename.clone(),
                modified_at: artifact.created_at,
                expires_at: now + TTL_MILLIS,
            },
        );
        Ok(token)
    }

    /// The SHA-256 and size of the blob a live token opens.
    pub fn blob(&self, token: &str) -> Option<(String, u64)> {
        self.get(token).map(|g| (g.sha256, g.size))
    }

    fn get(&self, token: &str) -> Option<Grant> {
        let now = crate::kernel::clock::now_millis();
        self.by_token
            .lock()
            .ok()?
            .get(token)
            .filter(|g| g.expires_at > now)
            .cloned()
    }

    fn revoke(&self, token: &str) {
        if let Ok(mut grants) = self.by_token.lock() {
            grants.remove(token);
        }
    }
}

/// The HTTP route.
pub fn routes() -> Router<AppState> {
    Router::new().route("/dl/{token}", get(download))
}

async fn download(
    State(state): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let gone = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this download URL is unknown or has expired: read the job again for a fresh one",
        )
    };
    let grant = state.grants.get(&token).ok_or_else(gone)?;
    let live = state
        .store
        .action(grant.tenant, grant.action)
        .await?
        .is_some_and(|action| !action.state.is_final());
    if !live {
        state.grants.revoke(&token);
        return Err(gone());
    }
    crate::kernel::download::serve_blob(
        &state,
        crate::kernel::download::BlobResponse {
            sha256: &grant.sha256,
            size: grant.size,
            filename: &grant.filename,
            content_type: "application/octet-stream",
            modified_at: grant.modified_at,
        },
        &headers,
    )
    .await
}
