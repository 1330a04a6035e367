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

    /// Whether the device has a PSK (and so may not use the NoSec listener).
    pub fn has_psk(&self, device: DeviceKey) -> bool {
        self.psks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|(d, _)| *d == device)
    }

    pub(super) fn dtls_device(&self, peer: SocketAddr) -> Option<DeviceKey> {
        self.dtls_peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .copied()
    }
}

/// Looks a PSK identity up, remembering which device it named for the session.
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
    let (tx, mut outgoing) = tokio::sync::mpsc::unbounded_channel::<(SocketAddr, Vec<u8>)>();
    let _ = state.lwm2m.dtls_out.set(tx);
    if let Err(err) = state.lwm2m.load_psks(&state).await {
        tracing::warn!(error = %err.message, "could not load LwM2M PSKs");
    }
    let recent = Arc::new(Mutex::new(Dedup::new(DEDUP_MILLIS, 65_536)));
    let mut sessions: HashMap<SocketAddr, DtlsSession> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let Ok((len, peer)) = received else { continue };
                let datagram = &mut buf[..len];
                normalize_records(datagram);
                if let std::collections::hash_map::Entry::Vacant(vacant) = sessions.entry(peer) {
                    // Only a handshake record starts a session.
                    if datagram.first() != Some(&22) {
                        continue;
                    }
                    let device = Arc::new(Mutex::new(None));
                    let resolver = Arc::new(Resolver {
                        psks: state.lwm2m.psks.clone(),
                        device: device.clone(),
                    });
                    let Ok(config) = dimpl::Config::builder()
                        .with_psk_server(None, resolver)
                        .build()
                    else {
                        continue;
                    };
                    let now = std::time::Instant::now();
                    let mut dtls = dimpl::Dtls::new_12_psk(Arc::new(config), now);
                    // The engine draws its randoms on its first timeout: before any packet.
                    if dtls.handle_timeout(now).is_err() {
                        continue;
                    }
                    vacant.insert(DtlsSession {
                        dtls,
                        device,
                        timeout: None,
                        last_heard: now,
                    });
                }
                let Some(session) = sessions.get_mut(&peer) else { continue };
                session.last_heard = std::time::Instant::now();
                let fed = session.dtls.handle_packet(datagram);
                let plaintext = match fed {
                    Ok(()) => drain(&socket, &state, peer, session).await,
                    Err(_) => None,
                };
                match plaintext {
                    Some(messages) => {
                        let link = Link { peer, secure: true };
                        for message in messages {
                            datagram_secure(&state, link, message, &recent).await;
                        }
                    }
                    None => {
                        // A fatal error (a wrong key among them): the session is gone.
                        sessions.remove(&peer);
                        state.lwm2m.dtls_peers.lock().unwrap_or_else(|e| e.into_inner()).remove(&peer);
                    }
                }
            }
            Some((peer, plaintext)) = outgoing.recv() => {
                let Some(session) = sessions.get_mut(&peer) else { continue };
                if session.dtls.send_application_data(&plaintext).is_err()
                    || drain(&socket, &state, peer, session).await.is_none()
                {
                    sessions.remove(&peer);
                }
            }
            _ = tick.tick() => {
                let now = std::time::Instant::now();
                let mut gone = Vec::new();
                for (peer, session) in sessions.iter_mut() {
                    // Sessions silent for a day are dropped; clients handshake again.
                    if now.duration_since(session.last_heard) > Duration::from_secs(86_400) {
                        gone.push(*peer);
                        continue;
                    }
                    if session.timeout.is_some_and(|t| t <= now)
                        && (session.dtls.handle_timeout(now).is_err()
                            || drain(&socket, &state, *peer, session).await.is_none())
                    {
                        gone.push(*peer);
                    }
                }
                for peer in gone {
                    sessions.remove(&peer);
                }
            }
        }
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
