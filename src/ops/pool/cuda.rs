//! Launches of `pool.cu`: the image-sized side (the pool's input and its gradient) picks the
//! variant (`avgpool_forward` f32, `avgpool_forward_bf16` bf16); the pooled side is f32.

use super::{Pool, PoolBackward};
use crate::gpu::{grid, int};
use crate::ir::Dtype;
use crate::ops::kernels::{AVGPOOL_BACKWARD, AVGPOOL_FORWARD};
use crate::ops::DeviceView;

pub(super) fn forward(op: &Pool, d: &DeviceView) {
    let rows = op.c * op.n;
    d.check_len(op.out, rows, "pool out");
    d.check_len(op.inp, rows * op.hw, "pool inp");
    assert_eq!(d.dtype(op.out), Dtype::F32, "the pooled values are f32");
    let kernel = AVGPOOL_FORWARD.of(d.dtype(op.inp));
    let (o, i, r, h) = (d.buf(op.out), d.buf(op.inp), rows as i64, int(op.hw));
    // One warp per row.
    d.gpu.launch(kernel, grid(rows * 32), &[&o, &i, &r, &h]);
}

pub(super) fn backward(op: &PoolBackward, d: &DeviceView) {
    let rows = op.c * op.n;
    d.check_len(op.d_out, rows, "pool d_out");
    d.check_len(op.d_inp, rows * op.hw, "pool d_inp");
    assert_eq!(d.dtype(op.d_out), Dtype::F32, "the pooled gradient is f32");
    let kernel = AVGPOOL_BACKWARD.of(d.dtype(op.d_inp));
    let (dx, dy, r, h) = (d.buf(op.d_inp), d.buf(op.d_out), rows as i64, int(op.hw));
    d.gpu.launch(kernel, grid(rows * op.hw), &[&dx, &dy, &r, &h]);
}
