//! Any bytes an AWS IoT stream client may send: a GetStream or DescribeStream request in CBOR or
//! JSON decodes to a request or AWS's error, and the blocks it selects stay inside the file and
//! the per-request limits — never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use updraft_wire::aws::{self, Format};

fuzz_target!(|data: &[u8]| {
    let (size, body) = match data.split_first_chunk::<4>() {
        Some((size, body)) => (u64::from(u32::from_le_bytes(*size)), body),
        None => (1000, data),
    };
    for format in [Format::Cbor, Format::Json] {
        let _ = aws::decode_describe(format, body);
        let _ = aws::client_token(format, body);
        if let Ok(request) = aws::decode_get(format, body)
            && let Ok(blocks) = aws::blocks(&request, size)
        {
            assert!(blocks.windows(2).all(|w| w[0] < w[1]));
            assert!(blocks.iter().all(|b| b * request.block_size < size));
            assert!(blocks.len() as u64 * request.block_size <= u64::from(aws::MAX_REQUEST_BYTES));
        }
    }
});
