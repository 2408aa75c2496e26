//! `cutls run`: the daemon. With no listeners configured (this issue) it is a transparent
//! bridge between its two ports: every frame is forwarded unchanged, from per-core poll loops.
//!
//! It prints "cutls: ready" on stderr once every port is open, runs until SIGINT or SIGTERM,
//! then prints the counters of each direction and of each port on stdout and exits; closing the
//! ports detaches the XDP program (it is attached through a BPF link, so a crash detaches it
//! too).
//!
//! With `--io pcap --replay FILE` the ports are a capture instead of interfaces: its frames
//! are fed to the bridge in capture order, each on the port it is labelled with (pcapng
//! interfaces named like `--outside`/`--inside`, or, for a capture of one link, by source MAC
//! with `--inside-mac`), and what each port transmits is written to `DIR/<port>.pcap` with
//! `--write-dir DIR`. The run ends when the capture is used up.
//!
//! Not supported yet: a configuration file, listeners, the management socket.

use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use cutls_dataplane::bridge::{
    available_cores, run_pinned, Bridge, BridgeConfig, BridgeCounters, CoreId, LoopExit,
};
use cutls_dataplane::io::af_packet::{PacketConfig, PacketMode, PacketPort};
use cutls_dataplane::io::af_xdp::{XdpConfig, XdpInterface, XdpPort};
use cutls_dataplane::io::bpf::AttachPreference;
use cutls_dataplane::io::pcap_io::{LabelRule, PcapPort, Replay};
use cutls_dataplane::io::{self as frame_io, FrameIo};
use cutls_dataplane::pcap::{LinkType, PcapWriter};

use crate::args::{ArgError, Args};

const USAGE: &str = "usage: cutls run --config FILE
       cutls run --outside IF --inside IF [options]

With --config, the box: terminates TLS for the file's listeners between the file's two ports
(docs/operations.md); reload with SIGHUP or `cutlsctl reload`, stop with SIGINT or SIGTERM.
Without it, a transparent bridge: every frame between the two ports, unchanged.

options:
  --config FILE      the configuration file (the other options do not apply)
  --outside IF       the port toward the router (clients)
  --inside IF        the port toward the server VLAN
  --io BACKEND       xdp (native attach, generic if the driver refuses; default),
                     xdp-generic, packet (AF_PACKET rings), packet-socket (plain AF_PACKET),
                     pcap (replay a capture; implied by --replay)
  --replay FILE      pcap/pcapng to replay; --outside/--inside name its interfaces
  --inside-mac MAC   (repeatable) replay a one-link capture: frames from these source MACs
                     arrive on the inside port, all others on the outside port
  --write-dir DIR    write what each port transmits to DIR/<port>.pcap
  --cores N          poll loops, one per core (default 1); AF_XDP needs exactly N
                     receive queues per port
  --first-core K     pin loop i to core K + i (default 0)
  --batch N          frames per receive (default 64)
";

/// The frame I/O backend chosen with `--io`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Xdp,
    XdpGeneric,
    Packet,
    PacketSocket,
    Pcap,
}

impl Backend {
    fn parse(text: &str) -> Result<Self, ArgError> {
        match text {
            "xdp" => Ok(Backend::Xdp),
            "xdp-generic" => Ok(Backend::XdpGeneric),
            "packet" => Ok(Backend::Packet),
            "packet-socket" => Ok(Backend::PacketSocket),
            "pcap" => Ok(Backend::Pcap),
            other => Err(ArgError(format!(
                "--io {other:?}: expected xdp, xdp-generic, packet, packet-socket or pcap"
            ))),
        }
    }
}

/// Everything `cutls run` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    pub outside: String,
    pub inside: String,
    pub backend: Backend,
    pub cores: usize,
    pub first_core: usize,
    pub batch: usize,
    /// `--io pcap`: the capture to replay, where to write each port's output, and the source
    /// MACs that label a one-link capture's frames as arriving on the inside port.
    pub replay: Option<PathBuf>,
    pub write_dir: Option<PathBuf>,
    pub inside_macs: Vec<[u8; 6]>,
}

impl RunOptions {
    /// Reads the options from `argv` (without the program and subcommand names).
    pub fn parse(argv: &[String]) -> Result<Self, ArgError> {
        let mut args = Args::parse(
            argv,
            &[
                "outside",
                "inside",
                "io",
                "cores",
                "first-core",
                "batch",
                "replay",
                "write-dir",
                "inside-mac",
            ],
        )?;
        let outside = args
            .value("outside")?
            .ok_or_else(|| ArgError("--outside IF is required".into()))?;
        let inside = args
            .value("inside")?
            .ok_or_else(|| ArgError("--inside IF is required".into()))?;
        if outside == inside {
            return Err(ArgError(format!(
                "--outside and --inside are both {outside:?}; a bridge needs two ports"
            )));
        }
        let replay = args.value("replay")?.map(PathBuf::from);
        let write_dir = args.value("write-dir")?.map(PathBuf::from);
        let mut inside_macs = Vec::new();
        while let Some(text) = args.value("inside-mac")? {
            inside_macs.push(parse_mac(&text)?);
        }
        let backend = match (args.value("io")?, &replay) {
            (Some(text), _) => Backend::parse(&text)?,
            (None, Some(_)) => Backend::Pcap,
            (None, None) => Backend::Xdp,
        };
        if (backend == Backend::Pcap) != replay.is_some() {
            return Err(ArgError("--io pcap and --replay FILE go together".into()));
        }
        if backend != Backend::Pcap && (write_dir.is_some() || !inside_macs.is_empty()) {
            return Err(ArgError(
                "--write-dir and --inside-mac apply to --io pcap only".into(),
            ));
        }
        let cores = positive(&mut args, "cores", 1)?;
        let first_core = match args.value("first-core")? {
            Some(text) => text
                .parse()
                .map_err(|_| ArgError(format!("--first-core {text:?}: expected a core number")))?,
            None => 0,
        };
        let batch = positive(&mut args, "batch", 64)?;
        if backend == Backend::Pcap && cores != 1 {
            return Err(ArgError("a replay runs one loop: drop --cores".into()));
        }
        args.finish()?;
        Ok(RunOptions {
            outside,
            inside,
            backend,
            cores,
            first_core,
            batch,
            replay,
            write_dir,
            inside_macs,
        })
    }
}

fn parse_mac(text: &str) -> Result<[u8; 6], ArgError> {
    let bad = || {
        ArgError(format!(
            "--inside-mac {text:?}: expected six hex bytes like 02:00:c6:12:00:15"
        ))
    };
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

fn positive(args: &mut Args, name: &str, default: usize) -> Result<usize, ArgError> {
    match args.value(name)? {
        None => Ok(default),
        Some(text) => match text.parse::<usize>() {
            Ok(value) if value > 0 => Ok(value),
            _ => Err(ArgError(format!(
                "--{name} {text:?}: expected a positive number"
            ))),
        },
    }
}

/// Entry point of `cutls run`.
pub fn main(argv: &[String]) -> ExitCode {
    if argv.iter().any(|arg| arg == "--help" || arg == "-h") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    // With a configuration file the box terminates TLS for its listeners.
    let mut config = None;
    for (i, arg) in argv.iter().enumerate() {
        if let Some(path) = arg.strip_prefix("--config=") {
            config = Some(PathBuf::from(path));
        } else if arg == "--config" {
            config = argv.get(i + 1).map(PathBuf::from);
        }
    }
    if let Some(path) = config {
        return crate::serve::main(path);
    }
    let options = match RunOptions::parse(argv) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("cutls run: {error}\n");
            eprint!("{USAGE}");
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
    match run(&options, &stop) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("cutls run: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Opens the ports, bridges until `stop`, prints the counters. Returns whether every loop
/// ended without an error.
pub fn run(options: &RunOptions, stop: &AtomicBool) -> io::Result<bool> {
    let config = BridgeConfig {
        batch_size: options.batch,
        ..BridgeConfig::default()
    };
    if options.backend == Backend::Pcap {
        return replay_capture(options, config, stop);
    }
    let cores = pinning_plan(options)?;
    match options.backend {
        // Handled above: a replay needs no interfaces and no pinning.
        Backend::Pcap => Ok(false),
        Backend::Xdp | Backend::XdpGeneric => {
            let preference = if options.backend == Backend::Xdp {
                AttachPreference::NativeOrGeneric
            } else {
                AttachPreference::Generic
            };
            let loops = options.cores as u32;
            // One AF_XDP socket, so one loop, per receive queue: frames of a queue without a
            // socket would go to the box's own stack instead of across the bridge.
            for interface in [&options.outside, &options.inside] {
                let queues = frame_io::receive_queue_count(interface)?;
                if queues != loops {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "{interface}: {queues} receive queue(s) but --cores {loops}; AF_XDP \
                             needs one loop per queue (--cores {queues}, or `ethtool -L \
                             {interface} combined {loops}`)"
                        ),
                    ));
                }
            }
            let outside = XdpInterface::attach(&options.outside, loops, preference)?;
            let inside = XdpInterface::attach(&options.inside, loops, preference)?;
            let xdp = XdpConfig::default();
            let mut bridges = Vec::new();
            for queue in 0..loops {
                let outside_port = XdpPort::open(&outside, queue, &xdp)?;
                let inside_port = XdpPort::open(&inside, queue, &xdp)?;
                if queue == 0 {
                    eprintln!(
                        "cutls: AF_XDP {}: {:?} attach, {:?} mode; {}: {:?} attach, {:?} mode",
                        options.outside,
                        outside_port.attach_mode(),
                        outside_port.bind_mode(),
                        options.inside,
                        inside_port.attach_mode(),
                        inside_port.bind_mode()
                    );
                }
                bridges.push(Bridge::new(outside_port, inside_port, config));
            }
            Ok(bridge_until_stopped(options, bridges, &cores, stop))
        }
        Backend::Packet | Backend::PacketSocket => {
            let mode = if options.backend == Backend::Packet {
                PacketMode::RingsOrSocket
            } else {
                PacketMode::Socket
            };
            // With several loops, the sockets of one interface share its frames by flow hash.
            let fanout_group = |interface: &str| -> io::Result<Option<u16>> {
                if options.cores == 1 {
                    return Ok(None);
                }
                let ifindex = frame_io::interface_index(interface)?;
                Ok(Some(
                    (std::process::id() as u16).wrapping_add(ifindex as u16),
                ))
            };
            let outside_config = PacketConfig {
                mode,
                fanout_group: fanout_group(&options.outside)?,
                ..PacketConfig::default()
            };
            let inside_config = PacketConfig {
                mode,
                fanout_group: fanout_group(&options.inside)?,
                ..PacketConfig::default()
            };
            let mut bridges = Vec::new();
            for _ in 0..options.cores {
                let outside_port = PacketPort::open(&options.outside, &outside_config)?;
                let inside_port = PacketPort::open(&options.inside, &inside_config)?;
                bridges.push(Bridge::new(outside_port, inside_port, config));
            }
            if let Some(first) = bridges.first() {
                let kind = |port: &PacketPort| {
                    if port.uses_rings() {
                        "TPACKET_V3/V2 rings"
                    } else {
                        "plain socket"
                    }
                };
                eprintln!(
                    "cutls: AF_PACKET {}: {}; {}: {}",
                    options.outside,
                    kind(first.outside()),
                    options.inside,
                    kind(first.inside())
                );
            }
            Ok(bridge_until_stopped(options, bridges, &cores, stop))
        }
    }
}

type CaptureFile = PcapWriter<BufWriter<File>>;

/// `--io pcap`: forwards the capture's frames between its two labelled ports until it is used
/// up (or a signal comes), then writes each port's output file.
fn replay_capture(
    options: &RunOptions,
    config: BridgeConfig,
    stop: &AtomicBool,
) -> io::Result<bool> {
    let path = options.replay.as_deref().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "--io pcap needs --replay FILE")
    })?;
    let bytes =
        fs::read(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let rule = if options.inside_macs.is_empty() {
        LabelRule::InterfaceNames {
            outside: options.outside.clone(),
            inside: options.inside.clone(),
        }
    } else {
        LabelRule::InsideSourceMacs(options.inside_macs.clone())
    };
    let replay = Replay::from_capture(&bytes, &rule).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })?;
    let skipped = replay.skipped();
    eprintln!(
        "cutls: replaying {} frames of {} ({} not Ethernet, {} truncated, {} on neither port)",
        replay.len(),
        path.display(),
        skipped.not_ethernet,
        skipped.truncated,
        skipped.unlabelled
    );
    if replay.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}: no frame arrives on either port; name the capture's interfaces with \
                 --outside/--inside, or label a one-link capture with --inside-mac",
                path.display()
            ),
        ));
    }
    let outside_file = output_file(options.write_dir.as_deref(), &options.outside)?;
    let inside_file = output_file(options.write_dir.as_deref(), &options.inside)?;
    let (outside, inside) = replay.into_ports(
        (&options.outside, outside_file),
        (&options.inside, inside_file),
    );
    let mut bridge = Bridge::new(outside, inside, config);
    eprintln!("cutls: ready");
    let mut error = None;
    while !bridge.outside().replay_done() && !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if let Err(failure) = bridge.poll_once() {
            error = Some(failure);
            break;
        }
    }
    let failed = error.is_some();
    let exits = [LoopExit {
        bridge,
        core: None,
        error,
    }];
    print_report(options, &exits);
    let [LoopExit { bridge, .. }] = exits;
    let (outside, inside) = bridge.into_ports();
    finish_output(outside)?;
    finish_output(inside)?;
    Ok(!failed)
}

fn output_file(dir: Option<&Path>, port: &str) -> io::Result<Option<CaptureFile>> {
    let Some(dir) = dir else { return Ok(None) };
    fs::create_dir_all(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    let path = dir.join(format!("{port}.pcap"));
    let file = File::create(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    PcapWriter::new(BufWriter::new(file), LinkType::Ethernet).map(Some)
}

fn finish_output(port: PcapPort<BufWriter<File>>) -> io::Result<()> {
    let name = port.name().to_string();
    port.finish()
        .map(drop)
        .map_err(|e| io::Error::new(e.kind(), format!("{name}: write output capture: {e}")))
}

/// The cores the loops are pinned to: loop i on `first_core + i`.
fn pinning_plan(options: &RunOptions) -> io::Result<Vec<CoreId>> {
    let available = available_cores();
    if available.is_empty() {
        eprintln!("cutls: warning: cannot list the cores; loops are not pinned");
        return Ok(Vec::new());
    }
    let mut plan = Vec::with_capacity(options.cores);
    for index in 0..options.cores {
        let wanted = options.first_core + index;
        let core = available
            .iter()
            .find(|core| core.id == wanted)
            .copied()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "core {wanted} is not available (cores: {:?})",
                        available.iter().map(|c| c.id).collect::<Vec<_>>()
                    ),
                )
            })?;
        plan.push(core);
    }
    Ok(plan)
}

fn bridge_until_stopped<P: FrameIo>(
    options: &RunOptions,
    bridges: Vec<Bridge<P>>,
    cores: &[CoreId],
    stop: &AtomicBool,
) -> bool {
    eprintln!(
        "cutls: bridging {} <-> {} with {} loop(s) on cores {:?}",
        options.outside,
        options.inside,
        bridges.len(),
        cores.iter().map(|core| core.id).collect::<Vec<_>>()
    );
    eprintln!("cutls: ready");
    let exits = run_pinned(bridges, cores, stop);
    print_report(options, &exits);
    exits.iter().all(|exit| exit.error.is_none())
}

fn print_report<P: FrameIo>(options: &RunOptions, exits: &[LoopExit<P>]) {
    let mut total = BridgeCounters::default();
    for exit in exits {
        total.merge(&exit.bridge.counters());
    }
    println!(
        "{} -> {}: {}",
        options.outside, options.inside, total.outside_to_inside
    );
    println!(
        "{} -> {}: {}",
        options.inside, options.outside, total.inside_to_outside
    );
    for (index, exit) in exits.iter().enumerate() {
        for port in [exit.bridge.outside(), exit.bridge.inside()] {
            match port.stats() {
                Ok(stats) => println!("loop {index} {}: {stats}", port.name()),
                Err(error) => println!("loop {index} {}: no statistics: {error}", port.name()),
            }
        }
        if let Some(error) = &exit.error {
            eprintln!("cutls: loop {index} stopped: {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defaults_and_all_options() {
        let options = RunOptions::parse(&argv(&["--outside", "o", "--inside", "i"])).unwrap();
        assert_eq!(
            options,
            RunOptions {
                outside: "o".into(),
                inside: "i".into(),
                backend: Backend::Xdp,
                cores: 1,
                first_core: 0,
                batch: 64,
                replay: None,
                write_dir: None,
                inside_macs: Vec::new(),
            }
        );
        let options = RunOptions::parse(&argv(&[
            "--outside=o",
            "--inside=i",
            "--io",
            "packet",
            "--cores",
            "2",
            "--first-core",
            "1",
            "--batch",
            "32",
        ]))
        .unwrap();
        assert_eq!(options.backend, Backend::Packet);
        assert_eq!(
            (options.cores, options.first_core, options.batch),
            (2, 1, 32)
        );
    }

    #[test]
    fn bad_options_are_explained() {
        let error = |items: &[&str]| RunOptions::parse(&argv(items)).unwrap_err().0;
        assert_eq!(error(&["--inside", "i"]), "--outside IF is required");
        assert!(error(&["--outside", "a", "--inside", "a"]).contains("two ports"));
        assert!(
            error(&["--outside", "a", "--inside", "b", "--io", "dpdk"]).contains("expected xdp")
        );
        assert!(error(&["--outside", "a", "--inside", "b", "--cores", "0"]).contains("positive"));
        assert_eq!(
            error(&["--outside", "a", "--inside", "b", "--listen", "x"]),
            "unknown option --listen"
        );
    }

    #[test]
    fn missing_interface_fails_with_its_name() {
        let options = RunOptions {
            outside: "no-such-out0".into(),
            inside: "no-such-in0".into(),
            backend: Backend::Packet,
            cores: 1,
            first_core: 0,
            batch: 64,
            replay: None,
            write_dir: None,
            inside_macs: Vec::new(),
        };
        let error = run(&options, &AtomicBool::new(true)).unwrap_err();
        assert!(error.to_string().contains("no-such-out0"), "{error}");
    }

    #[test]
    fn replay_options() {
        let options = RunOptions::parse(&argv(&[
            "--outside=o",
            "--inside=i",
            "--replay",
            "cap.pcap",
            "--inside-mac",
            "02:00:c6:12:00:15",
            "--inside-mac",
            "02:00:c6:12:00:16",
            "--write-dir",
            "out",
        ]))
        .unwrap();
        assert_eq!(options.backend, Backend::Pcap, "--replay implies --io pcap");
        assert_eq!(options.replay, Some(PathBuf::from("cap.pcap")));
        assert_eq!(options.write_dir, Some(PathBuf::from("out")));
        assert_eq!(
            options.inside_macs,
            vec![[2, 0, 0xc6, 0x12, 0, 0x15], [2, 0, 0xc6, 0x12, 0, 0x16]]
        );
        let error = |items: &[&str]| RunOptions::parse(&argv(items)).unwrap_err().0;
        assert!(error(&["--outside=o", "--inside=i", "--io", "pcap"]).contains("go together"));
        assert!(error(&["--outside=o", "--inside=i", "--write-dir", "d"]).contains("pcap only"));
        assert!(error(&[
            "--outside=o",
            "--inside=i",
            "--replay=f",
            "--inside-mac",
            "02:00"
        ])
        .contains("six hex bytes"));
        assert!(
            error(&["--outside=o", "--inside=i", "--replay=f", "--cores", "2"])
                .contains("one loop")
        );
    }

    fn ethernet_frame(destination: [u8; 6], source: [u8; 6], tag: u8) -> Vec<u8> {
        let mut frame = Vec::new();
        frame.extend_from_slice(&destination);
        frame.extend_from_slice(&source);
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&[tag; 46]);
        frame
    }

    #[test]
    fn replay_writes_what_each_port_transmits() {
        let client = [2, 0, 0, 0, 0, 0x0a];
        let server = [2, 0, 0, 0, 0, 0x15];
        let dir = std::env::temp_dir().join(format!("cutls-run-replay-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let capture_path = dir.join("in.pcap");
        let mut capture = PcapWriter::new(Vec::new(), LinkType::Ethernet).unwrap();
        capture
            .write_frame(1_000, &ethernet_frame(server, client, 1))
            .unwrap();
        capture
            .write_frame(2_000, &ethernet_frame(client, server, 2))
            .unwrap();
        capture
            .write_frame(3_000, &ethernet_frame(server, client, 3))
            .unwrap();
        fs::write(&capture_path, capture.into_inner()).unwrap();

        let options = RunOptions {
            outside: "outside".into(),
            inside: "inside".into(),
            backend: Backend::Pcap,
            cores: 1,
            first_core: 0,
            batch: 64,
            replay: Some(capture_path),
            write_dir: Some(dir.join("out")),
            inside_macs: vec![server],
        };
        assert!(run(&options, &AtomicBool::new(false)).unwrap());
        let inside = fs::read(dir.join("out/inside.pcap")).unwrap();
        let outside = fs::read(dir.join("out/outside.pcap")).unwrap();
        let tags = |bytes: &[u8]| -> Vec<u8> {
            cutls_dataplane::pcap::Capture::read(bytes)
                .unwrap()
                .records
                .iter()
                .map(|record| record.data[14])
                .collect()
        };
        assert_eq!(
            tags(&inside),
            vec![1, 3],
            "client frames leave on the inside port"
        );
        assert_eq!(
            tags(&outside),
            vec![2],
            "server frames leave on the outside port"
        );

        let unlabelled = RunOptions {
            inside_macs: Vec::new(),
            ..options
        };
        let error = run(&unlabelled, &AtomicBool::new(false)).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("no frame arrives on either port"),
            "{error}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
