//! The Jobs API on `$aws/things/{thing}/jobs/…`: get, start-next, describe and update, with AWS's
//! refusals, and how execution statuses drive the shared update state machine.

use super::executions::*;
use super::*;

/// A request body: JSON object (an empty payload is an empty request).
pub fn request_body(payload: &[u8]) -> Result<Map<String, Value>, &'static str> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("InvalidRequest"),
        Err(_) => Err("InvalidJson"),
    }
}

pub(super) async fn jobs_request(
    state: &AppState,
    device: &Device,
    topic: &str,
    jobs: &str,
    payload: &[u8],
) -> Result<Vec<Outbound>, ApiError> {
    let body = match request_body(payload) {
        Ok(body) => body,
        Err(code) => {
            return Ok(vec![rejected(
                topic,
                code,
                "the payload is not a JSON object",
                None,
                None,
            )]);
        }
    };
    let token = match body.get("clientToken") {
        None | Some(Value::Null) => None,
        Some(Value::String(token)) if token.len() <= 64 => Some(token.clone()),
        Some(_) => {
            return Ok(vec![rejected(
                topic,
                "InvalidRequest",
                "clientToken is a string of at most 64 characters",
                None,
                None,
            )]);
        }
    };
    let token = token.as_deref();
    let accepted = |mut value: Value| {
        value["timestamp"] = json!(now_secs());
        if let Some(token) = token {
            value["clientToken"] = json!(token);
        }
        publish(format!("{topic}/accepted"), value)
    };
    match jobs {
        "get" => {
            let pending = pending(state, device).await?;
            let (mut in_progress, mut queued) = (vec![], vec![]);
            if let Some(execution) = &pending {
                handed_out(state, device, execution).await?;
                match execution.status() {
                    "IN_PROGRESS" => in_progress.push(execution.summary()),
                    _ => queued.push(execution.summary()),
                }
            }
            Ok(vec![accepted(
                json!({"inProgressJobs": in_progress, "queuedJobs": queued}),
            )])
        }
        "start-next" => {
            let details = match status_details(&body) {
                Ok(details) => details,
                Err(message) => {
                    return Ok(vec![rejected(
                        topic,
                        "InvalidRequest",
                        message,
                        token,
                        None,
                    )]);
                }
            };
            let timeout = match step_timeout(&body) {
                Ok(timeout) => timeout,
                Err(message) => {
                    return Ok(vec![rejected(
                        topic,
                        "InvalidRequest",
                        message,
                        token,
                        None,
                    )]);
                }
            };
            let Some(mut execution) = pending(state, device).await? else {
                return Ok(vec![accepted(json!({}))]);
            };
            handed_out(state, device, &execution).await?;
            if execution.status() == "QUEUED" {
                let now = crate::kernel::clock::now_millis();
                let mut next = execution.row.clone();
                next.status = "IN_PROGRESS".into();
                if let Some(details) = details {
                    next.status_details = details;
                }
                next.version_number += 1;
                next.started_at = Some(now);
                next.last_updated_at = now;
                next.step_deadline = timeout.map(|minutes| now + minutes * 60_000);
                if !save(state, &execution, &next).await? {
                    return Ok(vec![rejected(
                        topic,
                        "VersionMismatch",
                        "the execution changed meanwhile",
                        token,
                        Some(execution.state()),
                    )]);
                }
                execution.row = next;
                execution.stored = true;
            }
            Ok(vec![accepted(
                json!({"execution": execution.full(state, device, true)}),
            )])
        }
        _ => {
            let Some((job_id, verb)) = jobs.rsplit_once('/') else {
                return Ok(vec![rejected(
                    topic,
                    "InvalidTopic",
                    "unknown jobs topic",
                    token,
                    None,
                )]);
            };
            match verb {
                "get" => {
                    let include = body
                        .get("includeJobDocument")
                        .and_then(Value::as_bool)
                        .unwrap_or(true);
                    match by_job_id(state, device, job_id).await? {
                        Some(execution) => {
                            if !execution.terminal() {
                                handed_out(state, device, &execution).await?;
                            }
                            Ok(vec![accepted(
                                json!({"execution": execution.full(state, device, include)}),
                            )])
                        }
                        // `$next` with nothing pending: no execution.
                        None if job_id == "$next" => Ok(vec![accepted(json!({}))]),
                        None => Ok(vec![rejected(
                            topic,
                            "ResourceNotFound",
                            format!("no job {job_id:?} for this thing"),
                            token,
                            None,
                        )]),
                    }
                }
                "update" if job_id != "$next" => {
                    update(state, device, topic, job_id, &body, token).await
                }
                _ => Ok(vec![rejected(
                    topic,
                    "InvalidTopic",
                    "unknown jobs topic",
                    token,
                    None,
                )]),
            }
        }
    }
}

/// `statusDetails`: `None` when absent; a JSON object of at most 10 strings with AWS's key and
/// value limits, as text to store verbatim.
pub fn status_details(body: &Map<String, Value>) -> Result<Option<String>, String> {
    let details = match body.get("statusDetails") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(details)) => details,
        Some(_) => return Err("statusDetails is an object of strings".into()),
    };
    if details.len() > 10 {
        return Err("statusDetails holds at most 10 entries".into());
    }
    for (key, value) in details {
        let key_ok = (1..=128).contains(&key.len())
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-'));
        if !key_ok {
            return Err(format!(
                "statusDetails key {key:?} is not [a-zA-Z0-9:_-]{{1,128}}"
            ));
        }
        match value {
            Value::String(text) if text.chars().count() <= 1024 => {}
            _ => {
                return Err(format!(
                    "statusDetails value of {key:?} is not a string of at most 1024 characters"
                ));
            }
        }
    }
    Ok(Some(Value::Object(details.clone()).to_string()))
}

pub fn step_timeout(body: &Map<String, Value>) -> Result<Option<i64>, String> {
    match body.get("stepTimeoutInMinutes") {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_i64()
            .filter(|m| (1..=10_080).contains(m))
            .map(Some)
            .ok_or_else(|| "stepTimeoutInMinutes is a number of minutes from 1 to 10080".into()),
    }
}

/// `expectedVersion` as a number or a numeric string (the coreOTA demo sends `"2"`).
pub fn expected_version(body: &Map<String, Value>) -> Result<Option<i64>, String> {
    match body.get("expectedVersion") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| "expectedVersion is a whole number".into()),
        Some(Value::String(text)) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| "expectedVersion is a whole number".into()),
        Some(_) => Err("expectedVersion is a whole number".into()),
    }
}

pub(super) async fn update(
    state: &AppState,
    device: &Device,
    topic: &str,
    job_id: &str,
    body: &Map<String, Value>,
    token: Option<&str>,
) -> Result<Vec<Outbound>, ApiError> {
    let invalid = |message: String| {
        Ok(vec![rejected(
            topic,
            "InvalidRequest",
            message,
            token,
            None,
        )])
    };
    let status = match body.get("status").and_then(Value::as_str) {
        Some(status @ ("IN_PROGRESS" | "SUCCEEDED" | "FAILED" | "REJECTED")) => status,
        Some(other) => return invalid(format!("a device may not set status {other:?}")),
        None => return invalid("status is required".into()),
    };
    let details = match status_details(body) {
        Ok(details) => details,
        Err(message) => return invalid(message),
    };
    let expected = match expected_version(body) {
        Ok(expected) => expected,
        Err(message) => return invalid(message),
    };
    let timeout = match step_timeout(body) {
        Ok(timeout) => timeout,
        Err(message) => return invalid(message),
    };
    if body
        .get("executionNumber")
        .and_then(Value::as_i64)
        .is_some_and(|n| n != 1)
    {
        return Ok(vec![rejected(
            topic,
            "ResourceNotFound",
            "no such execution number",
            token,
            None,
        )]);
    }
    let Some(mut execution) = by_job_id(state, device, job_id).await? else {
        return Ok(vec![rejected(
            topic,
            "ResourceNotFound",
            format!("no job {job_id:?} for this thing"),
            token,
            None,
        )]);
    };
    if expected.is_some_and(|v| v != execution.row.version_number) {
        return Ok(vec![rejected(
            topic,
            "VersionMismatch",
            format!(
                "the execution is at version {}",
                execution.row.version_number
            ),
            token,
            Some(execution.state()),
        )]);
    }
    let legal = match execution.status() {
        "QUEUED" => true,
        "IN_PROGRESS" => status != "REJECTED",
        _ => false,
    };
    if !legal {
        return Ok(vec![rejected(
            topic,
            "InvalidStateTransition",
            format!("an execution {} cannot become {status}", execution.status()),
            token,
            Some(execution.state()),
        )]);
    }
    let now = crate::kernel::clock::now_millis();
    let mut next = execution.row.clone();
    next.status = status.to_owned();
    if let Some(details) = details {
        next.status_details = details;
    }
    next.version_number += 1;
    next.last_updated_at = now;
    if next.started_at.is_none() && status == "IN_PROGRESS" {
        next.started_at = Some(now);
    }
    next.step_deadline = match (status, timeout) {
        ("IN_PROGRESS", Some(minutes)) => Some(now + minutes * 60_000),
        ("IN_PROGRESS", None) => next.step_deadline,
        _ => None,
    };
    if !save(state, &execution, &next).await? {
        return Ok(vec![rejected(
            topic,
            "VersionMismatch",
            "the execution changed meanwhile",
            token,
            Some(execution.state()),
        )]);
    }
    execution.row = next;
    execution.stored = true;
    apply(state, device, &execution).await?;

    let mut reply = json!({"timestamp": now_secs()});
    if let Some(token) = token {
        reply["clientToken"] = json!(token);
    }
    if body
        .get("includeJobExecutionState")
        .and_then(Value::as_bool)
        == Some(true)
    {
        reply["executionState"] = execution.state();
    }
    if body.get("includeJobDocument").and_then(Value::as_bool) == Some(true)
        && let Some(artifact) = &execution.artifact
    {
        reply["jobDocument"] =
            job_document(state, execution.action.key, artifact, &execution.options);
    }
    let mut out = vec![publish(format!("{topic}/accepted"), reply)];
    if execution.terminal() {
        // The pending list and its first execution changed: tell the device what comes next.
        let mut next = json!({"timestamp": now_secs()});
        let mut jobs = json!({});
        if let Some(pending) = pending(state, device).await? {
            next["execution"] = pending.full(state, device, true);
            jobs[pending.status()] = json!([pending.summary()]);
        }
        out.push(publish(
            format!("$aws/things/{}/jobs/notify", device.id),
            json!({"timestamp": now_secs(), "jobs": jobs}),
        ));
        out.push(publish(
            format!("$aws/things/{}/jobs/notify-next", device.id),
            next,
        ));
    }
    Ok(out)
}

/// `k/N` in a progress detail.
pub fn fraction(text: &str) -> Option<Progress> {
    let (done, total) = text.trim().split_once('/')?;
    Some(Progress {
        done: done.trim().parse().ok()?,
        total: total.trim().parse().ok()?,
    })
}

/// Moves the action along the shared state machine as the execution says (see the reference's
/// "Updraft states").
pub(super) async fn apply(
    state: &AppState,
    device: &Device,
    execution: &Execution,
) -> Result<(), ApiError> {
    let details = execution.details();
    let detail = |key: &str| details.get(key).and_then(Value::as_str);
    let mut reports = Vec::new();
    match execution.status() {
        "SUCCEEDED" => reports.push(Report::Succeeded),
        "FAILED" | "REJECTED" => {
            let reason = if details.as_object().is_some_and(|d| !d.is_empty()) {
                format!("{}: {details}", execution.status())
            } else {
                execution.status().to_owned()
            };
            let code = match detail("self_test") {
                Some("rejected") => FailureCode::IntegrityCheckFailed,
                _ => FailureCode::UpdateFailed,
            };
            reports.push(Report::Failed(Failure { code, reason }));
        }
        "IN_PROGRESS" => {
            let progress = detail("progress").or(detail("receive")).and_then(fraction);
            let reached = match detail("self_test") {
                Some("active") => UpdateState::Updating,
                Some("ready") => UpdateState::Verified,
                _ => match progress {
                    Some(p) if p.total > 0 && p.done >= p.total => UpdateState::Downloaded,
                    Some(_) => UpdateState::Downloading,
                    None if detail("self_test") == Some("receiving") => UpdateState::Downloading,
                    None => UpdateState::Initiated,
                },
            };
            let current = execution.action.state;
            // A repeated report of an earlier state is not news.
            if reached < current || (reached == current && reached != UpdateState::Downloading) {
                return Ok(());
            }
            // A device that checked the whole file has it: record that it was downloaded
            // (rustot reports progress every 24 blocks, never the last count).
            if reached > UpdateState::Downloaded && current < UpdateState::Downloaded {
                reports.push(Report::Reached {
                    state: UpdateState::Downloaded,
                    progress: None,
                });
            }
            reports.push(Report::Reached {
                state: reached,
                progress,
            });
        }
        _ => {}
    }
    for report in &reports {
        state
            .store
            .report(device.tenant, execution.action.key, report, SOURCE)
            .await?;
    }
    Ok(())
}
