//! What a run leaves on disk: files written atomically, checkpoints, the per-epoch metrics, the
//! pictures (learning curves, plan charts) drawn with the shared SVG helpers, and the lock that
//! keeps two processes out of one folder.

pub mod atomic;
pub mod checkpoint;
pub mod lock;
pub mod metrics;
pub mod svg;

pub use atomic::{write_atomic, write_atomic_with};

/// A fresh, empty folder for one test, named after `tag` and the process.
#[cfg(test)]
pub(crate) fn scratch(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sliceout-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
