//! TCP sequence numbers: 32-bit values compared and subtracted modulo 2^32 (RFC 9293 section
//! 3.4), as smoltcp's `TcpSeqNumber`.
//!
//! Two sequence numbers compare by the sign of their wrapping difference, so `a < b` means "b
//! is less than 2^31 ahead of a". That order is not transitive over the whole space; it is
//! meaningful for numbers within a window of each other, which is the only way TCP uses it.
//! Arithmetic never panics: adding or subtracting a length wraps modulo 2^32.

use core::cmp::Ordering;
use core::fmt;
use core::ops::{Add, AddAssign, Sub, SubAssign};

/// A TCP sequence or acknowledgment number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SeqNumber(pub u32);

impl SeqNumber {
    /// The signed distance from `other` to `self`: positive when `self` is ahead.
    pub fn wrapping_distance_from(self, other: SeqNumber) -> i32 {
        self.0.wrapping_sub(other.0) as i32
    }

    /// The later of two sequence numbers in sequence-space order.
    pub fn max(self, other: SeqNumber) -> SeqNumber {
        if self >= other {
            self
        } else {
            other
        }
    }

    /// The earlier of two sequence numbers in sequence-space order.
    pub fn min(self, other: SeqNumber) -> SeqNumber {
        if self <= other {
            self
        } else {
            other
        }
    }

    /// True when `self` lies in the half-open range `[start, end)` of sequence space.
    pub fn is_in_range(self, start: SeqNumber, end: SeqNumber) -> bool {
        self.0.wrapping_sub(start.0) < end.0.wrapping_sub(start.0)
    }
}

impl fmt::Display for SeqNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl PartialOrd for SeqNumber {
    fn partial_cmp(&self, other: &SeqNumber) -> Option<Ordering> {
        Some(self.wrapping_distance_from(*other).cmp(&0))
    }
}

impl Add<usize> for SeqNumber {
    type Output = SeqNumber;

    /// Advances by a length; lengths wrap modulo 2^32 as sequence space does.
    fn add(self, length: usize) -> SeqNumber {
        // Truncating to u32 is reduction modulo 2^32, the arithmetic of sequence space.
        SeqNumber(self.0.wrapping_add(length as u32))
    }
}

impl AddAssign<usize> for SeqNumber {
    fn add_assign(&mut self, length: usize) {
        *self = *self + length;
    }
}

impl Sub<usize> for SeqNumber {
    type Output = SeqNumber;

    fn sub(self, length: usize) -> SeqNumber {
        // Truncating to u32 is reduction modulo 2^32, the arithmetic of sequence space.
        SeqNumber(self.0.wrapping_sub(length as u32))
    }
}

impl SubAssign<usize> for SeqNumber {
    fn sub_assign(&mut self, length: usize) {
        *self = *self - length;
    }
}

impl Sub<SeqNumber> for SeqNumber {
    type Output = i32;

    /// The signed distance `self - other` in sequence space.
    fn sub(self, other: SeqNumber) -> i32 {
        self.wrapping_distance_from(other)
    }
}

/// The 64-bit stream offset of a 32-bit sequence distance: of the offsets with those low 32
/// bits, the one within 2^31 of `reference` (a recent offset of the same stream). Streams
/// longer than 4 GiB keep counting where `SeqNumber` wraps.
pub fn unwrap_offset(reference: u64, distance: u32) -> u64 {
    let base = reference & !0xffff_ffff;
    let candidate = base | distance as u64;
    if candidate + (1 << 31) < reference {
        candidate + (1 << 32)
    } else if candidate > reference + (1 << 31) && candidate >= 1 << 32 {
        candidate - (1 << 32)
    } else {
        candidate
    }
}

/// One direction of a connection in sequence space: the 64-bit stream offsets the box counts
/// in (0 is the first byte after the SYN) and the 32-bit sequence numbers that carry them on
/// the wire, from the direction's initial sequence number. The one place where an offset
/// becomes a sequence number and back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqSpace {
    isn: SeqNumber,
}

impl SeqSpace {
    pub fn new(isn: u32) -> SeqSpace {
        SeqSpace { isn: SeqNumber(isn) }
    }

    /// The sequence number of the SYN.
    pub fn isn(self) -> SeqNumber {
        self.isn
    }

    /// The sequence number that carries stream offset `offset` (and, for an acknowledgement,
    /// acknowledges everything before it).
    pub fn seq(self, offset: u64) -> SeqNumber {
        // Truncating the offset to u32 is reduction modulo 2^32, as sequence space wraps.
        SeqNumber(self.isn.0.wrapping_add(1).wrapping_add(offset as u32))
    }

    /// The stream offset `seq` carries: of the offsets it may stand for, the one within 2^31 of
    /// `near` (a recent offset of the same stream).
    pub fn offset(self, seq: SeqNumber, near: u64) -> u64 {
        unwrap_offset(near, seq.0.wrapping_sub(self.isn.0.wrapping_add(1)))
    }

    /// The 32-bit distance of `seq` past offset 0, for a stream shorter than 4 GiB or a caller
    /// that knows it is near the start (a handshake).
    pub fn distance(self, seq: SeqNumber) -> u32 {
        seq.0.wrapping_sub(self.isn.0.wrapping_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_space_maps_offsets_across_the_wrap() {
        let space = SeqSpace::new(0xffff_fff0);
        assert_eq!(space.seq(0), SeqNumber(0xffff_fff1));
        assert_eq!(space.seq(0x0f), SeqNumber(0));
        assert_eq!(space.seq(0x1f), SeqNumber(0x10));
        assert_eq!(space.offset(SeqNumber(0x10), 0), 0x1f);
        assert_eq!(space.distance(SeqNumber(0x10)), 0x1f);
        // Past 4 GiB the same sequence number stands for the offset near the reference.
        assert_eq!(space.seq(0x1_0000_001f), SeqNumber(0x10));
        assert_eq!(space.offset(SeqNumber(0x10), 0x1_0000_0000), 0x1_0000_001f);
        assert_eq!(space.offset(SeqNumber(0xffff_fff1), 0x1_0000_0005), 0x1_0000_0000);
        // The SYN is one before offset 0.
        assert_eq!(space.isn() + 1, space.seq(0));
    }

    #[test]
    fn offsets_unwrap_across_the_32_bit_boundary() {
        assert_eq!(unwrap_offset(0, 100), 100);
        assert_eq!(unwrap_offset(0xffff_ff00, 0x10), 0x1_0000_0010);
        assert_eq!(unwrap_offset(0x1_0000_0010, 0xffff_ff00), 0xffff_ff00);
        assert_eq!(unwrap_offset(5000, 4000), 4000);
    }
    use proptest::prelude::*;

    #[test]
    fn addition_wraps() {
        assert_eq!(SeqNumber(u32::MAX) + 1, SeqNumber(0));
        assert_eq!(SeqNumber(0xffff_fff0) + 0x20, SeqNumber(0x10));
        let mut seq = SeqNumber(5);
        seq -= 10;
        assert_eq!(seq, SeqNumber(u32::MAX - 4));
        seq += 10;
        assert_eq!(seq, SeqNumber(5));
        assert_eq!(SeqNumber(3) - 4usize, SeqNumber(u32::MAX));
    }

    #[test]
    fn difference_is_signed_across_the_wrap() {
        assert_eq!(SeqNumber(0x10) - SeqNumber(0xffff_fff0), 0x20);
        assert_eq!(SeqNumber(0xffff_fff0) - SeqNumber(0x10), -0x20);
        assert_eq!(SeqNumber(7) - SeqNumber(7), 0);
    }

    #[test]
    fn order_follows_the_wrap() {
        assert!(SeqNumber(0xffff_fff0) < SeqNumber(0x10));
        assert!(SeqNumber(0x10) > SeqNumber(0xffff_fff0));
        assert!(SeqNumber(1) < SeqNumber(2));
        assert_eq!(SeqNumber(0xffff_fff0).max(SeqNumber(0x10)), SeqNumber(0x10));
        assert_eq!(
            SeqNumber(0xffff_fff0).min(SeqNumber(0x10)),
            SeqNumber(0xffff_fff0)
        );
    }

    #[test]
    fn range_membership_wraps() {
        let start = SeqNumber(0xffff_fffe);
        let end = start + 4;
        assert!(SeqNumber(0xffff_ffff).is_in_range(start, end));
        assert!(SeqNumber(1).is_in_range(start, end));
        assert!(!SeqNumber(2).is_in_range(start, end));
        assert!(!SeqNumber(0xffff_fffd).is_in_range(start, end));
    }

    proptest! {
        #[test]
        fn a_space_round_trips_offsets_near_the_reference(isn in any::<u32>(), offset in 0u64..(1 << 40), back in 0u64..(1 << 30)) {
            let space = SeqSpace::new(isn);
            let near = offset.saturating_sub(back);
            prop_assert_eq!(space.offset(space.seq(offset), near), offset);
            prop_assert_eq!(space.offset(space.seq(offset), offset + back), offset);
        }

        #[test]
        fn add_then_subtract_is_identity(start in any::<u32>(), length in 0usize..(1 << 31)) {
            let seq = SeqNumber(start);
            let later = seq + length;
            prop_assert_eq!(later - length, seq);
            prop_assert_eq!((later - seq) as i64, length as i64);
            if length > 0 {
                prop_assert!(later > seq);
                prop_assert!(seq < later);
            }
        }
    }
}
