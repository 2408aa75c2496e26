//! The transparent bridge: every frame received on one port leaves unchanged on the other.
//!
//! A [`Bridge`] owns one queue of each port and forwards in both directions from one poll loop.
//! Several bridges (one per queue, or one per fanout member) run in parallel, each in a thread
//! pinned to its own core by [`run_pinned`]. When both ports have been idle for
//! `idle_spins` rounds the loop sleeps in `poll(2)` until one is readable, so an idle bridge
//! costs no CPU; the sleep is bounded so that a stop request is seen within `idle_wait`.
//!
//! This is the base that later issues build the session engine on: everything the box does not
//! terminate must cross it as if the box were a cable.
//!
//! Not supported: learning, filtering, or any frame rewriting (a frame is never inspected); more
//! than two ports; frames that a port cannot transmit are dropped and counted, never queued.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use crate::io::{wait_readable, FrameIo, SendReport};

pub use core_affinity::CoreId;

/// The cores this process may run on, in order; empty if the platform cannot tell.
pub fn available_cores() -> Vec<CoreId> {
    core_affinity::get_core_ids().unwrap_or_default()
}

/// Tuning of one bridge loop.
#[derive(Debug, Clone, Copy)]
pub struct BridgeConfig {
    /// Frames taken from a port per receive.
    pub batch_size: usize,
    /// Empty rounds before the loop sleeps.
    pub idle_spins: u32,
    /// The longest sleep, which bounds how late a stop request is noticed.
    pub idle_wait: Duration,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            batch_size: 64,
            idle_spins: 128,
            idle_wait: Duration::from_millis(50),
        }
    }
}

/// Counters of one forwarding direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DirectionCounters {
    /// Frames received and handed to the other port.
    pub frames: u64,
    pub bytes: u64,
    /// Frames dropped because the other port's transmit ring was full.
    pub dropped_ring_full: u64,
    /// Frames dropped because they do not fit a transmit slot of the other port.
    pub dropped_oversize: u64,
    /// Frames the other port's kernel refused.
    pub dropped_rejected: u64,
}

impl DirectionCounters {
    /// Frames dropped for any reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_ring_full + self.dropped_oversize + self.dropped_rejected
    }

    fn record(&mut self, received_frames: usize, received_bytes: u64, report: &SendReport) {
        self.frames += received_frames as u64;
        self.bytes += received_bytes;
        self.dropped_ring_full += report.ring_full as u64;
        self.dropped_oversize += report.oversize as u64;
        self.dropped_rejected += report.rejected as u64;
    }

    /// Adds `other` (another loop's counters) into `self`.
    pub fn merge(&mut self, other: &DirectionCounters) {
        self.frames += other.frames;
        self.bytes += other.bytes;
        self.dropped_ring_full += other.dropped_ring_full;
        self.dropped_oversize += other.dropped_oversize;
        self.dropped_rejected += other.dropped_rejected;
    }
}

impl fmt::Display for DirectionCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} frames, {} bytes, {} dropped (ring full {}, oversize {}, rejected {})",
            self.frames,
            self.bytes,
            self.dropped(),
            self.dropped_ring_full,
            self.dropped_oversize,
            self.dropped_rejected
        )
    }
}

/// Counters of both directions of a bridge.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BridgeCounters {
    pub outside_to_inside: DirectionCounters,
    pub inside_to_outside: DirectionCounters,
}

impl BridgeCounters {
    /// Adds another loop's counters.
    pub fn merge(&mut self, other: &BridgeCounters) {
        self.outside_to_inside.merge(&other.outside_to_inside);
        self.inside_to_outside.merge(&other.inside_to_outside);
    }
}

/// Forwards one batch from `from` to `to`. Returns the number of frames received.
///
/// The transmit call is made even for an empty batch: a backend may hold frames from an earlier
/// batch that the kernel did not take yet, and this is where it retries.
pub fn forward<A, B>(
    from: &mut A,
    to: &mut B,
    batch_size: usize,
    counters: &mut DirectionCounters,
) -> io::Result<usize>
where
    A: FrameIo + ?Sized,
    B: FrameIo + ?Sized,
{
    let frames = from.recv_batch(batch_size)?;
    let received = frames.len();
    let bytes = frames.total_bytes();
    let report = to.send_batch(&mut frames.iter())?;
    counters.record(received, bytes, &report);
    Ok(received)
}

/// One bridge loop: one queue of the outside port, one queue of the inside port.
#[derive(Debug)]
pub struct Bridge<P> {
    outside: P,
    inside: P,
    config: BridgeConfig,
    counters: BridgeCounters,
}

impl<P: FrameIo> Bridge<P> {
    /// A bridge between `outside` and `inside`.
    pub fn new(outside: P, inside: P, config: BridgeConfig) -> Self {
        Bridge {
            outside,
            inside,
            config,
            counters: BridgeCounters::default(),
        }
    }

    /// Forwards at most one batch in each direction. Returns the frames received in all.
    pub fn poll_once(&mut self) -> io::Result<usize> {
        let batch = self.config.batch_size;
        let outward = forward(
            &mut self.outside,
            &mut self.inside,
            batch,
            &mut self.counters.outside_to_inside,
        )?;
        let inward = forward(
            &mut self.inside,
            &mut self.outside,
            batch,
            &mut self.counters.inside_to_outside,
        )?;
        Ok(outward + inward)
    }

    /// Forwards until `stop` is set, sleeping when both ports are idle.
    pub fn run(&mut self, stop: &AtomicBool) -> io::Result<()> {
        let mut idle_rounds = 0u32;
        while !stop.load(Ordering::Relaxed) {
            if self.poll_once()? > 0 {
                idle_rounds = 0;
                continue;
            }
            idle_rounds += 1;
            if idle_rounds >= self.config.idle_spins {
                idle_rounds = 0;
                let fds: Vec<_> = [self.outside.readiness_fd(), self.inside.readiness_fd()]
                    .into_iter()
                    .flatten()
                    .collect();
                // An interrupted wait just means "look at the stop flag again".
                wait_readable(&fds, self.config.idle_wait)?;
            }
        }
        Ok(())
    }

    /// What this loop has forwarded and dropped so far.
    pub fn counters(&self) -> BridgeCounters {
        self.counters
    }

    /// The outside port.
    pub fn outside(&self) -> &P {
        &self.outside
    }

    /// The inside port.
    pub fn inside(&self) -> &P {
        &self.inside
    }

    /// Ends the bridge and hands back its ports (outside, inside).
    pub fn into_ports(self) -> (P, P) {
        (self.outside, self.inside)
    }

    /// Mutable access to both ports, for tests and tools that inject or collect frames.
    pub fn ports_mut(&mut self) -> (&mut P, &mut P) {
        (&mut self.outside, &mut self.inside)
    }
}

/// Pins the calling thread to `core`. Returns whether the system accepted it.
pub fn pin_current_thread(core: CoreId) -> bool {
    core_affinity::set_for_current(core)
}

/// How one loop ended: its counters, and the error that stopped it early, if any.
#[derive(Debug)]
pub struct LoopExit<P> {
    pub bridge: Bridge<P>,
    pub core: Option<usize>,
    pub error: Option<io::Error>,
}

/// Runs each bridge in its own thread, pinned to the next core in `cores` (round robin; no
/// pinning if `cores` is empty or pinning fails), until `stop` is set or a loop fails. A failing
/// loop sets `stop` so that the others end too. Returns every loop's exit, in order.
pub fn run_pinned<P>(
    bridges: Vec<Bridge<P>>,
    cores: &[CoreId],
    stop: &AtomicBool,
) -> Vec<LoopExit<P>>
where
    P: FrameIo,
{
    thread::scope(|scope| {
        let handles: Vec<_> = bridges
            .into_iter()
            .enumerate()
            .map(|(index, mut bridge)| {
                let core = if cores.is_empty() {
                    None
                } else {
                    Some(cores[index % cores.len()])
                };
                scope.spawn(move || {
                    let pinned = core
                        .filter(|&core| pin_current_thread(core))
                        .map(|core| core.id);
                    let error = bridge.run(stop).err();
                    if error.is_some() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    LoopExit {
                        bridge,
                        core: pinned,
                        error,
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| match handle.join() {
                Ok(exit) => exit,
                // A panicking loop is a bug; re-raise it here rather than report half a result.
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::memory::MemoryPort;

    fn frame(tag: u8, len: usize) -> Vec<u8> {
        let mut frame = vec![tag; len];
        frame[0] = tag;
        frame
    }

    fn bridge(batch_size: usize) -> Bridge<MemoryPort> {
        let config = BridgeConfig {
            batch_size,
            idle_spins: 1,
            idle_wait: Duration::from_millis(1),
        };
        Bridge::new(
            MemoryPort::new("outside"),
            MemoryPort::new("inside"),
            config,
        )
    }

    #[test]
    fn frames_cross_unchanged_in_both_directions() {
        let mut bridge = bridge(64);
        let (outside, inside) = bridge.ports_mut();
        outside.inject(&frame(1, 60));
        outside.inject(&frame(2, 1514));
        inside.inject(&frame(3, 64));
        assert_eq!(bridge.poll_once().unwrap(), 3);
        let (outside, inside) = bridge.ports_mut();
        assert_eq!(inside.take_sent(), vec![frame(1, 60), frame(2, 1514)]);
        assert_eq!(outside.take_sent(), vec![frame(3, 64)]);
        let counters = bridge.counters();
        assert_eq!(
            counters.outside_to_inside,
            DirectionCounters {
                frames: 2,
                bytes: 1574,
                dropped_ring_full: 0,
                dropped_oversize: 0,
                dropped_rejected: 0,
            }
        );
        assert_eq!(counters.inside_to_outside.frames, 1);
        assert_eq!(counters.inside_to_outside.bytes, 64);
    }

    #[test]
    fn one_round_moves_at_most_one_batch_per_direction() {
        let mut bridge = bridge(32);
        for index in 0..100u8 {
            bridge.ports_mut().0.inject(&frame(index, 60));
        }
        assert_eq!(bridge.poll_once().unwrap(), 32);
        assert_eq!(bridge.poll_once().unwrap(), 32);
        assert_eq!(bridge.poll_once().unwrap(), 32);
        assert_eq!(bridge.poll_once().unwrap(), 4);
        assert_eq!(bridge.poll_once().unwrap(), 0);
        let sent = bridge.ports_mut().1.take_sent();
        let order: Vec<u8> = sent.iter().map(|f| f[0]).collect();
        assert_eq!(order, (0..100u8).collect::<Vec<_>>(), "order is kept");
    }

    #[test]
    fn drops_are_counted_per_reason() {
        let config = BridgeConfig {
            batch_size: 64,
            idle_spins: 1,
            idle_wait: Duration::from_millis(1),
        };
        let mut bridge = Bridge::new(
            MemoryPort::new("outside"),
            MemoryPort::new("inside").with_tx_capacity(2),
            config,
        );
        let outside = bridge.ports_mut().0;
        for _ in 0..3 {
            outside.inject(&frame(7, 100));
        }
        outside.inject(&frame(8, MemoryPort::DEFAULT_MAX_FRAME + 1));
        assert_eq!(bridge.poll_once().unwrap(), 4);
        let counters = bridge.counters().outside_to_inside;
        assert_eq!(counters.frames, 4);
        assert_eq!(counters.dropped_ring_full, 1);
        assert_eq!(counters.dropped_oversize, 1);
        assert_eq!(counters.dropped(), 2);
        assert_eq!(bridge.ports_mut().1.take_sent().len(), 2);
    }

    #[test]
    fn run_forwards_until_stopped() {
        let mut bridge = bridge(8);
        for index in 0..20u8 {
            bridge.ports_mut().1.inject(&frame(index, 80));
        }
        let stop = AtomicBool::new(false);
        thread::scope(|scope| {
            let runner = scope.spawn(|| {
                bridge.run(&stop).unwrap();
                bridge
            });
            thread::sleep(Duration::from_millis(50));
            stop.store(true, Ordering::Relaxed);
            let mut bridge = runner.join().unwrap();
            assert_eq!(bridge.counters().inside_to_outside.frames, 20);
            assert_eq!(bridge.ports_mut().0.take_sent().len(), 20);
        });
    }

    #[test]
    fn pinned_loops_report_their_counters() {
        let mut first = bridge(16);
        first.ports_mut().0.inject(&frame(1, 60));
        let mut second = bridge(16);
        second.ports_mut().1.inject(&frame(2, 70));
        second.ports_mut().1.inject(&frame(3, 70));
        let stop = AtomicBool::new(false);
        let cores = available_cores();
        let exits = thread::scope(|scope| {
            let runner = scope.spawn(|| run_pinned(vec![first, second], &cores, &stop));
            thread::sleep(Duration::from_millis(50));
            stop.store(true, Ordering::Relaxed);
            runner.join().unwrap()
        });
        assert_eq!(exits.len(), 2);
        assert!(exits.iter().all(|exit| exit.error.is_none()));
        if !cores.is_empty() {
            assert!(
                exits.iter().all(|exit| exit.core.is_some()),
                "each loop is pinned"
            );
        }
        let mut total = BridgeCounters::default();
        for exit in &exits {
            total.merge(&exit.bridge.counters());
        }
        assert_eq!(total.outside_to_inside.frames, 1);
        assert_eq!(total.inside_to_outside.frames, 2);
        assert_eq!(total.inside_to_outside.bytes, 140);
    }

    #[test]
    fn counters_print_for_humans() {
        let counters = DirectionCounters {
            frames: 3,
            bytes: 180,
            dropped_ring_full: 1,
            dropped_oversize: 0,
            dropped_rejected: 2,
        };
        assert_eq!(
            counters.to_string(),
            "3 frames, 180 bytes, 3 dropped (ring full 1, oversize 0, rejected 2)"
        );
    }
}
