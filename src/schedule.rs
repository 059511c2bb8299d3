//! A training (or eval) step as a schedule: the ordered list of ops, each naming the buffers it
//! reads and writes. The planner reads buffer lifetimes off it, the executor runs it, the
//! profiler times it.

use serde::Serialize;

/// What a buffer in the arena holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BufKind {
    /// A forward value (kept for backward or consumed by the next op).
    Activation,
    /// The gradient of an activation, flowing backward.
    Gradient,
    /// The gradient of a parameter, alive until its update.
    WeightGradient,
    /// Scratch (im2col columns, batch statistics).
    Workspace,
}

impl BufKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            BufKind::Activation => "activation",
            BufKind::Gradient => "gradient",
            BufKind::WeightGradient => "weight_gradient",
            BufKind::Workspace => "workspace",
        }
    }
}
