//! `make bench-crypto`: the streaming engine against one-shot AEADs, in the same run.
//!
//! For each AEAD at 1448 B and 16384 B records (TLS 1.3 framing): streaming open in order (a
//! 16 KiB record arrives as 1448-byte segments), open with the segments in random order, and
//! seal; beside ring's and RustCrypto's one-shot open of the same bytes and `openssl speed -evp`.
//! Prints GB/s (plaintext bytes) and the ratio of ours to each reference: the median of runs,
//! interleaved across the implementations compared. Arguments filter rows (`-- chacha 1448`).

use std::hint::black_box;
use std::process::Command;
use std::time::Instant;

use aes_gcm::aead::{AeadInOut, KeyInit};
use cutls_crypto::{
    AeadAlgorithm, ContentType, OpenOutput, OpenerConfig, ProtocolVersion, RecordOpener, RecordSealer, Stop, TrafficKeys,
};

const SEGMENT: usize = 1448;
const RUNS: usize = 7;

fn main() {
    println!("cutls-crypto benchmark, {} (one core, median of {RUNS} runs, GB/s of plaintext)", date());
    println!(
        "{:<18} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "aead", "bytes", "open", "open-rnd", "seal", "ring", "rustcr", "openssl", "open/ring", "open/rc", "open/ossl"
    );
    // Optional filters (`cargo bench -p cutls-crypto --bench crypto -- chacha 1448`): an AEAD
    // name part and/or a size; no filter runs every row.
    let filters: Vec<String> = std::env::args().skip(1).filter(|arg| !arg.starts_with('-')).collect();
    for aead in [AeadAlgorithm::Aes128Gcm, AeadAlgorithm::Aes256Gcm, AeadAlgorithm::Chacha20Poly1305] {
        for size in [1448usize, 16384] {
            let name = aead.name().to_ascii_lowercase();
            let selected = filters.iter().all(|filter| match filter.parse::<usize>() {
                Ok(wanted) => wanted == size,
                Err(_) => name.contains(&filter.to_ascii_lowercase()),
            });
            if selected {
                row(aead, size);
            }
        }
    }
}

fn row(aead: AeadAlgorithm, size: usize) {
    let key: Vec<u8> = (0..aead.key_len() as u8).collect();
    let iv = [3u8; 12];
    let keys = TrafficKeys::new(ProtocolVersion::Tls13, aead, &key, &iv).unwrap();
    let data: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut sealer = RecordSealer::new(&keys, 0);
    let record_len = sealer.record_len(size);
    // A stream of records, opened by one long-lived opener per pass as a session would.
    let records = ((1 << 20) / record_len).max(4);
    let mut stream = vec![0u8; record_len * records];
    for piece in stream.chunks_mut(record_len) {
        sealer.seal(ContentType::ApplicationData, &data, piece).unwrap();
    }
    let record = stream[..record_len].to_vec();

    // Segments of a record as TCP would carry it, and a shuffled order (header segment first:
    // it gives the record's length).
    let segments: Vec<(usize, usize)> =
        (0..record_len).step_by(SEGMENT).map(|a| (a, (a + SEGMENT).min(record_len))).collect();
    let mut shuffled = segments.clone();
    let mut state = 0x1234_5678u64;
    for i in (2..shuffled.len()).rev() {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        shuffled.swap(i, 1 + (state >> 33) as usize % i);
    }
    let passes = ((64 << 20) / stream.len()).max(2);
    let config = OpenerConfig { keep_completed: false, ..OpenerConfig::default() };
    let stream_bytes = size * records;

    // One pass of our streaming open over the whole stream, segments in `order`.
    let open_pass = |order: &[(usize, usize)], work: &mut [u8]| {
        let mut opener = RecordOpener::new(&keys, 0, 0, config);
        let mut out = OpenOutput::default();
        work.copy_from_slice(&stream);
        for base in (0..stream.len()).step_by(record_len) {
            for &(a, b) in order {
                let step = opener.open((base + a) as u64, &mut work[base + a..base + b], &mut out).unwrap();
                debug_assert!(matches!(step.stop, None | Some(Stop::Record(_))));
            }
        }
        black_box(&work);
    };
    if std::env::var_os("CUTLS_BENCH_PROFILE").is_some() {
        // Only our in-order open, for a few seconds: for `perf record` / callgrind.
        let seconds: f64 = std::env::var("CUTLS_BENCH_PROFILE").ok().and_then(|v| v.parse().ok()).unwrap_or(3.0);
        let start = Instant::now();
        let mut rates = Vec::new();
        let mut work = stream.clone();
        // CUTLS_BENCH_ORDER=random profiles the shuffled order instead.
        let order = if std::env::var("CUTLS_BENCH_ORDER").is_ok_and(|v| v == "random") { &shuffled } else { &segments };
        while start.elapsed().as_secs_f64() < seconds {
            // One pass at a time, so that short runs under callgrind work too.
            let pass = Instant::now();
            open_pass(order, &mut work);
            rates.push(stream_bytes as f64 / pass.elapsed().as_secs_f64() / 1e9);
        }
        rates.sort_by(|a, b| a.total_cmp(b));
        println!("{:<18} {:>6} {:>9.2} (open only, median of {} passes)", aead.name(), size, rates[rates.len() / 2], rates.len());
        return;
    }
    let iterations = (64 << 20) / size.max(1);
    let header: [u8; 5] = record[..5].try_into().unwrap();
    // ring one-shot open of the same record (TLS 1.3 AAD = header, nonce = iv ^ 0).
    let ring_algorithm = match aead {
        AeadAlgorithm::Aes128Gcm => &ring::aead::AES_128_GCM,
        AeadAlgorithm::Aes256Gcm => &ring::aead::AES_256_GCM,
        AeadAlgorithm::Chacha20Poly1305 => &ring::aead::CHACHA20_POLY1305,
    };
    let ring_key = ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(ring_algorithm, &key).unwrap());
    let (mut work_in_order, mut work_random) = (stream.clone(), stream.clone());
    let (mut work_ring, mut work_rustcrypto) = (record.clone(), record.clone());
    let mut seal_buffer = vec![0u8; record_len];
    let mut operations = [
        Operation::new(stream_bytes, passes, || open_pass(&segments, &mut work_in_order)),
        Operation::new(stream_bytes, passes, || open_pass(&shuffled, &mut work_random)),
        Operation::new(size, iterations, || {
            black_box(sealer.seal(ContentType::ApplicationData, &data, &mut seal_buffer).unwrap());
        }),
        Operation::new(size, iterations, || {
            work_ring.copy_from_slice(&record);
            let nonce = ring::aead::Nonce::assume_unique_for_key(iv);
            black_box(ring_key.open_in_place(nonce, ring::aead::Aad::from(header), &mut work_ring[5..]).unwrap());
        }),
        Operation::new(size, iterations, || {
            let work = &mut work_rustcrypto;
            work.copy_from_slice(&record);
            let body_end = record.len() - 16;
            let (body, tag) = work[5..].split_at_mut(body_end - 5);
            let tag: &[u8] = tag;
            match aead {
                AeadAlgorithm::Aes128Gcm => aes_gcm::Aes128Gcm::new_from_slice(&key)
                    .unwrap()
                    .decrypt_inout_detached((&iv).into(), &header, body.into(), tag.try_into().unwrap())
                    .unwrap(),
                AeadAlgorithm::Aes256Gcm => aes_gcm::Aes256Gcm::new_from_slice(&key)
                    .unwrap()
                    .decrypt_inout_detached((&iv).into(), &header, body.into(), tag.try_into().unwrap())
                    .unwrap(),
                AeadAlgorithm::Chacha20Poly1305 => chacha20poly1305::ChaCha20Poly1305::new_from_slice(&key)
                    .unwrap()
                    .decrypt_inout_detached((&iv).into(), &header, body.into(), tag.try_into().unwrap())
                    .unwrap(),
            }
        }),
    ];
    let [open_in_order, open_random, seal, ring_open, rustcrypto_open] = measure(&mut operations)[..] else {
        unreachable!("five operations")
    };
    let openssl = openssl_speed(aead, size);
    let ratio = |ours: f64, theirs: Option<f64>| theirs.map_or("-".to_string(), |t| format!("{:.2}x", ours / t));
    println!(
        "{:<18} {:>6} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9} {:>8} {:>8} {:>8}",
        aead.name(),
        size,
        open_in_order,
        open_random,
        seal,
        ring_open,
        rustcrypto_open,
        openssl.map_or("-".to_string(), |v| format!("{v:.2}")),
        ratio(open_in_order, Some(ring_open)),
        ratio(open_in_order, Some(rustcrypto_open)),
        ratio(open_in_order, openssl),
    );
}

/// A measured operation: `iterations` calls per run, each on `size` bytes.
struct Operation<'a> {
    size: usize,
    iterations: usize,
    call: Box<dyn FnMut() + 'a>,
}

impl<'a> Operation<'a> {
    fn new(size: usize, iterations: usize, call: impl FnMut() + 'a) -> Self {
        Operation { size, iterations, call: Box::new(call) }
    }
}

/// GB/s of each operation: the median of `RUNS` runs. The runs are interleaved (one run of
/// each operation, then the next round), so that a slow period of this shared machine affects
/// every operation alike instead of whichever was running.
fn measure(operations: &mut [Operation]) -> Vec<f64> {
    for operation in operations.iter_mut() {
        for _ in 0..operation.iterations / 10 + 1 {
            (operation.call)();
        }
    }
    let mut rates = vec![Vec::with_capacity(RUNS); operations.len()];
    for _ in 0..RUNS {
        for (operation, rates) in operations.iter_mut().zip(&mut rates) {
            let start = Instant::now();
            for _ in 0..operation.iterations {
                (operation.call)();
            }
            rates.push((operation.size * operation.iterations) as f64 / start.elapsed().as_secs_f64() / 1e9);
        }
    }
    rates
        .into_iter()
        .map(|mut rates| {
            rates.sort_by(|a, b| a.total_cmp(b));
            rates[RUNS / 2]
        })
        .collect()
}

/// `openssl speed -evp` of the same AEAD at the same size, in GB/s, if openssl is installed.
fn openssl_speed(aead: AeadAlgorithm, size: usize) -> Option<f64> {
    let name = match aead {
        AeadAlgorithm::Aes128Gcm => "aes-128-gcm",
        AeadAlgorithm::Aes256Gcm => "aes-256-gcm",
        AeadAlgorithm::Chacha20Poly1305 => "chacha20-poly1305",
    };
    let output = Command::new("openssl")
        .args(["speed", "-evp", name, "-bytes", &size.to_string(), "-seconds", "1", "-mr"])
        .output()
        .ok()?;
    // Machine-readable output: "+F:<n>:<name>:<bytes per second at size>".
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().find(|line| line.starts_with("+F:"))?;
    let value: f64 = line.rsplit(':').next()?.parse().ok()?;
    Some(value / 1e9)
}

fn date() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
