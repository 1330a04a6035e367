//! Device-protocol messages on the wire, as pure functions over bytes: no IO, no store, so that
//! the server, the agent and the fuzz targets share one decoder per format and never panic on
//! what a device or a network sends.

pub mod aws;
pub mod dfu;
pub mod lwm2m;
