//! The box's log: `tracing` events on stderr (systemd's journal takes them from there), one
//! line each, as text (`2026-12-04T18:22:01.123456Z  INFO cutls: ready`) or JSON, at a level
//! from the configuration (`[log] level`), changed at run time by `cutlsctl log level L` and by
//! a reload.
//!
//! What is logged, all from outside the poll loops (a loop logs only its own start, panic and
//! stop): at `info` one line per session end (`cutls::session`, with its reason, addresses,
//! duration and bytes), backends going down or up, reloads; at `warn` anomalies, rate-limited by
//! construction: at most one line per [`ANOMALY_EVERY`] naming the counters of trouble that
//! grew (`cutls::anomaly`); refused reloads; at `error` what stops the box.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, Layer, Registry};

/// The shortest time between two anomaly lines.
pub const ANOMALY_EVERY: Duration = Duration::from_secs(10);

/// How much is logged (`[log] level`, `cutlsctl log level`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Off,
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub const NAMES: &'static str = "off, error, warn, info, debug or trace";

    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Off => "off",
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }

    fn filter(self) -> LevelFilter {
        match self {
            LogLevel::Off => LevelFilter::OFF,
            LogLevel::Error => LevelFilter::ERROR,
            LogLevel::Warn => LevelFilter::WARN,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Trace => LevelFilter::TRACE,
        }
    }
}

impl FromStr for LogLevel {
    type Err = String;

    fn from_str(text: &str) -> Result<LogLevel, String> {
        Ok(match text.to_ascii_lowercase().as_str() {
            "off" => LogLevel::Off,
            "error" => LogLevel::Error,
            "warn" | "warning" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => return Err(format!("unknown log level {text:?} ({})", LogLevel::NAMES)),
        })
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One line per event as text, or one JSON object per line (`[log] format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The running log's level, to change it.
pub struct LogHandle {
    level: reload::Handle<LevelFilter, Registry>,
}

impl LogHandle {
    /// The log of this process, on stderr: the first call installs it; later calls (a test
    /// that starts two boxes) return `None`.
    pub fn install(level: LogLevel, format: LogFormat) -> Option<LogHandle> {
        let (filter, handle) = reload::Layer::new(level.filter());
        let output = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(false);
        let output = match format {
            LogFormat::Text => output.boxed(),
            LogFormat::Json => output.json().boxed(),
        };
        tracing_subscriber::registry().with(filter).with(output).try_init().ok()?;
        Some(LogHandle { level: handle })
    }

    pub fn set_level(&self, level: LogLevel) -> Result<(), String> {
        self.level.modify(|filter| *filter = level.filter()).map_err(|error| error.to_string())
    }

    pub fn level(&self) -> LogLevel {
        match self.level.clone_current() {
            Some(LevelFilter::OFF) => LogLevel::Off,
            Some(LevelFilter::ERROR) => LogLevel::Error,
            Some(LevelFilter::WARN) => LogLevel::Warn,
            Some(LevelFilter::DEBUG) => LogLevel::Debug,
            Some(LevelFilter::TRACE) => LogLevel::Trace,
            _ => LogLevel::Info,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_order() {
        for level in [LogLevel::Off, LogLevel::Error, LogLevel::Warn, LogLevel::Info, LogLevel::Debug, LogLevel::Trace] {
            assert_eq!(level.name().parse::<LogLevel>(), Ok(level));
        }
        assert_eq!("WARNING".parse::<LogLevel>(), Ok(LogLevel::Warn));
        assert!("loud".parse::<LogLevel>().unwrap_err().contains("off, error, warn, info, debug or trace"));
        assert!(LogLevel::Warn < LogLevel::Info && LogLevel::default() == LogLevel::Info);
    }
}
