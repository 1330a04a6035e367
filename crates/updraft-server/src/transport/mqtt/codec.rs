//! MQTT 3.1.1 and 5 packets as the endpoint needs them: the few it reads and writes, over
//! rumqttc's packet codec, with the version chosen per connection from its CONNECT.

use bytes::{BufMut, Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5.
    V5,
}

/// What a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Connect {
        username: Option<String>,
        password: Option<String>,
        keep_alive: u16,
    },
    Publish {
        topic: String,
        payload: Bytes,
        qos: u8,
        pkid: u16,
    },
    Subscribe {
        pkid: u16,
        filters: Vec<(String, u8)>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect,
    /// Acknowledgements and anything else the endpoint has no use for.
    Ignored,
}

/// What the endpoint sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    ConnAck { accepted: bool },
    Publish { topic: String, payload: Bytes },
    SubAck { pkid: u16, granted: Vec<u8> },
    UnsubAck { pkid: u16, count: usize },
    PubAck { pkid: u16 },
    PingResp,
}

/// Why bytes could not be read as a packet.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("not an MQTT connection: {0}")]
    NotMqtt(String),
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("unsupported protocol level {0}")]
    UnsupportedVersion(u8),
}

/// The protocol level of a CONNECT at the start of `buf`: `Ok(None)` when more bytes are needed.
pub fn connect_version(buf: &[u8]) -> Result<Option<Version>, CodecError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first >> 4 != 1 {
        return Err(CodecError::NotMqtt(format!(
            "first packet type {} is not CONNECT",
            first >> 4
        )));
    }
    // Fixed header: type byte, then up to four bytes of remaining length.
    let mut index = 1;
    loop {
        let Some(&byte) = buf.get(index) else {
            return Ok(None);
        };
        index += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if index > 4 {
            return Err(CodecError::Malformed(
                "remaining length over four bytes".into(),
            ));
        }
    }
    let (Some(&hi), Some(&lo)) = (buf.get(index), buf.get(index + 1)) else {
        return Ok(None);
    };
    let name_len = usize::from(u16::from_be_bytes([hi, lo]));
    let Some(&level) = buf.get(index + 2 + name_len) else {
        return Ok(None);
    };
    match level {
        3 | 4 => Ok(Some(Version::V4)),
        5 => Ok(Some(Version::V5)),
        other => Err(CodecError::UnsupportedVersion(other)),
    }
}

/// Reads one packet from `buf` (consuming it); `Ok(None)` when more bytes are needed.
pub fn read(
    version: Version,
    buf: &mut BytesMut,
    max_size: usize,
) -> Result<Option<Inbound>, CodecError> {
    if buf.is_empty() {
        return Ok(None);
    }
    match version {
        Version::V4 => match v4::Packet::read(buf, max_size) {
            Ok(packet) => Ok(Some(from_v4(packet))),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(err) => Err(CodecError::Malformed(err.to_string())),
        },
        Version::V5 => {
            match v5::Packet::read(buf, Some(u32::try_from(max_size).unwrap_or(u32::MAX))) {
                Ok(packet) => Ok(Some(from_v5(packet))),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
                Err(err) => Err(CodecError::Malformed(err.to_string())),
            }
        }
    }
}

fn from_v4(packet: v4::Packet) -> Inbound {
    match packet {
        v4::Packet::Connect(connect) => {
            let (username, password) = match connect.login {
                Some(login) => (Some(login.username), Some(login.password)),
                None => (None, None),
            };
            Inbound::Connect {
                username,
                password,
                keep_alive: connect.keep_alive,
            }
        }
        v4::Packet::Publish(publish) => Inbound::Publish {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos as u8,
            pkid: publish.pkid,
        },
        v4::Packet::Subscribe(subscribe) => Inbound::Subscribe {
            pkid: subscribe.pkid,
            filters: subscribe
                .filters
                .into_iter()
                .map(|f| (f.path, f.qos as u8))
                .collect(),
        },
        v4::Packet::Unsubscribe(unsubscribe) => Inbound::Unsubscribe {
            pkid: unsubscribe.pkid,
            filters: unsubscribe.topics,
        },
        v4::Packet::PingReq => Inbound::PingReq,
        v4::Packet::Disconnect => Inbound::Disconnect,
        _ => Inbound::Ignored,
    }
}

fn from_v5(packet: v5::Packet) -> Inbound {
    match packet {
        v5::Packet::Connect(connect, _, login) => {
            let (username, password) = match login {
                Some(login) => (Some(login.username), Some(login.password)),
                None => (None, None),
            };
            Inbound::Connect {
                username,
                password,
                keep_alive: connect.keep_alive,
            }
        }
        v5::Packet::Publish(publish) => Inbound::Publish {
            topic: String::from_utf8_lossy(&publish.topic).into_owned(),
            payload: publish.payload,
            qos: publish.qos as u8,
            pkid: publish.pkid,
        },
        v5::Packet::Subscribe(subscribe) => Inbound::Subscribe {
            pkid: subscribe.pkid,
            filters: subscribe
                .filters
                .into_iter()
                .map(|f| (f.path, f.qos as u8))
                .collect(),
        },
        v5::Packet::Unsubscribe(unsubscribe) => Inbound::Unsubscribe {
            pkid: unsubscribe.pkid,
            filters: unsubscribe.filters,
        },
        v5::Packet::PingReq(_) => Inbound::PingReq,
        v5::Packet::Disconnect(_) => Inbound::Disconnect,
        _ => Inbound::Ignored,
    }
}

/// The SUBACK code refusing a subscription.
pub const SUBSCRIBE_REFUSED: u8 = 0x80;

fn granted_v4(qos: u8) -> v4::SubscribeReasonCode {
    match qos {
        SUBSCRIBE_REFUSED => v4::SubscribeReasonCode::Failure,
        0 => v4::SubscribeReasonCode::Success(rumqttc::QoS::AtMostOnce),
        _ => v4::SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce),
    }
}

fn granted_v5(qos: u8) -> v5::SubscribeReasonCode {
    match qos {
        SUBSCRIBE_REFUSED => v5::SubscribeReasonCode::QuotaExceeded,
        0 => v5::SubscribeReasonCode::Success(rumqttc::v5::mqttbytes::QoS::AtMostOnce),
        _ => v5::SubscribeReasonCode::Success(rumqttc::v5::mqttbytes::QoS::AtLeastOnce),
    }
}

/// Appends `packet` to `buf`.
pub fn write(version: Version, packet: &Outbound, buf: &mut BytesMut) -> Result<(), CodecError> {
    let malformed = |e: &dyn std::fmt::Display| CodecError::Malformed(e.to_string());
    match version {
        Version::V4 => {
            let packet = match packet {
                Outbound::ConnAck { accepted } => {
                    let code = if *accepted {
                        v4::ConnectReturnCode::Success
                    } else {
                        v4::ConnectReturnCode::NotAuthorized
                    };
                    v4::Packet::ConnAck(v4::ConnAck::new(code, false))
                }
                Outbound::Publish { topic, payload } => {
                    v4::Packet::Publish(v4::Publish::from_bytes(
                        topic.clone(),
                        rumqttc::QoS::AtMostOnce,
                        payload.clone(),
                    ))
                }
                Outbound::SubAck { pkid, granted } => v4::Packet::SubAck(v4::SubAck::new(
                    *pkid,
                    granted.iter().map(|q| granted_v4(*q)).collect(),
                )),
                Outbound::UnsubAck { pkid, .. } => v4::Packet::UnsubAck(v4::UnsubAck::new(*pkid)),
                Outbound::PubAck { pkid } => v4::Packet::PubAck(v4::PubAck::new(*pkid)),
                Outbound::PingResp => v4::Packet::PingResp,
            };
            packet.write(buf, usize::MAX).map_err(|e| malformed(&e))?;
        }
        Version::V5 => {
            let packet = match packet {
                Outbound::ConnAck { accepted } => {
                    let code = if *accepted {
                        v5::ConnectReturnCode::Success
                    } else {
                        v5::ConnectReturnCode::NotAuthorized
                    };
                    v5::Packet::ConnAck(v5::ConnAck {
                        session_present: false,
                        code,
                        properties: None,
                    })
                }
                Outbound::Publish { topic, payload } => v5::Packet::Publish(v5::Publish::new(
                    topic.clone(),
                    rumqttc::v5::mqttbytes::QoS::AtMostOnce,
                    payload.clone(),
                    None,
                )),
                Outbound::SubAck { pkid, granted } => v5::Packet::SubAck(v5::SubAck {
                    pkid: *pkid,
                    return_codes: granted.iter().map(|q| granted_v5(*q)).collect(),
                    properties: None,
                }),
                Outbound::UnsubAck { pkid, count } => v5::Packet::UnsubAck(v5::UnsubAck {
                    pkid: *pkid,
                    reasons: vec![v5::UnsubAckReason::Success; *count],
                    properties: None,
                }),
                Outbound::PubAck { pkid } => v5::Packet::PubAck(v5::PubAck::new(*pkid, None)),
                Outbound::PingResp => v5::Packet::PingResp(v5::PingResp),
            };
            packet.write(buf, None).map_err(|e| malformed(&e))?;
        }
    }
    Ok(())
}

/// The header of a QoS 0 PUBLISH of `payload_len` bytes on `topic`, so that the payload can
/// follow from the blob store without ever being held whole in memory.
pub fn publish_header(version: Version, topic: &str, payload_len: u64) -> BytesMut {
    let properties = match version {
        Version::V4 => 0u64,
        Version::V5 => 1, // an empty property list: one zero byte
    };
    let remaining = 2 + topic.len() as u64 + properties + payload_len;
    let mut buf = BytesMut::with_capacity(8 + topic.len());
    buf.put_u8(0x30);
    let mut rest = remaining;
    loop {
        let mut byte = (rest % 128) as u8;
        rest /= 128;
        if rest > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if rest == 0 {
            break;
        }
    }
    buf.put_u16(u16::try_from(topic.len()).unwrap_or(u16::MAX));
    buf.put_slice(topic.as_bytes());
    if version == Version::V5 {
        buf.put_u8(0);
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip_publish(version: Version, payload: &[u8]) {
        let mut framed = publish_header(version, "v2/fw/response/1/chunk/0", payload.len() as u64);
        framed.extend_from_slice(payload);
        let mut reference = BytesMut::new();
        let outbound = Outbound::Publish {
            topic: "v2/fw/response/1/chunk/0".into(),
            payload: Bytes::copy_from_slice(payload),
        };
        write(version, &outbound, &mut reference).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(framed, reference, "{version:?}, {} bytes", payload.len());
    }

    #[test]
    fn streamed_publish_headers_match_the_codec() {
        for version in [Version::V4, Version::V5] {
            for len in [0usize, 1, 100, 127, 128, 16_383, 16_384, 2_097_152] {
                round_trip_publish(version, &vec![7u8; len]);
            }
        }
    }

    #[test]
    fn the_connect_level_decides_the_codec() {
        let mut v4_connect = BytesMut::new();
        let mut connect = v4::Connect::new("c");
        connect.set_login("token", "");
        v4::Packet::Connect(connect)
            .write(&mut v4_connect, usize::MAX)
            .unwrap_or_default();
        assert_eq!(
            connect_version(&v4_connect).ok().flatten(),
            Some(Version::V4)
        );
        assert_eq!(connect_version(&v4_connect[..3]).ok().flatten(), None);
        let read_back = read(Version::V4, &mut v4_connect.clone(), 1 << 20)
            .ok()
            .flatten();
        assert_eq!(
            read_back,
            Some(Inbound::Connect {
                username: Some("token".into()),
                password: Some(String::new()),
                keep_alive: 10
            })
        );
        assert!(connect_version(&[0x30, 0]).is_err());
        assert!(connect_version(&[0x10, 10, 0, 4, b'M', b'Q', b'T', b'T', 9]).is_err());
        // Garbage never panics.
        for bytes in [
            &[0x10, 0xff, 0xff, 0xff, 0xff, 0xff][..],
            &[0x10, 2, 0xff, 0xff],
            &[0x30, 3, 0, 9, 1],
        ] {
            let _ = connect_version(bytes);
            let _ = read(Version::V4, &mut BytesMut::from(bytes), 1 << 20);
            let _ = read(Version::V5, &mut BytesMut::from(bytes), 1 << 20);
        }
    }
}
