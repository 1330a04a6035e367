//! Block-wise transfers (RFC 7959): the Block2 window a request asks for, and Block option
//! values. coap-lite's `BlockValue` holds a 16-bit block number; RFC 7959 allows 20 bits, which
//! a 1 KiB-block image past 64 MiB needs, so the value is read here.

use coap_lite::{CoapOption, Packet};

use super::{encode_uint, uint};

/// Largest block we send (SZX 6).
pub const MAX_BLOCK: u64 = 1024;

/// A Block1 or Block2 option value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub num: u64,
    pub more: bool,
    /// Size exponent: the block is `16 << szx` bytes.
    pub szx: u8,
}

impl Block {
    /// Reads an option value (at most three bytes: a 20-bit block number).
    pub fn parse(bytes: &[u8]) -> Option<Block> {
        if bytes.len() > 3 {
            return None;
        }
        let value = uint(bytes);
        Some(Block {
            num: value >> 4,
            more: value & 0x8 != 0,
            szx: (value & 0x7) as u8,
        })
    }

    /// The option value.
    pub fn encode(self) -> Vec<u8> {
        encode_uint((self.num << 4) | (u64::from(self.more) << 3) | u64::from(self.szx & 0x7))
    }

    /// The block size in bytes (SZX 7 is reserved and read as 1 KiB).
    pub fn size(self) -> u64 {
        16 << self.szx.min(6)
    }
}

/// Which bytes of a representation one Block2 answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block2 {
    /// The block as the answer's Block2 option says it.
    pub block: Block,
    /// Where it starts in the representation, and how long it is.
    pub start: u64,
    pub len: u64,
    /// The request carried a Block2 option.
    pub asked: bool,
}

/// The block of a `total`-byte representation that `request` asks for: its Block2 option, or the
/// first block of 1 KiB; blocks are never larger than [`MAX_BLOCK`]. `None` for a block past the
/// end (block 0 of an empty representation is empty, not past the end).
pub fn block2(request: &Packet, total: u64) -> Option<Block2> {
    let asked = request.get_first_option(CoapOption::Block2);
    let wanted = match asked {
        Some(value) => Block::parse(value)?,
        None => Block {
            num: 0,
            more: false,
            szx: 6,
        },
    };
    let szx = wanted.szx.min(6);
    let size = (16u64 << szx).min(MAX_BLOCK);
    let start = wanted.num.saturating_mul(size);
    if start > 0 && start >= total {
        return None;
    }
    let len = size.min(total.saturating_sub(start));
    Some(Block2 {
        block: Block {
            num: wanted.num,
            more: start + len < total,
            szx,
        },
        start,
        len,
        asked: asked.is_some(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn asking(block: Option<Block>) -> Packet {
        let mut packet = Packet::new();
        if let Some(block) = block {
            packet.add_option(CoapOption::Block2, block.encode());
        }
        packet
    }

    #[test]
    fn block_values_round_trip_with_twenty_bit_numbers() {
        for block in [
            Block {
                num: 0,
                more: false,
                szx: 0,
            },
            Block {
                num: 5,
                more: true,
                szx: 6,
            },
            Block {
                num: (1 << 20) - 1,
                more: true,
                szx: 2,
            },
        ] {
            assert_eq!(Block::parse(&block.encode()), Some(block));
        }
        assert_eq!(Block::parse(&[1, 2, 3, 4]), None);
    }

    #[test]
    fn the_window_follows_the_request_and_stops_at_the_end() {
        let first = block2(&asking(None), 2500).unwrap();
        assert_eq!(
            (first.start, first.len, first.block.more, first.asked),
            (0, 1024, true, false)
        );
        let last = block2(
            &asking(Some(Block {
                num: 2,
                more: false,
                szx: 6,
            })),
            2500,
        )
        .unwrap();
        assert_eq!((last.start, last.len, last.block.more), (2048, 452, false));
        let small = block2(
            &asking(Some(Block {
                num: 3,
                more: false,
                szx: 2,
            })),
            2500,
        )
        .unwrap();
        assert_eq!((small.start, small.len, small.block.szx), (192, 64, 2));
        assert_eq!(
            block2(
                &asking(Some(Block {
                    num: 3,
                    more: false,
                    szx: 6
                })),
                2500
            ),
            None
        );
        let empty = block2(&asking(None), 0).unwrap();
        assert_eq!((empty.len, empty.block.more), (0, false));
    }
}
