//! Bytes an MQTT client sends before it has logged in: the protocol sniff and the packets the endpoint reads, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    updraft_server::fuzzing::mqtt_before_login(data);
});
