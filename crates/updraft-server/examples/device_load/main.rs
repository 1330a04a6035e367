//! Load generator for the `bench/` scripts: many devices against one server.
//!
//! `mqtt_load idle ADDR TOKEN N` — opens N connections with one device token, waits for every
//! CONNACK, prints `held N`, then holds them until standard input closes.
//!
//! `mqtt_load push ADDR API ADMIN_KEY N ARTIFACT` — creates N devices through the management API,
//! connects each with its own token subscribed to `v1/devices/me/attributes`, assigns ARTIFACT
//! (TITLE@VERSION) tenant-wide, and prints how long the assignment took and how long until every
//! device had its new firmware attributes pushed.
//!
//! `device_load chunks ADDR API ADMIN_KEY N CHUNK ARTIFACT` — creates N devices, assigns ARTIFACT
//! tenant-wide, connects each over MQTT and downloads the firmware in chunks of CHUNK bytes
//! (ThingsBoard's `v2/fw/request/…/chunk/…`), one request in flight per device; prints chunk
//! requests per second and MB/s.
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
//!
//! `device_load requests tb|aws MQTT_ADDR API ADMIN_KEY CONNS SECS` — creates CONNS devices, each
//! asking over its own MQTT connection, one request in flight, for SECS seconds: a ThingsBoard
//! attribute request for the firmware keys, or an AWS IoT Jobs `$next/get`; prints requests per
//! second and the p99 round trip in ms.
//!
//! `device_load dfu-status-body PATH` — writes the packed CBOR of a DFU device's first Status
//! (nothing installed yet), for `wrk` to post.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod aws;
mod dfu;
mod lwm2m;
mod mqtt;
mod requests;

use self::aws::*;
use self::dfu::*;
use self::lwm2m::*;
use self::mqtt::*;
use self::requests::*;
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
        Some("chunks") => {
            chunks(
                args[1].clone(),
                args[2].clone(),
                args[3].clone(),
                args[4].parse().unwrap(),
                args[5].parse().unwrap(),
                args[6].clone(),
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
        Some("requests") => {
            let asking = match args[1].as_str() {
                "tb" => Asking::ThingsBoard,
                "aws" => Asking::Aws,
                other => panic!("requests tb|aws, not {other}"),
            };
            requests(
                asking,
                args[2].clone(),
                args[3].clone(),
                args[4].clone(),
                args[5].parse().unwrap(),
                args[6].parse().unwrap(),
            )
            .await
        }
        Some("dfu-status-body") => dfu_status_body(&args[1]),
        _ => eprintln!(
            "usage: device_load idle ADDR TOKEN N | push ADDR API ADMIN_KEY N TITLE@VERSION | chunks ADDR API ADMIN_KEY N CHUNK TITLE@VERSION | dfu API ADMIN_KEY N MTU TITLE@VERSION MODULE FILENAME | aws MQTT_ADDR API ADMIN_KEY N BLOCK TITLE@VERSION MODULE FILENAME | requests tb|aws MQTT_ADDR API ADMIN_KEY CONNS SECS | dfu-status-body PATH"
        ),
    }
}

/// Assigns `artifact` (TITLE@VERSION) to every device of the tenant.
async fn assign_tenant_wide(http: &reqwest::Client, api: &str, admin: &str, artifact: &str) {
    let response = http
        .post(format!("{api}/api/v1/assignments"))
        .bearer_auth(admin)
        .json(&serde_json::json!({"tenant_default": true, "artifact": artifact}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
}
