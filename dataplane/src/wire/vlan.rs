//! 802.1Q and 802.1ad VLAN tags between the Ethernet addresses and the payload.
//!
//! On the wire a tag is the TPID (0x8100, 0x88a8 or the legacy 0x9100, read as the frame's
//! EtherType), then a 16-bit TCI (priority, drop-eligible bit, VLAN id), then the next
//! EtherType. [`Header`] is a view of the four bytes after a TPID (TCI and encapsulated
//! EtherType), and [`decode_tags`] walks the tag stack of a whole Ethernet frame.
//!
//! Not supported: more than [`MAX_TAGS`] tags (a frame with a third tag is refused with
//! [`WireError::TooManyVlanTags`]).

use super::ethernet::{self, EtherType};
use super::{check_emit_len, check_len, read_u16, write_u16, Layer, WireError};

/// The most tags [`decode_tags`] accepts: one 802.1Q tag, or an 802.1ad tag over an 802.1Q tag.
pub const MAX_TAGS: usize = 2;

/// Byte ranges of a tag's body, counted from the byte after its TPID.
pub mod field {
    use core::ops::Range;

    pub const TCI: Range<usize> = 0..2;
    pub const ETHERTYPE: Range<usize> = 2..4;
    pub const PAYLOAD: usize = 4;
}

/// Length of a tag's body (TCI and encapsulated EtherType); a tag adds this much to a frame.
pub const HEADER_LEN: usize = field::PAYLOAD;

/// A read/write view of the TCI and encapsulated EtherType that follow a VLAN TPID.
#[derive(Debug, Clone)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Header<T> {
    pub fn new_unchecked(buffer: T) -> Header<T> {
        Header { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Header<T>, WireError> {
        check_len(Layer::Vlan, buffer.as_ref(), HEADER_LEN)?;
        Ok(Header { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn tci(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::TCI.start)
    }

    /// Priority code point (802.1p), 0 to 7.
    pub fn priority(&self) -> u8 {
        (self.tci() >> 13) as u8
    }

    /// The drop-eligible indicator (formerly CFI).
    pub fn drop_eligible(&self) -> bool {
        self.tci() & 0x1000 != 0
    }

    /// The 12-bit VLAN identifier.
    pub fn vlan_id(&self) -> u16 {
        self.tci() & 0x0fff
    }

    /// The EtherType after this tag: another TPID or the payload's protocol.
    pub fn ethertype(&self) -> EtherType {
        EtherType::from(read_u16(self.buffer.as_ref(), field::ETHERTYPE.start))
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    fn set_tci(&mut self, tci: u16) {
        write_u16(self.buffer.as_mut(), field::TCI.start, tci);
    }

    /// Sets the priority; only the low three bits of `priority` are used.
    pub fn set_priority(&mut self, priority: u8) {
        let tci = (self.tci() & 0x1fff) | (u16::from(priority & 0x07) << 13);
        self.set_tci(tci);
    }

    pub fn set_drop_eligible(&mut self, drop_eligible: bool) {
        let tci = (self.tci() & !0x1000) | if drop_eligible { 0x1000 } else { 0 };
        self.set_tci(tci);
    }

    /// Sets the VLAN id; only the low twelve bits of `vlan_id` are used.
    pub fn set_vlan_id(&mut self, vlan_id: u16) {
        let tci = (self.tci() & 0xf000) | (vlan_id & 0x0fff);
        self.set_tci(tci);
    }

    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        write_u16(
            self.buffer.as_mut(),
            field::ETHERTYPE.start,
            u16::from(ethertype),
        );
    }
}

/// One VLAN tag: the TPID that introduced it and its TCI fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VlanTag {
    /// 0x8100 (802.1Q), 0x88a8 (802.1ad) or 0x9100.
    pub tpid: EtherType,
    pub priority: u8,
    pub drop_eligible: bool,
    pub vlan_id: u16,
}

impl VlanTag {
    /// A plain 802.1Q tag with priority 0.
    pub fn dot1q(vlan_id: u16) -> VlanTag {
        VlanTag {
            tpid: EtherType::Vlan,
            priority: 0,
            drop_eligible: false,
            vlan_id,
        }
    }

    fn parse<T: AsRef<[u8]>>(tpid: EtherType, header: &Header<T>) -> VlanTag {
        VlanTag {
            tpid,
            priority: header.priority(),
            drop_eligible: header.drop_eligible(),
            vlan_id: header.vlan_id(),
        }
    }

    /// Writes the TPID and TCI (4 bytes) into `buffer`; the caller writes what follows.
    pub fn emit(&self, buffer: &mut [u8]) -> Result<(), WireError> {
        check_emit_len(Layer::Vlan, buffer, 4)?;
        let tci = (u16::from(self.priority & 0x07) << 13)
            | if self.drop_eligible { 0x1000 } else { 0 }
            | (self.vlan_id & 0x0fff);
        write_u16(buffer, 0, u16::from(self.tpid));
        write_u16(buffer, 2, tci);
        Ok(())
    }
}

/// The tag stack of a frame, outermost first, without allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VlanTags {
    tags: [VlanTag; MAX_TAGS],
    count: u8,
}

impl Default for VlanTags {
    fn default() -> Self {
        VlanTags {
            tags: [VlanTag::dot1q(0); MAX_TAGS],
            count: 0,
        }
    }
}

impl VlanTags {
    /// The tags, outermost first; empty for an untagged frame.
    pub fn as_slice(&self) -> &[VlanTag] {
        &self.tags[..usize::from(self.count)]
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// The innermost tag's VLAN id (the customer VLAN in Q-in-Q), if the frame is tagged.
    pub fn inner_vlan_id(&self) -> Option<u16> {
        self.as_slice().last().map(|tag| tag.vlan_id)
    }

    /// Appends a tag, or refuses if the stack is full.
    pub fn push(&mut self, tag: VlanTag) -> Result<(), WireError> {
        let slot = self
            .tags
            .get_mut(usize::from(self.count))
            .ok_or(WireError::TooManyVlanTags)?;
        *slot = tag;
        self.count += 1;
        Ok(())
    }
}

/// What [`decode_tags`] found in an Ethernet frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagStack {
    pub tags: VlanTags,
    /// The EtherType after the last tag (the frame's EtherType if untagged).
    pub inner_ethertype: EtherType,
    /// Offset of the payload from the start of the frame: 14 plus 4 per tag.
    pub payload_offset: usize,
}

/// Walks the VLAN tags of a whole Ethernet frame (starting at the destination address).
pub fn decode_tags(frame: &[u8]) -> Result<TagStack, WireError> {
    let ethernet = ethernet::Frame::new_checked(frame)?;
    walk_tags(frame, ethernet.ethertype(), ethernet::HEADER_LEN)
}

/// Walks VLAN tags in `frame` from `offset`, where `first` is the EtherType (or TPID) read
/// just before it: for link layers other than Ethernet (a Linux cooked header whose protocol
/// is 0x8100) as well as for Ethernet.
pub fn walk_tags(frame: &[u8], first: EtherType, offset: usize) -> Result<TagStack, WireError> {
    let mut tags = VlanTags::default();
    let mut ethertype = first;
    let mut offset = offset;
    while ethertype.is_vlan_tag() {
        let header = Header::new_checked(frame.get(offset..).unwrap_or_default())?;
        tags.push(VlanTag::parse(ethertype, &header))?;
        ethertype = header.ethertype();
        offset += HEADER_LEN;
    }
    Ok(TagStack {
        tags,
        inner_ethertype: ethertype,
        payload_offset: offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_frames::LAB_ICMP_ECHO_REQUEST;

    /// The lab's ICMP echo request with `tags` inserted after the MAC addresses, as a switch
    /// port would tag it (this kernel has no 8021q module to capture real tagged frames).
    fn tagged(tags: &[[u8; 4]]) -> Vec<u8> {
        let mut frame = LAB_ICMP_ECHO_REQUEST[..12].to_vec();
        for tag in tags {
            frame.extend_from_slice(tag);
        }
        frame.extend_from_slice(&LAB_ICMP_ECHO_REQUEST[12..]);
        frame
    }

    #[test]
    fn untagged_frame_has_no_tags() {
        let stack = decode_tags(&LAB_ICMP_ECHO_REQUEST).unwrap();
        assert!(stack.tags.is_empty());
        assert_eq!(stack.inner_ethertype, EtherType::Ipv4);
        assert_eq!(stack.payload_offset, 14);
    }

    #[test]
    fn single_dot1q_tag() {
        // TPID 8100, PCP 5, DEI 0, VID 100 (0xa064).
        let frame = tagged(&[[0x81, 0x00, 0xa0, 0x64]]);
        let stack = decode_tags(&frame).unwrap();
        assert_eq!(
            stack.tags.as_slice(),
            &[VlanTag {
                tpid: EtherType::Vlan,
                priority: 5,
                drop_eligible: false,
                vlan_id: 100
            }]
        );
        assert_eq!(stack.inner_ethertype, EtherType::Ipv4);
        assert_eq!(stack.payload_offset, 18);
        assert_eq!(frame[stack.payload_offset], 0x45);
    }

    #[test]
    fn qinq_two_tags() {
        // Outer 802.1ad VID 200 with DEI set, inner 802.1Q VID 300.
        let frame = tagged(&[[0x88, 0xa8, 0x10, 0xc8], [0x81, 0x00, 0x01, 0x2c]]);
        let stack = decode_tags(&frame).unwrap();
        let tags = stack.tags.as_slice();
        assert_eq!(tags.len(), 2);
        assert_eq!(
            tags[0],
            VlanTag {
                tpid: EtherType::QinQ,
                priority: 0,
                drop_eligible: true,
                vlan_id: 200
            }
        );
        assert_eq!(tags[1], VlanTag::dot1q(300));
        assert_eq!(stack.tags.inner_vlan_id(), Some(300));
        assert_eq!(stack.payload_offset, 22);
    }

    #[test]
    fn three_tags_are_refused() {
        let frame = tagged(&[[0x88, 0xa8, 0, 1], [0x81, 0x00, 0, 2], [0x81, 0x00, 0, 3]]);
        assert_eq!(decode_tags(&frame).unwrap_err(), WireError::TooManyVlanTags);
    }

    #[test]
    fn truncated_tag_is_refused() {
        let frame = tagged(&[[0x81, 0x00, 0xa0, 0x64]]);
        assert!(matches!(
            decode_tags(&frame[..16]),
            Err(WireError::Truncated {
                layer: Layer::Vlan,
                needed: 4,
                available: 2
            })
        ));
    }

    #[test]
    fn header_setters_and_emit_agree() {
        let mut bytes = [0x00, 0x00, 0x08, 0x00];
        let mut header = Header::new_checked(&mut bytes[..]).unwrap();
        header.set_priority(6);
        header.set_drop_eligible(true);
        header.set_vlan_id(0xabc);
        header.set_ethertype(EtherType::Ipv6);
        assert_eq!(bytes, [0xda, 0xbc, 0x86, 0xdd]);

        let tag = VlanTag {
            tpid: EtherType::Vlan,
            priority: 6,
            drop_eligible: true,
            vlan_id: 0xabc,
        };
        let mut emitted = [0u8; 4];
        tag.emit(&mut emitted).unwrap();
        assert_eq!(emitted, [0x81, 0x00, 0xda, 0xbc]);
        let view = Header::new_checked(&bytes[..]).unwrap();
        assert_eq!(VlanTag::parse(EtherType::Vlan, &view), tag);
    }
}
