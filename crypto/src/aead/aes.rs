//! The AES block cipher for GCM: AES-NI on x86_64 (round keys exposed to the fused GCM loops),
//! and the `aes` crate everywhere else.

use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};

/// An expanded AES-128 or AES-256 key.
#[derive(Clone)]
pub(crate) enum AesKey {
    /// Boxed: the bitsliced key schedules are twice the size of AES-NI round keys, which is
    /// what nearly every session holds.
    Portable(Box<PortableAes>),
    #[cfg(target_arch = "x86_64")]
    Ni(ni::RoundKeys),
}

#[derive(Clone)]
pub(crate) enum PortableAes {
    Aes128(aes::Aes128),
    Aes256(aes::Aes256),
}

impl AesKey {
    /// Expands `key` (16 or 32 bytes). `allow_ni` false forces the portable code (tests).
    pub(crate) fn new(key: &[u8], allow_ni: bool) -> Option<Self> {
        if key.len() != 16 && key.len() != 32 {
            return None;
        }
        #[cfg(target_arch = "x86_64")]
        if allow_ni && ni::available() {
            return Some(AesKey::Ni(ni::RoundKeys::new(key)));
        }
        let _ = allow_ni;
        let portable = if key.len() == 16 {
            PortableAes::Aes128(aes::Aes128::new(&Array(key.try_into().ok()?)))
        } else {
            PortableAes::Aes256(aes::Aes256::new(&Array(key.try_into().ok()?)))
        };
        Some(AesKey::Portable(Box::new(portable)))
    }

    pub(crate) fn encrypt_block(&self, block: &mut [u8; 16]) {
        match self {
            AesKey::Portable(portable) => portable.encrypt_blocks(core::slice::from_mut(block)),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Ni` keys exist only after `ni::available()` confirmed AES-NI and SSE4.1.
            AesKey::Ni(keys) => unsafe { keys.encrypt_block(block) },
        }
    }

    /// Encrypts the block whose bytes are `block` in little-endian order, kept in registers
    /// (a block assembled in memory from parts and loaded whole stalls on store forwarding).
    pub(crate) fn encrypt_u128(&self, block: u128) -> u128 {
        match self {
            AesKey::Portable(portable) => {
                let mut bytes = block.to_le_bytes();
                portable.encrypt_blocks(core::slice::from_mut(&mut bytes));
                u128::from_le_bytes(bytes)
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Ni` keys exist only after `ni::available()` confirmed AES-NI and SSE4.1.
            AesKey::Ni(keys) => unsafe { keys.encrypt_u128(block) },
        }
    }
}

impl PortableAes {
    /// Encrypts blocks in place (the crate batches them internally).
    pub(crate) fn encrypt_blocks(&self, blocks: &mut [[u8; 16]]) {
        // Array<u8, U16> is a transparent wrapper of [u8; 16].
        let blocks: &mut [Array<u8, aes::cipher::consts::U16>] = Array::cast_slice_from_core_mut(blocks);
        match self {
            PortableAes::Aes128(cipher) => cipher.encrypt_blocks(blocks),
            PortableAes::Aes256(cipher) => cipher.encrypt_blocks(blocks),
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod ni {
    //! AES-NI key expansion and block encryption.

    use core::arch::x86_64::*;

    pub(crate) fn available() -> bool {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
            && std::arch::is_x86_feature_detected!("sse4.1")
            && std::arch::is_x86_feature_detected!("ssse3")
    }

    /// Round keys; `rounds` is 10 (AES-128) or 14 (AES-256), keys `0..=rounds` are used.
    #[derive(Clone)]
    pub(crate) struct RoundKeys {
        pub keys: [__m128i; 15],
        pub rounds: usize,
    }

    impl RoundKeys {
        pub(crate) fn new(key: &[u8]) -> Self {
            // SAFETY: only called after `available()`; `key` is 16 or 32 bytes (checked by the
            // caller) and every load below reads inside it.
            unsafe {
                if key.len() == 16 {
                    expand_128(key)
                } else {
                    expand_256(key)
                }
            }
        }

        /// # Safety
        /// The CPU must support AES-NI.
        #[target_feature(enable = "aes,sse2")]
        pub(crate) unsafe fn encrypt_block(&self, block: &mut [u8; 16]) {
            // SAFETY: 16-byte unaligned load and store on a 16-byte array.
            let mut state = unsafe { _mm_loadu_si128(block.as_ptr() as *const __m128i) };
            state = _mm_xor_si128(state, self.keys[0]);
            for key in &self.keys[1..self.rounds] {
                state = _mm_aesenc_si128(state, *key);
            }
            state = _mm_aesenclast_si128(state, self.keys[self.rounds]);
            // SAFETY: as above.
            unsafe { _mm_storeu_si128(block.as_mut_ptr() as *mut __m128i, state) };
        }

        /// As [`Self::encrypt_block`] on the block whose little-endian value is `block`.
        ///
        /// # Safety
        /// The CPU must support AES-NI and SSE4.1.
        #[target_feature(enable = "aes,sse2,sse4.1")]
        pub(crate) unsafe fn encrypt_u128(&self, block: u128) -> u128 {
            let mut state = _mm_set_epi64x((block >> 64) as i64, block as i64);
            state = _mm_xor_si128(state, self.keys[0]);
            for key in &self.keys[1..self.rounds] {
                state = _mm_aesenc_si128(state, *key);
            }
            state = _mm_aesenclast_si128(state, self.keys[self.rounds]);
            let low = _mm_cvtsi128_si64(state) as u64 as u128;
            let high = _mm_extract_epi64::<1>(state) as u64 as u128;
            low | (high << 64)
        }
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    fn fold(previous: __m128i, assist: __m128i) -> __m128i {
        let mut key = previous;
        key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
        key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
        key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
        _mm_xor_si128(key, assist)
    }

    #[target_feature(enable = "aes,sse2")]
    unsafe fn expand_128(key: &[u8]) -> RoundKeys {
        let mut keys = [_mm_setzero_si128(); 15];
        // SAFETY: the caller passes 16 bytes.
        keys[0] = unsafe { _mm_loadu_si128(key.as_ptr() as *const __m128i) };
        macro_rules! round {
            ($i:expr, $rcon:expr) => {
                keys[$i] = fold(keys[$i - 1], _mm_shuffle_epi32(_mm_aeskeygenassist_si128::<$rcon>(keys[$i - 1]), 0xff));
            };
        }
        round!(1, 0x01);
        round!(2, 0x02);
        round!(3, 0x04);
        round!(4, 0x08);
        round!(5, 0x10);
        round!(6, 0x20);
        round!(7, 0x40);
        round!(8, 0x80);
        round!(9, 0x1b);
        round!(10, 0x36);
        RoundKeys { keys, rounds: 10 }
    }

    #[target_feature(enable = "aes,sse2")]
    unsafe fn expand_256(key: &[u8]) -> RoundKeys {
        let mut keys = [_mm_setzero_si128(); 15];
        // SAFETY: the caller passes 32 bytes.
        unsafe {
            keys[0] = _mm_loadu_si128(key.as_ptr() as *const __m128i);
            keys[1] = _mm_loadu_si128(key.as_ptr().add(16) as *const __m128i);
        }
        macro_rules! pair {
            ($i:expr, $rcon:expr) => {
                keys[$i] = fold(keys[$i - 2], _mm_shuffle_epi32(_mm_aeskeygenassist_si128::<$rcon>(keys[$i - 1]), 0xff));
                keys[$i + 1] =
                    fold(keys[$i - 1], _mm_shuffle_epi32(_mm_aeskeygenassist_si128::<0>(keys[$i]), 0xaa));
            };
        }
        pair!(2, 0x01);
        pair!(4, 0x02);
        pair!(6, 0x04);
        pair!(8, 0x08);
        pair!(10, 0x10);
        pair!(12, 0x20);
        keys[14] = fold(keys[12], _mm_shuffle_epi32(_mm_aeskeygenassist_si128::<0x40>(keys[13]), 0xff));
        RoundKeys { keys, rounds: 14 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fips197(key_hex: &str, expected_hex: &str, allow_ni: bool) {
        let key = hex::decode(key_hex).unwrap();
        let mut block: [u8; 16] = hex::decode("00112233445566778899aabbccddeeff").unwrap().try_into().unwrap();
        AesKey::new(&key, allow_ni).unwrap().encrypt_block(&mut block);
        assert_eq!(hex::encode(block), expected_hex);
    }

    #[test]
    fn fips_197_appendix_c_both_backends() {
        for allow_ni in [false, true] {
            fips197("000102030405060708090a0b0c0d0e0f", "69c4e0d86a7b0430d8cdb78070b4c55a", allow_ni);
            fips197(
                "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
                "8ea2b7ca516745bfeafc49904b496089",
                allow_ni,
            );
        }
    }

    #[test]
    fn bad_key_length_is_refused() {
        assert!(AesKey::new(&[0u8; 24], true).is_none());
    }
}
