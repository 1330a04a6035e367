//! The LwM2M listener: datagrams in, duplicates answered from a cache, the registration interface
//! (Register, Update, De-register), Send, and Block2 package downloads.

use super::*;

/// Requests (and notifications) handled at once, over both listeners, counted in permits of
/// [`PERMIT_BYTES`] of datagram (a small request takes one): beyond that a request is dropped
/// and its client retransmits. Thousands of small registrations arriving together are all in
/// hand at once (waiting for a retransmission costs a client seconds), while what requests hold
/// stays bounded (4 MiB of payload and the tasks' state) whatever their size.
pub(super) const MAX_IN_FLIGHT: usize = 4096;
const PERMIT_BYTES: usize = 1024;

/// The permits a datagram of `len` bytes takes.
fn weight(len: usize) -> u32 {
    u32::try_from(1 + len / PERMIT_BYTES).unwrap_or(u32::MAX)
}

/// Answers registrations and routes answers to our requests, until the socket fails.
pub async fn serve(socket: UdpSocket, state: Ctx) {
    let socket = Arc::new(socket);
    let _ = state.lwm2m.socket.set(socket.clone());
    // Clients registered before a restart are known at once (their answers come through the
    // loop below).
    state.lwm2m.restore(&state).await;
    tokio::spawn(state.lwm2m.clone().persist(state.clone()));
    let recent = Arc::new(Mutex::new(Dedup::new(DEDUP_MILLIS, 65_536)));
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(err) => {
                tracing::warn!(error = %err, "lwm2m receive failed");
                continue;
            }
        };
        let link = Link {
            peer,
            secure: false,
        };
        datagram(&state, link, &buf[..len], &recent).await;
    }
}

/// One CoAP message from a client, over either transport.
pub(super) async fn datagram(state: &Ctx, link: Link, bytes: &[u8], recent: &Arc<Mutex<Dedup>>) {
    let Ok(packet) = Packet::from_bytes(bytes) else {
        state.lwm2m.malformed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let lwm2m = state.lwm2m.clone();
    match packet.header.code {
        MessageClass::Request(method) => {
            let key = (link.peer, packet.header.message_id);
            let confirmable = packet.header.get_type() == MessageType::Confirmable;
            if confirmable {
                let seen = recent
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .begin(key, now());
                match seen {
                    Seen::New => {}
                    // Still being answered: the answer will go out.
                    Seen::InProgress => return,
                    Seen::Answered(cached) => {
                        lwm2m.transmit(link, &cached).await;
                        return;
                    }
                }
            }
            // Requests are answered concurrently (a registration waits on the store), at most
            // MAX_IN_FLIGHT at once: beyond that the request is forgotten, to be retransmitted.
            let weight = weight(bytes.len());
            let Ok(permit) = lwm2m.in_flight.clone().try_acquire_many_owned(weight) else {
                if confirmable {
                    recent.lock().unwrap_or_else(|e| e.into_inner()).forget(key);
                }
                return;
            };
            let (state, recent) = (state.clone(), recent.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let response = respond(&state, link, &packet, method).await;
                let Ok(bytes) = response.to_bytes() else {
                    return;
                };
                state.lwm2m.transmit(link, &bytes).await;
                if confirmable {
                    recent
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .answered(key, bytes);
                }
            });
        }
        MessageClass::Response(_) => {
            // A separate (confirmable) answer or notification is acknowledged.
            if packet.header.get_type() == MessageType::Confirmable {
                let mut ack = Packet::new();
                ack.header.set_type(MessageType::Acknowledgement);
                ack.header.message_id = packet.header.message_id;
                if let Ok(bytes) = ack.to_bytes() {
                    lwm2m.transmit(link, &bytes).await;
                }
            }
            let Err(packet) = lwm2m.exchanges.answer(link, packet) else {
                return;
            };
            // A notification counts only from the client observed, over the same transport.
            let key = (link, packet.get_token().to_vec());
            let observation = lwm2m.inner().observations.get(&key).cloned();
            if let Some(observation) = observation {
                queue_notice(state, observation.device, observation.path, packet);
            }
        }
        _ => {}
    }
}

/// Queues a notification of `device` and, unless its notifications are being handled already,
/// starts handling them, one after another in the order they came.
fn queue_notice(state: &Ctx, device: DeviceKey, path: String, packet: Packet) {
    let lwm2m = state.lwm2m.clone();
    {
        let mut inner = lwm2m.inner();
        if let Some(waiting) = inner.notices.get_mut(&device) {
            if waiting.len() < MAX_WAITING_NOTICES {
                waiting.push_back((path, packet));
            }
            return;
        }
        inner
            .notices
            .insert(device, std::collections::VecDeque::from([(path, packet)]));
    }
    let Ok(permit) = lwm2m.in_flight.clone().try_acquire_owned() else {
        // Too busy: forgotten, as a request would be (the client notifies again on change).
        lwm2m.inner().notices.remove(&device);
        return;
    };
    let state = state.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let lwm2m = state.lwm2m.clone();
        loop {
            let next = {
                let mut inner = lwm2m.inner();
                match inner.notices.get_mut(&device).and_then(|q| q.pop_front()) {
                    Some(notice) => notice,
                    None => {
                        inner.notices.remove(&device);
                        break;
                    }
                }
            };
            let (path, packet) = next;
            if let Err(err) = lwm2m.notified(&state, device, &path, &packet).await {
                tracing::warn!(error = %err.message, "lwm2m notification failed");
            }
        }
    });
}

/// The answer to a client's request to the registration interface.
pub(super) async fn respond(
    state: &Ctx,
    link: Link,
    request: &Packet,
    method: RequestType,
) -> Packet {
    let mut response = Packet::new();
    if request.header.get_type() == MessageType::Confirmable {
        response.header.set_type(MessageType::Acknowledgement);
        response.header.message_id = request.header.message_id;
    } else {
        response.header.set_type(MessageType::NonConfirmable);
        response.header.message_id = state.lwm2m.exchanges.message_id();
    }
    response.set_token(request.get_token().to_vec());
    let code = match handle(state, link, request, method, &mut response).await {
        Ok(code) => code,
        Err((code, message)) => {
            response.payload = message.into_bytes();
            code
        }
    };
    response.header.code = MessageClass::Response(code);
    response
}

pub(super) type Answer = Result<ResponseType, (ResponseType, String)>;

pub(super) fn bad(message: impl Into<String>) -> (ResponseType, String) {
    (ResponseType::BadRequest, message.into())
}

pub(super) async fn handle(
    state: &Ctx,
    link: Link,
    request: &Packet,
    method: RequestType,
    response: &mut Packet,
) -> Answer {
    let path = strings(request, CoapOption::UriPath);
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    match (method, path.as_slice()) {
        (RequestType::Post, ["rd"]) => register(state, link, request, response).await,
        (RequestType::Post, ["dp"]) => send(state, link, request).await,
        (RequestType::Get, ["fw", token]) => package_block(state, token, request, response).await,
        (RequestType::Post, ["rd", location]) => update(state, link, request, location),
        (RequestType::Delete, ["rd", location]) => {
            let mut inner = state.lwm2m.inner();
            let device = own_registration(state, &inner, link, location)?;
            if let Some(gone) = inner.registrations.remove(&device) {
                gone.gone.cancel();
                state.lwm2m.exchanges.abandon(&gone.link);
            }
            state.lwm2m.forget(device);
            inner.observations.retain(|_, o| o.device != device);
            Ok(ResponseType::Deleted)
        }
        _ => Err((ResponseType::NotFound, "unknown resource".into())),
    }
}

pub(super) async fn register(
    state: &Ctx,
    link: Link,
    request: &Packet,
    response: &mut Packet,
) -> Answer {
    let queries = strings(request, CoapOption::UriQuery);
    let query = lwm2m::register_query(queries.iter().map(String::as_str)).map_err(|e| bad(e.0))?;
    let version = query.version.clone().unwrap_or_else(|| "1.0".to_owned());
    if !VERSIONS.contains(&version.as_str()) {
        // 4.12, never 4.00: a client that gets 4.00 does not try an older version.
        return Err((
            ResponseType::PreconditionFailed,
            format!("LwM2M {version} is not supported: use 1.1 or 1.0"),
        ));
    }
    let endpoint = query
        .endpoint
        .clone()
        .ok_or_else(|| bad("ep is required"))?;
    let links = lwm2m::links(&request.payload).map_err(|e| {
        state.lwm2m.malformed.fetch_add(1, Ordering::Relaxed);
        bad(e.0)
    })?;
    let device = match device_for(state, link, &endpoint).await {
        Ok(Some(device)) => device,
        Ok(None) => {
            return Err((
                ResponseType::Forbidden,
                format!("endpoint {endpoint:?} is not a device of this server"),
            ));
        }
        Err(err) => return Err((ResponseType::InternalServerError, err.message)),
    };
    // A device with a PSK registers over DTLS only, and over DTLS only as the device whose
    // identity it used. Whether it has one is the store's answer (its views follow every write
    // of a PSK, on every replica): when the store cannot say, the registration is refused.
    let allowed = if link.secure {
        state.lwm2m.dtls_device(link.peer) == Some(device.key)
    } else {
        match state.store.lwm2m_psk_identity(device.key).await {
            Ok(identity) => identity.is_none(),
            Err(err) => return Err((ResponseType::ServiceUnavailable, err.to_string())),
        }
    };
    if !allowed {
        return Err((
            ResponseType::Forbidden,
            format!("endpoint {endpoint:?} must register over DTLS with its own PSK identity"),
        ));
    }
    // A location nobody can guess from another's.
    let location = hex::encode(state.lwm2m.exchanges.token());
    let lifetime = query.lifetime.unwrap_or(DEFAULT_LIFETIME);
    let registration = Registration {
        device: device.key,
        tenant: device.tenant,
        device_id: device.id.clone(),
        endpoint: endpoint.clone(),
        location: location.clone(),
        link,
        lifetime,
        version,
        root: links.root,
        objects: links.objects,
        // A little slack over the lifetime, as clients update at lt minus a margin.
        expires_at: now() + i64::from(lifetime) * 1000 + 30_000,
        observed: false,
        info_read: false,
        told: None,
        offered: None,
        gone: tokio_util::sync::CancellationToken::new(),
    };
    {
        let mut inner = state.lwm2m.inner();
        // The same device registering again replaces its registration and its observations
        // (what it was told stays true).
        inner.observations.retain(|_, o| o.device != device.key);
        let mut registration = registration;
        if let Some(old) = inner.registrations.get(&device.key) {
            registration.told = old.told;
            // The old registration's requests will never be answered (the client rebooted):
            // whatever awaits them moves on now instead of after their back-off.
            old.gone.cancel();
            state.lwm2m.exchanges.abandon(&old.link);
        }
        state.lwm2m.remember(&registration);
        inner.registrations.insert(device.key, registration);
    }
    response.add_option(CoapOption::LocationPath, b"rd".to_vec());
    response.add_option(CoapOption::LocationPath, location.into_bytes());
    // Our requests go out after this answer (node-lib only listens once it has it).
    let (state, key) = (state.clone(), device.key);
    tokio::spawn(async move {
        let _ = state.store.touch_device(key).await;
        state.lwm2m.kick(&state, key);
    });
    Ok(ResponseType::Created)
}

pub(super) fn update(state: &Ctx, link: Link, request: &Packet, location: &str) -> Answer {
    let queries = strings(request, CoapOption::UriQuery);
    let query = lwm2m::register_query(queries.iter().map(String::as_str)).map_err(|e| bad(e.0))?;
    let links = if request.payload.is_empty() {
        None
    } else {
        Some(lwm2m::links(&request.payload).map_err(|e| bad(e.0))?)
    };
    let device = {
        let mut inner = state.lwm2m.inner();
        let device = own_registration(state, &inner, link, location)?;
        let Some(registration) = inner.registrations.get_mut(&device) else {
            return Err((ResponseType::NotFound, "no such registration".into()));
        };
        // Over DTLS the source may be a new address (NAT rebinding): the session proved the
        // device. Over NoSec it is the same address (own_registration).
        if registration.link != link {
            state.lwm2m.exchanges.abandon(&registration.link);
        }
        registration.link = link;
        if let Some(lifetime) = query.lifetime {
            registration.lifetime = lifetime;
        }
        if let Some(links) = links {
            registration.root = links.root;
            registration.objects = links.objects;
        }
        registration.expires_at = now() + i64::from(registration.lifetime) * 1000 + 30_000;
        state.lwm2m.remember(registration);
        registration.device
    };
    state.lwm2m.kick(state, device);
    Ok(ResponseType::Changed)
}

/// The registration at `location` if `link` may change it: over DTLS, a session authenticated
/// as the registered device; over NoSec, the very address that registered over NoSec. Anything
/// else finds no registration (4.04), so that locations cannot be probed.
fn own_registration(
    state: &Ctx,
    inner: &Inner,
    link: Link,
    location: &str,
) -> Result<DeviceKey, (ResponseType, String)> {
    let not_found = || (ResponseType::NotFound, "no such registration".to_owned());
    let registration = inner
        .registrations
        .values()
        .find(|r| r.location == location)
        .ok_or_else(not_found)?;
    let own = match (registration.link.secure, link.secure) {
        (true, true) => state.lwm2m.dtls_device(link.peer) == Some(registration.device),
        (false, false) => registration.link.peer == link.peer,
        _ => false,
    };
    if own {
        Ok(registration.device)
    } else {
        Err(not_found())
    }
}

/// The device an endpoint name stands for, resolved within one tenant. Over DTLS that is the
/// tenant of the device the session authenticated as. Over NoSec the default tenant comes first
/// (its endpoint names, then its device ids), so that no other tenant can take one of its
/// devices' names; then an endpoint name that exactly one other tenant registered; then a new
/// device of the default tenant, when it lets devices register themselves.
pub(super) async fn device_for(
    state: &Ctx,
    link: Link,
    endpoint: &str,
) -> Result<Option<updraft_store::Device>, ApiError> {
    use updraft_store::CredentialKind::Lwm2mEndpoint;
    let session = if link.secure {
        match state.lwm2m.dtls_device(link.peer) {
            Some(device) => state.store.device_by_key(device).await?,
            None => return Ok(None),
        }
    } else {
        None
    };
    let tenant = match &session {
        Some(device) => state.store.tenant_by_key(device.tenant).await?,
        None => {
            state
                .store
                .tenant_by_name(crate::kernel::DEFAULT_TENANT)
                .await?
        }
    };
    let Some(tenant) = tenant else {
        return Ok(None);
    };
    if let Some(device) = state
        .store
        .device_by_credential_in(tenant.key, Lwm2mEndpoint, endpoint)
        .await?
    {
        return Ok(Some(device));
    }
    let id = DeviceId::parse(endpoint).ok();
    if let Some(id) = &id
        && let Some(device) = state.store.device(tenant.key, id).await?
    {
        return Ok(Some(device));
    }
    if session.is_some() {
        return Ok(None);
    }
    if let Some(device) = state
        .store
        .device_by_credential(Lwm2mEndpoint, endpoint)
        .await?
    {
        return Ok(Some(device));
    }
    let Some(id) = id else {
        return Ok(None);
    };
    if !tenant.settings.auto_register || !state.registrations.allow(&tenant.key) {
        return Ok(None);
    }
    let new = NewDevice {
        id,
        project: None,
        profile: None,
        tags: Vec::new(),
        attributes: Default::default(),
    };
    Ok(Some(
        state.store.create_device(tenant.key, &new, &[]).await?,
    ))
}

/// One Block2 block of the package a download grant opens (CoAP pull). Every block is its own
/// request (Anjay sends a new token each time); the ETag names the package.
pub(super) async fn package_block(
    state: &Ctx,
    token: &str,
    request: &Packet,
    response: &mut Packet,
) -> Answer {
    let artifact = state
        .grants
        .artifact(&state.app, token)
        .await
        .map_err(|e| (ResponseType::InternalServerError, e.message))?
        .ok_or_else(|| {
            (
                ResponseType::NotFound,
                "unknown or expired package".to_owned(),
            )
        })?;
    let (sha256, size) = (artifact.checksums.sha256, artifact.size);
    let window = block2(request, size).ok_or_else(|| {
        (
            ResponseType::BadOption,
            "that block is past the end".to_owned(),
        )
    })?;
    let (start, len) = (window.start, window.len);
    response.add_option(CoapOption::Block2, window.block.encode());
    response.add_option(CoapOption::Size2, encode_uint(size));
    response.add_option(CoapOption::ETag, sha256.as_bytes()[..8].to_vec());
    response.add_option(
        CoapOption::ContentFormat,
        encode_uint(u64::from(lwm2m::OPAQUE)),
    );
    if len > 0 {
        let payload = crate::kernel::download::blob_bytes(state, &sha256, start, len)
            .await
            .map_err(|e| (ResponseType::InternalServerError, e.to_string()))?;
        response.payload = payload.to_vec();
    }
    Ok(ResponseType::Content)
}

/// The 1.1 Send operation (`POST /dp`): values of the sender's resources, as a notification
/// would carry them (flownexus's firmware reports /5/0/3 and /5/0/5 this way).
pub(super) async fn send(state: &Ctx, link: Link, request: &Packet) -> Answer {
    let device = state
        .lwm2m
        .inner()
        .registrations
        .values()
        .find(|r| r.link == link && r.expires_at > now())
        .map(|r| r.device)
        .ok_or_else(|| {
            (
                ResponseType::Forbidden,
                "register before sending".to_owned(),
            )
        })?;
    let content_format = request
        .get_first_option(CoapOption::ContentFormat)
        .map_or(lwm2m::SENML_CBOR, |v| {
            u16::try_from(uint(v)).unwrap_or(u16::MAX)
        });
    let values = lwm2m::senml_numbers(content_format, &request.payload).map_err(|e| bad(e.0))?;
    for (path, value) in values {
        let path = path.trim_end_matches('/');
        if matches!(path, "/5/0/3" | "/5/0/5")
            && let Err(err) = state.lwm2m.value(state, device, path, value as i64).await
        {
            return Err((ResponseType::InternalServerError, err.message));
        }
    }
    Ok(ResponseType::Changed)
}
