//! Building the frames the engine sends: TCP segments, ARP replies and requests, NDP
//! advertisements and solicitations. Every frame gets full, freshly computed checksums.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::wire::checksum::upper_layer_checksum_v6;
use crate::wire::{
    ArpOperation, ArpRepr, EtherType, EthernetAddress, EthernetRepr, IpProtocol, Ipv4Repr, Ipv6Repr, SeqNumber,
    TcpFlags, TcpOptions, TcpRepr, VlanTags,
};

const ETHERNET_HEADER_LEN: usize = 14;
const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;

/// Source and destination MAC of a frame, and its VLAN tags (kept from the frames of the
/// session that is answered: the box stays in the VLAN it was reached in).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub source: EthernetAddress,
    pub destination: EthernetAddress,
    pub tags: VlanTags,
}

impl Link {
    pub fn new(source: EthernetAddress, destination: EthernetAddress) -> Link {
        Link { source, destination, tags: VlanTags::default() }
    }

    /// The same VLAN, the other way.
    pub fn reversed(&self) -> Link {
        Link { source: self.destination, destination: self.source, tags: self.tags }
    }

    /// Ethernet header length with the tags.
    fn header_len(&self) -> usize {
        ETHERNET_HEADER_LEN + 4 * self.tags.len()
    }
}

/// A TCP segment to send.
pub struct Segment<'a> {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    pub window: u16,
    pub options: TcpOptions,
    pub payload: &'a [u8],
}

/// An Ethernet + IP + TCP frame, or `None` when the segment cannot be encoded (mixed address
/// families or an oversized payload: the callers never build those).
pub fn tcp_frame(link: Link, segment: &Segment<'_>) -> Option<Vec<u8>> {
    let mut frame = Vec::new();
    tcp_frame_into(link, segment, &mut frame)?;
    Some(frame)
}

/// [`tcp_frame`] written into `frame` (its old contents replaced), so that a poll loop can
/// build every frame in buffers it reuses (see [`super::FramePool`]).
pub fn tcp_frame_into(link: Link, segment: &Segment<'_>, frame: &mut Vec<u8>) -> Option<()> {
    let tcp = TcpRepr {
        src_port: segment.source.port(),
        dst_port: segment.destination.port(),
        seq_number: SeqNumber(segment.seq),
        ack_number: SeqNumber(segment.ack),
        flags: segment.flags,
        window: segment.window,
        urgent_pointer: 0,
        options: segment.options,
        payload: segment.payload,
    };
    let tcp_len = tcp.buffer_len();
    match (segment.source.ip(), segment.destination.ip()) {
        (IpAddr::V4(source), IpAddr::V4(destination)) => {
            let l2 = link.header_len();
            // Headers zeroed, the payload copied once, behind them.
            frame.clear();
            frame.resize(l2 + IPV4_HEADER_LEN + tcp.header_len(), 0);
            frame.extend_from_slice(segment.payload);
            ethernet(link, EtherType::Ipv4, frame)?;
            let ip = Ipv4Repr {
                source,
                destination,
                protocol: IpProtocol::Tcp,
                payload_len: tcp_len,
                ttl: 64,
                identification: 0,
                dont_fragment: true,
                dscp: 0,
                ecn: 0,
            };
            ip.emit(&mut frame[l2..]).ok()?;
            tcp.emit_header(&mut frame[l2 + IPV4_HEADER_LEN..], source.into(), destination.into()).ok()?;
            Some(())
        }
        (IpAddr::V6(source), IpAddr::V6(destination)) => {
            let l2 = link.header_len();
            // Headers zeroed, the payload copied once, behind them.
            frame.clear();
            frame.resize(l2 + IPV6_HEADER_LEN + tcp.header_len(), 0);
            frame.extend_from_slice(segment.payload);
            ethernet(link, EtherType::Ipv6, frame)?;
            let ip = Ipv6Repr {
                source,
                destination,
                next_header: IpProtocol::Tcp,
                payload_len: tcp_len,
                hop_limit: 64,
                traffic_class: 0,
                flow_label: 0,
            };
            ip.emit(&mut frame[l2..]).ok()?;
            tcp.emit_header(&mut frame[l2 + IPV6_HEADER_LEN..], source.into(), destination.into()).ok()?;
            Some(())
        }
        _ => None,
    }
}

/// An ICMP "fragmentation needed" (IPv4, RFC 1191) or ICMPv6 "packet too big" (RFC 8201)
/// from `reporter` to `quoted.source`, quoting the IP header and first 8 TCP bytes (ports and
/// sequence number) of `quoted`, for a link of `mtu` bytes: how the box relays a path MTU
/// message to the peer whose segments it forwards unchanged (passthrough).
pub fn packet_too_big_frame(link: Link, reporter: IpAddr, mtu: u32, quoted: &Segment<'_>) -> Option<Vec<u8>> {
    let quoted_frame = tcp_frame(Link::new(link.source, link.destination), quoted)?;
    let ip_start = ETHERNET_HEADER_LEN;
    let (ip_header_len, protocol_kind) = match quoted.source.ip() {
        IpAddr::V4(_) => (IPV4_HEADER_LEN, 4),
        IpAddr::V6(_) => (IPV6_HEADER_LEN, 6),
    };
    let quoted_bytes = quoted_frame.get(ip_start..ip_start + ip_header_len + 8)?;
    let l2 = link.header_len();
    match (reporter, quoted.source.ip(), protocol_kind) {
        (IpAddr::V4(source), IpAddr::V4(destination), 4) => {
            let mut icmp = vec![3, 4, 0, 0, 0, 0];
            icmp.extend_from_slice(&(mtu.min(u16::MAX as u32) as u16).to_be_bytes());
            icmp.extend_from_slice(quoted_bytes);
            let checksum = crate::wire::checksum::internet_checksum(&icmp);
            icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
            let mut frame = vec![0u8; l2 + IPV4_HEADER_LEN + icmp.len()];
            ethernet(link, EtherType::Ipv4, &mut frame)?;
            let ip = Ipv4Repr {
                source,
                destination,
                protocol: IpProtocol::Icmp,
                payload_len: icmp.len(),
                ttl: 64,
                identification: 0,
                dont_fragment: false,
                dscp: 0,
                ecn: 0,
            };
            ip.emit(&mut frame[l2..]).ok()?;
            frame[l2 + IPV4_HEADER_LEN..].copy_from_slice(&icmp);
            Some(frame)
        }
        (IpAddr::V6(source), IpAddr::V6(destination), 6) => {
            let mut icmp = vec![2, 0, 0, 0];
            icmp.extend_from_slice(&mtu.to_be_bytes());
            icmp.extend_from_slice(quoted_bytes);
            icmpv6_frame(link, source, destination, 64, icmp)
        }
        _ => None,
    }
}

/// Writes the Ethernet header, with the link's VLAN tags between the MACs and `ethertype`.
fn ethernet(link: Link, ethertype: EtherType, frame: &mut [u8]) -> Option<()> {
    let tags = link.tags.as_slice();
    let first = tags.first().map_or(ethertype, |tag| tag.tpid);
    EthernetRepr { source: link.source, destination: link.destination, ethertype: first }.emit(frame).ok()?;
    // Each tag's TPID is written by the previous field; a tag's 4 bytes are TCI then the next
    // TPID (or the final EtherType).
    for (i, tag) in tags.iter().enumerate() {
        let at = ETHERNET_HEADER_LEN - 2 + 4 * i;
        tag.emit(frame.get_mut(at..at + 4)?).ok()?;
        let next = tags.get(i + 1).map_or(ethertype, |next| next.tpid);
        frame.get_mut(at + 4..at + 6)?.copy_from_slice(&u16::from(next).to_be_bytes());
    }
    Some(())
}

/// An ARP request or reply.
pub fn arp_frame(
    operation: ArpOperation,
    sender: (EthernetAddress, Ipv4Addr),
    target: (EthernetAddress, Ipv4Addr),
    destination: EthernetAddress,
    tags: VlanTags,
) -> Option<Vec<u8>> {
    let link = Link { source: sender.0, destination, tags };
    let l2 = link.header_len();
    let mut frame = vec![0u8; l2 + 28];
    ethernet(link, EtherType::Arp, &mut frame)?;
    ArpRepr {
        operation,
        sender_hardware_addr: sender.0,
        sender_protocol_addr: sender.1,
        target_hardware_addr: target.0,
        target_protocol_addr: target.1,
    }
    .emit(&mut frame[l2..])
    .ok()?;
    Some(frame)
}

/// ICMPv6 neighbour discovery: a solicitation (type 135) or advertisement (type 136) for
/// `target`, with the source or target link-layer address option.
pub fn ndp_frame(
    advertisement: bool,
    link: Link,
    source: Ipv6Addr,
    destination: Ipv6Addr,
    target: Ipv6Addr,
    our_mac: EthernetAddress,
) -> Option<Vec<u8>> {
    let mut icmp = vec![0u8; 32];
    icmp[0] = if advertisement { 136 } else { 135 };
    if advertisement {
        // Solicited and override flags.
        icmp[4] = 0x60;
    }
    icmp[8..24].copy_from_slice(&target.octets());
    // Option: 1 = source link-layer address (NS), 2 = target link-layer address (NA); 8 bytes.
    icmp[24] = if advertisement { 2 } else { 1 };
    icmp[25] = 1;
    icmp[26..32].copy_from_slice(&our_mac.0);
    // RFC 4861 7.1: neighbour discovery messages carry hop limit 255.
    icmpv6_frame(link, source, destination, 255, icmp)
}

/// An Ethernet + IPv6 frame carrying the ICMPv6 message `icmp`, its checksum filled in.
fn icmpv6_frame(link: Link, source: Ipv6Addr, destination: Ipv6Addr, hop_limit: u8, mut icmp: Vec<u8>) -> Option<Vec<u8>> {
    let checksum = upper_layer_checksum_v6(source, destination, IpProtocol::Icmpv6, &icmp);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    let l2 = link.header_len();
    let mut frame = vec![0u8; l2 + IPV6_HEADER_LEN + icmp.len()];
    ethernet(link, EtherType::Ipv6, &mut frame)?;
    Ipv6Repr {
        source,
        destination,
        next_header: IpProtocol::Icmpv6,
        payload_len: icmp.len(),
        hop_limit,
        traffic_class: 0,
        flow_label: 0,
    }
    .emit(&mut frame[l2..])
    .ok()?;
    frame[l2 + IPV6_HEADER_LEN..].copy_from_slice(&icmp);
    Some(frame)
}

/// The solicited-node multicast address of `target` and its Ethernet multicast address.
pub fn solicited_node(target: Ipv6Addr) -> (Ipv6Addr, EthernetAddress) {
    let o = target.octets();
    let address = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | o[13] as u16, u16::from_be_bytes([o[14], o[15]]));
    let a = address.octets();
    (address, EthernetAddress([0x33, 0x33, a[12], a[13], a[14], a[15]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{parse_frame, LinkType, NetworkPayload};

    #[test]
    fn packet_too_big_frames_parse_back_and_quote_the_segment() {
        let link = Link::new(EthernetAddress([2, 0, 0, 0, 0, 1]), EthernetAddress([2, 0, 0, 0, 0, 2]));
        for (reporter, source, destination) in [
            ("198.18.0.1", "198.18.0.10:40000", "198.18.0.100:443"),
            ("2001:db8::1", "[2001:db8::10]:40000", "[2001:db8::100]:443"),
        ] {
            let quoted = Segment {
                source: source.parse().unwrap(),
                destination: destination.parse().unwrap(),
                seq: 0x0102_0304,
                ack: 0,
                flags: TcpFlags::ACK,
                window: 0,
                options: TcpOptions::default(),
                payload: &[0u8; 1400],
            };
            let frame = packet_too_big_frame(link, reporter.parse().unwrap(), 1280, &quoted).unwrap();
            let parsed = parse_frame(LinkType::Ethernet, &frame).unwrap();
            let message = match parsed.transport() {
                Some(crate::wire::Transport::Icmpv4(message)) | Some(crate::wire::Transport::Icmpv6(message)) => message,
                other => panic!("not ICMP: {other:?}"),
            };
            assert!(message.checksum_valid);
            assert_eq!(message.mtu, Some(1280));
            let embedded = message.embedded.unwrap();
            assert_eq!(embedded.ports, Some((40000, 443)));
            assert_eq!(embedded.tcp_seq_number.map(|seq| seq.0), Some(0x0102_0304));
            assert_eq!(embedded.source, quoted.source.ip());
        }
    }

    #[test]
    fn tcp_frames_parse_back_with_good_checksums() {
        let link = Link::new(EthernetAddress([2, 0, 0, 0, 0, 1]), EthernetAddress([2, 0, 0, 0, 0, 2]));
        for (source, destination) in [
            ("198.18.0.1:443", "198.18.0.2:40000"),
            ("[2001:db8::1]:443", "[2001:db8::2]:40000"),
        ] {
            let segment = Segment {
                source: source.parse().unwrap(),
                destination: destination.parse().unwrap(),
                seq: 7,
                ack: 9,
                flags: TcpFlags::ACK | TcpFlags::PSH,
                window: 100,
                options: TcpOptions::default(),
                payload: b"hello",
            };
            let frame = tcp_frame(link, &segment).unwrap();
            let parsed = parse_frame(LinkType::Ethernet, &frame).unwrap();
            let tcp = parsed.tcp().unwrap();
            assert!(tcp.checksum_valid);
            assert_eq!(tcp.payload, b"hello");
            assert_eq!(tcp.seq_number.0, 7);
        }
    }

    #[test]
    fn frames_keep_one_or_two_vlan_tags() {
        let mut tags = VlanTags::default();
        tags.push(crate::wire::VlanTag { tpid: EtherType::QinQ, priority: 0, drop_eligible: false, vlan_id: 100 }).unwrap();
        tags.push(crate::wire::VlanTag::dot1q(42)).unwrap();
        let link = Link { source: EthernetAddress([2, 0, 0, 0, 0, 1]), destination: EthernetAddress([2, 0, 0, 0, 0, 2]), tags };
        let segment = Segment {
            source: "198.18.0.1:443".parse().unwrap(),
            destination: "198.18.0.2:40000".parse().unwrap(),
            seq: 1,
            ack: 2,
            flags: TcpFlags::ACK,
            window: 10,
            options: TcpOptions::default(),
            payload: b"tagged",
        };
        let frame = tcp_frame(link, &segment).unwrap();
        let parsed = parse_frame(LinkType::Ethernet, &frame).unwrap();
        assert_eq!(parsed.vlan_tags, tags);
        assert_eq!(parsed.tcp().unwrap().payload, b"tagged");
        assert!(parsed.tcp().unwrap().checksum_valid);
        let arp = arp_frame(
            ArpOperation::Request,
            (EthernetAddress([2, 0, 0, 0, 0, 1]), Ipv4Addr::new(198, 18, 0, 1)),
            (EthernetAddress([0; 6]), Ipv4Addr::new(198, 18, 0, 2)),
            EthernetAddress::BROADCAST,
            tags,
        )
        .unwrap();
        assert_eq!(parse_frame(LinkType::Ethernet, &arp).unwrap().vlan_tags, tags);
    }

    #[test]
    fn arp_and_ndp_frames_parse() {
        let mac = EthernetAddress([2, 0, 0, 0, 0, 1]);
        let frame = arp_frame(
            ArpOperation::Reply,
            (mac, Ipv4Addr::new(198, 18, 0, 100)),
            (EthernetAddress([2, 0, 0, 0, 0, 9]), Ipv4Addr::new(198, 18, 0, 10)),
            EthernetAddress([2, 0, 0, 0, 0, 9]),
            VlanTags::default(),
        )
        .unwrap();
        let parsed = parse_frame(LinkType::Ethernet, &frame).unwrap();
        assert!(matches!(parsed.network, NetworkPayload::Arp(arp) if arp.sender_hardware_addr == mac));
        let target: Ipv6Addr = "2001:db8::100".parse().unwrap();
        let (group, group_mac) = solicited_node(target);
        assert_eq!(group, "ff02::1:ff00:100".parse::<Ipv6Addr>().unwrap());
        let frame = ndp_frame(false, Link::new(mac, group_mac), "2001:db8::10".parse().unwrap(), group, target, mac)
            .unwrap();
        let parsed = parse_frame(LinkType::Ethernet, &frame).unwrap();
        let icmp = match parsed.transport() {
            Some(crate::wire::Transport::Icmpv6(message)) => *message,
            other => panic!("{other:?}"),
        };
        assert!(icmp.checksum_valid);
        assert_eq!(icmp.msg_type, 135);
    }
}
