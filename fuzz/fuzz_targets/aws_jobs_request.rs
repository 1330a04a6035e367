//! AWS IoT Jobs request bodies (update, start-next, get).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    updraft_server::fuzzing::aws_jobs_request(data);
});
