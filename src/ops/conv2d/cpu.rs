use rayon::prelude::*;

use super::lowering::{self, ConvCmd, Operand};
use super::winograd::{self, Wino};
use super::winograd_cmds::{self, WinoCmd};
use super::winograd_f4 as f4;
use super::{workspace_len, Algo};
use crate::blas::{gemm, vectorized};
use crate::ir::{ConvShape, Elem, Slice, Target};
use crate::ops::batchnorm::bn_relu_value;

/// Output positions `[lo, hi)` along one axis whose input position `o*stride + tap - pad` lies
/// in `[0, len_in)`; the others read padding.
fn valid_range(len_out: usize, len_in: usize, stride: usize, tap: usize, pad: usize) -> (usize, usize) {
    let lo = if tap >= pad { 0 } else { (pad - tap).div_ceil(stride) };
    let hi = if len_in + pad > tap { ((len_in - 1 + pad - tap) / stride + 1).min(len_out) } else { 0 };
    (lo.min(hi), hi)
}

/// Enough rows per rayon task that tiny rows do not drown in scheduling.
fn min_rows(row_len: usize) -> usize {
    (4096 / row_len.max(1)).max(1)
}

/// Builds `col[channels*K*K, nb*Ho*Wo]` for images `n0..n0+nb` of `inp` (`(channels, N, H, W)`):
/// row `c*K*K + ky*K + kx`, column `i*Ho*Wo + oy*Wo + ox` holds
/// `inp[c, n0+i, oy*stride + ky - pad, ox*stride + kx - pad]`, or 0 in the padding.
pub fn im2col<T: Elem>(col: &mut [T], inp: &[T], p: &ConvShape, channels: usize, n0: usize, nb: usize) {
    im2col_with(col, inp, p, channels, n0, nb, None)
}

/// A train-mode BN + ReLU (+ SliceOut's scale) that a convolution applies to its input while
/// gathering it ([`im2col_bn_relu`]), in place of reading a recomputed BN output: the BN's
/// saved statistics (`mean`, `invstd`: slice order, one per buffer channel), its affine
/// parameters (`gamma`, `beta`: the whole layer's, read through `slice`) and the scale.
#[derive(Clone, Copy, Debug)]
pub struct BnReluFold<'a> {
    pub mean: &'a [f32],
    pub invstd: &'a [f32],
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub slice: Slice,
    pub scale: f32,
}

impl BnReluFold<'_> {
    /// Buffer channel `c`'s `(mean, invstd, gamma, beta)`: buffer channel `c` is layer channel
    /// `(start + c) mod channels`.
    fn channel(&self, c: usize) -> (f32, f32, f32, f32) {
        let layer = (self.slice.start + c) % self.slice.channels;
        (self.mean[c], self.invstd[c], self.gamma[layer], self.beta[layer])
    }

    fn check(&self, channels: usize) {
        assert_eq!(self.slice.width, channels, "BN fold: slice width vs the input's channels");
        assert!(self.mean.len() >= channels && self.invstd.len() >= channels, "BN fold: statistics too short");
        assert!(
            self.gamma.len() >= self.slice.channels && self.beta.len() >= self.slice.channels,
            "BN fold: gamma, beta"
        );
    }
}

/// [`im2col`] of `relu(bn(inp)) * scale` (`fold`): each gathered value is what `bn_relu_apply`
/// would have stored (`batchnorm::bn_relu_value`), the padding stays 0 (it pads the BN output).
#[allow(clippy::too_many_arguments)]
pub fn im2col_bn_relu<T: Elem>(
    col: &mut [T],
    inp: &[T],
    p: &ConvShape,
    channels: usize,
    n0: usize,
    nb: usize,
    fold: &BnReluFold,
) {
    fold.check(channels);
    im2col_with(col, inp, p, channels, n0, nb, Some(fold))
}

/// Values of the buffer on the stack that the planes of a folded im2col are normalised into
/// before their taps are gathered from it (im2col reads each value K*K times); a plane larger
/// than it applies the BN to each value as it is gathered.
const FOLD_PLANE: usize = 16384;

/// [`im2col`], applying `fold` to each gathered value when given.
fn im2col_with<T: Elem>(
    col: &mut [T],
    inp: &[T],
    p: &ConvShape,
    channels: usize,
    n0: usize,
    nb: usize,
    fold: Option<&BnReluFold>,
) {
    p.check();
    let (k, hw, howo, kk) = (p.k, p.h * p.w, p.ho() * p.wo(), p.kk());
    assert!(n0 + nb <= p.n, "im2col: images out of range");
    assert!(inp.len() >= channels * p.n * hw, "im2col: input too short");
    let row_len = nb * howo;
    let rows = channels * kk;
    assert!(col.len() >= rows * row_len, "im2col: workspace too short");
    if row_len == 0 || rows == 0 {
        return;
    }
    let plane = |c: usize, i: usize| &inp[(c * p.n + n0 + i) * hw..][..hw];
    let Some(f) = fold.filter(|_| hw <= FOLD_PLANE) else {
        col[..rows * row_len].par_chunks_mut(row_len).with_min_len(min_rows(row_len)).enumerate().for_each(
            |(r, row)| {
                let (c, ky, kx) = (r / kk, (r % kk) / k, r % k);
                let bn = fold.map(|f| (f.channel(c), f.scale));
                vectorized(
                    #[inline(always)]
                    || {
                        for (i, dst) in row.chunks_exact_mut(howo).enumerate() {
                            gather_tap(dst, plane(c, i), p, ky, kx, bn);
                        }
                    },
                )
            },
        );
        return;
    };
    // One task per channel (its K*K rows): the planes of as many images as the buffer holds
    // are normalised once, then each tap's row is written for those images.
    let (chunk, group) = (kk * row_len, FOLD_PLANE / hw);
    col[..rows * row_len].par_chunks_mut(chunk).with_min_len(min_rows(chunk)).enumerate().for_each(|(c, taps)| {
        let (mu, is, g, b) = f.channel(c);
        let src = &inp[(c * p.n + n0) * hw..][..nb * hw];
        let mut normal = [T::default(); FOLD_PLANE];
        for i0 in (0..nb).step_by(group) {
            let images = group.min(nb - i0);
            let normal = &mut normal[..images * hw];
            vectorized(
                #[inline(always)]
                || {
                    for (o, &x) in normal.iter_mut().zip(&src[i0 * hw..]) {
                        *o = bn_relu_value(x, mu, is, g, b, f.scale);
                    }
                },
            );
            for t in 0..kk {
                let row = &mut taps[t * row_len + i0 * howo..][..images * howo];
                for (dst, plane) in row.chunks_exact_mut(howo).zip(normal.chunks_exact(hw)) {
                    gather_tap(dst, plane, p, t / k, t % k, None);
                }
            }
        }
    });
}

/// One image's part of im2col row `(c, ky, kx)`: `dst[oy*Wo + ox]` = `src[oy*stride + ky - pad,
/// ox*stride + kx - pad]` of the channel's plane `src`, or 0 in the padding; with `bn`
/// (`(mean, invstd, gamma, beta)`, scale) each value gathered goes through the BN + ReLU.
#[inline(always)]
fn gather_tap<T: Elem>(
    dst: &mut [T],
    src: &[T],
    p: &ConvShape,
    ky: usize,
    kx: usize,
    bn: Option<((f32, f32, f32, f32), f32)>,
) {
    let (h, w, ho, wo, s, pad) = (p.h, p.w, p.ho(), p.wo(), p.stride, p.pad);
    let (ylo, yhi) = valid_range(ho, h, s, ky, pad);
    let (xlo, xhi) = valid_range(wo, w, s, kx, pad);
    dst[..ylo * wo].fill(T::default());
    dst[yhi * wo..].fill(T::default());
    for oy in ylo..yhi {
        let iy = oy * s + ky - pad;
        let srow = &src[iy * w..][..w];
        let d = &mut dst[oy * wo..][..wo];
        d[..xlo].fill(T::default());
        d[xhi..].fill(T::default());
        if xlo == xhi {
            continue;
        }
        let x0 = xlo * s + kx - pad;
        if let Some(((mu, is, g, b), sc)) = bn {
            for (v, &x) in d[xlo..xhi].iter_mut().zip(srow[x0..].iter().step_by(s)) {
                *v = bn_relu_value(x, mu, is, g, b, sc);
            }
        } else if s == 1 {
            d[xlo..xhi].copy_from_slice(&srow[x0..x0 + (xhi - xlo)]);
        } else {
            for (v, &x) in d[xlo..xhi].iter_mut().zip(srow[x0..].iter().step_by(s)) {
                *v = x;
            }
        }
    }
}

/// Columns of an input row `col2im` sums at a time, in f32 on the stack.
const ROW_TILE: usize = 64;

/// The adjoint of `im2col`: scatters `col[channels*K*K, nb*Ho*Wo]` back onto images
/// `n0..n0+nb` of `d_inp` (`(channels, N, H, W)`), summing overlapping windows and dropping the
/// padding. Those images are overwritten, or added to when `accumulate`; others are untouched.
/// Each element's windows are summed in f32 (a tile of a row at a time) and the sum, plus the
/// old value when accumulating, is stored once: a bf16 gradient is rounded once per element.
pub fn col2im<T: Elem>(
    d_inp: &mut [T],
    col: &[T],
    p: &ConvShape,
    channels: usize,
    n0: usize,
    nb: usize,
    accumulate: bool,
) {
    p.check();
    let (h, w, ho, wo, k, s, pad) = (p.h, p.w, p.ho(), p.wo(), p.k, p.stride, p.pad);
    let (hw, howo, kk) = (h * w, ho * wo, p.kk());
    assert!(n0 + nb <= p.n, "col2im: images out of range");
    let plane = p.n * hw;
    assert!(d_inp.len() >= channels * plane, "col2im: gradient too short");
    let row_len = nb * howo;
    assert!(col.len() >= channels * kk * row_len, "col2im: workspace too short");
    if hw == 0 || nb == 0 || channels == 0 {
        return;
    }
    // The first output position of tap `t` (along an axis) whose input position is at least `x`.
    let first = |x: usize, t: usize| (x + pad).saturating_sub(t).div_ceil(s);
    d_inp[..channels * plane].par_chunks_mut(plane).enumerate().for_each(|(c, d_channel)| {
        d_channel[n0 * hw..(n0 + nb) * hw].par_chunks_mut(hw).enumerate().for_each(|(i, dst)| {
            vectorized(
                #[inline(always)]
                || {
                    let mut tile = [0f32; ROW_TILE];
                    for (iy, drow) in dst.chunks_exact_mut(w).enumerate() {
                        for (x0, dseg) in (0..w).step_by(ROW_TILE).zip(drow.chunks_mut(ROW_TILE)) {
                            let acc = &mut tile[..dseg.len()];
                            acc.fill(0.0);
                            // Taps ky whose window row oy lands on input row iy: oy*s + ky - pad = iy.
                            for ky in (0..k).filter(|&ky| iy + pad >= ky && (iy + pad - ky) % s == 0) {
                                let oy = (iy + pad - ky) / s;
                                if oy >= ho {
                                    continue;
                                }
                                for kx in 0..k {
                                    let (xlo, xhi) = valid_range(wo, w, s, kx, pad);
                                    let (lo, hi) = (xlo.max(first(x0, kx)), xhi.min(first(x0 + dseg.len(), kx)));
                                    if lo >= hi {
                                        continue;
                                    }
                                    let src = &col[(c * kk + ky * k + kx) * row_len + i * howo + oy * wo..][lo..hi];
                                    let a0 = lo * s + kx - pad - x0;
                                    if s == 1 {
                                        acc[a0..a0 + (hi - lo)].iter_mut().zip(src).for_each(|(a, v)| *a += v.to_f32());
                                    } else {
                                        acc[a0..].iter_mut().step_by(s).zip(src).for_each(|(a, v)| *a += v.to_f32());
                                    }
                                }
                            }
                            for (d, &v) in dseg.iter_mut().zip(acc.iter()) {
                                *d = T::from_f32(if accumulate { d.to_f32() + v } else { v });
                            }
                        }
                    }
                },
            )
        });
    });
}

/// Checks the slices against the layer and the buffers against the slices.
fn check_call(p: &ConvShape, out_slice: &Slice, in_slice: &Slice) {
    p.check();
    for (s, c, what) in [(out_slice, p.cout, "out_slice"), (in_slice, p.cin, "in_slice")] {
        assert!(
            s.channels == c && s.width >= 1 && s.width <= c && s.start < c,
            "conv: {what} {s:?} does not fit {c} channels"
        );
    }
}

/// `out = conv(inp)` (or `out += conv(inp)` when `accumulate`) for the output channels of
/// `out_slice` and the input channels of `in_slice`.
///
/// `out` holds `(out_slice.width, N, Ho, Wo)` and `inp` holds `(in_slice.width, N, H, W)`, both
/// in slice order; `weight` is the full `[cout, cin*K*K]` matrix. `chunk` images go through
/// `col` at a time (0 or >= N: the whole batch); `col` needs at least the im2col columns of a
/// chunk (`workspace_len` for the CPU to run Winograd where it applies) and is unused when
/// `p.direct()`. Winograd runs on f32 only; other element types take im2col + GEMM.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward<T: Elem, W: Elem>(
    out: &mut [T],
    inp: &[T],
    weight: &[W],
    col: &mut [T],
    p: &ConvShape,
    out_slice: Slice,
    in_slice: Slice,
    chunk: usize,
    accumulate: bool,
    algo: Algo,
) {
    check_call(p, &out_slice, &in_slice);
    let (w_out, w_in, kk) = (out_slice.width, in_slice.width, p.kk());
    let howo = p.ho() * p.wo();
    let ncols = p.n * howo;
    assert!(out.len() >= w_out * ncols, "conv forward: output too short");
    assert!(inp.len() >= w_in * p.n * p.h * p.w, "conv forward: input too short");
    assert!(weight.len() >= p.cout * p.cin * kk, "conv forward: weight too short");
    if !p.direct() {
        assert!(col.len() >= p.im2col_len(w_in, chunk), "conv forward: workspace too short");
        if use_winograd(p, w_in, chunk, col.len(), algo) {
            if let (Some(out), Some(inp), Some(weight), Some(col)) =
                (T::as_f32_mut(out), T::as_f32(inp), W::as_f32(weight), T::as_f32_mut(col))
            {
                let sub = winograd::cpu_chunk(p, w_in, w_out, chunk);
                let mut ops = Operands { weight, inp, out, col, ..Operands::default() };
                winograd_cmds::forward(p, Wino::on(Target::Cpu, p), out_slice, in_slice, sub, accumulate, |cmd| {
                    ops.run_winograd(cmd, p, out_slice, in_slice)
                });
                return;
            }
        }
    }
    let mut ops = Operands { weight, inp, out, col, ..Operands::default() };
    lowering::conv_forward(p, out_slice, in_slice, chunk, accumulate, |cmd| ops.run(cmd, p, w_in));
}

/// Gradients of `conv2d_forward` given `d_out` (`(out_slice.width, N, Ho, Wo)`).
///
/// `d_weight` is overwritten with `[out_slice.width, in_slice.width*K*K]` in slice order (rows
/// follow `out_slice`, column groups of `K*K` follow `in_slice`). `d_inp`, when wanted, gets
/// `(in_slice.width, N, H, W)`, overwritten or added to when `accumulate_d_inp`. Each chunk
/// rebuilds its column matrix in `col`, uses it for `dW += dY * col^T`, then reuses `col` for
/// `dcol = W^T * dY` and scatters that back with col2im. Winograd runs where
/// `conv2d_forward` says.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward<T: Elem, W: Elem>(
    d_inp: Option<&mut [T]>,
    d_weight: &mut [f32],
    d_out: &[T],
    inp: &[T],
    weight: &[W],
    col: &mut [T],
    p: &ConvShape,
    out_slice: Slice,
    in_slice: Slice,
    chunk: usize,
    accumulate_d_inp: bool,
    algo: Algo,
) {
    let (os, is) = (out_slice, in_slice);
    conv2d_backward_with(d_inp, d_weight, d_out, inp, weight, col, p, os, is, chunk, accumulate_d_inp, algo, None)
}

/// [`conv2d_backward`], or with `fold` that of the convolution of `relu(bn(inp)) * scale`, given
/// the BN's input `inp`: its im2col applies the BN ([`im2col_bn_relu`]), so the BN output is
/// never written. A folding call runs im2col + GEMM whatever `algo` says (Winograd's transforms
/// read the input as it is); a direct convolution, whose GEMM reads its input in place, cannot
/// fold.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_with<T: Elem, W: Elem>(
    d_inp: Option<&mut [T]>,
    d_weight: &mut [f32],
    d_out: &[T],
    inp: &[T],
    weight: &[W],
    col: &mut [T],
    p: &ConvShape,
    out_slice: Slice,
    in_slice: Slice,
    chunk: usize,
    accumulate_d_inp: bool,
    algo: Algo,
    fold: Option<BnReluFold>,
) {
    check_call(p, &out_slice, &in_slice);
    if let Some(f) = &fold {
        assert!(!p.direct(), "a direct convolution reads its input in place: no BN fold");
        f.check(in_slice.width);
    }
    let algo = if fold.is_some() { Algo::Im2col } else { algo };
    let (w_out, w_in, kk) = (out_slice.width, in_slice.width, p.kk());
    let howo = p.ho() * p.wo();
    let ncols = p.n * howo;
    let in_len = w_in * p.n * p.h * p.w;
    assert!(d_out.len() >= w_out * ncols, "conv backward: d_out too short");
    assert!(inp.len() >= in_len, "conv backward: input too short");
    assert!(weight.len() >= p.cout * p.cin * kk, "conv backward: weight too short");
    assert!(d_weight.len() >= w_out * w_in * kk, "conv backward: d_weight too short");
    if let Some(d) = d_inp.as_deref() {
        assert!(d.len() >= in_len, "conv backward: d_inp too short");
    }
    if !p.direct() {
        assert!(col.len() >= p.im2col_len(w_in, chunk), "conv backward: workspace too short");
        let f32s = (T::as_f32(d_out), T::as_f32(inp), W::as_f32(weight));
        if let (true, (Some(d_out), Some(inp), Some(weight))) = (use_winograd(p, w_in, chunk, col.len(), algo), f32s) {
            let d_inp = d_inp.map(|d| T::as_f32_mut(d).expect("f32 like d_out"));
            let col = T::as_f32_mut(col).expect("f32 like d_out");
            let sub = winograd::cpu_chunk(p, w_in, w_out, chunk);
            let wants_d_inp = d_inp.is_some();
            let mut ops = Operands { weight, inp, col, d_out, d_weight, ..Operands::default() };
            ops.d_inp = d_inp.unwrap_or_default();
            winograd_cmds::backward(
                p,
                Wino::on(Target::Cpu, p),
                out_slice,
                in_slice,
                sub,
                wants_d_inp,
                accumulate_d_inp,
                |cmd| ops.run_winograd(cmd, p, out_slice, in_slice),
            );
            return;
        }
    }
    let ops = Operands { weight, inp, col, d_out, d_weight, fold, ..Operands::default() };
    lowered_backward(ops, d_inp, p, out_slice, in_slice, chunk, accumulate_d_inp, false);
}

/// [`conv2d_backward`] of a dense convolution (full slices) whose input gradient is a
/// convolution of `d_out` with `weight_flipped` ([`copy_weight_flipped`]'s `[cin, cout*K*K]`):
/// per chunk, im2col of `inp` and `dW = dY * col^T`, then im2col of `d_out` and
/// `d_inp (+)= W' * col`, no col2im (`lowering::conv_backward`'s `by_conv`). The layer must be
/// one [`lowering::input_grad_by_conv_fits`] allows; `col` holds the im2col columns of `inp`.
/// With `fold`, the layer convolves `relu(bn(inp)) * scale` as [`conv2d_backward_with`] does.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_by_conv<T: Elem, W: Elem>(
    d_inp: &mut [T],
    d_weight: &mut [f32],
    d_out: &[T],
    inp: &[T],
    weight_flipped: &[W],
    col: &mut [T],
    p: &ConvShape,
    chunk: usize,
    accumulate_d_inp: bool,
    fold: Option<BnReluFold>,
) {
    let (os, is) = (Slice::full(p.cout), Slice::full(p.cin));
    check_call(p, &os, &is);
    if let Some(f) = &fold {
        f.check(p.cin);
    }
    let (kk, in_len) = (p.kk(), p.cin * p.n * p.h * p.w);
    assert!(lowering::input_grad_by_conv_fits(p, p.cout, p.cin), "no input gradient by convolution for {p:?}");
    assert!(d_out.len() >= p.cout * p.n * p.ho() * p.wo(), "conv backward: d_out too short");
    assert!(inp.len() >= in_len && d_inp.len() >= in_len, "conv backward: input or d_inp too short");
    assert!(weight_flipped.len() >= p.cin * p.cout * kk, "conv backward: flipped weight too short");
    assert!(d_weight.len() >= p.cout * p.cin * kk, "conv backward: d_weight too short");
    assert!(col.len() >= p.im2col_len(p.cin, chunk), "conv backward: workspace too short");
    let ops = Operands { weight: weight_flipped, inp, col, d_out, d_weight, fold, ..Operands::default() };
    lowered_backward(ops, Some(d_inp), p, os, is, chunk, accumulate_d_inp, true);
}

/// Runs the backward lowering on the host with `ops` (their `d_inp` taken from `d_inp`).
#[allow(clippy::too_many_arguments)]
fn lowered_backward<'a, T: Elem, W: Elem>(
    mut ops: Operands<'a, T, W>,
    d_inp: Option<&'a mut [T]>,
    p: &ConvShape,
    out_slice: Slice,
    in_slice: Slice,
    chunk: usize,
    accumulate_d_inp: bool,
    by_conv: bool,
) {
    if p.n == 0 {
        // No chunk runs, but the gradient of an empty batch is still zero.
        ops.d_weight[..out_slice.width * in_slice.width * p.kk()].fill(0.0);
    }
    let wants_d_inp = d_inp.is_some();
    ops.d_inp = d_inp.unwrap_or_default();
    let w_in = in_slice.width;
    lowering::conv_backward(p, out_slice, in_slice, chunk, wants_d_inp, accumulate_d_inp, by_conv, |cmd| {
        ops.run(cmd, p, w_in)
    });
}

/// Winograd where `algo` allows it, the layer is eligible and the workspace was sized for it (a
/// program planned for the GPU sizes workspaces for im2col alone: it then runs im2col here).
fn use_winograd(p: &ConvShape, in_width: usize, chunk: usize, col_len: usize, algo: Algo) -> bool {
    algo == Algo::Fast && winograd::eligible(p) && col_len >= workspace_len(p, in_width, chunk, Target::Cpu)
}

/// The memory behind each operand of a lowered convolution on the host: the weight (f32, or a
/// bf16 copy of its slice) and its f32 gradient, the rest of the storage type `T`.
#[derive(Default)]
struct Operands<'a, T, W> {
    weight: &'a [W],
    inp: &'a [T],
    out: &'a mut [T],
    col: &'a mut [T],
    d_out: &'a [T],
    d_inp: &'a mut [T],
    d_weight: &'a mut [f32],
    /// The BN + ReLU the im2col of `inp` applies (none: `inp` is the convolution's input).
    fold: Option<BnReluFold<'a>>,
}

impl<'a, T: Elem, W: Elem> Operands<'a, T, W> {
    /// An operand of the storage type, read.
    fn read(&self, o: Operand) -> &[T] {
        match o {
            Operand::Inp => self.inp,
            Operand::Out => self.out,
            Operand::Col => self.col,
            Operand::DOut => self.d_out,
            Operand::DInp => self.d_inp,
            Operand::Weight | Operand::DWeight => unreachable!("{o:?} is not of the storage type"),
        }
    }

    fn written(&mut self, o: Operand) -> &mut &'a mut [T] {
        match o {
            Operand::Out => &mut self.out,
            Operand::Col => &mut self.col,
            Operand::DInp => &mut self.d_inp,
            _ => unreachable!("the lowering never writes {o:?} as an activation"),
        }
    }

    /// Runs one command of the lowering with the CPU's im2col, col2im and GEMM.
    fn run(&mut self, cmd: ConvCmd, p: &ConvShape, in_width: usize) {
        match cmd {
            ConvCmd::Im2col { src, channels, n0, nc } => {
                let (src, fold) = match src {
                    Operand::Inp => (self.inp, self.fold.as_ref()),
                    Operand::DOut => (self.d_out, None),
                    _ => unreachable!("im2col reads the input or the output's gradient, not {src:?}"),
                };
                im2col_with(self.col, src, p, channels, n0, nc, fold)
            }
            ConvCmd::Col2im { n0, nc, accumulate } => col2im(self.d_inp, self.col, p, in_width, n0, nc, accumulate),
            ConvCmd::Gemm(g) => {
                let (cl, al, bl) = (g.c.layout(g.m, g.n), g.a.layout(g.m, g.k), g.b.layout(g.k, g.n));
                // The output operand is never an input of the same product: take it out while the
                // inputs are read. The lowering's products are `dW = dY col^T` (into the f32
                // gradient), and `Y = W col`, `dcol = W^T dY` (the weight times activations).
                if g.c.operand == Operand::DWeight {
                    let c = std::mem::take(&mut self.d_weight);
                    gemm(c, cl, self.read(g.a.operand), al, self.read(g.b.operand), bl, g.accumulate);
                    self.d_weight = c;
                } else {
                    assert_eq!(g.a.operand, Operand::Weight, "an activation product reads the weight");
                    let c = std::mem::take(self.written(g.c.operand));
                    gemm(c, cl, self.weight, al, self.read(g.b.operand), bl, g.accumulate);
                    *self.written(g.c.operand) = c;
                }
            }
        }
    }
}

impl Operands<'_, f32, f32> {
    /// Runs one command of the Winograd walk with the CPU's transforms and GEMM.
    fn run_winograd(&mut self, cmd: WinoCmd, p: &ConvShape, os: Slice, is: Slice) {
        let w = Wino::on(Target::Cpu, p);
        match cmd {
            WinoCmd::Weight { at, flipped } => {
                winograd::weight_transform(&mut self.col[at..], self.weight, p, os, is, flipped, w)
            }
            WinoCmd::Input { src, channels, at, n0, nb } => {
                let src = match src {
                    Operand::Inp => self.inp,
                    Operand::DOut => self.d_out,
                    _ => unreachable!("the input transform reads the input or the output's gradient, not {src:?}"),
                };
                let v = &mut self.col[at..];
                match w {
                    Wino::F2 => winograd::transform_tiles(v, src, p, w, channels, n0, nb, winograd::input_transform),
                    Wino::F4 => winograd::transform_tiles(v, src, p, w, channels, n0, nb, f4::input_transform),
                }
            }
            WinoCmd::Grad { channels, at, n0, nb } => {
                let (v, d_out) = (&mut self.col[at..], self.d_out);
                match w {
                    Wino::F2 => winograd::transform_tiles(v, d_out, p, w, channels, n0, nb, winograd::grad_transform),
                    Wino::F4 => winograd::transform_tiles(v, d_out, p, w, channels, n0, nb, f4::grad_transform),
                }
            }
            WinoCmd::Products { gemm, strides, .. } => winograd::batched_products(self.col, &gemm, strides, w.xi()),
            WinoCmd::Output { dst, channels, at, n0, nb, accumulate } => {
                let dst = match dst {
                    Operand::Out => &mut *self.out,
                    Operand::DInp => &mut *self.d_inp,
                    _ => unreachable!("the output transform writes the output or the input's gradient, not {dst:?}"),
                };
                winograd::output_tiles(dst, &self.col[at..], p, w, channels, n0, nb, accumulate)
            }
            WinoCmd::WeightGrad { at, any } => {
                winograd::weight_grad(self.d_weight, &self.col[at..], os.width, is.width, any, w)
            }
        }
    }
}

/// The dense convolution a sliced one becomes once its weight's slice is copied out
/// ([`copy_weight`]): `out_slice.width` outputs from `in_slice.width` inputs, full slices. Its
/// buffers are the sliced one's (slice order), so it runs with a single GEMM per chunk.
pub fn dense_twin(p: &ConvShape, out_slice: Slice, in_slice: Slice) -> (ConvShape, Slice, Slice) {
    let (o, i) = (out_slice.width, in_slice.width);
    (ConvShape { cout: o, cin: i, ..*p }, Slice::full(o), Slice::full(i))
}

/// `copy` = the rows of `out_slice` and column groups of `in_slice` of `weight` (`[cout, cin*K*K]`),
/// in slice order: `[out_slice.width, in_slice.width*K*K]`, each value rounded to `T` once.
pub fn copy_weight<T: Elem>(copy: &mut [T], weight: &[f32], p: &ConvShape, out_slice: Slice, in_slice: Slice) {
    check_call(p, &out_slice, &in_slice);
    let (kk, ld) = (p.kk(), p.cin * p.kk());
    let ldc = in_slice.width * kk;
    assert_eq!(copy.len(), out_slice.width * ldc, "weight copy length vs the slice");
    assert!(weight.len() >= p.cout * ld, "weight copy: weight too short");
    for ro in out_slice.each_run() {
        copy[ro.at * ldc..(ro.at + ro.len) * ldc].par_chunks_mut(ldc).enumerate().for_each(|(r, row)| {
            let src = &weight[(ro.channel + r) * ld..][..ld];
            for ri in in_slice.each_run() {
                let (dst, from) = (&mut row[ri.at * kk..(ri.at + ri.len) * kk], &src[ri.channel * kk..]);
                dst.iter_mut().zip(from).for_each(|(d, &w)| *d = T::from_f32(w));
            }
        });
    }
}

/// `copy` = the transpose of the weight's slice with its taps reversed, the weight of the
/// convolution that gives a stride-1 "same" convolution's input gradient
/// (`lowering::conv_backward`'s `by_conv`): `[in_slice.width, out_slice.width*K*K]`,
/// `copy[i][o*kk + t] = weight[out channel o][in channel i][kk-1-t]`, with `o` and `i` in slice
/// order (kh and kw both reversed: `t = kh*K + kw` becomes `kk-1-t`), each value rounded to `T`
/// once.
pub fn copy_weight_flipped<T: Elem>(copy: &mut [T], weight: &[f32], p: &ConvShape, out_slice: Slice, in_slice: Slice) {
    check_call(p, &out_slice, &in_slice);
    let (kk, ld) = (p.kk(), p.cin * p.kk());
    let ldc = out_slice.width * kk;
    assert_eq!(copy.len(), in_slice.width * ldc, "flipped weight copy length vs the slice");
    assert!(weight.len() >= p.cout * ld, "flipped weight copy: weight too short");
    // Slice position j is layer channel (start + j) mod channels.
    let channel = |s: &Slice, j: usize| (s.start + j) % s.channels;
    copy.par_chunks_mut(ldc).enumerate().for_each(|(i, row)| {
        let ci = channel(&in_slice, i);
        for (o, dst) in row.chunks_exact_mut(kk).enumerate() {
            let src = &weight[channel(&out_slice, o) * ld + ci * kk..][..kk];
            dst.iter_mut().zip(src.iter().rev()).for_each(|(d, &w)| *d = T::from_f32(w));
        }
    });
}
