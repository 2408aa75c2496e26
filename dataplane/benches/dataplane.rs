//! `make bench-dataplane`: what the splice costs per packet, in memory, with no I/O.
//!
//! Records the frames that reach the box while many concurrent TLS sessions (rustls clients,
//! backends, the engine in between, from the in-memory harness of `tests/engine_memory`) upload
//! and download, then replays them into a fresh engine with the same keys and times (the
//! golden-replay method: the engine is deterministic) and times every call that carries a data
//! segment of at least 1,000 bytes, both directions. Beside it, in the same run: the crypto
//! alone on the same payload lengths (the engine's own AEAD code, so the ratio says how close
//! the splice is to the crypto it cannot avoid; and the one-shot RustCrypto crates, per packet); allocations during those calls
//! (a counting global allocator); and two engines replaying at once on two threads against one.
//! The last line sums it up for scripts.

#[path = "../tests/engine_memory/mod.rs"]
#[allow(dead_code, unused_imports)]
mod harness;

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use aes_gcm::aead::{AeadInOut, KeyInit};
use cutls_crypto::ReleaseMode;
use cutls_dataplane::session::handover::SecretLog;
use cutls_dataplane::session::{Engine, EngineConfig, ListenerSetup, Output, Port};
use cutls_dataplane::wire::{parse_frame, LinkType, NetworkPayload, Transport};

use harness::hosts::{BackendExpectation, BackendHost, ClientHost, CloseStyle, ConnectionPlan};
use harness::tls::{client_config, deterministic_server_config, Suite};
use harness::{content, Addresses, Emitted, Hop, Lab, Middlebox, Side, WireConfig, MS};

/// Counts allocations while `COUNTING` is set (the timed calls only).
struct CountingAllocator;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call goes straight to the system allocator; the counter has no effect on it.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's layout contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as for `dealloc`, and `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const SEED: u64 = 0xbe7c_4;
/// Per session: the request and the response (many full segments each way).
const UPLOAD: usize = 64 * 1024;
const DOWNLOAD: usize = 256 * 1024;
/// A data segment, for the timing: at least this much TCP payload.
const DATA_SEGMENT: usize = 1000;

/// One frame that reached the box, as recorded.
struct Input {
    time_ns: u64,
    port: Port,
    frame: Vec<u8>,
    /// TCP payload length (0 for anything else).
    payload: usize,
}

fn main() {
    let sessions: usize = std::env::var("CUTLS_BENCH_SESSIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    println!("bench-dataplane, {}: {sessions} concurrent sessions, {} KiB up and {} KiB down each, replayed in memory", date(), UPLOAD / 1024, DOWNLOAD / 1024);
    println!(
        "{:<22} {:>9} {:>8} {:>9} {:>10} {:>11} {:>8} {:>12} {:>9} {:>8}",
        "suite", "packets", "Mpps", "Gbit/s", "ns/packet", "ns w/o AEAD", "vs AEAD", "RustCrypto", "allocs/p", "2 loops"
    );
    let mut summary = (f64::MAX, 0.0f64, f64::MAX);
    for suite in [Suite::Tls13Aes128Gcm, Suite::Tls13Chacha20] {
        let (inputs, recorded) = record(suite, sessions);
        // A poll loop's steady state: its frame pool already holds the buffers that a burst
        // like this one needs (the first replay, untimed, leaves them there).
        let mut out = Output::default();
        replay(&inputs, &mut out);
        let single = replay(&inputs, &mut out);
        assert_eq!(single.records, recorded, "the replay diverged from the recording (records opened, sealed)");
        let (crypto_ns, rustcrypto_ns) = aead_alone(suite, &inputs);
        let both_warm = Barrier::new(2);
        let pair_elapsed = std::thread::scope(|scope| {
            let run = || {
                let mut out = Output::default();
                replay(&inputs, &mut out);
                both_warm.wait();
                replay(&inputs, &mut out).total_s
            };
            let a = scope.spawn(run);
            let b = scope.spawn(run);
            a.join().unwrap_or(f64::NAN).max(b.join().unwrap_or(f64::NAN))
        });
        let scaling = 2.0 * single.total_s / pair_elapsed;
        let ns_per_packet = single.data_ns as f64 / single.packets as f64;
        let ratio = crypto_ns as f64 / single.data_ns as f64;
        let allocs = single.allocations as f64 / single.packets as f64;
        println!(
            "{:<22} {:>9} {:>8.3} {:>9.2} {:>10.0} {:>11.0} {:>8.2} {:>11.0}ns {:>9.2} {:>7.2}x",
            format!("{suite:?}"),
            single.packets,
            single.packets as f64 / single.data_ns as f64 * 1e3,
            single.bytes as f64 * 8.0 / single.data_ns as f64,
            ns_per_packet,
            (single.data_ns as f64 - crypto_ns as f64) / single.packets as f64,
            ratio,
            rustcrypto_ns as f64 / single.packets as f64,
            allocs,
            scaling
        );
        summary = (summary.0.min(ratio), summary.1.max(allocs), summary.2.min(scaling));
    }
    println!(
        "bench-dataplane: ratio_to_crypto={:.2} allocs_per_packet={:.2} scaling_2_loops={:.2} bytes_per_idle_session=see-tools/idle-sessions",
        summary.0, summary.1, summary.2
    );
}

/// The box for recording: an engine whose inputs the lab captures.
struct Recorder {
    engine: Engine,
    output: Output,
}

impl Middlebox for Recorder {
    fn frame(&mut self, now_ns: u64, side: Side, frame: &[u8], out: &mut Emitted) {
        let port = if side == Side::Outside { Port::Outside } else { Port::Inside };
        self.engine.handle_frame(now_ns, port, frame, &mut self.output);
        out.outside.append(&mut self.output.outside);
        out.inside.append(&mut self.output.inside);
    }

    fn tick(&mut self, now_ns: u64, out: &mut Emitted) {
        self.engine.poll(now_ns, &mut self.output);
        out.outside.append(&mut self.output.outside);
        out.inside.append(&mut self.output.inside);
    }

    fn live_sessions(&self) -> usize {
        self.engine.sessions()
    }

    fn report(&self) -> String {
        format!("{} live sessions, {:?}", self.engine.sessions(), self.engine.counters())
    }
}

fn engine(addresses: &Addresses) -> Engine {
    let secrets = Arc::new(SecretLog::default());
    let listener = ListenerSetup {
        vip: addresses.vip,
        tls: Some(deterministic_server_config(secrets.clone(), SEED)),
        secrets,
        backends: addresses.backends.iter().map(|(address, _)| *address).collect(),
        mode: ReleaseMode::CutThrough,
        passthrough: None,
    };
    // Sessions stay open across the replay: longer idle and close timeouts than the tests'.
    let config = harness::golden::engine_config(listener, addresses.outside_mac, addresses.inside_mac, SEED);
    Engine::new(EngineConfig { idle_timeout_ns: 600_000 * MS, close_timeout_ns: 60_000 * MS, ..config })
}

/// Runs `sessions` exchanges at once on a lossless wire and returns what reached the box.
fn record(suite: Suite, sessions: usize) -> (Vec<Input>, (u64, u64)) {
    let addresses = Addresses::ipv4();
    let boxed = Recorder { engine: engine(&addresses), output: Output::default() };
    let client = ClientHost::new(addresses.client_mac, addresses.client_ip, addresses.vip, SEED);
    let backends = BackendHost::new(addresses.backends.clone(), SEED);
    let mut lab = Lab::new(boxed, client, backends, WireConfig::default());
    lab.capturing = true;
    let mut opened: Vec<(usize, SocketAddr)> = Vec::new();
    for i in 0..sessions as u64 {
        let head = format!("POST /upload HTTP/1.1\r\nhost: localhost\r\ncontent-length: {UPLOAD}\r\n\r\n");
        let request = content(&head, UPLOAD, i * 31 + 1);
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {DOWNLOAD}\r\n\r\n");
        let response = content(&head, DOWNLOAD, i * 31 + 2);
        let session = lab.client.open(ConnectionPlan {
            config: client_config(suite),
            request: request.clone(),
            response: response.clone(),
            write_after_handshake: false,
            hold_request_ns: 0,
            corrupt: None,
            plain: false,
            close: CloseStyle::Eager,
        });
        let address = lab.client.address_of(session);
        lab.backends.expect(
            address,
            BackendExpectation { request, response, tolerate_flip_at: None, respond_at_once: false, close_first: false },
        );
        opened.push((session, address));
    }
    let started = Instant::now();
    lab.run_until("every exchange", 600_000 * MS, |lab| lab.client.sessions.iter().all(|session| session.is_finished()));
    assert!(lab.settle(2_000 * MS), "{}", lab.stuck("the sessions to end"));
    for (session, _) in &opened {
        let client = &lab.client.sessions[*session];
        assert!(client.tls_error.is_none(), "client TLS error");
    }
    eprintln!("  recorded {suite:?}: {} frames in {:.1} s", lab.captured.len(), started.elapsed().as_secs_f64());
    let counters = lab.boxed.engine.counters();
    let records = (counters.records_opened, counters.records_sealed);
    let inputs = lab.captured
        .drain(..)
        .filter_map(|(time_ns, hop, frame)| {
            let port = match hop {
                Hop::ClientToBox => Port::Outside,
                Hop::BackendToBox => Port::Inside,
                _ => return None,
            };
            let payload = tcp_payload_len(&frame);
            Some(Input { time_ns, port, frame, payload })
        })
        .collect();
    (inputs, records)
}

fn tcp_payload_len(frame: &[u8]) -> usize {
    match parse_frame(LinkType::Ethernet, frame) {
        Ok(parsed) => match parsed.network {
            NetworkPayload::Ip { transport: Transport::Tcp(tcp), .. } => tcp.payload.len(),
            _ => 0,
        },
        Err(_) => 0,
    }
}

struct Replay {
    /// Data segments timed, their TCP payload bytes, the time in those calls, allocations then.
    packets: u64,
    bytes: u64,
    data_ns: u64,
    allocations: u64,
    /// The whole replay, handshakes included.
    total_s: f64,
    /// Records opened and sealed: the recording's, if the replay did the same work.
    records: (u64, u64),
}

/// Replays `inputs` into a fresh engine, building frames in `out`'s pool.
fn replay(inputs: &[Input], out: &mut Output) -> Replay {
    let addresses = Addresses::ipv4();
    let mut engine = engine(&addresses);
    let mut result = Replay { packets: 0, bytes: 0, data_ns: 0, allocations: 0, total_s: 0.0, records: (0, 0) };
    let started = Instant::now();
    for input in inputs {
        if input.payload >= DATA_SEGMENT {
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            COUNTING.store(true, Ordering::Relaxed);
            let at = Instant::now();
            engine.handle_frame(input.time_ns, input.port, &input.frame, out);
            let took = at.elapsed();
            COUNTING.store(false, Ordering::Relaxed);
            result.allocations += ALLOCATIONS.load(Ordering::Relaxed) - before;
            result.data_ns += took.as_nanos() as u64;
            result.packets += 1;
            result.bytes += input.payload as u64;
        } else {
            engine.handle_frame(input.time_ns, input.port, &input.frame, out);
        }
        // Dropped as the poll loop's flush would have sent them, and their buffers kept.
        out.recycle();
    }
    result.total_s = started.elapsed().as_secs_f64();
    let counters = engine.counters();
    result.records = (counters.records_opened, counters.records_sealed);
    result
}

/// The crypto alone on the same payload lengths: the engine's own sealer (`cutls-crypto`, the
/// AEAD code the splice runs; opening costs the same) and the one-shot RustCrypto crate, each
/// sealing one record per data segment. Nanoseconds: (cutls-crypto, RustCrypto).
fn aead_alone(suite: Suite, inputs: &[Input]) -> (u64, u64) {
    use cutls_crypto::{AeadAlgorithm, ContentType, ProtocolVersion, RecordSealer, TrafficKeys};
    let aead = if suite == Suite::Tls13Chacha20 { AeadAlgorithm::Chacha20Poly1305 } else { AeadAlgorithm::Aes128Gcm };
    let key: Vec<u8> = (0..aead.key_len() as u8).collect();
    let keys = TrafficKeys::new(ProtocolVersion::Tls13, aead, &key, &[3u8; 12]).expect("keys");
    let mut sealer = RecordSealer::new(&keys, 0);
    let data = vec![0x5au8; 16 * 1024];
    let mut record = vec![0u8; 17 * 1024];
    let segments: Vec<usize> = inputs.iter().filter(|input| input.payload >= DATA_SEGMENT).map(|input| input.payload).collect();
    let started = Instant::now();
    for &len in &segments {
        let data_len = len - 22;
        let sealed = sealer.seal(ContentType::ApplicationData, &data[..data_len], &mut record).expect("seal");
        std::hint::black_box(sealed);
    }
    let ours = started.elapsed().as_nanos() as u64;
    let mut buffer = vec![0u8; 16 * 1024];
    let nonce = [7u8; 12];
    let header = [0x17, 0x03, 0x03, 0x05, 0xb0];
    let started = Instant::now();
    for &len in &segments {
        let body = &mut buffer[..len - 22];
        if aead == AeadAlgorithm::Chacha20Poly1305 {
            let cipher = chacha20poly1305::ChaCha20Poly1305::new_from_slice(&key).expect("key");
            std::hint::black_box(cipher.encrypt_inout_detached((&nonce).into(), &header, body.into()).expect("seal"));
        } else {
            let cipher = aes_gcm::Aes128Gcm::new_from_slice(&key).expect("key");
            std::hint::black_box(cipher.encrypt_inout_detached((&nonce).into(), &header, body.into()).expect("seal"));
        }
    }
    (ours, started.elapsed().as_nanos() as u64)
}

fn date() -> String {
    std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|text| text.trim().to_string())
        .unwrap_or_default()
}
