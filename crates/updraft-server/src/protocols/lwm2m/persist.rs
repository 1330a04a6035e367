//! Registrations kept in the store, so that they outlive this process: a replica that restarts
//! (or the one that takes over its address) knows its NoSec clients at once — where they are,
//! what they carry — and goes on with their updates without waiting for them to register again.
//! Writes are batched: what changed is written every 200 ms (a registration update only moves
//! its expiry), so registering costs no database round trip of its own. A client whose
//! registration was lost anyway (the last 200 ms before a crash) is told 4.04 at its next update
//! and registers again, as the specification has it. DTLS registrations are not kept: their
//! session dies with the process, and the client must handshake and register again.

use std::time::Duration;

use updraft_store::StoredRegistration;

use super::*;

impl Lwm2m {
    /// Queues `registration` for the store (NoSec only).
    pub(super) fn remember(&self, registration: &Registration) {
        if registration.link.secure {
            return;
        }
        let stored = StoredRegistration {
            device: registration.device,
            tenant: registration.tenant,
            device_id: registration.device_id.clone(),
            endpoint: registration.endpoint.clone(),
            location: registration.location.clone(),
            peer: registration.link.peer.to_string(),
            lifetime: registration.lifetime,
            version: registration.version.clone(),
            root: registration.root.clone(),
            objects: registration.objects.clone(),
            expires_at: registration.expires_at,
        };
        self.queue(registration.device, Some(stored));
    }

    /// Queues the end of the device's registration for the store.
    pub(super) fn forget(&self, device: DeviceKey) {
        self.queue(device, None);
    }

    fn queue(&self, device: DeviceKey, change: Option<StoredRegistration>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.insert(device, change);
    }

    /// Loads the stored registrations that have not expired (at start-up, before the socket
    /// answers anyone) and looks at each device's update.
    pub(super) async fn restore(self: &Arc<Self>, state: &Ctx) {
        let stored = match state.store.lwm2m_registrations(now()).await {
            Ok(stored) => stored,
            Err(err) => {
                tracing::warn!(error = %err, "could not load LwM2M registrations");
                return;
            }
        };
        let mut devices = Vec::new();
        {
            let mut inner = self.inner();
            for r in stored {
                let Ok(peer) = r.peer.parse::<SocketAddr>() else {
                    continue;
                };
                devices.push(r.device);
                inner.registrations.insert(
                    r.device,
                    Registration {
                        device: r.device,
                        tenant: r.tenant,
                        device_id: r.device_id,
                        endpoint: r.endpoint,
                        location: r.location,
                        link: Link {
                            peer,
                            secure: false,
                        },
                        lifetime: r.lifetime,
                        version: r.version,
                        root: r.root,
                        objects: r.objects,
                        expires_at: r.expires_at,
                        // Observations died with the process that made them: made again.
                        observed: false,
                        info_read: true,
                        told: None,
                        offered: None,
                        gone: tokio_util::sync::CancellationToken::new(),
                    },
                );
            }
        }
        if !devices.is_empty() {
            tracing::info!(
                registrations = devices.len(),
                "LwM2M registrations restored"
            );
        }
        for device in devices {
            self.kick(state, device);
        }
    }

    /// Writes what changed, every 200 ms, until the process ends.
    pub(super) async fn persist(self: Arc<Self>, state: Ctx) {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.write_registrations(&state).await;
        }
    }

    /// Writes what changed since the last write, now.
    pub async fn write_registrations(&self, state: &Ctx) {
        let changes: Vec<(DeviceKey, Option<StoredRegistration>)> = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.drain().collect()
        };
        if changes.is_empty() {
            return;
        }
        if let Err(err) = state.store.save_lwm2m_registrations(&changes).await {
            tracing::warn!(error = %err, "storing LwM2M registrations");
            // Kept for the next round, unless newer changes came meanwhile.
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for (device, change) in changes {
                pending.entry(device).or_insert(change);
            }
        }
    }
}
