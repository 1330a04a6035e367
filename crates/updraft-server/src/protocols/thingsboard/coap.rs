//! ThingsBoard's CoAP transport (RFC 7252 over UDP): the same device API as over HTTP under
//! `coap://host/api/v1/{token}/…`, firmware in blocks (RFC 7959 Block2) read straight from the
//! blob store, and Observe on the attributes, notified by the notification queue.
//!
//! Confirmable requests are answered in a piggybacked ACK; a repeated request (same peer and
//! message ID) gets the cached answer without being handled twice. Requests are handled off the
//! receive loop (at most [`MAX_IN_FLIGHT`] at once; beyond that a request is dropped and its
//! client retransmits), error answers are never larger than the request (no reflection), and an
//! observation lasts [`OBSERVER_TTL_MILLIS`] unless the client registers again (as RFC 7641
//! clients do when a notification's Max-Age runs out), at most [`MAX_OBSERVERS_PER_DEVICE`] per
//! device and [`MAX_OBSERVERS`] in all.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use coap_lite::{
    CoapOption, ContentFormat, MessageClass, MessageType, Packet, RequestType, ResponseType,
};
use serde_json::Value;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use updraft_core::{ArtifactKind, DeviceKey};

use crate::kernel::clock::now_millis;
use crate::kernel::error::{ApiError, ApiResult};
use crate::kernel::state::AppState;
use crate::protocols::thingsboard;
use crate::transport::coap::{Dedup, Seen, block2, encode_uint, strings, uint};

/// How long a confirmable request's answer is kept for its retransmissions (EXCHANGE_LIFETIME).
const DEDUP_MILLIS: i64 = 247_000;

/// Requests handled at once.
const MAX_IN_FLIGHT: usize = 256;
/// How long an observation lasts without the client registering it again.
const OBSERVER_TTL_MILLIS: i64 = 60 * 60 * 1000;
/// Observations of one device (the newest stay) and of all devices.
const MAX_OBSERVERS_PER_DEVICE: usize = 4;
const MAX_OBSERVERS: usize = 100_000;

/// Who observes: the peer, the token of its Observe request, and until when.
type Observer = (SocketAddr, Vec<u8>, i64);

/// Devices observing their attributes, and the way out to them.
#[derive(Default)]
pub struct Observers {
    by_device: Mutex<HashMap<DeviceKey, Vec<Observer>>>,
    /// Notifications on their way out; when full, a notification is dropped (the device reads
    /// its attributes again when it next asks).
    out: OnceLock<mpsc::Sender<(SocketAddr, Vec<u8>)>>,
    sequence: AtomicU32,
    message_id: AtomicU16,
}

impl Observers {
    /// Registers (or renews) an observation; false when the server holds as many as it may.
    fn add(&self, device: DeviceKey, peer: SocketAddr, token: Vec<u8>) -> bool {
        let now = now_millis();
        let Ok(mut map) = self.by_device.lock() else {
            return false;
        };
        let total: usize = map.values().map(Vec::len).sum();
        let list = map.entry(device).or_default();
        let before = list.len();
        list.retain(|(p, t, until)| !(*p == peer && *t == token) && *until > now);
        if total - (before - list.len()) >= MAX_OBSERVERS {
            return false;
        }
        list.push((peer, token, now + OBSERVER_TTL_MILLIS));
        let excess = list.len().saturating_sub(MAX_OBSERVERS_PER_DEVICE);
        list.drain(..excess);
        true
    }

    /// Forgets observations whose time ran out.
    fn expire(&self) {
        let now = now_millis();
        if let Ok(mut map) = self.by_device.lock() {
            map.retain(|_, list| {
                list.retain(|(_, _, until)| *until > now);
                !list.is_empty()
            });
        }
    }

    fn remove(&self, device: DeviceKey, peer: SocketAddr, token: &[u8]) {
        if let Ok(mut map) = self.by_device.lock()
            && let Some(list) = map.get_mut(&device)
        {
            list.retain(|(p, t, _)| !(*p == peer && t == token));
        }
    }

    /// Whether the device has a live observer.
    pub fn observed(&self, device: DeviceKey) -> bool {
        let now = now_millis();
        self.by_device
            .lock()
            .map(|m| {
                m.get(&device)
                    .is_some_and(|list| list.iter().any(|(_, _, until)| *until > now))
            })
            .unwrap_or(false)
    }

    /// Observations held, over all devices.
    pub fn count(&self) -> usize {
        self.by_device
            .lock()
            .map(|m| m.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    /// Devices with at least one observer.
    pub fn devices(&self) -> Vec<DeviceKey> {
        self.by_device
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(_, list)| !list.is_empty())
                    .map(|(k, _)| *k)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn next_sequence(&self) -> u32 {
        self.sequence.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff
    }

    fn next_message_id(&self) -> u16 {
        self.message_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends `shared` (the `{"shared":…}`-less attribute object) to every observer of `device`.
    pub fn notify(&self, device: DeviceKey, shared: &Value) {
        let Some(out) = self.out.get() else { return };
        let observers = self
            .by_device
            .lock()
            .map(|m| m.get(&device).cloned().unwrap_or_default())
            .unwrap_or_default();
        let now = now_millis();
        for (peer, token, until) in observers {
            if until <= now {
                continue;
            }
            let mut packet = Packet::new();
            packet.header.set_type(MessageType::NonConfirmable);
            packet.header.code = MessageClass::Response(ResponseType::Content);
            packet.header.message_id = self.next_message_id();
            packet.set_token(token);
            packet.set_observe_value(self.next_sequence());
            packet.set_content_format(ContentFormat::ApplicationJSON);
            packet.payload = shared.to_string().into_bytes();
            if let Ok(bytes) = packet.to_bytes() {
                let _ = out.try_send((peer, bytes));
            }
        }
    }
}

/// The CoAP face's state: the server's, and its observers.
#[derive(Clone)]
pub struct Ctx {
    pub app: AppState,
    pub coap: Arc<Observers>,
}

impl std::ops::Deref for Ctx {
    type Target = AppState;
    fn deref(&self) -> &AppState {
        &self.app
    }
}

/// Answers requests on `socket` until it fails.
pub async fn serve(socket: UdpSocket, state: Ctx) {
    let socket = std::sync::Arc::new(socket);
    let (tx, mut rx) = mpsc::channel::<(SocketAddr, Vec<u8>)>(4096);
    let _ = state.coap.out.set(tx);
    let sender = socket.clone();
    tokio::spawn(async move {
        while let Some((peer, bytes)) = rx.recv().await {
            let _ = sender.send_to(&bytes, peer).await;
        }
    });
    let recent = Arc::new(Mutex::new(Dedup::new(DEDUP_MILLIS, 65_536)));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut expired_at = now_millis();
    let mut buf = vec![0u8; 2048];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(err) => {
                tracing::warn!(error = %err, "coap receive failed");
                continue;
            }
        };
        if now_millis() - expired_at > 60_000 {
            state.coap.expire();
            expired_at = now_millis();
        }
        let Ok(request) = Packet::from_bytes(&buf[..len]) else {
            continue;
        };
        let key = (peer, request.header.message_id);
        let confirmable = request.header.get_type() == MessageType::Confirmable;
        if confirmable {
            let seen = recent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .begin(key, now_millis());
            match seen {
                Seen::New => {}
                // Still being answered: the answer will go out.
                Seen::InProgress => continue,
                Seen::Answered(cached) => {
                    let _ = socket.send_to(&cached, peer).await;
                    continue;
                }
            }
        }
        // The store is awaited off the loop; when too many requests wait already, this one is
        // dropped (forgotten, so that its retransmission is handled).
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            if confirmable {
                recent.lock().unwrap_or_else(|e| e.into_inner()).forget(key);
            }
            continue;
        };
        let (state, socket, recent) = (state.clone(), socket.clone(), recent.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let Some(response) = respond(&state, peer, &request, len).await else {
                return;
            };
            let Ok(bytes) = response.to_bytes() else {
                return;
            };
            let _ = socket.send_to(&bytes, peer).await;
            if confirmable {
                recent
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .answered(key, bytes);
            }
        });
    }
}

fn code_of(err: &ApiError) -> ResponseType {
    match err.status.as_u16() {
        400 | 422 => ResponseType::BadRequest,
        401 => ResponseType::Unauthorized,
        403 => ResponseType::Forbidden,
        404 => ResponseType::NotFound,
        405 => ResponseType::MethodNotAllowed,
        413 => ResponseType::RequestEntityTooLarge,
        _ => ResponseType::InternalServerError,
    }
}

/// The answer to one request of `request_len` bytes (`None` for messages that need none).
async fn respond(
    state: &Ctx,
    peer: SocketAddr,
    request: &Packet,
    request_len: usize,
) -> Option<Packet> {
    let MessageClass::Request(method) = request.header.code else {
        return None;
    };
    let mut response = Packet::new();
    match request.header.get_type() {
        MessageType::Confirmable => {
            response.header.set_type(MessageType::Acknowledgement);
            response.header.message_id = request.header.message_id;
        }
        _ => {
            response.header.set_type(MessageType::NonConfirmable);
            response.header.message_id = state.coap.next_message_id();
        }
    }
    response.set_token(request.get_token().to_vec());
    match handle(state, peer, request, method, &mut response).await {
        Ok(code) => response.header.code = MessageClass::Response(code),
        Err(err) => {
            response.header.code = MessageClass::Response(code_of(&err));
            response.clear_all_options();
            // The stable code as a diagnostic payload, only when the answer stays no larger
            // than the request: an error answer must not amplify a spoofed request.
            let bare = 4 + request.get_token().len();
            if bare + 1 + err.code.len() <= request_len {
                response.payload = err.code.as_bytes().to_vec();
            }
        }
    }
    Some(response)
}

async fn handle(
    state: &Ctx,
    peer: SocketAddr,
    request: &Packet,
    method: RequestType,
    response: &mut Packet,
) -> ApiResult<ResponseType> {
    let path = strings(request, CoapOption::UriPath);
    let query: HashMap<String, String> = strings(request, CoapOption::UriQuery)
        .into_iter()
        .filter_map(|q| q.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let segments: Vec<&str> = path.iter().map(String::as_str).collect();
    let (token, resource) = match segments.as_slice() {
        ["api", "v1", token, resource] => (*token, *resource),
        _ => {
            return Err(ApiError::not_found(
                "not_found",
                "use /api/v1/{token}/attributes, telemetry, firmware or software",
            ));
        }
    };
    let device = thingsboard::device_for_token(state, token).await?;
    let json = || {
        serde_json::from_slice::<Value>(&request.payload)
            .map_err(|_| ApiError::bad_request("invalid_json", "the payload is not JSON"))
    };
    match (method, resource) {
        (RequestType::Get, "attributes") => {
            let shared = thingsboard::shared_attributes(state, &device).await?;
            let mut body = serde_json::Map::new();
            let client_keys = query.get("clientKeys");
            if query.contains_key("sharedKeys") || client_keys.is_none() {
                body.insert(
                    "shared".into(),
                    Value::Object(thingsboard::select(
                        shared,
                        query.get("sharedKeys").map(String::as_str),
                    )),
                );
            }
            if let Some(keys) = client_keys {
                body.insert(
                    "client".into(),
                    Value::Object(thingsboard::select(
                        thingsboard::client_attributes(&device),
                        Some(keys),
                    )),
                );
            }
            match request
                .get_first_option(CoapOption::Observe)
                .map(|v| uint(v))
            {
                // Registered, or answered without the Observe option (a plain GET) when the
                // server holds as many observations as it may.
                Some(0)
                    if state
                        .coap
                        .add(device.key, peer, request.get_token().to_vec()) =>
                {
                    response.set_observe_value(state.coap.next_sequence());
                }
                Some(1) => state.coap.remove(device.key, peer, request.get_token()),
                _ => {}
            }
            response.set_content_format(ContentFormat::ApplicationJSON);
            response.payload = Value::Object(body).to_string().into_bytes();
            Ok(ResponseType::Content)
        }
        (RequestType::Post, "telemetry") => {
            state.store.touch_device(device.key).await?;
            thingsboard::telemetry(state, &device, &json()?).await?;
            Ok(ResponseType::Changed)
        }
        (RequestType::Post, "attributes") => {
            let Value::Object(values) = json()? else {
                return Err(ApiError::bad_request(
                    "invalid_json",
                    "attributes are a JSON object",
                ));
            };
            let data = crate::kernel::views::attribute_strings(values);
            state
                .store
                .update_attributes(device.key, updraft_store::AttributeMode::Merge, &data)
                .await?;
            Ok(ResponseType::Changed)
        }
        (RequestType::Get, "firmware" | "software") => {
            let kind = if resource == "firmware" {
                ArtifactKind::Firmware
            } else {
                ArtifactKind::Software
            };
            firmware_block(state, &device, kind, &query, request, response).await
        }
        _ => Err(ApiError::new(
            axum::http::StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "no such method on this resource",
        )),
    }
}

/// One Block2 block of the chunk the query selects (`size`/`chunk`, or the whole artifact).
async fn firmware_block(
    state: &Ctx,
    device: &updraft_store::Device,
    kind: ArtifactKind,
    query: &HashMap<String, String>,
    request: &Packet,
    response: &mut Packet,
) -> ApiResult<ResponseType> {
    let number = |key: &str| -> ApiResult<u64> {
        match query.get(key) {
            Some(text) => text.parse().map_err(|_| {
                ApiError::bad_request("invalid_request", format!("{key} is not a number"))
            }),
            None => Ok(0),
        }
    };
    let (size, index) = (number("size")?, number("chunk")?);
    let wanted = thingsboard::served(state, device, kind).await?.filter(|a| {
        match (query.get("title"), query.get("version")) {
            (Some(title), Some(version)) => a.title == *title && a.version == *version,
            _ => true,
        }
    });
    let Some(artifact) = wanted else {
        return Err(ApiError::not_found(
            "artifact_not_found",
            "that firmware is not assigned to this device",
        ));
    };
    // The representation: one chunk of the artifact.
    let (chunk_start, chunk_len) = thingsboard::chunk_window(artifact.size, size, index);
    // The block of it.
    let window = block2(request, chunk_len)
        .ok_or_else(|| ApiError::bad_request("invalid_request", "that block is past the end"))?;
    let (start, len) = (window.start, window.len);
    if window.block.more || window.asked {
        response.add_option(CoapOption::Block2, window.block.encode());
    }
    response.add_option(CoapOption::Size2, encode_uint(chunk_len));
    response.set_content_format(ContentFormat::ApplicationOctetStream);
    if len > 0 {
        let sha256 = &artifact.checksums.sha256;
        let payload = crate::kernel::download::blob_bytes(state, sha256, chunk_start + start, len)
            .await
            .map_err(ApiError::internal)?;
        response.payload = payload.to_vec();
    }
    Ok(ResponseType::Content)
}
