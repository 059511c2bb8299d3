//! The `sliceout` binary: parses the command line, runs the command, prints any error on one
//! line and exits non-zero (130 after a Ctrl-C that stopped training).

use clap::Parser;
use sliceout::cmd::{self, flags::Cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    match cmd::run(cli) {
        Ok(cmd::Done::Finished) => ExitCode::SUCCESS,
        Ok(cmd::Done::Interrupted) => ExitCode::from(130),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
