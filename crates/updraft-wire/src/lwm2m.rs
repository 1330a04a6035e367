//! LwM2M on the wire, without IO: the Register/Update query, the link-format object list, and
//! single resource values in the content formats clients use for reads and notifications (plain
//! text, TLV, SenML JSON, CBOR).

use ciborium::Value as Cbor;
use coap_lite::link_format::LinkFormatParser;

/// The query of a Register or Update (`ep`, `lt`, `lwm2m`, `b`; anything else is kept out).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegisterQuery {
    pub endpoint: Option<String>,
    pub lifetime: Option<u32>,
    pub version: Option<String>,
    pub binding: Option<String>,
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

/// Reads the Uri-Query options of a Register or Update.
pub fn register_query<'a>(
    options: impl IntoIterator<Item = &'a str>,
) -> Result<RegisterQuery, Malformed> {
    let mut query = RegisterQuery::default();
    for option in options {
        let (key, value) = option.split_once('=').unwrap_or((option, ""));
        match key {
            "ep" => {
                if value.is_empty() || value.len() > 255 {
                    return Err(Malformed("ep is 1 to 255 bytes".into()));
                }
                query.endpoint = Some(value.to_owned());
            }
            "lt" => {
                let lifetime: u32 = value
                    .parse()
                    .map_err(|_| Malformed(format!("lt {value:?} is not a number of seconds")))?;
                if lifetime == 0 {
                    return Err(Malformed("lt must be at least 1 s".into()));
                }
                query.lifetime = Some(lifetime);
            }
            "lwm2m" => query.version = Some(value.trim_matches('"').to_owned()),
            "b" => query.binding = Some(value.to_owned()),
            _ => {}
        }
    }
    Ok(query)
}

/// The objects a client registers, and its alternate root path if it names one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Links {
    /// `/lwm2m` for `</lwm2m>;rt="oma.lwm2m"`; empty for the default root.
    pub root: String,
    /// Object and instance paths without the root: `/3/0`, `/5/0`, `/1`.
    pub objects: Vec<String>,
}

/// Parses a link-format (RFC 6690) object list, with coap-lite's link-format parser.
pub fn links(payload: &[u8]) -> Result<Links, Malformed> {
    let text = std::str::from_utf8(payload).map_err(|_| Malformed("links are not UTF-8".into()))?;
    let mut parsed = Links::default();
    for link in LinkFormatParser::new(text) {
        let (path, mut attributes) =
            link.map_err(|_| Malformed(format!("{text:?} is not a list of <path>")))?;
        if !path.starts_with('/') {
            return Err(Malformed(format!("{path:?} does not start with /")));
        }
        // The raw value, unquoted here: coap-lite's own unquoting panics on a lone `"` (found by
        // fuzzing), and a device may send one.
        let root_type = attributes.any(|(key, value)| {
            let raw = value.into_raw_str();
            let unquoted = raw
                .strip_prefix('"')
                .and_then(|r| r.strip_suffix('"'))
                .unwrap_or(raw);
            key == "rt" && unquoted == "oma.lwm2m"
        });
        if root_type {
            parsed.root = path.trim_end_matches('/').to_owned();
            continue;
        }
        parsed.objects.push(path.to_owned());
    }
    if !parsed.root.is_empty() {
        let root = parsed.root.clone();
        for object in &mut parsed.objects {
            if let Some(rest) = object.strip_prefix(&root) {
                *object = rest.to_owned();
            }
        }
    }
    Ok(parsed)
}

/// Content formats by number.
pub const TEXT: u16 = 0;
pub const LINK_FORMAT: u16 = 40;
pub const OPAQUE: u16 = 42;
pub const CBOR: u16 = 60;
pub const SENML_JSON: u16 = 110;
pub const SENML_CBOR: u16 = 112;
pub const TLV: u16 = 11542;
pub const LWM2M_JSON: u16 = 11543;
pub const LWM2M_CBOR: u16 = 11544;
/// Pre-standard numbers of old clients.
pub const OLD_TLV: u16 = 1542;
pub const OLD_JSON: u16 = 1543;

/// The integer value of a single resource (State, Update Result) in a read or notification.
pub fn integer(content_format: Option<u16>, payload: &[u8]) -> Result<i64, Malformed> {
    let bad = |what: &str| Malformed(format!("not an integer resource: {what}"));
    match content_format {
        None | Some(TEXT) => std::str::from_utf8(payload)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .ok_or_else(|| bad("text")),
        Some(TLV) | Some(OLD_TLV) => tlv_integer(payload, 2).ok_or_else(|| bad("TLV")),
        Some(CBOR) => match ciborium::from_reader::<Cbor, _>(payload) {
            Ok(Cbor::Integer(i)) => i64::try_from(i128::from(i)).map_err(|_| bad("CBOR")),
            _ => Err(bad("CBOR")),
        },
        Some(SENML_JSON) | Some(LWM2M_JSON) | Some(OLD_JSON) => {
            let value: serde_json::Value =
                serde_json::from_slice(payload).map_err(|_| bad("JSON"))?;
            // SenML: [{"bn":…,"n":…,"v":1}]; LwM2M JSON: {"e":[{"n":…,"v":1}]}.
            let records = value
                .as_array()
                .or_else(|| value.get("e").and_then(|e| e.as_array()))
                .ok_or_else(|| bad("JSON"))?;
            records
                .iter()
                .find_map(|r| r.get("v").and_then(serde_json::Value::as_f64))
                .map(|v| v as i64)
                .ok_or_else(|| bad("JSON"))
        }
        Some(SENML_CBOR) => match ciborium::from_reader::<Cbor, _>(payload) {
            Ok(Cbor::Array(records)) => records
                .iter()
                .find_map(|record| match record {
                    // SenML CBOR labels: 2 is the numeric value.
                    Cbor::Map(map) => map.iter().find_map(|(k, v)| match (k, v) {
                        (Cbor::Integer(k), Cbor::Integer(v)) if i128::from(*k) == 2 => {
                            i64::try_from(i128::from(*v)).ok()
                        }
                        (Cbor::Integer(k), Cbor::Float(v)) if i128::from(*k) == 2 => {
                            Some(*v as i64)
                        }
                        _ => None,
                    }),
                    _ => None,
                })
                .ok_or_else(|| bad("SenML CBOR")),
            _ => Err(bad("SenML CBOR")),
        },
        // LwM2M CBOR (1.2): maps keyed by path segments down to the value: {5: {0: {3: 1}}}.
        Some(LWM2M_CBOR) => {
            let mut value = ciborium::from_reader::<Cbor, _>(payload).map_err(|_| bad("CBOR"))?;
            loop {
                value = match value {
                    Cbor::Integer(i) => {
                        return i64::try_from(i128::from(i)).map_err(|_| bad("LwM2M CBOR"));
                    }
                    Cbor::Map(mut entries) if !entries.is_empty() => entries.swap_remove(0).1,
                    _ => return Err(bad("LwM2M CBOR")),
                };
            }
        }
        Some(other) => Err(Malformed(format!(
            "content format {other} is not one we read"
        ))),
    }
}

/// The numeric values of a SenML pack (JSON or CBOR, as LwM2M 1.1 Send and notifications carry
/// them), by full path (`bn` + `n`, base names carried forward).
pub fn senml_numbers(content_format: u16, payload: &[u8]) -> Result<Vec<(String, f64)>, Malformed> {
    let bad = |what: &str| Malformed(format!("not a SenML pack: {what}"));
    let mut base = String::new();
    let mut out = Vec::new();
    match content_format {
        SENML_JSON => {
            let value: serde_json::Value =
                serde_json::from_slice(payload).map_err(|_| bad("JSON"))?;
            for record in value.as_array().ok_or_else(|| bad("not an array"))? {
                if let Some(bn) = record.get("bn").and_then(serde_json::Value::as_str) {
                    base = bn.to_owned();
                }
                let name = record
                    .get("n")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("");
                if let Some(v) = record.get("v").and_then(serde_json::Value::as_f64) {
                    out.push((format!("{base}{name}"), v));
                }
            }
        }
        SENML_CBOR => {
            let value: Cbor = ciborium::from_reader(payload).map_err(|_| bad("CBOR"))?;
            let Cbor::Array(records) = value else {
                return Err(bad("not an array"));
            };
            for record in records {
                let Cbor::Map(map) = record else {
                    return Err(bad("a record is not a map"));
                };
                let mut name = String::new();
                let mut number = None;
                for (key, value) in map {
                    let Cbor::Integer(key) = key else { continue };
                    match (i128::from(key), value) {
                        (-2, Cbor::Text(bn)) => base = bn,
                        (0, Cbor::Text(n)) => name = n,
                        (2, Cbor::Integer(v)) => number = Some(i128::from(v) as f64),
                        (2, Cbor::Float(v)) => number = Some(v),
                        _ => {}
                    }
                }
                if let Some(v) = number {
                    out.push((format!("{base}{name}"), v));
                }
            }
        }
        other => return Err(Malformed(format!("content format {other} is not SenML"))),
    }
    Ok(out)
}

/// The value of the first resource in a TLV payload, as a big-endian signed integer, looking
/// through at most `depth` levels of instances.
fn tlv_integer(payload: &[u8], depth: u8) -> Option<i64> {
    let (&kind, rest) = payload.split_first()?;
    let id_len = if kind & 0x20 != 0 { 2 } else { 1 };
    let length_len = usize::from((kind >> 3) & 0x03);
    let rest = rest.get(id_len..)?;
    let (len, value) = if length_len == 0 {
        (usize::from(kind & 0x07), rest)
    } else {
        let len = rest
            .get(..length_len)?
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest.get(length_len..)?)
    };
    let value = value.get(..len)?;
    match kind >> 6 {
        // A resource with a value (3), or an instance / multiple resource holding one (0, 2).
        3 => {
            if value.is_empty() || value.len() > 8 {
                return None;
            }
            let negative = value[0] & 0x80 != 0;
            let start = if negative { -1i64 } else { 0 };
            Some(
                value
                    .iter()
                    .fold(start, |acc, b| (acc << 8) | i64::from(*b)),
            )
        }
        0 | 2 if depth > 0 => tlv_integer(value, depth - 1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_queries_read_in_any_order() {
        let query = register_query(["lt=60", "lwm2m=1.1", "ep=dev-1", "b=U", "sms=123"]);
        assert_eq!(
            query,
            Ok(RegisterQuery {
                endpoint: Some("dev-1".into()),
                lifetime: Some(60),
                version: Some("1.1".into()),
                binding: Some("U".into()),
            })
        );
        assert!(register_query(["lt=x"]).is_err());
        assert!(register_query(["lt=0"]).is_err());
        assert!(register_query(["ep="]).is_err());
    }

    #[test]
    fn links_of_anjay_leshan_and_node_lib() {
        let anjay = links(b"</1/1>,</2>,</3/0>,</5/0>,</10>;ver=1.1");
        assert_eq!(
            anjay.map(|l| l.objects),
            Ok(vec![
                "/1/1".into(),
                "/2".into(),
                "/3/0".into(),
                "/5/0".into(),
                "/10".into()
            ])
        );
        let leshan = links(b"</>;rt=\"oma.lwm2m\";ct=\"60 110 112\",</1/0>,</3/0>");
        assert_eq!(leshan.as_ref().map(|l| l.root.as_str()), Ok(""));
        let rooted = links(b"</lwm2m>;rt=\"oma.lwm2m\",</lwm2m/5/0>");
        assert_eq!(
            rooted,
            Ok(Links {
                root: "/lwm2m".into(),
                objects: vec!["/5/0".into()]
            })
        );
        assert!(links(b"garbage").is_err());
        assert!(links(&[0xff]).is_err());
        // A lone quote as a value (found by fuzzing: coap-lite's unquoting panicked on it).
        assert!(links(b"</>;rt=\"").is_ok_and(|l| l.root.is_empty()));
        assert_eq!(links(b"").map(|l| l.objects.len()), Ok(0));
    }

    #[test]
    fn senml_packs_carry_base_names() {
        let json = senml_numbers(
            SENML_JSON,
            br#"[{"bn":"/5/0/","n":"3","v":2},{"n":"5","v":0},{"n":"6","vs":"x"}]"#,
        );
        assert_eq!(
            json,
            Ok(vec![("/5/0/3".into(), 2.0), ("/5/0/5".into(), 0.0)])
        );
        // [{-2: "/5/0/", 0: "5", 2: 1}]
        let cbor = senml_numbers(
            SENML_CBOR,
            &[
                0x81, 0xa3, 0x21, 0x65, b'/', b'5', b'/', b'0', b'/', 0x00, 0x61, b'5', 0x02, 0x01,
            ],
        );
        assert_eq!(cbor, Ok(vec![("/5/0/5".into(), 1.0)]));
        assert!(senml_numbers(SENML_JSON, b"{}").is_err());
        assert!(senml_numbers(SENML_CBOR, &[0x81, 0x01]).is_err());
        assert!(senml_numbers(TEXT, b"1").is_err());
    }

    #[test]
    fn integers_in_every_format() {
        assert_eq!(integer(None, b"1"), Ok(1));
        assert_eq!(integer(Some(TEXT), b" 2 "), Ok(2));
        // TLV: resource 3, one byte, value 2.
        assert_eq!(integer(Some(TLV), &[0xc1, 0x03, 0x02]), Ok(2));
        // An object instance 0 holding resource 5 = 1.
        assert_eq!(integer(Some(TLV), &[0x03, 0x00, 0xc1, 0x05, 0x01]), Ok(1));
        assert_eq!(integer(Some(TLV), &[0xc2, 0x03, 0xff, 0xfe]), Ok(-2));
        assert_eq!(integer(Some(CBOR), &[0x03]), Ok(3));
        // LwM2M CBOR {5: {0: {3: 2}}}
        assert_eq!(
            integer(
                Some(LWM2M_CBOR),
                &[0xa1, 0x05, 0xa1, 0x00, 0xa1, 0x03, 0x02]
            ),
            Ok(2)
        );
        assert!(integer(Some(LWM2M_CBOR), &[0xa0]).is_err());
        assert_eq!(
            integer(Some(SENML_JSON), br#"[{"bn":"/5/0/","n":"3","v":1}]"#),
            Ok(1)
        );
        // SenML CBOR [{0: "/5/0/5", 2: 1}]
        assert_eq!(
            integer(
                Some(SENML_CBOR),
                &[
                    0x81, 0xa2, 0x00, 0x66, b'/', b'5', b'/', b'0', b'/', b'5', 0x02, 0x01
                ]
            ),
            Ok(1)
        );
        for (cf, bad) in [
            (None, &b"x"[..]),
            (Some(TLV), &[0xc1][..]),
            (Some(TLV), &[0xc9, 0x03][..]),
            (Some(CBOR), &[0xff][..]),
            (Some(SENML_JSON), &b"{"[..]),
            (Some(SENML_CBOR), &[0x80][..]),
            (Some(4242), &b"1"[..]),
        ] {
            assert!(integer(cf, bad).is_err(), "{cf:?} {bad:?}");
        }
    }
}
