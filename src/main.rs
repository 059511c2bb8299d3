//! The `sliceout` binary: parses the command line, runs the command, prints any error on one
//! line and exits non-zero (130 after a Ctrl-C that stopped training).

use clap::Parser;
use sliceout::cmd::{self, flags::Cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    restore_sigpipe();
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

/// Output piped into a command that stops reading (`sliceout plan | head`) ends the process
/// quietly, as it does for other command-line tools, instead of a panic on the failed write:
/// Rust ignores SIGPIPE by default, so its default action is put back.
fn restore_sigpipe() {
    #[cfg(unix)]
    {
        extern "C" {
            fn signal(signum: i32, handler: usize) -> usize;
        }
        const SIGPIPE: i32 = 13;
        const SIG_DFL: usize = 0;
        // SAFETY: resetting a signal's disposition to the default has no preconditions.
        unsafe {
            signal(SIGPIPE, SIG_DFL);
        }
    }
}
