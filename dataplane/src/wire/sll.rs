//! Linux "cooked" capture headers: SLL (pcap LINKTYPE_LINUX_SLL, 113, 16 bytes) and SLL2
//! (LINKTYPE_LINUX_SLL2, 276, 20 bytes), which `tcpdump -i any` writes instead of an Ethernet
//! header. They carry the packet's direction, the link-layer source address and the protocol
//! (an EtherType).
//!
//! Not supported: the non-EtherType protocol values SLL uses for some ARPHRD types (Novell
//! 802.3, 802.2 LLC, CAN...): they are reported as `EtherType::Unknown` and left undecoded.

use super::ethernet::EtherType;
use super::{
    check_emit_len, check_len, enum_with_unknown, read_u16, read_u32, write_u16, write_u32, Layer,
    WireError,
};

enum_with_unknown! {
    /// Which way the packet went, from the capturing host's point of view.
    pub enum PacketType(u16) {
        /// Addressed to this host.
        Host = 0,
        Broadcast = 1,
        Multicast = 2,
        /// Addressed to another host (seen in promiscuous mode).
        OtherHost = 3,
        /// Sent by this host.
        Outgoing = 4,
    }
}

/// Byte ranges of the SLL header.
pub mod sll_field {
    use core::ops::Range;

    pub const PACKET_TYPE: Range<usize> = 0..2;
    pub const ARPHRD_TYPE: Range<usize> = 2..4;
    pub const ADDRESS_LEN: Range<usize> = 4..6;
    pub const ADDRESS: Range<usize> = 6..14;
    pub const PROTOCOL: Range<usize> = 14..16;
    pub const PAYLOAD: usize = 16;
}

/// Byte ranges of the SLL2 header.
pub mod sll2_field {
    use core::ops::Range;

    pub const PROTOCOL: Range<usize> = 0..2;
    pub const RESERVED: Range<usize> = 2..4;
    pub const INTERFACE_INDEX: Range<usize> = 4..8;
    pub const ARPHRD_TYPE: Range<usize> = 8..10;
    pub const PACKET_TYPE: usize = 10;
    pub const ADDRESS_LEN: usize = 11;
    pub const ADDRESS: Range<usize> = 12..20;
    pub const PAYLOAD: usize = 20;
}

pub const SLL_HEADER_LEN: usize = sll_field::PAYLOAD;
pub const SLL2_HEADER_LEN: usize = sll2_field::PAYLOAD;

/// ARPHRD_ETHER: the device is an Ethernet device.
pub const ARPHRD_ETHER: u16 = 1;

/// A read/write view of an SLL header and what follows it.
#[derive(Debug, Clone)]
pub struct SllHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> SllHeader<T> {
    pub fn new_unchecked(buffer: T) -> SllHeader<T> {
        SllHeader { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<SllHeader<T>, WireError> {
        check_len(Layer::LinuxSll, buffer.as_ref(), SLL_HEADER_LEN)?;
        Ok(SllHeader { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn packet_type(&self) -> PacketType {
        PacketType::from(read_u16(self.buffer.as_ref(), sll_field::PACKET_TYPE.start))
    }

    pub fn arphrd_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), sll_field::ARPHRD_TYPE.start)
    }

    /// The link-layer source address: at most 8 bytes are stored, whatever the length says.
    pub fn address(&self) -> &[u8] {
        let stored = usize::from(read_u16(self.buffer.as_ref(), sll_field::ADDRESS_LEN.start));
        let field = &self.buffer.as_ref()[sll_field::ADDRESS];
        &field[..stored.min(field.len())]
    }

    pub fn protocol(&self) -> EtherType {
        EtherType::from(read_u16(self.buffer.as_ref(), sll_field::PROTOCOL.start))
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[sll_field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> SllHeader<T> {
    /// Writes every header field; `address` beyond 8 bytes is refused.
    pub fn emit_header(
        &mut self,
        packet_type: PacketType,
        arphrd_type: u16,
        address: &[u8],
        protocol: EtherType,
    ) -> Result<(), WireError> {
        let buffer = self.buffer.as_mut();
        check_emit_len(Layer::LinuxSll, buffer, SLL_HEADER_LEN)?;
        let address_len = address_len(Layer::LinuxSll, address)?;
        write_u16(buffer, sll_field::PACKET_TYPE.start, u16::from(packet_type));
        write_u16(buffer, sll_field::ARPHRD_TYPE.start, arphrd_type);
        write_u16(buffer, sll_field::ADDRESS_LEN.start, u16::from(address_len));
        buffer[sll_field::ADDRESS].fill(0);
        buffer[sll_field::ADDRESS.start..sll_field::ADDRESS.start + address.len()]
            .copy_from_slice(address);
        write_u16(buffer, sll_field::PROTOCOL.start, u16::from(protocol));
        Ok(())
    }
}

/// A read/write view of an SLL2 header and what follows it.
#[derive(Debug, Clone)]
pub struct Sll2Header<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Sll2Header<T> {
    pub fn new_unchecked(buffer: T) -> Sll2Header<T> {
        Sll2Header { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Sll2Header<T>, WireError> {
        check_len(Layer::LinuxSll2, buffer.as_ref(), SLL2_HEADER_LEN)?;
        Ok(Sll2Header { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn protocol(&self) -> EtherType {
        EtherType::from(read_u16(self.buffer.as_ref(), sll2_field::PROTOCOL.start))
    }

    pub fn interface_index(&self) -> u32 {
        read_u32(self.buffer.as_ref(), sll2_field::INTERFACE_INDEX.start)
    }

    pub fn arphrd_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), sll2_field::ARPHRD_TYPE.start)
    }

    pub fn packet_type(&self) -> PacketType {
        PacketType::from(u16::from(self.buffer.as_ref()[sll2_field::PACKET_TYPE]))
    }

    /// The link-layer source address: at most 8 bytes are stored, whatever the length says.
    pub fn address(&self) -> &[u8] {
        let stored = usize::from(self.buffer.as_ref()[sll2_field::ADDRESS_LEN]);
        let field = &self.buffer.as_ref()[sll2_field::ADDRESS];
        &field[..stored.min(field.len())]
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[sll2_field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Sll2Header<T> {
    /// Writes every header field; `address` beyond 8 bytes is refused.
    pub fn emit_header(
        &mut self,
        protocol: EtherType,
        interface_index: u32,
        arphrd_type: u16,
        packet_type: PacketType,
        address: &[u8],
    ) -> Result<(), WireError> {
        let buffer = self.buffer.as_mut();
        check_emit_len(Layer::LinuxSll2, buffer, SLL2_HEADER_LEN)?;
        let address_len = address_len(Layer::LinuxSll2, address)?;
        let packet_type =
            u8::try_from(u16::from(packet_type)).map_err(|_| WireError::Malformed {
                layer: Layer::LinuxSll2,
                reason: "packet type above 255",
            })?;
        write_u16(buffer, sll2_field::PROTOCOL.start, u16::from(protocol));
        write_u16(buffer, sll2_field::RESERVED.start, 0);
        write_u32(buffer, sll2_field::INTERFACE_INDEX.start, interface_index);
        write_u16(buffer, sll2_field::ARPHRD_TYPE.start, arphrd_type);
        buffer[sll2_field::PACKET_TYPE] = packet_type;
        buffer[sll2_field::ADDRESS_LEN] = address_len;
        buffer[sll2_field::ADDRESS].fill(0);
        buffer[sll2_field::ADDRESS.start..sll2_field::ADDRESS.start + address.len()]
            .copy_from_slice(address);
        Ok(())
    }
}

/// The length byte for a link-layer address, which must fit the 8-byte field.
fn address_len(layer: Layer, address: &[u8]) -> Result<u8, WireError> {
    if address.len() > 8 {
        return Err(WireError::Malformed {
            layer,
            reason: "link-layer address above 8 bytes",
        });
    }
    // At most 8 here.
    Ok(address.len() as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_frames::{
        LAB_SLL2_ARP_REQUEST, LAB_SLL2_IPV4_TCP_SYN, SLL_IPV4_TCP_DATA,
    };

    #[test]
    fn parses_real_sll_header() {
        let header = SllHeader::new_checked(&SLL_IPV4_TCP_DATA[..]).unwrap();
        assert_eq!(header.protocol(), EtherType::Ipv4);
        assert_eq!(header.arphrd_type(), ARPHRD_ETHER);
        assert_eq!(header.packet_type(), PacketType::Outgoing);
        assert_eq!(header.address().len(), 6);
        assert_eq!(header.payload()[0], 0x45);
    }

    #[test]
    fn parses_real_sll2_headers() {
        let header = Sll2Header::new_checked(&LAB_SLL2_ARP_REQUEST[..]).unwrap();
        assert_eq!(header.protocol(), EtherType::Arp);
        assert_eq!(header.interface_index(), 2);
        assert_eq!(header.arphrd_type(), ARPHRD_ETHER);
        assert_eq!(header.packet_type(), PacketType::Outgoing);
        assert_eq!(header.address(), &[0x7e, 0xf2, 0x45, 0xc4, 0xde, 0xb0]);
        let header = Sll2Header::new_checked(&LAB_SLL2_IPV4_TCP_SYN[..]).unwrap();
        assert_eq!(header.protocol(), EtherType::Ipv4);
        assert_eq!(header.payload().len(), LAB_SLL2_IPV4_TCP_SYN.len() - 20);
    }

    #[test]
    fn emit_reproduces_the_real_headers() {
        let mut sll2 = [0u8; 20];
        Sll2Header::new_unchecked(&mut sll2[..])
            .emit_header(
                EtherType::Arp,
                2,
                ARPHRD_ETHER,
                PacketType::Outgoing,
                &[0x7e, 0xf2, 0x45, 0xc4, 0xde, 0xb0],
            )
            .unwrap();
        assert_eq!(sll2, LAB_SLL2_ARP_REQUEST[..20]);

        let original = SllHeader::new_checked(&SLL_IPV4_TCP_DATA[..]).unwrap();
        let mut sll = [0u8; 16];
        SllHeader::new_unchecked(&mut sll[..])
            .emit_header(
                original.packet_type(),
                original.arphrd_type(),
                original.address(),
                original.protocol(),
            )
            .unwrap();
        assert_eq!(sll, SLL_IPV4_TCP_DATA[..16]);
        assert!(SllHeader::new_unchecked(&mut sll[..])
            .emit_header(PacketType::Host, 1, &[0; 9], EtherType::Ipv4)
            .is_err());
    }

    #[test]
    fn short_headers_are_refused() {
        assert!(matches!(
            SllHeader::new_checked(&SLL_IPV4_TCP_DATA[..15]),
            Err(WireError::Truncated {
                layer: Layer::LinuxSll,
                needed: 16,
                available: 15
            })
        ));
        assert!(matches!(
            Sll2Header::new_checked(&LAB_SLL2_ARP_REQUEST[..19]),
            Err(WireError::Truncated {
                layer: Layer::LinuxSll2,
                needed: 20,
                available: 19
            })
        ));
    }
}
