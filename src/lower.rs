//! How each convolution of a step runs, chosen in one place. The model (`model::wrn`) says what
//! a step computes: each convolution's shape and slices, in the order the step runs them. For
//! each one this module picks, from the lowering (`schedule::Lowering`: the target, the precision,
//! the input-gradient and Winograd choices) and the memory choices (`schedule::Options`):
//!
//! - its algorithm ([`ConvAlgo`]): im2col + GEMM reading the f32 parameter or a copy of its
//!   slice, the input gradient by convolution, or Winograd F(2x2, 3x3);
//! - its workspace's length and the images per chunk that fit the budget;
//! - the weight copies its GEMMs read, which the model names and adds to the step's buffers
//!   where it asks, so buffers keep the order of the step.
//!
//! The backends run what the op says (the CPU aside: it runs its own Winograd on any eligible
//! op whose workspace allows it, `ops::conv2d`). A new way to run a convolution on one target
//! is a new [`ConvAlgo`] chosen here, never a change to the model.
//!
//! In a bf16 step each convolution's GEMMs read a bf16 copy of its weight (`*.weight_bf16`, kind
//! `weight_copy`): only the rows or column groups of the step's slice, in slice order, so sized
//! to the slice. The forward op makes it from the f32 parameter, which is after the previous
//! step's updates and once per step; it stays alive until the backward op's `dcol` product, the
//! last GEMM that reads it (a layer whose backward computes no input gradient, `conv0`, frees it
//! after forward). Making it at the step's start instead would keep every copy alive through
//! the whole forward pass; making it again in backward would convert twice a step. Where the
//! GPU's step ends by updating an unsliced convolution's weight in a grouped SGD launch
//! (`--sgd-group`), that launch writes the whole weight's copy for the next step instead
//! (`GemmWeight::Kept`), one launch fewer a layer for a copy kept through the whole step; a
//! sliced layer's copy depends on the next step's start, not drawn yet, so its forward op still
//! makes it.
//!
//! Workspaces: a bf16 step runs im2col + GEMM on either backend, so its workspaces hold im2col
//! columns alone even on the CPU: the CPU's Winograd path is f32 only, and the CPU's bf16 path
//! is the reference the GPU's is checked against, so it must round where the GPU's does. The
//! im2col chunk is picked against the same byte budget, so a bf16 chunk takes twice the images.

use crate::ir::{BufId, ConvShape, Dtype, Precision, Target};
use crate::ops::conv2d::{self, lowering::input_grad_by_conv_fits};
use crate::ops::{ConvAlgo, GemmWeight};
use crate::schedule::{InputGrad, Lowering, Options};

/// A convolution as the model states it: its shape, the widths of the output and input
/// channels its step uses, whether either is a SliceOut slice narrower than the layer, and
/// whether the step ends by updating its weight in a grouped SGD launch (`SgdGroup`).
#[derive(Clone, Copy, Debug)]
pub struct ConvSite {
    pub shape: ConvShape,
    pub out_width: usize,
    pub in_width: usize,
    pub sliced: bool,
    pub grouped_update: bool,
}

impl ConvSite {
    /// Elements of a copy of the weight's slice, `[out width, in width*K*K]` or transposed.
    fn weight_len(&self) -> usize {
        self.out_width * self.in_width * self.shape.kk()
    }
}

/// A weight copy the model adds to the step: its name after the layer's (`weight_bf16`,
/// `weight_slice`, `weight_slice_b`, `weight_flip`), its element type and its length.
pub struct WeightCopy {
    pub what: &'static str,
    pub dtype: Dtype,
    pub len: usize,
}

/// The forward op's algorithm; `add` adds a weight copy to the step and returns its buffer.
///
/// - Winograd where `winograd` says.
/// - A bf16 program's GEMMs read a bf16 copy of the slice, made here once a step and read by
///   the backward op's `dcol` product too (the module doc says why); on the GPU, an unsliced
///   convolution whose weight a grouped update writes reads the copy that update kept.
/// - The GPU's fp32 programs copy a sliced convolution's weight slice in f32 in each op that
///   reads it: aligned operands and one GEMM per chunk when the slice wraps. The CPU's GEMM
///   reads offset views at full speed, and unsliced convolutions need no copy.
pub fn conv_forward(l: &Lowering, c: &ConvSite, add: &mut dyn FnMut(WeightCopy) -> BufId) -> ConvAlgo {
    if winograd(l, &c.shape) {
        return ConvAlgo::Winograd;
    }
    let len = c.weight_len();
    let weight = if l.precision == Precision::Bf16 {
        let copy = add(WeightCopy { what: "weight_bf16", dtype: Dtype::Bf16, len });
        match l.target == Target::Cuda && c.grouped_update && !c.sliced {
            true => GemmWeight::Kept(copy),
            false => GemmWeight::Copy(copy),
        }
    } else if l.target == Target::Cuda && c.sliced {
        GemmWeight::Copy(add(WeightCopy { what: "weight_slice", dtype: Dtype::F32, len }))
    } else {
        GemmWeight::Param
    };
    ConvAlgo::Im2col { weight }
}

/// The backward op's algorithm, given the forward op's (`forward`) and whether it computes the
/// input gradient; `add` as in [`conv_forward`]. Only the input gradient's product reads a
/// weight copy, so an op without one reads the parameter.
///
/// - Winograd where the forward runs it: both gradients, no copies.
/// - The input gradient by convolution where `input_grad_by_conv` says: the op makes the
///   flipped, transposed slice in the storage type (in place of any other copy).
/// - Otherwise im2col + col2im, reading the forward op's bf16 copy, or the GPU's fp32 copy of a
///   sliced weight made again here (a copy lives only through its op).
pub fn conv_backward(
    l: &Lowering,
    c: &ConvSite,
    forward: ConvAlgo,
    wants_d_inp: bool,
    add: &mut dyn FnMut(WeightCopy) -> BufId,
) -> ConvAlgo {
    let len = c.weight_len();
    if forward.is_winograd() {
        return ConvAlgo::Winograd;
    }
    if !wants_d_inp {
        return ConvAlgo::Im2col { weight: GemmWeight::Param };
    }
    if input_grad_by_conv(l, c) {
        let flipped = add(WeightCopy { what: "weight_flip", dtype: l.precision.storage(), len });
        return ConvAlgo::InputGradByConv { flipped };
    }
    let weight = match forward {
        ConvAlgo::Im2col { weight: GemmWeight::Copy(b) | GemmWeight::Kept(b) } if l.precision == Precision::Bf16 => {
            GemmWeight::Forward(b)
        }
        _ if l.target == Target::Cuda && c.sliced => {
            GemmWeight::Copy(add(WeightCopy { what: "weight_slice_b", dtype: Dtype::F32, len }))
        }
        _ => GemmWeight::Param,
    };
    ConvAlgo::Im2col { weight }
}

/// Whether the backward op of a convolution of a recomputed BN + ReLU output reads the BN's
/// input and applies the BN in its im2col (`ops::conv2d::BnPrologue`), so that the model never
/// writes that output: where `Lowering::fold_bn` says, for the layers whose backward gathers
/// its input by im2col. Winograd's transforms read the input as it is, and a direct (1x1,
/// stride-1) layer's GEMM reads it in place.
pub fn fold_bn_relu(l: &Lowering, c: &ConvSite, forward: ConvAlgo) -> bool {
    l.fold_bn && !forward.is_winograd() && !c.shape.direct()
}

/// Whether a convolution runs by Winograd (F(4x4, 3x3) on the CPU, F(2x2, 3x3) on the GPU): the
/// layers it takes (3x3, stride 1, pad 1, at least 4 input channels) of fp32 programs, always on
/// the CPU, on the GPU with `Lowering::winograd`. A bf16 program runs im2col on both backends: the CPU's bf16 step is the
/// reference the GPU's is checked against, so it must round where the GPU's does.
fn winograd(l: &Lowering, shape: &ConvShape) -> bool {
    let target = match l.target {
        Target::Cpu => true,
        Target::Cuda => l.winograd,
    };
    target && l.precision == Precision::Fp32 && conv2d::winograd_eligible(shape)
}

/// Whether a convolution's backward computes its input gradient as a convolution of the
/// output's gradient with the flipped weight (`Lowering::input_grad`): the GPU's programs only
/// (the CPU keeps Winograd and col2im), for the layers `input_grad_by_conv_fits` allows
/// (stride 1, "same" padding, k > 1, an output no wider than the input, so the workspace sized
/// for the input's columns holds them).
fn input_grad_by_conv(l: &Lowering, c: &ConvSite) -> bool {
    l.input_grad == InputGrad::Conv
        && l.target == Target::Cuda
        && input_grad_by_conv_fits(&c.shape, c.out_width, c.in_width)
}

/// Elements of a convolution's workspace for `in_width` input channels and `chunk` images (0
/// when it reads its input directly): im2col columns, or for Winograd the larger of those and
/// its transformed weights and tiles.
pub fn workspace_len(l: &Lowering, shape: &ConvShape, in_width: usize, chunk: usize) -> usize {
    match winograd(l, shape) {
        true => conv2d::winograd_workspace_len(shape, in_width, chunk, l.target),
        false => shape.im2col_len(in_width, chunk),
    }
}

/// Images per im2col chunk: `--col-chunk`, or the most whose workspace, lowered as `l` says,
/// fits the budget.
pub fn chunk(o: &Options, l: &Lowering, shape: &ConvShape, in_width: usize) -> usize {
    if o.col_chunk > 0 {
        return o.col_chunk.min(shape.n);
    }
    let (budget, size) = (o.col_budget(l.target) << 20, l.precision.storage().size());
    // Winograd's transformed weights do not grow with the chunk, so the budget bounds the rest:
    // counted against it, a wide layer's weights alone would leave chunks of one image, whose
    // products are a few tiles wide.
    let fixed = match winograd(l, shape) {
        true => conv2d::winograd_weights_len(shape, in_width, l.target),
        false => 0,
    };
    let fits = |c: usize| {
        let grows = workspace_len(l, shape, in_width, c).saturating_sub(fixed);
        shape.im2col_len(in_width, c) * size <= budget && grows * size <= budget
    };
    // The workspace grows with the chunk: binary search for the last chunk that fits (at
    // least one image).
    let (mut lo, mut hi) = (1, shape.n);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3x3 stride-1 convolution of 16 to 16 channels over 8 images of 8x8, at the widths given.
    fn site(out_width: usize, in_width: usize) -> ConvSite {
        let shape = ConvShape { n: 8, cin: 16, h: 8, w: 8, cout: 16, k: 3, stride: 1, pad: 1 };
        ConvSite { shape, out_width, in_width, sliced: out_width < 16 || in_width < 16, grouped_update: false }
    }

    /// A wide Winograd layer's transformed weights alone exceed the CPU's 32 MiB budget (WRN-28-10's
    /// 640 channels: 2 x 36 x 640 x 640 floats); its chunk still fills the budget with tiles rather
    /// than shrinking to one image, and the im2col columns and the tiles each stay within it.
    #[test]
    fn the_budget_bounds_what_grows_with_the_chunk() {
        let shape = ConvShape { n: 128, cin: 640, h: 8, w: 8, cout: 640, k: 3, stride: 1, pad: 1 };
        let (o, l) = (Options::default(), Lowering::default());
        assert!(winograd(&l, &shape));
        let budget = o.col_budget(l.target) << 20;
        let fixed = conv2d::winograd_weights_len(&shape, 640, l.target);
        assert!(fixed * 4 > budget);
        let c = chunk(&o, &l, &shape, 640);
        assert!(c > 1, "chunk {c}");
        let grows = |c| workspace_len(&l, &shape, 640, c) - fixed;
        assert!(grows(c) * 4 <= budget && shape.im2col_len(640, c) * 4 <= budget);
        assert!(c == shape.n || grows(c + 1) * 4 > budget || shape.im2col_len(640, c + 1) * 4 > budget);
    }

    /// The forward and backward algorithms of `c`, and the copies asked for (by name).
    fn choose(o: &Lowering, c: &ConvSite) -> (ConvAlgo, ConvAlgo, Vec<&'static str>) {
        let mut made = vec![];
        let mut add = |w: WeightCopy| {
            made.push(w.what);
            made.len() - 1
        };
        let forward = conv_forward(o, c, &mut add);
        let backward = conv_backward(o, c, forward, true, &mut add);
        (forward, backward, made)
    }

    #[test]
    fn each_target_and_precision_gets_its_algorithm_and_copies() {
        use ConvAlgo::*;
        let (cpu, gpu) = (Lowering::default(), Lowering { target: Target::Cuda, ..Lowering::default() });
        let bf16 = |o: Lowering| Lowering { precision: Precision::Bf16, ..o };
        let im2col = |weight| Im2col { weight };
        let (sliced, full) = (site(8, 16), site(16, 16));
        // The CPU: Winograd in fp32, a bf16 copy read by both ops in bf16.
        assert_eq!(choose(&cpu, &sliced), (Winograd, Winograd, vec![]));
        let copied = (im2col(GemmWeight::Copy(0)), im2col(GemmWeight::Forward(0)), vec!["weight_bf16"]);
        assert_eq!(choose(&bf16(cpu), &sliced), copied);
        // The GPU: input gradients by convolution (an output no wider than the input), else
        // col2im with an f32 copy of a sliced weight in each op.
        let by_conv =
            (im2col(GemmWeight::Copy(0)), InputGradByConv { flipped: 1 }, vec!["weight_slice", "weight_flip"]);
        assert_eq!(choose(&gpu, &sliced), by_conv);
        assert_eq!(
            choose(&gpu, &full),
            (im2col(GemmWeight::Param), InputGradByConv { flipped: 0 }, vec!["weight_flip"])
        );
        let col2im = Lowering { input_grad: InputGrad::Col2im, ..gpu };
        let slice_b =
            (im2col(GemmWeight::Copy(0)), im2col(GemmWeight::Copy(1)), vec!["weight_slice", "weight_slice_b"]);
        assert_eq!(choose(&col2im, &sliced), slice_b);
        assert_eq!(choose(&bf16(col2im), &sliced), copied);
        // `--winograd` on the GPU: fp32 only.
        let wino = Lowering { winograd: true, ..gpu };
        assert_eq!(choose(&wino, &sliced), (Winograd, Winograd, vec![]));
        assert_eq!(choose(&bf16(wino), &full).2, vec!["weight_bf16", "weight_flip"]);
        // An op without an input gradient reads the parameter, whatever the forward copied.
        let none = conv_backward(&col2im, &sliced, im2col(GemmWeight::Copy(0)), false, &mut |_| unreachable!());
        assert_eq!(none, im2col(GemmWeight::Param));
    }

    /// A grouped update keeps the bf16 copy of an unsliced GPU convolution (read by its backward
    /// op too where that reads a copy), never of a sliced one, an fp32 one or the CPU's.
    #[test]
    fn a_grouped_update_keeps_the_copy_of_an_unsliced_bf16_gpu_convolution() {
        let gpu = Lowering { target: Target::Cuda, precision: Precision::Bf16, ..Lowering::default() };
        let grouped = |c: ConvSite| ConvSite { grouped_update: true, ..c };
        let (full, sliced) = (grouped(site(16, 16)), grouped(site(8, 16)));
        let im2col = |weight| ConvAlgo::Im2col { weight };
        let kept = (im2col(GemmWeight::Kept(0)), ConvAlgo::InputGradByConv { flipped: 1 });
        assert_eq!(choose(&gpu, &full), (kept.0, kept.1, vec!["weight_bf16", "weight_flip"]));
        let col2im = Lowering { input_grad: InputGrad::Col2im, ..gpu };
        let both = (im2col(GemmWeight::Kept(0)), im2col(GemmWeight::Forward(0)), vec!["weight_bf16"]);
        assert_eq!(choose(&col2im, &full), both);
        assert_eq!(choose(&col2im, &site(16, 16)).0, im2col(GemmWeight::Copy(0)), "no grouped update");
        assert_eq!(choose(&col2im, &sliced).0, im2col(GemmWeight::Copy(0)));
        let cpu = Lowering { target: Target::Cpu, ..col2im };
        assert_eq!(choose(&cpu, &full).0, im2col(GemmWeight::Copy(0)));
        let fp32 = Lowering { precision: Precision::Fp32, ..gpu };
        assert_eq!(choose(&fp32, &full).0, im2col(GemmWeight::Param));
    }
}
