//! `cutlsctl`: manages a running cutls over its management socket (docs/management.md).
//! Tables for people; `--json` prints the box's answer as it came, one JSON object, for
//! scripts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use cutls_control::management::{self, BackendAction, Reply, Request, SessionRow};

#[derive(Parser)]
#[command(name = "cutlsctl", version, about = "Manage a running cutls box over its management socket")]
struct Cli {
    /// The box's management socket (`[management] socket` in its configuration).
    #[arg(long, global = true, default_value_os_t = management::default_socket())]
    socket: PathBuf,
    /// Print the box's answer as JSON (one object per line) instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the box's state.
    #[command(subcommand)]
    Show(Show),
    /// Take a backend out of rotation or put it back.
    Backend {
        #[arg(value_enum)]
        action: Action,
        /// POOL/ADDRESS:PORT or ADDRESS:PORT (as `show backends` lists them).
        backend: String,
    },
    /// Act on one session.
    #[command(subcommand)]
    Session(SessionCommand),
    /// The box's log.
    #[command(subcommand)]
    Log(LogCommand),
    /// Read the configuration file again: new listeners, certificates, pools and limits for
    /// new connections; established sessions go on. A bad file is refused (exit 1, with its
    /// file:line: field: error) and the running configuration stays. SIGHUP does the same.
    Reload,
    /// Test hooks (the box must run with CUTLS_TEST_HOOKS set).
    #[command(subcommand, hide = true)]
    Debug(DebugCommand),
    /// A live view: the counters that moved and the busiest sessions, refreshed.
    Top {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many refreshes (0: until interrupted).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
}

#[derive(Subcommand)]
enum Show {
    /// Uptime, loops and every counter.
    Stats,
    /// Live sessions, optionally only some.
    Sessions {
        /// Only those to this backend (POOL/ADDRESS:PORT or ADDRESS:PORT).
        #[arg(long)]
        backend: Option<String>,
        /// Only those from this client address.
        #[arg(long)]
        client: Option<String>,
        /// Only those of this listener (its VIP, ADDRESS:PORT).
        #[arg(long)]
        listener: Option<String>,
    },
    /// One session, live or recently ended.
    Session { id: u64 },
    /// Every backend with its state and sessions.
    Backends,
    /// The Prometheus text the metrics listener serves.
    Metrics,
}

#[derive(Subcommand)]
enum DebugCommand {
    /// Make poll loop N panic (it starts again with no sessions).
    PanicLoop { index: usize },
}

#[derive(Subcommand)]
enum LogCommand {
    /// Set the level (off, error, warn, info, debug, trace) until the next reload or restart;
    /// without one, say it.
    Level { level: Option<String> },
}

#[derive(Subcommand)]
enum SessionCommand {
    /// Reset both sides of a session.
    Kill { id: u64 },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Action {
    /// No new sessions; those it has finish.
    Drain,
    /// Back in rotation.
    Enable,
    /// No new sessions, and those it has are reset.
    Disable,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let request = match cli.command {
        Command::Show(Show::Stats) => Request::ShowStats {},
        Command::Show(Show::Sessions { backend, client, listener }) => Request::ShowSessions { backend, client, listener },
        Command::Show(Show::Session { id }) => Request::ShowSession { id },
        Command::Show(Show::Backends) => Request::ShowBackends {},
        Command::Show(Show::Metrics) => Request::ShowMetrics {},
        Command::Backend { action, backend } => {
            let action = match action {
                Action::Drain => BackendAction::Drain,
                Action::Enable => BackendAction::Enable,
                Action::Disable => BackendAction::Disable,
            };
            Request::Backend { action, backend }
        }
        Command::Session(SessionCommand::Kill { id }) => Request::SessionKill { id },
        Command::Reload => Request::Reload {},
        Command::Log(LogCommand::Level { level }) => Request::LogLevel { level },
        Command::Debug(DebugCommand::PanicLoop { index }) => Request::DebugPanicLoop { loop_index: index },
        Command::Top { interval, count } => return top(&cli.socket, Duration::from_secs_f64(interval.max(0.1)), count),
    };
    match management::request(&cli.socket, &request) {
        Ok(reply) => {
            let failed = matches!(reply, Reply::Error { .. });
            if cli.json {
                match serde_json::to_string(&reply) {
                    Ok(text) => println!("{text}"),
                    Err(error) => eprintln!("cutlsctl: {error}"),
                }
            } else {
                print_reply(&reply);
            }
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(error) => {
            eprintln!("cutlsctl: {error}");
            ExitCode::from(2)
        }
    }
}

fn print_reply(reply: &Reply) {
    match reply {
        Reply::Stats(stats) => {
            println!("cutls {}, up {:.0} s, {} live sessions", stats.version, stats.uptime_seconds, stats.sessions);
            println!();
            table(
                &["LOOP", "SESSIONS", "LAST REPORT", "STALLED", "RESTARTS"],
                stats
                    .loops
                    .iter()
                    .map(|row| {
                        vec![
                            row.index.to_string(),
                            row.sessions.to_string(),
                            format!("{} ms", row.last_report_ms),
                            row.stalled.to_string(),
                            row.restarts.to_string(),
                        ]
                    })
                    .collect(),
            );
            println!();
            // Counters that are zero say nothing: `--json` has them all.
            let rows = stats.counters.iter().filter(|(_, value)| **value != 0).map(|(name, value)| vec![name.clone(), value.to_string()]).collect();
            table(&["COUNTER", "VALUE"], rows);
        }
        Reply::Sessions { sessions } => session_table(sessions),
        Reply::Session { session } => {
            let optional = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".into());
            let mut rows = vec![
                ("id", session.id.to_string()),
                ("loop", session.loop_index.to_string()),
                ("state", session.state.clone()),
                ("end reason", optional(&session.end_reason)),
                ("listener", session.listener.clone()),
                ("pool", session.pool.clone()),
                ("client", session.client.clone()),
                ("backend", session.backend.clone()),
                ("backend source", session.backend_source.clone()),
                ("server name", optional(&session.server_name)),
                ("alpn", optional(&session.alpn)),
                ("tls version", optional(&session.tls_version)),
                ("suite", optional(&session.suite)),
                ("age", format!("{:.3} s", session.age_seconds)),
                ("idle", format!("{:.3} s", session.idle_seconds)),
                ("to backend", format!("{} bytes", session.to_backend_bytes)),
                ("to client", format!("{} bytes", session.to_client_bytes)),
                ("records to client", session.records_to_client.to_string()),
            ];
            if let Some(tcp) = &session.tcp {
                rows.push(("records from client", tcp.records_from_client.to_string()));
                rows.push(("to client: next seq / acked", format!("{} / {} ({} in flight)", tcp.to_client_next_seq, tcp.client_acked_seq, tcp.to_client_next_seq.wrapping_sub(tcp.client_acked_seq))));
                rows.push(("ack to client", tcp.ack_to_client.to_string()));
                rows.push(("to backend: next seq / acked", format!("{} / {} ({} in flight)", tcp.to_backend_next_seq, tcp.backend_acked_seq, tcp.to_backend_next_seq.wrapping_sub(tcp.backend_acked_seq))));
                rows.push(("ack to backend", tcp.ack_to_backend.to_string()));
            }
            table(&["FIELD", "VALUE"], rows.into_iter().map(|(name, value)| vec![name.to_string(), value]).collect());
        }
        Reply::Backends { backends } => table(
            &[
                "POOL", "BACKEND", "ADMIN", "HEALTH", "LAST CHECK", "AGENT", "BALANCE", "WEIGHT", "MAX", "RESPONSE MS", "ACTIVE", "TOTAL",
                "TO BACKEND", "TO CLIENT",
            ],
            backends
                .iter()
                .map(|row| {
                    vec![
                        row.pool.clone(),
                        row.address.clone(),
                        row.admin.clone(),
                        row.health.clone(),
                        row.last_check.clone().unwrap_or_else(|| "-".into()),
                        row.agent.clone().unwrap_or_else(|| "-".into()),
                        row.balance.clone(),
                        row.weight.to_string(),
                        row.max_sessions.map_or("-".into(), |limit| limit.to_string()),
                        row.response_ms.map_or("-".into(), |ms| format!("{ms:.1}")),
                        row.sessions_active.to_string(),
                        row.sessions_total.to_string(),
                        row.to_backend_bytes.to_string(),
                        row.to_client_bytes.to_string(),
                    ]
                })
                .collect(),
        ),
        Reply::Done { message } => println!("{message}"),
        Reply::Metrics { text } => print!("{text}"),
        Reply::Error { error } => eprintln!("cutlsctl: {error}"),
    }
}

fn session_table(sessions: &[SessionRow]) {
    let rows = sessions
        .iter()
        .map(|row| {
            vec![
                row.id.to_string(),
                row.loop_index.to_string(),
                row.client.clone(),
                row.backend.clone(),
                row.server_name.clone().unwrap_or_else(|| "-".into()),
                row.state.clone(),
                format!("{:.1}", row.age_seconds),
                format!("{:.1}", row.idle_seconds),
                row.to_backend_bytes.to_string(),
                row.to_client_bytes.to_string(),
            ]
        })
        .collect();
    table(&["ID", "LOOP", "CLIENT", "BACKEND", "SNI", "STATE", "AGE S", "IDLE S", "TO BACKEND", "TO CLIENT"], rows);
}

/// Columns as wide as their widest cell.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|title| title.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let text: Vec<String> = cells.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.iter().map(|title| title.to_string()).collect());
    for row in rows {
        line(row);
    }
}

/// `cutlsctl top`: every `interval`, the counters that moved since the last view (per second)
/// and the sessions that moved the most bytes.
fn top(socket: &std::path::Path, interval: Duration, count: u64) -> ExitCode {
    let mut previous: Option<std::collections::BTreeMap<String, u64>> = None;
    let mut previous_bytes: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    let mut shown = 0;
    loop {
        let stats = match management::request(socket, &Request::ShowStats {}) {
            Ok(Reply::Stats(stats)) => stats,
            Ok(other) => {
                print_reply(&other);
                return ExitCode::FAILURE;
            }
            Err(error) => {
                eprintln!("cutlsctl: {error}");
                return ExitCode::from(2);
            }
        };
        let sessions = match management::request(socket, &Request::ShowSessions { backend: None, client: None, listener: None }) {
            Ok(Reply::Sessions { sessions }) => sessions,
            _ => Vec::new(),
        };
        // Clear the terminal and go home.
        print!("\x1b[2J\x1b[H");
        println!("cutls {}, up {:.0} s, {} live sessions, {} loops", stats.version, stats.uptime_seconds, stats.sessions, stats.loops.len());
        println!();
        let seconds = interval.as_secs_f64();
        let moved: Vec<Vec<String>> = match &previous {
            None => Vec::new(),
            Some(before) => stats
                .counters
                .iter()
                .filter_map(|(name, value)| {
                    let delta = value.saturating_sub(*before.get(name).unwrap_or(&0));
                    (delta > 0).then(|| vec![name.clone(), value.to_string(), format!("{:.1}", delta as f64 / seconds)])
                })
                .collect(),
        };
        table(&["COUNTER", "VALUE", "PER SECOND"], moved);
        println!();
        let mut busiest: Vec<(u64, &SessionRow)> = sessions
            .iter()
            .map(|row| {
                let total = row.to_backend_bytes + row.to_client_bytes;
                (total.saturating_sub(*previous_bytes.get(&row.id).unwrap_or(&0)), row)
            })
            .collect();
        busiest.sort_by(|a, b| b.0.cmp(&a.0));
        let top_rows: Vec<SessionRow> = busiest.iter().take(20).map(|(_, row)| (*row).clone()).collect();
        session_table(&top_rows);
        previous_bytes = sessions.iter().map(|row| (row.id, row.to_backend_bytes + row.to_client_bytes)).collect();
        previous = Some(stats.counters);
        shown += 1;
        if count > 0 && shown >= count {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(interval);
    }
}
