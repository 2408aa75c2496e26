//! The `cutls` binaries' subcommands. Each subcommand lives in its own module and takes its
//! arguments (without the program and subcommand names); `src/bin/cutls.rs` only dispatches.

pub mod args;
pub mod decrypt;
pub mod run;
pub mod serve;
