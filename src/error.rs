//! The one error type of the library. Every variant carries what a user needs to fix the
//! problem (the file, the flag and its value, what was expected); the binary prints it on one
//! line and exits non-zero.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum Error {
    /// A data file that is missing, malformed or holds out-of-range values.
    Data { path: PathBuf, msg: String },
    /// An I/O failure on a named file or folder.
    Io { path: PathBuf, source: std::io::Error },
    /// A checkpoint that cannot be used.
    Checkpoint { path: PathBuf, msg: String },
    /// A command-line value out of range.
    Flag { flag: String, value: String, expected: String },
    /// A device that cannot be used (missing driver, plan too large, ...).
    Device(String),
    /// Training produced a non-finite loss, parameter or statistic (`what` says which).
    Diverged { epoch: usize, step: usize, what: String },
    /// Anything else, said in words.
    Msg(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Data { path, msg } => write!(f, "{}: {msg}", path.display()),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Checkpoint { path, msg } => {
                write!(f, "checkpoint {}: {msg}", path.display())
            }
            Error::Flag { flag, value, expected } => {
                write!(f, "invalid value '{value}' for {flag}: expected {expected}")
            }
            Error::Device(msg) => write!(f, "device: {msg}"),
            Error::Diverged { epoch, step, what } => write!(
                f,
                "training diverged: {what} at epoch {epoch}, step {step}; nothing non-finite was saved, \
                 the checkpoints written before are kept (try a lower --lr)"
            ),
            Error::Msg(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn data(path: impl Into<PathBuf>, msg: impl Into<String>) -> Error {
        Error::Data { path: path.into(), msg: msg.into() }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }
    pub fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Error {
        Error::Checkpoint { path: path.into(), msg: msg.into() }
    }
    pub fn flag(flag: &str, value: impl ToString, expected: impl Into<String>) -> Error {
        Error::Flag { flag: flag.to_string(), value: value.to_string(), expected: expected.into() }
    }
}
