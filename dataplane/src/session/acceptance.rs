//! Which segments a peer's connection takes: RFC 9293 3.10.7.4's acceptability test and
//! RFC 5961's defences against blind injection, for both of the box's TCP endpoints.
//!
//! The box is the TCP endpoint toward the client and toward the backend, so a forged segment
//! is its problem, not a kernel's. Before these checks one RST at any sequence number ended a
//! session, a data segment far outside the window moved the offset every later sequence
//! number was unwrapped against (the session froze), and a timestamp from a forged segment
//! was echoed to the client as if it had sent it. Now a segment outside the window is
//! answered with an ACK and dropped; a RST ends the session only at exactly the next sequence
//! number (or the end of what was received, as Linux also takes), and one elsewhere in the
//! window gets a challenge ACK, which a peer that really reset answers with the exact RST; an
//! acknowledgement of data never sent, or older than a window, is answered and dropped.
//!
//! Offsets are the session's unwrapped 64-bit stream offsets (see
//! [`crate::wire::unwrap_offset`]): the caller unwraps a segment's numbers against its own
//! reference without moving it, and moves the reference only for a segment taken.

/// The least time between two ACKs answering unacceptable segments without data (Linux's
/// `tcp_invalid_ratelimit`): a flood of forged segments gets a trickle of ACKs, not one each.
/// Data segments are always answered: a retransmission of data already acknowledged is how a
/// peer whose ACK was lost asks again.
pub(crate) const ANSWER_INTERVAL_NS: u64 = 500_000_000;

/// What one endpoint remembers to judge what its peer sends.
#[derive(Debug, Default)]
pub(crate) struct Guard {
    /// The right edge of the window last offered to the peer (an offset). A window may look
    /// smaller now than it did when the peer was given it; what it was given is what it may
    /// send.
    window_edge: u64,
    /// Just past the last byte (or FIN) received in sequence or held: a peer's RST carries
    /// its next sequence number, which is here when the box has not acknowledged everything
    /// yet (Linux takes a RST at its highest SACK edge for the same reason).
    received_end: u64,
    /// The largest window the peer offered (RFC 5961 5.2's MAX.SND.WND).
    max_peer_window: u64,
    /// When the next ACK may answer an unacceptable segment without data.
    next_answer_ns: u64,
}

/// A segment's sequence-space facts, unwrapped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival {
    pub offset: u64,
    /// Payload bytes plus one for a FIN.
    pub len: u64,
    pub rst: bool,
    /// The acknowledgement as an offset of the box's own stream, when the ACK bit is set.
    pub ack: Option<u64>,
}

/// Where the box's own two streams stand when the segment arrives.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Position {
    /// The box's acknowledgement toward the peer (RCV.NXT).
    pub receive_next: u64,
    /// The window the box would offer now, in bytes past `receive_next`.
    pub receive_window: u64,
    /// The peer's cumulative acknowledgement (SND.UNA) and the end of what the box sent
    /// (SND.NXT, past its FIN once that left).
    pub send_unacked: u64,
    pub send_next: u64,
}

/// What to do with a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Acceptable: process it.
    Accept,
    /// The peer's exact RST: the connection ends.
    Reset,
    /// Dropped; answer with an ACK (the box's current acknowledgement and window).
    Answer(Refusal),
    /// Dropped without an answer.
    Ignore(Refusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Wholly before the acknowledgement (a retransmission, a keepalive) or beyond the window.
    OutOfWindow,
    /// A RST inside the window but not at the next sequence number (RFC 5961 3.2).
    ResetInWindow,
    /// Acknowledges what the box never sent, or is older than the peer's largest window
    /// (RFC 5961 5.2).
    AckOutOfRange,
    /// Neither RST nor ACK: nothing a synchronized connection takes (RFC 9293 3.10.7.4).
    NoAck,
}

impl Guard {
    pub(crate) fn new(receive_next: u64, peer_window: u64) -> Guard {
        Guard { window_edge: receive_next, received_end: receive_next, max_peer_window: peer_window, next_answer_ns: 0 }
    }

    /// The box offered the peer `window` bytes past `ack`.
    pub(crate) fn offered(&mut self, ack: u64, window: u64) {
        self.window_edge = self.window_edge.max(ack + window);
    }

    /// The peer offered the box `window` bytes.
    pub(crate) fn peer_window(&mut self, window: u64) {
        self.max_peer_window = self.max_peer_window.max(window);
    }

    /// The segment `arrival` was taken: what it carried counts as received.
    pub(crate) fn received(&mut self, arrival: &Arrival) {
        self.received_end = self.received_end.max(arrival.offset + arrival.len);
    }

    /// Judges a segment (not a SYN: the caller answers those) against `position`.
    pub(crate) fn judge(&mut self, now_ns: u64, arrival: &Arrival, position: &Position) -> Verdict {
        // What the peer already sent (its FIN, which the box acknowledges only once the other
        // side has it) is inside too.
        let edge = self.window_edge.max(position.receive_next + position.receive_window).max(self.received_end);
        // RFC 9293's four cases, as Linux's tcp_sequence() reads them: a segment is in the
        // window if it ends at or after RCV.NXT and starts at or before the right edge. A
        // zero-length segment at RCV.NXT with a closed window is in; a keepalive (one byte
        // below RCV.NXT) and an old retransmission are out, and are answered.
        let in_window = arrival.offset + arrival.len >= position.receive_next && arrival.offset <= edge;
        if arrival.rst {
            if !in_window {
                return Verdict::Ignore(Refusal::OutOfWindow);
            }
            if arrival.offset == position.receive_next || arrival.offset == self.received_end {
                return Verdict::Reset;
            }
            return self.answer(now_ns, Refusal::ResetInWindow, false);
        }
        if !in_window {
            return self.answer(now_ns, Refusal::OutOfWindow, arrival.len > 0 && arrival.offset < position.receive_next);
        }
        let Some(ack) = arrival.ack else { return Verdict::Ignore(Refusal::NoAck) };
        if ack > position.send_next || ack < position.send_unacked.saturating_sub(self.max_peer_window) {
            return self.answer(now_ns, Refusal::AckOutOfRange, false);
        }
        Verdict::Accept
    }

    /// An ACK for a refused segment, unless one left within [`ANSWER_INTERVAL_NS`] (never
    /// held back for `always`: old data, whose sender lost the box's ACK).
    fn answer(&mut self, now_ns: u64, why: Refusal, always: bool) -> Verdict {
        if always {
            return Verdict::Answer(why);
        }
        if now_ns < self.next_answer_ns {
            return Verdict::Ignore(why);
        }
        self.next_answer_ns = now_ns + ANSWER_INTERVAL_NS;
        Verdict::Answer(why)
    }

    /// Whether an answer went within the rate limit (for SYNs in a synchronized connection,
    /// which the caller answers itself: RFC 5961 4).
    pub(crate) fn may_answer(&mut self, now_ns: u64) -> bool {
        matches!(self.answer(now_ns, Refusal::OutOfWindow, false), Verdict::Answer(_))
    }
}

/// Whether a timestamp from an acceptable segment replaces `recent`, the one the box echoes:
/// not when it is older (a reordered segment; RFC 7323 5.3's PAWS order), so the echo never
/// steps back.
pub(crate) fn newer_timestamp(recent: u32, value: u32) -> bool {
    value.wrapping_sub(recent) as i32 >= 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn position() -> Position {
        Position { receive_next: 10_000, receive_window: 5_000, send_unacked: 50_000, send_next: 60_000 }
    }

    fn data(offset: u64, len: u64) -> Arrival {
        Arrival { offset, len, rst: false, ack: Some(55_000) }
    }

    fn reset(offset: u64) -> Arrival {
        Arrival { offset, len: 0, rst: true, ack: None }
    }

    fn guard() -> Guard {
        let mut guard = Guard::new(0, 20_000);
        guard.offered(10_000, 5_000);
        guard
    }

    #[test]
    fn segments_in_the_window_are_taken() {
        let mut guard = guard();
        for arrival in [data(10_000, 1_000), data(9_000, 1_001), data(14_999, 100), data(10_000, 0), data(15_000, 0)] {
            assert_eq!(guard.judge(0, &arrival, &position()), Verdict::Accept, "{arrival:?}");
        }
    }

    #[test]
    fn old_data_is_answered_every_time_and_empty_segments_at_most_twice_a_second() {
        let mut guard = guard();
        let old = data(8_000, 1_000);
        assert_eq!(guard.judge(0, &old, &position()), Verdict::Answer(Refusal::OutOfWindow));
        assert_eq!(guard.judge(1, &old, &position()), Verdict::Answer(Refusal::OutOfWindow));
        // A keepalive: one byte below RCV.NXT, no data.
        let keepalive = data(9_999, 0);
        assert_eq!(guard.judge(2, &keepalive, &position()), Verdict::Answer(Refusal::OutOfWindow));
        assert_eq!(guard.judge(3, &keepalive, &position()), Verdict::Ignore(Refusal::OutOfWindow));
        assert_eq!(guard.judge(2 + ANSWER_INTERVAL_NS, &keepalive, &position()), Verdict::Answer(Refusal::OutOfWindow));
    }

    #[test]
    fn data_beyond_the_window_is_refused() {
        let mut guard = guard();
        assert_eq!(guard.judge(0, &data(15_001, 10), &position()), Verdict::Answer(Refusal::OutOfWindow));
        assert_eq!(guard.judge(MS, &data(1 << 31, 1_000), &position()), Verdict::Ignore(Refusal::OutOfWindow));
    }

    #[test]
    fn the_window_once_offered_stays_open() {
        let mut guard = guard();
        guard.offered(10_000, 50_000);
        // The box would offer 5,000 now, but it told the peer 60,000.
        assert_eq!(guard.judge(0, &data(59_000, 1_000), &position()), Verdict::Accept);
    }

    #[test]
    fn only_the_exact_reset_ends_the_connection() {
        let mut guard = guard();
        assert_eq!(guard.judge(0, &reset(10_000), &position()), Verdict::Reset);
        assert_eq!(guard.judge(0, &reset(10_001), &position()), Verdict::Answer(Refusal::ResetInWindow));
        // A second challenge within the interval is not sent (RFC 5961 7).
        assert_eq!(guard.judge(MS, &reset(12_000), &position()), Verdict::Ignore(Refusal::ResetInWindow));
        assert_eq!(guard.judge(MS, &reset(20_000), &position()), Verdict::Ignore(Refusal::OutOfWindow));
        assert_eq!(guard.judge(MS, &reset(3_000_000_000), &position()), Verdict::Ignore(Refusal::OutOfWindow));
    }

    #[test]
    fn a_reset_at_the_end_of_what_was_received_is_exact() {
        let mut guard = guard();
        guard.received(&data(10_000, 3_000));
        assert_eq!(guard.judge(0, &reset(13_000), &position()), Verdict::Reset);
    }

    #[test]
    fn acknowledgements_of_unsent_or_ancient_data_are_refused() {
        let mut guard = guard();
        let with_ack = |ack| Arrival { offset: 10_000, len: 100, rst: false, ack: Some(ack) };
        assert_eq!(guard.judge(0, &with_ack(60_000), &position()), Verdict::Accept);
        assert_eq!(guard.judge(0, &with_ack(30_000), &position()), Verdict::Accept, "within MAX.SND.WND below SND.UNA");
        assert_eq!(guard.judge(0, &with_ack(60_001), &position()), Verdict::Answer(Refusal::AckOutOfRange));
        assert_eq!(guard.judge(ANSWER_INTERVAL_NS, &with_ack(29_999), &position()), Verdict::Answer(Refusal::AckOutOfRange));
        let no_ack = Arrival { ack: None, ..with_ack(0) };
        assert_eq!(guard.judge(0, &no_ack, &position()), Verdict::Ignore(Refusal::NoAck));
    }

    #[test]
    fn timestamps_never_step_back() {
        assert!(newer_timestamp(100, 100));
        assert!(newer_timestamp(100, 101));
        assert!(!newer_timestamp(100, 99));
        assert!(newer_timestamp(u32::MAX, 3), "across the wrap");
    }
}
