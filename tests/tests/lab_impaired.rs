//! Issue 10 acceptance, with real peers: the splice on a lossy, reordering, duplicating wire.
//!
//! The lab with the impairment forwarder (`cutls-impair`) on both links; for each case it runs
//! with the case's spec on the impaired side(s) and passes frames unchanged on the other. Per
//! case: a 20 MiB download and a 20 MiB upload with curl through cutls (nginx behind it), the
//! suites and both hold-back modes in turn, every byte compared by SHA-256; and, for scale, the
//! same download from nginx terminating TLS itself on the same path (times printed, never
//! asserted: `make bench-loss` measures). At the end the box's session table must be empty.
//!
//! Needs root (network namespaces); `CUTLS_SKIP_LAB=1` skips. Commands: ip, ethtool, nginx,
//! curl, openssl.

use std::net::SocketAddr;
use std::time::Instant;

use cutls_tests::lab::{sha256, Impair};
use cutls_tests::lab_tls::{h1_port, lab_enabled, write_generated, HoldBack, Setup, Suite, TlsLab, HOST, SUITES};

/// (impaired side, spec): every case of the issue's table, loss at 1% and 5%.
const CASES: [(&str, &str); 8] = [
    ("server", "loss=1%"),
    ("client", "loss=1%"),
    ("both", "loss=1%"),
    ("server", "loss=5%"),
    ("client", "loss=5%"),
    ("both", "reorder=2%,delay=4000"),
    ("both", "dup=1%"),
    ("both", "loss=1%,dup=1%,reorder=2%,delay=4000"),
];
const SIZE: u64 = 20 << 20;
const FILE: &str = "/impaired-20m";

#[test]
fn downloads_and_uploads_through_loss_reordering_and_duplication() {
    if !lab_enabled() {
        return;
    }
    let t = TlsLab::up(Setup { impair_side: Some("both"), ..Setup::io("xdp") });
    let expected = write_generated(&t.web.root.join(&FILE[1..]), SIZE, 2010).expect("write the download");
    let nginx_tls = SocketAddr::new(t.lab.env.backends_v4[0], 8443);
    let mut summary = Vec::new();
    // CUTLS_IMPAIR_CASES="side:spec;side:spec" runs those cases instead (for a closer look).
    let chosen: Vec<(String, String)> = match std::env::var("CUTLS_IMPAIR_CASES") {
        Ok(list) => list.split(';').filter_map(|case| case.split_once(':')).map(|(a, b)| (a.to_string(), b.to_string())).collect(),
        Err(_) => CASES.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
    };
    for (index, (side, spec)) in chosen.iter().enumerate() {
        let (side, spec) = (side.as_str(), spec.as_str());
        let suite = SUITES[index % SUITES.len()];
        let mode = [HoldBack::CutThrough, HoldBack::VerifyFirst][index % 2];
        let spec_for = |this: &str| if side == "both" || side == this { spec } else { "none" };
        let seed = 100 + index as u64;
        let mut server = Impair::start(&t.lab, "server", spec_for("server"), seed).expect("start the server-side impairer");
        let mut client = Impair::start(&t.lab, "client", spec_for("client"), seed + 50).expect("start the client-side impairer");
        let what = format!("{spec} on the {side} side, {} {mode:?}", suite.name);

        let to = t.vip(false, h1_port(mode));
        let started = Instant::now();
        let got = download(&t, suite, to, &format!("{FILE}?{index}"), &what);
        let download_s = started.elapsed().as_secs_f64();
        if sha256(&got) != expected {
            t.fail(format!("{what}: download of {} bytes, WRONG BYTES or short", got.len()));
        }

        let (local, sent) = t.upload_source(SIZE, 3000 + index as u64);
        let remote = format!("impaired-{index}");
        let started = Instant::now();
        let (ok, stderr) = curl(&t, suite, to, &["-T".into(), local.display().to_string(), format!("https://{HOST}:{}/up/{remote}", to.port())]);
        let upload_s = started.elapsed().as_secs_f64();
        match std::fs::read(t.web.uploaded(&remote)) {
            Ok(stored) if ok && sha256(&stored) == sent => {}
            Ok(stored) if ok => t.fail(format!("{what}: upload: nginx stored WRONG BYTES ({} bytes)", stored.len())),
            Ok(stored) if stored.len() > sent_len(&local) => t.fail(format!("{what}: upload: nginx stored more than was sent")),
            _ => t.fail(format!("{what}: upload failed: {}", stderr.trim())),
        }
        let _ = std::fs::remove_file(t.web.uploaded(&remote));

        // The reference: nginx terminating TLS on the same path, same impairment.
        let started = Instant::now();
        let reference = reference_download(&t, nginx_tls, &format!("{FILE}?nginx-{index}"));
        let nginx_s = started.elapsed().as_secs_f64();
        let reference_note = if sha256(&reference) == expected { format!("{nginx_s:.2} s") } else { "failed".to_string() };

        let server_report = server.stop().expect("stop the server-side impairer");
        let client_report = client.stop().expect("stop the client-side impairer");
        let line = format!(
            "{what}: download {download_s:.2} s (nginx {reference_note}), upload {upload_s:.2} s; impaired frames: server {:?} client {:?}",
            dropped(&server_report),
            dropped(&client_report)
        );
        eprintln!("{line}");
        summary.push(line);
    }
    let counters = t.finish();
    eprintln!("{}", summary.join("\n"));
    assert_eq!(counters.get("ended_tag_failure"), 0);
    assert_eq!(counters.sessions_still_open, Some(0), "the session table drains");
}

fn sent_len(path: &std::path::Path) -> usize {
    std::fs::metadata(path).map_or(0, |m| m.len() as usize)
}

/// What the impairer did on its side: (dropped, duplicated, delayed) both ways.
fn dropped(report: &cutls_tests::lab::ImpairReport) -> (u64, u64, u64) {
    let sum = |key: &str| report.toward_box.get(key).copied().unwrap_or(0) + report.toward_host.get(key).copied().unwrap_or(0);
    (sum("dropped"), sum("duplicated"), sum("delayed"))
}

/// curl through the box with the suite pinned; (success, stderr). One connection.
fn curl(t: &TlsLab, suite: Suite, to: SocketAddr, extra: &[String]) -> (bool, String) {
    let mut args: Vec<String> = ["-sS", "--fail", "--max-time", "90", "--cacert"].iter().map(|s| s.to_string()).collect();
    args.push(t.cert.display().to_string());
    args.extend(["--resolve".to_string(), format!("{HOST}:{}:{}", to.port(), to.ip())]);
    args.extend(suite.curl_args());
    args.extend(extra.iter().cloned());
    let output = t.client_run("curl", &args);
    t.count_connections(1);
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

fn download(t: &TlsLab, suite: Suite, to: SocketAddr, path: &str, what: &str) -> Vec<u8> {
    let out = t.scratch("impaired-get");
    let (ok, stderr) = curl(t, suite, to, &[format!("https://{HOST}:{}{path}", to.port()), "-o".into(), out.display().to_string()]);
    if !ok {
        t.fail(format!("{what}: download failed: {}", stderr.trim()));
    }
    let got = std::fs::read(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    got
}

/// The same file from nginx's own TLS (not through the box: no connection of the box's).
fn reference_download(t: &TlsLab, to: SocketAddr, path: &str) -> Vec<u8> {
    let out = t.scratch("impaired-nginx");
    let args: Vec<String> = vec![
        "-sS".into(),
        "--max-time".into(),
        "90".into(),
        "--cacert".into(),
        t.cert.display().to_string(),
        "--resolve".into(),
        format!("{HOST}:{}:{}", to.port(), to.ip()),
        format!("https://{HOST}:{}{path}", to.port()),
        "-o".into(),
        out.display().to_string(),
    ];
    t.client_run("curl", &args);
    let got = std::fs::read(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    got
}

/// A backend that answers each request on a keep-alive connection with two writes, headers then
/// a 1,000-byte body, Nagle on (the default): its second write waits until the first is
/// acknowledged.
const TWO_WRITE_BACKEND: &str = r#"
import socket, sys, threading
port = int(sys.argv[1])
body = bytes(range(256)) * 3 + bytes(232)
def serve(conn):
    reader = conn.makefile("rb")
    while True:
        line = reader.readline()
        if not line:
            break
        while reader.readline() not in (b"\r\n", b"\n", b""):
            pass
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n")
        conn.sendall(body)
    conn.close()
server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", port))
server.listen(64)
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;

/// 200 sequential requests on one TLS connection; prints each request's time in ms.
const SEQUENTIAL_CLIENT: &str = r#"
import socket, ssl, sys, time
host, port, sni, cafile, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
context = ssl.create_default_context(cafile=cafile)
conn = context.wrap_socket(socket.create_connection((host, port), timeout=10), server_hostname=sni)
reader = conn.makefile("rb")
expected = bytes(range(256)) * 3 + bytes(232)
for i in range(count):
    started = time.monotonic()
    conn.sendall(b"GET /small HTTP/1.1\r\nHost: " + sni.encode() + b"\r\n\r\n")
    length = None
    while True:
        line = reader.readline()
        if line in (b"\r\n", b""):
            break
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    body = reader.read(length)
    assert body == expected, "wrong body"
    print("%.3f" % ((time.monotonic() - started) * 1000), flush=True)
conn.close()
"#;

/// Issue 10 item 6: small responses written in two pieces must not wait for the client's
/// delayed ACK (40 ms on Linux): fewer than 5% of 200 requests may take 35 ms or more.
#[test]
fn small_two_write_responses_do_not_wait_for_delayed_acks() {
    if !lab_enabled() {
        return;
    }
    let t = TlsLab::up(Setup::io("xdp"));
    let backend_script = t.dir.join("two_write_backend.py");
    std::fs::write(&backend_script, TWO_WRITE_BACKEND).expect("write the backend");
    let port = cutls_tests::lab_tls::RECORDING_PORTS[0];
    let mut backend = t
        .lab
        .command_in(&t.lab.env.server_ns, "python3")
        .args([backend_script.display().to_string(), port.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the backend");
    let mut ready = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(backend.stdout.take().expect("stdout")).read_line(&mut ready).expect("backend ready");
    assert!(ready.contains("ready"), "backend: {ready}");
    let client_script = t.dir.join("sequential_client.py");
    std::fs::write(&client_script, SEQUENTIAL_CLIENT).expect("write the client");
    let to = t.vip(false, cutls_tests::lab_tls::recording_port(HoldBack::CutThrough));
    let output = t
        .lab
        .command_in(&t.lab.env.client_ns, "python3")
        .args([
            client_script.display().to_string(),
            to.ip().to_string(),
            to.port().to_string(),
            HOST.to_string(),
            t.cert.display().to_string(),
            "200".to_string(),
        ])
        .output()
        .expect("run the client");
    t.count_connections(1);
    let _ = backend.kill();
    let _ = backend.wait();
    if !output.status.success() {
        t.fail(format!("the client failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    let mut times: Vec<f64> = String::from_utf8_lossy(&output.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert_eq!(times.len(), 200, "every request answered");
    let slow = times.iter().filter(|&&ms| ms >= 35.0).count();
    times.sort_by(f64::total_cmp);
    eprintln!("200 two-write responses: p50 {:.2} ms, p99 {:.2} ms, {slow} took 35 ms or more", times[100], times[198]);
    t.finish();
    assert!(slow < 10, "{slow} of 200 small responses took 35 ms or more (the backend's Nagle waiting for a delayed ACK)");
}
