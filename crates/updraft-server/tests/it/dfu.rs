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

    /// Applies a Command as the device does, rebooting into a swapped image whose checksum
    /// matched; true once the server says Sync.
    fn follow(&mut self, answer: &[u8]) -> bool {
        match self.apply(answer) {
            Step::Continue => false,
            Step::Swapped {
                version,
                checksum_ok,
            } => {
                assert!(checksum_ok);
                self.running = version;
                self.writing = None;
                false
            }
            Step::Synced => true,
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
    use rumqttc::{AsyncClient, MqttOptions, QoS};
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
        let payload = command(&mut events, "command/inbox//dfu").await;
        if device.follow(&payload) {
            break;
        }
    }
    assert_eq!(device.writes, [0, 1024, 2048]);
    let shown = app.get("/api/v1/devices/dfu-m").await.json();
    assert_eq!(shown["firmware"]["version"], "3.0.0");
}

/// A gateway device and a leaf device behind it with an update assigned; returns the gateway's
/// and the leaf's tokens.
async fn gateway_setup(app: &TestApp, data: &[u8]) -> (String, String) {
    let created = app
        .post("/api/v1/devices", json!({"id": "gw-1", "gateway": true}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let gateway = created.json()["token"].as_str().unwrap().to_owned();
    let leaf = app.device("leaf-1").await;
    app.upload("title=leaf-fw&version=4.0.0", data).await;
    app.post(
        "/api/v1/assignments",
        json!({"device": "leaf-1", "artifact": "leaf-fw@4.0.0"}),
    )
    .await;
    (gateway, leaf)
}

#[tokio::test]
async fn a_gateway_updates_a_device_it_speaks_for_over_http() {
    let app = TestApp::new().await;
    let data = image(1500);
    let (gateway, leaf) = gateway_setup(&app, &data).await;
    let auth = basic("gw-1@default", &gateway);
    let mut device = Device::new("1.0.0", 512);
    loop {
        let request = Request::builder()
            .method(Method::POST)
            .uri("/v1/dfu?ct=30&as=leaf-1")
            .header("authorization", auth.clone())
            .header("content-type", "application/cbor")
            .body(Body::from(device.status(Form::Packed)))
            .unwrap();
        let answer = app.send(request).await;
        assert_eq!(answer.status, StatusCode::OK);
        if device.follow(&answer.body) {
            break;
        }
    }
    assert_eq!(device.writes, [0, 512, 1024]);
    let leaf_shown = app.get("/api/v1/devices/leaf-1").await.json();
    assert_eq!(leaf_shown["firmware"]["version"], "4.0.0");
    assert_eq!(
        app.get("/api/v1/status").await.json()["actions"]["UPDATED"],
        1
    );
    // The gateway itself runs nothing it reported.
    let gw_shown = app.get("/api/v1/devices/gw-1").await.json();
    assert!(gw_shown["firmware"].is_null());

    // A device whose credential is not a gateway's may not speak for others; a gateway may not
    // speak for a device it does not know or of another tenant.
    app.device("plain").await;
    for (auth, target, status, code) in [
        (
            basic("leaf-1@default", &leaf),
            "plain",
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            basic("gw-1@default", &gateway),
            "nosuch",
            StatusCode::NOT_FOUND,
            "device_not_found",
        ),
        (
            basic("gw-1@default", &gateway),
            "..",
            StatusCode::NOT_FOUND,
            "device_not_found",
        ),
    ] {
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("/v1/dfu?as={target}"))
            .header("authorization", auth)
            .body(Body::from(Device::new("1.0.0", 512).status(Form::Packed)))
            .unwrap();
        let answer = app.send(request).await;
        assert_eq!(
            (answer.status, answer.code().as_str()),
            (status, code),
            "{target}"
        );
    }
}

#[tokio::test]
async fn a_gateway_speaks_for_devices_on_dfu_slash_device_over_mqtt() {
    use rumqttc::{AsyncClient, MqttOptions, QoS};
    let app = TestApp::new().await;
    let data = image(700);
    let (gateway, leaf) = gateway_setup(&app, &data).await;
    let (host, port) = app.listen_mqtt().await;

    // A plain device publishing for another gets nothing for it: its next own Status is the
    // first thing answered.
    let mut options = MqttOptions::new("leaf-1", host.clone(), port);
    options.set_credentials("leaf-1@default", leaf);
    let (client, mut events) = AsyncClient::new(options, 16);
    client
        .subscribe("command/inbox/#", QoS::AtMostOnce)
        .await
        .unwrap();
    let status = Device::new("1.0.0", 512).status(Form::Packed);
    client
        .publish("dfu/gw-1", QoS::AtLeastOnce, false, status.clone())
        .await
        .unwrap();
    client
        .publish("dfu", QoS::AtLeastOnce, false, status)
        .await
        .unwrap();
    command(&mut events, "command/inbox//dfu").await;
    client.disconnect().await.unwrap();

    let mut options = MqttOptions::new("gw-1", host, port);
    options.set_credentials("gw-1@default", gateway);
    let (client, mut events) = AsyncClient::new(options, 16);
    client
        .subscribe("command/inbox/#", QoS::AtMostOnce)
        .await
        .unwrap();
    let mut device = Device::new("1.0.0", 512);
    loop {
        client
            .publish(
                "dfu/leaf-1",
                QoS::AtLeastOnce,
                false,
                device.status(Form::Packed),
            )
            .await
            .unwrap();
        let payload = command(&mut events, "command/inbox/leaf-1/dfu").await;
        if device.follow(&payload) {
            break;
        }
    }
    assert_eq!(device.writes, [0, 512]);
    let shown = app.get("/api/v1/devices/leaf-1").await.json();
    assert_eq!(shown["firmware"]["version"], "4.0.0");
}

#[tokio::test]
async fn versions_too_long_for_dfu_profiles_are_refused_when_assigned() {
    let app = TestApp::new().await;
    let answer = app
        .post(
            "/api/v1/profiles",
            json!({"name": "nrf52", "drogue_dfu": true}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(answer.json()["drogue_dfu"], true);
    app.post("/api/v1/profiles", json!({"name": "linux"})).await;
    app.post("/api/v1/devices", json!({"id": "n1", "profile": "nrf52"}))
        .await;
    app.post("/api/v1/devices", json!({"id": "l1", "profile": "linux"}))
        .await;
    app.upload("title=fw&version=2.0.0-with-a-long-suffix", b"long")
        .await;
    app.upload("title=fw&version=2.0.0", b"short").await;
    app.upload(
        "title=linux-only&version=2.0.0-with-a-long-suffix&profiles=linux",
        b"linux",
    )
    .await;
    let long = "fw@2.0.0-with-a-long-suffix";
    for (scope, refused) in [
        (json!({"device": "n1"}), true),
        (json!({"profile": "nrf52"}), true),
        (json!({"tenant_default": true}), true),
        (json!({"device": "l1"}), false),
        (json!({"profile": "linux"}), false),
    ] {
        let mut body = scope.clone();
        body["artifact"] = json!(long);
        let answer = app.post("/api/v1/assignments", body).await;
        if refused {
            assert_eq!(
                (answer.status, answer.code().as_str()),
                (StatusCode::UNPROCESSABLE_ENTITY, "version_too_long"),
                "{scope}"
            );
            assert!(answer.json()["message"].as_str().unwrap().contains("nrf52"));
        } else {
            assert_eq!(answer.status, StatusCode::CREATED, "{scope}");
        }
    }
    // Short versions go anywhere; an artifact not compatible with the DFU profile cannot reach it.
    let answer = app
        .post(
            "/api/v1/assignments",
            json!({"tenant_default": true, "artifact": "fw@2.0.0"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let answer = app
        .post(
            "/api/v1/assignments",
            json!({"tenant_default": true, "artifact": "linux-only@2.0.0-with-a-long-suffix"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED);

    // Marking a profile as DFU while a long version is assigned to it is refused.
    let answer = app
        .call(
            Method::PUT,
            "/api/v1/profiles/linux",
            &app.admin.clone(),
            Some(json!({"drogue_dfu": true})),
        )
        .await;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (StatusCode::CONFLICT, "version_too_long")
    );
    let answer = app
        .call(
            Method::PUT,
            "/api/v1/profiles/nrf52",
            &app.admin.clone(),
            Some(json!({"drogue_dfu": false})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["drogue_dfu"], false);
    let answer = app
        .call(
            Method::PUT,
            "/api/v1/profiles/nosuch",
            &app.admin.clone(),
            Some(json!({"drogue_dfu": false})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}

/// The next command the server publishes, which must be on `topic`.
async fn command(events: &mut rumqttc::EventLoop, topic: &str) -> bytes::Bytes {
    updraft_test_support::within(async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish)) =
                events.poll().await.unwrap()
            {
                assert_eq!(publish.topic, topic);
                return publish.payload;
            }
        }
    })
    .await
}
