//! The hawkBit Direct Device Integration (DDI) API, wire-compatible with hawkBit as far as a
//! device can tell: poll, deploymentBase, feedback, cancelAction, configData, installedBase and
//! artifact downloads under `/{tenant}/controller/v1/{controllerId}`. Everything maps onto the
//! shared model: the resolution rule decides what a device gets, feedback becomes update reports.
//!
//! Where hawkBit has no word for one of our states, `proceeding` feedback whose first detail starts
//! with `Verified` means VERIFIED and `Installing`/`Updating` means UPDATING; failure details
//! mentioning integrity/checksum/hash/signature map to `integrity_check_failed` (and so on, see
//! [`failure_code`]).

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};
use updraft_core::{ArtifactKey, DeviceId, Failure, FailureCode, Progress, Report, UpdateState};
use updraft_store::{
    Action, Artifact, AttributeMode, CredentialKind, Device, NewDevice, ReportOutcome,
    TenantSettings,
};

use crate::api::{ApiPath, ApiQuery};
use crate::download::{BlobResponse, serve_blob};
use crate::error::{ApiError, ApiResult};
use crate::secret;
use crate::state::AppState;

const BASE: &str = "/{tenant}/controller/v1/{controller}";

/// The DDI routes, to be merged into the server's router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(BASE, get(poll))
        .route(
            &format!("{BASE}/deploymentBase/{{action}}"),
            get(deployment_base),
        )
        .route(
            &format!("{BASE}/deploymentBase/{{action}}/feedback"),
            post(feedback),
        )
        .route(
            &format!("{BASE}/cancelAction/{{action}}"),
            get(cancel_action),
        )
        .route(
            &format!("{BASE}/cancelAction/{{action}}/feedback"),
            post(cancel_feedback),
        )
        .route(&format!("{BASE}/configData"), put(config_data))
        .route(
            &format!("{BASE}/installedBase/{{action}}"),
            get(installed_base),
        )
        .route(
            &format!("{BASE}/softwaremodules/{{module}}/artifacts/{{filename}}"),
            get(download),
        )
}

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "send Authorization: TargetToken <device token> or GatewayToken <tenant gateway token>",
    )
}

/// The device a request speaks for: its TargetToken must belong to that controller of that
/// tenant, or a GatewayToken to that tenant (which may register an unknown controller when the
/// tenant allows it). Anything else is 401, with nothing said about what exists.
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    tenant: &str,
    controller: &str,
) -> ApiResult<Device> {
    Ok(
        authenticate_with_settings(state, headers, tenant, controller)
            .await?
            .0,
    )
}

/// [`authenticate`], with the tenant's device-API settings.
async fn authenticate_with_settings(
    state: &AppState,
    headers: &HeaderMap,
    tenant: &str,
    controller: &str,
) -> ApiResult<(Device, TenantSettings)> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(unauthorized)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(unauthorized)?;
    let token = token.trim();
    if scheme.eq_ignore_ascii_case("TargetToken") {
        let device = state
            .store
            .device_by_credential(CredentialKind::AccessToken, &secret::hash(token))
            .await?
            .ok_or_else(unauthorized)?;
        let owner = state
            .store
            .tenant_by_name(tenant)
            .await?
            .filter(|t| t.key == device.tenant);
        match owner {
            Some(owner) if device.id.as_str() == controller => return Ok((device, owner.settings)),
            _ => return Err(unauthorized()),
        }
    }
    if scheme.eq_ignore_ascii_case("GatewayToken") {
        let owner = state
            .store
            .tenant_by_gateway_token(&secret::hash(token))
            .await?
            .ok_or_else(unauthorized)?;
        if !owner.name.as_str().eq_ignore_ascii_case(tenant) {
            return Err(unauthorized());
        }
        let id = DeviceId::parse(controller)?;
        if let Some(device) = state.store.device(owner.key, &id).await? {
            return Ok((device, owner.settings));
        }
        if !owner.settings.auto_register {
            return Err(ApiError::not_found(
                "device_not_found",
                format!(
                    "no controller {controller:?}: create it, or allow auto-registration for the tenant"
                ),
            ));
        }
        let new = NewDevice {
            id,
            project: None,
            profile: None,
            tags: vec![],
            attributes: BTreeMap::new(),
        };
        let device = state.store.create_device(owner.key, &new, &[]).await?;
        return Ok((device, owner.settings));
    }
    Err(unauthorized())
}

/// Absolute base URL for links, from the request as the device sent it (proxy headers first).
fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    let header_text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let host = header_text("x-forwarded-host").or_else(|| header_text("host"));
    match host {
        Some(host) if !host.is_empty() && !host.contains('/') => {
            let scheme = header_text("x-forwarded-proto")
                .filter(|p| *p == "https")
                .unwrap_or("http");
            format!("{scheme}://{host}")
        }
        _ => state.config.public_url.clone(),
    }
}

fn hal(body: Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/hal+json;charset=UTF-8")],
        axum::Json(body),
    )
        .into_response()
}

/// `HH:MM:SS`, as hawkBit writes the polling sleep.
pub fn sleep_text(secs: u32) -> String {
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// A value that changes when the action changes, for the `c` cache-busting parameter.
fn cache_key(action: &Action) -> String {
    let digest = secret::hash(&format!(
        "{}:{:?}:{}",
        action.key, action.artifact, action.artifact_version
    ));
    digest[..8].to_owned()
}

async fn poll(
    State(state): State<AppState>,
    ApiPath((tenant, controller)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (device, settings) =
        authenticate_with_settings(&state, &headers, &tenant, &controller).await?;
    // last_seen at most every 30 s, so that polling fleets do not turn into a stream of writes.
    let now = crate::server::now_millis();
    if device.last_seen.is_none_or(|seen| now - seen > 30_000) {
        state.store.touch_device(device.key).await?;
    }
    let base = format!(
        "{}/{tenant}/controller/v1/{controller}",
        base_url(&state, &headers)
    );
    let mut links = serde_json::Map::new();
    let view = state.store.poll_view(device.key).await?;
    if let Some(cancel) = view.pending_cancel {
        links.insert(
            "cancelAction".into(),
            json!({"href": format!("{base}/cancelAction/{}", cancel.key)}),
        );
    } else if let Some(active) = view.active {
        if active.state == UpdateState::Queued {
            let initiated = Report::Reached {
                state: UpdateState::Initiated,
                progress: None,
            };
            state
                .store
                .report(device.tenant, active.key, &initiated, "ddi")
                .await?;
        }
        links.insert(
            "deploymentBase".into(),
            json!({"href": format!("{base}/deploymentBase/{}?c={}", active.key, cache_key(&active))}),
        );
    } else if let Some(done) = view.last_updated {
        links.insert(
            "installedBase".into(),
            json!({"href": format!("{base}/installedBase/{}", done.key)}),
        );
    }
    if device.attributes.is_empty() {
        links.insert(
            "configData".into(),
            json!({"href": format!("{base}/configData")}),
        );
    }
    Ok(hal(json!({
        "config": {"polling": {"sleep": sleep_text(settings.poll_interval_secs)}},
        "_links": links,
    })))
}

fn action_not_found(action: i64) -> ApiError {
    ApiError::not_found(
        "action_not_found",
        format!("no action {action} for this controller"),
    )
}

/// The device's own action `action`.
async fn own_action(state: &AppState, device: &Device, action: i64) -> ApiResult<Action> {
    let found = state
        .store
        .action(device.tenant, updraft_core::ActionKey(action))
        .await?;
    found
        .filter(|a| a.device == device.key)
        .ok_or_else(|| action_not_found(action))
}

#[derive(Deserialize, Default)]
struct DeploymentQuery {
    #[serde(rename = "actionHistory")]
    action_history: Option<i64>,
}

async fn deployment_base(
    State(state): State<AppState>,
    ApiPath((tenant, controller, action)): ApiPath<(String, String, i64)>,
    ApiQuery(query): ApiQuery<DeploymentQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let device = authenticate(&state, &headers, &tenant, &controller).await?;
    let action = own_action(&state, &device, action).await?;
    let body = deployment_json(
        &state,
        &headers,
        &tenant,
        &controller,
        &action,
        query.action_history,
    )
    .await?;
    Ok(hal(body))
}

async fn installed_base(
    State(state): State<AppState>,
    ApiPath((tenant, controller, action)): ApiPath<(String, String, i64)>,
    ApiQuery(query): ApiQuery<DeploymentQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let device = authenticate(&state, &headers, &tenant, &controller).await?;
    let action = own_action(&state, &device, action).await?;
    if action.state != UpdateState::Updated {
        return Err(action_not_found(action.key.0));
    }
    let body = deployment_json(
        &state,
        &headers,
        &tenant,
        &controller,
        &action,
        query.action_history,
    )
    .await?;
    Ok(hal(body))
}

async fn deployment_json(
    state: &AppState,
    headers: &HeaderMap,
    tenant: &str,
    controller: &str,
    action: &Action,
    history: Option<i64>,
) -> ApiResult<Value> {
    let artifact = match action.artifact {
        Some(key) => {
            state
                .store
                .artifact(action_tenant(state, tenant).await?, key)
                .await?
        }
        None => None,
    };
    let artifact = artifact.ok_or_else(|| {
        ApiError::not_found(
            "artifact_not_found",
            "the artifact of this action was deleted",
        )
    })?;
    let base = format!(
        "{}/{tenant}/controller/v1/{controller}",
        base_url(state, headers)
    );
    // `download` uses the scheme the device reached us with: clients such as the `hawkbit` crate
    // prefer it over `download-http`, so an https link on a plain-HTTP server breaks them.
    let file = format!(
        "{base}/softwaremodules/{}/artifacts/{}",
        artifact.key, artifact.filename
    );
    let plain = file.replacen("https://", "http://", 1);
    let part = match artifact.kind {
        updraft_core::ArtifactKind::Firmware => "os",
        updraft_core::ArtifactKind::Software => "bApp",
    };
    let mut body = json!({
        "id": action.key.to_string(),
        "deployment": {
            "download": "forced",
            "update": "forced",
            "chunks": [{
                "part": part,
                "version": artifact.version,
                "name": artifact.title,
                "artifacts": [{
                    "filename": artifact.filename,
                    "hashes": {
                        "sha1": artifact.checksums.sha1,
                        "md5": artifact.checksums.md5,
                        "sha256": artifact.checksums.sha256,
                    },
                    "size": artifact.size,
                    "_links": {
                        "download": {"href": file},
                        "download-http": {"href": plain},
                        "md5sum": {"href": format!("{file}.MD5SUM")},
                        "md5sum-http": {"href": format!("{plain}.MD5SUM")},
                    },
                }],
            }],
        },
    });
    if let Some(count) = history {
        let events = state
            .store
            .action_history(artifact.tenant, action.key)
            .await?;
        let take = if count < 0 {
            events.len()
        } else {
            usize::try_from(count).unwrap_or(0).min(events.len())
        };
        let messages: Vec<String> = events[events.len() - take..]
            .iter()
            .map(|e| format!("{} {}: {}", e.at, e.to, e.detail))
            .collect();
        let status = if action.state.is_final() {
            "FINISHED"
        } else {
            "RUNNING"
        };
        body["actionHistory"] = json!({"status": status, "messages": messages});
    }
    Ok(body)
}

async fn action_tenant(state: &AppState, tenant: &str) -> ApiResult<updraft_core::TenantKey> {
    let found = state.store.tenant_by_name(tenant).await?;
    found.map(|t| t.key).ok_or_else(unauthorized)
}

/// The body of a feedback POST. Clients differ: `id` may be a number or a string, `time` and
/// `details` may be absent.
#[derive(Deserialize)]
struct FeedbackIn {
    status: FeedbackStatus,
}

#[derive(Deserialize)]
struct FeedbackStatus {
    execution: String,
    result: Option<FeedbackResult>,
    #[serde(default)]
    details: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct FeedbackResult {
    finished: Option<String>,
    progress: Option<FeedbackProgress>,
}

#[derive(Deserialize)]
struct FeedbackProgress {
    cnt: Option<u64>,
    of: Option<u64>,
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("the feedback is not valid: {e}"))
    })
}

/// The failure code that a device's failure text points to.
pub fn failure_code(details: &str) -> FailureCode {
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

/// What a DDI feedback says, as a report on an action currently in `current`.
pub fn report_of(
    execution: &str,
    finished: Option<&str>,
    progress: Option<Progress>,
    details: &[String],
    current: UpdateState,
) -> ApiResult<Report> {
    let text = details.join("; ");
    let failed = |default: &str| {
        let reason = if text.is_empty() {
            default.to_owned()
        } else {
            text.clone()
        };
        Report::Failed(Failure {
            code: failure_code(&reason),
            reason,
        })
    };
    let at_least = |state: UpdateState| Report::Reached {
        state: state.max(current).min(UpdateState::Updating),
        progress,
    };
    let first = details
        .first()
        .map(|d| d.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let named_state = if first.starts_with("verified") {
        Some(UpdateState::Verified)
    } else if first.starts_with("installing") || first.starts_with("updating") {
        Some(UpdateState::Updating)
    } else {
        None
    };
    let finished = finished.unwrap_or("none").to_ascii_lowercase();
    if finished == "failure" && execution != "canceled" {
        return Ok(failed("the device reported a failure"));
    }
    Ok(match execution.to_ascii_lowercase().as_str() {
        "closed" => match finished.as_str() {
            "success" => Report::Succeeded,
            _ => failed("the device closed the action without success"),
        },
        "canceled" => Report::Canceled,
        "rejected" => Report::Failed(Failure {
            code: FailureCode::UnsupportedPackage,
            reason: if text.is_empty() {
                "rejected by the device".to_owned()
            } else {
                format!("rejected: {text}")
            },
        }),
        "download" => at_least(UpdateState::Downloading),
        "downloaded" => at_least(UpdateState::Downloaded),
        "scheduled" => at_least(named_state.unwrap_or(UpdateState::Initiated)),
        "proceeding" | "resumed" => at_least(named_state.unwrap_or(UpdateState::Downloading)),
        other => {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!(
                    "unknown execution {other:?}: use closed, proceeding, canceled, scheduled, rejected, resumed, downloaded or download"
                ),
            ));
        }
    })
}

async fn feedback(
    State(state): State<AppState>,
    ApiPath((tenant, controller, action)): ApiPath<(String, String, i64)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let device = authenticate(&state, &headers, &tenant, &controller).await?;
    let action = own_action(&state, &device, action).await?;
    let body: FeedbackIn = parse_json(&body)?;
    let result = body.status.result.as_ref();
    let progress = result
        .and_then(|r| r.progress.as_ref())
        .and_then(|p| match (p.cnt, p.of) {
            (Some(done), Some(total)) => Some(Progress { done, total }),
            (Some(done), None) => Some(Progress { done, total: 0 }),
            _ => None,
        });
    let finished = result.and_then(|r| r.finished.as_deref());
    let details = body.status.details.unwrap_or_default();
    let report = report_of(
        &body.status.execution,
        finished,
        progress,
        &details,
        action.state,
    )?;
    match state
        .store
        .report(device.tenant, action.key, &report, "ddi")
        .await?
    {
        ReportOutcome::Applied(_) => Ok(StatusCode::OK),
        ReportOutcome::Refused { action, reason } if action.state.is_final() => Err(ApiError::new(
            StatusCode::GONE,
            "action_closed",
            format!(
                "action {} is {} already: {reason}",
                action.key, action.state
            ),
        )),
        // A step backwards is recorded and otherwise ignored, as hawkBit ignores stale feedback.
        ReportOutcome::Refused { .. } => Ok(StatusCode::OK),
    }
}

async fn cancel_action(
    State(state): State<AppState>,
    ApiPath((tenant, controller, action)): ApiPath<(String, String, i64)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let device = authenticate(&state, &headers, &tenant, &controller).await?;
    let pending = state.store.pending_cancel(device.key).await?;
    match pending {
        Some(cancel) if cancel.key.0 == action => {
            let id = cancel.key.to_string();
            Ok(hal(json!({"id": id, "cancelAction": {"stopId": id}})))
        }
        _ => Err(action_not_found(action)),
    }
}

async fn cancel_feedback(
    State(state): State<AppState>,
    ApiPath((tenant, controller, action)): ApiPath<(String, String, i64)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let device = authenticate(&state, &headers, &tenant, &controller).await?;
    let action = own_action(&state, &device, action).await?;
    let body: FeedbackIn = parse_json(&body)?;
    let execution = body.status.execution.to_ascii_lowercase();
    let finished = body
        .status
        .result
        .and_then(|r| r.finished)
        .unwrap_or_default()
        .to_ascii_lowercase();
    let answer = match (execution.as_str(), finished.as_str()) {
        ("closed", "success") | ("canceled", _) => Some(true),
        ("rejected", _) | ("closed", "failure") => Some(false),
        _ => None,
    };
    if let Some(accepted) = answer {
        state
            .store
            .acknowledge_cancel(device.tenant, action.key, accepted, "ddi")
            .await?;
    }
    Ok(StatusCode::OK)
}

#[derive(Deserialize)]
struct ConfigDataIn {
    mode: Option<String>,
    #[serde(default)]
    data: serde_json::Map<String, Value>,
}

async fn config_data(
    State(state): State<AppState>,
    ApiPath((tenant, controller)): ApiPath<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let device = authenticate(&state, &headers, &tenant, &controller).await?;
    let body: ConfigDataIn = parse_json(&body)?;
    let mode = match body.mode.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("merge") => AttributeMode::Merge,
        Some("replace") => AttributeMode::Replace,
        Some("remove") => AttributeMode::Remove,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!("unknown mode {other:?}: use merge, replace or remove"),
            ));
        }
    };
    let data = crate::api::wire::attribute_strings(body.data);
    state
        .store
        .update_attributes(device.key, mode, &data)
        .await?;
    Ok(StatusCode::OK)
}

async fn download(
    State(state): State<AppState>,
    ApiPath((tenant, controller, module, filename)): ApiPath<(String, String, i64, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let device = authenticate(&state, &headers, &tenant, &controller).await?;
    let not_found = || {
        ApiError::not_found(
            "artifact_not_found",
            format!("no artifact {filename:?} in module {module}"),
        )
    };
    // Only artifacts this device was sent: one device's token opens no other firmware.
    let actions = state
        .store
        .actions_for_device(device.tenant, &device.id)
        .await?;
    if !actions
        .iter()
        .any(|a| a.artifact == Some(ArtifactKey(module)))
    {
        return Err(not_found());
    }
    let artifact: Artifact = state
        .store
        .artifact(device.tenant, ArtifactKey(module))
        .await?
        .ok_or_else(not_found)?;
    if filename == format!("{}.MD5SUM", artifact.filename) {
        let body = format!("{}  {}\n", artifact.checksums.md5, artifact.filename);
        let mut response = body.into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        return Ok(response);
    }
    if filename != artifact.filename {
        return Err(not_found());
    }
    let blob = BlobResponse {
        sha256: &artifact.checksums.sha256,
        size: artifact.size,
        filename: &artifact.filename,
        content_type: "application/octet-stream",
        modified_at: artifact.created_at,
    };
    serve_blob(&state, blob, &headers).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use UpdateState::*;

    fn check(
        execution: &str,
        finished: Option<&str>,
        details: &[&str],
        current: UpdateState,
        expected: Report,
    ) {
        let details: Vec<String> = details.iter().map(|d| d.to_string()).collect();
        let got = report_of(execution, finished, None, &details, current)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            got, expected,
            "{execution}/{finished:?} {details:?} at {current}"
        );
    }

    fn reached(state: UpdateState) -> Report {
        Report::Reached {
            state,
            progress: None,
        }
    }

    #[test]
    fn feedback_maps_onto_the_shared_states() {
        check("closed", Some("success"), &[], Initiated, Report::Succeeded);
        check(
            "proceeding",
            Some("none"),
            &["Downloading 40%"],
            Initiated,
            reached(Downloading),
        );
        check("proceeding", None, &[], Verified, reached(Verified));
        check(
            "download",
            Some("none"),
            &[],
            Initiated,
            reached(Downloading),
        );
        check(
            "downloaded",
            Some("none"),
            &[],
            Downloading,
            reached(Downloaded),
        );
        check(
            "proceeding",
            Some("none"),
            &["Verified sha256"],
            Downloaded,
            reached(Verified),
        );
        check(
            "proceeding",
            Some("none"),
            &["Installing: /dev/mmcblk0p2"],
            Verified,
            reached(Updating),
        );
        check("scheduled", Some("none"), &[], Queued, reached(Initiated));
        check(
            "resumed",
            Some("none"),
            &[],
            Initiated,
            reached(Downloading),
        );
        check(
            "canceled",
            Some("success"),
            &[],
            Downloading,
            Report::Canceled,
        );
        let integrity = Report::Failed(Failure {
            code: FailureCode::IntegrityCheckFailed,
            reason: "sha256 mismatch".into(),
        });
        check(
            "closed",
            Some("failure"),
            &["sha256 mismatch"],
            Downloading,
            integrity,
        );
        let generic = Report::Failed(Failure {
            code: FailureCode::UpdateFailed,
            reason: "the device reported a failure".into(),
        });
        check("proceeding", Some("failure"), &[], Downloading, generic);
        let rejected = Report::Failed(Failure {
            code: FailureCode::UnsupportedPackage,
            reason: "rejected: wrong board".into(),
        });
        check(
            "rejected",
            Some("none"),
            &["wrong board"],
            Initiated,
            rejected,
        );
        assert!(report_of("exploded", None, None, &[], Initiated).is_err());
    }

    #[test]
    fn failure_texts_map_to_codes() {
        for (text, code) in [
            (
                "integrity check failed: sha256 differs",
                FailureCode::IntegrityCheckFailed,
            ),
            (
                "Signature verification failed",
                FailureCode::IntegrityCheckFailed,
            ),
            ("No space left on device", FailureCode::NotEnoughStorage),
            ("out of memory", FailureCode::OutOfMemory),
            ("connection reset by peer", FailureCode::ConnectionLost),
            (
                "rolled back after 3 failed boots",
                FailureCode::UpdateFailed,
            ),
        ] {
            assert_eq!(failure_code(text), code, "{text}");
        }
    }

    #[test]
    fn sleep_is_hours_minutes_seconds() {
        assert_eq!(sleep_text(300), "00:05:00");
        assert_eq!(sleep_text(3661), "01:01:01");
        assert_eq!(sleep_text(5), "00:00:05");
    }
}
