//! The full-size check (`sliceout selftest --full`): one real training step, WRN-16-4 at batch
//! 32 with SliceOut at keep 0.5 and every slice wrapping past its last channel, on a backend
//! and on the CPU reference from the same state and batch. Where the op checks of `selftest`
//! use tiny odd shapes, this one runs the shapes training runs: many-image chunks, 256-channel
//! slices, wide grids.
//!
//! Both backends run the same program (planned for the backend under test) op by op, each op
//! from the same inputs: before it runs, the buffers it reads or accumulates into and the
//! persistent tensors it changes are copied from the reference to the other backend. After it,
//! every buffer it wrote (workspaces aside: each algorithm keeps its own intermediates there)
//! and every tensor it changed (parameters and momentum in SGD, BN running statistics) is read
//! back from both and compared as `||a - b|| / ||b||`.
//!
//! Why each op from the reference's inputs: differences carried from op to op are amplified
//! where a step is badly conditioned (BN backward subtracts nearly equal terms when the
//! gradient is nearly constant over a channel, as after global pooling), so two correct fp32
//! implementations drift apart by 5e-3 over a WRN-16-4 step. Per op, fp32 implementations agree
//! to about 1e-6.
//!
//! With `Precision::Bf16` both run the bf16 program (planned for the backend under test): the
//! values copied between them are bf16 where the plan stores bf16 (a read widens exactly, a
//! write rounds back to the same value), so each op still starts from identical inputs.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::rel_err;
use crate::backend::{Backend, StepCtx};
use crate::data::loader::Crop;
use crate::error::Result;
use crate::ir::{BufKind, ModelConfig};
use crate::model::wrn;
use crate::ops::SgdParams;
use crate::plan::Program;
use crate::rng::{stream, Rng};
use crate::schedule::{Lowering, Mode, Options};
use crate::train::step::upload_synthetic_batch;

/// One compared op (or region): its name and the worst relative error over what it wrote.
#[derive(Clone, Debug)]
pub struct FullRow {
    pub name: String,
    pub max_rel_err: f64,
}

/// The model and batch of the check.
pub fn config() -> (ModelConfig, usize) {
    (ModelConfig { depth: 16, widen: 4, classes: 10, in_channels: 3, keep: 0.5 }, 32)
}

/// Starts that make every sliced block wrap: half the slice before the last channel.
pub fn wrapping_starts(p: &Program) -> Vec<usize> {
    p.schedule.slices.iter().map(|s| if s.width < s.channels { s.channels - s.width / 2 } else { 0 }).collect()
}

/// Runs one training step of `config` at `batch` on both backends, planned with the default
/// memory options and `lowering` (its precision, `input_grad` and `winograd`; the target is
/// `other`'s), and compares every op's
/// outputs and then the persistent region. A backend that panics ends the check with an error
/// naming the op.
pub fn full_step(
    reference: &mut dyn Backend,
    other: &mut dyn Backend,
    config: &ModelConfig,
    batch: usize,
    lowering: Lowering,
) -> Result<Vec<FullRow>> {
    let lowering = Lowering { target: other.target(), ..lowering };
    let p = Program::new(wrn::build(config, batch, Mode::Train, Options::default(), lowering));
    let s = &p.schedule;
    let starts = wrapping_starts(&p);
    let seed = 7;
    let mut augment = Rng::new(seed, stream::AUGMENT);
    let crops: Vec<Crop> = (0..batch).map(|_| Crop::draw(&mut augment)).collect();
    let sgd = SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 5e-4, nesterov: true };
    let ctx = StepCtx::new(&starts, sgd);
    let state = wrn::init_persistent(s, seed);
    let prepare = |b: &mut dyn Backend| -> Result<()> {
        b.reserve_arena(p.arena_bytes())?;
        b.set_persistent(&state)?;
        let images = upload_synthetic_batch(b, config.classes, batch, seed)?;
        b.fill_batch(&p, crate::backend::SplitId::Train, &images, &crops);
        Ok(())
    };
    prepare(reference)?;
    prepare(other)?;
    let mut rows =
        vec![FullRow { name: "batch gather".into(), max_rel_err: compare(reference, other, &p, &[s.input, s.labels]) }];
    let (mut ref_state, mut other_state) = (vec![0f32; s.persistent_len()], vec![0f32; s.persistent_len()]);
    let kept: Vec<usize> = s.kept_copies().collect();
    for (i, step) in s.steps.iter().enumerate() {
        let (read, written) = step.op.buffers();
        let written: Vec<usize> = written.into_iter().filter(|&b| s.buffers[b].kind != BufKind::Workspace).collect();
        // A kept weight copy is each backend's own, made from the same weights: the
        // reference's forward op writes its copy as it runs, so before it the copy is stale.
        for &b in read.iter().filter(|b| !kept.contains(b)).chain(&written) {
            let mut v = vec![0f32; p.locs[b].1];
            reference.read(&p, b, &mut v);
            other.write(&p, b, &v);
        }
        let updates = step.op.updates();
        if !updates.is_empty() {
            reference.get_persistent(&mut ref_state);
            other.set_persistent(&ref_state)?;
        }
        let run = |b: &mut dyn Backend| match catch_unwind(AssertUnwindSafe(|| b.run_op(&p, i, &ctx))) {
            Ok(()) => Ok(()),
            Err(_) => Err(crate::Error::Device(format!("{} panicked in op {i} ({})", b.name(), step.name()))),
        };
        run(reference)?;
        run(other)?;
        let mut worst = compare(reference, other, &p, &written);
        if !updates.is_empty() {
            reference.get_persistent(&mut ref_state);
            other.get_persistent(&mut other_state);
            for t in updates {
                let r = s.tensors[t].range();
                worst = nan_max(worst, rel_err(&other_state[r.clone()], &ref_state[r]));
            }
        }
        rows.push(FullRow { name: step.name(), max_rel_err: worst });
    }
    Ok(rows)
}

/// The worst relative error over `buffers` between the two backends' copies.
fn compare(reference: &mut dyn Backend, other: &mut dyn Backend, p: &Program, buffers: &[usize]) -> f64 {
    buffers
        .iter()
        .map(|&buf| {
            let len = p.locs[buf].1;
            let (mut a, mut b) = (vec![0f32; len], vec![0f32; len]);
            reference.read(p, buf, &mut a);
            other.read(p, buf, &mut b);
            rel_err(&b, &a)
        })
        .fold(0f64, nan_max)
}

/// The larger of the two, NaN when either is NaN (so a NaN is never hidden by a later value).
fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use crate::ir::Precision;
    use crate::schedule::InputGrad;
    use crate::verify::tampered::Tampered;

    /// The lowering of a plan with col2im input gradients in `precision`.
    fn col2im(precision: Precision) -> Lowering {
        Lowering { precision, input_grad: InputGrad::Col2im, ..Lowering::default() }
    }

    /// The CPU's fast path (Winograd) against its plain im2col reference on a smaller network:
    /// every op agrees to fp32 rounding, and every op gets a row.
    #[test]
    fn the_cpu_agrees_with_its_reference_over_a_whole_step() {
        let config = ModelConfig { depth: 10, widen: 2, classes: 10, in_channels: 3, keep: 0.5 };
        let (mut a, mut b) = (CpuBackend::reference(), CpuBackend::new());
        let rows = full_step(&mut a, &mut b, &config, 8, col2im(Precision::Fp32)).unwrap();
        let p = Program::new(wrn::build(&config, 8, Mode::Train, Options::default(), Lowering::default()));
        assert_eq!(rows.len(), p.schedule.steps.len() + 1);
        for r in &rows {
            assert!(r.max_rel_err <= 1e-4, "{r:?}");
        }
        // Winograd and im2col round differently: the check sees real differences.
        assert!(rows.iter().any(|r| r.max_rel_err > 0.0));
    }

    /// The bf16 step: the CPU against its reference, every op exact (both round at the same
    /// points), and every op gets a row.
    #[test]
    fn a_bf16_step_agrees_with_the_cpu_reference_op_by_op() {
        let config = ModelConfig { depth: 10, widen: 2, classes: 10, in_channels: 3, keep: 0.5 };
        let (mut a, mut b) = (CpuBackend::reference(), CpuBackend::new());
        let rows = full_step(&mut a, &mut b, &config, 4, col2im(Precision::Bf16)).unwrap();
        let bf16 = Lowering { precision: Precision::Bf16, ..Lowering::default() };
        let p = Program::new(wrn::build(&config, 4, Mode::Train, Options::default(), bf16));
        assert_eq!(rows.len(), p.schedule.steps.len() + 1);
        for r in &rows {
            assert_eq!(r.max_rel_err, 0.0, "{r:?}");
        }
    }

    /// The route of `selftest --full` on a GPU (input gradients by convolution, the default),
    /// with the CPU standing in for it (it runs any plan): the program is the GPU's plan, fp32
    /// and bf16, with backward ops whose input gradient is a convolution, both sides run them op
    /// by op, and every op agrees (the path's correctness against col2im is `lowering.rs`'s and
    /// `selftest.rs`'s tests).
    #[test]
    fn a_gpu_plan_with_input_gradients_by_convolution_runs_op_by_op() {
        use crate::ir::Target;
        use crate::ops::{ConvBackward, Op};
        let config = ModelConfig { depth: 10, widen: 2, classes: 10, in_channels: 3, keep: 0.5 };
        for precision in [Precision::Fp32, Precision::Bf16] {
            let mut a = CpuBackend::reference();
            let mut b = Tampered::new(|_, _| {}, |_| {});
            b.target = Target::Cuda;
            let lowering =
                Lowering { target: Target::Cuda, input_grad: InputGrad::Conv, precision, ..Lowering::default() };
            let rows = full_step(&mut a, &mut b, &config, 4, lowering).unwrap();
            let p = Program::new(wrn::build(&config, 4, Mode::Train, Options::default(), lowering));
            let by_conv =
                |o: &Op| matches!(o, Op::ConvBackward(ConvBackward { algo, .. }) if algo.input_grad_by_conv());
            assert!(p.schedule.steps.iter().any(|s| by_conv(&s.op)), "{precision:?}");
            assert_eq!(rows.len(), p.schedule.steps.len() + 1);
            for r in &rows {
                assert!(r.max_rel_err < 1e-6, "{precision:?} {r:?}");
            }
        }
    }

    /// The route of `selftest --full --fold-bn`, the CPU standing in for the GPU: the GPU's plan,
    /// fp32 and bf16, with convolution backward ops that apply the BN of their input in their
    /// im2col, runs op by op in agreement with the reference's. Each folded op reads the BN's
    /// input, so the rows compare what the two sides' folded im2cols gave the weight gradient.
    #[test]
    fn a_gpu_plan_with_bn_folded_into_im2col_runs_op_by_op() {
        use crate::ir::Target;
        use crate::ops::{ConvBackward, Op};
        let config = ModelConfig { depth: 10, widen: 2, classes: 10, in_channels: 3, keep: 0.5 };
        for precision in [Precision::Fp32, Precision::Bf16] {
            let mut a = CpuBackend::reference();
            let mut b = Tampered::new(|_, _| {}, |_| {});
            b.target = Target::Cuda;
            let lowering = Lowering { target: Target::Cuda, fold_bn: true, precision, ..Lowering::default() };
            let rows = full_step(&mut a, &mut b, &config, 4, lowering).unwrap();
            let p = Program::new(wrn::build(&config, 4, Mode::Train, Options::default(), lowering));
            let folds = |o: &Op| matches!(o, Op::ConvBackward(ConvBackward { prologue: Some(_), .. }));
            assert!(p.schedule.steps.iter().filter(|s| folds(&s.op)).count() >= 6, "{precision:?}");
            assert_eq!(rows.len(), p.schedule.steps.len() + 1);
            for r in &rows {
                assert!(r.max_rel_err < 1e-6, "{precision:?} {r:?}");
            }
        }
    }

    /// The route of `selftest --full --precision bf16 --sgd-group`, the CPU standing in for the
    /// GPU: the GPU's bf16 plan, whose grouped updates write the kept weight copies of the
    /// unsliced convolutions, runs op by op exactly as the reference's, the copies the groups
    /// write compared with the reference's.
    #[test]
    fn a_gpu_plan_whose_grouped_updates_write_weight_copies_runs_op_by_op() {
        use crate::ir::Target;
        use crate::ops::Op;
        let config = ModelConfig { depth: 10, widen: 2, classes: 10, in_channels: 3, keep: 0.5 };
        let (mut a, mut b) = (CpuBackend::reference(), Tampered::new(|_, _| {}, |_| {}));
        b.target = Target::Cuda;
        let lowering =
            Lowering { target: Target::Cuda, precision: Precision::Bf16, sgd_group: true, ..Lowering::default() };
        let p = Program::new(wrn::build(&config, 4, Mode::Train, Options::default(), lowering));
        let kept: Vec<usize> = p.schedule.kept_copies().collect();
        assert_eq!(kept.len(), 4, "conv0 and the three shortcuts");
        let groups = p.schedule.steps.iter().filter(|s| matches!(s.op, Op::SgdGroup(_)));
        let mut written: Vec<usize> = groups.flat_map(|s| s.op.buffers().1).collect();
        written.sort();
        assert_eq!(written, kept, "the groups write every kept copy");
        let rows = full_step(&mut a, &mut b, &config, 4, lowering).unwrap();
        assert_eq!(rows.len(), p.schedule.steps.len() + 1);
        for r in &rows {
            assert_eq!(r.max_rel_err, 0.0, "{r:?}");
        }
    }

    /// The route of `selftest --full --winograd`, the CPU standing in for the GPU: the GPU's
    /// fp32 plan runs its 3x3 stride-1 convolutions (4 or more input channels) by Winograd, with
    /// no weight copies and no input gradient by convolution there, and its workspaces let the
    /// CPU run the step op by op, its own Winograd included, in agreement with the reference.
    #[test]
    fn a_gpu_plan_with_winograd_runs_op_by_op() {
        use crate::ir::Target;
        use crate::ops::Op;
        let config = ModelConfig { depth: 10, widen: 2, classes: 10, in_channels: 3, keep: 0.5 };
        let mut a = CpuBackend::reference();
        let mut b = Tampered::new(|_, _| {}, |_| {});
        b.inner = CpuBackend::new();
        b.target = Target::Cuda;
        let lowering = Lowering { target: Target::Cuda, winograd: true, ..Lowering::default() };
        let rows = full_step(&mut a, &mut b, &config, 4, lowering).unwrap();
        let p = Program::new(wrn::build(&config, 4, Mode::Train, Options::default(), lowering));
        let mut winograd = 0;
        for s in &p.schedule.steps {
            match &s.op {
                Op::Conv(c) => {
                    let eligible = c.shape.k == 3 && c.shape.stride == 1 && c.shape.cin >= 4;
                    assert_eq!(c.algo.is_winograd(), eligible, "{}", s.layer);
                    winograd += c.algo.is_winograd() as usize;
                }
                Op::ConvBackward(c) if c.algo.is_winograd() => {
                    winograd += 1;
                }
                _ => {}
            }
        }
        // WRN-10-2: 4 of the 7 forward convolutions (the first and the stride-2 and 1x1 ones
        // keep im2col), and their 4 backward ops.
        assert_eq!(winograd, 8);
        assert_eq!(rows.len(), p.schedule.steps.len() + 1);
        for r in &rows {
            assert!(r.max_rel_err < 1e-5, "{r:?}");
        }
    }

    #[test]
    fn every_slice_wraps() {
        let (config, batch) = config();
        let p = Program::new(wrn::build(&config, batch, Mode::Train, Options::default(), Lowering::default()));
        for (start, s) in wrapping_starts(&p).iter().zip(&p.schedule.slices) {
            assert!(s.width < s.channels && start + s.width > s.channels, "{start} {s:?}");
        }
    }

    /// A backend whose persistent region drifts is caught in the ops that change it (SGD, BN's
    /// running statistics) and nowhere else.
    #[test]
    fn a_drifting_backend_fails_the_regions_it_touches() {
        let config = ModelConfig { depth: 10, widen: 2, classes: 10, in_channels: 3, keep: 0.5 };
        let drift = |out: &mut [f32]| out.iter_mut().for_each(|v| *v *= 1.001);
        let mut b = Tampered::new(|_, _| {}, drift);
        b.inner = CpuBackend::reference();
        let mut a = CpuBackend::reference();
        let rows = full_step(&mut a, &mut b, &config, 4, col2im(Precision::Fp32)).unwrap();
        let p = Program::new(wrn::build(&config, 4, Mode::Train, Options::default(), Lowering::default()));
        for (r, step) in rows[1..].iter().zip(&p.schedule.steps) {
            if step.op.updates().is_empty() {
                assert_eq!(r.max_rel_err, 0.0, "{r:?}");
            } else {
                assert!((r.max_rel_err - 1e-3).abs() < 1e-5, "{r:?}");
            }
        }
    }
}
