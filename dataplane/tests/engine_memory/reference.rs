//! A reference box for checking the harness itself: a classic socket-style TLS proxy (two TCP
//! connections from the harness's own model, rustls in between, everything buffered) with the
//! engine's outward behaviour: it answers ARP/NDP for the VIP, opens the backend connection
//! transparently (client address and port) when the client's SYN arrives, carries FIN as
//! close_notify + FIN and resets both sides on a TLS error. It reduces the backend MSS the
//! way the engine should. If a scenario passes against this box and fails against the
//! engine, the difference is the engine's.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use cutls_dataplane::wire::{
    parse_frame, ArpOperation, EthernetAddress, LinkType, NetworkPayload, TcpFlags, Transport,
};
use rustls::{ServerConfig, ServerConnection};

use super::frames::{
    arp_frame, macs, ndp_fields, ndp_frame, solicited_node, tcp_frame, ICMPV6_NEIGHBOR_ADVERTISEMENT,
    ICMPV6_NEIGHBOR_SOLICITATION,
};
use super::tcp::{State, Tcp, TcpConfig};
use super::{Emitted, Middlebox, Rng, Side, MS};

pub struct ReferenceProxy {
    vip: SocketAddr,
    outside_mac: EthernetAddress,
    inside_mac: EthernetAddress,
    backends: Vec<SocketAddr>,
    next_backend: usize,
    tls: Arc<ServerConfig>,
    sessions: Vec<ProxySession>,
    backend_macs: HashMap<IpAddr, EthernetAddress>,
    rng: Rng,
    pub sessions_started: u64,
    pub frames_bridged: u64,
}

struct ProxySession {
    client_mac: EthernetAddress,
    front: Tcp,
    back: Tcp,
    tls: ServerConnection,
    resolution_sent_at: Option<u64>,
    close_notify_sent: bool,
    failed: bool,
}

impl ReferenceProxy {
    pub fn new(
        vip: SocketAddr,
        outside_mac: EthernetAddress,
        inside_mac: EthernetAddress,
        backends: Vec<SocketAddr>,
        tls: Arc<ServerConfig>,
        seed: u64,
    ) -> ReferenceProxy {
        ReferenceProxy {
            vip,
            outside_mac,
            inside_mac,
            backends,
            next_backend: 0,
            tls,
            sessions: Vec::new(),
            backend_macs: HashMap::new(),
            rng: Rng::new(seed),
            sessions_started: 0,
            frames_bridged: 0,
        }
    }

    fn bridge(&mut self, side: Side, frame: &[u8], out: &mut Emitted) {
        self.frames_bridged += 1;
        match side {
            Side::Outside => out.inside.push(frame.to_vec()),
            Side::Inside => out.outside.push(frame.to_vec()),
        }
    }

    fn outside(&mut self, now: u64, frame: &[u8], out: &mut Emitted) {
        let Ok(parsed) = parse_frame(LinkType::Ethernet, frame) else { return self.bridge(Side::Outside, frame, out) };
        let (source_mac, _) = macs(&parsed.link);
        match &parsed.network {
            NetworkPayload::Arp(arp)
                if arp.operation == ArpOperation::Request && IpAddr::V4(arp.target_protocol_addr) == self.vip.ip() =>
            {
                out.outside.push(arp_frame(
                    ArpOperation::Reply,
                    (self.outside_mac, arp.target_protocol_addr),
                    (arp.sender_hardware_addr, arp.sender_protocol_addr),
                    arp.sender_hardware_addr,
                ));
            }
            NetworkPayload::Ip { ip, transport: Transport::Icmpv6(message) } => match (ndp_fields(message.message), ip.source) {
                (Some((ICMPV6_NEIGHBOR_SOLICITATION, target, _)), IpAddr::V6(asker)) if IpAddr::V6(target) == self.vip.ip() => {
                    out.outside.push(ndp_frame(true, (self.outside_mac, source_mac), target, asker, target));
                }
                _ => self.bridge(Side::Outside, frame, out),
            },
            NetworkPayload::Ip { ip, transport: Transport::Tcp(segment) }
                if SocketAddr::new(ip.destination, segment.dst_port) == self.vip =>
            {
                let client = SocketAddr::new(ip.source, segment.src_port);
                if let Some(session) = self.sessions.iter_mut().find(|s| s.front.remote == client) {
                    session.front.on_segment(now, segment);
                } else if segment.flags.contains(TcpFlags::SYN) && !segment.flags.contains(TcpFlags::ACK) {
                    self.sessions_started += 1;
                    let backend = self.backends[self.next_backend % self.backends.len()];
                    self.next_backend += 1;
                    let config = TcpConfig::linux(client.ip());
                    let front = Tcp::accept(config, self.vip, client, self.rng.next() as u32, self.rng.next() as u32, segment);
                    // Transparent: the client's own address and port toward the backend, with
                    // the MSS reduced by the largest record overhead (TLS 1.2 GCM: 29 bytes).
                    let back_config = TcpConfig { mss: config.mss - 29, ..config };
                    let back = Tcp::connect(back_config, client, backend, self.rng.next() as u32, self.rng.next() as u32);
                    let mut tls = ServerConnection::new(self.tls.clone()).expect("server connection");
                    tls.set_buffer_limit(None);
                    self.sessions.push(ProxySession {
                        client_mac: source_mac,
                        front,
                        back,
                        tls,
                        resolution_sent_at: None,
                        close_notify_sent: false,
                        failed: false,
                    });
                }
            }
            _ => self.bridge(Side::Outside, frame, out),
        }
    }

    fn inside(&mut self, now: u64, frame: &[u8], out: &mut Emitted) {
        let Ok(parsed) = parse_frame(LinkType::Ethernet, frame) else { return self.bridge(Side::Inside, frame, out) };
        match &parsed.network {
            NetworkPayload::Arp(arp) if arp.operation == ArpOperation::Reply => {
                self.backend_macs.insert(IpAddr::V4(arp.sender_protocol_addr), arp.sender_hardware_addr);
            }
            NetworkPayload::Ip { transport: Transport::Icmpv6(message), .. }
                if matches!(ndp_fields(message.message), Some((ICMPV6_NEIGHBOR_ADVERTISEMENT, _, Some(_)))) =>
            {
                if let Some((_, target, Some(mac))) = ndp_fields(message.message) {
                    self.backend_macs.insert(IpAddr::V6(target), mac);
                }
            }
            NetworkPayload::Ip { ip, transport: Transport::Tcp(segment) } => {
                let source = SocketAddr::new(ip.source, segment.src_port);
                let destination = SocketAddr::new(ip.destination, segment.dst_port);
                match self.sessions.iter_mut().find(|s| s.back.remote == source && s.back.local == destination) {
                    Some(session) => session.back.on_segment(now, segment),
                    None => self.bridge(Side::Inside, frame, out),
                }
            }
            _ => self.bridge(Side::Inside, frame, out),
        }
    }

    fn pump(&mut self, now: u64, out: &mut Emitted) {
        let mut segments = Vec::new();
        for session in &mut self.sessions {
            session.pump();
            session.front.output(now, &mut segments);
            for segment in segments.drain(..) {
                out.outside.push(tcp_frame(self.outside_mac, session.client_mac, self.vip, session.front.remote, &segment));
            }
            let backend = session.back.remote;
            match self.backend_macs.get(&backend.ip()) {
                Some(&mac) => {
                    session.back.output(now, &mut segments);
                    for segment in segments.drain(..) {
                        out.inside.push(tcp_frame(self.inside_mac, mac, session.back.local, backend, &segment));
                    }
                }
                None => {
                    if session.resolution_sent_at.is_none_or(|at| now >= at + 1000 * MS) {
                        session.resolution_sent_at = Some(now);
                        out.inside.push(match (session.back.local.ip(), backend.ip()) {
                            (IpAddr::V4(client), IpAddr::V4(target)) => arp_frame(
                                ArpOperation::Request,
                                (self.inside_mac, client),
                                (EthernetAddress::default(), target),
                                EthernetAddress::BROADCAST,
                            ),
                            (IpAddr::V6(client), IpAddr::V6(target)) => {
                                let (group, group_mac) = solicited_node(target);
                                ndp_frame(false, (self.inside_mac, group_mac), client, group, target)
                            }
                            _ => panic!("mixed families"),
                        });
                    }
                }
            }
        }
        self.sessions.retain(|s| !(s.front.is_finished() && s.back.is_finished()));
    }
}

impl ProxySession {
    fn pump(&mut self) {
        if self.front.state == State::Reset || self.back.state == State::Reset {
            self.front.abort();
            self.back.abort();
            return;
        }
        if self.failed {
            return;
        }
        let incoming = self.front.readable().to_vec();
        self.front.consume(incoming.len());
        let mut slice = &incoming[..];
        while !slice.is_empty() {
            // Ok(0): close_notify seen, rustls takes no more. An error: its buffer is full,
            // drained just below.
            if let Ok(0) = self.tls.read_tls(&mut slice) {
                break;
            }
            if self.tls.process_new_packets().is_err() {
                // The alert goes to the client (then FIN); the backend is reset.
                self.failed = true;
                self.flush_to_client();
                self.front.close();
                self.back.abort();
                return;
            }
            self.forward_to_backend();
        }
        if self.front.fin_received() && !self.back.fin_queued() {
            self.back.close();
        }
        let response = self.back.readable().to_vec();
        self.back.consume(response.len());
        if !response.is_empty() {
            self.tls.writer().write_all(&response).expect("unbounded rustls buffer");
        }
        if self.back.fin_received() && !self.close_notify_sent {
            self.tls.send_close_notify();
            self.close_notify_sent = true;
        }
        self.flush_to_client();
        if self.close_notify_sent && !self.front.fin_queued() {
            self.front.close();
        }
    }

    fn forward_to_backend(&mut self) {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            match self.tls.reader().read(&mut buffer) {
                Ok(0) => {
                    if !self.back.fin_queued() {
                        self.back.close();
                    }
                    return;
                }
                Ok(len) => self.back.write(&buffer[..len]),
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                Err(_) => return,
            }
        }
    }

    fn flush_to_client(&mut self) {
        let mut bytes = Vec::new();
        while self.tls.wants_write() {
            if self.tls.write_tls(&mut bytes).is_err() {
                break;
            }
        }
        if !bytes.is_empty() && !self.front.fin_queued() && self.front.state != State::Reset {
            self.front.write(&bytes);
        }
    }
}

impl Middlebox for ReferenceProxy {
    fn frame(&mut self, now_ns: u64, side: Side, frame: &[u8], out: &mut Emitted) {
        match side {
            Side::Outside => self.outside(now_ns, frame, out),
            Side::Inside => self.inside(now_ns, frame, out),
        }
        self.pump(now_ns, out);
    }

    fn tick(&mut self, now_ns: u64, out: &mut Emitted) {
        for session in &mut self.sessions {
            session.front.poll(now_ns);
            session.back.poll(now_ns);
        }
        self.pump(now_ns, out);
    }

    fn live_sessions(&self) -> usize {
        self.sessions.len()
    }

    fn report(&self) -> String {
        let mut text = format!(
            "reference proxy: {} sessions live, {} started, {} frames bridged",
            self.sessions.len(),
            self.sessions_started,
            self.frames_bridged
        );
        for session in &self.sessions {
            text += &format!("\n  front {}\n  back  {}", session.front.describe(), session.back.describe());
        }
        text
    }
}
