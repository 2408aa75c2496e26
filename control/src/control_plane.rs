//! The control thread: one, out of band. It owns the box's session database, built from what
//! the poll loops report ([`LoopReport`]: the engines' [`Event`]s, the progress of the
//! sessions active since the last report, the counters), answers the management socket from
//! it, and sends the loops commands ([`LoopCommand`]), which they take between batches. It
//! never blocks a loop: a loop's report that finds the channel full waits in the loop for the
//! next turn (and is counted lost past a bound), and commands go over channels the loops only
//! ever `try_recv`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use cutls_dataplane::health::{AgentState, BackendHealth};
use cutls_dataplane::session::events::Opened;
use cutls_dataplane::steer::Steering;
use cutls_dataplane::session::balance::{ResponseHistogram, RESPONSE_BUCKETS_NS};
use cutls_dataplane::session::{BackendAdmin, EngineReload, BackendOptions, Balance, Counters, Event, Progress, TlsFacts};

use crate::logging::{LogHandle, LogLevel, ANOMALY_EVERY};
use crate::management::{BackendAction, BackendRow, LoopRow, Pending, Reply, Request, SessionRow, Stats, TcpRow};

/// How often a loop reports (and so how stale `show sessions` may be).
pub const REPORT_EVERY: Duration = Duration::from_millis(200);
/// A loop that has not reported for this long is shown as stalled.
pub const STALLED_AFTER: Duration = Duration::from_secs(2);
/// Ended sessions kept for `show session ID`.
const ENDED_KEPT: usize = 1024;
/// How long `session kill` waits for the loop to confirm.
const KILL_CONFIRM: Duration = Duration::from_secs(2);
/// Handshake time histogram bounds, seconds.
const HANDSHAKE_BUCKETS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0];

/// What a poll loop tells the control thread, every [`REPORT_EVERY`].
#[derive(Debug)]
pub struct LoopReport {
    pub loop_index: usize,
    /// Live sessions in the loop's engine.
    pub sessions: usize,
    /// The engine's counters, whole (not a difference: a lost report loses nothing of them).
    pub counters: Counters,
    /// The loop's own counters (hand-offs, transmit drops), whole.
    pub loop_counters: Vec<(&'static str, u64)>,
    pub events: Vec<Event>,
    /// Sessions active since the previous report.
    pub progress: Vec<Progress>,
    /// The engine's measured backend response times (ns).
    pub response_times: Vec<(SocketAddr, f64)>,
    /// Every answer's response time per backend since the engine started, whole.
    pub response_histograms: Vec<(SocketAddr, ResponseHistogram)>,
    /// The loop panicked and started again with an empty engine: every session it had is gone.
    pub restarted: bool,
    /// What its health checks found (the loop that checks; empty in the others).
    pub health: Vec<BackendHealth>,
}

impl LoopReport {
    /// What a loop sends when it has started again after a panic.
    pub fn restarted(loop_index: usize) -> LoopReport {
        LoopReport {
            loop_index,
            sessions: 0,
            counters: Counters::default(),
            loop_counters: Vec::new(),
            events: Vec::new(),
            progress: Vec::new(),
            response_times: Vec::new(),
            response_histograms: Vec::new(),
            restarted: true,
            health: Vec::new(),
        }
    }
}

/// Why the database ended a session no engine reported: its loop panicked and started again.
pub const LOOP_RESTARTED: &str = "loop_restarted";
/// Set in the box's environment, the management socket takes `debug-panic-loop` (tests).
pub const TEST_HOOKS_VARIABLE: &str = "CUTLS_TEST_HOOKS";

/// Engine counters whose growth is logged as an anomaly (besides every `alerts_*`): trouble on
/// a link, a peer or the box itself, not normal churn.
const ANOMALY_COUNTERS: &[&str] = &[
    "ended_tag_failure",
    "bad_checksum_drops_outside",
    "bad_checksum_drops_inside",
    "malformed_frames_dropped",
    "fragments_dropped",
    "orphan_backend_drops",
    "acks_out_of_range",
    "challenge_acks_held",
    "ended_backend_unreachable",
    "ended_client_unresponsive",
    "ended_backend_silent",
    "sessions_refused_full",
    "backends_out_of_rotation_refusals",
    "backends_full_refusals",
];
/// The same, of the loops' own counters.
const ANOMALY_LOOP_COUNTERS: &[&str] =
    &["handoff_drops", "transmit_drops", "control_events_lost", "outside_receive_drops", "inside_receive_drops"];

/// What the control thread asks a loop to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoopCommand {
    KillSession(u64),
    SetBackend(SocketAddr, BackendAdmin),
    /// What the health checks found of a backend, `up` or not (to the loops that do not check).
    SetBackendHealth(SocketAddr, bool),
    /// What a backend's agent said (to the loops that do not ask it).
    SetBackendAgent(SocketAddr, AgentState),
    /// A new configuration (`cutlsctl reload`, SIGHUP).
    Reload(Arc<Reload>),
    /// Test hook: panic (see [`TEST_HOOKS_VARIABLE`]).
    Panic,
}

/// A reloaded configuration, ready for the loops: made by the box's [`Reloader`] from the
/// file, the same for every loop.
#[derive(Debug)]
pub struct Reload {
    pub engine: EngineReload,
    pub steering: Steering,
    pub topology: Topology,
    /// The file's `[log] level` (`None`: leave the log as it is).
    pub log_level: Option<LogLevel>,
    /// What the operator is told (the file, what it holds).
    pub summary: String,
}

/// One reload is one value: two are equal only if they are the same.
impl PartialEq for Reload {
    fn eq(&self, other: &Reload) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for Reload {}

/// Reads the configuration file again and makes the [`Reload`], or says what is wrong (the
/// file:line:field error, a setting that needs a restart, a certificate that does not load).
pub type Reloader = Box<dyn FnMut() -> Result<Arc<Reload>, String> + Send>;

/// How the control thread reaches one loop.
pub struct LoopHandle {
    pub commands: Sender<LoopCommand>,
    /// Wakes the loop if it sleeps (its doorbell).
    pub wake: Box<dyn Fn() + Send>,
}

/// The listeners and pools, as the control plane names them.
#[derive(Clone, Debug, Default)]
pub struct Topology {
    /// Per listener (engine index): its VIP and the name of its pool.
    pub listeners: Vec<(SocketAddr, String)>,
    /// Pool name and backends, in configuration order.
    pub pools: Vec<(String, Vec<SocketAddr>)>,
    /// Per pool (same order): its balancing, and each backend's options.
    pub balancing: Vec<(Balance, Vec<BackendOptions>)>,
}

/// A session in the database.
#[derive(Clone, Debug)]
struct Record {
    loop_index: usize,
    opened: Opened,
    tls: Option<TlsFacts>,
    progress: Option<Progress>,
    /// Why (an [`EndReason`]'s name, or [`LOOP_RESTARTED`]) and when it ended.
    end: Option<(&'static str, u64)>,
}

#[derive(Clone, Copy, Debug, Default)]
struct BackendTotals {
    sessions_total: u64,
    to_backend_bytes: u64,
    to_client_bytes: u64,
}

struct LoopState {
    sessions: u64,
    last_report: Option<Instant>,
    counters: Counters,
    loop_counters: Vec<(&'static str, u64)>,
    response_times: Vec<(SocketAddr, f64)>,
    response_histograms: Vec<(SocketAddr, ResponseHistogram)>,
    /// The counters and histograms of the loop's engines before a restart (so that totals
    /// never go back).
    retired: Counters,
    retired_histograms: HashMap<SocketAddr, ResponseHistogram>,
    restarts: u64,
    /// The backends this loop was told are down (so that a refused command is sent again).
    told_down: HashSet<SocketAddr>,
    /// What this loop was told of the backends' agents.
    told_agent: HashMap<SocketAddr, AgentState>,
}

/// What the control thread counted of itself.
#[derive(Clone, Copy, Debug, Default)]
struct ControlCounts {
    reports: u64,
    events: u64,
    requests: u64,
    /// Commands a loop's full channel refused.
    commands_refused: u64,
    /// Events for sessions the database did not know (their `Opened` was lost).
    events_for_unknown_sessions: u64,
}

/// The control thread's state: the session database and what it answers from.
pub struct ControlPlane {
    start: Instant,
    topology: Topology,
    loops: Vec<LoopState>,
    handles: Vec<LoopHandle>,
    sessions: HashMap<u64, Record>,
    ended: VecDeque<Record>,
    backends: HashMap<SocketAddr, BackendTotals>,
    admin: HashMap<SocketAddr, BackendAdmin>,
    /// The health checks' latest view of each checked backend.
    health: HashMap<SocketAddr, BackendHealth>,
    /// The loop that runs the checks (the one whose reports carry them).
    health_loop: Option<usize>,
    /// How to reload, and the flag SIGHUP raises.
    reloader: Option<Reloader>,
    reload_signal: Option<Arc<AtomicBool>>,
    /// The process's log, to change its level.
    log: Option<LogHandle>,
    /// The totals of the anomaly counters at the last anomaly check, and when it was.
    anomalies_seen: BTreeMap<String, u64>,
    anomalies_checked: Option<Instant>,
    /// The service manager was told the box is ready ([`crate::service`]); how often it wants
    /// a watchdog ping, and the last one.
    ready_told: bool,
    watchdog: Option<(Duration, Option<Instant>)>,
    pending_kills: Vec<(u64, Sender<Reply>, Instant)>,
    /// Handshake times: count per bucket of [`HANDSHAKE_BUCKETS`] (and one past it), sum.
    handshake_buckets: [u64; HANDSHAKE_BUCKETS.len() + 1],
    handshake_seconds: f64,
    counts: ControlCounts,
}

impl ControlPlane {
    /// `start`: the instant the loops measure their clocks from.
    pub fn new(start: Instant, topology: Topology, handles: Vec<LoopHandle>) -> ControlPlane {
        let loops = (0..handles.len())
            .map(|_| LoopState {
                sessions: 0,
                last_report: None,
                counters: Counters::default(),
                loop_counters: Vec::new(),
                response_times: Vec::new(),
                response_histograms: Vec::new(),
                retired: Counters::default(),
                retired_histograms: HashMap::new(),
                restarts: 0,
                told_down: HashSet::new(),
                told_agent: HashMap::new(),
            })
            .collect();
        ControlPlane {
            start,
            topology,
            loops,
            handles,
            sessions: HashMap::new(),
            ended: VecDeque::new(),
            backends: HashMap::new(),
            admin: HashMap::new(),
            health: HashMap::new(),
            health_loop: None,
            reloader: None,
            reload_signal: None,
            log: None,
            anomalies_seen: BTreeMap::new(),
            anomalies_checked: None,
            ready_told: false,
            watchdog: crate::service::watchdog_interval().map(|interval| (interval, None)),
            pending_kills: Vec::new(),
            handshake_buckets: [0; HANDSHAKE_BUCKETS.len() + 1],
            handshake_seconds: 0.0,
            counts: ControlCounts::default(),
        }
    }

    /// The box can reload (`cutlsctl reload`, and SIGHUP when it raises `signal`).
    pub fn with_reloader(self, reloader: Reloader, signal: Arc<AtomicBool>) -> ControlPlane {
        ControlPlane { reloader: Some(reloader), reload_signal: Some(signal), ..self }
    }

    /// The level of `log` is the operator's (`cutlsctl log level`, reload).
    pub fn with_log(self, log: LogHandle) -> ControlPlane {
        ControlPlane { log: Some(log), ..self }
    }

    /// Runs until `stop`: reports and requests as they come, timeouts every 100 ms.
    pub fn run(mut self, reports: Receiver<LoopReport>, requests: Receiver<Pending>, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            crossbeam_channel::select! {
                recv(reports) -> report => match report {
                    Ok(report) => self.take_report(report, Instant::now()),
                    Err(_) => return,
                },
                recv(requests) -> pending => {
                    if let Ok(Pending { request, reply }) = pending {
                        self.answer(request, reply, Instant::now());
                    }
                },
                default(Duration::from_millis(100)) => {},
            }
            self.expire_kills(Instant::now());
            self.log_anomalies(Instant::now());
            self.tell_service_manager(Instant::now());
            if self.reload_signal.as_ref().is_some_and(|signal| signal.swap(false, Ordering::SeqCst)) {
                match self.reload() {
                    Ok(_) => {}
                    Err(error) => tracing::warn!(target: "cutls", "SIGHUP: reload refused, the running configuration stays: {error}"),
                }
            }
        }
    }

    /// Takes one loop's report into the database.
    pub fn take_report(&mut self, report: LoopReport, now: Instant) {
        self.counts.reports += 1;
        let Some(state) = self.loops.get_mut(report.loop_index) else { return };
        if report.restarted {
            state.restarts += 1;
            let last = std::mem::take(&mut state.counters);
            state.retired.add(&last);
            state.sessions = 0;
            state.last_report = Some(now);
            state.response_times.clear();
            for (backend, histogram) in std::mem::take(&mut state.response_histograms) {
                state.retired_histograms.entry(backend).or_default().add(&histogram);
            }
            // Its fresh engine thinks every backend up.
            state.told_down.clear();
            state.told_agent.clear();
            self.end_loop_sessions(report.loop_index, now);
            // (The checking loop itself starts again with its checks, every backend up.)
            if let Some(checker) = self.health_loop.filter(|&checker| checker != report.loop_index) {
                self.spread_health(checker);
            }
            return;
        }
        state.sessions = report.sessions as u64;
        state.last_report = Some(now);
        state.counters = report.counters;
        state.loop_counters = report.loop_counters;
        state.response_times = report.response_times;
        state.response_histograms = report.response_histograms;
        for event in report.events {
            self.counts.events += 1;
            self.take_event(report.loop_index, event);
        }
        for progress in report.progress {
            match self.sessions.get_mut(&progress.id) {
                Some(record) => record.progress = Some(progress),
                None => self.counts.events_for_unknown_sessions += 1,
            }
        }
        if !report.health.is_empty() {
            for health in report.health {
                let was_up = self.health.get(&health.backend).is_none_or(|previous| previous.up);
                if was_up != health.up {
                    let state = if health.up { "up" } else { "down" };
                    tracing::warn!(target: "cutls", "backend {} is {state}: last check {}", health.backend, health.last);
                }
                let agent_before = self.health.get(&health.backend).and_then(|previous| previous.agent);
                if let Some(agent) = health.agent.filter(|agent| Some(*agent) != agent_before) {
                    tracing::info!(target: "cutls", "backend {}: its agent says {agent}", health.backend);
                }
                self.health.insert(health.backend, health);
            }
            // The checking loop took its own findings already.
            self.health_loop = Some(report.loop_index);
            self.loops[report.loop_index].told_down = self.down_backends();
            self.loops[report.loop_index].told_agent = self.agents();
            self.spread_health(report.loop_index);
        }
    }

    fn down_backends(&self) -> HashSet<SocketAddr> {
        self.health.values().filter(|health| !health.up).map(|health| health.backend).collect()
    }

    fn agents(&self) -> HashMap<SocketAddr, AgentState> {
        self.health.values().filter_map(|health| Some((health.backend, health.agent?))).collect()
    }

    /// Tells every loop but `checker` what the health checks found, where its view differs
    /// (a loop whose channel is full is told at the next report).
    fn spread_health(&mut self, checker: usize) {
        let down = self.down_backends();
        for index in (0..self.loops.len()).filter(|&index| index != checker) {
            let told = self.loops[index].told_down.clone();
            for &backend in down.symmetric_difference(&told) {
                let up = !down.contains(&backend);
                if self.command(index, LoopCommand::SetBackendHealth(backend, up)) {
                    let told_down = &mut self.loops[index].told_down;
                    if up {
                        told_down.remove(&backend);
                    } else {
                        told_down.insert(backend);
                    }
                }
            }
            for (backend, agent) in self.agents() {
                if self.loops[index].told_agent.get(&backend) != Some(&agent) && self.command(index, LoopCommand::SetBackendAgent(backend, agent)) {
                    self.loops[index].told_agent.insert(backend, agent);
                }
            }
        }
    }

    fn take_event(&mut self, loop_index: usize, event: Event) {
        match event {
            Event::Opened(opened) => {
                self.backends.entry(opened.backend).or_default().sessions_total += 1;
                self.sessions.insert(opened.id, Record { loop_index, opened, tls: None, progress: None, end: None });
            }
            Event::Tls { id, at_ns, facts } => match self.sessions.get_mut(&id) {
                Some(record) => {
                    let seconds = at_ns.saturating_sub(record.opened.at_ns) as f64 / 1e9;
                    let bucket = HANDSHAKE_BUCKETS.iter().position(|&bound| seconds <= bound).unwrap_or(HANDSHAKE_BUCKETS.len());
                    self.handshake_buckets[bucket] += 1;
                    self.handshake_seconds += seconds;
                    record.tls = Some(facts);
                }
                None => self.counts.events_for_unknown_sessions += 1,
            },
            Event::Rerouted { id, backend, backend_source } => match self.sessions.get_mut(&id) {
                Some(record) => {
                    record.opened.backend = backend;
                    record.opened.backend_source = backend_source;
                    self.backends.entry(backend).or_default().sessions_total += 1;
                }
                None => self.counts.events_for_unknown_sessions += 1,
            },
            Event::Ended { id, at_ns, reason, progress } => {
                let Some(mut record) = self.sessions.remove(&id) else {
                    self.counts.events_for_unknown_sessions += 1;
                    return;
                };
                record.progress = Some(progress);
                self.retire(record, reason.name(), at_ns);
            }
        }
    }

    /// A session taken out of the live database: its bytes go to its backend's totals, a kill
    /// waiting for it is answered, and it is kept among the last ended.
    fn retire(&mut self, mut record: Record, reason: &'static str, at_ns: u64) {
        let id = record.opened.id;
        record.end = Some((reason, at_ns));
        let (to_backend, to_client) = record.progress.map_or((0, 0), |p| (p.to_backend_bytes, p.to_client_bytes));
        tracing::info!(
            target: "cutls::session",
            id,
            reason,
            client = %record.opened.client,
            vip = %record.opened.vip,
            backend = %record.opened.backend,
            sni = record.tls.as_ref().and_then(|tls| tls.server_name.as_deref()).unwrap_or("-"),
            version = record.tls.as_ref().map_or("-", |tls| tls.version),
            duration_ms = at_ns.saturating_sub(record.opened.at_ns) / 1_000_000,
            to_backend,
            to_client,
            "session ended"
        );
        let totals = self.backends.entry(record.opened.backend).or_default();
        if let Some(progress) = record.progress {
            totals.to_backend_bytes += progress.to_backend_bytes;
            totals.to_client_bytes += progress.to_client_bytes;
        }
        self.pending_kills.retain(|(kill, reply, _)| {
            if *kill != id {
                return true;
            }
            let _ = reply.try_send(Reply::Done { message: format!("session {id} ended: {reason}") });
            false
        });
        if self.ended.len() == ENDED_KEPT {
            self.ended.pop_front();
        }
        self.ended.push_back(record);
    }

    /// Loop `index` started again empty: its sessions are over ([`LOOP_RESTARTED`]).
    fn end_loop_sessions(&mut self, index: usize, now: Instant) {
        let at_ns = now.saturating_duration_since(self.start).as_nanos() as u64;
        let ids: Vec<u64> = self.sessions.iter().filter(|(_, record)| record.loop_index == index).map(|(id, _)| *id).collect();
        for id in ids {
            if let Some(record) = self.sessions.remove(&id) {
                self.retire(record, LOOP_RESTARTED, at_ns);
            }
        }
    }

    /// Answers `request` on `reply` (at once, or for `session kill` once the loop confirms).
    pub fn answer(&mut self, request: Request, reply: Sender<Reply>, now: Instant) {
        self.counts.requests += 1;
        let answer = match request {
            Request::ShowStats {} => Reply::Stats(self.stats(now)),
            Request::ShowSessions { backend, client, listener } => match self.filtered_sessions(backend, client, listener, now) {
                Ok(sessions) => Reply::Sessions { sessions },
                Err(error) => Reply::Error { error },
            },
            Request::ShowSession { id } => {
                let record = self.sessions.get(&id).or_else(|| self.ended.iter().rev().find(|record| record.opened.id == id));
                match record {
                    Some(record) => Reply::Session { session: self.row(record, now) },
                    None => Reply::Error { error: format!("no session {id} (live or among the last {ENDED_KEPT} ended)") },
                }
            }
            Request::ShowBackends {} => Reply::Backends { backends: self.backend_rows() },
            Request::Backend { action, backend } => self.set_backend(action, &backend),
            Request::SessionKill { id } => match self.sessions.get(&id).map(|record| record.loop_index) {
                None => Reply::Error { error: format!("no live session {id}") },
                Some(loop_index) => {
                    if self.command(loop_index, LoopCommand::KillSession(id)) {
                        self.pending_kills.push((id, reply, now + KILL_CONFIRM));
                        return;
                    }
                    Reply::Error { error: format!("loop {loop_index} is not taking commands") }
                }
            },
            Request::ShowMetrics {} => Reply::Metrics { text: self.metrics(now) },
            Request::LogLevel { level } => self.log_level(level.as_deref()),
            Request::Reload {} => match self.reload() {
                Ok(message) => Reply::Done { message },
                Err(error) => {
                    tracing::warn!(target: "cutls", "reload refused, the running configuration stays: {error}");
                    Reply::Error { error: format!("reload refused, the running configuration stays: {error}") }
                }
            },
            Request::DebugPanicLoop { loop_index } => {
                if std::env::var_os(TEST_HOOKS_VARIABLE).is_none() {
                    Reply::Error { error: format!("test hooks are off (the box runs without {TEST_HOOKS_VARIABLE})") }
                } else if self.command(loop_index, LoopCommand::Panic) {
                    Reply::Done { message: format!("loop {loop_index} told to panic") }
                } else {
                    Reply::Error { error: format!("no loop {loop_index} taking commands") }
                }
            }
        };
        let _ = reply.try_send(answer);
    }

    fn expire_kills(&mut self, now: Instant) {
        self.pending_kills.retain(|(id, reply, deadline)| {
            if *deadline > now {
                return true;
            }
            let _ = reply.try_send(Reply::Error { error: format!("session {id}: its loop did not confirm the kill") });
            false
        });
    }

    /// `cutlsctl log level [L]`: sets the level, or says it.
    fn log_level(&mut self, level: Option<&str>) -> Reply {
        let Some(log) = &self.log else { return Reply::Error { error: "this box logs through no handle it can change".into() } };
        let Some(level) = level else { return Reply::Done { message: format!("log level {}", log.level()) } };
        match level.parse::<LogLevel>().and_then(|level| log.set_level(level).map(|()| level)) {
            Ok(level) => {
                tracing::info!(target: "cutls", "log level {level}");
                Reply::Done { message: format!("log level {level}") }
            }
            Err(error) => Reply::Error { error },
        }
    }

    /// At most every [`ANOMALY_EVERY`], one warning naming the counters of trouble that grew
    /// since the last, summed over the loops (the line a flood or a broken link leaves in the
    /// log, however many frames it drops).
    fn log_anomalies(&mut self, now: Instant) {
        if self.anomalies_checked.is_some_and(|at| now.duration_since(at) < ANOMALY_EVERY) {
            return;
        }
        self.anomalies_checked = Some(now);
        let current: BTreeMap<String, u64> = self
            .totals()
            .into_iter()
            .filter(|(name, _)| {
                ANOMALY_COUNTERS.contains(&name.as_str()) || ANOMALY_LOOP_COUNTERS.contains(&name.as_str()) || name.starts_with("alerts_")
            })
            .collect();
        let grew: Vec<String> = current
            .iter()
            .filter_map(|(name, value)| {
                let before = self.anomalies_seen.get(name).copied().unwrap_or(0);
                (*value > before).then(|| format!("{name} +{}", value - before))
            })
            .collect();
        self.anomalies_seen = current;
        if !grew.is_empty() {
            tracing::warn!(target: "cutls::anomaly", "in the last {} s: {}", ANOMALY_EVERY.as_secs(), grew.join(", "));
        }
    }

    /// Readiness once every loop has reported (they turn), and the watchdog's pings while none
    /// has stalled ([`crate::service`]).
    fn tell_service_manager(&mut self, now: Instant) {
        if !self.ready_told && self.loops.iter().all(|state| state.last_report.is_some()) {
            self.ready_told = true;
            let status = format!("READY=1\nSTATUS=serving on {} poll loop(s)", self.loops.len());
            if let Err(error) = crate::service::notify(&status) {
                tracing::warn!(target: "cutls", "cannot tell the service manager the box is ready: {error}");
            }
        }
        if let Some((interval, last)) = &mut self.watchdog {
            let stalled = self.loops.iter().any(|state| state.last_report.is_none_or(|at| now.saturating_duration_since(at) > STALLED_AFTER));
            if !stalled && last.is_none_or(|at| now.saturating_duration_since(at) >= *interval / 2) {
                *last = Some(now);
                let _ = crate::service::notify("WATCHDOG=1");
            }
        }
    }

    /// Reads the file again and gives every loop the result (the service manager sees the
    /// box reloading meanwhile).
    fn reload(&mut self) -> Result<String, String> {
        let _ = crate::service::notify("RELOADING=1");
        let result = self.reload_now();
        let status = match &result {
            Ok(summary) => format!("READY=1\nSTATUS=reloaded {summary}"),
            Err(error) => format!("READY=1\nSTATUS=reload refused: {error}"),
        };
        let _ = crate::service::notify(&status);
        result
    }

    fn reload_now(&mut self) -> Result<String, String> {
        let Some(reloader) = self.reloader.as_mut() else { return Err("this box has no configuration file to read again".into()) };
        let reload = reloader()?;
        let refused: Vec<usize> =
            (0..self.handles.len()).filter(|&index| !self.command(index, LoopCommand::Reload(Arc::clone(&reload)))).collect();
        self.topology = reload.topology.clone();
        // Backends no longer checked (or in no pool) have no health to show.
        let checked: HashSet<SocketAddr> = reload.engine.health.iter().flat_map(|setup| setup.backends()).collect();
        self.health.retain(|backend, _| checked.contains(backend));
        if !refused.is_empty() {
            // Reloading again is harmless: the loops that took it take the same again.
            return Err(format!("loops {refused:?} did not take it (their command channel is full): reload again"));
        }
        if let (Some(log), Some(level)) = (&self.log, reload.log_level) {
            if let Err(error) = log.set_level(level) {
                tracing::warn!(target: "cutls", "log level {level}: {error}");
            }
        }
        tracing::info!(target: "cutls", "reloaded: {}", reload.summary);
        Ok(reload.summary.clone())
    }

    /// Sends `command` to loop `index` and wakes it; `false` if its channel is full or gone.
    fn command(&mut self, index: usize, command: LoopCommand) -> bool {
        let Some(handle) = self.handles.get(index) else { return false };
        if handle.commands.try_send(command).is_err() {
            self.counts.commands_refused += 1;
            return false;
        }
        (handle.wake)();
        true
    }

    fn set_backend(&mut self, action: BackendAction, name: &str) -> Reply {
        let address = match self.backend_named(name) {
            Ok(address) => address,
            Err(error) => return Reply::Error { error },
        };
        let admin = match action {
            BackendAction::Drain => BackendAdmin::Draining,
            BackendAction::Enable => BackendAdmin::Enabled,
            BackendAction::Disable => BackendAdmin::Disabled,
        };
        let mut refused = Vec::new();
        for index in 0..self.handles.len() {
            if !self.command(index, LoopCommand::SetBackend(address, admin)) {
                refused.push(index);
            }
        }
        if !refused.is_empty() {
            return Reply::Error { error: format!("loops {refused:?} are not taking commands: try again") };
        }
        match admin {
            BackendAdmin::Enabled => self.admin.remove(&address),
            _ => self.admin.insert(address, admin),
        };
        let active = self.sessions.values().filter(|record| record.opened.backend == address).count();
        let message = match admin {
            BackendAdmin::Enabled => format!("{address}: in rotation"),
            BackendAdmin::Draining => format!("{address}: draining, no new sessions; {active} go on until they end"),
            BackendAdmin::Disabled => format!("{address}: disabled, no new sessions; {active} reset"),
        };
        Reply::Done { message }
    }

    /// `POOL/ADDRESS:PORT` or `ADDRESS:PORT`, which must be a configured backend.
    fn backend_named(&self, name: &str) -> Result<SocketAddr, String> {
        let (pool, address) = match name.rsplit_once('/') {
            Some((pool, address)) => (Some(pool), address),
            None => (None, name),
        };
        let address: SocketAddr = address.parse().map_err(|_| format!("{name:?}: not POOL/ADDRESS:PORT or ADDRESS:PORT"))?;
        let known = self
            .topology
            .pools
            .iter()
            .filter(|(pool_name, _)| pool.is_none_or(|pool| pool == pool_name))
            .any(|(_, backends)| backends.contains(&address));
        if known {
            Ok(address)
        } else {
            Err(format!("{name}: no such backend (cutlsctl show backends lists them)"))
        }
    }

    fn filtered_sessions(
        &self,
        backend: Option<String>,
        client: Option<String>,
        listener: Option<String>,
        now: Instant,
    ) -> Result<Vec<SessionRow>, String> {
        let backend = backend.map(|name| self.backend_named(&name)).transpose()?;
        let client: Option<IpAddr> =
            client.map(|text| text.parse().map_err(|_| format!("client {text:?}: not an IP address"))).transpose()?;
        let listener: Option<SocketAddr> =
            listener.map(|text| text.parse().map_err(|_| format!("listener {text:?}: not a VIP address:port"))).transpose()?;
        let mut rows: Vec<SessionRow> = self
            .sessions
            .values()
            .filter(|record| backend.is_none_or(|backend| record.opened.backend == backend))
            .filter(|record| client.is_none_or(|client| record.opened.client.ip() == client))
            .filter(|record| listener.is_none_or(|vip| record.opened.vip == vip))
            .map(|record| self.row(record, now))
            .collect();
        rows.sort_by_key(|row| row.id);
        Ok(rows)
    }

    fn row(&self, record: &Record, now: Instant) -> SessionRow {
        let now_ns = now.saturating_duration_since(self.start).as_nanos() as u64;
        let end_ns = record.end.map_or(now_ns, |(_, at_ns)| at_ns);
        let progress = record.progress;
        let last_activity_ns = progress.map_or(record.opened.at_ns, |progress| progress.last_activity_ns);
        let (pool, listener) = match self.topology.listeners.get(record.opened.listener) {
            Some((vip, pool)) => (pool.clone(), vip.to_string()),
            None => (String::new(), record.opened.vip.to_string()),
        };
        let state = match (record.end, progress) {
            (Some(_), _) => "ended".to_string(),
            (None, Some(progress)) => progress.phase.name().to_string(),
            (None, None) => "handshake".to_string(),
        };
        SessionRow {
            id: record.opened.id,
            loop_index: record.loop_index,
            listener,
            pool,
            client: record.opened.client.to_string(),
            backend: record.opened.backend.to_string(),
            backend_source: record.opened.backend_source.to_string(),
            server_name: record.tls.as_ref().and_then(|tls| tls.server_name.clone()),
            alpn: record.tls.as_ref().and_then(|tls| tls.alpn.clone()),
            tls_version: record.tls.as_ref().map(|tls| tls.version.to_string()),
            suite: record.tls.as_ref().map(|tls| tls.suite.to_string()),
            state,
            age_seconds: seconds(end_ns.saturating_sub(record.opened.at_ns)),
            idle_seconds: seconds(end_ns.saturating_sub(last_activity_ns)),
            to_backend_bytes: progress.map_or(0, |progress| progress.to_backend_bytes),
            to_client_bytes: progress.map_or(0, |progress| progress.to_client_bytes),
            records_to_client: progress.map_or(0, |progress| progress.records_to_client),
            tcp: progress.and_then(|progress| progress.tcp).map(|tcp| TcpRow {
                to_client_next_seq: tcp.to_client_next_seq,
                client_acked_seq: tcp.client_acked_seq,
                ack_to_client: tcp.ack_to_client,
                to_backend_next_seq: tcp.to_backend_next_seq,
                backend_acked_seq: tcp.backend_acked_seq,
                ack_to_backend: tcp.ack_to_backend,
                records_from_client: tcp.records_from_client,
            }),
            end_reason: record.end.map(|(reason, _)| reason.to_string()),
        }
    }

    fn backend_rows(&self) -> Vec<BackendRow> {
        let mut rows = Vec::new();
        for (index, (pool, backends)) in self.topology.pools.iter().enumerate() {
            let (balance, options) = self.topology.balancing.get(index).map_or((Balance::default(), &[][..]), |(b, o)| (*b, &o[..]));
            for (position, &address) in backends.iter().enumerate() {
                let option = options.get(position).copied().unwrap_or_default();
                // The slowest loop's view: each loop measures the answers it sees.
                let response_ms = self
                    .loops
                    .iter()
                    .flat_map(|state| state.response_times.iter())
                    .filter(|(backend, _)| *backend == address)
                    .map(|(_, ns)| ns / 1e6)
                    .reduce(f64::max)
                    .map(|ms| (ms * 1000.0).round() / 1000.0);
                let totals = self.backends.get(&address).copied().unwrap_or_default();
                let live: Vec<&Record> = self.sessions.values().filter(|record| record.opened.backend == address).collect();
                let live_bytes = |field: fn(&Progress) -> u64| live.iter().filter_map(|record| record.progress.as_ref()).map(field).sum::<u64>();
                let admin = self.admin.get(&address).copied().unwrap_or(BackendAdmin::Enabled);
                let health = self.health.get(&address);
                rows.push(BackendRow {
                    pool: pool.clone(),
                    address: address.to_string(),
                    admin: match admin {
                        BackendAdmin::Enabled => "enabled",
                        BackendAdmin::Draining => "draining",
                        BackendAdmin::Disabled => "disabled",
                    }
                    .to_string(),
                    in_rotation: admin == BackendAdmin::Enabled
                        && health.is_none_or(|health| health.up && health.agent.is_none_or(|agent| agent.takes_sessions())),
                    balance: balance_name(balance).to_string(),
                    weight: option.weight,
                    max_sessions: option.max_sessions.map(|limit| limit as u64),
                    response_ms,
                    health: match health {
                        None => "unchecked",
                        Some(health) if health.up => "up",
                        Some(_) => "down",
                    }
                    .to_string(),
                    last_check: health.map(|health| health.last.to_string()),
                    agent: health.and_then(|health| health.agent).map(|agent| agent.to_string()),
                    agent_last: health.and_then(|health| health.agent_last.clone()),
                    checks: health.map_or(0, |health| health.checks),
                    check_failures: health.map_or(0, |health| health.failures),
                    sessions_active: live.len() as u64,
                    sessions_total: totals.sessions_total,
                    to_backend_bytes: totals.to_backend_bytes + live_bytes(|progress| progress.to_backend_bytes),
                    to_client_bytes: totals.to_client_bytes + live_bytes(|progress| progress.to_client_bytes),
                });
            }
        }
        rows
    }

    fn totals(&self) -> BTreeMap<String, u64> {
        let mut totals = Counters::default();
        let mut extra: BTreeMap<String, u64> = BTreeMap::new();
        for state in &self.loops {
            totals.add(&state.counters);
            totals.add(&state.retired);
            for (name, value) in &state.loop_counters {
                *extra.entry(name.to_string()).or_default() += value;
            }
        }
        let mut counters: BTreeMap<String, u64> = totals.fields().into_iter().map(|(name, value)| (name.to_string(), value)).collect();
        counters.extend(extra);
        counters
    }

    fn stats(&self, now: Instant) -> Stats {
        let loops = self
            .loops
            .iter()
            .enumerate()
            .map(|(index, state)| {
                let age = state.last_report.map_or(now.saturating_duration_since(self.start), |at| now.saturating_duration_since(at));
                LoopRow {
                    index,
                    sessions: state.sessions,
                    last_report_ms: age.as_millis() as u64,
                    stalled: age > STALLED_AFTER,
                    restarts: state.restarts,
                }
            })
            .collect();
        let counts = self.counts;
        let control = BTreeMap::from([
            ("reports".to_string(), counts.reports),
            ("events".to_string(), counts.events),
            ("requests".to_string(), counts.requests),
            ("commands_refused".to_string(), counts.commands_refused),
            ("events_for_unknown_sessions".to_string(), counts.events_for_unknown_sessions),
        ]);
        Stats {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: now.saturating_duration_since(self.start).as_secs_f64(),
            sessions: self.sessions.len() as u64,
            loops,
            counters: self.totals(),
            control,
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    fn metrics(&self, now: Instant) -> String {
        let mut text = String::new();
        let stats = self.stats(now);
        for (name, value) in &stats.counters {
            let _ = writeln!(text, "# TYPE cutls_{name}_total counter\ncutls_{name}_total {value}");
        }
        let _ = writeln!(text, "# TYPE cutls_sessions gauge\ncutls_sessions {}", stats.sessions);
        let _ = writeln!(text, "# TYPE cutls_uptime_seconds gauge\ncutls_uptime_seconds {:.3}", stats.uptime_seconds);
        let _ = writeln!(text, "# TYPE cutls_loop_sessions gauge");
        for row in &stats.loops {
            let _ = writeln!(text, "cutls_loop_sessions{{loop=\"{}\"}} {}", row.index, row.sessions);
        }
        let _ = writeln!(text, "# TYPE cutls_loop_stalled gauge");
        for row in &stats.loops {
            let _ = writeln!(text, "cutls_loop_stalled{{loop=\"{}\"}} {}", row.index, u8::from(row.stalled));
        }
        let backends = self.backend_rows();
        let metric = |text: &mut String, name: &str, kind: &str, value: fn(&BackendRow) -> u64| {
            let _ = writeln!(text, "# TYPE cutls_backend_{name} {kind}");
            for row in &backends {
                let _ = writeln!(text, "cutls_backend_{name}{{pool=\"{}\",backend=\"{}\"}} {}", row.pool, row.address, value(row));
            }
        };
        metric(&mut text, "sessions_active", "gauge", |row| row.sessions_active);
        metric(&mut text, "sessions_total", "counter", |row| row.sessions_total);
        metric(&mut text, "to_backend_bytes_total", "counter", |row| row.to_backend_bytes);
        metric(&mut text, "to_client_bytes_total", "counter", |row| row.to_client_bytes);
        metric(&mut text, "in_rotation", "gauge", |row| u64::from(row.in_rotation));
        let _ = writeln!(text, "# TYPE cutls_backend_agent_weight_percent gauge");
        for row in &backends {
            let Some(percent) = row.agent.as_deref().and_then(|agent| agent.strip_suffix('%')) else { continue };
            let _ = writeln!(text, "cutls_backend_agent_weight_percent{{pool=\"{}\",backend=\"{}\"}} {percent}", row.pool, row.address);
        }
        metric(&mut text, "up", "gauge", |row| u64::from(row.health != "down"));
        metric(&mut text, "check_failures_total", "counter", |row| row.check_failures);
        let _ = writeln!(text, "# TYPE cutls_backend_response_seconds gauge");
        for row in &backends {
            if let Some(ms) = row.response_ms {
                let _ = writeln!(text, "cutls_backend_response_seconds{{pool=\"{}\",backend=\"{}\"}} {:.6}", row.pool, row.address, ms / 1e3);
            }
        }
        // Every answer's response time, per backend over the loops (a backend in two pools is
        // shown in each).
        let mut histograms: HashMap<SocketAddr, ResponseHistogram> = HashMap::new();
        for state in &self.loops {
            let live = state.response_histograms.iter().map(|(backend, histogram)| (backend, histogram));
            for (backend, histogram) in live.chain(state.retired_histograms.iter()) {
                histograms.entry(*backend).or_default().add(histogram);
            }
        }
        let _ = writeln!(text, "# TYPE cutls_backend_response_time_seconds histogram");
        for row in &backends {
            let Some(histogram) = row.address.parse::<SocketAddr>().ok().and_then(|address| histograms.get(&address)) else { continue };
            let labels = format!("pool=\"{}\",backend=\"{}\"", row.pool, row.address);
            let mut cumulative = 0;
            for (bound, count) in RESPONSE_BUCKETS_NS.iter().zip(&histogram.buckets) {
                cumulative += count;
                let _ = writeln!(text, "cutls_backend_response_time_seconds_bucket{{{labels},le=\"{}\"}} {cumulative}", *bound as f64 / 1e9);
            }
            let _ = writeln!(text, "cutls_backend_response_time_seconds_bucket{{{labels},le=\"+Inf\"}} {}", histogram.count());
            let _ = writeln!(text, "cutls_backend_response_time_seconds_sum{{{labels}}} {:.6}", histogram.sum_ns as f64 / 1e9);
            let _ = writeln!(text, "cutls_backend_response_time_seconds_count{{{labels}}} {}", histogram.count());
        }
        let _ = writeln!(text, "# TYPE cutls_handshake_seconds histogram");
        let mut cumulative = 0;
        for (bound, count) in HANDSHAKE_BUCKETS.iter().zip(&self.handshake_buckets) {
            cumulative += count;
            let _ = writeln!(text, "cutls_handshake_seconds_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.handshake_buckets[HANDSHAKE_BUCKETS.len()];
        let _ = writeln!(text, "cutls_handshake_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(text, "cutls_handshake_seconds_sum {:.6}", self.handshake_seconds);
        let _ = writeln!(text, "cutls_handshake_seconds_count {cumulative}");
        text
    }
}

fn balance_name(balance: Balance) -> &'static str {
    match balance {
        Balance::RoundRobin => "round-robin",
        Balance::LeastSessions => "least-sessions",
        Balance::LeastLoad => "least-load",
    }
}

fn seconds(ns: u64) -> f64 {
    (ns as f64 / 1e6).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutls_dataplane::health::{CheckFailure, CheckOutcome};
    use cutls_dataplane::session::events::TcpFacts;
    use cutls_dataplane::session::{EndReason, Phase};

    fn address(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn plane(loops: usize) -> (ControlPlane, Vec<Receiver<LoopCommand>>, Instant) {
        let start = Instant::now();
        let topology = Topology {
            listeners: vec![(address("192.0.2.1:443"), "web".into())],
            pools: vec![("web".into(), vec![address("10.0.0.2:8080"), address("10.0.0.3:8080")])],
            balancing: vec![(Balance::LeastLoad, vec![BackendOptions::default(), BackendOptions { weight: 2, max_sessions: Some(9) }])],
        };
        let mut receivers = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..loops {
            let (commands, receiver) = crossbeam_channel::bounded(4);
            handles.push(LoopHandle { commands, wake: Box::new(|| {}) });
            receivers.push(receiver);
        }
        (ControlPlane::new(start, topology, handles), receivers, start)
    }

    fn opened(id: u64, client: &str, backend: &str) -> Event {
        Event::Opened(Opened {
            id,
            listener: 0,
            client: address(client),
            vip: address("192.0.2.1:443"),
            backend: address(backend),
            backend_source: address(client),
            at_ns: 1_000_000,
        })
    }

    fn progress(id: u64, to_client_bytes: u64) -> Progress {
        let tcp = TcpFacts {
            to_client_next_seq: 4_000_000_000u32.wrapping_add(to_client_bytes as u32),
            client_acked_seq: 4_000_000_000,
            ack_to_client: 7,
            to_backend_next_seq: 107,
            backend_acked_seq: 107,
            ack_to_backend: 9,
            records_from_client: 1,
        };
        Progress { id, phase: Phase::Spliced, last_activity_ns: 2_000_000, to_backend_bytes: 100, to_client_bytes, records_to_client: 3, tcp: Some(tcp) }
    }

    fn report(loop_index: usize, events: Vec<Event>, progress: Vec<Progress>) -> LoopReport {
        LoopReport { events, progress, restarted: false, ..LoopReport::restarted(loop_index) }
    }

    fn ask(plane: &mut ControlPlane, request: Request, now: Instant) -> Reply {
        let (sender, receiver) = crossbeam_channel::bounded(1);
        plane.answer(request, sender, now);
        receiver.try_recv().expect("an answer at once")
    }

    #[test]
    fn the_database_follows_the_loops_events_and_filters_sessions() {
        let (mut plane, _commands, start) = plane(2);
        let now = start + Duration::from_millis(5);
        plane.take_report(report(0, vec![opened(1, "198.51.100.7:40000", "10.0.0.2:8080")], vec![progress(1, 5000)]), now);
        plane.take_report(report(1, vec![opened(2, "198.51.100.8:40001", "10.0.0.3:8080")], vec![]), now);
        let Reply::Sessions { sessions } = ask(&mut plane, Request::ShowSessions { backend: None, client: None, listener: None }, now) else {
            panic!("not sessions")
        };
        assert_eq!(sessions.iter().map(|row| (row.id, row.loop_index)).collect::<Vec<_>>(), [(1, 0), (2, 1)]);
        assert_eq!((sessions[0].state.as_str(), sessions[0].to_client_bytes, sessions[0].pool.as_str()), ("spliced", 5000, "web"));
        assert_eq!(sessions[0].age_seconds, 0.004);
        let by_backend = Request::ShowSessions { backend: Some("web/10.0.0.3:8080".into()), client: None, listener: None };
        let Reply::Sessions { sessions } = ask(&mut plane, by_backend, now) else { panic!("not sessions") };
        assert_eq!(sessions.iter().map(|row| row.id).collect::<Vec<_>>(), [2]);
        let by_client = Request::ShowSessions { backend: None, client: Some("198.51.100.7".into()), listener: None };
        let Reply::Sessions { sessions } = ask(&mut plane, by_client, now) else { panic!("not sessions") };
        assert_eq!(sessions.iter().map(|row| row.id).collect::<Vec<_>>(), [1]);
        let unknown = Request::ShowSessions { backend: Some("10.9.9.9:1".into()), client: None, listener: None };
        assert!(matches!(ask(&mut plane, unknown, now), Reply::Error { .. }));

        let ended = Event::Ended { id: 1, at_ns: 3_000_000, reason: EndReason::Fin, progress: progress(1, 9000) };
        plane.take_report(report(0, vec![ended], vec![]), now);
        let Reply::Session { session } = ask(&mut plane, Request::ShowSession { id: 1 }, now) else { panic!("not a session") };
        assert_eq!((session.state.as_str(), session.end_reason.as_deref(), session.to_client_bytes), ("ended", Some("fin"), 9000));
        // Its TCP state as it last stood, the sequence numbers as on the wire.
        let tcp = session.tcp.expect("tcp facts");
        assert_eq!((tcp.to_client_next_seq, tcp.client_acked_seq, tcp.ack_to_backend), (4_000_009_000, 4_000_000_000, 9));
        let Reply::Backends { backends } = ask(&mut plane, Request::ShowBackends {}, now) else { panic!("not backends") };
        let rows: Vec<_> = backends.iter().map(|row| (row.address.as_str(), row.sessions_active, row.sessions_total, row.to_client_bytes)).collect();
        assert_eq!(rows, [("10.0.0.2:8080", 0, 1, 9000), ("10.0.0.3:8080", 1, 1, 0)]);
    }

    #[test]
    fn a_kill_goes_to_the_owning_loop_and_is_answered_when_it_ends() {
        let (mut plane, commands, start) = plane(2);
        plane.take_report(report(1, vec![opened(4, "198.51.100.7:40000", "10.0.0.2:8080")], vec![]), start);
        let (sender, answer) = crossbeam_channel::bounded(1);
        plane.answer(Request::SessionKill { id: 4 }, sender, start);
        assert_eq!(commands[1].try_recv(), Ok(LoopCommand::KillSession(4)));
        assert!(commands[0].try_recv().is_err());
        assert!(answer.try_recv().is_err(), "answered before the loop confirmed");
        let ended = Event::Ended { id: 4, at_ns: 0, reason: EndReason::Killed, progress: progress(4, 0) };
        plane.take_report(report(1, vec![ended], vec![]), start);
        assert_eq!(answer.try_recv(), Ok(Reply::Done { message: "session 4 ended: killed".into() }));
        assert!(matches!(ask(&mut plane, Request::SessionKill { id: 4 }, start), Reply::Error { .. }));

        // A loop that never confirms: an error after the timeout, not a hang.
        plane.take_report(report(0, vec![opened(5, "198.51.100.7:40001", "10.0.0.2:8080")], vec![]), start);
        let (sender, answer) = crossbeam_channel::bounded(1);
        plane.answer(Request::SessionKill { id: 5 }, sender, start);
        plane.expire_kills(start + KILL_CONFIRM + Duration::from_millis(1));
        assert!(matches!(answer.try_recv(), Ok(Reply::Error { .. })));
    }

    #[test]
    fn a_restarted_loop_ends_its_sessions_and_keeps_the_totals() {
        let (mut plane, _commands, start) = plane(2);
        let mut first = report(0, vec![opened(1, "198.51.100.7:40000", "10.0.0.2:8080")], vec![progress(1, 700)]);
        first.counters.sessions_started = 5;
        plane.take_report(first, start);
        plane.take_report(report(1, vec![opened(2, "198.51.100.8:40000", "10.0.0.3:8080")], vec![]), start);
        plane.take_report(LoopReport::restarted(0), start);
        let mut after = report(0, vec![], vec![]);
        after.counters.sessions_started = 1;
        plane.take_report(after, start);
        let Reply::Stats(stats) = ask(&mut plane, Request::ShowStats {}, start) else { panic!("not stats") };
        assert_eq!(stats.counters["sessions_started"], 6, "the dead engine's counts stay in the totals");
        assert_eq!((stats.sessions, stats.loops[0].restarts, stats.loops[1].restarts), (1, 1, 0));
        let Reply::Session { session } = ask(&mut plane, Request::ShowSession { id: 1 }, start) else { panic!("not a session") };
        assert_eq!(session.end_reason.as_deref(), Some(LOOP_RESTARTED));
        let Reply::Backends { backends } = ask(&mut plane, Request::ShowBackends {}, start) else { panic!("not backends") };
        assert_eq!((backends[0].sessions_active, backends[0].to_client_bytes), (0, 700));
        assert_eq!(backends[1].sessions_active, 1, "the other loop's session stays");
    }

    #[test]
    fn backend_states_go_to_every_loop() {
        let (mut plane, commands, start) = plane(2);
        let drain = Request::Backend { action: BackendAction::Drain, backend: "web/10.0.0.2:8080".into() };
        assert!(matches!(ask(&mut plane, drain, start), Reply::Done { .. }));
        for receiver in &commands {
            assert_eq!(receiver.try_recv(), Ok(LoopCommand::SetBackend(address("10.0.0.2:8080"), BackendAdmin::Draining)));
        }
        let Reply::Backends { backends } = ask(&mut plane, Request::ShowBackends {}, start) else { panic!("not backends") };
        assert_eq!(backends[0].admin, "draining");
        assert_eq!((backends[1].balance.as_str(), backends[1].weight, backends[1].max_sessions), ("least-load", 2, Some(9)));
        assert_eq!(backends[0].response_ms, None, "nothing measured yet");
        let mut measured = report(1, vec![], vec![]);
        measured.response_times = vec![(address("10.0.0.2:8080"), 12_500_000.0)];
        plane.take_report(measured, start);
        let Reply::Backends { backends } = ask(&mut plane, Request::ShowBackends {}, start) else { panic!("not backends") };
        assert_eq!(backends[0].response_ms, Some(12.5));
        // Response-time histograms: summed over the loops, kept across a loop's restart.
        let histogram = |samples: &[u64]| {
            let mut histogram = ResponseHistogram::default();
            samples.iter().for_each(|&sample| histogram.record(sample));
            histogram
        };
        for (index, samples) in [(0, &[3_000_000u64, 40_000_000][..]), (1, &[3_000_000][..])] {
            let mut measured = report(index, vec![], vec![]);
            measured.response_histograms = vec![(address("10.0.0.2:8080"), histogram(samples))];
            plane.take_report(measured, start);
        }
        plane.take_report(LoopReport::restarted(1), start);
        let Reply::Metrics { text } = ask(&mut plane, Request::ShowMetrics {}, start) else { panic!("not metrics") };
        let labels = "pool=\"web\",backend=\"10.0.0.2:8080\"";
        for line in [
            format!("cutls_backend_response_time_seconds_bucket{{{labels},le=\"0.002\"}} 0"),
            format!("cutls_backend_response_time_seconds_bucket{{{labels},le=\"0.005\"}} 2"),
            format!("cutls_backend_response_time_seconds_bucket{{{labels},le=\"0.05\"}} 3"),
            format!("cutls_backend_response_time_seconds_bucket{{{labels},le=\"+Inf\"}} 3"),
            format!("cutls_backend_response_time_seconds_sum{{{labels}}} 0.046000"),
            format!("cutls_backend_response_time_seconds_count{{{labels}}} 3"),
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in {text}");
        }
        let wrong_pool = Request::Backend { action: BackendAction::Enable, backend: "api/10.0.0.2:8080".into() };
        assert!(matches!(ask(&mut plane, wrong_pool, start), Reply::Error { .. }));
    }

    #[test]
    fn health_found_by_the_checking_loop_goes_to_the_others() {
        let (mut plane, commands, start) = plane(3);
        let backend = address("10.0.0.2:8080");
        let health = |up: bool, last: CheckOutcome| BackendHealth {
            backend,
            up,
            last,
            last_check_ns: 1,
            changed_ns: 1,
            checks: 5,
            failures: 2,
            agent: None,
            agent_last: None,
        };
        let checked = |up, last| LoopReport { health: vec![health(up, last)], ..report(0, vec![], vec![]) };
        plane.take_report(checked(true, CheckOutcome::Passed { latency_ns: 400_000 }), start);
        assert!(commands.iter().all(|receiver| receiver.try_recv().is_err()), "up from the start: nothing to tell");
        plane.take_report(checked(false, CheckOutcome::Failed(CheckFailure::Refused)), start);
        assert!(commands[0].try_recv().is_err(), "the checking loop knows");
        for receiver in &commands[1..] {
            assert_eq!(receiver.try_recv(), Ok(LoopCommand::SetBackendHealth(backend, false)));
        }
        // Told once, not at every report.
        plane.take_report(checked(false, CheckOutcome::Failed(CheckFailure::Refused)), start);
        assert!(commands.iter().all(|receiver| receiver.try_recv().is_err()));
        let Reply::Backends { backends } = ask(&mut plane, Request::ShowBackends {}, start) else { panic!("not backends") };
        assert_eq!((backends[0].health.as_str(), backends[0].last_check.as_deref()), ("down", Some("connection refused")));
        assert_eq!((backends[0].checks, backends[0].check_failures), (5, 2));
        assert_eq!(backends[1].health, "unchecked");
        let Reply::Metrics { text } = ask(&mut plane, Request::ShowMetrics {}, start) else { panic!("not metrics") };
        assert!(text.contains("cutls_backend_up{pool=\"web\",backend=\"10.0.0.2:8080\"} 0"), "{text}");
        // A loop that starts again thinks every backend up: it is told again.
        plane.take_report(LoopReport::restarted(2), start);
        assert_eq!(commands[2].try_recv(), Ok(LoopCommand::SetBackendHealth(backend, false)));
        plane.take_report(checked(true, CheckOutcome::Passed { latency_ns: 1 }), start);
        for receiver in &commands[1..] {
            assert_eq!(receiver.try_recv(), Ok(LoopCommand::SetBackendHealth(backend, true)));
        }
        // What its agent says goes the same way, once.
        let drain = AgentState { drain: true, ..AgentState::default() };
        let agent = || LoopReport {
            health: vec![BackendHealth { agent: Some(drain), agent_last: Some("drain".into()), ..health(true, CheckOutcome::Passed { latency_ns: 1 }) }],
            ..report(0, vec![], vec![])
        };
        plane.take_report(agent(), start);
        plane.take_report(agent(), start);
        for receiver in &commands[1..] {
            assert_eq!(receiver.try_recv(), Ok(LoopCommand::SetBackendAgent(backend, drain)));
            assert!(receiver.try_recv().is_err());
        }
        let Reply::Backends { backends } = ask(&mut plane, Request::ShowBackends {}, start) else { panic!("not backends") };
        assert_eq!((backends[0].agent.as_deref(), backends[0].agent_last.as_deref()), (Some("drain"), Some("drain")));
        let Reply::Metrics { text } = ask(&mut plane, Request::ShowMetrics {}, start) else { panic!("not metrics") };
        assert!(text.contains("cutls_backend_in_rotation{pool=\"web\",backend=\"10.0.0.2:8080\"} 0"), "{text}");
    }

    #[test]
    fn a_reload_goes_to_every_loop_and_a_refused_one_changes_nothing() {
        let (plane, commands, start) = plane(3);
        let answers = std::sync::Arc::new(std::sync::Mutex::new(vec![Err("cutls.toml:7: pool[0].backends: bad".to_string())]));
        let topology = Topology {
            listeners: vec![(address("192.0.2.1:443"), "web".into()), (address("192.0.2.2:443"), "api".into())],
            pools: vec![("web".into(), vec![address("10.0.0.2:8080")]), ("api".into(), vec![address("10.0.0.9:8080")])],
            balancing: vec![(Balance::RoundRobin, vec![BackendOptions::default()]), (Balance::LeastLoad, vec![BackendOptions::default()])],
        };
        let engine = EngineReload {
            listeners: Vec::new(),
            retired: Vec::new(),
            balancing: Default::default(),
            health: None,
            idle_timeout_ns: 1,
            handshake_timeout_ns: 1,
            close_timeout_ns: 1,
            syn_cookies_after: 1,
            max_sessions: 1,
            max_sessions_per_client: 0,
        };
        let reload =
            Arc::new(Reload { engine, steering: Steering::new(3, [], [], None), topology, log_level: None, summary: "cutls.toml: 2 listener(s)".into() });
        answers.lock().unwrap().insert(0, Ok(Arc::clone(&reload)));
        let next = Arc::clone(&answers);
        let reloader: Reloader = Box::new(move || next.lock().unwrap().pop().unwrap());
        let mut plane = plane.with_reloader(reloader, Arc::new(AtomicBool::new(false)));
        plane.health.insert(address("10.0.0.2:8080"), BackendHealth {
            backend: address("10.0.0.2:8080"),
            up: false,
            last: CheckOutcome::Failed(CheckFailure::Timeout),
            last_check_ns: 1,
            changed_ns: 1,
            checks: 1,
            failures: 1,
            agent: None,
            agent_last: None,
        });

        let Reply::Error { error } = ask(&mut plane, Request::Reload {}, start) else { panic!("not refused") };
        assert_eq!(error, "reload refused, the running configuration stays: cutls.toml:7: pool[0].backends: bad");
        assert!(commands.iter().all(|receiver| receiver.try_recv().is_err()), "a refused reload reaches no loop");
        let Reply::Backends { backends } = ask(&mut plane, Request::ShowBackends {}, start) else { panic!("not backends") };
        assert_eq!((backends.len(), backends[0].health.as_str()), (2, "down"));

        let Reply::Done { message } = ask(&mut plane, Request::Reload {}, start) else { panic!("not done") };
        assert_eq!(message, "cutls.toml: 2 listener(s)");
        for receiver in &commands {
            let Ok(LoopCommand::Reload(taken)) = receiver.try_recv() else { panic!("no reload") };
            assert!(Arc::ptr_eq(&taken, &reload), "one reload, the same for every loop");
        }
        let Reply::Backends { backends } = ask(&mut plane, Request::ShowBackends {}, start) else { panic!("not backends") };
        let rows: Vec<(&str, String, &str)> =
            backends.iter().map(|row| (row.pool.as_str(), row.address.to_string(), row.health.as_str())).collect();
        // No check any more: what the old one found is forgotten.
        assert_eq!(rows, [("web", "10.0.0.2:8080".into(), "unchecked"), ("api", "10.0.0.9:8080".into(), "unchecked")]);
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let (mut plane, _commands, start) = plane(1);
        let mut counters = Counters::default();
        counters.sessions_started = 3;
        plane.take_report(report(0, vec![opened(1, "198.51.100.7:40000", "10.0.0.2:8080")], vec![]), start);
        let facts = TlsFacts { server_name: None, alpn: None, version: "TLSv1.3", suite: "TLS13_AES_128_GCM_SHA256" };
        // Each report has the loop's counters whole: the last one counts.
        let mut last = report(0, vec![Event::Tls { id: 1, at_ns: 4_000_000, facts }], vec![]);
        last.counters = counters;
        plane.take_report(last, start);
        let Reply::Metrics { text } = ask(&mut plane, Request::ShowMetrics {}, start) else { panic!("not metrics") };
        for line in [
            "cutls_sessions_started_total 3",
            "cutls_sessions 1",
            "cutls_backend_sessions_active{pool=\"web\",backend=\"10.0.0.2:8080\"} 1",
            "cutls_handshake_seconds_bucket{le=\"0.002\"} 0",
            "cutls_handshake_seconds_bucket{le=\"0.005\"} 1",
            "cutls_handshake_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
