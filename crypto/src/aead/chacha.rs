//! ChaCha20-Poly1305 (RFC 8439), split so that any byte range of a record can be processed on
//! its own.
//!
//! The keystream comes from the `chacha20` crate, seeked to block `1 + offset/64`. Poly1305 is
//! written here because the streaming engine needs what no one-shot implementation exposes: the
//! untruncated accumulator modulo `2^130 - 5` and multiplication by arbitrary powers of `r`.
//!
//! Poly1305 is linear too. A block's value is its bytes as a little-endian number plus `2^128`
//! (every block of the AEAD's MAC input is a full 16 bytes, the padding making them so), and the
//! hash is `sum(block_i * r^(n - i + 1))`. A block split between two chunks is the integer sum of
//! its two zero-padded parts (they do not overlap), so each chunk adds its part and the chunk
//! holding the block's first byte adds the `2^128`.

use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use chacha20::ChaCha20;

use super::gcm::Direction;

#[derive(Clone)]
pub(crate) struct ChachaKey {
    key: [u8; 32],
}

/// Per-record Poly1305 key, from the first keystream block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PolyKey {
    pub r: Fe,
    pub s: u128,
}

impl ChachaKey {
    pub(crate) fn new(key: &[u8]) -> Option<Self> {
        Some(ChachaKey { key: key.try_into().ok()? })
    }

    fn cipher(&self, nonce: &[u8; 12]) -> ChaCha20 {
        ChaCha20::new(&self.key.into(), &(*nonce).into())
    }

    pub(crate) fn poly_key(&self, nonce: &[u8; 12]) -> PolyKey {
        let mut block = [0u8; 32];
        self.cipher(nonce).apply_keystream(&mut block);
        let mut r_bytes = [0u8; 16];
        r_bytes.copy_from_slice(&block[..16]);
        let r = u128::from_le_bytes(r_bytes) & 0x0ffffffc_0ffffffc_0ffffffc_0fffffff;
        let mut s_bytes = [0u8; 16];
        s_bytes.copy_from_slice(&block[16..]);
        PolyKey { r: Fe::from_u128(r, false), s: u128::from_le_bytes(s_bytes) }
    }

    /// En- or decrypts `data` at byte `offset` of the record's ciphertext and returns the
    /// Horner value (with `r`) of the blocks it touches.
    pub(crate) fn crypt(
        &self,
        nonce: &[u8; 12],
        poly: &PolyKey,
        offset: usize,
        data: &mut [u8],
        direction: Direction,
    ) -> Fe {
        let mut hash = Fe::ZERO;
        if direction == Direction::Decrypt {
            hash = horner_range(poly.r, offset, data);
        }
        let mut cipher = self.cipher(nonce);
        cipher.seek(64 + offset as u64);
        cipher.apply_keystream(data);
        if direction == Direction::Encrypt {
            hash = horner_range(poly.r, offset, data);
        }
        hash
    }
}

/// Horner over the blocks that `bytes` (at `offset` of the padded message) touch.
fn horner_range(r: Fe, offset: usize, bytes: &[u8]) -> Fe {
    let mut acc = Fe::ZERO;
    let mut position = offset;
    let mut rest = bytes;
    while !rest.is_empty() {
        let lead = position % 16;
        let take = (16 - lead).min(rest.len());
        let mut block = [0u8; 16];
        block[lead..lead + take].copy_from_slice(&rest[..take]);
        // The block's 2^128 goes with its first byte.
        let element = Fe::from_u128(u128::from_le_bytes(block), lead == 0);
        acc = acc.add(element).mul(r);
        position += take;
        rest = &rest[take..];
    }
    acc
}

/// Horner over whole 16-byte blocks (AAD padded, the length block).
pub(crate) fn horner_block(acc: Fe, r: Fe, block: &[u8; 16]) -> Fe {
    acc.add(Fe::from_u128(u128::from_le_bytes(*block), true)).mul(r)
}

/// An element of GF(2^130 - 5) in three limbs of 44, 44 and 42 bits, not necessarily fully
/// reduced (limbs may exceed their width by a few bits between operations).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fe([u64; 3]);

const MASK44: u64 = (1 << 44) - 1;
const MASK42: u64 = (1 << 42) - 1;

impl Fe {
    pub(crate) const ZERO: Fe = Fe([0; 3]);
    pub(crate) const ONE: Fe = Fe([1, 0, 0]);

    /// `value + (2^128 if high_bit)`.
    pub(crate) fn from_u128(value: u128, high_bit: bool) -> Fe {
        let low = value as u64;
        let high = (value >> 64) as u64;
        Fe([
            low & MASK44,
            ((low >> 44) | (high << 20)) & MASK44,
            ((high >> 24) & MASK42) | ((high_bit as u64) << 40),
        ])
    }

    pub(crate) fn add(self, other: Fe) -> Fe {
        Fe([self.0[0] + other.0[0], self.0[1] + other.0[1], self.0[2] + other.0[2]]).carry()
    }

    fn carry(self) -> Fe {
        let [mut h0, mut h1, mut h2] = self.0;
        h1 += h0 >> 44;
        h0 &= MASK44;
        h2 += h1 >> 44;
        h1 &= MASK44;
        h0 += (h2 >> 42) * 5;
        h2 &= MASK42;
        h1 += h0 >> 44;
        h0 &= MASK44;
        Fe([h0, h1, h2])
    }

    pub(crate) fn mul(self, other: Fe) -> Fe {
        let [a0, a1, a2] = self.0.map(u128::from);
        let [b0, b1, b2] = other.0.map(u128::from);
        // 2^132 = 4 * 2^130 = 20 (mod p): limb products that land at 2^132 and above fold back
        // multiplied by 20.
        let s1 = b1 * 20;
        let s2 = b2 * 20;
        let d0 = a0 * b0 + a1 * s2 + a2 * s1;
        let d1 = a0 * b1 + a1 * b0 + a2 * s2;
        let d2 = a0 * b2 + a1 * b1 + a2 * b0;
        let d1 = d1 + (d0 >> 44);
        let h0 = (d0 as u64) & MASK44;
        let d2 = d2 + (d1 >> 44);
        let h1 = (d1 as u64) & MASK44;
        let carry = (d2 >> 42) as u64;
        let h2 = (d2 as u64) & MASK42;
        Fe([h0, h1, h2]).add(Fe([carry * 5, 0, 0]))
    }

    /// `self^k`.
    pub(crate) fn pow(self, mut k: u64) -> Fe {
        let mut result = Fe::ONE;
        let mut base = self;
        while k != 0 {
            if k & 1 == 1 {
                result = result.mul(base);
            }
            k >>= 1;
            if k != 0 {
                base = base.mul(base);
            }
        }
        result
    }

    /// The fully reduced value's low 128 bits plus `s`, modulo 2^128: the Poly1305 tag.
    pub(crate) fn tag(self, s: u128) -> [u8; 16] {
        let [h0, h1, h2] = self.carry().carry().0;
        // Now h < 2^130 + small; subtract p if h >= p (constant time).
        let mut g0 = h0 + 5;
        let mut g1 = h1 + (g0 >> 44);
        g0 &= MASK44;
        let g2 = h2 + (g1 >> 44);
        g1 &= MASK44;
        let use_g = ((g2 >> 42) & 1).wrapping_neg(); // all ones when h + 5 >= 2^130
        let g2 = g2 & MASK42;
        let h0 = (h0 & !use_g) | (g0 & use_g);
        let h1 = (h1 & !use_g) | (g1 & use_g);
        let h2 = (h2 & !use_g) | (g2 & use_g);
        let value = (h0 as u128) | ((h1 as u128) << 44) | ((h2 as u128) << 88);
        value.wrapping_add(s).to_le_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8439_poly1305_vector() {
        // RFC 8439 section 2.5.2.
        let key = hex::decode("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b").unwrap();
        let message = b"Cryptographic Forum Research Group";
        let r = u128::from_le_bytes(key[..16].try_into().unwrap()) & 0x0ffffffc_0ffffffc_0ffffffc_0fffffff;
        let s = u128::from_le_bytes(key[16..].try_into().unwrap());
        let r = Fe::from_u128(r, false);
        let mut acc = Fe::ZERO;
        for chunk in message.chunks(16) {
            let mut block = [0u8; 16];
            block[..chunk.len()].copy_from_slice(chunk);
            // The final short block's 2^(8 * len) marker, as the plain Poly1305 does it.
            let value = u128::from_le_bytes(block);
            let element = if chunk.len() == 16 {
                Fe::from_u128(value, true)
            } else {
                Fe::from_u128(value | (1u128 << (8 * chunk.len())), false)
            };
            acc = acc.add(element).mul(r);
        }
        assert_eq!(hex::encode(acc.tag(s)), "a8061dc1305136c6c22b8baf0c0127a9");
    }

    #[test]
    fn reduction_of_values_near_p() {
        // p - 1 + 1 = 0 (mod p): the tag of p with s = 0 is 0.
        let p_minus_one = Fe([MASK44 - 5, MASK44, MASK42]);
        assert_eq!(p_minus_one.add(Fe::ONE).tag(0), [0u8; 16]);
        assert_eq!(Fe::from_u128(7, false).pow(3).tag(0)[0], (343 % 256) as u8);
    }

    #[test]
    fn split_blocks_sum_to_the_whole() {
        let r = Fe::from_u128(0x0ffffffc_0ffffffc_0ffffffc_0fffffff, false);
        let bytes: Vec<u8> = (0..100u8).collect();
        let whole = horner_range(r, 0, &bytes);
        // Split at 37: the first part ends mid-block, the second starts there.
        let first = horner_range(r, 0, &bytes[..37]);
        let second = horner_range(r, 37, &bytes[37..]);
        // The first part covers blocks 0..=2 of 7; shift it by r^(6 - 2).
        let moved = first.mul(r.pow(4));
        assert_eq!(moved.add(second).tag(0), whole.tag(0));
    }
}
