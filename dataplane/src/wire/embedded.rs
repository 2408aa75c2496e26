//! The copy of an original packet that ICMP and ICMPv6 error messages quote.
//!
//! An error (destination unreachable, fragmentation needed, packet too big, time exceeded,
//! parameter problem) carries the start of the packet that caused it: its IP header and at
//! least the first 8 bytes after it (RFC 792), or as much as fits in 1280 bytes (RFC 4443). For
//! a TCP packet those 8 bytes hold the ports and the sequence number, which is what cutls needs
//! to find the session and to relay the error to the peer (rewriting the quoted addresses and
//! ports). The quoted packet is usually cut short, so its IP length fields are not checked
//! against the bytes present.
//!
//! Not supported: quoting more than one IP header deep (an ICMP error about a tunnelled packet
//! is decoded as far as the outer quoted header).

use std::net::IpAddr;

use super::ipv4;
use super::ipv6;
use super::seq::SeqNumber;
use super::{read_u16, read_u32, IpProtocol, WireError};

/// What an ICMP error says about the packet it quotes. Offsets count from the start of the
/// quoted bytes (the ICMP message's data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedPacket<'a> {
    pub source: IpAddr,
    pub destination: IpAddr,
    /// The upper-layer protocol after any IPv6 extension headers.
    pub protocol: IpProtocol,
    /// True when the quoted packet was itself a fragment (its transport header may be absent).
    pub is_fragment: bool,
    /// Offset of the transport header in the quoted bytes.
    pub transport_offset: usize,
    /// The quoted transport bytes present (often only the first 8).
    pub transport: &'a [u8],
    /// Ports of a quoted TCP or UDP header, when its first 4 bytes are present.
    pub ports: Option<(u16, u16)>,
    /// Sequence number of a quoted TCP header, when its first 8 bytes are present.
    pub tcp_seq_number: Option<SeqNumber>,
}

/// Decodes the quoted packet at the start of `quoted`, whatever its IP version.
pub fn parse(quoted: &[u8]) -> Result<EmbeddedPacket<'_>, WireError> {
    match quoted.first().map(|byte| byte >> 4) {
        Some(6) => parse_ipv6(quoted),
        _ => parse_ipv4(quoted),
    }
}

/// Decodes a quoted IPv4 packet.
pub fn parse_ipv4(quoted: &[u8]) -> Result<EmbeddedPacket<'_>, WireError> {
    let packet = ipv4::Packet::new_checked_header(quoted)?;
    let header_len = packet.header_len();
    // A non-first fragment carries no transport header at all.
    let has_transport_header = packet.fragment_offset() == 0;
    // Slice `quoted` itself (not the view) so the result outlives this function.
    let end = quoted
        .len()
        .min(usize::from(packet.total_len()))
        .max(header_len);
    let transport = &quoted[header_len..end];
    Ok(describe(
        IpAddr::V4(packet.source()),
        IpAddr::V4(packet.destination()),
        packet.protocol(),
        packet.is_fragment(),
        header_len,
        transport,
        has_transport_header,
    ))
}

/// Decodes a quoted IPv6 packet, walking its extension headers within the quoted bytes.
pub fn parse_ipv6(quoted: &[u8]) -> Result<EmbeddedPacket<'_>, WireError> {
    let packet = ipv6::Packet::new_checked_header(quoted)?;
    // Slice `quoted` itself (not the view) so the result outlives this function.
    let end = quoted
        .len()
        .min(ipv6::HEADER_LEN + usize::from(packet.payload_len()));
    let payload = &quoted[ipv6::HEADER_LEN..end];
    let walk = ipv6::walk_extension_headers(packet.next_header(), payload)?;
    let has_transport_header = walk.fragment.is_none_or(|fragment| fragment.offset == 0);
    Ok(describe(
        IpAddr::V6(packet.source()),
        IpAddr::V6(packet.destination()),
        walk.upper_protocol,
        walk.fragment.is_some(),
        ipv6::HEADER_LEN + walk.upper_offset,
        &payload[walk.upper_offset..],
        has_transport_header,
    ))
}

fn describe(
    source: IpAddr,
    destination: IpAddr,
    protocol: IpProtocol,
    is_fragment: bool,
    transport_offset: usize,
    transport: &[u8],
    has_transport_header: bool,
) -> EmbeddedPacket<'_> {
    let has_ports = has_transport_header && matches!(protocol, IpProtocol::Tcp | IpProtocol::Udp);
    let ports = (has_ports && transport.len() >= 4)
        .then(|| (read_u16(transport, 0), read_u16(transport, 2)));
    let tcp_seq_number =
        (has_transport_header && protocol == IpProtocol::Tcp && transport.len() >= 8)
            .then(|| SeqNumber(read_u32(transport, 4)));
    EmbeddedPacket {
        source,
        destination,
        protocol,
        is_fragment,
        transport_offset,
        transport,
        ports,
        tcp_seq_number,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_frames::{LAB_ICMPV6_PACKET_TOO_BIG, LAB_ICMP_FRAG_NEEDED};
    use crate::wire::Layer;
    use std::net::Ipv4Addr;

    #[test]
    fn quoted_ipv4_tcp_header_from_a_real_error() {
        // Ethernet 14 + IP 20 + ICMP 8: the quoted packet starts at byte 42.
        let quoted = &LAB_ICMP_FRAG_NEEDED[42..];
        let embedded = parse(quoted).unwrap();
        assert_eq!(embedded.source, IpAddr::V4(Ipv4Addr::new(198, 18, 10, 1)));
        assert_eq!(
            embedded.destination,
            IpAddr::V4(Ipv4Addr::new(198, 18, 11, 1))
        );
        assert_eq!(embedded.protocol, IpProtocol::Tcp);
        assert!(!embedded.is_fragment);
        assert_eq!(embedded.transport_offset, 20);
        assert_eq!(embedded.ports, Some((52310, 8443)));
        assert_eq!(embedded.tcp_seq_number, Some(SeqNumber(3_461_914_207)));
    }

    #[test]
    fn only_eight_quoted_bytes_are_enough() {
        let quoted = &LAB_ICMP_FRAG_NEEDED[42..42 + 28];
        let embedded = parse(quoted).unwrap();
        assert_eq!(embedded.transport.len(), 8);
        assert_eq!(embedded.ports, Some((52310, 8443)));
        assert_eq!(embedded.tcp_seq_number, Some(SeqNumber(3_461_914_207)));
        let shorter = parse(&LAB_ICMP_FRAG_NEEDED[42..42 + 24]).unwrap();
        assert_eq!(shorter.ports, Some((52310, 8443)));
        assert_eq!(shorter.tcp_seq_number, None);
    }

    #[test]
    fn quoted_ipv6_tcp_header_from_a_real_error() {
        // Ethernet 14 + IPv6 40 + ICMPv6 8: the quoted packet starts at byte 62.
        let embedded = parse(&LAB_ICMPV6_PACKET_TOO_BIG[62..]).unwrap();
        assert_eq!(embedded.source, "2001:db8:10::1".parse::<IpAddr>().unwrap());
        assert_eq!(
            embedded.destination,
            "2001:db8:11::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(embedded.protocol, IpProtocol::Tcp);
        assert_eq!(embedded.transport_offset, 40);
        assert_eq!(embedded.ports, Some((59518, 8443)));
        assert_eq!(embedded.tcp_seq_number, Some(SeqNumber(3_358_773_523)));
    }

    #[test]
    fn a_quoted_non_first_fragment_has_no_ports() {
        let mut quoted = LAB_ICMP_FRAG_NEEDED[42..42 + 28].to_vec();
        quoted[6..8].copy_from_slice(&[0x00, 0xb9]);
        let embedded = parse(&quoted).unwrap();
        assert!(embedded.is_fragment);
        assert_eq!(embedded.ports, None);
        assert_eq!(embedded.tcp_seq_number, None);
    }

    #[test]
    fn a_cut_header_is_refused() {
        assert!(matches!(
            parse(&LAB_ICMP_FRAG_NEEDED[42..42 + 19]),
            Err(WireError::Truncated {
                layer: Layer::Ipv4,
                ..
            })
        ));
        assert!(matches!(
            parse(&LAB_ICMPV6_PACKET_TOO_BIG[62..62 + 39]),
            Err(WireError::Truncated {
                layer: Layer::Ipv6,
                ..
            })
        ));
        assert!(parse(&[]).is_err());
    }
}
