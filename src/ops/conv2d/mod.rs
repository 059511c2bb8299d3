//! 2-D convolution as im2col + GEMM, with SliceOut's channel slices as strided views.
//!
//! Activations are channel-major `(C, N, H, W)`, so the column matrix of a batch is
//! `col[Cin*K*K, N*Ho*Wo]` and the whole convolution is one product
//! `Y[Cout, N*Ho*Wo] = W[Cout, Cin*K*K] * col`. The batch may be cut into chunks of images so that
//! the column buffer stays small (and in cache); a chunk writes its own column block of every
//! output row. A 1x1, stride 1, unpadded convolution needs no column matrix at all: the input
//! already is one. Backward is two products per chunk, `dW += dY * col^T` and
//! `dcol = W^T * dY`, then col2im.
//!
//! Slices never copy weights. Output channels `[s, s+w)` are rows of the OIHW weight matrix,
//! input channels are column groups of `K*K` read with the full leading dimension; a wrapping
//! slice is two runs and therefore two GEMMs (input runs accumulate, output runs write their own
//! rows). Sliced buffers hold only the slice's channels, in slice order.
//!
//! A convolution may also read a weight copy ([`GemmWeight`]): the rows or column groups of the
//! weight that the step's GEMMs read, in slice order. With it, the sliced convolution is the dense one of its
//! slice widths ([`dense_twin`]): its buffers are already in slice order, so each chunk is one
//! GEMM even when a slice wraps, and every operand starts where cuBLAS's fast kernels want it
//! (a slice starting at channel c puts the weight's view `9c` floats in, rarely 16-byte aligned).
//! - A bf16 program copies as bf16, in the forward op, and the backward op's `dcol` product reads
//!   the same copy (`GemmWeight::Forward`): one conversion a step. Both backends run it (the GPU's
//!   `weight_slice_bf16`, then `CUDA_R_16BF` GEMMs).
//! - Where a bf16 GPU step ends by updating an unsliced convolution's weight in a grouped SGD
//!   launch (`--sgd-group`), that launch writes the copy for the next step as it writes the
//!   weight (`GemmWeight::Kept`, `SgdGroup::copies`): the copy is the whole weight, element for
//!   element, so the forward op makes none. It is kept between steps, and the backend makes it
//!   before a program's first step and whenever the arena or the weights changed under it
//!   ([`Conv::make_kept_copy_cuda`]).
//! - The GPU's fp32 program copies each sliced convolution's weight in f32 in each op that reads
//!   it (`GemmWeight::Copy` in backward too): a copy lives only through its op, so the plan barely
//!   grows, and the copy (a few MiB) costs microseconds.
//!
//! Input gradient by convolution (`Lowering::input_grad`: the GPU's default, fp32 and bf16;
//! `--input-grad col2im` turns it off; the CPU keeps col2im and Winograd). For a stride-1
//! "same" convolution (odd `k > 1`,
//! `pad = (k-1)/2`, so `Ho = H`) the input gradient is itself a convolution under the same
//! padding: `d_inp = conv(dY, W')`, `W'[ci][co][t] = W[co][ci][kk-1-t]` (kh and kw reversed).
//! [`ConvAlgo::InputGradByConv`] makes `W'` from the slice of the weight
//! ([`copy_weight_flipped`], `[in width, out width*kk]`, in the storage type, in its own
//! copy) and
//! runs the dense twin: per chunk im2col of `d_out` into the workspace (so the output may be no
//! wider than the input, whose columns the workspace was sized for), then one forward-shaped
//! GEMM written straight into `d_inp`. No col2im, and no `dcol` product whose output is the
//! whole column matrix. The weight gradient is computed as before; the step is faster
//! for it on a card (BENCHMARKS.md, "`--input-grad conv` measured"). A layer
//! whose output is wider than its input keeps col2im: the columns of `d_out` would outnumber
//! the input's, which are all `dcol` and col2im move.
//!
//! BN folded into im2col (`--fold-bn`, [`BnPrologue`]): a backward op whose input is a train-mode
//! BN + ReLU output that the step would recompute reads the BN's input instead, and the im2col of
//! that input applies the BN with its saved statistics ([`im2col_bn_relu`], `im2col_bn_relu` in
//! `conv2d.cu`), storing exactly what the BN op would have stored; the op's commands are
//! unchanged. Winograd's transforms and a direct layer's GEMM read the input as it is, so those
//! layers do not fold.
//!
//! Which of these a convolution runs ([`ConvAlgo`]: im2col with the parameter or a copy, input
//! gradient by convolution, Winograd) is chosen for each one by the `lower` module.
//!
//! - `lowering.rs`: the walk over slice runs x weight views x image chunks, as commands; both
//!   backends run it.
//! - `cpu.rs`: im2col, col2im (rayon) and the CPU's run of the lowering with our GEMM.
//! - `winograd_cmds.rs`: F(2x2, 3x3) for the 3x3 stride-1 layers as a walk of commands; both
//!   backends run it (the CPU always on those layers, the GPU with `--winograd`, experimental,
//!   fp32 programs).
//! - `winograd.rs`: its transforms and the CPU's kernel for each of its commands.
//! - `cuda.rs` + `conv2d.cu`, `winograd.cu`: the GPU's run of both walks (kernels + cuBLAS).

mod cpu;
mod cuda;
pub mod lowering;
#[cfg(test)]
mod tests;
mod winograd;
mod winograd_cmds;
mod winograd_f4;

pub use cpu::{
    col2im, conv2d_backward, conv2d_backward_by_conv, conv2d_backward_with, conv2d_forward, copy_weight,
    copy_weight_flipped, dense_twin, im2col, im2col_bn_relu, BnReluFold,
};

use super::{DeviceView, HostView, Kernel};
use crate::ir::{BnRef, BufId, ConvShape, Elem, Sel, SliceSpec, Target, TensorId};
use winograd::Wino;

/// Which algorithm a CPU convolution may use: a setting of the CPU backend, apart from the op's
/// [`ConvAlgo`] (the reference runs im2col everywhere, whatever the op says).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Algo {
    /// Winograd F(2x2, 3x3) where it applies (3x3, stride 1, pad 1, at least 4 input channels),
    /// im2col + GEMM elsewhere.
    #[default]
    Fast,
    /// im2col + GEMM everywhere: the plainest method, the reference other backends are held to.
    Im2col,
}

/// Floats of a convolution's workspace for `in_width` input channels and `chunk` images (0 when
/// direct) on `target`: the im2col columns, and on the CPU, where a 3x3 stride-1 layer runs
/// Winograd, the larger of those and Winograd's buffers.
pub fn workspace_len(p: &ConvShape, in_width: usize, chunk: usize, target: Target) -> usize {
    match target == Target::Cpu && winograd::eligible(p) {
        true => winograd_workspace_len(p, in_width, chunk, target),
        false => p.im2col_len(in_width, chunk),
    }
}

/// Floats of the workspace of a layer that may run Winograd on `target` (F(4x4, 3x3) on the
/// CPU, F(2x2, 3x3) on the GPU with `--winograd`): the larger of its im2col columns and
/// Winograd's buffers (0 when it has no columns).
pub fn winograd_workspace_len(p: &ConvShape, in_width: usize, chunk: usize, target: Target) -> usize {
    let im2col = p.im2col_len(in_width, chunk);
    match im2col {
        0 => 0,
        _ => im2col.max(winograd::workspace_len(p, in_width, p.chunk_images(chunk), Wino::on(target, p))),
    }
}

/// Floats of Winograd's transformed weights on `target` (the part of its workspace that does not
/// grow with the chunk): the forward's, or the backward's flipped weight and `dU`.
pub fn winograd_weights_len(p: &ConvShape, in_width: usize, target: Target) -> usize {
    winograd::workspace_len(p, in_width, 0, Wino::on(target, p))
}

/// The layers Winograd takes: 3x3, stride 1, pad 1, at least 4 input channels.
pub fn winograd_eligible(p: &ConvShape) -> bool {
    winograd::eligible(p)
}

/// `out (+)= conv(inp)` for the output channels `out_sel` and input channels `in_sel` cover;
/// `col` is the workspace (none for a direct 1x1 conv), `chunk` images at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv {
    pub out: BufId,
    pub inp: BufId,
    pub col: Option<BufId>,
    pub weight: TensorId,
    pub shape: ConvShape,
    pub out_sel: Sel,
    pub in_sel: Sel,
    pub chunk: usize,
    pub accumulate: bool,
    /// How it runs (`lower::conv_forward`): im2col + GEMM reading the parameter, a copy of
    /// its slice this op writes (`GemmWeight::Copy`) or a kept copy (`GemmWeight::Kept`), or
    /// Winograd.
    pub algo: ConvAlgo,
}

impl Conv {
    /// Queues the making of the op's kept copy (`GemmWeight::Kept`) from the weight as it is
    /// now; nothing for an op without one.
    pub fn make_kept_copy_cuda(&self, d: &DeviceView) {
        cuda::make_kept_copy(self, d)
    }
}

/// Gradients of [`Conv`]: `d_weight` (the slice's block, overwritten) and, when wanted,
/// `d_inp` (overwritten, or added to when `accumulate_d_inp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvBackward {
    pub d_inp: Option<BufId>,
    pub d_weight: BufId,
    pub d_out: BufId,
    pub inp: BufId,
    pub col: Option<BufId>,
    pub weight: TensorId,
    pub shape: ConvShape,
    pub out_sel: Sel,
    pub in_sel: Sel,
    pub chunk: usize,
    pub accumulate_d_inp: bool,
    /// How it runs (`lower::conv_backward`). Of a weight copy, only the input gradient's
    /// product (`dcol`, or the GEMM by convolution) reads it.
    pub algo: ConvAlgo,
    /// With a prologue, `inp` is the input of the train-mode BN + ReLU whose output this layer
    /// convolves, and the im2col that gathers `inp` applies that BN (`lower::fold_bn_relu`
    /// says where): the BN output a backward pass would recompute is never written.
    pub prologue: Option<BnPrologue>,
}

/// The train-mode BN + ReLU (+ SliceOut's scale) folded into a convolution backward's im2col:
/// the BN's saved statistics and its parameters. Its channels are the convolution's input
/// slice (`in_sel`), which is the BN's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnPrologue {
    pub stats: BufId,
    pub bn: BnRef,
}

/// How a convolution op runs. Chosen for each convolution in one place, `lower`, from the
/// lowering (`schedule::Lowering`) and the memory options; the backends run what it says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvAlgo {
    /// im2col + GEMM (backward: `dW = dY col^T`, `dcol = W^T dY`, then col2im), the GEMMs
    /// reading the weight as `weight` says.
    Im2col { weight: GemmWeight },
    /// Backward only: the input gradient as the convolution of `d_out` with the flipped,
    /// transposed weight slice `[in width, out width*K*K]` that this op writes into `flipped`
    /// ([`copy_weight_flipped`], in the storage type); the weight gradient as `Im2col`.
    InputGradByConv { flipped: BufId },
    /// Winograd on a 3x3 stride-1 layer of an fp32 program (F(4x4, 3x3) on the CPU, F(2x2, 3x3)
    /// on the GPU): the weight transform gathers the slice itself, and `col` holds
    /// [`winograd_workspace_len`] floats. The CPU runs every other op by im2col.
    Winograd,
}

/// How the CPU runs an op the lowering gave `algo`: Winograd where the lowering chose it (and
/// planned its workspace) and the backend allows it (`backend`), im2col otherwise, so that a
/// program planned for the GPU runs on the CPU as the GPU runs it.
fn cpu_algo(algo: ConvAlgo, backend: Algo) -> Algo {
    match algo.is_winograd() {
        true => backend,
        false => Algo::Im2col,
    }
}

/// The weight an im2col convolution's GEMMs read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmWeight {
    /// The f32 parameter, through offset views.
    Param,
    /// A copy of the slice's rows or column groups in slice order (see the module doc), that
    /// this op writes from the f32 parameter.
    Copy(BufId),
    /// The forward op's copy (a bf16 program's), read by the backward op.
    Forward(BufId),
    /// A bf16 copy of the whole weight kept between steps, written with the weight by the
    /// step's grouped update for the next step (an unsliced convolution's, see the module doc).
    Kept(BufId),
}

impl ConvAlgo {
    /// The weight copy the op reads, whoever writes it.
    pub fn weight_copy(&self) -> Option<BufId> {
        match *self {
            ConvAlgo::Im2col { weight: GemmWeight::Copy(b) | GemmWeight::Forward(b) | GemmWeight::Kept(b) } => Some(b),
            ConvAlgo::InputGradByConv { flipped } => Some(flipped),
            _ => None,
        }
    }

    /// The copy kept between steps that the op reads, if any (a forward op's).
    pub fn kept_copy(&self) -> Option<BufId> {
        match *self {
            ConvAlgo::Im2col { weight: GemmWeight::Kept(b) } => Some(b),
            _ => None,
        }
    }

    /// Whether the op writes its weight copy itself.
    pub fn makes_copy(&self) -> bool {
        matches!(self, ConvAlgo::Im2col { weight: GemmWeight::Copy(_) } | ConvAlgo::InputGradByConv { .. })
    }

    pub fn is_winograd(&self) -> bool {
        *self == ConvAlgo::Winograd
    }

    pub fn input_grad_by_conv(&self) -> bool {
        matches!(self, ConvAlgo::InputGradByConv { .. })
    }
}

impl Kernel for Conv {
    fn buffers(&self) -> (Vec<BufId>, Vec<BufId>) {
        let kept = self.algo.kept_copy();
        let made = self.algo.weight_copy().filter(|_| kept.is_none());
        let written = [vec![self.out], self.col.into_iter().collect(), made.into_iter().collect()];
        ([vec![self.inp], kept.into_iter().collect()].concat(), written.concat())
    }
    fn macs(&self, slices: &[SliceSpec]) -> usize {
        self.shape.macs(self.out_sel.width(slices), self.in_sel.width(slices))
    }
    fn run_cpu<T: Elem>(&self, m: &HostView) {
        let (os, is, p) = (m.t.slice(self.out_sel), m.t.slice(self.in_sel), &self.shape);
        // SAFETY: see `HostView`.
        let (out, col) = unsafe { (m.buf_mut::<T>(self.out), m.opt_mut::<T>(self.col)) };
        let (inp, w) = (m.buf::<T>(self.inp), m.tensor(self.weight));
        let (chunk, acc, algo) = (self.chunk, self.accumulate, cpu_algo(self.algo, m.algo));
        match self.algo.weight_copy() {
            // The slice's weight, rounded once per step, and the dense convolution it makes.
            Some(copy) => {
                // SAFETY: see `HostView`.
                let copy = unsafe { m.buf_mut::<T>(copy) };
                copy_weight(copy, w, p, os, is);
                let (dense, os, is) = dense_twin(p, os, is);
                conv2d_forward(out, inp, &*copy, col, &dense, os, is, chunk, acc, algo)
            }
            None => conv2d_forward(out, inp, w, col, p, os, is, chunk, acc, algo),
        }
    }
    fn run_cuda(&self, d: &DeviceView) {
        cuda::forward(self, d)
    }
}

impl Kernel for ConvBackward {
    fn buffers(&self) -> (Vec<BufId>, Vec<BufId>) {
        let (made, read_copy) = match self.algo.makes_copy() {
            true => (self.algo.weight_copy(), None),
            false => (None, self.algo.weight_copy()),
        };
        let written = [self.d_inp.into_iter().collect(), vec![self.d_weight], self.col.into_iter().collect()];
        let stats = self.prologue.map(|b| b.stats);
        let read = [vec![self.d_out, self.inp], read_copy.into_iter().collect(), stats.into_iter().collect()];
        (read.concat(), [written.concat(), made.into_iter().collect()].concat())
    }
    fn macs(&self, slices: &[SliceSpec]) -> usize {
        let passes = if self.d_inp.is_some() { 2 } else { 1 };
        passes * self.shape.macs(self.out_sel.width(slices), self.in_sel.width(slices))
    }
    fn run_cpu<T: Elem>(&self, m: &HostView) {
        let (os, is, p) = (m.t.slice(self.out_sel), m.t.slice(self.in_sel), &self.shape);
        // SAFETY: see `HostView`.
        let (dx, dw, col) =
            unsafe { (self.d_inp.map(|b| m.buf_mut::<T>(b)), m.buf_mut(self.d_weight), m.opt_mut::<T>(self.col)) };
        let (dy, x) = (m.buf::<T>(self.d_out), m.buf::<T>(self.inp));
        let (chunk, acc) = (self.chunk, self.accumulate_d_inp);
        // The BN's statistics are in slice order and its parameters the layer's, so the fold
        // reads them through the input slice, before any dense twin renumbers the channels.
        let fold = self.prologue.map(|b| {
            let (mean, invstd) = m.buf::<f32>(b.stats).split_at(is.width);
            let (gamma, beta) = (m.tensor(b.bn.gamma), m.tensor(b.bn.beta));
            BnReluFold { mean, invstd, gamma, beta, slice: is, scale: is.scale() }
        });
        if let ConvAlgo::InputGradByConv { flipped: copy } = self.algo {
            let dx = dx.expect("an input gradient by convolution");
            // SAFETY: see `HostView`.
            let copy = unsafe { m.buf_mut::<T>(copy) };
            copy_weight_flipped(copy, m.tensor(self.weight), p, os, is);
            let (dense, ..) = dense_twin(p, os, is);
            // im2col + GEMM whatever `m.algo` says: Winograd has no such input gradient.
            return conv2d_backward_by_conv(dx, dw, dy, x, &*copy, col, &dense, chunk, acc, fold);
        }
        let algo = cpu_algo(self.algo, m.algo);
        match self.algo.weight_copy() {
            // The copy (the forward op's, or made here): the same dense convolution, whose weight
            // gradient is the sliced one's, in slice order.
            Some(copy) => {
                if self.algo.makes_copy() {
                    // SAFETY: see `HostView`.
                    copy_weight(unsafe { m.buf_mut::<T>(copy) }, m.tensor(self.weight), p, os, is);
                }
                let (dense, os, is) = dense_twin(p, os, is);
                conv2d_backward_with(dx, dw, dy, x, m.buf::<T>(copy), col, &dense, os, is, chunk, acc, algo, fold)
            }
            None => conv2d_backward_with(dx, dw, dy, x, m.tensor(self.weight), col, p, os, is, chunk, acc, algo, fold),
        }
    }
    fn run_cuda(&self, d: &DeviceView) {
        cuda::backward(self, d)
    }
}
