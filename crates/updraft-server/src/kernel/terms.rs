//! How a device may install its update: the update type and maintenance window of the rollout
//! that asked for it (an assignment's update is `forced`, with no window). Adapters that can
//! separate downloading from installing (`DeviceChannel::separates_install`) download at once
//! and install when [`Terms::may_install`]; the others are offered the update only while
//! [`Terms::may_offer`] — [`held_back`] shows them the device's status that way.

use updraft_core::rollout::UpdateType;
use updraft_core::window::Window;
use updraft_core::{ActionKey, UpdateState};
use updraft_store::{DeviceStatus, Rollout, WindowSpec};

use crate::kernel::clock::now_millis;
use crate::kernel::error::{ApiError, ApiResult};
use crate::kernel::state::AppState;

/// What a device may do with its update now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    pub update_type: UpdateType,
    /// `Some(open)` when the update has a maintenance window.
    pub window_open: Option<bool>,
}

impl Terms {
    /// An assignment's update: forced, any time.
    pub const ANY_TIME: Terms = Terms {
        update_type: UpdateType::Forced,
        window_open: None,
    };

    pub fn of(rollout: Option<&Rollout>, now: i64) -> Terms {
        match rollout {
            None => Terms::ANY_TIME,
            Some(rollout) => Terms {
                update_type: rollout.update_type,
                window_open: rollout.window.as_ref().map(|w| window_open(w, now)),
            },
        }
    }

    /// Installing is allowed now (never for download-only, only inside the window).
    pub fn may_install(&self) -> bool {
        self.update_type != UpdateType::DownloadOnly && self.window_open != Some(false)
    }

    /// For a protocol that cannot download without installing: whether to offer the update now.
    pub fn may_offer(&self) -> bool {
        self.window_open != Some(false)
    }
}

/// The terms of `action` now.
pub async fn terms_of(state: &AppState, action: ActionKey) -> ApiResult<Terms> {
    let rollout = state.store.rollout_of_action(action).await?;
    Ok(Terms::of(rollout.as_ref(), now_millis()))
}

/// The time zone's UTC offset in seconds at `millis`; UTC for a zone the database lacks (a
/// window is checked when it is created, so that only happens if the database changed).
fn offset_secs(tz: &jiff::tz::TimeZone, millis: i64) -> i64 {
    jiff::Timestamp::from_millisecond(millis)
        .map(|ts| i64::from(tz.to_offset(ts).seconds()))
        .unwrap_or(0)
}

/// Whether the window is open at `now`.
pub fn window_open(spec: &WindowSpec, now: i64) -> bool {
    let Ok(window) = Window::new(&spec.cron, spec.duration_millis) else {
        // A stored window that no longer parses gates nothing.
        return true;
    };
    let tz = jiff::tz::TimeZone::get(&spec.tz).unwrap_or(jiff::tz::TimeZone::UTC);
    window.open_at(now, |t| offset_secs(&tz, t))
}

/// Checks a window as an operator gave it: the schedule, a duration like `2h`, a zone name.
pub fn window_spec(cron: &str, duration: &str, tz: &str) -> ApiResult<WindowSpec> {
    let duration_millis = updraft_core::duration(duration.trim()).ok_or_else(|| {
        ApiError::bad_request(
            "bad_duration",
            format!("window duration {duration:?} is not a duration like 30m or 2h"),
        )
    })?;
    Window::new(cron, duration_millis).map_err(|e| ApiError::bad_request(e.code, e.message))?;
    if jiff::tz::TimeZone::get(tz).is_err() {
        return Err(ApiError::bad_request(
            "bad_timezone",
            format!("no time zone {tz:?}: use an IANA name like Europe/Berlin, or UTC"),
        ));
    }
    Ok(WindowSpec {
        cron: cron.trim().to_owned(),
        duration_millis,
        tz: tz.to_owned(),
    })
}

/// The device's status as a protocol that cannot separate downloading from installing offers
/// it: an update not yet offered (QUEUED) whose window is closed is held back — no active
/// action, and what the device runs stays what it should run — until the window opens. Once
/// offered, an update runs on whatever the window does.
pub async fn held_back(state: &AppState, mut status: DeviceStatus) -> ApiResult<DeviceStatus> {
    let Some(active) = &status.active else {
        return Ok(status);
    };
    if active.state != UpdateState::Queued || terms_of(state, active.key).await?.may_offer() {
        return Ok(status);
    }
    match active.kind {
        updraft_core::ArtifactKind::Firmware => status.desired_firmware = None,
        updraft_core::ArtifactKind::Software => status.desired_software = None,
    }
    status.active = None;
    Ok(status)
}
