//! Launch of `add.cu`.

use super::Add;
use crate::gpu::grid;
use crate::ops::DeviceView;

pub(super) fn add(op: &Add, d: &DeviceView) {
    let len = d.t.len(op.out);
    d.check_len(op.inp, len, "add inp");
    let (o, i, l) = (d.buf(op.out), d.buf(op.inp), len as i64);
    d.gpu.launch("add", grid(len), &[&o, &i, &l]);
}
