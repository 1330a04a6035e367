//! A simulated LwM2M client (NoSec, UDP) with the Firmware Update object 5, as Anjay, Wakaama or
//! Zephyr's client behave: registers with `</5/0>`, answers reads and observations of State
//! (/5/0/3) and Update Result (/5/0/5) with confirmable notifications, pulls the package from the
//! HTTP Package URI written to /5/0/1, and on Execute (/5/0/2) "reboots" into the new image and
//! registers again. Its check-in is the Registration Update, once per poll interval.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use tokio::net::UdpSocket;

use super::*;

/// CoAP's ACK_TIMEOUT and MAX_RETRANSMIT: a confirmable message is sent again after 2, 4, 8, 16 s
/// and given up after that.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_RETRANSMIT: u32 = 4;
/// How many answers to the server's requests are kept for its retransmissions.
const ANSWERS_KEPT: usize = 16;
/// The longest datagram read.
const DATAGRAM: usize = 2048;

/// Object 5's State values.
const IDLE: u8 = 0;
const DOWNLOADING: u8 = 1;
const DOWNLOADED: u8 = 2;
const UPDATING: u8 = 3;

/// What a confirmable message we sent is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Register,
    Update(Instant),
    Notify,
}

struct Outstanding {
    bytes: Vec<u8>,
    kind: Sent,
    attempts: u32,
    resend_at: tokio::time::Instant,
}

/// The end of a package download: the image's length, or the Update Result to report.
type Downloaded = std::result::Result<u64, u8>;

struct Client {
    socket: UdpSocket,
    server: SocketAddr,
    spec: DeviceSpec,
    stats: Arc<Stats>,
    started: Instant,
    next_id: u16,
    location: Option<String>,
    registering: bool,
    outstanding: HashMap<u16, Outstanding>,
    answers: VecDeque<(u16, Vec<u8>)>,
    /// Observed path → (token, last Observe sequence number).
    observers: HashMap<String, (Vec<u8>, u32)>,
    state: u8,
    result: u8,
    /// How many updates this device has installed: its firmware version (/3/0/3).
    installed: u32,
    download: Option<tokio::task::JoinHandle<()>>,
    done_tx: tokio::sync::mpsc::Sender<Downloaded>,
    faults: Faults,
}

/// The LwM2M endpoint: `--lwm2m`, or the server's host on the default port 5685.
pub(super) async fn lwm2m_address(asked: Option<&str>, host: &str) -> Result<SocketAddr> {
    let address = asked.map_or_else(|| format!("{host}:5685"), str::to_owned);
    tokio::net::lookup_host(&address)
        .await
        .ok()
        .and_then(|mut found| found.next())
        .with_context(|| format!("the LwM2M address {address} does not resolve"))
}

/// A simulated LwM2M device against the server's LwM2M endpoint `server`; downloads go through
/// `http`.
pub(super) async fn lwm2m_device(
    server: SocketAddr,
    http: reqwest::Client,
    spec: DeviceSpec,
    stats: Arc<Stats>,
    started: Instant,
) {
    let bind = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let Ok(socket) = UdpSocket::bind(bind).await else {
        stats.errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(1);
    let faults = spec.faults;
    let mut client = Client {
        socket,
        server,
        spec,
        stats,
        started,
        next_id: 1,
        location: None,
        registering: false,
        outstanding: HashMap::new(),
        answers: VecDeque::new(),
        observers: HashMap::new(),
        state: IDLE,
        result: 0,
        installed: 0,
        download: None,
        done_tx,
        faults,
    };
    client.register().await;
    let mut next_update = tokio::time::Instant::now() + client.spec.sleep;
    let mut buf = vec![0u8; DATAGRAM];
    loop {
        let resend_at = client
            .outstanding
            .values()
            .map(|o| o.resend_at)
            .min()
            .unwrap_or(next_update);
        tokio::select! {
            received = client.socket.recv_from(&mut buf) => {
                if let Ok((len, peer)) = received
                    && peer == client.server
                    && let Ok(packet) = Packet::from_bytes(&buf[..len])
                {
                    client.datagram(packet, &http).await;
                }
            }
            Some(done) = done_rx.recv() => client.downloaded(done).await,
            () = tokio::time::sleep_until(resend_at.min(next_update)) => {
                client.resend().await;
                if tokio::time::Instant::now() >= next_update {
                    next_update = tokio::time::Instant::now() + client.spec.sleep;
                    client.check_in().await;
                }
            }
        }
    }
}

impl Client {
    fn message_id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    /// Sends a confirmable message and keeps it until it is acknowledged.
    async fn send_confirmable(&mut self, mut packet: Packet, kind: Sent) {
        packet.header.set_type(MessageType::Confirmable);
        let id = self.message_id();
        packet.header.message_id = id;
        let Ok(bytes) = packet.to_bytes() else {
            return;
        };
        let _ = self.socket.send_to(&bytes, self.server).await;
        let resend_at = tokio::time::Instant::now() + ACK_TIMEOUT;
        self.outstanding.insert(
            id,
            Outstanding {
                bytes,
                kind,
                attempts: 0,
                resend_at,
            },
        );
    }

    /// Sends again what is still unacknowledged at its time; gives up after MAX_RETRANSMIT.
    async fn resend(&mut self) {
        let now = tokio::time::Instant::now();
        let mut gave_up = Vec::new();
        for (id, message) in &mut self.outstanding {
            if message.resend_at > now {
                continue;
            }
            if message.attempts >= MAX_RETRANSMIT {
                gave_up.push(*id);
                continue;
            }
            message.attempts += 1;
            message.resend_at = now + ACK_TIMEOUT * 2u32.pow(message.attempts);
            let _ = self.socket.send_to(&message.bytes, self.server).await;
        }
        for id in gave_up {
            if let Some(message) = self.outstanding.remove(&id) {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                if message.kind == Sent::Register {
                    self.registering = false;
                }
            }
        }
    }

    async fn register(&mut self) {
        self.registering = true;
        self.location = None;
        let mut packet = Packet::new();
        packet.header.code = MessageClass::Request(RequestType::Post);
        packet.set_token(self.message_id().to_be_bytes().to_vec());
        packet.add_option(CoapOption::UriPath, b"rd".to_vec());
        let lifetime = (self.spec.sleep.as_secs() * 4).max(60);
        for query in [
            format!("ep={}", self.spec.id),
            format!("lt={lifetime}"),
            "lwm2m=1.1".to_owned(),
            "b=U".to_owned(),
        ] {
            packet.add_option(CoapOption::UriQuery, query.into_bytes());
        }
        packet.payload = b"</1/0>,</3/0>,</5/0>".to_vec();
        self.send_confirmable(packet, Sent::Register).await;
    }

    /// The device's check-in: a Registration Update, or a Register when it has none.
    async fn check_in(&mut self) {
        let Some(location) = self.location.clone() else {
            if !self.registering {
                self.register().await;
            }
            return;
        };
        if self
            .outstanding
            .values()
            .any(|o| matches!(o.kind, Sent::Update(_)))
        {
            return;
        }
        let mut packet = Packet::new();
        packet.header.code = MessageClass::Request(RequestType::Post);
        packet.set_token(self.message_id().to_be_bytes().to_vec());
        packet.add_option(CoapOption::UriPath, b"rd".to_vec());
        packet.add_option(CoapOption::UriPath, location.into_bytes());
        self.send_confirmable(packet, Sent::Update(Instant::now()))
            .await;
    }

    async fn datagram(&mut self, packet: Packet, http: &reqwest::Client) {
        match packet.header.code {
            MessageClass::Request(method) => self.request(packet, method, http).await,
            MessageClass::Response(code) => {
                let Some(sent) = self.outstanding.remove(&packet.header.message_id) else {
                    return;
                };
                match sent.kind {
                    Sent::Register if code == ResponseType::Created => {
                        let path = packet
                            .get_option(CoapOption::LocationPath)
                            .and_then(|p| p.back().cloned())
                            .and_then(|p| String::from_utf8(p).ok());
                        self.location = path;
                        self.registering = false;
                    }
                    Sent::Register => {
                        self.registering = false;
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Sent::Update(at) if code == ResponseType::Changed => {
                        if let Ok(mut latencies) = self.stats.poll_latencies.lock() {
                            latencies.push(at.elapsed());
                        }
                    }
                    // The registration is gone (the server restarted, or it expired).
                    Sent::Update(_) => self.register().await,
                    Sent::Notify => {}
                }
            }
            MessageClass::Empty => {
                // An empty ACK (or a Reset) ends what it answers.
                if packet.header.get_type() == MessageType::Reset
                    && let Some(sent) = self.outstanding.remove(&packet.header.message_id)
                    && sent.kind == Sent::Notify
                {
                    self.observers
                        .retain(|_, (token, _)| token.as_slice() != packet.get_token());
                } else if packet.header.get_type() == MessageType::Acknowledgement {
                    self.outstanding.remove(&packet.header.message_id);
                }
            }
            _ => {}
        }
    }

    /// A request of the server's: answered at once (piggybacked), its effects afterwards.
    async fn request(&mut self, packet: Packet, method: RequestType, http: &reqwest::Client) {
        let id = packet.header.message_id;
        if let Some((_, bytes)) = self.answers.iter().find(|(seen, _)| *seen == id) {
            let _ = self.socket.send_to(bytes, self.server).await;
            return;
        }
        let path: Vec<String> = packet
            .get_option(CoapOption::UriPath)
            .map(|parts| {
                parts
                    .iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let path = format!("/{}", path.join("/"));
        let mut answer = Packet::new();
        answer.header.set_type(MessageType::Acknowledgement);
        answer.header.message_id = id;
        answer.set_token(packet.get_token().to_vec());
        // The State and Update Result the request moves the object to, once answered.
        let mut then: Option<(u8, u8)> = None;
        let code = match (method, path.as_str()) {
            (RequestType::Get, _) => match self.value(&path) {
                Some(value) => {
                    if let Some(observe) = packet.get_first_option(CoapOption::Observe) {
                        if observe.iter().all(|b| *b == 0) {
                            self.observers
                                .insert(path.clone(), (packet.get_token().to_vec(), 1));
                            answer.add_option(CoapOption::Observe, vec![1]);
                        } else {
                            self.observers.remove(&path);
                        }
                    }
                    answer.add_option(CoapOption::ContentFormat, vec![]);
                    answer.payload = value.into_bytes();
                    ResponseType::Content
                }
                None => ResponseType::NotFound,
            },
            (RequestType::Put, "/5/0/1") => {
                let uri = String::from_utf8_lossy(&packet.payload).trim().to_owned();
                if uri.is_empty() {
                    // The update is withdrawn: back to Idle, nothing to report.
                    if let Some(download) = self.download.take() {
                        download.abort();
                    }
                    then = Some((IDLE, 0));
                    ResponseType::Changed
                } else if !uri.starts_with("http://") && !uri.starts_with("https://") {
                    // This client pulls over HTTP only: Update Result 9, unsupported protocol.
                    then = Some((IDLE, 9));
                    ResponseType::Changed
                } else if self.state == IDLE {
                    let download = tokio::spawn(pull(
                        http.clone(),
                        uri,
                        self.faults,
                        self.stats.clone(),
                        self.done_tx.clone(),
                    ));
                    self.download = Some(download);
                    then = Some((DOWNLOADING, 0));
                    ResponseType::Changed
                } else {
                    // A package while another is being handled.
                    ResponseType::MethodNotAllowed
                }
            }
            (RequestType::Post, "/5/0/2") if self.state == DOWNLOADED => {
                then = Some((UPDATING, 0));
                ResponseType::Changed
            }
            _ => ResponseType::MethodNotAllowed,
        };
        answer.header.code = MessageClass::Response(code);
        let Ok(bytes) = answer.to_bytes() else {
            return;
        };
        let _ = self.socket.send_to(&bytes, self.server).await;
        self.answers.push_back((id, bytes));
        if self.answers.len() > ANSWERS_KEPT {
            self.answers.pop_front();
        }
        if let Some((state, result)) = then {
            self.set(state, result);
            self.notify_changes().await;
            if self.state == UPDATING {
                self.reboot().await;
            }
        }
    }

    /// A readable resource's value, as text.
    fn value(&self, path: &str) -> Option<String> {
        Some(match path {
            "/3/0/0" => "Updraft".to_owned(),
            "/3/0/1" => "updraft-sim".to_owned(),
            "/3/0/3" => self.installed.to_string(),
            "/5/0/3" => self.state.to_string(),
            "/5/0/5" => self.result.to_string(),
            _ => return None,
        })
    }

    /// Sets State and Update Result; what changed is notified by `notify_changes`.
    fn set(&mut self, state: u8, result: u8) {
        self.state = state;
        self.result = result;
    }

    /// Notifies the observers of State and Update Result of their current values (result first:
    /// a failure is known before the State goes back to Idle).
    async fn notify_changes(&mut self) {
        for path in ["/5/0/5", "/5/0/3"] {
            let Some((token, sequence)) = self.observers.get_mut(path) else {
                continue;
            };
            *sequence += 1;
            let (token, sequence) = (token.clone(), *sequence);
            let mut packet = Packet::new();
            packet.header.code = MessageClass::Response(ResponseType::Content);
            packet.set_token(token);
            let observe = sequence.to_be_bytes();
            let first = observe.iter().position(|b| *b != 0).unwrap_or(3);
            packet.add_option(CoapOption::Observe, observe[first.max(1)..].to_vec());
            packet.add_option(CoapOption::ContentFormat, vec![]);
            packet.payload = self.value(path).unwrap_or_default().into_bytes();
            self.send_confirmable(packet, Sent::Notify).await;
        }
    }

    /// The package downloaded (State 2, Downloaded) or failed (Idle with its Update Result).
    async fn downloaded(&mut self, done: Downloaded) {
        self.download = None;
        if self.state != DOWNLOADING {
            return;
        }
        match done {
            Ok(_) => self.set(DOWNLOADED, 0),
            Err(result) => self.set(IDLE, result),
        }
        self.notify_changes().await;
    }

    /// Execute: the device installs and restarts. A restart ends every observation; the new
    /// image runs (Update Result 1) unless its health check fails and the bootloader rolls back
    /// (Update Result 8). Then it registers again, and the server reads the result.
    async fn reboot(&mut self) {
        self.observers.clear();
        self.outstanding.clear();
        if self.faults.fail_health {
            self.set(IDLE, 8);
        } else {
            self.installed += 1;
            self.set(IDLE, 1);
            if let Ok(mut times) = self.stats.time_to_updated.lock() {
                times.push(self.started.elapsed());
            }
        }
        self.register().await;
    }
}

/// Pulls the package at `uri`; the download fails as the device's faults say (a dropped
/// connection: Update Result 4; the integrity check of corrupted data: 5).
async fn pull(
    http: reqwest::Client,
    uri: String,
    faults: Faults,
    stats: Arc<Stats>,
    done: tokio::sync::mpsc::Sender<Downloaded>,
) {
    let result = async {
        let answer = http.get(&uri).send().await.map_err(|_| 4u8)?;
        if !answer.status().is_success() {
            // Invalid URI.
            return Err(7);
        }
        let mut body = answer.bytes_stream();
        let mut received = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|_| 4u8)?;
            received += chunk.len() as u64;
            stats.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if faults.drop_download && received > 1024 {
                return Err(4);
            }
        }
        if faults.corrupt {
            return Err(5);
        }
        Ok(received)
    }
    .await;
    let _ = done.send(result).await;
}
