//! Launches of `batchnorm.cu`: per contiguous run of the slice (two when it wraps), with the
//! per-channel vectors offset to the run's layer channels and the buffers to its rows. Training
//! and backward are a multi-block reduction (`gpu::reduction`, partial sums in the runtime's
//! scratch) followed by an element-wise pass. Activations and their gradients pick the kernels'
//! variant (`bn_stats` f32, `bn_stats_bf16` bf16, ...); statistics and parameters are f32.

use super::{BnReluApply, BnReluBackward, BnReluEval, BnReluTrain};
use crate::gpu::{elementwise_rows, f32_at, reduction, reduction_regions, REDUCTION_CHANNELS};
use crate::ir::{BufId, Dtype, Run, Slice};
use crate::ops::kernels::{BN_BACKWARD_SUMS, BN_RELU_APPLY, BN_RELU_BACKWARD, BN_RELU_EVAL, BN_STATS};
use crate::ops::DeviceView;

/// The runs of `slice` cut into pieces of at most [`REDUCTION_CHANNELS`] channels, the most one
/// launch reduces (and below a grid's 65,535 rows): a layer that wide launches once per piece.
fn pieces(slice: Slice) -> impl Iterator<Item = Run> {
    slice.each_run().flat_map(|r| {
        (0..r.len).step_by(REDUCTION_CHANNELS).map(move |o| Run {
            channel: r.channel + o,
            at: r.at + o,
            len: (r.len - o).min(REDUCTION_CHANNELS),
        })
    })
}

/// Checks activations (`w * m` elements) and per-channel vectors (`per * w` floats: f32 in
/// every program, as the kernels read them).
fn check(d: &DeviceView, slice: Slice, m: usize, acts: &[BufId], vecs: &[(BufId, usize)]) {
    for &b in acts {
        d.check_len(b, slice.width * m, "batch norm activation");
    }
    for &(b, per) in vecs {
        d.check_len(b, per * slice.width, "batch norm per-channel vector");
        assert_eq!(d.dtype(b), Dtype::F32, "batch norm per-channel vectors are f32");
    }
}

pub(super) fn train(op: &BnReluTrain, d: &DeviceView) {
    let (slice, m) = (d.t.slice(op.sel), op.m);
    assert!(m > 1, "training batch norm needs more than one value per channel");
    check(d, slice, m, &[op.out, op.inp], &[(op.stats, 2)]);
    let dtype = d.storage(&[op.out, op.inp]);
    let bn = op.bn;
    let (g, b, rm, rv) = (d.tensor(bn.gamma), d.tensor(bn.beta), d.tensor(bn.mean), d.tensor(bn.var));
    let (mi, scale) = (m as i64, slice.scale());
    // eps as the exact double PyTorch (and the CPU op) add, not the widened f32.
    let (mom, unbias, eps) = (d.t.bn_momentum, m as f64 / (m - 1) as f64, 1e-5);
    let (part, _, count) = reduction_regions(d.gpu.reduction_scratch());
    for r in pieces(slice) {
        let (o, x) = (d.at(op.out, r.at * m), d.at(op.inp, r.at * m));
        let (mu, is) = (d.at(op.stats, r.at), d.at(op.stats, slice.width + r.at));
        let (g, b) = (f32_at(g, r.channel), f32_at(b, r.channel));
        let (rm, rv) = (f32_at(rm, r.channel), f32_at(rv, r.channel));
        d.gpu.launch(
            BN_STATS.of(dtype),
            reduction(r.len, m),
            &[&mu, &is, &rm, &rv, &part, &count, &x, &mi, &mom, &unbias, &eps],
        );
        let apply = BN_RELU_APPLY.of(dtype);
        d.gpu.launch(apply, elementwise_rows(r.len, m), &[&o, &x, &mu, &is, &g, &b, &mi, &scale]);
    }
}

pub(super) fn apply(op: &BnReluApply, d: &DeviceView) {
    let (slice, m) = (d.t.slice(op.sel), op.m);
    check(d, slice, m, &[op.out, op.inp], &[(op.stats, 2)]);
    let apply = BN_RELU_APPLY.of(d.storage(&[op.out, op.inp]));
    let (g, b) = (d.tensor(op.bn.gamma), d.tensor(op.bn.beta));
    let (mi, scale) = (m as i64, slice.scale());
    for r in pieces(slice) {
        let (o, x) = (d.at(op.out, r.at * m), d.at(op.inp, r.at * m));
        let (mu, is) = (d.at(op.stats, r.at), d.at(op.stats, slice.width + r.at));
        let (g, b) = (f32_at(g, r.channel), f32_at(b, r.channel));
        d.gpu.launch(apply, elementwise_rows(r.len, m), &[&o, &x, &mu, &is, &g, &b, &mi, &scale]);
    }
}

pub(super) fn eval(op: &BnReluEval, d: &DeviceView) {
    let m = op.m;
    check(d, Slice::full(op.channels), m, &[op.out, op.inp], &[]);
    let bn = op.bn;
    let (g, b, rm, rv) = (d.tensor(bn.gamma), d.tensor(bn.beta), d.tensor(bn.mean), d.tensor(bn.var));
    let (mi, eps) = (m as i64, 1e-5f64);
    let eval = BN_RELU_EVAL.of(d.storage(&[op.out, op.inp]));
    for r in pieces(Slice::full(op.channels)) {
        let (o, x) = (d.at(op.out, r.at * m), d.at(op.inp, r.at * m));
        let (g, b) = (f32_at(g, r.channel), f32_at(b, r.channel));
        let (rm, rv) = (f32_at(rm, r.channel), f32_at(rv, r.channel));
        d.gpu.launch(eval, elementwise_rows(r.len, m), &[&o, &x, &g, &b, &rm, &rv, &mi, &eps]);
    }
}

pub(super) fn backward(op: &BnReluBackward, d: &DeviceView) {
    let (slice, m) = (d.t.slice(op.sel), op.m);
    check(d, slice, m, &[op.d_inp, op.d_out, op.inp], &[(op.stats, 2), (op.d_gamma, 1), (op.d_beta, 1)]);
    let dtype = d.storage(&[op.d_inp, op.d_out, op.inp]);
    let (g, b) = (d.tensor(op.bn.gamma), d.tensor(op.bn.beta));
    let (mi, scale, acc) = (m as i64, slice.scale(), op.accumulate as i32);
    let (part, means, count) = reduction_regions(d.gpu.reduction_scratch());
    for r in pieces(slice) {
        let (dx, dy, x) = (d.at(op.d_inp, r.at * m), d.at(op.d_out, r.at * m), d.at(op.inp, r.at * m));
        let (dg, db) = (d.at(op.d_gamma, r.at), d.at(op.d_beta, r.at));
        let (mu, is) = (d.at(op.stats, r.at), d.at(op.stats, slice.width + r.at));
        let (g, b) = (f32_at(g, r.channel), f32_at(b, r.channel));
        d.gpu.launch(
            BN_BACKWARD_SUMS.of(dtype),
            reduction(r.len, m),
            &[&dg, &db, &means, &part, &count, &dy, &x, &mu, &is, &g, &b, &mi, &scale],
        );
        d.gpu.launch(
            BN_RELU_BACKWARD.of(dtype),
            elementwise_rows(r.len, m),
            &[&dx, &means, &dy, &x, &mu, &is, &g, &b, &mi, &scale, &acc],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wrapping slice of a layer wider than one launch reduces: every channel once, in slice
    /// order, no piece over the limit.
    #[test]
    fn wide_runs_are_cut_into_pieces_one_launch_can_reduce() {
        let (channels, width) = (3 * REDUCTION_CHANNELS, 2 * REDUCTION_CHANNELS + 5);
        let slice = Slice::new(channels - 7, width, channels);
        let ps: Vec<Run> = pieces(slice).collect();
        assert!(ps.iter().all(|p| (1..=REDUCTION_CHANNELS).contains(&p.len)));
        let covered: Vec<(usize, usize)> =
            ps.iter().flat_map(|p| (0..p.len).map(move |i| (p.at + i, p.channel + i))).collect();
        let expected: Vec<(usize, usize)> = (0..width).map(|i| (i, (channels - 7 + i) % channels)).collect();
        assert_eq!(covered, expected);
        assert_eq!(pieces(Slice::full(10)).collect::<Vec<_>>(), [Run { channel: 0, at: 0, len: 10 }]);
    }
}
