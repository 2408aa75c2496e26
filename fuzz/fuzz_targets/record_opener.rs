//! The record opener, as the splice drives it: a stream of real records (sealed by the box's
//! sealer with fixed keys, every suite, both release modes) arrives as segments the fuzzer's
//! input cuts, orders, repeats and sometimes corrupts, each opened in place at its stream
//! offset. What must hold: no panic; on an uncorrupted stream, every plaintext byte released is
//! the byte sealed at that offset; on a corrupted one in verify-first mode, too (nothing is
//! released before its record's tag verifies).
#![no_main]

use cutls_crypto::{
    AeadAlgorithm, ContentType, OpenOutput, OpenerConfig, ProtocolVersion, RecordOpener, RecordSealer, ReleaseMode, Stop,
    TrafficKeys,
};
use libfuzzer_sys::fuzz_target;

mod reader;
use reader::Reader;

const SUITES: [(ProtocolVersion, AeadAlgorithm); 6] = [
    (ProtocolVersion::Tls13, AeadAlgorithm::Aes128Gcm),
    (ProtocolVersion::Tls13, AeadAlgorithm::Aes256Gcm),
    (ProtocolVersion::Tls13, AeadAlgorithm::Chacha20Poly1305),
    (ProtocolVersion::Tls12, AeadAlgorithm::Aes128Gcm),
    (ProtocolVersion::Tls12, AeadAlgorithm::Aes256Gcm),
    (ProtocolVersion::Tls12, AeadAlgorithm::Chacha20Poly1305),
];


fuzz_target!(|input: &[u8]| {
    let mut input = Reader(input);
    let selector = input.byte();
    let (version, aead) = SUITES[usize::from(selector) % SUITES.len()];
    let mode = if selector & 0x80 == 0 { ReleaseMode::CutThrough } else { ReleaseMode::VerifyFirst };
    let keys = TrafficKeys::new(version, aead, &[0x42; 32][..aead.key_len()], &[0x24; 12]).expect("keys");
    // The records: application data of lengths the input picks (up to the limit), now and then
    // an alert; plaintext bytes numbered by their stream offset.
    let mut sealer = RecordSealer::new(&keys, 0);
    let mut stream = Vec::new();
    let mut plaintext = Vec::new();
    for _ in 0..1 + input.byte() % 8 {
        let kind = input.byte();
        let len = usize::from(input.u16()) % (16_384 + 1);
        let (content_type, bytes) = if kind % 16 == 0 {
            (ContentType::Alert, vec![1, 0])
        } else {
            let start = plaintext.len();
            let bytes: Vec<u8> = (start..start + len).map(|i| (i * 31 + 7) as u8).collect();
            plaintext.extend_from_slice(&bytes);
            (ContentType::ApplicationData, bytes)
        };
        let mut record = vec![0; sealer.record_len(bytes.len())];
        sealer.seal(content_type, &bytes, &mut record).expect("seal");
        stream.extend_from_slice(&record);
        if content_type == ContentType::Alert {
            break;
        }
    }
    let config = OpenerConfig { mode, ..OpenerConfig::default() };
    let mut opener = RecordOpener::new(&keys, 0, 0, config);
    let mut out = OpenOutput::default();
    let mut corrupted = false;
    for _ in 0..64 {
        if input.is_empty() {
            break;
        }
        // A segment: where it starts (near the opener's frontier or anywhere), its length,
        // and perhaps a flipped byte.
        let choice = input.byte();
        let start = if choice & 1 == 0 {
            (opener.next_plaintext_offset() as usize).min(stream.len()).saturating_sub(usize::from(input.byte()))
        } else {
            usize::from(input.u16()) * 4 % stream.len().max(1)
        };
        let start = start.min(stream.len());
        let len = (usize::from(input.u16()) % 1_500).min(stream.len() - start);
        let mut chunk = stream[start..start + len].to_vec();
        if choice & 0x0e == 0x0e && !chunk.is_empty() {
            let at = usize::from(input.u16()) % chunk.len();
            chunk[at] ^= 1 << (input.byte() % 8);
            corrupted = true;
        }
        let mut consumed = 0;
        let mut first = true;
        loop {
            let step = if first { opener.open(start as u64, &mut chunk, &mut out) } else { opener.open_more(start as u64, &mut chunk, consumed, &mut out) };
            first = false;
            let Ok(step) = step else {
                // The stream cannot be followed: what the splice ends the session on.
                return;
            };
            if !corrupted || mode == ReleaseMode::VerifyFirst {
                for release in &out.releases {
                    let bytes = out.bytes(&chunk, release);
                    let at = release.plaintext_offset as usize;
                    assert!(at + bytes.len() <= plaintext.len(), "released past the plaintext sealed");
                    assert_eq!(bytes, &plaintext[at..at + bytes.len()], "released bytes differ at plaintext offset {at}");
                }
            }
            consumed = step.consumed;
            match step.stop {
                Some(Stop::Record(_)) if consumed < chunk.len() => continue,
                _ => break,
            }
        }
    }
});
