//! Ethernet II frames: the 14-byte header (destination, source, EtherType) and its payload.
//!
//! VLAN tags that may follow the header are decoded by [`super::vlan`]. Not supported: 802.3
//! length-field frames with LLC/SNAP (their "EtherType" is a length below 0x0600 and is reported
//! as `EtherType::Unknown`), and the frame check sequence (captures and sockets strip it).

use core::fmt;

use super::{check_emit_len, check_len, enum_with_unknown, read_u16, write_u16, Layer, WireError};

enum_with_unknown! {
    /// EtherType values cutls looks at.
    pub enum EtherType(u16) {
        Ipv4 = 0x0800,
        Arp = 0x0806,
        /// 802.1Q customer VLAN tag.
        Vlan = 0x8100,
        Ipv6 = 0x86dd,
        /// 802.1ad service VLAN tag (the outer tag of Q-in-Q).
        QinQ = 0x88a8,
        /// The pre-standard Q-in-Q outer tag some switches still send.
        QinQLegacy = 0x9100,
    }
}

impl EtherType {
    /// True for the EtherTypes that introduce a VLAN tag.
    pub fn is_vlan_tag(self) -> bool {
        matches!(
            self,
            EtherType::Vlan | EtherType::QinQ | EtherType::QinQLegacy
        )
    }
}

/// A six-byte MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EthernetAddress(pub [u8; 6]);

impl EthernetAddress {
    pub const BROADCAST: EthernetAddress = EthernetAddress([0xff; 6]);

    /// The address in the first six bytes of `bytes`, or `None` if there are fewer.
    pub fn from_bytes(bytes: &[u8]) -> Option<EthernetAddress> {
        let octets: [u8; 6] = bytes.get(..6)?.try_into().ok()?;
        Some(EthernetAddress(octets))
    }

    pub fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }

    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// The group bit of the first octet: multicast (broadcast included).
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    pub fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }
}

impl fmt::Display for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Byte ranges of the Ethernet II header.
pub mod field {
    use core::ops::Range;

    pub const DESTINATION: Range<usize> = 0..6;
    pub const SOURCE: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const PAYLOAD: usize = 14;
}

/// Length of the Ethernet II header.
pub const HEADER_LEN: usize = field::PAYLOAD;

/// A read/write view of an Ethernet II frame.
#[derive(Debug, Clone)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps a buffer without checking its length; see the module docs of [`super`].
    pub fn new_unchecked(buffer: T) -> Frame<T> {
        Frame { buffer }
    }

    /// Wraps a buffer after checking it holds the whole header.
    pub fn new_checked(buffer: T) -> Result<Frame<T>, WireError> {
        check_len(Layer::Ethernet, buffer.as_ref(), HEADER_LEN)?;
        Ok(Frame { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn destination(&self) -> EthernetAddress {
        EthernetAddress(octets6(&self.buffer.as_ref()[field::DESTINATION]))
    }

    pub fn source(&self) -> EthernetAddress {
        EthernetAddress(octets6(&self.buffer.as_ref()[field::SOURCE]))
    }

    /// The EtherType right after the addresses (a VLAN TPID if the frame is tagged).
    pub fn ethertype(&self) -> EtherType {
        EtherType::from(read_u16(self.buffer.as_ref(), field::ETHERTYPE.start))
    }

    /// Everything after the 14-byte header (VLAN tags included, padding included).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    pub fn set_destination(&mut self, address: EthernetAddress) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&address.0);
    }

    pub fn set_source(&mut self, address: EthernetAddress) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&address.0);
    }

    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        write_u16(
            self.buffer.as_mut(),
            field::ETHERTYPE.start,
            u16::from(ethertype),
        );
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

/// The values of an Ethernet II header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetRepr {
    pub source: EthernetAddress,
    pub destination: EthernetAddress,
    pub ethertype: EtherType,
}

impl EthernetRepr {
    pub fn parse<T: AsRef<[u8]>>(frame: &Frame<T>) -> EthernetRepr {
        EthernetRepr {
            source: frame.source(),
            destination: frame.destination(),
            ethertype: frame.ethertype(),
        }
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into the first 14 bytes of `buffer`.
    pub fn emit(&self, buffer: &mut [u8]) -> Result<(), WireError> {
        check_emit_len(Layer::Ethernet, buffer, HEADER_LEN)?;
        let mut frame = Frame::new_unchecked(buffer);
        frame.set_destination(self.destination);
        frame.set_source(self.source);
        frame.set_ethertype(self.ethertype);
        Ok(())
    }
}

/// Copies a six-byte field; `field` ranges are six bytes long by construction.
fn octets6(bytes: &[u8]) -> [u8; 6] {
    let mut octets = [0u8; 6];
    octets.copy_from_slice(bytes);
    octets
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_frames::{ETH_IPV4_TCP_SYN, LAB_ARP_REQUEST};

    #[test]
    fn parses_real_ipv4_frame() {
        let frame = Frame::new_checked(&ETH_IPV4_TCP_SYN[..]).unwrap();
        assert_eq!(
            frame.destination(),
            EthernetAddress([0x00, 0x16, 0x3e, 0xe0, 0x13, 0x7d])
        );
        assert_eq!(
            frame.source(),
            EthernetAddress([0x00, 0x16, 0x3e, 0xfd, 0xdb, 0xe1])
        );
        assert_eq!(frame.ethertype(), EtherType::Ipv4);
        assert_eq!(frame.payload().len(), ETH_IPV4_TCP_SYN.len() - HEADER_LEN);
        assert_eq!(frame.payload()[0], 0x45);
    }

    #[test]
    fn parses_real_broadcast_arp_frame() {
        let frame = Frame::new_checked(&LAB_ARP_REQUEST[..]).unwrap();
        assert!(frame.destination().is_broadcast());
        assert_eq!(frame.source().to_string(), "7e:f2:45:c4:de:b0");
        assert!(frame.source().is_unicast());
        assert_eq!(frame.ethertype(), EtherType::Arp);
    }

    #[test]
    fn rejects_short_header() {
        assert_eq!(
            Frame::new_checked(&ETH_IPV4_TCP_SYN[..13]).unwrap_err(),
            WireError::Truncated {
                layer: Layer::Ethernet,
                needed: 14,
                available: 13
            }
        );
    }

    #[test]
    fn emit_reproduces_the_real_header() {
        let repr = EthernetRepr::parse(&Frame::new_checked(&ETH_IPV4_TCP_SYN[..]).unwrap());
        let mut header = [0u8; 14];
        repr.emit(&mut header).unwrap();
        assert_eq!(header, ETH_IPV4_TCP_SYN[..14]);
        assert!(repr.emit(&mut [0u8; 13]).is_err());
    }

    #[test]
    fn setters_write_the_fields() {
        let mut bytes = ETH_IPV4_TCP_SYN;
        let mut frame = Frame::new_checked(&mut bytes[..]).unwrap();
        frame.set_destination(EthernetAddress::BROADCAST);
        frame.set_source(EthernetAddress([2, 0, 0, 0, 0, 1]));
        frame.set_ethertype(EtherType::Ipv6);
        frame.payload_mut()[0] = 0x60;
        assert_eq!(
            bytes[..15],
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0x86, 0xdd, 0x60]
        );
    }

    #[test]
    fn ethertype_round_trips_unknown_values() {
        assert_eq!(EtherType::from(0x0842), EtherType::Unknown(0x0842));
        assert_eq!(u16::from(EtherType::Unknown(0x0842)), 0x0842);
        assert!(EtherType::from(0x88a8).is_vlan_tag());
        assert!(!EtherType::Ipv4.is_vlan_tag());
    }
}
