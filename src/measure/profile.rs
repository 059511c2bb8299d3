//! The profiler: a training step timed op by op, each op's outputs in the arena and the arena
//! live at it; the schedule is the table (one row per op, summed per layer), optionally beside
//! the same network at another keep value.

use super::Timing;
use crate::backend::{Backend, StepCtx};
use crate::error::Result;
use crate::ir::live_bytes;
use crate::model::{wrn, ModelConfig};
use crate::ops::SgdParams;
use crate::plan::Program;
use crate::schedule::{Lowering, Mode, Options, Phase};
use crate::train::step::upload_synthetic_batch;
use crate::train::{StepRngs, Stepper};
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Debug, Serialize)]
pub struct OpRow {
    pub index: usize,
    pub name: String,
    pub layer: String,
    pub phase: String,
    /// Mean over the timed steps.
    pub ms: f64,
    /// Bytes of the buffers the op writes.
    pub out_bytes: usize,
    /// Bytes of all buffers live at this op.
    pub live_bytes: usize,
    pub macs: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct LayerRow {
    pub layer: String,
    pub forward_ms: f64,
    pub backward_ms: f64,
    pub update_ms: f64,
    pub out_bytes: usize,
}

/// Device time per kernel name, per step (GPU only).
#[derive(Clone, Debug, Serialize)]
pub struct KernelRow {
    pub kernel: String,
    pub calls: usize,
    pub ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Profile {
    pub model: String,
    pub keep: f64,
    pub batch: usize,
    /// `fp32` or `bf16`: the element type of activations (`--precision`).
    pub precision: String,
    pub device: String,
    pub steps: usize,
    /// How op times were taken.
    pub timer: String,
    pub step_ms: f64,
    pub arena_bytes: usize,
    pub ops: Vec<OpRow>,
    pub layers: Vec<LayerRow>,
    pub kernels: Vec<KernelRow>,
}

/// Profiles `steps` training steps (after one warm-up step).
pub fn profile(backend: &mut dyn Backend, p: &Program, timing: Timing) -> Result<Profile> {
    let Timing { steps, seed, align } = timing;
    let s = &p.schedule;
    backend.set_persistent(&wrn::init_persistent(s, seed))?;
    let images = upload_synthetic_batch(backend, s.config.classes, s.batch, seed)?;
    let sgd = SgdParams { lr: 0.01, momentum: 0.9, weight_decay: 5e-4, nesterov: true };
    let (mut stepper, mut rngs) = (Stepper::new(p, align, true), StepRngs::new(seed));
    let mut total = vec![0f64; s.steps.len()];
    let mut kernels: Vec<KernelRow> = vec![];
    let mut timer = "host clock, synchronised after each op";
    for step in 0..=steps {
        stepper.prepare(backend, p, &images, &mut rngs);
        let ctx = StepCtx::new(stepper.starts(), sgd);
        let on_device = backend.start_timing();
        for (i, t) in total.iter_mut().enumerate() {
            let t0 = Instant::now();
            backend.run_op(p, i, &ctx);
            if !on_device {
                backend.synchronize();
                if step > 0 {
                    *t += t0.elapsed().as_secs_f64() * 1e3;
                }
            }
        }
        if on_device {
            timer = "CUDA events around each kernel and GEMM, summed per op";
            for k in backend.take_timings().into_iter().filter(|_| step > 0) {
                total[k.op] += k.ms;
                match kernels.iter_mut().find(|r| r.kernel == k.kernel) {
                    Some(r) => (r.calls, r.ms) = (r.calls + 1, r.ms + k.ms),
                    None => kernels.push(KernelRow { kernel: k.kernel.to_string(), calls: 1, ms: k.ms }),
                }
            }
        }
    }
    let per_step = steps.max(1) as f64;
    for r in &mut kernels {
        (r.calls, r.ms) = (r.calls / steps.max(1), r.ms / per_step);
    }
    kernels.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    let live = live_bytes(&p.lifetimes, s.steps.len());
    let ops: Vec<OpRow> = s
        .steps
        .iter()
        .enumerate()
        .map(|(i, st)| OpRow {
            index: i,
            name: st.name(),
            layer: st.layer.clone(),
            phase: format!("{:?}", st.phase).to_lowercase(),
            ms: total[i] / per_step,
            out_bytes: st.op.buffers().1.iter().map(|&b| s.buffers[b].bytes()).sum(),
            live_bytes: live[i],
            macs: st.op.macs(&s.slices),
        })
        .collect();
    let mut layers: Vec<LayerRow> = vec![];
    for (st, row) in s.steps.iter().zip(&ops) {
        // Updates are named after their tensor (`block0.conv1.weight`): sum them into the layer.
        let layer = match st.phase {
            Phase::Update => st.layer.rsplit_once('.').map_or(st.layer.as_str(), |(l, _)| l).to_string(),
            _ => st.layer.clone(),
        };
        let i = match layers.iter().position(|l| l.layer == layer) {
            Some(i) => i,
            None => {
                layers.push(LayerRow { layer, forward_ms: 0.0, backward_ms: 0.0, update_ms: 0.0, out_bytes: 0 });
                layers.len() - 1
            }
        };
        let l = &mut layers[i];
        match st.phase {
            Phase::Forward => {
                l.forward_ms += row.ms;
                l.out_bytes += row.out_bytes;
            }
            Phase::Backward => l.backward_ms += row.ms,
            Phase::Update => l.update_ms += row.ms,
        }
    }
    Ok(Profile {
        model: s.config.name(),
        keep: s.config.keep,
        batch: s.batch,
        precision: s.lowering.precision.as_str().to_string(),
        device: backend.name(),
        steps,
        timer: timer.to_string(),
        step_ms: ops.iter().map(|o| o.ms).sum(),
        arena_bytes: p.arena_bytes(),
        ops,
        layers,
        kernels,
    })
}

/// Profiles `config`'s training step at `batch` with `options` and `lowering`, and the same network at keep
/// `compare` when given, on `backend`, whose arena is reserved to fit both.
pub fn profile_keeps(
    backend: &mut dyn Backend,
    config: &ModelConfig,
    batch: usize,
    options: Options,
    lowering: Lowering,
    compare: Option<f64>,
    timing: Timing,
) -> Result<(Profile, Option<Profile>)> {
    let build = |c: &ModelConfig| Program::new(wrn::build(c, batch, Mode::Train, options, lowering));
    let main_p = build(config);
    let other_p = compare.map(|keep| build(&ModelConfig { keep, ..*config }));
    backend.reserve_arena(main_p.arena_bytes().max(other_p.as_ref().map_or(0, |p| p.arena_bytes())))?;
    let main = profile(backend, &main_p, timing)?;
    let other = other_p.as_ref().map(|p| profile(backend, p, timing)).transpose()?;
    Ok((main, other))
}
