//! sliceout: a Wide ResNet trainer with SliceOut, a static memory plan and CPU/CUDA backends.
//!
//! Layers, each using only those listed above it (`docs/DESIGN.md` has the map,
//! `tests/it/layers.rs` enforces it):
//!
//! ```text
//! error, rng   the error type; seeded random streams
//! say, oom     printing that never panics; one line instead of SIGABRT when memory runs out
//! ir/          slices, layouts, conv shapes, model config, buffer and tensor descriptions
//! io/          atomic writes, checkpoints, safetensors, metrics, SVG
//! blas/        the CPU's GEMM
//! gpu/         the CUDA runtime (device, NVRTC, cuBLAS, launches)
//! data/        dataset readers, normalisation, shuffles, crops, synthetic CIFAR
//! ops/<op>/    one folder per op: contract, CPU kernel, CUDA launch + .cu, tests
//! schedule     a step as an ordered list of ops over named buffers
//! lower        how each convolution runs (algorithm, workspace, chunk, weight copies)
//! plan/        lifetimes -> arena offsets, the checker, programs, plan reports
//! model/       WRN-d-k -> schedule (forward, backward, updates); its parameter listing
//! fit          what fits a memory budget: the largest batch, option ladders, sweeps
//! model_file/  one way in for a model file: checkpoint or safetensors, read and judged
//! export/      the model as safetensors and ONNX
//! backend/     where a program runs: the traits, the CPU reference, CUDA
//! train/       one step (train/step.rs), the loop, evaluation, resume
//! measure/     the profiler and the bench: programs built, stepped and timed
//! verify/      selftest (every op against the CPU), the PyTorch reference
//! cmd/         one file per command of the binary
//! ```

// First, so that its macros are in scope in every module after it.
#[macro_use]
pub mod say;

pub mod backend;
pub mod blas;
pub mod cmd;
pub mod data;
pub mod dist;
pub mod error;
pub mod export;
pub mod fit;
pub mod gpu;
pub mod io;
pub mod ir;
pub mod lower;
pub mod measure;
pub mod model;
pub mod model_file;
pub mod oom;
pub mod ops;
pub mod plan;
pub mod rng;
pub mod schedule;
pub mod train;
pub mod verify;

pub use error::{Error, Result};
