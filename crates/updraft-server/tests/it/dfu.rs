//! Drogue DFU with the crates.io `embedded-update` wire types as the device: whole updates over
//! HTTP and MQTT, resume after a power loss, rollback detection, the three encodings, bad input.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::Engine;
use embedded_update::{Command, Status};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::TestApp;

/// How a Status is put on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Form {
    Packed,
    Named,
}

/// A device as `embedded-update`'s FirmwareUpdater drives one: it runs `running`, may be writing
/// an image, and reports both in every Status.
struct Device {
    running: Vec<u8>,
    writing: Option<(Vec<u8>, Vec<u8>)>, // (version, bytes so far)
    mtu: u32,
    /// Offsets of every Write received, in order.
    writes: Vec<u32>,
}

enum Step {
    Continue,
    Swapped { version: Vec<u8>, checksum_ok: bool },
    Synced,
}

impl Device {
    fn new(running: &str, mtu: u32) -> Self {
        Device {
            running: running.as_bytes().to_vec(),
            writing: None,
            mtu,
            writes: Vec::new(),
        }
    }

    fn status(&self, form: Form) -> Vec<u8> {
        let status = match &self.writing {
            Some((version, bytes)) => Status::update(
                &self.running,
                Some(self.mtu),
                bytes.len() as u32,
                version,
                Some(7),
            ),
            None => Status::first(&self.running, Some(self.mtu), Some(7)),
        };
        match form {
            Form::Packed => serde_cbor::ser::to_vec_packed(&status).unwrap(),
            Form::Named => serde_cbor::to_vec(&status).unwrap(),
        }
    }

    fn apply(&mut self, answer: &[u8]) -> Step {
        let command: Command = serde_cbor::from_slice(answer).unwrap();
        match command {
            Command::Write {
                version,
                correlation_id,
                offset,
                data,
            } => {
                assert_eq!(correlation_id, Some(7), "correlation_id is echoed");
                assert!(
                    !data.is_empty() && data.len() as u32 <= self.mtu,
                    "never empty, never over the MTU"
                );
                let writing = self
                    .writing
                    .get_or_insert_with(|| (version.to_vec(), Vec::new()));
                if offset == 0 {
                    *writing = (version.to_vec(), Vec::new());
                }
                assert_eq!(
                    offset as usize,
                    writing.1.len(),
                    "drogue-device accepts only its next offset"
                );
                writing.1.extend_from_slice(&data);
                self.writes.push(offset);
                Step::Continue
            }
            Command::Swap {
                version, checksum, ..
            } => {
                let (_, bytes) = self.writing.as_ref().expect("a swap after writing");
                let checksum_ok = Sha256::digest(bytes).as_slice() == &checksum[..];
                Step::Swapped {
                    version: version.to_vec(),
                    checksum_ok,
                }
            }
            Command::Sync { version, .. } => {
                assert_eq!(version.as_ref(), self.running.as_slice());
                Step::Synced
            }
            Command::Wait { .. } => panic!("the server has no reason to make us wait"),
        }
    }
}

fn basic(user: &str, token: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"))
    )
}

async fn post(
    app: &TestApp,
    auth: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> crate::Answer {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri("/v1/dfu?ct=30")
        .header("authorization", auth);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    app.send(request.body(Body::from(body)).unwrap()).await
}

/// Runs the device against the server until `stop` says so; returns the last step.
async fn run(
    app: &TestApp,
    auth: &str,
    device: &mut Device,
    form: Form,
    max_writes: usize,
) -> Step {
    let content_type = if form == Form::Packed {
        Some("application/cbor")
    } else {
        None
    };
    for _ in 0..max_writes {
        let answer = post(app, auth, content_type, device.status(form)).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{:?}",
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(
            answer.headers["content-length"],
            answer.body.len().to_string()
        );
        assert_eq!(answer.headers["content-type"], "application/cbor");
        match device.apply(&answer.body) {
            Step::Continue => {}
            other => return other,
        }
    }
    Step::Continue
}

fn image(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 17 % 251) as u8).collect()
}

async fn setup(app: &TestApp, data: &[u8]) -> String {
    let token = app.device("dfu-1").await;
    app.upload("title=dfu-fw&version=2.0.0", data).await;
    app.post(
        "/api/v1/assignments",
        json!({"device": "dfu-1", "artifact": "dfu-fw@2.0.0"}),
    )
    .await;
    basic("dfu-1@default", &token)
}

#[tokio::test]
async fn an_embedded_update_device_updates_over_http_in_both_cbor_forms() {
    for form in [Form::Packed, Form::Named] {
        let app = TestApp::new().await;
        let data = image(5000);
        let auth = setup(&app, &data).await;
        let mut device = Device::new("1.0.0", 512);
        let Step::Swapped {
            version,
            checksum_ok,
        } = run(&app, &auth, &mut device, form, 100).await
        else {
            panic!("no swap")
        };
        assert!(checksum_ok);
        assert_eq!(device.writing.as_ref().unwrap().1, data, "byte-identical");
        assert_eq!(device.writes.len(), 10, "5000 bytes in 512-byte blocks");
        // The device reboots into the new image and reports it: Sync, UPDATED.
        device.running = version;
        device.writing = None;
        assert!(matches!(
            run(&app, &auth, &mut device, form, 1).await,
            Step::Synced
        ));
        let shown = app.get("/api/v1/devices/dfu-1").await.json();
        assert_eq!(
            shown["firmware"],
            json!({"title": "dfu-fw", "version": "2.0.0"})
        );
        let history = app.get("/api/v1/devices/dfu-1/history").await.json();
        let mut states: Vec<&str> = history[0]["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["to"].as_str().unwrap())
            .collect();
        states.dedup();
        assert_eq!(
            states,
            [
                "QUEUED",
                "INITIATED",
                "DOWNLOADING",
                "DOWNLOADED",
                "UPDATING",
                "UPDATED"
            ],
            "{form:?}"
        );
    }
}

#[tokio::test]
async fn a_power_loss_resumes_from_the_reported_offset() {
    let app = TestApp::new().await;
    let data = image(4096);
    let auth = setup(&app, &data).await;
    let mut device = Device::new("1.0.0", 256);
    run(&app, &auth, &mut device, Form::Packed, 5).await;
    assert_eq!(device.writes, [0, 256, 512, 768, 1024]);
    // A device reporting an offset past the end starts over at 0.
    let mut confused = Device::new("1.0.0", 4096);
    confused.writing = Some((b"2.0.0".to_vec(), vec![0; 9000]));
    run(&app, &auth, &mut confused, Form::Packed, 1).await;
    assert_eq!(confused.writes, [0]);
    // Power loss: the device comes back with what it persisted, and asks again.
    device.writes.clear();
    let Step::Swapped { checksum_ok, .. } = run(&app, &auth, &mut device, Form::Packed, 100).await
    else {
        panic!("no swap")
    };
    assert!(checksum_ok);
    assert_eq!(
        device.writes.first(),
        Some(&1280),
        "no byte before the reported offset is sent again"
    );
}

#[tokio::test]
async fn a_rollback_after_the_swap_is_detected_and_not_retried() {
    let app = TestApp::new().await;
    let data = image(1000);
    let auth = setup(&app, &data).await;
    let mut device = Device::new("1.0.0", 512);
    assert!(matches!(
        run(&app, &auth, &mut device, Form::Packed, 10).await,
        Step::Swapped { .. }
    ));
    // The new image never got confirmed: the bootloader rolled back, the image is gone.
    device.writing = None;
    assert!(matches!(
        run(&app, &auth, &mut device, Form::Packed, 1).await,
        Step::Synced
    ));
    let history = app.get("/api/v1/devices/dfu-1/history").await.json();
    assert_eq!(history[0]["state"], "FAILED");
    assert!(
        history[0]["failure"]["reason"]
            .as_str()
            .unwrap()
            .contains("rolled back")
    );
    // And it is not sent again (Ajour sent it forever).
    assert!(matches!(
        run(&app, &auth, &mut device, Form::Packed, 1).await,
        Step::Synced
    ));
    assert_eq!(device.writes.len(), 2);
    // Until someone assigns it again.
    app.post(
        "/api/v1/assignments",
        json!({"device": "dfu-1", "artifact": "dfu-fw@2.0.0"}),
    )
    .await;
    run(&app, &auth, &mut device, Form::Packed, 1).await;
    assert_eq!(device.writes.last(), Some(&0));
}

#[tokio::test]
async fn a_device_already_on_the_target_gets_sync_and_its_update_ends() {
    let app = TestApp::new().await;
    let auth = setup(&app, &image(100)).await;
    let mut device = Device::new("2.0.0", 512);
    assert!(matches!(
        run(&app, &auth, &mut device, Form::Packed, 1).await,
        Step::Synced
    ));
    let history = app.get("/api/v1/devices/dfu-1/history").await.json();
    assert_eq!(history[0]["state"], "UPDATED");
}

#[tokio::test]
async fn json_statuses_get_json_commands() {
    let app = TestApp::new().await;
    let data = image(700);
    let auth = setup(&app, &data).await;
    let status = json!({"version": "1.0.0", "mtu": 512, "correlation_id": null, "status": {"version": "2.0.0", "offset": 512}});
    let answer = post(&app, &auth, None, status.to_string().into_bytes()).await;
    assert_eq!(answer.headers["content-type"], "application/json");
    let command = answer.json();
    assert_eq!(command["write"]["offset"], 512);
    let block = base64::engine::general_purpose::STANDARD
        .decode(command["write"]["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(block, &data[512..]);
    let done = json!({"version": "1.0.0", "update": {"version": "2.0.0", "offset": 700}});
    let swap = post(
        &app,
        &auth,
        Some("application/json"),
        done.to_string().into_bytes(),
    )
    .await
    .json();
    assert_eq!(swap["swap"]["checksum"], hex::encode(Sha256::digest(&data)));
}

#[tokio::test]
async fn bad_credentials_and_bad_statuses_get_clear_errors() {
    let app = TestApp::new().await;
    let auth = setup(&app, &image(10)).await;
    let token = auth.clone();
    app.post("/api/v1/tenants", json!({"name": "other"})).await;
    let good = Device::new("1.0.0", 512).status(Form::Packed);
    let other_token = {
        let key = app
            .post(
                "/api/v1/tenants/other/api-keys",
                json!({"name": "k", "role": "admin"}),
            )
            .await
            .json();
        let created = app
            .call(
                Method::POST,
                "/api/v1/devices",
                key["token"].as_str().unwrap(),
                Some(json!({"id": "dfu-1"})),
            )
            .await;
        created.json()["token"].as_str().unwrap().to_owned()
    };
    for (auth, expected) in [
        (basic("dfu-1@default", "wrong"), StatusCode::UNAUTHORIZED),
        (basic("dfu-1@other", &other_token[..]), StatusCode::OK),
        (basic("dfu-1", &other_token[..]), StatusCode::UNAUTHORIZED),
        (basic("nosuch@default", "x"), StatusCode::UNAUTHORIZED),
        ("Bearer x".to_owned(), StatusCode::UNAUTHORIZED),
        (String::new(), StatusCode::UNAUTHORIZED),
    ] {
        let mut request = Request::builder().method(Method::POST).uri("/v1/dfu");
        if !auth.is_empty() {
            request = request.header("authorization", auth.clone());
        }
        let answer = app
            .send(request.body(Body::from(good.clone())).unwrap())
            .await;
        assert_eq!(answer.status, expected, "{auth}");
    }
    let zero_mtu = serde_cbor::ser::to_vec_packed(&Status::first(b"1.0.0", Some(0), None)).unwrap();
    for (content_type, body) in [
        (Some("application/cbor"), vec![0xff, 0x00]),
        (Some("application/cbor"), vec![0xa1, 0x00]),
        (Some("application/json"), b"{\"mtu\":1}".to_vec()),
        (None, b"{not json".to_vec()),
        (Some("application/cbor"), zero_mtu),
    ] {
        let answer = post(&app, &token, content_type, body.clone()).await;
        assert_eq!(
            (answer.status, answer.code().as_str()),
            (StatusCode::BAD_REQUEST, "invalid_status"),
            "{body:?}"
        );
    }
    // An absurd MTU is capped, never trusted.
    let huge =
        serde_cbor::ser::to_vec_packed(&Status::first(b"1.0.0", Some(u32::MAX), None)).unwrap();
    let answer = post(&app, &token, Some("application/cbor"), huge).await;
    let Command::Write { data, .. } = serde_cbor::from_slice(&answer.body).unwrap() else {
        panic!("a write")
    };
    assert_eq!(data.len(), 10);
    // A version too long for the device's 16 bytes fails the update instead of breaking it.
    app.upload("title=dfu-fw&version=2.0.0-with-a-long-suffix", b"long")
        .await;
    app.post(
        "/api/v1/assignments",
        json!({"device": "dfu-1", "artifact": "dfu-fw@2.0.0-with-a-long-suffix"}),
    )
    .await;
    let answer = post(&app, &token, Some("application/cbor"), good.clone()).await;
    assert!(matches!(
        serde_cbor::from_slice::<Command>(&answer.body).unwrap(),
        Command::Sync { .. }
    ));
    let history = app.get("/api/v1/devices/dfu-1/history").await.json();
    assert_eq!(history[0]["failure"]["code"], "unsupported_package");
}

#[tokio::test]
async fn an_embedded_update_device_updates_over_mqtt() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let app = TestApp::new().await;
    let data = image(3000);
    let token = app.device("dfu-m").await;
    app.upload("title=dfu-fw&version=3.0.0", &data).await;
    app.post(
        "/api/v1/assignments",
        json!({"device": "dfu-m", "artifact": "dfu-fw@3.0.0"}),
    )
    .await;
    let (host, port) = app.listen_mqtt().await;
    let mut options = MqttOptions::new("dfu-m", host, port);
    options.set_credentials("dfu-m@default", token);
    let (client, mut events) = AsyncClient::new(options, 16);
    client
        .subscribe("command/inbox//#", QoS::AtMostOnce)
        .await
        .unwrap();
    let mut device = Device::new("1.0.0", 1024);
    loop {
        client
            .publish("dfu", QoS::AtLeastOnce, false, device.status(Form::Packed))
            .await
            .unwrap();
        let payload = loop {
            if let Event::Incoming(Packet::Publish(publish)) = events.poll().await.unwrap() {
                assert_eq!(publish.topic, "command/inbox//dfu");
                break publish.payload;
            }
        };
        match device.apply(&payload) {
            Step::Continue => {}
            Step::Swapped {
                version,
                checksum_ok,
            } => {
                assert!(checksum_ok);
                device.running = version;
                device.writing = None;
            }
            Step::Synced => break,
        }
    }
    assert_eq!(device.writes, [0, 1024, 2048]);
    let shown = app.get("/api/v1/devices/dfu-m").await.json();
    assert_eq!(shown["firmware"]["version"], "3.0.0");
}
