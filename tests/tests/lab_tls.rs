//! Issue 5 acceptance, with real peers: `cutls run --config` terminating TLS for VIPs in the lab.
//!
//! Each test brings up a fresh lab (under the lab lock, so lab tests run one at a time) with
//! nginx on the backend addresses (plain HTTP/1.1 on :80, h2c on :81, WebDAV PUT for uploads)
//! and cutls in the box with listeners for both hold-back modes, HTTP/1.1 and h2, IPv4 and IPv6
//! (see `cutls_tests::lab_tls`). Clients in the client namespace: curl (HTTP/1.1 and HTTP/2),
//! openssl s_client, Python `ssl`, h2load. Every download and upload is compared by SHA-256.
//! At the end each test stops cutls with SIGINT and checks its counters: no session still
//! open, one completed handshake per connection the clients made, no tag failure.
//!
//! Also: SNAT mode, 200 concurrent connections, keep-alive, and a recording backend that proves
//! the backend gets exactly the client's plaintext (no TLS framing) while the client gets TLS
//! records only. A case the engine is known to fail would live in its own `#[ignore = "engine: .."]`
//! test.
//!
//! These tests need root; `CUTLS_SKIP_LAB=1` skips them (and says so). Commands they run: ip,
//! ethtool, nginx, curl, openssl, python3, h2load (package nghttp2-client), timeout.
//! `CUTLS_LAB_CAPTURE=DIR` records the headers of every TCP frame on the client and server
//! veths into `DIR/<test>-{client,server}.pcap` (needs tcpdump; about 1 GB for the whole file).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use cutls_tests::lab::sha256;
use cutls_tests::lab_tls::{
    sha256_file,
    complete_request, contains_plaintext, file_path, find, generated, h1_port, h2_port, hex,
    http_response, lab_enabled, ports, recording_port, recording_request, response_body,
    tail, tls_records, AddressMode, Counters, HoldBack, Item, PythonOptions, RecordStream,
    RecordingBackend, Setup, Suite, TlsLab, TlsVersion, DOWNLOAD_SIZES, HOST, MIB_100,
    RECORDING_PORTS, SUITES, UPLOAD_SIZES,
};

const MODES: [HoldBack; 2] = [HoldBack::CutThrough, HoldBack::VerifyFirst];
/// Two listeners with one pool (the same backend port): round robin keeps them in step, so
/// their n-th connections go to the same backend.
const SHARED_POOL_PORTS: [u16; 2] = [ports::H1, ports::H1_SHARED];
/// Downloads of the matrix: every size but the 100 MiB one (fetched separately).
const SMALL_SIZES: [u64; 6] = [0, 1, 1447, 1448, 16 * 1024, 1 << 20];

fn curl_args(suite: Suite, verbose: bool) -> Vec<String> {
    let mut args = suite.curl_args();
    if verbose {
        args.push("-v".into());
    }
    args
}

/// Every "SSL connection using" line of curl -v names `suite`, and there is at least one.
fn assert_suite(stderr: &str, suite: Suite, what: &str) {
    let banners: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("SSL connection using"))
        .collect();
    assert!(
        !banners.is_empty(),
        "{what}: curl -v printed no SSL connection line"
    );
    for banner in banners {
        assert!(
            banner.contains(&suite.curl_banner()),
            "{what}: expected {}, got {banner:?}",
            suite.curl_banner()
        );
    }
}

/// The backends saw the client's own address (transparent mode) on every request.
fn assert_transparent(t: &TlsLab) {
    let log = t.web.access_log();
    assert!(!log.is_empty(), "nginx logged no request");
    let clients = [
        t.lab.env.client_v4.to_string(),
        t.lab.env.client_v6.to_string(),
    ];
    for line in log.lines() {
        let address = line.split_whitespace().next().unwrap_or_default();
        assert!(
            clients.iter().any(|client| client == address),
            "a backend saw {address}, not the client: {line}"
        );
    }
}

/// For one listener: every suite, downloads of every size but 100 MiB and uploads of every
/// size, on one keep-alive connection per suite; with `big`, the 100 MiB download in every
/// suite too. Then, with `big_upload`, a 100 MiB upload once.
fn suite_matrix(t: &TlsLab, to: SocketAddr, h2: bool, big: bool, big_upload: bool) {
    for (index, suite) in SUITES.iter().enumerate() {
        let mut items = Vec::new();
        for size in SMALL_SIZES {
            items.push(Item::Get {
                path: format!("{}?{}", file_path(size), t.connections()),
                size,
            });
        }
        if big {
            items.push(Item::Get {
                path: format!("{}?{}", file_path(MIB_100), t.connections()),
                size: MIB_100,
            });
        }
        for size in UPLOAD_SIZES {
            let (local, _) = t.upload_source(size, 1000 + size + index as u64);
            let remote = format!("{}-{}-{size}", to.port(), t.connections());
            items.push(Item::Put { local, remote });
        }
        let mut args = curl_args(*suite, true);
        if h2 {
            args.push("--http2".into());
        }
        let what = format!("{suite:?} via {to}{}", if h2 { " (h2)" } else { "" });
        let report = t.curl(to, &args, &items);
        assert_suite(&report.stderr, *suite, &what);
        assert_eq!(
            report.connects, 1,
            "{what}: all transfers on one connection"
        );
        let expected_version = if h2 { "2" } else { "1.1" };
        for transfer in &report.transfers {
            assert_eq!(
                transfer.http_version, expected_version,
                "{what}: {}",
                transfer.url
            );
        }
        eprintln!(
            "{what}: {} transfers in {:.2} s",
            items.len(),
            report.elapsed.as_secs_f64()
        );
    }
    if !big_upload {
        return;
    }
    let (local, _) = t.upload_source(MIB_100, 77);
    let remote = format!("{}-big-{}", to.port(), t.connections());
    let mut args = vec![];
    if h2 {
        args.push("--http2".to_string());
    }
    // A small download first: with h2 curl sends a whole window (64 KiB) of the upload right
    // behind its Finished, which is the engine bug of
    // tls13_burst_right_after_finished_passes_the_handshake_buffer.
    let report = t.curl(
        to,
        &args,
        &[
            Item::Get {
                path: format!("{}?before-big-upload", file_path(1)),
                size: 1,
            },
            Item::Put {
                local: local.clone(),
                remote,
            },
        ],
    );
    assert_eq!(
        report.connects, 1,
        "100 MiB upload via {to}: one connection"
    );
    let _ = std::fs::remove_file(local);
    eprintln!(
        "100 MiB upload via {to}: {:.2} s",
        report.elapsed.as_secs_f64()
    );
}

/// The whole matrix, on IPv4 and IPv6, in both hold-back modes, over one frame I/O backend.
fn matrix_with(io: &'static str) {
    if !lab_enabled() {
        return;
    }
    let started = Instant::now();
    let t = TlsLab::up(Setup::io(io));
    for mode in MODES {
        for v6 in [false, true] {
            let to = t.vip(v6, h1_port(mode));
            // 100 MiB in every suite on the IPv4 cut-through listener; once elsewhere.
            let big = !v6 && mode == HoldBack::CutThrough;
            // verify_first_packet_io_big_uploads_stall_after_a_loss
            let big_upload = !(io == "packet" && mode == HoldBack::VerifyFirst);
            suite_matrix(&t, to, false, big, big_upload);
            if !big {
                let report = t.curl(
                    to,
                    &[],
                    &[Item::Get {
                        path: file_path(MIB_100),
                        size: MIB_100,
                    }],
                );
                eprintln!(
                    "100 MiB download via {to} ({mode:?}): {:.2} s",
                    report.elapsed.as_secs_f64()
                );
            }
        }
    }
    assert_transparent(&t);
    let counters = t.finish();
    assert_eq!(counters.get("ended_tls_error"), 0);
    eprintln!(
        "io = {io}: {} connections in {:.1} s",
        t.connections(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn xdp_all_suites_all_sizes_both_hold_back_modes_ipv4_ipv6() {
    matrix_with("xdp");
}

#[test]
fn packet_all_suites_all_sizes_both_hold_back_modes_ipv4_ipv6() {
    matrix_with("packet");
}

#[test]
fn two_hundred_concurrent_connections_xdp() {
    two_hundred_concurrent_connections("xdp");
}

#[test]
fn two_hundred_concurrent_connections_packet() {
    two_hundred_concurrent_connections("packet");
}

/// 200 connections at once (curl --parallel, downloads rate-limited by nginx so that they
/// overlap), all SHA-256 exact; on the cut-through listener, then on the verify-first one.
/// One listener at a time (Linux may give connections to two VIP ports one local port).
fn two_hundred_concurrent_connections(io: &'static str) {
    if !lab_enabled() {
        return;
    }
    let t = TlsLab::up(Setup::io(io));
    let size = 1u64 << 20;
    let parallel: Vec<String> = [
        "--parallel",
        "--parallel-immediate",
        "--parallel-max",
        "200",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for mode in MODES {
        let items: Vec<Item> = (0..200)
            .map(|i| Item::Get {
                path: format!("/slow{}?{i}", file_path(size)),
                size,
            })
            .collect();
        let report = t.curl(t.vip(false, h1_port(mode)), &parallel, &items);
        assert_eq!(report.connects, 200, "one connection per transfer");
        // At 512 KiB/s per connection each download takes 2 s: 200 in sequence take 400 s, so
        // anything well under that proves they overlapped. (They should take a few seconds; with
        // AF_PACKET on this 2-core machine they took 26-37 s, which is a finding for the
        // benchmark, not a reason for this test to fail.)
        if report.elapsed >= Duration::from_secs(120) {
            t.fail(format!("io = {io}, {mode:?}: the downloads did not overlap: {:?}", report.elapsed));
        }
        eprintln!(
            "io = {io}, {mode:?}: 200 concurrent 1 MiB downloads in {:.1} s",
            report.elapsed.as_secs_f64()
        );
    }
    assert_transparent(&t);
    t.finish();
}

#[test]
fn two_poll_loops_xdp_transparent_and_snat() {
    two_poll_loops("xdp");
}

#[test]
fn two_poll_loops_packet_transparent_and_snat() {
    two_poll_loops("packet");
}

/// `cores = 2` on veths with two queues (issue 9): every suite and size, IPv4 and IPv6, and
/// 100 concurrent 1 MiB downloads, exact, in transparent and SNAT mode. Both loops hold
/// sessions, and the kernel's queue choice (which does not compute the box's steering
/// function) makes them hand frames to each other all the time: a frame of a session handled
/// by the wrong loop would be answered with a RST or bridged, and fail the transfer. The proof
/// that no frame met the state of a loop not its session's: no loop saw a client segment for a
/// session it does not hold, or a backend segment for a flow it does not know.
fn two_poll_loops(io: &'static str) {
    if !lab_enabled() {
        return;
    }
    let snat: IpAddr = "198.18.0.2".parse().expect("address");
    for mode in [AddressMode::Transparent, AddressMode::Snat(snat)] {
        let t = TlsLab::up(Setup { loops: 2, mode, ..Setup::io(io) });
        let families: &[bool] = if mode == AddressMode::Transparent { &[false, true] } else { &[false] };
        for &v6 in families {
            suite_matrix(&t, t.vip(v6, h1_port(HoldBack::CutThrough)), false, false, false);
        }
        let size = 1u64 << 20;
        let items: Vec<Item> =
            (0..100).map(|i| Item::Get { path: format!("/slow{}?loops{i}", file_path(size)), size }).collect();
        let parallel: Vec<String> =
            ["--parallel", "--parallel-immediate", "--parallel-max", "100"].iter().map(|s| s.to_string()).collect();
        let report = t.curl(t.vip(false, h1_port(HoldBack::VerifyFirst)), &parallel, &items);
        assert_eq!(report.connects, 100, "one connection per transfer");
        let counters = t.finish();
        let per_loop = [counters.get("loop_0_sessions_started"), counters.get("loop_1_sessions_started")];
        eprintln!(
            "io = {io}, {mode:?}, 2 loops: sessions per loop {per_loop:?}, frames handed off {}, hand-off drops {}, transmit drops {}, \
             client segments without a session {}, orphan backend segments {}",
            counters.get("frames_handed_off"),
            counters.get("handoff_drops"),
            counters.get("transmit_drops"),
            counters.get("client_segments_without_session"),
            counters.get("orphan_backend_drops")
        );
        assert_eq!(counters.get("client_segments_without_session"), 0, "a client segment met a loop without its session");
        assert_eq!(counters.get("orphan_backend_drops"), 0, "a backend segment met a loop without its session");
        assert!(per_loop.iter().all(|&sessions| sessions > 0), "both loops hold sessions: {per_loop:?}");
        assert_eq!(per_loop.iter().sum::<u64>(), counters.get("sessions_started"));
        assert_eq!(counters.get("ended_tls_error"), 0);
    }
}

/// Transparent mode: one client port, two connections at once to two listeners (443 and 445)
/// with the same pool. Round robin starts both listeners at the same backend, so both backend
/// connections would have the same 4-tuple (client address and port -> backend
/// :80): the backend takes the second SYN for the first connection and one session never gets
/// an answer (seen as 0 bytes received and sessions left open under 2 x 100 concurrent curl
/// connections, where Linux gives one local port to connections to different VIP ports). The
/// box has to avoid the collision (another backend, or refuse the second connection).
#[test]
fn same_client_port_on_two_listeners_sharing_a_pool() {
    if !lab_enabled() {
        return;
    }
    let t = TlsLab::up(Setup::io("xdp"));
    let size = 1u64 << 20;
    for pair in 0..3u16 {
        let options = PythonOptions {
            source_port: Some(41000 + pair),
            ..PythonOptions::default()
        };
        let request = format!(
            "GET /slow{} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n",
            file_path(size)
        )
        .into_bytes();
        let exchanges = std::thread::scope(|scope| {
            let runs: Vec<_> = SHARED_POOL_PORTS
                .iter()
                .map(|&port| {
                    let (t, options, request) = (&t, &options, &request);
                    scope.spawn(move || {
                        let to = t.vip(false, port);
                        (
                            to,
                            t.python_with(to, "1.3", None, Some("http/1.1"), request, options),
                        )
                    })
                })
                .collect();
            runs.into_iter()
                .map(|run| run.join().expect("python client"))
                .collect::<Vec<_>>()
        });
        for (to, exchange) in exchanges {
            let what = format!("pair {pair}: from port {:?} to {to}", options.source_port);
            let (status, body) =
                http_response(&exchange.response).unwrap_or_else(|error| panic!("{what}: {error}"));
            assert_eq!(status, 200, "{what}");
            assert_eq!(sha256(&body), t.web.file(size).sha256, "{what}: SHA-256");
        }
    }
    t.finish();
}

/// Many requests on one connection: 120 downloads of mixed sizes and 30 uploads per
/// connection, in each hold-back mode, IPv4 and IPv6; `num_connects` must add up to one.
/// Issue 12's ALPN case: curl -0 offers only `http/1.0`; a listener configured with
/// `http/1.1` serves it (as nginx does) instead of failing the handshake.
#[test]
fn an_http_1_0_client_is_served_by_an_http_1_1_listener() {
    if !lab_enabled() {
        return;
    }
    let t = TlsLab::up(Setup::io("xdp"));
    let to = t.vip(false, h1_port(HoldBack::CutThrough));
    let size = 16 * 1024;
    t.curl(to, &["--http1.0".to_string()], &[Item::Get { path: file_path(size), size }]);
    t.finish();
}

/// Issue 12's lost alerts: a handshake the box refuses (a TLS 1.2 client offering only RSA
/// suites to an ECDSA certificate) ends with rustls' alert delivered, not a bare RST: openssl
/// reports the alert, every time. (On this lab's veths the old alert-then-RST also passed; the
/// race the issue saw with sslscan did not reproduce with openssl: this guards the behaviour.)
#[test]
fn a_refused_handshake_delivers_its_alert() {
    if !lab_enabled() {
        return;
    }
    let t = TlsLab::up(Setup::io("xdp"));
    let to = t.vip(false, h1_port(HoldBack::CutThrough));
    for attempt in 0..8 {
        let output = t.client_run(
            "timeout",
            &[
                "10".into(),
                "openssl".into(),
                "s_client".into(),
                "-tls1_2".into(),
                "-cipher".into(),
                "ECDHE-RSA-AES128-GCM-SHA256".into(),
                "-connect".into(),
                to.to_string(),
                "-servername".into(),
                HOST.into(),
            ],
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "attempt {attempt}: the handshake should fail");
        assert!(
            stderr.contains("alert handshake failure"),
            "attempt {attempt}: openssl did not see the alert: {}",
            tail(&stderr, 10)
        );
    }
    // Eight refused handshakes: no completed handshake to count.
    let counters = t.finish();
    assert_eq!(counters.get("ended_tls_error"), 8);
}

#[test]
fn keep_alive_many_requests_per_connection() {
    if !lab_enabled() {
        return;
    }
    let t = TlsLab::up(Setup::io("xdp"));
    for mode in MODES {
        for v6 in [false, true] {
            let to = t.vip(v6, h1_port(mode));
            let mut items = Vec::new();
            for i in 0..150u64 {
                if i % 5 == 4 {
                    let size = UPLOAD_SIZES[(i as usize / 5) % UPLOAD_SIZES.len()];
                    let (local, _) = t.upload_source(size, i);
                    items.push(Item::Put {
                        local,
                        remote: format!("ka-{}-{v6}-{i}", to.port()),
                    });
                } else {
                    let size = SMALL_SIZES[i as usize % SMALL_SIZES.len()];
                    items.push(Item::Get {
                        path: format!("{}?ka{i}", file_path(size)),
                        size,
                    });
                }
            }
            let report = t.curl(to, &[], &items);
            assert_eq!(
                report.connects, 1,
                "150 requests via {to} on one connection"
            );
            eprintln!(
                "150 requests on one connection via {to}: {:.2} s",
                report.elapsed.as_secs_f64()
            );
        }
    }
    t.finish();
}

/// curl over HTTP/2 (ALPN h2 at the listener, h2c to nginx): every suite, every size, both
/// modes; uploads; 50 streams multiplexed on one connection.
#[test]
fn http2_curl_all_suites_both_hold_back_modes() {
    if !lab_enabled() {
        return;
    }
    let t = TlsLab::up(Setup::io("xdp"));
    for mode in MODES {
        let to = t.vip(false, h2_port(mode));
        suite_matrix(&t, to, true, mode == HoldBack::CutThrough, true);
        let mut items = Vec::new();
        for i in 0..50 {
            let size = SMALL_SIZES[i % SMALL_SIZES.len()];
            items.push(Item::Get {
                path: format!("{}?mux{i}", file_path(size)),
                size,
            });
        }
        let args: Vec<String> = ["--http2", "--parallel", "--parallel-max", "50"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let report = t.curl(to, &args, &items);
        assert_eq!(
            report.connects, 1,
            "50 streams multiplexed on one h2 connection via {to}"
        );
        for transfer in &report.transfers {
            assert_eq!(transfer.http_version, "2");
        }
    }
    assert_transparent(&t);
    t.finish();
}

/// h2load: many streams on several connections, each TLS 1.3 suite, both modes; and h2load
/// --h1 against the HTTP/1.1 listener.
#[test]
fn h2load_h2_and_h1() {
    if !lab_enabled() {
        return;
    }
    let probe = std::process::Command::new("h2load")
        .arg("--version")
        .output();
    assert!(
        probe.map(|output| output.status.success()).unwrap_or(false),
        "h2load not found: make test-deps must install nghttp2-client"
    );
    let t = TlsLab::up(Setup::io("xdp"));
    let size = 16 * 1024u64;
    let (requests, clients, streams) = (3000u64, 10u64, 10u64);
    let mut runs: Vec<(SocketAddr, Vec<String>, &str)> = Vec::new();
    for mode in MODES {
        for suite in SUITES
            .iter()
            .filter(|suite| suite.version == TlsVersion::Tls13)
        {
            let extra = vec![
                format!("--tls13-ciphers={}", suite.name),
                "-m".into(),
                streams.to_string(),
            ];
            runs.push((t.vip(false, h2_port(mode)), extra, suite.name));
        }
        // HTTP/1.1: one request at a time per connection (-m would pipeline).
        runs.push((
            t.vip(false, h1_port(mode)),
            vec!["--h1".into(), "-m".into(), "1".into()],
            "h1",
        ));
    }
    for (to, extra, name) in runs {
        let mut args = vec![
            "60".to_string(),
            "h2load".into(),
            "-n".into(),
            requests.to_string(),
            "-c".into(),
            clients.to_string(),
            format!(
                "--connect-to={}",
                match to {
                    SocketAddr::V4(v4) => format!("{}:{}", v4.ip(), v4.port()),
                    SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
                }
            ),
        ];
        args.extend(extra);
        args.push(format!("https://{HOST}:{}{}", to.port(), file_path(size)));
        let output = t.client_run("timeout", &args);
        t.count_connections(clients);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let what = format!("h2load {name} via {to}");
        assert!(
            output.status.success(),
            "{what} failed: {}\n{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
        let summary = format!("requests: {requests} total, {requests} started, {requests} done, {requests} succeeded, 0 failed, 0 errored, 0 timeout");
        assert!(
            stdout.contains(&summary),
            "{what}: expected {summary:?} in:\n{stdout}"
        );
        assert!(
            stdout.contains(&format!("status codes: {requests} 2xx")),
            "{what}:\n{stdout}"
        );
        let data = requests * size;
        assert!(
            stdout.contains(&format!("({data}) data")),
            "{what}: {data} bytes of data expected:\n{stdout}"
        );
        if name != "h1" {
            assert!(
                stdout.contains(&format!("Cipher: {name}")),
                "{what}: negotiated suite:\n{stdout}"
            );
        }
        eprintln!(
            "{what}: {}",
            stdout
                .lines()
                .find(|line| line.starts_with("finished in"))
                .unwrap_or_default()
        );
    }
    t.finish();
}

fn get_request(size: u64) -> Vec<u8> {
    format!(
        "GET {} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n",
        file_path(size)
    )
    .into_bytes()
}

fn put_request(remote: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "PUT /up/{remote} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// openssl s_client: every suite, downloads and uploads of every size (one connection each),
/// in both hold-back modes (cut-through over IPv4, verify-first over IPv6).
#[test]
fn openssl_s_client_all_suites() {
    if !lab_enabled() {
        return;
    }
    let t = TlsLab::up(Setup::io("xdp"));
    for (mode, v6) in [(HoldBack::CutThrough, false), (HoldBack::VerifyFirst, true)] {
        let to = t.vip(v6, h1_port(mode));
        for (index, suite) in SUITES.iter().enumerate() {
            for size in SMALL_SIZES {
                let response = t.openssl(to, *suite, &get_request(size));
                let (status, body) = http_response(&response).unwrap_or_else(|error| {
                    panic!("openssl {suite:?} GET {size} via {to}: {error}")
                });
                assert_eq!(status, 200);
                assert_eq!(
                    body.len() as u64,
                    size,
                    "openssl {suite:?} GET {size} via {to}"
                );
                assert_eq!(
                    sha256(&body),
                    t.web.file(size).sha256,
                    "openssl {suite:?} GET {size} via {to}: SHA-256"
                );
            }
            for size in UPLOAD_SIZES {
                let body = generated(size as usize, 2000 + size + index as u64);
                let remote = format!("openssl-{}-{index}-{size}", to.port());
                let response = t.openssl(to, *suite, &put_request(&remote, &body));
                let (status, _) = http_response(&response).unwrap_or_else(|error| {
                    panic!("openssl {suite:?} PUT {size} via {to}: {error}")
                });
                assert_eq!(status, 201, "openssl {suite:?} PUT {size} via {to}");
                let stored =
                    std::fs::read(t.web.uploaded(&remote)).expect("nginx stored the upload");
                assert_eq!(
                    stored.len(),
                    body.len(),
                    "openssl {suite:?} PUT {size} via {to}: stored size"
                );
                assert!(
                    stored == body,
                    "openssl {suite:?} PUT {size} via {to}: stored bytes differ"
                );
            }
        }
    }
    assert_transparent(&t);
    t.finish();
}

/// The Python client's received bytes are TLS records only: no plaintext of `plaintext`, no
/// HTTP text.
fn assert_only_tls(raw: &[u8], plaintext: &[u8], what: &str) {
    let records = tls_records(raw).unwrap_or_else(|error| {
        panic!("{what}: the client received something other than TLS records: {error}")
    });
    assert!(
        records.application_data > 0 || plaintext.is_empty(),
        "{what}: no application data records: {records:?}"
    );
    assert_eq!(
        find(raw, b"HTTP/1.1"),
        None,
        "{what}: the client received HTTP in clear"
    );
    if let Some(offset) = contains_plaintext(raw, plaintext) {
        panic!("{what}: the client received response plaintext in clear at offset {offset}");
    }
}

/// Python `ssl`: TLS 1.2 in each suite and TLS 1.3, downloads and uploads of every size, in both
/// hold-back modes; what it received from the network is TLS records only.
#[test]
fn python_ssl_all_sizes() {
    if !lab_enabled() {
        return;
    }
    let t = TlsLab::up(Setup::io("packet"));
    let mut versions: Vec<(&str, Option<&str>, Option<&str>)> = SUITES
        .iter()
        .filter(|suite| suite.version == TlsVersion::Tls12)
        .map(|suite| ("1.2", Some(suite.name), Some(suite.name)))
        .collect();
    versions.push(("1.3", None, None));
    for (mode, v6) in [(HoldBack::VerifyFirst, false), (HoldBack::CutThrough, true)] {
        let to = t.vip(v6, h1_port(mode));
        for (index, &(version, cipher, expected)) in versions.iter().enumerate() {
            for size in SMALL_SIZES {
                let what = format!("python TLS {version} {cipher:?} GET {size} via {to}");
                let exchange = t.python(to, version, cipher, Some("http/1.1"), &get_request(size));
                assert_eq!(exchange.version, format!("TLSv{version}"), "{what}");
                if let Some(expected) = expected {
                    assert_eq!(exchange.cipher, expected, "{what}");
                }
                let (status, body) = http_response(&exchange.response)
                    .unwrap_or_else(|error| panic!("{what}: {error}"));
                assert_eq!(status, 200, "{what}");
                assert_eq!(body.len() as u64, size, "{what}");
                assert_eq!(sha256(&body), t.web.file(size).sha256, "{what}: SHA-256");
                assert_only_tls(&exchange.raw, &body, &what);
            }
            for size in UPLOAD_SIZES {
                let what = format!("python TLS {version} {cipher:?} PUT {size} via {to}");
                let body = generated(size as usize, 3000 + size + index as u64);
                let remote = format!("python-{}-{v6}-{index}-{size}", to.port());
                let exchange = t.python(
                    to,
                    version,
                    cipher,
                    Some("http/1.1"),
                    &put_request(&remote, &body),
                );
                let (status, _) = http_response(&exchange.response)
                    .unwrap_or_else(|error| panic!("{what}: {error}"));
                assert_eq!(status, 201, "{what}");
                let stored =
                    std::fs::read(t.web.uploaded(&remote)).expect("nginx stored the upload");
                assert!(
                    stored == body,
                    "{what}: stored {} bytes, sent {}, or they differ",
                    stored.len(),
                    body.len()
                );
                assert_only_tls(&exchange.raw, b"", &what);
            }
        }
    }
    assert_transparent(&t);
    t.finish();
}

/// The backend receives plaintext only, exactly the bytes the client's TLS library was given
/// (no record header, nonce, tag, alert or padding byte), with the client's own address; the
/// client receives TLS records only, exactly the plaintext the backend sent once opened.
#[test]
fn backend_gets_exact_plaintext_client_gets_only_tls() {
    if !lab_enabled() {
        return;
    }
    let t = TlsLab::up(Setup::io("xdp"));
    let backend = RecordingBackend::start(&t.lab, &t.lab.env.backends_v4, &RECORDING_PORTS)
        .expect("start the recording backends");
    let exchanges: [(usize, usize); 7] = [
        (0, 0),
        (1, 1),
        (1447, 1448),
        (1448, 1447),
        (16384, 16384),
        (16385, 100_000),
        (1 << 20, 1 << 20),
    ];
    let mut versions: Vec<(&str, Option<&str>)> = SUITES
        .iter()
        .filter(|suite| suite.version == TlsVersion::Tls12)
        .map(|suite| ("1.2", Some(suite.name)))
        .collect();
    versions.push(("1.3", None));
    for mode in MODES {
        let to = t.vip(false, recording_port(mode));
        for (index, &(version, cipher)) in versions.iter().enumerate() {
            for &(request_size, response_size) in &exchanges {
                let what = format!("TLS {version} {cipher:?} via {to}: {request_size} B up, {response_size} B down");
                recording_exchange(
                    &t,
                    &backend,
                    to,
                    version,
                    cipher,
                    (request_size, response_size),
                    t.lab.env.client_v4,
                    Duration::ZERO,
                    4000 + index as u64,
                    &what,
                );
            }
        }
    }
    drop(backend);
    t.finish();
}

/// One exchange through the recording backend, checked end to end: the backend received exactly
/// the request (plaintext only, from `expected_peer`, ended by a FIN), the client exactly the
/// response, and on the wire TLS records only.
#[allow(clippy::too_many_arguments)]
fn recording_exchange(
    t: &TlsLab,
    backend: &RecordingBackend,
    to: SocketAddr,
    version: &str,
    cipher: Option<&str>,
    (request_size, response_size): (usize, usize),
    expected_peer: IpAddr,
    pause: Duration,
    seed: u64,
    what: &str,
) {
    let body = generated(request_size, seed + request_size as u64);
    let request = recording_request(&body, response_size);
    let options = PythonOptions {
        pause,
        ..PythonOptions::default()
    };
    let exchange = t.python_with(to, version, cipher, None, &request, &options);
    let recorded = backend.wait_for(1, Duration::from_secs(5));
    backend.take();
    assert_eq!(recorded.len(), 1, "{what}: one backend connection");
    let recorded = &recorded[0];
    assert_eq!(
        recorded.peer.ip(),
        expected_peer,
        "{what}: the address the backend sees"
    );
    assert!(
        recorded.bytes == request,
        "{what}: the backend received {} bytes (sha256 {}), the client sent {} (sha256 {}); first bytes {:02x?}",
        recorded.bytes.len(),
        hex(&sha256(&recorded.bytes)),
        request.len(),
        hex(&sha256(&request)),
        &recorded.bytes[..recorded.bytes.len().min(16)]
    );
    assert!(
        recorded.clean_end,
        "{what}: the backend's connection ended with a FIN"
    );
    let (status, got) =
        http_response(&exchange.response).unwrap_or_else(|error| panic!("{what}: {error}"));
    assert_eq!(status, 200, "{what}");
    assert!(
        got == response_body(response_size),
        "{what}: the client got {} response bytes, or they differ",
        got.len()
    );
    assert_only_tls(&exchange.raw, &got, what);
}

/// Verify-first: a client record larger than the client's congestion window. The box holds
/// the record's plaintext until its tag verifies; unless it acknowledges the ciphertext it
/// holds (and then owes the backend that plaintext: `custody`), a client out of congestion
/// window never sends the record's last segments and the session hangs. A full record (16 KiB
/// + 22 to 29 bytes on the wire) is more than 11 segments; here the client's route to the VIP
/// clamps its congestion window to 8 segments (`ip route ... initcwnd 8 cwnd lock 8 congctl
/// reno`), as a client after a loss would have it.
#[test]
fn verify_first_record_larger_than_client_cwnd() {
    small_cwnd_uploads(HoldBack::VerifyFirst);
}

/// The same client, its congestion window clamped to 8 segments, through a cut-through
/// listener: there the box acknowledges each record up to its held-back last bytes, so the
/// window keeps opening.
#[test]
fn cut_through_client_with_small_cwnd() {
    small_cwnd_uploads(HoldBack::CutThrough);
}

/// Uploads of 16 and 40 KiB written at once (Python ssl; TLS 1.2 and 1.3) to nginx and to the
/// recording backend through listeners in `mode`, from a client whose congestion window toward
/// the VIP is clamped to 8 segments.
fn small_cwnd_uploads(mode: HoldBack) {
    if !lab_enabled() {
        return;
    }
    let t = TlsLab::up(Setup::io("xdp"));
    clamp_client_cwnd(&t, 8);
    let backend = RecordingBackend::start(&t.lab, &t.lab.env.backends_v4, &RECORDING_PORTS)
        .expect("start the recording backends");
    for (attempt, (version, cipher)) in [("1.2", Some(SUITES[3].name)), ("1.3", None)]
        .into_iter()
        .enumerate()
    {
        let attempt = attempt as u64;
        let to = t.vip(false, h1_port(mode));
        for size in [16 * 1024usize, 40 * 1024] {
            let what = format!("python TLS {version} PUT {size} via {to} ({mode:?}, cwnd 8)");
            let body = generated(size, 6000 + attempt + size as u64);
            let remote = format!("cwnd-{attempt}-{size}");
            let request = put_request(&remote, &body);
            let exchange = t.python(to, version, cipher, Some("http/1.1"), &request);
            let (status, _) =
                http_response(&exchange.response).unwrap_or_else(|error| panic!("{what}: {error}"));
            assert_eq!(status, 201, "{what}");
            let stored = std::fs::read(t.web.uploaded(&remote)).expect("nginx stored the upload");
            assert!(stored == body, "{what}: stored bytes differ");
        }
        let to = t.vip(false, recording_port(mode));
        for (request_size, response_size) in [(16384, 16384), (40 * 1024, 100_000)] {
            let what = format!(
                "TLS {version} via {to} ({mode:?}, cwnd 8): {request_size} B up, {response_size} B down"
            );
            recording_exchange(
                &t,
                &backend,
                to,
                version,
                cipher,
                (request_size, response_size),
                t.lab.env.client_v4,
                Duration::ZERO,
                7000 + attempt,
                &what,
            );
        }
    }
    drop(backend);
    t.finish();
}

/// Clamps the client's congestion window toward the IPv4 VIP to `segments`.
fn clamp_client_cwnd(t: &TlsLab, segments: u32) {
    let route = format!("{}/32", t.vip_v4);
    let segments = segments.to_string();
    // Reno: BBR (this kernel's default) paces by its own model and ignores the clamp.
    let args = [
        "route",
        "replace",
        &route,
        "dev",
        &t.lab.env.client_if,
        "initcwnd",
        &segments,
        "cwnd",
        "lock",
        &segments,
        "congctl",
        "reno",
    ];
    let output = t
        .lab
        .run_in(&t.lab.env.client_ns, "ip", &args)
        .expect("run ip route");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// TLS 1.3: the client's Finished and, right behind it, a large request (a 1 MiB PUT written at
/// once, as openssl s_client and Python do, or 64 KiB of h2 DATA from curl --http2). While the
/// box's handshake work on the Finished is still in flight (`tls_in_flight`, the off-loop
/// handshake) it buffers and acknowledges the client's bytes as handshake bytes, up to its
/// 64 KiB bound (MAX_HANDSHAKE_BYTES); what does not fit is left for the client to send again,
/// and the session goes on.
#[test]
fn tls13_burst_right_after_finished_passes_the_handshake_buffer() {
    if !lab_enabled() {
        return;
    }
    let t = TlsLab::up(Setup::io("xdp"));
    let backend = RecordingBackend::start(&t.lab, &t.lab.env.backends_v4, &RECORDING_PORTS)
        .expect("start the recording backends");
    let size = 1usize << 20;
    for attempt in 0..3u64 {
        // curl over h2 on a fresh connection: 64 KiB of DATA (the initial h2 window) right
        // behind the Finished.
        let to = t.vip(false, h2_port(HoldBack::CutThrough));
        let (local, _) = t.upload_source(size as u64, 9300 + attempt);
        let remote = format!("burst-curl-h2-{attempt}");
        t.curl(to, &["--http2".to_string()], &[Item::Put { local, remote }]);
        let to = t.vip(false, h1_port(HoldBack::CutThrough));
        for suite in SUITES
            .iter()
            .filter(|suite| suite.version == TlsVersion::Tls13)
        {
            let what = format!("attempt {attempt}: openssl {suite:?} PUT {size} via {to}");
            let body = generated(size, 9000 + attempt);
            let remote = format!("burst-openssl-{attempt}-{}", suite.name);
            let response = t.openssl(to, *suite, &put_request(&remote, &body));
            let (status, _) =
                http_response(&response).unwrap_or_else(|error| panic!("{what}: {error}"));
            assert_eq!(status, 201, "{what}");
            let stored = std::fs::read(t.web.uploaded(&remote)).expect("nginx stored the upload");
            assert!(stored == body, "{what}: stored bytes differ");
        }
        let what = format!("attempt {attempt}: python TLS 1.3 PUT {size} via {to}");
        let body = generated(size, 9100 + attempt);
        let remote = format!("burst-python-{attempt}");
        let exchange = t.python(
            to,
            "1.3",
            None,
            Some("http/1.1"),
            &put_request(&remote, &body),
        );
        let (status, _) =
            http_response(&exchange.response).unwrap_or_else(|error| panic!("{what}: {error}"));
        assert_eq!(status, 201, "{what}");
        let stored = std::fs::read(t.web.uploaded(&remote)).expect("nginx stored the upload");
        assert!(stored == body, "{what}: stored bytes differ");
        let to = t.vip(false, recording_port(HoldBack::CutThrough));
        let what = format!("attempt {attempt}: TLS 1.3 via {to}: {size} B up, {size} B down");
        recording_exchange(
            &t,
            &backend,
            to,
            "1.3",
            None,
            (size, size),
            t.lab.env.client_v4,
            Duration::ZERO,
            9200 + attempt,
            &what,
        );
    }
    drop(backend);
    t.finish();
}

/// Transparent mode, one after the other: a client port reused, right after a connection
/// through one listener (443), for a connection through another listener of the same pool
/// (445). nginx closed the first backend connection, so it holds that 4-tuple (client address and port ->
/// backend :80) in TIME_WAIT, and the box's replay of the client's SYN (the client's sequence
/// number and timestamps, chosen for the other VIP port) may not be taken as a new
/// connection: nginx answers with an ACK of the old one. A client's own stack would answer
/// that with a RST and send its SYN again; the box has to do the same. Whether the backend
/// takes the SYN depends on the two connections' random timestamp offsets, so 12 rounds.
#[test]
fn client_port_reused_while_the_backend_is_in_time_wait() {
    if !lab_enabled() {
        return;
    }
    let t = TlsLab::up(Setup::io("xdp"));
    let size = 1usize << 20;
    for round in 0..12u16 {
        let options = PythonOptions {
            source_port: Some(42000 + round),
            ..PythonOptions::default()
        };
        for port in SHARED_POOL_PORTS {
            let to = t.vip(false, port);
            let what = format!(
                "round {round}: PUT {size} from port {:?} to {to}",
                options.source_port
            );
            let body = generated(size, 9500 + round as u64);
            let remote = format!("tw-{round}-{}", to.port());
            let request = put_request(&remote, &body);
            let cipher = Some(SUITES[3].name);
            let exchange = t.python_with(to, "1.2", cipher, Some("http/1.1"), &request, &options);
            let (status, _) =
                http_response(&exchange.response).unwrap_or_else(|error| panic!("{what}: {error}"));
            assert_eq!(status, 201, "{what}");
            let stored = std::fs::read(t.web.uploaded(&remote)).expect("nginx stored the upload");
            assert!(stored == body, "{what}: stored bytes differ");
        }
    }
    t.finish();
}

/// Verify-first over AF_PACKET: 100 MiB uploads (4 at once, IPv4 and IPv6). Under such a
/// burst a client segment goes missing at the box while later ones arrive; the box's
/// acknowledgement then stands at a record boundary (the backend's, mapped) and the client
/// resends from there, re-segmented, bytes the box already holds. The box must acknowledge
/// everything it holds without a gap from there (`RecordOpener::contiguous_end`, custody);
/// acknowledging only what came in order stalled the upload until the backend's body timeout
/// (curl: "Empty reply from server"), about one run in two.
#[test]
fn verify_first_packet_io_big_uploads_after_a_loss() {
    if !lab_enabled() {
        return;
    }
    let t = TlsLab::up(Setup::io("packet"));
    let parallel: Vec<String> = ["--parallel", "--parallel-max", "4"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for round in 0..3 {
        for v6 in [false, true] {
            let to = t.vip(v6, h1_port(HoldBack::VerifyFirst));
            let (local, _) = t.upload_source(MIB_100, 300 + round);
            let items: Vec<Item> = (0..4)
                .map(|i| Item::Put {
                    local: local.clone(),
                    remote: format!("vf-big-{round}-{v6}-{i}"),
                })
                .collect();
            let report = t.curl(to, &parallel, &items);
            let _ = std::fs::remove_file(local);
            eprintln!(
                "round {round}: 4 x 100 MiB uploads via {to}: {:.1} s",
                report.elapsed.as_secs_f64()
            );
        }
    }
    t.finish();
}

/// SNAT mode: the backends see the box's address (and ports it owns), not the client's: every
/// suite, every size, uploads, both hold-back modes, 100 connections at once, and exact
/// plaintext at the recording backend. IPv4 only (the configuration has one SNAT address).
/// Passthrough (issue 5, item 7), with nginx on both ends of the box's choice:
/// - a listener whose pool is passthrough: plain HTTP downloads (0 B to 100 MiB) and a 1 MiB
///   upload cross the box unchanged;
/// - a TLS listener with a passthrough pool: a ClientHello for a name the listener has no
///   certificate for reaches nginx's own TLS port (its header proves who answered), a first
///   flight that is not a ClientHello (plain HTTP) reaches it too (nginx answers "plain HTTP
///   request was sent to HTTPS port"), and a ClientHello for the listener's name is still
///   terminated by the box.
#[test]
fn passthrough_plain_pool_and_unknown_sni() {
    if !lab_enabled() {
        return;
    }
    let t = TlsLab::up(Setup::io("xdp"));
    let mut passed = 0;
    let plain = t.vip(false, ports::PLAIN);
    for size in [0u64, 1448, 1 << 20, MIB_100] {
        let out = t.scratch(&format!("plain-{size}"));
        let url = format!("http://{plain}{}", file_path(size));
        let args: Vec<String> = ["-sS", "--fail", "--max-time", "60", "-o"]
            .iter()
            .map(|a| a.to_string())
            .chain([out.display().to_string(), url.clone()])
            .collect();
        let output = t.client_run("curl", &args);
        passed += 1;
        if !output.status.success() {
            t.fail(format!("curl {url}: {}", String::from_utf8_lossy(&output.stderr)));
        }
        let (len, digest) = sha256_file(&out).expect("read the download");
        assert_eq!(len, size, "{url}: length");
        assert_eq!(digest, t.web.file(size).sha256, "{url}: SHA-256");
    }
    let (source, body_sha256) = t.upload_source(1 << 20, 77);
    let url = format!("http://{plain}/up/plain-upload");
    let args: Vec<String> = vec!["-sS".into(), "--fail".into(), "--max-time".into(), "60".into(), "-T".into(), source.display().to_string(), url.clone()];
    let output = t.client_run("curl", &args);
    passed += 1;
    if !output.status.success() {
        t.fail(format!("curl -T {url}: {}", String::from_utf8_lossy(&output.stderr)));
    }
    let stored = std::fs::read(t.web.uploaded("plain-upload")).expect("nginx stored the upload");
    assert_eq!(sha256(&stored), body_sha256, "{url}: stored bytes differ");

    let mixed = t.vip(false, ports::MIXED);
    // Another name: nginx's TLS answers, with its header.
    let size = 1u64 << 20;
    let out = t.scratch("other-sni");
    let headers = t.scratch("other-sni-headers");
    let args: Vec<String> = vec![
        "-sS".into(),
        "--fail".into(),
        "--max-time".into(),
        "60".into(),
        "-k".into(),
        "--resolve".into(),
        format!("other.test:{}:{}", mixed.port(), mixed.ip()),
        "-D".into(),
        headers.display().to_string(),
        "-o".into(),
        out.display().to_string(),
        format!("https://other.test:{}{}", mixed.port(), file_path(size)),
    ];
    let output = t.client_run("curl", &args);
    passed += 1;
    if !output.status.success() {
        t.fail(format!("curl other.test via {mixed}: {}", String::from_utf8_lossy(&output.stderr)));
    }
    let header_text = std::fs::read_to_string(&headers).unwrap_or_default().to_ascii_lowercase();
    assert!(header_text.contains("x-backend-tls: yes"), "nginx's own TLS answered:\n{header_text}");
    let (len, digest) = sha256_file(&out).expect("read the download");
    assert_eq!((len, digest), (size, t.web.file(size).sha256.clone()), "other.test download");
    // Not a ClientHello: plain HTTP to the TLS listener reaches nginx's TLS port as it is.
    let args: Vec<String> = vec!["-sS".into(), "--max-time".into(), "20".into(), format!("http://{mixed}/")];
    let output = t.client_run("curl", &args);
    passed += 1;
    let answer = String::from_utf8_lossy(&output.stdout);
    assert!(
        answer.contains("The plain HTTP request was sent to HTTPS port"),
        "plain HTTP via {mixed}: {answer} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The listener's own name is still terminated here.
    let out = t.scratch("own-sni");
    let args: Vec<String> = vec![
        "-sS".into(),
        "--fail".into(),
        "--max-time".into(),
        "60".into(),
        "--cacert".into(),
        t.cert.display().to_string(),
        "--resolve".into(),
        format!("{HOST}:{}:{}", mixed.port(), mixed.ip()),
        "-o".into(),
        out.display().to_string(),
        format!("https://{HOST}:{}{}", mixed.port(), file_path(size)),
    ];
    let output = t.client_run("curl", &args);
    t.count_connections(1);
    if !output.status.success() {
        t.fail(format!("curl {HOST} via {mixed}: {}", String::from_utf8_lossy(&output.stderr)));
    }
    let (len, digest) = sha256_file(&out).expect("read the download");
    assert_eq!((len, digest), (size, t.web.file(size).sha256.clone()), "{HOST} download via {mixed}");
    let counters = t.finish();
    assert_eq!(counters.get("sessions_passthrough"), passed, "passthrough sessions");
}

#[test]
fn snat_mode_backend_sees_the_box_address() {
    if !lab_enabled() {
        return;
    }
    let snat: IpAddr = "198.18.0.2".parse().expect("address");
    let t = TlsLab::up(Setup {
        mode: AddressMode::Snat(snat),
        ..Setup::io("xdp")
    });
    for mode in MODES {
        suite_matrix(&t, t.vip(false, h1_port(mode)), false, false, true);
    }
    let size = 1u64 << 20;
    let items: Vec<Item> = (0..100)
        .map(|i| Item::Get {
            path: format!("/slow{}?snat{i}", file_path(size)),
            size,
        })
        .collect();
    let parallel: Vec<String> = [
        "--parallel",
        "--parallel-immediate",
        "--parallel-max",
        "100",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let report = t.curl(
        t.vip(false, h1_port(HoldBack::CutThrough)),
        &parallel,
        &items,
    );
    assert_eq!(report.connects, 100, "one connection per transfer");
    let log = t.web.access_log();
    for line in log.lines() {
        assert!(
            line.starts_with(&format!("{snat} ")),
            "the backend saw another address than {snat}: {line}"
        );
    }
    let backend = RecordingBackend::start(&t.lab, &t.lab.env.backends_v4, &RECORDING_PORTS)
        .expect("start the recording backends");
    for mode in MODES {
        let to = t.vip(false, recording_port(mode));
        for (version, cipher) in [("1.2", Some(SUITES[3].name)), ("1.3", None)] {
            for (request_size, response_size) in [(1, 1), (1448, 1447), (16384, 16384)] {
                let what = format!(
                    "SNAT, TLS {version} via {to}: {request_size} B up, {response_size} B down"
                );
                recording_exchange(
                    &t,
                    &backend,
                    to,
                    version,
                    cipher,
                    (request_size, response_size),
                    snat,
                    Duration::ZERO,
                    8000,
                    &what,
                );
            }
        }
    }
    drop(backend);
    t.finish();
}

// The harness itself (no lab, no root).

#[test]
fn harness_download_sizes_are_the_issues() {
    // 0 B, 1 B, 1447 B, 1448 B, 16 KiB, 1 MiB, 100 MiB.
    assert_eq!(
        DOWNLOAD_SIZES,
        [0, 1, 1447, 1448, 16384, 1 << 20, 100 << 20]
    );
    assert_eq!(&DOWNLOAD_SIZES[..6], &SMALL_SIZES);
}

#[test]
fn harness_counters_parse() {
    let text = "Counters {\n    sessions_started: 3,\n    handshakes_completed: 2,\n    ended_tag_failure: 0,\n}\nsessions still open: 1\n";
    let counters = Counters::parse(text);
    assert_eq!(counters.get("sessions_started"), 3);
    assert_eq!(counters.get("handshakes_completed"), 2);
    assert_eq!(counters.get("ended_tag_failure"), 0);
    assert_eq!(counters.sessions_still_open, Some(1));
}

#[test]
fn harness_record_streams() {
    let mut stream = vec![22, 3, 3, 0, 2, 1, 2, 23, 3, 3, 0, 1, 9];
    assert_eq!(
        tls_records(&stream),
        Ok(RecordStream {
            handshake: 1,
            application_data: 1,
            application_bytes: 1,
            ..Default::default()
        })
    );
    stream.push(23);
    assert!(tls_records(&stream).is_err(), "a stray byte");
    assert!(tls_records(b"HTTP/1.1 200 OK\r\n").is_err(), "plaintext");
    assert!(tls_records(&[23, 3, 3, 0, 9, 1]).is_err(), "cut short");
}

#[test]
fn harness_plaintext_search() {
    let plain = generated(5000, 1);
    let mut stream = generated(3000, 2);
    assert_eq!(contains_plaintext(&stream, &plain), None);
    stream.extend_from_slice(&plain[1000..1400]);
    assert!(contains_plaintext(&stream, &plain).is_some());
    assert_eq!(
        contains_plaintext(&stream, &plain[..1]),
        None,
        "too short to tell"
    );
}

#[test]
fn harness_recording_requests_parse() {
    let request = recording_request(b"abc", 17);
    assert_eq!(complete_request(&request), Some((17, request.len())));
    assert_eq!(complete_request(&request[..10]), None);
}

#[test]
fn harness_http_responses_split() {
    let (code, body) = http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc").unwrap();
    assert_eq!((code, body.as_slice()), (200, &b"abc"[..]));
    assert!(http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabc").is_err());
}
