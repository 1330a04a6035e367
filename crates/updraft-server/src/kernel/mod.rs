//! The kernel: what every protocol adapter and the management API share, and nothing that knows
//! a protocol — application state, authentication of API keys and device credentials, errors,
//! the clock, download grants and blob streaming, the artifact ingest pipeline, metrics, the
//! device channels and the notification queue that drives them, and the rollout scheduler.

pub mod actions;
pub mod auth;
pub mod channel;
pub mod clock;
pub mod cluster;
pub mod download;
pub mod error;
pub mod extract;
pub mod gc;
pub mod grants;
pub mod ingest;
pub mod limit;
pub mod metrics;
pub mod notifier;
pub mod scheduler;
pub mod secret;
pub mod sessions;
pub mod state;
pub mod terms;
pub mod views;

/// The name of the tenant that keys and devices belong to unless told otherwise.
pub const DEFAULT_TENANT: &str = "default";
