//! What a device tells: deployment feedback mapped onto the shared reports, cancel feedback, and
//! `configData` attributes.

use super::*;

/// The body of a feedback POST. Clients differ: `id` may be a number or a string, `time` and
/// `details` may be absent.
#[derive(Deserialize)]
pub(super) struct FeedbackIn {
    status: FeedbackStatus,
}

#[derive(Deserialize)]
pub(super) struct FeedbackStatus {
    execution: String,
    result: Option<FeedbackResult>,
    #[serde(default)]
    details: Option<Vec<String>>,
}

#[derive(Deserialize)]
pub(super) struct FeedbackResult {
    finished: Option<String>,
    progress: Option<FeedbackProgress>,
}

#[derive(Deserialize)]
pub(super) struct FeedbackProgress {
    cnt: Option<u64>,
    of: Option<u64>,
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("the feedback is not valid: {e}"))
    })
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
            code: FailureCode::from_text(&reason),
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

/// A feedback body, decoded into the report it makes on an action in state `current`.
pub fn decode_feedback(body: &[u8], current: UpdateState) -> ApiResult<Report> {
    let body: FeedbackIn = parse_json(body)?;
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
    report_of(
        &body.status.execution,
        finished,
        progress,
        &details,
        current,
    )
}

pub(super) async fn feedback(
    State(state): State<AppState>,
    ApiPath((tenant, controller, action)): ApiPath<(String, String, i64)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let device = authenticate(&state, &headers, &tenant, &controller).await?;
    let action = own_action(&state, &device, action).await?;
    let report = decode_feedback(&body, action.state)?;
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

pub(super) async fn cancel_action(
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

pub(super) async fn cancel_feedback(
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
pub(super) struct ConfigDataIn {
    mode: Option<String>,
    #[serde(default)]
    data: serde_json::Map<String, Value>,
}

/// A configData body: how to apply it, and the attributes as strings.
pub fn decode_config_data(
    body: &[u8],
) -> ApiResult<(AttributeMode, std::collections::BTreeMap<String, String>)> {
    let body: ConfigDataIn = parse_json(body)?;
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
    Ok((mode, crate::kernel::views::attribute_strings(body.data)))
}

pub(super) async fn config_data(
    State(state): State<AppState>,
    ApiPath((tenant, controller)): ApiPath<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let device = authenticate(&state, &headers, &tenant, &controller).await?;
    let (mode, data) = decode_config_data(&body)?;
    state
        .store
        .update_attributes(device.key, mode, &data)
        .await?;
    Ok(StatusCode::OK)
}
