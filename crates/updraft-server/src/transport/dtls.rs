//! DTLS 1.2 server sessions with pre-shared keys (RFC 7925), on the system's OpenSSL, sans-IO:
//! datagrams in, datagrams out.
//!
//! A ClientHello from an address that holds no session is answered statelessly (OpenSSL's
//! `DTLSv1_listen`): a HelloVerifyRequest whose cookie is an HMAC of the address, the client's
//! random and the minute. A session — the only per-client state — is created once a client echoes
//! a valid cookie, i.e. once it has proved that it receives at its address (RFC 6347 §4.2.1). A
//! flood of spoofed ClientHellos costs one HMAC and one answer each, and no memory.
//!
//! The one place in the workspace with `unsafe`: three libssl calls the openssl crates do not wrap
//! (`DTLSv1_listen`, and the DTLS timer controls), each on an SSL object this module owns.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::ffi::{c_int, c_long, c_void};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use foreign_types::ForeignTypeRef;
use openssl::ex_data::Index;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslMethod, SslOptions, SslSessionCacheMode, SslStream, SslVersion,
};
use updraft_core::DeviceKey;

/// Finds a PSK identity's device and key.
pub type PskLookup = Arc<dyn Fn(&[u8]) -> Option<(DeviceKey, Vec<u8>)> + Send + Sync>;

/// RFC 7925's mandatory suite first, then the other PSK AEAD suites clients offer. CCM_8 sits at
/// OpenSSL 3's security level 0 (its tag is 64 bits): constrained devices need it.
const CIPHERS: &str = "PSK-AES128-CCM8:PSK-AES128-CCM:PSK-AES128-GCM-SHA256:\
                       PSK-AES256-GCM-SHA384:PSK-CHACHA20-POLY1305:@SECLEVEL=0";

/// The path MTU our records are cut to (IPv6's minimum, less IP and UDP headers, fits).
const MTU: u32 = 1200;

/// A cookie is valid in the minute it was made and the next.
const COOKIE_PERIOD_SECS: u64 = 60;
const COOKIE_LEN: usize = 16;

/// DTLS_CTRL_GET_TIMEOUT and DTLS_CTRL_HANDLE_TIMEOUT (ssl.h's DTLSv1_get_timeout and
/// DTLSv1_handle_timeout are macros over SSL_ctrl).
const DTLS_CTRL_GET_TIMEOUT: c_int = 73;
const DTLS_CTRL_HANDLE_TIMEOUT: c_int = 74;

unsafe extern "C" {
    /// libssl's stateless ClientHello handling (ssl.h); not wrapped by the openssl crates.
    fn DTLSv1_listen(s: *mut openssl_sys::SSL, client: *mut c_void) -> c_int;
    fn BIO_ADDR_new() -> *mut c_void;
    fn BIO_ADDR_free(addr: *mut c_void);
}

#[repr(C)]
struct Timeval {
    tv_sec: c_long,
    tv_usec: c_long,
}

/// What a session's SSL object carries: the address its cookie was made for, and the device its
/// PSK identity named.
fn peer_index() -> Index<Ssl, SocketAddr> {
    static INDEX: OnceLock<Index<Ssl, SocketAddr>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().expect("an OpenSSL ex_data index"))
}

fn device_index() -> Index<Ssl, DeviceKey> {
    static INDEX: OnceLock<Index<Ssl, DeviceKey>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().expect("an OpenSSL ex_data index"))
}

/// The datagrams an SSL object reads and writes: OpenSSL reads one per call and writes one per
/// call (a stream BIO that keeps datagram boundaries).
#[derive(Default)]
struct Datagrams {
    inbound: VecDeque<Vec<u8>>,
    outbound: Vec<Vec<u8>>,
}

impl Read for Datagrams {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inbound.pop_front() {
            Some(datagram) => {
                let n = datagram.len().min(buf.len());
                buf[..n].copy_from_slice(&datagram[..n]);
                Ok(n)
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for Datagrams {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outbound.push(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The session failed or was closed by the peer: forget it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// What feeding a session produced.
#[derive(Debug, Default)]
pub struct Fed {
    /// Datagrams to send to the peer.
    pub out: Vec<Vec<u8>>,
    /// Application data received.
    pub app: Vec<Vec<u8>>,
}

/// The answer to a ClientHello from an address without a session.
pub enum Hello {
    /// No valid cookie: a HelloVerifyRequest to send, and nothing kept.
    Verify(Vec<Vec<u8>>),
    /// A valid cookie: a new session (handshaking) and its first flight.
    Session(Box<DtlsSession>, Fed),
    /// Not a ClientHello we answer.
    Dropped,
}

/// One DTLS association with one peer.
pub struct DtlsSession {
    stream: SslStream<Datagrams>,
    established: bool,
    pub started: Instant,
    pub last_heard: Instant,
}

impl DtlsSession {
    /// Whether the handshake completed.
    pub fn established(&self) -> bool {
        self.established
    }

    /// The device the client's PSK identity named, once the handshake used it.
    pub fn device(&self) -> Option<DeviceKey> {
        self.stream.ssl().ex_data(device_index()).copied()
    }

    /// Feeds one datagram: handshake progress, or application data.
    pub fn feed(&mut self, datagram: &[u8]) -> Result<Fed, Closed> {
        self.last_heard = Instant::now();
        self.stream.get_mut().inbound.push_back(datagram.to_vec());
        self.progress()
    }

    fn progress(&mut self) -> Result<Fed, Closed> {
        let mut fed = Fed::default();
        if !self.established {
            match self.stream.accept() {
                Ok(()) => self.established = true,
                Err(e) if e.code() == ErrorCode::WANT_READ => {}
                Err(_) => return Err(Closed),
            }
        }
        if self.established {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match self.stream.ssl_read(&mut buf) {
                    Ok(n) => fed.app.push(buf[..n].to_vec()),
                    Err(e) if e.code() == ErrorCode::WANT_READ => break,
                    Err(_) => return Err(Closed),
                }
            }
        }
        // Whatever is left unread (records OpenSSL discarded) goes: the queue stays bounded.
        self.stream.get_mut().inbound.clear();
        fed.out = std::mem::take(&mut self.stream.get_mut().outbound);
        Ok(fed)
    }

    /// Encrypts one application datagram; the records to send.
    pub fn send(&mut self, plaintext: &[u8]) -> Result<Vec<Vec<u8>>, Closed> {
        if !self.established {
            return Err(Closed);
        }
        self.stream.ssl_write(plaintext).map_err(|_| Closed)?;
        Ok(std::mem::take(&mut self.stream.get_mut().outbound))
    }

    /// When the handshake's retransmission timer fires, if it runs.
    pub fn timeout(&self) -> Option<Instant> {
        let mut tv = Timeval {
            tv_sec: 0,
            tv_usec: 0,
        };
        // SAFETY: the SSL object is alive; DTLS_CTRL_GET_TIMEOUT writes one timeval.
        let running = unsafe {
            openssl_sys::SSL_ctrl(
                self.stream.ssl().as_ptr(),
                DTLS_CTRL_GET_TIMEOUT,
                0,
                (&mut tv as *mut Timeval).cast(),
            )
        };
        (running == 1).then(|| {
            let secs = u64::try_from(tv.tv_sec).unwrap_or(0);
            let micros = u64::try_from(tv.tv_usec).unwrap_or(0);
            Instant::now() + Duration::from_secs(secs) + Duration::from_micros(micros)
        })
    }

    /// The retransmission timer fired: the flight to send again, or `Closed` after too many.
    pub fn handle_timeout(&mut self) -> Result<Vec<Vec<u8>>, Closed> {
        // SAFETY: the SSL object is alive; DTLS_CTRL_HANDLE_TIMEOUT takes no argument.
        let handled = unsafe {
            openssl_sys::SSL_ctrl(
                self.stream.ssl().as_ptr(),
                DTLS_CTRL_HANDLE_TIMEOUT,
                0,
                std::ptr::null_mut(),
            )
        };
        if handled < 0 {
            return Err(Closed);
        }
        Ok(std::mem::take(&mut self.stream.get_mut().outbound))
    }
}

/// The listener side: one OpenSSL context for every session, and the one SSL object that
/// answers ClientHellos statelessly until one of them carries a valid cookie.
pub struct DtlsServer {
    context: SslContext,
    listener: Option<SslStream<Datagrams>>,
}

impl DtlsServer {
    pub fn new(psks: PskLookup) -> Result<Self, openssl::error::ErrorStack> {
        let mut secret = [0u8; 32];
        openssl::rand::rand_bytes(&mut secret)?;
        let secret = Arc::new(secret);
        let mut builder = SslContext::builder(SslMethod::dtls())?;
        builder.set_min_proto_version(Some(SslVersion::DTLS1_2))?;
        builder.set_max_proto_version(Some(SslVersion::DTLS1_2))?;
        builder.set_cipher_list(CIPHERS)?;
        builder.set_options(SslOptions::COOKIE_EXCHANGE | SslOptions::NO_QUERY_MTU);
        builder.set_session_cache_mode(SslSessionCacheMode::OFF);
        builder.set_psk_server_callback(move |ssl, identity, key| {
            let Some((device, psk)) = identity.and_then(|identity| psks(identity)) else {
                // Zero bytes: OpenSSL answers unknown_psk_identity.
                return Ok(0);
            };
            if psk.len() > key.len() {
                return Ok(0);
            }
            key[..psk.len()].copy_from_slice(&psk);
            ssl.set_ex_data(device_index(), device);
            Ok(psk.len())
        });
        let generate = secret.clone();
        builder.set_cookie_generate_cb(move |ssl, out| {
            let cookie = cookie(&generate, ssl, period_now()).unwrap_or_default();
            let n = cookie.len().min(out.len());
            out[..n].copy_from_slice(&cookie[..n]);
            Ok(n)
        });
        builder.set_cookie_verify_cb(move |ssl, offered| {
            let now = period_now();
            [now, now.saturating_sub(1)].into_iter().any(|period| {
                cookie(&secret, ssl, period).is_some_and(|expected| {
                    expected.len() == offered.len() && openssl::memcmp::eq(&expected, offered)
                })
            })
        });
        Ok(Self {
            context: builder.build(),
            listener: None,
        })
    }

    fn new_listener(&self) -> Option<SslStream<Datagrams>> {
        let mut ssl = Ssl::new(&self.context).ok()?;
        ssl.set_accept_state();
        ssl.set_mtu(MTU).ok()?;
        SslStream::new(ssl, Datagrams::default()).ok()
    }

    /// Answers an epoch-0 ClientHello from `peer`, which holds no session (or holds one and
    /// starts over): statelessly unless its cookie is valid.
    pub fn hello(&mut self, peer: SocketAddr, datagram: &[u8]) -> Hello {
        let Some(mut listener) = self.listener.take().or_else(|| self.new_listener()) else {
            return Hello::Dropped;
        };
        // SAFETY: the stream owns the SSL object, and nothing else borrows it here.
        unsafe { openssl::ssl::SslRef::from_ptr_mut(listener.ssl().as_ptr()) }
            .set_ex_data(peer_index(), peer);
        listener.get_mut().inbound.push_back(datagram.to_vec());
        // SAFETY: the SSL object is alive and has its BIOs; BIO_ADDR_new/free pair up.
        let listened = unsafe {
            let client = BIO_ADDR_new();
            if client.is_null() {
                return Hello::Dropped;
            }
            let listened = DTLSv1_listen(listener.ssl().as_ptr(), client);
            BIO_ADDR_free(client);
            listened
        };
        listener.get_mut().inbound.clear();
        let out = std::mem::take(&mut listener.get_mut().outbound);

        match listened {
            1 => {
                let now = Instant::now();
                let mut session = DtlsSession {
                    stream: listener,
                    established: false,
                    started: now,
                    last_heard: now,
                };
                match session.progress() {
                    Ok(mut fed) => {
                        let mut first = out;
                        first.append(&mut fed.out);
                        fed.out = first;
                        Hello::Session(Box::new(session), fed)
                    }
                    Err(Closed) => Hello::Dropped,
                }
            }
            0 => {
                self.listener = Some(listener);
                if out.is_empty() {
                    Hello::Dropped
                } else {
                    Hello::Verify(out)
                }
            }
            // A fatal error leaves the listener unusable: a new one answers the next hello.
            _ => Hello::Dropped,
        }
    }
}

/// Whether a datagram starts with an epoch-0 ClientHello record.
pub fn is_client_hello(datagram: &[u8]) -> bool {
    datagram.len() > 13
        && datagram[0] == 22
        && u16::from_be_bytes([datagram[3], datagram[4]]) == 0
        && datagram[13] == 1
}

/// The epoch of a datagram's first record.
pub fn epoch(datagram: &[u8]) -> u16 {
    match datagram.get(3..5) {
        Some(e) => u16::from_be_bytes([e[0], e[1]]),
        None => 0,
    }
}

/// Record versions of epoch-0 handshake records are rewritten to DTLS 1.2's: mbedTLS 2.x sends
/// 0xFE00 in its ClientHello, which some engines drop (the handshake hash does not cover
/// record headers).
pub fn normalize_records(datagram: &mut [u8]) {
    let mut at = 0;
    while at + 13 <= datagram.len() {
        let content_type = datagram[at];
        let epoch = u16::from_be_bytes([datagram[at + 3], datagram[at + 4]]);
        let len = usize::from(u16::from_be_bytes([datagram[at + 11], datagram[at + 12]]));
        if content_type == 22 && epoch == 0 {
            datagram[at + 1] = 0xfe;
            datagram[at + 2] = 0xfd;
        }
        at += 13 + len;
    }
}

fn period_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / COOKIE_PERIOD_SECS)
        .unwrap_or(0)
}

/// HMAC-SHA256(secret, period ‖ address), cut to 16 bytes: proof that the client receives at
/// its address (the client's random is not part of it: `DTLSv1_listen` checks the cookie before
/// the SSL object knows the random, the handshake after).
fn cookie(secret: &[u8; 32], ssl: &openssl::ssl::SslRef, period: u64) -> Option<Vec<u8>> {
    let peer = ssl.ex_data(peer_index())?;
    let key = PKey::hmac(secret).ok()?;
    let mut signer = Signer::new(MessageDigest::sha256(), &key).ok()?;
    signer.update(&period.to_be_bytes()).ok()?;
    match peer.ip() {
        std::net::IpAddr::V4(ip) => signer.update(&ip.octets()).ok()?,
        std::net::IpAddr::V6(ip) => signer.update(&ip.octets()).ok()?,
    }
    signer.update(&peer.port().to_be_bytes()).ok()?;
    let mut tag = signer.sign_to_vec().ok()?;
    tag.truncate(COOKIE_LEN);
    Some(tag)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"secretsecret1234";

    fn server() -> DtlsServer {
        DtlsServer::new(Arc::new(|identity: &[u8]| {
            (identity == b"dev-1").then(|| (DeviceKey(7), KEY.to_vec()))
        }))
        .unwrap()
    }

    /// An OpenSSL DTLS-PSK client, sans-IO like the server.
    fn client(key: &'static [u8]) -> SslStream<Datagrams> {
        let mut builder = SslContext::builder(SslMethod::dtls()).unwrap();
        builder
            .set_cipher_list("PSK-AES128-CCM8:@SECLEVEL=0")
            .unwrap();
        builder.set_psk_client_callback(move |_, _, identity, psk| {
            identity[..6].copy_from_slice(b"dev-1\0");
            psk[..key.len()].copy_from_slice(key);
            Ok(key.len())
        });
        let mut ssl = Ssl::new(&builder.build()).unwrap();
        ssl.set_connect_state();
        SslStream::new(ssl, Datagrams::default()).unwrap()
    }

    /// The client's next flight (it has sent nothing, or was just fed).
    fn flight(client: &mut SslStream<Datagrams>) -> Vec<Vec<u8>> {
        let _ = client.do_handshake();
        std::mem::take(&mut client.get_mut().outbound)
    }

    fn feed_client(client: &mut SslStream<Datagrams>, datagrams: Vec<Vec<u8>>) {
        client.get_mut().inbound.extend(datagrams);
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    /// The cookie exchange up to the ClientHello that carries the cookie of `at`.
    fn cookie_hello(server: &mut DtlsServer, client: &mut SslStream<Datagrams>) -> Vec<u8> {
        let hello = flight(client).remove(0);
        let Hello::Verify(verify) = server.hello(addr(1), &hello) else {
            panic!("a ClientHello without a cookie holds no session");
        };
        feed_client(client, verify);
        flight(client).remove(0)
    }

    #[test]
    fn a_session_exists_only_for_the_address_the_cookie_was_made_for() {
        let mut server = server();
        let mut client = client(KEY);
        let with_cookie = cookie_hello(&mut server, &mut client);
        // Replayed from another address (or port), the cookie proves nothing.
        assert!(matches!(
            server.hello(addr(2), &with_cookie),
            Hello::Verify(_)
        ));
        let Hello::Session(mut session, fed) = server.hello(addr(1), &with_cookie) else {
            panic!("the echoed cookie opens a session");
        };
        feed_client(&mut client, fed.out);
        for _ in 0..4 {
            if session.established() {
                break;
            }
            for datagram in flight(&mut client) {
                let fed = session.feed(&datagram).unwrap();
                feed_client(&mut client, fed.out);
            }
        }
        assert!(session.established());
        assert_eq!(session.device(), Some(DeviceKey(7)));
        let _ = client.do_handshake();
        client.ssl_write(b"</rd>").unwrap();
        let records = std::mem::take(&mut client.get_mut().outbound);
        let app: Vec<Vec<u8>> = records
            .iter()
            .flat_map(|r| session.feed(r).unwrap().app)
            .collect();
        assert_eq!(app, [b"</rd>".to_vec()]);
        let answer = session.send(b"2.01").unwrap();
        feed_client(&mut client, answer);
        let mut buf = [0u8; 64];
        let n = client.ssl_read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"2.01");
    }

    /// A wrong key's Finished does not decrypt: DTLS drops such records silently (RFC 6347
    /// §4.1.2.7), so the session never completes and the listener's handshake timeout ends it.
    #[test]
    fn a_wrong_key_never_establishes() {
        let mut server = server();
        let mut client = client(b"wrong-key-000000");
        let with_cookie = cookie_hello(&mut server, &mut client);
        let Hello::Session(mut session, fed) = server.hello(addr(1), &with_cookie) else {
            panic!("the echoed cookie opens a session");
        };
        feed_client(&mut client, fed.out);
        for datagram in flight(&mut client) {
            if let Ok(fed) = session.feed(&datagram) {
                assert!(fed.app.is_empty());
            }
        }
        assert!(!session.established());
    }

    #[test]
    fn garbage_is_not_a_hello() {
        let mut server = server();
        for datagram in [&b""[..], b"\x16\xfe\xfd", &[0x16; 200]] {
            assert!(matches!(server.hello(addr(1), datagram), Hello::Dropped));
        }
    }
}
