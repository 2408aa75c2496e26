//! Capture files: reading classic pcap and pcapng, writing classic pcap.
//!
//! [`CaptureReader`] reads a whole capture held in memory (`&[u8]`) and yields [`Record`]s that
//! borrow their bytes from it, whichever format the file is in. pcapng Decryption Secrets Blocks
//! are collected as the reader passes them ([`CaptureReader::secrets`]); [`Capture::read`] reads
//! everything at once. Bad input gives a [`PcapError`] naming the byte offset of the record or
//! block at fault, never a panic; the iterator yields that error once and then ends, and every
//! record yielded before it stays valid.
//!
//! [`PcapWriter`] writes classic pcap with nanosecond timestamps, for the box's per-port output.
//!
//! Supported: classic pcap in both byte orders with microsecond or nanosecond magic; pcapng
//! sections in either byte order (several sections in one file), Interface Description Blocks
//! (link type, snap length, `if_tsresol`, `if_tsoffset`, `if_name`), Enhanced, Simple and
//! Obsolete Packet Blocks, Decryption Secrets Blocks. Not supported: pcapng blocks other than
//! those (name resolution, statistics, custom... are skipped unread), packet-block options
//! (skipped), compressed or modified-pcap ("Kuznetzov") files, the classic header's `thiszone`
//! (always zero in practice; ignored), writing pcapng.

mod classic;
mod pcapng;

pub use classic::PcapWriter;
pub use pcapng::{Interface, TimestampResolution};

use core::fmt;

pub use crate::wire::LinkType;

/// pcapng Decryption Secrets Block type for a TLS key log (NSS `SSLKEYLOGFILE` format), "TLSK".
pub const SECRETS_TYPE_TLS_KEY_LOG: u32 = 0x544c_534b;

/// One captured packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The pcapng interface it was captured on; 0 in classic pcap.
    pub interface: u32,
    pub link_type: LinkType,
    /// Nanoseconds since the Unix epoch (saturating at `u64::MAX`, the year 2554).
    pub timestamp_ns: u64,
    /// The captured bytes (perhaps fewer than `orig_len`, cut by the snap length).
    pub data: &'a [u8],
    /// The packet's length on the wire.
    pub orig_len: u32,
}

/// A pcapng Decryption Secrets Block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecryptionSecrets<'a> {
    /// What the secrets are: [`SECRETS_TYPE_TLS_KEY_LOG`], WireGuard, SSH...
    pub secrets_type: u32,
    pub data: &'a [u8],
    /// Byte offset of the block in the file.
    pub offset: u64,
}

impl<'a> DecryptionSecrets<'a> {
    pub fn is_tls_key_log(&self) -> bool {
        self.secrets_type == SECRETS_TYPE_TLS_KEY_LOG
    }

    /// The key-log text of a TLS key-log block; `None` for other secret types or text that is
    /// not UTF-8.
    pub fn tls_key_log(&self) -> Option<&'a str> {
        if self.is_tls_key_log() {
            core::str::from_utf8(self.data).ok()
        } else {
            None
        }
    }
}

/// Which file format a reader found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureFormat {
    Pcap { nanosecond: bool, big_endian: bool },
    PcapNg,
}

/// Why a capture could not be read (further). Offsets count bytes from the file's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PcapError {
    /// The first four bytes are neither a pcap nor a pcapng magic number.
    UnknownFormat { magic: [u8; 4] },
    /// The file ends inside the record or block that starts at `offset`.
    Truncated {
        offset: u64,
        needed: u64,
        available: u64,
    },
    /// The record or block at `offset` contradicts itself or the format.
    Corrupt { offset: u64, reason: &'static str },
    /// A packet block at `offset` names an interface its section has not described.
    UnknownInterface { offset: u64, interface: u32 },
}

impl fmt::Display for PcapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PcapError::UnknownFormat { magic } => {
                write!(f, "not a pcap or pcapng file (magic {magic:02x?})")
            }
            PcapError::Truncated {
                offset,
                needed,
                available,
            } => write!(
                f,
                "truncated at byte {offset}: the record needs {needed} bytes, {available} remain"
            ),
            PcapError::Corrupt { offset, reason } => {
                write!(f, "corrupt at byte {offset}: {reason}")
            }
            PcapError::UnknownInterface { offset, interface } => {
                write!(
                    f,
                    "block at byte {offset} names undescribed interface {interface}"
                )
            }
        }
    }
}

impl std::error::Error for PcapError {}

impl PcapError {
    /// The byte offset the error names, if any.
    pub fn offset(&self) -> Option<u64> {
        match self {
            PcapError::UnknownFormat { .. } => Some(0),
            PcapError::Truncated { offset, .. }
            | PcapError::Corrupt { offset, .. }
            | PcapError::UnknownInterface { offset, .. } => Some(*offset),
        }
    }
}

/// Reads a capture of either format from memory. Iterate over it for [`Record`]s.
#[derive(Debug, Clone)]
pub struct CaptureReader<'a> {
    format: Format<'a>,
    finished: bool,
}

#[derive(Debug, Clone)]
enum Format<'a> {
    Classic(classic::Reader<'a>),
    Ng(pcapng::Reader<'a>),
}

impl<'a> CaptureReader<'a> {
    /// Recognises the format from the file's magic number and reads the file header (for
    /// pcapng, the first section header).
    pub fn new(bytes: &'a [u8]) -> Result<CaptureReader<'a>, PcapError> {
        let format = if pcapng::is_pcapng(bytes) {
            Format::Ng(pcapng::Reader::new(bytes)?)
        } else {
            Format::Classic(classic::Reader::new(bytes)?)
        };
        Ok(CaptureReader {
            format,
            finished: false,
        })
    }

    pub fn format(&self) -> CaptureFormat {
        match &self.format {
            Format::Classic(reader) => reader.format(),
            Format::Ng(_) => CaptureFormat::PcapNg,
        }
    }

    /// The Decryption Secrets Blocks passed so far, in file order (always empty for pcap).
    pub fn secrets(&self) -> &[DecryptionSecrets<'a>] {
        match &self.format {
            Format::Classic(_) => &[],
            Format::Ng(reader) => reader.secrets(),
        }
    }

    /// The interfaces of the current pcapng section, or the single implied interface of a
    /// classic pcap file.
    pub fn interfaces(&self) -> &[Interface<'a>] {
        match &self.format {
            Format::Classic(reader) => reader.interfaces(),
            Format::Ng(reader) => reader.interfaces(),
        }
    }
}

impl<'a> Iterator for CaptureReader<'a> {
    type Item = Result<Record<'a>, PcapError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let next = match &mut self.format {
            Format::Classic(reader) => reader.next_record(),
            Format::Ng(reader) => reader.next_record(),
        };
        match next {
            Ok(Some(record)) => Some(Ok(record)),
            Ok(None) => {
                self.finished = true;
                None
            }
            Err(error) => {
                self.finished = true;
                Some(Err(error))
            }
        }
    }
}

/// A whole capture read at once: every record up to the end or the first error, every key-log
/// block, and that error.
#[derive(Debug, Clone)]
pub struct Capture<'a> {
    pub format: CaptureFormat,
    pub records: Vec<Record<'a>>,
    pub secrets: Vec<DecryptionSecrets<'a>>,
    /// Why reading stopped before the end of the file, if it did. The records before it are in
    /// `records`.
    pub error: Option<PcapError>,
}

impl<'a> Capture<'a> {
    /// Reads all of `bytes`. Fails only if the file header itself is unreadable.
    pub fn read(bytes: &'a [u8]) -> Result<Capture<'a>, PcapError> {
        let mut reader = CaptureReader::new(bytes)?;
        let mut records = Vec::new();
        let mut error = None;
        for item in reader.by_ref() {
            match item {
                Ok(record) => records.push(record),
                Err(failure) => error = Some(failure),
            }
        }
        Ok(Capture {
            format: reader.format(),
            records,
            secrets: reader.secrets().to_vec(),
            error,
        })
    }

    /// The concatenated text of every TLS key-log secrets block, in file order.
    pub fn tls_key_log(&self) -> String {
        let mut text = String::new();
        for block in &self.secrets {
            if let Some(log) = block.tls_key_log() {
                text.push_str(log);
                if !log.ends_with('\n') {
                    text.push('\n');
                }
            }
        }
        text
    }
}

/// Reads little- or big-endian integers out of a byte slice, refusing reads past its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ByteOrder {
    pub big_endian: bool,
}

impl ByteOrder {
    pub fn u16_at(self, bytes: &[u8], at: usize) -> Option<u16> {
        let raw: [u8; 2] = bytes.get(at..at.checked_add(2)?)?.try_into().ok()?;
        Some(if self.big_endian {
            u16::from_be_bytes(raw)
        } else {
            u16::from_le_bytes(raw)
        })
    }

    pub fn u32_at(self, bytes: &[u8], at: usize) -> Option<u32> {
        let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(if self.big_endian {
            u32::from_be_bytes(raw)
        } else {
            u32::from_le_bytes(raw)
        })
    }

    pub fn i64_at(self, bytes: &[u8], at: usize) -> Option<i64> {
        let raw: [u8; 8] = bytes.get(at..at.checked_add(8)?)?.try_into().ok()?;
        Some(if self.big_endian {
            i64::from_be_bytes(raw)
        } else {
            i64::from_le_bytes(raw)
        })
    }
}

#[cfg(test)]
mod real_captures;
#[cfg(test)]
mod test_files;

#[cfg(test)]
mod tests {
    use super::test_files::*;
    use super::*;
    use crate::wire::{parse_frame, NetworkPayload};
    use proptest::prelude::*;

    /// Reads a whole file: every record is inside the input, at most one error, nothing after.
    fn read_checking_invariants(bytes: &[u8]) -> Result<(), TestCaseError> {
        let Ok(reader) = CaptureReader::new(bytes) else {
            return Ok(());
        };
        let mut errors = 0;
        for item in reader {
            prop_assert_eq!(errors, 0, "an item after an error");
            match item {
                Ok(record) => {
                    prop_assert!(record.data.len() <= bytes.len());
                    let _ = parse_frame(record.link_type, record.data);
                }
                Err(_) => errors += 1,
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(
            magic in prop::sample::select(vec![
                vec![0xd4, 0xc3, 0xb2, 0xa1], vec![0xa1, 0xb2, 0x3c, 0x4d],
                vec![0x0a, 0x0d, 0x0d, 0x0a], vec![],
            ]),
            rest in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut bytes = magic;
            bytes.extend_from_slice(&rest);
            read_checking_invariants(&bytes)?;
        }

        #[test]
        fn mutated_real_files_never_panic(
            index in 0usize..3,
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        ) {
            let original: &[u8] = [
                &PCAPNG_TWO_INTERFACES_WITH_SECRETS[..],
                &CLASSIC_MICROSECOND_NULL[..],
                &CLASSIC_NANOSECOND_ETHERNET[..],
            ][index];
            let mut bytes = original.to_vec();
            for (position, value) in flips {
                let at = position.index(bytes.len());
                bytes[at] = value;
            }
            read_checking_invariants(&bytes)?;
        }
    }

    #[test]
    fn capture_read_collects_records_and_secrets() {
        let capture = Capture::read(&PCAPNG_TWO_INTERFACES_WITH_SECRETS).unwrap();
        assert_eq!(capture.format, CaptureFormat::PcapNg);
        assert_eq!(capture.records.len(), 4);
        assert_eq!(capture.error, None);
        assert_eq!(capture.tls_key_log(), "CLIENT_RANDOM 0123 4567\n");
        for record in &capture.records {
            assert!(parse_frame(record.link_type, record.data).is_ok());
        }
        let arp = parse_frame(capture.records[2].link_type, capture.records[2].data).unwrap();
        assert!(matches!(arp.network, NetworkPayload::Arp(_)));
    }

    #[test]
    fn reader_reports_format_and_interfaces() {
        let reader = CaptureReader::new(&CLASSIC_NANOSECOND_ETHERNET).unwrap();
        assert_eq!(
            reader.format(),
            CaptureFormat::Pcap {
                nanosecond: true,
                big_endian: false
            }
        );
        assert_eq!(reader.interfaces().len(), 1);
        assert_eq!(reader.interfaces()[0].link_type, LinkType::Ethernet);
        assert!(reader.secrets().is_empty());
    }

    #[test]
    fn unknown_magic_is_refused() {
        assert!(matches!(
            CaptureReader::new(b"GIF89a.."),
            Err(PcapError::UnknownFormat {
                magic: [b'G', b'I', b'F', b'8']
            })
        ));
        assert!(matches!(
            CaptureReader::new(&[0xd4, 0xc3]),
            Err(PcapError::Truncated { .. })
        ));
    }

    #[test]
    fn secrets_of_other_types_have_no_key_log() {
        let wireguard = DecryptionSecrets {
            secrets_type: 0x5747_4b4c,
            data: b"x",
            offset: 0,
        };
        assert!(!wireguard.is_tls_key_log());
        assert_eq!(wireguard.tls_key_log(), None);
        let not_utf8 = DecryptionSecrets {
            secrets_type: SECRETS_TYPE_TLS_KEY_LOG,
            data: &[0xff, 0xfe],
            offset: 0,
        };
        assert_eq!(not_utf8.tls_key_log(), None);
    }

    #[test]
    fn errors_name_their_offset() {
        let error = PcapError::Corrupt {
            offset: 136,
            reason: "x",
        };
        assert_eq!(error.offset(), Some(136));
        assert_eq!(error.to_string(), "corrupt at byte 136: x");
    }
}
