//! Capture files as frame I/O: a capture replayed into the two ports of the box, each frame
//! labelled with the port it arrives on, and what the box transmits on each port written to a
//! pcap file of that port.
//!
//! Both ports of a replay share one queue of frames in capture order. A port's receive takes
//! frames from the head of the queue only while they are its own, so a poll loop that
//! alternates between the ports sees every frame in exactly the capture's order, every run.
//! Frames a port transmits are stamped with the replay clock, the timestamp of the frame last
//! received on either port, so the output files are the same every run too.
//!
//! Reading and writing the files is [`crate::pcap`]'s; this module only moves frames.
//!
//! Not supported: link types other than Ethernet (such records are skipped and counted),
//! pacing the replay in real time (frames are handed out as fast as the loop asks), and waiting
//! (there is no descriptor: a loop that finds both ports empty sleeps its idle time).

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Write};
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{FrameIo, Frames, PortStats, RawFrame, SendReport};
use crate::pcap::{CaptureReader, Interface, LinkType, PcapError, PcapWriter, Record};

/// Which port of the box a frame arrives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortLabel {
    /// From the router's side (clients).
    Outside,
    /// From the server VLAN.
    Inside,
}

/// How to tell which port a captured frame arrives on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelRule {
    /// pcapng: the interface whose `if_name` is `outside` feeds the outside port, the one named
    /// `inside` the inside port; frames of other interfaces are skipped.
    InterfaceNames { outside: String, inside: String },
    /// pcapng: by interface number (classic pcap has only interface 0).
    InterfaceIds { outside: u32, inside: u32 },
    /// One link captured in one place: frames whose source MAC address is one of these (the
    /// servers) arrive on the inside port, every other frame on the outside port.
    InsideSourceMacs(Vec<[u8; 6]>),
}

impl LabelRule {
    fn label(&self, record: &Record<'_>, interfaces: &[Interface<'_>]) -> Option<PortLabel> {
        match self {
            LabelRule::InterfaceNames { outside, inside } => {
                let name = interfaces.get(record.interface as usize)?.name?;
                if name == outside {
                    Some(PortLabel::Outside)
                } else if name == inside {
                    Some(PortLabel::Inside)
                } else {
                    None
                }
            }
            LabelRule::InterfaceIds { outside, inside } => match record.interface {
                id if id == *outside => Some(PortLabel::Outside),
                id if id == *inside => Some(PortLabel::Inside),
                _ => None,
            },
            LabelRule::InsideSourceMacs(macs) => {
                let source: [u8; 6] = record.data.get(6..12)?.try_into().ok()?;
                if macs.contains(&source) {
                    Some(PortLabel::Inside)
                } else {
                    Some(PortLabel::Outside)
                }
            }
        }
    }
}

/// Why a capture cannot be replayed.
#[derive(Debug)]
pub enum ReplayError {
    /// The file is not a capture we can read, or is damaged at the given place.
    Capture(PcapError),
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayError::Capture(error) => write!(f, "cannot replay capture: {error}"),
        }
    }
}

impl std::error::Error for ReplayError {}

/// What was left out of a replay.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplaySkipped {
    /// Records whose link type is not Ethernet.
    pub not_ethernet: u64,
    /// Records cut by the capture's snap length (forwarding part of a frame would be wrong).
    pub truncated: u64,
    /// Records the label rule assigns to neither port.
    pub unlabelled: u64,
}

#[derive(Debug)]
struct ReplayFrame {
    port: PortLabel,
    timestamp_ns: u64,
    data: Vec<u8>,
}

#[derive(Debug, Default)]
struct ReplayQueue {
    frames: VecDeque<ReplayFrame>,
    clock_ns: u64,
}

/// A capture ready to be replayed: the frames in capture order, each with its port.
#[derive(Debug)]
pub struct Replay {
    queue: ReplayQueue,
    skipped: ReplaySkipped,
}

impl Replay {
    /// Reads the whole capture in `bytes` and labels each Ethernet frame with `rule`.
    pub fn from_capture(bytes: &[u8], rule: &LabelRule) -> Result<Self, ReplayError> {
        let mut reader = CaptureReader::new(bytes).map_err(ReplayError::Capture)?;
        let mut queue = ReplayQueue::default();
        let mut skipped = ReplaySkipped::default();
        // Not a `for` loop: the label rule needs `reader.interfaces()` between records.
        #[allow(clippy::while_let_on_iterator)]
        while let Some(item) = reader.next() {
            let record = item.map_err(ReplayError::Capture)?;
            if record.link_type != LinkType::Ethernet {
                skipped.not_ethernet += 1;
                continue;
            }
            if (record.data.len() as u64) < u64::from(record.orig_len) {
                skipped.truncated += 1;
                continue;
            }
            match rule.label(&record, reader.interfaces()) {
                Some(port) => queue.frames.push_back(ReplayFrame {
                    port,
                    timestamp_ns: record.timestamp_ns,
                    data: record.data.to_vec(),
                }),
                None => skipped.unlabelled += 1,
            }
        }
        Ok(Replay { queue, skipped })
    }

    /// Frames to replay, on both ports.
    pub fn len(&self) -> usize {
        self.queue.frames.len()
    }

    /// Whether there is nothing to replay.
    pub fn is_empty(&self) -> bool {
        self.queue.frames.is_empty()
    }

    /// What the capture held that will not be replayed.
    pub fn skipped(&self) -> ReplaySkipped {
        self.skipped
    }

    /// The two ports of the replay. What each transmits goes to its writer, if it has one.
    pub fn into_ports<W: Write + Send>(
        self,
        outside: (&str, Option<PcapWriter<W>>),
        inside: (&str, Option<PcapWriter<W>>),
    ) -> (PcapPort<W>, PcapPort<W>) {
        let queue = Arc::new(Mutex::new(self.queue));
        let port = |label, (name, output): (&str, Option<PcapWriter<W>>)| PcapPort {
            name: name.to_string(),
            label,
            queue: Arc::clone(&queue),
            held: Vec::new(),
            raw: Vec::new(),
            output,
        };
        (
            port(PortLabel::Outside, outside),
            port(PortLabel::Inside, inside),
        )
    }
}

/// One port of a replay.
#[derive(Debug)]
pub struct PcapPort<W: Write> {
    name: String,
    label: PortLabel,
    queue: Arc<Mutex<ReplayQueue>>,
    /// Frames of the last batch, owned here while the batch borrows them.
    held: Vec<Vec<u8>>,
    raw: Vec<RawFrame>,
    output: Option<PcapWriter<W>>,
}

impl<W: Write> PcapPort<W> {
    /// Whether every frame of the replay, on both ports, has been received.
    pub fn replay_done(&self) -> bool {
        lock(&self.queue).frames.is_empty()
    }

    /// Flushes the output file and hands back its writer.
    pub fn finish(self) -> io::Result<Option<W>> {
        match self.output {
            Some(mut writer) => {
                writer.flush()?;
                Ok(Some(writer.into_inner()))
            }
            None => Ok(None),
        }
    }
}

/// Locks the shared queue. A poisoned lock means the other port's thread panicked in the
/// middle of taking frames; the queue itself is still consistent (every mutation is a single
/// `pop_front` or clock store), so carry on with it.
fn lock(queue: &Mutex<ReplayQueue>) -> MutexGuard<'_, ReplayQueue> {
    queue
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<W: Write + Send> FrameIo for PcapPort<W> {
    fn name(&self) -> &str {
        &self.name
    }

    fn recv_batch(&mut self, max: usize) -> io::Result<Frames<'_>> {
        self.held.clear();
        self.raw.clear();
        {
            let mut queue = lock(&self.queue);
            while self.held.len() < max {
                match queue.frames.front() {
                    Some(frame) if frame.port == self.label => {}
                    _ => break,
                }
                if let Some(frame) = queue.frames.pop_front() {
                    queue.clock_ns = frame.timestamp_ns;
                    self.held.push(frame.data);
                }
            }
        }
        self.raw.extend(
            self.held
                .iter_mut()
                .map(|frame| RawFrame::new(frame.as_mut_ptr(), frame.len())),
        );
        // SAFETY: each descriptor points into a distinct `Vec` in `self.held`, which is neither
        // read, moved nor resized until the next `recv_batch`, and that cannot run while the
        // returned batch borrows `self`.
        Ok(unsafe { Frames::from_raw(&mut self.raw) })
    }

    fn send_batch(&mut self, frames: &mut dyn Iterator<Item = &[u8]>) -> io::Result<SendReport> {
        let clock_ns = lock(&self.queue).clock_ns;
        let mut report = SendReport::default();
        for frame in frames {
            if let Some(output) = &mut self.output {
                output
                    .write_frame(clock_ns, frame)
                    .map_err(|e| super::port_error(&self.name, "write output capture", e))?;
            }
            report.sent += 1;
            report.sent_bytes += frame.len() as u64;
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
    use crate::bridge::{Bridge, BridgeConfig};
    use crate::pcap::Capture;

    const CLIENT: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];
    const SERVER: [u8; 6] = [2, 0, 0, 0, 0, 0x15];

    fn frame(destination: [u8; 6], source: [u8; 6], tag: u8) -> Vec<u8> {
        let mut frame = Vec::new();
        frame.extend_from_slice(&destination);
        frame.extend_from_slice(&source);
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&[tag; 46]);
        frame
    }

    /// A classic pcap of one link: client, client, server, client.
    fn one_link_capture() -> Vec<u8> {
        let mut writer = PcapWriter::new(Vec::new(), LinkType::Ethernet).unwrap();
        writer
            .write_frame(1_000, &frame(SERVER, CLIENT, 1))
            .unwrap();
        writer
            .write_frame(2_000, &frame(SERVER, CLIENT, 2))
            .unwrap();
        writer
            .write_frame(3_000, &frame(CLIENT, SERVER, 3))
            .unwrap();
        writer
            .write_frame(4_000, &frame(SERVER, CLIENT, 4))
            .unwrap();
        writer.into_inner()
    }

    fn tags(capture: &[u8]) -> Vec<(u64, u8)> {
        Capture::read(capture)
            .unwrap()
            .records
            .iter()
            .map(|record| (record.timestamp_ns, record.data[14]))
            .collect()
    }

    #[test]
    fn replay_through_the_bridge_keeps_capture_order_and_writes_each_port() {
        let replay = Replay::from_capture(
            &one_link_capture(),
            &LabelRule::InsideSourceMacs(vec![SERVER]),
        )
        .unwrap();
        assert_eq!(replay.len(), 4);
        let outside_out = PcapWriter::new(Vec::new(), LinkType::Ethernet).unwrap();
        let inside_out = PcapWriter::new(Vec::new(), LinkType::Ethernet).unwrap();
        let (outside, inside) =
            replay.into_ports(("outside", Some(outside_out)), ("inside", Some(inside_out)));
        let mut bridge = Bridge::new(outside, inside, BridgeConfig::default());
        while !bridge.outside().replay_done() {
            bridge.poll_once().unwrap();
        }
        let counters = bridge.counters();
        assert_eq!(counters.outside_to_inside.frames, 3);
        assert_eq!(counters.inside_to_outside.frames, 1);
        let (outside, inside) = bridge.into_ports();
        let inside_file = inside.finish().unwrap().unwrap();
        let outside_file = outside.finish().unwrap().unwrap();
        // Client frames leave on the inside port, the server's on the outside port, each
        // stamped with the time it was received.
        assert_eq!(tags(&inside_file), vec![(2_000, 1), (2_000, 2), (4_000, 4)]);
        assert_eq!(tags(&outside_file), vec![(3_000, 3)]);
    }

    #[test]
    fn a_port_never_takes_frames_past_the_other_ports_next_one() {
        let replay = Replay::from_capture(
            &one_link_capture(),
            &LabelRule::InsideSourceMacs(vec![SERVER]),
        )
        .unwrap();
        let (mut outside, mut inside) =
            replay.into_ports::<Vec<u8>>(("outside", None), ("inside", None));
        assert!(
            inside.recv_batch(64).unwrap().is_empty(),
            "the capture starts with the outside port"
        );
        assert_eq!(
            outside.recv_batch(64).unwrap().len(),
            2,
            "up to the server's frame"
        );
        assert!(outside.recv_batch(64).unwrap().is_empty());
        assert_eq!(
            inside.recv_batch(64).unwrap().get(0).map(|f| f[14]),
            Some(3)
        );
        assert_eq!(
            outside.recv_batch(1).unwrap().get(0).map(|f| f[14]),
            Some(4)
        );
        assert!(outside.replay_done());
    }

    /// A pcapng file with two interfaces named `outside` and `inside`, one frame on each, and a
    /// third interface whose frame no rule claims.
    fn two_interface_capture() -> Vec<u8> {
        fn block(kind: u32, body: &[u8]) -> Vec<u8> {
            let total = (12 + body.len().div_ceil(4) * 4) as u32;
            let mut out = Vec::new();
            out.extend_from_slice(&kind.to_le_bytes());
            out.extend_from_slice(&total.to_le_bytes());
            out.extend_from_slice(body);
            out.resize(total as usize - 4, 0);
            out.extend_from_slice(&total.to_le_bytes());
            out
        }
        fn interface(name: &str) -> Vec<u8> {
            let mut body = Vec::new();
            body.extend_from_slice(&1u16.to_le_bytes()); // Ethernet
            body.extend_from_slice(&0u16.to_le_bytes());
            body.extend_from_slice(&0u32.to_le_bytes()); // no snap length
            body.extend_from_slice(&2u16.to_le_bytes()); // if_name
            body.extend_from_slice(&(name.len() as u16).to_le_bytes());
            body.extend_from_slice(name.as_bytes());
            body.resize(body.len().div_ceil(4) * 4, 0);
            body.extend_from_slice(&[0, 0, 0, 0]); // opt_endofopt
            block(1, &body)
        }
        fn packet(interface: u32, microseconds: u64, data: &[u8]) -> Vec<u8> {
            let mut body = Vec::new();
            body.extend_from_slice(&interface.to_le_bytes());
            body.extend_from_slice(&((microseconds >> 32) as u32).to_le_bytes());
            body.extend_from_slice(&(microseconds as u32).to_le_bytes());
            body.extend_from_slice(&(data.len() as u32).to_le_bytes());
            body.extend_from_slice(&(data.len() as u32).to_le_bytes());
            body.extend_from_slice(data);
            block(6, &body)
        }
        let mut section = Vec::new();
        section.extend_from_slice(&0x1a2b_3c4du32.to_le_bytes());
        section.extend_from_slice(&1u16.to_le_bytes());
        section.extend_from_slice(&0u16.to_le_bytes());
        section.extend_from_slice(&(-1i64).to_le_bytes());
        let mut file = block(0x0a0d_0d0a, &section);
        file.extend(interface("inside"));
        file.extend(interface("outside"));
        file.extend(interface("mirror"));
        file.extend(packet(1, 10, &frame(SERVER, CLIENT, 1)));
        file.extend(packet(2, 15, &frame(SERVER, CLIENT, 9)));
        file.extend(packet(0, 20, &frame(CLIENT, SERVER, 2)));
        file
    }

    #[test]
    fn pcapng_interfaces_label_frames_by_name() {
        let rule = LabelRule::InterfaceNames {
            outside: "outside".into(),
            inside: "inside".into(),
        };
        let replay = Replay::from_capture(&two_interface_capture(), &rule).unwrap();
        assert_eq!(replay.len(), 2);
        assert_eq!(
            replay.skipped(),
            ReplaySkipped {
                unlabelled: 1,
                ..ReplaySkipped::default()
            }
        );
        let (mut outside, mut inside) =
            replay.into_ports::<Vec<u8>>(("outside", None), ("inside", None));
        assert_eq!(
            outside.recv_batch(8).unwrap().get(0).map(|f| f[14]),
            Some(1)
        );
        assert_eq!(inside.recv_batch(8).unwrap().get(0).map(|f| f[14]), Some(2));
    }

    #[test]
    fn interface_ids_label_frames_and_other_link_types_are_skipped() {
        let rule = LabelRule::InterfaceIds {
            outside: 0,
            inside: 7,
        };
        let replay = Replay::from_capture(&one_link_capture(), &rule).unwrap();
        assert_eq!(replay.len(), 4, "classic pcap is interface 0");

        let mut raw_ip = PcapWriter::new(Vec::new(), LinkType::Raw).unwrap();
        raw_ip.write_frame(1, &[0x45; 20]).unwrap();
        let replay = Replay::from_capture(&raw_ip.into_inner(), &rule).unwrap();
        assert!(replay.is_empty());
        assert_eq!(replay.skipped().not_ethernet, 1);
    }

    #[test]
    fn damaged_capture_is_an_error() {
        let mut capture = one_link_capture();
        capture.truncate(capture.len() - 10);
        let error = Replay::from_capture(
            &capture,
            &LabelRule::InterfaceIds {
                outside: 0,
                inside: 1,
            },
        )
        .unwrap_err();
        assert!(
            error.to_string().starts_with("cannot replay capture"),
            "{error}"
        );
    }
}
