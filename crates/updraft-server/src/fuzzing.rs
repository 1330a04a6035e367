//! Entry points for the fuzz targets (`fuzz/`, feature `fuzzing`): each feeds bytes from a device
//! or the network to a decoder the way the server does, with no store or socket, and checks what
//! must hold of the result. None may panic, whatever the bytes.

use bytes::BytesMut;
use coap_lite::{CoapOption, Packet};
use serde_json::Value;
use updraft_core::UpdateState;

use crate::kernel::download::{RangeRequest, parse_range};
use crate::protocols::{aws, ddi, dfu, thingsboard};
use crate::transport::coap::{block2, strings, uint};
use crate::transport::mqtt::codec;

/// What an MQTT client sends before it has logged in: the protocol sniff, then packets as the
/// endpoint reads them (with its CONNECT bound, then the general one).
pub fn mqtt_before_login(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let Ok(Some(version)) = codec::connect_version(&buf) else {
        return;
    };
    let mut limit = 8 * 1024;
    while let Ok(Some(_packet)) = codec::read(version, &mut buf, limit) {
        limit = crate::transport::mqtt::MAX_INBOUND_PACKET;
    }
}

/// A `Range` header against a blob whose size is the first eight bytes: every range it yields
/// lies inside the blob, at most 16 of them, ascending and apart.
pub fn range_header(data: &[u8]) {
    let (size, text) = match data.split_first_chunk::<8>() {
        Some((size, rest)) => (u64::from_le_bytes(*size) % (1 << 40), rest),
        None => (100, data),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let ranges = match parse_range(text, size, 16) {
        RangeRequest::Single(range) => vec![range],
        RangeRequest::Many(ranges) => ranges,
        RangeRequest::Whole | RangeRequest::Unsatisfiable => return,
    };
    assert!(ranges.len() <= 16, "{} ranges", ranges.len());
    for range in &ranges {
        assert!(
            range.start <= range.end && range.end < size,
            "{range:?} of {size}"
        );
    }
    for pair in ranges.windows(2) {
        assert!(pair[0].end + 1 < pair[1].start, "not coalesced: {pair:?}");
    }
}

/// A DDI deployment feedback and a configData body.
pub fn ddi_bodies(data: &[u8]) {
    for state in [
        UpdateState::Initiated,
        UpdateState::Downloading,
        UpdateState::Updating,
    ] {
        let _ = ddi::feedback::decode_feedback(data, state);
    }
    let _ = ddi::feedback::decode_config_data(data);
}

/// ThingsBoard telemetry and attribute requests, and `fw_state` values.
pub fn thingsboard_messages(data: &[u8]) {
    let Ok(message) = serde_json::from_slice::<Value>(data) else {
        if let Ok(text) = std::str::from_utf8(data) {
            let (state, error) = text.split_once('\n').unwrap_or((text, ""));
            let _ = thingsboard::report_of(state, error);
        }
        return;
    };
    let _ = thingsboard::telemetry_values(&message);
    let keys = message.get("sharedKeys").and_then(Value::as_str);
    if let Value::Object(all) = &message {
        let _ = thingsboard::select(all.clone(), keys);
    }
}

/// An AWS IoT Jobs request body, as `update`, `start-next` and `get` read it.
pub fn aws_jobs_request(data: &[u8]) {
    let Ok(body) = aws::jobs::request_body(data) else {
        return;
    };
    let _ = aws::jobs::status_details(&body);
    let _ = aws::jobs::step_timeout(&body);
    let _ = aws::jobs::expected_version(&body);
    if let Some(Value::Object(details)) = body.get("statusDetails") {
        for value in details.values().filter_map(Value::as_str) {
            let _ = aws::jobs::fraction(value);
        }
    }
}

/// Drogue DFU over HTTP: the Basic-auth header value and the query string (`?as=`).
pub fn dfu_http(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (header, query) = text.split_once('\n').unwrap_or((text, ""));
    let _ = dfu::basic_credentials(Some(header));
    if let Ok(uri) = format!("/v1/dfu?{query}").parse::<axum::http::Uri>() {
        let _ = axum::extract::Query::<dfu::DfuQuery>::try_from_uri(&uri);
    }
}

/// A CoAP datagram as the CoAP and LwM2M listeners read a request: its options, its Block2
/// window over a resource, and the LwM2M registration query and links.
pub fn coap_datagram(data: &[u8]) {
    let Ok(packet) = Packet::from_bytes(data) else {
        return;
    };
    let _ = strings(&packet, CoapOption::UriPath);
    let queries = strings(&packet, CoapOption::UriQuery);
    if let Some(observe) = packet.get_first_option(CoapOption::Observe) {
        let _ = uint(observe);
    }
    for total in [0, 1, 1024, 150_000] {
        if let Some(window) = block2(&packet, total) {
            assert!(window.start + window.len <= total, "block past the end");
        }
    }
    let _ = updraft_wire::lwm2m::register_query(queries.iter().map(String::as_str));
    let _ = updraft_wire::lwm2m::links(&packet.payload);
}

/// Datagrams at the DTLS listener (each behind a two-byte length): records normalized, epoch-0
/// ClientHellos answered statelessly, and what follows a session's opening fed to it. Random bytes
/// never carry a valid cookie, so they never open a session.
pub fn dtls_datagrams(data: &[u8]) {
    use crate::transport::dtls::{DtlsServer, Hello, is_client_hello, normalize_records};
    thread_local! {
        static SERVER: std::cell::RefCell<Option<DtlsServer>> = const { std::cell::RefCell::new(None) };
    }
    let peer = std::net::SocketAddr::from(([192, 0, 2, 1], 5684));
    SERVER.with_borrow_mut(|server| {
        let server = server.get_or_insert_with(|| {
            DtlsServer::new(std::sync::Arc::new(|_: &[u8]| None)).expect("a DTLS context")
        });
        let mut rest = data;
        while let Some((len, tail)) = rest.split_first_chunk::<2>() {
            let len = usize::from(u16::from_be_bytes(*len)).min(tail.len());
            let mut datagram = tail[..len].to_vec();
            rest = &tail[len..];
            normalize_records(&mut datagram);
            if is_client_hello(&datagram) {
                assert!(
                    !matches!(server.hello(peer, &datagram), Hello::Session(..)),
                    "a session without a cookie round trip"
                );
            }
        }
    });
}

/// A device filter expression (`?filter=`, rollout targets): parsed, and if it parses, evaluated
/// against a device; an error names a column within the text (or just past it).
pub fn device_filter(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match updraft_core::Filter::parse(text) {
        Ok(filter) => {
            let tags = vec!["beta".to_owned(), "ünï*".to_owned()];
            let attributes = [("region".to_owned(), "eu-β".to_owned())].into();
            let _ = filter.matches(&updraft_core::DeviceFacts {
                id: "sensor-17",
                project: Some("plant"),
                profile: None,
                tags: &tags,
                attributes: &attributes,
                firmware: Some(("fw", "1.10.2-rc1")),
                software: None,
                last_seen: Some(0),
                now: i64::MAX,
            });
        }
        Err(error) => assert!(
            error.column >= 1 && error.column <= text.chars().count() + 1,
            "{error}"
        ),
    }
}
