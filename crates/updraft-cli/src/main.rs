//! The `updraft` binary: `updraft serve` runs the server; every other subcommand is a client of
//! the management API, with tables for people and `--json` for scripts.

mod client;
mod commands;
mod config;
mod sim;
mod table;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = commands::Cli::parse();
    match commands::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the outermost context and its causes.
            let message: Vec<String> = err.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", message.join(": "));
            ExitCode::FAILURE
        }
    }
}
