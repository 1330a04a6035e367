//! AWS IoT Jobs and MQTT file streams on the built-in MQTT endpoint, for FreeRTOS OTA, coreOTA
//! and rustot devices: every update action of a device is a job execution
//! (`$aws/things/{thing}/jobs/…`) whose document (`afr_ota`) names a stream
//! (`$aws/things/{thing}/streams/{stream}/…`) that serves the artifact in blocks read from the blob
//! store by range. The device's status updates drive the shared state machine.

pub mod adapter;
mod document;
mod executions;
pub mod jobs;
mod stream;

pub use self::document::{DocumentOptions, job_document, notify, notify_next};
use self::jobs::jobs_request;
use self::stream::stream_request;

use bytes::Bytes;
use serde_json::{Map, Value, json};
use updraft_core::{ActionKey, ArtifactKind, Failure, FailureCode, Progress, Report, UpdateState};
use updraft_store::{Action, Artifact, Device, JobExecution};
use updraft_wire::aws::{self as streams, Format, StreamError};

use crate::kernel::error::ApiError;
use crate::kernel::state::AppState;
use crate::transport::mqtt::codec::Outbound;

/// The source recorded in history for reports over this protocol.
pub const SOURCE: &str = "aws";
/// Job ids are this prefix and the action's key.
const JOB_PREFIX: &str = "updraft-";
/// Stream ids are this prefix and the artifact's key.
const STREAM_PREFIX: &str = "artifact-";
/// The verification certificate a device is told to use when the profile names none.
pub const DEFAULT_CERTFILE: &str = "code-sign.crt";

fn now_secs() -> i64 {
    crate::kernel::clock::now_millis() / 1000
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
