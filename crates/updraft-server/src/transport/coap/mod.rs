//! The CoAP exchange layer (RFC 7252 over UDP or a DTLS session), shared by every protocol that
//! speaks CoAP: integer and text options through coap-lite's option values, the duplicate cache
//! that answers a retransmitted confirmable request without handling it twice ([`Dedup`]),
//! Block2 windows ([`block2`]) and Block1 values ([`Block`]), and our own confirmable requests
//! with RFC 7252's back-off, routed back by peer and token ([`Exchanges`]). It knows messages
//! and peers, not what a resource means.

mod block;
mod dedup;
mod exchange;

use coap_lite::option_value::OptionValueU64;
use coap_lite::{CoapOption, Packet};

pub use self::block::{Block, Block2, MAX_BLOCK, block2};
pub use self::dedup::{Dedup, Seen};
pub use self::exchange::Exchanges;

/// An integer option value (RFC 7252 §3.2: big-endian, no leading zeros); longer than eight
/// bytes reads as `u64::MAX`.
pub fn uint(bytes: &[u8]) -> u64 {
    OptionValueU64::try_from(bytes.to_vec()).map_or(u64::MAX, |v| v.0)
}

/// An integer as an option value, in the fewest bytes.
pub fn encode_uint(value: u64) -> Vec<u8> {
    Vec::from(OptionValueU64(value))
}

/// Every value of a repeatable text option (Uri-Path, Uri-Query, Location-Path).
pub fn strings(packet: &Packet, option: CoapOption) -> Vec<String> {
    packet
        .get_option(option)
        .map(|values| {
            values
                .iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uints_round_trip_in_the_fewest_bytes() {
        for value in [1u64, 255, 256, 65_535, 65_536, 1 << 40, u64::MAX] {
            let bytes = encode_uint(value);
            assert_eq!(uint(&bytes), value);
            assert!(bytes.first().is_some_and(|b| *b != 0), "{value}: {bytes:?}");
        }
        assert_eq!(encode_uint(0), Vec::<u8>::new());
        assert_eq!(uint(&[]), 0);
        assert_eq!(uint(&[1; 9]), u64::MAX);
    }
}
