//! Transports: they know packets, connections and sessions, never a protocol. Protocol adapters
//! register their topic handlers with them.

pub mod coap;
pub mod dtls;
pub mod http;
pub mod mqtt;
pub mod tls;
