//! LwM2M as an attacker would try it: a notification forged from another address, a PSK
//! device's NoSec Register on a server without DTLS, a flood of spoofed DTLS ClientHellos, and a
//! client that reboots onto the address of its still-open DTLS session.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use serde_json::json;
use updraft_server::Limits;

use crate::TestApp;
use crate::lwm2m::{coap, device_with_update, dtls_register, final_action, register_raw};

const WAIT: Duration = Duration::from_secs(60);

/// The device's side of a push update, done by the test: it answers the server's requests and,
/// when the package is written, a forger on another socket "notifies" Update Result 1 with the
/// right token before the device reports failure 5 itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_forged_from_another_address_is_ignored() {
    let app = TestApp::new().await;
    device_with_update(
        &app,
        json!({"name": "push", "lwm2m_delivery": "push"}),
        "victim",
        "6.0",
        b"package",
    )
    .await;
    let server = app.listen_lwm2m().await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let forger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    register_raw(&socket, server, &["ep=victim", "lt=60"]).await;
    let mut observations: Vec<(String, Vec<u8>)> = Vec::new();
    let mut buf = vec![0u8; 4096];
    let notification = |token: &[u8], id: u16, value: &[u8]| {
        let mut packet = Packet::new();
        packet.header.set_type(MessageType::NonConfirmable);
        packet.header.message_id = id;
        packet.header.code = MessageClass::Response(ResponseType::Content);
        packet.set_token(token.to_vec());
        packet.add_option(CoapOption::Observe, vec![2]);
        packet.payload = value.to_vec();
        packet.to_bytes().unwrap()
    };
    loop {
        let (len, from) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
            .await
            .expect("the server stopped asking")
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
        let mut written = false;
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
                answer.add_option(CoapOption::Block1, block1.clone());
                let more = block1.last().is_some_and(|b| b & 0x8 != 0);
                written = !more;
                if more {
                    ResponseType::Continue
                } else {
                    ResponseType::Changed
                }
            }
            _ => ResponseType::NotFound,
        };
        answer.header.code = MessageClass::Response(code);
        socket
            .send_to(&answer.to_bytes().unwrap(), from)
            .await
            .unwrap();
        if written {
            let result = observations
                .iter()
                .find(|(p, _)| p == "/5/0/5")
                .map(|(_, t)| t.clone())
                .unwrap();
            // The forger knows the token (it sniffed it) but is not the device.
            forger
                .send_to(&notification(&result, 500, b"1"), server)
                .await
                .unwrap();
            socket
                .send_to(&notification(&result, 501, b"5"), server)
                .await
                .unwrap();
            break;
        }
    }
    let action = final_action(&app, "victim").await;
    assert_eq!(action["state"], "FAILED", "{action}");
    assert_eq!(action["failure"]["code"], "integrity_check_failed");
    let history = app.get("/api/v1/devices/victim/history").await.json();
    assert!(
        !history.to_string().contains("UPDATED"),
        "the forged result was never even considered: {history}"
    );
}

/// The rule "a device with a PSK registers over DTLS only" comes from the store: a server
/// started without `--lwm2m-dtls` (which never loads the PSKs) still refuses its NoSec Register.
#[tokio::test]
async fn a_psk_devices_nosec_register_is_refused_without_the_dtls_listener() {
    let app = TestApp::new().await;
    let created = app
        .post(
            "/api/v1/devices",
            json!({"id": "psk-only", "lwm2m_psk_identity": "psk-only-id"}),
        )
        .await;
    assert!(created.status.is_success());
    let plain = app.listen_lwm2m().await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let refused = coap(
        &socket,
        plain,
        1,
        &["rd"],
        &["ep=psk-only", "lt=60"],
        b"</5/0>",
    )
    .await;
    assert_eq!(
        refused.header.code,
        MessageClass::Response(ResponseType::Forbidden)
    );
    assert!(
        app.node
            .protocols
            .lwm2m
            .lwm2m
            .registration("psk-only")
            .is_none()
    );
}

/// A DTLS 1.2 ClientHello offering TLS_PSK_WITH_AES_128_CCM_8, no cookie.
fn client_hello(n: u32) -> Vec<u8> {
    let mut body = vec![0xfe, 0xfd];
    let mut random = [0u8; 32];
    random[..4].copy_from_slice(&n.to_be_bytes());
    body.extend_from_slice(&random);
    body.extend_from_slice(&[0, 0]); // session id, cookie
    body.extend_from_slice(&[0, 2, 0xc0, 0xa8, 1, 0]); // one suite, null compression
    let len = body.len() as u32;
    let mut handshake = vec![1];
    handshake.extend_from_slice(&len.to_be_bytes()[1..]);
    handshake.extend_from_slice(&[0, 0, 0, 0, 0]);
    handshake.extend_from_slice(&len.to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_client_hellos_hold_no_state_and_a_rebooted_client_handshakes_again() {
    let app = TestApp::with_limits(Limits {
        handshake_timeout: Duration::from_secs(1),
        ..Limits::default()
    })
    .await;
    let key = "secretsecret5678";
    app.post(
        "/api/v1/devices",
        json!({"id": "dtls-9", "lwm2m_psk_identity": "dtls-9-id", "lwm2m_psk_key": hex::encode(key)}),
    )
    .await;
    let dtls = app.listen_lwm2m_dtls().await;
    let lwm2m = app.node.protocols.lwm2m.lwm2m.clone();
    // 100,000 ClientHellos from as many addresses (127.0.0.0/8 is all loopback).
    let mut most = 0;
    for n in 0..100_000u32 {
        let [_, b, c, d] = (n + 1 + (1 << 16)).to_be_bytes();
        let source = SocketAddr::from((Ipv4Addr::new(127, b, c, d), 0));
        let Ok(socket) = std::net::UdpSocket::bind(source) else {
            continue;
        };
        let _ = socket.send_to(&client_hello(n), dtls);
        most = most.max(
            lwm2m
                .dtls_sessions
                .load(std::sync::atomic::Ordering::Relaxed),
        );
    }
    // Each got a stateless HelloVerifyRequest: no address that never echoed a cookie holds
    // anything.
    assert_eq!(
        most, 0,
        "{most} DTLS associations held for spoofed ClientHellos"
    );
    // A real client gets through (it echoes its cookie).
    let ok = tokio::time::timeout(WAIT, dtls_register(dtls, "dtls-9-id", key, "dtls-9"))
        .await
        .expect("coap-client hung");
    let Some(ok) = ok else { return };
    assert!(ok);
    assert!(lwm2m.registration("dtls-9").is_some());
    // The flood came before the client in the socket's queue: all of it was answered, and at
    // most the client's own session is held.
    let held = lwm2m
        .dtls_sessions
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(held <= 1, "{held} DTLS associations after the flood");
    // A client that reboots keeps its address: its new ClientHello, on the address of its
    // still-open session, gets a fresh handshake.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(dtls).await.unwrap();
    for boot in 0..2 {
        assert!(handshake(&socket, "dtls-9-id", key).await, "boot {boot}");
    }
}

struct Key(Vec<u8>);

impl dimpl::PskResolver for Key {
    fn resolve(&self, _identity: &[u8]) -> Option<Vec<u8>> {
        Some(self.0.clone())
    }
}

/// A DTLS-PSK handshake as a client (dimpl) on `socket`; whether it completed within a minute.
/// The session is then dropped without a close_notify, as a device that loses power drops it.
async fn handshake(socket: &tokio::net::UdpSocket, identity: &str, key: &str) -> bool {
    use std::time::Instant;
    let config = dimpl::Config::builder()
        .with_psk_client(
            identity.as_bytes().to_vec(),
            std::sync::Arc::new(Key(key.as_bytes().to_vec())),
        )
        .build()
        .unwrap();
    let started = Instant::now();
    let mut dtls = dimpl::Dtls::new_12_psk(std::sync::Arc::new(config), started);
    dtls.set_active(true);
    dtls.handle_timeout(started).unwrap();
    let (mut out, mut buf) = (vec![0u8; 4096], vec![0u8; 4096]);
    while started.elapsed() < WAIT {
        let next = loop {
            match dtls.poll_output(&mut out) {
                dimpl::Output::Packet(record) => {
                    socket.send(record).await.unwrap();
                }
                dimpl::Output::Timeout(at) => break at,
                dimpl::Output::Connected => return true,
                dimpl::Output::BufferTooSmall { needed } => out.resize(needed, 0),
                _ => {}
            }
        };
        let wait = next.saturating_duration_since(Instant::now());
        match tokio::time::timeout(wait, socket.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                if dtls.handle_packet(&buf[..n]).is_err() {
                    return false;
                }
            }
            Ok(Err(_)) => return false,
            Err(_) => {
                if dtls.handle_timeout(Instant::now()).is_err() {
                    return false;
                }
            }
        }
    }
    false
}
