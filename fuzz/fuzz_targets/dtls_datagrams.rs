//! Datagrams at the DTLS listener: no session opens without a cookie round trip, nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    updraft_server::fuzzing::dtls_datagrams(data);
});
