//! Thin safe wrappers over the system calls the backends share: sockets, socket options and
//! shared memory mappings. Each wrapper checks the result and turns it into an `io::Error`.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

/// A new socket; close-on-exec so that programs a test spawns do not inherit it.
pub(crate) fn socket(
    domain: libc::c_int,
    kind: libc::c_int,
    protocol: libc::c_int,
) -> io::Result<OwnedFd> {
    // SAFETY: plain system call with integer arguments.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `setsockopt(fd, level, name, value)` for a plain-data `value`.
pub(crate) fn set_option<T: Copy>(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` points to `size_of::<T>()` readable bytes for the duration of the call.
    let result = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value as *const T as *const libc::c_void,
            size_of::<T>() as libc::socklen_t,
        )
    };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `getsockopt(fd, level, name)` into a plain-data `T` that is valid when zeroed. Returns the
/// value and the length the kernel wrote.
pub(crate) fn get_option<T: Copy + Default>(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<(T, usize)> {
    let mut value = T::default();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is writable for `len` bytes and `len` is a valid in/out length.
    let result = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            &mut value as *mut T as *mut libc::c_void,
            &mut len,
        )
    };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok((value, len as usize))
    }
}

/// `bind(fd, address)` for a socket address struct `A`.
pub(crate) fn bind<A>(fd: &OwnedFd, address: &A) -> io::Result<()> {
    // SAFETY: `address` points to `size_of::<A>()` readable bytes; the caller passes a sockaddr
    // layout matching the socket's family.
    let result = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            address as *const A as *const libc::sockaddr,
            size_of::<A>() as libc::socklen_t,
        )
    };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether an error from a non-blocking send or receive only means "not now". A link that
/// went down (ENETDOWN) counts: the bridge keeps running and drops until it comes back.
pub(crate) fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EAGAIN)
            | Some(libc::EINTR)
            | Some(libc::ENOBUFS)
            | Some(libc::EBUSY)
            | Some(libc::ENETDOWN)
    )
}

/// A shared mapping of memory: anonymous (the AF_XDP UMEM) or of a socket's ring. Unmapped on
/// drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: a `Mapping` owns its memory exclusively, like a `Box<[u8]>`; moving it to another
// thread moves that ownership. Shared access to the memory is arranged by its owner.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps `len` bytes of the ring of socket `fd` at page offset `offset`.
    pub(crate) fn socket_ring(fd: &OwnedFd, len: usize, offset: libc::off_t) -> io::Result<Self> {
        // SAFETY: a fresh mapping chosen by the kernel; it aliases nothing in this process.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                offset,
            )
        };
        Self::from_mmap(base, len)
    }

    /// Maps `len` bytes of zeroed anonymous memory, locked in RAM (needs CAP_IPC_LOCK or a
    /// large enough RLIMIT_MEMLOCK).
    pub(crate) fn anonymous(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping; it aliases nothing in this process.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        Self::from_mmap(base, len)
    }

    fn from_mmap(base: *mut libc::c_void, len: usize) -> io::Result<Self> {
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(base as *mut u8)
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(Mapping { base, len })
    }

    /// The first byte of the mapping.
    pub(crate) fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// The length of the mapping in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// A pointer to the 32-bit word at `offset`, which must be 4-aligned and inside the mapping.
    pub(crate) fn u32_at(&self, offset: usize) -> io::Result<*mut u32> {
        if offset & 3 != 0 || offset.checked_add(4).is_none_or(|end| end > self.len) {
            return Err(io::Error::other(format!(
                "ring offset {offset} outside a {}-byte mapping",
                self.len
            )));
        }
        // SAFETY: `offset + 4 <= len`, so the result stays inside the mapping.
        Ok(unsafe { self.base.as_ptr().add(offset) } as *mut u32)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` describe a mapping this struct created and nothing else unmaps;
        // every pointer into it is owned by the backend that owns this mapping and dies with it.
        unsafe {
            libc::munmap(self.base.as_ptr() as *mut libc::c_void, self.len);
        }
    }
}
