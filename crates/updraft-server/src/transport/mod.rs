//! Transports: they know packets, connections and sessions, never a protocol. Protocol adapters
//! register their topic handlers with them.

pub mod coap;
pub mod dtls;
pub mod http;
pub mod mqtt;
pub mod tls;

/// What a UDP listener asks of the kernel for datagrams waiting to be read: a fleet that wakes
/// at once (a power cut ends, a campaign starts) sends thousands of requests together, and what
/// does not fit is dropped before we see it, to be retransmitted seconds later. The kernel caps
/// it at `net.core.rmem_max` (4 MiB on Debian), and counts each datagram with its overhead.
const UDP_RECEIVE_BUFFER: usize = 4 << 20;

/// Asks for [`UDP_RECEIVE_BUFFER`] on `socket`; the kernel's default stays where it refuses.
pub fn udp_receive_buffer(socket: &tokio::net::UdpSocket) {
    if let Err(err) = socket2::SockRef::from(socket).set_recv_buffer_size(UDP_RECEIVE_BUFFER) {
        tracing::warn!(error = %err, "could not enlarge a UDP receive buffer");
    }
}
