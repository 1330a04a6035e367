//! AWS IoT MQTT-based file delivery ("streams") on the wire: GetStream and DescribeStream
//! requests in CBOR (text keys) or JSON, which blocks a request asks for (offset, count, bitmap),
//! and the data, description and error messages back.

use base64::Engine;
use ciborium::Value as Cbor;
use serde_json::{Value as Json, json};

/// Smallest and largest block a device may ask for.
pub const MIN_BLOCK: u32 = 256;
pub const MAX_BLOCK: u32 = 128 * 1024;
/// Bytes one request may ask for in all.
pub const MAX_REQUEST_BYTES: u32 = 128 * 1024;
/// A bitmap must be shorter than this.
pub const MAX_BITMAP_BYTES: usize = 12 * 1024;
/// Client tokens are echoed, and at most this long.
pub const MAX_TOKEN_BYTES: usize = 64;

/// How a request came and its answer goes: the last level of the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Cbor,
    Json,
}

impl Format {
    pub fn parse(level: &str) -> Option<Format> {
        match level {
            "cbor" => Some(Format::Cbor),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Cbor => "cbor",
            Format::Json => "json",
        }
    }
}

/// A refused request: AWS's error code and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    pub code: &'static str,
    pub message: String,
}

fn error(code: &'static str, message: impl Into<String>) -> StreamError {
    StreamError {
        code,
        message: message.into(),
    }
}

/// A GetStream request (`get/{fmt}`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GetStream {
    /// `c`: echoed in every answer.
    pub client_token: Option<String>,
    /// `s`: the stream version the device expects.
    pub stream_version: Option<u64>,
    /// `f`: the file in the stream.
    pub file_id: u64,
    /// `l`: bytes per block.
    pub block_size: u64,
    /// `o`: the first block.
    pub offset: u64,
    /// `n`: how many blocks (with a bitmap, a cap).
    pub count: Option<u64>,
    /// `b`: bit k set asks for block `offset + k`.
    pub bitmap: Option<Vec<u8>>,
}

/// The fields of a request, from either format.
enum Fields {
    Cbor(Vec<(Cbor, Cbor)>),
    Json(serde_json::Map<String, Json>),
}

impl Fields {
    fn parse(format: Format, body: &[u8]) -> Result<Fields, StreamError> {
        match format {
            Format::Cbor => match ciborium::from_reader::<Cbor, _>(body) {
                Ok(Cbor::Map(map)) => Ok(Fields::Cbor(map)),
                Ok(_) => Err(error("InvalidRequest", "the request is not a CBOR map")),
                Err(e) => Err(error("InvalidCbor", format!("not CBOR: {e}"))),
            },
            Format::Json => {
                // AWS takes an empty payload as an empty request.
                if body.iter().all(u8::is_ascii_whitespace) {
                    return Ok(Fields::Json(serde_json::Map::new()));
                }
                match serde_json::from_slice::<Json>(body) {
                    Ok(Json::Object(map)) => Ok(Fields::Json(map)),
                    Ok(_) => Err(error("InvalidRequest", "the request is not a JSON object")),
                    Err(e) => Err(error("InvalidJson", format!("not JSON: {e}"))),
                }
            }
        }
    }

    fn number(&self, key: &str) -> Result<Option<u64>, StreamError> {
        let bad = || error("InvalidRequest", format!("{key} is not an unsigned number"));
        match self {
            Fields::Cbor(map) => match cbor_get(map, key) {
                None | Some(Cbor::Null) => Ok(None),
                Some(Cbor::Integer(i)) => {
                    u64::try_from(i128::from(*i)).map(Some).map_err(|_| bad())
                }
                Some(_) => Err(bad()),
            },
            Fields::Json(map) => match map.get(key) {
                None | Some(Json::Null) => Ok(None),
                Some(value) => value.as_u64().map(Some).ok_or_else(bad),
            },
        }
    }

    fn text(&self, key: &str) -> Result<Option<String>, StreamError> {
        let bad = || error("InvalidRequest", format!("{key} is not a string"));
        match self {
            Fields::Cbor(map) => match cbor_get(map, key) {
                None | Some(Cbor::Null) => Ok(None),
                Some(Cbor::Text(text)) => Ok(Some(text.clone())),
                Some(_) => Err(bad()),
            },
            Fields::Json(map) => match map.get(key) {
                None | Some(Json::Null) => Ok(None),
                Some(Json::String(text)) => Ok(Some(text.clone())),
                Some(_) => Err(bad()),
            },
        }
    }

    /// CBOR: a byte string; JSON: hex (`"0x1f00"` or `"1f00"`), as AWS's JSON form has it.
    fn bytes(&self, key: &str) -> Result<Option<Vec<u8>>, StreamError> {
        let bad = || error("InvalidRequest", format!("{key} is not a bitmap"));
        match self {
            Fields::Cbor(map) => match cbor_get(map, key) {
                None | Some(Cbor::Null) => Ok(None),
                Some(Cbor::Bytes(bytes)) => Ok(Some(bytes.clone())),
                Some(_) => Err(bad()),
            },
            Fields::Json(map) => match map.get(key) {
                None | Some(Json::Null) => Ok(None),
                Some(Json::String(text)) => {
                    let digits = text
                        .strip_prefix("0x")
                        .or_else(|| text.strip_prefix("0X"))
                        .unwrap_or(text);
                    hex::decode(digits).map(Some).map_err(|_| bad())
                }
                Some(_) => Err(bad()),
            },
        }
    }
}

fn cbor_get<'a>(map: &'a [(Cbor, Cbor)], key: &str) -> Option<&'a Cbor> {
    map.iter()
        .find(|(k, _)| matches!(k, Cbor::Text(text) if text == key))
        .map(|(_, v)| v)
}

fn token(fields: &Fields) -> Result<Option<String>, StreamError> {
    let token = fields.text("c")?;
    if token.as_ref().is_some_and(|t| t.len() > MAX_TOKEN_BYTES) {
        return Err(error(
            "InvalidRequest",
            format!("the client token is over {MAX_TOKEN_BYTES} bytes"),
        ));
    }
    Ok(token)
}

/// The client token of a request, when it can be read at all (for an error answer).
pub fn client_token(format: Format, body: &[u8]) -> Option<String> {
    Fields::parse(format, body)
        .ok()
        .and_then(|fields| token(&fields).ok().flatten())
}

/// Reads a GetStream request.
pub fn decode_get(format: Format, body: &[u8]) -> Result<GetStream, StreamError> {
    let fields = Fields::parse(format, body)?;
    let missing = |key: &str| error("InvalidRequest", format!("the request has no {key}"));
    Ok(GetStream {
        client_token: token(&fields)?,
        stream_version: fields.number("s")?,
        file_id: fields.number("f")?.ok_or_else(|| missing("f (file id)"))?,
        block_size: fields
            .number("l")?
            .ok_or_else(|| missing("l (block size)"))?,
        offset: fields.number("o")?.unwrap_or(0),
        count: fields.number("n")?,
        bitmap: fields.bytes("b")?,
    })
}

/// Reads a DescribeStream request: only its client token.
pub fn decode_describe(format: Format, body: &[u8]) -> Result<Option<String>, StreamError> {
    token(&Fields::parse(format, body)?)
}

/// The blocks a request asks for that exist in a file of `file_size` bytes, ascending.
pub fn blocks(request: &GetStream, file_size: u64) -> Result<Vec<u64>, StreamError> {
    let size = request.block_size;
    if !(u64::from(MIN_BLOCK)..=u64::from(MAX_BLOCK)).contains(&size) {
        return Err(error(
            "BlockSizeOutOfBounds",
            format!("block size {size} is outside {MIN_BLOCK}..={MAX_BLOCK}"),
        ));
    }
    let limit = u64::from(MAX_REQUEST_BYTES) / size;
    if request.count.is_some_and(|n| n > limit) {
        return Err(error(
            "BlockCountLimitExceeded",
            format!("at most {limit} blocks of {size} bytes in one request"),
        ));
    }
    let last = file_size.div_ceil(size);
    if request.offset >= last {
        return Err(error(
            "OffsetOutOfBounds",
            format!("block {} is past the file's {last} blocks", request.offset),
        ));
    }
    let cap = request.count.unwrap_or(limit).min(limit);
    let wanted: Vec<u64> = match &request.bitmap {
        Some(bitmap) if bitmap.len() >= MAX_BITMAP_BYTES => {
            return Err(error(
                "BlockBitmapLimitExceeded",
                format!("a bitmap has fewer than {MAX_BITMAP_BYTES} bytes"),
            ));
        }
        Some(bitmap) => bitmap
            .iter()
            .enumerate()
            .flat_map(|(byte, bits)| {
                (0..8u64)
                    .filter(move |bit| bits & (1 << bit) != 0)
                    .map(move |bit| byte as u64 * 8 + bit)
            })
            .map(|k| request.offset + k)
            .take_while(|block| *block < last)
            .take(usize::try_from(cap).unwrap_or(usize::MAX))
            .collect(),
        None => (request.offset..last.min(request.offset + cap)).collect(),
    };
    Ok(wanted)
}

/// One block of data (`data/{fmt}`): keys `c`?, `f`, `i`, `l` (this block's real length), `p`.
pub fn encode_block(
    format: Format,
    client_token: Option<&str>,
    file_id: u64,
    index: u64,
    payload: &[u8],
) -> Vec<u8> {
    match format {
        Format::Cbor => {
            let mut map = Vec::with_capacity(5);
            if let Some(token) = client_token {
                map.push((text("c"), text(token)));
            }
            map.push((text("f"), Cbor::Integer(file_id.into())));
            map.push((text("i"), Cbor::Integer(index.into())));
            map.push((text("l"), Cbor::Integer((payload.len() as u64).into())));
            map.push((text("p"), Cbor::Bytes(payload.to_vec())));
            cbor(&Cbor::Map(map))
        }
        Format::Json => {
            let mut value = json!({
                "f": file_id, "i": index, "l": payload.len(),
                "p": base64::engine::general_purpose::STANDARD.encode(payload),
            });
            if let Some(token) = client_token {
                value["c"] = json!(token);
            }
            value.to_string().into_bytes()
        }
    }
}

/// The answer to DescribeStream: stream version 1 and one file.
pub fn encode_description(
    format: Format,
    client_token: Option<&str>,
    description: &str,
    file_id: u64,
    file_size: u64,
) -> Vec<u8> {
    match format {
        Format::Cbor => {
            let mut map = Vec::with_capacity(4);
            if let Some(token) = client_token {
                map.push((text("c"), text(token)));
            }
            map.push((text("s"), Cbor::Integer(1.into())));
            map.push((text("d"), text(description)));
            let file = Cbor::Map(vec![
                (text("f"), Cbor::Integer(file_id.into())),
                (text("z"), Cbor::Integer(file_size.into())),
            ]);
            map.push((text("r"), Cbor::Array(vec![file])));
            cbor(&Cbor::Map(map))
        }
        Format::Json => {
            let mut value =
                json!({"s": 1, "d": description, "r": [{"f": file_id, "z": file_size}]});
            if let Some(token) = client_token {
                value["c"] = json!(token);
            }
            value.to_string().into_bytes()
        }
    }
}

/// A refusal (`rejected/{fmt}`): `o` the code, `m` the message, `c` the client token.
pub fn encode_error(format: Format, client_token: Option<&str>, error: &StreamError) -> Vec<u8> {
    match format {
        Format::Cbor => {
            let mut map = vec![
                (text("o"), text(error.code)),
                (text("m"), text(&error.message)),
            ];
            if let Some(token) = client_token {
                map.push((text("c"), text(token)));
            }
            cbor(&Cbor::Map(map))
        }
        Format::Json => {
            let mut value = json!({"o": error.code, "m": error.message});
            if let Some(token) = client_token {
                value["c"] = json!(token);
            }
            value.to_string().into_bytes()
        }
    }
}

fn text(s: &str) -> Cbor {
    Cbor::Text(s.to_owned())
}

fn cbor(value: &Cbor) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = ciborium::into_writer(value, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(text: &str) -> Vec<u8> {
        hex::decode(text.replace(' ', "")).unwrap_or_default()
    }

    #[test]
    fn rustots_window_request_asks_for_31_blocks() {
        // The reference's recorded rustot request: {"f":0,"l":1024,"o":0,"b":h'ffffff7f'}.
        let request = decode_get(
            Format::Cbor,
            &h("a4 6166 00 616c 190400 616f 00 6162 44 ffffff7f"),
        );
        assert_eq!(
            request,
            Ok(GetStream {
                file_id: 0,
                block_size: 1024,
                bitmap: Some(vec![0xff, 0xff, 0xff, 0x7f]),
                ..GetStream::default()
            })
        );
        let request = request.unwrap_or_default();
        let all = blocks(&request, 200_000);
        assert_eq!(all, Ok((0..31).collect()));
        // The last window of a 196-block file: o 186, b ff030000 → blocks 186..196.
        let last = GetStream {
            offset: 186,
            bitmap: Some(h("ff030000")),
            ..request
        };
        assert_eq!(blocks(&last, 200_000), Ok((186..196).collect()));
    }

    #[test]
    fn core_ota_requests_with_a_count_of_one() {
        let json = decode_get(Format::Json, br#"{"s": 1,"f": 0,"l": 4096,"o": 3,"n": 1}"#);
        let json = json.unwrap_or_default();
        assert_eq!(json.stream_version, Some(1));
        assert_eq!(blocks(&json, 20_000), Ok(vec![3]));
        // "MQ==" as a bitmap: bits 0, 2, 3, 6 of 0x4d; n limits it to the first.
        let cbor = GetStream {
            client_token: Some("rdy".into()),
            file_id: 0,
            block_size: 4096,
            offset: 2,
            count: Some(1),
            bitmap: Some(b"MQ==".to_vec()),
            ..GetStream::default()
        };
        assert_eq!(blocks(&cbor, 100_000), Ok(vec![2]));
        let bits = GetStream {
            count: Some(4),
            ..cbor
        };
        assert_eq!(blocks(&bits, 100_000), Ok(vec![2, 4, 5, 8]));
        // JSON bitmaps are hex.
        let hexmap = decode_get(Format::Json, br#"{"f":0,"l":256,"b":"0x05"}"#);
        assert_eq!(hexmap.map(|r| r.bitmap), Ok(Some(vec![5])));
    }

    #[test]
    fn limits_are_refused_with_awss_codes() {
        let base = GetStream {
            file_id: 0,
            block_size: 1024,
            ..GetStream::default()
        };
        let code = |request: GetStream, size: u64| blocks(&request, size).map_err(|e| e.code);
        assert_eq!(
            code(
                GetStream {
                    block_size: 255,
                    ..base.clone()
                },
                10_000
            ),
            Err("BlockSizeOutOfBounds")
        );
        assert_eq!(
            code(
                GetStream {
                    block_size: 131_073,
                    ..base.clone()
                },
                10_000
            ),
            Err("BlockSizeOutOfBounds")
        );
        assert_eq!(
            code(
                GetStream {
                    offset: 10,
                    ..base.clone()
                },
                10_000
            ),
            Err("OffsetOutOfBounds")
        );
        assert_eq!(
            code(
                GetStream {
                    count: Some(129),
                    ..base.clone()
                },
                1_000_000
            ),
            Err("BlockCountLimitExceeded")
        );
        assert_eq!(
            code(
                GetStream {
                    bitmap: Some(vec![0xff; MAX_BITMAP_BYTES]),
                    ..base.clone()
                },
                1_000_000
            ),
            Err("BlockBitmapLimitExceeded")
        );
        // No count: as many as fit in 128 KiB, never past the end.
        assert_eq!(blocks(&base, 1_000_000).map(|b| b.len()), Ok(128));
        assert_eq!(blocks(&base, 3_000), Ok(vec![0, 1, 2]));
        for (format, body, expected) in [
            (Format::Cbor, &b"\xff"[..], "InvalidCbor"),
            (Format::Cbor, &h("80")[..], "InvalidRequest"),
            (Format::Json, &b"{"[..], "InvalidJson"),
            (Format::Json, &br#"{"f":0}"#[..], "InvalidRequest"),
            (Format::Json, &br#"{"f":-1,"l":256}"#[..], "InvalidRequest"),
            (
                Format::Json,
                &br#"{"f":0,"l":256,"b":"zz"}"#[..],
                "InvalidRequest",
            ),
        ] {
            assert_eq!(decode_get(format, body).map_err(|e| e.code), Err(expected));
        }
        let long = format!(r#"{{"c":"{}","f":0,"l":256}}"#, "x".repeat(65));
        assert!(decode_get(Format::Json, long.as_bytes()).is_err());
    }

    #[test]
    fn blocks_and_descriptions_encode_as_devices_read_them() {
        let block = encode_block(Format::Cbor, None, 0, 2, &[1, 2, 3]);
        assert_eq!(block, h("a4 6166 00 6169 02 616c 03 6170 43 010203"));
        let json = encode_block(Format::Json, Some("t"), 0, 1, &[0xff]);
        let value: Json = serde_json::from_slice(&json).unwrap_or_default();
        assert_eq!(
            value,
            json!({"c": "t", "f": 0, "i": 1, "l": 1, "p": "/w=="})
        );
        let described = encode_description(Format::Json, None, "fw 2", 0, 5000);
        let value: Json = serde_json::from_slice(&described).unwrap_or_default();
        assert_eq!(value["r"], json!([{"f": 0, "z": 5000}]));
        assert_eq!(value["s"], 1);
        let refused = encode_error(
            Format::Cbor,
            Some("c1"),
            &error("ResourceNotFound", "no such stream"),
        );
        let value: Cbor = ciborium::from_reader(refused.as_slice()).unwrap_or(Cbor::Null);
        assert!(matches!(value, Cbor::Map(map) if map.len() == 3));
    }
}
