//! The device protocol adapters, each in its own folder. An adapter may use the kernel and the
//! transports, never another adapter or the management API; this file, the composition, is the
//! only one here that names them all.

pub mod aws;
pub mod ddi;
pub mod dfu;
pub mod frugal;
pub mod lwm2m;
pub mod thingsboard;

use std::sync::Arc;

use crate::kernel::channel::Adapter;
use crate::kernel::state::AppState;
use crate::transport::mqtt::{Endpoint, Sessions, TopicHandler};

/// Every adapter of a running server, with the handles its listeners are served from.
#[derive(Clone)]
pub struct Protocols {
    /// The MQTT endpoint, with ThingsBoard's, AWS's and DFU's topics.
    pub mqtt: Arc<Endpoint>,
    /// ThingsBoard's CoAP face.
    pub coap: thingsboard::coap::Ctx,
    /// The LwM2M server.
    pub lwm2m: lwm2m::Ctx,
}

impl Protocols {
    /// Builds every adapter and installs them in `state`.
    pub fn install(state: &AppState) -> Protocols {
        let sessions = Arc::new(Sessions::default());
        let observers = Arc::new(thingsboard::coap::Observers::default());
        let lwm2m = Arc::new(lwm2m::Lwm2m::default());
        state.metrics.register(
            "updraft_lwm2m_malformed_total",
            "LwM2M messages that could not be read (not CoAP, bad link format, unreadable values).",
            lwm2m.malformed.clone(),
        );
        let thingsboard = Arc::new(thingsboard::adapter::ThingsBoard {
            sessions: sessions.clone(),
            observers: observers.clone(),
        });
        let aws = Arc::new(aws::adapter::Aws {
            state: state.clone(),
            sessions: sessions.clone(),
        });
        let lwm2m_adapter = Arc::new(lwm2m::adapter::Lwm2mAdapter {
            lwm2m: lwm2m.clone(),
        });
        // Channels are asked in this order for the protocol a device is told through.
        let adapters: Vec<Arc<dyn Adapter>> = vec![
            thingsboard,
            aws.clone(),
            lwm2m_adapter,
            Arc::new(ddi::Ddi),
            Arc::new(frugal::Frugal),
            Arc::new(dfu::adapter::Dfu),
        ];
        state.adapters.install(adapters);
        let topics: Vec<Arc<dyn TopicHandler>> = vec![
            Arc::new(dfu::mqtt::Topics {
                state: state.clone(),
            }),
            aws,
            Arc::new(thingsboard::mqtt::Topics {
                state: state.clone(),
            }),
        ];
        Protocols {
            mqtt: Endpoint::new(state.clone(), sessions, topics),
            coap: thingsboard::coap::Ctx {
                app: state.clone(),
                coap: observers,
            },
            lwm2m: lwm2m::Ctx {
                app: state.clone(),
                lwm2m,
            },
        }
    }
}
