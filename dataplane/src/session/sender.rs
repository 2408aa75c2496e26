//! The box's TCP sender toward the client, for the server -> client direction.
//!
//! The box takes custody of the backend's bytes: it seals one record per backend segment,
//! acknowledges the backend at once and keeps the record's bytes here until the client
//! acknowledges them. So a backend segment lost or reordered on the inside link is repaired by
//! the backend's own fast recovery (the box acknowledges what it has and SACKs what it holds
//! beyond a gap), a segment lost on the outside link is sent again from here as a Linux sender
//! would (RFC 6675 SACK loss recovery, RFC 5681 congestion control, RFC 6298 timer), and the
//! backend's Nagle never waits for the client's delayed ACK. Before this, the box only
//! translated ACKs: a backend segment behind a gap could not be sealed (record framing is
//! decided in order) and was dropped, and only the backend's RTO repaired the hole.
//!
//! Offsets are the box's byte offsets toward the client (0 = first byte after the SYN). Bytes
//! arrive as whole records (`push`); a segment never spans two records, which keeps a
//! retransmission a slice of one stored record. Memory is bounded by the caller, which offers
//! the backend only the window left below [`SEND_BUFFER_LIMIT`].

use std::collections::VecDeque;

/// Record bytes kept at most for the client (sealed, not yet acknowledged); the backend's
/// window is what is left below this.
pub(crate) const SEND_BUFFER_LIMIT: usize = 512 * 1024;
/// RFC 6298 bounds (the minimum as Linux has it; RFC 6298 asks for one second).
const MIN_RTO_NS: u64 = 200_000_000;
const MAX_RTO_NS: u64 = 60_000_000_000;
const INITIAL_RTO_NS: u64 = 1_000_000_000;
/// Timeouts in a row without any acknowledgement before the session is given up: with the
/// backoff, about 3 minutes from a 200 ms timer, 6 from the initial second (Linux's
/// tcp_retries2 gives about 15).
const MAX_RETRIES: u32 = 10;
/// RFC 6928.
const INITIAL_WINDOW_SEGMENTS: u64 = 10;
/// RFC 5681 / RFC 6675 DupThresh.
const DUPLICATE_THRESHOLD: u64 = 3;
/// SACKed ranges remembered above the cumulative acknowledgement.
const MAX_SACKED_RANGES: usize = 32;

/// What a timer expiry asks of the caller.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TimerOutcome {
    /// Nothing was due.
    Idle,
    /// The retransmission timer fired: call [`Sender::transmit`], which resends from the
    /// cumulative acknowledgement.
    Retransmit,
    /// A tail loss probe is due (RFC 8985 7): call [`Sender::transmit`], which sends new data
    /// or the last segment again, so that a lost tail is found by the client's SACK, not by
    /// the retransmission timer.
    TailProbe,
    /// The client's window is closed with bytes waiting: send a zero-window probe (a pure ACK
    /// at the offset before [`Sender::acked`], which the client must answer with its window).
    Probe,
    /// Nothing acknowledged through every retry: the client is gone.
    GaveUp,
}

/// How the box sizes its congestion window toward a client (`[box] congestion_control`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CongestionControl {
    /// RFC 5681: slow start, then a segment per window; half the flight on a loss.
    Reno,
    /// Model-based, in the manner of BBR (what this machine's kernel runs): the window is
    /// twice the path's measured bandwidth-delay product (the largest delivery rate of the last
    /// ten round trips times the smallest RTT of the last ten seconds), found by doubling per
    /// round trip until the delivery rate stops growing. A random loss does not shrink it, so
    /// a lossy path runs at its rate, not at Reno's `1.22 / sqrt(p)` segments per round trip.
    /// Simplified: no pacing, no gain cycling, no probe-RTT phase.
    #[default]
    Bbr,
}

/// The path model of [`CongestionControl::Bbr`].
#[derive(Debug, Default)]
struct PathModel {
    /// Bytes delivered (acknowledged or SACKed) so far.
    delivered: u64,
    /// The round trip in progress: when and at which `delivered` it began, and the `delivered`
    /// that ends it (what was in flight at its start has arrived).
    round_start_ns: u64,
    round_start_delivered: u64,
    round_end_delivered: u64,
    /// Delivery rates (bytes per second) of the last rounds, the largest kept.
    rates: [u64; 10],
    round: usize,
    min_rtt_ns: u64,
    min_rtt_at_ns: u64,
    /// Startup ends when three rounds in a row did not raise the rate by a quarter.
    full_rate: u64,
    rounds_without_growth: u32,
    filled_pipe: bool,
    /// Rounds counted since the start (the round index above wraps).
    rounds: u64,
    /// ACK aggregation (as Linux's BBR measures it): bytes delivered in the current epoch
    /// beyond what the delivery rate explains, and the largest such excess in each of two
    /// windows of five rounds. Receivers and links that batch ACKs (delayed ACKs, interrupt
    /// moderation, a forwarder's batches) deliver in bursts; without room for the excess the
    /// window starves between them.
    epoch_start_ns: u64,
    epoch_delivered: u64,
    extra_acked: [u64; 2],
}

impl PathModel {
    fn max_rate(&self) -> u64 {
        self.rates.iter().copied().max().unwrap_or(0)
    }

    fn rtt_sample(&mut self, now_ns: u64, rtt_ns: u64) {
        if self.min_rtt_ns == 0 || rtt_ns <= self.min_rtt_ns || now_ns.saturating_sub(self.min_rtt_at_ns) > 10_000_000_000 {
            self.min_rtt_ns = rtt_ns.max(1);
            self.min_rtt_at_ns = now_ns;
        }
    }

    /// `bytes` more delivered at `now_ns`, with `in_flight` outstanding.
    fn deliver(&mut self, now_ns: u64, bytes: u64, in_flight: u64) {
        self.delivered += bytes;
        self.aggregation(now_ns, bytes);
        if self.round_start_ns == 0 {
            self.round_start_ns = now_ns;
            self.round_start_delivered = self.delivered - bytes;
            self.round_end_delivered = self.delivered + in_flight;
            return;
        }
        if self.delivered < self.round_end_delivered {
            return;
        }
        self.rounds += 1;
        let slot = ((self.rounds / 5) % 2) as usize;
        if self.rounds % 5 == 0 {
            self.extra_acked[slot] = 0;
        }
        let elapsed = now_ns.saturating_sub(self.round_start_ns).max(1);
        let rate = ((self.delivered - self.round_start_delivered) as u128 * 1_000_000_000 / elapsed as u128) as u64;
        self.round = (self.round + 1) % self.rates.len();
        self.rates[self.round] = rate;
        if !self.filled_pipe {
            let max = self.max_rate();
            if max >= self.full_rate + self.full_rate / 4 {
                self.full_rate = max;
                self.rounds_without_growth = 0;
            } else {
                self.rounds_without_growth += 1;
                self.filled_pipe = self.rounds_without_growth >= 3;
            }
        }
        self.round_start_ns = now_ns;
        self.round_start_delivered = self.delivered;
        self.round_end_delivered = self.delivered + in_flight.max(1);
    }

    fn aggregation(&mut self, now_ns: u64, bytes: u64) {
        let rate = self.max_rate();
        let expected = (rate as u128 * now_ns.saturating_sub(self.epoch_start_ns) as u128 / 1_000_000_000) as u64;
        if self.epoch_start_ns == 0 || self.epoch_delivered <= expected {
            // Deliveries are behind the rate: a new epoch starts.
            self.epoch_start_ns = now_ns;
            self.epoch_delivered = 0;
        }
        self.epoch_delivered += bytes;
        let expected = (rate as u128 * now_ns.saturating_sub(self.epoch_start_ns) as u128 / 1_000_000_000) as u64;
        let extra = self.epoch_delivered.saturating_sub(expected);
        let slot = ((self.rounds / 5) % 2) as usize;
        self.extra_acked[slot] = self.extra_acked[slot].max(extra);
    }

    /// Twice the bandwidth-delay product, plus the ACK aggregation seen, once both are
    /// measured.
    fn target_window(&self) -> Option<u64> {
        let rate = self.max_rate();
        let bdp = (2 * rate as u128 * self.min_rtt_ns as u128 / 1_000_000_000) as u64;
        let extra = self.extra_acked.iter().copied().max().unwrap_or(0);
        (rate > 0 && self.min_rtt_ns > 0).then_some(bdp + extra)
    }
}

#[derive(Debug)]
struct Chunk {
    start: u64,
    bytes: Vec<u8>,
    /// When the first byte of it first left (RTT samples are taken only from chunks sent once:
    /// Karn's algorithm).
    first_sent_ns: Option<u64>,
    /// When it (or a piece of it) last left: RACK's transmission time (RFC 8985).
    last_sent_ns: u64,
    retransmitted: bool,
}

impl Chunk {
    fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }
}

/// Loss recovery in progress (fast recovery after SACKs or duplicate ACKs, or after a timeout).
#[derive(Debug, Clone, Copy)]
struct Recovery {
    /// Recovery ends when everything sent before it began is acknowledged (RFC 6675 RecoveryPoint).
    point: u64,
    /// Unacknowledged, un-SACKed bytes below this are taken as lost.
    lost_until: u64,
    /// Lost bytes below this were sent again already (RFC 6675 HighRxt).
    high_rxt: u64,
    /// Begun by the retransmission timer: the window grows again in slow start meanwhile
    /// (RFC 5681 3.1), and is kept as it grew when recovery ends.
    after_timeout: bool,
    /// The next lost segment leaves whatever the pipe says: on entering recovery (RFC 6675
    /// 5 step 4.3) and on a partial ACK without SACK (RFC 6582 3.2 step 5).
    resend_first: bool,
    /// When the segment at the cumulative acknowledgement was sent again: SND.NXT then. A SACK
    /// for bytes at or past it, while that segment is still missing, means the resend was
    /// lost too (what RACK finds by time): it goes again instead of waiting for the timer.
    first_resent_before: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct Sender {
    /// Cumulative acknowledgement (SND.UNA).
    una: u64,
    /// Next new byte to send (SND.NXT).
    nxt: u64,
    /// End of the bytes queued.
    end: u64,
    chunks: VecDeque<Chunk>,
    stored: usize,
    /// The offset of the FIN, once queued (it follows the last byte), and whether it left.
    fin: Option<u64>,
    fin_sent: bool,
    fin_acked: bool,
    /// The client's window's right edge: its latest acknowledgement plus its window.
    right_edge: u64,
    congestion: CongestionControl,
    model: PathModel,
    cwnd: u64,
    ssthresh: u64,
    /// Bytes acknowledged toward the next congestion-avoidance increase.
    avoidance_acked: u64,
    srtt_ns: Option<u64>,
    rttvar_ns: u64,
    rto_ns: u64,
    /// Timeouts (or zero-window probes) in a row without progress.
    retries: u32,
    deadline_ns: Option<u64>,
    /// The deadline is a tail loss probe's (RFC 8985 7), not the retransmission timer's.
    deadline_is_probe: bool,
    /// A tail loss probe fired: the next `transmit` sends it.
    probe_pending: bool,
    /// A probe went since the last acknowledgement of new data (one per tail).
    probe_sent: bool,
    /// SACKed ranges above `una`: ascending, disjoint.
    sacked: Vec<(u64, u64)>,
    /// RACK (RFC 8985): the latest transmission among the chunks delivered so far, as (time,
    /// end offset): a tie in time is broken by sequence, as RACK does.
    rack_sent_ns: u64,
    rack_end: u64,
    /// The segment size of the latest call (for the lone-segment probe rule).
    mss: u64,
    /// The time of the latest acknowledgement or transmission (RACK's clock in `next_lost`).
    rack_now_ns: u64,
    duplicate_acks: u64,
    recovery: Option<Recovery>,
}

impl Sender {
    /// A sender whose next byte is `start`, toward a client with window `window` (bytes).
    pub(crate) fn new(start: u64, window: u64, mss: usize, congestion: CongestionControl) -> Sender {
        Sender {
            una: start,
            nxt: start,
            end: start,
            chunks: VecDeque::new(),
            stored: 0,
            fin: None,
            fin_sent: false,
            fin_acked: false,
            right_edge: start + window,
            congestion,
            model: PathModel::default(),
            cwnd: INITIAL_WINDOW_SEGMENTS * mss as u64,
            ssthresh: u64::MAX,
            avoidance_acked: 0,
            srtt_ns: None,
            rttvar_ns: 0,
            rto_ns: INITIAL_RTO_NS,
            retries: 0,
            deadline_ns: None,
            deadline_is_probe: false,
            probe_pending: false,
            probe_sent: false,
            sacked: Vec::new(),
            rack_sent_ns: 0,
            rack_end: 0,
            mss: mss as u64,
            rack_now_ns: 0,
            duplicate_acks: 0,
            recovery: None,
        }
    }

    /// A round trip measured before the splice (the handshake flight's acknowledgement).
    pub(crate) fn seed_rtt(&mut self, now_ns: u64, rtt_ns: u64) {
        self.rtt_sample(now_ns, rtt_ns);
    }

    /// Queues one record's bytes after everything queued so far.
    pub(crate) fn push(&mut self, bytes: Vec<u8>) {
        if bytes.is_empty() || self.fin.is_some() {
            return;
        }
        self.stored += bytes.len();
        let start = self.end;
        self.end += bytes.len() as u64;
        self.chunks.push_back(Chunk { start, bytes, first_sent_ns: None, last_sent_ns: 0, retransmitted: false });
    }

    /// Queues a FIN after everything queued so far.
    pub(crate) fn push_fin(&mut self) {
        self.fin.get_or_insert(self.end);
    }

    /// The offset just past the last byte queued.
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// Bytes kept for the client.
    pub(crate) fn stored(&self) -> usize {
        self.stored
    }

    /// The client's cumulative acknowledgement.
    pub(crate) fn acked(&self) -> u64 {
        self.una
    }

    /// The sequence offset a segment without data carries: past the FIN once it left.
    pub(crate) fn next_offset(&self) -> u64 {
        self.nxt + self.fin_sent as u64
    }

    /// The highest offset sent so far (acknowledgements beyond it acknowledge nothing real).
    pub(crate) fn sent_end(&self) -> u64 {
        self.next_offset()
    }

    /// Where the FIN sits, once queued.
    pub(crate) fn fin_offset(&self) -> Option<u64> {
        self.fin
    }

    pub(crate) fn fin_acked(&self) -> bool {
        self.fin_acked
    }

    /// Whether bytes (or the FIN) wait for the client, sent or not.
    #[cfg(test)]
    fn has_outstanding(&self) -> bool {
        self.una < self.end || (self.fin.is_some() && !self.fin_acked)
    }

    pub(crate) fn deadline_ns(&self) -> Option<u64> {
        self.deadline_ns
    }

    #[cfg(test)]
    fn in_recovery(&self) -> bool {
        self.recovery.is_some()
    }

    #[cfg(test)]
    fn congestion_window(&self) -> u64 {
        self.cwnd
    }

    /// An acknowledgement from the client: `ack` (an offset), its window in bytes, its SACK
    /// blocks as offsets, and whether the segment carried data or a FIN (then it is no
    /// duplicate acknowledgement). The buffers of chunks wholly acknowledged go to `reclaim`
    /// (the poll loop's frame pool). Returns the bytes newly acknowledged.
    pub(crate) fn on_ack(
        &mut self,
        now_ns: u64,
        ack: u64,
        window: u64,
        sack: &[(u64, u64)],
        carries_data: bool,
        mss: usize,
        reclaim: &mut dyn FnMut(Vec<u8>),
    ) -> u64 {
        let mss = mss.max(1) as u64;
        self.mss = mss;
        self.rack_now_ns = now_ns;
        if ack > self.sent_end() || ack < self.una {
            // Acknowledges what was never sent, or is older than what we know: no news.
            return 0;
        }
        let newly_sacked = self.take_sack(sack);
        for &(left, right) in sack {
            let first = self.chunks.partition_point(|chunk| chunk.end() <= left);
            for chunk in self.chunks.range(first..) {
                if chunk.start >= right {
                    break;
                }
                if chunk.start >= left && chunk.end() <= right && (chunk.last_sent_ns, chunk.end()) > (self.rack_sent_ns, self.rack_end) {
                    (self.rack_sent_ns, self.rack_end) = (chunk.last_sent_ns, chunk.end());
                }
            }
        }
        let mut newly_acked = 0;
        if ack > self.una {
            let data_ack = ack.min(self.end);
            newly_acked = data_ack - self.una;
            if self.fin.is_some_and(|fin| ack > fin) {
                self.fin_acked = true;
            }
            self.acknowledge(now_ns, data_ack, reclaim);
            self.duplicate_acks = 0;
            self.retries = 0;
            self.probe_sent = false;
            // Progress undoes the backoff (as Linux does): after a timeout every chunk in flight
            // was sent twice, so Karn's rule gives no new sample to do it otherwise.
            self.rto_ns = self.computed_rto();
            if self.congestion == CongestionControl::Reno {
                self.grow_window(newly_acked, mss);
            }
        } else if !carries_data && self.nxt > self.una && (newly_sacked > 0 || ack + window == self.right_edge) {
            self.duplicate_acks += 1;
        }
        self.right_edge = ack + window;
        if self.congestion == CongestionControl::Bbr && newly_acked + newly_sacked > 0 {
            self.model.deliver(now_ns, newly_acked + newly_sacked, self.nxt - self.una);
            self.grow_to_model(newly_acked + newly_sacked, mss);
        }
        let highest_sacked = self.highest_sacked();
        let no_sack = self.sacked.is_empty();
        if let Some(recovery) = self.recovery.as_mut() {
            if self.una >= recovery.point {
                // Everything sent before the loss is in: leave recovery (RFC 6675 / 6582).
                if !recovery.after_timeout && self.congestion == CongestionControl::Reno {
                    self.cwnd = self.ssthresh.max(2 * mss);
                }
                self.recovery = None;
            } else {
                recovery.high_rxt = recovery.high_rxt.max(self.una);
                recovery.lost_until = recovery.lost_until.max(highest_sacked);
                if newly_acked > 0 {
                    recovery.first_resent_before = None;
                } else if recovery.first_resent_before.is_some_and(|mark| highest_sacked > mark) {
                    // Bytes sent after the resend arrived, the resend did not: lost again.
                    recovery.high_rxt = self.una;
                    recovery.resend_first = true;
                    recovery.first_resent_before = None;
                }
                if no_sack && newly_acked > 0 {
                    // Without SACK (RFC 6582 NewReno): a partial ACK means the next segment
                    // is lost too.
                    recovery.high_rxt = self.una;
                    recovery.lost_until = recovery.lost_until.max(self.una + mss);
                    recovery.resend_first = true;
                }
            }
        } else if self.nxt > self.una
            && (self.duplicate_acks >= DUPLICATE_THRESHOLD
                || self.sacked_bytes() >= DUPLICATE_THRESHOLD * mss
                || (!self.sacked.is_empty() && self.highest_sacked() >= self.nxt))
        {
            // Loss (RFC 6675 5: DupThresh duplicate ACKs or that many segments SACKed above;
            // or, RFC 5827's early retransmit, everything sent after the hole SACKed, so that
            // no more duplicates are coming).
            if self.congestion == CongestionControl::Reno {
                let flight = self.nxt - self.una;
                self.ssthresh = (flight / 2).max(2 * mss);
                self.cwnd = self.ssthresh;
            }
            self.recovery = Some(Recovery {
                point: self.nxt,
                lost_until: self.highest_sacked().max(self.una + mss),
                high_rxt: self.una,
                after_timeout: false,
                resend_first: true,
                first_resent_before: None,
            });
        }
        // RACK's rule for resends anywhere below HighRxt: a chunk sent again, still missing,
        // although a chunk sent after it was delivered (and a round trip and a quarter have
        // passed), is lost again.
        if let Some(high_rxt) = self.recovery.map(|recovery| recovery.high_rxt) {
            let lost_again = self
                .chunks
                .iter()
                .take_while(|chunk| chunk.start < high_rxt)
                .find(|chunk| {
                    chunk.retransmitted
                        && self.rack_lost(now_ns, chunk)
                        && !self.sacked.iter().any(|&(a, b)| a <= chunk.start && chunk.end() <= b)
                })
                .map(|chunk| chunk.start.max(self.una));
            if let (Some(start), Some(recovery)) = (lost_again, self.recovery.as_mut()) {
                recovery.high_rxt = recovery.high_rxt.min(start);
                recovery.resend_first = true;
            }
        }
        if self.has_unacked_in_flight() {
            if newly_acked > 0 || self.deadline_ns.is_none() || (self.deadline_is_probe && self.recovery.is_some()) {
                self.arm(now_ns);
            }
        } else {
            self.deadline_ns = None;
            self.deadline_is_probe = false;
        }
        newly_acked
    }

    /// (Re)arms the timer for what is in flight: a tail loss probe while none went since the
    /// last progress and no recovery runs (PTO = 2 SRTT, at least 10 ms; a lone segment waits
    /// for a delayed ACK too, as RFC 8985 7.2 says), else the retransmission timer.
    fn arm(&mut self, now_ns: u64) {
        let probe = match self.srtt_ns {
            Some(srtt) if self.recovery.is_none() && !self.probe_sent => {
                let mut pto = (2 * srtt).max(10_000_000);
                if self.nxt - self.una <= self.mss {
                    pto = pto.max(srtt * 3 / 2 + MIN_RTO_NS);
                }
                (pto < self.rto_ns).then_some(pto)
            }
            _ => None,
        };
        self.deadline_is_probe = probe.is_some();
        self.deadline_ns = Some(now_ns + probe.unwrap_or(self.rto_ns));
    }

    /// Sends what the windows allow: lost bytes first (in recovery), then new bytes, then a
    /// FIN. `emit(offset, bytes, fin)` puts one segment on the wire; `mss` is the most payload
    /// one may carry. Returns the number of segments that were retransmissions.
    pub(crate) fn transmit(&mut self, now_ns: u64, mss: usize, emit: &mut dyn FnMut(u64, &[u8], bool)) -> usize {
        let mss = mss.max(1);
        self.mss = mss as u64;
        self.rack_now_ns = now_ns;
        let mut retransmissions = 0;
        let nxt_before = self.nxt;
        if self.probe_pending {
            self.probe_pending = false;
            self.probe_sent = true;
            let limit = self.end.min(self.right_edge);
            if self.nxt >= limit && self.nxt > self.una {
                // No new data may go: the last segment again (RFC 8985 7.3).
                let chunk_start = self.chunk_at(self.nxt - 1).map_or(self.una, |chunk| chunk.start);
                let start = chunk_start.max(self.una).max(self.nxt.saturating_sub(mss as u64));
                let stop = self.nxt;
                self.send_range(now_ns, start, stop, true, emit);
                retransmissions += 1;
            } else {
                // New data is the probe: let one segment past the congestion window.
                self.cwnd = self.cwnd.max(self.pipe() + mss as u64);
            }
        }
        loop {
            let resend_first = self.recovery.is_some_and(|recovery| recovery.resend_first);
            if self.pipe() >= self.cwnd && !resend_first {
                break;
            }
            if let Some((start, stop)) = self.next_lost(mss as u64) {
                self.send_range(now_ns, start, stop, true, emit);
                let nxt = self.nxt;
                let first = start == self.una;
                if let Some(recovery) = self.recovery.as_mut() {
                    recovery.high_rxt = stop;
                    recovery.resend_first = false;
                    if first {
                        recovery.first_resent_before = Some(nxt);
                    }
                }
                retransmissions += 1;
                continue;
            }
            if let Some(recovery) = self.recovery.as_mut() {
                recovery.resend_first = false;
                if self.pipe() >= self.cwnd {
                    break;
                }
            }
            let limit = self.end.min(self.right_edge);
            if self.nxt < limit {
                let chunk_end = self.chunk_at(self.nxt).map_or(limit, |chunk| chunk.end());
                let stop = limit.min(chunk_end).min(self.nxt + mss as u64);
                let start = self.nxt;
                self.nxt = stop;
                self.send_range(now_ns, start, stop, false, emit);
                continue;
            }
            if self.fin == Some(self.end) && self.nxt == self.end && !self.fin_sent {
                // The FIN alone (its bytes left earlier, or there were none).
                self.fin_sent = true;
                emit(self.end, &[], true);
            }
            break;
        }
        if self.has_unacked_in_flight() {
            if self.nxt > nxt_before || self.deadline_ns.is_none() || retransmissions > 0 {
                // RFC 8985 7.2: the probe timer restarts when new data leaves.
                self.arm(now_ns);
            }
        } else if self.nxt < self.end && self.right_edge <= self.nxt {
            // Bytes wait behind a closed window: the persist timer (RFC 9293 3.8.6.1).
            self.deadline_ns.get_or_insert(now_ns + self.rto_ns);
        }
        retransmissions
    }

    /// Queues a FIN and sends everything queued at once, whatever the windows say: for a
    /// fatal alert, after which the session is gone and nothing would be sent again.
    pub(crate) fn flush(&mut self, now_ns: u64, mss: usize, emit: &mut dyn FnMut(u64, &[u8], bool)) {
        self.cwnd = u64::MAX / 2;
        self.right_edge = self.right_edge.max(self.end);
        self.transmit(now_ns, mss, emit);
    }

    /// The retransmission (or persist) timer, if due.
    pub(crate) fn on_timer(&mut self, now_ns: u64, mss: usize) -> TimerOutcome {
        let Some(deadline) = self.deadline_ns else { return TimerOutcome::Idle };
        if now_ns < deadline {
            return TimerOutcome::Idle;
        }
        let mss = mss.max(1) as u64;
        if self.deadline_is_probe && self.has_unacked_in_flight() {
            self.deadline_is_probe = false;
            self.probe_pending = true;
            self.deadline_ns = Some(now_ns + self.rto_ns);
            return TimerOutcome::TailProbe;
        }
        if !self.has_unacked_in_flight() {
            if self.nxt < self.end && self.right_edge <= self.nxt {
                // Zero-window probe, backing off; a client may keep its window shut for long
                // (the idle timeout bounds it).
                self.rto_ns = (self.rto_ns * 2).min(MAX_RTO_NS);
                self.deadline_ns = Some(now_ns + self.rto_ns);
                return TimerOutcome::Probe;
            }
            self.deadline_ns = None;
            return TimerOutcome::Idle;
        }
        self.retries += 1;
        if self.retries > MAX_RETRIES {
            self.deadline_ns = None;
            return TimerOutcome::GaveUp;
        }
        // RFC 5681 3.1 and RFC 6298 5.5-5.6: one segment, half the flight as the threshold,
        // the timer backed off; everything not SACKed is taken as lost.
        let flight = self.nxt - self.una;
        if self.retries == 1 {
            self.ssthresh = (flight / 2).max(2 * mss);
        }
        self.cwnd = mss;
        self.rto_ns = (self.rto_ns * 2).min(MAX_RTO_NS);
        self.deadline_is_probe = false;
        self.recovery = Some(Recovery { point: self.nxt, lost_until: self.nxt, high_rxt: self.una, after_timeout: true, resend_first: true, first_resent_before: None });
        if self.fin_sent && !self.fin_acked && self.una >= self.end {
            // Only the FIN is outstanding: send it again.
            self.fin_sent = false;
        }
        self.deadline_ns = Some(now_ns + self.rto_ns);
        TimerOutcome::Retransmit
    }

    /// The path toward the client carries less than before: everything in flight leaves again
    /// (at the new, smaller MSS) instead of waiting for the timer.
    pub(crate) fn resend_all(&mut self) {
        if self.nxt > self.una {
            let after_timeout = self.recovery.is_none_or(|recovery| recovery.after_timeout);
            self.recovery = Some(Recovery { point: self.nxt, lost_until: self.nxt, high_rxt: self.una, after_timeout, resend_first: true, first_resent_before: None });
            self.sacked.clear();
        }
    }

    // ---------------------------------------------------------------------------------------

    /// Bytes (and the FIN) sent and not yet acknowledged.
    fn has_unacked_in_flight(&self) -> bool {
        self.nxt > self.una || (self.fin_sent && !self.fin_acked)
    }

    /// RFC 6675 `pipe`: bytes in flight, less those SACKed and those taken as lost and not
    /// yet sent again.
    fn pipe(&self) -> u64 {
        let outstanding = self.nxt - self.una;
        let sacked = self.sacked_bytes();
        let lost = match self.recovery {
            Some(recovery) => {
                let from = recovery.high_rxt.max(self.una);
                let until = recovery.lost_until.min(self.nxt);
                if until > from { (until - from) - self.sacked_within(from, until) } else { 0 }
            }
            None => 0,
        };
        outstanding.saturating_sub(sacked + lost)
    }

    /// The next lost range to send again: un-SACKed bytes from HighRxt below `lost_until`,
    /// within one chunk and one segment.
    fn next_lost(&self, mss: u64) -> Option<(u64, u64)> {
        let recovery = self.recovery?;
        let mut start = recovery.high_rxt.max(self.una);
        let until = recovery.lost_until.min(self.nxt);
        loop {
            for &(left, right) in &self.sacked {
                if right <= start {
                    continue;
                }
                if left <= start {
                    start = right;
                    continue;
                }
                break;
            }
            if start >= until {
                return None;
            }
            let chunk = self.chunk_at(start);
            // A chunk sent again after the newest one delivered is still on its way (RACK):
            // not lost, not sent a third time (after a timeout everything goes again).
            if let Some(chunk) = chunk {
                let found_lost = recovery.resend_first && chunk.start <= recovery.high_rxt.max(self.una);
                if !recovery.after_timeout && !found_lost && chunk.retransmitted && !self.rack_lost(self.rack_now_ns, chunk) {
                    start = chunk.end();
                    continue;
                }
            }
            let next_sacked = self.sacked.iter().map(|&(left, _)| left).find(|&left| left > start).unwrap_or(u64::MAX);
            let chunk_end = chunk.map_or(until, Chunk::end);
            return Some((start, until.min(next_sacked).min(chunk_end).min(start + mss)));
        }
    }

    /// RACK's loss rule (RFC 8985 6.2): sent before a chunk that was delivered, and longer ago
    /// than a round trip plus a quarter of one for reordering.
    fn rack_lost(&self, now_ns: u64, chunk: &Chunk) -> bool {
        let srtt = self.srtt_ns.unwrap_or(INITIAL_RTO_NS);
        (chunk.last_sent_ns, chunk.end()) < (self.rack_sent_ns, self.rack_end) && now_ns >= chunk.last_sent_ns + srtt + srtt / 4
    }

    fn send_range(&mut self, now_ns: u64, start: u64, stop: u64, retransmission: bool, emit: &mut dyn FnMut(u64, &[u8], bool)) {
        let fin = self.fin == Some(stop);
        let index = self.chunks.partition_point(|chunk| chunk.end() <= start);
        let Some(chunk) = self.chunks.get_mut(index) else { return };
        if chunk.start > start || stop > chunk.end() {
            return;
        }
        if retransmission || chunk.first_sent_ns.is_some() && start == chunk.start {
            chunk.retransmitted = true;
        }
        chunk.first_sent_ns.get_or_insert(now_ns);
        chunk.last_sent_ns = now_ns;
        if fin {
            self.fin_sent = true;
        }
        let from = (start - chunk.start) as usize;
        let to = (stop - chunk.start) as usize;
        emit(start, &chunk.bytes[from..to], fin);
    }

    fn chunk_at(&self, offset: u64) -> Option<&Chunk> {
        let index = self.chunks.partition_point(|chunk| chunk.end() <= offset);
        self.chunks.get(index).filter(|chunk| chunk.start <= offset)
    }

    /// The cumulative acknowledgement moved to `ack`: forget what the client has, and take an
    /// RTT sample from the newest chunk it completes if none of them was sent twice.
    fn acknowledge(&mut self, now_ns: u64, ack: u64, reclaim: &mut dyn FnMut(Vec<u8>)) {
        let mut sample = None;
        let mut karn = false;
        while let Some(chunk) = self.chunks.front() {
            if chunk.end() > ack {
                break;
            }
            karn |= chunk.retransmitted;
            sample = chunk.first_sent_ns;
            if (chunk.last_sent_ns, chunk.end()) > (self.rack_sent_ns, self.rack_end) {
                (self.rack_sent_ns, self.rack_end) = (chunk.last_sent_ns, chunk.end());
            }
            self.stored -= chunk.bytes.len();
            if let Some(chunk) = self.chunks.pop_front() {
                reclaim(chunk.bytes);
            }
        }
        if let (Some(sent), false) = (sample, karn) {
            self.rtt_sample(now_ns, now_ns.saturating_sub(sent));
        }
        self.una = ack;
        self.nxt = self.nxt.max(ack);
        self.sacked.retain_mut(|range| {
            range.0 = range.0.max(ack);
            range.1 > range.0
        });
    }

    /// RFC 6298 2.2-2.4.
    fn rtt_sample(&mut self, now_ns: u64, rtt_ns: u64) {
        let rtt_ns = rtt_ns.max(1);
        self.model.rtt_sample(now_ns, rtt_ns);
        match self.srtt_ns {
            None => {
                self.srtt_ns = Some(rtt_ns);
                self.rttvar_ns = rtt_ns / 2;
            }
            Some(srtt) => {
                self.rttvar_ns = (3 * self.rttvar_ns + srtt.abs_diff(rtt_ns)) / 4;
                self.srtt_ns = Some((7 * srtt + rtt_ns) / 8);
            }
        }
        self.rto_ns = self.computed_rto();
    }

    /// RFC 6298 2.3: SRTT + max(G, 4 RTTVAR), within the bounds; the initial value without a
    /// sample.
    fn computed_rto(&self) -> u64 {
        match self.srtt_ns {
            Some(srtt) => (srtt + (4 * self.rttvar_ns).max(1_000_000)).clamp(MIN_RTO_NS, MAX_RTO_NS),
            None => INITIAL_RTO_NS,
        }
    }

    /// RFC 5681 3.1: slow start (with RFC 3465's limit of two segments per ACK), then one
    /// segment per window; nothing grows during recovery.
    fn grow_window(&mut self, acked: u64, mss: u64) {
        if self.recovery.is_some_and(|recovery| !recovery.after_timeout) || acked == 0 {
            return;
        }
        if self.cwnd < self.ssthresh {
            self.cwnd += acked.min(2 * mss);
        } else {
            self.avoidance_acked += acked;
            if self.avoidance_acked >= self.cwnd {
                self.avoidance_acked -= self.cwnd;
                self.cwnd += mss;
            }
        }
        // Never more than everything the box may hold could fill.
        self.cwnd = self.cwnd.min(4 * SEND_BUFFER_LIMIT as u64);
    }

    /// [`CongestionControl::Bbr`]: the window grows by what was delivered (doubling per round
    /// trip) until the path is full, then toward twice the bandwidth-delay product, never below
    /// four segments. Losses do not shrink it; after a timeout it starts again from one
    /// segment and grows back the same way.
    fn grow_to_model(&mut self, delivered: u64, mss: u64) {
        let grown = self.cwnd + delivered;
        self.cwnd = match self.model.target_window() {
            Some(target) if self.model.filled_pipe => grown.min(target),
            _ => grown,
        }
        .max(4 * mss)
        .min(4 * SEND_BUFFER_LIMIT as u64);
    }

    /// Merges the client's SACK blocks into the scoreboard; returns the bytes newly SACKed.
    fn take_sack(&mut self, blocks: &[(u64, u64)]) -> u64 {
        let before = self.sacked_bytes();
        for &(left, right) in blocks {
            let left = left.max(self.una);
            let right = right.min(self.nxt);
            if left >= right {
                continue;
            }
            let mut merged = (left, right);
            self.sacked.retain(|&(a, b)| {
                if b < merged.0 || a > merged.1 {
                    true
                } else {
                    merged = (merged.0.min(a), merged.1.max(b));
                    false
                }
            });
            let at = self.sacked.partition_point(|&(a, _)| a < merged.0);
            self.sacked.insert(at, merged);
        }
        if self.sacked.len() > MAX_SACKED_RANGES {
            // Keep the lowest ranges: they decide what is resent next.
            self.sacked.truncate(MAX_SACKED_RANGES);
        }
        self.sacked_bytes().saturating_sub(before)
    }

    fn sacked_bytes(&self) -> u64 {
        self.sacked.iter().map(|&(a, b)| b - a).sum()
    }

    fn sacked_within(&self, from: u64, until: u64) -> u64 {
        self.sacked.iter().map(|&(a, b)| b.min(until).saturating_sub(a.max(from))).sum()
    }

    fn highest_sacked(&self) -> u64 {
        self.sacked.last().map_or(self.una, |&(_, b)| b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: usize = 100;

    /// A sender at offset 1000 with a wide window and `records` records of `MSS` bytes queued.
    fn sender_with(records: usize) -> Sender {
        let mut sender = Sender::new(1000, 1 << 20, MSS, CongestionControl::Reno);
        for i in 0..records {
            sender.push(vec![i as u8; MSS]);
        }
        sender
    }

    fn send(sender: &mut Sender, now_ns: u64) -> Vec<(u64, usize, bool)> {
        let mut sent = Vec::new();
        sender.transmit(now_ns, MSS, &mut |offset, bytes, fin| sent.push((offset, bytes.len(), fin)));
        sent
    }

    #[test]
    fn the_initial_window_is_ten_segments_and_acks_open_it() {
        let mut sender = sender_with(30);
        let sent = send(&mut sender, 0);
        assert_eq!(sent.len(), 10);
        assert_eq!(sent[0], (1000, MSS, false));
        assert_eq!(sent[9], (1900, MSS, false));
        // Two segments acknowledged: slow start adds two.
        assert_eq!(sender.on_ack(1_000_000, 1200, 1 << 20, &[], false, MSS, &mut drop), 200);
        assert_eq!(sender.congestion_window(), 1200);
        let sent = send(&mut sender, 1_000_000);
        assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), vec![2000, 2100, 2200, 2300]);
        assert_eq!(sender.stored(), 28 * MSS);
    }

    #[test]
    fn the_client_window_is_never_overrun() {
        let mut sender = Sender::new(0, 250, MSS, CongestionControl::Reno);
        sender.push(vec![1; MSS]);
        sender.push(vec![2; MSS]);
        sender.push(vec![3; MSS]);
        let sent = send(&mut sender, 0);
        assert_eq!(sent, vec![(0, MSS, false), (100, MSS, false), (200, 50, false)]);
        // The window shuts: nothing more, and the persist timer asks for a probe.
        sender.on_ack(1000, 250, 0, &[], false, MSS, &mut drop);
        assert!(send(&mut sender, 1000).is_empty());
        let deadline = sender.deadline_ns().expect("persist timer");
        assert_eq!(sender.on_timer(deadline, MSS), TimerOutcome::Probe);
        // It opens again: the rest leaves.
        sender.on_ack(deadline + 1, 250, 1000, &[], false, MSS, &mut drop);
        assert_eq!(send(&mut sender, deadline + 1), vec![(250, 50, false)]);
    }

    #[test]
    fn sacks_resend_exactly_the_hole_at_once() {
        let mut sender = sender_with(10);
        send(&mut sender, 0);
        // Segment 1100..1200 is lost; the client SACKs the ones after it, one ACK each.
        let mut resent = Vec::new();
        for i in 2..6u64 {
            sender.on_ack(10, 1100, 1 << 20, &[(1200, 1000 + 100 * i + 100)], false, MSS, &mut drop);
            resent.extend(send(&mut sender, 10));
        }
        assert!(sender.in_recovery());
        assert_eq!(resent, vec![(1100, MSS, false)]);
        // The hole filled: recovery ends at the recovery point, with half the window.
        sender.on_ack(20, 2000, 1 << 20, &[], false, MSS, &mut drop);
        assert!(!sender.in_recovery());
        // Half the flight when the loss was found (1100..2000).
        assert_eq!(sender.congestion_window(), 450);
        assert_eq!(sender.stored(), 0);
    }

    #[test]
    fn duplicate_acks_without_sack_resend_and_partial_acks_go_on() {
        let mut sender = sender_with(10);
        send(&mut sender, 0);
        // 1100 and 1300 lost; no SACK: the first ACK at 1100 is new, three duplicates follow.
        let mut resent = Vec::new();
        for _ in 0..4 {
            sender.on_ack(10, 1100, 1 << 20, &[], false, MSS, &mut drop);
            resent.extend(send(&mut sender, 10));
        }
        assert_eq!(resent, vec![(1100, MSS, false)]);
        // A partial ACK up to the next hole: that segment leaves at once (RFC 6582).
        sender.on_ack(20, 1300, 1 << 20, &[], false, MSS, &mut drop);
        assert_eq!(send(&mut sender, 20)[0], (1300, MSS, false));
    }

    #[test]
    fn the_timer_resends_from_the_acknowledgement_and_backs_off() {
        let mut sender = sender_with(3);
        send(&mut sender, 0);
        let first = sender.deadline_ns().expect("timer armed");
        assert_eq!(first, INITIAL_RTO_NS);
        assert_eq!(sender.on_timer(first - 1, MSS), TimerOutcome::Idle);
        assert_eq!(sender.on_timer(first, MSS), TimerOutcome::Retransmit);
        // One segment (cwnd = 1 MSS), the timer doubled.
        assert_eq!(send(&mut sender, first), vec![(1000, MSS, false)]);
        assert_eq!(sender.deadline_ns(), Some(first + 2 * INITIAL_RTO_NS));
        // Its ACK: the rest follows in slow start, no RTT sample from a resent chunk.
        sender.on_ack(first + 5, 1100, 1 << 20, &[], false, MSS, &mut drop);
        assert_eq!(send(&mut sender, first + 5), vec![(1100, MSS, false), (1200, MSS, false)]);
    }

    #[test]
    fn a_silent_client_is_given_up() {
        let mut sender = sender_with(1);
        send(&mut sender, 0);
        let mut now = 0;
        let mut outcome = TimerOutcome::Idle;
        for _ in 0..=MAX_RETRIES {
            now = sender.deadline_ns().expect("armed");
            outcome = sender.on_timer(now, MSS);
            send(&mut sender, now);
        }
        assert_eq!(outcome, TimerOutcome::GaveUp);
        assert!(now < 400_000_000_000);
    }

    #[test]
    fn rtt_samples_set_the_timer() {
        let mut sender = sender_with(2);
        send(&mut sender, 0);
        // 1 ms RTT: the timer is the minimum.
        sender.on_ack(1_000_000, 1200, 1 << 20, &[], false, MSS, &mut drop);
        assert_eq!(sender.rto_ns, MIN_RTO_NS);
        assert_eq!(sender.srtt_ns, Some(1_000_000));
    }

    #[test]
    fn the_fin_follows_the_last_byte_and_is_resent_alone() {
        let mut sender = sender_with(1);
        sender.push_fin();
        assert_eq!(send(&mut sender, 0), vec![(1000, MSS, true)]);
        assert_eq!(sender.next_offset(), 1101);
        // The data is acknowledged, not the FIN: the timer sends the FIN alone.
        sender.on_ack(10, 1100, 1 << 20, &[], false, MSS, &mut drop);
        assert!(!sender.fin_acked());
        let deadline = sender.deadline_ns().expect("armed for the FIN");
        assert_eq!(sender.on_timer(deadline, MSS), TimerOutcome::Retransmit);
        assert_eq!(send(&mut sender, deadline), vec![(1100, 0, true)]);
        sender.on_ack(deadline + 1, 1101, 1 << 20, &[], false, MSS, &mut drop);
        assert!(sender.fin_acked());
        assert!(!sender.has_outstanding());
        assert_eq!(sender.deadline_ns(), None);
    }

    #[test]
    fn a_lost_tail_is_probed_and_found_without_the_timer() {
        let mut sender = sender_with(4);
        sender.seed_rtt(0, 1_000_000);
        send(&mut sender, 0);
        // 1000..1200 arrive, the last two segments are lost: nothing more comes back.
        sender.on_ack(1_000_000, 1200, 1 << 20, &[], false, MSS, &mut drop);
        let deadline = sender.deadline_ns().expect("armed");
        assert_eq!(deadline, 1_000_000 + 10_000_000, "a probe after 10 ms, not the 200 ms timer");
        assert_eq!(sender.on_timer(deadline, MSS), TimerOutcome::TailProbe);
        // No new data: the last segment goes again; the client SACKs it, and the hole before
        // it leaves at once.
        assert_eq!(send(&mut sender, deadline), vec![(1300, MSS, false)]);
        sender.on_ack(deadline + 1_000_000, 1200, 1 << 20, &[(1300, 1400)], false, MSS, &mut drop);
        assert_eq!(send(&mut sender, deadline + 1_000_000), vec![(1200, MSS, false)]);
        sender.on_ack(deadline + 2_000_000, 1400, 1 << 20, &[], false, MSS, &mut drop);
        assert_eq!(sender.stored(), 0);
        assert_eq!(sender.deadline_ns(), None);
    }

    #[test]
    fn a_lone_segment_waits_for_a_delayed_ack_before_a_probe() {
        let mut sender = sender_with(1);
        sender.seed_rtt(0, 1_000_000);
        send(&mut sender, 0);
        assert!(sender.deadline_ns().expect("armed") >= MIN_RTO_NS);
    }

    #[test]
    fn a_hole_with_everything_after_it_sacked_is_resent_at_once() {
        let mut sender = sender_with(3);
        send(&mut sender, 0);
        // 1000..1100 lost; the two after it SACKed: no third duplicate will ever come.
        sender.on_ack(10, 1000, 1 << 20, &[(1100, 1200)], false, MSS, &mut drop);
        sender.on_ack(11, 1000, 1 << 20, &[(1100, 1300)], false, MSS, &mut drop);
        assert_eq!(send(&mut sender, 11), vec![(1000, MSS, false)]);
    }

    #[test]
    fn a_lost_resend_goes_again_when_later_bytes_arrive() {
        let mut sender = sender_with(20);
        send(&mut sender, 0);
        // 1000..1100 lost; three SACKs: resent.
        for right in [1200, 1300, 1400] {
            sender.on_ack(10, 1000, 1 << 20, &[(1100, right)], false, MSS, &mut drop);
        }
        assert_eq!(send(&mut sender, 10)[0], (1000, MSS, false));
        // The resend is lost too. ACKs go on SACKing what was in flight; then bytes sent after
        // the resend (past 3000) arrive: it goes again.
        sender.on_ack(20, 1000, 1 << 20, &[(1100, 3000)], false, MSS, &mut drop);
        let sent = send(&mut sender, 20);
        assert!(!sent.iter().any(|s| s.0 == 1000), "not before later bytes are SACKed: {sent:?}");
        let newest = sent.iter().map(|s| s.0 + s.1 as u64).max().unwrap_or(3000);
        sender.on_ack(30, 1000, 1 << 20, &[(1100, newest)], false, MSS, &mut drop);
        assert_eq!(send(&mut sender, 30).first(), Some(&(1000, MSS, false)));
    }

    #[test]
    fn any_lost_resend_goes_again_once_later_bytes_arrive() {
        let mut sender = sender_with(40);
        sender.seed_rtt(0, 1_000_000);
        send(&mut sender, 0);
        // 1100..1200 and 1500..1600 lost; everything else up to 2000 SACKed.
        sender.on_ack(1_000_000, 1100, 1 << 20, &[(1200, 1500), (1600, 2000)], false, MSS, &mut drop);
        let resent: Vec<u64> = send(&mut sender, 1_000_000).iter().map(|s| s.0).collect();
        assert!(resent.starts_with(&[1100, 1500]), "{resent:?}");
        let newest = 1000 + 100 * 40;
        // The resend of 1100 arrives, that of 1500 does not; new bytes sent after both do.
        sender.on_ack(3_000_000, 1500, 1 << 20, &[(1600, newest)], false, MSS, &mut drop);
        let again: Vec<u64> = send(&mut sender, 3_000_000).iter().map(|s| s.0).collect();
        assert_eq!(again.first(), Some(&1500), "{again:?}");
    }

    #[test]
    fn progress_undoes_the_backoff() {
        let mut sender = sender_with(3);
        sender.seed_rtt(0, 1_000_000);
        send(&mut sender, 0);
        let mut now = 0;
        // A tail probe first, then three timeouts.
        for _ in 0..4 {
            now = sender.deadline_ns().expect("armed");
            sender.on_timer(now, MSS);
            send(&mut sender, now);
        }
        assert!(sender.rto_ns >= 8 * MIN_RTO_NS);
        sender.on_ack(now + 1, 1100, 1 << 20, &[], false, MSS, &mut drop);
        assert_eq!(sender.rto_ns, MIN_RTO_NS);
    }

    #[test]
    fn a_random_loss_halves_renos_window_but_not_the_models() {
        for (congestion, expected) in [(CongestionControl::Reno, 450), (CongestionControl::Bbr, 1000)] {
            let mut sender = Sender::new(1000, 1 << 20, MSS, congestion);
            for i in 0..30 {
                sender.push(vec![i as u8; MSS]);
            }
            sender.seed_rtt(0, 1_000_000);
            send(&mut sender, 0);
            // 1100..1200 lost, the segments after it SACKed one by one.
            for right in [1300, 1400, 1500] {
                sender.on_ack(1_000_000, 1100, 1 << 20, &[(1200, right)], false, MSS, &mut drop);
            }
            assert!(sender.in_recovery(), "{congestion:?}");
            assert!(sender.congestion_window() >= expected, "{congestion:?}: {}", sender.congestion_window());
            if congestion == CongestionControl::Reno {
                assert_eq!(sender.congestion_window(), expected);
            }
        }
    }

    #[test]
    fn the_model_measures_rate_and_round_trip() {
        let mut model = PathModel::default();
        model.rtt_sample(0, 2_000_000);
        // 10,000 bytes in flight delivered over each 2 ms round: 5 MB/s.
        let mut now = 0;
        model.deliver(now, 1, 10_000);
        for _ in 0..20 {
            now += 2_000_000;
            model.deliver(now, 10_000, 10_000);
        }
        assert_eq!(model.max_rate(), 5_000_000);
        assert!(model.filled_pipe, "the rate stopped growing");
        // Twice the BDP (2 x 5 MB/s x 2 ms), and each ACK delivering a whole round at once is
        // an aggregation of one round's bytes.
        assert_eq!(model.target_window(), Some(20_000 + 10_000));
    }

    #[test]
    fn acknowledgements_of_unsent_bytes_are_ignored() {
        let mut sender = sender_with(3);
        sender.transmit(0, MSS, &mut |_, _, _| {});
        assert_eq!(sender.on_ack(1, 1_000_000, 1 << 20, &[], false, MSS, &mut drop), 0);
        assert_eq!(sender.acked(), 1000);
        // A SACK block beyond what was sent is clipped to it.
        sender.on_ack(1, 1000, 1 << 20, &[(1100, 9_000_000)], false, MSS, &mut drop);
        assert_eq!(sender.sacked, vec![(1100, 1300)]);
    }

    #[test]
    fn a_segment_never_spans_two_records() {
        let mut sender = Sender::new(0, 1 << 20, 1000, CongestionControl::Reno);
        sender.push(vec![0; 150]);
        sender.push(vec![1; 150]);
        let mut sent = Vec::new();
        sender.transmit(0, 1000, &mut |offset, bytes, _| sent.push((offset, bytes.len())));
        assert_eq!(sent, vec![(0, 150), (150, 150)]);
    }
}
