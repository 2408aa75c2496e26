//! `cutls decrypt` against real captures from other projects' TLS stacks
//! (`../shared/captures`): every capture of `manifest.tsv`, compared with `EXPECTED.tsv`.
//!
//! For each connection whose suite is in scope, both directions' decrypted application data
//! must have exactly the listed length and SHA-256; every other connection must be reported
//! `unsupported: <suite>` (or, without a ServerHello, as having no handshake).
//!
//! One correction to the reference: five rows, all TLS 1.2 over IPv6, list the two directions
//! exchanged ([`REFERENCE_DIRECTIONS_SWAPPED`]). Checked by hand: in each, tcpdump shows the
//! application records coming from the SYN's sender where the reference puts them in s2c, and
//! tshark's own `follow,tls,raw` output shows the client's data from node 0 (the client) while
//! printing "Node 1: :0", which is where the reference's direction went wrong.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cutls_tools::decrypt::{run, Options};
use sha2::{Digest, Sha256};

/// (capture, client) rows of EXPECTED.tsv whose c2s and s2c are exchanged (see the module docs).
const REFERENCE_DIRECTIONS_SWAPPED: [(&str, &str); 5] = [
    // tcpdump: the client's `GET / HTTP/1.1` (78 bytes) is c2s; the reference lists it as s2c.
    ("hotplace/http_curl_http1_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256.pcapng", "::1:10891"),
    // tcpdump: the only application record (6 bytes, "test\r\n") comes from the client.
    ("hotplace/tls12_tls12_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256.pcapng", "::1:12526"),
    ("hotplace/tls12_tls12_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384.pcapng", "::1:3131"),
    ("hotplace/tls12_tls12_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256.pcapng", "::1:13675"),
    ("hotplace/tls12_tls12renogotiation.pcapng", "::1:12960"),
];

fn captures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/captures")
}

struct Expected {
    client: String,
    server: String,
    suite: String,
    in_scope: bool,
    c2s: (usize, String),
    s2c: (usize, String),
}

fn expected_rows() -> HashMap<String, Vec<Expected>> {
    let text = std::fs::read_to_string(captures().join("EXPECTED.tsv")).expect("EXPECTED.tsv");
    let mut rows: HashMap<String, Vec<Expected>> = HashMap::new();
    for line in text.lines().filter(|line| !line.starts_with('#') && !line.is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 10, "EXPECTED.tsv line {line:?}");
        rows.entry(f[0].to_string()).or_default().push(Expected {
            client: f[1].to_string(),
            server: f[2].to_string(),
            suite: f[4].to_string(),
            in_scope: f[5] == "in",
            c2s: (f[6].parse().expect("c2s length"), f[7].to_string()),
            s2c: (f[8].parse().expect("s2c length"), f[9].to_string()),
        });
    }
    rows
}

/// A string field of one of our report lines (flat keys, no escapes in the values we read).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let end = start + line[start..].find('"')?;
    Some(&line[start..end])
}

fn digest(path: &str) -> (usize, String) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (bytes.len(), hex::encode(Sha256::digest(&bytes)))
}

fn without_brackets(endpoint: &str) -> String {
    endpoint.replace(['[', ']'], "")
}

#[test]
fn every_capture_decrypts_to_the_reference() {
    let manifest = std::fs::read_to_string(captures().join("manifest.tsv")).expect("manifest.tsv");
    let expected = expected_rows();
    let out_root = std::env::temp_dir().join(format!("cutls-decrypt-test-{}", std::process::id()));
    let mut failures = Vec::new();
    let mut checked = 0;
    for line in manifest.lines().filter(|line| !line.trim().is_empty()) {
        let mut parts = line.split_whitespace();
        let (Some(capture), Some(keylog)) = (parts.next(), parts.next()) else { continue };
        let out = out_root.join(capture.replace('/', "_"));
        let options = Options { capture: captures().join(capture), keylog: Some(captures().join(keylog)), out };
        let mut report = Vec::new();
        let summary = run(&options, &mut report).unwrap_or_else(|e| panic!("{capture}: {e}"));
        assert!(summary.capture_error.is_none(), "{capture}: {:?}", summary.capture_error);
        let report = String::from_utf8(report).expect("report is UTF-8");
        let lines: Vec<&str> = report.lines().collect();
        for row in expected.get(capture).map(Vec::as_slice).unwrap_or_default() {
            let Some(line) = lines.iter().find(|line| {
                field(line, "client").map(without_brackets).as_deref() == Some(row.client.as_str())
                    && field(line, "server").map(without_brackets).as_deref() == Some(row.server.as_str())
            }) else {
                failures.push(format!("{capture} {} -> {}: no report line", row.client, row.server));
                continue;
            };
            checked += 1;
            let status = field(line, "status").unwrap_or_default();
            if row.in_scope {
                let c2s = digest(field(line, "c2s").expect("c2s file"));
                let s2c = digest(field(line, "s2c").expect("s2c file"));
                let swapped = REFERENCE_DIRECTIONS_SWAPPED.contains(&(capture, row.client.as_str()));
                let (want_c2s, want_s2c) = if swapped { (&row.s2c, &row.c2s) } else { (&row.c2s, &row.s2c) };
                if (&c2s, &s2c) != (want_c2s, want_s2c) {
                    failures.push(format!(
                        "{capture} {} -> {}: got c2s {} s2c {} bytes ({status}), expected {} and {}",
                        row.client, row.server, c2s.0, s2c.0, want_c2s.0, want_s2c.0
                    ));
                }
                // The one in-scope connection that is not fully decryptable: its renegotiation's
                // client random is not in the key log (tshark cannot decrypt it either).
                if status != "ok" && status != "no keys for renegotiation" {
                    failures.push(format!("{capture} {} -> {}: status {status}", row.client, row.server));
                }
            } else {
                let reported = if row.suite == "none" {
                    status == "no handshake" || status == "no ServerHello"
                } else {
                    status.starts_with("unsupported: ") && status.contains(&row.suite)
                };
                if !reported {
                    failures.push(format!("{capture} {} -> {}: out of scope ({}) but status {status}", row.client, row.server, row.suite));
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&out_root);
    assert!(failures.is_empty(), "{} of {checked} connections differ:\n{}", failures.len(), failures.join("\n"));
    assert!(checked >= 149, "only {checked} reference connections were checked");
}
