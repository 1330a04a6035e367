//! The one interface between the kernel and the device protocols.
//!
//! An [`Adapter`] is a device protocol as the rest of the server sees it: its name, the checks it
//! adds to the management API (what an assignment may carry, what a new device may declare) and,
//! when the protocol lets the server speak first, a [`DeviceChannel`]. The notification queue and
//! the management API call adapters through [`Adapters`] without knowing which protocol is
//! behind them; the composition root (`server.rs`) is the only place that names them all.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use serde_json::{Map, Value};
use updraft_core::{DeviceKey, ProfileKey, Scope, TenantKey};
use updraft_store::{Artifact, Device, NewCredential, Profile, Queued};

use crate::kernel::error::ApiResult;
use crate::kernel::state::AppState;

/// What the notification queue tells a device of: its action (now INITIATED), the artifact it
/// carries and the device's profile, when it has one.
pub struct Tell<'a> {
    pub queued: &'a Queued,
    pub artifact: &'a Artifact,
    pub profile: Option<&'a Profile>,
}

/// How the server reaches devices of one protocol on its own initiative.
#[async_trait]
pub trait DeviceChannel: Send + Sync {
    /// The protocol's name, recorded as the source of the transitions it causes.
    fn source(&self) -> &'static str;
    /// Devices the server can reach now (connected, observing, registered).
    fn reachable(&self) -> Vec<DeviceKey>;
    /// Whether the device has shown that it speaks this protocol over its connection, not merely
    /// that it is connected to a transport this protocol shares with others.
    fn speaks(&self, device: DeviceKey) -> bool {
        let _ = device;
        false
    }
    /// Tells a reachable device of its new update.
    async fn tell(&self, state: &AppState, tell: &Tell<'_>);
    /// The tenant's assignments were withdrawn: devices that were given a package that is no
    /// longer wanted are told so.
    fn withdrawn(&self, state: &AppState, tenant: TenantKey) {
        let _ = (state, tenant);
    }
    /// Whether the protocol can download an update without installing it, so that a
    /// maintenance window only holds back installing; otherwise the update is not offered
    /// while the window is closed.
    fn separates_install(&self) -> bool {
        false
    }
    /// A maintenance window of the tenant opened: devices that downloaded and wait for it may
    /// be told to install.
    fn window_opened(&self, state: &AppState, tenant: TenantKey) {
        let _ = (state, tenant);
    }
}

/// A device protocol as the kernel and the management API see it.
#[async_trait]
pub trait Adapter: Send + Sync {
    /// The protocol's name (history sources, logs).
    fn name(&self) -> &'static str;

    /// The protocol's HTTP routes (full paths: device-facing ones, and any it adds to the
    /// management API under `/api/v1/`, authenticated with [`crate::kernel::auth::Caller`]).
    fn routes(&self) -> axum::Router<AppState> {
        axum::Router::new()
    }

    /// The OpenAPI description of the management routes it adds.
    fn openapi(&self) -> Option<utoipa::openapi::OpenApi> {
        None
    }

    /// How the server reaches this protocol's devices first, if it can.
    fn channel(self: Arc<Self>) -> Option<Arc<dyn DeviceChannel>> {
        None
    }

    /// Refuses an assignment of `artifact` to `scope` that this protocol's devices could not
    /// carry out. `marking` is a profile about to be changed to the given settings.
    async fn check_assignment(
        &self,
        state: &AppState,
        tenant: TenantKey,
        scope: Scope,
        artifact: &Artifact,
        marking: Option<&Profile>,
    ) -> ApiResult<()> {
        let _ = (state, tenant, scope, artifact, marking);
        Ok(())
    }

    /// The credentials a new device gets from this protocol's fields of the request (`fields`
    /// is the request body's object), checked before anything is stored.
    async fn device_credentials(
        &self,
        state: &AppState,
        fields: &Map<String, Value>,
    ) -> ApiResult<Vec<NewCredential>> {
        let _ = (state, fields);
        Ok(Vec::new())
    }

    /// Stores this protocol's settings of a device just created; what it returns is added to
    /// the answer (a generated key, shown once).
    async fn device_created(
        &self,
        state: &AppState,
        device: &Device,
        fields: &Map<String, Value>,
    ) -> ApiResult<Map<String, Value>> {
        let _ = (state, device, fields);
        Ok(Map::new())
    }

    /// The name devices are told for a signing certificate that was given none.
    fn signing_cert_name(&self) -> Option<&'static str> {
        None
    }

    /// Devices' protocol credentials changed on another replica: a table of them kept in memory
    /// is read again.
    fn credentials_changed(&self, state: &AppState) {
        let _ = state;
    }
}

/// Every adapter of the running server, set once by the composition root.
#[derive(Default)]
pub struct Adapters {
    all: OnceLock<Vec<Arc<dyn Adapter>>>,
    channels: OnceLock<Vec<Arc<dyn DeviceChannel>>>,
}

impl Adapters {
    /// Installs the server's adapters; a second call changes nothing.
    pub fn install(&self, adapters: Vec<Arc<dyn Adapter>>) {
        let channels = adapters
            .iter()
            .filter_map(|a| a.clone().channel())
            .collect();
        let _ = self.channels.set(channels);
        let _ = self.all.set(adapters);
    }

    pub fn all(&self) -> &[Arc<dyn Adapter>] {
        self.all.get().map(Vec::as_slice).unwrap_or_default()
    }

    pub fn channels(&self) -> &[Arc<dyn DeviceChannel>] {
        self.channels.get().map(Vec::as_slice).unwrap_or_default()
    }

    /// Every adapter's check of an assignment.
    pub async fn check_assignment(
        &self,
        state: &AppState,
        tenant: TenantKey,
        scope: Scope,
        artifact: &Artifact,
        marking: Option<&Profile>,
    ) -> ApiResult<()> {
        for adapter in self.all() {
            adapter
                .check_assignment(state, tenant, scope, artifact, marking)
                .await?;
        }
        Ok(())
    }

    /// Tells every channel that the tenant's assignments were withdrawn.
    pub fn withdrawn(&self, state: &AppState, tenant: TenantKey) {
        for channel in self.channels() {
            channel.withdrawn(state, tenant);
        }
    }

    /// Tells every channel that a maintenance window of the tenant opened.
    pub fn window_opened(&self, state: &AppState, tenant: TenantKey) {
        for channel in self.channels() {
            channel.window_opened(state, tenant);
        }
    }

    /// Tells every adapter that devices' credentials changed on another replica.
    pub fn credentials_changed(&self, state: &AppState) {
        for adapter in self.all() {
            adapter.credentials_changed(state);
        }
    }

    /// The first adapter's name for a signing certificate that has none.
    pub fn signing_cert_name(&self) -> Option<&'static str> {
        self.all().iter().find_map(|a| a.signing_cert_name())
    }
}

/// Profiles by key, as the notification queue loads them for a round.
pub type ProfileMap = std::collections::HashMap<ProfileKey, Profile>;
