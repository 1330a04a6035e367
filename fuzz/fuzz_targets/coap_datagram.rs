//! A CoAP datagram as the ThingsBoard CoAP and LwM2M listeners read requests.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    updraft_server::fuzzing::coap_datagram(data);
});
