//! Zero-copy packet views and representations, in the style of `smoltcp::wire`.
//!
//! Every protocol has a view type generic over its buffer (`T: AsRef<[u8]>` to read,
//! `T: AsMut<[u8]>` to write) with three constructors:
//!
//! - `new_unchecked(buffer)`: wraps the buffer, checks nothing. Getters may panic if the buffer is
//!   too short; use it only on buffers the caller built or already checked.
//! - `new_checked(buffer)`: checks every length the header states against the buffer before any
//!   getter can use it, and returns a typed [`WireError`] otherwise. Use it on untrusted input.
//! - `into_inner()`: gives the buffer back.
//!
//! Field offsets are `const` ranges in each module's `field` module, so that the session engine
//! can rewrite a field in place and patch the checksum with [`checksum`]'s RFC 1624 helpers.
//! Where a protocol needs to be built from values, a `*Repr` type has `parse` and `emit`.
//!
//! [`parse_frame`] decodes a whole captured frame (link layer, VLAN tags, IP, TCP) in one call
//! and never panics, whatever the bytes.
//!
//! Supported: Ethernet II with up to two 802.1Q/802.1ad tags, Linux cooked capture (SLL, SLL2),
//! BSD loopback (NULL, LOOP), raw IP, ARP for Ethernet/IPv4, IPv4 (options skipped), IPv6 with
//! its extension headers walked, ICMPv4 and ICMPv6 (error messages expose the embedded packet),
//! TCP with its options.
//!
//! Not supported: IP reassembly (a fragment is reported as a fragment, never parsed further),
//! IPv6 jumbograms, UDP views (only the UDP checksum helpers exist), 802.3/LLC frames (an
//! EtherType below 0x0600 is reported as an unknown EtherType), more than two VLAN tags.

pub mod arp;
pub mod checksum;
pub mod embedded;
pub mod ethernet;
pub mod frame;
pub mod icmpv4;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod loopback;
pub mod seq;
pub mod sll;
pub mod tcp;
pub mod vlan;

#[cfg(test)]
pub(crate) mod test_frames;

pub use arp::{ArpOperation, ArpRepr, Packet as ArpPacket};
pub use embedded::EmbeddedPacket;
pub use ethernet::{EtherType, EthernetAddress, EthernetRepr, Frame as EthernetFrame};
pub use frame::{
    parse_frame, parse_frame_with, FragmentInfo, Frame, IcmpMessage, IpInfo, IpVersion, LinkInfo, LinkType,
    NetworkPayload, TcpSegment, Transport, TransportChecksum,
};
pub use icmpv4::{Icmpv4Type, Packet as Icmpv4Packet};
pub use icmpv6::{Icmpv6Type, Packet as Icmpv6Packet};
pub use ipv4::{Ipv4Repr, Packet as Ipv4Packet};
pub use ipv6::{ExtensionWalk, Ipv6Repr, Packet as Ipv6Packet};
pub use seq::{SeqNumber, SeqSpace};
pub use sll::{Sll2Header, SllHeader};
pub use tcp::{
    Packet as TcpPacket, SackBlock, SackBlocks, TcpFlags, TcpOption, TcpOptions, TcpRepr,
    TcpTimestamp,
};
pub use vlan::{VlanTag, VlanTags};

use core::fmt;

/// The protocol layer an error was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    Ethernet,
    Vlan,
    LinuxSll,
    LinuxSll2,
    Loopback,
    Arp,
    Ipv4,
    Ipv6,
    Ipv6Extension,
    Icmpv4,
    Icmpv6,
    Tcp,
    TcpOption,
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Layer::Ethernet => "Ethernet",
            Layer::Vlan => "VLAN",
            Layer::LinuxSll => "Linux SLL",
            Layer::LinuxSll2 => "Linux SLL2",
            Layer::Loopback => "loopback",
            Layer::Arp => "ARP",
            Layer::Ipv4 => "IPv4",
            Layer::Ipv6 => "IPv6",
            Layer::Ipv6Extension => "IPv6 extension header",
            Layer::Icmpv4 => "ICMPv4",
            Layer::Icmpv6 => "ICMPv6",
            Layer::Tcp => "TCP",
            Layer::TcpOption => "TCP option",
        };
        f.write_str(name)
    }
}

/// Why bytes from the wire were refused. Every variant names the layer it was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireError {
    /// The buffer ends before a length the header states (or the fixed header) is covered.
    Truncated {
        layer: Layer,
        needed: usize,
        available: usize,
    },
    /// A field holds a value the protocol does not allow (a version, a header length shorter
    /// than the fixed header, an option length that runs past the options area...).
    Malformed { layer: Layer, reason: &'static str },
    /// The header is valid but describes something this module does not decode (an ARP packet
    /// for another hardware type, an unknown loopback address family...).
    Unsupported { layer: Layer, reason: &'static str },
    /// A pcap LINKTYPE that [`parse_frame`] cannot decode.
    UnsupportedLinkType(u32),
    /// More VLAN tags than [`vlan::MAX_TAGS`].
    TooManyVlanTags,
    /// More IPv6 extension headers than [`ipv6::MAX_EXTENSION_HEADERS`].
    TooManyExtensionHeaders,
    /// An emit was asked to write into a buffer too small for the representation.
    BufferTooSmall {
        layer: Layer,
        needed: usize,
        available: usize,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated {
                layer,
                needed,
                available,
            } => {
                write!(
                    f,
                    "{layer}: truncated, needs {needed} bytes, has {available}"
                )
            }
            WireError::Malformed { layer, reason } => write!(f, "{layer}: malformed: {reason}"),
            WireError::Unsupported { layer, reason } => {
                write!(f, "{layer}: unsupported: {reason}")
            }
            WireError::UnsupportedLinkType(link_type) => {
                write!(f, "unsupported pcap link type {link_type}")
            }
            WireError::TooManyVlanTags => {
                write!(f, "VLAN: more than {} tags", vlan::MAX_TAGS)
            }
            WireError::TooManyExtensionHeaders => {
                write!(
                    f,
                    "IPv6: more than {} extension headers",
                    ipv6::MAX_EXTENSION_HEADERS
                )
            }
            WireError::BufferTooSmall {
                layer,
                needed,
                available,
            } => {
                write!(
                    f,
                    "{layer}: emit needs {needed} bytes, buffer has {available}"
                )
            }
        }
    }
}

impl std::error::Error for WireError {}

/// Returns `Truncated` unless `buffer` holds at least `needed` bytes.
pub(crate) fn check_len(layer: Layer, buffer: &[u8], needed: usize) -> Result<(), WireError> {
    if buffer.len() < needed {
        Err(WireError::Truncated {
            layer,
            needed,
            available: buffer.len(),
        })
    } else {
        Ok(())
    }
}

/// Returns `BufferTooSmall` unless an emit buffer holds at least `needed` bytes.
pub(crate) fn check_emit_len(layer: Layer, buffer: &[u8], needed: usize) -> Result<(), WireError> {
    if buffer.len() < needed {
        Err(WireError::BufferTooSmall {
            layer,
            needed,
            available: buffer.len(),
        })
    } else {
        Ok(())
    }
}

// Big-endian field access. Callers index with a `field` range; a view built with
// `new_checked` guarantees the range is inside the buffer, which is why these may index.

pub(crate) fn read_u16(data: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([data[at], data[at + 1]])
}

pub(crate) fn read_u32(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

pub(crate) fn write_u16(data: &mut [u8], at: usize, value: u16) {
    data[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

pub(crate) fn write_u32(data: &mut [u8], at: usize, value: u32) {
    data[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

/// Declares a `u8`/`u16` protocol-number enum with an `Unknown(n)` variant, as smoltcp does,
/// so that every value on the wire maps to a variant and back without loss.
macro_rules! enum_with_unknown {
    (
        $( #[$enum_attr:meta] )*
        pub enum $name:ident($ty:ty) {
            $( $( #[$variant_attr:meta] )* $variant:ident = $value:expr ),+ $(,)?
        }
    ) => {
        $( #[$enum_attr] )*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $( $( #[$variant_attr] )* $variant ),*,
            Unknown($ty),
        }

        impl ::core::convert::From<$ty> for $name {
            fn from(value: $ty) -> Self {
                match value {
                    $( $value => $name::$variant ),*,
                    other => $name::Unknown(other),
                }
            }
        }

        impl ::core::convert::From<$name> for $ty {
            fn from(value: $name) -> Self {
                match value {
                    $( $name::$variant => $value ),*,
                    $name::Unknown(other) => other,
                }
            }
        }
    };
}
pub(crate) use enum_with_unknown;

enum_with_unknown! {
    /// IP protocol numbers (IPv4 `protocol`, IPv6 `next header`).
    pub enum IpProtocol(u8) {
        HopByHop = 0,
        Icmp = 1,
        Tcp = 6,
        Udp = 17,
        Ipv6Route = 43,
        Ipv6Frag = 44,
        Esp = 50,
        Ah = 51,
        Icmpv6 = 58,
        Ipv6NoNext = 59,
        Ipv6Opts = 60,
    }
}
