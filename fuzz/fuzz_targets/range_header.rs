//! A Range header against a blob: every range inside the blob, at most 16, coalesced.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    updraft_server::fuzzing::range_header(data);
});
