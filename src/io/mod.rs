//! What a run leaves on disk: files written atomically, checkpoints, safetensors files, the
//! per-epoch metrics, TensorBoard event records, the SVG module every picture (learning curves,
//! plan and sweep charts) is drawn with, the lock that keeps two processes out of one folder, and the checks on an output
//! file a command is asked to write.

pub mod atomic;
pub mod checkpoint;
pub mod events;
pub mod lock;
pub mod metrics;
pub mod output;
pub mod safetensors;
pub mod svg;

pub use atomic::{write_atomic, write_atomic_with};
pub use output::check_output;

use std::path::Path;

/// Why a path is not a file a reader can take.
#[derive(Debug)]
pub enum NotAFile {
    Missing,
    /// A folder, a FIFO (which would block a reader forever), a socket or a device
    /// (`/dev/zero` never ends), or metadata that cannot be read: said in words.
    Other(String),
}

/// The length of the regular file at `path`, or why it is none; `expected` names what should
/// be there ("data file", "checkpoint file").
pub fn regular_file_len(path: &Path, expected: &str) -> std::result::Result<u64, NotAFile> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(NotAFile::Missing),
        Err(e) => return Err(NotAFile::Other(format!("cannot read: {e}"))),
    };
    if meta.is_dir() {
        return Err(NotAFile::Other(format!("is a folder, expected a {expected}")));
    }
    if !meta.is_file() {
        return Err(NotAFile::Other(format!(
            "is not a regular file (a FIFO, socket or device), expected a {expected}"
        )));
    }
    Ok(meta.len())
}

/// A fresh, empty folder for one test, named after `tag` and the process.
#[cfg(test)]
pub(crate) fn scratch(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sliceout-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
