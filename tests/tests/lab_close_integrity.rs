//! Issue 8 acceptance, with real peers: the polite close, and frames with bad checksums.
//!
//! - Clients that close the polite way: Python's `SSLSocket.unwrap()` (OpenSSL's bidirectional
//!   `SSL_shutdown`: close_notify, then wait for the peer's) followed by `shutdown(SHUT_WR)`,
//!   and `openssl s_client` ending on stdin EOF; idle and after a keep-alive request; TLS 1.2
//!   and 1.3. The client must get the box's close_notify within a second, leave no socket in
//!   FIN-WAIT, the backend connection must be closed, and cutls's session table empty. Then
//!   1,000 such sessions closed at once.
//! - The impairment forwarder (`cutls-impair`, `tools/lab up --impair-side both`) flips a bit in
//!   about one TCP frame in 500 on the client-box and the box-backend links, leaving the
//!   checksum as it was (a bad cable, a faulty NIC). No byte of the downloads and uploads (MiBs
//!   each) may be wrong, the box having dropped and counted the frames it got corrupted; a
//!   transfer that stalls on the resulting loss (issue 10) is reported, not failed, unless
//!   stalls are the rule.
//!
//! Needs root (network namespaces); `CUTLS_SKIP_LAB=1` skips. Commands: ip, ethtool, nginx,
//! curl, openssl, python3, ss, timeout.

use std::net::SocketAddr;
use std::time::Duration;

use cutls_tests::lab::{sha256, Impair};
use cutls_tests::lab_tls::{file_path, h1_port, lab_enabled, tail, HoldBack, Setup, TlsLab, HOST, SUITES};

/// The Python client: opens COUNT connections (all before any closes), optionally sends each a
/// keep-alive GET and reads the response, then closes them all at once the OpenSSL way and
/// reports, per connection, how long `unwrap()` waited for the box's close_notify and how long
/// until the box's FIN.
const POLITE_CLIENT: &str = r#"
import json, resource, socket, ssl, sys, threading, time
host, port, sni, cafile, version, count, path = sys.argv[1:8]
count = int(count)
resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.load_verify_locations(cafile)
v = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[version]
context.minimum_version = v
context.maximum_version = v
opened, failures, results = [], [], []
lock = threading.Lock()
def read_response(tls):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        if not chunk:
            raise RuntimeError("closed before the response head")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")][0]
    while len(body) < length:
        chunk = tls.recv(65536)
        if not chunk:
            raise RuntimeError("closed inside the response body")
        body += chunk
def open_one(i):
    try:
        raw = socket.create_connection((host, int(port)), timeout=20)
        tls = context.wrap_socket(raw, server_hostname=sni)
        if path != "-":
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {sni}\r\n\r\n".encode())
            read_response(tls)
        with lock:
            opened.append(tls)
    except Exception as error:
        with lock:
            failures.append(f"open {i}: {error!r}")
def close_one(tls):
    try:
        start = time.monotonic()
        plain = tls.unwrap()
        unwrapped = time.monotonic() - start
        plain.shutdown(socket.SHUT_WR)
        while plain.recv(4096):
            pass
        ended = time.monotonic() - start
        plain.close()
        with lock:
            results.append((unwrapped, ended))
    except Exception as error:
        with lock:
            failures.append(f"close: {error!r}")
def run_all(target, items):
    threads = [threading.Thread(target=target, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
# Open in waves so that the handshakes do not all queue at once.
for wave in range(0, count, 50):
    run_all(open_one, range(wave, min(count, wave + 50)))
run_all(close_one, list(opened))
worst_unwrap = max((r[0] for r in results), default=0)
worst_end = max((r[1] for r in results), default=0)
print(json.dumps({"opened": len(opened), "closed": len(results), "worst_unwrap": worst_unwrap,
                  "worst_end": worst_end, "failures": failures[:5]}))
"#;

/// What [`polite_close`] measured.
#[derive(Debug)]
struct PoliteReport {
    opened: u64,
    closed: u64,
    worst_unwrap: f64,
    worst_end: f64,
    /// The first failures the client reported (shown with the report).
    #[allow(dead_code)]
    failures: String,
}

fn json_number(text: &str, name: &str) -> f64 {
    let key = format!("\"{name}\": ");
    let start = text.find(&key).map(|at| at + key.len()).unwrap_or_else(|| panic!("no {name} in {text}"));
    let end = text[start..].find([',', '}']).map_or(text.len(), |at| at + start);
    text[start..end].trim().parse().unwrap_or_else(|_| panic!("{name} in {text}"))
}

/// Runs the Python client: `count` connections to `to` with TLS `version`, each with a
/// keep-alive GET of `request_size` bytes first if given.
fn polite_close(t: &TlsLab, to: SocketAddr, version: &str, count: u64, request_size: Option<u64>) -> PoliteReport {
    let script = t.dir.join("polite_client.py");
    if !script.exists() {
        std::fs::write(&script, POLITE_CLIENT).expect("write the Python client");
    }
    let path = request_size.map_or("-".to_string(), file_path);
    let output = t
        .lab
        .command_in(&t.lab.env.client_ns, "timeout")
        .args(["120", "python3"])
        .arg(&script)
        .args([&to.ip().to_string(), &to.port().to_string(), HOST])
        .arg(&t.cert)
        .args([version, &count.to_string(), &path])
        .output()
        .expect("run python3");
    t.count_connections(count);
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    if !output.status.success() {
        t.fail(format!(
            "polite Python client to {to} (TLS {version}, {count}) failed ({}): {}",
            output.status,
            tail(&String::from_utf8_lossy(&output.stderr), 20)
        ));
    }
    let failures = stdout.split("\"failures\": ").nth(1).unwrap_or_default().to_string();
    PoliteReport {
        opened: json_number(&stdout, "opened") as u64,
        closed: json_number(&stdout, "closed") as u64,
        worst_unwrap: json_number(&stdout, "worst_unwrap"),
        worst_end: json_number(&stdout, "worst_end"),
        failures,
    }
}

/// TCP sockets in `ns` in the given `ss` states (e.g. "fin-wait-1"), one line each.
fn sockets_in_states(t: &TlsLab, ns: &str, states: &[&str]) -> Vec<String> {
    let mut args = vec!["-Htn".to_string()];
    for state in states {
        args.push("state".into());
        args.push(state.to_string());
    }
    let output = t.lab.command_in(ns, "ss").args(&args).output().expect("run ss");
    String::from_utf8_lossy(&output.stdout).lines().filter(|line| !line.trim().is_empty()).map(str::to_string).collect()
}

/// A second after the clients are done: nothing half-closed on either side of the box.
fn assert_all_closed(t: &TlsLab, what: &str) {
    std::thread::sleep(Duration::from_secs(1));
    let client = sockets_in_states(t, &t.lab.env.client_ns, &["fin-wait-1", "fin-wait-2", "closing", "last-ack"]);
    assert!(client.is_empty(), "{what}: client sockets still closing a second later:\n{}", client.join("\n"));
    let server = sockets_in_states(t, &t.lab.env.server_ns, &["established", "close-wait", "fin-wait-1", "fin-wait-2", "last-ack"]);
    assert!(server.is_empty(), "{what}: backend connections still open a second later:\n{}", server.join("\n"));
}

#[test]
fn polite_closes_python_unwrap_and_openssl_s_client() {
    if !lab_enabled() {
        return;
    }
    let t = TlsLab::up(Setup::io("xdp"));
    let mut connections = 0;
    for (version, v6) in [("1.3", false), ("1.2", true)] {
        for request in [None, Some(16 * 1024)] {
            let to = t.vip(v6, h1_port(HoldBack::CutThrough));
            let what = format!("Python unwrap, TLS {version}, request {request:?}, via {to}");
            let report = polite_close(&t, to, version, 1, request);
            if (report.opened, report.closed) != (1, 1) {
                t.fail(format!("{what}: {report:?}"));
            }
            assert!(report.worst_unwrap < 1.0, "{what}: the box's close_notify took {:.3} s", report.worst_unwrap);
            assert!(report.worst_end < 1.0, "{what}: the box's FIN took {:.3} s", report.worst_end);
            assert_all_closed(&t, &what);
            connections += 1;
        }
    }
    // openssl s_client: on stdin EOF it sends close_notify and closes the socket.
    for suite in [SUITES[0], SUITES[3]] {
        for request in [false, true] {
            let to = t.vip(false, h1_port(HoldBack::VerifyFirst));
            let input = if request {
                format!("printf 'GET {} HTTP/1.1\\r\\nHost: {HOST}\\r\\n\\r\\n'; sleep 1", file_path(1448))
            } else {
                "sleep 1".to_string()
            };
            let command = format!(
                "({input}) | timeout 20 openssl s_client -brief -connect {to} -servername {HOST} -CAfile {} {}",
                t.cert.display(),
                suite.openssl_args().join(" ")
            );
            let output = t.lab.command_in(&t.lab.env.client_ns, "sh").args(["-c", &command]).output().expect("run openssl");
            t.count_connections(1);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "openssl s_client {suite:?}: {}", tail(&stderr, 20));
            if request {
                assert!(String::from_utf8_lossy(&output.stdout).contains("HTTP/1.1 200"), "openssl {suite:?}: no response");
            }
            assert_all_closed(&t, &format!("openssl s_client {suite:?} request {request}"));
            connections += 1;
        }
    }
    let counters = t.finish();
    assert_eq!(counters.get("ended_fin"), connections, "every session ended with FINs");
    assert_eq!(counters.get("ended_close_timeout") + counters.get("ended_idle"), 0);
}

#[test]
fn a_thousand_polite_closes_at_once() {
    if !lab_enabled() {
        return;
    }
    let t = TlsLab::up(Setup::io("xdp"));
    let to = t.vip(false, h1_port(HoldBack::CutThrough));
    let report = polite_close(&t, to, "1.3", 1000, Some(1448));
    if (report.opened, report.closed) != (1000, 1000) {
        // With the box's counters and stderr: a clean-clone CI run once saw every open after
        // the 435th time out and no close succeed (the box unresponsive), not seen again here.
        t.fail(format!("1,000 polite closes: {report:?}"));
    }
    assert!(report.worst_end < 5.0, "the slowest close took {:.3} s: {report:?}", report.worst_end);
    assert_all_closed(&t, "1,000 polite closes");
    let counters = t.finish();
    assert_eq!(counters.get("ended_fin"), 1000);
}

/// About one TCP frame in 500 corrupted on each link, both ways, checksum unchanged: no wrong
/// byte ever reaches a peer. Every download's bytes are compared with the file (a transfer that
/// stops early must still have received an exact prefix), every upload nginx stored is
/// compared with what was sent, and the box's drops are counted on both ports.
///
/// A dropped frame is a lost frame, and the box's loss recovery is issue 10's. CI once saw one
/// transfer of 30 stop at 232 KB; since the box answers backend window probes and replays held
/// client segments that start inside a record header, 120 transfers in four runs finished (2026-12-02).
/// Stalls are reported; more than one fails the test.
#[test]
fn corrupted_frames_on_both_links_never_reach_a_peer() {
    if !lab_enabled() {
        return;
    }
    let t = TlsLab::up(Setup { impair_side: Some("both"), ..Setup::io("xdp") });
    let mut server = Impair::start(&t.lab, "server", "corrupt=0.2%", 11).expect("start the server-side impairer");
    let mut client = Impair::start(&t.lab, "client", "corrupt=0.2%", 12).expect("start the client-side impairer");
    let file = std::fs::read(t.web.root.join(&file_path(1 << 20)[1..])).expect("the 1 MiB file");
    let (mut transfers, mut stalled) = (0, Vec::new());
    for (index, suite) in [SUITES[0], SUITES[2], SUITES[3]].into_iter().enumerate() {
        for (mode, v6) in [(HoldBack::CutThrough, false), (HoldBack::VerifyFirst, true)] {
            let to = t.vip(v6, h1_port(mode));
            let resolve = format!("{HOST}:{}:{}", to.port(), if v6 { format!("[{}]", to.ip()) } else { to.ip().to_string() });
            let base = format!("https://{HOST}:{}", to.port());
            let curl = |extra: &[String]| -> (bool, String) {
                let mut args: Vec<String> =
                    ["-sS", "--max-time", "20", "--cacert"].iter().map(|s| s.to_string()).collect();
                args.push(t.cert.display().to_string());
                args.extend(["--resolve".to_string(), resolve.clone()]);
                args.extend(suite.curl_args());
                args.extend(extra.iter().cloned());
                let output = t.client_run("curl", &args);
                t.count_connections(1);
                (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
            };
            for n in 0..4 {
                let what = format!("{suite:?} {mode:?} GET {n}");
                let out = t.scratch("corrupt-get");
                let (ok, stderr) = curl(&[format!("{base}{}?corrupt={index}-{n}", file_path(1 << 20)), "-o".into(), out.display().to_string()]);
                let got = std::fs::read(&out).unwrap_or_default();
                assert!(got.len() <= file.len() && got[..] == file[..got.len()], "{what}: WRONG BYTES ({} received)", got.len());
                transfers += 1;
                if !ok || got.len() != file.len() {
                    stalled.push(format!("{what}: {} of {} bytes: {}", got.len(), file.len(), stderr.trim()));
                }
            }
            let (local, sent) = t.upload_source(3 << 20, 800 + index as u64);
            let remote = format!("corrupt-{index}-{v6}");
            let (ok, stderr) = curl(&["-T".into(), local.display().to_string(), format!("{base}/up/{remote}")]);
            transfers += 1;
            match std::fs::read(t.web.uploaded(&remote)) {
                Ok(stored) if ok => assert!(sha256(&stored) == sent, "{suite:?} {mode:?} PUT: nginx stored WRONG BYTES"),
                _ => stalled.push(format!("{suite:?} {mode:?} PUT: {}", stderr.trim())),
            }
        }
    }
    // The box's counters first, while the links still carry the last closing segments.
    let counters = t.finish_allowing_open(!stalled.is_empty());
    let server_report = server.stop().expect("stop the server-side impairer");
    let client_report = client.stop().expect("stop the client-side impairer");
    eprintln!("server side: {}client side: {}", server_report.text, client_report.text);
    eprintln!("stalled transfers (issue 10): {}/{transfers}\n{}", stalled.len(), stalled.join("\n"));
    let corrupted = |report: &cutls_tests::lab::ImpairReport| report.toward_box.get("corrupted").copied().unwrap_or(0);
    assert!(corrupted(&server_report) > 0, "nothing corrupted toward the box's inside port: {}", server_report.text);
    assert!(corrupted(&client_report) > 0, "nothing corrupted toward the box's outside port: {}", client_report.text);
    assert!(counters.get("bad_checksum_drops_inside") > 0, "the box dropped no corrupted backend frame");
    assert!(counters.get("bad_checksum_drops_outside") > 0, "the box dropped no corrupted client frame");
    assert_eq!(counters.get("ended_tag_failure"), 0, "a corrupted frame reached the record engine");
    assert!(stalled.len() <= 1, "{} of {transfers} transfers stalled: {}", stalled.len(), stalled.join("\n"));
}
