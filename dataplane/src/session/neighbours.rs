//! The inside port's neighbour cache: backend MAC addresses learned from ARP, NDP and the
//! frames backends send, and the box's own outstanding requests.
//!
//! Bounded and expiring, so that a server VLAN full of addresses (or a flood of forged ARP)
//! cannot grow it without end, and a backend replaced behind the same address is learned
//! again. Requests are rate-limited per address: a thousand sessions waiting for one backend
//! send one request per [`REQUEST_INTERVAL_NS`], not a thousand.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::wire::EthernetAddress;

/// How long a learned address is believed without being seen again (Linux's stale time is
/// of the same order; a busy backend refreshes its entry with every frame).
pub(crate) const NEIGHBOUR_TTL_NS: u64 = 300_000_000_000;
/// Entries kept at most, of each kind.
const MAX_NEIGHBOURS: usize = 1 << 16;
/// At most one request per address in this time.
pub(crate) const REQUEST_INTERVAL_NS: u64 = 500_000_000;
/// A request unanswered this long is forgotten: a late reply is bridged like any other.
const REQUEST_TTL_NS: u64 = 10_000_000_000;

#[derive(Debug, Default)]
pub(crate) struct Neighbours {
    /// Address -> (MAC, when last learned).
    macs: HashMap<IpAddr, (EthernetAddress, u64)>,
    /// Addresses the box asked for -> when it last asked. Their replies are the box's.
    asked: HashMap<IpAddr, u64>,
}

impl Neighbours {
    /// The MAC of `address`, if learned within the TTL.
    pub(crate) fn get(&self, now_ns: u64, address: IpAddr) -> Option<EthernetAddress> {
        let &(mac, learned_ns) = self.macs.get(&address)?;
        (now_ns.saturating_sub(learned_ns) < NEIGHBOUR_TTL_NS).then_some(mac)
    }

    /// `address` is at `mac`, as of now.
    pub(crate) fn learn(&mut self, now_ns: u64, address: IpAddr, mac: EthernetAddress) {
        if let Some(entry) = self.macs.get_mut(&address) {
            *entry = (mac, now_ns);
            return;
        }
        if self.macs.len() >= MAX_NEIGHBOURS {
            self.macs.retain(|_, (_, learned_ns)| now_ns.saturating_sub(*learned_ns) < NEIGHBOUR_TTL_NS);
        }
        if self.macs.len() < MAX_NEIGHBOURS {
            self.macs.insert(address, (mac, now_ns));
        }
    }

    /// Whether the box should send a request for `address` now (and records that it does):
    /// false when it asked less than [`REQUEST_INTERVAL_NS`] ago.
    pub(crate) fn ask(&mut self, now_ns: u64, address: IpAddr) -> bool {
        if let Some(&asked_ns) = self.asked.get(&address) {
            if now_ns.saturating_sub(asked_ns) < REQUEST_INTERVAL_NS {
                return false;
            }
        }
        if self.asked.len() >= MAX_NEIGHBOURS && !self.asked.contains_key(&address) {
            self.asked.retain(|_, asked_ns| now_ns.saturating_sub(*asked_ns) < REQUEST_TTL_NS);
            if self.asked.len() >= MAX_NEIGHBOURS {
                return false;
            }
        }
        self.asked.insert(address, now_ns);
        true
    }

    /// Whether the box asked for `address` recently (so a reply is the box's); forgets the request.
    pub(crate) fn answered(&mut self, now_ns: u64, address: IpAddr) -> bool {
        self.asked.remove(&address).is_some_and(|asked_ns| now_ns.saturating_sub(asked_ns) < REQUEST_TTL_NS)
    }

    /// Whether the box has a recent request out for `address`.
    pub(crate) fn asking(&self, now_ns: u64, address: IpAddr) -> bool {
        self.asked.get(&address).is_some_and(|&asked_ns| now_ns.saturating_sub(asked_ns) < REQUEST_TTL_NS)
    }

    pub(crate) fn len(&self) -> usize {
        self.macs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const SECOND: u64 = 1_000_000_000;

    fn address(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0xc612_0000 + n))
    }

    const MAC_A: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0xa]);
    const MAC_B: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0xb]);

    #[test]
    fn a_learned_address_expires_unless_seen_again() {
        let mut neighbours = Neighbours::default();
        neighbours.learn(0, address(1), MAC_A);
        assert_eq!(neighbours.get(NEIGHBOUR_TTL_NS - 1, address(1)), Some(MAC_A));
        assert_eq!(neighbours.get(NEIGHBOUR_TTL_NS, address(1)), None);
        neighbours.learn(NEIGHBOUR_TTL_NS, address(1), MAC_B);
        assert_eq!(neighbours.get(NEIGHBOUR_TTL_NS + 1, address(1)), Some(MAC_B), "a moved backend is learned again");
    }

    #[test]
    fn the_cache_is_bounded_and_makes_room_from_expired_entries() {
        let mut neighbours = Neighbours::default();
        for n in 0..MAX_NEIGHBOURS as u32 + 10 {
            neighbours.learn(0, address(n), MAC_A);
        }
        assert_eq!(neighbours.len(), MAX_NEIGHBOURS);
        neighbours.learn(NEIGHBOUR_TTL_NS, address(1 << 20), MAC_B);
        assert_eq!(neighbours.len(), 1, "the expired entries went first");
        assert_eq!(neighbours.get(NEIGHBOUR_TTL_NS, address(1 << 20)), Some(MAC_B));
    }

    #[test]
    fn requests_are_rate_limited_per_address() {
        let mut neighbours = Neighbours::default();
        assert!(neighbours.ask(0, address(1)));
        assert!(!neighbours.ask(REQUEST_INTERVAL_NS - 1, address(1)), "a second session asks within the interval");
        assert!(neighbours.ask(0, address(2)), "another address is asked at once");
        assert!(neighbours.ask(REQUEST_INTERVAL_NS, address(1)));
        assert!(neighbours.asking(SECOND, address(1)));
        assert!(neighbours.answered(SECOND, address(1)), "the reply is the box's");
        assert!(!neighbours.answered(SECOND, address(1)), "only once");
        assert!(!neighbours.answered(REQUEST_TTL_NS + 1, address(2)), "an old request is forgotten");
    }
}
