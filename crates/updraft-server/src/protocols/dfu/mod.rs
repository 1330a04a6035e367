//! Drogue IoT DFU (the `embedded-update` protocol): each Status a device sends gets exactly one
//! Command back — Write the next block, Swap to the new image, Sync (up to date), or Wait — over
//! HTTP (`POST /v1/dfu`) or the built-in MQTT endpoint (`dfu` → `command/inbox//dfu`). The
//! desired image comes from the shared resolution rule; the device's reports drive the shared
//! state machine, and a device that comes back on its old version after a Swap is recorded as a
//! rollback and not sent that image again.

pub mod adapter;
pub mod mqtt;

pub use updraft_wire::dfu as wire;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use serde::Deserialize;
use updraft_core::{ArtifactKind, DeviceId, Failure, FailureCode, Progress, Report, UpdateState};
use updraft_store::Device;

use self::wire::{Command, Encoding, Status};
use crate::kernel::error::{ApiError, ApiResult};
use crate::kernel::extract::ApiQuery;
use crate::kernel::state::AppState;

/// The source recorded in history for reports over this protocol.
pub const SOURCE: &str = "drogue";
/// Block size when the device names none (Drogue Ajour's).
pub const DEFAULT_MTU: u32 = 512;
/// Blocks are never larger than this, whatever the device asks.
pub const MAX_MTU: u32 = 64 * 1024;
/// Seconds a device in sync waits before asking again.
pub const POLL_SECS: u32 = 300;
/// `embedded-update` devices hold versions of at most 16 bytes.
pub const MAX_VERSION_BYTES: usize = 16;

/// The HTTP route.
pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/dfu", post(http_dfu))
}

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "send Authorization: Basic with {device}@{tenant} and the device token",
    )
}

/// The device `{device}@{tenant}` (or `{device}` in the `default` tenant) whose token is `token`.
pub async fn authenticate(state: &AppState, user: &str, token: &str) -> ApiResult<Device> {
    crate::kernel::auth::device_by_login(state, user, token).await
}

/// The device `other` that `speaker` (authenticated with `token`) speaks for: itself, or any
/// device of its tenant when its credential is a gateway's.
pub async fn speaking_for(
    state: &AppState,
    speaker: Device,
    token: &str,
    other: Option<&str>,
) -> ApiResult<Device> {
    let Some(other) = other.filter(|other| *other != speaker.id.as_str()) else {
        return Ok(speaker);
    };
    if !crate::kernel::auth::is_gateway(state, &speaker, token).await? {
        return Err(ApiError::forbidden(format!(
            "{} may not speak for {other:?}: its credential is not a gateway's",
            speaker.id
        )));
    }
    let unknown = || {
        ApiError::not_found(
            "device_not_found",
            format!("no device {other:?} in the gateway's tenant"),
        )
    };
    let id = DeviceId::parse(other).map_err(|_| unknown())?;
    state
        .store
        .device(speaker.tenant, &id)
        .await?
        .ok_or_else(unknown)
}

#[derive(Deserialize)]
pub struct DfuQuery {
    /// How long Drogue Cloud would wait for a command; we always answer at once.
    #[allow(dead_code)]
    ct: Option<u64>,
    #[serde(rename = "as")]
    pub on_behalf: Option<String>,
}

/// The user and password of an `Authorization: Basic` header value.
pub fn basic_credentials(header: Option<&str>) -> Option<(String, String)> {
    let b64 = header?
        .strip_prefix("Basic ")
        .or_else(|| header?.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, token) = text.split_once(':')?;
    Some((user.to_owned(), token.to_owned()))
}

async fn http_dfu(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<DfuQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let (user, token) = basic_credentials(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    )
    .ok_or_else(unauthorized)?;
    let speaker = authenticate(&state, &user, &token).await?;
    let device = speaking_for(&state, speaker, &token, query.on_behalf.as_deref()).await?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let encoding = Encoding::of(content_type, &body);
    let status =
        wire::decode(encoding, &body).map_err(|e| ApiError::bad_request("invalid_status", e.0))?;
    let command = answer(&state, &device, &status).await?;
    let bytes = wire::encode(encoding, &command);
    // A fixed-length body: small devices read status line, headers and body into one buffer and
    // understand only Content-Length.
    Ok(([(header::CONTENT_TYPE, encoding.content_type())], bytes).into_response())
}

async fn report(
    state: &AppState,
    device: &Device,
    action: updraft_core::ActionKey,
    report: Report,
) -> ApiResult<()> {
    state
        .store
        .report(device.tenant, action, &report, SOURCE)
        .await?;
    Ok(())
}

/// The one Command that answers `status` (see the reference's server algorithm).
pub async fn answer(state: &AppState, device: &Device, status: &Status) -> ApiResult<Command> {
    if status.mtu == Some(0) {
        return Err(ApiError::bad_request(
            "invalid_status",
            "mtu must be at least 1",
        ));
    }
    let mtu = u64::from(status.mtu.unwrap_or(DEFAULT_MTU).min(MAX_MTU));
    let correlation_id = status.correlation_id;
    let reported = String::from_utf8_lossy(&status.version).into_owned();
    let sync = |poll: Option<u32>| Command::Sync {
        version: status.version.clone(),
        correlation_id,
        poll,
    };
    // last_seen at most every 30 s: a device writing an image sends a Status per block.
    let now = crate::kernel::clock::now_millis();
    if device.last_seen.is_none_or(|seen| now - seen > 30_000) {
        state.store.touch_device(device.key).await?;
    }

    let Some(current) = state.store.device_status(device.tenant, &device.id).await? else {
        return Err(unauthorized());
    };
    // The device swaps once it has the image: offered inside a maintenance window only.
    let current = crate::kernel::terms::held_back(state, current).await?;
    let desired = match current.desired_firmware {
        Some(desired) => {
            state
                .store
                .artifact(device.tenant, desired.artifact)
                .await?
        }
        None => None,
    };
    let title = match &desired {
        Some(artifact) if artifact.version == reported => artifact.title.clone(),
        _ => device
            .firmware
            .as_ref()
            .map(|f| f.title.clone())
            .unwrap_or_else(|| "firmware".to_owned()),
    };
    let runs = device
        .firmware
        .as_ref()
        .is_some_and(|f| f.title == title && f.version == reported);
    if !runs {
        state
            .store
            .set_running(device.key, ArtifactKind::Firmware, &title, &reported)
            .await?;
    }
    let Some(artifact) = desired else {
        return Ok(sync(Some(POLL_SECS)));
    };
    let active = current.active.filter(|a| a.artifact == Some(artifact.key));

    if artifact.version == reported {
        if let Some(action) = active {
            report(state, device, action.key, Report::Succeeded).await?;
        }
        return Ok(sync(Some(POLL_SECS)));
    }
    // A failed update (a rollback, say) is not offered again until someone assigns it again.
    let Some(action) = active else {
        return Ok(sync(Some(POLL_SECS)));
    };
    if artifact.version.len() > MAX_VERSION_BYTES {
        let reason = format!(
            "version {:?} is longer than the {MAX_VERSION_BYTES} bytes embedded-update devices hold",
            artifact.version
        );
        report(
            state,
            device,
            action.key,
            Report::Failed(Failure {
                code: FailureCode::UnsupportedPackage,
                reason,
            }),
        )
        .await?;
        return Ok(sync(Some(POLL_SECS)));
    }
    let version = artifact.version.as_bytes().to_vec();
    let size = artifact.size;
    let writing = status.update.as_ref().filter(|u| u.version == version);
    let swap = || Command::Swap {
        version: version.clone(),
        correlation_id,
        checksum: hex::decode(&artifact.checksums.sha256).unwrap_or_default(),
    };

    if action.state == UpdateState::Updating {
        if writing.is_some_and(|u| u64::from(u.offset) >= size) {
            // The Swap got lost, or the device refused the image: send it again, three times.
            let history = state
                .store
                .action_history(device.tenant, action.key)
                .await?;
            let swaps = history
                .iter()
                .filter(|e| e.to == UpdateState::Updating && !e.refused)
                .count();
            if swaps >= 3 {
                let reason =
                    "the device refused the image three times (integrity check failed)".to_owned();
                report(
                    state,
                    device,
                    action.key,
                    Report::Failed(Failure {
                        code: FailureCode::IntegrityCheckFailed,
                        reason,
                    }),
                )
                .await?;
                return Ok(sync(Some(POLL_SECS)));
            }
            report(
                state,
                device,
                action.key,
                Report::Reached {
                    state: UpdateState::Updating,
                    progress: None,
                },
            )
            .await?;
            return Ok(swap());
        }
        let reason = format!(
            "rolled back: the device came back on {reported} after the swap to {}",
            artifact.version
        );
        report(
            state,
            device,
            action.key,
            Report::Failed(Failure {
                code: FailureCode::UpdateFailed,
                reason,
            }),
        )
        .await?;
        return Ok(sync(Some(POLL_SECS)));
    }

    let offset = match writing {
        Some(update) if u64::from(update.offset) <= size => u64::from(update.offset),
        _ => 0,
    };
    if offset < size {
        let next = if offset == 0 {
            Report::Reached {
                state: UpdateState::Initiated,
                progress: None,
            }
        } else {
            Report::Reached {
                state: UpdateState::Downloading,
                progress: Some(Progress {
                    done: offset,
                    total: size,
                }),
            }
        };
        // Progress is history: record the start, then every tenth of the image, not every block.
        let last = action.progress.map(|p| p.done).unwrap_or(0);
        let worth_it =
            action.state < next.target() || offset.saturating_sub(last).saturating_mul(10) >= size;
        if next.target() >= action.state && worth_it {
            report(state, device, action.key, next).await?;
        }
        let len = mtu.min(size - offset);
        let data =
            crate::kernel::download::blob_bytes(state, &artifact.checksums.sha256, offset, len)
                .await
                .map_err(ApiError::internal)?;
        let offset = u32::try_from(offset).map_err(|_| {
            ApiError::bad_request(
                "invalid_status",
                "images over 4 GiB do not fit this protocol",
            )
        })?;
        return Ok(Command::Write {
            version,
            correlation_id,
            offset,
            data: data.to_vec(),
        });
    }
    for state_reached in [UpdateState::Downloaded, UpdateState::Updating] {
        if state_reached > action.state || state_reached == UpdateState::Updating {
            let progress = (state_reached == UpdateState::Downloaded).then_some(Progress {
                done: size,
                total: size,
            });
            report(
                state,
                device,
                action.key,
                Report::Reached {
                    state: state_reached,
                    progress,
                },
            )
            .await?;
        }
    }
    Ok(swap())
}
