//! A doorbell that wakes a sleeping poll loop: an `eventfd` its owner waits on beside its ports'
//! descriptors, rung by other threads after they queue work for it (frames handed over by
//! another loop). Ringing costs a system call only while the owner sleeps.
//!
//! The protocol (a store-then-check on each side, sequentially consistent, so no wakeup is
//! lost): the owner calls [`Doorbell::going_to_sleep`], checks its queues once more, sleeps on
//! [`Doorbell::fd`], then calls [`Doorbell::woke`]; a producer queues its work, then calls
//! [`Doorbell::ring`].

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug)]
pub struct Doorbell {
    fd: OwnedFd,
    sleeping: AtomicBool,
}

impl Doorbell {
    pub fn new() -> io::Result<Doorbell> {
        // SAFETY: eventfd takes no pointers; a non-negative return is a new descriptor we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Doorbell { fd, sleeping: AtomicBool::new(false) })
    }

    /// Wakes the owner if it sleeps (or is about to). Call after queueing the work.
    pub fn ring(&self) {
        if self.sleeping.load(Ordering::SeqCst) {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live local buffer to our own eventfd. A full counter
            // (EAGAIN) already means "awake": the result is not needed.
            let _ = unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        }
    }

    /// The owner is about to sleep: after this, check the queues once more before sleeping.
    pub fn going_to_sleep(&self) {
        self.sleeping.store(true, Ordering::SeqCst);
    }

    /// The owner is awake again (whatever woke it): ringing costs nothing until it sleeps.
    pub fn woke(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live local buffer from our own non-blocking
        // eventfd; EAGAIN (not rung) is the common case and is fine.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
    }

    /// Readable once rung while sleeping.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{wait_readable, Wakeup};
    use std::time::Duration;

    #[test]
    fn a_ring_wakes_a_sleeper_and_only_a_sleeper_pays_for_it() {
        let bell = Doorbell::new().unwrap();
        bell.ring();
        assert_eq!(wait_readable(&[bell.fd()], Duration::ZERO).unwrap(), Wakeup::Timeout, "awake: nothing written");
        bell.going_to_sleep();
        bell.ring();
        assert_eq!(wait_readable(&[bell.fd()], Duration::from_secs(5)).unwrap(), Wakeup::Ready);
        bell.woke();
        assert_eq!(wait_readable(&[bell.fd()], Duration::ZERO).unwrap(), Wakeup::Timeout, "drained");
    }

    #[test]
    fn a_ring_from_another_thread_ends_the_sleep() {
        let bell = std::sync::Arc::new(Doorbell::new().unwrap());
        bell.going_to_sleep();
        let ringer = std::sync::Arc::clone(&bell);
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            ringer.ring();
        });
        let started = std::time::Instant::now();
        assert_eq!(wait_readable(&[bell.fd()], Duration::from_secs(10)).unwrap(), Wakeup::Ready);
        assert!(started.elapsed() < Duration::from_secs(5));
        bell.woke();
        thread.join().unwrap();
    }
}
