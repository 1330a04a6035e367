//! DTLS 1.2 with pre-shared keys (RFC 7925: TLS_PSK_WITH_AES_128_CCM_8) on the `--lwm2m-dtls`
//! socket: a session per peer once it echoed a stateless cookie (`transport::dtls`, OpenSSL);
//! CoAP goes through `datagram` like on the NoSec socket.

use super::listener::datagram;
use super::*;
use crate::transport::dtls::{
    Closed, DtlsServer, DtlsSession, Hello, PskLookup, epoch, is_client_hello, normalize_records,
};

impl Lwm2m {
    /// Loads every device's PSK from the store (at start-up).
    pub async fn load_psks(&self, state: &Ctx) -> Result<(), ApiError> {
        let mut table = PskTable::new();
        for (device, identity, key) in state.store.lwm2m_psks().await? {
            if let Ok(key) = hex::decode(&key) {
                table.insert(identity.into_bytes(), (device, key));
            }
        }
        *self.psks.write().unwrap_or_else(|e| e.into_inner()) = table;
        Ok(())
    }

    /// Sets or removes a device's PSK in the running server (the store has it already).
    pub fn set_psk(&self, device: DeviceKey, psk: Option<(Vec<u8>, Vec<u8>)>) {
        let mut table = self.psks.write().unwrap_or_else(|e| e.into_inner());
        table.retain(|_, (d, _)| *d != device);
        if let Some((identity, key)) = psk {
            table.insert(identity, (device, key));
        }
    }

    pub(super) fn dtls_device(&self, peer: SocketAddr) -> Option<DeviceKey> {
        self.dtls_peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .copied()
    }
}

/// An association with a peer: its session, and a new handshake under way on the same address (a
/// client that rebooted, or someone spoofing it once it proved the address), which replaces the
/// session only once it completes (RFC 6347 §4.2.8).
struct Association {
    current: Box<DtlsSession>,
    pending: Option<Box<DtlsSession>>,
}

/// Handshakes under way at once, over all peers. Each exists only after its client echoed a
/// valid cookie (a spoofed ClientHello gets a stateless HelloVerifyRequest and nothing kept); the
/// bound and the handshake timeout limit what clients that do receive at their address can hold.
const MAX_HALF_OPEN: usize = 1024;

/// The listener's DTLS server: PSK identities are looked up in the running PSK table.
fn server(state: &Ctx) -> Option<DtlsServer> {
    let psks = state.lwm2m.psks.clone();
    let lookup: PskLookup = Arc::new(move |identity: &[u8]| {
        psks.read()
            .unwrap_or_else(|e| e.into_inner())
            .get(identity)
            .cloned()
    });
    match DtlsServer::new(lookup) {
        Ok(server) => Some(server),
        Err(err) => {
            tracing::error!(error = %err, "the DTLS context could not be built");
            None
        }
    }
}

/// Serves LwM2M over DTLS-PSK on `socket` until it fails.
pub async fn serve_dtls(socket: UdpSocket, state: Ctx) {
    let (tx, mut outgoing) = tokio::sync::mpsc::channel::<(SocketAddr, Vec<u8>)>(4096);
    let _ = state.lwm2m.dtls_out.set(tx);
    if let Err(err) = state.lwm2m.load_psks(&state).await {
        tracing::warn!(error = %err.message, "could not load LwM2M PSKs");
    }
    let limits = state.config.limits.clone();
    let Some(server) = server(&state) else {
        tracing::error!("LwM2M over DTLS is off");
        return;
    };
    let mut listener = Listener {
        socket,
        state: state.clone(),
        server,
        peers: HashMap::new(),
        half_open: 0,
        recent: Arc::new(Mutex::new(Dedup::new(DEDUP_MILLIS, 65_536))),
        limits,
    };
    let mut buf = vec![0u8; 65_536];
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            received = listener.socket.recv_from(&mut buf) => {
                let Ok((len, peer)) = received else { continue };
                let datagram = &mut buf[..len];
                normalize_records(datagram);
                listener.received(peer, datagram).await;
            }
            Some((peer, plaintext)) = outgoing.recv() => listener.send(peer, &plaintext).await,
            _ = tick.tick() => listener.tick().await,
        }
        state
            .lwm2m
            .dtls_sessions
            .store(listener.peers.len(), Ordering::Relaxed);
    }
}

/// The DTLS listener's state: its socket, the stateless hello answerer, and the associations.
struct Listener {
    socket: UdpSocket,
    state: Ctx,
    server: DtlsServer,
    peers: HashMap<SocketAddr, Association>,
    half_open: usize,
    recent: Arc<Mutex<Dedup>>,
    limits: crate::kernel::state::Limits,
}

impl Listener {
    async fn transmit(&self, peer: SocketAddr, datagrams: Vec<Vec<u8>>) {
        for datagram in datagrams {
            let _ = self.socket.send_to(&datagram, peer).await;
        }
    }

    /// A ClientHello from an address without a session, or one that starts over: answered
    /// statelessly; a session (pending when the address has one) only for a valid cookie.
    async fn hello(&mut self, peer: SocketAddr, datagram: &[u8]) -> Option<Box<DtlsSession>> {
        if self.half_open >= MAX_HALF_OPEN {
            return None;
        }
        match self.server.hello(peer, datagram) {
            Hello::Verify(out) => {
                self.transmit(peer, out).await;
                None
            }
            Hello::Session(session, fed) => {
                self.half_open += 1;
                self.transmit(peer, fed.out).await;
                Some(session)
            }
            Hello::Dropped => None,
        }
    }

    async fn received(&mut self, peer: SocketAddr, datagram: &[u8]) {
        let hello = is_client_hello(datagram);
        let Some(association) = self.peers.get_mut(&peer) else {
            if hello
                && self.peers.len() < self.limits.max_dtls_sessions
                && let Some(current) = self.hello(peer, datagram).await
            {
                self.peers.insert(
                    peer,
                    Association {
                        current,
                        pending: None,
                    },
                );
            }
            return;
        };
        if hello && association.current.established() && association.pending.is_none() {
            if let Some(pending) = self.hello(peer, datagram).await
                && let Some(association) = self.peers.get_mut(&peer)
            {
                association.pending = Some(pending);
            }
            return;
        }
        // The new handshake takes epoch-0 records; later epochs go to the session, and to the
        // new handshake too (each drops what it cannot decrypt).
        let mut messages = Vec::new();
        let mut out = Vec::new();
        let to_pending = association.pending.is_some() && epoch(datagram) == 0;
        let mut current_failed = false;
        if !to_pending {
            let session = &mut association.current;
            let was_established = session.established();
            match session.feed(datagram) {
                Ok(fed) => {
                    out.extend(fed.out);
                    messages.extend(fed.app);
                }
                Err(Closed) => current_failed = true,
            }
            if !was_established && session.established() {
                self.half_open = self.half_open.saturating_sub(1);
                connected(&self.state, peer, session);
            }
        }
        let mut promoted = false;
        let mut pending_failed = false;
        if let Some(pending) = association.pending.as_mut()
            && (to_pending || epoch(datagram) > 0)
        {
            match pending.feed(datagram) {
                Ok(fed) => {
                    out.extend(fed.out);
                    messages.extend(fed.app);
                    promoted = pending.established();
                }
                Err(Closed) => pending_failed = true,
            }
        }
        if promoted && let Some(pending) = association.pending.take() {
            self.half_open = self.half_open.saturating_sub(1);
            connected(&self.state, peer, &pending);
            association.current = pending;
            current_failed = false;
        } else if pending_failed {
            association.pending = None;
            self.half_open = self.half_open.saturating_sub(1);
        }
        self.transmit(peer, out).await;
        if current_failed {
            // A fatal error (a wrong key among them): the session is gone.
            self.forget(peer);
            return;
        }
        let link = Link { peer, secure: true };
        for message in messages {
            datagram_secure(&self.state, link, message, &self.recent).await;
        }
    }

    async fn send(&mut self, peer: SocketAddr, plaintext: &[u8]) {
        let Some(association) = self.peers.get_mut(&peer) else {
            return;
        };
        match association.current.send(plaintext) {
            Ok(records) => {
                // One record per datagram: some clients read only the first of several.
                self.transmit(peer, records).await;
            }
            Err(Closed) => self.forget(peer),
        }
    }

    /// Retransmissions, handshakes that ran out of time, sessions silent for a day.
    async fn tick(&mut self) {
        let now = std::time::Instant::now();
        let timeout = self.limits.handshake_timeout;
        let mut gone = Vec::new();
        let mut out = Vec::new();
        for (peer, association) in &mut self.peers {
            if let Some(pending) = association.pending.as_mut() {
                let expired = now.duration_since(pending.started) > timeout;
                let resent = retransmit(pending, now);
                match resent {
                    Ok(records) if !expired => out.push((*peer, records)),
                    _ => {
                        association.pending = None;
                        self.half_open = self.half_open.saturating_sub(1);
                    }
                }
            }
            let session = &mut association.current;
            let stale = if session.established() {
                now.duration_since(session.last_heard) > Duration::from_secs(86_400)
            } else {
                now.duration_since(session.started) > timeout
            };
            match retransmit(session, now) {
                Ok(records) if !stale => out.push((*peer, records)),
                _ => gone.push(*peer),
            }
        }
        for (peer, records) in out {
            self.transmit(peer, records).await;
        }
        for peer in gone {
            self.forget(peer);
        }
    }

    /// Ends a peer's association, and what it counted.
    fn forget(&mut self, peer: SocketAddr) {
        if let Some(gone) = self.peers.remove(&peer) {
            self.half_open = self
                .half_open
                .saturating_sub(usize::from(!gone.current.established()))
                .saturating_sub(usize::from(gone.pending.is_some()));
        }
        self.state
            .lwm2m
            .dtls_peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&peer);
    }
}

/// A handshaking session's flight again if its timer fired; nothing for an established one.
fn retransmit(session: &mut DtlsSession, now: std::time::Instant) -> Result<Vec<Vec<u8>>, Closed> {
    if session.established() || session.timeout().is_none_or(|at| at > now) {
        return Ok(Vec::new());
    }
    session.handle_timeout()
}

/// A handshake completed: the address now speaks for the device its PSK identity named.
fn connected(state: &Ctx, peer: SocketAddr, session: &DtlsSession) {
    if let Some(device) = session.device() {
        state
            .lwm2m
            .dtls_peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer, device);
    }
}

pub(super) async fn datagram_secure(
    state: &Ctx,
    link: Link,
    message: Vec<u8>,
    recent: &Arc<Mutex<Dedup>>,
) {
    datagram(state, link, &message, recent).await;
}
