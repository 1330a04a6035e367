//! One device's MQTT connection as protocol handlers see it, and the table of connected sessions
//! the server pushes through.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use updraft_core::{DeviceId, DeviceKey};
use updraft_store::Device;

use super::codec::{self, Outbound, Version};
use crate::kernel::auth::Login;

/// A device's byte stream: plain TCP or TLS.
pub trait DeviceStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> DeviceStream for T {}

/// An authenticated connection.
pub struct Session {
    pub(super) login: Login,
    pub(super) version: Version,
    pub(super) stream: Box<dyn DeviceStream>,
    pub(super) out: BytesMut,
    pub(super) subscriptions: Vec<String>,
}

impl Session {
    /// The device and how it logged in.
    pub fn login(&self) -> &Login {
        &self.login
    }

    pub fn device(&self) -> &Device {
        &self.login.device
    }

    /// Writes several packets with one write.
    pub async fn send_all(&mut self, packets: &[Outbound]) -> std::io::Result<()> {
        self.out.clear();
        for packet in packets {
            codec::write(self.version, packet, &mut self.out).map_err(std::io::Error::other)?;
        }
        self.stream.write_all(&self.out).await?;
        self.stream.flush().await?;
        Ok(())
    }

    pub async fn send(&mut self, packet: &Outbound) -> std::io::Result<()> {
        self.send_all(std::slice::from_ref(packet)).await
    }

    /// Publishes `len` bytes read from `body` on `topic`, streamed into the socket (a firmware
    /// chunk is never held whole).
    pub async fn send_streamed(
        &mut self,
        topic: &str,
        len: u64,
        body: Option<&mut (dyn tokio::io::AsyncRead + Unpin + Send)>,
    ) -> std::io::Result<()> {
        let header = codec::publish_header(self.version, topic, len);
        self.stream.write_all(&header).await?;
        if let Some(body) = body {
            tokio::io::copy(body, &mut self.stream).await?;
        }
        self.stream.flush().await
    }

    /// Whether a subscription of the session matches `topic`.
    pub fn subscribed(&self, topic: &str) -> bool {
        self.subscriptions
            .iter()
            .any(|filter| topic_matches(filter, topic))
    }
}

/// MQTT topic filter matching (`+` one level, `#` the rest).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut levels = topic.split('/');
    for part in filter.split('/') {
        match part {
            "#" => return true,
            "+" => {
                if levels.next().is_none() {
                    return false;
                }
            }
            literal => {
                if levels.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    levels.next().is_none()
}

/// Pushes waiting for one connection at most; beyond that a push is dropped (the device asks
/// again when it reconnects).
const PUSH_QUEUE: usize = 16;

/// A connection's queue of pushes. It holds nothing while empty: an idle connection spends a
/// hundred bytes on it, where tokio's bounded channel allocated its first block of 32 slots
/// (~2.3 KB with the channel, measured by `bench/mqtt-heap.sh`) for every connection up front.
#[derive(Default)]
pub struct PushQueue {
    waiting: Mutex<VecDeque<Outbound>>,
    ready: tokio::sync::Notify,
}

impl PushQueue {
    fn waiting(&self) -> std::sync::MutexGuard<'_, VecDeque<Outbound>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `packet` unless the queue is full.
    fn offer(&self, packet: &Outbound) -> bool {
        {
            let mut waiting = self.waiting();
            if waiting.len() >= PUSH_QUEUE {
                return false;
            }
            waiting.push_back(packet.clone());
        }
        // Stored as a permit when nobody waits: the next `next` finds the packet at once.
        self.ready.notify_one();
        true
    }

    /// The next push if one waits.
    pub fn try_next(&self) -> Option<Outbound> {
        let mut waiting = self.waiting();
        let packet = waiting.pop_front();
        if waiting.is_empty() && waiting.capacity() > 0 {
            // Idle again: its memory goes back.
            *waiting = VecDeque::new();
        }
        packet
    }

    /// The next push, once there is one. Cancel-safe: a packet is taken only when returned.
    pub async fn next(&self) -> Outbound {
        loop {
            if let Some(packet) = self.try_next() {
                return packet;
            }
            self.ready.notified().await;
        }
    }
}

/// One connection: its id, the queue of its pushes, the protocols it has used, and how to close it.
struct Connection {
    id: u64,
    sender: Arc<PushQueue>,
    speaks: HashSet<&'static str>,
    close: CancellationToken,
}

#[derive(Default)]
struct Connected {
    id: Option<DeviceId>,
    connections: Vec<Connection>,
}

/// Connected devices, so that the server can push to them.
#[derive(Default)]
pub struct Sessions {
    // Several connections of one device are all told.
    devices: Mutex<HashMap<DeviceKey, Connected>>,
    next_id: AtomicU64,
}

impl Sessions {
    fn devices(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceKey, Connected>> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a connection of `device`; its pushes arrive in `sender`. At most `max`
    /// connections of one device stay: the oldest beyond that are told to close (and forgotten
    /// at once). Returns the connection's id and the token that closes it.
    pub fn add(
        &self,
        device: &Device,
        sender: Arc<PushQueue>,
        max: usize,
    ) -> (u64, CancellationToken) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let close = CancellationToken::new();
        let mut devices = self.devices();
        let entry = devices.entry(device.key).or_default();
        entry.id = Some(device.id.clone());
        entry.connections.push(Connection {
            id,
            sender,
            speaks: HashSet::new(),
            close: close.clone(),
        });
        let excess = entry.connections.len().saturating_sub(max.max(1));
        for old in entry.connections.drain(..excess) {
            old.close.cancel();
        }
        (id, close)
    }

    pub(super) fn remove(&self, device: DeviceKey, id: u64) {
        let mut devices = self.devices();
        if let Some(entry) = devices.get_mut(&device) {
            entry.connections.retain(|c| c.id != id);
            if entry.connections.is_empty() {
                devices.remove(&device);
            }
        }
    }

    /// Records that connection `id` of `device` used `protocol`'s topics.
    pub(super) fn spoke(&self, device: DeviceKey, id: u64, protocol: &'static str) {
        if let Some(entry) = self.devices().get_mut(&device)
            && let Some(connection) = entry.connections.iter_mut().find(|c| c.id == id)
        {
            connection.speaks.insert(protocol);
        }
    }

    /// Whether any connection of `device` used `protocol`'s topics.
    pub fn speaks(&self, device: DeviceKey, protocol: &str) -> bool {
        self.devices()
            .get(&device)
            .is_some_and(|e| e.connections.iter().any(|c| c.speaks.contains(protocol)))
    }

    /// Connected devices.
    pub fn connected(&self) -> Vec<DeviceKey> {
        self.devices().keys().copied().collect()
    }

    /// A connected device's id.
    pub fn device_id(&self, device: DeviceKey) -> Option<DeviceId> {
        self.devices().get(&device).and_then(|e| e.id.clone())
    }

    /// Closes every connection (the server is shutting down: devices reconnect, through the
    /// load balancer, to another replica); returns how many.
    pub fn close_all(&self) -> usize {
        let mut devices = self.devices();
        let mut closed = 0;
        for entry in devices.values() {
            for connection in &entry.connections {
                connection.close.cancel();
                closed += 1;
            }
        }
        devices.clear();
        closed
    }

    pub fn count(&self) -> usize {
        self.devices().values().map(|e| e.connections.len()).sum()
    }

    /// Queues `packet` for every connection of `device`; a full queue drops it (the device asks
    /// again when it reconnects). A PUBLISH reaches only connections subscribed to its topic.
    pub fn push(&self, device: DeviceKey, packet: &Outbound) -> usize {
        let senders: Vec<Arc<PushQueue>> = self
            .devices()
            .get(&device)
            .map(|e| e.connections.iter().map(|c| c.sender.clone()).collect())
            .unwrap_or_default();
        senders.iter().filter(|queue| queue.offer(packet)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_push_queue_is_bounded_and_wakes_its_reader() {
        let queue = Arc::new(PushQueue::default());
        for _ in 0..PUSH_QUEUE {
            assert!(queue.offer(&Outbound::PingResp));
        }
        assert!(!queue.offer(&Outbound::PingResp), "a full queue drops");
        for _ in 0..PUSH_QUEUE {
            assert!(matches!(queue.next().await, Outbound::PingResp));
        }
        assert!(queue.try_next().is_none());
        assert_eq!(
            queue.waiting().capacity(),
            0,
            "an empty queue holds no memory"
        );
        // A reader waiting before the push is woken by it.
        let reader = tokio::spawn({
            let queue = queue.clone();
            async move { queue.next().await }
        });
        tokio::task::yield_now().await;
        assert!(queue.offer(&Outbound::PingResp));
        let pushed = tokio::time::timeout(std::time::Duration::from_secs(10), reader)
            .await
            .expect("the waiting reader was never woken");
        assert!(matches!(pushed, Ok(Outbound::PingResp)));
    }
}
