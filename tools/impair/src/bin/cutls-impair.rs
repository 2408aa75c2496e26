//! `cutls-impair`: bridges two interfaces and impairs the frames crossing each way.
//!
//! ```text
//! cutls-impair --a IF --b IF [--seed N] [--both SPEC] [--a-to-b SPEC] [--b-to-a SPEC]
//! SPEC: loss=1%,dup=0.5%,reorder=2%,delay=4000,corrupt=0.2%,corrupt-fixed=0.1%  (or none)
//! ```
//!
//! It runs until SIGINT or SIGTERM, then prints what it did per direction as `key=value`
//! lines. AF_PACKET rings on both interfaces; run it in a namespace of its own between two
//! veth pairs (`tools/lab up --impair-side server|client|both` builds that).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cutls_dataplane::io::af_packet::{PacketConfig, PacketPort};
use cutls_dataplane::io::{wait_readable, FrameIo};
use cutls_impair::{ImpairSpec, Impairer};

const USAGE: &str = "usage: cutls-impair --a IF --b IF [--seed N] [--both SPEC] [--a-to-b SPEC] [--b-to-a SPEC]\n\
SPEC: loss=1%,dup=0.5%,reorder=2%,delay=4000,corrupt=0.2%,corrupt-fixed=0.1% (or none)";

struct Options {
    a: String,
    b: String,
    seed: u64,
    a_to_b: ImpairSpec,
    b_to_a: ImpairSpec,
}

fn parse_options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let (mut a, mut b, mut seed) = (None, None, 1u64);
    let (mut a_to_b, mut b_to_a) = (ImpairSpec::default(), ImpairSpec::default());
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--a" => a = Some(value()?),
            "--b" => b = Some(value()?),
            "--seed" => seed = value()?.parse().map_err(|_| "--seed: not a number".to_string())?,
            "--both" => {
                let spec = ImpairSpec::parse(&value()?).map_err(|e| format!("--both: {e}"))?;
                (a_to_b, b_to_a) = (spec, spec);
            }
            "--a-to-b" => a_to_b = ImpairSpec::parse(&value()?).map_err(|e| format!("--a-to-b: {e}"))?,
            "--b-to-a" => b_to_a = ImpairSpec::parse(&value()?).map_err(|e| format!("--b-to-a: {e}"))?,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    let a = a.ok_or("--a is required")?;
    let b = b.ok_or("--b is required")?;
    Ok(Options { a, b, seed, a_to_b, b_to_a })
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(error) => {
            if !error.is_empty() {
                eprintln!("cutls-impair: {error}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(error) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("cutls-impair: cannot handle signal {signal}: {error}");
            return ExitCode::FAILURE;
        }
    }
    match run(&options, &stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cutls-impair: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: &Options, stop: &AtomicBool) -> std::io::Result<()> {
    let config = PacketConfig::default();
    let mut a = PacketPort::open(&options.a, &config)?;
    let mut b = PacketPort::open(&options.b, &config)?;
    // Different streams each way, both from the one seed.
    let mut a_to_b = Impairer::new(options.a_to_b, options.seed);
    let mut b_to_a = Impairer::new(options.b_to_a, options.seed ^ 0x5eed_b2a);
    let start = Instant::now();
    let mut to_b = Vec::new();
    let mut to_a = Vec::new();
    eprintln!("cutls-impair: ready ({} <-> {})", options.a, options.b);
    while !stop.load(Ordering::Relaxed) {
        let now = start.elapsed().as_micros() as u64;
        let mut worked = false;
        {
            let frames = a.recv_batch(64)?;
            worked |= !frames.is_empty();
            for frame in frames.iter() {
                a_to_b.frame(now, frame, &mut to_b);
            }
        }
        {
            let frames = b.recv_batch(64)?;
            worked |= !frames.is_empty();
            for frame in frames.iter() {
                b_to_a.frame(now, frame, &mut to_a);
            }
        }
        a_to_b.due(now, &mut to_b);
        b_to_a.due(now, &mut to_a);
        if !to_b.is_empty() {
            b.send_batch(&mut to_b.iter().map(Vec::as_slice))?;
            to_b.clear();
        }
        if !to_a.is_empty() {
            a.send_batch(&mut to_a.iter().map(Vec::as_slice))?;
            to_a.clear();
        }
        if !worked {
            let next = [a_to_b.next_due(), b_to_a.next_due()].into_iter().flatten().min();
            let wait = next.map_or(Duration::from_millis(10), |due| Duration::from_micros(due.saturating_sub(now).min(10_000)));
            if !wait.is_zero() {
                let fds: Vec<_> = [a.readiness_fd(), b.readiness_fd()].into_iter().flatten().collect();
                wait_readable(&fds, wait)?;
            }
        }
    }
    println!("a_to_b: {}", a_to_b.counters());
    println!("b_to_a: {}", b_to_a.counters());
    Ok(())
}
