//! Our own requests to registered clients: confirmables retransmitted with RFC 7252's back-off,
//! answers routed back by token, the package pushed in Block1 blocks, Package URIs, and the
//! management operations (read, write, execute, discover, observe, …).

use super::*;
use crate::transport::coap::MAX_BLOCK;

impl Lwm2m {
    /// Sends a confirmable request to `link` and awaits its answer, retransmitting with RFC
    /// 7252's back-off (2 s, doubling, 4 retransmissions).
    pub(super) async fn request(
        &self,
        addr: Link,
        method: RequestType,
        path: &str,
        payload: Vec<u8>,
        content_format: Option<u16>,
        observe: bool,
    ) -> Result<Packet, String> {
        let options = RequestOptions {
            content_format,
            observe: observe.then_some(0),
            ..RequestOptions::default()
        };
        self.request_with(addr, method, path, payload, options)
            .await
    }

    /// A confirmable request with every option a management operation may need.
    pub(super) async fn request_with(
        &self,
        addr: Link,
        method: RequestType,
        path: &str,
        payload: Vec<u8>,
        options: RequestOptions,
    ) -> Result<Packet, String> {
        let token = options
            .token
            .clone()
            .unwrap_or_else(|| self.exchanges.token());
        let mut packet = Packet::new();
        packet.header.code = MessageClass::Request(method);
        packet.set_token(token);
        if let Some(observe) = options.observe {
            packet.add_option(CoapOption::Observe, encode_uint(u64::from(observe)));
        }
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            packet.add_option(CoapOption::UriPath, segment.as_bytes().to_vec());
        }
        if let Some(format) = options.content_format {
            packet.add_option(CoapOption::ContentFormat, encode_uint(u64::from(format)));
        }
        for query in options.queries {
            packet.add_option(CoapOption::UriQuery, query.into_bytes());
        }
        if let Some(accept) = options.accept {
            packet.add_option(CoapOption::Accept, encode_uint(u64::from(accept)));
        }
        if let Some(block1) = options.block1 {
            packet.add_option(CoapOption::Block1, block1.encode());
        }
        if let Some(size1) = options.size1 {
            packet.add_option(CoapOption::Size1, encode_uint(size1));
        }
        packet.payload = payload;
        self.exchanges
            .request(addr, packet, |bytes| async move {
                self.transmit(addr, &bytes).await;
            })
            .await
            .map_err(|e| format!("{e} to {method:?} {path}"))
    }

    /// Writes the package into /5/0/0 (opaque, Block1 blocks of 1 KiB read from the blob store
    /// one at a time): 2.31 Continue for every block but the last, 2.04 for the last.
    pub(super) async fn push_package(
        &self,
        state: &Ctx,
        link: Link,
        root: &str,
        artifact: &updraft_store::Artifact,
    ) -> Result<(), String> {
        use tokio::io::AsyncReadExt;
        let path = format!("{root}/5/0/0");
        let mut reader = state
            .blobs
            .open(&artifact.checksums.sha256, 0, None)
            .await
            .map_err(|e| e.to_string())?;
        let blocks = artifact.size.div_ceil(MAX_BLOCK).max(1);
        for num in 0..blocks {
            let len = MAX_BLOCK.min(artifact.size - num * MAX_BLOCK);
            let mut block = vec![0u8; usize::try_from(len).unwrap_or(0)];
            reader
                .read_exact(&mut block)
                .await
                .map_err(|e| e.to_string())?;
            let more = num + 1 < blocks;
            let options = RequestOptions {
                content_format: Some(lwm2m::OPAQUE),
                block1: Some(Block { num, more, szx: 6 }),
                size1: (num == 0).then_some(artifact.size),
                ..RequestOptions::default()
            };
            let answer = self
                .request_with(link, RequestType::Put, &path, block, options)
                .await?;
            // 2.31 for every block but the last; 2.04 (or 2.01 from a server that creates the
            // resource) for the last.
            let accepted = if more {
                answer.header.code == MessageClass::Response(ResponseType::Continue)
            } else {
                matches!(
                    answer.header.code,
                    MessageClass::Response(ResponseType::Changed | ResponseType::Created)
                )
            };
            if !accepted {
                return Err(format!(
                    "the device answered block {num} of the package with {:?}",
                    answer.header.code
                ));
            }
        }
        Ok(())
    }

    /// The Package URI for a download grant, as the device's profile wants it.
    pub(super) fn package_uri(
        &self,
        state: &Ctx,
        token: &str,
        settings: updraft_store::ProfileSettings,
    ) -> String {
        let (base, path) = match settings.lwm2m_delivery {
            updraft_store::Lwm2mDelivery::Http | updraft_store::Lwm2mDelivery::Push => {
                (state.config.public_url.clone(), format!("/dl/{token}"))
            }
            updraft_store::Lwm2mDelivery::Coap => {
                // The host devices reach us by (from --public-url), on the LwM2M port.
                let public = state.config.public_url.as_str();
                let authority = public.split_once("://").map_or(public, |(_, rest)| rest);
                let authority = authority.split('/').next().unwrap_or(authority);
                let host = match authority.rsplit_once(':') {
                    Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
                    _ => authority,
                };
                let port = self
                    .socket
                    .get()
                    .and_then(|s| s.local_addr().ok())
                    .map_or(5685, |a| a.port());
                (format!("coap://{host}:{port}"), format!("/fw/{token}"))
            }
        };
        if settings.lwm2m_path_only {
            path
        } else {
            format!("{base}{path}")
        }
    }

    /// Runs a management operation on the device's registered client, one at a time per device.
    /// `None` when the device is not registered.
    pub async fn operate(
        &self,
        device: DeviceKey,
        path: &str,
        operation: Operation,
    ) -> Result<Option<OperationResult>, String> {
        let Some(registration) = self.registration_of(device) else {
            return Ok(None);
        };
        let full = format!("{}{path}", registration.root);
        let mut options = RequestOptions::default();
        let (method, payload) = match &operation {
            Operation::Read => (RequestType::Get, Vec::new()),
            Operation::Write(value) => {
                options.content_format = Some(lwm2m::TEXT);
                (RequestType::Put, value.clone().into_bytes())
            }
            Operation::Execute(args) => (RequestType::Post, args.clone().into_bytes()),
            Operation::Discover => {
                options.accept = Some(lwm2m::LINK_FORMAT);
                (RequestType::Get, Vec::new())
            }
            Operation::WriteAttributes(query) => {
                options.queries = query
                    .split('&')
                    .filter(|q| !q.is_empty())
                    .map(str::to_owned)
                    .collect();
                (RequestType::Put, Vec::new())
            }
            Operation::Observe => {
                options.observe = Some(0);
                (RequestType::Get, Vec::new())
            }
            Operation::CancelObserve => {
                let token = self
                    .inner()
                    .observations
                    .iter()
                    .find(|(_, o)| o.device == device && o.path == path)
                    .map(|((_, t), _)| t.clone());
                options.observe = Some(1);
                options.token = token;
                (RequestType::Get, Vec::new())
            }
        };
        let lock = self.device_lock(device);
        let _one_at_a_time = lock.lock().await;
        let answer = self
            .request_with(registration.link, method, &full, payload, options)
            .await?;
        match operation {
            Operation::Observe if is_success(&answer) => {
                self.inner().observations.insert(
                    (registration.link, answer.get_token().to_vec()),
                    Observation {
                        device,
                        path: path.to_owned(),
                    },
                );
            }
            Operation::CancelObserve => {
                self.inner()
                    .observations
                    .retain(|_, o| !(o.device == device && o.path == path));
            }
            _ => {}
        }
        let code = match answer.header.code {
            MessageClass::Response(code) => {
                let raw = u8::from(MessageClass::Response(code));
                format!("{}.{:02}", raw >> 5, raw & 0x1f)
            }
            other => format!("{other:?}"),
        };
        Ok(Some(OperationResult {
            code,
            content_format: answer
                .get_first_option(CoapOption::ContentFormat)
                .map(|v| u16::try_from(uint(v)).unwrap_or(u16::MAX)),
            payload: answer.payload,
        }))
    }
}
