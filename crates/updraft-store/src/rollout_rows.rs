//! The rows of rollouts: what the store keeps of a rollout, its groups with their counters, and
//! the failures it reports.

use updraft_core::rollout::{GroupProgress, Lifecycle, Thresholds, UpdateType};
use updraft_core::{
    ArtifactKey, ArtifactKind, DeviceId, FailureCode, Name, RolloutKey, TenantKey, UpdateState,
};

use crate::rows::Millis;

/// When a rollout's devices may install: a cron schedule in a time zone opening a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    pub cron: String,
    pub duration_millis: i64,
    /// An IANA zone name (`Europe/Berlin`) or `UTC`.
    pub tz: String,
}

/// A rollout as it is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRollout {
    pub name: Name,
    pub artifact: ArtifactKey,
    /// What the target was made from (a filter, or the device list), for people.
    pub target: String,
    /// The groups as asked (`10%,40%,50%`), for people.
    pub groups_spec: String,
    pub thresholds: Thresholds,
    pub update_type: UpdateType,
    /// READY (started by a command or at `start_at`) or RUNNING (started at creation).
    pub state: Lifecycle,
    pub start_at: Option<Millis>,
    pub max_per_minute: Option<u64>,
    pub max_downloads: Option<u64>,
    pub jitter_millis: i64,
    pub window: Option<WindowSpec>,
    /// Devices created later, or that come to match the filter, join new groups built like the
    /// last one (the target must be a filter).
    pub dynamic: bool,
    /// An auto-assignment rule: its one group is dynamic and unbounded.
    pub rule: bool,
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    pub key: RolloutKey,
    pub tenant: TenantKey,
    pub name: Name,
    pub artifact: ArtifactKey,
    pub artifact_title: String,
    pub artifact_version: String,
    pub kind: ArtifactKind,
    pub target: String,
    pub groups_spec: String,
    pub thresholds: Thresholds,
    pub update_type: UpdateType,
    pub state: Lifecycle,
    pub start_at: Option<Millis>,
    pub max_per_minute: Option<u64>,
    pub max_downloads: Option<u64>,
    pub jitter_millis: i64,
    pub window: Option<WindowSpec>,
    pub dynamic: bool,
    pub rule: bool,
    pub created_by: String,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A group with its counters: how many of its actions are in each update state, kept in the
/// transactions that move them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutGroup {
    pub id: i64,
    /// 0 for the first group.
    pub index: usize,
    pub size: u64,
    /// Built for devices that joined after the rollout was created.
    pub dynamic: bool,
    pub started_at: Option<Millis>,
    pub passed_at: Option<Millis>,
    /// Actions per state, in [`UpdateState::ALL`]'s order. UPDATED also counts members that ran
    /// the artifact already when their turn came.
    pub counts: [u64; 9],
    /// Members that got no action because something else wins for them (their own
    /// assignment, a newer rollout, the artifact failed on them before).
    pub skipped: u64,
    /// FAILED actions accepted by resuming the halted rollout.
    pub failed_accepted: u64,
}

impl RolloutGroup {
    pub fn count(&self, state: UpdateState) -> u64 {
        UpdateState::ALL
            .iter()
            .position(|s| *s == state)
            .map_or(0, |i| self.counts[i])
    }

    /// Active actions that have not finished downloading (pacing's "downloads in flight").
    pub fn in_flight(&self) -> u64 {
        self.count(UpdateState::Queued)
            + self.count(UpdateState::Initiated)
            + self.count(UpdateState::Downloading)
    }

    /// What the rollout's decisions need of the group.
    pub fn progress(&self) -> GroupProgress {
        GroupProgress {
            size: self.size,
            updated: self.count(UpdateState::Updated),
            failed: self.count(UpdateState::Failed),
            failed_accepted: self.failed_accepted,
            dropped: self.count(UpdateState::Canceled) + self.skipped,
            started_at: self.started_at,
            passed_at: self.passed_at,
        }
    }
}

/// A device of a rollout whose action failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutFailure {
    pub device_id: DeviceId,
    pub group: usize,
    pub code: FailureCode,
    pub reason: String,
    pub at: Millis,
}
