//! Printing that never panics: `println!` and friends panic when the write fails (stdout on a
//! full disk, a pipe whose reader stopped, a closed terminal), which would lose a training run
//! over its progress lines. `outln!`, `out!` and `errln!` (defined here) write instead, and a failed write to stdout is remembered (later
//! stdout writes are skipped) for the binary to judge at exit: a reader that stopped (`EPIPE`,
//! `sliceout plan | head -1`) is no failure; any other (`>/dev/full`) is said on stderr and makes
//! the exit status 1, after the command has done everything else it does. A failed write to
//! stderr has nowhere to be reported and is ignored.
//!
//! SIGPIPE stays ignored (Rust's default), so a closed pipe is an error value, never a signal.

use std::fmt;
use std::io::{self, Write};
use std::sync::OnceLock;

/// The first failed write to stdout.
static STDOUT_ERROR: OnceLock<io::Error> = OnceLock::new();

/// Writes `args` to stdout unless a write to it has failed already; remembers a failure.
pub fn stdout(args: fmt::Arguments) {
    if STDOUT_ERROR.get().is_some() {
        return;
    }
    if let Err(e) = io::stdout().lock().write_fmt(args) {
        let _ = STDOUT_ERROR.set(e);
    }
}

/// Writes `args` to stderr; a failure is ignored (there is nowhere left to say it).
pub fn stderr(args: fmt::Arguments) {
    let _ = io::stderr().lock().write_fmt(args);
}

/// Flushes stdout (it is line-buffered), remembering a failure.
pub fn flush_stdout() {
    if STDOUT_ERROR.get().is_some() {
        return;
    }
    if let Err(e) = io::stdout().lock().flush() {
        let _ = STDOUT_ERROR.set(e);
    }
}

/// The first failed write to stdout, if any.
pub fn stdout_error() -> Option<&'static io::Error> {
    STDOUT_ERROR.get()
}

/// Whether stdout failed otherwise than by its reader going away: output was lost.
pub fn stdout_lost() -> Option<&'static io::Error> {
    stdout_error().filter(|e| e.kind() != io::ErrorKind::BrokenPipe)
}

/// `println!` that never panics (see the module doc).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::say::stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::say::stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that never panics (see the module doc).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::say::stdout(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics (see the module doc).
#[macro_export]
macro_rules! errln {
    () => {
        $crate::say::stderr(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::say::stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}
