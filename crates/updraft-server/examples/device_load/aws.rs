//! AWS IoT OTA devices over MQTT streams (CBOR blocks), then the same image through hawkBit DDI.
//! Both time the transfer only: the AWS devices' connections and job starts come before the clock.

use super::*;

/// Reads MQTT packets from `stream` until `done` says to stop; returns how many bytes of
/// payload the publishes held in all.
pub(super) async fn read_publishes(
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

/// A thing's CONNECT: client id and user name its name, its token the password.
pub(super) fn thing_connect(id: &str, token: &str) -> BytesMut {
    let mut connect = Connect::new(id.to_owned());
    connect.keep_alive = 0;
    connect.set_login(id, token);
    let mut out = BytesMut::new();
    Packet::Connect(connect)
        .write(&mut out, usize::MAX)
        .unwrap();
    out
}

/// One AWS IoT OTA device: start-next, then (once every device has its job: `ready`) the whole
/// file from its stream in CBOR blocks.
pub(super) async fn aws_device(
    addr: String,
    id: String,
    token: String,
    block: u64,
    ready: Arc<tokio::sync::Barrier>,
) -> u64 {
    use rumqttc::mqttbytes::v4::Publish;
    let mut stream = TcpStream::connect(&addr).await.expect("connect");
    let mut out = thing_connect(&id, &token);
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
    ready.wait().await;
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
pub(super) async fn aws(
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
    assign_tenant_wide(&http, &api, &admin, &artifact).await;
    // Timed from the moment every device holds its job (connected, start-next answered): the
    // blocks, as the DDI download beside it times the bytes only.
    let ready = Arc::new(tokio::sync::Barrier::new(n + 1));
    let connecting = Instant::now();
    let mut tasks = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        tasks.push(tokio::spawn(aws_device(
            mqtt.clone(),
            format!("aws{block}-{i}"),
            token.clone(),
            block,
            Arc::clone(&ready),
        )));
    }
    tokio::time::timeout(std::time::Duration::from_secs(300), ready.wait())
        .await
        .expect("not every AWS device had its job within 5 minutes");
    let jobs_secs = connecting.elapsed().as_secs_f64();
    let start = Instant::now();
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
        "aws block {block}: {n} devices had their jobs in {jobs_secs:.2} s, then {:.1} MB in {aws_secs:.2} s = {:.1} MB/s; ddi: {:.1} MB in {ddi_secs:.2} s = {:.1} MB/s",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / aws_secs,
        ddi_bytes as f64 / 1e6,
        ddi_bytes as f64 / 1e6 / ddi_secs
    );
}
