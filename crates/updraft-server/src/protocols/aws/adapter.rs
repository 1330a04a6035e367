//! AWS IoT Jobs and streams as the kernel and the MQTT endpoint see them: the `$aws/things/…`
//! topic handler (a thing reaching for another thing's topics is disconnected, as AWS IoT does)
//! and the channel that pushes `notify` and `notify-next` to connected things.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use updraft_core::DeviceKey;

use super::{DEFAULT_CERTFILE, DocumentOptions, SOURCE, handle, notify, notify_next, thing_of};
use crate::kernel::channel::{Adapter, DeviceChannel, Tell};
use crate::kernel::clock::now_millis;
use crate::kernel::error::{ApiError, ApiResult};
use crate::kernel::state::AppState;
use crate::transport::mqtt::codec::Outbound;
use crate::transport::mqtt::{Session, Sessions, TopicHandler};

/// The AWS adapter: its topics and its channel over the MQTT endpoint's sessions.
pub struct Aws {
    pub state: AppState,
    pub sessions: Arc<Sessions>,
}

#[async_trait]
impl TopicHandler for Aws {
    fn name(&self) -> &'static str {
        SOURCE
    }

    fn claims(&self, _session: &Session, topic: &str) -> bool {
        thing_of(topic).is_some()
    }

    fn forbids(&self, session: &Session, topic: &str) -> Option<&'static str> {
        thing_of(topic)
            .is_some_and(|(thing, _)| thing != session.device().id.as_str())
            .then_some("reached for another thing's topics")
    }

    async fn publish(&self, session: &mut Session, topic: &str, payload: Bytes) -> ApiResult<()> {
        let Some((_, rest)) = thing_of(topic) else {
            return Err(ApiError::bad_request("invalid_topic", "unknown topic"));
        };
        let device = session.device().clone();
        // Answers go to the requester whether or not it subscribed, as AWS IoT does.
        let mut packets = handle(&self.state, &device, rest, &payload).await;
        // Notifications, unlike replies, only reach a device that subscribed to them.
        packets.retain(|packet| match packet {
            Outbound::Publish { topic, .. } => {
                !(topic.ends_with("/jobs/notify-next") || topic.ends_with("/jobs/notify"))
                    || session.subscribed(topic)
            }
            _ => true,
        });
        session.send_all(&packets).await.map_err(ApiError::internal)
    }
}

#[async_trait]
impl DeviceChannel for Aws {
    fn source(&self) -> &'static str {
        SOURCE
    }

    fn reachable(&self) -> Vec<DeviceKey> {
        self.sessions.connected()
    }

    fn speaks(&self, device: DeviceKey) -> bool {
        self.sessions.speaks(device, SOURCE)
    }

    async fn tell(&self, state: &AppState, tell: &Tell<'_>) {
        let device = tell.queued.device;
        let Some(thing) = self.sessions.device_id(device) else {
            return;
        };
        let options = tell.profile.map(DocumentOptions::of).unwrap_or_default();
        let Ok(options) = options.for_action(state, tell.queued.action).await else {
            return;
        };
        let now = now_millis();
        self.sessions
            .push(device, &notify(thing.as_str(), tell.queued.action, now));
        let next = notify_next(
            state,
            thing.as_str(),
            tell.queued.action,
            tell.artifact,
            &options,
            now,
        );
        self.sessions.push(device, &next);
    }
}

#[async_trait]
impl Adapter for Aws {
    fn name(&self) -> &'static str {
        SOURCE
    }

    fn channel(self: Arc<Self>) -> Option<Arc<dyn DeviceChannel>> {
        Some(self)
    }

    fn signing_cert_name(&self) -> Option<&'static str> {
        Some(DEFAULT_CERTFILE)
    }
}
