//! The crates.io `rustot` OTA agent (no_std, as on a microcontroller) updates from Updraft. A
//! small std harness gives it what a device would: an MQTT connection (packets encoded and parsed
//! with rumqttc's codec over a TCP socket), a millisecond timer, and a platform layer that keeps
//! the image in memory, checks its real ECDSA signature (rustot holds only a short stand-in, see
//! the reference) and "reboots". The job comes by `$next/get`, the file in CBOR block windows
//! with a bitmap, then a reboot into a self test that ends the job SUCCEEDED.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use rumqttc::mqttbytes::QoS as RQoS;
use rumqttc::mqttbytes::v4::{Connect, Packet as RPacket, Publish, Subscribe, SubscribeFilter};
use rustot::jobs::data_types::{DescribeJobExecutionResponse, NextJobExecutionChanged};
use rustot::ota::agent::OtaAgent;
use rustot::ota::encoding::FileContext;
use rustot::ota::encoding::json::OtaJob;
use rustot::ota::pal::{ImageState, OtaPal, OtaPalError, PalImageState, Version};
use rustot::ota::state::States;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::TestApp;

/// The job document's one top-level key, as rustot's users declare it.
#[derive(Debug, Deserialize)]
enum Jobs<'a> {
    #[serde(rename = "afr_ota")]
    #[serde(borrow)]
    Ota(OtaJob<'a>),
}

/// mqttrust's client trait over a socket: rustot's packets are re-encoded with rumqttc's codec.
struct Link {
    id: String,
    socket: Mutex<TcpStream>,
    next_pkid: Mutex<u16>,
}

impl Link {
    fn write(&self, packet: RPacket) -> Result<(), mqttrust::MqttError> {
        let mut buf = BytesMut::new();
        packet
            .write(&mut buf, usize::MAX)
            .map_err(|_| mqttrust::MqttError::Full)?;
        self.socket
            .lock()
            .map_err(|_| mqttrust::MqttError::Full)?
            .write_all(&buf)
            .map_err(|_| mqttrust::MqttError::Full)
    }

    fn pkid(&self) -> u16 {
        let mut next = self.next_pkid.lock().unwrap_or_else(|e| e.into_inner());
        *next = next.wrapping_add(1).max(1);
        *next
    }
}

fn qos(q: mqttrust::QoS) -> RQoS {
    match q {
        mqttrust::QoS::AtMostOnce => RQoS::AtMostOnce,
        mqttrust::QoS::AtLeastOnce => RQoS::AtLeastOnce,
        mqttrust::QoS::ExactlyOnce => RQoS::ExactlyOnce,
    }
}

impl mqttrust::Mqtt for Link {
    fn send(&self, packet: mqttrust::Packet<'_>) -> Result<(), mqttrust::MqttError> {
        match packet {
            mqttrust::Packet::Publish(p) => {
                let mut publish = Publish::new(p.topic_name, qos(p.qos), p.payload.to_vec());
                if publish.qos != RQoS::AtMostOnce {
                    publish.pkid = self.pkid();
                }
                self.write(RPacket::Publish(publish))
            }
            mqttrust::Packet::Subscribe(s) => {
                let filters: Vec<SubscribeFilter> = s
                    .topics()
                    .map(|t| SubscribeFilter::new(t.topic_path.to_owned(), qos(t.qos)))
                    .collect();
                let mut subscribe = Subscribe::new_many(filters);
                subscribe.pkid = self.pkid();
                self.write(RPacket::Subscribe(subscribe))
            }
            // Unsubscribes and the rest change nothing the test looks at.
            _ => Ok(()),
        }
    }

    fn client_id(&self) -> &str {
        &self.id
    }
}

/// A millisecond timer on the system clock.
struct Clock {
    start: Instant,
    deadline: Option<u32>,
}

impl Clock {
    fn new() -> Self {
        Clock {
            start: Instant::now(),
            deadline: None,
        }
    }

    fn ms(&self) -> u32 {
        u32::try_from(self.start.elapsed().as_millis()).unwrap_or(u32::MAX)
    }
}

impl fugit_timer::Timer<1000> for Clock {
    type Error = std::convert::Infallible;

    fn now(&mut self) -> fugit_timer::TimerInstantU32<1000> {
        fugit_timer::TimerInstantU32::from_ticks(self.ms())
    }

    fn start(&mut self, duration: fugit_timer::TimerDurationU32<1000>) -> Result<(), Self::Error> {
        self.deadline = Some(self.ms() + duration.ticks());
        Ok(())
    }

    fn cancel(&mut self) -> Result<(), Self::Error> {
        self.deadline = None;
        Ok(())
    }

    fn wait(&mut self) -> nb::Result<(), Self::Error> {
        match self.deadline {
            Some(deadline) if deadline <= self.ms() => {
                self.deadline = None;
                Ok(())
            }
            _ => Err(nb::Error::WouldBlock),
        }
    }
}

/// What survives a "reboot" of the device.
#[derive(Default)]
struct Device {
    image: Vec<u8>,
    /// The new image waits for its self test.
    pending_commit: bool,
    reset_requested: bool,
    accepted: bool,
    signature_ok: Option<bool>,
    /// The version running now (rustot compares it with the one that started the update).
    version: (u8, u8, u8),
}

struct Pal {
    device: Arc<Mutex<Device>>,
    key: VerifyingKey,
    signature: Signature,
}

impl OtaPal for Pal {
    type Error = ();

    fn abort(&mut self, _file: &FileContext) -> Result<(), OtaPalError<()>> {
        Ok(())
    }

    fn create_file_for_rx(&mut self, file: &FileContext) -> Result<(), OtaPalError<()>> {
        let mut device = self.device.lock().map_err(|_| OtaPalError::BadFileHandle)?;
        device.image = vec![0; file.filesize];
        Ok(())
    }

    fn get_platform_image_state(&mut self) -> Result<PalImageState, OtaPalError<()>> {
        let device = self.device.lock().map_err(|_| OtaPalError::BadImageState)?;
        Ok(if device.pending_commit {
            PalImageState::PendingCommit
        } else {
            PalImageState::Valid
        })
    }

    fn set_platform_image_state(&mut self, state: ImageState<()>) -> Result<(), OtaPalError<()>> {
        let mut device = self.device.lock().map_err(|_| OtaPalError::BadImageState)?;
        if let ImageState::Accepted = state {
            device.pending_commit = false;
            device.accepted = true;
        }
        Ok(())
    }

    fn reset_device(&mut self) -> Result<(), OtaPalError<()>> {
        let mut device = self.device.lock().map_err(|_| OtaPalError::BadImageState)?;
        device.reset_requested = true;
        device.pending_commit = true;
        Ok(())
    }

    fn close_file(&mut self, _file: &FileContext) -> Result<(), OtaPalError<()>> {
        // The platform's signature check: ECDSA P-256 over the image's SHA-256.
        let mut device = self
            .device
            .lock()
            .map_err(|_| OtaPalError::FileCloseFailed)?;
        let digest = Sha256::digest(&device.image);
        let ok = self.key.verify_prehash(&digest, &self.signature).is_ok();
        device.signature_ok = Some(ok);
        if ok {
            Ok(())
        } else {
            Err(OtaPalError::SignatureCheckFailed)
        }
    }

    fn write_block(
        &mut self,
        _file: &FileContext,
        offset: usize,
        payload: &[u8],
    ) -> Result<usize, OtaPalError<()>> {
        let mut device = self
            .device
            .lock()
            .map_err(|_| OtaPalError::FileWriteFailed)?;
        let end = offset + payload.len();
        if end > device.image.len() {
            return Err(OtaPalError::FileTooLarge);
        }
        device.image[offset..end].copy_from_slice(payload);
        Ok(payload.len())
    }

    fn get_active_firmware_version(&self) -> Result<Version, OtaPalError<()>> {
        let (major, minor, patch) = self
            .device
            .lock()
            .map_err(|_| OtaPalError::VersionCheck)?
            .version;
        Ok(Version::new(major, minor, patch))
    }
}

/// Connects to the endpoint as `id`; returns the link and the incoming publishes.
fn connect(port: u16, id: &str, token: &str) -> (Arc<Link>, Receiver<(String, Vec<u8>)>) {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut connect = Connect::new(id);
    connect.set_login(id, token);
    connect.keep_alive = 0;
    let mut buf = BytesMut::new();
    RPacket::Connect(connect)
        .write(&mut buf, usize::MAX)
        .unwrap();
    socket.write_all(&buf).unwrap();
    let reader = socket.try_clone().unwrap();
    let link = Arc::new(Link {
        id: id.to_owned(),
        socket: Mutex::new(socket),
        next_pkid: Mutex::new(0),
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || read_loop(reader, tx));
    (link, rx)
}

fn read_loop(mut socket: TcpStream, tx: Sender<(String, Vec<u8>)>) {
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        loop {
            match RPacket::read(&mut buf, 1 << 20) {
                Ok(RPacket::Publish(p)) => {
                    if tx.send((p.topic, p.payload.to_vec())).is_err() {
                        return;
                    }
                }
                Ok(RPacket::ConnAck(ack)) => {
                    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        match socket.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn state_name(state: &States) -> &'static str {
    match state {
        States::CreatingFile => "CreatingFile",
        States::Ready => "Ready",
        States::RequestingFileBlock => "RequestingFileBlock",
        States::RequestingJob => "RequestingJob",
        States::Restarting => "Restarting",
        States::Suspended => "Suspended",
        States::WaitingForFileBlock => "WaitingForFileBlock",
        States::WaitingForJob => "WaitingForJob",
    }
}

/// Runs one "boot" of the device until the agent restarts it or `done` says so.
fn boot(
    port: u16,
    id: &str,
    token: &str,
    device: &Arc<Mutex<Device>>,
    key: VerifyingKey,
    signature: Signature,
    done: impl Fn(&Device) -> bool,
) {
    let (link, incoming) = connect(port, id, token);
    let pal = Pal {
        device: device.clone(),
        key,
        signature,
    };
    let mut agent = OtaAgent::builder(link.as_ref(), link.as_ref(), Clock::new(), pal)
        .block_size(1024)
        .request_wait_ms(2000)
        .activate_delay(0)
        .build();
    agent.init();
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "rustot did not finish: {}",
            state_name(agent.state())
        );
        // The agent is timer-driven (request retries, status updates): wake it at least every
        // 10 ms, and at once for every message.
        match incoming.recv_timeout(Duration::from_millis(10)) {
            Ok((topic, mut payload)) => {
                if let Some(rustot::jobs::Topic::NotifyNext) = rustot::jobs::Topic::from_str(&topic)
                {
                    if let Ok((changed, _)) =
                        serde_json_core::from_slice::<NextJobExecutionChanged<Jobs>>(&payload)
                        && let Some(job) = changed.execution
                        && let Some(Jobs::Ota(document)) = job.job_document
                    {
                        agent
                            .job_update(job.job_id, &document, job.status_details.as_ref())
                            .unwrap();
                    }
                } else if let Some(rustot::jobs::Topic::DescribeAccepted(_)) =
                    rustot::jobs::Topic::from_str(&topic)
                {
                    let (described, _) =
                        serde_json_core::from_slice::<DescribeJobExecutionResponse<Jobs>>(&payload)
                            .unwrap_or_else(|e| {
                                panic!(
                                    "rustot's types read {}: {e:?}",
                                    String::from_utf8_lossy(&payload)
                                )
                            });
                    if let Some(job) = described.execution
                        && let Some(Jobs::Ota(document)) = job.job_document
                    {
                        agent
                            .job_update(job.job_id, &document, job.status_details.as_ref())
                            .unwrap();
                    }
                } else if let Some(rustot::ota::Topic::Data(..)) =
                    rustot::ota::Topic::from_str(&topic)
                {
                    let _ = agent.handle_message(&mut payload);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => panic!("the server closed the connection"),
        }
        agent.timer_callback().unwrap();
        // Restarting comes before the platform is asked to activate: run until it is.
        let _ = agent.process_event();
        if device.lock().is_ok_and(|d| done(&d)) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rustot_ota_agent_updates_and_self_tests() {
    let app = TestApp::new().await;
    let image: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let signing = SigningKey::from_slice(&[0x42; 32]).unwrap();
    let signature: Signature = signing.sign_prehash(&Sha256::digest(&image)).unwrap();
    let key = *signing.verifying_key();
    let token = app.device("rustot-1").await;
    // rustot keeps at most 64 bytes of signature and panics beyond: the job carries a stand-in,
    // the platform layer checks the real one.
    let uploaded = app
        .upload(
            "title=ota-fw&version=0.2.0&filename=firmware.bin&signature=c3RhbmQtaW4%3D",
            &image,
        )
        .await;
    assert!(uploaded.status.is_success(), "{:?}", uploaded.json());
    app.post(
        "/api/v1/assignments",
        json!({"device": "rustot-1", "artifact": "ota-fw@0.2.0"}),
    )
    .await;
    let (_, port) = app.listen_mqtt().await;
    let device = Arc::new(Mutex::new(Device {
        version: (0, 1, 0),
        ..Device::default()
    }));

    // First boot: take the job, download in windows, check the signature, ask for a reset.
    let (d, t) = (device.clone(), token.clone());
    tokio::task::spawn_blocking(move || {
        boot(port, "rustot-1", &t, &d, key, signature, |d| {
            d.reset_requested
        })
    })
    .await
    .unwrap();
    {
        let d = device.lock().unwrap();
        assert_eq!(d.signature_ok, Some(true));
        assert!(d.image == image, "byte-identical");
    }
    // rustot says "ready" at QoS 0 and resets at once: await the server's record of it.
    let started = Instant::now();
    loop {
        let shown = app.get("/api/v1/devices/rustot-1").await.json();
        if shown["active_action"]["state"] == "VERIFIED" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{shown}");
        tokio::task::yield_now().await;
    }

    // Reboot into the new image: the self test reads the job again and accepts it.
    device.lock().unwrap().version = (0, 2, 0);
    let (d, t) = (device.clone(), token.clone());
    tokio::task::spawn_blocking(move || {
        boot(port, "rustot-1", &t, &d, key, signature, |d| d.accepted)
    })
    .await
    .unwrap();
    // The agent reports SUCCEEDED right after accepting: wait for the server to have it.
    let started = Instant::now();
    let history = loop {
        let history = app.get("/api/v1/devices/rustot-1/history").await.json();
        if history[0]["state"] != "UPDATING" && history[0]["state"] != "VERIFIED" {
            break history;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{history}");
        tokio::task::yield_now().await;
    };
    assert_eq!(history[0]["state"], "UPDATED", "{history}");
    let states = crate::applied_states(&history[0]);
    assert_eq!(
        states,
        [
            "QUEUED",
            "INITIATED",
            "DOWNLOADING",
            "DOWNLOADED",
            "VERIFIED",
            "UPDATING",
            "UPDATED"
        ]
    );
    let shown = app.get("/api/v1/devices/rustot-1").await.json();
    assert_eq!(shown["firmware"]["version"], "0.2.0");
}
