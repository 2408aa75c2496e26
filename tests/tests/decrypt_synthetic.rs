//! `cutls decrypt` on captures the test makes itself, for what the real captures lack: record
//! headers split across segments, ChaCha20-Poly1305 records over many segments, reordered and
//! duplicated segments, a TLS 1.3 KeyUpdate, in TLS 1.2 and TLS 1.3, over IPv4 and IPv6.
//! The sessions are built by `cutls_tests::synthetic` with the engine's sealer.

use std::net::IpAddr;

use cutls_crypto::CipherSuite;
use cutls_tests::synthetic::{v4, v6, write_capture, TEST_SIZES};
use cutls_tools::decrypt::{run, Options};

fn decrypt_and_compare(name: &str, suite_id: u16, client: (IpAddr, u16), server: (IpAddr, u16)) {
    let dir = std::env::temp_dir().join(format!("cutls-synthetic-{}-{name}", std::process::id()));
    let (capture, keylog, c2s, s2c) = write_capture(&dir, suite_id, &TEST_SIZES, client, server);
    let out = capture.with_file_name("out");
    let mut report = Vec::new();
    run(&Options { capture, keylog: Some(keylog), out: out.clone() }, &mut report).expect("decrypt runs");
    let report = String::from_utf8(report).expect("UTF-8 report");
    let line = report.lines().next().expect("one connection");
    assert!(line.contains("\"status\":\"ok\""), "{name}: {line}");
    let suite = CipherSuite::from_id(suite_id).expect("suite");
    assert!(line.contains(&format!("\"suite\":\"{}\"", suite.name)), "{name}: {line}");
    // Multi-segment records, reordering and duplicates all happened and were counted.
    assert!(!line.contains("\"multi_segment_records\":{\"c2s\":0"), "{name}: {line}");
    assert!(!line.contains("\"out_of_order_segments\":0,"), "{name}: {line}");
    assert!(!line.contains("\"duplicate_bytes\":0,"), "{name}: {line}");
    let files: Vec<_> = std::fs::read_dir(&out).expect("out dir").map(|e| e.expect("entry").path()).collect();
    let read = |suffix: &str| {
        let path = files.iter().find(|p| p.extension().is_some_and(|e| e == suffix)).expect("output file");
        std::fs::read(path).expect("read output")
    };
    assert!(read("c2s") == c2s.data, "{name}: client data differs");
    assert!(read("s2c") == s2c.data, "{name}: server data differs");
    let _ = std::fs::remove_dir_all(out.parent().expect("parent"));
}

#[test]
fn tls12_chacha20_records_over_many_segments() {
    decrypt_and_compare("tls12-chacha", 0xcca8, v4(1, 40000), v4(2, 443));
}

#[test]
fn tls12_aes_gcm_split_headers_reordered_ipv6() {
    decrypt_and_compare("tls12-gcm-v6", 0xc030, v6(1, 40001), v6(2, 443));
}

#[test]
fn tls13_chacha20_with_key_update() {
    decrypt_and_compare("tls13-chacha", 0x1303, v4(3, 40002), v4(4, 443));
}

#[test]
fn tls13_aes128_gcm_ipv6() {
    decrypt_and_compare("tls13-aes128", 0x1301, v6(3, 40003), v6(4, 443));
}

#[test]
fn tls13_aes256_gcm_sha384() {
    decrypt_and_compare("tls13-aes256", 0x1302, v4(5, 40004), v4(6, 443));
}
