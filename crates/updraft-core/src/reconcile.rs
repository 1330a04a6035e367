//! Reconciliation of one device, decided here and applied by the store: from what the device
//! should run (already resolved), what it runs, its active action and the artifacts that already
//! failed on it, the changes that bring its one active action in line with what it should run.

use crate::action::{ActiveAction, KindStatus, Plan, Release, UpdateState, plan};
use crate::model::{ActionKey, ArtifactKey};

/// Whether a reconciliation may queue again an artifact whose last action on a device failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The explicit assignment of this artifact: try it again.
    Only(ArtifactKey),
    /// Anything else: a failed update stays failed until someone assigns it again.
    No,
}

/// The device's active (non-final) action as the store has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Active {
    pub action: ActionKey,
    /// `None` once its artifact was deleted: then it cannot be wanted.
    pub artifact: Option<ArtifactKey>,
    pub state: UpdateState,
}

/// Everything a device's reconciliation depends on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Facts {
    /// What the device should run of each kind, by the resolution rule.
    pub firmware: Option<Release>,
    pub software: Option<Release>,
    /// What it last reported running of each kind: (title, version).
    pub running_firmware: Option<(String, String)>,
    pub running_software: Option<(String, String)>,
    pub active: Option<Active>,
    /// Artifacts whose latest action on this device failed.
    pub failed: Vec<ArtifactKey>,
}

/// An active action to cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancel {
    pub action: ActionKey,
    pub from: UpdateState,
    /// The device was told of the action, so it must confirm that it stopped.
    pub confirm: bool,
}

/// What the store does for the device, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Changes {
    pub cancel: Option<Cancel>,
    /// Queue a new action for this artifact.
    pub queue: Option<ArtifactKey>,
}

/// Decides a device's changes: a failed artifact is not planned again unless `retry` is its
/// explicit assignment; the active action runs on while it is wanted and is canceled otherwise
/// (a device that was told must confirm); at most one action is active, firmware first.
pub fn reconcile(facts: Facts, retry: Retry) -> Changes {
    let plannable = |desired: Option<Release>| {
        desired.filter(|r| retry == Retry::Only(r.artifact) || !facts.failed.contains(&r.artifact))
    };
    let firmware = KindStatus {
        desired: plannable(facts.firmware.clone()),
        running: facts.running_firmware.clone(),
    };
    let software = KindStatus {
        desired: plannable(facts.software.clone()),
        running: facts.running_software.clone(),
    };
    let cancel_of = |active: Active| Cancel {
        action: active.action,
        from: active.state,
        confirm: active.state >= UpdateState::Initiated,
    };
    // An action whose artifact was deleted is canceled whatever the plan.
    let (orphan, active) = match facts.active {
        Some(active) => match active.artifact {
            Some(artifact) => (
                None,
                Some(ActiveAction {
                    action: active.action,
                    artifact,
                }),
            ),
            None => (Some(cancel_of(active)), None),
        },
        None => (None, None),
    };
    match plan(&firmware, &software, active) {
        Plan::Keep => Changes {
            cancel: orphan,
            queue: None,
        },
        Plan::Queue(artifact) => Changes {
            cancel: orphan,
            queue: Some(artifact),
        },
        Plan::Supersede { next, .. } => Changes {
            cancel: facts.active.map(cancel_of),
            queue: next,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use UpdateState::*;

    fn release(key: i64, version: &str) -> Release {
        Release {
            artifact: ArtifactKey(key),
            title: "fw".into(),
            version: version.into(),
        }
    }

    fn active(key: i64, artifact: Option<i64>, state: UpdateState) -> Option<Active> {
        Some(Active {
            action: ActionKey(key),
            artifact: artifact.map(ArtifactKey),
            state,
        })
    }

    #[test]
    fn a_failed_artifact_is_planned_again_only_by_its_explicit_assignment() {
        let facts = Facts {
            firmware: Some(release(7, "2")),
            failed: vec![ArtifactKey(7)],
            ..Facts::default()
        };
        assert_eq!(reconcile(facts.clone(), Retry::No), Changes::default());
        assert_eq!(
            reconcile(facts.clone(), Retry::Only(ArtifactKey(8))),
            Changes::default()
        );
        assert_eq!(
            reconcile(facts, Retry::Only(ArtifactKey(7))).queue,
            Some(ArtifactKey(7))
        );
    }

    #[test]
    fn an_unwanted_action_is_superseded_and_a_told_device_must_confirm() {
        for (state, confirm) in [(Queued, false), (Initiated, true), (Downloading, true)] {
            let facts = Facts {
                firmware: Some(release(8, "3")),
                active: active(1, Some(7), state),
                ..Facts::default()
            };
            assert_eq!(
                reconcile(facts, Retry::No),
                Changes {
                    cancel: Some(Cancel {
                        action: ActionKey(1),
                        from: state,
                        confirm
                    }),
                    queue: Some(ArtifactKey(8)),
                }
            );
        }
    }

    #[test]
    fn a_wanted_action_runs_on_and_a_deleted_artifacts_action_is_canceled() {
        let wanted = Facts {
            firmware: Some(release(7, "2")),
            active: active(1, Some(7), Downloading),
            ..Facts::default()
        };
        assert_eq!(reconcile(wanted, Retry::No), Changes::default());
        let orphan = Facts {
            firmware: Some(release(8, "3")),
            active: active(1, None, Queued),
            ..Facts::default()
        };
        let changes = reconcile(orphan, Retry::No);
        assert_eq!(changes.cancel.map(|c| c.action), Some(ActionKey(1)));
        assert_eq!(changes.queue, Some(ArtifactKey(8)));
        // Running what it should: nothing to queue.
        let done = Facts {
            firmware: Some(release(7, "2")),
            running_firmware: Some(("fw".into(), "2".into())),
            ..Facts::default()
        };
        assert_eq!(reconcile(done, Retry::No), Changes::default());
    }
}
