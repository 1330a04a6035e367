//! Closed-loop request rates over MQTT: CONNS devices, each with one request in flight at a time
//! (a ThingsBoard attribute request, or an AWS IoT Jobs `$next/get`), for SECS seconds.

use super::*;

/// Which request a device repeats.
#[derive(Clone, Copy)]
pub(super) enum Asking {
    /// `v1/devices/me/attributes/request/{n}` for the firmware's shared keys.
    ThingsBoard,
    /// `$aws/things/{id}/jobs/$next/get`.
    Aws,
}

/// One device's loop: returns each request's round trip in microseconds.
async fn asker(
    addr: String,
    id: String,
    token: String,
    asking: Asking,
    until: Instant,
) -> Vec<u64> {
    use rumqttc::mqttbytes::v4::Publish;
    let mut stream = match asking {
        Asking::ThingsBoard => connect(&addr, &token, false).await,
        Asking::Aws => {
            let mut stream = TcpStream::connect(&addr).await.expect("connect");
            stream
                .write_all(&super::aws::thing_connect(&id, &token))
                .await
                .unwrap();
            let mut buf = BytesMut::new();
            loop {
                if let Ok(packet) = Packet::read(&mut buf, 1 << 20) {
                    assert!(matches!(packet, Packet::ConnAck(_)), "{packet:?}");
                    break;
                }
                assert!(stream.read_buf(&mut buf).await.unwrap() > 0, "closed");
            }
            stream
        }
    };
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    let mut times = Vec::new();
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let (topic, payload, answer) = match asking {
            Asking::ThingsBoard => (
                format!("v1/devices/me/attributes/request/{n}"),
                r#"{"sharedKeys":"fw_title,fw_version,fw_checksum,fw_checksum_algorithm,fw_size"}"#,
                format!("v1/devices/me/attributes/response/{n}"),
            ),
            Asking::Aws => (
                format!("$aws/things/{id}/jobs/$next/get"),
                r#"{"clientToken":"load"}"#,
                format!("$aws/things/{id}/jobs/$next/get/accepted"),
            ),
        };
        out.clear();
        Packet::Publish(Publish::new(topic, QoS::AtMostOnce, payload))
            .write(&mut out, usize::MAX)
            .unwrap();
        let sent = Instant::now();
        stream.write_all(&out).await.unwrap();
        read_publishes(&mut stream, &mut buf, |topic, _| topic == answer).await;
        times.push(sent.elapsed().as_micros() as u64);
    }
    times
}

/// Creates CONNS devices and runs them for SECS seconds; prints `REQ/S P99_MS`.
pub(super) async fn requests(
    asking: Asking,
    addr: String,
    api: String,
    admin: String,
    conns: usize,
    secs: f64,
) {
    let http = reqwest::Client::new();
    // Fresh devices for every run (a benchmark runs this several times against one server).
    let prefix = match asking {
        Asking::ThingsBoard => format!("asktb{}", std::process::id()),
        Asking::Aws => format!("askaws{}", std::process::id()),
    };
    let prefix = prefix.as_str();
    let tokens = create_devices(&http, &api, &admin, conns, prefix).await;
    let start = Instant::now();
    let until = start + std::time::Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for (i, token) in tokens.into_iter().enumerate() {
        let (addr, id) = (addr.clone(), format!("{prefix}-{i}"));
        tasks.push(tokio::spawn(asker(addr, id, token, asking, until)));
    }
    let mut times = Vec::new();
    for task in tasks {
        times.extend(task.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    times.sort_unstable();
    let p99 = times
        .get(times.len() * 99 / 100)
        .map_or(0.0, |us| *us as f64 / 1000.0);
    println!("{:.2} {p99:.2}ms", times.len() as f64 / elapsed);
}

/// The packed CBOR body of a DFU device's first Status (version `0`, MTU 512), for `wrk` to post.
pub(super) fn dfu_status_body(path: &str) {
    let status = embedded_update::Status::first(b"0", Some(512), None);
    std::fs::write(path, serde_cbor::ser::to_vec_packed(&status).unwrap()).unwrap();
}
