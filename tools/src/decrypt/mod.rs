//! `cutls decrypt --keylog KEYLOG CAPTURE --out DIR`: offline decryption of TLS connections in a
//! capture, segment by segment, with the same record engine the box uses.
//!
//! Every TCP connection is followed in capture order. Handshake records in the clear are read
//! as far as needed (ClientHello random, ServerHello version and suite); from the first
//! protected record on, each segment goes to a [`RecordOpener`] at its stream offset and is
//! decrypted where it lies: no TCP reassembly. Segments the opener cannot take yet (they lie
//! beyond a record header not seen) wait in a small per-direction list and are offered again
//! after every segment, as the box would get them again from TCP retransmission. TLS 1.3
//! handshake records are opened with the handshake secrets so the switch to application keys is
//! found; KeyUpdate, 0-RTT early data and TLS 1.2 renegotiation are followed.
//!
//! Output: for each connection `DIR/<client ip>_<port>-<server ip>_<port>.c2s` and `.s2c` with
//! the application data of each direction, and one JSON line on stdout.

mod compression;
mod connection;
pub mod handshake;
pub mod keylog;

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use cutls_dataplane::pcap::CaptureReader;
use cutls_dataplane::wire::{parse_frame, TcpFlags};

use crate::args::Args;
use connection::{Connection, Segment};
pub use connection::Endpoint;
use keylog::KeyLog;

const USAGE: &str = "usage: cutls decrypt --keylog KEYLOG CAPTURE --out DIR

Decrypts the TLS connections of a pcap or pcapng capture with an NSS key log (SSLKEYLOGFILE).
pcapng Decryption Secrets Blocks are used as well. Writes DIR/<client>-<server>.c2s and .s2c
with each direction's application data and prints one JSON line per connection.
Exit status: 0 when the capture was read (whatever each connection's status), 1 when it could
not be, 2 for bad arguments.
";

pub fn main(argv: &[String]) -> ExitCode {
    let mut args = match Args::parse(argv, &["keylog", "out"]) {
        Ok(args) => args,
        Err(error) => return usage_error(&error.to_string()),
    };
    if args.switch("help") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let keylog = args.value("keylog");
    let out = args.value("out");
    let capture = args.positional();
    let (keylog, out, capture) = match (keylog, out, capture) {
        (Ok(keylog), Ok(Some(out)), Some(capture)) => (keylog, out, capture),
        (Err(error), _, _) | (_, Err(error), _) => return usage_error(&error.to_string()),
        (_, Ok(None), _) => return usage_error("--out DIR is required"),
        (_, _, None) => return usage_error("a capture file is required"),
    };
    if let Err(error) = args.finish() {
        return usage_error(&error.to_string());
    }
    let options = Options { capture: PathBuf::from(capture), keylog: keylog.map(PathBuf::from), out: PathBuf::from(out) };
    let mut stdout = std::io::stdout().lock();
    match run(&options, &mut stdout) {
        Ok(summary) => {
            eprintln!(
                "cutls decrypt: {} connections, {} frames ({} not TCP/IP, {} unreadable){}",
                summary.connections,
                summary.frames,
                summary.other_frames,
                summary.bad_frames,
                summary.capture_error.map(|e| format!("; capture ends early: {e}")).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("cutls decrypt: {error}");
            ExitCode::from(1)
        }
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("cutls decrypt: {message}\n\n{USAGE}");
    ExitCode::from(2)
}

pub struct Options {
    pub capture: PathBuf,
    pub keylog: Option<PathBuf>,
    pub out: PathBuf,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub connections: usize,
    pub frames: usize,
    pub other_frames: usize,
    pub bad_frames: usize,
    pub capture_error: Option<String>,
}

/// Decrypts `options.capture`, writing files and one JSON line per connection to `report`.
pub fn run(options: &Options, report: &mut dyn Write) -> Result<Summary, String> {
    let bytes = fs::read(&options.capture).map_err(|e| format!("{}: {e}", options.capture.display()))?;
    let mut keys = KeyLog::default();
    if let Some(path) = &options.keylog {
        let text = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        keys.add_text(&String::from_utf8_lossy(&text));
    }
    let mut reader = CaptureReader::new(&bytes).map_err(|e| format!("{}: {e}", options.capture.display()))?;
    fs::create_dir_all(&options.out).map_err(|e| format!("{}: {e}", options.out.display()))?;

    let mut summary = Summary::default();
    let mut connections: Vec<Connection> = Vec::new();
    let mut by_tuple: HashMap<(Endpoint, Endpoint), usize> = HashMap::new();
    let mut secrets_seen = 0;
    while let Some(item) = reader.next() {
        // Key-log blocks come before the packets they decrypt: take new ones as they pass.
        let secrets = reader.secrets();
        for block in &secrets[secrets_seen..] {
            if let Some(text) = block.tls_key_log() {
                keys.add_text(text);
            }
        }
        secrets_seen = secrets.len();
        let record = match item {
            Ok(record) => record,
            Err(error) => {
                summary.capture_error = Some(error.to_string());
                break;
            }
        };
        summary.frames += 1;
        let frame = match parse_frame(record.link_type, record.data) {
            Ok(frame) => frame,
            Err(_) => {
                summary.bad_frames += 1;
                continue;
            }
        };
        let (Some(ip), Some(tcp)) = (frame.ip(), frame.tcp()) else {
            summary.other_frames += 1;
            continue;
        };
        let source = Endpoint { address: ip.source, port: tcp.src_port };
        let destination = Endpoint { address: ip.destination, port: tcp.dst_port };
        let key = if source <= destination { (source, destination) } else { (destination, source) };
        let is_new_syn = tcp.flags.contains(TcpFlags::SYN) && !tcp.flags.contains(TcpFlags::ACK);
        let index = match by_tuple.get(&key) {
            Some(&index) if !(is_new_syn && connections[index].is_new_syn(source, tcp.seq_number.0)) => index,
            _ => {
                // A new connection: the SYN's sender is the client; without a SYN, the sender of
                // the first segment seen, corrected by the ClientHello if it comes the other way.
                connections.push(Connection::new(source, destination, is_new_syn, connections.len(), &options.out));
                by_tuple.insert(key, connections.len() - 1);
                connections.len() - 1
            }
        };
        let segment = Segment {
            source,
            seq: tcp.seq_number.0,
            syn: tcp.flags.contains(TcpFlags::SYN),
            fin: tcp.flags.contains(TcpFlags::FIN),
            rst: tcp.flags.contains(TcpFlags::RST),
            payload: tcp.payload,
        };
        connections[index].segment(&segment, &keys);
    }
    summary.connections = connections.len();
    // A 4-tuple used by several connections gets `-2`, `-3`... on its later files.
    let mut names: HashMap<String, usize> = HashMap::new();
    for mut connection in connections {
        let base = format!("{}-{}", endpoint_name(connection.client()), endpoint_name(connection.server()));
        let count = names.entry(base.clone()).or_insert(0);
        *count += 1;
        let name = if *count == 1 { base } else { format!("{base}-{count}") };
        let line = connection.finish(&options.out, &name);
        writeln!(report, "{line}").map_err(|e| format!("writing the report: {e}"))?;
    }
    Ok(summary)
}

pub fn endpoint_name(endpoint: Endpoint) -> String {
    let address = match endpoint.address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => v6.to_string().replace(':', "."),
    };
    format!("{address}_{}", endpoint.port)
}
