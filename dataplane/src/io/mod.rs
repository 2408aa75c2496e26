//! Frame I/O: batch receive and batch transmit of whole Ethernet frames on one queue of one
//! port.
//!
//! [`FrameIo`] is the one interface the poll loops see. A receive hands out a [`Frames`] batch
//! that borrows the frames where the backend keeps them (the AF_XDP UMEM, the AF_PACKET ring
//! block): no copy is made, and the frames may be rewritten in place. The frames go back to the
//! kernel when the next receive starts, which the borrow checker orders for us: a `Frames` holds
//! the port mutably borrowed, so it cannot outlive the next `recv_batch`. A transmit copies each
//! frame into a transmit slot of the backend and kicks the kernel once per batch.
//!
//! Backends:
//! - [`af_xdp`]: AF_XDP sockets with a loader of our own ([`bpf`]), native or generic attach,
//!   zero-copy where the driver allows it, copy mode otherwise.
//! - [`af_packet`]: AF_PACKET with a TPACKET_V3 receive ring and a TPACKET_V2 transmit ring, or
//!   plain `recv`/`send` on a packet socket where the rings are not available.
//! - [`pcap_io`]: a capture replayed into the two ports (each frame labelled with its port),
//!   and what each port transmits written to a pcap file, for offline replay.
//! - [`memory`]: queues of frames, for unit tests of whatever sits above the trait.
//!
//! Not supported here: frames larger than a backend's frame slot (they are dropped and counted as
//! `oversize`), multi-buffer (jumbo) XDP frames, hardware offloads (checksum, segmentation, VLAN
//! insertion), receive timestamps, and more than one queue per [`FrameIo`] (one poll loop opens
//! one queue of each port; several loops open several queues).

pub mod af_packet;
pub mod af_xdp;
pub mod bpf;
pub mod doorbell;
pub mod memory;
pub mod pcap_io;
mod sys;

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

/// One queue of one network port: batch receive, batch transmit, and a way to sleep until
/// frames arrive.
pub trait FrameIo: Send {
    /// The interface name, for counters and error messages.
    fn name(&self) -> &str;

    /// Receives up to `max` frames without waiting. The frames returned before, if any, go back
    /// to the kernel first. An empty batch means nothing was waiting.
    fn recv_batch(&mut self, max: usize) -> io::Result<Frames<'_>>;

    /// Queues every frame of `frames` for transmission and kicks the kernel once. Frames that do
    /// not fit (transmit ring full, frame larger than a slot) are dropped and reported, never
    /// waited for: a bridge that blocks on one port stalls the other direction.
    fn send_batch(&mut self, frames: &mut dyn Iterator<Item = &[u8]>) -> io::Result<SendReport>;

    /// The descriptor that becomes readable when frames arrive, if the backend has one.
    fn readiness_fd(&self) -> Option<BorrowedFd<'_>>;

    /// Counters kept by the kernel or the backend for this queue since it was opened (drops it
    /// saw, not drops the caller made).
    fn stats(&self) -> io::Result<PortStats>;
}

/// What became of a batch given to [`FrameIo::send_batch`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendReport {
    /// Frames placed in the transmit ring.
    pub sent: usize,
    /// Bytes of the frames placed in the transmit ring.
    pub sent_bytes: u64,
    /// Frames dropped because the transmit ring had no free slot.
    pub ring_full: usize,
    /// Frames dropped because they are larger than a transmit slot.
    pub oversize: usize,
    /// Frames the kernel refused outright (too short to be a frame, for instance).
    pub rejected: usize,
}

impl SendReport {
    /// Frames dropped for any reason.
    pub fn dropped(&self) -> usize {
        self.ring_full + self.oversize + self.rejected
    }
}

/// Kernel-side counters of one queue, as far as the backend can read them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PortStats {
    /// Frames the kernel dropped on receive because our ring was full.
    pub rx_dropped: u64,
    /// Frames the kernel rejected on transmit (bad descriptor or format).
    pub tx_invalid: u64,
    /// Frames received truncated or otherwise unusable, dropped by the backend.
    pub rx_unusable: u64,
}

impl fmt::Display for PortStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rx_dropped {} tx_invalid {} rx_unusable {}",
            self.rx_dropped, self.tx_invalid, self.rx_unusable
        )
    }
}

/// A batch of received frames, borrowed from the backend that received them.
///
/// The frames stay where the kernel put them; `Frames` holds the receiving port mutably
/// borrowed, so they remain valid until the batch is dropped and go back to the kernel on the
/// next receive.
pub struct Frames<'port> {
    slices: &'port mut [RawFrame],
    _borrows_port: PhantomData<&'port mut [u8]>,
}

/// Where one received frame lies. Backends fill a reusable `Vec<RawFrame>` and wrap it in
/// [`Frames`].
#[derive(Debug, Clone, Copy)]
pub struct RawFrame {
    data: *mut u8,
    len: usize,
    checksum: RxChecksum,
}

/// What the receive path (NIC and kernel) says of a received frame's transport checksum, where
/// the backend can tell (AF_PACKET's `tp_status`); the session engine uses it instead of
/// computing the checksum again when its configuration trusts offloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RxChecksum {
    /// Nothing known: the checksum must be computed (AF_XDP, pcap, memory, most veths).
    #[default]
    Unknown,
    /// The NIC or the kernel verified it (`TP_STATUS_CSUM_VALID`: `CHECKSUM_UNNECESSARY`).
    Verified,
    /// A frame of a local sender with transmit offload whose checksum is not filled in yet
    /// (`TP_STATUS_CSUMNOTREADY`: `CHECKSUM_PARTIAL`): it never crossed a wire.
    NotComputed,
}

// SAFETY: a `RawFrame` is an address and a length; the memory is only reached through
// `Frames`, which carries the borrow of its port like a `&mut [u8]` would, and a `&mut [u8]` may
// cross threads.
unsafe impl Send for RawFrame {}
// SAFETY: as above; shared access goes through `Frames::get`, which hands out `&[u8]`.
unsafe impl Sync for RawFrame {}

impl RawFrame {
    /// Describes `len` bytes at `data`.
    pub fn new(data: *mut u8, len: usize) -> Self {
        RawFrame { data, len, checksum: RxChecksum::Unknown }
    }

    /// Describes `len` bytes at `data` whose checksum state the backend knows.
    pub fn with_checksum(data: *mut u8, len: usize, checksum: RxChecksum) -> Self {
        RawFrame { data, len, checksum }
    }
}

impl<'port> Frames<'port> {
    /// Wraps frame descriptors filled by a backend.
    ///
    /// # Safety
    /// Each descriptor must point to `len` initialised bytes that stay valid, and that nothing
    /// else reads or writes, for `'port`; no two descriptors may overlap.
    pub unsafe fn from_raw(slices: &'port mut [RawFrame]) -> Self {
        Frames {
            slices,
            _borrows_port: PhantomData,
        }
    }

    /// An empty batch.
    pub fn empty() -> Self {
        Frames {
            slices: &mut [],
            _borrows_port: PhantomData,
        }
    }

    /// The number of frames in the batch.
    pub fn len(&self) -> usize {
        self.slices.len()
    }

    /// Whether the batch holds no frame.
    pub fn is_empty(&self) -> bool {
        self.slices.is_empty()
    }

    /// The frame at `index`.
    pub fn get(&self, index: usize) -> Option<&[u8]> {
        let raw = self.slices.get(index)?;
        // SAFETY: `from_raw`'s contract: the bytes are valid and unaliased for 'port, and `&self`
        // keeps them from being handed out mutably at the same time.
        Some(unsafe { std::slice::from_raw_parts(raw.data, raw.len) })
    }

    /// What the receive path said of the checksum of the frame at `index`.
    pub fn checksum(&self, index: usize) -> RxChecksum {
        self.slices.get(index).map_or(RxChecksum::Unknown, |raw| raw.checksum)
    }

    /// The frame at `index`, writable in place (a rewrite before forwarding needs no copy).
    pub fn get_mut(&mut self, index: usize) -> Option<&mut [u8]> {
        let raw = self.slices.get(index)?;
        // SAFETY: as in `get`; `&mut self` makes this the only reference to the frame.
        Some(unsafe { std::slice::from_raw_parts_mut(raw.data, raw.len) })
    }

    /// Iterates over the frames.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.len()).filter_map(move |index| self.get(index))
    }

    /// Total bytes in the batch.
    pub fn total_bytes(&self) -> u64 {
        self.slices.iter().map(|raw| raw.len as u64).sum()
    }
}

impl fmt::Debug for Frames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frames").field("len", &self.len()).finish()
    }
}

/// What woke [`wait_readable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wakeup {
    /// At least one descriptor is readable (or has an error to report on the next receive).
    Ready,
    /// The timeout passed.
    Timeout,
    /// A signal interrupted the wait.
    Interrupted,
}

/// Sleeps until one of `fds` is readable or `timeout` passes. Ports without a descriptor (memory)
/// are skipped by the caller; with no descriptor at all this just sleeps.
pub fn wait_readable(fds: &[BorrowedFd<'_>], timeout: Duration) -> io::Result<Wakeup> {
    if fds.is_empty() {
        std::thread::sleep(timeout);
        return Ok(Wakeup::Timeout);
    }
    let mut pollfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: raw(fd),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // Rounded up: a wait shorter than a millisecond must not become a busy poll.
    let timeout_ms = libc::c_int::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pollfds` is a valid array of `pollfds.len()` entries for the duration of the call,
    // and every fd in it is borrowed, so open.
    let ready = unsafe {
        libc::poll(
            pollfds.as_mut_ptr(),
            pollfds.len() as libc::nfds_t,
            timeout_ms,
        )
    };
    match ready {
        0 => Ok(Wakeup::Timeout),
        n if n > 0 => Ok(Wakeup::Ready),
        _ => {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                Ok(Wakeup::Interrupted)
            } else {
                Err(error)
            }
        }
    }
}

fn raw(fd: &BorrowedFd<'_>) -> RawFd {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

/// An I/O error that names the interface and the step that failed: "outside: bind AF_XDP socket
/// to queue 0: Operation not supported".
pub(crate) fn port_error(interface: &str, step: &str, error: io::Error) -> io::Error {
    io::Error::new(error.kind(), format!("{interface}: {step}: {error}"))
}

/// The index of interface `name` in the current network namespace.
pub fn interface_index(name: &str) -> io::Result<u32> {
    let c_name = std::ffi::CString::new(name).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?}: interface name holds a NUL byte"),
        )
    })?;
    // SAFETY: `c_name` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(port_error(
            name,
            "look up interface",
            io::Error::last_os_error(),
        ));
    }
    Ok(index)
}

/// The number of receive queues of interface `name`, from sysfs.
pub fn receive_queue_count(name: &str) -> io::Result<u32> {
    let dir = format!("/sys/class/net/{name}/queues");
    let entries =
        std::fs::read_dir(&dir).map_err(|error| port_error(name, "list receive queues", error))?;
    let mut count = 0;
    for entry in entries {
        let entry = entry.map_err(|error| port_error(name, "list receive queues", error))?;
        if entry.file_name().to_string_lossy().starts_with("rx-") {
            count += 1;
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_view_and_rewrite_in_place() {
        let mut first = vec![1u8, 2, 3];
        let mut second = vec![4u8; 10];
        let mut raw = vec![
            RawFrame::new(first.as_mut_ptr(), first.len()),
            RawFrame::new(second.as_mut_ptr(), second.len()),
        ];
        // SAFETY: both vectors outlive `frames` and are not touched while it lives.
        let mut frames = unsafe { Frames::from_raw(&mut raw) };
        assert_eq!(frames.len(), 2);
        assert_eq!(frames.total_bytes(), 13);
        assert_eq!(frames.get(0), Some(&[1u8, 2, 3][..]));
        frames.get_mut(1).unwrap()[0] = 9;
        assert_eq!(frames.iter().map(|f| f[0]).collect::<Vec<_>>(), vec![1, 9]);
        assert!(frames.get(2).is_none());
        assert_eq!(second[0], 9);
    }

    #[test]
    fn empty_batch() {
        let frames = Frames::empty();
        assert!(frames.is_empty());
        assert_eq!(frames.iter().count(), 0);
    }

    #[test]
    fn send_report_counts_drops() {
        let report = SendReport {
            sent: 3,
            sent_bytes: 180,
            ring_full: 2,
            oversize: 1,
            rejected: 1,
        };
        assert_eq!(report.dropped(), 4);
    }

    #[test]
    fn unknown_interface_is_named_in_the_error() {
        let error = interface_index("no-such-if0").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("no-such-if0: look up interface"),
            "{error}"
        );
    }

    #[test]
    fn wait_without_descriptors_times_out() {
        assert_eq!(
            wait_readable(&[], Duration::from_millis(1)).unwrap(),
            Wakeup::Timeout
        );
    }
}
