//! hawkBit DDI deployment feedback and configData bodies.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    updraft_server::fuzzing::ddi_bodies(data);
});
