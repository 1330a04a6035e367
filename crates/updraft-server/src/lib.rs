//! Updraft's server: the management REST API (and, as they land, the device protocol adapters)
//! over the store, plus the wiring that `updraft serve` runs: data directory, store, blob store,
//! start-up garbage collection, the first admin key, listeners and graceful shutdown.

pub mod api;
pub mod auth;
pub mod aws;
pub mod coap;
pub mod ddi;
pub mod dfu;
pub mod download;
pub mod error;
pub mod frugal;
pub mod grants;
pub mod lwm2m;
pub mod metrics;
pub mod mqtt;
pub mod secret;
pub mod server;
pub mod state;
pub mod thingsboard;
pub mod tls;

pub use api::router;
pub use server::{ServerConfig, run};
pub use state::{AppConfig, AppState};
