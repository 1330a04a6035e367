//! ThingsBoard telemetry, attribute requests and fw_state reports.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    updraft_server::fuzzing::thingsboard_messages(data);
});
