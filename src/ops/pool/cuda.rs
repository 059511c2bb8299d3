//! Launches of `pool.cu`.

use super::{Pool, PoolBackward};
use crate::gpu::{grid, int};
use crate::ops::DeviceView;

pub(super) fn forward(op: &Pool, d: &DeviceView) {
    let rows = op.c * op.n;
    d.check_len(op.out, rows, "pool out");
    d.check_len(op.inp, rows * op.hw, "pool inp");
    let (o, i, r, h) = (d.buf(op.out), d.buf(op.inp), rows as i64, int(op.hw));
    // One warp per row.
    d.gpu.launch("avgpool_forward", grid(rows * 32), &[&o, &i, &r, &h]);
}

pub(super) fn backward(op: &PoolBackward, d: &DeviceView) {
    let rows = op.c * op.n;
    d.check_len(op.d_out, rows, "pool d_out");
    d.check_len(op.d_inp, rows * op.hw, "pool d_inp");
    let (dx, dy, r, h) = (d.buf(op.d_inp), d.buf(op.d_out), rows as i64, int(op.hw));
    d.gpu.launch("avgpool_backward", grid(rows * op.hw), &[&dx, &dy, &r, &h]);
}
