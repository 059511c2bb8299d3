use rayon::prelude::*;

use crate::blas::vectorized;
use crate::ir::{Elem, Slice};
use crate::ops::min_rows;

pub const BN_EPS: f32 = 1e-5;
pub const BN_MOMENTUM: f32 = 0.1;

/// PyTorch adds `eps` as a double; keep it exact rather than widening the f32 constant.
const EPS_F64: f64 = 1e-5;

/// `gamma * xhat + beta`, the value ReLU sees. The single definition keeps forward, apply and
/// backward's mask in agreement to the bit.
#[inline(always)]
pub(super) fn pre_activation(x: f32, mean: f32, invstd: f32, gamma: f32, beta: f32) -> f32 {
    gamma * ((x - mean) * invstd) + beta
}

/// Sums `f(x, dy) = (a, b)` over a channel: eight f32 lanes over blocks of 512 elements (so the
/// loop vectorises), each block's total added in f64 (so long channels stay accurate).
#[inline(always)]
fn channel_sums<T: Elem>(x: &[T], dy: &[T], f: impl Fn(f32, f32) -> (f32, f32)) -> (f64, f64) {
    let (mut sa, mut sb) = (0f64, 0f64);
    for (xb, db) in x.chunks(512).zip(dy.chunks(512)) {
        let (mut la, mut lb) = ([0f32; 8], [0f32; 8]);
        let (xc, dc) = (xb.chunks_exact(8), db.chunks_exact(8));
        let (xr, dr) = (xc.remainder(), dc.remainder());
        for (x8, d8) in xc.zip(dc) {
            for i in 0..8 {
                let (a, b) = f(x8[i].to_f32(), d8[i].to_f32());
                la[i] += a;
                lb[i] += b;
            }
        }
        for (&x, &d) in xr.iter().zip(dr) {
            let (a, b) = f(x.to_f32(), d.to_f32());
            la[0] += a;
            lb[0] += b;
        }
        sa += la.iter().map(|&v| v as f64).sum::<f64>();
        sb += lb.iter().map(|&v| v as f64).sum::<f64>();
    }
    (sa, sb)
}

/// `sum f(x)` over a channel in f64, in eight lanes (so the loop vectorises) added in a fixed
/// order at the end.
#[inline(always)]
fn lane_sum<T: Elem>(x: &[T], f: impl Fn(f64) -> f64) -> f64 {
    let mut lanes = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for x8 in chunks {
        for (l, &v) in lanes.iter_mut().zip(x8) {
            *l += f(v.to_f32() as f64);
        }
    }
    for &v in rest {
        lanes[0] += f(v.to_f32() as f64);
    }
    lanes.iter().sum()
}

fn check_dims(slice: Slice, m: usize, act: &[usize], per_layer: &[usize]) {
    assert!(m > 0, "batch norm over empty channels");
    for &len in act {
        assert_eq!(len, slice.width * m, "activation length vs slice width * m");
    }
    for &len in per_layer {
        assert_eq!(len, slice.channels, "per-channel vector length vs layer channels");
    }
}

/// Training-mode forward: batch statistics of each of the slice's channels, normalise, affine,
/// ReLU, times `scale`. `stats` receives `mean[w]` then `invstd[w]` (kept for backward and
/// `bn_relu_apply`); the running stats of the slice's channels are updated as PyTorch does
/// (`momentum`, 0.1 in training; unbiased variance), the other channels' are left untouched.
#[allow(clippy::too_many_arguments)]
pub fn bn_relu_train<T: Elem>(
    out: &mut [T],
    stats: &mut [f32],
    inp: &[T],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    slice: Slice,
    m: usize,
    scale: f32,
    momentum: f64,
) {
    check_dims(slice, m, &[out.len(), inp.len()], &[gamma.len(), beta.len(), running_mean.len(), running_var.len()]);
    assert!(m > 1, "training batch norm needs more than one value per channel");
    assert_eq!(stats.len(), 2 * slice.width, "stats length vs 2 * slice width");
    let (mean, invstd) = stats.split_at_mut(slice.width);
    let mom = momentum;
    let unbias = m as f64 / (m - 1) as f64;
    for run in slice.each_run() {
        let (a, c, l) = (run.at, run.channel, run.len);
        (
            out[a * m..(a + l) * m].par_chunks_mut(m),
            inp[a * m..(a + l) * m].par_chunks(m),
            mean[a..a + l].par_iter_mut(),
            invstd[a..a + l].par_iter_mut(),
            running_mean[c..c + l].par_iter_mut(),
            running_var[c..c + l].par_iter_mut(),
            gamma[c..c + l].par_iter(),
            beta[c..c + l].par_iter(),
        )
            .into_par_iter()
            .with_min_len(min_rows(m))
            .for_each(|(o, x, mu, is, rm, rv, &g, &b)| {
                // Two passes in f64: exact enough that the mean never swamps the variance.
                let mean64 = vectorized(
                    #[inline(always)]
                    || lane_sum(x, |v| v),
                ) / m as f64;
                let var64 = vectorized(
                    #[inline(always)]
                    || {
                        lane_sum(x, |v| {
                            let d = v - mean64;
                            d * d
                        })
                    },
                ) / m as f64;
                *mu = mean64 as f32;
                *is = (1.0 / (var64 + EPS_F64).sqrt()) as f32;
                *rm = ((1.0 - mom) * *rm as f64 + mom * mean64) as f32;
                *rv = ((1.0 - mom) * *rv as f64 + mom * var64 * unbias) as f32;
                vectorized(
                    #[inline(always)]
                    || normalize_row(o, x, *mu, *is, g, b, scale),
                );
            });
    }
}

/// `relu(pre_activation) * scale` of one value, as stored: the single definition of a BN + ReLU
/// output, so that the convolutions that fold it into their im2col
/// (`ops::conv2d::BnPrologue`) gather exactly what `bn_relu_apply` would have written.
#[inline(always)]
pub fn bn_relu_value<T: Elem>(x: T, mean: f32, invstd: f32, g: f32, b: f32, scale: f32) -> T {
    T::from_f32(pre_activation(x.to_f32(), mean, invstd, g, b).max(0.0) * scale)
}

/// `relu(pre_activation) * scale` over one channel.
#[inline(always)]
fn normalize_row<T: Elem>(o: &mut [T], x: &[T], mean: f32, invstd: f32, g: f32, b: f32, scale: f32) {
    for (o, &x) in o.iter_mut().zip(x) {
        *o = bn_relu_value(x, mean, invstd, g, b, scale);
    }
}

/// Recomputes the training-mode output from the saved `stats` (bit-identical to what
/// `bn_relu_train` wrote), for schedules that drop the BN output and rebuild it later.
#[allow(clippy::too_many_arguments)]
pub fn bn_relu_apply<T: Elem>(
    out: &mut [T],
    inp: &[T],
    stats: &[f32],
    gamma: &[f32],
    beta: &[f32],
    slice: Slice,
    m: usize,
    scale: f32,
) {
    check_dims(slice, m, &[out.len(), inp.len()], &[gamma.len(), beta.len()]);
    assert_eq!(stats.len(), 2 * slice.width, "stats length vs 2 * slice width");
    let (mean, invstd) = stats.split_at(slice.width);
    for run in slice.each_run() {
        let (a, c, l) = (run.at, run.channel, run.len);
        (
            out[a * m..(a + l) * m].par_chunks_mut(m),
            inp[a * m..(a + l) * m].par_chunks(m),
            mean[a..a + l].par_iter(),
            invstd[a..a + l].par_iter(),
            gamma[c..c + l].par_iter(),
            beta[c..c + l].par_iter(),
        )
            .into_par_iter()
            .with_min_len(min_rows(m))
            .for_each(|(o, x, &mu, &is, &g, &b)| {
                vectorized(
                    #[inline(always)]
                    || normalize_row(o, x, mu, is, g, b, scale),
                )
            });
    }
}

/// Eval-mode forward: normalise with the running stats (no update), affine, ReLU. At test time
/// the full network runs unscaled, so there is no `scale`.
#[allow(clippy::too_many_arguments)]
pub fn bn_relu_eval<T: Elem>(
    out: &mut [T],
    inp: &[T],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    slice: Slice,
    m: usize,
) {
    check_dims(slice, m, &[out.len(), inp.len()], &[gamma.len(), beta.len(), running_mean.len(), running_var.len()]);
    for run in slice.each_run() {
        let (a, c, l) = (run.at, run.channel, run.len);
        (
            out[a * m..(a + l) * m].par_chunks_mut(m),
            inp[a * m..(a + l) * m].par_chunks(m),
            running_mean[c..c + l].par_iter(),
            running_var[c..c + l].par_iter(),
            gamma[c..c + l].par_iter(),
            beta[c..c + l].par_iter(),
        )
            .into_par_iter()
            .with_min_len(min_rows(m))
            .for_each(|(o, x, &rm, &rv, &g, &b)| {
                let is = (1.0 / (rv as f64 + EPS_F64).sqrt()) as f32;
                vectorized(
                    #[inline(always)]
                    || normalize_row(o, x, rm, is, g, b, 1.0),
                );
            });
    }
}

/// Training-mode backward through `relu(bn(x)) * scale`. The ReLU mask is recomputed from
/// `inp` and `stats`. `d_gamma`, `d_beta` (slice order, `w` entries) are overwritten; `d_inp`
/// is overwritten, or added to when `accumulate` (a residual input that already holds the
/// shortcut's gradient).
#[allow(clippy::too_many_arguments)]
pub fn bn_relu_backward<T: Elem>(
    d_inp: &mut [T],
    d_gamma: &mut [f32],
    d_beta: &mut [f32],
    d_out: &[T],
    inp: &[T],
    stats: &[f32],
    gamma: &[f32],
    beta: &[f32],
    slice: Slice,
    m: usize,
    scale: f32,
    accumulate: bool,
) {
    check_dims(slice, m, &[d_inp.len(), d_out.len(), inp.len()], &[gamma.len(), beta.len()]);
    assert_eq!(stats.len(), 2 * slice.width, "stats length vs 2 * slice width");
    assert_eq!(d_gamma.len(), slice.width, "d_gamma length vs slice width");
    assert_eq!(d_beta.len(), slice.width, "d_beta length vs slice width");
    let (mean, invstd) = stats.split_at(slice.width);
    for run in slice.each_run() {
        let (a, c, l) = (run.at, run.channel, run.len);
        (
            d_inp[a * m..(a + l) * m].par_chunks_mut(m),
            d_gamma[a..a + l].par_iter_mut(),
            d_beta[a..a + l].par_iter_mut(),
            d_out[a * m..(a + l) * m].par_chunks(m),
            inp[a * m..(a + l) * m].par_chunks(m),
            mean[a..a + l].par_iter(),
            invstd[a..a + l].par_iter(),
            gamma[c..c + l].par_iter(),
            beta[c..c + l].par_iter(),
        )
            .into_par_iter()
            .with_min_len(min_rows(m))
            .for_each(|(dx, dg, db, dy, x, &mu, &is, &g, &b)| {
                let stats = ChannelStats { mean: mu, invstd: is, gamma: g, beta: b };
                vectorized(
                    #[inline(always)]
                    || backward_channel(dx, dg, db, dy, x, stats, scale, accumulate),
                )
            });
    }
}

/// One channel's statistics and affine parameters, as `pre_activation` takes them.
#[derive(Clone, Copy)]
struct ChannelStats {
    mean: f32,
    invstd: f32,
    gamma: f32,
    beta: f32,
}

/// [`bn_relu_backward`] over one channel; inlined whole into `vectorized`'s wrapper so every
/// loop here gets the wide instructions.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn backward_channel<T: Elem>(
    dx: &mut [T],
    dg: &mut f32,
    db: &mut f32,
    dy: &[T],
    x: &[T],
    stats: ChannelStats,
    scale: f32,
    accumulate: bool,
) {
    let ChannelStats { mean: mu, invstd: is, gamma: g, beta: b } = stats;
    let m = x.len();
    // Gradient reaching the pre-activation: d_out * scale where ReLU let it through.
    // Written as a select, not a branch: the mask is data-dependent and a branch
    // mispredicts half the time.
    let grad = |x: f32, dy: f32| {
        let keep = pre_activation(x, mu, is, g, b) > 0.0;
        f32::from(u8::from(keep)) * dy * scale
    };
    let (sum_g, sum_gx) = channel_sums(x, dy, |x, dy| {
        let gr = grad(x, dy);
        (gr, gr * ((x - mu) * is))
    });
    *db = sum_g as f32;
    *dg = sum_gx as f32;
    // d_x = gamma * invstd * (g - mean(g) - xhat * mean(g * xhat)).
    let k = g * is;
    let mean_g = (sum_g / m as f64) as f32;
    let mean_gx = (sum_gx / m as f64) as f32;
    let d_x = |x: T, dy: T| {
        let x = x.to_f32();
        k * (grad(x, dy.to_f32()) - mean_g - (x - mu) * is * mean_gx)
    };
    let rows = dx.iter_mut().zip(x.iter().zip(dy));
    if accumulate {
        for (d, (&x, &dy)) in rows {
            *d = T::from_f32(d.to_f32() + d_x(x, dy));
        }
    } else {
        for (d, (&x, &dy)) in rows {
            *d = T::from_f32(d_x(x, dy));
        }
    }
}
