//! AWS IoT Jobs and MQTT file streams on the built-in MQTT endpoint, for FreeRTOS OTA, coreOTA
//! and rustot devices: every update action of a device is a job execution
//! (`$aws/things/{thing}/jobs/…`) whose document (`afr_ota`) names a stream
//! (`$aws/things/{thing}/streams/{stream}/…`) that serves the artifact in blocks read from the blob
//! store by range. The device's status updates drive the shared state machine.

use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::io::AsyncReadExt;
use updraft_core::{ActionKey, ArtifactKind, Failure, FailureCode, Progress, Report, UpdateState};
use updraft_store::{Action, Artifact, Device, JobExecution};
use updraft_wire::aws::{self as streams, Format, StreamError};

use crate::error::ApiError;
use crate::mqtt::codec::Outbound;
use crate::state::AppState;

/// The source recorded in history for reports over this protocol.
pub const SOURCE: &str = "aws";
/// Job ids are this prefix and the action's key.
const JOB_PREFIX: &str = "updraft-";
/// Stream ids are this prefix and the artifact's key.
const STREAM_PREFIX: &str = "artifact-";
/// The verification certificate a device is told to use when the profile names none.
pub const DEFAULT_CERTFILE: &str = "code-sign.crt";

fn now_secs() -> i64 {
    crate::server::now_millis() / 1000
}

fn publish(topic: String, payload: Value) -> Outbound {
    Outbound::Publish {
        topic,
        payload: Bytes::from(payload.to_string()),
    }
}

/// A refusal on `{topic}/rejected`.
fn rejected(
    topic: &str,
    code: &str,
    message: impl Into<String>,
    client_token: Option<&str>,
    execution_state: Option<Value>,
) -> Outbound {
    let mut body = json!({"code": code, "message": message.into(), "timestamp": now_secs()});
    if let Some(token) = client_token {
        body["clientToken"] = json!(token);
    }
    if let Some(state) = execution_state {
        body["executionState"] = state;
    }
    publish(format!("{topic}/rejected"), body)
}

/// The thing a topic under `$aws/things/` names, and the rest of the topic.
pub fn thing_of(topic: &str) -> Option<(&str, &str)> {
    let rest = topic.strip_prefix("$aws/things/")?;
    Some(rest.split_once('/').unwrap_or((rest, "")))
}

/// Answers a device's publish under `$aws/things/{its id}/`; `rest` is what follows.
pub async fn handle(
    state: &AppState,
    device: &Device,
    rest: &str,
    payload: &[u8],
) -> Vec<Outbound> {
    let topic = format!("$aws/things/{}/{rest}", device.id);
    let answer = if let Some(jobs) = rest.strip_prefix("jobs/") {
        jobs_request(state, device, &topic, jobs, payload).await
    } else if let Some(stream) = rest.strip_prefix("streams/") {
        stream_request(state, device, &topic, stream, payload).await
    } else {
        Err(ApiError::bad_request("invalid_topic", "unknown topic"))
    };
    match answer {
        Ok(packets) => packets,
        Err(err) => {
            tracing::warn!(device = %device.id, topic, error = %err.message, "aws request failed");
            let token = json_token(payload);
            vec![rejected(
                &topic,
                "InternalError",
                err.message,
                token.as_deref(),
                None,
            )]
        }
    }
}

fn json_token(payload: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(payload)
        .ok()?
        .get("clientToken")?
        .as_str()
        .map(str::to_owned)
}

// ---------------------------------------------------------------------------------------------
// Job executions.

/// An action seen as a job execution.
struct Execution {
    action: Action,
    artifact: Option<Artifact>,
    /// How the device's profile wants its job documents.
    options: DocumentOptions,
    row: JobExecution,
    /// Whether `row` is stored yet.
    stored: bool,
}

impl Execution {
    fn job_id(&self) -> String {
        format!("{JOB_PREFIX}{}", self.action.key.0)
    }

    /// AWS's status: the stored one while the action is open, else what the action ended as.
    fn status(&self) -> &str {
        match self.action.state {
            UpdateState::Updated => "SUCCEEDED",
            UpdateState::Canceled => "CANCELED",
            UpdateState::Failed => match self.row.status.as_str() {
                status @ ("FAILED" | "REJECTED" | "TIMED_OUT") => status,
                _ => "FAILED",
            },
            _ => self.row.status.as_str(),
        }
    }

    fn terminal(&self) -> bool {
        !matches!(self.status(), "QUEUED" | "IN_PROGRESS")
    }

    fn details(&self) -> Value {
        serde_json::from_str(&self.row.status_details).unwrap_or_else(|_| json!({}))
    }

    fn summary(&self) -> Value {
        let mut summary = json!({
            "jobId": self.job_id(),
            "queuedAt": self.action.created_at / 1000,
            "lastUpdatedAt": self.row.last_updated_at / 1000,
            "versionNumber": self.row.version_number,
            "executionNumber": 1,
        });
        if let Some(started) = self.row.started_at {
            summary["startedAt"] = json!(started / 1000);
        }
        summary
    }

    fn state(&self) -> Value {
        json!({
            "status": self.status(),
            "statusDetails": self.details(),
            "versionNumber": self.row.version_number,
        })
    }

    fn full(&self, state: &AppState, device: &Device, include_document: bool) -> Value {
        let mut execution = self.summary();
        execution["thingName"] = json!(device.id.as_str());
        execution["status"] = json!(self.status());
        execution["statusDetails"] = self.details();
        if include_document && let Some(artifact) = &self.artifact {
            execution["jobDocument"] =
                job_document(state, self.action.key, artifact, &self.options);
        }
        execution
    }
}

/// What a device's profile says about its job documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentOptions {
    /// The name of the verification certificate on the device.
    pub certfile: String,
    /// Offer the file over HTTP too (a one-time URL).
    pub http: bool,
}

impl Default for DocumentOptions {
    fn default() -> Self {
        Self {
            certfile: DEFAULT_CERTFILE.to_owned(),
            http: false,
        }
    }
}

impl DocumentOptions {
    pub fn of(profile: &updraft_store::Profile) -> Self {
        Self {
            certfile: profile
                .signing_cert
                .as_ref()
                .map_or_else(|| DEFAULT_CERTFILE.to_owned(), |c| c.name.clone()),
            http: profile.settings.aws_http_delivery,
        }
    }
}

/// The OTA job document of an artifact: one file in one MQTT stream (and, when the profile says
/// so, at a one-time HTTP URL), with its code signature.
pub fn job_document(
    state: &AppState,
    action: ActionKey,
    artifact: &Artifact,
    options: &DocumentOptions,
) -> Value {
    let file_type = match artifact.kind {
        ArtifactKind::Firmware => 0,
        ArtifactKind::Software => 1,
    };
    let mut file = json!({
        "filepath": artifact.filename,
        "filesize": artifact.size,
        "fileid": 0,
        "certfile": options.certfile,
        "fileType": file_type,
        "sig-sha256-ecdsa": artifact.signature.clone().unwrap_or_default(),
    });
    let mut protocols = vec!["MQTT"];
    if options.http {
        match state.grants.issue(action, artifact) {
            Ok(token) => {
                protocols.push("HTTP");
                file["update_data_url"] = json!(format!("{}/dl/{token}", state.config.public_url));
                // FreeRTOS OTA's name for a URL that carries its own authorization.
                file["auth_scheme"] = json!("aws.s3.presigned");
            }
            Err(err) => tracing::warn!(error = %err.message, "no download URL for a job"),
        }
    }
    json!({"afr_ota": {
        "protocols": protocols,
        "streamname": format!("{STREAM_PREFIX}{}", artifact.key.0),
        "files": [file],
    }})
}

/// The device's profile's wishes for its job documents.
async fn document_options(state: &AppState, device: &Device) -> Result<DocumentOptions, ApiError> {
    let Some((_, name)) = &device.profile else {
        return Ok(DocumentOptions::default());
    };
    Ok(state
        .store
        .profile_by_name(device.tenant, name)
        .await?
        .map(|p| DocumentOptions::of(&p))
        .unwrap_or_default())
}

async fn execution(
    state: &AppState,
    device: &Device,
    action: Action,
) -> Result<Execution, ApiError> {
    let artifact = match action.artifact {
        Some(key) => state.store.artifact(device.tenant, key).await?,
        None => None,
    };
    let (row, stored) = match state.store.job_execution(action.key).await? {
        Some(row) => (row, true),
        None => {
            // Progress made through another protocol counts as started.
            let status = match action.state {
                UpdateState::Queued | UpdateState::Initiated => "QUEUED",
                _ => "IN_PROGRESS",
            };
            let row = JobExecution {
                action: action.key,
                status: status.to_owned(),
                status_details: "{}".to_owned(),
                version_number: 1,
                started_at: None,
                last_updated_at: action.created_at,
                step_deadline: None,
            };
            (row, false)
        }
    };
    let execution = Execution {
        action,
        artifact,
        options: document_options(state, device).await?,
        row,
        stored,
    };
    // A step that ran out of time ends TIMED_OUT when next looked at.
    if execution.row.status == "IN_PROGRESS"
        && !execution.action.state.is_final()
        && execution
            .row
            .step_deadline
            .is_some_and(|deadline| deadline <= crate::server::now_millis())
    {
        let mut next = execution.row.clone();
        next.status = "TIMED_OUT".into();
        next.last_updated_at = crate::server::now_millis();
        if save(state, &execution, &next).await? {
            let failure = Failure {
                code: FailureCode::UpdateFailed,
                reason: "timed out: no status update within stepTimeoutInMinutes".into(),
            };
            state
                .store
                .report(
                    device.tenant,
                    execution.action.key,
                    &Report::Failed(failure),
                    SOURCE,
                )
                .await?;
            return Box::pin(reload(state, device, execution.action.key)).await;
        }
    }
    Ok(execution)
}

async fn reload(state: &AppState, device: &Device, key: ActionKey) -> Result<Execution, ApiError> {
    let action = state
        .store
        .action(device.tenant, key)
        .await?
        .ok_or_else(|| ApiError::internal("the action vanished"))?;
    execution(state, device, action).await
}

async fn save(
    state: &AppState,
    current: &Execution,
    next: &JobExecution,
) -> Result<bool, ApiError> {
    let expected = current.stored.then_some(current.row.version_number);
    Ok(state.store.save_job_execution(next, expected).await?)
}

/// The device's pending executions (at most one: one active update per device).
async fn pending(state: &AppState, device: &Device) -> Result<Option<Execution>, ApiError> {
    let Some(status) = state.store.device_status(device.tenant, &device.id).await? else {
        return Ok(None);
    };
    let Some(action) = status.active.filter(|a| !a.state.is_final()) else {
        return Ok(None);
    };
    let execution = execution(state, device, action).await?;
    if execution.terminal() {
        return Ok(None);
    }
    // No job for an unsigned artifact: OTA clients refuse (or crash on) a document without one.
    if execution
        .artifact
        .as_ref()
        .is_some_and(|a| a.signature.as_deref().is_none_or(str::is_empty))
    {
        let failure = Failure {
            code: FailureCode::UnsupportedPackage,
            reason: "the artifact has no code signature, which AWS IoT OTA devices require".into(),
        };
        state
            .store
            .report(
                device.tenant,
                execution.action.key,
                &Report::Failed(failure),
                SOURCE,
            )
            .await?;
        return Ok(None);
    }
    Ok(Some(execution))
}

/// The device has been handed its job: QUEUED → INITIATED.
async fn handed_out(
    state: &AppState,
    device: &Device,
    execution: &Execution,
) -> Result<(), ApiError> {
    if execution.action.state == UpdateState::Queued {
        let report = Report::Reached {
            state: UpdateState::Initiated,
            progress: None,
        };
        state
            .store
            .report(device.tenant, execution.action.key, &report, SOURCE)
            .await?;
    }
    Ok(())
}

/// The execution a job id names, if it is one of the device's.
async fn by_job_id(
    state: &AppState,
    device: &Device,
    job_id: &str,
) -> Result<Option<Execution>, ApiError> {
    if job_id == "$next" {
        return pending(state, device).await;
    }
    let Some(key) = job_id
        .strip_prefix(JOB_PREFIX)
        .and_then(|n| n.parse::<i64>().ok())
    else {
        return Ok(None);
    };
    match state.store.action(device.tenant, ActionKey(key)).await? {
        Some(action) if action.device == device.key => {
            Ok(Some(execution(state, device, action).await?))
        }
        _ => Ok(None),
    }
}

/// A request body: JSON object (an empty payload is an empty request).
fn request_body(payload: &[u8]) -> Result<Map<String, Value>, &'static str> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("InvalidRequest"),
        Err(_) => Err("InvalidJson"),
    }
}

async fn jobs_request(
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
                let now = crate::server::now_millis();
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
fn status_details(body: &Map<String, Value>) -> Result<Option<String>, String> {
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

fn step_timeout(body: &Map<String, Value>) -> Result<Option<i64>, String> {
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
fn expected_version(body: &Map<String, Value>) -> Result<Option<i64>, String> {
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

async fn update(
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
    let now = crate::server::now_millis();
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
fn fraction(text: &str) -> Option<Progress> {
    let (done, total) = text.trim().split_once('/')?;
    Some(Progress {
        done: done.trim().parse().ok()?,
        total: total.trim().parse().ok()?,
    })
}

/// Moves the action along the shared state machine as the execution says (see the reference's
/// "Updraft states").
async fn apply(state: &AppState, device: &Device, execution: &Execution) -> Result<(), ApiError> {
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

/// A notify-next for a device told of a new job by the notification queue (`{thing}` is filled
/// in by the connection).
pub fn notify_next(
    state: &AppState,
    action: ActionKey,
    artifact: &Artifact,
    options: &DocumentOptions,
    now: i64,
) -> Outbound {
    let execution = json!({
        "jobId": format!("{JOB_PREFIX}{}", action.0),
        "status": "QUEUED",
        "statusDetails": {},
        "queuedAt": now / 1000,
        "lastUpdatedAt": now / 1000,
        "versionNumber": 1,
        "executionNumber": 1,
        "jobDocument": job_document(state, action, artifact, options),
    });
    publish(
        "$aws/things/{thing}/jobs/notify-next".to_owned(),
        json!({"timestamp": now / 1000, "execution": execution}),
    )
}

/// A notify (the pending list) for a device whose one pending job is new.
pub fn notify(action: ActionKey, now: i64) -> Outbound {
    let summary = json!({
        "jobId": format!("{JOB_PREFIX}{}", action.0),
        "queuedAt": now / 1000,
        "lastUpdatedAt": now / 1000,
        "versionNumber": 1,
        "executionNumber": 1,
    });
    publish(
        "$aws/things/{thing}/jobs/notify".to_owned(),
        json!({"timestamp": now / 1000, "jobs": {"QUEUED": [summary]}}),
    )
}

// ---------------------------------------------------------------------------------------------
// Streams.

async fn stream_request(
    state: &AppState,
    device: &Device,
    topic: &str,
    stream: &str,
    payload: &[u8],
) -> Result<Vec<Outbound>, ApiError> {
    let base = topic.trim_end_matches(stream).to_owned();
    let mut levels = stream.splitn(3, '/');
    let (Some(stream_id), Some(verb), Some(format)) = (levels.next(), levels.next(), levels.next())
    else {
        return Ok(vec![]);
    };
    let Some(format) = Format::parse(format) else {
        return Ok(vec![]);
    };
    let reply_topic = |what: &str| format!("{base}{stream_id}/{what}/{}", format.as_str());
    let token = streams::client_token(format, payload);
    let refuse = |error: StreamError| {
        vec![Outbound::Publish {
            topic: reply_topic("rejected"),
            payload: Bytes::from(streams::encode_error(format, token.as_deref(), &error)),
        }]
    };
    let fail = |code: &'static str, message: String| refuse(StreamError { code, message });

    let artifact = match stream_id
        .strip_prefix(STREAM_PREFIX)
        .and_then(|n| n.parse::<i64>().ok())
    {
        Some(key) => {
            state
                .store
                .artifact(device.tenant, updraft_core::ArtifactKey(key))
                .await?
        }
        None => None,
    };
    let Some(artifact) = artifact else {
        return Ok(fail("ResourceNotFound", format!("no stream {stream_id:?}")));
    };
    // A device reads the stream of its own open update, nothing else.
    let active = state
        .store
        .device_status(device.tenant, &device.id)
        .await?
        .and_then(|s| s.active)
        .filter(|a| a.artifact == Some(artifact.key) && !a.state.is_final());
    let Some(action) = active else {
        return Ok(fail(
            "Unauthorized",
            format!("stream {stream_id:?} is not this thing's update"),
        ));
    };

    match verb {
        "describe" => {
            if let Err(error) = streams::decode_describe(format, payload) {
                return Ok(refuse(error));
            }
            let description = format!("{} {}", artifact.title, artifact.version);
            let body = streams::encode_description(
                format,
                token.as_deref(),
                &description,
                0,
                artifact.size,
            );
            Ok(vec![Outbound::Publish {
                topic: reply_topic("description"),
                payload: Bytes::from(body),
            }])
        }
        "get" => {
            let request = match streams::decode_get(format, payload) {
                Ok(request) => request,
                Err(error) => return Ok(refuse(error)),
            };
            if request.stream_version.is_some_and(|s| s != 1) {
                return Ok(fail("VersionMismatch", "the stream is at version 1".into()));
            }
            if request.file_id != 0 {
                return Ok(fail(
                    "ResourceNotFound",
                    format!("no file {} in the stream", request.file_id),
                ));
            }
            let blocks = match streams::blocks(&request, artifact.size) {
                Ok(blocks) => blocks,
                Err(error) => return Ok(refuse(error)),
            };
            if matches!(action.state, UpdateState::Queued | UpdateState::Initiated) {
                let report = Report::Reached {
                    state: UpdateState::Downloading,
                    progress: None,
                };
                state
                    .store
                    .report(device.tenant, action.key, &report, SOURCE)
                    .await?;
            }
            let mut out = Vec::with_capacity(blocks.len());
            // One reader per run of consecutive blocks, read in order.
            let mut reader: Option<(u64, updraft_store::BlobReader)> = None;
            for index in blocks {
                let offset = index * request.block_size;
                let len = request.block_size.min(artifact.size - offset);
                let (at, mut open) = match reader.take() {
                    Some((at, open)) if at == offset => (at, open),
                    _ => {
                        let open = state
                            .blobs
                            .open(&artifact.checksums.sha256, offset, None)
                            .await
                            .map_err(ApiError::internal)?;
                        (offset, open)
                    }
                };
                let mut block = vec![0; usize::try_from(len).unwrap_or(0)];
                open.read_exact(&mut block)
                    .await
                    .map_err(ApiError::internal)?;
                reader = Some((at + len, open));
                let body = streams::encode_block(
                    format,
                    request.client_token.as_deref(),
                    0,
                    index,
                    &block,
                );
                out.push(Outbound::Publish {
                    topic: reply_topic("data"),
                    payload: Bytes::from(body),
                });
            }
            Ok(out)
        }
        _ => Ok(vec![]),
    }
}
