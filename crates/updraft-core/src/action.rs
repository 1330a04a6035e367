//! The update action every protocol shares: its states, what a report from a device may change,
//! and the plan that keeps a device's one active action in line with its desired artifacts.
//!
//! States only move forward (devices may skip any of them); a report on a finished action or a
//! step backwards is refused, and the caller records the refusal instead of applying it.

use std::fmt;
use std::str::FromStr;

use crate::model::{ActionKey, ArtifactKey};

/// Where an update action stands. The order of the variants is the order of progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UpdateState {
    Queued,
    Initiated,
    Downloading,
    Downloaded,
    Verified,
    Updating,
    Updated,
    Failed,
    Canceled,
}

impl UpdateState {
    pub const ALL: [UpdateState; 9] = [
        UpdateState::Queued,
        UpdateState::Initiated,
        UpdateState::Downloading,
        UpdateState::Downloaded,
        UpdateState::Verified,
        UpdateState::Updating,
        UpdateState::Updated,
        UpdateState::Failed,
        UpdateState::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Queued => "QUEUED",
            UpdateState::Initiated => "INITIATED",
            UpdateState::Downloading => "DOWNLOADING",
            UpdateState::Downloaded => "DOWNLOADED",
            UpdateState::Verified => "VERIFIED",
            UpdateState::Updating => "UPDATING",
            UpdateState::Updated => "UPDATED",
            UpdateState::Failed => "FAILED",
            UpdateState::Canceled => "CANCELED",
        }
    }

    /// Whether no report can change the action any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            UpdateState::Updated | UpdateState::Failed | UpdateState::Canceled
        )
    }
}

impl fmt::Display for UpdateState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for UpdateState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        UpdateState::ALL
            .into_iter()
            .find(|state| state.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown update state {s:?}"))
    }
}

/// Why an update failed, from LwM2M's Firmware Update result codes so that every protocol's
/// failure maps onto one comparable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureCode {
    NotEnoughStorage,
    OutOfMemory,
    ConnectionLost,
    IntegrityCheckFailed,
    UnsupportedPackage,
    InvalidUri,
    UpdateFailed,
    UnsupportedProtocol,
}

impl FailureCode {
    /// The failure code that a device's failure text points to (DDI and ThingsBoard devices
    /// report failures as free text).
    pub fn from_text(details: &str) -> FailureCode {
        let text = details.to_ascii_lowercase();
        let has = |words: &[&str]| words.iter().any(|w| text.contains(w));
        if has(&[
            "integrity",
            "checksum",
            "hash",
            "signature",
            "verif",
            "mismatch",
            "sha256",
            "md5",
            "corrupt",
        ]) {
            FailureCode::IntegrityCheckFailed
        } else if has(&["no space", "storage", "disk full", "not enough space"]) {
            FailureCode::NotEnoughStorage
        } else if has(&["memory"]) {
            FailureCode::OutOfMemory
        } else if has(&["connection", "network", "timeout", "timed out"]) {
            FailureCode::ConnectionLost
        } else if has(&["unsupported", "rejected"]) {
            FailureCode::UnsupportedPackage
        } else {
            FailureCode::UpdateFailed
        }
    }

    pub const ALL: [FailureCode; 8] = [
        FailureCode::NotEnoughStorage,
        FailureCode::OutOfMemory,
        FailureCode::ConnectionLost,
        FailureCode::IntegrityCheckFailed,
        FailureCode::UnsupportedPackage,
        FailureCode::InvalidUri,
        FailureCode::UpdateFailed,
        FailureCode::UnsupportedProtocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureCode::NotEnoughStorage => "not_enough_storage",
            FailureCode::OutOfMemory => "out_of_memory",
            FailureCode::ConnectionLost => "connection_lost",
            FailureCode::IntegrityCheckFailed => "integrity_check_failed",
            FailureCode::UnsupportedPackage => "unsupported_package",
            FailureCode::InvalidUri => "invalid_uri",
            FailureCode::UpdateFailed => "update_failed",
            FailureCode::UnsupportedProtocol => "unsupported_protocol",
        }
    }

    /// The LwM2M /5/0/5 Update Result value (2..=9).
    pub fn lwm2m_result(self) -> u8 {
        match self {
            FailureCode::NotEnoughStorage => 2,
            FailureCode::OutOfMemory => 3,
            FailureCode::ConnectionLost => 4,
            FailureCode::IntegrityCheckFailed => 5,
            FailureCode::UnsupportedPackage => 6,
            FailureCode::InvalidUri => 7,
            FailureCode::UpdateFailed => 8,
            FailureCode::UnsupportedProtocol => 9,
        }
    }
}

impl FromStr for FailureCode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        FailureCode::ALL
            .into_iter()
            .find(|code| code.as_str() == s)
            .ok_or_else(|| format!("unknown failure code {s:?}"))
    }
}

/// A failed action's code and the device's (or server's) words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: FailureCode,
    pub reason: String,
}

/// Download progress as the device counts it (bytes, chunks or percent: the protocol decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

/// What a device or the server says about an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The device reached `state` (one of the states between QUEUED and UPDATING).
    Reached {
        state: UpdateState,
        progress: Option<Progress>,
    },
    /// The device runs the new artifact.
    Succeeded,
    /// The update failed.
    Failed(Failure),
    /// The server (or a person) withdrew the action.
    Canceled,
}

impl Report {
    /// The state the action is in after this report is applied.
    pub fn target(&self) -> UpdateState {
        match self {
            Report::Reached { state, .. } => *state,
            Report::Succeeded => UpdateState::Updated,
            Report::Failed(_) => UpdateState::Failed,
            Report::Canceled => UpdateState::Canceled,
        }
    }
}

/// Why a report was not applied. The caller records it in the action's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the action is already {0} and cannot change")]
    Finished(UpdateState),
    #[error("the action cannot go back from {from} to {to}")]
    Backwards { from: UpdateState, to: UpdateState },
    #[error("{0} is a final state: report it as success, failure or cancel")]
    NotAProgressState(UpdateState),
}

/// What telling a device of its action does to the action — handing it a deployment link, its
/// new attributes, a job document or a package URI, whichever the protocol speaks: a QUEUED action
/// becomes INITIATED; an action further along is left as it is.
pub fn told(current: UpdateState) -> Option<Report> {
    (current == UpdateState::Queued).then_some(Report::Reached {
        state: UpdateState::Initiated,
        progress: None,
    })
}

/// The next state of an action in `current` state that receives `report`, or why not.
/// Repeating the current state is allowed (it carries new progress).
pub fn transition(current: UpdateState, report: &Report) -> Result<UpdateState, Refusal> {
    if current.is_final() {
        return Err(Refusal::Finished(current));
    }
    let target = report.target();
    if let Report::Reached { state, .. } = report
        && state.is_final()
    {
        return Err(Refusal::NotAProgressState(*state));
    }
    if target < current {
        return Err(Refusal::Backwards {
            from: current,
            to: target,
        });
    }
    Ok(target)
}

/// What a device runs or should run of one artifact kind, as title + version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub artifact: ArtifactKey,
    pub title: String,
    pub version: String,
}

/// The device's active (non-final) action, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveAction {
    pub action: ActionKey,
    pub artifact: ArtifactKey,
}

/// One artifact kind's situation on one device.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KindStatus {
    pub desired: Option<Release>,
    /// What the device last reported running: (title, version).
    pub running: Option<(String, String)>,
}

impl KindStatus {
    /// The desired release if the device does not run it yet.
    fn needed(&self) -> Option<&Release> {
        let desired = self.desired.as_ref()?;
        let runs_it = self
            .running
            .as_ref()
            .is_some_and(|(title, version)| *title == desired.title && *version == desired.version);
        if runs_it { None } else { Some(desired) }
    }

    fn wants(&self, artifact: ArtifactKey) -> bool {
        self.needed()
            .is_some_and(|release| release.artifact == artifact)
    }
}

/// What to do so that a device's active action matches what it should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Nothing changes.
    Keep,
    /// Queue a new action for this artifact.
    Queue(ArtifactKey),
    /// Cancel the active action (its artifact is no longer desired), then queue `next` if any.
    Supersede {
        cancel: ActionKey,
        next: Option<ArtifactKey>,
    },
}

/// Decides the device's action: at most one is active; firmware goes before software; an active
/// action whose artifact is still needed runs on, one that is not is canceled.
pub fn plan(firmware: &KindStatus, software: &KindStatus, active: Option<ActiveAction>) -> Plan {
    let next = firmware
        .needed()
        .or(software.needed())
        .map(|release| release.artifact);
    match active {
        None => match next {
            Some(artifact) => Plan::Queue(artifact),
            None => Plan::Keep,
        },
        Some(active) => {
            if firmware.wants(active.artifact) || software.wants(active.artifact) {
                Plan::Keep
            } else {
                Plan::Supersede {
                    cancel: active.action,
                    next,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use UpdateState::*;

    #[test]
    fn telling_a_device_initiates_only_a_queued_action() {
        assert_eq!(
            told(Queued),
            Some(Report::Reached {
                state: Initiated,
                progress: None
            })
        );
        for later in [
            Initiated,
            Downloading,
            Downloaded,
            Verified,
            Updating,
            Updated,
            Failed,
            Canceled,
        ] {
            assert_eq!(told(later), None, "{later:?}");
        }
    }

    fn reached(state: UpdateState) -> Report {
        Report::Reached {
            state,
            progress: None,
        }
    }

    fn check(current: UpdateState, report: Report, expected: Result<UpdateState, Refusal>) {
        assert_eq!(
            transition(current, &report),
            expected,
            "{current} + {report:?}"
        );
    }

    #[test]
    fn states_move_forward_and_may_skip() {
        check(Queued, reached(Initiated), Ok(Initiated));
        check(Initiated, reached(Downloading), Ok(Downloading));
        check(Downloading, reached(Downloading), Ok(Downloading));
        check(Downloading, reached(Verified), Ok(Verified));
        check(Initiated, Report::Succeeded, Ok(Updated));
        check(Queued, Report::Succeeded, Ok(Updated));
        check(Updating, Report::Succeeded, Ok(Updated));
        let failure = Failure {
            code: FailureCode::IntegrityCheckFailed,
            reason: "bad".into(),
        };
        check(Downloaded, Report::Failed(failure), Ok(Failed));
        check(Queued, Report::Canceled, Ok(Canceled));
        check(Updating, Report::Canceled, Ok(Canceled));
    }

    #[test]
    fn steps_backwards_and_reports_on_finished_actions_are_refused() {
        check(
            Verified,
            reached(Downloading),
            Err(Refusal::Backwards {
                from: Verified,
                to: Downloading,
            }),
        );
        check(
            Initiated,
            reached(Queued),
            Err(Refusal::Backwards {
                from: Initiated,
                to: Queued,
            }),
        );
        for done in [Updated, Failed, Canceled] {
            check(done, reached(Downloading), Err(Refusal::Finished(done)));
            check(done, Report::Succeeded, Err(Refusal::Finished(done)));
            check(done, Report::Canceled, Err(Refusal::Finished(done)));
        }
        check(
            Queued,
            reached(Updated),
            Err(Refusal::NotAProgressState(Updated)),
        );
    }

    #[test]
    fn every_pair_of_states_is_decided_by_order_alone() {
        for from in UpdateState::ALL {
            for to in UpdateState::ALL.into_iter().filter(|s| !s.is_final()) {
                let got = transition(from, &reached(to));
                let allowed = !from.is_final() && to >= from;
                assert_eq!(got.is_ok(), allowed, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn states_parse_back_from_their_names() {
        for state in UpdateState::ALL {
            assert_eq!(state.as_str().parse::<UpdateState>(), Ok(state));
        }
        for code in FailureCode::ALL {
            assert_eq!(code.as_str().parse::<FailureCode>(), Ok(code));
        }
    }

    fn release(artifact: i64, version: &str) -> Release {
        Release {
            artifact: ArtifactKey(artifact),
            title: "fw".into(),
            version: version.into(),
        }
    }

    fn status(desired: Option<Release>, running: Option<&str>) -> KindStatus {
        KindStatus {
            desired,
            running: running.map(|v| ("fw".to_owned(), v.to_owned())),
        }
    }

    #[test]
    fn plan_queues_supersedes_and_keeps() {
        let none = KindStatus::default();
        let active = |action, artifact| {
            Some(ActiveAction {
                action: ActionKey(action),
                artifact: ArtifactKey(artifact),
            })
        };
        // Nothing desired, nothing active.
        assert_eq!(plan(&none, &none, None), Plan::Keep);
        // Desired and not running: queue.
        let wants_2 = status(Some(release(2, "2.0")), Some("1.0"));
        assert_eq!(plan(&wants_2, &none, None), Plan::Queue(ArtifactKey(2)));
        // Already running what is desired: nothing.
        let has_2 = status(Some(release(2, "2.0")), Some("2.0"));
        assert_eq!(plan(&has_2, &none, None), Plan::Keep);
        // The active action is for the desired artifact: keep it.
        assert_eq!(plan(&wants_2, &none, active(7, 2)), Plan::Keep);
        // A new desired artifact supersedes the active one.
        let wants_3 = status(Some(release(3, "3.0")), Some("1.0"));
        assert_eq!(
            plan(&wants_3, &none, active(7, 2)),
            Plan::Supersede {
                cancel: ActionKey(7),
                next: Some(ArtifactKey(3))
            }
        );
        // Unassigned: the active action is canceled.
        assert_eq!(
            plan(&none, &none, active(7, 2)),
            Plan::Supersede {
                cancel: ActionKey(7),
                next: None
            }
        );
        // Firmware goes first; an active software action still wanted runs on.
        let sw = KindStatus {
            desired: Some(Release {
                artifact: ArtifactKey(9),
                title: "app".into(),
                version: "1".into(),
            }),
            running: None,
        };
        assert_eq!(plan(&wants_2, &sw, None), Plan::Queue(ArtifactKey(2)));
        assert_eq!(plan(&wants_2, &sw, active(8, 9)), Plan::Keep);
        assert_eq!(plan(&has_2, &sw, None), Plan::Queue(ArtifactKey(9)));
    }
}
