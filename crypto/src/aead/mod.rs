//! The two AEADs, behind one interface that works on byte ranges of a record.
//!
//! For a record with `n` ciphertext bytes (`m = ceil(n / 16)` blocks), both MACs hash the blocks
//! `AAD, C_0 .. C_{m-1}, L` with powers `k^(m+2), k^(m+1) .. k^2, k^1` of their key `k` (GHASH's
//! `H`, Poly1305's `r`). A range's Horner value is moved to its place with a power of `k`; the
//! range that ends a record (the common case) needs none. [`AeadKey::crypt_range`] returns a range's contribution already at its
//! place, so contributions can be added in any order; [`AeadKey::tag`] adds the AAD and length
//! blocks and finishes.
//!
//! Ranges that arrive in order from the record's start (the common case) skip the moving:
//! [`AeadKey::crypt_next`] continues a [`Prefix`], the Horner value of the AAD block and the
//! ciphertext so far, as one long Horner loop would; [`AeadKey::tag_with`] moves the prefix to
//! its place (nothing to move once it covers the record) and adds the other contributions. A
//! block split between two in-order ranges is continued in place: the prefix's last block sits
//! at `k^1`, and the next range's part of that block is added at `k^1` too.

pub(crate) mod aes;
pub(crate) mod chacha;
#[cfg(target_arch = "x86_64")]
pub(crate) mod chacha512;
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
    /// The tag mask `E(K, nonce || 1)`: computed with the record's first in-order range (its
    /// latency hidden behind that range's work), or else by [`AeadKey::tag_with`].
    Gcm { tag_mask: Option<[u8; 16]> },
    /// Derived when first needed ([`chacha::ChachaKey::crypt_next`] gets it from the record's
    /// first keystream batch).
    Poly(Option<chacha::PolyKey>),
}

/// A record's ciphertext processed in order from its start (see the module docs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Prefix {
    /// Ciphertext bytes `0..next` went through [`AeadKey::crypt_next`]; 0: none yet.
    next: usize,
    /// The Horner value of the AAD block and the blocks those bytes touch.
    state: PrefixState,
}

#[derive(Clone, Copy, Debug)]
enum PrefixState {
    Ghash(u128),
    Poly(chacha::Continuation),
}

/// Keystream and key material an opener keeps from one in-order range to the next (ChaCha20:
/// keystream generated ahead and Poly1305 powers; nothing for AES-GCM). Allocated when first
/// used; it can be shared by all of an opener's records and keys (what it holds is tagged with
/// what it was made from).
#[derive(Default)]
pub(crate) struct Lookahead {
    chacha: chacha::Lookahead,
}

impl Prefix {
    pub(crate) fn new(algorithm: AeadAlgorithm) -> Prefix {
        let state = match algorithm {
            AeadAlgorithm::Chacha20Poly1305 => PrefixState::Poly(chacha::Continuation::EMPTY),
            _ => PrefixState::Ghash(0),
        };
        Prefix { next: 0, state }
    }

    /// Where the next in-order range starts.
    pub(crate) fn next(&self) -> usize {
        self.next
    }
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
            AeadAlgorithm::Chacha20Poly1305 => AeadKey::Chacha(chacha::ChachaKey::new(key, accelerate)?),
        })
    }

    pub(crate) fn record_key(&self, nonce: [u8; 12]) -> RecordKey {
        let mac = match self {
            AeadKey::Gcm(_) => RecordMac::Gcm { tag_mask: None },
            AeadKey::Chacha(_) => RecordMac::Poly(None),
        };
        RecordKey { nonce, mac }
    }

    /// Continues `prefix` with `data`, bytes `prefix.next()..` of a record's `ciphertext_len`-byte
    /// ciphertext: en- or decrypts them in place and adds them to the prefix's hash. `aad` is
    /// the record's additional data (hashed first, by the range at byte 0).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn crypt_next(
        &self,
        record: &mut RecordKey,
        prefix: &mut Prefix,
        aad: &[u8],
        ciphertext_len: usize,
        data: &mut [u8],
        direction: Direction,
        lookahead: &mut Lookahead,
    ) {
        let next = prefix.next;
        debug_assert!(next + data.len() <= ciphertext_len);
        if data.is_empty() {
            return;
        }
        let aad = aad_value(aad);
        match (self, &mut record.mac, &mut prefix.state) {
            (AeadKey::Gcm(key), RecordMac::Gcm { tag_mask }, PrefixState::Ghash(acc)) => {
                let before = if next == 0 {
                    // Independent of the range's work, which hides its latency.
                    *tag_mask = Some(key.tag_mask(&record.nonce));
                    key.horner_element(0, aad.swap_bytes())
                } else {
                    *acc
                };
                if next % 16 == 0 {
                    // The prefix ends on a block boundary: one Horner loop continues it.
                    *acc = key.crypt_from(&record.nonce, next, data, direction, before);
                } else {
                    // The range starts inside the prefix's last block (block `first`), whose
                    // two parts add at the same place: move the prefix by the blocks after it.
                    let value = key.crypt(&record.nonce, next, data, direction);
                    let (first, last) = (next / 16, (next + data.len() - 1) / 16);
                    *acc = key.shift(before, (last - first) as u64) ^ value;
                }
            }
            (AeadKey::Chacha(key), RecordMac::Poly(poly), PrefixState::Poly(state)) => {
                let cache = &mut lookahead.chacha;
                key.crypt_next(&record.nonce, poly, next, aad, state, data, direction, ciphertext_len, cache);
            }
            _ => unreachable_mac(),
        }
        prefix.next = next + data.len();
    }

    /// En- or decrypts `data` in place, which is bytes `offset..offset + data.len()` of a
    /// record's `ciphertext_len`-byte ciphertext, and returns its MAC contribution at its place.
    pub(crate) fn crypt_range(
        &self,
        record: &mut RecordKey,
        ciphertext_len: usize,
        offset: usize,
        data: &mut [u8],
        direction: Direction,
    ) -> Auth {
        self.crypt_range_with(record, ciphertext_len, offset, data, direction, None)
    }

    /// As [`Self::crypt_range`], with key material cached in `lookahead` (an opener's).
    pub(crate) fn crypt_range_with(
        &self,
        record: &mut RecordKey,
        ciphertext_len: usize,
        offset: usize,
        data: &mut [u8],
        direction: Direction,
        lookahead: Option<&mut Lookahead>,
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
        match (self, &mut record.mac) {
            (AeadKey::Gcm(key), RecordMac::Gcm { .. }) => {
                let value = key.crypt(&record.nonce, offset, data, direction);
                Auth::Ghash(key.shift(value, shift))
            }
            (AeadKey::Chacha(key), RecordMac::Poly(poly)) => {
                let poly = *poly.get_or_insert_with(|| key.poly_key(&record.nonce));
                let mut lookahead = lookahead.map(|lookahead| &mut lookahead.chacha);
                let value = key.crypt(&record.nonce, &poly, offset, data, direction, lookahead.as_deref_mut());
                Auth::Poly(poly.shift_with(value, shift, lookahead))
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
    #[cfg(test)]
    pub(crate) fn tag(&self, record: &mut RecordKey, aad: &[u8], ciphertext_len: usize, ciphertext_mac: Auth) -> [u8; 16] {
        let prefix = Prefix::new(match self {
            AeadKey::Gcm(_) => AeadAlgorithm::Aes128Gcm,
            AeadKey::Chacha(_) => AeadAlgorithm::Chacha20Poly1305,
        });
        self.tag_with(record, aad, ciphertext_len, &prefix, ciphertext_mac)
    }

    /// The tag of a record whose ciphertext went partly through `prefix` (possibly none of
    /// it) and otherwise through [`Self::crypt_range`], whose contributions add up to `other`.
    pub(crate) fn tag_with(
        &self,
        record: &mut RecordKey,
        aad: &[u8],
        ciphertext_len: usize,
        prefix: &Prefix,
        other: Auth,
    ) -> [u8; 16] {
        debug_assert!(aad.len() <= 16, "TLS AAD is 5 or 13 bytes");
        let (aad_len, aad) = (aad.len(), aad_value(aad));
        let m = blocks(ciphertext_len);
        // Before the final length-block step the AAD block sits at k^(m + 1) and the prefix's
        // last block (block `blocks(next) - 1`) at k^(m + 1 - blocks(next)).
        let distance = m - blocks(prefix.next);
        match (self, &mut record.mac, other, &prefix.state) {
            (AeadKey::Gcm(key), RecordMac::Gcm { tag_mask }, Auth::Ghash(other), PrefixState::Ghash(acc)) => {
                // If not known yet: independent of the GHASH steps below, the CPU overlaps them.
                let tag_mask = tag_mask.unwrap_or_else(|| key.tag_mask(&record.nonce));
                // GHASH reads blocks big-endian: the byte-reversed value.
                let body = if prefix.next == 0 {
                    key.shift(key.horner_element(0, aad.swap_bytes()), m)
                } else {
                    key.shift(*acc, distance)
                };
                let lengths = ((aad_len as u128 * 8) << 64) | (ciphertext_len as u128 * 8);
                let total = key.horner_element(body ^ other, lengths);
                xor16(total.to_be_bytes(), &tag_mask)
            }
            (AeadKey::Chacha(key), RecordMac::Poly(poly), Auth::Poly(other), PrefixState::Poly(state)) => {
                let poly = *poly.get_or_insert_with(|| key.poly_key(&record.nonce));
                let body = if prefix.next == 0 {
                    poly.shift(chacha::horner_value(chacha::Fe::ZERO, poly.r, aad), m)
                } else {
                    poly.shift(state.acc, distance)
                };
                // The length block: both lengths as 64-bit little-endian numbers.
                let lengths = (aad_len as u128) | ((ciphertext_len as u128) << 64);
                chacha::horner_value(body.add(other), poly.r, lengths).tag(poly.s)
            }
            _ => unreachable_mac(),
        }
    }
}

/// The AAD zero-padded to one block (TLS AADs are 5 or 13 bytes), as a little-endian number.
fn aad_value(aad: &[u8]) -> u128 {
    chacha::load_le(&aad[..aad.len().min(16)])
}

fn xor16(a: [u8; 16], b: &[u8; 16]) -> [u8; 16] {
    (u128::from_ne_bytes(a) ^ u128::from_ne_bytes(*b)).to_ne_bytes()
}

/// A record key always comes from the same `AeadKey` it is used with.
#[cold]
fn unreachable_mac() -> ! {
    unreachable!("record key from a different AEAD")
}

/// Constant-time comparison of two tags (one 128-bit difference, no early exit).
pub(crate) fn tags_equal(a: &[u8; 16], b: &[u8]) -> bool {
    let Ok(b) = <&[u8; 16]>::try_from(b) else {
        return false;
    };
    let diff = u128::from_ne_bytes(*a) ^ u128::from_ne_bytes(*b);
    core::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::aead::{AeadInOut, KeyInit};

    fn oracle_seal(algorithm: AeadAlgorithm, key: &[u8], nonce: &[u8; 12], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut buffer = plaintext.to_vec();
        let tag = match algorithm {
            AeadAlgorithm::Aes128Gcm => aes_gcm::Aes128Gcm::new_from_slice(key)
                .unwrap()
                .encrypt_inout_detached(nonce.into(), aad, buffer.as_mut_slice().into())
                .unwrap()
                .to_vec(),
            AeadAlgorithm::Aes256Gcm => aes_gcm::Aes256Gcm::new_from_slice(key)
                .unwrap()
                .encrypt_inout_detached(nonce.into(), aad, buffer.as_mut_slice().into())
                .unwrap()
                .to_vec(),
            AeadAlgorithm::Chacha20Poly1305 => chacha20poly1305::ChaCha20Poly1305::new_from_slice(key)
                .unwrap()
                .encrypt_inout_detached(nonce.into(), aad, buffer.as_mut_slice().into())
                .unwrap()
                .to_vec(),
        };
        buffer.extend_from_slice(&tag);
        buffer
    }

    /// The keys to test for `algorithm`: every GCM backend this CPU has (portable, AES-NI,
    /// AVX-512), or every ChaCha20-Poly1305 backend it has (portable, AVX-512).
    fn keys_under_test(algorithm: AeadAlgorithm, key: &[u8]) -> Vec<(String, AeadKey)> {
        match algorithm {
            AeadAlgorithm::Aes128Gcm | AeadAlgorithm::Aes256Gcm => gcm::Backend::all_available()
                .into_iter()
                .map(|backend| (format!("{backend:?}"), AeadKey::Gcm(gcm::GcmKey::with_backend(key, backend).unwrap())))
                .collect(),
            AeadAlgorithm::Chacha20Poly1305 => chacha::Backend::all_available()
                .into_iter()
                .map(|backend| (format!("{backend:?}"), AeadKey::Chacha(chacha::ChachaKey::with_backend(key, backend).unwrap())))
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
                    let mut record = aead.record_key(nonce);
                    // Seal in three ranges, out of order.
                    let mut buffer = plaintext.clone();
                    let cuts = [0, len / 3, len * 2 / 3 + (len > 5) as usize, len];
                    let mut mac = Auth::zero(algorithm);
                    for i in [2usize, 0, 1] {
                        let (a, b) = (cuts[i], cuts[i + 1].max(cuts[i]));
                        mac.add(aead.crypt_range(&mut record, len, a, &mut buffer[a..b], Direction::Encrypt));
                    }
                    assert_eq!(&buffer[..], &expected[..len], "{algorithm:?} {accelerate} {len}");
                    assert_eq!(aead.tag(&mut record, &aad, len, mac)[..], expected[len..], "{algorithm:?} {accelerate} {len}");
                    // Open it in two ranges, the second first, cut inside a block.
                    let mut opened = buffer.clone();
                    let cut = (len * 3 / 5 + 1).min(len);
                    let mut mac = Auth::zero(algorithm);
                    mac.add(aead.crypt_range(&mut record, len, cut, &mut opened[cut..], Direction::Decrypt));
                    mac.add(aead.crypt_range(&mut record, len, 0, &mut opened[..cut], Direction::Decrypt));
                    assert_eq!(opened, plaintext, "{algorithm:?} {accelerate} {len}");
                    assert!(tags_equal(&aead.tag(&mut record, &aad, len, mac), &expected[len..]));
                    // Open it byte by byte backwards.
                    let mut mac = Auth::zero(algorithm);
                    for i in (0..len).rev() {
                        mac.add(aead.crypt_range(&mut record, len, i, &mut buffer[i..i + 1], Direction::Decrypt));
                    }
                    assert_eq!(buffer, plaintext);
                    assert!(tags_equal(&aead.tag(&mut record, &aad, len, mac), &expected[len..]));
                }
            }
        }
    }

    /// Records opened and sealed as the opener does: ranges in a random order, those that
    /// continue the in-order prefix through `crypt_next`, the others through `crypt_range`;
    /// and split points anywhere, so blocks and keystream blocks are split between ranges.
    #[test]
    fn prefixes_and_scattered_ranges_match_the_oracle() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move |bound: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % bound as u64) as usize
        };
        for algorithm in [AeadAlgorithm::Aes128Gcm, AeadAlgorithm::Aes256Gcm, AeadAlgorithm::Chacha20Poly1305] {
            let key: Vec<u8> = (0..algorithm.key_len() as u8).map(|b| b.wrapping_mul(29)).collect();
            for (backend, aead) in keys_under_test(algorithm, &key) {
                // One lookahead for all records, as an opener has: each record's must not leak
                // into another's.
                let mut lookahead = Lookahead::default();
                for round in 0..300 {
                    let len = match round % 4 {
                        0 => random(64),
                        1 => random(300),
                        2 => 1449,
                        _ => random(16400),
                    };
                    let nonce = [round as u8; 12];
                    let aad = [23u8, 3, 3, (len >> 8) as u8, len as u8];
                    let plaintext: Vec<u8> = (0..len).map(|i| (i * 7 + round) as u8).collect();
                    let expected = oracle_seal(algorithm, &key, &nonce, &aad, &plaintext);
                    for direction in [Direction::Encrypt, Direction::Decrypt] {
                        let mut cuts: Vec<usize> = (0..random(6)).map(|_| random(len + 1)).collect();
                        if round % 5 == 0 {
                            // TCP-like segments.
                            cuts = (0..len).step_by(1 + random(1500)).collect();
                        }
                        cuts.extend([0, len]);
                        cuts.sort_unstable();
                        cuts.dedup();
                        let mut ranges: Vec<(usize, usize)> = cuts.windows(2).map(|w| (w[0], w[1])).collect();
                        if random(2) == 0 {
                            // Shuffle some of the time; in order otherwise.
                            for i in (1..ranges.len()).rev() {
                                ranges.swap(i, random(i + 1));
                            }
                        }
                        let (input, output) = match direction {
                            Direction::Encrypt => (&plaintext[..], &expected[..len]),
                            Direction::Decrypt => (&expected[..len], &plaintext[..]),
                        };
                        let mut buffer = input.to_vec();
                        let mut record = aead.record_key(nonce);
                        let mut prefix = Prefix::new(algorithm);
                        let mut other = Auth::zero(algorithm);
                        for (a, b) in ranges {
                            if a == prefix.next() {
                                let lookahead = &mut lookahead;
                                aead.crypt_next(&mut record, &mut prefix, &aad, len, &mut buffer[a..b], direction, lookahead);
                            } else {
                                let lookahead = Some(&mut lookahead).filter(|_| round % 2 == 0);
                                other.add(aead.crypt_range_with(&mut record, len, a, &mut buffer[a..b], direction, lookahead));
                            }
                        }
                        let what = format!("{algorithm:?} {backend} len {len} round {round} {direction:?}");
                        assert!(buffer == output, "{what}: bytes");
                        let tag = aead.tag_with(&mut record, &aad, len, &prefix, other);
                        assert_eq!(tag[..], expected[len..], "{what}: tag");
                    }
                }
            }
        }
    }
}
