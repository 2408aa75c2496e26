//! The internet checksum: full computation (RFC 1071), the IPv4 and IPv6 pseudo-headers that
//! TCP, UDP and ICMPv6 cover, and incremental update (RFC 1624) for in-place rewrites.
//!
//! The session engine rewrites addresses, ports and sequence numbers of segments it forwards;
//! recomputing the checksum over a whole segment each time would touch every payload byte
//! again, so it patches the checksum instead with [`update_u16`], [`update_u32`],
//! [`update_ipv4_address`] and [`update_ipv6_address`]. The rewritten words must sit at even
//! offsets from the start of the checksummed data (every header field that is rewritten does).
//!
//! Not supported: the UDP rule that a computed checksum of zero is sent as `0xffff` is left to
//! the caller (cutls does not emit UDP).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::IpProtocol;

/// Adds `data` as big-endian 16-bit words (an odd last byte padded with zero) to a running
/// one's-complement sum. The result is not folded: fold with [`fold`] or finish with [`finish`].
/// Only its folded value is meaningful: whole 8-byte blocks are summed as native words and
/// folded on their own (see [`accumulate_blocks`]), so two calls on the same data may leave
/// different unfolded sums that fold alike.
///
/// The accumulator is a `u64` that grows by less than 2^17 per call, so any number of calls
/// below 2^47 adds without overflow.
pub fn accumulate(mut sum: u64, data: &[u8]) -> u64 {
    let blocks = data.len() / 8 * 8;
    if blocks > 0 {
        sum += u64::from(accumulate_blocks(&data[..blocks]));
    }
    let mut words = data[blocks..].chunks_exact(2);
    for word in &mut words {
        sum += u64::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// The folded one's-complement sum of `data` (a multiple of 8 bytes long) as big-endian
/// words, computed 8 bytes at a time: the sum of the 16-bit words read in the machine's own
/// byte order is the big-endian sum with its two bytes swapped (RFC 1071 2(B), byte order
/// independence), so the words are added as they lie and the folded sum is swapped once.
/// Each 8-byte word is added as two 32-bit halves (congruent to its four 16-bit words modulo
/// 0xffff, since 2^16 = 1 there); zero only when every byte is, as the 16-bit sum is.
fn accumulate_blocks(data: &[u8]) -> u16 {
    let mut sum = 0u64;
    for block in data.chunks_exact(8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(block);
        let word = u64::from_ne_bytes(word);
        // Two halves below 2^32 each: a u64 takes 2^31 blocks (16 GiB) before it could overflow.
        sum += (word & 0xffff_ffff) + (word >> 32);
    }
    u16::from_be(fold(sum))
}

/// Folds a running sum to 16 bits with end-around carry.
pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop above leaves at most 16 significant bits.
    sum as u16
}

/// The checksum field value for a running sum: the one's complement of the folded sum.
pub fn finish(sum: u64) -> u16 {
    !fold(sum)
}

/// The RFC 1071 checksum of `data`, as written into a header whose checksum field was zero.
pub fn internet_checksum(data: &[u8]) -> u16 {
    finish(accumulate(0, data))
}

/// True when `data`, checksum field included, sums to all ones: the receive-side check.
pub fn verify(data: &[u8]) -> bool {
    fold(accumulate(0, data)) == 0xffff
}

/// The running sum of the IPv4 pseudo-header for an upper-layer packet of `length` bytes.
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: IpProtocol, length: u32) -> u64 {
    let mut sum = accumulate(0, &src.octets());
    sum = accumulate(sum, &dst.octets());
    sum += u64::from(u8::from(protocol));
    // IPv4 lengths are 16 bits; the pseudo-header adds the length as a 16-bit word, and adding
    // both halves of a wider value keeps the sum identical for every value that fits.
    sum + u64::from(length >> 16) + u64::from(length & 0xffff)
}

/// The running sum of the IPv6 pseudo-header (RFC 8200 section 8.1) for an upper-layer packet
/// of `length` bytes.
pub fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, protocol: IpProtocol, length: u32) -> u64 {
    let mut sum = accumulate(0, &src.octets());
    sum = accumulate(sum, &dst.octets());
    sum = accumulate(sum, &length.to_be_bytes());
    sum + u64::from(u8::from(protocol))
}

/// The checksum of an upper-layer packet (`segment`, checksum field zeroed or included: see
/// [`verify_upper_layer_v4`]) under an IPv4 pseudo-header.
pub fn upper_layer_checksum_v4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: IpProtocol,
    segment: &[u8],
) -> u16 {
    let length = segment_length(segment);
    finish(accumulate(
        pseudo_header_v4(src, dst, protocol, length),
        segment,
    ))
}

/// The checksum of an upper-layer packet under an IPv6 pseudo-header.
pub fn upper_layer_checksum_v6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    protocol: IpProtocol,
    segment: &[u8],
) -> u16 {
    let length = segment_length(segment);
    finish(accumulate(
        pseudo_header_v6(src, dst, protocol, length),
        segment,
    ))
}

/// True when `segment`, its checksum field included, verifies under the IPv4 pseudo-header.
pub fn verify_upper_layer_v4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: IpProtocol,
    segment: &[u8],
) -> bool {
    let length = segment_length(segment);
    fold(accumulate(
        pseudo_header_v4(src, dst, protocol, length),
        segment,
    )) == 0xffff
}

/// True when `segment`, its checksum field included, verifies under the IPv6 pseudo-header.
pub fn verify_upper_layer_v6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    protocol: IpProtocol,
    segment: &[u8],
) -> bool {
    let length = segment_length(segment);
    fold(accumulate(
        pseudo_header_v6(src, dst, protocol, length),
        segment,
    )) == 0xffff
}

/// A segment's length as the pseudo-header's 32-bit field. Segments come from packets whose
/// length field is at most 32 bits wide, so saturating never changes a real value.
fn segment_length(segment: &[u8]) -> u32 {
    u32::try_from(segment.len()).unwrap_or(u32::MAX)
}

/// RFC 1624 equation 3: the checksum after one 16-bit word of the covered data changes from
/// `old_word` to `new_word`: `HC' = ~(~HC + ~m + m')`.
///
/// Equal to a recomputation whenever the covered data does not sum to zero, which holds for
/// every TCP, UDP, ICMPv6 (their pseudo-header carries a non-zero protocol number) and IPv4
/// header (its version nibble is non-zero).
pub fn update_u16(checksum: u16, old_word: u16, new_word: u16) -> u16 {
    let sum = u64::from(!checksum) + u64::from(!old_word) + u64::from(new_word);
    !fold(sum)
}

/// The checksum after a 32-bit field (an IPv4 address, a sequence number) changes: two 16-bit
/// updates in one sum.
pub fn update_u32(checksum: u16, old_value: u32, new_value: u32) -> u16 {
    // The high and low halves, truncated on purpose.
    let old_words = [(old_value >> 16) as u16, old_value as u16];
    let new_words = [(new_value >> 16) as u16, new_value as u16];
    update_words(checksum, &old_words, &new_words)
}

/// The checksum after an IPv4 address in the covered data (or in the pseudo-header) changes.
pub fn update_ipv4_address(checksum: u16, old: Ipv4Addr, new: Ipv4Addr) -> u16 {
    update_u32(checksum, u32::from(old), u32::from(new))
}

/// The checksum after an IPv6 address in the covered data (or in the pseudo-header) changes.
pub fn update_ipv6_address(checksum: u16, old: Ipv6Addr, new: Ipv6Addr) -> u16 {
    update_words(checksum, &old.segments(), &new.segments())
}

/// The checksum after the bytes at `offset` of the covered data change from `old` to `new`
/// (`old.len() == new.len()`), for fields that may sit at an odd offset, such as a TCP
/// timestamp after a single NOP. Bytes at an odd offset are the low half of their 16-bit word;
/// the unchanged byte before them contributes nothing to the difference, so it is taken as zero.
pub fn update_bytes(checksum: u16, offset: usize, old: &[u8], new: &[u8]) -> u16 {
    let starts_odd = offset % 2 == 1;
    let sum_of = |bytes: &[u8]| {
        if starts_odd {
            accumulate_shifted(bytes)
        } else {
            accumulate(0, bytes)
        }
    };
    let (old_sum, new_sum) = (sum_of(old), sum_of(new));
    let sum = u64::from(!checksum) + u64::from(!fold(old_sum)) + u64::from(fold(new_sum));
    !fold(sum)
}

/// The running sum of `data` as if it were preceded by one zero byte.
fn accumulate_shifted(data: &[u8]) -> u64 {
    let mut sum = 0u64;
    for (index, byte) in data.iter().enumerate() {
        // With a zero byte in front, byte 0 is the low half of a word, byte 1 the high half...
        sum += if index % 2 == 0 {
            u64::from(*byte)
        } else {
            u64::from(*byte) << 8
        };
    }
    sum
}

/// RFC 1624 equation 3 over several words at once: `~(~HC + sum(~m) + sum(m'))`.
fn update_words(checksum: u16, old_words: &[u16], new_words: &[u16]) -> u16 {
    let mut sum = u64::from(!checksum);
    for (old, new) in old_words.iter().zip(new_words) {
        sum += u64::from(!*old) + u64::from(*new);
    }
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The IPv4 header of RFC 1071's era example widely used in textbooks:
    /// 45 00 00 73 00 00 40 00 40 11 [b8 61] c0 a8 00 01 c0 a8 00 c7.
    const IPV4_HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn full_checksum_of_known_ipv4_header() {
        let mut header = IPV4_HEADER;
        assert!(verify(&header));
        header[10] = 0;
        header[11] = 0;
        assert_eq!(internet_checksum(&header), 0xb861);
    }

    #[test]
    fn rfc1071_example_sum() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2 after folding.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(accumulate(0, &data)), 0xddf2);
        assert_eq!(internet_checksum(&data), !0xddf2);
    }

    /// The reference: big-endian 16-bit words one at a time, as RFC 1071 states it.
    fn naive_sum(data: &[u8]) -> u16 {
        let mut sum = 0u64;
        for (i, byte) in data.iter().enumerate() {
            sum += if i % 2 == 0 { u64::from(*byte) << 8 } else { u64::from(*byte) };
        }
        fold(sum)
    }

    #[test]
    fn blocks_fold_like_words_one_at_a_time() {
        // All ones, all zeros, and the sums whose folding carries most.
        for len in [0usize, 1, 7, 8, 9, 16, 20, 1460, 1500, 9000] {
            for fill in [0x00u8, 0xff, 0x80, 0x7f] {
                let data = vec![fill; len];
                assert_eq!(fold(accumulate(0, &data)), naive_sum(&data), "len {len} fill {fill:#x}");
            }
        }
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(accumulate(0, &[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }

    #[test]
    fn corrupted_header_fails_verification() {
        let mut header = IPV4_HEADER;
        header[15] ^= 0x01;
        assert!(!verify(&header));
    }

    #[test]
    fn incremental_ttl_decrement_matches_rfc1624_example() {
        // Decrement the TTL (first byte of the TTL/protocol word) and patch the checksum.
        let mut header = IPV4_HEADER;
        let old_word = u16::from_be_bytes([header[8], header[9]]);
        header[8] -= 1;
        let new_word = u16::from_be_bytes([header[8], header[9]]);
        let patched = update_u16(0xb861, old_word, new_word);
        header[10] = 0;
        header[11] = 0;
        assert_eq!(patched, internet_checksum(&header));
        assert_eq!(patched, 0xb961);
    }

    fn checksum_with_field_zeroed(data: &mut [u8], field_at: usize) -> u16 {
        data[field_at] = 0;
        data[field_at + 1] = 0;
        internet_checksum(data)
    }

    proptest! {
        #[test]
        fn any_bytes_fold_like_words_one_at_a_time(
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            split in any::<prop::sample::Index>(),
        ) {
            prop_assert_eq!(fold(accumulate(0, &data)), naive_sum(&data));
            // Sums of pieces split at an even offset add up (as the pseudo-header and the
            // segment do).
            let at = split.index(data.len() + 1) & !1;
            let sum = accumulate(accumulate(0, &data[..at]), &data[at..]);
            prop_assert_eq!(fold(sum), naive_sum(&data));
        }

        #[test]
        fn incremental_u16_equals_recompute(
            mut data in proptest::collection::vec(any::<u8>(), 4..200),
            word_index in any::<prop::sample::Index>(),
            new_word in any::<u16>(),
        ) {
            // The checksum field lives in the first word; rewrite any other aligned word.
            let words = data.len() / 2;
            let at = 2 * (1 + word_index.index(words - 1));
            let before = checksum_with_field_zeroed(&mut data, 0);
            let old_word = u16::from_be_bytes([data[at], data[at + 1]]);
            data[at..at + 2].copy_from_slice(&new_word.to_be_bytes());
            prop_assert_eq!(update_u16(before, old_word, new_word), internet_checksum(&data));
        }

        #[test]
        fn incremental_u32_equals_recompute(
            mut data in proptest::collection::vec(any::<u8>(), 6..200),
            word_index in any::<prop::sample::Index>(),
            new_value in any::<u32>(),
        ) {
            let pairs = (data.len() - 2) / 2 - 1;
            let at = 2 + 2 * word_index.index(pairs);
            let before = checksum_with_field_zeroed(&mut data, 0);
            let old_value = u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
            data[at..at + 4].copy_from_slice(&new_value.to_be_bytes());
            prop_assert_eq!(update_u32(before, old_value, new_value), internet_checksum(&data));
        }

        #[test]
        fn incremental_pseudo_header_addresses_equal_recompute(
            payload in proptest::collection::vec(any::<u8>(), 0..120),
            src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(), new_src in any::<[u8; 16]>(),
            src4 in any::<[u8; 4]>(), dst4 in any::<[u8; 4]>(), new_src4 in any::<[u8; 4]>(),
        ) {
            let (src, dst, new_src) = (Ipv6Addr::from(src), Ipv6Addr::from(dst), Ipv6Addr::from(new_src));
            let before = upper_layer_checksum_v6(src, dst, IpProtocol::Tcp, &payload);
            prop_assert_eq!(
                update_ipv6_address(before, src, new_src),
                upper_layer_checksum_v6(new_src, dst, IpProtocol::Tcp, &payload)
            );
            let (src4, dst4, new_src4) = (Ipv4Addr::from(src4), Ipv4Addr::from(dst4), Ipv4Addr::from(new_src4));
            let before = upper_layer_checksum_v4(src4, dst4, IpProtocol::Tcp, &payload);
            prop_assert_eq!(
                update_ipv4_address(before, src4, new_src4),
                upper_layer_checksum_v4(new_src4, dst4, IpProtocol::Tcp, &payload)
            );
        }

        #[test]
        fn incremental_bytes_at_any_offset_equal_recompute(
            mut data in proptest::collection::vec(any::<u8>(), 16..200),
            start in any::<prop::sample::Index>(),
            replacement in proptest::collection::vec(any::<u8>(), 1..12),
        ) {
            // Byte 0..2 holds the checksum; rewrite `replacement.len()` bytes anywhere after it.
            let length = replacement.len().min(data.len() - 2);
            let offset = 2 + start.index(data.len() - 2 - length + 1);
            let before = checksum_with_field_zeroed(&mut data, 0);
            let old = data[offset..offset + length].to_vec();
            data[offset..offset + length].copy_from_slice(&replacement[..length]);
            prop_assert_eq!(
                update_bytes(before, offset, &old, &replacement[..length]),
                internet_checksum(&data)
            );
        }

        #[test]
        fn a_filled_checksum_always_verifies(mut data in proptest::collection::vec(any::<u8>(), 2..200)) {
            let checksum = checksum_with_field_zeroed(&mut data, 0);
            data[0..2].copy_from_slice(&checksum.to_be_bytes());
            prop_assert!(verify(&data));
        }
    }
}
