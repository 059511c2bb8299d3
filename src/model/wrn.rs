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
//! blockB.bn1.out    activation  (Cin, N, H, W)    recomputed in backward when Options::recompute
//! blockB.bn1.stats  activation  2*Cin             mean, 1/std: kept for backward
//! blockB.conv1.out  activation  (w, N, Ho, Wo)    sliced; kept for backward (bn2's input)
//! blockB.bn2.out    activation  (w, N, Ho, Wo)    sliced; recomputed like bn1.out
//! blockB.out        activation  (c, N, Ho, Wo)    the block's output h'
//! blockB.*.col      workspace   im2col columns of a chunk of images
//! blockB.d_*        gradient    one per activation above
//! blockB.*.d_weight weight_gradient              sliced for conv1, conv2, bn2
//! ```

use crate::ir::{
    slice, BnRef, BufId, BufKind, Buffer, ConvShape, GradSel, ModelConfig, Role, Sel, SliceSpec, TensorId, TensorSpec,
};
use crate::ops::{
    Add, BnReluApply, BnReluBackward, BnReluEval, BnReluTrain, Conv, ConvBackward, CrossEntropy, Linear,
    LinearBackward, Op, Pool, PoolBackward, Sgd,
};
use crate::rng::Rng;
use crate::schedule::{Gradient, Mode, Options, Phase, Schedule, Step, UpdateAt};

/// Image side of every dataset here (CIFAR; MNIST-like images are padded to it).
pub const IMAGE: usize = 32;

/// Assembles buffers, tensors and steps.
struct Builder {
    sched: Schedule,
    params: Vec<TensorId>,
    /// Pending SGD updates when `UpdateAt::End`.
    updates: Vec<Step>,
}

impl Builder {
    fn buf(&mut self, name: impl Into<String>, kind: BufKind, len: usize, sliced: bool) -> BufId {
        self.sched.buffers.push(Buffer { name: name.into(), kind, len, sliced });
        self.sched.buffers.len() - 1
    }

    fn tensor(&mut self, name: impl Into<String>, shape: &[usize], role: Role) -> TensorId {
        let id = self.sched.tensors.len();
        self.sched.tensors.push(TensorSpec { name: name.into(), shape: shape.to_vec(), role, offset: 0 });
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
            gamma: self.tensor(format!("{name}.weight"), &[c], Role::Param),
            beta: self.tensor(format!("{name}.bias"), &[c], Role::Param),
            mean: self.tensor(format!("{name}.running_mean"), &[c], Role::RunningMean),
            var: self.tensor(format!("{name}.running_var"), &[c], Role::RunningVar),
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

    fn chunk(&self, shape: &ConvShape, in_width: usize) -> usize {
        let o = self.sched.options;
        if o.col_chunk > 0 {
            return o.col_chunk.min(shape.n);
        }
        // The largest chunk whose workspace fits the budget (at least one image).
        let budget = o.col_budget_mib << 20;
        let fits = |c: usize| crate::ops::conv2d::workspace_len(shape, in_width, c) * 4 <= budget;
        // The workspace grows with the chunk: binary search for the last chunk that fits.
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

    /// A convolution's forward op (with its workspace); returns the chunk size used.
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
    ) {
        let in_width = self.width(in_sel);
        let chunk = self.chunk(&shape, in_width);
        let col = self.col(layer, &shape, in_sel, chunk, "col");
        self.step(
            layer,
            Phase::Forward,
            Op::Conv(Conv { out, inp, col, weight, shape, out_sel, in_sel, chunk, accumulate }),
        );
    }

    fn col(&mut self, layer: &str, shape: &ConvShape, in_sel: Sel, chunk: usize, what: &str) -> Option<BufId> {
        let len = crate::ops::conv2d::workspace_len(shape, self.width(in_sel), chunk);
        (len > 0).then(|| {
            self.buf(
                format!("{layer}.{what}"),
                BufKind::Workspace,
                len,
                matches!(in_sel, Sel::Block(b) if self.sliced(b)),
            )
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn conv_backward(
        &mut self,
        layer: &str,
        d_inp: Option<BufId>,
        d_out: BufId,
        inp: BufId,
        weight: TensorId,
        shape: ConvShape,
        out_sel: Sel,
        in_sel: Sel,
        accumulate_d_inp: bool,
    ) {
        let (ow, iw) = (self.width(out_sel), self.width(in_sel));
        let chunk = self.chunk(&shape, iw);
        let col = self.col(layer, &shape, in_sel, chunk, "col_b");
        let sliced = self.is_sliced(out_sel) || self.is_sliced(in_sel);
        let d_weight = self.buf(format!("{layer}.d_weight"), BufKind::WeightGradient, ow * iw * shape.kk(), sliced);
        self.step(
            layer,
            Phase::Backward,
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
                accumulate_d_inp,
            }),
        );
        let map = match (out_sel, in_sel) {
            (Sel::Block(_), _) if self.is_sliced(out_sel) => {
                GradSel::Rows { sel: out_sel, row_len: shape.cin * shape.kk() }
            }
            (_, Sel::Block(_)) if self.is_sliced(in_sel) => {
                GradSel::Cols { sel: in_sel, rows: shape.cout, group: shape.kk() }
            }
            _ => GradSel::Full,
        };
        self.update(weight, d_weight, map);
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
        let d_gamma = self.buf(format!("{layer}.d_weight"), BufKind::WeightGradient, w, sliced);
        let d_beta = self.buf(format!("{layer}.d_bias"), BufKind::WeightGradient, w, sliced);
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
        match sel {
            Sel::Full(c) => c,
            Sel::Block(b) => self.sched.slices[b].width,
        }
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
            momentum.push(self.tensor(format!("{name}.momentum"), &shape, Role::Momentum));
        }
        for step in &mut self.sched.steps {
            if let Op::Sgd(Sgd { param, momentum: m, .. }) = &mut step.op {
                let i = self.params.iter().position(|q| q == param).expect("updated tensor is a parameter");
                *m = momentum[i];
            }
        }
        let mut offset = 0;
        for role in [Role::Param, Role::Momentum, Role::RunningMean, Role::RunningVar] {
            for t in self.sched.tensors.iter_mut().filter(|t| t.role == role) {
                t.offset = offset;
                offset += t.len();
            }
        }
        self.sched.outputs.push(self.sched.loss);
        self.sched.outputs.push(self.sched.logits);
        self.sched
    }
}

/// Compiles a WRN step: forward (and, in training, backward and updates).
pub fn build(config: &ModelConfig, batch: usize, mode: Mode, options: Options) -> Schedule {
    let n = batch;
    let k = config.widen;
    let per_group = config.blocks_per_group();
    let widths = [16 * k, 32 * k, 64 * k];
    let train = mode == Mode::Train;
    let keep = if train { config.keep } else { 1.0 };
    let slices = widths
        .iter()
        .flat_map(|&c| std::iter::repeat_n(SliceSpec { channels: c, width: slice::width(keep, c) }, per_group))
        .collect();
    let mut b = Builder {
        sched: Schedule {
            config: *config,
            batch,
            mode,
            options,
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
        },
        params: vec![],
        updates: vec![],
    };
    let act = BufKind::Activation;
    let grad = BufKind::Gradient;
    let cin0 = config.in_channels;
    b.sched.input = b.buf("input", act, cin0 * n * IMAGE * IMAGE, false);
    b.sched.labels = b.buf("labels", act, n, false);

    // ---- forward ----
    let conv0_w = b.tensor("conv0.weight", &[16, cin0, 3, 3], Role::Param);
    let conv0 = ConvShape { n, cin: cin0, h: IMAGE, w: IMAGE, cout: 16, k: 3, stride: 1, pad: 1 };
    let h0 = b.buf("conv0.out", act, 16 * n * IMAGE * IMAGE, false);
    let input = b.sched.input;
    b.conv("conv0", h0, input, conv0_w, conv0, Sel::Full(16), Sel::Full(cin0), false);

    struct Block {
        name: String,
        h: BufId,
        cin: usize,
        c: usize,
        hw: usize,
        stride: usize,
        bn1: BnRef,
        bn1_out: BufId,
        bn1_stats: Option<BufId>,
        conv1: (TensorId, ConvShape),
        conv1_out: BufId,
        bn2: BnRef,
        bn2_out: BufId,
        bn2_stats: Option<BufId>,
        conv2: (TensorId, ConvShape),
        shortcut: Option<(TensorId, ConvShape)>,
    }
    let mut blocks: Vec<Block> = vec![];
    let (mut h, mut cin, mut hw) = (h0, 16, IMAGE);
    for (g, &c) in widths.iter().enumerate() {
        for j in 0..per_group {
            let i = blocks.len();
            let name = format!("block{i}");
            let stride = if j == 0 && g > 0 { 2 } else { 1 };
            let ho = hw / stride;
            let sel = Sel::Block(i);
            let w = b.width(sel);
            let sliced = b.sliced(i);
            let (m_in, m_out) = (n * hw * hw, n * ho * ho);

            let bn1 = b.bn(&format!("{name}.bn1"), cin);
            let bn1_out = b.buf(format!("{name}.bn1.out"), act, cin * m_in, false);
            let bn1_stats = if train {
                let stats = b.buf(format!("{name}.bn1.stats"), act, 2 * cin, false);
                b.step(
                    format!("{name}.bn1"),
                    Phase::Forward,
                    Op::BnReluTrain(BnReluTrain { out: bn1_out, stats, inp: h, bn: bn1, sel: Sel::Full(cin), m: m_in }),
                );
                Some(stats)
            } else {
                b.step(
                    format!("{name}.bn1"),
                    Phase::Forward,
                    Op::BnReluEval(BnReluEval { out: bn1_out, inp: h, bn: bn1, channels: cin, m: m_in }),
                );
                None
            };
            let conv1_w = b.tensor(format!("{name}.conv1.weight"), &[c, cin, 3, 3], Role::Param);
            let bn2 = b.bn(&format!("{name}.bn2"), c);
            let conv2_w = b.tensor(format!("{name}.conv2.weight"), &[c, c, 3, 3], Role::Param);
            let out = b.buf(format!("{name}.out"), act, c * m_out, false);
            let shortcut = (cin != c || stride != 1).then(|| {
                let wt = b.tensor(format!("{name}.shortcut.weight"), &[c, cin, 1, 1], Role::Param);
                let shape = ConvShape { n, cin, h: hw, w: hw, cout: c, k: 1, stride, pad: 0 };
                b.conv(&format!("{name}.shortcut"), out, bn1_out, wt, shape, Sel::Full(c), Sel::Full(cin), false);
                (wt, shape)
            });
            let conv1 = ConvShape { n, cin, h: hw, w: hw, cout: c, k: 3, stride, pad: 1 };
            let conv1_out = b.buf(format!("{name}.conv1.out"), act, w * m_out, sliced);
            b.conv(&format!("{name}.conv1"), conv1_out, bn1_out, conv1_w, conv1, sel, Sel::Full(cin), false);
            let bn2_out = b.buf(format!("{name}.bn2.out"), act, w * m_out, sliced);
            let bn2_stats = if train {
                let stats = b.buf(format!("{name}.bn2.stats"), act, 2 * w, sliced);
                b.step(
                    format!("{name}.bn2"),
                    Phase::Forward,
                    Op::BnReluTrain(BnReluTrain { out: bn2_out, stats, inp: conv1_out, bn: bn2, sel, m: m_out }),
                );
                Some(stats)
            } else {
                b.step(
                    format!("{name}.bn2"),
                    Phase::Forward,
                    Op::BnReluEval(BnReluEval { out: bn2_out, inp: conv1_out, bn: bn2, channels: c, m: m_out }),
                );
                None
            };
            let conv2 = ConvShape { n, cin: c, h: ho, w: ho, cout: c, k: 3, stride: 1, pad: 1 };
            b.conv(&format!("{name}.conv2"), out, bn2_out, conv2_w, conv2, Sel::Full(c), sel, shortcut.is_some());
            if shortcut.is_none() {
                b.step(format!("{name}.add"), Phase::Forward, Op::Add(Add { out, inp: h }));
            }
            blocks.push(Block {
                name,
                h,
                cin,
                c,
                hw,
                stride,
                bn1,
                bn1_out,
                bn1_stats,
                conv1: (conv1_w, conv1),
                conv1_out,
                bn2,
                bn2_out,
                bn2_stats,
                conv2: (conv2_w, conv2),
                shortcut,
            });
            (h, cin, hw) = (out, c, ho);
        }
    }
    let m_last = n * hw * hw;
    let bn = b.bn("bn", cin);
    let bn_out = b.buf("bn.out", act, cin * m_last, false);
    let bn_stats = if train {
        let stats = b.buf("bn.stats", act, 2 * cin, false);
        b.step(
            "bn",
            Phase::Forward,
            Op::BnReluTrain(BnReluTrain { out: bn_out, stats, inp: h, bn, sel: Sel::Full(cin), m: m_last }),
        );
        Some(stats)
    } else {
        b.step("bn", Phase::Forward, Op::BnReluEval(BnReluEval { out: bn_out, inp: h, bn, channels: cin, m: m_last }));
        None
    };
    let pooled = b.buf("pool.out", act, cin * n, false);
    b.step("pool", Phase::Forward, Op::Pool(Pool { out: pooled, inp: bn_out, c: cin, n, hw: hw * hw }));
    let classes = config.classes;
    let fc_w = b.tensor("fc.weight", &[classes, cin], Role::Param);
    let fc_b = b.tensor("fc.bias", &[classes], Role::Param);
    let logits = b.buf("logits", act, n * classes, false);
    b.step(
        "fc",
        Phase::Forward,
        Op::Linear(Linear { out: logits, inp: pooled, weight: fc_w, bias: fc_b, c: cin, n, o: classes }),
    );
    let loss = b.buf("loss", act, 2, false);
    b.sched.logits = logits;
    b.sched.loss = loss;
    let labels = b.sched.labels;
    if !train {
        b.step(
            "loss",
            Phase::Forward,
            Op::CrossEntropy(CrossEntropy { stats: loss, d_logits: None, logits, labels, n, o: classes }),
        );
        return b.finish();
    }
    let d_logits = b.buf("d_logits", grad, n * classes, false);
    b.step(
        "loss",
        Phase::Forward,
        Op::CrossEntropy(CrossEntropy { stats: loss, d_logits: Some(d_logits), logits, labels, n, o: classes }),
    );

    // ---- backward (and early updates) ----
    let d_pooled = b.buf("pool.d_out", grad, cin * n, false);
    let d_fc_w = b.buf("fc.d_weight", BufKind::WeightGradient, classes * cin, false);
    let d_fc_b = b.buf("fc.d_bias", BufKind::WeightGradient, classes, false);
    b.step(
        "fc",
        Phase::Backward,
        Op::LinearBackward(LinearBackward {
            d_inp: d_pooled,
            d_weight: d_fc_w,
            d_bias: d_fc_b,
            d_out: d_logits,
            inp: pooled,
            weight: fc_w,
            c: cin,
            n,
            o: classes,
        }),
    );
    b.update(fc_w, d_fc_w, GradSel::Full);
    b.update(fc_b, d_fc_b, GradSel::Full);
    let d_bn_out = b.buf("bn.d_out", grad, cin * m_last, false);
    b.step(
        "pool",
        Phase::Backward,
        Op::PoolBackward(PoolBackward { d_inp: d_bn_out, d_out: d_pooled, c: cin, n, hw: hw * hw }),
    );
    let mut d_h = b.buf(format!("{}.d_out", blocks.last().map_or("conv0", |bl| &bl.name)), grad, cin * m_last, false);
    b.bn_backward("bn", d_h, d_bn_out, h, bn_stats.unwrap(), bn, Sel::Full(cin), m_last, false);

    let recompute = options.recompute;
    for (i, bl) in blocks.iter().enumerate().rev() {
        let name = &bl.name;
        let sel = Sel::Block(i);
        let w = b.width(sel);
        let sliced = b.sliced(i);
        let ho = bl.hw / bl.stride;
        let (m_in, m_out) = (n * bl.hw * bl.hw, n * ho * ho);
        let d_out = d_h;
        // conv2: needs bn2's output.
        let t = if recompute {
            let t = b.buf(format!("{name}.bn2.out_re"), act, w * m_out, sliced);
            b.step(
                format!("{name}.bn2"),
                Phase::Backward,
                Op::BnReluApply(BnReluApply {
                    out: t,
                    inp: bl.conv1_out,
                    stats: bl.bn2_stats.unwrap(),
                    bn: bl.bn2,
                    sel,
                    m: m_out,
                }),
            );
            t
        } else {
            bl.bn2_out
        };
        let d_t = b.buf(format!("{name}.bn2.d_out"), grad, w * m_out, sliced);
        b.conv_backward(
            &format!("{name}.conv2"),
            Some(d_t),
            d_out,
            t,
            bl.conv2.0,
            bl.conv2.1,
            Sel::Full(bl.c),
            sel,
            false,
        );
        let d_c1 = b.buf(format!("{name}.conv1.d_out"), grad, w * m_out, sliced);
        b.bn_backward(
            &format!("{name}.bn2"),
            d_c1,
            d_t,
            bl.conv1_out,
            bl.bn2_stats.unwrap(),
            bl.bn2,
            sel,
            m_out,
            false,
        );
        let o = if recompute {
            let o = b.buf(format!("{name}.bn1.out_re"), act, bl.cin * m_in, false);
            b.step(
                format!("{name}.bn1"),
                Phase::Backward,
                Op::BnReluApply(BnReluApply {
                    out: o,
                    inp: bl.h,
                    stats: bl.bn1_stats.unwrap(),
                    bn: bl.bn1,
                    sel: Sel::Full(bl.cin),
                    m: m_in,
                }),
            );
            o
        } else {
            bl.bn1_out
        };
        let d_o = b.buf(format!("{name}.bn1.d_out"), grad, bl.cin * m_in, false);
        b.conv_backward(
            &format!("{name}.conv1"),
            Some(d_o),
            d_c1,
            o,
            bl.conv1.0,
            bl.conv1.1,
            sel,
            Sel::Full(bl.cin),
            false,
        );
        if let Some((wt, shape)) = bl.shortcut {
            b.conv_backward(
                &format!("{name}.shortcut"),
                Some(d_o),
                d_out,
                o,
                wt,
                shape,
                Sel::Full(bl.c),
                Sel::Full(bl.cin),
                true,
            );
        }
        // The block input's gradient: bn1's backward, plus d_out itself for an identity
        // shortcut, either accumulated in place into d_out or in a fresh buffer plus an add.
        let identity = bl.shortcut.is_none();
        let in_place = identity && options.in_place;
        let d_in = if in_place {
            d_out
        } else {
            let d_in_name = if i == 0 { "conv0.d_out".to_string() } else { format!("{}.d_out", blocks[i - 1].name) };
            b.buf(d_in_name, grad, bl.cin * m_in, false)
        };
        let (bn1, stats, full) = (bl.bn1, bl.bn1_stats.unwrap(), Sel::Full(bl.cin));
        b.bn_backward(&format!("{name}.bn1"), d_in, d_o, bl.h, stats, bn1, full, m_in, in_place);
        if identity && !in_place {
            b.step(format!("{name}.add"), Phase::Backward, Op::Add(Add { out: d_in, inp: d_out }));
        }
        d_h = d_in;
    }
    b.conv_backward("conv0", None, d_h, input, conv0_w, conv0, Sel::Full(16), Sel::Full(cin0), false);
    b.finish()
}

/// Fresh parameters (the persistent region, momentum zero, running var one): conv weights
/// Kaiming-normal over fan-out as in the WRN paper's code, BN weight 1 and bias 0, the
/// classifier uniform in +-1/sqrt(fan_in) with zero bias.
pub fn init_persistent(s: &Schedule, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed, crate::rng::stream::INIT);
    let mut p = vec![0.0f32; s.persistent_len()];
    for t in &s.tensors {
        let v = &mut p[t.range()];
        match t.role {
            Role::Momentum | Role::RunningMean => v.fill(0.0),
            Role::RunningVar => v.fill(1.0),
            Role::Param => {
                if t.shape.len() == 1 && t.name.ends_with(".weight") {
                    v.fill(1.0);
                } else if t.shape.len() == 4 {
                    let fan_out = t.shape[0] * t.shape[2] * t.shape[3];
                    let std = (2.0 / fan_out as f32).sqrt();
                    v.iter_mut().for_each(|x| *x = rng.normal() * std);
                } else if t.name == "fc.weight" {
                    let bound = 1.0 / (t.shape[1] as f32).sqrt();
                    v.iter_mut().for_each(|x| *x = (2.0 * rng.uniform() - 1.0) * bound);
                } else {
                    v.fill(0.0);
                }
            }
        }
    }
    p
}
