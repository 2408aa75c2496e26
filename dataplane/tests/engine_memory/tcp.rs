//! A small TCP endpoint: enough of RFC 9293 and RFC 7323 to talk to the engine the way a Linux
//! peer would, and strict about what it receives.
//!
//! What it does: active or passive open with MSS, window scale, SACK-permitted and timestamps
//! (Linux's SYN), a byte stream cut into MSS-sized segments within the peer's window, an ACK for
//! every segment received, out-of-order data kept and SACKed, retransmission on timeout
//! (go-back-N) and after three duplicate ACKs (one segment), zero-window probes, FIN, RST.
//! Not modelled: congestion control (the wire here has no bottleneck), delayed ACKs, Nagle,
//! urgent data, TIME-WAIT.
//!
//! Strictness: anything a correct peer must not do is recorded in [`Tcp::violations`] (the
//! tests assert the list is empty), and where Linux would drop the segment (PAWS, an ACK of
//! unsent data) so does this model, so that such a bug shows up as a stall with a reason rather
//! than silently passing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use cutls_dataplane::wire::{SackBlock, SackBlocks, SeqNumber, TcpFlags, TcpOptions, TcpSegment, TcpTimestamp};

use super::frames::Outgoing;
use super::kind;

const MS: u64 = 1_000_000;
/// Bytes a timestamps option takes in every segment (10, padded to 12), which Linux takes off
/// the MSS when it sizes segments (RFC 6691).
const TIMESTAMP_OPTION_LEN: usize = 12;

#[derive(Clone, Copy, Debug)]
pub struct TcpConfig {
    /// The MSS we advertise (and enforce on what we receive).
    pub mss: u16,
    pub window_scale: Option<u8>,
    pub sack: bool,
    pub timestamps: bool,
    /// The receive buffer: what we advertise as the window. The application reads at once.
    pub receive_buffer: usize,
    pub initial_rto_ns: u64,
    /// On a wire that does not reorder, a timestamp older than the last one means the sender's
    /// clock went backwards. Where the wire reorders, late segments legitimately carry older
    /// timestamps and PAWS drops them silently, as Linux does.
    pub strict_timestamps: bool,
    /// The initial sequence number of every connection, instead of a random one (tests at the
    /// 2^32 wrap).
    pub fixed_iss: Option<u32>,
}

impl TcpConfig {
    /// What a Linux host offers in its SYN on a 1500-byte link: the MSS is the MTU less the
    /// IP and TCP fixed headers (1460 over IPv4, 1440 over IPv6).
    pub fn linux(family: IpAddr) -> TcpConfig {
        TcpConfig {
            mss: if family.is_ipv4() { 1460 } else { 1440 },
            window_scale: Some(7),
            sack: true,
            timestamps: true,
            receive_buffer: 256 * 1024,
            initial_rto_ns: 200 * MS,
            strict_timestamps: true,
            fixed_iss: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    SynSent,
    SynReceived,
    Established,
    /// We received or sent a RST: nothing more goes either way.
    Reset,
}

pub struct Tcp {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: State,
    config: TcpConfig,

    // Send side. Byte k of the stream has sequence number iss + 1 + k.
    iss: SeqNumber,
    snd_una: SeqNumber,
    snd_nxt: SeqNumber,
    /// The highest sequence number sent so far (snd_nxt goes back on a retransmission timeout).
    snd_max: SeqNumber,
    /// The peer's window in bytes, scaled.
    snd_wnd: u64,
    send: Vec<u8>,
    fin_queued: bool,
    syn_pending: bool,
    rst_pending: bool,
    retransmit_one: bool,
    probe_pending: bool,
    dup_acks: u32,
    /// NewReno (RFC 6582): while set, every partial ACK below it retransmits the next segment.
    recover: Option<SeqNumber>,
    rto_ns: u64,
    rto_deadline: Option<u64>,
    pub retransmission_timeouts: u32,

    // Negotiated in the handshake.
    peer_mss: u16,
    peer_window_scale: u8,
    our_window_scale: u8,
    use_timestamps: bool,
    use_sack: bool,
    /// The options of the SYN or SYN-ACK the peer sent.
    pub peer_syn_options: Option<TcpOptions>,

    // Receive side. Byte k of the peer's stream has sequence number irs + 1 + k.
    irs: SeqNumber,
    rcv_nxt: SeqNumber,
    /// The right edge of the largest window we advertised: the peer may send up to it.
    rcv_edge: SeqNumber,
    received: Vec<u8>,
    read_cursor: usize,
    /// Out-of-order data by stream offset.
    out_of_order: BTreeMap<u64, Vec<u8>>,
    fin_seq: Option<SeqNumber>,
    fin_received: bool,
    ack_pending: bool,
    ts_offset: u32,
    ts_recent: Option<u32>,
    first_ts_sent: Option<u32>,

    pub reset_received: bool,
    pub reset_sent: bool,
    pub violations: Vec<String>,
    /// Deviations from the RFCs that a Linux peer tolerates: reported, not fatal.
    pub remarks: Vec<String>,
}

impl Tcp {
    /// An active open: the first [`Tcp::output`] sends the SYN.
    pub fn connect(config: TcpConfig, local: SocketAddr, remote: SocketAddr, iss: u32, ts_offset: u32) -> Tcp {
        Tcp::new(config, local, remote, State::SynSent, SeqNumber(iss), ts_offset)
    }

    /// A passive open from the peer's SYN: the first [`Tcp::output`] sends the SYN-ACK.
    pub fn accept(
        config: TcpConfig,
        local: SocketAddr,
        remote: SocketAddr,
        iss: u32,
        ts_offset: u32,
        syn: &TcpSegment<'_>,
    ) -> Tcp {
        let mut tcp = Tcp::new(config, local, remote, State::SynReceived, SeqNumber(iss), ts_offset);
        tcp.negotiate(&syn.options);
        tcp.irs = syn.seq_number;
        tcp.rcv_nxt = syn.seq_number + 1;
        tcp.rcv_edge = tcp.rcv_nxt;
        // A SYN's window is never scaled.
        tcp.snd_wnd = u64::from(syn.window);
        if let Some(ts) = syn.options.timestamp {
            tcp.ts_recent = Some(ts.value);
        }
        tcp
    }

    fn new(config: TcpConfig, local: SocketAddr, remote: SocketAddr, state: State, iss: SeqNumber, ts_offset: u32) -> Tcp {
        Tcp {
            local,
            remote,
            state,
            config,
            iss,
            snd_una: iss,
            snd_nxt: iss,
            snd_max: iss,
            snd_wnd: 0,
            send: Vec::new(),
            fin_queued: false,
            syn_pending: true,
            rst_pending: false,
            retransmit_one: false,
            probe_pending: false,
            dup_acks: 0,
            recover: None,
            rto_ns: config.initial_rto_ns,
            rto_deadline: None,
            retransmission_timeouts: 0,
            peer_mss: 536,
            peer_window_scale: 0,
            our_window_scale: 0,
            use_timestamps: false,
            use_sack: false,
            peer_syn_options: None,
            irs: SeqNumber(0),
            rcv_nxt: SeqNumber(0),
            rcv_edge: SeqNumber(0),
            received: Vec::new(),
            read_cursor: 0,
            out_of_order: BTreeMap::new(),
            fin_seq: None,
            fin_received: false,
            ack_pending: false,
            ts_offset,
            ts_recent: None,
            first_ts_sent: None,
            reset_received: false,
            reset_sent: false,
            violations: Vec::new(),
            remarks: Vec::new(),
        }
    }

    // ---- the application's side ----

    pub fn write(&mut self, data: &[u8]) {
        assert!(!self.fin_queued, "write after close");
        self.send.extend_from_slice(data);
    }

    /// Queues a FIN after everything written.
    pub fn close(&mut self) {
        self.fin_queued = true;
    }

    /// Sends a RST at the next output and forgets the connection.
    pub fn abort(&mut self) {
        if self.state != State::Reset {
            self.rst_pending = true;
        }
    }

    /// Bytes written and not yet acknowledged: what a socket send buffer would hold.
    pub fn backlog(&self) -> usize {
        self.send.len() - self.acked_len()
    }

    pub fn iss(&self) -> SeqNumber {
        self.iss
    }

    /// The peer's ISN (meaningful once its SYN was seen).
    pub fn irs(&self) -> SeqNumber {
        self.irs
    }

    pub fn fin_queued(&self) -> bool {
        self.fin_queued
    }

    /// Stream bytes sent at least once.
    pub fn highest_sent(&self) -> usize {
        if self.snd_max == self.iss {
            return 0;
        }
        ((self.snd_max - (self.iss + 1)).max(0) as usize).min(self.send.len())
    }

    pub fn written(&self) -> usize {
        self.send.len()
    }

    /// Stream bytes the peer has acknowledged.
    pub fn acked_len(&self) -> usize {
        if self.snd_una == self.iss {
            return 0;
        }
        ((self.snd_una - (self.iss + 1)).max(0) as usize).min(self.send.len())
    }

    /// Direct access to the send stream, for tests that tamper with bytes before they leave.
    pub fn send_stream_mut(&mut self) -> &mut Vec<u8> {
        &mut self.send
    }

    /// In-order bytes received and not yet consumed.
    pub fn readable(&self) -> &[u8] {
        &self.received[self.read_cursor..]
    }

    pub fn consume(&mut self, len: usize) {
        self.read_cursor += len;
        // Reading opens the window: tell the peer when it had been (nearly) closed.
        self.ack_pending |= self.free_receive_space() > 0 && self.unread() + len >= self.config.receive_buffer / 2;
    }

    pub fn fin_received(&self) -> bool {
        self.fin_received
    }

    pub fn fin_sent_and_acked(&self) -> bool {
        self.fin_queued && self.snd_una == self.fin_seq_out() + 1
    }

    /// Closed cleanly both ways, or reset.
    pub fn is_finished(&self) -> bool {
        self.state == State::Reset || (self.fin_received && self.fin_sent_and_acked())
    }

    // ---- the network's side ----

    /// A segment from the peer; the caller has checked addresses and checksums.
    pub fn on_segment(&mut self, now: u64, segment: &TcpSegment<'_>) {
        let flags = segment.flags;
        let options_len = segment.header_len.saturating_sub(20);
        if segment.payload.len() + options_len > usize::from(self.config.mss) {
            self.violation_of(
                kind::MTU,
                now,
                format!(
                    "segment of {} payload bytes + {options_len} option bytes exceeds the MSS {} we advertised",
                    segment.payload.len(),
                    self.config.mss
                ),
            );
        }

        if flags.contains(TcpFlags::RST) {
            self.on_reset(now, segment);
            return;
        }

        match self.state {
            State::Reset => return,
            State::SynSent => {
                if !(flags.contains(TcpFlags::SYN) && flags.contains(TcpFlags::ACK)) {
                    self.violation(now, format!("expected a SYN-ACK, got [{flags}]"));
                    return;
                }
                if segment.ack_number != self.iss + 1 {
                    self.violation(now, format!("SYN-ACK acks {} instead of {}", segment.ack_number, self.iss + 1));
                    return;
                }
                self.negotiate(&segment.options);
                let offered = (self.config.window_scale.is_some(), self.config.sack, self.config.timestamps);
                let answered =
                    (segment.options.window_scale.is_some(), segment.options.sack_permitted, segment.options.timestamp.is_some());
                if offered != answered {
                    // Legal (each option is optional), but the design promises to mirror them.
                    self.remark(now, format!("SYN-ACK answers (window scale, SACK, timestamps) = {answered:?} to {offered:?}"));
                }
                self.irs = segment.seq_number;
                self.rcv_nxt = segment.seq_number + 1;
                self.rcv_edge = self.rcv_nxt;
                self.snd_una = self.iss + 1;
                self.snd_wnd = u64::from(segment.window);
                if let Some(ts) = segment.options.timestamp {
                    self.ts_recent = Some(ts.value);
                }
                self.state = State::Established;
                self.ack_pending = true;
                self.on_progress(now);
                if !segment.payload.is_empty() {
                    self.violation(now, "data on a SYN-ACK".into());
                }
                return;
            }
            State::SynReceived => {
                if flags.contains(TcpFlags::SYN) {
                    if segment.seq_number == self.irs {
                        // Our SYN-ACK was lost (or is slow): send it again.
                        self.syn_pending = true;
                    } else {
                        self.violation(now, format!("second SYN with another ISN {}", segment.seq_number));
                    }
                    return;
                }
                if !flags.contains(TcpFlags::ACK) {
                    return;
                }
                if segment.ack_number != self.iss + 1 {
                    self.violation(now, format!("handshake ACK acks {} instead of {}", segment.ack_number, self.iss + 1));
                    return;
                }
                self.state = State::Established;
                self.snd_una = self.iss + 1;
                self.snd_max = self.snd_max.max(self.snd_una);
                self.on_progress(now);
            }
            State::Established => {
                if flags.contains(TcpFlags::SYN) {
                    if segment.seq_number == self.irs {
                        // The peer did not get our handshake ACK.
                        self.ack_pending = true;
                    } else {
                        self.violation(now, format!("SYN in an established connection, seq {}", segment.seq_number));
                    }
                    return;
                }
            }
        }

        if self.use_timestamps {
            match segment.options.timestamp {
                None => self.violation(now, format!("[{flags}] without timestamps though they were negotiated (RFC 7323 3.2)")),
                Some(ts) => {
                    if let Some(recent) = self.ts_recent {
                        let behind = recent.wrapping_sub(ts.value) as i32;
                        if behind > 1 {
                            // PAWS (RFC 7323 5): Linux drops such a segment and ACKs.
                            if self.config.strict_timestamps {
                                self.violation_of(
                                    kind::PAWS,
                                    now,
                                    format!("PAWS: TSval {} older than {recent}; segment dropped", ts.value),
                                );
                            }
                            self.ack_pending = true;
                            return;
                        }
                        if behind == 1 && self.config.strict_timestamps {
                            // Linux tolerates one tick (TCP_PAWS_WINDOW); RFC 7323 5.4 wants
                            // TSval monotone non-decreasing.
                            self.remark(now, format!("TSval went back from {recent} to {}", ts.value));
                        }
                    }
                    if segment.seq_number <= self.rcv_nxt {
                        self.ts_recent = Some(ts.value);
                    }
                    if flags.contains(TcpFlags::ACK) && (ts.echo_reply.wrapping_sub(self.ts_value(now)) as i32) > 0 {
                        self.violation(now, format!("TSecr {} is a value we never sent (now {})", ts.echo_reply, self.ts_value(now)));
                    }
                    if let Some(first) = self.first_ts_sent {
                        if flags.contains(TcpFlags::ACK) && (ts.echo_reply.wrapping_sub(first) as i32) < 0 {
                            // Linux takes now - TSecr as an RTT sample: this one is too long.
                            self.remark(now, format!("TSecr {} is older than any TSval we sent (first {first})", ts.echo_reply));
                        }
                    }
                }
            }
        }

        if !flags.contains(TcpFlags::ACK) {
            self.violation(now, format!("[{flags}] without ACK in a synchronised connection"));
            return;
        }
        let ack = segment.ack_number;
        if ack > self.snd_max {
            // RFC 9293 3.10.7.4: an ACK of something not yet sent is answered and dropped.
            self.violation(now, format!("acks {} beyond anything sent (snd_max {}); dropped", ack, self.snd_max));
            self.ack_pending = true;
            return;
        }
        let window = u64::from(segment.window) << self.peer_window_scale;
        if ack > self.snd_una {
            self.snd_una = ack;
            if self.snd_nxt < self.snd_una {
                self.snd_nxt = self.snd_una;
            }
            self.dup_acks = 0;
            self.rto_ns = self.config.initial_rto_ns;
            self.on_progress(now);
            match self.recover {
                Some(recover) if ack < recover => self.retransmit_one = true,
                _ => self.recover = None,
            }
        } else if ack == self.snd_una
            && segment.payload.is_empty()
            && !flags.contains(TcpFlags::FIN)
            && self.snd_max > self.snd_una
            && window == self.snd_wnd
        {
            self.dup_acks += 1;
            if self.dup_acks == 3 && self.recover.is_none() {
                // Fast retransmit, then NewReno recovery up to what was sent so far.
                self.retransmit_one = true;
                self.recover = Some(self.snd_max);
            }
        }
        if ack >= self.snd_una {
            self.snd_wnd = window;
        }

        if !segment.payload.is_empty() || flags.contains(TcpFlags::FIN) {
            self.on_data(now, segment);
        }
    }

    /// RFC 5961 3.2 as Linux implements it (`tcp_validate_incoming`): a RST resets only at
    /// exactly rcv_nxt (or rcv_nxt - 1 after the peer's FIN); anywhere else in the window it
    /// draws a challenge ACK and the connection stays; outside the window it is dropped.
    fn on_reset(&mut self, now: u64, segment: &TcpSegment<'_>) {
        let seq = segment.seq_number;
        let acceptable = match self.state {
            State::SynSent => segment.flags.contains(TcpFlags::ACK) && segment.ack_number == self.iss + 1,
            State::Reset => return,
            _ => seq == self.rcv_nxt || (self.fin_received && seq == self.rcv_nxt - 1),
        };
        if acceptable {
            self.state = State::Reset;
            self.reset_received = true;
            self.rto_deadline = None;
            return;
        }
        let edge = self.rcv_edge.max(self.rcv_nxt + 1);
        if self.state != State::SynSent && seq.is_in_range(self.rcv_nxt, edge) {
            self.violation_of(
                kind::RST_SEQ,
                now,
                format!("RST at seq {seq}, not rcv_nxt {}: Linux answers with a challenge ACK and keeps the connection", self.rcv_nxt),
            );
            self.ack_pending = true;
        } else {
            self.violation(now, format!("RST at seq {seq} outside the window [{}, {edge}): ignored", self.rcv_nxt));
        }
    }

    fn on_data(&mut self, now: u64, segment: &TcpSegment<'_>) {
        let start = segment.seq_number;
        let end = start + segment.payload.len();
        self.ack_pending = true;
        if self.fin_received && !segment.payload.is_empty() && end > self.rcv_nxt {
            self.violation(now, format!("{} bytes of data after the FIN", segment.payload.len()));
            return;
        }
        if end > self.rcv_edge.max(self.rcv_nxt) {
            self.violation(
                now,
                format!(
                    "data up to {} beyond the advertised window edge {} (rcv_nxt {})",
                    end, self.rcv_edge, self.rcv_nxt
                ),
            );
        }
        if segment.flags.contains(TcpFlags::FIN) {
            if let Some(previous) = self.fin_seq {
                if previous != end {
                    self.violation(now, format!("FIN moved from {previous} to {end}"));
                }
            }
            self.fin_seq = Some(end);
        }
        if start <= self.rcv_nxt {
            if end > self.rcv_nxt {
                let skip = (self.rcv_nxt - start) as usize;
                self.received.extend_from_slice(&segment.payload[skip..]);
                self.rcv_nxt = end;
                self.drain_out_of_order();
            }
        } else if !segment.payload.is_empty() {
            let offset = self.receive_offset(start);
            let keep = self.out_of_order.get(&offset).is_none_or(|held| held.len() < segment.payload.len());
            if keep {
                self.out_of_order.insert(offset, segment.payload.to_vec());
            }
        }
        if let Some(fin) = self.fin_seq {
            if self.rcv_nxt == fin && !self.fin_received {
                self.fin_received = true;
                self.rcv_nxt = fin + 1;
            }
        }
    }

    fn drain_out_of_order(&mut self) {
        loop {
            let next = self.receive_offset(self.rcv_nxt);
            let Some((&offset, _)) = self.out_of_order.first_key_value() else { return };
            if offset > next {
                return;
            }
            let bytes = self.out_of_order.remove(&offset).unwrap_or_default();
            let end = offset + bytes.len() as u64;
            if end > next {
                self.received.extend_from_slice(&bytes[(next - offset) as usize..]);
                self.rcv_nxt += (end - next) as usize;
            }
        }
    }

    /// Timers. Call often; the resolution is whatever the caller's clock steps are.
    pub fn poll(&mut self, now: u64) {
        let Some(deadline) = self.rto_deadline else {
            if self.state == State::Established && self.snd_wnd == 0 && self.has_unsent() {
                self.rto_deadline = Some(now + self.rto_ns);
            }
            return;
        };
        if now < deadline {
            return;
        }
        self.rto_deadline = None;
        self.recover = None;
        self.retransmission_timeouts += 1;
        self.rto_ns = (self.rto_ns * 2).min(5_000 * MS);
        match self.state {
            State::SynSent | State::SynReceived => self.syn_pending = true,
            State::Established => {
                if self.snd_max > self.snd_una {
                    // Go back N: everything from the first unacknowledged byte is sent again.
                    self.snd_nxt = self.snd_una;
                } else if self.snd_wnd == 0 && self.has_unsent() {
                    self.probe_pending = true;
                }
            }
            State::Reset => {}
        }
    }

    /// Segments to send now.
    pub fn output(&mut self, now: u64, out: &mut Vec<Outgoing>) {
        if self.rst_pending {
            self.rst_pending = false;
            let flags = if self.state == State::SynSent { TcpFlags::RST } else { TcpFlags::RST | TcpFlags::ACK };
            let reset = self.segment(now, self.snd_nxt, flags, Vec::new());
            out.push(reset);
            self.reset_sent = true;
            self.state = State::Reset;
            self.rto_deadline = None;
            return;
        }
        match self.state {
            State::Reset => {}
            State::SynSent => {
                if self.syn_pending {
                    self.syn_pending = false;
                    let mut segment = self.segment(now, self.iss, TcpFlags::SYN, Vec::new());
                    segment.ack = SeqNumber(0);
                    segment.window = self.config.receive_buffer.min(65535) as u16;
                    segment.options = TcpOptions {
                        max_segment_size: Some(self.config.mss),
                        window_scale: self.config.window_scale,
                        sack_permitted: self.config.sack,
                        timestamp: self.config.timestamps.then(|| TcpTimestamp { value: self.ts_value(now), echo_reply: 0 }),
                        ..TcpOptions::default()
                    };
                    out.push(segment);
                    self.snd_nxt = self.iss + 1;
                    self.snd_max = self.snd_max.max(self.snd_nxt);
                    self.rto_deadline = Some(now + self.rto_ns);
                }
            }
            State::SynReceived => {
                if self.syn_pending {
                    self.syn_pending = false;
                    let mut segment = self.segment(now, self.iss, TcpFlags::SYN | TcpFlags::ACK, Vec::new());
                    segment.window = self.config.receive_buffer.min(65535) as u16;
                    let peer = self.peer_syn_options.unwrap_or_default();
                    segment.options = TcpOptions {
                        max_segment_size: Some(self.config.mss),
                        window_scale: if peer.window_scale.is_some() { self.config.window_scale } else { None },
                        sack_permitted: self.use_sack,
                        timestamp: self
                            .use_timestamps
                            .then(|| TcpTimestamp { value: self.ts_value(now), echo_reply: self.ts_recent.unwrap_or(0) }),
                        ..TcpOptions::default()
                    };
                    out.push(segment);
                    self.snd_nxt = self.iss + 1;
                    self.snd_max = self.snd_max.max(self.snd_nxt);
                    self.rto_deadline = Some(now + self.rto_ns);
                    self.ack_pending = false;
                }
            }
            State::Established => self.output_established(now, out),
        }
    }

    fn output_established(&mut self, now: u64, out: &mut Vec<Outgoing>) {
        let base = self.iss + 1;
        let max_payload = usize::from(self.peer_mss) - if self.use_timestamps { TIMESTAMP_OPTION_LEN } else { 0 };
        let mut sent = false;
        if self.retransmit_one {
            self.retransmit_one = false;
            let start = (self.snd_una - base) as usize;
            if start < self.send.len() && self.snd_una < self.snd_max {
                // Only what was sent before: bytes past SND.MAX are new data, for the window
                // to allow (a peer's zero window would otherwise be overrun).
                let sent_end = (self.snd_max - base).max(0) as usize;
                let end = self.send.len().min(start + max_payload).min(sent_end.max(start));
                let payload = self.send[start..end].to_vec();
                out.push(self.segment(now, self.snd_una, TcpFlags::ACK, payload));
                sent = true;
            }
        }
        if self.probe_pending {
            self.probe_pending = false;
            // A zero-window probe as Linux sends it: an old sequence number, no data.
            out.push(self.segment(now, self.snd_una - 1, TcpFlags::ACK, Vec::new()));
            self.rto_deadline = Some(now + self.rto_ns);
            sent = true;
        }
        let una = (self.snd_una - base).max(0) as usize;
        let window_end = una.saturating_add(self.snd_wnd as usize);
        loop {
            let next = (self.snd_nxt - base) as usize;
            if next >= self.send.len() {
                break;
            }
            let end = self.send.len().min(window_end).min(next + max_payload);
            if end <= next {
                break;
            }
            let mut flags = TcpFlags::ACK;
            if end == self.send.len() {
                flags.insert(TcpFlags::PSH);
            }
            let payload = self.send[next..end].to_vec();
            out.push(self.segment(now, self.snd_nxt, flags, payload));
            self.snd_nxt += end - next;
            sent = true;
        }
        if self.fin_queued && self.snd_nxt == self.fin_seq_out() {
            out.push(self.segment(now, self.snd_nxt, TcpFlags::FIN | TcpFlags::ACK, Vec::new()));
            self.snd_nxt += 1;
            sent = true;
        }
        self.snd_max = self.snd_max.max(self.snd_nxt);
        if self.snd_max > self.snd_una && self.rto_deadline.is_none() {
            self.rto_deadline = Some(now + self.rto_ns);
        }
        if self.ack_pending && !sent {
            let mut ack = self.segment(now, self.snd_nxt, TcpFlags::ACK, Vec::new());
            if self.use_sack {
                ack.options.sack_blocks = self.sack_blocks();
            }
            out.push(ack);
        }
        self.ack_pending = false;
    }

    /// A segment with our current ACK, window and timestamp.
    fn segment(&mut self, now: u64, seq: SeqNumber, flags: TcpFlags, payload: Vec<u8>) -> Outgoing {
        let window = self.window_field();
        let scale = if self.state == State::Established { self.our_window_scale } else { 0 };
        let edge = self.rcv_nxt + ((window as usize) << scale);
        self.rcv_edge = self.rcv_edge.max(edge);
        let options = TcpOptions {
            timestamp: self
                .use_timestamps
                .then(|| TcpTimestamp { value: self.ts_value(now), echo_reply: self.ts_recent.unwrap_or(0) }),
            ..TcpOptions::default()
        };
        if self.config.timestamps {
            self.first_ts_sent.get_or_insert(self.ts_value(now));
        }
        Outgoing { seq, ack: self.rcv_nxt, flags, window, options, payload }
    }

    fn window_field(&self) -> u16 {
        let free = self.free_receive_space();
        let scale = if self.state == State::Established { self.our_window_scale } else { 0 };
        (free >> scale).min(65535) as u16
    }

    fn free_receive_space(&self) -> usize {
        let held: usize = self.out_of_order.values().map(Vec::len).sum();
        self.config.receive_buffer.saturating_sub(self.unread() + held)
    }

    fn unread(&self) -> usize {
        self.received.len() - self.read_cursor
    }

    /// Up to three SACK blocks (the most that fit beside timestamps) of out-of-order data.
    fn sack_blocks(&self) -> SackBlocks {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for (&offset, bytes) in &self.out_of_order {
            let end = offset + bytes.len() as u64;
            match ranges.last_mut() {
                Some(last) if offset <= last.1 => last.1 = last.1.max(end),
                _ => ranges.push((offset, end)),
            }
        }
        let mut blocks = SackBlocks::default();
        let base = self.irs + 1;
        for (start, end) in ranges.into_iter().take(3) {
            let _ = blocks.push(SackBlock { left: base + start as usize, right: base + end as usize });
        }
        blocks
    }

    fn negotiate(&mut self, peer: &TcpOptions) {
        self.peer_syn_options = Some(*peer);
        self.peer_mss = peer.max_segment_size.unwrap_or(536);
        if let (Some(theirs), Some(ours)) = (peer.window_scale, self.config.window_scale) {
            self.peer_window_scale = theirs.min(14);
            self.our_window_scale = ours;
        }
        self.use_sack = self.config.sack && peer.sack_permitted;
        self.use_timestamps = self.config.timestamps && peer.timestamp.is_some();
    }

    fn on_progress(&mut self, now: u64) {
        self.rto_deadline = (self.snd_max > self.snd_una).then(|| now + self.rto_ns);
    }

    fn has_unsent(&self) -> bool {
        let next = (self.snd_nxt - (self.iss + 1)).max(0) as usize;
        next < self.send.len() || (self.fin_queued && self.snd_nxt <= self.fin_seq_out())
    }

    fn fin_seq_out(&self) -> SeqNumber {
        self.iss + 1 + self.send.len()
    }

    fn receive_offset(&self, seq: SeqNumber) -> u64 {
        (seq - (self.irs + 1)) as u32 as u64
    }

    /// Our timestamp clock: one tick per millisecond, as Linux.
    fn ts_value(&self, now: u64) -> u32 {
        self.ts_offset.wrapping_add((now / MS) as u32)
    }

    fn violation(&mut self, now: u64, what: String) {
        self.violation_of(kind::TCP, now, what);
    }

    fn violation_of(&mut self, kind: &str, now: u64, what: String) {
        self.violations.push(format!("[{kind}] t={:.3}ms {} <- {}: {what}", now as f64 / 1e6, self.local, self.remote));
    }

    fn remark(&mut self, now: u64, what: String) {
        self.remarks.push(format!("t={:.3}ms {} <- {}: {what}", now as f64 / 1e6, self.local, self.remote));
    }

    /// One line for failure reports; sequence numbers relative to the ISNs.
    pub fn describe(&self) -> String {
        let base = self.iss + 1;
        let rbase = self.irs + 1;
        let mut text = format!("{} <-> {} {:?}", self.local, self.remote, self.state);
        let _ = write!(
            text,
            " | send: written={} acked={} nxt=+{} max=+{} fin_queued={} fin_acked={} peer_wnd={} rto_deadline={:?} timeouts={}",
            self.send.len(),
            self.acked_len(),
            self.snd_nxt - base,
            self.snd_max - base,
            self.fin_queued,
            self.fin_sent_and_acked(),
            self.snd_wnd,
            self.rto_deadline.map(|d| format!("{:.3}ms", d as f64 / 1e6)),
            self.retransmission_timeouts,
        );
        let _ = write!(
            text,
            " | receive: in_order={} unread={} out_of_order_segments={} fin={} rst_in={} rst_out={}",
            self.rcv_nxt - rbase,
            self.unread(),
            self.out_of_order.len(),
            self.fin_received,
            self.reset_received,
            self.reset_sent,
        );
        text
    }
}
