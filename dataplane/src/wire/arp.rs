//! ARP (RFC 826) for Ethernet hardware addresses and IPv4 protocol addresses.
//!
//! cutls answers ARP for its VIPs on the outside port and learns backend MACs on the inside.
//!
//! Not supported: other hardware or protocol types (`new_checked` refuses them with
//! [`WireError::Unsupported`]), RARP and InARP operations (kept as `ArpOperation::Unknown`).

use std::net::Ipv4Addr;

use super::ethernet::{EtherType, EthernetAddress};
use super::{check_emit_len, check_len, enum_with_unknown, read_u16, write_u16, Layer, WireError};

enum_with_unknown! {
    /// The ARP opcode.
    pub enum ArpOperation(u16) {
        Request = 1,
        Reply = 2,
    }
}

/// Hardware type 1: Ethernet.
pub const HARDWARE_ETHERNET: u16 = 1;

/// Byte ranges of an Ethernet/IPv4 ARP packet.
pub mod field {
    use core::ops::Range;

    pub const HARDWARE_TYPE: Range<usize> = 0..2;
    pub const PROTOCOL_TYPE: Range<usize> = 2..4;
    pub const HARDWARE_LEN: usize = 4;
    pub const PROTOCOL_LEN: usize = 5;
    pub const OPERATION: Range<usize> = 6..8;
    pub const SENDER_HARDWARE_ADDR: Range<usize> = 8..14;
    pub const SENDER_PROTOCOL_ADDR: Range<usize> = 14..18;
    pub const TARGET_HARDWARE_ADDR: Range<usize> = 18..24;
    pub const TARGET_PROTOCOL_ADDR: Range<usize> = 24..28;
}

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = field::TARGET_PROTOCOL_ADDR.end;

/// A read/write view of an Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Checks the length and that the packet is Ethernet/IPv4 (the address getters rely on it).
    pub fn new_checked(buffer: T) -> Result<Packet<T>, WireError> {
        let packet = Packet { buffer };
        let data = packet.buffer.as_ref();
        check_len(Layer::Arp, data, field::PROTOCOL_LEN + 1)?;
        if packet.hardware_type() != HARDWARE_ETHERNET
            || packet.protocol_type() != EtherType::Ipv4
            || packet.hardware_len() != 6
            || packet.protocol_len() != 4
        {
            return Err(WireError::Unsupported {
                layer: Layer::Arp,
                reason: "not an Ethernet/IPv4 ARP packet",
            });
        }
        check_len(Layer::Arp, data, PACKET_LEN)?;
        Ok(packet)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn hardware_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::HARDWARE_TYPE.start)
    }

    pub fn protocol_type(&self) -> EtherType {
        EtherType::from(read_u16(self.buffer.as_ref(), field::PROTOCOL_TYPE.start))
    }

    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HARDWARE_LEN]
    }

    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL_LEN]
    }

    pub fn operation(&self) -> ArpOperation {
        ArpOperation::from(read_u16(self.buffer.as_ref(), field::OPERATION.start))
    }

    pub fn sender_hardware_addr(&self) -> EthernetAddress {
        EthernetAddress(mac(&self.buffer.as_ref()[field::SENDER_HARDWARE_ADDR]))
    }

    pub fn sender_protocol_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(ipv4(&self.buffer.as_ref()[field::SENDER_PROTOCOL_ADDR]))
    }

    pub fn target_hardware_addr(&self) -> EthernetAddress {
        EthernetAddress(mac(&self.buffer.as_ref()[field::TARGET_HARDWARE_ADDR]))
    }

    pub fn target_protocol_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(ipv4(&self.buffer.as_ref()[field::TARGET_PROTOCOL_ADDR]))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_hardware_type(&mut self, hardware_type: u16) {
        write_u16(
            self.buffer.as_mut(),
            field::HARDWARE_TYPE.start,
            hardware_type,
        );
    }

    pub fn set_protocol_type(&mut self, protocol_type: EtherType) {
        write_u16(
            self.buffer.as_mut(),
            field::PROTOCOL_TYPE.start,
            u16::from(protocol_type),
        );
    }

    pub fn set_hardware_len(&mut self, len: u8) {
        self.buffer.as_mut()[field::HARDWARE_LEN] = len;
    }

    pub fn set_protocol_len(&mut self, len: u8) {
        self.buffer.as_mut()[field::PROTOCOL_LEN] = len;
    }

    pub fn set_operation(&mut self, operation: ArpOperation) {
        write_u16(
            self.buffer.as_mut(),
            field::OPERATION.start,
            u16::from(operation),
        );
    }

    pub fn set_sender_hardware_addr(&mut self, address: EthernetAddress) {
        self.buffer.as_mut()[field::SENDER_HARDWARE_ADDR].copy_from_slice(&address.0);
    }

    pub fn set_sender_protocol_addr(&mut self, address: Ipv4Addr) {
        self.buffer.as_mut()[field::SENDER_PROTOCOL_ADDR].copy_from_slice(&address.octets());
    }

    pub fn set_target_hardware_addr(&mut self, address: EthernetAddress) {
        self.buffer.as_mut()[field::TARGET_HARDWARE_ADDR].copy_from_slice(&address.0);
    }

    pub fn set_target_protocol_addr(&mut self, address: Ipv4Addr) {
        self.buffer.as_mut()[field::TARGET_PROTOCOL_ADDR].copy_from_slice(&address.octets());
    }
}

/// The values of an Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRepr {
    pub operation: ArpOperation,
    pub sender_hardware_addr: EthernetAddress,
    pub sender_protocol_addr: Ipv4Addr,
    pub target_hardware_addr: EthernetAddress,
    pub target_protocol_addr: Ipv4Addr,
}

impl ArpRepr {
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> ArpRepr {
        ArpRepr {
            operation: packet.operation(),
            sender_hardware_addr: packet.sender_hardware_addr(),
            sender_protocol_addr: packet.sender_protocol_addr(),
            target_hardware_addr: packet.target_hardware_addr(),
            target_protocol_addr: packet.target_protocol_addr(),
        }
    }

    pub const fn packet_len(&self) -> usize {
        PACKET_LEN
    }

    pub fn emit(&self, buffer: &mut [u8]) -> Result<(), WireError> {
        check_emit_len(Layer::Arp, buffer, PACKET_LEN)?;
        let mut packet = Packet::new_unchecked(buffer);
        packet.set_hardware_type(HARDWARE_ETHERNET);
        packet.set_protocol_type(EtherType::Ipv4);
        packet.set_hardware_len(6);
        packet.set_protocol_len(4);
        packet.set_operation(self.operation);
        packet.set_sender_hardware_addr(self.sender_hardware_addr);
        packet.set_sender_protocol_addr(self.sender_protocol_addr);
        packet.set_target_hardware_addr(self.target_hardware_addr);
        packet.set_target_protocol_addr(self.target_protocol_addr);
        Ok(())
    }
}

/// Copies a six-byte field; the `field` ranges used with it are six bytes long.
fn mac(bytes: &[u8]) -> [u8; 6] {
    let mut octets = [0u8; 6];
    octets.copy_from_slice(bytes);
    octets
}

/// Copies a four-byte field; the `field` ranges used with it are four bytes long.
fn ipv4(bytes: &[u8]) -> [u8; 4] {
    let mut octets = [0u8; 4];
    octets.copy_from_slice(bytes);
    octets
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_frames::{LAB_ARP_REPLY, LAB_ARP_REQUEST, LAB_SLL2_ARP_REQUEST};

    const CLIENT_MAC: EthernetAddress = EthernetAddress([0x7e, 0xf2, 0x45, 0xc4, 0xde, 0xb0]);
    const ROUTER_MAC: EthernetAddress = EthernetAddress([0x66, 0x8b, 0xf1, 0x9c, 0x41, 0xff]);

    #[test]
    fn parses_real_request() {
        let packet = Packet::new_checked(&LAB_ARP_REQUEST[14..]).unwrap();
        assert_eq!(packet.operation(), ArpOperation::Request);
        assert_eq!(packet.sender_hardware_addr(), CLIENT_MAC);
        assert_eq!(packet.sender_protocol_addr(), Ipv4Addr::new(198, 18, 10, 1));
        assert_eq!(packet.target_hardware_addr(), EthernetAddress([0; 6]));
        assert_eq!(packet.target_protocol_addr(), Ipv4Addr::new(198, 18, 10, 2));
    }

    #[test]
    fn parses_real_request_behind_sll2() {
        let packet = Packet::new_checked(&LAB_SLL2_ARP_REQUEST[20..]).unwrap();
        assert_eq!(packet.operation(), ArpOperation::Request);
        assert_eq!(packet.sender_hardware_addr(), CLIENT_MAC);
    }

    #[test]
    fn reply_round_trips_through_repr() {
        let packet = Packet::new_checked(&LAB_ARP_REPLY[14..]).unwrap();
        let repr = ArpRepr::parse(&packet);
        assert_eq!(
            repr,
            ArpRepr {
                operation: ArpOperation::Reply,
                sender_hardware_addr: ROUTER_MAC,
                sender_protocol_addr: Ipv4Addr::new(198, 18, 10, 2),
                target_hardware_addr: CLIENT_MAC,
                target_protocol_addr: Ipv4Addr::new(198, 18, 10, 1),
            }
        );
        let mut emitted = [0u8; PACKET_LEN];
        repr.emit(&mut emitted).unwrap();
        assert_eq!(emitted, LAB_ARP_REPLY[14..]);
    }

    #[test]
    fn refuses_short_and_foreign_packets() {
        assert!(matches!(
            Packet::new_checked(&LAB_ARP_REQUEST[14..41]),
            Err(WireError::Truncated {
                layer: Layer::Arp,
                needed: 28,
                available: 27
            })
        ));
        assert!(matches!(
            Packet::new_checked(&LAB_ARP_REQUEST[14..17]),
            Err(WireError::Truncated {
                layer: Layer::Arp,
                ..
            })
        ));
        let mut ipv6_protocol = LAB_ARP_REQUEST;
        ipv6_protocol[16..18].copy_from_slice(&[0x86, 0xdd]);
        assert!(matches!(
            Packet::new_checked(&ipv6_protocol[14..]),
            Err(WireError::Unsupported {
                layer: Layer::Arp,
                ..
            })
        ));
        assert!(
            ArpRepr::parse(&Packet::new_checked(&LAB_ARP_REPLY[14..]).unwrap())
                .emit(&mut [0u8; 27])
                .is_err()
        );
    }

    #[test]
    fn unknown_operation_is_kept() {
        let mut rarp = LAB_ARP_REQUEST;
        rarp[21] = 3;
        let packet = Packet::new_checked(&rarp[14..]).unwrap();
        assert_eq!(packet.operation(), ArpOperation::Unknown(3));
    }
}
