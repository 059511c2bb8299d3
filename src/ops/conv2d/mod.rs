//! 2-D convolution on the CPU as im2col + GEMM, with SliceOut's channel slices as strided views.
//!
//! Activations are channel-major `(C, N, H, W)`, so the column matrix of a batch is
//! `col[Cin*K*K, N*Ho*Wo]` and the whole convolution is one product
//! `Y[Cout, N*Ho*Wo] = W[Cout, Cin*K*K] * col`. The batch may be cut into chunks of images so that
//! the column buffer stays small (and in cache); a chunk writes its own column block of every
//! output row. A 1x1, stride 1, unpadded convolution needs no column matrix at all: the input
//! already is one.
//!
//! Slices never copy weights. Output channels `[s, s+w)` are rows of the OIHW weight matrix,
//! input channels are column groups of `K*K` read with the full leading dimension; a wrapping
//! slice is two runs and therefore two GEMMs (input runs accumulate, output runs write their own
//! rows). Sliced buffers hold only the slice's channels, in slice order.
//!
//! im2col and col2im run on rayon: im2col over rows of `col` (each row is one input channel and
//! one kernel tap, so writes never overlap), col2im over input planes (each plane sums all of its
//! taps, so the overlapping windows never race).

use crate::ops::gemm::gemm;
use crate::sliceout::Slice;
use crate::tensor::Layout;
use rayon::prelude::*;

#[cfg(test)]
mod tests;
mod winograd;

/// The geometry of one convolution layer at full width. `cin` and `cout` are the layer's full
/// channel counts; slices narrow them per call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub n: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvShape {
    pub fn ho(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }

    pub fn wo(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }

    /// Taps per input channel, `K*K`.
    pub fn kk(&self) -> usize {
        self.k * self.k
    }

    /// true for 1x1, stride 1, pad 0: the input is already the column matrix, no workspace.
    pub fn direct(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }

    /// Floats of the workspace for `in_width` input channels and `chunk` images (0 when
    /// direct()): im2col columns, or the Winograd path's buffers where it applies, whichever is
    /// larger, so that one plan serves the CPU (Winograd) and the CUDA backend (im2col).
    pub fn col_len(&self, in_width: usize, chunk: usize) -> usize {
        if self.direct() {
            return 0;
        }
        let im2col = in_width * self.kk() * self.chunk_images(chunk) * self.ho() * self.wo();
        if winograd::eligible(self) {
            return im2col.max(winograd::workspace_len(self, in_width, self.chunk_images(chunk)));
        }
        im2col
    }

    /// Multiply-adds of one forward pass with `out_width` output and `in_width` input channels.
    pub fn macs(&self, out_width: usize, in_width: usize) -> usize {
        out_width * in_width * self.kk() * self.n * self.ho() * self.wo()
    }

    /// Images per chunk: `chunk`, or the whole batch for 0 or anything larger.
    fn chunk_images(&self, chunk: usize) -> usize {
        if chunk == 0 || chunk >= self.n {
            self.n
        } else {
            chunk
        }
    }

    fn check(&self) {
        assert!(self.k >= 1 && self.stride >= 1, "conv: kernel and stride must be at least 1");
        assert!(
            self.h + 2 * self.pad >= self.k && self.w + 2 * self.pad >= self.k,
            "conv: kernel larger than the padded input"
        );
    }
}

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
pub fn im2col(col: &mut [f32], inp: &[f32], p: &ConvShape, channels: usize, n0: usize, nb: usize) {
    p.check();
    let (h, w, ho, wo, k, s, pad) = (p.h, p.w, p.ho(), p.wo(), p.k, p.stride, p.pad);
    let (hw, howo, kk) = (h * w, ho * wo, p.kk());
    assert!(n0 + nb <= p.n, "im2col: images out of range");
    assert!(inp.len() >= channels * p.n * hw, "im2col: input too short");
    let row_len = nb * howo;
    let rows = channels * kk;
    assert!(col.len() >= rows * row_len, "im2col: workspace too short");
    if row_len == 0 || rows == 0 {
        return;
    }
    col[..rows * row_len].par_chunks_mut(row_len).with_min_len(min_rows(row_len)).enumerate().for_each(|(r, row)| {
        let (c, ky, kx) = (r / kk, (r % kk) / k, r % k);
        let (ylo, yhi) = valid_range(ho, h, s, ky, pad);
        let (xlo, xhi) = valid_range(wo, w, s, kx, pad);
        for (i, dst) in row.chunks_exact_mut(howo).enumerate() {
            let src = &inp[(c * p.n + n0 + i) * hw..][..hw];
            dst[..ylo * wo].fill(0.0);
            dst[yhi * wo..].fill(0.0);
            for oy in ylo..yhi {
                let iy = oy * s + ky - pad;
                let srow = &src[iy * w..][..w];
                let d = &mut dst[oy * wo..][..wo];
                d[..xlo].fill(0.0);
                d[xhi..].fill(0.0);
                if xlo == xhi {
                    continue;
                }
                let x0 = xlo * s + kx - pad;
                if s == 1 {
                    d[xlo..xhi].copy_from_slice(&srow[x0..x0 + (xhi - xlo)]);
                } else {
                    for (v, &x) in d[xlo..xhi].iter_mut().zip(srow[x0..].iter().step_by(s)) {
                        *v = x;
                    }
                }
            }
        }
    });
}

/// The adjoint of `im2col`: scatters `col[channels*K*K, nb*Ho*Wo]` back onto images
/// `n0..n0+nb` of `d_inp` (`(channels, N, H, W)`), summing overlapping windows and dropping the
/// padding. Those images are overwritten, or added to when `accumulate`; others are untouched.
pub fn col2im(d_inp: &mut [f32], col: &[f32], p: &ConvShape, channels: usize, n0: usize, nb: usize, accumulate: bool) {
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
    d_inp[..channels * plane].par_chunks_mut(plane).enumerate().for_each(|(c, d_channel)| {
        d_channel[n0 * hw..(n0 + nb) * hw].par_chunks_mut(hw).enumerate().for_each(|(i, dst)| {
            if !accumulate {
                dst.fill(0.0);
            }
            for ky in 0..k {
                let (ylo, yhi) = valid_range(ho, h, s, ky, pad);
                for kx in 0..k {
                    let (xlo, xhi) = valid_range(wo, w, s, kx, pad);
                    if xlo == xhi {
                        continue;
                    }
                    let x0 = xlo * s + kx - pad;
                    let src = &col[(c * kk + ky * k + kx) * row_len + i * howo..][..howo];
                    for oy in ylo..yhi {
                        let iy = oy * s + ky - pad;
                        let drow = &mut dst[iy * w..][..w];
                        let srow = &src[oy * wo + xlo..oy * wo + xhi];
                        if s == 1 {
                            for (d, &v) in drow[x0..x0 + (xhi - xlo)].iter_mut().zip(srow) {
                                *d += v;
                            }
                        } else {
                            for (d, &v) in drow[x0..].iter_mut().step_by(s).zip(srow) {
                                *d += v;
                            }
                        }
                    }
                }
            }
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

/// The weight block of output run `ro` and input run `ri`: rows `[ro.channel, +ro.len)`,
/// columns `[ri.channel*kk, +ri.len*kk)` of the `[cout, cin*kk]` matrix, full leading dimension.
fn weight_view(p: &ConvShape, ro_channel: usize, ro_len: usize, ri_channel: usize, ri_len: usize) -> Layout {
    let (kk, ld) = (p.kk(), p.cin * p.kk());
    Layout::matrix(ro_channel * ld + ri_channel * kk, ro_len, ri_len * kk, ld, 1)
}

/// `out = conv(inp)` (or `out += conv(inp)` when `accumulate`) for the output channels of
/// `out_slice` and the input channels of `in_slice`.
///
/// `out` holds `(out_slice.width, N, Ho, Wo)` and `inp` holds `(in_slice.width, N, H, W)`, both
/// in slice order; `weight` is the full `[cout, cin*K*K]` matrix. `chunk` images go through
/// `col` at a time (0 or >= N: the whole batch); `col` needs `p.col_len(in_slice.width, chunk)`
/// floats and is unused when `p.direct()`.
#[allow(clippy::too_many_arguments)]
/// Which algorithm a convolution may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Algo {
    /// Winograd F(2x2, 3x3) where it applies (3x3, stride 1, pad 1, at least 4 input channels),
    /// im2col + GEMM elsewhere.
    #[default]
    Fast,
    /// im2col + GEMM everywhere: the plainest method, the reference other backends are held to.
    Im2col,
}

#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    col: &mut [f32],
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
    if p.direct() {
        // The input is col for the whole batch: `[w_in, N*H*W]`.
        for ro in out_slice.each_run() {
            for (j, ri) in in_slice.each_run().enumerate() {
                gemm(
                    out,
                    Layout::matrix(ro.at * ncols, ro.len, ncols, ncols, 1),
                    weight,
                    weight_view(p, ro.channel, ro.len, ri.channel, ri.len),
                    inp,
                    Layout::matrix(ri.at * ncols, ri.len, ncols, ncols, 1),
                    accumulate || j > 0,
                );
            }
        }
        return;
    }
    assert!(col.len() >= p.col_len(w_in, chunk), "conv forward: workspace too short");
    if algo == Algo::Fast && winograd::eligible(p) {
        winograd::forward(out, inp, weight, col, p, out_slice, in_slice, chunk, accumulate);
        return;
    }
    forward_im2col(out, inp, weight, col, p, out_slice, in_slice, chunk, accumulate);
}

/// The im2col + GEMM forward for chunks of `chunk` images (`col` as in `conv2d_forward`).
#[allow(clippy::too_many_arguments)]
fn forward_im2col(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    col: &mut [f32],
    p: &ConvShape,
    out_slice: Slice,
    in_slice: Slice,
    chunk: usize,
    accumulate: bool,
) {
    let (w_in, kk) = (in_slice.width, p.kk());
    let howo = p.ho() * p.wo();
    let ncols = p.n * howo;
    let per_chunk = p.chunk_images(chunk).max(1);
    for n0 in (0..p.n).step_by(per_chunk) {
        let nb = per_chunk.min(p.n - n0);
        let cols = nb * howo;
        im2col(col, inp, p, w_in, n0, nb);
        for ro in out_slice.each_run() {
            for (j, ri) in in_slice.each_run().enumerate() {
                gemm(
                    out,
                    Layout::matrix(ro.at * ncols + n0 * howo, ro.len, cols, ncols, 1),
                    weight,
                    weight_view(p, ro.channel, ro.len, ri.channel, ri.len),
                    col,
                    Layout::matrix(ri.at * kk * cols, ri.len * kk, cols, cols, 1),
                    accumulate || j > 0,
                );
            }
        }
    }
}

/// Gradients of `conv2d_forward` given `d_out` (`(out_slice.width, N, Ho, Wo)`).
///
/// `d_weight` is overwritten with `[out_slice.width, in_slice.width*K*K]` in slice order (rows
/// follow `out_slice`, column groups of `K*K` follow `in_slice`). `d_inp`, when wanted, gets
/// `(in_slice.width, N, H, W)`, overwritten or added to when `accumulate_d_inp`. Each chunk
/// rebuilds its column matrix in `col`, uses it for `dW += dY * col^T`, then reuses `col` for
/// `dcol = W^T * dY` and scatters that back with col2im.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward(
    d_inp: Option<&mut [f32]>,
    d_weight: &mut [f32],
    d_out: &[f32],
    inp: &[f32],
    weight: &[f32],
    col: &mut [f32],
    p: &ConvShape,
    out_slice: Slice,
    in_slice: Slice,
    chunk: usize,
    accumulate_d_inp: bool,
    algo: Algo,
) {
    check_call(p, &out_slice, &in_slice);
    let (w_out, w_in, kk) = (out_slice.width, in_slice.width, p.kk());
    let howo = p.ho() * p.wo();
    let ncols = p.n * howo;
    let in_len = w_in * p.n * p.h * p.w;
    assert!(d_out.len() >= w_out * ncols, "conv backward: d_out too short");
    assert!(inp.len() >= in_len, "conv backward: input too short");
    assert!(weight.len() >= p.cout * p.cin * kk, "conv backward: weight too short");
    assert!(d_weight.len() >= w_out * w_in * kk, "conv backward: d_weight too short");
    let dw_l = Layout::matrix(0, w_out, w_in * kk, w_in * kk, 1);
    if let Some(d) = d_inp.as_deref() {
        assert!(d.len() >= in_len, "conv backward: d_inp too short");
    }
    if p.direct() {
        // dW = dY * inp^T, d_inp = W^T * dY, with the input as its own column matrix.
        gemm(
            d_weight,
            dw_l,
            d_out,
            Layout::matrix(0, w_out, ncols, ncols, 1),
            inp,
            Layout::matrix(0, ncols, w_in, 1, ncols),
            false,
        );
        if let Some(d_inp) = d_inp {
            for ri in in_slice.each_run() {
                for (j, ro) in out_slice.each_run().enumerate() {
                    gemm(
                        d_inp,
                        Layout::matrix(ri.at * ncols, ri.len, ncols, ncols, 1),
                        weight,
                        weight_view(p, ro.channel, ro.len, ri.channel, ri.len).transpose(0, 1),
                        d_out,
                        Layout::matrix(ro.at * ncols, ro.len, ncols, ncols, 1),
                        accumulate_d_inp || j > 0,
                    );
                }
            }
        }
        return;
    }
    assert!(col.len() >= p.col_len(w_in, chunk), "conv backward: workspace too short");
    if algo == Algo::Fast && winograd::eligible(p) {
        winograd::backward(d_inp, d_weight, d_out, inp, weight, col, p, out_slice, in_slice, chunk, accumulate_d_inp);
        return;
    }
    backward_im2col(d_inp, d_weight, d_out, inp, weight, col, p, out_slice, in_slice, chunk, accumulate_d_inp);
}

/// The im2col + GEMM gradients for chunks of `chunk` images (`col` as in `conv2d_backward`).
#[allow(clippy::too_many_arguments)]
fn backward_im2col(
    d_inp: Option<&mut [f32]>,
    d_weight: &mut [f32],
    d_out: &[f32],
    inp: &[f32],
    weight: &[f32],
    col: &mut [f32],
    p: &ConvShape,
    out_slice: Slice,
    in_slice: Slice,
    chunk: usize,
    accumulate_d_inp: bool,
) {
    let (w_out, w_in, kk) = (out_slice.width, in_slice.width, p.kk());
    let howo = p.ho() * p.wo();
    let ncols = p.n * howo;
    let dw_l = Layout::matrix(0, w_out, w_in * kk, w_in * kk, 1);
    let mut d_inp = d_inp;
    let per_chunk = p.chunk_images(chunk).max(1);
    if p.n == 0 {
        // No chunk runs, but the gradient of an empty batch is still zero.
        d_weight[..w_out * w_in * kk].fill(0.0);
    }
    for n0 in (0..p.n).step_by(per_chunk) {
        let nb = per_chunk.min(p.n - n0);
        let cols = nb * howo;
        im2col(col, inp, p, w_in, n0, nb);
        gemm(
            d_weight,
            dw_l,
            d_out,
            Layout::matrix(n0 * howo, w_out, cols, ncols, 1),
            col,
            Layout::matrix(0, cols, w_in * kk, 1, cols),
            n0 > 0,
        );
        if let Some(d_inp) = d_inp.as_deref_mut() {
            for ri in in_slice.each_run() {
                for (j, ro) in out_slice.each_run().enumerate() {
                    gemm(
                        col,
                        Layout::matrix(ri.at * kk * cols, ri.len * kk, cols, cols, 1),
                        weight,
                        weight_view(p, ro.channel, ro.len, ri.channel, ri.len).transpose(0, 1),
                        d_out,
                        Layout::matrix(ro.at * ncols + n0 * howo, ro.len, cols, ncols, 1),
                        j > 0,
                    );
                }
            }
            col2im(d_inp, col, p, w_in, n0, nb, accumulate_d_inp);
        }
    }
}
