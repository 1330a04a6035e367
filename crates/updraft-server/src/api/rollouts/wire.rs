//! The rollout API's JSON shapes and their conversions from store rows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use updraft_core::UpdateState;
use updraft_store::{Rollout, RolloutFailure, RolloutGroup};
use utoipa::ToSchema;

/// A rollout to create.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutIn {
    pub name: String,
    /// The artifact as TITLE@VERSION.
    pub artifact: String,
    /// The target as a device filter (`profile==esp32;tag==beta`); or give `devices`.
    pub filter: Option<String>,
    /// The target as device ids; or give `filter`.
    pub devices: Option<Vec<String>>,
    /// `10%,40%,50%`, `5,100,rest`; one group of everything when absent.
    pub groups: Option<String>,
    /// Percent of a group UPDATED before the next starts (default 100).
    pub success_threshold: Option<u8>,
    /// Percent of a group FAILED beyond which the rollout halts (default 0: any failure).
    pub error_threshold: Option<u8>,
    /// How long a group that passed waits before the next starts (`30m`).
    pub soak: Option<String>,
    /// `forced` (default), `soft` or `download-only`.
    #[serde(rename = "type")]
    pub update_type: Option<String>,
    /// `manual` (default: `start` command), `auto` (now) or an RFC 3339 time.
    pub start: Option<String>,
    /// At most this many devices started per minute.
    pub max_per_minute: Option<u64>,
    /// At most this many devices downloading (queued, told or downloading) at once.
    pub max_downloads: Option<u64>,
    /// Each device starts after a stable random delay within this (`10m`).
    pub jitter: Option<String>,
    /// Leave out target devices whose profile the artifact does not run on, instead of refusing.
    #[serde(default)]
    pub skip_incompatible: bool,
    /// Devices created later, or that come to match the filter, join new groups built like the
    /// last one, with the same thresholds (needs `filter`).
    #[serde(default)]
    pub dynamic: bool,
    /// Maintenance window: a five-field cron schedule (`0 2 * * *`) at which installing may
    /// start; downloading is never held back.
    pub window: Option<String>,
    /// How long the window stays open (`2h`; default 1h).
    pub window_duration: Option<String>,
    /// The window's time zone (IANA name; default UTC).
    pub tz: Option<String>,
}

/// An auto-assignment rule to create: devices matching the filter get the artifact — those that
/// match now, and each device when it is created or comes to match.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleIn {
    pub name: String,
    pub filter: String,
    /// TITLE@VERSION.
    pub artifact: String,
    /// `forced` (default), `soft` or `download-only`.
    #[serde(rename = "type")]
    pub update_type: Option<String>,
    pub max_per_minute: Option<u64>,
    pub max_downloads: Option<u64>,
}

/// Counts per update state (only states with devices in them), plus `SKIPPED`.
pub type StateCounts = BTreeMap<String, u64>;

#[derive(Serialize, ToSchema)]
pub struct GroupOut {
    /// 1 for the first group.
    pub group: usize,
    pub size: u64,
    pub started_at: Option<i64>,
    /// When the group reached its success threshold.
    pub passed_at: Option<i64>,
    pub states: StateCounts,
}

#[derive(Serialize, ToSchema)]
pub struct FailureOut {
    pub device: String,
    pub group: usize,
    pub code: String,
    pub reason: String,
    pub at: i64,
}

#[derive(Serialize, ToSchema)]
pub struct RolloutOut {
    pub name: String,
    /// TITLE@VERSION.
    pub artifact: String,
    /// firmware or software.
    pub kind: String,
    pub target: String,
    pub groups_spec: String,
    pub success_threshold: u8,
    pub error_threshold: u8,
    pub soak_ms: i64,
    #[serde(rename = "type")]
    pub update_type: String,
    /// CREATING, READY, RUNNING, PAUSED, FINISHED, HALTED or CANCELED.
    pub state: String,
    pub start_at: Option<i64>,
    pub max_per_minute: Option<u64>,
    pub max_downloads: Option<u64>,
    pub jitter_ms: i64,
    /// The maintenance window's schedule, duration (ms) and zone.
    pub window: Option<String>,
    pub window_ms: Option<i64>,
    pub tz: Option<String>,
    pub dynamic: bool,
    pub devices: u64,
    /// Every group's counts added up.
    pub states: StateCounts,
    pub groups: Vec<GroupOut>,
    /// The newest failures (at most 100), on `show`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures: Option<Vec<FailureOut>>,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

fn counts(group: &RolloutGroup) -> StateCounts {
    let mut out = StateCounts::new();
    for state in UpdateState::ALL {
        let n = group.count(state);
        if n > 0 {
            out.insert(state.as_str().to_owned(), n);
        }
    }
    if group.skipped > 0 {
        out.insert("SKIPPED".to_owned(), group.skipped);
    }
    out
}

impl RolloutOut {
    pub fn new(
        rollout: &Rollout,
        groups: &[RolloutGroup],
        failures: Option<&[RolloutFailure]>,
    ) -> Self {
        let mut states = StateCounts::new();
        let groups_out: Vec<GroupOut> = groups
            .iter()
            .map(|g| {
                let c = counts(g);
                for (state, n) in &c {
                    *states.entry(state.clone()).or_default() += n;
                }
                GroupOut {
                    group: g.index + 1,
                    size: g.size,
                    started_at: g.started_at,
                    passed_at: g.passed_at,
                    states: c,
                }
            })
            .collect();
        RolloutOut {
            name: rollout.name.to_string(),
            artifact: format!("{}@{}", rollout.artifact_title, rollout.artifact_version),
            kind: rollout.kind.as_str().to_owned(),
            target: rollout.target.clone(),
            groups_spec: rollout.groups_spec.clone(),
            success_threshold: rollout.thresholds.success_pct,
            error_threshold: rollout.thresholds.error_pct,
            soak_ms: rollout.thresholds.soak_millis,
            update_type: rollout.update_type.as_str().to_owned(),
            state: rollout.state.as_str().to_owned(),
            start_at: rollout.start_at,
            max_per_minute: rollout.max_per_minute,
            max_downloads: rollout.max_downloads,
            jitter_ms: rollout.jitter_millis,
            window: rollout.window.as_ref().map(|w| w.cron.clone()),
            window_ms: rollout.window.as_ref().map(|w| w.duration_millis),
            tz: rollout.window.as_ref().map(|w| w.tz.clone()),
            dynamic: rollout.dynamic,
            devices: groups.iter().map(|g| g.size).sum(),
            states,
            groups: groups_out,
            failures: failures.map(|f| {
                f.iter()
                    .map(|f| FailureOut {
                        device: f.device_id.to_string(),
                        group: f.group + 1,
                        code: f.code.as_str().to_owned(),
                        reason: f.reason.clone(),
                        at: f.at,
                    })
                    .collect()
            }),
            created_by: rollout.created_by.clone(),
            created_at: rollout.created_at,
            updated_at: rollout.updated_at,
        }
    }
}
