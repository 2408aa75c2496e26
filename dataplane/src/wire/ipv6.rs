//! IPv6 (RFC 8200) packets and their extension headers.
//!
//! `new_checked` checks the version and the payload length against the buffer, so
//! [`Packet::payload`] excludes link-layer padding. [`walk_extension_headers`] follows the chain
//! of hop-by-hop, routing, destination-options and authentication headers to the upper-layer
//! protocol, at most [`MAX_EXTENSION_HEADERS`] of them, checking each length; a fragment header
//! ends the walk and is reported, because what follows it is not a whole upper-layer packet.
//!
//! Not supported: jumbograms (a payload length of zero is read as an empty payload), parsing the
//! options inside hop-by-hop and destination-options headers, routing-header processing,
//! anything past an ESP header (reported as the upper-layer protocol `Esp`), reassembly.

use std::net::Ipv6Addr;

use super::{
    check_emit_len, check_len, read_u16, read_u32, write_u16, write_u32, IpProtocol, Layer,
    WireError,
};

/// The most extension headers [`walk_extension_headers`] follows before refusing the packet.
/// RFC 8200 allows each kind once (destination options twice): eight is already generous.
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// Byte ranges of the fixed IPv6 header.
pub mod field {
    use core::ops::Range;

    /// Version (4 bits), traffic class (8 bits), flow label (20 bits).
    pub const VERSION_CLASS_FLOW: Range<usize> = 0..4;
    pub const PAYLOAD_LEN: Range<usize> = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SOURCE: Range<usize> = 8..24;
    pub const DESTINATION: Range<usize> = 24..40;
}

/// Length of the fixed IPv6 header.
pub const HEADER_LEN: usize = field::DESTINATION.end;

/// Byte ranges of the fragment extension header.
pub mod fragment_field {
    use core::ops::Range;

    pub const NEXT_HEADER: usize = 0;
    pub const OFFSET_AND_FLAGS: Range<usize> = 2..4;
    pub const IDENTIFICATION: Range<usize> = 4..8;
}

/// Length of the fragment extension header.
pub const FRAGMENT_HEADER_LEN: usize = 8;

/// A read/write view of an IPv6 packet.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Checks version 6 and that the buffer holds the header and the stated payload.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, WireError> {
        let packet = Packet { buffer };
        let data = packet.buffer.as_ref();
        check_len(Layer::Ipv6, data, HEADER_LEN)?;
        if packet.version() != 6 {
            return Err(WireError::Malformed {
                layer: Layer::Ipv6,
                reason: "version is not 6",
            });
        }
        check_len(
            Layer::Ipv6,
            data,
            HEADER_LEN + usize::from(packet.payload_len()),
        )?;
        Ok(packet)
    }

    /// Checks only what an ICMPv6 error's embedded copy can promise: the fixed header is
    /// present. The payload may be cut short, so [`Packet::payload`] must not be used; use
    /// [`Packet::available_payload`].
    pub fn new_checked_header(buffer: T) -> Result<Packet<T>, WireError> {
        let packet = Packet { buffer };
        check_len(Layer::Ipv6, packet.buffer.as_ref(), HEADER_LEN)?;
        if packet.version() != 6 {
            return Err(WireError::Malformed {
                layer: Layer::Ipv6,
                reason: "version is not 6",
            });
        }
        Ok(packet)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn version_class_flow(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::VERSION_CLASS_FLOW.start)
    }

    pub fn version(&self) -> u8 {
        (self.version_class_flow() >> 28) as u8
    }

    pub fn traffic_class(&self) -> u8 {
        (self.version_class_flow() >> 20) as u8
    }

    pub fn flow_label(&self) -> u32 {
        self.version_class_flow() & 0x000f_ffff
    }

    pub fn payload_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::PAYLOAD_LEN.start)
    }

    /// The protocol of the first header after the fixed header (an extension header or the
    /// upper layer).
    pub fn next_header(&self) -> IpProtocol {
        IpProtocol::from(self.buffer.as_ref()[field::NEXT_HEADER])
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    pub fn source(&self) -> Ipv6Addr {
        Ipv6Addr::from(addr16(&self.buffer.as_ref()[field::SOURCE]))
    }

    pub fn destination(&self) -> Ipv6Addr {
        Ipv6Addr::from(addr16(&self.buffer.as_ref()[field::DESTINATION]))
    }

    /// The bytes the payload length covers after the fixed header (extension headers included).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + usize::from(self.payload_len())]
    }

    /// The payload as far as the buffer holds it (for an embedded, cut-short copy).
    pub fn available_payload(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        let end = data.len().min(HEADER_LEN + usize::from(self.payload_len()));
        &data[HEADER_LEN..end]
    }

    /// Walks the extension headers of the payload; see [`walk_extension_headers`].
    pub fn walk_extension_headers(&self) -> Result<ExtensionWalk, WireError> {
        walk_extension_headers(self.next_header(), self.payload())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets version 6, the traffic class and the flow label (low 20 bits).
    pub fn set_version_class_flow(&mut self, traffic_class: u8, flow_label: u32) {
        let value = (6u32 << 28) | (u32::from(traffic_class) << 20) | (flow_label & 0x000f_ffff);
        write_u32(self.buffer.as_mut(), field::VERSION_CLASS_FLOW.start, value);
    }

    pub fn set_payload_len(&mut self, payload_len: u16) {
        write_u16(self.buffer.as_mut(), field::PAYLOAD_LEN.start, payload_len);
    }

    pub fn set_next_header(&mut self, protocol: IpProtocol) {
        self.buffer.as_mut()[field::NEXT_HEADER] = u8::from(protocol);
    }

    pub fn set_hop_limit(&mut self, hop_limit: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = hop_limit;
    }

    /// IPv6 has no header checksum: after rewriting an address, patch the upper layer's
    /// checksum with [`super::checksum::update_ipv6_address`].
    pub fn set_source(&mut self, address: Ipv6Addr) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&address.octets());
    }

    pub fn set_destination(&mut self, address: Ipv6Addr) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&address.octets());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = HEADER_LEN + usize::from(self.payload_len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// What a fragment extension header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6Fragment {
    /// Offset of this fragment's data in the original payload, in bytes.
    pub offset: u16,
    pub more_fragments: bool,
    pub identification: u32,
}

/// Where the extension-header chain of an IPv6 payload ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtensionWalk {
    /// The protocol after the last extension header walked: TCP, ICMPv6, UDP... or `Esp` or
    /// `Ipv6NoNext` when the chain cannot or need not be followed further.
    pub upper_protocol: IpProtocol,
    /// Offset of the upper-layer data from the start of the IPv6 payload.
    pub upper_offset: usize,
    /// Set when the chain holds a fragment header: the data after it is a fragment.
    pub fragment: Option<Ipv6Fragment>,
    /// How many extension headers were walked.
    pub extension_count: usize,
}

/// Follows the extension headers at the start of `payload`, whose first header is `first`.
///
/// Hop-by-hop, routing, destination options (length `8 * (1 + n)`) and authentication headers
/// (length `4 * (2 + n)`) are skipped; a fragment header stops the walk. Every length is
/// checked against `payload`.
pub fn walk_extension_headers(
    first: IpProtocol,
    payload: &[u8],
) -> Result<ExtensionWalk, WireError> {
    let mut protocol = first;
    let mut offset = 0usize;
    let mut extension_count = 0usize;
    loop {
        let header_len = match protocol {
            IpProtocol::HopByHop | IpProtocol::Ipv6Route | IpProtocol::Ipv6Opts => {
                check_len(Layer::Ipv6Extension, payload, offset + 2)?;
                8 * (1 + usize::from(payload[offset + 1]))
            }
            IpProtocol::Ah => {
                check_len(Layer::Ipv6Extension, payload, offset + 2)?;
                4 * (2 + usize::from(payload[offset + 1]))
            }
            IpProtocol::Ipv6Frag => {
                if extension_count == MAX_EXTENSION_HEADERS {
                    return Err(WireError::TooManyExtensionHeaders);
                }
                check_len(Layer::Ipv6Extension, payload, offset + FRAGMENT_HEADER_LEN)?;
                let header = &payload[offset..offset + FRAGMENT_HEADER_LEN];
                let offset_and_flags = read_u16(header, fragment_field::OFFSET_AND_FLAGS.start);
                let fragment = Ipv6Fragment {
                    offset: offset_and_flags & 0xfff8,
                    more_fragments: offset_and_flags & 0x0001 != 0,
                    identification: read_u32(header, fragment_field::IDENTIFICATION.start),
                };
                return Ok(ExtensionWalk {
                    upper_protocol: IpProtocol::from(header[fragment_field::NEXT_HEADER]),
                    upper_offset: offset + FRAGMENT_HEADER_LEN,
                    fragment: Some(fragment),
                    extension_count: extension_count + 1,
                });
            }
            _ => {
                return Ok(ExtensionWalk {
                    upper_protocol: protocol,
                    upper_offset: offset,
                    fragment: None,
                    extension_count,
                });
            }
        };
        if extension_count == MAX_EXTENSION_HEADERS {
            return Err(WireError::TooManyExtensionHeaders);
        }
        check_len(Layer::Ipv6Extension, payload, offset + header_len)?;
        protocol = IpProtocol::from(payload[offset]);
        offset += header_len;
        extension_count += 1;
    }
}

/// The values of a fixed IPv6 header, enough to emit one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Repr {
    pub source: Ipv6Addr,
    pub destination: Ipv6Addr,
    pub next_header: IpProtocol,
    pub payload_len: usize,
    pub hop_limit: u8,
    pub traffic_class: u8,
    pub flow_label: u32,
}

impl Ipv6Repr {
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Ipv6Repr {
        Ipv6Repr {
            source: packet.source(),
            destination: packet.destination(),
            next_header: packet.next_header(),
            payload_len: usize::from(packet.payload_len()),
            hop_limit: packet.hop_limit(),
            traffic_class: packet.traffic_class(),
            flow_label: packet.flow_label(),
        }
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the 40-byte fixed header into the start of `buffer`.
    pub fn emit(&self, buffer: &mut [u8]) -> Result<(), WireError> {
        check_emit_len(Layer::Ipv6, buffer, HEADER_LEN)?;
        let payload_len = u16::try_from(self.payload_len).map_err(|_| WireError::Unsupported {
            layer: Layer::Ipv6,
            reason: "payload longer than 65535 bytes (jumbogram)",
        })?;
        let mut packet = Packet::new_unchecked(buffer);
        packet.set_version_class_flow(self.traffic_class, self.flow_label);
        packet.set_payload_len(payload_len);
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_source(self.source);
        packet.set_destination(self.destination);
        Ok(())
    }
}

/// Copies a sixteen-byte field; the `field` ranges used with it are sixteen bytes long.
fn addr16(bytes: &[u8]) -> [u8; 16] {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(bytes);
    octets
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_frames::{
        LAB_IPV6_HOP_BY_HOP_MLD, LAB_IPV6_LAST_FRAGMENT, LAB_IPV6_TCP_SYN, NULL_IPV6_TCP_SYN,
    };

    #[test]
    fn parses_real_syn_header() {
        let packet = Packet::new_checked(&LAB_IPV6_TCP_SYN[14..]).unwrap();
        assert_eq!(packet.version(), 6);
        assert_eq!(packet.payload_len(), 40);
        assert_eq!(packet.next_header(), IpProtocol::Tcp);
        assert_eq!(packet.hop_limit(), 64);
        assert_eq!(
            packet.source(),
            "2001:db8:10::1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            packet.destination(),
            "2001:db8:11::1".parse::<Ipv6Addr>().unwrap()
        );
        let walk = packet.walk_extension_headers().unwrap();
        assert_eq!(
            walk,
            ExtensionWalk {
                upper_protocol: IpProtocol::Tcp,
                upper_offset: 0,
                fragment: None,
                extension_count: 0
            }
        );
    }

    #[test]
    fn parses_real_loopback_header() {
        // tshark: ::1 -> ::1, flow label 0x7f2d6 (read from the capture), payload 32.
        let packet = Packet::new_checked(&NULL_IPV6_TCP_SYN[4..]).unwrap();
        assert_eq!(packet.source(), Ipv6Addr::LOCALHOST);
        assert_eq!(packet.destination(), Ipv6Addr::LOCALHOST);
        assert_eq!(packet.payload_len(), 32);
        assert_eq!(packet.next_header(), IpProtocol::Tcp);
    }

    #[test]
    fn walks_real_hop_by_hop_header() {
        // tshark: next header 0 (hop-by-hop, 8 bytes, router alert) then ICMPv6 (MLDv2).
        let packet = Packet::new_checked(&LAB_IPV6_HOP_BY_HOP_MLD[14..]).unwrap();
        assert_eq!(packet.next_header(), IpProtocol::HopByHop);
        assert_eq!(packet.hop_limit(), 1);
        let walk = packet.walk_extension_headers().unwrap();
        assert_eq!(walk.upper_protocol, IpProtocol::Icmpv6);
        assert_eq!(walk.upper_offset, 8);
        assert_eq!(walk.extension_count, 1);
        assert_eq!(walk.fragment, None);
        assert_eq!(
            packet.payload()[walk.upper_offset],
            143,
            "MLDv2 report type"
        );
    }

    #[test]
    fn reports_real_fragment_header() {
        // tshark: fragment offset 1448, M clear, ident 0x36cff04a, next header 58.
        let packet = Packet::new_checked(&LAB_IPV6_LAST_FRAGMENT[14..]).unwrap();
        let walk = packet.walk_extension_headers().unwrap();
        assert_eq!(walk.upper_protocol, IpProtocol::Icmpv6);
        assert_eq!(walk.upper_offset, 8);
        assert_eq!(
            walk.fragment,
            Some(Ipv6Fragment {
                offset: 1448,
                more_fragments: false,
                identification: 0x36cf_f04a
            })
        );
    }

    /// Builds a payload of `count` empty destination-options headers followed by `last`.
    fn chain_of_destination_options(count: usize, last: IpProtocol) -> Vec<u8> {
        let mut payload = Vec::new();
        for index in 0..count {
            let next = if index + 1 == count {
                u8::from(last)
            } else {
                60
            };
            payload.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
        }
        payload.extend_from_slice(&[0u8; 20]);
        payload
    }

    #[test]
    fn bounds_the_extension_header_count() {
        let at_limit = chain_of_destination_options(MAX_EXTENSION_HEADERS, IpProtocol::Tcp);
        let walk = walk_extension_headers(IpProtocol::Ipv6Opts, &at_limit).unwrap();
        assert_eq!(walk.extension_count, MAX_EXTENSION_HEADERS);
        assert_eq!(walk.upper_offset, 8 * MAX_EXTENSION_HEADERS);
        let over = chain_of_destination_options(MAX_EXTENSION_HEADERS + 1, IpProtocol::Tcp);
        assert_eq!(
            walk_extension_headers(IpProtocol::Ipv6Opts, &over),
            Err(WireError::TooManyExtensionHeaders)
        );
    }

    #[test]
    fn routing_and_authentication_headers_are_skipped() {
        // Routing header (type 0 in form, 24 bytes: length 2) then AH (length 4 -> 24 bytes).
        let mut payload = vec![51, 2, 0, 0, 0, 0, 0, 0];
        payload.extend_from_slice(&[0u8; 16]);
        payload.extend_from_slice(&[6, 4, 0, 0]);
        payload.extend_from_slice(&[0u8; 20]);
        payload.extend_from_slice(&[0u8; 20]);
        let walk = walk_extension_headers(IpProtocol::Ipv6Route, &payload).unwrap();
        assert_eq!(walk.upper_protocol, IpProtocol::Tcp);
        assert_eq!(walk.upper_offset, 48);
        assert_eq!(walk.extension_count, 2);
    }

    #[test]
    fn truncated_extension_headers_are_refused() {
        let payload = chain_of_destination_options(2, IpProtocol::Tcp);
        assert!(matches!(
            walk_extension_headers(IpProtocol::Ipv6Opts, &payload[..12]),
            Err(WireError::Truncated {
                layer: Layer::Ipv6Extension,
                needed: 16,
                available: 12
            })
        ));
        assert!(matches!(
            walk_extension_headers(IpProtocol::Ipv6Opts, &payload[..1]),
            Err(WireError::Truncated {
                layer: Layer::Ipv6Extension,
                ..
            })
        ));
        assert!(matches!(
            walk_extension_headers(IpProtocol::Ipv6Frag, &[6, 0, 0, 1]),
            Err(WireError::Truncated {
                layer: Layer::Ipv6Extension,
                needed: 8,
                ..
            })
        ));
    }

    #[test]
    fn esp_and_no_next_header_end_the_walk() {
        let walk = walk_extension_headers(IpProtocol::Esp, &[0u8; 4]).unwrap();
        assert_eq!(walk.upper_protocol, IpProtocol::Esp);
        let walk = walk_extension_headers(IpProtocol::Ipv6NoNext, &[]).unwrap();
        assert_eq!(walk.upper_protocol, IpProtocol::Ipv6NoNext);
    }

    #[test]
    fn refuses_bad_version_and_short_payload() {
        let ip = &LAB_IPV6_TCP_SYN[14..];
        assert!(matches!(
            Packet::new_checked(&ip[..79]),
            Err(WireError::Truncated {
                layer: Layer::Ipv6,
                needed: 80,
                available: 79
            })
        ));
        assert!(matches!(
            Packet::new_checked(&ip[..39]),
            Err(WireError::Truncated {
                layer: Layer::Ipv6,
                needed: 40,
                available: 39
            })
        ));
        let mut v4 = ip.to_vec();
        v4[0] = 0x45;
        assert!(matches!(
            Packet::new_checked(&v4[..]),
            Err(WireError::Malformed { .. })
        ));
        let header_only = Packet::new_checked_header(&ip[..50]).unwrap();
        assert_eq!(header_only.available_payload().len(), 10);
    }

    #[test]
    fn repr_emit_reproduces_the_real_header() {
        let ip = &LAB_IPV6_TCP_SYN[14..];
        let repr = Ipv6Repr::parse(&Packet::new_checked(ip).unwrap());
        let mut header = [0u8; 40];
        repr.emit(&mut header).unwrap();
        assert_eq!(header, ip[..40]);
        assert!(repr.emit(&mut [0u8; 39]).is_err());
        assert!(Ipv6Repr {
            payload_len: 65_536,
            ..repr
        }
        .emit(&mut header)
        .is_err());
    }

    #[test]
    fn setters_write_the_fields() {
        let mut bytes = LAB_IPV6_TCP_SYN[14..].to_vec();
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        packet.set_version_class_flow(0xb8, 0x12345);
        packet.set_hop_limit(3);
        packet.set_source(Ipv6Addr::LOCALHOST);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.traffic_class(), 0xb8);
        assert_eq!(packet.flow_label(), 0x12345);
        assert_eq!(packet.hop_limit(), 3);
        assert_eq!(packet.source(), Ipv6Addr::LOCALHOST);
    }
}
