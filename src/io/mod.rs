//! What a run leaves on disk: files written atomically, checkpoints, the per-epoch metrics, the
//! pictures (learning curves, plan charts) drawn with the shared SVG helpers, and the lock that
//! keeps two processes out of one folder.

pub mod atomic;
pub mod checkpoint;
pub mod lock;
pub mod metrics;
pub mod svg;

pub use atomic::{write_atomic, write_atomic_with};
