//! Rollouts in the management API: create one over a snapshot of its target, list, show its
//! progress, and start / pause / resume / cancel it. The scheduler (`kernel::scheduler`) does the
//! rest; canceling reaches devices through every adapter's channel.

mod rules;
pub mod wire;

pub use self::rules::*;

use std::collections::{BTreeSet, HashSet};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use updraft_core::rollout::{
    self, Command, Lifecycle, RolloutError, Thresholds, UpdateType, group_sizes, parse_groups,
};
use updraft_core::{DeviceId, Filter, Name, ProfileKey, Role, Scope, TenantKey};
use updraft_store::{Artifact, DeviceMatch, NewRollout, Rollout};

use self::wire::*;
use crate::api::fleet::artifact_named;
use crate::kernel::auth::Caller;
use crate::kernel::clock::now_millis;
use crate::kernel::cluster::News;
use crate::kernel::error::{ApiError, ApiResult, ErrorBody};
use crate::kernel::extract::{ApiJson, ApiPath};
use crate::kernel::state::AppState;

/// A target holds at most this many devices.
pub const MAX_TARGET: usize = 1_000_000;
/// At most this many offenders are named in an error.
const NAMED: usize = 20;
/// `show` lists at most this many failures.
const FAILURES_SHOWN: u64 = 100;

fn refused(err: RolloutError) -> ApiError {
    let status = match err.code {
        "empty_target" => StatusCode::UNPROCESSABLE_ENTITY,
        "rollout_state" => StatusCode::CONFLICT,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, err.code, err.message)
}

fn duration(what: &str, text: Option<&str>) -> ApiResult<i64> {
    match text {
        None => Ok(0),
        Some(text) => updraft_core::duration(text.trim()).ok_or_else(|| {
            ApiError::bad_request(
                "bad_duration",
                format!("{what} {text:?} is not a duration like 30s, 10m, 2h or 1d"),
            )
        }),
    }
}

fn named(ids: &[&str], total: usize) -> String {
    let mut text = ids
        .iter()
        .take(NAMED)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if total > NAMED {
        text.push_str(&format!(" and {} more", total - NAMED));
    }
    text
}

/// The target's devices: those matching the filter, or those listed.
async fn target(
    state: &AppState,
    tenant: TenantKey,
    body: &RolloutIn,
) -> ApiResult<(String, Vec<DeviceMatch>)> {
    match (&body.filter, &body.devices) {
        (Some(text), None) => {
            let filter = Filter::parse(text)
                .map_err(|e| ApiError::bad_request("bad_filter", e.to_string()))?;
            state
                .metrics
                .fleet_scans
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let found = state
                .store
                .matching_devices(tenant, &filter, now_millis(), MAX_TARGET)
                .await?;
            Ok((text.clone(), found))
        }
        (None, Some(ids)) => {
            if ids.len() > MAX_TARGET {
                return Err(ApiError::bad_request(
                    "target_too_large",
                    format!("a rollout targets at most {MAX_TARGET} devices"),
                ));
            }
            let mut seen = HashSet::new();
            let mut found = Vec::with_capacity(ids.len());
            let mut unknown = Vec::new();
            for id in ids {
                if !seen.insert(id.as_str()) {
                    continue;
                }
                let device_id = DeviceId::parse(id)?;
                match state.store.device(tenant, &device_id).await? {
                    Some(device) => found.push(DeviceMatch {
                        key: device.key,
                        id: device.id,
                        profile: device.profile.map(|(key, _)| key),
                    }),
                    None => unknown.push(id.as_str()),
                }
            }
            if !unknown.is_empty() {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unknown_device",
                    format!(
                        "no such devices in this tenant: {}",
                        named(&unknown, unknown.len())
                    ),
                ));
            }
            Ok((
                format!(
                    "devices: {}",
                    named(
                        &ids.iter().map(String::as_str).collect::<Vec<_>>(),
                        ids.len()
                    )
                ),
                found,
            ))
        }
        _ => Err(ApiError::bad_request(
            "invalid_request",
            "give the target as either filter or devices",
        )),
    }
}

/// Refuses (or with `skip`, leaves out) devices whose profile the artifact does not run on.
fn compatible_only(
    artifact: &Artifact,
    devices: Vec<DeviceMatch>,
    skip: bool,
) -> ApiResult<Vec<DeviceMatch>> {
    if artifact.profiles.is_empty() {
        return Ok(devices);
    }
    let runs_on = |d: &DeviceMatch| {
        d.profile
            .is_some_and(|key| artifact.profiles.iter().any(|(p, _)| *p == key))
    };
    let (fit, misfit): (Vec<DeviceMatch>, Vec<DeviceMatch>) =
        devices.into_iter().partition(runs_on);
    if misfit.is_empty() || skip {
        return Ok(fit);
    }
    let ids: Vec<&str> = misfit.iter().map(|d| d.id.as_str()).collect();
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "artifact_incompatible",
        format!(
            "{}@{} does not run on the profile of {} target devices: {} (leave them out with skip_incompatible)",
            artifact.title,
            artifact.version,
            misfit.len(),
            named(&ids, ids.len())
        ),
    ))
}

/// When and how the rollout starts: READY (by command, or at a time) or RUNNING at once.
fn start_of(text: Option<&str>) -> ApiResult<(Lifecycle, Option<i64>)> {
    match text.map(str::trim) {
        None | Some("manual") => Ok((Lifecycle::Ready, None)),
        Some("auto") => Ok((Lifecycle::Running, None)),
        Some(at) => match updraft_core::time::parse_rfc3339(at) {
            Some(millis) => Ok((Lifecycle::Ready, Some(millis))),
            None => Err(ApiError::bad_request(
                "bad_start",
                format!("start {at:?} is not manual, auto or an RFC 3339 time"),
            )),
        },
    }
}

#[utoipa::path(post, path = "/api/v1/rollouts", tag = "rollouts", request_body = RolloutIn,
    responses((status = 201, body = RolloutOut), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<RolloutIn>,
) -> ApiResult<(StatusCode, Json<RolloutOut>)> {
    caller.require(Role::Maintainer)?;
    let created = create_rollout(&state, &caller, &body, false).await?;
    let groups = state.store.rollout_groups(created.key).await?;
    Ok((
        StatusCode::CREATED,
        Json(RolloutOut::new(&created, &groups, None)),
    ))
}

/// Creates a rollout (or, with `rule`, an auto-assignment rule: one unbounded dynamic group,
/// which may start empty) over a snapshot of its target.
async fn create_rollout(
    state: &AppState,
    caller: &Caller,
    body: &RolloutIn,
    rule: bool,
) -> ApiResult<Rollout> {
    let tenant = caller.tenant();
    let name = Name::parse(&body.name)?;
    let groups_spec = body.groups.clone().unwrap_or_else(|| "100%".to_owned());
    let groups = parse_groups(&groups_spec).map_err(refused)?;
    let thresholds = Thresholds {
        success_pct: body.success_threshold.unwrap_or(100),
        error_pct: body.error_threshold.unwrap_or(0),
        soak_millis: duration("soak", body.soak.as_deref())?,
    };
    thresholds.check().map_err(refused)?;
    let update_type = match &body.update_type {
        Some(text) => UpdateType::parse(text).map_err(refused)?,
        None => UpdateType::Forced,
    };
    let (lifecycle, start_at) = start_of(body.start.as_deref())?;
    let jitter_millis = duration("jitter", body.jitter.as_deref())?;
    let window = match (&body.window, &body.window_duration, &body.tz) {
        (Some(cron), duration, tz) => Some(crate::kernel::terms::window_spec(
            cron,
            duration.as_deref().unwrap_or("1h"),
            tz.as_deref().unwrap_or("UTC"),
        )?),
        (None, None, None) => None,
        _ => {
            return Err(ApiError::bad_request(
                "bad_window",
                "window_duration and tz go with a window schedule",
            ));
        }
    };
    if body.max_per_minute == Some(0) || body.max_downloads == Some(0) {
        return Err(ApiError::bad_request(
            "bad_pacing",
            "max_per_minute and max_downloads are at least 1",
        ));
    }
    if body.dynamic && body.filter.is_none() {
        return Err(ApiError::bad_request(
            "invalid_request",
            "a dynamic rollout targets a filter, which devices can come to match",
        ));
    }
    let artifact = artifact_named(state, tenant, Some(&body.artifact), None).await?;
    let (target_text, devices) = target(state, tenant, body).await?;
    let mut devices = compatible_only(&artifact, devices, body.skip_incompatible || rule)?;
    let sizes = if rule {
        vec![devices.len() as u64]
    } else {
        group_sizes(devices.len() as u64, &groups).map_err(refused)?
    };
    // What every adapter refuses for an assignment it refuses here too, per profile reached.
    let profiles: BTreeSet<ProfileKey> = devices.iter().filter_map(|d| d.profile).collect();
    for profile in profiles {
        state
            .adapters
            .check_assignment(state, tenant, Scope::Profile(profile), &artifact, None)
            .await?;
    }
    // Groups are drawn in a stable shuffled order, so that the first group is a sample of the
    // whole target rather than its first device ids.
    let seed = name
        .as_str()
        .bytes()
        .fold(0i64, |h, b| h.wrapping_mul(31).wrapping_add(i64::from(b)));
    devices.sort_by_key(|d| (rollout::jitter(seed, d.key.0, i64::MAX), d.key.0));
    let mut members = Vec::with_capacity(sizes.len());
    let mut rest = devices.iter().map(|d| d.key);
    for size in sizes {
        members.push(rest.by_ref().take(size as usize).collect());
    }
    let new = NewRollout {
        name,
        artifact: artifact.key,
        target: target_text,
        groups_spec,
        thresholds,
        update_type,
        state: lifecycle,
        start_at,
        max_per_minute: body.max_per_minute,
        max_downloads: body.max_downloads,
        jitter_millis,
        window,
        dynamic: body.dynamic,
        rule,
        created_by: caller.source(),
    };
    let created = state.store.create_rollout(tenant, &new, &members).await?;
    state.announce(News::Schedule);
    Ok(created)
}

#[utoipa::path(get, path = "/api/v1/rollouts", tag = "rollouts", responses((status = 200, body = Vec<RolloutOut>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<RolloutOut>>> {
    let rollouts = state.store.list_rollouts(caller.tenant()).await?;
    let mut out = Vec::with_capacity(rollouts.len());
    // Rules are listed by `/api/v1/rules`.
    for rollout in rollouts.iter().filter(|r| !r.rule) {
        let groups = state.store.rollout_groups(rollout.key).await?;
        out.push(RolloutOut::new(rollout, &groups, None));
    }
    Ok(Json(out))
}

async fn rollout_named(state: &AppState, tenant: TenantKey, name: &str) -> ApiResult<Rollout> {
    state
        .store
        .rollout_by_name(tenant, name)
        .await?
        .ok_or_else(|| ApiError::not_found("rollout_not_found", format!("no rollout {name:?}")))
}

async fn shown(state: &AppState, rollout: &Rollout) -> ApiResult<RolloutOut> {
    let groups = state.store.rollout_groups(rollout.key).await?;
    let failures = state
        .store
        .rollout_failures(rollout.key, FAILURES_SHOWN)
        .await?;
    Ok(RolloutOut::new(rollout, &groups, Some(&failures)))
}

#[utoipa::path(get, path = "/api/v1/rollouts/{name}", tag = "rollouts",
    params(("name" = String, Path, description = "The rollout's name")),
    responses((status = 200, body = RolloutOut), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<RolloutOut>> {
    let rollout = rollout_named(&state, caller.tenant(), &name).await?;
    Ok(Json(shown(&state, &rollout).await?))
}

#[utoipa::path(post, path = "/api/v1/rollouts/{name}/{command}", tag = "rollouts",
    params(("name" = String, Path, description = "The rollout's name"),
        ("command" = String, Path, description = "start, pause, resume or cancel")),
    responses((status = 200, body = RolloutOut), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn command(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, command)): ApiPath<(String, String)>,
) -> ApiResult<Json<RolloutOut>> {
    caller.require(Role::Maintainer)?;
    let tenant = caller.tenant();
    let command = match command.as_str() {
        "start" => Command::Start,
        "pause" => Command::Pause,
        "resume" => Command::Resume,
        "cancel" => Command::Cancel,
        other => {
            return Err(ApiError::not_found(
                "unknown_command",
                format!("no rollout command {other:?}: use start, pause, resume or cancel"),
            ));
        }
    };
    let rollout = rollout_named(&state, tenant, &name).await?;
    let to = rollout::command(rollout.state, command).map_err(refused)?;
    if !state
        .store
        .set_rollout_state(rollout.key, rollout.state, to, &caller.source())
        .await?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "rollout_state",
            "the rollout changed meanwhile: look again",
        ));
    }
    if to == Lifecycle::Canceled {
        // Devices that were told of a withdrawn update learn so through their own protocol.
        state.announce(News::Withdrawn(tenant));
    }
    state.announce(News::Schedule);
    let rollout = rollout_named(&state, tenant, &name).await?;
    Ok(Json(shown(&state, &rollout).await?))
}
