//! Power loss at every interruption point of a whole update, and a cancellation mid-download.

use std::sync::Arc;

use async_trait::async_trait;
use updraft_agent::AgentError;
use updraft_agent::agent::{Agent, AgentConfig, Hooks, Outcome};
use updraft_agent::flash::{MemContents, MemFlash, PowerCut};
use updraft_agent::server::{
    DdiClient, Delivery, Download, Feedback, Offer, PollAnswer, UpdateServer,
};
use updraft_agent::state::{Release, Slot};

use crate::{Server, image, sha256};

/// The DDI client with an interruption point before and after every report, and downloads in
/// fixed pieces. With `resumes_at`, every download must start exactly where that slot file ends.
pub(crate) struct Interruptible {
    pub(crate) inner: DdiClient,
    pub(crate) power: Arc<PowerCut>,
    pub(crate) resumes_at: Option<std::path::PathBuf>,
}

#[async_trait]
impl UpdateServer for Interruptible {
    async fn poll(&self) -> Result<PollAnswer, AgentError> {
        self.inner.poll().await
    }

    async fn deployment(&self, url: &str) -> Result<Offer, AgentError> {
        self.inner.deployment(url).await
    }

    async fn download(&self, url: &str, offset: u64) -> Result<Download, AgentError> {
        if let Some(slot) = &self.resumes_at {
            let held = std::fs::metadata(slot).map_or(0, |m| m.len());
            assert_eq!(
                offset, held,
                "a download must resume where the slot ends: it holds {held} bytes"
            );
        }
        crate::in_fixed_pieces(self.inner.download(url, offset).await?).await
    }

    async fn feedback(&self, url: &str, feedback: &Feedback) -> Result<Delivery, AgentError> {
        self.power.tick()?;
        let delivery = self.inner.feedback(url, feedback).await?;
        self.power.tick()?;
        Ok(delivery)
    }

    async fn cancel_target(&self, url: &str) -> Result<String, AgentError> {
        self.inner.cancel_target(url).await
    }

    async fn cancel_answer(&self, url: &str, stop: &str, accepted: bool) -> Result<(), AgentError> {
        self.power.tick()?;
        self.inner.cancel_answer(url, stop, accepted).await?;
        self.power.tick()
    }
}

fn config() -> AgentConfig {
    AgentConfig {
        factory_release: Some(Release {
            title: "fw".into(),
            version: "1".into(),
        }),
        progress_every: 16 * 1024,
        write_block: 8 * 1024,
        ..AgentConfig::default()
    }
}

/// Runs the device from power-on until it runs `fw@2` with nothing left to do, restoring power
/// after each loss. After every power-on the booted slot must hold a whole, known image.
async fn converge(server: &Server, token: &str, flash: &MemFlash, known: &[String]) -> u32 {
    let mut boots = 0;
    loop {
        boots += 1;
        assert!(boots < 30, "no convergence");
        // Power comes back after a cut; a cut not yet reached stays armed.
        if flash.power.is_off() {
            flash.power.restore();
        }
        let client = Interruptible {
            inner: DdiClient::new(&server.url, "DEFAULT", "dev01", token).unwrap(),
            power: flash.power.clone(),
            resumes_at: None,
        };
        let (mut agent, outcome) =
            match Agent::start(flash.clone(), client, config(), Hooks::default()).await {
                Ok(started) => started,
                Err(AgentError::PowerLost) => continue,
                Err(other) => panic!("{other}"),
            };
        let booted = flash.contents.lock().unwrap().slot(agent.booted()).clone();
        assert!(
            known.contains(&sha256(&booted)),
            "boot {boots} from slot {:?}: an incomplete or unknown image",
            agent.booted()
        );
        if outcome == Some(Outcome::Reboot) {
            continue;
        }
        loop {
            match agent.cycle().await {
                Ok(Outcome::Idle { sleep })
                    if sleep > std::time::Duration::ZERO && agent.state().job.is_none() =>
                {
                    let done = agent
                        .state()
                        .running
                        .as_ref()
                        .is_some_and(|r| r.version == "2");
                    assert!(done, "idle without the update: {:?}", agent.state());
                    return boots;
                }
                Ok(Outcome::Idle { .. }) => {}
                Ok(Outcome::Reboot) | Err(AgentError::PowerLost) => break,
                Err(other) => panic!("{other}"),
            }
        }
    }
}

/// Every interruption point of an update (each slot write, each state-file write, before and
/// after each report) gets a power loss in turn; each time the device must come back on a whole
/// image and converge to the new release, and the server must see it UPDATED.
#[tokio::test]
async fn a_power_loss_at_any_point_of_an_update_still_converges() {
    let old = image(20_000, 11);
    let new = image(40_000, 12);
    let known = [sha256(&old), sha256(&new)];
    let mut point = 0u64;
    let mut clean_run_points = None;
    loop {
        let server = Server::start().await;
        let token = server.device("dev01").await;
        server.upload("fw", "2", &new).await;
        server.assign("dev01", "fw@2").await;
        let power = if clean_run_points.is_none() {
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
        converge(&server, &token, &flash, &known).await;
        if clean_run_points.is_some() {
            assert!(power.fired(), "the cut at point {point} never happened");
        }
        let contents = flash.contents.lock().unwrap().clone();
        let booted_b = contents.slot(Slot::B) == &new;
        assert!(
            booted_b,
            "after a cut at point {point} slot B holds the new image"
        );
        let device = server.get("/api/v1/devices/dev01").await;
        assert_eq!(device["firmware"]["version"], "2", "cut at point {point}");
        let (states, _) = server.latest_action("dev01").await;
        assert_eq!(
            states.last().map(String::as_str),
            Some("UPDATED"),
            "cut at point {point}"
        );
        match clean_run_points {
            None => {
                clean_run_points = Some(power.points());
                assert!(
                    power.points() > 15,
                    "a whole update has many interruption points"
                );
            }
            Some(total) => {
                point += 1;
                if point >= total {
                    eprintln!("power cut at each of {total} interruption points: all converged");
                    break;
                }
            }
        }
    }
}

#[tokio::test]
async fn a_cancellation_mid_download_stops_the_job_and_the_next_update_runs() {
    let server = Server::start().await;
    let token = server.device("dev01").await;
    let old = image(10_000, 21);
    server.upload("fw", "2", &image(80_000, 22)).await;
    let v3 = image(30_000, 23);
    server.upload("fw", "3", &v3).await;
    server.assign("dev01", "fw@2").await;
    // The power goes off during the download (at the third slot write).
    let power = PowerCut::at(5);
    let flash = MemFlash::new(
        MemContents {
            slot_a: old.clone(),
            ..MemContents::default()
        },
        power.clone(),
    );
    let client = Interruptible {
        inner: DdiClient::new(&server.url, "DEFAULT", "dev01", &token).unwrap(),
        power: power.clone(),
        resumes_at: None,
    };
    let (mut agent, _) = Agent::start(flash.clone(), client, config(), Hooks::default())
        .await
        .unwrap();
    assert!(matches!(agent.cycle().await, Err(AgentError::PowerLost)));
    assert!(agent.state().job.is_some());
    // Meanwhile the operator changes their mind.
    server.assign("dev01", "fw@3").await;
    power.restore();
    let client = DdiClient::new(&server.url, "DEFAULT", "dev01", &token).unwrap();
    let (mut agent, _) = Agent::start(flash.clone(), client, config(), Hooks::default())
        .await
        .unwrap();
    assert_eq!(
        agent.cycle().await.unwrap(),
        Outcome::Idle {
            sleep: std::time::Duration::ZERO
        }
    );
    assert!(agent.state().job.is_none(), "the canceled job is dropped");
    let history = server.get("/api/v1/devices/dev01/history").await;
    let canceled = &history[1];
    assert_eq!(canceled["version"], "2");
    assert_eq!(canceled["state"], "CANCELED");
    assert!(
        canceled["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["detail"] == "the device confirmed the cancellation")
    );
    assert_eq!(
        agent.cycle().await.unwrap(),
        Outcome::Reboot,
        "fw@3 downloaded and installed"
    );
    assert_eq!(flash.contents.lock().unwrap().slot(Slot::B), &v3);
}
