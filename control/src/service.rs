//! The service manager's notification protocol (sd_notify(3)), for a systemd unit of
//! `Type=notify`: datagrams of `KEY=VALUE` lines to the socket named by `NOTIFY_SOCKET` (a path,
//! or `@name` in the abstract namespace). Without the variable every call does nothing.
//!
//! The box sends `READY=1` once every poll loop has reported to the control thread (the loops
//! turn, not only exist), `RELOADING=1` and `READY=1` around a reload, `STOPPING=1` when it stops,
//! `STATUS=` lines an operator sees in `systemctl status`, and with `WatchdogSec=` in the unit
//! `WATCHDOG=1` while no loop has stalled: a loop that stops turning (a bug no panic ends) stops
//! the pings, and systemd restarts the box.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The variable naming the socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `state` (one or more `KEY=VALUE` lines) to the service manager, if there is one.
pub fn notify(state: &str) -> io::Result<()> {
    match std::env::var_os(NOTIFY_SOCKET) {
        Some(name) => notify_to(&name.to_string_lossy(), state),
        None => Ok(()),
    }
}

/// Sends `state` to the socket `name` (a path, or `@name` for the abstract namespace).
pub fn notify_to(name: &str, state: &str) -> io::Result<()> {
    let address = match name.strip_prefix('@') {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes())?,
        None => SocketAddr::from_pathname(name)?,
    };
    let socket = UnixDatagram::unbound()?;
    // Never wait for the manager: a receiver that does not read (its queue holds only
    // net.unix.max_dgram_qlen datagrams) would otherwise block the control thread. A state it
    // misses is an error the caller may log.
    socket.set_nonblocking(true)?;
    socket.send_to_addr(state.as_bytes(), &address)?;
    Ok(())
}

/// How often systemd expects `WATCHDOG=1` (`WATCHDOG_USEC`, when meant for this process:
/// `WATCHDOG_PID` unset or ours), if at all.
pub fn watchdog_interval() -> Option<Duration> {
    let pid_ours = std::env::var("WATCHDOG_PID").map_or(true, |pid| pid.trim() == std::process::id().to_string());
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (pid_ours && usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_reach_a_path_socket_and_an_abstract_one() {
        let dir = std::env::temp_dir().join(format!("cutls-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let manager = UnixDatagram::bind(&path).unwrap();
        notify_to(&path.display().to_string(), "READY=1\nSTATUS=serving").unwrap();
        let mut buffer = [0u8; 128];
        let length = manager.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..length], b"READY=1\nSTATUS=serving");
        std::fs::remove_dir_all(&dir).unwrap();

        let name = format!("cutls-notify-test-{}", std::process::id());
        let manager = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        notify_to(&format!("@{name}"), "STOPPING=1").unwrap();
        let length = manager.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..length], b"STOPPING=1");
        assert!(notify_to("/nonexistent/notify.sock", "READY=1").is_err());
        // A manager that does not read: the sender is refused at once, never blocked.
        let full = (0..10_000).map(|_| notify_to(&format!("@{name}"), "WATCHDOG=1")).find(|result| result.is_err());
        assert_eq!(full.map(|result| result.unwrap_err().kind()), Some(io::ErrorKind::WouldBlock));
    }
}
