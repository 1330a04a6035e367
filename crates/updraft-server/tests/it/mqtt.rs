//! The built-in MQTT endpoint with ThingsBoard's topics, driven by a real MQTT 3.1.1 client
//! (rumqttc): authentication, pushed attributes, attribute requests, chunked firmware and
//! `fw_state` telemetry, and bad input that must not hurt the connection.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

use crate::TestApp;

pub(crate) fn client(host: &str, port: u16, token: &str, id: &str) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(id, host, port);
    options.set_credentials(token, "");
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(64 * 1024 * 1024, 64 * 1024 * 1024);
    AsyncClient::new(options, 64)
}

/// The next PUBLISH the server sends, skipping acknowledgements.
pub(crate) async fn next_publish(events: &mut EventLoop) -> (String, Bytes) {
    // The whole wait is bounded: keep-alive pings alone would keep a per-event bound happy.
    updraft_test_support::within(async {
        loop {
            if let Event::Incoming(Packet::Publish(publish)) = events.poll().await.unwrap() {
                return (publish.topic, publish.payload);
            }
        }
    })
    .await
}

pub(crate) async fn connected(events: &mut EventLoop) {
    updraft_test_support::within(async {
        loop {
            if let Event::Incoming(Packet::ConnAck(ack)) = events.poll().await.unwrap() {
                assert_eq!(ack.code, ConnectReturnCode::Success);
                return;
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_wrong_token_is_not_authorized() {
    let app = TestApp::new().await;
    let (host, port) = app.listen_mqtt().await;
    let (_client, mut events) = client(&host, port, "wrong-token", "intruder");
    match updraft_test_support::within(events.poll()).await {
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, ConnectReturnCode::NotAuthorized)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_device_is_told_downloads_in_chunks_and_reports_over_mqtt() {
    let app = TestApp::new().await;
    let token = app.device("mqtt-1").await;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let artifact = app.upload("title=tb-fw&version=2.0", &data).await.json();
    let (host, port) = app.listen_mqtt().await;
    let (device, mut events) = client(&host, port, &token, "mqtt-1");
    connected(&mut events).await;
    device
        .subscribe("v1/devices/me/attributes", QoS::AtLeastOnce)
        .await
        .unwrap();
    device
        .subscribe("v1/devices/me/attributes/response/+", QoS::AtLeastOnce)
        .await
        .unwrap();
    device
        .subscribe("v2/fw/response/+", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut acks = 0;
    while acks < 3 {
        if let Event::Incoming(Packet::SubAck(_)) =
            updraft_test_support::within(events.poll()).await.unwrap()
        {
            acks += 1;
        }
    }

    // Assigning pushes the new firmware's attributes to the connected device.
    app.post(
        "/api/v1/assignments",
        json!({"device": "mqtt-1", "artifact": "tb-fw@2.0"}),
    )
    .await;
    let (topic, payload) = next_publish(&mut events).await;
    assert_eq!(topic, "v1/devices/me/attributes");
    let pushed: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(pushed["fw_title"], "tb-fw");
    assert_eq!(pushed["fw_version"], "2.0");
    assert_eq!(pushed["fw_size"], data.len());
    assert_eq!(pushed["fw_checksum"], artifact["checksums"]["sha256"]);
    assert_eq!(
        app.get("/api/v1/devices/mqtt-1").await.json()["active_action"]["state"],
        "INITIATED"
    );

    // The SDK's request for the shared keys.
    let keys =
        json!({"sharedKeys": "fw_checksum,fw_checksum_algorithm,fw_size,fw_title,fw_version"})
            .to_string();
    device
        .publish(
            "v1/devices/me/attributes/request/1",
            QoS::AtLeastOnce,
            false,
            keys,
        )
        .await
        .unwrap();
    let (topic, payload) = next_publish(&mut events).await;
    assert_eq!(topic, "v1/devices/me/attributes/response/1");
    let answer: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(answer["shared"]["fw_checksum_algorithm"], "SHA256");

    device
        .publish(
            "v1/devices/me/telemetry",
            QoS::AtLeastOnce,
            false,
            json!({"fw_state": "DOWNLOADING"}).to_string(),
        )
        .await
        .unwrap();
    let mut received = Vec::new();
    for index in 0.. {
        device
            .publish(
                format!("v2/fw/request/7/chunk/{index}"),
                QoS::AtLeastOnce,
                false,
                "16384",
            )
            .await
            .unwrap();
        let (topic, payload) = next_publish(&mut events).await;
        assert_eq!(
            topic,
            format!("v2/fw/response/7/chunk/{index}"),
            "delivered though `+` does not match it"
        );
        if payload.is_empty() {
            break;
        }
        received.extend_from_slice(&payload);
    }
    assert_eq!(received, data);
    // An empty payload asks for the whole firmware in one message.
    device
        .publish("v2/fw/request/8/chunk/0", QoS::AtMostOnce, false, "")
        .await
        .unwrap();
    let (_, whole) = next_publish(&mut events).await;
    assert_eq!(whole.as_ref(), data.as_slice());

    // Bad input is refused without hurting the connection.
    for (topic, payload) in [
        ("v2/fw/request/9/chunk/x", "16384"),
        ("v2/fw/request/9/chunk/0", "many"),
        ("v1/devices/me/telemetry", "not json"),
        ("v1/devices/me/telemetry", "{\"fw_state\":\"EXPLODED\"}"),
        ("nowhere/at/all", "{}"),
    ] {
        device
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    device
        .publish(
            "v1/devices/me/rpc/request/5",
            QoS::AtLeastOnce,
            false,
            json!({"method": "getSessionLimits", "params": {"timeout": 5000}}).to_string(),
        )
        .await
        .unwrap();
    device
        .subscribe("v1/devices/me/rpc/response/+", QoS::AtLeastOnce)
        .await
        .unwrap();
    let (topic, payload) = next_publish(&mut events).await;
    assert_eq!(topic, "v1/devices/me/rpc/response/5");
    let limits: Value = serde_json::from_slice(&payload).unwrap();
    assert!(limits["rateLimits"].is_object() && limits["maxPayloadSize"].is_u64());

    for state in ["DOWNLOADED", "VERIFIED", "UPDATING"] {
        device
            .publish(
                "v1/devices/me/telemetry",
                QoS::AtLeastOnce,
                false,
                json!({"fw_state": state}).to_string(),
            )
            .await
            .unwrap();
    }
    let done =
        json!({"current_fw_title": "tb-fw", "current_fw_version": "2.0", "fw_state": "UPDATED"})
            .to_string();
    device
        .publish("v1/devices/me/telemetry", QoS::AtLeastOnce, false, done)
        .await
        .unwrap();
    // Awaited, not slept for: an attribute request after the telemetry is answered after it.
    device
        .publish(
            "v1/devices/me/attributes/request/2",
            QoS::AtLeastOnce,
            false,
            "{}",
        )
        .await
        .unwrap();
    let (topic, _) = next_publish(&mut events).await;
    assert_eq!(topic, "v1/devices/me/attributes/response/2");
    let shown = app.get("/api/v1/devices/mqtt-1").await.json();
    assert_eq!(
        shown["firmware"],
        json!({"title": "tb-fw", "version": "2.0"})
    );
    let history = app.get("/api/v1/devices/mqtt-1/history").await.json();
    let states: Vec<&str> = history[0]["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["refused"] == false)
        .map(|e| e["to"].as_str().unwrap())
        .collect();
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
}

/// ThingsBoard's own Python device SDK updates itself from Updraft, in chunks of `chunk` bytes.
async fn tb_sdk_update(chunk: u32) {
    let Some(python) = updraft_test_support::interop_python() else {
        return;
    };
    let app = TestApp::new().await;
    let token = app.device("tb-sdk").await;
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    app.upload("title=sdk-fw&version=1.1", &data).await;
    app.post(
        "/api/v1/assignments",
        json!({"device": "tb-sdk", "artifact": "sdk-fw@1.1"}),
    )
    .await;
    let (host, port) = app.listen_mqtt().await;
    let workdir = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(
        &std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()),
    )
    .join("tests/interop/tb_sdk_update.py");
    let out = updraft_test_support::run_bounded(
        tokio::process::Command::new(python)
            .arg(script)
            .args([host, port.to_string(), token, chunk.to_string()])
            .current_dir(workdir.path()),
    )
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the SDK failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(workdir.path().join("sdk-fw")).unwrap(),
        data,
        "byte-identical"
    );
    let shown = app.get("/api/v1/devices/tb-sdk").await.json();
    assert_eq!(
        shown["firmware"],
        json!({"title": "sdk-fw", "version": "1.1"})
    );
    let history = app.get("/api/v1/devices/tb-sdk/history").await.json();
    let mut states: Vec<&str> = history[0]["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["refused"] == false)
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
            "VERIFIED",
            "UPDATING",
            "UPDATED"
        ]
    );
    assert!(
        history[0]["history"].as_array().unwrap()[1..]
            .iter()
            .all(|e| e["source"] == "thingsboard")
    );
}

#[tokio::test]
async fn the_thingsboard_python_sdk_updates_in_one_message() {
    tb_sdk_update(0).await;
}

#[tokio::test]
async fn the_thingsboard_python_sdk_updates_in_16_kib_chunks() {
    tb_sdk_update(16 * 1024).await;
}

/// The queue tells connected devices at the configured rate, round by round, and leaves the
/// others QUEUED. Rounds are driven directly: no timers, no sleeps.
#[tokio::test]
async fn the_notification_queue_tells_connected_devices_at_its_rate() {
    let app = TestApp::new().await;
    app.upload("title=fw&version=9", b"nine").await;
    let mut receivers = Vec::new();
    for n in 0..10 {
        app.device(&format!("on-{n}")).await;
        let device = app
            .state
            .store
            .device(
                crate::default_tenant(&app).await,
                &updraft_core::DeviceId::parse(&format!("on-{n}")).unwrap(),
            )
            .await
            .unwrap()
            .unwrap();
        let pushes = std::sync::Arc::new(updraft_server::transport::mqtt::PushQueue::default());
        app.node
            .protocols
            .mqtt
            .sessions()
            .add(&device, pushes.clone(), 4);
        receivers.push(pushes);
    }
    for n in 0..5 {
        app.device(&format!("off-{n}")).await;
    }
    app.post(
        "/api/v1/assignments",
        json!({"tenant_default": true, "artifact": "fw@9"}),
    )
    .await;
    let mut queue = updraft_server::kernel::notifier::NotifyQueue::default();
    let rounds: Vec<u64> = {
        let mut counts = Vec::new();
        // One round a second (the budget is per second, shared by every replica).
        for second in 0..4 {
            counts.push(queue.round_at(&app.state, 4, 1_000 + second).await);
        }
        counts
    };
    assert_eq!(rounds, [4, 4, 2, 0]);
    for (n, rx) in receivers.iter().enumerate() {
        // Told once, in each protocol's words (the connection delivers what it subscribed to).
        for expected in [
            "v1/devices/me/attributes".to_owned(),
            format!("$aws/things/on-{n}/jobs/notify"),
            format!("$aws/things/on-{n}/jobs/notify-next"),
        ] {
            let pushed = rx.try_next().expect("every connected device was told once");
            assert!(
                matches!(pushed, updraft_server::transport::mqtt::codec::Outbound::Publish { ref topic, .. } if *topic == expected)
            );
        }
        assert!(rx.try_next().is_none(), "and only once");
    }
    let status = app.get("/api/v1/status").await.json();
    assert_eq!(status["actions"], json!({"INITIATED": 10, "QUEUED": 5}));
}

/// A packet beyond the endpoint's limit closes that connection; the server carries on.
#[tokio::test]
async fn a_huge_packet_closes_only_its_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::new().await;
    let token = app.device("big").await;
    let (host, port) = app.listen_mqtt().await;
    let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .unwrap();
    let mut connect = rumqttc::mqttbytes::v4::Connect::new("big");
    connect.set_login(token.clone(), "");
    let mut buf = bytes::BytesMut::new();
    rumqttc::mqttbytes::v4::Packet::Connect(connect)
        .write(&mut buf, usize::MAX)
        .unwrap();
    stream.write_all(&buf).await.unwrap();
    let mut answer = [0u8; 4];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer, [0x20, 2, 0, 0], "CONNACK accepted");
    // A PUBLISH announcing 1 MiB of remaining length.
    stream.write_all(&[0x30, 0x80, 0x80, 0x40]).await.unwrap();
    stream.write_all(&vec![0u8; 4096]).await.unwrap();
    let mut rest = Vec::new();
    assert_eq!(
        updraft_test_support::within(stream.read_to_end(&mut rest))
            .await
            .unwrap_or(0),
        0,
        "closed without an answer"
    );
    // Others connect as before.
    let (_client, mut events) = client(&host, port, &token, "after");
    connected(&mut events).await;
}
