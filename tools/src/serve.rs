//! `cutls run --config FILE`: the box terminating TLS for the listeners of a configuration
//! file, between its two ports.
//!
//! Per-core poll loops (`[box] cores`, default one per receive queue of the ports, at most the
//! cores the process may use), each pinned to a core and owning its sessions outright: its own
//! engine, its own queue of each port (AF_XDP: queue i; AF_PACKET: one socket per loop in a
//! fanout group), its own handshake workers. Each turn: frames from both ports go through the
//! engine, what it emits goes out, and its timers run. A frame steers to the loop that owns its
//! session (`cutls_dataplane::steer`); the kernel's queue choice does not compute that
//! function, so a loop hands a frame it does not own to the owner over a bounded channel and
//! rings the owner's doorbell. Neighbour information (ARP, NDP) on the inside port reaches
//! every loop. Handshakes run on worker threads: a full handshake costs 0.1-0.5 ms
//! (docs/bench-handshake.md), which would otherwise hold every other session's packets.
//!
//! Beside the loops, the control thread (`cutls_control::control_plane`): every
//! [`REPORT_EVERY`] each loop sends it the events of its engine, the progress of its active
//! sessions and its counters, and between batches takes its commands (kill a session, take a
//! backend out of rotation). It answers `cutlsctl` on the management socket and Prometheus on
//! the metrics listener.
//!
//! Reload (`cutlsctl reload`, SIGHUP): the control thread reads the file again, refuses it if
//! it does not parse, a certificate does not load or it changes what only a restart can
//! (`Config::check_reloadable`), and otherwise gives every loop the same [`Reload`]: new
//! listeners, certificates, pools, balancing, checks and limits for new connections, while
//! established sessions keep their keys, backends and listener. Sessions name their listener
//! by index, so the listener table keeps a slot per VIP for the life of the process
//! ([`Slots`]).
//!
//! Not supported yet: steering in the XDP program or with `PACKET_FANOUT_EBPF` (every frame a
//! loop does not own costs a copy, into a pooled buffer, and a hand-off).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use cutls_control::config::{Config, HealthCheck, HoldBack, IoKind};
use cutls_dataplane::health::HealthSetup;
use cutls_control::control_plane::{ControlPlane, LoopCommand, LoopHandle, LoopReport, Reload, Reloader, Topology, REPORT_EVERY};
use cutls_control::logging::LogHandle;
use cutls_control::management::{self, Pending};
use cutls_control::tls::{server_config, SecretLog};
use cutls_crypto::ReleaseMode;
use cutls_dataplane::bridge::{available_cores, pin_current_thread, CoreId};
use cutls_dataplane::io::af_packet::{PacketConfig, PacketMode, PacketPort};
use cutls_dataplane::io::af_xdp::{XdpConfig, XdpInterface, XdpPort};
use cutls_dataplane::io::bpf::AttachPreference;
use cutls_dataplane::io::doorbell::Doorbell;
use cutls_dataplane::io::{interface_index, receive_queue_count, wait_readable, FrameIo, RxChecksum};
use cutls_dataplane::session::{
    Balance, Balancing, Counters, Engine, EngineConfig, EngineKeys, EngineReload, Event, ListenerSetup, LoopShare, Output,
    PassthroughRoute, Port,
};
use cutls_dataplane::steer::{Owner, Steering, HEALTH_LOOP};
use cutls_dataplane::wire::EthernetAddress;

const BATCH: usize = 64;
/// Frames waiting for a loop from the others at most; past that they are dropped and counted
/// (a peer sends them again), never waited for.
const HANDOFF_CAPACITY: usize = 8192;
/// Reports waiting for the control thread at most (each loop's channel), and the events a
/// loop keeps for it while the channel is full; past that the oldest are dropped and counted.
const REPORT_CAPACITY: usize = 64;
const MAX_PENDING_EVENTS: usize = 65_536;
/// Commands waiting for a loop at most.
const COMMAND_CAPACITY: usize = 1024;
/// A loop that panics more than MAX_RESTARTS times within RESTART_WINDOW stops the box.
const MAX_RESTARTS: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// The longest an idle loop sleeps without a timer due (frames and hand-offs wake it at once).
const MAX_SLEEP: Duration = Duration::from_millis(10);

/// Entry point of `cutls run --config FILE`.
pub fn main(config_path: PathBuf) -> ExitCode {
    let config = match Config::load(&config_path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("cutls run: {error}");
            return ExitCode::from(2);
        }
    };
    // From here on the box logs through `tracing` (cutls_control::logging).
    let log = LogHandle::install(config.log.level, config.log.format);
    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    let flags = [(signal_hook::consts::SIGINT, &stop), (signal_hook::consts::SIGTERM, &stop), (signal_hook::consts::SIGHUP, &reload)];
    for (signal, flag) in flags {
        if let Err(error) = signal_hook::flag::register(signal, Arc::clone(flag)) {
            eprintln!("cutls run: cannot handle signal {signal}: {error}");
            return ExitCode::FAILURE;
        }
    }
    match serve(&config_path, &config, &stop, reload, log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(target: "cutls", "{error}");
            ExitCode::FAILURE
        }
    }
}

/// `cutls check-config FILE`: the file parsed and checked, and every listener's certificates
/// and keys loaded, as `cutls run` would; exit 0, or 2 with the error (file:line: field:
/// message for the file itself).
pub fn check_config(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("cutls check-config: {error}");
            return ExitCode::from(2);
        }
    };
    if let Err(error) = listener_setups(&config) {
        eprintln!("cutls check-config: {}: {error}", path.display());
        return ExitCode::from(2);
    }
    let backends: usize = config.pools.iter().map(|pool| pool.backends.len()).sum();
    println!(
        "{}: OK ({} listener(s), {} pool(s), {backends} backend(s); management socket {})",
        path.display(),
        config.listeners.len(),
        config.pools.len(),
        config.management.socket.as_ref().map_or("off".to_string(), |socket| socket.display().to_string())
    );
    ExitCode::SUCCESS
}

/// Builds the engines from the configuration read from `path` and runs their loops until
/// `stop`; `reload` raised (SIGHUP) reads the file again.
pub fn serve(path: &Path, config: &Config, stop: &AtomicBool, reload: Arc<AtomicBool>, log: Option<LogHandle>) -> io::Result<()> {
    let snat_address = config.snat_address();
    let cores = available_cores();
    let queues = receive_queue_count(&config.outside)?.min(receive_queue_count(&config.inside)?).max(1) as usize;
    let loops = loop_count(config, queues, cores.len())?;
    let (outside_mac, inside_mac) = (interface_mac(&config.outside)?, interface_mac(&config.inside)?);
    let mut slots = Slots::default();
    let first = Arc::new(slots.plan(config, listener_setups(config)?, inside_mac, loops, summary(path, config, &[])));
    // The latest configuration: a loop that panics starts again with it.
    let latest = Arc::new(Mutex::new(Arc::clone(&first)));
    let reloader = reloader(path.to_path_buf(), config.clone(), slots, inside_mac, loops, Arc::clone(&latest));
    let keys = engine_keys()?;
    // Each loop's doorbell: rung by the other loops' hand-offs and by its handshake workers.
    let doorbells: Vec<Arc<Doorbell>> = (0..loops).map(|_| Doorbell::new().map(Arc::new)).collect::<io::Result<_>>()?;
    // Each loop's engine and steering, from the latest configuration; called again for a loop
    // that panicked (it starts again empty).
    let make_engine = |index: usize| {
        let current = Arc::clone(&latest.lock().unwrap_or_else(PoisonError::into_inner));
        let plan = &current.engine;
        let mut engine = Engine::new(EngineConfig {
            listeners: plan.listeners.clone(),
            snat_address,
            outside_mac,
            inside_mac,
            idle_timeout_ns: plan.idle_timeout_ns,
            handshake_timeout_ns: plan.handshake_timeout_ns,
            close_timeout_ns: plan.close_timeout_ns,
            trust_rx_checksum: config.trust_rx_checksum,
            // One set of keys: a SYN cookie or an ISN means the same in every loop.
            keys: keys.clone(),
            syn_cookies_after: plan.syn_cookies_after,
            max_sessions: plan.max_sessions,
            max_sessions_per_client: plan.max_sessions_per_client,
            handshake_threads: config.handshake_threads,
            handshake_doorbell: Some(Arc::clone(&doorbells[index])),
            loop_share: LoopShare { index, loops },
            congestion: config.congestion,
            balancing: plan.balancing.clone(),
            events: true,
            health: if index == HEALTH_LOOP { plan.health.clone() } else { None },
        });
        if plan.retired.iter().any(|&retired| retired) {
            // The listeners a reload removed: their slots stay, closed to new connections.
            engine.reload(0, plan);
        }
        (engine, current.steering.clone())
    };
    let control = (first.topology.clone(), reloader, reload, log);
    match config.io {
        IoKind::Xdp | IoKind::XdpGeneric => {
            let preference =
                if config.io == IoKind::Xdp { AttachPreference::NativeOrGeneric } else { AttachPreference::Generic };
            let outside = XdpInterface::attach(&config.outside, loops as u32, preference)?;
            let inside = XdpInterface::attach(&config.inside, loops as u32, preference)?;
            let xdp = XdpConfig::default();
            let mut ports = Vec::new();
            for queue in 0..loops as u32 {
                ports.push((XdpPort::open(&outside, queue, &xdp)?, XdpPort::open(&inside, queue, &xdp)?));
            }
            run_loops(&make_engine, ports, control, doorbells.clone(), &cores, config, stop)
        }
        IoKind::Packet => {
            // With several loops, the sockets of one interface share its frames by flow hash.
            let fanout_group = |interface: &str| -> io::Result<Option<u16>> {
                if loops == 1 {
                    return Ok(None);
                }
                Ok(Some((std::process::id() as u16).wrapping_add(interface_index(interface)? as u16)))
            };
            let outside_config =
                PacketConfig { mode: PacketMode::RingsOrSocket, fanout_group: fanout_group(&config.outside)?, ..PacketConfig::default() };
            let inside_config =
                PacketConfig { mode: PacketMode::RingsOrSocket, fanout_group: fanout_group(&config.inside)?, ..PacketConfig::default() };
            let mut ports = Vec::new();
            for _ in 0..loops {
                ports.push((PacketPort::open(&config.outside, &outside_config)?, PacketPort::open(&config.inside, &inside_config)?));
            }
            run_loops(&make_engine, ports, control, doorbells.clone(), &cores, config, stop)
        }
    }
}

/// How the control thread reloads: reads `path` again and checks it against the `running`
/// configuration; on success the loops get the new plan (and `latest` holds it for a loop
/// that starts again), on failure nothing changes.
fn reloader(
    path: PathBuf,
    mut running: Config,
    mut slots: Slots,
    inside_mac: EthernetAddress,
    loops: usize,
    latest: Arc<Mutex<Arc<Reload>>>,
) -> Reloader {
    Box::new(move || {
        let text = std::fs::read_to_string(&path).map_err(|error| format!("{}: {error}", path.display()))?;
        let config = Config::parse(&path, &text).map_err(|error| error.to_string())?;
        config.check_reloadable(&running, &path, &text).map_err(|error| error.to_string())?;
        let setups = listener_setups(&config).map_err(|error| format!("{}: {error}", path.display()))?;
        // Only now is the new file taken: a refused one leaves the table as it was.
        let mut next = slots.clone();
        let reload = Arc::new(next.plan(&config, setups, inside_mac, loops, summary(&path, &config, &slots.vips())));
        slots = next;
        running = config;
        *latest.lock().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&reload);
        Ok(reload)
    })
}

/// What a (re)load says: the file and what it holds, and how its listeners differ from the
/// `before` VIPs.
fn summary(path: &Path, config: &Config, before: &[SocketAddr]) -> String {
    let backends: usize = config.pools.iter().map(|pool| pool.backends.len()).sum();
    let vips: Vec<SocketAddr> = config.listeners.iter().map(|listener| listener.vip).collect();
    let added = vips.iter().filter(|vip| !before.contains(vip)).count();
    let removed = before.iter().filter(|vip| !vips.contains(vip)).count();
    format!(
        "{}: {} listener(s) ({added} new, {removed} removed), {} pool(s), {backends} backend(s)",
        path.display(),
        vips.len(),
        config.pools.len()
    )
}

/// The listener table across reloads. A session names its listener by index, its slot, so a
/// VIP keeps its slot for the life of the process: a new VIP takes a new slot, and a VIP a
/// reload removes keeps its slot, retired (no new connections; its sessions go on).
#[derive(Clone, Default)]
struct Slots {
    listeners: Vec<ListenerSetup>,
    retired: Vec<bool>,
    /// Per slot: its pool's name, its pool's and its passthrough pool's balancing.
    pools: Vec<String>,
    balances: Vec<(Balance, Balance)>,
    /// Every backend a configuration of this run named: sessions to one outlive its removal,
    /// so its frames must still steer to them.
    backends: Vec<SocketAddr>,
}

impl Slots {
    /// The VIPs of the listeners in service.
    fn vips(&self) -> Vec<SocketAddr> {
        self.listeners.iter().zip(&self.retired).filter(|(_, retired)| !**retired).map(|(listener, _)| listener.vip).collect()
    }

    /// The loops' part of `config` (whose listeners' setups are `setups`), with the table
    /// updated to it.
    fn plan(&mut self, config: &Config, setups: Vec<ListenerSetup>, inside_mac: EthernetAddress, loops: usize, summary: String) -> Reload {
        self.retired.iter_mut().for_each(|retired| *retired = true);
        for (listener, setup) in config.listeners.iter().zip(setups) {
            let pool = &config.pools[listener.pool];
            let passthrough = listener.passthrough_pool.map_or(Balance::default(), |index| config.pools[index].balance);
            let slot = match self.listeners.iter().position(|known| known.vip == setup.vip) {
                Some(slot) => {
                    self.listeners[slot] = setup;
                    slot
                }
                None => {
                    self.listeners.push(setup);
                    self.retired.push(false);
                    self.pools.push(String::new());
                    self.balances.push(Default::default());
                    self.listeners.len() - 1
                }
            };
            self.retired[slot] = false;
            self.pools[slot] = pool.name.clone();
            self.balances[slot] = (pool.balance, passthrough);
        }
        let mut balancing = Balancing {
            listeners: self.balances.iter().map(|(balance, _)| *balance).collect(),
            passthrough: self.balances.iter().map(|(_, balance)| *balance).collect(),
            ..Balancing::default()
        };
        for pool in &config.pools {
            for (backend, options) in pool.backends.iter().zip(&pool.options) {
                balancing.backends.insert(*backend, *options);
                if !self.backends.contains(backend) {
                    self.backends.push(*backend);
                }
            }
        }
        let snat_address = config.snat_address();
        let steering = Steering::new(loops, self.listeners.iter().map(|listener| listener.vip.ip()), self.backends.iter().copied(), snat_address)
            .with_health_sources(config.health_sources.clone());
        let topology = Topology {
            listeners: self.listeners.iter().map(|listener| listener.vip).zip(self.pools.iter().cloned()).collect(),
            pools: config.pools.iter().map(|pool| (pool.name.clone(), pool.backends.clone())).collect(),
            balancing: config.pools.iter().map(|pool| (pool.balance, pool.options.clone())).collect(),
        };
        let engine = EngineReload {
            listeners: self.listeners.clone(),
            retired: self.retired.clone(),
            balancing,
            health: health_setup(config, inside_mac),
            idle_timeout_ns: config.idle_timeout.as_nanos() as u64,
            handshake_timeout_ns: config.handshake_timeout.as_nanos() as u64,
            close_timeout_ns: config.close_timeout.as_nanos() as u64,
            // The box's limits shared out: a loop holds the sessions steered to it.
            syn_cookies_after: config.syn_cookies_after / loops,
            max_sessions: config.max_sessions.div_ceil(loops),
            max_sessions_per_client: config.max_sessions_per_client.div_ceil(loops),
        };
        Reload { engine, steering, topology, log_level: Some(config.log.level), summary }
    }
}

/// The health checks of `config`, for the checking loop: each checked backend once (a
/// backend in two pools takes the first pool's check).
fn health_setup(config: &Config, inside_mac: EthernetAddress) -> Option<HealthSetup> {
    let mut checks: Vec<(SocketAddr, HealthCheck)> = Vec::new();
    for pool in &config.pools {
        let Some(check) = &pool.health else { continue };
        for backend in &pool.backends {
            if !checks.iter().any(|(known, _)| known == backend) {
                checks.push((*backend, check.clone()));
            }
        }
    }
    (!checks.is_empty()).then(|| HealthSetup {
        sources: config.health_sources.clone(),
        mac: inside_mac,
        checks,
        snat_address: config.snat_address(),
        // The engine seeds it from its keys.
        seed: 0,
    })
}

/// The engine's listeners from the configuration: certificates and keys loaded into rustls
/// (an error names the listener).
fn listener_setups(config: &Config) -> io::Result<Vec<ListenerSetup>> {
    let mut listeners = Vec::new();
    for (index, listener) in config.listeners.iter().enumerate() {
        let pool = &config.pools[listener.pool];
        let secrets = Arc::new(SecretLog::default());
        // A listener of a passthrough pool terminates nothing: no certificates, no rustls.
        let tls = if pool.passthrough {
            None
        } else {
            let tls = server_config(listener, secrets.clone()).map_err(|error| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("listener[{index}] ({}): {error}", listener.vip))
            })?;
            Some(tls)
        };
        let passthrough = listener.passthrough_pool.map(|index| {
            Arc::new(PassthroughRoute {
                backends: config.pools[index].backends.clone(),
                certificate_names: listener.certificates.iter().flat_map(|files| files.names.iter().cloned()).collect(),
                default_certificate: listener.default_certificate.is_some(),
            })
        });
        listeners.push(ListenerSetup {
            vip: listener.vip,
            tls,
            secrets,
            backends: pool.backends.clone(),
            mode: match listener.hold_back {
                HoldBack::CutThrough => ReleaseMode::CutThrough,
                HoldBack::VerifyFirst => ReleaseMode::VerifyFirst,
            },
            passthrough,
        });
    }
    Ok(listeners)
}

/// How many poll loops: `cores` if the file says, else one per receive queue, at most the cores
/// the process may use. AF_XDP needs exactly one loop per receive queue: a queue without a socket
/// would hand its frames to the box's own stack.
fn loop_count(config: &Config, queues: usize, cores: usize) -> io::Result<usize> {
    let xdp = matches!(config.io, IoKind::Xdp | IoKind::XdpGeneric);
    let loops = match config.cores {
        Some(loops) => loops,
        None if xdp => queues,
        None => queues.min(cores.max(1)),
    };
    if xdp && loops != queues {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} and {} have {queues} receive queue(s) but cores = {loops}; AF_XDP needs one poll loop per \
                 queue (cores = {queues}, or `ethtool -L IFACE combined {loops}` on both ports)",
                config.outside, config.inside
            ),
        ));
    }
    Ok(loops)
}

/// A frame one loop received for another (or neighbour information for all).
struct Handoff {
    port: Port,
    checksum: RxChecksum,
    /// Neighbour information the sender already handled: only learn from it.
    learn_only: bool,
    frame: Vec<u8>,
}

/// What one loop counted besides its engine's counters.
#[derive(Debug, Default)]
struct LoopCounts {
    /// Frames this loop received for another loop and handed over.
    frames_handed_off: u64,
    /// ... dropped because the owner's queue was full.
    handoff_drops: u64,
    /// Frames the transmit path dropped (ring full, oversize, refused).
    transmit_drops: u64,
    /// Events for the control thread dropped while its channel was full.
    control_events_lost: u64,
    /// Times the loop panicked and started again.
    loop_restarts: u64,
    /// Frames the kernel dropped because this loop's receive ring of a port was full.
    outside_receive_drops: u64,
    inside_receive_drops: u64,
}

impl LoopCounts {
    fn fields(&self) -> Vec<(&'static str, u64)> {
        let LoopCounts {
            frames_handed_off,
            handoff_drops,
            transmit_drops,
            control_events_lost,
            loop_restarts,
            outside_receive_drops,
            inside_receive_drops,
        } = *self;
        vec![
            ("frames_handed_off", frames_handed_off),
            ("handoff_drops", handoff_drops),
            ("transmit_drops", transmit_drops),
            ("control_events_lost", control_events_lost),
            ("loop_restarts", loop_restarts),
            ("outside_receive_drops", outside_receive_drops),
            ("inside_receive_drops", inside_receive_drops),
        ]
    }
}

/// How a loop reaches the control thread.
struct ControlLink {
    reports: Sender<LoopReport>,
    commands: Receiver<LoopCommand>,
}

/// Runs one loop per `(outside, inside)` pair in its own thread, pinned to the next core, until
/// `stop` (or until a loop fails, which stops them all), then prints the counters: the totals
/// in the engine's format, and a few per loop.
fn run_loops<P: FrameIo>(
    make_engine: &(dyn Fn(usize) -> (Engine, Steering) + Sync),
    ports: Vec<(P, P)>,
    (topology, reloader, reload_signal, log): (Topology, Reloader, Arc<AtomicBool>, Option<LogHandle>),
    doorbells: Vec<Arc<Doorbell>>,
    cores: &[CoreId],
    config: &Config,
    stop: &AtomicBool,
) -> io::Result<()> {
    let loops = ports.len();
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..loops {
        let (sender, receiver) = crossbeam_channel::bounded(HANDOFF_CAPACITY);
        senders.push(sender);
        receivers.push(receiver);
    }
    let started = Instant::now();
    // The control thread, and how each loop reaches it.
    let (report_sender, reports) = crossbeam_channel::bounded::<LoopReport>(REPORT_CAPACITY * loops);
    let (request_sender, requests) = crossbeam_channel::unbounded::<Pending>();
    let mut handles = Vec::new();
    let mut control_links = Vec::new();
    for doorbell in &doorbells {
        let (commands, command_receiver) = crossbeam_channel::bounded(COMMAND_CAPACITY);
        let doorbell = Arc::clone(doorbell);
        handles.push(LoopHandle { commands, wake: Box::new(move || doorbell.ring()) });
        control_links.push(ControlLink { reports: report_sender.clone(), commands: command_receiver });
    }
    drop(report_sender);
    let mut control = ControlPlane::new(started, topology, handles).with_reloader(reloader, reload_signal);
    if let Some(log) = log {
        control = control.with_log(log);
    }
    if let Some(path) = &config.management.socket {
        management::serve_socket(path, request_sender.clone())?;
        tracing::info!(target: "cutls", "management socket {}", path.display());
    }
    if let Some(address) = config.management.metrics {
        management::serve_metrics(address, request_sender.clone())?;
        tracing::info!(target: "cutls", "metrics on http://{address}/metrics");
    }
    drop(request_sender);
    let control_stop = AtomicBool::new(false);
    let failed = AtomicBool::new(false);
    // Loop i on the next core, round robin; none when the cores cannot be listed.
    let core_of = |index: usize| cores.get(index % cores.len().max(1)).copied();
    let pinned: Vec<Option<usize>> = (0..loops).map(|index| core_of(index).map(|core| core.id)).collect();
    tracing::info!(target: "cutls", "{loops} poll loop(s) on cores {pinned:?}");
    let results: Vec<io::Result<(Engine, LoopCounts)>> = std::thread::scope(|scope| {
        let control_stop = &control_stop;
        let control_thread = std::thread::Builder::new()
            .name("cutls-control".into())
            .spawn_scoped(scope, move || control.run(reports, requests, control_stop));
        let handles: Vec<_> = ports
            .into_iter()
            .zip(receivers)
            .zip(control_links)
            .enumerate()
            .map(|(index, (((mut outside, mut inside), receiver), control))| {
                let peers = Peers { index, senders: senders.clone(), doorbells: doorbells.clone(), receiver, control };
                let (failed, core) = (&failed, core_of(index));
                std::thread::Builder::new()
                    .name(format!("cutls-loop-{index}"))
                    .spawn_scoped(scope, move || {
                        if let Some(core) = core {
                            if !pin_current_thread(core) {
                                tracing::warn!(target: "cutls", "loop {index}: cannot pin to core {}", core.id);
                            }
                        }
                        let mut restarts: Vec<Instant> = Vec::new();
                        let result = loop {
                            let (engine, steering) = make_engine(index);
                            // A panic in the loop (a bug) takes its sessions, not the box: the
                            // loop starts again with an empty engine on the same ports, and its
                            // old sessions' peers get RSTs at their next segment, as after a
                            // restart of the process. Too many panics too fast stop the box.
                            let turn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                poll_loop(engine, &mut outside, &mut inside, &peers, steering, started, stop, failed)
                            }));
                            match turn {
                                Ok(result) => break result.map(|(engine, mut counts)| {
                                    counts.loop_restarts = restarts.len() as u64;
                                    (engine, counts)
                                }),
                                Err(_) => {
                                    let now = Instant::now();
                                    restarts.retain(|at| now.duration_since(*at) < RESTART_WINDOW);
                                    restarts.push(now);
                                    if restarts.len() > MAX_RESTARTS {
                                        break Err(io::Error::other(format!(
                                            "poll loop {index} panicked {} times within {RESTART_WINDOW:?}",
                                            restarts.len()
                                        )));
                                    }
                                    tracing::error!(target: "cutls", "loop {index} panicked; started again with no sessions (its sessions are lost)");
                                    let _ = peers.control.reports.try_send(LoopReport::restarted(index));
                                }
                            }
                        };
                        if result.is_err() {
                            failed.store(true, Ordering::SeqCst);
                        }
                        result
                    })
            })
            .collect();
        let results = handles
            .into_iter()
            .map(|handle| match handle {
                Ok(handle) => handle.join().unwrap_or_else(|_| Err(io::Error::other("a poll loop panicked"))),
                Err(error) => {
                    failed.store(true, Ordering::SeqCst);
                    Err(error)
                }
            })
            .collect();
        control_stop.store(true, Ordering::SeqCst);
        match control_thread {
            Ok(thread) => {
                if thread.join().is_err() {
                    tracing::error!(target: "cutls", "the control thread panicked");
                }
            }
            Err(error) => tracing::error!(target: "cutls", "no control thread: {error}"),
        }
        results
    });
    if let Some(path) = &config.management.socket {
        let _ = std::fs::remove_file(path);
    }
    let mut totals = Counters::default();
    let mut open = 0;
    let mut per_loop = Vec::new();
    let mut first_error = None;
    for (index, result) in results.into_iter().enumerate() {
        match result {
            Ok((engine, counts)) => {
                totals.add(engine.counters());
                open += engine.sessions();
                per_loop.push((index, engine.counters().sessions_started, counts));
            }
            Err(error) => {
                tracing::error!(target: "cutls", "loop {index}: {error}");
                first_error.get_or_insert(error);
            }
        }
    }
    // A table of `name: value` rows (cutlsctl show stats has the same names).
    println!("counters at exit:");
    let sum = |field: fn(&LoopCounts) -> u64| per_loop.iter().map(|(_, _, counts)| field(counts)).sum::<u64>();
    let loop_totals = LoopCounts {
        frames_handed_off: sum(|counts| counts.frames_handed_off),
        handoff_drops: sum(|counts| counts.handoff_drops),
        transmit_drops: sum(|counts| counts.transmit_drops),
        control_events_lost: sum(|counts| counts.control_events_lost),
        loop_restarts: sum(|counts| counts.loop_restarts),
        outside_receive_drops: sum(|counts| counts.outside_receive_drops),
        inside_receive_drops: sum(|counts| counts.inside_receive_drops),
    };
    for (name, value) in totals.fields().into_iter().chain(loop_totals.fields()) {
        println!("  {:<44}{value:>14}", format!("{name}:"));
    }
    println!("sessions still open: {open}");
    for (index, sessions_started, counts) in &per_loop {
        println!("loop_{index}_sessions_started: {sessions_started}");
        println!("loop_{index}_frames_handed_off: {}", counts.frames_handed_off);
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// How a loop reaches the others.
struct Peers {
    index: usize,
    senders: Vec<Sender<Handoff>>,
    doorbells: Vec<Arc<Doorbell>>,
    receiver: Receiver<Handoff>,
    control: ControlLink,
}

impl Peers {
    fn hand_off(&self, owner: usize, handoff: Handoff, counts: &mut LoopCounts) {
        match self.senders[owner].try_send(handoff) {
            Ok(()) => {
                counts.frames_handed_off += 1;
                self.doorbells[owner].ring();
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => counts.handoff_drops += 1,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn poll_loop<P: FrameIo>(
    mut engine: Engine,
    outside: &mut P,
    inside: &mut P,
    peers: &Peers,
    mut steering: Steering,
    start: Instant,
    stop: &AtomicBool,
    failed: &AtomicBool,
) -> io::Result<(Engine, LoopCounts)> {
    let mut out = Output::default();
    let mut counts = LoopCounts::default();
    let me = peers.index;
    let several = steering.loops() > 1;
    if me == 0 {
        tracing::info!(target: "cutls", "ready");
    }
    let mut last_poll = 0u64;
    let mut last_trim = 0u64;
    let mut last_report = 0u64;
    let mut events: Vec<Event> = Vec::new();
    while !stop.load(Ordering::Relaxed) && !failed.load(Ordering::Relaxed) {
        let mut worked = false;
        for port in [Port::Outside, Port::Inside] {
            let now = start.elapsed().as_nanos() as u64;
            let source = match port {
                Port::Outside => &mut *outside,
                Port::Inside => &mut *inside,
            };
            let frames = source.recv_batch(BATCH)?;
            worked |= !frames.is_empty();
            for index in 0..frames.len() {
                let Some(frame) = frames.get(index) else { continue };
                let checksum = frames.checksum(index);
                let owner = if several { steering.owner(port, frame) } else { Owner::Loop(me) };
                match owner {
                    Owner::Loop(owner) if owner != me => {
                        let handoff = Handoff { port, checksum, learn_only: false, frame: copy_into(&mut out, frame) };
                        peers.hand_off(owner, handoff, &mut counts);
                    }
                    Owner::Every => {
                        engine.handle_received(now, port, frame, checksum, &mut out);
                        for other in (0..steering.loops()).filter(|&other| other != me) {
                            let handoff = Handoff { port, checksum, learn_only: true, frame: copy_into(&mut out, frame) };
                            peers.hand_off(other, handoff, &mut counts);
                        }
                    }
                    _ => engine.handle_received(now, port, frame, checksum, &mut out),
                }
            }
            drop(frames);
            engine.end_batch(now, &mut out);
            flush(&mut out, outside, inside, &mut counts)?;
        }
        let now = start.elapsed().as_nanos() as u64;
        // Frames the other loops received for this one (a bounded number per turn, so that
        // the ports are read again soon).
        for handoff in peers.receiver.try_iter().take(BATCH * 4) {
            worked = true;
            if handoff.learn_only {
                engine.learn_neighbour(now, &handoff.frame, &mut out);
            } else {
                engine.handle_received(now, handoff.port, &handoff.frame, handoff.checksum, &mut out);
            }
            // The buffer stays here, for this loop's frames and hand-offs.
            out.pool.give(handoff.frame);
        }
        engine.end_batch(now, &mut out);
        engine.collect_handshakes(now, &mut out);
        flush(&mut out, outside, inside, &mut counts)?;
        if now >= last_poll + 1_000_000 {
            engine.poll(now, &mut out);
            flush(&mut out, outside, inside, &mut counts)?;
            last_poll = now;
        }
        // The control thread's commands, and every REPORT_EVERY what it hears.
        for command in peers.control.commands.try_iter() {
            worked = true;
            match command {
                LoopCommand::KillSession(id) => {
                    engine.kill_session(now, id, &mut out);
                }
                LoopCommand::SetBackend(backend, admin) => {
                    engine.set_backend_admin(now, backend, admin, &mut out);
                }
                LoopCommand::SetBackendHealth(backend, up) => engine.set_backend_health(backend, up),
                LoopCommand::SetBackendAgent(backend, agent) => engine.set_backend_agent(backend, agent),
                LoopCommand::Reload(reload) => {
                    engine.reload(now, &reload.engine);
                    steering = reload.steering.clone();
                }
                LoopCommand::Panic => panic!("loop {me}: the test hook asked for a panic"),
            }
            flush(&mut out, outside, inside, &mut counts)?;
        }
        engine.take_events(&mut events);
        if now >= last_report + REPORT_EVERY.as_nanos() as u64 {
            // The ports' totals (they outlive a restarted loop's engine); a port that cannot say
            // keeps the last count.
            if let Ok(stats) = outside.stats() {
                counts.outside_receive_drops = stats.rx_dropped;
            }
            if let Ok(stats) = inside.stats() {
                counts.inside_receive_drops = stats.rx_dropped;
            }
            report(&engine, &peers.control, me, &mut events, last_report, now, &mut counts);
            last_report = now;
        }
        if now >= last_trim + 1_000_000_000 {
            // Frame buffers and table room a burst left behind go back to the allocator.
            out.pool.trim();
            engine.trim(now);
            last_trim = now;
        }
        if !worked {
            // Sleep until a frame, a hand-off or a finished handshake rings, or the next timer
            // (timers run at most once a millisecond), at most MAX_SLEEP.
            let due = engine.next_deadline_ns().unwrap_or(u64::MAX).max(last_poll + 1_000_000);
            let wait = Duration::from_nanos(due.saturating_sub(now)).min(MAX_SLEEP);
            let doorbell = &peers.doorbells[me];
            doorbell.going_to_sleep();
            // Rung before it was announced: the work is already there.
            if peers.receiver.is_empty() && !engine.handshake_results_ready() {
                let mut fds: Vec<_> = [outside.readiness_fd(), inside.readiness_fd()].into_iter().flatten().collect();
                fds.push(doorbell.fd());
                wait_readable(&fds, wait)?;
            }
            doorbell.woke();
        }
    }
    if me == 0 && stop.load(Ordering::Relaxed) {
        let _ = cutls_control::service::notify("STOPPING=1");
    }
    Ok((engine, counts))
}

/// Sends the control thread the loop's report: `events` (kept for the next report if the
/// channel is full, the oldest dropped past [`MAX_PENDING_EVENTS`]), the sessions active since
/// `since_ns`, the counters.
#[allow(clippy::too_many_arguments)]
fn report(
    engine: &Engine,
    control: &ControlLink,
    me: usize,
    events: &mut Vec<Event>,
    since_ns: u64,
    now_ns: u64,
    counts: &mut LoopCounts,
) {
    let mut progress = Vec::new();
    engine.progress_since(since_ns, &mut progress);
    let report = LoopReport {
        loop_index: me,
        sessions: engine.sessions(),
        counters: engine.counters().clone(),
        loop_counters: counts.fields(),
        events: std::mem::take(events),
        progress,
        response_times: engine.backend_response_times(now_ns),
        response_histograms: engine.backend_response_histograms(),
        restarted: false,
        health: engine.health_status(),
    };
    if let Err(TrySendError::Full(report) | TrySendError::Disconnected(report)) = control.reports.try_send(report) {
        *events = report.events;
        if events.len() > MAX_PENDING_EVENTS {
            let excess = events.len() - MAX_PENDING_EVENTS;
            events.drain(..excess);
            counts.control_events_lost += excess as u64;
        }
    }
}

/// A copy of `frame` for another loop, in a buffer from this loop's pool (the receiver keeps
/// it for its own: with traffic both ways, buffers go back and forth and none is allocated).
fn copy_into(out: &mut Output, frame: &[u8]) -> Vec<u8> {
    let mut buffer = out.pool.take();
    buffer.extend_from_slice(frame);
    buffer
}

/// Sends what the engine queued; the frames' buffers go back to its pool for the next.
fn flush<P: FrameIo>(out: &mut Output, outside: &mut P, inside: &mut P, counts: &mut LoopCounts) -> io::Result<()> {
    if !out.outside.is_empty() {
        let report = outside.send_batch(&mut out.outside.iter().map(Vec::as_slice))?;
        counts.transmit_drops += report.dropped() as u64;
    }
    if !out.inside.is_empty() {
        let report = inside.send_batch(&mut out.inside.iter().map(Vec::as_slice))?;
        counts.transmit_drops += report.dropped() as u64;
    }
    out.recycle();
    Ok(())
}

fn interface_mac(interface: &str) -> io::Result<EthernetAddress> {
    let path = format!("/sys/class/net/{interface}/address");
    let text = std::fs::read_to_string(&path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    let mut bytes = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut bytes {
        let part = parts.next().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("{path}: not a MAC")))?;
        *byte = u8::from_str_radix(part, 16).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("{path}: not a MAC")))?;
    }
    Ok(EthernetAddress(bytes))
}

/// The ISN and SYN-cookie keys, from the OS. Without randomness the box must not start: its
/// ISNs and cookies would be guessable (blind injection, cookie forgery).
fn engine_keys() -> io::Result<EngineKeys> {
    let mut bytes = [0u8; 64];
    getrandom::fill(&mut bytes).map_err(|error| io::Error::other(format!("no randomness from the OS: {error}")))?;
    Ok(EngineKeys::from_random(bytes))
}
