//! AES-GCM, split so that any byte range of a record can be processed on its own.
//!
//! [`GcmKey::crypt`] en- or decrypts a range of a record's ciphertext with the counter blocks at
//! that offset (`nonce || 2 + offset/16`) and returns the range's GHASH Horner value. The caller
//! moves that value to its place in the record's hash with [`GcmKey::shift`] (a `dot` by a power
//! of the hash key), which is what lets chunks arrive in any order.
//!
//! Three backends ([`Backend`]), picked once per key from what the CPU has:
//! - AVX-512 with VAES and VPCLMULQDQ: the whole range goes through [`vaes::crypt`], sixteen
//!   blocks (four 512-bit vectors) per iteration, counter mode and GHASH interleaved, one
//!   reduction per sixteen blocks; the tail, partial last block included, with masked vectors;
//! - AES-NI and PCLMULQDQ: full blocks go through one fused loop, eight blocks at a time, with
//!   one reduction per eight blocks;
//! - elsewhere the `aes` crate and the portable field code do the same work block by block.

use super::aes::AesKey;
use super::polyval::{self, Multiplier};

/// Whether a range is being decrypted (GHASH runs over the input) or encrypted (over the output).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Decrypt,
    Encrypt,
}

/// Blocks per iteration of the AES-NI fused loop, and the number of its key powers.
const STRIDE: usize = 8;
/// [`GcmKey::shift`] splits a distance `k` as `NEAR * a + b`: `h^b` from one table, `h^(NEAR * a)`
/// from another, at most two `dot`s.
const NEAR: usize = 32;
/// `h^(NEAR * a)` for `a` in `1..=FAR`: distances up to `NEAR * (FAR + 1) - 1 = 1183` blocks,
/// more than any TLS record has (TLS 1.2's 2^14 + 2048-byte body: 1152 blocks).
const FAR: usize = 36;

/// Blocks per iteration of the AVX-512 loop (four 512-bit vectors), and its key powers (the
/// last `WIDE` entries of [`NearPowers`]).
#[cfg(target_arch = "x86_64")]
const WIDE: usize = 16;
#[cfg(target_arch = "x86_64")]
const _: () = assert!(NEAR >= WIDE);

/// Which code does a key's block work. Ordered from slowest to fastest; every backend's CPU
/// requirements include those of the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Backend {
    /// The `aes` crate and the portable field arithmetic.
    Portable,
    /// AES-NI and PCLMULQDQ on 128-bit registers, eight blocks per iteration.
    #[cfg(target_arch = "x86_64")]
    AesNi,
    /// VAES and VPCLMULQDQ on 512-bit registers (AVX-512F/BW/VL), sixteen blocks per iteration.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Backend {
    /// The fastest backend this CPU supports (feature detection is cached by std).
    pub(crate) fn best() -> Backend {
        #[cfg(target_arch = "x86_64")]
        if super::aes::ni::available() {
            return if vaes::available() { Backend::Avx512 } else { Backend::AesNi };
        }
        Backend::Portable
    }

    /// Every backend this CPU supports, slowest first (the tests run them all).
    #[cfg(test)]
    pub(crate) fn all_available() -> Vec<Backend> {
        let best = Backend::best();
        let all = [
            Backend::Portable,
            #[cfg(target_arch = "x86_64")]
            Backend::AesNi,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512,
        ];
        all.into_iter().filter(|backend| *backend <= best).collect()
    }
}

/// `h^32 ..= h^1` (descending: entry `i` is `h^(32 - i)`). The last sixteen are the AVX-512
/// loop's powers: one 64-byte load gives those of four consecutive blocks, and a load at
/// `NEAR - n` those of the last `n` blocks.
#[derive(Clone)]
#[repr(C, align(64))]
struct NearPowers([u128; NEAR]);

impl NearPowers {
    /// `h^k` for `k` in `1..=NEAR`.
    fn get(&self, k: usize) -> u128 {
        self.0[NEAR - k]
    }

    /// `h^16 ..= h^1`.
    #[cfg(target_arch = "x86_64")]
    fn wide(&self) -> &[u128; WIDE] {
        match self.0.last_chunk::<WIDE>() {
            Some(powers) => powers,
            // `NEAR >= WIDE` (asserted at compile time next to `WIDE`).
            None => unreachable!("the near table holds the wide powers"),
        }
    }
}

#[derive(Clone)]
pub(crate) struct GcmKey {
    aes: AesKey,
    /// POLYVAL form of the hash key `E(K, 0)`.
    h: u128,
    /// `h^1 ..= h^8` for the aggregated loop: `powers[i] = h^(i + 1)`.
    powers: [u128; STRIDE],
    /// `h^32 ..= h^1`, for [`Self::shift`] and the AVX-512 loop.
    near: NearPowers,
    /// `far[a - 1] = h^(32 * a)`, for [`Self::shift`].
    far: [u128; FAR],
    mul: Multiplier,
    backend: Backend,
}

impl GcmKey {
    /// `accelerate` false forces the portable code; true picks the fastest backend the CPU has.
    pub(crate) fn new(key: &[u8], accelerate: bool) -> Option<Self> {
        Self::with_backend(key, if accelerate { Backend::best() } else { Backend::Portable })
    }

    /// A key using `backend`, or the best one this CPU has below it when it lacks `backend`
    /// (the tests force each backend in turn). `None` for a key that is not 16 or 32 bytes.
    pub(crate) fn with_backend(key: &[u8], backend: Backend) -> Option<Self> {
        let backend = backend.min(Backend::best());
        let aes = AesKey::new(key, backend != Backend::Portable)?;
        let mut h_block = [0u8; 16];
        aes.encrypt_block(&mut h_block);
        let h = polyval::polyval_key_from_ghash_key(&h_block);
        let mul = match aes {
            #[cfg(target_arch = "x86_64")]
            AesKey::Ni(_) => Multiplier::Clmul,
            _ => Multiplier::Soft,
        };
        // `backend` is at most `best()`, so anything above Portable found AES-NI: `aes` is `Ni`.
        debug_assert_eq!(backend == Backend::Portable, mul == Multiplier::Soft);
        let mut near = NearPowers([h; NEAR]);
        for i in (0..NEAR - 1).rev() {
            near.0[i] = mul.dot(near.0[i + 1], h);
        }
        let powers: [u128; STRIDE] = core::array::from_fn(|i| near.get(i + 1));
        let mut far = [near.get(NEAR); FAR];
        for i in 1..FAR {
            far[i] = mul.dot(far[i - 1], far[0]);
        }
        Some(GcmKey { aes, h, powers, near, far, mul, backend })
    }

    /// `E(K, nonce || 1)`, XORed into the hash to make the tag.
    pub(crate) fn tag_mask(&self, nonce: &[u8; 12]) -> [u8; 16] {
        // `nonce || 1` (the counter big-endian) as a little-endian number, built in registers.
        let low = u64::from_le_bytes([nonce[0], nonce[1], nonce[2], nonce[3], nonce[4], nonce[5], nonce[6], nonce[7]]);
        let high = u32::from_le_bytes([nonce[8], nonce[9], nonce[10], nonce[11]]) as u64 | ((1u32.swap_bytes() as u64) << 32);
        let block = (low as u128) | ((high as u128) << 64);
        debug_assert_eq!(block.to_le_bytes(), counter_block(nonce, 1));
        self.aes.encrypt_u128(block).to_le_bytes()
    }

    /// `value * h^k`: moves a Horner value `k` blocks further from the end of the hash.
    pub(crate) fn shift(&self, value: u128, k: u64) -> u128 {
        let (far, near) = (k / NEAR as u64, (k % NEAR as u64) as usize);
        match (far as usize, near) {
            (0, 0) => value,
            (0, near) => self.mul.dot(value, self.near.get(near)),
            (far @ 1..=FAR, 0) => self.mul.dot(value, self.far[far - 1]),
            (far @ 1..=FAR, near) => self.mul.dot2(value, self.far[far - 1], self.near.get(near)),
            // Beyond any TLS record: compute the power.
            _ => self.mul.dot(value, self.mul.pow(self.h, k)),
        }
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
        self.crypt_from(nonce, offset, data, direction, 0)
    }

    /// As [`Self::crypt`], with the Horner value continued from `init`, the value of the
    /// blocks before `offset`'s (`offset` a block boundary unless `init` is 0): what one Horner
    /// loop over those blocks and then `data` would give.
    pub(crate) fn crypt_from(&self, nonce: &[u8; 12], offset: usize, data: &mut [u8], direction: Direction, init: u128) -> u128 {
        debug_assert!(init == 0 || offset % 16 == 0);
        if data.is_empty() {
            return init;
        }
        #[cfg(target_arch = "x86_64")]
        if let (Backend::Avx512, AesKey::Ni(keys)) = (self.backend, &self.aes) {
            // SAFETY: `Avx512` is only chosen (`Backend::best`, `with_backend`) after detecting
            // AES-NI, PCLMULQDQ, SSSE3, SSE4.1 and everything `vaes::available()` checks.
            return unsafe { vaes::crypt(keys, self.near.wide(), nonce, offset, data, direction, init) };
        }
        let mut acc = init;
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

#[cfg(target_arch = "x86_64")]
mod vaes {
    //! The fused VAES + VPCLMULQDQ loop on 512-bit vectors, for whole ranges.
    //!
    //! Block `i` of a vector sits in its 128-bit lane `i`. Counter blocks are kept with their
    //! 32-bit counter word in native byte order, so one vector add steps four counters (wrapping
    //! like GCM's inc32), and a byte shuffle makes them big-endian before AES. GHASH blocks are
    //! byte-reversed lane by lane into POLYVAL elements, multiplied by the key power of their
    //! distance from the end of the iteration, summed unreduced, reduced once, and the four
    //! lanes added: a Horner step over sixteen blocks. When decrypting, the GHASH input is the
    //! ciphertext, known before AES runs, so its products are interleaved with the AES rounds;
    //! when encrypting it is the output, hashed after the last round (out-of-order execution
    //! overlaps it with the next iteration's AES).
    //!
    //! A range is processed as if it started at its first block's boundary: when it starts
    //! inside that block, the first sixteen blocks go through [`masked_group`], which loads and
    //! stores only the range's bytes (byte-masked) and hashes zeros elsewhere, as GHASH pads.
    //! The last (up to sixteen) blocks, a partial last block included, go through it too, with
    //! the powers of the group's blocks a suffix of the power table.

    use super::super::aes::ni::RoundKeys;
    use super::super::polyval::{clmul, clmul512};
    use super::{Direction, WIDE};
    use core::arch::x86_64::*;

    /// Whether the CPU has what this loop needs beyond AES-NI (checked by `ni::available`).
    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("vaes")
            && std::arch::is_x86_feature_detected!("vpclmulqdq")
    }

    /// En- or decrypts `data` at byte `offset` of a record (as [`super::GcmKey::crypt_from`])
    /// and returns its Horner value continued from `init`. `powers` is `h^16 ..= h^1`.
    #[target_feature(enable = "aes,pclmulqdq,sse2,ssse3,sse4.1,avx2,avx512f,avx512bw,avx512vl,vaes,vpclmulqdq")]
    pub(super) fn crypt(
        keys: &RoundKeys,
        powers: &[u128; WIDE],
        nonce: &[u8; 12],
        offset: usize,
        data: &mut [u8],
        direction: Direction,
        init: u128,
    ) -> u128 {
        // Round keys come from `expand_128` (10 rounds) or `expand_256` (14).
        debug_assert!(keys.rounds == 10 || keys.rounds == 14);
        match (keys.rounds == 10, direction) {
            (true, Direction::Decrypt) => crypt_rounds::<10, true>(keys, powers, nonce, offset, data, init),
            (true, Direction::Encrypt) => crypt_rounds::<10, false>(keys, powers, nonce, offset, data, init),
            (false, Direction::Decrypt) => crypt_rounds::<14, true>(keys, powers, nonce, offset, data, init),
            (false, Direction::Encrypt) => crypt_rounds::<14, false>(keys, powers, nonce, offset, data, init),
        }
    }

    /// One AES round on four vectors (sixteen blocks).
    #[inline]
    #[target_feature(enable = "avx512f,vaes")]
    fn aes_round(state: &mut [__m512i; 4], key: __m512i) {
        for s in state.iter_mut() {
            *s = _mm512_aesenc_epi128(*s, key);
        }
    }

    /// Lane-wise byte shuffles: the counter word to big-endian, and a whole block reversed.
    #[derive(Clone, Copy)]
    struct Shuffles {
        to_big_endian: __m512i,
        reverse: __m512i,
    }

    #[inline]
    #[target_feature(enable = "aes,pclmulqdq,sse2,ssse3,sse4.1,avx2,avx512f,avx512bw,avx512vl,vaes,vpclmulqdq")]
    fn crypt_rounds<const ROUNDS: usize, const DECRYPT: bool>(
        keys: &RoundKeys,
        powers: &[u128; WIDE],
        nonce: &[u8; 12],
        offset: usize,
        data: &mut [u8],
        init: u128,
    ) -> u128 {
        if data.is_empty() {
            return init;
        }
        let mut wide_keys = [_mm512_setzero_si512(); 15];
        for (wide, key) in wide_keys.iter_mut().zip(&keys.keys).take(ROUNDS + 1) {
            *wide = _mm512_broadcast_i32x4(*key);
        }
        let shuffles = Shuffles {
            to_big_endian: _mm512_broadcast_i32x4(_mm_set_epi8(12, 13, 14, 15, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0)),
            reverse: _mm512_broadcast_i32x4(_mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)),
        };
        let mut first = [0u8; 16];
        first[..12].copy_from_slice(nonce);
        first[12..].copy_from_slice(&super::block_counter(offset / 16).to_le_bytes());
        // SAFETY: a 16-byte unaligned load from a 16-byte array.
        let first = unsafe { _mm_loadu_si128(first.as_ptr() as *const __m128i) };
        // Counter words of lanes 0..3 are the first counter + 0..3; each vector is four blocks on.
        let mut counters =
            _mm512_add_epi32(_mm512_broadcast_i32x4(first), _mm512_set_epi32(3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0));
        let power_ptr = powers.as_ptr() as *const __m512i;
        // SAFETY: `powers` is 256 bytes: four 64-byte unaligned loads inside it.
        let h: [__m512i; 4] = unsafe {
            [
                _mm512_loadu_si512(power_ptr),
                _mm512_loadu_si512(power_ptr.add(1)),
                _mm512_loadu_si512(power_ptr.add(2)),
                _mm512_loadu_si512(power_ptr.add(3)),
            ]
        };

        // The range seen from the start of its first block: bytes `lead..end` from `base`, which
        // lies `lead` bytes before `data` (only ever dereferenced at bytes of `data`). Every
        // pointer below derives from `ptr`; `data` is not used again.
        let lead = offset % 16;
        let end = lead + data.len();
        let ptr = data.as_mut_ptr();
        let base = ptr.wrapping_sub(lead);
        // The first block's group XORs `acc` in: Horner continued from `init`.
        let mut acc = clmul::load(init);
        let mut pos = 0;
        if lead != 0 {
            // A first block entered in the middle: the first group is masked.
            let group_end = end.min(16 * WIDE);
            // SAFETY: `lead < 16`, `lead < group_end <= 256`, and bytes `lead..group_end` from
            // `base` are bytes `0..group_end - lead` of `data`.
            acc = unsafe {
                masked_group::<ROUNDS, DECRYPT>(&wide_keys, powers, shuffles, base, lead, group_end, &mut counters, acc)
            };
            pos = group_end;
        }
        while end - pos >= 16 * WIDE {
            // SAFETY: `lead <= pos` (`pos` is 0 when `lead` is, else at least `group_end`,
            // which is 256 when the loop runs) and `pos + 256 <= end`: bytes `pos..pos + 256`
            // from `base` are bytes `pos - lead..pos - lead + 256` of `data`.
            let vectors = unsafe { ptr.add(pos - lead) } as *mut __m512i;
            // SAFETY: as above; unaligned loads.
            let input: [__m512i; 4] = unsafe {
                [
                    _mm512_loadu_si512(vectors),
                    _mm512_loadu_si512(vectors.add(1)),
                    _mm512_loadu_si512(vectors.add(2)),
                    _mm512_loadu_si512(vectors.add(3)),
                ]
            };
            let mut state = [_mm512_setzero_si512(); 4];
            for s in state.iter_mut() {
                *s = _mm512_xor_si512(_mm512_shuffle_epi8(counters, shuffles.to_big_endian), wide_keys[0]);
                counters = _mm512_add_epi32(counters, four_blocks());
            }
            if DECRYPT {
                let reverse = shuffles.reverse;
                let first = _mm512_xor_si512(_mm512_shuffle_epi8(input[0], reverse), _mm512_zextsi128_si512(acc));
                let mut sum = clmul512::mul_wide(first, h[0]);
                aes_round(&mut state, wide_keys[1]);
                clmul512::mul_add(&mut sum, _mm512_shuffle_epi8(input[1], reverse), h[1]);
                aes_round(&mut state, wide_keys[2]);
                clmul512::mul_add(&mut sum, _mm512_shuffle_epi8(input[2], reverse), h[2]);
                aes_round(&mut state, wide_keys[3]);
                clmul512::mul_add(&mut sum, _mm512_shuffle_epi8(input[3], reverse), h[3]);
                aes_round(&mut state, wide_keys[4]);
                let reduced = clmul512::reduce(sum);
                aes_round(&mut state, wide_keys[5]);
                acc = clmul512::sum_lanes(reduced);
                for key in &wide_keys[6..ROUNDS] {
                    aes_round(&mut state, *key);
                }
            } else {
                for key in &wide_keys[1..ROUNDS] {
                    aes_round(&mut state, *key);
                }
            }
            let mut output = [_mm512_setzero_si512(); 4];
            for (i, (out, s)) in output.iter_mut().zip(state).enumerate() {
                // The last round's key XOR the input: AES(counter) ^ input in one instruction.
                *out = _mm512_aesenclast_epi128(s, _mm512_xor_si512(wide_keys[ROUNDS], input[i]));
                // SAFETY: as for the loads.
                unsafe { _mm512_storeu_si512(vectors.add(i), *out) };
            }
            if !DECRYPT {
                let first = _mm512_xor_si512(_mm512_shuffle_epi8(output[0], shuffles.reverse), _mm512_zextsi128_si512(acc));
                let mut sum = clmul512::mul_wide(first, h[0]);
                for i in 1..4 {
                    clmul512::mul_add(&mut sum, _mm512_shuffle_epi8(output[i], shuffles.reverse), h[i]);
                }
                acc = clmul512::sum_lanes(clmul512::reduce(sum));
            }
            pos += 16 * WIDE;
        }
        if pos < end {
            // The last 1..=16 blocks, the last one possibly partial.
            let tail = base.wrapping_add(pos);
            // SAFETY: `end - pos` is in `1..256` (loop exit); `pos >= lead` as above, so bytes
            // `0..end - pos` from `tail` are bytes `pos - lead..end - lead` of `data`.
            acc = unsafe {
                masked_group::<ROUNDS, DECRYPT>(&wide_keys, powers, shuffles, tail, 0, end - pos, &mut counters, acc)
            };
        }
        clmul::store(acc)
    }

    /// `[0, 0, 0, 4]` in every lane: adds four to each counter word.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn four_blocks() -> __m512i {
        _mm512_set_epi32(4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0)
    }

    /// Up to sixteen blocks with masked vectors: the bytes `from..to` (`from < 16`, `to <= 256`)
    /// from `base` are those of the range, the rest of blocks `0..ceil(to / 16)` is outside it
    /// (not read, not written, zero for GHASH). Steps `counters` past the vectors it uses and
    /// returns the Horner value continued from `acc`.
    ///
    /// `base` itself may point outside the caller's slice: it is only offset with wrapping
    /// arithmetic and dereferenced through masked loads and stores of bytes `from..to`.
    ///
    /// # Safety
    /// `from < 16`, `from < to <= 256`, and bytes `from..to` from `base` must be valid for reads
    /// and writes (and not otherwise borrowed). The CPU must have the enabled features.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "aes,pclmulqdq,sse2,ssse3,sse4.1,avx2,avx512f,avx512bw,avx512vl,vaes,vpclmulqdq")]
    unsafe fn masked_group<const ROUNDS: usize, const DECRYPT: bool>(
        wide_keys: &[__m512i; 15],
        powers: &[u128; WIDE],
        shuffles: Shuffles,
        base: *mut u8,
        from: usize,
        to: usize,
        counters: &mut __m512i,
        acc: __m128i,
    ) -> __m128i {
        debug_assert!(from < 16 && from < to && to <= 16 * WIDE);
        let blocks = to.div_ceil(16).min(WIDE);
        let zero = _mm512_setzero_si512();
        let mut sum = clmul512::Wide { lo: zero, mid: zero, hi: zero };
        for v in 0..blocks.div_ceil(4) {
            let start = 64 * v;
            // Bytes of this vector inside the range: `first..last` (relative to `start`).
            let first = from.saturating_sub(start);
            let last = to.saturating_sub(start);
            let below_last = if last >= 64 { u64::MAX } else { (1u64 << last) - 1 };
            let from_first = if first >= 64 { 0 } else { u64::MAX << first };
            let byte_mask: __mmask64 = below_last & from_first;
            // Two 64-bit power words per block of this vector.
            let vector_blocks = (blocks - 4 * v).min(4);
            let power_mask = ((1u32 << (2 * vector_blocks)) - 1) as __mmask8;
            let address = base.wrapping_add(start) as *mut i8;
            // SAFETY: the mask selects bytes of `from..to` from `base` only, valid by the
            // contract; unselected bytes are neither accessed nor faulted on, and read as zero.
            let input = unsafe { _mm512_maskz_loadu_epi8(byte_mask, address) };
            let mut state = _mm512_xor_si512(_mm512_shuffle_epi8(*counters, shuffles.to_big_endian), wide_keys[0]);
            *counters = _mm512_add_epi32(*counters, four_blocks());
            for key in &wide_keys[1..ROUNDS] {
                state = _mm512_aesenc_epi128(state, *key);
            }
            let output = _mm512_aesenclast_epi128(state, _mm512_xor_si512(wide_keys[ROUNDS], input));
            // SAFETY: writes only the bytes the load read.
            unsafe { _mm512_mask_storeu_epi8(address, byte_mask, output) };
            // GHASH sees zeros outside the range: mask off the keystream there.
            let hashed = if DECRYPT { input } else { _mm512_maskz_mov_epi8(byte_mask, output) };
            let mut x = _mm512_shuffle_epi8(hashed, shuffles.reverse);
            if v == 0 {
                x = _mm512_xor_si512(x, _mm512_zextsi128_si512(acc));
            }
            // Block `i` of the group takes h^(blocks - i), entry `WIDE - blocks + i`; lanes past
            // the group get a zero power (and so add nothing).
            let first_power = WIDE - blocks + 4 * v;
            // SAFETY: `first_power + vector_blocks <= WIDE`; only those entries are read.
            let power =
                unsafe { _mm512_maskz_loadu_epi64(power_mask, powers.as_ptr().add(first_power) as *const i64) };
            clmul512::mul_add(&mut sum, x, power);
        }
        clmul512::sum_lanes(clmul512::reduce(sum))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    /// Every backend gives the portable one's bytes and Horner value, for every start within a
    /// block, lengths around the loops' strides, both directions, and counters that wrap.
    #[test]
    fn backends_agree_on_every_range() {
        let backends = Backend::all_available();
        eprintln!("GCM backends on this CPU: {backends:?}");
        let mut lengths: Vec<usize> = (0..=300).collect();
        lengths.extend([383, 384, 385, 511, 512, 513, 767, 768, 1000, 1443, 1448, 1449, 4096 + 7, 16384 + 17]);
        // Block indices: the start of a record, and near the 32-bit counter wrap (counter = index + 2).
        let wrap = (u32::MAX as usize - 1 - 9) * 16;
        let mut offsets: Vec<usize> = (0..=33).collect();
        offsets.extend([wrap, wrap + 5, wrap + 16 * 7 + 15]);
        for key_len in [16usize, 32] {
            let key = sample(key_len, key_len as u64);
            let keys: Vec<GcmKey> = backends.iter().map(|b| GcmKey::with_backend(&key, *b).unwrap()).collect();
            for (key, backend) in keys.iter().zip(&backends) {
                assert_eq!(key.backend, *backend);
            }
            let nonce: [u8; 12] = sample(12, 99).try_into().unwrap();
            for &offset in &offsets {
                for &len in &lengths {
                    if offset > 33 && len > 300 {
                        continue;
                    }
                    let input = sample(len, (offset * 1000 + len) as u64);
                    // Continued from an earlier value when the range starts on a block boundary.
                    let init = if offset % 16 == 0 && len % 3 == 1 { 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210 } else { 0 };
                    for direction in [Direction::Decrypt, Direction::Encrypt] {
                        let mut expected = input.clone();
                        let expected_hash = keys[0].crypt_from(&nonce, offset, &mut expected, direction, init);
                        if init != 0 {
                            // One Horner loop from `init`: init * h^blocks + the range's own value.
                            let mut alone = input.clone();
                            let own = keys[0].crypt(&nonce, offset, &mut alone, direction);
                            assert_eq!(keys[0].shift(init, len.div_ceil(16) as u64) ^ own, expected_hash, "portable init");
                        }
                        for (key, backend) in keys.iter().zip(&backends).skip(1) {
                            let mut output = input.clone();
                            let hash = key.crypt_from(&nonce, offset, &mut output, direction, init);
                            let what = format!("{backend:?} key {key_len} offset {offset} len {len} {direction:?}");
                            assert!(output == expected, "{what}: bytes differ");
                            assert_eq!(hash, expected_hash, "{what}: Horner value differs");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn shift_is_a_power_of_the_hash_key() {
        for backend in Backend::all_available() {
            let key = GcmKey::with_backend(&sample(16, 3), backend).unwrap();
            let value = 0x0123_4567_89ab_cdef_0011_2233_4455_6677u128;
            let mut expected = value;
            for k in 0..1300u64 {
                assert_eq!(key.shift(value, k), expected, "{backend:?} k = {k}");
                expected = key.mul.dot(expected, key.h);
            }
            assert_eq!(key.shift(value, 1 << 40), key.mul.dot(value, key.mul.pow(key.h, 1 << 40)));
        }
    }

    #[test]
    fn forcing_a_backend_is_capped_by_the_cpu() {
        let best = Backend::best();
        let key = GcmKey::with_backend(&[1u8; 16], Backend::Portable).unwrap();
        assert_eq!(key.backend, Backend::Portable);
        assert_eq!(GcmKey::new(&[1u8; 16], true).unwrap().backend, best);
        assert_eq!(GcmKey::new(&[1u8; 16], false).unwrap().backend, Backend::Portable);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(GcmKey::with_backend(&[1u8; 32], Backend::Avx512).unwrap().backend, best);
        assert!(GcmKey::with_backend(&[1u8; 24], best).is_none());
    }
}
