//! A port made of two queues in memory, for tests of what sits above [`FrameIo`].
//!
//! The test pushes frames into the receive queue with [`MemoryPort::inject`] and takes what was
//! transmitted with [`MemoryPort::take_sent`]. A transmit capacity can be set to exercise the
//! ring-full path. Not supported: waiting (there is no descriptor; [`wait_readable`] just
//! sleeps) and sharing a port between threads while it is used.
//!
//! [`wait_readable`]: super::wait_readable

use std::collections::VecDeque;
use std::io;
use std::os::fd::BorrowedFd;

use super::{FrameIo, Frames, PortStats, RawFrame, SendReport};

/// A port backed by in-memory queues.
#[derive(Debug)]
pub struct MemoryPort {
    name: String,
    waiting: VecDeque<Vec<u8>>,
    /// Frames handed out by the last `recv_batch`, kept alive while the batch is borrowed.
    held: Vec<Vec<u8>>,
    held_raw: Vec<RawFrame>,
    sent: Vec<Vec<u8>>,
    tx_capacity: usize,
    max_frame: usize,
}

impl MemoryPort {
    /// The largest frame a memory port transmits, as a real port with 2 KiB slots would.
    pub const DEFAULT_MAX_FRAME: usize = 2048;

    /// A port named `name` with an unbounded transmit queue.
    pub fn new(name: &str) -> Self {
        MemoryPort {
            name: name.to_string(),
            waiting: VecDeque::new(),
            held: Vec::new(),
            held_raw: Vec::new(),
            sent: Vec::new(),
            tx_capacity: usize::MAX,
            max_frame: Self::DEFAULT_MAX_FRAME,
        }
    }

    /// Limits the transmit queue to `capacity` frames until [`take_sent`](Self::take_sent)
    /// empties it, like a transmit ring that the kernel does not drain.
    pub fn with_tx_capacity(mut self, capacity: usize) -> Self {
        self.tx_capacity = capacity;
        self
    }

    /// Queues `frame` for the next receive.
    pub fn inject(&mut self, frame: &[u8]) {
        self.waiting.push_back(frame.to_vec());
    }

    /// Frames waiting to be received.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Takes every frame transmitted so far, oldest first.
    pub fn take_sent(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.sent)
    }
}

impl FrameIo for MemoryPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn recv_batch(&mut self, max: usize) -> io::Result<Frames<'_>> {
        self.held.clear();
        self.held_raw.clear();
        let count = max.min(self.waiting.len());
        self.held.extend(self.waiting.drain(..count));
        self.held_raw.extend(
            self.held
                .iter_mut()
                .map(|frame| RawFrame::new(frame.as_mut_ptr(), frame.len())),
        );
        // SAFETY: each descriptor points into a distinct `Vec` in `self.held`, which is neither
        // read, moved nor resized until the next `recv_batch`, and that cannot run while the
        // returned batch borrows `self`.
        Ok(unsafe { Frames::from_raw(&mut self.held_raw) })
    }

    fn send_batch(&mut self, frames: &mut dyn Iterator<Item = &[u8]>) -> io::Result<SendReport> {
        let mut report = SendReport::default();
        for frame in frames {
            if frame.len() > self.max_frame {
                report.oversize += 1;
            } else if self.sent.len() >= self.tx_capacity {
                report.ring_full += 1;
            } else {
                self.sent.push(frame.to_vec());
                report.sent += 1;
                report.sent_bytes += frame.len() as u64;
            }
        }
        Ok(report)
    }

    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    fn stats(&self) -> io::Result<PortStats> {
        Ok(PortStats::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receives_in_order_up_to_max() {
        let mut port = MemoryPort::new("mem0");
        for byte in 0..5u8 {
            port.inject(&[byte; 60]);
        }
        let frames = port.recv_batch(3).unwrap();
        assert_eq!(
            frames.iter().map(|f| f[0]).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(port.waiting(), 2);
        let frames = port.recv_batch(64).unwrap();
        assert_eq!(frames.iter().map(|f| f[0]).collect::<Vec<_>>(), vec![3, 4]);
        assert!(port.recv_batch(64).unwrap().is_empty());
    }

    #[test]
    fn received_frames_can_be_rewritten_in_place() {
        let mut port = MemoryPort::new("mem0");
        port.inject(&[1, 2, 3]);
        let mut frames = port.recv_batch(1).unwrap();
        frames.get_mut(0).unwrap().copy_from_slice(&[7, 8, 9]);
        assert_eq!(frames.get(0).unwrap(), &[7, 8, 9]);
    }

    #[test]
    fn transmit_counts_ring_full_and_oversize() {
        let mut port = MemoryPort::new("mem0").with_tx_capacity(2);
        let big = vec![0u8; MemoryPort::DEFAULT_MAX_FRAME + 1];
        let small = [1u8; 64];
        let batch: Vec<&[u8]> = vec![&small, &big, &small, &small];
        let report = port.send_batch(&mut batch.into_iter()).unwrap();
        assert_eq!(
            report,
            SendReport {
                sent: 2,
                sent_bytes: 128,
                ring_full: 1,
                oversize: 1,
                rejected: 0,
            }
        );
        assert_eq!(port.take_sent().len(), 2);
        let report = port.send_batch(&mut std::iter::once(&small[..])).unwrap();
        assert_eq!(report.sent, 1, "taking the sent frames frees the queue");
    }
}
