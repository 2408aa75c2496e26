//! `cutls`: the daemon and its offline subcommands (clap; `run` and `decrypt` parse their own
//! options, which their `--help` lists).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cutls", version, about = "A packet-level TLS offload box: a bump in the wire between a router and a server VLAN")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the box: `cutls run --config FILE` terminates TLS for the file's listeners;
    /// `cutls run --outside IF --inside IF` with no file is a transparent bridge
    /// (`cutls run --help` lists the options).
    #[command(disable_help_flag = true)]
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
    /// Check a configuration file (and load its certificates) without running it: exit 0, or 2
    /// with FILE:LINE: FIELD: what is wrong.
    CheckConfig { file: PathBuf },
    /// Decrypt the TLS connections of a capture with a key log (`cutls decrypt --help`).
    #[command(disable_help_flag = true)]
    Decrypt {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
    /// The version.
    Version,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let code = if error.use_stderr() { 2 } else { 0 };
            let _ = error.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Run { args } => cutls_tools::run::main(&args),
        Command::CheckConfig { file } => cutls_tools::serve::check_config(&file),
        Command::Decrypt { args } => cutls_tools::decrypt::main(&args),
        Command::Version => {
            println!("cutls {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}
