//! The built-in MQTT endpoint (3.1.1 and 5, plain TCP or TLS). It terminates device connections
//! itself, as ThingsBoard's and AWS IoT's transports do; it is not a general broker: devices talk
//! to the server, never to each other. It knows packets, logins and subscriptions; what a topic
//! means is up to the [`TopicHandler`]s that protocol adapters register.
//!
//! One task per connection; memory per connection is its read buffer and a small queue of
//! pushes. Large payloads (firmware chunks) are streamed by handlers into the socket.

pub mod codec;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;

use self::codec::{CodecError, Inbound, Outbound};
pub use self::session::{DeviceStream, PushQueue, Session, Sessions, topic_matches};
use crate::kernel::auth::{self, Login, LoginKind};
use crate::kernel::error::ApiResult;
use crate::kernel::state::AppState;

/// Largest packet a device may send (a telemetry message, not a firmware: those only go out).
pub const MAX_INBOUND_PACKET: usize = 256 * 1024;

/// Largest CONNECT: a client id, a user name and a password.
const MAX_CONNECT_PACKET: usize = 8 * 1024;

/// The longest a connection may stay silent, whatever keep-alive it asked for (0 included: MQTT's
/// "no keep-alive" does not let a connection hold its socket forever). AWS IoT's own bound.
const MAX_IDLE: Duration = Duration::from_secs(1200);

/// A connection's idle limit for the keep-alive its CONNECT asked for: one and a half periods
/// (the server may close a connection silent that long), at most [`MAX_IDLE`].
fn idle_limit(keep_alive: u16) -> Duration {
    match keep_alive {
        0 => MAX_IDLE,
        secs => Duration::from_millis(u64::from(secs) * 1500).min(MAX_IDLE),
    }
}

/// A protocol's topics on the endpoint.
#[async_trait]
pub trait TopicHandler: Send + Sync {
    /// The protocol's name (what a session that used these topics speaks).
    fn name(&self) -> &'static str;
    /// Whether `topic` (or a subscription filter) is this protocol's, for this session.
    fn claims(&self, session: &Session, topic: &str) -> bool;
    /// Why a topic or filter this session may not touch ends the connection, if it is one.
    fn forbids(&self, session: &Session, topic: &str) -> Option<&'static str> {
        let _ = (session, topic);
        None
    }
    /// Handles a PUBLISH on a claimed topic; an error is the device's (logged, the connection
    /// stays).
    async fn publish(&self, session: &mut Session, topic: &str, payload: Bytes) -> ApiResult<()>;
}

/// The endpoint: the state, the connected sessions and the protocols' topic handlers.
pub struct Endpoint {
    state: AppState,
    sessions: Arc<Sessions>,
    handlers: Vec<Arc<dyn TopicHandler>>,
    /// Connections closed at once for want of room.
    refused: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("{0}")]
    Protocol(&'static str),
}

impl Endpoint {
    pub fn new(
        state: AppState,
        sessions: Arc<Sessions>,
        handlers: Vec<Arc<dyn TopicHandler>>,
    ) -> Arc<Self> {
        let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
        state.metrics.register(
            "updraft_mqtt_refused_connections_total",
            "MQTT connections closed at once because the server's connection cap was reached.",
            refused.clone(),
        );
        Arc::new(Self {
            state,
            sessions,
            handlers,
            refused,
        })
    }

    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// The next connection the server has room for: one over the connection cap is closed at
    /// once. A failing accept (out of file descriptors) backs off instead of spinning.
    async fn accept(
        &self,
        listener: &TcpListener,
    ) -> (tokio::net::TcpStream, OwnedSemaphorePermit) {
        loop {
            match listener.accept().await {
                // Shutting down: new devices go to another replica.
                Ok(_)
                    if self
                        .state
                        .draining
                        .load(std::sync::atomic::Ordering::SeqCst) => {}
                Ok((stream, _)) => match self.state.connections.clone().try_acquire_owned() {
                    Ok(permit) => {
                        // A chunk goes out as a PUBLISH header and then its body: without
                        // NODELAY the body waits for the header's ACK, which the device delays.
                        let _ = stream.set_nodelay(true);
                        return (stream, permit);
                    }
                    Err(_) => {
                        self.refused
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        drop(stream);
                    }
                },
                Err(err) => {
                    tracing::warn!(error = %err, "mqtt accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Accepts device connections until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, permit) = self.accept(&listener).await;
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(err) = this.connection(Box::new(stream), None).await {
                    tracing::debug!(error = %err, "mqtt connection ended");
                }
                drop(permit);
            });
        }
    }

    /// Accepts device connections over TLS until the listener fails. A client certificate, if
    /// the device presents one, is its credential: it must be registered to a device.
    pub async fn serve_tls(
        self: Arc<Self>,
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
    ) {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let handshake_timeout = self.state.config.limits.handshake_timeout;
        loop {
            let (stream, permit) = self.accept(&listener).await;
            let this = self.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await;
                let stream = match handshake {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(err)) => {
                        tracing::debug!(error = %err, "mqtt tls handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let fingerprint = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|cert| crate::transport::tls::fingerprint(cert));
                if let Err(err) = this.connection(Box::new(stream), fingerprint).await {
                    tracing::debug!(error = %err, "mqtt connection ended");
                }
                drop(permit);
            });
        }
    }

    /// The device a CONNECT's credentials name, and how it proved it.
    async fn login(
        &self,
        client_cert: Option<String>,
        username: Option<String>,
        password: Option<String>,
    ) -> Option<Login> {
        let state = &self.state;
        // Token-only clients put their token in the user name; others send `{device}@{tenant}`
        // (or the device id) and the token as the password. AWS's SDKs append
        // `?SDK=…&Platform=…` metrics to the user name; AWS IoT ignores them. (Only beside a
        // password: a token alone in the user name is taken whole.)
        let username = match (username, password.as_deref()) {
            (Some(user), Some(token)) if !token.is_empty() => match user.split_once('?') {
                Some((user, _)) => Some(user.to_owned()),
                None => Some(user),
            },
            (user, _) => user,
        };
        let (device, kind) = match (client_cert, username.as_deref(), password.as_deref()) {
            // A client certificate is the credential, whatever else the CONNECT says (AWS IoT):
            // an unregistered one is refused.
            (Some(fingerprint), _, _) => (
                state
                    .store
                    .device_by_credential(updraft_store::CredentialKind::Certificate, &fingerprint)
                    .await
                    .ok()
                    .flatten()?,
                LoginKind::Certificate,
            ),
            (None, Some(user), Some(token)) if !token.is_empty() => (
                auth::device_by_login(state, user, token).await.ok()?,
                LoginKind::UserPassword,
            ),
            (None, Some(token), _) => (
                auth::device_by_token(state, token).await.ok()?,
                LoginKind::Token,
            ),
            _ => return None,
        };
        let gateway = match (kind, password.as_deref()) {
            (LoginKind::Token, _) | (_, None) => false,
            (_, Some(token)) => auth::is_gateway(state, &device, token)
                .await
                .unwrap_or(false),
        };
        Some(Login {
            device,
            kind,
            gateway,
        })
    }

    async fn connection(
        &self,
        mut stream: Box<dyn DeviceStream>,
        client_cert: Option<String>,
    ) -> Result<(), ConnectionError> {
        let mut buf = BytesMut::with_capacity(1024);
        let limits = &self.state.config.limits;
        // The whole CONNECT, and the login it carries, within the handshake timeout: a client
        // that trickles or stalls its CONNECT loses the socket.
        let handshake = tokio::time::timeout(limits.handshake_timeout, async {
            let version = loop {
                if let Some(version) = codec::connect_version(&buf)? {
                    break version;
                }
                if stream.read_buf(&mut buf).await? == 0 {
                    return Err(ConnectionError::Protocol("closed before CONNECT"));
                }
            };
            let (username, password, keep_alive) = loop {
                match codec::read(version, &mut buf, MAX_CONNECT_PACKET)? {
                    Some(Inbound::Connect {
                        username,
                        password,
                        keep_alive,
                    }) => break (username, password, keep_alive),
                    Some(_) => {
                        return Err(ConnectionError::Protocol("first packet is not CONNECT"));
                    }
                    None => {
                        if stream.read_buf(&mut buf).await? == 0 {
                            return Err(ConnectionError::Protocol("closed in CONNECT"));
                        }
                    }
                }
            };
            let login = self.login(client_cert, username, password).await;
            Ok((version, login, keep_alive))
        });
        let (version, login, keep_alive) = handshake
            .await
            .map_err(|_| ConnectionError::Protocol("no CONNECT in time"))??;
        let mut out = BytesMut::new();
        let Some(login) = login else {
            codec::write(version, &Outbound::ConnAck { accepted: false }, &mut out)?;
            stream.write_all(&out).await?;
            stream.flush().await?;
            return Err(ConnectionError::Protocol("not authorized"));
        };
        let pushes = Arc::new(PushQueue::default());
        // A device's newest connection wins: beyond its cap, the oldest are closed (a device
        // that rebooted does not wait for its half-open connection to time out). The session is
        // registered before its CONNACK goes out, so "newest" is the order devices see.
        let (id, taken_over) = self.sessions.add(
            &login.device,
            pushes.clone(),
            limits.max_connections_per_device,
        );
        let accepted = async {
            codec::write(version, &Outbound::ConnAck { accepted: true }, &mut out)?;
            stream.write_all(&out).await?;
            stream.flush().await?;
            Ok::<_, ConnectionError>(())
        };
        let accepted = tokio::select! {
            result = accepted => result,
            () = taken_over.cancelled() => Err(ConnectionError::Protocol("a newer connection of the device took over")),
        };
        if let Err(error) = accepted {
            self.sessions.remove(login.device.key, id);
            return Err(error);
        }
        let _ = self.state.store.touch_device(login.device.key).await;
        let mut session = Session {
            login,
            version,
            stream,
            out,
            subscriptions: Vec::new(),
        };
        let result = tokio::select! {
            result = self.run(&mut session, id, &mut buf, &pushes, idle_limit(keep_alive)) => result,
            () = taken_over.cancelled() => Err(ConnectionError::Protocol("a newer connection of the device took over")),
        };
        self.sessions.remove(session.login.device.key, id);
        result
    }

    async fn run(
        &self,
        session: &mut Session,
        id: u64,
        buf: &mut BytesMut,
        pushes: &PushQueue,
        idle_limit: Duration,
    ) -> Result<(), ConnectionError> {
        loop {
            while let Some(packet) = codec::read(session.version, buf, MAX_INBOUND_PACKET)? {
                if !self.handle(session, id, packet).await? {
                    return Ok(());
                }
            }
            let idle = tokio::time::sleep(idle_limit);
            tokio::select! {
                read = session.stream.read_buf(buf) => {
                    if read? == 0 {
                        return Ok(());
                    }
                }
                packet = pushes.next() => {
                    let deliver = match &packet {
                        Outbound::Publish { topic, .. } => session.subscribed(topic),
                        _ => true,
                    };
                    if deliver {
                        session.send(&packet).await?;
                    }
                }
                () = idle => return Err(ConnectionError::Protocol("keep-alive expired")),
            }
        }
    }

    /// The handler whose topic this is, after every handler has had its say on whether the
    /// session may touch it at all.
    fn handler_for(
        &self,
        session: &Session,
        topic: &str,
    ) -> Result<Option<&Arc<dyn TopicHandler>>, ConnectionError> {
        if let Some(why) = self.handlers.iter().find_map(|h| h.forbids(session, topic)) {
            return Err(ConnectionError::Protocol(why));
        }
        Ok(self.handlers.iter().find(|h| h.claims(session, topic)))
    }

    /// Handles one packet; false ends the connection.
    async fn handle(
        &self,
        session: &mut Session,
        id: u64,
        packet: Inbound,
    ) -> Result<bool, ConnectionError> {
        let device = session.login.device.key;
        match packet {
            Inbound::Connect { .. } => return Err(ConnectionError::Protocol("a second CONNECT")),
            Inbound::PingReq => session.send(&Outbound::PingResp).await?,
            Inbound::Disconnect => return Ok(false),
            Inbound::Subscribe { pkid, filters } => {
                let max = self.state.config.limits.max_subscriptions;
                let mut granted = Vec::with_capacity(filters.len());
                for (filter, qos) in filters {
                    if let Some(handler) = self.handler_for(session, &filter)? {
                        self.sessions.spoke(device, id, handler.name());
                    }
                    // The same filter again replaces the first (MQTT); a new one beyond the cap
                    // is refused in the SUBACK and the connection stays.
                    if session.subscriptions.contains(&filter) {
                        granted.push(qos.min(1));
                    } else if session.subscriptions.len() < max {
                        session.subscriptions.push(filter);
                        granted.push(qos.min(1));
                    } else {
                        granted.push(codec::SUBSCRIBE_REFUSED);
                    }
                }
                session.send(&Outbound::SubAck { pkid, granted }).await?;
            }
            Inbound::Unsubscribe { pkid, filters } => {
                session.subscriptions.retain(|s| !filters.contains(s));
                let count = filters.len();
                session.send(&Outbound::UnsubAck { pkid, count }).await?
            }
            Inbound::Publish {
                topic,
                payload,
                qos,
                pkid,
            } => {
                let result = match self.handler_for(session, &topic)? {
                    Some(handler) => {
                        self.sessions.spoke(device, id, handler.name());
                        handler.clone().publish(session, &topic, payload).await
                    }
                    None => Err(crate::kernel::error::ApiError::bad_request(
                        "invalid_request",
                        "unknown topic",
                    )),
                };
                if let Err(err) = result {
                    // A bad message is the device's problem: log it, keep the connection.
                    tracing::debug!(device = %session.login.device.id, topic, error = %err.message, "refused device message");
                }
                // Acknowledged once handled, so a device that waits for its PUBACK knows the
                // server has applied the message.
                if qos > 0 {
                    session.send(&Outbound::PubAck { pkid }).await?;
                }
            }
            Inbound::Ignored => {}
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_keep_alive_still_has_an_idle_limit() {
        assert_eq!(idle_limit(0), MAX_IDLE);
        assert_eq!(idle_limit(10), Duration::from_secs(15));
        assert_eq!(idle_limit(u16::MAX), MAX_IDLE);
    }

    #[test]
    fn filters_match_as_mqtt_says() {
        for (filter, topic, expected) in [
            ("v1/devices/me/attributes", "v1/devices/me/attributes", true),
            (
                "v1/devices/me/attributes/response/+",
                "v1/devices/me/attributes/response/7",
                true,
            ),
            ("v2/fw/response/+", "v2/fw/response/1/chunk/0", false),
            ("v2/fw/response/#", "v2/fw/response/1/chunk/0", true),
            ("#", "anything/at/all", true),
            ("a/+/c", "a/b", false),
        ] {
            assert_eq!(
                topic_matches(filter, topic),
                expected,
                "{filter} vs {topic}"
            );
        }
    }
}
