//! The GPU's run of the lowering: `im2col` / `col2im` of `conv2d.cu` and `cublasGemmEx`, on
//! offset, strided views of the weight, or, where the plan gives the op a `weight_copy`, on the
//! slice's weight copied out (`weight_slice`) and the dense convolution it makes (one aligned
//! GEMM per chunk even when a slice wraps). A backward op whose input gradient is a convolution
//! copies the slice flipped and transposed instead (`weight_flip`) and runs im2col of
//! `d_out` where col2im would be.
//!
//! Element types follow the plan: activations, columns and gradients are the program's storage
//! type, which picks `im2col` / `im2col_bf16` and `col2im` / `col2im_bf16`; the weight is the
//! f32 parameter or its copy (`weight_slice` f32, `weight_slice_bf16` bf16, each weight rounded
//! once); the weight gradient is f32. A bf16 program's GEMMs read bf16 (the weight through its
//! bf16 copy, the dense twin, as the CPU's bf16 lowering does) and accumulate in f32
//! (`CUDA_R_16BF` operands, `CUBLAS_COMPUTE_32F`), writing bf16 activations or the f32 gradient.

use super::lowering::{self, ConvCmd, Operand};
use super::winograd::{workspace_len as winograd_len, Wino};
use super::winograd_cmds::{self, cublas_strides, WinoCmd};
use super::{dense_twin, BnPrologue, Conv, ConvAlgo, ConvBackward, GemmWeight};
use crate::gpu::{grid, int, rows, Arg, FastDiv, GemmCall};
use crate::ir::{BufId, ConvShape, Dtype, Slice, TensorId};
use crate::ops::kernels::{
    COL2IM, IM2COL, IM2COL_BN_RELU, WEIGHT_FLIP, WEIGHT_SLICE, WINOGRAD_GRAD, WINOGRAD_INPUT, WINOGRAD_OUTPUT,
    WINOGRAD_WEIGHT, WINOGRAD_WEIGHT_GRAD,
};
use crate::ops::DeviceView;

/// A row length the kernels index with `int` and split with `div_by` (kept below 2^30, so a
/// grid-stride index never overflows).
fn columns(len: usize) -> usize {
    assert!(len < 1 << 30, "{len} columns in one im2col chunk; a smaller --col-budget keeps them below 2^30");
    len
}

/// V, the columns (im2col) or pixels (col2im) a thread of `conv2d.cu` takes: the widest of 4, 2
/// and 1 that divides `row` (the image row they must share) and whose `V * size` bytes `base`
/// is aligned to (each thread's store is one V-wide word; the kernels' rows start at multiples
/// of V elements from `base`).
fn vector_width(row: usize, base: u64, size: usize) -> usize {
    [4, 2, 1].into_iter().find(|&v| row.is_multiple_of(v) && base.is_multiple_of((v * size) as u64)).unwrap_or(1)
}

/// A backward's BN fold on the device (`BnPrologue`): the statistics' addresses (mean and
/// invstd, slice order), the layer's gamma and beta, and the input slice's start, channels and
/// scale, in the order `im2col_bn_relu` takes them after im2col's own arguments.
struct DeviceFold {
    mean: u64,
    invstd: u64,
    gamma: u64,
    beta: u64,
    start: i32,
    channels: i32,
    scale: f32,
}

impl DeviceFold {
    fn new(d: &DeviceView, b: &BnPrologue, is: Slice) -> DeviceFold {
        d.check_len(b.stats, 2 * is.width, "BN fold statistics");
        assert_eq!(d.dtype(b.stats), Dtype::F32, "BN statistics are f32 in every program");
        DeviceFold {
            mean: d.buf(b.stats),
            invstd: d.at(b.stats, is.width),
            gamma: d.tensor(b.bn.gamma),
            beta: d.tensor(b.bn.beta),
            start: int(is.start),
            channels: int(is.channels),
            scale: is.scale(),
        }
    }
}

/// Runs one command; `addr` maps operands to device addresses and element types, `store` is
/// the activations' type; `fold`, when given, is applied by the im2col of `Inp`.
fn run_folded(
    d: &DeviceView,
    cmd: ConvCmd,
    p: &ConvShape,
    in_width: usize,
    store: Dtype,
    addr: &impl Fn(Operand) -> (u64, Dtype),
    fold: Option<&DeviceFold>,
) {
    let (ConvCmd::Im2col { src: Operand::Inp, channels, n0, nc }, Some(f)) = (cmd, fold) else {
        return run(d, cmd, p, in_width, store, addr);
    };
    let (n, h, w) = (int(p.n), int(p.h), int(p.w));
    let (k, s, pad, wo) = (int(p.k), int(p.stride), int(p.pad), int(p.wo()));
    let (col, inp) = (addr(Operand::Col).0, addr(Operand::Inp).0);
    let vec = vector_width(p.wo(), col, store.size());
    let cfg = rows(channels, columns(nc * p.ho() * p.wo()) / vec);
    let (hwo, by_hwo, by_wo) = (int(p.ho() * p.wo()), FastDiv::new(p.ho() * p.wo()), FastDiv::new(p.wo()));
    let (n0, nc, vec) = (int(n0), int(nc), int(vec));
    #[rustfmt::skip]
    let args: [&dyn Arg; 24] = [&col, &inp, &n, &h, &w, &k, &s, &pad, &wo, &hwo,
        &by_hwo.magic, &by_hwo.shift, &by_wo.magic, &by_wo.shift, &n0, &nc, &vec,
        &f.mean, &f.invstd, &f.gamma, &f.beta, &f.start, &f.channels, &f.scale];
    d.gpu.launch(IM2COL_BN_RELU.of(store), cfg, &args);
}

/// Runs one command; `addr` maps operands to device addresses and element types, `store` is
/// the activations' type.
fn run(
    d: &DeviceView,
    cmd: ConvCmd,
    p: &ConvShape,
    in_width: usize,
    store: Dtype,
    addr: &impl Fn(Operand) -> (u64, Dtype),
) {
    let (n, h, w) = (int(p.n), int(p.h), int(p.w));
    let (k, s, pad) = (int(p.k), int(p.stride), int(p.pad));
    let (ho, wo) = (int(p.ho()), int(p.wo()));
    match cmd {
        ConvCmd::Im2col { src, channels, n0, nc } => {
            let (col, inp) = (addr(Operand::Col).0, addr(src).0);
            let vec = vector_width(p.wo(), col, store.size());
            let cfg = rows(channels, columns(nc * p.ho() * p.wo()) / vec);
            let (hwo, by_hwo, by_wo) = (int(p.ho() * p.wo()), FastDiv::new(p.ho() * p.wo()), FastDiv::new(p.wo()));
            let (n0, nc, vec) = (int(n0), int(nc), int(vec));
            #[rustfmt::skip]
            let args: [&dyn Arg; 17] = [&col, &inp, &n, &h, &w, &k, &s, &pad, &wo, &hwo,
                &by_hwo.magic, &by_hwo.shift, &by_wo.magic, &by_wo.shift, &n0, &nc, &vec];
            d.gpu.launch(IM2COL.of(store), cfg, &args);
        }
        ConvCmd::Col2im { n0, nc, accumulate } => {
            let (d_inp, col) = (addr(Operand::DInp).0, addr(Operand::Col).0);
            let vec = vector_width(p.w, d_inp, store.size());
            let cfg = rows(in_width, columns(nc * p.h * p.w) / vec);
            let (by_hw, by_w) = (FastDiv::new(p.h * p.w), FastDiv::new(p.w));
            let (n0, nc, acc, vec) = (int(n0), int(nc), accumulate as i32, int(vec));
            #[rustfmt::skip]
            let args: [&dyn Arg; 18] = [&d_inp, &col, &n, &h, &w, &k, &s, &pad, &ho, &wo,
                &by_hw.magic, &by_hw.shift, &by_w.magic, &by_w.shift, &n0, &nc, &acc, &vec];
            d.gpu.launch(COL2IM.of(store), cfg, &args);
        }
        ConvCmd::Gemm(g) => {
            let b = g.to_cublas();
            // Element `off` of an operand: its address and type.
            let at = |(o, off): (Operand, usize)| {
                let (base, dtype) = addr(o);
                (base + (off * dtype.size()) as u64, dtype)
            };
            let (a, bm, c) = (at(b.a), at(b.b), at(b.c));
            assert_eq!(
                a.1,
                bm.1,
                "a GEMM of {} by {}: a bf16 program's convolutions read the weight through its bf16 copy",
                a.1.as_str(),
                bm.1.as_str()
            );
            let label = match g.c.operand {
                Operand::Out => "gemm: forward",
                Operand::DWeight => "gemm: weight gradient",
                _ => "gemm: input gradient",
            };
            d.gpu.gemm(&GemmCall {
                label,
                transa: b.transa,
                transb: b.transb,
                m: b.m,
                n: b.n,
                k: b.k,
                a: a.0,
                lda: b.lda,
                b: bm.0,
                ldb: b.ldb,
                c: c.0,
                ldc: b.ldc,
                beta: b.beta,
                ab_type: a.1,
                c_type: c.1,
                batch: 1,
                strides: [0; 3],
            });
        }
    }
}

/// Runs one Winograd command (`winograd_cmds`) with the kernels of `winograd.cu` (f32) and a
/// strided batch of 16 products; `weight` is the f32 parameter, `addr` maps operands to device
/// addresses.
fn run_winograd(
    d: &DeviceView,
    cmd: WinoCmd,
    p: &ConvShape,
    os: Slice,
    is: Slice,
    weight: u64,
    addr: &impl Fn(Operand) -> u64,
) {
    let (th, tw) = Wino::F2.tiles(p);
    let (n, h, w, th_, tw_) = (int(p.n), int(p.h), int(p.w), int(th), int(tw));
    let (ow, iw) = (int(os.width), int(is.width));
    // Element `off` of the workspace (f32).
    let col = |off: usize| addr(Operand::Col) + (off * 4) as u64;
    // The transforms' grid: one row of blocks per channel over the chunk's tiles.
    let tile_rows = |channels: usize, nb: usize| rows(channels, columns(nb * th * tw));
    match cmd {
        WinoCmd::Weight { at, flipped } => {
            let (cout, cin, o0, i0) = (int(p.cout), int(p.cin), int(os.start), int(is.start));
            let (u, flipped) = (col(at), flipped as i32);
            let args: [&dyn Arg; 9] = [&u, &weight, &cout, &cin, &o0, &ow, &i0, &iw, &flipped];
            d.gpu.launch(WINOGRAD_WEIGHT, grid(os.width * is.width), &args);
        }
        WinoCmd::Input { channels, at, n0, nb, .. } | WinoCmd::Grad { channels, at, n0, nb } => {
            let (kernel, src) = match cmd {
                WinoCmd::Input { src, .. } => (WINOGRAD_INPUT, addr(src)),
                _ => (WINOGRAD_GRAD, addr(Operand::DOut)),
            };
            let (v, c, n0_, nb_) = (col(at), int(channels), int(n0), int(nb));
            let args: [&dyn Arg; 10] = [&v, &src, &c, &n, &h, &w, &th_, &tw_, &n0_, &nb_];
            d.gpu.launch(kernel, tile_rows(channels, nb), &args);
        }
        WinoCmd::Products { gemm, strides, label } => {
            let b = gemm.to_cublas();
            #[rustfmt::skip]
            let g = GemmCall {
                label, transa: b.transa, transb: b.transb, m: b.m, n: b.n, k: b.k,
                a: col(b.a.1), lda: b.lda, b: col(b.b.1), ldb: b.ldb, c: col(b.c.1), ldc: b.ldc, beta: b.beta,
                ab_type: Dtype::F32, c_type: Dtype::F32, batch: Wino::F2.xi(), strides: cublas_strides(strides),
            };
            d.gpu.gemm(&g);
        }
        WinoCmd::Output { dst, channels, at, n0, nb, accumulate } => {
            let (y, m, c, n0_, nb_, acc) = (addr(dst), col(at), int(channels), int(n0), int(nb), accumulate as i32);
            let args: [&dyn Arg; 11] = [&y, &m, &c, &n, &h, &w, &th_, &tw_, &n0_, &nb_, &acc];
            d.gpu.launch(WINOGRAD_OUTPUT, tile_rows(channels, nb), &args);
        }
        WinoCmd::WeightGrad { at, any } => {
            let (dw, du, any) = (addr(Operand::DWeight), col(at), any as i32);
            let args: [&dyn Arg; 5] = [&dw, &du, &ow, &iw, &any];
            d.gpu.launch(WINOGRAD_WEIGHT_GRAD, grid(os.width * is.width), &args);
        }
    }
}

/// Checks what a Winograd op needs: an f32 program and a workspace of `winograd_len` floats.
fn check_winograd<'b>(
    d: &DeviceView,
    bufs: impl IntoIterator<Item = &'b BufId>,
    col: Option<BufId>,
    p: &ConvShape,
    in_width: usize,
    chunk: usize,
) -> BufId {
    assert_eq!(d.storage(bufs), Dtype::F32, "Winograd runs on f32 programs only");
    let col = col.expect("a Winograd convolution has a workspace");
    let want = winograd_len(p, in_width, p.chunk_images(chunk), Wino::F2);
    assert!(d.t.len(col) >= want, "conv workspace: {} floats, Winograd wants {want}", d.t.len(col));
    col
}

/// How an op's GEMMs get their weight copy.
#[derive(Clone, Copy, PartialEq)]
enum CopyMade {
    /// Already made (a bf16 backward reads its forward op's copy).
    Before,
    /// Here: the weight's slice in slice order (`[os.width, is.width*kk]`, `weight_slice`, in the
    /// copy's element type).
    Slice,
    /// Here: the slice transposed with its taps reversed (`[is.width, os.width*kk]`, in the
    /// copy's element type, the weight of an input gradient by convolution; `weight_flip`,
    /// `cpu::copy_weight_flipped`).
    Flipped,
}

/// The weight the GEMMs read (address and type) and the convolution they run: the f32
/// parameter and the sliced convolution, or `copy` (made here as `made` says) and the dense
/// convolution of the slice widths.
fn gemm_weight(
    d: &DeviceView,
    weight: TensorId,
    copy: Option<BufId>,
    made: CopyMade,
    p: &ConvShape,
    os: Slice,
    is: Slice,
) -> ((u64, Dtype), (ConvShape, Slice, Slice)) {
    let w = d.tensor(weight);
    let Some(copy) = copy else { return ((w, Dtype::F32), (*p, os, is)) };
    d.check_len(copy, os.width * is.width * p.kk(), "conv weight copy");
    let kernel = match made {
        CopyMade::Before => None,
        CopyMade::Slice => Some(WEIGHT_SLICE.of(d.dtype(copy))),
        CopyMade::Flipped => Some(WEIGHT_FLIP.of(d.dtype(copy))),
    };
    if let Some(kernel) = kernel {
        let (cout, cin, kk) = (int(p.cout), int(p.cin), int(p.kk()));
        let (o0, ow, i0, iw) = (int(os.start), int(os.width), int(is.start), int(is.width));
        let (c, total) = (d.buf(copy), os.width * is.width * p.kk());
        d.gpu.launch(kernel, grid(total), &[&c, &w, &cout, &cin, &kk, &o0, &ow, &i0, &iw]);
    }
    ((d.buf(copy), d.dtype(copy)), dense_twin(p, os, is))
}

pub(super) fn forward(op: &Conv, d: &DeviceView) {
    let (os, is, p) = (d.t.slice(op.out_sel), d.t.slice(op.in_sel), &op.shape);
    d.check_len(op.out, os.width * p.n * p.ho() * p.wo(), "conv out");
    d.check_len(op.inp, is.width * p.n * p.h * p.w, "conv inp");
    if op.algo.is_winograd() {
        let col = check_winograd(d, &[op.out, op.inp], op.col, p, is.width, op.chunk);
        let (o, i, c, w) = (d.buf(op.out), d.buf(op.inp), d.buf(col), d.tensor(op.weight));
        let addr = |x: Operand| match x {
            Operand::Inp => i,
            Operand::Out => o,
            Operand::Col => c,
            _ => unreachable!("a Winograd forward reads no gradients"),
        };
        return winograd_cmds::forward(p, Wino::F2, os, is, op.chunk, op.accumulate, |cmd| {
            run_winograd(d, cmd, p, os, is, w, &addr)
        });
    }
    assert!(op.col.map_or(p.direct(), |c| d.t.len(c) >= p.im2col_len(is.width, op.chunk)), "conv workspace");
    let store = d.storage([op.out, op.inp].iter().chain(&op.col));
    let (o, i, c) = (d.buf(op.out), d.buf(op.inp), d.opt(op.col));
    let made = if op.algo.kept_copy().is_some() { CopyMade::Before } else { CopyMade::Slice };
    let (w, (shape, os, is)) = gemm_weight(d, op.weight, op.algo.weight_copy(), made, p, os, is);
    let addr = |x: Operand| match x {
        Operand::Weight => w,
        Operand::Inp => (i, store),
        Operand::Out => (o, store),
        Operand::Col => (c, store),
        _ => unreachable!("forward uses no gradients"),
    };
    lowering::conv_forward(&shape, os, is, op.chunk, op.accumulate, |cmd| run(d, cmd, &shape, is.width, store, &addr));
}

/// Makes the forward op's kept copy (`GemmWeight::Kept`): the whole weight in bf16, as
/// `weight_slice_bf16` of the full slices, which is what the grouped update writes.
pub(super) fn make_kept_copy(op: &Conv, d: &DeviceView) {
    let Some(copy) = op.algo.kept_copy() else { return };
    let (os, is) = (d.t.slice(op.out_sel), d.t.slice(op.in_sel));
    assert!(os.width == os.channels && is.width == is.channels, "a kept weight copy is of an unsliced convolution");
    assert_eq!(d.dtype(copy), Dtype::Bf16, "a kept weight copy is bf16");
    gemm_weight(d, op.weight, Some(copy), CopyMade::Slice, &op.shape, os, is);
}

pub(super) fn backward(op: &ConvBackward, d: &DeviceView) {
    let (os, is, p) = (d.t.slice(op.out_sel), d.t.slice(op.in_sel), &op.shape);
    let (in_len, out_len) = (is.width * p.n * p.h * p.w, os.width * p.n * p.ho() * p.wo());
    d.check_len(op.d_out, out_len, "conv d_out");
    d.check_len(op.inp, in_len, "conv inp");
    if let Some(b) = op.d_inp {
        d.check_len(b, in_len, "conv d_inp");
    }
    d.check_len(op.d_weight, os.width * is.width * p.kk(), "conv d_weight");
    assert!(op.col.map_or(p.direct(), |c| d.t.len(c) >= p.im2col_len(is.width, op.chunk)), "conv workspace");
    let store = d.storage([op.d_out, op.inp].iter().chain(&op.d_inp).chain(&op.col));
    assert_eq!(d.dtype(op.d_weight), Dtype::F32, "conv d_weight is f32 in every program");
    let (dw, dy, i) = (d.buf(op.d_weight), d.buf(op.d_out), d.buf(op.inp));
    let (dx, c) = (d.opt(op.d_inp), d.opt(op.col));
    assert!(!op.algo.is_winograd() || op.prologue.is_none(), "Winograd's transforms fold no BN");
    if op.algo.is_winograd() {
        let bufs = [op.d_out, op.inp];
        let c = d.buf(check_winograd(d, bufs.iter().chain(&op.d_inp), op.col, p, is.width, op.chunk));
        let w = d.tensor(op.weight);
        let addr = |x: Operand| match x {
            Operand::Inp => i,
            Operand::Col => c,
            Operand::DOut => dy,
            Operand::DInp => dx,
            Operand::DWeight => dw,
            _ => unreachable!("a Winograd backward writes no output and reads the weight itself"),
        };
        let (wants_d_inp, acc) = (op.d_inp.is_some(), op.accumulate_d_inp);
        return winograd_cmds::backward(p, Wino::F2, os, is, op.chunk, wants_d_inp, acc, |cmd| {
            run_winograd(d, cmd, p, os, is, w, &addr)
        });
    }
    let made = match op.algo {
        ConvAlgo::InputGradByConv { .. } => {
            assert!(op.d_inp.is_some(), "an input gradient by convolution");
            CopyMade::Flipped
        }
        ConvAlgo::Im2col { weight: GemmWeight::Copy(_) } => CopyMade::Slice,
        _ => CopyMade::Before,
    };
    let (w, (shape, os, is)) = gemm_weight(d, op.weight, op.algo.weight_copy(), made, p, os, is);
    let addr = |x: Operand| match x {
        Operand::Weight => w,
        Operand::Inp => (i, store),
        Operand::Col => (c, store),
        Operand::DOut => (dy, store),
        Operand::DInp => (dx, store),
        Operand::DWeight => (dw, Dtype::F32),
        Operand::Out => unreachable!("backward writes no output"),
    };
    let wants_d_inp = op.d_inp.is_some();
    let by_conv = op.algo.input_grad_by_conv();
    // Taken from the op's own input slice: the dense twin renumbers channels from 0.
    let fold = op.prologue.map(|b| DeviceFold::new(d, &b, d.t.slice(op.in_sel)));
    assert!(fold.is_none() || !p.direct(), "a direct convolution reads its input in place: no BN fold");
    lowering::conv_backward(&shape, os, is, op.chunk, wants_d_inp, op.accumulate_d_inp, by_conv, |cmd| {
        run_folded(d, cmd, &shape, is.width, store, &addr, fold.as_ref())
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{gemm_compute_type, Math, Recorder};
    use crate::ir::{BufKind, Buffer, Init, Role, Sel, Slice, SliceSpec, TensorSpec};
    use crate::ops::{SgdParams, StepCtx, Tables};

    /// V: the widest of 4, 2 and 1 that divides the image row and whose V-wide words the base is
    /// aligned to.
    #[test]
    fn vector_width_divides_the_row_and_keeps_stores_aligned() {
        let base = 1u64 << 40;
        assert_eq!(vector_width(32, base, 4), 4);
        assert_eq!(vector_width(32, base + 8, 4), 2);
        assert_eq!(vector_width(32, base + 4, 4), 1);
        assert_eq!(vector_width(6, base, 2), 2);
        assert_eq!(vector_width(7, base, 4), 1);
        assert_eq!(vector_width(8, base + 2, 2), 1);
    }

    /// A 3x3 conv of 40 input channels over 13 images in chunks of 4 (sliced input, wrapping):
    /// one im2col per chunk, each launched over exactly its own channels and columns, and the
    /// GEMMs per chunk the lowering asks for: two for the wrapping input without a weight copy,
    /// one with it (after one `weight_slice` launch over the copy's elements).
    #[test]
    fn launches_follow_the_chunks_and_grids_their_own_work() {
        for copied in [false, true] {
            let rec = record_wrapping_forward(copied);
            let launches = rec.launches.borrow();
            let (copies, im2cols) = launches.split_at(copied as usize);
            if copied {
                assert_eq!(copies[0].0, "weight_slice");
                assert_eq!(copies[0].1.grid_dim, grid(24 * 20 * 9).grid_dim);
            }
            let images = [4usize, 4, 4, 1];
            assert_eq!(im2cols.len(), images.len());
            for ((name, cfg), nc) in im2cols.iter().zip(images) {
                assert_eq!(*name, "im2col");
                // One row of blocks per input channel, just covering the chunk's columns.
                assert_eq!(cfg.grid_dim, ((nc * 81).div_ceil(256) as u32, 20, 1));
            }
            let gemms = rec.gemms.borrow();
            assert_eq!(gemms.len(), if copied { 1 } else { 2 } * images.len());
            if copied {
                // The dense twin's weight: the copy in the arena (not the parameter), leading dimension 20*9.
                assert!(gemms.iter().all(|g| (1 << 40..1 << 44).contains(&g.b) && g.ldb == 20 * 9), "{gemms:?}");
            }
        }
    }

    /// A bf16 program's convolution: the weight's bf16 copy (`weight_slice_bf16`), bf16 im2col,
    /// and one `CUDA_R_16BF` GEMM per chunk writing bf16, each chunk's output 2 bytes an element
    /// further than the last (an f32 program: 4).
    #[test]
    fn a_bf16_convolution_queues_bf16_kernels_and_gemms_with_two_byte_steps() {
        for dtype in [Dtype::F32, Dtype::Bf16] {
            let rec = record(true, dtype);
            let launches = rec.launches.borrow();
            let names: Vec<&str> = launches.iter().map(|l| l.0).collect();
            let want = match dtype {
                Dtype::F32 => ["weight_slice", "im2col", "im2col", "im2col", "im2col"],
                Dtype::Bf16 => ["weight_slice_bf16", "im2col_bf16", "im2col_bf16", "im2col_bf16", "im2col_bf16"],
            };
            assert_eq!(names, want);
            let gemms = rec.gemms.borrow();
            assert_eq!(gemms.len(), 4);
            for (j, g) in gemms.iter().enumerate() {
                assert_eq!((g.ab_type, g.c_type), (dtype, dtype), "{g:?}");
                // Output chunk j starts j*4 images of 81 positions into `out` (at the arena's base).
                assert_eq!(g.c, (1 << 40) + (j * 4 * 81 * dtype.size()) as u64, "{g:?}");
                assert_eq!(
                    gemm_compute_type(g.ab_type, Math::Tf32) == gemm_compute_type(Dtype::Bf16, Math::Fp32),
                    dtype == Dtype::Bf16
                );
            }
        }
    }

    /// A bf16 GEMM never mixes in the f32 parameter: a bf16 program without the weight copy is
    /// refused before anything is queued wrongly.
    #[test]
    #[should_panic(expected = "read the weight through its bf16 copy")]
    fn a_bf16_convolution_without_its_copy_is_refused() {
        record(false, Dtype::Bf16);
    }

    /// A backward op whose input gradient is a convolution (`d_inp_by_conv`): one `weight_flip`
    /// launch over the copy, then per chunk im2col of the input (its 20 channels), the weight
    /// gradient's GEMM, im2col of `d_out` (its 16 channels) and one GEMM into `d_inp` (its full
    /// leading dimension, the chunk's offset) reading the flipped copy; no col2im. Without the
    /// flag the same op queues `weight_slice`, and per chunk im2col, two GEMMs and col2im.
    #[test]
    fn an_input_gradient_by_convolution_queues_im2col_of_d_out_and_one_gemm_per_chunk() {
        let (base, words) = (1u64 << 40, [16 * 13 * 81, 20 * 13 * 81, 20 * 13 * 81]);
        let d_inp = base + 4 * (words[0] + words[1]) as u64;
        for by_conv in [false, true] {
            let rec = record_backward(by_conv);
            let launches = rec.launches.borrow();
            let names: Vec<&str> = launches.iter().map(|l| l.0).collect();
            let chunks = [4usize, 4, 4, 1];
            let (copy, per_chunk) = match by_conv {
                true => ("weight_flip", ["im2col", "im2col"]),
                false => ("weight_slice", ["im2col", "col2im"]),
            };
            let want: Vec<&str> = [copy].into_iter().chain(chunks.iter().flat_map(|_| per_chunk)).collect();
            assert_eq!(names, want);
            assert_eq!(launches[0].1.grid_dim, grid(16 * 20 * 9).grid_dim);
            let gemms = rec.gemms.borrow();
            assert_eq!(gemms.len(), 2 * chunks.len());
            if !by_conv {
                continue;
            }
            for (j, nc) in chunks.into_iter().enumerate() {
                // Grids: the input's 20 channels, then d_out's 16, over the chunk's columns.
                let x = (nc * 81).div_ceil(256) as u32;
                assert_eq!(launches[1 + 2 * j].1.grid_dim, (x, 20, 1));
                assert_eq!(launches[2 + 2 * j].1.grid_dim, (x, 16, 1));
                let g = &gemms[2 * j + 1];
                assert_eq!((g.label, g.transa, g.transb), ("gemm: input gradient", false, false), "{g:?}");
                assert_eq!((g.m, g.n, g.k), (nc * 81, 20, 16 * 9), "{g:?}");
                assert_eq!((g.lda, g.ldb, g.ldc, g.beta), (nc * 81, 16 * 9, 13 * 81, 0.0), "{g:?}");
                assert_eq!(g.c, d_inp + (4 * j * 4 * 81) as u64, "{g:?}");
            }
        }
    }

    /// The backward op of a 3x3 "same" conv (13 images in chunks of 4, 16 output channels, a
    /// wrapping 20-channel slice of 40 inputs), its copy flipped when `by_conv`.
    fn record_backward(by_conv: bool) -> Recorder {
        let shape = ConvShape { n: 13, cin: 40, h: 9, w: 9, cout: 16, k: 3, stride: 1, pad: 1 };
        let (chunk, slices) = (4, [SliceSpec { channels: 40, width: 20 }]);
        let lens = [16 * 13 * 81, 20 * 13 * 81, 20 * 13 * 81, 16 * 20 * 9, shape.im2col_len(20, chunk), 16 * 20 * 9];
        let mut locs = [(0, 0); 6];
        let mut words = 0;
        for (loc, &len) in locs.iter_mut().zip(&lens) {
            *loc = (words, len);
            words += len;
        }
        let buffers: Vec<Buffer> = ["d_out", "inp", "d_inp", "d_weight", "col", "copy"]
            .iter()
            .zip(&lens)
            .map(|(name, &len)| Buffer {
                name: name.to_string(),
                kind: BufKind::Activation,
                dtype: Dtype::F32,
                len,
                sliced: true,
            })
            .collect();
        let w =
            TensorSpec { name: "w".into(), shape: vec![16, 40, 3, 3], role: Role::Param, init: Init::Zeros, offset: 0 };
        let sgd = SgdParams { lr: 0.0, momentum: 0.0, weight_decay: 0.0, nesterov: false };
        let starts = [30];
        let ctx = StepCtx::new(&starts, sgd);
        let tensors = [w];
        let tables = Tables::new(&locs, &tensors, &slices, &ctx);
        let rec = Recorder::default();
        let view = DeviceView::new(tables, &rec, &buffers, (1 << 40, 4 * words), (1 << 44, 16 * 40 * 9));
        let op = ConvBackward {
            d_inp: Some(2),
            d_weight: 3,
            d_out: 0,
            inp: 1,
            col: Some(4),
            weight: 0,
            shape,
            out_sel: Sel::Full(16),
            in_sel: Sel::Block(0),
            chunk,
            accumulate_d_inp: false,
            algo: match by_conv {
                true => ConvAlgo::InputGradByConv { flipped: 5 },
                false => ConvAlgo::Im2col { weight: GemmWeight::Copy(5) },
            },
            prologue: None,
        };
        backward(&op, &view);
        rec
    }

    fn record_wrapping_forward(copied: bool) -> Recorder {
        record(copied, Dtype::F32)
    }

    /// The forward conv of the launch test, its buffers (and the copy) stored as `dtype`.
    fn record(copied: bool, dtype: Dtype) -> Recorder {
        let shape = ConvShape { n: 13, cin: 40, h: 9, w: 9, cout: 24, k: 3, stride: 1, pad: 1 };
        let (chunk, slices) = (4, [SliceSpec { channels: 40, width: 20 }]);
        let is = Slice::new(30, 20, 40);
        let lens = [24 * 13 * shape.ho() * shape.wo(), 20 * 13 * 81, shape.im2col_len(20, chunk), 24 * 20 * 9];
        // Offsets in 4-byte words, one buffer after another.
        let mut locs = [(0, 0); 4];
        let mut words = 0;
        for (loc, &len) in locs.iter_mut().zip(&lens) {
            *loc = (words, len);
            words += (len * dtype.size()).div_ceil(4);
        }
        let buffers: Vec<Buffer> = ["out", "inp", "col", "copy"]
            .iter()
            .zip(&lens)
            .map(|(name, &len)| Buffer { name: name.to_string(), kind: BufKind::Activation, dtype, len, sliced: true })
            .collect();
        let w =
            TensorSpec { name: "w".into(), shape: vec![24, 40, 3, 3], role: Role::Param, init: Init::Zeros, offset: 0 };
        let sgd = SgdParams { lr: 0.0, momentum: 0.0, weight_decay: 0.0, nesterov: false };
        let starts = [is.start];
        let ctx = StepCtx::new(&starts, sgd);
        let tensors = [w];
        let tables = Tables::new(&locs, &tensors, &slices, &ctx);
        let rec = Recorder::default();
        let view = DeviceView::new(tables, &rec, &buffers, (1 << 40, 4 * words), (1 << 44, 24 * 40 * 9));
        let op = Conv {
            out: 0,
            inp: 1,
            col: Some(2),
            weight: 0,
            shape,
            out_sel: Sel::Full(24),
            in_sel: Sel::Block(0),
            chunk,
            accumulate: false,
            algo: ConvAlgo::Im2col { weight: if copied { GemmWeight::Copy(3) } else { GemmWeight::Param } },
        };
        forward(&op, &view);
        rec
    }
}
