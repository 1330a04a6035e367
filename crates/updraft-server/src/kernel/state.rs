//! What every handler shares. Nothing here knows a protocol: adapters keep their own state and
//! are reached through [`Adapters`].

use std::sync::Arc;

use updraft_store::{BlobStore, Store};

use updraft_core::TenantKey;

use crate::kernel::channel::Adapters;
use crate::kernel::limit::RateLimit;
use crate::kernel::metrics::Metrics;

/// Limits and names the server runs with.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Largest artifact accepted, in bytes.
    pub max_upload_bytes: u64,
    /// Base URL written into links (no trailing slash).
    pub public_url: String,
    pub limits: Limits,
    /// HTTP-pull devices that follow redirects download from a presigned object-storage URL.
    pub download_redirect: bool,
}

/// What any one client, device or tenant may hold of the server: every listener's bounds.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Devices a tenant may register by themselves (auto-registration, enrollment) at once…
    pub registrations_burst: u32,
    /// …and per minute after that.
    pub registrations_per_minute: u32,
    /// Open connections across the TCP listeners (HTTP, MQTT, MQTT over TLS): keep it below the
    /// process's file descriptor limit (`ulimit -n`), with room for the database and blobs.
    pub max_connections: usize,
    /// Open connections of one device (MQTT).
    pub max_connections_per_device: usize,
    /// Time for a client to send a request's headers (the first, or the next on a kept-alive
    /// connection), an MQTT CONNECT, a TLS or DTLS handshake.
    pub handshake_timeout: std::time::Duration,
    /// Silence allowed inside an HTTP request body, and the time open requests get to finish at
    /// shutdown. (Between requests an HTTP connection gets `handshake_timeout`: the next head.)
    pub idle_timeout: std::time::Duration,
    /// DTLS associations (LwM2M) held at once, handshaking or established.
    pub max_dtls_sessions: usize,
    /// Subscriptions one MQTT session may hold.
    pub max_subscriptions: usize,
    /// Ranges one `Range` header may ask for (after coalescing).
    pub max_ranges: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            registrations_burst: 1000,
            registrations_per_minute: 6000,
            max_connections: 15_000,
            max_connections_per_device: 4,
            handshake_timeout: std::time::Duration::from_secs(10),
            idle_timeout: std::time::Duration::from_secs(120),
            max_dtls_sessions: 10_000,
            max_subscriptions: 64,
            max_ranges: 16,
        }
    }
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            max_upload_bytes: 4 * 1024 * 1024 * 1024,
            public_url: "http://127.0.0.1:8080".to_owned(),
            limits: Limits::default(),
            download_redirect: false,
        }
    }
}

/// What every handler shares, behind one `Arc`: the router hands each request its own clone, so
/// cloning is one reference count, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub blobs: Arc<dyn BlobStore>,
    pub config: Arc<AppConfig>,
    pub metrics: Arc<Metrics>,
    /// Held while a blob is committed and its artifact row written, and while an artifact is
    /// deleted and its blob removed, so that deleting the last reference to a blob never races
    /// an upload of the same bytes.
    pub blob_lock: Arc<tokio::sync::Mutex<()>>,
    /// Wakes the notification queue (an assignment changed).
    pub wake: Arc<tokio::sync::Notify>,
    /// Wakes the rollout scheduler (a rollout was created or commanded).
    pub schedule: Arc<tokio::sync::Notify>,
    /// Whether each live rollout's maintenance window was open at the scheduler's last pass
    /// (so that devices waiting for it are told when it opens).
    pub windows: Arc<std::sync::Mutex<std::collections::HashMap<updraft_core::RolloutKey, bool>>>,
    /// Signed download URLs.
    pub grants: Arc<crate::kernel::grants::Grants>,
    /// The server is shutting down: `/readyz` says so, so that a load balancer sends no more.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// The device protocols, installed by the composition root.
    pub adapters: Arc<Adapters>,
    /// Devices registering themselves, per tenant.
    pub registrations: Arc<RateLimit<TenantKey>>,
    /// One permit per open TCP connection, shared by every TCP listener.
    pub connections: Arc<tokio::sync::Semaphore>,
    /// Dashboard sign-in sessions.
    pub sessions: Arc<crate::kernel::sessions::Sessions>,
    /// Each tenant's fleet overview: however many dashboards refresh the fleet page, the store
    /// counts it at most once per few seconds per tenant, in the background while the last count
    /// is shown (bounded by the number of tenants).
    pub overviews: Arc<tokio::sync::Mutex<Overviews>>,
}

/// Fleet overviews by tenant.
pub type Overviews = std::collections::HashMap<TenantKey, CachedOverview>;

/// A tenant's fleet overview, when it was computed, and whether a recount is under way.
#[derive(Debug, Clone)]
pub struct CachedOverview {
    pub at: i64,
    pub overview: Arc<updraft_store::FleetOverview>,
    pub refreshing: bool,
}
