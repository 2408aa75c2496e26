//! `cutls run --config FILE`: the box terminating TLS for the listeners of a configuration
//! file, between its two ports.
//!
//! One poll loop owns both ports and every session (so both directions of a session always
//! reach the loop that owns it). Each turn: frames from the outside and inside ports go through
//! the session engine, what it emits goes out, and its timers run. Handshakes run on worker
//! threads (`HANDSHAKE_THREADS`): a full handshake costs 0.1-0.5 ms (docs/bench-handshake.md),
//! which would otherwise hold every other session's packets; the loop collects finished ones
//! every turn.
//!
//! Not supported yet: several loops (steering sessions to cores), configuration reload, the
//! management socket.

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cutls_control::config::{AddressMode, Config, HoldBack, IoKind};
use cutls_control::tls::{server_config, SecretLog};
use cutls_crypto::ReleaseMode;
use cutls_dataplane::io::af_packet::{PacketConfig, PacketMode, PacketPort};
use cutls_dataplane::io::af_xdp::{XdpConfig, XdpInterface, XdpPort};
use cutls_dataplane::io::bpf::AttachPreference;
use cutls_dataplane::io::{wait_readable, FrameIo};
use cutls_dataplane::session::{Engine, EngineConfig, EngineKeys, ListenerSetup, Output, PassthroughRoute, Port};
use cutls_dataplane::wire::EthernetAddress;

/// Sessions idle this long are reset.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
const BATCH: usize = 64;
/// Live sessions above which SYNs are answered with SYN cookies.
const SYN_COOKIES_AFTER: usize = 16_384;
/// Threads that run TLS handshakes, so that a handshake (0.1-0.5 ms) does not hold the poll
/// loop (docs/bench-handshake.md).
const HANDSHAKE_THREADS: usize = 1;

/// Entry point of `cutls run --config FILE`.
pub fn main(config_path: PathBuf) -> ExitCode {
    let config = match Config::load(&config_path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("cutls run: {error}");
            return ExitCode::from(2);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(error) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("cutls run: cannot handle signal {signal}: {error}");
            return ExitCode::FAILURE;
        }
    }
    match serve(&config, &stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cutls run: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Builds the engine from the configuration and runs it until `stop`.
pub fn serve(config: &Config, stop: &AtomicBool) -> io::Result<()> {
    let mut listeners = Vec::new();
    for listener in &config.listeners {
        let pool = &config.pools[listener.pool];
        let secrets = Arc::new(SecretLog::default());
        // A listener of a passthrough pool terminates nothing: no certificates, no rustls.
        let tls = if pool.passthrough {
            None
        } else {
            Some(server_config(listener, secrets.clone()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?)
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
    let engine_config = EngineConfig {
        listeners,
        snat_address: match config.mode {
            AddressMode::Transparent => None,
            AddressMode::Snat(address) => Some(address),
        },
        outside_mac: interface_mac(&config.outside)?,
        inside_mac: interface_mac(&config.inside)?,
        idle_timeout_ns: IDLE_TIMEOUT.as_nanos() as u64,
        close_timeout_ns: config.close_timeout.as_nanos() as u64,
        trust_rx_checksum: config.trust_rx_checksum,
        keys: engine_keys()?,
        syn_cookies_after: SYN_COOKIES_AFTER,
        handshake_threads: HANDSHAKE_THREADS,
    };
    let engine = Engine::new(engine_config);
    match config.io {
        IoKind::Xdp | IoKind::XdpGeneric => {
            let preference =
                if config.io == IoKind::Xdp { AttachPreference::NativeOrGeneric } else { AttachPreference::Generic };
            let outside = XdpInterface::attach(&config.outside, 1, preference)?;
            let inside = XdpInterface::attach(&config.inside, 1, preference)?;
            let xdp = XdpConfig::default();
            let outside_port = XdpPort::open(&outside, 0, &xdp)?;
            let inside_port = XdpPort::open(&inside, 0, &xdp)?;
            poll_loop(engine, outside_port, inside_port, stop)
        }
        IoKind::Packet => {
            let packet = PacketConfig { mode: PacketMode::RingsOrSocket, ..PacketConfig::default() };
            let outside_port = PacketPort::open(&config.outside, &packet)?;
            let inside_port = PacketPort::open(&config.inside, &packet)?;
            poll_loop(engine, outside_port, inside_port, stop)
        }
    }
}

fn poll_loop<P: FrameIo>(mut engine: Engine, mut outside: P, mut inside: P, stop: &AtomicBool) -> io::Result<()> {
    let start = Instant::now();
    let mut out = Output::default();
    eprintln!("cutls: ready");
    let mut last_poll = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut worked = false;
        for port in [Port::Outside, Port::Inside] {
            let now = start.elapsed().as_nanos() as u64;
            let source = match port {
                Port::Outside => &mut outside,
                Port::Inside => &mut inside,
            };
            let frames = source.recv_batch(BATCH)?;
            worked |= !frames.is_empty();
            for index in 0..frames.len() {
                if let Some(frame) = frames.get(index) {
                    engine.handle_received(now, port, frame, frames.checksum(index), &mut out);
                }
            }
            drop(frames);
            flush(&mut out, &mut outside, &mut inside)?;
        }
        let now = start.elapsed().as_nanos() as u64;
        engine.collect_handshakes(now, &mut out);
        flush(&mut out, &mut outside, &mut inside)?;
        if now >= last_poll + 1_000_000 {
            engine.poll(now, &mut out);
            flush(&mut out, &mut outside, &mut inside)?;
            last_poll = now;
        }
        if !worked {
            // With handshakes at the workers, look again soon for their results.
            let wait = if handshakes_pending(&engine) { Duration::from_micros(50) } else { Duration::from_millis(1) };
            let fds: Vec<_> = [outside.readiness_fd(), inside.readiness_fd()].into_iter().flatten().collect();
            wait_readable(&fds, wait)?;
        }
    }
    println!("{:#?}", engine.counters());
    println!("sessions still open: {}", engine.sessions());
    Ok(())
}

fn handshakes_pending(engine: &Engine) -> bool {
    engine.handshakes_pending()
}

fn flush<P: FrameIo>(out: &mut Output, outside: &mut P, inside: &mut P) -> io::Result<()> {
    if !out.outside.is_empty() {
        outside.send_batch(&mut out.outside.iter().map(Vec::as_slice))?;
        out.outside.clear();
    }
    if !out.inside.is_empty() {
        inside.send_batch(&mut out.inside.iter().map(Vec::as_slice))?;
        out.inside.clear();
    }
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
