//! The streaming engine against the one-shot `aes-gcm` and `chacha20poly1305` crates, for every
//! suite and both code paths (accelerated and portable): records built by the oracles, cut into
//! random chunks, delivered in random order with duplicates, must open to exactly the plaintext;
//! the sealer must produce exactly the oracle's records and regenerate any range of them; every
//! single-bit flip must fail.

use aes_gcm::aead::{AeadInOut, KeyInit};
use cutls_crypto::{
    AeadAlgorithm, ContentType, OpenError, OpenOutput, OpenerConfig, ProtocolVersion, RecordOpener, RecordSealer,
    ReleaseMode, Stop, TrafficKeys,
};
use proptest::prelude::*;

/// The suites: (version, AEAD).
const SUITES: [(ProtocolVersion, AeadAlgorithm); 6] = [
    (ProtocolVersion::Tls13, AeadAlgorithm::Aes128Gcm),
    (ProtocolVersion::Tls13, AeadAlgorithm::Aes256Gcm),
    (ProtocolVersion::Tls13, AeadAlgorithm::Chacha20Poly1305),
    (ProtocolVersion::Tls12, AeadAlgorithm::Aes128Gcm),
    (ProtocolVersion::Tls12, AeadAlgorithm::Aes256Gcm),
    (ProtocolVersion::Tls12, AeadAlgorithm::Chacha20Poly1305),
];

const MAX_DATA: usize = 16384;

fn keys_for(suite: (ProtocolVersion, AeadAlgorithm), seed: u64) -> TrafficKeys {
    let (version, aead) = suite;
    let mut rng = Rng(seed | 1);
    let key: Vec<u8> = (0..aead.key_len()).map(|_| rng.next() as u8).collect();
    let iv: Vec<u8> = (0..aead.iv_len(version)).map(|_| rng.next() as u8).collect();
    TrafficKeys::new(version, aead, &key, &iv).unwrap()
}

/// A record as another TLS stack would send it, made with the one-shot crates.
fn oracle_record(keys: &TrafficKeys, seq: u64, content_type: u8, data: &[u8], explicit: [u8; 8]) -> Vec<u8> {
    let tls13 = keys.version == ProtocolVersion::Tls13;
    let gcm12 = !tls13 && keys.aead != AeadAlgorithm::Chacha20Poly1305;
    let mut buffer = data.to_vec();
    if tls13 {
        buffer.push(content_type);
    }
    let mut nonce = *keys.iv();
    if gcm12 {
        nonce[4..].copy_from_slice(&explicit);
    } else {
        for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
    }
    let body_len = buffer.len() + 16 + if gcm12 { 8 } else { 0 };
    let outer = if tls13 { 23 } else { content_type };
    let header = [outer, 3, 3, (body_len >> 8) as u8, body_len as u8];
    let aad: Vec<u8> = if tls13 {
        header.to_vec()
    } else {
        let mut aad = seq.to_be_bytes().to_vec();
        aad.extend_from_slice(&[content_type, 3, 3]);
        aad.extend_from_slice(&(data.len() as u16).to_be_bytes());
        aad
    };
    let tag = match keys.aead {
        AeadAlgorithm::Aes128Gcm => aes_gcm::Aes128Gcm::new_from_slice(keys.key())
            .unwrap()
            .encrypt_inout_detached((&nonce).into(), &aad, buffer.as_mut_slice().into())
            .unwrap()
            .to_vec(),
        AeadAlgorithm::Aes256Gcm => aes_gcm::Aes256Gcm::new_from_slice(keys.key())
            .unwrap()
            .encrypt_inout_detached((&nonce).into(), &aad, buffer.as_mut_slice().into())
            .unwrap()
            .to_vec(),
        AeadAlgorithm::Chacha20Poly1305 => chacha20poly1305::ChaCha20Poly1305::new_from_slice(keys.key())
            .unwrap()
            .encrypt_inout_detached((&nonce).into(), &aad, buffer.as_mut_slice().into())
            .unwrap()
            .to_vec(),
    };
    let mut record = header.to_vec();
    if gcm12 {
        record.extend_from_slice(&explicit);
    }
    record.extend_from_slice(&buffer);
    record.extend_from_slice(&tag);
    record
}

/// A stream of application-data records and the plaintext they carry.
struct Stream {
    bytes: Vec<u8>,
    plaintext: Vec<u8>,
    records: usize,
}

fn build_stream(keys: &TrafficKeys, lengths: &[usize], rng: &mut Rng) -> Stream {
    let mut bytes = Vec::new();
    let mut plaintext = Vec::new();
    for (seq, &len) in lengths.iter().enumerate() {
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let explicit = rng.next().to_be_bytes();
        bytes.extend(oracle_record(keys, seq as u64, 23, &data, explicit));
        plaintext.extend(data);
    }
    Stream { bytes, plaintext, records: lengths.len() }
}

/// Delivers `stream` to an opener in the given chunks and order, re-queueing what it refuses
/// (as TCP would retransmit), and returns the plaintext it released.
fn deliver(
    keys: &TrafficKeys,
    stream: &Stream,
    chunks: Vec<(usize, usize)>,
    mode: ReleaseMode,
    accelerate: bool,
) -> Result<(Vec<u8>, usize), OpenError> {
    let config = OpenerConfig { mode, ..OpenerConfig::default() };
    let mut opener = RecordOpener::with_acceleration(keys, 0, 0, config, accelerate);
    let mut out = OpenOutput::default();
    let mut plaintext = vec![None::<u8>; stream.plaintext.len()];
    let mut queue: std::collections::VecDeque<(usize, usize)> = chunks.into();
    let mut records_done = 0;
    let mut rounds = 0;
    while let Some((start, end)) = queue.pop_front() {
        rounds += 1;
        // Refused chunks go to the back of the queue: in verify-first mode a later record's bytes
        // wait for every earlier record, so a shuffled stream can take many passes.
        assert!(rounds < 10_000_000, "delivery does not converge");
        let mut chunk = stream.bytes[start..end].to_vec();
        let mut step = opener.open(start as u64, &mut chunk, &mut out)?;
        loop {
            match step.stop {
                Some(Stop::Record(done)) => {
                    assert_eq!(done.content_type, ContentType::ApplicationData);
                    records_done += 1;
                    step = opener.open_more(start as u64, &mut chunk, step.consumed, &mut out)?;
                }
                Some(Stop::Refused(_)) => {
                    queue.push_back((start + step.consumed, end));
                    break;
                }
                None => break,
            }
        }
        for release in &out.releases {
            for (i, byte) in out.bytes(&chunk, release).iter().enumerate() {
                let at = release.plaintext_offset as usize + i;
                match plaintext[at] {
                    // Released twice (a duplicate chunk): must be the same byte.
                    Some(previous) => assert_eq!(previous, *byte, "byte {at} released twice, differently"),
                    None => plaintext[at] = Some(*byte),
                }
            }
        }
    }
    let released: Option<Vec<u8>> = plaintext.into_iter().collect();
    Ok((released.expect("every plaintext byte released"), records_done))
}

/// Random cut points, a shuffled order, and a few duplicates.
fn chunking(len: usize, rng: &mut Rng, max_piece: usize) -> Vec<(usize, usize)> {
    let mut chunks = Vec::new();
    let mut at = 0;
    while at < len {
        let piece = 1 + (rng.next() as usize % max_piece.max(1));
        let end = (at + piece).min(len);
        chunks.push((at, end));
        at = end;
    }
    // Shuffle within a window, so order is random but not hopelessly far from TCP's.
    for i in (1..chunks.len()).rev() {
        let j = i.saturating_sub(rng.next() as usize % 6);
        chunks.swap(i, j);
    }
    let duplicates = rng.next() as usize % 3;
    for _ in 0..duplicates {
        if !chunks.is_empty() {
            let pick = chunks[rng.next() as usize % chunks.len()];
            let position = rng.next() as usize % (chunks.len() + 1);
            chunks.insert(position, pick);
        }
    }
    chunks
}

fn check_stream(suite_index: usize, seed: u64, lengths: Vec<usize>, max_piece: usize) -> Result<(), TestCaseError> {
    let suite = SUITES[suite_index];
    let keys = keys_for(suite, seed);
    let mut rng = Rng(seed ^ 0x5555);
    let stream = build_stream(&keys, &lengths, &mut rng);
    for accelerate in [true, false] {
        for mode in [ReleaseMode::CutThrough, ReleaseMode::VerifyFirst] {
            let chunks = chunking(stream.bytes.len(), &mut rng, max_piece);
            let (plaintext, records) = deliver(&keys, &stream, chunks, mode, accelerate)
                .map_err(|e| TestCaseError::fail(format!("{suite:?} {mode:?} accel={accelerate}: {e}")))?;
            prop_assert_eq!(records, stream.records);
            prop_assert!(plaintext == stream.plaintext, "{:?} {:?} accel={}", suite, mode, accelerate);
        }
    }
    // The sealer gives the oracle's bytes (TLS 1.2 GCM explicit nonce = sequence number).
    let mut sealer = RecordSealer::with_acceleration(&keys, 0, rng.next() % 2 == 0);
    let mut offset = 0;
    for (seq, &len) in lengths.iter().enumerate() {
        let data = &stream.plaintext[offset..offset + len];
        offset += len;
        let expected = oracle_record(&keys, seq as u64, 23, data, (seq as u64).to_be_bytes());
        let mut buffer = vec![0u8; expected.len()];
        let sealed = sealer.seal(ContentType::ApplicationData, data, &mut buffer).unwrap();
        prop_assert_eq!(sealed.record_len, expected.len());
        prop_assert!(buffer == expected, "sealed record {} differs", seq);
        // Regenerate a random range.
        let a = rng.next() as usize % (expected.len() + 1);
        let b = a + rng.next() as usize % (expected.len() - a + 1);
        let data_start = 5 + if keys.version == ProtocolVersion::Tls12 && keys.aead != AeadAlgorithm::Chacha20Poly1305 { 8 } else { 0 };
        let covered_start = a.max(data_start).min(data_start + len);
        let covered_end = b.min(data_start + len).max(covered_start);
        let range_data = &data[covered_start - data_start..covered_end - data_start];
        let mut regenerated = vec![0u8; b - a];
        sealer.regenerate(&sealed, a..b, range_data, &mut regenerated).unwrap();
        prop_assert!(regenerated == expected[a..b], "regenerated {}..{} differs", a, b);
    }
    Ok(())
}

fn lengths_strategy() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(
        prop_oneof![0usize..64, 0usize..=MAX_DATA, Just(MAX_DATA), 1400usize..1500],
        1..4,
    )
}

macro_rules! suite_properties {
    ($name:ident, $index:expr) => {
        proptest! {
            #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]
            #[test]
            fn $name(seed in any::<u64>(), lengths in lengths_strategy(), max_piece in prop_oneof![1usize..8, 1usize..1500, 1usize..20000]) {
                check_stream($index, seed, lengths, max_piece)?;
            }
        }
    };
}

/// PROPTEST_CASES sets the count (CI: 10,000 per suite); a quick local default otherwise.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

suite_properties!(tls13_aes128gcm_streams_match_the_oracle, 0);
suite_properties!(tls13_aes256gcm_streams_match_the_oracle, 1);
suite_properties!(tls13_chacha20poly1305_streams_match_the_oracle, 2);
suite_properties!(tls12_aes128gcm_streams_match_the_oracle, 3);
suite_properties!(tls12_aes256gcm_streams_match_the_oracle, 4);
suite_properties!(tls12_chacha20poly1305_streams_match_the_oracle, 5);

/// Every single-bit flip anywhere in a record (header, explicit nonce, ciphertext, tag) must
/// keep it from verifying: an error, or a record that never completes.
#[test]
fn every_bit_flip_fails() {
    for (index, suite) in SUITES.iter().enumerate() {
        let keys = keys_for(*suite, 77 + index as u64);
        let mut rng = Rng(index as u64 + 9);
        let stream = build_stream(&keys, &[37], &mut rng);
        for accelerate in [true, false] {
            for bit in 0..stream.bytes.len() * 8 {
                let mut bytes = stream.bytes.clone();
                bytes[bit / 8] ^= 1 << (bit % 8);
                let config = OpenerConfig { mode: ReleaseMode::CutThrough, ..OpenerConfig::default() };
                let mut opener = RecordOpener::with_acceleration(&keys, 0, 0, config, accelerate);
                let mut out = OpenOutput::default();
                // Split in two at a bit-dependent place to exercise the streaming path too.
                let cut = bit % bytes.len();
                let (first, second) = bytes.split_at_mut(cut);
                let mut verified = false;
                for (offset, chunk) in [(cut, second), (0, first)] {
                    match opener.open(offset as u64, chunk, &mut out) {
                        Err(_) => break,
                        Ok(step) => {
                            if let Some(Stop::Record(done)) = step.stop {
                                verified = done.content_type == ContentType::ApplicationData && done.data_len == 37;
                            }
                        }
                    }
                }
                assert!(!verified, "{suite:?} accel={accelerate}: flip of bit {bit} verified");
            }
        }
    }
}

/// A tiny deterministic generator (xorshift64*) for test data.
/// `contiguous_end`: how far a receiver holding what the opener holds may acknowledge, for
/// every suite: through gaps filled, records not yet verified, verified records the caller
/// says are delivered, a partial next header; never past a hole or an undelivered verified
/// record.
#[test]
fn contiguous_end_follows_what_is_held() {
    for suite in SUITES {
        let keys = keys_for(suite, 41);
        let stream = build_stream(&keys, &[4000, 4000, 100], &mut Rng(7));
        let first_end = 5 + 4000 + 16 + if suite.0 == ProtocolVersion::Tls13 { 1 } else { 0 }
            + if suite.0 == ProtocolVersion::Tls12 && suite.1 != AeadAlgorithm::Chacha20Poly1305 { 8 } else { 0 };
        let config = OpenerConfig { mode: ReleaseMode::VerifyFirst, ..OpenerConfig::default() };
        let mut opener = RecordOpener::new(&keys, 0, 0, config);
        let mut out = OpenOutput::default();
        let mut feed = |opener: &mut RecordOpener, start: usize, end: usize| {
            let mut chunk = stream.bytes[start..end].to_vec();
            let mut step = opener.open(start as u64, &mut chunk, &mut out).unwrap();
            while let Some(Stop::Record(_)) = step.stop {
                step = opener.open_more(start as u64, &mut chunk, step.consumed, &mut out).unwrap();
            }
            assert_eq!(step.stop, None, "{suite:?}: {start}..{end} taken whole");
        };
        assert_eq!(opener.contiguous_end(0, 0), 0);
        feed(&mut opener, 0, 3);
        assert_eq!(opener.contiguous_end(0, 0), 3, "{suite:?}: a partial header");
        feed(&mut opener, 3, 1000);
        feed(&mut opener, 2000, 3000);
        assert_eq!(opener.contiguous_end(0, 0), 1000, "{suite:?}: stops at the hole");
        assert_eq!(opener.contiguous_end(2500, 0), 3000, "{suite:?}: from inside the second piece");
        feed(&mut opener, 1000, 2000);
        assert_eq!(opener.contiguous_end(0, 0), 3000, "{suite:?}: the hole filled");
        // The rest of the first record and a little of the second: the first verifies.
        feed(&mut opener, 3000, first_end + 10);
        assert_eq!(opener.contiguous_end(0, 0), 0, "{suite:?}: a verified record not yet delivered");
        assert_eq!(opener.contiguous_end(0, first_end as u64), first_end as u64 + 10, "{suite:?}: delivered");
        assert_eq!(opener.contiguous_end(first_end as u64, 0), first_end as u64 + 10, "{suite:?}: from its end");
    }
}

/// A selective acknowledgement of released plaintext maps to the stream bytes that carried
/// it, inside a record too (so a sender learns which of a record's segments arrived), and takes
/// in a verified record's tag when it covers the record's data to the end.
#[test]
fn plaintext_sack_maps_to_the_segments_that_carried_it() {
    for suite in SUITES {
        let keys = keys_for(suite, 43);
        let stream = build_stream(&keys, &[4000, 4000], &mut Rng(9));
        let tls13 = suite.0 == ProtocolVersion::Tls13;
        let explicit = if suite.0 == ProtocolVersion::Tls12 && suite.1 != AeadAlgorithm::Chacha20Poly1305 { 8 } else { 0 };
        let data = 5 + explicit;
        let first_end = data + 4000 + 16 + tls13 as usize;
        let mut opener = RecordOpener::new(&keys, 0, 0, OpenerConfig::default());
        let mut out = OpenOutput::default();
        let mut feed = |opener: &mut RecordOpener, start: usize, end: usize| {
            let mut chunk = stream.bytes[start..end].to_vec();
            let mut step = opener.open(start as u64, &mut chunk, &mut out).unwrap();
            while let Some(Stop::Record(_)) = step.stop {
                step = opener.open_more(start as u64, &mut chunk, step.consumed, &mut out).unwrap();
            }
        };
        // The first record's head, then a piece after a hole.
        feed(&mut opener, 0, 1000);
        feed(&mut opener, 2000, 3000);
        let at = |plaintext: usize| (data + plaintext) as u64;
        assert_eq!(
            opener.ciphertext_range_for_plaintext((2000 - data) as u64, (3000 - data) as u64),
            Some((2000, 3000)),
            "{suite:?}: inside an unverified record"
        );
        assert_eq!(opener.ciphertext_range_for_plaintext(0, 100), Some((at(0), at(100))), "{suite:?}: from the record's start");
        // The rest: the first record verifies, and a SACK to its data's end covers its tag.
        feed(&mut opener, 1000, 2000);
        feed(&mut opener, 3000, first_end + 500);
        assert_eq!(
            opener.ciphertext_range_for_plaintext(100, 4000),
            Some((at(100), first_end as u64)),
            "{suite:?}: to the end of a verified record"
        );
        // Across the boundary into the second record.
        assert_eq!(
            opener.ciphertext_range_for_plaintext(3000, 4200),
            Some((at(3000), (first_end + data + 200) as u64)),
            "{suite:?}: across two records"
        );
        assert_eq!(opener.ciphertext_range_for_plaintext(9000, 9100), None, "{suite:?}: nothing tracked there");
        assert_eq!(opener.ciphertext_range_for_plaintext(50, 50), None, "{suite:?}: empty");
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Found by the cargo-fuzz target `record_opener`: a retransmission of a record already
/// verified was decrypted again and released as it came, which no tag checks; a corrupted copy
/// (a TCP checksum fixed up on the way, or a forgery) reached the peer as wrong bytes. Also a
/// chunk overlapping bytes already seen of a record not yet verified released its own copy of
/// those bytes, while the tag authenticates the first. Now both release the first copies:
/// every suite, both modes, both code paths.
#[test]
fn corrupted_retransmissions_release_the_first_copies() {
    for (index, &suite) in SUITES.iter().enumerate() {
        for mode in [ReleaseMode::CutThrough, ReleaseMode::VerifyFirst] {
            for accelerate in [true, false] {
                let keys = keys_for(suite, 40 + index as u64);
                let mut rng = Rng(7 + index as u64);
                let stream = build_stream(&keys, &[3_000, 3_000], &mut rng);
                let config = OpenerConfig { mode, ..OpenerConfig::default() };
                let mut opener = RecordOpener::with_acceleration(&keys, 0, 0, config, accelerate);
                let mut out = OpenOutput::default();
                let what = format!("{suite:?} {mode:?} accelerate={accelerate}");
                let mut released = Vec::new();
                let mut open = |opener: &mut RecordOpener, start: usize, chunk: &mut Vec<u8>, released: &mut Vec<(u64, Vec<u8>)>| {
                    let mut step = opener.open(start as u64, chunk, &mut out).expect("opens");
                    while let Some(Stop::Record(_)) = step.stop {
                        step = opener.open_more(start as u64, chunk, step.consumed, &mut out).expect("opens");
                    }
                    for release in &out.releases {
                        released.push((release.plaintext_offset, out.bytes(chunk, release).to_vec()));
                    }
                };
                let record_len = stream.bytes.len() / 2;
                // The first record whole; the second's first 1,000 bytes.
                open(&mut opener, 0, &mut stream.bytes[..record_len].to_vec(), &mut released);
                open(&mut opener, record_len, &mut stream.bytes[record_len..record_len + 1_000].to_vec(), &mut released);
                // A corrupted retransmission of the verified first record's middle.
                let mut again = stream.bytes[500..2_000].to_vec();
                again[700] ^= 0x40;
                open(&mut opener, 500, &mut again, &mut released);
                // The second record's rest, in a chunk that repeats its first 1,000 bytes with
                // a flipped bit among them.
                let mut rest = stream.bytes[record_len..].to_vec();
                rest[600] ^= 0x01;
                open(&mut opener, record_len, &mut rest, &mut released);
                for (offset, bytes) in &released {
                    let at = *offset as usize;
                    assert_eq!(&bytes[..], &stream.plaintext[at..at + bytes.len()], "{what}: released at {at}");
                }
                let covered: usize = released.iter().map(|(_, bytes)| bytes.len()).sum();
                assert!(covered >= stream.plaintext.len(), "{what}: everything released ({covered})");
            }
        }
    }
}

#[test]
fn a_corrupted_content_type_never_shifts_a_later_records_bytes() {
    // Found by the cargo-fuzz target record_opener: TLS 1.2, verify-first. The second record
    // arrives (and verifies) before the first, whose header then comes with its content type
    // flipped from application data to alert. The first record's tag fails, as it must; but the
    // second record's plaintext offset follows from the first record's header, so before the fix
    // its (genuine) bytes were released at offset 0, where the first record's belong. Now a
    // record's bytes wait for every earlier record in verify-first mode, as in TLS 1.3.
    for (index, &suite) in SUITES.iter().enumerate() {
        let keys = keys_for(suite, 60 + index as u64);
        let mut rng = Rng(11 + index as u64);
        let stream = build_stream(&keys, &[277, 256], &mut rng);
        let config = OpenerConfig { mode: ReleaseMode::VerifyFirst, ..OpenerConfig::default() };
        let mut opener = RecordOpener::new(&keys, 0, 0, config);
        let mut out = OpenOutput::default();
        let mut released = Vec::new();
        let mut failed = false;
        // The first record's head with its content type turned into an alert's, the whole
        // second record, then the rest of the first.
        let first_len = 5 + usize::from(u16::from_be_bytes([stream.bytes[3], stream.bytes[4]]));
        let mut head = stream.bytes[..100].to_vec();
        head[0] = 21;
        let chunks = [(0, head), (first_len, stream.bytes[first_len..].to_vec()), (100, stream.bytes[100..first_len].to_vec())];
        for (start, mut chunk) in chunks {
            let mut step = match opener.open(start as u64, &mut chunk, &mut out) {
                Ok(step) => step,
                Err(_) => {
                    failed = true;
                    break;
                }
            };
            loop {
                for release in &out.releases {
                    released.push((release.plaintext_offset, out.bytes(&chunk, release).to_vec()));
                }
                match step.stop {
                    Some(Stop::Record(_)) => match opener.open_more(start as u64, &mut chunk, step.consumed, &mut out) {
                        Ok(next) => step = next,
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    },
                    _ => break,
                }
            }
        }
        assert!(failed, "{suite:?}: the corrupted first record is refused");
        for (offset, bytes) in &released {
            let at = *offset as usize;
            assert_eq!(&bytes[..], &stream.plaintext[at..at + bytes.len()], "{suite:?}: released at {at}");
        }
    }
}
