//! AF_XDP frame I/O: one socket per receive queue, with its own UMEM and four rings.
//!
//! Layout of a port's UMEM: `2 * ring_size` receive frames, all of them in the fill ring to
//! start with (the fill ring is twice the receive ring, so the kernel never waits for us to
//! return frames), then `ring_size` transmit frames that cycle through the transmit and
//! completion rings. A received frame is handed out in place ([`Frames`] borrows the UMEM) and
//! goes back to the fill ring on the next receive. A transmitted frame is copied into a free
//! transmit frame.
//!
//! The socket binds zero-copy first and falls back to copy mode when the driver refuses
//! (`EOPNOTSUPP`, as veth does). It asks for need-wakeup: the kernel tells us through a ring
//! flag when it needs a system call to go on, and we make none otherwise. In copy mode each
//! `sendto` transmits at most 32 frames, so a batch may take several kicks.
//!
//! The redirect program ([`XdpRedirect`]) is per interface and shared by the sockets of all its
//! queues; hold it in an `Arc` for as long as any socket lives.
//!
//! Not supported: shared UMEM between sockets (so forwarding copies each frame once), frames
//! longer than `frame_size - 256` (multi-buffer), unaligned chunk mode, TX metadata and
//! busy-poll socket options.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::af_packet::PromiscuousGuard;
use super::bpf::{AttachMode, AttachPreference, XdpRedirect};
use super::sys::{self, Mapping};
use super::{port_error, FrameIo, Frames, PortStats, RawFrame, SendReport};

const AF_XDP: libc::c_int = 44;
const SOL_XDP: libc::c_int = 283;
const XDP_MMAP_OFFSETS: libc::c_int = 1;
const XDP_RX_RING: libc::c_int = 2;
const XDP_TX_RING: libc::c_int = 3;
const XDP_UMEM_REG: libc::c_int = 4;
const XDP_UMEM_FILL_RING: libc::c_int = 5;
const XDP_UMEM_COMPLETION_RING: libc::c_int = 6;
const XDP_STATISTICS: libc::c_int = 7;
const XDP_PGOFF_RX_RING: libc::off_t = 0;
const XDP_PGOFF_TX_RING: libc::off_t = 0x8000_0000;
const XDP_UMEM_PGOFF_FILL_RING: libc::off_t = 0x1_0000_0000;
const XDP_UMEM_PGOFF_COMPLETION_RING: libc::off_t = 0x1_8000_0000;
const XDP_COPY: u16 = 1 << 1;
const XDP_ZEROCOPY: u16 = 1 << 2;
const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;
const XDP_RING_NEED_WAKEUP: u32 = 1;
/// Headroom the kernel keeps in front of received data in every chunk (XDP_PACKET_HEADROOM).
const XDP_PACKET_HEADROOM: usize = 256;
/// Copy-mode `sendto` sends at most this many frames per call; kick again while frames remain.
const MAX_KICKS_PER_BATCH: usize = 16;

/// Sizes and modes of an AF_XDP port.
#[derive(Debug, Clone, Copy)]
pub struct XdpConfig {
    /// Entries in the receive, transmit and completion rings (a power of two); the fill ring
    /// has twice as many.
    pub ring_size: u32,
    /// UMEM chunk size: 2048 or 4096.
    pub frame_size: u32,
    /// Try a zero-copy bind before copy mode.
    pub try_zero_copy: bool,
}

impl Default for XdpConfig {
    fn default() -> Self {
        XdpConfig {
            ring_size: 2048,
            frame_size: 4096,
            try_zero_copy: true,
        }
    }
}

/// How the socket ended up bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    ZeroCopy,
    Copy,
}

/// The redirect program on an interface plus the promiscuous mode every port needs; shared by
/// the sockets of all queues of that interface.
#[derive(Debug)]
pub struct XdpInterface {
    redirect: XdpRedirect,
    _promiscuous: PromiscuousGuard,
}

impl XdpInterface {
    /// Attaches the redirect program to `interface` for `queues` queues.
    pub fn attach(
        interface: &str,
        queues: u32,
        preference: AttachPreference,
    ) -> io::Result<Arc<Self>> {
        let ifindex = super::interface_index(interface)?;
        let promiscuous = PromiscuousGuard::new(interface, ifindex)?;
        let redirect = XdpRedirect::attach(interface, ifindex, queues, preference)?;
        Ok(Arc::new(XdpInterface {
            redirect,
            _promiscuous: promiscuous,
        }))
    }

    /// Native or generic.
    pub fn mode(&self) -> AttachMode {
        self.redirect.mode()
    }
}

/// One AF_XDP socket on one queue of one interface.
#[derive(Debug)]
pub struct XdpPort {
    name: String,
    queue: u32,
    bind_mode: BindMode,
    frame_size: usize,
    // Declared before the mappings and the socket they belong to: rings unmap before close.
    fill: ProducerRing<u64>,
    completion: ConsumerRing<u64>,
    rx: ConsumerRing<XdpDesc>,
    tx: ProducerRing<XdpDesc>,
    umem: Mapping,
    socket: OwnedFd,
    /// Receive frames handed out by the last `recv_batch`, to refill on the next one.
    held: Vec<u64>,
    raw: Vec<RawFrame>,
    free_tx_frames: Vec<u64>,
    /// Kept last so that the socket is closed before the program is detached.
    interface: Arc<XdpInterface>,
}

// SAFETY: the raw pointers inside `XdpPort` point into mappings that the port owns and that move
// with it; no other thread holds pointers into them, and the kernel's side of the rings is
// synchronised through the atomic producer/consumer words.
unsafe impl Send for XdpPort {}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct XdpDesc {
    addr: u64,
    len: u32,
    options: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct RingOffsets {
    producer: u64,
    consumer: u64,
    desc: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct MmapOffsets {
    rx: RingOffsets,
    tx: RingOffsets,
    fill: RingOffsets,
    completion: RingOffsets,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct UmemReg {
    addr: u64,
    len: u64,
    chunk_size: u32,
    headroom: u32,
    flags: u32,
    tx_metadata_len: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct SockaddrXdp {
    family: u16,
    flags: u16,
    ifindex: u32,
    queue_id: u32,
    shared_umem_fd: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct XdpStatistics {
    rx_dropped: u64,
    rx_invalid_descs: u64,
    tx_invalid_descs: u64,
    rx_ring_full: u64,
    rx_fill_ring_empty_descs: u64,
    tx_ring_empty_descs: u64,
}

impl XdpPort {
    /// Opens queue `queue` of the interface `interface` was attached to.
    pub fn open(interface: &Arc<XdpInterface>, queue: u32, config: &XdpConfig) -> io::Result<Self> {
        let name = interface.redirect.interface().to_string();
        let try_zero_copy = config.try_zero_copy && interface.mode() == AttachMode::Native;
        let port = if try_zero_copy {
            match Self::open_bound(interface, queue, config, XDP_ZEROCOPY) {
                Err(error) if error.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    // The socket is unusable after a failed bind; start over in copy mode.
                    Self::open_bound(interface, queue, config, XDP_COPY)
                }
                other => other,
            }
        } else {
            Self::open_bound(interface, queue, config, XDP_COPY)
        }
        .map_err(|e| port_error(&name, &format!("open AF_XDP socket on queue {queue}"), e))?;
        interface
            .redirect
            .register_socket(queue, port.socket.as_raw_fd())?;
        Ok(port)
    }

    /// Zero-copy or copy mode.
    pub fn bind_mode(&self) -> BindMode {
        self.bind_mode
    }

    /// Native or generic attach of the interface's program.
    pub fn attach_mode(&self) -> AttachMode {
        self.interface.mode()
    }

    fn open_bound(
        interface: &Arc<XdpInterface>,
        queue: u32,
        config: &XdpConfig,
        mode_flag: u16,
    ) -> io::Result<Self> {
        if !config.ring_size.is_power_of_two()
            || !(config.frame_size == 2048 || config.frame_size == 4096)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "ring size {} must be a power of two and frame size {} 2048 or 4096",
                    config.ring_size, config.frame_size
                ),
            ));
        }
        let ring_size = config.ring_size as usize;
        let frame_size = config.frame_size as usize;
        let rx_frames = 2 * ring_size;
        let tx_frames = ring_size;
        let socket = sys::socket(AF_XDP, libc::SOCK_RAW, 0)?;
        let umem = Mapping::anonymous((rx_frames + tx_frames) * frame_size)?;
        let registration = UmemReg {
            addr: umem.base() as u64,
            len: umem.len() as u64,
            chunk_size: config.frame_size,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        sys::set_option(&socket, SOL_XDP, XDP_UMEM_REG, &registration)?;
        let fill_size = 2 * config.ring_size;
        sys::set_option(&socket, SOL_XDP, XDP_UMEM_FILL_RING, &fill_size)?;
        sys::set_option(
            &socket,
            SOL_XDP,
            XDP_UMEM_COMPLETION_RING,
            &config.ring_size,
        )?;
        sys::set_option(&socket, SOL_XDP, XDP_RX_RING, &config.ring_size)?;
        sys::set_option(&socket, SOL_XDP, XDP_TX_RING, &config.ring_size)?;
        let (offsets, len) = sys::get_option::<MmapOffsets>(&socket, SOL_XDP, XDP_MMAP_OFFSETS)?;
        if len != size_of::<MmapOffsets>() {
            return Err(io::Error::other(format!(
                "kernel returned {len}-byte ring offsets (no ring flags); kernel too old"
            )));
        }
        let mut fill =
            ProducerRing::<u64>::map(&socket, &offsets.fill, fill_size, XDP_UMEM_PGOFF_FILL_RING)?;
        let completion = ConsumerRing::<u64>::map(
            &socket,
            &offsets.completion,
            config.ring_size,
            XDP_UMEM_PGOFF_COMPLETION_RING,
        )?;
        let rx = ConsumerRing::<XdpDesc>::map(
            &socket,
            &offsets.rx,
            config.ring_size,
            XDP_PGOFF_RX_RING,
        )?;
        let tx = ProducerRing::<XdpDesc>::map(
            &socket,
            &offsets.tx,
            config.ring_size,
            XDP_PGOFF_TX_RING,
        )?;
        // Every receive frame starts in the fill ring; it holds exactly `rx_frames` entries.
        for frame in 0..rx_frames {
            // A fresh ring of `fill_size == rx_frames` slots: each fits.
            let pushed = fill.push((frame * frame_size) as u64);
            debug_assert!(pushed, "a fresh fill ring holds every receive frame");
        }
        fill.submit();
        let free_tx_frames = (rx_frames..rx_frames + tx_frames)
            .map(|frame| (frame * frame_size) as u64)
            .collect();
        let address = SockaddrXdp {
            family: AF_XDP as u16,
            flags: XDP_USE_NEED_WAKEUP | mode_flag,
            ifindex: interface.redirect.ifindex(),
            queue_id: queue,
            shared_umem_fd: 0,
        };
        sys::bind(&socket, &address)?;
        let bind_mode = if mode_flag == XDP_ZEROCOPY {
            BindMode::ZeroCopy
        } else {
            BindMode::Copy
        };
        Ok(XdpPort {
            name: interface.redirect.interface().to_string(),
            queue,
            bind_mode,
            frame_size,
            fill,
            completion,
            rx,
            tx,
            umem,
            socket,
            held: Vec::with_capacity(ring_size),
            raw: Vec::with_capacity(ring_size),
            free_tx_frames,
            interface: Arc::clone(interface),
        })
    }

    /// Returns the frames of the previous batch to the fill ring.
    fn refill(&mut self) {
        if self.held.is_empty() {
            return;
        }
        // The fill ring has a slot for every receive frame, but the kernel's consumer index may
        // lag: what does not fit now stays held for the next turn.
        let mut kept = 0;
        for index in 0..self.held.len() {
            let address = self.held[index];
            if !self.fill.push(address) {
                self.held[kept] = address;
                kept += 1;
            }
        }
        self.held.truncate(kept);
        self.fill.submit();
    }

    /// Wakes the kernel's receive side when it asked for it (it ran out of fill entries).
    fn wake_receive(&self) -> io::Result<()> {
        if !self.fill.needs_wakeup() {
            return Ok(());
        }
        // SAFETY: a zero-length receive with no buffer only triggers the kernel's wakeup.
        let result = unsafe {
            libc::recvfrom(
                self.socket.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if result < 0 {
            let error = io::Error::last_os_error();
            if !sys::is_transient(&error) {
                return Err(error);
            }
        }
        Ok(())
    }

    /// Moves completed transmit frames back to the free list.
    fn reap_completions(&mut self) {
        let done = self.completion.available();
        for index in 0..done {
            self.free_tx_frames.push(self.completion.get(index));
        }
        self.completion.release(done);
    }

    /// Tells the kernel to transmit what the ring holds. Returns whether frames remain queued.
    fn kick_transmit(&mut self) -> io::Result<bool> {
        for _ in 0..MAX_KICKS_PER_BATCH {
            if !self.tx.needs_wakeup() && self.bind_mode == BindMode::ZeroCopy {
                return Ok(false);
            }
            // SAFETY: a zero-length send with no buffer or address only triggers transmission.
            let result = unsafe {
                libc::sendto(
                    self.socket.as_raw_fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if result < 0 {
                let error = io::Error::last_os_error();
                if !sys::is_transient(&error) {
                    return Err(error);
                }
            }
            if self.tx.pending() == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl FrameIo for XdpPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn recv_batch(&mut self, max: usize) -> io::Result<Frames<'_>> {
        self.refill();
        self.raw.clear();
        let available = self.rx.available().min(max);
        if available == 0 {
            self.wake_receive()
                .map_err(|e| port_error(&self.name, "wake receive", e))?;
            return Ok(Frames::empty());
        }
        let chunk_mask = !(self.frame_size as u64 - 1);
        let umem_len = self.umem.len() as u64;
        for index in 0..available {
            let desc = self.rx.get(index);
            // The kernel reports where the data starts inside a chunk of our UMEM; check it
            // stays inside that chunk before pointing at it.
            let chunk = desc.addr & chunk_mask;
            if desc
                .addr
                .checked_add(u64::from(desc.len))
                .is_none_or(|end| end > chunk + self.frame_size as u64 || end > umem_len)
            {
                self.held.push(chunk);
                continue;
            }
            self.held.push(chunk);
            // SAFETY: `addr + len` is inside the UMEM (checked above).
            let data = unsafe { self.umem.base().add(desc.addr as usize) };
            self.raw.push(RawFrame::new(data, desc.len as usize));
        }
        self.rx.release(available);
        // SAFETY: each frame lies in its own UMEM chunk, which the kernel gave us through the
        // receive ring and gets back only through the fill ring, on the next `recv_batch` (which
        // cannot run while the batch borrows `self`).
        Ok(unsafe { Frames::from_raw(&mut self.raw) })
    }

    fn send_batch(&mut self, frames: &mut dyn Iterator<Item = &[u8]>) -> io::Result<SendReport> {
        self.reap_completions();
        let mut report = SendReport::default();
        let capacity = self.frame_size - XDP_PACKET_HEADROOM;
        for frame in frames {
            if frame.len() > capacity {
                report.oversize += 1;
                continue;
            }
            if self.free_tx_frames.is_empty() {
                // Give the kernel a chance to finish what it holds before dropping.
                self.tx.submit();
                self.kick_transmit()
                    .map_err(|e| port_error(&self.name, "transmit", e))?;
                self.reap_completions();
            }
            let Some(address) = self.free_tx_frames.pop() else {
                report.ring_full += 1;
                continue;
            };
            // SAFETY: `address` is the start of a free transmit chunk (not in any ring), and the
            // chunk is `frame_size >= frame.len()` bytes inside the UMEM.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    frame.as_ptr(),
                    self.umem.base().add(address as usize),
                    frame.len(),
                );
            }
            if !self.tx.push(XdpDesc {
                addr: address,
                len: frame.len() as u32,
                options: 0,
            }) {
                self.free_tx_frames.push(address);
                report.ring_full += 1;
                continue;
            }
            report.sent += 1;
            report.sent_bytes += frame.len() as u64;
        }
        if report.sent > 0 || self.tx.pending() > 0 {
            self.tx.submit();
            self.kick_transmit()
                .map_err(|e| port_error(&self.name, "transmit", e))?;
        }
        Ok(report)
    }

    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.socket.as_fd())
    }

    fn stats(&self) -> io::Result<PortStats> {
        let (stats, _) = sys::get_option::<XdpStatistics>(&self.socket, SOL_XDP, XDP_STATISTICS)
            .map_err(|e| {
                port_error(
                    &self.name,
                    &format!("read AF_XDP statistics of queue {}", self.queue),
                    e,
                )
            })?;
        Ok(PortStats {
            rx_dropped: stats.rx_dropped + stats.rx_ring_full + stats.rx_fill_ring_empty_descs,
            tx_invalid: stats.tx_invalid_descs,
            rx_unusable: stats.rx_invalid_descs,
        })
    }
}

/// The shared words of one ring: producer, consumer, flags, and the descriptor array.
#[derive(Debug)]
struct RingWords<T> {
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    descs: *mut T,
    mask: u32,
    size: u32,
    _mapping: Mapping,
}

impl<T: Copy> RingWords<T> {
    fn map(
        socket: &OwnedFd,
        offsets: &RingOffsets,
        size: u32,
        page_offset: libc::off_t,
    ) -> io::Result<Self> {
        let len = offsets.desc as usize + size as usize * size_of::<T>();
        let mapping = Mapping::socket_ring(socket, len, page_offset)?;
        let producer = mapping.u32_at(offsets.producer as usize)? as *const AtomicU32;
        let consumer = mapping.u32_at(offsets.consumer as usize)? as *const AtomicU32;
        let flags = mapping.u32_at(offsets.flags as usize)? as *const AtomicU32;
        if offsets.desc as usize & (std::mem::align_of::<T>() - 1) != 0 {
            return Err(io::Error::other("misaligned ring descriptors"));
        }
        // SAFETY: `desc + size * size_of::<T>() == len`, so the array is inside the mapping.
        let descs = unsafe { mapping.base().add(offsets.desc as usize) } as *mut T;
        Ok(RingWords {
            producer,
            consumer,
            flags,
            descs,
            mask: size - 1,
            size,
            _mapping: mapping,
        })
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into the mapping this struct owns, 4-aligned (checked by `u32_at`).
        unsafe { &*self.producer }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { &*self.consumer }
    }

    fn needs_wakeup(&self) -> bool {
        // SAFETY: as for `producer`.
        unsafe { &*self.flags }.load(Ordering::Relaxed) & XDP_RING_NEED_WAKEUP != 0
    }
}

/// A ring we produce into (fill, transmit).
#[derive(Debug)]
struct ProducerRing<T> {
    words: RingWords<T>,
    local_producer: u32,
    cached_consumer: u32,
}

impl<T: Copy> ProducerRing<T> {
    fn map(
        socket: &OwnedFd,
        offsets: &RingOffsets,
        size: u32,
        page_offset: libc::off_t,
    ) -> io::Result<Self> {
        let words = RingWords::map(socket, offsets, size, page_offset)?;
        let local_producer = words.producer().load(Ordering::Relaxed);
        let cached_consumer = words.consumer().load(Ordering::Acquire);
        Ok(ProducerRing {
            words,
            local_producer,
            cached_consumer,
        })
    }

    /// Entries pushed but not yet taken by the kernel.
    fn pending(&mut self) -> u32 {
        self.cached_consumer = self.words.consumer().load(Ordering::Acquire);
        self.local_producer.wrapping_sub(self.cached_consumer)
    }

    /// Writes `value` at the next slot, if the kernel has left one free; returns whether it did.
    /// Counting the frames we own does not guarantee a slot: the kernel can hand a transmitted
    /// frame back on the completion ring (from another CPU, when the peer frees the skb) before
    /// it moves the transmit ring's consumer past that frame's descriptor. Writing anyway would
    /// overwrite a descriptor the kernel has not read yet.
    fn push(&mut self, value: T) -> bool {
        if self.local_producer.wrapping_sub(self.cached_consumer) >= self.words.size && self.pending() >= self.words.size {
            return false;
        }
        let slot = (self.local_producer & self.words.mask) as usize;
        // SAFETY: `slot < size`, inside the descriptor array; the kernel does not read slots
        // between its consumer and our producer until we publish them in `submit`.
        unsafe { self.words.descs.add(slot).write(value) };
        self.local_producer = self.local_producer.wrapping_add(1);
        true
    }

    /// Publishes the pushed entries to the kernel.
    fn submit(&mut self) {
        self.words
            .producer()
            .store(self.local_producer, Ordering::Release);
    }

    fn needs_wakeup(&self) -> bool {
        self.words.needs_wakeup()
    }
}

/// A ring the kernel produces into (receive, completion).
#[derive(Debug)]
struct ConsumerRing<T> {
    words: RingWords<T>,
    local_consumer: u32,
}

impl<T: Copy> ConsumerRing<T> {
    fn map(
        socket: &OwnedFd,
        offsets: &RingOffsets,
        size: u32,
        page_offset: libc::off_t,
    ) -> io::Result<Self> {
        let words = RingWords::map(socket, offsets, size, page_offset)?;
        let local_consumer = words.consumer().load(Ordering::Relaxed);
        Ok(ConsumerRing {
            words,
            local_consumer,
        })
    }

    /// Entries the kernel has published and we have not released.
    fn available(&self) -> usize {
        self.words
            .producer()
            .load(Ordering::Acquire)
            .wrapping_sub(self.local_consumer) as usize
    }

    /// The entry `index` places after the first unreleased one (`index < available()`).
    fn get(&self, index: usize) -> T {
        let slot = (self.local_consumer.wrapping_add(index as u32) & self.words.mask) as usize;
        // SAFETY: `slot < size`; the entry was published (Acquire in `available`) and the kernel
        // does not overwrite it until we release it.
        unsafe { self.words.descs.add(slot).read() }
    }

    /// Gives `count` entries back to the kernel.
    fn release(&mut self, count: usize) {
        self.local_consumer = self.local_consumer.wrapping_add(count as u32);
        self.words
            .consumer()
            .store(self.local_consumer, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_struct_layouts() {
        assert_eq!(size_of::<XdpDesc>(), 16);
        assert_eq!(size_of::<UmemReg>(), 32);
        assert_eq!(size_of::<SockaddrXdp>(), 16);
        assert_eq!(size_of::<MmapOffsets>(), 128);
        assert_eq!(size_of::<XdpStatistics>(), 48);
    }
}
