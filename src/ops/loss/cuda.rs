//! Launch of `loss.cu` (f32 in every program).

use super::CrossEntropy;
use crate::gpu::{int, one_block};
use crate::ops::kernels::CROSS_ENTROPY;
use crate::ops::DeviceView;

pub(super) fn cross_entropy(op: &CrossEntropy, d: &DeviceView) {
    let (n, o) = (op.n, op.o);
    d.check_len(op.stats, 2, "cross-entropy stats");
    d.check_len(op.logits, n * o, "cross-entropy logits");
    d.check_len(op.labels, n, "cross-entropy labels");
    if let Some(b) = op.d_logits {
        d.check_len(b, n * o, "cross-entropy d_logits");
    }
    d.f32_only(&[op.stats, op.logits, op.labels], "cross-entropy");
    d.f32_only(op.d_logits.as_slice(), "cross-entropy");
    let (st, dl, l, y) = (d.buf(op.stats), d.opt(op.d_logits), d.buf(op.logits), d.buf(op.labels));
    let (ni, oi) = (int(n), int(o));
    d.gpu.launch(CROSS_ENTROPY, one_block(), &[&st, &dl, &l, &y, &ni, &oi]);
}
