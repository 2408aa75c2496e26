//! The session engine: TLS termination at the packet level.
//!
//! [`Engine::handle_frame`] takes each frame a port received and decides: a frame for a VIP
//! listener or for one of its sessions is consumed and answered; ARP and NDP for a VIP are
//! answered on the outside port; everything else is bridged unchanged to the other port. The
//! engine is deterministic: time comes in as `now_ns`, randomness from a seed, and frames to
//! send go to an [`Output`] the caller drains, so a pcap replay gives the same frames every run.
//!
//! A session's life (DESIGN.md): the engine answers the client's SYN, runs rustls over the
//! client's in-order handshake bytes, chooses a backend when the ClientHello has been read and
//! replays the client's SYN to it (transparent mode: the client's own address), takes the keys
//! out of rustls when the handshake is done, and from then on splices segment by segment
//! ([`session`]).
//!
//! Transparent mode (the backend sees the client's address and must route back through the box)
//! and SNAT mode (the backend sees the box's address and a port it owns; the box answers ARP/NDP
//! for that address on the inside port).
//!
//! VLAN tags: a session's frames keep the tags of the client's frames, toward the client and
//! toward the backend (a bump in the wire on a trunk carries the same VLAN on both sides).
//!
//! Not supported yet (see the README): passthrough pools, ICMP relaying for sessions.

#[macro_use]
mod counters;
mod acceptance;
pub mod balance;
mod client_hello;
mod cookie;
mod custody;
pub mod emit;
pub mod events;
pub mod handover;
pub mod handshake;
mod neighbours;
mod post_handshake;
mod reorder;
mod sender;
pub use balance::{BackendOptions, Balance, Balancing};
pub use events::{Event, Phase, Progress, TlsFacts};
pub use sender::CongestionControl;
mod session;
mod timers;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use cutls_crypto::ReleaseMode;

use crate::io::RxChecksum;
use crate::health::Claim;
use crate::wire::{
    parse_frame_with, ArpOperation, EthernetAddress, LinkType, NetworkPayload, TcpFlags, TcpOptions, TcpTimestamp, Transport,
    TransportChecksum,
};
use emit::Link;
use handover::SecretLog;
use neighbours::Neighbours;
use session::{BackendSide, ClientSyn, Session, SessionEvent};
use timers::TimerQueue;

/// The box's two ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Port {
    /// Toward the router and the clients.
    Outside,
    /// Toward the server VLAN.
    Inside,
}

/// A listener as the dataplane needs it: values made by the control plane.
#[derive(Clone)]
pub struct ListenerSetup {
    pub vip: SocketAddr,
    /// Must have `enable_secret_extraction` and `key_log` = `secrets`. `None`: a listener of
    /// a passthrough pool, every connection spliced as plain TCP to `backends`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub secrets: Arc<SecretLog>,
    /// Chosen round robin.
    pub backends: Vec<SocketAddr>,
    pub mode: ReleaseMode,
    /// Where connections that are not for this listener's certificates go as plain TCP.
    pub passthrough: Option<Arc<PassthroughRoute>>,
}

/// A listener's passthrough pool, and what stays with the listener.
#[derive(Clone, Debug)]
pub struct PassthroughRoute {
    /// Chosen round robin.
    pub backends: Vec<SocketAddr>,
    /// The names the listener's certificates cover (`*.example.test` covers one label):
    /// ClientHellos with another SNI go to `backends`.
    pub certificate_names: Vec<String>,
    /// ClientHellos without SNI stay (with the default certificate) rather than pass.
    pub default_certificate: bool,
}

pub struct EngineConfig {
    pub listeners: Vec<ListenerSetup>,
    /// SNAT mode: the box's inside address that backends see (with ports the box chooses);
    /// `None` is transparent mode (backends see the client's address).
    pub snat_address: Option<IpAddr>,
    /// The MAC the box answers ARP/NDP for VIPs with, on the outside port.
    pub outside_mac: EthernetAddress,
    pub inside_mac: EthernetAddress,
    pub idle_timeout_ns: u64,
    /// How long a TLS handshake may take, from the client's SYN to rustls' last message (a
    /// slowloris client trickling its ClientHello is reset then).
    pub handshake_timeout_ns: u64,
    /// How long a session that has begun to close (one side's FIN or close_notify carried to
    /// the other) may stay idle before both sides are reset: the box's FIN-WAIT-2 and
    /// CLOSE-WAIT bound (Linux's `tcp_fin_timeout` is 60 s).
    pub close_timeout_ns: u64,
    /// Take the frame I/O backend's receive checksum verdict ([`RxChecksum`]) where it has one,
    /// instead of computing the TCP/ICMP checksum again. Frames without a verdict are always
    /// verified; the IPv4 header checksum always is.
    pub trust_rx_checksum: bool,
    /// The secrets behind ISNs and SYN cookies.
    pub keys: EngineKeys,
    /// Live sessions above which SYNs are answered with SYN cookies and no state.
    pub syn_cookies_after: usize,
    /// Live sessions at most; a connection past it is refused with a RST.
    pub max_sessions: usize,
    /// Live sessions at most from one client address (0: no limit).
    pub max_sessions_per_client: usize,
    /// Threads that run handshakes off the poll loop; 0 runs them inline (deterministic:
    /// tests, replays).
    pub handshake_threads: usize,
    /// Rung by the handshake workers when a result is ready (the poll loop sleeps on it).
    pub handshake_doorbell: Option<Arc<crate::io::doorbell::Doorbell>>,
    /// This engine's poll loop among all of them ([`crate::steer`]): SNAT source ports are
    /// chosen so that the backend's answers steer back here.
    pub loop_share: LoopShare,
    /// The congestion control of the box's sender toward clients.
    pub congestion: CongestionControl,
    /// How each listener's pools choose backends, and each backend's weight and limit.
    pub balancing: Balancing,
    /// Queue [`Event`]s for the control plane ([`Engine::take_events`]); off in tests and
    /// replays that do not read them.
    pub events: bool,
    /// The backends this engine checks ([`crate::health`]): one loop of the box checks them
    /// all and the control plane tells the others.
    pub health: Option<crate::health::HealthSetup>,
}

/// A new configuration for a running engine ([`Engine::reload`]): what can change without
/// dropping a session. Listeners are in slot order: a VIP keeps its slot across reloads (its
/// live sessions name it by index), new VIPs take new slots, and a VIP no longer configured
/// keeps its slot `retired` (no new connections; its sessions go on).
#[derive(Clone)]
pub struct EngineReload {
    pub listeners: Vec<ListenerSetup>,
    /// Per slot: the VIP is gone from the configuration.
    pub retired: Vec<bool>,
    /// Per slot, like the listeners.
    pub balancing: Balancing,
    /// The checks (the checking loop runs them; every loop forgets what it was told of
    /// backends no longer checked).
    pub health: Option<crate::health::HealthSetup>,
    pub idle_timeout_ns: u64,
    pub handshake_timeout_ns: u64,
    pub close_timeout_ns: u64,
    pub syn_cookies_after: usize,
    pub max_sessions: usize,
    pub max_sessions_per_client: usize,
}

impl std::fmt::Debug for EngineReload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let vips: Vec<SocketAddr> = self.listeners.iter().map(|listener| listener.vip).collect();
        f.debug_struct("EngineReload").field("listeners", &vips).field("retired", &self.retired).finish_non_exhaustive()
    }
}

/// The health checks' setup with its seed mixed with the box's secret: their ISNs and ports,
/// like the engine's own choices, are not guessable.
fn seeded(setup: crate::health::HealthSetup, keys: &EngineKeys) -> crate::health::HealthSetup {
    crate::health::HealthSetup { seed: setup.seed ^ keys.balance_seed().rotate_left(17), ..setup }
}

/// Which of the box's poll loops an engine runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoopShare {
    pub index: usize,
    pub loops: usize,
}

impl LoopShare {
    /// The whole box in one loop.
    pub const ONE: LoopShare = LoopShare { index: 0, loops: 1 };
}

/// The engine's secrets, given to it like every other value: random in the live box (the
/// caller draws them from the OS and fails if it cannot), derived from a seed in tests and
/// replays so that a run repeats. Two independent keys: one for initial sequence numbers, one
/// for SYN cookies, so that seeing many ISNs tells nothing about the cookie MAC.
#[derive(Clone)]
pub struct EngineKeys {
    /// RFC 6528: ISN = a 4 µs clock + PRF(4-tuple, this key).
    pub isn_key: [u8; 32],
    /// The SYN cookies' MAC key.
    pub cookie_key: [u8; 32],
}

impl EngineKeys {
    /// From 64 random bytes (the first half keys ISNs, the second cookies).
    pub fn from_random(bytes: [u8; 64]) -> EngineKeys {
        let mut keys = EngineKeys { isn_key: [0; 32], cookie_key: [0; 32] };
        keys.isn_key.copy_from_slice(&bytes[..32]);
        keys.cookie_key.copy_from_slice(&bytes[32..]);
        keys
    }

    /// Deterministic keys for tests and replays: HKDF-Expand of the seed with a label each.
    pub fn derive(seed: u64) -> EngineKeys {
        let mut keys = EngineKeys { isn_key: [0; 32], cookie_key: [0; 32] };
        let prk = [seed.to_le_bytes(); 4].concat();
        cutls_crypto::keys::hkdf_expand(cutls_crypto::HashAlgorithm::Sha256, &prk, b"cutls isn", &mut keys.isn_key);
        cutls_crypto::keys::hkdf_expand(cutls_crypto::HashAlgorithm::Sha256, &prk, b"cutls cookie", &mut keys.cookie_key);
        keys
    }

    /// A seed for least-load's random choices: derived one way from the ISN key, so that what
    /// the choices reveal tells nothing of it.
    pub(crate) fn balance_seed(&self) -> u64 {
        let mut seed = [0u8; 8];
        cutls_crypto::keys::hkdf_expand(cutls_crypto::HashAlgorithm::Sha256, &self.isn_key, b"cutls balance", &mut seed);
        u64::from_le_bytes(seed)
    }
}

impl std::fmt::Debug for EngineKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EngineKeys { .. }")
    }
}

/// Frames to send, per port, and the buffers they are built in. The caller drains the frames
/// after each call and hands their buffers back with [`Output::recycle`], so that a poll loop
/// in steady state builds every frame (and every sealed record) without allocating.
#[derive(Debug, Default)]
pub struct Output {
    pub outside: Vec<Vec<u8>>,
    pub inside: Vec<Vec<u8>>,
    pub pool: FramePool,
}

impl Output {
    pub(crate) fn push(&mut self, port: Port, frame: Option<Vec<u8>>) {
        if let Some(frame) = frame {
            match port {
                Port::Outside => self.outside.push(frame),
                Port::Inside => self.inside.push(frame),
            }
        }
    }

    /// A TCP frame for `port`, built in a buffer from the pool.
    pub(crate) fn push_tcp(&mut self, port: Port, link: Link, segment: &emit::Segment<'_>) {
        let mut frame = self.pool.take();
        match emit::tcp_frame_into(link, segment, &mut frame) {
            Some(()) => self.push(port, Some(frame)),
            None => self.pool.give(frame),
        }
    }

    /// A copy of `frame` for `port` (a bridged frame), in a buffer from the pool.
    pub(crate) fn push_copy(&mut self, port: Port, frame: &[u8]) {
        let mut copy = self.pool.take();
        copy.extend_from_slice(frame);
        self.push(port, Some(copy));
    }

    /// Drops the frames queued (the caller sent them) and keeps their buffers for the next.
    pub fn recycle(&mut self) {
        for frame in self.outside.drain(..).chain(self.inside.drain(..)) {
            self.pool.give(frame);
        }
    }

    /// Frames queued for `port` so far.
    pub(crate) fn count(&self, port: Port) -> usize {
        match port {
            Port::Outside => self.outside.len(),
            Port::Inside => self.inside.len(),
        }
    }
}

/// Buffers for frames and sealed records, reused: taken by whoever builds one, given back
/// when it has left (a sent frame, a record the client acknowledged). The records waiting
/// for clients' acknowledgements come and go in bursts, so the pool keeps up to
/// [`FramePool::LIMIT`] buffers and [`FramePool::trim`] (once a second, from the poll loop)
/// frees what was not needed since the last trim, so that a burst does not keep its memory.
#[derive(Debug, Default)]
pub struct FramePool {
    spare: Vec<Vec<u8>>,
    /// The fewest buffers spare since the last trim: that many were not needed.
    fewest: usize,
}

impl FramePool {
    /// Buffers kept at most: never more than a burst had in flight at once (the records the
    /// clients had not acknowledged yet), and [`FramePool::trim`] frees them within two seconds
    /// of the burst.
    const LIMIT: usize = 1 << 18;
    /// Buffers a trim leaves in any case: a few batches of frames.
    const KEEP: usize = 1024;
    /// Buffers larger than this are not kept (a jumbo frame's or a 16 KiB record's are; a
    /// rare larger one is not worth its memory).
    const LARGEST: usize = 20 * 1024;
    /// A new buffer's room: a 1500-byte frame with VLAN tags, or a record of one segment.
    const ROOM: usize = 1600;

    /// An empty buffer, with room for a frame.
    pub fn take(&mut self) -> Vec<u8> {
        let buffer = self.spare.pop().unwrap_or_else(|| Vec::with_capacity(Self::ROOM));
        self.fewest = self.fewest.min(self.spare.len());
        buffer
    }

    /// A buffer back, its contents dropped.
    pub fn give(&mut self, mut buffer: Vec<u8>) {
        if self.spare.len() < Self::LIMIT && buffer.capacity() <= Self::LARGEST && buffer.capacity() > 0 {
            buffer.clear();
            self.spare.push(buffer);
        }
    }

    /// Frees the buffers that stayed spare since the last trim (beyond [`FramePool::KEEP`]).
    pub fn trim(&mut self) {
        let unneeded = self.fewest.min(self.spare.len().saturating_sub(Self::KEEP));
        self.spare.truncate(self.spare.len() - unneeded);
        self.spare.shrink_to(self.spare.len().max(Self::KEEP));
        self.fewest = self.spare.len();
    }

    /// Buffers kept now.
    pub fn spare(&self) -> usize {
        self.spare.len()
    }
}

counters! {
/// What happened, for the operator (and the tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub frames_bridged: u64,
    pub frames_unparsed_bridged: u64,
    /// Frames to a VIP (or from a terminating listener's backend) that do not parse (a bad
    /// header length, data offset or IP length), IP frames cut inside their fixed header, and
    /// SYNs with RST or FIN: dropped, never bridged.
    pub malformed_frames_dropped: u64,
    /// IP fragments to a VIP or from a terminating listener's backend: dropped (not
    /// reassembled; TCP with path MTU discovery does not fragment).
    pub fragments_dropped: u64,
    pub arp_replies: u64,
    pub ndp_advertisements: u64,
    pub sessions_started: u64,
    /// Sessions spliced as plain TCP to a passthrough pool.
    pub sessions_passthrough: u64,
    pub handshakes_completed: u64,
    pub ended_fin: u64,
    /// Sessions reset because, once closing, they stayed idle past the close timeout, or the
    /// backend never acknowledged the box's FIN.
    pub ended_close_timeout: u64,
    pub ended_client_reset: u64,
    pub ended_backend_reset: u64,
    pub ended_tls_error: u64,
    pub ended_tag_failure: u64,
    pub ended_idle: u64,
    /// Half-open sessions: the client never acknowledged the SYN-ACK (sent four times in
    /// 15 s). A SYN flood ends here.
    pub ended_half_open: u64,
    /// TLS handshakes not done within `handshake_timeout` of the SYN (slow or stalled clients,
    /// a first flight that is not TLS and never completes a record): reset both ways.
    pub ended_handshake_timeout: u64,
    pub ended_backend_unreachable: u64,
    /// Sessions whose client acknowledged nothing the box sent it through every retransmission.
    pub ended_client_unresponsive: u64,
    /// Backends silent for 20 s while their client was still there, that then answered none
    /// of four keepalives (5 s apart): both sides reset (a backend whose link or host died).
    pub ended_backend_silent: u64,
    /// Client segments dropped: out of order during the handshake, or not placeable with the
    /// buffer for those full.
    pub client_segments_dropped: u64,
    /// Client segments the opener could not place yet (a record header before them was lost):
    /// held, SACKed, and opened once the header came.
    pub client_segments_held: u64,
    /// Backend segments dropped: ahead of a gap with the reorder buffer full, beyond the
    /// window the box offered, or data before the splice that did not fit.
    pub backend_segments_dropped: u64,
    /// Backend segments that arrived ahead of a gap and were held until it filled (SACKed to
    /// the backend, which resends the hole at once).
    pub backend_segments_held: u64,
    pub records_opened: u64,
    pub records_sealed: u64,
    /// Segments the box sent the client again from its send buffer (SACK or duplicate-ACK
    /// recovery, timeouts, path MTU), and times its retransmission timer fired.
    pub client_retransmits: u64,
    pub client_timeouts: u64,
    /// Tail loss probes (RFC 8985): the last segment sent again after two round trips without
    /// an acknowledgement, so that a lost tail costs a round trip, not a timeout.
    pub client_tail_probes: u64,
    /// Client plaintext the box sent the backend again on its own (see `custody`).
    pub backend_retransmits: u64,
    /// SYNs answered with a SYN cookie (no state), and connections made from a valid cookie.
    pub syn_cookies_sent: u64,
    pub syn_cookies_accepted: u64,
    /// Connections refused (RST) because the box held `max_sessions` sessions.
    pub sessions_refused_full: u64,
    /// Connections refused (RST) because their client address held `max_sessions_per_client`.
    pub sessions_refused_per_client: u64,
    /// Transparent-mode SYNs refused because every backend already had a session with the
    /// client's address and port.
    pub backend_tuple_collisions: u64,
    /// ICMP "fragmentation needed" / "packet too big" for a session: taken (the path MTU
    /// dropped), or ignored (bad checksum, a quoted sequence number outside what is in flight,
    /// an MTU below the minimum).
    pub path_mtu_updates: u64,
    pub icmp_ignored: u64,
    /// ... for a passthrough session: sent on to the peer whose segments were too big.
    pub path_mtu_relayed: u64,
    /// Frames the box would have consumed (for a VIP, the SNAT address, a session or a flow
    /// in TIME-WAIT) whose IPv4 header or TCP/ICMP checksum is wrong: dropped, as a TCP
    /// stack drops them, so that the peer sends them again. Per port they came in on. On the
    /// inside port, every IPv4 frame with a bad header checksum and every TCP segment with a
    /// bad checksum, whoever it seems to be from: its addresses may be the corrupted ones.
    pub bad_checksum_drops_outside: u64,
    pub bad_checksum_drops_inside: u64,
    /// Client bytes after its close_notify: ignored (RFC 8446 6.1).
    pub client_bytes_after_close: u64,
    /// FINs sent again on a connection the box closed, acknowledged from TIME-WAIT.
    pub time_wait_acks: u64,
    /// Challenge ACKs (RFC 5961): for SYNs on a 4-tuple a session holds (a client that really
    /// starts over resets the old session with it) and RSTs in the window but not exact.
    pub challenge_acks: u64,
    /// Segments outside the receive window (RFC 9293 3.10.7.4), dropped and, within a rate
    /// limit, answered with an ACK: retransmissions of acknowledged data, keepalives, forgeries.
    pub segments_out_of_window: u64,
    /// RSTs inside the window but not at the next sequence number, and SYNs inside a
    /// connection, whose challenge ACK the rate limit held back (RFC 5961 7); those answered
    /// count as `challenge_acks`. Also RSTs toward a backend connection not yet synchronized
    /// that do not acknowledge its SYN or sit at its start (RFC 9293 3.10.7.3), dropped.
    pub challenge_acks_held: u64,
    /// Segments acknowledging data never sent or older than a window (RFC 5961 5.2), dropped.
    pub acks_out_of_range: u64,
    /// Segments with neither ACK nor RST in a synchronized connection, dropped.
    pub segments_without_ack: u64,
    /// Times a session's timers were run because one was due (not once per session per turn:
    /// an idle session costs nothing until its idle timeout).
    pub session_timer_runs: u64,
    /// TCP frames from a listener's backend address and port for no session the box knows (it
    /// ended long ago, the box restarted, the frame is forged) and no connection a host opened
    /// to the backend through the bridge: never bridged, since their payload is plaintext meant
    /// for a client through the box; the backend gets a RST.
    pub orphan_backend_drops: u64,
    /// Client segments to a VIP for no session, no TIME-WAIT and no fatal alert (a session the
    /// box reset or forgot, a restarted box, a scan, a frame steered to the wrong loop): answered
    /// with a RST.
    pub client_segments_without_session: u64,
    /// Fatal alerts the box sent, by description (the box's own, and rustls' in the handshake
    /// when they are in the clear; an alert rustls sent encrypted, after the ServerHello,
    /// cannot be read by the box and counts as `alerts_other`, as does any other description).
    pub alerts_unexpected_message: u64,
    pub alerts_bad_record_mac: u64,
    pub alerts_record_overflow: u64,
    pub alerts_handshake_failure: u64,
    pub alerts_illegal_parameter: u64,
    pub alerts_decode_error: u64,
    pub alerts_decrypt_error: u64,
    pub alerts_protocol_version: u64,
    pub alerts_internal_error: u64,
    pub alerts_no_application_protocol: u64,
    pub alerts_other: u64,
    /// Sessions an operator ended (`cutlsctl session kill`, `backend disable`).
    pub ended_killed: u64,
    /// New sessions refused because every backend of their pool was drained, disabled or
    /// down (health checks).
    pub backends_out_of_rotation_refusals: u64,
    /// ... because every backend in rotation had its `max_sessions`.
    pub backends_full_refusals: u64,
    /// Health checks ([`crate::health`]): frames of the checker received and sent on the
    /// inside port, and backends it found down and up again.
    pub health_frames_received: u64,
    pub health_frames_sent: u64,
    pub backends_down: u64,
    pub backends_up: u64,
}
}

impl Counters {
    /// A fatal alert sent: `description`, or `None` when the box cannot read it (encrypted by
    /// rustls).
    pub(crate) fn count_alert(&mut self, description: Option<u8>) {
        let counter = match description {
            Some(10) => &mut self.alerts_unexpected_message,
            Some(20) => &mut self.alerts_bad_record_mac,
            Some(22) => &mut self.alerts_record_overflow,
            Some(40) => &mut self.alerts_handshake_failure,
            Some(47) => &mut self.alerts_illegal_parameter,
            Some(50) => &mut self.alerts_decode_error,
            Some(51) => &mut self.alerts_decrypt_error,
            Some(70) => &mut self.alerts_protocol_version,
            Some(80) => &mut self.alerts_internal_error,
            Some(120) => &mut self.alerts_no_application_protocol,
            _ => &mut self.alerts_other,
        };
        *counter += 1;
    }
}

/// Why a session ended: counted in one place ([`Engine`]'s `with_session`), one counter each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// Both sides closed with FIN (a passthrough session; a TLS session that closed cleanly
    /// ends as `SessionEvent::Closed`, with TIME-WAIT, and counts here too).
    Fin,
    /// Half closed and then idle past the close timeout, or the backend never acknowledged the
    /// box's FIN.
    CloseTimeout,
    ClientReset,
    BackendReset,
    /// The handshake failed, a record could not be parsed or opened, or the handshake flight
    /// was never acknowledged.
    TlsError,
    /// A client record failed authentication.
    TagFailure,
    Idle,
    /// The client never acknowledged the SYN-ACK (sent four times over 15 s).
    HalfOpen,
    /// The TLS handshake was not done within `handshake_timeout` of the client's SYN.
    HandshakeTimeout,
    /// The backend could not be resolved, connected or chosen.
    BackendUnreachable,
    /// The client acknowledged nothing through every retransmission of the box's bytes.
    ClientUnresponsive,
    /// The backend answered none of the box's keepalives after falling silent.
    BackendSilent,
    /// An operator ended it (`cutlsctl session kill`, `cutlsctl backend disable`): both sides
    /// were reset.
    Killed,
}

impl EndReason {
    /// The reason as operators read it (the counter's name without `ended_`).
    pub fn name(self) -> &'static str {
        match self {
            EndReason::Fin => "fin",
            EndReason::CloseTimeout => "close_timeout",
            EndReason::ClientReset => "client_reset",
            EndReason::BackendReset => "backend_reset",
            EndReason::TlsError => "tls_error",
            EndReason::TagFailure => "tag_failure",
            EndReason::Idle => "idle",
            EndReason::HalfOpen => "half_open",
            EndReason::HandshakeTimeout => "handshake_timeout",
            EndReason::BackendUnreachable => "backend_unreachable",
            EndReason::ClientUnresponsive => "client_unresponsive",
            EndReason::BackendSilent => "backend_silent",
            EndReason::Killed => "killed",
        }
    }

    fn count(self, counters: &mut Counters) {
        let counter = match self {
            EndReason::Fin => &mut counters.ended_fin,
            EndReason::CloseTimeout => &mut counters.ended_close_timeout,
            EndReason::ClientReset => &mut counters.ended_client_reset,
            EndReason::BackendReset => &mut counters.ended_backend_reset,
            EndReason::TlsError => &mut counters.ended_tls_error,
            EndReason::TagFailure => &mut counters.ended_tag_failure,
            EndReason::Idle => &mut counters.ended_idle,
            EndReason::HalfOpen => &mut counters.ended_half_open,
            EndReason::HandshakeTimeout => &mut counters.ended_handshake_timeout,
            EndReason::BackendUnreachable => &mut counters.ended_backend_unreachable,
            EndReason::ClientUnresponsive => &mut counters.ended_client_unresponsive,
            EndReason::BackendSilent => &mut counters.ended_backend_silent,
            EndReason::Killed => &mut counters.ended_killed,
        };
        *counter += 1;
    }
}

/// What can be read of a frame the parser refused.
enum RawIp {
    /// Not IP (after any VLAN tags): bridged like any other frame the box does not own.
    NotIp,
    /// An IP ethertype without a whole fixed IP header: no IP host would take it, and whose it
    /// is cannot be told, so it is dropped rather than bridged (it could be a backend's).
    Truncated,
    /// The fixed header's `(source, destination)`.
    Addresses(IpAddr, IpAddr),
}

/// The IP addresses of a frame the parser refused, read as far as they go (Ethernet, VLAN tags,
/// the fixed IPv4 or IPv6 header).
fn raw_ip_addresses(frame: &[u8]) -> RawIp {
    let mut at = 12;
    loop {
        let (Some(&high), Some(&low)) = (frame.get(at), frame.get(at + 1)) else { return RawIp::NotIp };
        let ip = at + 2;
        match u16::from_be_bytes([high, low]) {
            0x8100 | 0x88a8 => at += 4,
            0x0800 => {
                let Some(header) = frame.get(ip..ip + 20) else { return RawIp::Truncated };
                let address = |at: usize| IpAddr::from([header[at], header[at + 1], header[at + 2], header[at + 3]]);
                return RawIp::Addresses(address(12), address(16));
            }
            0x86dd => {
                let Some(header) = frame.get(ip..ip + 40) else { return RawIp::Truncated };
                let address = |at: usize| -> IpAddr {
                    let bytes: [u8; 16] = header[at..at + 16].try_into().unwrap_or([0; 16]);
                    IpAddr::from(bytes)
                };
                return RawIp::Addresses(address(8), address(24));
            }
            _ => return RawIp::NotIp,
        }
    }
}

/// How long an ended session's backend flow is still recognised (its late segments are reset
/// and dropped rather than bridged), and how many such flows are kept at most.
const ENDED_FLOW_TTL_NS: u64 = 120_000_000_000;
const MAX_ENDED_FLOWS: usize = 1 << 16;
/// Connections to a listener's backend address and port that a host opened through the bridge
/// (not through the VIP): remembered while they carry traffic, this long after their last
/// frame, at most this many. Only these may carry a backend's frames to the outside.
const BRIDGED_FLOW_TTL_NS: u64 = 600_000_000_000;
const MAX_BRIDGED_FLOWS: usize = 1 << 16;
/// TIME-WAIT toward the client of a session closed with FINs (Linux: 60 s), and how many
/// such flows are kept at most (past that, a FIN sent again gets a RST, which also ends it).
const TIME_WAIT_NS: u64 = 60_000_000_000;
const MAX_TIME_WAIT_FLOWS: usize = 1 << 16;

/// Flows remembered for a while after their session ended, each with its expiry, at most
/// `max` of them: when full, expired entries go first, and a flow that still finds no room is
/// not remembered (the tables hold what protects the peers, not what the box needs to work).
struct ExpiringFlows<V> {
    entries: HashMap<FlowKey, (u64, V)>,
    max: usize,
}

impl<V: Copy> ExpiringFlows<V> {
    fn new(max: usize) -> Self {
        ExpiringFlows { entries: HashMap::new(), max }
    }

    /// Forgets the expired entries and gives back the room a burst left ([`Engine::trim`]).
    fn trim(&mut self, now_ns: u64) {
        self.entries.retain(|_, (until, _)| *until > now_ns);
        shrink_map(&mut self.entries);
    }

    fn insert(&mut self, now_ns: u64, key: FlowKey, until_ns: u64, value: V) {
        if self.entries.len() >= self.max {
            self.entries.retain(|_, (until, _)| *until > now_ns);
        }
        if self.entries.len() < self.max {
            self.entries.insert(key, (until_ns, value));
        }
    }

    /// The value of `key` while it lives; an expired entry is forgotten here.
    fn live(&mut self, now_ns: u64, key: &FlowKey) -> Option<V> {
        let &(until, value) = self.entries.get(key)?;
        if now_ns < until {
            return Some(value);
        }
        self.entries.remove(key);
        None
    }

    fn remove(&mut self, key: &FlowKey) {
        self.entries.remove(key);
    }

    /// Whether `key` has an entry, expired or not.
    fn contains(&self, key: &FlowKey) -> bool {
        self.entries.contains_key(key)
    }
}

/// Whether a table with room for `capacity` entries that holds `len` should shrink (to twice
/// `len`): once it has room for more than four times that, and more than a small table's
/// worth, so after a burst and not at every ebb.
pub(crate) fn oversized(capacity: usize, len: usize) -> bool {
    capacity > 4 * len + 1024
}

fn shrink_map<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if oversized(map.capacity(), map.len()) {
        map.shrink_to(2 * map.len());
    }
}

/// MSS classes a SYN cookie can remember (the largest not above the client's is offered).
const COOKIE_MSS: [u16; 4] = [536, 1220, 1440, 1460];

/// SYN cookie time slots: 64 s each; a cookie is good in its slot and the next.
fn cookie_slot(now_ns: u64) -> u32 {
    (now_ns >> 36) as u32
}

/// SNAT source ports: the box owns 1024..=65535 on its SNAT address.
const FIRST_SNAT_PORT: u16 = 1024;

/// A TCP 4-tuple, from the point of view of the frames' sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FlowKey {
    source: SocketAddr,
    destination: SocketAddr,
}

pub struct Engine {
    config: EngineConfig,
    sessions: HashMap<u64, Session>,
    /// Live sessions per client address (for `max_sessions_per_client`; kept only with it).
    per_client: HashMap<IpAddr, u32>,
    /// Client -> VIP flows.
    by_client: HashMap<FlowKey, u64>,
    /// Backend -> client flows (transparent mode: the backend talks to the client's address).
    by_backend: HashMap<FlowKey, u64>,
    /// MAC addresses learned on the inside port, and the box's own requests (ARP/NDP):
    /// replies to those are consumed, not bridged.
    neighbours: Neighbours,
    /// When each session next needs its timers run.
    timers: TimerQueue,
    /// Sessions with work for the end of the batch (a record to seal, an acknowledgement to
    /// send: [`Engine::end_batch`]).
    batch_work: Vec<u64>,
    /// Sessions waiting for their backend's MAC: run when a neighbour is learned.
    waiting_for_mac: HashSet<u64>,
    /// Backend -> client flows of ended sessions: their segments are answered with RST and
    /// dropped, never bridged (they would carry plaintext to the client). The value: `Some`
    /// for a session closed with FINs, whose FIN sent again is acknowledged (TIME-WAIT), with
    /// the box's timestamp value toward the backend if the flow had timestamps.
    ended_backend_flows: ExpiringFlows<Option<Option<u32>>>,
    /// Backend flows (keyed from the backend's side) opened through the bridge: see
    /// [`BRIDGED_FLOW_TTL_NS`].
    bridged_backend_flows: ExpiringFlows<()>,
    /// Every listener's backend addresses and ports (pools and passthrough routes), looked up
    /// for frames the box would otherwise bridge.
    backend_addresses: HashSet<SocketAddr>,
    /// Client -> VIP flows of sessions closed with FINs (TIME-WAIT); the value: whether the
    /// flow had timestamps.
    time_wait_clients: ExpiringFlows<bool>,
    /// Frames for the outside port to send later, in time order (RSTs behind fatal alerts).
    deferred: std::collections::VecDeque<(u64, Vec<u8>)>,
    /// Client flows of sessions that ended with a fatal alert and a FIN: a client segment is
    /// answered with the RST at the sequence number kept (in the client's window, unlike one
    /// built from a segment sent before the alert arrived).
    alerted_clients: ExpiringFlows<u32>,
    next_id: u64,
    next_backend: Vec<usize>,
    /// Round robin over each listener's passthrough pool.
    next_passthrough: Vec<usize>,
    /// SNAT: the next source port to try.
    next_snat_port: u16,
    pool: Option<handshake::HandshakePool>,
    counters: Counters,
    events: events::EventQueue,
    /// Per listener slot: its VIP was removed by a reload ([`Engine::reload`]).
    retired_listeners: Vec<bool>,
    /// Backends an operator took out of rotation (absent: in rotation).
    backend_admin: HashMap<SocketAddr, BackendAdmin>,
    /// The health checker, in the loop that checks; the backends found down, in every loop.
    health: Option<crate::health::HealthChecker>,
    backends_down: HashSet<SocketAddr>,
    /// What the agents of backends said, where it is not the default (100%, ready, up).
    backend_agents: HashMap<SocketAddr, crate::health::AgentState>,
    /// Live sessions per backend (for least-sessions and `max_sessions`).
    backend_sessions: HashMap<SocketAddr, u32>,
    /// Response times per backend (least-load), and the samples of the current call.
    response_times: HashMap<SocketAddr, balance::ResponseTime>,
    response_samples: Vec<(SocketAddr, balance::ResponseSample)>,
    /// Every answer's response time, per backend, since the engine started.
    response_histograms: HashMap<SocketAddr, balance::ResponseHistogram>,
    /// Client plaintext sent to each backend and not acknowledged by it yet, over its
    /// sessions (kept by [`Engine::with_session`], recounted by [`Engine::trim`]).
    backend_in_flight: HashMap<SocketAddr, u64>,
    /// Draws for least-load's two random choices (xorshift; seeded from the keys).
    balance_random: u64,
    /// The backends a new session may take, rebuilt for each (its room kept).
    backend_scratch: Vec<SocketAddr>,
}

/// An operator's say over a backend ([`Engine::set_backend_admin`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendAdmin {
    /// In rotation.
    Enabled,
    /// No new sessions; those it has go on until they end.
    Draining,
    /// No new sessions, and those it has are reset.
    Disabled,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Engine {
        let listeners = config.listeners.len();
        let backend_addresses = config
            .listeners
            .iter()
            .flat_map(|listener| listener.backends.iter().chain(listener.passthrough.iter().flat_map(|route| &route.backends)))
            .copied()
            .collect();
        // A pool that cannot start (no threads) leaves handshakes inline.
        let pool = match config.handshake_threads {
            0 => None,
            threads => handshake::HandshakePool::start(threads, config.handshake_doorbell.clone()).ok(),
        };
        let next_id = config.loop_share.index as u64 + 1;
        // Not a secret: it only spreads the choices (never zero, or xorshift stays at zero).
        let balance_random = config.keys.balance_seed() | 1;
        let events = events::EventQueue::new(config.events);
        // Its clock starts at the first poll (engine time is the caller's).
        let health = config.health.clone().map(|setup| crate::health::HealthChecker::new(seeded(setup, &config.keys), 0));
        Engine {
            config,
            sessions: HashMap::new(),
            per_client: HashMap::new(),
            by_client: HashMap::new(),
            by_backend: HashMap::new(),
            neighbours: Neighbours::default(),
            timers: TimerQueue::default(),
            batch_work: Vec::new(),
            waiting_for_mac: HashSet::new(),
            ended_backend_flows: ExpiringFlows::new(MAX_ENDED_FLOWS),
            bridged_backend_flows: ExpiringFlows::new(MAX_BRIDGED_FLOWS),
            backend_addresses,
            time_wait_clients: ExpiringFlows::new(MAX_TIME_WAIT_FLOWS),
            deferred: std::collections::VecDeque::new(),
            alerted_clients: ExpiringFlows::new(MAX_TIME_WAIT_FLOWS),
            // Loop i hands out the ids i + 1, i + 1 + loops, ...: an id names one session in
            // the whole box.
            next_id,
            next_backend: vec![0; listeners],
            next_passthrough: vec![0; listeners],
            next_snat_port: FIRST_SNAT_PORT,
            // A pool that cannot start (no threads) leaves handshakes inline.
            pool,
            counters: Counters::default(),
            events,
            retired_listeners: vec![false; listeners],
            backend_admin: HashMap::new(),
            health,
            backends_down: HashSet::new(),
            backend_agents: HashMap::new(),
            backend_sessions: HashMap::new(),
            response_times: HashMap::new(),
            response_samples: Vec::new(),
            response_histograms: HashMap::new(),
            backend_in_flight: HashMap::new(),
            balance_random,
            backend_scratch: Vec::new(),
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Live sessions.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Moves the events queued since the last call to `into` (nothing unless
    /// [`EngineConfig::events`]).
    pub fn take_events(&mut self, into: &mut Vec<Event>) {
        self.events.drain_into(into);
    }

    /// The progress of every live session active at or after `since_ns`, appended to `into`.
    pub fn progress_since(&self, since_ns: u64, into: &mut Vec<Progress>) {
        into.extend(self.sessions.values().filter(|session| session.last_activity_ns() >= since_ns).map(|session| session.progress()));
    }

    /// Each backend's measured response time (least-load's peak-EWMA at `now_ns`, ns), for
    /// the backends this engine has had answers from.
    /// Client plaintext in flight to each backend (sent, not acknowledged), where not zero.
    pub fn backend_in_flight(&self) -> Vec<(SocketAddr, u64)> {
        self.backend_in_flight.iter().filter(|(_, bytes)| **bytes > 0).map(|(backend, bytes)| (*backend, *bytes)).collect()
    }

    /// Every answer's response time per backend since the engine started (for the metrics).
    pub fn backend_response_histograms(&self) -> Vec<(SocketAddr, balance::ResponseHistogram)> {
        self.response_histograms.iter().map(|(backend, histogram)| (*backend, *histogram)).collect()
    }

    pub fn backend_response_times(&self, now_ns: u64) -> Vec<(SocketAddr, f64)> {
        self.response_times.iter().map(|(backend, time)| (*backend, time.average_at(now_ns))).collect()
    }

    /// An operator ends session `id`: both sides reset, [`EndReason::Killed`]. `false` if the
    /// engine has no such session.
    pub fn kill_session(&mut self, now_ns: u64, id: u64, out: &mut Output) -> bool {
        if !self.sessions.contains_key(&id) {
            return false;
        }
        self.with_session(id, now_ns, out, |session, context| session.kill(context));
        true
    }

    /// Takes `backend` out of rotation or puts it back, for every listener. Disabling it also
    /// resets its sessions. Returns how many sessions it has (before any reset).
    pub fn set_backend_admin(&mut self, now_ns: u64, backend: SocketAddr, admin: BackendAdmin, out: &mut Output) -> usize {
        match admin {
            BackendAdmin::Enabled => self.backend_admin.remove(&backend),
            _ => self.backend_admin.insert(backend, admin),
        };
        let on_it: Vec<u64> = self.sessions.iter().filter(|(_, session)| session.backend() == backend).map(|(id, _)| *id).collect();
        if admin == BackendAdmin::Disabled {
            for &id in &on_it {
                self.kill_session(now_ns, id, out);
            }
        }
        on_it.len()
    }

    /// Takes a new configuration (`cutlsctl reload`, SIGHUP) without dropping a session: they
    /// keep their keys, backends and listener slots; new connections get the new listeners,
    /// certificates, pools and limits. Backends that leave every pool stay known as backends
    /// (fail closed: their frames are never bridged).
    pub fn reload(&mut self, now_ns: u64, reload: &EngineReload) {
        let slots = reload.listeners.len();
        debug_assert!(slots >= self.config.listeners.len(), "slots are never taken away");
        self.config.listeners = reload.listeners.clone();
        self.retired_listeners = reload.retired.clone();
        self.retired_listeners.resize(slots, false);
        self.next_backend.resize(slots, 0);
        self.next_passthrough.resize(slots, 0);
        for listener in &self.config.listeners {
            let passthrough = listener.passthrough.iter().flat_map(|route| &route.backends);
            self.backend_addresses.extend(listener.backends.iter().chain(passthrough).copied());
        }
        self.config.balancing = reload.balancing.clone();
        self.config.idle_timeout_ns = reload.idle_timeout_ns;
        self.config.handshake_timeout_ns = reload.handshake_timeout_ns;
        self.config.close_timeout_ns = reload.close_timeout_ns;
        self.config.syn_cookies_after = reload.syn_cookies_after;
        self.config.max_sessions = reload.max_sessions;
        self.config.max_sessions_per_client = reload.max_sessions_per_client;
        let checked: HashSet<SocketAddr> = reload.health.iter().flat_map(|setup| setup.backends()).collect();
        self.backends_down.retain(|backend| checked.contains(backend));
        let asked: HashSet<SocketAddr> = reload.health.iter().flat_map(|setup| setup.agent_backends()).collect();
        self.backend_agents.retain(|backend, _| asked.contains(backend));
        // The checking loop's engine keeps what it knows of unchanged checks.
        if self.config.loop_share.index == crate::steer::HEALTH_LOOP {
            let setup = reload.health.clone().map(|setup| seeded(setup, &self.config.keys));
            match (setup, self.health.as_mut()) {
                (Some(setup), Some(checker)) => checker.reconfigure(setup, now_ns),
                (Some(setup), None) => self.health = Some(crate::health::HealthChecker::new(setup, now_ns)),
                (None, _) => self.health = None,
            }
        }
    }

    /// What another loop's health checks found ([`crate::health`]): a backend `up = false`
    /// takes no new sessions (those it has go on), as if draining.
    pub fn set_backend_health(&mut self, backend: SocketAddr, up: bool) {
        if up {
            self.backends_down.remove(&backend);
        } else {
            self.backends_down.insert(backend);
        }
    }

    /// What a backend's agent said ([`crate::health::AgentState`]): new sessions only while
    /// it takes them, by its share of the configured weight.
    pub fn set_backend_agent(&mut self, backend: SocketAddr, state: crate::health::AgentState) {
        if state == crate::health::AgentState::default() {
            self.backend_agents.remove(&backend);
        } else {
            self.backend_agents.insert(backend, state);
        }
    }

    /// The health of the backends this engine checks (empty if it checks none).
    pub fn health_status(&self) -> Vec<crate::health::BackendHealth> {
        self.health.as_ref().map(|checker| checker.status()).unwrap_or_default()
    }

    /// Gives back the memory a burst of sessions left in the engine's tables (a SYN flood's
    /// 16,384 half-open sessions took 60 MB that stayed after they had ended): the session,
    /// flow and timer tables shrink once they are more than four times larger than what they
    /// hold ([`oversized`]), and expired entries of the bridged, TIME-WAIT and alerted flow
    /// tables are forgotten. The poll loop calls it once a second, with [`FramePool::trim`].
    pub fn trim(&mut self, now_ns: u64) {
        // Recounted from the sessions: whatever changed a session outside `with_session`.
        let mut recount: HashMap<SocketAddr, u64> = HashMap::new();
        for session in self.sessions.values() {
            let in_flight = session.in_flight_to_backend();
            if in_flight > 0 {
                *recount.entry(session.backend()).or_default() += in_flight;
            }
        }
        self.backend_in_flight.retain(|_, total| *total > 0);
        debug_assert_eq!(self.backend_in_flight, recount, "in-flight bytes kept per session call");
        self.backend_in_flight = recount;
        shrink_map(&mut self.sessions);
        shrink_map(&mut self.by_client);
        shrink_map(&mut self.by_backend);
        shrink_map(&mut self.per_client);
        if oversized(self.waiting_for_mac.capacity(), self.waiting_for_mac.len()) {
            self.waiting_for_mac.shrink_to(2 * self.waiting_for_mac.len());
        }
        self.timers.shrink();
        // Not `ended_backend_flows`: an expired entry there still says the flow was the box's
        // (no forged SYN may open it through the bridge, no SNAT port reuses it).
        self.bridged_backend_flows.trim(now_ns);
        self.time_wait_clients.trim(now_ns);
        self.alerted_clients.trim(now_ns);
    }

    /// A frame received on `port`, nothing known of its checksums: a batch of one frame
    /// ([`Engine::handle_received`], then [`Engine::end_batch`]).
    pub fn handle_frame(&mut self, now_ns: u64, port: Port, frame: &[u8], out: &mut Output) {
        self.handle_received(now_ns, port, frame, RxChecksum::Unknown, out);
        self.end_batch(now_ns, out);
    }

    /// A frame received on `port`, with what the receive path said of its checksum: one frame
    /// of a receive batch, which [`Engine::end_batch`] ends.
    pub fn handle_received(&mut self, now_ns: u64, port: Port, frame: &[u8], checksum: RxChecksum, out: &mut Output) {
        let transport_checksum = match checksum {
            RxChecksum::Verified | RxChecksum::NotComputed if self.config.trust_rx_checksum => TransportChecksum::Offloaded,
            _ => TransportChecksum::Verify,
        };
        let Ok(parsed) = parse_frame_with(LinkType::Ethernet, frame, transport_checksum) else {
            // A frame the parser refuses (a bad header length, data offset or IP length) is
            // the box's own business if it is addressed to a VIP, or comes from a backend of a
            // terminating listener (it could carry plaintext): dropped, never bridged. So is IP
            // cut inside its fixed header, whose addresses cannot be read.
            let owned = match raw_ip_addresses(frame) {
                RawIp::NotIp => false,
                RawIp::Truncated => true,
                RawIp::Addresses(source, destination) => self.frame_is_the_boxs(port, source, destination),
            };
            if owned {
                self.counters.malformed_frames_dropped += 1;
                return;
            }
            self.counters.frames_unparsed_bridged += 1;
            self.bridge(port, frame, out);
            return;
        };
        let link = match parsed.link {
            crate::wire::LinkInfo::Ethernet { source, destination } => {
                Link { source, destination, tags: parsed.vlan_tags }
            }
            _ => return,
        };
        if port == Port::Inside {
            if let Some(checker) = self.health.as_mut() {
                let claim = checker.claims(&parsed);
                if claim != Claim::Not {
                    self.counters.health_frames_received += 1;
                    checker.receive(frame);
                }
                if claim == Claim::Only {
                    return;
                }
            }
        }
        match (&parsed.network, port) {
            (NetworkPayload::Arp(arp), _) => {
                if port == Port::Inside {
                    let sender = IpAddr::V4(arp.sender_protocol_addr);
                    self.neighbours.learn(now_ns, sender, arp.sender_hardware_addr);
                    self.release_waiting_for_mac(now_ns, sender, out);
                    if arp.operation == ArpOperation::Reply && self.neighbours.answered(now_ns, sender) {
                        // The answer to the box's own request: not for the client's side.
                        return;
                    }
                }
                if port == Port::Inside
                    && arp.operation == ArpOperation::Request
                    && self.config.snat_address == Some(IpAddr::V4(arp.target_protocol_addr))
                {
                    out.push(
                        Port::Inside,
                        emit::arp_frame(
                            ArpOperation::Reply,
                            (self.config.inside_mac, arp.target_protocol_addr),
                            (arp.sender_hardware_addr, arp.sender_protocol_addr),
                            arp.sender_hardware_addr,
                            link.tags,
                        ),
                    );
                    return;
                }
                if port == Port::Outside && arp.operation == ArpOperation::Request && self.is_vip(IpAddr::V4(arp.target_protocol_addr)) {
                    self.counters.arp_replies += 1;
                    out.push(
                        Port::Outside,
                        emit::arp_frame(
                            ArpOperation::Reply,
                            (self.config.outside_mac, arp.target_protocol_addr),
                            (arp.sender_hardware_addr, arp.sender_protocol_addr),
                            arp.sender_hardware_addr,
                            link.tags,
                        ),
                    );
                    return;
                }
                self.bridge(port, frame, out);
            }
            (NetworkPayload::Ip { ip, transport }, _) => {
                // Learned from the frames backends send (a header that verifies, a unicast sender).
                if port == Port::Inside && ip.header_checksum_valid != Some(false) && !link.source.is_multicast() {
                    self.neighbours.learn(now_ns, ip.source, link.source);
                    // A session resolving that address goes on now, not at its next ARP retry.
                    self.release_waiting_for_mac(now_ns, ip.source, out);
                }
                // Nothing the box consumes may change its state before its checksums verify.
                let header_intact = ip.header_checksum_valid != Some(false);
                // (A checksum the sender's kernel left to offload is not corruption.)
                let tcp_corrupted = matches!(transport, Transport::Tcp(tcp) if !tcp.checksum_valid) && checksum != RxChecksum::NotComputed;
                if port == Port::Inside && (!header_intact || tcp_corrupted) {
                    // Fail closed: from the inside, a corrupted header or TCP segment cannot
                    // be told from a backend's segment with flipped address bits, whose payload
                    // is plaintext meant for a client through the box. Dropped, never bridged
                    // (an IP hop drops these as well).
                    self.count_bad_checksum(port);
                    return;
                }
                if matches!(transport, Transport::Fragment { .. }) && self.frame_is_the_boxs(port, ip.source, ip.destination) {
                    // Not reassembled: a TCP stack with path MTU discovery never fragments, and
                    // a ClientHello in fragments bridged inside would never be answered.
                    self.counters.fragments_dropped += 1;
                    return;
                }
                match transport {
                    Transport::Tcp(tcp) => {
                        let source = SocketAddr::new(ip.source, tcp.src_port);
                        let destination = SocketAddr::new(ip.destination, tcp.dst_port);
                        let key = FlowKey { source, destination };
                        if !(header_intact && tcp.checksum_valid) && self.consumes_tcp(port, key) {
                            self.count_bad_checksum(port);
                            return;
                        }
                        let syn = tcp.flags.contains(TcpFlags::SYN);
                        if syn && (tcp.flags.contains(TcpFlags::RST) || tcp.flags.contains(TcpFlags::FIN)) && self.consumes_tcp(port, key) {
                            // No TCP sends these; scanners do (RFC 9293: a SYN with RST is
                            // dropped, and one with FIN has no defined meaning).
                            self.counters.malformed_frames_dropped += 1;
                            return;
                        }
                        let session = match port {
                            Port::Outside => self.by_client.get(&key).copied(),
                            Port::Inside => self.by_backend.get(&key).copied(),
                        };
                        if let Some(id) = session {
                            self.with_session(id, now_ns, out, |session, context| {
                                session.segment(context, port, link, tcp)
                            });
                            return;
                        }
                        if port == Port::Inside {
                            if let Some(time_wait) = self.ended_backend_flows.live(now_ns, &key) {
                                // A backend still talking to an ended session: reset it, and
                                // never let its plaintext cross to the outside. After a clean
                                // close, its FIN sent again is acknowledged.
                                match time_wait {
                                    Some(ts_value) if tcp.flags.contains(TcpFlags::FIN) && !tcp.flags.contains(TcpFlags::RST) => {
                                        self.counters.time_wait_acks += 1;
                                        session::time_wait_ack(Port::Inside, link, key, tcp, ts_value, out);
                                    }
                                    Some(_) if tcp.payload.is_empty() && !tcp.flags.contains(TcpFlags::SYN) => {}
                                    _ if tcp.flags.contains(TcpFlags::RST) => {}
                                    _ => session::reset_segment(Port::Inside, link, key, tcp, out),
                                }
                                return;
                            }
                            if self.is_listener_backend(source) {
                                if self.bridged_backend_flows.live(now_ns, &key).is_some() {
                                    // A host's own connection to the backend, opened through the bridge.
                                    self.bridged_backend_flows.insert(now_ns, key, now_ns + BRIDGED_FLOW_TTL_NS, ());
                                    self.bridge(port, frame, out);
                                    return;
                                }
                                // Fail closed: a backend's flow the box does not know is one it
                                // forgot (it ended long ago, the box restarted), or a forgery; its
                                // plaintext must not reach the outside.
                                self.counters.orphan_backend_drops += 1;
                                if !tcp.flags.contains(TcpFlags::RST) {
                                    session::reset_segment(Port::Inside, link, key, tcp, out);
                                }
                                return;
                            }
                        }
                        if port == Port::Outside {
                            if let Some(listener) = self.listener_for(destination) {
                                let syn = tcp.flags.contains(TcpFlags::SYN);
                                let ack = tcp.flags.contains(TcpFlags::ACK);
                                if self.time_wait(now_ns, key, link, tcp, out) {
                                    return;
                                }
                                if let Some(seq) = self.alerted_clients.live(now_ns, &key) {
                                    if !syn && !tcp.flags.contains(TcpFlags::RST) {
                                        // Every segment still in flight from the client gets it.
                                        session::reset_after_alert(link, key, seq, out);
                                        return;
                                    }
                                    self.alerted_clients.remove(&key);
                                }
                                if syn && !ack && self.sessions.len() >= self.config.max_sessions {
                                    // Full: refused at once, not with a cookie whose ACK would be.
                                    self.counters.sessions_refused_full += 1;
                                    session::reset_segment(Port::Outside, link, key, tcp, out);
                                } else if syn && !ack && self.sessions.len() >= self.config.syn_cookies_after {
                                    self.answer_with_cookie(now_ns, key, link, tcp, out);
                                } else if syn && !ack {
                                    let client = ClientSyn::from_segment(tcp);
                                    self.new_session(now_ns, listener, key, link, tcp, client, None, out);
                                } else if let Some(client) = self.check_cookie(now_ns, key, tcp) {
                                    // The client's ACK completes a cookie handshake: the session
                                    // starts now, and this segment (perhaps a ClientHello) is its first.
                                    self.counters.syn_cookies_accepted += 1;
                                    let our_isn = tcp.ack_number.0.wrapping_sub(1);
                                    if let Some(id) = self.new_session(now_ns, listener, key, link, tcp, client, Some(our_isn), out) {
                                        self.with_session(id, now_ns, out, |session, context| {
                                            session.segment(context, port, link, tcp)
                                        });
                                    }
                                } else if !tcp.flags.contains(TcpFlags::RST) {
                                    // A segment for a VIP without a session: tell the client.
                                    self.counters.client_segments_without_session += 1;
                                    session::reset_segment(Port::Outside, link, key, tcp, out);
                                }
                                return;
                            }
                            if self.is_listener_backend(destination) {
                                // A host connecting to a backend directly, through the bridge: its
                                // SYN opens the way back, its traffic keeps it open.
                                let backend_side = FlowKey { source: destination, destination: source };
                                // Never for a flow of the box's own sessions (a forged SYN must not
                                // open the way for a session's plaintext once the box forgets it).
                                let opening = tcp.flags.contains(TcpFlags::SYN)
                                    && !tcp.flags.contains(TcpFlags::ACK)
                                    && !self.by_backend.contains_key(&backend_side)
                                    && !self.ended_backend_flows.contains(&backend_side);
                                if opening || self.bridged_backend_flows.live(now_ns, &backend_side).is_some() {
                                    self.bridged_backend_flows.insert(now_ns, backend_side, now_ns + BRIDGED_FLOW_TTL_NS, ());
                                }
                            }
                        }
                        self.bridge(port, frame, out);
                    }
                    Transport::Icmpv4(message) | Transport::Icmpv6(message) if message.mtu.is_some() => {
                        if !self.path_mtu(now_ns, port, ip.source, header_intact, message, out) {
                            self.bridge(port, frame, out);
                        }
                    }
                    Transport::Icmpv6(message) if message.msg_type == 135 || message.msg_type == 136 => {
                        let target = ndp_target(message.message);
                        if !message.checksum_valid {
                            // RFC 4861 7.1.1: never believed. Dropped if it was for the box.
                            if target.is_some_and(|target| self.ndp_for_box(now_ns, port, message.msg_type, IpAddr::V6(target))) {
                                self.count_bad_checksum(port);
                            } else {
                                self.bridge(port, frame, out);
                            }
                            return;
                        }
                        if port == Port::Inside && message.msg_type == 136 {
                            if let (Some(target), Some(mac)) = (target, ndp_link_address(message.message)) {
                                self.neighbours.learn(now_ns, IpAddr::V6(target), mac);
                                self.release_waiting_for_mac(now_ns, IpAddr::V6(target), out);
                                if self.neighbours.answered(now_ns, IpAddr::V6(target)) {
                                    return;
                                }
                            }
                        }
                        if port == Port::Inside && message.msg_type == 135 {
                            if let (Some(target), IpAddr::V6(asker)) = (target, ip.source) {
                                if self.config.snat_address == Some(IpAddr::V6(target)) {
                                    let reply = Link { source: self.config.inside_mac, destination: link.source, tags: link.tags };
                                    out.push(
                                        Port::Inside,
                                        emit::ndp_frame(true, reply, target, asker, target, self.config.inside_mac),
                                    );
                                    return;
                                }
                            }
                        }
                        if port == Port::Outside && message.msg_type == 135 {
                            if let (Some(target), IpAddr::V6(asker)) = (target, ip.source) {
                                if self.is_vip(IpAddr::V6(target)) {
                                    self.counters.ndp_advertisements += 1;
                                    let reply = Link { source: self.config.outside_mac, destination: link.source, tags: link.tags };
                                    out.push(
                                        Port::Outside,
                                        emit::ndp_frame(true, reply, target, asker, target, self.config.outside_mac),
                                    );
                                    return;
                                }
                            }
                        }
                        self.bridge(port, frame, out);
                    }
                    _ => self.bridge(port, frame, out),
                }
            }
            _ => self.bridge(port, frame, out),
        }
    }

    /// Neighbour information (ARP, NDP advertisement) another loop received on the inside port
    /// and handled: this engine only learns from it (its sessions waiting for that address go
    /// on); nothing is answered or bridged.
    pub fn learn_neighbour(&mut self, now_ns: u64, frame: &[u8], out: &mut Output) {
        let Ok(parsed) = parse_frame_with(LinkType::Ethernet, frame, TransportChecksum::Verify) else { return };
        // Shared with the health checker: the answer may be to its request.
        if let Some(checker) = self.health.as_mut().filter(|checker| checker.claims(&parsed) != Claim::Not) {
            self.counters.health_frames_received += 1;
            checker.receive(frame);
        }
        let learned = match &parsed.network {
            NetworkPayload::Arp(arp) => Some((IpAddr::V4(arp.sender_protocol_addr), arp.sender_hardware_addr)),
            NetworkPayload::Ip { transport: Transport::Icmpv6(message), .. } if message.msg_type == 136 && message.checksum_valid => {
                match (ndp_target(message.message), ndp_link_address(message.message)) {
                    (Some(target), Some(mac)) => Some((IpAddr::V6(target), mac)),
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some((address, mac)) = learned {
            self.neighbours.learn(now_ns, address, mac);
            self.neighbours.answered(now_ns, address);
            self.release_waiting_for_mac(now_ns, address, out);
        }
    }

    /// The end of a receive batch: what its frames left owed goes out: for each session whose
    /// backend sent bytes in order, one record of them to the client and one acknowledgement.
    /// Call it after each batch given to [`Engine::handle_received`] and before sending what the
    /// batch produced; [`Engine::poll`] calls it too, so that a caller that forgets delays
    /// records and acknowledgements, never loses them.
    pub fn end_batch(&mut self, now_ns: u64, out: &mut Output) {
        if self.batch_work.is_empty() {
            return;
        }
        let mut owed = std::mem::take(&mut self.batch_work);
        for &id in &owed {
            self.with_session(id, now_ns, out, |session, context| {
                session.batch_listed = false;
                session.end_batch(context);
                None
            });
        }
        // The list's room is kept for the next batch.
        owed.clear();
        self.batch_work = owed;
    }

    /// Timers: retransmissions, backends to (re)try, idle sessions.
    pub fn poll(&mut self, now_ns: u64, out: &mut Output) {
        self.end_batch(now_ns, out);
        self.collect_handshakes(now_ns, out);
        if let Some(checker) = self.health.as_mut().filter(|checker| checker.next_deadline_ns() <= now_ns) {
            let counters = &mut self.counters;
            let changes = checker.poll(now_ns, |frame| {
                counters.health_frames_sent += 1;
                out.push(Port::Inside, Some(frame));
            });
            for change in changes {
                match change {
                    crate::health::HealthChange::Up(backend, up) => {
                        if up {
                            self.counters.backends_up += 1;
                        } else {
                            self.counters.backends_down += 1;
                        }
                        self.set_backend_health(backend, up);
                    }
                    crate::health::HealthChange::Agent(backend, state) => self.set_backend_agent(backend, state),
                }
            }
        }
        // Every deferred frame waits the same time, so the queue is in time order.
        while self.deferred.front().is_some_and(|(at, _)| *at <= now_ns) {
            if let Some((_, frame)) = self.deferred.pop_front() {
                out.push(Port::Outside, Some(frame));
            }
        }
        while let Some((deadline_ns, id)) = self.timers.pop_due(now_ns) {
            // A stale entry: the session ended, or was scheduled again earlier.
            let Some(session) = self.sessions.get_mut(&id) else { continue };
            if session.timer_ns != deadline_ns {
                continue;
            }
            session.timer_ns = timers::NEVER;
            self.counters.session_timer_runs += 1;
            self.with_session(id, now_ns, out, |session, context| session.poll(context));
        }
        #[cfg(debug_assertions)]
        self.audit_timers(now_ns, out);
    }

    /// Debug builds (and so every test): a session not yet due finds nothing to do when polled.
    /// One that did would have a deadline its timer entry misses: a retransmission or a timeout
    /// waiting for a poll that never comes.
    #[cfg(debug_assertions)]
    fn audit_timers(&mut self, now_ns: u64, out: &mut Output) {
        if self.sessions.len() > 4096 {
            return;
        }
        let not_due: Vec<(u64, u64)> =
            self.sessions.iter().filter(|(_, s)| s.timer_ns > now_ns).map(|(id, s)| (*id, s.timer_ns)).collect();
        for (id, timer_ns) in not_due {
            self.with_session(id, now_ns, out, |session, context| {
                let before = (context.out.outside.len(), context.out.inside.len(), context.deferred.len(), context.counters.clone());
                let event = session.poll(context);
                let after = (context.out.outside.len(), context.out.inside.len(), context.deferred.len(), context.counters.clone());
                assert!(
                    event.is_none() && before == after,
                    "session {id}: its timers had work at {now_ns}, before its timer entry at {timer_ns}: \
                     ended {}, frames out {:?} -> {:?}, deferred {} -> {}, counters {:?} -> {:?}",
                    event.is_some(),
                    (before.0, before.1),
                    (after.0, after.1),
                    before.2,
                    after.2,
                    before.3,
                    after.3
                );
                event
            });
        }
    }

    /// Entries in the timer queue (live and stale), for tests and metrics.
    pub fn timer_entries(&self) -> usize {
        self.timers.len()
    }

    /// Addresses in the inside neighbour cache.
    pub fn neighbour_entries(&self) -> usize {
        self.neighbours.len()
    }

    /// Picks up the handshakes the pool finished (cheap when there are none: call it every
    /// turn of the loop).
    pub fn collect_handshakes(&mut self, now_ns: u64, out: &mut Output) {
        let results: Vec<handshake::JobResult> = match &self.pool {
            Some(pool) => pool.results().collect(),
            None => return,
        };
        for result in results {
            let id = result.session;
            self.with_session(id, now_ns, out, |session, context| session.tls_result(context, result));
        }
    }

    /// When [`Engine::poll`] next has work (a session's timer, a deferred frame), if ever: the
    /// loop may sleep until then when no frame comes.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        if !self.batch_work.is_empty() {
            return Some(0);
        }
        let deferred = self.deferred.front().map(|(at, _)| *at);
        let health = self.health.as_ref().map(|checker| checker.next_deadline_ns());
        [self.timers.next_ns(), deferred, health].into_iter().flatten().min()
    }

    /// Whether finished handshakes wait for [`Engine::collect_handshakes`]: checked by a loop
    /// after it announced it will sleep (its doorbell), so that no result waits for a timeout.
    pub fn handshake_results_ready(&self) -> bool {
        self.pool.as_ref().is_some_and(|pool| pool.has_results())
    }

    fn bridge(&mut self, port: Port, frame: &[u8], out: &mut Output) {
        self.counters.frames_bridged += 1;
        let other = match port {
            Port::Outside => Port::Inside,
            Port::Inside => Port::Outside,
        };
        out.push_copy(other, frame);
    }

    fn is_vip(&self, address: IpAddr) -> bool {
        self.config.listeners.iter().zip(&self.retired_listeners).any(|(listener, retired)| !retired && listener.vip.ip() == address)
    }

    fn listener_for(&self, destination: SocketAddr) -> Option<usize> {
        self.config
            .listeners
            .iter()
            .zip(&self.retired_listeners)
            .position(|(listener, retired)| !retired && listener.vip == destination)
    }

    /// RFC 6528's initial sequence number for `key`: a clock ticking every 4 µs plus a keyed
    /// hash of the 4-tuple, so that ISNs of one 4-tuple increase over time (a new connection's
    /// lies beyond an old one's) and no outsider can predict another 4-tuple's.
    fn isn(&self, now_ns: u64, key: FlowKey) -> u32 {
        let mut input = Vec::with_capacity(36);
        push_address(&mut input, key.source);
        push_address(&mut input, key.destination);
        let mut hash = [0u8; 4];
        cutls_crypto::keys::hkdf_expand(cutls_crypto::HashAlgorithm::Sha256, &self.config.keys.isn_key, &input, &mut hash);
        ((now_ns / 4_000) as u32).wrapping_add(u32::from_be_bytes(hash))
    }

    /// Creates a session for a SYN (or for a cookie's ACK, with `cookie_isn` our ISN, its
    /// SYN-ACK already sent) and returns its id.
    #[allow(clippy::too_many_arguments)]
    fn new_session(
        &mut self,
        now_ns: u64,
        listener: usize,
        key: FlowKey,
        link: Link,
        tcp: &crate::wire::TcpSegment<'_>,
        client: ClientSyn,
        cookie_isn: Option<u32>,
        out: &mut Output,
    ) -> Option<u64> {
        let setup = &self.config.listeners[listener];
        if setup.backends.is_empty() {
            session::reset_segment(Port::Outside, link, key, tcp, out);
            return None;
        }
        if self.sessions.len() >= self.config.max_sessions {
            self.counters.sessions_refused_full += 1;
            session::reset_segment(Port::Outside, link, key, tcp, out);
            return None;
        }
        let per_client_limit = self.config.max_sessions_per_client;
        if per_client_limit > 0 && self.per_client.get(&key.source.ip()).is_some_and(|&count| count as usize >= per_client_limit) {
            self.counters.sessions_refused_per_client += 1;
            session::reset_segment(Port::Outside, link, key, tcp, out);
            return None;
        }
        let setup = &self.config.listeners[listener];
        let backends = setup.backends.clone();
        let Some((backend, side)) = self.choose_backend(now_ns, &backends, listener, false, key.source) else {
            session::reset_segment(Port::Outside, link, key, tcp, out);
            return None;
        };
        let isn = cookie_isn.unwrap_or_else(|| self.isn(now_ns, key));
        let id = self.next_id;
        self.next_id += self.config.loop_share.loops.max(1) as u64;
        let setup = &self.config.listeners[listener];
        let deadline = now_ns.saturating_add(self.config.handshake_timeout_ns);
        let Some(session) =
            Session::new(id, now_ns, listener, setup, key.source, key.destination, backend, side, link, &client, isn, deadline)
        else {
            session::reset_segment(Port::Outside, link, key, tcp, out);
            return None;
        };
        self.counters.sessions_started += 1;
        if per_client_limit > 0 {
            *self.per_client.entry(key.source.ip()).or_insert(0) += 1;
        }
        self.by_client.insert(key, id);
        self.bridged_backend_flows.remove(&FlowKey { source: backend, destination: side.source });
        self.by_backend.insert(FlowKey { source: backend, destination: side.source }, id);
        self.sessions.insert(id, session);
        *self.backend_sessions.entry(backend).or_insert(0) += 1;
        self.events.push(|| {
            Event::Opened(events::Opened {
                id,
                listener,
                client: key.source,
                vip: key.destination,
                backend,
                backend_source: side.source,
                at_ns: now_ns,
            })
        });
        if cookie_isn.is_none() {
            self.with_session(id, now_ns, out, |session, context| session.start(context));
        }
        Some(id)
    }

    /// Answers a SYN with a SYN cookie: our ISN carries a time slot, an MSS class and a MAC of
    /// the 4-tuple and the client's ISN, and (when the SYN has timestamps) our timestamp its
    /// window scale and SACK permission ([`cookie`]), so the client's ACK can rebuild the
    /// session without any state kept for the SYN.
    fn answer_with_cookie(&mut self, now_ns: u64, key: FlowKey, link: Link, tcp: &crate::wire::TcpSegment<'_>, out: &mut Output) {
        let client_mss = tcp.options.max_segment_size.unwrap_or(536);
        let class = COOKIE_MSS.iter().rposition(|&mss| mss <= client_mss).unwrap_or(0);
        let slot = cookie_slot(now_ns);
        let cookie = self.cookie(key, tcp.seq_number.0, slot, class as u32);
        self.counters.syn_cookies_sent += 1;
        let mut options = TcpOptions { max_segment_size: Some(COOKIE_MSS[class]), ..TcpOptions::default() };
        if let Some(theirs) = tcp.options.timestamp {
            // Without timestamps there is nowhere to keep the other options: only the MSS is
            // offered (as Linux does).
            let kept = cookie::CookieOptions { window_scale: tcp.options.window_scale, sack_permitted: tcp.options.sack_permitted };
            options.timestamp = Some(TcpTimestamp { value: kept.encode(session::ts_now(now_ns)), echo_reply: theirs.value });
            options.window_scale = tcp.options.window_scale.map(|_| session::OUR_WINDOW_SCALE);
            options.sack_permitted = tcp.options.sack_permitted;
        }
        session::syn_ack_with_cookie(link, key, tcp, cookie, options, out);
    }

    /// The session a cookie's ACK stands for, if the cookie is ours and recent (and, with
    /// timestamps, the echoed one could be ours).
    fn check_cookie(&self, now_ns: u64, key: FlowKey, tcp: &crate::wire::TcpSegment<'_>) -> Option<ClientSyn> {
        if !tcp.flags.contains(TcpFlags::ACK) || tcp.flags.contains(TcpFlags::SYN) || tcp.flags.contains(TcpFlags::RST) {
            return None;
        }
        let cookie = tcp.ack_number.0.wrapping_sub(1);
        let client_isn = tcp.seq_number.0.wrapping_sub(1);
        let class = (cookie >> 25) & 0x3;
        let now = cookie_slot(now_ns);
        let valid = [now, now.wrapping_sub(1)]
            .into_iter()
            .any(|slot| cookie >> 27 == slot & 0x1f && self.cookie(key, client_isn, slot, class) == cookie);
        if !valid {
            return None;
        }
        let kept = match tcp.options.timestamp {
            Some(timestamp) => cookie::CookieOptions::decode(timestamp.echo_reply, session::ts_now(now_ns))?,
            None => cookie::CookieOptions::ONLY_MSS,
        };
        Some(ClientSyn::from_cookie(client_isn, tcp.window, COOKIE_MSS[class as usize], kept, tcp.options.timestamp))
    }

    fn cookie(&self, key: FlowKey, client_isn: u32, slot: u32, class: u32) -> u32 {
        let mut input = Vec::with_capacity(48);
        push_address(&mut input, key.source);
        push_address(&mut input, key.destination);
        input.extend_from_slice(&client_isn.to_be_bytes());
        input.extend_from_slice(&slot.to_be_bytes());
        input.push(class as u8);
        let mut mac = [0u8; 4];
        cutls_crypto::keys::hkdf_expand(cutls_crypto::HashAlgorithm::Sha256, &self.config.keys.cookie_key, &input, &mut mac);
        ((slot & 0x1f) << 27) | (class << 25) | (u32::from_be_bytes(mac) & 0x01ff_ffff)
    }

    /// Runs `work` on a session with what it may touch of the engine, then applies its events.
    fn with_session(
        &mut self,
        id: u64,
        now_ns: u64,
        out: &mut Output,
        work: impl FnOnce(&mut Session, &mut session::Context<'_>) -> Option<SessionEvent>,
    ) {
        let Some(session) = self.sessions.get_mut(&id) else { return };
        let in_flight_before = session.in_flight_to_backend();
        let mut context = session::Context {
            now_ns,
            out,
            counters: &mut self.counters,
            neighbours: &mut self.neighbours,
            pool: self.pool.as_ref(),
            idle_timeout_ns: self.config.idle_timeout_ns,
            close_timeout_ns: self.config.close_timeout_ns,
            deferred: &mut self.deferred,
            congestion: self.config.congestion,
            events: &mut self.events,
            response_times: &mut self.response_samples,
        };
        let mut event = work(session, &mut context);
        let (backend, in_flight_after) = (session.backend(), session.in_flight_to_backend());
        if in_flight_after != in_flight_before {
            let total = self.backend_in_flight.entry(backend).or_default();
            *total = (*total + in_flight_after).saturating_sub(in_flight_before);
        }
        for (backend, sample) in self.response_samples.drain(..) {
            let sample_ns = match sample {
                balance::ResponseSample::Answer(sample_ns) => {
                    self.response_histograms.entry(backend).or_default().record(sample_ns);
                    sample_ns
                }
                balance::ResponseSample::ConnectFailed => balance::CONNECT_FAILURE_NS,
            };
            self.response_times.entry(backend).or_default().sample(now_ns, sample_ns);
        }
        if let Some(SessionEvent::Passthrough) = event {
            event = self.pass_through(id, now_ns, out);
        }
        let closed = matches!(event, Some(SessionEvent::Closed));
        match event {
            Some(SessionEvent::Ended(reason)) => reason.count(&mut self.counters),
            Some(SessionEvent::Closed) => EndReason::Fin.count(&mut self.counters),
            _ => {
                self.track(id);
                return;
            }
        }
        self.waiting_for_mac.remove(&id);
        if self.timers.len() > 4096 + 2 * self.sessions.len() {
            // Mostly ended sessions' entries: keep the live ones (amortised: the queue at least
            // halves each time).
            let sessions = &self.sessions;
            self.timers.retain(|deadline_ns, id| sessions.get(&id).is_some_and(|session| session.timer_ns == deadline_ns));
        }
        {
            if let Some(session) = self.sessions.remove(&id) {
                self.forget_backend_session(session.backend());
                if let Some(total) = self.backend_in_flight.get_mut(&session.backend()) {
                    *total = total.saturating_sub(session.in_flight_to_backend());
                }
                if self.events.enabled() {
                    let reason = match event {
                        Some(SessionEvent::Ended(reason)) => reason,
                        _ => EndReason::Fin,
                    };
                    self.events.push(|| Event::Ended { id, at_ns: now_ns, reason, progress: session.progress() });
                }
                let client_flow = FlowKey { source: session.client(), destination: session.vip() };
                if let std::collections::hash_map::Entry::Occupied(mut entry) = self.per_client.entry(session.client().ip()) {
                    *entry.get_mut() -= 1;
                    if *entry.get() == 0 {
                        entry.remove();
                    }
                }
                self.by_client.remove(&client_flow);
                let backend_flow = FlowKey { source: session.backend(), destination: session.backend_source() };
                self.by_backend.remove(&backend_flow);
                let time_wait = closed.then(|| session.backend_ts_value());
                self.ended_backend_flows.insert(now_ns, backend_flow, now_ns + ENDED_FLOW_TTL_NS, time_wait);
                if let Some(seq) = session.client_reset_seq() {
                    self.alerted_clients.insert(now_ns, client_flow, now_ns + session::ALERT_LINGER_NS, seq);
                }
                if closed {
                    let until = now_ns + TIME_WAIT_NS;
                    self.time_wait_clients.insert(now_ns, client_flow, until, session.client_timestamps());
                }
            }
        }
    }

    /// An ICMP "fragmentation needed" / ICMPv6 "packet too big": when it quotes a segment of a
    /// session (the box's own, toward the client on the outside port or toward the backend on
    /// the inside one), the session takes the smaller MTU and the message is consumed; others
    /// are bridged like any frame the box does not terminate.
    fn path_mtu(
        &mut self,
        now_ns: u64,
        port: Port,
        reporter: IpAddr,
        header_intact: bool,
        message: &crate::wire::IcmpMessage<'_>,
        out: &mut Output,
    ) -> bool {
        let (Some(mtu), Some(quoted)) = (message.mtu, message.embedded) else { return false };
        let (Some((source_port, destination_port)), Some(seq)) = (quoted.ports, quoted.tcp_seq_number) else { return false };
        if quoted.protocol != crate::wire::IpProtocol::Tcp {
            return false;
        }
        let sender = SocketAddr::new(quoted.source, source_port);
        let receiver = SocketAddr::new(quoted.destination, destination_port);
        // The quoted packet went from the box: keyed as the other side's flow.
        let key = FlowKey { source: receiver, destination: sender };
        let id = match port {
            Port::Outside => self.by_client.get(&key).copied(),
            Port::Inside => self.by_backend.get(&key).copied(),
        };
        let Some(id) = id else { return false };
        if !header_intact {
            self.count_bad_checksum(port);
            return true;
        }
        if !message.checksum_valid {
            self.counters.icmp_ignored += 1;
            return true;
        }
        self.with_session(id, now_ns, out, |session, context| session.path_mtu(context, port, reporter, mtu, seq.0));
        true
    }

    /// Moves session `id` to its listener's passthrough pool: another backend, and so another
    /// backend flow.
    fn pass_through(&mut self, id: u64, now_ns: u64, out: &mut Output) -> Option<SessionEvent> {
        let session = self.sessions.get(&id)?;
        let (listener, client, old_flow) =
            (session.listener(), session.client(), FlowKey { source: session.backend(), destination: session.backend_source() });
        let backends = self.config.listeners[listener].passthrough.as_ref().map(|route| route.backends.clone()).unwrap_or_default();
        // The flow chosen at the SYN was never used (no SYN went to it): free it first.
        self.by_backend.remove(&old_flow);
        let Some((backend, side)) = self.choose_backend(now_ns, &backends, listener, true, client) else {
            self.with_session(id, now_ns, out, |session, context| {
                session.refuse(context);
                Some(SessionEvent::Ended(EndReason::BackendUnreachable))
            });
            return None;
        };
        self.bridged_backend_flows.remove(&FlowKey { source: backend, destination: side.source });
        self.by_backend.insert(FlowKey { source: backend, destination: side.source }, id);
        self.events.push(|| Event::Rerouted { id, backend, backend_source: side.source });
        // Counted on its new backend from here (on failure above, its end forgets the old).
        self.forget_backend_session(old_flow.source);
        *self.backend_sessions.entry(backend).or_insert(0) += 1;
        self.with_session(id, now_ns, out, |session, context| {
            session.start_passthrough(context, backend, side);
            None
        });
        None
    }

    /// A backend of `backends` (round robin, the listener's own counter for its main or its
    /// passthrough pool) and where to reach it from, for a client at `client`; `None` (counted)
    /// when none can be used.
    fn choose_backend(
        &mut self,
        now_ns: u64,
        backends: &[SocketAddr],
        listener: usize,
        passthrough: bool,
        client: SocketAddr,
    ) -> Option<(SocketAddr, BackendSide)> {
        if backends.is_empty() {
            return None;
        }
        let counter = if passthrough { &mut self.next_passthrough[listener] } else { &mut self.next_backend[listener] };
        let start = *counter;
        *counter = start.wrapping_add(1);
        let count = backends.len();
        // Transparent mode talks to the backend from the client's own address and port: a
        // client port used toward two VIPs that share a backend (Linux does that) would give
        // two sessions one backend 4-tuple. Take the next backend without one; with none, the
        // client is refused and tries another port.
        let free = |backend: &SocketAddr| {
            self.config.snat_address.is_some()
                || !self.by_backend.contains_key(&FlowKey { source: *backend, destination: client })
        };
        let loops = self.config.loop_share.loops.max(1);
        let sessions_on = |backend: &SocketAddr| self.backend_sessions.get(backend).copied().unwrap_or(0);
        // One pass in turn order: what is in rotation, has room under its `max_sessions` and a
        // free 4-tuple goes to the scratch list (kept, so a new session allocates nothing).
        let mut usable = std::mem::take(&mut self.backend_scratch);
        usable.clear();
        let (mut in_rotation, mut with_room) = (false, false);
        for backend in (0..count).map(|i| backends[start.wrapping_add(i) % count]) {
            if self.backend_admin.get(&backend).is_some_and(|&admin| admin != BackendAdmin::Enabled)
                || self.backends_down.contains(&backend)
                || self.backend_agents.get(&backend).is_some_and(|agent| !agent.takes_sessions())
            {
                continue;
            }
            in_rotation = true;
            let limit = self.config.balancing.options(&backend).max_sessions;
            if limit.is_some_and(|limit| sessions_on(&backend) as usize >= limit.div_ceil(loops)) {
                continue;
            }
            with_room = true;
            if free(&backend) {
                usable.push(backend);
            }
        }
        let balance = self.config.balancing.balance(listener, passthrough);
        let response_ns = |backend: &SocketAddr| self.response_times.get(backend).map_or(0.0, |time| time.average_at(now_ns));
        let in_flight = |backend: &SocketAddr| self.backend_in_flight.get(backend).copied().unwrap_or(0);
        let mut state = self.balance_random;
        let chosen = balance::pick(
            balance,
            &usable,
            sessions_on,
            // An agent's percentage scales the weight (all weights by 100, so that 1% of 1 is
            // still a weight).
            |backend| {
                let options = self.config.balancing.options(backend);
                let percent = self.backend_agents.get(backend).map_or(100, |agent| agent.weight_percent);
                BackendOptions { weight: options.weight.saturating_mul(percent), ..options }
            },
            response_ns,
            in_flight,
            &mut || balance::xorshift(&mut state),
        );
        self.balance_random = state;
        self.backend_scratch = usable;
        if !in_rotation {
            self.counters.backends_out_of_rotation_refusals += 1;
            return None;
        }
        if !with_room {
            self.counters.backends_full_refusals += 1;
            return None;
        }
        let Some(backend) = chosen else {
            self.counters.backend_tuple_collisions += 1;
            return None;
        };
        let side = match self.config.snat_address {
            None => BackendSide { source: client, mac: None },
            Some(address) => {
                // None: every port toward this backend is in use.
                let port = self.snat_port(address, backend)?;
                BackendSide { source: SocketAddr::new(address, port), mac: Some(self.config.inside_mac) }
            }
        };
        Some((backend, side))
    }

    fn forget_backend_session(&mut self, backend: SocketAddr) {
        if let std::collections::hash_map::Entry::Occupied(mut entry) = self.backend_sessions.entry(backend) {
            *entry.get_mut() = entry.get().saturating_sub(1);
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }

    /// A free SNAT port toward `backend` (not used by a live or recently ended session), of
    /// those that steer to this loop.
    fn snat_port(&mut self, address: IpAddr, backend: SocketAddr) -> Option<u16> {
        let LoopShare { index, loops } = self.config.loop_share;
        for _ in FIRST_SNAT_PORT..=u16::MAX {
            let port = self.next_snat_port;
            self.next_snat_port = if port == u16::MAX { FIRST_SNAT_PORT } else { port + 1 };
            if crate::steer::snat_port_steers_to(port, loops) != index || crate::health::HEALTH_PORTS.contains(&port) {
                continue;
            }
            let key = FlowKey { source: backend, destination: SocketAddr::new(address, port) };
            if !self.by_backend.contains_key(&key) && !self.ended_backend_flows.contains(&key) {
                return Some(port);
            }
        }
        None
    }

    /// Whether a TCP segment of flow `key` on `port` is one the box would consume rather than
    /// bridge: for a session, a VIP, the SNAT address, or an ended session's backend flow.
    fn consumes_tcp(&self, port: Port, key: FlowKey) -> bool {
        match port {
            Port::Outside => self.by_client.contains_key(&key) || self.listener_for(key.destination).is_some(),
            Port::Inside => {
                self.by_backend.contains_key(&key)
                    || self.ended_backend_flows.contains(&key)
                    || self.config.snat_address == Some(key.destination.ip())
                    || self.is_listener_backend(key.source)
            }
        }
    }

    /// Whether `address` is a backend (address and port) of a listener: its TCP frames belong
    /// to the box's sessions, none to the bridge.
    fn is_listener_backend(&self, address: SocketAddr) -> bool {
        self.backend_addresses.contains(&address)
    }

    /// Whether an IP packet the box does not otherwise take (one that does not parse, a
    /// fragment) belongs to it: addressed to a VIP on the outside port, or from a terminating
    /// listener's backend address on the inside port (fail closed: it could carry plaintext).
    fn frame_is_the_boxs(&self, port: Port, source: IpAddr, destination: IpAddr) -> bool {
        match port {
            Port::Outside => self.is_vip(destination),
            Port::Inside => self.backend_addresses.iter().any(|backend| backend.ip() == source),
        }
    }

    /// Whether an NDP message on `port` about `target` is one the box would consume.
    fn ndp_for_box(&self, now_ns: u64, port: Port, msg_type: u8, target: IpAddr) -> bool {
        match (port, msg_type) {
            (Port::Inside, 136) => self.neighbours.asking(now_ns, target),
            (Port::Inside, 135) => self.config.snat_address == Some(target),
            (Port::Outside, 135) => self.is_vip(target),
            _ => false,
        }
    }

    fn count_bad_checksum(&mut self, port: Port) {
        match port {
            Port::Outside => self.counters.bad_checksum_drops_outside += 1,
            Port::Inside => self.counters.bad_checksum_drops_inside += 1,
        }
    }

    /// A client segment for a flow the box closed with FINs: a FIN sent again is acknowledged
    /// (the box's last ACK was lost), a RST ends the wait, a pure ACK is dropped; a SYN ends the
    /// wait and starts a new connection, and anything else gets the RST a VIP without a session
    /// gives. Returns whether the segment was handled here.
    fn time_wait(&mut self, now_ns: u64, key: FlowKey, link: Link, tcp: &crate::wire::TcpSegment<'_>, out: &mut Output) -> bool {
        let Some(timestamps) = self.time_wait_clients.live(now_ns, &key) else { return false };
        let flags = tcp.flags;
        if flags.contains(TcpFlags::SYN) || flags.contains(TcpFlags::RST) {
            self.time_wait_clients.remove(&key);
            return flags.contains(TcpFlags::RST);
        }
        if flags.contains(TcpFlags::FIN) {
            self.counters.time_wait_acks += 1;
            let ts_value = timestamps.then(|| session::ts_now(now_ns));
            session::time_wait_ack(Port::Outside, link, key, tcp, ts_value, out);
            return true;
        }
        tcp.payload.is_empty()
    }

    /// What the engine keeps about a live session after each call into it: its timer entry,
    /// and whether it waits for a MAC.
    fn track(&mut self, id: u64) {
        let Some(session) = self.sessions.get_mut(&id) else { return };
        let deadline = session.next_deadline(self.config.idle_timeout_ns, self.config.close_timeout_ns);
        session.timer_ns = self.timers.schedule(id, deadline, session.timer_ns);
        if !session.batch_listed && session.owes_batch_work() {
            session.batch_listed = true;
            self.batch_work.push(id);
        }
        if session.waits_for_backend_mac() {
            self.waiting_for_mac.insert(id);
        } else if !self.waiting_for_mac.is_empty() {
            // Nearly always empty: no hash of the id per segment.
            self.waiting_for_mac.remove(&id);
        }
    }

    /// `address` was learned on the inside port: the sessions waiting for it go on.
    fn release_waiting_for_mac(&mut self, now_ns: u64, address: IpAddr, out: &mut Output) {
        if self.waiting_for_mac.is_empty() {
            return;
        }
        let waiting: Vec<u64> = self
            .waiting_for_mac
            .iter()
            .copied()
            .filter(|id| self.sessions.get(id).is_some_and(|session| session.backend().ip() == address))
            .collect();
        for id in waiting {
            self.with_session(id, now_ns, out, |session, context| session.poll(context));
        }
    }
}

/// An address and port as bytes, for the ISN and cookie hashes.
fn push_address(input: &mut Vec<u8>, address: SocketAddr) {
    match address.ip() {
        IpAddr::V4(v4) => input.extend_from_slice(&v4.octets()),
        IpAddr::V6(v6) => input.extend_from_slice(&v6.octets()),
    }
    input.extend_from_slice(&address.port().to_be_bytes());
}

/// The target address of an NDP solicitation or advertisement (bytes 8..24 of the message).
pub(crate) fn ndp_target(message: &[u8]) -> Option<Ipv6Addr> {
    let bytes: [u8; 16] = message.get(8..24)?.try_into().ok()?;
    Some(Ipv6Addr::from(bytes))
}

/// The link-layer address option (source or target) of an NDP message.
fn ndp_link_address(message: &[u8]) -> Option<EthernetAddress> {
    let mut options = message.get(24..)?;
    while options.len() >= 8 {
        let kind = options[0];
        let len = options[1] as usize * 8;
        if len == 0 || len > options.len() {
            return None;
        }
        if (kind == 1 || kind == 2) && len >= 8 {
            return EthernetAddress::from_bytes(&options[2..8]);
        }
        options = &options[len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_pool_reuses_buffers_and_trims_what_a_second_did_not_need() {
        let mut pool = FramePool::default();
        let mut buffer = pool.take();
        assert!(buffer.capacity() >= FramePool::ROOM);
        buffer.extend_from_slice(b"a frame");
        let address = buffer.as_ptr();
        pool.give(buffer);
        let again = pool.take();
        assert_eq!((again.as_ptr(), again.len()), (address, 0), "the same buffer, emptied");
        pool.give(again);
        // Huge and empty buffers are not kept.
        pool.give(Vec::with_capacity(FramePool::LARGEST + 1));
        pool.give(Vec::new());
        assert_eq!(pool.spare(), 1);

        // A burst: 3,000 buffers out at once, then back.
        let burst: Vec<Vec<u8>> = (0..3000).map(|_| pool.take()).collect();
        burst.into_iter().for_each(|buffer| pool.give(buffer));
        assert_eq!(pool.spare(), 3000);
        // The burst's second needed them all (none stayed spare): kept.
        pool.trim();
        assert_eq!(pool.spare(), 3000);
        // A quiet second: all 3,000 stayed spare, so all but KEEP go.
        pool.trim();
        assert_eq!(pool.spare(), FramePool::KEEP);
    }
}
