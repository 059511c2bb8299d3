//! The `sliceout` binary: parses the command line, runs the command, prints any error on one
//! line and exits non-zero (130 after a Ctrl-C that stopped training, even when stdout failed too).
//!
//! It never dies by a signal of its own making: SIGPIPE stays ignored (Rust's default) and
//! SIGXFSZ is ignored, so a closed pipe or a file-size limit (`ulimit -f`) is a failed write
//! that the code reports; running out of memory is one line and status 1 ([`sliceout::oom`]).
//! A command whose stdout failed still does everything else (training trains and saves): a
//! reader that went away (`sliceout plan | head -1`) leaves the status as it was; any other
//! failure (`>/dev/full`) is said on stderr and makes it 1.

use clap::Parser;
use sliceout::cmd::{self, flags::Cli};
use sliceout::{errln, say};
use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: sliceout::oom::ExitOnOom = sliceout::oom::ExitOnOom;

fn main() -> ExitCode {
    ignore_file_size_signal();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            // Help or version text that could not be written is lost, as for any command.
            if let Err(lost) = e.print() {
                if e.exit_code() == 0 && lost.kind() != std::io::ErrorKind::BrokenPipe {
                    errln!("error: writing to standard output: {lost}");
                    return ExitCode::FAILURE;
                }
            }
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    let result = sliceout::backend::cpu::start_threads().and_then(|()| cmd::run(cli));
    say::flush_stdout();
    let done = match result {
        Err(e) => {
            errln!("error: {e}");
            return ExitCode::FAILURE;
        }
        Ok(done) => done,
    };
    if let Some(e) = say::stdout_lost() {
        errln!("error: writing to standard output: {e} (its output is lost; the command did all else it does)");
    }
    match done {
        // Ctrl-C decides the status whatever else went wrong: `train && eval` must stop there.
        cmd::Done::Interrupted => ExitCode::from(130),
        cmd::Done::Finished if say::stdout_lost().is_some() => ExitCode::FAILURE,
        cmd::Done::Finished => ExitCode::SUCCESS,
    }
}

/// A write past a file-size limit (`ulimit -f`) then fails with EFBIG, which the writes report
/// naming the file, instead of SIGXFSZ killing the process with a temporary file left behind.
fn ignore_file_size_signal() {
    // SAFETY: ignoring a signal has no preconditions.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}
