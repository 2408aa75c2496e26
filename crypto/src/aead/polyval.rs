//! GF(2^128) arithmetic for GHASH, in the POLYVAL representation (RFC 8452).
//!
//! GHASH's bit-reflected field is awkward on little-endian machines; POLYVAL is the same field
//! with the bits in natural order, and RFC 8452 appendix A gives the bridge:
//! `GHASH(H, X) = ByteReverse(POLYVAL(mulX(ByteReverse(H)), ByteReverse(X_i)...))`. A GHASH block
//! read as a big-endian integer is exactly its POLYVAL element, so the conversion is free.
//!
//! POLYVAL's product is `dot(a, b) = a * b * x^-128 mod P`, `P = x^128 + x^127 + x^126 + x^121 + 1`.
//! It is associative and commutative, so Horner steps, precomputed powers of the hash key and
//! "multiply by the key k times" are all `dot` products: that is what lets a chunk of a record
//! be hashed on its own and moved to its place with one power.
//!
//! Two implementations: a portable constant-time one (integer multiplications with holes, as in
//! BearSSL's `ghash_ctmul64`) and PCLMULQDQ on x86_64, picked at run time. Tests run both. The
//! 512-bit VPCLMULQDQ operations in [`clmul512`] serve the AVX-512 GCM loop.

/// The low 128 bits of `P` with the `x^128` term dropped, used by [`mul_x`].
const POLY_LOW: u128 = (1 << 127) | (1 << 126) | (1 << 121) | 1;
/// `x^57 + x^62 + x^63`: the part of `P` above `x^64` that Montgomery reduction folds back in.
const REDUCTION_CONSTANT: u64 = 0xc200_0000_0000_0000;

/// `x^128 mod P`: the identity of `dot` (`dot(ONE, a) = a`).
pub(crate) const DOT_IDENTITY: u128 = {
    // x^128 = x^127 + x^126 + x^121 + 1 (mod P).
    POLY_LOW
};

/// `v * x mod P` (RFC 8452's `mulX_POLYVAL`).
pub(crate) fn mul_x(v: u128) -> u128 {
    let carry = (v >> 127) as u64 as u128;
    (v << 1) ^ (carry.wrapping_neg() & POLY_LOW)
}

/// The POLYVAL key for GHASH key `h` (the block `E(K, 0^128)` as bytes).
pub(crate) fn polyval_key_from_ghash_key(h: &[u8; 16]) -> u128 {
    mul_x(u128::from_be_bytes(*h))
}

/// `dot(a, b)`, portable and constant time.
pub(crate) fn dot_soft(a: u128, b: u128) -> u128 {
    let (a0, a1) = (a as u64, (a >> 64) as u64);
    let (b0, b1) = (b as u64, (b >> 64) as u64);
    let lo = clmul64_soft(a0, b0);
    let hi = clmul64_soft(a1, b1);
    let mid = clmul64_soft(a0, b1) ^ clmul64_soft(a1, b0);
    let c0 = lo as u64;
    let c1 = (lo >> 64) as u64 ^ mid as u64;
    let c2 = hi as u64 ^ (mid >> 64) as u64;
    let c3 = (hi >> 64) as u64;
    montgomery_reduce_soft([c0, c1, c2, c3])
}

/// Reduces a 256-bit carry-less product `c` to `c * x^-128 mod P`.
///
/// Adding `c0 * P` clears word 0 (P's low word is 1) and adds `c0 * (x^121 + x^126 + x^127)`
/// and `c0 * x^128` above it; the same with the new word 1, shifted by 64, clears word 1. What
/// is left in words 2 and 3 is divisible by nothing more and is below `x^128`: the result.
fn montgomery_reduce_soft(c: [u64; 4]) -> u128 {
    let [c0, mut c1, mut c2, mut c3] = c;
    let t = clmul64_soft(c0, REDUCTION_CONSTANT);
    c1 ^= t as u64;
    c2 ^= (t >> 64) as u64 ^ c0;
    let t = clmul64_soft(c1, REDUCTION_CONSTANT);
    c2 ^= t as u64;
    c3 ^= (t >> 64) as u64 ^ c1;
    ((c3 as u128) << 64) | c2 as u128
}

/// Carry-less 64x64 -> 128 multiplication from four 32-bit ones.
fn clmul64_soft(a: u64, b: u64) -> u128 {
    let (a0, a1) = (a as u32, (a >> 32) as u32);
    let (b0, b1) = (b as u32, (b >> 32) as u32);
    let lo = clmul32_soft(a0, b0) as u128;
    let hi = clmul32_soft(a1, b1) as u128;
    let mid = (clmul32_soft(a0, b1) ^ clmul32_soft(a1, b0)) as u128;
    lo ^ (mid << 32) ^ (hi << 64)
}

/// Carry-less 32x32 -> 64 multiplication with integer multiplies.
///
/// Each operand is split into four interleaved bit classes (every fourth bit). In the integer
/// product of two such parts, every 4-bit column holds at most 8 one-bit terms, so sums never
/// carry into the next column of the same class: masking keeps exactly the XOR of the terms.
fn clmul32_soft(a: u32, b: u32) -> u64 {
    const M0: u64 = 0x1111_1111_1111_1111;
    const M1: u64 = M0 << 1;
    const M2: u64 = M0 << 2;
    const M3: u64 = M0 << 3;
    let (a, b) = (a as u64, b as u64);
    let (a0, a1, a2, a3) = (a & M0, a & M1, a & M2, a & M3);
    let (b0, b1, b2, b3) = (b & M0, b & M1, b & M2, b & M3);
    let z0 = (a0 * b0) ^ (a1 * b3) ^ (a2 * b2) ^ (a3 * b1);
    let z1 = (a0 * b1) ^ (a1 * b0) ^ (a2 * b3) ^ (a3 * b2);
    let z2 = (a0 * b2) ^ (a1 * b1) ^ (a2 * b0) ^ (a3 * b3);
    let z3 = (a0 * b3) ^ (a1 * b2) ^ (a2 * b1) ^ (a3 * b0);
    (z0 & M0) | (z1 & M1) | (z2 & M2) | (z3 & M3)
}

/// The multiplier in use: portable, or PCLMULQDQ when the CPU has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Multiplier {
    Soft,
    #[cfg(target_arch = "x86_64")]
    Clmul,
}

impl Multiplier {
    #[cfg(test)]
    /// The fastest multiplier this CPU supports.
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("pclmulqdq") && std::arch::is_x86_feature_detected!("sse4.1") {
            return Multiplier::Clmul;
        }
        Multiplier::Soft
    }

    pub(crate) fn dot(self, a: u128, b: u128) -> u128 {
        match self {
            Multiplier::Soft => dot_soft(a, b),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Clmul` is only constructed after detecting pclmulqdq and sse4.1.
            Multiplier::Clmul => unsafe { clmul::dot(a, b) },
        }
    }

    /// `dot(a, dot(b, c))`: with `b` and `c` known early (powers of the key), only the last
    /// product waits for `a`.
    pub(crate) fn dot2(self, a: u128, b: u128, c: u128) -> u128 {
        match self {
            Multiplier::Soft => dot_soft(a, dot_soft(b, c)),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Clmul` is only constructed after detecting pclmulqdq and sse4.1.
            Multiplier::Clmul => unsafe { clmul::dot2(a, b, c) },
        }
    }

    /// `h` multiplied into itself `k` times: `dot`-power with `pow(h, 0)` the identity.
    pub(crate) fn pow(self, h: u128, mut k: u64) -> u128 {
        let mut result = DOT_IDENTITY;
        let mut base = h;
        while k != 0 {
            if k & 1 == 1 {
                result = self.dot(result, base);
            }
            k >>= 1;
            if k != 0 {
                base = self.dot(base, base);
            }
        }
        result
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod clmul {
    //! PCLMULQDQ versions of the field operations, on `__m128i` values holding POLYVAL elements
    //! (little-endian: lane 0 is bits 0..64).

    use core::arch::x86_64::*;

    /// The 256-bit product of two elements, kept as (low, middle, high) for aggregated
    /// reduction: several products can be summed before one [`reduce`].
    #[derive(Clone, Copy)]
    pub(crate) struct Wide {
        pub lo: __m128i,
        pub mid: __m128i,
        pub hi: __m128i,
    }

    #[inline]
    #[target_feature(enable = "pclmulqdq,sse2,sse4.1")]
    pub(crate) fn mul_wide(a: __m128i, b: __m128i) -> Wide {
        Wide {
            lo: _mm_clmulepi64_si128(a, b, 0x00),
            hi: _mm_clmulepi64_si128(a, b, 0x11),
            mid: _mm_xor_si128(_mm_clmulepi64_si128(a, b, 0x01), _mm_clmulepi64_si128(a, b, 0x10)),
        }
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    pub(crate) fn add_wide(acc: &mut Wide, x: Wide) {
        acc.lo = _mm_xor_si128(acc.lo, x.lo);
        acc.mid = _mm_xor_si128(acc.mid, x.mid);
        acc.hi = _mm_xor_si128(acc.hi, x.hi);
    }

    /// Montgomery reduction of a wide product to `product * x^-128 mod P` (see the portable
    /// version for the derivation).
    #[inline]
    #[target_feature(enable = "pclmulqdq,sse2,sse4.1")]
    pub(crate) fn reduce(w: Wide) -> __m128i {
        // Fold the middle product into the low and high halves: words [c0 c1 | c2 c3].
        let low = _mm_xor_si128(w.lo, _mm_slli_si128(w.mid, 8));
        let high = _mm_xor_si128(w.hi, _mm_srli_si128(w.mid, 8));
        let constant = _mm_set_epi64x(0, super::REDUCTION_CONSTANT as i64);
        // t = c0 * K; word 1 ^= t.lo; word 2 ^= t.hi ^ c0.
        let t = _mm_clmulepi64_si128(low, constant, 0x00);
        // Swap halves of `low` so c0 lands in the upper lane (word 2's position after the shift).
        let low_swapped = _mm_shuffle_epi32(low, 0x4e);
        // low_swapped = [c1, c0]; adding t gives [c1 ^ t.lo, c0 ^ t.hi] = [new c1, word-2 delta].
        let folded = _mm_xor_si128(low_swapped, t);
        // Second fold: u = new_c1 * K; word 2 ^= u.lo; word 3 ^= u.hi ^ new_c1.
        let u = _mm_clmulepi64_si128(folded, constant, 0x00);
        let folded_swapped = _mm_shuffle_epi32(folded, 0x4e);
        // folded_swapped = [word-2 delta, new c1]; adding u = [delta ^ u.lo, new_c1 ^ u.hi].
        _mm_xor_si128(high, _mm_xor_si128(folded_swapped, u))
    }

    #[inline]
    #[target_feature(enable = "pclmulqdq,sse2,sse4.1")]
    pub(crate) fn dot_m128(a: __m128i, b: __m128i) -> __m128i {
        reduce(mul_wide(a, b))
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    pub(crate) fn load(v: u128) -> __m128i {
        // SAFETY: u128 and __m128i have the same size; an unaligned load of 16 readable bytes.
        unsafe { _mm_loadu_si128(&v as *const u128 as *const __m128i) }
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    pub(crate) fn store(v: __m128i) -> u128 {
        let mut out = 0u128;
        // SAFETY: writes 16 bytes into a 16-byte local.
        unsafe { _mm_storeu_si128(&mut out as *mut u128 as *mut __m128i, v) };
        out
    }

    /// # Safety
    /// The CPU must support pclmulqdq and sse4.1.
    #[target_feature(enable = "pclmulqdq,sse2,sse4.1")]
    pub(crate) unsafe fn dot(a: u128, b: u128) -> u128 {
        store(dot_m128(load(a), load(b)))
    }

    /// `dot(a, dot(b, c))` in one call.
    ///
    /// # Safety
    /// The CPU must support pclmulqdq and sse4.1.
    #[target_feature(enable = "pclmulqdq,sse2,sse4.1")]
    pub(crate) unsafe fn dot2(a: u128, b: u128, c: u128) -> u128 {
        store(dot_m128(load(a), dot_m128(load(b), load(c))))
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod clmul512 {
    //! VPCLMULQDQ on 512-bit vectors: four independent POLYVAL elements per register (128-bit
    //! lane `j` holds one element, little-endian as in [`super::clmul`]).
    //!
    //! Products are summed unreduced ([`Wide`], lane by lane) and reduced once; since the
    //! reduction is linear, the lanes of a reduced sum can then be added into one element
    //! ([`sum_lanes`]) to get the reduction of the sum of every product.

    use core::arch::x86_64::*;

    /// Lane-wise sums of 256-bit products, as (low, middle, high) words like [`super::clmul::Wide`].
    #[derive(Clone, Copy)]
    pub(crate) struct Wide {
        pub lo: __m512i,
        pub mid: __m512i,
        pub hi: __m512i,
    }

    /// `a ^ b ^ c` in one instruction.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn xor3(a: __m512i, b: __m512i, c: __m512i) -> __m512i {
        _mm512_ternarylogic_epi64::<0x96>(a, b, c)
    }

    /// The lane-wise products `a * b`.
    #[inline]
    #[target_feature(enable = "avx512f,vpclmulqdq")]
    pub(crate) fn mul_wide(a: __m512i, b: __m512i) -> Wide {
        Wide {
            lo: _mm512_clmulepi64_epi128::<0x00>(a, b),
            mid: _mm512_xor_si512(_mm512_clmulepi64_epi128::<0x01>(a, b), _mm512_clmulepi64_epi128::<0x10>(a, b)),
            hi: _mm512_clmulepi64_epi128::<0x11>(a, b),
        }
    }

    /// `acc += a * b`, lane-wise and unreduced.
    #[inline]
    #[target_feature(enable = "avx512f,vpclmulqdq")]
    pub(crate) fn mul_add(acc: &mut Wide, a: __m512i, b: __m512i) {
        acc.lo = _mm512_xor_si512(acc.lo, _mm512_clmulepi64_epi128::<0x00>(a, b));
        acc.mid = xor3(acc.mid, _mm512_clmulepi64_epi128::<0x01>(a, b), _mm512_clmulepi64_epi128::<0x10>(a, b));
        acc.hi = _mm512_xor_si512(acc.hi, _mm512_clmulepi64_epi128::<0x11>(a, b));
    }

    /// Lane-wise Montgomery reduction, `product * x^-128 mod P` (the same two folds as the
    /// portable [`super::montgomery_reduce_soft`]). With words `c0 = lo.0`, `c1 = lo.1 ^ mid.0`,
    /// `c2 = hi.0 ^ mid.1`, `c3 = hi.1`, the middle word is folded in along the way instead of
    /// being shifted into place first:
    /// - `t = c0 * K`; `mid' = mid ^ swap(lo) ^ t` = `[c1 ^ t.0, mid.1 ^ c0 ^ t.1]`: its low word
    ///   is the new `c1`, its high word plus `hi.0` is the new `c2`;
    /// - `u = mid'.0 * K`; `hi ^ swap(mid') ^ u` = `[c2 ^ u.0, c3 ^ c1 ^ u.1]`, the result.
    #[inline]
    #[target_feature(enable = "avx512f,vpclmulqdq")]
    pub(crate) fn reduce(w: Wide) -> __m512i {
        let constant = _mm512_set1_epi64(super::REDUCTION_CONSTANT as i64);
        let t = _mm512_clmulepi64_epi128::<0x00>(w.lo, constant);
        let mid = xor3(w.mid, _mm512_shuffle_epi32::<0x4e>(w.lo), t);
        let u = _mm512_clmulepi64_epi128::<0x00>(mid, constant);
        xor3(w.hi, _mm512_shuffle_epi32::<0x4e>(mid), u)
    }

    /// The sum of the four lanes.
    #[inline]
    #[target_feature(enable = "avx512f,avx2")]
    pub(crate) fn sum_lanes(v: __m512i) -> __m128i {
        let halves = _mm256_xor_si256(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v));
        _mm_xor_si128(_mm256_castsi256_si128(halves), _mm256_extracti128_si256::<1>(halves))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit-by-bit reference: schoolbook product, then multiply by x^-128 by dividing out x 128
    /// times (add P when the low bit is set, then shift right).
    fn dot_reference(a: u128, b: u128) -> u128 {
        let mut product = [0u128; 2];
        for i in 0..128 {
            if (b >> i) & 1 == 1 {
                product[0] ^= a << i;
                if i > 0 {
                    product[1] ^= a >> (128 - i);
                }
            }
        }
        // Divide by x 128 times modulo P: if the value is odd, add P (making it even), shift.
        let [mut low, mut high] = product;
        for _ in 0..128 {
            if low & 1 == 1 {
                low ^= POLY_LOW;
                high ^= 1; // the x^128 term of P
            }
            low = (low >> 1) | ((high & 1) << 127);
            high >>= 1;
        }
        debug_assert_eq!(high, 0);
        low
    }

    #[test]
    fn soft_dot_matches_reference() {
        let mut x = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128;
        let mut y = 0xdead_beef_0000_ffff_1234_5678_9abc_def0u128;
        for _ in 0..200 {
            assert_eq!(dot_soft(x, y), dot_reference(x, y));
            x = x.rotate_left(13) ^ y.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            y = y.rotate_right(7) ^ x;
        }
        assert_eq!(dot_soft(u128::MAX, u128::MAX), dot_reference(u128::MAX, u128::MAX));
    }

    #[test]
    fn identity_and_powers() {
        let h = 0x6640_0000_0000_0000_0000_0000_0000_0001u128;
        assert_eq!(dot_soft(DOT_IDENTITY, h), h);
        let m = Multiplier::Soft;
        assert_eq!(m.pow(h, 0), DOT_IDENTITY);
        assert_eq!(m.pow(h, 1), h);
        assert_eq!(m.pow(h, 5), dot_soft(dot_soft(dot_soft(dot_soft(h, h), h), h), h));
    }

    #[test]
    fn rfc8452_polyval_vector() {
        // RFC 8452 appendix A: POLYVAL(H, X_1, X_2).
        let h = u128::from_le_bytes(hex::decode("25629347589242761d31f826ba4b757b").unwrap().try_into().unwrap());
        let x1 = u128::from_le_bytes(hex::decode("4f4f95668c83dfb6401762bb2d01a262").unwrap().try_into().unwrap());
        let x2 = u128::from_le_bytes(hex::decode("d1a24ddd2721d006bbe45f20d3c9f362").unwrap().try_into().unwrap());
        let s = dot_soft(dot_soft(x1, h) ^ x2, h);
        assert_eq!(hex::encode(s.to_le_bytes()), "f7a3b47b846119fae5b7866cf5e5b77e");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn clmul512_matches_soft() {
        use core::arch::x86_64::*;
        let detected = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("vpclmulqdq");
        if !detected {
            return;
        }
        /// # Safety
        /// The CPU must support AVX-512F, AVX2 and VPCLMULQDQ.
        #[target_feature(enable = "avx512f,avx2,vpclmulqdq")]
        unsafe fn lanes(a: &[u128; 4], b: &[u128; 4], c: &[u128; 4]) -> ([u128; 4], u128) {
            // SAFETY: 64-byte unaligned loads and stores on 64-byte arrays.
            unsafe {
                let va = _mm512_loadu_si512(a.as_ptr() as *const __m512i);
                let vb = _mm512_loadu_si512(b.as_ptr() as *const __m512i);
                let vc = _mm512_loadu_si512(c.as_ptr() as *const __m512i);
                let single = clmul512::reduce(clmul512::mul_wide(va, vb));
                let mut out = [0u128; 4];
                _mm512_storeu_si512(out.as_mut_ptr() as *mut __m512i, single);
                let mut sum = clmul512::mul_wide(va, vb);
                clmul512::mul_add(&mut sum, vc, vb);
                let mut total = 0u128;
                _mm_storeu_si128(&mut total as *mut u128 as *mut __m128i, clmul512::sum_lanes(clmul512::reduce(sum)));
                (out, total)
            }
        }
        let mut x = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128;
        let mut y = 0xdead_beef_0000_ffff_1234_5678_9abc_def0u128;
        let mut next = || {
            x = x.rotate_left(13) ^ y.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            y = y.rotate_right(7) ^ x;
            x
        };
        for round in 0..300 {
            let mut a: [u128; 4] = core::array::from_fn(|_| next());
            let b: [u128; 4] = core::array::from_fn(|_| next());
            let c: [u128; 4] = core::array::from_fn(|_| next());
            if round == 0 {
                a = [u128::MAX; 4];
            }
            // SAFETY: the features were detected above.
            let (products, total) = unsafe { lanes(&a, &b, &c) };
            let mut expected_total = 0;
            for j in 0..4 {
                assert_eq!(products[j], dot_soft(a[j], b[j]));
                expected_total ^= dot_soft(a[j], b[j]) ^ dot_soft(c[j], b[j]);
            }
            assert_eq!(total, expected_total);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn clmul_matches_soft() {
        if Multiplier::detect() != Multiplier::Clmul {
            return;
        }
        let mut x = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128;
        let mut y = 0xdead_beef_0000_ffff_1234_5678_9abc_def0u128;
        for _ in 0..1000 {
            assert_eq!(Multiplier::Clmul.dot(x, y), dot_soft(x, y));
            x = x.rotate_left(13) ^ y.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            y = y.rotate_right(7) ^ x;
        }
    }
}
