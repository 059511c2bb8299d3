//! The integration tests, one crate (one link) with a module per subject. `tests/no_alloc.rs`
//! stays a crate of its own: its counting global allocator would count these tests' allocations.
//!
//! The modules share one process and run in parallel threads: each test writes only under its
//! own `common::tmp` folder, runs the binary in a folder of its own rather than changing this
//! process's, and sets no environment variable of this process.

mod common;

mod bf16;
mod cli;
mod compare;
#[cfg(feature = "mpi")]
mod dist;
mod export;
mod fold_kernels;
mod gemm;
mod hostile;
mod hostile_answers;
mod hostile_checkpoints;
mod hostile_folders;
mod hostile_outputs;
mod hostile_resume;
mod hostile_signals;
mod layers;
mod nvrtc;
mod plan;
mod reference;
mod sgd_group;
mod sgd_kernels;
mod tensorboard;
mod train;
mod winograd_kernels;
