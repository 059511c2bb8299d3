//! sliceout: a Wide ResNet trainer with SliceOut, a static memory plan and CPU/CUDA backends.

pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod error;
pub mod exec;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod plan;
pub mod profile;
pub mod reference;
pub mod rng;
pub mod schedule;
pub mod selftest;
pub mod sliceout;
pub mod tensor;
pub mod train;

pub use error::{Error, Result};
