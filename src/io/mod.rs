//! What a run leaves on disk: files written atomically, checkpoints, safetensors files, the
//! per-epoch metrics and the pictures (learning curves, plan charts) drawn with the shared SVG
//! helpers.

pub mod atomic;
pub mod checkpoint;
pub mod metrics;
pub mod safetensors;
pub mod svg;

pub use atomic::write_atomic;
