//! The CPU backend: rayon-parallel ops over `Vec<f32>` regions. It is the reference.

use super::{Backend, SplitId, StepCtx};
use crate::data::loader::{self, Crop, Normalization};
use crate::data::Split;
use crate::error::Result;
use crate::exec::Program;
use crate::ops::{batchnorm, conv2d, linear, loss, pool, sgd};
use crate::schedule::{BufId, Op, TensorId};

#[derive(Default)]
pub struct CpuBackend {
    /// `Im2col` for the reference other backends are checked against.
    pub conv_algo: conv2d::Algo,
    arena: Vec<f32>,
    persistent: Vec<f32>,
    /// Resident splits (train, test) with their channel count and normalisation.
    splits: [Option<(Split, usize, Normalization)>; 2],
}

impl CpuBackend {
    pub fn new() -> CpuBackend {
        CpuBackend::default()
    }

    /// The plainest CPU backend (im2col everywhere): the reference for `selftest`.
    pub fn reference() -> CpuBackend {
        CpuBackend { conv_algo: conv2d::Algo::Im2col, ..CpuBackend::default() }
    }
}

/// Raw views into the two regions for the duration of one op.
///
/// An op reads some buffers and writes others, all in the same arena allocation; Rust cannot see
/// that they are disjoint, the plan can: buffers live at the same step never overlap (checked by
/// `plan::check` when a `Program` is built), an op lists a buffer it accumulates into as written
/// only (`Schedule::validate`), and persistent tensors are laid end to end. So handing out one
/// `&mut` per written buffer and `&` per read buffer, all live at this step, never aliases.
struct Regions {
    arena: *mut f32,
    arena_len: usize,
    persistent: *mut f32,
    persistent_len: usize,
}

impl Regions {
    fn buf<'a>(&self, p: &Program, b: BufId) -> &'a [f32] {
        let (off, len) = p.locs[b];
        assert!(off + len <= self.arena_len);
        // SAFETY: in bounds (asserted); no live &mut overlaps it (see the type's comment).
        unsafe { std::slice::from_raw_parts(self.arena.add(off), len) }
    }

    /// # Safety
    /// No other reference to the buffer's memory may be live (see the type's comment).
    #[allow(clippy::mut_from_ref)]
    unsafe fn buf_mut<'a>(&self, p: &Program, b: BufId) -> &'a mut [f32] {
        let (off, len) = p.locs[b];
        assert!(off + len <= self.arena_len);
        unsafe { std::slice::from_raw_parts_mut(self.arena.add(off), len) }
    }

    fn opt_mut<'a>(&self, p: &Program, b: Option<BufId>) -> &'a mut [f32] {
        match b {
            // SAFETY: workspaces are written by their op alone.
            Some(b) => unsafe { self.buf_mut(p, b) },
            None => &mut [],
        }
    }

    fn t<'a>(&self, p: &Program, t: TensorId) -> &'a [f32] {
        let r = p.schedule.tensors[t].range();
        assert!(r.end <= self.persistent_len);
        // SAFETY: in bounds; persistent tensors never overlap each other.
        unsafe { std::slice::from_raw_parts(self.persistent.add(r.start), r.len()) }
    }

    /// # Safety
    /// No other reference to the tensor may be live.
    #[allow(clippy::mut_from_ref)]
    unsafe fn t_mut<'a>(&self, p: &Program, t: TensorId) -> &'a mut [f32] {
        let r = p.schedule.tensors[t].range();
        assert!(r.end <= self.persistent_len);
        unsafe { std::slice::from_raw_parts_mut(self.persistent.add(r.start), r.len()) }
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn reserve_arena(&mut self, bytes: usize) -> Result<()> {
        // The GEMM's per-thread packing buffers, made now rather than inside the first step.
        crate::ops::gemm::prepare();
        let len = bytes.div_ceil(4);
        if self.arena.len() < len {
            let mut arena = Vec::new();
            arena.try_reserve_exact(len).map_err(|_| {
                crate::Error::Device(format!(
                    "the memory plan needs a {:.1} MiB arena and the host cannot allocate it; lower --batch (or --keep)",
                    bytes as f64 / (1 << 20) as f64
                ))
            })?;
            arena.resize(len, 0.0);
            self.arena = arena;
        }
        Ok(())
    }

    fn set_persistent(&mut self, data: &[f32]) -> Result<()> {
        self.persistent = data.to_vec();
        Ok(())
    }

    fn get_persistent(&mut self, out: &mut [f32]) {
        out.copy_from_slice(&self.persistent[..out.len()]);
    }

    fn upload_split(&mut self, id: SplitId, split: Split, channels: usize, norm: &Normalization) -> Result<()> {
        self.splits[id as usize] = Some((split, channels, norm.clone()));
        Ok(())
    }

    fn split_len(&self, id: SplitId) -> usize {
        self.splits[id as usize].as_ref().map_or(0, |s| s.0.len)
    }

    fn fill_batch(&mut self, p: &Program, id: SplitId, indices: &[usize], crops: &[Crop]) {
        let (split, channels, norm) = self.splits[id as usize].as_ref().expect("split uploaded before fill_batch");
        let s = &p.schedule;
        let ((xo, xl), (yo, yl)) = (p.locs[s.input], p.locs[s.labels]);
        assert!(xo + xl <= yo || yo + yl <= xo, "input and labels overlap");
        assert_eq!(crops.len(), indices.len());
        // Input and labels are disjoint ranges of the arena (asserted): split it once.
        let (x, y) = if xo < yo {
            let (a, b) = self.arena.split_at_mut(yo);
            (&mut a[xo..xo + xl], &mut b[..yl])
        } else {
            let (a, b) = self.arena.split_at_mut(xo);
            (&mut b[..xl], &mut a[yo..yo + yl])
        };
        loader::fill_batch_with(x, y, split, indices, *channels, norm, |i| crops[i]);
    }

    fn write(&mut self, p: &Program, buf: usize, data: &[f32]) {
        let (off, len) = p.locs[buf];
        self.arena[off..off + len].copy_from_slice(data);
    }

    fn read(&mut self, p: &Program, buf: usize, out: &mut [f32]) {
        let (off, len) = p.locs[buf];
        out.copy_from_slice(&self.arena[off..off + len]);
    }

    fn run_op(&mut self, p: &Program, step: usize, ctx: &StepCtx) {
        assert!(p.arena_bytes() <= self.arena.len() * 4, "arena smaller than the plan");
        assert!(p.schedule.persistent_len() <= self.persistent.len(), "persistent region not set");
        let r = Regions {
            arena: self.arena.as_mut_ptr(),
            arena_len: self.arena.len(),
            persistent: self.persistent.as_mut_ptr(),
            persistent_len: self.persistent.len(),
        };
        let s = &p.schedule;
        let sl = |sel| s.slice(sel, ctx.starts);
        // SAFETY (all buf_mut / t_mut below): see `Regions`.
        unsafe {
            match s.steps[step].op {
                Op::Conv { out, inp, col, weight, ref shape, out_sel, in_sel, chunk, accumulate } => {
                    conv2d::conv2d_forward(
                        r.buf_mut(p, out),
                        r.buf(p, inp),
                        r.t(p, weight),
                        r.opt_mut(p, col),
                        shape,
                        sl(out_sel),
                        sl(in_sel),
                        chunk,
                        accumulate,
                        self.conv_algo,
                    )
                }
                Op::ConvBackward {
                    d_inp,
                    d_weight,
                    d_out,
                    inp,
                    col,
                    weight,
                    ref shape,
                    out_sel,
                    in_sel,
                    chunk,
                    accumulate_d_inp,
                } => conv2d::conv2d_backward(
                    d_inp.map(|b| r.buf_mut(p, b)),
                    r.buf_mut(p, d_weight),
                    r.buf(p, d_out),
                    r.buf(p, inp),
                    r.t(p, weight),
                    r.opt_mut(p, col),
                    shape,
                    sl(out_sel),
                    sl(in_sel),
                    chunk,
                    accumulate_d_inp,
                    self.conv_algo,
                ),
                Op::BnReluTrain { out, stats, inp, bn, sel, m } => {
                    let slice = sl(sel);
                    batchnorm::bn_relu_train(
                        r.buf_mut(p, out),
                        r.buf_mut(p, stats),
                        r.buf(p, inp),
                        r.t(p, bn.gamma),
                        r.t(p, bn.beta),
                        r.t_mut(p, bn.mean),
                        r.t_mut(p, bn.var),
                        slice,
                        m,
                        slice.scale(),
                    )
                }
                Op::BnReluApply { out, inp, stats, bn, sel, m } => {
                    let slice = sl(sel);
                    batchnorm::bn_relu_apply(
                        r.buf_mut(p, out),
                        r.buf(p, inp),
                        r.buf(p, stats),
                        r.t(p, bn.gamma),
                        r.t(p, bn.beta),
                        slice,
                        m,
                        slice.scale(),
                    )
                }
                Op::BnReluEval { out, inp, bn, channels, m } => batchnorm::bn_relu_eval(
                    r.buf_mut(p, out),
                    r.buf(p, inp),
                    r.t(p, bn.gamma),
                    r.t(p, bn.beta),
                    r.t(p, bn.mean),
                    r.t(p, bn.var),
                    crate::sliceout::Slice::full(channels),
                    m,
                ),
                Op::BnReluBackward { d_inp, d_gamma, d_beta, d_out, inp, stats, bn, sel, m, accumulate } => {
                    let slice = sl(sel);
                    batchnorm::bn_relu_backward(
                        r.buf_mut(p, d_inp),
                        r.buf_mut(p, d_gamma),
                        r.buf_mut(p, d_beta),
                        r.buf(p, d_out),
                        r.buf(p, inp),
                        r.buf(p, stats),
                        r.t(p, bn.gamma),
                        r.t(p, bn.beta),
                        slice,
                        m,
                        slice.scale(),
                        accumulate,
                    )
                }
                Op::Add { out, inp } => {
                    let (o, i) = (r.buf_mut(p, out), r.buf(p, inp));
                    crate::ops::add(o, i);
                }
                Op::Pool { out, inp, c, n, hw } => pool::avgpool_forward(r.buf_mut(p, out), r.buf(p, inp), c, n, hw),
                Op::PoolBackward { d_inp, d_out, c, n, hw } => {
                    pool::avgpool_backward(r.buf_mut(p, d_inp), r.buf(p, d_out), c, n, hw)
                }
                Op::Linear { out, inp, weight, bias, c, n, o } => {
                    linear::linear_forward(r.buf_mut(p, out), r.buf(p, inp), r.t(p, weight), r.t(p, bias), c, n, o)
                }
                Op::LinearBackward { d_inp, d_weight, d_bias, d_out, inp, weight, c, n, o } => linear::linear_backward(
                    r.buf_mut(p, d_inp),
                    r.buf_mut(p, d_weight),
                    r.buf_mut(p, d_bias),
                    r.buf(p, d_out),
                    r.buf(p, inp),
                    r.t(p, weight),
                    c,
                    n,
                    o,
                ),
                Op::CrossEntropy { stats, d_logits, logits, labels, n, o } => loss::cross_entropy(
                    r.buf_mut(p, stats),
                    d_logits.map(|b| r.buf_mut(p, b)),
                    r.buf(p, logits),
                    r.buf(p, labels),
                    n,
                    o,
                ),
                Op::Sgd { param, momentum, grad, map } => sgd::sgd_update(
                    r.t_mut(p, param),
                    r.t_mut(p, momentum),
                    r.buf(p, grad),
                    s.grad_map(map, ctx.starts),
                    &ctx.sgd,
                ),
            }
        }
    }
}
