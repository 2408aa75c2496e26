//! The in-memory lab: a client host on the outside, backend hosts on the inside, a box in the
//! middle, and a deterministic driver that moves frames between them on a virtual clock.
//!
//! The box is anything that implements [`Middlebox`]: the session engine under test, or
//! [`reference::ReferenceProxy`], a socket-style TLS proxy built from the harness's own TCP model
//! and rustls, which the harness checks itself against.

pub mod frames;
pub mod golden;
pub mod hosts;
pub mod reference;
pub mod tcp;
pub mod tls;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;

use cutls_dataplane::wire::{parse_frame, EthernetAddress, LinkType};

use frames::summarize;
use hosts::{BackendHost, ClientHost};

pub const MS: u64 = 1_000_000;

/// Kinds of protocol violation. Each violation's text starts with `[kind]`, so that a test can
/// step around a known engine bug that another test is about (`KNOWN_ENGINE_BUGS` in
/// engine_memory.rs).
pub mod kind {
    /// A frame above the 1500-byte MTU, or a segment above the MSS the receiver advertised.
    pub const MTU: &str = "mtu";
    /// A timestamp more than one tick older than the last: Linux drops the segment (PAWS).
    pub const PAWS: &str = "paws";
    /// A RST not at rcv_nxt: Linux answers with a challenge ACK and keeps the connection.
    pub const RST_SEQ: &str = "rst-seq";
    /// A retransmission timeout on a lossless wire: something was dropped or not answered.
    pub const RTO: &str = "rto";
    /// A backend's segment with payload (plaintext) on the outside port.
    pub const LEAK: &str = "leak";
    /// Anything else.
    pub const TCP: &str = "tcp";
}

/// xorshift64*: small, seeded, good enough for ISNs and impairments.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl golden::Draw for Rng {
    fn draw(&mut self) -> u64 {
        self.next()
    }
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, so that nearby seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// True with probability `ppm` per million.
    pub fn chance(&mut self, ppm: u32) -> bool {
        ppm > 0 && (self.next() % 1_000_000) < u64::from(ppm)
    }
}

/// Deterministic content: an HTTP-like head, then bytes from the seed.
pub fn content(head: &str, len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = head.as_bytes().to_vec();
    bytes.truncate(len);
    let mut rng = Rng::new(seed);
    while bytes.len() < len {
        let word = rng.next().to_le_bytes();
        let take = (len - bytes.len()).min(8);
        bytes.extend_from_slice(&word[..take]);
    }
    bytes
}

/// The box's ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Outside,
    Inside,
}

/// Frames a box transmits, per port.
#[derive(Default)]
pub struct Emitted {
    pub outside: Vec<Vec<u8>>,
    pub inside: Vec<Vec<u8>>,
}

/// What sits between the two ports.
pub trait Middlebox {
    fn frame(&mut self, now_ns: u64, side: Side, frame: &[u8], out: &mut Emitted);
    /// Called every simulated millisecond.
    fn tick(&mut self, now_ns: u64, out: &mut Emitted);
    fn live_sessions(&self) -> usize;
    fn report(&self) -> String;
}

/// The wire between the hosts and the box: a fixed latency per hop and, for TCP segments only
/// (ARP and NDP are left alone so that resolution stays simple), seeded loss and reordering.
#[derive(Clone, Copy, Debug)]
pub struct WireConfig {
    /// One way, client <-> box.
    pub client_latency_ns: u64,
    /// One way, box <-> backend.
    pub backend_latency_ns: u64,
    pub loss_ppm: u32,
    /// A reordered segment is held back by a few latencies, so later ones overtake it.
    pub reorder_ppm: u32,
    /// TCP segments toward the box (from the client and from the backends) that get one bit
    /// flipped on the way, the checksum left as it was (a bad cable, a faulty NIC): in the
    /// payload, or in the window field of a segment without one. The hosts are not corrupted
    /// toward: they take a bad checksum from the box as a violation.
    pub corrupt_ppm: u32,
    pub seed: u64,
    /// A router between the client and the box with this IPv4 MTU: larger frames toward the
    /// client are dropped and answered with ICMP "fragmentation needed" (RFC 1191).
    pub client_path_mtu: Option<u16>,
}

impl Default for WireConfig {
    /// As deployed: clients across a WAN-ish path (2 ms round trip), backends on the LAN next
    /// to the box (100 us round trip), so the backend connection is up well before the client's
    /// first application data arrives.
    fn default() -> Self {
        WireConfig {
            client_latency_ns: 1_000_000,
            backend_latency_ns: 50_000,
            loss_ppm: 0,
            reorder_ppm: 0,
            corrupt_ppm: 0,
            seed: 1,
            client_path_mtu: None,
        }
    }
}

impl WireConfig {
    /// Both sides equally far: the client's first data can reach the box before the backend
    /// connection is up.
    pub fn equidistant() -> WireConfig {
        WireConfig { client_latency_ns: 20_000, backend_latency_ns: 20_000, ..WireConfig::default() }
    }

    pub fn lossless(&self) -> bool {
        self.loss_ppm == 0 && self.reorder_ppm == 0 && self.corrupt_ppm == 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    ClientToBox,
    BoxToClient,
    BackendToBox,
    BoxToBackend,
}

impl Hop {
    fn label(self) -> &'static str {
        match self {
            Hop::ClientToBox => "client -> box",
            Hop::BoxToClient => "box -> client",
            Hop::BackendToBox => "backend -> box",
            Hop::BoxToBackend => "box -> backend",
        }
    }
}

/// The first and the last frames that crossed the wire, for failure reports.
/// `ENGINE_MEMORY_TRACE=1` prints every frame as it goes (run the test with `--nocapture`).
pub struct Trace {
    first: Vec<String>,
    last: VecDeque<String>,
    skipped: u64,
    live: bool,
}

const TRACE_FIRST: usize = 40;
const TRACE_LAST: usize = 80;

impl Trace {
    fn new() -> Trace {
        Trace {
            first: Vec::new(),
            last: VecDeque::new(),
            skipped: 0,
            live: std::env::var_os("ENGINE_MEMORY_TRACE").is_some(),
        }
    }

    fn record(&mut self, now: u64, what: &str, frame: &[u8]) {
        let line = format!("{:>12.3}ms {what:>16}  {}", now as f64 / 1e6, summarize(frame));
        if self.live {
            eprintln!("{line}");
        }
        if self.first.len() < TRACE_FIRST {
            self.first.push(line);
            return;
        }
        if self.last.len() == TRACE_LAST {
            self.last.pop_front();
            self.skipped += 1;
        }
        self.last.push_back(line);
    }

    pub fn excerpt(&self) -> String {
        let mut lines = self.first.clone();
        if self.skipped > 0 {
            lines.push(format!("    ... {} frames ...", self.skipped));
        }
        lines.extend(self.last.iter().cloned());
        lines.join("\n")
    }
}

/// A client, the box, two or more backends, and the wire between them.
pub struct Lab<M: Middlebox> {
    pub boxed: M,
    pub now: u64,
    next_tick: u64,
    pub client: ClientHost,
    pub backends: BackendHost,
    in_flight: BTreeMap<(u64, u64), (Hop, Vec<u8>)>,
    order: u64,
    pub wire: WireConfig,
    rng: Rng,
    pub trace: Trace,
    pub steps: u64,
    pub segments_dropped: u64,
    pub segments_reordered: u64,
    /// Frames the path MTU router dropped (and answered).
    pub path_mtu_drops: u64,
    /// Segments corrupted on the way to the box (`WireConfig::corrupt_ppm` and `corrupt_once`).
    pub segments_corrupted: u64,
    /// TCP segments on these hops, counted from 0, get one bit flipped as `corrupt_ppm` does.
    pub corrupt_once: Vec<(Hop, u64)>,
    tcp_segments_sent: [u64; 4],
    /// Backend payload seen on the outside wire (checked for every frame, in every test).
    pub leaks: Vec<String>,
    /// When set, every frame delivered is kept in `captured` (time, hop, bytes).
    pub capturing: bool,
    pub captured: Vec<(u64, Hop, Vec<u8>)>,
    /// When set, the client's data segments are kept in `diverted` instead of sent, for tests
    /// that deliver the client's bytes cut and ordered by hand.
    pub divert_client_data: bool,
    pub diverted: Vec<Vec<u8>>,
    /// When set, every frame between the box and the backends is lost (a link or a host gone).
    pub backend_link_down: bool,
}

/// The router of [`WireConfig::client_path_mtu`].
pub const PATH_MTU_ROUTER: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 18, 0, 1);

/// A bound on driver steps for one `run_until`, far above what any test needs.
const MAX_STEPS: u64 = 5_000_000;

impl<M: Middlebox> Lab<M> {
    pub fn new(boxed: M, mut client: ClientHost, mut backends: BackendHost, wire: WireConfig) -> Lab<M> {
        let strict = wire.reorder_ppm == 0;
        client.tcp_config.strict_timestamps = strict;
        backends.tcp_config.strict_timestamps = strict;
        Lab {
            boxed,
            now: 0,
            next_tick: 0,
            client,
            backends,
            in_flight: BTreeMap::new(),
            order: 0,
            rng: Rng::new(wire.seed ^ 0x3172e),
            wire,
            trace: Trace::new(),
            steps: 0,
            segments_dropped: 0,
            segments_reordered: 0,
            leaks: Vec::new(),
            path_mtu_drops: 0,
            segments_corrupted: 0,
            corrupt_once: Vec::new(),
            tcp_segments_sent: [0; 4],
            capturing: false,
            captured: Vec::new(),
            divert_client_data: false,
            backend_link_down: false,
            diverted: Vec::new(),
        }
    }

    /// Runs until `done` holds, or panics after `limit_ns` of virtual time with what each side
    /// is waiting for.
    pub fn run_until(&mut self, what: &str, limit_ns: u64, done: impl Fn(&Lab<M>) -> bool) {
        let deadline = self.now + limit_ns;
        let first_step = self.steps;
        while !done(self) {
            if self.now > deadline || self.steps - first_step > MAX_STEPS {
                panic!("{}", self.stuck(what));
            }
            self.step();
        }
    }

    /// Lets `duration_ns` of virtual time pass, whatever happens.
    pub fn run_for(&mut self, duration_ns: u64) {
        let end = self.now + duration_ns;
        while self.now < end {
            self.step();
        }
    }

    /// One instant: deliver what is due, run the box's timer on millisecond boundaries, let the
    /// hosts react, put what everybody sent on the wire, and move the clock to the next event.
    pub fn step(&mut self) {
        self.steps += 1;
        let now = self.now;
        let mut emitted = Emitted::default();
        while let Some(entry) = self.in_flight.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (hop, frame) = entry.remove();
            self.trace.record(now, hop.label(), &frame);
            if self.capturing {
                self.captured.push((now, hop, frame.clone()));
            }
            if hop == Hop::BoxToClient {
                self.check_for_leak(now, &frame);
            }
            match hop {
                Hop::ClientToBox => self.boxed.frame(now, Side::Outside, &frame, &mut emitted),
                Hop::BackendToBox => self.boxed.frame(now, Side::Inside, &frame, &mut emitted),
                Hop::BoxToClient => self.client.receive(now, &frame),
                Hop::BoxToBackend => self.backends.receive(now, &frame),
            }
        }
        if now >= self.next_tick {
            self.boxed.tick(now, &mut emitted);
            self.next_tick = (now / MS + 1) * MS;
        }
        let mut client_tx = Vec::new();
        self.client.poll(now, &mut client_tx);
        let mut backend_tx = Vec::new();
        self.backends.poll(now, &mut backend_tx);
        for frame in emitted.outside {
            self.send(Hop::BoxToClient, frame);
        }
        for frame in emitted.inside {
            self.send(Hop::BoxToBackend, frame);
        }
        for frame in client_tx {
            self.send(Hop::ClientToBox, frame);
        }
        for frame in backend_tx {
            self.send(Hop::BackendToBox, frame);
        }
        let next_frame = self.in_flight.first_key_value().map(|((at, _), _)| *at);
        self.now = next_frame.map_or(self.next_tick, |at| at.min(self.next_tick)).max(now + 1);
    }

    /// Puts a frame a test made on the wire (a router's ICMP error, say).
    pub fn inject(&mut self, hop: Hop, frame: Vec<u8>) {
        // Never diverted: a test diverts the client's own frames to inject its own.
        let divert = std::mem::replace(&mut self.divert_client_data, false);
        self.send(hop, frame);
        self.divert_client_data = divert;
    }

    fn send(&mut self, hop: Hop, frame: Vec<u8>) {
        let latency = match hop {
            Hop::ClientToBox | Hop::BoxToClient => self.wire.client_latency_ns,
            Hop::BackendToBox | Hop::BoxToBackend => self.wire.backend_latency_ns,
        };
        let mut at = self.now + latency;
        if let (Hop::BoxToClient, Some(mtu)) = (hop, self.wire.client_path_mtu) {
            if frame.len() > 14 + mtu as usize && frame.get(12..14) == Some(&[0x08, 0x00]) {
                self.path_mtu_drops += 1;
                self.trace.record(self.now, "TOO BIG box -> client", &frame);
                let message = frames::fragmentation_needed(&frame, mtu, PATH_MTU_ROUTER);
                self.in_flight.insert((self.now + latency / 2, self.order), (Hop::ClientToBox, message));
                self.order += 1;
                return;
            }
        }
        // Some(whether it carries data) for a TCP segment.
        let tcp_data = parse_frame(LinkType::Ethernet, &frame).ok().and_then(|parsed| parsed.tcp().map(|tcp| !tcp.payload.is_empty()));
        let is_tcp = tcp_data.is_some();
        if hop == Hop::ClientToBox && self.divert_client_data && tcp_data == Some(true) {
            self.diverted.push(frame);
            return;
        }
        if self.backend_link_down && matches!(hop, Hop::BoxToBackend | Hop::BackendToBox) {
            self.trace.record(self.now, &format!("LINK DOWN {}", hop.label()), &frame);
            return;
        }
        if is_tcp && self.rng.chance(self.wire.loss_ppm) {
            self.segments_dropped += 1;
            self.trace.record(self.now, &format!("LOST {}", hop.label()), &frame);
            return;
        }
        if is_tcp && self.rng.chance(self.wire.reorder_ppm) {
            self.segments_reordered += 1;
            at += latency * (2 + self.rng.next() % 4);
        }
        let mut frame = frame;
        if is_tcp {
            let index = self.tcp_segments_sent[hop as usize];
            self.tcp_segments_sent[hop as usize] += 1;
            let toward_box = matches!(hop, Hop::ClientToBox | Hop::BackendToBox);
            let planned = self.corrupt_once.contains(&(hop, index));
            if planned || toward_box && self.rng.chance(self.wire.corrupt_ppm) {
                let bit = self.rng.next();
                if frames::flip_tcp_bit(&mut frame, bit) {
                    self.segments_corrupted += 1;
                    self.trace.record(self.now, &format!("CORRUPTED {}", hop.label()), &frame);
                }
            }
        }
        self.order += 1;
        self.in_flight.insert((at, self.order), (hop, frame));
    }

    /// The backends' segments carry plaintext: none may ever reach the outside port as it is
    /// (for example bridged because the box no longer knows its session).
    fn check_for_leak(&mut self, now: u64, frame: &[u8]) {
        let Ok(parsed) = parse_frame(LinkType::Ethernet, frame) else { return };
        let (Some(ip), Some(tcp)) = (parsed.ip(), parsed.tcp()) else { return };
        let source = SocketAddr::new(ip.source, tcp.src_port);
        if !tcp.payload.is_empty() && self.backends.servers.iter().any(|(server, _)| *server == source) {
            self.leaks.push(format!(
                "[{}] t={:.3}ms backend plaintext on the outside port: {}",
                kind::LEAK,
                now as f64 / 1e6,
                summarize(frame)
            ));
        }
    }

    /// Lets `extra_ns` of virtual time pass (timers, closing handshakes) until the box holds no
    /// session, and returns false if some are still there.
    pub fn settle(&mut self, extra_ns: u64) -> bool {
        let end = self.now + extra_ns;
        while self.now < end && (self.boxed.live_sessions() > 0 || !self.in_flight.is_empty()) {
            self.step();
        }
        self.boxed.live_sessions() == 0
    }

    /// Everything the harness knows, for a failure message.
    pub fn stuck(&self, what: &str) -> String {
        format!(
            "waiting for: {what}\nvirtual time {:.3} ms after {} steps; {} frames in flight; {} TCP segments dropped, {} reordered\n{}\n{}\nbox: {}\nclient stray frames: {:?}\nbackend stray frames: {:?}\nviolations: {:#?}\nremarks: {:#?}\nframes on the wire (first and last):\n{}",
            self.now as f64 / 1e6,
            self.steps,
            self.in_flight.len(),
            self.segments_dropped,
            self.segments_reordered,
            self.client.describe(),
            self.backends.describe(),
            self.boxed.report(),
            last(&self.client.stray, 5),
            last(&self.backends.stray, 5),
            self.violations(),
            self.remarks(),
            self.trace.excerpt()
        )
    }

    pub fn violations(&self) -> Vec<String> {
        let mut all = self.client.all_violations();
        all.extend(self.backends.all_violations());
        all.extend(self.leaks.iter().cloned());
        all
    }

    /// Violations of any kind but `tolerated`.
    pub fn violations_except(&self, tolerated: &[&str]) -> Vec<String> {
        self.violations()
            .into_iter()
            .filter(|v| !tolerated.iter().any(|kind| v.starts_with(&format!("[{kind}]"))))
            .collect()
    }

    /// Violations of one kind.
    pub fn violations_of(&self, kind: &str) -> Vec<String> {
        self.violations().into_iter().filter(|v| v.starts_with(&format!("[{kind}]"))).collect()
    }

    pub fn remarks(&self) -> Vec<String> {
        let mut all = self.client.all_remarks();
        all.extend(self.backends.all_remarks());
        all
    }
}

fn last(lines: &[String], count: usize) -> &[String] {
    &lines[lines.len().saturating_sub(count)..]
}

/// Addresses of one lab: the client, the VIP and the backends, for one IP family.
#[derive(Clone, Debug)]
pub struct Addresses {
    pub client_mac: EthernetAddress,
    pub client_ip: std::net::IpAddr,
    pub vip: SocketAddr,
    pub outside_mac: EthernetAddress,
    pub inside_mac: EthernetAddress,
    pub backends: Vec<(SocketAddr, EthernetAddress)>,
}

impl Addresses {
    pub fn ipv4() -> Addresses {
        Addresses {
            client_mac: EthernetAddress([0x02, 0, 0, 0, 0x00, 0x10]),
            client_ip: "198.18.0.10".parse().expect("ip"),
            vip: "198.18.0.100:443".parse().expect("vip"),
            outside_mac: EthernetAddress([0x02, 0, 0, 0, 0x00, 0xfe]),
            inside_mac: EthernetAddress([0x02, 0, 0, 0, 0x01, 0xfe]),
            backends: vec![
                ("198.18.1.10:8080".parse().expect("backend"), EthernetAddress([0x02, 0, 0, 0, 0x01, 0x10])),
                ("198.18.1.11:8080".parse().expect("backend"), EthernetAddress([0x02, 0, 0, 0, 0x01, 0x11])),
            ],
        }
    }

    pub fn ipv6() -> Addresses {
        Addresses {
            client_ip: "2001:db8::10".parse().expect("ip"),
            vip: "[2001:db8::100]:443".parse().expect("vip"),
            backends: vec![
                ("[2001:db8:1::10]:8080".parse().expect("backend"), EthernetAddress([0x02, 0, 0, 0, 0x01, 0x10])),
                ("[2001:db8:1::11]:8080".parse().expect("backend"), EthernetAddress([0x02, 0, 0, 0, 0x01, 0x11])),
            ],
            ..Addresses::ipv4()
        }
    }
}
