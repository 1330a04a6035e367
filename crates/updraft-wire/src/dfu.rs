//! Drogue DFU messages on the wire: a Status in packed CBOR (integer keys), named CBOR (text
//! keys) or JSON, and a Command back in packed CBOR or JSON. Hand-mapped over generic CBOR and
//! JSON values, since one decoder serves all three forms.

use base64::Engine;
use ciborium::Value as Cbor;
use serde_json::{Value as Json, json};

/// What the device reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub version: Vec<u8>,
    pub mtu: Option<u32>,
    pub correlation_id: Option<u32>,
    pub update: Option<UpdateStatus>,
}

/// The image the device is writing and the next offset it expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateStatus {
    pub version: Vec<u8>,
    pub offset: u32,
}

/// What the device is told to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Wait {
        correlation_id: Option<u32>,
        poll: Option<u32>,
    },
    Sync {
        version: Vec<u8>,
        correlation_id: Option<u32>,
        poll: Option<u32>,
    },
    Write {
        version: Vec<u8>,
        correlation_id: Option<u32>,
        offset: u32,
        data: Vec<u8>,
    },
    Swap {
        version: Vec<u8>,
        correlation_id: Option<u32>,
        checksum: Vec<u8>,
    },
}

/// How a Status came, so that the Command goes back the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Cbor,
    Json,
}

impl Encoding {
    /// `application/json` or `application/cbor`; without a content type, the body decides.
    pub fn of(content_type: Option<&str>, body: &[u8]) -> Encoding {
        match content_type.map(|c| c.to_ascii_lowercase()) {
            Some(c) if c.contains("json") => Encoding::Json,
            Some(c) if c.contains("cbor") => Encoding::Cbor,
            _ => {
                let first = body.iter().find(|b| !b.is_ascii_whitespace());
                if first == Some(&b'{') {
                    Encoding::Json
                } else {
                    Encoding::Cbor
                }
            }
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Cbor => "application/cbor",
            Encoding::Json => "application/json",
        }
    }
}

/// Why a Status could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

fn bad(what: impl Into<String>) -> DecodeError {
    DecodeError(what.into())
}

/// Reads one Status.
pub fn decode(encoding: Encoding, body: &[u8]) -> Result<Status, DecodeError> {
    match encoding {
        Encoding::Cbor => {
            let value: Cbor =
                ciborium::from_reader(body).map_err(|e| bad(format!("not CBOR: {e}")))?;
            status_from_cbor(&value)
        }
        Encoding::Json => {
            let value: Json =
                serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
            status_from_json(&value)
        }
    }
}

/// A field of a packed (`index`) or named (`names`) CBOR map; `None` when absent or null.
fn field<'a>(map: &'a [(Cbor, Cbor)], index: u8, names: &[&str]) -> Option<&'a Cbor> {
    map.iter()
        .find(|(key, _)| match key {
            Cbor::Integer(i) => i128::from(*i) == i128::from(index),
            Cbor::Text(text) => names.contains(&text.as_str()),
            _ => false,
        })
        .map(|(_, value)| value)
        .filter(|value| !value.is_null())
}

fn cbor_bytes(value: &Cbor, what: &str) -> Result<Vec<u8>, DecodeError> {
    match value {
        Cbor::Bytes(bytes) => Ok(bytes.clone()),
        Cbor::Text(text) => Ok(text.as_bytes().to_vec()),
        Cbor::Array(items) => items
            .iter()
            .map(|item| match item {
                Cbor::Integer(i) => {
                    u8::try_from(i128::from(*i)).map_err(|_| bad(format!("{what} is not bytes")))
                }
                _ => Err(bad(format!("{what} is not bytes"))),
            })
            .collect(),
        _ => Err(bad(format!("{what} is not bytes"))),
    }
}

fn cbor_u32(value: &Cbor, what: &str) -> Result<u32, DecodeError> {
    match value {
        Cbor::Integer(i) => {
            u32::try_from(i128::from(*i)).map_err(|_| bad(format!("{what} is out of range")))
        }
        _ => Err(bad(format!("{what} is not a number"))),
    }
}

fn status_from_cbor(value: &Cbor) -> Result<Status, DecodeError> {
    let Cbor::Map(map) = value else {
        return Err(bad("a Status is a CBOR map"));
    };
    let version = field(map, 0, &["version"]).ok_or_else(|| bad("the Status has no version"))?;
    let update = match field(map, 3, &["update", "status"]) {
        Some(Cbor::Map(update)) => Some(UpdateStatus {
            version: cbor_bytes(
                field(update, 0, &["version"]).ok_or_else(|| bad("update has no version"))?,
                "update.version",
            )?,
            offset: cbor_u32(
                field(update, 1, &["offset"]).ok_or_else(|| bad("update has no offset"))?,
                "update.offset",
            )?,
        }),
        Some(_) => return Err(bad("update is not a map")),
        None => None,
    };
    Ok(Status {
        version: cbor_bytes(version, "version")?,
        mtu: field(map, 1, &["mtu"])
            .map(|v| cbor_u32(v, "mtu"))
            .transpose()?,
        correlation_id: field(map, 2, &["correlation_id"])
            .map(|v| cbor_u32(v, "correlation_id"))
            .transpose()?,
        update,
    })
}

fn json_bytes(value: &Json, what: &str) -> Result<Vec<u8>, DecodeError> {
    match value {
        Json::String(text) => Ok(text.as_bytes().to_vec()),
        Json::Array(items) => items
            .iter()
            .map(|item| {
                item.as_u64()
                    .and_then(|n| u8::try_from(n).ok())
                    .ok_or_else(|| bad(format!("{what} is not bytes")))
            })
            .collect(),
        _ => Err(bad(format!("{what} is not a string or bytes"))),
    }
}

fn json_u32(value: &Json, what: &str) -> Result<u32, DecodeError> {
    value
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| bad(format!("{what} is not a 32-bit number")))
}

fn status_from_json(value: &Json) -> Result<Status, DecodeError> {
    let object = value
        .as_object()
        .ok_or_else(|| bad("a Status is a JSON object"))?;
    let get = |key: &str| object.get(key).filter(|v| !v.is_null());
    let update = match get("update").or_else(|| get("status")) {
        Some(Json::Object(update)) => Some(UpdateStatus {
            version: json_bytes(
                update
                    .get("version")
                    .ok_or_else(|| bad("update has no version"))?,
                "update.version",
            )?,
            offset: json_u32(
                update
                    .get("offset")
                    .ok_or_else(|| bad("update has no offset"))?,
                "update.offset",
            )?,
        }),
        Some(_) => return Err(bad("update is not an object")),
        None => None,
    };
    Ok(Status {
        version: json_bytes(
            get("version").ok_or_else(|| bad("the Status has no version"))?,
            "version",
        )?,
        mtu: get("mtu").map(|v| json_u32(v, "mtu")).transpose()?,
        correlation_id: get("correlation_id")
            .map(|v| json_u32(v, "correlation_id"))
            .transpose()?,
        update,
    })
}

fn opt(value: Option<u32>) -> Cbor {
    value.map(|v| Cbor::Integer(v.into())).unwrap_or(Cbor::Null)
}

fn key(i: u8) -> Cbor {
    Cbor::Integer(i.into())
}

/// Writes one Command.
pub fn encode(encoding: Encoding, command: &Command) -> Vec<u8> {
    match encoding {
        Encoding::Cbor => {
            let (variant, fields) = match command {
                Command::Wait {
                    correlation_id,
                    poll,
                } => (0, vec![opt(*correlation_id), opt(*poll)]),
                Command::Sync {
                    version,
                    correlation_id,
                    poll,
                } => (
                    1,
                    vec![
                        Cbor::Bytes(version.clone()),
                        opt(*correlation_id),
                        opt(*poll),
                    ],
                ),
                Command::Write {
                    version,
                    correlation_id,
                    offset,
                    data,
                } => (
                    2,
                    vec![
                        Cbor::Bytes(version.clone()),
                        opt(*correlation_id),
                        Cbor::Integer((*offset).into()),
                        Cbor::Bytes(data.clone()),
                    ],
                ),
                Command::Swap {
                    version,
                    correlation_id,
                    checksum,
                } => (
                    3,
                    vec![
                        Cbor::Bytes(version.clone()),
                        opt(*correlation_id),
                        Cbor::Bytes(checksum.clone()),
                    ],
                ),
            };
            let body = fields
                .into_iter()
                .enumerate()
                .map(|(i, v)| (key(u8::try_from(i).unwrap_or(0)), v))
                .collect();
            let value = Cbor::Map(vec![(key(variant), Cbor::Map(body))]);
            let mut out = Vec::new();
            // Writing to a Vec cannot fail.
            let _ = ciborium::into_writer(&value, &mut out);
            out
        }
        Encoding::Json => {
            let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
            let value = match command {
                Command::Wait {
                    correlation_id,
                    poll,
                } => json!({"wait": {"correlation_id": correlation_id, "poll": poll}}),
                Command::Sync {
                    version,
                    correlation_id,
                    poll,
                } => {
                    json!({"sync": {"version": text(version), "correlation_id": correlation_id, "poll": poll}})
                }
                Command::Write {
                    version,
                    correlation_id,
                    offset,
                    data,
                } => json!({"write": {
                    "version": text(version), "correlation_id": correlation_id, "offset": offset,
                    "data": base64::engine::general_purpose::STANDARD.encode(data),
                }}),
                Command::Swap {
                    version,
                    correlation_id,
                    checksum,
                } => {
                    json!({"swap": {"version": text(version), "correlation_id": correlation_id, "checksum": hex::encode(checksum)}})
                }
            };
            value.to_string().into_bytes()
        }
    }
}

/// Writes one Status in packed CBOR, as `embedded-update` devices send it (the device side).
pub fn encode_status(status: &Status) -> Vec<u8> {
    let update = match &status.update {
        Some(update) => Cbor::Map(vec![
            (key(0), Cbor::Bytes(update.version.clone())),
            (key(1), Cbor::Integer(update.offset.into())),
        ]),
        None => Cbor::Null,
    };
    let value = Cbor::Map(vec![
        (key(0), Cbor::Bytes(status.version.clone())),
        (key(1), opt(status.mtu)),
        (key(2), opt(status.correlation_id)),
        (key(3), update),
    ]);
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = ciborium::into_writer(&value, &mut out);
    out
}

fn opt_u32(map: &[(Cbor, Cbor)], index: u8, name: &str) -> Result<Option<u32>, DecodeError> {
    field(map, index, &[name])
        .map(|v| cbor_u32(v, name))
        .transpose()
}

fn need_bytes(map: &[(Cbor, Cbor)], index: u8, name: &str) -> Result<Vec<u8>, DecodeError> {
    cbor_bytes(
        field(map, index, &[name]).ok_or_else(|| bad(format!("the Command has no {name}")))?,
        name,
    )
}

/// Reads one Command in packed or named CBOR (the device side).
pub fn decode_command(body: &[u8]) -> Result<Command, DecodeError> {
    let value: Cbor = ciborium::from_reader(body).map_err(|e| bad(format!("not CBOR: {e}")))?;
    let Cbor::Map(outer) = value else {
        return Err(bad("a Command is a CBOR map"));
    };
    let [(variant, Cbor::Map(map))] = outer.as_slice() else {
        return Err(bad("a Command is a map of one variant to its fields"));
    };
    let variant = match variant {
        Cbor::Integer(i) => u8::try_from(i128::from(*i)).ok(),
        Cbor::Text(name) => ["wait", "sync", "write", "swap"]
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name))
            .and_then(|i| u8::try_from(i).ok()),
        _ => None,
    };
    match variant {
        Some(0) => Ok(Command::Wait {
            correlation_id: opt_u32(map, 0, "correlation_id")?,
            poll: opt_u32(map, 1, "poll")?,
        }),
        Some(1) => Ok(Command::Sync {
            version: need_bytes(map, 0, "version")?,
            correlation_id: opt_u32(map, 1, "correlation_id")?,
            poll: opt_u32(map, 2, "poll")?,
        }),
        Some(2) => Ok(Command::Write {
            version: need_bytes(map, 0, "version")?,
            correlation_id: opt_u32(map, 1, "correlation_id")?,
            offset: opt_u32(map, 2, "offset")?.ok_or_else(|| bad("the Command has no offset"))?,
            data: need_bytes(map, 3, "data")?,
        }),
        Some(3) => Ok(Command::Swap {
            version: need_bytes(map, 0, "version")?,
            correlation_id: opt_u32(map, 1, "correlation_id")?,
            checksum: need_bytes(map, 2, "checksum")?,
        }),
        _ => Err(bad("unknown Command variant")),
    }
}

#[cfg(test)]
mod tests;
