//! ICMPv6 (RFC 4443): echo, the error messages cutls relays for its sessions (packet too big
//! above all), and the neighbor-discovery target address cutls answers for its VIPs.
//!
//! The checksum covers an IPv6 pseudo-header, so verifying and filling it take the addresses.
//!
//! Not supported: NDP options, MLD and router-advertisement contents (only their type and
//! code), the RFC 4884 extension structure after the quoted packet.

use std::net::Ipv6Addr;

use super::embedded::{self, EmbeddedPacket};
use super::{
    check_len, checksum, enum_with_unknown, read_u16, read_u32, write_u16, write_u32, IpProtocol,
    Layer, WireError,
};

enum_with_unknown! {
    /// ICMPv6 message types.
    pub enum Icmpv6Type(u8) {
        DestinationUnreachable = 1,
        PacketTooBig = 2,
        TimeExceeded = 3,
        ParameterProblem = 4,
        EchoRequest = 128,
        EchoReply = 129,
        RouterSolicitation = 133,
        RouterAdvertisement = 134,
        NeighborSolicitation = 135,
        NeighborAdvertisement = 136,
        Redirect = 137,
        MulticastListenerReportV2 = 143,
    }
}

impl Icmpv6Type {
    /// Types 0 to 127 are errors and quote the packet that caused them.
    pub fn is_error(self) -> bool {
        u8::from(self) < 128
    }
}

/// Byte ranges of the ICMPv6 header.
pub mod field {
    use core::ops::Range;

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    /// Packet too big: the MTU of the next link.
    pub const MTU: Range<usize> = 4..8;
    /// Parameter problem: offset of the offending byte.
    pub const POINTER: Range<usize> = 4..8;
    pub const ECHO_IDENTIFIER: Range<usize> = 4..6;
    pub const ECHO_SEQUENCE: Range<usize> = 6..8;
    /// Neighbor solicitation and advertisement: the target address.
    pub const NDP_TARGET: Range<usize> = 8..24;
    /// Echo data, or the quoted packet of an error.
    pub const DATA: usize = 8;
}

/// Length of the ICMPv6 header.
pub const HEADER_LEN: usize = field::DATA;

/// A read/write view of an ICMPv6 message. The buffer must be exactly the message.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Packet<T>, WireError> {
        check_len(Layer::Icmpv6, buffer.as_ref(), HEADER_LEN)?;
        Ok(Packet { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn msg_type(&self) -> Icmpv6Type {
        Icmpv6Type::from(self.buffer.as_ref()[field::TYPE])
    }

    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// The MTU of a packet-too-big message; `None` for other messages.
    pub fn mtu(&self) -> Option<u32> {
        (self.msg_type() == Icmpv6Type::PacketTooBig)
            .then(|| read_u32(self.buffer.as_ref(), field::MTU.start))
    }

    pub fn echo_identifier(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_IDENTIFIER.start)
    }

    pub fn echo_sequence(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_SEQUENCE.start)
    }

    /// The target address of a neighbor solicitation or advertisement.
    pub fn ndp_target(&self) -> Result<Ipv6Addr, WireError> {
        if !matches!(
            self.msg_type(),
            Icmpv6Type::NeighborSolicitation | Icmpv6Type::NeighborAdvertisement
        ) {
            return Err(WireError::Unsupported {
                layer: Layer::Icmpv6,
                reason: "not a neighbor solicitation or advertisement",
            });
        }
        let data = self.buffer.as_ref();
        check_len(Layer::Icmpv6, data, field::NDP_TARGET.end)?;
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&data[field::NDP_TARGET]);
        Ok(Ipv6Addr::from(octets))
    }

    /// Echo data, or the quoted packet of an error.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA..]
    }

    /// The quoted original packet of an error message.
    pub fn embedded_packet(&self) -> Result<EmbeddedPacket<'_>, WireError> {
        if !self.msg_type().is_error() {
            return Err(WireError::Unsupported {
                layer: Layer::Icmpv6,
                reason: "not an error message: nothing is quoted",
            });
        }
        embedded::parse_ipv6(self.data())
    }

    /// True when the checksum verifies under the pseudo-header of `src` and `dst`.
    pub fn verify_checksum(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        checksum::verify_upper_layer_v6(src, dst, IpProtocol::Icmpv6, self.buffer.as_ref())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_msg_type(&mut self, msg_type: Icmpv6Type) {
        self.buffer.as_mut()[field::TYPE] = u8::from(msg_type);
    }

    pub fn set_msg_code(&mut self, code: u8) {
        self.buffer.as_mut()[field::CODE] = code;
    }

    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM.start, checksum);
    }

    pub fn set_mtu(&mut self, mtu: u32) {
        write_u32(self.buffer.as_mut(), field::MTU.start, mtu);
    }

    pub fn set_echo_identifier(&mut self, identifier: u16) {
        write_u16(
            self.buffer.as_mut(),
            field::ECHO_IDENTIFIER.start,
            identifier,
        );
    }

    pub fn set_echo_sequence(&mut self, sequence: u16) {
        write_u16(self.buffer.as_mut(), field::ECHO_SEQUENCE.start, sequence);
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA..]
    }

    /// Computes the checksum under the pseudo-header of `src` and `dst` and writes it.
    pub fn fill_checksum(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        self.set_checksum(0);
        let computed =
            checksum::upper_layer_checksum_v6(src, dst, IpProtocol::Icmpv6, self.buffer.as_ref());
        self.set_checksum(computed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_frames::{LAB_ICMPV6_PACKET_TOO_BIG, LAB_IPV6_HOP_BY_HOP_MLD};
    use crate::wire::SeqNumber;

    fn address(text: &str) -> Ipv6Addr {
        text.parse().unwrap()
    }

    #[test]
    fn parses_real_packet_too_big() {
        // tshark: type 2, checksum 0x3fb3 (good), MTU 1280, from 2001:db8:10::2 to
        // 2001:db8:10::1, quoting [2001:db8:10::1]:59518 -> [2001:db8:11::1]:8443
        // seq 3358773523.
        let packet = Packet::new_checked(&LAB_ICMPV6_PACKET_TOO_BIG[54..]).unwrap();
        assert_eq!(packet.msg_type(), Icmpv6Type::PacketTooBig);
        assert_eq!(packet.checksum(), 0x3fb3);
        assert_eq!(packet.mtu(), Some(1280));
        assert!(packet.verify_checksum(address("2001:db8:10::2"), address("2001:db8:10::1")));
        assert!(!packet.verify_checksum(address("2001:db8:10::3"), address("2001:db8:10::1")));
        let embedded = packet.embedded_packet().unwrap();
        assert_eq!(embedded.ports, Some((59518, 8443)));
        assert_eq!(embedded.tcp_seq_number, Some(SeqNumber(3_358_773_523)));
    }

    #[test]
    fn parses_real_mld_report_behind_hop_by_hop() {
        // tshark: type 143, checksum 0xef11 (good), fe80::7cf2:45ff:fec4:deb0 -> ff02::16.
        // Ethernet 14 + IPv6 40 + hop-by-hop 8.
        let packet = Packet::new_checked(&LAB_IPV6_HOP_BY_HOP_MLD[62..]).unwrap();
        assert_eq!(packet.msg_type(), Icmpv6Type::MulticastListenerReportV2);
        assert!(!packet.msg_type().is_error());
        assert_eq!(packet.checksum(), 0xef11);
        assert!(packet.verify_checksum(address("fe80::7cf2:45ff:fec4:deb0"), address("ff02::16")));
        assert_eq!(packet.mtu(), None);
        assert!(packet.embedded_packet().is_err());
        assert!(packet.ndp_target().is_err());
    }

    #[test]
    fn fill_checksum_rebuilds_the_real_message() {
        let original = &LAB_ICMPV6_PACKET_TOO_BIG[54..];
        let mut rebuilt = original.to_vec();
        rebuilt[..8].fill(0);
        let mut packet = Packet::new_checked(&mut rebuilt[..]).unwrap();
        packet.set_msg_type(Icmpv6Type::PacketTooBig);
        packet.set_msg_code(0);
        packet.set_mtu(1280);
        packet.fill_checksum(address("2001:db8:10::2"), address("2001:db8:10::1"));
        assert_eq!(rebuilt, original);
    }

    #[test]
    fn neighbor_solicitation_target() {
        // A neighbor solicitation for 2001:db8:10::2 (type 135, reserved, target).
        let mut message = vec![135, 0, 0, 0, 0, 0, 0, 0];
        message.extend_from_slice(&address("2001:db8:10::2").octets());
        let packet = Packet::new_checked(&message[..]).unwrap();
        assert_eq!(packet.ndp_target().unwrap(), address("2001:db8:10::2"));
        let cut = Packet::new_checked(&message[..20]).unwrap();
        assert!(matches!(cut.ndp_target(), Err(WireError::Truncated { .. })));
    }

    #[test]
    fn echo_fields_round_trip() {
        let mut message = [0u8; 12];
        let mut packet = Packet::new_checked(&mut message[..]).unwrap();
        packet.set_msg_type(Icmpv6Type::EchoRequest);
        packet.set_echo_identifier(0x1617);
        packet.set_echo_sequence(1);
        packet.data_mut().copy_from_slice(b"ping");
        packet.fill_checksum(address("2001:db8::1"), address("2001:db8::2"));
        let packet = Packet::new_checked(&message[..]).unwrap();
        assert_eq!(packet.echo_identifier(), 0x1617);
        assert_eq!(packet.echo_sequence(), 1);
        assert_eq!(packet.data(), b"ping");
        assert!(packet.verify_checksum(address("2001:db8::1"), address("2001:db8::2")));
        assert!(matches!(
            Packet::new_checked(&message[..7]),
            Err(WireError::Truncated {
                layer: Layer::Icmpv6,
                ..
            })
        ));
    }
}
