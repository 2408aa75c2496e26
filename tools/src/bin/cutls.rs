//! `cutls`: the daemon and its offline subcommands.

use std::process::ExitCode;

const USAGE: &str = "usage: cutls <command> [options]

commands:
  help                 this text
  version              the version
  check-config FILE    check a configuration file (and load its certificates) without running
  decrypt              decrypt the TLS connections of a capture with a key log
  run                  the daemon; with two ports and no listeners, a transparent bridge
";

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = argv.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    match command.as_str() {
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        "version" | "--version" | "-V" => {
            println!("cutls {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        "check-config" => match rest {
            [file] => cutls_tools::serve::check_config(std::path::Path::new(file)),
            _ => {
                eprintln!("usage: cutls check-config FILE");
                ExitCode::from(2)
            }
        },
        "run" => cutls_tools::run::main(rest),
        "decrypt" => cutls_tools::decrypt::main(rest),
        other => {
            eprintln!("cutls: unknown command {other:?}\n");
            eprint!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
