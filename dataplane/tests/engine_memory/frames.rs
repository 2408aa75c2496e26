//! Building the frames the fake hosts send, and one-line summaries of any frame for traces.
//!
//! Everything is built with `cutls_dataplane::wire` (the same code the engine parses with), so
//! checksums and option layouts are the ones the engine will see from Linux peers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use cutls_dataplane::wire::{
    parse_frame, ArpOperation, ArpRepr, EtherType, EthernetAddress, EthernetRepr, Icmpv6Packet, IpProtocol,
    Ipv4Repr, Ipv6Repr, LinkInfo, LinkType, NetworkPayload, SeqNumber, TcpFlags, TcpOptions, TcpRepr, Transport,
};

pub const ETHERNET_HEADER_LEN: usize = 14;
/// The wire's MTU: no IP packet may be longer (the engine seals each backend segment into one
/// record and must still fit the client's path).
pub const MTU: usize = 1500;
pub const MAX_FRAME: usize = ETHERNET_HEADER_LEN + MTU;

pub const ICMPV6_NEIGHBOR_SOLICITATION: u8 = 135;
pub const ICMPV6_NEIGHBOR_ADVERTISEMENT: u8 = 136;

/// A TCP segment as a host model produces it, before addressing.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub seq: SeqNumber,
    pub ack: SeqNumber,
    pub flags: TcpFlags,
    pub window: u16,
    pub options: TcpOptions,
    pub payload: Vec<u8>,
}

/// An Ethernet + IPv4/IPv6 + TCP frame.
/// A TCP frame with `template`'s MAC addresses, IP addresses and ports, carrying `segment`
/// (for tests that write a peer's segments from one it sent).
pub fn tcp_frame_like(template: &[u8], segment: &Outgoing) -> Vec<u8> {
    let parsed = parse_frame(LinkType::Ethernet, template).expect("a template frame");
    let (ip, tcp) = (parsed.ip().expect("ip"), parsed.tcp().expect("tcp"));
    let mac = |bytes: &[u8]| EthernetAddress(bytes.try_into().expect("six bytes"));
    tcp_frame(
        mac(&template[6..12]),
        mac(&template[0..6]),
        SocketAddr::new(ip.source, tcp.src_port),
        SocketAddr::new(ip.destination, tcp.dst_port),
        segment,
    )
}

pub fn tcp_frame(
    source_mac: EthernetAddress,
    destination_mac: EthernetAddress,
    source: SocketAddr,
    destination: SocketAddr,
    segment: &Outgoing,
) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: source.port(),
        dst_port: destination.port(),
        seq_number: segment.seq,
        ack_number: segment.ack,
        flags: segment.flags,
        window: segment.window,
        urgent_pointer: 0,
        options: segment.options,
        payload: &segment.payload,
    };
    let tcp_len = tcp.buffer_len();
    let (ethertype, ip_len) = match source.ip() {
        IpAddr::V4(_) => (EtherType::Ipv4, 20),
        IpAddr::V6(_) => (EtherType::Ipv6, 40),
    };
    let mut frame = vec![0u8; ETHERNET_HEADER_LEN + ip_len + tcp_len];
    EthernetRepr { source: source_mac, destination: destination_mac, ethertype }.emit(&mut frame).expect("ethernet");
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => Ipv4Repr {
            source: src,
            destination: dst,
            protocol: IpProtocol::Tcp,
            payload_len: tcp_len,
            ttl: 64,
            identification: segment.seq.0 as u16,
            dont_fragment: true,
            dscp: 0,
            ecn: 0,
        }
        .emit(&mut frame[ETHERNET_HEADER_LEN..])
        .expect("ipv4"),
        (IpAddr::V6(src), IpAddr::V6(dst)) => Ipv6Repr {
            source: src,
            destination: dst,
            next_header: IpProtocol::Tcp,
            payload_len: tcp_len,
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 0,
        }
        .emit(&mut frame[ETHERNET_HEADER_LEN..])
        .expect("ipv6"),
        _ => panic!("mixed address families {source} -> {destination}"),
    }
    tcp.emit(&mut frame[ETHERNET_HEADER_LEN + ip_len..], source.ip(), destination.ip()).expect("tcp");
    frame
}

/// An ARP request (to broadcast) or reply (to the asker).
pub fn arp_frame(
    operation: ArpOperation,
    sender: (EthernetAddress, Ipv4Addr),
    target: (EthernetAddress, Ipv4Addr),
    destination_mac: EthernetAddress,
) -> Vec<u8> {
    let mut frame = vec![0u8; ETHERNET_HEADER_LEN + 28];
    EthernetRepr { source: sender.0, destination: destination_mac, ethertype: EtherType::Arp }
        .emit(&mut frame)
        .expect("ethernet");
    ArpRepr {
        operation,
        sender_hardware_addr: sender.0,
        sender_protocol_addr: sender.1,
        target_hardware_addr: target.0,
        target_protocol_addr: target.1,
    }
    .emit(&mut frame[ETHERNET_HEADER_LEN..])
    .expect("arp");
    frame
}

/// A neighbor solicitation (with the source link-layer address option) or a solicited
/// advertisement (flags S and O, with the target link-layer address option), as Linux sends them.
pub fn ndp_frame(
    advertisement: bool,
    link: (EthernetAddress, EthernetAddress),
    source: Ipv6Addr,
    destination: Ipv6Addr,
    target: Ipv6Addr,
) -> Vec<u8> {
    let mut icmp = vec![0u8; 32];
    icmp[0] = if advertisement { ICMPV6_NEIGHBOR_ADVERTISEMENT } else { ICMPV6_NEIGHBOR_SOLICITATION };
    if advertisement {
        icmp[4] = 0x60;
    }
    icmp[8..24].copy_from_slice(&target.octets());
    icmp[24] = if advertisement { 2 } else { 1 };
    icmp[25] = 1;
    icmp[26..32].copy_from_slice(&link.0 .0);
    Icmpv6Packet::new_unchecked(&mut icmp[..]).fill_checksum(source, destination);
    let mut frame = vec![0u8; ETHERNET_HEADER_LEN + 40 + icmp.len()];
    EthernetRepr { source: link.0, destination: link.1, ethertype: EtherType::Ipv6 }.emit(&mut frame).expect("ethernet");
    Ipv6Repr {
        source,
        destination,
        next_header: IpProtocol::Icmpv6,
        payload_len: icmp.len(),
        hop_limit: 255,
        traffic_class: 0,
        flow_label: 0,
    }
    .emit(&mut frame[ETHERNET_HEADER_LEN..])
    .expect("ipv6");
    frame[ETHERNET_HEADER_LEN + 40..].copy_from_slice(&icmp);
    frame
}

/// The solicited-node multicast group of `target` and its Ethernet address (RFC 4291, 2464).
pub fn solicited_node(target: Ipv6Addr) -> (Ipv6Addr, EthernetAddress) {
    let o = target.octets();
    let group = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | u16::from(o[13]), u16::from_be_bytes([o[14], o[15]]));
    let g = group.octets();
    (group, EthernetAddress([0x33, 0x33, g[12], g[13], g[14], g[15]]))
}

/// An NDP message seen on the wire: (type, target, link-layer address option).
pub fn ndp_fields(message: &[u8]) -> Option<(u8, Ipv6Addr, Option<EthernetAddress>)> {
    let kind = *message.first()?;
    if kind != ICMPV6_NEIGHBOR_SOLICITATION && kind != ICMPV6_NEIGHBOR_ADVERTISEMENT {
        return None;
    }
    let target: [u8; 16] = message.get(8..24)?.try_into().ok()?;
    let mut options = message.get(24..)?;
    let mut lladdr = None;
    while options.len() >= 8 {
        let len = usize::from(options[1]) * 8;
        if len == 0 || len > options.len() {
            break;
        }
        let wanted = if kind == ICMPV6_NEIGHBOR_SOLICITATION { 1 } else { 2 };
        if options[0] == wanted {
            lladdr = EthernetAddress::from_bytes(&options[2..8]);
        }
        options = &options[len..];
    }
    Some((kind, Ipv6Addr::from(target), lladdr))
}

/// The Ethernet addresses of a parsed frame.
pub fn macs(link: &LinkInfo) -> (EthernetAddress, EthernetAddress) {
    match link {
        LinkInfo::Ethernet { source, destination } => (*source, *destination),
        _ => (EthernetAddress::default(), EthernetAddress::default()),
    }
}

/// tcpdump-like one-liner, for traces and failure reports.
pub fn summarize(frame: &[u8]) -> String {
    let parsed = match parse_frame(LinkType::Ethernet, frame) {
        Ok(parsed) => parsed,
        Err(error) => return format!("unparsable frame of {} bytes: {error}", frame.len()),
    };
    let (src_mac, dst_mac) = macs(&parsed.link);
    let link = format!("{src_mac}>{dst_mac}");
    match &parsed.network {
        NetworkPayload::Arp(arp) => format!(
            "{link} ARP {} who-has/is-at {} ({}) tell/from {} ({})",
            match arp.operation {
                ArpOperation::Request => "request",
                ArpOperation::Reply => "reply",
                ArpOperation::Unknown(_) => "?",
            },
            arp.target_protocol_addr,
            arp.target_hardware_addr,
            arp.sender_protocol_addr,
            arp.sender_hardware_addr
        ),
        NetworkPayload::Ip { ip, transport } => match transport {
            Transport::Tcp(tcp) => {
                let mut options = String::new();
                if let Some(mss) = tcp.options.max_segment_size {
                    options += &format!(" mss={mss}");
                }
                if let Some(ws) = tcp.options.window_scale {
                    options += &format!(" ws={ws}");
                }
                if tcp.options.sack_permitted {
                    options += " sackOK";
                }
                if !tcp.options.sack_blocks.is_empty() {
                    let blocks: Vec<String> = tcp
                        .options
                        .sack_blocks
                        .as_slice()
                        .iter()
                        .map(|b| format!("{}-{}", b.left, b.right))
                        .collect();
                    options += &format!(" sack={}", blocks.join(","));
                }
                if let Some(ts) = tcp.options.timestamp {
                    options += &format!(" ts={}/{}", ts.value, ts.echo_reply);
                }
                format!(
                    "{link} {} > {} [{}] seq={} ack={} win={} len={}{}{}",
                    SocketAddr::new(ip.source, tcp.src_port),
                    SocketAddr::new(ip.destination, tcp.dst_port),
                    tcp.flags,
                    tcp.seq_number,
                    tcp.ack_number,
                    tcp.window,
                    tcp.payload.len(),
                    options,
                    if tcp.checksum_valid { "" } else { " BAD-CHECKSUM" }
                )
            }
            Transport::Icmpv6(message) => match ndp_fields(message.message) {
                Some((kind, target, lladdr)) => format!(
                    "{link} {} > {} ICMPv6 {} target {target} lladdr {lladdr:?}",
                    ip.source,
                    ip.destination,
                    if kind == ICMPV6_NEIGHBOR_SOLICITATION { "NS" } else { "NA" }
                ),
                None => format!("{link} {} > {} ICMPv6 type {}", ip.source, ip.destination, message.msg_type),
            },
            _ => format!("{link} {} > {} protocol {:?}", ip.source, ip.destination, ip.protocol),
        },
        NetworkPayload::Other { ethertype, data } => format!("{link} ethertype {ethertype:?} len {}", data.len()),
    }
}

/// The ICMP "fragmentation needed" (RFC 1191) a router at `router` sends back for the IPv4
/// `frame` it cannot forward over a link of `mtu` bytes: to the frame's source, from the
/// frame's destination MAC, quoting its IP header and first 8 bytes of payload.
pub fn fragmentation_needed(frame: &[u8], mtu: u16, router: std::net::Ipv4Addr) -> Vec<u8> {
    let ip = &frame[14..];
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    let mut icmp = vec![3, 4, 0, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    icmp.extend_from_slice(&ip[..(header_len + 8).min(ip.len())]);
    let sum = cutls_dataplane::wire::checksum::internet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut header = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0];
    header[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    header.extend_from_slice(&router.octets());
    header.extend_from_slice(&ip[12..16]);
    let header_sum = cutls_dataplane::wire::checksum::internet_checksum(&header);
    header[10..12].copy_from_slice(&header_sum.to_be_bytes());
    let mut out = frame[6..12].to_vec(); // to the sender's MAC
    out.extend_from_slice(&frame[0..6]);
    out.extend_from_slice(&[0x08, 0x00]);
    out.extend(header);
    out.extend(icmp);
    out
}

/// Flips one bit of a TCP frame and leaves every checksum as it was, as a bad cable or a
/// faulty NIC would: of an IPv4 frame's TTL one time in four (only the IPv4 header checksum
/// catches that), otherwise of the payload, or of the window field of a segment without one.
/// `random` picks the place. Returns false for a frame that is not TCP.
pub fn flip_tcp_bit(frame: &mut [u8], random: u64) -> bool {
    let Ok(parsed) = parse_frame(LinkType::Ethernet, frame) else { return false };
    let (Some(ip), Some(tcp)) = (parsed.ip(), parsed.tcp()) else { return false };
    let base = frame.as_ptr() as usize;
    let payload_at = tcp.payload.as_ptr() as usize - base;
    let payload_len = tcp.payload.len();
    let tcp_at = payload_at - tcp.header_len;
    let ip_at = tcp_at - ip.header_len;
    let ipv4 = ip.source.is_ipv4();
    let (at, bit) = if ipv4 && random >> 62 == 0 {
        (ip_at + 8, random % 8)
    } else if payload_len > 0 {
        let bit = (random % (payload_len as u64 * 8)) as usize;
        (payload_at + bit / 8, (bit % 8) as u64)
    } else {
        (tcp_at + 14 + (random % 2) as usize, random % 8)
    };
    frame[at] ^= 1 << bit;
    true
}
