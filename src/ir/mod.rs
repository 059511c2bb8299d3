//! The vocabulary every other layer speaks, and nothing else: SliceOut's slices, tensor
//! layouts, convolution geometry, the model's configuration, element types and precisions, and
//! the descriptions of arena buffers and persistent tensors that ops name and the planner places. Plain data; it imports
//! nothing of the crate but the error type and the random streams.
//!
//! Dimension letters used across the crate: N batch, C channels, H height, W width, K kernel
//! size. Activations are channel-major `(C, N, H, W)`; weights are `(Cout, Cin, K, K)`, read as
//! the row-major matrix `[Cout, Cin*K*K]`.

pub mod buffer;
pub mod config;
pub mod dtype;
pub mod elem;
pub mod layout;
pub mod sel;
pub mod shape;
pub mod slice;

pub use buffer::{live_bytes, BufId, BufKind, Buffer, Init, Lifetime, Role, TensorId, TensorSpec};
pub use config::{Footprint, Invalid, Math, ModelConfig, Target};
pub use dtype::{Dtype, Precision};
pub use elem::{Bf16, Elem};
pub use layout::Layout;
pub use sel::{BnRef, GradSel, Sel, SliceSpec};
pub use shape::ConvShape;
pub use slice::{Run, Slice};

/// Bytes as MiB, for printouts.
pub fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}
