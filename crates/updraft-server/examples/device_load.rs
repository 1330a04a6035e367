//! Load generator for `bench/mqtt.sh` and `bench/dfu.sh`: many devices against one server.
//!
//! `mqtt_load idle ADDR TOKEN N` — opens N connections with one device token, waits for every
//! CONNACK, prints `held N`, then holds them until standard input closes.
//!
//! `mqtt_load push ADDR API ADMIN_KEY N ARTIFACT` — creates N devices through the management API,
//! connects each with its own token subscribed to `v1/devices/me/attributes`, assigns ARTIFACT
//! (TITLE@VERSION) tenant-wide, and prints how long the assignment took and how long until every
//! device had its new firmware attributes pushed.
//!
//! `device_load dfu API ADMIN_KEY N MTU ARTIFACT MODULE FILENAME` — creates N devices, assigns
//! ARTIFACT to all, then runs N Drogue DFU devices at once (packed CBOR over HTTP, blocks of MTU
//! bytes) until each has the whole image, and then the same N devices download the same image
//! through hawkBit DDI (module MODULE, file FILENAME); prints MB/s for both.
//!
//! `device_load lwm2m LWM2M_ADDR API ADMIN_KEY N ARTIFACT` — creates N devices, registers N
//! LwM2M clients (one UDP socket each) at once and prints registrations per second; each client
//! answers the server's reads, observations and writes as a firmware-update device would. Then
//! assigns ARTIFACT tenant-wide and prints how long until every client observes /5/0/3 and
//! /5/0/5 and has its Package URI; prints `held N` and holds them until standard input closes.
//!
//! `device_load aws MQTT_ADDR API ADMIN_KEY N BLOCK ARTIFACT MODULE FILENAME` — creates N
//! devices, assigns ARTIFACT (which must carry a signature) to all, then runs N AWS IoT OTA
//! devices at once: each connects over MQTT, takes its job with `start-next` and fetches the file
//! from its stream in CBOR blocks of BLOCK bytes, 128 KiB per request; then the same devices
//! download the image through hawkBit DDI; prints MB/s for both.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::BytesMut;
use rumqttc::QoS;
use rumqttc::mqttbytes::v4::{Connect, Packet, Subscribe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

async fn connect(addr: &str, token: &str, subscribe: bool) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut connect = Connect::new(format!("load-{}", rand_id()));
    connect.keep_alive = 0;
    connect.set_login(token, "");
    let mut buf = BytesMut::new();
    Packet::Connect(connect)
        .write(&mut buf, usize::MAX)
        .unwrap();
    if subscribe {
        Packet::Subscribe(Subscribe::new("v1/devices/me/attributes", QoS::AtMostOnce))
            .write(&mut buf, usize::MAX)
            .unwrap();
    }
    stream.write_all(&buf).await.unwrap();
    let mut answers = BytesMut::new();
    let wanted = if subscribe { 2 } else { 1 };
    let mut seen = 0;
    while seen < wanted {
        stream.read_buf(&mut answers).await.unwrap();
        while let Ok(packet) = Packet::read(&mut answers, 1 << 20) {
            match packet {
                Packet::ConnAck(ack) => assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success),
                Packet::SubAck(_) => {}
                other => panic!("unexpected {other:?}"),
            }
            seen += 1;
        }
    }
    stream
}

fn rand_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

async fn idle(addr: String, token: String, n: usize) {
    let limit = Arc::new(Semaphore::new(256));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (addr, token, limit) = (addr.clone(), token.clone(), limit.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            connect(&addr, &token, false).await
        }));
    }
    let mut held = Vec::with_capacity(n);
    for task in tasks {
        held.push(task.await.unwrap());
    }
    println!("held {}", held.len());
    let mut line = String::new();
    let _ = tokio::io::stdin().read_to_string(&mut line).await;
}

async fn create_devices(
    http: &reqwest::Client,
    api: &str,
    admin: &str,
    n: usize,
    prefix: &str,
) -> Vec<String> {
    let limit = Arc::new(Semaphore::new(32));
    let mut creations = Vec::new();
    for i in 0..n {
        let (http, api, admin, limit, prefix) = (
            http.clone(),
            api.to_owned(),
            admin.to_owned(),
            limit.clone(),
            prefix.to_owned(),
        );
        creations.push(tokio::spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            let created: serde_json::Value = http
                .post(format!("{api}/api/v1/devices"))
                .bearer_auth(admin)
                .json(&serde_json::json!({"id": format!("{prefix}-{i}")}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            created["token"].as_str().unwrap().to_owned()
        }));
    }
    let mut tokens = Vec::with_capacity(n);
    for task in creations {
        tokens.push(task.await.unwrap());
    }
    tokens
}

/// One Drogue DFU device: writes the whole image through Status → Command exchanges.
async fn dfu_device(
    http: reqwest::Client,
    api: String,
    user: String,
    token: String,
    mtu: u32,
) -> u64 {
    let mut image: Vec<u8> = Vec::new();
    let mut writing: Option<Vec<u8>> = None;
    loop {
        let status = match &writing {
            Some(version) => {
                embedded_update::Status::update(b"0", Some(mtu), image.len() as u32, version, None)
            }
            None => embedded_update::Status::first(b"0", Some(mtu), None),
        };
        let body = serde_cbor::ser::to_vec_packed(&status).unwrap();
        let answer = http
            .post(format!("{api}/v1/dfu"))
            .basic_auth(&user, Some(&token))
            .header("content-type", "application/cbor")
            .body(body)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        match serde_cbor::from_slice::<embedded_update::Command>(&answer).unwrap() {
            embedded_update::Command::Write { version, data, .. } => {
                writing = Some(version.to_vec());
                image.extend_from_slice(&data);
            }
            embedded_update::Command::Swap { .. } => return image.len() as u64,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn dfu(
    api: String,
    admin: String,
    n: usize,
    mtu: u32,
    artifact: String,
    module: String,
    filename: String,
) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(n)
        .build()
        .unwrap();
    let tokens = create_devices(&http, &api, &admin, n, &format!("dfu{mtu}")).await;
    let assigned = http
        .post(format!("{api}/api/v1/assignments"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"tenant_default": true, "artifact": artifact}))
        .send()
        .await
        .unwrap();
    assert!(assigned.status().is_success());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let user = format!("dfu{mtu}-{i}@default");
        tasks.push(tokio::spawn(dfu_device(
            http.clone(),
            api.clone(),
            user,
            token.clone(),
            mtu,
        )));
    }
    let mut bytes = 0;
    for task in tasks {
        bytes += task.await.unwrap();
    }
    let dfu_secs = start.elapsed().as_secs_f64();
    let (ddi_bytes, ddi_secs) = ddi_download_all(
        &http,
        &api,
        &format!("dfu{mtu}"),
        &tokens,
        &module,
        &filename,
    )
    .await;
    println!(
        "dfu mtu {mtu}: {n} devices, {:.1} MB in {dfu_secs:.2} s = {:.1} MB/s; ddi: {:.1} MB in {ddi_secs:.2} s = {:.1} MB/s",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / dfu_secs,
        ddi_bytes as f64 / 1e6,
        ddi_bytes as f64 / 1e6 / ddi_secs
    );
}

/// The same devices (`{prefix}-{i}`) download the image through hawkBit DDI at once; returns the
/// bytes and the seconds it took.
async fn ddi_download_all(
    http: &reqwest::Client,
    api: &str,
    prefix: &str,
    tokens: &[String],
    module: &str,
    filename: &str,
) -> (u64, f64) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let url = format!(
            "{api}/DEFAULT/controller/v1/{prefix}-{i}/softwaremodules/{module}/artifacts/{filename}"
        );
        let (http, token) = (http.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            http.get(url)
                .header("authorization", format!("TargetToken {token}"))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .len() as u64
        }));
    }
    let mut bytes = 0;
    for task in tasks {
        bytes += task.await.unwrap();
    }
    (bytes, start.elapsed().as_secs_f64())
}

/// Reads MQTT packets from `stream` until `done` says to stop; returns how many bytes of
/// payload the publishes held in all.
async fn read_publishes(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    mut done: impl FnMut(&str, &[u8]) -> bool,
) {
    loop {
        while let Ok(packet) = Packet::read(buf, 1 << 20) {
            if let Packet::Publish(publish) = packet
                && done(&publish.topic, &publish.payload)
            {
                return;
            }
        }
        assert!(stream.read_buf(buf).await.unwrap() > 0, "connection closed");
    }
}

/// One AWS IoT OTA device: start-next, then the whole file from its stream in CBOR blocks.
async fn aws_device(addr: String, id: String, token: String, block: u64) -> u64 {
    use rumqttc::mqttbytes::v4::Publish;
    let mut stream = TcpStream::connect(&addr).await.expect("connect");
    let mut connect = Connect::new(id.clone());
    connect.keep_alive = 0;
    connect.set_login(&id, &token);
    let mut out = BytesMut::new();
    Packet::Connect(connect)
        .write(&mut out, usize::MAX)
        .unwrap();
    let start_next = Publish::new(
        format!("$aws/things/{id}/jobs/start-next"),
        QoS::AtMostOnce,
        "{}",
    );
    Packet::Publish(start_next)
        .write(&mut out, usize::MAX)
        .unwrap();
    stream.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    let mut job = serde_json::Value::Null;
    read_publishes(&mut stream, &mut buf, |_, payload| {
        job = serde_json::from_slice(payload).unwrap();
        true
    })
    .await;
    let document = &job["execution"]["jobDocument"]["afr_ota"];
    let stream_name = document["streamname"].as_str().expect("a job").to_owned();
    let size = document["files"][0]["filesize"].as_u64().unwrap();
    let blocks = size.div_ceil(block);
    let per_request = (128 * 1024 / block).max(1);
    let topic = format!("$aws/things/{id}/streams/{stream_name}/get/cbor");
    let mut received = 0u64;
    let mut offset = 0;
    while offset < blocks {
        let count = per_request.min(blocks - offset);
        let request = ciborium::Value::Map(vec![
            (
                ciborium::Value::Text("f".into()),
                ciborium::Value::Integer(0.into()),
            ),
            (
                ciborium::Value::Text("l".into()),
                ciborium::Value::Integer(block.into()),
            ),
            (
                ciborium::Value::Text("o".into()),
                ciborium::Value::Integer(offset.into()),
            ),
            (
                ciborium::Value::Text("n".into()),
                ciborium::Value::Integer(count.into()),
            ),
        ]);
        let mut body = Vec::new();
        ciborium::into_writer(&request, &mut body).unwrap();
        out.clear();
        Packet::Publish(Publish::new(topic.clone(), QoS::AtMostOnce, body))
            .write(&mut out, usize::MAX)
            .unwrap();
        stream.write_all(&out).await.unwrap();
        let mut left = count;
        read_publishes(&mut stream, &mut buf, |topic, payload| {
            assert!(topic.ends_with("/data/cbor"), "{topic}");
            let value: ciborium::Value = ciborium::from_reader(payload).unwrap();
            let data = value
                .as_map()
                .unwrap()
                .iter()
                .find(|(k, _)| k.as_text() == Some("p"))
                .and_then(|(_, v)| v.as_bytes())
                .unwrap();
            received += data.len() as u64;
            left -= 1;
            left == 0
        })
        .await;
        offset += count;
    }
    assert_eq!(received, size);
    received
}

#[allow(clippy::too_many_arguments)]
async fn aws(
    mqtt: String,
    api: String,
    admin: String,
    n: usize,
    block: u64,
    artifact: String,
    module: String,
    filename: String,
) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(n)
        .build()
        .unwrap();
    let tokens = create_devices(&http, &api, &admin, n, &format!("aws{block}")).await;
    let assigned = http
        .post(format!("{api}/api/v1/assignments"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"tenant_default": true, "artifact": artifact}))
        .send()
        .await
        .unwrap();
    assert!(assigned.status().is_success());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        tasks.push(tokio::spawn(aws_device(
            mqtt.clone(),
            format!("aws{block}-{i}"),
            token.clone(),
            block,
        )));
    }
    let mut bytes = 0;
    for task in tasks {
        bytes += task.await.unwrap();
    }
    let aws_secs = start.elapsed().as_secs_f64();
    let (ddi_bytes, ddi_secs) = ddi_download_all(
        &http,
        &api,
        &format!("aws{block}"),
        &tokens,
        &module,
        &filename,
    )
    .await;
    println!(
        "aws block {block}: {n} devices, {:.1} MB in {aws_secs:.2} s = {:.1} MB/s; ddi: {:.1} MB in {ddi_secs:.2} s = {:.1} MB/s",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / aws_secs,
        ddi_bytes as f64 / 1e6,
        ddi_bytes as f64 / 1e6 / ddi_secs
    );
}

/// One LwM2M client: registers, then answers the server's requests until the process ends.
async fn lwm2m_client(
    server: std::net::SocketAddr,
    endpoint: String,
    registered: Arc<AtomicUsize>,
    told: Arc<AtomicUsize>,
) {
    use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut register = Packet::new();
    register.header.set_type(MessageType::Confirmable);
    register.header.code = MessageClass::Request(RequestType::Post);
    register.header.message_id = 1;
    register.set_token(vec![9]);
    register.add_option(CoapOption::UriPath, b"rd".to_vec());
    for query in [
        format!("ep={endpoint}"),
        "lt=86400".into(),
        "lwm2m=1.1".into(),
    ] {
        register.add_option(CoapOption::UriQuery, query.into_bytes());
    }
    register.payload = b"</1/0>,</3/0>,</5/0>".to_vec();
    let bytes = register.to_bytes().unwrap();
    let mut buf = vec![0u8; 2048];
    // Register, resending as CoAP does until the answer comes.
    loop {
        socket.send_to(&bytes, server).await.unwrap();
        let answer = tokio::time::timeout(std::time::Duration::from_secs(3), async {
            loop {
                let (len, _) = socket.recv_from(&mut buf).await.unwrap();
                let packet = Packet::from_bytes(&buf[..len]).unwrap();
                if packet.header.message_id == 1
                    && packet.header.code == MessageClass::Response(ResponseType::Created)
                {
                    return;
                }
            }
        })
        .await;
        if answer.is_ok() {
            break;
        }
    }
    registered.fetch_add(1, Ordering::Relaxed);
    let mut observed = 0;
    loop {
        let (len, peer) = socket.recv_from(&mut buf).await.unwrap();
        let Ok(request) = Packet::from_bytes(&buf[..len]) else {
            continue;
        };
        let MessageClass::Request(method) = request.header.code else {
            continue;
        };
        let mut answer = Packet::new();
        answer.header.set_type(MessageType::Acknowledgement);
        answer.header.message_id = request.header.message_id;
        answer.set_token(request.get_token().to_vec());
        let code = match method {
            RequestType::Get => {
                if request.get_first_option(CoapOption::Observe).is_some() {
                    answer.add_option(CoapOption::Observe, vec![1]);
                    observed += 1;
                }
                answer.payload = b"0".to_vec();
                ResponseType::Content
            }
            RequestType::Put => {
                if observed >= 2 {
                    told.fetch_add(1, Ordering::Relaxed);
                }
                ResponseType::Changed
            }
            _ => ResponseType::Changed,
        };
        answer.header.code = MessageClass::Response(code);
        let _ = socket.send_to(&answer.to_bytes().unwrap(), peer).await;
    }
}

async fn lwm2m(addr: String, api: String, admin: String, n: usize, artifact: String) {
    let server: std::net::SocketAddr = addr.parse().unwrap();
    let http = reqwest::Client::new();
    create_devices(&http, &api, &admin, n, "lw").await;
    let registered = Arc::new(AtomicUsize::new(0));
    let told = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    for i in 0..n {
        tokio::spawn(lwm2m_client(
            server,
            format!("lw-{i}"),
            registered.clone(),
            told.clone(),
        ));
    }
    while registered.load(Ordering::Relaxed) < n {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "registered {n} in {secs:.2} s = {:.0} registrations/s",
        n as f64 / secs
    );
    let start = Instant::now();
    let assigned = http
        .post(format!("{api}/api/v1/assignments"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"tenant_default": true, "artifact": artifact}))
        .send()
        .await
        .unwrap();
    assert!(assigned.status().is_success());
    while told.load(Ordering::Relaxed) < n {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    println!(
        "observed and told {n} in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    println!("held {n}");
    let mut line = String::new();
    let _ = tokio::io::stdin().read_to_string(&mut line).await;
}

async fn push(addr: String, api: String, admin: String, n: usize, artifact: String) {
    let http = reqwest::Client::new();
    let tokens = create_devices(&http, &api, &admin, n, "load").await;
    let told = Arc::new(AtomicUsize::new(0));
    let all_told = Arc::new(tokio::sync::Notify::new());
    let limit = Arc::new(Semaphore::new(256));
    let mut connections = Vec::new();
    for token in tokens {
        let (addr, limit) = (addr.clone(), limit.clone());
        connections.push(tokio::spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            connect(&addr, &token, true).await
        }));
    }
    let mut streams = Vec::new();
    for task in connections {
        streams.push(task.await.unwrap());
    }
    for mut stream in streams {
        let (told, all_told) = (told.clone(), all_told.clone());
        tokio::spawn(async move {
            let mut buf = BytesMut::new();
            loop {
                if stream.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                while let Ok(packet) = Packet::read(&mut buf, 64 << 20) {
                    if let Packet::Publish(publish) = packet
                        && publish.topic == "v1/devices/me/attributes"
                    {
                        if told.fetch_add(1, Ordering::SeqCst) + 1 == n {
                            all_told.notify_one();
                        }
                        // Keep the connection open until the process ends.
                        std::future::pending::<()>().await;
                    }
                }
            }
        });
    }
    println!("connected {n} devices");
    let start = Instant::now();
    let response = http
        .post(format!("{api}/api/v1/assignments"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"tenant_default": true, "artifact": artifact}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let assigned = start.elapsed();
    all_told.notified().await;
    let everyone = start.elapsed();
    println!(
        "assignment {:.2} s, all {n} devices told {:.2} s",
        assigned.as_secs_f64(),
        everyone.as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("idle") => idle(args[1].clone(), args[2].clone(), args[3].parse().unwrap()).await,
        Some("push") => {
            push(
                args[1].clone(),
                args[2].clone(),
                args[3].clone(),
                args[4].parse().unwrap(),
                args[5].clone(),
            )
            .await
        }
        Some("dfu") => {
            dfu(
                args[1].clone(),
                args[2].clone(),
                args[3].parse().unwrap(),
                args[4].parse().unwrap(),
                args[5].clone(),
                args[6].clone(),
                args[7].clone(),
            )
            .await
        }
        Some("lwm2m") => {
            lwm2m(
                args[1].clone(),
                args[2].clone(),
                args[3].clone(),
                args[4].parse().unwrap(),
                args[5].clone(),
            )
            .await
        }
        Some("aws") => {
            aws(
                args[1].clone(),
                args[2].clone(),
                args[3].clone(),
                args[4].parse().unwrap(),
                args[5].parse().unwrap(),
                args[6].clone(),
                args[7].clone(),
                args[8].clone(),
            )
            .await
        }
        _ => eprintln!(
            "usage: device_load idle ADDR TOKEN N | push ADDR API ADMIN_KEY N TITLE@VERSION | dfu API ADMIN_KEY N MTU TITLE@VERSION MODULE FILENAME | aws MQTT_ADDR API ADMIN_KEY N BLOCK TITLE@VERSION MODULE FILENAME"
        ),
    }
}
