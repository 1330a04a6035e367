//! Simulated Drogue DFU, ThingsBoard and Frugal-IoT devices: small loops that behave like those
//! protocols' clients.

use super::*;

/// A Drogue DFU device: Status → Command in packed CBOR over HTTP, 512-byte blocks.
pub(super) async fn drogue_device(
    server: String,
    http: reqwest::Client,
    spec: DeviceSpec,
    stats: Arc<Stats>,
    started: Instant,
) {
    let mut running = b"0".to_vec();
    let mut writing: Option<(Vec<u8>, Vec<u8>)> = None;
    loop {
        let status = drogue_status(&running, writing.as_ref());
        let start = Instant::now();
        let answer = http
            .post(format!("{server}/v1/dfu"))
            .basic_auth(format!("{}@default", spec.id), Some(&spec.token))
            .header("content-type", "application/json")
            .body(status.to_string())
            .send()
            .await;
        let Ok(answer) = answer else {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(spec.sleep).await;
            continue;
        };
        let Ok(command) = answer.json::<Value>().await else {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(spec.sleep).await;
            continue;
        };
        if let Ok(mut latencies) = stats.poll_latencies.lock() {
            latencies.push(start.elapsed());
        }
        if let Some(write) = command.get("write") {
            let version = write["version"]
                .as_str()
                .unwrap_or_default()
                .as_bytes()
                .to_vec();
            let data = base64_decode(write["data"].as_str().unwrap_or_default());
            stats.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            let offset = write["offset"].as_u64().unwrap_or(0) as usize;
            let image = writing.get_or_insert_with(|| (version.clone(), Vec::new()));
            if offset == 0 {
                *image = (version, Vec::new());
            }
            image.1.truncate(offset);
            image.1.extend_from_slice(&data);
        } else if let Some(swap) = command.get("swap") {
            // The bootloader swaps unless the health check fails, then rolls back.
            if !spec.faults.fail_health {
                running = swap["version"]
                    .as_str()
                    .unwrap_or_default()
                    .as_bytes()
                    .to_vec();
                if let Ok(mut times) = stats.time_to_updated.lock() {
                    times.push(started.elapsed());
                }
            }
            writing = None;
        } else {
            tokio::time::sleep(spec.sleep).await;
        }
    }
}

/// What a simulated ThingsBoard device subscribes to (again after each reconnection).
const TB_TOPICS: [&str; 3] = [
    "v1/devices/me/attributes",
    "v1/devices/me/attributes/response/+",
    "v2/fw/response/+/chunk/+",
];
/// Not a topic: the device's connection was made again.
const RECONNECTED: &str = "$reconnected";

/// How long a simulated ThingsBoard device waits for a chunk before it asks again, and how many
/// times it asks.
const CHUNK_WAIT: Duration = Duration::from_secs(30);
const CHUNK_ATTEMPTS: u32 = 4;

/// A ThingsBoard device as its SDK behaves: connects with its token, asks for its `fw_*`
/// attributes (and hears pushed ones), downloads in 16 KiB chunks, checks the SHA-256 and reports
/// every `fw_state`.
pub(super) async fn thingsboard_device(
    mqtt: String,
    spec: DeviceSpec,
    stats: Arc<Stats>,
    started: Instant,
) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    use sha2::Digest;
    let (host, port) = mqtt.rsplit_once(':').unwrap_or((mqtt.as_str(), "1883"));
    let mut options = MqttOptions::new(spec.id.clone(), host, port.parse().unwrap_or(1883));
    options.set_credentials(spec.token.clone(), "");
    options.set_keep_alive(Duration::from_secs(60));
    options.set_max_packet_size(64 * 1024 * 1024, 64 * 1024 * 1024);
    let (client, mut events) = AsyncClient::new(options, 64);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Bytes)>(64);
    let poll_stats = stats.clone();
    let resubscriber = client.clone();
    tokio::spawn(async move {
        let mut connected_before = false;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if tx.send((publish.topic, publish.payload)).await.is_err() {
                        return;
                    }
                }
                // Connected again (the server went away, or a load balancer moved us): the
                // subscriptions went with the old session, and what was asked may be lost.
                Ok(Event::Incoming(Packet::ConnAck(_))) if connected_before => {
                    for topic in TB_TOPICS {
                        let _ = resubscriber.try_subscribe(topic, QoS::AtLeastOnce);
                    }
                    if tx
                        .send((RECONNECTED.to_owned(), Bytes::new()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) => connected_before = true,
                Ok(_) => {}
                Err(_) => {
                    poll_stats.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    let publish = |topic: String, payload: Value| {
        let client = client.clone();
        async move {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload.to_string())
                .await
        }
    };
    for topic in TB_TOPICS {
        let _ = client.subscribe(topic, QoS::AtLeastOnce).await;
    }
    let mut current = ("factory".to_owned(), "0".to_owned());
    let mut request = 0u64;
    let _ = publish(
        "v1/devices/me/telemetry".into(),
        json!({"current_fw_title": current.0, "current_fw_version": current.1, "fw_state": "IDLE"}),
    )
    .await;
    loop {
        request += 1;
        let asked = Instant::now();
        let keys =
            json!({"sharedKeys": "fw_checksum,fw_checksum_algorithm,fw_size,fw_title,fw_version"});
        let _ = publish(format!("v1/devices/me/attributes/request/{request}"), keys).await;
        // The answer, or a push; then act on whatever it says.
        let wait = tokio::time::timeout(spec.sleep.max(Duration::from_millis(50)), rx.recv()).await;
        let Ok(Some((topic, payload))) = wait else {
            continue;
        };
        if topic == RECONNECTED {
            // What it said last may have been lost with the old connection: as ThingsBoard's SDK
            // does on connecting, it says what it runs (and, once updated, that it is).
            let state = if current.0 == "factory" {
                "IDLE"
            } else {
                "UPDATED"
            };
            let _ = publish(
                "v1/devices/me/telemetry".into(),
                json!({"current_fw_title": current.0, "current_fw_version": current.1, "fw_state": state}),
            )
            .await;
            continue;
        }
        if topic.starts_with("v1/devices/me/attributes/response/")
            && let Ok(mut latencies) = stats.poll_latencies.lock()
        {
            latencies.push(asked.elapsed());
        }
        let Ok(attributes) = serde_json::from_slice::<Value>(&payload) else {
            continue;
        };
        let info = attributes.get("shared").unwrap_or(&attributes);
        let (Some(title), Some(version)) = (info["fw_title"].as_str(), info["fw_version"].as_str())
        else {
            tokio::time::sleep(spec.sleep).await;
            continue;
        };
        if (title, version) == (current.0.as_str(), current.1.as_str()) {
            tokio::time::sleep(spec.sleep).await;
            continue;
        }
        let size = info["fw_size"].as_u64().unwrap_or(0);
        let checksum = info["fw_checksum"].as_str().unwrap_or_default().to_owned();
        let _ = publish(
            "v1/devices/me/telemetry".into(),
            json!({"fw_state": "DOWNLOADING"}),
        )
        .await;
        let mut hasher = sha2::Sha256::new();
        let mut chunk = 0u64;
        let mut received = 0u64;
        while received < size {
            // Only this chunk's answer is firmware: an attributes push, a late attributes
            // response or an answer to an earlier request may arrive meanwhile, and are not. A
            // chunk that does not come in time is asked for again, as a device would; the
            // download fails only after CHUNK_ATTEMPTS.
            let expected = format!("v2/fw/response/{request}/chunk/{chunk}");
            let mut data = None;
            for _attempt in 0..CHUNK_ATTEMPTS {
                let topic = format!("v2/fw/request/{request}/chunk/{chunk}");
                let _ = client
                    .publish(topic, QoS::AtLeastOnce, false, "16384")
                    .await;
                let deadline = tokio::time::Instant::now() + CHUNK_WAIT;
                data = loop {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some((topic, data))) if topic == expected => break Some(data),
                        // A new connection: this chunk's request went with the old one.
                        Ok(Some((topic, _))) if topic == RECONNECTED => break None,
                        Ok(Some(_)) => continue,
                        _ => break None,
                    }
                };
                if data.is_some() {
                    break;
                }
            }
            let Some(data) = data.filter(|d| !d.is_empty()) else {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                break;
            };
            received += data.len() as u64;
            hasher.update(&data);
            chunk += 1;
        }
        stats.bytes.fetch_add(received, Ordering::Relaxed);
        let mut digest = hex_lower(&hasher.finalize());
        if spec.faults.corrupt {
            digest = "corrupted".to_owned();
        }
        if digest != checksum {
            let failed = json!({"fw_state": "FAILED", "fw_error": "Checksum verification failed!"});
            let _ = publish("v1/devices/me/telemetry".into(), failed).await;
            // Like the SDK, ask again; the server will not offer a failed update again.
            tokio::time::sleep(spec.sleep).await;
            continue;
        }
        for state in ["DOWNLOADED", "VERIFIED", "UPDATING"] {
            let _ = publish("v1/devices/me/telemetry".into(), json!({"fw_state": state})).await;
        }
        if spec.faults.fail_health {
            let failed = json!({"fw_state": "FAILED", "fw_error": "the new firmware failed its health check"});
            let _ = publish("v1/devices/me/telemetry".into(), failed).await;
            tokio::time::sleep(spec.sleep).await;
            continue;
        }
        current = (title.to_owned(), version.to_owned());
        let done = json!({"current_fw_title": current.0, "current_fw_version": current.1, "fw_state": "UPDATED"});
        let _ = publish("v1/devices/me/telemetry".into(), done).await;
        if let Ok(mut times) = stats.time_to_updated.lock() {
            times.push(started.elapsed());
        }
        tokio::time::sleep(spec.sleep).await;
    }
}

/// A Frugal-IoT node: `GET /ota_update/default/sim/{node}/{ota_key}` with its sketch's MD5, as
/// the Arduino `httpUpdate` client sends it; a 200 is "flashed" if its MD5 matches `x-MD5`. Its
/// OTA key is its own (in `spec.token`).
pub(super) async fn frugal_device(
    server: String,
    http: reqwest::Client,
    spec: DeviceSpec,
    stats: Arc<Stats>,
    started: Instant,
) {
    use sha2::Digest;
    let mut running_md5 = "00000000000000000000000000000000".to_owned();
    let url = format!("{server}/ota_update/default/sim/{}/{}", spec.id, spec.token);
    // httpUpdate has no way to report a failure: a bad download is simply retried at the next
    // check-in, so over Frugal the faults strike once.
    let (mut drop_once, mut corrupt_once) = (spec.faults.drop_download, spec.faults.corrupt);
    loop {
        let start = Instant::now();
        let answer = http
            .get(&url)
            .header("user-agent", "ESP8266-http-Update")
            .header("x-ESP8266-sketch-md5", &running_md5)
            .header("x-ESP8266-free-space", "4000000")
            .header("x-ESP8266-mode", "sketch")
            .send()
            .await;
        let Ok(answer) = answer else {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(spec.sleep).await;
            continue;
        };
        if let Ok(mut latencies) = stats.poll_latencies.lock() {
            latencies.push(start.elapsed());
        }
        if answer.status() == reqwest::StatusCode::OK {
            let expected = answer
                .headers()
                .get("x-md5")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let mut md5 = md5_state();
            let mut body = answer.bytes_stream();
            let mut broken = false;
            let mut received = 0u64;
            while let Some(chunk) = body.next().await {
                let Ok(mut chunk) = chunk.map(|c| c.to_vec()) else {
                    broken = true;
                    break;
                };
                received += chunk.len() as u64;
                if drop_once && received > 1024 {
                    drop_once = false;
                    broken = true;
                    break;
                }
                if corrupt_once && let Some(first) = chunk.first_mut() {
                    corrupt_once = false;
                    *first ^= 0xff;
                }
                md5.update(&chunk);
            }
            stats.bytes.fetch_add(received, Ordering::Relaxed);
            let got = hex_lower(&md5.finalize());
            if !broken && got == expected {
                running_md5 = got;
                if let Ok(mut times) = stats.time_to_updated.lock() {
                    times.push(started.elapsed());
                }
                // The node reboots into the new sketch and checks in at once.
                continue;
            }
            stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(spec.sleep).await;
    }
}

pub(super) fn md5_state() -> md5::Md5 {
    <md5::Md5 as sha2::Digest>::new()
}

pub(super) fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn drogue_status(running: &[u8], writing: Option<&(Vec<u8>, Vec<u8>)>) -> Value {
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    match writing {
        Some((version, image)) => {
            json!({"version": text(running), "mtu": 512, "update": {"version": text(version), "offset": image.len()}})
        }
        None => json!({"version": text(running), "mtu": 512}),
    }
}

pub(super) fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for byte in text.bytes() {
        let Some(value) = ALPHABET.iter().position(|c| *c == byte) else {
            continue;
        };
        buffer = (buffer << 6) | value as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    out
}
