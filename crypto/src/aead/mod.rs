//! The two AEADs, behind one interface that works on byte ranges of a record.
//!
//! For a record with `n` ciphertext bytes (`m = ceil(n / 16)` blocks), both MACs hash the blocks
//! `AAD, C_0 .. C_{m-1}, L` with powers `k^(m+2), k^(m+1) .. k^2, k^1` of their key `k` (GHASH's
//! `H`, Poly1305's `r`). A range's Horner value is moved to its place with a power of `k`; the
//! range that ends a record (the common case) needs none. [`AeadKey::crypt_range`] returns a range's contribution already at its
//! place, so contributions can be added in any order; [`AeadKey::tag`] adds the AAD and length
//! blocks and finishes.

pub(crate) mod aes;
pub(crate) mod chacha;
pub(crate) mod gcm;
pub(crate) mod polyval;

pub(crate) use gcm::Direction;

use crate::suite::AeadAlgorithm;

/// An AEAD key, expanded once per traffic key.
#[derive(Clone)]
pub(crate) enum AeadKey {
    Gcm(gcm::GcmKey),
    Chacha(chacha::ChachaKey),
}

/// What a record needs beyond the traffic key: its nonce and the per-record MAC material.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordKey {
    nonce: [u8; 12],
    mac: RecordMac,
}

#[derive(Clone, Copy, Debug)]
enum RecordMac {
    /// `E(K, nonce || 1)`.
    Gcm { tag_mask: [u8; 16] },
    Poly(chacha::PolyKey),
}

/// A MAC accumulator value: contributions are added with [`Auth::add`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Auth {
    Ghash(u128),
    Poly(chacha::Fe),
}

impl Auth {
    pub(crate) fn zero(algorithm: AeadAlgorithm) -> Auth {
        match algorithm {
            AeadAlgorithm::Chacha20Poly1305 => Auth::Poly(chacha::Fe::ZERO),
            _ => Auth::Ghash(0),
        }
    }

    pub(crate) fn add(&mut self, other: Auth) {
        match (self, other) {
            (Auth::Ghash(a), Auth::Ghash(b)) => *a ^= b,
            (Auth::Poly(a), Auth::Poly(b)) => *a = a.add(b),
            // Accumulators are created from the same key as their contributions.
            _ => debug_assert!(false, "mixed MAC accumulators"),
        }
    }
}

fn blocks(len: usize) -> u64 {
    len.div_ceil(16) as u64
}

impl AeadKey {
    /// `accelerate` false forces portable code paths (tests run both).
    pub(crate) fn new(algorithm: AeadAlgorithm, key: &[u8], accelerate: bool) -> Option<AeadKey> {
        if key.len() != algorithm.key_len() {
            return None;
        }
        Some(match algorithm {
            AeadAlgorithm::Aes128Gcm | AeadAlgorithm::Aes256Gcm => AeadKey::Gcm(gcm::GcmKey::new(key, accelerate)?),
            AeadAlgorithm::Chacha20Poly1305 => AeadKey::Chacha(chacha::ChachaKey::new(key)?),
        })
    }

    pub(crate) fn record_key(&self, nonce: [u8; 12]) -> RecordKey {
        let mac = match self {
            AeadKey::Gcm(key) => RecordMac::Gcm { tag_mask: key.tag_mask(&nonce) },
            AeadKey::Chacha(key) => RecordMac::Poly(key.poly_key(&nonce)),
        };
        RecordKey { nonce, mac }
    }

    /// En- or decrypts `data` in place, which is bytes `offset..offset + data.len()` of a
    /// record's `ciphertext_len`-byte ciphertext, and returns its MAC contribution at its place.
    pub(crate) fn crypt_range(
        &self,
        record: &RecordKey,
        ciphertext_len: usize,
        offset: usize,
        data: &mut [u8],
        direction: Direction,
    ) -> Auth {
        debug_assert!(offset + data.len() <= ciphertext_len);
        if data.is_empty() {
            return self.zero();
        }
        // The range's Horner value leaves its last block at k^1. [`AeadKey::tag`] finishes with
        // one more Horner step (the length block), so block j must sit at k^(m - j) before it:
        // the last block needs k^(m - 1 - last), and a range that ends the record needs nothing.
        let last_block = ((offset + data.len() - 1) / 16) as u64;
        let shift = blocks(ciphertext_len) - 1 - last_block;
        match (self, &record.mac) {
            (AeadKey::Gcm(key), RecordMac::Gcm { .. }) => {
                let value = key.crypt(&record.nonce, offset, data, direction);
                Auth::Ghash(key.shift(value, shift))
            }
            (AeadKey::Chacha(key), RecordMac::Poly(poly)) => {
                let value = key.crypt(&record.nonce, poly, offset, data, direction);
                Auth::Poly(value.mul(poly.r.pow(shift)))
            }
            _ => unreachable_mac(),
        }
    }

    fn zero(&self) -> Auth {
        match self {
            AeadKey::Gcm(_) => Auth::Ghash(0),
            AeadKey::Chacha(_) => Auth::Poly(chacha::Fe::ZERO),
        }
    }

    /// The tag of a record whose ciphertext contributions add up to `ciphertext_mac`.
    pub(crate) fn tag(&self, record: &RecordKey, aad: &[u8], ciphertext_len: usize, ciphertext_mac: Auth) -> [u8; 16] {
        debug_assert!(aad.len() <= 16, "TLS AAD is 5 or 13 bytes");
        let mut aad_block = [0u8; 16];
        aad_block[..aad.len()].copy_from_slice(aad);
        let m = blocks(ciphertext_len);
        match (self, &record.mac, ciphertext_mac) {
            (AeadKey::Gcm(key), RecordMac::Gcm { tag_mask }, Auth::Ghash(body)) => {
                // Before the final length-block step the AAD block sits at H^(m + 1).
                let aad_value = key.shift(key.horner(0, &aad_block), m);
                let lengths = ((aad.len() as u128 * 8) << 64) | (ciphertext_len as u128 * 8);
                let total = key.horner_element(aad_value ^ body, lengths);
                xor16(total.to_be_bytes(), tag_mask)
            }
            (AeadKey::Chacha(_), RecordMac::Poly(poly), Auth::Poly(body)) => {
                let aad_value = chacha::horner_block(chacha::Fe::ZERO, poly.r, &aad_block).mul(poly.r.pow(m));
                let mut lengths = [0u8; 16];
                lengths[..8].copy_from_slice(&(aad.len() as u64).to_le_bytes());
                lengths[8..].copy_from_slice(&(ciphertext_len as u64).to_le_bytes());
                chacha::horner_block(aad_value.add(body), poly.r, &lengths).tag(poly.s)
            }
            _ => unreachable_mac(),
        }
    }
}

fn xor16(a: [u8; 16], b: &[u8; 16]) -> [u8; 16] {
    let mut out = a;
    for (x, y) in out.iter_mut().zip(b) {
        *x ^= y;
    }
    out
}

/// A record key always comes from the same `AeadKey` it is used with.
#[cold]
fn unreachable_mac() -> ! {
    unreachable!("record key from a different AEAD")
}

/// Constant-time comparison of two tags.
pub(crate) fn tags_equal(a: &[u8; 16], b: &[u8]) -> bool {
    if b.len() != 16 {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    core::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::aead::{AeadInPlace, KeyInit};

    fn oracle_seal(algorithm: AeadAlgorithm, key: &[u8], nonce: &[u8; 12], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut buffer = plaintext.to_vec();
        let tag = match algorithm {
            AeadAlgorithm::Aes128Gcm => aes_gcm::Aes128Gcm::new_from_slice(key)
                .unwrap()
                .encrypt_in_place_detached(nonce.into(), aad, &mut buffer)
                .unwrap()
                .to_vec(),
            AeadAlgorithm::Aes256Gcm => aes_gcm::Aes256Gcm::new_from_slice(key)
                .unwrap()
                .encrypt_in_place_detached(nonce.into(), aad, &mut buffer)
                .unwrap()
                .to_vec(),
            AeadAlgorithm::Chacha20Poly1305 => chacha20poly1305::ChaCha20Poly1305::new_from_slice(key)
                .unwrap()
                .encrypt_in_place_detached(nonce.into(), aad, &mut buffer)
                .unwrap()
                .to_vec(),
        };
        buffer.extend_from_slice(&tag);
        buffer
    }

    /// The keys to test for `algorithm`: every GCM backend this CPU has (portable, AES-NI,
    /// AVX-512), or ChaCha20-Poly1305 portable and as `new(.., true)` builds it.
    fn keys_under_test(algorithm: AeadAlgorithm, key: &[u8]) -> Vec<(String, AeadKey)> {
        match algorithm {
            AeadAlgorithm::Aes128Gcm | AeadAlgorithm::Aes256Gcm => gcm::Backend::all_available()
                .into_iter()
                .map(|backend| (format!("{backend:?}"), AeadKey::Gcm(gcm::GcmKey::with_backend(key, backend).unwrap())))
                .collect(),
            AeadAlgorithm::Chacha20Poly1305 => [false, true]
                .into_iter()
                .map(|accelerate| (format!("accelerate={accelerate}"), AeadKey::new(algorithm, key, accelerate).unwrap()))
                .collect(),
        }
    }

    #[test]
    fn ranges_in_any_order_match_the_oracle() {
        for algorithm in [AeadAlgorithm::Aes128Gcm, AeadAlgorithm::Aes256Gcm, AeadAlgorithm::Chacha20Poly1305] {
            let key: Vec<u8> = (0..algorithm.key_len() as u8).collect();
            for (accelerate, aead) in keys_under_test(algorithm, &key) {
                let nonce = [7u8; 12];
                let aad = [23u8, 3, 3, 0, 200];
                for len in [0usize, 1, 15, 16, 17, 127, 128, 129, 255, 256, 257, 300, 1000, 1448, 4099] {
                    let plaintext: Vec<u8> = (0..len).map(|i| (i * 31 + 5) as u8).collect();
                    let expected = oracle_seal(algorithm, &key, &nonce, &aad, &plaintext);
                    let record = aead.record_key(nonce);
                    // Seal in three ranges, out of order.
                    let mut buffer = plaintext.clone();
                    let cuts = [0, len / 3, len * 2 / 3 + (len > 5) as usize, len];
                    let mut mac = Auth::zero(algorithm);
                    for i in [2usize, 0, 1] {
                        let (a, b) = (cuts[i], cuts[i + 1].max(cuts[i]));
                        mac.add(aead.crypt_range(&record, len, a, &mut buffer[a..b], Direction::Encrypt));
                    }
                    assert_eq!(&buffer[..], &expected[..len], "{algorithm:?} {accelerate} {len}");
                    assert_eq!(aead.tag(&record, &aad, len, mac)[..], expected[len..], "{algorithm:?} {accelerate} {len}");
                    // Open it in two ranges, the second first, cut inside a block.
                    let mut opened = buffer.clone();
                    let cut = (len * 3 / 5 + 1).min(len);
                    let mut mac = Auth::zero(algorithm);
                    mac.add(aead.crypt_range(&record, len, cut, &mut opened[cut..], Direction::Decrypt));
                    mac.add(aead.crypt_range(&record, len, 0, &mut opened[..cut], Direction::Decrypt));
                    assert_eq!(opened, plaintext, "{algorithm:?} {accelerate} {len}");
                    assert!(tags_equal(&aead.tag(&record, &aad, len, mac), &expected[len..]));
                    // Open it byte by byte backwards.
                    let mut mac = Auth::zero(algorithm);
                    for i in (0..len).rev() {
                        mac.add(aead.crypt_range(&record, len, i, &mut buffer[i..i + 1], Direction::Decrypt));
                    }
                    assert_eq!(buffer, plaintext);
                    assert!(tags_equal(&aead.tag(&record, &aad, len, mac), &expected[len..]));
                }
            }
        }
    }
}
