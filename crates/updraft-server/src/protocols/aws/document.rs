//! Job documents (`afr_ota`: one file in one MQTT stream, and at a one-time HTTP URL when the
//! profile says so) and the `notify`/`notify-next` pushes that announce them.

use super::*;

/// What a device's profile says about its job documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentOptions {
    /// The name of the verification certificate on the device.
    pub certfile: String,
    /// Offer the file over HTTP too (a one-time URL).
    pub http: bool,
    /// The rollout's update type (`soft`, `download-only`) when it is not `forced`: FreeRTOS OTA
    /// ignores it and installs; an agent of its own can read `updraft.updateType`.
    pub update_type: Option<&'static str>,
}

impl Default for DocumentOptions {
    fn default() -> Self {
        Self {
            certfile: DEFAULT_CERTFILE.to_owned(),
            http: false,
            update_type: None,
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
            update_type: None,
        }
    }

    /// With the update type of the rollout that asked for `action`, if it is not `forced`.
    pub async fn for_action(
        mut self,
        state: &AppState,
        action: ActionKey,
    ) -> Result<Self, ApiError> {
        let terms = crate::kernel::terms::terms_of(state, action).await?;
        self.update_type = (terms.update_type != updraft_core::rollout::UpdateType::Forced)
            .then_some(terms.update_type.as_str());
        Ok(self)
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
    let mut document = json!({"afr_ota": {
        "protocols": protocols,
        "streamname": format!("{STREAM_PREFIX}{}", artifact.key.0),
        "files": [file],
    }});
    if let Some(update_type) = options.update_type {
        document["updraft"] = json!({"updateType": update_type});
    }
    document
}

/// The device's profile's wishes for its job documents.
pub(super) async fn document_options(
    state: &AppState,
    device: &Device,
) -> Result<DocumentOptions, ApiError> {
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

/// A notify-next for `thing`, told of a new job by the notification queue.
pub fn notify_next(
    state: &AppState,
    thing: &str,
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
        format!("$aws/things/{thing}/jobs/notify-next"),
        json!({"timestamp": now / 1000, "execution": execution}),
    )
}

/// A notify (the pending list) for `thing`, whose one pending job is new.
pub fn notify(thing: &str, action: ActionKey, now: i64) -> Outbound {
    let summary = json!({
        "jobId": format!("{JOB_PREFIX}{}", action.0),
        "queuedAt": now / 1000,
        "lastUpdatedAt": now / 1000,
        "versionNumber": 1,
        "executionNumber": 1,
    });
    publish(
        format!("$aws/things/{thing}/jobs/notify"),
        json!({"timestamp": now / 1000, "jobs": {"QUEUED": [summary]}}),
    )
}
