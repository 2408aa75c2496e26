//! The handshake messages `cutls decrypt` reads, as far as it needs them: the ClientHello's
//! random and whether it offers early data, the ServerHello's random, version and suite (and
//! whether it is a HelloRetryRequest), and the message types that change keys.
//!
//! Messages are taken from a byte buffer that collects one direction's handshake records (they
//! may span records, and records may span segments); [`next_message`] takes whole messages off
//! its front. Every length is checked; a malformed message is an error, never a panic.

/// Handshake message types (RFC 8446 section 4, RFC 5246 section 7.4).
pub const HELLO_REQUEST: u8 = 0;
pub const CLIENT_HELLO: u8 = 1;
pub const SERVER_HELLO: u8 = 2;
pub const END_OF_EARLY_DATA: u8 = 5;
pub const FINISHED: u8 = 20;
pub const KEY_UPDATE: u8 = 24;

/// Largest handshake message kept (certificate chains are the big ones).
pub const MAX_MESSAGE_LEN: usize = 1 << 18;

const EXT_SUPPORTED_VERSIONS: u16 = 43;
const EXT_EARLY_DATA: u16 = 42;

/// The SHA-256 of "HelloRetryRequest" that a HelloRetryRequest carries as its random.
const HELLO_RETRY_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91, 0xc2, 0xa2,
    0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

#[derive(Debug, PartialEq, Eq)]
pub struct ClientHello {
    pub random: [u8; 32],
    pub offers_early_data: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub struct ServerHello {
    pub random: [u8; 32],
    /// The negotiated version: supported_versions if present, else the legacy field.
    pub version: u16,
    pub suite: u16,
    /// TLS 1.2 compression method (0 null, 1 DEFLATE).
    pub compression: u8,
    pub is_hello_retry_request: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

/// Takes one whole message off the front of `buffer`: `(type, body)` and the bytes used, or
/// `None` if the message is not complete yet.
pub fn next_message(buffer: &[u8]) -> Result<Option<(u8, &[u8], usize)>, Malformed> {
    if buffer.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([0, buffer[1], buffer[2], buffer[3]]) as usize;
    if len > MAX_MESSAGE_LEN {
        return Err(Malformed("handshake message longer than 256 KiB"));
    }
    if buffer.len() < 4 + len {
        return Ok(None);
    }
    Ok(Some((buffer[0], &buffer[4..4 + len], 4 + len)))
}

/// A cursor over a message body with checked reads.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.bytes.len() < n {
            return Err(Malformed("handshake message truncated"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Malformed> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn vector_u8(&mut self) -> Result<&'a [u8], Malformed> {
        let len = self.u8()? as usize;
        self.take(len)
    }

    fn vector_u16(&mut self) -> Result<&'a [u8], Malformed> {
        let len = self.u16()? as usize;
        self.take(len)
    }

    fn random(&mut self) -> Result<[u8; 32], Malformed> {
        let mut random = [0u8; 32];
        random.copy_from_slice(self.take(32)?);
        Ok(random)
    }
}

/// Extensions as (type, body) pairs; an absent extensions block is empty.
fn extensions(reader: &mut Reader<'_>) -> Result<Vec<(u16, Vec<u8>)>, Malformed> {
    if reader.bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut block = Reader { bytes: reader.vector_u16()? };
    let mut list = Vec::new();
    while !block.bytes.is_empty() {
        let kind = block.u16()?;
        let body = block.vector_u16()?;
        list.push((kind, body.to_vec()));
    }
    Ok(list)
}

pub fn parse_client_hello(body: &[u8]) -> Result<ClientHello, Malformed> {
    let mut reader = Reader { bytes: body };
    reader.u16()?; // legacy_version
    let random = reader.random()?;
    reader.vector_u8()?; // session id
    reader.vector_u16()?; // cipher suites
    reader.vector_u8()?; // compression methods
    let offers_early_data = extensions(&mut reader)?.iter().any(|(kind, _)| *kind == EXT_EARLY_DATA);
    Ok(ClientHello { random, offers_early_data })
}

pub fn parse_server_hello(body: &[u8]) -> Result<ServerHello, Malformed> {
    let mut reader = Reader { bytes: body };
    let legacy_version = reader.u16()?;
    let random = reader.random()?;
    reader.vector_u8()?; // session id
    let suite = reader.u16()?;
    let compression = reader.u8()?;
    let mut version = legacy_version;
    for (kind, body) in extensions(&mut reader)? {
        if kind == EXT_SUPPORTED_VERSIONS && body.len() == 2 {
            version = u16::from_be_bytes([body[0], body[1]]);
        }
    }
    Ok(ServerHello { random, version, suite, compression, is_hello_retry_request: random == HELLO_RETRY_RANDOM })
}

/// An SSL 2.0-format ClientHello (sent by old clients that still offer SSL 2.0 suites): its
/// length, and the random it implies (the challenge, right-aligned in 32 bytes), if `bytes`
/// starts with one. RFC 5246 appendix E.2.
pub fn parse_sslv2_client_hello(bytes: &[u8]) -> Option<Result<(usize, [u8; 32]), Malformed>> {
    if bytes.len() < 3 || bytes[0] & 0x80 == 0 || bytes[2] != CLIENT_HELLO {
        return None;
    }
    let len = (((bytes[0] & 0x7f) as usize) << 8) | bytes[1] as usize;
    let parsed = (|| {
        let message = bytes.get(2..2 + len).ok_or(Malformed("SSLv2 ClientHello truncated"))?;
        let mut reader = Reader { bytes: message };
        reader.u8()?; // msg_type
        reader.u16()?; // version
        let specs = reader.u16()? as usize;
        let session = reader.u16()? as usize;
        let challenge_len = reader.u16()? as usize;
        reader.take(specs)?;
        reader.take(session)?;
        let challenge = reader.take(challenge_len)?;
        if challenge.len() > 32 {
            return Err(Malformed("SSLv2 challenge longer than 32 bytes"));
        }
        let mut random = [0u8; 32];
        random[32 - challenge.len()..].copy_from_slice(challenge);
        Ok((2 + len, random))
    })();
    Some(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLS 1.3 ServerHello (RFC 8448 section 3, the server's first flight), body only.
    const SERVER_HELLO_TLS13: &str = "0303a6af06a4121860dc5e6e60249cd34c95930c8ac5cb1434dac155772ed3e2692800130100002e00330024001d0020c9828876112095fe66762bdbf7c672e156d6cc253b833df1dd69b1b04e751f0f002b00020304";

    #[test]
    fn server_hello_tls13() {
        let body = hex::decode(SERVER_HELLO_TLS13).unwrap();
        let hello = parse_server_hello(&body).unwrap();
        assert_eq!(hello.version, 0x0304);
        assert_eq!(hello.suite, 0x1301);
        assert!(!hello.is_hello_retry_request);
        assert_eq!(hello.random[..4], [0xa6, 0xaf, 0x06, 0xa4]);
        // Truncation anywhere is an error, not a panic.
        for cut in 0..body.len() - 1 {
            let _ = parse_server_hello(&body[..cut]);
        }
        assert!(parse_server_hello(&body[..10]).is_err());
    }

    #[test]
    fn client_hello_early_data_and_framing() {
        // legacy_version, random, empty session id, one suite, null compression, early_data ext.
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.extend([0, 0, 2, 0x13, 0x01, 1, 0, 0, 4, 0, 42, 0, 0]);
        let hello = parse_client_hello(&body).unwrap();
        assert_eq!(hello.random, [7; 32]);
        assert!(hello.offers_early_data);
        let mut message = vec![CLIENT_HELLO, 0, 0, body.len() as u8];
        message.extend(&body);
        assert_eq!(next_message(&message[..10]), Ok(None));
        let (kind, parsed, used) = next_message(&message).unwrap().unwrap();
        assert_eq!((kind, parsed, used), (CLIENT_HELLO, &body[..], message.len()));
        assert!(next_message(&[1, 0xff, 0, 0]).is_err());
    }

    #[test]
    fn sslv2_client_hello() {
        // Length 0x1c: type 1, version 3.1, 3-byte cipher spec, no session id, 16-byte challenge.
        let mut hello = vec![0x80, 0x1c, 1, 3, 1, 0, 3, 0, 0, 0, 16, 0x00, 0x00, 0x04];
        hello.extend(1..=16u8);
        let (len, random) = parse_sslv2_client_hello(&hello).unwrap().unwrap();
        assert_eq!(len, hello.len());
        assert_eq!(random[..16], [0; 16]);
        assert_eq!(random[16..], (1..=16u8).collect::<Vec<_>>()[..]);
        assert!(parse_sslv2_client_hello(&hello[..10]).unwrap().is_err());
        assert!(parse_sslv2_client_hello(&[22, 3, 1]).is_none());
    }
}
