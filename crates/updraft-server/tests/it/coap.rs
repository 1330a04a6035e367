//! ThingsBoard's CoAP transport: block-wise firmware with libcoap's `coap-client`, and
//! telemetry, retransmissions and Observe with a CoAP client built on coap-lite.

use std::net::SocketAddr;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use serde_json::{Value, json};
use tokio::net::UdpSocket;

use crate::TestApp;

fn request(method: RequestType, path: &str, query: &[&str], id: u16, payload: &[u8]) -> Packet {
    let mut packet = Packet::new();
    packet.header.set_type(MessageType::Confirmable);
    packet.header.code = MessageClass::Request(method);
    packet.header.message_id = id;
    packet.set_token(id.to_be_bytes().to_vec());
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        packet.add_option(CoapOption::UriPath, segment.as_bytes().to_vec());
    }
    for q in query {
        packet.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
    }
    packet.payload = payload.to_vec();
    packet
}

async fn exchange(socket: &UdpSocket, server: SocketAddr, packet: &Packet) -> Packet {
    socket
        .send_to(&packet.to_bytes().unwrap(), server)
        .await
        .unwrap();
    receive(socket).await
}

async fn receive(socket: &UdpSocket) -> Packet {
    let mut buf = vec![0u8; 2048];
    let (len, _) = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        socket.recv_from(&mut buf),
    )
    .await
    .expect("no CoAP answer within a minute")
    .unwrap();
    Packet::from_bytes(&buf[..len]).unwrap()
}

fn code(packet: &Packet) -> MessageClass {
    packet.header.code
}

#[tokio::test]
async fn coap_client_downloads_the_firmware_block_wise() {
    let Some(client) = which("coap-client-notls") else {
        return;
    };
    let app = TestApp::new().await;
    let token = app.device("coap-1").await;
    let data: Vec<u8> = (0..150_000u32).map(|i| (i * 7 % 255) as u8).collect();
    app.upload("title=cfw&version=3", &data).await;
    app.post(
        "/api/v1/assignments",
        json!({"device": "coap-1", "artifact": "cfw@3"}),
    )
    .await;
    let server = app.listen_coap().await;
    let out = tempfile::tempdir().unwrap();
    for (block, name) in [("512", "a.bin"), ("1024", "b.bin")] {
        let file = out.path().join(name);
        let done = updraft_test_support::run_bounded(
            tokio::process::Command::new(&client)
                .args(["-m", "get", "-b", block, "-o"])
                .arg(&file)
                .arg(format!(
                    "coap://{server}/api/v1/{token}/firmware?title=cfw&version=3"
                )),
        )
        .await
        .unwrap();
        assert!(done.status.success(), "{done:?}");
        assert_eq!(std::fs::read(&file).unwrap(), data, "{block}-byte blocks");
    }
    // A chunk of the firmware, itself in blocks.
    let file = out.path().join("chunk.bin");
    updraft_test_support::run_bounded(
        tokio::process::Command::new(&client)
            .args(["-m", "get", "-b", "256", "-o"])
            .arg(&file)
            .arg(format!(
                "coap://{server}/api/v1/{token}/firmware?size=4000&chunk=2"
            )),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), &data[8000..12000]);
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        updraft_test_support::missing(
            program,
            "install Debian's libcoap3-bin (scripts/test.sh does)",
        );
    }
    found
}

#[tokio::test]
async fn telemetry_retransmissions_and_observe_over_coap() {
    let app = TestApp::new().await;
    let token = app.device("coap-2").await;
    app.upload("title=cfw&version=4", b"four").await;
    let server = app.listen_coap().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let attributes = format!("api/v1/{token}/attributes");

    // Observe the attributes: nothing assigned yet.
    let mut observe = request(RequestType::Get, &attributes, &[], 1, b"");
    observe.add_option(CoapOption::Observe, vec![]);
    let first = exchange(&socket, server, &observe).await;
    assert_eq!(code(&first), MessageClass::Response(ResponseType::Content));
    assert_eq!(first.header.get_type(), MessageType::Acknowledgement);
    assert!(first.get_first_option(CoapOption::Observe).is_some());
    let body: Value = serde_json::from_slice(&first.payload).unwrap();
    assert_eq!(body, json!({"shared": {}}));

    // Assigning notifies the observer.
    app.post(
        "/api/v1/assignments",
        json!({"device": "coap-2", "artifact": "cfw@4"}),
    )
    .await;
    let note = receive(&socket).await;
    assert_eq!(note.get_token(), first.get_token());
    assert_eq!(note.header.get_type(), MessageType::NonConfirmable);
    let pushed: Value = serde_json::from_slice(&note.payload).unwrap();
    assert_eq!(pushed["fw_version"], "4");
    assert_eq!(
        app.get("/api/v1/devices/coap-2").await.json()["active_action"]["state"],
        "INITIATED"
    );

    // Telemetry; the same confirmable message again is answered from the cache, not applied twice.
    let telemetry = request(
        RequestType::Post,
        &format!("api/v1/{token}/telemetry"),
        &[],
        7,
        br#"{"fw_state":"DOWNLOADING"}"#,
    );
    let answer = exchange(&socket, server, &telemetry).await;
    assert_eq!(code(&answer), MessageClass::Response(ResponseType::Changed));
    let again = exchange(&socket, server, &telemetry).await;
    assert_eq!(again.to_bytes().unwrap(), answer.to_bytes().unwrap());
    let history = app.get("/api/v1/devices/coap-2/history").await.json();
    let downloading = history[0]["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["to"] == "DOWNLOADING")
        .count();
    assert_eq!(downloading, 1);

    // Errors.
    for (packet, expected) in [
        (
            request(RequestType::Get, "api/v1/wrong/attributes", &[], 8, b""),
            ResponseType::Unauthorized,
        ),
        (
            request(
                RequestType::Post,
                &format!("api/v1/{token}/telemetry"),
                &[],
                9,
                b"nope",
            ),
            ResponseType::BadRequest,
        ),
        (
            request(RequestType::Get, "elsewhere", &[], 10, b""),
            ResponseType::NotFound,
        ),
        (
            request(RequestType::Delete, &attributes, &[], 11, b""),
            ResponseType::MethodNotAllowed,
        ),
        (
            request(
                RequestType::Get,
                &format!("api/v1/{token}/software"),
                &[],
                12,
                b"",
            ),
            ResponseType::NotFound,
        ),
    ] {
        assert_eq!(
            code(&exchange(&socket, server, &packet).await),
            MessageClass::Response(expected)
        );
    }
    // Garbage is dropped, and the server still answers.
    socket.send_to(&[0xff, 0x00, 0x01], server).await.unwrap();
    let get = request(
        RequestType::Get,
        &format!("api/v1/{token}/firmware"),
        &[],
        13,
        b"",
    );
    let firmware = exchange(&socket, server, &get).await;
    assert_eq!(firmware.payload, b"four");
}

/// Error answers are never larger than the request (a spoofed request reflects no more bytes
/// than it cost), and one device holds at most four observations.
#[tokio::test]
async fn errors_do_not_amplify_and_observations_are_bounded() {
    let app = TestApp::new().await;
    let token = app.device("coap-9").await;
    let server = app.listen_coap().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for (n, path) in [
        "/api/v1/wrong-token/attributes",
        "/x",
        "/api/v1/t/nothing-here/at-all",
    ]
    .iter()
    .enumerate()
    {
        let asked = request(RequestType::Get, path, &[], 40 + n as u16, b"");
        let sent = asked.to_bytes().unwrap().len();
        socket
            .send_to(&asked.to_bytes().unwrap(), server)
            .await
            .unwrap();
        let mut buf = vec![0u8; 2048];
        let (len, _) = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            socket.recv_from(&mut buf),
        )
        .await
        .unwrap()
        .unwrap();
        let answer = Packet::from_bytes(&buf[..len]).unwrap();
        assert!(matches!(code(&answer), MessageClass::Response(r) if r != ResponseType::Content));
        assert!(len <= sent, "{path}: {len} bytes answered {sent}");
    }
    for id in 0..10u16 {
        let mut observe = request(
            RequestType::Get,
            &format!("/api/v1/{token}/attributes"),
            &[],
            100 + id,
            b"",
        );
        observe.add_option(CoapOption::Observe, vec![]);
        let answer = exchange(&socket, server, &observe).await;
        assert_eq!(code(&answer), MessageClass::Response(ResponseType::Content));
    }
    assert_eq!(app.node.protocols.coap.coap.count(), 4);
}
