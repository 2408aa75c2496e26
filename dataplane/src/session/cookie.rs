//! What a SYN cookie remembers of the client's SYN beyond the MSS: its window scale and whether
//! it permits SACK, kept in the low bits of the timestamp the SYN-ACK carries (the encoding
//! Linux uses, net/ipv4/syncookies.c), so that a connection made from a cookie keeps large
//! windows, SACK and timestamps. The client echoes our timestamp in its ACK, which is how the
//! options come back. A SYN without timestamps keeps only the MSS, as on Linux: the SYN-ACK then
//! offers no other option either.
//!
//! The low six bits of the timestamp value: bits 0-3 the client's window scale (15: none), bit 4
//! SACK permitted, bit 5 unused (Linux: ECN, which the box does not negotiate). The value stays
//! at or below the clock, so the box's later timestamps never go backwards from it.

/// Bits of the timestamp value that carry options.
const OPTION_BITS: u32 = 0x3f;
const WINDOW_SCALE_MASK: u32 = 0x0f;
/// Window scale bits meaning "the SYN offered no window scale".
const NO_WINDOW_SCALE: u32 = 0x0f;
const SACK_PERMITTED: u32 = 0x10;

/// The largest window scale RFC 7323 allows (larger values are taken as 14).
const MAX_WINDOW_SCALE: u8 = 14;

/// How old an echoed cookie timestamp may be, in timestamp ticks (milliseconds): the two 64 s
/// slots a cookie's ISN is good for.
const COOKIE_LIFETIME_TICKS: u32 = 128_000;

/// The SYN options a cookie's timestamp carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CookieOptions {
    pub window_scale: Option<u8>,
    pub sack_permitted: bool,
}

impl CookieOptions {
    /// What a cookie keeps of a SYN without timestamps: nothing beyond the MSS.
    pub(crate) const ONLY_MSS: CookieOptions = CookieOptions { window_scale: None, sack_permitted: false };

    /// The timestamp value for a cookie's SYN-ACK at clock `now_ticks`: the clock with its low
    /// bits replaced by the options, and at most the clock.
    pub(crate) fn encode(self, now_ticks: u32) -> u32 {
        let scale = self.window_scale.map_or(NO_WINDOW_SCALE, |scale| u32::from(scale.min(MAX_WINDOW_SCALE)));
        let bits = scale | if self.sack_permitted { SACK_PERMITTED } else { 0 };
        let value = (now_ticks & !OPTION_BITS) | bits;
        if value > now_ticks {
            // Going back one step of the option bits keeps them and stays behind the clock.
            value.wrapping_sub(OPTION_BITS + 1)
        } else {
            value
        }
    }

    /// The options of a timestamp the client echoed (`echo`), if it can be ours: not ahead of
    /// the clock and not older than a cookie lives. A forged or stale echo fails the cookie.
    pub(crate) fn decode(echo: u32, now_ticks: u32) -> Option<CookieOptions> {
        let age = now_ticks.wrapping_sub(echo);
        if age > COOKIE_LIFETIME_TICKS {
            // Older than the cookie's two slots, or (wrapped around) from the future.
            return None;
        }
        // Four bits hold 0-14 or "none": every value decodes.
        let scale = echo & WINDOW_SCALE_MASK;
        Some(CookieOptions {
            window_scale: (scale != NO_WINDOW_SCALE).then_some(scale as u8),
            sack_permitted: echo & SACK_PERMITTED != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_survive_the_round_trip() {
        for window_scale in [None, Some(0), Some(7), Some(14)] {
            for sack_permitted in [false, true] {
                let options = CookieOptions { window_scale, sack_permitted };
                for now in [0x40u32, 1_000_000, 0x7fff_ffc0, u32::MAX, 0x0000_0100] {
                    let value = options.encode(now);
                    assert!(now.wrapping_sub(value) < 64, "{options:?} at {now:#x}: {value:#x} behind the clock");
                    assert_eq!(CookieOptions::decode(value, now), Some(options), "at {now:#x}");
                    assert_eq!(CookieOptions::decode(value, now.wrapping_add(100_000)), Some(options));
                }
            }
        }
    }

    #[test]
    fn literal_encodings() {
        // Linux's layout: scale 7, SACK: 0b01_0111 in the low six bits.
        let options = CookieOptions { window_scale: Some(7), sack_permitted: true };
        assert_eq!(options.encode(0x1234_5678), 0x1234_5657);
        // The clock's low bits below the options': one step back.
        assert_eq!(options.encode(0x1234_5640), 0x1234_5617);
        let none = CookieOptions { window_scale: None, sack_permitted: false };
        assert_eq!(none.encode(0x1234_567f), 0x1234_564f);
        // A scale above 14 is taken as 14 (RFC 7323 2.3).
        assert_eq!(CookieOptions { window_scale: Some(15), sack_permitted: false }.encode(0x100), 0xce);
    }

    #[test]
    fn stale_and_future_echoes_fail() {
        let now = 10_000_000;
        let value = CookieOptions { window_scale: Some(7), sack_permitted: true }.encode(now);
        assert_eq!(CookieOptions::decode(value, now + COOKIE_LIFETIME_TICKS + 64), None, "too old");
        assert_eq!(CookieOptions::decode(value + 1_000, now), None, "from the future");
    }
}
