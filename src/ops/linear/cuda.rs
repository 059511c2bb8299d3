//! Launches of `linear.cu` (f32 in every program: the head after the pool).

use super::{Linear, LinearBackward};
use crate::gpu::{grid, int};
use crate::ops::kernels::{LINEAR_BACKWARD, LINEAR_FORWARD};
use crate::ops::DeviceView;

pub(super) fn forward(op: &Linear, d: &DeviceView) {
    let (c, n, o) = (op.c, op.n, op.o);
    d.check_len(op.out, n * o, "linear out");
    d.check_len(op.inp, c * n, "linear inp");
    d.f32_only(&[op.out, op.inp], "linear");
    let (y, x, w, b) = (d.buf(op.out), d.buf(op.inp), d.tensor(op.weight), d.tensor(op.bias));
    let (ci, ni, oi) = (int(c), int(n), int(o));
    d.gpu.launch(LINEAR_FORWARD, grid(n * o), &[&y, &x, &w, &b, &ci, &ni, &oi]);
}

pub(super) fn backward(op: &LinearBackward, d: &DeviceView) {
    let (c, n, o) = (op.c, op.n, op.o);
    d.check_len(op.d_inp, c * n, "linear d_inp");
    d.check_len(op.d_weight, o * c, "linear d_weight");
    d.check_len(op.d_bias, o, "linear d_bias");
    d.check_len(op.d_out, n * o, "linear d_out");
    d.f32_only(&[op.d_inp, op.d_weight, op.d_bias, op.d_out, op.inp], "linear backward");
    let (dx, dw, db, dy) = (d.buf(op.d_inp), d.buf(op.d_weight), d.buf(op.d_bias), d.buf(op.d_out));
    let (x, w) = (d.buf(op.inp), d.tensor(op.weight));
    let (ci, ni, oi) = (int(c), int(n), int(o));
    d.gpu.launch(LINEAR_BACKWARD, grid(c * n + o * c + o), &[&dx, &dw, &db, &dy, &x, &w, &ci, &ni, &oi]);
}
