//! `updraft sim`: many virtual devices in one process against a server, for demos and load tests.
//! Over DDI each device is a real `updraft-agent` (its state machine, in-memory A/B slots); over
//! Drogue DFU each is an `embedded-update`-style Status → Command loop. Failures are injected
//! per device from a seed: a connection dropped mid-download, corrupted data, a new image that
//! fails its health check.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use updraft_agent::AgentError;
use updraft_agent::agent::{Agent, AgentConfig, Hooks, Outcome};
use updraft_agent::flash::{Flash, HashFlash};
use updraft_agent::server::{
    DdiClient, Delivery, Download, Feedback, Offer, PollAnswer, UpdateServer,
};
use updraft_agent::state::Release;
use updraft_agent::state::Slot;

use crate::client::Client;

/// What `updraft sim` was asked to do.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// How many devices.
    #[arg(long, default_value_t = 50)]
    pub devices: usize,
    /// ddi, drogue, frugal or thingsboard (MQTT).
    #[arg(long, default_value = "ddi")]
    pub protocol: String,
    /// The server's device MQTT address, for --protocol thingsboard (default: the server's host,
    /// port 1883).
    #[arg(long)]
    pub mqtt: Option<String>,
    /// Seconds between polls.
    #[arg(long, default_value_t = 5.0)]
    pub poll: f64,
    /// Random share of the poll interval added or taken away (0 to 1).
    #[arg(long, default_value_t = 0.2)]
    pub jitter: f64,
    /// Device ids are PREFIX-0, PREFIX-1, …; existing devices are reused only if created by sim.
    #[arg(long, default_value = "sim")]
    pub prefix: String,
    /// Profile for new devices (created if missing).
    #[arg(long)]
    pub profile: Option<String>,
    /// Tag for new devices.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Assign this artifact (TITLE@VERSION) to the simulated devices' profile (or the tenant)
    /// once they run.
    #[arg(long)]
    pub assign: Option<String>,
    /// Share of devices whose connection drops once mid-download.
    #[arg(long, default_value_t = 0.0)]
    pub drop_download: f64,
    /// Share of devices that receive corrupted data.
    #[arg(long, default_value_t = 0.0)]
    pub corrupt: f64,
    /// Share of devices whose new image fails its health check.
    #[arg(long, default_value_t = 0.0)]
    pub fail_health: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Stop once every simulated device's update has ended (or after --timeout seconds).
    #[arg(long)]
    pub until_done: bool,
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

/// A small deterministic generator (xorshift64*), so that a seed reproduces a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What one device will suffer.
#[derive(Debug, Clone, Copy, Default)]
struct Faults {
    drop_download: bool,
    corrupt: bool,
    fail_health: bool,
}

/// Measurements shared by every device.
#[derive(Default)]
struct Stats {
    poll_latencies: Mutex<Vec<Duration>>,
    time_to_updated: Mutex<Vec<Duration>>,
    bytes: AtomicU64,
    errors: AtomicU64,
}

fn percentile(values: &mut [Duration], p: f64) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    values.sort();
    let index = ((values.len() as f64 - 1.0) * p).round() as usize;
    values.get(index).copied()
}

/// The DDI client, measured and with this device's faults.
struct SimServer {
    inner: DdiClient,
    faults: Faults,
    dropped: std::sync::atomic::AtomicBool,
    stats: Arc<Stats>,
}

#[async_trait]
impl UpdateServer for SimServer {
    async fn poll(&self) -> Result<PollAnswer, AgentError> {
        let start = Instant::now();
        let answer = self.inner.poll().await;
        if let Ok(mut latencies) = self.stats.poll_latencies.lock() {
            latencies.push(start.elapsed());
        }
        answer
    }

    async fn deployment(&self, url: &str) -> Result<Offer, AgentError> {
        self.inner.deployment(url).await
    }

    async fn download(&self, url: &str, offset: u64) -> Result<Download, AgentError> {
        let mut download = self.inner.download(url, offset).await?;
        let stats = self.stats.clone();
        let drop_now = self.faults.drop_download && !self.dropped.swap(true, Ordering::SeqCst);
        let corrupt = self.faults.corrupt;
        let mut seen = 0u64;
        let bytes = download.bytes.map(move |chunk| {
            let chunk = chunk?;
            seen += chunk.len() as u64;
            stats.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if drop_now && seen > 1024 {
                return Err(AgentError::Network("simulated connection drop".into()));
            }
            if corrupt && !chunk.is_empty() {
                let mut bytes = chunk.to_vec();
                bytes[0] ^= 0xff;
                return Ok(Bytes::from(bytes));
            }
            Ok(chunk)
        });
        download.bytes = Box::pin(bytes);
        Ok(download)
    }

    async fn feedback(&self, url: &str, feedback: &Feedback) -> Result<Delivery, AgentError> {
        self.inner.feedback(url, feedback).await
    }

    async fn cancel_target(&self, url: &str) -> Result<String, AgentError> {
        self.inner.cancel_target(url).await
    }

    async fn cancel_answer(&self, url: &str, stop: &str, accepted: bool) -> Result<(), AgentError> {
        self.inner.cancel_answer(url, stop, accepted).await
    }
}

struct DeviceSpec {
    id: String,
    token: String,
    faults: Faults,
    sleep: Duration,
}

async fn ensure_devices(client: &Client, args: &SimArgs) -> Result<Vec<(String, String)>> {
    if let Some(profile) = &args.profile {
        let _ = client
            .post("/api/v1/profiles", &json!({"name": profile}))
            .await;
    }
    let mut devices = Vec::with_capacity(args.devices);
    let limit = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for i in 0..args.devices {
        let id = format!("{}-{i}", args.prefix);
        // A known token per simulated device, so that a second run reuses the devices.
        let token = format!("{}-token-{i:08}", args.prefix);
        let body = json!({"id": id, "token": token, "profile": args.profile, "tags": args.tags});
        let request = client
            .request(reqwest::Method::POST, "/api/v1/devices")
            .json(&body);
        let limit = limit.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire().await;
            request.send().await.map(|r| r.status())
        }));
        devices.push((id, token));
    }
    for task in tasks {
        let status = task.await?.context("creating a simulated device")?;
        if !status.is_success() && status != reqwest::StatusCode::CONFLICT {
            bail!("creating a simulated device answered {status}");
        }
    }
    Ok(devices)
}

async fn ddi_device(
    server: String,
    http: reqwest::Client,
    spec: DeviceSpec,
    stats: Arc<Stats>,
    started: Instant,
) {
    // One flash for the device's whole life (hashes, not bytes), shared by its boots.
    let flash = Arc::new(tokio::sync::Mutex::new(HashFlash::default()));
    let config = AgentConfig {
        factory_release: Some(Release {
            title: "factory".into(),
            version: "0".into(),
        }),
        ..AgentConfig::default()
    };
    let faults = spec.faults;
    let client = Arc::new(SimServer {
        inner: DdiClient::with_http(http, &server, "DEFAULT", &spec.id, &spec.token),
        faults,
        dropped: std::sync::atomic::AtomicBool::new(false),
        stats: stats.clone(),
    });
    let mut last_running = None;
    loop {
        let hooks = Hooks {
            health: Box::new(move |_| !faults.fail_health),
            ..Hooks::default()
        };
        let started_agent = Agent::start(
            SharedFlash(flash.clone()),
            ArcServer(client.clone()),
            config.clone(),
            hooks,
        )
        .await;
        let (mut agent, outcome) = match started_agent {
            Ok(started) => started,
            Err(_) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(spec.sleep).await;
                continue;
            }
        };
        if last_running.is_some()
            && agent.state().running != last_running
            && let Ok(mut times) = stats.time_to_updated.lock()
        {
            times.push(started.elapsed());
        }
        last_running = agent.state().running.clone();
        if outcome == Some(Outcome::Reboot) {
            continue;
        }
        loop {
            match agent.cycle().await {
                Ok(Outcome::Reboot) => break,
                Ok(Outcome::Idle { sleep }) => {
                    let wait = if sleep.is_zero() {
                        Duration::ZERO
                    } else {
                        spec.sleep
                    };
                    tokio::time::sleep(wait).await;
                }
                Err(_) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(spec.sleep).await;
                }
            }
        }
    }
}

/// A device's flash shared across its boots (the agent owns its flash while it runs).
struct SharedFlash(Arc<tokio::sync::Mutex<HashFlash>>);

impl SharedFlash {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut HashFlash) -> Result<T, AgentError>,
    ) -> Result<T, AgentError> {
        // Only this device's tasks use the lock, one at a time: it is never contended.
        let mut flash = self
            .0
            .try_lock()
            .map_err(|_| AgentError::State("flash busy".into()))?;
        f(&mut flash)
    }
}

impl Flash for SharedFlash {
    fn load_state(&mut self) -> Result<Option<Vec<u8>>, AgentError> {
        self.with(|f| f.load_state())
    }
    fn store_state(&mut self, bytes: &[u8]) -> Result<(), AgentError> {
        self.with(|f| f.store_state(bytes))
    }
    fn slot_len(&mut self, slot: Slot) -> Result<u64, AgentError> {
        self.with(|f| f.slot_len(slot))
    }
    fn write_slot(&mut self, slot: Slot, offset: u64, data: &[u8]) -> Result<(), AgentError> {
        self.with(|f| f.write_slot(slot, offset, data))
    }
    fn truncate_slot(&mut self, slot: Slot) -> Result<(), AgentError> {
        self.with(|f| f.truncate_slot(slot))
    }
    fn slot_sha256(&mut self, slot: Slot, len: u64) -> Result<String, AgentError> {
        self.with(|f| f.slot_sha256(slot, len))
    }
    fn slot_path(&self, _slot: Slot) -> Option<std::path::PathBuf> {
        None
    }
}

/// `Arc<SimServer>` as an `UpdateServer`, so that every boot of a device shares its faults.
struct ArcServer(Arc<SimServer>);

#[async_trait]
impl UpdateServer for ArcServer {
    async fn poll(&self) -> Result<PollAnswer, AgentError> {
        self.0.poll().await
    }
    async fn deployment(&self, url: &str) -> Result<Offer, AgentError> {
        self.0.deployment(url).await
    }
    async fn download(&self, url: &str, offset: u64) -> Result<Download, AgentError> {
        self.0.download(url, offset).await
    }
    async fn feedback(&self, url: &str, feedback: &Feedback) -> Result<Delivery, AgentError> {
        self.0.feedback(url, feedback).await
    }
    async fn cancel_target(&self, url: &str) -> Result<String, AgentError> {
        self.0.cancel_target(url).await
    }
    async fn cancel_answer(&self, url: &str, stop: &str, accepted: bool) -> Result<(), AgentError> {
        self.0.cancel_answer(url, stop, accepted).await
    }
}

/// A Drogue DFU device: Status → Command in packed CBOR over HTTP, 512-byte blocks.
async fn drogue_device(
    server: String,
    http: reqwest::Client,
    spec: DeviceSpec,
    stats: Arc<Stats>,
    started: Instant,
) {
    let mut running = b"0".to_vec();
    let mut writing: Option<(Vec<u8>, Vec<u8>)> = None;
    loop {
        let status = drogue_status(&running, writing.as_ref());
        let start = Instant::now();
        let answer = http
            .post(format!("{server}/v1/dfu"))
            .basic_auth(format!("{}@default", spec.id), Some(&spec.token))
            .header("content-type", "application/json")
            .body(status.to_string())
            .send()
            .await;
        let Ok(answer) = answer else {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(spec.sleep).await;
            continue;
        };
        let Ok(command) = answer.json::<Value>().await else {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(spec.sleep).await;
            continue;
        };
        if let Ok(mut latencies) = stats.poll_latencies.lock() {
            latencies.push(start.elapsed());
        }
        if let Some(write) = command.get("write") {
            let version = write["version"]
                .as_str()
                .unwrap_or_default()
                .as_bytes()
                .to_vec();
            let data = base64_decode(write["data"].as_str().unwrap_or_default());
            stats.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            let offset = write["offset"].as_u64().unwrap_or(0) as usize;
            let image = writing.get_or_insert_with(|| (version.clone(), Vec::new()));
            if offset == 0 {
                *image = (version, Vec::new());
            }
            image.1.truncate(offset);
            image.1.extend_from_slice(&data);
        } else if let Some(swap) = command.get("swap") {
            // The bootloader swaps unless the health check fails, then rolls back.
            if !spec.faults.fail_health {
                running = swap["version"]
                    .as_str()
                    .unwrap_or_default()
                    .as_bytes()
                    .to_vec();
                if let Ok(mut times) = stats.time_to_updated.lock() {
                    times.push(started.elapsed());
                }
            }
            writing = None;
        } else {
            tokio::time::sleep(spec.sleep).await;
        }
    }
}

/// A ThingsBoard device as its SDK behaves: connects with its token, asks for its `fw_*`
/// attributes (and hears pushed ones), downloads in 16 KiB chunks, checks the SHA-256 and reports
/// every `fw_state`.
async fn thingsboard_device(mqtt: String, spec: DeviceSpec, stats: Arc<Stats>, started: Instant) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    use sha2::Digest;
    let (host, port) = mqtt.rsplit_once(':').unwrap_or((mqtt.as_str(), "1883"));
    let mut options = MqttOptions::new(spec.id.clone(), host, port.parse().unwrap_or(1883));
    options.set_credentials(spec.token.clone(), "");
    options.set_keep_alive(Duration::from_secs(60));
    options.set_max_packet_size(64 * 1024 * 1024, 64 * 1024 * 1024);
    let (client, mut events) = AsyncClient::new(options, 64);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Bytes)>(64);
    let poll_stats = stats.clone();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if tx.send((publish.topic, publish.payload)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    poll_stats.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    let publish = |topic: String, payload: Value| {
        let client = client.clone();
        async move {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload.to_string())
                .await
        }
    };
    let _ = client
        .subscribe("v1/devices/me/attributes", QoS::AtLeastOnce)
        .await;
    let _ = client
        .subscribe("v1/devices/me/attributes/response/+", QoS::AtLeastOnce)
        .await;
    let _ = client.subscribe("v2/fw/response/+", QoS::AtLeastOnce).await;
    let mut current = ("factory".to_owned(), "0".to_owned());
    let mut request = 0u64;
    let _ = publish(
        "v1/devices/me/telemetry".into(),
        json!({"current_fw_title": current.0, "current_fw_version": current.1, "fw_state": "IDLE"}),
    )
    .await;
    loop {
        request += 1;
        let asked = Instant::now();
        let keys =
            json!({"sharedKeys": "fw_checksum,fw_checksum_algorithm,fw_size,fw_title,fw_version"});
        let _ = publish(format!("v1/devices/me/attributes/request/{request}"), keys).await;
        // The answer, or a push; then act on whatever it says.
        let wait = tokio::time::timeout(spec.sleep.max(Duration::from_millis(50)), rx.recv()).await;
        let Ok(Some((topic, payload))) = wait else {
            continue;
        };
        if topic.starts_with("v1/devices/me/attributes/response/")
            && let Ok(mut latencies) = stats.poll_latencies.lock()
        {
            latencies.push(asked.elapsed());
        }
        let Ok(attributes) = serde_json::from_slice::<Value>(&payload) else {
            continue;
        };
        let info = attributes.get("shared").unwrap_or(&attributes);
        let (Some(title), Some(version)) = (info["fw_title"].as_str(), info["fw_version"].as_str())
        else {
            tokio::time::sleep(spec.sleep).await;
            continue;
        };
        if (title, version) == (current.0.as_str(), current.1.as_str()) {
            tokio::time::sleep(spec.sleep).await;
            continue;
        }
        let size = info["fw_size"].as_u64().unwrap_or(0);
        let checksum = info["fw_checksum"].as_str().unwrap_or_default().to_owned();
        let _ = publish(
            "v1/devices/me/telemetry".into(),
            json!({"fw_state": "DOWNLOADING"}),
        )
        .await;
        let mut hasher = sha2::Sha256::new();
        let mut chunk = 0u64;
        let mut received = 0u64;
        while received < size {
            let topic = format!("v2/fw/request/{request}/chunk/{chunk}");
            let _ = client
                .publish(topic, QoS::AtLeastOnce, false, "16384")
                .await;
            let Ok(Some((_, data))) =
                tokio::time::timeout(Duration::from_secs(30), rx.recv()).await
            else {
                break;
            };
            if data.is_empty() {
                break;
            }
            received += data.len() as u64;
            hasher.update(&data);
            chunk += 1;
        }
        stats.bytes.fetch_add(received, Ordering::Relaxed);
        let mut digest = hex_lower(&hasher.finalize());
        if spec.faults.corrupt {
            digest = "corrupted".to_owned();
        }
        if digest != checksum {
            let failed = json!({"fw_state": "FAILED", "fw_error": "Checksum verification failed!"});
            let _ = publish("v1/devices/me/telemetry".into(), failed).await;
            // Like the SDK, ask again; the server will not offer a failed update again.
            tokio::time::sleep(spec.sleep).await;
            continue;
        }
        for state in ["DOWNLOADED", "VERIFIED", "UPDATING"] {
            let _ = publish("v1/devices/me/telemetry".into(), json!({"fw_state": state})).await;
        }
        if spec.faults.fail_health {
            let failed = json!({"fw_state": "FAILED", "fw_error": "the new firmware failed its health check"});
            let _ = publish("v1/devices/me/telemetry".into(), failed).await;
            tokio::time::sleep(spec.sleep).await;
            continue;
        }
        current = (title.to_owned(), version.to_owned());
        let done = json!({"current_fw_title": current.0, "current_fw_version": current.1, "fw_state": "UPDATED"});
        let _ = publish("v1/devices/me/telemetry".into(), done).await;
        if let Ok(mut times) = stats.time_to_updated.lock() {
            times.push(started.elapsed());
        }
        tokio::time::sleep(spec.sleep).await;
    }
}

/// A Frugal-IoT node: `GET /ota_update/default/sim/{node}/{ota_key}` with its sketch's MD5, as
/// the Arduino `httpUpdate` client sends it; a 200 is "flashed" if its MD5 matches `x-MD5`.
async fn frugal_device(
    server: String,
    http: reqwest::Client,
    spec: DeviceSpec,
    ota_key: String,
    stats: Arc<Stats>,
    started: Instant,
) {
    use sha2::Digest;
    let mut running_md5 = "00000000000000000000000000000000".to_owned();
    let url = format!("{server}/ota_update/default/sim/{}/{ota_key}", spec.id);
    // httpUpdate has no way to report a failure: a bad download is simply retried at the next
    // check-in, so over Frugal the faults strike once.
    let (mut drop_once, mut corrupt_once) = (spec.faults.drop_download, spec.faults.corrupt);
    loop {
        let start = Instant::now();
        let answer = http
            .get(&url)
            .header("user-agent", "ESP8266-http-Update")
            .header("x-ESP8266-sketch-md5", &running_md5)
            .header("x-ESP8266-free-space", "4000000")
            .header("x-ESP8266-mode", "sketch")
            .send()
            .await;
        let Ok(answer) = answer else {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(spec.sleep).await;
            continue;
        };
        if let Ok(mut latencies) = stats.poll_latencies.lock() {
            latencies.push(start.elapsed());
        }
        if answer.status() == reqwest::StatusCode::OK {
            let expected = answer
                .headers()
                .get("x-md5")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let mut md5 = md5_state();
            let mut body = answer.bytes_stream();
            let mut broken = false;
            let mut received = 0u64;
            while let Some(chunk) = body.next().await {
                let Ok(mut chunk) = chunk.map(|c| c.to_vec()) else {
                    broken = true;
                    break;
                };
                received += chunk.len() as u64;
                if drop_once && received > 1024 {
                    drop_once = false;
                    broken = true;
                    break;
                }
                if corrupt_once && let Some(first) = chunk.first_mut() {
                    corrupt_once = false;
                    *first ^= 0xff;
                }
                md5.update(&chunk);
            }
            stats.bytes.fetch_add(received, Ordering::Relaxed);
            let got = hex_lower(&md5.finalize());
            if !broken && got == expected {
                running_md5 = got;
                if let Ok(mut times) = stats.time_to_updated.lock() {
                    times.push(started.elapsed());
                }
                // The node reboots into the new sketch and checks in at once.
                continue;
            }
            stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(spec.sleep).await;
    }
}

fn md5_state() -> md5::Md5 {
    <md5::Md5 as sha2::Digest>::new()
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn drogue_status(running: &[u8], writing: Option<&(Vec<u8>, Vec<u8>)>) -> Value {
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    match writing {
        Some((version, image)) => {
            json!({"version": text(running), "mtu": 512, "update": {"version": text(version), "offset": image.len()}})
        }
        None => json!({"version": text(running), "mtu": 512}),
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for byte in text.bytes() {
        let Some(value) = ALPHABET.iter().position(|c| *c == byte) else {
            continue;
        };
        buffer = (buffer << 6) | value as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    out
}

const STATES: [&str; 9] = [
    "QUEUED",
    "INITIATED",
    "DOWNLOADING",
    "DOWNLOADED",
    "VERIFIED",
    "UPDATING",
    "UPDATED",
    "FAILED",
    "CANCELED",
];

/// Runs the simulation; prints a summary at the end.
pub async fn run(client: &Client, args: SimArgs, json_output: bool) -> Result<()> {
    if !matches!(
        args.protocol.as_str(),
        "ddi" | "drogue" | "frugal" | "thingsboard"
    ) {
        bail!(
            "unknown protocol {:?}: use ddi, drogue, frugal or thingsboard",
            args.protocol
        );
    }
    let mqtt = match &args.mqtt {
        Some(addr) => addr.clone(),
        None => {
            let host = client
                .base
                .trim_start_matches("http://")
                .trim_start_matches("https://");
            let host = host.split(['/', ':']).next().unwrap_or("127.0.0.1");
            format!("{host}:1883")
        }
    };
    let devices = ensure_devices(client, &args).await?;
    let stats = Arc::new(Stats::default());
    // Spread the seed's bits so that small seeds do not start from small states.
    let mut rng = Rng(args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    for _ in 0..8 {
        rng.next();
    }
    let mut injected = [0u64; 3];
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.devices.max(1))
        .build()?;
    let started = Instant::now();
    for (id, token) in devices {
        let faults = Faults {
            drop_download: rng.unit() < args.drop_download,
            corrupt: rng.unit() < args.corrupt,
            fail_health: rng.unit() < args.fail_health,
        };
        injected[0] += u64::from(faults.drop_download);
        injected[1] += u64::from(faults.corrupt);
        injected[2] += u64::from(faults.fail_health);
        let jitter = 1.0 + args.jitter.clamp(0.0, 1.0) * (rng.unit() * 2.0 - 1.0);
        let sleep = Duration::from_secs_f64((args.poll * jitter).max(0.01));
        let spec = DeviceSpec {
            id,
            token,
            faults,
            sleep,
        };
        let (server, http, stats) = (client.base.clone(), http.clone(), stats.clone());
        match args.protocol.as_str() {
            "drogue" => tokio::spawn(drogue_device(server, http, spec, stats, started)),
            "thingsboard" => tokio::spawn(thingsboard_device(mqtt.clone(), spec, stats, started)),
            "frugal" => {
                let ota_key = args
                    .profile
                    .clone()
                    .unwrap_or_else(|| format!("{}-key", args.prefix));
                tokio::spawn(frugal_device(server, http, spec, ota_key, stats, started))
            }
            _ => tokio::spawn(ddi_device(server, http, spec, stats, started)),
        };
    }
    if let Some(release) = &args.assign {
        let mut body = json!({"artifact": release});
        match &args.profile {
            Some(profile) => body["profile"] = json!(profile),
            None => body["tenant_default"] = json!(true),
        }
        client
            .post("/api/v1/assignments", &body)
            .await
            .context("assigning")?;
    }

    let bars = MultiProgress::new();
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{prefix:>12} {bar:40} {pos}/{len}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let by_state: Vec<ProgressBar> = STATES
        .iter()
        .map(|state| {
            let bar = bars.add(ProgressBar::new(args.devices as u64));
            bar.set_style(style.clone());
            bar.set_prefix(*state);
            bar
        })
        .collect();
    let deadline = started + Duration::from_secs(args.timeout);
    let mut counts;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let history = device_states(client, &args).await.unwrap_or_default();
        counts = serde_json::Map::new();
        for state in &history {
            let n = counts.get(state).and_then(Value::as_u64).unwrap_or(0);
            counts.insert(state.clone(), json!(n + 1));
        }
        for (bar, state) in by_state.iter().zip(STATES) {
            bar.set_position(counts.get(state).and_then(Value::as_u64).unwrap_or(0));
        }
        let finished = history
            .iter()
            .filter(|s| matches!(s.as_str(), "UPDATED" | "FAILED" | "CANCELED"))
            .count();
        let done = args.until_done && args.assign.is_some() && finished == args.devices;
        if done || (args.until_done && Instant::now() > deadline) {
            break;
        }
    }
    for bar in by_state {
        bar.finish_and_clear();
    }
    let duration = started.elapsed();
    let mut polls = stats
        .poll_latencies
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    let mut updated = stats
        .time_to_updated
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
    let summary = json!({
        "devices": args.devices,
        "protocol": args.protocol,
        "final_states": counts,
        "campaign_seconds": duration.as_secs_f64(),
        "poll_latency_ms": {"p50": ms(percentile(&mut polls, 0.5)), "p99": ms(percentile(&mut polls, 0.99)), "count": polls.len()},
        "time_to_updated_ms": {"p50": ms(percentile(&mut updated, 0.5)), "p99": ms(percentile(&mut updated, 0.99)), "count": updated.len()},
        "bytes": stats.bytes.load(Ordering::Relaxed),
        "errors": stats.errors.load(Ordering::Relaxed),
        "injected": {"drop_download": injected[0], "corrupt": injected[1], "fail_health": injected[2]},
    });
    if json_output {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        );
    } else {
        println!(
            "{} {} devices, {:.1} s",
            args.devices,
            args.protocol,
            duration.as_secs_f64()
        );
        println!(
            "final states   {}",
            Value::Object(
                summary["final_states"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default()
            )
        );
        let show = |v: &Value| {
            v.as_f64()
                .map(|ms| format!("{ms:.1} ms"))
                .unwrap_or_else(|| "-".to_owned())
        };
        let line = |name: &str, key: &str| {
            println!(
                "{name:<14} p50 {}, p99 {}",
                show(&summary[key]["p50"]),
                show(&summary[key]["p99"])
            );
        };
        line("poll latency", "poll_latency_ms");
        line("to UPDATED", "time_to_updated_ms");
        println!("bytes          {}", summary["bytes"]);
        println!("errors         {}", summary["errors"]);
        println!("injected       {}", summary["injected"]);
    }
    Ok(())
}

/// The state of each device's latest update in the tenant, as the server counts them (the
/// simulated devices are the fleet the simulation watches).
async fn device_states(client: &Client, _args: &SimArgs) -> Result<Vec<String>> {
    let status = client.get("/api/v1/status").await?;
    let mut states = Vec::new();
    if let Some(actions) = status["actions"].as_object() {
        for (state, n) in actions {
            for _ in 0..n.as_u64().unwrap_or(0) {
                states.push(state.clone());
            }
        }
    }
    Ok(states)
}
