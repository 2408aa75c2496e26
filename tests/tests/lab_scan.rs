//! Issue 12 acceptance: the scanners a user points at a TLS server, run against the live box in
//! the lab, their machine-readable reports asserted. sslscan (XML): SSLv2, SSLv3, TLS 1.0 and
//! 1.1 refused, TLS 1.2 and 1.3 offered; only the six AEAD suites the box configures (for the
//! lab's ECDSA certificate: TLS 1.3's three, TLS 1.2's ECDHE-ECDSA with AES-GCM and ChaCha20);
//! only the configured key exchange groups. testssl (JSON): the scan completes, and no finding
//! rated MEDIUM or worse is the box's own (findings about the lab's self-signed, one-day
//! certificate excluded by their ids). After the scans the session table drains to zero.
//!
//! Needs root (network namespaces); `CUTLS_SKIP_LAB=1` skips. Commands: ip, nginx, sslscan,
//! testssl (Debian packages sslscan and testssl.sh).

use std::time::Instant;

use cutls_tests::lab_tls::{h1_port, lab_enabled, HoldBack, Setup, TlsLab};

/// The suites the box offers with an ECDSA certificate, by the names sslscan prints.
const ALLOWED_SUITES: [&str; 6] = [
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
];

/// The groups the box's provider offers (X25519MLKEM768, X25519, P-256, P-384), by the names
/// sslscan may print.
const ALLOWED_GROUPS: [&str; 6] = ["x25519", "secp256r1", "prime256v1", "secp384r1", "X25519MLKEM768", "x25519_mlkem768"];

/// The value of `attribute` in an XML element's text (`name="value"`).
fn attribute<'a>(element: &'a str, name: &str) -> Option<&'a str> {
    let start = element.find(&format!(" {name}=\""))? + name.len() + 3;
    let rest = &element[start..];
    Some(&rest[..rest.find('"')?])
}

/// Every `<tag .../>` element of `xml`.
fn elements<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    xml.match_indices(&format!("<{tag} ")).filter_map(|(at, _)| xml[at..].find('>').map(|end| &xml[at..at + end + 1])).collect()
}

#[test]
fn sslscan_and_testssl_find_only_what_the_box_configures() {
    if !lab_enabled() {
        return;
    }
    let t = TlsLab::up(Setup::io("xdp"));
    let env = t.lab.env.clone();
    let to = t.vip(false, h1_port(HoldBack::CutThrough));
    let target = to.to_string();

    let started = Instant::now();
    let scan = t.lab.command_in(&env.client_ns, "sslscan").args(["--xml=-", "--no-colour", &target]).output().expect("run sslscan");
    let xml = String::from_utf8_lossy(&scan.stdout).into_owned();
    eprintln!("sslscan: {:.1} s, exit {:?}", started.elapsed().as_secs_f64(), scan.status.code());
    assert!(xml.contains("</document>"), "sslscan did not complete:\n{xml}\n{}", String::from_utf8_lossy(&scan.stderr));
    for protocol in elements(&xml, "protocol") {
        let version = format!("{} {}", attribute(protocol, "type").unwrap_or("?"), attribute(protocol, "version").unwrap_or("?"));
        let enabled = attribute(protocol, "enabled") == Some("1");
        let wanted = version == "tls 1.2" || version == "tls 1.3";
        assert_eq!(enabled, wanted, "sslscan: {version} enabled={enabled}: {protocol}");
    }
    let accepted: Vec<&str> = elements(&xml, "cipher").into_iter().filter(|c| attribute(c, "status") != Some("rejected")).collect();
    let names: Vec<&str> = accepted.iter().filter_map(|c| attribute(c, "cipher")).collect();
    eprintln!("sslscan: suites {names:?}");
    assert!(!names.is_empty(), "sslscan found no suite:\n{xml}");
    for name in &names {
        assert!(ALLOWED_SUITES.contains(name), "sslscan: the box accepted {name}");
    }
    for version in ["TLSv1.2", "TLSv1.3"] {
        assert!(accepted.iter().any(|c| attribute(c, "sslversion") == Some(version)), "sslscan: no {version} suite");
    }
    // Names like "secp256r1 (NIST P-256)": the first word is the group.
    let groups: Vec<&str> =
        elements(&xml, "group").into_iter().filter_map(|g| attribute(g, "name")?.split_whitespace().next()).collect();
    eprintln!("sslscan: groups {groups:?}");
    for group in &groups {
        assert!(ALLOWED_GROUPS.contains(group), "sslscan: the box offered group {group}");
    }

    let report = t.scratch("testssl.json");
    let started = Instant::now();
    let testssl = t
        .lab
        .command_in(&env.client_ns, "testssl")
        .args(["--quiet", "--color", "0", "--warnings", "batch", "--jsonfile"])
        .arg(&report)
        .args(["--protocols", "--std", "--server-defaults", "--vulnerable", &target])
        .output()
        .expect("run testssl");
    let json = std::fs::read_to_string(&report).unwrap_or_default();
    eprintln!("testssl: {:.1} s, exit {:?}", started.elapsed().as_secs_f64(), testssl.status.code());
    assert!(json.trim_end().ends_with(']'), "testssl did not complete: {}", String::from_utf8_lossy(&testssl.stdout));
    // Findings are objects {"id": .., "ip": .., "port": .., "severity": .., "finding": ..}.
    let mut serious = Vec::new();
    let mut excused = Vec::new();
    let mut findings = std::collections::HashMap::new();
    // testssl's file is an array of flat objects, one per finding, "}" closing each.
    for object in json.split('}') {
        let field = |name: &str| -> String {
            object
                .split(&format!("\"{name}\""))
                .nth(1)
                .and_then(|rest| rest.split('"').nth(1))
                .unwrap_or("")
                .to_string()
        };
        let (id, severity, finding) = (field("id"), field("severity"), field("finding"));
        let certificate = id.starts_with("cert") || id.contains("chain_of_trust") || id == "OCSP_stapling" || id.starts_with("DNS_CAA");
        if matches!(severity.as_str(), "MEDIUM" | "HIGH" | "CRITICAL") {
            if certificate {
                excused.push(format!("{id} {severity}: {finding}"));
            } else {
                serious.push(format!("{id} {severity}: {finding}"));
            }
        }
        if !id.is_empty() {
            findings.insert(id, finding);
        }
    }
    eprintln!(
        "testssl: {} findings; {} rated MEDIUM or worse that are the box's own; about the lab's certificate: {excused:?}",
        findings.len(),
        serious.len()
    );
    // The scan really ran: its protocol findings are there and say what sslscan said.
    for (id, expected) in [("SSLv2", "not offered"), ("SSLv3", "not offered"), ("TLS1", "not offered"), ("TLS1_1", "not offered"), ("TLS1_2", "offered"), ("TLS1_3", "offered")] {
        let finding = findings.get(id).map(String::as_str).unwrap_or("(missing)");
        assert!(finding.starts_with(expected), "testssl {id}: {finding}");
    }
    assert!(serious.is_empty(), "testssl findings: {serious:#?}");
    let counters = t.finish_allowing_open(true);
    assert_eq!(counters.sessions_still_open, Some(0), "sessions left after the scans");
    // The scanners' refused offers, counted by alert.
    let refusals = counters.get("alerts_protocol_version") + counters.get("alerts_handshake_failure");
    eprintln!(
        "alerts: protocol_version {}, handshake_failure {}, decode_error {}, other {}",
        counters.get("alerts_protocol_version"),
        counters.get("alerts_handshake_failure"),
        counters.get("alerts_decode_error"),
        counters.get("alerts_other")
    );
    assert!(refusals > 0, "the scanners' refused offers were not counted by alert");
}
