//! AWS IoT Jobs and MQTT streams on the built-in endpoint, driven by an MQTT client that sends
//! what coreOTA and rustot send (their recorded request shapes): whole updates with JSON and CBOR
//! blocks, and every refusal on the right `rejected` topic with AWS's code.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

use crate::TestApp;

/// A stand-in code signature (a real one is checked by devices, not by these tests).
const SIGNATURE: &str = "MEUCIQDkZmFrZS1zaWduYXR1cmUtZm9yLXRlc3RzAiB0aGUtZGV2aWNlLWNoZWNrcy1pdA==";

struct Thing {
    client: AsyncClient,
    events: EventLoop,
    id: String,
}

impl Thing {
    async fn connect(app: &TestApp, id: &str, token: &str) -> Thing {
        let (host, port) = app.listen_mqtt().await;
        let mut options = MqttOptions::new(id, host, port);
        options.set_credentials(id, token);
        options.set_max_packet_size(512 * 1024, 512 * 1024);
        let (client, events) = AsyncClient::new(options, 64);
        Thing {
            client,
            events,
            id: id.to_owned(),
        }
    }

    fn topic(&self, rest: &str) -> String {
        format!("$aws/things/{}/{rest}", self.id)
    }

    async fn subscribe(&mut self, rest: &str) {
        self.client
            .subscribe(self.topic(rest), QoS::AtLeastOnce)
            .await
            .unwrap();
        updraft_test_support::within(async {
            loop {
                if let Event::Incoming(Packet::SubAck(_)) = self.events.poll().await.unwrap() {
                    return;
                }
            }
        })
        .await
    }

    async fn send(&self, rest: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(self.topic(rest), QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
    }

    /// The next message the server publishes: (topic after the thing's prefix, payload).
    async fn next(&mut self) -> (String, Vec<u8>) {
        let prefix = self.topic("");
        let events = &mut self.events;
        updraft_test_support::within(async {
            loop {
                if let Event::Incoming(Packet::Publish(p)) = events.poll().await.unwrap() {
                    let topic = p.topic.strip_prefix(&prefix).unwrap_or(&p.topic).to_owned();
                    return (topic, p.payload.to_vec());
                }
            }
        })
        .await
    }

    /// Sends a JSON request and returns the answer's topic suffix and body.
    async fn ask(&mut self, rest: &str, body: Value) -> (String, Value) {
        self.send(rest, body.to_string()).await;
        let (topic, payload) = self.next().await;
        (topic, serde_json::from_slice(&payload).unwrap())
    }
}

fn image(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 253) as u8).collect()
}

async fn setup(app: &TestApp, id: &str, data: &[u8], signed: bool) -> String {
    let token = app.device(id).await;
    let signature = if signed {
        format!("&signature={}", urlencode(SIGNATURE))
    } else {
        String::new()
    };
    let uploaded = app
        .upload(
            &format!("title=ota-fw&version=2.0.0&filename=firmware.bin{signature}"),
            data,
        )
        .await;
    assert!(uploaded.status.is_success(), "{:?}", uploaded.json());
    token
}

async fn assign(app: &TestApp, id: &str) {
    let answer = app
        .post(
            "/api/v1/assignments",
            json!({"device": id, "artifact": "ota-fw@2.0.0"}),
        )
        .await;
    assert!(answer.status.is_success(), "{:?}", answer.json());
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn a_core_ota_device_updates_with_json_blocks() {
    let app = TestApp::new().await;
    let data = image(10_000);
    let token = setup(&app, "thing-1", &data, true).await;
    let mut thing = Thing::connect(&app, "thing-1", &token).await;
    thing.subscribe("jobs/notify").await;
    thing.subscribe("jobs/notify-next").await;

    // Assigning the update pushes notify (the pending list) and notify-next (the execution and
    // its document).
    assign(&app, "thing-1").await;
    let (topic, payload) = thing.next().await;
    assert_eq!(topic, "jobs/notify");
    let listed: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(listed["jobs"]["QUEUED"].as_array().map(Vec::len), Some(1));
    let (topic, payload) = thing.next().await;
    assert_eq!(topic, "jobs/notify-next");
    let notified: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(notified["execution"]["status"], "QUEUED");
    assert!(notified["timestamp"].is_i64());
    // The notification queue told the thing through AWS's channel, and history says so.
    let history = app.get("/api/v1/devices/thing-1/history").await.json();
    let initiated = history[0]["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["to"] == "INITIATED")
        .cloned()
        .unwrap();
    assert_eq!(initiated["source"], "aws", "{history}");

    // start-next (its accepted topic never subscribed, as in the coreOTA demo).
    let (topic, started) = thing
        .ask("jobs/start-next", json!({"clientToken": "test"}))
        .await;
    assert_eq!(topic, "jobs/start-next/accepted", "{started}");
    assert_eq!(started["clientToken"], "test");
    let execution = &started["execution"];
    assert_eq!(execution["status"], "IN_PROGRESS");
    assert_eq!(execution["versionNumber"], 2);
    assert_eq!(execution["thingName"], "thing-1");
    for key in ["queuedAt", "startedAt", "lastUpdatedAt"] {
        assert!(execution[key].is_i64(), "{key}: {execution}");
    }
    let file = &execution["jobDocument"]["afr_ota"]["files"][0];
    assert_eq!(file["filesize"], 10_000);
    assert_eq!(file["fileid"], 0);
    assert_eq!(file["fileType"], 0);
    assert_eq!(file["filepath"], "firmware.bin");
    assert_eq!(file["sig-sha256-ecdsa"], SIGNATURE);
    assert_eq!(
        execution["jobDocument"]["afr_ota"]["protocols"],
        json!(["MQTT"])
    );
    let stream = execution["jobDocument"]["afr_ota"]["streamname"]
        .as_str()
        .unwrap()
        .to_owned();
    let job_id = execution["jobId"].as_str().unwrap().to_owned();

    // One block per request, as the coreOTA demo asks.
    let mut received = Vec::new();
    for block in 0..3u64 {
        let request = json!({"s": 1, "f": 0, "l": 4096, "o": block, "n": 1});
        let (topic, body) = thing
            .ask(&format!("streams/{stream}/get/json"), request)
            .await;
        assert_eq!(topic, format!("streams/{stream}/data/json"), "{body}");
        assert_eq!(body["i"], block);
        let bytes = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            body["p"].as_str().unwrap(),
        )
        .unwrap();
        assert_eq!(
            body["l"],
            bytes.len(),
            "the last block is labelled with its real length"
        );
        received.extend(bytes);
    }
    assert_eq!(received, data, "byte-identical");
    let shown = app.get("/api/v1/devices/thing-1").await.json();
    assert_eq!(shown["active_action"]["state"], "DOWNLOADING", "{shown}");

    // "Reboot": start-next again returns the IN_PROGRESS execution unchanged; then SUCCEEDED
    // with the demo's hard-coded string expectedVersion.
    let (_, again) = thing.ask("jobs/start-next", json!({})).await;
    assert_eq!(again["execution"]["versionNumber"], 2);
    assert_eq!(again["execution"]["status"], "IN_PROGRESS");
    let (topic, done) = thing
        .ask(
            &format!("jobs/{job_id}/update"),
            json!({"status": "SUCCEEDED", "expectedVersion": "2", "includeJobExecutionState": true}),
        )
        .await;
    assert_eq!(topic, format!("jobs/{job_id}/update/accepted"), "{done}");
    assert_eq!(done["executionState"]["status"], "SUCCEEDED");
    // Nothing is pending any more: notify says so, then notify-next.
    let (topic, payload) = thing.next().await;
    assert_eq!(topic, "jobs/notify");
    assert_eq!(
        serde_json::from_slice::<Value>(&payload).unwrap()["jobs"],
        json!({})
    );
    let (topic, _) = thing.next().await;
    assert_eq!(topic, "jobs/notify-next");
    assert_eq!(done["executionState"]["versionNumber"], 3);
    let shown = app.get("/api/v1/devices/thing-1").await.json();
    assert_eq!(shown["firmware"]["version"], "2.0.0", "{shown}");
    let history = app.get("/api/v1/devices/thing-1/history").await.json();
    assert_eq!(history[0]["state"], "UPDATED");
}

#[tokio::test]
async fn a_rustot_device_updates_with_cbor_windows_and_a_self_test() {
    let app = TestApp::new().await;
    let data = image(40_000);
    let token = setup(&app, "thing-2", &data, true).await;
    assign(&app, "thing-2").await;
    let mut thing = Thing::connect(&app, "thing-2", &token).await;
    thing.subscribe("jobs/notify-next").await;
    // rustot asks `$next/get` without subscribing to its answer.
    let (topic, next) = thing.ask("jobs/$next/get", json!({})).await;
    assert_eq!(topic, "jobs/$next/get/accepted");
    let execution = &next["execution"];
    assert_eq!(execution["status"], "QUEUED");
    assert_eq!(execution["versionNumber"], 1);
    let job_id = execution["jobId"].as_str().unwrap().to_owned();
    assert!(job_id.len() <= 44);
    let stream = execution["jobDocument"]["afr_ota"]["streamname"]
        .as_str()
        .unwrap()
        .to_owned();
    thing
        .subscribe(&format!("streams/{stream}/data/cbor"))
        .await;

    // 31-block windows of 1 KiB with a 4-byte little-endian bitmap of the missing blocks.
    let total = data.len().div_ceil(1024) as u64;
    let mut image_out = vec![0u8; data.len()];
    let mut offset = 0u64;
    let mut version = 1;
    while offset < total {
        let window = (total - offset).min(31);
        let bits: u32 = if window == 32 {
            u32::MAX
        } else {
            (1u32 << window) - 1
        };
        let request = ciborium_map(&[
            ("f", Cbor::Integer(0.into())),
            ("l", Cbor::Integer(1024.into())),
            ("o", Cbor::Integer(offset.into())),
            ("b", Cbor::Bytes(bits.to_le_bytes().to_vec())),
        ]);
        thing
            .send(&format!("streams/{stream}/get/cbor"), request)
            .await;
        for _ in 0..window {
            let (topic, payload) = thing.next().await;
            assert_eq!(topic, format!("streams/{stream}/data/cbor"));
            let block: Cbor = ciborium::from_reader(payload.as_slice()).unwrap();
            let field = |key: &str| {
                block
                    .as_map()
                    .unwrap()
                    .iter()
                    .find(|(k, _)| k.as_text() == Some(key))
                    .map(|(_, v)| v.clone())
                    .unwrap()
            };
            let index = u64::try_from(field("i").as_integer().unwrap()).unwrap();
            let bytes = field("p").as_bytes().unwrap().clone();
            assert_eq!(
                u64::try_from(field("l").as_integer().unwrap()).unwrap(),
                bytes.len() as u64
            );
            let at = usize::try_from(index * 1024).unwrap();
            image_out[at..at + bytes.len()].copy_from_slice(&bytes);
        }
        offset += window;
        // Progress as rustot reports it, at QoS 0, without a reply subscription.
        let (_, accepted) = thing
            .ask(
                &format!("jobs/{job_id}/update"),
                json!({"status": "IN_PROGRESS", "statusDetails": {
                    "updated_by": "0.1.0", "self_test": "receiving",
                    "progress": format!("{offset}/{total}")}}),
            )
            .await;
        version += 1;
        assert!(accepted["timestamp"].is_i64(), "{accepted}");
    }
    assert_eq!(image_out, data);
    for (self_test, state) in [("ready", "VERIFIED"), ("active", "UPDATING")] {
        let (topic, _) = thing
            .ask(
                &format!("jobs/{job_id}/update"),
                json!({"status": "IN_PROGRESS", "expectedVersion": version,
                    "statusDetails": {"updated_by": "0.1.0", "self_test": self_test}}),
            )
            .await;
        assert_eq!(topic, format!("jobs/{job_id}/update/accepted"));
        version += 1;
        let shown = app.get("/api/v1/devices/thing-2").await.json();
        assert_eq!(shown["active_action"]["state"], state, "{shown}");
    }
    // After the reboot the self test reads its details back verbatim.
    let (_, next) = thing.ask("jobs/$next/get", json!({})).await;
    assert_eq!(
        next["execution"]["statusDetails"],
        json!({"updated_by": "0.1.0", "self_test": "active"})
    );
    let (topic, _) = thing
        .ask(
            &format!("jobs/{job_id}/update"),
            json!({"status": "SUCCEEDED", "statusDetails": {"self_test": "accepted"}}),
        )
        .await;
    assert_eq!(topic, format!("jobs/{job_id}/update/accepted"));
    // The first pending execution changed: notify-next says there is none.
    let (topic, payload) = thing.next().await;
    assert_eq!(topic, "jobs/notify-next");
    let body: Value = serde_json::from_slice(&payload).unwrap();
    assert!(body.get("execution").is_none(), "{body}");
    let history = app.get("/api/v1/devices/thing-2/history").await.json();
    let states = crate::applied_states(&history[0]);
    assert_eq!(
        states,
        [
            "QUEUED",
            "INITIATED",
            "DOWNLOADING",
            "DOWNLOADED",
            "VERIFIED",
            "UPDATING",
            "UPDATED"
        ]
    );
}

use ciborium::Value as Cbor;

fn ciborium_map(pairs: &[(&str, Cbor)]) -> Vec<u8> {
    let map = Cbor::Map(
        pairs
            .iter()
            .map(|(k, v)| (Cbor::Text((*k).to_owned()), v.clone()))
            .collect(),
    );
    let mut out = Vec::new();
    ciborium::into_writer(&map, &mut out).unwrap();
    out
}

#[tokio::test]
async fn bad_requests_are_rejected_with_awss_codes() {
    let app = TestApp::new().await;
    let token = setup(&app, "thing-3", &image(5000), true).await;
    assign(&app, "thing-3").await;
    let mut thing = Thing::connect(&app, "thing-3", &token).await;
    let (_, started) = thing.ask("jobs/start-next", json!({})).await;
    let job_id = started["execution"]["jobId"].as_str().unwrap().to_owned();
    let stream = started["execution"]["jobDocument"]["afr_ota"]["streamname"]
        .as_str()
        .unwrap()
        .to_owned();
    let update = format!("jobs/{job_id}/update");
    for (topic, body, code) in [
        (
            update.as_str(),
            json!({"status": "IN_PROGRESS", "expectedVersion": 7}),
            "VersionMismatch",
        ),
        (
            update.as_str(),
            json!({"status": "REJECTED"}),
            "InvalidStateTransition",
        ),
        (
            update.as_str(),
            json!({"status": "CANCELED"}),
            "InvalidRequest",
        ),
        (update.as_str(), json!({}), "InvalidRequest"),
        (
            update.as_str(),
            json!({"status": "IN_PROGRESS", "statusDetails": {"a": 1}}),
            "InvalidRequest",
        ),
        (
            update.as_str(),
            json!({"status": "IN_PROGRESS", "statusDetails": {"bad key": "x"}}),
            "InvalidRequest",
        ),
        (
            "jobs/updraft-999999/update",
            json!({"status": "IN_PROGRESS"}),
            "ResourceNotFound",
        ),
        ("jobs/nonsense/get", json!({}), "ResourceNotFound"),
    ] {
        let (answer_topic, answer) = thing.ask(topic, body.clone()).await;
        assert_eq!(answer_topic, format!("{topic}/rejected"), "{body}");
        assert_eq!(answer["code"], code, "{body}: {answer}");
        if code == "VersionMismatch" || code == "InvalidStateTransition" {
            assert_eq!(answer["executionState"]["status"], "IN_PROGRESS");
        }
    }
    thing.send("jobs/get", "{not json").await;
    let (topic, payload) = thing.next().await;
    assert_eq!(topic, "jobs/get/rejected");
    assert_eq!(
        serde_json::from_slice::<Value>(&payload).unwrap()["code"],
        "InvalidJson"
    );

    for (body, code) in [
        (json!({"f": 0, "l": 100, "o": 0}), "BlockSizeOutOfBounds"),
        (json!({"f": 0, "l": 1024, "o": 99}), "OffsetOutOfBounds"),
        (
            json!({"f": 0, "l": 1024, "n": 200}),
            "BlockCountLimitExceeded",
        ),
        (json!({"f": 3, "l": 1024}), "ResourceNotFound"),
        (json!({"s": 2, "f": 0, "l": 1024}), "VersionMismatch"),
        (json!({"l": 1024}), "InvalidRequest"),
    ] {
        let (topic, answer) = thing
            .ask(&format!("streams/{stream}/get/json"), body.clone())
            .await;
        assert_eq!(topic, format!("streams/{stream}/rejected/json"), "{body}");
        assert_eq!(answer["o"], code, "{body}");
    }
    thing
        .send(&format!("streams/{stream}/get/cbor"), vec![0xff, 0x00])
        .await;
    let (topic, _) = thing.next().await;
    assert_eq!(topic, format!("streams/{stream}/rejected/cbor"));
    let (topic, answer) = thing
        .ask("streams/artifact-424242/describe/json", json!({"c": "x"}))
        .await;
    assert_eq!(topic, "streams/artifact-424242/rejected/json");
    assert_eq!(
        (answer["o"].as_str(), answer["c"].as_str()),
        (Some("ResourceNotFound"), Some("x"))
    );
    let (topic, described) = thing
        .ask(&format!("streams/{stream}/describe/json"), json!({}))
        .await;
    assert_eq!(topic, format!("streams/{stream}/description/json"));
    assert_eq!(described["r"], json!([{"f": 0, "z": 5000}]));

    // A terminal execution takes no more updates.
    let (topic, _) = thing
        .ask(
            &update,
            json!({"status": "FAILED", "statusDetails": {"reason": "pal err"}}),
        )
        .await;
    assert_eq!(topic, format!("{update}/accepted"));
    let (_, answer) = thing.ask(&update, json!({"status": "IN_PROGRESS"})).await;
    assert_eq!(answer["code"], "InvalidStateTransition");
    let history = app.get("/api/v1/devices/thing-3/history").await.json();
    assert_eq!(history[0]["state"], "FAILED");
    assert!(
        history[0]["failure"]["reason"]
            .as_str()
            .unwrap()
            .contains("pal err")
    );
    // The stream of a finished update is not this thing's any more.
    let (_, answer) = thing
        .ask(
            &format!("streams/{stream}/get/json"),
            json!({"f": 0, "l": 1024}),
        )
        .await;
    assert_eq!(answer["o"], "Unauthorized");
}

#[tokio::test]
async fn unsigned_artifacts_make_no_job_and_other_things_topics_close_the_connection() {
    let app = TestApp::new().await;
    let token = setup(&app, "thing-4", &image(3000), false).await;
    assign(&app, "thing-4").await;
    let mut thing = Thing::connect(&app, "thing-4", &token).await;
    let (topic, answer) = thing.ask("jobs/get", json!({"clientToken": "t1"})).await;
    assert_eq!(topic, "jobs/get/accepted");
    assert_eq!(answer["queuedJobs"], json!([]));
    assert_eq!(answer["clientToken"], "t1");
    let history = app.get("/api/v1/devices/thing-4/history").await.json();
    assert_eq!(history[0]["state"], "FAILED");
    assert_eq!(history[0]["failure"]["code"], "unsupported_package");

    // Reaching for another thing's topics ends the connection, as AWS IoT does.
    thing
        .client
        .publish(
            "$aws/things/thing-5/jobs/get",
            QoS::AtLeastOnce,
            false,
            "{}",
        )
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if updraft_test_support::within(thing.events.poll())
                .await
                .is_err()
            {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection is closed");
}

/// AWS's own Python device SDK (awsiotsdk's jobs client) is notified of a job when it is
/// assigned and walks start-next → IN_PROGRESS → SUCCEEDED against Updraft.
#[tokio::test]
async fn the_aws_iot_device_sdk_jobs_client_runs_a_job() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let Some(python) = updraft_test_support::interop_python() else {
        return;
    };
    let app = TestApp::new().await;
    let token = setup(&app, "sdk-thing", &image(2000), true).await;
    let (host, port) = app.listen_mqtt().await;
    let script = std::path::Path::new(
        &std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()),
    )
    .join("tests/interop/aws_jobs.py");
    let mut child = tokio::process::Command::new(python)
        .arg(script)
        .args([host, port.to_string(), "sdk-thing".into(), token])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = updraft_test_support::within(lines.next_line())
        .await
        .unwrap();
    if ready.as_deref() != Some("ready") {
        let mut stderr = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr)
            .await
            .unwrap();
        panic!("the SDK did not start: {stderr}");
    }
    assign(&app, "sdk-thing").await;
    let summary = updraft_test_support::within(lines.next_line())
        .await
        .unwrap();
    let status = updraft_test_support::within(child.wait()).await.unwrap();
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert!(status.success(), "the SDK failed: {stderr}");
    let seen: Value = serde_json::from_str(&summary.unwrap()).unwrap();
    assert_eq!(seen["notified_job"], seen["started"]["job_id"]);
    assert_eq!(seen["started"]["status"], "IN_PROGRESS");
    assert_eq!(seen["started"]["version"], 2);
    assert_eq!(
        seen["started"]["document"]["afr_ota"]["files"][0]["filesize"],
        2000
    );
    assert_eq!(seen["updates"], json!(["IN_PROGRESS", "SUCCEEDED"]));
    let shown = app.get("/api/v1/devices/sdk-thing").await.json();
    assert_eq!(shown["firmware"]["version"], "2.0.0");
}

/// The job document names the device's profile's signing certificate and carries the signature
/// that was checked against it at upload.
#[tokio::test]
async fn the_job_document_names_the_profiles_certificate_and_the_checked_signature() {
    use base64::Engine;
    let vectors = std::path::Path::new(
        &std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()),
    )
    .join("../updraft-core/tests/vectors");
    let pem = std::fs::read_to_string(vectors.join("code-sign.pem")).unwrap();
    let signature = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(vectors.join("signed.bin.sig")).unwrap());
    let data = std::fs::read(vectors.join("signed.bin")).unwrap();
    let app = TestApp::new().await;
    app.post(
        "/api/v1/profiles",
        json!({"name": "esp32-c3", "signing_cert": pem, "signing_cert_name": "ota/code-sign.pem"}),
    )
    .await;
    let created = app
        .post(
            "/api/v1/devices",
            json!({"id": "thing-6", "profile": "esp32-c3"}),
        )
        .await;
    let token = created.json()["token"].as_str().unwrap().to_owned();
    let uploaded = app
        .upload(
            &format!(
                "title=ota-fw&version=2.0.0&profiles=esp32-c3&signature={}",
                urlencode(&signature)
            ),
            &data,
        )
        .await;
    assert!(uploaded.status.is_success(), "{:?}", uploaded.json());
    assign(&app, "thing-6").await;
    let mut thing = Thing::connect(&app, "thing-6", &token).await;
    let (_, started) = thing.ask("jobs/start-next", json!({})).await;
    let file = &started["execution"]["jobDocument"]["afr_ota"]["files"][0];
    assert_eq!(file["certfile"], "ota/code-sign.pem");
    assert_eq!(file["sig-sha256-ecdsa"], signature.as_str());
}

/// `stepTimeoutInMinutes` runs out: the execution is TIMED_OUT and the update FAILED. (The clock
/// is not waited for: the stored deadline is moved into the past.)
#[tokio::test]
async fn a_step_that_runs_out_of_time_ends_timed_out() {
    let app = TestApp::new().await;
    let token = setup(&app, "thing-8", &image(3000), true).await;
    assign(&app, "thing-8").await;
    let mut thing = Thing::connect(&app, "thing-8", &token).await;
    thing.subscribe("jobs/notify").await;
    let (_, started) = thing
        .ask("jobs/start-next", json!({"stepTimeoutInMinutes": 1}))
        .await;
    let job_id = started["execution"]["jobId"].as_str().unwrap().to_owned();
    let key = updraft_core::ActionKey(job_id.trim_start_matches("updraft-").parse().unwrap());
    let mut row = app.state.store.job_execution(key).await.unwrap().unwrap();
    assert!(row.step_deadline.is_some());
    row.step_deadline = Some(1);
    assert!(
        app.state
            .store
            .save_job_execution(&row, Some(row.version_number))
            .await
            .unwrap()
    );
    let (_, next) = thing.ask("jobs/$next/get", json!({})).await;
    assert!(next.get("execution").is_none(), "{next}");
    let (_, described) = thing.ask(&format!("jobs/{job_id}/get"), json!({})).await;
    assert_eq!(described["execution"]["status"], "TIMED_OUT");
    let (topic, answer) = thing
        .ask(
            &format!("jobs/{job_id}/update"),
            json!({"status": "SUCCEEDED"}),
        )
        .await;
    assert_eq!(topic, format!("jobs/{job_id}/update/rejected"));
    assert_eq!(answer["code"], "InvalidStateTransition");
    let history = app.get("/api/v1/devices/thing-8/history").await.json();
    assert_eq!(history[0]["state"], "FAILED");
    assert!(
        history[0]["failure"]["reason"]
            .as_str()
            .unwrap()
            .contains("timed out")
    );
}

/// A profile that asks for it gets HTTP offered beside the MQTT stream: a one-time URL that
/// serves the file with ranges, so a device restarted mid-download resumes.
#[tokio::test]
async fn profiles_can_offer_the_file_over_a_one_time_http_url() {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    let app = TestApp::new().await;
    app.post(
        "/api/v1/profiles",
        json!({"name": "esp32-http", "aws_http_delivery": true}),
    )
    .await;
    let created = app
        .post(
            "/api/v1/devices",
            json!({"id": "thing-9", "profile": "esp32-http"}),
        )
        .await;
    let token = created.json()["token"].as_str().unwrap().to_owned();
    let data = image(9000);
    app.upload(
        "title=ota-fw&version=2.0.0&filename=firmware.bin&signature=c3RhbmQtaW4%3D",
        &data,
    )
    .await;
    assign(&app, "thing-9").await;
    let mut thing = Thing::connect(&app, "thing-9", &token).await;
    let (_, started) = thing.ask("jobs/start-next", json!({})).await;
    let document = &started["execution"]["jobDocument"]["afr_ota"];
    assert_eq!(document["protocols"], json!(["MQTT", "HTTP"]));
    let url = document["files"][0]["update_data_url"].as_str().unwrap();
    let path = url
        .split_once("/dl/")
        .map(|(_, t)| format!("/dl/{t}"))
        .unwrap();
    // The same URL while the job lives.
    let (_, again) = thing.ask("jobs/$next/get", json!({})).await;
    assert_eq!(
        again["execution"]["jobDocument"]["afr_ota"]["files"][0]["update_data_url"],
        url
    );
    let whole = app
        .send(Request::get(&path).body(Body::empty()).unwrap())
        .await;
    assert_eq!(whole.status, StatusCode::OK);
    assert_eq!(whole.body, data);
    let rest = app
        .send(
            Request::get(&path)
                .header("range", "bytes=4000-")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(rest.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(rest.body, data[4000..]);
    // A device resuming names the bytes it started with (Anjay sends If-Match).
    let etag = whole.headers["etag"].to_str().unwrap().to_owned();
    for (if_match, status) in [
        (etag.as_str(), StatusCode::PARTIAL_CONTENT),
        ("\"0000\"", StatusCode::PRECONDITION_FAILED),
    ] {
        let answer = app
            .send(
                Request::get(&path)
                    .header("range", "bytes=8000-")
                    .header("if-match", if_match)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(answer.status, status, "{if_match}");
    }
    let unknown = app
        .send(Request::get("/dl/not-a-grant").body(Body::empty()).unwrap())
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    // The URL dies with its job: once the operator cancels, it opens nothing.
    let removed = app
        .call(
            axum::http::Method::DELETE,
            "/api/v1/assignments?device=thing-9",
            &app.admin.clone(),
            None,
        )
        .await;
    assert!(removed.status.is_success());
    let canceled = app
        .send(Request::get(&path).body(Body::empty()).unwrap())
        .await;
    assert_eq!(canceled.status, StatusCode::NOT_FOUND);
}

/// An operator's cancel (unassigning) ends the execution CANCELED: the device's next look finds
/// no pending job, and its updates of the canceled one are refused.
#[tokio::test]
async fn an_operator_cancel_ends_the_execution_canceled() {
    use axum::http::Method;
    let app = TestApp::new().await;
    let token = setup(&app, "thing-10", &image(3000), true).await;
    assign(&app, "thing-10").await;
    let mut thing = Thing::connect(&app, "thing-10", &token).await;
    let (_, started) = thing.ask("jobs/start-next", json!({})).await;
    let job_id = started["execution"]["jobId"].as_str().unwrap().to_owned();
    let removed = app
        .call(
            Method::DELETE,
            "/api/v1/assignments?device=thing-10",
            &app.admin.clone(),
            None,
        )
        .await;
    assert!(removed.status.is_success());
    let (_, next) = thing.ask("jobs/$next/get", json!({})).await;
    assert!(next.get("execution").is_none(), "{next}");
    let (_, described) = thing.ask(&format!("jobs/{job_id}/get"), json!({})).await;
    assert_eq!(described["execution"]["status"], "CANCELED");
    let (_, answer) = thing
        .ask(
            &format!("jobs/{job_id}/update"),
            json!({"status": "SUCCEEDED"}),
        )
        .await;
    assert_eq!(answer["code"], "InvalidStateTransition");
    assert_eq!(answer["executionState"]["status"], "CANCELED");
}

/// A rollout's update type reaches an AWS device in its job document (FreeRTOS OTA installs
/// anyway; an agent of its own can read `updraft.updateType`); an assignment's job has none.
#[tokio::test]
async fn a_soft_rollout_says_so_in_the_job_document() {
    let app = TestApp::new().await;
    let token = setup(&app, "thing-9", &image(1000), true).await;
    let created = app
        .post(
            "/api/v1/rollouts",
            json!({"name": "soft", "artifact": "ota-fw@2.0.0", "devices": ["thing-9"],
                   "type": "soft", "start": "auto"}),
        )
        .await;
    assert_eq!(
        created.status,
        axum::http::StatusCode::CREATED,
        "{:?}",
        created.json()
    );
    updraft_server::kernel::scheduler::pass(
        &app.state,
        updraft_server::kernel::clock::now_millis(),
    )
    .await
    .unwrap();
    let mut thing = Thing::connect(&app, "thing-9", &token).await;
    let (_, started) = thing.ask("jobs/start-next", json!({})).await;
    let document = &started["execution"]["jobDocument"];
    assert_eq!(document["updraft"]["updateType"], "soft", "{started}");
    assert!(document["afr_ota"]["files"][0]["filesize"].is_u64());
}
