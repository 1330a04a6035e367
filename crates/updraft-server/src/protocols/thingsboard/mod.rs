//! ThingsBoard's device firmware API: one core shared by its three faces (`http`, `mqtt`, `coap`):
//! devices authenticate with their access token, read the shared `fw_*`/`sw_*` attributes
//! that describe what they should run (the shared resolution rule decides it), download it in
//! chunks, and report `fw_state` telemetry, which drives the shared update state machine.

pub mod adapter;
pub mod coap;
pub mod http;
pub mod mqtt;

use bytes::Bytes;
use serde_json::{Map, Value, json};
use updraft_core::{ArtifactKind, Failure, Report, UpdateState};
use updraft_store::{Artifact, Desired, Device, DeviceStatus};

use crate::kernel::error::{ApiError, ApiResult};
use crate::kernel::state::AppState;

/// The source recorded in history for reports over this API.
pub const SOURCE: &str = "thingsboard";

/// The device an access token belongs to.
pub async fn device_for_token(state: &AppState, token: &str) -> ApiResult<Device> {
    crate::kernel::auth::device_by_token(state, token).await
}

/// `fw` or `sw`.
pub fn prefix(kind: ArtifactKind) -> &'static str {
    match kind {
        ArtifactKind::Firmware => "fw",
        ArtifactKind::Software => "sw",
    }
}

/// The desired artifact of each kind, with its row.
pub async fn desired(
    state: &AppState,
    device: &Device,
) -> ApiResult<Vec<(ArtifactKind, Desired, Artifact)>> {
    match state.store.device_status(device.tenant, &device.id).await? {
        Some(status) => {
            // Offered inside a rollout's maintenance window only: installing follows at once.
            let status = crate::kernel::terms::held_back(state, status).await?;
            desired_of(state, device, &status).await
        }
        None => Ok(Vec::new()),
    }
}

async fn desired_of(
    state: &AppState,
    device: &Device,
    status: &DeviceStatus,
) -> ApiResult<Vec<(ArtifactKind, Desired, Artifact)>> {
    let mut out = Vec::new();
    for (kind, desired) in [
        (ArtifactKind::Firmware, &status.desired_firmware),
        (ArtifactKind::Software, &status.desired_software),
    ] {
        if let Some(desired) = desired
            && let Some(artifact) = state
                .store
                .artifact(device.tenant, desired.artifact)
                .await?
        {
            out.push((kind, desired.clone(), artifact));
        }
    }
    Ok(out)
}

/// The shared attributes describing what the device should run: `fw_title`, `fw_version`,
/// `fw_size`, `fw_checksum` (SHA-256), `fw_checksum_algorithm`, and the `sw_` twins. Reading them
/// is how the device learns of its update, so a QUEUED action becomes INITIATED here.
pub async fn shared_attributes(state: &AppState, device: &Device) -> ApiResult<Map<String, Value>> {
    let mut shared = Map::new();
    let Some(status) = state.store.device_status(device.tenant, &device.id).await? else {
        return Ok(shared);
    };
    let status = crate::kernel::terms::held_back(state, status).await?;
    for (kind, _, artifact) in desired_of(state, device, &status).await? {
        let p = prefix(kind);
        shared.insert(format!("{p}_title"), json!(artifact.title));
        shared.insert(format!("{p}_version"), json!(artifact.version));
        shared.insert(format!("{p}_size"), json!(artifact.size));
        shared.insert(format!("{p}_checksum"), json!(artifact.checksums.sha256));
        shared.insert(format!("{p}_checksum_algorithm"), json!("SHA256"));
    }
    // The device has been told: its QUEUED action becomes INITIATED.
    if let Some(active) = status.active {
        crate::kernel::actions::told(state, device.tenant, active.key, active.state, SOURCE)
            .await?;
    }
    Ok(shared)
}

/// Picks the keys asked for (`None`: all).
pub fn select(all: Map<String, Value>, keys: Option<&str>) -> Map<String, Value> {
    match keys {
        None => all,
        Some(keys) => {
            let wanted: Vec<&str> = keys
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .collect();
            all.into_iter()
                .filter(|(k, _)| wanted.contains(&k.as_str()))
                .collect()
        }
    }
}

/// The device's client attributes (what it reported), as JSON.
pub fn client_attributes(device: &Device) -> Map<String, Value> {
    device
        .attributes
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect()
}

/// Applies a telemetry message: `current_fw_title`/`current_fw_version` (and `sw_`) record what the
/// device runs; `fw_state` (and `sw_state`) with `fw_error` drive its update action.
pub async fn telemetry(state: &AppState, device: &Device, message: &Value) -> ApiResult<()> {
    let values = telemetry_values(message)?;
    for kind in [ArtifactKind::Firmware, ArtifactKind::Software] {
        let p = prefix(kind);
        let text = |key: String| values.get(&key).and_then(Value::as_str).map(str::to_owned);
        let title = text(format!("current_{p}_title"));
        let version = text(format!("current_{p}_version"));
        if let (Some(title), Some(version)) = (&title, &version) {
            state
                .store
                .set_running(device.key, kind, title, version)
                .await?;
        }
        let Some(reported) = text(format!("{p}_state")) else {
            continue;
        };
        let error = text(format!("{p}_error")).unwrap_or_default();
        let Some(report) = report_of(&reported, &error)? else {
            continue;
        };
        let status = state.store.device_status(device.tenant, &device.id).await?;
        let Some(active) = status.and_then(|s| s.active).filter(|a| a.kind == kind) else {
            continue;
        };
        state
            .store
            .report(device.tenant, active.key, &report, SOURCE)
            .await?;
    }
    Ok(())
}

/// ThingsBoard accepts one object, `{"ts":…, "values":{…}}`, or an array of either.
pub fn telemetry_values(message: &Value) -> ApiResult<Map<String, Value>> {
    let bad = || {
        ApiError::bad_request(
            "invalid_json",
            "telemetry is a JSON object, {\"ts\",\"values\"} or an array of them",
        )
    };
    let mut out = Map::new();
    let mut add = |entry: &Value| -> ApiResult<()> {
        let object = entry.as_object().ok_or_else(bad)?;
        let values = match object.get("values") {
            Some(Value::Object(values)) => values,
            Some(_) => return Err(bad()),
            None => object,
        };
        for (k, v) in values {
            out.insert(k.clone(), v.clone());
        }
        Ok(())
    };
    match message {
        Value::Array(entries) => {
            for entry in entries {
                add(entry)?;
            }
        }
        other => add(other)?,
    }
    Ok(out)
}

/// A `fw_state` value as a report (`IDLE` and unknown-but-harmless values report nothing).
pub fn report_of(state: &str, error: &str) -> ApiResult<Option<Report>> {
    let reached = |state| {
        Ok(Some(Report::Reached {
            state,
            progress: None,
        }))
    };
    match state.to_ascii_uppercase().as_str() {
        "IDLE" | "QUEUED" | "INITIATED" => Ok(None),
        "DOWNLOADING" => reached(UpdateState::Downloading),
        "DOWNLOADED" => reached(UpdateState::Downloaded),
        "VERIFIED" => reached(UpdateState::Verified),
        "UPDATING" => reached(UpdateState::Updating),
        "UPDATED" => Ok(Some(Report::Succeeded)),
        "FAILED" => {
            let reason = if error.is_empty() {
                "the device reported FAILED".to_owned()
            } else {
                error.to_owned()
            };
            Ok(Some(Report::Failed(Failure {
                code: updraft_core::FailureCode::from_text(&reason),
                reason,
            })))
        }
        other => Err(ApiError::bad_request(
            "invalid_request",
            format!(
                "unknown fw_state {other:?}: use DOWNLOADING, DOWNLOADED, VERIFIED, UPDATING, UPDATED or FAILED"
            ),
        )),
    }
}

/// The artifact of `kind` whose chunks a device downloads: its active action's (two indexed
/// lookups, no resolution), else — a device that asks before it was told — what it should run.
pub async fn served(
    state: &AppState,
    device: &Device,
    kind: ArtifactKind,
) -> ApiResult<Option<Artifact>> {
    let view = state.store.poll_view(device.key).await?;
    if let Some(action) = view.active.filter(|a| a.kind == kind) {
        return match action.artifact {
            Some(key) => Ok(state.store.artifact(device.tenant, key).await?),
            None => Ok(None),
        };
    }
    Ok(desired(state, device)
        .await?
        .into_iter()
        .find(|(k, _, _)| *k == kind)
        .map(|(_, _, artifact)| artifact))
}

/// The bytes of chunk `index` of `size` bytes (0: the whole artifact) of an artifact of `total`
/// bytes, as `(offset, len)`; past the end, `len` is 0. One rule for every transport.
pub fn chunk_window(total: u64, size: u64, index: u64) -> (u64, u64) {
    let (offset, len) = if size == 0 {
        (0, total)
    } else {
        (index.saturating_mul(size), size)
    };
    if offset >= total {
        (offset, 0)
    } else {
        (offset, len.min(total - offset))
    }
}

/// Chunk `index` of `size` bytes (0: the whole artifact) of the device's desired `kind` artifact,
/// if it is `title`@`version`. Past the end: empty.
pub async fn chunk(
    state: &AppState,
    device: &Device,
    kind: ArtifactKind,
    release: Option<(&str, &str)>,
    size: u64,
    index: u64,
) -> ApiResult<Bytes> {
    let wanted = served(state, device, kind).await?.filter(|a| {
        release.is_none_or(|(title, version)| a.title == title && a.version == version)
    });
    let Some(artifact) = wanted else {
        return Err(ApiError::not_found(
            "artifact_not_found",
            "that firmware is not assigned to this device",
        ));
    };
    const MAX_CHUNK: u64 = 16 * 1024 * 1024;
    let (offset, len) = chunk_window(artifact.size, size, index);
    if len == 0 {
        return Ok(Bytes::new());
    }
    if size == 0 && len > MAX_CHUNK {
        return Err(ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "ask for chunks of at most 16 MiB",
        ));
    }
    let len = len.min(MAX_CHUNK);
    crate::kernel::download::blob_bytes(state, &artifact.checksums.sha256, offset, len)
        .await
        .map_err(ApiError::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fw_states_map_onto_reports() {
        assert_eq!(
            report_of("DOWNLOADING", "").ok().flatten(),
            Some(Report::Reached {
                state: UpdateState::Downloading,
                progress: None
            })
        );
        assert_eq!(
            report_of("updated", "").ok().flatten(),
            Some(Report::Succeeded)
        );
        assert_eq!(report_of("IDLE", "").ok().flatten(), None);
        let failed = report_of("FAILED", "Checksum verification failed")
            .ok()
            .flatten();
        assert!(matches!(
            failed,
            Some(Report::Failed(Failure {
                code: updraft_core::FailureCode::IntegrityCheckFailed,
                ..
            }))
        ));
        assert!(report_of("EXPLODED", "").is_err());
    }

    #[test]
    fn telemetry_comes_in_three_shapes() {
        for message in [
            json!({"fw_state": "DOWNLOADING"}),
            json!({"ts": 1, "values": {"fw_state": "DOWNLOADING"}}),
            json!([{"ts": 1, "values": {"fw_state": "DOWNLOADING"}}]),
        ] {
            let values = telemetry_values(&message).unwrap_or_default();
            assert_eq!(
                values.get("fw_state"),
                Some(&json!("DOWNLOADING")),
                "{message}"
            );
        }
        assert!(telemetry_values(&json!(3)).is_err());
        assert!(telemetry_values(&json!({"values": 3})).is_err());
    }
}
