//! A simulated AWS IoT OTA device (coreOTA / rustot behaviour) on the MQTT endpoint: asks for its
//! next job (`jobs/$next/get`, and hears `notify-next`), reads the file from the job's MQTT stream
//! in windows of JSON blocks, reports progress and the self-test steps as the job's
//! `statusDetails` (`receiving` → `ready` → `active`), "reboots", and after its self test ends the
//! job SUCCEEDED or FAILED. A dropped connection resumes from the blocks already written; a job
//! whose document says `updraft.updateType: download-only` stops at `ready`.
//!
//! The code signature (`sig-sha256-ecdsa`) is not checked against a key: the simulator holds no
//! signing certificate, so a corrupted download is what makes its check fail.

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use super::*;

/// Block size and blocks per request (coreOTA's defaults are 4 KiB blocks; rustot asks windows).
const BLOCK: u64 = 4096;
const WINDOW: u64 = 16;
/// How long an answer is awaited before the request is sent again, and how many times.
const ANSWER_WAIT: Duration = Duration::from_secs(20);
const ATTEMPTS: u32 = 3;

/// AWS IoT OTA devices take no job without a code signature (the server fails such updates at
/// once): say so before the simulation starts rather than count failures.
pub(super) async fn require_signed(client: &Client, release: &str) -> Result<()> {
    let artifact = client.artifact(release).await?;
    if artifact["signature"].as_str().is_none_or(str::is_empty) {
        bail!(
            "{release} has no code signature, and AWS IoT devices refuse an unsigned update \
             (unsupported_package): upload it with --signature-file"
        );
    }
    Ok(())
}

/// What outlives a connection: the device's flash.
#[derive(Default)]
struct Flash {
    /// Updates installed so far (the running version).
    installed: u32,
    /// The job being downloaded, and which of its blocks are written.
    job: Option<(String, Vec<bool>)>,
    /// The connection drop was suffered (it strikes once).
    dropped: bool,
}

/// Why a connection ended.
enum Ended {
    /// The device restarted (into a new image) or lost its connection: connect again at once.
    Again,
    /// Something failed: wait a poll interval first.
    Failed,
}

/// A simulated AWS IoT device connecting to the MQTT endpoint `mqtt`.
pub(super) async fn aws_device(
    mqtt: String,
    spec: DeviceSpec,
    stats: Arc<Stats>,
    started: Instant,
) {
    let mut flash = Flash::default();
    loop {
        match connection(&mqtt, &spec, &stats, started, &mut flash).await {
            Ended::Again => {}
            Ended::Failed => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(spec.sleep).await;
            }
        }
    }
}

/// One MQTT connection of the device.
struct Link {
    client: AsyncClient,
    messages: tokio::sync::mpsc::Receiver<(String, Bytes)>,
    prefix: String,
    next_token: u64,
}

impl Link {
    async fn publish(&mut self, rest: &str, payload: Vec<u8>) -> bool {
        self.client
            .publish(
                format!("{}{rest}", self.prefix),
                QoS::AtMostOnce,
                false,
                payload,
            )
            .await
            .is_ok()
    }

    /// Sends a JSON request on `rest` and awaits its `accepted` or `rejected` answer (resending
    /// after ANSWER_WAIT); other messages meanwhile are set aside.
    async fn ask(&mut self, rest: &str, mut body: Value) -> Option<(bool, Value)> {
        self.next_token += 1;
        let token = format!("sim-{}", self.next_token);
        body["clientToken"] = json!(token);
        let accepted = format!("{}{rest}/accepted", self.prefix);
        let rejected = format!("{}{rest}/rejected", self.prefix);
        for _ in 0..ATTEMPTS {
            if !self.publish(rest, body.to_string().into_bytes()).await {
                return None;
            }
            let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
            loop {
                let Ok(message) = tokio::time::timeout_at(deadline, self.messages.recv()).await
                else {
                    break;
                };
                let (topic, payload) = message?;
                let ok = topic == accepted;
                if !ok && topic != rejected {
                    continue;
                }
                let Ok(answer) = serde_json::from_slice::<Value>(&payload) else {
                    continue;
                };
                if answer["clientToken"] == json!(token) {
                    return Some((ok, answer));
                }
            }
        }
        None
    }

    /// Reports the job's status; true if the server took it.
    async fn status(&mut self, job: &str, status: &str, details: Value) -> bool {
        let body = json!({"status": status, "statusDetails": details});
        matches!(
            self.ask(&format!("jobs/{job}/update"), body).await,
            Some((true, _))
        )
    }
}

async fn connection(
    mqtt: &str,
    spec: &DeviceSpec,
    stats: &Arc<Stats>,
    started: Instant,
    flash: &mut Flash,
) -> Ended {
    let (host, port) = mqtt.rsplit_once(':').unwrap_or((mqtt, "1883"));
    let mut options = MqttOptions::new(spec.id.clone(), host, port.parse().unwrap_or(1883));
    options.set_credentials(spec.id.clone(), spec.token.clone());
    options.set_keep_alive(Duration::from_secs(60));
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(options, 64);
    let (tx, messages) = tokio::sync::mpsc::channel(64);
    // The connection's reader; it ends (and so does the connection) on the first error.
    let reader = tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            if let Event::Incoming(Packet::Publish(publish)) = event
                && tx.send((publish.topic, publish.payload)).await.is_err()
            {
                return;
            }
        }
    });
    let mut link = Link {
        client,
        messages,
        prefix: format!("$aws/things/{}/", spec.id),
        next_token: 0,
    };
    let ended = session(&mut link, spec, stats, started, flash).await;
    let _ = link.client.try_disconnect();
    reader.abort();
    ended
}

/// The device's life on one connection: check in, and run whatever job it is given.
async fn session(
    link: &mut Link,
    spec: &DeviceSpec,
    stats: &Arc<Stats>,
    started: Instant,
    flash: &mut Flash,
) -> Ended {
    let notify = format!("{}jobs/notify-next", link.prefix);
    if link
        .client
        .subscribe(notify.clone(), QoS::AtLeastOnce)
        .await
        .is_err()
    {
        return Ended::Failed;
    }
    loop {
        let asked = Instant::now();
        let Some((_, next)) = link.ask("jobs/$next/get", json!({})).await else {
            return Ended::Failed;
        };
        if let Ok(mut latencies) = stats.poll_latencies.lock() {
            latencies.push(asked.elapsed());
        }
        let mut execution = next["execution"].clone();
        if execution.is_null() {
            // Nothing to do until the next check-in, or until notify-next brings a job.
            let deadline = tokio::time::Instant::now() + spec.sleep;
            while let Ok(message) = tokio::time::timeout_at(deadline, link.messages.recv()).await {
                let Some((topic, payload)) = message else {
                    return Ended::Failed;
                };
                if topic == notify
                    && let Ok(pushed) = serde_json::from_slice::<Value>(&payload)
                    && !pushed["execution"].is_null()
                {
                    execution = pushed["execution"].clone();
                    break;
                }
            }
            if execution.is_null() {
                continue;
            }
        }
        if let Some(ended) = run_job(link, spec, stats, started, flash, &execution).await {
            return ended;
        }
    }
}

/// Runs one job execution as far as this connection goes: `None` to carry on checking in.
async fn run_job(
    link: &mut Link,
    spec: &DeviceSpec,
    stats: &Arc<Stats>,
    started: Instant,
    flash: &mut Flash,
    execution: &Value,
) -> Option<Ended> {
    let job = execution["jobId"].as_str()?.to_owned();
    let details = &execution["statusDetails"];
    if details["self_test"] == "active" {
        // Restarted into the new image: its self test decides.
        let passed = if spec.faults.fail_health {
            link.status(
                &job,
                "FAILED",
                json!({"reason": "the new image failed its self test"}),
            )
            .await
        } else {
            let accepted = link
                .status(&job, "SUCCEEDED", json!({"self_test": "accepted"}))
                .await;
            if accepted {
                flash.installed += 1;
                if let Ok(mut times) = stats.time_to_updated.lock() {
                    times.push(started.elapsed());
                }
            }
            accepted
        };
        flash.job = None;
        return (!passed).then_some(Ended::Failed);
    }
    // A download-only rollout's job: downloaded and checked, it waits to be installed.
    let download_only = execution["jobDocument"]["updraft"]["updateType"] == "download-only";
    if download_only && details["self_test"] == "ready" {
        tokio::time::sleep(spec.sleep).await;
        return None;
    }
    let document = &execution["jobDocument"]["afr_ota"];
    let stream = document["streamname"].as_str()?.to_owned();
    let size = document["files"][0]["filesize"].as_u64()?;
    let blocks = usize::try_from(size.div_ceil(BLOCK)).ok()?;
    if flash.job.as_ref().is_none_or(|(id, _)| *id != job) {
        flash.job = Some((job.clone(), vec![false; blocks]));
    }
    let receiving = |done: usize| {
        json!({"updated_by": flash.installed.to_string(), "self_test": "receiving",
            "progress": format!("{done}/{blocks}")})
    };
    let have = flash
        .job
        .as_ref()
        .map_or(0, |(_, b)| b.iter().filter(|b| **b).count());
    if !link.status(&job, "IN_PROGRESS", receiving(have)).await {
        return Some(Ended::Failed);
    }
    let data = format!("{}streams/{stream}/data/json", link.prefix);
    let _ = link.client.subscribe(data.clone(), QoS::AtMostOnce).await;
    while let Some(first) = flash
        .job
        .as_ref()
        .and_then(|(_, b)| b.iter().position(|b| !*b))
    {
        let count = (blocks - first).min(WINDOW as usize);
        let request = json!({"f": 0, "l": BLOCK, "o": first, "n": count});
        let mut attempts = 0;
        let mut missing = count;
        while missing > 0 {
            if attempts == ATTEMPTS {
                return Some(Ended::Failed);
            }
            attempts += 1;
            let rest = format!("streams/{stream}/get/json");
            if !link.publish(&rest, request.to_string().into_bytes()).await {
                return Some(Ended::Failed);
            }
            let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
            while missing > 0 {
                let Ok(message) = tokio::time::timeout_at(deadline, link.messages.recv()).await
                else {
                    break;
                };
                let Some((topic, payload)) = message else {
                    return Some(Ended::Failed);
                };
                if topic != data {
                    continue;
                }
                let Ok(block) = serde_json::from_slice::<Value>(&payload) else {
                    continue;
                };
                let index = block["i"].as_u64().and_then(|i| usize::try_from(i).ok());
                let bytes = base64_decode(block["p"].as_str().unwrap_or_default());
                let Some((_, written)) = flash.job.as_mut() else {
                    return Some(Ended::Failed);
                };
                let Some(slot) = index.and_then(|i| written.get_mut(i)) else {
                    continue;
                };
                if !*slot {
                    *slot = true;
                    missing = missing.saturating_sub(1);
                    stats.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                }
                // The connection drops once, mid-download, with blocks still to come.
                if spec.faults.drop_download && !flash.dropped && written.iter().any(|b| !*b) {
                    flash.dropped = true;
                    return Some(Ended::Again);
                }
            }
        }
        let done = flash
            .job
            .as_ref()
            .map_or(0, |(_, b)| b.iter().filter(|b| **b).count());
        if !link.status(&job, "IN_PROGRESS", receiving(done)).await {
            return Some(Ended::Failed);
        }
    }
    if spec.faults.corrupt {
        flash.job = None;
        let details = json!({"self_test": "rejected", "reason": "signature verification failed"});
        return (!link.status(&job, "FAILED", details).await).then_some(Ended::Failed);
    }
    let steps: &[&str] = if download_only {
        &["ready"]
    } else {
        &["ready", "active"]
    };
    for step in steps {
        let details = json!({"updated_by": flash.installed.to_string(), "self_test": step});
        if !link.status(&job, "IN_PROGRESS", details).await {
            return Some(Ended::Failed);
        }
    }
    if download_only {
        return None;
    }
    // Restart into the new image; the next connection's `$next/get` finds the self test due.
    Some(Ended::Again)
}
