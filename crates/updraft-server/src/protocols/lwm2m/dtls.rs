//! DTLS 1.2 with pre-shared keys (RFC 7925: TLS_PSK_WITH_AES_128_CCM_8), one dimpl session per
//! peer on the `--lwm2m-dtls` socket; CoAP goes through `datagram` like on the NoSec socket.

use super::listener::datagram;
use super::*;

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

/// Looks a PSK identity up, remembering which device it named. One resolver serves every
/// session: the listener handles one datagram at a time, so the device it names belongs to the
/// session being fed (`feed` takes it right after).
pub(super) struct Resolver {
    psks: Arc<std::sync::RwLock<PskTable>>,
    device: Arc<Mutex<Option<DeviceKey>>>,
}

impl dimpl::PskResolver for Resolver {
    fn resolve(&self, identity: &[u8]) -> Option<Vec<u8>> {
        let found = self
            .psks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(identity)
            .cloned()?;
        *self.device.lock().unwrap_or_else(|e| e.into_inner()) = Some(found.0);
        Some(found.1)
    }
}

pub(super) struct DtlsSession {
    dtls: dimpl::Dtls,
    device: Arc<Mutex<Option<DeviceKey>>>,
    timeout: Option<std::time::Instant>,
    last_heard: std::time::Instant,
    started: std::time::Instant,
    /// The handshake completed.
    established: bool,
}

/// A peer's association: its session, and a new handshake under way on the same address (a
/// client that rebooted, or someone spoofing it), which replaces the session only once it
/// completes (RFC 6347 §4.2.8).
pub(super) struct Association {
    current: DtlsSession,
    pending: Option<DtlsSession>,
}

/// Handshakes under way at once, over all peers; a ClientHello beyond that is dropped (the client
/// retries). dimpl draws its cookie secret per session, so state is allocated on the first
/// ClientHello: this bound, and the handshake timeout, are what keep spoofed ClientHellos from
/// growing memory.
const MAX_HALF_OPEN: usize = 1024;

/// Whether a datagram starts with an epoch-0 ClientHello record.
fn is_client_hello(datagram: &[u8]) -> bool {
    datagram.len() > 13
        && datagram[0] == 22
        && u16::from_be_bytes([datagram[3], datagram[4]]) == 0
        && datagram[13] == 1
}

/// The epoch of a datagram's first record.
fn epoch(datagram: &[u8]) -> u16 {
    match datagram.get(3..5) {
        Some(e) => u16::from_be_bytes([e[0], e[1]]),
        None => 0,
    }
}

/// The listener's one DTLS configuration (building one is costly: tens of milliseconds) and the
/// slot its resolver names devices in.
struct Shared {
    config: Arc<dimpl::Config>,
    resolved: Arc<Mutex<Option<DeviceKey>>>,
}

fn shared(state: &Ctx, limits: &crate::kernel::state::Limits) -> Option<Shared> {
    let resolved = Arc::new(Mutex::new(None));
    let resolver = Arc::new(Resolver {
        psks: state.lwm2m.psks.clone(),
        device: resolved.clone(),
    });
    let config = dimpl::Config::builder()
        .with_psk_server(None, resolver)
        .handshake_timeout(limits.handshake_timeout)
        .build()
        .ok()?;
    Some(Shared {
        config: Arc::new(config),
        resolved,
    })
}

fn new_session(shared: &Shared) -> Option<DtlsSession> {
    let device = Arc::new(Mutex::new(None));
    let now = std::time::Instant::now();
    let mut dtls = dimpl::Dtls::new_12_psk(shared.config.clone(), now);
    // The engine draws its randoms on its first timeout: before any packet.
    dtls.handle_timeout(now).ok()?;
    Some(DtlsSession {
        dtls,
        device,
        timeout: None,
        last_heard: now,
        started: now,
        established: false,
    })
}

/// Record versions of epoch-0 handshake records are rewritten to DTLS 1.2's: mbedTLS 2.x sends
/// 0xFE00 in its ClientHello, which the engine would drop (the handshake hash does not cover
/// record headers).
pub(super) fn normalize_records(datagram: &mut [u8]) {
    let mut at = 0;
    while at + 13 <= datagram.len() {
        let content_type = datagram[at];
        let epoch = u16::from_be_bytes([datagram[at + 3], datagram[at + 4]]);
        let len = usize::from(u16::from_be_bytes([datagram[at + 11], datagram[at + 12]]));
        if content_type == 22 && epoch == 0 {
            datagram[at + 1] = 0xfe;
            datagram[at + 2] = 0xfd;
        }
        at += 13 + len;
    }
}

/// Serves LwM2M over DTLS-PSK on `socket` until it fails.
pub async fn serve_dtls(socket: UdpSocket, state: Ctx) {
    let socket = Arc::new(socket);
    let (tx, mut outgoing) = tokio::sync::mpsc::channel::<(SocketAddr, Vec<u8>)>(4096);
    let _ = state.lwm2m.dtls_out.set(tx);
    if let Err(err) = state.lwm2m.load_psks(&state).await {
        tracing::warn!(error = %err.message, "could not load LwM2M PSKs");
    }
    let limits = state.config.limits.clone();
    let Some(shared) = shared(&state, &limits) else {
        tracing::error!("the DTLS configuration could not be built: LwM2M over DTLS is off");
        return;
    };
    let recent = Arc::new(Mutex::new(Dedup::new(DEDUP_MILLIS, 65_536)));
    let mut peers: HashMap<SocketAddr, Association> = HashMap::new();
    let mut half_open = 0usize;
    let mut buf = vec![0u8; 65_536];
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let Ok((len, peer)) = received else { continue };
                let datagram = &mut buf[..len];
                normalize_records(datagram);
                let hello = is_client_hello(datagram);
                // Only a ClientHello starts a handshake, within the bounds.
                let room = half_open < MAX_HALF_OPEN && peers.len() < limits.max_dtls_sessions;
                let association = match peers.get_mut(&peer) {
                    None if hello && room => {
                        let Some(current) = new_session(&shared) else { continue };
                        half_open += 1;
                        peers.entry(peer).or_insert(Association { current, pending: None })
                    }
                    None => continue,
                    Some(association) => {
                        if hello && association.current.established && association.pending.is_none() {
                            if half_open >= MAX_HALF_OPEN {
                                continue;
                            }
                            association.pending = new_session(&shared);
                            half_open += usize::from(association.pending.is_some());
                        }
                        association
                    }
                };
                let now = std::time::Instant::now();
                let link = Link { peer, secure: true };
                // The new handshake takes epoch-0 records; later epochs go to the session, and
                // to the new handshake too (each drops what it cannot decrypt).
                let mut messages = Vec::new();
                let mut current_failed = false;
                let to_pending = association.pending.is_some() && (hello || epoch(datagram) == 0);
                if !to_pending {
                    let session = &mut association.current;
                    let was_established = session.established;
                    session.last_heard = now;
                    match feed(&socket, &state, &shared, peer, session, datagram).await {
                        Some(received) => messages.extend(received),
                        None => current_failed = true,
                    }
                    if !was_established && session.established {
                        half_open = half_open.saturating_sub(1);
                    }
                }
                let mut promoted = false;
                let mut pending_failed = false;
                if let Some(pending) = association.pending.as_mut()
                    && (to_pending || epoch(datagram) > 0)
                {
                    pending.last_heard = now;
                    match feed(&socket, &state, &shared, peer, pending, datagram).await {
                        Some(received) => {
                            messages.extend(received);
                            promoted = pending.established;
                        }
                        None => pending_failed = true,
                    }
                }
                if promoted && let Some(pending) = association.pending.take() {
                    half_open = half_open.saturating_sub(1);
                    association.current = pending;
                    current_failed = false;
                } else if pending_failed {
                    association.pending = None;
                    half_open = half_open.saturating_sub(1);
                }
                if current_failed {
                    // A fatal error (a wrong key among them): the session is gone.
                    forget(&state, &mut peers, &mut half_open, peer);
                    continue;
                }
                for message in messages {
                    datagram_secure(&state, link, message, &recent).await;
                }
            }
            Some((peer, plaintext)) = outgoing.recv() => {
                let Some(association) = peers.get_mut(&peer) else { continue };
                let session = &mut association.current;
                if session.dtls.send_application_data(&plaintext).is_err()
                    || drain(&socket, &state, peer, session).await.is_none()
                {
                    forget(&state, &mut peers, &mut half_open, peer);
                }
            }
            _ = tick.tick() => {
                let now = std::time::Instant::now();
                let mut gone = Vec::new();
                for (peer, association) in peers.iter_mut() {
                    // A handshake that did not finish in time ends; a pending one leaves the
                    // session it would have replaced.
                    if association.pending.as_ref().is_some_and(|p| now.duration_since(p.started) > limits.handshake_timeout) {
                        association.pending = None;
                        half_open = half_open.saturating_sub(1);
                    }
                    let session = &mut association.current;
                    let stale = if session.established {
                        // Sessions silent for a day are dropped; clients handshake again.
                        now.duration_since(session.last_heard) > Duration::from_secs(86_400)
                    } else {
                        now.duration_since(session.started) > limits.handshake_timeout
                    };
                    if stale
                        || session.timeout.is_some_and(|t| t <= now)
                            && (session.dtls.handle_timeout(now).is_err()
                                || drain(&socket, &state, *peer, session).await.is_none())
                    {
                        gone.push(*peer);
                    }
                    if let Some(pending) = association.pending.as_mut()
                        && pending.timeout.is_some_and(|t| t <= now)
                        && (pending.dtls.handle_timeout(now).is_err()
                            || drain(&socket, &state, *peer, pending).await.is_none())
                    {
                        association.pending = None;
                        half_open = half_open.saturating_sub(1);
                    }
                }
                for peer in gone {
                    forget(&state, &mut peers, &mut half_open, peer);
                }
                state.lwm2m.dtls_sessions.store(peers.len(), Ordering::Relaxed);
            }
        }
        state
            .lwm2m
            .dtls_sessions
            .store(peers.len(), Ordering::Relaxed);
    }
}

/// Ends a peer's association, and what it counted.
fn forget(
    state: &Ctx,
    peers: &mut HashMap<SocketAddr, Association>,
    half_open: &mut usize,
    peer: SocketAddr,
) {
    if let Some(gone) = peers.remove(&peer) {
        *half_open = half_open
            .saturating_sub(usize::from(!gone.current.established))
            .saturating_sub(usize::from(gone.pending.is_some()));
    }
    state
        .lwm2m
        .dtls_peers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&peer);
}

/// Feeds one datagram to a session and sends what it answers; the application data it yields,
/// or `None` when the session failed. A session whose handshake just completed is marked
/// established.
async fn feed(
    socket: &UdpSocket,
    state: &Ctx,
    shared: &Shared,
    peer: SocketAddr,
    session: &mut DtlsSession,
    datagram: &[u8],
) -> Option<Vec<Vec<u8>>> {
    let slot = || shared.resolved.lock().unwrap_or_else(|e| e.into_inner());
    slot().take();
    let fed = session.dtls.handle_packet(datagram);
    if let Some(device) = slot().take() {
        *session.device.lock().unwrap_or_else(|e| e.into_inner()) = Some(device);
    }
    fed.ok()?;
    drain(socket, state, peer, session).await
}

pub(super) async fn datagram_secure(
    state: &Ctx,
    link: Link,
    message: Vec<u8>,
    recent: &Arc<Mutex<Dedup>>,
) {
    datagram(state, link, &message, recent).await;
}

/// Sends what the session has to send; returns the application data it received, or `None`
/// when the session failed.
pub(super) async fn drain(
    socket: &UdpSocket,
    state: &Ctx,
    peer: SocketAddr,
    session: &mut DtlsSession,
) -> Option<Vec<Vec<u8>>> {
    let mut out = vec![0u8; 2048];
    let mut received = Vec::new();
    loop {
        match session.dtls.poll_output(&mut out) {
            dimpl::Output::Packet(record) => {
                // One record per datagram: some clients read only the first of several.
                let _ = socket.send_to(record, peer).await;
            }
            dimpl::Output::BufferTooSmall { needed } => out.resize(needed, 0),
            dimpl::Output::Timeout(at) => {
                session.timeout = Some(at);
                break;
            }
            dimpl::Output::Connected => {
                session.established = true;
                let device = *session.device.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(device) = device {
                    state
                        .lwm2m
                        .dtls_peers
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(peer, device);
                }
            }
            dimpl::Output::ApplicationData(data) => received.push(data.to_vec()),
            dimpl::Output::CloseNotify => return None,
            _ => {}
        }
    }
    Some(received)
}
