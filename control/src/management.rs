//! The management protocol: what `cutlsctl` asks the running box over its Unix socket, one
//! JSON object per line, and what the box answers, one JSON object per line
//! (docs/management.md). Also the socket itself and the Prometheus HTTP listener: each
//! connection gets a thread of its own that hands the request to the control thread and waits
//! for its answer, so a slow or stuck client holds nothing but its own thread.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};

/// A request, as `{"command": "show-sessions", "backend": "10.0.0.2:8080"}`. (Variants without
/// fields are written `{}`: serde refuses unknown fields only in struct variants.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    ShowStats {},
    ShowSessions {
        /// Only sessions to this backend (`ADDRESS:PORT`, or `POOL/ADDRESS:PORT`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backend: Option<String>,
        /// Only sessions from this client address.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        /// Only sessions of this listener (its VIP, `ADDRESS:PORT`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        listener: Option<String>,
    },
    ShowSession {
        id: u64,
    },
    ShowBackends {},
    Backend {
        action: BackendAction,
        /// `POOL/ADDRESS:PORT` or `ADDRESS:PORT`.
        backend: String,
    },
    SessionKill {
        id: u64,
    },
    ShowMetrics {},
    /// Read the configuration file again (as SIGHUP does).
    Reload {},
    /// Set the log's level, or (without one) say it.
    LogLevel {
        #[serde(default)]
        level: Option<String>,
    },
    /// Test hook: makes a poll loop panic (refused unless the box runs with
    /// `CUTLS_TEST_HOOKS` set).
    DebugPanicLoop {
        #[serde(rename = "loop")]
        loop_index: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendAction {
    /// No new sessions; those it has finish.
    Drain,
    /// Back in rotation.
    Enable,
    /// No new sessions, and those it has are reset.
    Disable,
}

/// An answer: `{"reply": "sessions", "sessions": [...]}` or `{"reply": "error", "error": "..."}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    Stats(Stats),
    Sessions { sessions: Vec<SessionRow> },
    Session { session: SessionRow },
    Backends { backends: Vec<BackendRow> },
    Done { message: String },
    Metrics { text: String },
    Error { error: String },
}

/// `show stats`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub version: String,
    pub uptime_seconds: f64,
    /// Live sessions in the control thread's database.
    pub sessions: u64,
    pub loops: Vec<LoopRow>,
    /// The engines' counters summed over the loops (docs/operations.md), and the loops' own.
    pub counters: BTreeMap<String, u64>,
    /// What the control thread itself counted (reports lost to a full channel, ...).
    pub control: BTreeMap<String, u64>,
}

/// One poll loop in `show stats`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoopRow {
    pub index: usize,
    /// Live sessions, as the loop last reported.
    pub sessions: u64,
    /// How long ago its last report came; a loop that stops turning stops reporting.
    pub last_report_ms: u64,
    /// No report for over [`crate::control_plane::STALLED_AFTER`].
    pub stalled: bool,
    /// Times the loop panicked and started again (with no sessions).
    pub restarts: u64,
}

/// One session in `show sessions` and `show session`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionRow {
    pub id: u64,
    /// The poll loop that owns it.
    #[serde(rename = "loop")]
    pub loop_index: usize,
    pub listener: String,
    pub pool: String,
    pub client: String,
    pub backend: String,
    /// Where the box talks to the backend from (the client in transparent mode).
    pub backend_source: String,
    pub server_name: Option<String>,
    pub alpn: Option<String>,
    pub tls_version: Option<String>,
    pub suite: Option<String>,
    /// handshake, connecting, spliced, passthrough, closing; or ended.
    pub state: String,
    pub age_seconds: f64,
    pub idle_seconds: f64,
    /// Plaintext bytes to the backend (requests) and to the client (responses).
    pub to_backend_bytes: u64,
    pub to_client_bytes: u64,
    /// The next record sequence number toward the client.
    pub records_to_client: u64,
    /// A spliced session's TCP state, as sequence numbers on the wire: toward the client the
    /// box's next and the client's acknowledgement (the one the box waits for is the next),
    /// the box's acknowledgement of the client; the same toward the backend; the next client
    /// record's sequence number.
    #[serde(default)]
    pub tcp: Option<TcpRow>,
    /// Why it ended, for a session that has (`show session` keeps the last ones).
    pub end_reason: Option<String>,
}

/// [`SessionRow::tcp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpRow {
    pub to_client_next_seq: u32,
    pub client_acked_seq: u32,
    pub ack_to_client: u32,
    pub to_backend_next_seq: u32,
    pub backend_acked_seq: u32,
    pub ack_to_backend: u32,
    pub records_from_client: u64,
}

/// One backend in `show backends`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendRow {
    pub pool: String,
    pub address: String,
    /// enabled, draining, disabled.
    pub admin: String,
    /// It takes new sessions: enabled, not down by its checks, not drained by its agent.
    pub in_rotation: bool,
    /// The pool's balancing: round-robin, least-sessions, least-load.
    pub balance: String,
    pub weight: u32,
    pub max_sessions: Option<u64>,
    /// The measured response time (least-load's peak-EWMA; the slowest loop's), if any answer
    /// was measured.
    pub response_ms: Option<f64>,
    /// What the health checks say: up, down, or unchecked (its pool has no `[pool.health]`).
    pub health: String,
    /// The last check's outcome ("passed in 0.4 ms", "connection refused", ...).
    pub last_check: Option<String>,
    pub checks: u64,
    pub check_failures: u64,
    /// What its agent last said (`75%`, `drain`, `down`), if it has one and it answered.
    pub agent: Option<String>,
    /// The agent's last answer as it came, or why there was none.
    pub agent_last: Option<String>,
    pub sessions_active: u64,
    pub sessions_total: u64,
    pub to_backend_bytes: u64,
    pub to_client_bytes: u64,
}

/// A request from a management connection and where its answer goes.
pub struct Pending {
    pub request: Request,
    pub reply: Sender<Reply>,
}

/// How long a management connection waits for the control thread's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request line taken (a request is a few dozen bytes).
const MAX_REQUEST: u64 = 64 * 1024;

/// Listens on the Unix socket at `path` (mode 0600, its folder made if missing; a socket left
/// by a box that is gone is replaced, one a live box answers on is not) and hands every
/// request to `requests`.
pub fn serve_socket(path: &Path, requests: Sender<Pending>) -> io::Result<std::thread::JoinHandle<()>> {
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", folder.display())))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{}: another cutls answers on this management socket", path.display()),
            ));
        }
        std::fs::remove_file(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new().name("cutls-mgmt".into()).spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let requests = requests.clone();
            // A thread per connection: operators open a handful.
            let _ = std::thread::Builder::new().name("cutls-mgmt-conn".into()).spawn(move || answer_lines(stream, &requests));
        }
    })
}

/// Answers each request line of `stream` until it closes.
fn answer_lines(stream: UnixStream, requests: &Sender<Pending>) {
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream.take(MAX_REQUEST));
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(request) => ask(requests, request),
            Err(error) => Reply::Error { error: format!("not a request: {error}") },
        };
        let Ok(mut text) = serde_json::to_string(&reply) else { return };
        text.push('\n');
        if writer.write_all(text.as_bytes()).is_err() {
            return;
        }
        // The byte limit is per request, not per connection.
        reader.get_mut().set_limit(MAX_REQUEST);
    }
}

/// Hands `request` to the control thread and waits for its answer.
pub fn ask(requests: &Sender<Pending>, request: Request) -> Reply {
    let (reply, answer) = crossbeam_channel::bounded(1);
    if requests.send(Pending { request, reply }).is_err() {
        return Reply::Error { error: "the box is stopping".into() };
    }
    answer_within(&answer)
}

fn answer_within(answer: &Receiver<Reply>) -> Reply {
    answer.recv_timeout(ANSWER_TIMEOUT).unwrap_or_else(|_| Reply::Error { error: "the control thread did not answer".into() })
}

/// Serves `GET /metrics` (Prometheus text) on `address`; anything else gets a 404.
pub fn serve_metrics(address: SocketAddr, requests: Sender<Pending>) -> io::Result<std::thread::JoinHandle<()>> {
    let listener = TcpListener::bind(address).map_err(|e| io::Error::new(e.kind(), format!("metrics listener {address}: {e}")))?;
    std::thread::Builder::new().name("cutls-metrics".into()).spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut buffer = [0u8; 1024];
            // The request head, at most 8 KiB.
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buffer[..n]),
                }
            }
            let first = String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_string();
            let response = if first.starts_with("GET /metrics ") || first == "GET /metrics" {
                match ask(&requests, Request::ShowMetrics {}) {
                    Reply::Metrics { text } => http_response("200 OK", "text/plain; version=0.0.4", &text),
                    other => http_response("503 Service Unavailable", "text/plain", &format!("{other:?}\n")),
                }
            } else {
                http_response("404 Not Found", "text/plain", "only GET /metrics here\n")
            };
            let _ = stream.write_all(response.as_bytes());
        }
    })
}

fn http_response(status: &str, content_type: &str, body: &str) -> String {
    format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
}

/// The client side, for `cutlsctl` and tests: one request, one answer.
pub fn request(socket: &Path, request: &Request) -> io::Result<Reply> {
    let stream = UnixStream::connect(socket).map_err(|e| {
        io::Error::new(e.kind(), format!("{}: {e} (is cutls running? --socket PATH names another)", socket.display()))
    })?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT + Duration::from_secs(1)))?;
    let mut writer = stream.try_clone()?;
    let mut text = serde_json::to_string(request).map_err(io::Error::other)?;
    text.push('\n');
    writer.write_all(text.as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("answer {line:?}: {e}")))
}

/// The socket `cutlsctl` talks to without `--socket`.
pub fn default_socket() -> PathBuf {
    PathBuf::from(crate::config::DEFAULT_MANAGEMENT_SOCKET)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_object_each() {
        let cases = [
            (r#"{"command":"show-stats"}"#, Request::ShowStats {}),
            (
                r#"{"command":"show-sessions","backend":"10.0.0.2:8080"}"#,
                Request::ShowSessions { backend: Some("10.0.0.2:8080".into()), client: None, listener: None },
            ),
            (r#"{"command":"session-kill","id":7}"#, Request::SessionKill { id: 7 }),
            (
                r#"{"command":"backend","action":"drain","backend":"web/10.0.0.2:8080"}"#,
                Request::Backend { action: BackendAction::Drain, backend: "web/10.0.0.2:8080".into() },
            ),
        ];
        for (text, request) in cases {
            assert_eq!(serde_json::from_str::<Request>(text).unwrap(), request, "{text}");
            assert_eq!(serde_json::to_string(&request).unwrap(), text);
        }
    }

    #[test]
    fn unknown_commands_and_fields_are_refused() {
        for text in [r#"{"command":"reboot"}"#, r#"{"command":"show-stats","x":1}"#, r#"{"id":1}"#, "show stats"] {
            assert!(serde_json::from_str::<Request>(text).is_err(), "{text}");
        }
    }
}
