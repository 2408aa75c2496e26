//! Which poll loop owns a frame: one steering function, so that both directions of a session
//! reach the loop that holds it.
//!
//! A session is owned by the loop its **client endpoint** (address and port) hashes to. Frames
//! carry that endpoint as the source on the outside port (client -> VIP) and, in transparent
//! mode, as the destination on the inside port (backend -> client). In SNAT mode the backend
//! answers the box's own address, and the box chose the source port so that it steers home:
//! inside frames to the SNAT address belong to loop `port % loops` ([`snat_port_steers_to`]).
//! ICMP errors about a session's segments steer by the segment they quote.
//!
//! Frames nothing owns (bridged traffic, ARP and NDP for VIPs) go to [`Owner::Any`]: whichever
//! loop received them handles them. Neighbour information on the inside port (ARP, NDP
//! advertisements) is [`Owner::Every`]: every loop connects backends and needs it.
//!
//! The NIC's own hash does not compute this function, so a loop that receives a frame another
//! loop owns hands it over (the poll loop's hand-off ring); the XDP program and
//! `PACKET_FANOUT_EBPF` could steer in the kernel instead (not done yet).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use crate::health::Claim;
use crate::session::Port;
use crate::wire::{parse_frame_with, IpProtocol, LinkType, NetworkPayload, Transport, TransportChecksum};

/// Where a frame must be handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// By this loop, which holds (or will hold) the session.
    Loop(usize),
    /// By the loop that received it.
    Any,
    /// By the loop that received it, and its neighbour information by every loop.
    Every,
}

/// What the steering function needs to know of the configuration.
#[derive(Clone, Debug)]
pub struct Steering {
    loops: usize,
    /// Listener addresses (any port): client frames toward them steer by the client.
    vips: HashSet<IpAddr>,
    /// Every backend of every pool: their frames toward the client steer by the client.
    backends: HashSet<SocketAddr>,
    snat_address: Option<IpAddr>,
    /// The health checker's addresses ([`crate::health`]): its frames go to [`HEALTH_LOOP`].
    health_sources: Vec<IpAddr>,
}

/// The loop that runs the health checks.
pub const HEALTH_LOOP: usize = 0;

impl Steering {
    pub fn new(loops: usize, vips: impl IntoIterator<Item = IpAddr>, backends: impl IntoIterator<Item = SocketAddr>, snat_address: Option<IpAddr>) -> Steering {
        Steering {
            loops: loops.max(1),
            vips: vips.into_iter().collect(),
            backends: backends.into_iter().collect(),
            snat_address,
            health_sources: Vec::new(),
        }
    }

    /// The same, with the health checker's addresses.
    pub fn with_health_sources(self, health_sources: Vec<IpAddr>) -> Steering {
        Steering { health_sources, ..self }
    }

    pub fn loops(&self) -> usize {
        self.loops
    }

    /// The loop that owns a session of the client at `client`.
    pub fn loop_for_client(&self, client: SocketAddr) -> usize {
        client_hash(client) % self.loops
    }

    /// The owner of `frame`, received on `port`. Checksums are not looked at here (the owner
    /// verifies them before it trusts anything).
    pub fn owner(&self, port: Port, frame: &[u8]) -> Owner {
        if self.loops == 1 {
            return Owner::Loop(0);
        }
        let Ok(parsed) = parse_frame_with(LinkType::Ethernet, frame, TransportChecksum::Offloaded) else { return Owner::Any };
        // (Shared neighbour information goes to every loop below, the checking one included.)
        if port == Port::Inside && crate::health::claims(&self.health_sources, self.snat_address, &parsed) == Claim::Only {
            return Owner::Loop(HEALTH_LOOP);
        }
        let (ip, transport) = match &parsed.network {
            NetworkPayload::Arp(_) if port == Port::Inside => return Owner::Every,
            NetworkPayload::Ip { ip, transport } => (ip, transport),
            _ => return Owner::Any,
        };
        match (port, transport) {
            (Port::Outside, Transport::Tcp(tcp)) if self.vips.contains(&ip.destination) => {
                Owner::Loop(self.loop_for_client(SocketAddr::new(ip.source, tcp.src_port)))
            }
            (Port::Inside, Transport::Tcp(tcp)) => {
                let destination = SocketAddr::new(ip.destination, tcp.dst_port);
                if Some(ip.destination) == self.snat_address {
                    Owner::Loop(snat_port_steers_to(tcp.dst_port, self.loops))
                } else if self.backends.contains(&SocketAddr::new(ip.source, tcp.src_port)) {
                    Owner::Loop(self.loop_for_client(destination))
                } else {
                    Owner::Any
                }
            }
            (_, Transport::Icmpv6(message)) if port == Port::Inside && matches!(message.msg_type, 135 | 136) => Owner::Every,
            (_, Transport::Icmpv4(message) | Transport::Icmpv6(message)) => {
                // An error about a segment the box sent: from a VIP to a client (outside), or
                // from a client or the SNAT address to a backend (inside).
                let Some(quoted) = message.embedded.filter(|quoted| quoted.protocol == IpProtocol::Tcp) else { return Owner::Any };
                let Some((source_port, destination_port)) = quoted.ports else { return Owner::Any };
                match port {
                    Port::Outside if self.vips.contains(&quoted.source) => {
                        Owner::Loop(self.loop_for_client(SocketAddr::new(quoted.destination, destination_port)))
                    }
                    Port::Inside if Some(quoted.source) == self.snat_address => Owner::Loop(snat_port_steers_to(source_port, self.loops)),
                    Port::Inside if self.backends.contains(&SocketAddr::new(quoted.destination, destination_port)) => {
                        Owner::Loop(self.loop_for_client(SocketAddr::new(quoted.source, source_port)))
                    }
                    _ => Owner::Any,
                }
            }
            _ => Owner::Any,
        }
    }
}

/// The loop a SNAT source port steers to: the box gives loop `i` of `n` the ports `p` with
/// `p % n == i`.
pub fn snat_port_steers_to(port: u16, loops: usize) -> usize {
    port as usize % loops.max(1)
}

/// A hash of a client endpoint, the same whichever port the frame came in on. Fibonacci
/// hashing over the address and port: cheap, and it spreads consecutive ports and addresses.
fn client_hash(client: SocketAddr) -> usize {
    let mut folded: u64 = client.port() as u64;
    match client.ip() {
        IpAddr::V4(v4) => folded ^= (u32::from(v4) as u64) << 16,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            folded ^= (bits as u64) ^ ((bits >> 64) as u64).rotate_left(16);
        }
    }
    (folded.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_frames::{ETH_IPV4_TCP_SYN, LAB_ARP_REPLY, LAB_ARP_REQUEST};

    // ETH_IPV4_TCP_SYN: 192.168.100.70:48216 -> 193.99.144.80:443.
    fn client() -> SocketAddr {
        "192.168.100.70:48216".parse().unwrap()
    }
    fn vip() -> IpAddr {
        "193.99.144.80".parse().unwrap()
    }

    /// The same frame with source and destination (addresses and ports) exchanged: what a
    /// backend at 193.99.144.80:443 sends a client in transparent mode.
    fn reversed(frame: &[u8]) -> Vec<u8> {
        let mut frame = frame.to_vec();
        let (source, destination) = (frame[26..30].to_vec(), frame[30..34].to_vec());
        frame[26..30].copy_from_slice(&destination);
        frame[30..34].copy_from_slice(&source);
        let (source_port, destination_port) = (frame[34..36].to_vec(), frame[36..38].to_vec());
        frame[34..36].copy_from_slice(&destination_port);
        frame[36..38].copy_from_slice(&source_port);
        frame
    }

    #[test]
    fn both_directions_of_a_transparent_session_steer_to_one_loop() {
        for loops in 2..9 {
            let steering = Steering::new(loops, [vip()], ["193.99.144.80:443".parse().unwrap()], None);
            let owner = steering.owner(Port::Outside, &ETH_IPV4_TCP_SYN);
            assert_eq!(owner, Owner::Loop(steering.loop_for_client(client())));
            assert_eq!(steering.owner(Port::Inside, &reversed(&ETH_IPV4_TCP_SYN)), owner, "{loops} loops");
        }
    }

    #[test]
    fn snat_frames_steer_by_the_port_the_box_chose() {
        let steering = Steering::new(4, [vip()], [], Some("192.168.100.70".parse().unwrap()));
        // Inside, to the SNAT address at port 48216: 48216 % 4 == 0.
        assert_eq!(steering.owner(Port::Inside, &reversed(&ETH_IPV4_TCP_SYN)), Owner::Loop(0));
        assert_eq!(snat_port_steers_to(48217, 4), 1);
    }

    #[test]
    fn frames_for_others_and_neighbour_information() {
        let steering = Steering::new(2, ["10.0.0.1".parse().unwrap()], [], None);
        assert_eq!(steering.owner(Port::Outside, &ETH_IPV4_TCP_SYN), Owner::Any, "not for a VIP: bridged by anyone");
        assert_eq!(steering.owner(Port::Inside, &reversed(&ETH_IPV4_TCP_SYN)), Owner::Any, "not from a backend");
        assert_eq!(steering.owner(Port::Inside, &LAB_ARP_REQUEST), Owner::Every);
        assert_eq!(steering.owner(Port::Outside, &LAB_ARP_REQUEST), Owner::Any);
        assert_eq!(steering.owner(Port::Outside, &[0u8; 10]), Owner::Any, "unparsed");
        assert_eq!(Steering::new(1, [vip()], [], None).owner(Port::Inside, &LAB_ARP_REQUEST), Owner::Loop(0));
    }

    #[test]
    fn the_health_checkers_frames_go_to_its_loop() {
        // LAB_ARP_REQUEST asks for 198.18.10.2 (from .1); LAB_ARP_REPLY answers .1.
        let (asked, asking): (IpAddr, IpAddr) = ("198.18.10.2".parse().unwrap(), "198.18.10.1".parse().unwrap());
        let own = Steering::new(4, [vip()], [], None).with_health_sources(vec![asked]);
        assert_eq!(own.owner(Port::Inside, &LAB_ARP_REQUEST), Owner::Loop(HEALTH_LOOP));
        assert_eq!(own.owner(Port::Outside, &LAB_ARP_REQUEST), Owner::Any, "only on the inside port");
        let answered = Steering::new(4, [vip()], [], None).with_health_sources(vec![asking]);
        assert_eq!(answered.owner(Port::Inside, &LAB_ARP_REPLY), Owner::Loop(HEALTH_LOOP));
        // The SNAT address as the source: the engine answers for it, and answers to it are
        // every loop's (the checking one gives them to its checker too).
        let shared = Steering::new(4, [vip()], [], Some(asked)).with_health_sources(vec![asked]);
        assert_eq!(shared.owner(Port::Inside, &LAB_ARP_REQUEST), Owner::Every);
        let shared = Steering::new(4, [vip()], [], Some(asking)).with_health_sources(vec![asking]);
        assert_eq!(shared.owner(Port::Inside, &LAB_ARP_REPLY), Owner::Every);
    }

    #[test]
    fn clients_spread_over_the_loops() {
        let steering = Steering::new(4, [vip()], [], None);
        let mut per_loop = [0usize; 4];
        for port in 40_000..44_000u16 {
            per_loop[steering.loop_for_client(SocketAddr::new("198.18.0.2".parse().unwrap(), port))] += 1;
        }
        for count in per_loop {
            assert!((800..1200).contains(&count), "{per_loop:?}");
        }
    }
}
