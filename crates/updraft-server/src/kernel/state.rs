//! What every handler shares. Nothing here knows a protocol: adapters keep their own state and
//! are reached through [`Adapters`].

use std::sync::Arc;

use updraft_store::{BlobStore, Store};

use crate::kernel::channel::Adapters;
use crate::kernel::metrics::Metrics;

/// Limits and names the server runs with.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Largest artifact accepted, in bytes.
    pub max_upload_bytes: u64,
    /// Base URL written into links (no trailing slash).
    pub public_url: String,
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            max_upload_bytes: 4 * 1024 * 1024 * 1024,
            public_url: "http://127.0.0.1:8080".to_owned(),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
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
    /// One-time download URLs.
    pub grants: Arc<crate::kernel::grants::Grants>,
    /// The device protocols, installed by the composition root.
    pub adapters: Arc<Adapters>,
}
