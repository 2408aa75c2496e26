//! Active health checks of the backends, from the box itself on its inside port.
//!
//! The box has no kernel socket on the server VLAN: its ports are raw-frame rings. A check is
//! a TCP connection of its own, made by a `smoltcp` interface that shares the inside port with
//! the session engine. It has its own address (`box.health_source`, or the SNAT address, whose
//! ports [`HEALTH_PORTS`] are then set apart for it); the engine hands it the frames that are
//! for that address ([`claims`]) and sends what it emits. The interface holds its address as a
//! /0 prefix, so that it resolves every backend directly with ARP/NDP, as the engine does.
//!
//! Each backend is checked every `interval`: a TCP connection (refused, reset or not
//! established within `timeout` fails), optionally an HTTP/1.0 request whose status line must
//! carry the expected status. After `fall` failures in a row a backend that was up is down
//! (out of rotation for new sessions; its sessions go on), after `rise` successes in a row a
//! down one is up again. Backends start up, as HAProxy's do: a box that starts serves at once,
//! and a dead backend is out after `fall` checks. The connection is closed with a RST once the
//! verdict is in, so that no check leaves a TIME-WAIT on the backend.
//!
//! Not supported: VLAN-tagged inside ports (frames with tags are never claimed), TLS checks.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use smoltcp::iface::{Config as InterfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

use crate::wire::{ArpOperation, EthernetAddress, Frame, NetworkPayload, Transport};

/// Local ports of the checks' connections. With the SNAT address as the health source, these
/// are the checks' and the engine never takes them for a session.
pub const HEALTH_PORTS: std::ops::RangeInclusive<u16> = 60_000..=60_999;

/// How one pool's backends are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub interval_ns: u64,
    /// How long one check may take, connection and answer.
    pub timeout_ns: u64,
    /// Successes in a row that bring a down backend back.
    pub rise: u32,
    /// Failures in a row that take an up backend out.
    pub fall: u32,
    /// Check this port instead of the backend's service port.
    pub port: Option<u16>,
    pub http: Option<HttpCheck>,
    /// The backend's agent (HAProxy's agent-check protocol) on this port, asked every interval
    /// beside the check ([`AgentState`]).
    pub agent_port: Option<u16>,
}

/// What a backend's agent last said of itself (HAProxy's agent check: a line of words such as
/// `75%`, `drain`, `ready`, `down`, `up`, `maint`). It holds until the agent says otherwise; an
/// agent that cannot be reached changes nothing (its backend's health is the check's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentState {
    /// Of the backend's configured weight (`N%`).
    pub weight_percent: u32,
    /// `drain` (and `maint`): no new sessions, until `ready`.
    pub drain: bool,
    /// `down` (`fail`, `stopped`): no new sessions, until `up`.
    pub down: bool,
}

impl Default for AgentState {
    fn default() -> AgentState {
        AgentState { weight_percent: 100, drain: false, down: false }
    }
}

impl AgentState {
    /// The state after the agent's `line` (words separated by spaces, commas or tabs; text after
    /// `#` is a comment); `None` if it holds no word the box knows.
    pub fn after(self, line: &str) -> Option<AgentState> {
        let mut next = self;
        let mut understood = false;
        let line = line.split('#').next().unwrap_or("");
        for word in line.split([' ', ',', '\t']).map(str::trim).filter(|word| !word.is_empty()) {
            let word = word.to_ascii_lowercase();
            understood |= match word.as_str() {
                "ready" => {
                    next.drain = false;
                    true
                }
                "drain" | "maint" => {
                    next.drain = true;
                    true
                }
                "up" => {
                    next.down = false;
                    true
                }
                "down" | "fail" | "failed" | "stopped" => {
                    next.down = true;
                    true
                }
                percent => match percent.strip_suffix('%').and_then(|number| number.parse::<u32>().ok()) {
                    Some(number) => {
                        next.weight_percent = number.min(256);
                        true
                    }
                    // Other words (`maxconn:N`, HAProxy's own) are not the box's: ignored.
                    None => false,
                },
            };
        }
        understood.then_some(next)
    }

    /// Whether the backend may take new sessions.
    pub fn takes_sessions(&self) -> bool {
        !self.drain && !self.down && self.weight_percent > 0
    }
}

impl std::fmt::Display for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.down, self.drain) {
            (true, _) => write!(f, "down"),
            (false, true) => write!(f, "drain"),
            (false, false) => write!(f, "{}%", self.weight_percent),
        }
    }
}

/// What the checker found that the engine acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthChange {
    /// The backend's checks took it down (`false`) or brought it back.
    Up(SocketAddr, bool),
    /// Its agent said something new.
    Agent(SocketAddr, AgentState),
}

/// An HTTP check: `GET path` with `Host: host`, answered with status `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCheck {
    pub path: String,
    /// The `Host` header; the backend's address when not set.
    pub host: Option<String>,
    pub status: u16,
}

/// What the box checks, from where.
#[derive(Clone, Debug)]
pub struct HealthSetup {
    /// The checks' own addresses, at most one per family.
    pub sources: Vec<IpAddr>,
    /// The inside port's MAC.
    pub mac: EthernetAddress,
    /// Each backend once, with its pool's check.
    pub checks: Vec<(SocketAddr, HealthCheck)>,
    /// The SNAT address, if the box has one: when it is also a source, only the ports in
    /// [`HEALTH_PORTS`] are the checks'.
    pub snat_address: Option<IpAddr>,
    /// Seeds the interface's ISNs and its choice of ports (the engine mixes in its keys).
    pub seed: u64,
}

impl HealthSetup {
    /// The backends it checks.
    pub fn backends(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.checks.iter().map(|(backend, _)| *backend)
    }

    /// The backends whose agents it asks.
    pub fn agent_backends(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.checks.iter().filter(|(_, check)| check.agent_port.is_some()).map(|(backend, _)| *backend)
    }
}

/// The last check of a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    /// None has finished yet.
    Pending,
    Passed { latency_ns: u64 },
    Failed(CheckFailure),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckFailure {
    /// A RST to the SYN.
    Refused,
    /// No connection or no answer within the timeout.
    Timeout,
    /// Closed or reset before the check was answered.
    Closed,
    /// The HTTP status line carried another status.
    Status(u16),
    /// The answer was not an HTTP status line.
    NotHttp,
    /// The box has no health source address of the backend's family.
    NoSource,
}

impl std::fmt::Display for CheckOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckOutcome::Pending => write!(f, "pending"),
            CheckOutcome::Passed { latency_ns } => write!(f, "passed in {:.1} ms", *latency_ns as f64 / 1e6),
            CheckOutcome::Failed(CheckFailure::Refused) => write!(f, "connection refused"),
            CheckOutcome::Failed(CheckFailure::Timeout) => write!(f, "timed out"),
            CheckOutcome::Failed(CheckFailure::Closed) => write!(f, "closed before an answer"),
            CheckOutcome::Failed(CheckFailure::Status(status)) => write!(f, "HTTP status {status}"),
            CheckOutcome::Failed(CheckFailure::NotHttp) => write!(f, "not an HTTP answer"),
            CheckOutcome::Failed(CheckFailure::NoSource) => write!(f, "no health source address of its family"),
        }
    }
}

/// A backend's health as the checker sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendHealth {
    pub backend: SocketAddr,
    pub up: bool,
    pub last: CheckOutcome,
    /// When the last check finished, and when `up` last changed (0: never).
    pub last_check_ns: u64,
    pub changed_ns: u64,
    pub checks: u64,
    pub failures: u64,
    /// What its agent last said (`None`: no agent, or none heard yet), and how the last
    /// question went: the line, or why there was none.
    pub agent: Option<AgentState>,
    pub agent_last: Option<String>,
}

/// The checker: a smoltcp interface on the inside port and one probe per backend.
pub struct HealthChecker {
    interface: Interface,
    device: FrameQueue,
    sockets: SocketSet<'static>,
    probes: Vec<Probe>,
    sources: Vec<IpAddr>,
    snat_address: Option<IpAddr>,
    next_port: u16,
    /// Finished checks' sockets: removed after the next poll has sent their RST.
    closing: Vec<SocketHandle>,
    /// When [`HealthChecker::poll`] next has work, as the last poll left it.
    next_deadline_ns: u64,
}

struct Probe {
    health: BackendHealth,
    target: SocketAddr,
    check: HealthCheck,
    /// Results in a row against the current state.
    streak: u32,
    next_at_ns: u64,
    attempt: Option<Attempt>,
    /// The agent's address, when its check: the next question, the one under way.
    agent: Option<(SocketAddr, u64, Option<Attempt>)>,
}

struct Attempt {
    handle: SocketHandle,
    started_ns: u64,
    established: bool,
    request_sent: bool,
    answer: Vec<u8>,
}

/// Room for an HTTP check's status line (and a little more, which is thrown away).
const ANSWER_LIMIT: usize = 1024;

impl HealthChecker {
    pub fn new(setup: HealthSetup, now_ns: u64) -> HealthChecker {
        let mut device = FrameQueue::default();
        let mut config = InterfaceConfig::new(HardwareAddress::Ethernet(smoltcp::wire::EthernetAddress(setup.mac.0)));
        config.random_seed = setup.seed;
        let mut interface = Interface::new(config, &mut device, instant(now_ns));
        let mut sources = Vec::new();
        interface.update_ip_addrs(|addresses| {
            for source in &setup.sources {
                // At most one per family (the config says so): the list holds two.
                if sources.iter().any(|s: &IpAddr| s.is_ipv4() == source.is_ipv4()) {
                    continue;
                }
                if addresses.push(IpCidr::new(IpAddress::from(*source), 0)).is_ok() {
                    sources.push(*source);
                }
            }
        });
        // Spread the first checks over the first interval, not all in one burst.
        let count = setup.checks.len().max(1) as u64;
        let probes = setup
            .checks
            .into_iter()
            .enumerate()
            .map(|(i, (backend, check))| Probe::new(backend, check, now_ns, i as u64, count))
            .collect();
        let span = HEALTH_PORTS.end() - HEALTH_PORTS.start() + 1;
        HealthChecker {
            interface,
            device,
            sockets: SocketSet::new(Vec::new()),
            probes,
            sources,
            snat_address: setup.snat_address,
            next_port: HEALTH_PORTS.start() + (setup.seed % span as u64) as u16,
            closing: Vec::new(),
            next_deadline_ns: now_ns,
        }
    }

    /// Whose `frame` (received on the inside port) is ([`claims`]).
    pub fn claims(&self, frame: &Frame<'_>) -> Claim {
        claims(&self.sources, self.snat_address, frame)
    }

    /// A frame [`HealthChecker::claims`]: processed at the next [`HealthChecker::poll`].
    pub fn receive(&mut self, frame: &[u8]) {
        // Bounded: checks need a few frames per interval, a flood must not grow the queue.
        if self.device.received.len() < 256 {
            self.device.received.push_back(frame.to_vec());
            self.next_deadline_ns = 0;
        }
    }

    /// Runs the interface and the probes; `transmit` gets each frame for the inside port.
    /// Returns the backends whose state changed, with their new state.
    pub fn poll(&mut self, now_ns: u64, mut transmit: impl FnMut(Vec<u8>)) -> Vec<HealthChange> {
        let now = instant(now_ns);
        self.interface.poll(now, &mut self.device, &mut self.sockets);
        for handle in self.closing.drain(..) {
            self.sockets.remove(handle);
        }
        let mut changes = Vec::new();
        for index in 0..self.probes.len() {
            let due = self.probes[index].attempt.is_none() && now_ns >= self.probes[index].next_at_ns;
            let failed_at_once = if due { self.start(index, now_ns) } else { None };
            if let Some(outcome) = failed_at_once.or_else(|| self.advance(index, now_ns)) {
                if let Some(up) = self.probes[index].record(outcome, now_ns) {
                    changes.push(HealthChange::Up(self.probes[index].health.backend, up));
                }
            }
            if let Some(state) = self.ask_agent(index, now_ns) {
                changes.push(HealthChange::Agent(self.probes[index].health.backend, state));
            }
        }
        // Connections opened, requests written, RSTs of finished checks: out now.
        self.interface.poll(now, &mut self.device, &mut self.sockets);
        for frame in self.device.sent.drain(..) {
            transmit(frame);
        }
        self.next_deadline_ns = self.compute_deadline(now_ns);
        changes
    }

    /// When [`HealthChecker::poll`] next has work.
    pub fn next_deadline_ns(&self) -> u64 {
        self.next_deadline_ns
    }

    fn compute_deadline(&mut self, now_ns: u64) -> u64 {
        let mut next = u64::MAX;
        for probe in &self.probes {
            next = next.min(match &probe.attempt {
                Some(attempt) => attempt.started_ns + probe.check.timeout_ns,
                None => probe.next_at_ns,
            });
            if let Some((_, next_at_ns, attempt)) = &probe.agent {
                next = next.min(attempt.as_ref().map_or(*next_at_ns, |attempt| attempt.started_ns + probe.check.timeout_ns));
            }
        }
        if !self.device.received.is_empty() || !self.closing.is_empty() {
            return now_ns;
        }
        if let Some(at) = self.interface.poll_at(instant(now_ns), &self.sockets) {
            next = next.min((at.total_micros().max(0) as u64).saturating_mul(1000));
        }
        next
    }

    /// A reloaded configuration: a backend whose check is unchanged keeps its state (and a
    /// check under way); new or changed checks start as new ones; removed ones stop. New
    /// addresses start the interface again.
    pub fn reconfigure(&mut self, setup: HealthSetup, now_ns: u64) {
        let mut sources = setup.sources.clone();
        sources.sort();
        let mut current = self.sources.clone();
        current.sort();
        let hardware = HardwareAddress::Ethernet(smoltcp::wire::EthernetAddress(setup.mac.0));
        if sources != current || self.snat_address != setup.snat_address || self.interface.hardware_addr() != hardware {
            *self = HealthChecker::new(setup, now_ns);
            return;
        }
        let mut old: Vec<Probe> = std::mem::take(&mut self.probes);
        let count = setup.checks.len() as u64;
        for (i, (backend, check)) in setup.checks.into_iter().enumerate() {
            match old.iter().position(|probe| probe.health.backend == backend && probe.check == check) {
                Some(index) => self.probes.push(old.swap_remove(index)),
                None => self.probes.push(Probe::new(backend, check, now_ns, i as u64, count)),
            }
        }
        for probe in old {
            let agent = probe.agent.and_then(|(_, _, attempt)| attempt);
            for attempt in probe.attempt.into_iter().chain(agent) {
                self.sockets.get_mut::<tcp::Socket>(attempt.handle).abort();
                self.closing.push(attempt.handle);
            }
        }
        self.next_deadline_ns = 0;
    }

    pub fn status(&self) -> Vec<BackendHealth> {
        self.probes.iter().map(|probe| probe.health.clone()).collect()
    }

    /// Opens a check's connection; the outcome at once if it cannot be opened.
    fn start(&mut self, index: usize, now_ns: u64) -> Option<CheckOutcome> {
        let probe = &mut self.probes[index];
        probe.next_at_ns = now_ns + probe.check.interval_ns;
        let target = probe.target;
        match self.open(target, now_ns) {
            Ok(attempt) => {
                self.probes[index].attempt = Some(attempt);
                None
            }
            Err(failure) => Some(CheckOutcome::Failed(failure)),
        }
    }

    /// Asks the agent of probe `index` when due, and moves a question under way on; the new
    /// state when the agent's answer changed it.
    fn ask_agent(&mut self, index: usize, now_ns: u64) -> Option<AgentState> {
        let (target, next_at_ns, attempt) = self.probes[index].agent.take()?;
        let (next_at_ns, mut attempt) = match attempt {
            None if now_ns >= next_at_ns => {
                let next = now_ns + self.probes[index].check.interval_ns;
                match self.open(target, now_ns) {
                    Ok(attempt) => (next, Some(attempt)),
                    Err(failure) => {
                        self.probes[index].health.agent_last = Some(CheckOutcome::Failed(failure).to_string());
                        (next, None)
                    }
                }
            }
            other => (next_at_ns, other),
        };
        let mut changed = None;
        if let Some(running) = attempt.as_mut() {
            let socket = self.sockets.get_mut::<tcp::Socket>(running.handle);
            let timeout_ns = self.probes[index].check.timeout_ns;
            if let Some(answer) = agent_answer(socket, running, timeout_ns, now_ns) {
                socket.abort();
                self.closing.push(running.handle);
                attempt = None;
                let health = &mut self.probes[index].health;
                match answer {
                    Ok(line) => {
                        let before = health.agent.unwrap_or_default();
                        let after = before.after(&line);
                        health.agent_last = Some(if after.is_some() { line } else { format!("not understood: {line:?}") });
                        if let Some(after) = after.filter(|after| health.agent != Some(*after)) {
                            health.agent = Some(after);
                            changed = Some(after);
                        }
                    }
                    Err(failure) => health.agent_last = Some(CheckOutcome::Failed(failure).to_string()),
                }
            }
        }
        self.probes[index].agent = Some((target, next_at_ns, attempt));
        changed
    }

    /// A connection from the box's source of `target`'s family.
    fn open(&mut self, target: SocketAddr, now_ns: u64) -> Result<Attempt, CheckFailure> {
        if !self.sources.iter().any(|source| source.is_ipv4() == target.is_ipv4()) {
            return Err(CheckFailure::NoSource);
        }
        let mut socket = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 2048]), tcp::SocketBuffer::new(vec![0; 1024]));
        // The checks are few and short: no Nagle delay, no delayed ACK.
        socket.set_nagle_enabled(false);
        socket.set_ack_delay(None);
        let local_port = self.next_port;
        self.next_port = if local_port == *HEALTH_PORTS.end() { *HEALTH_PORTS.start() } else { local_port + 1 };
        let remote = (IpAddress::from(target.ip()), target.port());
        if socket.connect(self.interface.context(), remote, local_port).is_err() {
            return Err(CheckFailure::NoSource);
        }
        let handle = self.sockets.add(socket);
        Ok(Attempt { handle, started_ns: now_ns, established: false, request_sent: false, answer: Vec::new() })
    }

    /// Moves a running check on; its outcome once it has one (the socket then closes).
    fn advance(&mut self, index: usize, now_ns: u64) -> Option<CheckOutcome> {
        let probe = &mut self.probes[index];
        let attempt = probe.attempt.as_mut()?;
        let socket = self.sockets.get_mut::<tcp::Socket>(attempt.handle);
        let outcome = check_socket(socket, attempt, &probe.check, probe.target, now_ns);
        if outcome.is_some() {
            socket.abort();
            self.closing.push(attempt.handle);
            probe.attempt = None;
        }
        outcome
    }
}

impl Probe {
    /// The `i`-th of `count` new probes: up until `fall` checks fail, its first check within
    /// the first interval (at most a second), spread with the others'.
    fn new(backend: SocketAddr, check: HealthCheck, now_ns: u64, i: u64, count: u64) -> Probe {
        let first_ns = now_ns + check.interval_ns.min(1_000_000_000) * i / count.max(1);
        Probe {
            health: BackendHealth {
                backend,
                up: true,
                last: CheckOutcome::Pending,
                last_check_ns: 0,
                changed_ns: 0,
                checks: 0,
                failures: 0,
                agent: None,
                agent_last: None,
            },
            target: SocketAddr::new(backend.ip(), check.port.unwrap_or(backend.port())),
            next_at_ns: first_ns,
            agent: check.agent_port.map(|port| (SocketAddr::new(backend.ip(), port), first_ns, None)),
            check,
            streak: 0,
            attempt: None,
        }
    }

    /// Counts one finished check; the new state if it changed.
    fn record(&mut self, outcome: CheckOutcome, now_ns: u64) -> Option<bool> {
        let passed = matches!(outcome, CheckOutcome::Passed { .. });
        let health = &mut self.health;
        health.checks += 1;
        health.failures += u64::from(!passed);
        health.last = outcome;
        health.last_check_ns = now_ns;
        if passed == health.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if health.up { self.check.fall } else { self.check.rise };
        if self.streak < needed.max(1) {
            return None;
        }
        self.streak = 0;
        health.up = passed;
        health.changed_ns = now_ns;
        Some(passed)
    }
}

/// Whether a check's (or an agent's) connection is up: `Ok(true)` once established, `Ok(false)`
/// while it may still come, the failure once it cannot.
fn connected(socket: &tcp::Socket<'_>, attempt: &mut Attempt, timeout_ns: u64, now_ns: u64) -> Result<bool, CheckFailure> {
    if socket.state() == tcp::State::Established || socket.may_recv() {
        attempt.established = true;
    }
    match socket.state() {
        _ if attempt.established => Ok(true),
        // A RST to the SYN closes the socket.
        tcp::State::Closed => Err(CheckFailure::Refused),
        _ if now_ns >= attempt.started_ns + timeout_ns => Err(CheckFailure::Timeout),
        _ => Ok(false),
    }
}

/// Takes what the peer sent into `attempt.answer`, up to [`ANSWER_LIMIT`] (the rest is thrown
/// away).
fn read_answer(socket: &mut tcp::Socket<'_>, attempt: &mut Attempt) {
    while socket.can_recv() {
        let mut buffer = [0u8; 512];
        match socket.recv_slice(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                let room = ANSWER_LIMIT.saturating_sub(attempt.answer.len());
                attempt.answer.extend_from_slice(&buffer[..read.min(room)]);
            }
        }
    }
}

/// One step of a running check: its outcome, if it has one now.
fn check_socket(socket: &mut tcp::Socket<'_>, attempt: &mut Attempt, check: &HealthCheck, target: SocketAddr, now_ns: u64) -> Option<CheckOutcome> {
    let passed = CheckOutcome::Passed { latency_ns: now_ns.saturating_sub(attempt.started_ns) };
    match connected(socket, attempt, check.timeout_ns, now_ns) {
        Ok(true) => {}
        Ok(false) => return None,
        Err(failure) => return Some(CheckOutcome::Failed(failure)),
    }
    let Some(http) = &check.http else { return Some(passed) };
    if !attempt.request_sent && socket.can_send() {
        let host = http.host.clone().unwrap_or_else(|| match target.ip() {
            IpAddr::V4(address) => address.to_string(),
            IpAddr::V6(address) => format!("[{address}]"),
        });
        let request = format!("GET {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: cutls-health-check\r\nConnection: close\r\n\r\n", http.path);
        // The send buffer (1 KiB) takes the request whole; the config bounds the path.
        match socket.send_slice(request.as_bytes()) {
            Ok(written) if written == request.len() => attempt.request_sent = true,
            _ => return Some(CheckOutcome::Failed(CheckFailure::Closed)),
        }
    }
    read_answer(socket, attempt);
    if let Some(end) = attempt.answer.iter().position(|&b| b == b'\n') {
        return Some(match http_status(&attempt.answer[..end]) {
            Some(status) if status == http.status => passed,
            Some(status) => CheckOutcome::Failed(CheckFailure::Status(status)),
            None => CheckOutcome::Failed(CheckFailure::NotHttp),
        });
    }
    if attempt.answer.len() >= ANSWER_LIMIT {
        return Some(CheckOutcome::Failed(CheckFailure::NotHttp));
    }
    if !socket.may_recv() || socket.state() == tcp::State::Closed {
        return Some(CheckOutcome::Failed(CheckFailure::Closed));
    }
    if now_ns >= attempt.started_ns + check.timeout_ns {
        return Some(CheckOutcome::Failed(CheckFailure::Timeout));
    }
    None
}

/// One step of a question to an agent: its line (up to a newline, or all it sent before
/// closing), or why there is none, once known.
fn agent_answer(socket: &mut tcp::Socket<'_>, attempt: &mut Attempt, timeout_ns: u64, now_ns: u64) -> Option<Result<String, CheckFailure>> {
    match connected(socket, attempt, timeout_ns, now_ns) {
        Ok(true) => {}
        Ok(false) => return None,
        Err(failure) => return Some(Err(failure)),
    }
    read_answer(socket, attempt);
    let line = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_string();
    if let Some(end) = attempt.answer.iter().position(|&b| b == b'\n') {
        return Some(Ok(line(&attempt.answer[..end])));
    }
    if !socket.may_recv() || attempt.answer.len() >= ANSWER_LIMIT {
        return Some(if attempt.answer.is_empty() { Err(CheckFailure::Closed) } else { Ok(line(&attempt.answer)) });
    }
    (now_ns >= attempt.started_ns + timeout_ns).then_some(Err(CheckFailure::Timeout))
}

/// The status of an HTTP status line (`HTTP/1.1 200 OK`).
fn http_status(line: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut words = line.split(' ');
    let version = words.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    let status = words.next()?;
    if status.len() != 3 {
        return None;
    }
    status.parse().ok()
}

/// Whose a frame received on the inside port is ([`claims`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The engine's alone.
    Not,
    /// The health checker's alone.
    Only,
    /// Both's: neighbour information for the SNAT address, which is also a health source
    /// (the answers to the engine's ARP requests and to the checker's look the same).
    Shared,
}

/// Whose a frame received on the inside port is: ARP and NDP solicitations for a health
/// source and what is addressed to one are the checker's. With the SNAT address as a source,
/// only TCP to [`HEALTH_PORTS`] is the checker's alone; ARP replies and neighbour
/// advertisements to it are shared, and the engine answers solicitations for it as before.
/// The steering function uses this too, so that the checker's frames reach the loop that
/// checks.
pub fn claims(sources: &[IpAddr], snat_address: Option<IpAddr>, frame: &Frame<'_>) -> Claim {
    if sources.is_empty() || !frame.vlan_tags.is_empty() {
        return Claim::Not;
    }
    let is_source = |address: IpAddr| sources.contains(&address);
    let shared = |address: IpAddr| Some(address) == snat_address;
    match &frame.network {
        NetworkPayload::Arp(arp) => {
            let target = IpAddr::V4(arp.target_protocol_addr);
            match arp.operation {
                _ if !is_source(target) => Claim::Not,
                ArpOperation::Reply if shared(target) => Claim::Shared,
                ArpOperation::Request if shared(target) => Claim::Not,
                ArpOperation::Request | ArpOperation::Reply => Claim::Only,
                _ => Claim::Not,
            }
        }
        NetworkPayload::Ip { ip, transport } => {
            if let Transport::Icmpv6(message) = transport {
                // A neighbour solicitation for a source goes to its solicited-node group.
                if message.msg_type == 135 {
                    return match crate::session::ndp_target(message.message).map(IpAddr::V6) {
                        Some(target) if is_source(target) && !shared(target) => Claim::Only,
                        _ => Claim::Not,
                    };
                }
            }
            if !is_source(ip.destination) {
                return Claim::Not;
            }
            if !shared(ip.destination) {
                return Claim::Only;
            }
            match transport {
                Transport::Tcp(tcp) if HEALTH_PORTS.contains(&tcp.dst_port) => Claim::Only,
                Transport::Icmpv6(message) if message.msg_type == 136 => Claim::Shared,
                _ => Claim::Not,
            }
        }
        _ => Claim::Not,
    }
}

fn instant(now_ns: u64) -> Instant {
    Instant::from_micros((now_ns / 1000) as i64)
}

/// The checker's side of the inside port: frames handed in by the engine, frames to send.
#[derive(Default)]
struct FrameQueue {
    received: VecDeque<Vec<u8>>,
    sent: Vec<Vec<u8>>,
}

impl Device for FrameQueue {
    type RxToken<'a> = Received;
    type TxToken<'a> = Sending<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Received, Sending<'_>)> {
        let frame = self.received.pop_front()?;
        Some((Received(frame), Sending(&mut self.sent)))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Sending<'_>> {
        Some(Sending(&mut self.sent))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut capabilities = DeviceCapabilities::default();
        capabilities.medium = Medium::Ethernet;
        capabilities.max_transmission_unit = 1514;
        capabilities
    }
}

struct Received(Vec<u8>);

impl RxToken for Received {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

struct Sending<'a>(&'a mut Vec<Vec<u8>>);

impl TxToken for Sending<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let result = f(&mut frame);
        self.0.push(frame);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse() {
        assert_eq!(http_status(b"HTTP/1.1 200 OK\r"), Some(200));
        assert_eq!(http_status(b"HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(http_status(b"HTTP/1.1 20 OK"), None);
        assert_eq!(http_status(b"SSH-2.0-OpenSSH_9.2"), None);
        assert_eq!(http_status(b"\xff\xfe"), None);
    }

    fn probe(rise: u32, fall: u32) -> Probe {
        let check = HealthCheck { interval_ns: 1_000_000_000, timeout_ns: 500_000_000, rise, fall, port: None, http: None, agent_port: None };
        Probe::new("198.18.0.21:80".parse().unwrap(), check, 0, 0, 1)
    }

    #[test]
    fn fall_failures_in_a_row_take_a_backend_out_and_rise_successes_bring_it_back() {
        let mut probe = probe(2, 3);
        let failed = || CheckOutcome::Failed(CheckFailure::Refused);
        let passed = || CheckOutcome::Passed { latency_ns: 1 };
        assert_eq!(probe.record(failed(), 1), None);
        assert_eq!(probe.record(failed(), 2), None);
        // A success between failures starts the count again.
        assert_eq!(probe.record(passed(), 3), None);
        assert_eq!(probe.record(failed(), 4), None);
        assert_eq!(probe.record(failed(), 5), None);
        assert_eq!(probe.record(failed(), 6), Some(false));
        assert!(!probe.health.up);
        assert_eq!(probe.health.changed_ns, 6);
        assert_eq!(probe.record(failed(), 7), None);
        assert_eq!(probe.record(passed(), 8), None);
        assert_eq!(probe.record(passed(), 9), Some(true));
        assert_eq!((probe.health.checks, probe.health.failures), (9, 6));
        assert_eq!(probe.health.last, passed());
    }

    /// A backend that is a real TCP stack (smoltcp's, on its own interface), listening on
    /// port 80 and answering any request with `answer`; `listening = false` refuses (RST).
    struct SmoltcpBackend {
        interface: Interface,
        device: FrameQueue,
        sockets: SocketSet<'static>,
        listener: SocketHandle,
        listening: bool,
        answer: &'static [u8],
        /// An agent on port 9999 that says `agent_line` to whoever connects, then closes.
        agent: SocketHandle,
        agent_line: &'static [u8],
    }

    const CHECKER_MAC: EthernetAddress = EthernetAddress([2, 0, 0xc6, 0x12, 0, 0xfa]);

    impl SmoltcpBackend {
        fn new(answer: &'static [u8]) -> SmoltcpBackend {
            let mut device = FrameQueue::default();
            let config = InterfaceConfig::new(HardwareAddress::Ethernet(smoltcp::wire::EthernetAddress([2, 0, 0xc6, 0x12, 0, 0x15])));
            let mut interface = Interface::new(config, &mut device, Instant::from_micros(0));
            interface.update_ip_addrs(|addresses| {
                addresses.push(IpCidr::new(IpAddress::v4(198, 18, 0, 21), 24)).unwrap();
            });
            let mut sockets = SocketSet::new(Vec::new());
            let socket = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 4096]), tcp::SocketBuffer::new(vec![0; 4096]));
            let listener = sockets.add(socket);
            let agent = sockets.add(tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 512]), tcp::SocketBuffer::new(vec![0; 512])));
            SmoltcpBackend { interface, device, sockets, listener, listening: true, answer, agent, agent_line: b"" }
        }

        fn poll(&mut self, now_ns: u64) {
            let socket = self.sockets.get_mut::<tcp::Socket>(self.listener);
            if self.listening && !socket.is_open() {
                socket.listen(80).unwrap();
            }
            if !self.listening && socket.is_open() {
                socket.abort();
            }
            if socket.can_recv() {
                socket.recv(|data| (data.len(), ())).unwrap();
                socket.send_slice(self.answer).unwrap();
                socket.close();
            }
            let agent = self.sockets.get_mut::<tcp::Socket>(self.agent);
            if !agent.is_open() {
                agent.listen(9999).unwrap();
            }
            if agent.state() == tcp::State::Established {
                agent.send_slice(self.agent_line).unwrap();
                agent.close();
            }
            self.interface.poll(instant(now_ns), &mut self.device, &mut self.sockets);
        }
    }

    fn checker(http: Option<HttpCheck>) -> HealthChecker {
        checker_with(http, None)
    }

    fn checker_with(http: Option<HttpCheck>, agent_port: Option<u16>) -> HealthChecker {
        let check = HealthCheck { interval_ns: 1_000_000_000, timeout_ns: 500_000_000, rise: 2, fall: 2, port: None, http, agent_port };
        HealthChecker::new(
            HealthSetup {
                sources: vec!["198.18.0.250".parse().unwrap()],
                mac: CHECKER_MAC,
                checks: vec![("198.18.0.21:80".parse().unwrap(), check)],
                snat_address: None,
                seed: 7,
            },
            0,
        )
    }

    /// Runs the checker against the backend for `seconds` of virtual time in 1 ms steps; the
    /// state changes it reported, with their times. The backend's frames reach the checker
    /// only if it claims them, as in the engine.
    fn run(checker: &mut HealthChecker, backend: &mut SmoltcpBackend, from_ns: u64, seconds: u64) -> Vec<(u64, bool)> {
        run_all(checker, backend, from_ns, seconds)
            .into_iter()
            .filter_map(|(at, change)| if let HealthChange::Up(_, up) = change { Some((at, up)) } else { None })
            .collect()
    }

    fn run_all(checker: &mut HealthChecker, backend: &mut SmoltcpBackend, from_ns: u64, seconds: u64) -> Vec<(u64, HealthChange)> {
        let mut changes = Vec::new();
        for step in 0..seconds * 1000 {
            let now_ns = from_ns + step * 1_000_000;
            let mut sent = Vec::new();
            for change in checker.poll(now_ns, |frame| sent.push(frame)) {
                changes.push((now_ns, change));
            }
            backend.device.received.extend(sent);
            backend.poll(now_ns);
            for frame in backend.device.sent.drain(..) {
                let parsed = crate::wire::parse_frame_with(
                    crate::wire::LinkType::Ethernet,
                    &frame,
                    crate::wire::TransportChecksum::Verify,
                )
                .unwrap();
                if checker.claims(&parsed) != Claim::Not {
                    checker.receive(&frame);
                }
            }
        }
        changes
    }

    #[test]
    fn a_tcp_check_finds_a_backend_that_stops_listening_and_comes_back() {
        let mut checker = checker(None);
        let mut backend = SmoltcpBackend::new(b"");
        assert_eq!(run(&mut checker, &mut backend, 0, 3), vec![]);
        let health = &checker.status()[0];
        assert!(health.up);
        assert!(matches!(health.last, CheckOutcome::Passed { .. }), "{:?}", health.last);
        assert_eq!(health.failures, 0);
        assert!(health.checks >= 2);

        backend.listening = false;
        let changes = run(&mut checker, &mut backend, 3_000_000_000, 3);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert!(!changes[0].1);
        // Two refused checks, one interval apart.
        assert!(changes[0].0 <= 5_100_000_000, "{changes:?}");
        assert_eq!(checker.status()[0].last, CheckOutcome::Failed(CheckFailure::Refused));

        backend.listening = true;
        let changes = run(&mut checker, &mut backend, 6_000_000_000, 3);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert!(changes[0].1);
        // No check leaves a connection open on the backend.
        run(&mut checker, &mut backend, 9_000_000_000, 1);
        let socket = backend.sockets.get::<tcp::Socket>(backend.listener);
        assert!(matches!(socket.state(), tcp::State::Listen | tcp::State::Closed), "{}", socket.state());
    }

    #[test]
    fn an_http_check_wants_its_status() {
        let http = |status| Some(HttpCheck { path: "/healthz".into(), host: None, status });
        let mut good = checker(http(200));
        let mut backend = SmoltcpBackend::new(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(run(&mut good, &mut backend, 0, 3), vec![]);
        assert!(matches!(good.status()[0].last, CheckOutcome::Passed { .. }), "{:?}", good.status()[0].last);

        let mut wrong_status = checker(http(204));
        let mut backend = SmoltcpBackend::new(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(run(&mut wrong_status, &mut backend, 0, 3).len(), 1);
        assert_eq!(wrong_status.status()[0].last, CheckOutcome::Failed(CheckFailure::Status(200)));

        let mut not_http = checker(http(200));
        let mut backend = SmoltcpBackend::new(b"SSH-2.0-OpenSSH_9.2\r\n");
        assert_eq!(run(&mut not_http, &mut backend, 0, 3).len(), 1);
        assert_eq!(not_http.status()[0].last, CheckOutcome::Failed(CheckFailure::NotHttp));
    }

    #[test]
    fn a_silent_backend_times_out() {
        let mut checker = checker(None);
        // Nobody answers: ARP goes unanswered, so does the SYN.
        let mut changes = Vec::new();
        for step in 0..3000u64 {
            let now_ns = step * 1_000_000;
            changes.extend(checker.poll(now_ns, |_| {}));
        }
        assert_eq!(changes.len(), 1);
        assert_eq!(checker.status()[0].last, CheckOutcome::Failed(CheckFailure::Timeout));
    }

    #[test]
    fn agent_lines_parse_as_haproxy_reads_them() {
        let start = AgentState::default();
        assert_eq!(start.after("75%\n"), Some(AgentState { weight_percent: 75, ..start }));
        assert_eq!(start.after("drain"), Some(AgentState { drain: true, ..start }));
        assert_eq!(start.after("maint, 50%"), Some(AgentState { weight_percent: 50, drain: true, down: false }));
        let down = start.after("down # disk full").unwrap();
        assert!(down.down && !down.takes_sessions());
        assert_eq!(down.after("up 100%"), Some(start));
        assert_eq!(start.after("DRAIN").unwrap().after("ready"), Some(start));
        assert_eq!(start.after("0%").map(|state| state.takes_sessions()), Some(false));
        assert_eq!(start.after("maxconn:30"), None, "not the box's");
        assert_eq!(start.after(""), None);
        assert_eq!(start.after("400%").map(|state| state.weight_percent), Some(256));
        assert_eq!((start.to_string(), down.to_string(), start.after("drain").unwrap().to_string()), ("100%".into(), "down".into(), "drain".into()));
    }

    #[test]
    fn an_agent_is_asked_every_interval_and_its_word_kept() {
        let mut checker = checker_with(None, Some(9999));
        let mut backend = SmoltcpBackend::new(b"");
        backend.agent_line = b"75%\n";
        let changes = run_all(&mut checker, &mut backend, 0, 2);
        let backend_address: SocketAddr = "198.18.0.21:80".parse().unwrap();
        let seventy_five = AgentState { weight_percent: 75, ..AgentState::default() };
        assert_eq!(changes.iter().map(|(_, change)| *change).collect::<Vec<_>>(), [HealthChange::Agent(backend_address, seventy_five)]);
        assert!(changes[0].0 < 100_000_000, "the first question at once: {changes:?}");
        assert_eq!(checker.status()[0].agent_last.as_deref(), Some("75%"));
        // Said again: nothing new. Then drain, then an agent that is gone: the word holds.
        assert!(run_all(&mut checker, &mut backend, 2_000_000_000, 2).is_empty());
        backend.agent_line = b"drain";
        let changes = run_all(&mut checker, &mut backend, 4_000_000_000, 2);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].1, HealthChange::Agent(backend_address, AgentState { drain: true, ..seventy_five }));
        backend.agent_line = b"maxconn:10";
        assert!(run_all(&mut checker, &mut backend, 6_000_000_000, 2).is_empty());
        assert!(checker.status()[0].agent_last.as_deref().is_some_and(|last| last.starts_with("not understood")));
        assert_eq!(checker.status()[0].agent, Some(AgentState { drain: true, ..seventy_five }));
        // The backend's own check is unaffected by its agent.
        assert!(checker.status()[0].up);
    }
}
