//! `make bench-handshake`: what one TLS handshake costs the poll loop that runs it.
//!
//! The box runs rustls inline in its poll loop (tools/src/serve.rs), so every microsecond a
//! handshake takes is a microsecond other sessions' packets wait. This measures the server side
//! of full handshakes (time inside rustls' read/process/write calls only; the client's work is
//! excluded) for the key exchanges and certificate types the box offers, and resumed handshakes.
//! Median of 200 handshakes each.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cutls_control::config::{CertificateFiles, HoldBack, Listener};
use cutls_control::tls::{server_config, SecretLog};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};

fn main() {
    let dir = std::env::temp_dir().join(format!("cutls-bench-handshake-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    println!("server-side cost of one TLS handshake, {} (median of 200, one core)", date());
    println!("{:<12} {:<10} {:<22} {:>10} {:>10}", "certificate", "version", "key exchange", "full µs", "resumed µs");
    for kind in ["ec", "rsa"] {
        let (files, ca) = certificate(&dir, kind);
        for tls13 in [true, false] {
            for group in ["X25519MLKEM768", "X25519", "secp256r1"] {
                if !tls13 && group == "X25519MLKEM768" {
                    continue;
                }
                let (full, resumed) = measure(&files, &ca, tls13, group);
                println!(
                    "{:<12} {:<10} {:<22} {:>10.0} {:>10.0}",
                    if kind == "ec" { "ECDSA P-256" } else { "RSA 2048" },
                    if tls13 { "TLS 1.3" } else { "TLS 1.2" },
                    group,
                    full.as_secs_f64() * 1e6,
                    resumed.as_secs_f64() * 1e6
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn measure(files: &CertificateFiles, ca: &Path, tls13: bool, group: &str) -> (Duration, Duration) {
    let listener = Listener {
        vip: "198.18.1.1:443".parse().expect("vip"),
        pool: 0,
        hold_back: HoldBack::CutThrough,
        alpn: vec![],
        certificates: vec![files.clone()],
        default_certificate: Some(0),
        passthrough_pool: None,
    };
    let server = server_config(&listener, Arc::new(SecretLog::default())).expect("server config");
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca).expect("CA")).expect("root");
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups.retain(|g| format!("{:?}", g.name()) == group);
    let versions: &[&rustls::SupportedProtocolVersion] =
        if tls13 { &[&rustls::version::TLS13] } else { &[&rustls::version::TLS12] };
    let client = Arc::new(
        ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    // Full handshakes: a client that never resumes. Resumed: one that keeps its tickets.
    let mut no_resumption = (*client).clone();
    no_resumption.resumption = rustls::client::Resumption::disabled();
    let no_resumption = Arc::new(no_resumption);
    let mut full = Vec::new();
    let mut resumed = Vec::new();
    handshake(server.clone(), client.clone());
    for round in 0..400 {
        if round % 2 == 0 {
            full.push(handshake(server.clone(), no_resumption.clone()));
        } else {
            resumed.push(handshake(server.clone(), client.clone()));
        }
    }
    (median(full), median(resumed))
}

/// One handshake; returns the time spent in the server's calls.
fn handshake(server_config: Arc<rustls::ServerConfig>, client_config: Arc<ClientConfig>) -> Duration {
    let mut server = ServerConnection::new(server_config).expect("server");
    let mut client = ClientConnection::new(client_config, ServerName::try_from("localhost").expect("name")).expect("client");
    let mut server_time = Duration::ZERO;
    for _ in 0..10 {
        let mut to_server = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut to_server).expect("client write");
        }
        let start = Instant::now();
        if !to_server.is_empty() {
            server.read_tls(&mut &to_server[..]).expect("server read");
            server.process_new_packets().expect("server");
        }
        let mut to_client = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut to_client).expect("server write");
        }
        server_time += start.elapsed();
        if !to_client.is_empty() {
            client.read_tls(&mut &to_client[..]).expect("client read");
            client.process_new_packets().expect("client");
        }
        if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() {
            break;
        }
    }
    let _ = client.writer().flush();
    server_time
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn certificate(dir: &Path, kind: &str) -> (CertificateFiles, std::path::PathBuf) {
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl runs");
        assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };
    if !dir.join("ca.pem").exists() {
        openssl(&["req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=bench CA", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-keyout", "ca.key", "-out", "ca.pem"]);
    }
    let key = format!("{kind}.key");
    match kind {
        "rsa" => openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", &key]),
        _ => openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-out", &key]),
    }
    let csr = format!("{kind}.csr");
    openssl(&["req", "-new", "-key", &key, "-subj", "/CN=localhost", "-out", &csr]);
    std::fs::write(dir.join("leaf.ext"), "subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\n").expect("ext");
    let chain = format!("{kind}.pem");
    openssl(&["x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-extfile", "leaf.ext", "-out", &chain]);
    (CertificateFiles { names: vec!["localhost".into()], chain: dir.join(chain), key: dir.join(key) }, dir.join("ca.pem"))
}

fn date() -> String {
    Command::new("date").arg("+%Y-%m-%d").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
}
