//! ThingsBoard as the kernel sees it: its HTTP routes, and a channel that pushes the new
//! `fw_*`/`sw_*` shared attributes to devices connected over MQTT or observing over CoAP.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::json;
use updraft_core::{DeviceKey, TenantKey};

use super::coap::Observers;
use super::{SOURCE, prefix};
use crate::kernel::channel::{Adapter, DeviceChannel, Tell};
use crate::kernel::state::AppState;
use crate::transport::mqtt::Sessions;
use crate::transport::mqtt::codec::Outbound;

/// The ThingsBoard adapter.
pub struct ThingsBoard {
    pub sessions: Arc<Sessions>,
    pub observers: Arc<Observers>,
}

#[async_trait]
impl DeviceChannel for ThingsBoard {
    fn source(&self) -> &'static str {
        SOURCE
    }

    fn reachable(&self) -> Vec<DeviceKey> {
        let mut devices = self.sessions.connected();
        devices.extend(self.observers.devices());
        devices
    }

    fn speaks(&self, device: DeviceKey) -> bool {
        self.sessions.speaks(device, SOURCE) || self.observers.observed(device)
    }

    async fn tell(&self, _state: &AppState, tell: &Tell<'_>) {
        let artifact = tell.artifact;
        let p = prefix(tell.queued.kind);
        let attributes = json!({
            format!("{p}_title"): artifact.title,
            format!("{p}_version"): artifact.version,
            format!("{p}_size"): artifact.size,
            format!("{p}_checksum"): artifact.checksums.sha256,
            format!("{p}_checksum_algorithm"): "SHA256",
        });
        let push = Outbound::Publish {
            topic: "v1/devices/me/attributes".into(),
            payload: Bytes::from(attributes.to_string()),
        };
        self.sessions.push(tell.queued.device, &push);
        self.observers.notify(tell.queued.device, &attributes);
    }

    /// ThingsBoard withdraws firmware by deleting its shared attributes: each connected device
    /// whose update was canceled, and that has no other to go to (the queue tells that one), is
    /// sent `{"deleted": ["fw_title", …]}`; there is no confirmation to wait for.
    fn withdrawn(&self, state: &AppState, tenant: TenantKey) {
        let devices: Vec<DeviceKey> = self
            .reachable()
            .into_iter()
            .filter(|d| self.speaks(*d))
            .collect();
        if devices.is_empty() {
            return;
        }
        let (sessions, observers, state) =
            (self.sessions.clone(), self.observers.clone(), state.clone());
        tokio::spawn(async move {
            for device in devices {
                let Ok(view) = state.store.poll_view(device).await else {
                    continue;
                };
                let (Some(canceled), None) = (view.pending_cancel, view.active) else {
                    continue;
                };
                let p = prefix(canceled.kind);
                let deleted = json!({"deleted": [
                    format!("{p}_title"),
                    format!("{p}_version"),
                    format!("{p}_size"),
                    format!("{p}_checksum"),
                    format!("{p}_checksum_algorithm"),
                ]});
                sessions.push(
                    device,
                    &Outbound::Publish {
                        topic: "v1/devices/me/attributes".into(),
                        payload: Bytes::from(deleted.to_string()),
                    },
                );
                observers.notify(device, &deleted);
                let _ = state
                    .store
                    .acknowledge_cancel(tenant, canceled.key, true, SOURCE)
                    .await;
            }
        });
    }
}

#[async_trait]
impl Adapter for ThingsBoard {
    fn name(&self) -> &'static str {
        SOURCE
    }

    fn routes(&self) -> axum::Router<AppState> {
        axum::Router::new().nest("/api/v1", super::http::routes())
    }

    fn channel(self: Arc<Self>) -> Option<Arc<dyn DeviceChannel>> {
        Some(self)
    }
}
