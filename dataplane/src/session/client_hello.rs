//! A look at the client's first bytes before rustls sees them: is this a TLS ClientHello, and
//! which name does it ask for (SNI)? The answer picks a certificate, or sends the connection to
//! the listener's passthrough pool as plain TCP.
//!
//! Only the record layer and the ClientHello's outline are read: the record headers, the
//! message length, the random, and the lengths of every field up to and through the
//! extensions, so that a hello we route by is one rustls (or the passthrough backend) reads the
//! same way. Nothing is copied in the common case of a ClientHello in one record.

use std::borrow::Cow;

/// What the first client bytes of a connection are.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FirstFlight<'a> {
    /// Too few bytes to tell yet (more may come).
    Incomplete,
    /// Not a TLS ClientHello: the first byte is not a handshake record (22), the record
    /// version's major byte is not 3, the first handshake message is not a ClientHello (type 1),
    /// or the ClientHello is malformed.
    NotClientHello,
    /// A complete ClientHello message.
    ClientHello(ClientHello<'a>),
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ClientHello<'a> {
    pub random: [u8; 32],
    /// The server_name extension's first host_name (type 0), as sent (no trailing-dot or case
    /// folding: see [`name_matches`]). `None` if absent or not UTF-8. Borrowed from the input
    /// when the hello is in one record; owned only when it spans several (rare: hellos with
    /// large post-quantum key shares), since the name may then straddle two records.
    pub server_name: Option<Cow<'a, str>>,
}

/// TLS content type of handshake records.
const HANDSHAKE: u8 = 22;
/// Handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// The largest record fragment a peer may send (RFC 8446 §5.2 allows 2^14 + 256 for
/// ciphertext; a plaintext handshake record larger than 2^14 is already odd, but harmless).
const MAX_FRAGMENT: usize = 16384 + 256;
/// Hellos claiming more are refused rather than buffered: real ones, even with several PQ
/// key shares, are a few KiB.
const MAX_MESSAGE: usize = 64 * 1024;
/// Extension type of server_name (RFC 6066 §3).
const SERVER_NAME: u16 = 0;
/// ServerName name_type of a DNS host name.
const HOST_NAME: u8 = 0;

/// Looks at `bytes`, the client's first in-order TCP payload bytes (the start of its TLS
/// record stream). Decides `NotClientHello` as soon as the bytes at hand prove it: one byte for
/// a non-handshake record, six for the message type.
pub(crate) fn scan(bytes: &[u8]) -> FirstFlight<'_> {
    let (fragments, total) = match locate(bytes) {
        Ok(found) => found,
        Err(verdict) => return verdict,
    };
    if fragments == 1 {
        // The message lies within the first record's fragment, right after its header.
        let Some(body) = bytes.get(5 + 4..5 + total) else { return FirstFlight::NotClientHello };
        return match parse_body(body) {
            Some((random, name)) => FirstFlight::ClientHello(ClientHello {
                random,
                server_name: name.and_then(|name| std::str::from_utf8(name).ok()).map(Cow::Borrowed),
            }),
            None => FirstFlight::NotClientHello,
        };
    }
    // Spread over several records: concatenate their fragments. `locate` has checked every
    // header, so this walk only copies.
    let mut message = Vec::with_capacity(total);
    let mut records = Records { rest: bytes };
    while message.len() < total {
        let Step::Fragment(fragment) = records.next_fragment() else { return FirstFlight::NotClientHello };
        let wanted = (total - message.len()).min(fragment.len());
        message.extend_from_slice(&fragment[..wanted]);
    }
    let Some(body) = message.get(4..) else { return FirstFlight::NotClientHello };
    match parse_body(body) {
        Some((random, name)) => FirstFlight::ClientHello(ClientHello {
            random,
            server_name: name
                .and_then(|name| std::str::from_utf8(name).ok())
                .map(|name| Cow::Owned(name.to_owned())),
        }),
        None => FirstFlight::NotClientHello,
    }
}

/// Walks the handshake records until the first message is complete. Returns how many record
/// fragments it takes and its length with the 4-byte handshake header, or the verdict if the
/// bytes cannot (yet, or ever) hold a ClientHello.
fn locate(bytes: &[u8]) -> Result<(usize, usize), FirstFlight<'static>> {
    let mut records = Records { rest: bytes };
    let mut header = [0u8; 4];
    let mut header_len = 0;
    let mut collected = 0;
    let mut fragments = 0;
    loop {
        let fragment = match records.next_fragment() {
            Step::Fragment(fragment) => fragment,
            Step::Incomplete => return Err(FirstFlight::Incomplete),
            Step::Not => return Err(FirstFlight::NotClientHello),
        };
        fragments += 1;
        // The handshake header itself may straddle records (each fragment can be one byte).
        for &byte in fragment.iter().take(4 - header_len) {
            header[header_len] = byte;
            header_len += 1;
        }
        if header[0] != CLIENT_HELLO {
            // Fragments are never empty, so header[0] has been read.
            return Err(FirstFlight::NotClientHello);
        }
        collected += fragment.len();
        if header_len == 4 {
            let length = u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize;
            if length > MAX_MESSAGE {
                return Err(FirstFlight::NotClientHello);
            }
            let total = 4 + length;
            if collected >= total {
                return Ok((fragments, total));
            }
        }
    }
}

/// One step of [`Records`].
enum Step<'a> {
    /// The fragment of the next handshake record: never empty, and only the bytes at hand if
    /// the record is not complete yet (then the next step is `Incomplete`).
    Fragment(&'a [u8]),
    Incomplete,
    Not,
}

/// The handshake records at the start of a byte stream.
struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Records<'a> {
    fn next_fragment(&mut self) -> Step<'a> {
        // Checked byte by byte so that a non-TLS stream is refused on its first byte.
        match self.rest.first() {
            None => return Step::Incomplete,
            Some(&HANDSHAKE) => {}
            // Alerts, ChangeCipherSpec or application data before the hello is complete, or
            // anything else (HTTP, SSLv2's 0x80 length header).
            Some(_) => return Step::Not,
        }
        match self.rest.get(1) {
            None => return Step::Incomplete,
            Some(3) => {}
            Some(_) => return Step::Not,
        }
        let Some(&[_, _, _, high, low]) = self.rest.get(..5) else { return Step::Incomplete };
        let length = usize::from(u16::from_be_bytes([high, low]));
        // RFC 8446 §5.1: handshake records are never empty.
        if length == 0 || length > MAX_FRAGMENT {
            return Step::Not;
        }
        let after_header = &self.rest[5..];
        let (fragment, rest) = after_header.split_at(length.min(after_header.len()));
        self.rest = rest;
        if fragment.is_empty() {
            return Step::Incomplete;
        }
        Step::Fragment(fragment)
    }
}

/// Reads a ClientHello body (after the 4-byte handshake header): its random and the bytes of
/// the first SNI host name. `None` if any length disagrees with the message.
fn parse_body(body: &[u8]) -> Option<([u8; 32], Option<&[u8]>)> {
    let mut reader = Reader { rest: body };
    let _legacy_version = reader.take(2)?;
    let random: [u8; 32] = reader.take(32)?.try_into().ok()?;
    let session_id = reader.vec_u8()?;
    if session_id.len() > 32 {
        return None;
    }
    let cipher_suites = reader.vec_u16()?;
    if cipher_suites.is_empty() || !cipher_suites.len().is_multiple_of(2) {
        return None;
    }
    if reader.vec_u8()?.is_empty() {
        // RFC 8446 §4.1.2: at least the null compression method.
        return None;
    }
    if reader.rest.is_empty() {
        // Extensions are optional (pre-TLS 1.2 clients).
        return Some((random, None));
    }
    let mut extensions = Reader { rest: reader.vec_u16()? };
    if !reader.rest.is_empty() {
        // Trailing bytes after the extensions.
        return None;
    }
    let mut server_name = None;
    let mut seen_server_name = false;
    while !extensions.rest.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec_u16()?;
        if kind == SERVER_NAME {
            // Two server_name extensions: whoever reads the hello after us may pick the
            // other one, and then a connection routed by one name is served by another.
            // rustls refuses duplicates too.
            if seen_server_name {
                return None;
            }
            seen_server_name = true;
            server_name = host_name(data)?;
        }
    }
    Some((random, server_name))
}

/// The first host_name of a server_name extension's data, `Some(None)` if it has none, `None`
/// if it is malformed (RFC 6066 §3: a non-empty list of non-empty names).
fn host_name(data: &[u8]) -> Option<Option<&[u8]>> {
    let mut outer = Reader { rest: data };
    let mut list = Reader { rest: outer.vec_u16()? };
    if !outer.rest.is_empty() || list.rest.is_empty() {
        return None;
    }
    let mut first = None;
    while !list.rest.is_empty() {
        let kind = list.u8()?;
        let name = list.vec_u16()?;
        if name.is_empty() {
            return None;
        }
        if kind == HOST_NAME && first.is_none() {
            first = Some(name);
        }
    }
    Some(first)
}

/// Big-endian fields off the front of a slice; every read is bounds-checked.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = self.rest.split_at_checked(n)?;
        self.rest = rest;
        Some(taken)
    }

    fn u8(&mut self) -> Option<u8> {
        let (&first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(first)
    }

    fn u16(&mut self) -> Option<u16> {
        let bytes = self.take(2)?;
        Some(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    /// A vector with a one-byte length.
    fn vec_u8(&mut self) -> Option<&'a [u8]> {
        let length = self.u8()?;
        self.take(usize::from(length))
    }

    /// A vector with a two-byte length.
    fn vec_u16(&mut self) -> Option<&'a [u8]> {
        let length = self.u16()?;
        self.take(usize::from(length))
    }
}

/// Does the SNI `name` match a certificate name `pattern`? ASCII case-insensitive; a pattern
/// `*.example.test` matches exactly one more leading label (`a.example.test`, not
/// `example.test` nor `a.b.example.test`). One trailing dot on `name` (an absolute DNS name)
/// is ignored: some clients send it.
pub(crate) fn name_matches(pattern: &str, name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return false;
    }
    match pattern.strip_prefix("*.") {
        None => pattern.eq_ignore_ascii_case(name),
        Some(parent) => match name.split_once('.') {
            Some((label, rest)) => !label.is_empty() && rest.eq_ignore_ascii_case(parent),
            None => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `openssl s_client -tls1_3 -groups X25519 -servername www.example.test` (OpenSSL
    /// 3.0) sent: one 219-byte record.
    const WITH_SNI: &str = "16030100db010000d70303260ec497a0b233a8021eddb1a4e032218466cffa1725f4549786ed9a30\
        1f8c75201604c481cba80455b1dc9e22efe3f105ea684da4f4879913e31e1305708156830004130100ff01\
        00008a0000001500130000107777772e6578616d706c652e74657374000b000403000102000a00040002001d\
        0016000000170000000d001e001c040305030603080708080809080a080b0804080508060401050106010\
        02b0003020304002d00020101003300260024001d0020af6b14064605b24a2568c713d6a6b3200f323281e5\
        03aff0bbcda1ee03bda719";

    /// The same with `-noservername`.
    const WITHOUT_SNI: &str = "16030100c2010000be0303627da55a00d27fc4c6edb73bbea55897df17461edb0aab6d8217a22a\
        34592ba7204ac2d9567bbb6b97ba5d4f1c155fae1ec543801d5a07a9065db1ca0ffb3359d40004130100ff\
        01000071000b000403000102000a00040002001d0016000000170000000d001e001c040305030603080708\
        080809080a080b080408050806040105010601002b0003020304002d00020101003300260024001d0020f2\
        e3bf7ad9e6290c7b7678286d326198be53435f909163da2e60eb7ef6433a79";

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        assert_eq!(digits.len() % 2, 0);
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    /// The handshake message of a one-record hello, cut into records at `cuts` (offsets into
    /// the message).
    fn split(record: &[u8], cuts: &[usize]) -> Vec<u8> {
        let message = &record[5..];
        let mut out = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain([message.len()].iter()) {
            let fragment = &message[start..end];
            out.extend_from_slice(&[22, 3, 3]);
            out.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
            out.extend_from_slice(fragment);
            start = end;
        }
        out
    }

    fn hello(flight: FirstFlight<'_>) -> ClientHello<'_> {
        match flight {
            FirstFlight::ClientHello(hello) => hello,
            other => panic!("not a hello: {other:?}"),
        }
    }

    #[test]
    fn a_hello_with_sni() {
        let bytes = hex(WITH_SNI);
        let hello = hello(scan(&bytes));
        assert_eq!(hello.random[..4], [0x26, 0x0e, 0xc4, 0x97]);
        assert_eq!(hello.random[31], 0x75);
        assert_eq!(hello.server_name.as_deref(), Some("www.example.test"));
        // Zero-copy in one record.
        assert!(matches!(hello.server_name, Some(Cow::Borrowed(_))));
    }

    #[test]
    fn a_hello_without_sni() {
        let bytes = hex(WITHOUT_SNI);
        let hello = hello(scan(&bytes));
        assert_eq!(hello.random[..4], [0x62, 0x7d, 0xa5, 0x5a]);
        assert_eq!(hello.server_name, None);
    }

    #[test]
    fn bytes_after_the_hello_do_not_matter() {
        // TLS 1.3 middlebox compatibility: a ChangeCipherSpec record may follow at once.
        let mut bytes = hex(WITH_SNI);
        bytes.extend_from_slice(&[20, 3, 3, 0, 1, 1]);
        assert_eq!(hello(scan(&bytes)).server_name.as_deref(), Some("www.example.test"));
    }

    #[test]
    fn a_hello_over_two_records() {
        let bytes = hex(WITH_SNI);
        // Offset 4 + 2 + 32 + 1 + 32 + 2 + 4 + 1 + 1 + 2 + 4 + 2 + 3 = 90 is the host name's
        // start: cut inside it, so it straddles the records.
        let name_start = 90;
        assert_eq!(&bytes[5 + name_start..5 + name_start + 3], b"www");
        let two = split(&bytes, &[name_start + 5]);
        let found = hello(scan(&two));
        assert_eq!(found.server_name.as_deref(), Some("www.example.test"));
        // Copied: the name straddles the records.
        assert!(matches!(found.server_name, Some(Cow::Owned(_))));
        assert_eq!(found.random, hello(scan(&bytes)).random);

        // Every prefix of the split flight is Incomplete.
        for end in 0..two.len() {
            assert_eq!(scan(&two[..end]), FirstFlight::Incomplete, "prefix {end}");
        }
    }

    #[test]
    fn a_hello_one_byte_per_record() {
        let bytes = hex(WITHOUT_SNI);
        let cuts: Vec<usize> = (1..bytes.len() - 5).collect();
        let many = split(&bytes, &cuts);
        assert_eq!(many.len(), (bytes.len() - 5) * 6);
        assert_eq!(hello(scan(&many)).random, hello(scan(&bytes)).random);
    }

    #[test]
    fn every_prefix_is_incomplete() {
        for text in [WITH_SNI, WITHOUT_SNI] {
            let bytes = hex(text);
            for end in 0..bytes.len() {
                assert_eq!(scan(&bytes[..end]), FirstFlight::Incomplete, "prefix {end}");
            }
        }
    }

    #[test]
    fn http_is_refused_at_the_first_byte() {
        assert_eq!(scan(b"G"), FirstFlight::NotClientHello);
        assert_eq!(scan(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), FirstFlight::NotClientHello);
        // An SSLv2-compatible hello starts with its 2-byte length, high bit set.
        assert_eq!(scan(&[0x80, 0x2e, 0x01, 0x03, 0x01]), FirstFlight::NotClientHello);
        assert_eq!(scan(&[]), FirstFlight::Incomplete);
    }

    #[test]
    fn record_headers_are_checked_as_they_come() {
        assert_eq!(scan(&[22]), FirstFlight::Incomplete);
        assert_eq!(scan(&[22, 2]), FirstFlight::NotClientHello);
        assert_eq!(scan(&[22, 3, 1, 0x41]), FirstFlight::Incomplete);
        // Longer than 2^14 + 256, and empty.
        assert_eq!(scan(&[22, 3, 1, 0x41, 0x01]), FirstFlight::NotClientHello);
        assert_eq!(scan(&[22, 3, 1, 0x41, 0x00]), FirstFlight::Incomplete);
        assert_eq!(scan(&[22, 3, 1, 0, 0]), FirstFlight::NotClientHello);
        // A message of more than 64 KiB, whatever else comes.
        assert_eq!(scan(&[22, 3, 1, 0, 4, 1, 1, 0, 1]), FirstFlight::NotClientHello);
        assert_eq!(scan(&[22, 3, 1, 0, 4, 1, 1, 0, 0]), FirstFlight::Incomplete);
    }

    #[test]
    fn a_server_hello_is_refused_at_the_sixth_byte() {
        assert_eq!(scan(&[22, 3, 3, 0, 0x7a]), FirstFlight::Incomplete);
        assert_eq!(scan(&[22, 3, 3, 0, 0x7a, 2]), FirstFlight::NotClientHello);
    }

    #[test]
    fn another_record_type_before_the_hello_is_complete() {
        let bytes = hex(WITH_SNI);
        let mut two = split(&bytes, &[100]);
        let second = 5 + 100;
        assert_eq!(two[second], 22);
        two[second] = 21; // an alert
        assert_eq!(scan(&two[..second]), FirstFlight::Incomplete);
        assert_eq!(scan(&two[..=second]), FirstFlight::NotClientHello);
        two[second] = 23; // application data
        assert_eq!(scan(&two), FirstFlight::NotClientHello);
    }

    /// A minimal hello: TLS 1.2, no session id, one suite, null compression, then `tail`
    /// (the extensions block, or nothing).
    fn minimal(tail: &[u8]) -> Vec<u8> {
        minimal_with(&[], tail)
    }

    fn minimal_with(session_id: &[u8], tail: &[u8]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0x11; 32]);
        body.push(session_id.len() as u8);
        body.extend_from_slice(session_id);
        body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
        body.extend_from_slice(tail);
        let mut message = vec![1, 0, 0, body.len() as u8];
        message.extend_from_slice(&body);
        let mut record = vec![22, 3, 1, 0, message.len() as u8];
        record.extend_from_slice(&message);
        record
    }

    #[test]
    fn lengths_inside_the_hello_are_checked() {
        // No extensions at all is a hello.
        assert_eq!(hello(scan(&minimal(&[]))).server_name, None);
        // An SNI extension, by hand: list of one host_name "a.b".
        let sni = [0, 0, 0, 8, 0, 6, 0, 0, 3, b'a', b'.', b'b'];
        let mut extensions = vec![0, sni.len() as u8];
        extensions.extend_from_slice(&sni);
        assert_eq!(hello(scan(&minimal(&extensions))).server_name.as_deref(), Some("a.b"));

        // Trailing garbage after the extensions.
        let mut trailing = extensions.clone();
        trailing.push(0);
        assert_eq!(scan(&minimal(&trailing)), FirstFlight::NotClientHello);
        // An extensions length longer than the message.
        let mut long = extensions.clone();
        long[1] += 1;
        assert_eq!(scan(&minimal(&long)), FirstFlight::NotClientHello);
        // A lone byte where the extensions length should be.
        assert_eq!(scan(&minimal(&[0])), FirstFlight::NotClientHello);
        // The server name list longer than its extension.
        let mut bad_list = extensions.clone();
        bad_list[7] = 7;
        assert_eq!(scan(&minimal(&bad_list)), FirstFlight::NotClientHello);
        // An empty host name.
        let empty = [0, 9, 0, 0, 0, 5, 0, 3, 0, 0, 0];
        assert_eq!(scan(&minimal(&empty)), FirstFlight::NotClientHello);
        // Two server_name extensions.
        let mut twice = vec![0, 2 * sni.len() as u8];
        twice.extend_from_slice(&sni);
        twice.extend_from_slice(&sni);
        assert_eq!(scan(&minimal(&twice)), FirstFlight::NotClientHello);
        // Not UTF-8: a hello, without a name.
        let mut latin = extensions.clone();
        latin[11] = 0xe9;
        assert_eq!(hello(scan(&minimal(&latin))).server_name, None);
        // A name of another type first, then the host name.
        let other = [0, 17, 0, 0, 0, 13, 0, 11, 7, 0, 2, b'x', b'y', 0, 0, 3, b'a', b'.', b'b'];
        assert_eq!(hello(scan(&minimal(&other))).server_name.as_deref(), Some("a.b"));
    }

    #[test]
    fn fields_before_the_extensions_are_checked() {
        let good = minimal(&[]);
        assert!(matches!(scan(&good), FirstFlight::ClientHello(_)));
        let session_id = 5 + 4 + 2 + 32;
        assert!(matches!(scan(&minimal_with(&[7; 32], &[])), FirstFlight::ClientHello(_)));
        assert_eq!(scan(&minimal_with(&[7; 33], &[])), FirstFlight::NotClientHello);
        let mut odd_suites = good.clone();
        odd_suites[session_id + 2] = 1;
        assert_eq!(scan(&odd_suites), FirstFlight::NotClientHello);
        let mut no_compression = good.clone();
        no_compression[session_id + 5] = 0;
        assert_eq!(scan(&no_compression), FirstFlight::NotClientHello);
        // A message length shorter than the fields.
        let mut short = good.clone();
        short[8] -= 1;
        assert_eq!(scan(&short), FirstFlight::NotClientHello);
    }

    #[test]
    fn mutated_bytes_never_panic() {
        // A small xorshift: deterministic, no dependency.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let originals = [hex(WITH_SNI), hex(WITHOUT_SNI), split(&hex(WITH_SNI), &[3, 90, 95, 150])];
        for round in 0..30_000 {
            let mut bytes = originals[round % originals.len()].clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % bytes.len();
                match next() % 4 {
                    0 => bytes[at] = next() as u8,
                    1 => bytes[at] ^= 1 << (next() % 8),
                    2 => bytes.truncate(at),
                    _ => bytes.insert(at, next() as u8),
                }
                if bytes.is_empty() {
                    bytes.push(22);
                }
            }
            let end = (next() as usize) % (bytes.len() + 1);
            // Whatever the answer, a name found must be within the bytes given.
            if let FirstFlight::ClientHello(hello) = scan(&bytes[..end]) {
                if let Some(name) = hello.server_name {
                    assert!(name.len() < end);
                }
            }
        }
    }

    #[test]
    fn names_match_exactly_or_by_one_wildcard_label() {
        assert!(name_matches("www.example.test", "www.example.test"));
        assert!(name_matches("www.example.test", "WWW.Example.TEST"));
        assert!(name_matches("www.example.test", "www.example.test."));
        assert!(!name_matches("www.example.test", "www.example.test.."));
        assert!(!name_matches("www.example.test", "ww.example.test"));
        assert!(!name_matches("www.example.test", "example.test"));

        assert!(name_matches("*.example.test", "a.example.test"));
        assert!(name_matches("*.example.test", "A.EXAMPLE.test."));
        assert!(!name_matches("*.example.test", "example.test"));
        assert!(!name_matches("*.example.test", "a.b.example.test"));
        assert!(!name_matches("*.example.test", ".example.test"));
        assert!(!name_matches("*.example.test", "a.example.tester"));
        assert!(!name_matches("*.example.test", "aexample.test"));
        assert!(!name_matches("*.example.test", ""));
        assert!(!name_matches("*.example.test", "."));
        assert!(!name_matches("", ""));
        assert!(!name_matches("", "."));
    }
}
