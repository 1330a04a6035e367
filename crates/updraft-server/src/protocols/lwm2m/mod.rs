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

pub mod adapter;
mod dtls;
mod firmware;
mod listener;
mod persist;
mod requests;

pub use self::dtls::serve_dtls;
pub use self::listener::serve;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use tokio::net::UdpSocket;
use updraft_core::{
    ArtifactKind, DeviceId, DeviceKey, Failure, FailureCode, Report, TenantKey, UpdateState,
};
use updraft_store::NewDevice;
use updraft_wire::lwm2m;

use crate::kernel::error::ApiError;
use crate::kernel::state::AppState;
use crate::transport::coap::{Block, Dedup, Exchanges, Seen, block2, encode_uint, strings, uint};

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
    /// The action whose package this registration was given: not offered twice to one
    /// registration (a client re-registering after a reboot is offered it again).
    offered: Option<updraft_core::ActionKey>,
    /// Canceled when the registration is replaced or ends: a firmware step working for it
    /// stops at once (its requests would never be answered) and the next registration's runs.
    gone: tokio_util::sync::CancellationToken,
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
    block1: Option<Block>,
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
    /// Live registrations by device (endpoint names are unique per tenant only).
    registrations: HashMap<DeviceKey, Registration>,
    /// Observations by (the observed client, token): a notification counts only from there.
    observations: HashMap<(Link, Vec<u8>), Observation>,
    /// Devices whose firmware driver runs, and whether it was kicked again meanwhile.
    drivers: HashMap<DeviceKey, bool>,
    /// One request at a time per device.
    locks: HashMap<DeviceKey, Arc<tokio::sync::Mutex<()>>>,
    /// Notifications waiting, per device whose notifications are being handled: one device's
    /// are handled in the order they came (Downloading before Downloaded), devices in parallel.
    notices: HashMap<DeviceKey, std::collections::VecDeque<(String, Packet)>>,
}

/// At most this many notifications wait per device; beyond, newer ones are dropped.
const MAX_WAITING_NOTICES: usize = 16;

/// The LwM2M server's state.
pub struct Lwm2m {
    socket: OnceLock<Arc<UdpSocket>>,
    /// Plaintext to encrypt and send on a DTLS session, by peer (bounded: when full a message is
    /// dropped, and our confirmable requests retransmit).
    dtls_out: OnceLock<tokio::sync::mpsc::Sender<(SocketAddr, Vec<u8>)>>,
    /// PSK identities → (device, key), for the DTLS listener.
    pub psks: Arc<std::sync::RwLock<PskTable>>,
    /// Registrations to write to the store (`None`: ended), by device (`persist.rs`).
    pending: Mutex<HashMap<DeviceKey, Option<updraft_store::StoredRegistration>>>,
    /// A reload of `psks` is waiting to run (another replica changed some).
    pub psks_reload: std::sync::atomic::AtomicBool,
    /// The device each DTLS peer authenticated as.
    dtls_peers: Mutex<HashMap<SocketAddr, DeviceKey>>,
    /// DTLS associations (established or handshaking) the listener holds.
    pub dtls_sessions: std::sync::atomic::AtomicUsize,
    inner: Mutex<Inner>,
    /// Our requests in flight, answered by (client, token): the same address over NoSec is not
    /// the client of a DTLS session.
    exchanges: Exchanges<Link>,
    /// Messages that could not be read (not CoAP, bad link format, unreadable values).
    pub malformed: Arc<AtomicU64>,
    /// Permits for the requests and notifications being handled.
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl Default for Lwm2m {
    fn default() -> Self {
        Self {
            socket: OnceLock::new(),
            dtls_out: OnceLock::new(),
            psks: Arc::default(),
            pending: Mutex::default(),
            psks_reload: std::sync::atomic::AtomicBool::new(false),
            dtls_peers: Mutex::default(),
            dtls_sessions: std::sync::atomic::AtomicUsize::new(0),
            inner: Mutex::default(),
            exchanges: Exchanges::default(),
            malformed: Arc::default(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(listener::MAX_IN_FLIGHT)),
        }
    }
}

/// The LwM2M adapter's state: the server's, and the registrations.
#[derive(Clone)]
pub struct Ctx {
    pub app: AppState,
    pub lwm2m: Arc<Lwm2m>,
}

impl std::ops::Deref for Ctx {
    type Target = AppState;
    fn deref(&self) -> &AppState {
        &self.app
    }
}

fn now() -> i64 {
    crate::kernel::clock::now_millis()
}

impl Lwm2m {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registered devices (lifetime not expired).
    pub fn devices(&self) -> Vec<DeviceKey> {
        let now = now();
        self.inner()
            .registrations
            .values()
            .filter(|r| r.expires_at > now)
            .map(|r| r.device)
            .collect()
    }

    /// The device's live registration.
    pub fn registration_of(&self, device: DeviceKey) -> Option<Registration> {
        let now = now();
        self.inner()
            .registrations
            .get(&device)
            .filter(|r| r.expires_at > now)
            .cloned()
    }

    /// A live registration under an endpoint name (of whichever tenant registered it first).
    pub fn registration(&self, endpoint: &str) -> Option<Registration> {
        let now = now();
        self.inner()
            .registrations
            .values()
            .find(|r| r.endpoint == endpoint && r.expires_at > now)
            .cloned()
    }

    fn device_lock(&self, device: DeviceKey) -> Arc<tokio::sync::Mutex<()>> {
        self.inner().locks.entry(device).or_default().clone()
    }

    /// Sends a datagram to a client, through its DTLS session when it has one.
    async fn transmit(&self, link: Link, bytes: &[u8]) {
        if link.secure {
            if let Some(out) = self.dtls_out.get() {
                let _ = out.try_send((link.peer, bytes.to_vec()));
            }
        } else if let Some(socket) = self.socket.get() {
            let _ = socket.send_to(bytes, link.peer).await;
        }
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
