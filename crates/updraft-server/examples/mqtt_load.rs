//! Load generator for `bench/mqtt.sh`: holds many device MQTT connections to one server.
//!
//! `mqtt_load idle ADDR TOKEN N` — opens N connections with one device token, waits for every
//! CONNACK, prints `held N`, then holds them until standard input closes.
//!
//! `mqtt_load push ADDR API ADMIN_KEY N ARTIFACT` — creates N devices through the management API,
//! connects each with its own token subscribed to `v1/devices/me/attributes`, assigns ARTIFACT
//! (TITLE@VERSION) tenant-wide, and prints how long the assignment took and how long until every
//! device had its new firmware attributes pushed.

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

async fn push(addr: String, api: String, admin: String, n: usize, artifact: String) {
    let http = reqwest::Client::new();
    let limit = Arc::new(Semaphore::new(32));
    let mut creations = Vec::new();
    for i in 0..n {
        let (http, api, admin, limit) = (http.clone(), api.clone(), admin.clone(), limit.clone());
        creations.push(tokio::spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            let created: serde_json::Value = http
                .post(format!("{api}/api/v1/devices"))
                .bearer_auth(admin)
                .json(&serde_json::json!({"id": format!("load-{i}")}))
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
        _ => eprintln!(
            "usage: mqtt_load idle ADDR TOKEN N | push ADDR API ADMIN_KEY N TITLE@VERSION"
        ),
    }
}
