//! TCP segments (RFC 9293) and their options.
//!
//! [`Packet`] is the zero-copy view; [`TcpOption`] parses and emits one option;
//! [`TcpOptions`] is the decoded set cutls works with (MSS, window scale, SACK-permitted, SACK
//! blocks, timestamps) plus every other option kept byte for byte, so that a SYN replayed to a
//! backend carries what the client sent. [`TcpRepr`] parses a segment into values and emits one
//! back; `parse(emit(repr)) == repr`, and a segment with options in the canonical order Linux
//! uses re-emits byte for byte.
//!
//! Option parsing follows Linux where the RFCs leave room: an option whose length byte runs
//! past the options area, or is below 2, makes the options malformed; a known option with the
//! wrong length (an MSS of 3 bytes) is not trusted but kept as [`TcpOption::Unknown`], as is a
//! repeated known option, so nothing is lost on the way through.
//!
//! Not supported: TCP-AO/MD5 signature checking (the options are kept, not verified), the
//! urgent mechanism beyond carrying the pointer.

use core::fmt;
use std::net::IpAddr;

use super::checksum;
use super::seq::SeqNumber;
use super::{
    check_emit_len, check_len, read_u16, read_u32, write_u16, write_u32, IpProtocol, Layer,
    WireError,
};

/// Byte ranges of the TCP header.
pub mod field {
    use core::ops::Range;

    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ_NUMBER: Range<usize> = 4..8;
    pub const ACK_NUMBER: Range<usize> = 8..12;
    /// Data offset (4 bits), reserved (3 bits), flags (9 bits).
    pub const OFFSET_AND_FLAGS: Range<usize> = 12..14;
    pub const WINDOW: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT_POINTER: Range<usize> = 18..20;
    pub const OPTIONS: usize = 20;
}

/// Length of a TCP header without options.
pub const MIN_HEADER_LEN: usize = field::OPTIONS;
/// The data offset field counts at most 15 words.
pub const MAX_HEADER_LEN: usize = 60;
/// Room for options in the largest header.
pub const MAX_OPTIONS_LEN: usize = MAX_HEADER_LEN - MIN_HEADER_LEN;
/// SACK blocks that fit one option (2 + 8 * 4 = 34 bytes of the 40 available).
pub const MAX_SACK_BLOCKS: usize = 4;

/// The nine TCP flag bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(u16);

impl TcpFlags {
    pub const FIN: TcpFlags = TcpFlags(0x001);
    pub const SYN: TcpFlags = TcpFlags(0x002);
    pub const RST: TcpFlags = TcpFlags(0x004);
    pub const PSH: TcpFlags = TcpFlags(0x008);
    pub const ACK: TcpFlags = TcpFlags(0x010);
    pub const URG: TcpFlags = TcpFlags(0x020);
    pub const ECE: TcpFlags = TcpFlags(0x040);
    pub const CWR: TcpFlags = TcpFlags(0x080);
    /// Formerly NS (RFC 3540), now AE (accurate ECN).
    pub const AE: TcpFlags = TcpFlags(0x100);

    const MASK: u16 = 0x01ff;

    pub const fn empty() -> TcpFlags {
        TcpFlags(0)
    }

    /// The flags from the low nine bits of `bits`; other bits are dropped.
    pub const fn from_bits(bits: u16) -> TcpFlags {
        TcpFlags(bits & Self::MASK)
    }

    pub const fn bits(self) -> u16 {
        self.0
    }

    pub const fn contains(self, flags: TcpFlags) -> bool {
        self.0 & flags.0 == flags.0
    }

    pub fn insert(&mut self, flags: TcpFlags) {
        self.0 |= flags.0;
    }

    pub fn remove(&mut self, flags: TcpFlags) {
        self.0 &= !flags.0;
    }

    /// How much sequence space the flags consume on top of the payload (SYN and FIN count 1).
    pub fn sequence_len(self) -> usize {
        usize::from(self.contains(TcpFlags::SYN)) + usize::from(self.contains(TcpFlags::FIN))
    }
}

impl core::ops::BitOr for TcpFlags {
    type Output = TcpFlags;

    fn bitor(self, other: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | other.0)
    }
}

impl fmt::Display for TcpFlags {
    /// tcpdump's letters: `S` SYN, `F` FIN, `R` RST, `P` PSH, `.` ACK, `U` URG, `E` ECE,
    /// `W` CWR, `A` AE.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let letters = [
            (TcpFlags::SYN, 'S'),
            (TcpFlags::FIN, 'F'),
            (TcpFlags::RST, 'R'),
            (TcpFlags::PSH, 'P'),
            (TcpFlags::URG, 'U'),
            (TcpFlags::ECE, 'E'),
            (TcpFlags::CWR, 'W'),
            (TcpFlags::AE, 'A'),
            (TcpFlags::ACK, '.'),
        ];
        for (flag, letter) in letters {
            if self.contains(flag) {
                write!(f, "{letter}")?;
            }
        }
        Ok(())
    }
}

/// A read/write view of a TCP segment.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Checks `20 <= header_len <= buffer length`. The buffer must be exactly the segment (the
    /// IP payload), because the payload runs to its end.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, WireError> {
        let packet = Packet { buffer };
        let data = packet.buffer.as_ref();
        check_len(Layer::Tcp, data, MIN_HEADER_LEN)?;
        let header_len = packet.header_len();
        if header_len < MIN_HEADER_LEN {
            return Err(WireError::Malformed {
                layer: Layer::Tcp,
                reason: "data offset below 5",
            });
        }
        check_len(Layer::Tcp, data, header_len)?;
        Ok(packet)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT.start)
    }

    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT.start)
    }

    pub fn seq_number(&self) -> SeqNumber {
        SeqNumber(read_u32(self.buffer.as_ref(), field::SEQ_NUMBER.start))
    }

    /// The acknowledgment field, meaningful only when [`TcpFlags::ACK`] is set.
    pub fn ack_number(&self) -> SeqNumber {
        SeqNumber(read_u32(self.buffer.as_ref(), field::ACK_NUMBER.start))
    }

    fn offset_and_flags(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::OFFSET_AND_FLAGS.start)
    }

    /// Header length in bytes (data offset * 4), options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.offset_and_flags() >> 12) * 4
    }

    pub fn flags(&self) -> TcpFlags {
        TcpFlags::from_bits(self.offset_and_flags())
    }

    /// The raw window field (unscaled).
    pub fn window(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::WINDOW.start)
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    pub fn urgent_pointer(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::URGENT_POINTER.start)
    }

    /// The raw option bytes, padding included.
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[field::OPTIONS..self.header_len()]
    }

    /// Iterates over the options one by one, padding (NOP, EOL) included.
    pub fn option_iter(&self) -> TcpOptionIter<'_> {
        TcpOptionIter::new(self.options())
    }

    /// Decodes the options into a [`TcpOptions`].
    pub fn parse_options(&self) -> Result<TcpOptions, WireError> {
        TcpOptions::parse(self.options())
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    /// How much sequence space the segment occupies: payload plus SYN and FIN.
    pub fn sequence_len(&self) -> usize {
        self.payload().len() + self.flags().sequence_len()
    }

    /// True when the checksum verifies under the pseudo-header of `src` and `dst`. Addresses of
    /// different families never verify.
    pub fn verify_checksum(&self, src: IpAddr, dst: IpAddr) -> bool {
        let segment = self.buffer.as_ref();
        match (src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                checksum::verify_upper_layer_v4(src, dst, IpProtocol::Tcp, segment)
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                checksum::verify_upper_layer_v6(src, dst, IpProtocol::Tcp, segment)
            }
            _ => false,
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_src_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT.start, port);
    }

    pub fn set_dst_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT.start, port);
    }

    pub fn set_seq_number(&mut self, seq: SeqNumber) {
        write_u32(self.buffer.as_mut(), field::SEQ_NUMBER.start, seq.0);
    }

    pub fn set_ack_number(&mut self, ack: SeqNumber) {
        write_u32(self.buffer.as_mut(), field::ACK_NUMBER.start, ack.0);
    }

    /// Sets the header length (a multiple of 4 from 20 to 60) and the flags together, as they
    /// share a 16-bit word.
    pub fn set_header_len_and_flags(&mut self, header_len: usize, flags: TcpFlags) {
        let offset = ((header_len / 4) & 0x0f) as u16;
        write_u16(
            self.buffer.as_mut(),
            field::OFFSET_AND_FLAGS.start,
            (offset << 12) | flags.0,
        );
    }

    pub fn set_window(&mut self, window: u16) {
        write_u16(self.buffer.as_mut(), field::WINDOW.start, window);
    }

    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM.start, checksum);
    }

    pub fn set_urgent_pointer(&mut self, pointer: u16) {
        write_u16(self.buffer.as_mut(), field::URGENT_POINTER.start, pointer);
    }

    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_len();
        &mut self.buffer.as_mut()[field::OPTIONS..end]
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.buffer.as_mut()[start..]
    }

    /// Computes the checksum from scratch under the pseudo-header of `src` and `dst`. Addresses
    /// of different families are refused.
    pub fn fill_checksum(&mut self, src: IpAddr, dst: IpAddr) -> Result<(), WireError> {
        self.set_checksum(0);
        let segment = self.buffer.as_ref();
        let computed = match (src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                checksum::upper_layer_checksum_v4(src, dst, IpProtocol::Tcp, segment)
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                checksum::upper_layer_checksum_v6(src, dst, IpProtocol::Tcp, segment)
            }
            _ => return Err(mixed_families()),
        };
        self.set_checksum(computed);
        Ok(())
    }

    /// Rewrites the source port and patches the checksum incrementally.
    pub fn rewrite_src_port(&mut self, port: u16) {
        let patched = checksum::update_u16(self.checksum(), self.src_port(), port);
        self.set_src_port(port);
        self.set_checksum(patched);
    }

    /// Rewrites the destination port and patches the checksum incrementally.
    pub fn rewrite_dst_port(&mut self, port: u16) {
        let patched = checksum::update_u16(self.checksum(), self.dst_port(), port);
        self.set_dst_port(port);
        self.set_checksum(patched);
    }

    /// Rewrites the sequence number and patches the checksum incrementally.
    pub fn rewrite_seq_number(&mut self, seq: SeqNumber) {
        let patched = checksum::update_u32(self.checksum(), self.seq_number().0, seq.0);
        self.set_seq_number(seq);
        self.set_checksum(patched);
    }

    /// Rewrites the acknowledgment number and patches the checksum incrementally.
    pub fn rewrite_ack_number(&mut self, ack: SeqNumber) {
        let patched = checksum::update_u32(self.checksum(), self.ack_number().0, ack.0);
        self.set_ack_number(ack);
        self.set_checksum(patched);
    }

    /// Rewrites the window field and patches the checksum incrementally.
    pub fn rewrite_window(&mut self, window: u16) {
        let patched = checksum::update_u16(self.checksum(), self.window(), window);
        self.set_window(window);
        self.set_checksum(patched);
    }

    /// Rewrites `new.len()` bytes of the options area at `offset` (from the start of the
    /// options) and patches the checksum, whatever the alignment: for translating SACK blocks
    /// and timestamps in place.
    pub fn rewrite_option_bytes(&mut self, offset: usize, new: &[u8]) -> Result<(), WireError> {
        let options_len = self.header_len().saturating_sub(field::OPTIONS);
        let end = offset
            .checked_add(new.len())
            .filter(|end| *end <= options_len)
            .ok_or(WireError::Malformed {
                layer: Layer::TcpOption,
                reason: "rewrite past the options",
            })?;
        let at = field::OPTIONS + offset;
        let mut old = [0u8; MAX_OPTIONS_LEN];
        old[..new.len()].copy_from_slice(&self.buffer.as_ref()[at..field::OPTIONS + end]);
        let patched = checksum::update_bytes(self.checksum(), at, &old[..new.len()], new);
        self.buffer.as_mut()[at..field::OPTIONS + end].copy_from_slice(new);
        self.set_checksum(patched);
        Ok(())
    }
}

/// One SACK block: the sequence range `[left, right)` the receiver holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SackBlock {
    pub left: SeqNumber,
    pub right: SeqNumber,
}

/// The blocks of one SACK option, without allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SackBlocks {
    blocks: [SackBlock; MAX_SACK_BLOCKS],
    count: u8,
}

impl SackBlocks {
    /// The blocks in the order they were sent.
    pub fn as_slice(&self) -> &[SackBlock] {
        &self.blocks[..usize::from(self.count)]
    }

    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends a block, or refuses when [`MAX_SACK_BLOCKS`] are already held.
    pub fn push(&mut self, block: SackBlock) -> Result<(), WireError> {
        let slot = self
            .blocks
            .get_mut(usize::from(self.count))
            .ok_or(WireError::Malformed {
                layer: Layer::TcpOption,
                reason: "more than 4 SACK blocks",
            })?;
        *slot = block;
        self.count += 1;
        Ok(())
    }

    /// Bytes of the SACK option that carries these blocks.
    pub fn option_len(&self) -> usize {
        2 + 8 * self.len()
    }
}

/// The timestamps option (RFC 7323).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpTimestamp {
    pub value: u32,
    pub echo_reply: u32,
}

/// Option kinds.
pub mod kind {
    pub const END_OF_LIST: u8 = 0;
    pub const NO_OPERATION: u8 = 1;
    pub const MAX_SEGMENT_SIZE: u8 = 2;
    pub const WINDOW_SCALE: u8 = 3;
    pub const SACK_PERMITTED: u8 = 4;
    pub const SACK: u8 = 5;
    pub const TIMESTAMP: u8 = 8;
}

/// One TCP option as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcpOption<'a> {
    EndOfList,
    NoOperation,
    MaxSegmentSize(u16),
    WindowScale(u8),
    SackPermitted,
    SackBlocks(SackBlocks),
    Timestamp(TcpTimestamp),
    /// Any other option, or a known kind with a length it should not have: kept as bytes.
    Unknown {
        kind: u8,
        data: &'a [u8],
    },
}

impl<'a> TcpOption<'a> {
    /// Parses the option at the start of `buffer`; returns it and the bytes after it.
    pub fn parse(buffer: &'a [u8]) -> Result<(&'a [u8], TcpOption<'a>), WireError> {
        let (&option_kind, after_kind) = buffer.split_first().ok_or(WireError::Truncated {
            layer: Layer::TcpOption,
            needed: 1,
            available: 0,
        })?;
        match option_kind {
            kind::END_OF_LIST => return Ok((after_kind, TcpOption::EndOfList)),
            kind::NO_OPERATION => return Ok((after_kind, TcpOption::NoOperation)),
            _ => {}
        }
        let &length = after_kind.first().ok_or(WireError::Malformed {
            layer: Layer::TcpOption,
            reason: "option kind without a length byte",
        })?;
        let length = usize::from(length);
        if length < 2 {
            return Err(WireError::Malformed {
                layer: Layer::TcpOption,
                reason: "option length below 2",
            });
        }
        if length > buffer.len() {
            return Err(WireError::Malformed {
                layer: Layer::TcpOption,
                reason: "option runs past the options area",
            });
        }
        let data = &buffer[2..length];
        let rest = &buffer[length..];
        let option = match (option_kind, data.len()) {
            (kind::MAX_SEGMENT_SIZE, 2) => TcpOption::MaxSegmentSize(read_u16(data, 0)),
            (kind::WINDOW_SCALE, 1) => TcpOption::WindowScale(data[0]),
            (kind::SACK_PERMITTED, 0) => TcpOption::SackPermitted,
            (kind::SACK, n) if n > 0 && n % 8 == 0 && n / 8 <= MAX_SACK_BLOCKS => {
                let mut blocks = SackBlocks::default();
                for pair in data.chunks_exact(8) {
                    blocks.push(SackBlock {
                        left: SeqNumber(read_u32(pair, 0)),
                        right: SeqNumber(read_u32(pair, 4)),
                    })?;
                }
                TcpOption::SackBlocks(blocks)
            }
            (kind::TIMESTAMP, 8) => TcpOption::Timestamp(TcpTimestamp {
                value: read_u32(data, 0),
                echo_reply: read_u32(data, 4),
            }),
            (kind, _) => TcpOption::Unknown { kind, data },
        };
        Ok((rest, option))
    }

    /// Bytes the option takes on the wire.
    pub fn buffer_len(&self) -> usize {
        match self {
            TcpOption::EndOfList | TcpOption::NoOperation => 1,
            TcpOption::MaxSegmentSize(_) => 4,
            TcpOption::WindowScale(_) => 3,
            TcpOption::SackPermitted => 2,
            TcpOption::SackBlocks(blocks) => blocks.option_len(),
            TcpOption::Timestamp(_) => 10,
            TcpOption::Unknown { data, .. } => 2 + data.len(),
        }
    }

    /// Writes the option at the start of `buffer`; returns the bytes after it.
    pub fn emit<'b>(&self, buffer: &'b mut [u8]) -> Result<&'b mut [u8], WireError> {
        let length = self.buffer_len();
        check_emit_len(Layer::TcpOption, buffer, length)?;
        match self {
            TcpOption::EndOfList => buffer[0] = kind::END_OF_LIST,
            TcpOption::NoOperation => buffer[0] = kind::NO_OPERATION,
            TcpOption::MaxSegmentSize(mss) => {
                buffer[..2].copy_from_slice(&[kind::MAX_SEGMENT_SIZE, 4]);
                write_u16(buffer, 2, *mss);
            }
            TcpOption::WindowScale(shift) => {
                buffer[..3].copy_from_slice(&[kind::WINDOW_SCALE, 3, *shift]);
            }
            TcpOption::SackPermitted => buffer[..2].copy_from_slice(&[kind::SACK_PERMITTED, 2]),
            TcpOption::SackBlocks(blocks) => {
                // At most 4 blocks: the length is at most 34.
                buffer[..2].copy_from_slice(&[kind::SACK, length as u8]);
                for (index, block) in blocks.as_slice().iter().enumerate() {
                    write_u32(buffer, 2 + 8 * index, block.left.0);
                    write_u32(buffer, 6 + 8 * index, block.right.0);
                }
            }
            TcpOption::Timestamp(timestamp) => {
                buffer[..2].copy_from_slice(&[kind::TIMESTAMP, 10]);
                write_u32(buffer, 2, timestamp.value);
                write_u32(buffer, 6, timestamp.echo_reply);
            }
            TcpOption::Unknown { kind, data } => {
                let length = u8::try_from(length).map_err(|_| WireError::Malformed {
                    layer: Layer::TcpOption,
                    reason: "option longer than 255 bytes",
                })?;
                buffer[0] = *kind;
                buffer[1] = length;
                buffer[2..2 + data.len()].copy_from_slice(data);
            }
        }
        Ok(&mut buffer[length..])
    }
}

/// Iterates over the options of an options area. After an error it yields nothing more; after
/// an end-of-list option it yields nothing more (the rest is padding).
#[derive(Debug, Clone)]
pub struct TcpOptionIter<'a> {
    remaining: &'a [u8],
}

impl<'a> TcpOptionIter<'a> {
    pub fn new(options: &'a [u8]) -> TcpOptionIter<'a> {
        TcpOptionIter { remaining: options }
    }
}

impl<'a> Iterator for TcpOptionIter<'a> {
    type Item = Result<TcpOption<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining.is_empty() {
            return None;
        }
        match TcpOption::parse(self.remaining) {
            Ok((rest, option)) => {
                self.remaining = if option == TcpOption::EndOfList {
                    &[]
                } else {
                    rest
                };
                Some(Ok(option))
            }
            Err(error) => {
                self.remaining = &[];
                Some(Err(error))
            }
        }
    }
}

/// Options other than the five decoded ones, kept as their wire bytes (kind, length, data) in
/// the order they came, in a fixed buffer: the whole options area is 40 bytes at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UnknownOptions {
    bytes: [u8; MAX_OPTIONS_LEN],
    len: u8,
}

impl Default for UnknownOptions {
    fn default() -> Self {
        UnknownOptions {
            bytes: [0; MAX_OPTIONS_LEN],
            len: 0,
        }
    }
}

impl UnknownOptions {
    /// The kept options' wire bytes, concatenated.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The kept options as [`TcpOption::Unknown`] values.
    pub fn iter(&self) -> TcpOptionIter<'_> {
        TcpOptionIter::new(self.as_bytes())
    }

    /// Keeps one more option; refuses if the 40 bytes are full.
    pub fn push(&mut self, kind: u8, data: &[u8]) -> Result<(), WireError> {
        let start = usize::from(self.len);
        let option = TcpOption::Unknown { kind, data };
        let end = start + option.buffer_len();
        let slot = self.bytes.get_mut(start..end).ok_or(WireError::Malformed {
            layer: Layer::TcpOption,
            reason: "options longer than 40 bytes",
        })?;
        option.emit(slot)?;
        // `end` is at most MAX_OPTIONS_LEN (40) here, since the slot existed.
        self.len = end as u8;
        Ok(())
    }
}

/// The options of a segment, decoded: what cutls reads and translates, plus everything else
/// kept as bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpOptions {
    pub max_segment_size: Option<u16>,
    pub window_scale: Option<u8>,
    pub sack_permitted: bool,
    pub sack_blocks: SackBlocks,
    pub timestamp: Option<TcpTimestamp>,
    pub unknown: UnknownOptions,
}

impl TcpOptions {
    /// Decodes an options area. Padding (NOP, EOL) is dropped; a repeated known option is kept
    /// in `unknown` rather than overwriting the first.
    pub fn parse(options: &[u8]) -> Result<TcpOptions, WireError> {
        let mut decoded = TcpOptions::default();
        for option in TcpOptionIter::new(options) {
            match option? {
                TcpOption::EndOfList | TcpOption::NoOperation => {}
                TcpOption::MaxSegmentSize(mss) if decoded.max_segment_size.is_none() => {
                    decoded.max_segment_size = Some(mss);
                }
                TcpOption::WindowScale(shift) if decoded.window_scale.is_none() => {
                    decoded.window_scale = Some(shift);
                }
                TcpOption::SackPermitted if !decoded.sack_permitted => {
                    decoded.sack_permitted = true;
                }
                TcpOption::SackBlocks(blocks) if decoded.sack_blocks.is_empty() => {
                    decoded.sack_blocks = blocks;
                }
                TcpOption::Timestamp(timestamp) if decoded.timestamp.is_none() => {
                    decoded.timestamp = Some(timestamp);
                }
                TcpOption::Unknown { kind, data } => decoded.unknown.push(kind, data)?,
                repeated => {
                    let mut bytes = [0u8; MAX_OPTIONS_LEN];
                    let length = repeated.buffer_len();
                    repeated.emit(&mut bytes)?;
                    decoded.unknown.push(bytes[0], &bytes[2..length])?;
                }
            }
        }
        Ok(decoded)
    }

    /// Writes the known options in Linux's layout: SACK-permitted shares a word with the
    /// timestamps when both are present; otherwise NOPs align each to 4 bytes. Every piece is
    /// a multiple of 4 bytes long ([`TcpOptions::known_len`] counts them).
    fn emit_known<'b>(&self, buffer: &'b mut [u8]) -> Result<&'b mut [u8], WireError> {
        let mut rest = buffer;
        if let Some(mss) = self.max_segment_size {
            rest = TcpOption::MaxSegmentSize(mss).emit(rest)?;
        }
        match (self.sack_permitted, self.timestamp) {
            (true, Some(timestamp)) => {
                rest = TcpOption::SackPermitted.emit(rest)?;
                rest = TcpOption::Timestamp(timestamp).emit(rest)?;
            }
            (false, Some(timestamp)) => {
                rest = TcpOption::NoOperation.emit(rest)?;
                rest = TcpOption::NoOperation.emit(rest)?;
                rest = TcpOption::Timestamp(timestamp).emit(rest)?;
            }
            (true, None) => {
                rest = TcpOption::NoOperation.emit(rest)?;
                rest = TcpOption::NoOperation.emit(rest)?;
                rest = TcpOption::SackPermitted.emit(rest)?;
            }
            (false, None) => {}
        }
        if let Some(shift) = self.window_scale {
            rest = TcpOption::NoOperation.emit(rest)?;
            rest = TcpOption::WindowScale(shift).emit(rest)?;
        }
        if !self.sack_blocks.is_empty() {
            rest = TcpOption::NoOperation.emit(rest)?;
            rest = TcpOption::NoOperation.emit(rest)?;
            rest = TcpOption::SackBlocks(self.sack_blocks).emit(rest)?;
        }
        Ok(rest)
    }

    /// Bytes [`TcpOptions::emit_known`] writes (counted, not iterated: every segment the box
    /// sends asks for it several times).
    fn known_len(&self) -> usize {
        let mss = if self.max_segment_size.is_some() { 4 } else { 0 };
        let sack_permitted_and_timestamp = match (self.sack_permitted, self.timestamp) {
            (_, Some(_)) => 12,
            (true, None) => 4,
            (false, None) => 0,
        };
        let window_scale = if self.window_scale.is_some() { 4 } else { 0 };
        let blocks = self.sack_blocks.as_slice().len();
        let sack = if blocks > 0 { 4 + 8 * blocks } else { 0 };
        mss + sack_permitted_and_timestamp + window_scale + sack
    }

    /// Bytes the options take once emitted, padded to a multiple of 4.
    pub fn emitted_len(&self) -> usize {
        let unknown: usize = self.unknown.iter().filter_map(Result::ok).map(|option| option.buffer_len()).sum();
        (self.known_len() + unknown).div_ceil(4) * 4
    }

    /// Writes the options, padded with end-of-list bytes to a multiple of 4, and returns the
    /// length written. Refuses options longer than 40 bytes (for example timestamps with four
    /// SACK blocks: send at most three alongside timestamps).
    pub fn emit(&self, buffer: &mut [u8]) -> Result<usize, WireError> {
        let length = self.emitted_len();
        if length > MAX_OPTIONS_LEN {
            return Err(WireError::Malformed {
                layer: Layer::TcpOption,
                reason: "options longer than 40 bytes",
            });
        }
        check_emit_len(Layer::TcpOption, buffer, length)?;
        let mut rest = self.emit_known(&mut buffer[..length])?;
        for option in self.unknown.iter().filter_map(Result::ok) {
            rest = option.emit(rest)?;
        }
        rest.fill(kind::END_OF_LIST);
        Ok(length)
    }
}

/// The values of a TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpRepr<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq_number: SeqNumber,
    /// Carried as is; meaningful only with [`TcpFlags::ACK`].
    pub ack_number: SeqNumber,
    pub flags: TcpFlags,
    pub window: u16,
    pub urgent_pointer: u16,
    pub options: TcpOptions,
    pub payload: &'a [u8],
}

impl<'a> TcpRepr<'a> {
    /// Reads a checked segment. The checksum is not looked at: verify it with
    /// [`Packet::verify_checksum`] where the caller needs it.
    pub fn parse(packet: &Packet<&'a [u8]>) -> Result<TcpRepr<'a>, WireError> {
        let segment: &'a [u8] = packet.buffer;
        let header_len = packet.header_len();
        Ok(TcpRepr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq_number: packet.seq_number(),
            ack_number: packet.ack_number(),
            flags: packet.flags(),
            window: packet.window(),
            urgent_pointer: packet.urgent_pointer(),
            options: TcpOptions::parse(&segment[field::OPTIONS..header_len])?,
            payload: &segment[header_len..],
        })
    }

    pub fn header_len(&self) -> usize {
        MIN_HEADER_LEN + self.options.emitted_len()
    }

    /// Header plus payload.
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.payload.len()
    }

    /// Writes the segment (header, options, payload) into the start of `buffer` with the
    /// checksum computed under the pseudo-header of `src` and `dst`; returns its length.
    pub fn emit(&self, buffer: &mut [u8], src: IpAddr, dst: IpAddr) -> Result<usize, WireError> {
        let length = self.buffer_len();
        check_emit_len(Layer::Tcp, buffer, length)?;
        let header_len = self.header_len();
        buffer[header_len..length].copy_from_slice(self.payload);
        self.emit_header(&mut buffer[..length], src, dst)?;
        Ok(length)
    }

    /// Writes the header and options into the start of `segment`, whose payload (the rest of
    /// it, as long as `self.payload`) is already in place, and the checksum over both: a frame
    /// built around its payload without copying it twice.
    pub fn emit_header(&self, segment: &mut [u8], src: IpAddr, dst: IpAddr) -> Result<(), WireError> {
        let length = self.buffer_len();
        check_emit_len(Layer::Tcp, segment, length)?;
        let header_len = self.header_len();
        let segment = &mut segment[..length];
        self.options
            .emit(&mut segment[field::OPTIONS..header_len])?;
        let mut packet = Packet::new_unchecked(segment);
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq_number);
        packet.set_ack_number(self.ack_number);
        packet.set_header_len_and_flags(header_len, self.flags);
        packet.set_window(self.window);
        packet.set_urgent_pointer(self.urgent_pointer);
        packet.fill_checksum(src, dst)
    }
}

fn mixed_families() -> WireError {
    WireError::Malformed {
        layer: Layer::Tcp,
        reason: "pseudo-header addresses of two families",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_frames::{
        ETH_IPV4_TCP_ALERT, ETH_IPV4_TCP_SYN, LAB_IPV4_TCP_SACK, LAB_IPV4_TCP_SYN,
        LAB_IPV6_TCP_SYN, NULL_IPV4_TCP_DATA,
    };
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const LAB_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 10, 1));
    const LAB_SERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 11, 1));

    fn ipv6(text: &str) -> IpAddr {
        IpAddr::V6(text.parse::<Ipv6Addr>().unwrap())
    }

    #[test]
    fn parses_real_lab_syn() {
        // tshark: 52310 -> 8443, seq 3461914206, SYN, win 64240, checksum 0xebc5 (good),
        // MSS 1460, SACK_PERM, TSval 2786902009 TSecr 0, WS 10.
        let packet = Packet::new_checked(&LAB_IPV4_TCP_SYN[34..]).unwrap();
        assert_eq!(packet.src_port(), 52310);
        assert_eq!(packet.dst_port(), 8443);
        assert_eq!(packet.seq_number(), SeqNumber(3_461_914_206));
        assert_eq!(packet.flags(), TcpFlags::SYN);
        assert_eq!(packet.flags().to_string(), "S");
        assert_eq!(packet.window(), 64240);
        assert_eq!(packet.checksum(), 0xebc5);
        assert_eq!(packet.header_len(), 40);
        assert!(packet.payload().is_empty());
        assert_eq!(packet.sequence_len(), 1);
        assert!(packet.verify_checksum(LAB_CLIENT, LAB_SERVER));
        assert!(!packet.verify_checksum(LAB_CLIENT, IpAddr::V4(Ipv4Addr::new(198, 18, 11, 2))));
        let options = packet.parse_options().unwrap();
        assert_eq!(options.max_segment_size, Some(1460));
        assert!(options.sack_permitted);
        assert_eq!(
            options.timestamp,
            Some(TcpTimestamp {
                value: 2_786_902_009,
                echo_reply: 0
            })
        );
        assert_eq!(options.window_scale, Some(10));
        assert!(options.sack_blocks.is_empty());
        assert!(options.unknown.is_empty());
        let kinds: Vec<_> = packet.option_iter().map(Result::unwrap).collect();
        assert_eq!(
            kinds,
            vec![
                TcpOption::MaxSegmentSize(1460),
                TcpOption::SackPermitted,
                TcpOption::Timestamp(TcpTimestamp {
                    value: 2_786_902_009,
                    echo_reply: 0
                }),
                TcpOption::NoOperation,
                TcpOption::WindowScale(10),
            ]
        );
    }

    #[test]
    fn parses_real_sack_block() {
        // tshark: 8443 -> 52310 ACK, ack 3461914207, win 64, SLE 3461919999 SRE 3461920207,
        // TSval 3210203526 TSecr 2786902009, checksum good.
        let packet = Packet::new_checked(&LAB_IPV4_TCP_SACK[34..]).unwrap();
        assert_eq!(packet.flags(), TcpFlags::ACK);
        assert_eq!(packet.ack_number(), SeqNumber(3_461_914_207));
        assert_eq!(packet.window(), 64);
        assert!(packet.verify_checksum(LAB_SERVER, LAB_CLIENT));
        let options = packet.parse_options().unwrap();
        assert_eq!(
            options.sack_blocks.as_slice(),
            &[SackBlock {
                left: SeqNumber(3_461_919_999),
                right: SeqNumber(3_461_920_207)
            }]
        );
        assert_eq!(
            options.timestamp,
            Some(TcpTimestamp {
                value: 3_210_203_526,
                echo_reply: 2_786_902_009
            })
        );
    }

    #[test]
    fn detects_real_offloaded_checksums() {
        // zeek frame 1: the capture holds 0x76d1, tshark computes 0xc377 (checksum offload).
        let syn = Packet::new_checked(&ETH_IPV4_TCP_SYN[34..]).unwrap();
        let client = IpAddr::V4(Ipv4Addr::new(192, 168, 100, 70));
        let server = IpAddr::V4(Ipv4Addr::new(193, 99, 144, 80));
        assert_eq!(syn.checksum(), 0x76d1);
        assert!(!syn.verify_checksum(client, server));
        let mut fixed = ETH_IPV4_TCP_SYN[34..].to_vec();
        let mut packet = Packet::new_checked(&mut fixed[..]).unwrap();
        packet.fill_checksum(client, server).unwrap();
        assert_eq!(packet.checksum(), 0xc377);
        assert!(packet.verify_checksum(client, server));

        // illustrated-tls13 frame 11 (loopback): holds 0xfe42, tshark computes 0x872f.
        let data = Packet::new_checked(&NULL_IPV4_TCP_DATA[24..]).unwrap();
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert!(!data.verify_checksum(localhost, localhost));
        let mut fixed = NULL_IPV4_TCP_DATA[24..].to_vec();
        let mut packet = Packet::new_checked(&mut fixed[..]).unwrap();
        packet.fill_checksum(localhost, localhost).unwrap();
        assert_eq!(packet.checksum(), 0x872f);
    }

    #[test]
    fn parses_real_data_segment() {
        // zeek frame 13: 48216 -> 443, seq 671565442, ack 1993186371, PSH ACK, win 501,
        // 31 bytes of payload starting with the TLS alert header 15 03 03 00 1a.
        let packet = Packet::new_checked(&ETH_IPV4_TCP_ALERT[34..]).unwrap();
        assert_eq!(packet.seq_number(), SeqNumber(671_565_442));
        assert_eq!(packet.ack_number(), SeqNumber(1_993_186_371));
        assert_eq!(packet.flags(), TcpFlags::PSH | TcpFlags::ACK);
        assert_eq!(packet.window(), 501);
        assert_eq!(packet.payload().len(), 31);
        assert_eq!(&packet.payload()[..5], &[0x15, 0x03, 0x03, 0x00, 0x1a]);
        assert_eq!(packet.sequence_len(), 31);
    }

    #[test]
    fn real_segments_re_emit_byte_for_byte() {
        let frames: [(&[u8], IpAddr, IpAddr); 3] = [
            (&LAB_IPV4_TCP_SYN[34..], LAB_CLIENT, LAB_SERVER),
            (&LAB_IPV4_TCP_SACK[34..], LAB_SERVER, LAB_CLIENT),
            (
                &LAB_IPV6_TCP_SYN[54..],
                ipv6("2001:db8:10::1"),
                ipv6("2001:db8:11::1"),
            ),
        ];
        for (segment, src, dst) in frames {
            let packet = Packet::new_checked(segment).unwrap();
            let repr = TcpRepr::parse(&packet).unwrap();
            let mut emitted = vec![0u8; repr.buffer_len()];
            assert_eq!(repr.emit(&mut emitted, src, dst).unwrap(), segment.len());
            assert_eq!(emitted, segment);
        }
    }

    #[test]
    fn refuses_bad_headers() {
        let segment = &LAB_IPV4_TCP_SYN[34..];
        assert!(matches!(
            Packet::new_checked(&segment[..19]),
            Err(WireError::Truncated {
                layer: Layer::Tcp,
                needed: 20,
                available: 19
            })
        ));
        assert!(matches!(
            Packet::new_checked(&segment[..39]),
            Err(WireError::Truncated {
                layer: Layer::Tcp,
                needed: 40,
                available: 39
            })
        ));
        let mut small_offset = segment.to_vec();
        small_offset[12] = 0x40;
        assert!(matches!(
            Packet::new_checked(&small_offset[..]),
            Err(WireError::Malformed { .. })
        ));
    }

    #[test]
    fn malformed_option_lengths_are_refused() {
        // Length byte 0, length running past the area, kind without a length byte.
        for options in [&[2u8, 0, 0, 0][..], &[2, 6, 5, 0xb4], &[1, 1, 1, 8]] {
            assert!(matches!(
                TcpOptions::parse(options),
                Err(WireError::Malformed {
                    layer: Layer::TcpOption,
                    ..
                })
            ));
        }
        let mut iter = TcpOptionIter::new(&[1, 2, 9]);
        assert_eq!(iter.next(), Some(Ok(TcpOption::NoOperation)));
        assert!(matches!(iter.next(), Some(Err(_))));
        assert_eq!(iter.next(), None);
    }

    #[test]
    fn unknown_and_wrong_length_options_are_kept() {
        // MSS with a 3-byte value, a TCP Fast Open cookie (34, 8 bytes of cookie), an
        // experimental option (254, magic 0xf989), then EOL padding.
        let options = [
            2, 5, 1, 2, 3, 34, 10, 1, 2, 3, 4, 5, 6, 7, 8, 254, 4, 0xf9, 0x89, 0, //
        ];
        let decoded = TcpOptions::parse(&options).unwrap();
        assert_eq!(decoded.max_segment_size, None);
        let kept: Vec<_> = decoded.unknown.iter().map(Result::unwrap).collect();
        assert_eq!(
            kept,
            vec![
                TcpOption::Unknown {
                    kind: 2,
                    data: &[1, 2, 3]
                },
                TcpOption::Unknown {
                    kind: 34,
                    data: &[1, 2, 3, 4, 5, 6, 7, 8]
                },
                TcpOption::Unknown {
                    kind: 254,
                    data: &[0xf9, 0x89]
                },
            ]
        );
        let mut emitted = [0u8; 40];
        let length = decoded.emit(&mut emitted).unwrap();
        assert_eq!(&emitted[..length], &options[..]);
    }

    #[test]
    fn repeated_known_options_are_kept_not_overwritten() {
        let options = [2, 4, 0x05, 0xb4, 2, 4, 0x02, 0x18];
        let decoded = TcpOptions::parse(&options).unwrap();
        assert_eq!(decoded.max_segment_size, Some(1460));
        assert_eq!(decoded.unknown.as_bytes(), &[2, 4, 0x02, 0x18]);
    }

    #[test]
    fn options_after_end_of_list_are_padding() {
        let decoded = TcpOptions::parse(&[0, 2, 4, 5, 0xb4]).unwrap();
        assert_eq!(decoded, TcpOptions::default());
    }

    #[test]
    fn too_many_options_are_refused_on_emit() {
        let mut options = TcpOptions {
            timestamp: Some(TcpTimestamp {
                value: 1,
                echo_reply: 2,
            }),
            ..TcpOptions::default()
        };
        for index in 0..4u32 {
            options
                .sack_blocks
                .push(SackBlock {
                    left: SeqNumber(index * 100),
                    right: SeqNumber(index * 100 + 50),
                })
                .unwrap();
        }
        assert!(options.sack_blocks.push(SackBlock::default()).is_err());
        assert_eq!(options.emitted_len(), 48);
        assert!(options.emit(&mut [0u8; 60]).is_err());
    }

    #[test]
    fn incremental_rewrites_keep_the_checksum_valid() {
        let mut segment = LAB_IPV4_TCP_SACK[34..].to_vec();
        let mut packet = Packet::new_checked(&mut segment[..]).unwrap();
        packet.rewrite_src_port(443);
        packet.rewrite_dst_port(40_000);
        packet.rewrite_seq_number(SeqNumber(0xdead_beef));
        packet.rewrite_ack_number(SeqNumber(7));
        packet.rewrite_window(1234);
        // The SACK block's left edge sits at options offset 16: translate it in place.
        packet
            .rewrite_option_bytes(16, &0x0102_0304u32.to_be_bytes())
            .unwrap();
        // An odd offset: the timestamp value's second byte.
        packet.rewrite_option_bytes(5, &[0xaa, 0xbb, 0xcc]).unwrap();
        assert!(packet.rewrite_option_bytes(20, &[0; 5]).is_err());
        let new_src = IpAddr::V4(Ipv4Addr::new(198, 18, 99, 1));
        let patched = checksum::update_ipv4_address(
            packet.checksum(),
            Ipv4Addr::new(198, 18, 11, 1),
            Ipv4Addr::new(198, 18, 99, 1),
        );
        packet.set_checksum(patched);
        assert!(packet.verify_checksum(new_src, LAB_CLIENT));
        let options = packet.parse_options().unwrap();
        assert_eq!(
            options.sack_blocks.as_slice()[0].left,
            SeqNumber(0x0102_0304)
        );
    }

    #[test]
    fn mixed_address_families_are_refused() {
        let mut segment = LAB_IPV4_TCP_SYN[34..].to_vec();
        let mut packet = Packet::new_checked(&mut segment[..]).unwrap();
        assert!(packet.fill_checksum(LAB_CLIENT, ipv6("::1")).is_err());
        assert!(!packet.verify_checksum(LAB_CLIENT, ipv6("::1")));
    }

    fn arb_options() -> impl Strategy<Value = TcpOptions> {
        (
            proptest::option::of(any::<u16>()),
            proptest::option::of(0u8..15),
            any::<bool>(),
            proptest::collection::vec((any::<u32>(), any::<u32>()), 0..=3),
            proptest::option::of((any::<u32>(), any::<u32>())),
            proptest::collection::vec(
                (9u8..=255, proptest::collection::vec(any::<u8>(), 0..4)),
                0..2,
            ),
        )
            .prop_map(
                |(mss, window_scale, sack_permitted, blocks, timestamp, unknown)| {
                    let mut options = TcpOptions {
                        max_segment_size: mss,
                        window_scale,
                        sack_permitted,
                        timestamp: timestamp
                            .map(|(value, echo_reply)| TcpTimestamp { value, echo_reply }),
                        ..TcpOptions::default()
                    };
                    // Add blocks and unknown options only while the whole still fits 40 bytes.
                    for (left, right) in blocks {
                        let mut candidate = options;
                        let block = SackBlock {
                            left: SeqNumber(left),
                            right: SeqNumber(right),
                        };
                        candidate.sack_blocks.push(block).unwrap();
                        if candidate.emitted_len() <= MAX_OPTIONS_LEN {
                            options = candidate;
                        }
                    }
                    for (kind, data) in unknown {
                        let mut candidate = options;
                        candidate.unknown.push(kind, &data).unwrap();
                        if candidate.emitted_len() <= MAX_OPTIONS_LEN {
                            options = candidate;
                        }
                    }
                    options
                },
            )
    }

    proptest! {
        #[test]
        fn emit_then_parse_round_trips(
            options in arb_options(),
            src_port in any::<u16>(), dst_port in any::<u16>(),
            seq in any::<u32>(), ack in any::<u32>(), flag_bits in 0u16..0x200,
            window in any::<u16>(), urgent in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            v6 in any::<bool>(),
        ) {
            let repr = TcpRepr {
                src_port, dst_port,
                seq_number: SeqNumber(seq), ack_number: SeqNumber(ack),
                flags: TcpFlags::from_bits(flag_bits), window, urgent_pointer: urgent,
                options, payload: &payload,
            };
            let (src, dst) = if v6 {
                (ipv6("2001:db8::1"), ipv6("2001:db8::2"))
            } else {
                (LAB_CLIENT, LAB_SERVER)
            };
            let mut buffer = vec![0u8; repr.buffer_len()];
            repr.emit(&mut buffer, src, dst).unwrap();
            // The counted length is what the options took: padding only after the last.
            let written = TcpOptionIter::new(&buffer[20..repr.header_len()])
                .flatten()
                .take_while(|option| *option != TcpOption::EndOfList)
                .map(|option| option.buffer_len())
                .sum::<usize>();
            prop_assert_eq!(written.div_ceil(4) * 4, options.emitted_len());
            let packet = Packet::new_checked(&buffer[..]).unwrap();
            prop_assert!(packet.verify_checksum(src, dst));
            prop_assert_eq!(TcpRepr::parse(&packet).unwrap(), repr);
        }

        #[test]
        fn option_parsing_never_panics(options in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = TcpOptions::parse(&options);
            // Whatever parses must emit again.
            for option in TcpOptionIter::new(&options).flatten() {
                let mut buffer = [0u8; 64];
                prop_assert!(option.emit(&mut buffer).is_ok());
            }
        }
    }
}
