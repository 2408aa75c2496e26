//! ICMP for IPv4 (RFC 792): echo, and the error messages cutls relays for its sessions.
//!
//! The view exposes the type, code and checksum, the echo identifier and sequence number, the
//! next-hop MTU of a "fragmentation needed" error (RFC 1191), and the quoted original packet of
//! any error message through [`super::embedded`].
//!
//! Not supported: timestamp, address-mask and router-discovery messages beyond their type and
//! code; the RFC 4884 extension structure after the quoted packet.

use super::embedded::{self, EmbeddedPacket};
use super::{check_len, checksum, enum_with_unknown, read_u16, write_u16, Layer, WireError};

enum_with_unknown! {
    /// ICMPv4 message types.
    pub enum Icmpv4Type(u8) {
        EchoReply = 0,
        DestinationUnreachable = 3,
        Redirect = 5,
        EchoRequest = 8,
        TimeExceeded = 11,
        ParameterProblem = 12,
    }
}

impl Icmpv4Type {
    /// Error messages quote the packet that caused them.
    pub fn is_error(self) -> bool {
        matches!(
            self,
            Icmpv4Type::DestinationUnreachable
                | Icmpv4Type::Redirect
                | Icmpv4Type::TimeExceeded
                | Icmpv4Type::ParameterProblem
        )
    }
}

/// Code 4 of destination unreachable: fragmentation needed and DF set.
pub const CODE_FRAGMENTATION_NEEDED: u8 = 4;

/// Byte ranges of the ICMPv4 header.
pub mod field {
    use core::ops::Range;

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    /// Echo: identifier.
    pub const ECHO_IDENTIFIER: Range<usize> = 4..6;
    /// Echo: sequence number.
    pub const ECHO_SEQUENCE: Range<usize> = 6..8;
    /// Destination unreachable, code 4: the next-hop MTU (RFC 1191).
    pub const NEXT_HOP_MTU: Range<usize> = 6..8;
    /// Echo data, or the quoted packet of an error.
    pub const DATA: usize = 8;
}

/// Length of the ICMPv4 header.
pub const HEADER_LEN: usize = field::DATA;

/// A read/write view of an ICMPv4 message. The buffer must be exactly the message (the IP
/// payload), because the checksum covers all of it.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Packet<T>, WireError> {
        check_len(Layer::Icmpv4, buffer.as_ref(), HEADER_LEN)?;
        Ok(Packet { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn msg_type(&self) -> Icmpv4Type {
        Icmpv4Type::from(self.buffer.as_ref()[field::TYPE])
    }

    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    pub fn echo_identifier(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_IDENTIFIER.start)
    }

    pub fn echo_sequence(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_SEQUENCE.start)
    }

    /// True for destination unreachable, code 4 (fragmentation needed).
    pub fn is_fragmentation_needed(&self) -> bool {
        self.msg_type() == Icmpv4Type::DestinationUnreachable
            && self.msg_code() == CODE_FRAGMENTATION_NEEDED
    }

    /// The next-hop MTU of a "fragmentation needed" error; `None` for other messages. Zero
    /// means a pre-RFC 1191 router that did not say.
    pub fn next_hop_mtu(&self) -> Option<u16> {
        self.is_fragmentation_needed()
            .then(|| read_u16(self.buffer.as_ref(), field::NEXT_HOP_MTU.start))
    }

    /// Echo data, or the quoted packet of an error.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA..]
    }

    /// The quoted original packet of an error message.
    pub fn embedded_packet(&self) -> Result<EmbeddedPacket<'_>, WireError> {
        if !self.msg_type().is_error() {
            return Err(WireError::Unsupported {
                layer: Layer::Icmpv4,
                reason: "not an error message: nothing is quoted",
            });
        }
        embedded::parse_ipv4(self.data())
    }

    pub fn verify_checksum(&self) -> bool {
        checksum::verify(self.buffer.as_ref())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_msg_type(&mut self, msg_type: Icmpv4Type) {
        self.buffer.as_mut()[field::TYPE] = u8::from(msg_type);
    }

    pub fn set_msg_code(&mut self, code: u8) {
        self.buffer.as_mut()[field::CODE] = code;
    }

    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM.start, checksum);
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

    /// Writes the unused word and next-hop MTU of a "fragmentation needed" error.
    pub fn set_next_hop_mtu(&mut self, mtu: u16) {
        write_u16(self.buffer.as_mut(), field::ECHO_IDENTIFIER.start, 0);
        write_u16(self.buffer.as_mut(), field::NEXT_HOP_MTU.start, mtu);
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA..]
    }

    /// Computes the checksum over the whole message and writes it.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let computed = checksum::internet_checksum(self.buffer.as_ref());
        self.set_checksum(computed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_frames::{LAB_ICMP_ECHO_REQUEST, LAB_ICMP_FRAG_NEEDED};
    use crate::wire::{IpProtocol, SeqNumber};
    use std::net::{IpAddr, Ipv4Addr};

    #[test]
    fn parses_real_echo_request() {
        // tshark: type 8, checksum 0xf55a (good), id 5651, seq 1, 48 bytes of data after the
        // 8-byte timestamp.
        let packet = Packet::new_checked(&LAB_ICMP_ECHO_REQUEST[34..]).unwrap();
        assert_eq!(packet.msg_type(), Icmpv4Type::EchoRequest);
        assert_eq!(packet.msg_code(), 0);
        assert_eq!(packet.checksum(), 0xf55a);
        assert!(packet.verify_checksum());
        assert_eq!(packet.echo_identifier(), 5651);
        assert_eq!(packet.echo_sequence(), 1);
        assert_eq!(packet.data().len(), 56);
        assert_eq!(packet.next_hop_mtu(), None);
        assert!(packet.embedded_packet().is_err());
    }

    #[test]
    fn parses_real_fragmentation_needed() {
        // tshark: type 3 code 4, checksum 0x9ef1 (good), MTU of next hop 1280, quoting
        // 198.18.10.1:52310 -> 198.18.11.1:8443 seq 3461914207.
        let packet = Packet::new_checked(&LAB_ICMP_FRAG_NEEDED[34..]).unwrap();
        assert!(packet.is_fragmentation_needed());
        assert_eq!(packet.checksum(), 0x9ef1);
        assert!(packet.verify_checksum());
        assert_eq!(packet.next_hop_mtu(), Some(1280));
        let embedded = packet.embedded_packet().unwrap();
        assert_eq!(embedded.protocol, IpProtocol::Tcp);
        assert_eq!(embedded.source, IpAddr::V4(Ipv4Addr::new(198, 18, 10, 1)));
        assert_eq!(embedded.ports, Some((52310, 8443)));
        assert_eq!(embedded.tcp_seq_number, Some(SeqNumber(3_461_914_207)));
    }

    #[test]
    fn setters_and_fill_checksum_rebuild_the_real_messages() {
        let original = &LAB_ICMP_FRAG_NEEDED[34..];
        let mut rebuilt = original.to_vec();
        rebuilt[..8].fill(0);
        let mut packet = Packet::new_checked(&mut rebuilt[..]).unwrap();
        packet.set_msg_type(Icmpv4Type::DestinationUnreachable);
        packet.set_msg_code(CODE_FRAGMENTATION_NEEDED);
        packet.set_next_hop_mtu(1280);
        packet.fill_checksum();
        assert_eq!(rebuilt, original);

        let original = &LAB_ICMP_ECHO_REQUEST[34..];
        let mut rebuilt = original.to_vec();
        rebuilt[..8].fill(0);
        let mut packet = Packet::new_checked(&mut rebuilt[..]).unwrap();
        packet.set_msg_type(Icmpv4Type::EchoRequest);
        packet.set_echo_identifier(5651);
        packet.set_echo_sequence(1);
        packet.fill_checksum();
        assert_eq!(rebuilt, original);
    }

    #[test]
    fn bad_checksum_and_short_header_are_detected() {
        let mut corrupted = LAB_ICMP_ECHO_REQUEST[34..].to_vec();
        corrupted[20] ^= 0x40;
        assert!(!Packet::new_checked(&corrupted[..])
            .unwrap()
            .verify_checksum());
        assert!(matches!(
            Packet::new_checked(&LAB_ICMP_ECHO_REQUEST[34..41]),
            Err(WireError::Truncated {
                layer: Layer::Icmpv4,
                needed: 8,
                available: 7
            })
        ));
    }
}
