//! A step as a schedule: the ordered list of ops (forward, backward, update), each naming the
//! arena buffers it reads and writes and the persistent tensors it uses. One list, three uses:
//! the planner reads buffer lifetimes off it, the executor runs it, the profiler times it.
//!
//! Buffers are described here (name, kind, element type, length, whether sized to a slice);
//! where they live is the plan's business. Persistent tensors (parameters, momentum, BN running statistics)
//! live outside the arena, at fixed offsets of one persistent region laid out here.

use crate::ir::{
    BufId, Buffer, GradSel, Lifetime, ModelConfig, Precision, Sel, Slice, SliceSpec, Target, TensorId, TensorSpec,
};
use crate::ops::sgd::{grad_map, GradMap};
use crate::ops::Op;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Forward,
    Backward,
    Update,
}

impl Phase {
    pub fn letter(&self) -> char {
        match self {
            Phase::Forward => 'f',
            Phase::Backward => 'b',
            Phase::Update => 'u',
        }
    }
}

#[derive(Clone, Debug)]
pub struct Step {
    /// The layer the op belongs to, e.g. `block3.conv1` (profiles sum per layer).
    pub layer: String,
    pub phase: Phase,
    pub op: Op,
}

impl Step {
    /// `f block3.conv1`, `b block3.conv1`, `u block3.conv1.weight`.
    pub fn name(&self) -> String {
        format!("{} {}", self.phase.letter(), self.layer)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward, backward and SGD updates.
    Train,
    /// Forward with running statistics, the full network, loss only.
    Eval,
    /// Forward of the full network with batch statistics, updating BN's running statistics
    /// only: recalibrating them for the full network after SliceOut training.
    Calibrate,
}

impl Mode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Train => "train",
            Mode::Eval => "eval",
            Mode::Calibrate => "calibrate",
        }
    }
}

/// Where the SGD updates go in a training schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateAt {
    /// Right after each parameter's gradient is complete: weight gradients live one op.
    Early,
    /// After the whole backward pass, as a framework does: every weight gradient is live at once.
    End,
    /// No updates; weight gradients stay in the arena until the step ends (tests read them).
    None,
}

/// Memory choices of a training schedule; `plan` shows the effect of each. How the step runs
/// on its target (algorithms, element types) is [`Lowering`]'s, so these say only what is kept,
/// recomputed or chunked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Recompute BN + ReLU outputs in backward from the stored input and statistics, instead of
    /// keeping them from forward.
    pub recompute: bool,
    /// Accumulate the identity shortcut's gradient in place, in the gradient buffer coming from
    /// the block's output, instead of a fresh buffer plus an add.
    pub in_place: bool,
    /// Images per im2col chunk; 0 picks the largest chunk whose columns fit the budget.
    pub col_chunk: usize,
    /// MiB a workspace may take when the chunk is picked; 0 for the target's default
    /// ([`Options::col_budget`]).
    pub col_budget_mib: usize,
    pub update: UpdateAt,
}

impl Default for Options {
    fn default() -> Options {
        Options { recompute: true, in_place: true, col_chunk: 0, col_budget_mib: 0, update: UpdateAt::Early }
    }
}

impl Options {
    /// MiB a workspace may take when the chunk is picked: the option, or `target`'s default.
    /// The CPU keeps columns small enough for its caches. The GPU takes 512 MiB: fewer, larger
    /// GEMMs and launches, the fastest budget measured on a card, for a somewhat larger arena
    /// (BENCHMARKS.md, "Options measured"). A smaller budget trades speed for memory.
    pub fn col_budget(&self, target: Target) -> usize {
        match (self.col_budget_mib, target) {
            (0, Target::Cpu) => 32,
            (0, Target::Cuda) => 512,
            (mib, _) => mib,
        }
    }

    /// `(name, value)` pairs for printouts; `target` gives the default budget.
    pub fn describe(&self, target: Target) -> Vec<(String, String)> {
        vec![
            ("recompute bn-relu".into(), on(self.recompute)),
            ("in-place residual grad".into(), on(self.in_place)),
            (
                "im2col chunk".into(),
                if self.col_chunk == 0 {
                    format!("auto ({} MiB budget)", self.col_budget(target))
                } else {
                    format!("{} images", self.col_chunk)
                },
            ),
            ("update".into(), format!("{:?}", self.update).to_lowercase()),
        ]
    }
}

/// A switch as the printouts say it.
fn on(b: bool) -> String {
    if b { "on" } else { "off" }.to_string()
}

/// How a step is lowered for its target: what `lower` reads, beside the memory choices, to
/// pick each convolution's algorithm, weight copies and workspace. Here rather than in `lower`
/// because the schedule records it, and the schedule sits below `lower`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lowering {
    /// The backend the workspaces are sized for.
    pub target: Target,
    /// The element type of activations, their gradients and workspaces (`ir::Precision`).
    pub precision: Precision,
    /// How convolutions compute their input gradient.
    pub input_grad: InputGrad,
    /// The GPU's fp32 programs run their 3x3 stride-1 convolutions by Winograd F(2x2, 3x3)
    /// (`--winograd`, experimental: `ops::conv2d::winograd_cmds`). The CPU runs Winograd on
    /// those layers whatever this says; bf16 programs keep im2col.
    pub winograd: bool,
    /// `--fold-bn`: a convolution's backward folds the recomputed BN + ReLU output it reads
    /// into its im2col (`lower::fold_bn_relu`), so that output is not written. Off by default
    /// on both targets: not yet run on a card, and on the CPU the folded im2col has not been
    /// faster than the BN op plus im2col (BENCHMARKS.md).
    pub fold_bn: bool,
    /// Adjacent SGD updates run as one op, `ops::SgdGroup` (`--sgd-group`, experimental): on
    /// the GPU one launch a group instead of one a parameter; the same numbers.
    pub sgd_group: bool,
}

impl Default for Lowering {
    fn default() -> Lowering {
        Lowering {
            target: Target::Cpu,
            precision: Precision::Fp32,
            input_grad: InputGrad::Conv,
            winograd: false,
            fold_bn: false,
            sgd_group: false,
        }
    }
}

impl Lowering {
    /// `(name, value)` pairs for printouts, after [`Options::describe`]'s.
    pub fn describe(&self) -> Vec<(String, String)> {
        vec![
            ("target".into(), self.target.as_str().to_string()),
            ("input gradient".into(), self.input_grad.as_str().to_string()),
            ("winograd".into(), on(self.winograd)),
            ("bn-relu fold".into(), on(self.fold_bn)),
            ("sgd group".into(), on(self.sgd_group)),
        ]
    }
}

/// How a convolution's backward computes its input gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum InputGrad {
    /// `dcol = W^T dY`, then col2im: every layer, both backends.
    Col2im,
    /// For stride-1 "same" convolutions of the GPU's programs whose output is no wider than
    /// their input: `d_inp = conv(dY, W')` with `W'` the weight transposed and flipped
    /// (`ops::conv2d`), im2col of `dY` and one forward-shaped GEMM into `d_inp`, no col2im.
    /// Other layers, and every CPU layer, keep col2im. The default: faster on a card (BENCHMARKS.md).
    #[default]
    Conv,
}

impl InputGrad {
    pub fn parse(s: &str) -> crate::Result<InputGrad> {
        match s {
            "col2im" => Ok(InputGrad::Col2im),
            "conv" => Ok(InputGrad::Conv),
            _ => Err(crate::Error::flag("--input-grad", s, "col2im or conv")),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            InputGrad::Col2im => "col2im",
            InputGrad::Conv => "conv",
        }
    }
}

/// A compiled step: buffers, persistent tensors and the ordered ops.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub config: ModelConfig,
    pub batch: usize,
    pub mode: Mode,
    /// The memory choices it was built with.
    pub options: Options,
    /// How it was lowered for its target: the reports print it, the backends read its precision.
    pub lowering: Lowering,
    pub buffers: Vec<Buffer>,
    pub tensors: Vec<TensorSpec>,
    pub steps: Vec<Step>,
    /// One entry per residual block.
    pub slices: Vec<SliceSpec>,
    /// The batch `(C, N, 32, 32)` and its labels, written by the host before the step.
    pub input: BufId,
    pub labels: BufId,
    pub logits: BufId,
    /// `[loss, correct]`, read by the host after the step.
    pub loss: BufId,
    /// Buffers the host reads after the step: alive until the last op.
    pub outputs: Vec<BufId>,
    /// Every parameter's gradient buffer and how it maps onto the parameter (training only).
    pub gradients: Vec<Gradient>,
}

/// A parameter's (possibly sliced) gradient: what its SGD update reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gradient {
    pub param: TensorId,
    pub grad: BufId,
    pub map: GradSel,
}

impl Schedule {
    /// The memory choices and then the lowering, as `(name, value)` pairs for printouts.
    pub fn describe(&self) -> Vec<(String, String)> {
        let mut pairs = self.options.describe(self.lowering.target);
        pairs.extend(self.lowering.describe());
        pairs
    }

    /// Floats of the persistent region.
    pub fn persistent_len(&self) -> usize {
        self.tensors.iter().map(|t| t.offset + t.len()).max().unwrap_or(0)
    }

    pub fn tensor(&self, name: &str) -> Option<TensorId> {
        self.tensors.iter().position(|t| t.name == name)
    }

    /// The slice each block uses this step, from the drawn starts.
    pub fn slice(&self, sel: Sel, starts: &[usize]) -> Slice {
        sel.resolve(&self.slices, starts)
    }

    /// First and last step touching each buffer (inclusive); buffers the host writes start at
    /// step 0 and buffers it reads end at the last step.
    pub fn lifetimes(&self) -> Vec<Lifetime> {
        let mut life: Vec<Option<(usize, usize)>> = vec![None; self.buffers.len()];
        for (i, step) in self.steps.iter().enumerate() {
            let (r, w) = step.op.buffers();
            for b in r.into_iter().chain(w) {
                let l = life[b].get_or_insert((i, i));
                l.1 = i;
            }
        }
        let last = self.steps.len().saturating_sub(1);
        for &b in [self.input, self.labels].iter() {
            if let Some(l) = life[b].as_mut() {
                l.0 = 0;
            }
        }
        // A copy kept between steps is read before the step writes it for the next one.
        for b in self.kept_copies() {
            life[b] = Some((0, last));
        }
        for &b in &self.outputs {
            let l = life[b].get_or_insert((last, last));
            l.1 = last;
        }
        life.iter()
            .zip(&self.buffers)
            .map(|(l, b)| {
                let (first, last) = l.unwrap_or((0, 0));
                Lifetime { bytes: b.bytes(), first, last }
            })
            .collect()
    }

    /// Checks that every op writes before a buffer is read (host inputs and kept copies aside),
    /// that no op reads and writes the same buffer through two names, and that a kept copy is
    /// written once a step, after every read of it; used by tests and debug builds.
    pub fn validate(&self) -> Result<(), String> {
        let mut written = vec![false; self.buffers.len()];
        written[self.input] = true;
        written[self.labels] = true;
        let kept: Vec<BufId> = self.kept_copies().collect();
        let mut rewritten = vec![false; self.buffers.len()];
        for (i, step) in self.steps.iter().enumerate() {
            let (r, w) = step.op.buffers();
            for &b in &r {
                if kept.contains(&b) && rewritten[b] {
                    return Err(format!(
                        "step {i} ({}) reads {} after the update rewrote it",
                        step.name(),
                        self.buffers[b].name
                    ));
                }
                if !written[b] && !kept.contains(&b) {
                    return Err(format!(
                        "step {i} ({}) reads {} before it is written",
                        step.name(),
                        self.buffers[b].name
                    ));
                }
                if w.contains(&b) {
                    return Err(format!("step {i} ({}) reads and writes {}", step.name(), self.buffers[b].name));
                }
            }
            for &b in &w {
                if kept.contains(&b) && std::mem::replace(&mut rewritten[b], true) {
                    return Err(format!("step {i} ({}) writes {} a second time", step.name(), self.buffers[b].name));
                }
                written[b] = true;
            }
        }
        match kept.iter().find(|&&b| !rewritten[b]) {
            Some(&b) => Err(format!("no step writes the kept copy {} for the next step", self.buffers[b].name)),
            None => Ok(()),
        }
    }

    /// The weight copies kept between steps (`ops::GemmWeight::Kept`): written by a step for the
    /// next, so alive through the whole step, and made before a program's first step.
    pub fn kept_copies(&self) -> impl Iterator<Item = BufId> + '_ {
        self.steps.iter().filter_map(|s| s.op.kept_copy())
    }

    /// Multiply-accumulates of one step.
    pub fn macs(&self) -> usize {
        self.steps.iter().map(|s| s.op.macs(&self.slices)).sum()
    }

    /// The current slice map of an SGD update.
    pub fn grad_map(&self, map: GradSel, starts: &[usize]) -> GradMap {
        grad_map(map, &self.slices, starts)
    }
}
