//! LwM2M with a real client (npm's lwm2m-node-lib) as the device: registration, a whole
//! firmware update by HTTP pull (Package URI, notifications of State, Execute, reboot and a new
//! Register with Update Result 1), a failing update (result 5), and the registration interface's
//! refusals (unknown endpoint, unsupported version) spoken with raw CoAP.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use crate::TestApp;

struct NodeDevice {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl NodeDevice {
    fn start(server: SocketAddr, endpoint: &str, result: &str) -> Option<NodeDevice> {
        Self::start_with(server, endpoint, result, "")
    }

    fn start_with(
        server: SocketAddr,
        endpoint: &str,
        result: &str,
        mode: &str,
    ) -> Option<NodeDevice> {
        let (node, modules) = updraft_test_support::interop_node()?;
        let script = std::path::Path::new(
            &std::env::var("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()),
        )
        .join("tests/interop/lwm2m_client.js");
        let mut child = tokio::process::Command::new(node)
            .arg(script)
            .args([
                server.ip().to_string(),
                server.port().to_string(),
                endpoint.to_owned(),
                result.to_owned(),
                mode.to_owned(),
            ])
            .env("NODE_PATH", modules)
            .env("NODE_NO_WARNINGS", "1")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Some(NodeDevice { child, lines })
    }

    /// The next event the device reports.
    async fn event(&mut self) -> Value {
        // A bound, not a wait: a device that stops talking fails the test instead of hanging it.
        let line = tokio::time::timeout(Duration::from_secs(90), self.lines.next_line())
            .await
            .expect("the device said nothing for 90 s")
            .unwrap()
            .expect("the device exited");
        let event: Value = serde_json::from_str(&line).unwrap();
        assert_ne!(event["event"], "error", "{event}");
        event
    }

    async fn until(&mut self, name: &str) -> Value {
        loop {
            let event = self.event().await;
            if event["event"] == name {
                return event;
            }
        }
    }
}

/// A profile with the given LwM2M settings, a device in it, and `fw@{version}` assigned to it.
pub(crate) async fn device_with_update(
    app: &TestApp,
    profile: Value,
    device: &str,
    version: &str,
    image: &[u8],
) {
    app.post("/api/v1/profiles", profile.clone()).await;
    app.post(
        "/api/v1/devices",
        json!({"id": device, "profile": profile["name"]}),
    )
    .await;
    app.upload(&format!("title=fw&version={version}"), image)
        .await;
    let assigned = app
        .post(
            "/api/v1/assignments",
            json!({"device": device, "artifact": format!("fw@{version}")}),
        )
        .await;
    assert!(assigned.status.is_success(), "{:?}", assigned.json());
}

/// Awaits the device's latest action reaching a final state (the server's own steps run on its
/// timers and the device's, not on the test's).
pub(crate) async fn final_action(app: &TestApp, device: &str) -> Value {
    let started = Instant::now();
    loop {
        let history = app
            .get(&format!("/api/v1/devices/{device}/history"))
            .await
            .json();
        if matches!(history[0]["state"].as_str(), Some("UPDATED" | "FAILED")) {
            return history[0].clone();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{history}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_lwm2m_node_lib_device_updates_by_http_pull() {
    let app = TestApp::served().await;
    app.device("lwm2m-1").await;
    let image: Vec<u8> = (0..70_000u32).map(|i| (i * 13 % 256) as u8).collect();
    app.upload("title=fw&version=2.0", &image).await;
    app.post(
        "/api/v1/assignments",
        json!({"device": "lwm2m-1", "artifact": "fw@2.0"}),
    )
    .await;
    let server = app.listen_lwm2m().await;
    let Some(mut device) = NodeDevice::start(server, "lwm2m-1", "1") else {
        return;
    };
    device.until("registered").await;
    let uri = device.until("uri").await;
    assert!(uri["url"].as_str().unwrap().contains("/dl/"), "{uri}");
    let downloaded = device.until("downloaded").await;
    assert_eq!(downloaded["status"], 200);
    assert_eq!(
        downloaded["sha256"].as_str().unwrap(),
        hex::encode(Sha256::digest(&image)),
        "byte-identical"
    );
    device.until("execute").await;
    device.until("rebooted").await;
    let action = final_action(&app, "lwm2m-1").await;
    assert_eq!(action["state"], "UPDATED", "{action}");
    let states = crate::applied_states(&action);
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
    let shown = app.get("/api/v1/devices/lwm2m-1").await.json();
    assert_eq!(shown["firmware"]["version"], "2.0");
    // The Device object was read at registration (its /3/0/3 need not be the artifact's).
    assert_eq!(
        shown["attributes"]["lwm2m_firmware_version"], "1.0.0",
        "{shown}"
    );
    device.child.kill().await.unwrap();
}

/// A profile that prefers CoAP: the Package URI is `coap://` on the LwM2M listener and the
/// device pulls it in Block2 blocks; libcoap's coap-client gets the same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coap_pull_profile_gets_a_block2_package_uri() {
    let app = TestApp::served().await;
    let image: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 256) as u8).collect();
    device_with_update(
        &app,
        json!({"name": "coap-pull", "lwm2m_delivery": "coap"}),
        "lwm2m-3",
        "4.0",
        &image,
    )
    .await;
    let server = app.listen_lwm2m().await;
    let Some(mut device) = NodeDevice::start(server, "lwm2m-3", "1") else {
        return;
    };
    let uri = device.until("uri").await;
    let url = uri["url"].as_str().unwrap().to_owned();
    assert!(
        url.starts_with(&format!("coap://127.0.0.1:{}/fw/", server.port())),
        "{url}"
    );
    // libcoap's client, blocks of 512 bytes, while the device downloads too: the package URI
    // opens the package only until the update ends (then its blocks are 4.04).
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fw.bin");
    let mut coap_client = tokio::process::Command::new("coap-client-notls");
    coap_client
        .args(["-m", "get", "-b", "512", "-o"])
        .arg(&out)
        .arg(&url);
    let libcoap =
        tokio::spawn(async move { updraft_test_support::run_bounded(&mut coap_client).await });
    let downloaded = device.until("downloaded").await;
    assert_eq!(
        downloaded["sha256"].as_str().unwrap(),
        hex::encode(Sha256::digest(&image))
    );
    match libcoap.await.unwrap() {
        Ok(done) => {
            assert!(done.status.success(), "{done:?}");
            assert_eq!(std::fs::read(&out).unwrap(), image);
        }
        Err(_) => {
            updraft_test_support::missing("coap-client-notls", "apt-get install libcoap3-bin")
        }
    }
    let action = final_action(&app, "lwm2m-3").await;
    assert_eq!(action["state"], "UPDATED", "{action}");
    device.child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_update_result_ends_failed_with_its_code() {
    let app = TestApp::served().await;
    app.device("lwm2m-2").await;
    app.upload("title=fw&version=3.0", &[5u8; 5000]).await;
    app.post(
        "/api/v1/assignments",
        json!({"device": "lwm2m-2", "artifact": "fw@3.0"}),
    )
    .await;
    let server = app.listen_lwm2m().await;
    let Some(mut device) = NodeDevice::start(server, "lwm2m-2", "5") else {
        return;
    };
    device.until("rebooted").await;
    let action = final_action(&app, "lwm2m-2").await;
    assert_eq!(action["state"], "FAILED", "{action}");
    assert_eq!(action["failure"]["code"], "integrity_check_failed");
    device.child.kill().await.unwrap();
}

/// Registers a raw CoAP client (message ID 1) with `/5/0`; it must be let in.
pub(crate) async fn register_raw(
    socket: &tokio::net::UdpSocket,
    server: SocketAddr,
    queries: &[&str],
) {
    let registered = coap(socket, server, 1, &["rd"], queries, b"</5/0>").await;
    assert_eq!(
        registered.header.code,
        MessageClass::Response(ResponseType::Created)
    );
}

/// A raw CoAP client on its own socket.
pub(crate) async fn coap(
    socket: &tokio::net::UdpSocket,
    server: SocketAddr,
    message_id: u16,
    path: &[&str],
    queries: &[&str],
    payload: &[u8],
) -> Packet {
    coap_with(socket, server, message_id, path, queries, None, payload).await
}

async fn coap_delete(
    socket: &tokio::net::UdpSocket,
    server: SocketAddr,
    message_id: u16,
    path: &[&str],
) -> Packet {
    coap_request(
        socket,
        server,
        RequestType::Delete,
        message_id,
        path,
        &[],
        None,
        b"",
    )
    .await
}

async fn coap_with(
    socket: &tokio::net::UdpSocket,
    server: SocketAddr,
    message_id: u16,
    path: &[&str],
    queries: &[&str],
    content_format: Option<u16>,
    payload: &[u8],
) -> Packet {
    coap_request(
        socket,
        server,
        RequestType::Post,
        message_id,
        path,
        queries,
        content_format,
        payload,
    )
    .await
}

/// One confirmable request; its ACK (a minute at most).
#[allow(clippy::too_many_arguments)]
async fn coap_request(
    socket: &tokio::net::UdpSocket,
    server: SocketAddr,
    method: RequestType,
    message_id: u16,
    path: &[&str],
    queries: &[&str],
    content_format: Option<u16>,
    payload: &[u8],
) -> Packet {
    let mut request = Packet::new();
    request.header.set_type(MessageType::Confirmable);
    request.header.code = MessageClass::Request(method);
    request.header.message_id = message_id;
    request.set_token(vec![1, 2, 3, 4]);
    for segment in path {
        request.add_option(CoapOption::UriPath, segment.as_bytes().to_vec());
    }
    for query in queries {
        request.add_option(CoapOption::UriQuery, query.as_bytes().to_vec());
    }
    if let Some(format) = content_format {
        request.add_option(CoapOption::ContentFormat, format.to_be_bytes().to_vec());
    }
    request.payload = payload.to_vec();
    socket
        .send_to(&request.to_bytes().unwrap(), server)
        .await
        .unwrap();
    let mut buf = vec![0u8; 2048];
    loop {
        let (len, _) = tokio::time::timeout(Duration::from_secs(60), socket.recv_from(&mut buf))
            .await
            .expect("no CoAP answer within a minute")
            .unwrap();
        let answer = Packet::from_bytes(&buf[..len]).unwrap();
        if answer.header.message_id == message_id
            && answer.header.get_type() == MessageType::Acknowledgement
        {
            return answer;
        }
    }
}

#[tokio::test]
async fn the_registration_interface_refuses_what_it_must() {
    let app = TestApp::new().await;
    app.device("known").await;
    let server = app.listen_lwm2m().await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let code = |p: &Packet| p.header.code;
    // An unknown endpoint is not let in; a version we do not speak gets 4.12 (never 4.00).
    let refused = coap(
        &socket,
        server,
        1,
        &["rd"],
        &["ep=stranger", "lt=60"],
        b"</5/0>",
    )
    .await;
    assert_eq!(
        code(&refused),
        MessageClass::Response(ResponseType::Forbidden)
    );
    let newer = coap(
        &socket,
        server,
        2,
        &["rd"],
        &["ep=known", "lwm2m=1.2"],
        b"</5/0>",
    )
    .await;
    assert_eq!(
        code(&newer),
        MessageClass::Response(ResponseType::PreconditionFailed)
    );
    let bad = coap(
        &socket,
        server,
        3,
        &["rd"],
        &["ep=known", "lt=zero"],
        b"</5/0>",
    )
    .await;
    assert_eq!(code(&bad), MessageClass::Response(ResponseType::BadRequest));
    // Falling back to 1.1 registers, without a Content-Format, with a short location.
    let first = coap(
        &socket,
        server,
        4,
        &["rd"],
        &["lwm2m=1.1", "ep=known", "lt=60"],
        b"</3/0>,</5/0>",
    )
    .await;
    assert_eq!(code(&first), MessageClass::Response(ResponseType::Created));
    let location: Vec<String> = first
        .get_option(CoapOption::LocationPath)
        .unwrap()
        .iter()
        .map(|v| String::from_utf8(v.clone()).unwrap())
        .collect();
    assert_eq!(location[0], "rd");
    assert_eq!(location[1].len(), 16, "eight random bytes: {}", location[1]);
    // A retransmission (same message ID) is answered from the cache, not registered twice.
    let again = coap(
        &socket,
        server,
        4,
        &["rd"],
        &["lwm2m=1.1", "ep=known", "lt=60"],
        b"</3/0>,</5/0>",
    )
    .await;
    assert_eq!(
        again.get_option(CoapOption::LocationPath),
        first.get_option(CoapOption::LocationPath)
    );
    // Registering anew replaces the registration: the old location is gone.
    let second = coap(
        &socket,
        server,
        5,
        &["rd"],
        &["ep=known", "lt=60"],
        b"</5/0>",
    )
    .await;
    assert_eq!(code(&second), MessageClass::Response(ResponseType::Created));
    let old = coap(&socket, server, 6, &["rd", &location[1]], &[], b"").await;
    assert_eq!(code(&old), MessageClass::Response(ResponseType::NotFound));
    // An endpoint name set for a device stands for it, in whatever tenant the device is.
    app.post(
        "/api/v1/devices",
        json!({"id": "board-7", "lwm2m_endpoint": "urn:dev:ops:32473-IoT-7"}),
    )
    .await;
    let named = coap(
        &socket,
        server,
        8,
        &["rd"],
        &["ep=urn:dev:ops:32473-IoT-7"],
        b"</5/0>",
    )
    .await;
    assert_eq!(code(&named), MessageClass::Response(ResponseType::Created));
    let by_name = app
        .node
        .protocols
        .lwm2m
        .lwm2m
        .registration("urn:dev:ops:32473-IoT-7")
        .unwrap();
    assert_eq!(by_name.device_id.as_str(), "board-7");
    let registration = app
        .node
        .protocols
        .lwm2m
        .lwm2m
        .registration("known")
        .unwrap();
    assert_eq!(registration.version, "1.0");
    assert_eq!(registration.objects, ["/5/0"]);
    // Another address cannot update or de-register it: the registration is not found there,
    // and it still points at the client that made it.
    let intruder = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for (id, method_delete) in [(30, false), (31, true)] {
        let answer = if method_delete {
            coap_delete(&intruder, server, id, &["rd", &registration.location]).await
        } else {
            coap(
                &intruder,
                server,
                id,
                &["rd", &registration.location],
                &["lt=5"],
                b"",
            )
            .await
        };
        assert_eq!(
            code(&answer),
            MessageClass::Response(ResponseType::NotFound)
        );
    }
    let kept = app
        .node
        .protocols
        .lwm2m
        .lwm2m
        .registration("known")
        .unwrap();
    assert_eq!(kept.link.peer, socket.local_addr().unwrap());
    assert_eq!(kept.lifetime, 60);
    let update = coap(
        &socket,
        server,
        7,
        &["rd", &registration.location],
        &["lt=120"],
        b"",
    )
    .await;
    assert_eq!(code(&update), MessageClass::Response(ResponseType::Changed));
    assert_eq!(
        app.node
            .protocols
            .lwm2m
            .lwm2m
            .registration("known")
            .unwrap()
            .lifetime,
        120
    );
    // Garbage is dropped and counted.
    socket.send_to(b"\xff\xfe not coap", server).await.unwrap();
    let started = Instant::now();
    while app
        .node
        .protocols
        .lwm2m
        .lwm2m
        .malformed
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::task::yield_now().await;
    }
}

/// LwM2M 1.1 Send (`POST /dp`, SenML) reports State and Update Result like notifications do.
#[tokio::test]
async fn values_sent_with_send_move_the_update() {
    let app = TestApp::new().await;
    app.device("sender").await;
    app.upload("title=fw&version=5.0", b"five").await;
    app.post(
        "/api/v1/assignments",
        json!({"device": "sender", "artifact": "fw@5.0"}),
    )
    .await;
    let server = app.listen_lwm2m().await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    register_raw(&socket, server, &["ep=sender", "lwm2m=1.1"]).await;
    for (id, pack) in [
        (2, r#"[{"bn":"/5/0/","n":"3","v":1}]"#),
        (3, r#"[{"bn":"/5/0/","n":"3","v":2},{"n":"5","v":0}]"#),
        (4, r#"[{"bn":"/5/0/","n":"5","v":1}]"#),
    ] {
        let answer = coap_with(
            &socket,
            server,
            id,
            &["dp"],
            &[],
            Some(110),
            pack.as_bytes(),
        )
        .await;
        assert_eq!(
            answer.header.code,
            MessageClass::Response(ResponseType::Changed),
            "{pack}"
        );
    }
    let history = app.get("/api/v1/devices/sender/history").await.json();
    assert_eq!(history[0]["state"], "UPDATED", "{history}");
    let bad = coap_with(&socket, server, 5, &["dp"], &[], Some(110), b"{").await;
    assert_eq!(
        bad.header.code,
        MessageClass::Response(ResponseType::BadRequest)
    );
    let stranger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let refused = coap_with(&stranger, server, 6, &["dp"], &[], Some(110), b"[]").await;
    assert_eq!(
        refused.header.code,
        MessageClass::Response(ResponseType::Forbidden)
    );
}

/// Device management through the API on a registered lwm2m-node-lib client: Read, Write,
/// Discover, Write-Attributes, Execute; clear errors for what cannot be done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_operations_reach_a_registered_client() {
    let app = TestApp::served().await;
    app.device("managed").await;
    app.device("absent").await;
    let server = app.listen_lwm2m().await;
    let Some(mut device) = NodeDevice::start(server, "managed", "1") else {
        return;
    };
    device.until("registered").await;
    let op = |body: Value| {
        let app = &app;
        async move { app.post("/api/v1/devices/managed/lwm2m", body).await }
    };
    let read = op(json!({"operation": "read", "path": "/3/0/3"})).await;
    assert_eq!(read.status, axum::http::StatusCode::OK, "{:?}", read.json());
    assert_eq!(read.json()["code"], "2.05");
    assert_eq!(read.json()["text"], "1.0.0");
    let written = op(json!({"operation": "write", "path": "/3/0/3", "value": "1.0.1"})).await;
    assert_eq!(written.json()["code"], "2.04");
    let again = op(json!({"operation": "read", "path": "/3/0/3"})).await;
    assert_eq!(again.json()["text"], "1.0.1");
    let discovered = op(json!({"operation": "discover", "path": "/5/0"})).await;
    assert_eq!(discovered.json()["code"], "2.05");
    assert!(
        discovered.json()["text"]
            .as_str()
            .unwrap()
            .contains("</5/0/3>"),
        "{:?}",
        discovered.json()
    );
    let attributes = op(
        json!({"operation": "write-attributes", "path": "/5/0/3", "attributes": "pmin=1&pmax=60"}),
    )
    .await;
    assert_eq!(attributes.json()["code"], "2.04");
    let executed = op(json!({"operation": "execute", "path": "/3/0/4"})).await;
    assert_eq!(executed.json()["code"], "2.04");
    let missing = op(json!({"operation": "read", "path": "/9/9/9"})).await;
    assert_eq!(missing.json()["code"], "4.04");
    for (body, code) in [
        (
            json!({"operation": "read", "path": "3/0"}),
            "invalid_request",
        ),
        (
            json!({"operation": "read", "path": "/a/b"}),
            "invalid_request",
        ),
        (
            json!({"operation": "delete", "path": "/3/0"}),
            "invalid_request",
        ),
    ] {
        assert_eq!(op(body.clone()).await.code(), code, "{body}");
    }
    let absent = app
        .post(
            "/api/v1/devices/absent/lwm2m",
            json!({"operation": "read", "path": "/3/0/3"}),
        )
        .await;
    assert_eq!(
        (absent.status, absent.code().as_str()),
        (axum::http::StatusCode::CONFLICT, "not_registered")
    );
    device.child.kill().await.unwrap();
}

/// Registers with libcoap's DTLS client (OpenSSL, PSK); returns whether it exited cleanly.
pub(crate) async fn dtls_register(
    server: SocketAddr,
    identity: &str,
    key: &str,
    endpoint: &str,
) -> Option<bool> {
    let uri = format!(
        "coaps://127.0.0.1:{}/rd?ep={endpoint}&lt=60&lwm2m=1.1",
        server.port()
    );
    match updraft_test_support::run_bounded(
        tokio::process::Command::new("coap-client-openssl")
            .args([
                "-m", "post", "-u", identity, "-k", key, "-e", "</5/0>", "-B", "10",
            ])
            .arg(&uri),
    )
    .await
    {
        Ok(out) => Some(out.status.success()),
        Err(_) => {
            updraft_test_support::missing("coap-client-openssl", "apt-get install libcoap3-bin");
            None
        }
    }
}

/// DTLS 1.2 with pre-shared keys (TLS_PSK_WITH_AES_128_CCM_8, which libcoap's OpenSSL client
/// offers): the right key registers, a wrong key does not, a PSK device may not use NoSec, and
/// an identity registers only its own endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtls_psk_registers_with_the_right_key_only() {
    let app = TestApp::new().await;
    let key = "secretsecret1234";
    let created = app
        .post(
            "/api/v1/devices",
            json!({"id": "secure-1", "lwm2m_psk_identity": "secure-1-id", "lwm2m_psk_key": hex::encode(key)}),
        )
        .await;
    assert_eq!(created.json()["lwm2m_psk_key"], hex::encode(key));
    let generated = app
        .post(
            "/api/v1/devices",
            json!({"id": "secure-2", "lwm2m_psk_identity": "secure-2-id"}),
        )
        .await;
    assert_eq!(
        generated.json()["lwm2m_psk_key"].as_str().unwrap().len(),
        32
    );
    let taken = app
        .post(
            "/api/v1/devices",
            json!({"id": "secure-3", "lwm2m_psk_identity": "secure-1-id"}),
        )
        .await;
    assert_eq!(taken.code(), "psk_identity_exists");
    let dtls = app.listen_lwm2m_dtls().await;
    let plain = app.listen_lwm2m().await;

    let Some(_) = dtls_register(dtls, "secure-1-id", "wrong-key-000000", "secure-1").await else {
        return;
    };
    assert!(
        app.node
            .protocols
            .lwm2m
            .lwm2m
            .registration("secure-1")
            .is_none(),
        "a wrong key registers nothing"
    );
    // Another device's identity cannot register this endpoint.
    dtls_register(dtls, "secure-1-id", key, "secure-2").await;
    assert!(
        app.node
            .protocols
            .lwm2m
            .lwm2m
            .registration("secure-2")
            .is_none()
    );
    let ok = dtls_register(dtls, "secure-1-id", key, "secure-1").await;
    assert_eq!(ok, Some(true));
    let registration = app
        .node
        .protocols
        .lwm2m
        .lwm2m
        .registration("secure-1")
        .expect("registered over DTLS");
    assert!(registration.link.secure);

    // The same device over NoSec is refused.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let refused = coap(
        &socket,
        plain,
        1,
        &["rd"],
        &["ep=secure-2", "lt=60"],
        b"</5/0>",
    )
    .await;
    assert_eq!(
        refused.header.code,
        MessageClass::Response(ResponseType::Forbidden)
    );
}

/// Push delivery: the server writes the package into /5/0/0 in Block1 blocks. The device here is
/// the test itself (no CI-installable client takes Block1 pushes): it reassembles the blocks,
/// says Downloaded, takes the Execute and reports success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_profile_writes_the_package_in_block1_blocks() {
    let app = TestApp::new().await;
    let image: Vec<u8> = (0..5000u32).map(|i| (i * 3 % 256) as u8).collect();
    device_with_update(
        &app,
        json!({"name": "push", "lwm2m_delivery": "push"}),
        "pushed",
        "6.0",
        &image,
    )
    .await;
    let server = app.listen_lwm2m().await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    register_raw(&socket, server, &["ep=pushed", "lt=60"]).await;
    let mut received = Vec::new();
    let mut observations: Vec<(String, Vec<u8>)> = Vec::new();
    let mut notify_id = 100u16;
    let mut buf = vec![0u8; 4096];
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(60), "no end");
        let (len, from) = updraft_test_support::within(socket.recv_from(&mut buf))
            .await
            .unwrap();
        let request = Packet::from_bytes(&buf[..len]).unwrap();
        let MessageClass::Request(method) = request.header.code else {
            continue;
        };
        let path: Vec<String> = request
            .get_option(CoapOption::UriPath)
            .map(|p| {
                p.iter()
                    .map(|s| String::from_utf8(s.clone()).unwrap())
                    .collect()
            })
            .unwrap_or_default();
        let path = format!("/{}", path.join("/"));
        let mut answer = Packet::new();
        answer.header.set_type(MessageType::Acknowledgement);
        answer.header.message_id = request.header.message_id;
        answer.set_token(request.get_token().to_vec());
        let mut notify = None;
        let code = match (method, path.as_str()) {
            (RequestType::Get, "/5/0/3" | "/5/0/5") => {
                if request.get_first_option(CoapOption::Observe).is_some() {
                    observations.push((path.clone(), request.get_token().to_vec()));
                    answer.add_option(CoapOption::Observe, vec![1]);
                }
                answer.payload = b"0".to_vec();
                ResponseType::Content
            }
            (RequestType::Put, "/5/0/0") => {
                let block1 = request.get_first_option(CoapOption::Block1).unwrap();
                let value = block1.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b));
                let num = value >> 4;
                assert_eq!(num as usize * 1024, received.len(), "blocks in order");
                received.extend_from_slice(&request.payload);
                answer.add_option(CoapOption::Block1, block1.clone());
                if value & 0x8 != 0 {
                    ResponseType::Continue
                } else {
                    notify = Some(("/5/0/3", b"2".to_vec()));
                    ResponseType::Changed
                }
            }
            (RequestType::Post, "/5/0/2") => {
                notify = Some(("/5/0/5", b"1".to_vec()));
                ResponseType::Changed
            }
            _ => ResponseType::NotFound,
        };
        answer.header.code = MessageClass::Response(code);
        socket
            .send_to(&answer.to_bytes().unwrap(), from)
            .await
            .unwrap();
        if let Some((resource, value)) = notify {
            let token = observations
                .iter()
                .find(|(p, _)| p == resource)
                .map(|(_, t)| t.clone())
                .unwrap();
            let mut notification = Packet::new();
            notification.header.set_type(MessageType::NonConfirmable);
            notification.header.message_id = notify_id;
            notify_id += 1;
            notification.header.code = MessageClass::Response(ResponseType::Content);
            notification.set_token(token);
            notification.add_option(CoapOption::Observe, vec![2]);
            notification.payload = value;
            socket
                .send_to(&notification.to_bytes().unwrap(), from)
                .await
                .unwrap();
            if resource == "/5/0/5" {
                break;
            }
        }
    }
    assert_eq!(received, image, "byte-identical");
    let action = final_action(&app, "pushed").await;
    assert_eq!(action["state"], "UPDATED", "{action}");
}

/// A device that drops off halfway through its download and registers again resumes with a
/// Range request on the same URL (the server does not start it over), and the update completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_vanishes_mid_download_resumes() {
    let app = TestApp::served().await;
    app.device("lwm2m-4").await;
    let image: Vec<u8> = (0..400_000u32).map(|i| (i * 11 % 256) as u8).collect();
    app.upload("title=fw&version=7.0", &image).await;
    app.post(
        "/api/v1/assignments",
        json!({"device": "lwm2m-4", "artifact": "fw@7.0"}),
    )
    .await;
    let server = app.listen_lwm2m().await;
    let Some(mut device) = NodeDevice::start_with(server, "lwm2m-4", "1", "vanish") else {
        return;
    };
    let vanished = device.until("vanished").await;
    let resumed = device.until("resumed").await;
    assert_eq!(resumed["status"], 206, "{resumed}");
    assert_eq!(resumed["from"], vanished["at"]);
    let downloaded = device.until("downloaded").await;
    assert_eq!(
        downloaded["sha256"].as_str().unwrap(),
        hex::encode(Sha256::digest(&image))
    );
    device.until("rebooted").await;
    let action = final_action(&app, "lwm2m-4").await;
    assert_eq!(action["state"], "UPDATED", "{action}");
    device.child.kill().await.unwrap();
}

/// Unassigning an update a device was given resets it with an empty Package URI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceling_writes_an_empty_package_uri() {
    let app = TestApp::new().await;
    app.device("canceled").await;
    app.upload("title=fw&version=8.0", b"eight").await;
    app.post(
        "/api/v1/assignments",
        json!({"device": "canceled", "artifact": "fw@8.0"}),
    )
    .await;
    let server = app.listen_lwm2m().await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    coap(
        &socket,
        server,
        1,
        &["rd"],
        &["ep=canceled", "lt=60"],
        b"</5/0>",
    )
    .await;
    let mut buf = vec![0u8; 4096];
    let mut uris = Vec::new();
    let started = Instant::now();
    while uris.len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(60), "{uris:?}");
        let (len, from) = updraft_test_support::within(socket.recv_from(&mut buf))
            .await
            .unwrap();
        let request = Packet::from_bytes(&buf[..len]).unwrap();
        let MessageClass::Request(method) = request.header.code else {
            continue;
        };
        let path: Vec<String> = request
            .get_option(CoapOption::UriPath)
            .map(|p| {
                p.iter()
                    .map(|s| String::from_utf8(s.clone()).unwrap())
                    .collect()
            })
            .unwrap_or_default();
        let mut answer = Packet::new();
        answer.header.set_type(MessageType::Acknowledgement);
        answer.header.message_id = request.header.message_id;
        answer.set_token(request.get_token().to_vec());
        let code = match (method, path.join("/").as_str()) {
            (RequestType::Get, "5/0/3" | "5/0/5") => {
                answer.payload = b"0".to_vec();
                ResponseType::Content
            }
            (RequestType::Put, "5/0/1") => {
                uris.push(String::from_utf8(request.payload.clone()).unwrap());
                ResponseType::Changed
            }
            _ => ResponseType::NotFound,
        };
        answer.header.code = MessageClass::Response(code);
        socket
            .send_to(&answer.to_bytes().unwrap(), from)
            .await
            .unwrap();
        if uris.len() == 1 && code == ResponseType::Changed {
            // The device has its package: withdraw it.
            let app = &app;
            let removed = app
                .call(
                    axum::http::Method::DELETE,
                    "/api/v1/assignments?device=canceled",
                    &app.admin.clone(),
                    None,
                )
                .await;
            assert!(removed.status.is_success());
        }
    }
    assert!(uris[0].contains("/dl/"), "{uris:?}");
    assert_eq!(uris[1], "", "the reset is an empty Package URI");
    let history = app.get("/api/v1/devices/canceled/history").await.json();
    assert_eq!(history[0]["state"], "CANCELED");
}

/// Push against a real Block1 receiver: libcoap's coap-server (behind a relay that gives it the
/// registration's address) takes the package the server writes into /5/0/0 and gives back the
/// same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_package_is_reassembled_by_libcoaps_server() {
    let app = TestApp::new().await;
    app.post(
        "/api/v1/profiles",
        json!({"name": "push", "lwm2m_delivery": "push"}),
    )
    .await;
    app.post(
        "/api/v1/devices",
        json!({"id": "libcoap", "profile": "push"}),
    )
    .await;
    let image: Vec<u8> = (0..7000u32).map(|i| (i * 29 % 256) as u8).collect();
    app.upload("title=fw&version=9.0", &image).await;
    let server = app.listen_lwm2m().await;
    // libcoap's server on a free port, resources created on PUT.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Ok(mut coap_server) = tokio::process::Command::new("coap-server-notls")
        .args(["-A", "127.0.0.1", "-p", &port.to_string(), "-d", "10"])
        .kill_on_drop(true)
        .spawn()
    else {
        updraft_test_support::missing("coap-server-notls", "apt-get install libcoap3-bin");
        return;
    };
    let device: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // The relay registers, then carries the server's requests to coap-server and its answers
    // back, and says when the last block has been answered.
    let relay = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    register_raw(&relay, server, &["ep=libcoap", "lt=60"]).await;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        let mut last_token = None;
        let mut done = Some(done_tx);
        loop {
            let (len, from) = updraft_test_support::within(relay.recv_from(&mut buf))
                .await
                .unwrap();
            let bytes = &buf[..len];
            let Ok(packet) = Packet::from_bytes(bytes) else {
                continue;
            };
            if from == server {
                if let Some(block1) = packet.get_first_option(CoapOption::Block1)
                    && block1.last().is_some_and(|b| b & 0x08 == 0)
                {
                    last_token = Some(packet.get_token().to_vec());
                }
                relay.send_to(bytes, device).await.unwrap();
            } else {
                relay.send_to(bytes, server).await.unwrap();
                if last_token.as_deref() == Some(packet.get_token())
                    && let Some(done) = done.take()
                {
                    let _ = done.send(packet.header.code);
                }
            }
        }
    });
    app.post(
        "/api/v1/assignments",
        json!({"device": "libcoap", "artifact": "fw@9.0"}),
    )
    .await;
    let last = tokio::time::timeout(Duration::from_secs(90), done_rx)
        .await
        .expect("the push ended")
        .unwrap();
    assert!(
        matches!(
            last,
            MessageClass::Response(ResponseType::Changed | ResponseType::Created)
        ),
        "{last:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pushed.bin");
    let got = updraft_test_support::run_bounded(
        tokio::process::Command::new("coap-client-notls")
            .args(["-m", "get", "-b", "1024", "-o"])
            .arg(&out)
            .arg(format!("coap://127.0.0.1:{port}/5/0/0")),
    )
    .await
    .unwrap();
    assert!(got.status.success(), "{got:?}");
    assert_eq!(std::fs::read(&out).unwrap(), image, "byte-identical");
    coap_server.kill().await.unwrap();
}

/// A registration outlives the server that took it: another server on the same database (a
/// restarted replica) knows the client at once and drives its update, without a new Register.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_outlive_the_server_that_took_them() {
    let dir = tempfile::tempdir().unwrap();
    let url = match crate::test_database().await {
        Some(url) => url,
        None => format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("shared.db").display()
        ),
    };
    let first = TestApp::prepared_on(
        Some(url.clone()),
        1 << 20,
        "http://127.0.0.1:1".into(),
        Default::default(),
    )
    .await;
    first.device("kept-1").await;
    // The first server's listener only (no notification queue): it stands for a replica that
    // is gone after the client registered.
    let first_socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server = first_socket.local_addr().unwrap();
    tokio::spawn(first.node.clone().serve_lwm2m(first_socket));
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    register_raw(&socket, server, &["ep=kept-1", "lt=600"]).await;
    let ctx = &first.node.protocols.lwm2m;
    ctx.lwm2m.write_registrations(ctx).await;
    // The second server has never heard from the client.
    let second = TestApp::prepared_on(
        Some(url),
        1 << 20,
        "http://127.0.0.1:1".into(),
        Default::default(),
    )
    .await;
    let second_server = second.listen_lwm2m().await;
    second.upload("title=fw&version=9", b"nine").await;
    second
        .post(
            "/api/v1/assignments",
            json!({"device": "kept-1", "artifact": "fw@9"}),
        )
        .await;
    // The second server's requests reach the client at the address it registered from (the
    // first server's own, reading the Device object after the Register, are not answered).
    let mut buf = vec![0u8; 2048];
    let request = updraft_test_support::within(async {
        loop {
            let (len, from) = socket.recv_from(&mut buf).await.unwrap();
            if from == second_server {
                return Packet::from_bytes(&buf[..len]).unwrap();
            }
        }
    })
    .await;
    assert!(
        matches!(request.header.code, MessageClass::Request(_)),
        "{request:?}"
    );
}
