//! Issue 11 acceptance, with real peers: forged segments during a download, and a crash.
//!
//! A raw-socket injector (Python, in the client's namespace and in the server's) watches the
//! download's segments and, while it runs, sends segments with the connection's addresses and
//! ports that a blind attacker would: RSTs at random sequence numbers and in the window but not
//! at its start, data at random sequence numbers and a quarter of the sequence space before and
//! after the window, ACKs of random numbers and of data never sent (+10^6, +2^31 - 1), SYNs and
//! FINs at random numbers. The download through cutls must finish with every byte right; the
//! same injection against nginx terminating TLS on the same path (the Linux kernel judging the
//! forgeries) is run for comparison and printed.
//!
//! The crash: cutls is killed with SIGKILL in the middle of a download and started again at
//! once. The backend goes on resending what the dead process had not acknowledged; the new
//! process knows no session, and must not bridge those segments (plaintext) to the client. A
//! sniffer on the client's link looks for a marker that every kilobyte of the body carries.
//!
//! The vanishing backend: the server namespace's link goes down in the middle of a download
//! whose client (curl) sends TCP keepalives; the box must find the backend dead and reset the
//! client within a minute, not leave it to its own timeout.
//!
//! The SYN flood: hping3, from the client's namespace, floods the VIP with SYNs from random
//! source addresses for 10 s; a Python client measures the full TLS handshakes it completes one
//! after the other before, during and after the flood. Printed: the rates, the worst handshake,
//! the box's memory, its cookie and half-open counters. Required: handshakes go on during the
//! flood, and 16 s after it (the half-open timeout is 15 s) no session is left.
//!
//! Needs root (network namespaces); `CUTLS_SKIP_LAB=1` skips. Commands: ip, nginx, curl,
//! python3, hping3.

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use cutls_tests::lab::sha256;
use cutls_tests::lab_tls::{h1_port, lab_enabled, write_generated, HoldBack, Setup, TlsLab, HOST, SUITES};

/// The injector. Arguments: interface, match ("to IP PORT": the peer's segments toward that
/// address, or "from IP,IP,.. -": its segments from those addresses), seconds to
/// wait before the first forgery, rounds, seed. It learns the connection's numbers from the
/// last matching segment before each forgery and prints a JSON summary.
const FORGER: &str = r#"
import json, os, random, socket, struct, sys, time
iface, how, address, port, delay, rounds, seed = sys.argv[1:8]
port, delay, rounds = int(port), float(delay), int(rounds)
rng = random.Random(int(seed))
addresses = [socket.inet_aton(a) for a in address.split(",")]
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
sock.bind((iface, 0))
sock.settimeout(0.02)

def parse(frame):
    if len(frame) < 54 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
        return None
    ihl = (frame[14] & 15) * 4
    t = 14 + ihl
    sport, dport, seq, ack = struct.unpack("!HHII", frame[t:t + 12])
    off = (frame[t + 12] >> 4) * 4
    flags = frame[t + 13]
    window = struct.unpack("!H", frame[t + 14:t + 16])[0]
    total = struct.unpack("!H", frame[16:18])[0]
    ts, o = None, t + 20
    while o < t + off:
        kind = frame[o]
        if kind == 0:
            break
        if kind == 1:
            o += 1
            continue
        length = frame[o + 1]
        if kind == 8 and length == 10:
            ts = struct.unpack("!II", frame[o + 2:o + 10])
        if length < 2:
            break
        o += length
    return dict(smac=frame[6:12], dmac=frame[0:6], src=frame[26:30], dst=frame[30:34], sport=sport, dport=dport,
                seq=seq, ack=ack, flags=flags, window=window, end=(seq + total - ihl - off) & 0xffffffff, ts=ts)

def matches(s):
    if s is None or s["flags"] & 0x07 or not s["flags"] & 0x10:
        return False
    if how == "to":
        return s["dst"] == addresses[0] and s["dport"] == port
    return s["src"] in addresses

def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xffff) + (total >> 16)
    return ~total & 0xffff

def forge(s, seq, ack, flags, payload):
    options = b"\x01\x01\x08\x0a" + struct.pack("!II", *s["ts"]) if s["ts"] else b""
    tcp = struct.pack("!HHIIBBHHH", s["sport"], s["dport"], seq & 0xffffffff, ack & 0xffffffff,
                      (5 + len(options) // 4) << 4, flags, s["window"], 0, 0) + options + payload
    tcp = tcp[:16] + struct.pack("!H", checksum(s["src"] + s["dst"] + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), rng.randrange(65536), 0x4000, 64, 6, 0, s["src"], s["dst"])
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return s["dmac"] + s["smac"] + b"\x08\x00" + ip + tcp

FAR = 1 << 30
CASES = [
    ("RST at a random number", lambda s: (rng.getrandbits(32), s["ack"], 0x14, b"")),
    ("RST in the window, not at its start", lambda s: (s["end"] + 1000, 0, 0x04, b"")),
    ("data at a random number", lambda s: (rng.getrandbits(32), s["ack"], 0x18, os.urandom(300))),
    ("more data at a random number", lambda s: (rng.getrandbits(32), s["ack"], 0x18, os.urandom(1000))),
    ("data far before the window", lambda s: (s["end"] - FAR, s["ack"], 0x18, os.urandom(100))),
    ("data far after the window", lambda s: (s["end"] + FAR, s["ack"], 0x18, os.urandom(100))),
    ("ACK of a random number", lambda s: (s["end"], rng.getrandbits(32), 0x10, b"")),
    ("ACK of 10^6 bytes never sent", lambda s: (s["end"], s["ack"] + 10**6, 0x10, b"")),
    ("ACK of 2^31 - 1 bytes never sent", lambda s: (s["end"], s["ack"] + 2**31 - 1, 0x10, b"")),
    ("SYN at a random number", lambda s: (rng.getrandbits(32), 0, 0x02, b"")),
    ("FIN at a random number", lambda s: (rng.getrandbits(32), s["ack"], 0x11, b"")),
]

latest, seen, sent, quiet_since = None, 0, 0, time.time()
def watch(duration):
    global latest, seen, quiet_since
    until = time.time() + duration
    while time.time() < until:
        try:
            frame = sock.recv(65535)
        except socket.timeout:
            continue
        s = parse(frame)
        if matches(s):
            latest, seen, quiet_since = s, seen + 1, time.time()

start = time.time()
while latest is None and time.time() - start < 20:
    watch(0.1)
watch(delay)
for round in range(rounds):
    for name, make in CASES:
        watch(0.03)
        if latest is None or time.time() - quiet_since > 2:
            break
        seq, ack, flags, payload = make(latest)
        sock.send(forge(latest, seq, ack, flags, payload))
        sent += 1
print(json.dumps({"seen": seen, "sent": sent, "cases": len(CASES)}))
"#;

/// Starts an injector in `ns` on `iface`.
fn forger(ns: &str, iface: &str, how: &str, addresses: &[IpAddr], port: u16, seed: u64) -> Child {
    let addresses: Vec<String> = addresses.iter().map(IpAddr::to_string).collect();
    Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", FORGER, iface, how, &addresses.join(","), &port.to_string()])
        .args(["0.5", "5", &seed.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("start the injector in {ns}: {error}"))
}

/// The injector's summary: (segments it saw, forgeries it sent).
fn forger_report(child: Child, what: &str) -> (u64, u64) {
    let output = child.wait_with_output().expect("the injector ends");
    let text = String::from_utf8_lossy(&output.stdout);
    let number = |key: &str| -> u64 {
        text.split(&format!("\"{key}\": "))
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|digits| digits.parse().ok())
            .unwrap_or_else(|| panic!("{what}: injector output {text:?}, stderr {}", String::from_utf8_lossy(&output.stderr)))
    };
    (number("seen"), number("sent"))
}

/// curl's arguments for downloading `path` from `to` (as [`HOST`], the lab's certificate
/// trusted) into `out`, with `options` first.
fn curl_download(t: &TlsLab, to: SocketAddr, path: &str, out: &std::path::Path, options: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["-sS"].iter().chain(options).map(|s| s.to_string()).collect();
    args.extend(["--cacert".to_string(), t.cert.display().to_string()]);
    args.extend(["--resolve".to_string(), format!("{HOST}:{}:{}", to.port(), to.ip())]);
    args.extend([format!("https://{HOST}:{}{path}", to.port()), "-o".into(), out.display().to_string()]);
    args
}

const SIZE: u64 = 48 << 20;
const FILE: &str = "/forged-48m";

#[test]
fn forged_segments_during_a_download_change_nothing() {
    if !lab_enabled() {
        return;
    }
    let t = TlsLab::up(Setup::io("xdp"));
    let expected = write_generated(&t.web.root.join(&FILE[1..]), SIZE, 1111).expect("write the download");
    let env = t.lab.env.clone();
    let nginx_tls = SocketAddr::new(env.backends_v4[0], 8443);
    let mut lines = Vec::new();
    for (index, (target, through_cutls)) in
        [(t.vip(false, h1_port(HoldBack::CutThrough)), true), (t.vip(false, h1_port(HoldBack::VerifyFirst)), true), (nginx_tls, false)]
            .into_iter()
            .enumerate()
    {
        let what = if through_cutls { format!("cutls {target}") } else { format!("nginx {target} (reference)") };
        let seed = 40 + index as u64;
        let client_side = forger(&env.client_ns, &env.client_if, "to", &[target.ip()], target.port(), seed);
        let server_side = forger(&env.server_ns, &env.server_if, "from", &env.backends_v4, 0, seed + 10);
        let started = Instant::now();
        // Slow enough that the forgeries land inside the download.
        let out = t.scratch("forged");
        let suite = if through_cutls { SUITES[0].curl_args() } else { Vec::new() };
        let options: Vec<&str> = ["--fail", "--max-time", "90", "--limit-rate", "12M"].into_iter().chain(suite.iter().map(String::as_str)).collect();
        let args = curl_download(&t, target, &format!("{FILE}?{index}"), &out, &options);
        let curl = t.client_run("curl", &args);
        if through_cutls {
            t.count_connections(1);
        }
        let seconds = started.elapsed().as_secs_f64();
        let (client_seen, client_sent) = forger_report(client_side, &what);
        let (server_seen, server_sent) = forger_report(server_side, &what);
        let got = std::fs::read(&out).unwrap_or_default();
        let exact = curl.status.success() && sha256(&got) == expected;
        let line = format!(
            "{what}: {} of {SIZE} bytes in {seconds:.1} s, {}; forgeries sent: {client_sent} from the client side ({client_seen} segments seen), {server_sent} from the server side ({server_seen} seen){}",
            got.len(),
            if exact { "exact" } else { "NOT EXACT" },
            if curl.status.success() { String::new() } else { format!("; curl: {}", String::from_utf8_lossy(&curl.stderr).trim()) }
        );
        eprintln!("{line}");
        lines.push(line.clone());
        if through_cutls {
            assert!(client_sent > 0 && server_sent > 0, "{what}: the injectors sent nothing: {line}");
            if !exact {
                t.fail(format!("{what}: the download did not survive the forgeries: {line}"));
            }
        }
    }
    let counters = t.finish();
    eprintln!("{}", lines.join("\n"));
    // (curl's own close ends in a RST, ended_client_reset: it closes without reading the
    // box's close_notify; a download cut by a forged RST would have been short.)
    for name in ["ended_backend_reset", "ended_tag_failure", "ended_tls_error", "ended_idle"] {
        assert_eq!(counters.get(name), 0, "{name}");
    }
    assert!(counters.get("challenge_acks") + counters.get("challenge_acks_held") > 0, "no in-window RST was challenged");
    assert!(counters.get("segments_out_of_window") > 0, "no forgery was outside the window");
    assert_eq!(counters.sessions_still_open, Some(0), "the session table drains");
}

/// The sniffer: arguments interface, seconds, marker. Counts the frames on the link and those
/// that carry the marker in the clear, and prints a JSON summary.
const SNIFFER: &str = r#"
import json, socket, sys, time
iface, seconds, marker = sys.argv[1], float(sys.argv[2]), sys.argv[3].encode()
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
sock.bind((iface, 0))
sock.settimeout(0.05)
frames, leaks, first = 0, 0, None
until = time.time() + seconds
while time.time() < until:
    try:
        frame = sock.recv(65535)
    except socket.timeout:
        continue
    frames += 1
    if marker in frame:
        leaks += 1
        if first is None:
            first = frame[:80].hex()
print(json.dumps({"frames": frames, "leaks": leaks, "first": first}))
"#;

const MARKER: &str = "CUTLS-PLAINTEXT-MARKER";
const CRASH_FILE: &str = "/crash-32m";

/// A body whose every kilobyte starts with [`MARKER`] and its number.
fn marked_body(size: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(size);
    let mut block = 0u64;
    while body.len() < size {
        let mut chunk = format!("{MARKER}-{block:08}-").into_bytes();
        chunk.resize(1024, b'a' + (block % 26) as u8);
        body.extend_from_slice(&chunk);
        block += 1;
    }
    body.truncate(size);
    body
}

#[test]
fn no_plaintext_reaches_the_client_after_a_crash_mid_download() {
    if !lab_enabled() {
        return;
    }
    let t = TlsLab::up(Setup::io("xdp"));
    std::fs::write(t.web.root.join(&CRASH_FILE[1..]), marked_body(32 << 20)).expect("write the download");
    let env = t.lab.env.clone();
    let sniffer = Command::new("ip")
        .args(["netns", "exec", &env.client_ns, "python3", "-c", SNIFFER, &env.client_if, "12", MARKER])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the sniffer");
    let to = t.vip(false, h1_port(HoldBack::CutThrough));
    let out = t.scratch("crash");
    let args = curl_download(&t, to, CRASH_FILE, &out, &["--max-time", "20", "--limit-rate", "4M"]);
    let curl = t.lab.command_in(&env.client_ns, "curl").args(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start curl");
    t.count_connections(1);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let received_before = std::fs::metadata(&out).map_or(0, |m| m.len());
    let restart = t.crash_and_restart_cutls();
    let started = Instant::now();
    let curl = curl.wait_with_output().expect("curl ends");
    let client_gave_up_s = started.elapsed().as_secs_f64();
    let sniffed = sniffer.wait_with_output().expect("the sniffer ends");
    let report = String::from_utf8_lossy(&sniffed.stdout).into_owned();
    let received = std::fs::metadata(&out).map_or(0, |m| m.len());
    let counters = t.finish_allowing_open(true);
    eprintln!(
        "crash after {received_before} bytes; restarted in {:.2} s; curl ended {client_gave_up_s:.1} s later with {received} bytes: {}; sniffer: {report}",
        restart.as_secs_f64(),
        String::from_utf8_lossy(&curl.stderr).trim()
    );
    assert!(received_before > 0 && received_before < 32 << 20, "the crash came mid-download ({received_before} bytes)");
    assert!(report.contains("\"leaks\": 0"), "plaintext of the body on the client's link after the crash: {report}");
    assert!(!report.contains("\"frames\": 0,"), "the sniffer saw nothing: {report}");
    assert!(counters.get("orphan_backend_drops") > 0, "the backend's resends never reached the new process");
}

#[test]
fn a_backend_whose_link_dies_mid_download_is_found_and_the_client_reset() {
    if !lab_enabled() {
        return;
    }
    let t = TlsLab::up(Setup::io("xdp"));
    write_generated(&t.web.root.join(&FILE[1..]), SIZE, 1111).expect("write the download");
    let env = t.lab.env.clone();
    let to = t.vip(false, h1_port(HoldBack::CutThrough));
    let out = t.scratch("vanishing");
    let args = curl_download(&t, to, &format!("{FILE}?vanishing"), &out, &["--max-time", "120", "--keepalive-time", "2", "--limit-rate", "4M"]);
    let curl = t.lab.command_in(&env.client_ns, "curl").args(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start curl");
    t.count_connections(1);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let link = |state: &str| {
        let status = t.lab.run_in(&env.server_ns, "ip", &["link", "set", "dev", &env.server_if, state]).expect("ip link");
        assert!(status.status.success(), "ip link set {state}: {}", String::from_utf8_lossy(&status.stderr));
    };
    link("down");
    let down_at = Instant::now();
    let curl = curl.wait_with_output().expect("curl ends");
    let after_s = down_at.elapsed().as_secs_f64();
    link("up");
    let stderr = String::from_utf8_lossy(&curl.stderr).into_owned();
    let counters = t.finish_allowing_open(true);
    eprintln!("the backend's link went down; curl ended {after_s:.1} s later: {}", stderr.trim());
    assert!(!curl.status.success(), "the download cannot have finished");
    assert!(stderr.contains("reset"), "the client was reset, not left to time out: {stderr}");
    assert!(after_s < 60.0, "the client waited {after_s:.1} s");
    assert_eq!(counters.get("ended_backend_silent"), 1);
}

/// Full TLS handshakes one after the other for a while (each a new connection, closed at once):
/// prints how many completed, failed, and the slowest.
const HANDSHAKER: &str = r#"
import json, socket, ssl, sys, time
host, port, seconds, name = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
done, failed, worst = 0, 0, 0.0
end = time.time() + seconds
while time.time() < end:
    started = time.time()
    try:
        with socket.create_connection((host, port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=name):
                pass
        done += 1
        worst = max(worst, time.time() - started)
    except Exception:
        failed += 1
print(json.dumps({"handshakes": done, "failed": failed, "seconds": seconds, "worst_s": round(worst, 3)}))
"#;

/// The box's resident memory in KiB.
fn rss_kib(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|line| line.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// Handshakes per second from the JSON the handshaker printed.
fn handshake_rate(report: &str) -> (f64, f64) {
    let number = |key: &str| -> f64 {
        report
            .split(&format!("\"{key}\": "))
            .nth(1)
            .and_then(|rest| rest.split([',', '}']).next())
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    };
    (number("handshakes") / number("seconds").max(1e-9), number("worst_s"))
}

#[test]
fn handshakes_go_on_during_a_syn_flood_and_the_half_open_table_empties() {
    if !lab_enabled() {
        return;
    }
    if Command::new("sh").args(["-c", "command -v hping3 || test -x /usr/sbin/hping3"]).stdout(Stdio::null()).status().map_or(true, |s| !s.success()) {
        panic!("hping3 is not installed (make test-deps installs it)");
    }
    let t = TlsLab::up(Setup::io("xdp"));
    let env = t.lab.env.clone();
    let to = t.vip(false, h1_port(HoldBack::CutThrough));
    let handshaker = |seconds: u32| {
        t.lab
            .command_in(&env.client_ns, "python3")
            .args(["-c", HANDSHAKER, &to.ip().to_string(), &to.port().to_string(), &seconds.to_string(), HOST])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the handshaker")
    };
    let report = |child: Child| String::from_utf8_lossy(&child.wait_with_output().expect("the handshaker ends").stdout).trim().to_string();
    let rss_before = rss_kib(t.cutls_pid());
    let before = report(handshaker(5));
    // The flood, and handshakes beside it.
    let flood = t
        .lab
        .command_in(&env.client_ns, "timeout")
        .args(["-s", "INT", "10", "hping3", "-S", "-p", &to.port().to_string(), "--flood", "--rand-source", "-q", &to.ip().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hping3");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let during = report(handshaker(9));
    let flooded = flood.wait_with_output().expect("hping3 ends");
    let flood_ended = Instant::now();
    let rss_flood = rss_kib(t.cutls_pid());
    let flood_report = String::from_utf8_lossy(&flooded.stderr).lines().filter(|l| l.contains("packets")).collect::<Vec<_>>().join("; ");
    let after = report(handshaker(5));
    // Past the half-open timeout (15 s) since the flood's last SYN.
    std::thread::sleep(std::time::Duration::from_secs(16).saturating_sub(flood_ended.elapsed()));
    let rss_after = rss_kib(t.cutls_pid());
    let counters = t.finish_allowing_open(true);
    let (rate_before, worst_before) = handshake_rate(&before);
    let (rate_during, worst_during) = handshake_rate(&during);
    let (rate_after, worst_after) = handshake_rate(&after);
    eprintln!(
        "syn-flood: hping3 {flood_report}\n  handshakes/s before {rate_before:.1} (worst {worst_before} s), during {rate_during:.1} (worst {worst_during} s), after {rate_after:.1} (worst {worst_after} s)\n  box RSS {rss_before} KiB before, {rss_flood} KiB after the flood, {rss_after} KiB 16 s later\n  syn_cookies_sent {} syn_cookies_accepted {} ended_half_open {} sessions_refused_full {} sessions left {:?}",
        counters.get("syn_cookies_sent"),
        counters.get("syn_cookies_accepted"),
        counters.get("ended_half_open"),
        counters.get("sessions_refused_full"),
        counters.sessions_still_open,
    );
    assert!(rate_before > 5.0, "handshakes before the flood: {before}");
    assert!(rate_during > 0.0, "no handshake completed during the flood: {during}");
    assert!(rate_after > 5.0, "handshakes after the flood: {after}");
    assert!(counters.get("syn_cookies_sent") > 0, "the flood never reached the cookie threshold");
    assert_eq!(counters.sessions_still_open, Some(0), "half-open sessions left 16 s after the flood");
}
