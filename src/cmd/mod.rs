//! The commands of the binary, one file each; `flags.rs` is the command line they parse.
//! Each command calls into the library and returns its error for `main` to print.

pub mod bench;
pub mod compare;
pub mod data;
pub mod eval;
pub mod export;
pub mod flags;
pub mod plan;
pub mod profile;
pub mod selftest;
pub mod train;

use crate::error::{Error, Result};
use flags::{Cli, Command, DataCommand};
use std::path::Path;

/// Checks a file a command was asked to write (`--logits`, `--out`, `--trace`) before any work:
/// what `io::check_output` checks, that it is no run folder's lock (by its name, wherever it
/// is: replacing it would let a second trainer into a folder in use), and that it is none of a
/// training run's own files in a run folder (`train::folder::is_run_file`).
fn check_output(flag: &str, out: &Path, reads: &[&Path]) -> Result<()> {
    if out.file_name().is_some_and(|n| n == crate::train::folder::LOCK) {
        let expected = format!("a file other than {}, the lock of a run folder", crate::train::folder::LOCK);
        return Err(Error::flag(flag, out.display(), expected));
    }
    crate::io::check_output(flag, out, reads)?;
    if crate::train::folder::is_run_file(out) {
        let folder = crate::io::atomic::folder_of(out).display().to_string();
        let expected = format!("a file other than the training run's own files in {folder} (a run writes them)");
        return Err(Error::flag(flag, out.display(), expected));
    }
    Ok(())
}

/// How a command ended without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Done {
    /// Everything asked for was done.
    Finished,
    /// Stopped early by Ctrl-C with its work checkpointed: the binary exits with status 130, as
    /// a program stopped by Ctrl-C does, so that `train && eval` does not go on.
    Interrupted,
}

/// Runs one parsed command line (no command: `train` with its defaults).
pub fn run(cli: Cli) -> Result<Done> {
    let finished = |r: Result<()>| r.map(|()| Done::Finished);
    match cli.command {
        None => train::command(flags::TrainFlags::default_flags()),
        Some(Command::Train(f)) => train::command(f),
        Some(Command::Eval(f)) => finished(eval::command(&f)),
        Some(Command::Export(f)) => finished(export::command(&f)),
        Some(Command::Plan(f)) => finished(plan::command(&f).map(|text| out!("{text}"))),
        Some(Command::Profile(f)) => finished(profile::command(&f)),
        Some(Command::Bench(f)) => finished(bench::command(&f)),
        Some(Command::Selftest(f)) => finished(selftest::command(&f)),
        Some(Command::Compare(f)) => finished(compare::command(&f)),
        Some(Command::Data(DataCommand::Synth { out, train, test, seed, force })) => {
            finished(data::synth(&out, train, test, seed, force))
        }
    }
}
