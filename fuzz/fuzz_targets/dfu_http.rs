//! Drogue DFU over HTTP: the Basic-auth header and the ?as= query.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    updraft_server::fuzzing::dfu_http(data);
});
