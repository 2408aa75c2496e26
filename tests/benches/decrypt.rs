//! `make bench-decrypt`: `cutls decrypt` against tshark on the same captures, same run.
//!
//! A synthetic 100 MB capture (TLS 1.3 AES-128-GCM, 16 KiB records over 1448-byte segments,
//! with some reordering and duplicates) and the largest real capture of ../shared/captures.
//! tshark's work is the reference's: `tshark -r CAP -o tls.keylog_file:KEYS -q -z
//! follow,tls,raw,0` (decrypt and print one connection's application data). Median of 3 runs.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use cutls_tests::synthetic::{v4, write_capture, Sizes};
use cutls_tools::decrypt::{run, Options};

fn main() {
    let dir = std::env::temp_dir().join(format!("cutls-bench-decrypt-{}", std::process::id()));
    let server = vec![16384usize; 6000];
    let client = vec![1400usize; 2000];
    let sizes = Sizes { client: &client, server: &server };
    let (capture, keylog, _, _) = write_capture(&dir, 0x1301, &sizes, v4(1, 40000), v4(2, 443));
    let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/captures");
    println!("cutls decrypt vs tshark, {} (median of 3 runs)", date());
    println!("{:<44} {:>10} {:>10} {:>10} {:>8}", "capture", "MB", "cutls s", "tshark s", "speedup");
    compare("synthetic TLS 1.3 AES-128-GCM", &capture, &keylog, &dir.join("out"));
    compare(
        "zeek/tls-1.2-stream-keylog.pcap",
        &real.join("zeek/tls-1.2-stream-keylog.pcap"),
        &real.join("zeek/tls-1.2-stream-keylog.keys"),
        &dir.join("out2"),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn compare(name: &str, capture: &Path, keylog: &Path, out: &Path) {
    let megabytes = std::fs::metadata(capture).map(|m| m.len() as f64 / 1e6).unwrap_or(0.0);
    let ours = median(|| {
        let options = Options { capture: capture.to_path_buf(), keylog: Some(keylog.to_path_buf()), out: out.to_path_buf() };
        let mut report = Vec::new();
        run(&options, &mut report).expect("cutls decrypt");
    });
    let tshark = median(|| {
        let status = Command::new("tshark")
            .arg("-r")
            .arg(capture)
            .arg("-o")
            .arg(format!("tls.keylog_file:{}", keylog.display()))
            .args(["-q", "-z", "follow,tls,raw,0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        assert!(status.is_ok_and(|s| s.success()), "tshark failed (is it installed?)");
    });
    println!("{name:<44} {megabytes:>10.1} {ours:>10.3} {tshark:>10.3} {:>7.1}x", tshark / ours);
}

fn median(mut work: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..3)
        .map(|_| {
            let start = Instant::now();
            work();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[1]
}

fn date() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
