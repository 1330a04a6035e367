//! The agent's persisted state and the pure decisions on it. Every change of state goes through
//! one of these functions and is written to the state file before the agent acts on it, so a
//! power loss at any point restarts from a state that is true.
//!
//! The state file carries a format number: the agent updates itself, so a newer agent must read
//! what an older one wrote.

use serde::{Deserialize, Serialize};

/// The current format of the state file.
pub const FORMAT: u32 = 1;

/// One of the two image slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

/// A firmware release: what the server calls the artifact's title and version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub title: String,
    pub version: String,
}

/// Where an update job stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// Bytes are going into the target slot; the slot's length is the resume offset.
    Downloading,
    /// The target slot holds the whole image and its SHA-256 matched.
    Verified,
    /// The target slot is marked for a trial boot; `boots` counts the attempts so far.
    Trial { boots: u32 },
    /// The new image booted and passed its health check; success is still to be reported.
    Confirmed,
    /// The update failed; the failure is still to be reported.
    Failed { reason: String },
}

/// One update, from the server's action to the final report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// The server's action id.
    pub action: String,
    /// Where feedback for this action goes.
    pub feedback_url: String,
    pub download_url: String,
    pub release: Release,
    pub sha256: String,
    pub size: u64,
    pub target: Slot,
    pub stage: Stage,
}

/// Everything the agent keeps across reboots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    pub format: u32,
    /// The confirmed slot: what the bootloader boots when no trial is pending.
    pub active: Slot,
    /// What the active slot runs.
    pub running: Option<Release>,
    pub job: Option<Job>,
}

impl AgentState {
    /// A device that has never updated: slot A, release unknown (or given).
    pub fn factory(running: Option<Release>) -> Self {
        Self {
            format: FORMAT,
            active: Slot::A,
            running,
            job: None,
        }
    }

    /// Reads a state file, refusing formats this agent does not know.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("unreadable state file: {e}"))?;
        let format = value
            .get("format")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        if format != u64::from(FORMAT) {
            return Err(format!(
                "state file format {format} is not one this agent reads ({FORMAT})"
            ));
        }
        serde_json::from_value(value).map_err(|e| format!("unreadable state file: {e}"))
    }

    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings, numbers and enums always serializes.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

/// What the bootloader does at power-on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// Boot the active slot; nothing is on trial.
    Active(Slot),
    /// Boot the trial slot; the state to persist first counts this attempt.
    Trial { slot: Slot, next: AgentState },
    /// The trial slot failed too often: boot the active slot again and report the failure.
    RollBack { slot: Slot, next: AgentState },
}

/// The power-on decision, with `max_boots` attempts allowed for a new image.
pub fn boot(state: &AgentState, max_boots: u32) -> Boot {
    let Some(job) = &state.job else {
        return Boot::Active(state.active);
    };
    let Stage::Trial { boots } = job.stage else {
        return Boot::Active(state.active);
    };
    let mut next = state.clone();
    if boots >= max_boots {
        if let Some(job) = next.job.as_mut() {
            job.stage = Stage::Failed {
                reason: format!(
                    "rolled back: the new image failed its health check on {boots} boot(s)"
                ),
            };
        }
        return Boot::RollBack {
            slot: state.active,
            next,
        };
    }
    if let Some(job) = next.job.as_mut() {
        job.stage = Stage::Trial { boots: boots + 1 };
    }
    Boot::Trial {
        slot: job.target,
        next,
    }
}

/// After a trial boot passed its health check: the target becomes the active slot.
pub fn confirm(state: &AgentState) -> AgentState {
    let mut next = state.clone();
    if let Some(job) = next.job.as_mut() {
        next.active = job.target;
        next.running = Some(job.release.clone());
        job.stage = Stage::Confirmed;
    }
    next
}

/// Moves the job to `stage`.
pub fn advance(state: &AgentState, stage: Stage) -> AgentState {
    let mut next = state.clone();
    if let Some(job) = next.job.as_mut() {
        job.stage = stage;
    }
    next
}

/// The job is over (reported, canceled or abandoned).
pub fn finish(state: &AgentState) -> AgentState {
    AgentState {
        job: None,
        ..state.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_job(stage: Stage) -> AgentState {
        AgentState {
            format: FORMAT,
            active: Slot::A,
            running: Some(Release {
                title: "fw".into(),
                version: "1".into(),
            }),
            job: Some(Job {
                action: "7".into(),
                feedback_url: "f".into(),
                download_url: "d".into(),
                release: Release {
                    title: "fw".into(),
                    version: "2".into(),
                },
                sha256: "00".into(),
                size: 1,
                target: Slot::B,
                stage,
            }),
        }
    }

    #[test]
    fn a_trial_boot_counts_and_then_rolls_back() {
        let mut state = with_job(Stage::Trial { boots: 0 });
        for attempt in 1..=3 {
            match boot(&state, 3) {
                Boot::Trial { slot, next } => {
                    assert_eq!(slot, Slot::B);
                    assert_eq!(
                        next.job.as_ref().map(|j| j.stage.clone()),
                        Some(Stage::Trial { boots: attempt })
                    );
                    state = next;
                }
                other => panic!("attempt {attempt}: {other:?}"),
            }
        }
        match boot(&state, 3) {
            Boot::RollBack { slot, next } => {
                assert_eq!(slot, Slot::A);
                assert!(matches!(
                    next.job.map(|j| j.stage),
                    Some(Stage::Failed { .. })
                ));
                assert_eq!(next.active, Slot::A);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn confirming_switches_the_active_slot_and_release() {
        let confirmed = confirm(&with_job(Stage::Trial { boots: 1 }));
        assert_eq!(confirmed.active, Slot::B);
        assert_eq!(
            confirmed.running.as_ref().map(|r| r.version.as_str()),
            Some("2")
        );
        assert_eq!(boot(&confirmed, 3), Boot::Active(Slot::B));
        assert_eq!(
            boot(&with_job(Stage::Downloading), 3),
            Boot::Active(Slot::A)
        );
    }

    #[test]
    fn the_state_file_round_trips_and_refuses_unknown_formats() {
        let state = with_job(Stage::Failed { reason: "x".into() });
        assert_eq!(AgentState::decode(&state.encode()), Ok(state));
        assert!(AgentState::decode(br#"{"format": 99}"#).is_err());
        assert!(AgentState::decode(b"garbage").is_err());
    }
}
