//! Helpers for tests and benchmarks that run in the lab made by `tools/lab`: bringing it up and
//! down around a test, running code or commands inside its namespaces, starting `cutls run` in
//! the box, nginx in the server, and moving bytes between client and server.
//!
//! Lab users share namespace names, so [`Lab::up`] takes an exclusive file lock first: tests in
//! one binary, in several binaries, and the benchmark run one at a time.
//!
//! Not supported: running without root (the namespaces need it), or two labs at once.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The lab's names and addresses, as `tools/lab env` prints them.
#[derive(Debug, Clone)]
pub struct LabEnv {
    pub client_ns: String,
    pub box_ns: String,
    pub server_ns: String,
    pub client_if: String,
    pub server_if: String,
    pub box_outside: String,
    pub box_inside: String,
    pub client_v4: IpAddr,
    pub client_v6: IpAddr,
    pub backends_v4: Vec<IpAddr>,
    pub backends_v6: Vec<IpAddr>,
    pub server_mac: [u8; 6],
    pub client_mac: [u8; 6],
    /// The impairment namespace and its interfaces (`tools/lab up --impair-side`): toward the
    /// box and toward the host, on the server and on the client side.
    pub impair_ns: String,
    pub impair_box_server_if: String,
    pub impair_server_if: String,
    pub impair_client_if: String,
    pub impair_box_client_if: String,
}

impl LabEnv {
    /// Parses the output of `tools/lab env`.
    pub fn parse(text: &str) -> io::Result<Self> {
        let mut values = HashMap::new();
        for line in text.lines() {
            if let Some((name, value)) = line.split_once('=') {
                if !name.contains(' ') {
                    values.insert(name.to_string(), value.trim_matches('"').to_string());
                }
            }
        }
        let get = |name: &str| -> io::Result<String> {
            values
                .get(name)
                .cloned()
                .ok_or_else(|| io::Error::other(format!("tools/lab env has no {name}")))
        };
        let address = |text: &str| -> io::Result<IpAddr> {
            text.parse()
                .map_err(|_| io::Error::other(format!("tools/lab env: bad address {text:?}")))
        };
        let addresses = |name: &str| -> io::Result<Vec<IpAddr>> {
            get(name)?.split_whitespace().map(address).collect()
        };
        Ok(LabEnv {
            client_ns: get("LAB_CLIENT_NS")?,
            box_ns: get("LAB_BOX_NS")?,
            server_ns: get("LAB_SERVER_NS")?,
            client_if: get("LAB_CLIENT_IF")?,
            server_if: get("LAB_SERVER_IF")?,
            box_outside: get("LAB_BOX_OUTSIDE")?,
            box_inside: get("LAB_BOX_INSIDE")?,
            client_v4: address(&get("LAB_CLIENT_V4")?)?,
            client_v6: address(&get("LAB_CLIENT_V6")?)?,
            backends_v4: addresses("LAB_BACKENDS_V4")?,
            backends_v6: addresses("LAB_BACKENDS_V6")?,
            server_mac: parse_mac(&get("LAB_SERVER_MAC")?)?,
            client_mac: parse_mac(&get("LAB_CLIENT_MAC")?)?,
            impair_ns: get("LAB_IMPAIR_NS")?,
            impair_box_server_if: get("LAB_IMPAIR_BOX_SERVER_IF")?,
            impair_server_if: get("LAB_IMPAIR_SERVER_IF")?,
            impair_client_if: get("LAB_IMPAIR_CLIENT_IF")?,
            impair_box_client_if: get("LAB_IMPAIR_BOX_CLIENT_IF")?,
        })
    }
}

fn parse_mac(text: &str) -> io::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return Err(io::Error::other(format!("bad MAC address {text:?}")));
    }
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16)
            .map_err(|_| io::Error::other(format!("bad MAC address {text:?}")))?;
    }
    Ok(mac)
}

/// The workspace root (where `tools/lab` and `Cargo.toml` live).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Whether this process may build a lab: root, and `CUTLS_SKIP_LAB` unset.
pub fn lab_allowed() -> Result<(), String> {
    if std::env::var_os("CUTLS_SKIP_LAB").is_some() {
        return Err("CUTLS_SKIP_LAB is set".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "the lab needs root (network namespaces); run as root or set CUTLS_SKIP_LAB=1".into(),
        );
    }
    Ok(())
}

/// Whether to run a lab test; panics (fails the test) if the lab cannot be built and no one
/// opted out with `CUTLS_SKIP_LAB=1`.
pub fn lab_enabled() -> bool {
    match lab_allowed() {
        Ok(()) => true,
        Err(reason) if std::env::var_os("CUTLS_SKIP_LAB").is_some() => {
            eprintln!("lab test skipped: {reason}");
            false
        }
        Err(reason) => panic!("{reason}"),
    }
}

/// A self-signed P-256 certificate for `host` (and `addresses` as IP names), valid one day,
/// written to `dir/cert.pem` and `dir/key.pem`; returns their paths.
pub fn self_signed_certificate(dir: &Path, host: &str, addresses: &[IpAddr]) -> io::Result<(PathBuf, PathBuf)> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let mut names = format!("subjectAltName=DNS:{host}");
    for address in addresses {
        names += &format!(",IP:{address}");
    }
    let output = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-subj", &format!("/CN={host}"), "-addext", &names])
        .stdin(Stdio::null())
        .output()?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "openssl req failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok((cert, key))
}

/// Runs `tools/lab` with `argument` and returns its standard output.
pub fn lab_script(argument: &str) -> io::Result<String> {
    lab_script_with(&[argument])
}

/// Runs `tools/lab` with `arguments` and returns its standard output.
pub fn lab_script_with(arguments: &[&str]) -> io::Result<String> {
    let output = Command::new(workspace_root().join("tools/lab"))
        .args(arguments)
        .output()?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "tools/lab {} failed ({}): {}",
            arguments.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// An exclusive lock on the lab, held while it lives.
#[derive(Debug)]
pub struct LabLock {
    _file: File,
}

impl LabLock {
    /// Waits for the lab lock.
    pub fn acquire() -> io::Result<Self> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/tmp/cutls-lab.lock")?;
        // SAFETY: flock on an open descriptor; blocks until the lock is ours.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(LabLock { _file: file })
    }
}

/// A lab brought up for one test: torn down (processes killed, namespaces deleted) on drop,
/// whether the test passed or panicked.
#[derive(Debug)]
pub struct Lab {
    pub env: LabEnv,
    _lock: LabLock,
}

impl Lab {
    /// Takes the lab lock, clears whatever a crashed run left, and brings the lab up fresh.
    pub fn up() -> io::Result<Self> {
        Self::up_impaired(None)
    }

    /// [`Lab::up`] with the impairment namespace on `side` ("server", "client" or "both"):
    /// nothing crosses that side until [`Impair::start`] runs the forwarder there.
    pub fn up_impaired(side: Option<&str>) -> io::Result<Self> {
        Self::up_with(side, 1)
    }

    /// [`Lab::up_impaired`] with `queues` transmit and receive queues on every veth (for
    /// several poll loops).
    pub fn up_with(side: Option<&str>, queues: usize) -> io::Result<Self> {
        let lock = LabLock::acquire()?;
        lab_script("down")?;
        let queues = queues.to_string();
        let mut arguments = vec!["up", "--queues", &queues];
        if let Some(side) = side {
            arguments.extend(["--impair-side", side]);
        }
        lab_script_with(&arguments)?;
        let env = LabEnv::parse(&lab_script("env")?)?;
        Ok(Lab { env, _lock: lock })
    }

    /// A command that runs `program` in namespace `ns`.
    pub fn command_in(&self, ns: &str, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns, program]);
        command
    }

    /// Runs `program args` in `ns` and returns its output (whatever its exit status).
    pub fn run_in(&self, ns: &str, program: &str, args: &[&str]) -> io::Result<Output> {
        self.command_in(ns, program)
            .args(args)
            .stdin(Stdio::null())
            .output()
    }

    /// Forgets what the client and server namespaces learnt about their neighbours. A probe
    /// made while the path was closed leaves ARP/NDP entries INCOMPLETE; if such an entry's
    /// last solicitation times out after the path has opened, the kernel fails whatever was
    /// queued on it with EHOSTUNREACH (seen as curl's "Couldn't connect" after a few ms).
    pub fn forget_neighbours(&self) -> io::Result<()> {
        for ns in [&self.env.client_ns, &self.env.server_ns] {
            for family in ["-4", "-6"] {
                let output = self.run_in(ns, "ip", &[family, "neigh", "flush", "all"])?;
                if !output.status.success() {
                    return Err(io::Error::other(format!(
                        "ip {family} neigh flush all in {ns}: {}",
                        String::from_utf8_lossy(&output.stderr).trim()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Whether `ping` from the client reaches `address` (`count` echoes, all must come back).
    pub fn ping(&self, address: IpAddr, count: u32) -> io::Result<bool> {
        let count = count.to_string();
        let address = address.to_string();
        let output = self.run_in(
            &self.env.client_ns,
            "ping",
            &["-c", &count, "-i", "0.2", "-W", "1", "-q", &address],
        )?;
        Ok(output.status.success())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(error) = lab_script("down") {
            eprintln!("lab: teardown failed: {error}");
        }
    }
}

/// Runs `work` on a thread that has entered network namespace `ns` (a network namespace is
/// per thread), so sockets it opens live in that namespace.
pub fn in_namespace<T, F>(ns: &str, work: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let path = format!("/run/netns/{ns}");
    let handle = thread::spawn(move || -> io::Result<T> {
        let namespace = File::open(&path)?;
        // SAFETY: setns with an open namespace descriptor changes only this thread's namespace.
        if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        work()
    });
    handle
        .join()
        .map_err(|_| io::Error::other(format!("thread in namespace {ns} panicked")))?
}

/// Builds the `cutls` binary in the profile this test was built with and returns its path.
pub fn cutls_binary() -> io::Result<PathBuf> {
    workspace_binary("cutls-tools", "cutls")
}

/// Builds the impairment forwarder (`cutls-impair`) the same way.
pub fn impair_binary() -> io::Result<PathBuf> {
    workspace_binary("cutls-impair", "cutls-impair")
}

/// Builds binary `bin` of workspace package `package` in the profile this test was built with
/// and returns its path.
pub fn workspace_binary(package: &str, bin: &str) -> io::Result<PathBuf> {
    // The test executable is target/<profile-dir>/deps/<name>; the binary goes to
    // target/<profile-dir>/cutls.
    let exe = std::env::current_exe()?;
    let profile_dir = exe.parent().and_then(Path::parent).ok_or_else(|| {
        io::Error::other(format!("unexpected test executable path {}", exe.display()))
    })?;
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| io::Error::other("no target directory"))?;
    let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(other) => other.to_string(),
        None => return Err(io::Error::other("no profile directory")),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            package,
            "--bin",
            bin,
            "--profile",
            &profile,
        ])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(workspace_root())
        .status()?;
    if !status.success() {
        return Err(io::Error::other(format!("building {bin} failed: {status}")));
    }
    Ok(profile_dir.join(bin))
}

/// The impairment forwarder running on one side of the lab (see `tools/lab`, `--impair-side`).
#[derive(Debug)]
pub struct Impair {
    child: Option<Child>,
    /// Kept open: the forwarder reports errors there.
    _stderr: BufReader<std::process::ChildStderr>,
    pub side: String,
}

/// What the forwarder did, per direction (`a_to_b`: from the box's side toward the host).
#[derive(Debug, Default, Clone)]
pub struct ImpairReport {
    pub toward_host: HashMap<String, u64>,
    pub toward_box: HashMap<String, u64>,
    pub text: String,
}

impl Impair {
    /// Starts `cutls-impair` on `side` ("server" or "client") with `spec` both ways.
    pub fn start(lab: &Lab, side: &str, spec: &str, seed: u64) -> io::Result<Impair> {
        let binary = impair_binary()?;
        let env = &lab.env;
        let (toward_box, toward_host) = match side {
            "server" => (&env.impair_box_server_if, &env.impair_server_if),
            "client" => (&env.impair_box_client_if, &env.impair_client_if),
            other => return Err(io::Error::other(format!("no impaired side {other:?}"))),
        };
        let mut child = lab
            .command_in(&env.impair_ns, &binary.display().to_string())
            .args(["--a", toward_box, "--b", toward_host, "--seed", &seed.to_string(), "--both", spec])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // Wait for "ready" on stderr, so that no frame crosses before the forwarder does.
        let stderr = child.stderr.take().ok_or_else(|| io::Error::other("no stderr"))?;
        let mut reader = BufReader::new(stderr);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if !line.contains("ready") {
            let _ = child.kill();
            return Err(io::Error::other(format!("cutls-impair did not start: {line}")));
        }
        Ok(Impair { child: Some(child), _stderr: reader, side: side.to_string() })
    }

    /// Stops the forwarder (the link is cut from then on) and returns its counters.
    pub fn stop(&mut self) -> io::Result<ImpairReport> {
        let Some(child) = self.child.take() else { return Ok(ImpairReport::default()) };
        // SAFETY: kill(2) on the pid of a child we own and have not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let output = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let mut report = ImpairReport { text: text.clone(), ..ImpairReport::default() };
        for line in text.lines() {
            let (direction, fields) = line.split_once(':').unwrap_or_default();
            let map = match direction {
                "a_to_b" => &mut report.toward_host,
                "b_to_a" => &mut report.toward_box,
                _ => continue,
            };
            for field in fields.split_whitespace() {
                if let Some((key, value)) = field.split_once('=') {
                    map.insert(key.to_string(), value.parse().unwrap_or(0));
                }
            }
        }
        Ok(report)
    }
}

impl Drop for Impair {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `cutls run` process in the box namespace.
#[derive(Debug)]
pub struct Cutls {
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
}

/// What `cutls run` printed when it was stopped.
#[derive(Debug)]
pub struct CutlsExit {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Cutls {
    /// Starts `cutls run --outside .. --inside .. args` in the box and waits for "cutls: ready".
    pub fn start(lab: &Lab, binary: &Path, args: &[&str]) -> io::Result<Self> {
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.env.box_ns])
            .arg(binary)
            .args([
                "run",
                "--outside",
                &lab.env.box_outside,
                "--inside",
                &lab.env.box_inside,
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        Self::adopt(child)
    }

    /// Takes over a `cutls run` spawned by the caller (with piped stdout and stderr) and waits
    /// for it to become ready.
    pub fn adopt(mut child: Child) -> io::Result<Self> {
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child
            .stderr
            .take()
            .ok_or_else(|| io::Error::other("no stderr pipe"))?;
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Ok(mut text) = sink.lock() {
                    text.push_str(&line);
                    text.push('\n');
                }
            }
        });
        let mut cutls = Cutls {
            child: Some(child),
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if cutls.stderr_text().contains("cutls: ready") {
                return Ok(cutls);
            }
            let exited = match cutls.child.as_mut() {
                Some(child) => child.try_wait()?.is_some(),
                None => true,
            };
            if exited || Instant::now() > deadline {
                let exit = cutls.stop()?;
                return Err(io::Error::other(format!(
                    "cutls run did not become ready: {}",
                    exit.stderr
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .map(|text| text.clone())
            .unwrap_or_default()
    }

    /// The process id (of cutls itself: `ip netns exec` execs it).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: libc::c_int) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill with a pid we spawned and have not reaped yet.
            unsafe { libc::kill(pid as libc::pid_t, signal) };
        }
    }

    /// Stops cutls with SIGTERM (SIGKILL after 10 s) and returns what it printed.
    pub fn stop(&mut self) -> io::Result<CutlsExit> {
        let Some(mut child) = self.child.take() else {
            return Err(io::Error::other("cutls already stopped"));
        };
        if let Some(pid) = Some(child.id()) {
            // SAFETY: as in `signal`.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                child.kill()?;
                break child.wait()?;
            }
            thread::sleep(Duration::from_millis(20));
        };
        let mut stdout = String::new();
        if let Some(mut pipe) = child.stdout.take() {
            pipe.read_to_string(&mut stdout)?;
        }
        // Give the reader thread a moment to drain the last lines.
        thread::sleep(Duration::from_millis(50));
        Ok(CutlsExit {
            success: status.success(),
            stdout,
            stderr: self.stderr_text(),
        })
    }

    /// Waits for the process to end on its own (after a signal the caller sent).
    pub fn wait(&mut self) -> io::Result<std::process::ExitStatus> {
        match self.child.take() {
            Some(mut child) => child.wait(),
            None => Err(io::Error::other("cutls already stopped")),
        }
    }
}

impl Drop for Cutls {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A deterministic pseudo-random byte stream (xorshift64*), so that both ends of a transfer can
/// agree on content without storing it.
#[derive(Debug, Clone)]
pub struct ByteStream {
    state: u64,
}

impl ByteStream {
    pub fn new(seed: u64) -> Self {
        ByteStream { state: seed | 1 }
    }

    /// Fills `buffer` with the next bytes of the stream.
    pub fn fill(&mut self, buffer: &mut [u8]) {
        for chunk in buffer.chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let value = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&value[..chunk.len()]);
        }
    }
}

/// The result of [`tcp_transfer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub sent_sha256: Vec<u8>,
    pub received_sha256: Vec<u8>,
    pub received_bytes: u64,
    pub elapsed: Duration,
}

/// Sends `bytes` pseudo-random bytes over TCP from the client namespace to `server` (an address
/// in the server namespace), and hashes both ends. Fails if the connection cannot be made within
/// `connect_timeout` or the transfer stalls for `stall_timeout`.
pub fn tcp_transfer(
    lab: &Lab,
    server: SocketAddr,
    bytes: u64,
    connect_timeout: Duration,
    stall_timeout: Duration,
) -> io::Result<Transfer> {
    let listener = in_namespace(&lab.env.server_ns, move || {
        let listener = TcpListener::bind(server)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })?;
    let accept_deadline = Instant::now() + connect_timeout + Duration::from_secs(1);
    let receiver = thread::spawn(move || -> io::Result<(Vec<u8>, u64)> {
        let (mut stream, _) = loop {
            match listener.accept() {
                Ok(accepted) => break accepted,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() > accept_deadline {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no connection arrived",
                        ));
                    }
                    thread::sleep(Duration::from_millis(10));
                }
                Err(error) => return Err(error),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(stall_timeout))?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let read = stream.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
            total += read as u64;
        }
        Ok((hasher.finalize().to_vec(), total))
    });
    let started = Instant::now();
    let sent = in_namespace(&lab.env.client_ns, move || -> io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect_timeout(&server, connect_timeout)?;
        stream.set_write_timeout(Some(stall_timeout))?;
        let mut source = ByteStream::new(0x5eed_0000_c0de_0001);
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 256 * 1024];
        let mut left = bytes;
        while left > 0 {
            let chunk = left.min(buffer.len() as u64) as usize;
            source.fill(&mut buffer[..chunk]);
            stream.write_all(&buffer[..chunk])?;
            hasher.update(&buffer[..chunk]);
            left -= chunk as u64;
        }
        stream.shutdown(std::net::Shutdown::Write)?;
        // Wait for the receiver to close, so the elapsed time covers delivery.
        let mut sink = [0u8; 1];
        stream.set_read_timeout(Some(stall_timeout))?;
        let _ = stream.read(&mut sink);
        Ok(hasher.finalize().to_vec())
    });
    let received = receiver
        .join()
        .map_err(|_| io::Error::other("receiver panicked"))?;
    let sent = sent?;
    let (received_sha256, received_bytes) = received?;
    Ok(Transfer {
        sent_sha256: sent,
        received_sha256,
        received_bytes,
        elapsed: started.elapsed(),
    })
}

/// nginx serving a directory over TLS on one backend address, in the server namespace.
#[derive(Debug)]
pub struct Nginx {
    child: Option<Child>,
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub host_name: String,
}

impl Nginx {
    /// Makes a self-signed certificate for `host_name`, writes `files` into the web root and
    /// starts nginx on `address`:443 (and `address_v6`:443), waiting until it accepts.
    pub fn start(
        lab: &Lab,
        address: IpAddr,
        address_v6: IpAddr,
        host_name: &str,
        files: &[(&str, &[u8])],
    ) -> io::Result<Self> {
        let dir = std::env::temp_dir().join(format!("cutls-lab-nginx-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("www"))?;
        fs::create_dir_all(dir.join("tmp"))?;
        for (name, content) in files {
            fs::write(dir.join("www").join(name), content)?;
        }
        let (cert, key) = self_signed_certificate(&dir, host_name, &[])?;
        let d = dir.display();
        let (cert_path, key_path) = (cert.display(), key.display());
        let config = [
            "user root;".to_string(),
            "worker_processes 1;".into(),
            format!("pid {d}/nginx.pid;"),
            format!("error_log {d}/error.log;"),
            "events { worker_connections 64; }".into(),
            "http {".into(),
            "  access_log off;".into(),
            format!("  client_body_temp_path {d}/tmp/body;"),
            format!("  proxy_temp_path {d}/tmp/proxy;"),
            format!("  fastcgi_temp_path {d}/tmp/fastcgi;"),
            format!("  uwsgi_temp_path {d}/tmp/uwsgi;"),
            format!("  scgi_temp_path {d}/tmp/scgi;"),
            "  server {".into(),
            format!("    listen {address}:443 ssl;"),
            format!("    listen [{address_v6}]:443 ssl;"),
            format!("    server_name {host_name};"),
            format!("    ssl_certificate {cert_path};"),
            format!("    ssl_certificate_key {key_path};"),
            format!("    root {d}/www;"),
            "  }".into(),
            "}".into(),
        ]
        .join("\n");
        let config_path = dir.join("nginx.conf");
        fs::write(&config_path, config)?;
        let child = lab
            .command_in(&lab.env.server_ns, "nginx")
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&config_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut nginx = Nginx {
            child: Some(child),
            dir,
            cert,
            host_name: host_name.to_string(),
        };
        let target = SocketAddr::new(address, 443);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let accepted = in_namespace(&lab.env.server_ns, move || {
                TcpStream::connect_timeout(&target, Duration::from_millis(200)).map(drop)
            });
            if accepted.is_ok() {
                return Ok(nginx);
            }
            let exited = match nginx.child.as_mut() {
                Some(child) => child.try_wait()?.is_some(),
                None => true,
            };
            if exited || Instant::now() > deadline {
                let log = fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default();
                return Err(io::Error::other(format!("nginx did not start: {log}")));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Downloads `https://host_name/path` from the client with curl, pinned to `address`.
    /// Returns the body, or the curl error text.
    pub fn curl(
        &self,
        lab: &Lab,
        address: IpAddr,
        path: &str,
        max_time: Duration,
    ) -> io::Result<Result<Vec<u8>, String>> {
        let pinned = match address {
            IpAddr::V4(v4) => format!("{}:443:{v4}", self.host_name),
            IpAddr::V6(v6) => format!("{}:443:[{v6}]", self.host_name),
        };
        let output = lab
            .command_in(&lab.env.client_ns, "curl")
            .args([
                "--silent",
                "--show-error",
                "--fail",
                "--connect-timeout",
                "2",
            ])
            .args(["--max-time", &max_time.as_secs().max(1).to_string()])
            .arg("--cacert")
            .arg(&self.cert)
            .args([
                "--resolve",
                &pinned,
                &format!("https://{}/{path}", self.host_name),
            ])
            .stdin(Stdio::null())
            .output()?;
        if output.status.success() {
            Ok(Ok(output.stdout))
        } else {
            Ok(Err(String::from_utf8_lossy(&output.stderr)
                .trim()
                .to_string()))
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGQUIT: nginx's graceful stop; the lab teardown kills anything left.
            // SAFETY: kill with a pid we spawned and have not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGQUIT) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Packet counters of one interface, from the kernel.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InterfaceCounters {
    pub rx_packets: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
}

/// Reads the counters of `interface` in namespace `ns` (from that namespace's /proc/net/dev).
pub fn interface_counters(ns: &str, interface: &str) -> io::Result<InterfaceCounters> {
    let interface = interface.to_string();
    in_namespace(ns, move || {
        // thread-self: the namespace of this thread, which `in_namespace` switched.
        let text = fs::read_to_string("/proc/thread-self/net/dev")?;
        parse_net_dev(&text, &interface)
    })
}

fn parse_net_dev(text: &str, interface: &str) -> io::Result<InterfaceCounters> {
    for line in text.lines() {
        let Some((name, numbers)) = line.split_once(':') else {
            continue;
        };
        if name.trim() != interface {
            continue;
        }
        let fields: Vec<u64> = numbers
            .split_whitespace()
            .filter_map(|field| field.parse().ok())
            .collect();
        // Receive: bytes packets errs drop fifo frame compressed multicast; then transmit.
        if fields.len() < 10 {
            break;
        }
        return Ok(InterfaceCounters {
            rx_packets: fields[1],
            rx_dropped: fields[3],
            tx_packets: fields[9],
        });
    }
    Err(io::Error::other(format!(
        "{interface}: not in /proc/net/dev"
    )))
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_output_parses() {
        let text = [
            "LAB_CLIENT_NS=cutls-c",
            "LAB_BOX_NS=cutls-box",
            "LAB_SERVER_NS=cutls-s",
            "LAB_CLIENT_IF=c0",
            "LAB_SERVER_IF=s0",
            "LAB_BOX_OUTSIDE=outside",
            "LAB_BOX_INSIDE=inside",
            "LAB_CLIENT_V4=198.18.0.10",
            "LAB_CLIENT_V6=2001:db8::10",
            "LAB_CLIENT_MAC=02:00:c6:12:00:0a",
            "LAB_SERVER_MAC=02:00:c6:12:00:15",
            "LAB_BACKENDS_V4=\"198.18.0.21 198.18.0.22\"",
            "LAB_BACKENDS_V6=\"2001:db8::21\"",
            "LAB_IMPAIR_NS=cutls-imp",
            "LAB_IMPAIR_BOX_SERVER_IF=imp-box-s",
            "LAB_IMPAIR_SERVER_IF=imp-srv",
            "LAB_IMPAIR_CLIENT_IF=imp-cli",
            "LAB_IMPAIR_BOX_CLIENT_IF=imp-box-c",
            "export LAB_CLIENT_NS LAB_BOX_NS",
        ]
        .join("\n");
        let env = LabEnv::parse(&text).unwrap();
        assert_eq!(env.box_ns, "cutls-box");
        assert_eq!(env.backends_v4.len(), 2);
        assert_eq!(env.backends_v6[0].to_string(), "2001:db8::21");
        assert_eq!(env.server_mac, [2, 0, 0xc6, 0x12, 0, 0x15]);
        assert_eq!((env.impair_ns.as_str(), env.impair_server_if.as_str()), ("cutls-imp", "imp-srv"));
        assert!(LabEnv::parse("LAB_CLIENT_NS=x\n").is_err());
    }

    #[test]
    fn net_dev_counters_parse() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
                    face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n\
                    \x20   s0: 1000      10    0    2    0     0          0         0     5000      50    0    0    0     0       0          0\n";
        let counters = parse_net_dev(text, "s0").unwrap();
        assert_eq!(
            counters,
            InterfaceCounters {
                rx_packets: 10,
                rx_dropped: 2,
                tx_packets: 50
            }
        );
        assert!(parse_net_dev(text, "c0").is_err());
    }

    #[test]
    fn byte_stream_is_deterministic() {
        let mut a = ByteStream::new(7);
        let mut b = ByteStream::new(7);
        let mut first = [0u8; 21];
        let mut second = [0u8; 21];
        a.fill(&mut first);
        b.fill(&mut second);
        assert_eq!(first, second);
        a.fill(&mut first);
        assert_ne!(first, second, "the stream moves on");
    }
}
