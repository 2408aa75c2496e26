//! A minimal XDP loader made of `bpf()` system calls: one XSKMAP, one six-instruction program
//! that redirects every frame to the AF_XDP socket of its receive queue, and a BPF link that
//! attaches the program to an interface.
//!
//! The program, written as raw instructions:
//!
//! ```text
//! r2 = *(u32 *)(r1 + 16)            ; ctx->rx_queue_index
//! r1 = map_fd xsks                  ; two-slot 64-bit immediate
//! r3 = XDP_PASS                     ; what to do when the queue has no socket
//! call bpf_redirect_map
//! exit
//! ```
//!
//! Attaching with `BPF_LINK_CREATE` ties the attachment to a file descriptor: when the process
//! exits, crashes included, the kernel closes it and the program is detached. A netlink attach
//! would stay behind.
//!
//! Not supported: any other program, pinning, BTF, and sharing the interface with another XDP
//! program (the link fails with `EBUSY` if one is attached).

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::port_error;

// bpf(2) commands, map and program types, from <linux/bpf.h>.
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const BPF_FUNC_REDIRECT_MAP: i32 = 51;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const XDP_PASS: i32 = 2;
// XDP attach flags, from <linux/if_link.h>.
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// Offset of `rx_queue_index` in `struct xdp_md`.
const XDP_MD_RX_QUEUE_INDEX: i16 = 16;

/// How the program is attached to the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver, before an skb exists (`XDP_FLAGS_DRV_MODE`).
    Native,
    /// In the generic receive path, after the skb is built (`XDP_FLAGS_SKB_MODE`); works on any
    /// interface, slower.
    Generic,
}

impl AttachMode {
    fn flags(self) -> u32 {
        match self {
            AttachMode::Native => XDP_FLAGS_DRV_MODE,
            AttachMode::Generic => XDP_FLAGS_SKB_MODE,
        }
    }
}

/// Which attach modes to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachPreference {
    /// Native, falling back to generic if the driver refuses.
    NativeOrGeneric,
    /// Generic only.
    Generic,
}

/// The redirect program attached to one interface, with its XSKMAP. Dropping it detaches the
/// program.
#[derive(Debug)]
pub struct XdpRedirect {
    interface: String,
    ifindex: u32,
    map: OwnedFd,
    mode: AttachMode,
    // Field order matters only for readability: closing any of these fds detaches nothing
    // else; the link fd is what keeps the program attached.
    _program: OwnedFd,
    _link: OwnedFd,
}

impl XdpRedirect {
    /// Creates the map (one slot per queue, `queue_slots` of them), loads the program and
    /// attaches it to `interface` as `preference` allows.
    pub fn attach(
        interface: &str,
        ifindex: u32,
        queue_slots: u32,
        preference: AttachPreference,
    ) -> io::Result<Self> {
        let map = create_xskmap(queue_slots.max(1))
            .map_err(|e| port_error(interface, "create XSKMAP", e))?;
        let program = load_redirect_program(&map)
            .map_err(|e| port_error(interface, "load XDP program", e))?;
        let (link, mode) = match preference {
            AttachPreference::Generic => (
                link_create(&program, ifindex, AttachMode::Generic),
                AttachMode::Generic,
            ),
            AttachPreference::NativeOrGeneric => {
                match link_create(&program, ifindex, AttachMode::Native) {
                    Err(error) if native_unsupported(&error) => (
                        link_create(&program, ifindex, AttachMode::Generic),
                        AttachMode::Generic,
                    ),
                    other => (other, AttachMode::Native),
                }
            }
        };
        let link =
            link.map_err(|e| port_error(interface, &format!("attach XDP program ({mode:?})"), e))?;
        Ok(XdpRedirect {
            interface: interface.to_string(),
            ifindex,
            map,
            mode,
            _program: program,
            _link: link,
        })
    }

    /// The mode the program ended up attached in.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// The interface the program is attached to.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The interface's index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Steers frames of receive queue `queue` to the AF_XDP socket `socket` (which must be bound
    /// to that queue of this interface).
    pub fn register_socket(&self, queue: u32, socket: RawFd) -> io::Result<()> {
        let key = queue;
        let value = socket as u32;
        let attr = MapUpdateAttr {
            map_fd: self.map.as_raw_fd() as u32,
            _pad: 0,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            flags: 0,
        };
        // SAFETY: `attr` is a valid BPF_MAP_UPDATE_ELEM attribute whose key and value pointers
        // point to live u32s for the duration of the call.
        unsafe { bpf(BPF_MAP_UPDATE_ELEM, &attr) }
            .map(drop)
            .map_err(|e| {
                port_error(
                    &self.interface,
                    &format!("register AF_XDP socket for queue {queue}"),
                    e,
                )
            })
    }
}

/// Whether a native attach failed because the driver cannot do native XDP (as opposed to, say,
/// another program being attached already).
fn native_unsupported(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
    )
}

#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

#[repr(C)]
struct MapUpdateAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// One eBPF instruction, as `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Insn {
    code: u8,
    /// Destination register in the low nibble, source register in the high nibble.
    regs: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        Insn {
            code,
            regs: (src << 4) | (dst & 0x0f),
            off,
            imm,
        }
    }
}

// Opcode parts, from <linux/bpf_common.h> and <linux/bpf.h>.
const BPF_LD: u8 = 0x00;
const BPF_LDX: u8 = 0x01;
const BPF_JMP: u8 = 0x05;
const BPF_ALU64: u8 = 0x07;
const BPF_W: u8 = 0x00;
const BPF_DW: u8 = 0x18;
const BPF_IMM: u8 = 0x00;
const BPF_MEM: u8 = 0x60;
const BPF_MOV: u8 = 0xb0;
const BPF_K: u8 = 0x00;
const BPF_CALL: u8 = 0x80;
const BPF_EXIT: u8 = 0x90;

/// `bpf_redirect_map(xsks, ctx->rx_queue_index, XDP_PASS)`, with the map fd patched in.
fn redirect_program(map_fd: RawFd) -> [Insn; 6] {
    [
        Insn::new(BPF_LDX | BPF_W | BPF_MEM, 2, 1, XDP_MD_RX_QUEUE_INDEX, 0),
        Insn::new(BPF_LD | BPF_DW | BPF_IMM, 1, BPF_PSEUDO_MAP_FD, 0, map_fd),
        Insn::new(0, 0, 0, 0, 0),
        Insn::new(BPF_ALU64 | BPF_MOV | BPF_K, 3, 0, 0, XDP_PASS),
        Insn::new(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_REDIRECT_MAP),
        Insn::new(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
    ]
}

fn name16(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    // Kernel object names hold at most 15 bytes plus the NUL.
    let len = name.len().min(15);
    out[..len].copy_from_slice(&name.as_bytes()[..len]);
    out
}

fn create_xskmap(max_entries: u32) -> io::Result<OwnedFd> {
    let attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_XSKMAP,
        key_size: 4,
        value_size: 4,
        max_entries,
        map_flags: 0,
        inner_map_fd: 0,
        numa_node: 0,
        map_name: name16("cutls_xsks"),
    };
    // SAFETY: `attr` is a valid BPF_MAP_CREATE attribute; on success the call returns a new fd
    // that nothing else owns.
    let fd = unsafe { bpf(BPF_MAP_CREATE, &attr) }?;
    // SAFETY: `fd` was just returned by the kernel and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn load_redirect_program(map: &OwnedFd) -> io::Result<OwnedFd> {
    let program = redirect_program(map.as_raw_fd());
    // bpf_redirect_map is not a GPL-only helper, so the program may carry the project's licence.
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: program.len() as u32,
        insns: program.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name16("cutls_redirect"),
        prog_ifindex: 0,
        expected_attach_type: BPF_XDP,
    };
    // SAFETY: `attr` is a valid BPF_PROG_LOAD attribute; `program` and `license` outlive the call.
    match unsafe { bpf(BPF_PROG_LOAD, &attr) } {
        // SAFETY: a new fd owned by no one else.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(error) => {
            // Load again with the verifier log to say why.
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            // SAFETY: as above; `log` is writable for `log_size` bytes during the call.
            if let Ok(fd) = unsafe { bpf(BPF_PROG_LOAD, &attr) } {
                // SAFETY: a new fd owned by no one else.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            let text_len = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let verifier = String::from_utf8_lossy(&log[..text_len]);
            Err(io::Error::new(
                error.kind(),
                format!("{error}; verifier: {}", verifier.trim()),
            ))
        }
    }
}

fn link_create(program: &OwnedFd, ifindex: u32, mode: AttachMode) -> io::Result<OwnedFd> {
    let attr = LinkCreateAttr {
        prog_fd: program.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: mode.flags(),
    };
    // SAFETY: `attr` is a valid BPF_LINK_CREATE attribute.
    let fd = unsafe { bpf(BPF_LINK_CREATE, &attr) }?;
    // SAFETY: a new fd owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The bpf(2) system call with an attribute struct of type `A`.
///
/// # Safety
/// `A` must be the attribute layout the kernel expects for `command`, and every pointer in it
/// must be valid for what the kernel does with it during the call.
unsafe fn bpf<A>(command: libc::c_long, attr: &A) -> io::Result<RawFd> {
    // SAFETY: the caller vouches for the attribute; the size passed is the struct's size, so the
    // kernel reads no more than `attr` holds and treats the rest as zero.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *const A,
            size_of::<A>() as libc::c_uint,
        )
    };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result as RawFd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_encodes_as_the_kernel_expects() {
        let program = redirect_program(7);
        // SAFETY: `Insn` is repr(C), 8 bytes, no padding; reading it as bytes is sound.
        let bytes: &[u8] = unsafe {
            std::slice::from_raw_parts(
                program.as_ptr() as *const u8,
                program.len() * size_of::<Insn>(),
            )
        };
        #[rustfmt::skip]
        let expected: [u8; 48] = [
            0x61, 0x12, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, // r2 = *(u32 *)(r1 + 16)
            0x18, 0x11, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, // r1 = map fd 7 (pseudo map fd)
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //   upper half of the immediate
            0xb7, 0x03, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, // r3 = XDP_PASS
            0x85, 0x00, 0x00, 0x00, 0x33, 0x00, 0x00, 0x00, // call 51 (bpf_redirect_map)
            0x95, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // exit
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn attribute_layouts_match_the_kernel() {
        assert_eq!(size_of::<Insn>(), 8);
        assert_eq!(size_of::<MapUpdateAttr>(), 32);
        assert_eq!(size_of::<ProgLoadAttr>(), 72);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(std::mem::offset_of!(MapCreateAttr, map_name), 28);
    }

    #[test]
    fn names_are_truncated_to_fifteen_bytes() {
        let name = name16("a_very_long_program_name");
        assert_eq!(&name[..15], b"a_very_long_pro");
        assert_eq!(name[15], 0);
    }
}
