//! The model family: Wide ResNets (WRN-d-k) with SliceOut, compiled to a schedule.

pub mod params;
pub mod wrn;

pub use crate::ir::ModelConfig;
