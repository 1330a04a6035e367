//! Our own confirmable requests: message IDs, random tokens, RFC 7252's retransmission back-off,
//! and answers routed back by (peer, token) — a packet from another peer never answers a request,
//! and a token cannot be guessed from the ones before it. The peer is whatever the protocol names
//! a client by (an address, or an address and its transport).

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use coap_lite::{MessageType, Packet};
use tokio::sync::oneshot;

/// ACK_TIMEOUT (RFC 7252 §4.8).
const ACK_TIMEOUT_MILLIS: f64 = 2000.0;
/// MAX_RETRANSMIT.
const MAX_RETRANSMIT: u32 = 4;

type Waiting<P> = HashMap<(P, Vec<u8>), oneshot::Sender<Packet>>;

/// Requests in flight and the message IDs new ones draw from.
pub struct Exchanges<P = SocketAddr> {
    waiting: Mutex<Waiting<P>>,
    message_id: AtomicU16,
}

impl<P> Default for Exchanges<P> {
    fn default() -> Self {
        Self {
            waiting: Mutex::new(HashMap::new()),
            message_id: AtomicU16::new(0),
        }
    }
}

/// Takes the waiter out when a request ends however it ends (answered, timed out, dropped).
struct Pending<'a, P: Eq + Hash> {
    waiting: &'a Mutex<Waiting<P>>,
    key: (P, Vec<u8>),
}

impl<P: Eq + Hash> Drop for Pending<'_, P> {
    fn drop(&mut self) {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

impl<P: Eq + Hash + Clone + Debug> Exchanges<P> {
    /// A message ID for a message of ours.
    pub fn message_id(&self) -> u16 {
        self.message_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A random eight-byte token (RFC 7252 §5.3.1: tokens should be random to resist spoofed
    /// answers).
    pub fn token(&self) -> Vec<u8> {
        let mut token = [0u8; 8];
        if getrandom::fill(&mut token).is_err() {
            // No randomness from the OS: unguessable tokens are impossible, but a unique one
            // still routes answers.
            let n =
                u64::from(self.message_id()) | (crate::kernel::clock::now_millis() as u64) << 16;
            token = n.to_be_bytes();
        }
        token.to_vec()
    }

    /// Sends `packet` to `peer` as a confirmable request (its token set by the caller) through
    /// `transmit`, and awaits the answer: ACK_TIMEOUT × a random factor of 1–1.5, doubling,
    /// MAX_RETRANSMIT retransmissions. `Err` when no answer came.
    pub async fn request<F, Fut>(
        &self,
        peer: P,
        mut packet: Packet,
        transmit: F,
    ) -> Result<Packet, String>
    where
        F: Fn(Vec<u8>) -> Fut,
        Fut: Future<Output = ()>,
    {
        packet.header.set_type(MessageType::Confirmable);
        packet.header.message_id = self.message_id();
        let token = packet.get_token().to_vec();
        let bytes = packet.to_bytes().map_err(|e| format!("{e:?}"))?;
        let (tx, mut rx) = oneshot::channel();
        let key = (peer.clone(), token.clone());
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), tx);
        let _pending = Pending {
            waiting: &self.waiting,
            key,
        };
        let jitter = 1.0 + f64::from(token.last().copied().unwrap_or(0) % 50) / 100.0;
        let mut wait = Duration::from_millis((ACK_TIMEOUT_MILLIS * jitter) as u64);
        for _attempt in 0..=MAX_RETRANSMIT {
            transmit(bytes.clone()).await;
            match tokio::time::timeout(wait, &mut rx).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(_)) => break,
                Err(_) => wait *= 2,
            }
        }
        Err(format!("no answer from {peer:?}"))
    }

    /// Ends every request waiting on `peer` now, as unanswered (the client rebooted or left: its
    /// old exchanges will never be answered, and whatever awaits them should move on).
    pub fn abandon(&self, peer: &P) {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(p, _), _| p != peer);
    }

    /// Hands an answer from `peer` to the request waiting for its token; gives the packet back
    /// when no request of that peer waits for it (a notification, or a stray).
    pub fn answer(&self, peer: P, packet: Packet) -> Result<(), Packet> {
        let key = (peer, packet.get_token().to_vec());
        let waiter = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        match waiter {
            Some(waiter) => {
                let _ = waiter.send(packet);
                Ok(())
            }
            None => Err(packet),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test]
    async fn answers_reach_the_request_of_their_peer_and_token_only() {
        let exchanges = std::sync::Arc::new(Exchanges::<SocketAddr>::default());
        let token = exchanges.token();
        assert_ne!(token, exchanges.token(), "tokens are not repeated");
        let mut request = Packet::new();
        request.set_token(token.clone());
        let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel();
        let waiting = {
            let exchanges = exchanges.clone();
            tokio::spawn(async move {
                exchanges
                    .request(peer(1), request, |bytes| {
                        let _ = sent_tx.send(bytes);
                        async {}
                    })
                    .await
            })
        };
        let sent = Packet::from_bytes(&sent_rx.recv().await.unwrap()).unwrap();
        assert_eq!(sent.header.get_type(), MessageType::Confirmable);
        let mut answer = Packet::new();
        answer.set_token(token.clone());
        // Another peer with the same token is not the device asked.
        assert!(exchanges.answer(peer(2), answer.clone()).is_err());
        answer.payload = b"ok".to_vec();
        assert!(exchanges.answer(peer(1), answer).is_ok());
        assert_eq!(waiting.await.unwrap().unwrap().payload, b"ok");
        // Answered once: a repeat finds nobody waiting.
        let mut again = Packet::new();
        again.set_token(token);
        assert!(exchanges.answer(peer(1), again).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn abandoning_a_peer_ends_its_requests_at_once_and_no_others() {
        let exchanges = std::sync::Arc::new(Exchanges::<SocketAddr>::default());
        let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel();
        let ask = |port: u16| {
            let (exchanges, sent_tx) = (exchanges.clone(), sent_tx.clone());
            let mut request = Packet::new();
            request.set_token(exchanges.token());
            tokio::spawn(async move {
                exchanges
                    .request(peer(port), request, |bytes| {
                        let _ = sent_tx.send(bytes);
                        async {}
                    })
                    .await
            })
        };
        let gone = ask(1);
        let kept = ask(2);
        let first = Packet::from_bytes(&sent_rx.recv().await.unwrap()).unwrap();
        let second = Packet::from_bytes(&sent_rx.recv().await.unwrap()).unwrap();
        let abandoned = tokio::time::Instant::now();
        exchanges.abandon(&peer(1));
        // Ended now on the virtual clock, not after the back-off's first retransmission.
        assert!(gone.await.unwrap().is_err());
        assert!(abandoned.elapsed() < Duration::from_millis(ACK_TIMEOUT_MILLIS as u64));
        // The other peer's request still takes its answer.
        let token = [first.get_token(), second.get_token()]
            .into_iter()
            .find(|t| {
                let mut probe = Packet::new();
                probe.set_token(t.to_vec());
                exchanges.answer(peer(2), probe).is_ok()
            });
        assert!(token.is_some());
        assert!(kept.await.unwrap().is_ok());
    }
}
