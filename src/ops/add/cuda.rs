//! Launch of `add.cu` (`add` over f32, `add_bf16` over bf16).

use super::Add;
use crate::gpu::grid;
use crate::ops::kernels::ADD;
use crate::ops::DeviceView;

pub(super) fn add(op: &Add, d: &DeviceView) {
    let len = d.t.len(op.out);
    d.check_len(op.inp, len, "add inp");
    let kernel = ADD.of(d.storage(&[op.out, op.inp]));
    let (o, i, l) = (d.buf(op.out), d.buf(op.inp), len as i64);
    // Four elements a thread where the kernel can take them four at a time.
    d.gpu.launch(kernel, grid(len.div_ceil(4)), &[&o, &i, &l]);
}
