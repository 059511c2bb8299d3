//! A step as a schedule: the ordered list of ops (forward, backward, update), each naming the
//! arena buffers it reads and writes and the persistent tensors it uses. One list, three uses:
//! the planner reads buffer lifetimes off it, the executor runs it, the profiler times it.
//!
//! Buffers are described here (name, kind, size in floats, whether sized to a slice); where they
//! live is the plan's business. Persistent tensors (parameters, momentum, BN running statistics)
//! live outside the arena, at fixed offsets of one persistent region laid out here.

use crate::model::ModelConfig;
use crate::ops::conv2d::ConvShape;
use crate::ops::sgd::GradMap;
use crate::plan::Lifetime;
use crate::sliceout::Slice;
use serde::Serialize;

/// Index of a buffer in [`Schedule::buffers`].
pub type BufId = usize;
/// Index of a persistent tensor in [`Schedule::tensors`].
pub type TensorId = usize;

/// What a buffer in the arena holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BufKind {
    /// A forward value: kept for backward, or consumed by the next op.
    Activation,
    /// The gradient of an activation, flowing backward.
    Gradient,
    /// The gradient of a parameter, alive until its update.
    WeightGradient,
    /// Scratch: im2col columns.
    Workspace,
}

impl BufKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            BufKind::Activation => "activation",
            BufKind::Gradient => "gradient",
            BufKind::WeightGradient => "weight_gradient",
            BufKind::Workspace => "workspace",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Buffer {
    pub name: String,
    pub kind: BufKind,
    /// Size in f32 elements.
    pub len: usize,
    /// Sized to a SliceOut slice (smaller than the full layer would need).
    pub sliced: bool,
}

/// What a persistent tensor is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Param,
    Momentum,
    RunningMean,
    RunningVar,
}

#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: Role,
    /// Offset in the persistent region, in floats.
    pub offset: usize,
}

impl TensorSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// Which channels an op covers: a whole layer, or the current slice of block `block`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sel {
    Full(usize),
    Block(usize),
}

/// The slice geometry of one residual block: its width is fixed, its start is drawn per step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceSpec {
    pub channels: usize,
    pub width: usize,
}

/// A batch-norm layer's persistent tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnRef {
    pub gamma: TensorId,
    pub beta: TensorId,
    pub mean: TensorId,
    pub var: TensorId,
}

/// How an SGD update maps its (possibly sliced) gradient onto the parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradSel {
    Full,
    Rows { sel: Sel, row_len: usize },
    Cols { sel: Sel, rows: usize, group: usize },
}

/// One op of a schedule. Outputs first, then inputs, then dimensions.
#[derive(Clone, Debug)]
pub enum Op {
    /// `out (+)= conv(inp)`; `col` is the im2col workspace (none for a direct 1x1 conv).
    Conv {
        out: BufId,
        inp: BufId,
        col: Option<BufId>,
        weight: TensorId,
        shape: ConvShape,
        out_sel: Sel,
        in_sel: Sel,
        chunk: usize,
        accumulate: bool,
    },
    ConvBackward {
        d_inp: Option<BufId>,
        d_weight: BufId,
        d_out: BufId,
        inp: BufId,
        col: Option<BufId>,
        weight: TensorId,
        shape: ConvShape,
        out_sel: Sel,
        in_sel: Sel,
        chunk: usize,
        accumulate_d_inp: bool,
    },
    /// Train-mode BN (batch statistics, running-stat update) + ReLU + scale `c / w`.
    BnReluTrain {
        out: BufId,
        stats: BufId,
        inp: BufId,
        bn: BnRef,
        sel: Sel,
        m: usize,
    },
    /// Recomputes a train-mode BN + ReLU output from its input and saved statistics.
    BnReluApply {
        out: BufId,
        inp: BufId,
        stats: BufId,
        bn: BnRef,
        sel: Sel,
        m: usize,
    },
    /// Eval-mode BN (running statistics) + ReLU.
    BnReluEval {
        out: BufId,
        inp: BufId,
        bn: BnRef,
        channels: usize,
        m: usize,
    },
    BnReluBackward {
        d_inp: BufId,
        d_gamma: BufId,
        d_beta: BufId,
        d_out: BufId,
        inp: BufId,
        stats: BufId,
        bn: BnRef,
        sel: Sel,
        m: usize,
        accumulate: bool,
    },
    /// `out += inp` (the identity shortcut).
    Add {
        out: BufId,
        inp: BufId,
    },
    Pool {
        out: BufId,
        inp: BufId,
        c: usize,
        n: usize,
        hw: usize,
    },
    PoolBackward {
        d_inp: BufId,
        d_out: BufId,
        c: usize,
        n: usize,
        hw: usize,
    },
    Linear {
        out: BufId,
        inp: BufId,
        weight: TensorId,
        bias: TensorId,
        c: usize,
        n: usize,
        o: usize,
    },
    LinearBackward {
        d_inp: BufId,
        d_weight: BufId,
        d_bias: BufId,
        d_out: BufId,
        inp: BufId,
        weight: TensorId,
        c: usize,
        n: usize,
        o: usize,
    },
    /// Mean softmax cross-entropy: `stats = [loss, correct]`, and the logits' gradient in training.
    CrossEntropy {
        stats: BufId,
        d_logits: Option<BufId>,
        logits: BufId,
        labels: BufId,
        n: usize,
        o: usize,
    },
    /// SGD with momentum, Nesterov and weight decay, reading only the sliced gradient.
    Sgd {
        param: TensorId,
        momentum: TensorId,
        grad: BufId,
        map: GradSel,
    },
}

impl Op {
    /// (buffers read, buffers written). A buffer both read and written (accumulation) is listed
    /// as written only.
    pub fn buffers(&self) -> (Vec<BufId>, Vec<BufId>) {
        use Op::*;
        let opt = |b: &Option<BufId>| b.iter().copied().collect::<Vec<_>>();
        match self {
            Conv { out, inp, col, .. } => (vec![*inp], [vec![*out], opt(col)].concat()),
            ConvBackward { d_inp, d_weight, d_out, inp, col, .. } => {
                (vec![*d_out, *inp], [opt(d_inp), vec![*d_weight], opt(col)].concat())
            }
            BnReluTrain { out, stats, inp, .. } => (vec![*inp], vec![*out, *stats]),
            BnReluApply { out, inp, stats, .. } => (vec![*inp, *stats], vec![*out]),
            BnReluEval { out, inp, .. } => (vec![*inp], vec![*out]),
            BnReluBackward { d_inp, d_gamma, d_beta, d_out, inp, stats, .. } => {
                (vec![*d_out, *inp, *stats], vec![*d_inp, *d_gamma, *d_beta])
            }
            Add { out, inp } => (vec![*inp], vec![*out]),
            Pool { out, inp, .. } => (vec![*inp], vec![*out]),
            PoolBackward { d_inp, d_out, .. } => (vec![*d_out], vec![*d_inp]),
            Linear { out, inp, .. } => (vec![*inp], vec![*out]),
            LinearBackward { d_inp, d_weight, d_bias, d_out, inp, .. } => {
                (vec![*d_out, *inp], vec![*d_inp, *d_weight, *d_bias])
            }
            CrossEntropy { stats, d_logits, logits, labels, .. } => {
                (vec![*logits, *labels], [vec![*stats], opt(d_logits)].concat())
            }
            Sgd { grad, .. } => (vec![*grad], vec![]),
        }
    }

    /// Multiply-accumulates of the op (0 for the element-wise ones), given the slice widths.
    pub fn macs(&self, slices: &[SliceSpec]) -> usize {
        let width = |s: &Sel| match s {
            Sel::Full(c) => *c,
            Sel::Block(b) => slices[*b].width,
        };
        match self {
            Op::Conv { shape, out_sel, in_sel, .. } => shape.macs(width(out_sel), width(in_sel)),
            Op::ConvBackward { shape, out_sel, in_sel, d_inp, .. } => {
                shape.macs(width(out_sel), width(in_sel)) * if d_inp.is_some() { 2 } else { 1 }
            }
            Op::Linear { c, n, o, .. } => c * n * o,
            Op::LinearBackward { c, n, o, .. } => 2 * c * n * o,
            _ => 0,
        }
    }
}

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
}

impl Mode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Train => "train",
            Mode::Eval => "eval",
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

/// Memory choices of a training schedule; `plan` shows the effect of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Recompute BN + ReLU outputs in backward from the stored input and statistics, instead of
    /// keeping them from forward.
    pub recompute: bool,
    /// Accumulate the identity shortcut's gradient in place, in the gradient buffer coming from
    /// the block's output, instead of a fresh buffer plus an add.
    pub in_place: bool,
    /// Images per im2col chunk; 0 picks the largest chunk whose columns fit `col_budget_mib`.
    pub col_chunk: usize,
    pub col_budget_mib: usize,
    pub update: UpdateAt,
}

impl Default for Options {
    fn default() -> Options {
        Options { recompute: true, in_place: true, col_chunk: 0, col_budget_mib: 32, update: UpdateAt::Early }
    }
}

impl Options {
    /// `(name, value)` pairs for printouts.
    pub fn describe(&self) -> Vec<(String, String)> {
        let on = |b: bool| if b { "on" } else { "off" }.to_string();
        vec![
            ("recompute bn-relu".into(), on(self.recompute)),
            ("in-place residual grad".into(), on(self.in_place)),
            (
                "im2col chunk".into(),
                if self.col_chunk == 0 {
                    format!("auto ({} MiB budget)", self.col_budget_mib)
                } else {
                    format!("{} images", self.col_chunk)
                },
            ),
            ("update".into(), format!("{:?}", self.update).to_lowercase()),
        ]
    }
}

/// A compiled step: buffers, persistent tensors and the ordered ops.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub config: ModelConfig,
    pub batch: usize,
    pub mode: Mode,
    pub options: Options,
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
    /// Floats of the persistent region.
    pub fn persistent_len(&self) -> usize {
        self.tensors.iter().map(|t| t.offset + t.len()).max().unwrap_or(0)
    }

    pub fn tensor(&self, name: &str) -> Option<TensorId> {
        self.tensors.iter().position(|t| t.name == name)
    }

    /// The slice each block uses this step, from the drawn starts.
    pub fn slice(&self, sel: Sel, starts: &[usize]) -> Slice {
        match sel {
            Sel::Full(c) => Slice::full(c),
            Sel::Block(b) => {
                let s = self.slices[b];
                if s.width == s.channels {
                    Slice::full(s.channels)
                } else {
                    Slice::new(starts[b], s.width, s.channels)
                }
            }
        }
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
        for &b in &self.outputs {
            let l = life[b].get_or_insert((last, last));
            l.1 = last;
        }
        life.iter()
            .zip(&self.buffers)
            .map(|(l, b)| {
                let (first, last) = l.unwrap_or((0, 0));
                Lifetime { bytes: b.len * 4, first, last }
            })
            .collect()
    }

    /// Checks that every op writes before a buffer is read (host inputs aside) and that no op
    /// reads and writes the same buffer through two names; used by tests and debug builds.
    pub fn validate(&self) -> Result<(), String> {
        let mut written = vec![false; self.buffers.len()];
        written[self.input] = true;
        written[self.labels] = true;
        for (i, step) in self.steps.iter().enumerate() {
            let (r, w) = step.op.buffers();
            for &b in &r {
                if !written[b] {
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
                written[b] = true;
            }
        }
        Ok(())
    }

    /// Multiply-accumulates of one step.
    pub fn macs(&self) -> usize {
        self.steps.iter().map(|s| s.op.macs(&self.slices)).sum()
    }

    /// The current slice map of an SGD update.
    pub fn grad_map(&self, map: GradSel, starts: &[usize]) -> GradMap {
        match map {
            GradSel::Full => GradMap::Full,
            GradSel::Rows { sel, row_len } => GradMap::Rows { slice: self.slice(sel, starts), row_len },
            GradSel::Cols { sel, rows, group } => GradMap::Cols { slice: self.slice(sel, starts), rows, group },
        }
    }
}
