//! `make bench-crypto`: the streaming engine against one-shot AEADs, in the same run.
//!
//! For each AEAD at 1448 B and 16384 B records (TLS 1.3 framing): streaming open in order (a
//! 16 KiB record arrives as 1448-byte segments), open with the segments in random order, and
//! seal; beside ring's and RustCrypto's one-shot open of the same bytes and `openssl speed -evp`.
//! Prints GB/s (plaintext bytes) and the ratio of ours to each reference. Median of runs.

use std::hint::black_box;
use std::process::Command;
use std::time::Instant;

use aes_gcm::aead::{AeadInPlace, KeyInit};
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
    for aead in [AeadAlgorithm::Aes128Gcm, AeadAlgorithm::Aes256Gcm, AeadAlgorithm::Chacha20Poly1305] {
        for size in [1448usize, 16384] {
            row(aead, size);
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

    let mut work = stream.clone();
    let mut open_with = |order: &[(usize, usize)]| {
        measure(stream_bytes, passes, || {
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
        })
    };
    let open_in_order = open_with(&segments);
    let open_random = open_with(&shuffled);
    let mut seal_buffer = vec![0u8; record_len];
    let iterations = (64 << 20) / size.max(1);
    let seal = measure(size, iterations, || {
        black_box(sealer.seal(ContentType::ApplicationData, &data, &mut seal_buffer).unwrap());
    });
    let mut work = record.clone();

    // ring one-shot open of the same record (TLS 1.3 AAD = header, nonce = iv ^ 0).
    let ring_algorithm = match aead {
        AeadAlgorithm::Aes128Gcm => &ring::aead::AES_128_GCM,
        AeadAlgorithm::Aes256Gcm => &ring::aead::AES_256_GCM,
        AeadAlgorithm::Chacha20Poly1305 => &ring::aead::CHACHA20_POLY1305,
    };
    let ring_key = ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(ring_algorithm, &key).unwrap());
    let header: [u8; 5] = record[..5].try_into().unwrap();
    let ring_open = measure(size, iterations, || {
        work.copy_from_slice(&record);
        let nonce = ring::aead::Nonce::assume_unique_for_key(iv);
        black_box(ring_key.open_in_place(nonce, ring::aead::Aad::from(header), &mut work[5..]).unwrap());
    });
    let rustcrypto_open = measure(size, iterations, || {
        work.copy_from_slice(&record);
        let body_end = record.len() - 16;
        let (body, tag) = work[5..].split_at_mut(body_end - 5);
        let tag: &[u8] = tag;
        match aead {
            AeadAlgorithm::Aes128Gcm => aes_gcm::Aes128Gcm::new_from_slice(&key)
                .unwrap()
                .decrypt_in_place_detached((&iv).into(), &header, body, tag.try_into().unwrap())
                .unwrap(),
            AeadAlgorithm::Aes256Gcm => aes_gcm::Aes256Gcm::new_from_slice(&key)
                .unwrap()
                .decrypt_in_place_detached((&iv).into(), &header, body, tag.try_into().unwrap())
                .unwrap(),
            AeadAlgorithm::Chacha20Poly1305 => chacha20poly1305::ChaCha20Poly1305::new_from_slice(&key)
                .unwrap()
                .decrypt_in_place_detached((&iv).into(), &header, body, tag.try_into().unwrap())
                .unwrap(),
        }
    });
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

/// GB/s of `size`-byte operations: median over runs of `iterations` calls.
fn measure(size: usize, iterations: usize, mut operation: impl FnMut()) -> f64 {
    for _ in 0..iterations / 10 + 1 {
        operation();
    }
    let mut rates: Vec<f64> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iterations {
                operation();
            }
            (size * iterations) as f64 / start.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    rates.sort_by(|a, b| a.total_cmp(b));
    rates[RUNS / 2]
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
