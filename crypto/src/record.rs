//! The TLS record format: header, content types, nonces and additional data.

use core::fmt;

use crate::suite::{AeadAlgorithm, ProtocolVersion};

/// Length of a record header: type, version, length.
pub const HEADER_LEN: usize = 5;
/// Length of an AEAD tag (both suites the engine supports).
pub const TAG_LEN: usize = 16;
/// TLS 1.2 AES-GCM records carry an 8-byte explicit nonce before the ciphertext (RFC 5288).
pub const EXPLICIT_NONCE_LEN: usize = 8;
/// Largest plaintext fragment (2^14) and the ciphertext expansions the RFCs allow.
pub const MAX_FRAGMENT_LEN: usize = 1 << 14;
pub const MAX_BODY_LEN_TLS13: usize = MAX_FRAGMENT_LEN + 256;
pub const MAX_BODY_LEN_TLS12: usize = MAX_FRAGMENT_LEN + 2048;

/// A record's content type (the outer one in the header, or TLS 1.3's inner one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContentType {
    ChangeCipherSpec,
    Alert,
    Handshake,
    ApplicationData,
    Heartbeat,
    Unknown(u8),
}

impl From<u8> for ContentType {
    fn from(value: u8) -> Self {
        match value {
            20 => ContentType::ChangeCipherSpec,
            21 => ContentType::Alert,
            22 => ContentType::Handshake,
            23 => ContentType::ApplicationData,
            24 => ContentType::Heartbeat,
            other => ContentType::Unknown(other),
        }
    }
}

impl From<ContentType> for u8 {
    fn from(value: ContentType) -> u8 {
        match value {
            ContentType::ChangeCipherSpec => 20,
            ContentType::Alert => 21,
            ContentType::Handshake => 22,
            ContentType::ApplicationData => 23,
            ContentType::Heartbeat => 24,
            ContentType::Unknown(other) => other,
        }
    }
}

impl fmt::Display for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContentType::ChangeCipherSpec => f.write_str("change_cipher_spec"),
            ContentType::Alert => f.write_str("alert"),
            ContentType::Handshake => f.write_str("handshake"),
            ContentType::ApplicationData => f.write_str("application_data"),
            ContentType::Heartbeat => f.write_str("heartbeat"),
            ContentType::Unknown(value) => write!(f, "content type {value}"),
        }
    }
}

/// A parsed record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub content_type: ContentType,
    pub version: u16,
    pub body_len: usize,
}

/// Why a header is not one the engine can follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Not a TLS content type: the byte stream is not where the engine thinks it is.
    BadContentType(u8),
    /// Not a TLS 1.x version.
    BadVersion(u16),
    /// Longer than the protocol allows.
    TooLong(usize),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::BadContentType(value) => write!(f, "record header has content type {value}"),
            HeaderError::BadVersion(value) => write!(f, "record header has version 0x{value:04x}"),
            HeaderError::TooLong(len) => write!(f, "record length {len} exceeds the protocol limit"),
        }
    }
}

impl Header {
    /// Parses and checks a header against the stream's protocol version.
    pub fn parse(bytes: &[u8; HEADER_LEN], version: ProtocolVersion) -> Result<Header, HeaderError> {
        let content_type = bytes[0];
        if !(20..=24).contains(&content_type) {
            return Err(HeaderError::BadContentType(content_type));
        }
        let wire_version = u16::from_be_bytes([bytes[1], bytes[2]]);
        if bytes[1] != 3 || bytes[2] > 4 {
            return Err(HeaderError::BadVersion(wire_version));
        }
        let body_len = u16::from_be_bytes([bytes[3], bytes[4]]) as usize;
        let limit = match version {
            ProtocolVersion::Tls12 => MAX_BODY_LEN_TLS12,
            ProtocolVersion::Tls13 => MAX_BODY_LEN_TLS13,
        };
        if body_len > limit {
            return Err(HeaderError::TooLong(body_len));
        }
        Ok(Header { content_type: content_type.into(), version: wire_version, body_len })
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let [v0, v1] = self.version.to_be_bytes();
        let [l0, l1] = (self.body_len as u16).to_be_bytes();
        [self.content_type.into(), v0, v1, l0, l1]
    }
}

/// How records of a stream are framed: what precedes the ciphertext and how the nonce is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Framing {
    pub version: ProtocolVersion,
    pub aead: AeadAlgorithm,
}

impl Framing {
    /// Bytes between the header and the ciphertext.
    pub fn explicit_nonce_len(&self) -> usize {
        match (self.version, self.aead) {
            (ProtocolVersion::Tls12, AeadAlgorithm::Aes128Gcm | AeadAlgorithm::Aes256Gcm) => EXPLICIT_NONCE_LEN,
            _ => 0,
        }
    }

    /// Record bytes that carry no plaintext of the application stream, for a record whose
    /// ciphertext is exactly its data: header, explicit nonce, tag and TLS 1.3's inner type.
    pub fn overhead(&self) -> usize {
        let inner_type = (self.version == ProtocolVersion::Tls13) as usize;
        HEADER_LEN + self.explicit_nonce_len() + TAG_LEN + inner_type
    }

    /// The smallest valid body (TLS 1.3 always has the inner content type).
    pub fn min_body_len(&self) -> usize {
        self.explicit_nonce_len() + TAG_LEN + (self.version == ProtocolVersion::Tls13) as usize
    }

    /// The longest protected record body whose plaintext is within the limit: 2^14 bytes of
    /// plaintext (RFC 5246 6.2.1), or of TLS 1.3's inner plaintext with its type byte and
    /// padding, 2^14 + 1 (RFC 8446 5.4), plus the nonce and the tag. Every AEAD here has a
    /// 16-byte tag, so a longer body is known to overflow before it is decrypted.
    pub fn max_body_len(&self) -> usize {
        MAX_FRAGMENT_LEN + self.explicit_nonce_len() + TAG_LEN + (self.version == ProtocolVersion::Tls13) as usize
    }

    /// The per-record nonce. `explicit` is the TLS 1.2 GCM explicit nonce from the record.
    pub fn nonce(&self, iv: &[u8; 12], seq: u64, explicit: Option<&[u8; EXPLICIT_NONCE_LEN]>) -> [u8; 12] {
        let mut nonce = *iv;
        match explicit {
            Some(explicit) => nonce[4..].copy_from_slice(explicit),
            None => {
                for (byte, seq_byte) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
                    *byte ^= seq_byte;
                }
            }
        }
        nonce
    }

    /// The additional data: TLS 1.3 the header itself; TLS 1.2 `seq || type || version ||
    /// plaintext length`. Returns the buffer and the length used.
    pub fn aad(&self, header: &[u8; HEADER_LEN], seq: u64, ciphertext_len: usize) -> ([u8; 13], usize) {
        let mut aad = [0u8; 13];
        match self.version {
            ProtocolVersion::Tls13 => {
                aad[..HEADER_LEN].copy_from_slice(header);
                (aad, HEADER_LEN)
            }
            ProtocolVersion::Tls12 => {
                aad[..8].copy_from_slice(&seq.to_be_bytes());
                aad[8..11].copy_from_slice(&header[..3]);
                aad[11..].copy_from_slice(&(ciphertext_len as u16).to_be_bytes());
                (aad, 13)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parse_and_encode() {
        let header = Header::parse(&[0x17, 0x03, 0x03, 0x01, 0x02], ProtocolVersion::Tls13).unwrap();
        assert_eq!(header, Header { content_type: ContentType::ApplicationData, version: 0x0303, body_len: 258 });
        assert_eq!(header.encode(), [0x17, 0x03, 0x03, 0x01, 0x02]);
        assert_eq!(
            Header::parse(&[0x47, 0x45, 0x54, 0x20, 0x2f], ProtocolVersion::Tls12),
            Err(HeaderError::BadContentType(0x47))
        );
        assert_eq!(
            Header::parse(&[0x17, 0x03, 0x03, 0x41, 0x01], ProtocolVersion::Tls13),
            Err(HeaderError::TooLong(0x4101))
        );
        assert!(Header::parse(&[0x17, 0x03, 0x03, 0x48, 0x00], ProtocolVersion::Tls12).is_ok());
        assert_eq!(
            Header::parse(&[0x17, 0x02, 0x00, 0, 1], ProtocolVersion::Tls12),
            Err(HeaderError::BadVersion(0x0200))
        );
    }

    #[test]
    fn nonces_and_aad() {
        let framing = Framing { version: ProtocolVersion::Tls13, aead: AeadAlgorithm::Aes128Gcm };
        let iv = [0u8; 12];
        assert_eq!(framing.nonce(&iv, 0x0102, None)[10..], [1, 2]);
        let (aad, len) = framing.aad(&[23, 3, 3, 0, 20], 5, 4);
        assert_eq!(&aad[..len], &[23, 3, 3, 0, 20]);
        let framing = Framing { version: ProtocolVersion::Tls12, aead: AeadAlgorithm::Aes256Gcm };
        assert_eq!(framing.nonce(&[9; 12], 7, Some(&[1; 8]))[..], [9, 9, 9, 9, 1, 1, 1, 1, 1, 1, 1, 1]);
        let (aad, len) = framing.aad(&[23, 3, 3, 0, 40], 1, 16);
        assert_eq!(&aad[..len], &[0, 0, 0, 0, 0, 0, 0, 1, 23, 3, 3, 0, 16]);
        assert_eq!(framing.overhead(), 29);
    }
}
