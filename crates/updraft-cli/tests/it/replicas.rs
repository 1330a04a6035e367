//! The scale-out configuration end to end: two `updraft serve` replicas on one PostgreSQL and one
//! S3 engine (SeaweedFS), behind HAProxy running the repository's `deploy/haproxy.cfg`.
//!
//! - What one replica issues works on the other: an assignment made through A reaches a
//!   ThingsBoard MQTT device connected to B at once, a `/dl/` URL issued by A downloads from B,
//!   an artifact uploaded through A downloads byte-identical through B and through the balancer.
//! - A replica killed mid-campaign loses nothing: 1,000 simulated devices (DDI and ThingsBoard
//!   MQTT, through HAProxy) all end UPDATED, an upload in flight on it leaves no artifact without
//!   its object and nothing garbage collection would keep, and its singleton tasks move to the
//!   survivor.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use updraft_test_support::haproxy::{Backend, Haproxy};
use updraft_test_support::s3::Bucket;
use updraft_test_support::server::ServerProcess;

use crate::{Cli, binary, firmware};

/// Two replicas, their database, bucket and balancer.
struct Cluster {
    dir: tempfile::TempDir,
    database_url: String,
    bucket: Bucket,
    a: Option<ServerProcess>,
    b: ServerProcess,
    lb: Haproxy,
    runtime: tokio::runtime::Runtime,
    /// A's server admin key (keys live in the shared database: it works on B too).
    admin: String,
}

fn s3_env(bucket: &Bucket) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", bucket.endpoint.clone()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", bucket.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY", bucket.secret_key.clone()),
    ]
}

fn replica(dir: &Path, name: &str, database_url: &str, bucket: &Bucket) -> ServerProcess {
    let env = s3_env(bucket);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let blobs = bucket.url();
    ServerProcess::start_with_env(
        &binary(),
        &dir.join(name),
        &["--database-url", database_url, "--blobs", &blobs],
        &env,
    )
    .unwrap()
}

fn backend(server: &ServerProcess) -> Backend {
    Backend {
        http: server.addr().to_owned(),
        mqtt: server.mqtt.clone().unwrap(),
    }
}

impl Cluster {
    /// `None` when PostgreSQL, SeaweedFS or HAProxy is missing (said loudly; under CI a failure).
    fn start() -> Option<Cluster> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let database_url = runtime.block_on(updraft_test_support::postgres::fresh_database())?;
        let bucket = updraft_test_support::s3::fresh_bucket()?;
        let dir = tempfile::tempdir().unwrap();
        let a = replica(dir.path(), "a", &database_url, &bucket);
        let b = replica(dir.path(), "b", &database_url, &bucket);
        let lb = Haproxy::start(&backend(&a), &backend(&b)).unwrap()?;
        let admin = a.admin_token().unwrap();
        Some(Cluster {
            admin,
            dir,
            database_url,
            bucket,
            a: Some(a),
            b,
            lb,
            runtime,
        })
    }

    fn a(&self) -> &ServerProcess {
        self.a.as_ref().unwrap()
    }

    /// The CLI against `server` with A's admin key (keys live in the shared database).
    fn cli<'a>(&'a self, server: &'a ServerProcess) -> Cli<'a> {
        Cli {
            server,
            token: self.admin.clone(),
            cwd: self.dir.path().to_path_buf(),
        }
    }
}

/// An MQTT client of a device (`token` as its user name, as ThingsBoard's SDK logs in).
struct Device {
    client: rumqttc::AsyncClient,
    publishes: tokio::sync::mpsc::Receiver<(String, Value)>,
}

impl Device {
    /// Connected to `addr` and subscribed to `topics` (returns once the broker acknowledged).
    async fn connect(addr: &str, id: &str, token: &str, topics: &[&str]) -> Device {
        use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
        let (host, port) = addr.rsplit_once(':').unwrap();
        let mut options = MqttOptions::new(id, host, port.parse().unwrap());
        options.set_credentials(token, "");
        options.set_max_packet_size(1 << 24, 1 << 24);
        let (client, mut events) = AsyncClient::new(options, 16);
        for topic in topics {
            client.subscribe(*topic, QoS::AtLeastOnce).await.unwrap();
        }
        let (tx, publishes) = tokio::sync::mpsc::channel(64);
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let wanted = topics.len();
        tokio::spawn(async move {
            let mut acks = 0;
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        acks += 1;
                        if acks == wanted
                            && let Some(tx) = subscribed_tx.take()
                        {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let body = serde_json::from_slice(&publish.payload).unwrap_or(Value::Null);
                        if tx.send((publish.topic, body)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(err) => panic!("device connection: {err}"),
                }
            }
        });
        updraft_test_support::within(subscribed).await.unwrap();
        Device { client, publishes }
    }

    async fn publish(&self, topic: &str, body: Value) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, body.to_string())
            .await
            .unwrap();
    }

    /// The next message on a topic that starts with `prefix`.
    async fn next(&mut self, prefix: &str) -> Value {
        loop {
            let (topic, body) = updraft_test_support::within(self.publishes.recv())
                .await
                .unwrap();
            if topic.starts_with(prefix) {
                return body;
            }
        }
    }
}

fn get(url: &str) -> (u16, Vec<u8>) {
    let out = updraft_test_support::curl_get(url, None).output().unwrap();
    updraft_test_support::curl_answer(out.stdout)
}

#[test]
fn replicas_share_assignments_download_urls_and_artifacts() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let (a, b) = (cluster.a(), &cluster.b);
    let via_a = cluster.cli(a);
    let via_b = cluster.cli(b);

    // An artifact uploaded through A downloads byte-identical through B and the balancer.
    let data = firmware(3 * 1024 * 1024 + 17);
    std::fs::write(cluster.dir.path().join("fw.bin"), &data).unwrap();
    via_a.ok(&[
        "artifact",
        "upload",
        "fw.bin",
        "--title",
        "fw",
        "--version",
        "2",
    ]);
    via_b.ok(&["artifact", "download", "fw@2", "-o", "from-b.bin"]);
    assert!(std::fs::read(cluster.dir.path().join("from-b.bin")).unwrap() == data);
    let out = Command::new(binary())
        .args(["artifact", "download", "fw@2", "-o", "from-lb.bin"])
        .current_dir(cluster.dir.path())
        .env("UPDRAFT_SERVER", &cluster.lb.url)
        .env("UPDRAFT_TOKEN", &via_a.token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(cluster.dir.path().join("from-lb.bin")).unwrap() == data);

    cluster.runtime.block_on(async {
        // An assignment made through A reaches a ThingsBoard device connected to B at once.
        via_a.ok(&["profile", "create", "tbp"]);
        let created = via_a.json(&["device", "create", "tb-1", "--profile", "tbp"]);
        let token = created["token"].as_str().unwrap().to_owned();
        let mut tb = Device::connect(
            b.mqtt.as_deref().unwrap(),
            "tb-1",
            &token,
            &["v1/devices/me/attributes"],
        )
        .await;
        let assigned = Instant::now();
        via_a.ok(&["assign", "--device", "tb-1", "--artifact", "fw@2"]);
        let pushed = tb.next("v1/devices/me/attributes").await;
        let took = assigned.elapsed();
        assert_eq!(pushed["fw_title"], "fw", "{pushed}");
        assert_eq!(pushed["fw_version"], "2", "{pushed}");
        // The assignment command's own process start and exit are in `took` too.
        assert!(took < Duration::from_secs(1), "{took:?}");

        // A /dl/ URL issued by A (an AWS IoT job document read through A) downloads from B.
        via_a.ok(&["profile", "create", "awsp", "--aws-http-delivery"]);
        let signature = crate::sim::stand_in_signature(cluster.dir.path());
        let image = firmware(200_000);
        std::fs::write(cluster.dir.path().join("aws.bin"), &image).unwrap();
        via_a.ok(&[
            "artifact",
            "upload",
            "aws.bin",
            "--title",
            "awsfw",
            "--version",
            "1",
            "--signature-file",
            &signature,
        ]);
        let created = via_a.json(&["device", "create", "thing-1", "--profile", "awsp"]);
        let token = created["token"].as_str().unwrap().to_owned();
        via_a.ok(&["assign", "--device", "thing-1", "--artifact", "awsfw@1"]);
        let mut thing = Device::connect(
            a.mqtt.as_deref().unwrap(),
            "thing-1",
            &token,
            &["$aws/things/thing-1/jobs/start-next/accepted"],
        )
        .await;
        thing
            .publish("$aws/things/thing-1/jobs/start-next", json!({}))
            .await;
        let started = thing
            .next("$aws/things/thing-1/jobs/start-next/accepted")
            .await;
        let url = started["execution"]["jobDocument"]["afr_ota"]["files"][0]["update_data_url"]
            .as_str()
            .unwrap_or_else(|| panic!("no URL: {started}"))
            .to_owned();
        assert!(url.starts_with(&a.url), "{url}");
        let on_b = url.replacen(&a.url, &b.url, 1);
        let (status, body) = get(&on_b);
        assert_eq!(status, 200);
        assert!(body == image);
        let (status, _) = get(&format!("{on_b}x"));
        assert_eq!(status, 404, "a changed token opens nothing");
    });
}

/// One `updraft sim` through the balancer, its progress lines read as they come.
struct Sim {
    child: std::process::Child,
    progress: std::sync::mpsc::Receiver<String>,
}

/// `updraft sim` of `protocol` with the key `token` (each simulator counts its key's tenant).
fn sim(cluster: &Cluster, token: &str, protocol: &str, devices: usize) -> Sim {
    let devices = devices.to_string();
    let mut child = Command::new(binary())
        .args([
            "sim",
            "--protocol",
            protocol,
            "--prefix",
            protocol,
            "--profile",
            protocol,
            "--devices",
            &devices,
            "--poll",
            "0.5",
            "--assign",
            "fleet@2",
            "--until-done",
            "--timeout",
            "400",
            "--seed",
            "11",
            "--mqtt",
            &cluster.lb.mqtt,
            "--json",
        ])
        .current_dir(cluster.dir.path())
        .env("UPDRAFT_SERVER", &cluster.lb.url)
        .env("UPDRAFT_TOKEN", token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, progress) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("sim: {line}");
            let _ = tx.send(line);
        }
    });
    Sim { child, progress }
}

impl Sim {
    /// Waits for a progress line that says some devices are downloading or done.
    fn await_downloads(&self) {
        loop {
            let line = self
                .progress
                .recv_timeout(updraft_test_support::NETWORK_WAIT)
                .expect("the simulator reported no progress");
            if line.contains("DOWNLOADING") || line.contains("UPDATED") {
                return;
            }
        }
    }

    fn summary(self) -> Value {
        let out = self.child.wait_with_output().unwrap();
        assert!(out.status.success(), "the simulator failed");
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

#[test]
fn a_replica_killed_mid_campaign_loses_nothing() {
    let _one = crate::sim::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let Some(mut cluster) = Cluster::start() else {
        return;
    };
    let via_a = cluster.cli(cluster.a());
    // The DDI devices in the default tenant, the ThingsBoard ones in a tenant of their own: each
    // simulator counts the updates of its key's tenant.
    via_a.ok(&["tenant", "create", "tb"]);
    let tb_key = via_a.json(&["key", "create", "sim", "--role", "admin", "--tenant", "tb"]);
    let tb_token = tb_key["token"].as_str().unwrap().to_owned();
    let via_tb = Cli {
        server: cluster.a(),
        token: tb_token.clone(),
        cwd: cluster.dir.path().to_path_buf(),
    };
    std::fs::write(cluster.dir.path().join("fleet.bin"), firmware(256 * 1024)).unwrap();
    for cli in [&via_a, &via_tb] {
        cli.ok(&[
            "artifact",
            "upload",
            "fleet.bin",
            "--title",
            "fleet",
            "--version",
            "2",
        ]);
    }
    // The scheduler and the collector run on A, which started first.
    cluster
        .a()
        .await_line("runs the rollout scheduler")
        .unwrap();
    cluster.a().await_line("runs garbage collection").unwrap();
    // An upload in flight on A when it dies: 4 MB sent at 50 kB/s (80 s; A dies long before).
    let slow = cluster.dir.path().join("slow.bin");
    std::fs::write(&slow, firmware(4 * 1024 * 1024)).unwrap();
    let mut upload = Command::new("curl")
        .args([
            "-s",
            "--limit-rate",
            "50k",
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {}", via_a.token),
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
        ])
        .arg(format!("@{}", slow.display()))
        .arg(format!(
            "{}/api/v1/artifacts?title=slow&version=1&filename=slow.bin",
            cluster.a().url
        ))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let ddi = sim(&cluster, &via_a.token, "ddi", 500);
    let thingsboard = sim(&cluster, &tb_token, "thingsboard", 500);
    ddi.await_downloads();
    thingsboard.await_downloads();
    cluster.a.take().unwrap().kill().unwrap();
    let _ = upload.wait();

    // Every device ends UPDATED through the survivor.
    for (protocol, summary) in [
        ("ddi", ddi.summary()),
        ("thingsboard", thingsboard.summary()),
    ] {
        assert_eq!(
            summary["final_states"]["UPDATED"].as_u64(),
            Some(500),
            "{protocol}: {summary}"
        );
    }
    // The survivor took the singleton tasks over.
    cluster.b.await_line("runs the rollout scheduler").unwrap();
    cluster.b.await_line("runs garbage collection").unwrap();
    // The interrupted upload left no artifact, and every object left in the bucket is either
    // an artifact's or one that garbage collection removes (once past its grace).
    let via_b = cluster.cli(&cluster.b);
    let artifacts = via_b.json(&["artifact", "list"]);
    assert!(
        !artifacts.to_string().contains("\"slow\""),
        "an artifact of an interrupted upload: {artifacts}"
    );
    cluster.runtime.block_on(async {
        use updraft_store::BlobStore;
        use updraft_store::prelude::*;
        let store = updraft_store::SqlStore::open(&cluster.database_url)
            .await
            .unwrap();
        let bucket = &cluster.bucket;
        let blobs = updraft_store::S3BlobStore::open(
            &updraft_store::S3Config::at_endpoint(
                &bucket.url(),
                &bucket.endpoint,
                &bucket.access_key,
                &bucket.secret_key,
            )
            .unwrap(),
        )
        .unwrap();
        let referenced = store.blob_references().await.unwrap();
        for sha in &referenced {
            assert!(
                blobs.size(sha).await.unwrap().is_some(),
                "an artifact without its object: {sha}"
            );
        }
        // What the dead replica left (a staging object, a blob without its artifact row) is
        // removed by the first collection past its grace; what artifacts use stays.
        let past_the_grace = updraft_core_now() + 3_600_000;
        updraft_store::collect_garbage(&store, &blobs, past_the_grace)
            .await
            .unwrap();
        let left: Vec<String> = blobs.list().await.unwrap();
        let mut referenced: Vec<String> = referenced.into_iter().collect();
        referenced.sort();
        assert_eq!(
            left, referenced,
            "a collection past the grace leaves what artifacts use"
        );
        assert_eq!(blobs.clear_staging(past_the_grace).await.unwrap(), 0);
    });
}

fn updraft_core_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// SIGTERM drains: connected MQTT devices are disconnected at once (to reconnect through the
/// balancer elsewhere) while an open HTTP request still finishes; then the process exits cleanly.
#[test]
fn sigterm_disconnects_mqtt_devices_and_lets_requests_finish() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = crate::serve(dir.path());
    let cli = Cli::admin(&server, dir.path());
    let created = cli.json(&["device", "create", "tb-drain"]);
    let token = created["token"].as_str().unwrap().to_owned();
    // An upload under way: its head and half its body sent, the rest after the SIGTERM.
    let body = firmware(600_000);
    let mut upload = std::net::TcpStream::connect(server.addr()).unwrap();
    write!(
        upload,
        "POST /api/v1/artifacts?title=slow&version=1 HTTP/1.1\r\nHost: updraft\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        cli.token,
        body.len()
    )
    .unwrap();
    upload.write_all(&body[..300_000]).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use rumqttc::{AsyncClient, Event, MqttOptions, Packet};
        let (host, port) = server.mqtt.as_deref().unwrap().rsplit_once(':').unwrap();
        let mut options = MqttOptions::new("tb-drain", host, port.parse().unwrap());
        options.set_credentials(token.as_str(), "");
        let (_client, mut events) = AsyncClient::new(options, 8);
        updraft_test_support::within(async {
            loop {
                if let Event::Incoming(Packet::ConnAck(_)) = events.poll().await.unwrap() {
                    return;
                }
            }
        })
        .await;
        server.send_term().unwrap();
        // The server closes the device's connection at once; its next read fails.
        updraft_test_support::within(async {
            loop {
                if events.poll().await.is_err() {
                    return;
                }
            }
        })
        .await;
    });
    // …while the upload keeps the process alive; it finishes and is stored.
    assert!(
        server.running(),
        "the server exited before its requests finished"
    );
    upload.write_all(&body[300_000..]).unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut upload, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let exit = server.wait().unwrap();
    assert!(exit.success(), "a drained server exits cleanly: {exit}");
}
