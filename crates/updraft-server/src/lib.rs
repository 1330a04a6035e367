//! Updraft's server. Its folders are its architecture:
//!
//! - `kernel`: what everything shares and no protocol shapes (state, auth, errors, clock,
//!   download grants and blob streaming, artifact ingest, metrics, device channels and the
//!   notification queue);
//! - `transport`: packets and sessions (the MQTT endpoint, TLS), never a protocol;
//! - `protocols`: one folder per device protocol adapter, reached through
//!   [`kernel::channel::Adapter`];
//! - `api`: the management REST API;
//! - `dashboard`: the web dashboard (server-rendered pages over the API's handlers);
//! - `server`: the composition root that `updraft serve` runs (data directory, store, blobs,
//!   garbage collection, the first admin key, listeners, graceful shutdown).

pub mod api;
pub mod dashboard;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod kernel;
pub mod protocols;
pub mod server;
pub mod transport;

pub use kernel::state::{AppConfig, AppState, Limits};
pub use server::{Node, ServerConfig, run};
