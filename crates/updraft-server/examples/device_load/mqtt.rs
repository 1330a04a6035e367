//! ThingsBoard-style MQTT devices: idle connections held, attribute pushes after an assignment,
//! and firmware downloads in chunks.

use super::*;

pub(super) async fn idle(addr: String, token: String, n: usize) {
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
    // Held means answering: every connection sends PINGREQ and must get its PINGRESP (a
    // connection the server closed, say beyond a cap, fails here).
    let mut pings = Vec::with_capacity(n);
    for mut stream in held {
        let limit = limit.clone();
        pings.push(tokio::spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            let mut out = BytesMut::new();
            Packet::PingReq.write(&mut out, usize::MAX).unwrap();
            stream.write_all(&out).await.unwrap();
            let mut buf = BytesMut::new();
            loop {
                if let Ok(packet) = Packet::read(&mut buf, 1 << 20) {
                    assert!(matches!(packet, Packet::PingResp), "{packet:?}");
                    return stream;
                }
                assert!(stream.read_buf(&mut buf).await.unwrap() > 0, "closed");
            }
        }));
    }
    let mut held = Vec::with_capacity(n);
    for ping in pings {
        held.push(ping.await.unwrap());
    }
    println!("held {}", held.len());
    let mut line = String::new();
    let _ = tokio::io::stdin().read_to_string(&mut line).await;
}

pub(super) async fn push(addr: String, api: String, admin: String, n: usize, artifact: String) {
    let http = reqwest::Client::new();
    let tokens = create_devices(&http, &api, &admin, n, "load").await;
    let told = Arc::new(AtomicUsize::new(0));
    let all_told = Arc::new(tokio::sync::Notify::new());
    let streams = connect_all(&addr, tokens, true).await;
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
    assign_tenant_wide(&http, &api, &admin, &artifact).await;
    let assigned = start.elapsed();
    all_told.notified().await;
    let everyone = start.elapsed();
    println!(
        "assignment {:.2} s, all {n} devices told {:.2} s",
        assigned.as_secs_f64(),
        everyone.as_secs_f64()
    );
}

/// N ThingsBoard devices, assigned ARTIFACT, each download it over MQTT in chunks of `chunk`
/// bytes (`v2/fw/request/{id}/chunk/{n}`, one request in flight per device) until a short
/// chunk; prints the chunk requests per second and MB/s over all devices.
pub(super) async fn chunks(
    addr: String,
    api: String,
    admin: String,
    n: usize,
    chunk: u64,
    artifact: String,
) {
    let http = reqwest::Client::new();
    let tokens = create_devices(&http, &api, &admin, n, &format!("chunk{chunk}")).await;
    assign_tenant_wide(&http, &api, &admin, &artifact).await;
    let streams = connect_all(&addr, tokens, false).await;
    let start = Instant::now();
    let mut downloads = Vec::new();
    for stream in streams {
        downloads.push(tokio::spawn(download_in_chunks(stream, chunk)));
    }
    let (mut bytes, mut requests) = (0u64, 0u64);
    for task in downloads {
        let (b, r) = task.await.unwrap();
        bytes += b;
        requests += r;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{n} devices, {chunk}-byte chunks: {:.0} chunk requests/s, {:.1} MB/s ({bytes} bytes in {secs:.2} s)",
        requests as f64 / secs,
        bytes as f64 / secs / 1e6
    );
}

/// One device's download: chunk after chunk until one comes back short; returns (bytes,
/// requests).
async fn download_in_chunks(mut stream: TcpStream, chunk: u64) -> (u64, u64) {
    let (mut bytes, mut index) = (0u64, 0u64);
    let mut buf = BytesMut::new();
    loop {
        let mut out = BytesMut::new();
        let publish = rumqttc::mqttbytes::v4::Publish::new(
            format!("v2/fw/request/1/chunk/{index}"),
            QoS::AtMostOnce,
            chunk.to_string(),
        );
        Packet::Publish(publish)
            .write(&mut out, usize::MAX)
            .unwrap();
        stream.write_all(&out).await.unwrap();
        let expected = format!("v2/fw/response/1/chunk/{index}");
        let len = loop {
            match Packet::read(&mut buf, 64 << 20) {
                Ok(Packet::Publish(p)) if p.topic == expected => break p.payload.len() as u64,
                Ok(_) => continue,
                Err(_) => {
                    assert!(
                        stream.read_buf(&mut buf).await.unwrap() > 0,
                        "connection closed"
                    );
                }
            }
        };
        bytes += len;
        index += 1;
        if len < chunk {
            return (bytes, index);
        }
    }
}

/// Connects one device per token, 256 handshakes at a time.
async fn connect_all(addr: &str, tokens: Vec<String>, subscribe: bool) -> Vec<TcpStream> {
    let limit = Arc::new(Semaphore::new(256));
    let mut connections = Vec::new();
    for token in tokens {
        let (addr, limit) = (addr.to_owned(), limit.clone());
        connections.push(tokio::spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            connect(&addr, &token, subscribe).await
        }));
    }
    let mut streams = Vec::new();
    for task in connections {
        streams.push(task.await.unwrap());
    }
    streams
}
