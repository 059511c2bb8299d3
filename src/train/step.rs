//! One training step, top to bottom: draw the slice starts, fill the batch, run the program,
//! read the loss. `train`, `profile` and `bench` all step through [`Stepper`], so there is one
//! way to draw a batch's augmentation and a step's slice starts.
//!
//! Everything a step touches was made before the first step: the program's arena and
//! persistent region by the backend, the crops and starts here.

use crate::backend::{Backend, SplitId, StepCtx};
use crate::data::loader::{Crop, Normalization};
use crate::dist::Dist;
use crate::error::Result;
use crate::ir::{slice, SliceSpec};
use crate::ops::SgdParams;
use crate::plan::Program;
use crate::rng::{stream, Rng};

/// The random streams a step draws from (the shuffle is the epoch's, not the step's).
#[derive(Clone, Debug)]
pub struct StepRngs {
    /// Crops and flips.
    pub augment: Rng,
    /// Slice starts.
    pub slice: Rng,
}

impl StepRngs {
    pub fn new(seed: u64) -> StepRngs {
        StepRngs { augment: Rng::new(seed, stream::AUGMENT), slice: Rng::new(seed, stream::SLICE) }
    }
}

/// `[mean loss, correct count]` of a step's batch.
pub type StepLoss = [f32; 2];

/// The per-step buffers of the host side of a step, sized once for one program.
#[derive(Clone, Debug)]
pub struct Stepper {
    /// Slice starts are multiples of this (`--align`).
    pub align: usize,
    /// Random crop and flip per image (`--no-augment` turns it off).
    pub augment: bool,
    crops: Vec<Crop>,
    starts: Vec<usize>,
}

impl Stepper {
    pub fn new(program: &Program, align: usize, augment: bool) -> Stepper {
        Stepper::for_batch(program, align, augment, program.schedule.batch)
    }

    /// A stepper whose global batch is `batch` images, of which a distributed rank's program
    /// trains a shard: every rank draws the crops of the whole batch, so the augmentation
    /// stream stays the same on all of them (and in the checkpoint rank 0 writes).
    pub fn for_batch(program: &Program, align: usize, augment: bool, batch: usize) -> Stepper {
        let s = &program.schedule;
        Stepper { align, augment, crops: vec![Crop::IDENTITY; batch], starts: vec![0; s.slices.len()] }
    }

    /// One training step on training images `images`.
    pub fn step(
        &mut self,
        backend: &mut dyn Backend,
        program: &Program,
        images: &[usize],
        rngs: &mut StepRngs,
        sgd: SgdParams,
    ) -> StepLoss {
        self.prepare(backend, program, images, rngs);
        backend.run(program, &StepCtx::new(&self.starts, sgd));
        let mut loss = [0f32; 2];
        backend.read(program, program.schedule.loss, &mut loss);
        loss
    }

    /// One step of a distributed run on global batch `images`: this rank's shard of it, its
    /// weight gradients averaged over the ranks before each update, the loss the global batch's.
    pub fn step_dist(
        &mut self,
        backend: &mut dyn Backend,
        program: &Program,
        images: &[usize],
        rngs: &mut StepRngs,
        sgd: SgdParams,
        dist: &mut Dist,
    ) -> StepLoss {
        let shard = dist.shard(images);
        self.draw(rngs, &program.schedule.slices);
        backend.fill_batch(program, SplitId::Train, &images[shard.clone()], &self.crops[shard]);
        dist.run(backend, program, &StepCtx::new(&self.starts, sgd));
        let mut loss = [0f32; 2];
        backend.read(program, program.schedule.loss, &mut loss);
        dist.reduce_loss(&mut loss);
        loss
    }

    /// The host's part before the ops run: draw the slice starts and fill the batch (its
    /// crops drawn image by image). `profile` runs the ops itself after this.
    pub fn prepare(&mut self, backend: &mut dyn Backend, program: &Program, images: &[usize], rngs: &mut StepRngs) {
        self.draw(rngs, &program.schedule.slices);
        backend.fill_batch(program, SplitId::Train, images, &self.crops);
    }

    /// The step's slice starts and the crops of its whole batch.
    fn draw(&mut self, rngs: &mut StepRngs, slices: &[SliceSpec]) {
        draw_starts(&mut rngs.slice, slices, self.align, &mut self.starts);
        for c in &mut self.crops {
            *c = if self.augment { Crop::draw(&mut rngs.augment) } else { Crop::IDENTITY };
        }
    }

    /// The starts drawn by the last [`Stepper::prepare`].
    pub fn starts(&self) -> &[usize] {
        &self.starts
    }
}

/// Uploads `batch` synthetic images (labels folded into `classes`) as the training split of
/// `backend`: what `bench`, `profile` and the full selftest step on. Returns the batch's image indices.
pub fn upload_synthetic_batch(
    backend: &mut dyn Backend,
    classes: usize,
    batch: usize,
    seed: u64,
) -> Result<Vec<usize>> {
    let mut split = crate::data::synth::split(batch, seed);
    split.labels.iter_mut().for_each(|l| *l = (*l as usize % classes) as u8);
    let norm = Normalization::from_split(&split, 3);
    backend.upload_split(SplitId::Train, split, 3, &norm)?;
    Ok((0..batch).collect())
}

/// One start per block, uniform over `{0, align, 2*align, ...} < channels`; 0 (and no draw)
/// for a block that keeps all its channels.
pub fn draw_starts(rng: &mut Rng, slices: &[SliceSpec], align: usize, starts: &mut [usize]) {
    for (start, spec) in starts.iter_mut().zip(slices) {
        *start = if spec.width < spec.channels { slice::sample_start(rng, spec.channels, align) } else { 0 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_width_blocks_draw_nothing_and_sliced_ones_respect_the_alignment() {
        let slices = [
            SliceSpec { channels: 16, width: 16 },
            SliceSpec { channels: 32, width: 16 },
            SliceSpec { channels: 64, width: 32 },
        ];
        let mut rng = Rng::new(1, stream::SLICE);
        let before = rng.clone();
        let mut starts = [99; 3];
        for _ in 0..100 {
            draw_starts(&mut rng, &slices, 8, &mut starts);
            assert_eq!(starts[0], 0);
            assert!(starts[1] < 32 && starts[1] % 8 == 0);
            assert!(starts[2] < 64 && starts[2] % 8 == 0);
        }
        // Only the sliced blocks consume the stream: two draws per step.
        let mut replay = before;
        for _ in 0..100 {
            slice::sample_start(&mut replay, 32, 8);
            slice::sample_start(&mut replay, 64, 8);
        }
        assert_eq!(replay.state(), rng.state());
    }
}
