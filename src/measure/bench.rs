//! The bench: median training-step time, images/s and memory for several keep values (and
//! precisions), measured in one run on one backend.

use super::Timing;
use crate::backend::Backend;
use crate::error::Result;
use crate::ir::{Precision, Target};
use crate::model::{wrn, ModelConfig};
use crate::ops::SgdParams;
use crate::plan::Program;
use crate::schedule::{Lowering, Mode, Options};
use crate::train::step::upload_synthetic_batch;
use crate::train::{StepRngs, Stepper};
use std::time::Instant;

pub struct Row {
    pub keep: f64,
    pub precision: Precision,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub images_per_s: f64,
    pub arena_bytes: usize,
    pub persistent_bytes: usize,
    pub gflop: f64,
    /// Device memory the process uses after the steps (GPU backends).
    pub device_bytes: Option<usize>,
}

impl Row {
    /// What the device uses beyond the plan (context, library workspaces).
    pub fn overhead_bytes(&self) -> Option<usize> {
        self.device_bytes.map(|d| d.saturating_sub(self.arena_bytes + self.persistent_bytes))
    }
}

/// Times `steps` training steps (after one warm-up step) of `config` at each (keep value,
/// precision) of `runs`.
///
/// On the CPU (shared and noisy) every run has its own backend and the steps go round-robin
/// across them, so a slow spell of the machine hits all of them alike. On a GPU each run goes
/// alone on a fresh backend, so that the device memory in use is that run's plan alone. `make`
/// opens a backend for `target`.
pub fn measure(
    make: &mut dyn FnMut() -> Result<Box<dyn Backend>>,
    config: &ModelConfig,
    batch: usize,
    runs: &[(f64, Precision)],
    timing: Timing,
    options: Options,
    lowering: Lowering,
) -> Result<Vec<Row>> {
    let Timing { steps, seed, align } = timing;
    let interleave = lowering.target == Target::Cpu;
    let programs: Vec<Program> = runs
        .iter()
        .map(|&(keep, precision)| {
            let lowering = Lowering { precision, ..lowering };
            Program::new(wrn::build(&ModelConfig { keep, ..*config }, batch, Mode::Train, options, lowering))
        })
        .collect();
    let mut ready = |p: &Program| -> Result<Timed> {
        let mut backend = make()?;
        backend.reserve_arena(p.arena_bytes())?;
        backend.set_persistent(&wrn::init_persistent(&p.schedule, seed))?;
        let images = upload_synthetic_batch(&mut *backend, config.classes, batch, seed)?;
        Ok(Timed { backend, stepper: Stepper::new(p, align, true), rngs: StepRngs::new(seed), images })
    };
    let mut times = vec![vec![]; runs.len()];
    let mut device = vec![None; runs.len()];
    if interleave {
        let mut all = programs.iter().map(&mut ready).collect::<Result<Vec<_>>>()?;
        for i in 0..=steps {
            for (k, t) in all.iter_mut().enumerate() {
                let ms = t.step(&programs[k]);
                if i > 0 {
                    times[k].push(ms);
                }
            }
        }
    } else {
        for (k, p) in programs.iter().enumerate() {
            let mut t = ready(p)?;
            for i in 0..=steps {
                let ms = t.step(p);
                if i > 0 {
                    times[k].push(ms);
                }
            }
            device[k] = t.backend.memory_in_use();
        }
    }
    let rows = programs
        .iter()
        .zip(runs)
        .zip(times.iter_mut().zip(device))
        .map(|((p, &(keep, precision)), (t, device_bytes))| {
            t.sort_by(f64::total_cmp);
            let median = t[t.len() / 2];
            Row {
                keep,
                precision,
                median_ms: median,
                min_ms: t[0],
                max_ms: t[t.len() - 1],
                images_per_s: batch as f64 / (median / 1e3),
                arena_bytes: p.arena_bytes(),
                persistent_bytes: p.schedule.persistent_len() * 4,
                gflop: 2.0 * p.schedule.macs() as f64 / 1e9,
                device_bytes,
            }
        })
        .collect();
    Ok(rows)
}

/// One run's backend and step state.
struct Timed {
    backend: Box<dyn Backend>,
    stepper: Stepper,
    rngs: StepRngs,
    images: Vec<usize>,
}

impl Timed {
    /// One training step (the loss read back, so the device has finished), in milliseconds.
    fn step(&mut self, p: &Program) -> f64 {
        let sgd = SgdParams { lr: 0.01, momentum: 0.9, weight_decay: 5e-4, nesterov: true };
        let t0 = Instant::now();
        self.stepper.step(&mut *self.backend, p, &self.images, &mut self.rngs, sgd);
        t0.elapsed().as_secs_f64() * 1e3
    }
}
