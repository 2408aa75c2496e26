//! BSD loopback encapsulation: pcap LINKTYPE_NULL (0) and LINKTYPE_LOOP (108). A 4-byte
//! address family precedes the IP packet; captures made on macOS and the BSDs (`tcpdump -i
//! lo0`) use it. LINKTYPE_NULL stores the family in the capturing host's byte order, which the
//! file does not record, so both orders are tried; LINKTYPE_LOOP stores it big-endian.
//!
//! Not supported: address families other than IPv4 and IPv6 (OSI, IPX...), which are refused
//! with [`WireError::Unsupported`].

use super::{check_emit_len, check_len, Layer, WireError};

/// The address family of IPv4 on every system.
pub const AF_INET: u32 = 2;
/// The values different systems use for IPv6: Linux 10, NetBSD/OpenBSD 24, FreeBSD 28,
/// Darwin 30.
pub const AF_INET6_VALUES: [u32; 4] = [10, 24, 28, 30];
/// The value [`emit`] writes for IPv6 (Darwin's, the most common source of such captures).
pub const AF_INET6_DARWIN: u32 = 30;

/// Length of the loopback header.
pub const HEADER_LEN: usize = 4;

/// The network protocol a loopback header announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoopbackFamily {
    Ipv4,
    Ipv6,
}

/// A read view of a loopback header and what follows it.
#[derive(Debug, Clone)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Header<T> {
    pub fn new_unchecked(buffer: T) -> Header<T> {
        Header { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Header<T>, WireError> {
        check_len(Layer::Loopback, buffer.as_ref(), HEADER_LEN)?;
        Ok(Header { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn raw(&self) -> [u8; 4] {
        let data = self.buffer.as_ref();
        [data[0], data[1], data[2], data[3]]
    }

    /// The family, read in either byte order (the values cannot be confused: every known
    /// family is below 256, so exactly one order gives a small number).
    pub fn family(&self) -> Result<LoopbackFamily, WireError> {
        let raw = self.raw();
        let little = u32::from_le_bytes(raw);
        let big = u32::from_be_bytes(raw);
        [little, big]
            .into_iter()
            .find_map(family_of)
            .ok_or(WireError::Unsupported {
                layer: Layer::Loopback,
                reason: "address family",
            })
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

fn family_of(value: u32) -> Option<LoopbackFamily> {
    if value == AF_INET {
        Some(LoopbackFamily::Ipv4)
    } else if AF_INET6_VALUES.contains(&value) {
        Some(LoopbackFamily::Ipv6)
    } else {
        None
    }
}

/// Writes a LINKTYPE_LOOP (big-endian) header for `family`.
pub fn emit(family: LoopbackFamily, buffer: &mut [u8]) -> Result<(), WireError> {
    check_emit_len(Layer::Loopback, buffer, HEADER_LEN)?;
    let value = match family {
        LoopbackFamily::Ipv4 => AF_INET,
        LoopbackFamily::Ipv6 => AF_INET6_DARWIN,
    };
    buffer[..HEADER_LEN].copy_from_slice(&value.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_frames::{NULL_IPV4_TCP_DATA, NULL_IPV6_TCP_SYN};

    #[test]
    fn reads_real_little_endian_families() {
        // illustrated-tls13 (AF 2) and hotplace (AF 24, as tshark reads it), both written
        // little-endian.
        let ipv4 = Header::new_checked(&NULL_IPV4_TCP_DATA[..]).unwrap();
        assert_eq!(ipv4.family(), Ok(LoopbackFamily::Ipv4));
        assert_eq!(ipv4.payload()[0] >> 4, 4);
        let ipv6 = Header::new_checked(&NULL_IPV6_TCP_SYN[..]).unwrap();
        assert_eq!(&NULL_IPV6_TCP_SYN[..4], &[24, 0, 0, 0]);
        assert_eq!(ipv6.family(), Ok(LoopbackFamily::Ipv6));
    }

    #[test]
    fn emit_writes_big_endian_and_reads_back() {
        let mut header = [0u8; 4];
        emit(LoopbackFamily::Ipv6, &mut header).unwrap();
        assert_eq!(header, [0, 0, 0, 30]);
        assert_eq!(
            Header::new_checked(&header[..]).unwrap().family(),
            Ok(LoopbackFamily::Ipv6)
        );
        emit(LoopbackFamily::Ipv4, &mut header).unwrap();
        assert_eq!(
            Header::new_checked(&header[..]).unwrap().family(),
            Ok(LoopbackFamily::Ipv4)
        );
        assert!(emit(LoopbackFamily::Ipv4, &mut [0u8; 3]).is_err());
    }

    #[test]
    fn unknown_family_and_short_header_are_refused() {
        assert!(matches!(
            Header::new_checked(&[7u8, 0, 0, 0][..]).unwrap().family(),
            Err(WireError::Unsupported {
                layer: Layer::Loopback,
                ..
            })
        ));
        assert!(matches!(
            Header::new_checked(&[2u8, 0, 0][..]),
            Err(WireError::Truncated {
                layer: Layer::Loopback,
                needed: 4,
                available: 3
            })
        ));
    }
}
