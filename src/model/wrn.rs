//! WRN-d-k as a schedule. The network (pre-activation Wide ResNet):
//!
//! ```text
//! conv0 3x3 (in -> 16)
//! n blocks per group, groups of width 16k, 32k, 64k, first block of a group strided 1, 2, 2:
//!   o  = relu(bn1(h))
//!   c1 = conv1 3x3 stride s of o            -- SliceOut: only the slice's output channels
//!   t  = relu(bn2(c1)) * c/w                -- the slice's BN parameters and statistics
//!   h' = conv2 3x3 of t + shortcut          -- conv2 reads only the slice's input channels
//!   shortcut = h, or conv 1x1 stride s of o when the shape changes
//! relu(bn(h)) -> global average pool -> fc -> mean softmax cross-entropy
//! ```
//!
//! Buffer table of one block (train mode; w = slice width, c = block width, N*H*W per channel):
//!
//! ```text
//! blockB.bn1.out    activation  (Cin, N, H, W)    recomputed in backward when Options::recompute,
//!                                                 unless every reader applies the BN in its
//!                                                 im2col (`Lowering::fold_bn`)
//! blockB.bn1.stats  activation  2*Cin             mean, 1/std: kept for backward
//! blockB.conv1.out  activation  (w, N, Ho, Wo)    sliced; kept for backward (bn2's input)
//! blockB.bn2.out    activation  (w, N, Ho, Wo)    sliced; recomputed like bn1.out
//! blockB.out        activation  (c, N, Ho, Wo)    the block's output h'
//! blockB.*.col      workspace   im2col columns of a chunk of images (with `--winograd` on
//!                                 the GPU, or the CPU's fp32 3x3 stride-1 layers, at least
//!                                 Winograd's transformed weights and tiles)
//! blockB.d_*        gradient    one per activation above
//! blockB.*.d_weight weight_gradient              sliced for conv1, conv2, bn2
//! blockB.*.weight_bf16 weight_copy               bf16 programs only; sliced for conv1, conv2
//! blockB.*.weight_slice(_b) weight_copy          the GPU's fp32 programs: the sliced conv's
//!                                                 weight slice, made by its forward (backward) op
//! blockB.*.weight_flip   weight_copy  [w_in, w_out*K*K]  `--input-grad conv` (the GPU's
//!                                                 default), in the storage type: the flipped,
//!                                                 transposed weight (slice) of an input gradient
//!                                                 by convolution, made by the backward op (in
//!                                                 place of weight_slice_b, or of reading the
//!                                                 forward's weight_bf16)
//! ```
//!
//! Element types (`Lowering::precision`). An fp32 step stores everything as f32. A bf16 step
//! stores as bf16 what is big and feeds or leaves a GEMM: the batch, every activation, every
//! activation's gradient and the im2col workspaces. It keeps as f32:
//!
//! - parameters, momentum and BN running statistics (the persistent region, master weights);
//! - the weight gradients: the GEMM that makes one accumulates in f32 and SGD reads it in f32,
//!   so storing the f32 result costs no conversion and no second rounding of an update that is
//!   already small next to its weight; with updates right after each gradient only one or two
//!   of them are alive at a time, so bf16 would save under 1% of the arena;
//! - BN's batch statistics (`*.stats`: mean and 1/std, reduced in f32, tiny);
//! - the head after the pool (`pool.out`, `logits`, `loss`, `d_logits`, `pool.d_out`): one value
//!   per channel and image, so its products are tiny, and the loss, its softmax and the logits
//!   the host reads stay f32;
//! - the labels (class indices, exact in f32; bf16 holds integers exactly only up to 256).
//!
//! How each convolution runs, and so its workspace and the weight copies above, is `lower`'s
//! choice: the model states the convolution and adds the buffers `lower` asks for.

use crate::ir::{
    slice, BnRef, BufId, BufKind, Buffer, ConvShape, Dtype, GradSel, Init, ModelConfig, Role, Sel, SliceSpec, TensorId,
    TensorSpec,
};
use crate::lower::{self, ConvSite, WeightCopy};
use crate::ops::{
    Add, BnPrologue, BnReluApply, BnReluBackward, BnReluEval, BnReluTrain, Conv, ConvAlgo, ConvBackward, CrossEntropy,
    Linear, LinearBackward, Op, Pool, PoolBackward, Sgd, SgdGroup,
};
use crate::rng::Rng;
use crate::schedule::{Gradient, Lowering, Mode, Options, Phase, Schedule, Step, UpdateAt};

/// Image side of every dataset here (CIFAR; MNIST-like images are padded to it).
pub const IMAGE: usize = 32;

/// A convolution's weight (the f32 parameter), its shape, and how its forward op runs (whose
/// weight copy, in a bf16 step, the backward op reads).
#[derive(Clone, Copy)]
struct ConvWeight {
    tensor: TensorId,
    shape: ConvShape,
    forward: ConvAlgo,
}

/// The forward values of one residual block that its backward needs.
struct Block {
    name: String,
    /// The block's input `h`, its output, and its geometry.
    h: BufId,
    out: BufId,
    cin: usize,
    c: usize,
    hw: usize,
    stride: usize,
    bn1: BnRef,
    bn1_out: BufId,
    bn1_stats: Option<BufId>,
    conv1: ConvWeight,
    conv1_out: BufId,
    bn2: BnRef,
    bn2_out: BufId,
    bn2_stats: Option<BufId>,
    conv2: ConvWeight,
    shortcut: Option<ConvWeight>,
}

/// The classifier head's forward values: final BN + ReLU, pool, fc, loss.
struct Head {
    bn: BnRef,
    bn_stats: Option<BufId>,
    pooled: BufId,
    fc_w: TensorId,
    fc_b: TensorId,
    d_logits: Option<BufId>,
}

/// Compiles a WRN step: forward (and, in training, backward and updates), with the memory
/// choices `options`, each convolution run as `lowering` has `lower` choose.
pub fn build(config: &ModelConfig, batch: usize, mode: Mode, options: Options, lowering: Lowering) -> Schedule {
    let k = config.widen;
    let per_group = config.blocks_per_group();
    let widths = [16 * k, 32 * k, 64 * k];
    let keep = if mode == Mode::Train { config.keep } else { 1.0 };
    let slices = widths
        .iter()
        .flat_map(|&c| std::iter::repeat_n(SliceSpec { channels: c, width: slice::width(keep, c) }, per_group))
        .collect();
    let mut b = Builder::new(config, batch, mode, options, lowering, slices);

    // ---- forward ----
    let (conv0, mut h) = b.stem();
    let (mut cin, mut hw) = (16, IMAGE);
    let mut blocks: Vec<Block> = vec![];
    for (g, &c) in widths.iter().enumerate() {
        for j in 0..per_group {
            let stride = if j == 0 && g > 0 { 2 } else { 1 };
            let block = b.block_forward(blocks.len(), h, cin, c, hw, stride);
            (h, cin, hw) = (block.out, c, hw / stride);
            blocks.push(block);
        }
    }
    let head = b.head_forward(h, cin, hw);
    if mode != Mode::Train {
        return b.finish();
    }

    // ---- backward (and early updates) ----
    let last = blocks.last().map_or("conv0", |bl| &bl.name).to_string();
    let mut d_h = b.head_backward(&head, h, cin, hw, &last);
    for (i, bl) in blocks.iter().enumerate().rev() {
        let input_name = if i == 0 { "conv0" } else { &blocks[i - 1].name };
        d_h = b.block_backward(i, bl, d_h, input_name);
    }
    let input = b.sched.input;
    b.conv_backward("conv0", None, d_h, input, None, conv0, Sel::Full(16), Sel::Full(config.in_channels), false);
    b.finish()
}

/// Assembles buffers, tensors and steps.
struct Builder {
    sched: Schedule,
    params: Vec<TensorId>,
    /// Pending SGD updates when `UpdateAt::End`.
    updates: Vec<Step>,
}

/// The network, layer by layer, in the order the schedule runs it.
impl Builder {
    fn new(
        config: &ModelConfig,
        batch: usize,
        mode: Mode,
        options: Options,
        lowering: Lowering,
        slices: Vec<SliceSpec>,
    ) -> Builder {
        let sched = Schedule {
            config: *config,
            batch,
            mode,
            options,
            lowering,
            buffers: vec![],
            tensors: vec![],
            steps: vec![],
            slices,
            input: 0,
            labels: 0,
            logits: 0,
            loss: 0,
            outputs: vec![],
            gradients: vec![],
        };
        let mut b = Builder { sched, params: vec![], updates: vec![] };
        let (cin0, x) = (config.in_channels, b.storage());
        b.sched.input = b.buf("input", BufKind::Activation, x, cin0 * batch * IMAGE * IMAGE, false);
        b.sched.labels = b.buf("labels", BufKind::Activation, Dtype::F32, batch, false);
        b
    }

    /// Whether BN uses batch statistics (training and calibration) rather than running ones.
    fn batch_stats(&self) -> bool {
        self.sched.mode != Mode::Eval
    }

    /// `conv0`: the input's channels to 16. Returns its weight and output.
    fn stem(&mut self) -> (ConvWeight, BufId) {
        let (n, cin0) = (self.sched.batch, self.sched.config.in_channels);
        let w = self.tensor("conv0.weight", &[16, cin0, 3, 3], Role::Param, Init::KaimingFanOut);
        let shape = ConvShape { n, cin: cin0, h: IMAGE, w: IMAGE, cout: 16, k: 3, stride: 1, pad: 1 };
        let out = self.buf("conv0.out", BufKind::Activation, self.storage(), 16 * n * IMAGE * IMAGE, false);
        let input = self.sched.input;
        let conv0 = self.conv("conv0", out, input, w, shape, Sel::Full(16), Sel::Full(cin0), false);
        (conv0, out)
    }

    /// BN + ReLU forward of `inp` into `out` over the channels `sel` covers (`c` in eval,
    /// where the full network runs); the statistics buffer in training.
    #[allow(clippy::too_many_arguments)]
    fn bn_forward(
        &mut self,
        layer: &str,
        out: BufId,
        inp: BufId,
        bn: BnRef,
        sel: Sel,
        c: usize,
        m: usize,
    ) -> Option<BufId> {
        if !self.batch_stats() {
            self.step(layer, Phase::Forward, Op::BnReluEval(BnReluEval { out, inp, bn, channels: c, m }));
            return None;
        }
        let sliced = self.is_sliced(sel);
        let stats = self.buf(format!("{layer}.stats"), BufKind::Activation, Dtype::F32, 2 * self.width(sel), sliced);
        self.step(layer, Phase::Forward, Op::BnReluTrain(BnReluTrain { out, stats, inp, bn, sel, m }));
        Some(stats)
    }

    /// Residual block `i`: `h` (`cin` channels, `hw` square) to `c` channels at `hw / stride`.
    fn block_forward(&mut self, i: usize, h: BufId, cin: usize, c: usize, hw: usize, stride: usize) -> Block {
        let (n, act, x) = (self.sched.batch, BufKind::Activation, self.storage());
        let name = format!("block{i}");
        let ho = hw / stride;
        let sel = Sel::Block(i);
        let (w, sliced) = (self.width(sel), self.sliced(i));
        let (m_in, m_out) = (n * hw * hw, n * ho * ho);

        let bn1 = self.bn(&format!("{name}.bn1"), cin);
        let bn1_out = self.buf(format!("{name}.bn1.out"), act, x, cin * m_in, false);
        let bn1_stats = self.bn_forward(&format!("{name}.bn1"), bn1_out, h, bn1, Sel::Full(cin), cin, m_in);
        let conv1_w = self.tensor(format!("{name}.conv1.weight"), &[c, cin, 3, 3], Role::Param, Init::KaimingFanOut);
        let bn2 = self.bn(&format!("{name}.bn2"), c);
        let conv2_w = self.tensor(format!("{name}.conv2.weight"), &[c, c, 3, 3], Role::Param, Init::KaimingFanOut);
        let out = self.buf(format!("{name}.out"), act, x, c * m_out, false);
        let shortcut = (cin != c || stride != 1).then(|| {
            let wt = self.tensor(format!("{name}.shortcut.weight"), &[c, cin, 1, 1], Role::Param, Init::KaimingFanOut);
            let shape = ConvShape { n, cin, h: hw, w: hw, cout: c, k: 1, stride, pad: 0 };
            self.conv(&format!("{name}.shortcut"), out, bn1_out, wt, shape, Sel::Full(c), Sel::Full(cin), false)
        });
        let conv1_shape = ConvShape { n, cin, h: hw, w: hw, cout: c, k: 3, stride, pad: 1 };
        let conv1_out = self.buf(format!("{name}.conv1.out"), act, x, w * m_out, sliced);
        let conv1 =
            self.conv(&format!("{name}.conv1"), conv1_out, bn1_out, conv1_w, conv1_shape, sel, Sel::Full(cin), false);
        let bn2_out = self.buf(format!("{name}.bn2.out"), act, x, w * m_out, sliced);
        let bn2_stats = self.bn_forward(&format!("{name}.bn2"), bn2_out, conv1_out, bn2, sel, c, m_out);
        let conv2_shape = ConvShape { n, cin: c, h: ho, w: ho, cout: c, k: 3, stride: 1, pad: 1 };
        let conv2 = self.conv(
            &format!("{name}.conv2"),
            out,
            bn2_out,
            conv2_w,
            conv2_shape,
            Sel::Full(c),
            sel,
            shortcut.is_some(),
        );
        if shortcut.is_none() {
            self.step(format!("{name}.add"), Phase::Forward, Op::Add(Add { out, inp: h }));
        }
        Block {
            name,
            h,
            out,
            cin,
            c,
            hw,
            stride,
            bn1,
            bn1_out,
            bn1_stats,
            conv1,
            conv1_out,
            bn2,
            bn2_out,
            bn2_stats,
            conv2,
            shortcut,
        }
    }

    /// Final BN + ReLU of `h` (`cin` channels, `hw` square), global average pool, classifier and
    /// loss (with the logits' gradient in training).
    fn head_forward(&mut self, h: BufId, cin: usize, hw: usize) -> Head {
        let (n, act, classes) = (self.sched.batch, BufKind::Activation, self.sched.config.classes);
        let m_last = n * hw * hw;
        let bn = self.bn("bn", cin);
        let bn_out = self.buf("bn.out", act, self.storage(), cin * m_last, false);
        let bn_stats = self.bn_forward("bn", bn_out, h, bn, Sel::Full(cin), cin, m_last);
        // From here on f32 (see the module doc).
        let pooled = self.buf("pool.out", act, Dtype::F32, cin * n, false);
        self.step("pool", Phase::Forward, Op::Pool(Pool { out: pooled, inp: bn_out, c: cin, n, hw: hw * hw }));
        let fc_w = self.tensor("fc.weight", &[classes, cin], Role::Param, Init::UniformFanIn);
        let fc_b = self.tensor("fc.bias", &[classes], Role::Param, Init::Zeros);
        let logits = self.buf("logits", act, Dtype::F32, n * classes, false);
        let fc = Linear { out: logits, inp: pooled, weight: fc_w, bias: fc_b, c: cin, n, o: classes };
        self.step("fc", Phase::Forward, Op::Linear(fc));
        let loss = self.buf("loss", act, Dtype::F32, 2, false);
        (self.sched.logits, self.sched.loss) = (logits, loss);
        let labels = self.sched.labels;
        let train = self.sched.mode == Mode::Train;
        let d_logits = train.then(|| self.buf("d_logits", BufKind::Gradient, Dtype::F32, n * classes, false));
        let ce = CrossEntropy { stats: loss, d_logits, logits, labels, n, o: classes };
        self.step("loss", Phase::Forward, Op::CrossEntropy(ce));
        Head { bn, bn_stats, pooled, fc_w, fc_b, d_logits }
    }

    /// Backward through the head down to the last block's output gradient (named after
    /// `last`, the last block), which it returns.
    fn head_backward(&mut self, head: &Head, h: BufId, cin: usize, hw: usize, last: &str) -> BufId {
        let (n, grad, classes) = (self.sched.batch, BufKind::Gradient, self.sched.config.classes);
        let m_last = n * hw * hw;
        let d_pooled = self.buf("pool.d_out", grad, Dtype::F32, cin * n, false);
        let d_fc_w = self.buf("fc.d_weight", BufKind::WeightGradient, Dtype::F32, classes * cin, false);
        let d_fc_b = self.buf("fc.d_bias", BufKind::WeightGradient, Dtype::F32, classes, false);
        let d_logits = head.d_logits.expect("a training head has the logits' gradient");
        let fc = LinearBackward {
            d_inp: d_pooled,
            d_weight: d_fc_w,
            d_bias: d_fc_b,
            d_out: d_logits,
            inp: head.pooled,
            weight: head.fc_w,
            c: cin,
            n,
            o: classes,
        };
        self.step("fc", Phase::Backward, Op::LinearBackward(fc));
        self.update(head.fc_w, d_fc_w, GradSel::Full);
        self.update(head.fc_b, d_fc_b, GradSel::Full);
        let d_bn_out = self.buf("bn.d_out", grad, self.storage(), cin * m_last, false);
        let pool = PoolBackward { d_inp: d_bn_out, d_out: d_pooled, c: cin, n, hw: hw * hw };
        self.step("pool", Phase::Backward, Op::PoolBackward(pool));
        let d_h = self.buf(format!("{last}.d_out"), grad, self.storage(), cin * m_last, false);
        let stats = head.bn_stats.expect("training BN keeps its statistics");
        self.bn_backward("bn", d_h, d_bn_out, h, stats, head.bn, Sel::Full(cin), m_last, false);
        d_h
    }

    /// Backward through residual block `i` from its output's gradient `d_out`; returns its
    /// input's gradient (named after `input_name`, the layer that produced the input).
    fn block_backward(&mut self, i: usize, bl: &Block, d_out: BufId, input_name: &str) -> BufId {
        let (n, act, grad, x) = (self.sched.batch, BufKind::Activation, BufKind::Gradient, self.storage());
        let name = &bl.name;
        let sel = Sel::Block(i);
        let (w, sliced) = (self.width(sel), self.sliced(i));
        let ho = bl.hw / bl.stride;
        let (m_in, m_out) = (n * bl.hw * bl.hw, n * ho * ho);
        let recompute = self.sched.options.recompute;
        let (bn1_stats, bn2_stats) = (bl.bn1_stats.expect("bn1 statistics"), bl.bn2_stats.expect("bn2 statistics"));
        // conv2: needs bn2's output, kept, recomputed, or applied by its im2col (folded).
        let full_out = Sel::Full(bl.c);
        let fold_t = recompute && self.folds(bl.conv2, full_out, sel);
        let (t, prologue) = if fold_t {
            (bl.conv1_out, Some(BnPrologue { stats: bn2_stats, bn: bl.bn2 }))
        } else if recompute {
            let t = self.buf(format!("{name}.bn2.out_re"), act, x, w * m_out, sliced);
            let re = BnReluApply { out: t, inp: bl.conv1_out, stats: bn2_stats, bn: bl.bn2, sel, m: m_out };
            self.step(format!("{name}.bn2"), Phase::Backward, Op::BnReluApply(re));
            (t, None)
        } else {
            (bl.bn2_out, None)
        };
        let d_t = self.buf(format!("{name}.bn2.d_out"), grad, x, w * m_out, sliced);
        self.conv_backward(&format!("{name}.conv2"), Some(d_t), d_out, t, prologue, bl.conv2, full_out, sel, false);
        let d_c1 = self.buf(format!("{name}.conv1.d_out"), grad, x, w * m_out, sliced);
        self.bn_backward(&format!("{name}.bn2"), d_c1, d_t, bl.conv1_out, bn2_stats, bl.bn2, sel, m_out, false);
        // conv1 (and the projection shortcut): need bn1's output.
        // Folded only where every reader folds: otherwise the output is written anyway.
        let full_in = Sel::Full(bl.cin);
        let fold_o = recompute
            && self.folds(bl.conv1, sel, full_in)
            && bl.shortcut.is_none_or(|s| self.folds(s, full_out, full_in));
        let (o, prologue) = if fold_o {
            (bl.h, Some(BnPrologue { stats: bn1_stats, bn: bl.bn1 }))
        } else if recompute {
            let o = self.buf(format!("{name}.bn1.out_re"), act, x, bl.cin * m_in, false);
            let re = BnReluApply { out: o, inp: bl.h, stats: bn1_stats, bn: bl.bn1, sel: full_in, m: m_in };
            self.step(format!("{name}.bn1"), Phase::Backward, Op::BnReluApply(re));
            (o, None)
        } else {
            (bl.bn1_out, None)
        };
        let d_o = self.buf(format!("{name}.bn1.d_out"), grad, x, bl.cin * m_in, false);
        self.conv_backward(&format!("{name}.conv1"), Some(d_o), d_c1, o, prologue, bl.conv1, sel, full_in, false);
        if let Some(shortcut) = bl.shortcut {
            let layer = format!("{name}.shortcut");
            self.conv_backward(&layer, Some(d_o), d_out, o, prologue, shortcut, full_out, full_in, true);
        }
        // The block input's gradient: bn1's backward, plus d_out itself for an identity
        // shortcut, either accumulated in place into d_out or in a fresh buffer plus an add.
        let identity = bl.shortcut.is_none();
        let in_place = identity && self.sched.options.in_place;
        let d_in =
            if in_place { d_out } else { self.buf(format!("{input_name}.d_out"), grad, x, bl.cin * m_in, false) };
        self.bn_backward(&format!("{name}.bn1"), d_in, d_o, bl.h, bn1_stats, bl.bn1, full_in, m_in, in_place);
        if identity && !in_place {
            self.step(format!("{name}.add"), Phase::Backward, Op::Add(Add { out: d_in, inp: d_out }));
        }
        d_in
    }
}

/// The primitives the layers are built from: buffers, tensors, steps, convolutions, BN
/// backward, SGD updates, and the persistent region's layout.
impl Builder {
    fn buf(&mut self, name: impl Into<String>, kind: BufKind, dtype: Dtype, len: usize, sliced: bool) -> BufId {
        self.sched.buffers.push(Buffer { name: name.into(), kind, dtype, len, sliced });
        self.sched.buffers.len() - 1
    }

    /// The element type of activations, their gradients and workspaces.
    fn storage(&self) -> Dtype {
        self.sched.lowering.precision.storage()
    }

    fn tensor(&mut self, name: impl Into<String>, shape: &[usize], role: Role, init: Init) -> TensorId {
        let id = self.sched.tensors.len();
        self.sched.tensors.push(TensorSpec { name: name.into(), shape: shape.to_vec(), role, init, offset: 0 });
        if role == Role::Param {
            self.params.push(id);
        }
        id
    }

    fn step(&mut self, layer: impl Into<String>, phase: Phase, op: Op) {
        self.sched.steps.push(Step { layer: layer.into(), phase, op });
    }

    fn bn(&mut self, name: &str, c: usize) -> BnRef {
        BnRef {
            gamma: self.tensor(format!("{name}.weight"), &[c], Role::Param, Init::Ones),
            beta: self.tensor(format!("{name}.bias"), &[c], Role::Param, Init::Zeros),
            mean: self.tensor(format!("{name}.running_mean"), &[c], Role::RunningMean, Init::Zeros),
            var: self.tensor(format!("{name}.running_var"), &[c], Role::RunningVar, Init::Ones),
        }
    }

    /// The SGD update of `param` from `grad`, now or at the end of backward.
    fn update(&mut self, param: TensorId, grad: BufId, map: GradSel) {
        self.sched.gradients.push(Gradient { param, grad, map });
        let layer = self.sched.tensors[param].name.clone();
        // Momentum tensors are created in `finish`, one per parameter in order; the id is
        // patched there.
        let step = Step { layer, phase: Phase::Update, op: Op::Sgd(Sgd { param, momentum: usize::MAX, grad, map }) };
        match self.sched.options.update {
            UpdateAt::Early => self.sched.steps.push(step),
            UpdateAt::End => self.updates.push(step),
            UpdateAt::None => self.sched.outputs.push(grad),
        }
    }

    /// A convolution's forward op, with its workspace and any weight copy its GEMMs read, as
    /// the lowering (`lower`) chooses. Returns the weight and the forward's algorithm.
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        layer: &str,
        out: BufId,
        inp: BufId,
        weight: TensorId,
        shape: ConvShape,
        out_sel: Sel,
        in_sel: Sel,
        accumulate: bool,
    ) -> ConvWeight {
        let site = self.site(shape, out_sel, in_sel);
        let (o, l) = (self.sched.options, self.sched.lowering);
        let chunk = lower::chunk(&o, &l, &shape, site.in_width);
        let col = self.col(layer, &site, in_sel, chunk, "col");
        let algo = lower::conv_forward(&l, &site, &mut |c| self.weight_copy(layer, c, site.sliced));
        let op = Conv { out, inp, col, weight, shape, out_sel, in_sel, chunk, accumulate, algo };
        self.step(layer, Phase::Forward, Op::Conv(op));
        ConvWeight { tensor: weight, shape, forward: algo }
    }

    /// A convolution of this step: its shape, its slices' widths, and whether a grouped update
    /// (`group_updates`) writes its weight.
    fn site(&self, shape: ConvShape, out_sel: Sel, in_sel: Sel) -> ConvSite {
        let (out_width, in_width) = (self.width(out_sel), self.width(in_sel));
        let s = &self.sched;
        let grouped_update = s.lowering.sgd_group && s.mode == Mode::Train && s.options.update != UpdateAt::None;
        let sliced = self.is_sliced(out_sel) || self.is_sliced(in_sel);
        ConvSite { shape, out_width, in_width, sliced, grouped_update }
    }

    /// A weight copy the lowering asks for, named after the layer.
    fn weight_copy(&mut self, layer: &str, c: WeightCopy, sliced: bool) -> BufId {
        self.buf(format!("{layer}.{}", c.what), BufKind::WeightCopy, c.dtype, c.len, sliced)
    }

    /// The workspace buffer of a convolution (none for a direct 1x1 conv).
    fn col(&mut self, layer: &str, site: &ConvSite, in_sel: Sel, chunk: usize, what: &str) -> Option<BufId> {
        let len = lower::workspace_len(&self.sched.lowering, &site.shape, site.in_width, chunk);
        let sliced = self.is_sliced(in_sel);
        (len > 0).then(|| self.buf(format!("{layer}.{what}"), BufKind::Workspace, self.storage(), len, sliced))
    }

    /// Whether the backward op of `w`'s convolution (its slices `out_sel`, `in_sel`) folds the
    /// BN + ReLU of its input into its im2col, as `lower` chooses.
    fn folds(&self, w: ConvWeight, out_sel: Sel, in_sel: Sel) -> bool {
        lower::fold_bn_relu(&self.sched.lowering, &self.site(w.shape, out_sel, in_sel), w.forward)
    }

    /// A convolution's backward op; with `prologue`, `inp` is the input of the BN + ReLU whose
    /// output the convolution read, applied by its im2col.
    #[allow(clippy::too_many_arguments)]
    fn conv_backward(
        &mut self,
        layer: &str,
        d_inp: Option<BufId>,
        d_out: BufId,
        inp: BufId,
        prologue: Option<BnPrologue>,
        w: ConvWeight,
        out_sel: Sel,
        in_sel: Sel,
        accumulate_d_inp: bool,
    ) {
        let (site, shape) = (self.site(w.shape, out_sel, in_sel), w.shape);
        let (o, l) = (self.sched.options, self.sched.lowering);
        let chunk = lower::chunk(&o, &l, &shape, site.in_width);
        let col = self.col(layer, &site, in_sel, chunk, "col_b");
        let len = site.out_width * site.in_width * shape.kk();
        let d_weight = self.buf(format!("{layer}.d_weight"), BufKind::WeightGradient, Dtype::F32, len, site.sliced);
        let algo = lower::conv_backward(&l, &site, w.forward, d_inp.is_some(), &mut |c| {
            self.weight_copy(layer, c, site.sliced)
        });
        let op = ConvBackward {
            d_inp,
            d_weight,
            d_out,
            inp,
            col,
            weight: w.tensor,
            shape,
            out_sel,
            in_sel,
            chunk,
            accumulate_d_inp,
            algo,
            prologue,
        };
        self.step(layer, Phase::Backward, Op::ConvBackward(op));
        let map = match (out_sel, in_sel) {
            (Sel::Block(_), _) if self.is_sliced(out_sel) => {
                GradSel::Rows { sel: out_sel, row_len: shape.cin * shape.kk() }
            }
            (_, Sel::Block(_)) if self.is_sliced(in_sel) => {
                GradSel::Cols { sel: in_sel, rows: shape.cout, group: shape.kk() }
            }
            _ => GradSel::Full,
        };
        self.update(w.tensor, d_weight, map);
    }

    #[allow(clippy::too_many_arguments)]
    fn bn_backward(
        &mut self,
        layer: &str,
        d_inp: BufId,
        d_out: BufId,
        inp: BufId,
        stats: BufId,
        bn: BnRef,
        sel: Sel,
        m: usize,
        accumulate: bool,
    ) {
        let w = self.width(sel);
        let sliced = self.is_sliced(sel);
        let d_gamma = self.buf(format!("{layer}.d_weight"), BufKind::WeightGradient, Dtype::F32, w, sliced);
        let d_beta = self.buf(format!("{layer}.d_bias"), BufKind::WeightGradient, Dtype::F32, w, sliced);
        self.step(
            layer,
            Phase::Backward,
            Op::BnReluBackward(BnReluBackward { d_inp, d_gamma, d_beta, d_out, inp, stats, bn, sel, m, accumulate }),
        );
        let map = if sliced { GradSel::Rows { sel, row_len: 1 } } else { GradSel::Full };
        self.update(bn.gamma, d_gamma, map);
        self.update(bn.beta, d_beta, map);
    }

    fn width(&self, sel: Sel) -> usize {
        sel.width(&self.sched.slices)
    }

    fn sliced(&self, block: usize) -> bool {
        let s = self.sched.slices[block];
        s.width < s.channels
    }

    fn is_sliced(&self, sel: Sel) -> bool {
        matches!(sel, Sel::Block(b) if self.sliced(b))
    }

    /// Lays out the persistent region: parameters, then their momentum, then BN statistics.
    fn finish(mut self) -> Schedule {
        self.sched.steps.append(&mut self.updates);
        let mut momentum = Vec::with_capacity(self.params.len());
        for &p in &self.params.clone() {
            let (name, shape) = (self.sched.tensors[p].name.clone(), self.sched.tensors[p].shape.clone());
            momentum.push(self.tensor(format!("{name}.momentum"), &shape, Role::Momentum, Init::Zeros));
        }
        for step in &mut self.sched.steps {
            if let Op::Sgd(Sgd { param, momentum: m, .. }) = &mut step.op {
                let i = self.params.iter().position(|q| q == param).expect("updated tensor is a parameter");
                *m = momentum[i];
            }
        }
        if self.sched.lowering.sgd_group {
            let kept = self.sched.steps.iter().filter_map(|s| match &s.op {
                Op::Conv(c) => c.algo.kept_copy().map(|b| (c.weight, b)),
                _ => None,
            });
            let kept: Vec<(TensorId, BufId)> = kept.collect();
            group_updates(&mut self.sched.steps, &kept);
        }
        super::params::lay_out(&mut self.sched.tensors);
        self.sched.outputs.push(self.sched.loss);
        self.sched.outputs.push(self.sched.logits);
        self.sched
    }
}

/// Each run of adjacent updates becomes one `SgdGroup` step (`Lowering::sgd_group`), named
/// after its first parameter (`block3.conv2.weight+2`), the groups numbered into one table in
/// step order; it writes the copies of `kept` (weight, copy) of its weights. A lone update
/// stays an `Sgd`, unless it has a copy to write.
fn group_updates(steps: &mut Vec<Step>, kept: &[(TensorId, BufId)]) {
    let mut grouped = Vec::with_capacity(steps.len());
    let mut entries = 0;
    let copy = |u: &Sgd| kept.iter().find(|(w, _)| *w == u.param).map(|&(_, b)| b);
    for run in steps.chunk_by(|a, b| matches!((&a.op, &b.op), (Op::Sgd(_), Op::Sgd(_)))) {
        let updates: Vec<Sgd> = run.iter().flat_map(|s| s.op.sgd_updates().iter().copied()).collect();
        let copies: Vec<Option<BufId>> = updates.iter().map(copy).collect();
        if updates.is_empty() || (run.len() < 2 && copies.iter().all(Option::is_none)) {
            grouped.extend_from_slice(run);
            continue;
        }
        let layer = match run.len() {
            1 => run[0].layer.clone(),
            n => format!("{}+{}", run[0].layer, n - 1),
        };
        let op = Op::SgdGroup(SgdGroup { updates, copies, first: entries });
        grouped.push(Step { layer, phase: Phase::Update, op });
        entries += run.len();
    }
    *steps = grouped;
}

/// Fresh parameters (the persistent region, momentum zero, running var one): conv weights
/// Kaiming-normal over fan-out as in the WRN paper's code, BN weight 1 and bias 0, the
/// classifier uniform in +-1/sqrt(fan_in) with zero bias.
pub fn init_persistent(s: &Schedule, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed, crate::rng::stream::INIT);
    let mut p = vec![0.0f32; s.persistent_len()];
    for t in &s.tensors {
        let v = &mut p[t.range()];
        match t.init {
            Init::Zeros => v.fill(0.0),
            Init::Ones => v.fill(1.0),
            Init::KaimingFanOut => {
                let fan_out = t.shape[0] * t.shape[2] * t.shape[3];
                let std = (2.0 / fan_out as f32).sqrt();
                v.iter_mut().for_each(|x| *x = rng.normal() * std);
            }
            Init::UniformFanIn => {
                let bound = 1.0 / (t.shape[1] as f32).sqrt();
                v.iter_mut().for_each(|x| *x = (2.0 * rng.uniform() - 1.0) * bound);
            }
        }
    }
    p
}
