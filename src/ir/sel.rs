//! Which channels an op covers. A schedule is built once, before the slice starts of a step are
//! drawn, so ops name their channels symbolically ([`Sel`]): the whole layer, or "the slice of
//! block b". At run time [`Sel::resolve`] turns that into a [`Slice`] from the step's starts.

use super::buffer::TensorId;
use super::slice::Slice;

/// Which channels an op covers: a whole layer, or the current slice of block `block`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sel {
    Full(usize),
    Block(usize),
}

/// The slice geometry of one residual block: its width is fixed, its start is drawn per step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceSpec {
    pub channels: usize,
    pub width: usize,
}

/// A batch-norm layer's persistent tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnRef {
    pub gamma: TensorId,
    pub beta: TensorId,
    pub mean: TensorId,
    pub var: TensorId,
}

/// How an SGD update maps its (possibly sliced) gradient onto the parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradSel {
    Full,
    Rows { sel: Sel, row_len: usize },
    Cols { sel: Sel, rows: usize, group: usize },
}

impl Sel {
    /// The channels this selection covers at a step whose slice starts are `starts` (one per
    /// block; blocks at full width ignore theirs).
    pub fn resolve(self, slices: &[SliceSpec], starts: &[usize]) -> Slice {
        match self {
            Sel::Full(c) => Slice::full(c),
            Sel::Block(b) => {
                let s = slices[b];
                if s.width == s.channels {
                    Slice::full(s.channels)
                } else {
                    Slice::new(starts[b], s.width, s.channels)
                }
            }
        }
    }

    /// Channels covered, without drawing a start.
    pub fn width(self, slices: &[SliceSpec]) -> usize {
        match self {
            Sel::Full(c) => c,
            Sel::Block(b) => slices[b].width,
        }
    }
}
