//! Download URLs that carry their own authorization (`GET /dl/{token}`), for devices whose
//! protocol hands them a URL without credentials (AWS IoT OTA over HTTP, LwM2M pull). A token
//! names a tenant, an update action and an expiry, signed with HMAC-SHA256 under a key every
//! replica shares (kept in the store), so a URL issued by one replica works on all of them and
//! nothing is held in memory. A token is the same for one action all day (the expiry is the end
//! of the next UTC day), so a device restarted mid-download resumes with the same URL. A grant
//! dies with its action: once the action is UPDATED, FAILED or CANCELED (or gone) the URL answers
//! 404 — the artifact is the action's, read at each request.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use sha2::{Digest, Sha256};
use updraft_core::{ActionKey, TenantKey};
use updraft_store::Artifact;

use crate::kernel::error::{ApiError, ApiResult};
use crate::kernel::state::AppState;

const DAY_MILLIS: i64 = 24 * 60 * 60 * 1000;
/// Signature bytes kept in a token (128 bits).
const SIGNATURE_BYTES: usize = 16;

/// Signs and checks download tokens.
pub struct Grants {
    key: Vec<u8>,
}

/// What a valid token opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub tenant: TenantKey,
    pub action: ActionKey,
    pub expires_at: i64,
}

/// HMAC-SHA256 (RFC 2104).
fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

impl Grants {
    /// Tokens signed with `key` (every replica must use the same).
    pub fn new(key: &[u8]) -> Self {
        Self { key: key.to_vec() }
    }

    fn sign(&self, body: &str) -> String {
        hex::encode(&hmac(&self.key, body.as_bytes())[..SIGNATURE_BYTES])
    }

    /// The token for the action's download of `artifact`, valid until the end of the next UTC day.
    pub fn issue(&self, action: ActionKey, artifact: &Artifact) -> Result<String, ApiError> {
        let now = crate::kernel::clock::now_millis();
        let expires_at = (now / DAY_MILLIS + 2) * DAY_MILLIS;
        Ok(self.token(Grant {
            tenant: artifact.tenant,
            action,
            expires_at,
        }))
    }

    fn token(&self, grant: Grant) -> String {
        let body = format!(
            "{}-{}-{}",
            grant.tenant.0,
            grant.action.0,
            grant.expires_at / 1000
        );
        let signature = self.sign(&body);
        format!("{body}-{signature}")
    }

    /// What `token` opens, if its signature is ours and it has not expired.
    pub fn check(&self, token: &str, now: i64) -> Option<Grant> {
        if token.len() > 128 {
            return None;
        }
        let (body, signature) = token.rsplit_once('-')?;
        let expected = self.sign(body);
        if !crate::kernel::secret::same(signature, &expected) {
            return None;
        }
        let mut parts = body.split('-');
        let tenant = TenantKey(parts.next()?.parse().ok()?);
        let action = ActionKey(parts.next()?.parse().ok()?);
        let expires_at = parts.next()?.parse::<i64>().ok()?.checked_mul(1000)?;
        if parts.next().is_some() || expires_at <= now {
            return None;
        }
        Some(Grant {
            tenant,
            action,
            expires_at,
        })
    }

    /// The artifact a valid token opens now: its action is live and still carries it.
    pub async fn artifact(&self, state: &AppState, token: &str) -> ApiResult<Option<Artifact>> {
        let Some(grant) = self.check(token, crate::kernel::clock::now_millis()) else {
            return Ok(None);
        };
        let Some(action) = state.store.action(grant.tenant, grant.action).await? else {
            return Ok(None);
        };
        let Some(key) = action.artifact.filter(|_| !action.state.is_final()) else {
            return Ok(None);
        };
        Ok(state.store.artifact(grant.tenant, key).await?)
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
    let Some(artifact) = state.grants.artifact(&state, &token).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this download URL is unknown or has expired: read the job again for a fresh one",
        ));
    };
    let blob = crate::kernel::download::BlobResponse {
        sha256: &artifact.checksums.sha256,
        size: artifact.size,
        filename: &artifact.filename,
        content_type: "application/octet-stream",
        modified_at: artifact.created_at,
    };
    // Never redirected: the clients of these URLs (FreeRTOS's coreHTTP, LwM2M clients) mostly do
    // not follow redirects.
    crate::kernel::download::serve_blob(&state, blob, &headers).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test case 2.
        let mac = hmac(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        let mac = hmac(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            hex::encode(mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn tokens_open_what_they_were_signed_for_until_they_expire() {
        let grants = Grants::new(b"key one");
        let grant = Grant {
            tenant: TenantKey(3),
            action: ActionKey(41),
            expires_at: 2_000_000_000_000,
        };
        let token = grants.token(grant);
        assert_eq!(grants.check(&token, 1_000), Some(grant));
        assert_eq!(grants.check(&token, 2_000_000_000_000), None, "expired");
        // Another key, a changed field, a truncated signature, junk: nothing.
        assert_eq!(Grants::new(b"key two").check(&token, 1_000), None);
        let forged = token.replacen("3-41", "3-42", 1);
        assert_eq!(grants.check(&forged, 1_000), None);
        assert_eq!(grants.check(&token[..token.len() - 1], 1_000), None);
        for junk in ["", "-", "1-2-3", "a-b-c-d", &"9".repeat(200)] {
            assert_eq!(grants.check(junk, 1_000), None, "{junk}");
        }
    }
}
