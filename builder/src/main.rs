//! The `boxcar` binary: parse, dispatch, report.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = boxcar::cmdline::Cli::parse();
    match boxcar::commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
