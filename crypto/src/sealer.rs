//! [`RecordSealer`]: seals one record per plaintext segment, and regenerates any byte range of
//! a record it sealed before.
//!
//! The box decides a server segment's record framing once, when it first sees the segment, and
//! keeps a [`SealedRecord`] (sequence number, lengths, tag) in its record map. When the server
//! retransmits, whatever its new segmentation, the bytes of the original record are rebuilt from
//! that entry: the header and explicit nonce are deterministic, the ciphertext is the keystream
//! at the right offset XOR the retransmitted plaintext, and the tag is the stored one. The same
//! nonce never seals different bytes (a retransmission whose plaintext differs from the first
//! copy regenerates a record that will fail the peer's tag check instead).

use core::fmt;
use core::ops::Range;

use crate::aead::{AeadKey, Auth, Direction, Lookahead, Prefix};
use crate::keys::TrafficKeys;
use crate::record::{ContentType, Framing, Header, HEADER_LEN, MAX_FRAGMENT_LEN, TAG_LEN};
use crate::suite::ProtocolVersion;

/// Records per AES-GCM key before a KeyUpdate is due. RFC 8446 section 5.5 allows 2^24.5
/// full-size records; cutls updates at 2^24 to stay clear of it.
pub const AES_GCM_RECORD_LIMIT: u64 = 1 << 24;

/// What the record map keeps per sealed record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealedRecord {
    pub seq: u64,
    /// Key generation the record was sealed under (see [`RecordSealer::rekey`]).
    pub generation: u32,
    pub content_type: ContentType,
    /// Plaintext data bytes carried.
    pub data_len: usize,
    /// Whole record on the wire: header, explicit nonce, ciphertext, tag.
    pub record_len: usize,
    pub tag: [u8; TAG_LEN],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealError {
    /// More than 2^14 bytes of plaintext.
    TooLong(usize),
    /// The output buffer cannot hold the record.
    BufferTooSmall { needed: usize },
    /// Regeneration asked for a record of a key generation no longer kept.
    KeyGone { generation: u32 },
    /// Regeneration got plaintext of the wrong length for the range.
    PlaintextMismatch,
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SealError::TooLong(len) => write!(f, "{len} bytes of plaintext exceed one record"),
            SealError::BufferTooSmall { needed } => write!(f, "output buffer needs {needed} bytes"),
            SealError::KeyGone { generation } => write!(f, "key generation {generation} is no longer kept"),
            SealError::PlaintextMismatch => f.write_str("plaintext length does not match the range"),
        }
    }
}

impl std::error::Error for SealError {}

struct Generation {
    number: u32,
    aead: AeadKey,
    iv: [u8; 12],
}

/// Seals one direction's records.
pub struct RecordSealer {
    framing: Framing,
    current: Generation,
    /// The generation before the last rekey, kept for retransmissions of its records. Boxed:
    /// an expanded key is some 1.8 KB, and most sessions never rekey.
    previous: Option<Box<Generation>>,
    next_seq: u64,
    accelerate: bool,
    /// Reused by [`Self::seal_in_place`] (allocated once, on first use).
    lookahead: Lookahead,
}

impl RecordSealer {
    /// A sealer whose next record has sequence number `seq`.
    pub fn new(keys: &TrafficKeys, seq: u64) -> Self {
        Self::with_acceleration(keys, seq, true)
    }

    /// As [`Self::new`]; `accelerate` false forces the portable code (tests).
    pub fn with_acceleration(keys: &TrafficKeys, seq: u64, accelerate: bool) -> Self {
        RecordSealer {
            framing: Framing { version: keys.version, aead: keys.aead },
            current: Generation { number: 0, aead: expand(keys, accelerate), iv: *keys.iv() },
            previous: None,
            next_seq: seq,
            accelerate,
            lookahead: Lookahead::default(),
        }
    }

    pub fn framing(&self) -> Framing {
        self.framing
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Whether the AES-GCM confidentiality limit is near and a KeyUpdate must be sent.
    pub fn needs_key_update(&self) -> bool {
        self.framing.aead.is_aes_gcm() && self.next_seq >= AES_GCM_RECORD_LIMIT
    }

    /// Switches to new keys (TLS 1.3 KeyUpdate); sequence numbers restart at 0.
    pub fn rekey(&mut self, keys: &TrafficKeys) {
        let next = Generation {
            number: self.current.number.wrapping_add(1),
            aead: expand(keys, self.accelerate),
            iv: *keys.iv(),
        };
        self.previous = Some(Box::new(core::mem::replace(&mut self.current, next)));
        self.framing = Framing { version: keys.version, aead: keys.aead };
        self.next_seq = 0;
    }

    /// Record length for `data_len` bytes of plaintext.
    pub fn record_len(&self, data_len: usize) -> usize {
        data_len + self.framing.overhead()
    }

    /// Seals `plaintext` as one record of `content_type` into the front of `out`.
    pub fn seal(
        &mut self,
        content_type: ContentType,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<SealedRecord, SealError> {
        let record_len = self.record_len(plaintext.len());
        let data_start = HEADER_LEN + self.framing.explicit_nonce_len();
        let Some(target) = out.get_mut(..record_len) else {
            return Err(SealError::BufferTooSmall { needed: record_len });
        };
        target[data_start..data_start + plaintext.len()].copy_from_slice(plaintext);
        self.seal_in_place(content_type, target, plaintext.len())
    }

    /// Seals in place: `record` is exactly [`Self::record_len`]`(data_len)` bytes long with the
    /// plaintext already at its place after the header and explicit nonce. This is how the box
    /// turns a server segment into a record without a copy.
    pub fn seal_in_place(
        &mut self,
        content_type: ContentType,
        record: &mut [u8],
        data_len: usize,
    ) -> Result<SealedRecord, SealError> {
        if data_len > MAX_FRAGMENT_LEN {
            return Err(SealError::TooLong(data_len));
        }
        let record_len = self.record_len(data_len);
        if record.len() != record_len {
            return Err(SealError::BufferTooSmall { needed: record_len });
        }
        let seq = self.next_seq;
        let sealed = SealedRecord {
            seq,
            generation: self.current.number,
            content_type,
            data_len,
            record_len,
            tag: [0; TAG_LEN],
        };
        let framing = self.framing;
        let generation = &self.current;
        let lookahead = &mut self.lookahead;
        let (header, explicit) = prefix(framing, &sealed);
        record[..HEADER_LEN].copy_from_slice(&header);
        let explicit_len = framing.explicit_nonce_len();
        record[HEADER_LEN..HEADER_LEN + explicit_len].copy_from_slice(&explicit[..explicit_len]);
        let ciphertext_len = record_len - HEADER_LEN - explicit_len - TAG_LEN;
        let data_start = HEADER_LEN + explicit_len;
        if framing.version == ProtocolVersion::Tls13 {
            record[data_start + data_len] = content_type.into();
        }
        let mut key = record_key(framing, generation, &sealed);
        let body = &mut record[data_start..data_start + ciphertext_len];
        let (aad, aad_len) = framing.aad(&header, seq, ciphertext_len);
        let aad = &aad[..aad_len];
        // The whole ciphertext as one in-order range: its hash needs no moving.
        let mut prefix = Prefix::new(framing.aead);
        generation.aead.crypt_next(&mut key, &mut prefix, aad, ciphertext_len, body, Direction::Encrypt, lookahead);
        let tag = generation.aead.tag_with(&mut key, aad, ciphertext_len, &prefix, Auth::zero(framing.aead));
        record[record_len - TAG_LEN..].copy_from_slice(&tag);
        self.next_seq += 1;
        Ok(SealedRecord { tag, ..sealed })
    }

    /// Rebuilds bytes `range` (offsets within the record) of a record sealed before into `out`.
    /// `data` is the plaintext of the data bytes that `range` covers, in order.
    pub fn regenerate(
        &self,
        sealed: &SealedRecord,
        range: Range<usize>,
        data: &[u8],
        out: &mut [u8],
    ) -> Result<(), SealError> {
        let generation = if sealed.generation == self.current.number {
            &self.current
        } else {
            match &self.previous {
                Some(previous) if previous.number == sealed.generation => previous,
                _ => return Err(SealError::KeyGone { generation: sealed.generation }),
            }
        };
        let framing = self.framing;
        let explicit_len = framing.explicit_nonce_len();
        let data_start = HEADER_LEN + explicit_len;
        let data_range = data_start..data_start + sealed.data_len;
        let covered = range.start.max(data_range.start)..range.end.min(data_range.end);
        if data.len() != covered.len() || range.end > sealed.record_len || out.len() < range.len() {
            return Err(SealError::PlaintextMismatch);
        }
        let (header, explicit) = prefix(framing, sealed);
        let ciphertext_len = sealed.record_len - data_start - TAG_LEN;
        let mut key = record_key(framing, generation, sealed);
        // Plaintext of every ciphertext position in the range: data from the caller, then the
        // TLS 1.3 inner type.
        let mut index = 0;
        let mut offset = range.start;
        while offset < range.end {
            let slot = &mut out[offset - range.start];
            if offset < HEADER_LEN {
                *slot = header[offset];
                offset += 1;
                index += 1;
            } else if offset < data_start {
                *slot = explicit[offset - HEADER_LEN];
                offset += 1;
                index += 1;
            } else if offset < data_start + ciphertext_len {
                let run_end = range.end.min(data_start + ciphertext_len);
                let run = &mut out[index..index + (run_end - offset)];
                for (i, byte) in run.iter_mut().enumerate() {
                    let position = offset + i;
                    *byte = if position < data_range.end {
                        data[position - covered.start]
                    } else {
                        u8::from(sealed.content_type)
                    };
                }
                let _: Auth = generation.aead.crypt_range(&mut key, ciphertext_len, offset - data_start, run, Direction::Encrypt);
                index += run_end - offset;
                offset = run_end;
            } else {
                *slot = sealed.tag[offset - data_start - ciphertext_len];
                offset += 1;
                index += 1;
            }
        }
        Ok(())
    }
}

fn prefix(framing: Framing, sealed: &SealedRecord) -> ([u8; HEADER_LEN], [u8; 8]) {
    let outer_type = match framing.version {
        ProtocolVersion::Tls13 => ContentType::ApplicationData,
        ProtocolVersion::Tls12 => sealed.content_type,
    };
    let header = Header { content_type: outer_type, version: 0x0303, body_len: sealed.record_len - HEADER_LEN };
    // TLS 1.2 GCM explicit nonce: the sequence number, as most stacks do (it must never repeat).
    (header.encode(), sealed.seq.to_be_bytes())
}

fn record_key(framing: Framing, generation: &Generation, sealed: &SealedRecord) -> crate::aead::RecordKey {
    let explicit = sealed.seq.to_be_bytes();
    let explicit = (framing.explicit_nonce_len() > 0).then_some(&explicit);
    generation.aead.record_key(framing.nonce(&generation.iv, sealed.seq, explicit))
}

fn expand(keys: &TrafficKeys, accelerate: bool) -> AeadKey {
    match AeadKey::new(keys.aead, keys.key(), accelerate) {
        Some(key) => key,
        None => unreachable!("TrafficKeys has the algorithm's key length"),
    }
}
