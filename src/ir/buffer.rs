//! Arena buffers and persistent tensors as ops name them: ids, sizes, element types, kinds and
//! roles. Where a buffer lives is the planner's business ([`Lifetime`] is what it reads); where
//! a persistent tensor lives is fixed by its offset in the persistent region.

use serde::Serialize;

use super::Dtype;

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
    /// A parameter in the GEMMs' element type (bf16): made once per step by its layer's forward
    /// op from the f32 parameter, alive until the layer's last GEMM that reads it.
    WeightCopy,
}

impl BufKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            BufKind::Activation => "activation",
            BufKind::Gradient => "gradient",
            BufKind::WeightGradient => "weight_gradient",
            BufKind::Workspace => "workspace",
            BufKind::WeightCopy => "weight_copy",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Buffer {
    pub name: String,
    pub kind: BufKind,
    pub dtype: Dtype,
    /// Size in elements of `dtype`.
    pub len: usize,
    /// Sized to a SliceOut slice (smaller than the full layer would need).
    pub sliced: bool,
}

impl Buffer {
    /// Bytes of its elements: what the planner places.
    pub fn bytes(&self) -> usize {
        self.len * self.dtype.size()
    }
}

/// What a persistent tensor is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Param,
    Momentum,
    RunningMean,
    RunningVar,
}

/// How a fresh run fills a persistent tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    Zeros,
    Ones,
    /// Normal with std `sqrt(2 / fan_out)`, fan-out = `shape[0] * shape[2] * shape[3]` (a conv
    /// weight, as in the WRN paper's code).
    KaimingFanOut,
    /// Uniform in `+-1/sqrt(fan_in)`, fan-in = `shape[1]` (the classifier's weight).
    UniformFanIn,
}

#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: Role,
    /// How a fresh run fills it.
    pub init: Init,
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

/// One buffer: its size in bytes (of its element type) and the inclusive range of schedule
/// steps during which it is live.
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

/// Bytes of the buffers live at each of steps `0..steps` (a buffer whose first step is past
/// its last is never live; steps past the end are cut off).
pub fn live_bytes(lifetimes: &[Lifetime], steps: usize) -> Vec<usize> {
    // Difference array: +bytes at the first step, -bytes after the last.
    let mut diff = vec![0i128; steps + 1];
    for l in lifetimes.iter().filter(|l| l.first < steps && l.first <= l.last) {
        diff[l.first] += l.bytes as i128;
        diff[(l.last + 1).min(steps)] -= l.bytes as i128;
    }
    let mut acc = 0i128;
    diff[..steps]
        .iter()
        .map(|d| {
            acc += d;
            acc as usize
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_counts_bytes_of_its_element_type() {
        let b = |dtype, len| Buffer { name: "x".into(), kind: BufKind::Activation, dtype, len, sliced: false };
        assert_eq!(b(Dtype::F32, 1001).bytes(), 4004);
        assert_eq!(b(Dtype::Bf16, 1001).bytes(), 2002);
        assert_eq!(b(Dtype::Bf16, 0).bytes(), 0);
    }

    #[test]
    fn live_bytes_sum_the_buffers_live_at_each_step() {
        let l = |bytes, first, last| Lifetime { bytes, first, last };
        let lives = [l(10, 0, 2), l(5, 1, 1), l(7, 2, 9), l(3, 4, 1)];
        assert_eq!(live_bytes(&lives, 4), [10, 15, 17, 7]);
        for step in 0..4 {
            let direct: usize = lives.iter().filter(|x| x.live_at(step)).map(|x| x.bytes).sum();
            assert_eq!(live_bytes(&lives, 4)[step], direct);
        }
    }
}
