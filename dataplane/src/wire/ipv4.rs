//! IPv4 (RFC 791) packets.
//!
//! `new_checked` checks the version, the header length (IHL) and the total length against the
//! buffer, so [`Packet::payload`] is exactly the bytes the header covers: Ethernet padding after
//! a short packet is excluded. Options are skipped via the IHL and exposed raw. A fragment
//! (MF set or a non-zero offset) is recognised by [`Packet::is_fragment`]; its payload is not a
//! whole upper-layer packet and must never be parsed as one.
//!
//! Not supported: reassembly, option parsing, emitting options ([`Ipv4Repr`] emits a 20-byte
//! header).

use std::net::Ipv4Addr;

use super::checksum;
use super::{check_emit_len, check_len, read_u16, write_u16, IpProtocol, Layer, WireError};

/// Byte ranges of the IPv4 header.
pub mod field {
    use core::ops::Range;

    pub const VERSION_AND_IHL: usize = 0;
    pub const DSCP_AND_ECN: usize = 1;
    pub const TOTAL_LEN: Range<usize> = 2..4;
    pub const IDENTIFICATION: Range<usize> = 4..6;
    pub const FLAGS_AND_FRAGMENT_OFFSET: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SOURCE: Range<usize> = 12..16;
    pub const DESTINATION: Range<usize> = 16..20;
}

/// Length of an IPv4 header without options.
pub const MIN_HEADER_LEN: usize = field::DESTINATION.end;

const FLAG_DONT_FRAGMENT: u16 = 0x4000;
const FLAG_MORE_FRAGMENTS: u16 = 0x2000;
const FRAGMENT_OFFSET_MASK: u16 = 0x1fff;

/// A read/write view of an IPv4 packet.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Checks version 4, `20 <= header_len <= total_len <= buffer length`.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, WireError> {
        let packet = Packet { buffer };
        let data = packet.buffer.as_ref();
        check_len(Layer::Ipv4, data, MIN_HEADER_LEN)?;
        if packet.version() != 4 {
            return Err(WireError::Malformed {
                layer: Layer::Ipv4,
                reason: "version is not 4",
            });
        }
        let header_len = packet.header_len();
        if header_len < MIN_HEADER_LEN {
            return Err(WireError::Malformed {
                layer: Layer::Ipv4,
                reason: "IHL below 5",
            });
        }
        check_len(Layer::Ipv4, data, header_len)?;
        let total_len = usize::from(packet.total_len());
        if total_len < header_len {
            return Err(WireError::Malformed {
                layer: Layer::Ipv4,
                reason: "total length shorter than the header",
            });
        }
        check_len(Layer::Ipv4, data, total_len)?;
        Ok(packet)
    }

    /// Checks only what an ICMP error's embedded copy can promise: version 4 and a whole header
    /// (options included). The payload may be cut short, so [`Packet::payload`] must not be
    /// used; use [`Packet::available_payload`].
    pub fn new_checked_header(buffer: T) -> Result<Packet<T>, WireError> {
        let packet = Packet { buffer };
        let data = packet.buffer.as_ref();
        check_len(Layer::Ipv4, data, MIN_HEADER_LEN)?;
        if packet.version() != 4 {
            return Err(WireError::Malformed {
                layer: Layer::Ipv4,
                reason: "version is not 4",
            });
        }
        if packet.header_len() < MIN_HEADER_LEN {
            return Err(WireError::Malformed {
                layer: Layer::Ipv4,
                reason: "IHL below 5",
            });
        }
        check_len(Layer::Ipv4, data, packet.header_len())?;
        Ok(packet)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION_AND_IHL] >> 4
    }

    /// Header length in bytes (IHL * 4), options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VERSION_AND_IHL] & 0x0f) * 4
    }

    pub fn dscp(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_AND_ECN] >> 2
    }

    pub fn ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_AND_ECN] & 0x03
    }

    pub fn total_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::TOTAL_LEN.start)
    }

    pub fn identification(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENTIFICATION.start)
    }

    fn flags_and_offset(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::FLAGS_AND_FRAGMENT_OFFSET.start)
    }

    pub fn dont_fragment(&self) -> bool {
        self.flags_and_offset() & FLAG_DONT_FRAGMENT != 0
    }

    pub fn more_fragments(&self) -> bool {
        self.flags_and_offset() & FLAG_MORE_FRAGMENTS != 0
    }

    /// Fragment offset in bytes (the field counts 8-byte units).
    pub fn fragment_offset(&self) -> u16 {
        (self.flags_and_offset() & FRAGMENT_OFFSET_MASK) * 8
    }

    /// True for any fragment, first included: its payload is not a whole upper-layer packet.
    pub fn is_fragment(&self) -> bool {
        self.more_fragments() || self.fragment_offset() != 0
    }

    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    pub fn protocol(&self) -> IpProtocol {
        IpProtocol::from(self.buffer.as_ref()[field::PROTOCOL])
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    pub fn source(&self) -> Ipv4Addr {
        Ipv4Addr::from(addr4(&self.buffer.as_ref()[field::SOURCE]))
    }

    pub fn destination(&self) -> Ipv4Addr {
        Ipv4Addr::from(addr4(&self.buffer.as_ref()[field::DESTINATION]))
    }

    /// The option bytes between the fixed header and the payload (empty without options).
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[MIN_HEADER_LEN..self.header_len()]
    }

    /// True when the header checksum verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::verify(&self.buffer.as_ref()[..self.header_len()])
    }

    /// The payload as far as the buffer holds it (for an embedded, cut-short copy).
    pub fn available_payload(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        let end = data
            .len()
            .min(usize::from(self.total_len()))
            .max(self.header_len());
        &data[self.header_len()..end]
    }

    /// The bytes the header covers after itself: `header_len..total_len`.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets version 4 and the header length, which must be a multiple of 4 between 20 and 60.
    pub fn set_version_and_header_len(&mut self, header_len: usize) {
        let ihl = ((header_len / 4) & 0x0f) as u8;
        self.buffer.as_mut()[field::VERSION_AND_IHL] = 0x40 | ihl;
    }

    pub fn set_dscp_and_ecn(&mut self, dscp: u8, ecn: u8) {
        self.buffer.as_mut()[field::DSCP_AND_ECN] = (dscp << 2) | (ecn & 0x03);
    }

    pub fn set_total_len(&mut self, total_len: u16) {
        write_u16(self.buffer.as_mut(), field::TOTAL_LEN.start, total_len);
    }

    pub fn set_identification(&mut self, identification: u16) {
        write_u16(
            self.buffer.as_mut(),
            field::IDENTIFICATION.start,
            identification,
        );
    }

    /// Sets DF, MF and the offset in bytes (rounded down to 8-byte units).
    pub fn set_fragmentation(&mut self, dont_fragment: bool, more_fragments: bool, offset: u16) {
        let mut value = (offset / 8) & FRAGMENT_OFFSET_MASK;
        if dont_fragment {
            value |= FLAG_DONT_FRAGMENT;
        }
        if more_fragments {
            value |= FLAG_MORE_FRAGMENTS;
        }
        write_u16(
            self.buffer.as_mut(),
            field::FLAGS_AND_FRAGMENT_OFFSET.start,
            value,
        );
    }

    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    pub fn set_protocol(&mut self, protocol: IpProtocol) {
        self.buffer.as_mut()[field::PROTOCOL] = u8::from(protocol);
    }

    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM.start, checksum);
    }

    pub fn set_source(&mut self, address: Ipv4Addr) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&address.octets());
    }

    pub fn set_destination(&mut self, address: Ipv4Addr) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&address.octets());
    }

    /// Rewrites the source address and patches the header checksum incrementally.
    /// The TCP/UDP checksum covers the address too: patch it with
    /// [`checksum::update_ipv4_address`].
    pub fn rewrite_source(&mut self, address: Ipv4Addr) {
        let patched = checksum::update_ipv4_address(self.checksum(), self.source(), address);
        self.set_source(address);
        self.set_checksum(patched);
    }

    /// Rewrites the destination address and patches the header checksum incrementally.
    pub fn rewrite_destination(&mut self, address: Ipv4Addr) {
        let patched = checksum::update_ipv4_address(self.checksum(), self.destination(), address);
        self.set_destination(address);
        self.set_checksum(patched);
    }

    /// Decrements the TTL (saturating at zero) and patches the header checksum.
    pub fn decrement_ttl(&mut self) {
        let data = self.buffer.as_ref();
        let old_word = read_u16(data, field::TTL);
        let ttl = self.ttl().saturating_sub(1);
        self.set_ttl(ttl);
        let new_word = read_u16(self.buffer.as_ref(), field::TTL);
        let patched = checksum::update_u16(self.checksum(), old_word, new_word);
        self.set_checksum(patched);
    }

    /// Computes the header checksum from scratch and writes it.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let header_len = self.header_len();
        let computed = checksum::internet_checksum(&self.buffer.as_ref()[..header_len]);
        self.set_checksum(computed);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.header_len()..usize::from(self.total_len());
        &mut self.buffer.as_mut()[range]
    }
}

/// The values of an IPv4 header without options, enough to emit one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    pub source: Ipv4Addr,
    pub destination: Ipv4Addr,
    pub protocol: IpProtocol,
    pub payload_len: usize,
    pub ttl: u8,
    pub identification: u16,
    pub dont_fragment: bool,
    pub dscp: u8,
    pub ecn: u8,
}

impl Ipv4Repr {
    /// Reads the header of a checked packet. Fragments and packets with options parse too; the
    /// caller decides what to do with them ([`Packet::is_fragment`], [`Packet::options`]).
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Ipv4Repr {
        Ipv4Repr {
            source: packet.source(),
            destination: packet.destination(),
            protocol: packet.protocol(),
            payload_len: packet.payload().len(),
            ttl: packet.ttl(),
            identification: packet.identification(),
            dont_fragment: packet.dont_fragment(),
            dscp: packet.dscp(),
            ecn: packet.ecn(),
        }
    }

    pub const fn header_len(&self) -> usize {
        MIN_HEADER_LEN
    }

    /// Writes a 20-byte header with a computed checksum into the start of `buffer`.
    pub fn emit(&self, buffer: &mut [u8]) -> Result<(), WireError> {
        check_emit_len(Layer::Ipv4, buffer, MIN_HEADER_LEN)?;
        let total_len =
            u16::try_from(MIN_HEADER_LEN + self.payload_len).map_err(|_| WireError::Malformed {
                layer: Layer::Ipv4,
                reason: "payload longer than 65515 bytes",
            })?;
        let mut packet = Packet::new_unchecked(buffer);
        packet.set_version_and_header_len(MIN_HEADER_LEN);
        packet.set_dscp_and_ecn(self.dscp, self.ecn);
        packet.set_total_len(total_len);
        packet.set_identification(self.identification);
        packet.set_fragmentation(self.dont_fragment, false, 0);
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_source(self.source);
        packet.set_destination(self.destination);
        packet.fill_checksum();
        Ok(())
    }
}

/// Copies a four-byte field; the `field` ranges used with it are four bytes long.
fn addr4(bytes: &[u8]) -> [u8; 4] {
    let mut octets = [0u8; 4];
    octets.copy_from_slice(bytes);
    octets
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_frames::{ETH_IPV4_TCP_SYN, LAB_ARP_REQUEST, LAB_IPV4_LAST_FRAGMENT};

    fn syn_ip() -> &'static [u8] {
        &ETH_IPV4_TCP_SYN[14..]
    }

    #[test]
    fn parses_real_syn_header() {
        // Values read with tshark: ip.id 0x6115, DF, ttl 64, checksum 0x6304 (good).
        let packet = Packet::new_checked(syn_ip()).unwrap();
        assert_eq!(packet.version(), 4);
        assert_eq!(packet.header_len(), 20);
        assert_eq!(packet.total_len(), 60);
        assert_eq!(packet.identification(), 0x6115);
        assert!(packet.dont_fragment());
        assert!(!packet.is_fragment());
        assert_eq!(packet.ttl(), 64);
        assert_eq!(packet.protocol(), IpProtocol::Tcp);
        assert_eq!(packet.checksum(), 0x6304);
        assert!(packet.verify_checksum());
        assert_eq!(packet.source(), Ipv4Addr::new(192, 168, 100, 70));
        assert_eq!(packet.destination(), Ipv4Addr::new(193, 99, 144, 80));
        assert_eq!(packet.payload().len(), 40);
        assert!(packet.options().is_empty());
    }

    #[test]
    fn recognises_real_last_fragment() {
        // tshark: offset 1480, MF clear, id 0x85b8, protocol ICMP, 128 bytes of payload.
        let packet = Packet::new_checked(&LAB_IPV4_LAST_FRAGMENT[14..]).unwrap();
        assert!(packet.is_fragment());
        assert!(!packet.more_fragments());
        assert_eq!(packet.fragment_offset(), 1480);
        assert_eq!(packet.identification(), 0x85b8);
        assert_eq!(packet.protocol(), IpProtocol::Icmp);
        assert_eq!(packet.payload().len(), 128);
        assert!(packet.verify_checksum());
    }

    #[test]
    fn more_fragments_flag_alone_makes_a_fragment() {
        let mut bytes = syn_ip().to_vec();
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        packet.set_fragmentation(false, true, 0);
        packet.fill_checksum();
        assert!(packet.is_fragment());
        assert_eq!(packet.fragment_offset(), 0);
        assert!(packet.verify_checksum());
    }

    #[test]
    fn payload_excludes_ethernet_padding() {
        // A 60-byte minimum Ethernet frame carries 46 bytes; the IP packet says 40.
        let mut padded = syn_ip().to_vec();
        padded.extend_from_slice(&[0u8; 6]);
        let packet = Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(packet.payload().len(), 40);
    }

    #[test]
    fn options_are_skipped_via_ihl() {
        // The SYN with a 4-byte option (NOP NOP NOP EOL) inserted: IHL 6, total length 64.
        let ip = syn_ip();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&ip[..20]);
        bytes.extend_from_slice(&[1, 1, 1, 0]);
        bytes.extend_from_slice(&ip[20..]);
        let mut view = Packet::new_unchecked(&mut bytes[..]);
        view.set_version_and_header_len(24);
        view.set_total_len(64);
        view.fill_checksum();
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.header_len(), 24);
        assert_eq!(packet.options(), &[1, 1, 1, 0]);
        assert_eq!(packet.payload(), &ip[20..]);
        assert!(packet.verify_checksum());
        assert!(matches!(
            Packet::new_checked(&bytes[..23]),
            Err(WireError::Truncated {
                layer: Layer::Ipv4,
                needed: 24,
                available: 23
            })
        ));
    }

    #[test]
    fn refuses_inconsistent_lengths() {
        let ip = syn_ip();
        assert!(matches!(
            Packet::new_checked(&ip[..19]),
            Err(WireError::Truncated {
                layer: Layer::Ipv4,
                needed: 20,
                available: 19
            })
        ));
        assert!(matches!(
            Packet::new_checked(&ip[..59]),
            Err(WireError::Truncated {
                layer: Layer::Ipv4,
                needed: 60,
                available: 59
            })
        ));
        let mut bad = ip.to_vec();
        bad[0] = 0x44;
        assert!(matches!(
            Packet::new_checked(&bad[..]),
            Err(WireError::Malformed { .. })
        ));
        bad[0] = 0x65;
        assert!(matches!(
            Packet::new_checked(&bad[..]),
            Err(WireError::Malformed { .. })
        ));
        let mut short_total = ip.to_vec();
        short_total[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert!(matches!(
            Packet::new_checked(&short_total[..]),
            Err(WireError::Malformed { .. })
        ));
        let mut huge_ihl = ip.to_vec();
        huge_ihl[0] = 0x4f;
        huge_ihl[2..4].copy_from_slice(&40u16.to_be_bytes());
        assert!(matches!(
            Packet::new_checked(&huge_ihl[..]),
            Err(WireError::Malformed { .. })
        ));
        assert!(Packet::new_checked(&LAB_ARP_REQUEST[14..]).is_err());
    }

    #[test]
    fn bad_checksum_is_detected() {
        let mut bytes = syn_ip().to_vec();
        bytes[8] = 63;
        assert!(!Packet::new_checked(&bytes[..]).unwrap().verify_checksum());
    }

    #[test]
    fn incremental_rewrites_keep_the_checksum_valid() {
        let mut bytes = syn_ip().to_vec();
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        packet.rewrite_source(Ipv4Addr::new(198, 18, 0, 7));
        packet.rewrite_destination(Ipv4Addr::new(198, 19, 255, 254));
        packet.decrement_ttl();
        assert!(packet.verify_checksum());
        let patched = packet.checksum();
        packet.fill_checksum();
        assert_eq!(packet.checksum(), patched);
        assert_eq!(packet.ttl(), 63);
    }

    #[test]
    fn repr_emit_reproduces_the_real_header() {
        let packet = Packet::new_checked(syn_ip()).unwrap();
        let repr = Ipv4Repr::parse(&packet);
        assert_eq!(repr.payload_len, 40);
        let mut header = [0u8; 20];
        repr.emit(&mut header).unwrap();
        assert_eq!(header, syn_ip()[..20]);
        assert!(repr.emit(&mut [0u8; 19]).is_err());
        let too_long = Ipv4Repr {
            payload_len: 65_516,
            ..repr
        };
        assert!(too_long.emit(&mut header).is_err());
    }
}
