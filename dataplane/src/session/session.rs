//! One TLS session: the client's TCP endpoint during the handshake, the backend connection,
//! and then the splice.
//!
//! Sequence spaces (DESIGN.md, "Sequence space"):
//! - client -> box: client offsets count every byte after the client's SYN (handshake records,
//!   then application records); the [`RecordOpener`] gets them as stream offsets.
//! - box -> backend: the box replays the client's SYN, so the backend's view of the client's
//!   stream starts at the client's ISN; plaintext offset P is sequence `client_isn + 1 + P`.
//! - backend -> box: plaintext offsets from the backend's ISN.
//! - box -> client: our offsets count the handshake bytes rustls wrote, then the records the
//!   box seals, one per backend segment, kept in a record map until the client acknowledges
//!   them, so a retransmission in any segmentation is rebuilt byte for byte.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use cutls_crypto::{
    ContentType, OpenError, OpenOutput, OpenerConfig, RecordOpener, RecordSealer, ReleaseMode, Secret,
    Stop,
};
use rustls::ServerConnection;

use super::balance;
use super::acceptance::{self, Arrival, Guard, Position, Refusal, Verdict};
use super::custody::{Custody, CustodyAction};
use super::reorder::{Held, Reorder, CLIENT_REORDER_LIMIT};
use super::sender::{CongestionControl, Sender, TimerOutcome, SEND_BUFFER_LIMIT};
use super::emit::{self, Link, Segment};
use super::handover::{SecretLog, SessionKeys};
use super::handshake::{self, HandshakePool, Job, JobResult, Outcome};
use super::client_hello::{self, FirstFlight};
use super::events::{Event, EventQueue, Phase, Progress, TcpFacts};
use super::neighbours::Neighbours;
use super::post_handshake::{PostHandshake, Violation};
use super::{Counters, EndReason, FlowKey, FramePool, ListenerSetup, Output, PassthroughRoute, Port};
use crate::wire::{ArpOperation, EthernetAddress, SackBlock, SackBlocks, SeqNumber, SeqSpace, TcpFlags, TcpOptions, TcpSegment, TcpTimestamp};

/// What a session may touch of the engine during one call.
pub(crate) struct Context<'a> {
    pub now_ns: u64,
    pub out: &'a mut Output,
    pub counters: &'a mut Counters,
    /// MACs learned on the inside port, and the box's own requests.
    pub neighbours: &'a mut Neighbours,
    pub idle_timeout_ns: u64,
    /// How long a session that has begun to close may stay idle (FIN-WAIT-2, CLOSE-WAIT).
    pub close_timeout_ns: u64,
    /// Where handshakes run: `None` inline.
    pub pool: Option<&'a HandshakePool>,
    /// Frames for the outside port to send later (at the time given): the RST that follows a
    /// fatal alert.
    pub deferred: &'a mut std::collections::VecDeque<(u64, Vec<u8>)>,
    /// How the box's sender toward a client sizes its congestion window.
    pub congestion: CongestionControl,
    /// What the control plane hears of the session.
    pub events: &'a mut EventQueue,
    /// Backend response times measured in this call: (backend, ns).
    pub response_times: &'a mut Vec<(SocketAddr, balance::ResponseSample)>,
}

pub(crate) enum SessionEvent {
    /// The session is over; the engine counts the reason (one place for every end).
    Ended(EndReason),
    /// Both sides closed with FIN and acknowledged each other's: the engine keeps the two
    /// 4-tuples in TIME-WAIT a while (a peer whose last ACK from the box was lost sends its FIN
    /// again and must get that ACK, not a RST).
    Closed,
    /// The connection is to be spliced as plain TCP to the listener's passthrough pool: the
    /// engine picks the backend and calls [`Session::start_passthrough`].
    Passthrough,
}

impl SessionEvent {
    /// Why the session ends, for an event that ends it inside another step (a passthrough
    /// request cannot come from there).
    fn end_reason(&self) -> EndReason {
        match self {
            SessionEvent::Ended(reason) => *reason,
            SessionEvent::Closed | SessionEvent::Passthrough => EndReason::Fin,
        }
    }
}

/// The largest record overhead of any suite (TLS 1.2 AES-GCM: header, explicit nonce, tag),
/// taken off the MSS the backend is offered so that every backend segment, sealed, still fits
/// one client segment.
const MAX_RECORD_OVERHEAD: u16 = 29;
/// Handshake bytes buffered from the client at most (a ClientHello with a large PQ key share
/// and a resumption ticket fits many times over).
const MAX_HANDSHAKE_BYTES: usize = 64 * 1024;
/// Backend bytes acknowledged at the latest with one ACK, however long the receive batch: the
/// most a Linux receiver's GRO merges into one segment (and so one ACK), 64 KiB.
const STRETCH_ACK_LIMIT: usize = 64 * 1024;
const INITIAL_RTO_NS: u64 = 1_000_000_000;
const MAX_RETRIES: u32 = 6;
/// SYN-ACKs sent again to a client that does not acknowledge the first (1, 2 and 4 s after
/// it); 8 s after the last the half-open session ends (15 s in all: Linux's default, five
/// resends, keeps one 63 s, which a SYN flood turns into a full table).
const SYN_ACK_RETRIES: u32 = 3;
/// A backend silent this long while its client is still there (it sends, or probes with a
/// keepalive) is probed with keepalives of the box's own, BACKEND_PROBES of them
/// BACKEND_PROBE_INTERVAL_NS apart; one unanswered after the last ends the session both ways.
/// A live backend's kernel answers a keepalive whatever its application does; a dead one (its
/// link down, the host gone) left the client hanging until its own timeout.
const BACKEND_SILENCE_NS: u64 = 20_000_000_000;
const BACKEND_PROBE_INTERVAL_NS: u64 = 5_000_000_000;
const BACKEND_PROBES: u32 = 4;
/// The box's FIN toward the backend is sent again after this (doubling each time), at most
/// `MAX_RETRIES` times.
const FIN_RTO_NS: u64 = 200_000_000;
/// A fatal alert goes with a FIN; the RST that ends the client's side waits this long, so that
/// it cannot overtake the alert (a client that ACKs the alert gets its RST at once, from the
/// VIP that no longer knows the session).
pub(crate) const ALERT_LINGER_NS: u64 = 1_000_000_000;
/// Deferred RSTs kept at most; past that they go at once.
const MAX_DEFERRED: usize = 1 << 16;
/// Our window scale toward the client (when it offers one).
pub(crate) const OUR_WINDOW_SCALE: u8 = 7;
/// Backend bytes kept before the splice starts (a banner, not a download).
const MAX_EARLY_BACKEND_BYTES: usize = 16 * 1024;

/// What the box keeps of a client's SYN: from the SYN itself, or rebuilt from a SYN cookie.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientSyn {
    pub isn: u32,
    pub window: u64,
    pub options: SynOptions,
    /// The client already acknowledged our SYN-ACK (a cookie's ACK made the session).
    pub acknowledged: bool,
}

impl ClientSyn {
    pub(crate) fn from_segment(syn: &TcpSegment<'_>) -> ClientSyn {
        ClientSyn { isn: syn.seq_number.0, window: syn.window as u64, options: SynOptions::from(&syn.options), acknowledged: false }
    }

    /// A connection the box answered with a SYN cookie, rebuilt from the client's ACK: the MSS
    /// from the cookie, the window scale and SACK from the timestamp it echoed (`kept`; none
    /// without timestamps), and the ACK's own timestamp. The ACK's window is already scaled.
    pub(crate) fn from_cookie(
        client_isn: u32,
        window: u16,
        mss: u16,
        kept: super::cookie::CookieOptions,
        timestamp: Option<TcpTimestamp>,
    ) -> ClientSyn {
        ClientSyn {
            isn: client_isn,
            window: u64::from(window) << kept.window_scale.unwrap_or(0),
            options: SynOptions { mss, window_scale: kept.window_scale, sack_permitted: kept.sack_permitted, timestamp },
            acknowledged: true,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct SynOptions {
    mss: u16,
    window_scale: Option<u8>,
    sack_permitted: bool,
    timestamp: Option<TcpTimestamp>,
}

impl SynOptions {
    fn from(options: &TcpOptions) -> SynOptions {
        SynOptions {
            mss: options.max_segment_size.unwrap_or(536),
            window_scale: options.window_scale.map(|scale| scale.min(14)),
            sack_permitted: options.sack_permitted,
            timestamp: options.timestamp,
        }
    }
}

enum Backend {
    /// Waiting for the backend's MAC (ARP/NDP asked at `asked_ns`).
    Resolving { asked_ns: u64, tries: u32 },
    SynSent { sent_ns: u64, tries: u32 },
    Established(BackendInfo),
}

#[derive(Clone, Copy)]
struct BackendInfo {
    isn: u32,
    mac: EthernetAddress,
    /// The window scale the backend announced (it scales the windows it sends).
    window_scale: u8,
    mss: u16,
    timestamps: bool,
    /// Both the client and the backend agreed to SACK: blocks are translated both ways.
    sack: bool,
    ts_recent: u32,
    /// The window of its SYN-ACK, in bytes.
    syn_window: u16,
}

/// Where the box talks to the backend from: the client's own address and MAC (transparent
/// mode), or the box's SNAT address, a port it owns and its inside MAC.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BackendSide {
    pub source: SocketAddr,
    /// `None`: the client's (or its router's) MAC, as the client's frames carry it.
    pub mac: Option<EthernetAddress>,
}

/// Where a connection goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// The listener has a passthrough pool: the first client bytes decide.
    Undecided,
    /// TLS terminated here.
    Terminate,
    /// Plain TCP to a passthrough pool.
    Passthrough,
}

/// A connection spliced as plain TCP (see DESIGN.md, "Modes": `passthrough`). The box already
/// answered the client's SYN with its own sequence number and maybe took the first flight, so
/// sequence numbers toward the client are shifted by a constant and its timestamps by another;
/// everything else crosses as it is.
struct PlainSplice {
    /// Client bytes the box took (and acknowledged) before the backend was connected.
    first_flight: Vec<u8>,
    /// ... and their custody until the backend has them.
    custody: Custody,
    connected: Option<PlainConnected>,
    /// The client's FIN (its sequence number) once seen, and the backend's, in the client's
    /// sequence space; each with whether the other side acknowledged it.
    client_fin: Option<(u32, bool)>,
    backend_fin: Option<(u32, bool)>,
    /// Next sequence numbers each way (client's space), for resets.
    client_next_seq: u32,
    backend_next_seq: u32,
    /// The client's latest acknowledgement (backend's space) and window field, for the
    /// segments the box itself sends the backend (first flight, resends).
    client_ack: u32,
    client_window: u16,
    /// The backend's latest TSval and window field.
    backend_ts_recent: u32,
    backend_window: u16,
    /// The first flight sent so far (it goes out as the backend's window allows), and the
    /// backend's acknowledgement and window in bytes (client offsets).
    flight_sent: u64,
    backend_acked: u64,
    backend_window_bytes: u64,
}

impl PlainSplice {
    /// A plain splice whose client bytes before `acked` were acknowledged by the box.
    fn new(acked: u64) -> PlainSplice {
        PlainSplice {
            first_flight: Vec::new(),
            custody: Custody::new(acked),
            connected: None,
            client_fin: None,
            backend_fin: None,
            client_next_seq: 0,
            backend_next_seq: 0,
            client_ack: 0,
            client_window: 0,
            backend_ts_recent: 0,
            backend_window: 0,
            flight_sent: 0,
            backend_acked: 0,
            backend_window_bytes: 0,
        }
    }
}

#[derive(Clone, Copy)]
struct PlainConnected {
    backend: BackendInfo,
    /// Backend sequence number + `seq_shift` = our sequence number toward the client.
    seq_shift: u32,
    /// Backend TSval + `ts_shift` = our TSval toward the client (our clock went first).
    ts_shift: u32,
}

pub(crate) struct Session {
    /// The engine's id for the session (handshake jobs come back with it).
    id: u64,
    /// Index of the listener in the engine's configuration.
    listener: usize,
    route: Route,
    /// Set when the listener has a passthrough pool: the names that are terminated here.
    passthrough: Option<Arc<PassthroughRoute>>,
    plain: Option<Box<PlainSplice>>,
    client: SocketAddr,
    vip: SocketAddr,
    backend: SocketAddr,
    /// The backend's peer address: the client (transparent) or the box (SNAT).
    backend_source: SocketAddr,
    backend_mac_source: EthernetAddress,
    /// The client-side link as the client's SYN arrived (source: the client or its router).
    client_link: Link,
    mode: ReleaseMode,
    secrets: Arc<SecretLog>,
    client_isn: u32,
    our_isn: u32,
    syn: SynOptions,
    /// Our window scale toward the client: 0 unless the client offered scaling.
    our_window_scale: u8,
    /// The MSS toward the client a path MTU message allowed (`u16::MAX` until one comes).
    client_path_mss: u16,
    timestamps: bool,
    client_ts_recent: u32,
    last_activity_ns: u64,
    /// Highest client offset taken, to unwrap 32-bit sequence numbers (a segment refused as
    /// outside the window does not move it).
    client_reference: u64,
    /// What the client may send and acknowledge ([`super::acceptance`]).
    client_guard: Guard,
    /// The client acknowledged our SYN-ACK (until then the session is half open).
    syn_acked: bool,
    /// When a TLS session must have finished its handshake (from the SYN: a client that
    /// trickles its ClientHello a byte at a time does not move it).
    handshake_deadline_ns: u64,
    /// Next client offset expected during the handshake.
    client_next: u64,
    /// In-order client bytes not yet given to rustls.
    handshake_in: Vec<u8>,
    /// Every handshake byte rustls wrote toward the client (our offsets 0..len), until the
    /// client has acknowledged them all and the splice runs: then freed (the flight, with its
    /// certificates, is a kilobyte or more per session).
    handshake_out: Vec<u8>,
    /// How many bytes that flight has (kept when the buffer is freed).
    handshake_out_len: u64,
    /// Our offsets acknowledged by the client, and sent.
    acked: u64,
    sent: u64,
    /// The client's window, in bytes.
    client_window: u64,
    rto_deadline_ns: Option<u64>,
    rto_ns: u64,
    /// When the handshake flight first left, and the round trip its acknowledgement measured
    /// (0 = not yet): the first RTT sample of the box's sender toward the client.
    flight_sent_ns: u64,
    handshake_rtt_ns: u64,
    retries: u32,
    tls: Option<Box<ServerConnection>>,
    client_random: Option<[u8; 32]>,
    backend_state: Backend,
    keys: Option<SessionKeys>,
    /// Client offset where application records start (after its Finished).
    client_handshake_len: u64,
    /// Application bytes that came with the client's Finished (already acknowledged).
    early_application: Vec<u8>,
    splice: Option<Box<Splice>>,
    /// Set when a step deep inside ended the session; the next return reports it.
    ended: Option<EndReason>,
    /// A client FIN that came after the handshake but before the splice started.
    pending_client_fin: Option<u64>,
    /// Backend bytes (from its offset 0) sent before the splice started.
    early_backend: Vec<u8>,
    /// The ServerConnection is with a handshake worker.
    tls_in_flight: bool,
    /// After a fatal alert: the sequence number of the client's RST, which waits (see
    /// [`Session::reset_client_later`]).
    client_reset_seq: Option<u32>,
    /// The deadline of the session's live entry in the engine's timer queue
    /// ([`super::timers`]), `NEVER` for none.
    pub(crate) timer_ns: u64,
    /// The session is on the engine's list of work for the end of the batch.
    pub(crate) batch_listed: bool,
}

/// What [`Session::open_client_bytes`] did with a chunk.
#[derive(Default)]
struct Opened {
    /// Plaintext went to the backend.
    forwarded: bool,
    /// The box acknowledged more client bytes on its own.
    acknowledged: bool,
    /// Bytes were held for later (the opener could not place them yet).
    held: bool,
}

struct Splice {
    opener: RecordOpener,
    sealer: RecordSealer,
    out: OpenOutput,
    client_secret: Option<Secret>,
    server_secret: Option<Secret>,
    backend: BackendInfo,
    /// The box's sender toward the client: sealed records until the client has them.
    sender: Sender,
    /// Backend segments ahead of a gap.
    reorder: Reorder,
    /// Client segments the opener could not place yet (beyond a record header not seen).
    client_reorder: Reorder,
    /// Next backend plaintext offset to take (everything before it is the box's: sealed, or in
    /// `pending_record`; the box acknowledges it).
    plaintext_frontier: u64,
    /// The record being filled with the backend plaintext of the current receive batch: room
    /// for the header and explicit nonce, then the plaintext taken so far; empty between
    /// batches. Sealed at the end of the batch, at the record limit, or before any other record.
    pending_record: Vec<u8>,
    backend_reference: u64,
    /// What the backend may send and acknowledge ([`super::acceptance`]).
    backend_guard: Guard,
    /// When the backend was last heard from, and the box's keepalive probes toward it once it
    /// fell silent while the client was still there: (when the next goes, how many went).
    backend_heard_ns: u64,
    backend_probe: Option<(u64, u32)>,
    /// The right edge of the window last offered to the backend (plaintext offset; it never
    /// moves left, RFC 9293 3.8.6).
    backend_window_edge: u64,
    /// Plaintext offset of the backend's FIN (its sequence number minus one), once sealed as a
    /// close_notify; and a FIN seen ahead of a gap, until the gap fills.
    backend_fin: Option<u64>,
    backend_fin_ahead: Option<u64>,
    /// The client's FIN (client offset), once seen, and whether it went to the backend.
    client_fin: Option<u64>,
    client_fin_forwarded: bool,
    /// The client's close_notify (client offset just past the alert record), once verified: a
    /// FIN goes to the backend after the data before it, and client bytes past it are ignored
    /// (RFC 8446 6.1).
    client_close_notify: Option<u64>,
    backend_acked_fin: bool,
    /// The box's FIN toward the backend, until the backend acknowledges it: when to send it
    /// again, and how many times it went.
    fin_to_backend_deadline_ns: Option<u64>,
    fin_to_backend_tries: u32,
    /// The backend's latest acknowledgement of client plaintext (data only).
    backend_acked_plaintext: u64,
    /// The box acknowledged the backend's FIN: with the box's own FIN acknowledged too, the
    /// backend's connection is closed (LAST-ACK done), and any further segment would get a RST.
    backend_fin_ack_sent: bool,
    /// The acknowledgement (backend offset) of the last segment the box sent the backend.
    last_ack_to_backend: u64,
    /// Backend bytes taken in order since the box last sent the backend a segment: their
    /// acknowledgement waits for the end of the receive batch ([`Session::end_batch`]).
    backend_bytes_unacked: u32,
    /// The backend's receive window, in bytes.
    backend_window: u64,
    /// Our acknowledgement toward the client, mapped from the backend's: a client offset.
    backend_acked_cipher: u64,
    /// End of the plaintext sent to the backend so far (its rcv_nxt once it has it all).
    forwarded_plaintext: u64,
    /// The backend's latest SACK blocks (client plaintext), translated for the client.
    sack_for_client: SackBlocks,
    /// The acknowledgement and window of the last segment to the client, so that a backend
    /// segment that changes neither sends no pure ACK (the client would count it a duplicate).
    last_to_client: (u64, u16),
    /// Client bytes the box acknowledged on its own, and their plaintext until the backend
    /// has it.
    custody: Custody,
    /// The client's post-handshake messages (a KeyUpdate in pieces).
    post_handshake: PostHandshake,
    /// When client plaintext last went to the backend with no backend byte since (0: none
    /// waiting): the backend's first byte after it is a response-time sample.
    request_forwarded_ns: u64,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: u64,
        now_ns: u64,
        listener: usize,
        setup: &ListenerSetup,
        client: SocketAddr,
        vip: SocketAddr,
        backend: SocketAddr,
        backend_side: BackendSide,
        client_link: Link,
        syn: &ClientSyn,
        our_isn: u32,
        handshake_deadline_ns: u64,
    ) -> Option<Session> {
        if backend_side.source.is_ipv4() != backend.is_ipv4() {
            // The backend must be of the family of the address the box talks to it from.
            return None;
        }
        let tls = match &setup.tls {
            Some(config) => Some(Box::new(ServerConnection::new(config.clone()).ok()?)),
            None => None,
        };
        let route = match (&setup.tls, &setup.passthrough) {
            (None, _) => Route::Passthrough,
            (Some(_), Some(_)) => Route::Undecided,
            (Some(_), None) => Route::Terminate,
        };
        let options = syn.options;
        let backend_mac_source = backend_side.mac.unwrap_or(client_link.source);
        Some(Session {
            id,
            listener,
            route,
            passthrough: setup.passthrough.clone(),
            plain: (route == Route::Passthrough).then(|| Box::new(PlainSplice::new(0))),
            client,
            vip,
            backend,
            backend_source: backend_side.source,
            backend_mac_source,
            client_link,
            mode: setup.mode,
            secrets: setup.secrets.clone(),
            client_isn: syn.isn,
            our_isn,
            syn: options,
            our_window_scale: if options.window_scale.is_some() { OUR_WINDOW_SCALE } else { 0 },
            client_path_mss: u16::MAX,
            timestamps: options.timestamp.is_some(),
            client_ts_recent: options.timestamp.map_or(0, |ts| ts.value),
            last_activity_ns: now_ns,
            client_reference: 0,
            client_guard: Guard::new(0, syn.window),
            syn_acked: syn.acknowledged,
            handshake_deadline_ns,
            client_next: 0,
            handshake_in: Vec::new(),
            handshake_out: Vec::new(),
            handshake_out_len: 0,
            acked: 0,
            sent: 0,
            client_window: syn.window,
            rto_deadline_ns: None,
            flight_sent_ns: 0,
            handshake_rtt_ns: 0,
            rto_ns: INITIAL_RTO_NS,
            retries: 0,
            tls,
            client_random: None,
            backend_state: Backend::Resolving { asked_ns: 0, tries: 0 },
            keys: None,
            client_handshake_len: 0,
            early_application: Vec::new(),
            splice: None,
            ended: None,
            pending_client_fin: None,
            early_backend: Vec::new(),
            tls_in_flight: false,
            client_reset_seq: None,
            timer_ns: super::timers::NEVER,
            batch_listed: false,
        })
    }

    pub(crate) fn listener(&self) -> usize {
        self.listener
    }

    /// No backend can take the connection: the client gets a RST (the caller ends the session
    /// with [`EndReason::BackendUnreachable`]).
    pub(crate) fn refuse(&mut self, context: &mut Context<'_>) {
        self.send_to_client(context, TcpFlags::RST | TcpFlags::ACK, self.sent, &[]);
    }

    pub(crate) fn client(&self) -> SocketAddr {
        self.client
    }

    pub(crate) fn vip(&self) -> SocketAddr {
        self.vip
    }

    pub(crate) fn backend(&self) -> SocketAddr {
        self.backend
    }

    pub(crate) fn backend_source(&self) -> SocketAddr {
        self.backend_source
    }

    /// Where the session has got to, for the control plane.
    pub(crate) fn progress(&self) -> Progress {
        let (phase, to_backend_bytes, to_client_bytes, records_to_client) = match (&self.splice, &self.plain) {
            (Some(splice), _) => {
                let closing = splice.client_fin.is_some() || splice.client_close_notify.is_some() || splice.backend_fin.is_some();
                let phase = if closing { Phase::Closing } else { Phase::Spliced };
                (phase, splice.forwarded_plaintext, splice.plaintext_frontier, splice.sealer.next_seq())
            }
            (None, Some(_)) => (Phase::Passthrough, 0, 0, 0),
            (None, None) if self.keys.is_some() => (Phase::Connecting, 0, 0, 0),
            (None, None) => (Phase::Handshake, 0, 0, 0),
        };
        let tcp = self.splice.as_ref().map(|splice| {
            let (ours, clients, backends) = (SeqSpace::new(self.our_isn), SeqSpace::new(self.client_isn), SeqSpace::new(splice.backend.isn));
            TcpFacts {
                to_client_next_seq: ours.seq(splice.sender.next_offset()).0,
                client_acked_seq: ours.seq(splice.sender.acked()).0,
                ack_to_client: clients.seq(splice.backend_acked_cipher).0,
                to_backend_next_seq: clients.seq(splice.forwarded_plaintext).0,
                backend_acked_seq: clients.seq(splice.backend_acked_plaintext).0,
                ack_to_backend: backends.seq(splice.last_ack_to_backend).0,
                records_from_client: splice.opener.next_record_seq(),
            }
        });
        Progress { id: self.id, phase, last_activity_ns: self.last_activity_ns, to_backend_bytes, to_client_bytes, records_to_client, tcp }
    }

    /// Client plaintext sent to the backend that it has not acknowledged yet (least-load's
    /// in-flight bytes).
    pub(crate) fn in_flight_to_backend(&self) -> u64 {
        self.splice.as_ref().map_or(0, |splice| splice.forwarded_plaintext.saturating_sub(splice.backend_acked_plaintext))
    }

    pub(crate) fn last_activity_ns(&self) -> u64 {
        self.last_activity_ns
    }

    /// An operator ends the session: both sides reset.
    pub(crate) fn kill(&mut self, context: &mut Context<'_>) -> Option<SessionEvent> {
        self.reset_both(context);
        Some(SessionEvent::Ended(EndReason::Killed))
    }

    /// The box's timestamp clock toward the backend (the client's, passed on), if the backend
    /// connection has timestamps.
    pub(crate) fn backend_ts_value(&self) -> Option<u32> {
        let backend = match (&self.splice, &self.backend_state) {
            (Some(splice), _) => splice.backend,
            (None, Backend::Established(info)) => *info,
            _ => return None,
        };
        backend.timestamps.then_some(self.client_ts_recent)
    }

    /// Whether the client's connection has timestamps (the box's clock is `ts_now`).
    pub(crate) fn client_timestamps(&self) -> bool {
        self.timestamps
    }

    /// After a fatal alert: the sequence number of the client's RST still to come.
    pub(crate) fn client_reset_seq(&self) -> Option<u32> {
        self.client_reset_seq
    }

    pub(crate) fn waits_for_backend_mac(&self) -> bool {
        matches!(self.backend_state, Backend::Resolving { tries, .. } if tries > 0)
    }

    /// The SYN arrived: answer it.
    pub(crate) fn start(&mut self, context: &mut Context<'_>) -> Option<SessionEvent> {
        self.send_syn_ack(context);
        // Sent again until the client acknowledges it (the same timer as the handshake
        // flight's: nothing else is outstanding yet).
        self.rto_deadline_ns = Some(context.now_ns + self.rto_ns);
        if self.route == Route::Passthrough {
            // A listener of a passthrough pool: the backend may speak first (SMTP, IMAP).
            context.counters.sessions_passthrough += 1;
            self.connect_backend(context);
        }
        None
    }

    /// Splices this connection as plain TCP to `backend`, reached from `side` (the engine
    /// chose them after [`SessionEvent::Passthrough`]).
    pub(crate) fn start_passthrough(&mut self, context: &mut Context<'_>, backend: SocketAddr, side: BackendSide) {
        self.route = Route::Passthrough;
        self.tls = None;
        self.backend = backend;
        self.backend_source = side.source;
        if let Some(mac) = side.mac {
            self.backend_mac_source = mac;
        }
        let mut plain = PlainSplice::new(self.client_next);
        plain.first_flight = std::mem::take(&mut self.handshake_in);
        self.plain = Some(Box::new(plain));
        self.backend_state = Backend::Resolving { asked_ns: 0, tries: 0 };
        context.counters.sessions_passthrough += 1;
        self.connect_backend(context);
    }

    pub(crate) fn segment(
        &mut self,
        context: &mut Context<'_>,
        port: Port,
        _link: Link,
        tcp: &TcpSegment<'_>,
    ) -> Option<SessionEvent> {
        self.last_activity_ns = context.now_ns;
        let event = match port {
            Port::Outside => self.client_segment(context, tcp),
            Port::Inside => self.backend_segment(context, tcp),
        };
        if let Some(reason) = self.ended {
            return Some(SessionEvent::Ended(reason));
        }
        event
    }

    /// The earliest time at which [`Session::poll`] has something to do: every deadline it
    /// checks. Calling `poll` earlier is harmless (it finds nothing due); later is a bug, which
    /// the engine's timer audit catches in debug builds.
    pub(crate) fn next_deadline(&self, idle_timeout_ns: u64, close_timeout_ns: u64) -> u64 {
        // `poll` ends an idle session once the idle time is strictly above the timeout.
        let mut deadline = self.last_activity_ns.saturating_add(idle_timeout_ns).saturating_add(1);
        let mut at = |candidate: Option<u64>| {
            if let Some(candidate) = candidate {
                deadline = deadline.min(candidate);
            }
        };
        at(self.rto_deadline_ns);
        if self.handshaking() && self.syn_acked {
            at(Some(self.handshake_deadline_ns));
        }
        at(match self.backend_state {
            Backend::Resolving { asked_ns, tries } if tries > 0 => Some(asked_ns + INITIAL_RTO_NS),
            Backend::SynSent { sent_ns, tries } => Some(sent_ns + (INITIAL_RTO_NS << tries.min(6))),
            _ => None,
        });
        if let Some(splice) = &self.splice {
            if splice.client_fin_forwarded || splice.backend_fin.is_some() {
                at(Some(self.last_activity_ns.saturating_add(close_timeout_ns).saturating_add(1)));
            }
            at(splice.fin_to_backend_deadline_ns);
            at(splice.custody.deadline_ns());
            at(splice.sender.deadline_ns());
            at(splice.backend_probe.map(|(due_ns, _)| due_ns));
        }
        if let Some(plain) = &self.plain {
            at(plain.custody.deadline_ns());
        }
        deadline
    }

    /// Timers: handshake retransmission, backend connection, synthetic records, idle.
    pub(crate) fn poll(&mut self, context: &mut Context<'_>) -> Option<SessionEvent> {
        if context.now_ns.saturating_sub(self.last_activity_ns) > context.idle_timeout_ns {
            self.reset_both(context);
            return Some(SessionEvent::Ended(EndReason::Idle));
        }
        if self.handshaking() && self.syn_acked && context.now_ns >= self.handshake_deadline_ns {
            self.reset_both(context);
            return Some(SessionEvent::Ended(EndReason::HandshakeTimeout));
        }
        if let Some(event) = self.poll_backend(context) {
            return Some(event);
        }
        if let Some(event) = self.poll_close(context) {
            return Some(event);
        }
        if let Some(event) = self.poll_backend_probe(context) {
            return Some(event);
        }
        if let Some(splice) = self.splice.as_mut() {
            let mss = splice.backend_payload_mss();
            let action = splice.custody.poll(context.now_ns, mss);
            if let Some(event) = self.custody_action(context, action) {
                return Some(event);
            }
        }
        if let Some(plain) = self.plain.as_mut() {
            if let Some(connected) = plain.connected {
                let action = plain.custody.poll(context.now_ns, plain_payload_mss(&connected.backend));
                if let Some(event) = self.custody_action(context, action) {
                    return Some(event);
                }
            }
        }
        if let Some(event) = self.poll_sender(context) {
            return Some(event);
        }
        if let Some(deadline) = self.rto_deadline_ns {
            let outstanding = self.acked < self.handshake_out_len || !self.syn_acked;
            if !outstanding {
                self.rto_deadline_ns = None;
                self.retries = 0;
            } else if context.now_ns >= deadline && !self.syn_acked {
                // Half open: the SYN-ACK again, a few times, then the session goes (no RST:
                // there is no connection to reset, and a flood's forged sources would get one
                // each).
                self.retries += 1;
                if self.retries > SYN_ACK_RETRIES {
                    return Some(SessionEvent::Ended(EndReason::HalfOpen));
                }
                self.send_syn_ack(context);
                self.rto_ns = (self.rto_ns * 2).min(60_000_000_000);
                self.rto_deadline_ns = Some(context.now_ns + self.rto_ns);
            } else if context.now_ns >= deadline {
                self.retries += 1;
                if self.retries > MAX_RETRIES {
                    self.reset_both(context);
                    return Some(SessionEvent::Ended(EndReason::TlsError));
                }
                self.rto_ns = (self.rto_ns * 2).min(60_000_000_000);
                self.sent = self.acked;
                self.transmit_handshake(context);
                self.rto_deadline_ns = Some(context.now_ns + self.rto_ns);
            }
        }
        None
    }

    /// The send buffer's timer: a retransmission timeout, a zero-window probe, or a client
    /// that never answered.
    fn poll_sender(&mut self, context: &mut Context<'_>) -> Option<SessionEvent> {
        let mss = self.client_emitter(context.now_ns).payload_room();
        let splice = self.splice.as_mut()?;
        match splice.sender.on_timer(context.now_ns, mss) {
            TimerOutcome::Idle => None,
            TimerOutcome::Retransmit => {
                context.counters.client_timeouts += 1;
                self.transmit_to_client(context);
                None
            }
            TimerOutcome::TailProbe => {
                context.counters.client_tail_probes += 1;
                self.transmit_to_client(context);
                None
            }
            TimerOutcome::Probe => {
                // RFC 9293 3.8.6.1: a segment the client must answer with its window; an old
                // sequence number (the byte before what it acknowledged) carries no data.
                let probe = splice.sender.acked().saturating_sub(1);
                let window = (splice.window_for_client(self.client_handshake_len) >> self.our_window_scale).min(65535) as u16;
                let ack_offset = splice.client_ack_offset(self.client_handshake_len);
                self.emit_to_client(context, TcpFlags::ACK, probe, ack_offset, window, &[]);
                None
            }
            TimerOutcome::GaveUp => {
                self.reset_both(context);
                Some(SessionEvent::Ended(EndReason::ClientUnresponsive))
            }
        }
    }

    // -------------------------------------------------------------------------------------
    // Client side.

    fn client_segment(&mut self, context: &mut Context<'_>, tcp: &TcpSegment<'_>) -> Option<SessionEvent> {
        if self.plain.is_some() {
            return self.client_segment_plain(context, tcp);
        }
        if tcp.flags.contains(TcpFlags::SYN) {
            if tcp.seq_number.0 == self.client_isn && self.client_next == 0 && self.splice.is_none() {
                // Our SYN-ACK was lost: the client sends its SYN again.
                self.send_syn_ack(context);
            } else if self.client_guard.may_answer(context.now_ns) {
                // A new connection from a 4-tuple this session holds (the client forgot it:
                // a reboot, a port reused quickly), or a forged SYN. RFC 9293 3.10.7.4 / RFC
                // 5961 4: a challenge ACK; a client that is really new answers it with a RST
                // at our rcv_nxt, which ends this session, and its next SYN starts a new one.
                context.counters.challenge_acks += 1;
                self.send_ack_to_client(context);
            } else {
                context.counters.challenge_acks_held += 1;
            }
            return None;
        }
        // Whatever the guard makes of it (a keepalive is outside the window), the client is
        // there: is the backend?
        self.check_backend_alive(context);
        let arrival = self.client_arrival(tcp);
        match self.judge_client_segment(context, &arrival) {
            Verdict::Accept => {}
            Verdict::Reset => {
                self.reset_backend(context);
                return Some(SessionEvent::Ended(EndReason::ClientReset));
            }
            Verdict::Answer(_) | Verdict::Ignore(_) => return None,
        }
        self.client_reference = self.client_reference.max(arrival.offset);
        self.client_guard.received(&arrival);
        if arrival.ack.is_some() {
            self.syn_is_acknowledged();
        }
        if let Some(ts) = tcp.options.timestamp {
            if acceptance::newer_timestamp(self.client_ts_recent, ts.value) {
                self.client_ts_recent = ts.value;
            }
        }
        let scale = self.syn.window_scale.unwrap_or(0);
        self.client_window = (tcp.window as u64) << scale;
        self.client_guard.peer_window(self.client_window);
        if tcp.flags.contains(TcpFlags::ACK) {
            // Past the handshake bytes means all of them (the rest is the splice's).
            let acked = self.our_offset(tcp.ack_number.0).min(self.handshake_out_len);
            if acked > self.acked {
                if acked == self.handshake_out_len && self.retries == 0 && self.flight_sent_ns > 0 {
                    // Sent once and acknowledged whole (Karn): a clean sample.
                    self.handshake_rtt_ns = context.now_ns.saturating_sub(self.flight_sent_ns).max(1);
                }
                self.acked = acked;
                self.retries = 0;
                self.rto_ns = INITIAL_RTO_NS;
                self.rto_deadline_ns =
                    if self.acked < self.handshake_out_len { Some(context.now_ns + self.rto_ns) } else { None };
            }
        }
        if self.splice.is_some() {
            self.release_handshake_flight();
            return self.client_segment_splice(context, tcp);
        }
        let offset = self.client_offset(tcp.seq_number.0);
        let payload = tcp.payload;
        if !payload.is_empty() {
            let end = offset + payload.len() as u64;
            let handshaking = self.tls.is_some() || self.tls_in_flight;
            if offset <= self.client_next && end > self.client_next && handshaking {
                let fresh = &payload[(self.client_next - offset) as usize..];
                let room = MAX_HANDSHAKE_BYTES.saturating_sub(self.handshake_in.len());
                if room == 0 && !self.tls_in_flight {
                    // rustls had all of it and still wants more: no handshake is that long.
                    self.reset_both(context);
                    return Some(SessionEvent::Ended(EndReason::TlsError));
                }
                // While a handshake job is away, a client that sends its first request right
                // after its Finished can fill the buffer: take what fits, TCP resends the rest.
                let fresh = &fresh[..fresh.len().min(room)];
                if fresh.len() < payload.len() - (self.client_next - offset) as usize {
                    context.counters.client_segments_dropped += 1;
                }
                self.handshake_in.extend_from_slice(fresh);
                self.client_next += fresh.len() as u64;
                if let Err(()) = self.drive_tls(context) {
                    return Some(self.tls_failed(context));
                }
                if self.route == Route::Passthrough {
                    self.send_ack_to_client(context);
                    return Some(SessionEvent::Passthrough);
                }
            } else if offset > self.client_next || !handshaking {
                // Out of order, or application data before the splice is ready: TCP resends.
                context.counters.client_segments_dropped += 1;
            }
            self.send_ack_to_client(context);
        }
        if tcp.flags.contains(TcpFlags::FIN) && self.keys.is_some() {
            // Handshake done, backend not connected yet: the FIN (after its close_notify) waits
            // for the splice, which forwards it in order.
            self.pending_client_fin = Some(offset + payload.len() as u64);
            return None;
        }
        if tcp.flags.contains(TcpFlags::FIN) {
            // The client gave up during the handshake.
            self.send_to_client(context, TcpFlags::RST | TcpFlags::ACK, self.sent, &[]);
            self.reset_backend(context);
            return Some(SessionEvent::Ended(EndReason::ClientReset));
        }
        self.transmit_handshake(context);
        None
    }

    /// Ships the client's complete handshake records to rustls (inline, or to the handshake
    /// pool: [`super::handshake`]), one job at a time per session.
    fn drive_tls(&mut self, context: &mut Context<'_>) -> Result<(), ()> {
        if self.route == Route::Undecided {
            match self.decide_route() {
                None => return Ok(()),
                Some(route) => self.route = route,
            }
            if self.route == Route::Passthrough {
                return Ok(());
            }
        }
        // Nothing was given to rustls yet: the buffer starts with the connection's first record.
        let first = self.client_next == self.handshake_in.len() as u64;
        let feed = feed_for_rustls(&self.handshake_in, first);
        if feed == Feed::Overflow {
            // The box's own alert, in the clear: rustls has written nothing yet.
            self.handshake_out.extend_from_slice(&[21, 3, 3, 0, 2, 2, 22]);
            self.handshake_out_len = self.handshake_out.len() as u64;
            return Err(());
        }
        // The ClientHello's random, read here (cheap), starts the backend connection now and
        // later finds the TLS 1.3 traffic secrets.
        if self.client_random.is_none() && feed != Feed::NotTls {
            match client_hello::scan(&self.handshake_in) {
                FirstFlight::ClientHello(hello) => self.client_random = Some(hello.random),
                // The hello spans more bytes than are here (small records, a large hello): wait
                // for the rest before rustls takes any record, or the scan would start from its
                // middle next time and the backend would never be connected.
                FirstFlight::Incomplete if self.handshake_in.len() < MAX_HANDSHAKE_BYTES => return Ok(()),
                // Not a hello: rustls says why.
                FirstFlight::Incomplete | FirstFlight::NotClientHello => {}
            }
        }
        if self.client_random.is_some() && matches!(self.backend_state, Backend::Resolving { tries: 0, .. }) {
            self.connect_backend(context);
        }
        if self.tls_in_flight {
            return Ok(());
        }
        let complete = match feed {
            Feed::Records(0) => return Ok(()),
            Feed::Records(complete) => complete,
            Feed::NotTls | Feed::Overflow => self.handshake_in.len(),
        };
        let Some(tls) = self.tls.take() else { return Ok(()) };
        let job = Job {
            session: self.id,
            tls,
            input: self.handshake_in[..complete].to_vec(),
            client_random: self.client_random,
            secrets: self.secrets.clone(),
        };
        let job = match context.pool {
            Some(pool) => match pool.submit(job) {
                Ok(()) => {
                    self.tls_in_flight = true;
                    return Ok(());
                }
                Err(job) => job,
            },
            None => job,
        };
        self.apply_tls_result(context, handshake::run(job))
    }

    /// Terminate or pass through, from the first client bytes (`None`: wait for more). Not a
    /// ClientHello, or a ClientHello whose SNI no certificate of the listener covers, goes to
    /// the passthrough pool; a ClientHello without SNI goes there unless there is a default
    /// certificate.
    fn decide_route(&self) -> Option<Route> {
        let Some(policy) = &self.passthrough else { return Some(Route::Terminate) };
        Some(match client_hello::scan(&self.handshake_in) {
            FirstFlight::Incomplete if self.handshake_in.len() < MAX_HANDSHAKE_BYTES => return None,
            FirstFlight::Incomplete | FirstFlight::NotClientHello => Route::Passthrough,
            FirstFlight::ClientHello(hello) => match hello.server_name.as_deref() {
                Some(name) if policy.certificate_names.iter().any(|pattern| client_hello::name_matches(pattern, name)) => {
                    Route::Terminate
                }
                Some(_) => Route::Passthrough,
                None if policy.default_certificate => Route::Terminate,
                None => Route::Passthrough,
            },
        })
    }

    /// A handshake job came back from the pool.
    pub(crate) fn tls_result(&mut self, context: &mut Context<'_>, result: JobResult) -> Option<SessionEvent> {
        self.tls_in_flight = false;
        match self.apply_tls_result(context, result) {
            Ok(()) => {
                self.transmit_handshake(context);
                if let Some(reason) = self.ended {
                    return Some(SessionEvent::Ended(reason));
                }
                None
            }
            Err(()) => Some(self.tls_failed(context)),
        }
    }

    fn apply_tls_result(&mut self, context: &mut Context<'_>, result: JobResult) -> Result<(), ()> {
        self.handshake_in.drain(..result.consumed.min(self.handshake_in.len()));
        self.handshake_out.extend_from_slice(&result.output);
        self.handshake_out_len = self.handshake_out.len() as u64;
        match result.outcome {
            Outcome::Handshaking => {
                self.tls = result.tls;
                // Records that came while the job was away (none if this job took nothing:
                // then the next bytes from the client drive it).
                if result.consumed == 0 {
                    return Ok(());
                }
                self.drive_tls(context)
            }
            Outcome::Keys(keys) => {
                self.keys = Some(*keys);
                if let Some(facts) = result.facts {
                    let (id, at_ns) = (self.id, context.now_ns);
                    context.events.push(|| Event::Tls { id, at_ns, facts });
                }
                context.counters.handshakes_completed += 1;
                self.client_handshake_len = self.client_next - self.handshake_in.len() as u64;
                self.early_application = std::mem::take(&mut self.handshake_in);
                self.try_start_splice(context);
                Ok(())
            }
            Outcome::Failed => Err(()),
        }
    }

    /// rustls refused the handshake: its alert (already in the flight) goes out, then RSTs.
    fn tls_failed(&mut self, context: &mut Context<'_>) -> SessionEvent {
        context.counters.count_alert(plaintext_alert(&self.handshake_out));
        // rustls' alert is the end of the flight: deliver it, with a FIN, before the RST.
        self.transmit_handshake(context);
        let end = self.handshake_out_len;
        self.send_to_client(context, TcpFlags::FIN | TcpFlags::ACK, end, &[]);
        self.reset_client_later(context, end + 1);
        self.reset_backend(context);
        SessionEvent::Ended(EndReason::TlsError)
    }

    /// The client's RST at our offset `offset`: sent `ALERT_LINGER_NS` from now, or as soon as
    /// the client sends anything (the engine answers its flow with this RST for that long).
    fn reset_client_later(&mut self, context: &mut Context<'_>, offset: u64) {
        let seq = SeqSpace::new(self.our_isn).seq(offset).0;
        self.client_reset_seq = Some(seq);
        let Some(frame) = emit::tcp_frame(self.reply_link(), &bare_reset(self.vip, self.client, seq)) else { return };
        if context.deferred.len() < MAX_DEFERRED {
            context.deferred.push_back((context.now_ns + ALERT_LINGER_NS, frame));
        } else {
            context.out.push(Port::Outside, Some(frame));
        }
    }

    /// Frees the handshake flight once the splice runs and the client has all of it.
    fn release_handshake_flight(&mut self) {
        if self.acked >= self.handshake_out_len && self.splice.is_some() && self.handshake_out.capacity() > 0 {
            self.handshake_out = Vec::new();
        }
    }

    fn transmit_handshake(&mut self, context: &mut Context<'_>) {
        let total = self.handshake_out_len;
        // The client's MSS counts payload only; with timestamps 12 bytes of options go too.
        let mss = self.client_mss() as u64 - if self.timestamps { 12 } else { 0 };
        if self.sent == 0 && total > 0 && self.flight_sent_ns == 0 {
            self.flight_sent_ns = context.now_ns;
        }
        while self.sent < total && self.sent < self.acked + self.client_window.max(mss) {
            let end = (self.sent + mss).min(total);
            // Freed only once all of it was acknowledged, and `sent` never goes below `acked`.
            let Some(bytes) = self.handshake_out.get(self.sent as usize..end as usize).map(<[u8]>::to_vec) else { break };
            self.send_to_client(context, TcpFlags::ACK | TcpFlags::PSH, self.sent, &bytes);
            self.sent = end;
        }
        if self.acked < total && self.rto_deadline_ns.is_none() {
            self.rto_deadline_ns = Some(context.now_ns + self.rto_ns);
        }
    }

    fn send_syn_ack(&mut self, context: &mut Context<'_>) {
        let mut options = TcpOptions::default();
        let ip_overhead = if self.client.is_ipv4() { 40 } else { 60 };
        options.max_segment_size = Some(1500 - ip_overhead);
        if self.syn.window_scale.is_some() {
            options.window_scale = Some(self.our_window_scale);
        }
        options.sack_permitted = self.syn.sack_permitted;
        if self.timestamps {
            options.timestamp = Some(TcpTimestamp { value: ts_now(context.now_ns), echo_reply: self.client_ts_recent });
        }
        let segment = Segment {
            source: self.vip,
            destination: self.client,
            seq: self.our_isn,
            ack: SeqSpace::new(self.client_isn).seq(0).0,
            flags: TcpFlags::SYN | TcpFlags::ACK,
            window: 65535,
            options,
            payload: &[],
        };
        context.out.push_tcp(Port::Outside, self.reply_link(), &segment);
    }

    fn send_ack_to_client(&mut self, context: &mut Context<'_>) {
        // A pure ACK carries our next sequence number, or the client would take it as old.
        let offset = self.splice.as_ref().map_or(self.sent, |splice| splice.next_offset());
        self.send_to_client(context, TcpFlags::ACK, offset, &[]);
    }

    /// A segment to the client at our offset `offset`, acknowledging what the box took.
    fn send_to_client(&mut self, context: &mut Context<'_>, flags: TcpFlags, offset: u64, payload: &[u8]) {
        let ack_offset = match &self.splice {
            Some(splice) => splice.client_ack_offset(self.client_handshake_len),
            None => self.client_next,
        };
        let window = (self.our_receive_window() >> self.our_window_scale).min(65535) as u16;
        self.emit_to_client(context, flags, offset, ack_offset, window, payload);
    }

    #[allow(clippy::too_many_arguments)]
    fn emit_to_client(
        &mut self,
        context: &mut Context<'_>,
        flags: TcpFlags,
        offset: u64,
        ack_offset: u64,
        window: u16,
        payload: &[u8],
    ) {
        self.client_guard.offered(ack_offset, (window as u64) << self.our_window_scale);
        self.client_emitter(context.now_ns).emit(context.out, flags, offset, ack_offset, window, payload);
    }

    /// What a segment toward the client needs of the session, by value.
    fn client_emitter(&self, now_ns: u64) -> ClientEmitter {
        ClientEmitter {
            link: self.reply_link(),
            vip: self.vip,
            client: self.client,
            our_isn: self.our_isn,
            client_isn: self.client_isn,
            // One clock toward the client, ours, whatever the segment carries: the backend's
            // clock runs at its own rate and mixing them would step back (PAWS drops those).
            timestamp: self.timestamps.then(|| TcpTimestamp { value: ts_now(now_ns), echo_reply: self.client_ts_recent }),
            sack_blocks: self.splice.as_ref().map(|splice| splice.client_sack(self.client_isn, self.client_handshake_len)).unwrap_or_default(),
            mss: self.client_mss(),
        }
    }

    /// The largest segment payload toward the client: its MSS, or less once a path MTU
    /// message said so.
    fn client_mss(&self) -> u16 {
        self.syn.mss.min(self.client_path_mss).max(64)
    }

    /// An ICMP "fragmentation needed" / "packet too big" about a segment the box sent on
    /// `port` (sequence number `seq`): a smaller MSS that way from now on. A message that
    /// quotes no segment in flight is ignored (RFC 5927: blind attacks), an MTU below the
    /// family's minimum is taken as the minimum.
    pub(crate) fn path_mtu(&mut self, context: &mut Context<'_>, port: Port, reporter: IpAddr, mtu: u32, seq: u32) -> Option<SessionEvent> {
        let family_of = |address: SocketAddr| if address.is_ipv4() { (40u32, 576u32) } else { (60, 1280) };
        if let Some(plain) = &self.plain {
            self.relay_path_mtu(context, plain, port, reporter, mtu, seq);
            return None;
        }
        match port {
            Port::Outside => {
                let (low, high) = match &self.splice {
                    Some(splice) => (splice.sender.acked(), splice.sender.sent_end()),
                    None => (self.acked, self.sent),
                };
                let offset = SeqSpace::new(self.our_isn).offset(SeqNumber(seq), high);
                if !(low <= offset && offset < high) {
                    context.counters.icmp_ignored += 1;
                    return None;
                }
                let (overhead, minimum) = family_of(self.client);
                let mss = (mtu.max(minimum) - overhead).min(u16::MAX as u32) as u16;
                if mss < self.client_mss() {
                    self.client_path_mss = mss;
                    context.counters.path_mtu_updates += 1;
                    if self.splice.is_none() {
                        // The handshake flight: send again at once, in smaller pieces.
                        self.sent = self.acked;
                        self.transmit_handshake(context);
                    } else if let Some(splice) = self.splice.as_mut() {
                        // Everything in flight leaves again from the send buffer, cut smaller,
                        // rather than after a timeout.
                        splice.sender.resend_all();
                        self.transmit_to_client(context);
                    }
                }
            }
            Port::Inside => {
                let Some(splice) = self.splice.as_mut() else {
                    context.counters.icmp_ignored += 1;
                    return None;
                };
                // Plaintext in flight toward the backend lies within its window of the end.
                let offset = SeqSpace::new(self.client_isn).offset(SeqNumber(seq), splice.forwarded_plaintext);
                let low = splice.forwarded_plaintext.saturating_sub(splice.backend_window.max(1 << 20));
                if !(low <= offset && offset < splice.forwarded_plaintext) {
                    context.counters.icmp_ignored += 1;
                    return None;
                }
                let (overhead, minimum) = family_of(self.backend);
                let mss = (mtu.max(minimum) - overhead).min(u16::MAX as u32) as u16;
                if mss < splice.backend.mss {
                    splice.backend.mss = mss;
                    context.counters.path_mtu_updates += 1;
                }
            }
        }
        None
    }

    fn our_receive_window(&self) -> u64 {
        match &self.splice {
            // The backend's window, in plaintext bytes; ciphertext carries at least as many.
            Some(splice) => splice.window_for_client(self.client_handshake_len),
            None => 65535,
        }
    }

    fn reply_link(&self) -> Link {
        self.client_link.reversed()
    }

    /// The client acknowledged our SYN-ACK: it stops being sent again.
    fn syn_is_acknowledged(&mut self) {
        if self.syn_acked {
            return;
        }
        self.syn_acked = true;
        self.retries = 0;
        self.rto_ns = INITIAL_RTO_NS;
        if self.acked >= self.handshake_out_len {
            self.rto_deadline_ns = None;
        }
    }

    /// Whether the session is a TLS handshake still under way: what the handshake deadline
    /// bounds (a passthrough session has none; the backend's connection has its own tries).
    fn handshaking(&self) -> bool {
        self.keys.is_none() && self.splice.is_none() && self.plain.is_none() && self.route != Route::Passthrough
    }

    /// A client sequence number as an offset (the reference moves only for segments the
    /// guard took: [`Session::client_segment`]).
    fn client_offset(&self, seq: u32) -> u64 {
        SeqSpace::new(self.client_isn).offset(SeqNumber(seq), self.client_reference)
    }

    fn client_arrival(&self, tcp: &TcpSegment<'_>) -> Arrival {
        Arrival {
            offset: self.client_offset(tcp.seq_number.0),
            len: tcp.payload.len() as u64 + tcp.flags.contains(TcpFlags::FIN) as u64,
            rst: tcp.flags.contains(TcpFlags::RST),
            ack: tcp.flags.contains(TcpFlags::ACK).then(|| self.our_offset(tcp.ack_number.0)),
        }
    }

    /// The guard's verdict on a client segment; a refused one is counted here, and answered
    /// with an ACK when the guard says so. The caller acts on `Reset` and goes on with `Accept`.
    fn judge_client_segment(&mut self, context: &mut Context<'_>, arrival: &Arrival) -> Verdict {
        let verdict = self.client_guard.judge(context.now_ns, arrival, &self.client_position());
        match verdict {
            Verdict::Answer(why) => {
                count_refusal(context.counters, why, true);
                self.send_ack_to_client(context);
            }
            Verdict::Ignore(why) => count_refusal(context.counters, why, false),
            Verdict::Accept | Verdict::Reset => {}
        }
        verdict
    }

    /// Where the box's two streams with the client stand, for the guard (before the splice,
    /// also in a passthrough session whose backend has not answered: nothing sent yet).
    fn client_position(&self) -> Position {
        match &self.splice {
            Some(splice) => Position {
                receive_next: splice.client_ack_offset(self.client_handshake_len),
                receive_window: splice.window_for_client(self.client_handshake_len),
                send_unacked: splice.sender.acked(),
                send_next: splice.sender.sent_end(),
            },
            // The handshake: `sent` steps back for a retransmission, what rustls wrote does not.
            None => Position {
                receive_next: self.client_next,
                receive_window: self.our_receive_window(),
                send_unacked: self.acked,
                send_next: self.handshake_out_len.max(self.sent),
            },
        }
    }

    fn our_offset(&self, ack: u32) -> u64 {
        let reference = self.splice.as_ref().map_or(self.sent, |splice| splice.sender.sent_end());
        SeqSpace::new(self.our_isn).offset(SeqNumber(ack), reference)
    }

    // -------------------------------------------------------------------------------------
    // Backend side.

    fn backend_link(&self, mac: EthernetAddress) -> Link {
        // Transparent: the frame looks like the client's, from the client's side of the wire.
        // The same VLAN tags as the client's frames: a bump in the wire on a trunk.
        Link { source: self.backend_mac_source, destination: mac, tags: self.client_link.tags }
    }

    fn connect_backend(&mut self, context: &mut Context<'_>) {
        match context.neighbours.get(context.now_ns, self.backend.ip()) {
            Some(mac) => {
                self.send_backend_syn(context, mac);
                self.backend_state = Backend::SynSent { sent_ns: context.now_ns, tries: 1 };
            }
            None => {
                self.ask_backend_mac(context);
                let tries = match self.backend_state {
                    Backend::Resolving { tries, .. } => tries + 1,
                    _ => 1,
                };
                self.backend_state = Backend::Resolving { asked_ns: context.now_ns, tries };
            }
        }
    }

    fn ask_backend_mac(&self, context: &mut Context<'_>) {
        // One request per address per interval, however many sessions wait for it.
        if !context.neighbours.ask(context.now_ns, self.backend.ip()) {
            return;
        }
        let our_mac = self.backend_mac_source;
        match (self.backend_source.ip(), self.backend.ip()) {
            (IpAddr::V4(client), IpAddr::V4(backend)) => context.out.push(
                Port::Inside,
                emit::arp_frame(
                    ArpOperation::Request,
                    (our_mac, client),
                    (EthernetAddress([0; 6]), backend),
                    EthernetAddress::BROADCAST,
                    self.client_link.tags,
                ),
            ),
            (IpAddr::V6(client), IpAddr::V6(backend)) => {
                let (group, group_mac) = emit::solicited_node(backend);
                context.out.push(
                    Port::Inside,
                    emit::ndp_frame(
                        false,
                        Link { source: our_mac, destination: group_mac, tags: self.client_link.tags },
                        client,
                        group,
                        backend,
                        our_mac,
                    ),
                );
            }
            _ => {}
        }
    }

    fn send_backend_syn(&self, context: &mut Context<'_>, mac: EthernetAddress) {
        let mut options = TcpOptions::default();
        // Sealed, a backend segment grows by the record overhead and must still fit one client
        // segment; plain TCP crosses as it is.
        let overhead = if self.route == Route::Passthrough { 0 } else { MAX_RECORD_OVERHEAD };
        options.max_segment_size = Some(self.syn.mss.saturating_sub(overhead).max(64));
        options.window_scale = self.syn.window_scale;
        options.sack_permitted = self.syn.sack_permitted;
        options.timestamp = self.syn.timestamp.map(|ts| TcpTimestamp { value: ts.value, echo_reply: 0 });
        let segment = Segment {
            source: self.backend_source,
            destination: self.backend,
            seq: self.client_isn,
            ack: 0,
            flags: TcpFlags::SYN,
            window: 65535,
            options,
            payload: &[],
        };
        context.out.push_tcp(Port::Inside, self.backend_link(mac), &segment);
    }

    fn poll_backend(&mut self, context: &mut Context<'_>) -> Option<SessionEvent> {
        match self.backend_state {
            Backend::Resolving { asked_ns, tries } if tries > 0 => {
                if context.neighbours.get(context.now_ns, self.backend.ip()).is_some() {
                    self.connect_backend(context);
                } else if context.now_ns >= asked_ns + INITIAL_RTO_NS {
                    if tries >= MAX_RETRIES {
                        return Some(self.backend_unreachable(context));
                    }
                    self.connect_backend(context);
                }
            }
            Backend::SynSent { sent_ns, tries } if context.now_ns >= sent_ns + (INITIAL_RTO_NS << tries.min(6)) => {
                if tries >= MAX_RETRIES {
                    return Some(self.backend_unreachable(context));
                }
                if let Some(mac) = context.neighbours.get(context.now_ns, self.backend.ip()) {
                    self.send_backend_syn(context, mac);
                }
                self.backend_state = Backend::SynSent { sent_ns: context.now_ns, tries: tries + 1 };
            }
            _ => {}
        }
        None
    }

    fn backend_unreachable(&mut self, context: &mut Context<'_>) -> SessionEvent {
        context.response_times.push((self.backend, balance::ResponseSample::ConnectFailed));
        self.send_to_client(context, TcpFlags::RST | TcpFlags::ACK, self.sent, &[]);
        SessionEvent::Ended(EndReason::BackendUnreachable)
    }

    fn backend_segment(&mut self, context: &mut Context<'_>, tcp: &TcpSegment<'_>) -> Option<SessionEvent> {
        if self.plain.as_ref().is_some_and(|plain| plain.connected.is_some()) && !tcp.flags.contains(TcpFlags::SYN) {
            return self.backend_segment_plain(context, tcp);
        }
        if tcp.flags.contains(TcpFlags::RST) && self.splice.is_none() {
            let acceptable = match &self.backend_state {
                // RFC 9293 3.10.7.3: in SYN-SENT a RST counts if it acknowledges the SYN.
                Backend::SynSent { .. } => {
                    tcp.flags.contains(TcpFlags::ACK) && tcp.ack_number.0 == SeqSpace::new(self.client_isn).seq(0).0
                }
                // The box acknowledged none of the backend's bytes yet: a RST at the start, or
                // past what it sent early (RFC 5961 3.2).
                Backend::Established(info) => {
                    let offset = SeqSpace::new(info.isn).distance(tcp.seq_number) as u64;
                    offset == 0 || offset == self.early_backend.len() as u64
                }
                _ => false,
            };
            if !acceptable {
                context.counters.challenge_acks_held += 1;
                return None;
            }
            if matches!(self.backend_state, Backend::SynSent { .. }) {
                // Refused: to least-load, as slow as it gets (a backend that fails fast must
                // not look light).
                context.response_times.push((self.backend, balance::ResponseSample::ConnectFailed));
            }
            let offset = self.splice.as_ref().map_or(self.sent, |splice| splice.next_offset());
            self.send_to_client(context, TcpFlags::RST | TcpFlags::ACK, offset, &[]);
            return Some(SessionEvent::Ended(EndReason::BackendReset));
        }
        if tcp.flags.contains(TcpFlags::SYN) && !tcp.flags.contains(TcpFlags::ACK) {
            // The box opened this connection: a SYN from the backend's side belongs to none.
            context.counters.segments_out_of_window += 1;
            return None;
        }
        if tcp.flags.contains(TcpFlags::SYN) && tcp.flags.contains(TcpFlags::ACK) {
            if tcp.ack_number.0 != SeqSpace::new(self.client_isn).seq(0).0 {
                return None;
            }
            let Some(mac) = context.neighbours.get(context.now_ns, self.backend.ip()) else { return None };
            let info = BackendInfo {
                isn: tcp.seq_number.0,
                mac,
                window_scale: if self.syn.window_scale.is_some() { tcp.options.window_scale.unwrap_or(0).min(14) } else { 0 },
                mss: tcp.options.max_segment_size.unwrap_or(536),
                timestamps: tcp.options.timestamp.is_some() && self.timestamps,
                sack: tcp.options.sack_permitted && self.syn.sack_permitted,
                ts_recent: tcp.options.timestamp.map_or(0, |ts| ts.value),
                // A SYN's window is never scaled (RFC 7323 2.2).
                syn_window: tcp.window,
            };
            // Complete the backend's handshake (also when its SYN-ACK is a retransmission).
            let mut options = TcpOptions::default();
            if info.timestamps {
                options.timestamp = Some(TcpTimestamp { value: self.client_ts_recent, echo_reply: info.ts_recent });
            }
            let segment = Segment {
                source: self.backend_source,
                destination: self.backend,
                seq: SeqSpace::new(self.client_isn).seq(0).0,
                ack: SeqSpace::new(info.isn).seq(0).0,
                flags: TcpFlags::ACK,
                window: (65535u64 >> self.syn.window_scale.unwrap_or(0)).max(1) as u16,
                options,
                payload: &[],
            };
            context.out.push_tcp(Port::Inside, self.backend_link(mac), &segment);
            if !matches!(self.backend_state, Backend::Established(_)) {
                self.backend_state = Backend::Established(info);
                self.try_start_splice(context);
                self.start_plain(context);
            }
            return None;
        }
        if let Backend::SynSent { tries, .. } = self.backend_state {
            if tcp.flags.contains(TcpFlags::ACK) {
                // RFC 9293 3.10.7.3: an unacceptable ACK in SYN-SENT is answered <SEQ=SEG.ACK>
                // <CTL=RST>. A backend that holds the 4-tuple in TIME_WAIT (the client reused
                // its port toward another VIP of the same pool) answers the SYN with an ACK of
                // the old connection; the reset frees the 4-tuple, and the SYN goes again.
                if tries >= MAX_RETRIES {
                    return Some(self.backend_unreachable(context));
                }
                let Some(mac) = context.neighbours.get(context.now_ns, self.backend.ip()) else { return None };
                let reset = Segment {
                    source: self.backend_source,
                    destination: self.backend,
                    seq: tcp.ack_number.0,
                    ack: 0,
                    flags: TcpFlags::RST,
                    window: 0,
                    options: TcpOptions::default(),
                    payload: &[],
                };
                context.out.push_tcp(Port::Inside, self.backend_link(mac), &reset);
                self.send_backend_syn(context, mac);
                self.backend_state = Backend::SynSent { sent_ns: context.now_ns, tries: tries + 1 };
                return None;
            }
        }
        if self.splice.is_some() {
            return self.backend_segment_splice(context, tcp);
        }
        // Data from the backend before the client's handshake is done (a server that speaks
        // first: SMTP, IMAP, POP3 banners). Kept, in order and bounded, unacknowledged: the
        // splice seals it as soon as it starts, and the client's ACK of it goes back to the
        // backend; if the backend resends it first, the record map rebuilds it.
        if !tcp.payload.is_empty() {
            if let Backend::Established(info) = &self.backend_state {
                let offset = SeqSpace::new(info.isn).distance(tcp.seq_number) as u64;
                let held: usize = self.early_backend.len();
                if offset == held as u64 && held + tcp.payload.len() <= MAX_EARLY_BACKEND_BYTES {
                    self.early_backend.extend_from_slice(tcp.payload);
                    return None;
                }
            }
            context.counters.backend_segments_dropped += 1;
        }
        None
    }

    fn reset_backend(&self, context: &mut Context<'_>) {
        let Backend::Established(info) = &self.backend_state else { return };
        // The MAC the backend's SYN-ACK came from: the cache may have let it expire since.
        let mac = info.mac;
        // Past the box's FIN once it went: a RST at the FIN's own number is outside the window.
        let plaintext =
            self.splice.as_ref().map_or(0, |splice| splice.forwarded_plaintext + splice.client_fin_forwarded as u64);
        let segment = Segment {
            source: self.backend_source,
            destination: self.backend,
            seq: SeqSpace::new(self.client_isn).seq(plaintext).0,
            ack: SeqSpace::new(info.isn).seq(0).0,
            flags: TcpFlags::RST | TcpFlags::ACK,
            window: 0,
            options: TcpOptions::default(),
            payload: &[],
        };
        context.out.push_tcp(Port::Inside, self.backend_link(mac), &segment);
    }

    fn reset_both(&self, context: &mut Context<'_>) {
        if let Some(plain) = &self.plain {
            self.reset_plain(context, plain);
            return;
        }
        let offset = self.splice.as_ref().map_or(self.sent, |splice| splice.next_offset());
        let seq = SeqSpace::new(self.our_isn).seq(offset).0;
        context.out.push_tcp(Port::Outside, self.reply_link(), &bare_reset(self.vip, self.client, seq));
        self.reset_backend(context);
    }

    // -------------------------------------------------------------------------------------
    // The splice.

    fn try_start_splice(&mut self, context: &mut Context<'_>) {
        if self.splice.is_some() || self.keys.is_none() {
            return;
        }
        let Backend::Established(backend) = self.backend_state else { return };
        let Some(keys) = self.keys.take() else { return };
        let config = OpenerConfig { mode: self.mode, max_records: 256, keep_completed: true, hold_whole_below: 32 };
        let opener = RecordOpener::new(&keys.client.keys, keys.client.seq, self.client_handshake_len, config);
        let sealer = RecordSealer::new(&keys.server.keys, keys.server.seq);
        let handshake_len = self.handshake_out_len;
        let client_room = self.client_emitter(context.now_ns).payload_room();
        let mut sender = Sender::new(handshake_len, self.client_window, client_room, context.congestion);
        if self.handshake_rtt_ns > 0 {
            sender.seed_rtt(context.now_ns, self.handshake_rtt_ns);
        }
        self.splice = Some(Box::new(Splice {
            opener,
            sealer,
            out: OpenOutput::default(),
            client_secret: keys.client.secret,
            server_secret: keys.server.secret,
            backend,
            sender,
            reorder: Reorder::default(),
            client_reorder: Reorder::with_limit(CLIENT_REORDER_LIMIT),
            plaintext_frontier: 0,
            pending_record: Vec::new(),
            backend_reference: 0,
            backend_guard: Guard::new(0, (backend.syn_window as u64) << backend.window_scale),
            backend_heard_ns: context.now_ns,
            backend_probe: None,
            backend_window_edge: 0,
            backend_fin: None,
            backend_fin_ahead: None,
            client_fin: None,
            client_fin_forwarded: false,
            client_close_notify: None,
            backend_acked_fin: false,
            fin_to_backend_deadline_ns: None,
            fin_to_backend_tries: 0,
            backend_acked_plaintext: 0,
            backend_fin_ack_sent: false,
            last_ack_to_backend: 0,
            backend_bytes_unacked: 0,
            backend_window: 65535,
            backend_acked_cipher: self.client_handshake_len,
            forwarded_plaintext: 0,
            sack_for_client: SackBlocks::default(),
            last_to_client: (0, 0),
            // Everything the handshake acknowledged, including application bytes that came
            // with the Finished.
            custody: Custody::new(self.client_next),
            post_handshake: PostHandshake::default(),
            request_forwarded_ns: 0,
        }));
        let early = std::mem::take(&mut self.early_application);
        if !early.is_empty() {
            let offset = self.client_handshake_len;
            if let Err(event) = self.open_client_bytes(context, offset, early, None) {
                self.ended = Some(event.end_reason());
            }
        }
        if let (Some(fin), Some(splice)) = (self.pending_client_fin.take(), self.splice.as_mut()) {
            splice.client_fin = Some(fin);
        }
        let early_backend = std::mem::take(&mut self.early_backend);
        if !early_backend.is_empty() {
            // As the backend itself would have cut them: what fits one client segment sealed.
            let options = if self.timestamps { 12 } else { 0 };
            let mss = self.syn.mss.saturating_sub(MAX_RECORD_OVERHEAD + options).max(64) as usize;
            for (i, piece) in early_backend.chunks(mss).enumerate() {
                self.take_backend_bytes(context, (i * mss) as u64, piece);
            }
        }
        if let Some(event) = self.forward_client_fin(context) {
            self.ended = Some(event.end_reason());
        }
        // The client's acknowledgement of what we took so far.
        self.send_ack_to_client(context);
        self.release_handshake_flight();
    }

    fn client_segment_splice(&mut self, context: &mut Context<'_>, tcp: &TcpSegment<'_>) -> Option<SessionEvent> {
        let offset = self.client_offset(tcp.seq_number.0);
        let client_room = self.client_emitter(context.now_ns).payload_room();
        let mut backend_fin_newly_acked = false;
        let scale = self.syn.window_scale.unwrap_or(0);
        let client_window = (tcp.window as u64) << scale;
        let Some(splice) = self.splice.as_mut() else { return None };
        if tcp.flags.contains(TcpFlags::ACK) {
            // The client's acknowledgement and SACK blocks are the box's own business now (its
            // send buffer); the backend learns only the window they free.
            let reference = splice.sender.sent_end();
            let our_offset = |seq: u32| SeqSpace::new(self.our_isn).offset(SeqNumber(seq), reference);
            let acked = our_offset(tcp.ack_number.0);
            let mut blocks = [(0u64, 0u64); 4];
            let mut count = 0;
            for block in tcp.options.sack_blocks.as_slice() {
                blocks[count] = (our_offset(block.left.0), our_offset(block.right.0));
                count += 1;
            }
            let carries = !tcp.payload.is_empty() || tcp.flags.contains(TcpFlags::FIN);
            let fin_acked_before = splice.backend_fin_acked();
            let pool = &mut context.out.pool;
            splice.sender.on_ack(context.now_ns, acked, client_window, &blocks[..count], carries, client_room, &mut |buffer| pool.give(buffer));
            // The client has the close_notify the backend's FIN became: now the box acknowledges
            // that FIN (the backend's LAST-ACK or FIN-WAIT ends).
            backend_fin_newly_acked = !fin_acked_before && splice.backend_fin_acked();
        }
        let mut forwarded = false;
        // The box sent the client an ACK for this segment already.
        let mut acknowledged = false;
        // Nothing after a close_notify is opened (RFC 8446 6.1: it is ignored).
        let payload = match splice.client_close_notify {
            Some(close) if offset + tcp.payload.len() as u64 > close => {
                context.counters.client_bytes_after_close += (offset + tcp.payload.len() as u64 - close.max(offset)) as u64;
                &tcp.payload[..close.saturating_sub(offset) as usize]
            }
            _ => tcp.payload,
        };
        if !payload.is_empty() {
            let end = offset + payload.len() as u64;
            if end <= self.client_handshake_len {
                // A retransmitted handshake record: acknowledge it again.
                self.send_ack_to_client(context);
            } else {
                let skip = self.client_handshake_len.saturating_sub(offset) as usize;
                let ts = tcp.options.timestamp;
                let mut chunk = context.out.pool.take();
                chunk.extend_from_slice(&payload[skip..]);
                match self.open_client_bytes(context, offset + skip as u64, chunk, ts) {
                    Ok(opened) => {
                        forwarded = opened.forwarded;
                        if opened.acknowledged || opened.held {
                            // A segment held out of order is answered at once, with its SACK
                            // block, as a receiver answers one (RFC 5681 4.2).
                            self.send_ack_to_client(context);
                            acknowledged = true;
                        }
                    }
                    Err(event) => return Some(event),
                }
                match self.open_held_client_bytes(context, ts) {
                    Ok(more) => forwarded |= more,
                    Err(event) => return Some(event),
                }
            }
        }
        let mut fin_acknowledged = false;
        if tcp.flags.contains(TcpFlags::FIN) {
            let fin_offset = offset + tcp.payload.len() as u64;
            if let Some(splice) = self.splice.as_mut() {
                splice.client_fin.get_or_insert(fin_offset);
                // The backend already has the box's FIN (the client's close_notify carried the
                // close first), or this is the FIN again after the box's ACK of it was lost.
                fin_acknowledged = splice.client_fin_forwarded && splice.backend_acked_fin;
            }
        }
        let fin_was_forwarded = self.splice.as_ref().is_some_and(|splice| splice.client_fin_forwarded);
        if let Some(event) = self.forward_client_fin(context) {
            return Some(event);
        }
        // The FIN that just went carries the same acknowledgement a pure ACK would.
        let fin_sent_now = !fin_was_forwarded && self.splice.as_ref().is_some_and(|splice| splice.client_fin_forwarded);
        if fin_acknowledged {
            self.send_ack_to_client(context);
            acknowledged = true;
        }
        // What the client's acknowledgement opened (or asked to be sent again).
        self.transmit_to_client(context);
        if backend_fin_newly_acked && !fin_sent_now {
            self.ack_backend(context, tcp.options.timestamp);
        } else if !forwarded && !fin_sent_now {
            self.update_backend_window(context, tcp.options.timestamp);
        }
        if !tcp.payload.is_empty() && !acknowledged {
            if let Some(splice) = self.splice.as_ref() {
                let end = offset + tcp.payload.len() as u64;
                if end <= splice.client_ack_offset(self.client_handshake_len) {
                    // Already acknowledged: our ACK was lost. Say it again (RFC 9293 3.10.7.4).
                    self.send_ack_to_client(context);
                }
            }
        }
        self.check_closed()
    }

    /// The client is there: if the backend has been silent for [`BACKEND_SILENCE_NS`], the
    /// box starts asking it with keepalives ([`Session::poll_backend_probe`] goes on).
    fn check_backend_alive(&mut self, context: &mut Context<'_>) {
        let Some(splice) = self.splice.as_mut() else { return };
        if splice.backend_probe.is_none() && context.now_ns.saturating_sub(splice.backend_heard_ns) >= BACKEND_SILENCE_NS {
            splice.backend_probe = Some((context.now_ns, 0));
            // The first probe at once; the poll sends the rest.
            let _ = self.poll_backend_probe(context);
        }
    }

    /// A keepalive toward a silent backend when one is due (RFC 9293 3.8.4: one byte below the
    /// box's next sequence number, which the backend answers with an ACK); the session ends
    /// when the last went unanswered.
    fn poll_backend_probe(&mut self, context: &mut Context<'_>) -> Option<SessionEvent> {
        let splice = self.splice.as_mut()?;
        let (due_ns, sent) = splice.backend_probe?;
        if context.now_ns < due_ns {
            return None;
        }
        if sent >= BACKEND_PROBES {
            self.reset_both(context);
            return Some(SessionEvent::Ended(EndReason::BackendSilent));
        }
        splice.backend_probe = Some((context.now_ns + BACKEND_PROBE_INTERVAL_NS, sent + 1));
        let next = splice.forwarded_plaintext + splice.client_fin_forwarded as u64;
        self.send_to_backend(context, next.saturating_sub(1), TcpFlags::ACK, &[], None);
        None
    }

    /// Feeds held client segments to the opener again once the record headers before them
    /// are known. Returns whether plaintext went to the backend.
    fn open_held_client_bytes(&mut self, context: &mut Context<'_>, ts: Option<TcpTimestamp>) -> Result<bool, SessionEvent> {
        let mut forwarded = false;
        let tries = self.splice.as_ref().map_or(0, |splice| splice.client_reorder.len());
        for _ in 0..tries {
            let Some(splice) = self.splice.as_mut() else { break };
            // A segment that starts inside the next header (the one before it, which carries
            // the header's first bytes, was lost) is placeable too: waiting for it to start at
            // the header would wait for ever, since the client resends only what is missing.
            let limit = splice.opener.placeable_before();
            let Some((at, bytes)) = splice.client_reorder.take_before(limit) else { break };
            let opened = self.open_client_bytes(context, at, bytes, ts)?;
            forwarded |= opened.forwarded;
            if opened.held {
                // Still not placeable: the bytes before it are missing too. Held again, not
                // newly: the counter counts segments, not attempts.
                context.counters.client_segments_held -= 1;
                break;
            }
        }
        Ok(forwarded)
    }

    /// Opens client bytes at client offset `offset` and forwards the plaintext to the backend.
    fn open_client_bytes(
        &mut self,
        context: &mut Context<'_>,
        offset: u64,
        mut chunk: Vec<u8>,
        ts: Option<TcpTimestamp>,
    ) -> Result<Opened, SessionEvent> {
        let mut opened = Opened::default();
        let Some(splice) = self.splice.as_mut() else { return Ok(opened) };
        let mut out = std::mem::take(&mut splice.out);
        let mut result = splice.opener.open(offset, &mut chunk, &mut out);
        let mut key_update_answer = false;
        // A record the box consumed itself (close_notify, KeyUpdate): no plaintext of it reaches
        // the backend, so no backend acknowledgement will ever cover it; the box acknowledges it.
        let mut consumed_without_data = false;
        loop {
            match result {
                Err(OpenError::TagMismatch { .. }) => {
                    self.fail_with_alert(context, 20); // bad_record_mac
                    return Err(SessionEvent::Ended(EndReason::TagFailure));
                }
                Err(OpenError::RecordOverflow { .. }) => {
                    self.fail_with_alert(context, 22); // record_overflow
                    return Err(SessionEvent::Ended(EndReason::TlsError));
                }
                Err(_) => {
                    self.fail_with_alert(context, 10); // unexpected_message
                    return Err(SessionEvent::Ended(EndReason::TlsError));
                }
                Ok(step) => match step.stop {
                    None => break,
                    Some(Stop::Refused(_)) => {
                        // Bytes the opener cannot place yet (past a record header that was
                        // lost): held, SACKed to the client, and fed again once the header
                        // arrives, so that one lost segment costs one resent segment.
                        let Some(splice) = self.splice.as_mut() else { return Ok(opened) };
                        let at = offset + step.consumed as u64;
                        match splice.client_reorder.hold(0, at, &chunk[step.consumed..]) {
                            Held::Kept => {
                                context.counters.client_segments_held += 1;
                                opened.held = true;
                            }
                            Held::Duplicate => {}
                            Held::Full => context.counters.client_segments_dropped += 1,
                        }
                        break;
                    }
                    Some(Stop::Record(done)) => {
                        context.counters.records_opened += 1;
                        let plaintext = done.plaintext.clone().map(|range| out.held[range].to_vec());
                        let Some(splice) = self.splice.as_mut() else { return Ok(opened) };
                        if done.content_type != ContentType::Handshake && splice.post_handshake.in_message() {
                            // RFC 8446 5.1: no other record inside a handshake message.
                            return Err(self.fail_tls(context));
                        }
                        match done.content_type {
                            ContentType::Handshake => {
                                // TLS 1.3 only (a TLS 1.2 client's renegotiation is refused):
                                // a KeyUpdate, maybe in pieces, changes the client's keys.
                                let parsed = match (plaintext.as_deref(), splice.client_secret.as_ref()) {
                                    (Some(fragment), Some(secret)) => splice
                                        .post_handshake
                                        .record(fragment)
                                        .map(|update| update.map(|update| (update, secret.next_generation()))),
                                    _ => Err(Violation::UnexpectedMessage),
                                };
                                match parsed {
                                    Err(violation) => {
                                        self.fail_with_alert(context, violation.alert());
                                        return Err(SessionEvent::Ended(EndReason::TlsError));
                                    }
                                    Ok(Some((update, next))) => {
                                        splice.opener.rekey(&next.traffic_keys(next_aead(&splice.sealer)));
                                        splice.client_secret = Some(next);
                                        key_update_answer |= update.update_requested;
                                    }
                                    Ok(None) => {}
                                }
                                consumed_without_data = true;
                            }
                            ContentType::Alert => match plaintext.as_deref() {
                                Some([_, 0]) => {
                                    let end = done.stream_offset + done.record_len as u64;
                                    splice.client_close_notify.get_or_insert(end);
                                    consumed_without_data = true;
                                }
                                _ => {
                                    self.reset_backend(context);
                                    return Err(SessionEvent::Ended(EndReason::ClientReset));
                                }
                            },
                            ContentType::ApplicationData => {}
                            _ => return Err(self.fail_tls(context)),
                        }
                        let Some(splice) = self.splice.as_mut() else { return Ok(opened) };
                        result = splice.opener.open_more(offset, &mut chunk, step.consumed, &mut out);
                    }
                },
            }
        }
        let Some(splice) = self.splice.as_mut() else { return Ok(opened) };
        if consumed_without_data {
            let cipher = splice.opener.ciphertext_for_plaintext_ack(splice.backend_acked_plaintext);
            if cipher > splice.backend_acked_cipher {
                splice.opener.acknowledge(cipher);
                splice.backend_acked_cipher = cipher;
                opened.acknowledged = true;
            }
        }
        // Verify-first holds records whole: a client whose congestion window is smaller than a
        // record would wait forever for an acknowledgement, so the box acknowledges in-order
        // bytes it took and owes their plaintext to the backend (see `custody`).
        // The acknowledgement runs over everything held without a gap, not just this chunk: a
        // client that resends one segment after a loss must hear about the ones it sent after.
        if self.mode == ReleaseMode::VerifyFirst && splice.custody.has_room() {
            let acked = splice.client_ack_offset(self.client_handshake_len);
            let end = splice.opener.contiguous_end(acked, splice.backend_acked_cipher);
            if end > acked {
                splice.custody.acknowledge_client(end);
                opened.acknowledged = true;
            }
        }
        // Plaintext to the backend, in contiguous runs of at most the backend's MSS; what the
        // box acknowledged on its own is kept until the backend has it.
        for release in &out.releases {
            if splice.opener.ciphertext_for_plaintext_ack(release.plaintext_offset) < splice.custody.acked_cipher() {
                splice.custody.keep(context.now_ns, release.plaintext_offset, out.bytes(&chunk, release));
            }
        }
        let mss = splice.backend_payload_mss();
        let mut first = 0;
        while first < out.releases.len() {
            // Releases first..last are contiguous: one run.
            let mut last = first + 1;
            let mut end = out.releases[first].plaintext_offset + out.bytes(&chunk, &out.releases[first]).len() as u64;
            while let Some(next) = out.releases.get(last).filter(|next| next.plaintext_offset == end) {
                end += out.bytes(&chunk, next).len() as u64;
                last += 1;
            }
            let start = out.releases[first].plaintext_offset;
            if last == first + 1 {
                // One release (the usual case: a segment inside one record): sent from where
                // it was decrypted.
                self.send_run(context, start, out.bytes(&chunk, &out.releases[first]), mss, ts);
            } else {
                let mut run = context.out.pool.take();
                for release in &out.releases[first..last] {
                    run.extend_from_slice(out.bytes(&chunk, release));
                }
                self.send_run(context, start, &run, mss, ts);
                context.out.pool.give(run);
            }
            opened.forwarded |= end > start;
            first = last;
        }
        context.out.pool.give(chunk);
        if let Some(splice) = self.splice.as_mut() {
            splice.out = out;
        }
        if key_update_answer {
            self.send_key_update(context);
        }
        Ok(opened)
    }

    /// Plaintext at backend offset `start`, to the backend in segments of at most `mss`.
    fn send_run(&mut self, context: &mut Context<'_>, start: u64, run: &[u8], mss: usize, ts: Option<TcpTimestamp>) {
        for (i, piece) in run.chunks(mss).enumerate() {
            self.send_to_backend(context, start + (i * mss) as u64, TcpFlags::ACK | TcpFlags::PSH, piece, ts);
        }
    }

    fn fail_tls(&mut self, context: &mut Context<'_>) -> SessionEvent {
        self.fail_with_alert(context, 10);
        SessionEvent::Ended(EndReason::TlsError)
    }

    /// A fatal alert to the client, then resets both ways.
    /// A fatal alert to the client with a FIN, the backend reset; the client's RST follows
    /// once the alert had time to arrive (a RST right behind it often reached the client's
    /// application first, which then saw only "connection reset").
    fn fail_with_alert(&mut self, context: &mut Context<'_>, description: u8) {
        context.counters.count_alert(Some(description));
        let mut sent_at = None;
        let emitter = self.client_emitter(context.now_ns);
        let mss = emitter.payload_room();
        let window = (self.our_receive_window() >> self.our_window_scale).min(65535) as u16;
        self.seal_pending(context);
        if let Some(splice) = self.splice.as_mut() {
            if splice.sender.fin_offset().is_none() && splice.seal_record(&mut context.out.pool, ContentType::Alert, &[2, description]) {
                // Everything queued leaves now, the alert and its FIN last: the session is gone
                // after this, so nothing would be sent again.
                splice.sender.push_fin();
                sent_at = Some(splice.sender.end() + 1);
                let ack_offset = splice.client_ack_offset(self.client_handshake_len);
                let out = &mut *context.out;
                splice.sender.flush(context.now_ns, mss, &mut |offset, bytes, fin| {
                    emitter.emit(out, data_flags(fin), offset, ack_offset, window, bytes);
                });
            }
        }
        match sent_at {
            Some(after_fin) => {
                self.reset_client_later(context, after_fin);
                self.reset_backend(context);
            }
            None => self.reset_both(context),
        }
    }

    /// Our own KeyUpdate toward the client (answering update_requested), then new keys.
    fn send_key_update(&mut self, context: &mut Context<'_>) {
        // The plaintext before it goes under the keys it was sent with.
        self.seal_pending(context);
        let Some(splice) = self.splice.as_mut() else { return };
        let Some(next) = splice.server_secret.as_ref().map(Secret::next_generation) else { return };
        splice.seal_record(&mut context.out.pool, ContentType::Handshake, &[24, 0, 0, 1, 0]);
        let aead = next_aead(&splice.sealer);
        splice.sealer.rekey(&next.traffic_keys(aead));
        splice.server_secret = Some(next);
        self.transmit_to_client(context);
    }

    /// A segment to the backend carrying plaintext at `plaintext_offset`.
    fn send_to_backend(
        &mut self,
        context: &mut Context<'_>,
        plaintext_offset: u64,
        flags: TcpFlags,
        payload: &[u8],
        client_ts: Option<TcpTimestamp>,
    ) {
        let Some(splice) = self.splice.as_mut() else { return };
        if !payload.is_empty() {
            // Only data moves it: a pure ACK past the box's FIN must not count the FIN as data.
            let end = plaintext_offset + payload.len() as u64;
            if end > splice.forwarded_plaintext {
                splice.request_forwarded_ns = context.now_ns.max(1);
            }
            splice.forwarded_plaintext = splice.forwarded_plaintext.max(end);
        }
        let backend = splice.backend;
        let mut options = TcpOptions::default();
        if backend.timestamps {
            // The client's clock toward the backend (monotone), and the backend's latest TSval
            // as the echo (RFC 7323 TS.Recent: the box is the backend's peer).
            let value = client_ts.map_or(self.client_ts_recent, |ts| ts.value);
            options.timestamp = Some(TcpTimestamp { value, echo_reply: backend.ts_recent });
        }
        if backend.sack {
            options.sack_blocks = splice.reorder.sack_blocks(backend.isn);
        }
        let plaintext_acked = splice.ack_for_backend();
        splice.backend_fin_ack_sent |= splice.backend_fin_acked();
        splice.last_ack_to_backend = plaintext_acked;
        // Every segment to the backend acknowledges all the box has.
        splice.backend_bytes_unacked = 0;
        let window_scale = self.syn.window_scale.unwrap_or(0);
        // The window is the box's own room, scaled as the client's SYN (replayed) said; a
        // window the field cannot carry is offered as its largest value.
        let edge = splice.backend_window_right_edge().min(splice.plaintext_frontier + (65535u64 << window_scale));
        splice.backend_window_edge = edge;
        let client_window = edge - splice.plaintext_frontier;
        let segment = Segment {
            source: self.backend_source,
            destination: self.backend,
            seq: SeqSpace::new(self.client_isn).seq(plaintext_offset).0,
            ack: SeqSpace::new(backend.isn).seq(plaintext_acked).0,
            flags,
            window: (client_window >> window_scale).min(65535) as u16,
            options,
            payload,
        };
        context.out.push_tcp(Port::Inside, self.backend_link(backend.mac), &segment);
    }

    /// After the client acknowledged bytes: tell the backend the window they freed, if it may
    /// be waiting for it (the window offered was under half the buffer and grew by two
    /// segments); otherwise the next acknowledgement of its data carries it.
    fn update_backend_window(&mut self, context: &mut Context<'_>, ts: Option<TcpTimestamp>) {
        let Some(splice) = self.splice.as_ref() else { return };
        let offered = splice.backend_window_edge;
        let grown = splice.backend_window_right_edge().saturating_sub(offered);
        let mss = splice.backend_payload_mss() as u64;
        let offered_window = offered.saturating_sub(splice.plaintext_frontier);
        if grown >= 2 * mss && offered_window < (SEND_BUFFER_LIMIT / 2) as u64 {
            self.ack_backend(context, ts);
        }
    }

    fn ack_backend(&mut self, context: &mut Context<'_>, ts: Option<TcpTimestamp>) {
        let Some(splice) = self.splice.as_ref() else { return };
        if splice.backend_acked_fin && splice.backend_fin_ack_sent {
            // Both FINs crossed and were acknowledged: the backend's connection is gone.
            return;
        }
        if splice.client_fin_forwarded
            && splice.reorder.is_empty()
            && splice.ack_for_backend() == splice.last_ack_to_backend
        {
            // After the box's FIN the client sends no data: an ACK that acknowledges nothing new
            // and reports no loss tells the backend nothing (and a backend in TIME-WAIT or
            // LAST-ACK may answer it with a RST).
            return;
        }
        let offset = splice.forwarded_plaintext + splice.client_fin_forwarded as u64;
        self.send_to_backend(context, offset, TcpFlags::ACK, &[], ts);
    }

    /// The client's FIN goes to the backend once everything before it was opened.
    fn forward_client_fin(&mut self, context: &mut Context<'_>) -> Option<SessionEvent> {
        let Some(splice) = self.splice.as_mut() else { return None };
        if splice.client_fin_forwarded {
            return None;
        }
        // The client's stream ends at its close_notify or at its FIN, whichever comes first,
        // once every record before that end is verified.
        let end = match (splice.client_close_notify, splice.client_fin) {
            (Some(close), _) => Some(close),
            (None, fin) => fin,
        };
        let complete = end.is_some_and(|end| splice.opener.is_idle() && splice.opener.next_header_offset() >= end);
        if complete {
            splice.client_fin_forwarded = true;
            splice.fin_to_backend_deadline_ns = Some(context.now_ns + FIN_RTO_NS);
            self.send_fin_to_backend(context);
        }
        None
    }

    fn send_fin_to_backend(&mut self, context: &mut Context<'_>) {
        let Some(splice) = self.splice.as_ref() else { return };
        let offset = splice.opener.next_plaintext_offset();
        self.send_to_backend(context, offset, TcpFlags::FIN | TcpFlags::ACK, &[], None);
    }

    /// The splice's close timers: the box's FIN toward the backend until acknowledged, and a
    /// bound on how long a half-closed session may sit idle.
    fn poll_close(&mut self, context: &mut Context<'_>) -> Option<SessionEvent> {
        let splice = self.splice.as_mut()?;
        let closing = splice.client_fin_forwarded || splice.backend_fin.is_some();
        if closing && context.now_ns.saturating_sub(self.last_activity_ns) > context.close_timeout_ns {
            self.reset_both(context);
            return Some(SessionEvent::Ended(EndReason::CloseTimeout));
        }
        let deadline = splice.fin_to_backend_deadline_ns?;
        if context.now_ns < deadline {
            return None;
        }
        splice.fin_to_backend_tries += 1;
        if splice.fin_to_backend_tries > MAX_RETRIES {
            self.reset_both(context);
            return Some(SessionEvent::Ended(EndReason::CloseTimeout));
        }
        splice.fin_to_backend_deadline_ns = Some(context.now_ns + (FIN_RTO_NS << splice.fin_to_backend_tries));
        self.send_fin_to_backend(context);
        None
    }

    fn backend_segment_splice(&mut self, context: &mut Context<'_>, tcp: &TcpSegment<'_>) -> Option<SessionEvent> {
        let Some(splice) = self.splice.as_mut() else { return None };
        let backend_isn = splice.backend.isn;
        let arrival = Arrival {
            offset: SeqSpace::new(backend_isn).offset(tcp.seq_number, splice.backend_reference),
            len: tcp.payload.len() as u64 + tcp.flags.contains(TcpFlags::FIN) as u64,
            rst: tcp.flags.contains(TcpFlags::RST),
            ack: tcp.flags.contains(TcpFlags::ACK).then(|| {
                SeqSpace::new(self.client_isn).offset(tcp.ack_number, splice.opener.next_plaintext_offset())
            }),
        };
        let receive_next = splice.ack_for_backend();
        let position = Position {
            receive_next,
            receive_window: splice.backend_window_right_edge().saturating_sub(receive_next),
            send_unacked: splice.backend_acked_plaintext,
            send_next: splice.forwarded_plaintext + splice.client_fin_forwarded as u64,
        };
        match splice.backend_guard.judge(context.now_ns, &arrival, &position) {
            Verdict::Accept => {}
            Verdict::Reset => {
                // What the backend sent before its RST reaches the client before the RST.
                self.send_pending(context);
                let Some(splice) = self.splice.as_ref() else { return None };
                let offset = splice.next_offset();
                self.send_to_client(context, TcpFlags::RST | TcpFlags::ACK, offset, &[]);
                return Some(SessionEvent::Ended(EndReason::BackendReset));
            }
            Verdict::Answer(why) => {
                count_refusal(context.counters, why, true);
                // Also how a keepalive or a zero-window probe (one byte below what the box
                // has, RFC 9293 3.8.4, 3.8.6.1) is answered: with the box's window. Were it
                // not, a window update the wire lost would leave the backend probing for ever.
                self.ack_backend(context, None);
                return None;
            }
            Verdict::Ignore(why) => {
                count_refusal(context.counters, why, false);
                return None;
            }
        }
        splice.backend_guard.received(&arrival);
        splice.backend_heard_ns = context.now_ns;
        splice.backend_probe = None;
        if let Some(ts) = tcp.options.timestamp {
            if acceptance::newer_timestamp(splice.backend.ts_recent, ts.value) {
                splice.backend.ts_recent = ts.value;
            }
        }
        let window = (tcp.window as u64) << splice.backend.window_scale;
        splice.backend_guard.peer_window(window);
        // RFC 5681's duplicate acknowledgement: no data, no FIN, the same window.
        let pure_ack = tcp.payload.is_empty() && !tcp.flags.contains(TcpFlags::FIN) && window == splice.backend_window;
        splice.backend_window = window;
        splice.sack_for_client = if splice.backend.sack {
            splice.backend_sack_for_client(&tcp.options.sack_blocks, tcp.ack_number, self.client_isn)
        } else {
            SackBlocks::default()
        };
        let offset = arrival.offset;
        splice.backend_reference = splice.backend_reference.max(offset);
        if tcp.flags.contains(TcpFlags::ACK) {
            // Plaintext of the client's stream the backend has: map to the client's records.
            let acked = SeqSpace::new(self.client_isn).offset(tcp.ack_number, splice.opener.next_plaintext_offset());
            let data_acked = acked.min(splice.opener.next_plaintext_offset());
            if splice.client_fin_forwarded && acked > splice.opener.next_plaintext_offset() {
                splice.backend_acked_fin = true;
                splice.fin_to_backend_deadline_ns = None;
            }
            splice.backend_acked_plaintext = splice.backend_acked_plaintext.max(data_acked);
            let cipher = splice.opener.ciphertext_for_plaintext_ack(data_acked);
            let retired = splice.opener.tracked_records();
            splice.opener.acknowledge(cipher);
            let retired = retired > splice.opener.tracked_records();
            splice.backend_acked_cipher = cipher;
            let mss = splice.backend_payload_mss();
            // Held client segments the opener refused for want of room (too many records
            // tracked) fit now: opened at once, not when the client next sends.
            if retired && !splice.client_reorder.is_empty() {
                // No client timestamp: the segments toward the backend carry the client's clock.
                if let Err(event) = self.open_held_client_bytes(context, None) {
                    return Some(event);
                }
            }
            let Some(splice) = self.splice.as_mut() else { return None };
            let action = splice.custody.backend_ack(context.now_ns, data_acked, pure_ack, mss);
            if let Some(event) = self.custody_action(context, action) {
                return Some(event);
            }
        }
        let sent_before = self.client_segments_sent(context);
        let frontier_before = self.splice.as_ref().map_or(0, |splice| splice.plaintext_frontier);
        if !tcp.payload.is_empty() {
            self.take_backend_bytes(context, offset, tcp.payload);
        }
        if tcp.flags.contains(TcpFlags::FIN) {
            let fin_offset = offset + tcp.payload.len() as u64;
            let Some(splice) = self.splice.as_mut() else { return None };
            if splice.backend_fin.is_some() {
                if splice.backend_fin_ack_sent {
                    // The backend's FIN again: the box's ACK of it was lost.
                    let offset = splice.forwarded_plaintext + splice.client_fin_forwarded as u64;
                    self.send_to_backend(context, offset, TcpFlags::ACK, &[], None);
                }
            } else if fin_offset == splice.plaintext_frontier && splice.reorder.is_empty() {
                self.close_toward_client(context, fin_offset);
            } else if fin_offset > splice.plaintext_frontier {
                splice.backend_fin_ahead = Some(fin_offset);
            }
        }
        // Bytes taken into the record being filled go at the end of the batch, with the news.
        let taken = self.splice.as_ref().is_some_and(|splice| splice.plaintext_frontier > frontier_before && !splice.pending_record.is_empty());
        if self.client_segments_sent(context) == sent_before && !taken {
            // Nothing went to the client. A pure ACK from the backend (a duplicate acknowledgement
            // of client bytes, RFC 5681) goes on as one; otherwise only news goes.
            let Some(splice) = self.splice.as_ref() else { return None };
            let window = (splice.window_for_client(self.client_handshake_len) >> self.our_window_scale).min(65535) as u16;
            let ack_offset = splice.client_ack_offset(self.client_handshake_len);
            if pure_ack || splice.last_to_client != (ack_offset, window) {
                let next = splice.next_offset();
                if let Some(splice) = self.splice.as_mut() {
                    splice.last_to_client = (ack_offset, window);
                }
                self.emit_to_client(context, TcpFlags::ACK, next, ack_offset, window, &[]);
            }
        }
        self.check_closed()
    }

    /// Frames queued for the outside port so far (to tell whether a step sent the client
    /// anything).
    fn client_segments_sent(&self, context: &Context<'_>) -> usize {
        context.out.count(Port::Outside)
    }

    /// Backend plaintext at `offset`: bytes that continue the stream go into the batch's record
    /// (with the held segments they make contiguous), bytes ahead of a gap are held, bytes
    /// taken already are ignored; then the box acknowledges what it has (SACKing what it holds),
    /// at once or at the end of the batch, and sends what the client's windows allow.
    fn take_backend_bytes(&mut self, context: &mut Context<'_>, offset: u64, payload: &[u8]) {
        let Some(splice) = self.splice.as_mut() else { return };
        let end = offset + payload.len() as u64;
        let frontier_before = splice.plaintext_frontier;
        if offset > splice.plaintext_frontier {
            match splice.reorder.hold(splice.plaintext_frontier, offset, payload) {
                Held::Kept => context.counters.backend_segments_held += 1,
                Held::Duplicate => {}
                Held::Full => context.counters.backend_segments_dropped += 1,
            }
        } else if end > splice.plaintext_frontier {
            // Bytes past the window the box offered (a backend ignoring it) are not taken.
            if splice.sender.stored() + splice.pending_len() > SEND_BUFFER_LIMIT + 64 * 1024 {
                context.counters.backend_segments_dropped += 1;
            } else {
                let fresh = &payload[(splice.plaintext_frontier - offset) as usize..];
                Self::take_plaintext(splice, context, fresh);
                while let Some((_, held)) = splice.reorder.take_next(splice.plaintext_frontier) {
                    Self::take_plaintext(splice, context, &held);
                }
            }
        }
        if splice.plaintext_frontier > frontier_before && splice.request_forwarded_ns != 0 {
            // The backend's answer began: how long it took, for least-load balancing.
            let sample = balance::ResponseSample::Answer(context.now_ns.saturating_sub(splice.request_forwarded_ns));
            context.response_times.push((self.backend, sample));
            splice.request_forwarded_ns = 0;
        }
        if let Some(fin) = splice.backend_fin_ahead {
            if fin == splice.plaintext_frontier && splice.reorder.is_empty() {
                splice.backend_fin_ahead = None;
                self.close_toward_client(context, fin);
            }
        }
        self.transmit_to_client(context);
        // Bytes that simply continue the stream are acknowledged once per receive batch, as a
        // Linux receiver's GRO and delayed ACKs do (RFC 5681 4.2 asks for at least every second
        // full-sized segment; a batch stretches that, bounded by STRETCH_ACK_LIMIT): without
        // it, the box sent the backend one ACK per segment, a third of all its frames in a bulk
        // download. A segment out of order, a duplicate or one the box could not take is
        // acknowledged at once: the backend's loss recovery needs those ACKs and their SACKs.
        if let Some(splice) = self.splice.as_mut() {
            let in_order = offset <= frontier_before && splice.plaintext_frontier == end && splice.reorder.is_empty();
            if in_order {
                splice.backend_bytes_unacked = splice.backend_bytes_unacked.saturating_add((end - frontier_before) as u32);
                if (splice.backend_bytes_unacked as usize) < STRETCH_ACK_LIMIT {
                    return;
                }
            }
        }
        self.ack_backend(context, None);
    }

    /// Whether the session has work for the end of the receive batch ([`Session::end_batch`]):
    /// a record being filled, or backend bytes waiting for their acknowledgement.
    pub(crate) fn owes_batch_work(&self) -> bool {
        self.splice.as_ref().is_some_and(|splice| !splice.pending_record.is_empty() || splice.backend_bytes_unacked > 0)
    }

    /// The end of a receive batch: the backend plaintext taken in it sealed as one record and
    /// sent, then its acknowledgement.
    pub(crate) fn end_batch(&mut self, context: &mut Context<'_>) {
        self.send_pending(context);
        let Some(splice) = self.splice.as_mut() else { return };
        if splice.backend_bytes_unacked == 0 {
            return;
        }
        // Cleared here too: `ack_backend` may decide that nothing needs saying.
        splice.backend_bytes_unacked = 0;
        self.ack_backend(context, None);
    }

    /// Seals the record being filled, if any, and sends what the client's windows allow.
    fn send_pending(&mut self, context: &mut Context<'_>) {
        if self.splice.as_ref().is_some_and(|splice| !splice.pending_record.is_empty()) {
            self.seal_pending(context);
            self.transmit_to_client(context);
        }
    }

    /// Seals the record being filled, if any (before any other record, and at the end of the
    /// batch); then, before the AES-GCM confidentiality limit (RFC 8446 section 5.5), TLS 1.3
    /// moves to the next key generation on its own.
    fn seal_pending(&mut self, context: &mut Context<'_>) {
        let Some(splice) = self.splice.as_mut() else { return };
        if splice.pending_record.is_empty() {
            return;
        }
        if splice.seal_pending_record() {
            context.counters.records_sealed += 1;
        }
        if splice.sealer.needs_key_update() && splice.server_secret.is_some() {
            self.send_key_update(context);
        }
    }

    /// Takes backend plaintext that continues the stream into the record being filled: one
    /// record per receive batch, as much as the batch brought (cut at the record limit). A
    /// record per backend segment (DESIGN's first cut) made the client read a 1.4 KB record at a
    /// time, two system calls each for OpenSSL: twice the client's kernel time of a 16 KB-record
    /// server (docs/bench-dataplane.md). Within a batch nothing waits: the batch is already
    /// here, and its end seals what it brought.
    fn take_plaintext(splice: &mut Splice, context: &mut Context<'_>, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if splice.pending_record.is_empty() {
                let mut record = context.out.pool.take();
                record.resize(splice.record_prefix(), 0);
                splice.pending_record = record;
            }
            let room = cutls_crypto::record::MAX_FRAGMENT_LEN - splice.pending_len();
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            splice.pending_record.extend_from_slice(now);
            splice.plaintext_frontier += now.len() as u64;
            bytes = rest;
            // A full record mid-batch; the key-update check follows with the batch's last one
            // (`Session::seal_pending`), a few records later at most.
            if splice.pending_len() == cutls_crypto::record::MAX_FRAGMENT_LEN && splice.seal_pending_record() {
                context.counters.records_sealed += 1;
            }
        }
    }

    /// The backend's FIN at plaintext offset `fin`, with everything before it sealed: a
    /// close_notify, sealed, carries it to the client.
    fn close_toward_client(&mut self, context: &mut Context<'_>, fin: u64) {
        self.seal_pending(context);
        let Some(splice) = self.splice.as_mut() else { return };
        if splice.backend_fin.is_some() || splice.sender.fin_offset().is_some() {
            return;
        }
        splice.backend_fin = Some(fin);
        splice.seal_record(&mut context.out.pool, ContentType::Alert, &[1, 0]);
        splice.sender.push_fin();
        self.transmit_to_client(context);
    }

    /// Sends the client what its windows allow from the send buffer (and, in recovery, what
    /// it lost first).
    fn transmit_to_client(&mut self, context: &mut Context<'_>) {
        let emitter = self.client_emitter(context.now_ns);
        let Some(splice) = self.splice.as_mut() else { return };
        let window = (splice.window_for_client(self.client_handshake_len) >> self.our_window_scale).min(65535) as u16;
        let ack_offset = splice.client_ack_offset(self.client_handshake_len);
        let now_ns = context.now_ns;
        let mss = emitter.payload_room();
        let mut sent = 0u64;
        let out = &mut *context.out;
        let retransmissions = splice.sender.transmit(now_ns, mss, &mut |offset, bytes, fin| {
            emitter.emit(out, data_flags(fin), offset, ack_offset, window, bytes);
            sent += 1;
        });
        context.counters.client_retransmits += retransmissions as u64;
        if sent > 0 {
            splice.last_to_client = (ack_offset, window);
            self.client_guard.offered(ack_offset, (window as u64) << self.our_window_scale);
        }
    }

    /// Carries out what the custody of client bytes asks for.
    fn custody_action(&mut self, context: &mut Context<'_>, action: Option<CustodyAction>) -> Option<SessionEvent> {
        match action? {
            CustodyAction::Resend(offset, mut bytes) => {
                if let Some(plain) = &self.plain {
                    // Never past the backend's window, nor past what the first flight sent.
                    let sent = if plain.flight_sent == u64::MAX { u64::MAX } else { plain.flight_sent };
                    let limit = (plain.backend_acked + plain.backend_window_bytes).min(sent);
                    bytes.truncate(limit.saturating_sub(offset) as usize);
                    if bytes.is_empty() {
                        return None;
                    }
                }
                context.counters.backend_retransmits += 1;
                let mss = match (&self.plain, &self.splice) {
                    (Some(plain), _) => plain.connected.map_or(536, |connected| plain_payload_mss(&connected.backend)),
                    (None, Some(splice)) => splice.backend_payload_mss(),
                    (None, None) => return None,
                };
                for (i, piece) in bytes.chunks(mss).enumerate() {
                    let at = offset + (i * mss) as u64;
                    if self.plain.is_some() {
                        self.send_plain_to_backend(context, at, piece);
                    } else {
                        self.send_to_backend(context, at, TcpFlags::ACK | TcpFlags::PSH, piece, None);
                    }
                }
                None
            }
            CustodyAction::GaveUp => {
                self.reset_both(context);
                Some(SessionEvent::Ended(EndReason::BackendUnreachable))
            }
        }
    }

    fn check_closed(&self) -> Option<SessionEvent> {
        let splice = self.splice.as_ref()?;
        // The client's side is done when its FIN came and the box acknowledged it (which it does
        // once the backend has the box's FIN); the backend's when the client acknowledged the
        // box's close_notify and FIN (and the box's acknowledgement of the backend's FIN went out
        // with the client's).
        let client_done = splice.client_fin.is_some() && splice.client_fin_forwarded && splice.backend_acked_fin;
        let backend_done = splice.backend_fin_acked();
        if client_done && backend_done {
            return Some(SessionEvent::Closed);
        }
        None
    }

    // -------------------------------------------------------------------------------------
    // Passthrough: plain TCP.

    /// The backend answered: shifts are fixed, and the first flight goes out (kept until the
    /// backend has it: the client was told it arrived).
    fn start_plain(&mut self, context: &mut Context<'_>) {
        let Backend::Established(info) = self.backend_state else { return };
        let our_ts = ts_now(context.now_ns);
        let client_window = (self.client_window >> self.syn.window_scale.unwrap_or(0)).min(65535) as u16;
        let Some(plain) = self.plain.as_mut() else { return };
        if plain.connected.is_some() {
            return;
        }
        let connected = PlainConnected {
            backend: info,
            seq_shift: self.our_isn.wrapping_sub(info.isn),
            ts_shift: our_ts.wrapping_sub(info.ts_recent),
        };
        plain.connected = Some(connected);
        plain.client_ack = SeqSpace::new(info.isn).seq(0).0;
        plain.client_window = client_window;
        plain.backend_ts_recent = info.ts_recent;
        plain.client_next_seq = SeqSpace::new(self.client_isn).seq(self.client_next).0;
        plain.backend_next_seq = SeqSpace::new(self.our_isn).seq(0).0;
        plain.backend_window_bytes = info.syn_window as u64;
        plain.custody.keep(context.now_ns, 0, &plain.first_flight);
        self.send_first_flight(context);
    }

    /// As much of the first flight as the backend's window takes now.
    fn send_first_flight(&mut self, context: &mut Context<'_>) {
        let Some(plain) = self.plain.as_mut() else { return };
        let Some(connected) = plain.connected else { return };
        let mss = plain_payload_mss(&connected.backend) as u64;
        let edge = (plain.backend_acked + plain.backend_window_bytes).min(plain.first_flight.len() as u64);
        let mut pieces = Vec::new();
        while plain.flight_sent < edge {
            let end = edge.min(plain.flight_sent + mss);
            pieces.push((plain.flight_sent, plain.first_flight[plain.flight_sent as usize..end as usize].to_vec()));
            plain.flight_sent = end;
        }
        if plain.flight_sent == plain.first_flight.len() as u64 {
            // All sent: custody keeps what the backend has yet to acknowledge.
            plain.first_flight = Vec::new();
            plain.flight_sent = u64::MAX;
        }
        for (offset, piece) in pieces {
            self.send_plain_to_backend(context, offset, &piece);
        }
    }

    /// Client bytes at client offset `offset`, sent by the box itself (first flight, resends).
    fn send_plain_to_backend(&self, context: &mut Context<'_>, offset: u64, payload: &[u8]) {
        let Some(plain) = self.plain.as_ref() else { return };
        let Some(connected) = plain.connected else { return };
        let mut options = TcpOptions::default();
        if connected.backend.timestamps {
            options.timestamp = Some(TcpTimestamp { value: self.client_ts_recent, echo_reply: plain.backend_ts_recent });
        }
        let segment = Segment {
            source: self.backend_source,
            destination: self.backend,
            seq: SeqSpace::new(self.client_isn).seq(offset).0,
            ack: plain.client_ack,
            flags: TcpFlags::ACK | TcpFlags::PSH,
            window: plain.client_window,
            options,
            payload,
        };
        context.out.push_tcp(Port::Inside, self.backend_link(connected.backend.mac), &segment);
    }

    fn client_segment_plain(&mut self, context: &mut Context<'_>, tcp: &TcpSegment<'_>) -> Option<SessionEvent> {
        if let Some(ts) = tcp.options.timestamp {
            self.client_ts_recent = ts.value;
        }
        let scale = self.syn.window_scale.unwrap_or(0);
        self.client_window = (tcp.window as u64) << scale;
        let offset = self.client_offset(tcp.seq_number.0);
        if tcp.flags.contains(TcpFlags::SYN) {
            if tcp.seq_number.0 == self.client_isn {
                self.send_syn_ack(context);
            }
            return None;
        }
        if tcp.flags.contains(TcpFlags::ACK) && tcp.ack_number >= SeqSpace::new(self.our_isn).seq(0) {
            self.syn_is_acknowledged();
        }
        if self.plain.as_ref().is_some_and(|plain| plain.connected.is_none()) {
            // The backend has not answered yet: the box is the client's peer on its own.
            match self.judge_client_segment(context, &self.client_arrival(tcp)) {
                Verdict::Accept => {}
                Verdict::Reset => return Some(SessionEvent::Ended(EndReason::ClientReset)),
                Verdict::Answer(_) | Verdict::Ignore(_) => return None,
            }
        }
        // Relayed segments are the backend's to judge, but one far from the stream (a forgery)
        // must change nothing here: not the reference later sequence numbers are unwrapped
        // against, not the positions the box's own resets use, not the FIN or the session.
        let in_stream = self.plain.as_ref().is_some_and(|plain| {
            let window = plain.backend_window_bytes.max(65535) + RELAY_SLACK;
            offset + tcp.payload.len() as u64 + RELAY_SLACK >= plain.backend_acked && offset <= plain.backend_acked + window
        });
        if in_stream || self.plain.as_ref().is_some_and(|plain| plain.connected.is_none()) {
            self.client_reference = self.client_reference.max(offset);
        }
        let Some(plain) = self.plain.as_mut() else { return None };
        let Some(connected) = plain.connected else {
            // In-order bytes are taken (bounded) and acknowledged: the box owes them to the
            // backend. A FIN waits: the client sends it again.
            let end = offset + tcp.payload.len() as u64;
            if !tcp.payload.is_empty() && offset <= self.client_next && end > self.client_next {
                let fresh = &tcp.payload[(self.client_next - offset) as usize..];
                let room = MAX_HANDSHAKE_BYTES.saturating_sub(plain.first_flight.len());
                let fresh = &fresh[..fresh.len().min(room)];
                plain.first_flight.extend_from_slice(fresh);
                plain.custody.acknowledge_client(self.client_next + fresh.len() as u64);
                self.client_next += fresh.len() as u64;
            }
            if !tcp.payload.is_empty() {
                self.send_ack_to_client(context);
            }
            return None;
        };
        let seq = tcp.seq_number.0;
        let end_seq = seq.wrapping_add(tcp.payload.len() as u32);
        let exact_reset = in_stream && (offset == plain.backend_acked || seq == plain.client_next_seq);
        if in_stream && SeqNumber(end_seq) > SeqNumber(plain.client_next_seq) {
            plain.client_next_seq = end_seq;
        }
        let mut options = TcpOptions::default();
        if connected.backend.timestamps {
            options.timestamp = tcp
                .options
                .timestamp
                .map(|ts| TcpTimestamp { value: ts.value, echo_reply: ts.echo_reply.wrapping_sub(connected.ts_shift) });
        }
        if connected.backend.sack {
            for block in tcp.options.sack_blocks.as_slice().iter().take(3) {
                let _ = options.sack_blocks.push(SackBlock {
                    left: SeqNumber(block.left.0.wrapping_sub(connected.seq_shift)),
                    right: SeqNumber(block.right.0.wrapping_sub(connected.seq_shift)),
                });
            }
        }
        let ack = tcp.ack_number.0.wrapping_sub(connected.seq_shift);
        if tcp.flags.contains(TcpFlags::ACK) && in_stream && plausible_ack(tcp.ack_number.0, plain.client_ack.wrapping_add(connected.seq_shift), plain.backend_next_seq) {
            plain.client_ack = ack;
            if let Some((fin, acked)) = plain.backend_fin.as_mut() {
                *acked |= tcp.ack_number >= SeqNumber(*fin) + 1;
            }
        }
        if in_stream {
            plain.client_window = tcp.window;
        }
        if tcp.flags.contains(TcpFlags::FIN) && plain.client_fin.is_none() && in_stream {
            plain.client_fin = Some((end_seq, false));
        }
        let segment = Segment {
            source: self.backend_source,
            destination: self.backend,
            seq,
            ack: if tcp.flags.contains(TcpFlags::ACK) { ack } else { 0 },
            flags: tcp.flags,
            window: tcp.window,
            options,
            payload: tcp.payload,
        };
        context.out.push_tcp(Port::Inside, self.backend_link(connected.backend.mac), &segment);
        // The backend takes a RST only at exactly its RCV.NXT (RFC 5961 3.2; a forged one it
        // answers with a challenge ACK, which the box relays): the session ends for those alone.
        if tcp.flags.contains(TcpFlags::RST) && exact_reset {
            return Some(SessionEvent::Ended(EndReason::ClientReset));
        }
        self.plain_closed()
    }

    fn backend_segment_plain(&mut self, context: &mut Context<'_>, tcp: &TcpSegment<'_>) -> Option<SessionEvent> {
        let our_ts = ts_now(context.now_ns);
        let our_window_scale = self.our_window_scale;
        let client_reference = self.client_reference;
        let client_space = SeqSpace::new(self.client_isn);
        let (timestamps, client_ts_recent) = (self.timestamps, self.client_ts_recent);
        let client_window_scale = self.syn.window_scale.unwrap_or(0);
        let Some(plain) = self.plain.as_mut() else { return None };
        let Some(connected) = plain.connected else { return None };
        let backend = connected.backend;
        let seq = tcp.seq_number.0.wrapping_add(connected.seq_shift);
        let end_seq = seq.wrapping_add(tcp.payload.len() as u32);
        // As for the client's segments: one far from what the client acknowledged (a
        // forgery) is relayed, for the client to refuse, and changes nothing here.
        let past_client_ack = (tcp.seq_number - SeqNumber(plain.client_ack)) as i64;
        let client_window = ((plain.client_window as u64) << client_window_scale).max(65535) + RELAY_SLACK;
        let in_stream =
            past_client_ack + tcp.payload.len() as i64 + RELAY_SLACK as i64 >= 0 && past_client_ack <= client_window as i64;
        // The client takes a RST at its latest acknowledgement (here in the backend's space),
        // or the box at the backend's own next sequence number.
        let exact_reset = in_stream && (tcp.seq_number.0 == plain.client_ack || seq == plain.backend_next_seq);
        if in_stream && SeqNumber(end_seq) > SeqNumber(plain.backend_next_seq) {
            plain.backend_next_seq = end_seq;
        }
        let mut options = TcpOptions::default();
        if let Some(ts) = tcp.options.timestamp.filter(|_| in_stream) {
            plain.backend_ts_recent = ts.value;
        }
        if timestamps {
            // The client agreed to timestamps with the box: every segment carries one.
            options.timestamp = Some(match tcp.options.timestamp {
                Some(ts) => TcpTimestamp { value: ts.value.wrapping_add(connected.ts_shift), echo_reply: ts.echo_reply },
                None => TcpTimestamp { value: our_ts, echo_reply: client_ts_recent },
            });
        }
        if backend.sack {
            options.sack_blocks = tcp.options.sack_blocks;
        }
        let window_bytes = (tcp.window as u64) << backend.window_scale;
        let window = (window_bytes >> our_window_scale).min(65535) as u16;
        let pure = tcp.payload.is_empty() && !tcp.flags.contains(TcpFlags::FIN) && tcp.window == plain.backend_window;
        let mut action = None;
        if in_stream {
            plain.backend_window = tcp.window;
        }
        if tcp.flags.contains(TcpFlags::ACK)
            && in_stream
            && plausible_ack(tcp.ack_number.0, client_space.seq(plain.backend_acked).0, plain.client_next_seq)
        {
            let ack = tcp.ack_number.0;
            if let Some((fin, acked)) = plain.client_fin.as_mut() {
                *acked |= SeqNumber(ack) >= SeqNumber(*fin) + 1;
            }
            let acked = client_space.offset(SeqNumber(ack), client_reference);
            plain.backend_acked = plain.backend_acked.max(acked);
            plain.backend_window_bytes = window_bytes;
            action = plain.custody.backend_ack(context.now_ns, acked, pure, plain_payload_mss(&backend));
        }
        if tcp.flags.contains(TcpFlags::FIN) && plain.backend_fin.is_none() && in_stream {
            plain.backend_fin = Some((end_seq, false));
        }
        let segment = Segment {
            source: self.vip,
            destination: self.client,
            seq,
            ack: tcp.ack_number.0,
            flags: tcp.flags,
            window,
            options,
            payload: tcp.payload,
        };
        context.out.push_tcp(Port::Outside, self.reply_link(), &segment);
        if tcp.flags.contains(TcpFlags::RST) && exact_reset {
            return Some(SessionEvent::Ended(EndReason::BackendReset));
        }
        if let Some(event) = self.custody_action(context, action) {
            return Some(event);
        }
        self.send_first_flight(context);
        self.plain_closed()
    }

    /// Passthrough: the segments a path MTU message quotes are the other peer's, forwarded
    /// unchanged, so the message goes on to that peer, its quoted header translated, as a
    /// router on its path would send it. Quoted sequence numbers must lie within the last
    /// megabyte sent that way.
    fn relay_path_mtu(&self, context: &mut Context<'_>, plain: &PlainSplice, port: Port, reporter: IpAddr, mtu: u32, seq: u32) {
        let Some(connected) = plain.connected else {
            context.counters.icmp_ignored += 1;
            return;
        };
        let in_flight = |next: u32| next.wrapping_sub(seq).wrapping_sub(1) < 1 << 20;
        let frame = match port {
            // About the backend's data toward the client.
            Port::Outside if in_flight(plain.backend_next_seq) && reporter.is_ipv4() == self.backend.is_ipv4() => {
                let quoted = Segment {
                    source: self.backend,
                    destination: self.backend_source,
                    seq: seq.wrapping_sub(connected.seq_shift),
                    ack: 0,
                    flags: TcpFlags::ACK,
                    window: 0,
                    options: TcpOptions::default(),
                    payload: &[],
                };
                (Port::Inside, emit::packet_too_big_frame(self.backend_link(connected.backend.mac), reporter, mtu, &quoted))
            }
            // About the client's data toward the backend.
            Port::Inside if in_flight(plain.client_next_seq) && reporter.is_ipv4() == self.client.is_ipv4() => {
                let quoted = Segment {
                    source: self.client,
                    destination: self.vip,
                    seq,
                    ack: 0,
                    flags: TcpFlags::ACK,
                    window: 0,
                    options: TcpOptions::default(),
                    payload: &[],
                };
                (Port::Outside, emit::packet_too_big_frame(self.reply_link(), reporter, mtu, &quoted))
            }
            _ => {
                context.counters.icmp_ignored += 1;
                return;
            }
        };
        context.counters.path_mtu_relayed += 1;
        context.out.push(frame.0, frame.1);
    }

    /// Both FINs crossed and were acknowledged.
    fn plain_closed(&self) -> Option<SessionEvent> {
        let plain = self.plain.as_ref()?;
        if matches!((plain.client_fin, plain.backend_fin), (Some((_, true)), Some((_, true)))) {
            return Some(SessionEvent::Ended(EndReason::Fin));
        }
        None
    }

    fn reset_plain(&self, context: &mut Context<'_>, plain: &PlainSplice) {
        let client_reset = Segment {
            source: self.vip,
            destination: self.client,
            seq: if plain.connected.is_some() { plain.backend_next_seq } else { SeqSpace::new(self.our_isn).seq(0).0 },
            ack: 0,
            flags: TcpFlags::RST,
            window: 0,
            options: TcpOptions::default(),
            payload: &[],
        };
        context.out.push_tcp(Port::Outside, self.reply_link(), &client_reset);
        let Some(connected) = plain.connected else { return };
        let backend_reset = Segment {
            source: self.backend_source,
            destination: self.backend,
            seq: plain.client_next_seq,
            ack: 0,
            flags: TcpFlags::RST,
            window: 0,
            options: TcpOptions::default(),
            payload: &[],
        };
        context.out.push_tcp(Port::Inside, self.backend_link(connected.backend.mac), &backend_reset);
    }
}

impl Splice {
    /// Our next offset toward the client: past the FIN once the box sent it (a pure ACK or a
    /// RST at the FIN's own sequence number is outside the client's window and dropped).
    fn next_offset(&self) -> u64 {
        self.sender.next_offset()
    }

    /// Our acknowledgement toward the backend: everything sealed (the box holds it for the
    /// client now), and the backend's FIN once the client has the close_notify it became.
    fn ack_for_backend(&self) -> u64 {
        self.plaintext_frontier + self.backend_fin_acked() as u64
    }

    /// The right edge of the window to offer the backend (a plaintext offset): what the send
    /// buffer and the reorder buffer have left. It never moves left of what was offered.
    fn backend_window_right_edge(&self) -> u64 {
        let held = self.sender.stored() + self.pending_len() + self.reorder.stored();
        let room = SEND_BUFFER_LIMIT.saturating_sub(held) as u64;
        self.backend_window_edge.max(self.plaintext_frontier + room)
    }

    fn backend_fin_acked(&self) -> bool {
        self.backend_fin.is_some() && self.sender.fin_acked()
    }

    /// Our acknowledgement toward the client: what the backend has acknowledged, mapped.
    fn client_ack_offset(&self, client_handshake_len: u64) -> u64 {
        let fin = match self.client_fin {
            Some(fin) if self.client_fin_forwarded && self.backend_acked_fin => Some(fin + 1),
            _ => None,
        };
        fin.unwrap_or(self.backend_acked_cipher.max(client_handshake_len).max(self.custody.acked_cipher()))
    }

    /// The window offered to the client, in bytes past our acknowledgement: the backend's
    /// window past what the backend acknowledged, less what the box took on its own (custody)
    /// beyond that. Otherwise a client the box acknowledged ahead would overrun the backend,
    /// whose drops only the box could repair, one segment at a time.
    fn window_for_client(&self, client_handshake_len: u64) -> u64 {
        let right_edge = self.backend_acked_cipher.max(client_handshake_len) + self.backend_window;
        right_edge.saturating_sub(self.client_ack_offset(client_handshake_len))
    }

    /// The plaintext one segment to the backend carries at most: the backend's MSS counts
    /// payload only, and the timestamp option takes 12 bytes of it.
    fn backend_payload_mss(&self) -> usize {
        (self.backend.mss.max(64) - if self.backend.timestamps { 12 } else { 0 }) as usize
    }

    /// The backend's SACK blocks (client plaintext) as client offsets: whole verified records.
    /// A D-SACK (RFC 2883: a first block below the acknowledgement `ack`, or inside the second)
    /// is not passed on: the duplicate the backend reports is one the box sent, not the
    /// client, and a client told that its retransmission was needless undoes its recovery
    /// (Linux, after a timeout, then believes everything is in flight and waits for the next).
    fn backend_sack_for_client(&self, blocks: &SackBlocks, ack: SeqNumber, client_isn: u32) -> SackBlocks {
        let mut translated = SackBlocks::default();
        let reference = self.opener.next_plaintext_offset();
        let blocks = blocks.as_slice();
        let duplicate = |block: &SackBlock| {
            block.right <= ack || blocks.get(1).is_some_and(|second| second.left <= block.left && block.right <= second.right)
        };
        let skip = blocks.first().is_some_and(duplicate) as usize;
        // Three blocks at most: with timestamps, four would not fit the 40 bytes of options.
        for block in blocks.iter().skip(skip).take(3) {
            let left = SeqSpace::new(client_isn).offset(block.left, reference);
            let right = SeqSpace::new(client_isn).offset(block.right, reference);
            if let Some((start, stop)) = self.opener.ciphertext_range_for_plaintext(left, right) {
                let _ = translated.push(SackBlock {
                    left: SeqSpace::new(client_isn).seq(start),
                    right: SeqSpace::new(client_isn).seq(stop),
                });
            }
        }
        translated
    }

    /// The SACK blocks toward the client: the segments the box holds itself (the latest first),
    /// then what the backend SACKed, translated; three at most. A translated block at or below
    /// our acknowledgement (the box took custody of those bytes) is left out: the client would
    /// read it as a D-SACK, a needless retransmission, and undo its recovery.
    fn client_sack(&self, client_isn: u32, client_handshake_len: u64) -> SackBlocks {
        let mut blocks = self.client_reorder.sack_blocks(client_isn);
        let overlaps = |a: &SackBlock, b: &SackBlock| {
            a.left < b.right && b.left < a.right
        };
        let ack = SeqSpace::new(client_isn).seq(self.client_ack_offset(client_handshake_len));
        for block in self.sack_for_client.as_slice() {
            if blocks.as_slice().len() >= 3 {
                break;
            }
            if block.left >= ack && !blocks.as_slice().iter().any(|held| overlaps(held, block)) {
                let _ = blocks.push(*block);
            }
        }
        blocks
    }

    /// What a record holds before its plaintext: the header and the explicit nonce.
    fn record_prefix(&self) -> usize {
        cutls_crypto::record::HEADER_LEN + self.sealer.framing().explicit_nonce_len()
    }

    /// Backend plaintext in the record being filled.
    fn pending_len(&self) -> usize {
        self.pending_record.len().saturating_sub(self.record_prefix())
    }

    /// Seals the record being filled (its plaintext is already in place) and queues it for the
    /// client. False if the sealer refused: its plaintext is gone with it, which only a
    /// sequence number past 2^64 can cause.
    fn seal_pending_record(&mut self) -> bool {
        let mut record = std::mem::take(&mut self.pending_record);
        let len = record.len().saturating_sub(self.record_prefix());
        if len == 0 {
            return false;
        }
        record.resize(self.sealer.record_len(len), 0);
        if self.sealer.seal_in_place(ContentType::ApplicationData, &mut record, len).is_err() {
            return false;
        }
        self.sender.push(record);
        true
    }

    /// Seals a record and queues it for the client (the record being filled goes first:
    /// [`Session::seal_pending`]).
    /// The record is sealed in a buffer from `pool`, which gets it back once the client has
    /// acknowledged it.
    fn seal_record(&mut self, pool: &mut FramePool, content_type: ContentType, plaintext: &[u8]) -> bool {
        debug_assert!(self.pending_record.is_empty(), "the record being filled is sealed first");
        // The plaintext copied once, to its place behind the header; the sealer writes the
        // rest (header, nonce, tag), so nothing else needs zeroing first.
        let mut record = pool.take();
        record.resize(self.record_prefix(), 0);
        record.extend_from_slice(plaintext);
        record.resize(self.sealer.record_len(plaintext.len()), 0);
        if self.sealer.seal_in_place(content_type, &mut record, plaintext.len()).is_err() {
            pool.give(record);
            return false;
        }
        self.sender.push(record);
        true
    }
}

/// What a segment toward the client needs of its session, copied out so that the send buffer
/// can be borrowed while segments are built.
#[derive(Clone, Copy)]
struct ClientEmitter {
    link: Link,
    vip: SocketAddr,
    client: SocketAddr,
    our_isn: u32,
    client_isn: u32,
    timestamp: Option<TcpTimestamp>,
    sack_blocks: SackBlocks,
    mss: u16,
}

impl ClientEmitter {
    /// The payload one segment carries at most: the client's MSS (or a smaller path MTU learnt
    /// since) counts payload without options.
    fn payload_room(&self) -> usize {
        let sack_blocks = self.sack_blocks.as_slice().len();
        let option_bytes = if self.timestamp.is_some() { 12 } else { 0 } + if sack_blocks > 0 { 4 + 8 * sack_blocks } else { 0 };
        (self.mss as usize).saturating_sub(option_bytes).max(64)
    }

    /// Segments at our offset `offset`: a payload larger than one segment leaves in several.
    fn emit(&self, out: &mut Output, flags: TcpFlags, offset: u64, ack_offset: u64, window: u16, payload: &[u8]) {
        let options = TcpOptions { timestamp: self.timestamp, sack_blocks: self.sack_blocks, ..TcpOptions::default() };
        let room = self.payload_room();
        let mut at = 0;
        loop {
            let end = payload.len().min(at + room);
            let last = end == payload.len();
            let mut piece_flags = flags;
            if !last {
                piece_flags.remove(TcpFlags::FIN | TcpFlags::PSH);
            }
            let segment = Segment {
                source: self.vip,
                destination: self.client,
                seq: SeqSpace::new(self.our_isn).seq(offset + at as u64).0,
                ack: SeqSpace::new(self.client_isn).seq(ack_offset).0,
                flags: piece_flags,
                window,
                options,
                payload: &payload[at..end],
            };
            out.push_tcp(Port::Outside, self.link, &segment);
            if last {
                break;
            }
            at = end;
        }
    }
}

/// The flags of a segment from the send buffer: data, with the FIN where it ends the stream.
/// A relayed segment is in its stream when it lies within the receiver's window of what the
/// receiver acknowledged, give or take this much (retransmissions a window back, a window
/// the box saw grow late).
const RELAY_SLACK: u64 = 1 << 20;

/// Whether a relayed acknowledgement `ack` is one to remember: not of data the other side never
/// sent (past `sent_end`, its FIN allowed), not far below the last one remembered (`last`).
fn plausible_ack(ack: u32, last: u32, sent_end: u32) -> bool {
    SeqNumber(ack) <= SeqNumber(sent_end) + 1 && SeqNumber(ack) - SeqNumber(last) >= -(RELAY_SLACK as i32)
}

/// Counts a segment the guard refused (`answered`: with an ACK).
fn count_refusal(counters: &mut Counters, why: Refusal, answered: bool) {
    match why {
        Refusal::OutOfWindow => counters.segments_out_of_window += 1,
        Refusal::ResetInWindow if answered => counters.challenge_acks += 1,
        Refusal::ResetInWindow => counters.challenge_acks_held += 1,
        Refusal::AckOutOfRange => counters.acks_out_of_range += 1,
        Refusal::NoAck => counters.segments_without_ack += 1,
    }
}

fn data_flags(fin: bool) -> TcpFlags {
    if fin {
        TcpFlags::ACK | TcpFlags::PSH | TcpFlags::FIN
    } else {
        TcpFlags::ACK | TcpFlags::PSH
    }
}

/// The client bytes one plain segment to the backend carries at most.
fn plain_payload_mss(backend: &BackendInfo) -> usize {
    (backend.mss.max(64) - if backend.timestamps { 12 } else { 0 }) as usize
}

fn next_aead(sealer: &RecordSealer) -> cutls_crypto::AeadAlgorithm {
    sealer.framing().aead
}

/// The SYN-ACK of a SYN cookie: no state kept, the cookie as our initial sequence number,
/// `options` what the cookie can remember.
pub(crate) fn syn_ack_with_cookie(link: Link, key: FlowKey, syn: &TcpSegment<'_>, cookie: u32, options: TcpOptions, out: &mut Output) {
    let segment = Segment {
        source: key.destination,
        destination: key.source,
        seq: cookie,
        ack: syn.seq_number.0.wrapping_add(1),
        flags: TcpFlags::SYN | TcpFlags::ACK,
        window: 65535,
        options,
        payload: &[],
    };
    out.push_tcp(Port::Outside, link.reversed(), &segment);
}

/// A RST answering `tcp`, which arrived on `port` for a flow no session owns (a segment to a
/// VIP without a session, or a backend still talking to an ended session), sent back out of
/// the same port (RFC 9293 section 3.10.7.1).
pub(crate) fn reset_segment(port: Port, link: Link, key: FlowKey, tcp: &TcpSegment<'_>, out: &mut Output) {
    let (seq, ack, flags) = if tcp.flags.contains(TcpFlags::ACK) {
        (tcp.ack_number.0, 0, TcpFlags::RST)
    } else {
        let len = tcp.payload.len() as u32 + tcp.flags.contains(TcpFlags::SYN) as u32 + tcp.flags.contains(TcpFlags::FIN) as u32;
        (0, tcp.seq_number.0.wrapping_add(len), TcpFlags::RST | TcpFlags::ACK)
    };
    let segment = Segment {
        source: key.destination,
        destination: key.source,
        seq,
        ack,
        flags,
        window: 0,
        options: TcpOptions::default(),
        payload: &[],
    };
    out.push_tcp(port, link.reversed(), &segment);
}

/// The RST of a session that ended with a fatal alert, at the sequence number the box's FIN
/// left (`seq`), for a client segment that came after.
pub(crate) fn reset_after_alert(link: Link, key: FlowKey, seq: u32, out: &mut Output) {
    out.push_tcp(Port::Outside, link.reversed(), &bare_reset(key.destination, key.source, seq));
}

/// A RST without ACK at `seq` (RFC 9293: the receiver takes it when `seq` is its RCV.NXT).
fn bare_reset(source: SocketAddr, destination: SocketAddr, seq: u32) -> Segment<'static> {
    Segment { source, destination, seq, ack: 0, flags: TcpFlags::RST, window: 0, options: TcpOptions::default(), payload: &[] }
}

/// TIME-WAIT's answer to a FIN sent again on a connection the box closed: the ACK of it, as
/// `tcp` asks for it. `ts_value` is the box's clock on that connection (timestamps on it).
pub(crate) fn time_wait_ack(port: Port, link: Link, key: FlowKey, tcp: &TcpSegment<'_>, ts_value: Option<u32>, out: &mut Output) {
    let len = tcp.payload.len() as u32 + tcp.flags.contains(TcpFlags::FIN) as u32;
    let mut options = TcpOptions::default();
    if let (Some(value), Some(theirs)) = (ts_value, tcp.options.timestamp) {
        options.timestamp = Some(TcpTimestamp { value, echo_reply: theirs.value });
    }
    let segment = Segment {
        source: key.destination,
        destination: key.source,
        seq: tcp.ack_number.0,
        ack: tcp.seq_number.0.wrapping_add(len),
        flags: TcpFlags::ACK,
        window: 0,
        options,
        payload: &[],
    };
    out.push_tcp(port, link.reversed(), &segment);
}

/// Length of the whole TLS records at the start of `bytes`.
/// What of the client's handshake bytes goes to rustls.
#[derive(Debug, PartialEq, Eq)]
enum Feed {
    /// This many bytes: the complete records (0: wait for more).
    Records(usize),
    /// The connection's first record is longer than a plaintext record may be (2^14, RFC 8446
    /// 5.1, RFC 5246 6.2.1), or a record longer than any ciphertext (2^14 + 2048, RFC 5246
    /// 6.2.3): `record_overflow`. rustls checks the plaintext limit only on records it decrypts.
    Overflow,
    /// A header no TLS record has: all of it, for rustls to refuse.
    NotTls,
}

/// The bytes of `bytes` (the client's handshake stream from a record boundary; `first`: from
/// the first record of the connection) rustls may take: its complete records; and, at a header
/// no TLS record has (a content type outside 20-24, a version other than 3.x), everything, so
/// that rustls refuses the flight with its alert now
/// rather than the box waiting for a record that never ends (plain HTTP or an SSLv2 hello sent
/// to a TLS port).
fn feed_for_rustls(bytes: &[u8], first: bool) -> Feed {
    let mut at = 0;
    while bytes.len() - at >= 5 {
        if !handshake::is_tls_record_header(&bytes[at..]) {
            return Feed::NotTls;
        }
        let body = u16::from_be_bytes([bytes[at + 3], bytes[at + 4]]) as usize;
        // The ciphertext limit of any record (RFC 5246 6.2.3; TLS 1.3's is lower, rustls checks
        // that one), and the plaintext limit of the first.
        if body > cutls_crypto::record::MAX_BODY_LEN_TLS12 || first && at == 0 && body > cutls_crypto::record::MAX_FRAGMENT_LEN {
            return Feed::Overflow;
        }
        if bytes.len() - at < 5 + body {
            break;
        }
        at += 5 + body;
    }
    Feed::Records(at)
}

/// The description of the alert that ends `flight`, if it is a plaintext alert record (a
/// handshake refused before any key: the ClientHello's faults); `None` for an encrypted one.
fn plaintext_alert(flight: &[u8]) -> Option<u8> {
    let record = flight.get(flight.len().checked_sub(7)?..)?;
    (record[0] == 21 && record[1] == 3 && record[3..5] == [0, 2] && record[5] == 2).then_some(record[6])
}

/// Our timestamp clock: milliseconds.
pub(crate) fn ts_now(now_ns: u64) -> u32 {
    (now_ns / 1_000_000) as u32
}

#[cfg(test)]
mod tests {
    /// What an established session holds inline (the heap adds the send buffer, the opener's
    /// records and the buffers in flight). Measured 2026-12-02: Session 760 B, Splice 3,968 B
    /// (the opener's and the sealer's expanded AES-GCM keys with their GHASH powers are some
    /// 1.8 KB each); with the box's sender toward the client (congestion window, RTT, path
    /// model, SACK scoreboard, RACK's clock) and the two reorder buffers, Splice 4,544 B. A
    /// bound, so that growth is a decision. The guard toward the client (RFC 5961, 32 B):
    /// Session 808 B; with the handshake deadline, 816 B.
    #[test]
    fn an_established_session_stays_small() {
        let session = std::mem::size_of::<super::Session>();
        let splice = std::mem::size_of::<super::Splice>();
        eprintln!("Session {session} B, Splice {splice} B");
        assert!(session <= 816, "Session is {session} bytes");
        assert!(splice <= 4608, "Splice is {splice} bytes");
    }
}
