//! `parse_frame` must give `Ok` or a typed error for any bytes under any link type, and what
//! it returns must be consistent with the input.
#![no_main]

use cutls_dataplane::wire::{parse_frame, LinkType};
use libfuzzer_sys::fuzz_target;

/// The link types `parse_frame` decodes, plus one it must refuse.
const LINK_TYPES: [u32; 9] = [0, 1, 101, 108, 113, 228, 229, 276, 147];

fuzz_target!(|input: &[u8]| {
    let Some((&selector, frame)) = input.split_first() else {
        return;
    };
    let link = LinkType::from(LINK_TYPES[usize::from(selector) % LINK_TYPES.len()]);
    if let Ok(decoded) = parse_frame(link, frame) {
        if let Some(tcp) = decoded.tcp() {
            // The payload is a slice of the input, after the TCP header.
            assert!(tcp.payload.len() + tcp.header_len <= frame.len());
            assert!(tcp.header_len >= 20 && tcp.header_len <= 60);
        }
    }
});
