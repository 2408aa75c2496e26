//! [`RecordOpener`]: decrypts one direction's records in place, chunk by chunk.
//!
//! The caller hands over byte ranges of the record stream (TCP payloads) with their stream
//! offsets, in whatever order and segmentation they arrive. The opener finds record boundaries
//! from the headers, decrypts each chunk where it lies, adds its MAC contribution (see
//! [`crate::aead`]) and verifies a record's tag once all of its bytes have been seen. Nothing
//! but a record's held-back bytes and a few header, nonce and tag bytes is stored.
//!
//! What it tells the caller, per call:
//! - [`Release`]s: plaintext that may go to the peer now, at its offset in the plaintext stream,
//!   either in place in the chunk or copied from the held-back bytes of a verified record;
//! - a [`Stop`] when a record completes ([`RecordDone`], with the inner content type and, for
//!   records held whole, their plaintext) or when the rest of the chunk cannot be taken now
//!   ([`Refusal`]: the caller drops it and lets TCP send it again);
//! - an [`OpenError`] when the stream cannot go on (a failed tag, a malformed record).
//!
//! Release policy (see DESIGN.md, "Hold-back"): in [`ReleaseMode::CutThrough`] a record's last
//! data byte and TLS 1.3's inner type byte are held until the tag verifies, and records short
//! enough to be control messages (TLS 1.3 KeyUpdate, alerts) are held whole, because their type
//! is only known at the end. In [`ReleaseMode::VerifyFirst`] every record is held whole. Records
//! whose type is not application data are never released; the caller gets their plaintext.
//!
//! Not supported: TLS 1.3 padding that reaches back into bytes already released (an anomaly,
//! reported as [`OpenError::PaddingIntoReleased`]); a retransmission whose bytes differ from the
//! first copy is decrypted and released as it is, but only the first copy is authenticated.

use core::fmt;
use core::ops::Range;
use std::collections::VecDeque;

use crate::aead::{tags_equal, AeadKey, Auth, Direction, Lookahead, Prefix, RecordKey};
use crate::keys::TrafficKeys;
use crate::record::{ContentType, Framing, Header, HeaderError, EXPLICIT_NONCE_LEN, HEADER_LEN, TAG_LEN};
use crate::suite::ProtocolVersion;

/// When decrypted bytes may leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseMode {
    /// Release plaintext as it is decrypted; hold each record's final bytes until its tag verifies.
    CutThrough,
    /// Hold each record whole until its tag verifies.
    VerifyFirst,
}

/// Limits that bound an opener's memory.
#[derive(Clone, Copy, Debug)]
pub struct OpenerConfig {
    pub mode: ReleaseMode,
    /// Records tracked at once (incomplete ones, plus completed ones kept for retransmissions).
    pub max_records: usize,
    /// Keep completed records until [`RecordOpener::acknowledge`], so retransmitted bytes of
    /// them can be decrypted again. Offline readers that never need that turn it off.
    pub keep_completed: bool,
    /// Records whose ciphertext is at most this long are held whole in cut-through mode.
    pub hold_whole_below: usize,
}

impl Default for OpenerConfig {
    fn default() -> Self {
        OpenerConfig { mode: ReleaseMode::CutThrough, max_records: 64, keep_completed: true, hold_whole_below: 32 }
    }
}

/// Plaintext that may be delivered now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    /// Offset of the first byte in the application-data plaintext stream.
    pub plaintext_offset: u64,
    pub source: ReleaseSource,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReleaseSource {
    /// Bytes of the chunk passed to this call, decrypted in place.
    Chunk(Range<usize>),
    /// Bytes copied to [`OpenOutput::held`].
    Held(Range<usize>),
}

/// Reusable output buffers (cleared by each call, capacity kept: no allocation per chunk once
/// they have grown to a record).
#[derive(Debug, Default)]
pub struct OpenOutput {
    pub releases: Vec<Release>,
    pub held: Vec<u8>,
    /// Bytes of the chunk that belong to records already acknowledged and forgotten.
    pub stale_bytes: usize,
    /// Bytes of the chunk that had been seen before (retransmissions).
    pub duplicate_bytes: usize,
}

impl OpenOutput {
    fn clear(&mut self) {
        self.releases.clear();
        self.held.clear();
        self.stale_bytes = 0;
        self.duplicate_bytes = 0;
    }

    /// The bytes of a release, given the chunk it was produced for.
    pub fn bytes<'a>(&'a self, chunk: &'a [u8], release: &Release) -> &'a [u8] {
        match &release.source {
            ReleaseSource::Chunk(range) => &chunk[range.clone()],
            ReleaseSource::Held(range) => &self.held[range.clone()],
        }
    }
}

/// The result of one call: how much of the chunk was taken and why the call stopped early.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub consumed: usize,
    pub stop: Option<Stop>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// A record completed and verified with its last byte at `consumed - 1`. Call again with the
    /// rest of the chunk (after rekeying, if the record asks for it).
    Record(RecordDone),
    /// The bytes from `consumed` on cannot be taken now.
    Refused(Refusal),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordDone {
    pub seq: u64,
    /// Stream offset of the record's header, and the record's length with header and tag.
    pub stream_offset: u64,
    pub record_len: usize,
    /// The inner content type (TLS 1.3) or the header's (TLS 1.2).
    pub content_type: ContentType,
    /// Application data bytes of the record (0 for other types).
    pub data_len: usize,
    /// For records that were not application data: their plaintext in [`OpenOutput::held`], or
    /// `None` when it was too long to hold in this mode.
    pub plaintext: Option<Range<usize>>,
    /// TLS 1.3 change_cipher_spec records are not protected and carry no sequence number.
    pub unprotected: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The bytes lie beyond a record header not yet seen.
    BeyondUnknownHeader,
    /// Too many records tracked at once.
    TooManyRecords,
    /// A TLS 1.2 GCM record's explicit nonce has not been seen yet.
    NonceUnknown,
    /// An earlier record held whole has not verified yet (it may change the keys).
    WaitingForEarlierRecord,
    /// The record already has as many separate pieces as the opener tracks.
    TooFragmented,
}

/// Errors after which the stream cannot be followed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpenError {
    BadHeader { offset: u64, error: HeaderError },
    /// A record shorter than the framing's minimum.
    RecordTooShort { seq: u64, body_len: usize },
    /// A record whose plaintext would exceed the protocol's limit (a `record_overflow` alert).
    RecordOverflow { seq: u64, body_len: usize },
    TagMismatch { seq: u64 },
    /// A TLS 1.3 record with no content type (all zeros).
    NoContentType { seq: u64 },
    /// TLS 1.3 padding reached bytes that were already released.
    PaddingIntoReleased { seq: u64 },
    /// Bytes of a record that turned out not to be application data were already released.
    NonDataReleased { seq: u64, content_type: ContentType },
    /// A record ended shorter than predicted after later records had already released bytes.
    PlaintextShifted { seq: u64 },
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::BadHeader { offset, error } => write!(f, "bad record header at stream offset {offset}: {error}"),
            OpenError::RecordTooShort { seq, body_len } => write!(f, "record {seq} is too short ({body_len} bytes)"),
            OpenError::RecordOverflow { seq, body_len } => write!(f, "record {seq} is too long ({body_len} bytes)"),
            OpenError::TagMismatch { seq } => write!(f, "tag failure at record {seq}"),
            OpenError::NoContentType { seq } => write!(f, "record {seq} has no inner content type"),
            OpenError::PaddingIntoReleased { seq } => write!(f, "record {seq}: padding reaches released bytes"),
            OpenError::NonDataReleased { seq, content_type } => {
                write!(f, "record {seq} was {content_type}, but some bytes were already released")
            }
            OpenError::PlaintextShifted { seq } => write!(f, "record {seq} shifted plaintext already released"),
        }
    }
}

impl std::error::Error for OpenError {}

/// Opens one direction's records.
pub struct RecordOpener {
    framing: Framing,
    config: OpenerConfig,
    aead: AeadKey,
    iv: [u8; 12],
    /// Sequence number of the next record whose header is not yet known.
    next_seq: u64,
    /// Stream offset of that header.
    next_header: u64,
    /// Header bytes seen so far at `next_header`, and which of them.
    header: [u8; HEADER_LEN],
    header_seen: u8,
    /// Plaintext offset at which the next record's data will start.
    next_plaintext: u64,
    /// Boxed, so that records are not moved in and out of the deque (a record is some 500
    /// bytes); forgotten ones go to `spare_records` and are reused.
    records: VecDeque<Box<Record>>,
    /// Set when the next record header starts a new key generation (see [`Self::rekey`]).
    key_generation: u32,
    accelerate: bool,
    /// Forgotten records, reused by [`Self::start_record`].
    spare_records: Vec<Box<Record>>,
    /// Keystream and key material carried from one in-order chunk to the next.
    lookahead: Lookahead,
}

/// Spare records kept for reuse.
const SPARES: usize = 4;
/// The largest plaintext buffer a spare record keeps (requests and control records fit).
const SPARE_HELD_LIMIT: usize = 2048;

struct Record {
    seq: u64,
    start: u64,
    header: [u8; HEADER_LEN],
    outer_type: ContentType,
    body_len: usize,
    /// TLS 1.3 change_cipher_spec: skipped, not decrypted.
    unprotected: bool,
    key: Option<RecordKey>,
    explicit_nonce: [u8; EXPLICIT_NONCE_LEN],
    /// Body bytes already seen (relative to the body start).
    seen: Intervals,
    /// Ciphertext taken in order from its start, fresh (see [`crate::aead::Prefix`]).
    prefix: Prefix,
    /// The MAC contributions of everything else.
    mac: Auth,
    tag: [u8; TAG_LEN],
    plaintext_start: u64,
    /// Bytes of ciphertext at and past this offset are held, not released, until verification.
    hold_from: usize,
    /// The record's plaintext, indexed by ciphertext offset: the first copy of each byte (the
    /// one the tag authenticates), whether it was released early or held. A retransmission of
    /// a verified record is released from here, never from the retransmitted bytes, which no
    /// tag checks again.
    held: Vec<u8>,
    /// Whether any byte of the record was released before verification.
    released_early: bool,
    outcome: Option<Verified>,
}

#[derive(Clone, Copy)]
struct Verified {
    content_type: ContentType,
    data_len: usize,
}

impl Record {
    /// A record to be filled in by [`RecordOpener::start_record`].
    fn blank(algorithm: crate::suite::AeadAlgorithm) -> Record {
        Record {
            seq: 0,
            start: 0,
            header: [0; HEADER_LEN],
            outer_type: ContentType::ApplicationData,
            body_len: 0,
            unprotected: false,
            key: None,
            explicit_nonce: [0; EXPLICIT_NONCE_LEN],
            seen: Intervals::default(),
            prefix: Prefix::new(algorithm),
            mac: Auth::zero(algorithm),
            tag: [0; TAG_LEN],
            plaintext_start: 0,
            hold_from: 0,
            held: Vec::new(),
            released_early: false,
            outcome: None,
        }
    }

    fn end(&self) -> u64 {
        self.start + (HEADER_LEN + self.body_len) as u64
    }
}

impl RecordOpener {
    /// An opener whose next record starts at `stream_offset` with sequence number `seq`.
    pub fn new(keys: &TrafficKeys, seq: u64, stream_offset: u64, config: OpenerConfig) -> Self {
        Self::with_acceleration(keys, seq, stream_offset, config, true)
    }

    /// As [`Self::new`]; `accelerate` false forces the portable code (tests).
    pub fn with_acceleration(
        keys: &TrafficKeys,
        seq: u64,
        stream_offset: u64,
        config: OpenerConfig,
        accelerate: bool,
    ) -> Self {
        let aead = expand(keys, accelerate);
        RecordOpener {
            framing: Framing { version: keys.version, aead: keys.aead },
            config,
            aead,
            iv: *keys.iv(),
            next_seq: seq,
            next_header: stream_offset,
            header: [0; HEADER_LEN],
            header_seen: 0,
            next_plaintext: 0,
            records: VecDeque::with_capacity(config.max_records.min(1024)),
            key_generation: 0,
            accelerate,
            spare_records: Vec::new(),
            lookahead: Lookahead::default(),
        }
    }

    /// The stream offset where the next unknown record header starts.
    pub fn next_header_offset(&self) -> u64 {
        self.next_header
    }

    /// The first stream offset a chunk cannot start at and still be placed, in part at least:
    /// the end of the next unknown record header. A chunk that starts inside that header (its
    /// first bytes lost) fills in the header bytes it carries; one that starts past it is
    /// refused ([`Refusal::BeyondUnknownHeader`]).
    pub fn placeable_before(&self) -> u64 {
        self.next_header + HEADER_LEN as u64
    }

    /// The record sequence number the next record header will get.
    pub fn next_record_seq(&self) -> u64 {
        self.next_seq
    }

    /// The plaintext offset the next record's data will start at.
    pub fn next_plaintext_offset(&self) -> u64 {
        self.next_plaintext
    }

    /// Records tracked now.
    pub fn tracked_records(&self) -> usize {
        self.records.len()
    }

    /// Stream offset of the first record not yet verified (or of the next header): where a
    /// reader that gives up would report a gap.
    pub fn first_incomplete_offset(&self) -> u64 {
        self.records.iter().find(|record| record.outcome.is_none()).map_or(self.next_header, |record| record.start)
    }

    /// Where a peer's acknowledgement of the plaintext before `plaintext` falls in the record
    /// stream: past every record whose data it covers entirely (tag included), or inside a
    /// record just past the last ciphertext byte that carries acknowledged plaintext. Records
    /// already forgotten ([`Self::acknowledge`]) count as acknowledged.
    pub fn ciphertext_for_plaintext_ack(&self, plaintext: u64) -> u64 {
        let mut acked = self.records.front().map_or(self.next_header, |record| record.start);
        for record in &self.records {
            let data_len = match record.outcome {
                Some(verified) => verified.data_len as u64,
                None => break_even(record, self.framing),
            };
            if record.outcome.is_some() && plaintext >= record.plaintext_start + data_len {
                acked = record.end();
                continue;
            }
            if plaintext > record.plaintext_start {
                let data_start = record.start + (HEADER_LEN + self.framing.explicit_nonce_len()) as u64;
                acked = data_start + (plaintext - record.plaintext_start);
            }
            break;
        }
        acked
    }

    /// The stream range that carried the plaintext range `start..end` (a peer's selective
    /// acknowledgement of released plaintext), or `None` if the opener no longer tracks it.
    /// Inside a record the mapping is exact (a record's body bytes carry its plaintext in
    /// order, after the header and TLS 1.2's explicit nonce), so a SACK for part of a record
    /// tells the sender which of its segments arrived; a range that ends with a verified
    /// record's data takes in its tag. The header before the first byte is left out: a sender
    /// that resends it costs the opener a duplicate, never a hole.
    pub fn ciphertext_range_for_plaintext(&self, start: u64, end: u64) -> Option<(u64, u64)> {
        if start >= end {
            return None;
        }
        let data_offset = (HEADER_LEN + self.framing.explicit_nonce_len()) as u64;
        let mut first = None;
        for record in &self.records {
            let data_len = match record.outcome {
                Some(verified) => verified.data_len as u64,
                None => break_even(record, self.framing),
            };
            let (data_start, data_end) = (record.plaintext_start, record.plaintext_start + data_len);
            let body = record.start + data_offset;
            if first.is_none() && start >= data_start && start < data_end {
                first = Some(body + (start - data_start));
            }
            if let Some(left) = first {
                if end > data_start && end <= data_end {
                    let right = if record.outcome.is_some() && end == data_end { record.end() } else { body + (end - data_start) };
                    return (left < right).then_some((left, right));
                }
            }
        }
        None
    }

    /// The end of the stream bytes seen without a gap from `from` (at least `from`): what a
    /// receiver holding the opener's records may acknowledge. It runs through records not yet
    /// verified (their bytes are held here) and through verified records that end at or
    /// before `verified_until`; it stops at the start of a verified record past that, whose
    /// plaintext has left and is no longer here.
    pub fn contiguous_end(&self, from: u64, verified_until: u64) -> u64 {
        let mut end = from;
        for record in &self.records {
            let record_end = record.end();
            if record_end <= end {
                continue;
            }
            if record.start > end {
                return end;
            }
            if record.outcome.is_some() {
                if record_end > verified_until {
                    return end;
                }
                end = record_end;
                continue;
            }
            // A record is tracked once its header is whole; then its body's seen ranges.
            let body_start = record.start + HEADER_LEN as u64;
            end = end.max(body_start);
            for &(a, b) in record.seen.ranges() {
                let (a, b) = (body_start + a as u64, body_start + b as u64);
                if a > end {
                    return end;
                }
                end = end.max(b);
            }
            if end < record_end {
                return end;
            }
        }
        if end == self.next_header {
            end += self.header_seen.trailing_ones() as u64;
        }
        end
    }

    /// Whether every byte seen so far belongs to verified records.
    pub fn is_idle(&self) -> bool {
        self.header_seen == 0 && self.records.iter().all(|record| record.outcome.is_some())
    }

    /// New keys for every record after the last completed one, with sequence numbers from 0
    /// (TLS 1.3 KeyUpdate, or the switch from handshake to application keys). Records already
    /// started after that point are forgotten: their bytes must be delivered again.
    pub fn rekey(&mut self, keys: &TrafficKeys) {
        self.aead = expand(keys, self.accelerate);
        self.iv = *keys.iv();
        self.framing = Framing { version: keys.version, aead: keys.aead };
        self.key_generation += 1;
        let keep = self.records.iter().position(|record| record.outcome.is_none()).unwrap_or(self.records.len());
        if keep < self.records.len() {
            let first_dropped = &self.records[keep];
            self.next_header = first_dropped.start;
            self.next_plaintext = first_dropped.plaintext_start;
            while self.records.len() > keep {
                if let Some(record) = self.records.pop_back() {
                    self.retire(record);
                }
            }
            self.header_seen = 0;
        }
        self.next_seq = 0;
    }

    /// The caller no longer needs bytes before `stream_offset`: forget completed records that
    /// end there.
    pub fn acknowledge(&mut self, stream_offset: u64) {
        while let Some(record) = self.records.front() {
            if record.outcome.is_some() && record.end() <= stream_offset {
                if let Some(record) = self.records.pop_front() {
                    self.retire(record);
                }
            } else {
                break;
            }
        }
    }

    /// Processes `chunk`, the stream bytes at `offset`, in place. See the module docs.
    pub fn open(&mut self, offset: u64, chunk: &mut [u8], out: &mut OpenOutput) -> Result<Step, OpenError> {
        out.clear();
        self.open_more(offset, chunk, 0, out)
    }

    /// Like [`Self::open`] but keeps `out`'s earlier releases (for callers that continue a
    /// chunk after a stop); `start` is where in `chunk` to continue.
    pub fn open_more(
        &mut self,
        offset: u64,
        chunk: &mut [u8],
        start: usize,
        out: &mut OpenOutput,
    ) -> Result<Step, OpenError> {
        let mut position = start;
        while position < chunk.len() {
            let at = offset + position as u64;
            let oldest = self.records.front().map_or(self.next_header, |record| record.start);
            if at < oldest {
                let skip = ((oldest - at) as usize).min(chunk.len() - position);
                out.stale_bytes += skip;
                position += skip;
                continue;
            }
            if let Some(index) = self.records.iter().position(|record| at < record.end()) {
                let end = self.records[index].end();
                let take = ((end - at) as usize).min(chunk.len() - position);
                match self.record_bytes(index, at, chunk, position..position + take, out)? {
                    Progress::Refused(refusal) => {
                        return Ok(Step { consumed: position, stop: Some(Stop::Refused(refusal)) });
                    }
                    Progress::Taken => position += take,
                    Progress::Completed(done) => {
                        position += take;
                        if !self.config.keep_completed {
                            self.forget_completed();
                        }
                        return Ok(Step { consumed: position, stop: Some(Stop::Record(done)) });
                    }
                }
                continue;
            }
            // Past every known record: header bytes of the next one.
            let into_header = at - self.next_header;
            if into_header >= HEADER_LEN as u64 {
                return Ok(Step { consumed: position, stop: Some(Stop::Refused(Refusal::BeyondUnknownHeader)) });
            }
            let into_header = into_header as usize;
            if into_header == 0 && self.header_seen == 0 && chunk.len() - position >= HEADER_LEN {
                // The whole header in this chunk (the common case): parse it from here.
                let mut header = [0u8; HEADER_LEN];
                header.copy_from_slice(&chunk[position..position + HEADER_LEN]);
                self.header = header;
                self.header_seen = 0b1_1111;
                if self.records.len() >= self.config.max_records {
                    return Ok(Step { consumed: position, stop: Some(Stop::Refused(Refusal::TooManyRecords)) });
                }
                self.start_record(header)?;
                position += HEADER_LEN;
                continue;
            }
            let take = (HEADER_LEN - into_header).min(chunk.len() - position);
            for i in 0..take {
                let bit = 1u8 << (into_header + i);
                if self.header_seen & bit == 0 {
                    self.header[into_header + i] = chunk[position + i];
                    self.header_seen |= bit;
                } else {
                    out.duplicate_bytes += 1;
                }
            }
            if self.header_seen == 0b1_1111 {
                if self.records.len() >= self.config.max_records {
                    return Ok(Step { consumed: position, stop: Some(Stop::Refused(Refusal::TooManyRecords)) });
                }
                self.start_record(self.header)?;
            }
            // Otherwise the chunk ended inside the header: the rest comes with a later chunk.
            position += take;
        }
        Ok(Step { consumed: chunk.len(), stop: None })
    }

    fn forget_completed(&mut self) {
        while self.records.front().is_some_and(|record| record.outcome.is_some()) {
            if let Some(record) = self.records.pop_front() {
                self.retire(record);
            }
        }
    }

    /// A record no longer tracked: keep its allocation for the next one.
    fn retire(&mut self, mut record: Box<Record>) {
        if self.spare_records.len() < SPARES {
            if record.held.capacity() > SPARE_HELD_LIMIT {
                // A large record's plaintext is not kept for the next one: an idle session
                // would otherwise hold up to SPARES full records of memory.
                record.held = Vec::new();
            }
            self.spare_records.push(record);
        }
    }

    /// The header at `next_header` is complete (`header_bytes`): track its record.
    fn start_record(&mut self, header_bytes: [u8; HEADER_LEN]) -> Result<(), OpenError> {
        let start = self.next_header;
        let header = Header::parse(&header_bytes, self.framing.version).map_err(|error| match error {
            HeaderError::TooLong(body_len) => OpenError::RecordOverflow { seq: self.next_seq, body_len },
            error => OpenError::BadHeader { offset: start, error },
        })?;
        let unprotected =
            self.framing.version == ProtocolVersion::Tls13 && header.content_type == ContentType::ChangeCipherSpec;
        if header.body_len < self.framing.min_body_len() || (unprotected && header.body_len == 0) {
            return Err(OpenError::RecordTooShort { seq: self.next_seq, body_len: header.body_len });
        }
        if !unprotected && header.body_len > self.framing.max_body_len() {
            return Err(OpenError::RecordOverflow { seq: self.next_seq, body_len: header.body_len });
        }
        let ciphertext_len = header.body_len.saturating_sub(self.framing.explicit_nonce_len() + TAG_LEN);
        // Predicted application data: all of it for TLS 1.2 application data, all but the inner
        // type for TLS 1.3 (corrected at verification if the record is padded or not data).
        let predicted_data = match (unprotected, self.framing.version, header.content_type) {
            (true, _, _) => 0,
            (false, ProtocolVersion::Tls13, _) => ciphertext_len - 1,
            (false, ProtocolVersion::Tls12, ContentType::ApplicationData) => ciphertext_len,
            (false, ProtocolVersion::Tls12, _) => 0,
        };
        let hold_from = self.hold_from(header.content_type, ciphertext_len);
        let key = if self.framing.explicit_nonce_len() == 0 && !unprotected {
            Some(self.aead.record_key(self.framing.nonce(&self.iv, self.next_seq, None)))
        } else {
            None
        };
        // A spare record is overwritten field by field (no large move); its arrays need no
        // clearing beyond their lengths.
        let mut record = match self.spare_records.pop() {
            Some(record) => record,
            None => Box::new(Record::blank(self.framing.aead)),
        };
        let mut held = core::mem::take(&mut record.held);
        held.clear();
        held.resize(ciphertext_len, 0);
        let fields = &mut *record;
        fields.seq = self.next_seq;
        fields.start = start;
        fields.header = header_bytes;
        fields.outer_type = header.content_type;
        fields.body_len = header.body_len;
        fields.unprotected = unprotected;
        fields.key = key;
        fields.explicit_nonce = [0; EXPLICIT_NONCE_LEN];
        fields.seen.clear();
        fields.prefix = Prefix::new(self.framing.aead);
        fields.mac = Auth::zero(self.framing.aead);
        fields.tag = [0; TAG_LEN];
        fields.plaintext_start = self.next_plaintext;
        fields.hold_from = hold_from;
        fields.held = held;
        fields.released_early = false;
        fields.outcome = None;
        self.records.push_back(record);
        if !unprotected {
            self.next_seq += 1;
        }
        self.next_header = start + (HEADER_LEN + header.body_len) as u64;
        self.next_plaintext += predicted_data as u64;
        self.header_seen = 0;
        Ok(())
    }

    /// First ciphertext offset of a record that is held rather than released early.
    fn hold_from(&self, outer_type: ContentType, ciphertext_len: usize) -> usize {
        let whole = self.config.mode == ReleaseMode::VerifyFirst
            || ciphertext_len <= self.config.hold_whole_below
            || (self.framing.version == ProtocolVersion::Tls12 && outer_type != ContentType::ApplicationData);
        if whole {
            0
        } else {
            match self.framing.version {
                // The last data byte and the inner content type.
                ProtocolVersion::Tls13 => ciphertext_len.saturating_sub(2),
                ProtocolVersion::Tls12 => ciphertext_len.saturating_sub(1),
            }
        }
    }

    /// Bytes `range` of `chunk` (stream offset `at`) inside record `index`.
    // Inlined (one caller): the result, a record's outcome, then stays out of memory.
    #[inline(always)]
    fn record_bytes(
        &mut self,
        index: usize,
        at: u64,
        chunk: &mut [u8],
        range: Range<usize>,
        out: &mut OpenOutput,
    ) -> Result<Progress, OpenError> {
        let framing = self.framing;
        let explicit_len = framing.explicit_nonce_len();
        // An earlier record held whole and not yet verified may be a KeyUpdate (TLS 1.3): wait
        // for it. In verify-first mode, where every record is held whole, wait for every earlier
        // record in TLS 1.2 too: a record's plaintext offset follows from the earlier records'
        // headers, which only their tags authenticate (a corrupted content type would shift
        // where a later, genuine record's bytes are delivered).
        let waits = |r: &Record| r.outcome.is_none() && r.hold_from == 0 && !r.unprotected;
        let earlier_waits = || self.records.iter().take(index).any(|r| waits(r));
        let must_wait = match framing.version {
            ProtocolVersion::Tls13 => earlier_waits(),
            ProtocolVersion::Tls12 => self.config.mode == ReleaseMode::VerifyFirst && earlier_waits(),
        };
        if must_wait {
            let record = &self.records[index];
            if at + range.len() as u64 > record.start + HEADER_LEN as u64 {
                return Ok(Progress::Refused(Refusal::WaitingForEarlierRecord));
            }
        }
        let record: &mut Record = &mut self.records[index];
        let mut relative = (at - record.start) as usize;
        // The common case, a stream in order: body bytes that continue exactly what was seen of
        // a record not yet verified, past its explicit nonce, and continue its in-order prefix
        // (or are only tag bytes). The same steps as the general path below, without its
        // bookkeeping for overlaps.
        if relative >= HEADER_LEN + explicit_len
            && record.outcome.is_none()
            && !record.unprotected
            && record.seen.is_prefix(relative - HEADER_LEN)
        {
            let body = relative - HEADER_LEN;
            let body_end = body + range.len();
            let ciphertext_len = record.body_len - explicit_len - TAG_LEN;
            let ct = body - explicit_len;
            let ct_end = (body_end - explicit_len).min(ciphertext_len);
            if let Some(key) = record.key.as_mut().filter(|_| ct >= ct_end || ct == record.prefix.next()) {
                record.seen.extend_prefix(body_end);
                if ct < ct_end {
                    let (aad, aad_len) = framing.aad(&record.header, record.seq, ciphertext_len);
                    let bytes = &mut chunk[range.start..range.start + (ct_end - ct)];
                    let (prefix, lookahead) = (&mut record.prefix, &mut self.lookahead);
                    self.aead.crypt_next(key, prefix, &aad[..aad_len], ciphertext_len, bytes, Direction::Decrypt, lookahead);
                    let release_end = ct_end.min(record.hold_from).max(ct);
                    if release_end > ct {
                        record.released_early = true;
                        out.releases.push(Release {
                            plaintext_offset: record.plaintext_start + ct as u64,
                            source: ReleaseSource::Chunk(range.start..range.start + (release_end - ct)),
                        });
                    }
                    // All new bytes: the first copy of each.
                    record.held[ct..ct_end].copy_from_slice(&chunk[range.start..range.start + (ct_end - ct)]);
                }
                let tag_start = explicit_len + ciphertext_len;
                if body_end > tag_start {
                    let from = body.max(tag_start);
                    record.tag[from - tag_start..body_end - tag_start]
                        .copy_from_slice(&chunk[range.start + (from - body)..range.end]);
                }
                if body_end == record.body_len {
                    return self.verify(index, out).map(Progress::Completed);
                }
                return Ok(Progress::Taken);
            }
        }
        let mut position = range.start;
        // Header bytes: known already (the record exists because its header was complete).
        if relative < HEADER_LEN {
            let skip = (HEADER_LEN - relative).min(range.len());
            out.duplicate_bytes += skip;
            position += skip;
            relative += skip;
        }
        if record.unprotected && position < range.end {
            let body = relative - HEADER_LEN;
            let body_end = body + (range.end - position);
            if record.outcome.is_some() {
                out.duplicate_bytes += body_end - body;
                return Ok(Progress::Taken);
            }
            if !record.seen.fits(body, body_end) {
                return Ok(Progress::Refused(Refusal::TooFragmented));
            }
            record.seen.insert(body, body_end);
            if record.seen.covers(record.body_len) {
                record.outcome = Some(Verified { content_type: ContentType::ChangeCipherSpec, data_len: 0 });
                return Ok(Progress::Completed(RecordDone {
                    seq: record.seq,
                    stream_offset: record.start,
                    record_len: HEADER_LEN + record.body_len,
                    content_type: ContentType::ChangeCipherSpec,
                    data_len: 0,
                    plaintext: None,
                    unprotected: true,
                }));
            }
            return Ok(Progress::Taken);
        }
        if position == range.end {
            // Only header bytes, which were known: nothing changes.
            return Ok(Progress::Taken);
        }
        let ciphertext_len = record.body_len - explicit_len - TAG_LEN;
        // The TLS 1.2 GCM explicit nonce: stored (first copy wins) until complete.
        let body = relative - HEADER_LEN;
        if body < explicit_len && position < range.end {
            let take = (explicit_len - body).min(range.end - position);
            if record.outcome.is_none() {
                if !record.seen.fits(body, body + take) {
                    return Ok(Progress::Refused(Refusal::TooFragmented));
                }
                let new = record.seen.insert(body, body + take);
                out.duplicate_bytes += take - new;
                for &(a, b) in record.seen.last_insert_gaps() {
                    let (a, b) = (a as usize, b as usize);
                    record.explicit_nonce[a..b].copy_from_slice(&chunk[position + (a - body)..position + (b - body)]);
                }
                if record.key.is_none() && record.seen.covers_range(0, explicit_len) {
                    let nonce = framing.nonce(&self.iv, record.seq, Some(&record.explicit_nonce));
                    record.key = Some(self.aead.record_key(nonce));
                }
            } else {
                out.duplicate_bytes += take;
            }
            position += take;
            relative += take;
        }
        if position < range.end {
            // Ciphertext and tag, entered into the seen set as one range.
            let body = relative - HEADER_LEN;
            let body_end = body + (range.end - position);
            let ct = body - explicit_len;
            let ct_end = (body_end - explicit_len).min(ciphertext_len).max(ct.min(ciphertext_len));
            let ct_take = ct_end.saturating_sub(ct);
            let mut key = match record.key {
                Some(key) => key,
                None if ct_take > 0 => return Ok(Progress::Refused(Refusal::NonceUnknown)),
                // Only tag bytes: no key needed to store them.
                None => self.aead.record_key([0; 12]),
            };
            match record.outcome {
                Some(verified) => {
                    // A retransmission of a verified record: its data delivered again, from the
                    // verified plaintext. The retransmitted bytes are not looked at: no tag
                    // would check them, and a corrupted copy would reach the peer as it was.
                    out.duplicate_bytes += body_end - body;
                    if ct_take > 0 && verified.content_type == ContentType::ApplicationData && ct < verified.data_len {
                        let data_end = ct_end.min(verified.data_len);
                        let start = out.held.len();
                        out.held.extend_from_slice(&record.held[ct..data_end]);
                        out.releases.push(Release {
                            plaintext_offset: record.plaintext_start + ct as u64,
                            source: ReleaseSource::Held(start..out.held.len()),
                        });
                    }
                }
                None => {
                    if !record.seen.fits(body, body_end) {
                        return Ok(Progress::Refused(Refusal::TooFragmented));
                    }
                    let new = record.seen.insert(body, body_end);
                    out.duplicate_bytes += (body_end - body) - new;
                    // The gaps this chunk filled: all of it (the common case), or sub-ranges
                    // copied out of the set (it is borrowed again below).
                    let all_new = new == body_end - body;
                    let whole = [(narrow(body), narrow(body_end))];
                    let mut gap_array = [(0u16, 0u16); MAX_PIECES + 1];
                    let gaps: &[(u16, u16)] = if all_new {
                        &whole
                    } else {
                        let filled = record.seen.last_insert_gaps();
                        gap_array[..filled.len()].copy_from_slice(filled);
                        &gap_array[..filled.len()]
                    };
                    let is_new = |body_offset: usize| {
                        all_new || gaps.iter().any(|&(a, b)| a as usize <= body_offset && body_offset < b as usize)
                    };
                    if ct_take > 0 {
                        let (ct_body_start, ct_body_end) = (explicit_len + ct, explicit_len + ct_end);
                        let fresh = all_new
                            || gaps
                                .iter()
                                .map(|&(a, b)| (b as usize).min(ct_body_end).saturating_sub((a as usize).max(ct_body_start)))
                                .sum::<usize>()
                                == ct_take;
                        let bytes = &mut chunk[position..position + ct_take];
                        if fresh && ct == record.prefix.next() {
                            // In order from the record's start: continue its prefix.
                            let (aad, aad_len) = framing.aad(&record.header, record.seq, ciphertext_len);
                            let aad = &aad[..aad_len];
                            let (prefix, lookahead) = (&mut record.prefix, &mut self.lookahead);
                            self.aead.crypt_next(&mut key, prefix, aad, ciphertext_len, bytes, Direction::Decrypt, lookahead);
                        } else {
                            let lookahead = Some(&mut self.lookahead);
                            let contribution =
                                self.aead.crypt_range_with(&mut key, ciphertext_len, ct, bytes, Direction::Decrypt, lookahead);
                            if fresh {
                                record.mac.add(contribution);
                            } else {
                                // Partly seen before: authenticate only the new sub-ranges.
                                add_new_ranges(&self.aead, record, &mut key, ciphertext_len, explicit_len, ct, ct_take, chunk, position);
                            }
                        }
                        // The key may have derived per-record material (ChaCha20's Poly1305 key).
                        record.key = Some(key);
                        // Keep the first copy of every byte; release what lies before the hold
                        // point: from the chunk when all of it is new, else from the first
                        // copies (the repeated bytes of this chunk are not authenticated).
                        if fresh {
                            record.held[ct..ct_end].copy_from_slice(&chunk[position..position + ct_take]);
                        } else {
                            for offset in ct..ct_end {
                                if is_new(explicit_len + offset) {
                                    record.held[offset] = chunk[position + offset - ct];
                                }
                            }
                        }
                        let release_end = ct_end.min(record.hold_from).max(ct);
                        if release_end > ct {
                            record.released_early = true;
                            let source = if fresh {
                                ReleaseSource::Chunk(position..position + (release_end - ct))
                            } else {
                                let start = out.held.len();
                                out.held.extend_from_slice(&record.held[ct..release_end]);
                                ReleaseSource::Held(start..out.held.len())
                            };
                            out.releases.push(Release { plaintext_offset: record.plaintext_start + ct as u64, source });
                        }
                    }
                    // Tag bytes (first copy wins).
                    let tag_start = explicit_len + ciphertext_len;
                    for &(a, b) in gaps {
                        let (a, b) = ((a as usize).max(tag_start), b as usize);
                        if a < b {
                            record.tag[a - tag_start..b - tag_start]
                                .copy_from_slice(&chunk[position + (a - body)..position + (b - body)]);
                        }
                    }
                }
            }
        }
        let record = &self.records[index];
        if record.outcome.is_none() && record.seen.covers(record.body_len) {
            return self.verify(index, out).map(Progress::Completed);
        }
        Ok(Progress::Taken)
    }

    /// All of record `index` has been seen: check the tag, find the content type, release.
    #[inline(always)]
    fn verify(&mut self, index: usize, out: &mut OpenOutput) -> Result<RecordDone, OpenError> {
        let framing = self.framing;
        let record = &mut self.records[index];
        let ciphertext_len = record.body_len - framing.explicit_nonce_len() - TAG_LEN;
        let Some(mut key) = record.key else {
            // Unreachable: the explicit nonce is part of the body, so a fully seen record has it.
            return Err(OpenError::TagMismatch { seq: record.seq });
        };
        let (aad, aad_len) = framing.aad(&record.header, record.seq, ciphertext_len);
        let expected = self.aead.tag_with(&mut key, &aad[..aad_len], ciphertext_len, &record.prefix, record.mac);
        record.key = Some(key);
        if !tags_equal(&expected, &record.tag) {
            return Err(OpenError::TagMismatch { seq: record.seq });
        }
        let (content_type, data_len) = match framing.version {
            ProtocolVersion::Tls12 => {
                let data_len = if record.outer_type == ContentType::ApplicationData { ciphertext_len } else { 0 };
                (record.outer_type, data_len)
            }
            ProtocolVersion::Tls13 => {
                // The inner type is the last non-zero byte; only held bytes can be scanned.
                let Some(last) = record.held[record.hold_from..].iter().rposition(|&byte| byte != 0) else {
                    return Err(if record.hold_from == 0 {
                        OpenError::NoContentType { seq: record.seq }
                    } else {
                        OpenError::PaddingIntoReleased { seq: record.seq }
                    });
                };
                let content_type = ContentType::from(record.held[record.hold_from + last]);
                let type_offset = record.hold_from + last;
                let data_len = if content_type == ContentType::ApplicationData { type_offset } else { 0 };
                (content_type, data_len)
            }
        };
        let seq = record.seq;
        let (stream_offset, record_len) = (record.start, HEADER_LEN + record.body_len);
        let mut plaintext = None;
        if content_type == ContentType::ApplicationData {
            if data_len > record.hold_from {
                let start = out.held.len();
                out.held.extend_from_slice(&record.held[record.hold_from..data_len]);
                out.releases.push(Release {
                    plaintext_offset: record.plaintext_start + record.hold_from as u64,
                    source: ReleaseSource::Held(start..out.held.len()),
                });
            }
        } else {
            if record.released_early {
                return Err(OpenError::NonDataReleased { seq, content_type });
            }
            if record.hold_from == 0 {
                // Non-data plaintext: TLS 1.3 strips the type and padding.
                let end = match framing.version {
                    ProtocolVersion::Tls13 => record.held.iter().rposition(|&byte| byte != 0).unwrap_or(0),
                    ProtocolVersion::Tls12 => record.held.len(),
                };
                let start = out.held.len();
                out.held.extend_from_slice(&record.held[..end]);
                plaintext = Some(start..out.held.len());
            }
        }
        // The plaintext stays with the record until it is forgotten (for retransmissions).
        record.outcome = Some(Verified { content_type, data_len });
        // Correct the plaintext offsets of later records if this one was not what was predicted.
        let predicted = match framing.version {
            ProtocolVersion::Tls13 => ciphertext_len - 1,
            ProtocolVersion::Tls12 => data_len,
        };
        if predicted != data_len {
            let shortfall = (predicted - data_len) as u64;
            for later in self.records.iter_mut().skip(index + 1) {
                if later.released_early {
                    return Err(OpenError::PlaintextShifted { seq });
                }
                later.plaintext_start -= shortfall;
            }
            self.next_plaintext -= shortfall;
        }
        Ok(RecordDone { seq, stream_offset, record_len, content_type, data_len, plaintext, unprotected: false })
    }
}

/// The data a record not yet verified is predicted to carry.
fn break_even(record: &Record, framing: Framing) -> u64 {
    let ciphertext = record.body_len.saturating_sub(framing.explicit_nonce_len() + TAG_LEN) as u64;
    match framing.version {
        ProtocolVersion::Tls13 => ciphertext.saturating_sub(1),
        ProtocolVersion::Tls12 => ciphertext,
    }
}

enum Progress {
    Taken,
    Completed(RecordDone),
    Refused(Refusal),
}

fn expand(keys: &TrafficKeys, accelerate: bool) -> AeadKey {
    // TrafficKeys checked the key length against its algorithm when it was made.
    match AeadKey::new(keys.aead, keys.key(), accelerate) {
        Some(key) => key,
        None => unreachable!("TrafficKeys has the algorithm's key length"),
    }
}

/// A chunk overlapped bytes seen before: add the MAC contributions of just the new sub-ranges,
/// re-encrypting a copy to recover their ciphertext (the chunk is already decrypted).
#[allow(clippy::too_many_arguments)]
fn add_new_ranges(
    aead: &AeadKey,
    record: &mut Record,
    key: &mut RecordKey,
    ciphertext_len: usize,
    explicit_len: usize,
    ct: usize,
    take: usize,
    chunk: &[u8],
    position: usize,
) {
    // `seen` already includes this chunk; the new sub-ranges are those that were gaps before.
    for &(gap_start, gap_end) in record.seen.last_insert_gaps() {
        let (gap_start, gap_end) = (gap_start as usize, gap_end as usize);
        let from = gap_start.max(explicit_len + ct) - explicit_len;
        let to = gap_end.min(explicit_len + ct + take) - explicit_len;
        if from >= to {
            continue;
        }
        let mut copy = [0u8; 512];
        let mut done = from;
        while done < to {
            let n = (to - done).min(copy.len());
            let source = &chunk[position + (done - ct)..position + (done - ct) + n];
            copy[..n].copy_from_slice(source);
            // Encrypting the plaintext gives back the ciphertext and its MAC contribution.
            let contribution = aead.crypt_range(key, ciphertext_len, done, &mut copy[..n], Direction::Encrypt);
            record.mac.add(contribution);
            done += n;
        }
    }
}

/// Most disjoint pieces of one record tracked at once; a chunk that would make more is refused
/// (TCP sends it again once the gaps have filled).
const MAX_PIECES: usize = 16;

/// A set of disjoint byte ranges of one record, with the gaps the last insertion filled. Fixed
/// capacity and 16-bit offsets (a record body is at most 18 KiB): a record's piece set is 136
/// bytes, and no allocation happens per record.
#[derive(Default)]
struct Intervals {
    ranges: [(u16, u16); MAX_PIECES],
    len: u8,
    last_gaps: [(u16, u16); MAX_PIECES + 1],
    last_gaps_len: u8,
}

/// Record bodies are at most `MAX_BODY_LEN_TLS12` (18432) bytes, which fits in a `u16`.
fn narrow(offset: usize) -> u16 {
    debug_assert!(offset <= u16::MAX as usize);
    offset as u16
}

impl Intervals {
    fn ranges(&self) -> &[(u16, u16)] {
        &self.ranges[..self.len as usize]
    }

    /// Whether `[start, end)` can be added without exceeding the capacity.
    fn fits(&self, start: usize, end: usize) -> bool {
        let (start, end) = (narrow(start), narrow(end));
        (self.len as usize) < MAX_PIECES || self.ranges().iter().any(|&(a, b)| a <= end && start <= b)
    }

    fn clear(&mut self) {
        self.len = 0;
        self.last_gaps_len = 0;
    }

    /// Adds `[start, end)` (the caller checked [`Self::fits`]); returns how many bytes were new.
    fn insert(&mut self, start: usize, end: usize) -> usize {
        self.last_gaps_len = 0;
        if start >= end {
            return 0;
        }
        let (start, end) = (narrow(start), narrow(end));
        // In-order arrival: the first piece, or one that continues the last piece.
        let len = self.len as usize;
        if len == 0 || self.ranges[len - 1].1 == start {
            if len == 0 {
                self.ranges[0] = (start, end);
                self.len = 1;
            } else {
                self.ranges[len - 1].1 = end;
            }
            self.last_gaps[0] = (start, end);
            self.last_gaps_len = 1;
            return (end - start) as usize;
        }
        let mut cursor = start;
        for i in 0..self.len as usize {
            let (a, b) = self.ranges[i];
            if b <= cursor {
                continue;
            }
            if a >= end {
                break;
            }
            if a > cursor {
                self.last_gaps[self.last_gaps_len as usize] = (cursor, a);
                self.last_gaps_len += 1;
            }
            cursor = cursor.max(b);
            if cursor >= end {
                break;
            }
        }
        if cursor < end {
            self.last_gaps[self.last_gaps_len as usize] = (cursor, end);
            self.last_gaps_len += 1;
        }
        let new = self.last_insert_gaps().iter().map(|&(a, b)| (b - a) as usize).sum();
        // Merge every range touching [start, end) into one, keeping the array sorted.
        let (mut merged_start, mut merged_end) = (start, end);
        let mut kept = 0;
        let mut insert_at = None;
        for i in 0..self.len as usize {
            let (a, b) = self.ranges[i];
            if b < start || a > end {
                if a > end && insert_at.is_none() {
                    insert_at = Some(kept);
                }
                self.ranges[kept] = (a, b);
                kept += 1;
            } else {
                merged_start = merged_start.min(a);
                merged_end = merged_end.max(b);
            }
        }
        let at = insert_at.unwrap_or(kept);
        if kept < MAX_PIECES {
            self.ranges.copy_within(at..kept, at + 1);
            self.ranges[at] = (merged_start, merged_end);
            self.len = kept as u8 + 1;
        } else {
            // Unreachable when the caller checked `fits`: nothing merged and the array is full.
            self.len = kept as u8;
        }
        new
    }

    /// Whether the set is exactly `[0, end)` (empty when `end` is 0).
    fn is_prefix(&self, end: usize) -> bool {
        match self.len {
            0 => end == 0,
            1 => self.ranges[0] == (0, narrow(end)),
            _ => false,
        }
    }

    /// From `[0, end)` (see [`Self::is_prefix`]) to `[0, new_end)`: what [`Self::insert`] of
    /// `[end, new_end)` does then.
    fn extend_prefix(&mut self, new_end: usize) {
        let end = if self.len == 0 { 0 } else { self.ranges[0].1 };
        self.ranges[0] = (0, narrow(new_end));
        self.len = 1;
        self.last_gaps[0] = (end, narrow(new_end));
        self.last_gaps_len = (new_end > end as usize) as u8;
    }

    fn last_insert_gaps(&self) -> &[(u16, u16)] {
        &self.last_gaps[..self.last_gaps_len as usize]
    }

    fn covers(&self, len: usize) -> bool {
        len == 0 || self.ranges().first() == Some(&(0, narrow(len)))
    }

    fn covers_range(&self, start: usize, end: usize) -> bool {
        let (start, end) = (narrow(start), narrow(end));
        self.ranges().iter().any(|&(a, b)| a <= start && end <= b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_merge_and_report_new_bytes() {
        let mut set = Intervals::default();
        assert_eq!(set.insert(10, 20), 10);
        assert_eq!(set.insert(0, 5), 5);
        assert_eq!(set.insert(3, 12), 5);
        assert_eq!(set.last_insert_gaps(), &[(5, 10)]);
        assert_eq!(set.ranges(), &[(0, 20)]);
        assert_eq!(set.insert(0, 20), 0);
        assert!(set.covers(20));
        assert!(!set.covers(21));
        assert_eq!(set.insert(25, 30), 5);
        assert_eq!(set.insert(15, 40), 15);
        assert_eq!(set.last_insert_gaps(), &[(20, 25), (30, 40)]);
        assert_eq!(set.ranges(), &[(0, 40)]);
    }

    #[test]
    fn intervals_refuse_beyond_capacity() {
        let mut set = Intervals::default();
        for i in 0..MAX_PIECES {
            assert!(set.fits(i * 10, i * 10 + 5));
            set.insert(i * 10, i * 10 + 5);
        }
        assert!(!set.fits(1000, 1001));
        // Touching an existing piece still fits.
        assert!(set.fits(5, 7));
        set.insert(5, 10);
        assert_eq!(set.ranges().len(), MAX_PIECES - 1);
        assert_eq!(set.ranges()[0], (0, 15));
    }
}
