//! Issue 13, with real peers: `cutlsctl` against a running box in the lab, every verb it has
//! today, `--json` output checked. Two rate-limited downloads (curl) run through the box;
//! `show sessions` lists them with bytes growing; `session kill` ends one (its curl sees the
//! reset) and not the other, which finishes exact; `backend drain` sends no new sessions to
//! the drained backend while its old one finishes; `show backends`, `show stats`,
//! `show metrics` and the errors for what does not exist.
//!
//! Needs root (network namespaces); `CUTLS_SKIP_LAB=1` skips. Commands: ip, nginx, curl.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use cutls_tests::lab::{cutls_binary, sha256, workspace_binary};
use cutls_tests::lab_tls::{file_path, h1_port, lab_enabled, write_generated, HoldBack, Item, Setup, TlsLab, HOST, LAB_METRICS};

const FILE: &str = "/control-24m";
const SIZE: u64 = 24 << 20;

struct Ctl {
    binary: PathBuf,
    socket: PathBuf,
}

impl Ctl {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.binary).arg("--socket").arg(&self.socket).args(args).output().expect("run cutlsctl")
    }

    /// `cutlsctl --json ARGS`, which must succeed: its answer.
    fn json(&self, args: &[&str]) -> Value {
        let output = self.run(&[&["--json"], args].concat());
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "cutlsctl {args:?}: {text}{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("cutlsctl {args:?}: not JSON ({e}): {text}"))
    }

    fn sessions(&self) -> Vec<Value> {
        self.json(&["show", "sessions"])["sessions"].as_array().expect("sessions").clone()
    }
}

fn download(t: &TlsLab, to: SocketAddr, tag: &str, rate: &str) -> (Child, PathBuf) {
    let out = t.scratch(tag);
    let child = t
        .lab
        .command_in(&t.lab.env.client_ns, "curl")
        .args(["-sS", "--fail", "--max-time", "60", "--limit-rate", rate, "--cacert"])
        .arg(&t.cert)
        .args(["--resolve", &format!("{HOST}:{}:{}", to.port(), to.ip())])
        .arg(format!("https://{HOST}:{}{FILE}?{tag}", to.port()))
        .arg("-o")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start curl");
    t.count_connections(1);
    (child, out)
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn u64_of(value: &Value, field: &str) -> u64 {
    value[field].as_u64().unwrap_or_else(|| panic!("no {field} in {value}"))
}

fn by_id(sessions: &[Value], id: u64) -> Value {
    sessions.iter().find(|s| s["id"].as_u64() == Some(id)).cloned().unwrap_or_else(|| panic!("no session {id} in {sessions:?}"))
}

#[test]
fn cutlsctl_manages_the_running_box() {
    if lab_enabled() {
        manage(Setup::io("xdp"));
    }
}

#[test]
fn cutlsctl_manages_a_box_of_two_poll_loops() {
    // Each loop owns its sessions: a kill goes to the owner, a drain to every loop.
    if lab_enabled() {
        manage(Setup { loops: 2, ..Setup::io("xdp") });
    }
}

#[test]
fn check_config_says_what_is_wrong() {
    let cutls = cutls_binary().expect("build cutls");
    let dir = std::env::temp_dir().join(format!("cutls-check-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a folder");
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "[box]\noutside = \"a\"\ninside = \"b\"\n\n[[listener]]\nvip = \"198.18.0.100:80\"\npool = \"tcp\"\n\n\
         [[pool]]\nname = \"tcp\"\nbackends = [\"198.18.0.21:80\"]\npassthrough = true\n\n[management]\nsocket = \"\"\n",
    )
    .expect("write");
    let output = Command::new(&cutls).args(["check-config"]).arg(&good).output().expect("cutls check-config");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("OK (1 listener(s), 1 pool(s), 1 backend(s); management socket off)"));
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, std::fs::read_to_string(&good).expect("read").replace("198.18.0.21:80", "198.18.0.21")).expect("write");
    let output = Command::new(&cutls).args(["check-config"]).arg(&bad).output().expect("cutls check-config");
    assert_eq!(output.status.code(), Some(2));
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains(&format!("{}:11: pool[0].backends[0]: not an address:port", bad.display())), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn manage(setup: Setup) {
    let t = TlsLab::up(setup);
    let ctl = Ctl { binary: workspace_binary("cutls-tools", "cutlsctl").expect("build cutlsctl"), socket: t.dir.join("cutls.sock") };
    let expected = write_generated(&t.web.root.join(&FILE[1..]), SIZE, 1313).expect("write the download");
    let to = t.vip(false, h1_port(HoldBack::CutThrough));
    wait_for("the management socket", Duration::from_secs(10), || Path::new(&ctl.socket).exists() && ctl.run(&["show", "stats"]).status.success());

    // Two downloads of 24 MiB at 3 MB/s: eight seconds each.
    let (one_child, one_out) = download(&t, to, "one", "3M");
    let (other_child, other_out) = download(&t, to, "other", "3M");
    wait_for("two spliced sessions", Duration::from_secs(10), || {
        let sessions = ctl.sessions();
        sessions.len() == 2 && sessions.iter().all(|s| s["state"] == "spliced" && u64_of(s, "to_client_bytes") > 0)
    });
    let first = ctl.sessions();
    std::thread::sleep(Duration::from_millis(1200));
    let second = ctl.sessions();
    for session in &first {
        let id = u64_of(session, "id");
        let later = by_id(&second, id);
        assert!(
            u64_of(&later, "to_client_bytes") > u64_of(session, "to_client_bytes") + 1_000_000,
            "bytes grow in show sessions: {session} then {later}"
        );
        assert_eq!(later["server_name"], HOST);
        assert_eq!(later["listener"], to.to_string());
        assert_eq!(later["pool"], "web");
        assert!(later["tls_version"].as_str().is_some_and(|v| v.starts_with("TLSv1.")), "{later}");
        assert!(u64_of(&later, "to_backend_bytes") > 0, "the request went to the backend: {later}");
    }
    // The table for people.
    let table = ctl.run(&["show", "sessions"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("ID") && table.contains("TO CLIENT") && table.lines().count() == 3, "{table}");

    // Kill the session with the lower id, whichever curl it is, and see that curl end.
    let mut ids: Vec<u64> = second.iter().map(|s| u64_of(s, "id")).collect();
    ids.sort();
    let (killed, kept) = (ids[0], ids[1]);
    let kept_backend = by_id(&second, kept)["backend"].as_str().expect("backend").to_string();
    let one = ctl.json(&["show", "session", &killed.to_string()]);
    assert_eq!(one["reply"], "session");
    assert_eq!(u64_of(&one["session"], "id"), killed);

    let answer = ctl.json(&["session", "kill", &killed.to_string()]);
    assert_eq!(answer["reply"], "done", "{answer}");
    assert_eq!(answer["message"], format!("session {killed} ended: killed"));
    let ended = ctl.json(&["show", "session", &killed.to_string()]);
    assert_eq!((ended["session"]["state"].as_str(), ended["session"]["end_reason"].as_str()), (Some("ended"), Some("killed")));
    // Exactly one curl failed, at once, with a reset.
    let mut curls = vec![("one", one_child, one_out), ("other", other_child, other_out)];
    let mut failed = None;
    wait_for("one curl to end with the kill", Duration::from_secs(5), || {
        for (name, child, _) in curls.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                if !status.success() {
                    failed = Some(name.to_string());
                }
            }
        }
        failed.is_some()
    });
    let (failed_name, failed_child, _) = {
        let index = curls.iter().position(|(name, _, _)| Some(name.to_string()) == failed).expect("the failed curl");
        curls.remove(index)
    };
    let error = String::from_utf8_lossy(&failed_child.wait_with_output().expect("curl").stderr).to_string();
    assert!(error.contains("reset") || error.contains("(56)") || error.contains("(35)"), "{failed_name}'s curl: {error}");
    assert_eq!(ctl.sessions().len(), 1, "only the killed session is gone");

    // Drain the survivor's backend: new sessions go elsewhere, the survivor finishes exact.
    let drain = ctl.json(&["backend", "drain", &format!("web/{kept_backend}")]);
    assert!(drain["message"].as_str().is_some_and(|m| m.contains("draining") && m.contains("1 go on")), "{drain}");
    let backends = ctl.json(&["show", "backends"]);
    let row = |backends: &Value, address: &str| -> Value {
        backends["backends"].as_array().expect("backends").iter().find(|b| b["pool"] == "web" && b["address"] == address).cloned().expect("the backend")
    };
    let drained = row(&backends, &kept_backend);
    assert_eq!((drained["admin"].as_str(), u64_of(&drained, "sessions_active")), (Some("draining"), 1));
    let total_before = u64_of(&drained, "sessions_total");
    // Six connections (nginx closes each after its answer).
    let small = |n: usize| Item::Get { path: format!("{}?drained-{n}", file_path(1448)), size: 1448 };
    let report = t.curl(to, &["-H".to_string(), "Connection: close".to_string()], &(0..6).map(small).collect::<Vec<_>>());
    assert_eq!(report.connects, 6, "{}", report.stderr);
    let backends = ctl.json(&["show", "backends"]);
    assert_eq!(u64_of(&row(&backends, &kept_backend), "sessions_total"), total_before, "a drained backend got a new session: {backends}");
    let (_, survivor_child, survivor_out) = curls.remove(0);
    let status = survivor_child.wait_with_output().expect("curl");
    assert!(status.status.success(), "the other download: {}", String::from_utf8_lossy(&status.stderr));
    assert_eq!(sha256(&std::fs::read(&survivor_out).expect("the download")), expected, "the other download is exact");
    ctl.json(&["backend", "enable", &format!("web/{kept_backend}")]);
    assert_eq!(row(&ctl.json(&["show", "backends"]), &kept_backend)["admin"], "enabled");

    // Stats, metrics, and errors for what is not there.
    let stats = ctl.json(&["show", "stats"]);
    assert_eq!(stats["reply"], "stats");
    assert!(stats["loops"].as_array().is_some_and(|loops| !loops.is_empty() && loops.iter().all(|l| l["stalled"] == false)), "{stats}");
    assert_eq!(stats["counters"]["ended_killed"], 1);
    let started = u64_of(&stats["counters"], "sessions_started");
    assert_eq!(started, t.connections(), "{stats}");
    let metrics = String::from_utf8_lossy(&ctl.run(&["show", "metrics"]).stdout).to_string();
    assert!(metrics.lines().any(|l| l == format!("cutls_sessions_started_total {started}")), "{metrics}");
    assert!(metrics.contains("cutls_handshake_seconds_count"), "{metrics}");
    assert_eq!(stats["loops"].as_array().map(Vec::len), Some(setup.loops), "{stats}");
    // What Prometheus scrapes, over HTTP in the box's namespace.
    let scraped = t.lab.run_in(&t.lab.env.box_ns, "curl", &["-sS", "--fail", &format!("http://{LAB_METRICS}/metrics")]).expect("curl the metrics");
    let scraped = String::from_utf8_lossy(&scraped.stdout);
    assert!(scraped.lines().any(|l| l == format!("cutls_sessions_started_total {started}")), "{scraped}");
    assert!(scraped.contains("# TYPE cutls_backend_sessions_active gauge"), "{scraped}");
    for (args, needle) in [
        (vec!["show", "session", "999999999"], "no session"),
        (vec!["session", "kill", "999999999"], "no live session"),
        (vec!["backend", "drain", "web/192.0.2.1:80"], "no such backend"),
    ] {
        let output = ctl.run(&args);
        assert_eq!(output.status.code(), Some(1), "cutlsctl {args:?}");
        assert!(String::from_utf8_lossy(&output.stderr).contains(needle), "cutlsctl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    let nowhere = Command::new(&ctl.binary).args(["--socket", "/nonexistent/cutls.sock", "show", "stats"]).output().expect("cutlsctl");
    assert_eq!(nowhere.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&nowhere.stderr).contains("is cutls running"));

    let counters = t.finish();
    assert_eq!(counters.get("ended_killed"), 1);
}
