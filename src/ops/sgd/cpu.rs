use rayon::prelude::*;

use crate::ir::Slice;
use crate::ops::min_rows;

#[derive(Clone, Copy, Debug)]
pub struct SgdParams {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

/// Where the gradient of a parameter lives relative to the parameter.
#[derive(Clone, Copy, Debug)]
pub enum GradMap {
    /// The gradient has the parameter's shape.
    Full,
    /// Parameter `[slice.channels, row_len]`, gradient `[slice.width, row_len]` in slice order
    /// (conv1's weight; bn2's gamma and beta with `row_len` 1).
    Rows { slice: Slice, row_len: usize },
    /// Parameter `[rows, slice.channels * group]`, gradient `[rows, slice.width * group]`
    /// (conv2's weight, `group = k * k`).
    Cols { slice: Slice, rows: usize, group: usize },
}

/// Position of layer channel `ch` in the slice's buffer order, if the slice keeps it.
#[inline]
fn slot(slice: Slice, ch: usize) -> Option<usize> {
    let pos = (ch + slice.channels - slice.start) % slice.channels;
    (pos < slice.width).then_some(pos)
}

/// One element of PyTorch's update: `g = g0 + wd * param; buf = momentum * buf + g;`
/// `param -= lr * (g + momentum * buf)` (Nesterov) or `param -= lr * buf`.
#[inline(always)]
fn step(param: &mut f32, buf: &mut f32, g0: f32, p: &SgdParams) {
    let g = g0 + p.weight_decay * *param;
    *buf = p.momentum * *buf + g;
    let d = if p.nesterov { g + p.momentum * *buf } else { *buf };
    *param -= p.lr * d;
}

/// Updates rows of equal length: those with a gradient row take it, the others a zero one.
fn step_row(param: &mut [f32], buf: &mut [f32], grad: Option<&[f32]>, p: &SgdParams) {
    match grad {
        Some(g) => {
            for ((w, b), &g0) in param.iter_mut().zip(buf.iter_mut()).zip(g) {
                step(w, b, g0, p);
            }
        }
        None => {
            for (w, b) in param.iter_mut().zip(buf.iter_mut()) {
                step(w, b, 0.0, p);
            }
        }
    }
}

/// One SGD step of `param` with its momentum buffer (zero before the first step, which gives
/// PyTorch's `buf = g` on that step), reading the gradient through `map`.
pub fn sgd_update(param: &mut [f32], momentum_buf: &mut [f32], grad: &[f32], map: GradMap, p: &SgdParams) {
    assert_eq!(param.len(), momentum_buf.len(), "momentum buffer length vs param");
    match map {
        GradMap::Full => {
            assert_eq!(grad.len(), param.len(), "gradient length vs param");
            let chunk = crate::ops::PAR_MIN_ELEMS;
            param
                .par_chunks_mut(chunk)
                .zip(momentum_buf.par_chunks_mut(chunk))
                .zip(grad.par_chunks(chunk))
                .for_each(|((w, b), g)| step_row(w, b, Some(g), p));
        }
        GradMap::Rows { slice, row_len } => {
            assert!(row_len > 0, "sgd rows of length zero");
            assert_eq!(param.len(), slice.channels * row_len, "param length vs rows");
            assert_eq!(grad.len(), slice.width * row_len, "gradient length vs slice rows");
            param
                .par_chunks_mut(row_len)
                .zip(momentum_buf.par_chunks_mut(row_len))
                .enumerate()
                .with_min_len(min_rows(row_len))
                .for_each(|(ch, (w, b))| {
                    let g = slot(slice, ch).map(|s| &grad[s * row_len..(s + 1) * row_len]);
                    step_row(w, b, g, p);
                });
        }
        GradMap::Cols { slice, rows, group } => {
            assert!(group > 0, "sgd column groups of size zero");
            let (row_len, grad_len) = (slice.channels * group, slice.width * group);
            assert_eq!(param.len(), rows * row_len, "param length vs rows * columns");
            assert_eq!(grad.len(), rows * grad_len, "gradient length vs sliced columns");
            param
                .par_chunks_mut(row_len)
                .zip(momentum_buf.par_chunks_mut(row_len))
                .zip(grad.par_chunks(grad_len))
                .with_min_len(min_rows(row_len))
                .for_each(|((w, b), g)| {
                    for (ch, (w, b)) in w.chunks_mut(group).zip(b.chunks_mut(group)).enumerate() {
                        let g = slot(slice, ch).map(|s| &g[s * group..(s + 1) * group]);
                        step_row(w, b, g, p);
                    }
                });
        }
    }
}
