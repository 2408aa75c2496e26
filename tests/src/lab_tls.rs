//! Helpers for the TLS termination lab tests (`tests/tests/lab_tls.rs`, issue 5): the lab with
//! nginx backends speaking plain HTTP, `cutls run --config` terminating TLS for the VIPs, and
//! real clients (curl, openssl s_client, Python `ssl`, h2load) in the client namespace.
//!
//! [`TlsLab::up`] builds everything one test needs:
//!
//! - a self-signed ECDSA P-256 certificate for [`HOST`] (and the VIP addresses);
//! - a web root of generated files, one per size in [`DOWNLOAD_SIZES`], named `f<size>`, each
//!   the [`ByteStream`] seeded with its size (so the 100 MiB one costs a fraction of a second);
//! - nginx on every backend address (IPv4 and IPv6): HTTP/1.1 on ports 80 and 82, h2c (HTTP/2
//!   with prior knowledge, what a TLS-terminating proxy that negotiated `h2` sends) on 81 and
//!   83, WebDAV `PUT` under `/up/` (uploads land in `www/up/`, to be hashed), `/slow/`
//!   rate-limited (for concurrency that really overlaps), and an access log of the client
//!   addresses;
//! - cutls with the [`standard_listeners`]: both hold-back modes, HTTP/1.1 and h2, IPv4 and
//!   IPv6, each with a pool of its own backend port (see [`Pool`]), and pools of
//!   [`RecordingBackend`]s (which a test starts) that keep every byte they receive.
//!
//! Every client helper counts the TCP connections it made, so that [`TlsLab::finish`] can stop
//! cutls (SIGINT) and compare its `handshakes_completed` with them, and check that no session is
//! left open and no tag failed. A client failure stops cutls first and shows its counters
//! ([`TlsLab::fail`]). `CUTLS_LAB_CAPTURE=DIR` captures both veths (see `start_captures`).

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::lab::{cutls_binary, in_namespace, lab_script, self_signed_certificate, ByteStream, Cutls, Lab};

/// The name the certificate is for; clients pin it to a VIP (`curl --resolve`).
pub const HOST: &str = "cutls.test";
/// Sizes of the generated files the backends serve.
pub const DOWNLOAD_SIZES: [u64; 7] = [0, 1, 1447, 1448, 16 * 1024, 1 << 20, 100 << 20];
/// Upload sizes of the suite matrix (100 MiB is uploaded once per listener, separately).
pub const UPLOAD_SIZES: [u64; 5] = [0, 1, 1448, 16 * 1024, 1 << 20];
pub const MIB_100: u64 = 100 << 20;
/// Ports of the recording backends (one pool each).
pub const RECORDING_PORTS: [u16; 2] = [9000, 9001];

pub use crate::lab::lab_enabled;

/// A protocol version a client is forced to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    /// As OpenSSL (curl -v, Python `version()`) names it.
    pub fn name(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "TLSv1.2",
            TlsVersion::Tls13 => "TLSv1.3",
        }
    }
}

/// A cipher suite, by its OpenSSL name (which is also the IANA name for TLS 1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Suite {
    pub version: TlsVersion,
    pub name: &'static str,
}

/// TLS 1.2 and 1.3 x AES-128-GCM, AES-256-GCM, CHACHA20-POLY1305 (ECDSA: the certificate is P-256).
pub const SUITES: [Suite; 6] = [
    Suite {
        version: TlsVersion::Tls13,
        name: "TLS_AES_128_GCM_SHA256",
    },
    Suite {
        version: TlsVersion::Tls13,
        name: "TLS_AES_256_GCM_SHA384",
    },
    Suite {
        version: TlsVersion::Tls13,
        name: "TLS_CHACHA20_POLY1305_SHA256",
    },
    Suite {
        version: TlsVersion::Tls12,
        name: "ECDHE-ECDSA-AES128-GCM-SHA256",
    },
    Suite {
        version: TlsVersion::Tls12,
        name: "ECDHE-ECDSA-AES256-GCM-SHA384",
    },
    Suite {
        version: TlsVersion::Tls12,
        name: "ECDHE-ECDSA-CHACHA20-POLY1305",
    },
];

impl Suite {
    /// curl options that force this version and suite.
    pub fn curl_args(&self) -> Vec<String> {
        match self.version {
            TlsVersion::Tls13 => vec![
                "--tlsv1.3".into(),
                "--tls13-ciphers".into(),
                self.name.into(),
            ],
            TlsVersion::Tls12 => vec![
                "--tlsv1.2".into(),
                "--tls-max".into(),
                "1.2".into(),
                "--ciphers".into(),
                self.name.into(),
            ],
        }
    }

    /// openssl s_client options that force this version and suite.
    pub fn openssl_args(&self) -> Vec<String> {
        match self.version {
            TlsVersion::Tls13 => vec!["-tls1_3".into(), "-ciphersuites".into(), self.name.into()],
            TlsVersion::Tls12 => vec!["-tls1_2".into(), "-cipher".into(), self.name.into()],
        }
    }

    /// What curl -v prints once connected: "SSL connection using TLSv1.3 / TLS_AES_128_GCM_SHA256".
    pub fn curl_banner(&self) -> String {
        format!(
            "SSL connection using {} / {}",
            self.version.name(),
            self.name
        )
    }
}

/// How a listener holds back plaintext.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldBack {
    CutThrough,
    VerifyFirst,
}

impl HoldBack {
    pub fn config_name(self) -> &'static str {
        match self {
            HoldBack::CutThrough => "cut-through",
            HoldBack::VerifyFirst => "verify-first",
        }
    }
}

/// A backend pool of the configuration: every IPv4 (or IPv6) backend address, one port.
///
/// Each listener of [`standard_listeners`] has a pool of its own backend port (but
/// [`ports::H1_SHARED`]), so that in transparent mode two client connections from one client
/// port through two listeners never make the same backend 4-tuple (that case has its own tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    pub name: &'static str,
    pub v6: bool,
    pub port: u16,
    /// Spliced as plain TCP, never terminated.
    pub passthrough: bool,
    /// `balance` in the configuration, if set.
    pub balance: Option<&'static str>,
    /// The body of its `[pool.health]` table, if it is checked.
    pub health: Option<&'static str>,
}

/// The backend ports: nginx HTTP/1.1 on 80 and 82, h2c on 81 and 83 (IPv4 and IPv6); the
/// recording backends on [`RECORDING_PORTS`] (IPv4).
pub mod pools {
    use super::Pool;

    pub const WEB: Pool = Pool {
        name: "web",
        v6: false,
        port: 80,
        passthrough: false,
        balance: None,
        health: None,
    };
    pub const WEB_VERIFY_FIRST: Pool = Pool {
        name: "web-vf",
        v6: false,
        port: 82,
        passthrough: false,
        balance: None,
        health: None,
    };
    pub const WEB6: Pool = Pool {
        name: "web6",
        v6: true,
        port: 80,
        passthrough: false,
        balance: None,
        health: None,
    };
    pub const WEB6_VERIFY_FIRST: Pool = Pool {
        name: "web6-vf",
        v6: true,
        port: 82,
        passthrough: false,
        balance: None,
        health: None,
    };
    pub const H2C: Pool = Pool {
        name: "h2c",
        v6: false,
        port: 81,
        passthrough: false,
        balance: None,
        health: None,
    };
    pub const H2C_VERIFY_FIRST: Pool = Pool {
        name: "h2c-vf",
        v6: false,
        port: 83,
        passthrough: false,
        balance: None,
        health: None,
    };
    pub const RECORDING: Pool = Pool {
        name: "recording",
        v6: false,
        port: 9000,
        passthrough: false,
        balance: None,
        health: None,
    };
    pub const RECORDING_VERIFY_FIRST: Pool = Pool {
        name: "recording-vf",
        v6: false,
        port: 9001,
        passthrough: false,
        balance: None,
        health: None,
    };
    /// Passthrough: nginx's plain HTTP/1.1 port.
    pub const PLAIN: Pool = Pool {
        name: "plain",
        v6: false,
        port: 80,
        passthrough: true,
        balance: None,
        health: None,
    };
    /// Passthrough: nginx terminating TLS itself (port 8443, its own certificate).
    pub const BACKEND_TLS: Pool = Pool {
        name: "backend-tls",
        v6: false,
        port: 8443,
        passthrough: true,
        balance: None,
        health: None,
    };
    /// The balancing test's backends (tests/tests/lab_control.rs), round robin ...
    pub const BALANCE_ROUND_ROBIN: Pool = Pool {
        name: "balance-rr",
        v6: false,
        port: 9100,
        passthrough: false,
        balance: Some("round-robin"),
        health: None,
    };
    /// ... and the same backends by least sessions.
    pub const BALANCE_LEAST_SESSIONS: Pool = Pool {
        name: "balance-least",
        v6: false,
        port: 9100,
        passthrough: false,
        balance: Some("least-sessions"),
        health: None,
    };
    /// ... and by least load.
    pub const BALANCE_LEAST_LOAD: Pool = Pool {
        name: "balance-load",
        v6: false,
        port: 9100,
        passthrough: false,
        balance: Some("least-load"),
        health: None,
    };
    /// The health check test's backends (port 9110, which that test serves), checked over
    /// HTTP twice a second.
    pub const HEALTH_CHECKED: Pool = Pool {
        name: "health-checked",
        v6: false,
        port: 9110,
        passthrough: false,
        balance: Some("round-robin"),
        health: Some("interval_ms = 500\ntimeout_ms = 300\nrise = 2\nfall = 2\nhttp_path = \"/health\"\nhttp_status = 200\nagent_port = 9111\n"),
    };
    pub const ALL: [Pool; 14] = [
        WEB,
        WEB_VERIFY_FIRST,
        WEB6,
        WEB6_VERIFY_FIRST,
        H2C,
        H2C_VERIFY_FIRST,
        RECORDING,
        RECORDING_VERIFY_FIRST,
        PLAIN,
        BACKEND_TLS,
        BALANCE_ROUND_ROBIN,
        BALANCE_LEAST_SESSIONS,
        BALANCE_LEAST_LOAD,
        HEALTH_CHECKED,
    ];
}

/// One listener of the configuration.
#[derive(Clone, Debug)]
pub struct ListenerSpec {
    pub vip: SocketAddr,
    pub pool: Pool,
    pub hold_back: HoldBack,
    pub alpn: Vec<&'static str>,
    /// Where first flights that are not a ClientHello, and SNI names other than [`HOST`], go.
    pub passthrough_pool: Option<Pool>,
}

/// The VIP ports of [`standard_listeners`].
pub mod ports {
    /// HTTP/1.1, cut-through.
    pub const H1: u16 = 443;
    /// HTTP/1.1, verify-first.
    pub const H1_VERIFY_FIRST: u16 = 444;
    /// HTTP/1.1, cut-through, IPv4 only, sharing the pool (the backend port) of [`H1`].
    pub const H1_SHARED: u16 = 445;
    /// h2 only, cut-through.
    pub const H2: u16 = 8443;
    /// h2 only, verify-first.
    pub const H2_VERIFY_FIRST: u16 = 8444;
    /// No ALPN, the recording backends, cut-through.
    pub const RECORDING: u16 = 9443;
    /// No ALPN, the recording backends, verify-first.
    pub const RECORDING_VERIFY_FIRST: u16 = 9444;
    /// A passthrough pool's listener: plain HTTP to nginx, nothing terminated.
    pub const PLAIN: u16 = 8080;
    /// HTTP/1.1 for [`super::HOST`], cut-through; other SNI names and first flights that are
    /// not a ClientHello pass through to nginx's own TLS port.
    pub const MIXED: u16 = 446;
    /// The balancing test's backends (port 9100, which that test serves), round robin.
    pub const BALANCE_ROUND_ROBIN: u16 = 9501;
    /// The same backends, least sessions.
    pub const BALANCE_LEAST_SESSIONS: u16 = 9502;
    /// The same backends, least load.
    pub const BALANCE_LEAST_LOAD: u16 = 9503;
    /// The health check test's backends (port 9110).
    pub const HEALTH_CHECKED: u16 = 9504;
}

/// The listener port for HTTP/1.1 in `mode`.
pub fn h1_port(mode: HoldBack) -> u16 {
    match mode {
        HoldBack::CutThrough => ports::H1,
        HoldBack::VerifyFirst => ports::H1_VERIFY_FIRST,
    }
}

/// The listener port for h2 in `mode`.
pub fn h2_port(mode: HoldBack) -> u16 {
    match mode {
        HoldBack::CutThrough => ports::H2,
        HoldBack::VerifyFirst => ports::H2_VERIFY_FIRST,
    }
}

/// The listener port for the recording backends in `mode`.
pub fn recording_port(mode: HoldBack) -> u16 {
    match mode {
        HoldBack::CutThrough => ports::RECORDING,
        HoldBack::VerifyFirst => ports::RECORDING_VERIFY_FIRST,
    }
}

/// Every listener the tests use, on the lab's VIPs: for each hold-back mode, HTTP/1.1 on IPv4
/// and IPv6, h2 on IPv4 (the backend speaks h2c) and the recording backends (no ALPN); and
/// [`ports::H1_SHARED`].
pub fn standard_listeners(vip_v4: IpAddr, vip_v6: IpAddr) -> Vec<ListenerSpec> {
    let mut listeners = Vec::new();
    for mode in [HoldBack::CutThrough, HoldBack::VerifyFirst] {
        let cut_through = mode == HoldBack::CutThrough;
        let pick = |ct: Pool, vf: Pool| if cut_through { ct } else { vf };
        listeners.push(ListenerSpec {
            vip: SocketAddr::new(vip_v4, h1_port(mode)),
            pool: pick(pools::WEB, pools::WEB_VERIFY_FIRST),
            hold_back: mode,
            alpn: vec!["http/1.1"],
            passthrough_pool: None,
        });
        listeners.push(ListenerSpec {
            vip: SocketAddr::new(vip_v6, h1_port(mode)),
            pool: pick(pools::WEB6, pools::WEB6_VERIFY_FIRST),
            hold_back: mode,
            alpn: vec!["http/1.1"],
            passthrough_pool: None,
        });
        listeners.push(ListenerSpec {
            vip: SocketAddr::new(vip_v4, h2_port(mode)),
            pool: pick(pools::H2C, pools::H2C_VERIFY_FIRST),
            hold_back: mode,
            alpn: vec!["h2"],
            passthrough_pool: None,
        });
        listeners.push(ListenerSpec {
            vip: SocketAddr::new(vip_v4, recording_port(mode)),
            pool: pick(pools::RECORDING, pools::RECORDING_VERIFY_FIRST),
            hold_back: mode,
            alpn: vec![],
            passthrough_pool: None,
        });
    }
    listeners.push(ListenerSpec {
        vip: SocketAddr::new(vip_v4, ports::H1_SHARED),
        pool: pools::WEB,
        hold_back: HoldBack::CutThrough,
        alpn: vec!["http/1.1"],
        passthrough_pool: None,
    });
    listeners.push(ListenerSpec {
        vip: SocketAddr::new(vip_v4, ports::PLAIN),
        pool: pools::PLAIN,
        hold_back: HoldBack::CutThrough,
        alpn: vec![],
        passthrough_pool: None,
    });
    listeners.push(ListenerSpec {
        vip: SocketAddr::new(vip_v4, ports::MIXED),
        pool: pools::WEB,
        hold_back: HoldBack::CutThrough,
        alpn: vec!["http/1.1"],
        passthrough_pool: Some(pools::BACKEND_TLS),
    });
    for (port, pool) in [(ports::BALANCE_ROUND_ROBIN, pools::BALANCE_ROUND_ROBIN), (ports::BALANCE_LEAST_SESSIONS, pools::BALANCE_LEAST_SESSIONS), (ports::BALANCE_LEAST_LOAD, pools::BALANCE_LEAST_LOAD), (ports::HEALTH_CHECKED, pools::HEALTH_CHECKED)] {
        listeners.push(ListenerSpec {
            vip: SocketAddr::new(vip_v4, port),
            pool,
            hold_back: HoldBack::CutThrough,
            alpn: vec!["http/1.1"],
            passthrough_pool: None,
        });
    }
    listeners
}

/// How cutls addresses the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressMode {
    Transparent,
    Snat(IpAddr),
}

/// What a test asks of [`TlsLab::up`].
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    /// `io` in the configuration: "xdp", "xdp-generic" or "packet".
    pub io: &'static str,
    pub mode: AddressMode,
    /// Bring the lab up with the impairment namespace on this side ("server", "client",
    /// "both"); the test starts the forwarder ([`crate::lab::Impair`]).
    pub impair_side: Option<&'static str>,
    /// Poll loops (`cores` in the configuration), on veths with as many queues.
    pub loops: usize,
}

impl Setup {
    pub fn io(io: &'static str) -> Setup {
        Setup {
            io,
            mode: AddressMode::Transparent,
            impair_side: None,
            loops: 1,
        }
    }
}

/// A file in the web root.
#[derive(Clone, Debug)]
pub struct WebFile {
    pub size: u64,
    pub sha256: Vec<u8>,
}

/// Path of the generated file of `size` bytes, as served.
pub fn file_path(size: u64) -> String {
    format!("/f{size}")
}

/// Writes `size` bytes of the stream seeded with `seed` to `path`; returns their SHA-256.
pub fn write_generated(path: &Path, size: u64, seed: u64) -> io::Result<Vec<u8>> {
    let mut file = BufWriter::new(File::create(path)?);
    let mut stream = ByteStream::new(seed);
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let chunk = left.min(buffer.len() as u64) as usize;
        stream.fill(&mut buffer[..chunk]);
        hasher.update(&buffer[..chunk]);
        file.write_all(&buffer[..chunk])?;
        left -= chunk as u64;
    }
    file.flush()?;
    Ok(hasher.finalize().to_vec())
}

/// `size` bytes of the stream seeded with `seed`.
pub fn generated(size: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; size];
    ByteStream::new(seed).fill(&mut data);
    data
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> io::Result<(u64, Vec<u8>)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        total += read as u64;
    }
    Ok((total, hasher.finalize().to_vec()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Temporary directory removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// nginx on the backends: plain HTTP/1.1 on :80, h2c on :81, PUT under /up/.
#[derive(Debug)]
pub struct Web {
    child: Option<Child>,
    pub root: PathBuf,
    pub log_dir: PathBuf,
    pub files: BTreeMap<u64, WebFile>,
}

impl Web {
    fn start(lab: &Lab, dir: &Path) -> io::Result<Web> {
        let root = dir.join("www");
        let log_dir = dir.join("nginx");
        fs::create_dir_all(root.join("up"))?;
        fs::create_dir_all(log_dir.join("body"))?;
        let mut files = BTreeMap::new();
        for size in DOWNLOAD_SIZES {
            let sha256 = write_generated(&root.join(&file_path(size)[1..]), size, size)?;
            files.insert(size, WebFile { size, sha256 });
        }
        let mut listen = String::new();
        for address in &lab.env.backends_v4 {
            for port in [80, 82] {
                listen += &format!(
                    "    listen {address}:{port};\n    listen {address}:{} http2;\n",
                    port + 1
                );
            }
        }
        for address in &lab.env.backends_v6 {
            for port in [80, 82] {
                listen += &format!(
                    "    listen [{address}]:{port};\n    listen [{address}]:{} http2;\n",
                    port + 1
                );
            }
        }
        // The backends' own TLS (for passthrough pools), with the lab certificate.
        let tls_listen: String = lab
            .env
            .backends_v4
            .iter()
            .map(|address| format!("    listen {address}:8443 ssl;\n"))
            .collect();
        let (r, l, d) = (root.display(), log_dir.display(), dir.display());
        let config = format!(
            "user root;
worker_processes 1;
pid {l}/nginx.pid;
error_log {l}/error.log;
events {{ worker_connections 4096; }}
http {{
  log_format lab '$remote_addr $server_port \"$request\" $status $body_bytes_sent';
  access_log {l}/access.log lab;
  client_body_temp_path {l}/body;
  proxy_temp_path {l}/tmp; fastcgi_temp_path {l}/tmp; uwsgi_temp_path {l}/tmp; scgi_temp_path {l}/tmp;
  client_max_body_size 200m;
  keepalive_requests 100000;
  keepalive_timeout 60s;
  http2_max_requests 100000;
  server {{
{listen}    root {r};
    location /up/ {{ dav_methods PUT; create_full_put_path on; }}
    location /slow/ {{ alias {r}/; limit_rate 512k; }}
  }}
  server {{
{tls_listen}    ssl_certificate {d}/cert.pem;
    ssl_certificate_key {d}/key.pem;
    root {r};
    add_header X-Backend-TLS yes always;
  }}
}}
"
        );
        let config_path = dir.join("nginx.conf");
        fs::write(&config_path, config)?;
        let child = lab
            .command_in(&lab.env.server_ns, "nginx")
            .arg("-e")
            .arg(log_dir.join("error.log"))
            .arg("-c")
            .arg(&config_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut web = Web {
            child: Some(child),
            root,
            log_dir,
            files,
        };
        let targets: Vec<SocketAddr> = vec![
            SocketAddr::new(lab.env.backends_v4[0], 80),
            SocketAddr::new(lab.env.backends_v4[0], 81),
            SocketAddr::new(lab.env.backends_v6[0], 80),
        ];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let all = targets.clone();
            let up = in_namespace(&lab.env.server_ns, move || {
                for target in all {
                    TcpStream::connect_timeout(&target, Duration::from_millis(200))?;
                }
                Ok(())
            });
            if up.is_ok() {
                return Ok(web);
            }
            let exited = match web.child.as_mut() {
                Some(child) => child.try_wait()?.is_some(),
                None => true,
            };
            if exited || Instant::now() > deadline {
                let log = fs::read_to_string(web.log_dir.join("error.log")).unwrap_or_default();
                return Err(io::Error::other(format!("nginx did not start: {log}")));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The generated file of `size` bytes.
    pub fn file(&self, size: u64) -> &WebFile {
        self.files
            .get(&size)
            .unwrap_or_else(|| panic!("no generated file of {size} bytes"))
    }

    /// Where an upload to `/up/<name>` lands.
    pub fn uploaded(&self, name: &str) -> PathBuf {
        self.root.join("up").join(name)
    }

    /// nginx's access log: `client-address server-port "request" status bytes` per line.
    pub fn access_log(&self) -> String {
        fs::read_to_string(self.log_dir.join("access.log")).unwrap_or_default()
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
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
    }
}

/// What one connection to a [`RecordingBackend`] delivered.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub peer: SocketAddr,
    /// Every byte the backend read, until the client's end of stream.
    pub bytes: Vec<u8>,
    /// Whether the stream ended with a FIN (false: reset or stall).
    pub clean_end: bool,
}

/// A TCP server on the backend addresses that keeps every byte it receives.
///
/// Protocol (HTTP-shaped, so that any client can drive it): the request is a header block ending
/// in an empty line, with `Content-Length: N` and a request target `/respond/M`; after the N
/// body bytes the server answers `HTTP/1.1 200 OK` with `Content-Length: M` and the M bytes of
/// [`response_body`]`(M)`, then shuts down its sending side and reads on until the client's
/// end of stream.
#[derive(Debug)]
pub struct RecordingBackend {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub received: Arc<Mutex<Vec<Recorded>>>,
}

/// The response body of the recording backend for `/respond/<size>`.
pub fn response_body(size: usize) -> Vec<u8> {
    generated(size, 0xb0d1_0000 + size as u64)
}

/// The request a client sends to the recording backend.
pub fn recording_request(body: &[u8], response_size: usize) -> Vec<u8> {
    let mut request = format!(
        "PUT /respond/{response_size} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

impl RecordingBackend {
    /// Listens on every address and port (and records every connection in one list).
    pub fn start(lab: &Lab, addresses: &[IpAddr], ports: &[u16]) -> io::Result<RecordingBackend> {
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        let targets = addresses.iter().flat_map(|&address| {
            ports
                .iter()
                .map(move |&port| SocketAddr::new(address, port))
        });
        for target in targets {
            let listener = in_namespace(&lab.env.server_ns, move || {
                let listener = TcpListener::bind(target)?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            })?;
            let stop = Arc::clone(&stop);
            let received = Arc::clone(&received);
            threads.push(thread::spawn(move || {
                let mut workers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, peer)) => {
                            let received = Arc::clone(&received);
                            workers.push(thread::spawn(move || {
                                let recorded = serve_recording(stream, peer);
                                if let Ok(mut all) = received.lock() {
                                    all.push(recorded);
                                }
                            }));
                        }
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
                for worker in workers {
                    let _ = worker.join();
                }
            }));
        }
        Ok(RecordingBackend {
            stop,
            threads,
            received,
        })
    }

    /// Waits until `count` connections have ended (or `timeout`), and returns all so far.
    pub fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + timeout;
        loop {
            let all = self
                .received
                .lock()
                .map(|all| all.clone())
                .unwrap_or_default();
            if all.len() >= count || Instant::now() > deadline {
                return all;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Empties the record of connections seen.
    pub fn take(&self) -> Vec<Recorded> {
        self.received
            .lock()
            .map(|mut all| std::mem::take(&mut *all))
            .unwrap_or_default()
    }
}

impl Drop for RecordingBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn serve_recording(mut stream: TcpStream, peer: SocketAddr) -> Recorded {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
    let mut bytes = Vec::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut answered = false;
    let mut clean_end = false;
    loop {
        let read = match stream.read(&mut buffer) {
            Ok(0) => {
                clean_end = true;
                break;
            }
            Ok(read) => read,
            Err(_) => break,
        };
        bytes.extend_from_slice(&buffer[..read]);
        if !answered {
            if let Some((response_size, request_end)) = complete_request(&bytes) {
                if bytes.len() >= request_end {
                    answered = true;
                    let mut response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {response_size}\r\nConnection: close\r\n\r\n"
                    )
                    .into_bytes();
                    response.extend_from_slice(&response_body(response_size));
                    if stream.write_all(&response).is_err() {
                        break;
                    }
                    let _ = stream.shutdown(Shutdown::Write);
                }
            }
        }
    }
    Recorded {
        peer,
        bytes,
        clean_end,
    }
}

/// For a request whose header block is complete: (response size, end of the request body).
pub fn complete_request(bytes: &[u8]) -> Option<(usize, usize)> {
    let header_end = find(bytes, b"\r\n\r\n")? + 4;
    let header = String::from_utf8_lossy(&bytes[..header_end]);
    let mut length = 0usize;
    for line in header.lines() {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let target = header.lines().next()?.split_whitespace().nth(1)?;
    let response_size = target.strip_prefix("/respond/")?.parse().ok()?;
    Some((response_size, header_end + length))
}

/// Position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// cutls's counters, from what `cutls run --config` printed on stdout when it stopped.
#[derive(Clone, Debug)]
pub struct Counters {
    pub values: BTreeMap<String, u64>,
    pub sessions_still_open: Option<u64>,
    pub text: String,
}

impl Counters {
    pub fn parse(text: &str) -> Counters {
        let mut values = BTreeMap::new();
        let mut sessions_still_open = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("sessions still open:") {
                sessions_still_open = rest.trim().parse().ok();
                continue;
            }
            if let Some((name, value)) = line.trim().trim_end_matches(',').split_once(':') {
                if let Ok(value) = value.trim().parse() {
                    values.insert(name.trim().to_string(), value);
                }
            }
        }
        Counters {
            values,
            sessions_still_open,
            text: text.to_string(),
        }
    }

    /// A counter's value; panics if cutls did not print it.
    pub fn get(&self, name: &str) -> u64 {
        *self
            .values
            .get(name)
            .unwrap_or_else(|| panic!("cutls printed no counter {name}:\n{}", self.text))
    }
}

/// The result of one curl transfer, from `--write-out`.
#[derive(Clone, Debug)]
pub struct CurlTransfer {
    pub code: u32,
    pub size_download: u64,
    pub size_upload: u64,
    pub num_connects: u64,
    pub http_version: String,
    pub url: String,
}

const CURL_WRITE_OUT: &str =
    "%{http_code} %{size_download} %{size_upload} %{num_connects} %{http_version} %{url_effective}\\n";

/// One transfer in a curl invocation.
#[derive(Clone, Debug)]
pub enum Item {
    /// Download `path` (a query may follow, to make URLs unique); compare with the generated
    /// file of `size` bytes.
    Get { path: String, size: u64 },
    /// Upload `local` to `/up/<remote>`; compare what nginx stored.
    Put { local: PathBuf, remote: String },
}

/// What a curl invocation did.
#[derive(Debug)]
pub struct CurlReport {
    pub transfers: Vec<CurlTransfer>,
    pub connects: u64,
    pub stderr: String,
    pub elapsed: Duration,
}

/// A TLS exchange made by the Python client (`ssl.SSLObject` over memory BIOs, so that the
/// script sees every byte TCP delivered).
#[derive(Debug)]
pub struct PythonExchange {
    pub version: String,
    pub cipher: String,
    pub alpn: Option<String>,
    /// The plaintext the server sent.
    pub response: Vec<u8>,
    /// Every byte the client received from the network.
    pub raw: Vec<u8>,
}

const PYTHON_CLIENT: &str = r#"
import json, os, socket, ssl, sys, time
host, port, sni, cafile, version, cipher, alpn, request_path, response_path, raw_path = sys.argv[1:11]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.load_verify_locations(cafile)
if version != "any":
    v = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[version]
    context.minimum_version = v
    context.maximum_version = v
if cipher != "-":
    context.set_ciphers(cipher)
if alpn != "-":
    context.set_alpn_protocols(alpn.split(","))
source_port = int(os.environ.get("LAB_SOURCE_PORT", "0"))
if source_port:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("", source_port))
    sock.settimeout(10)
    sock.connect((host, int(port)))
else:
    sock = socket.create_connection((host, int(port)), timeout=10)
incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = context.wrap_bio(incoming, outgoing, server_hostname=sni)
raw = bytearray()
eof = False
def flush():
    data = outgoing.read()
    if data:
        sock.sendall(data)
def pump():
    global eof
    data = sock.recv(262144)
    if data:
        raw.extend(data)
        incoming.write(data)
    else:
        eof = True
        incoming.write_eof()
    return bool(data)
while True:
    try:
        tls.do_handshake()
        break
    except ssl.SSLWantReadError:
        flush()
        if not pump():
            sys.exit("connection closed during the handshake")
flush()
print("handshake done:", tls.version(), tls.cipher()[0], file=sys.stderr)
request = open(request_path, "rb").read()
pause = int(os.environ.get("LAB_PAUSE_MS", "0")) / 1000
if pause:
    # Read what the server sent after its Finished (TLS 1.3 tickets), then idle so that the
    # kernel restarts the congestion window from its initial size.
    sock.settimeout(0.2)
    try:
        pump()
        tls.read(1)
    except (OSError, ssl.SSLWantReadError):
        pass
    sock.settimeout(10)
    time.sleep(pause)
offset = 0
while offset < len(request):
    offset += tls.write(request[offset:offset + 65536])
    flush()
print("request sent:", len(request), "bytes", file=sys.stderr)
response = bytearray()
while True:
    try:
        data = tls.read(262144)
        if not data:
            break
        response.extend(data)
    except ssl.SSLWantReadError:
        try:
            if eof or not pump():
                break
        except OSError as error:
            sys.exit(f"{error} after {len(raw)} bytes received, {len(response)} of them plaintext; last bytes received: {bytes(raw[-48:]).hex()}")
    except ssl.SSLZeroReturnError:
        break
    except ssl.SSLEOFError:
        break
try:
    tls.unwrap()
except ssl.SSLError:
    pass
try:
    flush()
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(5)
    while not eof and pump():
        pass
except OSError:
    pass
sock.close()
open(response_path, "wb").write(response)
open(raw_path, "wb").write(raw)
print(json.dumps({"version": tls.version(), "cipher": tls.cipher()[0] if tls.cipher() else None,
                  "alpn": tls.selected_alpn_protocol()}))
"#;

/// Options of the Python client.
#[derive(Clone, Debug, Default)]
pub struct PythonOptions {
    /// Idle this long between the handshake and the request.
    pub pause: Duration,
    /// Connect from this local port (SO_REUSEADDR, so that two connections to different
    /// destinations can share it).
    pub source_port: Option<u16>,
}

/// Everything one lab test needs; see the module documentation. Dropping it stops cutls and
/// nginx and tears the lab down, whatever happened.
pub struct TlsLab {
    // Dropped in this order (after the captures stop): cutls, the backends, the files, then
    // the lab (and its lock).
    cutls: Mutex<Option<Cutls>>,
    captures: Vec<Child>,
    pub web: Web,
    _dir: TempDir,
    pub lab: Lab,
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub vip_v4: IpAddr,
    pub vip_v6: IpAddr,
    pub config: PathBuf,
    /// TCP connections the clients made through the VIPs.
    connections: AtomicU64,
    next_id: AtomicU64,
}

impl TlsLab {
    /// Brings the lab up with nginx backends and cutls running the [`standard_listeners`].
    pub fn up(setup: Setup) -> TlsLab {
        let binary = cutls_binary().expect("build cutls");
        let lab = Lab::up_with(setup.impair_side, setup.loops).expect("lab up");
        let env_text = lab_script("env").expect("tools/lab env");
        let lab_value = |name: &str| -> IpAddr {
            env_text
                .lines()
                .find_map(|line| line.strip_prefix(&format!("{name}=")))
                .map(|value| value.trim_matches('"'))
                .and_then(|value| value.parse().ok())
                .unwrap_or_else(|| panic!("tools/lab env: no {name}"))
        };
        let vip_v4 = lab_value("LAB_VIP_V4");
        let vip_v6 = lab_value("LAB_VIP_V6");
        let dir = std::env::temp_dir().join(format!("cutls-lab-tls-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("out")).expect("make the work directory");
        let temp = TempDir(dir.clone());
        let (cert, _) = self_signed_certificate(&dir, HOST, &[vip_v4, vip_v6]).expect("make the certificate");
        let web = Web::start(&lab, &dir).expect("start nginx");
        let config = write_config(&dir, &lab, setup, &standard_listeners(vip_v4, vip_v6))
            .expect("write the cutls configuration");
        let captures = start_captures(&lab);
        let cutls = Cutls::start(&lab, &binary, &["--config", &config.display().to_string()])
            .unwrap_or_else(|error| {
                panic!(
                    "start cutls run --config:\n{}\n{error}",
                    fs::read_to_string(&config).unwrap_or_default()
                )
            });
        TlsLab {
            cutls: Mutex::new(Some(cutls)),
            captures,
            web,
            _dir: temp,
            lab,
            dir,
            cert,
            vip_v4,
            vip_v6,
            config,
            connections: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
        }
    }

    /// Connections counted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Adds connections a client made that no helper counted.
    pub fn count_connections(&self, count: u64) {
        self.connections.fetch_add(count, Ordering::Relaxed);
    }

    fn unique(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A fresh path under the work directory.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dir
            .join("out")
            .join(format!("{}-{name}", self.unique()))
    }

    /// The address of listener `port` on the VIP of `ip`'s family.
    pub fn vip(&self, v6: bool, port: u16) -> SocketAddr {
        SocketAddr::new(if v6 { self.vip_v6 } else { self.vip_v4 }, port)
    }

    /// A file of `size` generated bytes to upload (seeded by `seed`), and its SHA-256.
    pub fn upload_source(&self, size: u64, seed: u64) -> (PathBuf, Vec<u8>) {
        let path = self.scratch(&format!("upload-{size}"));
        let sha = write_generated(&path, size, seed).expect("write an upload source");
        (path, sha)
    }

    /// Runs curl in the client namespace against `to` (a VIP and port, pinned as [`HOST`]) with
    /// `extra` options and `items`, and checks every transfer: HTTP status, size and SHA-256 of
    /// each download, SHA-256 of what nginx stored for each upload. Counts the connections
    /// (`num_connects`). Panics with curl's error output on any failure.
    pub fn curl(&self, to: SocketAddr, extra: &[String], items: &[Item]) -> CurlReport {
        let pinned = match to.ip() {
            IpAddr::V4(v4) => format!("{HOST}:{}:{v4}", to.port()),
            IpAddr::V6(v6) => format!("{HOST}:{}:[{v6}]", to.port()),
        };
        let base = format!("https://{HOST}:{}", to.port());
        // Options for each section of the command line: downloads first, then (after --next,
        // which resets options but keeps the connection cache) the uploads, because curl pairs
        // each -T with the URLs of its section in order, wherever it stands.
        let mut common: Vec<std::ffi::OsString> = Vec::new();
        for arg in [
            "--silent",
            "--show-error",
            "--fail",
            "--connect-timeout",
            "5",
            "--max-time",
            "90",
            "--cacert",
        ] {
            common.push(arg.into());
        }
        common.push(self.cert.clone().into());
        for arg in ["--resolve", &pinned, "--write-out", CURL_WRITE_OUT] {
            common.push(arg.into());
        }
        common.extend(extra.iter().map(Into::into));
        let mut command = self.lab.command_in(&self.lab.env.client_ns, "curl");
        let mut expected = Vec::new();
        let mut section = false;
        for item in items {
            if let Item::Get { path, .. } = item {
                if !section {
                    command.args(&common);
                    section = true;
                }
                let output = self.scratch("download");
                let url = format!("{base}{path}");
                command.arg(&url).arg("-o").arg(&output);
                expected.push((url, item.clone(), output));
            }
        }
        let mut uploads = false;
        for item in items {
            if let Item::Put { local, remote } = item {
                if !uploads {
                    if section {
                        command.arg("--next");
                    }
                    command.args(&common);
                    uploads = true;
                }
                let url = format!("{base}/up/{remote}");
                command.arg("-T").arg(local).arg(&url);
                expected.push((url, item.clone(), PathBuf::new()));
            }
        }
        let started = Instant::now();
        let output = command.stdin(Stdio::null()).output().expect("run curl");
        let elapsed = started.elapsed();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let transfers: Vec<CurlTransfer> = stdout.lines().filter_map(parse_write_out).collect();
        let connects: u64 = transfers.iter().map(|transfer| transfer.num_connects).sum();
        self.count_connections(connects);
        let context = || {
            format!(
                "curl to {to} {extra:?} ({} items):\nexit {}\nstdout:\n{}\nstderr (last lines):\n{}",
                items.len(),
                output.status,
                stdout.lines().take(20).collect::<Vec<_>>().join("\n"),
                tail(&stderr, 25)
            )
        };
        if !output.status.success() {
            self.fail(format!("curl failed: {}", context()));
        }
        assert_eq!(
            transfers.len(),
            items.len(),
            "one --write-out line per transfer: {}",
            context()
        );
        for (url, item, output) in &expected {
            let transfer = transfers
                .iter()
                .find(|transfer| &transfer.url == url)
                .unwrap_or_else(|| panic!("no result for {url}: {}", context()));
            match item {
                Item::Get { size, .. } => {
                    assert_eq!(transfer.code, 200, "GET {url}: status, {}", context());
                    let file = self.web.file(*size);
                    let (got_size, got_sha) =
                        sha256_file(output).unwrap_or((0, Sha256::digest(b"").to_vec()));
                    assert_eq!(
                        got_size, file.size,
                        "GET {url}: the client got {got_size} bytes, expected {}",
                        file.size
                    );
                    assert!(
                        got_sha == file.sha256,
                        "GET {url}: {got_size} bytes arrived but their SHA-256 differs"
                    );
                    let _ = fs::remove_file(output);
                }
                Item::Put { local, remote } => {
                    assert!(
                        transfer.code == 201 || transfer.code == 204,
                        "PUT {url}: status {}, {}",
                        transfer.code,
                        context()
                    );
                    let (sent_size, sent_sha) = sha256_file(local).expect("hash the upload source");
                    let stored = self.web.uploaded(remote);
                    let (got_size, got_sha) = sha256_file(&stored).unwrap_or_else(|error| {
                        panic!("PUT {url}: nginx stored nothing ({error})")
                    });
                    assert_eq!(got_size, sent_size, "PUT {url}: the backend stored {got_size} bytes, the client sent {sent_size}");
                    assert!(got_sha == sent_sha, "PUT {url}: the backend stored {got_size} bytes but their SHA-256 differs from what the client sent");
                    let _ = fs::remove_file(stored);
                }
            }
        }
        CurlReport {
            transfers,
            connects,
            stderr,
            elapsed,
        }
    }

    /// `openssl s_client` sends `request` to `to` with `suite` forced and returns what the server
    /// answered (the plaintext). Checks the negotiated protocol and suite. One connection.
    pub fn openssl(&self, to: SocketAddr, suite: Suite, request: &[u8]) -> Vec<u8> {
        let input = self.scratch("openssl-request");
        fs::write(&input, request).expect("write the request");
        let connect = match to {
            SocketAddr::V4(v4) => format!("{}:{}", v4.ip(), v4.port()),
            SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
        };
        let output = self
            .lab
            .command_in(&self.lab.env.client_ns, "timeout")
            .args([
                "30",
                "openssl",
                "s_client",
                "-brief",
                "-ign_eof",
                "-nocommands",
            ])
            .args(suite.openssl_args())
            .args([
                "-connect",
                &connect,
                "-servername",
                HOST,
                "-verify_return_error",
                "-CAfile",
            ])
            .arg(&self.cert)
            .stdin(File::open(&input).expect("open the request"))
            .output()
            .expect("run openssl s_client");
        self.count_connections(1);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            self.fail(format!(
                "openssl s_client {suite:?} to {to} failed ({}): {}",
                output.status,
                tail(&stderr, 20)
            ));
        }
        assert!(
            stderr.contains(&format!("Protocol version: {}", suite.version.name()))
                && stderr.contains(&format!("Ciphersuite: {}", suite.name)),
            "openssl s_client to {to}: expected {suite:?}, got: {}",
            tail(&stderr, 20)
        );
        output.stdout
    }

    /// The Python `ssl` client: sends `request` to `to` and reads until the server closes.
    /// `version`: "1.2", "1.3" or "any"; `cipher`: an OpenSSL cipher string for TLS 1.2.
    pub fn python(
        &self,
        to: SocketAddr,
        version: &str,
        cipher: Option<&str>,
        alpn: Option<&str>,
        request: &[u8],
    ) -> PythonExchange {
        self.python_with(
            to,
            version,
            cipher,
            alpn,
            request,
            &PythonOptions::default(),
        )
    }

    /// [`TlsLab::python`] with [`PythonOptions`].
    pub fn python_with(
        &self,
        to: SocketAddr,
        version: &str,
        cipher: Option<&str>,
        alpn: Option<&str>,
        request: &[u8],
        options: &PythonOptions,
    ) -> PythonExchange {
        let script = self.dir.join("tls_client.py");
        if !script.exists() {
            fs::write(&script, PYTHON_CLIENT).expect("write the Python client");
        }
        let request_path = self.scratch("python-request");
        let response_path = self.scratch("python-response");
        let raw_path = self.scratch("python-raw");
        fs::write(&request_path, request).expect("write the request");
        let output = self
            .lab
            .command_in(&self.lab.env.client_ns, "timeout")
            .args(["60", python3()])
            .arg(&script)
            .args([&to.ip().to_string(), &to.port().to_string(), HOST])
            .arg(&self.cert)
            .args([version, cipher.unwrap_or("-"), alpn.unwrap_or("-")])
            .args([&request_path, &response_path, &raw_path])
            .env("LAB_PAUSE_MS", options.pause.as_millis().to_string())
            .env(
                "LAB_SOURCE_PORT",
                options.source_port.unwrap_or(0).to_string(),
            )
            .stdin(Stdio::null())
            .output()
            .expect("run python3");
        self.count_connections(1);
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            self.fail(format!(
                "python3 ssl client to {to} (TLS {version} {cipher:?}, {:?}) failed ({}): {}",
                String::from_utf8_lossy(&request[..request.len().min(60)]),
                output.status,
                tail(&String::from_utf8_lossy(&output.stderr), 20)
            ));
        }
        let field = |name: &str| -> Option<String> {
            let key = format!("\"{name}\": \"");
            let start = stdout.find(&key)? + key.len();
            let end = stdout[start..].find('"')? + start;
            Some(stdout[start..end].to_string())
        };
        let exchange = PythonExchange {
            version: field("version").unwrap_or_default(),
            cipher: field("cipher").unwrap_or_default(),
            alpn: field("alpn"),
            response: fs::read(&response_path).unwrap_or_default(),
            raw: fs::read(&raw_path).unwrap_or_default(),
        };
        for path in [&request_path, &response_path, &raw_path] {
            let _ = fs::remove_file(path);
        }
        exchange
    }

    /// Runs `program args` in the client namespace (not counted).
    pub fn client_run(&self, program: &str, args: &[String]) -> Output {
        self.lab
            .command_in(&self.lab.env.client_ns, program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| panic!("run {program}: {error}"))
    }

    /// The running cutls process's id, if it runs.
    pub fn cutls_pid(&self) -> Option<u32> {
        self.cutls.lock().ok()?.as_ref()?.pid()
    }

    /// What the running cutls has logged so far (its stderr).
    pub fn cutls_log(&self) -> String {
        self.cutls.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).as_ref().map_or_else(String::new, |cutls| cutls.stderr_text())
    }

    /// Sends the running cutls `signal` (SIGHUP: reload its configuration).
    pub fn signal_cutls(&self, signal: libc::c_int) {
        if let Some(cutls) = self.cutls.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).as_ref() {
            cutls.signal(signal);
        }
    }

    /// A crash: cutls is killed with SIGKILL (no counters, no cleanup), then started again with
    /// the same configuration. Returns how long until the new process was ready.
    pub fn crash_and_restart_cutls(&self) -> Duration {
        let mut slot = self.cutls.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(mut cutls) = slot.take() {
            cutls.signal(libc::SIGKILL);
            let _ = cutls.wait();
        }
        let started = std::time::Instant::now();
        let binary = cutls_binary().expect("build cutls");
        let cutls = Cutls::start(&self.lab, &binary, &["--config", &self.config.display().to_string()])
            .unwrap_or_else(|error| panic!("restart cutls: {error}"));
        *slot = Some(cutls);
        started.elapsed()
    }

    /// Stops cutls with SIGINT and returns what it printed (None if it was stopped before).
    fn stop_cutls(&self) -> Option<crate::lab::CutlsExit> {
        let mut cutls = self.cutls.lock().ok()?.take()?;
        cutls.signal(libc::SIGINT);
        cutls.stop().ok()
    }

    /// Fails the test with `message` and what cutls printed when stopped now (its counters),
    /// so that a client failure comes with the box's view of it.
    pub fn fail(&self, message: String) -> ! {
        let cutls = match self.stop_cutls() {
            Some(exit) => format!(
                "cutls stopped after the failure:\n{}\nstderr:\n{}",
                exit.stdout,
                tail(&exit.stderr, 30)
            ),
            None => "cutls was not running".to_string(),
        };
        panic!("{message}\n{cutls}");
    }

    /// Stops cutls with SIGINT after the clients have gone, and checks its counters: no session
    /// left open, one completed handshake per connection the clients made, no tag failure.
    /// Returns the counters for further checks.
    pub fn finish(&self) -> Counters {
        self.finish_allowing_open(false)
    }

    /// [`TlsLab::finish`]; with `sessions_may_remain`, sessions still open are allowed (a test
    /// whose clients gave up on stalled transfers: the box resets those only at its idle
    /// timeout) and the handshake count is not checked against the connections (a client may
    /// have given up during one).
    pub fn finish_allowing_open(&self, sessions_may_remain: bool) -> Counters {
        // Let the last FIN/RST exchanges cross the box.
        thread::sleep(Duration::from_millis(1000));
        let exit = self.stop_cutls().expect("cutls runs");
        let counters = Counters::parse(&exit.stdout);
        eprintln!("cutls counters:\n{}", exit.stdout);
        let context = || {
            format!(
                "counters:\n{}\nstderr:\n{}",
                exit.stdout,
                tail(&exit.stderr, 30)
            )
        };
        assert!(exit.success, "cutls run exited with failure: {}", context());
        if !sessions_may_remain {
            assert_eq!(
                counters.sessions_still_open,
                Some(0),
                "sessions still open after all clients ended: {}",
                context()
            );
            assert_eq!(
                counters.get("handshakes_completed"),
                self.connections(),
                "handshakes completed vs connections the clients made: {}",
                context()
            );
        }
        assert_eq!(
            counters.get("ended_tag_failure"),
            0,
            "tag failures: {}",
            context()
        );
        counters
    }
}

/// Debian's python3 when present: a version manager's shim in PATH costs a quarter of a second
/// per start.
pub fn python3() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn parse_write_out(line: &str) -> Option<CurlTransfer> {
    let mut fields = line.split_whitespace();
    Some(CurlTransfer {
        code: fields.next()?.parse().ok()?,
        size_download: fields.next()?.parse().ok()?,
        size_upload: fields.next()?.parse().ok()?,
        num_connects: fields.next()?.parse().ok()?,
        http_version: fields.next()?.to_string(),
        url: fields.next()?.to_string(),
    })
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// With `CUTLS_LAB_CAPTURE=DIR` (and tcpdump installed): captures the headers (128 bytes) of
/// every TCP frame on the client's and the server's veth, to `DIR/<test>-client.pcap` and
/// `DIR/<test>-server.pcap`, for debugging. Nothing without the variable.
fn start_captures(lab: &Lab) -> Vec<Child> {
    let Some(dir) = std::env::var_os("CUTLS_LAB_CAPTURE") else {
        return Vec::new();
    };
    let dir = PathBuf::from(dir);
    let _ = fs::create_dir_all(&dir);
    let test = thread::current().name().unwrap_or("lab").replace("::", "-");
    let mut captures = Vec::new();
    for (ns, interface, side) in [
        (&lab.env.client_ns, &lab.env.client_if, "client"),
        (&lab.env.server_ns, &lab.env.server_if, "server"),
    ] {
        let file = dir.join(format!("{test}-{side}.pcap"));
        let child = lab
            .command_in(ns, "tcpdump")
            .args(["-i", interface, "-s", "128", "-U", "-w"])
            .arg(&file)
            .arg("tcp")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(child) => captures.push(child),
            Err(error) => eprintln!("CUTLS_LAB_CAPTURE: cannot run tcpdump: {error}"),
        }
    }
    // tcpdump needs a moment to open its socket.
    thread::sleep(Duration::from_millis(300));
    captures
}

impl Drop for TlsLab {
    fn drop(&mut self) {
        for mut capture in self.captures.drain(..) {
            // SAFETY: kill with a pid we spawned and have not reaped; SIGINT makes tcpdump flush.
            unsafe { libc::kill(capture.id() as libc::pid_t, libc::SIGINT) };
            let _ = capture.wait();
        }
    }
}

/// Where the lab's cutls serves Prometheus metrics, in the box's namespace.
pub const LAB_METRICS: &str = "127.0.0.1:9464";
/// The health checks' own address on the lab's server network (transparent mode).
pub const LAB_HEALTH_SOURCE: &str = "198.18.0.250";

/// Writes the cutls configuration for `listeners` and returns its path.
pub fn write_config(
    dir: &Path,
    lab: &Lab,
    setup: Setup,
    listeners: &[ListenerSpec],
) -> io::Result<PathBuf> {
    let quoted = |addresses: Vec<SocketAddr>| -> String {
        addresses
            .iter()
            .map(|address| format!("\"{address}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut text = format!(
        "[box]\noutside = \"{}\"\ninside = \"{}\"\nio = \"{}\"\n",
        lab.env.box_outside, lab.env.box_inside, setup.io
    );
    if setup.loops > 1 {
        text += &format!("cores = {}\n", setup.loops);
    }
    match setup.mode {
        // The health checks' source: in SNAT mode the SNAT address (the default).
        AddressMode::Transparent => text += &format!("mode = \"transparent\"\nhealth_source = \"{LAB_HEALTH_SOURCE}\"\n"),
        AddressMode::Snat(address) => {
            text += &format!("mode = \"snat\"\nsnat_address = \"{address}\"\n")
        }
    }
    for listener in listeners {
        let alpn = listener
            .alpn
            .iter()
            .map(|name| format!("\"{name}\""))
            .collect::<Vec<_>>()
            .join(", ");
        text += &format!(
            "\n[[listener]]\nvip = \"{}\"\npool = \"{}\"\nhold_back = \"{}\"\nalpn = [{alpn}]\n",
            listener.vip,
            listener.pool.name,
            listener.hold_back.config_name()
        );
        if !listener.pool.passthrough {
            text += &format!(
                "certificates = [ {{ names = [\"{HOST}\"], chain = \"cert.pem\", key = \"key.pem\" }} ]\n\
                 default_certificate = 0\n"
            );
        }
        if let Some(pool) = listener.passthrough_pool {
            text += &format!("passthrough_pool = \"{}\"\n", pool.name);
        }
    }
    for pool in pools::ALL {
        let addresses = if pool.v6 {
            &lab.env.backends_v6
        } else {
            &lab.env.backends_v4
        };
        let backends = addresses
            .iter()
            .map(|&ip| SocketAddr::new(ip, pool.port))
            .collect();
        text += &format!(
            "\n[[pool]]\nname = \"{}\"\nbackends = [{}]\n",
            pool.name,
            quoted(backends)
        );
        if pool.passthrough {
            text += "passthrough = true\n";
        }
        if let Some(balance) = pool.balance {
            text += &format!("balance = \"{balance}\"\n");
        }
        if let Some(health) = pool.health {
            text += &format!("[pool.health]\n{health}");
        }
    }
    // The management socket beside the file (the default, under /run, would be shared by
    // every lab test).
    text += &format!("\n[management]\nsocket = \"cutls.sock\"\nmetrics = \"{LAB_METRICS}\"\n");
    let path = dir.join("cutls.toml");
    fs::write(&path, text)?;
    Ok(path)
}

/// Splits an HTTP/1.1 response into its status code and body (by Content-Length if present,
/// else everything after the header block).
pub fn http_response(response: &[u8]) -> Result<(u32, Vec<u8>), String> {
    let header_end = find(response, b"\r\n\r\n").ok_or_else(|| {
        format!(
            "no HTTP header block in {} bytes: {:?}",
            response.len(),
            String::from_utf8_lossy(&response[..response.len().min(200)])
        )
    })? + 4;
    let header = String::from_utf8_lossy(&response[..header_end]);
    let status = header
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("bad status line: {:?}", header.lines().next()))?;
    let body = &response[header_end..];
    let length = header.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    match length {
        Some(length) if body.len() != length => Err(format!(
            "Content-Length {length} but {} body bytes arrived",
            body.len()
        )),
        _ => Ok((status, body.to_vec())),
    }
}

/// A summary of a byte stream that parsed as TLS records from end to end.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecordStream {
    pub handshake: usize,
    pub change_cipher_spec: usize,
    pub alert: usize,
    pub application_data: usize,
    pub application_bytes: usize,
}

/// Parses `stream` (what a client received) as a sequence of TLS records, exactly: every byte
/// belongs to a record with a valid header, no partial record at the end. Fails on anything
/// else, such as plaintext.
pub fn tls_records(stream: &[u8]) -> Result<RecordStream, String> {
    let mut summary = RecordStream::default();
    let mut at = 0usize;
    while at < stream.len() {
        if stream.len() - at < 5 {
            return Err(format!(
                "{} stray bytes at offset {at} (not a record header)",
                stream.len() - at
            ));
        }
        let header = &stream[at..at + 5];
        let length = u16::from_be_bytes([header[3], header[4]]) as usize;
        if !(header[1] == 3 && (1..=3).contains(&header[2])) {
            return Err(format!(
                "offset {at}: not a TLS record header: {header:02x?}"
            ));
        }
        if length > 16384 + 2048 {
            return Err(format!("offset {at}: record length {length} too large"));
        }
        match header[0] {
            20 => summary.change_cipher_spec += 1,
            21 => summary.alert += 1,
            22 => summary.handshake += 1,
            23 => {
                summary.application_data += 1;
                summary.application_bytes += length;
            }
            other => return Err(format!("offset {at}: record type {other}")),
        }
        if at + 5 + length > stream.len() {
            return Err(format!(
                "offset {at}: record of {length} bytes cut short at the end of the stream"
            ));
        }
        at += 5 + length;
    }
    Ok(summary)
}

/// Where a run of 64 bytes of `plaintext` appears in `stream` (windows sampled every 256 bytes
/// of the plaintext, so any run of 320 or more leaked bytes is found; a plaintext of 16 to 63
/// bytes is searched whole, a shorter one not at all).
pub fn contains_plaintext(stream: &[u8], plaintext: &[u8]) -> Option<usize> {
    const WINDOW: usize = 64;
    // Shorter runs occur in random ciphertext by chance; the record parse catches those leaks.
    const SHORTEST: usize = 16;
    if plaintext.len() < SHORTEST {
        return None;
    }
    if plaintext.len() < WINDOW {
        return find(stream, plaintext);
    }
    let mut samples: HashSet<&[u8]> = HashSet::new();
    let mut offset = 0;
    while offset + WINDOW <= plaintext.len() {
        samples.insert(&plaintext[offset..offset + WINDOW]);
        offset += 256;
    }
    stream
        .windows(WINDOW)
        .position(|window| samples.contains(window))
}
