//! pcapng (draft-ietf-opsawg-pcapng): a file of blocks, each `type, total length, body, total
//! length`, grouped in sections that each begin with a Section Header Block giving the byte
//! order. Interface Description Blocks number the interfaces of their section; packet blocks
//! name one. Decryption Secrets Blocks carry key material (a TLS key log) inside the capture.
//!
//! Every block's two length fields must agree, be a multiple of 4 and fit the file; every
//! length inside a body must fit the body. Blocks of other types are skipped.

use super::{ByteOrder, DecryptionSecrets, PcapError, Record};
use crate::wire::LinkType;

/// The Section Header Block type; a palindrome, so it reads the same in both byte orders.
const BLOCK_SECTION_HEADER: u32 = 0x0a0d_0d0a;
const BLOCK_INTERFACE_DESCRIPTION: u32 = 0x0000_0001;
const BLOCK_OBSOLETE_PACKET: u32 = 0x0000_0002;
const BLOCK_SIMPLE_PACKET: u32 = 0x0000_0003;
const BLOCK_ENHANCED_PACKET: u32 = 0x0000_0006;
const BLOCK_DECRYPTION_SECRETS: u32 = 0x0000_000a;

const BYTE_ORDER_MAGIC: u32 = 0x1a2b_3c4d;
/// Type, leading length and trailing length.
const BLOCK_OVERHEAD: usize = 12;
/// Byte-order magic, version, section length.
const SECTION_HEADER_BODY_LEN: usize = 16;

const OPTION_END: u16 = 0;
const OPTION_IF_NAME: u16 = 2;
const OPTION_IF_TSRESOL: u16 = 9;
const OPTION_IF_TSOFFSET: u16 = 14;

/// True when `bytes` start with a Section Header Block.
pub(crate) fn is_pcapng(bytes: &[u8]) -> bool {
    bytes.get(..4) == Some(&BLOCK_SECTION_HEADER.to_le_bytes()[..])
}

/// The unit of an interface's timestamps (`if_tsresol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimestampResolution {
    /// 10^-n seconds (the default is 6: microseconds).
    Decimal(u8),
    /// 2^-n seconds.
    Binary(u8),
}

impl TimestampResolution {
    fn from_option(value: u8) -> TimestampResolution {
        if value & 0x80 == 0 {
            TimestampResolution::Decimal(value)
        } else {
            TimestampResolution::Binary(value & 0x7f)
        }
    }

    /// Nanoseconds for `ticks` of this unit, saturating at `u64::MAX`.
    pub fn to_nanoseconds(self, ticks: u64) -> u64 {
        let ticks = u128::from(ticks);
        let nanoseconds = match self {
            TimestampResolution::Decimal(digits) if digits <= 9 => {
                ticks * 10u128.pow(9 - u32::from(digits))
            }
            TimestampResolution::Decimal(digits) => {
                // A divisor beyond u128 (more than 38 extra digits) leaves less than a tick.
                10u128
                    .checked_pow(u32::from(digits) - 9)
                    .map_or(0, |divisor| ticks / divisor)
            }
            // `bits` is at most 127; ticks * 1e9 is below 2^94.
            TimestampResolution::Binary(bits) => (ticks * 1_000_000_000) >> bits,
        };
        u64::try_from(nanoseconds).unwrap_or(u64::MAX)
    }
}

/// What an Interface Description Block says about one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interface<'a> {
    pub link_type: LinkType,
    /// Bytes captured per packet at most; 0 means no limit.
    pub snaplen: u32,
    pub resolution: TimestampResolution,
    /// `if_tsoffset`: seconds to add to every timestamp.
    pub offset_seconds: i64,
    /// `if_name`, when present and UTF-8.
    pub name: Option<&'a str>,
}

impl Interface<'_> {
    fn timestamp_ns(&self, ticks: u64) -> u64 {
        let base = i128::from(self.resolution.to_nanoseconds(ticks));
        let shifted = base + i128::from(self.offset_seconds) * 1_000_000_000;
        u64::try_from(shifted.max(0)).unwrap_or(u64::MAX)
    }
}

/// Reads the blocks of a pcapng file held in memory.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
    order: ByteOrder,
    interfaces: Vec<Interface<'a>>,
    secrets: Vec<DecryptionSecrets<'a>>,
}

/// One block, its framing checked.
struct Block<'a> {
    offset: usize,
    block_type: u32,
    body: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads the first Section Header Block.
    pub fn new(bytes: &'a [u8]) -> Result<Reader<'a>, PcapError> {
        let mut reader = Reader {
            bytes,
            position: 0,
            order: ByteOrder { big_endian: false },
            interfaces: Vec::new(),
            secrets: Vec::new(),
        };
        let block = reader
            .next_block()?
            .ok_or(truncated(0, BLOCK_OVERHEAD, 0))?;
        if block.block_type != BLOCK_SECTION_HEADER {
            return Err(corrupt(0, "the file does not start with a section header"));
        }
        Ok(reader)
    }

    pub fn interfaces(&self) -> &[Interface<'a>] {
        &self.interfaces
    }

    pub fn secrets(&self) -> &[DecryptionSecrets<'a>] {
        &self.secrets
    }

    /// The next packet, handling the section headers, interface descriptions and secrets
    /// found on the way; `None` at a clean end of file.
    pub fn next_record(&mut self) -> Result<Option<Record<'a>>, PcapError> {
        while let Some(block) = self.next_block()? {
            let record = match block.block_type {
                BLOCK_ENHANCED_PACKET => self.enhanced_packet(&block)?,
                BLOCK_SIMPLE_PACKET => self.simple_packet(&block)?,
                BLOCK_OBSOLETE_PACKET => self.obsolete_packet(&block)?,
                BLOCK_INTERFACE_DESCRIPTION => {
                    self.interface_description(&block)?;
                    continue;
                }
                BLOCK_DECRYPTION_SECRETS => {
                    self.decryption_secrets(&block)?;
                    continue;
                }
                // Section headers are handled by `next_block`; every other type is skipped.
                _ => continue,
            };
            return Ok(Some(record));
        }
        Ok(None)
    }

    /// Frames the next block and checks its lengths. A Section Header Block switches the byte
    /// order and starts a new interface list.
    fn next_block(&mut self) -> Result<Option<Block<'a>>, PcapError> {
        let offset = self.position;
        let remaining = self.bytes.get(offset..).unwrap_or_default();
        if remaining.is_empty() {
            return Ok(None);
        }
        if remaining.len() < BLOCK_OVERHEAD {
            return Err(truncated(offset, BLOCK_OVERHEAD, remaining.len()));
        }
        let raw_type = ByteOrder { big_endian: false }
            .u32_at(remaining, 0)
            .unwrap_or_default();
        if raw_type == BLOCK_SECTION_HEADER {
            self.order = self.section_byte_order(offset, remaining)?;
        }
        let order = self.order;
        let block_type = order.u32_at(remaining, 0).unwrap_or_default();
        let total_len = order.u32_at(remaining, 4).unwrap_or_default();
        let total = usize::try_from(total_len).unwrap_or(usize::MAX);
        if total < BLOCK_OVERHEAD || total % 4 != 0 {
            return Err(corrupt(
                offset,
                "block length below 12 or not a multiple of 4",
            ));
        }
        if total > remaining.len() {
            return Err(truncated(offset, total, remaining.len()));
        }
        if order.u32_at(remaining, total - 4) != Some(total_len) {
            return Err(corrupt(
                offset,
                "block's trailing length differs from its leading one",
            ));
        }
        let block = Block {
            offset,
            block_type,
            body: &remaining[8..total - 4],
        };
        self.position = offset + total;
        if block_type == BLOCK_SECTION_HEADER {
            self.section_header(&block)?;
        }
        Ok(Some(block))
    }

    fn section_byte_order(&self, offset: usize, block: &[u8]) -> Result<ByteOrder, PcapError> {
        let little = ByteOrder { big_endian: false };
        match block.get(8..12).map(|magic| little.u32_at(magic, 0)) {
            Some(Some(BYTE_ORDER_MAGIC)) => Ok(little),
            Some(Some(magic)) if magic.swap_bytes() == BYTE_ORDER_MAGIC => {
                Ok(ByteOrder { big_endian: true })
            }
            Some(_) => Err(corrupt(
                offset,
                "section header without the byte-order magic",
            )),
            None => Err(truncated(offset, 12, block.len())),
        }
    }

    fn section_header(&mut self, block: &Block<'a>) -> Result<(), PcapError> {
        if block.body.len() < SECTION_HEADER_BODY_LEN {
            return Err(corrupt(
                block.offset,
                "section header shorter than 28 bytes",
            ));
        }
        if self.order.u16_at(block.body, 4) != Some(1) {
            return Err(corrupt(block.offset, "pcapng major version is not 1"));
        }
        self.interfaces.clear();
        Ok(())
    }

    fn interface_description(&mut self, block: &Block<'a>) -> Result<(), PcapError> {
        let body = block.body;
        let order = self.order;
        let (Some(link_type), Some(snaplen)) = (order.u16_at(body, 0), order.u32_at(body, 4))
        else {
            return Err(corrupt(
                block.offset,
                "interface description shorter than 20 bytes",
            ));
        };
        let mut interface = Interface {
            link_type: LinkType::from(u32::from(link_type)),
            snaplen,
            resolution: TimestampResolution::Decimal(6),
            offset_seconds: 0,
            name: None,
        };
        for option in Options::new(order, &body[8..], block.offset) {
            let (code, value) = option?;
            match code {
                OPTION_IF_TSRESOL => {
                    let &resolution = value
                        .first()
                        .ok_or(corrupt(block.offset, "empty if_tsresol option"))?;
                    interface.resolution = TimestampResolution::from_option(resolution);
                }
                OPTION_IF_TSOFFSET => {
                    interface.offset_seconds = order
                        .i64_at(value, 0)
                        .ok_or(corrupt(block.offset, "if_tsoffset shorter than 8 bytes"))?;
                }
                OPTION_IF_NAME => interface.name = core::str::from_utf8(value).ok(),
                _ => {}
            }
        }
        self.interfaces.push(interface);
        Ok(())
    }

    fn interface(&self, block: &Block<'a>, id: u32) -> Result<&Interface<'a>, PcapError> {
        usize::try_from(id)
            .ok()
            .and_then(|index| self.interfaces.get(index))
            .ok_or(PcapError::UnknownInterface {
                offset: block.offset as u64,
                interface: id,
            })
    }

    fn enhanced_packet(&self, block: &Block<'a>) -> Result<Record<'a>, PcapError> {
        let body = block.body;
        let order = self.order;
        let field = |at| order.u32_at(body, at);
        let (Some(id), Some(high), Some(low), Some(captured), Some(orig_len)) =
            (field(0), field(4), field(8), field(12), field(16))
        else {
            return Err(corrupt(
                block.offset,
                "enhanced packet block shorter than 32 bytes",
            ));
        };
        let interface = self.interface(block, id)?;
        let data = packet_data(body, 20, captured, block.offset)?;
        Ok(Record {
            interface: id,
            link_type: interface.link_type,
            timestamp_ns: interface.timestamp_ns((u64::from(high) << 32) | u64::from(low)),
            data,
            orig_len,
        })
    }

    fn obsolete_packet(&self, block: &Block<'a>) -> Result<Record<'a>, PcapError> {
        let body = block.body;
        let order = self.order;
        let field = |at| order.u32_at(body, at);
        let (Some(id), Some(high), Some(low), Some(captured), Some(orig_len)) = (
            order.u16_at(body, 0),
            field(4),
            field(8),
            field(12),
            field(16),
        ) else {
            return Err(corrupt(
                block.offset,
                "obsolete packet block shorter than 32 bytes",
            ));
        };
        let id = u32::from(id);
        let interface = self.interface(block, id)?;
        let data = packet_data(body, 20, captured, block.offset)?;
        Ok(Record {
            interface: id,
            link_type: interface.link_type,
            timestamp_ns: interface.timestamp_ns((u64::from(high) << 32) | u64::from(low)),
            data,
            orig_len,
        })
    }

    /// A Simple Packet Block: interface 0, no timestamp, captured length implied by the block
    /// length and interface 0's snap length.
    fn simple_packet(&self, block: &Block<'a>) -> Result<Record<'a>, PcapError> {
        let body = block.body;
        let orig_len = self.order.u32_at(body, 0).ok_or(corrupt(
            block.offset,
            "simple packet block shorter than 16 bytes",
        ))?;
        let interface = self.interface(block, 0)?;
        let room = body.len() - 4;
        let mut captured = usize::try_from(orig_len).unwrap_or(usize::MAX).min(room);
        if interface.snaplen != 0 {
            captured = captured.min(usize::try_from(interface.snaplen).unwrap_or(usize::MAX));
        }
        Ok(Record {
            interface: 0,
            link_type: interface.link_type,
            timestamp_ns: 0,
            data: &body[4..4 + captured],
            orig_len,
        })
    }

    fn decryption_secrets(&mut self, block: &Block<'a>) -> Result<(), PcapError> {
        let body = block.body;
        let (Some(secrets_type), Some(length)) =
            (self.order.u32_at(body, 0), self.order.u32_at(body, 4))
        else {
            return Err(corrupt(
                block.offset,
                "decryption secrets block shorter than 20 bytes",
            ));
        };
        let data = packet_data(body, 8, length, block.offset)?;
        self.secrets.push(DecryptionSecrets {
            secrets_type,
            data,
            offset: block.offset as u64,
        });
        Ok(())
    }
}

/// The `length` bytes at `start` of a block body, which must fit in it.
fn packet_data(body: &[u8], start: usize, length: u32, offset: usize) -> Result<&[u8], PcapError> {
    usize::try_from(length)
        .ok()
        .and_then(|length| start.checked_add(length))
        .and_then(|end| body.get(start..end))
        .ok_or(corrupt(offset, "captured length runs past the block"))
}

/// Iterates over a block's options: `(code, value)` until `opt_endofopt` or the end.
struct Options<'a> {
    order: ByteOrder,
    remaining: &'a [u8],
    block_offset: usize,
}

impl<'a> Options<'a> {
    fn new(order: ByteOrder, options: &'a [u8], block_offset: usize) -> Options<'a> {
        Options {
            order,
            remaining: options,
            block_offset,
        }
    }
}

impl<'a> Iterator for Options<'a> {
    type Item = Result<(u16, &'a [u8]), PcapError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (Some(code), Some(length)) = (
            self.order.u16_at(self.remaining, 0),
            self.order.u16_at(self.remaining, 2),
        ) else {
            // Fewer than 4 bytes left: the options end (a block without opt_endofopt).
            return None;
        };
        if code == OPTION_END {
            return None;
        }
        let length = usize::from(length);
        let padded = length.div_ceil(4) * 4;
        let Some(value) = self.remaining.get(4..4 + length) else {
            self.remaining = &[];
            return Some(Err(corrupt(
                self.block_offset,
                "option runs past its block",
            )));
        };
        self.remaining = self.remaining.get(4 + padded..).unwrap_or_default();
        Some(Ok((code, value)))
    }
}

fn truncated(offset: usize, needed: usize, available: usize) -> PcapError {
    PcapError::Truncated {
        offset: offset as u64,
        needed: needed as u64,
        available: available as u64,
    }
}

fn corrupt(offset: usize, reason: &'static str) -> PcapError {
    PcapError::Corrupt {
        offset: offset as u64,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pcap::test_files::PCAPNG_TWO_INTERFACES_WITH_SECRETS;
    use crate::pcap::{CaptureReader, SECRETS_TYPE_TLS_KEY_LOG};

    /// Builds pcapng blocks by hand, in either byte order.
    struct Builder {
        big_endian: bool,
        bytes: Vec<u8>,
    }

    impl Builder {
        fn new(big_endian: bool) -> Builder {
            let mut builder = Builder {
                big_endian,
                bytes: Vec::new(),
            };
            builder.section_header();
            builder
        }

        fn u16(&self, value: u16) -> [u8; 2] {
            if self.big_endian {
                value.to_be_bytes()
            } else {
                value.to_le_bytes()
            }
        }

        fn u32(&self, value: u32) -> [u8; 4] {
            if self.big_endian {
                value.to_be_bytes()
            } else {
                value.to_le_bytes()
            }
        }

        fn block(&mut self, block_type: u32, body: &[u8]) -> &mut Builder {
            let mut padded = body.to_vec();
            padded.resize(body.len().div_ceil(4) * 4, 0);
            let total = (padded.len() + BLOCK_OVERHEAD) as u32;
            let (type_bytes, total_bytes) = (self.u32(block_type), self.u32(total));
            self.bytes.extend_from_slice(&type_bytes);
            self.bytes.extend_from_slice(&total_bytes);
            self.bytes.extend_from_slice(&padded);
            self.bytes.extend_from_slice(&total_bytes);
            self
        }

        fn section_header(&mut self) -> &mut Builder {
            let mut body = self.u32(BYTE_ORDER_MAGIC).to_vec();
            body.extend_from_slice(&self.u16(1));
            body.extend_from_slice(&self.u16(0));
            body.extend_from_slice(&[0xff; 8]);
            self.block(BLOCK_SECTION_HEADER, &body)
        }

        fn interface(
            &mut self,
            link_type: u16,
            snaplen: u32,
            options: &[(u16, &[u8])],
        ) -> &mut Builder {
            let mut body = self.u16(link_type).to_vec();
            body.extend_from_slice(&[0, 0]);
            body.extend_from_slice(&self.u32(snaplen));
            for (code, value) in options {
                body.extend_from_slice(&self.u16(*code));
                body.extend_from_slice(&self.u16(value.len() as u16));
                body.extend_from_slice(value);
                body.resize(body.len().div_ceil(4) * 4, 0);
            }
            body.extend_from_slice(&[0, 0, 0, 0]);
            self.block(BLOCK_INTERFACE_DESCRIPTION, &body)
        }

        fn enhanced(
            &mut self,
            interface: u32,
            ticks: u64,
            data: &[u8],
            orig_len: u32,
        ) -> &mut Builder {
            let mut body = self.u32(interface).to_vec();
            body.extend_from_slice(&self.u32((ticks >> 32) as u32));
            body.extend_from_slice(&self.u32(ticks as u32));
            body.extend_from_slice(&self.u32(data.len() as u32));
            body.extend_from_slice(&self.u32(orig_len));
            body.extend_from_slice(data);
            self.block(BLOCK_ENHANCED_PACKET, &body)
        }

        fn obsolete(&mut self, interface: u16, ticks: u64, data: &[u8]) -> &mut Builder {
            let mut body = self.u16(interface).to_vec();
            body.extend_from_slice(&self.u16(0));
            body.extend_from_slice(&self.u32((ticks >> 32) as u32));
            body.extend_from_slice(&self.u32(ticks as u32));
            body.extend_from_slice(&self.u32(data.len() as u32));
            body.extend_from_slice(&self.u32(data.len() as u32));
            body.extend_from_slice(data);
            self.block(BLOCK_OBSOLETE_PACKET, &body)
        }

        fn simple(&mut self, data: &[u8], orig_len: u32) -> &mut Builder {
            let mut body = self.u32(orig_len).to_vec();
            body.extend_from_slice(data);
            self.block(BLOCK_SIMPLE_PACKET, &body)
        }

        fn secrets(&mut self, secrets_type: u32, data: &[u8]) -> &mut Builder {
            let mut body = self.u32(secrets_type).to_vec();
            body.extend_from_slice(&self.u32(data.len() as u32));
            body.extend_from_slice(data);
            self.block(BLOCK_DECRYPTION_SECRETS, &body)
        }
    }

    fn read_all(bytes: &[u8]) -> (Vec<Record<'_>>, Option<PcapError>, usize) {
        let mut reader = CaptureReader::new(bytes).unwrap();
        let mut records = Vec::new();
        let mut error = None;
        for item in reader.by_ref() {
            match item {
                Ok(record) => records.push(record),
                Err(failure) => error = Some(failure),
            }
        }
        (records, error, reader.secrets().len())
    }

    #[test]
    fn reads_real_file_with_two_interfaces_and_secrets() {
        // tshark: frames 1-2 on interface 0 at 1648774116.286233/.286308 (68 bytes), frames 3-4
        // on interface 1 at 1795450456.191908000/.191934000 (42 bytes).
        let mut reader = CaptureReader::new(&PCAPNG_TWO_INTERFACES_WITH_SECRETS).unwrap();
        let records: Vec<_> = reader.by_ref().map(Result::unwrap).collect();
        assert_eq!(records.len(), 4);
        let summary: Vec<_> = records
            .iter()
            .map(|record| {
                (
                    record.interface,
                    record.link_type,
                    record.timestamp_ns,
                    record.data.len(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, LinkType::Null, 1_648_774_116_286_233_000, 68),
                (0, LinkType::Null, 1_648_774_116_286_308_000, 68),
                (1, LinkType::Ethernet, 1_795_450_456_191_908_000, 42),
                (1, LinkType::Ethernet, 1_795_450_456_191_934_000, 42),
            ]
        );
        assert_eq!(reader.interfaces().len(), 2);
        assert_eq!(
            reader.interfaces()[1].resolution,
            TimestampResolution::Decimal(9)
        );
        let secrets = reader.secrets();
        assert_eq!(secrets.len(), 1);
        assert_eq!(secrets[0].secrets_type, SECRETS_TYPE_TLS_KEY_LOG);
        assert_eq!(secrets[0].offset, 136);
        assert_eq!(secrets[0].tls_key_log(), Some("CLIENT_RANDOM 0123 4567\n"));
    }

    #[test]
    fn truncation_at_every_offset_keeps_earlier_records() {
        let file = &PCAPNG_TWO_INTERFACES_WITH_SECRETS;
        let (all, _, _) = read_all(file);
        for cut in 0..file.len() {
            let bytes = &file[..cut];
            let Ok(reader) = CaptureReader::new(bytes) else {
                continue;
            };
            let mut records = Vec::new();
            let mut errors = Vec::new();
            for item in reader {
                match item {
                    Ok(record) => records.push(record),
                    Err(error) => errors.push(error),
                }
            }
            assert!(errors.len() <= 1);
            assert_eq!(records[..], all[..records.len()], "cut at {cut}");
            let ends_on_a_block = errors.is_empty();
            if !ends_on_a_block {
                let offset = errors[0].offset().unwrap() as usize;
                assert!(
                    offset < cut,
                    "error offset {offset} inside the file cut at {cut}"
                );
                assert!(
                    matches!(errors[0], PcapError::Truncated { .. }),
                    "{:?}",
                    errors[0]
                );
            }
        }
    }

    #[test]
    fn reads_big_endian_sections_and_every_packet_block() {
        for big_endian in [false, true] {
            let mut builder = Builder::new(big_endian);
            builder
                .interface(
                    1,
                    0,
                    &[(OPTION_IF_TSRESOL, &[3]), (OPTION_IF_NAME, b"outside")],
                )
                .secrets(SECRETS_TYPE_TLS_KEY_LOG, b"CLIENT_RANDOM aa bb\n")
                .enhanced(0, 1_500, &[1, 2, 3, 4, 5], 60)
                .simple(&[6, 7, 8], 3)
                .obsolete(0, 2_000, &[9, 10])
                .block(0x0000_0bad, &[0xee; 7])
                .enhanced(0, 0, &[11], 1);
            let (records, error, secrets) = read_all(&builder.bytes);
            assert_eq!(error, None);
            assert_eq!(secrets, 1);
            let summary: Vec<_> = records
                .iter()
                .map(|record| (record.timestamp_ns, record.data, record.orig_len))
                .collect();
            assert_eq!(
                summary,
                vec![
                    (1_500_000_000, &[1u8, 2, 3, 4, 5][..], 60),
                    (0, &[6, 7, 8][..], 3),
                    (2_000_000_000, &[9, 10][..], 2),
                    (0, &[11][..], 1),
                ]
            );
            let mut reader = CaptureReader::new(&builder.bytes).unwrap();
            assert!(reader.next().is_some());
            let interface = reader.interfaces()[0];
            assert_eq!(interface.name, Some("outside"));
            assert_eq!(interface.resolution, TimestampResolution::Decimal(3));
        }
    }

    #[test]
    fn interface_names_and_offsets_are_read() {
        let mut builder = Builder::new(false);
        builder.interface(
            1,
            65535,
            &[
                (OPTION_IF_NAME, b"inside"),
                (OPTION_IF_TSOFFSET, &10i64.to_le_bytes()),
            ],
        );
        builder.enhanced(0, 1, &[0], 1);
        let mut reader = CaptureReader::new(&builder.bytes).unwrap();
        let record = reader.next().unwrap().unwrap();
        assert_eq!(record.timestamp_ns, 10_000_001_000);
        assert_eq!(reader.interfaces()[0].name, Some("inside"));
        assert_eq!(reader.interfaces()[0].snaplen, 65535);
    }

    #[test]
    fn simple_packet_respects_the_snap_length() {
        let mut builder = Builder::new(false);
        builder
            .interface(1, 4, &[])
            .simple(&[1, 2, 3, 4, 5, 6, 7, 8], 8);
        let (records, error, _) = read_all(&builder.bytes);
        assert_eq!(error, None);
        assert_eq!(records[0].data, &[1, 2, 3, 4]);
        assert_eq!(records[0].orig_len, 8);
    }

    #[test]
    fn a_new_section_resets_the_interfaces() {
        let mut builder = Builder::new(false);
        builder
            .interface(1, 0, &[])
            .enhanced(0, 0, &[1], 1)
            .section_header()
            .enhanced(0, 0, &[2], 1);
        let (records, error, _) = read_all(&builder.bytes);
        assert_eq!(records.len(), 1);
        // Section header 28 bytes, interface 24, packet 36.
        let second_section_at = 28 + 24 + 36;
        assert_eq!(
            error,
            Some(PcapError::UnknownInterface {
                offset: (second_section_at + 28) as u64,
                interface: 0
            })
        );
    }

    #[test]
    fn sections_may_change_byte_order() {
        let mut little = Builder::new(false);
        little.interface(1, 0, &[]).enhanced(0, 0, &[1], 1);
        let mut big = Builder::new(true);
        big.interface(113, 0, &[]).enhanced(0, 0, &[2], 1);
        let mut file = little.bytes.clone();
        file.extend_from_slice(&big.bytes);
        let (records, error, _) = read_all(&file);
        assert_eq!(error, None);
        assert_eq!(
            records
                .iter()
                .map(|record| record.link_type)
                .collect::<Vec<_>>(),
            vec![LinkType::Ethernet, LinkType::LinuxSll]
        );
    }

    #[test]
    fn corrupt_blocks_are_reported_at_their_offset() {
        let mut builder = Builder::new(false);
        builder.interface(1, 0, &[]).enhanced(0, 0, &[1, 2, 3], 3);
        let packet_at = 28 + 24;

        let mut mismatched = builder.bytes.clone();
        let last = mismatched.len() - 4;
        mismatched[last] ^= 4;
        let (records, error, _) = read_all(&mismatched);
        assert!(records.is_empty());
        assert!(
            matches!(error, Some(PcapError::Corrupt { offset, .. }) if offset == packet_at as u64)
        );

        let mut overlong_capture = builder.bytes.clone();
        overlong_capture[packet_at + 20] = 200;
        let (_, error, _) = read_all(&overlong_capture);
        assert!(
            matches!(error, Some(PcapError::Corrupt { offset, .. }) if offset == packet_at as u64)
        );

        let mut odd_length = builder.bytes.clone();
        odd_length[packet_at + 4] = 13;
        let (_, error, _) = read_all(&odd_length);
        assert!(matches!(error, Some(PcapError::Corrupt { .. })));

        let mut bad_interface = builder.bytes.clone();
        bad_interface[packet_at + 8] = 7;
        let (_, error, _) = read_all(&bad_interface);
        assert_eq!(
            error,
            Some(PcapError::UnknownInterface {
                offset: packet_at as u64,
                interface: 7
            })
        );

        let mut bad_magic = builder.bytes.clone();
        bad_magic[8] = 0;
        assert!(matches!(
            CaptureReader::new(&bad_magic),
            Err(PcapError::Corrupt { offset: 0, .. })
        ));

        let mut bad_version = builder.bytes.clone();
        bad_version[12] = 2;
        assert!(matches!(
            CaptureReader::new(&bad_version),
            Err(PcapError::Corrupt { offset: 0, .. })
        ));

        let mut bad_option = Builder::new(false);
        bad_option.interface(1, 0, &[(OPTION_IF_TSRESOL, &[])]);
        let (_, error, _) = read_all(&bad_option.bytes);
        assert!(matches!(error, Some(PcapError::Corrupt { offset: 28, .. })));
    }

    #[test]
    fn timestamp_resolutions_convert_to_nanoseconds() {
        assert_eq!(TimestampResolution::Decimal(6).to_nanoseconds(7), 7_000);
        assert_eq!(TimestampResolution::Decimal(9).to_nanoseconds(7), 7);
        assert_eq!(TimestampResolution::Decimal(12).to_nanoseconds(7_000), 7);
        assert_eq!(
            TimestampResolution::Decimal(127).to_nanoseconds(u64::MAX),
            0
        );
        assert_eq!(
            TimestampResolution::Binary(10).to_nanoseconds(1024),
            1_000_000_000
        );
        assert_eq!(
            TimestampResolution::Binary(0).to_nanoseconds(u64::MAX),
            u64::MAX
        );
        assert_eq!(
            TimestampResolution::from_option(0x8a),
            TimestampResolution::Binary(10)
        );
    }
}
