//! The built-in MQTT endpoint for device protocols (ThingsBoard's topics today). It terminates
//! device connections itself, as ThingsBoard's MQTT transport does; it is not a general broker:
//! devices talk to the server, never to each other.
//!
//! One task per connection; memory per connection is its read buffer and a small queue of
//! pushes. Firmware chunks are streamed from the blob store into the socket, never held whole.

pub mod codec;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use updraft_core::{ArtifactKind, DeviceKey};
use updraft_store::Device;

use self::codec::{CodecError, Inbound, Outbound, Version};
use crate::state::AppState;
use crate::thingsboard;

/// Largest packet a device may send (a telemetry message, not a firmware: those only go out).
pub const MAX_INBOUND_PACKET: usize = 256 * 1024;

/// One connection's id and its queue of pushes.
type Connection = (u64, mpsc::Sender<Outbound>);

/// Connected devices, so that the server can push to them (attribute changes).
#[derive(Default)]
pub struct Registry {
    // Several connections of one device are all told.
    devices: Mutex<HashMap<DeviceKey, Vec<Connection>>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Registry {
    /// Registers a connection of `device`; its pushes arrive on `sender`.
    pub fn add(&self, device: DeviceKey, sender: mpsc::Sender<Outbound>) -> u64 {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut devices) = self.devices.lock() {
            devices.entry(device).or_default().push((id, sender));
        }
        id
    }

    fn remove(&self, device: DeviceKey, id: u64) {
        if let Ok(mut devices) = self.devices.lock()
            && let Some(senders) = devices.get_mut(&device)
        {
            senders.retain(|(other, _)| *other != id);
            if senders.is_empty() {
                devices.remove(&device);
            }
        }
    }

    /// Connected devices, for the notifier.
    pub fn connected(&self) -> Vec<DeviceKey> {
        self.devices
            .lock()
            .map(|d| d.keys().copied().collect())
            .unwrap_or_default()
    }

    pub fn count(&self) -> usize {
        self.devices
            .lock()
            .map(|d| d.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    /// Queues `packet` for every connection of `device`; a full queue drops it (the device reads
    /// attributes again when it reconnects or asks).
    pub fn push(&self, device: DeviceKey, packet: &Outbound) -> usize {
        let senders: Vec<mpsc::Sender<Outbound>> = self
            .devices
            .lock()
            .map(|d| {
                d.get(&device)
                    .map(|s| s.iter().map(|(_, tx)| tx.clone()).collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        senders
            .iter()
            .filter(|tx| tx.try_send(packet.clone()).is_ok())
            .count()
    }
}

/// A device's byte stream: plain TCP or TLS.
pub trait DeviceStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> DeviceStream for T {}

/// Accepts device connections until the listener fails.
pub async fn serve(listener: TcpListener, state: AppState) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let state = state.clone();
                tokio::spawn(async move {
                    if let Err(err) = connection(Box::new(stream), None, &state).await {
                        tracing::debug!(error = %err, "mqtt connection ended");
                    }
                });
            }
            Err(err) => {
                tracing::warn!(error = %err, "mqtt accept failed");
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Accepts device connections over TLS until the listener fails. A client certificate, if the
/// device presents one, is its credential: it must be registered to a device.
pub async fn serve_tls(listener: TcpListener, config: Arc<rustls::ServerConfig>, state: AppState) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let state = state.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // The handshake gets as long as a CONNECT does.
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await;
                    let stream = match handshake {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(err)) => {
                            tracing::debug!(error = %err, "mqtt tls handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let fingerprint = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|cert| crate::tls::fingerprint(cert));
                    if let Err(err) = connection(Box::new(stream), fingerprint, &state).await {
                        tracing::debug!(error = %err, "mqtt connection ended");
                    }
                });
            }
            Err(err) => {
                tracing::warn!(error = %err, "mqtt accept failed");
                tokio::task::yield_now().await;
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("{0}")]
    Protocol(&'static str),
}

struct Session {
    /// Connected with Drogue's credentials: speaks DFU on `dfu`.
    drogue: bool,
    /// Connected with a gateway's credential: may speak DFU on `dfu/{device}` for the other
    /// devices of its tenant.
    gateway: bool,
    version: Version,
    device: Device,
    stream: Box<dyn DeviceStream>,
    out: BytesMut,
    subscriptions: Vec<String>,
}

impl Session {
    /// Writes several packets with one write.
    async fn send_all(&mut self, packets: &[Outbound]) -> Result<(), ConnectionError> {
        self.out.clear();
        for packet in packets {
            codec::write(self.version, packet, &mut self.out)?;
        }
        self.stream.write_all(&self.out).await?;
        self.stream.flush().await?;
        Ok(())
    }

    async fn send(&mut self, packet: &Outbound) -> Result<(), ConnectionError> {
        self.out.clear();
        codec::write(self.version, packet, &mut self.out)?;
        self.stream.write_all(&self.out).await?;
        self.stream.flush().await?;
        Ok(())
    }

    fn subscribed(&self, topic: &str) -> bool {
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

async fn connection(
    mut stream: Box<dyn DeviceStream>,
    client_cert: Option<String>,
    state: &AppState,
) -> Result<(), ConnectionError> {
    let mut buf = BytesMut::with_capacity(1024);
    // CONNECT within ten seconds, or the connection goes.
    let version = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(version) = codec::connect_version(&buf)? {
                return Ok::<_, ConnectionError>(version);
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(ConnectionError::Protocol("closed before CONNECT"));
            }
        }
    })
    .await
    .map_err(|_| ConnectionError::Protocol("no CONNECT in time"))??;
    let (username, password, keep_alive) = loop {
        match codec::read(version, &mut buf, MAX_INBOUND_PACKET)? {
            Some(Inbound::Connect {
                username,
                password,
                keep_alive,
            }) => break (username, password, keep_alive),
            Some(_) => return Err(ConnectionError::Protocol("first packet is not CONNECT")),
            None => {
                if stream.read_buf(&mut buf).await? == 0 {
                    return Err(ConnectionError::Protocol("closed in CONNECT"));
                }
            }
        }
    };
    // ThingsBoard devices put their token in the user name; Drogue devices send
    // `{device}@{tenant}` and the token as the password.
    // AWS's SDKs append `?SDK=…&Platform=…` metrics to the user name; AWS IoT ignores them.
    // (Only beside a password: a ThingsBoard token alone in the user name is taken whole.)
    let username = match (username, password.as_deref()) {
        (Some(user), Some(token)) if !token.is_empty() => match user.split_once('?') {
            Some((user, _)) => Some(user.to_owned()),
            None => Some(user),
        },
        (user, _) => user,
    };
    let (device, drogue) = match (client_cert, username.as_deref(), password.as_deref()) {
        // A client certificate is the credential, whatever else the CONNECT says (AWS IoT): an
        // unregistered one is refused.
        (Some(fingerprint), _, _) => (
            state
                .store
                .device_by_credential(updraft_store::CredentialKind::Certificate, &fingerprint)
                .await
                .ok()
                .flatten(),
            true,
        ),
        (None, Some(user), Some(token)) if !token.is_empty() => (
            crate::dfu::authenticate(state, user, token).await.ok(),
            true,
        ),
        (None, Some(token), _) => (
            thingsboard::device_for_token(state, token).await.ok(),
            false,
        ),
        _ => (None, false),
    };
    let mut out = BytesMut::new();
    let Some(device) = device else {
        codec::write(version, &Outbound::ConnAck { accepted: false }, &mut out)?;
        stream.write_all(&out).await?;
        stream.flush().await?;
        return Err(ConnectionError::Protocol("not authorized"));
    };
    let gateway = match (drogue, password.as_deref()) {
        (true, Some(token)) => state
            .store
            .gateway_by_credential(
                updraft_store::CredentialKind::AccessToken,
                &crate::secret::hash(token),
            )
            .await
            .ok()
            .flatten()
            .is_some_and(|g| g.key == device.key),
        _ => false,
    };
    codec::write(version, &Outbound::ConnAck { accepted: true }, &mut out)?;
    stream.write_all(&out).await?;
    stream.flush().await?;
    let _ = state.store.touch_device(device.key).await;

    let (tx, mut rx) = mpsc::channel(16);
    let registration = state.mqtt.add(device.key, tx);
    let mut session = Session {
        drogue,
        gateway,
        version,
        device,
        stream,
        out,
        subscriptions: Vec::new(),
    };
    // MQTT: the server may close a connection silent for one and a half keep-alive periods.
    let idle_limit = match keep_alive {
        0 => None,
        secs => Some(Duration::from_millis(u64::from(secs) * 1500)),
    };
    let result = run(&mut session, &mut buf, &mut rx, state, idle_limit).await;
    state.mqtt.remove(session.device.key, registration);
    result
}

async fn run(
    session: &mut Session,
    buf: &mut BytesMut,
    rx: &mut mpsc::Receiver<Outbound>,
    state: &AppState,
    idle_limit: Option<Duration>,
) -> Result<(), ConnectionError> {
    loop {
        while let Some(packet) = codec::read(session.version, buf, MAX_INBOUND_PACKET)? {
            if !handle(session, packet, state).await? {
                return Ok(());
            }
        }
        let idle = async {
            match idle_limit {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = session.stream.read_buf(buf) => {
                if read? == 0 {
                    return Ok(());
                }
            }
            Some(mut packet) = rx.recv() => {
                // Pushes for AWS things name the thing as `{thing}`.
                if let Outbound::Publish { topic, .. } = &mut packet
                    && topic.contains("{thing}")
                {
                    *topic = topic.replace("{thing}", session.device.id.as_str());
                }
                let deliver = match &packet {
                    Outbound::Publish { topic, .. } => session.subscribed(topic),
                    _ => true,
                };
                if deliver {
                    session.send(&packet).await?;
                }
            }
            () = idle => return Err(ConnectionError::Protocol("keep-alive expired")),
        }
    }
}

/// Handles one packet; false ends the connection.
async fn handle(
    session: &mut Session,
    packet: Inbound,
    state: &AppState,
) -> Result<bool, ConnectionError> {
    match packet {
        Inbound::Connect { .. } => return Err(ConnectionError::Protocol("a second CONNECT")),
        Inbound::PingReq => session.send(&Outbound::PingResp).await?,
        Inbound::Disconnect => return Ok(false),
        Inbound::Subscribe { pkid, filters } => {
            // AWS IoT closes the connection of a thing that reaches for another's topics.
            if filters
                .iter()
                .any(|(filter, _)| foreign_thing(filter, &session.device))
            {
                return Err(ConnectionError::Protocol(
                    "subscribed to another thing's topics",
                ));
            }
            let granted = filters.iter().map(|(_, qos)| (*qos).min(1)).collect();
            session
                .subscriptions
                .extend(filters.into_iter().map(|(filter, _)| filter));
            session.send(&Outbound::SubAck { pkid, granted }).await?;
        }
        Inbound::Unsubscribe { pkid, count } => {
            session.send(&Outbound::UnsubAck { pkid, count }).await?
        }
        Inbound::Publish {
            topic,
            payload,
            qos,
            pkid,
        } => {
            if foreign_thing(&topic, &session.device) {
                return Err(ConnectionError::Protocol(
                    "published to another thing's topic",
                ));
            }
            if let Err(err) = publish(session, &topic, payload, state).await {
                // A bad message is the device's problem: log it, keep the connection.
                tracing::debug!(device = %session.device.id, topic, error = %err.message, "refused device message");
            }
            // Acknowledged once handled, so a device that waits for its PUBACK knows the server
            // has applied the message.
            if qos > 0 {
                session.send(&Outbound::PubAck { pkid }).await?;
            }
        }
        Inbound::Ignored => {}
    }
    Ok(true)
}

/// Whether a topic or filter reaches under `$aws/things/` beyond the device's own thing.
fn foreign_thing(topic: &str, device: &Device) -> bool {
    crate::aws::thing_of(topic).is_some_and(|(thing, _)| thing != device.id.as_str())
}

/// A device's PUBLISH, by topic.
async fn publish(
    session: &mut Session,
    topic: &str,
    payload: Bytes,
    state: &AppState,
) -> Result<(), crate::error::ApiError> {
    let bad = |what: &str| crate::error::ApiError::bad_request("invalid_request", what.to_owned());
    let device = session.device.clone();
    let json = || serde_json::from_slice::<Value>(&payload).map_err(|_| bad("payload is not JSON"));
    let dfu_for = match topic.strip_prefix("dfu") {
        Some("") => Some(None),
        Some(rest) => rest.strip_prefix('/').map(Some),
        None => None,
    };
    if let (true, Some(other)) = (session.drogue, dfu_for) {
        let target = match other {
            None => device.clone(),
            Some(_) if !session.gateway => {
                return Err(crate::error::ApiError::forbidden(format!(
                    "{} may not speak for other devices: its credential is not a gateway's",
                    device.id
                )));
            }
            Some(other) => {
                let unknown = || {
                    crate::error::ApiError::not_found(
                        "device_not_found",
                        format!("no device {other:?} in the gateway's tenant"),
                    )
                };
                let id = updraft_core::DeviceId::parse(other).map_err(|_| unknown())?;
                state
                    .store
                    .device(device.tenant, &id)
                    .await?
                    .ok_or_else(unknown)?
            }
        };
        let encoding = crate::dfu::wire::Encoding::of(None, &payload);
        let status = crate::dfu::wire::decode(encoding, &payload)
            .map_err(|e| crate::error::ApiError::bad_request("invalid_status", e.0))?;
        let command = crate::dfu::answer(state, &target, &status).await?;
        // Delivered whatever the device subscribed (`command/inbox//#` usually); a gateway's
        // answers name the device it spoke for.
        let topic = match other {
            None => "command/inbox//dfu".to_owned(),
            Some(_) => format!("command/inbox/{}/dfu", target.id),
        };
        let response = Outbound::Publish {
            topic,
            payload: Bytes::from(crate::dfu::wire::encode(encoding, &command)),
        };
        return session
            .send(&response)
            .await
            .map_err(|e| crate::error::ApiError::internal(e.to_string()));
    }
    if let Some((_, rest)) = crate::aws::thing_of(topic) {
        // Answers go to the requester whether or not it subscribed, as AWS IoT does.
        let mut packets = crate::aws::handle(state, &device, rest, &payload).await;
        // Notifications, unlike replies, only reach a device that subscribed to them.
        packets.retain(|packet| match packet {
            Outbound::Publish { topic, .. } => {
                !(topic.ends_with("/jobs/notify-next") || topic.ends_with("/jobs/notify"))
                    || session.subscribed(topic)
            }
            _ => true,
        });
        session
            .send_all(&packets)
            .await
            .map_err(|e| crate::error::ApiError::internal(e.to_string()))?;
        return Ok(());
    }
    if topic == "v1/devices/me/telemetry" {
        return thingsboard::telemetry(state, &device, &json()?).await;
    }
    if topic == "v1/devices/me/attributes" {
        let Value::Object(values) = json()? else {
            return Err(bad("attributes are a JSON object"));
        };
        let data = crate::api::wire::attribute_strings(values);
        return state
            .store
            .update_attributes(device.key, updraft_store::AttributeMode::Merge, &data)
            .await
            .map_err(Into::into);
    }
    if let Some(id) = topic.strip_prefix("v1/devices/me/attributes/request/") {
        let request = json().unwrap_or(Value::Null);
        let shared_keys = request.get("sharedKeys").and_then(Value::as_str);
        let client_keys = request.get("clientKeys").and_then(Value::as_str);
        let mut answer = serde_json::Map::new();
        let shared = thingsboard::shared_attributes(state, &device).await?;
        if shared_keys.is_some() || client_keys.is_none() {
            answer.insert(
                "shared".into(),
                Value::Object(thingsboard::select(shared, shared_keys)),
            );
        }
        if client_keys.is_some() {
            let fresh = state
                .store
                .device(device.tenant, &device.id)
                .await?
                .unwrap_or(device);
            answer.insert(
                "client".into(),
                Value::Object(thingsboard::select(
                    thingsboard::client_attributes(&fresh),
                    client_keys,
                )),
            );
        }
        let response = Outbound::Publish {
            topic: format!("v1/devices/me/attributes/response/{id}"),
            payload: Bytes::from(Value::Object(answer).to_string()),
        };
        return session
            .send(&response)
            .await
            .map_err(|e| crate::error::ApiError::internal(e.to_string()));
    }
    if let Some(id) = topic.strip_prefix("v1/devices/me/rpc/request/") {
        let request = json()?;
        let reply = match request.get("method").and_then(Value::as_str) {
            Some("getSessionLimits") => json!({
                "maxPayloadSize": MAX_INBOUND_PACKET,
                "maxInflightMessages": 100,
                "rateLimits": {"messages": "", "telemetryMessages": "", "telemetryDataPoints": ""},
            }),
            Some(other) => json!({"error": format!("unsupported method {other:?}")}),
            None => json!({"error": "no method"}),
        };
        let response = Outbound::Publish {
            topic: format!("v1/devices/me/rpc/response/{id}"),
            payload: Bytes::from(reply.to_string()),
        };
        return session
            .send(&response)
            .await
            .map_err(|e| crate::error::ApiError::internal(e.to_string()));
    }
    for (prefix, kind) in [
        ("v2/fw/request/", ArtifactKind::Firmware),
        ("v2/sw/request/", ArtifactKind::Software),
    ] {
        if let Some(rest) = topic.strip_prefix(prefix) {
            let (request_id, chunk) = rest
                .split_once("/chunk/")
                .ok_or_else(|| bad("expected {requestId}/chunk/{index}"))?;
            let index: u64 = chunk
                .parse()
                .map_err(|_| bad("the chunk index is not a number"))?;
            let text = std::str::from_utf8(&payload)
                .map_err(|_| bad("the chunk size is not text"))?
                .trim();
            let size: u64 = if text.is_empty() {
                0
            } else {
                text.parse()
                    .map_err(|_| bad("the chunk size is not a number"))?
            };
            let response_topic = format!(
                "v2/{}/response/{request_id}/chunk/{index}",
                thingsboard::prefix(kind)
            );
            // ThingsBoard delivers chunks whatever the device subscribed (`v2/fw/response/+`
            // does not match these topics), and so do we.
            return send_chunk(session, state, kind, size, index, &response_topic).await;
        }
    }
    Err(bad("unknown topic"))
}

async fn send_chunk(
    session: &mut Session,
    state: &AppState,
    kind: ArtifactKind,
    size: u64,
    index: u64,
    topic: &str,
) -> Result<(), crate::error::ApiError> {
    let internal = |e: std::io::Error| crate::error::ApiError::internal(e);
    let Some((_, _, artifact)) = thingsboard::desired(state, &session.device)
        .await?
        .into_iter()
        .find(|(k, _, _)| *k == kind)
    else {
        let empty = Outbound::Publish {
            topic: topic.to_owned(),
            payload: Bytes::new(),
        };
        return session
            .send(&empty)
            .await
            .map_err(|e| crate::error::ApiError::internal(e.to_string()));
    };
    let (offset, len) = if size == 0 {
        (0, artifact.size)
    } else {
        (index.saturating_mul(size), size)
    };
    let len = if offset >= artifact.size {
        0
    } else {
        len.min(artifact.size - offset)
    };
    let header = codec::publish_header(session.version, topic, len);
    session.stream.write_all(&header).await.map_err(internal)?;
    if len > 0 {
        let mut reader = state
            .blobs
            .open(&artifact.checksums.sha256, offset, Some(len))
            .await
            .map_err(internal)?;
        tokio::io::copy(&mut reader, &mut session.stream)
            .await
            .map_err(internal)?;
    }
    session.stream.flush().await.map_err(internal)?;
    Ok(())
}

/// The notification queue: moves QUEUED actions of connected devices (MQTT, or observing over
/// CoAP) to INITIATED and pushes their shared attributes, at most `per_second` a second, woken at
/// once when an assignment changes. Devices that are not connected learn of their update when
/// they next ask.
pub async fn notifier(state: AppState, per_second: u32, wake: Arc<tokio::sync::Notify>) {
    let mut queue = NotifyQueue::default();
    loop {
        let notified = queue.round(&state, u64::from(per_second.max(1))).await;
        if notified > 0 {
            tracing::debug!(notified, "pushed new firmware attributes");
        }
        // A second between rounds keeps the rate; an assignment wakes the queue early.
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = wake.notified() => {}
        }
    }
}

/// Where the notification queue stands: it walks the QUEUED actions in key order.
#[derive(Debug)]
pub struct NotifyQueue {
    after: updraft_core::ActionKey,
}

impl Default for NotifyQueue {
    fn default() -> Self {
        Self {
            after: updraft_core::ActionKey(0),
        }
    }
}

impl NotifyQueue {
    /// One round: tells up to `budget` connected devices with a QUEUED action of their new
    /// artifact (its `fw_*` or `sw_*` attributes) and marks those actions INITIATED in one
    /// transaction; returns how many. Unconnected devices keep their place; the walk starts over
    /// when it reaches the end.
    pub async fn round(&mut self, state: &AppState, budget: u64) -> u64 {
        match self.try_round(state, budget).await {
            Ok(told) => told,
            Err(err) => {
                tracing::warn!(error = %err.message, "notification round failed");
                0
            }
        }
    }

    async fn try_round(
        &mut self,
        state: &AppState,
        budget: u64,
    ) -> Result<u64, crate::error::ApiError> {
        let mut connected: std::collections::HashSet<DeviceKey> =
            state.mqtt.connected().into_iter().collect();
        connected.extend(state.coap.devices());
        let registered: std::collections::HashSet<DeviceKey> =
            state.lwm2m.devices().into_iter().collect();
        connected.extend(registered.iter().copied());
        let mut chosen = Vec::new();
        while (chosen.len() as u64) < budget {
            let page = state.store.queued_actions(self.after, 1000).await?;
            let Some(last) = page.last().map(|q| q.action) else {
                self.after = updraft_core::ActionKey(0);
                break;
            };
            for queued in page {
                if chosen.len() as u64 >= budget {
                    break;
                }
                self.after = queued.action;
                if connected.contains(&queued.device) {
                    chosen.push(queued);
                }
            }
            if chosen.len() as u64 >= budget {
                break;
            }
            self.after = last;
        }
        if chosen.is_empty() {
            return Ok(0);
        }
        let keys: Vec<updraft_core::ActionKey> = chosen.iter().map(|q| q.action).collect();
        let initiated: std::collections::HashSet<updraft_core::ActionKey> = state
            .store
            .initiate(&keys, thingsboard::SOURCE)
            .await?
            .into_iter()
            .collect();
        let mut artifacts: HashMap<updraft_core::ArtifactKey, updraft_store::Artifact> =
            HashMap::new();
        // Each profile's wishes for AWS job documents.
        let mut documents: HashMap<updraft_core::ProfileKey, crate::aws::DocumentOptions> =
            HashMap::new();
        let mut listed = std::collections::HashSet::new();
        let plain = crate::aws::DocumentOptions::default();
        let mut told = 0;
        for queued in chosen.iter().filter(|q| initiated.contains(&q.action)) {
            if queued.profile.is_some() && listed.insert(queued.tenant) {
                for p in state.store.list_profiles(queued.tenant).await? {
                    documents.insert(p.key, crate::aws::DocumentOptions::of(&p));
                }
            }
            let options = queued
                .profile
                .and_then(|p| documents.get(&p))
                .unwrap_or(&plain);
            let Some(key) = queued.artifact else { continue };
            if !artifacts.contains_key(&key)
                && let Some(artifact) = state.store.artifact(queued.tenant, key).await?
            {
                artifacts.insert(key, artifact);
            }
            let Some(artifact) = artifacts.get(&key) else {
                continue;
            };
            let p = thingsboard::prefix(queued.kind);
            let attributes = json!({
                format!("{p}_title"): artifact.title,
                format!("{p}_version"): artifact.version,
                format!("{p}_size"): artifact.size,
                format!("{p}_checksum"): artifact.checksums.sha256,
                format!("{p}_checksum_algorithm"): "SHA256",
            });
            let push = Outbound::Publish {
                topic: "v1/devices/me/attributes".into(),
                payload: Bytes::from(attributes.to_string()),
            };
            state.mqtt.push(queued.device, &push);
            state.mqtt.push(
                queued.device,
                &crate::aws::notify(queued.action, crate::server::now_millis()),
            );
            state.mqtt.push(
                queued.device,
                &crate::aws::notify_next(
                    state,
                    queued.action,
                    artifact,
                    options,
                    crate::server::now_millis(),
                ),
            );
            state.coap.notify(queued.device, &attributes);
            if registered.contains(&queued.device) {
                state.lwm2m.kick(state, queued.device);
            }
            told += 1;
        }
        Ok(told)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_as_mqtt_says() {
        for (filter, topic, expected) in [
            ("v1/devices/me/attributes", "v1/devices/me/attributes", true),
            (
                "v1/devices/me/attributes/response/+",
                "v1/devices/me/attributes/response/7",
                true,
            ),
            ("v2/fw/response/+", "v2/fw/response/1/chunk/0", false),
            ("v2/fw/response/#", "v2/fw/response/1/chunk/0", true),
            ("#", "anything/at/all", true),
            ("a/+/c", "a/b", false),
        ] {
            assert_eq!(
                topic_matches(filter, topic),
                expected,
                "{filter} vs {topic}"
            );
        }
    }
}
