//! AF_PACKET frame I/O: a TPACKET_V3 receive ring and a TPACKET_V2 transmit ring, or plain
//! `recvmsg`/`send` on a packet socket where the rings cannot be set up.
//!
//! The receive socket sets `PACKET_IGNORE_OUTGOING` (otherwise it would receive every frame the
//! port transmits, ours included) and puts the interface in promiscuous mode for as long as it
//! is open. The transmit socket is bound with protocol 0 so that it receives nothing, and sets
//! `PACKET_QDISC_BYPASS` (frames go straight to the driver) and `PACKET_LOSS` (a malformed frame
//! is marked and skipped instead of stalling the ring).
//!
//! The kernel strips a frame's outer VLAN tag before packet sockets see it and reports it
//! beside the frame; both modes put the tag back, so the frame is forwarded as it arrived.
//!
//! Not supported: receive frames larger than a ring frame (counted in `rx_unusable` and
//! dropped), more than one VLAN tag being restored (the kernel strips only the outer one, so
//! inner tags are untouched anyway), hardware timestamps, and TPACKET_V3 transmit (the V3
//! transmit path brings nothing for single frames). V3 hands a block to user space when it is
//! full or its timeout passes, so at low rates a frame waits up to `block_timeout_ms`.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU32, Ordering};

use super::sys::{self, Mapping};
use super::{port_error, FrameIo, Frames, PortStats, RawFrame, RxChecksum, SendReport};

const TPACKET_V2: libc::c_int = 1;
const TPACKET_V3: libc::c_int = 2;
const PACKET_VERSION: libc::c_int = 10;
const PACKET_RX_RING: libc::c_int = 5;
const PACKET_TX_RING: libc::c_int = 13;
const PACKET_LOSS: libc::c_int = 14;
const PACKET_QDISC_BYPASS: libc::c_int = 20;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const PACKET_FANOUT: libc::c_int = 18;
const PACKET_FANOUT_HASH: u32 = 0;
const PACKET_AUXDATA: libc::c_int = 8;
const PACKET_STATISTICS: libc::c_int = 6;
const PACKET_ADD_MEMBERSHIP: libc::c_int = 1;
const PACKET_MR_PROMISC: libc::c_ushort = 1;

const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_USER: u32 = 1;
const TP_STATUS_AVAILABLE: u32 = 0;
const TP_STATUS_SEND_REQUEST: u32 = 1;
const TP_STATUS_WRONG_FORMAT: u32 = 1 << 2;
const TP_STATUS_CSUMNOTREADY: u32 = 1 << 3;
const TP_STATUS_CSUM_VALID: u32 = 1 << 7;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;

const ETH_P_ALL: u16 = 0x0003;
const ETH_P_8021Q: u16 = 0x8100;
/// Bytes of the two MAC addresses, which a restored VLAN tag follows.
const MAC_PAIR_LEN: usize = 12;
const VLAN_TAG_LEN: usize = 4;

// struct tpacket_block_desc / tpacket_hdr_v1 field offsets.
const BLOCK_STATUS: usize = 8;
const BLOCK_NUM_PKTS: usize = 12;
const BLOCK_FIRST_PKT: usize = 16;
// struct tpacket3_hdr field offsets.
const V3_NEXT_OFFSET: usize = 0;
const V3_SNAPLEN: usize = 12;
const V3_LEN: usize = 16;
const V3_STATUS: usize = 20;
const V3_MAC: usize = 24;
const V3_VLAN_TCI: usize = 32;
const V3_VLAN_TPID: usize = 36;
const V3_HEADER_LEN: usize = 48;
// struct tpacket2_hdr: status, len, snaplen at 0, 4, 8; frame data after the aligned header.
const V2_STATUS: usize = 0;
const V2_LEN: usize = 4;
const V2_SNAPLEN: usize = 8;
const V2_DATA: usize = 32;

/// How an AF_PACKET port moves frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketMode {
    /// Memory-mapped rings, falling back to plain socket calls if the kernel refuses them.
    RingsOrSocket,
    /// Plain `recvmsg`/`send`, one system call per frame.
    Socket,
}

/// Sizes and options of an AF_PACKET port.
#[derive(Debug, Clone, Copy)]
pub struct PacketConfig {
    pub mode: PacketMode,
    /// Receive ring block size in bytes (a multiple of the page size).
    pub block_size: u32,
    pub block_count: u32,
    /// How long the kernel keeps a partly filled block before handing it over.
    pub block_timeout_ms: u32,
    /// Transmit ring slot size (frame plus 32-byte header) and slot count.
    pub tx_frame_size: u32,
    pub tx_frame_count: u32,
    /// Join this fanout group (hash steering), so that several ports on one interface share
    /// its traffic by flow.
    pub fanout_group: Option<u16>,
}

impl Default for PacketConfig {
    fn default() -> Self {
        PacketConfig {
            mode: PacketMode::RingsOrSocket,
            block_size: 256 * 1024,
            block_count: 32,
            block_timeout_ms: 1,
            tx_frame_size: 2048,
            tx_frame_count: 2048,
            fanout_group: None,
        }
    }
}

/// One AF_PACKET port: a receive side and a transmit side on one interface.
#[derive(Debug)]
pub struct PacketPort {
    name: String,
    inner: Inner,
    rx_unusable: u64,
    /// The kernel's receive drops so far: reading them resets the kernel's count.
    rx_dropped: std::cell::Cell<u64>,
}

#[derive(Debug)]
enum Inner {
    Rings { rx: RxRing, tx: TxRing },
    Socket(SocketIo),
}

impl PacketPort {
    /// Opens `interface` as `config` says.
    pub fn open(interface: &str, config: &PacketConfig) -> io::Result<Self> {
        let ifindex = super::interface_index(interface)?;
        let inner = match config.mode {
            PacketMode::Socket => Inner::Socket(SocketIo::open(interface, ifindex, config)?),
            PacketMode::RingsOrSocket => match open_rings(interface, ifindex, config) {
                Ok((rx, tx)) => Inner::Rings { rx, tx },
                Err(error) if ring_unsupported(&error) => {
                    log::warn(&format!(
                        "{interface}: packet rings unavailable ({error}); using plain packet socket"
                    ));
                    Inner::Socket(SocketIo::open(interface, ifindex, config)?)
                }
                Err(error) => return Err(error),
            },
        };
        Ok(PacketPort {
            name: interface.to_string(),
            inner,
            rx_unusable: 0,
            rx_dropped: std::cell::Cell::new(0),
        })
    }

    /// Whether the port runs on the memory-mapped rings (as opposed to the plain socket).
    pub fn uses_rings(&self) -> bool {
        matches!(self.inner, Inner::Rings { .. })
    }
}

/// Messages from the backends; a later issue routes them to the control thread's log.
mod log {
    pub(super) fn warn(message: &str) {
        eprintln!("cutls: warning: {message}");
    }
}

fn ring_unsupported(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOPROTOOPT) | Some(libc::EINVAL) | Some(libc::ENOMEM)
    )
}

fn open_rings(
    interface: &str,
    ifindex: u32,
    config: &PacketConfig,
) -> io::Result<(RxRing, TxRing)> {
    let rx = RxRing::open(interface, ifindex, config)?;
    let tx = TxRing::open(interface, ifindex, config)?;
    Ok((rx, tx))
}

impl FrameIo for PacketPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn recv_batch(&mut self, max: usize) -> io::Result<Frames<'_>> {
        match &mut self.inner {
            Inner::Rings { rx, .. } => rx.recv_batch(max, &mut self.rx_unusable),
            Inner::Socket(socket) => socket
                .recv_batch(max, &mut self.rx_unusable)
                .map_err(|e| port_error(&self.name, "receive", e)),
        }
    }

    fn send_batch(&mut self, frames: &mut dyn Iterator<Item = &[u8]>) -> io::Result<SendReport> {
        let result = match &mut self.inner {
            Inner::Rings { tx, .. } => tx.send_batch(frames),
            Inner::Socket(socket) => socket.send_batch(frames),
        };
        result.map_err(|e| port_error(&self.name, "transmit", e))
    }

    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.inner {
            Inner::Rings { rx, .. } => Some(rx.socket.as_fd()),
            Inner::Socket(socket) => Some(socket.socket.as_fd()),
        }
    }

    fn stats(&self) -> io::Result<PortStats> {
        let socket = match &self.inner {
            Inner::Rings { rx, .. } => &rx.socket,
            Inner::Socket(socket) => &socket.socket,
        };
        // struct tpacket_stats_v3 is { tp_packets, tp_drops, tp_freeze_q_cnt }; reading it resets
        // the kernel's counters, so the total is kept here.
        let (counters, _) =
            sys::get_option::<[u32; 3]>(socket, libc::SOL_PACKET, PACKET_STATISTICS)
                .map_err(|e| port_error(&self.name, "read packet statistics", e))?;
        let tx_invalid = match &self.inner {
            Inner::Rings { tx, .. } => tx.wrong_format,
            Inner::Socket(_) => 0,
        };
        self.rx_dropped.set(self.rx_dropped.get() + u64::from(counters[1]));
        Ok(PortStats {
            rx_dropped: self.rx_dropped.get(),
            tx_invalid,
            rx_unusable: self.rx_unusable,
        })
    }
}

/// Joins the interface's promiscuous mode for as long as the socket lives: frames addressed to
/// the hosts behind the box must reach it. The kernel counts members, so closing the socket
/// (or crashing) undoes it.
fn join_promiscuous(socket: &OwnedFd, ifindex: u32) -> io::Result<()> {
    let request = libc::packet_mreq {
        mr_ifindex: ifindex as libc::c_int,
        mr_type: PACKET_MR_PROMISC,
        mr_alen: 0,
        mr_address: [0; 8],
    };
    sys::set_option(socket, libc::SOL_PACKET, PACKET_ADD_MEMBERSHIP, &request)
}

/// Holds an interface in promiscuous mode while it lives (for backends that have no packet
/// socket of their own, such as AF_XDP).
#[derive(Debug)]
pub struct PromiscuousGuard {
    _socket: OwnedFd,
}

impl PromiscuousGuard {
    /// Puts `interface` (index `ifindex`) in promiscuous mode until the guard is dropped.
    pub fn new(interface: &str, ifindex: u32) -> io::Result<Self> {
        // Protocol 0: this socket receives nothing; it exists only to hold the membership.
        let socket = sys::socket(libc::AF_PACKET, libc::SOCK_RAW, 0)
            .map_err(|e| port_error(interface, "open packet socket for promiscuous mode", e))?;
        join_promiscuous(&socket, ifindex)
            .map_err(|e| port_error(interface, "enter promiscuous mode", e))?;
        Ok(PromiscuousGuard { _socket: socket })
    }
}

fn link_address(ifindex: u32, protocol: u16) -> libc::sockaddr_ll {
    libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as libc::c_ushort,
        sll_protocol: protocol.to_be(),
        sll_ifindex: ifindex as libc::c_int,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 0,
        sll_addr: [0; 8],
    }
}

/// Opens the receiving packet socket: options first, binding last, so that no frame is queued
/// before the ring exists.
fn open_receive_socket(interface: &str, version: Option<libc::c_int>) -> io::Result<OwnedFd> {
    let socket = sys::socket(libc::AF_PACKET, libc::SOCK_RAW, 0)
        .map_err(|e| port_error(interface, "open packet socket", e))?;
    if let Some(version) = version {
        sys::set_option(&socket, libc::SOL_PACKET, PACKET_VERSION, &version)
            .map_err(|e| port_error(interface, "select TPACKET version", e))?;
    }
    let one: libc::c_int = 1;
    sys::set_option(&socket, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, &one)
        .map_err(|e| port_error(interface, "set PACKET_IGNORE_OUTGOING", e))?;
    Ok(socket)
}

fn bind_receive_socket(
    interface: &str,
    socket: &OwnedFd,
    ifindex: u32,
    config: &PacketConfig,
) -> io::Result<()> {
    sys::bind(socket, &link_address(ifindex, ETH_P_ALL))
        .map_err(|e| port_error(interface, "bind packet socket", e))?;
    join_promiscuous(socket, ifindex)
        .map_err(|e| port_error(interface, "enter promiscuous mode", e))?;
    if let Some(group) = config.fanout_group {
        let argument: u32 = u32::from(group) | (PACKET_FANOUT_HASH << 16);
        sys::set_option(socket, libc::SOL_PACKET, PACKET_FANOUT, &argument)
            .map_err(|e| port_error(interface, &format!("join fanout group {group}"), e))?;
    }
    Ok(())
}

/// Rewrites an untagged frame at `frame_start..frame_start + len` into its tagged form in the
/// `VLAN_TAG_LEN` bytes before it: the MAC addresses move back, the tag goes after them.
/// Returns the new start. The caller guarantees the room before `frame_start`.
fn restore_vlan_tag(
    buffer: &mut [u8],
    frame_start: usize,
    len: usize,
    tpid: u16,
    tci: u16,
) -> Option<usize> {
    let new_start = frame_start.checked_sub(VLAN_TAG_LEN)?;
    if len < MAC_PAIR_LEN || frame_start + len > buffer.len() {
        return None;
    }
    buffer.copy_within(frame_start..frame_start + MAC_PAIR_LEN, new_start);
    let tag_at = new_start + MAC_PAIR_LEN;
    buffer[tag_at..tag_at + 2].copy_from_slice(&tpid.to_be_bytes());
    buffer[tag_at + 2..tag_at + 4].copy_from_slice(&tci.to_be_bytes());
    Some(new_start)
}

/// The TPACKET_V3 receive ring.
#[derive(Debug)]
struct RxRing {
    socket: OwnedFd,
    ring: Mapping,
    block_size: usize,
    block_count: usize,
    /// The block being handed out, if one is open.
    current_block: usize,
    block_open: bool,
    /// Offset of the next frame header inside the current block, and frames left in it.
    next_frame: usize,
    frames_left: u32,
    raw: Vec<RawFrame>,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct TpacketReq3 {
    block_size: u32,
    block_nr: u32,
    frame_size: u32,
    frame_nr: u32,
    retire_blk_tov: u32,
    sizeof_priv: u32,
    feature_req_word: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct TpacketReq {
    block_size: u32,
    block_nr: u32,
    frame_size: u32,
    frame_nr: u32,
}

impl RxRing {
    fn open(interface: &str, ifindex: u32, config: &PacketConfig) -> io::Result<Self> {
        let socket = open_receive_socket(interface, Some(TPACKET_V3))?;
        // In V3 the frame size only sizes the kernel's accounting; frames are packed in blocks.
        let frame_size = 2048;
        let request = TpacketReq3 {
            block_size: config.block_size,
            block_nr: config.block_count,
            frame_size,
            frame_nr: config.block_size / frame_size * config.block_count,
            retire_blk_tov: config.block_timeout_ms,
            sizeof_priv: 0,
            feature_req_word: 0,
        };
        sys::set_option(&socket, libc::SOL_PACKET, PACKET_RX_RING, &request)
            .map_err(|e| port_error(interface, "set up TPACKET_V3 receive ring", e))?;
        let len = config.block_size as usize * config.block_count as usize;
        let ring = Mapping::socket_ring(&socket, len, 0)
            .map_err(|e| port_error(interface, "map receive ring", e))?;
        bind_receive_socket(interface, &socket, ifindex, config)?;
        Ok(RxRing {
            socket,
            ring,
            block_size: config.block_size as usize,
            block_count: config.block_count as usize,
            current_block: 0,
            block_open: false,
            next_frame: 0,
            frames_left: 0,
            raw: Vec::new(),
        })
    }

    fn block_word(&self, block: usize, field: usize) -> io::Result<&AtomicU32> {
        let pointer = self.ring.u32_at(block * self.block_size + field)?;
        // SAFETY: `u32_at` checked the word is aligned and inside the mapping, which lives as
        // long as `self`; the kernel writes it concurrently, hence the atomic view.
        Ok(unsafe { AtomicU32::from_ptr(pointer) })
    }

    fn read_u32(&self, offset: usize) -> io::Result<u32> {
        let pointer = self.ring.u32_at(offset)?;
        // SAFETY: aligned and in bounds (checked by `u32_at`); the block belongs to user space
        // while its status says TP_STATUS_USER, so the kernel does not write it now.
        Ok(unsafe { pointer.read() })
    }

    fn read_u16(&self, offset: usize) -> io::Result<u16> {
        let word = self.read_u32(offset & !3)?;
        Ok(if offset & 2 == 0 {
            word as u16
        } else {
            (word >> 16) as u16
        })
    }

    fn recv_batch(&mut self, max: usize, unusable: &mut u64) -> io::Result<Frames<'_>> {
        self.raw.clear();
        if self.block_open && self.frames_left == 0 {
            // Every frame of the block was handed out and the batch that borrowed them is gone.
            self.block_word(self.current_block, BLOCK_STATUS)?
                .store(TP_STATUS_KERNEL, Ordering::Release);
            self.block_open = false;
            self.current_block = (self.current_block + 1) % self.block_count;
        }
        if !self.block_open {
            let status = self
                .block_word(self.current_block, BLOCK_STATUS)?
                .load(Ordering::Acquire);
            if status & TP_STATUS_USER == 0 {
                // SAFETY: an empty batch refers to no memory.
                return Ok(Frames::empty());
            }
            let block_start = self.current_block * self.block_size;
            self.frames_left = self.read_u32(block_start + BLOCK_NUM_PKTS)?;
            self.next_frame = self.read_u32(block_start + BLOCK_FIRST_PKT)? as usize;
            self.block_open = true;
        }
        let block_start = self.current_block * self.block_size;
        let block_end = block_start + self.block_size;
        while self.frames_left > 0 && self.raw.len() < max {
            let header = block_start + self.next_frame;
            if header + V3_HEADER_LEN > block_end {
                // A corrupt offset: give up on the rest of the block rather than read past it.
                *unusable += u64::from(self.frames_left);
                self.frames_left = 0;
                break;
            }
            let next_offset = self.read_u32(header + V3_NEXT_OFFSET)? as usize;
            let snaplen = self.read_u32(header + V3_SNAPLEN)? as usize;
            let wire_len = self.read_u32(header + V3_LEN)? as usize;
            let status = self.read_u32(header + V3_STATUS)?;
            let mac = usize::from(self.read_u16(header + V3_MAC)?);
            self.frames_left -= 1;
            self.next_frame += next_offset;
            let mut start = header + mac;
            let mut len = snaplen;
            if snaplen < wire_len || start + len > block_end || mac < V3_HEADER_LEN + VLAN_TAG_LEN {
                *unusable += 1;
                continue;
            }
            if status & TP_STATUS_VLAN_VALID != 0 {
                let tci = self.read_u32(header + V3_VLAN_TCI)? as u16;
                let tpid = if status & TP_STATUS_VLAN_TPID_VALID != 0 {
                    self.read_u16(header + V3_VLAN_TPID)?
                } else {
                    ETH_P_8021Q
                };
                // SAFETY: the block belongs to user space (status TP_STATUS_USER) until we hand it
                // back, no `Frames` borrowing it is alive (we hold `&mut self`), and the range is
                // inside the block (checked above).
                let block = unsafe {
                    std::slice::from_raw_parts_mut(
                        self.ring.base().add(block_start),
                        self.block_size,
                    )
                };
                match restore_vlan_tag(block, start - block_start, len, tpid, tci) {
                    Some(new_start) => {
                        start = block_start + new_start;
                        len += VLAN_TAG_LEN;
                    }
                    None => {
                        *unusable += 1;
                        continue;
                    }
                }
            }
            // SAFETY: `start + len <= block_end <= ring.len()`, checked above.
            let data = unsafe { self.ring.base().add(start) };
            self.raw.push(RawFrame::with_checksum(data, len, rx_checksum(status)));
        }
        if self.frames_left == 0 && self.raw.is_empty() {
            // Nothing usable in this block: hand it back now rather than on the next call.
            self.block_word(self.current_block, BLOCK_STATUS)?
                .store(TP_STATUS_KERNEL, Ordering::Release);
            self.block_open = false;
            self.current_block = (self.current_block + 1) % self.block_count;
        }
        // SAFETY: every frame lies inside the current block, which stays with user space until a
        // later `recv_batch` (impossible while the batch borrows `self`) hands it back; frames in
        // a block do not overlap.
        Ok(unsafe { Frames::from_raw(&mut self.raw) })
    }
}

/// The TPACKET_V2 transmit ring.
#[derive(Debug)]
struct TxRing {
    socket: OwnedFd,
    ring: Mapping,
    frame_size: usize,
    frame_count: usize,
    next_slot: usize,
    wrong_format: u64,
}

impl TxRing {
    fn open(interface: &str, ifindex: u32, config: &PacketConfig) -> io::Result<Self> {
        // Protocol 0 in socket() and bind(): a transmit-only socket that never queues a frame.
        let socket = sys::socket(libc::AF_PACKET, libc::SOCK_RAW, 0)
            .map_err(|e| port_error(interface, "open packet socket", e))?;
        sys::set_option(&socket, libc::SOL_PACKET, PACKET_VERSION, &TPACKET_V2)
            .map_err(|e| port_error(interface, "select TPACKET_V2", e))?;
        let one: libc::c_int = 1;
        sys::set_option(&socket, libc::SOL_PACKET, PACKET_QDISC_BYPASS, &one)
            .map_err(|e| port_error(interface, "set PACKET_QDISC_BYPASS", e))?;
        sys::set_option(&socket, libc::SOL_PACKET, PACKET_LOSS, &one)
            .map_err(|e| port_error(interface, "set PACKET_LOSS", e))?;
        let frames_per_block = 16u32;
        let request = TpacketReq {
            block_size: config.tx_frame_size * frames_per_block,
            block_nr: config.tx_frame_count.div_ceil(frames_per_block),
            frame_size: config.tx_frame_size,
            frame_nr: config.tx_frame_count.div_ceil(frames_per_block) * frames_per_block,
        };
        sys::set_option(&socket, libc::SOL_PACKET, PACKET_TX_RING, &request)
            .map_err(|e| port_error(interface, "set up TPACKET_V2 transmit ring", e))?;
        let len = request.block_size as usize * request.block_nr as usize;
        let ring = Mapping::socket_ring(&socket, len, 0)
            .map_err(|e| port_error(interface, "map transmit ring", e))?;
        sys::bind(&socket, &link_address(ifindex, 0))
            .map_err(|e| port_error(interface, "bind transmit socket", e))?;
        Ok(TxRing {
            socket,
            ring,
            frame_size: config.tx_frame_size as usize,
            frame_count: request.frame_nr as usize,
            next_slot: 0,
            wrong_format: 0,
        })
    }

    fn slot_status(&self, slot: usize) -> io::Result<&AtomicU32> {
        let pointer = self.ring.u32_at(slot * self.frame_size + V2_STATUS)?;
        // SAFETY: aligned, inside the mapping, lives as long as `self`; shared with the kernel.
        Ok(unsafe { AtomicU32::from_ptr(pointer) })
    }

    fn send_batch(&mut self, frames: &mut dyn Iterator<Item = &[u8]>) -> io::Result<SendReport> {
        let mut report = SendReport::default();
        let capacity = self.frame_size - V2_DATA;
        let mut rejected_by_kernel = 0;
        for frame in frames {
            if frame.len() > capacity {
                report.oversize += 1;
                continue;
            }
            let status = self.slot_status(self.next_slot)?;
            let current = status.load(Ordering::Acquire);
            if current & TP_STATUS_WRONG_FORMAT != 0 {
                // The kernel refused the frame last time round (PACKET_LOSS): count, reuse.
                rejected_by_kernel += 1;
            } else if current != TP_STATUS_AVAILABLE {
                report.ring_full += 1;
                continue;
            }
            let slot_start = self.next_slot * self.frame_size;
            // SAFETY: the slot is AVAILABLE (or rejected), so the kernel does not touch it until we
            // set SEND_REQUEST below; `slot_start + frame_size <= ring.len()` by construction.
            unsafe {
                let slot = self.ring.base().add(slot_start);
                std::ptr::copy_nonoverlapping(frame.as_ptr(), slot.add(V2_DATA), frame.len());
                (slot.add(V2_LEN) as *mut u32).write(frame.len() as u32);
                (slot.add(V2_SNAPLEN) as *mut u32).write(frame.len() as u32);
            }
            fence(Ordering::Release);
            status.store(TP_STATUS_SEND_REQUEST, Ordering::Release);
            self.next_slot = (self.next_slot + 1) % self.frame_count;
            report.sent += 1;
            report.sent_bytes += frame.len() as u64;
        }
        self.wrong_format += rejected_by_kernel;
        if report.sent > 0 {
            // One system call sends every slot marked SEND_REQUEST.
            // SAFETY: a null buffer of length 0 is what the TX ring protocol expects.
            let result = unsafe {
                libc::send(
                    self.socket.as_raw_fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                )
            };
            if result < 0 {
                let error = io::Error::last_os_error();
                if !sys::is_transient(&error) {
                    return Err(error);
                }
            }
        }
        Ok(report)
    }
}

/// Plain packet socket I/O: one system call per frame, a copy into our buffers.
#[derive(Debug)]
struct SocketIo {
    socket: OwnedFd,
    buffers: Vec<Vec<u8>>,
    raw: Vec<RawFrame>,
}

/// Receive buffer size: a full-size frame plus its stripped VLAN tag, with the tag's room in
/// front.
const SOCKET_BUFFER: usize = 2048;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct TpacketAuxdata {
    tp_status: u32,
    tp_len: u32,
    tp_snaplen: u32,
    tp_mac: u16,
    tp_net: u16,
    tp_vlan_tci: u16,
    tp_vlan_tpid: u16,
}

impl SocketIo {
    fn open(interface: &str, ifindex: u32, config: &PacketConfig) -> io::Result<Self> {
        let socket = open_receive_socket(interface, None)?;
        let one: libc::c_int = 1;
        sys::set_option(&socket, libc::SOL_PACKET, PACKET_AUXDATA, &one)
            .map_err(|e| port_error(interface, "set PACKET_AUXDATA", e))?;
        sys::set_option(&socket, libc::SOL_PACKET, PACKET_QDISC_BYPASS, &one)
            .map_err(|e| port_error(interface, "set PACKET_QDISC_BYPASS", e))?;
        bind_receive_socket(interface, &socket, ifindex, config)?;
        Ok(SocketIo {
            socket,
            buffers: Vec::new(),
            raw: Vec::new(),
        })
    }

    fn recv_batch(&mut self, max: usize, unusable: &mut u64) -> io::Result<Frames<'_>> {
        self.raw.clear();
        let mut filled = 0;
        while filled < max {
            if self.buffers.len() <= filled {
                self.buffers.push(vec![0u8; SOCKET_BUFFER]);
            }
            let buffer = &mut self.buffers[filled];
            let Some((start, len, checksum)) = receive_one(&self.socket, buffer, unusable)? else {
                break;
            };
            filled += 1;
            self.raw
                .push(RawFrame::with_checksum(buffer[start..].as_mut_ptr(), len, checksum));
        }
        // SAFETY: each frame lies in its own buffer of `self.buffers`, which is not touched until
        // the next `recv_batch`, and that cannot run while the batch borrows `self`.
        Ok(unsafe { Frames::from_raw(&mut self.raw) })
    }

    fn send_batch(&mut self, frames: &mut dyn Iterator<Item = &[u8]>) -> io::Result<SendReport> {
        let mut report = SendReport::default();
        for frame in frames {
            // SAFETY: `frame` is readable for its length during the call.
            let result = unsafe {
                libc::send(
                    self.socket.as_raw_fd(),
                    frame.as_ptr() as *const libc::c_void,
                    frame.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if result >= 0 {
                report.sent += 1;
                report.sent_bytes += frame.len() as u64;
                continue;
            }
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EMSGSIZE) => report.oversize += 1,
                Some(libc::EINVAL) => report.rejected += 1,
                _ if sys::is_transient(&error) => report.ring_full += 1,
                _ => return Err(error),
            }
        }
        Ok(report)
    }
}

/// Receives one frame into `buffer` after `VLAN_TAG_LEN` bytes of room, restores its VLAN tag
/// if the kernel stripped one, and returns where the frame starts and its length. `None` when
/// nothing is waiting.
fn receive_one(
    socket: &OwnedFd,
    buffer: &mut [u8],
    unusable: &mut u64,
) -> io::Result<Option<(usize, usize, RxChecksum)>> {
    loop {
        let room = &mut buffer[VLAN_TAG_LEN..];
        let mut iov = libc::iovec {
            iov_base: room.as_mut_ptr() as *mut libc::c_void,
            iov_len: room.len(),
        };
        // u64 elements keep the control buffer aligned for cmsghdr.
        let mut control = [0u64; 8];
        // SAFETY: an all-zero msghdr is a valid empty header; the fields set below point to live
        // buffers.
        let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        message.msg_controllen = size_of::<[u64; 8]>();
        // SAFETY: `message` points to `iov` and `control`, both writable and alive during the call.
        let received = unsafe {
            libc::recvmsg(
                socket.as_raw_fd(),
                &mut message,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        if received < 0 {
            let error = io::Error::last_os_error();
            if sys::is_transient(&error) {
                return Ok(None);
            }
            return Err(error);
        }
        let len = received as usize;
        if len > room.len() || message.msg_flags & libc::MSG_TRUNC != 0 {
            *unusable += 1;
            continue;
        }
        let auxdata = auxdata_of(&message);
        match auxdata {
            Some(aux) if aux.tp_status & TP_STATUS_VLAN_VALID != 0 => {
                let tpid = if aux.tp_status & TP_STATUS_VLAN_TPID_VALID != 0 {
                    aux.tp_vlan_tpid
                } else {
                    ETH_P_8021Q
                };
                match restore_vlan_tag(buffer, VLAN_TAG_LEN, len, tpid, aux.tp_vlan_tci) {
                    Some(start) => return Ok(Some((start, len + VLAN_TAG_LEN, rx_checksum(aux.tp_status)))),
                    None => {
                        *unusable += 1;
                        continue;
                    }
                }
            }
            Some(aux) => return Ok(Some((VLAN_TAG_LEN, len, rx_checksum(aux.tp_status)))),
            None => return Ok(Some((VLAN_TAG_LEN, len, RxChecksum::Unknown))),
        }
    }
}

/// The checksum state a frame's `tp_status` reports.
fn rx_checksum(status: u32) -> RxChecksum {
    if status & TP_STATUS_CSUMNOTREADY != 0 {
        RxChecksum::NotComputed
    } else if status & TP_STATUS_CSUM_VALID != 0 {
        RxChecksum::Verified
    } else {
        RxChecksum::Unknown
    }
}

fn auxdata_of(message: &libc::msghdr) -> Option<TpacketAuxdata> {
    // SAFETY: `message` was filled by recvmsg; the CMSG macros walk its control buffer within
    // `msg_controllen`.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(message) };
    while !cmsg.is_null() {
        // SAFETY: non-null cmsg pointers from CMSG_FIRSTHDR/NXTHDR lie inside the control buffer.
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::SOL_PACKET && header.cmsg_type == PACKET_AUXDATA {
            // SAFETY: the kernel wrote a tpacket_auxdata as this message's data; read_unaligned
            // because cmsg data has only cmsghdr alignment.
            return Some(unsafe {
                (libc::CMSG_DATA(cmsg) as *const TpacketAuxdata).read_unaligned()
            });
        }
        // SAFETY: as above.
        cmsg = unsafe { libc::CMSG_NXTHDR(message, cmsg) };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vlan_tag_is_restored_after_the_mac_addresses() {
        // Four bytes of room, then an untagged frame: dst, src, ethertype 0x0800, payload.
        let mut buffer = vec![0u8; 4];
        buffer.extend_from_slice(&[1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0x08, 0x00, 0xaa]);
        let start = restore_vlan_tag(&mut buffer, 4, 15, ETH_P_8021Q, 0x0064).unwrap();
        assert_eq!(start, 0);
        assert_eq!(
            &buffer[..19],
            &[1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0x81, 0x00, 0x00, 0x64, 0x08, 0x00, 0xaa]
        );
    }

    #[test]
    fn vlan_restore_needs_room_and_a_mac_header() {
        let mut buffer = vec![0u8; 20];
        assert_eq!(
            restore_vlan_tag(&mut buffer, 2, 14, ETH_P_8021Q, 1),
            None,
            "no room in front"
        );
        assert_eq!(
            restore_vlan_tag(&mut buffer, 4, 10, ETH_P_8021Q, 1),
            None,
            "shorter than two MACs"
        );
        assert_eq!(
            restore_vlan_tag(&mut buffer, 4, 17, ETH_P_8021Q, 1),
            None,
            "past the buffer"
        );
    }

    #[test]
    fn kernel_struct_layouts() {
        assert_eq!(size_of::<TpacketReq3>(), 28);
        assert_eq!(size_of::<TpacketReq>(), 16);
        assert_eq!(size_of::<TpacketAuxdata>(), 20);
    }

    #[test]
    fn missing_interface_is_named() {
        let error = PacketPort::open("no-such-if0", &PacketConfig::default()).unwrap_err();
        assert!(error.to_string().contains("no-such-if0"), "{error}");
    }
}
