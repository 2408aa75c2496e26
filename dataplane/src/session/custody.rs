//! Client plaintext the box owes the backend.
//!
//! Normally the box acknowledges a client byte only when the backend has acknowledged the
//! plaintext it carried, so a plaintext segment lost on the way to the backend is recovered by
//! the client's own retransmission (the opener decrypts the resent ciphertext again). Two cases
//! break that end-to-end rule, and there the box takes custody of the bytes:
//!
//! - bytes that came with the client's Finished, acknowledged during the handshake before any
//!   backend connection existed;
//! - `verify-first` mode: a record is released only when all of it has arrived, and a client
//!   whose congestion window is smaller than the record would wait forever for an
//!   acknowledgement, so the box acknowledges the record's bytes as it takes them.
//!
//! The plaintext of such bytes is kept here once released, until the backend acknowledges it,
//! and sent again on the backend's third duplicate acknowledgement or on a retransmission timer
//! (RFC 6298 shape: doubling, bounded retries). Memory is bounded: the box stops acknowledging
//! on its own while [`CUSTODY_LIMIT`] bytes are stored.

use std::collections::VecDeque;

/// Plaintext bytes kept at most before the box stops acknowledging client bytes on its own
/// (beyond this, at most the releases of records already acknowledged are added: one record).
pub(crate) const CUSTODY_LIMIT: usize = 256 * 1024;
const INITIAL_RTO_NS: u64 = 200_000_000;
const MAX_RTO_NS: u64 = 10_000_000_000;
const MAX_RETRIES: u32 = 8;
const DUPLICATE_ACK_THRESHOLD: u32 = 3;
/// Segments sent again when the retransmission timer fires (the caller cuts them at the MSS).
const RESEND_SEGMENTS_ON_TIMEOUT: usize = 16;

/// What the timer or an acknowledgement asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CustodyAction {
    /// Send these bytes (at this plaintext offset) to the backend again, cut at the MSS.
    Resend(u64, Vec<u8>),
    /// The backend acknowledged nothing through every retry.
    GaveUp,
}

#[derive(Debug)]
pub(crate) struct Custody {
    /// Client ciphertext offset up to which the box has acknowledged the client.
    acked_cipher: u64,
    /// Plaintext runs `(offset, bytes)`: ascending, disjoint, none below `backend_acked`.
    runs: VecDeque<(u64, Vec<u8>)>,
    stored: usize,
    /// The backend's cumulative acknowledgement of client plaintext.
    backend_acked: u64,
    duplicate_acks: u32,
    deadline_ns: Option<u64>,
    rto_ns: u64,
    retries: u32,
}

impl Custody {
    /// Custody of everything before client offset `acked_cipher` (acknowledged already).
    pub(crate) fn new(acked_cipher: u64) -> Custody {
        Custody {
            acked_cipher,
            runs: VecDeque::new(),
            stored: 0,
            backend_acked: 0,
            duplicate_acks: 0,
            deadline_ns: None,
            rto_ns: INITIAL_RTO_NS,
            retries: 0,
        }
    }

    pub(crate) fn acked_cipher(&self) -> u64 {
        self.acked_cipher
    }

    #[cfg(test)]
    fn stored(&self) -> usize {
        self.stored
    }

    /// Whether the box may acknowledge more client bytes on its own.
    pub(crate) fn has_room(&self) -> bool {
        self.stored < CUSTODY_LIMIT
    }

    /// The box acknowledged the client up to `cipher`.
    pub(crate) fn acknowledge_client(&mut self, cipher: u64) {
        self.acked_cipher = self.acked_cipher.max(cipher);
    }

    /// Keeps released plaintext at `offset`, skipping what the backend has or is kept already.
    pub(crate) fn keep(&mut self, now_ns: u64, offset: u64, bytes: &[u8]) {
        let mut start = offset.max(self.backend_acked);
        let end = offset + bytes.len() as u64;
        // Walk the runs, filling the gaps between them that `start..end` covers.
        let mut index = 0;
        while start < end {
            let next_run = self.runs.get(index).map(|(run_start, run)| (*run_start, *run_start + run.len() as u64));
            match next_run {
                Some((_, run_end)) if run_end <= start => index += 1,
                Some((run_start, run_end)) if run_start <= start => {
                    start = run_end;
                    index += 1;
                }
                other => {
                    let gap_end = other.map_or(end, |(run_start, _)| run_start.min(end));
                    let piece = &bytes[(start - offset) as usize..(gap_end - offset) as usize];
                    self.insert(index, start, piece);
                    start = gap_end;
                }
            }
        }
        if !self.runs.is_empty() && self.deadline_ns.is_none() {
            self.deadline_ns = Some(now_ns + self.rto_ns);
        }
    }

    /// Inserts a piece before run `index`, appending to run `index - 1` when contiguous.
    fn insert(&mut self, index: usize, offset: u64, piece: &[u8]) {
        self.stored += piece.len();
        if index > 0 {
            if let Some((run_start, run)) = self.runs.get_mut(index - 1) {
                if *run_start + run.len() as u64 == offset {
                    run.extend_from_slice(piece);
                    return;
                }
            }
        }
        self.runs.insert(index, (offset, piece.to_vec()));
    }

    /// The backend's acknowledgement of client plaintext `acked`; `pure` when the segment
    /// carried no data and no window change (a duplicate acknowledgement candidate).
    pub(crate) fn backend_ack(&mut self, now_ns: u64, acked: u64, pure: bool, mss: usize) -> Option<CustodyAction> {
        if acked > self.backend_acked {
            self.backend_acked = acked;
            self.duplicate_acks = 0;
            self.retries = 0;
            self.rto_ns = INITIAL_RTO_NS;
            self.trim();
            self.deadline_ns = if self.runs.is_empty() { None } else { Some(now_ns + self.rto_ns) };
            return None;
        }
        if !pure || acked < self.backend_acked || !self.owes_next_byte() {
            return None;
        }
        self.duplicate_acks += 1;
        if self.duplicate_acks == DUPLICATE_ACK_THRESHOLD {
            return self.first_segment(mss).map(|(offset, bytes)| CustodyAction::Resend(offset, bytes));
        }
        None
    }

    /// When [`Custody::poll`] next has something to do.
    pub(crate) fn deadline_ns(&self) -> Option<u64> {
        self.deadline_ns
    }

    /// The retransmission timer.
    pub(crate) fn poll(&mut self, now_ns: u64, mss: usize) -> Option<CustodyAction> {
        let deadline = self.deadline_ns?;
        if self.runs.is_empty() {
            self.deadline_ns = None;
            return None;
        }
        if now_ns < deadline {
            return None;
        }
        self.retries += 1;
        if self.retries > MAX_RETRIES {
            return Some(CustodyAction::GaveUp);
        }
        self.rto_ns = (self.rto_ns * 2).min(MAX_RTO_NS);
        self.deadline_ns = Some(now_ns + self.rto_ns);
        // Only the first hole is ours to fill: a byte not kept here is the client's to resend.
        if !self.owes_next_byte() {
            return None;
        }
        // Go back N: a timeout usually means more than one segment was lost.
        self.first_segment(mss * RESEND_SEGMENTS_ON_TIMEOUT).map(|(offset, bytes)| CustodyAction::Resend(offset, bytes))
    }

    /// Whether the byte the backend waits for is one the box holds.
    fn owes_next_byte(&self) -> bool {
        self.runs.front().is_some_and(|(start, _)| *start <= self.backend_acked)
    }

    fn first_segment(&self, mss: usize) -> Option<(u64, Vec<u8>)> {
        let (start, run) = self.runs.front()?;
        let skip = self.backend_acked.saturating_sub(*start) as usize;
        let bytes = run.get(skip..)?;
        let len = bytes.len().min(mss.max(1));
        Some((start + skip as u64, bytes[..len].to_vec()))
    }

    fn trim(&mut self) {
        while let Some((start, run)) = self.runs.front_mut() {
            let end = *start + run.len() as u64;
            if end <= self.backend_acked {
                self.stored -= run.len();
                self.runs.pop_front();
            } else {
                if *start < self.backend_acked {
                    let cut = (self.backend_acked - *start) as usize;
                    run.drain(..cut);
                    self.stored -= cut;
                    *start = self.backend_acked;
                }
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_disjoint_runs_and_skips_what_it_has() {
        let mut custody = Custody::new(0);
        custody.keep(0, 10, b"klmno");
        custody.keep(0, 0, b"abcde");
        custody.keep(0, 3, b"defghijklmnopq");
        assert_eq!(custody.stored(), 17);
        assert_eq!(custody.runs.len(), 2, "{:?}", custody.runs);
        let all: Vec<u8> = custody.runs.iter().flat_map(|(_, run)| run.iter().copied()).collect();
        assert_eq!(all, b"abcdefghijklmnopq");
    }

    #[test]
    fn backend_acknowledgements_trim() {
        let mut custody = Custody::new(0);
        custody.keep(0, 0, b"abcdefgh");
        assert_eq!(custody.backend_ack(1, 3, true, 100), None);
        assert_eq!(custody.stored(), 5);
        assert_eq!(custody.backend_ack(2, 8, true, 100), None);
        assert_eq!(custody.stored(), 0);
        assert_eq!(custody.poll(u64::MAX, 100), None, "nothing owed: no timer");
        // Bytes the backend already has are not kept again.
        custody.keep(3, 4, b"efghij");
        assert_eq!(custody.stored(), 2);
    }

    #[test]
    fn third_duplicate_ack_resends_the_first_segment() {
        let mut custody = Custody::new(0);
        custody.keep(0, 0, b"abcdefgh");
        assert_eq!(custody.backend_ack(1, 2, true, 3), None);
        assert_eq!(custody.backend_ack(2, 2, true, 3), None);
        assert_eq!(custody.backend_ack(3, 2, false, 3), None, "a data segment is no duplicate");
        assert_eq!(custody.backend_ack(4, 2, true, 3), None);
        assert_eq!(custody.backend_ack(5, 2, true, 3), Some(CustodyAction::Resend(2, b"cde".to_vec())));
        assert_eq!(custody.backend_ack(6, 2, true, 3), None, "once per loss");
    }

    #[test]
    fn timer_resends_doubles_and_gives_up() {
        let mut custody = Custody::new(0);
        custody.keep(0, 0, b"abc");
        assert_eq!(custody.poll(INITIAL_RTO_NS - 1, 10), None);
        let mut now = INITIAL_RTO_NS;
        let mut rto = INITIAL_RTO_NS;
        for _ in 0..MAX_RETRIES {
            assert_eq!(custody.poll(now, 10), Some(CustodyAction::Resend(0, b"abc".to_vec())));
            rto = (rto * 2).min(MAX_RTO_NS);
            assert_eq!(custody.poll(now + rto - 1, 10), None);
            now += rto;
        }
        assert_eq!(custody.poll(now, 10), Some(CustodyAction::GaveUp));
    }

    #[test]
    fn a_hole_the_client_owes_is_not_filled_by_the_box() {
        let mut custody = Custody::new(0);
        custody.keep(0, 10, b"later");
        for now in 1..=4 {
            assert_eq!(custody.backend_ack(now, 0, true, 100), None);
        }
        assert_eq!(custody.poll(INITIAL_RTO_NS, 100), None);
    }

    #[test]
    fn room_is_bounded() {
        let mut custody = Custody::new(0);
        assert!(custody.has_room());
        custody.keep(0, 0, &vec![0u8; CUSTODY_LIMIT]);
        assert!(!custody.has_room());
        custody.acknowledge_client(100);
        custody.acknowledge_client(50);
        assert_eq!(custody.acked_cipher(), 100);
    }
}
