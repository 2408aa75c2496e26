//! [`parse_frame`]: one call from a captured frame's bytes to its link layer, VLAN tags, IP
//! header and TCP segment.
//!
//! This is the entry point for offline tools (`cutls decrypt`) that read captures whose bytes
//! nobody vouches for: every length is checked through the views' `new_checked`, and any byte
//! string gives `Ok` or a typed [`WireError`], never a panic (the `parse_frame` fuzz target and
//! a property test hold it to that). Checksums are verified and reported, not enforced:
//! captures taken on the sending host hold offloaded, not-yet-computed checksums.
//!
//! Not supported: link types other than those of [`LinkType`] (refused with
//! [`WireError::UnsupportedLinkType`]), IP-in-IP and other tunnels (reported as
//! [`Transport::Other`]), UDP decoding (reported as `Other`), reassembly (a fragment is
//! [`Transport::Fragment`], never TCP).

use std::net::IpAddr;

use super::arp::{self, ArpRepr};
use super::embedded::{self, EmbeddedPacket};
use super::ethernet::{EtherType, EthernetAddress};
use super::icmpv4;
use super::icmpv6;
use super::ipv4;
use super::ipv6;
use super::loopback::{self, LoopbackFamily};
use super::seq::SeqNumber;
use super::sll::{PacketType, Sll2Header, SllHeader};
use super::tcp::{self, TcpFlags, TcpOptions};
use super::vlan::{self, VlanTags};
use super::{enum_with_unknown, IpProtocol, Layer, WireError};

enum_with_unknown! {
    /// The pcap LINKTYPE_* numbers (www.tcpdump.org/linktypes.html) that [`parse_frame`]
    /// decodes; any other number is kept as `Unknown(n)` so a capture file can still be read.
    pub enum LinkType(u32) {
        /// BSD loopback, address family in the capturing host's byte order.
        Null = 0,
        Ethernet = 1,
        /// Raw IP, version from the first nibble.
        Raw = 101,
        /// OpenBSD loopback, address family big-endian.
        Loop = 108,
        LinuxSll = 113,
        Ipv4 = 228,
        Ipv6 = 229,
        LinuxSll2 = 276,
    }
}

/// The IP version of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpVersion {
    V4,
    V6,
}

/// What the link layer said besides the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkInfo {
    Ethernet {
        source: EthernetAddress,
        destination: EthernetAddress,
    },
    LinuxSll {
        packet_type: PacketType,
        arphrd_type: u16,
    },
    LinuxSll2 {
        packet_type: PacketType,
        arphrd_type: u16,
        interface_index: u32,
    },
    Loopback,
    RawIp,
}

/// A fragment, from the IPv4 header or an IPv6 fragment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragmentInfo {
    /// Offset of this fragment's data in the original payload, in bytes.
    pub offset: u16,
    pub more_fragments: bool,
    /// IPv4's 16-bit identification or IPv6's 32-bit one.
    pub identification: u32,
}

/// The IP layer of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpInfo {
    pub version: IpVersion,
    pub source: IpAddr,
    pub destination: IpAddr,
    /// The upper-layer protocol (after IPv6 extension headers).
    pub protocol: IpProtocol,
    /// TTL or hop limit.
    pub hop_limit: u8,
    /// Bytes from the start of the IP header to the upper layer (IPv4 options and IPv6
    /// extension headers included).
    pub header_len: usize,
    /// Set for any fragment: the transport is then [`Transport::Fragment`].
    pub fragment: Option<FragmentInfo>,
    /// IPv4 header checksum verdict; `None` for IPv6, which has none.
    pub header_checksum_valid: Option<bool>,
}

/// A TCP segment's header fields and payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSegment<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq_number: SeqNumber,
    pub ack_number: SeqNumber,
    pub flags: TcpFlags,
    /// The raw window field (unscaled).
    pub window: u16,
    pub urgent_pointer: u16,
    pub header_len: usize,
    pub options: TcpOptions,
    /// Whether the checksum verifies under the pseudo-header (false in captures taken on a
    /// sender with checksum offload), or the receive path vouched for it
    /// ([`TransportChecksum::Offloaded`]).
    pub checksum_valid: bool,
    pub payload: &'a [u8],
}

/// An ICMPv4 or ICMPv6 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpMessage<'a> {
    pub msg_type: u8,
    pub code: u8,
    /// Next-hop MTU of an ICMPv4 "fragmentation needed" or MTU of an ICMPv6 "packet too big".
    pub mtu: Option<u32>,
    /// The quoted original packet of an error message, when it decodes.
    pub embedded: Option<EmbeddedPacket<'a>>,
    pub checksum_valid: bool,
    /// The whole ICMP message.
    pub message: &'a [u8],
}

/// What follows the IP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport<'a> {
    Tcp(TcpSegment<'a>),
    Icmpv4(IcmpMessage<'a>),
    Icmpv6(IcmpMessage<'a>),
    /// A fragment's data: never parsed, whatever the protocol.
    Fragment {
        protocol: IpProtocol,
        data: &'a [u8],
    },
    /// Any other protocol (UDP included), undecoded.
    Other {
        protocol: IpProtocol,
        data: &'a [u8],
    },
}

/// What the link layer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkPayload<'a> {
    Ip {
        ip: IpInfo,
        transport: Transport<'a>,
    },
    Arp(ArpRepr),
    /// An EtherType this module does not decode (or an ARP packet that is not Ethernet/IPv4).
    Other {
        ethertype: EtherType,
        data: &'a [u8],
    },
}

/// A decoded frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub link_type: LinkType,
    pub link: LinkInfo,
    /// VLAN tags, outermost first (Ethernet and Linux cooked captures only).
    pub vlan_tags: VlanTags,
    pub network: NetworkPayload<'a>,
}

impl<'a> Frame<'a> {
    pub fn ip(&self) -> Option<&IpInfo> {
        match &self.network {
            NetworkPayload::Ip { ip, .. } => Some(ip),
            _ => None,
        }
    }

    pub fn transport(&self) -> Option<&Transport<'a>> {
        match &self.network {
            NetworkPayload::Ip { transport, .. } => Some(transport),
            _ => None,
        }
    }

    /// The TCP segment, if the frame carries a whole one (not a fragment).
    pub fn tcp(&self) -> Option<&TcpSegment<'a>> {
        match self.transport() {
            Some(Transport::Tcp(segment)) => Some(segment),
            _ => None,
        }
    }
}

/// Decodes a captured frame of link type `link`: link layer (Ethernet with up to two VLAN
/// tags, Linux SLL/SLL2, BSD loopback, raw IP), then ARP or IP (IPv4 options skipped, IPv6
/// extension headers walked), then TCP or ICMP unless the packet is a fragment.
pub fn parse_frame(link: LinkType, bytes: &[u8]) -> Result<Frame<'_>, WireError> {
    parse_frame_with(link, bytes, TransportChecksum::Verify)
}

/// Who vouches for the transport checksums (TCP, ICMP, ICMPv6) of a received frame: the idea
/// of smoltcp's `ChecksumCapabilities`, for the receive side only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportChecksum {
    /// Compute and report them (`checksum_valid`).
    #[default]
    Verify,
    /// The receive path already verified them (a NIC's receive checksum offload, as the frame
    /// I/O backend reported it): `checksum_valid` is set without computing. The IPv4 header
    /// checksum (20 bytes) is always computed.
    Offloaded,
}

/// [`parse_frame`], with the transport checksums verified or taken as `checksum`.
pub fn parse_frame_with(link: LinkType, bytes: &[u8], checksum: TransportChecksum) -> Result<Frame<'_>, WireError> {
    let (link_info, network) = match link {
        LinkType::Ethernet => {
            let ethernet = super::ethernet::Frame::new_checked(bytes)?;
            let info = LinkInfo::Ethernet {
                source: ethernet.source(),
                destination: ethernet.destination(),
            };
            (info, Network::Tagged(vlan::decode_tags(bytes)?))
        }
        LinkType::LinuxSll => {
            let header = SllHeader::new_checked(bytes)?;
            let info = LinkInfo::LinuxSll {
                packet_type: header.packet_type(),
                arphrd_type: header.arphrd_type(),
            };
            let stack = vlan::walk_tags(bytes, header.protocol(), super::sll::SLL_HEADER_LEN)?;
            (info, Network::Tagged(stack))
        }
        LinkType::LinuxSll2 => {
            let header = Sll2Header::new_checked(bytes)?;
            let info = LinkInfo::LinuxSll2 {
                packet_type: header.packet_type(),
                arphrd_type: header.arphrd_type(),
                interface_index: header.interface_index(),
            };
            let stack = vlan::walk_tags(bytes, header.protocol(), super::sll::SLL2_HEADER_LEN)?;
            (info, Network::Tagged(stack))
        }
        LinkType::Null | LinkType::Loop => {
            let header = loopback::Header::new_checked(bytes)?;
            let version = match header.family()? {
                LoopbackFamily::Ipv4 => IpVersion::V4,
                LoopbackFamily::Ipv6 => IpVersion::V6,
            };
            (
                LinkInfo::Loopback,
                Network::Ip(version, &bytes[loopback::HEADER_LEN..]),
            )
        }
        LinkType::Raw => {
            let version = match bytes.first().map(|byte| byte >> 4) {
                Some(4) => IpVersion::V4,
                Some(6) => IpVersion::V6,
                Some(_) => {
                    return Err(WireError::Malformed {
                        layer: Layer::Ipv4,
                        reason: "raw IP frame with a version other than 4 or 6",
                    })
                }
                None => {
                    return Err(WireError::Truncated {
                        layer: Layer::Ipv4,
                        needed: 1,
                        available: 0,
                    })
                }
            };
            (LinkInfo::RawIp, Network::Ip(version, bytes))
        }
        LinkType::Ipv4 => (LinkInfo::RawIp, Network::Ip(IpVersion::V4, bytes)),
        LinkType::Ipv6 => (LinkInfo::RawIp, Network::Ip(IpVersion::V6, bytes)),
        LinkType::Unknown(number) => return Err(WireError::UnsupportedLinkType(number)),
    };

    let (vlan_tags, network) = match network {
        Network::Ip(version, packet) => (VlanTags::default(), parse_ip(version, packet, checksum)?),
        Network::Tagged(stack) => {
            // `walk_tags` checked every tag against the buffer, so the offset is inside it.
            let payload = bytes.get(stack.payload_offset..).unwrap_or_default();
            (stack.tags, parse_ethertype(stack.inner_ethertype, payload, checksum)?)
        }
    };
    Ok(Frame {
        link_type: link,
        link: link_info,
        vlan_tags,
        network,
    })
}

/// Where the link layer left off: an EtherType still to dispatch on, or a known IP version.
enum Network<'a> {
    Tagged(vlan::TagStack),
    Ip(IpVersion, &'a [u8]),
}

fn parse_ethertype(ethertype: EtherType, payload: &[u8], checksum: TransportChecksum) -> Result<NetworkPayload<'_>, WireError> {
    match ethertype {
        EtherType::Ipv4 => parse_ip(IpVersion::V4, payload, checksum),
        EtherType::Ipv6 => parse_ip(IpVersion::V6, payload, checksum),
        EtherType::Arp => match arp::Packet::new_checked(payload) {
            Ok(packet) => Ok(NetworkPayload::Arp(ArpRepr::parse(&packet))),
            Err(WireError::Unsupported { .. }) => Ok(NetworkPayload::Other {
                ethertype,
                data: payload,
            }),
            Err(error) => Err(error),
        },
        _ => Ok(NetworkPayload::Other {
            ethertype,
            data: payload,
        }),
    }
}

fn parse_ip(version: IpVersion, packet: &[u8], checksum: TransportChecksum) -> Result<NetworkPayload<'_>, WireError> {
    match version {
        IpVersion::V4 => parse_ipv4(packet, checksum),
        IpVersion::V6 => parse_ipv6(packet, checksum),
    }
}

fn parse_ipv4(bytes: &[u8], checksum: TransportChecksum) -> Result<NetworkPayload<'_>, WireError> {
    let packet = ipv4::Packet::new_checked(bytes)?;
    let header_len = packet.header_len();
    let fragment = packet.is_fragment().then(|| FragmentInfo {
        offset: packet.fragment_offset(),
        more_fragments: packet.more_fragments(),
        identification: u32::from(packet.identification()),
    });
    let ip = IpInfo {
        version: IpVersion::V4,
        source: IpAddr::V4(packet.source()),
        destination: IpAddr::V4(packet.destination()),
        protocol: packet.protocol(),
        hop_limit: packet.ttl(),
        header_len,
        fragment,
        header_checksum_valid: Some(packet.verify_checksum()),
    };
    // The view borrows `bytes`; take the payload from `bytes` itself for the frame's lifetime.
    let payload = &bytes[header_len..usize::from(packet.total_len())];
    let transport = parse_transport(&ip, payload, checksum)?;
    Ok(NetworkPayload::Ip { ip, transport })
}

fn parse_ipv6(bytes: &[u8], checksum: TransportChecksum) -> Result<NetworkPayload<'_>, WireError> {
    let packet = ipv6::Packet::new_checked(bytes)?;
    let payload = &bytes[ipv6::HEADER_LEN..ipv6::HEADER_LEN + usize::from(packet.payload_len())];
    let walk = ipv6::walk_extension_headers(packet.next_header(), payload)?;
    let ip = IpInfo {
        version: IpVersion::V6,
        source: IpAddr::V6(packet.source()),
        destination: IpAddr::V6(packet.destination()),
        protocol: walk.upper_protocol,
        hop_limit: packet.hop_limit(),
        header_len: ipv6::HEADER_LEN + walk.upper_offset,
        fragment: walk.fragment.map(|fragment| FragmentInfo {
            offset: fragment.offset,
            more_fragments: fragment.more_fragments,
            identification: fragment.identification,
        }),
        header_checksum_valid: None,
    };
    let transport = parse_transport(&ip, &payload[walk.upper_offset..], checksum)?;
    Ok(NetworkPayload::Ip { ip, transport })
}

fn parse_transport<'a>(ip: &IpInfo, data: &'a [u8], checksum: TransportChecksum) -> Result<Transport<'a>, WireError> {
    if ip.fragment.is_some() {
        return Ok(Transport::Fragment {
            protocol: ip.protocol,
            data,
        });
    }
    match (ip.version, ip.protocol) {
        (_, IpProtocol::Tcp) => parse_tcp(ip, data, checksum).map(Transport::Tcp),
        (IpVersion::V4, IpProtocol::Icmp) => parse_icmpv4(data, checksum).map(Transport::Icmpv4),
        (IpVersion::V6, IpProtocol::Icmpv6) => parse_icmpv6(ip, data, checksum).map(Transport::Icmpv6),
        (_, protocol) => Ok(Transport::Other { protocol, data }),
    }
}

fn parse_tcp<'a>(ip: &IpInfo, segment: &'a [u8], checksum: TransportChecksum) -> Result<TcpSegment<'a>, WireError> {
    let packet = tcp::Packet::new_checked(segment)?;
    let header_len = packet.header_len();
    Ok(TcpSegment {
        src_port: packet.src_port(),
        dst_port: packet.dst_port(),
        seq_number: packet.seq_number(),
        ack_number: packet.ack_number(),
        flags: packet.flags(),
        window: packet.window(),
        urgent_pointer: packet.urgent_pointer(),
        header_len,
        options: packet.parse_options()?,
        checksum_valid: checksum == TransportChecksum::Offloaded || packet.verify_checksum(ip.source, ip.destination),
        payload: &segment[header_len..],
    })
}

fn parse_icmpv4(message: &[u8], checksum: TransportChecksum) -> Result<IcmpMessage<'_>, WireError> {
    let packet = icmpv4::Packet::new_checked(message)?;
    let msg_type = packet.msg_type();
    Ok(IcmpMessage {
        msg_type: u8::from(msg_type),
        code: packet.msg_code(),
        mtu: packet.next_hop_mtu().map(u32::from),
        embedded: if msg_type.is_error() {
            embedded::parse_ipv4(&message[icmpv4::HEADER_LEN..]).ok()
        } else {
            None
        },
        checksum_valid: checksum == TransportChecksum::Offloaded || packet.verify_checksum(),
        message,
    })
}

fn parse_icmpv6<'a>(ip: &IpInfo, message: &'a [u8], checksum: TransportChecksum) -> Result<IcmpMessage<'a>, WireError> {
    let packet = icmpv6::Packet::new_checked(message)?;
    let msg_type = packet.msg_type();
    let checksum_valid = match (ip.source, ip.destination) {
        _ if checksum == TransportChecksum::Offloaded => true,
        (IpAddr::V6(source), IpAddr::V6(destination)) => {
            packet.verify_checksum(source, destination)
        }
        _ => false,
    };
    Ok(IcmpMessage {
        msg_type: u8::from(msg_type),
        code: packet.msg_code(),
        mtu: packet.mtu(),
        embedded: if msg_type.is_error() {
            embedded::parse_ipv6(&message[icmpv6::HEADER_LEN..]).ok()
        } else {
            None
        },
        checksum_valid,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tcp::TcpTimestamp;
    use crate::wire::test_frames::*;
    use crate::wire::vlan::VlanTag;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn ethernet_ipv4_tcp_syn() {
        let frame = parse_frame(LinkType::Ethernet, &ETH_IPV4_TCP_SYN).unwrap();
        assert!(frame.vlan_tags.is_empty());
        let ip = frame.ip().unwrap();
        assert_eq!(ip.version, IpVersion::V4);
        assert_eq!(ip.source, v4(192, 168, 100, 70));
        assert_eq!(ip.destination, v4(193, 99, 144, 80));
        assert_eq!(ip.header_checksum_valid, Some(true));
        let tcp = frame.tcp().unwrap();
        assert_eq!((tcp.src_port, tcp.dst_port), (48216, 443));
        assert_eq!(tcp.seq_number, SeqNumber(671_564_479));
        assert_eq!(tcp.flags, TcpFlags::SYN);
        assert_eq!(tcp.window, 64240);
        assert_eq!(tcp.options.max_segment_size, Some(1460));
        assert_eq!(tcp.options.window_scale, Some(7));
        assert!(tcp.options.sack_permitted);
        assert_eq!(
            tcp.options.timestamp,
            Some(TcpTimestamp {
                value: 2_102_291_660,
                echo_reply: 0
            })
        );
        assert!(
            !tcp.checksum_valid,
            "tshark: 0x76d1 incorrect, should be 0xc377"
        );
        assert!(tcp.payload.is_empty());
    }

    #[test]
    fn linux_sll_tcp_data() {
        // tshark: 172.16.112.134:53800 -> 178.62.74.206:443, seq 2471321361,
        // ack 2286465138, PSH ACK, win 62780, 46 bytes.
        let frame = parse_frame(LinkType::LinuxSll, &SLL_IPV4_TCP_DATA).unwrap();
        assert_eq!(
            frame.link,
            LinkInfo::LinuxSll {
                packet_type: PacketType::Outgoing,
                arphrd_type: 1
            }
        );
        let ip = frame.ip().unwrap();
        assert_eq!(ip.source, v4(172, 16, 112, 134));
        assert_eq!(ip.destination, v4(178, 62, 74, 206));
        let tcp = frame.tcp().unwrap();
        assert_eq!((tcp.src_port, tcp.dst_port), (53800, 443));
        assert_eq!(tcp.seq_number, SeqNumber(2_471_321_361));
        assert_eq!(tcp.ack_number, SeqNumber(2_286_465_138));
        assert_eq!(tcp.flags, TcpFlags::PSH | TcpFlags::ACK);
        assert_eq!(tcp.window, 62780);
        assert_eq!(tcp.payload.len(), 46);
        assert_eq!(tcp.payload[0], 0x17, "a TLS application-data record");
    }

    #[test]
    fn linux_sll2_syn_and_arp() {
        let frame = parse_frame(LinkType::LinuxSll2, &LAB_SLL2_IPV4_TCP_SYN).unwrap();
        assert!(matches!(
            frame.link,
            LinkInfo::LinuxSll2 {
                packet_type: PacketType::Outgoing,
                interface_index: 2,
                ..
            }
        ));
        let tcp = frame.tcp().unwrap();
        assert_eq!(tcp.seq_number, SeqNumber(3_461_914_206));
        assert!(tcp.checksum_valid);
        let frame = parse_frame(LinkType::LinuxSll2, &LAB_SLL2_ARP_REQUEST).unwrap();
        let NetworkPayload::Arp(arp) = frame.network else {
            panic!("not ARP: {frame:?}")
        };
        assert_eq!(arp.target_protocol_addr, Ipv4Addr::new(198, 18, 10, 2));
    }

    #[test]
    fn null_loopback_ipv6_and_ipv4() {
        let frame = parse_frame(LinkType::Null, &NULL_IPV6_TCP_SYN).unwrap();
        assert_eq!(frame.link, LinkInfo::Loopback);
        let ip = frame.ip().unwrap();
        assert_eq!(ip.version, IpVersion::V6);
        assert_eq!(ip.source, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(ip.header_checksum_valid, None);
        let tcp = frame.tcp().unwrap();
        assert_eq!((tcp.src_port, tcp.dst_port), (1807, 9000));
        assert_eq!(tcp.seq_number, SeqNumber(3_047_896_016));
        assert_eq!(tcp.options.max_segment_size, Some(65475));
        assert_eq!(tcp.options.window_scale, Some(8));
        assert!(tcp.checksum_valid, "tshark: 0x614c good");

        let frame = parse_frame(LinkType::Null, &NULL_IPV4_TCP_DATA).unwrap();
        let tcp = frame.tcp().unwrap();
        assert_eq!((tcp.src_port, tcp.dst_port), (59219, 8400));
        assert_eq!(tcp.payload.len(), 26);
        assert!(
            !tcp.checksum_valid,
            "tshark: 0xfe42 incorrect, should be 0x872f"
        );
        assert_eq!(
            frame.ip().unwrap().header_checksum_valid,
            Some(false),
            "macOS left 0x0000"
        );
    }

    #[test]
    fn raw_ip_link_types() {
        let ip_packet = &LAB_IPV4_TCP_SYN[14..];
        for link in [LinkType::Raw, LinkType::Ipv4] {
            let frame = parse_frame(link, ip_packet).unwrap();
            assert_eq!(frame.link, LinkInfo::RawIp);
            assert_eq!(frame.tcp().unwrap().dst_port, 8443);
        }
        let ipv6_packet = &LAB_IPV6_TCP_SYN[14..];
        for link in [LinkType::Raw, LinkType::Ipv6] {
            assert_eq!(
                parse_frame(link, ipv6_packet)
                    .unwrap()
                    .tcp()
                    .unwrap()
                    .dst_port,
                8443
            );
        }
        assert!(parse_frame(LinkType::Ipv6, ip_packet).is_err());
        assert!(parse_frame(LinkType::Raw, &[0x50, 0, 0]).is_err());
        assert!(parse_frame(LinkType::Raw, &[]).is_err());
    }

    #[test]
    fn vlan_tagged_frame_keeps_its_tags() {
        let mut tagged = LAB_IPV4_TCP_SYN[..12].to_vec();
        tagged.extend_from_slice(&[0x88, 0xa8, 0x00, 0xc8, 0x81, 0x00, 0x01, 0x2c]);
        tagged.extend_from_slice(&LAB_IPV4_TCP_SYN[12..]);
        let frame = parse_frame(LinkType::Ethernet, &tagged).unwrap();
        assert_eq!(frame.vlan_tags.len(), 2);
        assert_eq!(frame.vlan_tags.as_slice()[1], VlanTag::dot1q(300));
        assert_eq!(frame.tcp().unwrap().src_port, 52310);
    }

    #[test]
    fn fragments_are_never_parsed_as_tcp() {
        let frame = parse_frame(LinkType::Ethernet, &LAB_IPV4_LAST_FRAGMENT).unwrap();
        let ip = frame.ip().unwrap();
        assert_eq!(
            ip.fragment,
            Some(FragmentInfo {
                offset: 1480,
                more_fragments: false,
                identification: 0x85b8
            })
        );
        assert!(matches!(
            frame.transport(),
            Some(Transport::Fragment { protocol: IpProtocol::Icmp, data }) if data.len() == 128
        ));

        // A first fragment of a TCP segment (MF set) must not come out as TCP either.
        let mut first_fragment = LAB_IPV4_TCP_SYN;
        let mut ip_view = ipv4::Packet::new_unchecked(&mut first_fragment[14..]);
        ip_view.set_fragmentation(false, true, 0);
        ip_view.fill_checksum();
        let frame = parse_frame(LinkType::Ethernet, &first_fragment).unwrap();
        assert!(frame.tcp().is_none());
        assert!(matches!(
            frame.transport(),
            Some(Transport::Fragment {
                protocol: IpProtocol::Tcp,
                ..
            })
        ));

        let frame = parse_frame(LinkType::Ethernet, &LAB_IPV6_LAST_FRAGMENT).unwrap();
        assert_eq!(
            frame.ip().unwrap().fragment.map(|fragment| fragment.offset),
            Some(1448)
        );
        assert!(matches!(
            frame.transport(),
            Some(Transport::Fragment { .. })
        ));
    }

    #[test]
    fn icmp_errors_expose_mtu_and_quoted_packet() {
        let frame = parse_frame(LinkType::Ethernet, &LAB_ICMP_FRAG_NEEDED).unwrap();
        let Some(Transport::Icmpv4(icmp)) = frame.transport() else {
            panic!("{frame:?}")
        };
        assert_eq!((icmp.msg_type, icmp.code), (3, 4));
        assert_eq!(icmp.mtu, Some(1280));
        assert!(icmp.checksum_valid);
        let quoted = icmp.embedded.unwrap();
        assert_eq!(quoted.ports, Some((52310, 8443)));

        let frame = parse_frame(LinkType::Ethernet, &LAB_ICMPV6_PACKET_TOO_BIG).unwrap();
        let Some(Transport::Icmpv6(icmp)) = frame.transport() else {
            panic!("{frame:?}")
        };
        assert_eq!(icmp.msg_type, 2);
        assert_eq!(icmp.mtu, Some(1280));
        assert!(icmp.checksum_valid);
        assert_eq!(
            icmp.embedded.unwrap().tcp_seq_number,
            Some(SeqNumber(3_358_773_523))
        );

        let frame = parse_frame(LinkType::Ethernet, &LAB_IPV6_HOP_BY_HOP_MLD).unwrap();
        assert_eq!(frame.ip().unwrap().header_len, 48);
        let Some(Transport::Icmpv6(icmp)) = frame.transport() else {
            panic!("{frame:?}")
        };
        assert_eq!(icmp.msg_type, 143);
        assert!(icmp.checksum_valid);
        assert!(icmp.embedded.is_none());

        let frame = parse_frame(LinkType::Ethernet, &LAB_ICMP_ECHO_REQUEST).unwrap();
        let Some(Transport::Icmpv4(icmp)) = frame.transport() else {
            panic!("{frame:?}")
        };
        assert_eq!((icmp.msg_type, icmp.mtu), (8, None));
    }

    #[test]
    fn unknown_link_type_and_truncation_are_typed_errors() {
        assert_eq!(
            parse_frame(LinkType::from(147), &ETH_IPV4_TCP_SYN),
            Err(WireError::UnsupportedLinkType(147))
        );
        // Cut inside the TCP options: the IP total length no longer fits.
        assert!(matches!(
            parse_frame(LinkType::Ethernet, &ETH_IPV4_TCP_SYN[..60]),
            Err(WireError::Truncated {
                layer: Layer::Ipv4,
                needed: 60,
                available: 46
            })
        ));
    }

    #[test]
    fn every_prefix_of_every_real_frame_parses_or_errs() {
        let frames: [(LinkType, &[u8]); 17] = [
            (LinkType::Ethernet, &ETH_IPV4_TCP_SYN),
            (LinkType::Ethernet, &ETH_IPV4_TCP_ALERT),
            (LinkType::LinuxSll, &SLL_IPV4_TCP_DATA),
            (LinkType::Null, &NULL_IPV6_TCP_SYN),
            (LinkType::Null, &NULL_IPV4_TCP_DATA),
            (LinkType::Ethernet, &LAB_ARP_REQUEST),
            (LinkType::Ethernet, &LAB_ARP_REPLY),
            (LinkType::Ethernet, &LAB_ICMP_ECHO_REQUEST),
            (LinkType::Ethernet, &LAB_IPV4_LAST_FRAGMENT),
            (LinkType::Ethernet, &LAB_IPV6_LAST_FRAGMENT),
            (LinkType::Ethernet, &LAB_IPV6_HOP_BY_HOP_MLD),
            (LinkType::Ethernet, &LAB_IPV4_TCP_SYN),
            (LinkType::Ethernet, &LAB_IPV4_TCP_SACK),
            (LinkType::Ethernet, &LAB_ICMP_FRAG_NEEDED),
            (LinkType::Ethernet, &LAB_IPV6_TCP_SYN),
            (LinkType::Ethernet, &LAB_ICMPV6_PACKET_TOO_BIG),
            (LinkType::LinuxSll2, &LAB_SLL2_IPV4_TCP_SYN),
        ];
        for (link, bytes) in frames {
            assert!(parse_frame(link, bytes).is_ok(), "{link:?} {}", bytes.len());
            // None of these frames has link-layer padding, so any cut loses bytes that a
            // length field (IP total length, payload length, ARP's fixed size) claims.
            for cut in 0..bytes.len() {
                assert!(
                    parse_frame(link, &bytes[..cut]).is_err(),
                    "{link:?} cut at {cut}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(
            link in prop::sample::select(vec![0u32, 1, 101, 108, 113, 228, 229, 276, 147]),
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let _ = parse_frame(LinkType::from(link), &bytes);
        }

        #[test]
        fn mutated_real_frames_never_panic(
            index in 0usize..4,
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let (link, original): (LinkType, &[u8]) = [
                (LinkType::Ethernet, &LAB_IPV4_TCP_SACK[..]),
                (LinkType::Ethernet, &LAB_ICMPV6_PACKET_TOO_BIG[..]),
                (LinkType::LinuxSll2, &LAB_SLL2_IPV4_TCP_SYN[..]),
                (LinkType::Ethernet, &LAB_IPV6_HOP_BY_HOP_MLD[..]),
            ][index];
            let mut bytes = original.to_vec();
            for (position, value) in flips {
                let at = position.index(bytes.len());
                bytes[at] = value;
            }
            let length = cut.index(bytes.len() + 1);
            let _ = parse_frame(link, &bytes[..length]);
        }
    }

    #[test]
    fn offloaded_transport_checksums_are_not_computed_but_the_ipv4_header_is() {
        let mut frame = LAB_IPV4_TCP_SYN.to_vec();
        assert!(parse_frame(LinkType::Ethernet, &frame).unwrap().tcp().unwrap().checksum_valid);
        let tcp_checksum_at = 14 + 20 + 16;
        frame[tcp_checksum_at] ^= 0xff;
        let verified = parse_frame(LinkType::Ethernet, &frame).unwrap();
        assert!(!verified.tcp().unwrap().checksum_valid);
        let offloaded = parse_frame_with(LinkType::Ethernet, &frame, TransportChecksum::Offloaded).unwrap();
        assert!(offloaded.tcp().unwrap().checksum_valid, "taken from the receive path");
        frame[14 + 8] ^= 0x01; // TTL
        let offloaded = parse_frame_with(LinkType::Ethernet, &frame, TransportChecksum::Offloaded).unwrap();
        assert_eq!(offloaded.ip().unwrap().header_checksum_valid, Some(false), "always computed");
    }
}
