//! Power loss, exhaustively, in the MCUboot simulator's sense: a cut at every interruption point
//! of an update on the real directory flash, tearing the write it hits (half a slot block, half a
//! state file); a second cut at each of the first points of the recovery that follows; and a cut
//! at every point of a failing trial boot's rollback. Every run checks that its cut fired, that
//! each power-on boots a whole, known image, and that a resumed download asks only for the bytes
//! the slot does not hold yet.

use std::sync::Arc;

use updraft_agent::AgentError;
use updraft_agent::agent::{Agent, AgentConfig, Hooks, Outcome};
use updraft_agent::flash::{DirFlash, Flash, PowerCut};
use updraft_agent::server::DdiClient;
use updraft_agent::state::{Release, Slot};

use crate::faults::Interruptible;
use crate::{Server, image, sha256};

fn config() -> AgentConfig {
    AgentConfig {
        factory_release: Some(Release {
            title: "fw".into(),
            version: "1".into(),
        }),
        progress_every: 8 * 1024,
        write_block: 4 * 1024,
        ..AgentConfig::default()
    }
}

/// How the new image behaves, and what a run must end with: the release the device runs, the
/// slot it boots and the server's last state.
struct Goal {
    health: fn(&Release) -> bool,
    version: &'static str,
    server_state: &'static str,
    slot: Slot,
}

/// Powers the device on until it is idle with no job, restoring power after each loss (and
/// cutting once more, `second` points into the first recovery, when given). After every power-on
/// the booted slot must hold a whole, known image.
async fn converge(
    server: &Server,
    token: &str,
    dir: &std::path::Path,
    power: &Arc<PowerCut>,
    known: &[String],
    mut second: Option<u64>,
    goal: &Goal,
) {
    let mut boots = 0;
    loop {
        boots += 1;
        assert!(boots < 40, "no convergence");
        // Power comes back after a cut (and may fail again in the recovery); a cut not yet
        // reached stays armed.
        if power.is_off() {
            match second.take() {
                Some(after) => power.restore_and_cut_after(after),
                None => power.restore(),
            }
        }
        let device = Interruptible {
            inner: DdiClient::new(&server.url, "DEFAULT", "dev01", token).unwrap(),
            power: power.clone(),
            resumes_at: Some(dir.join("slot-b.img")),
        };
        let flash = DirFlash::with_power(dir, power.clone()).unwrap();
        let hooks = Hooks {
            health: Box::new(goal.health),
            ..Hooks::default()
        };
        let (mut agent, outcome) = match Agent::start(flash, device, config(), hooks).await {
            Ok(started) => started,
            Err(AgentError::PowerLost) => continue,
            Err(other) => panic!("{other}"),
        };
        let booted = agent.booted();
        let image = agent.flash.slot_sha256(booted, u64::MAX).unwrap();
        assert!(
            known.contains(&image),
            "boot {boots} from slot {booted:?}: an incomplete or unknown image"
        );
        if outcome == Some(Outcome::Reboot) {
            continue;
        }
        loop {
            match agent.cycle().await {
                Ok(Outcome::Idle { sleep })
                    if sleep > std::time::Duration::ZERO && agent.state().job.is_none() =>
                {
                    let running = agent.state().running.as_ref().map(|r| r.version.as_str());
                    assert_eq!(running, Some(goal.version), "{:?}", agent.state());
                    assert_eq!(agent.booted(), goal.slot);
                    return;
                }
                Ok(Outcome::Idle { .. }) => {}
                Ok(Outcome::Reboot) | Err(AgentError::PowerLost) => break,
                Err(other) => panic!("{other}"),
            }
        }
    }
}

/// One update from `fw@1` to `fw@2` with the cuts `first` (and `second` into the recovery),
/// checked against `goal`. Returns the interruption points of the run.
async fn run(first: Option<u64>, second: Option<u64>, goal: &Goal) -> u64 {
    let old = image(20_000, 31);
    let new = image(30_000, 32);
    let known = [sha256(&old), sha256(&new)];
    let server = Server::start().await;
    let token = server.device("dev01").await;
    server.upload("fw", "2", &new).await;
    server.assign("dev01", "fw@2").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("slot-a.img"), &old).unwrap();
    let power = match first {
        Some(at) => PowerCut::at(at),
        None => PowerCut::never(),
    };
    converge(&server, &token, dir.path(), &power, &known, second, goal).await;
    if first.is_some() {
        assert!(power.fired(), "the cut at point {first:?} never happened");
    }
    let (states, _) = server.latest_action("dev01").await;
    assert_eq!(
        states.last().map(String::as_str),
        Some(goal.server_state),
        "cuts at {first:?} then {second:?}"
    );
    power.points()
}

fn healthy(_: &Release) -> bool {
    true
}

fn new_image_is_sick(release: &Release) -> bool {
    release.version != "2"
}

const UPDATED: Goal = Goal {
    health: healthy,
    version: "2",
    server_state: "UPDATED",
    slot: Slot::B,
};

const ROLLED_BACK: Goal = Goal {
    health: new_image_is_sick,
    version: "1",
    server_state: "FAILED",
    slot: Slot::A,
};

#[tokio::test]
async fn a_torn_write_at_any_point_of_an_update_on_the_directory_flash_converges() {
    let points = run(None, None, &UPDATED).await;
    assert!(
        points > 20,
        "a whole update has many interruption points: {points}"
    );
    for at in 0..points {
        run(Some(at), None, &UPDATED).await;
    }
}

#[tokio::test]
async fn a_second_cut_while_recovering_from_the_first_still_converges() {
    let points = run(None, None, &UPDATED).await;
    for at in (0..points).step_by(2) {
        for after in 0..3 {
            run(Some(at), Some(after), &UPDATED).await;
        }
    }
}

#[tokio::test]
async fn a_cut_at_any_point_of_a_failing_trial_boot_rolls_back() {
    let points = run(None, None, &ROLLED_BACK).await;
    for at in 0..points {
        run(Some(at), None, &ROLLED_BACK).await;
    }
}
