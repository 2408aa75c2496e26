//! Classic pcap (libpcap's format): a 24-byte file header, then records of a 16-byte header
//! and the captured bytes. The magic number 0xa1b2c3d4 (microseconds) or 0xa1b23c4d
//! (nanoseconds), read in either byte order, gives both the timestamp resolution and the byte
//! order of every other field.

use std::io::{self, Write};

use super::pcapng::{Interface, TimestampResolution};
use super::{ByteOrder, CaptureFormat, PcapError, Record};
use crate::wire::LinkType;

const MAGIC_MICROSECONDS: u32 = 0xa1b2_c3d4;
const MAGIC_NANOSECONDS: u32 = 0xa1b2_3c4d;
const FILE_HEADER_LEN: usize = 24;
const RECORD_HEADER_LEN: usize = 16;
/// The snap length [`PcapWriter`] declares: tcpdump's default, larger than any frame it writes.
const WRITER_SNAPLEN: u32 = 262_144;

/// Byte offsets in the file header.
mod header_field {
    pub const VERSION_MAJOR: usize = 4;
    pub const SNAPLEN: usize = 16;
    /// Link type in the low 16 bits; FCS information above (draft-ietf-opsawg-pcap).
    pub const LINK_TYPE: usize = 20;
}

/// Byte offsets in a record header.
mod record_field {
    pub const SECONDS: usize = 0;
    pub const FRACTION: usize = 4;
    pub const CAPTURED_LEN: usize = 8;
    pub const ORIGINAL_LEN: usize = 12;
}

/// Reads the records of a classic pcap file held in memory.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
    order: ByteOrder,
    nanosecond: bool,
    interface: [Interface<'a>; 1],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Result<Reader<'a>, PcapError> {
        let magic_bytes: [u8; 4] = bytes
            .get(..4)
            .and_then(|raw| raw.try_into().ok())
            .ok_or(truncated(0, 4, bytes.len()))?;
        let (order, nanosecond) = match (
            u32::from_le_bytes(magic_bytes),
            u32::from_be_bytes(magic_bytes),
        ) {
            (MAGIC_MICROSECONDS, _) => (ByteOrder { big_endian: false }, false),
            (MAGIC_NANOSECONDS, _) => (ByteOrder { big_endian: false }, true),
            (_, MAGIC_MICROSECONDS) => (ByteOrder { big_endian: true }, false),
            (_, MAGIC_NANOSECONDS) => (ByteOrder { big_endian: true }, true),
            _ => return Err(PcapError::UnknownFormat { magic: magic_bytes }),
        };
        if bytes.len() < FILE_HEADER_LEN {
            return Err(truncated(0, FILE_HEADER_LEN, bytes.len()));
        }
        let header_u32 = |at| order.u32_at(bytes, at).unwrap_or_default();
        let version_major = order
            .u16_at(bytes, header_field::VERSION_MAJOR)
            .unwrap_or_default();
        if version_major != 2 {
            return Err(PcapError::Corrupt {
                offset: 0,
                reason: "pcap major version is not 2",
            });
        }
        let link_type = LinkType::from(header_u32(header_field::LINK_TYPE) & 0xffff);
        let interface = Interface {
            link_type,
            snaplen: header_u32(header_field::SNAPLEN),
            resolution: if nanosecond {
                TimestampResolution::Decimal(9)
            } else {
                TimestampResolution::Decimal(6)
            },
            offset_seconds: 0,
            name: None,
        };
        Ok(Reader {
            bytes,
            position: FILE_HEADER_LEN,
            order,
            nanosecond,
            interface: [interface],
        })
    }

    pub fn format(&self) -> CaptureFormat {
        CaptureFormat::Pcap {
            nanosecond: self.nanosecond,
            big_endian: self.order.big_endian,
        }
    }

    pub fn interfaces(&self) -> &[Interface<'a>] {
        &self.interface
    }

    /// The next record, `None` at a clean end of file.
    pub fn next_record(&mut self) -> Result<Option<Record<'a>>, PcapError> {
        let start = self.position;
        let remaining = self.bytes.get(start..).unwrap_or_default();
        if remaining.is_empty() {
            return Ok(None);
        }
        if remaining.len() < RECORD_HEADER_LEN {
            return Err(truncated(start, RECORD_HEADER_LEN, remaining.len()));
        }
        let field = |at| self.order.u32_at(remaining, at).unwrap_or_default();
        let seconds = field(record_field::SECONDS);
        let fraction = field(record_field::FRACTION);
        let captured_len = field(record_field::CAPTURED_LEN);
        let orig_len = field(record_field::ORIGINAL_LEN);
        let record_len = usize::try_from(captured_len)
            .ok()
            .and_then(|len| len.checked_add(RECORD_HEADER_LEN))
            .unwrap_or(usize::MAX);
        let data = remaining
            .get(RECORD_HEADER_LEN..record_len)
            .ok_or(truncated(start, record_len, remaining.len()))?;
        let fraction_ns = if self.nanosecond {
            u64::from(fraction)
        } else {
            u64::from(fraction) * 1_000
        };
        // u32 seconds * 1e9 + a u32 fraction * 1000 stays below 2^63: no overflow.
        let timestamp_ns = u64::from(seconds) * 1_000_000_000 + fraction_ns;
        self.position = start + record_len;
        Ok(Some(Record {
            interface: 0,
            link_type: self.interface[0].link_type,
            timestamp_ns,
            data,
            orig_len,
        }))
    }
}

fn truncated(offset: usize, needed: usize, available: usize) -> PcapError {
    PcapError::Truncated {
        offset: offset as u64,
        needed: needed as u64,
        available: available as u64,
    }
}

/// Writes a classic pcap file, little-endian with nanosecond timestamps.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    writer: W,
    link_type: LinkType,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header for frames of `link_type` (Ethernet for what the box emits).
    pub fn new(mut writer: W, link_type: LinkType) -> io::Result<PcapWriter<W>> {
        let mut header = [0u8; FILE_HEADER_LEN];
        header[0..4].copy_from_slice(&MAGIC_NANOSECONDS.to_le_bytes());
        header[4..6].copy_from_slice(&2u16.to_le_bytes());
        header[6..8].copy_from_slice(&4u16.to_le_bytes());
        // thiszone and sigfigs stay zero.
        header[16..20].copy_from_slice(&WRITER_SNAPLEN.to_le_bytes());
        header[20..24].copy_from_slice(&u32::from(link_type).to_le_bytes());
        writer.write_all(&header)?;
        Ok(PcapWriter { writer, link_type })
    }

    pub fn link_type(&self) -> LinkType {
        self.link_type
    }

    /// Appends one frame captured whole (its original length is its length).
    pub fn write_frame(&mut self, timestamp_ns: u64, frame: &[u8]) -> io::Result<()> {
        let length = u32::try_from(frame.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame above 4 GiB"))?;
        self.write_record(timestamp_ns, frame, length)
    }

    /// Appends one record of `data`, whose length on the wire was `orig_len`. Timestamps past
    /// 2106 (beyond the format's 32-bit seconds) are refused.
    pub fn write_record(
        &mut self,
        timestamp_ns: u64,
        data: &[u8],
        orig_len: u32,
    ) -> io::Result<()> {
        let seconds = u32::try_from(timestamp_ns / 1_000_000_000).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "timestamp beyond the year 2106",
            )
        })?;
        // Below 1e9, so it fits.
        let nanoseconds = (timestamp_ns % 1_000_000_000) as u32;
        let captured_len = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record above 4 GiB"))?;
        let mut header = [0u8; RECORD_HEADER_LEN];
        header[0..4].copy_from_slice(&seconds.to_le_bytes());
        header[4..8].copy_from_slice(&nanoseconds.to_le_bytes());
        header[8..12].copy_from_slice(&captured_len.to_le_bytes());
        header[12..16].copy_from_slice(&orig_len.max(captured_len).to_le_bytes());
        self.writer.write_all(&header)?;
        self.writer.write_all(data)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }

    pub fn into_inner(self) -> W {
        self.writer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pcap::test_files::{CLASSIC_MICROSECOND_NULL, CLASSIC_NANOSECOND_ETHERNET};
    use crate::pcap::CaptureReader;

    fn read_all(bytes: &[u8]) -> (Vec<Record<'_>>, Option<PcapError>) {
        let mut records = Vec::new();
        let mut error = None;
        for item in CaptureReader::new(bytes).unwrap() {
            match item {
                Ok(record) => records.push(record),
                Err(failure) => error = Some(failure),
            }
        }
        (records, error)
    }

    /// The same file with every header field byte-swapped: what a big-endian host writes.
    fn to_big_endian(little: &[u8]) -> Vec<u8> {
        let mut big = little.to_vec();
        let swap = |bytes: &mut [u8], at: usize, width: usize| bytes[at..at + width].reverse();
        for (at, width) in [(0, 4), (4, 2), (6, 2), (8, 4), (12, 4), (16, 4), (20, 4)] {
            swap(&mut big, at, width);
        }
        let mut position = FILE_HEADER_LEN;
        while position < big.len() {
            let captured =
                u32::from_le_bytes(little[position + 8..position + 12].try_into().unwrap());
            for at in [0, 4, 8, 12] {
                swap(&mut big, position + at, 4);
            }
            position += RECORD_HEADER_LEN + captured as usize;
        }
        big
    }

    #[test]
    fn reads_real_microsecond_file() {
        // tshark: two 68-byte LINKTYPE_NULL frames at 1648774116.286233 and .286308.
        let (records, error) = read_all(&CLASSIC_MICROSECOND_NULL);
        assert_eq!(error, None);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].link_type, LinkType::Null);
        assert_eq!(records[0].timestamp_ns, 1_648_774_116_286_233_000);
        assert_eq!(records[1].timestamp_ns, 1_648_774_116_286_308_000);
        assert_eq!(records[0].data.len(), 68);
        assert_eq!(records[0].orig_len, 68);
        assert_eq!(records[0].data[..4], [2, 0, 0, 0]);
        let reader = CaptureReader::new(&CLASSIC_MICROSECOND_NULL).unwrap();
        assert_eq!(reader.interfaces()[0].snaplen, 262_144);
    }

    #[test]
    fn reads_real_nanosecond_file() {
        let (records, error) = read_all(&CLASSIC_NANOSECOND_ETHERNET);
        assert_eq!(error, None);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].link_type, LinkType::Ethernet);
        assert_eq!(records[0].timestamp_ns, 1_795_450_456_191_908_000);
        assert_eq!(records[1].timestamp_ns, 1_795_450_456_191_934_000);
        assert_eq!(records[1].data.len(), 42);
    }

    #[test]
    fn reads_big_endian_files() {
        for little in [
            &CLASSIC_MICROSECOND_NULL[..],
            &CLASSIC_NANOSECOND_ETHERNET[..],
        ] {
            let big = to_big_endian(little);
            let reader = CaptureReader::new(&big).unwrap();
            assert!(matches!(
                reader.format(),
                CaptureFormat::Pcap {
                    big_endian: true,
                    ..
                }
            ));
            let (from_big, error) = read_all(&big);
            assert_eq!(error, None);
            assert_eq!(from_big, read_all(little).0);
        }
    }

    #[test]
    fn truncation_at_every_offset_is_reported_with_its_offset() {
        let file = &CLASSIC_MICROSECOND_NULL;
        let second_record_at = FILE_HEADER_LEN + RECORD_HEADER_LEN + 68;
        for cut in 0..file.len() {
            let bytes = &file[..cut];
            let Ok(reader) = CaptureReader::new(bytes) else {
                assert!(cut < FILE_HEADER_LEN, "header refused at {cut}");
                continue;
            };
            assert!(cut >= FILE_HEADER_LEN);
            let items: Vec<_> = reader.collect();
            let records = items.iter().filter(|item| item.is_ok()).count();
            let errors: Vec<_> = items.iter().filter_map(|item| item.err()).collect();
            match cut {
                FILE_HEADER_LEN => assert_eq!((records, errors.len()), (0, 0)),
                _ if cut == second_record_at => assert_eq!((records, errors.len()), (1, 0)),
                _ if cut < second_record_at => {
                    assert_eq!(records, 0);
                    assert_eq!(errors[0].offset(), Some(FILE_HEADER_LEN as u64));
                }
                _ => {
                    assert_eq!(records, 1, "the first record survives a cut at {cut}");
                    assert_eq!(errors[0].offset(), Some(second_record_at as u64));
                }
            }
            assert!(matches!(
                items.last(),
                None | Some(Ok(_)) | Some(Err(PcapError::Truncated { .. }))
            ));
        }
    }

    #[test]
    fn bad_version_is_refused() {
        let mut file = CLASSIC_NANOSECOND_ETHERNET;
        file[4] = 3;
        assert!(matches!(
            CaptureReader::new(&file),
            Err(PcapError::Corrupt { offset: 0, .. })
        ));
    }

    #[test]
    fn writer_output_reads_back_and_matches_editcap() {
        let mut writer = PcapWriter::new(Vec::new(), LinkType::Ethernet).unwrap();
        let (records, _) = read_all(&CLASSIC_NANOSECOND_ETHERNET);
        for record in &records {
            writer
                .write_frame(record.timestamp_ns, record.data)
                .unwrap();
        }
        writer.flush().unwrap();
        assert_eq!(writer.link_type(), LinkType::Ethernet);
        let written = writer.into_inner();
        // editcap wrote the same header fields (magic, 2.4, snaplen 262144, Ethernet) and
        // the same records.
        assert_eq!(written, CLASSIC_NANOSECOND_ETHERNET);
        let (read_back, error) = read_all(&written);
        assert_eq!(error, None);
        assert_eq!(read_back, records);
    }

    #[test]
    fn writer_refuses_timestamps_past_2106() {
        let mut writer = PcapWriter::new(Vec::new(), LinkType::Ethernet).unwrap();
        assert!(writer.write_frame(u64::MAX, &[0u8; 14]).is_err());
        writer.write_record(5_000_000_001, &[1, 2, 3], 60).unwrap();
        let written = writer.into_inner();
        let (records, _) = read_all(&written);
        assert_eq!(records[0].timestamp_ns, 5_000_000_001);
        assert_eq!(records[0].orig_len, 60);
    }
}
