//! Op-by-op comparison of two backends (the CPU reference and, say, CUDA). Every op kind runs
//! as a tiny single-op program with odd sizes (N=3, 5..7 channels, 7x7 images), with sliced,
//! wrapping and accumulating variants, on seeded random inputs; every buffer the op writes
//! (and the persistent region, for ops that update it) is read back from both backends and
//! compared as `||a - b|| / ||b||`, the worst buffer giving the row's error.
//!
//! A one-op schedule would not validate (its inputs are read before anything writes them), so
//! each input buffer gets a "producer" step (`Add` from the dummy input) that is never run:
//! it only makes the buffer count as written and keeps it alive, so the planner gives every
//! buffer its own memory. Only the last step, the op under test, runs. Inputs, outputs
//! (accumulating ops add to them) and persistent state are written identically to both
//! backends first. A backend that panics in a case gives that row a NaN error.
//!
//! In a bf16 check (`--precision bf16`) every case is a bf16 program: the buffers a bf16 step
//! stores as bf16 (activations, their gradients, workspaces, weight copies) are bf16, the rest
//! f32 as in `model/wrn.rs`, and every convolution reads its weight through a bf16 copy (made by
//! the forward op, read by the backward op, or made there with `copy_here`), as the GPU needs.
//! Both backends get the same values (written through `Memory::write`, which rounds).

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::rel_err;
use crate::backend::{Backend, SplitId, StepCtx};
use crate::data::loader::{Crop, Normalization};
use crate::data::{Split, PLANE};
use crate::ir::{
    BnRef, BufId, BufKind, Buffer, ConvShape, Dtype, GradSel, Init, ModelConfig, Precision, Role, Sel, Slice,
    SliceSpec, TensorId, TensorSpec,
};
use crate::ops::sgd::SgdParams;
use crate::ops::{
    Add, BnReluApply, BnReluBackward, BnReluEval, BnReluTrain, Conv, ConvAlgo, ConvBackward, CrossEntropy, GemmWeight,
    Linear, LinearBackward, Op, Pool, PoolBackward, Sgd, SgdGroup,
};
use crate::plan::Program;
use crate::rng::Rng;
use crate::schedule::{Lowering, Mode, Options, Phase, Schedule, Step};

/// One row of the comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct OpCheck {
    pub op: String,
    pub max_rel_err: f64,
    pub pass: bool,
}

/// Runs every check of `precision`'s programs with `reference` as the truth; `pass` is
/// `max_rel_err <= tol`.
pub fn op_checks(reference: &mut dyn Backend, other: &mut dyn Backend, tol: f64, precision: Precision) -> Vec<OpCheck> {
    let mut rows: Vec<OpCheck> = cases(precision).into_iter().map(|c| check_case(reference, other, &c, tol)).collect();
    rows.push(check_fill_batch(reference, other, tol, precision));
    rows
}

/// Tolerance of the bf16 op checks: a quarter of bf16's unit roundoff, u/4 = 2^-10. Both
/// backends round at the same points from the same bf16 values and compute in f32, so they
/// differ only where f32 sums run in another order (GEMMs, BN's reductions: relative 1e-6) and
/// an element's f32 value then lies on the other side of a rounding boundary: that element is
/// one bf16 ulp (2u relative at most) off, a fraction of about 1e-6/u of them, far inside the
/// tolerance. A kernel that rounded otherwise (truncating, say: half the elements one ulp off,
/// about 0.7 ulp in norm, 2.8e-3) or read a wrong element fails it.
pub const BF16_OP_TOL: f64 = 1.0 / 1024.0;

/// SGD settings of the update checks (Nesterov is set per case).
const SGD: SgdParams = SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 5e-4, nesterov: true };

/// A single-op program with its data.
struct Case {
    name: String,
    sched: Schedule,
    /// Index of the op under test (the last step).
    step: usize,
    starts: Vec<usize>,
    nesterov: bool,
    persistent: Vec<f32>,
    /// Initial contents of every buffer but the dummy input and labels.
    fills: Vec<(BufId, Vec<f32>)>,
    /// The op updates the persistent region (BN running stats, SGD).
    check_persistent: bool,
}

/// Assembles a case: buffers, tensors, producers, then the op.
struct Tiny {
    s: Schedule,
    rng: Rng,
    persistent: Vec<f32>,
    fills: Vec<(BufId, Vec<f32>)>,
    producers: Vec<Step>,
}

impl Tiny {
    fn new(seed: u64, slices: Vec<SliceSpec>, precision: Precision) -> Tiny {
        let config = ModelConfig { depth: 10, widen: 1, classes: 10, in_channels: 3, keep: 1.0 };
        let mut s = Schedule {
            config,
            batch: 3,
            mode: Mode::Train,
            options: Options::default(),
            lowering: Lowering { precision, ..Lowering::default() },
            buffers: vec![],
            tensors: vec![],
            steps: vec![],
            slices,
            input: 0,
            labels: 1,
            logits: 0,
            loss: 0,
            outputs: vec![],
            gradients: vec![],
        };
        for name in ["dummy.input", "dummy.labels"] {
            s.buffers.push(Buffer {
                name: name.into(),
                kind: BufKind::Activation,
                dtype: Dtype::F32,
                len: 1,
                sliced: false,
            });
        }
        Tiny { s, rng: Rng::new(seed, 7), persistent: vec![], fills: vec![], producers: vec![] }
    }

    /// What a step of this precision stores buffer `name` of `kind` as: weight gradients, BN
    /// statistics, the head after the pool, labels and SGD's gradient are f32 in every program.
    fn dtype(&self, name: &str, kind: BufKind) -> Dtype {
        let head = ["bn.stats", "pool.out", "pool.d_out", "logits", "labels", "loss", "d_logits"];
        if kind == BufKind::WeightGradient || name.starts_with("fc.") || name.ends_with(".grad") || head.contains(&name)
        {
            Dtype::F32
        } else {
            self.s.lowering.precision.storage()
        }
    }

    fn bf16(&self) -> bool {
        self.s.lowering.precision == Precision::Bf16
    }

    fn add_buf(&mut self, name: &str, kind: BufKind, data: Vec<f32>) -> BufId {
        let dtype = self.dtype(name, kind);
        self.s.buffers.push(Buffer { name: name.into(), kind, dtype, len: data.len(), sliced: false });
        let id = self.s.buffers.len() - 1;
        self.fills.push((id, data));
        id
    }

    /// A buffer the op reads, filled with `data`.
    fn input(&mut self, name: &str, data: Vec<f32>) -> BufId {
        let id = self.add_buf(name, BufKind::Activation, data);
        self.producers.push(Step {
            layer: format!("produce {name}"),
            phase: Phase::Forward,
            op: Op::Add(Add { out: id, inp: self.s.input }),
        });
        id
    }

    /// A buffer the op writes (pre-filled with random values, which accumulating ops keep).
    fn output(&mut self, name: &str, kind: BufKind, len: usize) -> BufId {
        let data = self.normals(len, 1.0, 0.0);
        self.add_buf(name, kind, data)
    }

    fn tensor(&mut self, name: &str, shape: &[usize], role: Role, data: Vec<f32>) -> TensorId {
        assert_eq!(data.len(), shape.iter().product::<usize>());
        self.s.tensors.push(TensorSpec {
            name: name.into(),
            shape: shape.to_vec(),
            role,
            // The data is given: no initialisation happens here.
            init: Init::Zeros,
            offset: self.persistent.len(),
        });
        self.persistent.extend(data);
        self.s.tensors.len() - 1
    }

    fn normals(&mut self, len: usize, scale: f32, shift: f32) -> Vec<f32> {
        (0..len).map(|_| self.rng.normal() * scale + shift).collect()
    }

    fn uniforms(&mut self, len: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..len).map(|_| lo + (hi - lo) * self.rng.uniform()).collect()
    }

    fn bn(&mut self, c: usize) -> BnRef {
        let gamma = self.normals(c, 0.5, 1.0);
        let beta = self.normals(c, 0.5, 0.0);
        let mean = self.normals(c, 0.1, 0.0);
        let var = self.uniforms(c, 0.5, 1.5);
        BnRef {
            gamma: self.tensor("bn.weight", &[c], Role::Param, gamma),
            beta: self.tensor("bn.bias", &[c], Role::Param, beta),
            mean: self.tensor("bn.running_mean", &[c], Role::RunningMean, mean),
            var: self.tensor("bn.running_var", &[c], Role::RunningVar, var),
        }
    }

    /// Saved BN statistics of `w` channels: means, then positive 1/std.
    fn stats(&mut self, w: usize) -> BufId {
        let mut v = self.normals(w, 0.3, 0.0);
        v.extend(self.uniforms(w, 0.5, 1.5));
        self.input("bn.stats", v)
    }

    fn finish(mut self, name: String, op: Op, starts: Vec<usize>, check_persistent: bool) -> Case {
        self.s.steps = std::mem::take(&mut self.producers);
        self.s.steps.push(Step { layer: name.clone(), phase: Phase::Forward, op });
        Case {
            name,
            step: self.s.steps.len() - 1,
            sched: self.s,
            starts,
            nesterov: true,
            persistent: self.persistent,
            fills: self.fills,
            check_persistent,
        }
    }
}

/// Channel selection of a case: the whole layer, or a slice `(start, width)` of block 0.
#[derive(Clone, Copy)]
enum Pick {
    Full,
    Slice(usize, usize),
}

impl Pick {
    fn width(&self, c: usize) -> usize {
        match *self {
            Pick::Full => c,
            Pick::Slice(_, w) => w,
        }
    }
    fn sel(&self, c: usize) -> Sel {
        match self {
            Pick::Full => Sel::Full(c),
            Pick::Slice(..) => Sel::Block(0),
        }
    }
    fn spec(&self, c: usize) -> Vec<SliceSpec> {
        match *self {
            Pick::Full => vec![SliceSpec { channels: c, width: c }],
            Pick::Slice(_, w) => vec![SliceSpec { channels: c, width: w }],
        }
    }
    fn starts(&self) -> Vec<usize> {
        match *self {
            Pick::Full => vec![0],
            Pick::Slice(s, _) => vec![s],
        }
    }
}

const N: usize = 3;
const HW: usize = 7;

fn conv_cases(seed: &mut u64, precision: Precision, out: &mut Vec<Case>) {
    let (cin, cout) = (5, 7);
    // (name, k, stride, pad, image size): odd sizes, and two of 8 whose rows the GPU's im2col and
    // col2im take 4 (or 2) columns a thread.
    let geometries = [
        ("k3s1", 3, 1, 1, HW),
        ("k3s2", 3, 2, 1, HW),
        ("k1s1", 1, 1, 0, HW),
        ("k1s2", 1, 2, 0, HW),
        ("k3s1w8", 3, 1, 1, 8),
        ("k3s2w8", 3, 2, 1, 8),
    ];
    // (label, output pick, input pick, accumulate)
    let variants = [
        ("full", Pick::Full, Pick::Full, false),
        ("out-slice", Pick::Slice(2, 4), Pick::Full, false),
        ("out-wrap+acc", Pick::Slice(5, 4), Pick::Full, true),
        ("in-slice", Pick::Full, Pick::Slice(1, 3), false),
        ("in-wrap+acc", Pick::Full, Pick::Slice(4, 3), true),
    ];
    for (g, k, stride, pad, hw) in geometries {
        let shape = ConvShape { n: N, cin, h: hw, w: hw, cout, k, stride, pad };
        let hw_out = shape.ho() * shape.wo();
        for (label, op_pick, ip_pick, acc) in variants {
            let (ow, iw) = (op_pick.width(cout), ip_pick.width(cin));
            let chunk = if shape.direct() { N } else { 2 };
            // A case slices at most one side; block 0 is that side's slice.
            let (spec, starts) = match (op_pick, ip_pick) {
                (Pick::Slice(..), _) => (op_pick.spec(cout), op_pick.starts()),
                _ => (ip_pick.spec(cin), ip_pick.starts()),
            };
            // (backward, with d_inp, through an f32 copy of the weight's slice as the GPU's plan
            // gives sliced convolutions): forward once; backward with d_inp always, without it
            // for "full" only; the copy for the wrapping slices.
            let copies: &[bool] = if label.contains("wrap") { &[false, true] } else { &[false] };
            let runs = [(false, true), (true, true), (true, false)];
            for (backward, with_d_inp, copied) in runs.iter().flat_map(|&(b, d)| copies.iter().map(move |&c| (b, d, c)))
            {
                if !with_d_inp && label != "full" {
                    continue;
                }
                *seed += 1;
                let mut t = Tiny::new(*seed, spec.clone(), precision);
                let bf16 = t.bf16();
                // A bf16 forward op always makes its copy: its "copy" case would repeat another.
                if bf16 && !backward && copied {
                    continue;
                }
                let wdata = t.normals(cout * cin * k * k, 0.3, 0.0);
                let weight = t.tensor("conv.weight", &[cout, cin, k, k], Role::Param, wdata);
                let x = t.normals(iw * N * hw * hw, 1.0, 0.0);
                let inp = t.input("conv.inp", x);
                let col_len = crate::ops::conv2d::workspace_len(&shape, iw, chunk, crate::ir::Target::Cpu);
                let (out_sel, in_sel) = (op_pick.sel(cout), ip_pick.sel(cin));
                let (name, op) = if !backward {
                    let out = t.output("conv.out", BufKind::Activation, ow * N * hw_out);
                    let col = (col_len > 0).then(|| t.output("conv.col", BufKind::Workspace, col_len));
                    let weight_copy =
                        (copied || bf16).then(|| t.output("conv.weight_slice", BufKind::WeightCopy, ow * iw * k * k));
                    let accumulate = acc;
                    let conv = Conv {
                        out,
                        inp,
                        col,
                        weight,
                        shape,
                        out_sel,
                        in_sel,
                        chunk,
                        accumulate,
                        algo: ConvAlgo::Im2col { weight: weight_copy.map_or(GemmWeight::Param, GemmWeight::Copy) },
                    };
                    (format!("conv fwd {g} {label}{}", if copied { " copy" } else { "" }), Op::Conv(conv))
                } else {
                    let dy = t.normals(ow * N * hw_out, 1.0, 0.0);
                    let d_out = t.input("conv.d_out", dy);
                    let d_inp = with_d_inp.then(|| t.output("conv.d_inp", BufKind::Gradient, iw * N * hw * hw));
                    let d_weight = t.output("conv.d_weight", BufKind::WeightGradient, ow * iw * k * k);
                    let col = (col_len > 0).then(|| t.output("conv.col", BufKind::Workspace, col_len));
                    // bf16: the forward op's copy, an input here, unless this op makes it.
                    let gemm_weight = match (bf16 && with_d_inp, copied) {
                        (_, true) => {
                            GemmWeight::Copy(t.output("conv.weight_slice", BufKind::WeightCopy, ow * iw * k * k))
                        }
                        (true, false) => {
                            let w = &t.persistent[t.s.tensors[weight].range()];
                            let (os, is) = (pick_slice(op_pick, cout), pick_slice(ip_pick, cin));
                            let mut copy = vec![0f32; ow * iw * k * k];
                            crate::ops::conv2d::copy_weight(&mut copy, w, &shape, os, is);
                            GemmWeight::Forward(t.input("conv.weight_bf16", copy))
                        }
                        (false, false) => GemmWeight::Param,
                    };
                    let suffix = match (with_d_inp, copied) {
                        (false, _) => " no-d_inp",
                        (true, true) => " copy",
                        (true, false) => "",
                    };
                    (
                        format!("conv bwd {g} {label}{suffix}"),
                        Op::ConvBackward(ConvBackward {
                            d_inp,
                            d_weight,
                            d_out,
                            inp,
                            col,
                            weight,
                            shape,
                            out_sel,
                            in_sel,
                            chunk,
                            accumulate_d_inp: acc,
                            algo: ConvAlgo::Im2col { weight: gemm_weight },
                            prologue: None,
                        }),
                    )
                };
                out.push(t.finish(name, op, starts.clone(), false));
            }
        }
    }
}

/// Backward with the input gradient as a convolution of `d_out` with the flipped weight
/// (`--input-grad conv`, as the GPU's plan gives it): stride 1, "same" padding, an output no
/// wider than the input (7 input channels, 5 output), full and wrapping, k = 3 and k = 5, the op
/// making its flipped copy (in the storage type).
fn conv_by_conv_cases(seed: &mut u64, precision: Precision, out: &mut Vec<Case>) {
    let (cin, cout) = (7, 5);
    let variants = [
        ("k3s1", 3, "full", Pick::Full, Pick::Full, false),
        ("k3s1", 3, "out-wrap+acc", Pick::Slice(3, 4), Pick::Full, true),
        ("k3s1", 3, "in-wrap+acc", Pick::Full, Pick::Slice(4, 5), true),
        ("k5s1", 5, "full", Pick::Full, Pick::Full, false),
    ];
    for (g, k, label, op_pick, ip_pick, acc) in variants {
        let shape = ConvShape { n: N, cin, h: HW, w: HW, cout, k, stride: 1, pad: k / 2 };
        let (ow, iw, chunk) = (op_pick.width(cout), ip_pick.width(cin), 2);
        let (spec, starts) = match (op_pick, ip_pick) {
            (Pick::Slice(..), _) => (op_pick.spec(cout), op_pick.starts()),
            _ => (ip_pick.spec(cin), ip_pick.starts()),
        };
        *seed += 1;
        let mut t = Tiny::new(*seed, spec, precision);
        let wdata = t.normals(cout * cin * k * k, 0.3, 0.0);
        let weight = t.tensor("conv.weight", &[cout, cin, k, k], Role::Param, wdata);
        let x = t.normals(iw * N * HW * HW, 1.0, 0.0);
        let inp = t.input("conv.inp", x);
        let dy = t.normals(ow * N * HW * HW, 1.0, 0.0);
        let d_out = t.input("conv.d_out", dy);
        let d_inp = Some(t.output("conv.d_inp", BufKind::Gradient, iw * N * HW * HW));
        let d_weight = t.output("conv.d_weight", BufKind::WeightGradient, ow * iw * k * k);
        let col = Some(t.output("conv.col", BufKind::Workspace, shape.im2col_len(iw, chunk)));
        let flipped = t.output("conv.weight_flip", BufKind::WeightCopy, ow * iw * k * k);
        let (out_sel, in_sel) = (op_pick.sel(cout), ip_pick.sel(cin));
        let op = ConvBackward {
            d_inp,
            d_weight,
            d_out,
            inp,
            col,
            weight,
            shape,
            out_sel,
            in_sel,
            chunk,
            accumulate_d_inp: acc,
            algo: ConvAlgo::InputGradByConv { flipped },
            prologue: None,
        };
        out.push(t.finish(format!("conv bwd {g} {label} d_inp-by-conv"), Op::ConvBackward(op), starts, false));
    }
}

/// Convolutions by Winograd F(2x2, 3x3) (`--winograd`, the GPU's fp32 programs) against the
/// reference's im2col: 3x3 stride-1 layers on odd (7) and even (8) images, full, sliced and
/// wrapping on either side or both, forward and backward (without `d_inp` for "full"). The
/// workspace is sized as the plan sizes it; the reference runs its own algorithm.
fn conv_winograd_cases(seed: &mut u64, precision: Precision, out: &mut Vec<Case>) {
    if precision != Precision::Fp32 {
        return;
    }
    let (cin, cout, chunk) = (5, 7, 2);
    let variants = [
        ("full", Pick::Full, Pick::Full, false),
        ("out-slice", Pick::Slice(2, 4), Pick::Full, false),
        ("out-wrap+acc", Pick::Slice(5, 4), Pick::Full, true),
        ("in-wrap+acc", Pick::Full, Pick::Slice(4, 3), true),
    ];
    for (g, hw) in [("k3s1", HW), ("k3s1w8", 8)] {
        let shape = ConvShape { n: N, cin, h: hw, w: hw, cout, k: 3, stride: 1, pad: 1 };
        for (label, op_pick, ip_pick, acc) in variants {
            let (ow, iw) = (op_pick.width(cout), ip_pick.width(cin));
            let (spec, starts) = match (op_pick, ip_pick) {
                (Pick::Slice(..), _) => (op_pick.spec(cout), op_pick.starts()),
                _ => (ip_pick.spec(cin), ip_pick.starts()),
            };
            let (out_sel, in_sel) = (op_pick.sel(cout), ip_pick.sel(cin));
            let col_len = crate::ops::conv2d::winograd_workspace_len(&shape, iw, chunk, crate::ir::Target::Cuda);
            // (backward, with d_inp)
            for (backward, with_d_inp) in [(false, true), (true, true), (true, false)] {
                if !with_d_inp && label != "full" {
                    continue;
                }
                *seed += 1;
                let mut t = Tiny::new(*seed, spec.clone(), precision);
                let wdata = t.normals(cout * cin * 9, 0.3, 0.0);
                let weight = t.tensor("conv.weight", &[cout, cin, 3, 3], Role::Param, wdata);
                let x = t.normals(iw * N * hw * hw, 1.0, 0.0);
                let inp = t.input("conv.inp", x);
                let col = Some(t.output("conv.col", BufKind::Workspace, col_len));
                let (name, op) = if !backward {
                    let out = t.output("conv.out", BufKind::Activation, ow * N * hw * hw);
                    let accumulate = acc;
                    let conv = Conv {
                        out,
                        inp,
                        col,
                        weight,
                        shape,
                        out_sel,
                        in_sel,
                        chunk,
                        accumulate,
                        algo: ConvAlgo::Winograd,
                    };
                    (format!("conv fwd {g} {label} winograd"), Op::Conv(conv))
                } else {
                    let dy = t.normals(ow * N * hw * hw, 1.0, 0.0);
                    let d_out = t.input("conv.d_out", dy);
                    let d_inp = with_d_inp.then(|| t.output("conv.d_inp", BufKind::Gradient, iw * N * hw * hw));
                    let d_weight = t.output("conv.d_weight", BufKind::WeightGradient, ow * iw * 9);
                    let suffix = if with_d_inp { "" } else { " no-d_inp" };
                    let op = ConvBackward {
                        d_inp,
                        d_weight,
                        d_out,
                        inp,
                        col,
                        weight,
                        shape,
                        out_sel,
                        in_sel,
                        chunk,
                        accumulate_d_inp: acc,
                        algo: ConvAlgo::Winograd,
                        prologue: None,
                    };
                    (format!("conv bwd {g} {label}{suffix} winograd"), Op::ConvBackward(op))
                };
                out.push(t.finish(name, op, starts.clone(), false));
            }
        }
    }
}

fn bn_cases(seed: &mut u64, precision: Precision, out: &mut Vec<Case>) {
    // An odd row, and one of 192 values (a multiple of 4: the GPU's kernels take 4 at a time).
    for (m, size) in [(N * HW * HW, ""), (N * 64, " m192")] {
        bn_cases_of(m, size, seed, precision, out);
    }
}

fn bn_cases_of(m: usize, size: &str, seed: &mut u64, precision: Precision, out: &mut Vec<Case>) {
    let c = 6;
    let picks = [("full", Pick::Full), ("slice", Pick::Slice(1, 4)), ("wrap", Pick::Slice(4, 4))];
    let mut next = |spec: Vec<SliceSpec>| {
        *seed += 1;
        Tiny::new(*seed, spec, precision)
    };
    for (label, pick) in picks {
        let w = pick.width(c);
        let sel = pick.sel(c);
        // train
        let mut t = next(pick.spec(c));
        let bn = t.bn(c);
        let x = t.normals(w * m, 1.5, 0.3);
        let inp = t.input("bn.inp", x);
        let o = t.output("bn.out", BufKind::Activation, w * m);
        let stats = t.output("bn.stats", BufKind::Activation, 2 * w);
        let op = Op::BnReluTrain(BnReluTrain { out: o, stats, inp, bn, sel, m });
        out.push(t.finish(format!("bn_relu train {label}{size}"), op, pick.starts(), true));
        // apply (full and wrapping only)
        if label != "slice" {
            let mut t = next(pick.spec(c));
            let bn = t.bn(c);
            let x = t.normals(w * m, 1.5, 0.3);
            let inp = t.input("bn.inp", x);
            let stats = t.stats(w);
            let o = t.output("bn.out", BufKind::Activation, w * m);
            let op = Op::BnReluApply(BnReluApply { out: o, inp, stats, bn, sel, m });
            out.push(t.finish(format!("bn_relu apply {label}{size}"), op, pick.starts(), false));
        }
        // backward; the wrapping case accumulates into d_inp
        let mut t = next(pick.spec(c));
        let bn = t.bn(c);
        let x = t.normals(w * m, 1.5, 0.3);
        let inp = t.input("bn.inp", x);
        let dy = t.normals(w * m, 1.0, 0.0);
        let d_out = t.input("bn.d_out", dy);
        let stats = t.stats(w);
        let d_inp = t.output("bn.d_inp", BufKind::Gradient, w * m);
        let d_gamma = t.output("bn.d_weight", BufKind::WeightGradient, w);
        let d_beta = t.output("bn.d_bias", BufKind::WeightGradient, w);
        let accumulate = label == "wrap";
        let op =
            Op::BnReluBackward(BnReluBackward { d_inp, d_gamma, d_beta, d_out, inp, stats, bn, sel, m, accumulate });
        let name = format!("bn_relu bwd {label}{}{size}", if accumulate { "+acc" } else { "" });
        out.push(t.finish(name, op, pick.starts(), false));
    }
    let mut t = next(Pick::Full.spec(c));
    let bn = t.bn(c);
    let x = t.normals(c * m, 1.5, 0.3);
    let inp = t.input("bn.inp", x);
    let o = t.output("bn.out", BufKind::Activation, c * m);
    let op = Op::BnReluEval(BnReluEval { out: o, inp, bn, channels: c, m });
    out.push(t.finish(format!("bn_relu eval{size}"), op, vec![0], false));
}

fn small_cases(seed: &mut u64, precision: Precision, out: &mut Vec<Case>) {
    let mut next = || {
        *seed += 1;
        Tiny::new(*seed, vec![], precision)
    };
    // add
    let len = N * 5 * HW * HW;
    let mut t = next();
    let x = t.normals(len, 1.0, 0.0);
    let inp = t.input("add.inp", x);
    let o = t.output("add.out", BufKind::Activation, len);
    out.push(t.finish("add".into(), Op::Add(Add { out: o, inp }), vec![], false));
    // pool
    let (c, hw) = (5, HW * HW);
    let mut t = next();
    let x = t.normals(c * N * hw, 1.0, 0.5);
    let inp = t.input("pool.inp", x);
    let o = t.output("pool.out", BufKind::Activation, c * N);
    let op = Op::Pool(Pool { out: o, inp, c, n: N, hw });
    out.push(t.finish("avgpool fwd".into(), op, vec![], false));
    let mut t = next();
    let dy = t.normals(c * N, 1.0, 0.0);
    let d_out = t.input("pool.d_out", dy);
    let d_inp = t.output("pool.d_inp", BufKind::Gradient, c * N * hw);
    let op = Op::PoolBackward(PoolBackward { d_inp, d_out, c, n: N, hw });
    out.push(t.finish("avgpool bwd".into(), op, vec![], false));
    // linear
    let (c, o) = (7, 5);
    let mut t = next();
    let wd = t.normals(o * c, 0.4, 0.0);
    let weight = t.tensor("fc.weight", &[o, c], Role::Param, wd);
    let bd = t.normals(o, 0.1, 0.0);
    let bias = t.tensor("fc.bias", &[o], Role::Param, bd);
    let x = t.normals(c * N, 1.0, 0.0);
    let inp = t.input("fc.inp", x);
    let y = t.output("fc.out", BufKind::Activation, N * o);
    let op = Op::Linear(Linear { out: y, inp, weight, bias, c, n: N, o });
    out.push(t.finish("linear fwd".into(), op, vec![], false));
    let mut t = next();
    let wd = t.normals(o * c, 0.4, 0.0);
    let weight = t.tensor("fc.weight", &[o, c], Role::Param, wd);
    let x = t.normals(c * N, 1.0, 0.0);
    let inp = t.input("fc.inp", x);
    let dy = t.normals(N * o, 1.0, 0.0);
    let d_out = t.input("fc.d_out", dy);
    let d_inp = t.output("fc.d_inp", BufKind::Gradient, c * N);
    let d_weight = t.output("fc.d_weight", BufKind::WeightGradient, o * c);
    let d_bias = t.output("fc.d_bias", BufKind::WeightGradient, o);
    let op = Op::LinearBackward(LinearBackward { d_inp, d_weight, d_bias, d_out, inp, weight, c, n: N, o });
    out.push(t.finish("linear bwd".into(), op, vec![], false));
    // cross-entropy
    let (n, o) = (5, 7);
    for grad in [true, false] {
        let mut t = next();
        let l = t.normals(n * o, 3.0, 0.0);
        let logits = t.input("logits", l);
        let y: Vec<f32> = (0..n).map(|_| t.rng.below(o) as f32).collect();
        let labels = t.input("labels", y);
        let stats = t.output("loss", BufKind::Activation, 2);
        let d_logits = grad.then(|| t.output("d_logits", BufKind::Gradient, n * o));
        let op = Op::CrossEntropy(CrossEntropy { stats, d_logits, logits, labels, n, o });
        let name = if grad { "cross_entropy +d_logits" } else { "cross_entropy loss only" };
        out.push(t.finish(name.into(), op, vec![], false));
    }
}

/// (name, param shape, slice spec, start, map, gradient length, nesterov)
type SgdCase = (&'static str, Vec<usize>, Vec<SliceSpec>, usize, GradSel, usize, bool);

fn sgd_cases(seed: &mut u64, precision: Precision, out: &mut Vec<Case>) {
    let cases: [SgdCase; 3] = [
        ("sgd full", vec![5, 6], vec![], 0, GradSel::Full, 30, true),
        (
            "sgd rows wrap",
            vec![6, 4],
            vec![SliceSpec { channels: 6, width: 4 }],
            4,
            GradSel::Rows { sel: Sel::Block(0), row_len: 4 },
            16,
            false,
        ),
        (
            "sgd cols wrap",
            vec![3, 5, 3, 3],
            vec![SliceSpec { channels: 5, width: 3 }],
            3,
            GradSel::Cols { sel: Sel::Block(0), rows: 3, group: 9 },
            3 * 3 * 9,
            true,
        ),
    ];
    for (name, shape, spec, start, map, glen, nesterov) in cases {
        *seed += 1;
        let mut t = Tiny::new(*seed, spec, precision);
        let len = shape.iter().product();
        let pd = t.normals(len, 1.0, 0.0);
        let param = t.tensor("w", &shape, Role::Param, pd);
        let md = t.normals(len, 0.1, 0.0);
        let momentum = t.tensor("w.momentum", &shape, Role::Momentum, md);
        let gd = t.normals(glen, 1.0, 0.0);
        let grad = t.input("w.grad", gd);
        let op = Op::Sgd(Sgd { param, momentum, grad, map });
        let mut c = t.finish(name.into(), op, vec![start], true);
        c.nesterov = nesterov;
        out.push(c);
    }
    // One multi-tensor launch (`--sgd-group`): a full gradient of odd length, rows of a wrapping
    // slice of block 0, columns of a wrapping slice of block 1, each reading its block's start;
    // in bf16 the first also writes its weight's bf16 copy, as for a kept copy.
    *seed += 1;
    let spec = vec![SliceSpec { channels: 6, width: 4 }, SliceSpec { channels: 5, width: 3 }];
    let mut t = Tiny::new(*seed, spec, precision);
    let group: [(Vec<usize>, GradSel, usize); 3] = [
        (vec![7, 5], GradSel::Full, 35),
        (vec![6, 4], GradSel::Rows { sel: Sel::Block(0), row_len: 4 }, 16),
        (vec![3, 5, 3, 3], GradSel::Cols { sel: Sel::Block(1), rows: 3, group: 9 }, 3 * 3 * 9),
    ];
    let mut updates = vec![];
    for (i, (shape, map, glen)) in group.into_iter().enumerate() {
        let len = shape.iter().product();
        let pd = t.normals(len, 1.0, 0.0);
        let param = t.tensor(&format!("w{i}"), &shape, Role::Param, pd);
        let md = t.normals(len, 0.1, 0.0);
        let momentum = t.tensor(&format!("w{i}.momentum"), &shape, Role::Momentum, md);
        let gd = t.normals(glen, 1.0, 0.0);
        let grad = t.input(&format!("w{i}.grad"), gd);
        updates.push(Sgd { param, momentum, grad, map });
    }
    let mut copies = vec![None; updates.len()];
    if t.bf16() {
        copies[0] = Some(t.output("w0.weight_bf16", BufKind::WeightCopy, 35));
    }
    let op = Op::SgdGroup(SgdGroup { updates, copies, first: 0 });
    out.push(t.finish("sgd group".into(), op, vec![4, 3], true));
}

fn cases(precision: Precision) -> Vec<Case> {
    let mut seed = 1000;
    let mut v = vec![];
    conv_cases(&mut seed, precision, &mut v);
    conv_by_conv_cases(&mut seed, precision, &mut v);
    conv_winograd_cases(&mut seed, precision, &mut v);
    bn_cases(&mut seed, precision, &mut v);
    small_cases(&mut seed, precision, &mut v);
    sgd_cases(&mut seed, precision, &mut v);
    v
}

/// The channels a pick covers at its start.
fn pick_slice(pick: Pick, channels: usize) -> Slice {
    match pick {
        Pick::Full => Slice::full(channels),
        Pick::Slice(start, width) => Slice::new(start, width, channels),
    }
}

/// Runs the case's op on `b`; returns every written buffer (workspaces aside) and, when the op
/// updates it, the persistent region.
fn run_case(b: &mut dyn Backend, c: &Case, p: &Program) -> crate::Result<Vec<Vec<f32>>> {
    b.reserve_arena(p.arena_bytes())?;
    b.set_persistent(&c.persistent)?;
    for (buf, data) in &c.fills {
        b.write(p, *buf, data);
    }
    let ctx = StepCtx::new(&c.starts, SgdParams { nesterov: c.nesterov, ..SGD });
    b.run_op(p, c.step, &ctx);
    let (_, written) = c.sched.steps[c.step].op.buffers();
    let mut outs = vec![];
    for w in written {
        if c.sched.buffers[w].kind == BufKind::Workspace {
            continue;
        }
        let mut v = vec![0.0; p.locs[w].1];
        b.read(p, w, &mut v);
        outs.push(v);
    }
    if c.check_persistent {
        let mut v = vec![0.0; c.persistent.len()];
        b.get_persistent(&mut v);
        outs.push(v);
    }
    Ok(outs)
}

fn max_err(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    if a.len() != b.len() {
        return f64::NAN;
    }
    a.iter().zip(b).map(|(x, y)| rel_err(x, y)).fold(
        0.0,
        |m, e| {
            if e.is_nan() || m.is_nan() {
                f64::NAN
            } else {
                m.max(e)
            }
        },
    )
}

fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| e.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Runs `f` on both backends, catching failures; `Err` names the side that failed and why.
fn both<T>(
    reference: &mut dyn Backend,
    other: &mut dyn Backend,
    mut f: impl FnMut(&mut dyn Backend) -> crate::Result<T>,
) -> Result<(T, T), String> {
    let mut side = |b: &mut dyn Backend, who: &str| -> Result<T, String> {
        match catch_unwind(AssertUnwindSafe(|| f(b))) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("{who}: {e}")),
            Err(p) => Err(format!("{who} panicked: {}", panic_text(&*p))),
        }
    };
    let r = side(reference, "reference")?;
    let o = side(other, "other")?;
    Ok((r, o))
}

/// Both backends' read-backs, or why one failed.
type Outcome = Result<(Vec<Vec<f32>>, Vec<Vec<f32>>), String>;

fn row(op: String, result: Outcome, tol: f64) -> OpCheck {
    match result {
        Ok((r, o)) => {
            let e = max_err(&o, &r);
            OpCheck { op, max_rel_err: e, pass: e <= tol }
        }
        Err(why) => {
            OpCheck { op: format!("{op} [{}]", why.lines().next().unwrap_or("")), max_rel_err: f64::NAN, pass: false }
        }
    }
}

fn check_case(reference: &mut dyn Backend, other: &mut dyn Backend, c: &Case, tol: f64) -> OpCheck {
    let p = Program::new(c.sched.clone());
    row(c.name.clone(), both(reference, other, |b| run_case(b, c, &p)), tol)
}

/// Gathers a batch with crops and flips from a resident split on both backends.
fn check_fill_batch(reference: &mut dyn Backend, other: &mut dyn Backend, tol: f64, precision: Precision) -> OpCheck {
    let (channels, len) = (3, 10);
    let mut rng = Rng::new(77, 7);
    let split = Split {
        images: (0..len * channels * PLANE).map(|_| rng.below(256) as u8).collect(),
        labels: (0..len).map(|_| rng.below(10) as u8).collect(),
        len,
    };
    let norm = Normalization { mean: vec![0.49, 0.48, 0.45], std: vec![0.25, 0.24, 0.26] };
    let indices = [7, 2, 9, 0, 2];
    let crops = [
        Crop { dx: 0, dy: 8, flip: true },
        Crop::IDENTITY,
        Crop { dx: 8, dy: 0, flip: false },
        Crop { dx: 3, dy: 5, flip: true },
        Crop { dx: 4, dy: 4, flip: true },
    ];
    let n = indices.len();
    let mut t = Tiny::new(0, vec![], precision);
    t.s.buffers[0].len = channels * n * PLANE;
    t.s.buffers[0].dtype = precision.storage();
    t.s.buffers[1].len = n;
    let p = Program::new(t.s);
    let result = both(reference, other, |b| {
        b.reserve_arena(p.arena_bytes())?;
        b.upload_split(SplitId::Test, split.clone(), channels, &norm)?;
        b.fill_batch(&p, SplitId::Test, &indices, &crops);
        let mut x = vec![0.0; channels * n * PLANE];
        let mut y = vec![0.0; n];
        b.read(&p, p.schedule.input, &mut x);
        b.read(&p, p.schedule.labels, &mut y);
        Ok(vec![x, y])
    });
    row("fill_batch crop+flip".into(), result, tol)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use crate::verify::tampered::Tampered;

    /// A case whose op is a convolution by Winograd.
    fn winograd(c: &Case) -> bool {
        match &c.sched.steps[c.step].op {
            Op::Conv(c) => c.algo.is_winograd(),
            Op::ConvBackward(c) => c.algo.is_winograd(),
            _ => false,
        }
    }

    #[test]
    fn every_op_kind_is_covered_with_sliced_and_accumulating_variants() {
        let cs = cases(Precision::Fp32);
        let kinds = |pred: fn(&Op) -> bool| cs.iter().filter(|c| pred(&c.sched.steps[c.step].op)).count();
        // 6 geometries x 5 slicings, and the 2 wrapping slicings again through a weight copy.
        assert_eq!(kinds(|o| matches!(o, Op::Conv(Conv { .. }))), 30 + 12 + 8);
        // ... and 4 whose input gradient is a convolution (k3s1 full and wrapping, k5s1 full),
        // and the Winograd ones (below).
        assert_eq!(kinds(|o| matches!(o, Op::ConvBackward(ConvBackward { .. }))), 36 + 12 + 4 + 10);
        let copied = |o: &Op| matches!(o, Op::ConvBackward(ConvBackward { algo, .. }) if algo.makes_copy());
        assert_eq!(cs.iter().filter(|c| copied(&c.sched.steps[c.step].op)).count(), 12 + 4);
        let by_conv = |o: &Op| matches!(o, Op::ConvBackward(ConvBackward { algo, .. }) if algo.input_grad_by_conv());
        assert_eq!(cs.iter().filter(|c| by_conv(&c.sched.steps[c.step].op)).count(), 4);
        // Winograd: 2 geometries x 4 slicings forward, the same backward and "full" without d_inp.
        assert_eq!(cs.iter().filter(|c| winograd(c)).count(), 8 + 8 + 2);
        assert!(!cases(Precision::Bf16).iter().any(winograd));
        // BN: full, sliced and wrapping, each at two row lengths.
        assert_eq!(kinds(|o| matches!(o, Op::BnReluTrain(BnReluTrain { .. }))), 6);
        assert_eq!(kinds(|o| matches!(o, Op::BnReluApply(BnReluApply { .. }))), 4);
        assert_eq!(kinds(|o| matches!(o, Op::BnReluEval(BnReluEval { .. }))), 2);
        assert_eq!(kinds(|o| matches!(o, Op::BnReluBackward(BnReluBackward { .. }))), 6);
        assert_eq!(kinds(|o| matches!(o, Op::Sgd(Sgd { .. }))), 3);
        assert_eq!(kinds(|o| matches!(o, Op::SgdGroup(SgdGroup { .. }))), 1);
        for op in ["add", "avgpool fwd", "avgpool bwd", "linear fwd", "linear bwd"] {
            assert!(cs.iter().any(|c| c.name == op), "{op}");
        }
        // Names are unique, so table rows can be told apart.
        let mut names: Vec<&str> = cs.iter().map(|c| c.name.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), cs.len());
        // Every case's schedule is a valid program whose op under test is the last step.
        for c in &cs {
            assert_eq!(c.step, c.sched.steps.len() - 1);
            let p = Program::new(c.sched.clone());
            assert!(p.arena_bytes() > 0);
        }
    }

    /// The CPU's input gradient by convolution (the op's flipped copy, im2col of `d_out`, one
    /// GEMM) equals its col2im path for the same op, sliced and wrapping: the same `d_inp` and
    /// `d_weight` to f32 rounding.
    #[test]
    fn the_cpu_input_gradient_by_convolution_matches_its_col2im_path() {
        let mut cpu = CpuBackend::reference();
        let by_conv = |o: &Op| matches!(o, Op::ConvBackward(ConvBackward { algo, .. }) if algo.input_grad_by_conv());
        let cs: Vec<Case> = cases(Precision::Fp32).into_iter().filter(|c| by_conv(&c.sched.steps[c.step].op)).collect();
        assert_eq!(cs.len(), 4);
        for c in cs {
            let mut sched = c.sched.clone();
            let Op::ConvBackward(op) = &mut sched.steps[c.step].op else { unreachable!() };
            // The same buffer (as long) now holds the plain slice copy the col2im path reads.
            let flipped = op.algo.weight_copy().expect("the flipped copy");
            op.algo = ConvAlgo::Im2col { weight: GemmWeight::Copy(flipped) };
            let got = run_case(&mut cpu, &c, &Program::new(c.sched.clone())).unwrap();
            let twin = Case { sched, ..c };
            let want = run_case(&mut cpu, &twin, &Program::new(twin.sched.clone())).unwrap();
            let c = twin;
            // d_inp, d_weight (the copies differ: flipped or not).
            let err = max_err(&got[..2], &want[..2]);
            assert!(err < 1e-6, "{}: {err}", c.name);
            assert_ne!(got[2], want[2], "{}: the flipped copy was made", c.name);
        }
    }

    /// The Winograd rows hold the GPU to the CPU's im2col within the fp32 tolerance (1e-5); the
    /// CPU's own Winograd, the same algorithm, already meets it on every one of those cases, so
    /// the algorithm leaves a kernel that follows it room to pass.
    #[test]
    fn winograd_cases_are_within_the_fp32_tolerance_on_the_cpus_winograd() {
        let (mut reference, mut fast) = (CpuBackend::reference(), CpuBackend::new());
        assert_eq!(fast.conv_algo, crate::ops::conv2d::Algo::Fast);
        let cs: Vec<Case> = cases(Precision::Fp32).into_iter().filter(winograd).collect();
        assert_eq!(cs.len(), 18);
        for c in &cs {
            let row = check_case(&mut reference, &mut fast, c, 1e-5);
            assert!(row.pass && row.max_rel_err > 0.0, "{row:?}: the CPU took another path");
        }
    }

    #[test]
    fn rel_err_is_relative_and_catches_nan() {
        assert_eq!(rel_err(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((rel_err(&[3.0, 5.0], &[0.0, 5.0]) - 0.6).abs() < 1e-12);
        assert_eq!(rel_err(&[0.5], &[0.0]), 0.5);
        assert!(rel_err(&[f32::NAN], &[1.0]).is_nan());
        assert!(max_err(&[vec![1.0], vec![f32::NAN]], &[vec![1.0], vec![1.0]]).is_nan());
    }

    /// The CPU against itself: every op, convolutions included, is exact.
    #[test]
    fn cpu_against_cpu_is_exact_for_every_op() {
        let (mut a, mut b) = (CpuBackend::new(), CpuBackend::new());
        let rows = op_checks(&mut a, &mut b, 0.0, Precision::Fp32);
        assert_eq!(rows.len(), cases(Precision::Fp32).len() + 1);
        for r in &rows {
            assert!(r.pass && r.max_rel_err == 0.0, "{r:?}");
        }
    }

    /// The bf16 cases are bf16 programs: what a bf16 step stores as bf16 is bf16 here (and the
    /// rest f32), every convolution whose GEMMs read the weight reads a bf16 copy, and the CPU
    /// against itself is exact for every op.
    #[test]
    fn bf16_cases_are_bf16_programs_and_the_cpu_agrees_with_itself() {
        let cs = cases(Precision::Bf16);
        let why = "the fp32 forward copy cases and the (fp32-only) Winograd ones have no twin";
        assert_eq!(cs.len(), cases(Precision::Fp32).len() - 12 - 18, "{why}");
        for c in &cs {
            assert_eq!(c.sched.lowering.precision, Precision::Bf16);
            let (read, written) = c.sched.steps[c.step].op.buffers();
            for b in read.iter().chain(&written).map(|&b| &c.sched.buffers[b]) {
                let f32_kind = b.kind == BufKind::WeightGradient
                    || b.name.ends_with("stats")
                    || b.name.ends_with(".grad")
                    || ["pool.out", "pool.d_out", "logits", "labels", "loss", "d_logits"].contains(&b.name.as_str())
                    || b.name.starts_with("fc.");
                assert_eq!(b.dtype, if f32_kind { Dtype::F32 } else { Dtype::Bf16 }, "{}: {}", c.name, b.name);
            }
            match &c.sched.steps[c.step].op {
                Op::Conv(conv) => assert!(conv.algo.weight_copy().is_some(), "{}", c.name),
                Op::ConvBackward(conv) => {
                    assert_eq!(conv.algo.weight_copy().is_some(), conv.d_inp.is_some(), "{}", c.name)
                }
                _ => {}
            }
        }
        let (mut a, mut b) = (CpuBackend::reference(), CpuBackend::new());
        for r in op_checks(&mut a, &mut b, 0.0, Precision::Bf16) {
            assert!(r.pass && r.max_rel_err == 0.0, "{r:?}");
        }
    }

    /// The bf16 tolerance catches a kernel that rounds otherwise: a convolution whose stored
    /// outputs are one ulp smaller in magnitude wherever the ulp is odd (half of them, as a
    /// truncating store would be) fails its rows, and every other row still passes.
    #[test]
    fn the_bf16_tolerance_catches_a_kernel_that_rounds_otherwise() {
        let skew = |name: &str, out: &mut [f32]| {
            if name == "conv.out" {
                for v in out.iter_mut() {
                    let bits = v.to_bits();
                    if (bits >> 16) & 1 == 1 {
                        *v = f32::from_bits(bits - (1 << 16));
                    }
                }
            }
        };
        let (mut a, mut b) = (CpuBackend::new(), Tampered::new(skew, |_| {}));
        for r in op_checks(&mut a, &mut b, BF16_OP_TOL, Precision::Bf16) {
            if r.op.starts_with("conv fwd") {
                assert!(!r.pass && r.max_rel_err > 2.0 * BF16_OP_TOL, "{r:?}");
            } else {
                assert!(r.pass, "{r:?}");
            }
        }
    }

    #[test]
    /// A backend that perturbs one op kind must be caught by its rows only.
    fn a_skewed_op_fails_only_its_row() {
        // Every pooled output read back is off by 1%.
        let skew = |name: &str, out: &mut [f32]| {
            if name == "pool.out" {
                out.iter_mut().for_each(|v| *v *= 1.01);
            }
        };
        let (mut a, mut b) = (CpuBackend::new(), Tampered::new(skew, |_| {}));
        let rows = op_checks(&mut a, &mut b, 1e-4, Precision::Fp32);
        for r in &rows {
            if r.op == "avgpool fwd" {
                assert!(!r.pass && (r.max_rel_err - 0.01).abs() < 1e-4, "{r:?}");
            } else {
                assert!(r.pass, "{r:?}");
            }
        }
    }
}
