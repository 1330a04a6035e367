//! Drogue DFU as the kernel sees it: no channel (a device asks, the server answers), and a check
//! that refuses assignments whose version an `embedded-update` device cannot hold.

use async_trait::async_trait;
use axum::http::StatusCode;
use updraft_core::{Scope, TenantKey};

use super::{MAX_VERSION_BYTES, SOURCE};
use crate::kernel::channel::Adapter;
use crate::kernel::error::{ApiError, ApiResult};
use crate::kernel::state::AppState;

/// The DFU adapter.
pub struct Dfu;

#[async_trait]
impl Adapter for Dfu {
    fn name(&self) -> &'static str {
        SOURCE
    }

    fn routes(&self) -> axum::Router<AppState> {
        super::routes()
    }

    async fn check_assignment(
        &self,
        state: &AppState,
        tenant: TenantKey,
        scope: Scope,
        artifact: &updraft_store::Artifact,
        marking: Option<&updraft_store::Profile>,
    ) -> ApiResult<()> {
        check_versions(state, tenant, scope, artifact, marking).await
    }
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
    if artifact.version.len() <= MAX_VERSION_BYTES {
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
            Scope::Device(_) | Scope::Rollout(..) | Scope::Project(_) | Scope::Tenant => true,
            Scope::ProjectProfile(_, f) | Scope::Profile(f) => p.key == f,
        })
        .collect();
    let offending = match scope {
        Scope::Device(device) | Scope::Rollout(_, device) => {
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
                MAX_VERSION_BYTES
            ),
        )),
        None => Ok(()),
    }
}
