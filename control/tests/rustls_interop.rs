//! The record engine against a real TLS stack: for every suite the box offers, a rustls client
//! completes a handshake with the box's rustls `ServerConfig`, the box extracts the keys, and
//! from then on the record engine (not rustls) opens the client's records and seals records
//! the client must accept, including TLS 1.3 KeyUpdate in both directions.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use cutls_control::config::{CertificateFiles, HoldBack, Listener};
use cutls_control::tls::{server_config, session_keys, SecretLog};
use cutls_crypto::{ContentType, OpenOutput, OpenerConfig, RecordOpener, RecordSealer, ReleaseMode, Stop};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};

/// A certificate for `localhost` (`rsa` or `ec` key) signed by a test CA, made with openssl.
/// Returns the leaf's files and the CA certificate's path.
fn certificate(dir: &Path, kind: &str) -> (CertificateFiles, PathBuf) {
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl runs");
        assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };
    let ca = dir.join("ca.pem");
    if !ca.exists() {
        openssl(&["req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=cutls test CA", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-keyout", "ca.key", "-out", "ca.pem"]);
    }
    let key = format!("{kind}.key");
    match kind {
        "rsa" => openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", &key]),
        _ => openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-out", &key]),
    }
    let csr = format!("{kind}.csr");
    openssl(&["req", "-new", "-key", &key, "-subj", "/CN=localhost", "-out", &csr]);
    std::fs::write(dir.join("leaf.ext"), "subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\n")
        .expect("extensions file");
    let chain = format!("{kind}.pem");
    openssl(&["x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-extfile", "leaf.ext", "-out", &chain]);
    (CertificateFiles { names: vec!["localhost".into()], chain: dir.join(chain), key: dir.join(key) }, ca)
}

fn pump(client: &mut ClientConnection, server: &mut ServerConnection, first_flight: &mut Vec<u8>) {
    for _ in 0..20 {
        let mut buffer = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buffer).expect("client write");
        }
        if first_flight.is_empty() {
            first_flight.extend_from_slice(&buffer);
        }
        if !buffer.is_empty() {
            server.read_tls(&mut &buffer[..]).expect("server read");
            server.process_new_packets().expect("server handshake");
        }
        let mut buffer = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buffer).expect("server write");
        }
        if !buffer.is_empty() {
            client.read_tls(&mut &buffer[..]).expect("client read");
            client.process_new_packets().expect("client handshake");
        }
        if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() && !server.wants_write() {
            return;
        }
    }
    panic!("handshake did not finish");
}

struct Case {
    suite: u16,
    tls13: bool,
    key_kind: &'static str,
}

fn run_case(dir: &Path, case: &Case) {
    let (files, ca) = certificate(dir, case.key_kind);
    let listener = Listener {
        vip: "198.18.1.1:443".parse().expect("vip"),
        pool: 0,
        hold_back: HoldBack::CutThrough,
        alpn: vec!["h2".into(), "http/1.1".into()],
        certificates: vec![files.clone()],
        default_certificate: Some(0),
        passthrough_pool: None,
    };
    let log = Arc::new(SecretLog::default());
    let config = server_config(&listener, log.clone()).expect("server config");
    let mut server = ServerConnection::new(config).expect("server connection");

    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&ca).expect("CA")).expect("root");
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.retain(|s| u16::from(s.suite()) == case.suite);
    let versions: &[&rustls::SupportedProtocolVersion] =
        if case.tls13 { &[&rustls::version::TLS13] } else { &[&rustls::version::TLS12] };
    let mut client_config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client_config.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = ClientConnection::new(Arc::new(client_config), ServerName::try_from("localhost").expect("name"))
        .expect("client connection");

    let mut first_flight = Vec::new();
    pump(&mut client, &mut server, &mut first_flight);
    assert_eq!(server.alpn_protocol(), Some(&b"h2"[..]));
    // ClientHello random: record header (5), handshake header (4), legacy version (2).
    let client_random: [u8; 32] = first_flight[11..43].try_into().expect("random");
    let suite = server.negotiated_cipher_suite().expect("suite");
    assert_eq!(u16::from(suite.suite()), case.suite);
    let extracted = server.dangerous_extract_secrets().expect("extract");
    let keys = session_keys(suite, extracted, log.take(&client_random)).expect("hand over");
    assert_eq!(keys.client.secret.is_some(), case.tls13);

    // Client -> box: rustls seals, the engine opens.
    let request: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    client.writer().write_all(&request).expect("client data");
    if case.tls13 {
        client.refresh_traffic_keys().expect("client KeyUpdate");
        client.writer().write_all(b"after the key update").expect("more data");
    }
    let mut wire = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut wire).expect("client write");
    }
    let config = OpenerConfig { mode: ReleaseMode::CutThrough, ..OpenerConfig::default() };
    let mut opener = RecordOpener::new(&keys.client.keys, keys.client.seq, 0, config);
    let mut client_secret = keys.client.secret;
    let mut server_secret = keys.server.secret;
    let mut sealer = RecordSealer::new(&keys.server.keys, keys.server.seq);
    let mut to_client = Vec::new();
    let mut received = vec![0u8; 0];
    let mut out = OpenOutput::default();
    let mut key_updates_seen = 0;
    // Deliver in 1000-byte segments, as TCP would.
    let mut offset = 0;
    for chunk in wire.chunks(1000) {
        let mut chunk = chunk.to_vec();
        let mut step = opener.open(offset as u64, &mut chunk, &mut out).expect("open");
        loop {
            match step.stop {
                None => break,
                Some(Stop::Refused(reason)) => panic!("refused in order: {reason:?}"),
                Some(Stop::Record(done)) => {
                    if done.content_type == ContentType::Handshake {
                        let message = &out.held[done.plaintext.clone().expect("handshake plaintext")];
                        assert_eq!(message[..4], [24, 0, 0, 1], "a KeyUpdate");
                        key_updates_seen += 1;
                        let next = client_secret.as_ref().expect("TLS 1.3 secret").next_generation();
                        opener.rekey(&next.traffic_keys(keys.suite.aead));
                        client_secret = Some(next);
                        if message[4] == 1 {
                            // update_requested: answer with our own KeyUpdate, then switch.
                            let mut record = vec![0u8; sealer.record_len(5)];
                            sealer.seal(ContentType::Handshake, &[24, 0, 0, 1, 0], &mut record).expect("seal");
                            to_client.extend(record);
                            let next = server_secret.as_ref().expect("secret").next_generation();
                            sealer.rekey(&next.traffic_keys(keys.suite.aead));
                            server_secret = Some(next);
                        }
                    }
                    step = opener.open_more(offset as u64, &mut chunk, step.consumed, &mut out).expect("open");
                }
            }
        }
        for release in &out.releases {
            let at = release.plaintext_offset as usize;
            let bytes = out.bytes(&chunk, release);
            if received.len() < at + bytes.len() {
                received.resize(at + bytes.len(), 0);
            }
            received[at..at + bytes.len()].copy_from_slice(bytes);
        }
        offset += chunk.len();
    }
    let mut expected = request.clone();
    if case.tls13 {
        expected.extend_from_slice(b"after the key update");
    }
    assert!(received == expected, "suite {:04x}: the engine opened different bytes", case.suite);

    assert_eq!(key_updates_seen, case.tls13 as usize, "suite {:04x}: client KeyUpdates", case.suite);
    if case.tls13 {
        // The box's own KeyUpdate (as before the AES-GCM limit): seal it, then switch keys.
        let mut record = vec![0u8; sealer.record_len(5)];
        sealer.seal(ContentType::Handshake, &[24, 0, 0, 1, 0], &mut record).expect("seal");
        to_client.extend(record);
        let next = server_secret.as_ref().expect("secret").next_generation();
        sealer.rekey(&next.traffic_keys(keys.suite.aead));
    }

    // Box -> client: the engine seals one record per 1400-byte segment, rustls opens.
    let response: Vec<u8> = (0..30_000u32).map(|i| (i % 253) as u8).collect();
    for segment in response.chunks(1400) {
        let mut record = vec![0u8; sealer.record_len(segment.len())];
        sealer.seal(ContentType::ApplicationData, segment, &mut record).expect("seal");
        to_client.extend(record);
    }
    let mut reader = &to_client[..];
    let mut got = Vec::new();
    while !reader.is_empty() {
        client.read_tls(&mut reader).expect("client read");
        client.process_new_packets().expect("client accepts the engine's records");
        let mut buffer = [0u8; 65536];
        while let Ok(n) = client.reader().read(&mut buffer) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buffer[..n]);
        }
    }
    assert!(got == response, "suite {:04x}: rustls read different bytes", case.suite);
}

#[test]
fn every_suite_interoperates_with_rustls() {
    let dir: PathBuf = std::env::temp_dir().join(format!("cutls-interop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cases = [
        Case { suite: 0x1301, tls13: true, key_kind: "ec" },
        Case { suite: 0x1302, tls13: true, key_kind: "rsa" },
        Case { suite: 0x1303, tls13: true, key_kind: "ec" },
        Case { suite: 0xc02b, tls13: false, key_kind: "ec" },
        Case { suite: 0xc02c, tls13: false, key_kind: "ec" },
        Case { suite: 0xcca9, tls13: false, key_kind: "ec" },
        Case { suite: 0xc02f, tls13: false, key_kind: "rsa" },
        Case { suite: 0xc030, tls13: false, key_kind: "rsa" },
        Case { suite: 0xcca8, tls13: false, key_kind: "rsa" },
    ];
    for case in &cases {
        run_case(&dir, case);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 12: X25519MLKEM768 is in the docs, and neither sslscan nor testssl (OpenSSL 3.0) can
/// see it. A rustls client that offers only that group (and one for each other group) completes
/// the handshake with the box's configuration and negotiates it. The box offers exactly
/// X25519MLKEM768, X25519, P-256 and P-384 (rustls' defaults), not P-521, which nginx's OpenSSL
/// offers: rustls has no P-521 key exchange, and no mainstream client needs it (a client that
/// offers only P-521 gets handshake_failure).
#[test]
fn each_key_exchange_group_the_box_offers_is_negotiated() {
    let dir: PathBuf = std::env::temp_dir().join(format!("cutls-groups-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (files, ca) = certificate(&dir, "ec");
    let listener = Listener {
        vip: "198.18.1.1:443".parse().expect("vip"),
        pool: 0,
        hold_back: HoldBack::CutThrough,
        alpn: vec![],
        certificates: vec![files],
        default_certificate: Some(0),
        passthrough_pool: None,
    };
    let server_config = server_config(&listener, Arc::new(SecretLog::default())).expect("server config");
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&ca).expect("CA")).expect("root");
    let client_for = |group: rustls::NamedGroup, tls13: bool| {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.kx_groups = rustls::crypto::aws_lc_rs::ALL_KX_GROUPS.iter().copied().filter(|g| g.name() == group).collect();
        assert_eq!(provider.kx_groups.len(), 1, "the client provider has {group:?}");
        let versions: &[&rustls::SupportedProtocolVersion] = if tls13 { &[&rustls::version::TLS13] } else { &[&rustls::version::TLS12] };
        let config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").expect("name")).expect("client")
    };
    let offered = [
        (rustls::NamedGroup::X25519MLKEM768, true),
        (rustls::NamedGroup::X25519, true),
        (rustls::NamedGroup::secp256r1, true),
        (rustls::NamedGroup::secp384r1, true),
        (rustls::NamedGroup::X25519, false),
        (rustls::NamedGroup::secp256r1, false),
        (rustls::NamedGroup::secp384r1, false),
    ];
    for (group, tls13) in offered {
        let mut client = client_for(group, tls13);
        let mut server = ServerConnection::new(server_config.clone()).expect("server");
        pump(&mut client, &mut server, &mut Vec::new());
        assert!(!client.is_handshaking() && !server.is_handshaking(), "{group:?} (TLS 1.3: {tls13}): the handshake completes");
        assert_eq!(server.negotiated_key_exchange_group().map(|g| g.name()), Some(group), "TLS 1.3: {tls13}");
    }
    // Exactly these, in this order of preference; not P-521 (rustls has no P-521 key exchange).
    let groups: Vec<rustls::NamedGroup> = cutls_control::tls::provider().kx_groups.iter().map(|g| g.name()).collect();
    let expected =
        [rustls::NamedGroup::X25519MLKEM768, rustls::NamedGroup::X25519, rustls::NamedGroup::secp256r1, rustls::NamedGroup::secp384r1];
    assert_eq!(groups, expected);
    let _ = std::fs::remove_dir_all(dir);
}
