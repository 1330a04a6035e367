//! Any bytes an LwM2M client may send: a Register's query and link-format payload, and resource
//! values in every content format (text, TLV, CBOR, SenML JSON and CBOR, LwM2M JSON) decode to a
//! value or an error — never a panic or a runaway recursion.
#![no_main]

use libfuzzer_sys::fuzz_target;
use updraft_wire::lwm2m;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = lwm2m::register_query(text.split('&'));
    }
    let _ = lwm2m::links(data);
    for format in [
        None,
        Some(lwm2m::TEXT),
        Some(lwm2m::TLV),
        Some(lwm2m::OLD_TLV),
        Some(lwm2m::CBOR),
        Some(lwm2m::SENML_JSON),
        Some(lwm2m::SENML_CBOR),
        Some(lwm2m::LWM2M_JSON),
        Some(lwm2m::LWM2M_CBOR),
    ] {
        let _ = lwm2m::integer(format, data);
    }
    let _ = lwm2m::senml_numbers(lwm2m::SENML_JSON, data);
    let _ = lwm2m::senml_numbers(lwm2m::SENML_CBOR, data);
});
