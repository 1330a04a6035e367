//! The LwM2M server (NoSec, UDP): the registration interface (Register, Update, De-register,
//! lifetimes) and the firmware update of object 5 driven from the server side. One socket both
//! answers clients and sends our requests, from the listener's port to the address of the
//! device's last Register or Update (clients with connected sockets drop anything else).
//!
//! The update of a registered device with an active action: observe /5/0/3 (State) and /5/0/5
//! (Update Result), write a one-time HTTP URL to /5/0/1 (Package URI), follow the notifications
//! (1 Downloading, 2 Downloaded), Execute /5/0/2 in state 2, and decide on the result resource:
//! 1 → UPDATED, 2–9 → FAILED with LwM2M's code; after every Register of a device that is
//! updating, read /5/0/5 again (notifications merge; a reboot ends observations).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use updraft_core::{
    ArtifactKind, DeviceId, DeviceKey, Failure, FailureCode, Report, TenantKey, UpdateState,
};
use updraft_store::NewDevice;
use updraft_wire::lwm2m;

use crate::error::ApiError;
use crate::state::AppState;

/// The source recorded in history for reports over this protocol.
pub const SOURCE: &str = "lwm2m";
/// LwM2M versions we register.
const VERSIONS: [&str; 2] = ["1.0", "1.1"];
/// Lifetime when a Register names none (the spec's default).
const DEFAULT_LIFETIME: u32 = 86_400;
/// How long an answered confirmable message is remembered for duplicates (EXCHANGE_LIFETIME).
const DEDUP_MILLIS: i64 = 247_000;

/// Where a client is: its address, and whether over DTLS (our requests go through its session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Link {
    pub peer: SocketAddr,
    pub secure: bool,
}

/// PSK identity → (device, key).
pub type PskTable = HashMap<Vec<u8>, (DeviceKey, Vec<u8>)>;

/// One registered client.
#[derive(Debug, Clone)]
pub struct Registration {
    pub device: DeviceKey,
    pub tenant: TenantKey,
    pub device_id: DeviceId,
    pub endpoint: String,
    pub location: String,
    pub link: Link,
    pub lifetime: u32,
    pub version: String,
    /// Alternate root path (`/lwm2m`), or empty.
    pub root: String,
    pub objects: Vec<String>,
    pub expires_at: i64,
    /// /5/0/3 and /5/0/5 are observed for this registration.
    observed: bool,
    /// The Device object has been read for this registration.
    info_read: bool,
    /// The action whose package the device was last given (URI written or package pushed).
    told: Option<updraft_core::ActionKey>,
}

/// Options of one of our requests.
#[derive(Debug, Clone, Default)]
struct RequestOptions {
    content_format: Option<u16>,
    accept: Option<u16>,
    /// 0 registers an observation, 1 cancels one.
    observe: Option<u32>,
    queries: Vec<String>,
    /// Reuse a token (cancelling an observation).
    token: Option<Vec<u8>>,
    /// Block1 option value (a pushed package's blocks) and the whole size on the first.
    block1: Option<u64>,
    size1: Option<u64>,
}

/// A device-management operation on a registered client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Read,
    /// Text value (or empty).
    Write(String),
    Execute(String),
    Discover,
    /// `pmin=10&pmax=60` and the like.
    WriteAttributes(String),
    Observe,
    CancelObserve,
}

/// A client's answer to an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationResult {
    /// CoAP code as `2.05`.
    pub code: String,
    pub content_format: Option<u16>,
    pub payload: Vec<u8>,
}

/// What an observation's notifications are about.
#[derive(Debug, Clone)]
struct Observation {
    device: DeviceKey,
    path: String,
}

#[derive(Default)]
struct Inner {
    by_endpoint: HashMap<String, Registration>,
    pending: HashMap<Vec<u8>, oneshot::Sender<Packet>>,
    observations: HashMap<Vec<u8>, Observation>,
    drivers: HashSet<DeviceKey>,
    /// One request at a time per device.
    locks: HashMap<DeviceKey, Arc<tokio::sync::Mutex<()>>>,
}

/// The LwM2M server's state.
#[derive(Default)]
pub struct Lwm2m {
    socket: OnceLock<Arc<UdpSocket>>,
    /// Plaintext to encrypt and send on a DTLS session, by peer.
    dtls_out: OnceLock<tokio::sync::mpsc::UnboundedSender<(SocketAddr, Vec<u8>)>>,
    /// PSK identities → (device, key), for the DTLS listener.
    pub psks: Arc<std::sync::RwLock<PskTable>>,
    /// The device each DTLS peer authenticated as.
    dtls_peers: Mutex<HashMap<SocketAddr, DeviceKey>>,
    inner: Mutex<Inner>,
    message_id: AtomicU16,
    next_token: AtomicU64,
    next_location: AtomicU64,
}

fn now() -> i64 {
    crate::server::now_millis()
}

impl Lwm2m {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registered devices (lifetime not expired).
    pub fn devices(&self) -> Vec<DeviceKey> {
        let now = now();
        self.inner()
            .by_endpoint
            .values()
            .filter(|r| r.expires_at > now)
            .map(|r| r.device)
            .collect()
    }

    /// The device's live registration.
    pub fn registration_of(&self, device: DeviceKey) -> Option<Registration> {
        let now = now();
        self.inner()
            .by_endpoint
            .values()
            .find(|r| r.device == device && r.expires_at > now)
            .cloned()
    }

    /// The registration of an endpoint name.
    pub fn registration(&self, endpoint: &str) -> Option<Registration> {
        let now = now();
        self.inner()
            .by_endpoint
            .get(endpoint)
            .filter(|r| r.expires_at > now)
            .cloned()
    }

    fn device_lock(&self, device: DeviceKey) -> Arc<tokio::sync::Mutex<()>> {
        self.inner().locks.entry(device).or_default().clone()
    }

    /// Sends a datagram to a client, through its DTLS session when it has one.
    async fn transmit(&self, link: Link, bytes: &[u8]) {
        if link.secure {
            if let Some(out) = self.dtls_out.get() {
                let _ = out.send((link.peer, bytes.to_vec()));
            }
        } else if let Some(socket) = self.socket.get() {
            let _ = socket.send_to(bytes, link.peer).await;
        }
    }

    /// Sends a confirmable request to `link` and awaits its answer, retransmitting with RFC
    /// 7252's back-off (2 s, doubling, 4 retransmissions).
    async fn request(
        &self,
        addr: Link,
        method: RequestType,
        path: &str,
        payload: Vec<u8>,
        content_format: Option<u16>,
        observe: bool,
    ) -> Result<Packet, String> {
        let options = RequestOptions {
            content_format,
            observe: observe.then_some(0),
            ..RequestOptions::default()
        };
        self.request_with(addr, method, path, payload, options)
            .await
    }

    /// A confirmable request with every option a management operation may need.
    async fn request_with(
        &self,
        addr: Link,
        method: RequestType,
        path: &str,
        payload: Vec<u8>,
        options: RequestOptions,
    ) -> Result<Packet, String> {
        let token = options.token.clone().unwrap_or_else(|| {
            self.next_token
                .fetch_add(1, Ordering::Relaxed)
                .to_be_bytes()
                .to_vec()
        });
        let mut packet = Packet::new();
        packet.header.set_type(MessageType::Confirmable);
        packet.header.code = MessageClass::Request(method);
        packet.header.message_id = self.message_id.fetch_add(1, Ordering::Relaxed);
        packet.set_token(token.clone());
        if let Some(observe) = options.observe {
            packet.add_option(CoapOption::Observe, encode_uint(u64::from(observe)));
        }
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            packet.add_option(CoapOption::UriPath, segment.as_bytes().to_vec());
        }
        if let Some(format) = options.content_format {
            packet.add_option(CoapOption::ContentFormat, encode_uint(u64::from(format)));
        }
        for query in options.queries {
            packet.add_option(CoapOption::UriQuery, query.into_bytes());
        }
        if let Some(accept) = options.accept {
            packet.add_option(CoapOption::Accept, encode_uint(u64::from(accept)));
        }
        if let Some(block1) = options.block1 {
            packet.add_option(CoapOption::Block1, encode_uint(block1));
        }
        if let Some(size1) = options.size1 {
            packet.add_option(CoapOption::Size1, encode_uint(size1));
        }
        packet.payload = payload;
        let bytes = packet.to_bytes().map_err(|e| format!("{e:?}"))?;
        let (tx, mut rx) = oneshot::channel();
        self.inner().pending.insert(token.clone(), tx);
        // ACK_TIMEOUT 2 s × ACK_RANDOM_FACTOR (1–1.5), doubling, MAX_RETRANSMIT 4.
        let jitter = 1.0 + f64::from(token.last().copied().unwrap_or(0) % 50) / 100.0;
        let mut wait = Duration::from_millis((2000.0 * jitter) as u64);
        for _attempt in 0..=4 {
            self.transmit(addr, &bytes).await;
            match tokio::time::timeout(wait, &mut rx).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(_)) => break,
                Err(_) => wait *= 2,
            }
        }
        self.inner().pending.remove(&token);
        Err(format!("no answer from {} to {method:?} {path}", addr.peer))
    }

    /// Writes the package into /5/0/0 (opaque, Block1 blocks of 1 KiB read from the blob store
    /// one at a time): 2.31 Continue for every block but the last, 2.04 for the last.
    async fn push_package(
        &self,
        state: &AppState,
        link: Link,
        root: &str,
        artifact: &updraft_store::Artifact,
    ) -> Result<(), String> {
        use tokio::io::AsyncReadExt;
        let path = format!("{root}/5/0/0");
        let mut reader = state
            .blobs
            .open(&artifact.checksums.sha256, 0, None)
            .await
            .map_err(|e| e.to_string())?;
        let blocks = artifact.size.div_ceil(MAX_BLOCK).max(1);
        for num in 0..blocks {
            let len = MAX_BLOCK.min(artifact.size - num * MAX_BLOCK);
            let mut block = vec![0u8; usize::try_from(len).unwrap_or(0)];
            reader
                .read_exact(&mut block)
                .await
                .map_err(|e| e.to_string())?;
            let more = num + 1 < blocks;
            let options = RequestOptions {
                content_format: Some(lwm2m::OPAQUE),
                block1: Some((num << 4) | (u64::from(more) << 3) | 6),
                size1: (num == 0).then_some(artifact.size),
                ..RequestOptions::default()
            };
            let answer = self
                .request_with(link, RequestType::Put, &path, block, options)
                .await?;
            // 2.31 for every block but the last; 2.04 (or 2.01 from a server that creates the
            // resource) for the last.
            let accepted = if more {
                answer.header.code == MessageClass::Response(ResponseType::Continue)
            } else {
                matches!(
                    answer.header.code,
                    MessageClass::Response(ResponseType::Changed | ResponseType::Created)
                )
            };
            if !accepted {
                return Err(format!(
                    "the device answered block {num} of the package with {:?}",
                    answer.header.code
                ));
            }
        }
        Ok(())
    }

    /// The Package URI for a download grant, as the device's profile wants it.
    fn package_uri(
        &self,
        state: &AppState,
        token: &str,
        settings: updraft_store::ProfileSettings,
    ) -> String {
        let (base, path) = match settings.lwm2m_delivery {
            updraft_store::Lwm2mDelivery::Http | updraft_store::Lwm2mDelivery::Push => {
                (state.config.public_url.clone(), format!("/dl/{token}"))
            }
            updraft_store::Lwm2mDelivery::Coap => {
                // The host devices reach us by (from --public-url), on the LwM2M port.
                let public = state.config.public_url.as_str();
                let authority = public.split_once("://").map_or(public, |(_, rest)| rest);
                let authority = authority.split('/').next().unwrap_or(authority);
                let host = match authority.rsplit_once(':') {
                    Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
                    _ => authority,
                };
                let port = self
                    .socket
                    .get()
                    .and_then(|s| s.local_addr().ok())
                    .map_or(5685, |a| a.port());
                (format!("coap://{host}:{port}"), format!("/fw/{token}"))
            }
        };
        if settings.lwm2m_path_only {
            path
        } else {
            format!("{base}{path}")
        }
    }

    /// Runs a management operation on the device's registered client, one at a time per device.
    /// `None` when the device is not registered.
    pub async fn operate(
        &self,
        device: DeviceKey,
        path: &str,
        operation: Operation,
    ) -> Result<Option<OperationResult>, String> {
        let Some(registration) = self.registration_of(device) else {
            return Ok(None);
        };
        let full = format!("{}{path}", registration.root);
        let mut options = RequestOptions::default();
        let (method, payload) = match &operation {
            Operation::Read => (RequestType::Get, Vec::new()),
            Operation::Write(value) => {
                options.content_format = Some(lwm2m::TEXT);
                (RequestType::Put, value.clone().into_bytes())
            }
            Operation::Execute(args) => (RequestType::Post, args.clone().into_bytes()),
            Operation::Discover => {
                options.accept = Some(lwm2m::LINK_FORMAT);
                (RequestType::Get, Vec::new())
            }
            Operation::WriteAttributes(query) => {
                options.queries = query
                    .split('&')
                    .filter(|q| !q.is_empty())
                    .map(str::to_owned)
                    .collect();
                (RequestType::Put, Vec::new())
            }
            Operation::Observe => {
                options.observe = Some(0);
                (RequestType::Get, Vec::new())
            }
            Operation::CancelObserve => {
                let token = self
                    .inner()
                    .observations
                    .iter()
                    .find(|(_, o)| o.device == device && o.path == path)
                    .map(|(t, _)| t.clone());
                options.observe = Some(1);
                options.token = token;
                (RequestType::Get, Vec::new())
            }
        };
        let lock = self.device_lock(device);
        let _one_at_a_time = lock.lock().await;
        let answer = self
            .request_with(registration.link, method, &full, payload, options)
            .await?;
        match operation {
            Operation::Observe if is_success(&answer) => {
                self.inner().observations.insert(
                    answer.get_token().to_vec(),
                    Observation {
                        device,
                        path: path.to_owned(),
                    },
                );
            }
            Operation::CancelObserve => {
                self.inner()
                    .observations
                    .retain(|_, o| !(o.device == device && o.path == path));
            }
            _ => {}
        }
        let code = match answer.header.code {
            MessageClass::Response(code) => {
                let raw = u8::from(MessageClass::Response(code));
                format!("{}.{:02}", raw >> 5, raw & 0x1f)
            }
            other => format!("{other:?}"),
        };
        Ok(Some(OperationResult {
            code,
            content_format: answer
                .get_first_option(CoapOption::ContentFormat)
                .map(|v| u16::try_from(uint(v)).unwrap_or(u16::MAX)),
            payload: answer.payload,
        }))
    }

    fn told(&self, endpoint: &str, action: updraft_core::ActionKey) {
        if let Some(r) = self.inner().by_endpoint.get_mut(endpoint) {
            r.told = Some(action);
        }
    }

    /// Looks again at every registered device of a tenant (after its assignments changed).
    pub fn kick_tenant(self: &Arc<Self>, state: &AppState, tenant: TenantKey) {
        let devices: Vec<DeviceKey> = {
            let now = now();
            self.inner()
                .by_endpoint
                .values()
                .filter(|r| r.tenant == tenant && r.expires_at > now)
                .map(|r| r.device)
                .collect()
        };
        for device in devices {
            self.kick(state, device);
        }
    }

    /// Starts the firmware driver of `device` unless one runs.
    pub fn kick(self: &Arc<Self>, state: &AppState, device: DeviceKey) {
        if !self.inner().drivers.insert(device) {
            return;
        }
        let (this, state) = (self.clone(), state.clone());
        tokio::spawn(async move {
            if let Err(err) = this.drive(&state, device).await {
                tracing::warn!(error = %err.message, "lwm2m firmware update step failed");
            }
            this.inner().drivers.remove(&device);
        });
    }

    /// Reads the Device object's manufacturer, model and firmware version (single resources:
    /// some clients cannot read instances) into the device's attributes.
    async fn read_device_info(
        &self,
        state: &AppState,
        registration: &Registration,
    ) -> Result<(), ApiError> {
        let mut found = std::collections::BTreeMap::new();
        for (resource, name) in [
            ("0", "lwm2m_manufacturer"),
            ("1", "lwm2m_model"),
            ("3", "lwm2m_firmware_version"),
        ] {
            let path = format!("{}/3/0/{resource}", registration.root);
            let answer = self
                .request(
                    registration.link,
                    RequestType::Get,
                    &path,
                    Vec::new(),
                    None,
                    false,
                )
                .await
                .map_err(ApiError::internal)?;
            let text_like = answer
                .get_first_option(CoapOption::ContentFormat)
                .is_none_or(|cf| uint(cf) == u64::from(lwm2m::TEXT) || uint(cf) == 1541);
            if is_success(&answer)
                && text_like
                && let Ok(text) = std::str::from_utf8(&answer.payload)
            {
                found.insert(name.to_owned(), text.trim().to_owned());
            }
        }
        if !found.is_empty() {
            state
                .store
                .update_attributes(
                    registration.device,
                    updraft_store::AttributeMode::Merge,
                    &found,
                )
                .await?;
        }
        Ok(())
    }

    /// Carries the device's active update one step as far as the server can.
    async fn drive(&self, state: &AppState, device: DeviceKey) -> Result<(), ApiError> {
        let Some(registration) = self.registration_of(device) else {
            return Ok(());
        };
        if !registration.info_read {
            if let Some(r) = self.inner().by_endpoint.get_mut(&registration.endpoint) {
                r.info_read = true;
            }
            let lock = self.device_lock(device);
            let _one_at_a_time = lock.lock().await;
            self.read_device_info(state, &registration).await?;
        }
        let Some(status) = state
            .store
            .device_status(registration.tenant, &registration.device_id)
            .await?
        else {
            return Ok(());
        };
        let active = status
            .active
            .filter(|a| a.kind == ArtifactKind::Firmware && !a.state.is_final());
        // A package the device was given for an action that is over without it (canceled or
        // superseded): reset /5/0/1 with an empty Package URI before anything else.
        if let Some(told) = registration.told
            && active.as_ref().is_none_or(|a| a.key != told)
        {
            let finished = state.store.action(registration.tenant, told).await?;
            if finished.is_none_or(|a| a.state == UpdateState::Canceled) {
                let lock = self.device_lock(device);
                let _one_at_a_time = lock.lock().await;
                let path = format!("{}/5/0/1", registration.root);
                self.request(
                    registration.link,
                    RequestType::Put,
                    &path,
                    Vec::new(),
                    Some(lwm2m::TEXT),
                    false,
                )
                .await
                .map_err(ApiError::internal)?;
            }
            if let Some(r) = self.inner().by_endpoint.get_mut(&registration.endpoint) {
                r.told = None;
            }
        }
        let Some(action) = active else {
            return Ok(());
        };
        let lock = self.device_lock(device);
        let _one_at_a_time = lock.lock().await;
        let root = registration.root.clone();
        let addr = registration.link;
        let report = |report: Report| async move {
            state
                .store
                .report(registration.tenant, action.key, &report, SOURCE)
                .await
                .map(|_| ())
        };
        if !registration.observed {
            for resource in ["3", "5"] {
                let path = format!("{root}/5/0/{resource}");
                match self
                    .request(addr, RequestType::Get, &path, Vec::new(), None, true)
                    .await
                {
                    Ok(answer) if is_success(&answer) => {
                        self.inner().observations.insert(
                            answer.get_token().to_vec(),
                            Observation {
                                device,
                                path: format!("/5/0/{resource}"),
                            },
                        );
                        // The current value counts like a notification.
                        self.notified(state, device, &format!("/5/0/{resource}"), &answer)
                            .await?;
                    }
                    Ok(answer) => {
                        tracing::debug!(code = ?answer.header.code, path, "observe refused")
                    }
                    Err(err) => return Err(ApiError::internal(err)),
                }
            }
            if let Some(r) = self.inner().by_endpoint.get_mut(&registration.endpoint) {
                r.observed = true;
            }
        }
        // Reread: the current values may have moved the action on.
        let Some(action) = state
            .store
            .action(registration.tenant, action.key)
            .await?
            .filter(|a| !a.state.is_final())
        else {
            return Ok(());
        };
        match action.state {
            UpdateState::Queued | UpdateState::Initiated => {
                let Some(artifact_key) = action.artifact else {
                    return Ok(());
                };
                let Some(artifact) = state
                    .store
                    .artifact(registration.tenant, artifact_key)
                    .await?
                else {
                    return Ok(());
                };
                let token = state.grants.issue(action.key, &artifact)?;
                let settings = match &status.device.profile {
                    Some((_, name)) => state
                        .store
                        .profile_by_name(registration.tenant, name)
                        .await?
                        .map(|p| p.settings)
                        .unwrap_or_default(),
                    None => updraft_store::ProfileSettings::default(),
                };
                if settings.lwm2m_delivery == updraft_store::Lwm2mDelivery::Push {
                    if action.state == UpdateState::Queued {
                        report(Report::Reached {
                            state: UpdateState::Initiated,
                            progress: None,
                        })
                        .await?;
                    }
                    self.told(&registration.endpoint, action.key);
                    if let Err(reason) = self.push_package(state, addr, &root, &artifact).await {
                        report(Report::Failed(Failure {
                            code: FailureCode::ConnectionLost,
                            reason,
                        }))
                        .await?;
                    }
                    return Ok(());
                }
                let url = self.package_uri(state, &token, settings);
                let path = format!("{root}/5/0/1");
                let answer = self
                    .request(
                        addr,
                        RequestType::Put,
                        &path,
                        url.into_bytes(),
                        Some(lwm2m::TEXT),
                        false,
                    )
                    .await
                    .map_err(ApiError::internal)?;
                if is_success(&answer) {
                    self.told(&registration.endpoint, action.key);
                    if action.state == UpdateState::Queued {
                        report(Report::Reached {
                            state: UpdateState::Initiated,
                            progress: None,
                        })
                        .await?;
                    }
                } else {
                    report(Report::Failed(Failure {
                        code: FailureCode::UnsupportedProtocol,
                        reason: format!(
                            "the device refused the Package URI: {:?}",
                            answer.header.code
                        ),
                    }))
                    .await?;
                }
            }
            UpdateState::Downloaded | UpdateState::Verified => {
                let path = format!("{root}/5/0/2");
                let answer = self
                    .request(addr, RequestType::Post, &path, Vec::new(), None, false)
                    .await
                    .map_err(ApiError::internal)?;
                if is_success(&answer) {
                    report(Report::Reached {
                        state: UpdateState::Updating,
                        progress: None,
                    })
                    .await?;
                } else {
                    report(Report::Failed(Failure {
                        code: FailureCode::UpdateFailed,
                        reason: format!(
                            "the device refused Execute /5/0/2: {:?}",
                            answer.header.code
                        ),
                    }))
                    .await?;
                }
            }
            UpdateState::Updating => {
                let path = format!("{root}/5/0/5");
                let answer = self
                    .request(addr, RequestType::Get, &path, Vec::new(), None, false)
                    .await
                    .map_err(ApiError::internal)?;
                if is_success(&answer) {
                    self.notified(state, device, "/5/0/5", &answer).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A value of an observed (or read) resource: moves the device's action along.
    async fn notified(
        &self,
        state: &AppState,
        device: DeviceKey,
        path: &str,
        packet: &Packet,
    ) -> Result<(), ApiError> {
        let content_format = packet
            .get_first_option(CoapOption::ContentFormat)
            .map(|v| u16::try_from(uint(v)).unwrap_or(u16::MAX));
        let Ok(value) = lwm2m::integer(content_format, &packet.payload) else {
            // Counted, never fatal: a client's value we cannot read.
            state
                .metrics
                .lwm2m_malformed
                .fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        self.value(state, device, path, value).await
    }

    /// A value of /5/0/3 or /5/0/5, from a read, a notification or a Send.
    async fn value(
        &self,
        state: &AppState,
        device: DeviceKey,
        path: &str,
        value: i64,
    ) -> Result<(), ApiError> {
        let Some(registration) = self.registration_of(device) else {
            return Ok(());
        };
        let Some(action) = state
            .store
            .device_status(registration.tenant, &registration.device_id)
            .await?
            .and_then(|s| s.active)
            .filter(|a| a.kind == ArtifactKind::Firmware && !a.state.is_final())
        else {
            return Ok(());
        };
        let mut reports = Vec::new();
        match (path, value) {
            ("/5/0/3", 1) if action.state < UpdateState::Downloading => {
                reports.push(Report::Reached {
                    state: UpdateState::Downloading,
                    progress: None,
                });
            }
            ("/5/0/3", 2) if action.state < UpdateState::Downloaded => {
                // The client checks the package before it says Downloaded.
                for reached in [UpdateState::Downloaded, UpdateState::Verified] {
                    reports.push(Report::Reached {
                        state: reached,
                        progress: None,
                    });
                }
            }
            ("/5/0/3", 3) if action.state < UpdateState::Updating => {
                reports.push(Report::Reached {
                    state: UpdateState::Updating,
                    progress: None,
                });
            }
            ("/5/0/5", 1) if action.state > UpdateState::Queued => reports.push(Report::Succeeded),
            ("/5/0/5", code @ 2..=9) if action.state > UpdateState::Queued => {
                let code = FailureCode::ALL
                    .into_iter()
                    .find(|c| i64::from(c.lwm2m_result()) == code)
                    .unwrap_or(FailureCode::UpdateFailed);
                reports.push(Report::Failed(Failure {
                    code,
                    reason: format!("the device reported Update Result {}", code.lwm2m_result()),
                }));
            }
            _ => {}
        }
        let moved = !reports.is_empty();
        for report in &reports {
            state
                .store
                .report(registration.tenant, action.key, report, SOURCE)
                .await?;
        }
        if moved && path == "/5/0/3" && value == 2 {
            // Downloaded: the server's turn (Execute), outside this notification.
            state.lwm2m.kick(state, device);
        }
        Ok(())
    }
}

fn is_success(packet: &Packet) -> bool {
    matches!(
        packet.header.code,
        MessageClass::Response(
            ResponseType::Created
                | ResponseType::Deleted
                | ResponseType::Valid
                | ResponseType::Changed
                | ResponseType::Content
                | ResponseType::Continue
        )
    )
}

fn uint(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .take(8)
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

fn encode_uint(value: u64) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes[first..].to_vec()
}

fn strings(packet: &Packet, option: CoapOption) -> Vec<String> {
    packet
        .get_option(option)
        .map(|values| {
            values
                .iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// When a request was first seen, and its answer once sent.
type Entry = (i64, Option<Vec<u8>>);

/// Confirmable requests seen lately, by (peer, message ID), with their answers.
#[derive(Default)]
struct Recent {
    /// When each was first seen, and its answer once sent.
    answers: HashMap<(SocketAddr, u16), Entry>,
    order: VecDeque<(SocketAddr, u16)>,
}

enum Seen {
    New,
    InProgress,
    Answered(Vec<u8>),
}

impl Recent {
    /// Records a request as being answered, unless it was seen before.
    fn begin(&mut self, key: (SocketAddr, u16)) -> Seen {
        let now = now();
        while let Some(old) = self.order.front().copied() {
            let stale = self
                .answers
                .get(&old)
                .is_none_or(|(at, _)| now - at > DEDUP_MILLIS);
            if !stale && self.order.len() <= 65_536 {
                break;
            }
            self.order.pop_front();
            self.answers.remove(&old);
        }
        match self.answers.get(&key) {
            Some((_, Some(answer))) => Seen::Answered(answer.clone()),
            Some((_, None)) => Seen::InProgress,
            None => {
                self.answers.insert(key, (now, None));
                self.order.push_back(key);
                Seen::New
            }
        }
    }

    fn answered(&mut self, key: (SocketAddr, u16), answer: Vec<u8>) {
        if let Some(entry) = self.answers.get_mut(&key) {
            entry.1 = Some(answer);
        }
    }
}

/// Answers registrations and routes answers to our requests, until the socket fails.
pub async fn serve(socket: UdpSocket, state: AppState) {
    let socket = Arc::new(socket);
    let _ = state.lwm2m.socket.set(socket.clone());
    let recent = Arc::new(Mutex::new(Recent::default()));
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(err) => {
                tracing::warn!(error = %err, "lwm2m receive failed");
                continue;
            }
        };
        let link = Link {
            peer,
            secure: false,
        };
        datagram(&state, link, &buf[..len], &recent).await;
    }
}

/// One CoAP message from a client, over either transport.
async fn datagram(state: &AppState, link: Link, bytes: &[u8], recent: &Arc<Mutex<Recent>>) {
    let Ok(packet) = Packet::from_bytes(bytes) else {
        state
            .metrics
            .lwm2m_malformed
            .fetch_add(1, Ordering::Relaxed);
        return;
    };
    let lwm2m = state.lwm2m.clone();
    match packet.header.code {
        MessageClass::Request(method) => {
            let key = (link.peer, packet.header.message_id);
            let confirmable = packet.header.get_type() == MessageType::Confirmable;
            if confirmable {
                let seen = recent.lock().unwrap_or_else(|e| e.into_inner()).begin(key);
                match seen {
                    Seen::New => {}
                    // Still being answered: the answer will go out.
                    Seen::InProgress => return,
                    Seen::Answered(cached) => {
                        lwm2m.transmit(link, &cached).await;
                        return;
                    }
                }
            }
            // Requests are answered concurrently: a registration waits on the store.
            let (state, recent) = (state.clone(), recent.clone());
            tokio::spawn(async move {
                let response = respond(&state, link, &packet, method).await;
                let Ok(bytes) = response.to_bytes() else {
                    return;
                };
                state.lwm2m.transmit(link, &bytes).await;
                if confirmable {
                    recent
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .answered(key, bytes);
                }
            });
        }
        MessageClass::Response(_) => {
            // A separate (confirmable) answer or notification is acknowledged.
            if packet.header.get_type() == MessageType::Confirmable {
                let mut ack = Packet::new();
                ack.header.set_type(MessageType::Acknowledgement);
                ack.header.message_id = packet.header.message_id;
                if let Ok(bytes) = ack.to_bytes() {
                    lwm2m.transmit(link, &bytes).await;
                }
            }
            let token = packet.get_token().to_vec();
            let waiter = lwm2m.inner().pending.remove(&token);
            if let Some(waiter) = waiter {
                let _ = waiter.send(packet);
                return;
            }
            let observation = lwm2m.inner().observations.get(&token).cloned();
            if let Some(observation) = observation {
                let state = state.clone();
                tokio::spawn(async move {
                    let lwm2m = state.lwm2m.clone();
                    if let Err(err) = lwm2m
                        .notified(&state, observation.device, &observation.path, &packet)
                        .await
                    {
                        tracing::warn!(error = %err.message, "lwm2m notification failed");
                    }
                });
            }
        }
        _ => {}
    }
}

/// The answer to a client's request to the registration interface.
async fn respond(state: &AppState, link: Link, request: &Packet, method: RequestType) -> Packet {
    let mut response = Packet::new();
    if request.header.get_type() == MessageType::Confirmable {
        response.header.set_type(MessageType::Acknowledgement);
        response.header.message_id = request.header.message_id;
    } else {
        response.header.set_type(MessageType::NonConfirmable);
        response.header.message_id = state.lwm2m.message_id.fetch_add(1, Ordering::Relaxed);
    }
    response.set_token(request.get_token().to_vec());
    let code = match handle(state, link, request, method, &mut response).await {
        Ok(code) => code,
        Err((code, message)) => {
            response.payload = message.into_bytes();
            code
        }
    };
    response.header.code = MessageClass::Response(code);
    response
}

type Answer = Result<ResponseType, (ResponseType, String)>;

fn bad(message: impl Into<String>) -> (ResponseType, String) {
    (ResponseType::BadRequest, message.into())
}

async fn handle(
    state: &AppState,
    link: Link,
    request: &Packet,
    method: RequestType,
    response: &mut Packet,
) -> Answer {
    let path = strings(request, CoapOption::UriPath);
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    match (method, path.as_slice()) {
        (RequestType::Post, ["rd"]) => register(state, link, request, response).await,
        (RequestType::Post, ["dp"]) => send(state, link, request).await,
        (RequestType::Get, ["fw", token]) => package_block(state, token, request, response).await,
        (RequestType::Post, ["rd", location]) => update(state, link, request, location),
        (RequestType::Delete, ["rd", location]) => {
            let mut inner = state.lwm2m.inner();
            let endpoint = inner
                .by_endpoint
                .iter()
                .find(|(_, r)| r.location == *location)
                .map(|(e, _)| e.clone());
            match endpoint {
                Some(endpoint) => {
                    if let Some(gone) = inner.by_endpoint.remove(&endpoint) {
                        inner.observations.retain(|_, o| o.device != gone.device);
                    }
                    Ok(ResponseType::Deleted)
                }
                None => Err((ResponseType::NotFound, "no such registration".into())),
            }
        }
        _ => Err((ResponseType::NotFound, "unknown resource".into())),
    }
}

async fn register(state: &AppState, link: Link, request: &Packet, response: &mut Packet) -> Answer {
    let queries = strings(request, CoapOption::UriQuery);
    let query = lwm2m::register_query(queries.iter().map(String::as_str)).map_err(|e| bad(e.0))?;
    let version = query.version.clone().unwrap_or_else(|| "1.0".to_owned());
    if !VERSIONS.contains(&version.as_str()) {
        // 4.12, never 4.00: a client that gets 4.00 does not try an older version.
        return Err((
            ResponseType::PreconditionFailed,
            format!("LwM2M {version} is not supported: use 1.1 or 1.0"),
        ));
    }
    let endpoint = query
        .endpoint
        .clone()
        .ok_or_else(|| bad("ep is required"))?;
    let links = lwm2m::links(&request.payload).map_err(|e| {
        state
            .metrics
            .lwm2m_malformed
            .fetch_add(1, Ordering::Relaxed);
        bad(e.0)
    })?;
    let device = match device_for(state, &endpoint).await {
        Ok(Some(device)) => device,
        Ok(None) => {
            return Err((
                ResponseType::Forbidden,
                format!("endpoint {endpoint:?} is not a device of this server"),
            ));
        }
        Err(err) => return Err((ResponseType::InternalServerError, err.message)),
    };
    // A device with a PSK registers over DTLS only, and over DTLS only as the device whose
    // identity it used.
    let allowed = if link.secure {
        state.lwm2m.dtls_device(link.peer) == Some(device.key)
    } else {
        !state.lwm2m.has_psk(device.key)
    };
    if !allowed {
        return Err((
            ResponseType::Forbidden,
            format!("endpoint {endpoint:?} must register over DTLS with its own PSK identity"),
        ));
    }
    let location = format!(
        "{:x}",
        state.lwm2m.next_location.fetch_add(1, Ordering::Relaxed) + 1
    );
    let lifetime = query.lifetime.unwrap_or(DEFAULT_LIFETIME);
    let registration = Registration {
        device: device.key,
        tenant: device.tenant,
        device_id: device.id.clone(),
        endpoint: endpoint.clone(),
        location: location.clone(),
        link,
        lifetime,
        version,
        root: links.root,
        objects: links.objects,
        // A little slack over the lifetime, as clients update at lt minus a margin.
        expires_at: now() + i64::from(lifetime) * 1000 + 30_000,
        observed: false,
        info_read: false,
        told: None,
    };
    {
        let mut inner = state.lwm2m.inner();
        // The same endpoint registering again replaces its registration and its observations
        // (what it was told stays true).
        inner.observations.retain(|_, o| o.device != device.key);
        let told = inner.by_endpoint.get(&endpoint).and_then(|r| r.told);
        let mut registration = registration;
        registration.told = told;
        inner.by_endpoint.insert(endpoint, registration);
    }
    response.add_option(CoapOption::LocationPath, b"rd".to_vec());
    response.add_option(CoapOption::LocationPath, location.into_bytes());
    // Our requests go out after this answer (node-lib only listens once it has it).
    let (state, key) = (state.clone(), device.key);
    tokio::spawn(async move {
        let _ = state.store.touch_device(key).await;
        state.lwm2m.kick(&state, key);
    });
    Ok(ResponseType::Created)
}

fn update(state: &AppState, link: Link, request: &Packet, location: &str) -> Answer {
    let queries = strings(request, CoapOption::UriQuery);
    let query = lwm2m::register_query(queries.iter().map(String::as_str)).map_err(|e| bad(e.0))?;
    let links = if request.payload.is_empty() {
        None
    } else {
        Some(lwm2m::links(&request.payload).map_err(|e| bad(e.0))?)
    };
    let device = {
        let mut inner = state.lwm2m.inner();
        let Some(registration) = inner
            .by_endpoint
            .values_mut()
            .find(|r| r.location == location)
        else {
            return Err((ResponseType::NotFound, "no such registration".into()));
        };
        // The source is the new address (NAT rebinding).
        registration.link = link;
        if let Some(lifetime) = query.lifetime {
            registration.lifetime = lifetime;
        }
        if let Some(links) = links {
            registration.root = links.root;
            registration.objects = links.objects;
        }
        registration.expires_at = now() + i64::from(registration.lifetime) * 1000 + 30_000;
        registration.device
    };
    state.lwm2m.kick(state, device);
    Ok(ResponseType::Changed)
}

/// The device an endpoint name stands for: the one registered under that endpoint name, else
/// the device of that id in the default tenant (created on first contact when the tenant allows).
async fn device_for(
    state: &AppState,
    endpoint: &str,
) -> Result<Option<updraft_store::Device>, ApiError> {
    if let Some(device) = state
        .store
        .device_by_credential(updraft_store::CredentialKind::Lwm2mEndpoint, endpoint)
        .await?
    {
        return Ok(Some(device));
    }
    let Ok(id) = DeviceId::parse(endpoint) else {
        return Ok(None);
    };
    let Some(tenant) = state
        .store
        .tenant_by_name(crate::server::DEFAULT_TENANT)
        .await?
    else {
        return Ok(None);
    };
    if let Some(device) = state.store.device(tenant.key, &id).await? {
        return Ok(Some(device));
    }
    if !tenant.settings.auto_register {
        return Ok(None);
    }
    let new = NewDevice {
        id,
        project: None,
        profile: None,
        tags: Vec::new(),
        attributes: Default::default(),
    };
    Ok(Some(
        state.store.create_device(tenant.key, &new, &[]).await?,
    ))
}

/// Largest CoAP block we send (SZX 6).
const MAX_BLOCK: u64 = 1024;

/// One Block2 block of the package a download grant opens (CoAP pull). Every block is its own
/// request (Anjay sends a new token each time); the ETag names the package.
async fn package_block(
    state: &AppState,
    token: &str,
    request: &Packet,
    response: &mut Packet,
) -> Answer {
    use tokio::io::AsyncReadExt;
    let (sha256, size) = state.grants.blob(token).ok_or_else(|| {
        (
            ResponseType::NotFound,
            "unknown or expired package".to_owned(),
        )
    })?;
    let (num, szx) = match request.get_first_option(CoapOption::Block2) {
        Some(value) => {
            let value = uint(value);
            (value >> 4, (value & 0x7).min(6))
        }
        None => (0, 6),
    };
    let block = (1u64 << (szx + 4)).min(MAX_BLOCK);
    let start = num.saturating_mul(block);
    if start > 0 && start >= size {
        return Err((
            ResponseType::BadOption,
            "that block is past the end".to_owned(),
        ));
    }
    let len = block.min(size.saturating_sub(start));
    let more = start + len < size;
    response.add_option(
        CoapOption::Block2,
        encode_uint((num << 4) | (u64::from(more) << 3) | szx),
    );
    response.add_option(CoapOption::Size2, encode_uint(size));
    response.add_option(CoapOption::ETag, sha256.as_bytes()[..8].to_vec());
    response.add_option(
        CoapOption::ContentFormat,
        encode_uint(u64::from(lwm2m::OPAQUE)),
    );
    if len > 0 {
        let mut reader = state
            .blobs
            .open(&sha256, start, Some(len))
            .await
            .map_err(|e| (ResponseType::InternalServerError, e.to_string()))?;
        let mut payload = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        reader
            .read_to_end(&mut payload)
            .await
            .map_err(|e| (ResponseType::InternalServerError, e.to_string()))?;
        response.payload = payload;
    }
    Ok(ResponseType::Content)
}

/// The 1.1 Send operation (`POST /dp`): values of the sender's resources, as a notification
/// would carry them (flownexus's firmware reports /5/0/3 and /5/0/5 this way).
async fn send(state: &AppState, link: Link, request: &Packet) -> Answer {
    let device = state
        .lwm2m
        .inner()
        .by_endpoint
        .values()
        .find(|r| r.link == link && r.expires_at > now())
        .map(|r| r.device)
        .ok_or_else(|| {
            (
                ResponseType::Forbidden,
                "register before sending".to_owned(),
            )
        })?;
    let content_format = request
        .get_first_option(CoapOption::ContentFormat)
        .map_or(lwm2m::SENML_CBOR, |v| {
            u16::try_from(uint(v)).unwrap_or(u16::MAX)
        });
    let values = lwm2m::senml_numbers(content_format, &request.payload).map_err(|e| bad(e.0))?;
    for (path, value) in values {
        let path = path.trim_end_matches('/');
        if matches!(path, "/5/0/3" | "/5/0/5")
            && let Err(err) = state.lwm2m.value(state, device, path, value as i64).await
        {
            return Err((ResponseType::InternalServerError, err.message));
        }
    }
    Ok(ResponseType::Changed)
}

// ---------------------------------------------------------------------------------------------
// DTLS 1.2 with pre-shared keys (RFC 7925: TLS_PSK_WITH_AES_128_CCM_8), one dimpl session per
// peer on the `--lwm2m-dtls` socket; CoAP goes through `datagram` like on the NoSec socket.

impl Lwm2m {
    /// Loads every device's PSK from the store (at start-up).
    pub async fn load_psks(&self, state: &AppState) -> Result<(), ApiError> {
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

    fn dtls_device(&self, peer: SocketAddr) -> Option<DeviceKey> {
        self.dtls_peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .copied()
    }
}

/// Looks a PSK identity up, remembering which device it named for the session.
struct Resolver {
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

struct DtlsSession {
    dtls: dimpl::Dtls,
    device: Arc<Mutex<Option<DeviceKey>>>,
    timeout: Option<std::time::Instant>,
    last_heard: std::time::Instant,
}

/// Record versions of epoch-0 handshake records are rewritten to DTLS 1.2's: mbedTLS 2.x sends
/// 0xFE00 in its ClientHello, which the engine would drop (the handshake hash does not cover
/// record headers).
fn normalize_records(datagram: &mut [u8]) {
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
pub async fn serve_dtls(socket: UdpSocket, state: AppState) {
    let socket = Arc::new(socket);
    let (tx, mut outgoing) = tokio::sync::mpsc::unbounded_channel::<(SocketAddr, Vec<u8>)>();
    let _ = state.lwm2m.dtls_out.set(tx);
    if let Err(err) = state.lwm2m.load_psks(&state).await {
        tracing::warn!(error = %err.message, "could not load LwM2M PSKs");
    }
    let recent = Arc::new(Mutex::new(Recent::default()));
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

async fn datagram_secure(
    state: &AppState,
    link: Link,
    message: Vec<u8>,
    recent: &Arc<Mutex<Recent>>,
) {
    datagram(state, link, &message, recent).await;
}

/// Sends what the session has to send; returns the application data it received, or `None`
/// when the session failed.
async fn drain(
    socket: &UdpSocket,
    state: &AppState,
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
