//! The commands of the binary, one file each; `flags.rs` is the command line they parse.
//! Each command calls into the library and returns its error for `main` to print.

pub mod bench;
pub mod data;
pub mod eval;
pub mod export;
pub mod flags;
pub mod plan;
pub mod profile;
pub mod selftest;
pub mod train;

use crate::error::Result;
use flags::{Cli, Command, DataCommand};

/// Runs one parsed command line (no command: `train` with its defaults).
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        None => train::command(flags::TrainFlags::default_flags()),
        Some(Command::Train(f)) => train::command(f),
        Some(Command::Eval(f)) => eval::command(&f),
        Some(Command::Export(f)) => export::command(&f),
        Some(Command::Plan(f)) => {
            print!("{}", plan::command(&f)?);
            Ok(())
        }
        Some(Command::Profile(f)) => profile::command(&f),
        Some(Command::Bench(f)) => bench::command(&f),
        Some(Command::Selftest(f)) => selftest::command(&f),
        Some(Command::Data(DataCommand::Synth { out, train, test, seed })) => data::synth(&out, train, test, seed),
    }
}
