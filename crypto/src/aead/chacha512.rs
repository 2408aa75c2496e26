//! ChaCha20 and Poly1305 on AVX-512 (F, BW, VL; IFMA optionally), for
//! [`super::chacha::Backend::Avx512`] and [`super::chacha::Backend::Avx512Ifma`].
//!
//! **ChaCha20.** Keystream is generated a batch of up to sixteen blocks at a time into a
//! 64-byte aligned buffer ([`Window`]) and XORed into the data from there (the buffer also
//! yields the Poly1305 key block and what an opener keeps for its next in-order chunk). Nine
//! to sixteen blocks: vector `i` holds state word `i` of sixteen blocks, one per 32-bit lane,
//! so a quarter round is twelve vector instructions for all of them; a 16x16 transpose of
//! 32-bit words then turns the word vectors into block vectors. Up to eight blocks: one block
//! per 128-bit lane (rows `a, b, c, d` of the state in four vectors, rotated between column and
//! diagonal rounds), one or two independent sets of four: fewer instructions for few blocks.
//! The AVX-512 ChaCha20 rounds use two vector ports; about 0.5 cycle per byte is their floor.
//!
//! **Poly1305.** Eight blocks per iteration, block `j` of an iteration in 64-bit lane `j`. Each
//! lane runs its own Horner chain with `r^8`; the last iteration multiplies lane `j` by
//! `r^(8 - j)` instead, so the lanes add up to the Horner value with `r`. The first iteration
//! is the one that may be short: its `g` blocks sit in lanes `8 - g .. 8`, after `8 - g` zero
//! blocks (which add nothing), so every later iteration is full. An initial accumulator enters
//! in the lane of the first block: the result is `acc * r^n + sum(e_i * r^(n - i + 1))`,
//! exactly what the scalar [`super::chacha::Fe`] Horner loop computes, modulo `2^130 - 5`.
//! Two versions: [`horner_blocks`], five 26-bit limbs and 32x32-bit multiplies (25 per
//! iteration), and [`horner_blocks_ifma`], [`Fe`]'s three 44/44/42-bit limbs and 52-bit
//! multiply-adds (18 per iteration). Limbs are reduced lazily, a few bits over their width
//! between iterations; the bounds are at each multiply.

use core::arch::x86_64::*;

use super::chacha::Fe;

/// Whether the CPU has what this module uses.
pub(super) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx2")
}

const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// The ChaCha20 input words of block `counter` for `key` and `nonce` (RFC 8439 section 2.3).
pub(super) fn state(key: &[u32; 8], nonce: &[u8; 12], counter: u32) -> [u32; 16] {
    let mut state = [0u32; 16];
    state[..4].copy_from_slice(&SIGMA);
    state[4..12].copy_from_slice(key);
    state[12] = counter;
    for (word, bytes) in state[13..].iter_mut().zip(nonce.chunks_exact(4)) {
        *word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    }
    state
}

/// Ten double rounds on word vectors `x`, with the add/xor/rotate of the vector width.
macro_rules! double_rounds {
    ($x:ident, $add:ident, $xor:ident, $rol:ident) => {
        for _ in 0..10 {
            double_rounds!(@quarter $x, $add, $xor, $rol, 0, 4, 8, 12);
            double_rounds!(@quarter $x, $add, $xor, $rol, 1, 5, 9, 13);
            double_rounds!(@quarter $x, $add, $xor, $rol, 2, 6, 10, 14);
            double_rounds!(@quarter $x, $add, $xor, $rol, 3, 7, 11, 15);
            double_rounds!(@quarter $x, $add, $xor, $rol, 0, 5, 10, 15);
            double_rounds!(@quarter $x, $add, $xor, $rol, 1, 6, 11, 12);
            double_rounds!(@quarter $x, $add, $xor, $rol, 2, 7, 8, 13);
            double_rounds!(@quarter $x, $add, $xor, $rol, 3, 4, 9, 14);
        }
    };
    (@quarter $x:ident, $add:ident, $xor:ident, $rol:ident, $a:expr, $b:expr, $c:expr, $d:expr) => {
        $x[$a] = $add($x[$a], $x[$b]);
        $x[$d] = $rol::<16>($xor($x[$d], $x[$a]));
        $x[$c] = $add($x[$c], $x[$d]);
        $x[$b] = $rol::<12>($xor($x[$b], $x[$c]));
        $x[$a] = $add($x[$a], $x[$b]);
        $x[$d] = $rol::<8>($xor($x[$d], $x[$a]));
        $x[$c] = $add($x[$c], $x[$d]);
        $x[$b] = $rol::<7>($xor($x[$b], $x[$c]));
    };
}

/// Sixteen keystream blocks, counters `input[12] ..= input[12] + 15` (wrapping): entry `b` is
/// block `b`'s 64 bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn blocks16(input: &[u32; 16]) -> [__m512i; 16] {
    let mut start: [__m512i; 16] = core::array::from_fn(|i| _mm512_set1_epi32(input[i] as i32));
    start[12] = _mm512_add_epi32(start[12], _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0));
    let mut x = start;
    double_rounds!(x, _mm512_add_epi32, _mm512_xor_si512, _mm512_rol_epi32);
    for (word, initial) in x.iter_mut().zip(start) {
        *word = _mm512_add_epi32(*word, initial);
    }
    // Transpose: words 4g..4g+3 of block 4k+q end in 128-bit lane k of `v[g][q]`, then the
    // 128-bit lanes are gathered per block.
    let mut t = [_mm512_setzero_si512(); 16];
    for p in 0..8 {
        t[2 * p] = _mm512_unpacklo_epi32(x[2 * p], x[2 * p + 1]);
        t[2 * p + 1] = _mm512_unpackhi_epi32(x[2 * p], x[2 * p + 1]);
    }
    let mut v = [[_mm512_setzero_si512(); 4]; 4];
    for (g, group) in v.iter_mut().enumerate() {
        group[0] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
        group[1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
        group[2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
        group[3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
    }
    let mut out = [_mm512_setzero_si512(); 16];
    for q in 0..4 {
        let a = _mm512_shuffle_i32x4::<0x44>(v[0][q], v[1][q]);
        let b = _mm512_shuffle_i32x4::<0xee>(v[0][q], v[1][q]);
        let c = _mm512_shuffle_i32x4::<0x44>(v[2][q], v[3][q]);
        let d = _mm512_shuffle_i32x4::<0xee>(v[2][q], v[3][q]);
        out[q] = _mm512_shuffle_i32x4::<0x88>(a, c);
        out[4 + q] = _mm512_shuffle_i32x4::<0xdd>(a, c);
        out[8 + q] = _mm512_shuffle_i32x4::<0x88>(b, d);
        out[12 + q] = _mm512_shuffle_i32x4::<0xdd>(b, d);
    }
    out
}

/// Four keystream blocks per vector, one block per 128-bit lane (rows `a, b, c, d` of the
/// state), `N` independent vectors interleaved: blocks `counter .. counter + 4N`. Entry `b` is
/// block `b`'s 64 bytes. Fewer instructions than [`blocks16`] for up to eight blocks, at the
/// cost of a longer dependency chain (the rows are rotated between column and diagonal rounds).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn blocks4<const N: usize>(input: &[u32; 16]) -> [[__m512i; 4]; N] {
    // SAFETY: each row is four consecutive words of `input`: 16-byte unaligned loads inside it.
    let rows: [__m512i; 4] =
        core::array::from_fn(|i| _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(input.as_ptr().add(4 * i) as *const __m128i) }));
    // Block k of vector n: the counter word (word 0 of row d) plus 4n + k.
    let start: [[__m512i; 4]; N] = core::array::from_fn(|n| {
        let k = 4 * n as i32;
        let counters = _mm512_set_epi32(0, 0, 0, k + 3, 0, 0, 0, k + 2, 0, 0, 0, k + 1, 0, 0, 0, k);
        [rows[0], rows[1], rows[2], _mm512_add_epi32(rows[3], counters)]
    });
    let mut x = start;
    macro_rules! quarter {
        () => {
            for s in x.iter_mut() {
                s[0] = _mm512_add_epi32(s[0], s[1]);
                s[3] = _mm512_rol_epi32::<16>(_mm512_xor_si512(s[3], s[0]));
                s[2] = _mm512_add_epi32(s[2], s[3]);
                s[1] = _mm512_rol_epi32::<12>(_mm512_xor_si512(s[1], s[2]));
                s[0] = _mm512_add_epi32(s[0], s[1]);
                s[3] = _mm512_rol_epi32::<8>(_mm512_xor_si512(s[3], s[0]));
                s[2] = _mm512_add_epi32(s[2], s[3]);
                s[1] = _mm512_rol_epi32::<7>(_mm512_xor_si512(s[1], s[2]));
            }
        };
    }
    for _ in 0..10 {
        quarter!();
        // Diagonals into columns: row b by one word, c by two, d by three.
        for s in x.iter_mut() {
            s[1] = _mm512_shuffle_epi32::<0x39>(s[1]);
            s[2] = _mm512_shuffle_epi32::<0x4e>(s[2]);
            s[3] = _mm512_shuffle_epi32::<0x93>(s[3]);
        }
        quarter!();
        for s in x.iter_mut() {
            s[1] = _mm512_shuffle_epi32::<0x93>(s[1]);
            s[2] = _mm512_shuffle_epi32::<0x4e>(s[2]);
            s[3] = _mm512_shuffle_epi32::<0x39>(s[3]);
        }
    }
    let mut out = [[_mm512_setzero_si512(); 4]; N];
    for ((s, initial), blocks) in x.iter().zip(&start).zip(out.iter_mut()) {
        let [a, b, c, d]: [__m512i; 4] = core::array::from_fn(|i| _mm512_add_epi32(s[i], initial[i]));
        // Block k is 128-bit lane k of each row.
        let ab_low = _mm512_shuffle_i32x4::<0x44>(a, b);
        let ab_high = _mm512_shuffle_i32x4::<0xee>(a, b);
        let cd_low = _mm512_shuffle_i32x4::<0x44>(c, d);
        let cd_high = _mm512_shuffle_i32x4::<0xee>(c, d);
        blocks[0] = _mm512_shuffle_i32x4::<0x88>(ab_low, cd_low);
        blocks[1] = _mm512_shuffle_i32x4::<0xdd>(ab_low, cd_low);
        blocks[2] = _mm512_shuffle_i32x4::<0x88>(ab_high, cd_high);
        blocks[3] = _mm512_shuffle_i32x4::<0xdd>(ab_high, cd_high);
    }
    out
}

/// Up to sixteen blocks of keystream, 64-byte aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Batch(pub [[u8; 64]; 16]);

/// Fills the first `count` blocks of `out` (`count` in `1..=16`) with keystream blocks
/// `counter .. counter + count` (wrapping), writing without reading (`out` may be
/// uninitialised).
///
/// # Safety
/// `out` must be valid for writes of a [`Batch`] and not otherwise borrowed.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn generate_raw(key: &[u32; 8], nonce: &[u8; 12], counter: u32, count: usize, out: *mut Batch) {
    debug_assert!((1..=16).contains(&count));
    let input = state(key, nonce, counter);
    let target = out as *mut __m512i;
    let store = |i: usize, block: __m512i| {
        debug_assert!(i < 16);
        // SAFETY: `out` is sixteen 64-byte aligned blocks valid for writes (the contract), and
        // `i < 16`: an aligned 64-byte store inside it.
        unsafe { _mm512_store_si512(target.add(i), block) };
    };
    match count {
        0..=4 => {
            let [blocks] = blocks4::<1>(&input);
            for (i, block) in blocks.into_iter().enumerate() {
                store(i, block);
            }
        }
        5..=8 => {
            for (i, block) in blocks4::<2>(&input).into_iter().flatten().enumerate() {
                store(i, block);
            }
        }
        _ => {
            for (i, block) in blocks16(&input).into_iter().enumerate() {
                store(i, block);
            }
        }
    }
}

/// `data[i] ^= keystream[i]` for `i < len`.
///
/// # Safety
/// Bytes `0..len` from `keystream` must be valid for reads, and from `data` for reads and
/// writes (not otherwise borrowed).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
pub(super) unsafe fn xor_into(data: *mut u8, keystream: *const u8, len: usize) {
    let mut done = 0;
    while len - done >= 64 {
        // SAFETY: bytes `done..done + 64` of both are inside `0..len` (the contract).
        unsafe {
            let text = _mm512_loadu_si512(data.add(done) as *const __m512i);
            let stream = _mm512_loadu_si512(keystream.add(done) as *const __m512i);
            _mm512_storeu_si512(data.add(done) as *mut __m512i, _mm512_xor_si512(text, stream));
        }
        done += 64;
    }
    if done < len {
        let mask: __mmask64 = (1u64 << (len - done)) - 1;
        // SAFETY: the mask selects bytes `done..len` only; the others are not accessed.
        unsafe {
            let text = _mm512_maskz_loadu_epi8(mask, data.add(done) as *const i8);
            let stream = _mm512_maskz_loadu_epi8(mask, keystream.add(done) as *const i8);
            _mm512_mask_storeu_epi8(data.add(done) as *mut i8, mask, _mm512_xor_si512(text, stream));
        }
    }
}

/// Keystream blocks `from .. from + count` (counters, wrapping) in a batch whose other blocks
/// are not initialised (filling a kilobyte with zeros on every call costs more than the
/// bookkeeping).
pub(super) struct Window {
    batch: core::mem::MaybeUninit<Batch>,
    from: u32,
    count: usize,
}

impl Window {
    pub(super) fn empty() -> Window {
        Window { batch: core::mem::MaybeUninit::uninit(), from: 0, count: 0 }
    }

    /// Forgets the blocks held.
    pub(super) fn clear(&mut self) {
        self.count = 0;
    }

    /// The window holding one block already known.
    #[cfg(test)]
    pub(super) fn one(counter: u32, block: &[u8; 64]) -> Window {
        let mut window = Window::empty();
        // SAFETY: the closure writes block 0, the one block declared (a write, not a read, of
        // the batch's first block).
        unsafe { window.set(counter, 1, |batch| (batch as *mut [u8; 64]).write(*block)) };
        window
    }

    /// Blocks `from .. from + count`, written to the batch's start by `fill`.
    ///
    /// # Safety
    /// `fill` must write (at least) the first `count <= 16` blocks of the batch it is given.
    unsafe fn set(&mut self, from: u32, count: usize, fill: impl FnOnce(*mut Batch)) {
        debug_assert!(count <= 16);
        fill(self.batch.as_mut_ptr());
        self.from = from;
        self.count = count;
    }

    /// Keystream blocks `counter .. counter + count` (`count` in `1..=16`), generated.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
    pub(super) fn generate(&mut self, key: &[u32; 8], nonce: &[u8; 12], counter: u32, count: usize) {
        // SAFETY: `generate_raw` writes blocks `0..count` of the batch, which is valid for
        // writes (it is this window's own); the CPU has the features this function enables.
        unsafe { self.set(counter, count, |batch| generate_raw(key, nonce, counter, count, batch)) };
    }

    /// Block `counter`, if the window holds it.
    pub(super) fn block(&self, counter: u32) -> Option<&[u8; 64]> {
        let index = counter.wrapping_sub(self.from) as usize;
        if index < self.count {
            // SAFETY: blocks `0..count` were written by `set`'s `fill` (its contract).
            Some(unsafe { &(*self.batch.as_ptr()).0[index] })
        } else {
            None
        }
    }
}

/// XORs the keystream into `data`, whose first byte is byte `lead` of block `counter`. Blocks
/// `window` holds are used from it; others are generated into it, up to sixteen at a time and
/// as many as blocks before `limit` allow (at least those `data` needs), so afterwards it holds
/// the block of `data`'s last byte and possibly some after it.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
pub(super) fn xor_keystream(
    key: &[u32; 8],
    nonce: &[u8; 12],
    counter: u32,
    lead: usize,
    data: &mut [u8],
    window: &mut Window,
    limit: u32,
) {
    debug_assert!(lead < 64);
    let mut done = 0;
    let mut block = counter;
    let mut lead = lead;
    while done < data.len() {
        let mut index = block.wrapping_sub(window.from) as usize;
        if index >= window.count {
            let needed = (lead + data.len() - done).div_ceil(64);
            let wanted = needed.max(limit.saturating_sub(block) as usize).min(16);
            window.generate(key, nonce, block, wanted);
            index = 0;
        }
        let take = (64 * (window.count - index) - lead).min(data.len() - done);
        let rest = &mut data[done..done + take];
        let Some(first) = window.block(block) else {
            // `index < count` (just checked or generated): the window holds `block`.
            unreachable!("keystream block outside the window")
        };
        // SAFETY: `rest` is `take` bytes of `data`; keystream bytes `lead .. lead + take` from
        // `first` lie inside the window's initialised blocks `index..count`, contiguous in the
        // batch (`take <= 64 * (count - index) - lead`).
        unsafe { xor_into(rest.as_mut_ptr(), first.as_ptr().add(lead), take) };
        let end = lead + take;
        block = block.wrapping_add((end / 64) as u32);
        lead = end % 64;
        done += take;
    }
}

const MASK26: u64 = (1 << 26) - 1;

impl Fe {
    /// The value in five 26-bit limbs (the last one may reach 2^26 for values near 2^130).
    fn to_limbs26(self) -> [u64; 5] {
        let [h0, h1, h2] = self.normalized();
        [
            h0 & MASK26,
            (h0 >> 26) | ((h1 << 18) & MASK26),
            (h1 >> 8) & MASK26,
            (h1 >> 34) | ((h2 << 10) & MASK26),
            h2 >> 16,
        ]
    }

    /// The value of 26-bit-radix limbs (each below 2^31, any value: reduced here).
    fn from_limbs26(limbs: [u64; 5]) -> Fe {
        // Carry to 26 bits each first, so the shifts below cannot overflow.
        let [mut h0, mut h1, mut h2, mut h3, mut h4] = limbs;
        h1 += h0 >> 26;
        h0 &= MASK26;
        h2 += h1 >> 26;
        h1 &= MASK26;
        h3 += h2 >> 26;
        h2 &= MASK26;
        h4 += h3 >> 26;
        h3 &= MASK26;
        h0 += (h4 >> 26) * 5;
        h4 &= MASK26;
        h1 += h0 >> 26;
        h0 &= MASK26;
        // Bits: h0 at 0, h1 at 26, h2 at 52 = 44 + 8, h3 at 78 = 44 + 34, h4 at 104 = 88 + 16.
        Fe::from_raw([h0 | (h1 << 26), (h2 << 8) | (h3 << 34), h4 << 16])
    }
}

/// Powers of `r` in the vector loop's form: `r^(8 - j)` in lane `j` (lane 0 holds `r^8`), in
/// 26-bit limbs. Kept small (an opener caches one, see [`super::chacha::Lookahead`]); the
/// loop derives the rest.
#[derive(Clone, Copy)]
pub(super) struct Powers {
    last_r: [__m512i; 5],
}

/// [`Powers`] unpacked for the loop: `r^8` in every lane, and the `s` limbs, five times the `r`
/// limbs (multiplied in where products reach 2^130).
struct Unpacked<const L: usize> {
    r8: [__m512i; L],
    s8: [__m512i; L],
    last_r: [__m512i; L],
    last_s: [__m512i; L],
}

impl Powers {
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
    pub(super) fn new(r: Fe) -> Powers {
        // r^4 .. r^1 in scalar code, then one vector multiply: lanes 0..4 hold r^4 .. r^1 times
        // r^4, lanes 4..8 the same times 1.
        let r2 = r.mul(r);
        let r3 = r2.mul(r);
        let r4 = r2.mul(r2);
        let [l4, l3, l2, l1] = [r4, r3, r2, r].map(Fe::to_limbs26);
        let base: [__m512i; 5] = core::array::from_fn(|i| {
            let (a, b, c, d) = (l4[i] as i64, l3[i] as i64, l2[i] as i64, l1[i] as i64);
            _mm512_set_epi64(d, c, b, a, d, c, b, a)
        });
        let factor: [__m512i; 5] = core::array::from_fn(|i| {
            let one = (i == 0) as i64;
            let high = l4[i] as i64;
            _mm512_set_epi64(one, one, one, one, high, high, high, high)
        });
        let factor_s = factor.map(|x| times5(x));
        Powers { last_r: mul(base, &factor, &factor_s) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn unpack(&self) -> Unpacked<5> {
        let last_r = self.last_r;
        // Lane 0 holds r^8.
        let r8 = last_r.map(|x| _mm512_permutexvar_epi64(_mm512_setzero_si512(), x));
        Unpacked { r8, s8: r8.map(|x| times5(x)), last_r, last_s: last_r.map(|x| times5(x)) }
    }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn times5(x: __m512i) -> __m512i {
    _mm512_add_epi64(x, _mm512_slli_epi64::<2>(x))
}

/// `h * r` lane by lane, partly reduced (limbs at most a few bits over 26).
#[inline]
#[target_feature(enable = "avx512f")]
fn mul(h: [__m512i; 5], r: &[__m512i; 5], s: &[__m512i; 5]) -> [__m512i; 5] {
    let m = _mm512_mul_epu32;
    let a = _mm512_add_epi64;
    let d0 = a(a(a(m(h[0], r[0]), m(h[1], s[4])), a(m(h[2], s[3]), m(h[3], s[2]))), m(h[4], s[1]));
    let d1 = a(a(a(m(h[0], r[1]), m(h[1], r[0])), a(m(h[2], s[4]), m(h[3], s[3]))), m(h[4], s[2]));
    let d2 = a(a(a(m(h[0], r[2]), m(h[1], r[1])), a(m(h[2], r[0]), m(h[3], s[4]))), m(h[4], s[3]));
    let d3 = a(a(a(m(h[0], r[3]), m(h[1], r[2])), a(m(h[2], r[1]), m(h[3], r[0]))), m(h[4], s[4]));
    let d4 = a(a(a(m(h[0], r[4]), m(h[1], r[3])), a(m(h[2], r[2]), m(h[3], r[1]))), m(h[4], r[0]));
    carry([d0, d1, d2, d3, d4])
}

/// Two interleaved carry chains (0 -> 1 -> 2 -> 3 and 3 -> 4 -> 0 -> 1 -> ...).
#[inline]
#[target_feature(enable = "avx512f")]
fn carry(d: [__m512i; 5]) -> [__m512i; 5] {
    let mask = _mm512_set1_epi64(MASK26 as i64);
    let [mut d0, mut d1, mut d2, mut d3, mut d4] = d;
    let c3 = _mm512_srli_epi64::<26>(d3);
    let c0 = _mm512_srli_epi64::<26>(d0);
    d3 = _mm512_and_si512(d3, mask);
    d0 = _mm512_and_si512(d0, mask);
    d4 = _mm512_add_epi64(d4, c3);
    d1 = _mm512_add_epi64(d1, c0);
    let c4 = _mm512_srli_epi64::<26>(d4);
    let c1 = _mm512_srli_epi64::<26>(d1);
    d4 = _mm512_and_si512(d4, mask);
    d1 = _mm512_and_si512(d1, mask);
    d0 = _mm512_add_epi64(d0, times5(c4));
    d2 = _mm512_add_epi64(d2, c1);
    let c0 = _mm512_srli_epi64::<26>(d0);
    let c2 = _mm512_srli_epi64::<26>(d2);
    d0 = _mm512_and_si512(d0, mask);
    d2 = _mm512_and_si512(d2, mask);
    d1 = _mm512_add_epi64(d1, c0);
    d3 = _mm512_add_epi64(d3, c2);
    let c3 = _mm512_srli_epi64::<26>(d3);
    d3 = _mm512_and_si512(d3, mask);
    d4 = _mm512_add_epi64(d4, c3);
    [d0, d1, d2, d3, d4]
}

/// Eight message blocks (two 64-byte vectors, block `j` at bytes `16j..16j + 16`) as 26-bit
/// limbs, lane `j` block `j`, with `2^128` in the lanes of `real` (the others are padding).
#[inline]
#[target_feature(enable = "avx512f")]
fn split(low4: __m512i, high4: __m512i, real: __mmask8) -> [__m512i; 5] {
    let mask = _mm512_set1_epi64(MASK26 as i64);
    let lo = _mm512_permutex2var_epi64(low4, _mm512_set_epi64(14, 12, 10, 8, 6, 4, 2, 0), high4);
    let hi = _mm512_permutex2var_epi64(low4, _mm512_set_epi64(15, 13, 11, 9, 7, 5, 3, 1), high4);
    let m0 = _mm512_and_si512(lo, mask);
    let m1 = _mm512_and_si512(_mm512_srli_epi64::<26>(lo), mask);
    let m2 = _mm512_and_si512(_mm512_or_si512(_mm512_srli_epi64::<52>(lo), _mm512_slli_epi64::<12>(hi)), mask);
    let m3 = _mm512_and_si512(_mm512_srli_epi64::<14>(hi), mask);
    let top = _mm512_srli_epi64::<40>(hi);
    let m4 = _mm512_mask_or_epi64(top, real, top, _mm512_set1_epi64(1 << 24));
    [m0, m1, m2, m3, m4]
}

/// `acc * r^n + sum(e_i * r^(n - i + 1))` over the `n = len / 16` whole blocks at `blocks`
/// (each block's value has `2^128` added), `powers` made from `r`.
///
/// # Safety
/// `len` is a positive multiple of 16 and bytes `0..len` from `blocks` are valid for reads.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
pub(super) unsafe fn horner_blocks(powers: &Powers, acc: Fe, blocks: *const u8, len: usize) -> Fe {
    debug_assert!(len > 0 && len % 16 == 0);
    let n = len / 16;
    let iterations = n.div_ceil(8);
    // The first iteration has `g` blocks, in lanes `8 - g .. 8`: the window starts `pad` bytes
    // before `blocks` (never dereferenced there: the masks below exclude those bytes).
    let g = n - 8 * (iterations - 1);
    let pad = 16 * (8 - g);
    let base = blocks.wrapping_sub(pad);
    let first_lane = 8 - g;
    let acc_limbs = acc.to_limbs26();
    let powers = powers.unpack();
    let lane = 1u8 << first_lane;
    let mut h: [__m512i; 5] = core::array::from_fn(|limb| _mm512_maskz_set1_epi64(lane, acc_limbs[limb] as i64));
    for iteration in 0..iterations {
        let start = 128 * iteration;
        let (low4, high4, real) = if iteration == 0 && pad != 0 {
            // `pad` is 16 to 112: the low vector from byte `pad` (none when `pad >= 64`), the
            // high one from byte `pad - 64` (all of it when `pad < 64`).
            let mask_low = if pad >= 64 { 0 } else { u64::MAX << pad };
            let mask_high = u64::MAX << pad.saturating_sub(64);
            // SAFETY: the masks select bytes `pad..128` from `base`, bytes `0..128 - pad` of
            // the blocks (`128 - pad = 16g <= len`); unselected bytes are not accessed.
            unsafe {
                (
                    _mm512_maskz_loadu_epi8(mask_low, base as *const i8),
                    _mm512_maskz_loadu_epi8(mask_high, base.wrapping_add(64) as *const i8),
                    (0xffu8 << first_lane) as __mmask8,
                )
            }
        } else {
            // SAFETY: `start >= pad` here (iteration 0 with `pad == 0`, or later ones: start
            // >= 128 > pad), and `start + 128 - pad <= 16n = len`: bytes `start - pad ..
            // start - pad + 128` of the blocks.
            unsafe {
                let address = blocks.add(start - pad) as *const __m512i;
                (_mm512_loadu_si512(address), _mm512_loadu_si512(address.add(1)), 0xff)
            }
        };
        let m = split(low4, high4, real);
        for (limb, message) in h.iter_mut().zip(m) {
            *limb = _mm512_add_epi64(*limb, message);
        }
        h = if iteration + 1 < iterations {
            mul(h, &powers.r8, &powers.s8)
        } else {
            mul(h, &powers.last_r, &powers.last_s)
        };
    }
    let sums = h.map(|limb| _mm512_reduce_add_epi64(limb) as u64);
    Fe::from_limbs26(sums)
}

/// Whether the CPU also has AVX-512 IFMA (52-bit multiply-add) for [`horner_blocks_ifma`].
pub(super) fn ifma_available() -> bool {
    available() && std::arch::is_x86_feature_detected!("avx512ifma")
}

const MASK44: u64 = (1 << 44) - 1;
const MASK42: u64 = (1 << 42) - 1;

/// Powers of `r` for [`horner_blocks_ifma`], in [`Fe`]'s own radix (44, 44, 42 bits):
/// `r^(8 - j)` in lane `j`. Unpacked for the loop with `r^8` in every lane and `20 * r1`,
/// `20 * r2` (products that reach `2^132` fold back multiplied by 20).
#[derive(Clone, Copy)]
pub(super) struct PowersIfma {
    last_r: [__m512i; 3],
}

impl PowersIfma {
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,avx512ifma")]
    pub(super) fn new(r: Fe) -> PowersIfma {
        // r^4 .. r^1 in scalar code, then one vector multiply by r^4 (lanes 0..4) and 1.
        let r2 = r.mul(r);
        let r3 = r2.mul(r);
        let r4 = r2.mul(r2);
        let [l4, l3, l2, l1] = [r4, r3, r2, r].map(Fe::normalized);
        let base: [__m512i; 3] = core::array::from_fn(|i| {
            let (a, b, c, d) = (l4[i] as i64, l3[i] as i64, l2[i] as i64, l1[i] as i64);
            _mm512_set_epi64(d, c, b, a, d, c, b, a)
        });
        let factor: [__m512i; 3] = core::array::from_fn(|i| {
            let one = (i == 0) as i64;
            let high = l4[i] as i64;
            _mm512_set_epi64(one, one, one, one, high, high, high, high)
        });
        PowersIfma { last_r: mul_ifma(base, &factor, &times20(&factor)) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn unpack(&self) -> Unpacked<3> {
        let last_r = self.last_r;
        // Lane 0 holds r^8.
        let r8 = last_r.map(|x| _mm512_permutexvar_epi64(_mm512_setzero_si512(), x));
        Unpacked { r8, s8: times20(&r8), last_r, last_s: times20(&last_r) }
    }
}

/// `20 * x` for the limbs that need it (1 and 2; limb 0's entry is unused).
#[inline]
#[target_feature(enable = "avx512f")]
fn times20(x: &[__m512i; 3]) -> [__m512i; 3] {
    let twenty = |v: __m512i| _mm512_add_epi64(_mm512_slli_epi64::<4>(v), _mm512_slli_epi64::<2>(v));
    [x[0], twenty(x[1]), twenty(x[2])]
}

/// `h * r` lane by lane with 52-bit multiply-adds, partly reduced (limbs at most a bit over
/// 44, 44, 42 bits). Inputs below 2^52 (the instructions use 52 bits of each operand): `h`
/// limbs below 2^46, `r` limbs below 2^45, `s` below 2^50.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn mul_ifma(h: [__m512i; 3], r: &[__m512i; 3], s: &[__m512i; 3]) -> [__m512i; 3] {
    let lo = _mm512_madd52lo_epu64;
    let hi = _mm512_madd52hi_epu64;
    let z = _mm512_setzero_si512();
    // Products at limb positions 0 (h0 r0, and h1 r2, h2 r1 from 2^132), 1 and 2. The low 52
    // bits of a product stay at its position; the high part is worth 2^52 more: position + 1,
    // shifted left by 8 (44 + 8 = 52); from position 2 it reaches 2^140 = 2^8 * 2^132, which
    // folds to position 0 times 20 * 2^8 = 5120.
    // Two-term chains plus a third product, added: a shorter dependency chain than three
    // chained multiply-adds (this loop is latency-bound).
    let add = _mm512_add_epi64;
    let l0 = add(lo(lo(z, h[0], r[0]), h[1], s[2]), lo(z, h[2], s[1]));
    let l1 = add(lo(lo(z, h[0], r[1]), h[1], r[0]), lo(z, h[2], s[2]));
    let l2 = add(lo(lo(z, h[0], r[2]), h[1], r[1]), lo(z, h[2], r[0]));
    let u0 = add(hi(hi(z, h[0], r[0]), h[1], s[2]), hi(z, h[2], s[1]));
    let u1 = add(hi(hi(z, h[0], r[1]), h[1], r[0]), hi(z, h[2], s[2]));
    let u2 = add(hi(hi(z, h[0], r[2]), h[1], r[1]), hi(z, h[2], r[0]));
    let t0 = add(l0, add(_mm512_slli_epi64::<10>(u2), _mm512_slli_epi64::<12>(u2)));
    let t1 = add(l1, _mm512_slli_epi64::<8>(u0));
    let t2 = add(l2, _mm512_slli_epi64::<8>(u1));
    carry44([t0, t1, t2])
}

/// One carry step on every limb at once (limbs below 2^57 in): limbs 0 and 1 end below
/// `2^44 + 2^18`, limb 2 below `2^42 + 2^13`, small enough for the next multiply.
#[inline]
#[target_feature(enable = "avx512f")]
fn carry44(t: [__m512i; 3]) -> [__m512i; 3] {
    let mask44 = _mm512_set1_epi64(MASK44 as i64);
    let mask42 = _mm512_set1_epi64(MASK42 as i64);
    let [t0, t1, t2] = t;
    let (c0, c1, c2) = (_mm512_srli_epi64::<44>(t0), _mm512_srli_epi64::<44>(t1), _mm512_srli_epi64::<42>(t2));
    let five_c2 = _mm512_add_epi64(c2, _mm512_slli_epi64::<2>(c2));
    [
        _mm512_add_epi64(_mm512_and_si512(t0, mask44), five_c2),
        _mm512_add_epi64(_mm512_and_si512(t1, mask44), c0),
        _mm512_add_epi64(_mm512_and_si512(t2, mask42), c1),
    ]
}

/// Eight message blocks as 44, 44, 42-bit limbs (lane `j` block `j`), with `2^128` in the
/// lanes of `real`.
#[inline]
#[target_feature(enable = "avx512f")]
fn split44(low4: __m512i, high4: __m512i, real: __mmask8) -> [__m512i; 3] {
    let mask44 = _mm512_set1_epi64(MASK44 as i64);
    let lo = _mm512_permutex2var_epi64(low4, _mm512_set_epi64(14, 12, 10, 8, 6, 4, 2, 0), high4);
    let hi = _mm512_permutex2var_epi64(low4, _mm512_set_epi64(15, 13, 11, 9, 7, 5, 3, 1), high4);
    let m0 = _mm512_and_si512(lo, mask44);
    let m1 = _mm512_and_si512(_mm512_or_si512(_mm512_srli_epi64::<44>(lo), _mm512_slli_epi64::<20>(hi)), mask44);
    let top = _mm512_srli_epi64::<24>(hi);
    let m2 = _mm512_mask_or_epi64(top, real, top, _mm512_set1_epi64(1 << 40));
    [m0, m1, m2]
}

/// As [`horner_blocks`], with 52-bit multiply-adds.
///
/// # Safety
/// `len` is a positive multiple of 16 and bytes `0..len` from `blocks` are valid for reads.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,avx512ifma")]
pub(super) unsafe fn horner_blocks_ifma(powers: &PowersIfma, acc: Fe, blocks: *const u8, len: usize) -> Fe {
    debug_assert!(len > 0 && len % 16 == 0);
    let n = len / 16;
    let iterations = n.div_ceil(8);
    // As in `horner_blocks`: a short first iteration in the top lanes, the accumulator in the
    // lane of the first block.
    let g = n - 8 * (iterations - 1);
    let pad = 16 * (8 - g);
    let base = blocks.wrapping_sub(pad);
    let first_lane = 8 - g;
    let acc_limbs = acc.normalized();
    let powers = powers.unpack();
    let lane = 1u8 << first_lane;
    let mut h: [__m512i; 3] = core::array::from_fn(|limb| _mm512_maskz_set1_epi64(lane, acc_limbs[limb] as i64));
    for iteration in 0..iterations {
        let start = 128 * iteration;
        let (low4, high4, real) = if iteration == 0 && pad != 0 {
            // `pad` is 16 to 112: see `horner_blocks`.
            let mask_low = if pad >= 64 { 0 } else { u64::MAX << pad };
            let mask_high = u64::MAX << pad.saturating_sub(64);
            // SAFETY: the masks select bytes `pad..128` from `base`, bytes `0..128 - pad` of
            // the blocks (`128 - pad = 16g <= len`); unselected bytes are not accessed.
            unsafe {
                (
                    _mm512_maskz_loadu_epi8(mask_low, base as *const i8),
                    _mm512_maskz_loadu_epi8(mask_high, base.wrapping_add(64) as *const i8),
                    (0xffu8 << first_lane) as __mmask8,
                )
            }
        } else {
            // SAFETY: as in `horner_blocks`: bytes `start - pad .. start - pad + 128` of the
            // blocks, inside `0..len`.
            unsafe {
                let address = blocks.add(start - pad) as *const __m512i;
                (_mm512_loadu_si512(address), _mm512_loadu_si512(address.add(1)), 0xff)
            }
        };
        let m = split44(low4, high4, real);
        for (limb, message) in h.iter_mut().zip(m) {
            *limb = _mm512_add_epi64(*limb, message);
        }
        h = if iteration + 1 < iterations {
            mul_ifma(h, &powers.r8, &powers.s8)
        } else {
            mul_ifma(h, &powers.last_r, &powers.last_s)
        };
    }
    // Eight lanes of limbs below 2^45: sums below 2^48, carried by `from_raw`.
    let [s0, s1, s2] = h.map(|limb| _mm512_reduce_add_epi64(limb) as u64);
    Fe::from_raw([s0, s1, s2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};

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

    #[test]
    fn keystream_matches_the_chacha20_crate() {
        if !available() {
            eprintln!("no AVX-512 here: nothing to compare");
            return;
        }
        let key_bytes: [u8; 32] = sample(32, 5).try_into().unwrap();
        let key: [u32; 8] = core::array::from_fn(|i| u32::from_le_bytes(key_bytes[4 * i..4 * i + 4].try_into().unwrap()));
        let nonce: [u8; 12] = sample(12, 9).try_into().unwrap();
        let mut lengths: Vec<usize> = (0..=200).collect();
        lengths.extend([255, 256, 257, 511, 512, 513, 575, 576, 1023, 1024, 1025, 1448, 1536, 2048, 4099, 16400]);
        for offset in (0..=130).chain([1000, 1024, 1448, 4096 + 13]) {
            for &len in &lengths {
                let input = sample(len, (offset * 7919 + len) as u64);
                let mut expected = input.clone();
                let mut cipher = chacha20::ChaCha20::new(&key_bytes.into(), &nonce.into());
                cipher.seek(offset as u64);
                cipher.apply_keystream(&mut expected);
                let mut output = input.clone();
                let mut window = Window::empty();
                if len % 3 == 1 {
                    // A window holding the first block already.
                    let mut first = Window::empty();
                    // SAFETY: the CPU has the features (checked above).
                    unsafe { first.generate(&key, &nonce, (offset / 64) as u32, 1) };
                    window = Window::one((offset / 64) as u32, first.block((offset / 64) as u32).unwrap());
                }
                // SAFETY: the CPU has the features (checked above).
                unsafe { xor_keystream(&key, &nonce, (offset / 64) as u32, offset % 64, &mut output, &mut window, ((offset + len) / 64 + 1 + len % 5) as u32) };
                if len > 0 {
                    let last = ((offset + len - 1) / 64) as u32;
                    let mut alone = Window::empty();
                    // SAFETY: as above.
                    unsafe { alone.generate(&key, &nonce, last, 1) };
                    assert_eq!(window.block(last), alone.block(last), "offset {offset} len {len}: last block");
                }
                assert!(output == expected, "offset {offset} len {len}");
            }
        }
    }

    #[test]
    fn vector_horner_matches_the_scalar_one() {
        if !available() {
            eprintln!("no AVX-512 here: nothing to compare");
            return;
        }
        let clamp = 0x0ffffffc_0ffffffc_0ffffffc_0fffffffu128;
        for seed in 0..20u64 {
            let r_bytes: [u8; 16] = sample(16, seed * 3 + 1).try_into().unwrap();
            // The largest clamped r, and random ones.
            let r = if seed == 0 { clamp } else { u128::from_le_bytes(r_bytes) & clamp };
            let r = Fe::from_u128(r, false);
            // SAFETY: the CPU has the features (checked above).
            let powers = unsafe { Powers::new(r) };
            for blocks in (1..=40).chain([90, 91, 1024, 1030]) {
                let data = if seed == 1 { vec![0xff; 16 * blocks] } else { sample(16 * blocks, seed * 1000 + blocks as u64) };
                let acc = if seed % 3 == 0 { Fe::ZERO } else { Fe::from_u128(u128::MAX - seed as u128, true) };
                let mut expected = acc;
                for block in data.chunks_exact(16) {
                    expected = expected.add(Fe::from_u128(u128::from_le_bytes(block.try_into().unwrap()), true)).mul(r);
                }
                // SAFETY: the CPU has the features; `data` is a positive multiple of 16 bytes.
                let value = unsafe { horner_blocks(&powers, acc, data.as_ptr(), data.len()) };
                assert_eq!(value.tag(0), expected.tag(0), "seed {seed} blocks {blocks}");
                if ifma_available() {
                    // SAFETY: as above, and the CPU has IFMA.
                    let value = unsafe { horner_blocks_ifma(&PowersIfma::new(r), acc, data.as_ptr(), data.len()) };
                    assert_eq!(value.tag(0), expected.tag(0), "IFMA: seed {seed} blocks {blocks}");
                }
            }
        }
    }

    #[test]
    fn limb_conversions_round_trip() {
        for value in [0u128, 1, u128::MAX, 0x1234_5678_9abc_def0_0fed_cba9_8765_4321] {
            for high in [false, true] {
                let fe = Fe::from_u128(value, high);
                assert_eq!(Fe::from_limbs26(fe.to_limbs26()).tag(0), fe.tag(0));
            }
        }
        // p - 1 and values just above p.
        let p_minus_one = Fe::from_raw([(1 << 44) - 6, (1 << 44) - 1, (1 << 42) - 1]);
        assert_eq!(Fe::from_limbs26(p_minus_one.to_limbs26()).tag(0), p_minus_one.tag(0));
    }
}

#[cfg(test)]
mod timing {
    //! `cargo test -p cutls-crypto --profile ci-test --lib kernel_timing -- --ignored --nocapture`
    use super::*;
    use std::time::Instant;

    fn ns_per_call(mut f: impl FnMut()) -> f64 {
        let mut best = f64::MAX;
        for _ in 0..20 {
            let start = Instant::now();
            for _ in 0..2000 {
                f();
            }
            best = best.min(start.elapsed().as_secs_f64() * 1e9 / 2000.0);
        }
        best
    }

    #[test]
    #[ignore]
    fn kernel_timing() {
        if !available() {
            return;
        }
        let key = [7u32; 8];
        let nonce = [1u8; 12];
        let mut data = vec![0u8; 16384];
        for len in [1usize, 64, 512, 1024, 1448, 2048, 16384] {
            // SAFETY: the CPU has the features.
            let t = ns_per_call(|| unsafe { xor_keystream(&key, &nonce, 1, 0, &mut data[..len], &mut Window::empty(), 1 + len.div_ceil(64) as u32) });
            eprintln!("xor_keystream {len:>6} B: {t:8.1} ns");
            let key_bytes = [7u8; 32];
            let crate_time = ns_per_call(|| {
                use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
                let mut cipher = chacha20::ChaCha20::new(&key_bytes.into(), &nonce.into());
                cipher.seek(64u64);
                cipher.apply_keystream(&mut data[..len]);
            });
            eprintln!("  chacha20 crate {len:>6} B: {crate_time:8.1} ns");
        }
        let r = Fe::from_u128(0x0ffffffc_0ffffffc_0ffffffc_0fffffff, false);
        // SAFETY: as above.
        let t = ns_per_call(|| unsafe {
            std::hint::black_box(Powers::new(std::hint::black_box(r)));
        });
        eprintln!("Powers::new: {t:8.1} ns");
        // SAFETY: as above.
        let powers = unsafe { Powers::new(r) };
        for blocks in [8usize, 16, 90, 1024] {
            // SAFETY: as above.
            let t = ns_per_call(|| unsafe {
                std::hint::black_box(horner_blocks(&powers, Fe::ZERO, data.as_ptr(), 16 * blocks));
            });
            eprintln!("horner_blocks {blocks:>5} blocks: {t:8.1} ns");
        }
        if ifma_available() {
            // SAFETY: as above, and the CPU has IFMA.
            let powers = unsafe { PowersIfma::new(r) };
            for blocks in [8usize, 16, 90, 1024] {
                // SAFETY: as above.
                let t = ns_per_call(|| unsafe {
                    std::hint::black_box(horner_blocks_ifma(&powers, Fe::ZERO, data.as_ptr(), 16 * blocks));
                });
                eprintln!("horner_blocks_ifma {blocks:>5} blocks: {t:8.1} ns");
            }
            // SAFETY: as above.
            let t = ns_per_call(|| unsafe {
                std::hint::black_box(PowersIfma::new(std::hint::black_box(r)));
            });
            eprintln!("PowersIfma::new: {t:8.1} ns");
        }
        let t = ns_per_call(|| {
            std::hint::black_box(std::hint::black_box(r).pow(std::hint::black_box(91)));
        });
        eprintln!("pow(91): {t:8.1} ns");
        let t = ns_per_call(|| {
            std::hint::black_box(std::hint::black_box(r).mul(std::hint::black_box(r)));
        });
        eprintln!("mul: {t:8.1} ns");
    }
}
