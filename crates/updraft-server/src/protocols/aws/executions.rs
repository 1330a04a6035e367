//! An update action seen as a job execution: its status, version number and `statusDetails`,
//! loaded from and saved to the store, found by job id or as the device's next pending one.

use super::document::document_options;
use super::*;

// ---------------------------------------------------------------------------------------------
// Job executions.

/// An action seen as a job execution.
pub(super) struct Execution {
    pub(super) action: Action,
    pub(super) artifact: Option<Artifact>,
    /// How the device's profile wants its job documents.
    pub(super) options: DocumentOptions,
    pub(super) row: JobExecution,
    /// Whether `row` is stored yet.
    pub(super) stored: bool,
}

impl Execution {
    pub(super) fn job_id(&self) -> String {
        format!("{JOB_PREFIX}{}", self.action.key.0)
    }

    /// AWS's status: the stored one while the action is open, else what the action ended as.
    pub(super) fn status(&self) -> &str {
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

    pub(super) fn terminal(&self) -> bool {
        !matches!(self.status(), "QUEUED" | "IN_PROGRESS")
    }

    pub(super) fn details(&self) -> Value {
        serde_json::from_str(&self.row.status_details).unwrap_or_else(|_| json!({}))
    }

    pub(super) fn summary(&self) -> Value {
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

    pub(super) fn state(&self) -> Value {
        json!({
            "status": self.status(),
            "statusDetails": self.details(),
            "versionNumber": self.row.version_number,
        })
    }

    pub(super) fn full(&self, state: &AppState, device: &Device, include_document: bool) -> Value {
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

pub(super) async fn execution(
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
    let options = document_options(state, device)
        .await?
        .for_action(state, action.key)
        .await?;
    let execution = Execution {
        action,
        artifact,
        options,
        row,
        stored,
    };
    // A step that ran out of time ends TIMED_OUT when next looked at.
    if execution.row.status == "IN_PROGRESS"
        && !execution.action.state.is_final()
        && execution
            .row
            .step_deadline
            .is_some_and(|deadline| deadline <= crate::kernel::clock::now_millis())
    {
        let mut next = execution.row.clone();
        next.status = "TIMED_OUT".into();
        next.last_updated_at = crate::kernel::clock::now_millis();
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

pub(super) async fn reload(
    state: &AppState,
    device: &Device,
    key: ActionKey,
) -> Result<Execution, ApiError> {
    let action = state
        .store
        .action(device.tenant, key)
        .await?
        .ok_or_else(|| ApiError::internal("the action vanished"))?;
    execution(state, device, action).await
}

pub(super) async fn save(
    state: &AppState,
    current: &Execution,
    next: &JobExecution,
) -> Result<bool, ApiError> {
    let expected = current.stored.then_some(current.row.version_number);
    Ok(state.store.save_job_execution(next, expected).await?)
}

/// The device's pending executions (at most one: one active update per device).
pub(super) async fn pending(
    state: &AppState,
    device: &Device,
) -> Result<Option<Execution>, ApiError> {
    let Some(status) = state.store.device_status(device.tenant, &device.id).await? else {
        return Ok(None);
    };
    // An OTA agent installs the job it is given: offered inside a maintenance window only.
    let status = crate::kernel::terms::held_back(state, status).await?;
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
pub(super) async fn handed_out(
    state: &AppState,
    device: &Device,
    execution: &Execution,
) -> Result<(), ApiError> {
    crate::kernel::actions::told(
        state,
        device.tenant,
        execution.action.key,
        execution.action.state,
        SOURCE,
    )
    .await
}

/// The execution a job id names, if it is one of the device's.
pub(super) async fn by_job_id(
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
