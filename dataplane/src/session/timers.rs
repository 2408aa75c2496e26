//! When each session next needs its timers run, so that a turn of the loop costs the sessions
//! that are due and not every session the box holds.
//!
//! A min-heap of `(deadline, session)` with lazy cancellation: a session's entry is replaced
//! only when its deadline moves earlier (a retransmission armed); when it moves later (the idle
//! timer restarted by every segment) the old entry stays, fires early, finds nothing to do, and
//! the session is scheduled again at its real deadline. So a segment costs no heap operation in
//! the common case, a session has at most a few entries, and an idle session is visited once per
//! idle period. The engine keeps, per session, the deadline of its live entry; entries that do
//! not match it are stale and skipped.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// No deadline.
pub(crate) const NEVER: u64 = u64::MAX;

#[derive(Debug, Default)]
pub(crate) struct TimerQueue {
    heap: BinaryHeap<Reverse<(u64, u64)>>,
}

impl TimerQueue {
    /// Schedules session `id` at `deadline_ns` if that is earlier than `scheduled_ns` (the
    /// deadline of its live entry, [`NEVER`] for none); returns the deadline of its live entry.
    pub(crate) fn schedule(&mut self, id: u64, deadline_ns: u64, scheduled_ns: u64) -> u64 {
        if deadline_ns >= scheduled_ns {
            return scheduled_ns;
        }
        self.heap.push(Reverse((deadline_ns, id)));
        deadline_ns
    }

    /// The next entry due at `now_ns`, removed: `(deadline, id)`. The caller checks it against
    /// the session's live deadline and skips it if stale.
    pub(crate) fn pop_due(&mut self, now_ns: u64) -> Option<(u64, u64)> {
        let &Reverse((deadline_ns, _)) = self.heap.peek()?;
        if deadline_ns > now_ns {
            return None;
        }
        self.heap.pop().map(|Reverse(entry)| entry)
    }

    /// The earliest deadline queued (perhaps a stale entry's, which only wakes the loop early).
    pub(crate) fn next_ns(&self) -> Option<u64> {
        self.heap.peek().map(|&Reverse((deadline_ns, _))| deadline_ns)
    }

    /// Drops every entry `live` refuses: the stale entries of ended sessions, which would
    /// otherwise stay until their deadlines (an idle timeout away).
    pub(crate) fn retain(&mut self, mut live: impl FnMut(u64, u64) -> bool) {
        self.heap.retain(|&Reverse((deadline_ns, id))| live(deadline_ns, id));
    }

    /// Gives back room a burst of sessions left (see `Engine::trim`).
    pub(crate) fn shrink(&mut self) {
        if super::oversized(self.heap.capacity(), self.heap.len()) {
            self.heap.shrink_to(2 * self.heap.len());
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_earlier_deadline_adds_an_entry() {
        let mut timers = TimerQueue::default();
        let live = timers.schedule(7, 100, NEVER);
        assert_eq!(live, 100);
        assert_eq!(timers.schedule(7, 300, live), 100, "a later deadline keeps the entry");
        assert_eq!(timers.len(), 1);
        let live = timers.schedule(7, 50, live);
        assert_eq!(live, 50);
        assert_eq!(timers.len(), 2, "the old entry is stale, not removed");
    }

    #[test]
    fn entries_come_out_in_deadline_order_when_due() {
        let mut timers = TimerQueue::default();
        timers.schedule(1, 30, NEVER);
        timers.schedule(2, 10, NEVER);
        timers.schedule(3, 20, NEVER);
        assert_eq!(timers.next_ns(), Some(10));
        assert_eq!(timers.pop_due(9), None);
        assert_eq!(timers.pop_due(25), Some((10, 2)));
        assert_eq!(timers.pop_due(25), Some((20, 3)));
        assert_eq!(timers.pop_due(25), None);
        assert_eq!(timers.pop_due(u64::MAX - 1), Some((30, 1)));
        assert_eq!(timers.len(), 0);
    }

    #[test]
    fn retain_drops_the_entries_refused() {
        let mut timers = TimerQueue::default();
        for id in 0..10 {
            timers.schedule(id, 100 - id, NEVER);
        }
        timers.retain(|_, id| id % 2 == 0);
        assert_eq!(timers.len(), 5);
        assert_eq!(timers.pop_due(1000), Some((92, 8)), "still in deadline order");
    }
}
