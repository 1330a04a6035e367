//! Whole updates through the real DDI API with slot files on disk.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use updraft_agent::AgentError;
use updraft_agent::agent::{Agent, AgentConfig, Hooks, Outcome, Stats};
use updraft_agent::flash::{DirFlash, Flash};
use updraft_agent::server::DdiClient;
use updraft_agent::state::{AgentState, Release, Slot};

use crate::{Server, image, sha256};

fn release(title: &str, version: &str) -> Release {
    Release {
        title: title.into(),
        version: version.into(),
    }
}

/// A device whose slot A holds `factory` and runs `fw@1`.
fn factory_device(dir: &Path, factory: &[u8]) {
    let mut flash = DirFlash::open(dir).unwrap();
    flash.write_slot(Slot::A, 0, factory).unwrap();
}

pub struct Run {
    pub state: AgentState,
    pub boots: u32,
    pub stats: Stats,
    pub network_errors: u32,
}

/// Powers the device on and runs it, rebooting when asked, until it has nothing left to do.
pub async fn run_until_idle(server_url: &str, token: &str, slots: &Path, healthy: bool) -> Run {
    let config = AgentConfig {
        factory_release: Some(release("fw", "1")),
        progress_every: 128 * 1024,
        ..AgentConfig::default()
    };
    let mut stats = Stats::default();
    let mut network_errors = 0;
    for boots in 1..=20 {
        let flash = DirFlash::open(slots).unwrap();
        let client = DdiClient::new(server_url, "DEFAULT", "dev01", token).unwrap();
        let hooks = Hooks {
            health: Box::new(move |_| healthy),
            ..Hooks::default()
        };
        let (mut agent, outcome) = Agent::start(flash, client, config.clone(), hooks)
            .await
            .unwrap();
        if outcome == Some(Outcome::Reboot) {
            continue;
        }
        let mut reboot = false;
        for _ in 0..50 {
            match agent.cycle().await {
                Ok(Outcome::Reboot) => {
                    reboot = true;
                    break;
                }
                Ok(Outcome::Idle { sleep })
                    if sleep > Duration::ZERO && agent.state().job.is_none() =>
                {
                    break;
                }
                Ok(Outcome::Idle { .. }) => {}
                Err(AgentError::Network(_)) => network_errors += 1,
                Err(other) => panic!("agent failed: {other}"),
            }
        }
        stats.bytes_received += agent.stats.bytes_received;
        stats.downloads_started += agent.stats.downloads_started;
        if !reboot {
            return Run {
                state: agent.state().clone(),
                boots,
                stats,
                network_errors,
            };
        }
    }
    panic!("the agent did not settle in 20 boots");
}

#[tokio::test]
async fn the_agent_updates_into_the_other_slot_and_confirms() {
    let server = Server::start().await;
    let token = server.device("dev01").await;
    let old = image(100_000, 1);
    let new = image(700_000, 2);
    server.upload("fw", "2", &new).await;
    server.assign("dev01", "fw@2").await;
    let slots = tempfile::tempdir().unwrap();
    factory_device(slots.path(), &old);

    let run = run_until_idle(&server.url, &token, slots.path(), true).await;
    assert_eq!(run.state.active, Slot::B);
    assert_eq!(run.state.running, Some(release("fw", "2")));
    assert!(run.state.job.is_none());
    assert_eq!(run.boots, 2, "one reboot into the new image");
    assert_eq!(std::fs::read(slots.path().join("slot-b.img")).unwrap(), new);
    assert_eq!(
        std::fs::read(slots.path().join("slot-a.img")).unwrap(),
        old,
        "the old slot is untouched"
    );

    let device = server.get("/api/v1/devices/dev01").await;
    assert_eq!(device["firmware"]["version"], "2");
    let (mut states, action) = server.latest_action("dev01").await;
    states.dedup();
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
    let progress: Vec<u64> = action["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["progress"]["done"].as_u64())
        .collect();
    assert!(
        progress.len() >= 3,
        "progress is reported while downloading: {progress:?}"
    );
}

/// Forwards connections to `upstream`, and cuts the first connection that carries more than
/// `cut_after` bytes towards the client, once.
async fn cutting_proxy(upstream: String, cut_after: u64) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let armed = Arc::new(AtomicBool::new(true));
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let armed = armed.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.split();
                let (mut server_read, mut server_write) = server.split();
                let forwarded = AtomicU64::new(0);
                let up = tokio::io::copy(&mut client_read, &mut server_write);
                let down = async {
                    let mut buffer = vec![0u8; 16 * 1024];
                    loop {
                        let n = match server_read.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let total = forwarded.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                        if total > cut_after && armed.swap(false, Ordering::SeqCst) {
                            return;
                        }
                        if client_write.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                tokio::select! {
                    _ = up => {},
                    () = down => {},
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_download_cut_mid_way_resumes_from_where_it_stopped() {
    let server = Server::start().await;
    let token = server.device("dev01").await;
    let new = image(1_000_000, 3);
    server.upload("fw", "2", &new).await;
    server.assign("dev01", "fw@2").await;
    let proxy = cutting_proxy(server.url.trim_start_matches("http://").to_owned(), 400_000).await;
    let slots = tempfile::tempdir().unwrap();
    factory_device(slots.path(), &image(1000, 1));

    let run = run_until_idle(&proxy, &token, slots.path(), true).await;
    assert_eq!(run.state.running, Some(release("fw", "2")));
    assert_eq!(run.network_errors, 1, "the cut was noticed once");
    assert_eq!(run.stats.downloads_started, 2, "one resumed download");
    let resent = run.stats.bytes_received - new.len() as u64;
    assert!(
        resent < 64 * 1024,
        "{resent} bytes were sent twice; less than one chunk may be"
    );
    assert_eq!(std::fs::read(slots.path().join("slot-b.img")).unwrap(), new);
}

#[tokio::test]
async fn a_corrupted_artifact_fails_the_integrity_check_and_the_running_slot_stays() {
    let server = Server::start().await;
    let token = server.device("dev01").await;
    let new = image(200_000, 4);
    let uploaded = server.upload("fw", "2", &new).await;
    server.assign("dev01", "fw@2").await;
    // Flip bytes of the stored blob behind the server's back.
    let sha = uploaded["checksums"]["sha256"].as_str().unwrap().to_owned();
    let blob = server
        .dir
        .path()
        .join("blobs/sha256")
        .join(&sha[..2])
        .join(&sha);
    let mut corrupted = new.clone();
    corrupted[1000] ^= 0xff;
    std::fs::write(&blob, &corrupted).unwrap();
    let old = image(5000, 1);
    let slots = tempfile::tempdir().unwrap();
    factory_device(slots.path(), &old);

    let run = run_until_idle(&server.url, &token, slots.path(), true).await;
    assert_eq!(run.state.active, Slot::A);
    assert_eq!(run.state.running, Some(release("fw", "1")));
    assert_eq!(std::fs::read(slots.path().join("slot-a.img")).unwrap(), old);
    let (states, action) = server.latest_action("dev01").await;
    assert_eq!(states.last().map(String::as_str), Some("FAILED"));
    assert_eq!(action["failure"]["code"], "integrity_check_failed");
    assert!(
        action["failure"]["reason"]
            .as_str()
            .unwrap()
            .contains(&sha256(&corrupted))
    );
}

#[tokio::test]
async fn a_new_image_that_fails_its_health_check_is_rolled_back() {
    let server = Server::start().await;
    let token = server.device("dev01").await;
    let v1 = image(50_000, 5);
    let v2 = image(60_000, 6);
    server.upload("fw", "1.1", &v1).await;
    server.upload("fw", "2", &v2).await;
    let slots = tempfile::tempdir().unwrap();
    factory_device(slots.path(), &image(5000, 1));
    server.assign("dev01", "fw@1.1").await;
    let first = run_until_idle(&server.url, &token, slots.path(), true).await;
    assert_eq!(
        (first.state.active, first.state.running.clone()),
        (Slot::B, Some(release("fw", "1.1")))
    );

    server.assign("dev01", "fw@2").await;
    let second = run_until_idle(&server.url, &token, slots.path(), false).await;
    assert_eq!(second.state.active, Slot::B, "back on the slot that worked");
    assert_eq!(second.state.running, Some(release("fw", "1.1")));
    assert_eq!(
        second.boots, 5,
        "boot, reboot into the trial, 3 failed boots in all, then the rollback boot"
    );
    assert_eq!(std::fs::read(slots.path().join("slot-b.img")).unwrap(), v1);
    let device = server.get("/api/v1/devices/dev01").await;
    assert_eq!(
        device["firmware"]["version"], "1.1",
        "the device shows the old version"
    );
    let (states, action) = server.latest_action("dev01").await;
    assert_eq!(states.last().map(String::as_str), Some("FAILED"));
    assert!(
        action["failure"]["reason"]
            .as_str()
            .unwrap()
            .contains("rolled back"),
        "{action}"
    );
    assert!(
        device["active_action"].is_null(),
        "a failed update is not retried by itself"
    );
}

#[tokio::test]
async fn the_agent_binary_updates_a_simulated_device_and_runs_its_hooks() {
    binary_update("ddi").await;
}

#[tokio::test]
async fn the_agent_binary_updates_over_drogue_dfu() {
    binary_update("drogue").await;
}

async fn binary_update(protocol: &str) {
    let server = Server::start().await;
    let token = server.device("dev01").await;
    let new = image(150_000, 7);
    server.upload("fw", "2", &new).await;
    server.assign("dev01", "fw@2").await;
    let slots = tempfile::tempdir().unwrap();
    factory_device(slots.path(), &image(1000, 1));
    let installed = slots.path().join("installed.img");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_updraft-agent"))
        .args([
            "run",
            "--server",
            &server.url,
            "--device",
            "dev01",
            "--token",
            &token,
            "--factory-release",
            "fw@1",
            "--once",
            "--protocol",
            protocol,
            "--mtu",
            "4096",
        ])
        .arg("--slots")
        .arg(slots.path())
        .args(["--health-hook", "true"])
        .arg("--install-hook")
        .arg(format!("cp \"$UPDRAFT_IMAGE\" '{}'", installed.display()))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("rebooting"), "{stdout}");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        new,
        "the install hook got the new image"
    );
    assert_eq!(std::fs::read(slots.path().join("slot-b.img")).unwrap(), new);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(slots.path().join("state.json")).unwrap()).unwrap();
    assert_eq!(
        (state["format"].as_u64(), state["active"].as_str()),
        (Some(1), Some("B"))
    );
    assert_eq!(
        server.get("/api/v1/devices/dev01").await["firmware"]["version"],
        "2"
    );
}
