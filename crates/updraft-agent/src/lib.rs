//! `updraft-agent`: the device side of Updraft. It polls a hawkBit DDI server (Updraft or
//! hawkBit) — or speaks Drogue DFU ([`dfu`]) — downloads an update into the inactive of two slots with resume after a dropped
//! connection, verifies its SHA-256, boots it on trial, runs a health check, and confirms it or
//! rolls back after too many failed boots, reporting each step as DDI feedback.
//!
//! The decisions are pure functions over the persisted [`state::AgentState`] ([`state::boot`],
//! [`state::confirm`], …); [`agent::Agent`] is the thin driver that performs one IO operation at a
//! time against a [`flash::Flash`] (slot files and state file, or memory) and an
//! [`server::UpdateServer`] (DDI over HTTP). Every state change is persisted before it is acted
//! on, so a power loss between any two operations restarts from a true state.

pub mod agent;
pub mod dfu;
pub mod flash;
pub mod server;
pub mod state;

/// What can stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The (simulated) power went off: nothing after this point happened.
    #[error("power lost")]
    PowerLost,
    #[error("storage: {0}")]
    Io(#[from] std::io::Error),
    /// The server could not be reached, or the connection broke; try again later.
    #[error("network: {0}")]
    Network(String),
    /// The server answered something this agent does not understand.
    #[error("server: {0}")]
    Protocol(String),
    /// The state file is unreadable.
    #[error("state: {0}")]
    State(String),
}
