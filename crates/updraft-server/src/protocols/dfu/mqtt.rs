//! Drogue DFU over MQTT: a device that logged in with `{device}@{tenant}` and its token (or a
//! client certificate) publishes its Status on `dfu` — a gateway on `dfu/{device}` for the
//! other devices of its tenant — and gets the Command on `command/inbox/{device}/dfu`.

use async_trait::async_trait;
use bytes::Bytes;

use super::{SOURCE, answer, wire};
use crate::kernel::auth::LoginKind;
use crate::kernel::error::{ApiError, ApiResult};
use crate::kernel::state::AppState;
use crate::transport::mqtt::codec::Outbound;
use crate::transport::mqtt::{Session, TopicHandler};

/// DFU's topics.
pub struct Topics {
    pub state: AppState,
}

/// `Some(None)` for `dfu`, `Some(Some(device))` for `dfu/{device}`.
fn dfu_target(topic: &str) -> Option<Option<&str>> {
    match topic.strip_prefix("dfu")? {
        "" => Some(None),
        rest => rest.strip_prefix('/').map(Some),
    }
}

#[async_trait]
impl TopicHandler for Topics {
    fn name(&self) -> &'static str {
        SOURCE
    }

    fn claims(&self, session: &Session, topic: &str) -> bool {
        session.login().kind != LoginKind::Token
            && (dfu_target(topic).is_some() || topic.starts_with("command/inbox/"))
    }

    async fn publish(&self, session: &mut Session, topic: &str, payload: Bytes) -> ApiResult<()> {
        let state = &self.state;
        let other = dfu_target(topic)
            .ok_or_else(|| ApiError::bad_request("invalid_request", "devices publish on dfu"))?;
        let device = session.device().clone();
        let target = match other {
            None => device,
            Some(_) if !session.login().gateway => {
                return Err(ApiError::forbidden(format!(
                    "{} may not speak for other devices: its credential is not a gateway's",
                    device.id
                )));
            }
            Some(other) => {
                let unknown = || {
                    ApiError::not_found(
                        "device_not_found",
                        format!("no device {other:?} in the gateway's tenant"),
                    )
                };
                let id = updraft_core::DeviceId::parse(other).map_err(|_| unknown())?;
                state
                    .store
                    .device(device.tenant, &id)
                    .await?
                    .ok_or_else(unknown)?
            }
        };
        let encoding = wire::Encoding::of(None, &payload);
        let status = wire::decode(encoding, &payload)
            .map_err(|e| ApiError::bad_request("invalid_status", e.0))?;
        let command = answer(state, &target, &status).await?;
        // Delivered whatever the device subscribed (`command/inbox//#` usually); a gateway's
        // answers name the device it spoke for.
        let topic = match other {
            None => "command/inbox//dfu".to_owned(),
            Some(_) => format!("command/inbox/{}/dfu", target.id),
        };
        let response = Outbound::Publish {
            topic,
            payload: Bytes::from(wire::encode(encoding, &command)),
        };
        session.send(&response).await.map_err(ApiError::internal)
    }
}
