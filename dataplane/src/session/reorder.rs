//! Backend segments that arrived ahead of a gap, held until the gap fills.
//!
//! The record framing toward the client is decided in order (one record per backend segment,
//! sealed when it becomes the next), so a segment after a hole cannot be sealed yet. Dropping
//! it, as the box once did, threw away everything the backend sent after one loss and left the
//! repair to its retransmission timer. Held here instead (bounded), it is SACKed to the backend,
//! whose fast recovery then sends the hole alone, at once.

use std::collections::VecDeque;

use crate::wire::{SackBlock, SackBlocks, SeqSpace};

/// Backend plaintext held at most ahead of a gap: as much as the window the box offers the
/// backend ([`super::sender::SEND_BUFFER_LIMIT`]), so that everything the backend may send
/// after one loss is held, not dropped (a drop there costs the backend a timeout).
pub(crate) const REORDER_LIMIT: usize = super::sender::SEND_BUFFER_LIMIT;
/// Client ciphertext held at most beyond a lost record header: a client's flight can be as
/// large as the window the backend offers (Linux grows it to megabytes), and every segment
/// dropped here is one more the client must find lost and resend.
pub(crate) const CLIENT_REORDER_LIMIT: usize = 1024 * 1024;

#[derive(Debug, Default)]
pub(crate) struct Reorder {
    /// Segments as they came: `(offset, bytes)`, ascending, disjoint.
    segments: VecDeque<(u64, Vec<u8>)>,
    stored: usize,
    /// The range of the segment held last (RFC 2018: the first SACK block reports it).
    latest: Option<(u64, u64)>,
    /// Bytes held at most; 0 means [`REORDER_LIMIT`].
    limit: usize,
}

/// What [`Reorder::hold`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Held {
    /// Kept (at least the bytes not held already).
    Kept,
    /// Every byte was held already.
    Duplicate,
    /// No room: dropped (the backend sends it again).
    Full,
}

impl Reorder {
    /// A reorder buffer that holds at most `limit` bytes.
    pub(crate) fn with_limit(limit: usize) -> Reorder {
        Reorder { limit, ..Reorder::default() }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    pub(crate) fn stored(&self) -> usize {
        self.stored
    }

    /// Holds `bytes` at `offset` (beyond `frontier`, the next offset to seal), except what is
    /// held already.
    pub(crate) fn hold(&mut self, frontier: u64, offset: u64, bytes: &[u8]) -> Held {
        let mut start = offset.max(frontier);
        let end = offset + bytes.len() as u64;
        if start >= end {
            return Held::Duplicate;
        }
        let mut kept = false;
        let mut index = self.segments.partition_point(|(at, piece)| at + piece.len() as u64 <= start);
        while start < end {
            let next = self.segments.get(index).map(|(at, piece)| (*at, at + piece.len() as u64));
            match next {
                Some((at, stop)) if at <= start => {
                    start = stop;
                    index += 1;
                }
                other => {
                    let gap_end = other.map_or(end, |(at, _)| at.min(end));
                    let limit = if self.limit == 0 { REORDER_LIMIT } else { self.limit };
                    if self.stored + (gap_end - start) as usize > limit {
                        return if kept { Held::Kept } else { Held::Full };
                    }
                    let piece = bytes[(start - offset) as usize..(gap_end - offset) as usize].to_vec();
                    self.stored += piece.len();
                    self.segments.insert(index, (start, piece));
                    kept = true;
                    index += 1;
                    start = gap_end;
                }
            }
        }
        if kept {
            self.latest = Some((offset.max(frontier), end));
            Held::Kept
        } else {
            Held::Duplicate
        }
    }

    /// The held segment that continues the stream at `frontier`, trimmed to start there.
    pub(crate) fn take_next(&mut self, frontier: u64) -> Option<(u64, Vec<u8>)> {
        loop {
            let &(at, ref piece) = self.segments.front()?;
            let stop = at + piece.len() as u64;
            if at > frontier {
                return None;
            }
            let (at, mut piece) = self.segments.pop_front()?;
            self.stored -= piece.len();
            if stop <= frontier {
                if self.segments.is_empty() {
                    self.latest = None;
                }
                continue;
            }
            piece.drain(..(frontier - at) as usize);
            if self.segments.is_empty() {
                self.latest = None;
            }
            return Some((frontier, piece));
        }
    }

    /// The first held segment if it starts before `limit`, whole (for a consumer that can
    /// place bytes it has seen again, like the record opener).
    pub(crate) fn take_before(&mut self, limit: u64) -> Option<(u64, Vec<u8>)> {
        if self.segments.front()?.0 >= limit {
            return None;
        }
        let (at, piece) = self.segments.pop_front()?;
        self.stored -= piece.len();
        if self.segments.is_empty() {
            self.latest = None;
        }
        Some((at, piece))
    }

    /// Segments held.
    pub(crate) fn len(&self) -> usize {
        self.segments.len()
    }

    /// SACK blocks for what is held, as the backend's sequence numbers (`isn` + 1 + offset):
    /// the block with the latest segment first (RFC 2018 4), then the others, three at most
    /// (with timestamps, four do not fit).
    pub(crate) fn sack_blocks(&self, isn: u32) -> SackBlocks {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for &(at, ref piece) in &self.segments {
            let stop = at + piece.len() as u64;
            match ranges.last_mut() {
                Some(last) if last.1 == at => last.1 = stop,
                _ => ranges.push((at, stop)),
            }
        }
        if let Some((latest, _)) = self.latest {
            if let Some(index) = ranges.iter().position(|&(a, b)| a <= latest && latest < b) {
                let first = ranges.remove(index);
                ranges.insert(0, first);
            }
        }
        let mut blocks = SackBlocks::default();
        let sequence = |offset: u64| SeqSpace::new(isn).seq(offset);
        for (a, b) in ranges.into_iter().take(3) {
            let _ = blocks.push(SackBlock { left: sequence(a), right: sequence(b) });
        }
        blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_after_a_gap_wait_and_come_out_in_order() {
        let mut reorder = Reorder::default();
        assert_eq!(reorder.hold(100, 300, &[3; 100]), Held::Kept);
        assert_eq!(reorder.hold(100, 200, &[2; 100]), Held::Kept);
        assert_eq!(reorder.hold(100, 200, &[2; 100]), Held::Duplicate);
        assert_eq!(reorder.stored(), 200);
        assert_eq!(reorder.take_next(100), None);
        // The hole 100..200 was sealed by the caller; the rest follows one segment at a time.
        assert_eq!(reorder.take_next(200), Some((200, vec![2; 100])));
        assert_eq!(reorder.take_next(300), Some((300, vec![3; 100])));
        assert!(reorder.is_empty());
        assert_eq!(reorder.stored(), 0);
    }

    #[test]
    fn overlaps_are_trimmed_to_what_is_new() {
        let mut reorder = Reorder::default();
        reorder.hold(0, 100, &[1; 100]);
        // 50..250 overlaps 100..200: only 50..100 and 200..250 are new.
        assert_eq!(reorder.hold(0, 50, &[9; 200]), Held::Kept);
        assert_eq!(reorder.stored(), 200);
        // The caller sealed up to 70: the held segment starting at 50 comes out from 70.
        let (at, piece) = reorder.take_next(70).expect("continues at 70");
        assert_eq!((at, piece.len()), (70, 30));
        assert_eq!(reorder.take_next(100), Some((100, vec![1; 100])));
    }

    #[test]
    fn the_latest_segment_is_the_first_sack_block() {
        let mut reorder = Reorder::default();
        reorder.hold(0, 1000, &[0; 100]);
        reorder.hold(0, 3000, &[0; 100]);
        reorder.hold(0, 1100, &[0; 100]);
        let blocks = reorder.sack_blocks(u32::MAX);
        // isn + 1 wraps to 0.
        let ranges: Vec<(u32, u32)> = blocks.as_slice().iter().map(|b| (b.left.0, b.right.0)).collect();
        assert_eq!(ranges, vec![(1000, 1200), (3000, 3100)]);
    }

    #[test]
    fn it_holds_no_more_than_its_limit() {
        let mut reorder = Reorder::default();
        let piece = vec![0u8; 1000];
        let mut offset = 1000;
        while reorder.hold(0, offset, &piece) == Held::Kept {
            offset += 1000;
        }
        assert!(reorder.stored() <= REORDER_LIMIT);
        assert_eq!(reorder.hold(0, offset, &piece), Held::Full);
    }
}
