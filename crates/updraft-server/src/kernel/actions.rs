//! Applying the core's decisions about update actions, for every adapter alike.

use updraft_core::{ActionKey, TenantKey, UpdateState};

use crate::kernel::error::ApiResult;
use crate::kernel::state::AppState;

/// The device was told of its action (`current` is the state the adapter saw): applies what
/// [`updraft_core::told`] decides, recorded as coming from `source`.
pub async fn told(
    state: &AppState,
    tenant: TenantKey,
    action: ActionKey,
    current: UpdateState,
    source: &str,
) -> ApiResult<()> {
    if let Some(report) = updraft_core::told(current) {
        state.store.report(tenant, action, &report, source).await?;
    }
    Ok(())
}
