//! sliceout: a Wide ResNet trainer with SliceOut, a static memory plan and CPU/CUDA backends.

pub mod error;
pub mod model;
pub mod rng;
pub mod schedule;
pub mod sliceout;
pub mod tensor;

pub use error::{Error, Result};
