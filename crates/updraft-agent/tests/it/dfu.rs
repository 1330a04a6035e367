//! The agent as a Drogue DFU device against a real server: a whole update into the other slot,
//! a rollback the server detects and does not repeat, and a power loss at every interruption point
//! that resumes from the slot's end.

use std::path::Path;
use std::time::Duration;

use updraft_agent::AgentError;
use updraft_agent::agent::{Agent, AgentConfig, Hooks, Outcome};
use updraft_agent::dfu::DfuClient;
use updraft_agent::flash::{DirFlash, Flash, MemContents, MemFlash, PowerCut};
use updraft_agent::state::{AgentState, Release, Slot};

use crate::{Server, image, sha256};

fn config() -> AgentConfig {
    AgentConfig {
        factory_release: Some(Release {
            title: "fw".into(),
            version: "1".into(),
        }),
        write_block: 1024,
        ..AgentConfig::default()
    }
}

struct Run {
    state: AgentState,
    boots: u32,
    bytes_received: u64,
}

/// Powers the device on and runs it over DFU, rebooting when asked and restoring power after a
/// loss, until it idles with nothing to do. `known` are the images a slot may boot.
async fn run_dfu<F: Flash + Clone>(
    server: &Server,
    token: &str,
    flash: &F,
    power: Option<&PowerCut>,
    healthy: bool,
    mtu: u32,
) -> Run {
    let mut bytes_received = 0;
    for boots in 1..=30 {
        // Power comes back after a cut; a cut not yet reached stays armed.
        if let Some(power) = power.filter(|p| p.is_off()) {
            power.restore();
        }
        let client = DfuClient::new(&server.url, "default", "dev01", token, mtu).unwrap();
        let hooks = Hooks {
            health: Box::new(move |_| healthy),
            ..Hooks::default()
        };
        let (mut agent, outcome) = match Agent::start(flash.clone(), client, config(), hooks).await
        {
            Ok(started) => started,
            Err(AgentError::PowerLost) => continue,
            Err(other) => panic!("{other}"),
        };
        if outcome == Some(Outcome::Reboot) {
            continue;
        }
        let settled = loop {
            match agent.dfu_cycle().await {
                Ok(Outcome::Idle { sleep })
                    if sleep > Duration::ZERO && agent.state().job.is_none() =>
                {
                    break true;
                }
                Ok(Outcome::Idle { .. }) => {}
                Ok(Outcome::Reboot) | Err(AgentError::PowerLost) => break false,
                Err(other) => panic!("{other}"),
            }
        };
        bytes_received += agent.stats.bytes_received;
        if settled {
            return Run {
                state: agent.state().clone(),
                boots,
                bytes_received,
            };
        }
    }
    panic!("the device did not settle in 30 boots");
}

fn factory_device(dir: &Path, factory: &[u8]) {
    let mut flash = DirFlash::open(dir).unwrap();
    flash.write_slot(Slot::A, 0, factory).unwrap();
}

#[derive(Clone)]
struct Dir(std::path::PathBuf);

/// A fresh [`DirFlash`] per power-on over the same directory.
impl Flash for Dir {
    fn load_state(&mut self) -> Result<Option<Vec<u8>>, AgentError> {
        DirFlash::open(&self.0)?.load_state()
    }
    fn store_state(&mut self, bytes: &[u8]) -> Result<(), AgentError> {
        DirFlash::open(&self.0)?.store_state(bytes)
    }
    fn slot_len(&mut self, slot: Slot) -> Result<u64, AgentError> {
        DirFlash::open(&self.0)?.slot_len(slot)
    }
    fn write_slot(&mut self, slot: Slot, offset: u64, data: &[u8]) -> Result<(), AgentError> {
        DirFlash::open(&self.0)?.write_slot(slot, offset, data)
    }
    fn truncate_slot(&mut self, slot: Slot) -> Result<(), AgentError> {
        DirFlash::open(&self.0)?.truncate_slot(slot)
    }
    fn slot_sha256(&mut self, slot: Slot, len: u64) -> Result<String, AgentError> {
        DirFlash::open(&self.0)?.slot_sha256(slot, len)
    }
    fn slot_path(&self, slot: Slot) -> Option<std::path::PathBuf> {
        DirFlash::open(&self.0).ok()?.slot_path(slot)
    }
}

#[tokio::test]
async fn the_agent_updates_over_drogue_dfu_and_the_server_sees_every_state() {
    let server = Server::start().await;
    let token = server.device("dev01").await;
    let old = image(30_000, 31);
    let new = image(50_000, 32);
    server.upload("fw", "2", &new).await;
    server.assign("dev01", "fw@2").await;
    let slots = tempfile::tempdir().unwrap();
    factory_device(slots.path(), &old);

    let flash = Dir(slots.path().to_path_buf());
    let run = run_dfu(&server, &token, &flash, None, true, 4096).await;
    assert_eq!(run.state.active, Slot::B);
    assert_eq!(
        run.state.running.as_ref().map(|r| r.version.as_str()),
        Some("2")
    );
    assert_eq!(run.boots, 2, "one reboot into the new image");
    assert_eq!(run.bytes_received, new.len() as u64, "every byte once");
    assert_eq!(std::fs::read(slots.path().join("slot-b.img")).unwrap(), new);
    assert_eq!(std::fs::read(slots.path().join("slot-a.img")).unwrap(), old);
    let device = server.get("/api/v1/devices/dev01").await;
    assert_eq!(device["firmware"]["version"], "2");
    let (mut states, _) = server.latest_action("dev01").await;
    states.dedup();
    assert_eq!(
        states,
        [
            "QUEUED",
            "INITIATED",
            "DOWNLOADING",
            "DOWNLOADED",
            "UPDATING",
            "UPDATED"
        ]
    );
}

#[tokio::test]
async fn a_rolled_back_image_fails_the_update_and_is_not_sent_again() {
    let server = Server::start().await;
    let token = server.device("dev01").await;
    let old = image(10_000, 41);
    server.upload("fw", "2", &image(20_000, 42)).await;
    server.assign("dev01", "fw@2").await;
    let slots = tempfile::tempdir().unwrap();
    factory_device(slots.path(), &old);
    let flash = Dir(slots.path().to_path_buf());

    let run = run_dfu(&server, &token, &flash, None, false, 1024).await;
    assert_eq!(run.state.active, Slot::A);
    assert_eq!(
        run.state.running.as_ref().map(|r| r.version.as_str()),
        Some("1")
    );
    assert_eq!(run.bytes_received, 20_000);
    let (states, action) = server.latest_action("dev01").await;
    assert_eq!(states.last().map(String::as_str), Some("FAILED"));
    assert!(
        action["failure"]["reason"]
            .as_str()
            .unwrap()
            .contains("rolled back"),
        "{action}"
    );
    // Powered on again, the device is told it is in sync: the image is not offered again.
    let again = run_dfu(&server, &token, &flash, None, true, 1024).await;
    assert_eq!(again.bytes_received, 0);
    assert_eq!(again.boots, 1);
}

/// Every interruption point (each slot write, each state write) of a DFU update gets a power
/// loss in turn: the device comes back on a whole image, converges, and the image is not sent
/// again from the start — at most the block in flight is re-sent.
#[tokio::test]
async fn a_power_loss_at_any_point_of_a_dfu_update_resumes_and_converges() {
    let old = image(6_000, 51);
    let new = image(9_000, 52);
    let known = [sha256(&old), sha256(&new)];
    let mtu = 1024u32;
    let mut point = 0u64;
    let mut total = None;
    loop {
        let server = Server::start().await;
        let token = server.device("dev01").await;
        server.upload("fw", "2", &new).await;
        server.assign("dev01", "fw@2").await;
        let power = if total.is_none() {
            PowerCut::never()
        } else {
            PowerCut::at(point)
        };
        let flash = MemFlash::new(
            MemContents {
                slot_a: old.clone(),
                ..MemContents::default()
            },
            power.clone(),
        );
        let run = run_dfu(&server, &token, &flash, Some(&power), true, mtu).await;
        if total.is_some() {
            assert!(power.fired(), "the cut at point {point} never happened");
        }
        let contents = flash.contents.lock().unwrap().clone();
        assert!(known.contains(&sha256(contents.slot(run.state.active))));
        assert_eq!(contents.slot(Slot::B), &new, "cut at point {point}");
        assert_eq!(
            run.state.running.as_ref().map(|r| r.version.as_str()),
            Some("2"),
            "cut at point {point}"
        );
        assert!(
            run.bytes_received <= new.len() as u64 + u64::from(mtu),
            "cut at point {point}: {} bytes received for a {}-byte image",
            run.bytes_received,
            new.len()
        );
        let (states, _) = server.latest_action("dev01").await;
        assert_eq!(
            states.last().map(String::as_str),
            Some("UPDATED"),
            "cut at point {point}"
        );
        match total {
            None => {
                total = Some(power.points());
                assert!(power.points() > 10, "{} points", power.points());
            }
            Some(total) => {
                point += 1;
                if point >= total {
                    eprintln!(
                        "power cut at each of {total} DFU interruption points: all converged"
                    );
                    break;
                }
            }
        }
    }
}
