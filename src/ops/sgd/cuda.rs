//! Launch of `sgd.cu` (f32 in every program: master weights, momentum, weight gradients).

use super::{grad_map, GradMap, Sgd};
use crate::gpu::{grid, int, Arg, FastDiv};
use crate::ops::DeviceView;

pub(super) fn update(op: &Sgd, d: &DeviceView) {
    let (w, mb, g) = (d.tensor(op.param), d.tensor(op.momentum), d.buf(op.grad));
    let len = d.t.tensors[op.param].len();
    assert_eq!(d.t.tensors[op.momentum].len(), len, "sgd momentum length");
    let (mode, start, width, channels, group, grad_len) = match grad_map(op.map, d.t.slices, d.t.starts) {
        GradMap::Full => (0, 0, 1, 1, 1, len),
        GradMap::Rows { slice, row_len } => {
            (1, slice.start, slice.width, slice.channels, row_len, slice.width * row_len)
        }
        GradMap::Cols { slice, group, rows } => {
            (2, slice.start, slice.width, slice.channels, group, rows * slice.width * group)
        }
    };
    d.check_len(op.grad, grad_len, "sgd gradient");
    d.f32_only(&[op.grad], "sgd");
    let sp = &d.t.sgd;
    // Mode 1 reads rows of the whole parameter: one "row" per channel.
    let row_len = if mode == 2 { channels * group } else { len.max(1) };
    let (by_group, by_row) = (FastDiv::new(group), FastDiv::new(row_len));
    let (l, row_len) = (int(len), int(row_len));
    let (start, width, channels, group) = (int(start), int(width), int(channels), int(group));
    let nesterov = sp.nesterov as i32;
    #[rustfmt::skip]
    let args: [&dyn Arg; 18] = [&w, &mb, &g, &l, &mode, &start, &width, &channels, &group,
        &by_group.magic, &by_group.shift, &row_len, &by_row.magic, &by_row.shift,
        &sp.lr, &sp.momentum, &sp.weight_decay, &nesterov];
    // Four elements a thread where the kernel can take them four at a time.
    d.gpu.launch("sgd", grid(len.div_ceil(4)), &args);
}
