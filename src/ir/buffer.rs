//! Arena buffers and persistent tensors as ops name them: ids, sizes, kinds and roles. Where a
//! buffer lives is the planner's business ([`Lifetime`] is what it reads); where a persistent
//! tensor lives is fixed by its offset in the persistent region.

use serde::Serialize;

/// Index of a buffer in [`Schedule::buffers`].
pub type BufId = usize;
/// Index of a persistent tensor in [`Schedule::tensors`].
pub type TensorId = usize;

/// What a buffer in the arena holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BufKind {
    /// A forward value: kept for backward, or consumed by the next op.
    Activation,
    /// The gradient of an activation, flowing backward.
    Gradient,
    /// The gradient of a parameter, alive until its update.
    WeightGradient,
    /// Scratch: im2col columns.
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

#[derive(Clone, Debug)]
pub struct Buffer {
    pub name: String,
    pub kind: BufKind,
    /// Size in f32 elements.
    pub len: usize,
    /// Sized to a SliceOut slice (smaller than the full layer would need).
    pub sliced: bool,
}

/// What a persistent tensor is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Param,
    Momentum,
    RunningMean,
    RunningVar,
}

#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: Role,
    /// Offset in the persistent region, in floats.
    pub offset: usize,
}

impl TensorSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// One buffer: its size and the inclusive range of schedule steps during which it is live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    pub bytes: usize,
    /// First step that writes (or reads) it.
    pub first: usize,
    /// Last step that reads it; `first <= last`.
    pub last: usize,
}

impl Lifetime {
    /// Whether the two are live at a common step (inclusive ends).
    pub fn overlaps(&self, other: &Lifetime) -> bool {
        self.first <= other.last && other.first <= self.last
    }

    /// Whether the buffer is live at `step`.
    pub fn live_at(&self, step: usize) -> bool {
        self.first <= step && step <= self.last
    }
}

/// Bytes of the buffers live at each of `steps` steps.
pub fn live_bytes(lifetimes: &[Lifetime], steps: usize) -> Vec<usize> {
    (0..steps).map(|i| lifetimes.iter().filter(|l| l.live_at(i)).map(|l| l.bytes).sum()).collect()
}
