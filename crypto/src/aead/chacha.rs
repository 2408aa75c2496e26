//! ChaCha20-Poly1305 (RFC 8439), split so that any byte range of a record can be processed on
//! its own.
//!
//! Poly1305 is written here because the streaming engine needs what no one-shot implementation
//! exposes: the untruncated accumulator modulo `2^130 - 5` and multiplication by arbitrary
//! powers of `r`.
//!
//! Poly1305 is linear too. A block's value is its bytes as a little-endian number plus `2^128`
//! (every block of the AEAD's MAC input is a full 16 bytes, the padding making them so), and the
//! hash is `sum(block_i * r^(n - i + 1))`. A block split between two chunks is the integer sum of
//! its two zero-padded parts (they do not overlap), so each chunk adds its part and the chunk
//! holding the block's first byte adds the `2^128`.
//!
//! Backends ([`Backend`]), picked once per key from what the CPU has:
//! - AVX-512 (F, BW, VL) ([`super::chacha512`]): ChaCha20 sixteen blocks per iteration (four
//!   per 512-bit vector, one or two vectors, for batches of up to eight), generated into a
//!   block buffer and XORed from there; Poly1305 eight blocks per iteration in 26-bit limbs;
//! - the same with AVX-512 IFMA: Poly1305 in [`Fe`]'s own 44-bit limbs with 52-bit
//!   multiply-adds;
//! - elsewhere the keystream comes from the `chacha20` crate (seeked to block `1 + offset/64`)
//!   and Poly1305 runs block by block on [`Fe`].
//!
//! The per-record Poly1305 key (keystream block 0) is derived when first needed: with AVX-512,
//! from the batch that also covers the record's first data blocks, at no extra cost. An
//! opener's [`Lookahead`] keeps, from one in-order range to the next, the last keystream batch
//! (generated up to sixteen blocks ahead, within the record: TCP segments are not multiples of
//! 64 bytes, and otherwise every segment would recompute a block and start a short batch) and
//! the vector loop's powers of `r`.

use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use chacha20::ChaCha20;

use super::gcm::Direction;

/// Which code does a key's work. Ordered from slowest to fastest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Backend {
    /// The `chacha20` crate and scalar Poly1305.
    Portable,
    /// [`super::chacha512`]: AVX-512F/BW/VL and AVX2, Poly1305 in 26-bit limbs.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// The same with AVX-512 IFMA: Poly1305 in 44-bit limbs with 52-bit multiply-adds.
    #[cfg(target_arch = "x86_64")]
    Avx512Ifma,
}

impl Backend {
    /// The fastest backend this CPU supports (feature detection is cached by std).
    pub(crate) fn best() -> Backend {
        #[cfg(target_arch = "x86_64")]
        if super::chacha512::available() {
            return if super::chacha512::ifma_available() { Backend::Avx512Ifma } else { Backend::Avx512 };
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
            Backend::Avx512,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512Ifma,
        ];
        all.into_iter().filter(|backend| *backend <= best).collect()
    }
}

#[derive(Clone)]
pub(crate) struct ChachaKey {
    key: [u8; 32],
    /// The key as ChaCha20 state words.
    words: [u32; 8],
    backend: Backend,
}

/// Per-record Poly1305 key, from the first keystream block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PolyKey {
    pub r: Fe,
    pub s: u128,
}

impl PolyKey {
    fn from_block(block: &[u8]) -> PolyKey {
        let mut r_bytes = [0u8; 16];
        r_bytes.copy_from_slice(&block[..16]);
        let r = u128::from_le_bytes(r_bytes) & 0x0ffffffc_0ffffffc_0ffffffc_0fffffff;
        let mut s_bytes = [0u8; 16];
        s_bytes.copy_from_slice(&block[16..32]);
        PolyKey { r: Fe::from_u128(r, false), s: u128::from_le_bytes(s_bytes) }
    }

    /// `value * r^k`: moves a Horner value `k` blocks further from the end of the hash.
    pub(crate) fn shift(&self, value: Fe, k: u64) -> Fe {
        if k == 0 {
            value
        } else {
            value.mul(self.r.pow(k))
        }
    }

    /// As [`Self::shift`], with `r^(2^i)` from `lookahead` (made once per `r`): one multiply
    /// per set bit of `k` instead of a square-and-multiply.
    pub(crate) fn shift_with(&self, value: Fe, k: u64, lookahead: Option<&mut Lookahead>) -> Fe {
        match lookahead {
            Some(lookahead) if k != 0 && k < 1 << SQUARES => {
                let squares = lookahead.squares_of(self.r);
                let mut value = value;
                for (i, square) in squares.iter().enumerate() {
                    if k >> i & 1 == 1 {
                        value = value.mul(*square);
                    }
                }
                value
            }
            _ => self.shift(value, k),
        }
    }
}

/// `r^(2^i)` for `i < SQUARES` in [`Lookahead`]: shifts below `2^11` blocks (a TLS record has
/// at most 1152).
const SQUARES: usize = 11;

/// The in-order state of a record (see [`super::Prefix`]): the Horner value so far.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Continuation {
    pub acc: Fe,
}

impl Continuation {
    pub(crate) const EMPTY: Continuation = Continuation { acc: Fe::ZERO };
}

/// What a call may use of a [`Lookahead`].
enum Ahead<'a> {
    Nothing,
    /// Cached powers only (a range out of order: the keystream kept is for the in-order one).
    Powers(&'a mut Lookahead),
    /// Everything: the in-order range of a record of `ciphertext_len` bytes.
    Stream { ciphertext_len: usize, lookahead: &'a mut Lookahead },
}

/// What an opener keeps between the in-order ranges of its records (see
/// [`super::Lookahead`]): with AVX-512, the last keystream batch, generated up to sixteen
/// blocks ahead within the record, and the vector-loop powers of the last `r`; for any
/// backend, `r^(2^i)` for shifts. Each is tagged with what it was made from (key and nonce,
/// `r`) and used only when that matches.
#[derive(Default)]
pub(crate) struct Lookahead {
    #[cfg(target_arch = "x86_64")]
    cached: Option<Box<Cached>>,
    squares: Option<Box<([u64; 3], [Fe; SQUARES])>>,
}

impl Lookahead {
    /// `r^(2^i)` for `i < SQUARES`.
    fn squares_of(&mut self, r: Fe) -> &[Fe; SQUARES] {
        let tag = r.normalized();
        let fresh = self.squares.is_none();
        let squares = self.squares.get_or_insert_with(|| Box::new((tag, [r; SQUARES])));
        if fresh || squares.0 != tag {
            squares.0 = tag;
            squares.1[0] = r;
            for i in 1..SQUARES {
                squares.1[i] = squares.1[i - 1].mul(squares.1[i - 1]);
            }
        }
        &squares.1
    }
}

#[cfg(target_arch = "x86_64")]
struct Cached {
    key: [u32; 8],
    nonce: [u8; 12],
    window: super::chacha512::Window,
    powers: PowersCache,
}

/// Vector-loop powers of `r`, with `r` (normalised limbs) they were made from.
#[cfg(target_arch = "x86_64")]
#[derive(Default)]
struct PowersCache {
    plain: Option<([u64; 3], super::chacha512::Powers)>,
    ifma: Option<([u64; 3], super::chacha512::PowersIfma)>,
}

#[cfg(target_arch = "x86_64")]
impl Lookahead {
    /// The cache for keystream of `key` and `nonce` (emptied if it held another's).
    fn for_stream(&mut self, key: &[u32; 8], nonce: &[u8; 12]) -> &mut Cached {
        let cached = self.cached.get_or_insert_with(|| {
            Box::new(Cached {
                key: *key,
                nonce: *nonce,
                window: super::chacha512::Window::empty(),
                powers: PowersCache::default(),
            })
        });
        if cached.key != *key || cached.nonce != *nonce {
            cached.key = *key;
            cached.nonce = *nonce;
            cached.window.clear();
        }
        cached
    }
}

/// Ranges of at least this many whole blocks go through the vector Horner loop (its powers of
/// `r` cost about as much as a few scalar blocks).
#[cfg(target_arch = "x86_64")]
const VECTOR_MIN_BLOCKS: usize = 8;

impl ChachaKey {
    /// `accelerate` false forces the portable code; true picks the fastest backend the CPU has.
    pub(crate) fn new(key: &[u8], accelerate: bool) -> Option<Self> {
        Self::with_backend(key, if accelerate { Backend::best() } else { Backend::Portable })
    }

    /// A key using `backend`, or the best one this CPU has below it. `None` unless 32 bytes.
    pub(crate) fn with_backend(key: &[u8], backend: Backend) -> Option<Self> {
        let key: [u8; 32] = key.try_into().ok()?;
        let words = core::array::from_fn(|i| u32::from_le_bytes([key[4 * i], key[4 * i + 1], key[4 * i + 2], key[4 * i + 3]]));
        Some(ChachaKey { key, words, backend: backend.min(Backend::best()) })
    }

    fn cipher(&self, nonce: &[u8; 12]) -> ChaCha20 {
        ChaCha20::new(&self.key.into(), &(*nonce).into())
    }

    pub(crate) fn poly_key(&self, nonce: &[u8; 12]) -> PolyKey {
        match self.backend {
            Backend::Portable => {
                let mut block = [0u8; 32];
                self.cipher(nonce).apply_keystream(&mut block);
                PolyKey::from_block(&block)
            }
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 | Backend::Avx512Ifma => {
                let mut window = super::chacha512::Window::empty();
                // SAFETY: `Avx512` is only chosen after `chacha512::available()` (`with_backend`
                // caps it at `Backend::best()`).
                unsafe { window.generate(&self.words, nonce, 0, 1) };
                match window.block(0) {
                    Some(block) => PolyKey::from_block(block),
                    None => unreachable!("the window was just filled from block 0"),
                }
            }
        }
    }

    /// En- or decrypts `data` at byte `offset` of the record's ciphertext and returns the
    /// Horner value (with `r`) of the blocks it touches.
    /// `lookahead`, if given, lends its cached powers of `r` (its keystream is left alone).
    pub(crate) fn crypt(
        &self,
        nonce: &[u8; 12],
        poly: &PolyKey,
        offset: usize,
        data: &mut [u8],
        direction: Direction,
        lookahead: Option<&mut Lookahead>,
    ) -> Fe {
        let mut state = Continuation::EMPTY;
        let mut poly = Some(*poly);
        let mode = match lookahead {
            Some(lookahead) => Ahead::Powers(lookahead),
            None => Ahead::Nothing,
        };
        self.run(nonce, &mut poly, offset, None, &mut state, data, direction, mode);
        state.acc
    }

    /// Continues a record's in-order processing: `data` is at byte `next` of its ciphertext and
    /// `state` holds the Horner value of the AAD block and the bytes before (nothing when
    /// `next` is 0: the AAD block starts it). `poly` is derived here if it was not yet, from
    /// the keystream batch of the record's start when `next` is 0 (no extra block with AVX-512).
    /// `lookahead` carries keystream and powers from one range to the next of the record, whose
    /// ciphertext is `ciphertext_len` bytes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn crypt_next(
        &self,
        nonce: &[u8; 12],
        poly: &mut Option<PolyKey>,
        next: usize,
        aad: u128,
        state: &mut Continuation,
        data: &mut [u8],
        direction: Direction,
        ciphertext_len: usize,
        lookahead: &mut Lookahead,
    ) {
        let aad = if next == 0 { Some(aad) } else { None };
        self.run(nonce, poly, next, aad, state, data, direction, Ahead::Stream { ciphertext_len, lookahead });
    }

    /// The work of [`Self::crypt`] and [`Self::crypt_next`]: the Horner value starts with
    /// the `aad` block (its little-endian value) if given, else continues from `state.acc`.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        nonce: &[u8; 12],
        poly: &mut Option<PolyKey>,
        offset: usize,
        aad: Option<u128>,
        state: &mut Continuation,
        data: &mut [u8],
        direction: Direction,
        lookahead: Ahead<'_>,
    ) {
        if data.is_empty() {
            return;
        }
        match self.backend {
            Backend::Portable => {
                let key = *poly.get_or_insert_with(|| self.poly_key(nonce));
                let init = aad.map_or(state.acc, |value| horner_value(Fe::ZERO, key.r, value));
                if direction == Direction::Decrypt {
                    state.acc = horner_range(key.r, offset, data, init);
                }
                let mut cipher = self.cipher(nonce);
                cipher.seek(64 + offset as u64);
                cipher.apply_keystream(data);
                if direction == Direction::Encrypt {
                    state.acc = horner_range(key.r, offset, data, init);
                }
                let _ = lookahead;
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx512` is only chosen after `chacha512::available()`.
            Backend::Avx512 => unsafe {
                self.run_avx512::<false>(nonce, poly, offset, aad, state, data, direction, lookahead)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx512Ifma` is only chosen after `chacha512::ifma_available()`.
            Backend::Avx512Ifma => unsafe {
                self.run_avx512::<true>(nonce, poly, offset, aad, state, data, direction, lookahead)
            },
        }
    }

    /// The AVX-512 backends; `IFMA` true uses the 52-bit multiply-adds for Poly1305.
    ///
    /// # Safety
    /// With `IFMA`, the CPU must have AVX-512 IFMA.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
    unsafe fn run_avx512<const IFMA: bool>(
        &self,
        nonce: &[u8; 12],
        poly: &mut Option<PolyKey>,
        offset: usize,
        aad: Option<u128>,
        state: &mut Continuation,
        data: &mut [u8],
        direction: Direction,
        lookahead: Ahead<'_>,
    ) {
        use super::chacha512::Window;
        // Keystream is generated ahead up to the record's last block (`limit`, a counter) when
        // a lookahead keeps it for the next range; only as far as `data` needs otherwise.
        let end = offset + data.len();
        let mut local_window;
        let needed = (1 + end.div_ceil(64)) as u32;
        let (window, powers, limit) = match lookahead {
            Ahead::Stream { ciphertext_len, lookahead } => {
                let cached = lookahead.for_stream(&self.words, nonce);
                (&mut cached.window, Some(&mut cached.powers), (1 + ciphertext_len.div_ceil(64)) as u32)
            }
            Ahead::Powers(lookahead) => {
                local_window = Window::empty();
                let cached = lookahead.for_stream(&self.words, nonce);
                (&mut local_window, Some(&mut cached.powers), needed)
            }
            Ahead::Nothing => {
                local_window = Window::empty();
                (&mut local_window, None, needed)
            }
        };
        let key = match *poly {
            Some(key) => key,
            None if offset == 0 => {
                // The record's first batch: block 0 is the Poly1305 key, the others keystream.
                window.generate(&self.words, nonce, 0, (limit as usize).min(16));
                match window.block(0) {
                    Some(block) => *poly.insert(PolyKey::from_block(block)),
                    None => unreachable!("the window was just filled from block 0"),
                }
            }
            None => *poly.insert(self.poly_key(nonce)),
        };
        let init = aad.map_or(state.acc, |value| horner_value(Fe::ZERO, key.r, value));
        let mut powers = powers;
        let mut hash = |data: &[u8]| {
            if IFMA {
                // SAFETY: the caller's contract: the CPU has IFMA.
                unsafe { horner_range_ifma(key.r, offset, data, init, powers.as_deref_mut()) }
            } else {
                horner_range_avx512(key.r, offset, data, init, powers.as_deref_mut())
            }
        };
        if direction == Direction::Decrypt {
            state.acc = hash(data);
        }
        // Data byte `offset` is keystream byte `offset % 64` of block `1 + offset / 64`.
        let counter = (1 + offset / 64) as u32;
        super::chacha512::xor_keystream(&self.words, nonce, counter, offset % 64, data, window, limit);
        if direction == Direction::Encrypt {
            state.acc = hash(data);
        }
    }
}

/// The Horner value continued from `init` over the blocks that `bytes` (at `offset` of the
/// padded message) touch. `init` is the value up to the block before `offset`'s, or up to
/// `offset`'s own block when `offset` is inside it (then that block's two parts add up).
fn horner_range(r: Fe, offset: usize, bytes: &[u8], init: Fe) -> Fe {
    let (mut acc, rest) = horner_lead(r, offset, bytes, init);
    let full = rest.len() / 16 * 16;
    for block in rest[..full].chunks_exact(16) {
        acc = horner_partial(acc, r, 0, block);
    }
    horner_tail(r, &rest[full..], acc)
}

/// As [`horner_range`], with the whole blocks in the vector loop when there are enough; its
/// powers of `r` from `cache` when they were made from this `r` (and left there).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn horner_range_avx512(r: Fe, offset: usize, bytes: &[u8], init: Fe, cache: Option<&mut PowersCache>) -> Fe {
    horner_range_with(r, offset, bytes, init, |acc, blocks| {
        let tag = r.normalized();
        let powers = match cache {
            Some(PowersCache { plain: Some((made_from, powers)), .. }) if *made_from == tag => *powers,
            Some(cache) => cache.plain.insert((tag, super::chacha512::Powers::new(r))).1,
            None => super::chacha512::Powers::new(r),
        };
        // SAFETY: `blocks` is a positive multiple of 16 bytes (`horner_range_with`).
        unsafe { super::chacha512::horner_blocks(&powers, acc, blocks.as_ptr(), blocks.len()) }
    })
}

/// As [`horner_range_avx512`], with 52-bit multiply-adds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,avx512ifma")]
fn horner_range_ifma(r: Fe, offset: usize, bytes: &[u8], init: Fe, cache: Option<&mut PowersCache>) -> Fe {
    horner_range_with(r, offset, bytes, init, |acc, blocks| {
        let tag = r.normalized();
        let powers = match cache {
            Some(PowersCache { ifma: Some((made_from, powers)), .. }) if *made_from == tag => *powers,
            Some(cache) => cache.ifma.insert((tag, super::chacha512::PowersIfma::new(r))).1,
            None => super::chacha512::PowersIfma::new(r),
        };
        // SAFETY: `blocks` is a positive multiple of 16 bytes (`horner_range_with`).
        unsafe { super::chacha512::horner_blocks_ifma(&powers, acc, blocks.as_ptr(), blocks.len()) }
    })
}

/// [`horner_range`] with `vector(acc, blocks)` doing the whole blocks when there are at least
/// [`VECTOR_MIN_BLOCKS`] of them (`blocks` is then a positive multiple of 16 bytes).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn horner_range_with(r: Fe, offset: usize, bytes: &[u8], init: Fe, vector: impl FnOnce(Fe, &[u8]) -> Fe) -> Fe {
    let (mut acc, rest) = horner_lead(r, offset, bytes, init);
    let full = rest.len() / 16 * 16;
    if full >= 16 * VECTOR_MIN_BLOCKS {
        acc = vector(acc, &rest[..full]);
    } else {
        for block in rest[..full].chunks_exact(16) {
            acc = horner_partial(acc, r, 0, block);
        }
    }
    horner_tail(r, &rest[full..], acc)
}

/// The part of a block before the first block boundary of `bytes` (if `offset` is inside a
/// block): added to `init` at the same place. Returns the value and the bytes after it.
#[inline]
fn horner_lead(r: Fe, offset: usize, bytes: &[u8], init: Fe) -> (Fe, &[u8]) {
    let lead = offset % 16;
    if lead == 0 {
        return (init, bytes);
    }
    let take = (16 - lead).min(bytes.len());
    // Not the block's first byte: no 2^128.
    let part = load_le(&bytes[..take]) << (8 * lead);
    (init.add(Fe::from_u128(part, false).mul(r)), &bytes[take..])
}

/// A last block starting at its boundary, shorter than 16 bytes (nothing if `rest` is empty).
#[inline]
fn horner_tail(r: Fe, rest: &[u8], acc: Fe) -> Fe {
    if rest.is_empty() {
        acc
    } else {
        horner_partial(acc, r, 0, rest)
    }
}

/// One Horner step over bytes `lead..lead + bytes.len()` of a block (zero elsewhere), with the
/// block's `2^128` when the bytes include its first one.
#[inline]
fn horner_partial(acc: Fe, r: Fe, lead: usize, bytes: &[u8]) -> Fe {
    acc.add(Fe::from_u128(load_le(bytes) << (8 * lead), lead == 0)).mul(r)
}

/// Up to 16 bytes as a little-endian number, read with (overlapping) word loads: copying
/// them into a zeroed block and reading that back stalls on store forwarding.
#[inline]
pub(crate) fn load_le(bytes: &[u8]) -> u128 {
    let n = bytes.len();
    debug_assert!(n <= 16);
    let word = |at: usize| u64::from_le_bytes([
        bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3], bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7],
    ]);
    let half = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as u64;
    // Two loads covering the bytes from both ends; where they overlap they hold the same bytes.
    match n {
        0 => 0,
        1..=3 => (bytes[0] as u128) | ((bytes[n / 2] as u128) << (8 * (n / 2))) | ((bytes[n - 1] as u128) << (8 * (n - 1))),
        4..=8 => (half(0) | (half(n - 4) << (8 * (n - 4)))) as u128,
        _ => (word(0) as u128) | ((word(n - 8) as u128) << (8 * (n - 8))),
    }
}

/// One Horner step over a whole block given as its little-endian value (the padded AAD, the
/// length block): its `2^128` is added here.
pub(crate) fn horner_value(acc: Fe, r: Fe, value: u128) -> Fe {
    acc.add(Fe::from_u128(value, true)).mul(r)
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

    /// Limbs as they are (carried here, so any `u64`s are accepted).
    pub(crate) fn from_raw(limbs: [u64; 3]) -> Fe {
        Fe(limbs).carry()
    }

    /// Limbs of the same value with `h0, h1 < 2^44` and `h2 <= 2^42`.
    pub(crate) fn normalized(self) -> [u64; 3] {
        let [h0, h1, h2] = self.carry().0;
        [h0, h1 & MASK44, h2 + (h1 >> 44)]
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
    fn load_le_reads_every_length() {
        let bytes: Vec<u8> = (1..=16u8).map(|b| b.wrapping_mul(17)).collect();
        for n in 0..=16 {
            let mut block = [0u8; 16];
            block[..n].copy_from_slice(&bytes[..n]);
            assert_eq!(load_le(&bytes[..n]), u128::from_le_bytes(block), "{n} bytes");
        }
    }

    #[test]
    fn split_blocks_sum_to_the_whole() {
        let r = Fe::from_u128(0x0ffffffc_0ffffffc_0ffffffc_0fffffff, false);
        let bytes: Vec<u8> = (0..100u8).collect();
        let whole = horner_range(r, 0, &bytes, Fe::ZERO);
        // Split at 37: the first part ends mid-block, the second starts there.
        let first = horner_range(r, 0, &bytes[..37], Fe::ZERO);
        let second = horner_range(r, 37, &bytes[37..], Fe::ZERO);
        // The first part covers blocks 0..=2 of 7; shift it by r^(6 - 2).
        let moved = first.mul(r.pow(4));
        assert_eq!(moved.add(second).tag(0), whole.tag(0));
        // Continued in order instead: the second part starts from the first's value.
        assert_eq!(horner_range(r, 37, &bytes[37..], first).tag(0), whole.tag(0));
    }
}
