//! `make bench-loss`: download throughput through a lossy link, cutls against nginx and HAProxy
//! terminating TLS on the same path, in the same lab and run.
//!
//! The lab with the impairment forwarder (`cutls-impair`) on both links; for each side (client
//! or server) and loss rate (0, 0.1, 1, 5%) the forwarder drops that share of frames both ways
//! on that side, and one curl download of `BENCH_LOSS_MIB` MiB (default 20) is timed three ways,
//! TLS 1.3 AES-128-GCM each time:
//!
//! - cutls: curl -> VIP (cutls terminates, nginx plain HTTP on a backend behind it);
//! - nginx: curl -> nginx's own TLS on a backend (port 8443), the box bridging;
//! - HAProxy: curl -> HAProxy's TLS in the server namespace (port 9443) -> nginx plain HTTP.
//!
//! Each is run `BENCH_LOSS_ROUNDS` times (default 3) and the median kept. Printed: MiB/s and the
//! ratios cutls/nginx, cutls/HAProxy and cutls/its own lossless rate; the last line sums up the
//! 1% cases for scripts. Needs root; installs nothing itself (`make bench-loss` does).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cutls_tests::lab::{lab_allowed, sha256, Impair};
use cutls_tests::lab_tls::{h1_port, write_generated, HoldBack, Setup, TlsLab, HOST};

const LOSS: [&str; 4] = ["0%", "0.1%", "1%", "5%"];
const SIDES: [&str; 2] = ["server", "client"];
const HAPROXY_PORT: u16 = 9443;
const SUITE: [&str; 2] = ["--tls13-ciphers", "TLS_AES_128_GCM_SHA256"];

fn main() {
    if let Err(reason) = lab_allowed() {
        eprintln!("bench-loss: skipped: {reason}");
        return;
    }
    let mib: u64 = std::env::var("BENCH_LOSS_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let rounds: usize = std::env::var("BENCH_LOSS_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let size = mib << 20;
    let t = TlsLab::up(Setup { impair_side: Some("both"), ..Setup::io("xdp") });
    let expected = write_generated(&t.web.root.join("bench-loss"), size, 77).expect("write the file");
    let cutls = t.vip(false, h1_port(HoldBack::CutThrough));
    let nginx = SocketAddr::new(t.lab.env.backends_v4[0], 8443);
    let haproxy_at = SocketAddr::new(t.lab.env.backends_v4[1], HAPROXY_PORT);
    let mut haproxy = start_haproxy(&t, haproxy_at, SocketAddr::new(t.lab.env.backends_v4[1], 80));
    println!("bench-loss {} ({mib} MiB per download, median of {rounds}, TLS 1.3 AES-128-GCM)", date());
    println!("{:<8} {:>6} {:>10} {:>10} {:>10} {:>11} {:>13} {:>13}", "side", "loss", "cutls", "nginx", "haproxy", "cutls/nginx", "cutls/haproxy", "cutls/lossless");
    let mut lossless = [0.0f64; 2];
    let mut summary = Vec::new();
    let mut count = 0u64;
    // BENCH_LOSS_SIDES / BENCH_LOSS_RATES (comma lists) narrow the run, e.g. for tuning.
    let list = |name: &str, default: &[&str]| -> Vec<String> {
        std::env::var(name).map(|v| v.split(',').map(str::to_string).collect()).unwrap_or_else(|_| default.iter().map(|s| s.to_string()).collect())
    };
    let (sides, rates) = (list("BENCH_LOSS_SIDES", &SIDES), list("BENCH_LOSS_RATES", &LOSS));
    for (side_index, side) in sides.iter().enumerate().take(2) {
        for loss in rates.iter().map(String::as_str) {
            let spec = format!("loss={loss}");
            let spec_for = |this: &str| if this == side.as_str() { spec.as_str() } else { "none" };
            let mut server = Impair::start(&t.lab, "server", spec_for("server"), 500 + count).expect("server-side impairer");
            let mut client = Impair::start(&t.lab, "client", spec_for("client"), 900 + count).expect("client-side impairer");
            let mut rate = |to: SocketAddr, through_box: bool| -> f64 {
                let mut rates: Vec<f64> = (0..rounds)
                    .map(|round| {
                        count += 1;
                        let seconds = download(&t, to, &format!("/bench-loss?{count}-{round}"), &expected, through_box);
                        (size as f64 / (1 << 20) as f64) / seconds
                    })
                    .collect();
                rates.sort_by(f64::total_cmp);
                rates[rates.len() / 2]
            };
            let (c, n, h) = (rate(cutls, true), rate(nginx, false), rate(haproxy_at, false));
            if loss == "0%" || lossless[side_index] == 0.0 {
                lossless[side_index] = c;
            }
            println!(
                "{side:<8} {loss:>6} {c:>10.1} {n:>10.1} {h:>10.1} {:>11.2} {:>13.2} {:>13.2}",
                c / n,
                c / h,
                c / lossless[side_index]
            );
            if loss == "1%" {
                summary.push(format!("{side}_to_nginx={:.2} {side}_to_haproxy={:.2} {side}_to_lossless={:.2}", c / n, c / h, c / lossless[side_index]));
            }
            let _ = server.stop();
            let _ = client.stop();
        }
    }
    println!("(MiB/s)");
    let _ = haproxy.kill();
    let _ = haproxy.wait();
    t.finish_allowing_open(true);
    println!("bench-loss: at_1pct {}", summary.join(" "));
}

/// Times one download (`expected`: the SHA-256 of the file); panics on wrong bytes (a benchmark
/// of a broken transfer means nothing).
fn download(t: &TlsLab, to: SocketAddr, path: &str, expected: &[u8], through_box: bool) -> f64 {
    let out = t.scratch("bench-loss");
    let mut args: Vec<String> = ["-sS", "--fail", "--max-time", "120", "--cacert"].iter().map(|s| s.to_string()).collect();
    args.push(t.cert.display().to_string());
    args.extend(["--resolve".to_string(), format!("{HOST}:{}:{}", to.port(), to.ip())]);
    args.extend(SUITE.iter().map(|s| s.to_string()));
    args.extend([format!("https://{HOST}:{}{path}", to.port()), "-o".into(), out.display().to_string()]);
    let started = Instant::now();
    let output = t.client_run("curl", &args);
    let seconds = started.elapsed().as_secs_f64();
    if through_box {
        t.count_connections(1);
    }
    let got = std::fs::read(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    assert!(
        output.status.success() && sha256(&got) == expected,
        "download from {to}{path}: {} bytes, {}",
        got.len(),
        String::from_utf8_lossy(&output.stderr)
    );
    seconds
}

/// HAProxy terminating TLS at `listen` with the lab certificate, proxying to nginx at `backend`.
fn start_haproxy(t: &TlsLab, listen: SocketAddr, backend: SocketAddr) -> Child {
    let pem = t.dir.join("haproxy.pem");
    let mut both = std::fs::read(&t.cert).expect("certificate");
    both.extend(std::fs::read(t.cert.with_file_name("key.pem")).expect("key"));
    std::fs::write(&pem, both).expect("write haproxy.pem");
    let config = format!(
        "global\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
         frontend tls\n  bind {}:{} ssl crt {}\n  default_backend web\n\
         backend web\n  server nginx {backend}\n",
        listen.ip(),
        listen.port(),
        pem.display()
    );
    let path = t.dir.join("haproxy.cfg");
    std::fs::write(&path, config).expect("write haproxy.cfg");
    let child = t
        .lab
        .command_in(&t.lab.env.server_ns, "haproxy")
        .args(["-db", "-f", &path.display().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy (apt-get install haproxy)");
    // Wait until it listens.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let probe = Command::new("ip")
            .args(["netns", "exec", &t.lab.env.server_ns, "ss", "-ltn", &format!("sport = :{}", listen.port())])
            .output();
        if probe.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&listen.port().to_string())) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

fn date() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
