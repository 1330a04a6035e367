//! ThingsBoard's MQTT face: `v1/devices/me/…` telemetry, attributes and RPC, and firmware chunks
//! on `v2/fw|sw/request/{id}/chunk/{n}`, registered with the MQTT endpoint as a topic handler.

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{Value, json};
use updraft_core::ArtifactKind;

use super::{SOURCE, chunk_window, client_attributes, prefix, select, served, shared_attributes};
use crate::kernel::error::{ApiError, ApiResult};
use crate::kernel::state::AppState;
use crate::transport::mqtt::codec::Outbound;
use crate::transport::mqtt::{MAX_INBOUND_PACKET, Session, TopicHandler};

/// ThingsBoard's topics.
pub struct Topics {
    pub state: AppState,
}

fn bad(what: &str) -> ApiError {
    ApiError::bad_request("invalid_request", what.to_owned())
}

#[async_trait]
impl TopicHandler for Topics {
    fn name(&self) -> &'static str {
        SOURCE
    }

    fn claims(&self, _session: &Session, topic: &str) -> bool {
        topic.starts_with("v1/devices/me/")
            || topic.starts_with("v2/fw/")
            || topic.starts_with("v2/sw/")
    }

    async fn publish(&self, session: &mut Session, topic: &str, payload: Bytes) -> ApiResult<()> {
        let state = &self.state;
        let device = session.device().clone();
        let json =
            || serde_json::from_slice::<Value>(&payload).map_err(|_| bad("payload is not JSON"));
        if topic == "v1/devices/me/telemetry" {
            return super::telemetry(state, &device, &json()?).await;
        }
        if topic == "v1/devices/me/attributes" {
            let Value::Object(values) = json()? else {
                return Err(bad("attributes are a JSON object"));
            };
            let data = crate::kernel::views::attribute_strings(values);
            return state
                .store
                .update_attributes(device.key, updraft_store::AttributeMode::Merge, &data)
                .await
                .map_err(Into::into);
        }
        if let Some(id) = topic.strip_prefix("v1/devices/me/attributes/request/") {
            let request = json().unwrap_or(Value::Null);
            let shared_keys = request.get("sharedKeys").and_then(Value::as_str);
            let client_keys = request.get("clientKeys").and_then(Value::as_str);
            let mut answer = serde_json::Map::new();
            let shared = shared_attributes(state, &device).await?;
            if shared_keys.is_some() || client_keys.is_none() {
                answer.insert("shared".into(), Value::Object(select(shared, shared_keys)));
            }
            if client_keys.is_some() {
                let fresh = state
                    .store
                    .device(device.tenant, &device.id)
                    .await?
                    .unwrap_or(device);
                answer.insert(
                    "client".into(),
                    Value::Object(select(client_attributes(&fresh), client_keys)),
                );
            }
            let response = Outbound::Publish {
                topic: format!("v1/devices/me/attributes/response/{id}"),
                payload: Bytes::from(Value::Object(answer).to_string()),
            };
            return session.send(&response).await.map_err(ApiError::internal);
        }
        if let Some(id) = topic.strip_prefix("v1/devices/me/rpc/request/") {
            let request = json()?;
            let reply = match request.get("method").and_then(Value::as_str) {
                Some("getSessionLimits") => json!({
                    "maxPayloadSize": MAX_INBOUND_PACKET,
                    "maxInflightMessages": 100,
                    "rateLimits": {"messages": "", "telemetryMessages": "", "telemetryDataPoints": ""},
                }),
                Some(other) => json!({"error": format!("unsupported method {other:?}")}),
                None => json!({"error": "no method"}),
            };
            let response = Outbound::Publish {
                topic: format!("v1/devices/me/rpc/response/{id}"),
                payload: Bytes::from(reply.to_string()),
            };
            return session.send(&response).await.map_err(ApiError::internal);
        }
        for (request_prefix, kind) in [
            ("v2/fw/request/", ArtifactKind::Firmware),
            ("v2/sw/request/", ArtifactKind::Software),
        ] {
            if let Some(rest) = topic.strip_prefix(request_prefix) {
                let (request_id, chunk) = rest
                    .split_once("/chunk/")
                    .ok_or_else(|| bad("expected {requestId}/chunk/{index}"))?;
                let index: u64 = chunk
                    .parse()
                    .map_err(|_| bad("the chunk index is not a number"))?;
                let text = std::str::from_utf8(&payload)
                    .map_err(|_| bad("the chunk size is not text"))?
                    .trim();
                let size: u64 = if text.is_empty() {
                    0
                } else {
                    text.parse()
                        .map_err(|_| bad("the chunk size is not a number"))?
                };
                let response_topic =
                    format!("v2/{}/response/{request_id}/chunk/{index}", prefix(kind));
                // ThingsBoard delivers chunks whatever the device subscribed
                // (`v2/fw/response/+` does not match these topics), and so do we.
                return self
                    .send_chunk(session, kind, size, index, &response_topic)
                    .await;
            }
        }
        Err(bad("unknown topic"))
    }
}

impl Topics {
    async fn send_chunk(
        &self,
        session: &mut Session,
        kind: ArtifactKind,
        size: u64,
        index: u64,
        topic: &str,
    ) -> ApiResult<()> {
        let Some(artifact) = served(&self.state, session.device(), kind).await? else {
            let empty = Outbound::Publish {
                topic: topic.to_owned(),
                payload: Bytes::new(),
            };
            return session.send(&empty).await.map_err(ApiError::internal);
        };
        let (offset, len) = chunk_window(artifact.size, size, index);
        if len == 0 {
            return session
                .send_streamed(topic, 0, None)
                .await
                .map_err(ApiError::internal);
        }
        // A slice of the blob's mapping where there is one; streamed from the blob store else
        // (a chunk may be up to 16 MiB: never buffered whole).
        let sha256 = &artifact.checksums.sha256;
        let mapped = self
            .state
            .blobs
            .mapped(sha256)
            .await
            .map_err(ApiError::internal)?;
        if let Some(map) = mapped.filter(|map| offset.saturating_add(len) <= map.len()) {
            let chunk = Outbound::Publish {
                topic: topic.to_owned(),
                payload: map.slice(offset, len),
            };
            return session.send(&chunk).await.map_err(ApiError::internal);
        }
        let mut reader = self
            .state
            .blobs
            .open(sha256, offset, Some(len))
            .await
            .map_err(ApiError::internal)?;
        session
            .send_streamed(topic, len, Some(&mut reader))
            .await
            .map_err(ApiError::internal)
    }
}
