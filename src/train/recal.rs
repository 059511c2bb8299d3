//! BN recalibration for the full network. Trained with SliceOut, `bn2` of each block sees only
//! its slice per step (scaled by `c/w` afterwards), so its running statistics are gathered slice
//! by slice; at test time the full network runs with them. Recalibrating replaces every BN
//! layer's running mean and variance by their plain average over `N` batches of training
//! images run through the full network in train mode (no augmentation, no SliceOut), the
//! parameters untouched: the `k`-th batch enters with momentum `1/k`.
//!
//! It is a program of its own (`Mode::Calibrate`: the forward pass with batch statistics),
//! planned with the others before the first step, over a fixed set of images drawn once.

use crate::backend::{Backend, SplitId, StepCtx};
use crate::data::loader::{epoch_order, Crop};
use crate::ir::ModelConfig;
use crate::model::wrn;
use crate::ops::SgdParams;
use crate::plan::Program;
use crate::rng::{stream, Rng};
use crate::schedule::{Lowering, Mode, Options};

pub struct Recalibrator {
    program: Program,
    /// The images of every batch, batch after batch.
    images: Vec<usize>,
    crops: Vec<Crop>,
}

impl Recalibrator {
    /// Over `batches` batches of `batch` images (as many as the `train_len` images hold, at
    /// least one), drawn once from a seeded shuffle; the default memory options, lowered as
    /// `lowering` says.
    pub fn new(
        config: &ModelConfig,
        batch: usize,
        lowering: Lowering,
        batches: usize,
        train_len: usize,
        seed: u64,
    ) -> Self {
        let batch = batch.min(train_len).max(1);
        let batches = batches.clamp(1, (train_len / batch).max(1));
        let program = Program::new(wrn::build(config, batch, Mode::Calibrate, Options::default(), lowering));
        let mut images = epoch_order(train_len, &mut Rng::new(seed, stream::RECAL));
        images.truncate(batches * batch);
        Recalibrator { program, images, crops: vec![Crop::IDENTITY; batch] }
    }

    pub fn arena_bytes(&self) -> usize {
        self.program.arena_bytes()
    }

    /// Batches the statistics are averaged over.
    pub fn batches(&self) -> usize {
        self.images.len() / self.crops.len()
    }

    /// Replaces the running statistics of every BN layer on `backend` by their average over the
    /// batches of the resident training split.
    pub fn run(&self, backend: &mut dyn Backend) {
        let sgd = SgdParams { lr: 0.0, momentum: 0.0, weight_decay: 0.0, nesterov: false };
        for (k, images) in self.images.chunks_exact(self.crops.len()).enumerate() {
            backend.fill_batch(&self.program, SplitId::Train, images, &self.crops);
            let ctx = StepCtx { bn_momentum: 1.0 / (k + 1) as f64, ..StepCtx::new(&[], sgd) };
            backend.run(&self.program, &ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{CpuBackend, Memory};
    use crate::ir::Role;
    use crate::train::step::upload_synthetic_batch;

    /// After recalibration the running statistics are those of the full network over the
    /// chosen batches, whatever they held before, and nothing else in the region changed.
    #[test]
    fn recalibration_replaces_only_the_running_statistics() {
        let config = ModelConfig { depth: 10, widen: 2, classes: 10, in_channels: 3, keep: 0.5 };
        let r = Recalibrator::new(&config, 8, Lowering::default(), 3, 40, 1);
        assert_eq!(r.batches(), 3);
        let s = &r.program.schedule;
        let mut cpu = CpuBackend::new();
        cpu.reserve_arena(r.arena_bytes()).unwrap();
        let mut state = wrn::init_persistent(s, 2);
        state.iter_mut().for_each(|v| *v += 0.25);
        cpu.set_persistent(&state).unwrap();
        upload_synthetic_batch(&mut cpu, 10, 40, 3).unwrap();
        let run = |cpu: &mut CpuBackend| {
            r.run(cpu);
            let mut out = vec![0f32; s.persistent_len()];
            cpu.get_persistent(&mut out);
            out
        };
        let once = run(&mut cpu);
        // Running it again from the result gives the same statistics: they depend on the
        // parameters and the images only.
        let twice = run(&mut cpu);
        for t in &s.tensors {
            let (a, b, before) = (&once[t.range()], &twice[t.range()], &state[t.range()]);
            match t.role {
                Role::RunningMean | Role::RunningVar => {
                    assert_ne!(a, before, "{}", t.name);
                    assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 * y.abs().max(1.0)), "{}", t.name);
                }
                _ => assert_eq!(a, before, "{}", t.name),
            }
        }
    }
}
