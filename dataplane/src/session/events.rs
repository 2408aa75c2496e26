//! What an engine tells the control plane (when [`super::EngineConfig::events`] is set): a
//! session opened, its TLS handshake done, it ended and why; and, on request, each live
//! session's progress ([`super::Engine::progress_since`]). The control thread builds its
//! session database from these; the engine keeps nothing for it beyond the queue, which the
//! poll loop empties every turn.

use std::net::SocketAddr;

use super::EndReason;

/// Something that happened to a session, for the control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A client's SYN was taken and a backend chosen.
    Opened(Opened),
    /// The TLS handshake finished: what was negotiated.
    Tls { id: u64, at_ns: u64, facts: TlsFacts },
    /// The session went to its listener's passthrough pool: another backend.
    Rerouted { id: u64, backend: SocketAddr, backend_source: SocketAddr },
    /// The session is over: why, and where it had got to.
    Ended { id: u64, at_ns: u64, reason: EndReason, progress: Progress },
}

/// A session as its client's SYN made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The engine's id: unique in the box (each loop hands out its own residues, see
    /// [`super::LoopShare`]).
    pub id: u64,
    /// Index of the listener in the engine's configuration.
    pub listener: usize,
    pub client: SocketAddr,
    pub vip: SocketAddr,
    pub backend: SocketAddr,
    /// Where the box talks to the backend from: the client (transparent) or the box (SNAT).
    pub backend_source: SocketAddr,
    pub at_ns: u64,
}

/// What a TLS handshake negotiated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFacts {
    /// The client's SNI, as rustls accepted it.
    pub server_name: Option<String>,
    /// The ALPN protocol agreed, if any (lossily as text).
    pub alpn: Option<String>,
    /// "TLSv1.3", "TLSv1.2".
    pub version: &'static str,
    /// The IANA name of the suite ("TLS13_AES_128_GCM_SHA256").
    pub suite: &'static str,
}

/// Where a live session has got to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub id: u64,
    pub phase: Phase,
    pub last_activity_ns: u64,
    /// Plaintext bytes sent to the backend (client requests), and taken from the backend
    /// (responses) for the client. For a passthrough session, bytes either way are not
    /// tracked (0).
    pub to_backend_bytes: u64,
    pub to_client_bytes: u64,
    /// Records sealed toward the client: the next record sequence number of the box's
    /// direction (the handshake's own records included in TLS 1.2's count, not in 1.3's).
    pub records_to_client: u64,
    /// Where both TCP connections stand, once spliced.
    pub tcp: Option<TcpFacts>,
}

/// A spliced session's TCP state on both sides, as sequence numbers on the wire (what tcpdump
/// shows), for an operator looking at a session that does not move.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFacts {
    /// Toward the client: the box's next sequence number, and the client's latest
    /// acknowledgement (the acknowledgement the box waits for is the first).
    pub to_client_next_seq: u32,
    pub client_acked_seq: u32,
    /// The acknowledgement the box gives the client (its bytes the backend has).
    pub ack_to_client: u32,
    /// Toward the backend: the box's next sequence number (the client's sequence space,
    /// plaintext offsets), and the backend's latest acknowledgement.
    pub to_backend_next_seq: u32,
    pub backend_acked_seq: u32,
    /// The acknowledgement the box last gave the backend.
    pub ack_to_backend: u32,
    /// The record sequence number of the next client record.
    pub records_from_client: u64,
}

/// A session's phase, as an operator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// TCP or TLS handshake with the client.
    Handshake,
    /// Handshake done, the backend not connected yet.
    Connecting,
    /// Records spliced both ways.
    Spliced,
    /// Plain TCP to a passthrough pool.
    Passthrough,
    /// One side has closed (FIN or close_notify carried to the other).
    Closing,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Handshake => "handshake",
            Phase::Connecting => "connecting",
            Phase::Spliced => "spliced",
            Phase::Passthrough => "passthrough",
            Phase::Closing => "closing",
        }
    }
}

/// The engine's queue of events: off (`None`) unless the configuration asks for them.
#[derive(Default)]
pub(crate) struct EventQueue {
    events: Option<Vec<Event>>,
}

impl EventQueue {
    pub(crate) fn new(enabled: bool) -> EventQueue {
        EventQueue { events: enabled.then(Vec::new) }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.events.is_some()
    }

    /// Queues an event (made only when someone listens: `make` is not called otherwise).
    pub(crate) fn push(&mut self, make: impl FnOnce() -> Event) {
        if let Some(events) = &mut self.events {
            events.push(make());
        }
    }

    /// Moves every queued event to `into`.
    pub(crate) fn drain_into(&mut self, into: &mut Vec<Event>) {
        if let Some(events) = &mut self.events {
            into.append(events);
        }
    }
}
