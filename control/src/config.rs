//! The configuration file: ports, listeners (VIP, certificates per SNI name, ALPN, hold-back
//! mode), backend pools.
//!
//! TOML, read in two steps: `toml` + serde turn the text into raw structures that keep every
//! value's place in the file (`Spanned`), then [`Config::load`] checks what serde cannot
//! (addresses, cross references, duplicate VIPs) and names the file, line and field of the first
//! problem. Parse, don't validate: the checked [`Config`] holds only typed values.
//!
//! ```toml
//! [box]
//! outside = "outside"          # interface toward the router
//! inside = "inside"            # interface toward the servers
//! io = "xdp"                   # xdp | xdp-generic | packet
//! mode = "transparent"         # transparent | snat
//! snat_address = "198.18.2.1"  # required with mode = "snat"
//! rx_checksum = "offload"      # offload | verify (see below)
//! close_timeout = 60           # seconds a half-closed session may stay idle
//! handshake_timeout = 30       # seconds from a client's SYN to the end of its TLS handshake
//! max_sessions = 250000        # live sessions at most; more connections are refused (RST)
//! max_sessions_per_client = 0  # live sessions at most per client address (0: no limit)
//! syn_cookies_after = 16384    # live sessions above which SYNs get SYN cookies, no state
//! cores = 2                    # poll loops (default: one per receive queue, at most the cores)
//! handshake_threads = 1        # TLS handshake workers per poll loop (0: in the loop)
//! congestion_control = "bbr"   # bbr | reno: the box's sending toward clients (see below)
//! idle_timeout = 300           # seconds an established session may stay idle
//! health_source = "198.18.2.2" # the health checks' own address(es) on the server network
//!
//! [[listener]]
//! vip = "198.18.1.100:443"
//! pool = "web"
//! hold_back = "cut-through"    # cut-through | verify-first
//! alpn = ["h2", "http/1.1"]
//! certificates = [
//!   { names = ["www.example.test", "*.example.test"], chain = "certs/example.pem", key = "certs/example.key" },
//! ]
//! default_certificate = 0      # index into certificates, for clients without a matching SNI
//! passthrough_pool = "tls-web" # optional: what this box does not terminate goes here
//!
//! [[pool]]
//! name = "web"
//! balance = "least-load"       # least-load (default) | least-sessions | round-robin
//! backends = ["198.18.2.10:80", { address = "198.18.2.11:80", weight = 2, max_sessions = 5000 }]
//! [pool.health]                # optional active checks from the box (see below)
//! interval_ms = 2000
//! timeout_ms = 1000
//! rise = 2
//! fall = 3
//! port = 8080                  # default: the backend's own port
//! http_path = "/health"        # optional: an HTTP/1.0 GET instead of a bare TCP connect
//! http_host = "www.example.test"
//! http_status = 200
//! agent_port = 9999            # optional: the backend's agent (HAProxy's agent check)
//!
//! [[pool]]
//! name = "tls-web"
//! backends = ["198.18.2.20:443"]
//! passthrough = true           # spliced as plain TCP, never decrypted
//!
//! [management]
//! socket = "/run/cutls/cutls.sock"  # cutlsctl's; "" for none
//! metrics = "127.0.0.1:9464"        # optional Prometheus listener
//!
//! [log]
//! level = "info"               # off | error | warn | info | debug | trace
//! format = "text"              # text | json (one object per line)
//! ```
//!
//! Health checks (`[pool.health]`) run from the box's inside port with their own address,
//! `health_source` (one per family in use; in SNAT mode the SNAT address is the default, its
//! ports 60000-60999 kept for the checks): a backend that fails `fall` checks in a row takes no
//! new sessions until it passes `rise` in a row; its sessions go on.
//!
//! A reload (`cutlsctl reload`, SIGHUP) takes everything but `outside`, `inside`, `io`, `mode`,
//! `snat_address`, `rx_checksum`, `cores`, `handshake_threads`, `congestion_control`,
//! `[management]` and `log.format`, which need a restart ([`Config::check_reloadable`]).
//!
//! `passthrough_pool` names a pool with `passthrough = true`: connections whose first bytes are
//! not a TLS ClientHello, and ClientHellos whose SNI matches none of the listener's certificate
//! names, are spliced as plain TCP to this pool (ClientHellos without SNI use the default
//! certificate if there is one, else go to this pool too). A listener whose own `pool` is
//! passthrough already splices everything and takes no `passthrough_pool`.
//!
//! `rx_checksum`: every frame the box consumes has its IPv4 header and TCP checksums verified and
//! is dropped (counted) when they are wrong. With `offload` (the default), a frame the frame
//! I/O backend reports as already verified by the NIC or kernel (AF_PACKET's
//! `TP_STATUS_CSUM_VALID`), or as a local sender's not-yet-filled checksum
//! (`TP_STATUS_CSUMNOTREADY`), is taken as valid without computing it again, as Linux does;
//! `verify` computes every checksum whatever the backend says. AF_XDP reports nothing, so
//! there the box always computes.
//!
//! `congestion_control`: the box acknowledges the backend's bytes itself and is the client's
//! TCP sender for them, so it sizes a congestion window toward each client. `bbr` (the
//! default, what Debian's kernel runs here for nginx and HAProxy) follows the path's measured
//! bandwidth-delay product and does not shrink on a random loss; `reno` (RFC 5681) halves on
//! every loss, which on a path with 1% random loss costs most of the throughput.
//!
//! Relative paths are relative to the configuration file's folder.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::logging::{LogFormat, LogLevel};
pub use cutls_dataplane::health::{HealthCheck, HttpCheck};
pub use cutls_dataplane::session::{BackendOptions, Balance};
use toml::Spanned;

/// A configuration error, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line, when the error has a place in the file.
    pub line: Option<usize>,
    /// The field, as a path (`listener[0].vip`).
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Poll loops at most (`cores`).
pub const MAX_LOOPS: usize = 256;
/// Handshake workers per loop when the file does not say: a full handshake costs 0.1-0.5 ms,
/// which would hold every other session's packets if it ran in the loop.
const DEFAULT_HANDSHAKE_THREADS: usize = 1;

/// `close_timeout` when the file does not say: Linux's `tcp_fin_timeout`.
pub const DEFAULT_CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// `handshake_timeout` when the file does not say: a slow mobile client finishes in a few
/// seconds; a slowloris one that trickles its ClientHello is reset then.
pub const DEFAULT_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// `max_sessions` when the file does not say: about 2.5 GB of sessions (10 KB each, idle).
pub const DEFAULT_MAX_SESSIONS: usize = 250_000;
/// `syn_cookies_after` when the file does not say.
pub const DEFAULT_SYN_COOKIES_AFTER: usize = 16_384;

/// How the box reaches the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressMode {
    /// The backend sees the client's address; it must route replies back through the box.
    Transparent,
    /// The backend sees the box's `snat_address` and a port the box owns.
    Snat(IpAddr),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoKind {
    Xdp,
    XdpGeneric,
    Packet,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldBack {
    CutThrough,
    VerifyFirst,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub outside: String,
    pub inside: String,
    pub io: IoKind,
    pub mode: AddressMode,
    /// Trust the receive path's checksum verdict where it has one (`rx_checksum = "offload"`).
    pub trust_rx_checksum: bool,
    /// How long a session that has begun to close may stay idle (`close_timeout`, seconds).
    pub close_timeout: std::time::Duration,
    /// How long a TLS handshake may take from the client's SYN (`handshake_timeout`, seconds).
    pub handshake_timeout: std::time::Duration,
    /// Live sessions at most (`max_sessions`), per client address (`max_sessions_per_client`,
    /// 0: none), and above which SYNs get cookies (`syn_cookies_after`): for the whole box,
    /// shared out among the poll loops.
    pub max_sessions: usize,
    pub max_sessions_per_client: usize,
    pub syn_cookies_after: usize,
    /// Poll loops (`cores`); `None`: one per receive queue of the ports, at most the cores
    /// the process may use.
    pub cores: Option<usize>,
    /// Handshake worker threads per poll loop (`handshake_threads`).
    pub handshake_threads: usize,
    /// The box's congestion control toward clients (`congestion_control`).
    pub congestion: cutls_dataplane::session::CongestionControl,
    pub listeners: Vec<Listener>,
    pub pools: Vec<Pool>,
    /// An established session idle this long is reset (`box.idle_timeout`, seconds).
    pub idle_timeout: std::time::Duration,
    pub management: Management,
    /// `[log]`: the level (reloadable) and format of the process's log.
    pub log: LogSettings,
    /// The health checks' own addresses on the server VLAN (`box.health_source`; in SNAT mode
    /// the SNAT address when not set), at most one per family; empty if no pool is checked.
    pub health_sources: Vec<IpAddr>,
}

/// `[management]`: how operators reach the running box.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Management {
    /// The Unix socket `cutlsctl` talks to (`socket`, default [`DEFAULT_MANAGEMENT_SOCKET`]);
    /// `None` with `socket = ""`: no socket.
    pub socket: Option<PathBuf>,
    /// Where Prometheus scrapes the metrics over HTTP (`metrics = "ADDR:PORT"`), if anywhere.
    pub metrics: Option<SocketAddr>,
}

/// `[log]`: `level` (off, error, warn, info (the default), debug, trace) and `format` (`text`,
/// the default, or `json`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogSettings {
    pub level: LogLevel,
    pub format: LogFormat,
}

/// Where `cutlsctl` finds the box when neither says otherwise.
pub const DEFAULT_MANAGEMENT_SOCKET: &str = "/run/cutls/cutls.sock";
/// HAProxy's defaults are 2 s between checks, rise 2, fall 3; a check's answer within 1 s.
const DEFAULT_HEALTH_INTERVAL_MS: i64 = 2000;
const DEFAULT_HEALTH_TIMEOUT_MS: i64 = 1000;
/// A pool's `balance` when the file does not say: least-load measures what the others guess
/// at (a slow backend, a refusing one: see `cutls_dataplane::session::balance`).
const DEFAULT_BALANCE: Balance = Balance::LeastLoad;
/// Linux keeps an idle established connection for ever; a box in front of servers must not.
const DEFAULT_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub vip: SocketAddr,
    /// Index into [`Config::pools`].
    pub pool: usize,
    pub hold_back: HoldBack,
    pub alpn: Vec<String>,
    pub certificates: Vec<CertificateFiles>,
    pub default_certificate: Option<usize>,
    /// Index into [`Config::pools`] of a passthrough pool for connections this listener does not
    /// terminate: not a ClientHello, or an SNI none of `certificates` names (see the module doc).
    pub passthrough_pool: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFiles {
    /// SNI names; `*.example.test` matches one label.
    pub names: Vec<String>,
    pub chain: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub backends: Vec<SocketAddr>,
    /// Per backend (same order): its weight and session limit.
    pub options: Vec<BackendOptions>,
    /// How a new session's backend is chosen (`balance`).
    pub balance: Balance,
    /// Splice as plain TCP, without decryption.
    pub passthrough: bool,
    /// Active health checks of its backends (`[pool.health]`), if any.
    pub health: Option<HealthCheck>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(rename = "box")]
    ports: Spanned<RawBox>,
    #[serde(default, rename = "listener")]
    listeners: Vec<Spanned<RawListener>>,
    #[serde(default, rename = "pool")]
    pools: Vec<Spanned<RawPool>>,
    #[serde(default)]
    management: Option<RawManagement>,
    #[serde(default)]
    log: Option<RawLog>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default)]
    level: Option<Spanned<String>>,
    #[serde(default)]
    format: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManagement {
    #[serde(default)]
    socket: Option<Spanned<String>>,
    #[serde(default)]
    metrics: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBox {
    outside: Spanned<String>,
    inside: Spanned<String>,
    #[serde(default)]
    io: Option<Spanned<String>>,
    #[serde(default)]
    mode: Option<Spanned<String>>,
    #[serde(default)]
    snat_address: Option<Spanned<String>>,
    #[serde(default)]
    rx_checksum: Option<Spanned<String>>,
    #[serde(default)]
    close_timeout: Option<Spanned<i64>>,
    #[serde(default)]
    handshake_timeout: Option<Spanned<i64>>,
    #[serde(default)]
    max_sessions: Option<Spanned<i64>>,
    #[serde(default)]
    max_sessions_per_client: Option<Spanned<i64>>,
    #[serde(default)]
    syn_cookies_after: Option<Spanned<i64>>,
    #[serde(default)]
    cores: Option<Spanned<i64>>,
    #[serde(default)]
    handshake_threads: Option<Spanned<i64>>,
    #[serde(default)]
    congestion_control: Option<Spanned<String>>,
    #[serde(default)]
    idle_timeout: Option<Spanned<i64>>,
    #[serde(default)]
    health_source: Option<Spanned<RawAddresses>>,
}

/// One address or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawAddresses {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    vip: Spanned<String>,
    pool: Spanned<String>,
    #[serde(default)]
    hold_back: Option<Spanned<String>>,
    #[serde(default)]
    alpn: Vec<Spanned<String>>,
    #[serde(default)]
    certificates: Vec<Spanned<RawCertificate>>,
    #[serde(default)]
    default_certificate: Option<Spanned<usize>>,
    #[serde(default)]
    passthrough_pool: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertificate {
    names: Vec<Spanned<String>>,
    chain: Spanned<String>,
    key: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    name: Spanned<String>,
    backends: Vec<Spanned<RawBackend>>,
    #[serde(default)]
    passthrough: bool,
    #[serde(default)]
    balance: Option<Spanned<String>>,
    #[serde(default)]
    health: Option<Spanned<RawHealth>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(default)]
    interval_ms: Option<i64>,
    #[serde(default)]
    timeout_ms: Option<i64>,
    #[serde(default)]
    rise: Option<i64>,
    #[serde(default)]
    fall: Option<i64>,
    #[serde(default)]
    port: Option<i64>,
    #[serde(default)]
    http_path: Option<String>,
    #[serde(default)]
    http_host: Option<String>,
    #[serde(default)]
    http_status: Option<i64>,
    #[serde(default)]
    agent_port: Option<i64>,
}

/// A backend: `"ADDRESS:PORT"`, or `{ address = "ADDRESS:PORT", weight = 3, max_sessions = 500 }`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawBackend {
    Address(String),
    Table(RawBackendTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackendTable {
    address: String,
    #[serde(default)]
    weight: Option<i64>,
    #[serde(default)]
    max_sessions: Option<i64>,
}

/// Errors with places in one file.
struct Places<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Places<'_> {
    fn error(&self, span: Option<Range<usize>>, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line: span.map(|span| line_of(self.text, span.start)),
            field: Some(field.into()),
            message: message.into(),
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

/// The line of `key = ...` in table `[table]` of `text`, if it is written there (it may be
/// left to its default).
fn line_of_key(text: &str, table: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[') {
            current = name.trim_start_matches('[').trim_end_matches(']').trim().to_string();
        } else if current == table
            && line.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return Some(index + 1);
        }
    }
    None
}

impl Config {
    /// The box's own address toward the backends, in SNAT mode.
    pub fn snat_address(&self) -> Option<IpAddr> {
        match self.mode {
            AddressMode::Transparent => None,
            AddressMode::Snat(address) => Some(address),
        }
    }

    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
            file: path.to_path_buf(),
            line: None,
            field: None,
            message: error.to_string(),
        })?;
        Self::parse(path, &text)
    }

    /// Checks that `self`, read from `text` at `path` to replace the `running` configuration,
    /// changes only what a reload can change: the ports, their I/O and checksum trust, the
    /// address mode, the loops, handshake workers, congestion control and the management
    /// socket and metrics listener need a restart (the error names the first such field and
    /// its line).
    pub fn check_reloadable(&self, running: &Config, path: &Path, text: &str) -> Result<(), ConfigError> {
        let same_mode = std::mem::discriminant(&self.mode) == std::mem::discriminant(&running.mode);
        let changes = [
            ("box", "outside", self.outside != running.outside),
            ("box", "inside", self.inside != running.inside),
            ("box", "io", self.io != running.io),
            ("box", "mode", !same_mode),
            ("box", "snat_address", same_mode && self.mode != running.mode),
            ("box", "rx_checksum", self.trust_rx_checksum != running.trust_rx_checksum),
            ("box", "cores", self.cores != running.cores),
            ("box", "handshake_threads", self.handshake_threads != running.handshake_threads),
            ("box", "congestion_control", self.congestion != running.congestion),
            ("management", "socket", self.management.socket != running.management.socket),
            ("management", "metrics", self.management.metrics != running.management.metrics),
            ("log", "format", self.log.format != running.log.format),
        ];
        match changes.into_iter().find(|(_, _, changed)| *changed) {
            None => Ok(()),
            Some((table, key, _)) => Err(ConfigError {
                file: path.to_path_buf(),
                line: line_of_key(text, table, key),
                field: Some(format!("{table}.{key}")),
                message: "changed, and only a restart can change it (the running value stays)".into(),
            }),
        }
    }

    /// Checks `text` as if read from `path` (relative file names resolve against its folder).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let places = Places { file: path, text };
        let raw: RawConfig = toml::from_str(text).map_err(|error| ConfigError {
            file: path.to_path_buf(),
            line: error.span().map(|span| line_of(text, span.start)),
            field: None,
            message: error.message().trim().to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let ports = raw.ports.get_ref();
        let io = match ports.io.as_ref() {
            None => IoKind::Xdp,
            Some(io) => match io.get_ref().as_str() {
                "xdp" => IoKind::Xdp,
                "xdp-generic" => IoKind::XdpGeneric,
                "packet" => IoKind::Packet,
                other => {
                    return Err(places.error(
                        Some(io.span()),
                        "box.io",
                        format!("unknown I/O {other:?} (xdp, xdp-generic or packet)"),
                    ))
                }
            },
        };
        let mode = match (ports.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())), ports.snat_address.as_ref()) {
            (None | Some(("transparent", _)), None) => AddressMode::Transparent,
            (None | Some(("transparent", _)), Some(address)) => {
                return Err(places.error(Some(address.span()), "box.snat_address", "only meaningful with mode = \"snat\""))
            }
            (Some(("snat", span)), None) => {
                return Err(places.error(Some(span), "box.mode", "mode = \"snat\" needs box.snat_address"))
            }
            (Some(("snat", _)), Some(address)) => AddressMode::Snat(address.get_ref().parse().map_err(|_| {
                places.error(Some(address.span()), "box.snat_address", format!("not an IP address: {:?}", address.get_ref()))
            })?),
            (Some((other, span)), _) => {
                return Err(places.error(Some(span), "box.mode", format!("unknown mode {other:?} (transparent or snat)")))
            }
        };
        let trust_rx_checksum = match ports.rx_checksum.as_ref() {
            None => true,
            Some(value) => match value.get_ref().as_str() {
                "offload" => true,
                "verify" => false,
                other => {
                    return Err(places.error(
                        Some(value.span()),
                        "box.rx_checksum",
                        format!("unknown checksum policy {other:?} (offload or verify)"),
                    ))
                }
            },
        };
        let congestion = match ports.congestion_control.as_ref() {
            None => cutls_dataplane::session::CongestionControl::default(),
            Some(value) => match value.get_ref().as_str() {
                "bbr" => cutls_dataplane::session::CongestionControl::Bbr,
                "reno" => cutls_dataplane::session::CongestionControl::Reno,
                other => {
                    return Err(places.error(
                        Some(value.span()),
                        "box.congestion_control",
                        format!("unknown congestion control {other:?} (bbr or reno)"),
                    ))
                }
            },
        };
        // A number of seconds, 1 to `max`.
        let seconds = |value: &Option<Spanned<i64>>, field: &str, default: std::time::Duration, max: u64| {
            match value.as_ref() {
                None => Ok(default),
                Some(value) => match u64::try_from(*value.get_ref()) {
                    Ok(seconds) if (1..=max).contains(&seconds) => Ok(std::time::Duration::from_secs(seconds)),
                    _ => Err(places.error(Some(value.span()), field, format!("{} seconds: must be 1 to {max}", value.get_ref()))),
                },
            }
        };
        let close_timeout = seconds(&ports.close_timeout, "box.close_timeout", DEFAULT_CLOSE_TIMEOUT, 3600)?;
        let handshake_timeout = seconds(&ports.handshake_timeout, "box.handshake_timeout", DEFAULT_HANDSHAKE_TIMEOUT, 300)?;
        let idle_timeout = seconds(&ports.idle_timeout, "box.idle_timeout", DEFAULT_IDLE_TIMEOUT, 86_400)?;
        let management = match &raw.management {
            None => Management { socket: Some(PathBuf::from(DEFAULT_MANAGEMENT_SOCKET)), metrics: None },
            Some(management) => {
                let socket = match &management.socket {
                    None => Some(PathBuf::from(DEFAULT_MANAGEMENT_SOCKET)),
                    Some(path) if path.get_ref().is_empty() => None,
                    Some(path) => Some(base.join(path.get_ref())),
                };
                let metrics = match &management.metrics {
                    None => None,
                    Some(address) => Some(address.get_ref().parse().map_err(|_| {
                        places.error(
                            Some(address.span()),
                            "management.metrics",
                            format!("not an address:port: {:?}", address.get_ref()),
                        )
                    })?),
                };
                Management { socket, metrics }
            }
        };
        let mut log = LogSettings::default();
        if let Some(raw_log) = &raw.log {
            if let Some(level) = &raw_log.level {
                log.level = level.get_ref().parse().map_err(|error: String| places.error(Some(level.span()), "log.level", error))?;
            }
            if let Some(format) = &raw_log.format {
                log.format = match format.get_ref().as_str() {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    other => return Err(places.error(Some(format.span()), "log.format", format!("{other:?}: text or json"))),
                };
            }
        }
        let count = |value: &Option<Spanned<i64>>, field: &str, default: usize, low: usize| -> Result<usize, ConfigError> {
            match value.as_ref() {
                None => Ok(default),
                Some(value) => match usize::try_from(*value.get_ref()) {
                    Ok(count) if (low..=100_000_000).contains(&count) => Ok(count),
                    _ => Err(places.error(Some(value.span()), field, format!("{}: must be {low} to 100000000", value.get_ref()))),
                },
            }
        };
        let max_sessions = count(&ports.max_sessions, "box.max_sessions", DEFAULT_MAX_SESSIONS, 1)?;
        let max_sessions_per_client = count(&ports.max_sessions_per_client, "box.max_sessions_per_client", 0, 0)?;
        let syn_cookies_after = count(&ports.syn_cookies_after, "box.syn_cookies_after", DEFAULT_SYN_COOKIES_AFTER, 0)?;
        let cores = match ports.cores.as_ref() {
            None => None,
            Some(value) => match usize::try_from(*value.get_ref()) {
                Ok(cores @ 1..=MAX_LOOPS) => Some(cores),
                _ => {
                    return Err(places.error(
                        Some(value.span()),
                        "box.cores",
                        format!("{}: must be 1 to {MAX_LOOPS} poll loops", value.get_ref()),
                    ))
                }
            },
        };
        let handshake_threads = match ports.handshake_threads.as_ref() {
            None => DEFAULT_HANDSHAKE_THREADS,
            Some(value) => match usize::try_from(*value.get_ref()) {
                Ok(threads @ 0..=64) => threads,
                _ => {
                    return Err(places.error(
                        Some(value.span()),
                        "box.handshake_threads",
                        format!("{}: must be 0 to 64 threads per poll loop", value.get_ref()),
                    ))
                }
            },
        };
        if ports.outside.get_ref() == ports.inside.get_ref() {
            return Err(places.error(Some(ports.inside.span()), "box.inside", "must differ from box.outside"));
        }

        let mut pools = Vec::new();
        let mut pool_names = HashSet::new();
        for (index, raw_pool) in raw.pools.iter().enumerate() {
            let pool = raw_pool.get_ref();
            let field = format!("pool[{index}]");
            if !pool_names.insert(pool.name.get_ref().clone()) {
                return Err(places.error(Some(pool.name.span()), format!("{field}.name"), "duplicate pool name"));
            }
            if pool.backends.is_empty() {
                return Err(places.error(Some(raw_pool.span()), format!("{field}.backends"), "a pool needs at least one backend"));
            }
            let mut backends = Vec::new();
            let mut options = Vec::new();
            for (i, backend) in pool.backends.iter().enumerate() {
                let error = |what: &str, message: String| places.error(Some(backend.span()), format!("{field}.backends[{i}]{what}"), message);
                // The field an address error names: the entry itself, or its `address`.
                let (address, address_field, weight, max_sessions) = match backend.get_ref() {
                    RawBackend::Address(address) => (address, "", None, None),
                    RawBackend::Table(table) => (&table.address, ".address", table.weight, table.max_sessions),
                };
                let address: SocketAddr =
                    address.parse().map_err(|_| error(address_field, format!("not an address:port: {address:?}")))?;
                if backends.contains(&address) {
                    return Err(error("", format!("{address} is in this pool twice")));
                }
                let weight = match weight {
                    None => 1,
                    Some(weight @ 1..=1000) => weight as u32,
                    Some(other) => return Err(error(".weight", format!("{other}: must be 1 to 1000"))),
                };
                let max_sessions = match max_sessions {
                    None => None,
                    Some(limit @ 1..=100_000_000) => Some(limit as usize),
                    Some(other) => return Err(error(".max_sessions", format!("{other}: must be 1 to 100000000"))),
                };
                backends.push(address);
                options.push(BackendOptions { weight, max_sessions });
            }
            let balance = match pool.balance.as_ref() {
                None => DEFAULT_BALANCE,
                Some(value) => match value.get_ref().as_str() {
                    "round-robin" => Balance::RoundRobin,
                    "least-sessions" => Balance::LeastSessions,
                    "least-load" => Balance::LeastLoad,
                    other => {
                        return Err(places.error(
                            Some(value.span()),
                            format!("{field}.balance"),
                            format!("unknown balancing {other:?} (round-robin, least-sessions or least-load)"),
                        ))
                    }
                },
            };
            let health = match &pool.health {
                None => None,
                Some(raw) => Some(health_check(&places, raw, &format!("{field}.health"))?),
            };
            pools.push(Pool { name: pool.name.get_ref().clone(), backends, options, balance, passthrough: pool.passthrough, health });
        }

        let health_sources = health_sources(&places, ports, &mode, &raw.pools, &pools)?;

        let mut listeners = Vec::new();
        let mut vips = HashSet::new();
        for (index, raw_listener) in raw.listeners.iter().enumerate() {
            let listener = raw_listener.get_ref();
            let field = format!("listener[{index}]");
            let vip: SocketAddr = listener.vip.get_ref().parse().map_err(|_| {
                places.error(Some(listener.vip.span()), format!("{field}.vip"), format!("not an address:port: {:?}", listener.vip.get_ref()))
            })?;
            if !vips.insert(vip) {
                return Err(places.error(Some(listener.vip.span()), format!("{field}.vip"), "duplicate VIP"));
            }
            let pool = pools.iter().position(|p| &p.name == listener.pool.get_ref()).ok_or_else(|| {
                places.error(Some(listener.pool.span()), format!("{field}.pool"), format!("no pool named {:?}", listener.pool.get_ref()))
            })?;
            let passthrough_pool = match &listener.passthrough_pool {
                None => None,
                Some(name) => {
                    let pfield = format!("{field}.passthrough_pool");
                    let index = pools.iter().position(|p| &p.name == name.get_ref()).ok_or_else(|| {
                        places.error(Some(name.span()), pfield.as_str(), format!("no pool named {:?}", name.get_ref()))
                    })?;
                    // Spliced connections are never decrypted: a pool that expects plaintext
                    // would get TLS records it cannot read.
                    if !pools[index].passthrough {
                        return Err(places.error(
                            Some(name.span()),
                            pfield,
                            format!("pool {:?} is not passthrough = true", name.get_ref()),
                        ));
                    }
                    // Such a listener terminates nothing, so nothing could fall back.
                    if pools[pool].passthrough {
                        return Err(places.error(Some(name.span()), pfield, "the listener's pool is already passthrough"));
                    }
                    Some(index)
                }
            };
            let hold_back = match listener.hold_back.as_ref().map(|h| (h.get_ref().as_str(), h.span())) {
                None | Some(("cut-through", _)) => HoldBack::CutThrough,
                Some(("verify-first", _)) => HoldBack::VerifyFirst,
                Some((other, span)) => {
                    return Err(places.error(
                        Some(span),
                        format!("{field}.hold_back"),
                        format!("unknown mode {other:?} (cut-through or verify-first)"),
                    ))
                }
            };
            let mut alpn = Vec::new();
            for (i, protocol) in listener.alpn.iter().enumerate() {
                let value = protocol.get_ref();
                if value.is_empty() || value.len() > 255 {
                    return Err(places.error(Some(protocol.span()), format!("{field}.alpn[{i}]"), "ALPN names are 1 to 255 bytes"));
                }
                alpn.push(value.clone());
            }
            let mut certificates = Vec::new();
            for (i, raw_certificate) in listener.certificates.iter().enumerate() {
                let certificate = raw_certificate.get_ref();
                let cfield = format!("{field}.certificates[{i}]");
                if certificate.names.is_empty() {
                    return Err(places.error(Some(raw_certificate.span()), format!("{cfield}.names"), "needs at least one name"));
                }
                for (n, name) in certificate.names.iter().enumerate() {
                    if !valid_sni_pattern(name.get_ref()) {
                        return Err(places.error(
                            Some(name.span()),
                            format!("{cfield}.names[{n}]"),
                            format!("not a DNS name or *.wildcard: {:?}", name.get_ref()),
                        ));
                    }
                }
                certificates.push(CertificateFiles {
                    names: certificate.names.iter().map(|n| n.get_ref().to_ascii_lowercase()).collect(),
                    chain: base.join(certificate.chain.get_ref()),
                    key: base.join(certificate.key.get_ref()),
                });
            }
            let default_certificate = match &listener.default_certificate {
                None => None,
                Some(index) if *index.get_ref() < certificates.len() => Some(*index.get_ref()),
                Some(index) => {
                    return Err(places.error(
                        Some(index.span()),
                        format!("{field}.default_certificate"),
                        format!("there are {} certificates", certificates.len()),
                    ))
                }
            };
            if certificates.is_empty() && !pools[pool].passthrough {
                return Err(places.error(
                    Some(raw_listener.span()),
                    format!("{field}.certificates"),
                    "a listener needs certificates unless its pool is passthrough",
                ));
            }
            listeners.push(Listener { vip, pool, hold_back, alpn, certificates, default_certificate, passthrough_pool });
        }
        Ok(Config {
            outside: ports.outside.get_ref().clone(),
            inside: ports.inside.get_ref().clone(),
            io,
            mode,
            trust_rx_checksum,
            close_timeout,
            handshake_timeout,
            max_sessions,
            max_sessions_per_client,
            syn_cookies_after,
            cores,
            handshake_threads,
            congestion,
            listeners,
            pools,
            idle_timeout,
            management,
            log,
            health_sources,
        })
    }
}

/// Checks a pool's `[pool.health]`.
fn health_check(places: &Places<'_>, raw: &Spanned<RawHealth>, field: &str) -> Result<HealthCheck, ConfigError> {
    let health = raw.get_ref();
    let error = |what: &str, message: String| places.error(Some(raw.span()), format!("{field}.{what}"), message);
    let ranged = |value: Option<i64>, what: &str, default: i64, range: std::ops::RangeInclusive<i64>| match value {
        None => Ok(default),
        Some(value) if range.contains(&value) => Ok(value),
        Some(value) => Err(error(what, format!("{value}: must be {} to {}", range.start(), range.end()))),
    };
    let interval_ms = ranged(health.interval_ms, "interval_ms", DEFAULT_HEALTH_INTERVAL_MS, 100..=3_600_000)?;
    let timeout_ms = ranged(health.timeout_ms, "timeout_ms", DEFAULT_HEALTH_TIMEOUT_MS.min(interval_ms), 10..=interval_ms)?;
    let rise = ranged(health.rise, "rise", 2, 1..=100)?;
    let fall = ranged(health.fall, "fall", 3, 1..=100)?;
    let port = match health.port {
        None => None,
        Some(port) => Some(ranged(Some(port), "port", 0, 1..=65_535)? as u16),
    };
    let agent_port = match health.agent_port {
        None => None,
        Some(port) => Some(ranged(Some(port), "agent_port", 0, 1..=65_535)? as u16),
    };
    let http = match &health.http_path {
        None => {
            if health.http_host.is_some() || health.http_status.is_some() {
                return Err(error("http_path", "http_host and http_status need http_path (the check's request)".into()));
            }
            None
        }
        Some(path) => {
            // Written into the request line as it is: no room for a second line.
            if !path.starts_with('/') || path.len() > 512 || !path.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(error("http_path", format!("{path:?}: a path from /, printable ASCII without spaces, 512 bytes at most")));
            }
            if let Some(host) = &health.http_host {
                if host.is_empty() || host.len() > 255 || !host.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(error("http_host", format!("{host:?}: a host name, printable ASCII without spaces")));
                }
            }
            let status = ranged(health.http_status, "http_status", 200, 100..=599)? as u16;
            Some(HttpCheck { path: path.clone(), host: health.http_host.clone(), status })
        }
    };
    Ok(HealthCheck {
        interval_ns: interval_ms as u64 * 1_000_000,
        timeout_ns: timeout_ms as u64 * 1_000_000,
        rise: rise as u32,
        fall: fall as u32,
        port,
        http,
        agent_port,
    })
}

/// `box.health_source`, or the SNAT address; every checked backend needs one of its family.
fn health_sources(
    places: &Places<'_>,
    ports: &RawBox,
    mode: &AddressMode,
    raw_pools: &[Spanned<RawPool>],
    pools: &[Pool],
) -> Result<Vec<IpAddr>, ConfigError> {
    let mut sources: Vec<IpAddr> = Vec::new();
    if let Some(raw) = &ports.health_source {
        let texts = match raw.get_ref() {
            RawAddresses::One(one) => vec![one.clone()],
            RawAddresses::Many(many) => many.clone(),
        };
        for text in texts {
            let address: IpAddr = text
                .parse()
                .map_err(|_| places.error(Some(raw.span()), "box.health_source", format!("not an IP address: {text:?}")))?;
            if sources.iter().any(|source| source.is_ipv4() == address.is_ipv4()) {
                return Err(places.error(Some(raw.span()), "box.health_source", "one address per family (IPv4, IPv6)"));
            }
            sources.push(address);
        }
    } else if let AddressMode::Snat(address) = mode {
        sources.push(*address);
    }
    let mut used = false;
    for (index, (raw, pool)) in raw_pools.iter().zip(pools).enumerate() {
        let (Some(span), Some(_)) = (raw.get_ref().health.as_ref().map(|h| h.span()), &pool.health) else { continue };
        used = true;
        for backend in &pool.backends {
            if !sources.iter().any(|source| source.is_ipv4() == backend.is_ipv4()) {
                let family = if backend.is_ipv4() { "IPv4" } else { "IPv6" };
                return Err(places.error(
                    Some(span),
                    format!("pool[{index}].health"),
                    format!(
                        "backend {backend} is {family}: set box.health_source to an {family} address of the box on the \
                         server network, the checks' source"
                    ),
                ));
            }
        }
    }
    Ok(if used { sources } else { Vec::new() })
}

/// A DNS name (letters, digits, hyphens, dots) or `*.` followed by one.
fn valid_sni_pattern(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[box]
outside = "outside"
inside = "inside"
mode = "snat"
snat_address = "198.18.2.1"

[[listener]]
vip = "198.18.1.100:443"
pool = "web"
alpn = ["h2", "http/1.1"]
certificates = [
  { names = ["www.example.test", "*.Example.test"], chain = "certs/a.pem", key = "certs/a.key" },
]
default_certificate = 0

[[pool]]
name = "web"
backends = ["198.18.2.10:80", "[2001:db8::10]:80"]
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/cutls/cutls.toml"), text)
    }

    #[test]
    fn a_good_file() {
        let config = parse(GOOD).unwrap();
        assert_eq!(config.mode, AddressMode::Snat("198.18.2.1".parse().unwrap()));
        assert_eq!(config.io, IoKind::Xdp);
        let listener = &config.listeners[0];
        assert_eq!(listener.vip, "198.18.1.100:443".parse().unwrap());
        assert_eq!(listener.pool, 0);
        assert_eq!(listener.hold_back, HoldBack::CutThrough);
        assert_eq!(listener.alpn, ["h2", "http/1.1"]);
        assert_eq!(listener.certificates[0].names, ["www.example.test", "*.example.test"]);
        assert_eq!(listener.certificates[0].chain, Path::new("/etc/cutls/certs/a.pem"));
        assert_eq!(config.pools[0].backends[1], "[2001:db8::10]:80".parse().unwrap());
    }

    #[test]
    fn management_and_idle_timeout() {
        let config = parse(GOOD).unwrap();
        assert_eq!(config.management.socket.as_deref(), Some(Path::new(DEFAULT_MANAGEMENT_SOCKET)));
        assert_eq!((config.management.metrics, config.idle_timeout), (None, DEFAULT_IDLE_TIMEOUT));
        let text = GOOD.replace("mode = \"snat\"", "idle_timeout = 60\nmode = \"snat\"")
            + "\n[management]\nsocket = \"run/cutls.sock\"\nmetrics = \"127.0.0.1:9464\"\n";
        let config = parse(&text).unwrap();
        assert_eq!(config.management.socket.as_deref(), Some(Path::new("/etc/cutls/run/cutls.sock")));
        assert_eq!(config.management.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(config.idle_timeout, std::time::Duration::from_secs(60));
        let logged = parse(&(GOOD.to_string() + "\n[log]\nlevel = \"debug\"\nformat = \"json\"\n")).unwrap();
        assert_eq!(logged.log, LogSettings { level: LogLevel::Debug, format: LogFormat::Json });
        assert_eq!(parse(GOOD).unwrap().log, LogSettings { level: LogLevel::Info, format: LogFormat::Text });
        let error = error_of(&(GOOD.to_string() + "\n[log]\nlevel = \"loud\"\n"));
        assert_eq!((error.line, error.field.as_deref()), (Some(22), Some("log.level")), "{error}");
        let off = parse(&(GOOD.to_string() + "\n[management]\nsocket = \"\"\n")).unwrap();
        assert_eq!(off.management.socket, None);

        let error = error_of(&(GOOD.to_string() + "\n[management]\nmetrics = \"localhost\"\n"));
        assert_eq!((error.line, error.field.as_deref()), (Some(22), Some("management.metrics")));
        let error = error_of(&(GOOD.to_string() + "\n[management]\nsockets = \"x\"\n"));
        assert_eq!(error.line, Some(22), "{error}");
        let error = error_of(&GOOD.replace("mode = \"snat\"", "idle_timeout = 0\nmode = \"snat\""));
        assert_eq!((error.line, error.field.as_deref()), (Some(5), Some("box.idle_timeout")));
    }

    #[test]
    fn backends_with_weights_limits_and_balancing() {
        let text = GOOD.replace(
            "backends = [\"198.18.2.10:80\", \"[2001:db8::10]:80\"]",
            "balance = \"least-sessions\"\nbackends = [\"198.18.2.10:80\", { address = \"[2001:db8::10]:80\", weight = 3, max_sessions = 500 }]",
        );
        let pool = &parse(&text).unwrap().pools[0];
        assert_eq!(pool.balance, Balance::LeastSessions);
        assert_eq!(pool.backends[1], "[2001:db8::10]:80".parse().unwrap());
        assert_eq!(pool.options, [BackendOptions::default(), BackendOptions { weight: 3, max_sessions: Some(500) }]);
        assert_eq!(parse(GOOD).unwrap().pools[0].balance, Balance::LeastLoad);

        let error = error_of(&text.replace("weight = 3", "weight = 0"));
        assert_eq!((error.line, error.field.as_deref()), (Some(20), Some("pool[0].backends[1].weight")), "{error}");
        let error = error_of(&text.replace("max_sessions = 500", "max_sessions = -1"));
        assert_eq!(error.field.as_deref(), Some("pool[0].backends[1].max_sessions"), "{error}");
        let error = error_of(&text.replace("[2001:db8::10]:80\", weight", "nowhere\", weight"));
        assert_eq!(error.field.as_deref(), Some("pool[0].backends[1].address"), "{error}");
        let error = error_of(&text.replace("least-sessions", "fastest"));
        assert_eq!((error.line, error.field.as_deref()), (Some(19), Some("pool[0].balance")), "{error}");
        let error = error_of(&text.replace("[2001:db8::10]:80", "198.18.2.10:80"));
        assert!(error.message.contains("twice"), "{error}");
        let error = error_of(&text.replace("weight = 3", "weight = 3, colour = 1"));
        assert_eq!(error.line, Some(20), "{error}");
    }

    fn error_of(text: &str) -> ConfigError {
        parse(text).unwrap_err()
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let error = error_of(&GOOD.replace("198.18.2.10:80", "198.18.2.10"));
        assert_eq!(error.line, Some(19));
        assert_eq!(error.field.as_deref(), Some("pool[0].backends[0]"));
        assert_eq!(error.to_string(), "/etc/cutls/cutls.toml:19: pool[0].backends[0]: not an address:port: \"198.18.2.10\"");

        let error = error_of(&GOOD.replace("pool = \"web\"", "pool = \"api\""));
        assert_eq!((error.line, error.field.as_deref()), (Some(10), Some("listener[0].pool")));

        let error = error_of(&GOOD.replace("mode = \"snat\"", "mode = \"nat\""));
        assert_eq!((error.line, error.field.as_deref()), (Some(5), Some("box.mode")));

        let error = error_of(&GOOD.replace("www.example.test", "www example"));
        assert_eq!(error.field.as_deref(), Some("listener[0].certificates[0].names[0]"));

        let error = error_of(&GOOD.replace("default_certificate = 0", "default_certificate = 3"));
        assert_eq!(error.line, Some(15));
    }

    #[test]
    fn health_checks() {
        let text = |mode: &str, health: &str| {
            format!(
                "[box]\noutside = \"o\"\ninside = \"i\"\n{mode}\n\n[[pool]]\nname = \"web\"\n\
                 backends = [\"198.18.2.10:80\", \"[2001:db8::10]:80\"]\n[pool.health]\n{health}\n"
            )
        };
        let both = "health_source = [\"198.18.2.250\", \"2001:db8::250\"]";
        let config = parse(&text(both, "interval_ms = 500\nhttp_path = \"/healthz\"\nport = 8080")).unwrap();
        assert_eq!(config.health_sources, vec!["198.18.2.250".parse::<IpAddr>().unwrap(), "2001:db8::250".parse().unwrap()]);
        assert_eq!(
            config.pools[0].health,
            Some(HealthCheck {
                interval_ns: 500_000_000,
                timeout_ns: 500_000_000,
                rise: 2,
                fall: 3,
                port: Some(8080),
                http: Some(HttpCheck { path: "/healthz".into(), host: None, status: 200 }),
                agent_port: None,
            })
        );
        let config = parse(&text(both, "agent_port = 9999")).unwrap();
        assert_eq!(config.pools[0].health.as_ref().and_then(|check| check.agent_port), Some(9999));
        assert_eq!(error_of(&text(both, "agent_port = 0")).field.as_deref(), Some("pool[0].health.agent_port"));
        let config = parse(&text(both, "")).unwrap();
        let check = config.pools[0].health.clone().unwrap();
        assert_eq!((check.interval_ns, check.timeout_ns, check.http), (2_000_000_000, 1_000_000_000, None));
        // Without checks, no source is used.
        assert!(parse(&text(both, "").replace("[pool.health]\n", "")).unwrap().health_sources.is_empty());

        let error = error_of(&text("", ""));
        assert_eq!((error.line, error.field.as_deref()), (Some(9), Some("pool[0].health")), "{error}");
        assert!(error.message.contains("box.health_source"), "{error}");
        // SNAT mode checks from the SNAT address, which has one family.
        let error = error_of(&text("mode = \"snat\"\nsnat_address = \"198.18.2.1\"", ""));
        assert!(error.message.contains("IPv6"), "{error}");
        for (health, field) in [
            ("interval_ms = 50", "pool[0].health.interval_ms"),
            ("interval_ms = 500\ntimeout_ms = 600", "pool[0].health.timeout_ms"),
            ("fall = 0", "pool[0].health.fall"),
            ("port = 70000", "pool[0].health.port"),
            ("http_status = 200", "pool[0].health.http_path"),
            ("http_path = \"/a b\"", "pool[0].health.http_path"),
            ("http_path = \"/\"\nhttp_status = 99", "pool[0].health.http_status"),
        ] {
            let error = error_of(&text(both, health));
            assert_eq!((error.line, error.field.as_deref()), (Some(9), Some(field)), "{health}: {error}");
        }
        let error = error_of(&text("health_source = [\"198.18.2.250\", \"198.18.2.251\"]", ""));
        assert_eq!((error.line, error.field.as_deref()), (Some(4), Some("box.health_source")), "{error}");
        let error = error_of(&text(both, "colour = 1"));
        assert_eq!(error.line, Some(10), "{error}");
    }

    #[test]
    fn poll_loops_and_handshake_workers() {
        let config = parse(GOOD).unwrap();
        assert_eq!((config.cores, config.handshake_threads), (None, DEFAULT_HANDSHAKE_THREADS));
        let with = |lines: &str| GOOD.replace("inside = \"inside\"", &format!("inside = \"inside\"\n{lines}"));
        let config = parse(&with("cores = 4\nhandshake_threads = 0")).unwrap();
        assert_eq!((config.cores, config.handshake_threads), (Some(4), 0));
        let error = error_of(&with("cores = 0"));
        assert_eq!((error.line, error.field.as_deref()), (Some(5), Some("box.cores")), "{error}");
        let error = error_of(&with("handshake_threads = -1"));
        assert_eq!((error.line, error.field.as_deref()), (Some(5), Some("box.handshake_threads")), "{error}");
    }

    #[test]
    fn handshake_timeout() {
        assert_eq!(parse(GOOD).unwrap().handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT);
        let with = |lines: &str| GOOD.replace("inside = \"inside\"", &format!("inside = \"inside\"\n{lines}"));
        assert_eq!(parse(&with("handshake_timeout = 5")).unwrap().handshake_timeout, std::time::Duration::from_secs(5));
        for bad in ["handshake_timeout = 0", "handshake_timeout = 301"] {
            let error = error_of(&with(bad));
            assert_eq!((error.line, error.field.as_deref()), (Some(5), Some("box.handshake_timeout")), "{error}");
        }
    }

    #[test]
    fn session_limits() {
        let config = parse(GOOD).unwrap();
        assert_eq!((config.max_sessions, config.max_sessions_per_client, config.syn_cookies_after), (DEFAULT_MAX_SESSIONS, 0, DEFAULT_SYN_COOKIES_AFTER));
        let with = |lines: &str| GOOD.replace("inside = \"inside\"", &format!("inside = \"inside\"\n{lines}"));
        let config = parse(&with("max_sessions = 1000\nmax_sessions_per_client = 10\nsyn_cookies_after = 0")).unwrap();
        assert_eq!((config.max_sessions, config.max_sessions_per_client, config.syn_cookies_after), (1000, 10, 0));
        for (bad, field) in [("max_sessions = 0", "box.max_sessions"), ("max_sessions_per_client = -1", "box.max_sessions_per_client")] {
            let error = error_of(&with(bad));
            assert_eq!((error.line, error.field.as_deref()), (Some(5), Some(field)), "{error}");
        }
    }

    #[test]
    fn congestion_control() {
        use cutls_dataplane::session::CongestionControl;
        assert_eq!(parse(GOOD).unwrap().congestion, CongestionControl::Bbr);
        let with = |lines: &str| GOOD.replace("inside = \"inside\"", &format!("inside = \"inside\"\n{lines}"));
        assert_eq!(parse(&with("congestion_control = \"reno\"")).unwrap().congestion, CongestionControl::Reno);
        let error = error_of(&with("congestion_control = \"cubic\""));
        assert_eq!((error.line, error.field.as_deref()), (Some(5), Some("box.congestion_control")), "{error}");
    }

    #[test]
    fn syntax_and_unknown_fields_have_lines() {
        let error = error_of(&GOOD.replace("alpn = [", "alpn = [[["));
        assert_eq!(error.line, Some(12));
        let error = error_of(&GOOD.replace("inside = \"inside\"", "inside = \"inside\"\nbogus = 1"));
        assert_eq!(error.line, Some(5));
        assert!(error.message.contains("bogus"), "{error}");
    }

    #[test]
    fn listeners_need_certificates_unless_passthrough() {
        let text = "[box]\noutside = \"a\"\ninside = \"b\"\n[[listener]]\nvip = \"198.18.1.1:443\"\npool = \"p\"\n[[pool]]\nname = \"p\"\nbackends = [\"198.18.2.2:443\"]\n";
        assert_eq!(error_of(text).field.as_deref(), Some("listener[0].certificates"));
        let passthrough = text.replace("backends", "passthrough = true\nbackends");
        assert!(parse(&passthrough).is_ok());
    }

    /// Line numbers in the tests below count from the first line of this text.
    const WITH_PASSTHROUGH: &str = r#"[box]
outside = "outside"
inside = "inside"

[[listener]]
vip = "198.18.1.100:443"
pool = "web"
certificates = [{ names = ["www.example.test"], chain = "a.pem", key = "a.key" }]
passthrough_pool = "tls-web"

[[pool]]
name = "web"
backends = ["198.18.2.10:80"]

[[pool]]
name = "tls-web"
passthrough = true
backends = ["198.18.2.20:443"]
"#;

    #[test]
    fn a_listener_names_a_passthrough_pool() {
        let config = parse(WITH_PASSTHROUGH).unwrap();
        assert_eq!(config.listeners[0].pool, 0);
        assert_eq!(config.listeners[0].passthrough_pool, Some(1));
        assert!(config.pools[1].passthrough);

        // Optional: without it, nothing falls back.
        let config = parse(&WITH_PASSTHROUGH.replace("passthrough_pool = \"tls-web\"\n", "")).unwrap();
        assert_eq!(config.listeners[0].passthrough_pool, None);
        assert_eq!(parse(GOOD).unwrap().listeners[0].passthrough_pool, None);

        // A passthrough pool as the main pool stays allowed, without certificates.
        let text = WITH_PASSTHROUGH
            .replace("pool = \"web\"", "pool = \"tls-web\"")
            .replace("certificates = [{ names = [\"www.example.test\"], chain = \"a.pem\", key = \"a.key\" }]\n", "")
            .replace("passthrough_pool = \"tls-web\"\n", "");
        let config = parse(&text).unwrap();
        assert_eq!((config.listeners[0].pool, config.listeners[0].passthrough_pool), (1, None));
    }

    #[test]
    fn passthrough_pool_errors_name_line_and_field() {
        let error = error_of(&WITH_PASSTHROUGH.replace("passthrough_pool = \"tls-web\"", "passthrough_pool = \"nope\""));
        assert_eq!((error.line, error.field.as_deref()), (Some(9), Some("listener[0].passthrough_pool")));
        assert_eq!(error.message, "no pool named \"nope\"");

        let error = error_of(&WITH_PASSTHROUGH.replace("passthrough_pool = \"tls-web\"", "passthrough_pool = \"web\""));
        assert_eq!((error.line, error.field.as_deref()), (Some(9), Some("listener[0].passthrough_pool")));
        assert_eq!(
            error.to_string(),
            "/etc/cutls/cutls.toml:9: listener[0].passthrough_pool: pool \"web\" is not passthrough = true"
        );

        let error = error_of(&WITH_PASSTHROUGH.replace("pool = \"web\"", "pool = \"tls-web\""));
        assert_eq!((error.line, error.field.as_deref()), (Some(9), Some("listener[0].passthrough_pool")));
        assert_eq!(
            error.to_string(),
            "/etc/cutls/cutls.toml:9: listener[0].passthrough_pool: the listener's pool is already passthrough"
        );

        // A misspelt key is still refused by serde, with its line.
        let error = error_of(&WITH_PASSTHROUGH.replace("passthrough_pool =", "passthru_pool ="));
        assert_eq!(error.line, Some(9));
        assert!(error.message.contains("passthru_pool"), "{error}");
    }

    #[test]
    fn a_reload_may_change_listeners_pools_and_limits_but_not_the_ports() {
        let running = parse(GOOD).unwrap();
        let path = Path::new("/etc/cutls/cutls.toml");
        let reloaded = |text: &str| parse(text).unwrap().check_reloadable(&running, path, text);
        let text = GOOD.replace("\"198.18.2.10:80\", ", "").replace("mode = \"snat\"", "idle_timeout = 30\nmode = \"snat\"")
            + "\n[[listener]]\nvip = \"198.18.1.101:443\"\npool = \"web\"\n\
               certificates = [{ names = [\"b.test\"], chain = \"b.pem\", key = \"b.key\" }]\n";
        reloaded(&text).unwrap();

        let error = reloaded(&GOOD.replace("inside = \"inside\"", "inside = \"eth1\"")).unwrap_err();
        assert_eq!((error.line, error.field.as_deref()), (Some(4), Some("box.inside")), "{error}");
        let error = reloaded(&GOOD.replace("198.18.2.1\"", "198.18.2.2\"")).unwrap_err();
        assert_eq!((error.line, error.field.as_deref()), (Some(6), Some("box.snat_address")), "{error}");
        let error = reloaded(&(GOOD.to_string() + "\n[management]\nsocket = \"\"\n")).unwrap_err();
        assert_eq!((error.line, error.field.as_deref()), (Some(22), Some("management.socket")), "{error}");
        // A setting left to its default has no line; the field is still named.
        let error = reloaded(&GOOD.replace("\nmode = \"snat\"", "\ncores = 2\nmode = \"snat\"").replace("[box]", "[box]\n")).unwrap_err();
        assert_eq!((error.line, error.field.as_deref()), (Some(6), Some("box.cores")), "{error}");
        // A setting left to its default has no line; the field is still named.
        let error = reloaded(&GOOD.replace("mode = \"snat\"\nsnat_address = \"198.18.2.1\"", "")).unwrap_err();
        assert_eq!((error.line, error.field.as_deref()), (None, Some("box.mode")), "{error}");
    }
}
