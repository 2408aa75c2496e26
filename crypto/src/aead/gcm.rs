//! AES-GCM, split so that any byte range of a record can be processed on its own.
//!
//! [`GcmKey::crypt`] en- or decrypts a range of a record's ciphertext with the counter blocks at
//! that offset (`nonce || 2 + offset/16`) and returns the range's GHASH Horner value. The caller
//! moves that value to its place in the record's hash with [`GcmKey::shift`] (a `dot` by a power
//! of the hash key), which is what lets chunks arrive in any order.
//!
//! On x86_64 with AES-NI and PCLMULQDQ the full blocks go through one fused loop, eight blocks at
//! a time, counter-mode and GHASH interleaved, with one reduction per eight blocks; elsewhere the
//! `aes` crate and the portable field code do the same work block by block.

use super::aes::AesKey;
use super::polyval::{self, Multiplier};

/// Whether a range is being decrypted (GHASH runs over the input) or encrypted (over the output).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Decrypt,
    Encrypt,
}

/// Blocks per iteration of the fused loop, and the number of precomputed key powers.
const STRIDE: usize = 8;
/// Enough doubling powers for any distance inside a record (2^11 blocks > 16 KiB + 256).
const DOUBLING_POWERS: usize = 12;

#[derive(Clone)]
pub(crate) struct GcmKey {
    aes: AesKey,
    /// POLYVAL form of the hash key `E(K, 0)`.
    h: u128,
    /// `h^1 ..= h^8` for the aggregated loop: `powers[i] = h^(i + 1)`.
    powers: [u128; STRIDE],
    /// `doubling[i] = h^(2^i)`, so a shift by `k` costs one `dot` per set bit of `k`.
    doubling: [u128; DOUBLING_POWERS],
    mul: Multiplier,
}

impl GcmKey {
    /// `accelerate` false forces the portable code (the tests run both).
    pub(crate) fn new(key: &[u8], accelerate: bool) -> Option<Self> {
        let aes = AesKey::new(key, accelerate)?;
        let mut h_block = [0u8; 16];
        aes.encrypt_block(&mut h_block);
        let h = polyval::polyval_key_from_ghash_key(&h_block);
        let mul = match aes {
            #[cfg(target_arch = "x86_64")]
            AesKey::Ni(_) => Multiplier::Clmul,
            _ => Multiplier::Soft,
        };
        let mut powers = [h; STRIDE];
        for i in 1..STRIDE {
            powers[i] = mul.dot(powers[i - 1], h);
        }
        let mut doubling = [h; DOUBLING_POWERS];
        for i in 1..DOUBLING_POWERS {
            doubling[i] = mul.dot(doubling[i - 1], doubling[i - 1]);
        }
        Some(GcmKey { aes, h, powers, doubling, mul })
    }

    /// `E(K, nonce || 1)`, XORed into the hash to make the tag.
    pub(crate) fn tag_mask(&self, nonce: &[u8; 12]) -> [u8; 16] {
        let mut block = counter_block(nonce, 1);
        self.aes.encrypt_block(&mut block);
        block
    }

    /// `value * h^k`: moves a Horner value `k` blocks further from the end of the hash.
    pub(crate) fn shift(&self, mut value: u128, k: u64) -> u128 {
        let mut bit = 0;
        let mut k = k;
        while k != 0 {
            if k & 1 == 1 {
                let power = match self.doubling.get(bit) {
                    Some(power) => *power,
                    // Beyond any TLS record: compute the power instead of indexing the table.
                    None => self.mul.pow(self.h, 1u64 << bit),
                };
                value = self.mul.dot(value, power);
            }
            k >>= 1;
            bit += 1;
        }
        value
    }

    /// One Horner step over a 16-byte GHASH block.
    pub(crate) fn horner(&self, acc: u128, block: &[u8; 16]) -> u128 {
        self.mul.dot(acc ^ u128::from_be_bytes(*block), self.h)
    }

    /// Horner step over a block given as its POLYVAL element.
    pub(crate) fn horner_element(&self, acc: u128, element: u128) -> u128 {
        self.mul.dot(acc ^ element, self.h)
    }

    /// En- or decrypts `data`, which sits at byte `offset` of a record's ciphertext, in place,
    /// and returns the Horner value of the blocks it touches (zero outside `data`).
    pub(crate) fn crypt(&self, nonce: &[u8; 12], offset: usize, data: &mut [u8], direction: Direction) -> u128 {
        let mut acc = 0u128;
        let mut done = 0;
        let lead = offset % 16;
        if lead != 0 || data.len() < 16 {
            let take = (16 - lead).min(data.len());
            acc = self.partial_block(nonce, offset / 16, lead, &mut data[..take], acc, direction);
            done = take;
        }
        let full = (data.len() - done) / 16 * 16;
        if full > 0 {
            let block_index = (offset + done) / 16;
            acc = self.bulk(nonce, block_index, &mut data[done..done + full], acc, direction);
            done += full;
        }
        if done < data.len() {
            acc = self.partial_block(nonce, (offset + done) / 16, 0, &mut data[done..], acc, direction);
        }
        acc
    }

    /// A block only partly inside the range: bytes `lead..lead + bytes.len()` of block `index`.
    fn partial_block(
        &self,
        nonce: &[u8; 12],
        index: usize,
        lead: usize,
        bytes: &mut [u8],
        acc: u128,
        direction: Direction,
    ) -> u128 {
        let mut keystream = counter_block(nonce, block_counter(index));
        self.aes.encrypt_block(&mut keystream);
        let mut hashed = [0u8; 16];
        let span = lead..lead + bytes.len();
        if direction == Direction::Decrypt {
            hashed[span.clone()].copy_from_slice(bytes);
        }
        for (byte, key) in bytes.iter_mut().zip(&keystream[span.clone()]) {
            *byte ^= key;
        }
        if direction == Direction::Encrypt {
            hashed[span].copy_from_slice(bytes);
        }
        self.horner(acc, &hashed)
    }

    /// Whole blocks, starting at block `index` of the record.
    fn bulk(&self, nonce: &[u8; 12], index: usize, data: &mut [u8], acc: u128, direction: Direction) -> u128 {
        debug_assert_eq!(data.len() % 16, 0);
        match &self.aes {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Ni` keys exist only after AES-NI, PCLMULQDQ, SSSE3 and SSE4.1 were detected.
            AesKey::Ni(keys) => unsafe {
                fused::bulk(keys, &self.powers, nonce, block_counter(index), data, acc, direction)
            },
            AesKey::Portable(aes) => {
                let mut acc = acc;
                let mut counter = block_counter(index);
                for group in data.chunks_mut(16 * STRIDE) {
                    let mut keystream = [[0u8; 16]; STRIDE];
                    let blocks = group.len() / 16;
                    for block in keystream.iter_mut().take(blocks) {
                        *block = counter_block(nonce, counter);
                        counter = counter.wrapping_add(1);
                    }
                    aes.encrypt_blocks(&mut keystream[..blocks]);
                    for (bytes, key) in group.chunks_exact_mut(16).zip(&keystream) {
                        let mut block = [0u8; 16];
                        block.copy_from_slice(bytes);
                        if direction == Direction::Decrypt {
                            acc = self.horner(acc, &block);
                        }
                        for (byte, k) in block.iter_mut().zip(key) {
                            *byte ^= k;
                        }
                        bytes.copy_from_slice(&block);
                        if direction == Direction::Encrypt {
                            acc = self.horner(acc, &block);
                        }
                    }
                }
                acc
            }
        }
    }
}

/// The 32-bit counter of ciphertext block `index` (the first one is 2; 1 makes the tag mask).
/// TLS records have at most ~1040 blocks, far from wrapping; GCM's inc32 wraps anyway.
fn block_counter(index: usize) -> u32 {
    (index as u32).wrapping_add(2)
}

fn counter_block(nonce: &[u8; 12], counter: u32) -> [u8; 16] {
    let mut block = [0u8; 16];
    block[..12].copy_from_slice(nonce);
    block[12..].copy_from_slice(&counter.to_be_bytes());
    block
}

#[cfg(target_arch = "x86_64")]
mod fused {
    //! The fused AES-NI + PCLMULQDQ loop.

    use super::super::aes::ni::RoundKeys;
    use super::super::polyval::clmul;
    use super::{Direction, STRIDE};
    use core::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AES-NI, PCLMULQDQ, SSSE3 and SSE4.1. `data.len()` is a multiple of 16.
    #[target_feature(enable = "aes,pclmulqdq,sse2,ssse3,sse4.1")]
    pub(super) unsafe fn bulk(
        keys: &RoundKeys,
        powers: &[u128; STRIDE],
        nonce: &[u8; 12],
        first_counter: u32,
        data: &mut [u8],
        acc: u128,
        direction: Direction,
    ) -> u128 {
        let reverse = _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let mut nonce_block = [0u8; 16];
        nonce_block[..12].copy_from_slice(nonce);
        let base = clmul::load(u128::from_le_bytes(nonce_block));
        let mut h = [_mm_setzero_si128(); STRIDE];
        for (slot, power) in h.iter_mut().zip(powers) {
            *slot = clmul::load(*power);
        }
        let rounds = keys.rounds;
        let round_keys = &keys.keys;
        let mut acc = clmul::load(acc);
        let mut counter = first_counter;
        let blocks = data.len() / 16;
        let ptr = data.as_mut_ptr() as *mut __m128i;
        let decrypt = direction == Direction::Decrypt;

        let mut done = 0;
        while done + STRIDE <= blocks {
            let mut state = [_mm_setzero_si128(); STRIDE];
            for (i, s) in state.iter_mut().enumerate() {
                let ctr = counter.wrapping_add(i as u32).swap_bytes() as i32;
                *s = _mm_xor_si128(_mm_insert_epi32::<3>(base, ctr), round_keys[0]);
            }
            // SAFETY: blocks `done .. done + STRIDE` are inside `data` (loop condition).
            let input: [__m128i; STRIDE] =
                core::array::from_fn(|i| unsafe { _mm_loadu_si128(ptr.add(done + i)) });
            let mut wide = clmul::Wide { lo: _mm_setzero_si128(), mid: _mm_setzero_si128(), hi: _mm_setzero_si128() };
            if decrypt {
                // Hash the ciphertext while the AES rounds run: independent work to interleave.
                for i in 0..STRIDE {
                    let mut x = _mm_shuffle_epi8(input[i], reverse);
                    if i == 0 {
                        x = _mm_xor_si128(x, acc);
                    }
                    clmul::add_wide(&mut wide, clmul::mul_wide(x, h[STRIDE - 1 - i]));
                }
            }
            for key in &round_keys[1..rounds] {
                for s in state.iter_mut() {
                    *s = _mm_aesenc_si128(*s, *key);
                }
            }
            let mut output = [_mm_setzero_si128(); STRIDE];
            for i in 0..STRIDE {
                output[i] = _mm_xor_si128(_mm_aesenclast_si128(state[i], round_keys[rounds]), input[i]);
                // SAFETY: as for the loads.
                unsafe { _mm_storeu_si128(ptr.add(done + i), output[i]) };
            }
            if !decrypt {
                for i in 0..STRIDE {
                    let mut x = _mm_shuffle_epi8(output[i], reverse);
                    if i == 0 {
                        x = _mm_xor_si128(x, acc);
                    }
                    clmul::add_wide(&mut wide, clmul::mul_wide(x, h[STRIDE - 1 - i]));
                }
            }
            acc = clmul::reduce(wide);
            counter = counter.wrapping_add(STRIDE as u32);
            done += STRIDE;
        }
        while done < blocks {
            let ctr = counter.swap_bytes() as i32;
            let mut s = _mm_xor_si128(_mm_insert_epi32::<3>(base, ctr), round_keys[0]);
            for key in &round_keys[1..rounds] {
                s = _mm_aesenc_si128(s, *key);
            }
            s = _mm_aesenclast_si128(s, round_keys[rounds]);
            // SAFETY: block `done` is inside `data`.
            let input = unsafe { _mm_loadu_si128(ptr.add(done)) };
            let output = _mm_xor_si128(s, input);
            // SAFETY: as above.
            unsafe { _mm_storeu_si128(ptr.add(done), output) };
            let hashed = if decrypt { input } else { output };
            acc = clmul::dot_m128(_mm_xor_si128(acc, _mm_shuffle_epi8(hashed, reverse)), h[0]);
            counter = counter.wrapping_add(1);
            done += 1;
        }
        clmul::store(acc)
    }
}
