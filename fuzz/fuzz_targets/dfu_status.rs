//! Any bytes a Drogue DFU device may send: the Status decoder answers a Status or an error, never
//! a panic, and what it accepts survives the device-side encoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use updraft_wire::dfu::{self, Encoding};

fuzz_target!(|data: &[u8]| {
    for encoding in [Encoding::Cbor, Encoding::Json, Encoding::of(None, data)] {
        if let Ok(status) = dfu::decode(encoding, data) {
            let again = dfu::decode(Encoding::Cbor, &dfu::encode_status(&status));
            assert_eq!(again, Ok(status));
        }
    }
    let _ = dfu::decode_command(data);
});
