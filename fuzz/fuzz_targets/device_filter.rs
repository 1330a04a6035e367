//! A device filter expression: parsed and evaluated without panics; errors name a real column.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    updraft_server::fuzzing::device_filter(data);
});
